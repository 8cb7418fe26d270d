"""The Job controller's sync on a fake apiserver: what pods it creates and deletes, what the
status and conditions say after each step, and which events it records (upstream's
job_controller_test.go cases, as a user would see them)."""

from __future__ import annotations

import pytest

from reconcilers.controller import Request
from reconcilers.kinds import PODS
from tests.unit.job_world import FINALIZER, NS, World, job


def conditions(world: World) -> list[tuple[str, str, str]]:
    return [
        (c["type"], c["status"], c.get("reason", ""))
        for c in world.status().get("conditions") or []
    ]


def test_a_job_creates_its_pod_with_the_finalizer_and_an_owner_reference() -> None:
    world = World(job())
    world.sync()
    (pod,) = world.pods()
    meta = pod["metadata"]
    assert meta["generateName"] if "generateName" in meta else meta["name"].startswith("pi-")
    assert meta["finalizers"] == [FINALIZER]
    (ref,) = meta["ownerReferences"]
    assert (ref["kind"], ref["name"], ref["uid"], ref["controller"]) == ("Job", "pi", "j1", True)
    status = world.status()
    assert (status["active"], status["ready"], status["terminating"]) == (1, 0, 0)
    assert status["startTime"] == "2026-01-01T12:00:00Z"
    assert world.events.seen == [("Normal", "SuccessfulCreate", f"Created pod: {meta['name']}")]


def test_a_succeeded_pod_is_counted_through_uncounted_then_the_job_completes() -> None:
    world = World(job())
    world.sync()
    (pod,) = world.pods()
    world.finish(pod, "Succeeded")
    world.settle()
    world.later(5)
    world.sync()
    # First write: the UID is uncounted and SuccessCriteriaMet is set; then the finalizer
    # goes, the count moves to succeeded, and Complete follows.
    first = world.statuses[1]
    assert first["uncountedTerminatedPods"]["succeeded"] == ["p1"]
    assert [c["type"] for c in first["conditions"]] == ["SuccessCriteriaMet"]
    status = world.status()
    assert status["succeeded"] == 1
    assert status["uncountedTerminatedPods"] == {"succeeded": [], "failed": []}
    assert conditions(world) == [
        ("SuccessCriteriaMet", "True", "CompletionsReached"),
        ("Complete", "True", "CompletionsReached"),
    ]
    assert status["completionTime"] == "2026-01-01T12:00:05Z"
    assert world.pods()[0]["metadata"]["finalizers"] == []
    assert world.events.reasons[-1] == "Completed"
    # Finished: nothing more happens.
    writes = len(world.statuses)
    world.sync()
    assert len(world.statuses) == writes


def test_a_crash_between_the_two_writes_counts_the_pod_once() -> None:
    world = World(job(completions=2, parallelism=2))
    world.sync()
    first, second = world.pods()
    world.finish(first, "Succeeded")
    world.settle()
    # As if the previous process wrote the uncounted UID and died before removing the
    # finalizer: a new controller (no memory) finds it in the status.
    world.job()["status"]["uncountedTerminatedPods"] = {"succeeded": ["p1"]}
    world._bump(world.job())
    world.settle()
    world.controller = type(world.controller)(world.controller._ctx, clock=lambda: world.now)
    world.sync()
    assert world.status()["succeeded"] == 1
    assert world.status()["uncountedTerminatedPods"] == {"succeeded": [], "failed": []}
    world.finish(second, "Succeeded")
    world.settle()
    world.sync()
    assert world.status()["succeeded"] == 2
    assert ("Complete", "True", "CompletionsReached") in conditions(world)


def test_expectations_hold_the_next_sync_until_the_created_pod_is_seen() -> None:
    world = World(job(parallelism=2, completions=4))
    asyncio_run_without_settle(world)
    assert len(world.pods()) == 2
    # The cache has not seen the pods: a second sync creates nothing.
    asyncio_run_without_settle(world)
    assert len(world.pods()) == 2
    world.settle()
    world.sync()
    assert len(world.pods()) == 2


def asyncio_run_without_settle(world: World) -> None:
    import asyncio

    asyncio.run(world.controller.reconcile(Request(NS, "pi")))


def test_failures_wait_out_the_backoff_and_the_limit_fails_the_job() -> None:
    world = World(job(backoffLimit=1))
    world.sync()
    (pod,) = world.pods()
    world.finish(pod, "Failed", exit_code=1)
    world.settle()
    result = world.sync()
    assert world.status()["failed"] == 1
    # The replacement waits 10 s after the failure: the key comes back then, no pod yet.
    assert len(world.live_pods()) == 1  # the failed one, finalizer removed
    assert result.requeue_after == pytest.approx(10.0)
    world.later(10)
    world.sync()
    replacement = world.pods()[-1]
    assert replacement["metadata"]["uid"] == "p2"
    world.finish(replacement, "Failed", exit_code=1)
    world.settle()
    world.sync()
    assert conditions(world) == [
        ("FailureTarget", "True", "BackoffLimitExceeded"),
        ("Failed", "True", "BackoffLimitExceeded"),
    ]
    assert world.status()["failed"] == 2
    assert "completionTime" not in world.status()
    assert world.events.seen[-1] == (
        "Warning",
        "BackoffLimitExceeded",
        "Job has reached the specified backoff limit",
    )


def test_the_active_deadline_requeues_at_the_deadline_then_fails_the_job() -> None:
    world = World(job(activeDeadlineSeconds=30))
    result = world.sync()
    assert result.requeue_after == pytest.approx(30.0)
    (pod,) = world.pods()
    world.run(pod)
    world.settle()
    world.later(30)
    world.sync()
    assert world.deleted == [pod["metadata"]["name"]]
    # The deleted pod terminates: FailureTarget now, Failed once it is gone.
    assert ("FailureTarget", "True", "DeadlineExceeded") in conditions(world)
    assert world.condition("Failed") is None
    world.sync()
    failed = world.condition("Failed")
    assert failed is not None
    assert (failed["reason"], failed["message"]) == (
        "DeadlineExceeded",
        "Job was active longer than specified deadline",
    )
    assert world.status()["failed"] == 1
    assert world.pods() == []


def test_suspend_deletes_the_pods_and_resume_resets_the_start_time() -> None:
    world = World(job(parallelism=2, completions=2))
    world.sync()
    for pod in world.pods():
        world.run(pod)
    world.settle()
    world.sync()
    assert world.status()["ready"] == 2
    world.job()["spec"]["suspend"] = True
    world._bump(world.job())
    world.settle()
    world.later(60)
    world.sync()
    assert world.pods() == []  # finalizers removed, then deleted
    assert conditions(world) == [("Suspended", "True", "JobSuspended")]
    assert "startTime" not in world.status()
    assert world.status()["active"] == 0
    assert "Suspended" in world.events.reasons
    world.job()["spec"]["suspend"] = False
    world._bump(world.job())
    world.settle()
    world.later(60)
    world.sync()
    assert conditions(world) == [("Suspended", "False", "JobResumed")]
    assert world.status()["startTime"] == "2026-01-01T12:02:00Z"
    assert len(world.pods()) == 2
    assert world.events.reasons.count("Resumed") == 1


def test_a_job_created_suspended_has_no_start_time_and_no_pods() -> None:
    world = World(job(suspend=True))
    world.sync()
    assert world.pods() == []
    assert "startTime" not in world.status()
    assert conditions(world) == [("Suspended", "True", "JobSuspended")]


def test_an_indexed_job_gives_each_pod_its_index_and_counts_completed_indexes() -> None:
    world = World(job(completionMode="Indexed", completions=5, parallelism=3))
    world.sync()
    pods = world.pods()
    indexes = sorted(
        p["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"] for p in pods
    )
    assert indexes == ["0", "1", "2"]
    for pod in pods:
        ix = pod["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"]
        assert pod["metadata"]["labels"]["batch.kubernetes.io/job-completion-index"] == ix
        assert pod["spec"]["hostname"] == f"pi-{ix}"
        assert pod["metadata"]["name"].startswith(f"pi-{ix}-")
        env = pod["spec"]["containers"][0]["env"]
        assert env[0]["name"] == "JOB_COMPLETION_INDEX"
    by_index = {
        p["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"]: p for p in pods
    }
    world.finish(by_index["0"], "Succeeded")
    world.finish(by_index["2"], "Succeeded")
    world.settle()
    world.sync()
    assert world.status()["completedIndexes"] == "0,2"
    assert world.status()["succeeded"] == 2
    new = sorted(
        p["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"]
        for p in world.live_pods()
        if p["status"]["phase"] == "Pending"
    )
    assert new == ["1", "3", "4"]
    for pod in world.live_pods():
        if pod["status"]["phase"] == "Pending":
            world.finish(pod, "Succeeded")
    world.settle()
    world.sync()
    assert world.status()["completedIndexes"] == "0-4"
    assert world.status()["succeeded"] == 5
    assert world.condition("Complete") is not None


def test_a_fail_job_rule_fails_the_job_on_its_exit_code() -> None:
    policy = {
        "rules": [
            {"action": "Ignore", "onExitCodes": {"operator": "In", "values": [3]}},
            {"action": "FailJob", "onExitCodes": {"operator": "In", "values": [42]}},
        ]
    }
    world = World(job(podFailurePolicy=policy, podReplacementPolicy="Failed"))
    world.sync()
    (pod,) = world.pods()
    world.finish(pod, "Failed", exit_code=3)  # ignored: not counted (the backoff still runs)
    world.settle()
    world.sync()
    assert world.status().get("failed", 0) == 0
    world.later(10)
    world.sync()
    replacement = world.live_pods()[-1]
    assert replacement["metadata"]["uid"] == "p2"
    world.finish(replacement, "Failed", exit_code=42)
    world.settle()
    world.sync()
    name = replacement["metadata"]["name"]
    message = (
        f"Container c for pod {NS}/{name} failed with exit code 42 matching FailJob rule at index 1"
    )
    target = world.condition("FailureTarget")
    failed = world.condition("Failed")
    assert target is not None and failed is not None
    assert (failed["reason"], failed["message"]) == ("PodFailurePolicy", message)
    assert world.status()["failed"] == 1


def test_a_job_managed_elsewhere_is_left_alone() -> None:
    world = World(job(managedBy="example.com/other"))
    world.sync()
    assert world.pods() == []
    assert world.statuses == []


def test_an_orphan_matching_the_selector_is_adopted_with_the_finalizer() -> None:
    world = World(job(parallelism=1, completions=1))
    world.objects[(PODS, "stray")] = {
        "metadata": {
            "name": "stray",
            "namespace": NS,
            "uid": "s1",
            "resourceVersion": "3",
            "labels": {"batch.kubernetes.io/controller-uid": "j1"},
        },
        "spec": {"containers": [{"name": "c", "image": "i"}]},
        "status": {"phase": "Running"},
    }
    world.settle()
    world.sync()
    stray = world.objects[(PODS, "stray")]
    assert stray["metadata"]["finalizers"] == [FINALIZER]
    assert stray["metadata"]["ownerReferences"][0]["uid"] == "j1"
    assert [p["metadata"]["name"] for p in world.pods()] == ["stray"]
    assert world.status()["active"] == 1


def test_an_orphan_left_with_the_finalizer_loses_it() -> None:
    world = World()
    world.objects[(PODS, "left")] = {
        "metadata": {
            "name": "left",
            "namespace": NS,
            "uid": "l1",
            "resourceVersion": "3",
            "finalizers": [FINALIZER],
        },
        "spec": {},
        "status": {"phase": "Succeeded"},
    }
    world.settle()
    assert Request(NS, "left", PODS) in world.queued
    world.run_queued()
    assert world.objects[(PODS, "left")]["metadata"]["finalizers"] == []


def test_a_refused_create_is_an_event_and_an_error() -> None:
    world = World(job(parallelism=3, completions=3))
    world.fail_creates = 1
    with pytest.raises(Exception, match="quota"):
        world.sync()
    assert world.pods() == []  # slow start: the first batch failed, the rest skipped
    assert world.events.seen[0][:2] == ("Warning", "FailedCreate")
    assert world.events.seen[0][2] == "Error creating: pods is forbidden: quota"
    world.settle()
    world.sync()
    assert len(world.pods()) == 3

"""kubus's Job controller against the real stack: what a user who runs Jobs sees (scenarios of
upstream's test/integration/job that kwok can play).

kwok plays the pods (the dev stack's stages): a Job's running pod succeeds at once
(kubus-job-pod-succeeded), or fails with the exit code of its kubus.dev/job-pod-exit-code
annotation (kubus-job-pod-failed); a pod of an image that cannot be pulled stays Pending,
which keeps a Job active for the deadline and suspend scenarios.
"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from tests.integration.test_partition_shards import overlaps, reconciles
from tests.support.leases import member_of
from tests.support.services import kubus_pool
from tests.support.system import create_namespace
from tests.support.wait import wait_for

pytestmark = pytest.mark.integration

CONTROLLERS = "--controllers=job"
WATCHED = "--resources=batch/v1/jobs,v1/pods"
FINALIZER = "batch.kubernetes.io/job-tracking"
INDEX = "batch.kubernetes.io/job-completion-index"
EXIT_CODE = "kubus.dev/job-pod-exit-code"
PENDING_IMAGE = "registry.example/never:404"  # cannot be pulled: its pod stays Pending


def job(
    name: str, *, image: str = "registry.example/job:1", exit_code: int | None = None, **spec: Any
) -> dict[str, Any]:
    template_meta: dict[str, Any] = {}
    if exit_code is not None:
        template_meta["annotations"] = {EXIT_CODE: str(exit_code)}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {
            "template": {
                "metadata": template_meta,
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [{"name": "main", "image": image}],
                },
            },
            **spec,
        },
    }


def read(batch: client.BatchV1Api, namespace: str, name: str) -> dict[str, Any]:
    """The Job as the apiserver sends it (JSON: absent fields stay absent)."""
    raw = batch.read_namespaced_job(name, namespace, _preload_content=False).data
    found: dict[str, Any] = json.loads(raw)
    return found


def condition(found: dict[str, Any], kind: str) -> dict[str, Any] | None:
    for item in found.get("status", {}).get("conditions") or []:
        if item["type"] == kind and item["status"] == "True":
            cond: dict[str, Any] = item
            return cond
    return None


def finished(batch: client.BatchV1Api, namespace: str, name: str, kind: str) -> Any:
    found = read(batch, namespace, name)
    return found if condition(found, kind) else None


def pods_of(core: client.CoreV1Api, namespace: str, name: str) -> list[Any]:
    return [
        pod
        for pod in core.list_namespaced_pod(namespace).items
        if any(ref.controller and ref.name == name for ref in pod.metadata.owner_references or [])
    ]


def job_events(core: client.CoreV1Api, namespace: str, name: str) -> list[Any]:
    return [
        e
        for e in core.list_namespaced_event(namespace).items
        if e.involved_object.kind == "Job" and e.involved_object.name == name
    ]


def test_a_non_indexed_job_completes_and_releases_its_pods(
    kube: Any, namespace: str, stack_env: dict[str, str], tmp_path: Path
) -> None:
    batch, core = client.BatchV1Api(kube), client.CoreV1Api(kube)
    with kubus_pool(stack_env, tmp_path, extra=[CONTROLLERS], watcher_args=[WATCHED]):
        batch.create_namespaced_job(namespace, job("pi", completions=3, parallelism=2))
        found = wait_for(
            lambda: finished(batch, namespace, "pi", "Complete"), timeout=90, what="Complete"
        )
        status = found["status"]
        assert status["succeeded"] == 3
        assert status.get("failed", 0) == 0
        assert status.get("active", 0) == 0
        assert status["completionTime"] >= status["startTime"]
        met = condition(found, "SuccessCriteriaMet")
        complete = condition(found, "Complete")
        assert met is not None and complete is not None
        assert (complete["reason"], complete["message"]) == (
            "CompletionsReached",
            "Reached expected number of succeeded pods",
        )
        assert met["lastTransitionTime"] <= complete["lastTransitionTime"]
        assert not status.get("uncountedTerminatedPods", {}).get("succeeded")
        pods = wait_for(
            lambda: (
                pods
                if (pods := pods_of(core, namespace, "pi"))
                and all(FINALIZER not in (p.metadata.finalizers or []) for p in pods)
                else None
            ),
            timeout=30,
            what="every pod without the tracking finalizer",
        )
        assert sorted(p.status.phase for p in pods) == ["Succeeded"] * 3
        wait_for(
            lambda: (
                Counter(e.reason for e in job_events(core, namespace, "pi"))["SuccessfulCreate"]
                == 3
                and "Completed" in {e.reason for e in job_events(core, namespace, "pi")}
            ),
            timeout=30,
            what="3 SuccessfulCreate events and a Completed one",
        )
        assert {e.source.component for e in job_events(core, namespace, "pi")} == {"job-controller"}


def test_an_indexed_job_completes_with_every_index(
    kube: Any, namespace: str, stack_env: dict[str, str], tmp_path: Path
) -> None:
    batch, core = client.BatchV1Api(kube), client.CoreV1Api(kube)
    with kubus_pool(stack_env, tmp_path, extra=[CONTROLLERS], watcher_args=[WATCHED]):
        batch.create_namespaced_job(
            namespace, job("idx", completions=5, parallelism=3, completionMode="Indexed")
        )
        found = wait_for(
            lambda: finished(batch, namespace, "idx", "Complete"), timeout=90, what="Complete"
        )
        assert found["status"]["completedIndexes"] == "0-4"
        assert found["status"]["succeeded"] == 5
        pods = pods_of(core, namespace, "idx")
        succeeded = sorted(
            int(p.metadata.annotations[INDEX]) for p in pods if p.status.phase == "Succeeded"
        )
        assert succeeded == [0, 1, 2, 3, 4]
        for pod in pods:
            index = pod.metadata.annotations[INDEX]
            assert pod.metadata.labels[INDEX] == index
            assert pod.spec.hostname == f"idx-{index}"
            assert pod.metadata.name.startswith(f"idx-{index}-")
            env = {e.name: e.value_from.field_ref.field_path for e in pod.spec.containers[0].env}
            assert env == {"JOB_COMPLETION_INDEX": f"metadata.labels['{INDEX}']"}


def test_a_failing_job_reaches_its_backoff_limit(
    kube: Any, namespace: str, stack_env: dict[str, str], tmp_path: Path
) -> None:
    batch, core = client.BatchV1Api(kube), client.CoreV1Api(kube)
    with kubus_pool(stack_env, tmp_path, extra=[CONTROLLERS], watcher_args=[WATCHED]):
        batch.create_namespaced_job(namespace, job("flaky", exit_code=1, backoffLimit=1))
        # Two failures: the replacement waits out the 10 s pod failure backoff.
        found = wait_for(
            lambda: finished(batch, namespace, "flaky", "Failed"), timeout=120, what="Failed"
        )
        status = found["status"]
        assert status["failed"] == 2
        assert status.get("succeeded", 0) == 0
        assert "completionTime" not in status
        target, failed = condition(found, "FailureTarget"), condition(found, "Failed")
        assert target is not None and failed is not None
        for cond in (target, failed):
            assert (cond["reason"], cond["message"]) == (
                "BackoffLimitExceeded",
                "Job has reached the specified backoff limit",
            )
        assert target["lastTransitionTime"] <= failed["lastTransitionTime"]
        pods = pods_of(core, namespace, "flaky")
        assert len(pods) == 2
        first, second = sorted(pods, key=lambda p: p.metadata.creation_timestamp)
        gap = (
            second.metadata.creation_timestamp
            - first.status.container_statuses[0].state.terminated.finished_at
        )
        assert gap.total_seconds() >= 9, gap  # the backoff, at second precision
        wait_for(
            lambda: (
                "BackoffLimitExceeded" in {e.reason for e in job_events(core, namespace, "flaky")}
            ),
            timeout=30,
            what="a BackoffLimitExceeded event",
        )


def test_a_job_past_its_active_deadline_fails_and_loses_its_pods(
    kube: Any, namespace: str, stack_env: dict[str, str], tmp_path: Path
) -> None:
    batch, core = client.BatchV1Api(kube), client.CoreV1Api(kube)
    with kubus_pool(stack_env, tmp_path, extra=[CONTROLLERS], watcher_args=[WATCHED]):
        batch.create_namespaced_job(
            namespace, job("slow", image=PENDING_IMAGE, parallelism=2, activeDeadlineSeconds=5)
        )
        found = wait_for(
            lambda: finished(batch, namespace, "slow", "Failed"), timeout=60, what="Failed"
        )
        failed = condition(found, "Failed")
        assert failed is not None
        assert (failed["reason"], failed["message"]) == (
            "DeadlineExceeded",
            "Job was active longer than specified deadline",
        )
        assert condition(found, "FailureTarget") is not None
        assert found["status"].get("active", 0) == 0
        wait_for(
            lambda: pods_of(core, namespace, "slow") == [],
            timeout=30,
            what="the pods deleted",
        )
        assert "DeadlineExceeded" in {e.reason for e in job_events(core, namespace, "slow")}


def test_a_suspended_job_loses_its_pods_and_resuming_restarts_it(
    kube: Any, namespace: str, stack_env: dict[str, str], tmp_path: Path
) -> None:
    batch, core = client.BatchV1Api(kube), client.CoreV1Api(kube)
    with kubus_pool(stack_env, tmp_path, extra=[CONTROLLERS], watcher_args=[WATCHED]):
        batch.create_namespaced_job(namespace, job("sus", image=PENDING_IMAGE, parallelism=2))
        first = wait_for(
            lambda: (
                found
                if (found := read(batch, namespace, "sus"))["status"].get("active") == 2
                else None
            ),
            timeout=60,
            what="2 active pods",
        )
        started = first["status"]["startTime"]
        batch.patch_namespaced_job("sus", namespace, {"spec": {"suspend": True}})

        def suspended() -> Any:
            found = read(batch, namespace, "sus")
            return (
                found
                if condition(found, "Suspended")
                and found["status"].get("active", 0) == 0
                and not pods_of(core, namespace, "sus")
                else None
            )

        found = wait_for(suspended, timeout=60, what="suspended, without pods")
        cond = condition(found, "Suspended")
        assert cond is not None
        assert (cond["reason"], cond["message"]) == ("JobSuspended", "Job suspended")
        assert "startTime" not in found["status"]
        batch.patch_namespaced_job("sus", namespace, {"spec": {"suspend": False}})

        def resumed() -> Any:
            found = read(batch, namespace, "sus")
            return found if found["status"].get("active") == 2 else None

        found = wait_for(resumed, timeout=60, what="2 active pods again")
        (cond,) = [c for c in found["status"]["conditions"] if c["type"] == "Suspended"]
        assert (cond["status"], cond["reason"], cond["message"]) == (
            "False",
            "JobResumed",
            "Job resumed",
        )
        assert found["status"]["startTime"] >= started
        reasons = {e.reason for e in job_events(core, namespace, "sus")}
        assert {"Suspended", "Resumed", "SuccessfulDelete"} <= reasons, reasons


def test_a_fail_job_rule_fails_the_job_on_an_exit_code(
    kube: Any, namespace: str, stack_env: dict[str, str], tmp_path: Path
) -> None:
    batch, core = client.BatchV1Api(kube), client.CoreV1Api(kube)
    policy = {
        "rules": [
            {
                "action": "FailJob",
                "onExitCodes": {"containerName": "main", "operator": "In", "values": [42]},
            }
        ]
    }
    with kubus_pool(stack_env, tmp_path, extra=[CONTROLLERS], watcher_args=[WATCHED]):
        batch.create_namespaced_job(
            namespace, job("fatal", exit_code=42, backoffLimit=6, podFailurePolicy=policy)
        )
        found = wait_for(
            lambda: finished(batch, namespace, "fatal", "Failed"), timeout=60, what="Failed"
        )
        (pod,) = pods_of(core, namespace, "fatal")
        failed = condition(found, "Failed")
        assert failed is not None
        assert failed["reason"] == "PodFailurePolicy"
        assert failed["message"] == (
            f"Container main for pod {namespace}/{pod.metadata.name} failed with exit code 42 "
            "matching FailJob rule at index 0"
        )
        assert found["status"]["failed"] == 1
        assert FINALIZER not in (pod.metadata.finalizers or [])


def with_command(manifest: dict[str, Any], command: list[str], restart: str) -> dict[str, Any]:
    pod = manifest["spec"]["template"]["spec"]
    pod["containers"][0]["command"] = command
    pod["restartPolicy"] = restart
    return manifest


def test_the_commands_of_upstream_e2e_jobs_are_played_as_a_kubelet_runs_them(
    kube: Any, namespace: str, stack_env: dict[str, str], tmp_path: Path
) -> None:
    """The dev stack's kwok stages read a Job pod's command as upstream's e2e Jobs write it:
    `exit 0` succeeds, `exit 1` fails, `/bin/false` under OnFailure crash-loops (restarts that
    count against backoffLimit), `sleep` keeps running."""
    batch, core = client.BatchV1Api(kube), client.CoreV1Api(kube)
    with kubus_pool(stack_env, tmp_path, extra=[CONTROLLERS], watcher_args=[WATCHED]):
        for manifest in (
            with_command(job("exits-0", completions=2), ["/bin/sh", "-c", "exit 0"], "Never"),
            with_command(job("exits-1", backoffLimit=0), ["/bin/sh", "-c", "exit 1"], "Never"),
            with_command(job("crash-loops", backoffLimit=2), ["/bin/false"], "OnFailure"),
            with_command(job("sleeps"), ["sleep", "300"], "Never"),
        ):
            batch.create_namespaced_job(namespace, manifest)
        done = wait_for(
            lambda: finished(batch, namespace, "exits-0", "Complete"), timeout=90, what="Complete"
        )
        assert done["status"]["succeeded"] == 2
        for name in ("exits-1", "crash-loops"):
            failed = wait_for(
                lambda: finished(batch, namespace, name, "Failed"),  # noqa: B023 (waited on here)
                timeout=90,
                what=f"{name} Failed",
            )
            reason = (condition(failed, "Failed") or {}).get("reason")
            assert reason == "BackoffLimitExceeded", (name, failed["status"])
        exits_1 = read(batch, namespace, "exits-1")["status"]
        assert exits_1["failed"] == 1 and exits_1.get("succeeded", 0) == 0
        # The crash loop failed the Job by its restarts, in its one pod, not by failed pods.
        crash = read(batch, namespace, "crash-loops")["status"]
        assert crash.get("failed", 0) == 1 and crash.get("succeeded", 0) == 0
        sleeper = read(batch, namespace, "sleeps")
        assert sleeper["status"].get("active") == 1
        assert not condition(sleeper, "Complete") and not condition(sleeper, "Failed")
        (pod,) = pods_of(core, namespace, "sleeps")
        assert pod.status.phase == "Running"


SIGTERM_TRAP = """_term(){
	sleep 5
	exit 143
}
trap _term SIGTERM
while true; do
	sleep 1
done"""


def test_with_replacement_policy_failed_a_deleted_pod_is_replaced_once_it_has_failed(
    kube: Any, namespace: str, stack_env: dict[str, str], tmp_path: Path
) -> None:
    """Upstream e2e's podReplacementPolicy scenario: a pod that traps SIGTERM and exits 143
    five seconds after it (played so by the dev stack's kwok) is deleted; the Job reports it
    terminating, creates no replacement until it is Failed, then one."""
    batch, core = client.BatchV1Api(kube), client.CoreV1Api(kube)
    manifest = with_command(
        job("recreate", backoffLimit=1, podReplacementPolicy="Failed"),
        ["/bin/sh", "-c", SIGTERM_TRAP],
        "Never",
    )
    with kubus_pool(stack_env, tmp_path, extra=[CONTROLLERS], watcher_args=[WATCHED]):
        batch.create_namespaced_job(namespace, manifest)
        (pod,) = wait_for(
            lambda: (
                pods
                if len(pods := pods_of(core, namespace, "recreate")) == 1
                and pods[0].status.phase == "Running"
                else None
            ),
            timeout=60,
            what="the Job's pod Running",
        )
        core.delete_namespaced_pod(pod.metadata.name, namespace, grace_period_seconds=30)

        def counts() -> tuple[int, int, int]:
            status = read(batch, namespace, "recreate").get("status", {})
            return status.get("active", 0), status.get("failed", 0), status.get("terminating", 0)

        wait_for(
            lambda: counts() == (0, 0, 1), timeout=30, what="0 active, 0 failed, 1 terminating"
        )
        wait_for(
            lambda: counts() == (1, 1, 0), timeout=60, what="1 active, 1 failed, 0 terminating"
        )
        replacement = [
            p for p in pods_of(core, namespace, "recreate") if p.metadata.uid != pod.metadata.uid
        ]
        assert len(replacement) == 1


def test_jobs_complete_with_exact_counts_across_a_kill_9(
    kube: Any, stack_env: dict[str, str], tmp_path: Path
) -> None:
    """Three processes; the one that reconciled the most Jobs is killed mid-way: its Jobs move
    to the survivors, which count every pod exactly once from the Jobs' status."""
    batch, core = client.BatchV1Api(kube), client.CoreV1Api(kube)
    run = uuid.uuid4().hex[:5]
    namespaces = [create_namespace(core, f"job-{run}-{i}") for i in range(6)]
    completions = 40
    audit = tmp_path / "audit.jsonl"
    try:
        with kubus_pool(
            stack_env,
            tmp_path,
            reconcilers=3,
            extra=[CONTROLLERS, f"--reconcile-audit-log={audit}"],
            watcher_args=[WATCHED],
        ) as pool:
            members = {member_of(process): process for process in pool.reconcilers}
            for ns in namespaces:
                batch.create_namespaced_job(ns, job("work", completions=completions, parallelism=2))
            wait_for(
                lambda: all(
                    read(batch, ns, "work")["status"].get("succeeded", 0) >= 2 for ns in namespaces
                ),
                timeout=120,
                what="every Job under way",
            )
            busiest = Counter(
                member
                for (controller, _key), entries in reconciles(audit).items()
                if controller == "job-controller"
                for *_, member in entries
            ).most_common(1)[0][0]
            members[busiest].kill()
            unfinished = [ns for ns in namespaces if not finished(batch, ns, "work", "Complete")]
            assert unfinished, "every Job finished before the kill: nothing was mid-way"
            for ns in namespaces:
                found = wait_for(
                    lambda n=ns: finished(batch, n, "work", "Complete"),
                    timeout=240,
                    what=f"the Job of {ns} Complete after the kill -9",
                )
                status = found["status"]
                assert status["succeeded"] == completions, (ns, status)
                assert status.get("failed", 0) == 0, (ns, status)
                assert not status.get("uncountedTerminatedPods", {}).get("succeeded")
                pods = pods_of(core, ns, "work")
                assert all(FINALIZER not in (p.metadata.finalizers or []) for p in pods)
    finally:
        for ns in namespaces:
            try:
                core.delete_namespace(ns)
            except ApiException as error:
                if error.status != 404:
                    raise
    assert overlaps(reconciles(audit)) == []

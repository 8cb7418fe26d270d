"""The Job controller's sync with the policies: podReplacementPolicy, backoffLimitPerIndex
with maxFailedIndexes and FailIndex, the success policy, and the pods a Job lets go."""

from __future__ import annotations

from typing import Any

from reconcilers.controller import Request
from reconcilers.kinds import JOBS, PODS
from tests.unit.job_world import FINALIZER, NS, World, job

INDEX = "batch.kubernetes.io/job-completion-index"
FAILURES = "batch.kubernetes.io/job-index-failure-count"


def by_index(world: World, *, live: bool = True) -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = {}
    for pod in world.live_pods() if live else world.pods():
        found.setdefault(pod["metadata"]["annotations"][INDEX], []).append(pod)
    return found


def test_with_replacement_policy_failed_a_terminating_pod_is_replaced_only_once_failed() -> None:
    world = World(job(podReplacementPolicy="Failed"))
    world.sync()
    (pod,) = world.pods()
    world.run(pod)
    pod["metadata"]["deletionTimestamp"] = "2026-01-01T12:00:00Z"  # someone deletes it
    world._bump(pod)
    world.settle()
    world.sync()
    assert len(world.pods()) == 1  # not replaced while it terminates
    assert (world.status()["active"], world.status()["terminating"]) == (0, 1)
    world.finish(pod, "Failed", exit_code=137)
    world.settle()
    world.sync()
    world.later(10)
    world.sync()
    assert len(world.live_pods()) == 1
    assert world.status()["failed"] == 1


def test_with_the_default_policy_a_terminating_pod_is_replaced_at_once_and_counted_failed() -> None:
    world = World(job())
    world.sync()
    (pod,) = world.pods()
    world.run(pod)
    pod["metadata"]["deletionTimestamp"] = "2026-01-01T12:00:00Z"
    world._bump(pod)
    world.settle()
    world.sync()
    assert world.status()["failed"] == 1
    assert world.status()["terminating"] == 1
    world.later(10)
    world.sync()
    assert len(world.live_pods()) == 1


def test_backoff_limit_per_index_fails_an_index_and_max_failed_indexes_the_job() -> None:
    world = World(
        job(
            completionMode="Indexed",
            completions=3,
            parallelism=3,
            backoffLimitPerIndex=1,
            maxFailedIndexes=0,
            backoffLimit=2**31 - 1,
        )
    )
    world.sync()
    pods = by_index(world)
    assert pods["0"][0]["metadata"]["annotations"][FAILURES] == "0"
    world.finish(pods["0"][0], "Failed", exit_code=1)
    world.settle()
    world.sync()
    # The failed pod keeps its finalizer until its replacement carries the count on.
    world.later(10)
    world.sync()
    (replacement,) = [p for p in by_index(world)["0"] if p["status"]["phase"] == "Pending"]
    assert replacement["metadata"]["annotations"][FAILURES] == "1"
    world.finish(replacement, "Failed", exit_code=1)
    world.settle()
    world.sync()
    world.sync()
    assert world.status()["failedIndexes"] == "0"
    failed = world.condition("Failed")
    assert failed is not None
    assert (failed["reason"], failed["message"]) == (
        "MaxFailedIndexesExceeded",
        "Job has exceeded the specified maximal number of failed indexes",
    )


def test_a_fail_index_rule_fails_only_that_index() -> None:
    policy = {"rules": [{"action": "FailIndex", "onExitCodes": {"operator": "In", "values": [3]}}]}
    world = World(
        job(
            completionMode="Indexed",
            completions=2,
            parallelism=2,
            backoffLimitPerIndex=5,
            podFailurePolicy=policy,
            podReplacementPolicy="Failed",
        )
    )
    world.sync()
    pods = by_index(world)
    world.finish(pods["1"][0], "Failed", exit_code=3)
    world.finish(pods["0"][0], "Succeeded")
    world.settle()
    world.sync()
    world.sync()
    status = world.status()
    assert (status["completedIndexes"], status["failedIndexes"]) == ("0", "1")
    failed = world.condition("Failed")
    assert failed is not None
    assert (failed["reason"], failed["message"]) == ("FailedIndexes", "Job has failed indexes")


def test_a_success_policy_completes_the_job_early_and_removes_the_rest() -> None:
    world = World(
        job(
            completionMode="Indexed",
            completions=3,
            parallelism=3,
            successPolicy={"rules": [{"succeededIndexes": "0"}]},
        )
    )
    world.sync()
    pods = by_index(world)
    world.run(pods["1"][0])
    world.finish(pods["0"][0], "Succeeded")
    world.settle()
    world.sync()
    met = world.condition("SuccessCriteriaMet")
    assert met is not None
    assert (met["reason"], met["message"]) == ("SuccessPolicy", "Matched rules at index 0")
    assert sorted(world.deleted) == sorted(
        p[0]["metadata"]["name"] for k, p in pods.items() if k != "0"
    )
    world.sync()
    complete = world.condition("Complete")
    assert complete is not None
    assert complete["reason"] == "SuccessPolicy"
    assert world.status()["completedIndexes"] == "0"
    assert world.status()["succeeded"] == 1


def test_a_pod_that_stops_matching_is_released_with_its_finalizer() -> None:
    world = World(job())
    world.sync()
    (pod,) = world.pods()
    pod["metadata"]["labels"] = {"other": "x"}
    world._bump(pod)
    world.settle()
    world.sync()
    released = world.objects[(PODS, pod["metadata"]["name"])]
    assert released["metadata"]["ownerReferences"] == []
    assert released["metadata"]["finalizers"] == []
    assert len(world.live_pods()) == 2  # and replaced


def test_the_pods_of_a_deleted_job_lose_the_finalizer() -> None:
    world = World(job())
    world.sync()
    (pod,) = world.pods()
    del world.objects[(JOBS, "pi")]
    world.settle()
    assert Request(NS, pod["metadata"]["name"], PODS) in world.queued
    world.run_queued()
    assert FINALIZER not in world.objects[(PODS, pod["metadata"]["name"])]["metadata"]["finalizers"]

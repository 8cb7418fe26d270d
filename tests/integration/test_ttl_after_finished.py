"""kubus's TTL-after-finished controller against the real stack: what a user who sets
``ttlSecondsAfterFinished`` on a Job sees, through a kill -9 of the process serving the Jobs.

Three reconcilers run kubus's job-controller (kwok plays the Jobs' pods to Succeeded, the dev
stack's kubus-job-pod-succeeded stage), its TTL controller with one worker per process, and its
garbage collector (nothing else collects garbage here): a Job deleted in the foreground goes
only after its pods.

A namespace is one partition, served by one process whose one TTL worker reconciles the keys in
their due order, so a Job deleted after a kept one was due proves the kept one was looked at
and kept, with no sleep.
"""

from __future__ import annotations

import datetime
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from bus.subjects import partition_of
from tests.support.leases import lease_owners, member_of, settled_owners
from tests.support.services import Pool, kubus_pool
from tests.support.wait import wait_for

pytestmark = pytest.mark.integration

CONTROLLERS = "--controllers=job,ttl-after-finished,garbagecollector"
ONE_WORKER = "--concurrent-ttl-after-finished-syncs=1"
WATCH_ALL = ["--resources", "all"]  # the garbage collector reads every resource
FAILOVER = 30.0  # the lease expiry, the replay, a sync


@pytest.fixture(scope="module")
def ttl_pool(stack_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pool]:
    with kubus_pool(
        stack_env,
        tmp_path_factory.mktemp("ttl"),
        reconcilers=3,
        extra=[CONTROLLERS, ONE_WORKER],
        watcher_args=WATCH_ALL,
    ) as pool:
        # The partitions handed out before any test: a namespace stays on one process (and its
        # one worker) until the last test kills that process.
        settled_owners(stack_env, pool)
        yield pool


@pytest.fixture
def batch(kube: Any) -> client.BatchV1Api:
    return client.BatchV1Api(kube)


@pytest.fixture
def core(kube: Any) -> client.CoreV1Api:
    return client.CoreV1Api(kube)


def new_job(
    batch: client.BatchV1Api, namespace: str, *, ttl: int | None, suspend: bool = False
) -> Any:
    spec: dict[str, Any] = {
        "backoffLimit": 0,
        "template": {
            "spec": {
                "restartPolicy": "Never",
                "containers": [{"name": "work", "image": "registry.example/work:1"}],
            }
        },
    }
    if ttl is not None:
        spec["ttlSecondsAfterFinished"] = ttl
    if suspend:
        spec["suspend"] = True
    name = f"job-{uuid.uuid4().hex[:6]}"
    return batch.create_namespaced_job(namespace, {"metadata": {"name": name}, "spec": spec})


def job_or_none(batch: client.BatchV1Api, namespace: str, name: str) -> Any:
    try:
        return batch.read_namespaced_job(name, namespace)
    except ApiException as error:
        if error.status == 404:
            return None
        raise


def finish_time(job: Any) -> datetime.datetime | None:
    for condition in job.status.conditions or ():
        if condition.type in ("Complete", "Failed") and condition.status == "True":
            when: datetime.datetime = condition.last_transition_time
            return when
    return None


def finished(batch: client.BatchV1Api, namespace: str, name: str) -> Any:
    job = job_or_none(batch, namespace, name)
    assert job is not None, f"job {name} deleted before it was seen finished"
    return job if finish_time(job) is not None else None


def pods_of(core: client.CoreV1Api, namespace: str, job: Any) -> list[Any]:
    selector = f"batch.kubernetes.io/controller-uid={job.metadata.uid}"
    items: list[Any] = core.list_namespaced_pod(namespace, label_selector=selector).items
    return items


def wait_gone(batch: client.BatchV1Api, namespace: str, name: str, where: str) -> None:
    wait_for(
        lambda: job_or_none(batch, namespace, name) is None,
        timeout=90,
        what=f"job {name} deleted {where}",
    )


def where(pool: Pool) -> str:
    return "(logs: " + ", ".join(str(process.log) for process in pool.reconcilers) + ")"


def test_a_job_with_ttl_0_is_deleted_once_finished_pods_first(
    ttl_pool: Pool, batch: client.BatchV1Api, core: client.CoreV1Api, namespace: str
) -> None:
    job = new_job(batch, namespace, ttl=0)
    name, uid = job.metadata.name, job.metadata.uid
    wait_gone(batch, namespace, name, where(ttl_pool))
    # Foreground: the Job goes only once the garbage collector has deleted its pods.
    assert pods_of(core, namespace, job) == []

    # The Job finished before it went, and had a pod: the job-controller's events outlive both.
    def events() -> dict[str, list[str]] | None:
        found: dict[str, list[str]] = {}
        for event in core.list_namespaced_event(namespace).items:
            if event.involved_object.uid == uid:
                found.setdefault(str(event.reason), []).append(str(event.message))
        return found if {"Completed", "SuccessfulCreate"} <= set(found) else None

    seen = wait_for(events, timeout=30, what=f"job {name}'s Completed and SuccessfulCreate events")
    (created,) = seen["SuccessfulCreate"]
    pod_name = created.removeprefix("Created pod: ")
    with pytest.raises(ApiException) as missing:
        core.read_namespaced_pod(pod_name, namespace)
    assert missing.value.status == 404


def test_a_job_with_ttl_5_stays_until_5s_after_it_finished(
    ttl_pool: Pool, batch: client.BatchV1Api, core: client.CoreV1Api, namespace: str
) -> None:
    name = new_job(batch, namespace, ttl=5).metadata.name
    job = wait_for(
        lambda: finished(batch, namespace, name), timeout=90, what=f"job {name} finished"
    )
    finished_at = finish_time(job)
    assert finished_at is not None
    assert pods_of(core, namespace, job), "the finished Job's pod is kept until the Job goes"
    wait_gone(batch, namespace, name, where(ttl_pool))
    # Seen gone no earlier than due (the condition's time is truncated to the second: the Job
    # finished at or after it).
    assert time.time() >= finished_at.timestamp() + 5
    assert pods_of(core, namespace, job) == []


def test_a_job_whose_ttl_is_removed_before_it_is_due_is_kept(
    ttl_pool: Pool, batch: client.BatchV1Api, namespace: str
) -> None:
    kept = new_job(batch, namespace, ttl=8).metadata.name
    job = wait_for(
        lambda: finished(batch, namespace, kept), timeout=90, what=f"job {kept} finished"
    )
    finished_at = finish_time(job)
    assert finished_at is not None
    due = finished_at.timestamp() + 8
    batch.patch_namespaced_job(kept, namespace, {"spec": {"ttlSecondsAfterFinished": None}})
    assert time.time() < due, "the TTL was removed too late for this test to mean anything"
    # A witness finishing after the kept Job, with a TTL one second longer: due after it, so
    # the one worker reached the kept Job's due time before it deleted the witness.
    witness = new_job(batch, namespace, ttl=9).metadata.name
    wait_gone(batch, namespace, witness, where(ttl_pool))
    assert time.time() > due
    survivor = job_or_none(batch, namespace, kept)
    assert survivor is not None, f"job {kept} was deleted after its TTL was removed"
    assert survivor.spec.ttl_seconds_after_finished is None


def test_an_unfinished_job_with_a_ttl_is_not_deleted_until_it_finishes(
    ttl_pool: Pool, batch: client.BatchV1Api, namespace: str
) -> None:
    waiting = new_job(batch, namespace, ttl=0, suspend=True).metadata.name
    witness = new_job(batch, namespace, ttl=0).metadata.name
    wait_gone(batch, namespace, witness, where(ttl_pool))
    # The witness's changes came after the suspended Job's: the pool has seen it, and left it.
    suspended = job_or_none(batch, namespace, waiting)
    assert suspended is not None and finish_time(suspended) is None
    # Resumed, it runs, finishes, and goes as its TTL says.
    batch.patch_namespaced_job(waiting, namespace, {"spec": {"suspend": False}})
    wait_gone(batch, namespace, waiting, where(ttl_pool))


def test_after_a_kill_9_of_the_serving_process_jobs_still_go_when_due(
    ttl_pool: Pool,
    stack_env: dict[str, str],
    batch: client.BatchV1Api,
    core: client.CoreV1Api,
    namespace: str,
) -> None:
    """The last test of the module: the process serving the namespace dies with a finished Job's
    due time in its memory and a suspended Job not yet run; the survivor that takes the
    partition over deletes the first when due, runs the second when resumed, and deletes it."""
    due_later = new_job(batch, namespace, ttl=12).metadata.name
    waiting = new_job(batch, namespace, ttl=0, suspend=True).metadata.name
    job = wait_for(
        lambda: finished(batch, namespace, due_later),
        timeout=90,
        what=f"job {due_later} finished {where(ttl_pool)}",
    )
    finished_at = finish_time(job)
    assert finished_at is not None
    owners = lease_owners(stack_env, ttl_pool)
    members = {member_of(process): process for process in ttl_pool.reconcilers}
    dead = owners[partition_of(namespace, "")]
    victim = members[dead]
    victim.kill()
    assert time.time() < finished_at.timestamp() + 12, "killed too late to mean anything"

    batch.patch_namespaced_job(waiting, namespace, {"spec": {"suspend": False}})
    for name in (due_later, waiting):
        wait_for(
            lambda name=name: job_or_none(batch, namespace, name) is None,
            timeout=90 + FAILOVER,
            what=f"job {name} deleted after the kill -9 of {victim.log} {where(ttl_pool)}",
        )
    assert time.time() >= finished_at.timestamp() + 12
    assert lease_owners(stack_env, ttl_pool).get(partition_of(namespace, "")) not in (None, dead)

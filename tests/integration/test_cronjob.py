"""kubus's CronJob controller against the real stack: what a user with CronJobs sees, minute
by minute, through a kill -9 of the reconciler serving them.

kubus's job-controller runs in the same pool: it runs the Jobs' pods (kwok plays them to
Succeeded) and marks the Jobs Complete. Jobs that must stay active come from templates with
``suspend: true``; the Jobs of the history-limit test are managed by nobody
(``spec.managedBy``), their status written here.

Every CronJob of the scenario is created at once, in one namespace, so one minute boundary
serves them all; the waits are on what the apiserver shows, with deadlines: a minute is at most
60 s away, plus the requeue's 0.1 s and the failover's bound.
"""

from __future__ import annotations

import datetime
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from kubernetes import client

from bus.subjects import partition_of
from tests.support.leases import lease_owners, member_of
from tests.support.services import Pool, kubus_pool
from tests.support.system import create_namespace
from tests.support.wait import wait_for

pytestmark = pytest.mark.integration

CONTROLLERS = "--controllers=cronjob,job"
WATCHED = "--resources=batch/v1/cronjobs,batch/v1/jobs,v1/pods"
SCHEDULED = "batch.kubernetes.io/cronjob-scheduled-timestamp"
MINUTE_WAIT = 75.0  # the next minute, the requeue, and some slack on a busy machine
FAILOVER = 30.0  # the lease expiry, the replay, a sync


@pytest.fixture(scope="module")
def pool(stack_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pool]:
    """Three reconcilers running kubus's CronJob and Job controllers: one of them will be killed."""
    with kubus_pool(
        stack_env,
        tmp_path_factory.mktemp("cronjob"),
        reconcilers=3,
        extra=[CONTROLLERS],
        watcher_args=[WATCHED],
    ) as running:
        yield running


def template(*, suspend: bool = False) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "backoffLimit": 0,
        "template": {
            "spec": {
                "restartPolicy": "Never",
                "containers": [{"name": "tick", "image": "registry.example/tick:1"}],
            }
        },
    }
    if suspend:
        spec["suspend"] = True  # never finishes: an active Job for ever
    return {"metadata": {"labels": {"app": "tick"}}, "spec": spec}


def cronjob(name: str, schedule: str = "* * * * *", **spec: Any) -> dict[str, Any]:
    job_template = spec.pop("jobTemplate", template())
    return {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": {"name": name},
        "spec": {"schedule": schedule, "jobTemplate": job_template, **spec},
    }


@dataclass
class Scene:
    namespace: str
    batch: client.BatchV1Api
    core: client.CoreV1Api
    pool: Pool
    stack_env: dict[str, str]

    def cronjob(self, name: str) -> Any:
        return self.batch.read_namespaced_cron_job(name, self.namespace)

    def jobs_of(self, name: str) -> list[Any]:
        """The Jobs whose controller is the CronJob ``name``, oldest name first."""
        uid = self.cronjob(name).metadata.uid
        jobs = self.batch.list_namespaced_job(self.namespace).items
        return sorted(
            (
                job
                for job in jobs
                if any(
                    ref.controller and ref.uid == uid for ref in job.metadata.owner_references or ()
                )
            ),
            key=lambda job: job.metadata.name,
        )

    def reasons(self, name: str) -> list[str]:
        events = self.core.list_namespaced_event(
            self.namespace, field_selector=f"involvedObject.name={name}"
        ).items
        return [event.reason for event in events]

    def where(self) -> str:
        logs = ", ".join(str(p.log) for p in self.pool.reconcilers)
        return f"(logs: {logs})"


@pytest.fixture(scope="module")
def scene(kube: Any, pool: Pool, stack_env: dict[str, str]) -> Iterator[Scene]:
    """Every CronJob of the module, created at once."""
    core, batch = client.CoreV1Api(kube), client.BatchV1Api(kube)
    namespace = create_namespace(core, f"cron-{uuid.uuid4().hex[:6]}")
    for body in (
        cronjob("allow"),
        cronjob("forbid", concurrencyPolicy="Forbid", jobTemplate=template(suspend=True)),
        cronjob("replace", concurrencyPolicy="Replace", jobTemplate=template(suspend=True)),
        cronjob("paused", suspend=True),
        cronjob(
            "history",
            "0 0 1 1 *",
            successfulJobsHistoryLimit=1,
            failedJobsHistoryLimit=1,
        ),
    ):
        batch.create_namespaced_cron_job(namespace, body)
    yield Scene(namespace, batch, core, pool, stack_env)
    core.delete_namespace(namespace)


def minutes(when: datetime.datetime) -> int:
    return int(when.timestamp()) // 60


def first_jobs(scene: Scene, name: str) -> list[Any]:
    return wait_for(
        lambda: scene.jobs_of(name),
        timeout=MINUTE_WAIT,
        what=f"the first Job of CronJob {name} {scene.where()}",
    )


def test_each_minute_a_cronjob_starts_a_job_named_by_the_minute_and_owned_by_it(
    scene: Scene,
) -> None:
    (job,) = first_jobs(scene, "allow")[:1]
    scheduled = datetime.datetime.fromisoformat(job.metadata.annotations[SCHEDULED])
    assert scheduled.tzinfo == datetime.UTC and scheduled.second == 0
    assert job.metadata.name == f"allow-{minutes(scheduled)}"
    assert job.metadata.labels["app"] == "tick"
    (owner,) = job.metadata.owner_references
    cj = scene.cronjob("allow")
    assert (owner.kind, owner.name, owner.uid) == ("CronJob", "allow", cj.metadata.uid)
    assert owner.controller and owner.block_owner_deletion

    def scheduled_status() -> Any:
        status = scene.cronjob("allow").status
        return status if status.last_schedule_time else None

    status = wait_for(scheduled_status, timeout=30, what="allow's lastScheduleTime")
    assert status.last_schedule_time == scheduled
    # The job-controller runs the Job to completion: it leaves status.active.
    done = wait_for(
        lambda: (s := scene.cronjob("allow").status).last_successful_time and s,
        timeout=60,
        what=f"allow's lastSuccessfulTime {scene.where()}",
    )
    assert job.metadata.name not in [ref.name for ref in done.active or ()]
    assert {"SuccessfulCreate", "SawCompletedJob"} <= set(scene.reasons("allow"))


def test_history_limits_delete_the_oldest_finished_jobs(scene: Scene) -> None:
    cj = scene.cronjob("history")
    now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)

    def finished_job(name: str, hours_ago: int, *, succeeded: bool) -> None:
        scene.batch.create_namespaced_job(
            scene.namespace,
            {
                "metadata": {
                    "name": name,
                    "ownerReferences": [
                        {
                            "apiVersion": "batch/v1",
                            "kind": "CronJob",
                            "name": "history",
                            "uid": cj.metadata.uid,
                            "controller": True,
                        }
                    ],
                },
                # Nobody's: the job-controller leaves it to this test.
                "spec": {**template()["spec"], "managedBy": "kubus.test/nobody"},
            },
        )
        started = now - datetime.timedelta(hours=hours_ago)
        stamp = started.strftime("%Y-%m-%dT%H:%M:%SZ")
        ended = (started + datetime.timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%SZ")
        first, final = (
            ("SuccessCriteriaMet", "Complete") if succeeded else ("FailureTarget", "Failed")
        )
        status: dict[str, Any] = {
            "startTime": stamp,
            "conditions": [
                {"type": kind, "status": "True", "reason": "Test", "lastTransitionTime": ended}
                for kind in (first, final)
            ],
        }
        if succeeded:
            status.update(completionTime=ended, succeeded=1)
        else:
            status["failed"] = 1
        scene.batch.patch_namespaced_job_status(name, scene.namespace, {"status": status})

    for name, hours_ago in (("s1", 3), ("s2", 2), ("s3", 1)):
        finished_job(name, hours_ago, succeeded=True)
    for name, hours_ago in (("f1", 3), ("f2", 2)):
        finished_job(name, hours_ago, succeeded=False)
    wait_for(
        lambda: [j.metadata.name for j in scene.jobs_of("history")] == ["f2", "s3"],
        timeout=30,
        what=f"history's oldest finished Jobs deleted {scene.where()}",
    )
    latest = now - datetime.timedelta(hours=1) + datetime.timedelta(minutes=5)  # s3's end
    wait_for(
        lambda: scene.cronjob("history").status.last_successful_time == latest,
        timeout=30,
        what="history's lastSuccessfulTime: s3's completion",
    )
    assert scene.reasons("history").count("SuccessfulDelete") == 3


def scheduled_minute(job: Any) -> int:
    return minutes(datetime.datetime.fromisoformat(job.metadata.annotations[SCHEDULED]))


def test_after_a_kill_9_the_next_minute_follows_each_concurrency_policy(scene: Scene) -> None:
    first_jobs(scene, "allow")
    (forbid_first,) = first_jobs(scene, "forbid")
    first_jobs(scene, "replace")
    # The reconciler serving the namespace dies; a survivor takes its partitions over.
    owners = wait_for(
        lambda: (o := lease_owners(scene.stack_env, scene.pool)) and len(o) == 32 and o,
        timeout=30,
        what="every partition leased",
    )
    members = {member_of(process): process for process in scene.pool.reconcilers}
    victim = owners[partition_of(scene.namespace, "")]
    members[victim].kill()
    after = minutes(datetime.datetime.now(datetime.UTC)) + 1  # the first minute it misses

    deadline = MINUTE_WAIT + FAILOVER
    wait_for(
        lambda: any(scheduled_minute(j) >= after for j in scene.jobs_of("allow")),
        timeout=deadline,
        what=f"allow's Job of a minute after the kill {scene.where()}",
    )
    (replaced,) = wait_for(
        lambda: (j := scene.jobs_of("replace")) and scheduled_minute(j[-1]) >= after and j,
        timeout=deadline,
        what=f"replace's Job replaced by one of a minute after the kill {scene.where()}",
    )
    wait_for(
        lambda: (
            [r.name for r in scene.cronjob("replace").status.active or ()]
            == [replaced.metadata.name]
        ),
        timeout=30,
        what="replace's status.active: the new Job only",
    )
    assert "SuccessfulDelete" in scene.reasons("replace")
    wait_for(
        lambda: "JobAlreadyActive" in scene.reasons("forbid"),
        timeout=30,
        what=f"forbid's JobAlreadyActive {scene.where()}",
    )
    assert [j.metadata.name for j in scene.jobs_of("forbid")] == [forbid_first.metadata.name]
    active = [ref.name for ref in scene.cronjob("forbid").status.active or ()]
    assert active == [forbid_first.metadata.name]


def test_a_suspended_cronjob_starts_nothing_until_resumed(scene: Scene) -> None:
    # Two minutes have started Jobs of the others by now (or wait for them): none of its own.
    wait_for(
        lambda: len(scene.jobs_of("allow")) >= 2,
        timeout=2 * MINUTE_WAIT,
        what=f"allow's second Job {scene.where()}",
    )
    assert scene.jobs_of("paused") == []
    scene.batch.patch_namespaced_cron_job("paused", scene.namespace, {"spec": {"suspend": False}})
    # Resumed, it starts the most recent time it missed, at once.
    (job,) = wait_for(
        lambda: scene.jobs_of("paused"),
        timeout=30,
        what=f"paused's Job once resumed {scene.where()}",
    )
    scheduled = datetime.datetime.fromisoformat(job.metadata.annotations[SCHEDULED])
    assert job.metadata.name == f"paused-{minutes(scheduled)}"

"""The CronJob controller's sync, with upstream's fixtures (a CronJob created just before 10:00
on 2016-05-19, hourly): which Job starts when, what status and events follow, which Jobs the
history limits delete, and which changes queue the CronJob."""

from __future__ import annotations

import asyncio
import datetime
from typing import Any

import msgspec
import pytest

from bus.envelope import Envelope, EventType
from bus.subjects import ObjectRef, ResourceType
from kubus.kube import AlreadyExistsError, ApiResource, NotFoundError
from reconcilers.cache import ObjectCache
from reconcilers.controller import Context, Request, Result, Scope
from reconcilers.controllers.cronjob import CronJobController
from reconcilers.controllers.cronjob.controller import job_name, oldest_first
from reconcilers.kinds import CRONJOBS, JOBS
from reconcilers.registry import BUILTIN, Declared

UTC = datetime.UTC
NS = "snazzycats"
TOP = datetime.datetime(2016, 5, 19, 10, tzinfo=UTC)
JOB_AT_TOP = "mycronjob-24394200"  # 10:00 in minutes since the epoch


def at(**delta: float) -> datetime.datetime:
    return TOP + datetime.timedelta(**delta)


def stamp(when: datetime.datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def cronjob(**spec: Any) -> dict[str, Any]:
    status = spec.pop("status", {})
    return {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": {
            "name": "mycronjob",
            "namespace": NS,
            "uid": "1a2b3c",
            "resourceVersion": "1",
            "creationTimestamp": stamp(at(minutes=-1)),
        },
        "spec": {
            "schedule": "0 * * * ?",
            "concurrencyPolicy": "Allow",
            "jobTemplate": {
                "metadata": {"labels": {"a": "b"}, "annotations": {"x": "y"}},
                "spec": {"template": {"spec": {"containers": [{"image": "foo/bar"}]}}},
            },
            **spec,
        },
        "status": status,
    }


def job(
    name: str,
    *,
    finished: str | None = None,
    started: datetime.datetime | None = None,
    completed: datetime.datetime | None = None,
    owner: str = "mycronjob",
    owner_uid: str = "1a2b3c",
) -> dict[str, Any]:
    status: dict[str, Any] = {}
    if finished is not None:
        status["conditions"] = [{"type": finished, "status": "True"}]
    if started is not None:
        status["startTime"] = stamp(started)
    if completed is not None:
        status["completionTime"] = stamp(completed)
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": name,
            "namespace": NS,
            "uid": f"uid-{name}",
            "resourceVersion": "5",
            "ownerReferences": [
                {"kind": "CronJob", "name": owner, "uid": owner_uid, "controller": True}
            ],
        },
        "spec": {},
        "status": status,
    }


def ref(body: dict[str, Any]) -> dict[str, Any]:
    meta = body["metadata"]
    return {"kind": "Job", "namespace": NS, "name": meta["name"], "uid": meta["uid"]}


class Events:
    def __init__(self) -> None:
        self.seen: list[tuple[str, str, str]] = []

    def record(self, obj: Any, kind: str, reason: str, message: str, *, component: str) -> None:
        assert component == "cronjob-controller"
        self.seen.append((kind, reason, message))

    @property
    def reasons(self) -> list[str]:
        return [reason for _, reason, _ in self.seen]


class FakeKube:
    """The apiserver calls the controller makes, on a dict of Jobs and one live CronJob."""

    def __init__(self, jobs: list[dict[str, Any]], live: dict[str, Any] | None) -> None:
        self.jobs = {j["metadata"]["name"]: j for j in jobs}
        self.live = live
        self.created: list[dict[str, Any]] = []
        self.deleted: list[tuple[str, str | None]] = []
        self.statuses: list[dict[str, Any]] = []

    async def get(self, resource: ApiResource, namespace: str | None, name: str) -> Any:
        if resource.name == "cronjobs":
            if self.live is None:
                raise NotFoundError(404, "NotFound", name)
            return msgspec.json.decode(msgspec.json.encode(self.live))
        if name not in self.jobs:
            raise NotFoundError(404, "NotFound", f'jobs.batch "{name}" not found')
        return self.jobs[name]

    async def create(self, resource: ApiResource, namespace: str | None, body: Any) -> Any:
        name = body["metadata"]["name"]
        if name in self.jobs:
            raise AlreadyExistsError(409, "AlreadyExists", f'jobs.batch "{name}" already exists')
        made = {**body, "metadata": {**body["metadata"], "namespace": namespace}}
        made["metadata"].update(uid=f"uid-{name}", resourceVersion="9")
        self.jobs[name] = made
        self.created.append(made)
        return made

    async def delete(
        self, resource: ApiResource, namespace: str | None, name: str, **options: Any
    ) -> Any:
        self.deleted.append((name, options.get("propagation")))
        self.jobs.pop(name, None)
        return {}

    async def replace(
        self,
        resource: ApiResource,
        namespace: str | None,
        name: str,
        body: Any,
        *,
        subresource: str | None = None,
    ) -> Any:
        assert subresource == "status"
        self.statuses.append(msgspec.json.decode(msgspec.json.encode(body["status"])))
        return body


def put(cache: ObjectCache, resource: ResourceType, body: dict[str, Any]) -> None:
    meta = body["metadata"]
    envelope = Envelope(
        subject="",
        sequence=1,
        event=EventType.MODIFIED,
        resource_version="1",
        uid="",
        payload=msgspec.json.encode(body),
    )
    cache.apply(0, ObjectRef(resource, meta.get("namespace"), meta["name"]), envelope)


APIS = {
    CRONJOBS: ApiResource("batch", "v1", "cronjobs", "CronJob", True, frozenset()),
    JOBS: ApiResource("batch", "v1", "jobs", "Job", True, frozenset()),
}


class Run:
    """One controller over a cache holding ``cj`` and ``jobs``; ``now`` is its clock."""

    def __init__(
        self,
        cj: dict[str, Any],
        jobs: tuple[dict[str, Any], ...] = (),
        *,
        now: datetime.datetime,
        live: dict[str, Any] | None = None,
        uncached: tuple[dict[str, Any], ...] = (),
    ) -> None:
        self.cache = ObjectCache()
        put(self.cache, CRONJOBS, cj)
        for body in jobs:
            put(self.cache, JOBS, body)
        self.kube = FakeKube([*jobs, *uncached], live if live is not None else cj)
        self.events = Events()
        self.now = now
        self.clock = 1000.0
        context = Context(
            cache=self.cache,
            kube=self.kube,  # type: ignore[arg-type]
            apis=APIS,
            events=self.events,  # type: ignore[arg-type]
            tracer=None,
        )
        self.controller = CronJobController(
            context, now=lambda: self.now, monotonic=lambda: self.clock
        )

    def sync(self) -> Result:
        return asyncio.run(self.controller.reconcile(Request(NS, "mycronjob")))

    @property
    def status(self) -> dict[str, Any]:
        assert self.kube.statuses, "no status written"
        return self.kube.statuses[-1]


def test_at_the_scheduled_time_a_job_named_by_its_minute_starts_and_the_status_shows_it() -> None:
    run = Run(cronjob(), now=at(minutes=1))
    result = run.sync()
    (created,) = run.kube.created
    meta = created["metadata"]
    assert meta["name"] == JOB_AT_TOP == job_name(cronjob(), TOP)
    assert meta["labels"] == {"a": "b"}
    assert meta["annotations"] == {
        "x": "y",
        "batch.kubernetes.io/cronjob-scheduled-timestamp": "2016-05-19T10:00:00Z",
    }
    assert meta["ownerReferences"] == [
        {
            "apiVersion": "batch/v1",
            "kind": "CronJob",
            "name": "mycronjob",
            "uid": "1a2b3c",
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    assert created["spec"] == cronjob()["spec"]["jobTemplate"]["spec"]
    assert run.status["active"] == [
        {
            "kind": "Job",
            "namespace": NS,
            "name": JOB_AT_TOP,
            "uid": f"uid-{JOB_AT_TOP}",
            "apiVersion": "batch/v1",
            "resourceVersion": "9",
        }
    ]
    assert run.status["lastScheduleTime"] == "2016-05-19T10:00:00Z"
    assert run.events.seen == [("Normal", "SuccessfulCreate", f"Created job {JOB_AT_TOP}")]
    assert result.requeue_after == pytest.approx(59 * 60 + 0.1)


def test_before_the_time_nothing_starts_and_the_key_waits_for_it() -> None:
    run = Run(cronjob(), now=at(minutes=-1, seconds=30))
    assert run.sync().requeue_after == pytest.approx(30.1)
    assert run.kube.created == run.kube.statuses == []
    assert run.events.seen == []


def test_the_scheduled_timestamp_is_in_the_time_zone() -> None:
    # 10:00 UTC is no New York hour; the next one after creation is 06:00 EDT = 10:00 UTC.
    run = Run(cronjob(timeZone="America/New_York"), now=at(minutes=1))
    run.sync()
    (created,) = run.kube.created
    annotation = created["metadata"]["annotations"][
        "batch.kubernetes.io/cronjob-scheduled-timestamp"
    ]
    assert annotation == "2016-05-19T06:00:00-04:00"


def test_an_unknown_time_zone_is_a_warning_and_no_requeue() -> None:
    run = Run(cronjob(timeZone="bad timezone"), now=at(minutes=1))
    assert run.sync() == Result()
    assert run.events.seen == [
        (
            "Warning",
            "UnknownTimeZone",
            'invalid timeZone: "bad timezone": unknown time zone bad timezone',
        )
    ]
    assert run.kube.created == []


def test_an_unparseable_schedule_is_a_warning_and_no_requeue() -> None:
    run = Run(cronjob(schedule="obvious error schedule"), now=at(minutes=1))
    assert run.sync() == Result()
    assert run.events.seen == [
        (
            "Warning",
            "UnparseableSchedule",
            'unparseable schedule: "obvious error schedule" : expected exactly 5 fields, '
            "found 3: [obvious error schedule]",
        )
    ]


def test_a_tz_in_the_schedule_works_with_a_warning() -> None:
    run = Run(cronjob(schedule="TZ=UTC 0 * * * *"), now=at(minutes=1))
    run.sync()
    assert run.events.reasons == ["UnsupportedSchedule", "SuccessfulCreate"]


def test_a_suspended_cronjob_starts_nothing_and_is_not_requeued() -> None:
    run = Run(cronjob(suspend=True), now=at(minutes=1))
    assert run.sync() == Result()
    assert run.kube.created == []
    assert run.events.seen == []


def test_forbid_skips_a_time_while_a_job_is_active() -> None:
    running = job("mycronjob-24394140")
    cj = cronjob(concurrencyPolicy="Forbid", status={"active": [ref(running)]})
    run = Run(cj, (running,), now=at(minutes=1))
    assert run.sync().requeue_after == pytest.approx(59 * 60 + 0.1)
    assert run.kube.created == []
    assert run.events.reasons == ["JobAlreadyActive"]


def test_replace_deletes_the_active_job_in_the_background_and_starts_the_new_one() -> None:
    running = job("mycronjob-24394140")
    cj = cronjob(concurrencyPolicy="Replace", status={"active": [ref(running)]})
    run = Run(cj, (running,), now=at(minutes=1))
    run.sync()
    assert run.kube.deleted == [("mycronjob-24394140", "Background")]
    assert [j["metadata"]["name"] for j in run.kube.created] == [JOB_AT_TOP]
    assert [r["name"] for r in run.status["active"]] == [JOB_AT_TOP]
    assert run.events.reasons == ["SuccessfulDelete", "SuccessfulCreate"]


def test_allow_starts_the_next_beside_the_active_one() -> None:
    running = job("mycronjob-24394140")
    run = Run(cronjob(status={"active": [ref(running)]}), (running,), now=at(minutes=1))
    run.sync()
    assert [r["name"] for r in run.status["active"]] == ["mycronjob-24394140", JOB_AT_TOP]


def test_a_finished_job_leaves_active_and_its_completion_is_the_last_success() -> None:
    done = job(
        "mycronjob-24394140",
        finished="Complete",
        started=at(minutes=-60),
        completed=at(minutes=-59),
    )
    cj = cronjob(status={"active": [ref(done)], "lastScheduleTime": stamp(TOP)})
    run = Run(cj, (done,), now=at(minutes=30))
    run.sync()
    assert run.status.get("active") == []
    assert run.status["lastSuccessfulTime"] == stamp(at(minutes=-59))
    assert run.events.seen[0] == (
        "Normal",
        "SawCompletedJob",
        "Saw completed job: mycronjob-24394140, condition: Complete",
    )


def test_history_limits_delete_the_oldest_finished_jobs() -> None:
    jobs = (
        job("s1", finished="Complete", started=at(hours=-3), completed=at(hours=-3)),
        job("s2", finished="Complete", started=at(hours=-2), completed=at(hours=-2)),
        job("s3", finished="Complete", started=at(hours=-1), completed=at(hours=-1)),
        job("f1", finished="Failed", started=at(hours=-3)),
        job("f2", finished="Failed", started=at(hours=-2)),
        job("running", started=at(hours=-4)),
    )
    cj = cronjob(
        successfulJobsHistoryLimit=1,
        failedJobsHistoryLimit=1,
        status={"active": [ref(jobs[-1])], "lastScheduleTime": stamp(TOP)},
    )
    run = Run(cj, jobs, now=at(minutes=30))
    run.sync()
    assert run.kube.deleted == [("s1", "Background"), ("s2", "Background"), ("f1", "Background")]
    assert run.events.reasons.count("SuccessfulDelete") == 3
    assert run.status["lastSuccessfulTime"] == stamp(at(hours=-1))


def test_without_history_limits_nothing_is_deleted() -> None:
    jobs = tuple(job(f"s{i}", finished="Complete", started=at(hours=-i)) for i in range(5))
    run = Run(cronjob(status={"lastScheduleTime": stamp(TOP)}), jobs, now=at(minutes=30))
    run.sync()
    assert run.kube.deleted == []


def test_jobs_sort_by_start_time_unstarted_last_ties_by_name() -> None:
    b_late, a_none, b_none = job("b", started=at(hours=1)), job("a"), job("bb")
    a_early, c_early = job("c", started=TOP), job("a2", started=TOP)
    ordered = oldest_first([a_none, b_late, b_none, a_early, c_early])
    assert [j["metadata"]["name"] for j in ordered] == ["a2", "c", "b", "a", "bb"]


def test_an_active_job_gone_from_the_apiserver_is_missing() -> None:
    gone = job("mycronjob-24394140")
    run = Run(
        cronjob(status={"active": [ref(gone)], "lastScheduleTime": stamp(TOP)}), now=at(minutes=30)
    )
    run.sync()
    assert run.events.seen == [
        ("Normal", "MissingJob", "Active job went missing: mycronjob-24394140")
    ]
    assert run.status.get("active") == []


def test_an_active_job_not_cached_yet_but_live_stays() -> None:
    late = job("mycronjob-24394140")
    cj = cronjob(status={"active": [ref(late)], "lastScheduleTime": stamp(TOP)})
    run = Run(cj, now=at(minutes=30), uncached=(late,))
    run.sync()
    assert run.events.seen == []
    assert run.kube.statuses == []


def test_a_running_job_of_ours_not_in_active_is_unexpected() -> None:
    stray = job("hand-made")
    run = Run(cronjob(status={"lastScheduleTime": stamp(TOP)}), (stray,), now=at(minutes=30))
    run.sync()
    assert run.events.seen == [
        (
            "Warning",
            "UnexpectedJob",
            "Saw a job that the controller did not create or forgot: hand-made",
        )
    ]


def test_a_running_job_the_live_cronjob_lists_is_not_unexpected() -> None:
    ours = job("mycronjob-24394140")
    cj = cronjob(status={"lastScheduleTime": stamp(TOP)})
    live = cronjob(status={"active": [ref(ours)], "lastScheduleTime": stamp(TOP)})
    run = Run(cj, (ours,), now=at(minutes=30), live=live)
    run.sync()
    assert run.events.seen == []


def test_a_job_of_this_time_that_exists_already_joins_active_without_a_create() -> None:
    existing = job(JOB_AT_TOP)
    run = Run(cronjob(), now=at(minutes=1), uncached=(existing,))
    result = run.sync()
    assert run.kube.created == []
    assert [r["name"] for r in run.status["active"]] == [JOB_AT_TOP]
    assert run.status["lastScheduleTime"] == stamp(TOP)
    assert "SuccessfulCreate" not in run.events.reasons
    assert result.requeue_after == pytest.approx(59 * 60 + 0.1)


def test_a_job_of_this_name_owned_by_another_is_left_alone() -> None:
    other = job(JOB_AT_TOP, owner="someone", owner_uid="other")
    run = Run(cronjob(), now=at(minutes=1), uncached=(other,))
    assert run.sync() == Result()
    assert run.kube.statuses == []


def test_a_time_past_the_starting_deadline_is_not_started() -> None:
    # The search for missed times starts at now - deadline, so 10:00 is not even found (and
    # upstream's MissSchedule event is out of reach).
    cj = cronjob(startingDeadlineSeconds=10, status={"lastScheduleTime": stamp(at(hours=-1))})
    run = Run(cj, now=at(seconds=30))
    assert run.sync().requeue_after == pytest.approx(59 * 60 + 30 + 0.1)
    assert run.kube.created == []
    assert run.events.seen == []


def test_a_time_within_the_starting_deadline_starts() -> None:
    cj = cronjob(startingDeadlineSeconds=60, status={"lastScheduleTime": stamp(at(hours=-1))})
    run = Run(cj, now=at(seconds=30))
    run.sync()
    assert [j["metadata"]["name"] for j in run.kube.created] == [JOB_AT_TOP]


def test_over_a_hundred_missed_times_warn_and_the_latest_still_runs() -> None:
    cj = cronjob(status={"lastScheduleTime": stamp(at(days=-10))})
    run = Run(cj, now=at(minutes=1))
    run.sync()
    assert run.events.reasons == ["TooManyMissedTimes", "SuccessfulCreate"]
    assert [j["metadata"]["name"] for j in run.kube.created] == [JOB_AT_TOP]


def test_the_time_already_scheduled_is_not_started_again() -> None:
    cj = cronjob(status={"lastScheduleTime": stamp(TOP)})
    run = Run(cj, now=at(minutes=1))
    assert run.sync().requeue_after == pytest.approx(59 * 60 + 0.1)
    assert run.kube.created == []


def test_a_cronjob_being_deleted_only_updates_its_status() -> None:
    done = job("mycronjob-24394140", finished="Failed")
    cj = cronjob(status={"active": [ref(done)]})
    cj["metadata"]["deletionTimestamp"] = stamp(TOP)
    run = Run(cj, (done,), now=at(minutes=1))
    assert run.sync() == Result()
    assert run.kube.created == []
    assert run.status.get("active") == []


def test_a_gone_cronjob_is_nothing_to_do() -> None:
    run = Run(cronjob(), now=at(minutes=1))
    assert asyncio.run(run.controller.reconcile(Request(NS, "other"))) == Result()


def test_job_changes_queue_their_cronjob_only() -> None:
    run = Run(cronjob(), now=at(minutes=1))
    requests_for = run.controller.requests_for
    mine, stranger = job("a"), job("b", owner="mycronjob", owner_uid="stale")
    assert list(requests_for(JOBS, mine, None)) == [Request(NS, "mycronjob")]
    assert list(requests_for(JOBS, None, mine)) == [Request(NS, "mycronjob")]
    assert list(requests_for(JOBS, stranger, None)) == []
    assert list(requests_for(JOBS, mine, mine)) == []  # a resync: same resourceVersion
    changed = {**mine, "metadata": {**mine["metadata"], "resourceVersion": "6"}}
    assert list(requests_for(JOBS, changed, mine)) == [Request(NS, "mycronjob")]


def test_a_new_schedule_is_first_synced_at_its_next_time() -> None:
    run = Run(cronjob(), now=at(minutes=1))
    old = cronjob()
    new = cronjob(schedule="30 * * * *")
    assert list(run.controller.requests_for(CRONJOBS, new, old)) == [Request(NS, "mycronjob")]
    deferred = run.sync()
    assert deferred.requeue_after == pytest.approx(29 * 60 + 0.1)
    assert run.kube.created == []
    # Another spec change syncs at once.
    assert list(run.controller.requests_for(CRONJOBS, cronjob(suspend=True), old)) == [
        Request(NS, "mycronjob")
    ]


def test_a_new_unparseable_schedule_warns_and_queues_nothing() -> None:
    run = Run(cronjob(), now=at(minutes=1))
    assert list(run.controller.requests_for(CRONJOBS, cronjob(schedule="nope"), cronjob())) == []
    assert run.events.seen == [
        ("Warning", "UnParseableCronJobSchedule", "unparseable schedule for cronjob: nope")
    ]


def test_the_controller_is_kcm_s_cronjob_controller() -> None:
    assert CronJobController.name == "cronjob-controller"
    assert CronJobController.aliases == ("cronjob",)
    assert CronJobController.concurrency_flag == "concurrent-cron-job-syncs"
    assert CronJobController.default_concurrency == 5
    assert CronJobController.scope is Scope.PARTITIONED
    assert CronJobController.enabled_by_default
    assert set(CronJobController.reads) == {CRONJOBS, JOBS}
    (builtin,) = [b for b in BUILTIN if b.declared.name == "cronjob-controller"]
    assert builtin.declared == Declared.of(CronJobController)

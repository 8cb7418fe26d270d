"""The CronJob controller, as kube-controller-manager's ``cronjob-controller`` (upstream's
``ControllerV2``).

A sync reads the CronJob and the Jobs of its namespace whose controller ownerReference names
it, then:

- deletes the oldest finished Jobs beyond ``successfulJobsHistoryLimit`` and
  ``failedJobsHistoryLimit`` (oldest by ``status.startTime``; the API defaults them to 3 and 1);
- reconciles ``status.active``: a finished Job leaves it (``SawCompletedJob``), a running Job
  that is not in it is reported (``UnexpectedJob``, after a live read of the CronJob), a Job in
  it that is gone from the cache and the apiserver leaves it (``MissingJob``); the latest
  completion of a succeeded Job is ``status.lastSuccessfulTime``;
- unless the CronJob is being deleted, has an unknown ``timeZone`` (``UnknownTimeZone``), is
  suspended or has a schedule that does not parse (``UnparseableSchedule``): finds the most
  recent start time missed since ``lastScheduleTime`` (or creation), within
  ``startingDeadlineSeconds`` (``MissSchedule`` when past it; ``TooManyMissedTimes`` beyond
  100), and starts a Job for it named ``<cronjob>-<minutes since the epoch>`` with the
  ``batch.kubernetes.io/cronjob-scheduled-timestamp`` annotation, as ``concurrencyPolicy``
  allows: Forbid skips it while a Job is active (``JobAlreadyActive``), Replace first deletes
  the active ones (background propagation, ``SuccessfulDelete``);
- writes the status once, and requeues the key just after the next start time: nothing polls.

The Job name is the lock that keeps a start time from running twice: a create that finds the
name taken by a Job of this CronJob (a crash between the create and the status write) only
adds it to ``status.active``. Upstream adopts no orphaned Job, and neither does this.
"""

from __future__ import annotations

import datetime
import json
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import ClassVar, Final

from prometheus_client import Histogram

from bus.subjects import ResourceType
from kubus.kube import AlreadyExistsError, KubeApiError, NotFoundError
from reconcilers.cache import controller_of
from reconcilers.controller import Context, ControllerBase, Permission, Request, Result, Scope
from reconcilers.controllers.cronjob.schedule import (
    Missed,
    Schedule,
    ScheduleError,
    UnknownTimeZoneError,
    load_location,
    next_schedule_time,
    next_schedule_time_duration,
    parse_standard,
)
from reconcilers.controllers.cronjob.utils import (
    SCHEDULED_TIMESTAMP,
    active_jobs,
    earliest_time,
    finished_condition,
    format_schedule,
    format_time,
    in_active,
    job_from_template,
    job_name,
    job_ref,
    oldest_first,
    parse_time,
    remove_active,
    rfc1123z,
    succeeded,
)
from reconcilers.kinds import CRONJOBS, EVENTS, JOBS, Object, clone
from reconcilers.refmanager import resolve_controller_ref

__all__ = [
    "COMPONENT",
    "SCHEDULED_TIMESTAMP",
    "CronJobController",
    "finished_condition",
    "format_schedule",
    "job_from_template",
    "job_name",
    "oldest_first",
]

log = logging.getLogger(__name__)

COMPONENT: Final = "cronjob-controller"
KIND: Final = "CronJob"
BACKGROUND: Final = "Background"

Now = Callable[[], datetime.datetime]

# Upstream's one metric, under its name: how late a Job was created for its scheduled time.
JOB_CREATION_SKEW = Histogram(
    "cronjob_controller_job_creation_skew_duration_seconds",
    "Time between when a cronjob is scheduled to be run, and when the corresponding job is created",
    buckets=[float(2**i) for i in range(10)],
)


def _utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


@dataclass
class _State:
    """One sync's: whether the CronJob's status needs writing."""

    changed: bool = False


class CronJobController(ControllerBase):
    name: ClassVar[str] = "cronjob-controller"
    aliases: ClassVar[tuple[str, ...]] = ("cronjob",)
    primary: ClassVar[ResourceType] = CRONJOBS
    reads: ClassVar[tuple[ResourceType, ...]] = (CRONJOBS, JOBS)
    concurrency_flag: ClassVar[str] = "concurrent-cron-job-syncs"
    default_concurrency: ClassVar[int] = 5
    # A CronJob and its Jobs share a namespace, so a partition sees them all.
    scope: ClassVar[Scope] = Scope.PARTITIONED
    permissions: ClassVar[tuple[Permission, ...]] = (
        Permission.on(CRONJOBS, "get"),  # the live read before UnexpectedJob
        Permission.on(CRONJOBS, "update", subresource="status"),
        # blockOwnerDeletion on the Jobs it creates (OwnerReferencesPermissionEnforcement).
        Permission.on(CRONJOBS, "update", subresource="finalizers"),
        Permission.on(JOBS, "get", "create", "delete"),
        Permission.on(EVENTS, "create", "patch"),
    )
    enabled_by_default: ClassVar[bool] = True

    def __init__(
        self,
        context: Context,
        now: Now = _utc_now,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ctx = context
        self._now = now
        self._monotonic = monotonic
        # A CronJob whose schedule changed is first synced at its next start time, as
        # upstream's update handler queues it (monotonic deadlines).
        self._not_before: dict[Request, float] = {}

    def forget(self, matches: Callable[[Request], bool]) -> None:
        for request in [r for r in self._not_before if matches(r)]:
            del self._not_before[request]

    # --- event handlers -----------------------------------------------------------------

    def requests_for(
        self, resource: ResourceType, obj: Object | None, old: Object | None
    ) -> Iterable[Request]:
        if resource == CRONJOBS:
            if obj is None:
                if old is not None:
                    self._not_before.pop(Request.of(old), None)
                return [Request.of(old)] if old is not None else []
            if old is not None:
                return self._cronjob_updated(obj, old)
            return [Request.of(obj)]
        if obj is None or old is None or obj["metadata"].get("deletionTimestamp"):
            job = obj if obj is not None else old
            return self._owner_requests(job) if job is not None else []
        if obj["metadata"].get("resourceVersion") == old["metadata"].get("resourceVersion"):
            return []
        requests = []
        if controller_of(old) != controller_of(obj):
            requests += self._owner_requests(old)
        return [*requests, *self._owner_requests(obj)]

    def _owner_requests(self, job: Object) -> list[Request]:
        owner = resolve_controller_ref(self._ctx.cache, CRONJOBS, KIND, job)
        return [Request.of(owner)] if owner is not None else []

    def _cronjob_updated(self, cronjob: Object, old: Object) -> list[Request]:
        """A new schedule or zone: the first sync waits for the next start time under it (a
        schedule that does not parse: a warning, and no sync)."""
        spec, old_spec = cronjob.get("spec") or {}, old.get("spec") or {}
        request = Request.of(cronjob)
        if spec.get("schedule") == old_spec.get("schedule") and spec.get(
            "timeZone"
        ) == old_spec.get("timeZone"):
            return [request]
        try:
            schedule = parse_standard(format_schedule(cronjob)[0])
        except ScheduleError as error:
            log.info("Unparseable schedule for cronjob %s: %s", request.key, error)
            self._ctx.events.record(
                cronjob,
                "Warning",
                "UnParseableCronJobSchedule",
                f"unparseable schedule for cronjob: {spec.get('schedule', '')}",
                component=COMPONENT,
            )
            return []
        wait = next_schedule_time_duration(earliest_time(cronjob), self._now(), schedule)
        if wait is not None and wait > 0:
            self._not_before[request] = self._monotonic() + wait
        return [request]

    # --- sync ---------------------------------------------------------------------------

    async def reconcile(self, request: Request) -> Result:
        deadline = self._not_before.pop(request, None)
        if deadline is not None and (left := deadline - self._monotonic()) > 0:
            return Result(requeue_after=left)
        cached = self._ctx.cache.get(CRONJOBS, request.namespace, request.name)
        if cached is None:
            log.debug("CronJob %s not found, may be it is deleted", request.key)
            return Result()
        jobs = [
            job
            for job in self._ctx.cache.in_namespace(JOBS, request.namespace)
            if (controller_of(job) or {}).get("name") == request.name
        ]
        cronjob = clone(cached)
        cronjob["status"] = cronjob.get("status") or {}
        update_after_cleanup = await self._cleanup_finished_jobs(cronjob, jobs)
        requeue_after, update_after_sync, sync_error = await self._sync(cronjob, jobs)
        if sync_error is not None:
            log.info("Error reconciling cronjob %s: %s", request.key, sync_error)
        if update_after_cleanup or update_after_sync:
            meta = cronjob["metadata"]
            await self._ctx.kube.replace(
                self._ctx.apis[CRONJOBS],
                meta["namespace"],
                meta["name"],
                cronjob,
                subresource="status",
            )
        if requeue_after is not None:
            return Result(requeue_after=max(requeue_after, 0.0))
        if sync_error is not None:
            raise sync_error
        return Result()

    async def _sync(
        self, cronjob: Object, jobs: list[Object]
    ) -> tuple[float | None, bool, Exception | None]:
        """Upstream's syncCronJob: the requeue, whether the status changed, the error."""
        state = _State()
        try:
            return await self._sync_cronjob(cronjob, jobs, state)
        except KubeApiError as error:
            return None, state.changed, error

    async def _sync_cronjob(
        self, cronjob: Object, jobs: list[Object], state: _State
    ) -> tuple[float | None, bool, Exception | None]:
        now = self._now()
        meta = cronjob["metadata"]
        namespace = meta["namespace"]
        status = cronjob["status"]
        children = set()
        for job in jobs:
            uid = job["metadata"]["uid"]
            children.add(uid)
            found = in_active(cronjob, uid)
            finished = finished_condition(job)
            if not found and finished is None:
                live = await self._ctx.kube.get(self._ctx.apis[CRONJOBS], namespace, meta["name"])
                live["status"] = live.get("status") or {}
                if in_active(live, uid):
                    # The cache lags our own status write: carry on with the live object (as
                    # upstream, only this sync's view: the status written is still ours).
                    cronjob = live
                    status = cronjob["status"]
                    continue
                self._event(
                    cronjob,
                    "Warning",
                    "UnexpectedJob",
                    "Saw a job that the controller did not create or forgot: "
                    f"{job['metadata']['name']}",
                )
            elif finished is not None:
                if found:
                    remove_active(cronjob, uid)
                    self._event(
                        cronjob,
                        "Normal",
                        "SawCompletedJob",
                        f"Saw completed job: {job['metadata']['name']}, condition: {finished}",
                    )
                    state.changed = True
                if succeeded(job):
                    completed = (job.get("status") or {}).get("completionTime")
                    last = parse_time(status.get("lastSuccessfulTime"))
                    if last is None:
                        status["lastSuccessfulTime"] = completed
                        state.changed = True
                    when = parse_time(completed)
                    last = parse_time(status.get("lastSuccessfulTime"))
                    if when is not None and last is not None and when > last:
                        status["lastSuccessfulTime"] = completed
                        state.changed = True
        for ref in list(active_jobs(cronjob)):
            if ref.get("uid") in children:
                continue
            # Not in the cache: only the apiserver can say it is gone.
            try:
                await self._ctx.kube.get(self._ctx.apis[JOBS], ref.get("namespace"), ref["name"])
            except NotFoundError:
                self._event(
                    cronjob, "Normal", "MissingJob", f"Active job went missing: {ref['name']}"
                )
                remove_active(cronjob, ref.get("uid", ""))
                state.changed = True
        if meta.get("deletionTimestamp"):
            return None, state.changed, None
        spec = cronjob.get("spec") or {}
        zone = spec.get("timeZone")
        if zone is not None:
            try:
                load_location(zone)
            except UnknownTimeZoneError as error:
                self._event(
                    cronjob,
                    "Warning",
                    "UnknownTimeZone",
                    f"invalid timeZone: {json.dumps(zone)}: {error}",
                )
                return None, state.changed, None
        if spec.get("suspend"):
            log.debug("Not starting job because the cron is suspended: %s", meta["name"])
            return None, state.changed, None
        text, names_zone = format_schedule(cronjob)
        if names_zone:
            self._event(
                cronjob,
                "Warning",
                "UnsupportedSchedule",
                f"CRON_TZ or TZ used in schedule {json.dumps(text)} is not officially supported, "
                "see https://kubernetes.io/docs/concepts/workloads/controllers/cron-jobs/ for "
                "more details",
            )
        try:
            schedule = parse_standard(text)
        except ScheduleError as error:
            self._event(
                cronjob,
                "Warning",
                "UnparseableSchedule",
                f"unparseable schedule: {json.dumps(spec.get('schedule', ''))} : {error}",
            )
            return None, state.changed, None
        return await self._start(cronjob, schedule, now, state)

    async def _start(
        self, cronjob: Object, schedule: Schedule, now: datetime.datetime, state: _State
    ) -> tuple[float | None, bool, Exception | None]:
        """The second half of syncCronJob: whether a start time is due, and its Job."""
        meta, spec = cronjob["metadata"], cronjob.get("spec") or {}
        status = cronjob["status"]
        deadline = spec.get("startingDeadlineSeconds")
        earliest = earliest_time(cronjob)
        try:
            scheduled, missed = next_schedule_time(earliest, now, schedule, deadline)
        except ScheduleError as error:
            self._event(
                cronjob,
                "Warning",
                "InvalidSchedule",
                f"invalid schedule: {spec.get('schedule', '')} : {error}",
            )
            return None, state.changed, None
        if missed == Missed.MANY:
            self._event(
                cronjob,
                "Warning",
                "TooManyMissedTimes",
                "too many missed start times. Set or decrease .spec.startingDeadlineSeconds or "
                "check clock skew",
            )
            log.info("too many missed times: %s/%s", meta["namespace"], meta["name"])

        def requeue() -> float | None:
            return next_schedule_time_duration(earliest_time(cronjob), now, schedule)

        if scheduled is None:
            return requeue(), state.changed, None
        if deadline is not None and scheduled + datetime.timedelta(seconds=deadline) < now:
            self._event(
                cronjob,
                "Warning",
                "MissSchedule",
                f"Missed scheduled time to start a job: {rfc1123z(scheduled)}",
            )
            return requeue(), state.changed, None
        name = job_name(cronjob, scheduled)
        if (
            any(
                ref.get("name") == name and ref.get("namespace") == meta["namespace"]
                for ref in active_jobs(cronjob)
            )
            or parse_time(status.get("lastScheduleTime")) == scheduled
        ):
            return requeue(), state.changed, None
        policy = spec.get("concurrencyPolicy") or "Allow"
        if policy == "Forbid" and active_jobs(cronjob):
            self._event(
                cronjob,
                "Normal",
                "JobAlreadyActive",
                "Not starting job because prior execution is running and concurrency policy "
                "is Forbid",
            )
            return requeue(), state.changed, None
        if policy == "Replace":
            for ref in list(active_jobs(cronjob)):
                try:
                    job = await self._ctx.kube.get(
                        self._ctx.apis[JOBS], ref.get("namespace"), ref["name"]
                    )
                except KubeApiError as error:
                    self._event(cronjob, "Warning", "FailedGet", f"Get job: {error}")
                    return None, state.changed, error
                if not await self._delete_job(cronjob, job):
                    return (
                        None,
                        state.changed,
                        KubeApiError(
                            0,
                            "",
                            f"could not replace job {ref.get('namespace')}/{ref['name']}",
                        ),
                    )
                state.changed = True
        body = job_from_template(cronjob, self._ctx.apis[CRONJOBS], scheduled)
        try:
            created = await self._ctx.kube.create(self._ctx.apis[JOBS], meta["namespace"], body)
        except AlreadyExistsError:
            # Ours from a sync that died before its status write, or someone else's.
            created = await self._ctx.kube.get(self._ctx.apis[JOBS], meta["namespace"], name)
            if (controller_of(created) or {}).get("uid") != meta["uid"]:
                return None, state.changed, None
            if in_active(cronjob, created["metadata"]["uid"]):
                return None, state.changed, None
            log.info("Job already exists: %s/%s", meta["namespace"], name)
        except KubeApiError as error:
            if "NamespaceTerminating" not in error.causes:
                self._event(cronjob, "Warning", "FailedCreate", f"Error creating job: {error}")
            return None, state.changed, error
        else:
            created_at = parse_time(created["metadata"].get("creationTimestamp")) or now
            JOB_CREATION_SKEW.observe((created_at - scheduled).total_seconds())
            self._event(cronjob, "Normal", "SuccessfulCreate", f"Created job {name}")
        status["active"] = [*active_jobs(cronjob), job_ref(created)]
        status["lastScheduleTime"] = format_time(scheduled)
        state.changed = True
        return requeue(), True, None

    # --- history ------------------------------------------------------------------------

    async def _cleanup_finished_jobs(self, cronjob: Object, jobs: list[Object]) -> bool:
        spec = cronjob.get("spec") or {}
        successful_limit = spec.get("successfulJobsHistoryLimit")
        failed_limit = spec.get("failedJobsHistoryLimit")
        if successful_limit is None and failed_limit is None:
            return False
        successful = [job for job in jobs if finished_condition(job) == "Complete"]
        failed = [job for job in jobs if finished_condition(job) == "Failed"]
        changed = False
        for finished, limit in ((successful, successful_limit), (failed, failed_limit)):
            if limit is None or len(finished) <= limit:
                continue
            for job in oldest_first(finished)[: len(finished) - limit]:
                if await self._delete_job(cronjob, job):
                    changed = True
        return changed

    async def _delete_job(self, cronjob: Object, job: Object) -> bool:
        """Deletes the Job (its pods by the garbage collector, in the background) and drops it
        from ``status.active``; False (and a warning event) if the apiserver refused."""
        meta = job["metadata"]
        try:
            await self._ctx.kube.delete(
                self._ctx.apis[JOBS], meta["namespace"], meta["name"], propagation=BACKGROUND
            )
        except KubeApiError as error:
            self._event(cronjob, "Warning", "FailedDelete", f"Deleted job: {error}")
            log.error("Error deleting job %s/%s: %s", meta["namespace"], meta["name"], error)
            return False
        remove_active(cronjob, meta["uid"])
        self._event(cronjob, "Normal", "SuccessfulDelete", f"Deleted job {meta['name']}")
        return True

    def _event(self, cronjob: Object, kind: str, reason: str, message: str) -> None:
        self._ctx.events.record(cronjob, kind, reason, message, component=COMPONENT)

"""The TTL-after-finished controller, as kube-controller-manager's
``ttl-after-finished-controller`` (upstream's ``ttlafterfinished`` package).

A Job that has finished (its ``Complete`` or ``Failed`` condition is ``True``) and sets
``spec.ttlSecondsAfterFinished`` is deleted once that many seconds have passed since it
finished, the condition's ``lastTransitionTime``. Until then its key waits in the queue for the
due time (``Result.requeue_after``), so nothing polls.

The cache may be a hop behind a user who changed or removed the TTL, and a delete cannot be
taken back: a Job the cache says is due is read again live and judged on that, then deleted in
the foreground (its pods go first, by the garbage collector) with preconditions on the uid and
resourceVersion that were read, so a Job replaced or edited in between is not deleted on
stale grounds (the conflict is retried and judged again).

Requests name Jobs (``namespace/name``), in their namespace's partition: nothing but the Job
itself decides.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Callable, Iterable
from typing import ClassVar, Final

from prometheus_client import Histogram

from bus.subjects import ResourceType
from kubus.kube import NotFoundError
from reconcilers.controller import (
    Context,
    ControllerBase,
    Permission,
    Request,
    Result,
    Scope,
    TerminalError,
)
from reconcilers.kinds import JOBS, Object

__all__ = [
    "FOREGROUND",
    "TTLAfterFinishedController",
    "finish_time",
    "is_finished",
    "needs_cleanup",
    "time_left",
]

log = logging.getLogger(__name__)

FOREGROUND: Final = "Foreground"

# Upstream's one metric, under its name: from the moment a Job became due to its delete.
JOB_DELETION_DURATION = Histogram(
    "ttl_after_finished_controller_job_deletion_duration_seconds",
    "The time it took to delete the job since it became eligible for deletion",
    buckets=[0.1 * 2**i for i in range(14)],
)

Clock = Callable[[], datetime.datetime]


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _key(job: Object) -> str:
    meta = job.get("metadata", {})
    return f"{meta.get('namespace')}/{meta.get('name')}"


def _finished_condition(job: Object) -> Object | None:
    condition: Object
    for condition in job.get("status", {}).get("conditions") or ():
        if condition.get("type") in ("Complete", "Failed") and condition.get("status") == "True":
            return condition
    return None


def is_finished(job: Object) -> bool:
    """Complete or Failed, whichever came (upstream's ``IsJobFinished``)."""
    return _finished_condition(job) is not None


def needs_cleanup(job: Object) -> bool:
    """Finished, with a TTL: the only Jobs this controller ever looks at."""
    return job.get("spec", {}).get("ttlSecondsAfterFinished") is not None and is_finished(job)


def finish_time(job: Object) -> datetime.datetime:
    """When the Job finished: its finished condition's ``lastTransitionTime``.

    Raises :class:`TerminalError` for a finished condition without one: retrying the same
    object cannot fix it, and the change that gives it a time queues the Job again."""
    condition = _finished_condition(job)
    if condition is None:
        raise TerminalError(f"unable to find the status of the finished Job {_key(job)}")
    stamp = condition.get("lastTransitionTime")
    if not stamp:
        raise TerminalError(f"unable to find the time when the Job {_key(job)} finished")
    return datetime.datetime.fromisoformat(str(stamp).replace("Z", "+00:00"))


def time_left(job: Object, now: datetime.datetime) -> tuple[float, datetime.datetime]:
    """Seconds from ``now`` until the Job is due (<= 0: due), and the due time."""
    if not needs_cleanup(job):
        raise ValueError(f"job {_key(job)} should not be cleaned up")
    finished = finish_time(job)
    expire_at = finished + datetime.timedelta(seconds=int(job["spec"]["ttlSecondsAfterFinished"]))
    if finished > now:
        log.warning(
            "Warning: Found Job finished in the future. This is likely due to time skew in the "
            "cluster. Job cleanup will be deferred. job=%s",
            _key(job),
        )
    remaining = (expire_at - now).total_seconds()
    log.debug(
        "Found Job finished job=%s finishTime=%s remainingTTL=%.3fs startTime=%s deadlineTTL=%s",
        _key(job),
        finished.isoformat(),
        remaining,
        now.isoformat(),
        expire_at.isoformat(),
    )
    return remaining, expire_at


class TTLAfterFinishedController(ControllerBase):
    name: ClassVar[str] = "ttl-after-finished-controller"
    aliases: ClassVar[tuple[str, ...]] = ("ttl-after-finished",)
    primary: ClassVar[ResourceType] = JOBS
    reads: ClassVar[tuple[ResourceType, ...]] = (JOBS,)
    concurrency_flag: ClassVar[str] = "concurrent-ttl-after-finished-syncs"
    default_concurrency: ClassVar[int] = 5
    scope: ClassVar[Scope] = Scope.PARTITIONED
    # get: the live re-read before a delete.
    permissions: ClassVar[tuple[Permission, ...]] = (Permission.on(JOBS, "delete", "get"),)
    enabled_by_default: ClassVar[bool] = True

    def __init__(self, context: Context, *, clock: Clock = _utcnow) -> None:
        self._ctx = context
        self._clock = clock

    def requests_for(
        self, resource: ResourceType, obj: Object | None, old: Object | None
    ) -> Iterable[Request]:
        if obj is None:
            return []  # upstream has no delete handler: a deleted Job needs nothing
        log.debug("%s job job=%s", "Adding" if old is None else "Updating", _key(obj))
        if obj.get("metadata", {}).get("deletionTimestamp") or not needs_cleanup(obj):
            return []
        log.debug("Add job to cleanup job=%s", _key(obj))
        return [Request.of(obj)]

    async def reconcile(self, request: Request) -> Result:
        log.debug("Checking if Job is ready for cleanup job=%s", request.key)
        job = self._ctx.cache.get(JOBS, request.namespace, request.name)
        if job is None:
            return Result()
        expired, wait = self._process_ttl(job)
        if expired is None:
            return Result(requeue_after=wait)
        # Due by the cache, which may not have seen the TTL changed: judge the live Job. A
        # different uid there is a new Job of that name, judged on its own terms.
        api = self._ctx.apis[JOBS]
        try:
            fresh = await self._ctx.kube.get(api, request.namespace, request.name)
        except NotFoundError:
            return Result()
        expired, wait = self._process_ttl(fresh)
        if expired is None:
            return Result(requeue_after=wait)
        meta = fresh["metadata"]
        log.debug("Cleaning up Job job=%s", request.key)
        try:
            await self._ctx.kube.delete(
                api,
                request.namespace,
                request.name,
                uid=meta["uid"],
                resource_version=meta.get("resourceVersion"),
                propagation=FOREGROUND,
            )
        except NotFoundError:
            return Result()  # gone meanwhile: nothing left to clean up
        JOB_DELETION_DURATION.observe(max(0.0, (self._clock() - expired).total_seconds()))
        return Result()

    def _process_ttl(self, job: Object) -> tuple[datetime.datetime | None, float | None]:
        """(due time, None) when the Job is due now; (None, seconds to wait) when it will be;
        (None, None) when it never will (being deleted, unfinished, or without a TTL)."""
        if job.get("metadata", {}).get("deletionTimestamp") or not needs_cleanup(job):
            return None, None
        remaining, expire_at = time_left(job, self._clock())
        if remaining <= 0:
            return expire_at, None
        return None, remaining

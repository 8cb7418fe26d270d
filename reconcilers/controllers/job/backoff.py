"""The delay before failed pods are replaced (upstream's backoff_utils.go).

Per Job, the controller remembers how many pods failed in a row since the last success and
when the last of them finished. A replacement waits 10 s after the first failure, doubling
with each further one up to upstream's cap (``MaxJobPodFailureBackOff``, 10 min): the sync
asks to be requeued when that time is up, and nothing polls. With ``backoffLimitPerIndex``
the same delay applies per index, counted by the failed pod's
``job-index-failure-count`` annotation.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

from reconcilers.controllers.podutil import parse_time
from reconcilers.kinds import Object

__all__ = [
    "DEFAULT_POD_FAILURE_BACKOFF",
    "MAX_POD_FAILURE_BACKOFF",
    "BackoffRecord",
    "BackoffStore",
    "pod_finished_time",
    "remaining_time_for_failures",
]

DEFAULT_POD_FAILURE_BACKOFF: Final = 10.0
MAX_POD_FAILURE_BACKOFF: Final = 600.0

_EPOCH: Final = datetime.datetime(1, 1, 1, tzinfo=datetime.UTC)


@dataclass(frozen=True)
class BackoffRecord:
    key: str
    failures_after_last_success: int = 0
    last_failure_time: datetime.datetime | None = None

    def remaining_time(
        self,
        now: datetime.datetime,
        default: float = DEFAULT_POD_FAILURE_BACKOFF,
        maximum: float = MAX_POD_FAILURE_BACKOFF,
    ) -> float:
        return remaining_time_for_failures(
            now, default, maximum, self.failures_after_last_success, self.last_failure_time
        )


class BackoffStore:
    """The records, by Job key, of this process (lost with it, as upstream's on a restart)."""

    def __init__(self) -> None:
        self._records: dict[str, BackoffRecord] = {}

    def update(self, record: BackoffRecord) -> None:
        self._records[record.key] = record

    def remove(self, key: str) -> None:
        self._records.pop(key, None)

    def get(self, key: str) -> BackoffRecord | None:
        return self._records.get(key)

    def forget_where(self, matches: Callable[[str], bool]) -> None:
        for key in [key for key in self._records if matches(key)]:
            del self._records[key]

    def new_record(
        self, key: str, succeeded: Sequence[Object], failed: Sequence[Object]
    ) -> BackoffRecord:
        """The record after this sync's newly finished pods (not persisted until the status
        that counts them is written)."""
        old = self._records.get(key) or BackoffRecord(key)
        succeeded = sorted(succeeded, key=pod_finished_time)
        failed = sorted(failed, key=pod_finished_time)
        if not succeeded:
            if not failed:
                return old
            return BackoffRecord(
                key,
                old.failures_after_last_success + len(failed),
                pod_finished_time(failed[-1]),
            )
        if not failed:
            return BackoffRecord(key)
        last_success = pod_finished_time(succeeded[-1])
        count = 0
        last_failure: datetime.datetime | None = None
        for pod in reversed(failed):
            finished = pod_finished_time(pod)
            if not finished > last_success:
                break
            if last_failure is None:
                last_failure = finished
            count += 1
        return BackoffRecord(key, count, last_failure)


def pod_finished_time(pod: Object) -> datetime.datetime:
    """When a pod finished: its containers' latest finish (all must have finished), else its
    Ready=False transition, else its deletion time minus the grace period, else its
    creation."""
    status = pod.get("status") or {}
    finished = _latest_finish(None, status.get("containerStatuses") or (), None)
    sidecars = {
        c.get("name")
        for c in (pod.get("spec") or {}).get("initContainers") or ()
        if c.get("restartPolicy") == "Always"
    }
    finished = _latest_finish(finished, status.get("initContainerStatuses") or (), sidecars)
    if finished is not None:
        return finished
    for condition in status.get("conditions") or ():
        if condition.get("type") == "Ready":
            when = parse_time(condition.get("lastTransitionTime"))
            if condition.get("status") == "False" and when is not None:
                return when
            break
    meta = pod.get("metadata") or {}
    deleted = parse_time(meta.get("deletionTimestamp"))
    if deleted is not None:
        return deleted - datetime.timedelta(
            seconds=int(meta.get("deletionGracePeriodSeconds") or 0)
        )
    return parse_time(meta.get("creationTimestamp")) or _EPOCH


def _latest_finish(
    previous: datetime.datetime | None,
    statuses: Sequence[Object],
    only: set[object] | None,
) -> datetime.datetime | None:
    latest = previous
    for container in statuses:
        if only is not None and container.get("name") not in only:
            continue
        terminated = (container.get("state") or {}).get("terminated")
        when = parse_time((terminated or {}).get("finishedAt"))
        if when is None:
            return None
        if latest is None or latest < when:
            latest = when
    return latest


def remaining_time_for_failures(
    now: datetime.datetime,
    default: float,
    maximum: float,
    failures: int,
    last_failure: datetime.datetime | None,
) -> float:
    """Seconds left of the delay after ``failures`` failures in a row, the last at
    ``last_failure``: default * 2^(failures-1), capped; 0 once it has passed."""
    if failures == 0 or last_failure is None:
        return 0.0
    delay = default
    for _ in range(1, failures):
        delay *= 2
        if delay >= maximum:
            delay = maximum
            break
    elapsed = (now - last_failure).total_seconds()
    if delay < elapsed:
        return 0.0
    return delay - elapsed

"""What one sync of a Job works on (upstream's syncJobCtx)."""

from __future__ import annotations

from dataclasses import dataclass, field

from reconcilers.controllers.job.backoff import BackoffRecord
from reconcilers.controllers.job.indexed import Intervals
from reconcilers.kinds import Object

__all__ = ["SyncJob"]


@dataclass
class SyncJob:
    job: Object  # a copy: the status is rewritten in place, then sent
    pods: list[Object]
    active_pods: list[Object]
    ready: int
    uncounted_succeeded: set[str]
    uncounted_failed: set[str]
    expected_removed_finalizers: set[str]
    new_backoff_record: BackoffRecord
    terminating: int = 0
    succeeded: int = 0
    failed: int = 0
    finished_condition: Object | None = None
    prev_succeeded_indexes: Intervals = field(default_factory=Intervals)
    succeeded_indexes: Intervals = field(default_factory=Intervals)
    failed_indexes: Intervals | None = None
    delayed_deletion_per_index: dict[int, Object] = field(default_factory=dict)
    # The earliest time this sync asks to run again (deadline, pod failure backoff), seconds.
    requeue_after: float | None = None

    def requeue_in(self, seconds: float) -> None:
        seconds = max(seconds, 0.0)
        if self.requeue_after is None or seconds < self.requeue_after:
            self.requeue_after = seconds

    @property
    def key(self) -> str:
        meta = self.job["metadata"]
        return f"{meta.get('namespace')}/{meta.get('name')}"

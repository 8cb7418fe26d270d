"""Expectations, as kube-controller-manager's: do not act again until your last writes are seen.

The cache lags the apiserver by a hop (watch -> bus -> cache). Without expectations, a
ReplicaSet that just created 3 pods would see 0 pods on its next sync and create 3 more. A
controller records how many creates/deletes it expects for a key; the cache handlers lower the
counts as the objects appear or go; a sync acts only once they reach zero or 5 minutes pass.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

__all__ = ["EXPECTATIONS_TIMEOUT", "Expectations"]

EXPECTATIONS_TIMEOUT: Final = 5 * 60.0


@dataclass
class _Record:
    add: int
    delete: int
    timestamp: float
    deleting: set[str] = field(default_factory=set)


class Expectations:
    def __init__(self, timeout: float = EXPECTATIONS_TIMEOUT) -> None:
        self._timeout = timeout
        self._records: dict[str, _Record] = {}

    def expect_creations(self, key: str, count: int) -> None:
        self._records[key] = _Record(count, 0, time.monotonic())

    def expect_deletions(self, key: str, pod_keys: list[str]) -> None:
        self._records[key] = _Record(0, len(pod_keys), time.monotonic(), set(pod_keys))

    def creation_observed(self, key: str) -> None:
        record = self._records.get(key)
        if record is not None:
            record.add -= 1

    def deletion_observed(self, key: str, pod_key: str) -> None:
        """Counted once per pod, whether its deletionTimestamp or its removal is seen first."""
        record = self._records.get(key)
        if record is not None and pod_key in record.deleting:
            record.deleting.discard(pod_key)
            record.delete -= 1

    def satisfied(self, key: str) -> bool:
        record = self._records.get(key)
        if record is None:
            return True
        fulfilled = record.add <= 0 and record.delete <= 0
        return fulfilled or time.monotonic() - record.timestamp > self._timeout

    def forget(self, key: str) -> None:
        self._records.pop(key, None)

    def forget_where(self, matches: Callable[[str], bool]) -> None:
        for key in [key for key in self._records if matches(key)]:
            del self._records[key]

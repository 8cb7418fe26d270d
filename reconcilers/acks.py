"""When a delivery may be acknowledged: once every request it made has been reconciled.

A delivery (one message of a partition's durable consumer) makes requests in the queues of the
controllers that read its resource. It is acknowledged only when the last of them has been
reconciled *after* it arrived, so the consumer's pending count is work not yet done, and a
process that dies leaves every unfinished delivery to the next owner of the partition.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from bus.envelope import Envelope
from reconcilers.controller import Request

__all__ = ["AckTracker", "Acknowledgeable", "Waiting", "WorkKey"]

# (controller name, request): one item of one controller's queue.
WorkKey = tuple[str, Request]


class Acknowledgeable(Protocol):
    """What the tracker needs of a JetStream message (nats-py's ``Msg`` is one)."""

    async def ack(self) -> None: ...

    @property
    def metadata(self) -> Any: ...


@dataclass
class Waiting:
    """A delivery waiting for the reconciles of the requests it made."""

    message: Acknowledgeable
    envelope: Envelope
    remaining: int

    def settle_one(self) -> bool:
        """One of its requests was reconciled; True when that was the last one."""
        self.remaining -= 1
        return self.remaining == 0


class AckTracker:
    def __init__(self) -> None:
        self._waiting: dict[WorkKey, list[Waiting]] = defaultdict(list)

    def track(self, message: Acknowledgeable, envelope: Envelope, keys: Sequence[WorkKey]) -> None:
        entry = Waiting(message, envelope, len(keys))
        for key in keys:
            self._waiting[key].append(entry)

    def take(self, key: WorkKey) -> list[Waiting]:
        """The deliveries a reconcile of ``key`` starting now will settle."""
        return self._waiting.pop(key, [])

    def put_back(self, key: WorkKey, entries: list[Waiting]) -> None:
        """A reconcile failed: its deliveries wait for the retry (ahead of newer ones)."""
        if entries:
            self._waiting[key][:0] = entries

    def forget(self, matches: Callable[[Request], bool]) -> None:
        """Drop the deliveries of requests that this process no longer serves; the next
        owner gets them again from the consumer, since they were never acknowledged."""
        for key in [key for key in self._waiting if matches(key[1])]:
            del self._waiting[key]

    def release(self, matches: Callable[[Request], bool]) -> list[Acknowledgeable]:
        """Count the requests that this process no longer serves as done (another process
        makes them afresh from its own replay); the deliveries that waited only for them,
        to be acknowledged now."""
        settled = []
        for key in [key for key in self._waiting if matches(key[1])]:
            for entry in self._waiting.pop(key):
                if entry.settle_one():
                    settled.append(entry.message)
        return settled

    def __len__(self) -> int:
        return len(self._waiting)

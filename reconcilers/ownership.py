"""Which partitions this process works on: leases in NATS KV, balanced by rendezvous hashing.

Members of a pool heartbeat into a members bucket; partitions are leased in a leases bucket.
Both buckets carry a TTL (the lease duration), so a key that is not rewritten in time expires.

Every ``retry_period`` a member:

1. refreshes its heartbeat and reads the live members;
2. computes the partitions it *should* own: for each partition, the live member with the
   highest rendezvous score (hash of member id and partition), so a join or a leave moves only
   the partitions that must move;
3. renews the leases it holds and still should own (compare-and-set on the key's revision); a
   lease it should no longer hold is released (work stopped first, then the key deleted);
4. tries to create the lease of every partition it should own and does not hold yet.

Fencing: a lease that has not been renewed for ``renew_deadline`` is given up *before* its TTL
can expire, so the next owner never starts while this one still works on the partition.
Writes still carry resourceVersion preconditions, so even a brief overlap is harmless.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass
from typing import Any

from nats.errors import Error as NatsError
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError, NoKeysError
from nats.js.kv import KeyValue

__all__ = ["LeaseTiming", "PartitionOwnership", "rendezvous_owner"]

log = logging.getLogger(__name__)

Callback = Callable[[int], Coroutine[Any, Any, None]]


@dataclass(frozen=True)
class LeaseTiming:
    """As kube-controller-manager's leader election flags, per partition."""

    lease_duration: float = 10.0
    renew_deadline: float = 7.0
    retry_period: float = 2.0

    def __post_init__(self) -> None:
        if not self.retry_period < self.renew_deadline < self.lease_duration:
            raise ValueError(
                "partition leases need retry period < renew deadline < lease duration, got "
                f"{self.retry_period}s, {self.renew_deadline}s, {self.lease_duration}s"
            )


def rendezvous_owner(partition: int, members: Iterable[str]) -> str | None:
    """The member with the highest score for this partition (highest random weight)."""
    best: tuple[bytes, str] | None = None
    for member in members:
        score = hashlib.blake2b(f"{member}/{partition}".encode(), digest_size=8).digest()
        if best is None or score > best[0]:
            best = (score, member)
    return None if best is None else best[1]


@dataclass
class _Lease:
    revision: int
    fence: asyncio.TimerHandle


class PartitionOwnership:
    def __init__(
        self,
        *,
        member: str,
        members: KeyValue,
        leases: KeyValue,
        partitions: int,
        timing: LeaseTiming,
        on_acquired: Callback,
        on_lost: Callback,
    ) -> None:
        self.member = member
        self._members = members
        self._leases = leases
        self._partitions = partitions
        self._timing = timing
        self._on_acquired = on_acquired
        self._on_lost = on_lost
        self._held: dict[int, _Lease] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._releasing: set[int] = set()
        self.live_members: list[str] = []

    @property
    def owned(self) -> frozenset[int]:
        return frozenset(self._held)

    async def run(self) -> None:
        """Keep leases until cancelled; cancelling releases every held partition."""
        try:
            while True:
                started = time.monotonic()
                await self._round()
                await asyncio.sleep(
                    max(0.0, self._timing.retry_period - (time.monotonic() - started))
                )
        finally:
            await asyncio.shield(self.release_all())

    async def release_all(self) -> None:
        """Stop work on every partition, then hand the leases back (SIGTERM, shutdown)."""
        await asyncio.gather(*(self._release(p) for p in sorted(self._held)))
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        with contextlib.suppress(NatsError, TimeoutError):
            await self._members.delete(self._member_key)

    async def _round(self) -> None:
        try:
            await self._members.put(self._member_key, str(time.time()).encode())
            try:
                keys = await self._members.keys()
            except NoKeysError:
                keys = []
        except (NatsError, TimeoutError) as error:
            log.warning("cannot reach the members bucket: %s", error)
            return
        self.live_members = sorted(key.removeprefix("m.") for key in keys if key.startswith("m."))
        members = self.live_members or [self.member]
        wanted = {p for p in range(self._partitions) if rendezvous_owner(p, members) == self.member}
        # Renewals first and together: a round must never delay them past the renew deadline.
        await asyncio.gather(*(self._renew(p) for p in sorted(self._held) if p in wanted))
        # A release waits for the partition's in-flight reconciles (seconds, at worst): in the
        # background, so the next round's renewals are not held up behind it.
        for partition in sorted(set(self._held) - wanted):
            lease = self._held.pop(partition)
            self._spawn(self._release_held(partition, lease))
        for partition in sorted(wanted - set(self._held) - self._releasing):
            await self._acquire(partition)

    def _fence(self, partition: int) -> None:
        """The lease was not renewed within the renew deadline: stop before it can expire."""
        if self._held.pop(partition, None) is None:
            return
        log.error(
            "partition %d: lease not renewed within %.0fs; stopping work on it",
            partition,
            self._timing.renew_deadline,
        )
        self._spawn(self._on_lost(partition))

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._reap)

    def _reap(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("stopping work on a partition failed", exc_info=task.exception())

    def _fence_timer(self, partition: int) -> asyncio.TimerHandle:
        loop = asyncio.get_running_loop()
        return loop.call_later(self._timing.renew_deadline, self._fence, partition)

    async def _acquire(self, partition: int) -> None:
        try:
            revision = await self._leases.create(_lease_key(partition), self.member.encode())
        except KeyWrongLastSequenceError:
            return  # held by another member until it releases or its lease expires
        except (NatsError, TimeoutError) as error:
            if "key exists" in str(error).lower() or "wrong last sequence" in str(error).lower():
                return
            log.warning("partition %d: cannot create lease: %s", partition, error)
            return
        self._held[partition] = _Lease(revision, self._fence_timer(partition))
        log.info("partition %d: acquired", partition)
        await self._on_acquired(partition)

    async def _renew(self, partition: int) -> None:
        lease = self._held.get(partition)
        if lease is None:
            return  # fenced meanwhile
        try:
            revision = await self._leases.update(
                _lease_key(partition), self.member.encode(), last=lease.revision
            )
        except (KeyWrongLastSequenceError, KeyNotFoundError):
            if self._held.get(partition) is not lease:
                return  # fenced while the renewal was on its way; that stopped the work
            log.error("partition %d: lease taken over; stopping work on it", partition)
            lease.fence.cancel()
            del self._held[partition]
            await self._on_lost(partition)
            return
        except (NatsError, TimeoutError) as error:
            log.warning("partition %d: cannot renew lease yet: %s", partition, error)
            return
        if self._held.get(partition) is not lease:
            return  # fenced while the renewal was on its way
        lease.revision = revision
        lease.fence.cancel()
        lease.fence = self._fence_timer(partition)

    async def _release(self, partition: int) -> None:
        lease = self._held.pop(partition, None)
        if lease is not None:
            await self._release_held(partition, lease)

    async def _release_held(self, partition: int, lease: _Lease) -> None:
        """Stop the work (the lease keeps others off meanwhile), then delete the lease."""
        self._releasing.add(partition)
        try:
            lease.fence.cancel()
            await self._on_lost(partition)
            with contextlib.suppress(NatsError, TimeoutError):  # else it expires by itself
                await self._leases.delete(_lease_key(partition), last=lease.revision)
            log.info("partition %d: released", partition)
        finally:
            self._releasing.discard(partition)

    @property
    def _member_key(self) -> str:
        return f"m.{self.member}"


def _lease_key(partition: int) -> str:
    return f"p{partition:03d}"

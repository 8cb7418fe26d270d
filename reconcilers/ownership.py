"""Which partitions this process works on: leases in NATS KV, balanced by rendezvous hashing.

Members of a pool heartbeat into a members bucket; partitions are leased in a leases bucket.
Both buckets carry a TTL (the lease duration), so a key that is not rewritten in time expires.

Every ``retry_period``, and at once when the pool changes, a member:

1. refreshes its heartbeat and reads the live members;
2. computes the partitions it *should* own: for each partition, the live member with the
   highest rendezvous score (hash of member id and partition), so a join or a leave moves only
   the partitions that must move;
3. renews the leases it holds and still should own (compare-and-set on the key's revision); a
   lease it should no longer hold is released (work stopped first, then the key deleted);
4. tries to create the lease of every partition it should own and does not hold yet.

"When the pool changes": each member watches both buckets, and a member key it has not seen
(a member joining) or gone (a member leaving), or the lease of a partition it should own and
does not hold being deleted (handed back), starts its next round now rather than at the end of
the retry period. A join then costs the old owners' stop and a few round trips, not up to two
retry periods (one for them to see the new member, one for it to claim what they freed). The
watches only hurry rounds: a member whose watch is lost meanwhile still does every round on
time, and a lease that expires (no delete in the bucket) is claimed at the next round as before.

Each partition's lease is a :class:`reconcilers.lease.Lease` (compare-and-set writes, a fence
that gives the lease up at the renew deadline, before its TTL can expire), so the next owner
never starts while this one still works on the partition. A partition whose work is being
stopped (handed back, fenced or taken over) is not claimed again until the stop has finished.
Writes still carry resourceVersion preconditions, so even a brief overlap is harmless.

With ``shards`` above 1 (``--partition-shards``) all of this is per unit, a partition's shard
of keys (:mod:`reconcilers.shards`), and "partition" above reads "unit".
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Callable, Coroutine, Iterable
from typing import Any

from nats.errors import Error as NatsError
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError, NoKeysError
from nats.js.kv import KeyValue

from reconcilers.lease import Lease, LeaseTiming, Renewal
from reconcilers.shards import Sharding, rank

__all__ = ["LeaseTiming", "PartitionOwnership", "ShardingMismatch", "rendezvous_owner"]

log = logging.getLogger(__name__)

# In the members bucket, beside the members' heartbeats: the pool's --partition-shards. Members
# that split partitions differently would lease the same keys under different lease names.
SHARDING_KEY = "pool.partition-shards"


class ShardingMismatch(Exception):
    """This process's ``--partition-shards`` is not the pool's."""


Callback = Callable[[int], Coroutine[Any, Any, None]]


def rendezvous_owner(partition: int, members: Iterable[str]) -> str | None:
    """The member with the highest score for this partition (highest random weight)."""
    ranked = rank(partition, members)
    return ranked[0] if ranked else None


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
        shards: int = 1,
    ) -> None:
        """``on_acquired`` and ``on_lost`` get a unit of :class:`Sharding` (the partition
        itself when ``shards`` is 1)."""
        self.member = member
        self._members = members
        self._sharding = Sharding(partitions, shards)
        self._timing = timing
        self._on_acquired = on_acquired
        self._on_lost = on_lost
        self._leases = {
            unit: Lease(
                leases,
                self._sharding.lease_key(unit),
                holder=member,
                timing=timing,
                on_fenced=functools.partial(self._fence, unit),
            )
            for unit in range(self._sharding.units)
        }
        self._held: set[int] = set()  # leased and worked on
        self._stopping: set[int] = set()  # work being stopped: not claimed again until it has
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = False  # shutting down: renew what is held, take nothing new
        self.live_members: list[str] = []
        self._wanted: frozenset[int] = frozenset()  # the share computed in the last round
        self._wake = asyncio.Event()  # the pool changed: round now
        self._leases_bucket = leases
        self.misconfigured: str | None = None  # why this member takes no work, if it must not

    async def join(self) -> None:
        """Check, before any lease is taken, that the pool splits partitions as this process
        does; raises :class:`ShardingMismatch` naming both counts if it does not."""
        shards = str(self._sharding.shards).encode()
        try:
            await self._members.create(SHARDING_KEY, shards)
        except KeyWrongLastSequenceError:
            await self._check_sharding(shards)

    async def _check_sharding(self, shards: bytes) -> None:
        try:
            entry = await self._members.get(SHARDING_KEY)
        except KeyNotFoundError:
            entry = None
        if entry is not None and entry.value and entry.value != shards:
            raise ShardingMismatch(
                f"the members of this pool run with --partition-shards "
                f"{entry.value.decode(errors='replace')}, this process with "
                f"{shards.decode()}: every member of a pool must split partitions alike"
            )
        await self._members.put(SHARDING_KEY, shards)  # kept alive past the bucket's TTL

    def stop_acquiring(self) -> None:
        """From now on only renew: a process draining for shutdown must not start work on
        partitions its leaving peers hand back (it would replay them only to hand them on)."""
        self._closing = True

    @property
    def owned(self) -> frozenset[int]:
        return frozenset(self._held)

    async def run(self) -> None:
        """Keep leases until cancelled; cancelling releases every held partition."""
        loop = asyncio.get_running_loop()
        watching = [
            loop.create_task(self._watch("members", self._members, self._member_seen)),
            loop.create_task(self._watch("leases", self._leases_bucket, self._lease_seen)),
        ]
        try:
            while True:
                started = time.monotonic()
                self._wake.clear()  # a change seen during the round makes the next one at once
                await self._round()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(
                        max(0.0, self._timing.retry_period - (time.monotonic() - started))
                    ):
                        await self._wake.wait()
        finally:
            for task in watching:
                task.cancel()
            await asyncio.gather(*watching, return_exceptions=True)
            await asyncio.shield(self.release_all())

    async def _watch(self, what: str, bucket: KeyValue, react: Callable[[str, bool], None]) -> None:
        """Call ``react(key, deleted)`` for every change of ``bucket``, for ever; a watch that
        fails (NATS away) is made again a retry period later, the rounds going on meanwhile."""
        while True:
            try:
                watcher = await bucket.watchall(meta_only=True)
                try:
                    async for entry in watcher:
                        if entry is not None:
                            react(entry.key, entry.operation in ("DEL", "PURGE"))
                finally:
                    with contextlib.suppress(NatsError, TimeoutError):
                        await watcher.stop()  # type: ignore[no-untyped-call]
            except (NatsError, TimeoutError) as error:
                log.debug("watch of the %s bucket failed: %s", what, error)
            await asyncio.sleep(self._timing.retry_period)

    def _member_seen(self, key: str, deleted: bool) -> None:
        if not key.startswith("m."):
            return  # the pool's settings, not a member
        member = key.removeprefix("m.")
        if member == self.member or not self.live_members:
            return  # its own heartbeat, or before the first round (which is next anyway)
        if deleted or member not in self.live_members:
            self._wake.set()  # a member left or joined: the shares change

    def _lease_seen(self, key: str, deleted: bool) -> None:
        partition = self._sharding.unit_of_lease_key(key) if deleted else None
        if partition is None:
            return
        if partition in self._wanted and partition not in self._held | self._stopping:
            self._wake.set()  # handed back by its old owner: claim it now

    async def release_all(self) -> None:
        """Stop work on every partition, then hand the leases back (SIGTERM, shutdown)."""
        handing_back = sorted(self._held)
        self._held.clear()
        self._stopping.update(handing_back)
        await asyncio.gather(*(self._hand_back(p) for p in handing_back))
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        with contextlib.suppress(NatsError, TimeoutError):
            await self._members.delete(self._member_key)

    async def _round(self) -> None:
        if self.misconfigured is not None:
            return
        try:
            await self._members.put(self._member_key, str(time.time()).encode())
            await self._check_sharding(str(self._sharding.shards).encode())
        except ShardingMismatch as mismatch:
            # Another member started meanwhile with another split (a start-up race, or the
            # setting expired while this process was cut off): stop, and say why.
            self.misconfigured = str(mismatch)
            log.error("%s; stopping work on every partition", mismatch)
            await self.release_all()
            return
        except (NatsError, TimeoutError) as error:
            log.warning("cannot reach the members bucket: %s", error)
            return
        try:
            try:
                keys = await self._members.keys()
            except NoKeysError:
                keys = []
        except (NatsError, TimeoutError) as error:
            log.warning("cannot reach the members bucket: %s", error)
            return
        live = sorted(key.removeprefix("m.") for key in keys if key.startswith("m."))
        if self.member not in live:
            # The listing missed the key this round has just written, so it is incomplete:
            # nats-py's keys() can end before the first key is delivered (seen under load, as
            # "no keys"). Shares computed from it would be wrong: keep what is held, and try
            # again shortly rather than a whole retry period later (a first round that misses
            # would leave a new member with nothing for that long).
            log.debug("members listing without this member's own key; renewing only")
            await asyncio.gather(*(self._renew(p) for p in sorted(self._held)))
            await asyncio.sleep(min(0.2, self._timing.retry_period / 10))
            self._wake.set()
            return
        members = live
        wanted = self._sharding.share(self.member, members)
        if live != self.live_members:
            log.info(
                "pool members now %s: this member should own %d %s",
                ", ".join(live),
                len(wanted),
                "partitions" if self._sharding.shards == 1 else "partition shards",
                extra={"members": live, "wanted": sorted(wanted)},
            )
        self.live_members = live
        self._wanted = frozenset(wanted)
        # Renewals first and together: a round must never delay them past the renew deadline.
        await asyncio.gather(*(self._renew(p) for p in sorted(self._held) if p in wanted))
        # A hand-back waits for the partition's in-flight reconciles (seconds, at worst): in the
        # background, so the next round's renewals are not held up behind it.
        for partition in sorted(self._held - wanted):
            self._held.discard(partition)
            self._stopping.add(partition)
            self._spawn(self._hand_back(partition))
        for partition in sorted(wanted - self._held - self._stopping):
            if self._closing:
                return
            await self._acquire(partition)

    def _fence(self, partition: int) -> None:
        """The lease was not renewed within the renew deadline: stop before it can expire."""
        if partition not in self._held:
            return
        self._held.discard(partition)
        log.error(
            "%s: lease not renewed within %.0fs; stopping work on it",
            self._sharding.describe(partition),
            self._timing.renew_deadline,
        )
        self._stopping.add(partition)
        self._spawn(self._stop_work(partition))

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._reap)

    def _reap(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("stopping work on a partition failed", exc_info=task.exception())

    async def _acquire(self, partition: int) -> None:
        if not await self._leases[partition].acquire():
            return  # held by another member until it releases or its lease expires
        self._held.add(partition)
        log.info("%s: acquired", self._sharding.describe(partition))
        await self._on_acquired(partition)

    async def _renew(self, partition: int) -> None:
        if await self._leases[partition].renew() is not Renewal.LOST:
            return  # renewed, fenced meanwhile (that stopped the work), or not reachable yet
        if partition not in self._held:
            return
        log.error("%s: lease taken over; stopping work on it", self._sharding.describe(partition))
        self._held.discard(partition)
        self._stopping.add(partition)
        await self._stop_work(partition)

    async def _stop_work(self, partition: int) -> None:
        try:
            await self._on_lost(partition)
        finally:
            self._stopping.discard(partition)

    async def _hand_back(self, partition: int) -> None:
        """Stop the work (the lease keeps others off meanwhile), then delete the lease."""
        try:
            await self._leases[partition].release(functools.partial(self._on_lost, partition))
            log.info("%s: released", self._sharding.describe(partition))
        finally:
            self._stopping.discard(partition)

    @property
    def _member_key(self) -> str:
        return f"m.{self.member}"

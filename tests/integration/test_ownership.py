"""Partition leases in a real NATS KV: hand-over when a member joins, without fencing itself;
and the single fenced lease they are made of, through its subtle cases."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import nats
import pytest
from nats.aio.client import Client as NatsClient
from nats.js.errors import NoKeysError
from nats.js.kv import KeyValue

from bus.streams import ensure_bucket
from reconcilers.lease import Lease, Renewal
from reconcilers.ownership import Callback, LeaseTiming, PartitionOwnership, rendezvous_owner
from tests.support.nats_server import NatsServer

pytestmark = pytest.mark.integration

PARTITIONS = 32
TIMING = LeaseTiming(lease_duration=4.0, renew_deadline=3.0, retry_period=0.5)
# Stopping work on a partition waits for its in-flight reconciles; make that slow, so that
# releasing half the partitions one after the other would outlast the renew deadline.
STOP_TAKES = 0.5


def test_a_member_hands_over_partitions_without_fencing_the_ones_it_keeps(
    stack_env: dict[str, str],
) -> None:
    async def scenario() -> None:
        connection = await nats.connect(stack_env["NATS_URL"])
        members, leases = await _pool_buckets(connection)
        lost: dict[str, list[int]] = {"a": [], "b": []}

        def member(name: str) -> PartitionOwnership:
            async def on_lost(partition: int) -> None:
                await asyncio.sleep(STOP_TAKES)
                lost[name].append(partition)

            return _member(name, members, leases, on_lost=on_lost)

        first, second = member("a"), member("b")
        runs = [asyncio.create_task(first.run())]
        try:
            await _until(lambda: len(first.owned) == PARTITIONS, "a holds every partition")
            runs.append(asyncio.create_task(second.run()))
            a_keeps = {p for p in range(PARTITIONS) if rendezvous_owner(p, ["a", "b"]) == "a"}
            b_takes = set(range(PARTITIONS)) - a_keeps
            assert len(b_takes) >= 8, "rendezvous should move a good share"
            await _until(
                lambda: first.owned == a_keeps and second.owned == b_takes,
                "the partitions split between a and b",
            )
            # Two more rounds of renewals: what a keeps stays with a.
            await asyncio.sleep(TIMING.renew_deadline)
            assert first.owned == a_keeps
            assert sorted(lost["a"]) == sorted(b_takes), "a stopped exactly what it handed over"
        finally:
            for run in runs:
                run.cancel()
            await asyncio.gather(*runs, return_exceptions=True)
            await connection.close()

    asyncio.run(scenario())


def test_a_member_shutting_down_keeps_its_partitions_but_takes_none_a_leaving_peer_frees(
    stack_env: dict[str, str],
) -> None:
    async def scenario() -> None:
        connection = await nats.connect(stack_env["NATS_URL"])
        members, leases = await _pool_buckets(connection)
        started: dict[str, list[int]] = {"a": [], "b": []}

        def member(name: str) -> PartitionOwnership:
            async def acquired(partition: int) -> None:
                started[name].append(partition)

            return _member(name, members, leases, on_acquired=acquired)

        first, second = member("a"), member("b")
        runs = {name: asyncio.create_task(m.run()) for name, m in (("a", first), ("b", second))}
        try:
            a_keeps = {p for p in range(PARTITIONS) if rendezvous_owner(p, ["a", "b"]) == "a"}
            await _until(
                lambda: first.owned == a_keeps and len(second.owned) == PARTITIONS - len(a_keeps),
                "the partitions split between a and b",
            )
            first.stop_acquiring()  # a is draining for its own shutdown
            started["a"].clear()
            runs["b"].cancel()  # b leaves: it hands its partitions back
            await asyncio.gather(runs["b"], return_exceptions=True)
            # Several rounds later a still renews what it had and has started nothing new.
            await asyncio.sleep(TIMING.renew_deadline)
            assert first.owned == a_keeps
            assert started["a"] == []
            assert first.live_members == ["a"]
        finally:
            for run in runs.values():
                run.cancel()
            await asyncio.gather(*runs.values(), return_exceptions=True)
            await connection.close()

    asyncio.run(scenario())


# Rounds this far apart: a hand-over seen well within one happened because the members saw
# the pool change, not because a round came round.
SLOW_ROUNDS = LeaseTiming(lease_duration=60.0, renew_deadline=50.0, retry_period=30.0)


def _worked_on(log: list[tuple[str, str, int]], partition: int) -> list[tuple[str, str]]:
    """(member, what) of every start and stop of work on ``partition``, in order."""
    return [(member, what) for member, what, p in log if p == partition]


def _one_worker_at_a_time(log: list[tuple[str, str, int]], partition: int) -> None:
    """Work on the partition starts only when nobody works on it: each stop of the previous
    worker has finished before the next start."""
    working: str | None = None
    for member, what in _worked_on(log, partition):
        if what == "started":
            assert working is None, f"partition {partition}: {member} started while {working} works"
            working = member
        elif what == "stopped":
            assert working == member, f"partition {partition}: {member} stopped, {working} works"
            working = None


def test_a_join_moves_partitions_at_once_and_never_to_two_workers(
    stack_env: dict[str, str],
) -> None:
    async def scenario() -> None:
        connection = await nats.connect(stack_env["NATS_URL"])
        members, leases = await _pool_buckets(connection, SLOW_ROUNDS)
        log: list[tuple[str, str, int]] = []

        def member(name: str) -> PartitionOwnership:
            async def acquired(partition: int) -> None:
                log.append((name, "started", partition))

            async def on_lost(partition: int) -> None:
                await asyncio.sleep(STOP_TAKES)  # in-flight reconciles finishing
                log.append((name, "stopped", partition))

            return _member(
                name, members, leases, on_acquired=acquired, on_lost=on_lost, timing=SLOW_ROUNDS
            )

        first, second = member("a"), member("b")
        runs = [asyncio.create_task(first.run())]
        try:
            await _until(lambda: len(first.owned) == PARTITIONS, "a holds every partition")
            runs.append(asyncio.create_task(second.run()))
            b_takes = {p for p in range(PARTITIONS) if rendezvous_owner(p, ["a", "b"]) == "b"}
            # b's first round finds them held by a; a hands them back as soon as it sees b,
            # and b claims each as soon as it is released: all long before either's next round.
            await _until(
                lambda: second.owned == b_takes and first.owned == set(range(PARTITIONS)) - b_takes,
                "the partitions split between a and b within a round",
                within=SLOW_ROUNDS.retry_period / 2,
            )
        finally:
            for run in runs:
                run.cancel()
            await asyncio.gather(*runs, return_exceptions=True)
            await connection.close()
        for partition in b_takes:
            assert _worked_on(log, partition)[:3] == [
                ("a", "started"),
                ("a", "stopped"),
                ("b", "started"),
            ]
        for partition in range(PARTITIONS):
            _one_worker_at_a_time(log, partition)

    asyncio.run(scenario())


def test_a_leaving_member_s_partitions_are_taken_at_once_and_never_by_two_workers(
    stack_env: dict[str, str],
) -> None:
    async def scenario() -> None:
        connection = await nats.connect(stack_env["NATS_URL"])
        members, leases = await _pool_buckets(connection, SLOW_ROUNDS)
        log: list[tuple[str, str, int]] = []

        def member(name: str) -> PartitionOwnership:
            async def acquired(partition: int) -> None:
                log.append((name, "started", partition))

            async def on_lost(partition: int) -> None:
                await asyncio.sleep(STOP_TAKES)
                log.append((name, "stopped", partition))

            return _member(
                name, members, leases, on_acquired=acquired, on_lost=on_lost, timing=SLOW_ROUNDS
            )

        first, second = member("a"), member("b")
        runs = {name: asyncio.create_task(m.run()) for name, m in (("a", first), ("b", second))}
        try:
            b_had = {p for p in range(PARTITIONS) if rendezvous_owner(p, ["a", "b"]) == "b"}
            await _until(
                lambda: second.owned == b_had and len(first.owned) == PARTITIONS - len(b_had),
                "the partitions split between a and b",
                within=SLOW_ROUNDS.retry_period / 2,
            )
            runs["b"].cancel()  # b leaves: it stops its work, then hands its leases back
            await asyncio.gather(runs["b"], return_exceptions=True)
            await _until(
                lambda: len(first.owned) == PARTITIONS,
                "a holds every partition again within a round",
                within=SLOW_ROUNDS.retry_period / 2,
            )
            taken_back = list(log)
        finally:
            for run in runs.values():
                run.cancel()
            await asyncio.gather(*runs.values(), return_exceptions=True)
            await connection.close()
        for partition in range(PARTITIONS):
            _one_worker_at_a_time(log, partition)
        for partition in b_had:
            assert _worked_on(taken_back, partition)[-2:] == [("b", "stopped"), ("a", "started")]

    asyncio.run(scenario())


class _ListingMisses:
    """A members bucket whose next ``misses`` listings come back empty, as nats-py's keys()
    sometimes does under load (it can end before the first key is delivered)."""

    def __init__(self, kv: KeyValue) -> None:
        self._kv = kv
        self.misses = 0
        self.owner: PartitionOwnership | None = None
        self.views: list[list[str]] = []  # the owner's view of the pool at each listing

    def __getattr__(self, name: str) -> Any:
        return getattr(self._kv, name)

    async def keys(self) -> list[str]:
        if self.owner is not None:
            self.views.append(list(self.owner.live_members))
        if self.misses:
            self.misses -= 1
            raise NoKeysError
        return await self._kv.keys()


def test_a_members_listing_that_misses_the_member_itself_changes_no_share(
    stack_env: dict[str, str],
) -> None:
    async def scenario() -> None:
        connection = await nats.connect(stack_env["NATS_URL"])
        members, leases = await _pool_buckets(connection)
        listing = _ListingMisses(members)
        changes: list[tuple[str, int]] = []

        async def acquired(partition: int) -> None:
            changes.append(("acquired", partition))

        async def on_lost(partition: int) -> None:
            changes.append(("lost", partition))

        first = _member("a", cast(KeyValue, listing), leases, on_acquired=acquired, on_lost=on_lost)
        listing.owner = first
        second = _member("b", members, leases)
        runs = [asyncio.create_task(first.run()), asyncio.create_task(second.run())]
        try:
            a_keeps = {p for p in range(PARTITIONS) if rendezvous_owner(p, ["a", "b"]) == "a"}
            await _until(
                lambda: first.owned == a_keeps and len(second.owned) == PARTITIONS - len(a_keeps),
                "the partitions split between a and b",
            )
            changes.clear()
            listing.views.clear()
            listing.misses = 2
            await _until(lambda: len(listing.views) >= 4, "a's next three rounds")
            # The view each round left behind, the two missed listings' included.
            assert listing.views[1:] == [["a", "b"]] * (len(listing.views) - 1)
            assert first.owned == a_keeps
            assert len(second.owned) == PARTITIONS - len(a_keeps)
            assert changes == [], "a started or stopped work on an incomplete view of the pool"
        finally:
            for run in runs:
                run.cancel()
            await asyncio.gather(*runs, return_exceptions=True)
            await connection.close()

    asyncio.run(scenario())


async def _pool_buckets(
    connection: NatsClient, timing: LeaseTiming = TIMING
) -> tuple[KeyValue, KeyValue]:
    """A fresh pool's members and leases buckets (keys expire after the lease duration)."""
    prefix = "t" + uuid.uuid4().hex[:10]
    js = connection.jetstream()
    members = await ensure_bucket(js, f"{prefix}-members", ttl_seconds=timing.lease_duration)
    leases = await ensure_bucket(js, f"{prefix}-leases", ttl_seconds=timing.lease_duration)
    return members, leases


async def _no_partition_work(_partition: int) -> None:
    return None


def _member(
    name: str,
    members: KeyValue,
    leases: KeyValue,
    *,
    on_acquired: Callback = _no_partition_work,
    on_lost: Callback = _no_partition_work,
    timing: LeaseTiming = TIMING,
) -> PartitionOwnership:
    return PartitionOwnership(
        member=name,
        members=members,
        leases=leases,
        partitions=PARTITIONS,
        timing=timing,
        on_acquired=on_acquired,
        on_lost=on_lost,
    )


async def _until(condition: Callable[[], bool], what: str, *, within: float = 30) -> None:
    try:
        async with asyncio.timeout(within):
            while not condition():  # noqa: ASYNC110 - ownership rounds expose no event
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


# --- one fenced lease (reconcilers.lease), against a nats-server of the test's own ----------


async def _kv(
    url: str, *, request_timeout: float = 5.0, **options: Any
) -> tuple[NatsClient, KeyValue]:
    """A connection and the test's lease bucket; ``request_timeout`` bounds each JetStream
    request."""
    connection = await nats.connect(url, **options)
    js = connection.jetstream(timeout=request_timeout)
    return connection, await ensure_bucket(js, "t-leases", ttl_seconds=TIMING.lease_duration)


def _lease(kv: KeyValue, holder: str, fenced: asyncio.Event | None = None) -> Lease:
    return Lease(
        kv,
        "p000",
        holder=holder,
        timing=TIMING,
        on_fenced=(fenced or asyncio.Event()).set,
    )


def test_a_renewal_answered_after_the_fence_leaves_the_lease_given_up_but_adoptable(
    tmp_path: Path,
) -> None:
    with NatsServer(tmp_path / "nats", jetstream=True) as server:

        async def scenario() -> None:
            connection, kv = await _kv(server.url())
            fenced = asyncio.Event()
            a, b = _lease(kv, "a", fenced), _lease(kv, "b")
            try:
                assert await a.acquire()
                server.pause()
                renewal = asyncio.create_task(a.renew())
                async with asyncio.timeout(TIMING.renew_deadline + 1):
                    await fenced.wait()
                assert not a.held
                server.resume()
                # The server stores the renewal after all, but the fence has spoken.
                assert await renewal is Renewal.FENCED
                assert not a.held
                # The key names a, renewed: nobody else may take it...
                assert not await b.acquire()
                assert b.holder_seen == "a"
                # ...and a, once its work has stopped, takes it back without waiting for the TTL.
                assert await a.acquire()
                assert await a.renew() is Renewal.RENEWED
            finally:
                await connection.close()

        asyncio.run(scenario())


def test_a_lease_taken_over_is_lost_at_the_next_renewal_and_not_fenced_later(
    tmp_path: Path,
) -> None:
    with NatsServer(tmp_path / "nats", jetstream=True) as server:

        async def scenario() -> None:
            connection, kv = await _kv(server.url())
            fenced = asyncio.Event()
            a, b = _lease(kv, "a", fenced), _lease(kv, "b")
            try:
                assert await a.acquire()
                assert not await b.acquire()
                await kv.delete("p000")  # as after an expiry: the key is free for the taking
                assert await b.acquire()
                assert await a.renew() is Renewal.LOST
                assert not a.held
                assert not await a.acquire(), "b holds it now"
                assert a.holder_seen == "b"
                # a's fence was disarmed with the loss: past its deadline it has not fired (it
                # would stop the work twice), while b, renewing, holds on.
                deadline = time.monotonic() + TIMING.renew_deadline + 0.5
                while time.monotonic() < deadline:
                    assert await b.renew() is Renewal.RENEWED
                    await asyncio.sleep(TIMING.retry_period)
                assert not fenced.is_set()
            finally:
                await connection.close()

        asyncio.run(scenario())


def test_nats_down_for_less_than_the_renew_deadline_costs_no_lease(tmp_path: Path) -> None:
    with NatsServer(tmp_path / "nats", jetstream=True) as server:

        async def scenario() -> None:
            connection, kv = await _kv(
                server.url(),
                request_timeout=1.0,
                reconnect_time_wait=0.1,
                max_reconnect_attempts=-1,
            )
            fenced = asyncio.Event()
            a, b = _lease(kv, "a", fenced), _lease(kv, "b")
            outcomes: list[Renewal] = []
            try:
                assert await a.acquire()
                down_at = time.monotonic()
                server.stop(kill=True)
                restart = asyncio.create_task(asyncio.to_thread(server.start))
                async with asyncio.timeout(TIMING.renew_deadline):
                    while not (restart.done() and outcomes[-1:] == [Renewal.RENEWED]):
                        outcomes.append(await a.renew())
                        await asyncio.sleep(TIMING.retry_period)
                await restart
                print(f"outage of {time.monotonic() - down_at:.1f}s, renewals: {outcomes}")
                assert Renewal.UNREACHABLE in outcomes, "the outage was not noticed"
                assert Renewal.LOST not in outcomes and Renewal.FENCED not in outcomes
                assert a.held and not fenced.is_set()
                assert not await b.acquire()
                assert b.holder_seen == "a"
            finally:
                await connection.close()

        asyncio.run(scenario())


def test_a_renewal_cancelled_on_its_way_still_counts_when_it_lands(tmp_path: Path) -> None:
    with NatsServer(tmp_path / "nats", jetstream=True) as server:

        async def scenario() -> None:
            connection, kv = await _kv(server.url())
            a, b = _lease(kv, "a"), _lease(kv, "b")
            try:
                assert await a.acquire()
                before = (await kv.get("p000")).revision
                server.pause()
                renewal = asyncio.create_task(a.renew())
                await asyncio.sleep(0.2)  # lets the client write the request out
                renewal.cancel()
                await asyncio.gather(renewal, return_exceptions=True)
                server.resume()

                async def landed() -> None:
                    while (await kv.get("p000")).revision == before:  # noqa: ASYNC110 - no event
                        await asyncio.sleep(0.02)

                await asyncio.wait_for(landed(), timeout=5)
                # a's next renewal names a revision that is no longer the key's: it recognizes
                # its own write and carries on instead of giving the lease up.
                assert await a.renew() is Renewal.RENEWED
                assert not await b.acquire()
                await a.release(_nothing)
                assert await b.acquire(), "released: the key is free at once"
            finally:
                await connection.close()

        asyncio.run(scenario())


def test_a_release_keeps_the_lease_through_a_slow_stop_then_frees_it_at_once(
    tmp_path: Path,
) -> None:
    with NatsServer(tmp_path / "nats", jetstream=True) as server:

        async def scenario() -> None:
            connection, kv = await _kv(server.url())
            fenced = asyncio.Event()
            a, b = _lease(kv, "a", fenced), _lease(kv, "b")
            stopping, stopped = asyncio.Event(), asyncio.Event()

            async def stop() -> None:
                stopping.set()
                await asyncio.sleep(TIMING.lease_duration + 1)  # longer than the TTL
                stopped.set()

            try:
                assert await a.acquire()
                release = asyncio.create_task(a.release(stop))
                await stopping.wait()
                tries = 0
                while not stopped.is_set():
                    assert not await b.acquire(), "taken while a still stops its work"
                    tries += 1
                    await asyncio.sleep(TIMING.retry_period)
                await release
                assert tries >= 8
                assert await b.acquire(), "released: the key is free at once, not at its TTL"
                assert not fenced.is_set(), "a stop in progress is not fenced"
            finally:
                await connection.close()

        asyncio.run(scenario())


def test_a_fenced_partition_is_not_claimed_again_before_its_work_has_stopped(
    tmp_path: Path,
) -> None:
    with NatsServer(tmp_path / "nats", jetstream=True) as server:

        async def scenario() -> None:
            connection = await nats.connect(server.url())
            js = connection.jetstream()
            members = await ensure_bucket(js, "t-members", ttl_seconds=TIMING.lease_duration)
            leases = await ensure_bucket(js, "t-leases", ttl_seconds=TIMING.lease_duration)
            log: list[tuple[str, int, float]] = []

            async def acquired(partition: int) -> None:
                log.append(("acquired", partition, time.monotonic()))

            async def on_lost(partition: int) -> None:
                log.append(("stopping", partition, time.monotonic()))
                await asyncio.sleep(2.0)  # in-flight reconciles finishing
                log.append(("stopped", partition, time.monotonic()))

            ownership = PartitionOwnership(
                member="a",
                members=members,
                leases=leases,
                partitions=2,
                timing=TIMING,
                on_acquired=acquired,
                on_lost=on_lost,
            )
            run = asyncio.create_task(ownership.run())
            try:
                await _until(lambda: ownership.owned == {0, 1}, "a owns both partitions")
                server.pause()
                await _until(lambda: not ownership.owned, "a fences both partitions")
                server.resume()  # the keys still name a: it could take them back at once
                await _until(lambda: ownership.owned == {0, 1}, "a owns both again")
            finally:
                run.cancel()
                await asyncio.gather(run, return_exceptions=True)
                await connection.close()
            for partition in (0, 1):
                events = [(what, at) for what, p, at in log if p == partition]
                kinds = [what for what, _at in events]
                assert kinds[:4] == ["acquired", "stopping", "stopped", "acquired"], kinds
                assert events[3][1] >= events[2][1], "claimed again while still stopping"

        asyncio.run(scenario())


async def _nothing() -> None:
    return None

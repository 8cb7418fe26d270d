"""Partition leases in a real NATS KV: hand-over when a member joins, without fencing itself."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable

import nats
import pytest

from bus.streams import ensure_bucket
from reconcilers.ownership import LeaseTiming, PartitionOwnership, rendezvous_owner

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
        prefix = "t" + uuid.uuid4().hex[:10]
        js = connection.jetstream()
        members = await ensure_bucket(js, f"{prefix}-members", ttl_seconds=TIMING.lease_duration)
        leases = await ensure_bucket(js, f"{prefix}-leases", ttl_seconds=TIMING.lease_duration)
        lost: dict[str, list[int]] = {"a": [], "b": []}

        def member(name: str) -> PartitionOwnership:
            async def acquired(_partition: int) -> None:
                return None

            async def on_lost(partition: int) -> None:
                await asyncio.sleep(STOP_TAKES)
                lost[name].append(partition)

            return PartitionOwnership(
                member=name,
                members=members,
                leases=leases,
                partitions=PARTITIONS,
                timing=TIMING,
                on_acquired=acquired,
                on_lost=on_lost,
            )

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


async def _until(condition: Callable[[], bool], what: str) -> None:
    try:
        async with asyncio.timeout(30):
            while not condition():  # noqa: ASYNC110 - ownership rounds expose no event
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None

"""The pure rules under partition ownership and leader election: timing, placement, names."""

from __future__ import annotations

from typing import Any, cast

import pytest

from reconcilers.leader import LeaderElection, leaders_bucket
from reconcilers.lease import LeaseTiming
from reconcilers.ownership import rendezvous_owner


@pytest.mark.parametrize(
    ("duration", "deadline", "retry"),
    [(10, 7, 7), (10, 10, 2), (7, 10, 2), (10, 7, 8)],
)
def test_lease_timing_needs_retry_below_deadline_below_duration(
    duration: float, deadline: float, retry: float
) -> None:
    with pytest.raises(ValueError, match="retry period < renew deadline < lease duration"):
        LeaseTiming(lease_duration=duration, renew_deadline=deadline, retry_period=retry)


def test_a_member_joining_takes_only_partitions_from_others_and_a_fair_share() -> None:
    three = ["a", "b", "c"]
    before = {p: rendezvous_owner(p, three) for p in range(256)}
    after = {p: rendezvous_owner(p, [*three, "d"]) for p in range(256)}
    moved = [p for p in before if before[p] != after[p]]
    assert all(after[p] == "d" for p in moved), "a join moves partitions only to the newcomer"
    assert 40 <= len(moved) <= 90, f"{len(moved)} of 256 moved; a fair share is 64"


def test_the_leaders_bucket_is_named_after_prefix_and_pool() -> None:
    assert leaders_bucket("kubus", "default") == "kubus-default-leaders"


@pytest.mark.parametrize("name", ["", "has space", "ends.", ".starts", "star*"])
def test_a_controller_name_that_cannot_be_a_kv_key_is_refused_by_name(name: str) -> None:
    async def never(_name: str) -> None:
        raise AssertionError("not called")

    with pytest.raises(ValueError, match="cannot name a NATS KV key") as error:
        LeaderElection(
            member="m",
            leaders=cast(Any, None),  # never used: the names are checked first
            controllers=[name],
            timing=LeaseTiming(),
            on_started_leading=never,
            on_stopped_leading=never,
        )
    assert repr(name) in str(error.value)

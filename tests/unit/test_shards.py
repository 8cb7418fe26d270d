"""Partition shards: which unit a key is in, who should hold it, and the lease names."""

from __future__ import annotations

import itertools
from collections import Counter

import pytest

from bus.subjects import partition_of
from reconcilers.ownership import rendezvous_owner
from reconcilers.shards import Sharding

MEMBERS = ["a", "b", "c", "d"]


def test_one_shard_is_one_owner_per_partition_as_before() -> None:
    sharding = Sharding(32)
    for member in MEMBERS:
        assert sharding.share(member, MEMBERS) == {
            p for p in range(32) if rendezvous_owner(p, MEMBERS) == member
        }
    assert sharding.unit_of("team-a", "web") == partition_of("team-a", "web", 32)
    assert sharding.lease_key(7) == "p007"
    assert sharding.describe(7) == "partition 7"


def test_every_unit_has_exactly_one_holder() -> None:
    sharding = Sharding(32, 4)
    shares = [sharding.share(member, MEMBERS) for member in MEMBERS]
    assert sum(len(share) for share in shares) == sharding.units
    assert set().union(*shares) == set(range(sharding.units))
    for one, other in itertools.combinations(shares, 2):
        assert not one & other


def test_a_partition_with_as_many_shards_as_members_is_spread_over_all_of_them() -> None:
    sharding = Sharding(32, 4)
    for partition in range(32):
        holders = {
            member
            for member in MEMBERS
            if sharding.share(member, MEMBERS) & set(sharding.units_of(partition))
        }
        assert holders == set(MEMBERS)


def test_fewer_shards_than_members_keep_a_partition_on_that_many_processes() -> None:
    sharding = Sharding(32, 2)
    for partition in range(32):
        holders = [
            member
            for member in MEMBERS
            if sharding.share(member, MEMBERS) & set(sharding.units_of(partition))
        ]
        assert len(holders) == 2, "each process caches only the partitions it has shards of"


def test_the_keys_of_one_namespace_fall_into_every_shard_of_its_partition() -> None:
    sharding = Sharding(32, 4)
    units = Counter(sharding.unit_of("hot", f"web-{i}") for i in range(400))
    partition = partition_of("hot", "", 32)
    assert set(units) == set(sharding.units_of(partition))
    assert min(units.values()) >= 60, units


def test_a_lease_key_names_its_unit_and_keys_of_another_split_are_not_read() -> None:
    sharding = Sharding(32, 4)
    assert sharding.lease_key(4 * 5 + 2) == "p005s2"
    assert sharding.unit_of_lease_key("p005s2") == 22
    assert sharding.describe(22) == "partition 5 shard 3/4"
    assert sharding.unit_of_lease_key("p005") is None
    assert sharding.unit_of_lease_key("p005s4") is None
    assert sharding.unit_of_lease_key("p032s0") is None
    assert Sharding(32).unit_of_lease_key("p005s2") is None
    assert Sharding(32).unit_of_lease_key("p005") == 5


@pytest.mark.parametrize("shards", [0, 17])
def test_a_shard_count_out_of_range_is_refused_by_its_flag(shards: int) -> None:
    with pytest.raises(ValueError, match="--partition-shards must be between 1 and 16"):
        Sharding(32, shards)

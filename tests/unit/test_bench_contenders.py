"""`kubus bench --contenders`: the names it knows, and one line for the others."""

from __future__ import annotations

import pytest

from bench.compare.contenders import contender_named


def test_kubus_contenders_name_their_processes_and_partition_shards() -> None:
    assert (contender_named("kubus-2").reconcilers, contender_named("kubus-2").shards) == (2, 1)
    sharded = contender_named("kubus-4s4")
    assert (sharded.name, sharded.reconcilers, sharded.shards) == ("kubus-4s4", 4, 4)


@pytest.mark.parametrize("name", ["kubus-0", "kubus-4s0", "kubus-4s17", "kubus-s4", "kubus-4x4"])
def test_an_unknown_contender_is_refused_naming_the_known_forms(name: str) -> None:
    with pytest.raises(ValueError, match=f"unknown contender '{name}'.*kubus-PsK"):
        contender_named(name)

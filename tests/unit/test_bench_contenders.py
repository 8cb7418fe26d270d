"""`kubus bench --contenders`: the names it knows, and one line for the others."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.compare.contenders import contender_named
from bench.compare.harness import run_all
from tests.unit.test_bench_results import by_contender, filled, reports, settings, strict_json


def test_kubus_contenders_name_their_processes_and_partition_shards() -> None:
    assert (contender_named("kubus-2").reconcilers, contender_named("kubus-2").shards) == (2, 1)
    sharded = contender_named("kubus-4s4")
    assert (sharded.name, sharded.reconcilers, sharded.shards) == ("kubus-4s4", 4, 4)


@pytest.mark.parametrize("name", ["kubus-0", "kubus-4s0", "kubus-4s17", "kubus-s4", "kubus-4x4"])
def test_an_unknown_contender_is_refused_naming_the_known_forms(name: str) -> None:
    with pytest.raises(ValueError, match=f"unknown contender '{name}'.*kubus-PsK"):
        contender_named(name)


def test_a_run_with_a_sharded_contender_is_reported_and_judged_on_the_hot_namespace(
    tmp_path: Path,
) -> None:
    run = settings(tmp_path, "kubus-1", "kubus-4", "kubus-4s4")
    fills = {"kubus-1": filled(30.0, [0.1]), "kubus-4": filled(29.0, [0.1])}
    fills["kubus-4s4"] = filled(12.0, [0.1])
    run_all(
        run, lambda _line: None, reports(tmp_path, run).write, run_contender=by_contender(fills)
    )

    results = strict_json(tmp_path / "out" / "results.json")
    assert [c["name"] for c in results["contenders"]] == ["kubus-1", "kubus-4", "kubus-4s4"]
    assert results["pending"] == []
    (hot,) = [g for g in results["goals"] if g["goal"].startswith("a hot namespace scales out")]
    assert hot["status"] == "met", hot
    assert "kubus-4 0.97x" in hot["figures"] and "kubus-4s4 0.40x" in hot["figures"]
    (cache,) = [g for g in results["goals"] if g["goal"].startswith("per-process cached")]
    assert "kubus-4s4" not in cache["figures"], "sharded pools are not judged on 1/P caches"
    assert "| kubus-4s4 | update | 12.0 |" in (tmp_path / "out" / "results.md").read_text()

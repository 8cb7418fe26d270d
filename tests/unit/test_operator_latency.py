"""bench.operator_latency's pure parts: audit lines, matching changes to reconciles, figures."""

from __future__ import annotations

import json

from bench.operator_latency import (
    Patch,
    Start,
    latencies_by_marker,
    latencies_by_time,
    latency_summary,
    parse_audit,
    start_figures,
    totals,
    vm_rss_mib,
)


def test_audit_lines_of_kubus_and_of_the_kopf_handler_parse_and_junk_is_skipped() -> None:
    kubus = {
        "member": "m",
        "controller": "mysql-operator",
        "key": "ns/db",
        "start": 10.5,
        "end": 11,
    }
    kopf = {"start": 12.25, "key": "ns/db", "marker": "7", "cause": "update"}
    lines = [json.dumps(kubus), json.dumps(kopf), "", '{"start": 1', "not json", '{"key": "x"}']
    assert parse_audit(lines) == [Start(10.5, "ns/db"), Start(12.25, "ns/db", 7)]


def test_by_time_a_change_is_matched_to_the_first_reconcile_of_its_key_at_or_after_it() -> None:
    patches = [Patch("ns/a", 1, 100.0, 100.01), Patch("ns/b", 2, 100.1, 100.11)]
    starts = [
        Start(99.0, "ns/a"),  # before the change: an earlier reconcile
        Start(100.02, "ns/a"),
        Start(100.5, "ns/a"),
        Start(100.4, "ns/c"),  # another key
    ]
    found = latencies_by_time(patches, starts)
    assert round(found[0] or 0, 6) == 0.02
    assert found[1] is None  # ns/b was never reconciled after its change


def test_by_marker_a_reconcile_of_a_later_state_covers_an_earlier_change() -> None:
    patches = [Patch("ns/a", 1, 10.0, 10.01), Patch("ns/a", 2, 10.1, 10.11)]
    # Only the state with marker 2 was seen (both changes coalesced into one reconcile).
    starts = [Start(9.0, "ns/a", 0), Start(10.3, "ns/a", 2), Start(10.4, "ns/b", 5)]
    found = latencies_by_marker(patches, starts)
    assert [round(f or 0, 6) for f in found] == [0.3, 0.2]
    assert latencies_by_marker([Patch("ns/a", 3, 11.0, 11.0)], starts) == [None]


def test_the_summary_is_in_milliseconds_nearest_rank_and_counts_what_was_missed() -> None:
    latencies: list[float | None] = [i / 1000 for i in range(1, 101)]
    summary = latency_summary([*latencies, None])
    assert summary == {
        "changes": 101,
        "reconciled": 100,
        "p50_ms": 51.0,
        "p99_ms": 100.0,
        "max_ms": 100.0,
    }
    assert latency_summary([None])["p50_ms"] is None


def test_vm_rss_and_peak_are_read_from_proc_status_in_mib() -> None:
    text = "Name:\tpython\nVmHWM:\t  204800 kB\nVmRSS:\t  102400 kB\nThreads:\t4\n"
    assert vm_rss_mib(text) == 100.0
    assert vm_rss_mib(text, "VmHWM") == 200.0
    assert vm_rss_mib("Name:\tkthread\n") is None


def test_start_figures_count_only_pre_existing_objects_reconciled_after_the_spawn() -> None:
    starts = [Start(4.0, "ns/a"), Start(5.5, "ns/a"), Start(6.0, "ns/b"), Start(5.2, "ns/new")]
    figures = start_figures(5.0, 5.1, starts, {"ns/a", "ns/b"})
    assert figures == {
        "objects": 2,
        "ready_s": 0.1,
        "first_reconcile_s": 0.5,
        "all_reconciled_s": 1.0,
        "reconciled": 2,
    }
    assert start_figures(5.0, 5.1, starts, {"ns/a", "ns/z"})["all_reconciled_s"] is None


def test_totals_count_the_watcher_with_the_operator_and_nats_apart() -> None:
    record = {
        "memory": {
            "objects": 1000,
            "reconciler": {"rss_mib": 70.0},
            "watcher": {"rss_mib": 60.0},
            "nats_server": {"rss_mib": 25.0},
            "after_restart": {"rss_mib": 71.0},
        }
    }
    totals(record)
    assert record["memory"]["rss_total_operator"] == 70.0
    assert record["memory"]["rss_total"] == 130.0
    assert record["memory"]["rss_total_with_nats"] == 155.0

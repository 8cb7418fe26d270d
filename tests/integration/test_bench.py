"""`kubus bench` as a user runs it, at a small size: every contender converges in both shapes,
a third reconciler joins a pool of 2 (the scale-up, with a few pods), and results.json/.md/.png
hold every figure the issue asks for, with sane values."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.integration

KUBUS = [sys.executable, "-m", "kubus.cli"]
CONTENDERS = ["kube-controller-manager", "kubus-1", "kubus-2", "kubus-4", "ceiling"]
PHASES = ("create", "update", "delete")
DEPLOYMENTS, REPLICAS = 3, 2
# Few pods, one run: the scale-up's own stack and join add well under a minute.
SCALE_UP_PODS = 200


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("bench")
    result = subprocess.run(
        [
            *KUBUS,
            "bench",
            f"--deployments={DEPLOYMENTS}",
            f"--replicas={REPLICAS}",
            f"--out={out}",
            "--deadline=240",
            f"--scale-up-pods={SCALE_UP_PODS}",
        ],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return out, json.loads((out / "results.json").read_text())


def _number(value: Any) -> float:
    assert isinstance(value, int | float) and not isinstance(value, bool), value
    assert math.isfinite(value), value
    return float(value)


def test_every_contender_converges_with_every_field_filled(
    bench_run: tuple[Path, dict[str, Any]],
) -> None:
    _out, results = bench_run
    assert [c["name"] for c in results["contenders"]] == CONTENDERS
    assert results["settings"]["pods"] == DEPLOYMENTS * REPLICAS
    for contender in results["contenders"]:
        name = contender["name"]
        assert contender["ok"] is True, (name, contender["error"], contender["stuck"])
        assert contender["error"] is None and contender["stuck"] == []
        for key in ("phases", "phases_one_namespace"):
            assert set(contender[key]) == set(PHASES), (name, key)
            cpu_total = 0.0
            for phase_name, phase in contender[key].items():
                where = (name, key, phase_name)
                assert phase["ok"] is True, where
                seconds = _number(phase["seconds"])
                assert 0 < seconds < 240, where
                # Both are rounded to 0.01; pods/s comes from the unrounded time.
                pods = DEPLOYMENTS * REPLICAS
                rate = _number(phase["pods_per_s"])
                low, high = pods / (seconds + 0.006), pods / max(seconds - 0.006, 1e-3)
                assert low - 0.006 <= rate <= high + 0.006, where
                cpu = _number(phase["cpu_seconds_per_1000_pods"])
                assert cpu >= 0, where
                cpu_total += cpu
                assert 1 < _number(phase["peak_rss_mb"]) < 4096, where
                assert phase["processes"], where
                for usage in phase["processes"].values():
                    assert _number(usage["peak_rss_mb"]) > 1, where
                    assert _number(usage["cpu_seconds"]) >= 0, where
                if name != "ceiling" and phase_name != "delete":
                    # Event -> reconcile latency: kubus's histogram, kcm's object timestamps.
                    assert 0 <= _number(phase["latency_p50_s"]) <= 60, where
                    assert phase["latency_p50_s"] <= phase["latency_p99_s"] <= 60, where
                    assert phase["latency_source"], where
                if name.startswith("kubus-"):
                    processes = int(name.split("-")[1])
                    assert _number(phase["bus_lag_max"]) >= 0, where
                    assert len(phase["cached_objects_per_process"]) == processes, where
                    # kubus's own garbage collector, in a pool apart: no kcm process.
                    assert set(phase["processes"]) == {
                        "watcher",
                        "kubus-garbagecollector",
                        *(f"reconciler-{i}" for i in range(processes)),
                    }, where
                if name == "kube-controller-manager":
                    assert set(phase["processes"]) == {
                        "kube-controller-manager",
                        "kcm-garbagecollector",
                    }, where
                if name != "kube-controller-manager":
                    assert _number(phase["seconds_vs_kcm"]) > 0, where
            # CPU ticks are 10 ms: a 0.2 s phase may show none, a whole shape never does.
            assert cpu_total > 0, (name, key)


def test_the_scale_up_is_measured_in_order_from_exec(
    bench_run: tuple[Path, dict[str, Any]],
) -> None:
    _out, results = bench_run
    scaled = results["scale_up"]
    assert scaled["ok"] is True, scaled["error"]
    assert scaled["error"] is None and "scale-up" not in results["pending"]
    assert (scaled["pods"], scaled["runs"], scaled["pool"]) == (SCALE_UP_PODS, 1, 2)
    assert scaled["nodes"] >= 3 and scaled["namespaces"] >= 1
    (run,) = scaled["per_run"]
    assert run["partitions"] >= 1 and run["objects_replayed"] >= 0
    times = scaled["seconds_from_exec"]
    for figure in times.values():
        assert _number(figure["min"]) <= _number(figure["median"]) <= _number(figure["max"])
    # One run: min, median and max are its figures; each milestone comes after the one before.
    first, acquired, replayed, caught_up = (
        times[key]["max"]
        for key in ("first_log_line", "share_acquired", "share_replayed", "share_caught_up")
    )
    assert 0 < first <= acquired <= replayed <= caught_up < 120, times
    assert _number(scaled["replay_objects_per_s"]["median"]) > 0
    goal = results["goals"][-1]
    assert "within 5 s" in goal["goal"] and goal["status"] in ("met", "not met"), goal


def test_markdown_and_chart_are_written(bench_run: tuple[Path, dict[str, Any]]) -> None:
    out, results = bench_run
    markdown = (out / "results.md").read_text()
    assert "| contender | phase | seconds |" in markdown
    for name in CONTENDERS:
        assert f"| {name} | create |" in markdown
    assert "## one-namespace" in markdown and "## Goals" in markdown
    assert "## Scale-up: a third reconciler joins a pool of 2" in markdown
    assert "| share caught up on /metrics (lag ~0) |" in markdown
    assert "Goal: ready and reconciling its share within 5 s: **" in markdown
    assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert {goal["status"] for goal in results["goals"]} <= {"met", "not met", "not measured"}


def test_bad_flag_is_one_error_line_and_exit_2(tmp_path: Path) -> None:
    result = subprocess.run(
        [*KUBUS, "bench", "--contenders=kcm", f"--out={tmp_path}"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "unknown contender 'kcm'" in lines[0], result.stderr
    assert not (tmp_path / "results.json").exists()


# --workload jobs and statefulsets, small: kcm and one kubus contender, the spread shape.
WORKLOADS = {
    "jobs": (["--jobs=3", "--completions=2"], 6, ("create", "delete")),
    "statefulsets": (["--statefulsets=2", "--replicas=2"], 4, ("create", "update", "delete")),
}


@pytest.fixture(scope="module", params=sorted(WORKLOADS))
def workload_run(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, Path, dict[str, Any]]:
    workload: str = request.param
    out = tmp_path_factory.mktemp(f"bench-{workload}")
    result = subprocess.run(
        [
            *KUBUS,
            "bench",
            f"--workload={workload}",
            *WORKLOADS[workload][0],
            "--contenders=kube-controller-manager,kubus-1",
            "--shapes=spread",
            f"--out={out}",
            "--deadline=240",
            "--scale-up-pods=0",
        ],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return workload, out, json.loads((out / "results.json").read_text())


def test_jobs_and_statefulsets_converge_on_kcm_and_kubus_with_their_controllers(
    workload_run: tuple[str, Path, dict[str, Any]],
) -> None:
    workload, out, results = workload_run
    _flags, pods, phases = WORKLOADS[workload]
    assert results["settings"]["workload"] == workload and results["settings"]["pods"] == pods
    assert [c["name"] for c in results["contenders"]] == ["kube-controller-manager", "kubus-1"]
    for contender in results["contenders"]:
        name = contender["name"]
        assert contender["ok"] is True, (name, contender["error"], contender["stuck"])
        assert contender["phases_one_namespace"] == {}
        assert tuple(contender["phases"]) == phases, name
        for phase_name, phase in contender["phases"].items():
            where = (workload, name, phase_name)
            assert phase["ok"] is True and 0 < _number(phase["seconds"]) < 240, where
            assert _number(phase["cpu_seconds"]) >= 0, where
            if phase_name != "delete":
                assert 0 <= _number(phase["latency_p50_s"]) <= 60, where
            if name == "kubus-1":
                assert _number(phase["seconds_vs_kcm"]) > 0, where
                assert set(phase["processes"]) == {
                    "watcher",
                    "reconciler-0",
                    "kubus-garbagecollector",
                }, where
    noun = {"jobs": "3 Jobs x 2 completions", "statefulsets": "2 StatefulSets x 2 replicas"}
    markdown = (out / "results.md").read_text()
    assert markdown.startswith(f"# kubus vs kube-controller-manager: {noun[workload]} ")
    assert "| kubus-1 | create |" in markdown

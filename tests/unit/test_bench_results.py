"""`kubus bench` never loses a run: every figure it writes is strict JSON, a latency past the
histogram's top bucket says so, and each contender's results are on disk once it ends.

The harness's loop, its phase records and the report writers are the real ones; only the part
that needs a dev stack (starting a contender and timing its phases) is replaced, by a function
that fills a contender's record with phase records made from given measurements.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from bench.compare.contenders import KCM, Contender, Limits, contender_named
from bench.compare.driver import PhaseRun
from bench.compare.harness import PHASES, Settings, phase_record, run_all
from bench.compare.measure import EVENT_LATENCY, KubusScrape, Usage
from bench.compare.report import Reports, scale_up_markdown
from bench.compare.scaleup import Measure, ScaleUp, new_record, run_scale_up
from bench.compare.scaleup import goal as goal_of
from bench.compare.workload import Workload
from bench.scale_up import Plan
from bench.support import BucketBound, atomic_file, bucket_quantile, write_atomically
from kubus.cli import build_parser, main

WORKLOAD = Workload(deployments=4, replicas=5)
# kubus_reconciler_event_latency_seconds's buckets (reconcilers/metrics.py): the top one is 30 s.
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
SHAPE_KEYS = ("phases", "phases_one_namespace")
Fill = Callable[[Contender, Settings, dict[str, Any], Callable[[str], None]], None]


def strict_json(path: Path) -> Any:
    """results.json as a strict parser reads it: NaN and Infinity are refused."""

    def refuse(constant: str) -> None:
        raise AssertionError(f"{path.name} holds {constant}, which is not JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


def scrape(latencies: list[float]) -> KubusScrape:
    """One reconciler's /metrics after it observed ``latencies`` seconds of event latency."""
    registry = CollectorRegistry()
    histogram = Histogram(
        EVENT_LATENCY, "event latency", ["controller"], buckets=BUCKETS, registry=registry
    )
    for seconds in latencies:
        histogram.labels("deployment").observe(seconds)
    return KubusScrape((generate_latest(registry).decode(),))


def settings(tmp_path: Path, *names: str) -> Settings:
    return Settings(
        workload=WORKLOAD,
        spread_namespaces=4,
        limits=Limits(20.0, 30),
        deadline=600.0,
        contenders=tuple(contender_named(name) for name in names),
        log_dir=tmp_path / "logs",
    )


def filled(seconds: float, latencies: list[float]) -> Fill:
    """Every phase of both shapes converged in ``seconds``, with these reconcile latencies."""

    def fill(
        contender: Contender,
        _settings: Settings,
        record: dict[str, Any],
        _progress: Callable[[str], None],
    ) -> None:
        names = ["watcher", "reconciler-0", "reconciler-1", "kubus-garbagecollector"]
        if not contender.is_kubus:
            names = [KCM, "kcm-garbagecollector"]
        record["processes"] = names
        for key in SHAPE_KEYS:
            for phase in PHASES:
                record[key][phase] = phase_record(
                    contender,
                    run=PhaseRun(ok=True, seconds=seconds, timestamp_latencies=[0.0, 1.0, 2.0]),
                    usage={name: Usage(cpu_seconds=1.5, peak_rss_mb=90.0) for name in names},
                    infra_usage={
                        "kube-apiserver": Usage(cpu_seconds=4.0, peak_rss_mb=300.0),
                        "nats-server": Usage(cpu_seconds=0.5, peak_rss_mb=20.0),
                    },
                    workload=WORKLOAD,
                    before=scrape([]) if contender.is_kubus else None,
                    after=scrape(latencies) if contender.is_kubus else None,
                    lag_max=12.0,
                )

    return fill


def by_contender(fills: dict[str, Fill]) -> Fill:
    def fill(
        contender: Contender,
        settings: Settings,
        record: dict[str, Any],
        progress: Callable[[str], None],
    ) -> None:
        fills[contender.name](contender, settings, record, progress)

    return fill


def reports(tmp_path: Path, run: Settings, scale_up: ScaleUp | None = None) -> Reports:
    return Reports(
        tmp_path / "out",
        {
            "benchmark": "kubus bench",
            "command": "kubus bench",
            "machine": "test",
            "started_at": "2026-12-02T00:00:00+00:00",
            "settings": {"deployments": 4, "replicas": 5, "pods": 20, "spread_namespaces": 4}
            | {"kube_api_qps": 20.0, "kube_api_burst": 30, "deadline_seconds": run.deadline}
            | {"shapes": list(run.shape_names)},
        },
        [contender.name for contender in run.contenders],
        scale_up=new_record(scale_up) if scale_up else None,
    )


def test_a_quantile_past_the_top_bucket_is_above_that_bound_never_inf() -> None:
    # Cumulative counts: 10 of 100 within 0.5 s, 20 within 30 s, 80 past the top bucket.
    buckets = {0.5: 10.0, 30.0: 20.0, float("inf"): 100.0}
    assert bucket_quantile(buckets, 0.05) == BucketBound(0.5)
    assert bucket_quantile(buckets, 0.20) == BucketBound(30.0)
    p50 = bucket_quantile(buckets, 0.50)
    assert p50 == BucketBound(30.0, above=True)
    assert p50 is not None and str(p50) == "> 30" and p50.to_json() == {"above": 30.0}
    assert BucketBound.from_json(p50.to_json()) == p50
    assert bucket_quantile({0.5: 0.0, float("inf"): 0.0}, 0.5) is None
    # A histogram with no finite bucket tells only that the value is more than nothing.
    assert bucket_quantile({float("inf"): 3.0}, 0.5) == BucketBound(0.0, above=True)
    with pytest.raises(ValueError, match="finite"):
        BucketBound(float("inf"))


def test_latencies_past_the_buckets_are_strict_json_and_more_than_in_the_markdown(
    tmp_path: Path,
) -> None:
    run = settings(tmp_path, "kubus-2")
    # 60 reconciles within 0.25 s, 40 that waited 45 s and 2 minutes: past the 30 s bucket.
    latencies = [0.2] * 60 + [45.0] * 20 + [120.0] * 20
    fill = filled(300.0, latencies)
    run_all(run, lambda _line: None, reports(tmp_path, run).write, run_contender=fill)

    results = strict_json(tmp_path / "out" / "results.json")
    (kubus,) = results["contenders"]
    assert kubus["ok"] is True and results["pending"] == []
    for key in SHAPE_KEYS:
        for phase in PHASES:
            assert kubus[key][phase]["latency_p50_s"] == 0.25
            assert kubus[key][phase]["latency_p99_s"] == {"above": 30.0}
    markdown = (tmp_path / "out" / "results.md").read_text()
    assert "| kubus-2 | update | 300.0 |" in markdown
    assert "| <= 0.25 / > 30 s |" in markdown
    assert re.search(r"\b(inf|nan)\b", markdown, re.IGNORECASE) is None


def test_a_failing_second_contender_keeps_the_first_ones_results_on_disk(
    tmp_path: Path,
) -> None:
    run = settings(tmp_path, KCM, "kubus-2")
    out = tmp_path / "out"
    on_disk_before_the_second: dict[str, Any] = {}

    def crash(
        contender: Contender,
        settings: Settings,
        record: dict[str, Any],
        progress: Callable[[str], None],
    ) -> None:
        # What a crash of the whole bench right now would leave behind.
        on_disk_before_the_second.update(strict_json(out / "results.json"))
        filled(10.0, [0.1])(contender, settings, record, progress)
        del record["phases_one_namespace"]["update"], record["phases_one_namespace"]["delete"]
        raise RuntimeError("kube-apiserver exited with code 2:\n  panic: out of memory")

    ended: list[list[str]] = []

    def write(records: list[dict[str, Any]]) -> None:
        ended.append([record["name"] for record in records])
        reports(tmp_path, run).write(records)

    records = run_all(
        run,
        lambda _line: None,
        write,
        run_contender=by_contender({KCM: filled(20.0, []), "kubus-2": crash}),
    )

    assert ended == [[KCM], [KCM, "kubus-2"]]
    (kcm_then,) = on_disk_before_the_second["contenders"]
    assert kcm_then["name"] == KCM and kcm_then["ok"] is True
    assert kcm_then["phases"]["create"]["seconds"] == 20
    assert on_disk_before_the_second["pending"] == ["kubus-2"]

    results = strict_json(out / "results.json")
    kcm, kubus = results["contenders"]
    assert kcm["ok"] is True and kcm["phases"]["update"]["pods_per_s"] == 1.0
    assert kubus["ok"] is False
    assert kubus["error"] == "RuntimeError: kube-apiserver exited with code 2: panic: out of memory"
    # What it measured before it failed is kept too, with its ratios to kcm's.
    assert kubus["phases"]["create"]["seconds_vs_kcm"] == 0.5
    assert results["pending"] == []
    assert [record["ok"] for record in records] == [True, False]
    markdown = (out / "results.md").read_text()
    assert f"| {KCM} | delete | 20.0 |" in markdown
    assert "- kubus-2: RuntimeError: kube-apiserver exited with code 2: panic: out of memory" in (
        markdown
    )
    assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "harness-error.log" in {p.name for p in (run.log_dir / "kubus-2").iterdir()}
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]


def test_an_interrupt_keeps_what_was_measured_and_names_what_did_not_end(tmp_path: Path) -> None:
    run = settings(tmp_path, KCM, "kubus-2", "ceiling")

    def interrupted(*_args: Any) -> None:
        raise KeyboardInterrupt("SIGTERM")

    with pytest.raises(KeyboardInterrupt):
        run_all(
            run,
            lambda _line: None,
            reports(tmp_path, run).write,
            run_contender=by_contender({KCM: filled(20.0, []), "kubus-2": interrupted}),
        )

    results = strict_json(tmp_path / "out" / "results.json")
    assert [c["name"] for c in results["contenders"]] == [KCM, "kubus-2"]
    assert results["contenders"][0]["ok"] is True
    assert results["contenders"][1]["error"] == "interrupted (SIGTERM)"
    assert results["pending"] == ["ceiling"]
    assert (
        "not ended when this was written: ceiling" in (tmp_path / "out" / "results.md").read_text()
    )


def test_an_interrupted_write_leaves_the_old_file_whole(tmp_path: Path) -> None:
    path = tmp_path / "results.json"
    write_atomically(path, '{"old": true}\n')
    with pytest.raises(KeyboardInterrupt), atomic_file(path) as handle:
        handle.write(b'{"new": ')
        raise KeyboardInterrupt
    assert path.read_text() == '{"old": true}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


@pytest.mark.parametrize("flag", ["--deadline=inf", "--kube-api-qps=inf", "--deadline=nan"])
def test_a_non_finite_flag_is_refused_before_anything_runs(
    flag: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["bench", flag, f"--out={tmp_path}"])
    assert exit_.value.code == 2
    assert flag.partition("=")[0] in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_every_json_dump_in_bench_refuses_nan_and_infinity() -> None:
    bench = Path(__file__).parents[2] / "bench"
    calls = []
    for source in sorted(bench.rglob("*.py")):
        for node in ast.walk(ast.parse(source.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in ("dump", "dumps")
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id == "json"
            ):
                strict = any(
                    k.arg == "allow_nan"
                    and isinstance(k.value, ast.Constant)
                    and k.value.value is False
                    for k in node.keywords
                )
                calls.append((f"{source.relative_to(bench)}:{node.lineno}", strict))
    assert calls, "no json.dumps found: the check looks in the wrong place"
    assert [where for where, strict in calls if not strict] == []


# The scale-up after the contenders: bench/compare/scaleup.py with a stand-in for
# bench.scale_up.measure (which needs a stack), the report writers the real ones.


def joined(
    *, first_line: float, acquired: float, replayed: float, caught_up: float
) -> dict[str, Any]:
    """One run's figures as bench.scale_up.join_once gives them (seconds from exec)."""
    return {
        "member": "joiner",
        "partitions": 11,
        "objects_replayed": 700,
        "seconds_from_exec": {
            "first_log_line": first_line,
            "cluster_cache_replayed": first_line + 0.1,
            "joined_pool": first_line + 0.2,
            "first_partition_acquired": acquired - 0.3,
            "share_acquired": acquired,
            "share_replayed": replayed,
            "polled_ready": replayed + 0.05,
            "polled_first_partition_owned": acquired - 0.2,
            "polled_share_caught_up": caught_up,
            "polled_queues_drained": caught_up + 0.1,
        },
        "handback_seconds_from_join": {"old_owners_saw_it": 0.3, "last_released": 0.8},
        "replay": {
            "objects_per_s_overall": round(700 / (replayed - acquired + 0.3)),
            "per_partition": [
                {"partition": 3, "objects": 700, "seconds": 0.1, "objects_per_s": 7000}
            ],
        },
    }


def measured(
    runs: list[dict[str, Any]],
    *,
    then: BaseException | None = None,
    seen: Callable[[], None] = lambda: None,
) -> Measure:
    """A stand-in for bench.scale_up.measure: ``runs`` end one by one, then ``then`` is
    raised if given; ``seen`` runs first (to look at what is on disk meanwhile)."""

    def measure(
        plan: Plan,
        *,
        log_dir: Path,
        progress: Callable[[str], None],
        ended_run: Callable[[list[dict[str, Any]]], None],
    ) -> dict[str, Any]:
        seen()
        for index in range(len(runs)):
            ended_run(runs[: index + 1])
        if then is not None:
            raise then
        return {
            "benchmark": "scale_up",
            "pods": plan.pods,
            "pods_ready_seconds": 12.5,
            "runs": runs,
        }

    return measure


def test_the_scale_up_is_pending_until_it_ends_then_in_json_markdown_and_chart(
    tmp_path: Path,
) -> None:
    run = settings(tmp_path, "kubus-2")
    scale_up = ScaleUp(pods=2000, runs=2, log_dir=tmp_path / "logs" / "scale-up")
    written = reports(tmp_path, run, scale_up)
    out = tmp_path / "out"
    records = run_all(run, lambda _line: None, written.write, run_contender=filled(30.0, [0.1]))
    while_it_runs: dict[str, Any] = {}

    def look() -> None:
        while_it_runs.update(strict_json(out / "results.json"))

    runs = [
        joined(first_line=0.9, acquired=1.6, replayed=2.4, caught_up=3.1),
        joined(first_line=1.1, acquired=1.8, replayed=2.6, caught_up=4.2),
    ]
    record = run_scale_up(
        scale_up,
        new_record(scale_up),
        lambda _line: None,
        lambda ended: written.write(records, scale_up=ended),
        measure=measured(runs, seen=look),
    )

    # While it ran: the contenders' figures on disk, the scale-up pending, none of its figures.
    assert while_it_runs["pending"] == ["scale-up"]
    assert while_it_runs["contenders"][0]["ok"] is True
    assert while_it_runs["scale_up"]["ok"] is False
    assert while_it_runs["scale_up"]["seconds_from_exec"]["share_caught_up"] is None
    assert while_it_runs["goals"][-1]["status"] == "not measured"

    results = strict_json(out / "results.json")
    assert results["pending"] == []
    scaled = results["scale_up"]
    assert scaled == record
    assert scaled["ok"] is True and scaled["error"] is None
    assert (scaled["pods"], scaled["nodes"], scaled["namespaces"], scaled["runs"]) == (
        2000,
        20,
        100,
        2,
    )
    assert scaled["pods_ready_seconds"] == 12.5
    assert scaled["seconds_from_exec"] == {
        "first_log_line": {"min": 0.9, "median": 1.0, "max": 1.1},
        "share_acquired": {"min": 1.6, "median": 1.7, "max": 1.8},
        "share_replayed": {"min": 2.4, "median": 2.5, "max": 2.6},
        "share_caught_up": {"min": 3.1, "median": 3.65, "max": 4.2},
    }
    assert scaled["replay_objects_per_s"] == {"min": 636.0, "median": 636.0, "max": 636.0}
    assert len(scaled["per_run"]) == 2
    assert scaled["summary"]["handback_seconds_from_join"]["last_released"]["max"] == 0.8
    goal = results["goals"][-1]
    assert goal["status"] == "met" and "within 5 s" in goal["goal"]
    assert goal["figures"] == "caught up 4.2 s from exec (max of 2 runs), 2,000 pods"

    markdown = (out / "results.md").read_text()
    section = markdown.split("## Scale-up", 1)[1].split("## Goals", 1)[0]
    assert "2,000 pods on the bus (over 100 namespaces, 20 kwok nodes)" in section
    assert "| first log line (imports done, NATS connected) | 0.90 | 1.00 | 1.10 |" in section
    assert "| its whole share acquired | 1.60 | 1.70 | 1.80 |" in section
    assert "| its whole share replayed | 2.40 | 2.50 | 2.60 |" in section
    assert "| share caught up on /metrics (lag ~0) | 3.10 | 3.65 | 4.20 |" in section
    assert "| replay: objects/s over its share | 636 | 636 | 636 |" in section
    assert (
        "Goal: ready and reconciling its share within 5 s: **met**; caught up 4.2 s from exec "
        "(max of 2 runs), 2,000 pods." in section
    )
    assert f"- **met** {goal['goal']}: {goal['figures']}" in markdown
    assert "Partial results" not in markdown
    assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_share_caught_up_after_5_s_in_any_run_does_not_meet_the_goal(tmp_path: Path) -> None:
    scale_up = ScaleUp(pods=10_000, runs=3, log_dir=tmp_path / "logs")
    runs = [
        joined(first_line=1.0, acquired=2.0, replayed=3.0, caught_up=seconds)
        for seconds in (3.5, 5.2, 4.0)
    ]
    record = run_scale_up(
        scale_up,
        new_record(scale_up),
        lambda _line: None,
        lambda _record: None,
        measure=measured(runs),
    )
    assert record["ok"] is True and record["nodes"] == 100
    assert record["seconds_from_exec"]["share_caught_up"] == {"min": 3.5, "median": 4.0, "max": 5.2}
    assert goal_of(record) == {
        "goal": goal_of(record)["goal"],
        "status": "not met",
        "figures": "caught up 5.2 s from exec (max of 3 runs), 10,000 pods",
    }
    assert "**not met**" in "\n".join(scale_up_markdown(record, pending=False))


def test_a_failed_scale_up_keeps_its_reason_its_ended_runs_and_the_contenders_results(
    tmp_path: Path,
) -> None:
    run = settings(tmp_path, KCM, "kubus-2")
    scale_up = ScaleUp(pods=2000, runs=3, log_dir=tmp_path / "logs" / "scale-up")
    written = reports(tmp_path, run, scale_up)
    records = run_all(run, lambda _line: None, written.write, run_contender=filled(30.0, [0.1]))
    lines: list[str] = []
    record = run_scale_up(
        scale_up,
        new_record(scale_up),
        lines.append,
        lambda ended: written.write(records, scale_up=ended),
        measure=measured(
            [joined(first_line=1.0, acquired=2.0, replayed=3.0, caught_up=3.5)],
            then=RuntimeError("joiner-1 did not catch up\n(log: /tmp/joiner-1.log)"),
        ),
    )

    assert record["ok"] is False
    assert record["error"] == "RuntimeError: joiner-1 did not catch up (log: /tmp/joiner-1.log)"
    results = strict_json(tmp_path / "out" / "results.json")
    assert [c["ok"] for c in results["contenders"]] == [True, True]
    assert results["contenders"][1]["phases"]["create"]["seconds"] == 30
    assert results["pending"] == []
    scaled = results["scale_up"]
    assert scaled["ok"] is False and scaled["error"] == record["error"]
    # The run that ended before the failure is kept, and reported as such.
    assert len(scaled["per_run"]) == 1
    assert scaled["seconds_from_exec"]["share_caught_up"] == {"min": 3.5, "median": 3.5, "max": 3.5}
    assert results["goals"][-1]["status"] == "not measured"
    assert results["goals"][-1]["figures"] == f"scale-up: {record['error']}"
    markdown = (tmp_path / "out" / "results.md").read_text()
    assert f"**Failed**: {record['error']}" in markdown
    assert "Figures of the 1 run(s) that ended:" in markdown
    assert f"| {KCM} | create | 30.0 |" in markdown
    assert (tmp_path / "out" / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "joiner-1 did not catch up" in (scale_up.log_dir / "harness-error.log").read_text()
    assert any(line.startswith("scale-up: failed: RuntimeError") for line in lines)


def test_an_interrupted_scale_up_is_written_as_such_and_the_interrupt_goes_on(
    tmp_path: Path,
) -> None:
    run = settings(tmp_path, "kubus-2")
    scale_up = ScaleUp(pods=200, runs=1, log_dir=tmp_path / "logs" / "scale-up")
    written = reports(tmp_path, run, scale_up)
    records = run_all(run, lambda _line: None, written.write, run_contender=filled(30.0, [0.1]))
    with pytest.raises(KeyboardInterrupt):
        run_scale_up(
            scale_up,
            new_record(scale_up),
            lambda _line: None,
            lambda ended: written.write(records, scale_up=ended),
            measure=measured([], then=KeyboardInterrupt("SIGTERM")),
        )
    results = strict_json(tmp_path / "out" / "results.json")
    assert results["scale_up"]["error"] == "interrupted (SIGTERM)"
    assert results["scale_up"]["nodes"] == 3 and results["scale_up"]["namespaces"] == 100
    assert results["pending"] == [] and results["contenders"][0]["ok"] is True


@pytest.fixture
def bench_without_stack(monkeypatch: pytest.MonkeyPatch) -> list[Plan]:
    """``kubus bench`` through its CLI with stand-ins for what needs a stack: every contender
    converges in 30 s, the scale-up fails after one run; the plans it was given are kept."""
    import bench.compare.harness
    import bench.scale_up

    plans: list[Plan] = []
    failing = measured(
        [joined(first_line=1.0, acquired=2.0, replayed=3.0, caught_up=3.5)],
        then=RuntimeError("joiner-1 exited"),
    )

    def measure(plan: Plan, **kwargs: Any) -> dict[str, Any]:
        plans.append(plan)
        return failing(plan, **kwargs)

    monkeypatch.setattr(bench.compare.harness, "_run_contender", filled(30.0, [0.1]))
    monkeypatch.setattr(bench.scale_up, "measure", measure)
    # Its SIGTERM/SIGINT handlers would outlive the test in this process.
    monkeypatch.setattr("signal.signal", lambda *_args: None)
    return plans


def test_a_failed_scale_up_makes_kubus_bench_exit_1_with_the_contenders_results_kept(
    bench_without_stack: list[Plan], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(
            [
                "bench",
                "--contenders=kubus-2",
                "--deployments=4",
                "--replicas=5",
                f"--out={tmp_path}",
                "--scale-up-pods=2000",
                "--scale-up-runs=2",
            ]
        )
    assert exit_.value.code == 1
    assert bench_without_stack == [Plan(pods=2000, nodes=20, namespaces=100, runs=2)]
    error = capsys.readouterr().err.splitlines()[-1]
    assert error == "kubus bench: error: the scale-up failed: RuntimeError: joiner-1 exited"
    results = strict_json(tmp_path / "results.json")
    assert results["contenders"][0]["ok"] is True and results["pending"] == []
    assert results["scale_up"]["error"] == "RuntimeError: joiner-1 exited"
    assert results["scale_up"]["runs"] == 2 and len(results["scale_up"]["per_run"]) == 1
    assert (tmp_path / "logs" / "scale-up" / "harness-error.log").exists()


def test_kubus_bench_without_the_scale_up_says_so_and_exits_0(
    bench_without_stack: list[Plan], tmp_path: Path
) -> None:
    assert (
        main(
            [
                "bench",
                "--contenders=kubus-2",
                "--deployments=4",
                "--replicas=5",
                f"--out={tmp_path}",
                "--scale-up-pods=0",
            ]
        )
        == 0
    )
    assert bench_without_stack == []
    results = strict_json(tmp_path / "results.json")
    assert results["scale_up"] is None and results["pending"] == []
    assert results["goals"][-1] == goal_of(None)
    assert results["goals"][-1]["status"] == "not measured"
    assert results["goals"][-1]["figures"] == "off (--scale-up-pods 0)"
    markdown = (tmp_path / "results.md").read_text()
    section = markdown.split("## Scale-up: a third reconciler joins a pool of 2\n\n", 1)[1]
    assert section.startswith("Not measured in this run (--scale-up-pods 0).\n")
    assert "| seconds from the third reconciler's exec |" not in markdown
    assert (tmp_path / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_scale_up_flags_default_to_one_join_with_10000_pods() -> None:
    args = build_parser().parse_args(["bench"])
    assert (args.scale_up_pods, args.scale_up_runs) == (10_000, 1)
    args = build_parser().parse_args(["bench", "--scale-up-pods=0", "--scale-up-runs=3"])
    assert (args.scale_up_pods, args.scale_up_runs) == (0, 3)


@pytest.mark.parametrize(
    ("flag", "says"),
    [
        ("--scale-up-pods=-1", "must be 0 or more, not -1"),
        ("--scale-up-pods=many", "expected a whole number, got 'many'"),
        ("--scale-up-pods=1.5", "expected a whole number, got '1.5'"),
        ("--scale-up-runs=0", "must be at least 1, not 0"),
        ("--scale-up-runs=-3", "must be at least 1, not -3"),
        ("--scale-up-runs=", "expected a whole number, got ''"),
    ],
)
def test_a_bad_scale_up_flag_is_one_line_and_exit_2_before_anything_runs(
    flag: str, says: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["bench", flag, f"--out={tmp_path}"])
    assert exit_.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    name = flag.partition("=")[0]
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"kubus bench: error: argument {name}: {says} "), lines
    assert list(tmp_path.iterdir()) == []


def test_a_run_of_the_spread_shape_alone_reports_that_shape_and_judges_no_other(
    tmp_path: Path,
) -> None:
    run = dataclasses.replace(settings(tmp_path, KCM, "kubus-1"), shape_names=("spread",))
    assert [shape.name for shape in run.shapes] == ["spread"]
    fill_both = filled(10.0, [0.1])

    def spread_only(
        contender: Contender,
        settings: Settings,
        record: dict[str, Any],
        progress: Callable[[str], None],
    ) -> None:
        fill_both(contender, settings, record, progress)
        record["phases_one_namespace"].clear()  # what the harness leaves: the shape not run

    run_all(run, lambda _line: None, reports(tmp_path, run).write, run_contender=spread_only)

    out = tmp_path / "out"
    results = strict_json(out / "results.json")
    assert [c["ok"] for c in results["contenders"]] == [True, True]
    markdown = (out / "results.md").read_text()
    assert "## spread" in markdown and "## one-namespace" not in markdown
    statuses = {goal["goal"]: goal["status"] for goal in results["goals"]}
    assert statuses["kubus-2 time to convergence <= kcm's (spread, create+update+delete)"] == (
        "not measured"  # no kubus-2 in this run
    )
    assert {status for goal, status in statuses.items() if "one-namespace" in goal} == {
        "not measured"
    }
    assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    ("flag", "says"),
    [
        ("--shapes=spread,diagonal", "unknown shape 'diagonal': the shapes are spread and"),
        ("--shapes=,", "name at least one shape: spread, one-namespace"),
        ("--shapes=spread,spread", "a shape is named twice in 'spread,spread'"),
    ],
)
def test_a_bad_shapes_flag_is_one_line_and_exit_2_before_anything_runs(
    flag: str, says: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["bench", flag, f"--out={tmp_path}"])
    assert exit_.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"kubus bench: error: argument --shapes: {says}"), lines
    assert list(tmp_path.iterdir()) == []

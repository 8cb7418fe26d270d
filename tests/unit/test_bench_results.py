"""`kubus bench` never loses a run: every figure it writes is strict JSON, a latency past the
histogram's top bucket says so, and each contender's results are on disk once it ends.

The harness's loop, its phase records and the report writers are the real ones; only the part
that needs a dev stack (starting a contender and timing its phases) is replaced, by a function
that fills a contender's record with phase records made from given measurements.
"""

from __future__ import annotations

import ast
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
from bench.compare.report import Reports
from bench.compare.workload import Workload
from bench.support import BucketBound, atomic_file, bucket_quantile, write_atomically
from kubus.cli import main

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


def reports(tmp_path: Path, run: Settings) -> Reports:
    return Reports(
        tmp_path / "out",
        {
            "benchmark": "kubus bench",
            "command": "kubus bench",
            "machine": "test",
            "started_at": "2026-12-02T00:00:00+00:00",
            "settings": {"deployments": 4, "replicas": 5, "pods": 20, "spread_namespaces": 4}
            | {"kube_api_qps": 20.0, "kube_api_burst": 30, "deadline_seconds": run.deadline},
        },
        [contender.name for contender in run.contenders],
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

"""``kubus bench``: the flags, their checks, and the run (whose imports wait until it runs)."""

from __future__ import annotations

import argparse
import datetime
import math
import shlex
import signal
import sys
from pathlib import Path
from typing import Any

from kubus.cliutil import ArgumentParser, fail

__all__ = ["DEFAULT_CONTENDERS", "add_bench_command", "run"]

DEFAULT_CONTENDERS = "kube-controller-manager,kubus-1,kubus-2,kubus-4,ceiling"


def add_bench_command(subparsers: argparse._SubParsersAction[ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="kubus side by side with kube-controller-manager and a no-controller ceiling",
        description="For each contender: a fresh infrastructure-only dev stack, N Deployments "
        "x R replicas created, rolled to a new image and deleted, in two shapes (spread over "
        "namespaces, and all in one). Then the scale-up: a third reconciler joining a pool of 2 "
        "with --scale-up-pods pods on the bus, timed from its exec until its share is caught up. "
        "results.json, results.md and results.png in --out.",
    )
    parser.add_argument("--deployments", type=_positive_int, default=20, help="N (default 20)")
    parser.add_argument("--replicas", type=_positive_int, default=5, help="R (default 5)")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("bench-results"),
        help="output dir (default ./bench-results)",
    )
    parser.add_argument(
        "--contenders",
        type=_contenders,
        default=_contenders(DEFAULT_CONTENDERS),
        help=f"comma-separated (default {DEFAULT_CONTENDERS}); kubus-P for any P, "
        "kubus-PsK for P processes with --partition-shards K",
    )
    parser.add_argument(
        "--namespaces",
        type=_positive_int,
        default=None,
        help="namespaces of the spread shape (default: one per Deployment, at most 32)",
    )
    parser.add_argument(
        "--shapes",
        type=_shapes,
        default=_shapes("spread,one-namespace"),
        help="comma-separated shapes to run, of spread and one-namespace (default both)",
    )
    parser.add_argument(
        "--kube-api-qps",
        type=_positive_float,
        default=20.0,
        help="client QPS of every controller process, kcm's and kubus's alike (default 20)",
    )
    parser.add_argument(
        "--kube-api-burst", type=_positive_int, default=30, help="client burst (default 30)"
    )
    parser.add_argument(
        "--deadline",
        type=_positive_float,
        default=None,
        help="seconds each contender's six phases may take in all; a contender that misses "
        "it is reported failed with what was stuck (default 120 + 1.5 per pod)",
    )
    parser.add_argument(
        "--scale-up-pods",
        type=_non_negative_int,
        default=10_000,
        help="pods on the bus when a third reconciler joins a pool of 2, after the "
        "contenders (default 10000; 0: no scale-up measurement)",
    )
    parser.add_argument(
        "--scale-up-runs",
        type=_positive_int,
        default=1,
        help="times the third reconciler joins, for min/median/max (default 1)",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    # Heavy imports (the dev stack, the apiserver client, matplotlib) only once it runs.
    from bench.compare.contenders import Limits, contender_named
    from bench.compare.harness import Settings, run_all
    from bench.compare.report import Reports
    from bench.compare.scaleup import ScaleUp, new_record, run_scale_up
    from bench.compare.workload import Workload
    from bench.support import machine

    # SIGTERM, and SIGINT even where a background start ignores it, unwind through every
    # `finally`, so the stacks and contenders' processes are stopped and nothing is left.
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    workload = Workload(args.deployments, args.replicas)
    settings = Settings(
        workload=workload,
        spread_namespaces=args.namespaces or min(args.deployments, 32),
        limits=Limits(args.kube_api_qps, args.kube_api_burst),
        deadline=args.deadline or 120 + 1.5 * workload.pods,
        contenders=tuple(contender_named(name) for name in args.contenders),
        log_dir=args.out / "logs",
        shape_names=args.shapes,
    )
    scale_up = (
        ScaleUp(args.scale_up_pods, args.scale_up_runs, log_dir=args.out / "logs" / "scale-up")
        if args.scale_up_pods
        else None
    )
    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        fail("kubus bench", f"cannot use --out {args.out}: {error.strerror or error}")
    reports = Reports(
        args.out,
        {
            "benchmark": "kubus bench",
            "command": shlex.join(["kubus", "bench", *sys.argv[2:]])
            if sys.argv[1:2] == ["bench"]
            else "kubus bench",
            "machine": machine(),
            "started_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "settings": {
                "deployments": workload.deployments,
                "replicas": workload.replicas,
                "pods": workload.pods,
                "spread_namespaces": settings.spread_namespaces,
                "shapes": list(args.shapes),
                "kwok_nodes": workload.nodes(),
                "kube_api_qps": args.kube_api_qps,
                "kube_api_burst": args.kube_api_burst,
                "deadline_seconds": settings.deadline,
            },
        },
        [contender.name for contender in settings.contenders],
        scale_up=new_record(scale_up) if scale_up is not None else None,
    )
    written = f"{args.out / 'results.json'}, results.md and results.png"

    def ended(records: list[dict[str, Any]]) -> None:
        reports.write(records)
        _progress(f"{records[-1]['name']}: ended; the results so far are in {written}")

    # Written before the first contender too: a figure that cannot be written, or an --out
    # that cannot take the files, fails now rather than after the first contender's run.
    reports.write([])
    records = run_all(settings, _progress, ended)
    scaled: dict[str, Any] | None = None
    if scale_up is not None:

        def scale_up_ended(record: dict[str, Any]) -> None:
            reports.write(records, scale_up=record)
            _progress(f"scale-up: ended; the results are in {written}")

        scaled = run_scale_up(scale_up, new_record(scale_up), _progress, scale_up_ended)
    _progress(f"wrote {written}")
    failures = []
    failed = [record for record in records if not record["ok"]]
    if failed:
        failures.append(
            f"{len(failed)} of {len(records)} contenders failed: "
            + "; ".join(
                f"{record['name']} ({record['error'] or 'not every phase ran'})"
                for record in failed
            )
        )
    if scaled is not None and not scaled["ok"]:
        failures.append(f"the scale-up failed: {scaled['error'] or 'not every run ended'}")
    if failures:
        fail("kubus bench", "; ".join(failures))
    return 0


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def _progress(line: str) -> None:
    stamp = datetime.datetime.now().strftime("%H:%M:%S")
    print(f"[{stamp}] {line}", file=sys.stderr, flush=True)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        # inf would pass "more than 0" and then be a figure results.json cannot hold.
        raise argparse.ArgumentTypeError(f"must be a finite number, not {text}")
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, not {text}")
    return value


def _contenders(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise argparse.ArgumentTypeError("name at least one contender")
    from bench.compare.contenders import contender_named

    for name in names:
        try:
            contender_named(name)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None
    if len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"a contender is named twice in {text!r}")
    return names


def _shapes(text: str) -> tuple[str, ...]:
    known = ("spread", "one-namespace")
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in known]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown shape {unknown[0]!r}: the shapes are spread and one-namespace"
        )
    if not names:
        raise argparse.ArgumentTypeError("name at least one shape: spread, one-namespace")
    if len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"a shape is named twice in {text!r}")
    return tuple(names)

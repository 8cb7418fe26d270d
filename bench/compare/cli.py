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
WORKLOADS = ("deployments", "jobs", "statefulsets")
# N and R of each --workload when not given: (flag of N, its default), (flag of R, default).
SHAPE_FLAGS = {
    "deployments": (("deployments", 20), ("replicas", 5)),
    "jobs": (("jobs", 100), ("completions", 10)),
    "statefulsets": (("statefulsets", 20), ("replicas", 5)),
}


def add_bench_command(subparsers: argparse._SubParsersAction[ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="kubus side by side with kube-controller-manager and a no-controller ceiling",
        description="For each contender: a fresh infrastructure-only dev stack, N Deployments "
        "x R replicas created, rolled to a new image and deleted, in two shapes (spread over "
        "namespaces, and all in one); or, with --workload, N Jobs x C completions run to "
        "Complete and deleted, or N StatefulSets x R replicas created, rolled and deleted. "
        "Then the scale-up: a third reconciler joining a pool of 2 with --scale-up-pods pods "
        "on the bus, timed from its exec until its share is caught up. "
        "results.json, results.md and results.png in --out.",
    )
    parser.add_argument(
        "--workload",
        type=_workload,
        default="deployments",
        help="what the contenders reconcile: deployments (create, update: a new image, "
        "delete), jobs (create: until every Job is Complete, delete) or statefulsets (create, "
        "update: a new image, delete); default deployments. The ceiling runs deployments only "
        "(the default --contenders leave it out of the others)",
    )
    parser.add_argument(
        "--deployments",
        type=_positive_int,
        default=None,
        help="N, --workload deployments (default 20)",
    )
    parser.add_argument(
        "--replicas",
        type=_positive_int,
        default=None,
        help="R, pods per Deployment or StatefulSet (default 5)",
    )
    parser.add_argument(
        "--jobs", type=_positive_int, default=None, help="N, --workload jobs (default 100)"
    )
    parser.add_argument(
        "--completions",
        type=_positive_int,
        default=None,
        help="C, each Job's completions, all run at once (parallelism C) (default 10)",
    )
    parser.add_argument(
        "--statefulsets",
        type=_positive_int,
        default=None,
        help="N, --workload statefulsets (default 20)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("bench-results"),
        help="output dir (default ./bench-results)",
    )
    parser.add_argument(
        "--contenders",
        type=_contenders,
        default=None,
        help=f"comma-separated (default {DEFAULT_CONTENDERS}, without ceiling for "
        "--workload jobs or statefulsets); kubus-P for any P, "
        "kubus-PsK for P processes with --partition-shards K",
    )
    parser.add_argument(
        "--namespaces",
        type=_positive_int,
        default=None,
        help="namespaces of the spread shape (default: one per Deployment, Job or "
        "StatefulSet, at most 32)",
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
        help="seconds each contender's phases (six for deployments) may take in all; a "
        "contender that misses "
        "it is reported failed with what was stuck (default 120 + 1.5 per pod)",
    )
    parser.add_argument(
        "--scale-up-pods",
        type=_non_negative_int,
        default=10_000,
        help="pods on the bus when a third reconciler joins a pool of 2, after the "
        "contenders, whatever the --workload (default 10000; 0: no scale-up measurement)",
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
    count, per = shape_of(args)
    contenders = contenders_of(args)
    workload = Workload(count, per, args.workload)
    settings = Settings(
        workload=workload,
        spread_namespaces=args.namespaces or min(count, 32),
        limits=Limits(args.kube_api_qps, args.kube_api_burst),
        deadline=args.deadline or 120 + 1.5 * workload.pods,
        contenders=tuple(contender_named(name) for name in contenders),
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
                **workload.settings(),
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


def shape_of(args: argparse.Namespace) -> tuple[int, int]:
    """N and R of ``args.workload``, from its flags or their defaults; a flag of another
    workload is refused (exit 2, one line naming it)."""
    (count_flag, count), (per_flag, per) = SHAPE_FLAGS[args.workload]
    for other in ("deployments", "jobs", "statefulsets", "replicas", "completions"):
        if other not in (count_flag, per_flag) and getattr(args, other) is not None:
            fail(
                "kubus bench",
                f"argument --{other}: not a flag of --workload {args.workload} (its N and R "
                f"are --{count_flag} and --{per_flag})",
                code=2,
            )
    given_count, given_per = getattr(args, count_flag), getattr(args, per_flag)
    return (
        count if given_count is None else given_count,
        per if given_per is None else given_per,
    )


def contenders_of(args: argparse.Namespace) -> list[str]:
    """--contenders, or the default: every contender, the ceiling only for deployments (it
    writes plain pods; the other workloads have no ceiling to compare with)."""
    if args.contenders is None:
        names = _contenders(DEFAULT_CONTENDERS)
        return names if args.workload == "deployments" else [n for n in names if n != "ceiling"]
    if args.workload != "deployments" and "ceiling" in args.contenders:
        fail(
            "kubus bench",
            f"argument --contenders: the ceiling runs --workload deployments only, not "
            f"{args.workload}",
            code=2,
        )
    given: list[str] = args.contenders
    return given


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


def _workload(text: str) -> str:
    if text not in WORKLOADS:
        raise argparse.ArgumentTypeError(
            f"unknown workload {text!r}: the workloads are deployments, jobs and statefulsets"
        )
    return text


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

"""results.json, results.md and results.png from the contenders' records.

:class:`Reports` rewrites all three as each contender ends, each atomically (a temporary
file renamed over the old one), so a run that fails or is stopped later keeps the figures of
every contender that ended; ``pending`` in results.json (and a line in results.md) names the
contenders that had not ended when it was written (and ``scale-up``, the measurement that runs
after them): empty once the run is complete. ``scale_up`` is that measurement's record
(bench/compare/scaleup.py), ``null`` when the run was told not to make it.

results.json is strict JSON: never NaN or Infinity (written with ``allow_nan=False``). The
event->reconcile latencies ``latency_p50_s``/``latency_p99_s`` are seconds: for kubus the
upper bound of the histogram bucket that holds the quantile (it is at most that); for kcm a
percentile of object timestamps. A kubus quantile past the histogram's top bucket is the
object ``{"above": 30.0}`` instead of a number: more than 30 s, by how much the histogram
cannot tell (``> 30 s`` in results.md). ``null``: not measured.
"""

from __future__ import annotations

import itertools
import json
import math
import time
from pathlib import Path
from typing import Any

from bench.compare import scaleup
from bench.compare.contenders import KCM, contender_named
from bench.compare.workload import NOUNS
from bench.scale_up import LAG_SLACK
from bench.support import BucketBound, atomic_file, write_atomically

__all__ = ["NOTES", "WORKLOAD_NOTES", "Reports", "described", "goals", "markdown", "write_reports"]

SHAPES = (("phases", "spread"), ("phases_one_namespace", "one-namespace"))
PHASES = ("create", "update", "delete")

NOTES = (
    "Each contender runs on a fresh stack of its own (etcd, kube-apiserver, kube-scheduler, "
    "kwok, NATS) on the same machine; ratios (x kcm) compare figures of the same run.",
    "Time: from the first write of a phase to the first poll that finds it converged "
    "(create/update: every Deployment rolled out as `kubectl rollout status` judges it; "
    "delete: no Deployment, ReplicaSet or pod of the shape left); polls every 0.05 s at "
    "first, easing off to every 0.2 s (1 s above 2,000 pods).",
    "CPU: utime+stime of the contender's processes over the phase (from /proc). Both sides run "
    "the deployment and replicaset controllers, and their own garbage collector in a process "
    "apart (kcm-garbagecollector: kube-controller-manager --controllers=garbagecollector; "
    "kubus-garbagecollector: a reconciler pool of its own, --pool gc, fed by the contender's "
    "watcher with --resources all), counted in the totals and shown per process. The harness "
    "gives each namespace its default ServiceAccount itself. NATS's CPU is reported apart "
    "(nats_cpu_seconds), not in the totals.",
    "Ceiling: the harness writes the pods itself from a thread with its own event loop; its CPU "
    "is that thread's CPU time, its peak RSS the whole bench driver's.",
    "Event->reconcile latency: kubus from kubus_reconciler_event_latency_seconds (JetStream "
    "stored -> reconcile start, bucket upper bounds); kube-controller-manager from object "
    "timestamps (Deployment created -> ReplicaSet created -> first pod created; template "
    "patched -> new ReplicaSet created), whole seconds because creationTimestamp has no "
    "finer resolution; timestamp_latency_* gives the same timestamp figure for kubus too. "
    "Not measured for deletes (the garbage collector acts there).",
    "Scale-up: bench/scale_up.py's measurement, after the contenders, on a fresh stack of its "
    f"own: --scale-up-pods plain pods over up to {scaleup.NAMESPACES} namespaces, a kwok node "
    f"per {scaleup.PODS_PER_NODE} pods, a watcher and a pool of 2 reconcilers running every "
    "default controller; then a third reconciler starts, timed from its exec. First log line, "
    "share acquired and share replayed from its JSON log lines' timestamps; caught up (ready "
    "and reconciling its share) when a poll of its /metrics (every 0.05 s) finds every "
    f"partition of its rendezvous share bound, lag at most {LAG_SLACK}; replay objects/s: the "
    "objects of its share over the span from its first partition acquired to its last "
    "replayed.",
)


# What --workload jobs and statefulsets time, beside NOTES (which tell the Deployment one's).
WORKLOAD_NOTES = {
    "jobs": (
        "Workload jobs: N Jobs x C completions (parallelism C, restartPolicy Never); kwok runs "
        "each pod to Succeeded at once. create: from the first Job written until every Job is "
        "Complete with succeeded == completions; delete (background propagation): until no "
        "Job or pod of the shape is left. No update phase. kcm runs job-controller, kubus "
        "its job controller, each beside its garbage collector as above. Latency from "
        "timestamps: Job created -> its first pod created.",
    ),
    "statefulsets": (
        "Workload statefulsets: N StatefulSets x R replicas with the defaults (OrderedReady, "
        "RollingUpdate: one pod at a time). create: until every set has R Ready replicas; "
        "update (a new image): until observedGeneration is current, updatedReplicas == "
        "replicas and updateRevision == currentRevision for every set; delete: until no "
        "StatefulSet, ControllerRevision or pod of the shape is left. kcm runs "
        "statefulset-controller, kubus its statefulset controller, each beside its garbage "
        "collector as above. Latency from timestamps: set created -> its first pod created; "
        "template patched -> its newest ControllerRevision created.",
    ),
}


def described(settings: dict[str, Any]) -> str:
    """``20 Deployments x 5 replicas`` (``100 Jobs x 10 completions``, ...) of a run's
    settings; a run without ``workload`` in them is the Deployment one."""
    noun, per = NOUNS[settings.get("workload", "deployments")]
    return f"{settings[noun.lower()]} {noun} x {settings[per]} {per}"


class Reports:
    """One run's results in ``out``, rewritten whole as each contender ends, and the
    scale-up."""

    def __init__(
        self,
        out: Path,
        header: dict[str, Any],
        contenders: list[str],
        *,
        scale_up: dict[str, Any] | None = None,
    ) -> None:
        # header: what the run is (command, machine, settings, ...), the same in every write.
        self._out = out
        self._header = header
        self._contenders = contenders
        # The scale-up's record, pending until it ended; None: this run does not measure it.
        self._scale_up = scale_up
        self._scale_up_ended = False
        self._started = time.monotonic()

    def write(
        self, records: list[dict[str, Any]], *, scale_up: dict[str, Any] | None = None
    ) -> None:
        """results.json, results.md and results.png for ``records``, the contenders so far,
        and ``scale_up``, the scale-up's record once it ended."""
        if scale_up is not None:
            self._scale_up, self._scale_up_ended = scale_up, True
        ended = {record["name"] for record in records}
        pending = [name for name in self._contenders if name not in ended]
        if self._scale_up is not None and not self._scale_up_ended:
            pending.append("scale-up")
        write_reports(
            self._out,
            {
                **self._header,
                "wall_seconds": round(time.monotonic() - self._started, 1),
                "contenders": records,
                "scale_up": self._scale_up,
                "pending": pending,
            },
        )


def write_reports(out: Path, results: dict[str, Any]) -> None:
    """The three files, each atomically; a non-finite figure raises before any is written."""
    out.mkdir(parents=True, exist_ok=True)
    results.setdefault("scale_up", None)
    results["goals"] = goals(results["contenders"], results["scale_up"])
    workload = results.get("settings", {}).get("workload", "deployments")
    results["notes"] = [*NOTES, *WORKLOAD_NOTES.get(workload, ())]
    text = json.dumps(results, indent=2, allow_nan=False) + "\n"  # raises on NaN, inf
    write_atomically(out / "results.json", text)
    write_atomically(out / "results.md", markdown(results))
    chart(out / "results.png", results)


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def _cell(text: str, limit: int = 160) -> str:
    """``text`` fit for one Markdown table cell or list item: one line, no bare pipes."""
    flat = " ".join(text.split())
    if len(flat) > limit:
        flat = flat[: limit - 3] + "..."
    return flat.replace("|", "\\|")


def _latency(phase: dict[str, Any]) -> str:
    p50, p99 = phase.get("latency_p50_s"), phase.get("latency_p99_s")
    if p50 is None or p99 is None:
        return "-"
    bounds = (phase.get("latency_source") or "").startswith("kubus")
    return f"{_quantile(p50, bounds)} / {_quantile(p99, bounds)} s"


def _quantile(value: Any, bounds: bool) -> str:
    """``<= 2.5`` or ``> 30`` for a histogram's bucket bound, the figure itself otherwise."""
    if bounds or isinstance(value, dict):
        return str(BucketBound.from_json(value))
    return f"{value:g}"


def markdown(results: dict[str, Any]) -> str:
    settings = results["settings"]
    lines = [
        f"# kubus vs kube-controller-manager: {described(settings)} ({settings['pods']} pods)",
        "",
        f"Machine: {results['machine']}. Command: `{results['command']}`. Client limits for "
        f"every controller process: --kube-api-qps={settings['kube_api_qps']:g} "
        f"--kube-api-burst={settings['kube_api_burst']}.",
        "",
    ]
    if results.get("pending"):
        lines += [
            "**Partial results**: not ended when this was written: "
            f"{', '.join(results['pending'])} (the run was going on, or was stopped first).",
            "",
        ]
    for key, shape in _shapes_run(settings):
        where = (
            f"spread over {settings['spread_namespaces']} namespaces"
            if shape == "spread"
            else "all in one namespace"
        )
        lines += [
            f"## {shape} ({where})",
            "",
            "| contender | phase | seconds | pods/s | x kcm time | CPU s / 1000 pods "
            "| x kcm CPU | peak RSS MiB (largest process) | event->reconcile p50 / p99 "
            "| bus lag max |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for contender in results["contenders"]:
            phases = contender[key]
            if not phases:
                lines.append(
                    f"| {contender['name']} | - | failed: {_cell(contender['error'] or 'not run')} "
                    "| | | | | | | |"
                )
            for phase_name in PHASES:
                phase = phases.get(phase_name)
                if phase is None:
                    continue
                seconds = (
                    _fmt(phase["seconds"])
                    if phase["ok"]
                    else f"FAILED ({_fmt(phase['seconds'])} s)"
                )
                lines.append(
                    f"| {contender['name']} | {phase_name} | {seconds} "
                    f"| {_fmt(phase['pods_per_s'])} | {_fmt(phase.get('seconds_vs_kcm'), 2)} "
                    f"| {_fmt(phase['cpu_seconds_per_1000_pods'], 2)} "
                    f"| {_fmt(phase.get('cpu_vs_kcm'), 2)} | {_fmt(phase['peak_rss_mb'])} "
                    f"| {_latency(phase)} | {_fmt(phase.get('bus_lag_max'), 0)} |"
                )
        lines.append("")
    failed = [c for c in results["contenders"] if not c["ok"]]
    if failed:
        lines += ["## Failed contenders", ""]
        for contender in failed:
            lines.append(
                f"- {contender['name']}: {_cell(contender['error'] or 'missed its deadline', 600)}"
            )
            lines.extend(f"  - stuck: {_cell(line)}" for line in contender["stuck"])
        lines.append("")
    lines += scale_up_markdown(results["scale_up"], "scale-up" in results.get("pending", ()))
    lines += ["## Goals", ""]
    lines += [f"- **{g['status']}** {g['goal']}: {g['figures']}" for g in results["goals"]]
    lines += ["", "## How it was measured", ""]
    lines += [f"- {note}" for note in results.get("notes", NOTES)]
    return "\n".join(lines) + "\n"


def scale_up_markdown(record: dict[str, Any] | None, pending: bool) -> list[str]:
    """The scale-up's section: its settings, its milestones' min/median/max, its goal line."""
    lines = ["## Scale-up: a third reconciler joins a pool of 2", ""]
    if record is None:
        return [*lines, "Not measured in this run (--scale-up-pods 0).", ""]
    runs = record["runs"]
    lines += [
        f"{record['pods']:,} pods on the bus (over {record['namespaces']} namespaces, "
        f"{record['nodes']} kwok nodes), Running and Ready, cached by a settled pool of 2 "
        f"reconcilers (every default controller); then a third one joins it ({runs} run"
        f"{'s' if runs != 1 else ''}), timed from its exec (bench/scale_up.py).",
        "",
    ]
    if pending:
        return [*lines, "Not ended when this was written.", ""]
    if not record["ok"]:
        lines += [f"**Failed**: {_cell(record['error'] or 'not every run ended', 600)}", ""]
    if not record["per_run"]:
        return lines
    if len(record["per_run"]) != runs:
        lines += [f"Figures of the {len(record['per_run'])} run(s) that ended:", ""]
    lines += [
        "| seconds from the third reconciler's exec | min | median | max |",
        "|---|---:|---:|---:|",
    ]
    rows = [
        (label, record["seconds_from_exec"][key], 2) for key, _summary, label in scaleup.FIGURES
    ]
    rows.append(("replay: objects/s over its share", record["replay_objects_per_s"], 0))
    for label, figure, digits in rows:
        cells = (
            [_fmt(float(figure[which]), digits) for which in ("min", "median", "max")]
            if figure
            else ["-"] * 3
        )
        lines.append(f"| {label} | {' | '.join(cells)} |")
    judged = scaleup.goal(record)
    lines += [
        "",
        f"Goal: ready and reconciling its share within {scaleup.GOAL_SECONDS:g} s: "
        f"**{judged['status']}**; {judged['figures']}.",
        "",
    ]
    return lines


def _total(contender: dict[str, Any] | None, key: str, field: str) -> float | None:
    if contender is None or not contender["ok"] or not contender[key]:
        return None  # failed, or a shape this run did not take (--shapes)
    # An ok contender ran every phase of its workload (a Job's have no update).
    return float(sum(phase[field] for phase in contender[key].values()))


def _shapes_run(settings: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    """The (record key, shape) pairs this run took, in SHAPES' order."""
    taken = settings.get("shapes") or [shape for _key, shape in SHAPES]
    return tuple((key, shape) for key, shape in SHAPES if shape in taken)


def goals(
    contenders: list[dict[str, Any]], scale_up: dict[str, Any] | None = None
) -> list[dict[str, str]]:
    """The issue's goals, judged on this run's figures (met / not met / not measured);
    ``scale_up``: the scale-up's record (None: not measured)."""
    by_name = {c["name"]: c for c in contenders}
    kcm = by_name.get(KCM)
    # Pools of plain partitions, by size (kubus-PsK contenders are judged apart: their
    # processes share partitions, so their caches are not meant to fall as 1/P).
    kubus = sorted(
        (c for c in contenders if _processes(c["name"])[1] == 1),
        key=lambda c: _processes(c["name"])[0],
    )
    found: list[dict[str, str]] = []

    def judge(goal: str, met: bool | None, figures: str) -> None:
        status = "not measured" if met is None else ("met" if met else "not met")
        found.append({"goal": goal, "status": status, "figures": figures})

    for key, shape in SHAPES:
        base, two = _total(kcm, key, "seconds"), _total(by_name.get("kubus-2"), key, "seconds")
        judge(
            f"kubus-2 time to convergence <= kcm's ({shape}, create+update+delete)",
            None if base is None or two is None else two <= base,
            f"kubus-2 {_fmt(two)} s, kcm {_fmt(base)} s",
        )
    base_cpu = _total(kcm, "phases", "cpu_seconds")
    parts = []
    met_cpu: bool | None = None if base_cpu is None else True
    for contender in kubus:
        cpu = _total(contender, "phases", "cpu_seconds")
        if cpu is None or base_cpu is None or not base_cpu:
            continue  # a failed contender is judged by no figure
        parts.append(f"{contender['name']} {cpu / base_cpu:.2f}x")
        met_cpu = bool(met_cpu) and cpu <= 3 * base_cpu
    if not parts:
        met_cpu = None
    judge(
        "kubus CPU seconds per 1,000 pods within 3x kcm's "
        "(spread, all phases, garbage collector included)",
        met_cpu,
        ", ".join(parts) or "-",
    )
    cached = []
    for contender in kubus:
        create = contender["phases"].get("create") or {}
        per_process = create.get("cached_objects_per_process")
        if per_process:
            cached.append((_processes(contender["name"])[0], sum(per_process) / len(per_process)))
    met_cache: bool | None = None
    if len(cached) > 1:
        one = cached[0][1] * cached[0][0]
        # Within 25% of total/P, plus the cluster-scoped objects every process caches in full.
        met_cache = all(mean <= 1.25 * one / count + 50 for count, mean in cached)
    judge(
        "per-process cached objects fall as 1/processes (spread, after create)",
        met_cache,
        ", ".join(f"kubus-{count} {mean:.0f}" for count, mean in cached) or "-",
    )
    for key, shape in SHAPES:
        times = [(c["name"], _total(c, key, "seconds")) for c in kubus]
        measured = [(name, t) for name, t in times if t is not None]
        met_scale: bool | None = None
        if len(measured) > 1:
            # Within 10% or 2 s of the previous pool size (noise on a shared 2-core machine).
            met_scale = all(
                later <= max(earlier * 1.10, earlier + 2.0)
                for (_a, earlier), (_b, later) in itertools.pairwise(measured)
            )
        judge(
            f"time to convergence does not grow as processes are added ({shape})",
            met_scale,
            ", ".join(f"{name} {_fmt(t)} s" for name, t in times),
        )
    one = _total(by_name.get("kubus-1"), "phases_one_namespace", "seconds")
    spread_out = [
        (c["name"], _total(c, "phases_one_namespace", "seconds"))
        for c in contenders
        if _processes(c["name"])[0] >= 4
    ]
    ratios = [(name, t / one) for name, t in spread_out if t is not None and one]
    judge(
        "a hot namespace scales out: some kubus-P with P >= 4 takes <= 0.5x kubus-1's time "
        "(one-namespace, create+update+delete)",
        None if not ratios else min(ratio for _name, ratio in ratios) <= 0.5,
        f"kubus-1 {_fmt(one)} s; "
        + (", ".join(f"{name} {_fmt(t)} s" for name, t in spread_out) or "-")
        + "".join(f"; {name} {ratio:.2f}x" for name, ratio in ratios),
    )
    ceiling = by_name.get("ceiling")
    best = max((c["phases"]["create"]["pods_per_s"] for c in kubus if c["ok"]), default=None)
    top = ceiling["phases"]["create"]["pods_per_s"] if ceiling and ceiling["ok"] else None
    judge(
        "end-to-end pods/s >= 80% of the ceiling (spread create; the goal is for lifted QPS "
        "limits: run with e.g. --kube-api-qps 1000 --kube-api-burst 2000)",
        None if best is None or not top else best >= 0.8 * top,
        f"best kubus {_fmt(best)} pods/s, ceiling {_fmt(top)} pods/s"
        + (f" ({100 * best / top:.0f}%)" if best is not None and top else ""),
    )
    found.append(scaleup.goal(scale_up))
    return found


def _processes(name: str) -> tuple[int, int]:
    """(processes, partition shards) of a kubus contender's name, (0, 0) for the others."""
    try:
        contender = contender_named(name)
    except ValueError:
        return 0, 0
    return (contender.reconcilers, contender.shards) if contender.is_kubus else (0, 0)


def chart(path: Path, results: dict[str, Any]) -> None:
    """Time to convergence and CPU per 1,000 pods by contender, phase and shape; below them,
    when the run measures it, the scale-up's milestones."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    contenders = results["contenders"]
    names = [c["name"] for c in contenders]
    scale_up = results.get("scale_up")
    shapes = _shapes_run(results["settings"])
    rows = len(shapes) + (scale_up is not None)
    figure = plt.figure(figsize=(13, 4 + 3.75 * (rows - 1)))
    grid = figure.add_gridspec(rows, 2)
    width = 0.8 / len(PHASES)
    for row, (key, shape) in enumerate(shapes):
        for column, (field, title) in enumerate(
            (
                ("seconds", "time to convergence (s)"),
                ("cpu_seconds_per_1000_pods", "CPU s / 1,000 pods"),
            )
        ):
            ax = figure.add_subplot(grid[row, column])
            for index, phase in enumerate(PHASES):
                values = [
                    (c[key].get(phase) or {}).get(field, 0.0)
                    if (c[key].get(phase) or {}).get("ok")
                    else 0.0
                    for c in contenders
                ]
                positions = [i + (index - 1) * width for i in range(len(names))]
                ax.bar(positions, values, width, label=phase)
            ax.set_xticks(range(len(names)))
            ax.set_xticklabels(names, rotation=15, fontsize=8)
            ax.set_title(f"{title}, {shape}", fontsize=10)
            ax.grid(axis="y", alpha=0.3)
            if row == 0 and column == 0:
                ax.legend(fontsize=8)
    if scale_up is not None:
        _scale_up_panel(
            figure.add_subplot(grid[rows - 1, :]),
            scale_up,
            "scale-up" in results.get("pending", ()),
        )
    settings = results["settings"]
    figure.suptitle(
        f"{described(settings)}, "
        f"--kube-api-qps={settings['kube_api_qps']:g} (0 = failed or not run)",
        fontsize=11,
    )
    try:
        figure.tight_layout()
        with atomic_file(path) as handle:
            figure.savefig(handle, dpi=100, format="png")
    finally:
        plt.close(figure)


def _scale_up_panel(ax: Any, record: dict[str, Any], pending: bool) -> None:
    """The scale-up's milestones: median bars, min-max whiskers, the goal's 5 s line."""
    runs = len(record["per_run"])
    ax.set_title(
        f"scale-up: a third reconciler joins a pool of 2, {record['pods']:,} pods on the bus "
        f"(s from its exec; median, min-max of {runs} run{'s' if runs != 1 else ''})",
        fontsize=10,
    )
    # Short labels ("share caught up"): long ones would narrow the panels above, which the
    # layout aligns with this one.
    figures = [
        (key.replace("_", " "), record["seconds_from_exec"][key])
        for key, _summary, _label in scaleup.FIGURES
    ]
    measured = [(label, figure) for label, figure in figures if figure]
    if pending or not measured:
        why = "not ended yet" if pending else f"failed: {record['error'] or 'not measured'}"
        ax.text(0.5, 0.5, _cell(why, 120), ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return
    positions = range(len(measured))
    medians = [figure["median"] for _label, figure in measured]
    ax.barh(
        positions,
        medians,
        xerr=[
            [figure["median"] - figure["min"] for _label, figure in measured],
            [figure["max"] - figure["median"] for _label, figure in measured],
        ],
        color="tab:blue",
        capsize=4,
    )
    ax.set_yticks(list(positions))
    ax.set_yticklabels([label for label, _figure in measured], fontsize=8)
    ax.invert_yaxis()  # in the order they happen, top to bottom
    ax.axvline(
        scaleup.GOAL_SECONDS,
        color="tab:red",
        linestyle="--",
        label=f"goal: {scaleup.GOAL_SECONDS:g} s",
    )
    ax.set_xlabel("seconds from exec", fontsize=8)
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")

"""Runs every contender on a fresh stack of its own and collects one record per phase.

Per contender: a fresh infrastructure-only dev stack sized for the pods, the namespaces of
both shapes, the contender's processes (ready before any clock starts), then the spread shape's
create, update and delete and the one-namespace shape's. A contender that fails (a phase
misses the contender's deadline, a process exits, a start fails) is recorded failed with its
reason in one line and what was stuck, its stack is torn down, and the next contender runs.
The records so far go to the report as each contender ends, so a later failure or a Ctrl-C
keeps every figure measured before it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.compare.contenders import KCM, Contender, Limits, Running
from bench.compare.driver import Cluster, DeploymentDriver, Driver, PhaseRun, PodDriver
from bench.compare.jobs import JobDriver
from bench.compare.measure import KubusScrape, ProcessMeter, Usage, latency_quantiles
from bench.compare.statefulsets import StatefulSetDriver
from bench.compare.workload import Shape, Workload
from bench.support import fresh_stack, percentile, require_finite, scrape_metrics

__all__ = ["PHASES", "RunContender", "Settings", "one_line", "phase_record", "run_all"]

# The Deployment workload's phases; each workload's own are Workload.phases (a Job's have no
# update).
PHASES = ("create", "update", "delete")
SHAPE_KEYS = {"spread": "phases", "one-namespace": "phases_one_namespace"}
Progress = Callable[[str], None]


@dataclass(frozen=True)
class Settings:
    workload: Workload
    spread_namespaces: int
    limits: Limits
    # Seconds each contender's phases may take in all, once its processes are ready.
    deadline: float
    contenders: tuple[Contender, ...]
    log_dir: Path
    # Which of the two shapes run, in this order (a 10,000-pod run may take one only).
    shape_names: tuple[str, ...] = tuple(SHAPE_KEYS)

    @property
    def shapes(self) -> tuple[Shape, ...]:
        every = {
            "spread": Shape.spread(self.spread_namespaces),
            "one-namespace": Shape.one_namespace(),
        }
        return tuple(every[name] for name in self.shape_names)


# Fills one contender's record (phases, processes), raising if it fails.
RunContender = Callable[[Contender, Settings, dict[str, Any], Progress], None]


def run_all(
    settings: Settings,
    progress: Progress,
    ended: Callable[[list[dict[str, Any]]], None],
    *,
    run_contender: RunContender | None = None,
) -> list[dict[str, Any]]:
    """One record per contender, in the order given, with ratios to kcm's figures.

    ``ended`` gets the records so far as soon as each contender ends, failed or interrupted
    too (its record says why), so that what was measured is on disk before anything later
    can fail. A contender that raises is recorded failed, with the error in one line and the
    traceback in its log dir, and the next one runs. ``run_contender`` fills one record (the
    default: on a fresh dev stack).
    """
    run_one = run_contender or _run_contender
    records: list[dict[str, Any]] = []
    for contender in settings.contenders:
        record = _new_record(contender)
        records.append(record)
        log_dir = settings.log_dir / contender.name
        try:
            log_dir.mkdir(parents=True, exist_ok=True)
            run_one(contender, settings, record, progress)
        except KeyboardInterrupt as interrupt:
            record["error"] = f"interrupted ({interrupt or 'SIGINT'})"
            raise
        except Exception as error:  # one contender's failure must not stop the others
            record["error"] = one_line(error)
            trace = log_dir / "harness-error.log"
            with contextlib.suppress(OSError):
                trace.write_text(traceback.format_exc())
            progress(f"{contender.name}: failed: {record['error']} (traceback: {trace})")
        finally:
            _judge(record, settings.shape_names, settings.workload.phases)
            _add_ratios(records)
            ended(records)
    return records


def _new_record(contender: Contender) -> dict[str, Any]:
    return {
        "name": contender.name,
        "ok": False,
        # Why it failed, in one line (None: it did not).
        "error": None,
        "stuck": [],
        "processes": [],
        "phases": {},
        "phases_one_namespace": {},
    }


def _judge(
    record: dict[str, Any], shapes: tuple[str, ...], expected: tuple[str, ...] = PHASES
) -> None:
    phases = [p for shape in shapes for p in record[SHAPE_KEYS[shape]].values()]
    record["ok"] = (
        record["error"] is None
        and len(phases) == len(shapes) * len(expected)
        and all(p["ok"] for p in phases)
    )


def one_line(error: BaseException) -> str:
    """``error`` as one line: its type and its message, whitespace folded."""
    message = " ".join(str(error).split())
    return f"{type(error).__name__}: {message}" if message else type(error).__name__


def _run_contender(
    contender: Contender, settings: Settings, record: dict[str, Any], progress: Progress
) -> None:
    """Fill ``record`` on a fresh stack of the contender's own; raise if anything fails."""
    nodes = settings.workload.nodes()
    progress(f"{contender.name}: fresh stack with {nodes} kwok nodes")
    with fresh_stack(nodes) as stack:
        kubeconfig = Path(stack.env["KUBECONFIG"])
        asyncio.run(_create_namespaces(kubeconfig, settings))
        infra = {
            r.name: r.pid for r in stack.records if r.name in ("kube-apiserver", "nats-server")
        }
        log_dir = settings.log_dir / contender.name
        with contender.start(
            stack.env, settings.limits, log_dir=log_dir, workload=settings.workload.kind
        ) as running:
            record["processes"] = [service.name for service in running.processes]
            progress(
                f"{contender.name}: ready ({', '.join(record['processes']) or 'no controller'})"
            )
            asyncio.run(
                _run_phases(
                    contender,
                    running=running,
                    kubeconfig=kubeconfig,
                    infra=infra,
                    settings=settings,
                    record=record,
                    progress=progress,
                )
            )


async def _create_namespaces(kubeconfig: Path, settings: Settings) -> None:
    async with Cluster.connect(kubeconfig) as cluster:
        await cluster.create_namespaces(list(settings.shapes))


async def _run_phases(
    contender: Contender,
    *,
    running: Running,
    kubeconfig: Path,
    infra: dict[str, int],
    settings: Settings,
    record: dict[str, Any],
    progress: Progress,
) -> None:
    deadline = time.monotonic() + settings.deadline
    async with Cluster.connect(kubeconfig) as cluster:
        driver = _driver(contender, cluster, settings.workload)
        for shape in settings.shapes:
            phases = record[SHAPE_KEYS[shape.name]]
            for phase in settings.workload.phases:
                result = await _run_phase(
                    contender,
                    label=f"{shape.name} {phase}",
                    running=running,
                    driver=driver,
                    phase=phase,
                    shape=shape,
                    infra=infra,
                    settings=settings,
                    deadline=deadline,
                )
                phases[phase] = result
                label = f"{contender.name} {shape.name} {phase}"
                if not result["ok"]:
                    record["stuck"].extend(result["stuck"])
                    record["error"] = (
                        f"{shape.name} {phase} missed the deadline ({settings.deadline:g} s "
                        f"for all phases); stuck: {(result['stuck'] or ['-'])[0]}"
                    )
                    progress(
                        f"{label}: FAILED after {result['seconds']:.1f}s, "
                        f"{len(result['stuck'])} stuck, e.g. {result['stuck'][:1]}"
                    )
                    return
                progress(
                    f"{label}: {result['seconds']:.1f}s, {result['pods_per_s']:.1f} pods/s, "
                    f"{result['cpu_seconds_per_1000_pods']:.2f} CPU s/1000 pods"
                )


def _driver(contender: Contender, cluster: Cluster, workload: Workload) -> Driver:
    if contender.is_ceiling:
        if workload.kind != "deployments":
            raise ValueError(f"the ceiling runs the deployments workload only, not {workload.kind}")
        return PodDriver(cluster, workload)
    if workload.kind == "jobs":
        return JobDriver(cluster, workload)
    if workload.kind == "statefulsets":
        return StatefulSetDriver(cluster, workload)
    return DeploymentDriver(cluster, workload)


async def _scrape(running: Running) -> KubusScrape:
    ports = [service.metrics_port for service in running.reconcilers if service.metrics_port]
    texts = await asyncio.gather(*(asyncio.to_thread(scrape_metrics, port) for port in ports))
    return KubusScrape(tuple(texts))


async def _run_phase(
    contender: Contender,
    *,
    label: str,
    running: Running,
    driver: Driver,
    phase: str,
    shape: Shape,
    infra: dict[str, int],
    settings: Settings,
    deadline: float,
) -> dict[str, Any]:
    pids = {service.name: service.pid for service in running.processes}
    if contender.is_ceiling:
        # The ceiling's client runs in this process: its RSS is this whole driver's.
        pids = {"ceiling-client": os.getpid()}
    meter, infra_meter = ProcessMeter(pids), ProcessMeter(infra)
    lag = {"max": 0.0, "scraped": 0.0}
    before = await _scrape(running) if contender.is_kubus else None

    async def tick() -> None:
        running.check_alive()
        if contender.is_kubus and time.monotonic() - lag["scraped"] >= 1.0:
            lag["scraped"] = time.monotonic()
            with contextlib.suppress(OSError):  # a missed sample is no failure
                lag["max"] = max(lag["max"], (await _scrape(running)).bus_lag())

    meter.start()
    infra_meter.start()
    run: PhaseRun = await getattr(driver, phase)(shape, deadline=deadline, tick=tick)
    usage = meter.stop()
    infra_usage = infra_meter.stop()
    after = await _scrape(running) if contender.is_kubus else None
    if run.client_cpu_seconds is not None:
        usage["ceiling-client"] = Usage(
            round(run.client_cpu_seconds, 3), usage["ceiling-client"].peak_rss_mb
        )
    result = phase_record(
        contender,
        run=run,
        usage=usage,
        infra_usage=infra_usage,
        workload=settings.workload,
        before=before,
        after=after,
        lag_max=lag["max"],
    )
    # A NaN or inf fails here, naming the figure, not when results.json is written.
    require_finite(result, label)
    return result


def phase_record(
    contender: Contender,
    *,
    run: PhaseRun,
    usage: dict[str, Usage],
    infra_usage: dict[str, Usage],
    workload: Workload,
    before: KubusScrape | None,
    after: KubusScrape | None,
    lag_max: float,
) -> dict[str, Any]:
    pods = workload.pods
    cpu = sum(u.cpu_seconds for u in usage.values())
    result: dict[str, Any] = {
        "ok": run.ok,
        "seconds": round(run.seconds, 2),
        "pods": pods,
        "pods_per_s": round(pods / run.seconds, 2) if run.ok else 0.0,
        "cpu_seconds": round(cpu, 3),
        "cpu_seconds_per_1000_pods": round(1000 * cpu / pods, 3),
        "peak_rss_mb": max((u.peak_rss_mb for u in usage.values()), default=0.0),
        "processes": {
            name: {"cpu_seconds": u.cpu_seconds, "peak_rss_mb": u.peak_rss_mb}
            for name, u in usage.items()
        },
        "apiserver_cpu_seconds": infra_usage["kube-apiserver"].cpu_seconds,
        "stuck": run.stuck,
        "latency_p50_s": None,
        "latency_p99_s": None,
        "latency_source": None,
        "timestamp_latency_p50_s": None,
        "timestamp_latency_p99_s": None,
    }
    if run.timestamp_latencies:
        result["timestamp_latency_p50_s"] = percentile(run.timestamp_latencies, 0.50)
        result["timestamp_latency_p99_s"] = percentile(run.timestamp_latencies, 0.99)
        if not contender.is_kubus:
            result["latency_p50_s"] = result["timestamp_latency_p50_s"]
            result["latency_p99_s"] = result["timestamp_latency_p99_s"]
            result["latency_source"] = "object timestamps (1 s resolution)"
    if before is not None and after is not None:
        p50, p99, count = latency_quantiles(before.latency_buckets(), after.latency_buckets())
        result.update(
            # A bucket bound, or {"above": top bound} past the top bucket (see report.py).
            latency_p50_s=None if p50 is None else p50.to_json(),
            latency_p99_s=None if p99 is None else p99.to_json(),
            latency_source=f"kubus_reconciler_event_latency_seconds, {count} reconciles "
            "(bucket upper bounds)",
            bus_lag_max=lag_max,
            bus_lag_end=after.bus_lag(),
            cached_objects_per_process=after.cached_objects(),
            nats_cpu_seconds=infra_usage["nats-server"].cpu_seconds,
        )
    return result


def _add_ratios(records: list[dict[str, Any]]) -> None:
    """Each phase's time and CPU as a multiple of kcm's in the same run (None without kcm)."""
    reference = next((r for r in records if r["name"] == KCM and r["ok"]), None)
    for record in records:
        for key in SHAPE_KEYS.values():
            for phase, result in record[key].items():
                base = reference[key].get(phase) if reference else None
                ok = base is not None and result["ok"]
                result["seconds_vs_kcm"] = (
                    round(result["seconds"] / base["seconds"], 2) if ok and base else None
                )
                result["cpu_vs_kcm"] = (
                    round(result["cpu_seconds"] / base["cpu_seconds"], 2)
                    if ok and base and base["cpu_seconds"] > 0
                    else None
                )

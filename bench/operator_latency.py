"""One operator, several frameworks: event-to-reconcile latency, memory and start time.

The MySQLCluster operator as kubus runs it (examples/mysql-operator: ``kubus reconciler
--controllers=mysql-operator`` beside ``kubus watcher``) and as kopf runs it
(examples/mysql-operator-kopf, kopf from PyPI in a virtualenv this benchmark makes), each on a
fresh infrastructure-only dev stack of its own (or on the stack given), one after the other:

1. ``--objects`` MySQLClusters (replicas 0: no pods) exist; the operator starts. Measured:
   spawn -> ready (kubus's reconciler: /readyz answers; kopf: its ``--liveness`` endpoint
   answers 200), spawn -> the first reconcile of a pre-existing object, spawn -> every one
   reconciled. kubus's watcher is started (and timed) before the reconciler.
2. Each cluster is patched round robin at ``--rate`` patches/s for ``--seconds`` s, every patch
   a new value of the annotation ``bench.kubus.dev/marker`` (kopf's on.update fires on
   metadata and spec changes, kubus's operator on every change). Latency = the reconcile's
   start minus the patch's send time. Reconcile starts come from kubus's
   ``--reconcile-audit-log`` (the first start of that key at or after the send) and from the
   kopf handler's own JSONL line (the first that saw that marker or a later one).
3. More clusters are created up to ``--cached`` and each is reconciled once; once nothing has
   been reconciled for a few seconds, VmRSS of every process (/proc/<pid>/status).
4. The operator is stopped and started again over the ``--cached`` clusters: the same three
   start figures.

Run: ``python -m bench.operator_latency [--implementations kubus,kopf] [--objects 50]
[--cached 1000] [--rate 10] [--seconds 60] [--out operator_latency.json]``.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from bench.support import (
    ServiceProcess,
    entry_points_dir,
    free_port,
    fresh_stack,
    machine,
    percentile,
    start_process,
    stop_processes,
    wait_ready,
    write_atomically,
)
from kubus.kube import load_kube_config

ROOT = Path(__file__).resolve().parents[1]
KUBUS_EXAMPLE = ROOT / "examples" / "mysql-operator"
KOPF_EXAMPLE = ROOT / "examples" / "mysql-operator-kopf" / "mysql_kopf.py"
KOPF_VERSION = "1.45.2"
GROUP, VERSION, PLURAL = "database.example.com", "v1", "mysqlclusters"
MARKER = "bench.kubus.dev/marker"
NAMESPACE = "bench-mysql"
IMPLEMENTATIONS = ("kubus", "kopf")
# What the mysql-operator reads: the watcher puts these on the bus (Secrets as metadata only).
KUBUS_RESOURCES = (
    f"{GROUP}/{VERSION}/{PLURAL},v1/pods,v1/services,v1/secrets,v1/persistentvolumeclaims"
)
# kcm's client-side limit (20/s, burst 30) would make the 1,000 first reconciles' four writes
# each take minutes; kopf's client has none.
KUBUS_QPS = ("--kube-api-qps=200", "--kube-api-burst=400")
QUIET_SECONDS = 3.0
Progress = Callable[[str], None]


# --- the pure parts: audit logs, matching, figures ------------------------------------------


@dataclass(frozen=True)
class Start:
    """One reconcile's start, from an audit line: when, the object's key, the marker seen."""

    at: float
    key: str
    marker: int | None = None


def parse_audit(lines: Iterable[str]) -> list[Start]:
    """Reconcile starts from JSON lines (kubus's audit log or the kopf handler's): each has
    ``start`` (seconds since the epoch) and ``key`` (``namespace/name``); the kopf one also
    ``marker``. Blank, partial (a line being written) or foreign lines are skipped."""
    starts = []
    for line in lines:
        try:
            record = json.loads(line)
            at, key = float(record["start"]), str(record["key"])
        except (ValueError, KeyError, TypeError):
            continue
        marker = record.get("marker")
        starts.append(Start(at, key, int(marker) if marker not in (None, "") else None))
    return starts


def read_audit(path: Path) -> list[Start]:
    try:
        return parse_audit(path.read_text().splitlines())
    except FileNotFoundError:
        return []


@dataclass(frozen=True)
class Patch:
    """A change the driver made: the object's key, its marker, when sent and answered."""

    key: str
    marker: int
    sent: float
    answered: float


def latencies_by_time(patches: list[Patch], starts: list[Start]) -> list[float | None]:
    """Per patch, seconds from its send to the first reconcile of its key that started at or
    after it (None: none did). For an audit log that names no marker (kubus's)."""
    by_key: dict[str, list[float]] = defaultdict(list)
    for start in starts:
        by_key[start.key].append(start.at)
    for times in by_key.values():
        times.sort()
    found: list[float | None] = []
    for patch in patches:
        times = by_key.get(patch.key, [])
        index = bisect.bisect_left(times, patch.sent)
        found.append(times[index] - patch.sent if index < len(times) else None)
    return found


def latencies_by_marker(patches: list[Patch], starts: list[Start]) -> list[float | None]:
    """Per patch, seconds from its send to the first reconcile of its key that saw its marker
    or a later one (a reconcile of a later state covers the earlier change too)."""
    by_key: dict[str, list[Start]] = defaultdict(list)
    for start in starts:
        if start.marker is not None:
            by_key[start.key].append(start)
    found: list[float | None] = []
    for patch in patches:
        seen = [s.at for s in by_key.get(patch.key, []) if (s.marker or 0) >= patch.marker]
        found.append(min(seen) - patch.sent if seen else None)
    return found


def latency_summary(latencies: list[float | None]) -> dict[str, Any]:
    """p50, p99 and max in ms of the matched latencies, and how many were matched."""
    matched = [value * 1000 for value in latencies if value is not None]
    return {
        "changes": len(latencies),
        "reconciled": len(matched),
        "p50_ms": _round(percentile(matched, 0.50)),
        "p99_ms": _round(percentile(matched, 0.99)),
        "max_ms": _round(max(matched, default=None)),
    }


def vm_rss_mib(status_text: str, field_name: str = "VmRSS") -> float | None:
    """A ``/proc/<pid>/status`` memory field (``VmRSS``, ``VmHWM``) in MiB."""
    for line in status_text.splitlines():
        if line.startswith(f"{field_name}:"):
            return round(int(line.split()[1]) / 1024, 1)
    return None


def start_figures(
    spawned: float, ready: float, starts: list[Start], keys: set[str]
) -> dict[str, Any]:
    """Seconds from the spawn to ready, to the first reconcile of one of ``keys`` (objects
    that existed before the start) and to the moment each of them had been reconciled."""
    first: dict[str, float] = {}
    for start in starts:
        if start.key in keys and start.at >= spawned:
            first[start.key] = min(first.get(start.key, start.at), start.at)
    return {
        "objects": len(keys),
        "ready_s": _round(ready - spawned, 3),
        "first_reconcile_s": _round(min(first.values()) - spawned, 3) if first else None,
        "all_reconciled_s": _round(max(first.values()) - spawned, 3)
        if len(first) == len(keys) and keys
        else None,
        "reconciled": len(first),
    }


def _round(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)


# --- the implementations ---------------------------------------------------------------------


@dataclass
class Running:
    """An operator's processes: ``main`` is the one that reconciles."""

    main: ServiceProcess
    others: list[ServiceProcess] = field(default_factory=list)
    audit: Path = Path()
    ready: Callable[[], bool] = lambda: False


class Implementation:
    name = ""
    # Whether the reconcile audit names the marker it saw (else: matched by key and time).
    markers = False
    # Processes it needs that are not its own (kubus: the stack's NATS server): name -> pid.
    needs: dict[str, int]

    def __init__(self, env: dict[str, str], work: Path) -> None:
        self.env, self.work = env, work
        self.support: list[ServiceProcess] = []
        self.needs = {}

    def prepare(self, progress: Progress) -> dict[str, Any]:
        """Processes that run throughout (kubus's watcher); what was measured of them."""
        return {}

    def start(self, run: int) -> Running:
        raise NotImplementedError

    def close(self) -> None:
        stop_processes(self.support)


class Kubus(Implementation):
    name = "kubus"

    def __init__(self, env: dict[str, str], work: Path, nats_pid: int | None) -> None:
        super().__init__(env, work)
        if nats_pid is not None:
            self.needs["nats_server"] = nats_pid
        entry_points = entry_points_dir(
            work / "entry-points", "kubus-mysql", {"mysql-operator": "kubus_mysql:MySQLOperator"}
        )
        self.pythonpath = os.pathsep.join(
            filter(None, [str(entry_points), str(KUBUS_EXAMPLE), os.environ.get("PYTHONPATH")])
        )
        self.prefix = "op" + os.urandom(4).hex()

    def _service(self, command: str, name: str, *args: str) -> ServiceProcess:
        health, metrics = free_port(), free_port()
        started = start_process(
            name,
            [
                sys.executable,
                "-m",
                "kubus.cli",
                command,
                f"--kubeconfig={self.env['KUBECONFIG']}",
                f"--nats-url={self.env['NATS_URL']}",
                f"--bus-prefix={self.prefix}",
                f"--health-probe-bind-address=127.0.0.1:{health}",
                f"--metrics-bind-address=127.0.0.1:{metrics}",
                *args,
            ],
            log_dir=self.work,
            env={"PYTHONPATH": self.pythonpath},
        )
        return ServiceProcess(name, started.process, started.log, health, metrics)

    def prepare(self, progress: Progress) -> dict[str, Any]:
        spawned = time.time()
        watcher = self._service("watcher", "watcher", f"--resources={KUBUS_RESOURCES}")
        self.support.append(watcher)
        wait_ready(watcher.process, watcher.health_port or 0, what=f"watcher ({watcher.log})")
        ready = round(time.time() - spawned, 3)
        progress(f"kubus watcher ready {ready}s after its spawn")
        return {"watcher_ready_s": ready}

    def start(self, run: int) -> Running:
        audit = self.work / f"audit-{run}.jsonl"
        reconciler = self._service(
            "reconciler",
            f"reconciler-{run}",
            "--controllers=mysql-operator",
            f"--reconcile-audit-log={audit}",
            *KUBUS_QPS,
        )
        return Running(
            reconciler,
            list(self.support),
            audit,
            lambda: _answers(reconciler.health_port, "/readyz"),
        )


class Kopf(Implementation):
    name = "kopf"
    markers = True

    def __init__(self, env: dict[str, str], work: Path, venv: Path | None) -> None:
        super().__init__(env, work)
        self.venv = venv or work / "kopf-venv"

    def prepare(self, progress: Progress) -> dict[str, Any]:
        python = self.venv / "bin" / "python"
        if not python.exists():
            progress(f"installing kopf=={KOPF_VERSION} into {self.venv}")
            subprocess.run([sys.executable, "-m", "venv", str(self.venv)], check=True)
        import kubernetes  # the same client version as kubus's, for the same decoding costs

        subprocess.run(
            [
                str(python),
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                f"kopf=={KOPF_VERSION}",
                f"kubernetes=={kubernetes.__version__}",
            ],
            check=True,
        )
        return {"kopf": KOPF_VERSION, "kubernetes_client": kubernetes.__version__}

    def start(self, run: int) -> Running:
        audit = self.work / f"audit-{run}.jsonl"
        port = free_port()
        process = start_process(
            f"kopf-{run}",
            [
                str(self.venv / "bin" / "python"),
                "-m",
                "kopf",
                "run",
                "--standalone",
                "--all-namespaces",
                f"--liveness=http://127.0.0.1:{port}/healthz",
                str(KOPF_EXAMPLE),
            ],
            log_dir=self.work,
            env={"KUBECONFIG": self.env["KUBECONFIG"], "MYSQL_KOPF_AUDIT": str(audit)},
        )
        return Running(process, [], audit, lambda: _answers(port, "/healthz"))


def _answers(port: int | None, path: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=1) as response:
            return bool(response.status == 200)
    except (OSError, urllib.error.HTTPError):
        return False


# --- the cluster side -------------------------------------------------------------------------


def kube_api(env: dict[str, str]) -> Any:
    from kubernetes import config

    return config.new_client_from_config(config_file=env["KUBECONFIG"])  # type: ignore[no-untyped-call]


def install_crd(env: dict[str, str]) -> None:
    """The CRD as ``kubus crd generate kubus_mysql:MySQLCluster`` writes it, Established."""
    from kubernetes import client

    generated = subprocess.run(
        [
            sys.executable,
            "-m",
            "kubus.cli",
            "crd",
            "generate",
            "-o",
            "json",
            "kubus_mysql:MySQLCluster",
        ],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(KUBUS_EXAMPLE), *sys.path])},
    )
    api = kube_api(env)
    extensions: Any = client.ApiextensionsV1Api(api)
    crd = json.loads(generated.stdout)
    with contextlib.suppress(client.ApiException):
        extensions.create_custom_resource_definition(crd)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        current = extensions.read_custom_resource_definition(crd["metadata"]["name"])
        conditions = {c.type: c.status for c in current.status.conditions or []}
        if conditions.get("Established") == "True":
            return
        time.sleep(0.2)
    raise RuntimeError("the MySQLCluster CRD did not get Established")


def cluster_body(index: int) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "MySQLCluster",
        "metadata": {"name": f"db-{index:04d}", "annotations": {MARKER: "0"}},
        "spec": {
            "version": "8.0",
            "replicas": 0,
            "storageSize": "1Gi",
            "resources": {"cpu": "100m", "memory": "256Mi"},
        },
    }


def create_clusters(env: dict[str, str], indices: range) -> set[str]:
    from kubernetes import client

    api = kube_api(env)
    core: Any = client.CoreV1Api(api)
    custom: Any = client.CustomObjectsApi(api)
    with contextlib.suppress(client.ApiException):
        core.create_namespace({"metadata": {"name": NAMESPACE}})
    for index in indices:
        custom.create_namespaced_custom_object(
            GROUP, VERSION, NAMESPACE, PLURAL, cluster_body(index)
        )
    return {f"{NAMESPACE}/{cluster_body(i)['metadata']['name']}" for i in indices}


def converged(env: dict[str, str], index: int) -> dict[str, Any]:
    """What the operator made of cluster ``index``: a check that both did the same work."""
    from kubernetes import client

    api = kube_api(env)
    custom: Any = client.CustomObjectsApi(api)
    core: Any = client.CoreV1Api(api)
    name = cluster_body(index)["metadata"]["name"]
    cluster = custom.get_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, name)
    status = cluster.get("status") or {}
    found = {}
    for kind, read in (
        ("secret", core.read_namespaced_secret),
        ("service", core.read_namespaced_service),
    ):
        try:
            obj = read(f"{name}-root" if kind == "secret" else name, NAMESPACE)
            owners = obj.metadata.owner_references or []
            found[kind] = any(o.controller and o.uid == cluster["metadata"]["uid"] for o in owners)
        except client.ApiException:
            found[kind] = False
    return {
        "phase": status.get("phase"),
        "conditions": sorted(f"{c['type']}={c['status']}" for c in status.get("conditions") or []),
        "finalizers": cluster["metadata"].get("finalizers") or [],
        "owned_secret": found["secret"],
        "owned_service": found["service"],
    }


def remove_clusters(env: dict[str, str]) -> None:
    """What a run leaves on a stack it was given: finalizers off, then clusters, Secrets and
    Services gone (an infrastructure-only stack has no garbage collector)."""
    from kubernetes import client

    api = kube_api(env)
    custom: Any = client.CustomObjectsApi(api)
    core: Any = client.CoreV1Api(api)
    items = custom.list_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL)["items"]
    for item in items:
        name = item["metadata"]["name"]
        with contextlib.suppress(client.ApiException):
            custom.patch_namespaced_custom_object(
                GROUP, VERSION, NAMESPACE, PLURAL, name, {"metadata": {"finalizers": None}}
            )
            custom.delete_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, name)
    selector = "app.kubernetes.io/name=mysql"
    core.delete_collection_namespaced_secret(NAMESPACE, label_selector=selector)
    for service in core.list_namespaced_service(NAMESPACE, label_selector=selector).items:
        with contextlib.suppress(client.ApiException):
            core.delete_namespaced_service(service.metadata.name, NAMESPACE)


async def drive_patches(
    env: dict[str, str], keys: list[str], rate: float, seconds: float
) -> list[Patch]:
    """Merge-patch the marker annotation of ``keys`` round robin at ``rate`` per second."""
    config = load_kube_config(Path(env["KUBECONFIG"]))
    headers = {"Content-Type": "application/merge-patch+json"}
    if auth := config.authorization():
        headers["Authorization"] = auth
    patches: list[Patch] = []
    connector = aiohttp.TCPConnector(ssl=config.ssl_context, limit=32)
    async with aiohttp.ClientSession(config.server, connector=connector, headers=headers) as http:

        async def patch(key: str, marker: int) -> None:
            name = key.split("/", 1)[1]
            body = json.dumps({"metadata": {"annotations": {MARKER: str(marker)}}}, allow_nan=False)
            sent = time.time()
            async with http.patch(
                f"/apis/{GROUP}/{VERSION}/namespaces/{NAMESPACE}/{PLURAL}/{name}", data=body
            ) as response:
                response.raise_for_status()
                await response.read()
            patches.append(Patch(key, marker, sent, time.time()))

        total = int(rate * seconds)
        began = time.monotonic()
        tasks = []
        for count in range(total):
            delay = began + count / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(patch(keys[count % len(keys)], count + 1)))
        await asyncio.gather(*tasks)
    return patches


# --- measuring ----------------------------------------------------------------------------------


def memory(process: ServiceProcess) -> dict[str, float | None]:
    return memory_of(process.pid)


def memory_of(pid: int) -> dict[str, float | None]:
    text = Path(f"/proc/{pid}/status").read_text()
    return {"rss_mib": vm_rss_mib(text), "peak_rss_mib": vm_rss_mib(text, "VmHWM")}


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_until(
    condition: Callable[[], bool], timeout: float, what: str, process: ServiceProcess
) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process.process.poll() is not None:
            raise RuntimeError(
                f"{process.name} exited while waiting for {what} (log: {process.log})"
            )
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not within {timeout:.0f}s (log: {process.log})")
        time.sleep(0.02)


def wait_quiet(audit: Path, timeout: float = 120) -> None:
    """Until no reconcile started for QUIET_SECONDS (the first reconciles' own writes, as the
    finalizer and the status, make more changes)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        starts = read_audit(audit)
        last = max((s.at for s in starts), default=0.0)
        if time.time() - last >= QUIET_SECONDS:
            return
        time.sleep(0.5)


def start_and_time(
    implementation: Implementation, run: int, keys: set[str], timeout: float
) -> tuple[Running, dict[str, Any]]:
    spawned = time.time()
    running = implementation.start(run)
    wait_until(running.ready, timeout, "ready", running.main)
    ready = time.time()
    wait_until(
        lambda: {s.key for s in read_audit(running.audit)} >= keys,
        timeout,
        f"every one of {len(keys)} clusters reconciled",
        running.main,
    )
    return running, start_figures(spawned, ready, read_audit(running.audit), keys)


def measure(
    implementation: Implementation, args: argparse.Namespace, progress: Progress
) -> dict[str, Any]:
    name = implementation.name
    record: dict[str, Any] = {"implementation": name}
    install_crd(implementation.env)
    keys = create_clusters(implementation.env, range(args.objects))
    record.update(implementation.prepare(progress))
    running, record["start"] = start_and_time(implementation, 0, keys, args.timeout)
    progress(f"{name}: {_start_line(record['start'])}")
    try:
        wait_quiet(running.audit)
        cpu_before = cpu_seconds(running.main.pid)
        others_before = [cpu_seconds(p.pid) for p in running.others]
        began = time.monotonic()
        patches = asyncio.run(
            drive_patches(implementation.env, sorted(keys), args.rate, args.seconds)
        )
        window = time.monotonic() - began
        last_sent = max(p.sent for p in patches)
        match = latencies_by_marker if implementation.markers else latencies_by_time
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and None in match(patches, read_audit(running.audit)):
            time.sleep(0.5)
        latencies = match(patches, read_audit(running.audit))
        record["latency"] = {
            **latency_summary(latencies),
            "rate": args.rate,
            "achieved_rate": round(len(patches) / window, 2),
            "seconds": args.seconds,
            "objects": len(keys),
            "matched_by": "marker" if implementation.markers else "key and time",
            "cpu_percent": round(100 * (cpu_seconds(running.main.pid) - cpu_before) / window, 1),
            "others_cpu_percent": [
                round(100 * (cpu_seconds(p.pid) - before) / window, 1)
                for p, before in zip(running.others, others_before, strict=True)
            ],
            "api_answer_p50_ms": _round(
                percentile([(p.answered - p.sent) * 1000 for p in patches], 0.5)
            ),
            "reconciled_after_last_patch": sum(
                1 for s in read_audit(running.audit) if s.at > last_sent
            ),
        }
        lat = record["latency"]
        progress(
            f"{name}: {lat['reconciled']}/{lat['changes']} changes reconciled, "
            f"p50 {lat['p50_ms']} ms, p99 {lat['p99_ms']} ms (at {lat['achieved_rate']}/s)"
        )
        more = create_clusters(implementation.env, range(args.objects, args.cached))
        cached = keys | more
        wait_until(
            lambda: {s.key for s in read_audit(running.audit)} >= cached,
            args.timeout,
            f"every one of {len(cached)} clusters reconciled",
            running.main,
        )
        wait_quiet(running.audit)
        record["converged"] = converged(implementation.env, 0)
        record["memory"] = {
            "objects": len(cached),
            running.main.name.split("-")[0]: memory(running.main),
            **{p.name: memory(p) for p in running.others},
            **{name: memory_of(pid) for name, pid in implementation.needs.items()},
        }
        progress(f"{name}: memory with {len(cached)} clusters: {record['memory']}")
    finally:
        stop_processes([running.main])
    running, record["restart"] = start_and_time(implementation, 1, cached, args.timeout)
    progress(f"{name}: restarted over {len(cached)}: {_start_line(record['restart'])}")
    try:
        wait_quiet(running.audit)
        record["memory"]["after_restart"] = memory(running.main)
    finally:
        stop_processes([running.main])
    return record


def _start_line(figures: dict[str, Any]) -> str:
    return (
        f"ready {figures['ready_s']}s, first reconcile {figures['first_reconcile_s']}s, all "
        f"{figures['objects']} reconciled {figures['all_reconciled_s']}s after the spawn"
    )


@dataclass(frozen=True)
class Stack:
    env: dict[str, str]
    ours: bool  # a fresh one, thrown away after
    nats_pid: int | None = None  # the NATS server's, when it is ours


@contextlib.contextmanager
def stack_for(args: argparse.Namespace, progress: Progress) -> Iterator[Stack]:
    """The stack given, or a fresh one."""
    if args.kubeconfig:
        yield Stack({"KUBECONFIG": args.kubeconfig, "NATS_URL": args.nats_url}, ours=False)
        return
    with fresh_stack(nodes=1, progress=progress) as stack:
        nats = [r.pid for r in stack.records if r.name == "nats-server"]
        yield Stack(stack.env, ours=True, nats_pid=nats[0] if nats else None)


def table(records: list[dict[str, Any]]) -> str:
    def cell(record: dict[str, Any], *path: str) -> str:
        value: Any = record
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        return "-" if value is None else str(value)

    rows = [
        ("latency p50 (ms)", ("latency", "p50_ms")),
        ("latency p99 (ms)", ("latency", "p99_ms")),
        ("latency max (ms)", ("latency", "max_ms")),
        ("changes reconciled", ("latency", "reconciled")),
        ("operator CPU % at the rate", ("latency", "cpu_percent")),
        ("RSS operator (MiB)", ("memory", "rss_total_operator")),
        ("RSS watcher (MiB)", ("memory", "watcher", "rss_mib")),
        ("RSS total (MiB)", ("memory", "rss_total")),
        ("RSS NATS server (MiB)", ("memory", "nats_server", "rss_mib")),
        ("RSS total with NATS (MiB)", ("memory", "rss_total_with_nats")),
        ("start: ready (s)", ("start", "ready_s")),
        ("start: first reconcile (s)", ("start", "first_reconcile_s")),
        ("start: all reconciled (s)", ("start", "all_reconciled_s")),
        ("restart: ready (s)", ("restart", "ready_s")),
        ("restart: first reconcile (s)", ("restart", "first_reconcile_s")),
        ("restart: all reconciled (s)", ("restart", "all_reconciled_s")),
    ]
    width = max(len(label) for label, _ in rows)
    lines = [f"{'':<{width}}  " + "  ".join(f"{r['implementation']:>10}" for r in records)]
    for label, path in rows:
        lines.append(f"{label:<{width}}  " + "  ".join(f"{cell(r, *path):>10}" for r in records))
    return "\n".join(lines)


def totals(record: dict[str, Any]) -> None:
    """The operator's own RSS and the total of every process it needs."""
    memory_ = record.get("memory")
    if not memory_:
        return
    own: dict[str, Any] = next((v for k, v in memory_.items() if k in ("reconciler", "kopf")), {})
    processes = {k: v for k, v in memory_.items() if isinstance(v, dict) and k != "after_restart"}
    memory_["rss_total_operator"] = own.get("rss_mib")
    # The operator's processes (kubus: the reconciler and the watcher), then with NATS too.
    memory_["rss_total"] = round(
        sum(v.get("rss_mib") or 0 for k, v in processes.items() if k != "nats_server"), 1
    )
    memory_["rss_total_with_nats"] = round(
        sum(v.get("rss_mib") or 0 for v in processes.values()), 1
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--implementations", default=",".join(IMPLEMENTATIONS))
    parser.add_argument("--objects", type=int, default=50, help="clusters patched (default 50)")
    parser.add_argument("--cached", type=int, default=1000, help="clusters cached (default 1000)")
    parser.add_argument("--rate", type=float, default=10.0, help="patches per second")
    parser.add_argument("--seconds", type=float, default=60.0, help="of patching")
    parser.add_argument("--timeout", type=float, default=600.0, help="for any one wait")
    parser.add_argument("--out", type=Path, default=Path("operator_latency.json"))
    parser.add_argument("--kopf-venv", type=Path, help="a virtualenv to (re)use for kopf")
    parser.add_argument("--kubeconfig", help="use this stack (with --nats-url), not a fresh one")
    parser.add_argument("--nats-url", help="the given stack's NATS")
    args = parser.parse_args()
    chosen = [name.strip() for name in args.implementations.split(",") if name.strip()]
    unknown = sorted(set(chosen) - set(IMPLEMENTATIONS))
    problems = []
    if unknown:
        problems.append(f"unknown implementations {unknown} (known: {', '.join(IMPLEMENTATIONS)})")
    if args.cached < args.objects or args.objects < 1:
        problems.append(f"--cached {args.cached} must be at least --objects {args.objects} >= 1")
    if bool(args.kubeconfig) != bool(args.nats_url):
        problems.append("--kubeconfig and --nats-url go together")
    if problems:
        parser.exit(2, f"operator_latency: {'; '.join(problems)}\n")

    def progress(line: str) -> None:
        print(line, flush=True)

    records: list[dict[str, Any]] = []
    result: dict[str, Any] = {
        "benchmark": "operator_latency",
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine(),
        "command": " ".join(["python", "-m", "bench.operator_latency", *sys.argv[1:]]),
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "results": records,
    }
    for name in chosen:
        work = Path(tempfile.mkdtemp(prefix=f"kubus-bench-operator-{name}-"))
        with stack_for(args, progress) as stack:
            implementation: Implementation = (
                Kubus(stack.env, work, stack.nats_pid)
                if name == "kubus"
                else Kopf(stack.env, work, args.kopf_venv)
            )
            try:
                record = measure(implementation, args, progress)
            except Exception as error:
                record = {"implementation": name, "failed": f"{type(error).__name__}: {error}"}
                progress(f"{name} failed: {record['failed']} (logs in {work})")
            finally:
                implementation.close()
                if not stack.ours:
                    remove_clusters(stack.env)
            totals(record)
            record["logs"] = str(work)
            records.append(record)
            write_atomically(args.out, json.dumps(result, indent=2, allow_nan=False) + "\n")
        if "failed" not in record:
            shutil.rmtree(work / "kopf-venv", ignore_errors=True)
    print(table(records))
    print(json.dumps(result, allow_nan=False))
    if any("failed" in r for r in records):
        sys.exit(1)


if __name__ == "__main__":
    main()

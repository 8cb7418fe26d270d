"""What the benchmarks share: throw-away stacks and servers, kubus processes, their metrics."""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import msgspec

from kubus.devstack import Binaries, DevStack, StackConfig, default_cache_dir
from kubus.devstack.process import spawn


@contextlib.contextmanager
def nats_server(cpus: set[int] | None = None) -> Iterator[str]:
    """A JetStream-enabled nats-server on a free loopback port; yields its URL.

    ``cpus``: run it on these CPUs only, with as many Go threads, so that it does not take
    turns on the cores of the process being measured."""
    binary = Binaries(cache_dir=default_cache_dir(os.environ)).ensure(["nats-server"])
    store = Path(tempfile.mkdtemp(prefix="kubus-bench-nats-"))
    port, monitor = free_port(), free_port()
    process = subprocess.Popen(
        [
            str(binary["nats-server"].path),
            "-a",
            "127.0.0.1",
            "-p",
            str(port),
            "-m",
            str(monitor),
            "-js",
            "-sd",
            str(store),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "GOMAXPROCS": str(len(cpus))} if cpus else None,
    )
    if cpus:
        os.sched_setaffinity(process.pid, cpus)  # before its first request; Go threads follow
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{monitor}/healthz", timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield f"nats://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=10)
        shutil.rmtree(store, ignore_errors=True)


def realistic_pod(index: int, resource_version: int, namespace: str = "bench") -> dict[str, Any]:
    """A pod as the apiserver sends it for a ReplicaSet replica on a kwok node (~3 KB)."""
    name = f"web-7d9c8b6f5d-{index:05d}"
    now = "2026-11-22T02:00:00Z"
    return {
        "kind": "Pod",
        "apiVersion": "v1",
        "metadata": {
            "name": name,
            "generateName": "web-7d9c8b6f5d-",
            "namespace": namespace,
            "uid": f"6f1c2a4e-0000-4000-8000-{index:012d}",
            "resourceVersion": str(resource_version),
            "creationTimestamp": now,
            "labels": {"app": "web", "pod-template-hash": "7d9c8b6f5d", "tier": "frontend"},
            "ownerReferences": [
                {
                    "apiVersion": "apps/v1",
                    "kind": "ReplicaSet",
                    "name": "web-7d9c8b6f5d",
                    "uid": "0b4f1a2c-1111-4222-8333-444455556666",
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
            "managedFields": [
                {
                    "manager": "kube-controller-manager",
                    "operation": "Update",
                    "apiVersion": "v1",
                    "time": now,
                    "fieldsType": "FieldsV1",
                    "fieldsV1": {
                        "f:metadata": {
                            "f:generateName": {},
                            "f:labels": {
                                ".": {},
                                "f:app": {},
                                "f:pod-template-hash": {},
                                "f:tier": {},
                            },
                            "f:ownerReferences": {".": {}, 'k:{"uid":"0b4f1a2c"}': {}},
                        },
                        "f:spec": {
                            "f:containers": {
                                'k:{"name":"web"}': {
                                    ".": {},
                                    "f:image": {},
                                    "f:imagePullPolicy": {},
                                    "f:name": {},
                                    "f:ports": {},
                                    "f:resources": {},
                                }
                            },
                            "f:dnsPolicy": {},
                            "f:restartPolicy": {},
                            "f:schedulerName": {},
                            "f:terminationGracePeriodSeconds": {},
                        },
                    },
                },
                {
                    "manager": "kwok",
                    "operation": "Update",
                    "apiVersion": "v1",
                    "time": now,
                    "fieldsType": "FieldsV1",
                    "subresource": "status",
                    "fieldsV1": {
                        "f:status": {
                            "f:conditions": {},
                            "f:containerStatuses": {},
                            "f:hostIP": {},
                            "f:phase": {},
                            "f:podIP": {},
                            "f:startTime": {},
                        }
                    },
                },
            ],
        },
        "spec": {
            "containers": [
                {
                    "name": "web",
                    "image": "registry.example/web:1.27.3",
                    "ports": [{"containerPort": 8080, "protocol": "TCP"}],
                    "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}},
                    "terminationMessagePath": "/dev/termination-log",
                    "terminationMessagePolicy": "File",
                    "imagePullPolicy": "IfNotPresent",
                }
            ],
            "restartPolicy": "Always",
            "terminationGracePeriodSeconds": 30,
            "dnsPolicy": "ClusterFirst",
            "serviceAccountName": "default",
            "nodeName": f"kwok-node-{index % 3}",
            "schedulerName": "default-scheduler",
            "tolerations": [
                {
                    "key": "node.kubernetes.io/not-ready",
                    "operator": "Exists",
                    "effect": "NoExecute",
                    "tolerationSeconds": 300,
                },
                {
                    "key": "node.kubernetes.io/unreachable",
                    "operator": "Exists",
                    "effect": "NoExecute",
                    "tolerationSeconds": 300,
                },
            ],
            "priority": 0,
            "enableServiceLinks": True,
            "preemptionPolicy": "PreemptLowerPriority",
        },
        "status": {
            "phase": "Running",
            "conditions": [
                {"type": t, "status": "True", "lastProbeTime": None, "lastTransitionTime": now}
                for t in (
                    "PodReadyToStartContainers",
                    "Initialized",
                    "Ready",
                    "ContainersReady",
                    "PodScheduled",
                )
            ],
            "hostIP": "10.0.0.1",
            "hostIPs": [{"ip": "10.0.0.1"}],
            "podIP": f"10.244.{index // 250}.{index % 250}",
            "podIPs": [{"ip": f"10.244.{index // 250}.{index % 250}"}],
            "startTime": now,
            "containerStatuses": [
                {
                    "name": "web",
                    "state": {"running": {"startedAt": now}},
                    "lastState": {},
                    "ready": True,
                    "restartCount": 0,
                    "image": "registry.example/web:1.27.3",
                    "imageID": "",
                    "started": True,
                }
            ],
            "qosClass": "Burstable",
        },
    }


def recorded_watch_stream(pods: int, events_per_pod: int) -> list[bytes]:
    """Watch-stream lines: each pod ADDED, then MODIFIED, in resourceVersion order."""
    encoder = msgspec.json.Encoder()
    lines = []
    resource_version = 1000
    for round_ in range(events_per_pod):
        for index in range(pods):
            resource_version += 1
            kind = "ADDED" if round_ == 0 else "MODIFIED"
            lines.append(
                encoder.encode({"type": kind, "object": realistic_pod(index, resource_version)})
            )
    return lines


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def machine() -> str:
    """Cores (and CPU model), memory, kernel and Python: what a figure was measured on."""
    model, memory = "", ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = f" ({line.split(':', 1)[1].strip()})"
                break
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = f", {int(line.split()[1]) / 1024**2:.0f} GiB"
                break
    return (
        f"{os.cpu_count()} cores{model}{memory}, Linux {os.uname().release}, "
        f"Python {sys.version.split()[0]}"
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def fresh_stack(
    nodes: int = 3, *, progress: Callable[[str], None] | None = None
) -> Iterator[DevStack]:
    """A fresh infrastructure-only dev stack in a temporary dir, tied to this process."""
    state_dir = Path(tempfile.mkdtemp(prefix="kubus-bench-stack-"))
    stack = DevStack(
        StackConfig(
            state_dir=state_dir,
            binaries=Binaries(cache_dir=default_cache_dir(os.environ)),
            nodes=nodes,
            services=False,
            tied_to_parent=True,
        )
    )
    stack.up(progress=progress or (lambda _line: None))
    try:
        yield stack
    finally:
        stack.stop()
        shutil.rmtree(state_dir, ignore_errors=True)


@contextlib.contextmanager
def dev_stack(nodes: int = 3) -> Iterator[dict[str, str]]:
    """A fresh infrastructure-only dev stack in a temporary dir; yields its env."""
    with fresh_stack(nodes) as stack:
        yield stack.env


@dataclass(frozen=True)
class ServiceProcess:
    """A process a benchmark started: what it is, its handle, log and ports."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path
    health_port: int | None = None
    metrics_port: int | None = None

    @property
    def pid(self) -> int:
        return self.process.pid


def start_process(
    name: str, argv: list[str], *, log_dir: Path, env: dict[str, str] | None = None
) -> ServiceProcess:
    """Start ``argv`` with its output in ``log_dir/<name>.log``; it dies with this process."""
    record, child = spawn(
        name,
        argv,
        log_path=log_dir / f"{name}.log",
        env={**os.environ, "OTEL_SDK_DISABLED": "true", **(env or {})},
        die_with_parent=True,
    )
    return ServiceProcess(name, child, Path(record.log))


def stop_processes(processes: list[ServiceProcess], *, grace: float = 30.0) -> None:
    """SIGTERM every process, then wait (SIGKILL after ``grace`` seconds)."""
    for service in processes:
        if service.process.poll() is None:
            service.process.terminate()
    for service in processes:
        try:
            service.process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            service.process.kill()
            service.process.wait(timeout=10)


def kubus_service(
    env: dict[str, str], command: str, name: str, *args: str, log_dir: Path
) -> ServiceProcess:
    """``kubus watcher|reconciler`` against ``env``'s stack on free probe/metrics ports."""
    health, metrics = free_port(), free_port()
    service = start_process(
        name,
        [
            sys.executable,
            "-m",
            "kubus.cli",
            command,
            f"--kubeconfig={env['KUBECONFIG']}",
            f"--nats-url={env['NATS_URL']}",
            f"--health-probe-bind-address=127.0.0.1:{health}",
            f"--metrics-bind-address=127.0.0.1:{metrics}",
            *args,
        ],
        log_dir=log_dir,
    )
    return ServiceProcess(name, service.process, service.log, health, metrics)


@contextlib.contextmanager
def watcher_process(env: dict[str, str], *args: str) -> Iterator[subprocess.Popen[bytes]]:
    """`kubus watcher` against ``env``'s stack, ready (its /readyz answers ok)."""
    log_dir = Path(tempfile.mkdtemp(prefix="kubus-bench-watcher-"))
    watcher = kubus_service(env, "watcher", "watcher", *args, log_dir=log_dir)
    try:
        wait_ready(
            watcher.process, _port(watcher.health_port), what=f"watcher (log: {watcher.log})"
        )
        yield watcher.process
    finally:
        stop_processes([watcher])


@contextlib.contextmanager
def reconciler_processes(
    env: dict[str, str], count: int, *args: str, log_dir: Path
) -> Iterator[list[ServiceProcess]]:
    """``count`` reconcilers of one pool against ``env``'s stack, all ready."""
    reconcilers = [
        kubus_service(env, "reconciler", f"reconciler-{index}", *args, log_dir=log_dir)
        for index in range(count)
    ]
    try:
        for service in reconcilers:
            wait_ready(
                service.process,
                _port(service.health_port),
                what=f"{service.name} (log: {service.log})",
            )
        yield reconcilers
    finally:
        stop_processes(reconcilers)


def _port(port: int | None) -> int:
    if port is None:
        raise ValueError("the process serves no such port")
    return port


def wait_ready(
    process: subprocess.Popen[bytes], health_port: int, *, what: str, timeout: float = 120
) -> None:
    """Until the process's /readyz answers; an exit or ``timeout`` s without it is an error."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{health_port}/readyz", timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError(f"{what} did not get ready") from None
            time.sleep(0.1)


def labelled_values(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    """Every sample of metric ``name`` in one scrape: its labels and value."""
    samples = []
    for line in text.splitlines():
        if not line.startswith(name) or line[len(name) : len(name) + 1] not in ("{", " "):
            continue
        head, value = line.rsplit(" ", 1)
        labels: dict[str, str] = {}
        if "{" in head:
            for pair in head[head.index("{") + 1 : head.rindex("}")].split('",'):
                if "=" in pair:
                    key, raw = pair.split("=", 1)
                    labels[key.strip()] = raw.strip().strip('"')
        samples.append((labels, float(value)))
    return samples


def cached_objects(text: str, resource: str) -> int:
    """Objects of ``resource`` (``v1/pods``) in a reconciler's caches, from one scrape."""
    return int(
        sum(
            value
            for labels, value in labelled_values(text, "kubus_reconciler_cached_objects")
            if labels.get("resource") == resource
        )
    )


def json_log(path: Path) -> list[dict[str, Any]]:
    """The lines of a ``--logging-format=json`` log that are JSON objects (others skipped)."""
    entries = []
    with contextlib.suppress(FileNotFoundError):
        for line in path.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    entries.append(msgspec.json.decode(line))
    return entries


def spread(values: list[float], digits: int = 2) -> dict[str, float] | None:
    """min, median and max of several runs' figure (None: no run measured it)."""
    if not values:
        return None
    ordered = sorted(values)
    middle = len(ordered) // 2
    median = ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2
    return {
        "min": round(ordered[0], digits),
        "median": round(median, digits),
        "max": round(ordered[-1], digits),
    }


def scrape_metrics(port: int, *, timeout: float = 5) -> str:
    """The Prometheus text a process serves on ``port``'s /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout) as response:
        text: str = response.read().decode()
    return text


def histogram_buckets(texts: list[str], name: str) -> dict[float, float]:
    """Cumulative bucket counts of histogram ``name`` summed over every label set and text."""
    buckets: dict[float, float] = {}
    prefix = f"{name}_bucket"
    for text in texts:
        for line in text.splitlines():
            if line.startswith(prefix):
                bound = line.split('le="', 1)[1].split('"', 1)[0]
                value = float(line.rsplit(" ", 1)[1])
                key = float("inf") if bound == "+Inf" else float(bound)
                buckets[key] = buckets.get(key, 0.0) + value
    return buckets


def gauge_sum(text: str, name: str) -> float:
    """The sum of gauge ``name`` over its label sets in one scrape."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and line[len(name) : len(name) + 1] in ("{", " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


@dataclass(frozen=True)
class BucketBound:
    """A quantile read off a histogram, whose buckets hold no finer figure than a bound.

    ``above`` False: the quantile is at most ``bound``, the upper bound of the bucket holding
    it. ``above`` True: it lies past the top finite bucket, in ``+Inf``: more than ``bound``,
    by how much the histogram cannot tell. ``bound`` is always finite, so no report made from
    one can hold ``inf``.
    """

    bound: float
    above: bool = False

    def __post_init__(self) -> None:
        if not math.isfinite(self.bound):
            raise ValueError(f"a bucket bound must be finite, not {self.bound}")

    def to_json(self) -> float | dict[str, float]:
        """The bound as a number, or ``{"above": bound}`` past the top bucket."""
        return {"above": self.bound} if self.above else self.bound

    @classmethod
    def from_json(cls, value: object) -> BucketBound:
        """The inverse of :meth:`to_json`."""
        if isinstance(value, dict) and set(value) == {"above"}:
            return cls(float(value["above"]), above=True)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return cls(float(value))
        raise ValueError(f"not a bucket bound: {value!r}")

    def __str__(self) -> str:
        return f"> {self.bound:g}" if self.above else f"<= {self.bound:g}"


def bucket_quantile(buckets: dict[float, float], fraction: float) -> BucketBound | None:
    """Where the ``fraction`` quantile of cumulative ``buckets`` lies (None: no observations).

    Past the top finite bucket it is ``above`` that bucket's bound, never ``inf``.
    """
    total = buckets.get(math.inf, 0.0)
    if not total > 0:
        return None
    finite = sorted(bound for bound in buckets if math.isfinite(bound))
    for bound in finite:
        if buckets[bound] >= fraction * total:
            return BucketBound(bound)
    # Only +Inf holds it; with no finite bucket at all, all that is known is "more than 0".
    return BucketBound(finite[-1] if finite else 0.0, above=True)


def percentile(values: list[float], fraction: float) -> float | None:
    """The ``fraction`` percentile of ``values`` (nearest rank; None: no values)."""
    ordered = sorted(values)
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def non_finite(value: object, where: str = "") -> list[str]:
    """The paths (``a.b[2]``) of every NaN or infinite float in a JSON-shaped ``value``."""
    if isinstance(value, float):
        return [] if math.isfinite(value) else [f"{where or 'value'} = {value}"]
    if isinstance(value, dict):
        return [
            path
            for key, item in value.items()
            for path in non_finite(item, f"{where}.{key}" if where else str(key))
        ]
    if isinstance(value, list | tuple):
        return [path for i, item in enumerate(value) for path in non_finite(item, f"{where}[{i}]")]
    return []


def require_finite(value: object, what: str) -> None:
    """Raise where a non-finite figure is made, not when the JSON holding it is written."""
    if found := non_finite(value):
        raise ValueError(f"{what}: not a finite figure: {', '.join(found)}")


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[BinaryIO]:
    """A file to write ``path``'s new content to, renamed over ``path`` once complete.

    An interrupted write (Ctrl-C, a crash, an exception) leaves the old file, or none, and
    never half a file. One writer per path: the temporary file is ``.<name>.<pid>.tmp``.
    """
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def write_atomically(path: Path, text: str) -> None:
    """``text`` into ``path`` whole or not at all (see :func:`atomic_file`)."""
    with atomic_file(path) as handle:
        handle.write(text.encode())


def entry_points_dir(directory: Path, distribution: str, entries: dict[str, str]) -> Path:
    """A directory to put on PYTHONPATH holding a distribution whose ``kubus.controllers``
    entry points are ``entries`` (name -> ``module:Class``): importlib.metadata finds
    ``*.dist-info`` directories on sys.path, so no package needs building."""
    info = directory / f"{distribution.replace('-', '_')}-0.1.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {distribution}\nVersion: 0.1\n")
    lines = "".join(f"{name} = {target}\n" for name, target in entries.items())
    (info / "entry_points.txt").write_text(f"[kubus.controllers]\n{lines}")
    return directory

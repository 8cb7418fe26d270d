"""What the benchmarks share: a throw-away NATS server and realistic Kubernetes objects."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec

from kubus.devstack import Binaries, default_cache_dir


@contextlib.contextmanager
def nats_server() -> Iterator[str]:
    """A JetStream-enabled nats-server on a free loopback port; yields its URL."""
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
    )
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
    return f"{os.cpu_count()} cores, Python {sys.version.split()[0]}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def dev_stack(nodes: int = 3) -> Iterator[dict[str, str]]:
    """A fresh infrastructure-only dev stack in a temporary dir; yields its env."""
    from kubus.devstack import DevStack, StackConfig

    state_dir = Path(tempfile.mkdtemp(prefix="kubus-bench-stack-"))
    stack = DevStack(
        StackConfig(
            state_dir=state_dir,
            binaries=Binaries(cache_dir=default_cache_dir(os.environ)),
            nodes=nodes,
            services=False,
        )
    )
    env = stack.up()
    try:
        yield env
    finally:
        stack.stop()
        shutil.rmtree(state_dir, ignore_errors=True)


@contextlib.contextmanager
def watcher_process(env: dict[str, str], *args: str) -> Iterator[subprocess.Popen[bytes]]:
    """`kubus watcher` against ``env``'s stack, ready (its /readyz answers ok)."""
    health = free_port()
    handle, log_name = tempfile.mkstemp(prefix="kubus-bench-watcher-", suffix=".log")
    with os.fdopen(handle, "wb") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "kubus.cli",
                "watcher",
                f"--kubeconfig={env['KUBECONFIG']}",
                f"--nats-url={env['NATS_URL']}",
                f"--health-probe-bind-address=127.0.0.1:{health}",
                "--metrics-bind-address=0",
                *args,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "OTEL_SDK_DISABLED": "true"},
        )
    try:
        wait_ready(process, health, what=f"watcher (log: {log_name})")
        yield process
    finally:
        process.terminate()
        process.wait(timeout=30)


def wait_ready(process: subprocess.Popen[bytes], health_port: int, *, what: str) -> None:
    """Until the process's /readyz answers; an exit or 60 s without it is an error."""
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{health_port}/readyz", timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError(f"{what} did not get ready") from None
            time.sleep(0.1)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]

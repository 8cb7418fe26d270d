"""Reconciler pools on the dev stack: N Deployments x R replicas to Available, per pool size.

For each pool size: a fresh infrastructure-only dev stack, one watcher and P reconcilers;
create the Deployments at once (spread over namespaces) and time until every one is
Available and complete. Reports wall time, event->reconcile latency (JetStream storage to
reconcile start, from the reconcilers' histogram) and peak RSS per reconciler.

Run: ``python -m bench.reconciler_scale [--deployments 100] [--replicas 5] [--pools 1,2]``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from bench.support import dev_stack, free_port, machine, peak_rss_mb, wait_ready, watcher_process

NAMESPACES = 10


def start_reconcilers(env: dict[str, str], prefix: str, count: int) -> list[tuple[Any, int]]:
    processes = []
    for index in range(count):
        health, metrics = free_port(), free_port()
        log = Path(tempfile.mkdtemp(prefix="kubus-bench-")) / f"reconciler-{index}.log"
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "kubus.cli",
                "reconciler",
                f"--kubeconfig={env['KUBECONFIG']}",
                f"--nats-url={env['NATS_URL']}",
                f"--bus-prefix={prefix}",
                f"--health-probe-bind-address=127.0.0.1:{health}",
                f"--metrics-bind-address=127.0.0.1:{metrics}",
            ],
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
            env={**os.environ, "OTEL_SDK_DISABLED": "true"},
        )
        processes.append((process, health, metrics))
    for process, health, _metrics in processes:
        wait_ready(process, health, what="a reconciler")
    return [(process, metrics) for process, _health, metrics in processes]


def latency_histogram(metrics_ports: list[int]) -> dict[float, float]:
    """Cumulative bucket counts of kubus_reconciler_event_latency_seconds, summed."""
    buckets: dict[float, float] = {}
    for port in metrics_ports:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            text = response.read().decode()
        for line in text.splitlines():
            if line.startswith("kubus_reconciler_event_latency_seconds_bucket"):
                bound = line.split('le="', 1)[1].split('"', 1)[0]
                value = float(line.rsplit(" ", 1)[1])
                key = float("inf") if bound == "+Inf" else float(bound)
                buckets[key] = buckets.get(key, 0.0) + value
    return buckets


def quantile(buckets: dict[float, float], fraction: float) -> float:
    total = buckets.get(float("inf"), 0.0)
    if not total:
        return float("nan")
    for bound in sorted(buckets):
        if buckets[bound] >= fraction * total:
            return bound
    return float("inf")


def run(deployments: int, replicas: int, pool: int) -> dict[str, Any]:
    from kubernetes import client, config

    with dev_stack(nodes=3) as env:
        prefix = "b" + uuid.uuid4().hex[:8]
        kube = config.new_client_from_config(config_file=env["KUBECONFIG"])
        apps, core = client.AppsV1Api(kube), client.CoreV1Api(kube)
        namespaces = [f"bench-{i}" for i in range(NAMESPACES)]
        for namespace in namespaces:
            core.create_namespace({"metadata": {"name": namespace}})
        with watcher_process(env, f"--bus-prefix={prefix}"):
            reconcilers = start_reconcilers(env, prefix, pool)
            try:
                started = time.monotonic()
                for index in range(deployments):
                    name = f"web-{index}"
                    apps.create_namespaced_deployment(
                        namespaces[index % NAMESPACES],
                        {
                            "metadata": {"name": name},
                            "spec": {
                                "replicas": replicas,
                                "selector": {"matchLabels": {"app": name}},
                                "template": {
                                    "metadata": {"labels": {"app": name}},
                                    "spec": {
                                        "containers": [
                                            {"name": "c", "image": "registry.example/c:1"}
                                        ]
                                    },
                                },
                            },
                        },
                    )
                deadline = time.monotonic() + 900
                while True:
                    items = apps.list_deployment_for_all_namespaces().items
                    done = sum(
                        1
                        for d in items
                        if d.metadata.namespace.startswith("bench-")
                        and (d.status.available_replicas or 0) == replicas
                        and (d.status.updated_replicas or 0) == replicas
                    )
                    if done == deployments:
                        break
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"only {done}/{deployments} deployments converged")
                    time.sleep(1)
                seconds = time.monotonic() - started
                buckets = latency_histogram([port for _p, port in reconcilers])
                rss = [peak_rss_mb(process.pid) for process, _port in reconcilers]
            finally:
                for process, _port in reconcilers:
                    process.terminate()
                for process, _port in reconcilers:
                    process.wait(timeout=60)
    return {
        "reconcilers": pool,
        "deployments": deployments,
        "replicas": replicas,
        "seconds_to_available": round(seconds, 1),
        "pods_per_s": round(deployments * replicas / seconds, 1),
        "event_to_reconcile_p50_s": quantile(buckets, 0.50),
        "event_to_reconcile_p99_s": quantile(buckets, 0.99),
        "peak_rss_mb_per_reconciler": [round(value, 1) for value in rss],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deployments", type=int, default=100)
    parser.add_argument("--replicas", type=int, default=5)
    parser.add_argument("--pools", default="1,2")
    args = parser.parse_args()
    results = []
    for pool in (int(p) for p in args.pools.split(",")):
        result = run(args.deployments, args.replicas, pool)
        results.append(result)
        print(
            f"{pool} reconciler(s): {args.deployments}x{args.replicas} available in "
            f"{result['seconds_to_available']}s ({result['pods_per_s']} pods/s); "
            f"event->reconcile p50 <= {result['event_to_reconcile_p50_s']}s, "
            f"p99 <= {result['event_to_reconcile_p99_s']}s; peak RSS "
            f"{result['peak_rss_mb_per_reconciler']} MiB",
            flush=True,
        )
    print(json.dumps({"benchmark": "reconciler_scale", "machine": machine(), "results": results}))


if __name__ == "__main__":
    main()

"""Reconciler pools on the dev stack: N Deployments x R replicas to Available, per pool size.

For each pool size: a fresh infrastructure-only dev stack, one watcher and P reconcilers;
create the Deployments at once (spread over namespaces) and time until every one is
Available and complete. Reports wall time, event->reconcile latency (JetStream storage to
reconcile start, from the reconcilers' histogram) and peak RSS per reconciler.
``kubus bench`` runs the same create phase (and more) side by side with kube-controller-manager.

Run: ``python -m bench.reconciler_scale [--deployments 100] [--replicas 5] [--pools 1,2]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from bench.compare.driver import Cluster, DeploymentDriver
from bench.compare.workload import Shape, Workload
from bench.support import (
    BucketBound,
    bucket_quantile,
    dev_stack,
    histogram_buckets,
    machine,
    peak_rss_mb,
    reconciler_processes,
    scrape_metrics,
    watcher_process,
)

NAMESPACES = 10


async def create_and_wait(env: dict[str, str], workload: Workload) -> float:
    """Seconds from creating the Deployments to all of them Available and complete."""

    async def tick() -> None:
        return None

    async with Cluster.connect(Path(env["KUBECONFIG"])) as cluster:
        shape = Shape.spread(NAMESPACES)
        await cluster.create_namespaces([shape])
        driver = DeploymentDriver(cluster, workload)
        run = await driver.create(shape, deadline=time.monotonic() + 900, tick=tick)
    if not run.ok:
        raise RuntimeError(f"not converged: {run.stuck[:3]}")
    return run.seconds


def run(deployments: int, replicas: int, pool: int) -> dict[str, Any]:
    workload = Workload(deployments, replicas)
    with dev_stack(nodes=3) as env:
        prefix = "b" + uuid.uuid4().hex[:8]
        log_dir = Path(tempfile.mkdtemp(prefix="kubus-bench-"))
        with (
            watcher_process(env, f"--bus-prefix={prefix}"),
            reconciler_processes(env, pool, f"--bus-prefix={prefix}", log_dir=log_dir) as pool_,
        ):
            seconds = asyncio.run(create_and_wait(env, workload))
            texts = [scrape_metrics(p.metrics_port) for p in pool_ if p.metrics_port]
            buckets = histogram_buckets(texts, "kubus_reconciler_event_latency_seconds")
            rss = [peak_rss_mb(p.pid) for p in pool_]
    return {
        "reconcilers": pool,
        "deployments": deployments,
        "replicas": replicas,
        "seconds_to_available": round(seconds, 1),
        "pods_per_s": round(workload.pods / seconds, 1),
        # A bucket bound, {"above": top bound} past the top bucket, or None: no reconcile.
        "event_to_reconcile_p50_s": _json(bucket_quantile(buckets, 0.50)),
        "event_to_reconcile_p99_s": _json(bucket_quantile(buckets, 0.99)),
        "peak_rss_mb_per_reconciler": [round(value, 1) for value in rss],
    }


def _json(bound: BucketBound | None) -> float | dict[str, float] | None:
    return None if bound is None else bound.to_json()


def _text(value: float | dict[str, float] | None) -> str:
    return "-" if value is None else str(BucketBound.from_json(value))


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
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
            f"event->reconcile p50 {_text(result['event_to_reconcile_p50_s'])} s, "
            f"p99 {_text(result['event_to_reconcile_p99_s'])} s; peak RSS "
            f"{result['peak_rss_mb_per_reconciler']} MiB",
            flush=True,
        )
    print(
        json.dumps(
            {"benchmark": "reconciler_scale", "machine": machine(), "results": results},
            allow_nan=False,
        )
    )


if __name__ == "__main__":
    main()

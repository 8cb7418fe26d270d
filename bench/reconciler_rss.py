"""Per-process RSS and start-to-ready time of a reconciler pool holding many pods and nodes.

10,000 pods (spread over 100 namespaces, so over all 32 partitions) and 100 nodes are written
onto the bus directly, as a watcher would have; then a pool of N reconcilers starts with a
controller that caches pods and nodes and reconciles nothing (``bench.cachecontroller``).
Every process must hold all nodes and about 1/N of the pods.

Run: ``python -m bench.reconciler_rss [--pods 10000] [--nodes 100] [--processes 4]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import tempfile
import time
import uuid
from pathlib import Path

import msgspec
import nats

from bench.cachecontroller import CacheOnly
from bench.support import (
    cached_objects,
    dev_stack,
    entry_points_dir,
    kubus_service,
    machine,
    peak_rss_mb,
    realistic_pod,
    scrape_metrics,
    stop_processes,
    wait_ready,
)
from bus.envelope import EventType
from bus.layout import BusLayout
from bus.streams import ensure_object_stream
from bus.subjects import ObjectRef, ResourceType

PODS = ResourceType("", "v1", "pods")
NODES = ResourceType("", "v1", "nodes")


def _node(index: int) -> dict[str, object]:
    name = f"kwok-node-{index:03d}"
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "uid": f"00000000-0000-4000-8000-{index:012d}",
            "resourceVersion": str(index + 1),
            "labels": {"kubernetes.io/hostname": name, "type": "kwok"},
        },
        "status": {"conditions": [{"type": "Ready", "status": "True"}]},
    }


async def publish(url: str, layout: BusLayout, pods: int, nodes: int) -> None:
    connection = await nats.connect(url)
    try:
        js = connection.jetstream()
        await ensure_object_stream(js, layout)
        pending = []
        objects: list[tuple[ObjectRef, dict[str, object]]] = [
            (ObjectRef(NODES, None, str(n["metadata"]["name"])), n)  # type: ignore[index]
            for n in map(_node, range(nodes))
        ]
        for index in range(pods):
            namespace = f"bench-{index % 100:03d}"
            pod = realistic_pod(index, 1000 + index, namespace)
            objects.append((ObjectRef(PODS, namespace, pod["metadata"]["name"]), pod))
        for ref, obj in objects:
            meta = obj["metadata"]
            headers = {
                "Kubus-Event": EventType.ADDED.value,
                "Kubus-Resource-Version": meta["resourceVersion"],  # type: ignore[index]
                "Kubus-Uid": meta["uid"],  # type: ignore[index]
            }
            pending.append(
                await js.publish_async(
                    layout.subject(ref), msgspec.json.encode(obj), headers=headers
                )
            )
            if len(pending) >= 256:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await connection.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pods", type=int, default=10_000)
    parser.add_argument("--nodes", type=int, default=100)
    parser.add_argument("--processes", type=int, default=4)
    args = parser.parse_args()
    prefix = "b" + uuid.uuid4().hex[:8]
    layout = BusLayout(prefix=prefix)
    work = Path(tempfile.mkdtemp(prefix="kubus-bench-rss-"))
    entry_points = entry_points_dir(
        work / "entry-points", "kubus-bench", {CacheOnly.name: "bench.cachecontroller:CacheOnly"}
    )
    with dev_stack(nodes=1) as env:
        started = time.monotonic()
        asyncio.run(publish(env["NATS_URL"], layout, args.pods, args.nodes))
        published = time.monotonic() - started
        os.environ["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(entry_points), os.environ.get("PYTHONPATH")])
        )
        began = time.monotonic()
        processes = [
            kubus_service(
                env,
                "reconciler",
                f"reconciler-{index}",
                f"--bus-prefix={prefix}",
                f"--controllers={CacheOnly.name}",
                log_dir=work,
            )
            for index in range(args.processes)
        ]
        try:
            ready_after = []
            for service in processes:
                wait_ready(service.process, service.health_port or 0, what=service.name)
                ready_after.append(round(time.monotonic() - began, 2))
            time.sleep(args.processes * 2 + 5)  # let rebalancing settle: partitions move once
            rows = []
            for service in processes:
                text = scrape_metrics(service.metrics_port or 0)
                rows.append(
                    {
                        "process": service.name,
                        "peak_rss_mb": round(peak_rss_mb(service.pid), 1),
                        "nodes_cached": cached_objects(text, "v1/nodes"),
                        "pods_cached": cached_objects(text, "v1/pods"),
                        "partitions": int(
                            float(
                                re.search(
                                    r"^kubus_reconciler_partitions_owned (\S+)", text, re.M
                                ).group(1)  # type: ignore[union-attr]
                            )
                        ),
                    }
                )
        finally:
            stop_processes(processes)
    result = {
        "benchmark": "reconciler_rss",
        "machine": machine(),
        "pods": args.pods,
        "nodes": args.nodes,
        "processes": args.processes,
        "publish_seconds": round(published, 1),
        "ready_after_seconds": ready_after,
        "per_process": rows,
    }
    for row in rows:
        print(
            f"{row['process']}: {row['peak_rss_mb']:.0f} MiB, {row['nodes_cached']} nodes, "
            f"{row['pods_cached']} pods, {row['partitions']} partitions"
        )
    print(f"ready after {ready_after} s from start")
    print(json.dumps(result, allow_nan=False))


if __name__ == "__main__":
    main()

"""Peak RSS of a watcher holding the watch state of many pods (default 10,000).

Pods are created through the apiserver, bound by kube-scheduler and run by kwok, so the
watcher sees each one come, get scheduled and turn Running, as it would in a cluster.

Run: ``python -m bench.watcher_rss [--pods 10000]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from pathlib import Path

import aiohttp
import nats

from bench.support import dev_stack, machine, peak_rss_mb, watcher_process
from bus.layout import BusLayout
from bus.subjects import ResourceType
from kubus.kube import load_kube_config

PODS = ResourceType("", "v1", "pods")


async def create_pods(env: dict[str, str], count: int) -> float:
    config = load_kube_config(Path(env["KUBECONFIG"]))
    headers = {"Content-Type": "application/json"}
    if auth := config.authorization():
        headers["Authorization"] = auth
    connector = aiohttp.TCPConnector(ssl=config.ssl_context, limit=50)
    started = time.monotonic()
    async with aiohttp.ClientSession(config.server, connector=connector, headers=headers) as http:
        await http.post("/api/v1/namespaces", json={"metadata": {"name": "bench"}})
        queue: asyncio.Queue[int] = asyncio.Queue()
        for index in range(count):
            queue.put_nowait(index)

        async def worker() -> None:
            while not queue.empty():
                index = queue.get_nowait()
                body = {
                    "metadata": {"name": f"pod-{index}", "labels": {"app": "bench"}},
                    "spec": {"containers": [{"name": "c", "image": "registry.example/c:1"}]},
                }
                async with http.post("/api/v1/namespaces/bench/pods", json=body) as response:
                    if response.status != 201:
                        raise RuntimeError(
                            f"pod-{index}: {response.status} {await response.text()}"
                        )

        await asyncio.gather(*(worker() for _ in range(50)))
    return time.monotonic() - started


async def pods_on_bus(env: dict[str, str], prefix: str) -> int:
    connection = await nats.connect(env["NATS_URL"])
    try:
        layout = BusLayout(prefix=prefix)
        info = await connection.jetstream().stream_info(
            layout.object_stream, subjects_filter=layout.resource_filter(PODS)
        )
        return len(info.state.subjects or {})
    finally:
        await connection.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pods", type=int, default=10_000)
    args = parser.parse_args()
    prefix = "b" + uuid.uuid4().hex[:8]
    with (
        dev_stack(nodes=3) as env,
        watcher_process(env, f"--bus-prefix={prefix}", "--resources=*") as watcher,
    ):
        idle = peak_rss_mb(watcher.pid)
        seconds = asyncio.run(create_pods(env, args.pods))
        deadline = time.monotonic() + 600
        while asyncio.run(pods_on_bus(env, prefix)) < args.pods:
            if time.monotonic() > deadline:
                raise RuntimeError("the pods did not all reach the bus within 10 minutes")
            time.sleep(1)
        time.sleep(5)  # let the scheduler and kwok updates flow through as well
        loaded = peak_rss_mb(watcher.pid)
    result = {
        "benchmark": "watcher_rss",
        "machine": machine(),
        "pods": args.pods,
        "create_seconds": round(seconds, 1),
        "idle_peak_rss_mb": round(idle, 1),
        "peak_rss_mb": round(loaded, 1),
    }
    print(
        f"watcher peak RSS: {idle:.0f} MiB idle, {loaded:.0f} MiB with {args.pods} pods "
        f"(created in {seconds:.0f}s)"
    )
    print(json.dumps(result, allow_nan=False))


if __name__ == "__main__":
    main()

"""Watch-to-bus latency on the dev stack: from a write's response to its state on the bus.

A driver patches ConfigMaps (round robin over enough objects that no state is coalesced) at a
fixed rate; a JetStream consumer timestamps each state as the stream stores it.

Run: ``python -m bench.watch_latency [--rates 200,1000] [--seconds 10]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import nats
from nats.aio.msg import Msg
from nats.js.api import DeliverPolicy

from bench.support import dev_stack, machine, percentile, watcher_process
from bus.envelope import Header
from bus.layout import BusLayout
from kubus.kube import load_kube_config

OBJECTS = 1000


async def measure(
    env: dict[str, str], prefix: str, rate: int, seconds: float
) -> dict[str, float | None]:
    config = load_kube_config(Path(env["KUBECONFIG"]))
    layout = BusLayout(prefix=prefix)
    connection = await nats.connect(env["NATS_URL"])
    stored: dict[tuple[str, str], float] = {}
    remaining: set[tuple[str, str]] | None = None
    all_stored = asyncio.Event()

    async def on_message(message: Msg) -> None:
        headers = message.headers or {}
        key = (message.subject.rsplit(".", 1)[1], headers[Header.RESOURCE_VERSION])
        stored[key] = time.monotonic()
        if remaining is not None:
            remaining.discard(key)
            if not remaining:
                all_stored.set()

    subscription = await connection.jetstream().subscribe(
        layout.object_subjects,
        cb=on_message,
        ordered_consumer=True,
        deliver_policy=DeliverPolicy.NEW,
        headers_only=True,
    )
    written: dict[tuple[str, str], float] = {}
    auth = config.authorization()
    headers = {"Content-Type": "application/merge-patch+json"}
    if auth:
        headers["Authorization"] = auth
    connector = aiohttp.TCPConnector(ssl=config.ssl_context, limit=64)
    async with aiohttp.ClientSession(config.server, connector=connector, headers=headers) as http:
        # Every value differs from every earlier one: a patch that changes nothing makes no
        # event, and would count as lost.
        async def patch(index: int, value: int) -> None:
            name = f"lat-{index}"
            async with http.patch(
                f"/api/v1/namespaces/bench/configmaps/{name}",
                data=json.dumps({"data": {"n": str(value)}}, allow_nan=False),
            ) as response:
                body = await response.json()
                written[(name, body["metadata"]["resourceVersion"])] = time.monotonic()

        total = int(rate * seconds)
        started = time.monotonic()
        tasks = []
        for count in range(total):
            delay = started + count / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(patch(count % OBJECTS, rate * 1_000_000 + count)))
        await asyncio.gather(*tasks)
        achieved = total / (time.monotonic() - started)
    remaining = set(written) - set(stored)
    if remaining:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(all_stored.wait(), timeout=30)
    await subscription.unsubscribe()
    await connection.close()
    latencies = [max(0.0, stored[key] - at) * 1000 for key, at in written.items() if key in stored]
    return {
        "rate": rate,
        "achieved_rate": round(achieved, 1),
        "changes": len(written),
        "on_bus": len(latencies),
        # None (null in the JSON): no change was seen on the bus at all.
        "p50_ms": _ms(percentile(latencies, 0.50)),
        "p99_ms": _ms(percentile(latencies, 0.99)),
        "max_ms": _ms(max(latencies, default=None)),
    }


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def create_objects(env: dict[str, str]) -> None:
    from kubernetes import client, config

    api_client = config.new_client_from_config(config_file=env["KUBECONFIG"])  # type: ignore[no-untyped-call]
    core: Any = client.CoreV1Api(api_client)
    core.create_namespace({"metadata": {"name": "bench"}})
    for index in range(OBJECTS):
        core.create_namespaced_config_map(
            "bench", {"metadata": {"name": f"lat-{index}"}, "data": {"n": "0"}}
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", default="200,1000")
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    results = []
    with dev_stack(nodes=1) as env:
        create_objects(env)
        prefix = "b" + uuid.uuid4().hex[:8]
        with watcher_process(env, f"--bus-prefix={prefix}", "--resources=v1/configmaps"):
            for rate in (int(r) for r in args.rates.split(",")):
                result = asyncio.run(measure(env, prefix, rate, args.seconds))
                results.append(result)
                print(
                    f"{rate:>5} changes/s (achieved {result['achieved_rate']}): "
                    f"p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms, "
                    f"{result['on_bus']}/{result['changes']} seen on the bus"
                )
    print(
        json.dumps(
            {"benchmark": "watch_latency", "machine": machine(), "results": results},
            allow_nan=False,
        )
    )


if __name__ == "__main__":
    main()

"""The watcher's publish path: decode + encode + publish with acks, from a recorded watch stream.

Compares, on one process and one core's worth of Python:
- ``plain``: a bare nats-py ``publish_async`` loop of the same payloads to a stream (the
  ceiling for any Python publisher);
- ``kubus``: each watch line through the watcher's own code (msgspec event decode, the
  ObjectEventFactory, the BusPublisher with compare-and-set, latest-wins and pipelining).

Run: ``python -m bench.watcher_publish [--pods 10000] [--events-per-pod 3]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import nats
from nats.js.api import StreamConfig

from bench.support import machine, nats_server, recorded_watch_stream
from bus.envelope import EventType
from bus.layout import BusLayout
from bus.streams import ensure_object_stream
from bus.subjects import ResourceType
from kubus.kube import ApiResource
from kubus.kube.client import decode_watch_event
from watcher.events import ObjectEventFactory
from watcher.publisher import BusPublisher

PODS = ResourceType("", "v1", "pods")


async def plain(url: str, payloads: list[bytes]) -> float:
    connection = await nats.connect(url)
    js = connection.jetstream()
    await js.add_stream(StreamConfig(name="PLAIN", subjects=["plain.>"], max_msgs_per_subject=1))
    started = time.perf_counter()
    acks = [
        await js.publish_async(f"plain.{index % 10_000}", payload)
        for index, payload in enumerate(payloads)
    ]
    await asyncio.gather(*acks)
    elapsed = time.perf_counter() - started
    await connection.close()
    return len(payloads) / elapsed


async def kubus(url: str, lines: list[bytes]) -> float:
    connection = await nats.connect(url)
    js = connection.jetstream()
    layout = BusLayout(prefix="bench")
    await ensure_object_stream(js, layout)
    publisher = BusPublisher(js, layout, tracer=None, tombstone_ttl=3600, max_in_flight=256)
    factory = ObjectEventFactory(
        api=ApiResource("", "v1", "pods", "Pod", True, frozenset()),
        resource=PODS,
        layout=layout,
        max_payload=connection.max_payload,
        known=publisher.known,
    )
    started = time.perf_counter()
    pending = []
    for line in lines:
        event = decode_watch_event(line)
        pending.append(await publisher.submit(factory(bytes(event.object), EventType(event.type))))
    await asyncio.gather(*pending)
    elapsed = time.perf_counter() - started
    await publisher.close()
    await connection.close()
    return len(lines) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pods", type=int, default=10_000)
    parser.add_argument("--events-per-pod", type=int, default=3)
    args = parser.parse_args()
    lines = recorded_watch_stream(args.pods, args.events_per_pod)
    payloads = [bytes(decode_watch_event(line).object) for line in lines]
    size = sum(len(p) for p in payloads) / len(payloads)
    with nats_server() as url:
        plain_rate = asyncio.run(plain(url, payloads))
    with nats_server() as url:
        kubus_rate = asyncio.run(kubus(url, lines))
    result = {
        "benchmark": "watcher_publish",
        "machine": machine(),
        "events": len(lines),
        "mean_object_bytes": round(size),
        "plain_publish_per_s": round(plain_rate),
        "kubus_events_per_s": round(kubus_rate),
        "kubus_vs_plain": round(kubus_rate / plain_rate, 2),
    }
    print(f"{len(lines)} watch events of {size:.0f}-byte pods on {machine()}")
    print(f"  plain nats-py publish_async loop : {plain_rate:>9,.0f} msgs/s")
    print(
        f"  kubus watcher publish path       : {kubus_rate:>9,.0f} events/s "
        f"({kubus_rate / plain_rate:.0%} of plain)"
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()

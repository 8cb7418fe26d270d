"""The watcher's publish path: decode + encode + publish with acks, from a recorded watch stream.

Compares, on one process and one core's worth of Python:
- ``plain``: a bare nats-py ``publish_async`` loop of the same payloads to a stream (the
  ceiling for any Python publisher);
- ``kubus``: each watch line through the watcher's own code (msgspec event decode, the
  ObjectEventFactory, the BusPublisher with compare-and-set, latest-wins and pipelining).

Run: ``python -m bench.watcher_publish [--pods 10000] [--events-per-pod 3] [--rounds 3]
[--no-pin]``.

By default (on a machine of two or more CPUs) nats-server runs on the last CPU and this process
on the others, as a watcher and its NATS server would on separate machines; otherwise the
server's threads take turns on the core of the process being measured. ``--no-pin`` leaves the
placement to the OS.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
from typing import NamedTuple

import nats
from nats.js.api import StreamConfig

from bench.support import machine, nats_server, recorded_watch_stream
from bus.envelope import EventType
from bus.layout import BusLayout
from bus.producer import JetStreamProducer
from bus.streams import ensure_object_stream
from bus.subjects import ResourceType
from kubus.kube import ApiResource
from kubus.kube.client import decode_watch_event
from kubus.service import tune_gc
from watcher.events import ObjectEventFactory
from watcher.publisher import BusPublisher

PODS = ResourceType("", "v1", "pods")
EVENT_TYPES = {event_type.value: event_type for event_type in EventType}  # as the watcher does


class Rate(NamedTuple):
    per_second: float
    cpu_us_per_event: float  # this process only; steadier than the rate on a shared machine


def _rate(count: int, wall: float, cpu: float) -> Rate:
    return Rate(count / wall, cpu / count * 1e6)


async def plain(url: str, payloads: list[bytes]) -> Rate:
    connection = await nats.connect(url)
    js = connection.jetstream()
    await js.add_stream(StreamConfig(name="PLAIN", subjects=["plain.>"], max_msgs_per_subject=1))
    started, cpu = time.perf_counter(), time.process_time()
    acks = [
        await js.publish_async(f"plain.{index % 10_000}", payload)
        for index, payload in enumerate(payloads)
    ]
    await asyncio.gather(*acks)
    rate = _rate(len(payloads), time.perf_counter() - started, time.process_time() - cpu)
    await connection.close()
    return rate


async def kubus(url: str, lines: list[bytes], max_in_flight: int) -> Rate:
    connection = await nats.connect(url)
    js = connection.jetstream()
    layout = BusLayout(prefix="bench")
    await ensure_object_stream(js, layout)
    producer = JetStreamProducer(url)
    await producer.start()
    publisher = BusPublisher(
        js, producer, layout, tracer=None, tombstone_ttl=3600, max_in_flight=max_in_flight
    )
    factory = ObjectEventFactory(
        api=ApiResource("", "v1", "pods", "Pod", True, frozenset()),
        resource=PODS,
        layout=layout,
        max_payload=connection.max_payload,
        known=publisher.known,
    )
    started, cpu = time.perf_counter(), time.process_time()
    pending = []
    for line in lines:
        event = decode_watch_event(line)
        object_event = factory(event.raw, EVENT_TYPES[event.type], event.object)
        pending.append(await publisher.submit(object_event))
    # Not gather(), which puts a callback on each of the 30,000 futures: the watcher's
    # checkpoints only look at them. Most are done by now; awaiting those costs nothing.
    for future in pending:
        await future
    rate = _rate(len(lines), time.perf_counter() - started, time.process_time() - cpu)
    await publisher.close()
    await producer.close()
    await connection.close()
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pods", type=int, default=10_000)
    parser.add_argument("--events-per-pod", type=int, default=3)
    parser.add_argument("--max-in-flight", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3, help="report the median of this many")
    parser.add_argument(
        "--pin",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="nats-server on the last CPU, this process on the others (default: on)",
    )
    args = parser.parse_args()
    cpus = sorted(os.sched_getaffinity(0))
    server_cpus: set[int] | None = None
    if args.pin and len(cpus) >= 2:
        server_cpus = {cpus[-1]}
        os.sched_setaffinity(0, set(cpus[:-1]))
    tune_gc()  # both loops run with the watcher service's GC settings
    lines = recorded_watch_stream(args.pods, args.events_per_pod)
    payloads = [decode_watch_event(line).raw for line in lines]
    size = sum(len(p) for p in payloads) / len(payloads)
    plains, kubuses = [], []
    for _ in range(args.rounds):
        with nats_server(server_cpus) as url:
            plains.append(asyncio.run(plain(url, payloads)))
        with nats_server(server_cpus) as url:
            kubuses.append(asyncio.run(kubus(url, lines, args.max_in_flight)))
    plain_rate = Rate(*(statistics.median(values) for values in zip(*plains, strict=True)))
    kubus_rate = Rate(*(statistics.median(values) for values in zip(*kubuses, strict=True)))
    result = {
        "benchmark": "watcher_publish",
        "machine": machine(),
        "events": len(lines),
        "mean_object_bytes": round(size),
        "rounds": args.rounds,
        "nats_server_cpus": sorted(server_cpus) if server_cpus else "any",
        "plain_publish_per_s": round(plain_rate.per_second),
        "plain_cpu_us_per_event": round(plain_rate.cpu_us_per_event, 1),
        "kubus_events_per_s": round(kubus_rate.per_second),
        "kubus_cpu_us_per_event": round(kubus_rate.cpu_us_per_event, 1),
        "kubus_vs_plain": round(kubus_rate.per_second / plain_rate.per_second, 2),
    }
    placement = f"nats-server on CPU {sorted(server_cpus)}" if server_cpus else "unpinned"
    print(
        f"{len(lines)} watch events of {size:.0f}-byte pods on {machine()}, median of "
        f"{args.rounds}, {placement}"
    )
    print(
        f"  plain nats-py publish_async loop : {plain_rate.per_second:>9,.0f} msgs/s   "
        f"{plain_rate.cpu_us_per_event:5.1f} us CPU each"
    )
    share = kubus_rate.per_second / plain_rate.per_second
    print(
        f"  kubus watcher publish path       : {kubus_rate.per_second:>9,.0f} events/s "
        f"{kubus_rate.cpu_us_per_event:5.1f} us CPU each ({share:.0%} of plain)"
    )
    print(json.dumps(result, allow_nan=False))


if __name__ == "__main__":
    main()

"""The watcher process: connect, provision the bus, run one ResourceWatcher per resource."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import nats
from nats.aio.client import Client as NatsClient

from bus.connect import connect_nats
from bus.errors import BusError
from bus.producer import JetStreamProducer
from bus.streams import StreamSettings, ensure_bucket, ensure_object_stream
from kubus.kube import KubeClient, load_kube_config
from kubus.serving import Check, ProbeServer
from kubus.telemetry import setup_tracing, shutdown_tracing
from watcher.config import WatcherConfig
from watcher.publisher import BusPublisher
from watcher.resource_watcher import ResourceWatcher

__all__ = ["WatcherError", "run_watcher"]

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 30.0


class WatcherError(Exception):
    """The watcher cannot start; the message says why."""


async def run_watcher(
    config: WatcherConfig, *, stop: asyncio.Event, serving: asyncio.Event | None = None
) -> None:
    tracer = setup_tracing("kubus-watcher")
    kube_config = load_kube_config(config.kubeconfig)
    nc = await _connect(config.nats_url)
    try:
        js = nc.jetstream()
        await ensure_object_stream(
            js, config.layout, StreamSettings(replicas=config.stream_replicas)
        )
        checkpoints = await ensure_bucket(js, config.layout.watcher_bucket)
        async with KubeClient(kube_config) as kube:
            apis = [
                await kube.discover(resource.group, resource.version, resource.resource)
                for resource in config.resources
            ]
            try:
                producer = JetStreamProducer(config.nats_url, name="kubus-watcher-publisher")
                await producer.start()
            except BusError as error:
                raise WatcherError(str(error)) from error
            publisher = BusPublisher(
                js,
                producer,
                config.layout,
                tracer=tracer,
                tombstone_ttl=config.tombstone_ttl,
                max_in_flight=config.max_in_flight,
            )
            held = await publisher.load(config.resources)
            log.info(
                "the bus holds %d objects of the %d watched resources", held, len(config.resources)
            )
            watchers = [
                ResourceWatcher(
                    api=api,
                    resource=resource,
                    kube=kube,
                    publisher=publisher,
                    checkpoints=checkpoints,
                    layout=config.layout,
                    max_payload=nc.max_payload,
                )
                for api, resource in zip(apis, config.resources, strict=True)
            ]
            probes = ProbeServer(health=config.health, metrics=config.metrics)
            probes.add_liveness("ping", lambda: None)
            probes.add_readiness(
                "nats",
                lambda: (
                    None if nc.is_connected and producer.is_connected else "not connected to NATS"
                ),
            )
            for watcher in watchers:
                probes.add_readiness(f"synced:{watcher.resource}", _synced(watcher))
            await probes.start()
            if serving is not None:
                serving.set()
            try:
                async with asyncio.TaskGroup() as group:
                    tasks = [group.create_task(watcher.run()) for watcher in watchers]
                    await stop.wait()
                    log.info("stopping: %d watches", len(tasks))
                    for task in tasks:
                        task.cancel()
            finally:
                await publisher.close()
                await producer.close()
                await probes.stop()
    finally:
        await _close(nc)
        shutdown_tracing()


def _synced(watcher: ResourceWatcher) -> Check:
    return lambda: None if watcher.synced.is_set() else "initial list not finished"


async def _connect(url: str) -> NatsClient:
    # Bounded, one line, no credentials: the URL is shown as ServerUrl prints it.
    try:
        return await connect_nats(url, name="kubus-watcher", within=CONNECT_TIMEOUT)
    except BusError as failure:
        raise WatcherError(str(failure)) from None


async def _close(nc: NatsClient) -> None:
    # Not drain(): every publish is acknowledged by now, and drain waits up to 30 s.
    with contextlib.suppress(nats.errors.Error, TimeoutError, OSError):
        await nc.flush(timeout=2)
    await nc.close()

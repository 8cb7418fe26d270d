"""The watcher process: connect, provision the bus, discover, and supervise the watches."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl

import nats
from nats.aio.client import Client as NatsClient

from bus.connect import connect_nats
from bus.errors import BusError
from bus.producer import JetStreamProducer
from bus.streams import StreamSettings, ensure_bucket, ensure_object_stream
from bus.subjects import ResourceType
from kubus.kube import ApiResource, Discovery, KubeClient, discover_all, load_kube_config
from kubus.serving import ProbeServer
from kubus.telemetry import setup_tracing, shutdown_tracing
from watcher.config import WatcherConfig
from watcher.publisher import BusPublisher
from watcher.supervisor import WatchSupervisor

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
    nc = await _connect(config.nats_url, config.nats_tls)
    try:
        js = nc.jetstream()
        await ensure_object_stream(
            js, config.layout, StreamSettings(replicas=config.stream_replicas)
        )
        checkpoints = await ensure_bucket(
            js, config.layout.watcher_bucket, replicas=config.stream_replicas
        )
        async with KubeClient(kube_config) as kube:
            discovery = await discover_all(kube)
            initial = _initial_resources(config, discovery)
            try:
                producer = JetStreamProducer(
                    config.nats_url, name="kubus-watcher-publisher", tls=config.nats_tls
                )
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
            if config.resources.everything:  # one replay, rather than one per resource
                held = await publisher.load_filter(config.layout.object_subjects)
            else:
                held = await publisher.load(initial)
            log.info("the bus holds %d objects; watching %d resources", held, len(initial))
            supervisor = WatchSupervisor(
                selection=config.resources,
                kube=kube,
                publisher=publisher,
                checkpoints=checkpoints,
                layout=config.layout,
                max_payload=nc.max_payload,
                mirror_secrets=config.mirror_secrets,
                rediscover_every=config.rediscover_every,
            )
            probes = ProbeServer(health=config.health, metrics=config.metrics)
            probes.add_liveness("ping", lambda: None)
            probes.add_readiness(
                "nats",
                lambda: (
                    None if nc.is_connected and producer.is_connected else "not connected to NATS"
                ),
            )
            for resource in initial:
                probes.add_readiness(f"synced:{resource}", supervisor.synced_check(resource))
            await probes.start()
            if serving is not None:
                serving.set()
            try:
                async with asyncio.TaskGroup() as group:
                    supervising = group.create_task(supervisor.run(discovery, initial))
                    await stop.wait()
                    log.info("stopping: %d watches", len(supervisor.watched))
                    supervising.cancel()
            finally:
                await publisher.close()
                await producer.close()
                await probes.stop()
    finally:
        await _close(nc)
        shutdown_tracing()


def _initial_resources(
    config: WatcherConfig, discovery: Discovery
) -> dict[ResourceType, ApiResource]:
    """What ``--resources`` resolves to now; a named resource that cannot be watched is an
    error, a group version that discovery cannot describe only a warning under ``all``."""
    resolution = config.resources.resolve(discovery)
    problems = [
        *(f"the apiserver serves no resource {r}" for r in resolution.unknown),
        *(f"{r} cannot be listed and watched" for r in resolution.unwatchable),
        *(f"discovery of {r} failed ({why})" for r, why in resolution.undiscovered.items()),
    ]
    if problems:
        raise WatcherError(
            "--resources: "
            + "; ".join(problems)
            + " ('kubectl api-resources' lists what it serves)"
        )
    if config.resources.everything and discovery.failed:
        log.warning(
            "discovery cannot describe %s now; their resources are watched once it can",
            ", ".join(f"{g}/{v}" if g else v for g, v in sorted(discovery.failed)),
        )
    if not resolution.watch:
        raise WatcherError("--resources: nothing the apiserver serves is selected")
    return resolution.watch


async def _connect(url: str, tls: ssl.SSLContext | None) -> NatsClient:
    # Bounded, one line, no credentials: the URL is shown as ServerUrl prints it.
    try:
        return await connect_nats(url, name="kubus-watcher", within=CONNECT_TIMEOUT, tls=tls)
    except BusError as failure:
        raise WatcherError(str(failure)) from None


async def _close(nc: NatsClient) -> None:
    # Not drain(): every publish is acknowledged by now, and drain waits up to 30 s.
    with contextlib.suppress(nats.errors.Error, TimeoutError, OSError):
        await nc.flush(timeout=2)
    await nc.close()

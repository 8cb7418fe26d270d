"""The reconciler process: partitions, cache, work queues and controllers wired together.

Like controller-runtime's manager: it owns the shared cache and clients, starts the
controllers' workers, serves probes and metrics, and stops everything in order on SIGTERM
(stop pulling, finish in-flight reconciles, hand the partitions back).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import socket
import time
import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import nats
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from opentelemetry import propagate, trace
from opentelemetry.trace import Link, SpanKind, Tracer

from bus.connect import connect_nats
from bus.envelope import Envelope
from bus.errors import BusError
from bus.layout import BusLayout
from bus.streams import ensure_bucket, ensure_object_stream
from bus.subjects import ObjectRef, ResourceType, partition_of
from kubus.kube import ApiResource, ConflictError, KubeClient, load_kube_config
from kubus.logs import log_context
from kubus.serving import BindAddress, ProbeServer
from kubus.telemetry import HeaderGetter, setup_tracing, shutdown_tracing
from reconcilers import metrics
from reconcilers.cache import ObjectCache
from reconcilers.controller import Context, Controller, Request, Scope, TerminalError
from reconcilers.events import EventRecorder
from reconcilers.ownership import LeaseTiming, PartitionOwnership
from reconcilers.partition import PartitionRunner
from reconcilers.workqueue import ShutDown, WorkQueue

__all__ = ["Manager", "ManagerConfig", "ManagerError"]

log = logging.getLogger(__name__)
_getter = HeaderGetter()
CONNECT_TIMEOUT = 30.0


class ManagerError(Exception):
    """The reconciler cannot start; the message says why."""


@dataclass(frozen=True)
class ManagerConfig:
    nats_url: str
    pool: str
    controllers: tuple[type[Any], ...]
    layout: BusLayout = field(default_factory=BusLayout)
    kubeconfig: Path | None = None
    concurrency: dict[str, int] = field(default_factory=dict)
    kube_api_qps: float = 20.0
    kube_api_burst: int = 30
    timing: LeaseTiming = field(default_factory=LeaseTiming)
    health: BindAddress | None = None
    metrics: BindAddress | None = None
    member: str = field(default_factory=lambda: f"{socket.gethostname()}-{uuid.uuid4().hex[:6]}")
    # JSON lines of every reconcile (member, controller, key, start, end): an audit trail for
    # checking that no key is ever reconciled by two processes at once.
    audit_log: Path | None = None
    feature_gates: dict[str, bool] = field(default_factory=dict)


@dataclass
class _Waiting:
    """A delivery waiting for the reconciles of the requests it made."""

    message: Msg
    envelope: Envelope
    remaining: int


class _Acks:
    """A message is acknowledged once every request it made has been reconciled after it."""

    def __init__(self) -> None:
        self._waiting: dict[tuple[str, Request], list[_Waiting]] = defaultdict(list)

    def track(self, message: Msg, envelope: Envelope, keys: Sequence[tuple[str, Request]]) -> None:
        entry = _Waiting(message, envelope, len(keys))
        for key in keys:
            self._waiting[key].append(entry)

    def take(self, key: tuple[str, Request]) -> list[_Waiting]:
        return self._waiting.pop(key, [])

    def put_back(self, key: tuple[str, Request], entries: list[_Waiting]) -> None:
        if entries:
            self._waiting[key][:0] = entries

    def forget_partition(self, partition: int, layout: BusLayout) -> None:
        for key in [k for k in self._waiting if _partition(k[1], layout) == partition]:
            del self._waiting[key]


class _Running(NamedTuple):
    """An owned partition's runner and the task running it."""

    runner: PartitionRunner
    task: asyncio.Task[None]


async def _stop(running: _Running) -> None:
    """Stop a partition's runner and wait until it has ended, cancelling again if a
    cancellation was swallowed (see PartitionRunner.stop)."""
    running.runner.stop()
    while not running.task.done():
        running.task.cancel()
        await asyncio.wait({running.task}, timeout=1.0)
    if not running.task.cancelled():
        running.task.exception()  # mark it retrieved: _run_partition logged it already


def _partition(request: Request, layout: BusLayout) -> int:
    return partition_of(request.namespace, request.name, layout.partitions)


class Manager:
    def __init__(self, config: ManagerConfig) -> None:
        self._config = config
        self._layout = config.layout
        self._cache = ObjectCache()
        self._acks = _Acks()
        self._runners: dict[int, _Running] = {}
        self._replayed: dict[int, asyncio.Event] = {}
        self._controllers: dict[str, Controller] = {}
        self._queues: dict[str, WorkQueue[Request]] = {}
        self._reads: dict[ResourceType, list[str]] = defaultdict(list)
        self._tracer: Tracer | None = None
        self._ownership: PartitionOwnership | None = None
        self._js: Any = None
        # Reconciles in flight per partition: a partition is handed back only once it is idle,
        # so that its next owner never works on a key this process is still working on.
        self._busy: dict[int, int] = defaultdict(int)
        self._settled = asyncio.Condition()
        self._audit = config.audit_log.open("a") if config.audit_log else None
        metrics.MEMBER.labels(config.member, config.pool).set(1)

    async def run(self, stop: asyncio.Event, serving: asyncio.Event | None = None) -> None:
        config = self._config
        self._tracer = setup_tracing("kubus-reconciler")
        nc = await _connect(config.nats_url, config.member)
        try:
            js = nc.jetstream()
            self._js = js
            await ensure_object_stream(js, self._layout)
            members = await ensure_bucket(
                js,
                f"{self._layout.prefix}-{config.pool}-members",
                ttl_seconds=config.timing.lease_duration,
            )
            leases = await ensure_bucket(
                js,
                f"{self._layout.prefix}-{config.pool}-leases",
                ttl_seconds=config.timing.lease_duration,
            )
            kube_config = load_kube_config(config.kubeconfig)
            async with KubeClient(
                kube_config,
                qps=config.kube_api_qps,
                burst=config.kube_api_burst,
                tracer=self._tracer,
            ) as kube:
                events = EventRecorder(kube, host=config.member)
                context = Context(
                    cache=self._cache,
                    kube=kube,
                    apis=await self._discover(kube),
                    events=events,
                    tracer=self._tracer,
                    feature_gates=dict(config.feature_gates),
                )
                for controller_type in config.controllers:
                    # A write rate limit per controller, as kcm's client per controller has.
                    own_client = kube.with_rate_limit(config.kube_api_qps, config.kube_api_burst)
                    controller: Controller = controller_type(
                        dataclasses.replace(context, kube=own_client)
                    )
                    self._controllers[controller.name] = controller
                    self._queues[controller.name] = WorkQueue(controller.name)
                    for resource in controller.reads:
                        self._reads[resource].append(controller.name)
                self._ownership = PartitionOwnership(
                    member=config.member,
                    members=members,
                    leases=leases,
                    partitions=self._layout.partitions,
                    timing=config.timing,
                    on_acquired=self._start_partition,
                    on_lost=self._stop_partition,
                )
                probes = ProbeServer(health=config.health, metrics=config.metrics)
                probes.add_liveness("ping", lambda: None)
                probes.add_readiness("partitions", self._readiness)
                await probes.start()
                if serving is not None:
                    serving.set()
                try:
                    await self._serve(stop, events)
                finally:
                    await probes.stop()
        finally:
            await _close(nc)
            shutdown_tracing()

    async def _serve(self, stop: asyncio.Event, events: EventRecorder) -> None:
        assert self._ownership is not None
        async with asyncio.TaskGroup() as group:
            workers = [
                group.create_task(self._work(name, queue))
                for name, queue in self._queues.items()
                for _ in range(self._concurrency(name))
            ]
            sender = group.create_task(events.run())
            owning = group.create_task(self._ownership.run())
            await stop.wait()
            log.info("stopping: no more pulls, then in-flight reconciles, then partitions")
            await asyncio.gather(*(_stop(running) for running in self._runners.values()))
            for queue in self._queues.values():
                await queue.shut_down_with_drain()
            await asyncio.gather(*workers, return_exceptions=True)
            owning.cancel()
            await asyncio.gather(owning, return_exceptions=True)
            events.close()  # send what the last reconciles recorded, within a bound
            try:
                await asyncio.wait_for(asyncio.shield(sender), timeout=5)
            except TimeoutError:
                sender.cancel()

    def _concurrency(self, name: str) -> int:
        controller = self._controllers[name]
        return self._config.concurrency.get(name, controller.default_concurrency)

    async def _discover(self, kube: KubeClient) -> dict[ResourceType, ApiResource]:
        needed: set[ResourceType] = {ResourceType("", "v1", "pods")}
        for controller_type in self._config.controllers:
            needed.update(controller_type.reads)
        apis = {}
        for resource in sorted(needed):
            apis[resource] = await kube.discover(
                resource.group, resource.version, resource.resource
            )
        return apis

    # --- partitions ---------------------------------------------------------------------

    async def _start_partition(self, partition: int) -> None:
        runner = PartitionRunner(
            partition=partition,
            js=self._js,
            layout=self._layout,
            pool=self._config.pool,
            deliver=self._deliver,
            replayed=self._replayed_partition,
            wanted=lambda ref: ref.resource in self._reads,
        )
        self._replayed[partition] = runner.replayed
        self._runners[partition] = _Running(
            runner, asyncio.get_running_loop().create_task(self._run_partition(runner))
        )
        metrics.PARTITIONS_OWNED.set(len(self._runners))

    async def _run_partition(self, runner: PartitionRunner) -> None:
        try:
            await runner.run()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("partition %d: runner failed", runner.partition)
            raise

    async def _stop_partition(self, partition: int) -> None:
        running = self._runners.pop(partition, None)  # from now on no reconcile starts for it
        self._replayed.pop(partition, None)
        if running is not None:
            await _stop(running)
        async with self._settled:
            try:
                await asyncio.wait_for(
                    self._settled.wait_for(lambda: self._busy[partition] == 0),
                    timeout=self._config.timing.renew_deadline,
                )
            except TimeoutError:
                log.error("partition %d: in-flight reconciles did not finish in time", partition)
        self._cache.drop_partition(partition)
        self._acks.forget_partition(partition, self._layout)
        # Per-key controller state (expectations) of a partition may be stale by the time it
        # comes back: start such keys afresh, as a new process would.
        for controller in self._controllers.values():
            forget = getattr(controller, "forget", None)
            if forget is not None:
                forget(lambda request: _partition(request, self._layout) == partition)
        metrics.PARTITIONS_OWNED.set(len(self._runners))
        with contextlib.suppress(KeyError):
            metrics.CONSUMER_LAG.remove(str(partition))

    def _readiness(self) -> str | None:
        if self._ownership is None or not self._ownership.live_members:
            return "partition ownership not settled yet"
        waiting = [p for p, replayed in self._replayed.items() if not replayed.is_set()]
        return f"replaying partitions {waiting}" if waiting else None

    def _deliver(
        self, partition: int, ref: ObjectRef, envelope: Envelope, message: Msg | None
    ) -> bool:
        """Apply to the cache and queue the requests; True if ``message`` awaits them."""
        previous = self._cache.apply(partition, ref, envelope)
        metrics.CACHED_OBJECTS.set(len(self._cache))
        if message is None:
            return False  # replayed: requests are made once the partition is whole
        current = (
            None if envelope.deleted else self._cache.get(ref.resource, ref.namespace, ref.name)
        )
        keys = self._enqueue(ref, current, previous)
        if keys:
            self._acks.track(message, envelope, keys)
            return True
        return False

    def _replayed_partition(self, partition: int, refs: list[ObjectRef]) -> None:
        for ref in refs:
            current = self._cache.get(ref.resource, ref.namespace, ref.name)
            if current is not None:
                self._enqueue(ref, current, None)

    def _enqueue(
        self, ref: ObjectRef, current: dict[str, Any] | None, previous: dict[str, Any] | None
    ) -> list[tuple[str, Request]]:
        keys: list[tuple[str, Request]] = []
        for name in self._reads.get(ref.resource, ()):
            for request in self._controllers[name].requests_for(ref.resource, current, previous):
                queue = self._queues[name]
                queue.add(request)
                metrics.WORKQUEUE_ADDS.labels(name).inc()
                metrics.WORKQUEUE_DEPTH.labels(name).set(len(queue))
                keys.append((name, request))
        return keys

    # --- workers ------------------------------------------------------------------------

    async def _work(self, name: str, queue: WorkQueue[Request]) -> None:
        controller = self._controllers[name]
        while True:
            try:
                request = await queue.get()
            except ShutDown:
                return
            metrics.WORKQUEUE_DEPTH.labels(name).set(len(queue))
            since = queue.queued_since(request)
            if since is not None:
                metrics.WORKQUEUE_LATENCY.labels(name).observe(time.monotonic() - since)
            try:
                await self._reconcile(name, controller, queue, request)
            finally:
                queue.done(request)

    async def _reconcile(
        self, name: str, controller: Controller, queue: WorkQueue[Request], request: Request
    ) -> None:
        key = (name, request)
        partition = _partition(request, self._layout)
        if controller.scope is Scope.PARTITIONED and partition not in self._runners:
            self._acks.take(key)
            queue.forget(request)
            return
        self._busy[partition] += 1
        try:
            await self._reconcile_owned(name, controller, queue, request, key)
        finally:
            self._busy[partition] -= 1
            async with self._settled:
                self._settled.notify_all()

    async def _reconcile_owned(
        self,
        name: str,
        controller: Controller,
        queue: WorkQueue[Request],
        request: Request,
        key: tuple[str, Request],
    ) -> None:
        waiting = self._acks.take(key)
        started = time.monotonic()
        now = time.time()
        for entry in waiting:
            stored = entry.message.metadata.timestamp
            if stored is not None:
                metrics.EVENT_LATENCY.labels(name).observe(max(0.0, now - stored.timestamp()))
        wall_start = time.time()
        with log_context(controller=name, key=request.key):
            try:
                with self._span(name, request, waiting):
                    result = await controller.reconcile(request)
            except TerminalError as error:
                log.error("%s: %s: %s (not retried)", name, request.key, error)
                queue.forget(request)
            except Exception as error:
                metrics.RECONCILE_ERRORS.labels(name).inc()
                metrics.WORKQUEUE_RETRIES.labels(name).inc()
                # A conflict means the cache was a hop behind a write: routine, retried at once.
                level = logging.INFO if isinstance(error, ConflictError) else logging.WARNING
                log.log(
                    level,
                    "%s: sync %s failed: %s",
                    name,
                    request.key,
                    error,
                    exc_info=log.isEnabledFor(logging.DEBUG),
                )
                self._acks.put_back(key, waiting)
                queue.add_rate_limited(request)
                return
            else:
                queue.forget(request)
                if result.requeue_after is not None:
                    queue.add_after(request, result.requeue_after)
            finally:
                metrics.RECONCILE_DURATION.labels(name).observe(time.monotonic() - started)
                if self._audit is not None:
                    self._audit.write(
                        json.dumps(
                            {
                                "member": self._config.member,
                                "controller": name,
                                "key": request.key,
                                "start": wall_start,
                                "end": time.time(),
                            }
                        )
                        + "\n"
                    )
                    self._audit.flush()
        for entry in waiting:
            entry.remaining -= 1
            if entry.remaining == 0:
                await entry.message.ack()

    def _span(self, name: str, request: Request, waiting: list[_Waiting]) -> Any:
        if self._tracer is None:
            return _NoSpan()
        contexts = [
            propagate.extract({"traceparent": entry.envelope.traceparent}, getter=_getter)
            for entry in waiting
            if entry.envelope.traceparent
        ]
        parent = contexts[-1] if contexts else None
        links = [
            Link(trace.get_current_span(context).get_span_context()) for context in contexts[:-1]
        ]
        return self._tracer.start_as_current_span(
            f"reconcile {name}",
            context=parent,
            kind=SpanKind.CONSUMER,
            links=links,
            attributes={
                "kubus.controller": name,
                "k8s.object.key": request.key,
                "kubus.member": self._config.member,
            },
        )


class _NoSpan:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *_exc: object) -> None:
        return None


async def _connect(url: str, member: str) -> NatsClient:
    # Bounded, one line, no credentials: the URL is shown as ServerUrl prints it.
    try:
        return await connect_nats(url, name=f"kubus-reconciler-{member}", within=CONNECT_TIMEOUT)
    except BusError as failure:
        raise ManagerError(str(failure)) from None


async def _close(nc: NatsClient) -> None:
    # Not drain(): acknowledgements are sent already, and drain waits up to 30 s.
    with contextlib.suppress(nats.errors.Error, TimeoutError, OSError):
        await nc.flush(timeout=2)
    await nc.close()

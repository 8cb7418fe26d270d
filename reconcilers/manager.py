"""The reconciler process: partitions, caches, work queues and controllers wired together.

Like controller-runtime's manager: it owns the caches and clients, starts the controllers'
workers, serves probes and metrics, and stops everything in order on SIGTERM (stop pulling,
finish in-flight reconciles, hand the partitions and leaderships back).

What each controller sees:

- a partitioned controller reads the shared cache: the namespaced objects of the partitions
  this process holds (or holds a shard of, :mod:`reconcilers.shards`), plus every
  cluster-scoped object of the kinds any controller here reads (followed across all partitions
  by every process);
- a global controller, while this process leads it, reads a cache of its own holding every
  object of what it reads (:mod:`reconcilers.leading`).

Every loop that can fail (a partition's runner, a follower) runs under a :class:`Supervised`
that restarts it with backoff and makes the process not ready while it is down.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import socket
import ssl
import uuid
from collections import defaultdict
from collections.abc import Callable, Container, Hashable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from bus.connect import connect_nats
from bus.deadletter import ensure_dead_letter_stream
from bus.envelope import Envelope
from bus.errors import BusError
from bus.layout import BusLayout
from bus.streams import StreamSettings, ensure_bucket, ensure_object_stream
from bus.subjects import ObjectRef, ResourceType
from kubus.kube import ApiResource, KubeApiError, KubeClient, load_kube_config
from kubus.serving import BindAddress, ProbeServer
from kubus.telemetry import setup_tracing, shutdown_tracing
from reconcilers import metrics
from reconcilers.acks import AckTracker, WorkKey
from reconcilers.cache import CLUSTER, ObjectCache
from reconcilers.controller import EVERY_RESOURCE, Context, Controller, NotStarted, Request, Scope
from reconcilers.events import EventRecorder
from reconcilers.follower import StreamFollower
from reconcilers.leader import LeaderElection
from reconcilers.leading import GlobalControllers
from reconcilers.ownership import LeaseTiming, PartitionOwnership, ShardingMismatch
from reconcilers.partition import PartitionRunner
from reconcilers.shards import Sharding
from reconcilers.supervisor import Running, first_replay, serving, stop_task, supervise
from reconcilers.worker import InFlight, Worker
from reconcilers.workqueue import WorkQueue

__all__ = ["Manager", "ManagerConfig", "ManagerError"]

log = logging.getLogger(__name__)
CONNECT_TIMEOUT = 30.0


class ManagerError(Exception):
    """The reconciler cannot start; the message says why."""


@dataclass(frozen=True)
class ManagerConfig:
    nats_url: str  # one server or a comma-separated list
    pool: str
    controllers: tuple[type[Controller], ...]
    layout: BusLayout = field(default_factory=BusLayout)
    # --partition-shards: each partition's keys split into this many separately leased units.
    partition_shards: int = 1
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
    # Per controller name: its own flags' values (Controller.flags), by flag name.
    options: dict[str, dict[str, Any]] = field(default_factory=dict)
    connect_timeout: float = CONNECT_TIMEOUT
    # --nats-tls-ca: what TLS connections to NATS are verified with (None: the system store).
    nats_tls: ssl.SSLContext | None = None
    # JetStream replicas of the pool's buckets and the dead-letter stream (and of the object
    # stream, if it does not exist yet: the watcher owns its settings once it does).
    stream_replicas: int = 1


class Manager:
    def __init__(self, config: ManagerConfig) -> None:
        self._config = config
        self._layout = config.layout
        self._cache = ObjectCache()
        self._acks = AckTracker()
        self._in_flight = InFlight()
        self._sharding = Sharding(config.layout.partitions, config.partition_shards)
        self._units: set[int] = set()  # the units (partition shards) this process works on
        self._partitions: dict[int, Running] = {}  # runners of the partitions those are in
        self._controllers: dict[str, Controller] = {}
        self._queues: dict[str, WorkQueue[Request]] = {}
        # Partitioned controllers by the resources they read (from the shared cache).
        self._reads: dict[ResourceType, list[str]] = defaultdict(list)
        self._reads_everything: list[str] = []
        self._cluster_scoped: set[ResourceType] = set()
        self._globals = GlobalControllers(self._layout, self._idle)
        self._cluster: Running | None = None
        self._ownership: PartitionOwnership | None = None
        self._election: LeaderElection | None = None
        self._js: JetStreamContext | None = None
        self._max_payload = 1024 * 1024
        self._audit = config.audit_log.open("a") if config.audit_log else None
        metrics.MEMBER.labels(config.member, config.pool).set(1)
        metrics.CACHED_OBJECTS.add(self._cache_counts)

    async def run(self, stop: asyncio.Event, serving: asyncio.Event | None = None) -> None:
        config = self._config
        tracer = setup_tracing("kubus-reconciler")
        nc = await _connect(
            config.nats_url, config.member, config.connect_timeout, tls=config.nats_tls
        )
        # Only once connected: a start that fails on bad input says so in one line.
        log.info(
            "member %s of pool %s starting",
            config.member,
            config.pool,
            extra={"member": config.member, "pool": config.pool},
        )
        try:
            js = nc.jetstream()
            self._js = js
            self._globals.js = js
            self._max_payload = nc.max_payload
            replicas = config.stream_replicas
            await ensure_object_stream(
                js, self._layout, StreamSettings(replicas=replicas), update=False
            )
            await ensure_dead_letter_stream(js, self._layout, replicas=replicas)
            members = await self._bucket(js, "members")
            leases = await self._bucket(js, "leases")
            leaders = await self._bucket(js, "leaders")
            kube_config = load_kube_config(config.kubeconfig)
            async with KubeClient(
                kube_config, qps=config.kube_api_qps, burst=config.kube_api_burst, tracer=tracer
            ) as kube:
                events = EventRecorder(kube, host=config.member)
                await self._prepare(kube)
                apis = await self._discover(kube)
                self._cluster_scoped = {r for r, api in apis.items() if not api.namespaced}
                context = Context(
                    cache=self._cache,
                    kube=kube,
                    apis=apis,
                    events=events,
                    tracer=tracer,
                    feature_gates=dict(config.feature_gates),
                    gate_defaults=_gate_defaults(config.controllers),
                )
                workers = self._build(context, kube, tracer)
                self._ownership = PartitionOwnership(
                    member=config.member,
                    members=members,
                    leases=leases,
                    partitions=self._layout.partitions,
                    shards=self._sharding.shards,
                    timing=config.timing,
                    on_acquired=self._start_unit,
                    on_lost=self._stop_unit,
                )
                try:
                    await self._ownership.join()
                except ShardingMismatch as mismatch:
                    raise ManagerError(f"pool {config.pool}: {mismatch}") from None
                if self._globals.names:
                    self._election = LeaderElection(
                        member=config.member,
                        leaders=leaders,
                        controllers=self._globals.names,
                        timing=config.timing,
                        on_started_leading=self._globals.start_leading,
                        on_stopped_leading=self._globals.stop_leading,
                    )
                probes = ProbeServer(health=config.health, metrics=config.metrics)
                probes.add_liveness("ping", lambda: None)
                probes.add_readiness("partitions", self._readiness)
                await probes.start()
                if serving is not None:
                    serving.set()
                try:
                    await self._serve(stop, events, workers)
                finally:
                    await probes.stop()
        finally:
            await _close(nc)
            shutdown_tracing()

    async def _bucket(self, js: JetStreamContext, what: str) -> KeyValue:
        """A bucket of the pool's, whose keys expire after the lease duration."""
        return await ensure_bucket(
            js,
            f"{self._layout.prefix}-{self._config.pool}-{what}",
            ttl_seconds=self._config.timing.lease_duration,
            replicas=self._config.stream_replicas,
        )

    def _build(self, context: Context, kube: KubeClient, tracer: Any) -> list[Worker]:
        """Instantiate the controllers, each with its own client and queue."""
        config = self._config
        workers = []
        for controller_type in config.controllers:
            name = controller_type.name
            is_global = controller_type.scope is Scope.GLOBAL
            own = dataclasses.replace(
                context,
                # A write rate limit per controller, as kcm's client per controller has.
                kube=kube.with_rate_limit(config.kube_api_qps, config.kube_api_burst),
                cache=self._globals.cache_for(name) if is_global else self._cache,
                options=dict(config.options.get(name, {})),
            )
            try:
                controller = controller_type(own)
            except NotStarted as reason:
                log.warning("%s is disabled: %s", name, reason)
                self._globals.discard(name)
                continue
            self._controllers[name] = controller
            queue: WorkQueue[Request] = WorkQueue(name)
            self._queues[name] = queue
            if is_global:
                self._globals.add(name, controller, queue)
            if not is_global:
                for resource in controller_type.reads:
                    if resource == EVERY_RESOURCE:
                        self._reads_everything.append(name)
                    else:
                        self._reads[resource].append(name)
            workers.append(
                Worker(
                    name=name,
                    controller=controller,
                    queue=queue,
                    acks=self._acks,
                    responsible=self._responsible_for(name, is_global),
                    in_flight=self._in_flight,
                    member=config.member,
                    tracer=tracer,
                    audit=self._audit,
                )
            )
        return workers

    async def _serve(
        self, stop: asyncio.Event, events: EventRecorder, workers: list[Worker]
    ) -> None:
        assert self._ownership is not None
        async with asyncio.TaskGroup() as group:
            loops = [
                group.create_task(worker.run())
                for worker in workers
                for _ in range(self._concurrency(worker.name))
            ]
            sender = group.create_task(events.run())
            # Cluster-scoped objects first, so partition handlers find their cluster owners.
            self._cluster = supervise("cluster-scoped cache", self._cluster_follower)
            await first_replay(self._cluster, stop)
            owning = group.create_task(self._ownership.run())
            electing = group.create_task(self._election.run()) if self._election else None
            await stop.wait()
            log.info("stopping: no more pulls, then in-flight reconciles, then partitions")
            self._ownership.stop_acquiring()
            await asyncio.gather(*(stop_task(*running) for running in self._partitions.values()))
            for queue in self._queues.values():
                await queue.shut_down_with_drain()
            await asyncio.gather(*loops, return_exceptions=True)
            for task in (owning, electing):
                if task is not None:
                    task.cancel()
                    await asyncio.gather(task, return_exceptions=True)
            await stop_task(*self._cluster)
            events.close()  # send what the last reconciles recorded, within a bound
            try:
                await asyncio.wait_for(asyncio.shield(sender), timeout=5)
            except TimeoutError:
                sender.cancel()

    def _concurrency(self, name: str) -> int:
        controller = self._controllers[name]
        return self._config.concurrency.get(name, controller.default_concurrency)

    async def _prepare(self, kube: KubeClient) -> None:
        """Run each controller's optional ``prepare(kube)`` hook (an operator installing its
        CRD) before discovery looks for what it reads."""
        for controller_type in self._config.controllers:
            prepare = getattr(controller_type, "prepare", None)
            if prepare is None:
                continue
            try:
                await prepare(kube)
            except (KubeApiError, TimeoutError, ValueError) as error:
                raise ManagerError(f"{controller_type.name}: {error}") from None

    async def _discover(self, kube: KubeClient) -> dict[ResourceType, ApiResource]:
        needed: set[ResourceType] = {ResourceType("", "v1", "pods")}
        for controller_type in self._config.controllers:
            needed.update(r for r in controller_type.reads if r != EVERY_RESOURCE)
        apis = {}
        for resource in sorted(needed):
            apis[resource] = await kube.discover(
                resource.group, resource.version, resource.resource
            )
        return apis

    def _responsible_for(self, name: str, is_global: bool) -> Callable[[Request], Hashable | None]:
        if is_global:
            return self._globals.responsible(name)

        def owned(request: Request) -> Hashable | None:
            unit = self._unit(request)
            return unit if unit in self._units else None

        return owned

    # --- cluster-scoped objects ---------------------------------------------------------

    def _cluster_follower(self) -> StreamFollower:
        assert self._js is not None
        if self._reads_everything:
            filters = [self._layout.cluster_scoped_filter(ResourceType("*", "*", "*"))]
        else:
            filters = [
                self._layout.cluster_scoped_filter(r)
                for r in sorted(self._cluster_scoped)
                if r in self._reads
            ]
        return StreamFollower(
            name="cluster-scoped cache",
            js=self._js,
            layout=self._layout,
            filters=filters,
            deliver=self._deliver_cluster_scoped,
            replayed=self._replayed_refs,
        )

    def _deliver_cluster_scoped(self, ref: ObjectRef, envelope: Envelope, replaying: bool) -> None:
        previous = self._cache.apply(CLUSTER, ref, envelope)
        if not replaying:
            self._enqueue(ref, self._current(self._cache, ref, envelope), previous)

    def _replayed_refs(self, refs: list[ObjectRef]) -> None:
        for ref in refs:
            current = self._cache.get(ref.resource, ref.namespace, ref.name)
            if current is not None:
                self._enqueue(ref, current, None)

    # --- partitions ---------------------------------------------------------------------

    def _wanted(self, ref: ObjectRef) -> bool:
        """What a partition runner caches: namespaced objects of the kinds read here
        (cluster-scoped ones come from the cluster-scoped follower)."""
        return ref.namespace is not None and (
            bool(self._reads_everything) or ref.resource in self._reads
        )

    def _partition_filters(self, partition: int) -> list[str]:
        """The subjects of a partition this pool reads: one per namespaced kind its
        controllers read, so that NATS never sends (nor waits for acks of) the rest; the whole
        partition for a pool with a controller that reads everything."""
        if self._reads_everything or not self._reads:
            return [self._layout.partition_filter(partition)]
        return [
            self._layout.resource_filter(resource, partition)
            for resource in sorted(self._reads)
            if resource not in self._cluster_scoped
        ] or [self._layout.partition_filter(partition)]

    async def _start_unit(self, unit: int) -> None:
        """Work on a unit: the runner of its partition started, or, when one already runs
        for another unit of the partition here, the unit's requests made from the cache."""
        self._units.add(unit)
        partition = self._sharding.partition(unit)
        running = self._partitions.get(partition)
        if running is None:
            await self._start_partition(partition)
        elif serving(running):
            self._request_partition(partition, self._cache.refs(partition), only={unit})
        # else the runner's replay, when it ends, makes the requests of every unit held then

    async def _stop_unit(self, unit: int) -> None:
        """Stop work on a unit, and on its partition if no other unit of it is held here."""
        self._units.discard(unit)  # from now on no reconcile of it starts
        partition = self._sharding.partition(unit)
        if not any(u in self._units for u in self._sharding.units_of(partition)):
            await self._stop_partition(unit)
            return

        def in_unit(request: Request) -> bool:
            return self._unit(request) == unit

        # The partition is still followed here: deliveries that waited only for this unit's
        # requests are acknowledged (its next holder makes them from its own replay). At
        # once, before a worker can drop them as no longer its own.
        settled = self._acks.release(in_unit)
        for message in settled:
            with contextlib.suppress(NatsError, TimeoutError):
                await message.ack()
        if not await self._idle(unit):
            log.error("%s: in-flight reconciles did not finish in time", self._describe(unit))
        for name, controller in self._controllers.items():
            if name not in self._globals:
                controller.forget(in_unit)

    async def _start_partition(self, partition: int) -> None:
        def make() -> PartitionRunner:
            assert self._js is not None
            runner = PartitionRunner(
                partition=partition,
                js=self._js,
                layout=self._layout,
                pool=self._config.pool,
                deliver=self._deliver,
                replayed=self._replayed_partition,
                wanted=self._wanted,
                filters=self._partition_filters(partition),
                # Shared with the holders of the partition's other shards: a consumer each.
                reader=self._config.member if self._sharding.shards > 1 else None,
            )
            runner.max_payload = self._max_payload
            return runner

        async def restarted() -> None:
            # The new runner recreates the consumer: deliveries of the old one are void.
            self._acks.forget(lambda request: self._partition_of(request) == partition)

        self._partitions[partition] = supervise(
            f"partition {partition}", make, on_restart=restarted
        )
        metrics.PARTITIONS_OWNED.set(len(self._partitions))

    async def _stop_partition(self, unit: int) -> None:
        """Stop the partition's runner after its last unit held here (``unit``) was let go."""
        partition = self._sharding.partition(unit)
        running = self._partitions.pop(partition, None)
        if running is not None:
            await stop_task(*running)
        if not await self._idle(unit):
            log.error("%s: in-flight reconciles did not finish in time", self._describe(unit))
        self._cache.drop_partition(partition)

        def in_partition(request: Request) -> bool:
            return self._partition_of(request) == partition

        self._acks.forget(in_partition)
        # Per-key controller state (expectations) of a partition may be stale by the time it
        # comes back: start such keys afresh, as a new process would.
        for name, controller in self._controllers.items():
            if name not in self._globals:
                controller.forget(in_partition)
        metrics.PARTITIONS_OWNED.set(len(self._partitions))
        with contextlib.suppress(KeyError):
            metrics.CONSUMER_LAG.remove(str(partition))

    async def _idle(self, shard: Hashable) -> bool:
        """Wait, within the renew deadline, until no reconcile of ``shard`` runs."""
        try:
            async with asyncio.timeout(self._config.timing.renew_deadline):
                await self._in_flight.idle(shard)
        except TimeoutError:
            return False
        return True

    def _deliver(
        self, partition: int, ref: ObjectRef, envelope: Envelope, message: Msg | None
    ) -> bool:
        """Apply to the cache and queue the requests; True if ``message`` awaits them."""
        previous = self._cache.apply(partition, ref, envelope)
        if message is None:
            return False  # replayed: requests are made once the partition is whole
        # A redelivery (the ack wait passed, a nak): its keys keep their backoff instead of
        # a retry at once.
        redelivered = (message.metadata.num_delivered or 1) > 1
        keys = self._enqueue(
            ref, self._current(self._cache, ref, envelope), previous, backoff=redelivered
        )
        if not keys:
            return False
        self._acks.track(message, envelope, keys)
        return True

    def _replayed_partition(self, partition: int, refs: list[ObjectRef]) -> None:
        self._request_partition(partition, refs, only=self._units)

    def _request_partition(
        self, partition: int, refs: Iterable[ObjectRef], *, only: Container[int]
    ) -> None:
        """The requests of a partition's objects, as after an informer's initial list, for
        the units in ``only``."""
        for ref in refs:
            current = self._cache.get(ref.resource, ref.namespace, ref.name)
            if current is not None:
                self._enqueue(ref, current, None, only=only)
        # Cluster-scoped objects make requests for namespaced work too (a Namespace: its
        # `default` ServiceAccount): those of this partition, dropped while another process
        # owned it (or before any was owned), are made now.
        mine = [unit for unit in self._sharding.units_of(partition) if unit in only]
        for ref in self._cache.refs(CLUSTER):
            current = self._cache.get(ref.resource, ref.namespace, ref.name)
            if current is not None:
                self._enqueue(ref, current, None, only=mine)

    def _enqueue(
        self,
        ref: ObjectRef,
        current: dict[str, Any] | None,
        previous: dict[str, Any] | None,
        *,
        backoff: bool = False,
        only: Container[int] | None = None,
    ) -> list[WorkKey]:
        """Requests of the partitioned controllers reading ``ref``'s kind; those of other
        processes' units are left to them (and, with ``only``, those of units not in it)."""
        keys: list[WorkKey] = []
        names = self._reads.get(ref.resource, [])
        if self._reads_everything:
            names = [*names, *self._reads_everything]
        for name in names:
            queue = self._queues[name]
            for request in self._controllers[name].requests_for(ref.resource, current, previous):
                unit = self._unit(request)
                if unit not in self._units or (only is not None and unit not in only):
                    continue
                if backoff:
                    queue.add_rate_limited(request)
                else:
                    queue.add(request)
                metrics.WORKQUEUE_ADDS.labels(name).inc()
                keys.append((name, request))
            metrics.WORKQUEUE_DEPTH.labels(name).set(len(queue))
        return keys

    @staticmethod
    def _current(cache: ObjectCache, ref: ObjectRef, envelope: Envelope) -> dict[str, Any] | None:
        return None if envelope.deleted else cache.get(ref.resource, ref.namespace, ref.name)

    def _unit(self, request: Request) -> int:
        return self._sharding.unit_of(request.namespace, request.name)

    def _partition_of(self, request: Request) -> int:
        return self._sharding.partition(self._unit(request))

    def _describe(self, unit: int) -> str:
        return self._sharding.describe(unit)

    # --- probes and metrics ---------------------------------------------------------------

    def _readiness(self) -> str | None:
        if self._cluster is None or not serving(self._cluster):
            return "cluster-scoped cache not replayed yet"
        if self._ownership is not None and self._ownership.misconfigured is not None:
            return self._ownership.misconfigured
        if self._ownership is None or not self._ownership.live_members:
            return "partition ownership not settled yet"
        if self._election is not None and not self._election.settled:
            return "leader election of the global controllers not settled yet"
        problems = []
        down = [p for p, running in sorted(self._partitions.items()) if not serving(running)]
        if down:
            problems.append(f"partitions not serving (replaying or restarting): {down}")
        problems.extend(self._globals.problems())
        if self._cluster.work.down_since is not None:
            problems.append(f"cluster-scoped cache down: {self._cluster.work.last_error}")
        return "; ".join(problems) or None

    def _cache_counts(self) -> Iterable[tuple[str, str, int]]:
        for resource, count in self._cache.counts().items():
            yield "shared", resource.label, count
        yield from self._globals.cache_counts()


def _gate_defaults(controllers: Iterable[type[Controller]]) -> dict[str, bool]:
    defaults: dict[str, bool] = {}
    for controller in controllers:
        defaults.update(controller.feature_gates)
    return defaults


async def _connect(
    url: str, member: str, within: float, *, tls: ssl.SSLContext | None = None
) -> NatsClient:
    # Bounded, one line, no credentials: the URL is shown as ServerUrl prints it.
    try:
        return await connect_nats(url, name=f"kubus-reconciler-{member}", within=within, tls=tls)
    except BusError as failure:
        raise ManagerError(str(failure)) from None


async def _close(nc: NatsClient) -> None:
    # Not drain(): acknowledgements are sent already, and drain waits up to 30 s.
    with contextlib.suppress(NatsError, TimeoutError, OSError):
        await nc.flush(timeout=2)
    # Bounded: nats-py's close can wait for ever on a transport that does not close.
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(nc.close(), timeout=5)

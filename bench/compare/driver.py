"""The harness's side of each phase: the writes that start it and the polls that end it.

:class:`DeploymentDriver` drives a controller contender (Deployments; the controllers make the
ReplicaSets and pods). :class:`PodDriver` is the ceiling: it writes the pods itself, as fast as
the apiserver accepts them, from a thread of its own whose CPU time is the ceiling's cost.

A phase ends when a poll finds the shape converged (its time is when that poll's list
started), or at the deadline, with one line per object still stuck. Between polls ``tick``
runs: the harness samples metrics there and raises if a contender's process died.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import msgspec

from bench.compare.workload import (
    IMAGE_NEW,
    IMAGE_OLD,
    LABEL,
    DeploymentView,
    PodView,
    ReplicaSetView,
    Shape,
    Workload,
    create_latencies,
    deployment_manifest,
    deployments_not_converged,
    pod_manifest,
    pods_not_ready,
    update_latencies,
)
from kubus.kube import (
    AlreadyExistsError,
    ApiResource,
    KubeClient,
    KubeConfig,
    NotFoundError,
    load_kube_config,
)

__all__ = [
    "Cluster",
    "DeploymentDriver",
    "Driver",
    "PhaseRun",
    "PodDriver",
    "Tick",
    "bounded",
    "converge",
    "poll_interval",
]

T = TypeVar("T", bound=msgspec.Struct)
Tick = Callable[[], Awaitable[None]]

# Writes the harness keeps in flight at once: "at once" for the controllers' workload, and
# the ceiling's concurrency (more only queues in the apiserver's max-in-flight limit).
IN_FLIGHT = 64
# At most this many stuck objects are named in a report.
STUCK_SHOWN = 20


@dataclass
class PhaseRun:
    """What the harness saw of one phase."""

    ok: bool
    seconds: float
    stuck: list[str] = field(default_factory=list)
    # Event -> reconcile latencies from object timestamps (whole seconds); None: not measured.
    timestamp_latencies: list[float] | None = None
    # The ceiling's own writes: CPU seconds of the thread that made them.
    client_cpu_seconds: float | None = None


class Cluster:
    """The harness's apiserver client: unthrottled writes, reads filtered by shape label."""

    def __init__(self, kube: KubeClient, config: KubeConfig, resources: dict[str, ApiResource]):
        self.kube = kube
        self.config = config
        self.resources = resources

    @classmethod
    @contextlib.asynccontextmanager
    async def connect(cls, kubeconfig: Path) -> AsyncIterator[Cluster]:
        config = load_kube_config(kubeconfig)
        async with KubeClient(config, timeout=60) as kube:
            resources = {
                "deployments": await kube.discover("apps", "v1", "deployments"),
                "statefulsets": await kube.discover("apps", "v1", "statefulsets"),
                "controllerrevisions": await kube.discover("apps", "v1", "controllerrevisions"),
                "jobs": await kube.discover("batch", "v1", "jobs"),
                "replicasets": await kube.discover("apps", "v1", "replicasets"),
                "pods": await kube.discover("", "v1", "pods"),
                "namespaces": await kube.discover("", "v1", "namespaces"),
                "serviceaccounts": await kube.discover("", "v1", "serviceaccounts"),
            }
            yield cls(kube, config, resources)

    async def create_namespaces(self, shapes: list[Shape]) -> None:
        """Each with its ``default`` ServiceAccount, made here: the ServiceAccount admission
        plugin refuses pods without it, and no contender is timed on making it."""
        for shape in shapes:
            for namespace in shape.namespaces:
                await self.kube.create(
                    self.resources["namespaces"], None, {"metadata": {"name": namespace}}
                )
                # Made already, when a contender runs a serviceaccount controller.
                with contextlib.suppress(AlreadyExistsError):
                    await self.kube.create(
                        self.resources["serviceaccounts"],
                        namespace,
                        {"metadata": {"name": "default"}},
                    )

    async def list(self, resource: str, view: type[T], shape: Shape) -> list[T]:
        """Every object of ``resource`` labelled with ``shape``, decoded as ``view``."""
        decoder = msgspec.json.Decoder(view)
        found: list[T] = []
        continue_token: str | None = None
        while True:
            page = await self.kube.list_page(
                self.resources[resource], limit=2000, continue_token=continue_token
            )
            for raw in page.items:
                item = decoder.decode(raw)
                if item.metadata.labels.get(LABEL) == shape.name:  # type: ignore[attr-defined]
                    found.append(item)
            continue_token = page.metadata.continue_
            if not continue_token:
                return found


class Driver(Protocol):
    """A workload's phases, called by name (Workload.phases); a Job's have no ``update``."""

    async def create(self, shape: Shape, *, deadline: float, tick: Tick) -> PhaseRun: ...
    async def delete(self, shape: Shape, *, deadline: float, tick: Tick) -> PhaseRun: ...


async def bounded(calls: list[Coroutine[Any, Any, Any]]) -> None:
    """Await ``calls`` with at most IN_FLIGHT running at once."""
    gate = asyncio.Semaphore(IN_FLIGHT)

    async def one(call: Coroutine[Any, Any, Any]) -> None:
        async with gate:
            await call

    async with asyncio.TaskGroup() as group:
        for call in calls:
            group.create_task(one(call))


async def converge(
    check: Callable[[], Awaitable[list[str]]],
    *,
    started: float,
    deadline: float,
    interval: float,
    tick: Tick,
) -> PhaseRun:
    while True:
        polled = time.monotonic()
        stuck = await check()
        if not stuck:
            return PhaseRun(ok=True, seconds=max(polled - started, 1e-3))
        if time.monotonic() > deadline:
            shown = stuck[:STUCK_SHOWN]
            if len(stuck) > STUCK_SHOWN:
                shown.append(f"... and {len(stuck) - STUCK_SHOWN} more")
            return PhaseRun(ok=False, seconds=time.monotonic() - started, stuck=shown)
        await tick()
        # Short phases need fine polls; long ones ease off to ``interval``.
        await asyncio.sleep(min(interval, 0.05 + 0.02 * (time.monotonic() - started)))


def poll_interval(workload: Workload) -> float:
    """Polls cost the apiserver a list each; at scale, poll less often."""
    return 0.2 if workload.pods <= 2000 else 1.0


Manifest = Callable[[str, Shape, int, str], dict[str, Any]]
Check = Callable[[], Awaitable[list[str]]]


class ControllerDriver:
    """Objects of one kind for a controller contender to reconcile: made from ``manifest``
    (name, shape, replicas, image), rolled to IMAGE_NEW by a patch of their pod template, and
    deleted in the background, done once nothing of ``leftover_kinds`` is left (the garbage
    collector takes what they owned)."""

    resource: str
    leftover_kinds: tuple[tuple[str, type[Any]], ...]

    def __init__(self, cluster: Cluster, workload: Workload) -> None:
        self._cluster = cluster
        self._workload = workload
        self._interval = poll_interval(workload)

    async def _create_all(self, shape: Shape, manifest: Manifest) -> float:
        """Create every object of ``shape``; the monotonic time the phase started."""
        kube, resource = self._cluster.kube, self._cluster.resources[self.resource]
        replicas = self._workload.replicas
        started = time.monotonic()
        await bounded(
            [
                kube.create(resource, namespace, manifest(name, shape, replicas, IMAGE_OLD))
                for namespace, name in self._workload.names(shape)
            ]
        )
        return started

    async def _roll_all(self, shape: Shape) -> tuple[float, dict[str, float]]:
        """Patch every object's container image to IMAGE_NEW; the phase's start and, per
        object uid, the wall time its patch was sent."""
        kube, resource = self._cluster.kube, self._cluster.resources[self.resource]
        patched_at: dict[str, float] = {}
        patch = {
            "spec": {"template": {"spec": {"containers": [{"name": "web", "image": IMAGE_NEW}]}}}
        }

        async def roll(namespace: str, name: str) -> None:
            at = time.time()
            result = await kube.patch(resource, namespace, name, patch, patch_type="strategic")
            patched_at[result["metadata"]["uid"]] = at

        started = time.monotonic()
        await bounded([roll(namespace, name) for namespace, name in self._workload.names(shape)])
        return started, patched_at

    async def _converge(
        self, check: Check, *, started: float, deadline: float, tick: Tick
    ) -> PhaseRun:
        return await converge(
            check, started=started, deadline=deadline, interval=self._interval, tick=tick
        )

    async def delete(self, shape: Shape, *, deadline: float, tick: Tick) -> PhaseRun:
        kube, resource = self._cluster.kube, self._cluster.resources[self.resource]
        started = time.monotonic()
        await bounded(
            [
                kube.delete(resource, namespace, name, propagation="Background")
                for namespace, name in self._workload.names(shape)
            ]
        )
        return await self._converge(
            lambda: self._leftovers(shape), started=started, deadline=deadline, tick=tick
        )

    async def _leftovers(self, shape: Shape) -> list[str]:
        left: list[str] = []
        for resource, view in self.leftover_kinds:
            items: list[Any] = await self._cluster.list(resource, view, shape)
            left.extend(
                f"{resource[:-1]} {item.metadata.namespace}/{item.metadata.name}: not deleted"
                for item in items
            )
        return left


class DeploymentDriver(ControllerDriver):
    """Deployments for a controller contender to reconcile."""

    resource = "deployments"
    leftover_kinds = (
        ("deployments", DeploymentView),
        ("replicasets", ReplicaSetView),
        ("pods", PodView),
    )

    async def create(self, shape: Shape, *, deadline: float, tick: Tick) -> PhaseRun:
        started = await self._create_all(shape, deployment_manifest)
        run = await self._converge(
            lambda: self._rollout_stuck(shape, IMAGE_OLD),
            started=started,
            deadline=deadline,
            tick=tick,
        )
        if run.ok:
            run.timestamp_latencies = create_latencies(
                await self._cluster.list("deployments", DeploymentView, shape),
                await self._cluster.list("replicasets", ReplicaSetView, shape),
                await self._cluster.list("pods", PodView, shape),
            )
        return run

    async def update(self, shape: Shape, *, deadline: float, tick: Tick) -> PhaseRun:
        started, patched_at = await self._roll_all(shape)
        run = await self._converge(
            lambda: self._rollout_stuck(shape, IMAGE_NEW),
            started=started,
            deadline=deadline,
            tick=tick,
        )
        if run.ok:
            run.timestamp_latencies = update_latencies(
                patched_at,
                await self._cluster.list("replicasets", ReplicaSetView, shape),
                image=IMAGE_NEW,
            )
        return run

    async def _rollout_stuck(self, shape: Shape, image: str) -> list[str]:
        return deployments_not_converged(
            await self._cluster.list("deployments", DeploymentView, shape),
            set(self._workload.names(shape)),
            replicas=self._workload.replicas,
            image=image,
        )


class PodDriver:
    """The ceiling: the same pods written directly, no controller in between."""

    def __init__(self, cluster: Cluster, workload: Workload) -> None:
        self._cluster = cluster
        self._workload = workload
        self._interval = poll_interval(workload)
        self._generation: dict[str, int] = {}

    def _pods(self, shape: Shape, generation: int) -> list[tuple[str, str, str]]:
        """(namespace, pod name, app) of every pod of ``shape`` in ``generation``."""
        suffix = "" if generation == 0 else f"-g{generation}"
        return [
            (namespace, f"{app}-{replica}{suffix}", app)
            for namespace, app in self._workload.names(shape)
            for replica in range(self._workload.replicas)
        ]

    async def create(self, shape: Shape, *, deadline: float, tick: Tick) -> PhaseRun:
        self._generation[shape.name] = 0
        new = self._pods(shape, 0)
        return await self._write_and_wait(
            shape,
            lambda kube, pods: [
                kube.create(pods, ns, pod_manifest(name, app, shape, IMAGE_OLD))
                for ns, name, app in new
            ],
            ready={(ns, name) for ns, name, _app in new},
            image=IMAGE_OLD,
            deadline=deadline,
            tick=tick,
        )

    async def update(self, shape: Shape, *, deadline: float, tick: Tick) -> PhaseRun:
        generation = self._generation[shape.name]
        old, new = self._pods(shape, generation), self._pods(shape, generation + 1)
        self._generation[shape.name] = generation + 1
        return await self._write_and_wait(
            shape,
            lambda kube, pods: [
                *(
                    kube.create(pods, ns, pod_manifest(name, app, shape, IMAGE_NEW))
                    for ns, name, app in new
                ),
                *(_delete(kube, pods, ns, name) for ns, name, _app in old),
            ],
            ready={(ns, name) for ns, name, _app in new},
            image=IMAGE_NEW,
            deadline=deadline,
            tick=tick,
        )

    async def delete(self, shape: Shape, *, deadline: float, tick: Tick) -> PhaseRun:
        old = self._pods(shape, self._generation[shape.name])
        return await self._write_and_wait(
            shape,
            lambda kube, pods: [_delete(kube, pods, ns, name) for ns, name, _app in old],
            ready=set(),
            image=IMAGE_NEW,
            deadline=deadline,
            tick=tick,
        )

    async def _write_and_wait(
        self,
        shape: Shape,
        writes: Callable[[KubeClient, ApiResource], list[Coroutine[Any, Any, Any]]],
        *,
        ready: set[tuple[str, str]],
        image: str,
        deadline: float,
        tick: Tick,
    ) -> PhaseRun:
        pods = self._cluster.resources["pods"]
        config = self._cluster.config

        def client_thread() -> float:
            # The client gets a thread and an event loop of its own, so its CPU time is its own.
            cpu = time.thread_time()

            async def write_all() -> None:
                async with KubeClient(config, timeout=60) as kube:
                    await bounded(writes(kube, pods))

            asyncio.run(write_all())
            return time.thread_time() - cpu

        async def stuck() -> list[str]:
            found = await self._cluster.list("pods", PodView, shape)
            missing = pods_not_ready(found, ready, image=image)
            extra = [
                f"pod {p.metadata.namespace}/{p.metadata.name}: not deleted"
                for p in found
                if (p.metadata.namespace, p.metadata.name) not in ready
            ]
            return missing + extra

        async def tick_checking_client() -> None:
            if client.done() and client.exception() is not None:
                raise RuntimeError(f"the ceiling's writes failed: {client.exception()}")
            await tick()

        started = time.monotonic()
        client = asyncio.create_task(asyncio.to_thread(client_thread))
        try:
            run = await converge(
                stuck,
                started=started,
                deadline=deadline,
                interval=self._interval,
                tick=tick_checking_client,
            )
            if run.ok:
                run.client_cpu_seconds = await client
        finally:
            if not client.done():
                # The writes finished, or the phase failed: wait for the thread either way.
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(asyncio.shield(client), timeout=120)
        return run


async def _delete(kube: KubeClient, pods: ApiResource, namespace: str, name: str) -> None:
    with contextlib.suppress(NotFoundError):
        await kube.delete(pods, namespace, name)

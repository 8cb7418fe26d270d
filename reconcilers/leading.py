"""Global controllers: run by one member of the pool at a time, each on a cache of its own.

While this process leads a global controller (:class:`reconcilers.leader.LeaderElection`), it
replays every object the controller reads into that controller's cache and follows the stream;
on losing the lease it stops the follower, waits for the controller's in-flight reconciles and
drops the cache. Requests go to the controller's queue only while leading.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Hashable, Iterable
from dataclasses import dataclass, field
from typing import Any

from nats.js import JetStreamContext

from bus.envelope import Envelope
from bus.layout import BusLayout
from bus.subjects import ObjectRef
from reconcilers import metrics
from reconcilers.cache import CLUSTER, ObjectCache
from reconcilers.controller import EVERY_RESOURCE, Controller, Request
from reconcilers.follower import StreamFollower
from reconcilers.supervisor import Running, serving, stop_task, supervise
from reconcilers.workqueue import WorkQueue

__all__ = ["GlobalControllers"]

log = logging.getLogger(__name__)


@dataclass
class _Global:
    """A global controller, its own cache, and its follower while this process leads it."""

    controller: Controller | None = None
    queue: WorkQueue[Request] | None = None
    cache: ObjectCache = field(default_factory=ObjectCache)
    running: Running | None = None


class GlobalControllers:
    def __init__(self, layout: BusLayout, idle: Callable[[Hashable], Awaitable[bool]]) -> None:
        """``idle(shard)``: waits, within a bound, until no reconcile of ``shard`` runs."""
        self._layout = layout
        self._idle = idle
        self._states: dict[str, _Global] = {}
        self.js: JetStreamContext | None = None  # set once connected

    def cache_for(self, name: str) -> ObjectCache:
        """The cache a global controller ``name`` is to be built with."""
        return self._states.setdefault(name, _Global()).cache

    def add(self, name: str, controller: Controller, queue: WorkQueue[Request]) -> None:
        state = self._states.setdefault(name, _Global())
        state.controller, state.queue = controller, queue

    def discard(self, name: str) -> None:
        """A controller that did not start after all (NotStarted)."""
        self._states.pop(name, None)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(name for name, state in self._states.items() if state.controller)

    def __contains__(self, name: object) -> bool:
        return name in self.names

    def responsible(self, name: str) -> Callable[[Request], Hashable | None]:
        """The worker's test: a request is served only while this process leads ``name``."""
        shard = ("global", name)

        def leading(_request: Request) -> Hashable | None:
            return shard if self._states[name].running is not None else None

        return leading

    async def start_leading(self, name: str) -> None:
        """This process now leads ``name``: build its full cache, then serve its requests."""
        state = self._states[name]
        assert state.controller is not None
        filters = [
            self._layout.resource_filter(r) if r != EVERY_RESOURCE else self._layout.object_subjects
            for r in type(state.controller).reads
        ]

        def deliver(ref: ObjectRef, envelope: Envelope, replaying: bool) -> None:
            previous = state.cache.apply(CLUSTER, ref, envelope)
            if not replaying:
                current = None if envelope.deleted else state.cache.get(*_key(ref))
                self._enqueue(state, ref, current, previous)

        def replayed(refs: list[ObjectRef]) -> None:
            for ref in refs:
                current = state.cache.get(*_key(ref))
                if current is not None:
                    self._enqueue(state, ref, current, None)

        def make() -> StreamFollower:
            assert self.js is not None
            return StreamFollower(
                name=f"{name} cache",
                js=self.js,
                layout=self._layout,
                filters=filters,
                deliver=deliver,
                replayed=replayed,
            )

        state.running = supervise(f"{name} cache", make)
        log.info("%s: leading; replaying its cache", name)

    async def stop_leading(self, name: str) -> None:
        state = self._states[name]
        running, state.running = state.running, None  # no reconcile starts for it from now
        if running is not None:
            await stop_task(*running)
        if not await self._idle(("global", name)):
            log.error("%s: in-flight reconciles did not finish in time", name)
        state.cache.clear()
        assert state.controller is not None
        state.controller.forget(lambda _request: True)
        log.info("%s: no longer leading", name)

    def problems(self) -> list[str]:
        """What keeps this process from being ready, of the controllers it leads."""
        return [
            f"{name}: leading, cache not replayed yet"
            for name, state in self._states.items()
            if state.running is not None and not serving(state.running)
        ]

    def cache_counts(self) -> Iterable[tuple[str, str, int]]:
        for name, state in self._states.items():
            for resource, count in state.cache.counts().items():
                yield name, resource.label, count

    @staticmethod
    def _enqueue(
        state: _Global, ref: ObjectRef, current: dict[str, Any] | None, previous: Any
    ) -> None:
        assert state.controller is not None and state.queue is not None
        name = state.controller.name
        for request in state.controller.requests_for(ref.resource, current, previous):
            state.queue.add(request)
            metrics.WORKQUEUE_ADDS.labels(name).inc()
        metrics.WORKQUEUE_DEPTH.labels(name).set(len(state.queue))


def _key(ref: ObjectRef) -> tuple[Any, str | None, str]:
    return ref.resource, ref.namespace, ref.name

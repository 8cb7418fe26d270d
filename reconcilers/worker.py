"""The worker loop: take a request from a controller's queue, reconcile it, settle the result.

As client-go's ``processNextWorkItem`` with the controller's ``handleErr``: success forgets the
key's backoff (and honours ``requeue_after``); a failure is retried with the queue's backoff
until the controller's :class:`~reconcilers.controller.RetryPolicy` says to drop it; a
:class:`~reconcilers.controller.TerminalError` and a namespace being terminated are not
retried. A request this process is not responsible for (its partition moved away, its
controller's leadership was lost) is dropped unreconciled: its deliveries stay unacknowledged
for the next owner.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Hashable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import IO, Any

from opentelemetry import propagate, trace
from opentelemetry.trace import Link, SpanKind, StatusCode, Tracer

from kubus.kube import ConflictError, KubeApiError
from kubus.logs import log_context
from kubus.telemetry import HeaderGetter
from reconcilers import metrics
from reconcilers.acks import AckTracker, Waiting
from reconcilers.controller import Controller, Request, TerminalError
from reconcilers.workqueue import ShutDown, WorkQueue

__all__ = ["InFlight", "Worker", "namespace_terminating"]

log = logging.getLogger(__name__)
_getter = HeaderGetter()

# Who is responsible for a request here: a shard token (the partition, or the controller's
# name for a global one) while this process serves it, else None.
Responsible = Callable[[Request], Hashable | None]


class InFlight:
    """Reconciles in flight per shard: a shard is handed back only once it is idle, so its
    next owner never works on a key this process is still working on."""

    def __init__(self) -> None:
        self._busy: dict[Hashable, int] = defaultdict(int)
        self._changed = asyncio.Condition()

    def enter(self, shard: Hashable) -> None:
        self._busy[shard] += 1

    async def leave(self, shard: Hashable) -> None:
        self._busy[shard] -= 1
        async with self._changed:
            self._changed.notify_all()

    def busy(self, shard: Hashable) -> int:
        return self._busy.get(shard, 0)

    async def idle(self, shard: Hashable) -> None:
        """Wait until no reconcile of ``shard`` runs."""
        async with self._changed:
            await self._changed.wait_for(lambda: self._busy.get(shard, 0) == 0)


def namespace_terminating(error: BaseException) -> bool:
    """The apiserver refused a write because the namespace is being deleted."""
    return isinstance(error, KubeApiError) and "NamespaceTerminating" in getattr(
        error, "causes", ()
    )


@dataclass
class Worker:
    """The workers of one controller share one of these; run ``concurrency`` loops of it."""

    name: str
    controller: Controller
    queue: WorkQueue[Request]
    acks: AckTracker
    responsible: Responsible
    in_flight: InFlight
    member: str
    tracer: Tracer | None = None
    audit: IO[str] | None = None

    async def run(self) -> None:
        """Work until the queue is shut down (and drained)."""
        while True:
            try:
                request = await self.queue.get()
            except ShutDown:
                return
            metrics.WORKQUEUE_DEPTH.labels(self.name).set(len(self.queue))
            since = self.queue.queued_since(request)
            if since is not None:
                metrics.WORKQUEUE_LATENCY.labels(self.name).observe(time.monotonic() - since)
            try:
                await self.process(request)
            finally:
                self.queue.done(request)

    async def process(self, request: Request) -> None:
        key = (self.name, request)
        shard = self.responsible(request)
        if shard is None:
            self.acks.take(key)  # not ours (any more): the next owner gets the deliveries
            self.queue.forget(request)
            return
        self.in_flight.enter(shard)
        try:
            await self._reconcile(request, self.acks.take(key))
        finally:
            await self.in_flight.leave(shard)

    async def _reconcile(self, request: Request, waiting: list[Waiting]) -> None:
        started = time.monotonic()
        now = time.time()
        for entry in waiting:
            stored = entry.message.metadata.timestamp
            if stored is not None:
                metrics.EVENT_LATENCY.labels(self.name).observe(max(0.0, now - stored.timestamp()))
        # The log lines of a reconcile, its failure's included, carry the controller, the key
        # and the span's ids (kubus.logs), so a line leads to its trace.
        with log_context(controller=self.name, key=request.key), self._span(request, waiting):
            try:
                result = await self.controller.reconcile(request)
            except Exception as error:
                span = trace.get_current_span()
                span.record_exception(error)
                span.set_status(StatusCode.ERROR, f"{type(error).__name__}: {error}")
                if not self._settle_failure(request, error):
                    self.acks.put_back((self.name, request), waiting)
                    return
            else:
                self.queue.forget(request)
                if result.requeue_after is not None:
                    self.queue.add_after(request, result.requeue_after)
            finally:
                metrics.RECONCILE_DURATION.labels(self.name).observe(time.monotonic() - started)
                self._audit(request, now)
        for entry in waiting:
            if entry.settle_one():
                await entry.message.ack()

    def _settle_failure(self, request: Request, error: Exception) -> bool:
        """Log and requeue a failure as the retry policy says; True if the key is done."""
        policy = self.controller.retry
        if isinstance(error, TerminalError):
            log.error("%s: %s: %s (not retried)", self.name, request.key, error)
            self.queue.forget(request)
            return True
        metrics.RECONCILE_ERRORS.labels(self.name).inc()
        if policy.forget_terminating_namespace and namespace_terminating(error):
            log.info("%s: %s: namespace is terminating; not retried", self.name, request.key)
            self.queue.forget(request)
            return True
        retries = self.queue.num_requeues(request)
        if policy.max_retries is not None and retries >= policy.max_retries:
            log.warning(
                "%s: dropping %s out of the queue after %d retries: %s",
                self.name,
                request.key,
                retries,
                error,
            )
            metrics.RECONCILE_DROPPED.labels(self.name).inc()
            self.queue.forget(request)
            return True
        metrics.WORKQUEUE_RETRIES.labels(self.name).inc()
        # A conflict means the cache was a hop behind a write: routine, retried soon.
        level = logging.INFO if isinstance(error, ConflictError) else logging.WARNING
        log.log(
            level,
            "%s: sync %s failed: %s",
            self.name,
            request.key,
            error,
            exc_info=log.isEnabledFor(logging.DEBUG),
        )
        self.queue.add_rate_limited(request)
        return False

    def _audit(self, request: Request, start: float) -> None:
        if self.audit is None:
            return
        record = {
            "member": self.member,
            "controller": self.name,
            "key": request.key,
            "start": start,
            "end": time.time(),
        }
        self.audit.write(json.dumps(record) + "\n")
        self.audit.flush()

    def _span(self, request: Request, waiting: list[Waiting]) -> AbstractContextManager[Any]:
        if self.tracer is None:
            return nullcontext()
        contexts = [
            propagate.extract({"traceparent": entry.envelope.traceparent}, getter=_getter)
            for entry in waiting
            if entry.envelope.traceparent
        ]
        parent = contexts[-1] if contexts else None
        links = [
            Link(trace.get_current_span(context).get_span_context()) for context in contexts[:-1]
        ]
        return self.tracer.start_as_current_span(
            f"reconcile {self.name}",
            # A failure is logged and retried by the worker, not an unhandled exception.
            record_exception=False,
            set_status_on_exception=False,
            context=parent,
            kind=SpanKind.CONSUMER,
            links=links,
            attributes={
                "kubus.controller": self.name,
                "k8s.object.key": request.key,
                "kubus.member": self.member,
            },
        )

"""Publishing object states to the bus: pipelined, latest-wins, never older than the bus.

Invariant (no regression): a subject never receives a resourceVersion older than the one it
holds, even with several watchers publishing at once. Each publish is compare-and-set on the
subject's last sequence (``Nats-Expected-Last-Subject-Sequence``); a refused publish re-reads
the subject and is dropped if the bus already holds that state or a newer one.

Per subject, one publish is in flight at a time; events that arrive meanwhile wait in a
one-slot mailbox where the newest replaces the older (the bus keeps only the latest anyway).
Across subjects, up to ``max_in_flight`` publishes are pipelined.

Every submitted event gets a future that resolves once the bus holds that state or a newer
one; the resource watchers use it to store a resume point only behind acknowledged events.

A state the bus holds in the other representation (in full, where the watcher now publishes
metadata only, or the reverse: ``--mirror-secrets`` was switched) is published again at the
same resourceVersion, so switching the flag off takes Secret data off the bus.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Coroutine, Iterable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Final

from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from opentelemetry import propagate
from opentelemetry.trace import SpanKind, Tracer

from bus.envelope import Envelope, EventType, header_block, resource_version_number
from bus.layout import BusLayout
from bus.producer import JetStreamProducer, PubAck, PublishRejected
from bus.reader import ObjectStreamReader
from bus.subjects import ObjectRef, ResourceType
from kubus.fastmetrics import CounterChild
from kubus.telemetry import HeaderSetter
from watcher import metrics

__all__ = ["BusPublisher", "Known", "ObjectEvent"]

log = logging.getLogger(__name__)

# JetStream's error code for a failed Nats-Expected-Last-Subject-Sequence check.
_WRONG_LAST_SEQUENCE: Final = 10071
_RETRY_MIN, _RETRY_MAX = 0.2, 5.0
_YIELD_EVERY: Final = 64
_setter = HeaderSetter()


@dataclass(slots=True)
class ObjectEvent:
    """One object state to put on the bus."""

    resource: ResourceType
    ref: ObjectRef
    subject: str
    event: EventType
    resource_version: int
    resource_version_text: str
    uid: str
    payload: bytes
    reference: bool = False
    metadata_only: bool = False
    received: float = field(default_factory=time.monotonic)


@dataclass(slots=True)
class Known:
    """What the bus holds on one subject, as far as this watcher knows."""

    sequence: int
    resource_version: int
    uid: str
    deleted: bool
    metadata_only: bool = False


@dataclass(slots=True)
class _Slot:
    event: ObjectEvent
    futures: list[asyncio.Future[None]]
    attempts: int = 0


class _Capacity:
    """A counting gate, as asyncio.Semaphore without the scan of its waiters on every acquire
    (which showed in the publish path's profile). A release hands its slot to the oldest
    waiter."""

    def __init__(self, size: int) -> None:
        self._free = size
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    def try_acquire(self) -> bool:
        if self._free > 0 and not self._waiters:
            self._free -= 1
            return True
        return False

    async def acquire(self) -> None:
        if self.try_acquire():
            return
        handed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(handed)
        try:
            await handed
        except asyncio.CancelledError:
            if handed.done() and not handed.cancelled():
                self.release()  # the slot arrived as we were cancelled: pass it on
            raise

    def release(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self._free += 1


class BusPublisher:
    def __init__(
        self,
        js: JetStreamContext,
        producer: JetStreamProducer,
        layout: BusLayout,
        *,
        tracer: Tracer | None,
        tombstone_ttl: float,
        max_in_flight: int = 1024,
    ) -> None:
        self._producer = producer
        self._layout = layout
        self._reader = ObjectStreamReader(js, layout)
        self._tracer = tracer
        self._tombstone_ttl = str(int(tombstone_ttl))
        self._capacity = _Capacity(max_in_flight)
        self._known: dict[str, Known] = {}
        self._in_flight: dict[str, _Slot] = {}
        self._waiting: dict[str, _Slot] = {}
        self._background: set[asyncio.Task[None]] = set()
        self._closed = False
        self._submitted = 0
        self._published: dict[tuple[str, EventType], CounterChild] = {}

    # --- what the bus holds -------------------------------------------------------------

    async def load(self, resources: Iterable[ResourceType]) -> int:
        """Learn what the bus holds for these resources (headers only); returns the count."""
        count = 0
        for resource in resources:
            count += await self.load_filter(self._layout.resource_filter(resource))
        return count

    async def load_filter(self, filter_subject: str) -> int:
        """Learn what the bus holds under one subject filter (headers only)."""
        count = 0
        async for envelope in self._reader.replay(filter_subject, headers_only=True):
            self._remember(envelope.subject, _known(envelope))
            count += 1
        return count

    def known(self, subject: str) -> Known | None:
        return self._known.get(subject)

    def live_subjects(self, resource: ResourceType) -> dict[str, Known]:
        """Subjects of ``resource`` whose latest state on the bus is not a tombstone."""
        infix = f".{resource.tokens}."
        return {
            subject: known
            for subject, known in self._known.items()
            if not known.deleted and infix in subject
        }

    def live_resources(self) -> set[ResourceType]:
        """The resources of which the bus holds live objects (a scan: for start-up only)."""
        return {
            self._layout.decode(subject)[1].resource
            for subject, known in self._known.items()
            if not known.deleted
        }

    async def last_payload(self, ref: ObjectRef) -> bytes | None:
        envelope = await self._reader.latest(ref)
        return None if envelope is None else envelope.payload

    # --- publishing ---------------------------------------------------------------------

    async def submit(self, event: ObjectEvent) -> asyncio.Future[None]:
        """Queue one state; the future resolves once the bus holds it or something newer."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._submitted += 1
        if self._submitted % _YIELD_EVERY == 0:
            # A backlog (a relist, a burst) is submitted without a pause otherwise: let the
            # writes go out and the acks come in while it lasts, rather than stop-and-go.
            await asyncio.sleep(0)
        if not self._capacity.try_acquire():
            await self._capacity.acquire()
        subject = event.subject
        known = self._known.get(subject)
        if (
            known is not None
            and event.resource_version <= known.resource_version
            and not _recoded(known, event)
        ):
            self._capacity.release()
            metrics.STALE_EVENTS.labels(event.resource.label).inc()
            done.set_result(None)
            return done
        if subject in self._in_flight:
            self._capacity.release()
            waiting = self._waiting.get(subject)
            if waiting is None:
                self._waiting[subject] = _Slot(event, [done])
            elif event.resource_version > waiting.event.resource_version:
                waiting.event = event
                waiting.futures.append(done)
            else:
                metrics.STALE_EVENTS.labels(event.resource.label).inc()
                done.set_result(None)
            return done
        slot = _Slot(event, [done])
        self._in_flight[subject] = slot
        self._send(slot)
        return done

    async def close(self) -> None:
        """Stop retrying; cancel the background work still pending."""
        self._closed = True
        for task in list(self._background):
            task.cancel()
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)

    def _send(self, slot: _Slot) -> None:
        event = slot.event
        known = self._known.get(event.subject)
        trace: dict[str, str] | None = None
        if self._tracer is not None:
            trace = {}
            with self._tracer.start_as_current_span(
                f"publish {event.resource}",
                kind=SpanKind.PRODUCER,
                attributes={
                    "messaging.system": "nats",
                    "messaging.destination.name": event.subject,
                    "k8s.resource": str(event.resource),
                    "k8s.object.key": event.ref.key,
                    "k8s.resource_version": event.resource_version_text,
                    "k8s.event": event.event.value,
                },
            ):
                propagate.inject(trace, setter=_setter)
        try:
            block = header_block(
                event.event,
                event.resource_version_text,
                event.uid,
                known.sequence if known else 0,
                reference=event.reference,
                metadata_only=event.metadata_only,
                ttl=self._tombstone_ttl if event.event is EventType.DELETED else None,
                extra=trace,
            )
        except ValueError as error:
            # Only an apiserver object with CR/LF in its uid or resourceVersion gets here.
            log.error("%s %s cannot be published: %s", event.resource, event.ref.key, error)
            self._finish(slot)
            return
        self._producer.publish(event.subject, block, event.payload, partial(self._acked, slot))

    def _acked(self, slot: _Slot, ack: PubAck | None, error: BaseException | None) -> None:
        event = slot.event
        if ack is None:
            if isinstance(error, PublishRejected) and error.err_code == _WRONG_LAST_SEQUENCE:
                metrics.PUBLISH_CONFLICTS.labels(event.resource.label).inc()
                self._spawn(self._reconcile_conflict(slot))
            else:
                self._retry_later(slot, error or TimeoutError("no ack"))
            return
        self._remember(
            event.subject,
            Known(
                ack.seq,
                event.resource_version,
                event.uid,
                event.event is EventType.DELETED,
                event.metadata_only,
            ),
        )
        counter = self._published.get((event.resource.label, event.event))
        if counter is None:  # labels() costs more than the increment; keep the children
            counter = metrics.EVENTS_PUBLISHED.labels(event.resource.label, event.event.value)
            self._published[event.resource.label, event.event] = counter
        counter.inc()
        metrics.PUBLISH_LATENCY.observe(time.monotonic() - event.received)
        self._finish(slot)

    def _finish(self, slot: _Slot) -> None:
        """The slot's state is on the bus (or superseded there): settle it, start the next."""
        subject = slot.event.subject
        for future in slot.futures:
            if not future.done():
                future.set_result(None)
        del self._in_flight[subject]
        self._capacity.release()
        waiting = self._waiting.pop(subject, None)
        if waiting is None:
            return
        known = self._known.get(subject)
        if known is not None and waiting.event.resource_version <= known.resource_version:
            for future in waiting.futures:
                future.set_result(None)
            return
        self._spawn(self._send_waiting(waiting))

    async def _send_waiting(self, slot: _Slot) -> None:
        await self._capacity.acquire()
        subject = slot.event.subject
        if subject in self._in_flight:  # a submit got in first; queue behind it again
            self._capacity.release()
            current = self._waiting.get(subject)
            if current is None or slot.event.resource_version > current.event.resource_version:
                slot.futures.extend(current.futures if current else [])
                self._waiting[subject] = slot
            else:
                current.futures.extend(slot.futures)
            return
        self._in_flight[subject] = slot
        self._send(slot)

    async def _reconcile_conflict(self, slot: _Slot) -> None:
        """Another writer moved the subject: learn its state, then drop or retry ours."""
        event = slot.event
        try:
            envelope = await self._reader.latest(event.ref)
        except (NatsError, OSError) as error:
            self._retry_later(slot, error)
            return
        if envelope is None:
            self._known.pop(event.subject, None)
        else:
            self._remember(event.subject, _known(envelope))
            if resource_version_number(envelope.resource_version) >= event.resource_version:
                metrics.STALE_EVENTS.labels(event.resource.label).inc()
                self._finish(slot)
                return
        self._promote_newest(slot)
        self._send(slot)

    def _retry_later(self, slot: _Slot, error: BaseException) -> None:
        slot.attempts += 1
        delay = min(_RETRY_MAX, _RETRY_MIN * 2 ** min(slot.attempts, 10))
        log.warning(
            "publish of %s %s (rv %s) failed, retrying in %.1fs: %s",
            slot.event.resource,
            slot.event.ref.key,
            slot.event.resource_version_text,
            delay,
            error or type(error).__name__,
        )

        async def retry() -> None:
            await asyncio.sleep(delay)
            self._promote_newest(slot)
            self._send(slot)

        self._spawn(retry())

    def _promote_newest(self, slot: _Slot) -> None:
        """Before a resend, take over a newer state that waited meanwhile."""
        waiting = self._waiting.pop(slot.event.subject, None)
        if waiting is not None:
            if waiting.event.resource_version > slot.event.resource_version:
                slot.event = waiting.event
            slot.futures.extend(waiting.futures)

    def _remember(self, subject: str, known: Known) -> None:
        current = self._known.get(subject)
        if current is None or known.sequence >= current.sequence:
            self._known[subject] = known

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        if self._closed:
            work.close()
            return
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._reap)

    def _reap(self, task: asyncio.Task[None]) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("publisher background work failed", exc_info=task.exception())


def _known(envelope: Envelope) -> Known:
    return Known(
        envelope.sequence,
        resource_version_number(envelope.resource_version),
        envelope.uid,
        envelope.deleted,
        envelope.metadata_only,
    )


def _recoded(known: Known, event: ObjectEvent) -> bool:
    """The bus holds this very state, live, in the other representation."""
    return (
        known.metadata_only != event.metadata_only
        and not known.deleted
        and event.event is not EventType.DELETED
        and known.resource_version == event.resource_version
    )

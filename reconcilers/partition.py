"""One owned partition: replay it into the cache, then follow the pool's durable consumer.

Replay first (every object of the partition, latest state), so the cache is whole before any
request is served; every replayed object then makes its requests, as an informer's initial
list does. The durable consumer ``<pool>-p<NN>`` is created to start right after the replay
and read as a :class:`~bus.pull.PullStream` (one pull request open for many messages); each
delivery updates the cache and makes requests, and is acknowledged once those requests are
reconciled.

A delivery that cannot be decoded or applied is negatively acknowledged with a growing delay
and, after ``MAX_DELIVERIES``, copied to the dead-letter stream with its error and acknowledged:
one bad message never stops a partition. Any other failure ends :meth:`PartitionRunner.run`;
the manager's supervisor restarts the partition (replay included) with backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Callable
from typing import Final

from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from bus.deadletter import publish_dead_letter
from bus.envelope import Envelope
from bus.errors import BusError
from bus.layout import BusLayout
from bus.pull import PullStream
from bus.reader import ObjectStreamReader
from bus.subjects import ObjectRef
from reconcilers import metrics

__all__ = ["Delivery", "PartitionRunner"]

log = logging.getLogger(__name__)

_BATCH: Final = 256  # messages one pull request asks for
_IDLE_TIMEOUT: Final = 2.0  # seconds without a delivery before the consumer is looked at
_LAG_EVERY: Final = 5.0  # seconds between two lag readings while messages come
_SETTLED_LAG_EVERY: Final = 30.0  # seconds between two lag readings while caught up
_ACK_WAIT: Final = 300.0
_MAX_ACK_PENDING: Final = 2000
MAX_DELIVERIES: Final = 5  # a message that fails this often goes to the dead-letter stream
_REDELIVERY_DELAY: Final = 0.5  # doubled at each failed delivery
_SHARED_INACTIVE: Final = 300.0  # seconds unused before a shared partition's consumer goes
_UNSAFE: Final = re.compile(r"[^A-Za-z0-9_-]")  # what a consumer name cannot hold

# (partition, object, its envelope, its message or None when replayed) -> whether the message
# is acknowledged later (after the reconciles it causes) rather than at once
Delivery = Callable[[int, ObjectRef, Envelope, Msg | None], bool]


class PartitionRunner:
    def __init__(
        self,
        *,
        partition: int,
        js: JetStreamContext,
        layout: BusLayout,
        pool: str,
        deliver: Delivery,
        replayed: Callable[[int, list[ObjectRef]], None],
        wanted: Callable[[ObjectRef], bool],
        filters: list[str] | None = None,
        reader: str | None = None,
    ) -> None:
        """``filters``: the partition's subjects to read (non-overlapping), by default all of
        them; ``wanted`` still decides what is delivered (a filter may hold more).

        ``reader``: the member, when the partition is shared by the holders of its shards;
        each then reads it through a consumer of its own, which the server removes once
        unused for ``_SHARED_INACTIVE`` (its member gone)."""
        self.partition = partition
        self.replayed = asyncio.Event()
        self._js = js
        self._layout = layout
        self._deliver = deliver
        self._on_replayed = replayed
        self._wanted = wanted
        self._pool = pool
        self._durable = f"{pool}-p{partition:02d}"
        self._shared = reader is not None
        if reader is not None:
            self._durable += "-" + _UNSAFE.sub("_", reader)
        self._filters = filters or [layout.partition_filter(partition)]
        self._stopped = False
        self.max_payload = 1024 * 1024

    def stop(self) -> None:
        """End at the next turn. Cancelling the task is not enough on its own: CPython 3.11's
        asyncio.wait_for (inside nats-py's fetch) can swallow a cancellation that lands as a
        fetch completes, and a runner that lives on keeps pulling the pool's consumer after its
        partition moved to another process."""
        self._stopped = True

    async def run(self) -> None:
        last = await self._replay()
        self.replayed.set()
        if self._stopped:
            return
        await self._reset_consumer()
        await self._follow(last + 1)

    async def _replay(self) -> int:
        reader = ObjectStreamReader(self._js, self._layout)
        last = 0
        refs: list[ObjectRef] = []
        async for envelope in reader.replay(self._filters):
            last = max(last, envelope.sequence)
            ref = self._decode(envelope.subject)
            if ref is None or not self._wanted(ref):
                continue
            try:
                self._deliver(self.partition, ref, envelope, None)
            except Exception as error:
                # Its state stays what the cache had; the consumer starts after it, so the
                # object's next state is the next chance (a redelivery would fail alike).
                log.error(
                    "partition %d: cannot apply %s (sequence %d) while replaying: %s",
                    self.partition,
                    ref.key,
                    envelope.sequence,
                    error,
                )
                continue
            refs.append(ref)
        # Requests only once the whole partition is cached, as after an informer's initial
        # list: handlers then find owners that come later in stream order.
        self._on_replayed(self.partition, refs)
        log.info(
            "partition %d: replayed %d objects (up to sequence %d)",
            self.partition,
            len(refs),
            last,
        )
        return last

    async def _reset_consumer(self) -> None:
        """Start the pool's consumer afresh right after the replay.

        A previous owner may have died holding deliveries it never acknowledged; the server
        would redeliver those only after the ack wait. The replay already covered everything
        up to its end, so the consumer is recreated to start right behind it instead.
        """
        with contextlib.suppress(NotFoundError):
            await self._js.delete_consumer(self._layout.object_stream, self._durable)

    async def _follow(self, start: int) -> None:
        config = ConsumerConfig(
            # Named as well: then it is created with CONSUMER.CREATE.<stream>.<name>.<filter>,
            # the subject the production NATS users are allowed (not the legacy DURABLE one).
            name=self._durable,
            durable_name=self._durable,
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=max(1, start),
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=_ACK_WAIT,
            max_ack_pending=_MAX_ACK_PENDING,
            filter_subject=self._filters[0] if len(self._filters) == 1 else None,
            filter_subjects=self._filters if len(self._filters) > 1 else None,
            # Its state in memory: every owner recreates it after its replay anyway, and a
            # file-backed consumer rewrites a state file after acks (a quarter of the
            # server's CPU in a rolling update, measured with perf on the dev stack).
            mem_storage=True,
            inactive_threshold=_SHARED_INACTIVE if self._shared else None,
        )
        await self._js.add_consumer(self._layout.object_stream, config)
        deliveries = PullStream(
            self._js, stream=self._layout.object_stream, consumer=self._durable, batch=_BATCH
        )
        await deliveries.start()
        try:
            await self._pull(deliveries)
        finally:
            await deliveries.stop()

    async def _pull(self, deliveries: PullStream) -> None:
        # The lag at once (the replay's tail), not seconds later: it is what tells an
        # autoscaler, or a benchmark, that this partition has caught up.
        changed = await self._report_lag() != 0  # delivered since the last read, or not 0
        last_read = time.monotonic()
        while not self._stopped:
            messages = await deliveries.next(_IDLE_TIMEOUT)
            if self._stopped:
                return  # not delivered nor acknowledged: the next owner gets them
            for message in messages:
                if not await self._handle(message):  # nothing to reconcile: acked at once
                    await message.ack()
            changed = changed or bool(messages)
            if time.monotonic() - last_read < (_LAG_EVERY if changed else _SETTLED_LAG_EVERY):
                continue
            # At a bounded rate: each read is a JetStream API call (and an advisory) for
            # every owned partition. NotFoundError, the consumer gone, ends the run to be
            # restarted; the pull stream notices that on its own too.
            last_read = time.monotonic()
            changed = await self._report_lag() != 0

    async def _report_lag(self) -> int:
        info = await self._js.consumer_info(self._layout.object_stream, self._durable)
        lag = (info.num_pending or 0) + (info.num_ack_pending or 0)
        metrics.CONSUMER_LAG.labels(str(self.partition)).set(lag)
        return lag

    async def _handle(self, message: Msg) -> bool:
        """Deliver one message; False when it can be acknowledged at once."""
        ref = self._decode(message.subject)
        if ref is None or not self._wanted(ref):
            return False
        try:
            envelope = Envelope.from_message(
                subject=message.subject,
                sequence=message.metadata.sequence.stream,
                headers=message.headers,
                payload=message.data,
            )
            return self._deliver(self.partition, ref, envelope, message)
        except Exception as error:
            await self._failed(message, ref, error)
            return True  # settled by _failed: nak'd, or dead-lettered and acked

    async def _failed(self, message: Msg, ref: ObjectRef, error: Exception) -> None:
        """A delivery that could not be decoded or applied: retry it later, a bounded number
        of times, then move it to the dead-letter stream."""
        deliveries = message.metadata.num_delivered or 1
        sequence = message.metadata.sequence.stream
        reason = f"{type(error).__name__}: {error}"
        if deliveries < MAX_DELIVERIES:
            delay = _REDELIVERY_DELAY * 2 ** (deliveries - 1)
            log.warning(
                "partition %d: cannot handle %s %s (sequence %d, delivery %d of %d): %s; "
                "retried in %.1fs",
                self.partition,
                ref.resource,
                ref.key,
                sequence,
                deliveries,
                MAX_DELIVERIES,
                reason,
                delay,
            )
            await message.nak(delay=delay)
            return
        try:
            await publish_dead_letter(
                self._js,
                self._layout,
                pool=self._pool,
                partition=self.partition,
                subject=message.subject,
                sequence=sequence,
                deliveries=deliveries,
                error=reason,
                headers=message.headers,
                payload=message.data,
                max_payload=self.max_payload,
            )
        except RuntimeError as failure:
            log.error("partition %d: %s; %s retried later", self.partition, failure, ref.key)
            await message.nak(delay=_REDELIVERY_DELAY * 2**MAX_DELIVERIES)
            return
        metrics.DEAD_LETTERS.labels(str(self.partition)).inc()
        log.error(
            "partition %d: %s %s (sequence %d) moved to %s after %d deliveries: %s",
            self.partition,
            ref.resource,
            ref.key,
            sequence,
            self._layout.dead_letter_stream,
            deliveries,
            reason,
        )
        await message.ack()

    def _decode(self, subject: str) -> ObjectRef | None:
        try:
            return self._layout.decode(subject)[1]
        except BusError as error:
            log.error("partition %d: %s", self.partition, error)
            return None

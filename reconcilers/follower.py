"""A cache fed from whole kinds of the object stream, across every partition.

Partitions give each process a share of the namespaced objects. Some reads cannot be shared
out: every process needs every Node, Namespace or PersistentVolume its controllers read
(cluster-scoped kinds), and a global controller's leader needs every object of what it reads.
A :class:`StreamFollower` replays such kinds into the cache, makes the replayed objects'
requests once all of them are cached (as an informer's initial list does), then follows them
with ephemeral consumers (acks off: a process that dies replays again when it comes back).

Deliveries that cannot be decoded or applied are logged and skipped: every process sees the
same message, and the object's next state is the next chance. Losing the consumer (a NATS
restart, a stall past the server's inactivity threshold) ends :meth:`run` with an error, and
the supervisor replays afresh.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Callable, Sequence
from typing import Final

from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from bus.envelope import Envelope
from bus.errors import BusError
from bus.layout import BusLayout
from bus.pull import ConsumerGone, PullStream
from bus.reader import ObjectStreamReader
from bus.subjects import ObjectRef

__all__ = ["ConsumerLost", "FollowedDelivery", "StreamFollower"]

log = logging.getLogger(__name__)

_BATCH: Final = 256  # messages one pull request asks for
_IDLE_TIMEOUT: Final = 2.0
_IDLE_CHECKS: Final = 5  # idle waits in a row before checking the consumer still exists
_INACTIVE_THRESHOLD: Final = 120.0

# (object, its envelope, replayed?) -> None; applies to a cache and makes requests
FollowedDelivery = Callable[[ObjectRef, Envelope, bool], None]


class ConsumerLost(Exception):
    """The ephemeral consumer of a followed kind is gone or unusable: replay afresh."""


class StreamFollower:
    def __init__(
        self,
        *,
        name: str,
        js: JetStreamContext,
        layout: BusLayout,
        filters: Sequence[str],
        deliver: FollowedDelivery,
        replayed: Callable[[list[ObjectRef]], None],
    ) -> None:
        self.name = name
        self.replayed = asyncio.Event()
        self._js = js
        self._layout = layout
        self._filters = tuple(filters)
        self._deliver = deliver
        self._on_replayed = replayed
        self._stopped = False
        self._stop = asyncio.Event()

    def stop(self) -> None:
        """End at the next turn (see PartitionRunner.stop for why a flag as well)."""
        self._stopped = True
        self._stop.set()

    async def run(self) -> None:
        reader = ObjectStreamReader(self._js, self._layout)
        refs: list[ObjectRef] = []
        starts: list[int] = []
        for subject_filter in self._filters:
            last = (await self._js.stream_info(self._layout.object_stream)).state.last_seq
            async for envelope in reader.replay(subject_filter):
                ref = self._apply(envelope, replaying=True)
                if ref is not None:
                    refs.append(ref)
            starts.append(last + 1)
        self._on_replayed(refs)
        self.replayed.set()
        log.info("%s: replayed %d objects of %d kinds", self.name, len(refs), len(self._filters))
        if not self._filters:
            await self._stop.wait()  # nothing to follow: serve the (empty) cache until stopped
            return
        try:
            async with asyncio.TaskGroup() as group:
                for subject_filter, start in zip(self._filters, starts, strict=True):
                    group.create_task(self._follow(subject_filter, start))
        except* ConsumerLost as lost:
            raise lost.exceptions[0] from None

    def _apply(self, envelope: Envelope, *, replaying: bool) -> ObjectRef | None:
        try:
            ref = self._layout.decode(envelope.subject)[1]
            self._deliver(ref, envelope, replaying)
        except Exception as error:
            log.error(
                "%s: cannot apply %s (sequence %d): %s; skipped",
                self.name,
                envelope.subject,
                envelope.sequence,
                error,
            )
            return None
        return ref

    async def _follow(self, subject_filter: str, start: int) -> None:
        # Starting at the stream's last sequence before the replay may repeat a message the
        # replay saw: applying an equal state again is harmless.
        config = ConsumerConfig(
            # A name of its own (it is still ephemeral): created on the subject the production
            # NATS users are allowed, CONSUMER.CREATE.<stream>.<name>.<filter>.
            name=f"follow-{secrets.token_hex(8)}",
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=max(1, start),
            ack_policy=AckPolicy.NONE,
            inactive_threshold=_INACTIVE_THRESHOLD,
            mem_storage=True,
            filter_subject=subject_filter,
        )
        stream = self._layout.object_stream
        name = (await self._js.add_consumer(stream, config)).name
        deliveries = PullStream(self._js, stream=stream, consumer=name, batch=_BATCH)
        try:
            await deliveries.start()
            await self._pull(deliveries, name)
        except (NatsError, NotFoundError, ConsumerGone) as error:
            raise ConsumerLost(
                f"the consumer of {subject_filter} is lost ({type(error).__name__}: {error})"
            ) from error
        finally:
            with contextlib.suppress(NatsError, NotFoundError, TimeoutError):
                await deliveries.stop()
                await self._js.delete_consumer(stream, name)

    async def _pull(self, deliveries: PullStream, name: str) -> None:
        idle = 0
        while not self._stopped:
            messages = await deliveries.next(_IDLE_TIMEOUT)
            if self._stopped:
                return
            if not messages:
                idle += 1
                if idle >= _IDLE_CHECKS:
                    idle = 0
                    # NotFoundError if it is gone
                    await self._js.consumer_info(self._layout.object_stream, name)
                continue
            idle = 0
            for message in messages:
                try:
                    envelope = Envelope.from_message(
                        subject=message.subject,
                        sequence=message.metadata.sequence.stream,
                        headers=message.headers,
                        payload=message.data,
                    )
                except BusError as error:
                    log.error("%s: %s; skipped", self.name, error)
                    continue
                self._apply(envelope, replaying=False)

"""Reading the object stream: replay a filter, follow it from a sequence, or get one object.

These are the reads a reconciler rebuilds its cache with, and the watcher its view of the bus.
Replays use an ephemeral pull consumer with acks off, sized batches, and stop at the end of
what the stream held when the replay began, so a replay always terminates.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Final

from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from bus.envelope import Envelope
from bus.layout import BusLayout
from bus.subjects import ObjectRef

__all__ = ["ObjectStreamReader"]

_BATCH: Final = 1000
_FETCH_TIMEOUT: Final = 5.0


class ObjectStreamReader:
    def __init__(self, js: JetStreamContext, layout: BusLayout) -> None:
        self._js = js
        self._layout = layout

    async def replay(
        self, filter_subject: str | Sequence[str], *, headers_only: bool = False
    ) -> AsyncIterator[Envelope]:
        """Every object under ``filter_subject`` (or any of several, which must not overlap),
        latest state each, in stream order.

        With ``headers_only`` the payloads are left on the server: enough to learn what the
        bus holds (subjects, resourceVersions, tombstones) at a fraction of the cost.
        """
        async for envelope in self._consume(
            filter_subject, DeliverPolicy.ALL, headers_only=headers_only, bounded=True
        ):
            yield envelope

    async def follow(self, filter_subject: str, *, from_sequence: int) -> AsyncIterator[Envelope]:
        """Every message under ``filter_subject`` from ``from_sequence`` on, without end."""
        async for envelope in self._consume(
            filter_subject, DeliverPolicy.BY_START_SEQUENCE, start=from_sequence, bounded=False
        ):
            yield envelope

    async def latest(self, ref: ObjectRef) -> Envelope | None:
        """The message the bus holds for one object (a tombstone included), or None."""
        subject = self._layout.subject(ref)
        try:
            message = await self._js.get_last_msg(self._layout.object_stream, subject, direct=True)
        except NotFoundError:
            return None
        return Envelope.from_message(
            subject=subject,
            sequence=message.seq or 0,
            headers=message.headers,
            payload=message.data or b"",
        )

    async def _consume(
        self,
        filter_subject: str | Sequence[str],
        policy: DeliverPolicy,
        *,
        start: int | None = None,
        headers_only: bool = False,
        bounded: bool,
    ) -> AsyncIterator[Envelope]:
        config = ConsumerConfig(
            deliver_policy=policy,
            opt_start_seq=start,
            ack_policy=AckPolicy.NONE,
            headers_only=headers_only or None,
            inactive_threshold=60.0,
            mem_storage=True,
        )
        filters = [filter_subject] if isinstance(filter_subject, str) else list(filter_subject)
        if len(filters) > 1:
            config.filter_subjects = filters
        subscription = await self._js.pull_subscribe(
            filters[0], stream=self._layout.object_stream, config=config
        )
        info = await subscription.consumer_info()
        try:
            pending = (info.num_pending or 0) if bounded else 1
            while pending > 0:
                try:
                    batch = await subscription.fetch(
                        batch=min(pending, _BATCH) if bounded else _BATCH, timeout=_FETCH_TIMEOUT
                    )
                except TimeoutError:  # nats-py raises both its own and asyncio's
                    if bounded:
                        # What was pending may be gone (superseded, expired), or the consumer
                        # with its server: ask again rather than wait for it forever. A
                        # consumer that cannot answer ends the replay with an error.
                        pending = (await subscription.consumer_info()).num_pending or 0
                    continue
                for message in batch:
                    metadata = message.metadata
                    yield Envelope.from_message(
                        subject=message.subject,
                        sequence=metadata.sequence.stream,
                        headers=message.headers,
                        payload=message.data,
                    )
                    if bounded:
                        pending = metadata.num_pending or 0
        finally:
            await subscription.unsubscribe()
            # Left behind, the consumer would expire by itself after inactive_threshold.
            with contextlib.suppress(NatsError, NotFoundError, asyncio.TimeoutError):
                await self._js.delete_consumer(self._layout.object_stream, info.name)

"""The dead-letter stream: deliveries a reconciler pool gave up on, with the reason.

A message of the object stream that cannot be decoded or applied (bytes that are not JSON, a
controller's handler failing on it) is retried a bounded number of times; then a copy goes
here, with headers naming where it came from and why, and the original is acknowledged so the
partition goes on. Nothing is lost: the copy stays for ``max_age`` for a person to look at
(``nats stream view``), and the object's next state reaches the controllers as usual.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Final

from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import NotFoundError

from bus.layout import BusLayout
from bus.streams import provisioning

__all__ = ["DeadLetterHeader", "ensure_dead_letter_stream", "publish_dead_letter"]

log = logging.getLogger(__name__)

_MAX_AGE: Final = 7 * 24 * 3600.0
_MAX_BYTES: Final = 256 * 1024 * 1024


class DeadLetterHeader:
    SUBJECT: Final = "Kubus-Dead-Letter-Subject"
    SEQUENCE: Final = "Kubus-Dead-Letter-Sequence"
    ERROR: Final = "Kubus-Dead-Letter-Error"
    DELIVERIES: Final = "Kubus-Dead-Letter-Deliveries"
    POOL: Final = "Kubus-Dead-Letter-Pool"


async def ensure_dead_letter_stream(
    js: JetStreamContext, layout: BusLayout, *, replicas: int = 1
) -> None:
    config = StreamConfig(
        name=layout.dead_letter_stream,
        description="kubus: object-stream deliveries a reconciler pool could not handle",
        subjects=[layout.dead_letter_subjects],
        retention=RetentionPolicy.LIMITS,
        discard=DiscardPolicy.OLD,
        storage=StorageType.FILE,
        num_replicas=replicas,
        max_age=_MAX_AGE,
        max_bytes=_MAX_BYTES,
    )

    async def attempt() -> None:
        try:
            await js.stream_info(layout.dead_letter_stream)
        except NotFoundError:
            await js.add_stream(config)
            log.info("created stream %s", layout.dead_letter_stream)

    await provisioning(f"provision stream {layout.dead_letter_stream}", attempt)


async def publish_dead_letter(
    js: JetStreamContext,
    layout: BusLayout,
    *,
    pool: str,
    partition: int,
    subject: str,
    sequence: int,
    deliveries: int,
    error: str,
    headers: Mapping[str, str] | None,
    payload: bytes,
    max_payload: int,
) -> None:
    """Copy one delivery to the dead-letter stream (its payload dropped if it cannot fit)."""
    copied = {key: value for key, value in (headers or {}).items() if not key.startswith("Nats-")}
    copied.update(
        {
            DeadLetterHeader.SUBJECT: subject,
            DeadLetterHeader.SEQUENCE: str(sequence),
            DeadLetterHeader.ERROR: error[:1000].replace("\r", " ").replace("\n", " "),
            DeadLetterHeader.DELIVERIES: str(deliveries),
            DeadLetterHeader.POOL: pool,
        }
    )
    room = max_payload - sum(len(k) + len(v) + 4 for k, v in copied.items()) - 64
    body = payload if len(payload) <= room else b""
    try:
        await js.publish(layout.dead_letter_subject(pool, partition), body, headers=copied)
    except (NatsError, TimeoutError) as failure:
        raise RuntimeError(f"cannot publish to {layout.dead_letter_stream}: {failure}") from None

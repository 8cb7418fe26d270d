"""Reading the bus from tests, through the same reader the reconcilers use."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import nats

from bus.envelope import Envelope
from bus.layout import BusLayout
from bus.reader import ObjectStreamReader
from bus.subjects import ResourceType


def objects_on_bus(
    stack_env: Mapping[str, str], prefix: str, resource: ResourceType, namespace: str | None
) -> dict[str, Envelope]:
    """Name -> latest envelope, for one resource (and namespace) of one bus prefix."""

    async def read() -> dict[str, Envelope]:
        connection = await nats.connect(stack_env["NATS_URL"])
        try:
            layout = BusLayout(prefix=prefix)
            reader = ObjectStreamReader(connection.jetstream(), layout)
            found = {}
            async for envelope in reader.replay(layout.resource_filter(resource)):
                _partition, ref = layout.decode(envelope.subject)
                if ref.namespace == namespace:
                    found[ref.name] = envelope
            return found
        finally:
            await connection.close()

    return asyncio.run(read())


def stream_last_sequence(stack_env: Mapping[str, str], prefix: str) -> int:
    """How many messages were ever stored in the object stream (old states included)."""

    async def read() -> int:
        connection = await nats.connect(stack_env["NATS_URL"])
        try:
            info = await connection.jetstream().stream_info(BusLayout(prefix=prefix).object_stream)
            return int(info.state.last_seq)
        finally:
            await connection.close()

    return asyncio.run(read())


def subjects_on_bus(stack_env: Mapping[str, str], prefix: str) -> list[str]:
    async def read() -> list[str]:
        connection = await nats.connect(stack_env["NATS_URL"])
        try:
            layout = BusLayout(prefix=prefix)
            info = await connection.jetstream().stream_info(
                layout.object_stream, subjects_filter=layout.object_subjects
            )
            return sorted(info.state.subjects or {})
        finally:
            await connection.close()

    return asyncio.run(read())

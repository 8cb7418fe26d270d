"""Provisioning and reading the bus against a real JetStream server."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import TypeVar

import nats
import pytest
from nats.js import JetStreamContext
from nats.js.api import StorageType

from bus.envelope import Envelope, EventType, Header
from bus.errors import BusConfigError
from bus.layout import BusLayout
from bus.reader import ObjectStreamReader
from bus.streams import StreamSettings, ensure_bucket, ensure_object_stream
from bus.subjects import ObjectRef, ResourceType

pytestmark = pytest.mark.integration

T = TypeVar("T")
CONFIGMAPS = ResourceType.parse("v1/configmaps")


def with_jetstream(
    stack_env: dict[str, str], work: Callable[[JetStreamContext], Awaitable[T]]
) -> T:
    async def run() -> T:
        connection = await nats.connect(stack_env["NATS_URL"])
        try:
            return await work(connection.jetstream())
        finally:
            await connection.close()

    return asyncio.run(run())


def layout_of_its_own(partitions: int = 32) -> BusLayout:
    return BusLayout(prefix="t" + uuid.uuid4().hex[:10], partitions=partitions)


def test_provisioning_is_idempotent(stack_env: dict[str, str]) -> None:
    layout = layout_of_its_own()

    async def twice(js: JetStreamContext) -> tuple[int, int]:
        await ensure_object_stream(js, layout)
        first = (await js.stream_info(layout.object_stream)).config
        await ensure_object_stream(js, layout)
        second = (await js.stream_info(layout.object_stream)).config
        assert first == second
        return first.max_msgs_per_subject, int(first.metadata["kubus.partitions"])

    assert with_jetstream(stack_env, twice) == (1, 32)


def test_a_different_partition_count_is_refused_by_name(stack_env: dict[str, str]) -> None:
    layout = layout_of_its_own(partitions=32)

    async def conflict(js: JetStreamContext) -> None:
        await ensure_object_stream(js, layout)
        await ensure_object_stream(js, BusLayout(prefix=layout.prefix, partitions=16))

    with pytest.raises(
        BusConfigError,
        match=r"in 32 partitions, but 16 were asked for; use "
        r"--partitions 32",
    ):
        with_jetstream(stack_env, conflict)


def test_a_setting_that_cannot_change_in_place_is_refused(stack_env: dict[str, str]) -> None:
    layout = layout_of_its_own()

    async def conflict(js: JetStreamContext) -> None:
        await ensure_object_stream(js, layout, StreamSettings(storage=StorageType.MEMORY))
        await ensure_object_stream(js, layout, StreamSettings(storage=StorageType.FILE))

    with pytest.raises(BusConfigError, match="storage=memory, kubus wants file"):
        with_jetstream(stack_env, conflict)


def test_an_updatable_setting_is_updated_and_logged(
    stack_env: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    layout = layout_of_its_own()

    async def update(js: JetStreamContext) -> float:
        await ensure_object_stream(js, layout, StreamSettings(duplicate_window_seconds=60))
        await ensure_object_stream(js, layout, StreamSettings(duplicate_window_seconds=300))
        return (await js.stream_info(layout.object_stream)).config.duplicate_window

    assert with_jetstream(stack_env, update) == 300
    assert "duplicate_window 60.0 -> 300.0" in caplog.text


def test_a_bucket_with_other_settings_is_refused(stack_env: dict[str, str]) -> None:
    bucket = "t" + uuid.uuid4().hex[:10]

    async def conflict(js: JetStreamContext) -> None:
        await ensure_bucket(js, bucket, ttl_seconds=10)
        await ensure_bucket(js, bucket, ttl_seconds=20)

    with pytest.raises(BusConfigError, match=f"bucket {bucket} has ttl=10"):
        with_jetstream(stack_env, conflict)


def test_reader_replays_follows_and_gets_the_latest(stack_env: dict[str, str]) -> None:
    layout = layout_of_its_own(partitions=4)
    refs = [ObjectRef(CONFIGMAPS, f"ns-{i}", "cm") for i in range(6)]

    async def scenario(js: JetStreamContext) -> None:
        await ensure_object_stream(js, layout)
        reader = ObjectStreamReader(js, layout)

        async def publish(ref: ObjectRef, rv: int, event: EventType = EventType.MODIFIED) -> int:
            ack = await js.publish(
                layout.subject(ref),
                b'{"rv": %d}' % rv,
                headers={
                    Header.EVENT: event.value,
                    Header.RESOURCE_VERSION: str(rv),
                    Header.UID: f"uid-{ref.namespace}",
                },
            )
            return int(ack.seq)

        for rv, ref in enumerate(refs, start=1):
            await publish(ref, rv)
        await publish(refs[0], 100)  # replaces the first state of refs[0]
        await publish(refs[1], 101, EventType.DELETED)

        everything = [e async for e in reader.replay(layout.object_subjects)]
        assert len(everything) == len(refs)
        by_namespace = {layout.decode(e.subject)[1].namespace: e for e in everything}
        assert by_namespace["ns-0"].resource_version == "100"
        assert by_namespace["ns-1"].deleted

        for partition in range(4):
            in_partition = [e async for e in reader.replay(layout.partition_filter(partition))]
            assert {layout.decode(e.subject)[0] for e in in_partition} <= {partition}

        latest = await reader.latest(refs[0])
        assert isinstance(latest, Envelope)
        assert latest.object() == {"rv": 100}
        assert await reader.latest(ObjectRef(CONFIGMAPS, "nowhere", "cm")) is None

        start = await publish(refs[2], 200)
        followed: list[Envelope] = []

        async def follow() -> None:
            async for envelope in reader.follow(layout.object_subjects, from_sequence=start):
                followed.append(envelope)
                if len(followed) == 2:
                    return

        following = asyncio.create_task(follow())
        await publish(refs[3], 201)
        await asyncio.wait_for(following, timeout=10)
        assert [e.resource_version for e in followed] == ["200", "201"]

    with_jetstream(stack_env, scenario)


def test_a_replay_whose_pending_messages_vanish_ends_with_what_it_read(
    stack_env: dict[str, str],
) -> None:
    # The replay asks for as many messages as the consumer said were pending; those still to
    # come may be deleted meanwhile (superseded, expired, purged). It must end, not wait for
    # them forever: a partition whose replay never ends is never reconciled.
    layout = layout_of_its_own(partitions=1)
    objects = 1500  # more than one fetch takes, so the replay comes back for the rest

    async def scenario(js: JetStreamContext) -> int:
        await ensure_object_stream(js, layout)
        for i in range(objects):
            ref = ObjectRef(CONFIGMAPS, "shop", f"cm-{i}")
            headers = {Header.EVENT: EventType.ADDED.value, Header.RESOURCE_VERSION: "1"}
            await js.publish(layout.subject(ref), b"{}", headers=headers)
        read = 0
        async with asyncio.timeout(60):
            async for _envelope in ObjectStreamReader(js, layout).replay(layout.object_subjects):
                read += 1
                if read == 1:
                    await js.purge_stream(layout.object_stream)
        return read

    read = with_jetstream(stack_env, scenario)
    assert 1 <= read < objects

"""The watcher's JetStream producer against a real NATS server: acks, refusals, lost answers."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import TypeVar

import nats
import pytest
from nats.aio.client import Client as NatsClient

from bus.envelope import EventType, Header, header_block
from bus.layout import BusLayout
from bus.producer import JetStreamProducer, NotConnected, PubAck, PublishRejected, PublishTimeout
from bus.streams import ensure_object_stream

pytestmark = pytest.mark.integration

T = TypeVar("T")
Outcome = tuple[PubAck | None, BaseException | None]


def with_connection(stack_env: dict[str, str], work: Callable[[NatsClient], Awaitable[T]]) -> T:
    async def run() -> T:
        connection = await nats.connect(stack_env["NATS_URL"])
        try:
            return await work(connection)
        finally:
            await connection.close()

    return asyncio.run(run())


def publish(
    producer: JetStreamProducer, subject: str, headers: bytes, payload: bytes
) -> asyncio.Future[Outcome]:
    outcome: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
    producer.publish(subject, headers, payload, lambda ack, error: outcome.set_result((ack, error)))
    return outcome


def test_many_messages_are_acked_in_order_with_their_headers(stack_env: dict[str, str]) -> None:
    layout = BusLayout(prefix="t" + uuid.uuid4().hex[:10])
    subjects = [f"{layout.prefix}.obj.0.core.v1.configmaps.ns.cm-{i}" for i in range(500)]

    async def work(connection: NatsClient) -> None:
        js = connection.jetstream()
        await ensure_object_stream(js, layout)
        producer = JetStreamProducer(stack_env["NATS_URL"])
        await producer.start()
        try:
            outcomes = [
                publish(
                    producer,
                    subject,
                    header_block(EventType.ADDED, str(100 + index), f"uid-{index}", 0),
                    b'{"i": %d}' % index,
                )
                for index, subject in enumerate(subjects)
            ]
            results = await asyncio.gather(*outcomes)
        finally:
            await producer.close()
        assert [error for _ack, error in results] == [None] * len(subjects)
        sequences = [ack.seq for ack, _error in results if ack is not None]
        assert sequences == sorted(sequences) and len(set(sequences)) == len(subjects)
        stored = await js.get_last_msg(layout.object_stream, subjects[7])
        assert stored.headers is not None
        assert stored.headers[Header.EVENT] == "ADDED"
        assert stored.headers[Header.RESOURCE_VERSION] == "107"
        assert stored.headers[Header.MSG_ID] == "uid-7:107"
        assert stored.data == b'{"i": 7}'

    with_connection(stack_env, work)


def test_a_failed_compare_and_set_is_reported_with_jetstreams_code(
    stack_env: dict[str, str],
) -> None:
    layout = BusLayout(prefix="t" + uuid.uuid4().hex[:10])
    subject = f"{layout.prefix}.obj.0.core.v1.configmaps.ns.cm"

    async def work(connection: NatsClient) -> None:
        await ensure_object_stream(connection.jetstream(), layout)
        producer = JetStreamProducer(stack_env["NATS_URL"])
        await producer.start()
        try:
            first, _ = await publish(
                producer, subject, header_block(EventType.ADDED, "1", "u", 0), b"{}"
            )
            assert first is not None
            # Expecting the subject to be empty again: someone else's write got there first.
            ack, error = await publish(
                producer, subject, header_block(EventType.MODIFIED, "2", "u", 0), b"{}"
            )
        finally:
            await producer.close()
        assert ack is None
        assert isinstance(error, PublishRejected)
        assert error.err_code == 10071
        assert subject in str(error)

    with_connection(stack_env, work)


def test_a_subject_no_stream_holds_is_refused_not_left_hanging(stack_env: dict[str, str]) -> None:
    async def work(connection: NatsClient) -> None:
        producer = JetStreamProducer(stack_env["NATS_URL"])
        await producer.start()
        try:
            ack, error = await asyncio.wait_for(
                publish(producer, f"nowhere.{uuid.uuid4().hex}", b"NATS/1.0\r\n\r\n", b"x"),
                timeout=10,
            )
        finally:
            await producer.close()
        assert ack is None
        assert isinstance(error, PublishRejected)
        assert "no stream" in str(error)

    with_connection(stack_env, work)


def test_an_unanswered_message_times_out_and_close_fails_the_rest(
    stack_env: dict[str, str],
) -> None:
    async def work(connection: NatsClient) -> None:
        subject = f"silent.{uuid.uuid4().hex}"
        # A plain subscriber takes the message and never answers, as a stalled server would.
        await connection.subscribe(subject, cb=_ignore)
        producer = JetStreamProducer(stack_env["NATS_URL"], ack_timeout=1.0)
        await producer.start()
        try:
            ack, error = await asyncio.wait_for(
                publish(producer, subject, b"NATS/1.0\r\n\r\n", b"x"), timeout=10
            )
            assert ack is None
            assert isinstance(error, PublishTimeout)
            assert subject in str(error)
            left = publish(producer, subject, b"NATS/1.0\r\n\r\n", b"y")
        finally:
            await producer.close()
        ack, error = await asyncio.wait_for(left, timeout=5)
        assert ack is None
        assert isinstance(error, NotConnected)

    with_connection(stack_env, work)


async def _ignore(_msg: object) -> None:
    return None

"""The streaming pull consumer against a real nats-server: each message is handed over as soon
as it exists, a trickle of messages costs the server a handful of pull requests rather than
several per message, a server restart loses no delivery, and a deleted consumer is reported."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StreamConfig

from bus.pull import ConsumerGone, PullStream
from tests.support.nats_server import NatsServer
from tests.support.wait import wait_until

pytestmark = pytest.mark.integration

STREAM = "pulltest"


async def _setup(url: str) -> tuple[NatsClient, JetStreamContext]:
    connection = await nats.connect(url, max_reconnect_attempts=-1, reconnect_time_wait=0.2)
    js = connection.jetstream()
    await js.add_stream(StreamConfig(name=STREAM, subjects=[f"{STREAM}.>"]))
    await js.add_consumer(
        STREAM,
        ConsumerConfig(
            durable_name="reader",
            deliver_policy=DeliverPolicy.ALL,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=300,
        ),
    )
    return connection, js


async def _collect(stream: PullStream, got: list[Msg], until: int, within: float) -> None:
    deadline = time.monotonic() + within
    while len(got) < until:
        assert time.monotonic() < deadline, f"{len(got)} of {until} messages delivered"
        for message in await stream.next(0.5):
            got.append(message)
            await message.ack()


def test_a_trickle_is_delivered_message_by_message_on_a_few_pull_requests(
    tmp_path: Path,
) -> None:
    async def scenario(url: str) -> None:
        connection, js = await _setup(url)
        requests: list[bytes] = []

        async def count(message: Msg) -> None:
            requests.append(message.data)

        # A plain subscriber sees every pull request sent to the consumer (the server's own
        # subscription still answers them).
        watcher = await nats.connect(url)
        await watcher.subscribe(f"$JS.API.CONSUMER.MSG.NEXT.{STREAM}.reader", cb=count)
        await watcher.flush()
        stream = PullStream(js, stream=STREAM, consumer="reader", batch=64)
        await stream.start()
        try:
            got: list[Msg] = []
            for index in range(40):
                await js.publish(f"{STREAM}.item", str(index).encode())
                # each message is handed over on its own, not held for a fuller batch
                await _collect(stream, got, index + 1, within=5)
            assert [m.data for m in got] == [str(i).encode() for i in range(40)]
            await watcher.flush()
            # one request of 64, and one more when fewer than 32 were still to come
            assert 1 <= len(requests) <= 3, requests
            await connection.flush()
            deadline = time.monotonic() + 5
            while (info := await js.consumer_info(STREAM, "reader")).num_ack_pending:
                assert time.monotonic() < deadline, f"{info.num_ack_pending} never acked"
                await asyncio.sleep(0.05)
            assert info.num_pending == 0
        finally:
            await stream.stop()
            await watcher.close()
            await connection.close()

    with NatsServer(tmp_path / "nats", jetstream=True) as server:
        asyncio.run(scenario(server.url()))


def test_a_server_restart_loses_no_delivery(tmp_path: Path) -> None:
    async def scenario(server: NatsServer) -> None:
        connection, js = await _setup(server.url())
        stream = PullStream(js, stream=STREAM, consumer="reader", batch=16, heartbeat=0.5)
        await stream.start()
        try:
            got: list[Msg] = []
            await js.publish(f"{STREAM}.item", b"before")
            await _collect(stream, got, 1, within=5)
            # The open pull request dies with the server; the stream must notice (missed
            # heartbeats) and ask again on the new connection.
            await asyncio.to_thread(server.restart, kill=True)
            await wait_until(lambda: connection.is_connected, within=20, what="reconnected")
            await js.publish(f"{STREAM}.item", b"after")
            await _collect(stream, got, 2, within=15)
            assert [m.data for m in got] == [b"before", b"after"]
        finally:
            await stream.stop()
            await connection.close()

    with NatsServer(tmp_path / "nats", jetstream=True) as server:
        asyncio.run(scenario(server))


def test_a_deleted_consumer_is_reported(tmp_path: Path) -> None:
    async def scenario(url: str) -> None:
        connection, js = await _setup(url)
        stream = PullStream(js, stream=STREAM, consumer="reader", batch=16, heartbeat=0.5)
        await stream.start()
        try:
            await js.delete_consumer(STREAM, "reader")
            with pytest.raises(ConsumerGone, match="consumer reader"):
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline:
                    await stream.next(0.5)
        finally:
            await stream.stop()
            await connection.close()

    with NatsServer(tmp_path / "nats", jetstream=True) as server:
        asyncio.run(scenario(server.url()))

"""A partition's runner and a cache follower against a real nats-server: poison messages go to
the dead-letter stream while the partition goes on; cluster-scoped objects are followed across
every partition; a lost consumer ends the run (for the supervisor to restart)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import msgspec
import nats
import pytest
from nats.js import JetStreamContext

from bus.deadletter import DeadLetterHeader, ensure_dead_letter_stream
from bus.envelope import Envelope
from bus.layout import BusLayout
from bus.streams import ensure_object_stream
from bus.subjects import ObjectRef, ResourceType, partition_of
from reconcilers.cache import CLUSTER, ObjectCache
from reconcilers.follower import StreamFollower
from reconcilers.partition import MAX_DELIVERIES, PartitionRunner
from tests.support.nats_server import NatsServer
from tests.support.wait import wait_until

pytestmark = pytest.mark.integration

CONFIGMAPS = ResourceType("", "v1", "configmaps")
NODES = ResourceType("", "v1", "nodes")
LAYOUT = BusLayout(prefix="rt", partitions=4)


def _headers(rv: int, uid: str = "u") -> dict[str, str]:
    return {"Kubus-Event": "MODIFIED", "Kubus-Resource-Version": str(rv), "Kubus-Uid": uid}


def _object(ref: ObjectRef, rv: int) -> bytes:
    meta: dict[str, Any] = {"name": ref.name, "resourceVersion": str(rv), "uid": ref.name}
    if ref.namespace:
        meta["namespace"] = ref.namespace
    return msgspec.json.encode({"metadata": meta})


async def _publish(
    js: JetStreamContext, ref: ObjectRef, payload: bytes, headers: dict[str, str]
) -> None:
    await js.publish(LAYOUT.subject(ref), payload, headers=headers)


def test_poison_messages_are_dead_lettered_and_the_partition_goes_on(tmp_path: Path) -> None:
    async def scenario(url: str) -> None:
        connection = await nats.connect(url)
        js = connection.jetstream()
        await ensure_object_stream(js, LAYOUT)
        await ensure_dead_letter_stream(js, LAYOUT)
        namespace = "shop"
        partition = partition_of(namespace, "", LAYOUT.partitions)
        cache = ObjectCache()

        def deliver(p: int, ref: ObjectRef, envelope: Envelope, message: Any) -> bool:
            cache.apply(p, ref, envelope)
            return False

        runner = PartitionRunner(
            partition=partition,
            js=js,
            layout=LAYOUT,
            pool="default",
            deliver=deliver,
            replayed=lambda p, refs: None,
            wanted=lambda ref: True,
        )
        task = asyncio.get_running_loop().create_task(runner.run())
        try:
            await wait_until(runner.replayed.is_set, within=10, what="replayed")
            poison = ObjectRef(CONFIGMAPS, namespace, "poison")
            await _publish(js, poison, b"{not json", _headers(1))
            good = ObjectRef(CONFIGMAPS, namespace, "good")
            await _publish(js, good, _object(good, 2), _headers(2, "g"))
            await wait_until(
                lambda: cache.get(CONFIGMAPS, namespace, "good"), within=10, what="good applied"
            )

            async def dead_letters() -> int:
                info = await js.stream_info(LAYOUT.dead_letter_stream)
                return info.state.messages

            for _ in range(200):
                if await dead_letters():
                    break
                await asyncio.sleep(0.1)
            letter = await js.get_msg(LAYOUT.dead_letter_stream, 1)
            assert letter.data == b"{not json"
            assert letter.headers[DeadLetterHeader.SUBJECT] == LAYOUT.subject(poison)
            assert letter.headers[DeadLetterHeader.DELIVERIES] == str(MAX_DELIVERIES)
            assert "DecodeError" in letter.headers[DeadLetterHeader.ERROR]
            assert not task.done(), "the runner goes on"
            after = ObjectRef(CONFIGMAPS, namespace, "after")
            await _publish(js, after, _object(after, 3), _headers(3, "a"))
            await wait_until(
                lambda: cache.get(CONFIGMAPS, namespace, "after"), within=10, what="after applied"
            )
            # The runner's own consumer comes to show nothing left pending (the poison was
            # acked, and so was the next message; an ack reaches the server a moment later).
            durable = f"default-p{partition:02d}"
            for _ in range(100):
                info = await js.consumer_info(LAYOUT.object_stream, durable)
                if not info.num_ack_pending:
                    break
                await asyncio.sleep(0.05)
            assert (info.num_ack_pending or 0) == 0, info
        finally:
            runner.stop()
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await connection.close()

    with NatsServer(tmp_path / "nats", jetstream=True) as server:
        asyncio.run(scenario(server.url()))


def test_a_follower_holds_cluster_scoped_objects_of_every_partition_and_fails_loudly(
    tmp_path: Path,
) -> None:
    async def scenario(url: str) -> None:
        connection = await nats.connect(url)
        js = connection.jetstream()
        await ensure_object_stream(js, LAYOUT)
        nodes = [ObjectRef(NODES, None, f"node-{i}") for i in range(12)]
        for index, ref in enumerate(nodes[:6]):
            await _publish(js, ref, _object(ref, index + 1), _headers(index + 1, ref.name))
        assert len({partition_of(None, r.name, LAYOUT.partitions) for r in nodes}) > 1
        cache = ObjectCache()
        live: list[str] = []

        def deliver(ref: ObjectRef, envelope: Envelope, replaying: bool) -> None:
            cache.apply(CLUSTER, ref, envelope)
            if not replaying:
                live.append(ref.name)

        follower = StreamFollower(
            name="cluster-scoped cache",
            js=js,
            layout=LAYOUT,
            filters=[LAYOUT.cluster_scoped_filter(NODES)],
            deliver=deliver,
            replayed=lambda refs: None,
        )
        task = asyncio.get_running_loop().create_task(follower.run())
        try:
            await wait_until(follower.replayed.is_set, within=10, what="replayed")
            assert cache.counts() == {NODES: 6}
            for index, ref in enumerate(nodes[6:]):
                await _publish(js, ref, _object(ref, 100 + index), _headers(100 + index, ref.name))
            await wait_until(lambda: len(live) == 6, within=10, what="followed")
            assert cache.counts() == {NODES: 12}
            cache.drop_partition(0)  # partitions come and go; cluster-scoped objects stay
            assert cache.counts() == {NODES: 12}
            for consumer in await js.consumers_info(LAYOUT.object_stream):
                await js.delete_consumer(LAYOUT.object_stream, consumer.name)
            await asyncio.wait_for(asyncio.shield(task), timeout=30)
        except Exception as error:  # the run ends with the consumer's loss
            assert task.done()
            assert "consumer of rt.obj.*.core.v1.nodes._.* is lost" in str(error), error
        else:
            raise AssertionError("the follower carried on without its consumer")
        finally:
            follower.stop()
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await connection.close()

    with NatsServer(tmp_path / "nats", jetstream=True) as server:
        asyncio.run(scenario(server.url()))


def test_a_runner_with_filters_is_sent_only_the_kinds_they_name(tmp_path: Path) -> None:
    # A pool whose controllers read ConfigMaps must not be sent Secrets (nor wait on their
    # acks): its consumer is filtered on the server, in the replay and after it.
    secrets, pods = ResourceType("", "v1", "secrets"), ResourceType("", "v1", "pods")

    async def scenario(url: str) -> None:
        connection = await nats.connect(url)
        js = connection.jetstream()
        await ensure_object_stream(js, LAYOUT)
        await ensure_dead_letter_stream(js, LAYOUT)
        namespace = "shop"
        partition = partition_of(namespace, "", LAYOUT.partitions)
        delivered: list[tuple[ObjectRef, bool]] = []

        def deliver(p: int, ref: ObjectRef, envelope: Envelope, message: Any) -> bool:
            delivered.append((ref, message is None))  # (what, while replaying)
            return False

        before = [
            ObjectRef(CONFIGMAPS, namespace, "cm-1"),
            ObjectRef(secrets, namespace, "s-1"),
            ObjectRef(pods, namespace, "pod-1"),
        ]
        filters = [LAYOUT.resource_filter(kind, partition) for kind in (CONFIGMAPS, pods)]
        for rv, ref in enumerate(before, start=1):
            await _publish(js, ref, _object(ref, rv), _headers(rv, ref.name))
        runner = PartitionRunner(
            partition=partition,
            js=js,
            layout=LAYOUT,
            pool="default",
            deliver=deliver,
            replayed=lambda p, refs: None,
            wanted=lambda ref: True,  # the filters alone keep the Secrets away
            filters=filters,
        )
        task = asyncio.get_running_loop().create_task(runner.run())
        try:
            await wait_until(runner.replayed.is_set, within=10, what="replayed")
            after = [ObjectRef(secrets, namespace, "s-2"), ObjectRef(CONFIGMAPS, namespace, "cm-2")]
            for rv, ref in enumerate(after, start=4):
                await _publish(js, ref, _object(ref, rv), _headers(rv, ref.name))
            await wait_until(
                lambda: any(ref.name == "cm-2" for ref, _ in delivered),
                within=10,
                what="cm-2 delivered",
            )
            assert [(ref.name, replaying) for ref, replaying in delivered] == [
                ("cm-1", True),
                ("pod-1", True),
                ("cm-2", False),
            ]
            info = await js.consumer_info(LAYOUT.object_stream, f"default-p{partition:02d}")
            assert info.config.filter_subjects == filters
            assert (info.num_pending or 0) == 0  # the Secret after the replay is not pending
        finally:
            runner.stop()
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await connection.close()

    with NatsServer(tmp_path / "nats", jetstream=True) as server:
        asyncio.run(scenario(server.url()))

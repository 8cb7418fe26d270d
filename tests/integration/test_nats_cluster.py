"""kubus on its production NATS: three nats-servers on 127.0.0.1 as one JetStream cluster, each
started from deploy/components/nats-cluster/nats.conf (tests/support/nats_cluster.py renders
it for loopback), with TLS from a CA of the test's own and the production users.

- TLS: without ``--nats-tls-ca`` the commands stop at once with one line saying the server's
  certificate is not trusted; with it kubus connects (the pool below runs on it).
- Permissions: the servers refuse the reconciler an object state and the watcher the pool's
  lease bucket (its keys and its stream), and let the right user do the same.
- A node killed with SIGKILL in the middle of a rollout, the watcher and a pool of two
  reconcilers running on the cluster at ``--stream-replicas 3``: the rollout completes, every
  pod the ReplicaSet wants exists and is on the bus at its current resourceVersion, the
  survivors hold the same stream, and the node, started again on its store, rejoins and
  catches up. No kubus process meets a permissions violation meanwhile.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nats
import pytest
from kubernetes import client
from nats.aio.client import Client as NatsClient
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.errors import KeyNotFoundError

from bus.connect import NatsConnectError, check_jetstream, connect_nats, nats_tls_context
from bus.layout import BusLayout
from bus.reader import ObjectStreamReader
from bus.streams import StreamSettings, ensure_bucket, ensure_object_stream
from bus.subjects import ObjectRef, ResourceType
from tests.integration.test_deployment import complete, deployment, replicasets_of, set_image
from tests.support.nats_cluster import NatsCluster, Tls, make_password, make_tls
from tests.support.services import Pool
from tests.support.wait import wait_for, wait_until

pytestmark = pytest.mark.integration

LAYOUT = BusLayout()  # the production names: prefix kubus, pool default (nats.conf's)
POOL = "default"
LEASES = f"kubus-{POOL}-leases"
POOL_BUCKETS = tuple(f"kubus-{POOL}-{what}" for what in ("members", "leases", "leaders"))
PODS = ResourceType("", "v1", "pods")
REPLICAS = 20
# A rollout in small steps (2 new pods at a time, none unavailable): long enough to kill a
# node in its middle.
STEPS = {
    "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 2, "maxUnavailable": 0}}
}


@pytest.fixture
def tls(tmp_path: Path) -> Tls:
    return make_tls(tmp_path / "tls")


@pytest.fixture
def cluster(tmp_path: Path, tls: Tls) -> Iterator[NatsCluster]:
    passwords = {"watcher": make_password(), "reconciler": make_password()}
    with NatsCluster(tmp_path / "nats", tls, passwords) as running:
        yield running


async def connect(cluster: NatsCluster, user: str, errors: list[str] | None = None) -> NatsClient:
    """nats-py as ``user``, to the three servers, trusting the test's CA; the errors the
    server sends (permissions violations) are collected in ``errors``."""

    async def on_error(error: Exception) -> None:
        if errors is not None:
            errors.append(str(error))

    return await nats.connect(
        servers=cluster.url(user).split(","),
        tls=nats_tls_context(cluster.tls.ca),
        error_cb=on_error,
        name=f"test-as-{user}",
        connect_timeout=5,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.2,
    )


# --- TLS --------------------------------------------------------------------------------------


def test_tls_is_verified_against_the_ca_file_and_refused_without_it(
    cluster: NatsCluster,
) -> None:
    url = cluster.url("watcher")

    async def run() -> None:
        with pytest.raises(NatsConnectError) as raised:
            await connect_nats(url, name="no-ca", within=10)
        message = str(raised.value)
        assert "the server's TLS certificate is not trusted" in message
        assert "certificate verify failed" in message
        assert "--nats-tls-ca" in message
        assert cluster.passwords["watcher"] not in message

        client_ = await connect_nats(
            url, name="with-ca", within=10, tls=nats_tls_context(cluster.tls.ca)
        )
        try:
            await check_jetstream(client_, url, replicas=3)
            assert client_.connected_url is not None
            assert client_.connected_url.port in {node.port for node in cluster.nodes}
        finally:
            await client_.close()

    asyncio.run(run())


@pytest.mark.parametrize("command", ["watcher", "reconciler"])
def test_without_the_ca_a_command_stops_at_once_with_one_line(
    cluster: NatsCluster, stack_env: dict[str, str], tmp_path: Path, command: str
) -> None:
    user = "watcher" if command == "watcher" else "reconciler"
    started = time.monotonic()
    result = subprocess.run(
        [
            sys.executable, "-m", "kubus.cli", command,
            f"--kubeconfig={stack_env['KUBECONFIG']}",
            f"--nats-url={cluster.url(user)}",
            "--connect-timeout=20s",
            "--health-probe-bind-address=0", "--metrics-bind-address=0",
        ],
        env={k: v for k, v in {**os.environ, **stack_env}.items() if k != "NATS_TLS_CA"},
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    took = time.monotonic() - started
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1, result.stderr
    assert len(lines) == 1, lines
    assert lines[0].startswith(
        f"kubus {command}: error: --nats-url: cannot connect to NATS at tls://127.0.0.1:"
    )
    assert "the server's TLS certificate is not trusted" in lines[0]
    assert "--nats-tls-ca names the CA that signed it" in lines[0]
    assert cluster.passwords[user] not in result.stderr + result.stdout
    assert took < 15, f"refused at once, not at --connect-timeout ({took:.1f}s)"


# --- permissions ------------------------------------------------------------------------------


def test_the_servers_refuse_each_user_the_other_components_subjects(cluster: NatsCluster) -> None:
    async def run() -> None:
        watcher_errors: list[str] = []
        reconciler_errors: list[str] = []
        watcher = await connect(cluster, "watcher", watcher_errors)
        reconciler = await connect(cluster, "reconciler", reconciler_errors)
        try:
            # As kubus provisions them, each as its own user.
            await ensure_object_stream(watcher.jetstream(), LAYOUT, StreamSettings(replicas=3))
            leases = None
            for bucket in POOL_BUCKETS:
                kv = await ensure_bucket(
                    reconciler.jetstream(), bucket, ttl_seconds=600, replicas=3
                )
                leases = kv if bucket == LEASES else leases
            assert leases is not None
            await leases.put("p07", b"member-a")
            subject = LAYOUT.subject(
                ObjectRef(ResourceType("apps", "v1", "deployments"), "shop", "web")
            )

            # The reconciler publishes an object state: refused by the server, nothing stored.
            await reconciler.publish(subject, b'{"kind": "Deployment"}')
            await reconciler.flush()
            with pytest.raises(NatsTimeoutError):  # no stream ever sees it, so no ack comes
                await reconciler.jetstream().publish(subject, b'{"kind": "Deployment"}', timeout=2)
            reader = ObjectStreamReader(watcher.jetstream(), LAYOUT)
            assert (
                await reader.latest(
                    ObjectRef(ResourceType("apps", "v1", "deployments"), "shop", "web")
                )
                is None
            )

            # The watcher touches the pool's lease bucket: its keys, then its stream. A refused
            # API request gets no answer: it times out.
            await watcher.publish(f"$KV.{LEASES}.p07", b"member-mallory")
            await watcher.flush()
            js = watcher.jetstream(timeout=2)
            with pytest.raises(NatsTimeoutError):
                await js.delete_stream(f"KV_{LEASES}")
            with pytest.raises(NatsTimeoutError):
                await js.purge_stream(f"KV_{LEASES}")
            with pytest.raises(NatsTimeoutError):
                await js.delete_consumer(f"KV_{LEASES}", "any")
            with pytest.raises(NatsTimeoutError):
                await js.key_value(LEASES)  # not even to read it

            # Each refusal came back from the server as a permissions violation naming the
            # subject (nats-py lowercases the server's message).
            expected_reconciler = {f'nats: permissions violation for publish to "{subject}"'}
            expected_watcher = {
                f'nats: permissions violation for publish to "{denied}"'
                for denied in (
                    f"$kv.{LEASES}.p07",
                    f"$js.api.stream.delete.kv_{LEASES}",
                    f"$js.api.stream.purge.kv_{LEASES}",
                    f"$js.api.consumer.delete.kv_{LEASES}.any",
                    f"$js.api.stream.info.kv_{LEASES}",
                )
            }
            await wait_until(
                lambda: (
                    set(reconciler_errors) >= expected_reconciler
                    and set(watcher_errors) >= expected_watcher
                ),
                within=10,
                what="the servers' permissions violations",
            )
            assert set(reconciler_errors) == expected_reconciler
            assert set(watcher_errors) == expected_watcher
            # Nothing changed: the lease is the reconciler's, the stream is there.
            entry = await leases.get("p07")
            assert entry.value == b"member-a"
            assert (
                await reconciler.jetstream().stream_info(f"KV_{LEASES}")
            ).config.num_replicas == 3

            # The same operations by the user they belong to go through.
            ack = await watcher.jetstream().publish(subject, b'{"kind": "Deployment"}')
            assert ack.stream == LAYOUT.object_stream
            await leases.put("p07", b"member-b")
            assert (await leases.get("p07")).value == b"member-b"
            await leases.delete("p07")
            with pytest.raises(KeyNotFoundError):
                await leases.get("p07")
            # ... without a single refusal more.
            assert set(reconciler_errors) == expected_reconciler
            assert set(watcher_errors) == expected_watcher
        finally:
            await watcher.close()
            await reconciler.close()

    asyncio.run(run())
    # The servers logged each refusal, naming the user and the subject.
    logged = cluster.violations()
    assert any(
        '/user:reconciler" - Publish Violation - Subject "kubus.obj.' in line for line in logged
    ), logged
    assert any(
        f'/user:watcher" - Publish Violation - Subject "$KV.{LEASES}.p07"' in line
        for line in logged
    ), logged


# --- a node killed during a rollout -------------------------------------------------------


def _owner(stream: str) -> str:
    """The user allowed to look at ``stream``: the watcher's, or the reconciler's."""
    return "watcher" if stream in (LAYOUT.object_stream, "KV_kubus-watcher") else "reconciler"


def _stream_info(cluster: NatsCluster, stream: str) -> Any:
    async def read() -> Any:
        connection = await connect(cluster, _owner(stream))
        try:
            return await connection.jetstream().stream_info(stream)
        finally:
            await connection.close()

    return asyncio.run(read())


def _bus_resource_versions(cluster: NatsCluster, namespace: str) -> dict[str, str]:
    """Pod name -> the resourceVersion the bus holds (live objects only)."""

    async def read() -> dict[str, str]:
        connection = await connect(cluster, "watcher")
        try:
            reader = ObjectStreamReader(connection.jetstream(), LAYOUT)
            found: dict[str, str] = {}
            async for envelope in reader.replay(LAYOUT.resource_filter(PODS)):
                _partition, ref = LAYOUT.decode(envelope.subject)
                if ref.namespace == namespace and not envelope.deleted:
                    found[ref.name] = envelope.resource_version
            return found
        finally:
            await connection.close()

    return asyncio.run(read())


def _pods(core: client.CoreV1Api, namespace: str, name: str) -> list[Any]:
    return [
        pod
        for pod in core.list_namespaced_pod(namespace, label_selector=f"app={name}").items
        if pod.metadata.deletion_timestamp is None
    ]


def _replicas_of_the_stream(cluster: NatsCluster, stream: str) -> dict[str, Any] | None:
    """name -> (current, offline) of every replica of ``stream``, the leader's included, if
    it has a leader."""
    info = _stream_info(cluster, stream)
    state = info.cluster
    if state is None or not state.leader:
        return None
    peers = {state.leader: {"current": True, "offline": False, "lag": 0}}
    for peer in state.replicas or ():
        peers[peer.name] = {"current": peer.current, "offline": bool(peer.offline), "lag": peer.lag}
    return peers


def _roll(apps: client.AppsV1Api, namespace: str, name: str, image: str) -> float:
    started = time.monotonic()
    set_image(apps, namespace, name, image)
    wait_for(
        lambda: complete(apps, namespace, name), timeout=180, what=f"{name} rolled out to {image}"
    )
    return time.monotonic() - started


def _provision_object_stream(cluster: NatsCluster) -> None:
    """The object stream as the watcher makes it (the same call, the same settings)."""

    async def run() -> None:
        connection = await connect(cluster, "watcher")
        try:
            await ensure_object_stream(connection.jetstream(), LAYOUT, StreamSettings(replicas=3))
        finally:
            await connection.close()

    asyncio.run(run())


def _trouble(pool: Pool, lines: int = 20) -> str:
    """The last error and warning lines of each kubus process: what a failure report needs."""
    found = []
    for process in [pool.watcher, *pool.reconcilers]:
        text = process.log.read_text(errors="replace") if process.log.exists() else ""
        troubles = [line[:300] for line in text.splitlines() if line[:1] in ("E", "W")]
        found.append(f"{process.log.name}: " + "\n".join(troubles[-lines:]))
    return "\n".join(found)


def test_a_node_killed_mid_rollout_loses_nothing_and_rejoins(
    cluster: NatsCluster, kube: Any, namespace: str, stack_env: dict[str, str], tmp_path: Path
) -> None:
    apps, core = client.AppsV1Api(kube), client.CoreV1Api(kube)
    # The node to kill leads the object stream and holds every kubus connection (kubus tries
    # the servers in the order given): the kill costs the stream its leader and each kubus
    # process its connection, at once.
    _provision_object_stream(cluster)
    victim = cluster.node(
        wait_for(
            lambda: _stream_info(cluster, LAYOUT.object_stream).cluster.leader,
            timeout=30,
            what="a leader of the object stream",
        )
    )
    pool = Pool(
        stack_env,
        tmp_path,
        LAYOUT.prefix,
        2,
        [
            f"--nats-url={cluster.url('reconciler', first=victim)}",
            "--stream-replicas=3",
            "--controllers=deployment,replicaset",
        ],
        env={"NATS_TLS_CA": str(cluster.tls.ca)},
        watcher_args=[
            f"--nats-url={cluster.url('watcher', first=victim)}",
            "--stream-replicas=3",
            "--resources=apps/v1/deployments,apps/v1/replicasets,v1/pods",
        ],
    )
    kubus_clients = [
        "kubus-reconciler-",
        "kubus-reconciler-",
        "kubus-watcher",
        "kubus-watcher-publisher",
    ]

    def connected_kubus(node: Any) -> list[str]:
        return sorted(
            "kubus-reconciler-" if name.startswith("kubus-reconciler-") else name
            for name in cluster.clients(node)
            if name.startswith("kubus-") and not name.endswith("-check")
        )

    try:
        pool.start()
        assert connected_kubus(victim) == kubus_clients
        # Everything kubus keeps in NATS is held by all three servers.
        for stream in (
            LAYOUT.object_stream,
            LAYOUT.dead_letter_stream,
            "KV_kubus-watcher",
            *(f"KV_{b}" for b in POOL_BUCKETS),
        ):
            assert _stream_info(cluster, stream).config.num_replicas == 3, stream
            wait_for(
                lambda s=stream: (r := _replicas_of_the_stream(cluster, s)) and len(r) == 3,
                timeout=30,
                what=f"{stream}: 3 replicas",
            )

        # Without a kill: a rollout of 20 pods, then a rolling update of all of them.
        started = time.monotonic()
        apps.create_namespaced_deployment(namespace, deployment("calm", REPLICAS, **STEPS))
        wait_for(lambda: complete(apps, namespace, "calm"), timeout=180, what="calm available")
        calm_create = time.monotonic() - started
        calm_update = _roll(apps, namespace, "calm", "registry.example/web:2")

        # With one: the same, the object stream's leader killed in the middle of the update.
        apps.create_namespaced_deployment(namespace, deployment("web", REPLICAS, **STEPS))
        wait_for(lambda: complete(apps, namespace, "web"), timeout=180, what="web available")
        assert _stream_info(cluster, LAYOUT.object_stream).cluster.leader == victim.name
        started = time.monotonic()
        set_image(apps, namespace, "web", "registry.example/web:2")

        def midway() -> int | None:
            status = apps.read_namespaced_deployment_status("web", namespace).status
            updated = status.updated_replicas or 0
            return updated if 4 <= updated < REPLICAS else None

        updated_at_kill = wait_for(midway, timeout=60, interval=0.05, what="web's update under way")
        cluster.kill(victim)
        killed_at = time.monotonic()
        assert not complete(apps, namespace, "web"), "the kill came after the rollout"

        try:
            web = wait_for(
                lambda: complete(apps, namespace, "web"),
                timeout=240,
                what="web rolled out after the kill",
            )
        except AssertionError as failure:
            status = apps.read_namespaced_deployment_status("web", namespace).status
            raise AssertionError(f"{failure}; web's status {status}; {_trouble(pool)}") from None
        web_update = time.monotonic() - started
        completed_after_kill = time.monotonic() - killed_at

        # The Deployment says it is done; the ReplicaSet has every pod it wants, no more.
        assert web.status.updated_replicas == web.status.available_replicas == REPLICAS
        assert web.metadata.annotations["deployment.kubernetes.io/revision"] == "2"
        current = [rs for rs in replicasets_of(apps, namespace, "web") if rs.spec.replicas]
        (new,) = current
        assert new.spec.template.spec.containers[0].image == "registry.example/web:2"
        assert new.status.replicas == new.status.available_replicas == REPLICAS

        def pods_settled() -> list[Any] | None:
            pods = _pods(core, namespace, "web")
            return pods if len(pods) == REPLICAS else None

        pods = wait_for(pods_settled, timeout=60, what="web's old pods gone")
        hash_ = new.metadata.labels["pod-template-hash"]
        assert {p.metadata.labels["pod-template-hash"] for p in pods} == {hash_}
        assert all(
            any(r.uid == new.metadata.uid for r in p.metadata.owner_references) for p in pods
        )

        # Nothing lost on the bus: every pod of the namespace at its current resourceVersion.
        def bus_caught_up() -> bool:
            live = {
                p.metadata.name: p.metadata.resource_version
                for p in core.list_namespaced_pod(namespace).items
            }
            return _bus_resource_versions(cluster, namespace) == live

        wait_for(bus_caught_up, timeout=60, interval=1, what="the bus to hold every pod's state")

        # The two survivors hold the same stream.
        survivors = [node for node in cluster.nodes if node is not victim]

        def survivors_agree() -> dict[str, Any] | None:
            states = [cluster.stream_state(node, LAYOUT.object_stream) for node in survivors]
            if any(s is None for s in states):
                return None
            shapes = {(s["state"]["messages"], s["state"]["last_seq"]) for s in states if s}
            return states[0] if len(shapes) == 1 else None

        agreed = wait_for(survivors_agree, timeout=30, what="the survivors' streams to agree")
        messages, last_seq = agreed["state"]["messages"], agreed["state"]["last_seq"]

        # Every kubus process reconnected to a survivor.
        wait_for(
            lambda: (
                sorted(name for node in survivors for name in connected_kubus(node))
                == kubus_clients
            ),
            timeout=30,
            what="every kubus connection on a surviving server",
        )

        # Started again on its store, the node rejoins: three current replicas, same stream.
        restarted_at = time.monotonic()
        cluster.start(victim)

        def rejoined() -> dict[str, Any] | None:
            peers = _replicas_of_the_stream(cluster, LAYOUT.object_stream)
            if peers is None or set(peers) != {node.name for node in cluster.nodes}:
                return None
            if not all(p["current"] and not p["offline"] for p in peers.values()):
                return None
            return peers

        peers = wait_for(rejoined, timeout=60, what="the killed node to rejoin the object stream")
        rejoined_after = time.monotonic() - restarted_at

        def caught_up() -> bool:
            states = [cluster.stream_state(node, LAYOUT.object_stream) for node in cluster.nodes]
            return (
                all(s is not None for s in states)
                and len({(s["state"]["messages"], s["state"]["last_seq"]) for s in states if s})
                == 1
            )

        wait_for(caught_up, timeout=60, what="the rejoined node to hold the same stream")
        for bucket in POOL_BUCKETS:
            wait_for(
                lambda b=bucket: (
                    (r := _replicas_of_the_stream(cluster, f"KV_{b}"))
                    and len(r) == 3
                    and all(p["current"] for p in r.values())
                ),
                timeout=60,
                what=f"KV_{bucket} rejoined",
            )
        wait_for(pool.watcher.ready, timeout=30, what="the watcher ready")
        for process in pool.reconcilers:
            wait_for(process.ready, timeout=30, what="each reconciler ready")
    finally:
        pool.stop()

    # The production permissions were enough: no kubus process met a refusal.
    assert cluster.violations() == []
    for log in (pool.watcher.log, *(p.log for p in pool.reconcilers)):
        assert "permissions violation" not in log.read_text().lower(), log
    print(
        f"\n20 pods, 2-pod steps: create {calm_create:.1f}s, update {calm_update:.1f}s without a "
        f"kill; update {web_update:.1f}s with the stream leader {victim.name} killed at "
        f"{updated_at_kill}/{REPLICAS} updated (done {completed_after_kill:.1f}s after the kill); "
        f"survivors agreed on {messages} messages, last sequence {last_seq}; "
        f"{victim.name} rejoined current {rejoined_after:.1f}s after its restart: {sorted(peers)}"
    )

"""The watcher mirrors the apiserver onto the bus: latest state per object, nothing lost."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import nats
import pytest
from kubernetes import client
from nats.js.api import DeliverPolicy

from bus.envelope import Header
from bus.layout import BusLayout
from bus.subjects import ResourceType
from kubus.devstack import DevStack
from tests.support.bus import objects_on_bus, stream_last_sequence, subjects_on_bus
from tests.support.services import watcher
from tests.support.wait import wait_for

pytestmark = pytest.mark.integration

CONFIGMAPS = ResourceType("", "v1", "configmaps")
NAMESPACES = ResourceType("", "v1", "namespaces")
WIDGETS = ResourceType("kubus.example", "v1", "widgets")


@pytest.fixture
def prefix() -> str:
    """A bus prefix of the test's own: its own stream, buckets and subjects."""
    return "t" + uuid.uuid4().hex[:10]


def configmap(name: str, **data: str) -> dict[str, Any]:
    return {"metadata": {"name": name}, "data": data}


def bus_matches_apiserver(
    core: client.CoreV1Api, stack_env: dict[str, str], prefix: str, namespace: str
) -> bool:
    """Every configmap of the namespace is on the bus at its current resourceVersion, and
    nothing else is live there."""
    live = {
        item.metadata.name: item.metadata.resource_version
        for item in core.list_namespaced_config_map(namespace).items
    }
    on_bus = objects_on_bus(stack_env, prefix, CONFIGMAPS, namespace)
    return {n: e.resource_version for n, e in on_bus.items() if not e.deleted} == live


def test_latest_state_and_tombstones_for_namespaced_cluster_scoped_and_custom_objects(
    kube: Any, namespace: str, stack_env: dict[str, str], prefix: str, tmp_path: Path
) -> None:
    core = client.CoreV1Api(kube)
    custom = client.CustomObjectsApi(kube)
    _ensure_widget_crd(kube)
    resources = "v1/configmaps,v1/namespaces,kubus.example/v1/widgets"
    with watcher(stack_env, tmp_path, f"--bus-prefix={prefix}", f"--resources={resources}"):
        core.create_namespaced_config_map(namespace, configmap("kept", v="1"))
        core.patch_namespaced_config_map("kept", namespace, {"data": {"v": "2"}})
        core.create_namespaced_config_map(namespace, configmap("removed", v="1"))
        core.delete_namespaced_config_map("removed", namespace)
        w1, w2 = f"{namespace}-w1", f"{namespace}-w2"
        for name in (w1, w2):
            custom.create_cluster_custom_object(
                "kubus.example",
                "v1",
                "widgets",
                {
                    "apiVersion": "kubus.example/v1",
                    "kind": "Widget",
                    "metadata": {"name": name},
                    "spec": {"size": 1},
                },
            )
        custom.patch_cluster_custom_object(
            "kubus.example", "v1", "widgets", w1, {"spec": {"size": 2}}
        )
        custom.delete_cluster_custom_object("kubus.example", "v1", "widgets", w2)

        kept = core.read_namespaced_config_map("kept", namespace)
        widget = custom.get_cluster_custom_object("kubus.example", "v1", "widgets", w1)

        def settled() -> bool:
            cms = objects_on_bus(stack_env, prefix, CONFIGMAPS, namespace)
            widgets = objects_on_bus(stack_env, prefix, WIDGETS, None)
            return (
                "kept" in cms
                and cms["kept"].resource_version == kept.metadata.resource_version
                and "removed" in cms
                and cms["removed"].deleted
                and w1 in widgets
                and widgets[w1].resource_version == widget["metadata"]["resourceVersion"]
                and w2 in widgets
                and widgets[w2].deleted
            )

        wait_for(settled, timeout=30, what="configmaps and widgets on the bus")

    cms = objects_on_bus(stack_env, prefix, CONFIGMAPS, namespace)
    assert cms["kept"].object()["data"] == {"v": "2"}
    assert cms["kept"].object()["kind"] == "ConfigMap"
    assert cms["removed"].object()["metadata"]["name"] == "removed"  # the last state
    widgets = objects_on_bus(stack_env, prefix, WIDGETS, None)
    assert widgets[w1].object()["spec"] == {"size": 2}
    namespaces = objects_on_bus(stack_env, prefix, NAMESPACES, None)
    assert namespaces[namespace].object()["metadata"]["name"] == namespace
    # Namespaced objects land in the partition of their namespace's own object.
    layout = BusLayout(prefix=prefix)
    assert layout.decode(cms["kept"].subject)[0] == layout.decode(namespaces[namespace].subject)[0]


def test_restart_converges_with_missed_changes_and_republishes_nothing_unchanged(
    kube: Any, namespace: str, stack_env: dict[str, str], prefix: str, tmp_path: Path
) -> None:
    core = client.CoreV1Api(kube)
    args = (f"--bus-prefix={prefix}", "--resources=v1/configmaps")
    for name in ("unchanged", "changed", "gone"):
        core.create_namespaced_config_map(namespace, configmap(name, v="1"))
    with watcher(stack_env, tmp_path, *args, name="first"):
        wait_for(
            lambda: bus_matches_apiserver(core, stack_env, prefix, namespace),
            timeout=30,
            what="the first watcher to publish the configmaps",
        )
    unchanged_before = objects_on_bus(stack_env, prefix, CONFIGMAPS, namespace)["unchanged"]
    stored_before = stream_last_sequence(stack_env, prefix)

    core.create_namespaced_config_map(namespace, configmap("new", v="1"))
    core.patch_namespaced_config_map("changed", namespace, {"data": {"v": "2"}})
    core.delete_namespaced_config_map("gone", namespace)

    with watcher(stack_env, tmp_path, *args, name="second") as second:
        wait_for(
            lambda: bus_matches_apiserver(core, stack_env, prefix, namespace),
            timeout=30,
            what="the restarted watcher to catch up",
        )
        on_bus = objects_on_bus(stack_env, prefix, CONFIGMAPS, namespace)
        assert on_bus["gone"].deleted
        # It resumed its watch where the first left off: no list was needed.
        assert second.metric("kubus_watcher_relists_total") == 0
        # The watch events it resumed with are recent news on its gauge.
        seen = second.metric(
            "kubus_watcher_last_resource_version_timestamp_seconds", resource="v1/configmaps"
        )
        assert 0 < time.time() - seen < 60
    assert on_bus["unchanged"].sequence == unchanged_before.sequence
    assert stream_last_sequence(stack_env, prefix) - stored_before == 3


def test_gone_watch_relists_and_publishes_the_deletes_it_missed(
    private_stack: DevStack, prefix: str, tmp_path: Path
) -> None:
    env = private_stack.env
    from kubernetes import config

    kube = config.new_client_from_config(config_file=env["KUBECONFIG"])
    core = client.CoreV1Api(kube)
    namespace = "gone-test"
    core.create_namespace({"metadata": {"name": namespace}})
    for name in ("stays", "changes", "goes"):
        core.create_namespaced_config_map(namespace, configmap(name, v="1"))
    args = (f"--bus-prefix={prefix}", "--resources=v1/configmaps")
    with watcher(env, tmp_path, *args, name="first"):
        wait_for(
            lambda: bus_matches_apiserver(core, env, prefix, namespace),
            timeout=30,
            what="the first watcher to publish",
        )

    core.patch_namespaced_config_map("changes", namespace, {"data": {"v": "2"}})
    core.delete_namespaced_config_map("goes", namespace)
    core.create_namespaced_config_map(namespace, configmap("arrives", v="1"))
    # Compact etcd up to now and restart the apiserver, so that the watcher's stored
    # resourceVersion is gone from both etcd and the apiserver's watch cache.
    _compact_etcd(env["ETCD_ENDPOINTS"])
    private_stack.stop_component("kube-apiserver")
    private_stack.start_component("kube-apiserver")
    kube = config.new_client_from_config(config_file=env["KUBECONFIG"])
    core = client.CoreV1Api(kube)

    with watcher(env, tmp_path, *args, name="second") as second:
        wait_for(
            lambda: bus_matches_apiserver(core, env, prefix, namespace),
            timeout=60,
            what="the bus to converge after 410 Gone",
        )
        assert objects_on_bus(env, prefix, CONFIGMAPS, namespace)["goes"].deleted
        assert second.metric("kubus_watcher_relists_total", resource="v1/configmaps") == 1
    assert "too old resource version" in (tmp_path / "second.log").read_text().lower() or (
        "expired" in (tmp_path / "second.log").read_text().lower()
    )


def test_two_watchers_never_put_an_older_version_after_a_newer_one(
    kube: Any, namespace: str, stack_env: dict[str, str], prefix: str, tmp_path: Path
) -> None:
    core = client.CoreV1Api(kube)
    names = [f"burst-{i}" for i in range(8)]
    for name in names:
        core.create_namespaced_config_map(namespace, configmap(name, n="0"))
    args = (f"--bus-prefix={prefix}", "--resources=v1/configmaps")
    with (
        watcher(stack_env, tmp_path, *args, name="a") as first,
        watcher(stack_env, tmp_path, *args, name="b") as second,
    ):
        wait_for(
            lambda: bus_matches_apiserver(core, stack_env, prefix, namespace),
            timeout=30,
            what="both watchers synced",
        )
        seen, stop = _record_stream(stack_env, BusLayout(prefix=prefix))
        try:

            def updates(name: str) -> None:
                for n in range(1, 16):
                    core.patch_namespaced_config_map(name, namespace, {"data": {"n": str(n)}})

            threads = [threading.Thread(target=updates, args=(name,)) for name in names]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            wait_for(
                lambda: bus_matches_apiserver(core, stack_env, prefix, namespace),
                timeout=30,
                what="the bus to hold the last update of every configmap",
            )
        finally:
            stop()
        for process in (first, second):
            assert (
                process.metric(
                    "kubus_watcher_events_received_total", resource="v1/configmaps", type="MODIFIED"
                )
                >= 8 * 15
            )

    by_subject: dict[str, list[int]] = {}
    for subject, resource_version in seen:
        by_subject.setdefault(subject, []).append(resource_version)
    assert len(by_subject) == len(names)
    for subject, versions in by_subject.items():
        assert versions == sorted(set(versions)), f"{subject} went back: {versions}"


def test_object_over_the_nats_max_payload_is_published_as_a_reference(
    kube: Any, namespace: str, stack_env: dict[str, str], prefix: str, tmp_path: Path
) -> None:
    core = client.CoreV1Api(kube)
    args = (f"--bus-prefix={prefix}", "--resources=v1/configmaps")
    with watcher(stack_env, tmp_path, *args) as process:
        # ConfigMap data is capped at 1 MiB, but binaryData travels base64-encoded (4/3) and
        # annotations add up to 256 KiB more: this object is about 1.4 MiB of JSON.
        blob = base64.b64encode(os.urandom(1_040_000)).decode()
        core.create_namespaced_config_map(
            namespace,
            {
                "metadata": {"name": "big", "annotations": {"notes": "n" * 100_000}},
                "binaryData": {"blob": blob},
            },
        )
        size = len(
            json.dumps(
                core.api_client.sanitize_for_serialization(
                    core.read_namespaced_config_map("big", namespace)
                )
            )
        )
        assert size > 1.35 * 1024 * 1024
        core.create_namespaced_config_map(namespace, configmap("after", v="1"))
        on_bus = wait_for(
            lambda: (
                (found := objects_on_bus(stack_env, prefix, CONFIGMAPS, namespace))
                and {"big", "after"} <= set(found)
                and found
            ),
            timeout=30,
            what="both configmaps on the bus",
        )
        assert process.running
        # Only this one, from this test's namespace (a reused stack may hold others' leftovers:
        # without a namespace controller, deleted namespaces keep their objects).
        oversized = [
            line for line in process.log.read_text().splitlines() if "over the NATS max" in line
        ]
        assert [line for line in oversized if f"{namespace}/big " in line]
        assert process.metric("kubus_watcher_oversized_objects_total") == len(oversized)
    reference = on_bus["big"]
    assert reference.reference
    identity = reference.object()
    assert identity["kind"] == "ConfigMap"
    assert identity["metadata"]["name"] == "big"
    assert "data" not in identity
    assert not on_bus["after"].reference
    assert "over the NATS max payload" in (tmp_path / "watcher.log").read_text()


def test_the_core_set_leaves_secrets_off_the_bus(
    kube: Any, namespace: str, stack_env: dict[str, str], prefix: str, tmp_path: Path
) -> None:
    """`*` has no Secrets (named, or under `all`, the default, they travel as metadata only:
    see test_watcher_discovery.py)."""
    core = client.CoreV1Api(kube)
    core.create_namespaced_secret(
        namespace, {"metadata": {"name": "token"}, "stringData": {"password": "hunter2"}}
    )
    with watcher(stack_env, tmp_path, f"--bus-prefix={prefix}", "--resources=*"):
        core.create_namespaced_config_map(namespace, configmap("sentinel", v="1"))
        wait_for(
            lambda: "sentinel" in objects_on_bus(stack_env, prefix, CONFIGMAPS, namespace),
            timeout=30,
            what="a configmap created after the secret",
        )
    subjects = subjects_on_bus(stack_env, prefix)
    assert subjects, "the default resources were published"
    assert not [subject for subject in subjects if ".secrets." in subject]


def test_unknown_resource_is_one_clear_error(stack_env: dict[str, str], prefix: str) -> None:
    result = _run_kubus(
        "watcher",
        "--resources=v1/configmapz",
        f"--bus-prefix={prefix}",
        "--health-probe-bind-address=0",
        "--metrics-bind-address=0",
        env=stack_env,
    )
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("kubus watcher: error: ")
    assert "v1/configmapz" in last


def test_nats_restart_under_the_watcher_loses_nothing(
    private_stack: DevStack, prefix: str, tmp_path: Path
) -> None:
    env = private_stack.env
    from kubernetes import config

    core = client.CoreV1Api(config.new_client_from_config(config_file=env["KUBECONFIG"]))
    namespace = "nats-restart"
    core.create_namespace({"metadata": {"name": namespace}})
    for name in ("stays", "changes", "goes"):
        core.create_namespaced_config_map(namespace, configmap(name, v="1"))
    args = (f"--bus-prefix={prefix}", "--resources=v1/configmaps")
    with watcher(env, tmp_path, *args) as process:
        wait_for(
            lambda: bus_matches_apiserver(core, env, prefix, namespace),
            timeout=30,
            what="the watcher to publish",
        )
        private_stack.stop_component("nats-server")
        core.patch_namespaced_config_map("changes", namespace, {"data": {"v": "2"}})
        core.delete_namespaced_config_map("goes", namespace)
        for i in range(20):
            core.create_namespaced_config_map(namespace, configmap(f"new-{i}", v="1"))
        private_stack.start_component("nats-server")
        wait_for(
            lambda: bus_matches_apiserver(core, env, prefix, namespace),
            timeout=60,
            what="the bus to converge after NATS came back",
        )
        assert objects_on_bus(env, prefix, CONFIGMAPS, namespace)["goes"].deleted
        assert process.running


# --- helpers ------------------------------------------------------------------------------


def _record_stream(
    stack_env: dict[str, str], layout: BusLayout
) -> tuple[list[tuple[str, int]], Any]:
    """Record (subject, resourceVersion) of every message the stream stores, in order."""
    seen: list[tuple[str, int]] = []
    ready = threading.Event()
    loop = asyncio.new_event_loop()
    stopping = asyncio.Event()

    async def record() -> None:
        connection = await nats.connect(stack_env["NATS_URL"])
        js = connection.jetstream()

        async def on_message(message: Any) -> None:
            seen.append((message.subject, int(message.headers[Header.RESOURCE_VERSION])))

        subscription = await js.subscribe(
            layout.object_subjects,
            cb=on_message,
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.NEW,
            headers_only=True,
        )
        ready.set()
        await stopping.wait()
        await asyncio.sleep(1)  # let the last deliveries in
        await subscription.unsubscribe()
        await connection.close()

    thread = threading.Thread(target=loop.run_until_complete, args=(record(),))
    thread.start()
    ready.wait(timeout=10)

    def stop() -> None:
        loop.call_soon_threadsafe(stopping.set)
        thread.join(timeout=15)

    return seen, stop


def _ensure_widget_crd(kube: Any) -> None:
    api = client.ApiextensionsV1Api(kube)
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.kubus.example"},
        "spec": {
            "group": "kubus.example",
            "scope": "Cluster",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {
                                "spec": {
                                    "type": "object",
                                    "x-kubernetes-preserve-unknown-fields": True,
                                }
                            },
                        }
                    },
                }
            ],
        },
    }
    try:
        api.create_custom_resource_definition(crd)
    except client.exceptions.ApiException as error:
        if error.status != 409:
            raise

    def established() -> bool:
        conditions = api.read_custom_resource_definition("widgets.kubus.example").status.conditions
        return any(c.type == "Established" and c.status == "True" for c in conditions or [])

    wait_for(established, timeout=30, what="the Widget CRD to be established")


def _compact_etcd(endpoint: str) -> None:
    def post(path: str, body: dict[str, Any]) -> dict[str, Any]:
        request = urllib.request.Request(
            endpoint + path,
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            result: dict[str, Any] = json.load(response)
            return result

    key = base64.b64encode(b"/").decode()
    revision = int(post("/v3/kv/range", {"key": key, "limit": 1})["header"]["revision"])
    post("/v3/kv/compaction", {"revision": revision, "physical": True})


def _run_kubus(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kubus.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **env},
        check=False,
    )


def test_each_published_state_carries_the_trace_of_its_publish_span(
    kube: Any, namespace: str, stack_env: dict[str, str], prefix: str, tmp_path: Path
) -> None:
    core = client.CoreV1Api(kube)
    args = (f"--bus-prefix={prefix}", "--resources=v1/configmaps")
    with watcher(stack_env, tmp_path, *args):  # the stack env carries the OTLP endpoint
        core.create_namespaced_config_map(namespace, configmap("traced", v="1"))
        envelope = wait_for(
            lambda: objects_on_bus(stack_env, prefix, CONFIGMAPS, namespace).get("traced"),
            timeout=30,
            what="the configmap on the bus",
        )
    assert envelope.traceparent is not None
    _version, trace_id, _span_id, flags = envelope.traceparent.split("-")
    assert int(flags, 16) & 0x01, "sampled"

    def trace_in_jaeger() -> Any:
        url = f"{stack_env['JAEGER_QUERY_URL']}/api/traces/{trace_id}"
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return json.load(response)["data"] or None
        except OSError:
            return None

    traces = wait_for(trace_in_jaeger, timeout=30, what=f"trace {trace_id} in Jaeger")
    spans = traces[0]["spans"]
    assert [span["operationName"] for span in spans] == ["publish v1/configmaps"]
    tags = {tag["key"]: tag["value"] for tag in spans[0]["tags"]}
    assert tags["k8s.object.key"] == f"{namespace}/traced"
    assert tags["messaging.destination.name"] == envelope.subject
    services = {p["serviceName"] for p in traces[0]["processes"].values()}
    assert services == {"kubus-watcher"}

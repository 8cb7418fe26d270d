"""`--resources all`: every resource discovery finds, CRDs followed as they come and go, and
Secrets as metadata only unless `--mirror-secrets` says otherwise."""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
import pytest
from kubernetes import client

from bus.envelope import Header
from bus.layout import BusLayout
from bus.subjects import ResourceType
from kubus.kube import KubeClient, discover_all, load_kube_config
from tests.support.bus import objects_on_bus
from tests.support.crds import crd_manifest
from tests.support.services import ServiceProcess, watcher
from tests.support.wait import wait_for

pytestmark = pytest.mark.integration

SECRETS = ResourceType("", "v1", "secrets")
LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"
KUBECTL = str(Path(sys.executable).with_name("kubectl"))


@pytest.fixture
def prefix() -> str:
    return "t" + uuid.uuid4().hex[:10]


def test_all_watches_what_kubectl_api_resources_lists(
    stack_env: dict[str, str], prefix: str, tmp_path: Path
) -> None:
    """kubectl api-resources is client-go's ServerPreferredResources: the same choice of one
    version per group and resource, with the verbs the watcher needs."""

    def kubectl_names() -> set[str]:
        # Exits 1 when a group cannot be discovered (printing the rest): compared without it.
        listed = _kubectl(
            stack_env, "api-resources", "--verbs=list,watch", "-o", "name", check=False
        )
        return set(listed.split())

    async def ours(*, aggregated: bool) -> set[tuple[str, str, str]]:
        async with KubeClient(load_kube_config(Path(stack_env["KUBECONFIG"]))) as kube:
            found = await discover_all(kube, aggregated=aggregated)
        return {
            (api.group, api.version, api.name)
            for api in found.preferred
            if {"list", "watch"} <= api.verbs
        }

    before = kubectl_names()
    chosen = asyncio.run(ours(aggregated=True))
    legacy = asyncio.run(ours(aggregated=False))  # a request per group version
    after = kubectl_names()
    assert legacy == chosen
    discovered = {f"{name}.{group}" if group else name for group, _v, name in chosen}
    assert discovered in (before, after)
    assert {"pods", "secrets", "customresourcedefinitions.apiextensions.k8s.io"} <= discovered
    assert "bindings" not in discovered  # create only
    with watcher(stack_env, tmp_path, f"--bus-prefix={prefix}", "--resources=all") as process:
        watching = process.metric("kubus_watcher_resources", state="watching")
        syncing = process.metric("kubus_watcher_resources", state="syncing")
        verbose = _get(f"http://127.0.0.1:{process.health_port}/readyz?verbose")
    # Events only when named: both Event APIs are served, and left out of `all`.
    events = {"events", "events.events.k8s.io"}
    assert events <= discovered
    assert (watching, syncing) == (len(discovered - events), 0)
    assert verbose.count("[+]synced:") == len(discovered - events)
    assert "[+]synced:v1/events" not in verbose
    print(f"--resources all watches {len(discovered - events)} resources on the dev stack")


def test_a_crd_created_while_running_is_watched_and_its_deletion_ends_the_watch_quietly(
    kube: Any, stack_env: dict[str, str], prefix: str, tmp_path: Path
) -> None:
    extensions = client.ApiextensionsV1Api(kube)
    custom = client.CustomObjectsApi(kube)
    group = f"g{uuid.uuid4().hex[:8]}.kubus.example"
    gizmos = ResourceType(group, "v1", "gizmos")
    crd_name = f"gizmos.{group}"
    with (
        _deleted_afterwards(extensions, crd_name),
        watcher(stack_env, tmp_path, f"--bus-prefix={prefix}", "--resources=all") as process,
    ):
        baseline = process.metric("kubus_watcher_resources")
        created = time.monotonic()
        extensions.create_custom_resource_definition(_crd(group))
        wait_for(lambda: _established(extensions, crd_name), timeout=30, what="Established")
        established = time.monotonic()
        gizmo = {
            "apiVersion": f"{group}/v1",
            "kind": "Gizmo",
            "metadata": {"name": "first"},
            "spec": {"size": 3},
        }
        custom.create_cluster_custom_object(group, "v1", "gizmos", gizmo)
        on_bus = wait_for(
            lambda: objects_on_bus(stack_env, prefix, gizmos, None).get("first"),
            timeout=30,
            what="the new CRD's object on the bus",
        )
        arrived = time.monotonic()
        assert on_bus.object()["spec"] == {"size": 3}
        assert arrived - created < 30
        print(
            f"CRD created -> Established {established - created:.2f}s -> its first object on "
            f"the bus {arrived - created:.2f}s after the CRD's creation"
        )
        assert process.ready()
        assert process.metric("kubus_watcher_resources") == baseline + 1

        extensions.delete_custom_resource_definition(crd_name)
        wait_for(
            lambda: not _exists(extensions, crd_name), timeout=60, what="the CRD to be deleted"
        )
        tombstone = wait_for(
            lambda: (
                (found := objects_on_bus(stack_env, prefix, gizmos, None).get("first"))
                and found.deleted
                and found
            ),
            timeout=30,
            what="the object's tombstone",
        )
        assert tombstone.object()["metadata"]["name"] == "first"
        wait_for(
            lambda: _mentions(process, gizmos, "is no longer served"),
            timeout=30,
            what="the watch of the deleted CRD's resource to stop",
        )
        # No storm: watch it for 10 s (the CRD-triggered re-discoveries run within that).
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            assert process.ready()
            lines = _mentions(process, gizmos, "")
            assert len(lines) <= 5, lines
            assert not [line for line in lines if " WARNING " in line or " ERROR " in line]
            time.sleep(0.5)
        assert len(_mentions(process, gizmos, "is no longer served")) <= 2
        assert process.metric("kubus_watcher_resources") == baseline
        assert process.metric("kubus_watcher_watch_restarts_total", resource=str(gizmos)) == 0

        # Re-created, it is watched again, without a restart.
        extensions.create_custom_resource_definition(_crd(group))
        wait_for(lambda: _established(extensions, crd_name), timeout=30, what="Established")
        custom.create_cluster_custom_object(
            group, "v1", "gizmos", {**gizmo, "metadata": {"name": "second"}}
        )
        wait_for(
            lambda: "second" in objects_on_bus(stack_env, prefix, gizmos, None),
            timeout=30,
            what="an object of the re-created CRD on the bus",
        )
        assert process.ready()


def test_a_crd_deleted_while_no_watcher_ran_leaves_tombstones_at_the_next_start(
    kube: Any, stack_env: dict[str, str], prefix: str, tmp_path: Path
) -> None:
    extensions = client.ApiextensionsV1Api(kube)
    custom = client.CustomObjectsApi(kube)
    group = f"g{uuid.uuid4().hex[:8]}.kubus.example"
    gizmos = ResourceType(group, "v1", "gizmos")
    crd_name = f"gizmos.{group}"
    args = (f"--bus-prefix={prefix}", "--resources=all")
    with _deleted_afterwards(extensions, crd_name):
        extensions.create_custom_resource_definition(_crd(group))
        wait_for(lambda: _established(extensions, crd_name), timeout=30, what="Established")
        for name in ("one", "two"):
            custom.create_cluster_custom_object(
                group,
                "v1",
                "gizmos",
                {"apiVersion": f"{group}/v1", "kind": "Gizmo", "metadata": {"name": name}},
            )
        with watcher(stack_env, tmp_path, *args, name="first"):
            wait_for(
                lambda: set(objects_on_bus(stack_env, prefix, gizmos, None)) == {"one", "two"},
                timeout=30,
                what="the gizmos on the bus",
            )
        extensions.delete_custom_resource_definition(crd_name)
        wait_for(
            lambda: not _exists(extensions, crd_name), timeout=60, what="the CRD to be deleted"
        )
        with watcher(stack_env, tmp_path, *args, name="second") as second:
            on_bus = wait_for(
                lambda: (
                    (found := objects_on_bus(stack_env, prefix, gizmos, None))
                    and all(envelope.deleted for envelope in found.values())
                    and found
                ),
                timeout=30,
                what="tombstones for the objects of the CRD deleted meanwhile",
            )
            assert set(on_bus) == {"one", "two"}
            wait_for(
                lambda: _mentions(second, gizmos, "2 objects it left live on the bus"),
                timeout=30,
                what="the log line of the retired resource",
            )
            assert second.ready()


def test_secrets_travel_as_metadata_only_without_mirror_secrets(
    kube: Any, namespace: str, stack_env: dict[str, str], prefix: str, tmp_path: Path
) -> None:
    core = client.CoreV1Api(kube)
    values = {name: f"v{uuid.uuid4().hex}" for name in ("data", "string", "applied", "noted")}
    values["patched"] = f"v{uuid.uuid4().hex}"
    owner = core.create_namespaced_config_map(namespace, {"metadata": {"name": "owner"}})
    owner_ref = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "name": "owner",
        "uid": owner.metadata.uid,
    }
    labels = {"app": "kubus-test"}
    # Before the watcher starts (listed) ...
    core.create_namespaced_secret(
        namespace,
        {
            "metadata": {"name": "with-data", "labels": labels, "ownerReferences": [owner_ref]},
            "data": {"password": _b64(values["data"])},
        },
    )
    _kubectl(
        stack_env,
        "apply",
        "-n",
        namespace,
        "-f",
        "-",
        stdin=json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": "applied", "labels": labels},
                "stringData": {"apikey": values["applied"]},
            }
        ),
    )
    live = core.read_namespaced_secret("applied", namespace)
    assert values["applied"] in live.metadata.annotations[LAST_APPLIED]  # what must not leak
    layout = BusLayout(prefix=prefix)
    with (
        _recording(stack_env, layout.object_subjects) as messages,
        watcher(stack_env, tmp_path, f"--bus-prefix={prefix}", "--resources=all") as process,
    ):
        # ... and while it runs (watched).
        core.create_namespaced_secret(
            namespace,
            {"metadata": {"name": "with-string-data"}, "stringData": {"token": values["string"]}},
        )
        noted = {"stringData": {"x": values["noted"]}}
        core.create_namespaced_secret(
            namespace,
            {
                "metadata": {
                    "name": "annotated",
                    "annotations": {LAST_APPLIED: json.dumps(noted), "keep": "me"},
                },
                **noted,
            },
        )
        core.patch_namespaced_secret(
            "with-data", namespace, {"data": {"password": _b64(values["patched"])}}
        )
        core.delete_namespaced_secret("with-string-data", namespace)
        expected = {
            name: core.read_namespaced_secret(name, namespace).metadata.resource_version
            for name in ("with-data", "applied", "annotated")
        }

        def settled() -> dict[str, Any] | None:
            found = objects_on_bus(stack_env, prefix, SECRETS, namespace)
            done = all(
                name in found and found[name].resource_version == rv
                for name, rv in expected.items()
            )
            gone = "with-string-data" in found and found["with-string-data"].deleted
            return found if done and gone else None

        on_bus = wait_for(settled, timeout=30, what="the secrets' latest states on the bus")
        assert process.ready()

    with_data = on_bus["with-data"].object()
    assert with_data["apiVersion"] == "v1" and with_data["kind"] == "Secret"
    assert with_data["metadata"]["labels"] == labels
    assert with_data["metadata"]["ownerReferences"][0]["uid"] == owner.metadata.uid
    assert "data" not in with_data and "type" not in with_data
    assert on_bus["applied"].object()["metadata"]["labels"] == labels
    assert on_bus["annotated"].object()["metadata"]["annotations"] == {"keep": "me"}
    assert on_bus["with-string-data"].object()["metadata"]["name"] == "with-string-data"

    # Every message the watcher published (core NATS sees each publish, stored or not).
    secret_messages = [m for m in messages if ".core.v1.secrets." in m.subject]
    names = {layout.decode(m.subject)[1].name for m in secret_messages}
    assert {"with-data", "applied", "annotated", "with-string-data"} <= names
    for message in secret_messages:
        assert message.headers.get(Header.METADATA_ONLY) == "true", message.subject
        body = json.loads(message.data)
        assert set(body) == {"apiVersion", "kind", "metadata"}
        assert "managedFields" not in body["metadata"]
        assert LAST_APPLIED not in body["metadata"].get("annotations", {})
    forbidden = {text for value in values.values() for text in (value, _b64(value))}
    for message in messages:
        blob = message.subject + json.dumps(message.headers) + message.data.decode()
        assert not [text for text in forbidden if text in blob], message.subject


def test_mirror_secrets_publishes_the_data_and_switching_it_off_takes_it_off_the_bus(
    kube: Any, namespace: str, stack_env: dict[str, str], prefix: str, tmp_path: Path
) -> None:
    core = client.CoreV1Api(kube)
    value = f"v{uuid.uuid4().hex}"
    core.create_namespaced_secret(
        namespace, {"metadata": {"name": "mirrored"}, "data": {"password": _b64(value)}}
    )
    version = core.read_namespaced_secret("mirrored", namespace).metadata.resource_version
    args = (f"--bus-prefix={prefix}", "--resources=v1/secrets")

    def mirrored() -> Any:
        return objects_on_bus(stack_env, prefix, SECRETS, namespace).get("mirrored")

    with watcher(stack_env, tmp_path, *args, "--mirror-secrets", name="mirroring"):
        full = wait_for(mirrored, timeout=30, what="the mirrored secret on the bus")
    assert full.object()["data"] == {"password": _b64(value)}
    assert not full.metadata_only

    with watcher(stack_env, tmp_path, *args, name="metadata-only"):
        reduced = wait_for(
            lambda: (found := mirrored()) and found.metadata_only and found,
            timeout=30,
            what="the same state republished as metadata only",
        )
    assert reduced.resource_version == version
    assert "data" not in reduced.object()
    assert _b64(value) not in reduced.payload.decode()


# --- helpers ------------------------------------------------------------------------------


@dataclass
class _Message:
    subject: str
    headers: dict[str, str]
    data: bytes


@contextmanager
def _recording(stack_env: dict[str, str], subjects: str) -> Iterator[list[_Message]]:
    """Every message published on ``subjects`` while the block runs, through a core NATS
    subscription: it sees each publish, whether the stream stored it or not."""
    seen: list[_Message] = []
    ready = threading.Event()
    stopping: asyncio.Event | None = None
    loop = asyncio.new_event_loop()

    async def record() -> None:
        nonlocal stopping
        stopping = asyncio.Event()
        connection = await nats.connect(stack_env["NATS_URL"])

        async def on_message(message: Any) -> None:
            seen.append(_Message(message.subject, dict(message.headers or {}), message.data))

        await connection.subscribe(subjects, cb=on_message)
        await connection.flush()
        ready.set()
        await stopping.wait()
        await connection.flush()
        await connection.close()

    thread = threading.Thread(target=loop.run_until_complete, args=(record(),))
    thread.start()
    assert ready.wait(timeout=10), "the recording subscription did not start"
    try:
        yield seen
    finally:
        assert stopping is not None
        loop.call_soon_threadsafe(stopping.set)
        thread.join(timeout=15)


def _crd(group: str) -> dict[str, Any]:
    spec = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
    schema = {"type": "object", "properties": {"spec": spec}}
    return crd_manifest(group, "Gizmo", scope="Cluster", schema=schema)


@contextmanager
def _deleted_afterwards(api: client.ApiextensionsV1Api, name: str) -> Iterator[None]:
    """A test that fails half-way leaves no CRD behind on a reused stack."""
    try:
        yield
    finally:
        if _exists(api, name):
            api.delete_custom_resource_definition(name)


def _established(api: client.ApiextensionsV1Api, name: str) -> bool:
    conditions = api.read_custom_resource_definition(name).status.conditions or []
    return any(c.type == "Established" and c.status == "True" for c in conditions)


def _exists(api: client.ApiextensionsV1Api, name: str) -> bool:
    try:
        api.read_custom_resource_definition(name)
    except client.exceptions.ApiException as error:
        if error.status == 404:
            return False
        raise
    return True


def _mentions(process: ServiceProcess, resource: ResourceType, text: str) -> list[str]:
    return [
        line
        for line in process.log.read_text().splitlines()
        if str(resource) in line and text in line
    ]


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        body: bytes = response.read()
        return body.decode()


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _kubectl(
    stack_env: dict[str, str], *args: str, stdin: str | None = None, check: bool = True
) -> str:
    result = subprocess.run(
        [KUBECTL, f"--kubeconfig={stack_env['KUBECONFIG']}", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0 or not check, result.stderr
    return result.stdout

"""The dev stack's storage against the real stack: its default StorageClass, and its external
provisioner working with kube-controller-manager's persistentvolume binder and the real
kube-scheduler, as a CSI driver's external-provisioner does in a cluster.

kcm runs the binder and the two protection controllers only (the apiserver's
StorageObjectInUseProtection admission puts their finalizers on every claim and volume).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config
from kubernetes.client.rest import ApiException

from kubus.devstack import DevStack
from kubus.devstack.provisioner import VOLUMES, Informer
from kubus.devstack.storage import ANN_PROVISIONED_BY, ANN_SELECTED_NODE, FINALIZER, PROVISIONER
from kubus.kube import KubeClient, load_kube_config
from tests.support.kcm import running_kcm
from tests.support.wait import wait_for, wait_until

pytestmark = pytest.mark.integration

KCM_CONTROLLERS = "persistentvolume-binder-controller,pvc-protection,pv-protection"


@pytest.fixture(scope="module")
def kcm_binder(
    stack_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Path]:
    log_path = tmp_path_factory.mktemp("kcm") / "kcm.log"
    with running_kcm(stack_env, log_path, KCM_CONTROLLERS):
        yield log_path


@pytest.fixture
def core(kube: Any) -> client.CoreV1Api:
    return client.CoreV1Api(kube)


@pytest.fixture
def immediate_class(kube: Any) -> Iterator[str]:
    """A class of the stack's provisioner with Immediate binding: provisioned without a pod."""
    storage = client.StorageV1Api(kube)
    name = f"immediate-{uuid.uuid4().hex[:6]}"
    storage.create_storage_class(
        {
            "metadata": {"name": name},
            "provisioner": PROVISIONER,
            "volumeBindingMode": "Immediate",
            "reclaimPolicy": "Delete",
            "mountOptions": ["noatime"],
        }
    )
    yield name
    storage.delete_storage_class(name)


def provisioner_log(stack_env: dict[str, str]) -> Path:
    return Path(stack_env["KUBUS_STATE_DIR"]) / "logs" / "provisioner.log"


def new_claim(
    core: client.CoreV1Api, namespace: str, *, cls: str | None = None, **spec: Any
) -> Any:
    body: dict[str, Any] = {
        "metadata": {"name": f"data-{uuid.uuid4().hex[:6]}"},
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": "2Gi"}},
            **({"storageClassName": cls} if cls else {}),
            **spec,
        },
    }
    return core.create_namespaced_persistent_volume_claim(namespace, body)


def volume_or_none(core: client.CoreV1Api, name: str) -> Any:
    try:
        return core.read_persistent_volume(name)
    except ApiException as error:
        if error.status == 404:
            return None
        raise


def claim_events(core: client.CoreV1Api, namespace: str, name: str) -> dict[str, Any]:
    found = core.list_namespaced_event(
        namespace,
        field_selector=f"involvedObject.kind=PersistentVolumeClaim,involvedObject.name={name}",
    )
    return {event.reason: event for event in found.items}


def test_the_stack_has_a_default_storage_class_of_its_provisioner(kube: Any) -> None:
    cls = client.StorageV1Api(kube).read_storage_class("standard")
    assert cls.metadata.annotations["storageclass.kubernetes.io/is-default-class"] == "true"
    assert cls.provisioner == "dev.kubus.io/hostpath"
    assert cls.volume_binding_mode == "WaitForFirstConsumer"
    assert cls.reclaim_policy == "Delete"


def test_a_pod_with_a_claim_of_the_default_class_runs_on_the_volume_made_for_its_node(
    core: client.CoreV1Api, namespace: str, kcm_binder: Path, stack_env: dict[str, str]
) -> None:
    claim = new_claim(core, namespace)
    name, uid = claim.metadata.name, claim.metadata.uid
    assert claim.spec.storage_class_name == "standard"  # DefaultStorageClass admission
    core.create_namespaced_pod(
        namespace,
        {
            "metadata": {"name": "db"},
            "spec": {
                "containers": [{"name": "db", "image": "postgres:17"}],
                "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": name}}],
            },
        },
    )
    where = f"(logs: {kcm_binder}, {provisioner_log(stack_env)})"

    def bound_claim() -> Any:
        found = core.read_namespaced_persistent_volume_claim(name, namespace)
        return found if found.status.phase == "Bound" else None

    bound = wait_for(bound_claim, timeout=90, what=f"claim {name} Bound {where}")
    volume_name = f"pvc-{uid}"
    assert bound.spec.volume_name == volume_name

    def running_pod() -> Any:
        pod = core.read_namespaced_pod("db", namespace)
        return pod if pod.status.phase == "Running" else None

    pod = wait_for(running_pod, timeout=60, what="pod db Running")
    node = pod.spec.node_name
    assert node.startswith("kwok-node-")
    assert bound.metadata.annotations[ANN_SELECTED_NODE] == node

    volume = core.read_persistent_volume(volume_name)
    assert volume.metadata.annotations[ANN_PROVISIONED_BY] == PROVISIONER
    assert FINALIZER in volume.metadata.finalizers
    assert volume.spec.capacity == {"storage": "2Gi"}
    assert volume.spec.access_modes == ["ReadWriteOnce"]
    assert volume.spec.volume_mode == "Filesystem"
    assert volume.spec.storage_class_name == "standard"
    assert volume.spec.persistent_volume_reclaim_policy == "Delete"
    assert volume.spec.host_path.path == f"/var/lib/kubus-dev/volumes/{volume_name}"
    assert (volume.spec.claim_ref.namespace, volume.spec.claim_ref.name) == (namespace, name)
    assert volume.spec.claim_ref.uid == uid
    (term,) = volume.spec.node_affinity.required.node_selector_terms
    (expression,) = term.match_expressions
    assert (expression.key, expression.operator, expression.values) == (
        "kubernetes.io/hostname",
        "In",
        [node],
    )
    events = wait_for(
        lambda: (
            (found := claim_events(core, namespace, name)).keys()
            >= {"Provisioning", "ProvisioningSucceeded"}
            and found
        ),
        timeout=30,
        what=f"the provisioner's events on claim {name}",
    )
    assert (
        events["ProvisioningSucceeded"].message == f"Successfully provisioned volume {volume_name}"
    )
    assert events["Provisioning"].message == (
        f'External provisioner is provisioning volume for claim "{namespace}/{name}"'
    )
    assert events["Provisioning"].source.component == PROVISIONER

    # Pod, then claim, gone: the volume is Released, and the provisioner deletes it.
    core.delete_namespaced_pod("db", namespace, grace_period_seconds=0)
    core.delete_namespaced_persistent_volume_claim(name, namespace)
    wait_for(
        lambda: volume_or_none(core, volume_name) is None,
        timeout=90,
        what=f"volume {volume_name} deleted {where}",
    )


def test_an_immediate_claim_is_provisioned_without_a_pod_and_its_volume_deleted_after(
    core: client.CoreV1Api,
    namespace: str,
    immediate_class: str,
    kcm_binder: Path,
    stack_env: dict[str, str],
) -> None:
    claim = new_claim(core, namespace, cls=immediate_class, volumeMode="Block")
    name, volume_name = claim.metadata.name, f"pvc-{claim.metadata.uid}"

    def bound_claim() -> Any:
        found = core.read_namespaced_persistent_volume_claim(name, namespace)
        return found if found.status.phase == "Bound" else None

    log = provisioner_log(stack_env)
    wait_for(bound_claim, timeout=60, what=f"claim {name} Bound (log: {log})")
    volume = core.read_persistent_volume(volume_name)
    assert volume.spec.node_affinity is None
    assert volume.spec.volume_mode == "Block"
    assert volume.spec.mount_options == ["noatime"]
    assert volume.spec.storage_class_name == immediate_class

    core.delete_namespaced_persistent_volume_claim(name, namespace)
    wait_for(
        lambda: volume_or_none(core, volume_name) is None,
        timeout=60,
        what=f"volume {volume_name} deleted (log: {log})",
    )


def test_a_claim_it_cannot_provision_gets_a_provisioning_failed_event(
    core: client.CoreV1Api, namespace: str, immediate_class: str, kcm_binder: Path
) -> None:
    claim = new_claim(
        core, namespace, cls=immediate_class, selector={"matchLabels": {"tier": "gold"}}
    )
    name = claim.metadata.name
    failed = wait_for(
        lambda: claim_events(core, namespace, name).get("ProvisioningFailed"),
        timeout=60,
        what=f"a ProvisioningFailed event on claim {name}",
    )
    assert failed.type == "Warning"
    assert failed.message == "claim Selector is not supported"
    assert core.read_namespaced_persistent_volume_claim(name, namespace).status.phase == "Pending"
    assert volume_or_none(core, f"pvc-{claim.metadata.uid}") is None


def test_its_cache_resumes_from_a_resource_version_and_relists_after_410_gone(
    private_stack: DevStack,
) -> None:
    """A watch from a resourceVersion compacted away (etcd compacted, the apiserver's watch
    cache restarted): 410, then a relist that reports what vanished meanwhile as deleted."""
    env = private_stack.env
    core = client.CoreV1Api(config.new_client_from_config(config_file=env["KUBECONFIG"]))
    ghost = core.create_persistent_volume(hostpath_volume(f"ghost-{uuid.uuid4().hex[:6]}"))
    resume_from = ghost.metadata.resource_version
    # Gone for good: no pv-protection controller runs here to lift the admission's finalizer.
    core.patch_persistent_volume(ghost.metadata.name, {"metadata": {"finalizers": None}})
    core.delete_persistent_volume(ghost.metadata.name)
    arrived = core.create_persistent_volume(hostpath_volume(f"new-{uuid.uuid4().hex[:6]}"))
    compact_etcd(env["ETCD_ENDPOINTS"])
    private_stack.stop_component("kube-apiserver")
    private_stack.start_component("kube-apiserver")
    seen: list[tuple[str, bool]] = []

    def changed(key: str, _obj: dict[str, Any], deleted: bool) -> None:
        seen.append((key, deleted))

    async def run() -> Informer:
        async with KubeClient(load_kube_config(Path(env["KUBECONFIG"]))) as kube:
            informer = Informer(kube, VOLUMES, changed)
            informer.items = {ghost.metadata.name: {"metadata": {"name": ghost.metadata.name}}}
            task = asyncio.create_task(informer.run(resume_from=resume_from))
            try:
                await wait_until(lambda: informer.synced, within=30, what="a relist after 410")
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            return informer

    informer = asyncio.run(run())
    assert (ghost.metadata.name, True) in seen
    assert (arrived.metadata.name, False) in seen
    assert set(informer.items) == {arrived.metadata.name}


def hostpath_volume(name: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "spec": {
            "capacity": {"storage": "1Gi"},
            "accessModes": ["ReadWriteOnce"],
            "persistentVolumeReclaimPolicy": "Retain",
            "hostPath": {"path": f"/var/lib/kubus-test/{name}"},
        },
    }


def compact_etcd(endpoint: str) -> None:
    """Compact etcd's history up to its current revision."""

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

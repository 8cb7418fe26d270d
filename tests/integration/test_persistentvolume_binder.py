"""kubus's persistentvolume binder against the real stack: what a user sees of claims and volumes.

The pool runs the binder alone; the test plays the external provisioner where one is needed
(it creates the volume a provisioner would), so each step of the hand-over is visible.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from tests.support.services import Pool, kubus_pool
from tests.support.wait import wait_for

pytestmark = pytest.mark.integration

WATCHED = (
    "--resources=v1/persistentvolumes,v1/persistentvolumeclaims,storage.k8s.io/v1/storageclasses"
)
BIND_COMPLETED = "pv.kubernetes.io/bind-completed"
BOUND_BY_CONTROLLER = "pv.kubernetes.io/bound-by-controller"
STORAGE_PROVISIONER = "volume.kubernetes.io/storage-provisioner"
SELECTED_NODE = "volume.kubernetes.io/selected-node"


@pytest.fixture(scope="module")
def binder(stack_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pool]:
    with kubus_pool(
        stack_env,
        tmp_path_factory.mktemp("binder"),
        reconcilers=2,
        extra=["--controllers=persistentvolume-binder", "--pvclaimbinder-sync-period=1s"],
        watcher_args=[WATCHED],
    ) as pool:
        yield pool


@pytest.fixture
def core(kube: Any) -> client.CoreV1Api:
    return client.CoreV1Api(kube)


@pytest.fixture
def volumes(core: client.CoreV1Api) -> Iterator[list[str]]:
    """Names of the volumes a test made: deleted afterwards, protection finalizer and all."""
    made: list[str] = []
    yield made
    for name in made:
        try:
            core.patch_persistent_volume(name, {"metadata": {"finalizers": None}})
            core.delete_persistent_volume(name)
        except ApiException as error:
            if error.status != 404:
                raise


@pytest.fixture
def storage_class(kube: Any) -> Iterator[Any]:
    storage = client.StorageV1Api(kube)
    made: list[str] = []

    def make(provisioner: str, mode: str = "Immediate") -> str:
        name = f"sc-{uuid.uuid4().hex[:6]}"
        storage.create_storage_class(
            {
                "metadata": {"name": name},
                "provisioner": provisioner,
                "volumeBindingMode": mode,
                "reclaimPolicy": "Delete",
            }
        )
        made.append(name)
        return name

    yield make
    for name in made:
        storage.delete_storage_class(name)


def new_volume(
    core: client.CoreV1Api,
    made: list[str],
    size: str,
    *,
    cls: str,
    claim: dict[str, Any] | None = None,
    policy: str = "Retain",
    annotations: dict[str, str] | None = None,
) -> str:
    name = f"pv-{uuid.uuid4().hex[:8]}"
    spec: dict[str, Any] = {
        "capacity": {"storage": size},
        "accessModes": ["ReadWriteOnce"],
        "storageClassName": cls,
        "persistentVolumeReclaimPolicy": policy,
        "hostPath": {"path": f"/var/lib/kubus-test/{name}"},
    }
    if claim is not None:
        spec["claimRef"] = claim
    core.create_persistent_volume(
        {"metadata": {"name": name, "annotations": annotations or {}}, "spec": spec}
    )
    made.append(name)
    return name


def new_claim(
    core: client.CoreV1Api, namespace: str, size: str, *, cls: str, volume: str | None = None
) -> str:
    name = f"data-{uuid.uuid4().hex[:6]}"
    spec: dict[str, Any] = {
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": size}},
        "storageClassName": cls,
    }
    if volume is not None:
        spec["volumeName"] = volume
    core.create_namespaced_persistent_volume_claim(
        namespace, {"metadata": {"name": name}, "spec": spec}
    )
    return name


def delete_claim(core: client.CoreV1Api, namespace: str, name: str) -> None:
    """Delete a claim for good: no pvc-protection controller runs in this pool to lift the
    finalizer the apiserver's StorageObjectInUseProtection admission put there."""
    core.patch_namespaced_persistent_volume_claim(
        name, namespace, {"metadata": {"finalizers": None}}
    )
    core.delete_namespaced_persistent_volume_claim(name, namespace)


def claim_phase(core: client.CoreV1Api, namespace: str, name: str) -> str | None:
    return core.read_namespaced_persistent_volume_claim(name, namespace).status.phase


def volume_phase(core: client.CoreV1Api, name: str) -> str | None:
    return core.read_persistent_volume(name).status.phase


def events_of(core: client.CoreV1Api, namespace: str, name: str) -> dict[str, str]:
    found = core.list_namespaced_event(namespace, field_selector=f"involvedObject.name={name}")
    return {
        e.reason: e.message
        for e in found.items
        if e.source.component == "persistentvolume-controller"
    }


def test_a_claim_binds_to_the_smallest_volume_that_fits(
    binder: Pool, core: client.CoreV1Api, namespace: str, volumes: list[str]
) -> None:
    cls = f"manual-{uuid.uuid4().hex[:6]}"
    big = new_volume(core, volumes, "10Gi", cls=cls)
    fits = new_volume(core, volumes, "2Gi", cls=cls)
    new_volume(core, volumes, "512Mi", cls=cls)
    wait_for(
        lambda: all(volume_phase(core, made) == "Available" for made in volumes),
        timeout=30,
        what="the volumes available",
    )
    name = new_claim(core, namespace, "1Gi", cls=cls)

    wait_for(lambda: claim_phase(core, namespace, name) == "Bound", timeout=30, what="claim bound")
    pvc = core.read_namespaced_persistent_volume_claim(name, namespace)
    assert pvc.spec.volume_name == fits
    assert pvc.metadata.annotations[BIND_COMPLETED] == "yes"
    assert pvc.metadata.annotations[BOUND_BY_CONTROLLER] == "yes"
    assert pvc.status.capacity == {"storage": "2Gi"}
    assert pvc.status.access_modes == ["ReadWriteOnce"]
    pv = core.read_persistent_volume(fits)
    assert pv.status.phase == "Bound"
    assert (pv.spec.claim_ref.namespace, pv.spec.claim_ref.name) == (namespace, name)
    assert pv.spec.claim_ref.uid == pvc.metadata.uid
    assert pv.metadata.annotations[BOUND_BY_CONTROLLER] == "yes"
    assert volume_phase(core, big) == "Available"

    # The claim goes: a Retain volume is Released and keeps its claimRef.
    delete_claim(core, namespace, name)
    wait_for(lambda: volume_phase(core, fits) == "Released", timeout=30, what="volume released")
    assert core.read_persistent_volume(fits).spec.claim_ref.name == name


def test_a_pending_claim_binds_to_a_volume_created_later(
    binder: Pool, core: client.CoreV1Api, namespace: str, volumes: list[str]
) -> None:
    cls = f"manual-{uuid.uuid4().hex[:6]}"
    name = new_claim(core, namespace, "1Gi", cls=cls)
    wait_for(lambda: claim_phase(core, namespace, name) == "Pending", timeout=30, what="pending")
    made = new_volume(core, volumes, "1Gi", cls=cls)
    wait_for(
        lambda: (
            core.read_namespaced_persistent_volume_claim(name, namespace).spec.volume_name == made
        ),
        timeout=30,
        what="the claim bound to the new volume at its next sync",
    )


def test_a_claim_for_a_volume_too_small_says_why_and_waits(
    binder: Pool, core: client.CoreV1Api, namespace: str, volumes: list[str]
) -> None:
    cls = f"manual-{uuid.uuid4().hex[:6]}"
    small = new_volume(core, volumes, "100Mi", cls=cls)
    name = new_claim(core, namespace, "1Gi", cls=cls, volume=small)
    message = wait_for(
        lambda: events_of(core, namespace, name).get("VolumeMismatch"), timeout=30, what="event"
    )
    assert message == f'Cannot bind to requested volume "{small}": requested PV is too small'
    assert claim_phase(core, namespace, name) == "Pending"
    assert core.read_persistent_volume(small).spec.claim_ref is None


def test_a_claim_without_a_class_and_no_volume_gets_failed_binding(
    binder: Pool, core: client.CoreV1Api, namespace: str
) -> None:
    name = new_claim(core, namespace, "1Gi", cls="")
    message = wait_for(
        lambda: events_of(core, namespace, name).get("FailedBinding"), timeout=30, what="event"
    )
    assert message == "no persistent volumes available for this claim and no storage class is set"
    assert claim_phase(core, namespace, name) == "Pending"


def test_a_claim_is_handed_to_its_external_provisioner_and_bound_to_what_it_makes(
    binder: Pool,
    core: client.CoreV1Api,
    namespace: str,
    volumes: list[str],
    storage_class: Any,
) -> None:
    cls = storage_class("example.com/provisioner")
    name = new_claim(core, namespace, "1Gi", cls=cls)

    def handed_over() -> str | None:
        notes = core.read_namespaced_persistent_volume_claim(name, namespace).metadata.annotations
        return (notes or {}).get(STORAGE_PROVISIONER)

    assert (
        wait_for(handed_over, timeout=30, what="provisioner annotation")
        == "example.com/provisioner"
    )
    message = wait_for(
        lambda: events_of(core, namespace, name).get("ExternalProvisioning"),
        timeout=30,
        what="event",
    )
    assert "external provisioner 'example.com/provisioner'" in message

    # The provisioner's part: a volume pre-bound to the claim by uid.
    pvc = core.read_namespaced_persistent_volume_claim(name, namespace)
    ref = {
        "namespace": namespace,
        "name": name,
        "uid": pvc.metadata.uid,
        "kind": "PersistentVolumeClaim",
    }
    made = new_volume(
        core,
        volumes,
        "1Gi",
        cls=cls,
        claim=ref,
        policy="Delete",
        annotations={"pv.kubernetes.io/provisioned-by": "example.com/provisioner"},
    )
    wait_for(lambda: claim_phase(core, namespace, name) == "Bound", timeout=30, what="bound")
    assert core.read_namespaced_persistent_volume_claim(name, namespace).spec.volume_name == made
    assert volume_phase(core, made) == "Bound"

    # Deleting the claim releases the volume to its (external) deleter: the binder leaves it.
    delete_claim(core, namespace, name)
    wait_for(lambda: volume_phase(core, made) == "Released", timeout=30, what="released")


def test_a_bound_claim_whose_volume_is_gone_is_lost(
    binder: Pool, core: client.CoreV1Api, namespace: str, volumes: list[str]
) -> None:
    cls = f"manual-{uuid.uuid4().hex[:6]}"
    made = new_volume(core, volumes, "1Gi", cls=cls)
    name = new_claim(core, namespace, "1Gi", cls=cls)
    wait_for(lambda: claim_phase(core, namespace, name) == "Bound", timeout=30, what="bound")
    core.patch_persistent_volume(made, {"metadata": {"finalizers": None}})
    core.delete_persistent_volume(made)
    wait_for(lambda: claim_phase(core, namespace, name) == "Lost", timeout=30, what="lost")
    assert events_of(core, namespace, name)["ClaimLost"] == (
        "Bound claim has lost its PersistentVolume. Data on the volume is lost!"
    )


def test_a_wait_for_first_consumer_claim_waits_for_the_scheduler_then_provisions(
    binder: Pool, core: client.CoreV1Api, namespace: str, storage_class: Any
) -> None:
    cls = storage_class("example.com/provisioner", "WaitForFirstConsumer")
    name = new_claim(core, namespace, "1Gi", cls=cls)
    message = wait_for(
        lambda: events_of(core, namespace, name).get("WaitForFirstConsumer"),
        timeout=30,
        what="event",
    )
    assert message == "waiting for first consumer to be created before binding"

    # A pod using the claim: the real scheduler picks a node and says so on the claim; the
    # binder then hands the claim to the provisioner with that node.
    core.create_namespaced_pod(
        namespace,
        {
            "metadata": {"name": "consumer"},
            "spec": {
                "containers": [{"name": "c", "image": "busybox"}],
                "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": name}}],
            },
        },
    )

    def annotations() -> dict[str, str]:
        notes = core.read_namespaced_persistent_volume_claim(name, namespace).metadata.annotations
        return dict(notes or {})

    notes = wait_for(
        lambda: (found := annotations()).get(STORAGE_PROVISIONER) and found,
        timeout=60,
        what="the claim handed over after the scheduler selected a node",
    )
    assert notes[SELECTED_NODE]
    assert notes[STORAGE_PROVISIONER] == "example.com/provisioner"

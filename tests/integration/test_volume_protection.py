"""kubus's PVC and PV protection controllers against the real stack: what a user sees deleting a
claim a pod uses, a bound volume, and objects whose finalizer was taken off.

The pool runs the two controllers alone, one process with one worker each, so the keys of a
controller are reconciled in the order their changes came: an object deleted after a held one
and seen gone proves the held one was looked at and kept. No binder runs, so a volume's phase
is what the test writes to its status.
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

CONTROLLERS = "--controllers=pvc-protection,pv-protection"
WATCHED = "--resources=v1/persistentvolumeclaims,v1/persistentvolumes,v1/pods"
PVC_FINALIZER = "kubernetes.io/pvc-protection"
PV_FINALIZER = "kubernetes.io/pv-protection"


@pytest.fixture(scope="module")
def protection(
    stack_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Pool]:
    with kubus_pool(
        stack_env,
        tmp_path_factory.mktemp("protection"),
        reconcilers=1,
        extra=[CONTROLLERS],
        watcher_args=[WATCHED],
    ) as pool:
        yield pool


@pytest.fixture
def core(kube: Any) -> client.CoreV1Api:
    return client.CoreV1Api(kube)


@pytest.fixture
def volumes(core: client.CoreV1Api) -> Iterator[list[str]]:
    """Names of the volumes a test made: deleted afterwards, finalizers and all."""
    made: list[str] = []
    yield made
    for name in made:
        try:
            core.patch_persistent_volume(name, {"metadata": {"finalizers": None}})
            core.delete_persistent_volume(name)
        except ApiException as error:
            if error.status != 404:
                raise


def new_claim(core: client.CoreV1Api, namespace: str) -> str:
    name = f"data-{uuid.uuid4().hex[:6]}"
    core.create_namespaced_persistent_volume_claim(
        namespace,
        {
            "metadata": {"name": name},
            "spec": {
                "accessModes": ["ReadWriteOnce"],
                "resources": {"requests": {"storage": "1Gi"}},
                "storageClassName": "",
            },
        },
    )
    return name


def claim_or_none(core: client.CoreV1Api, namespace: str, name: str) -> Any:
    try:
        return core.read_namespaced_persistent_volume_claim(name, namespace)
    except ApiException as error:
        if error.status == 404:
            return None
        raise


def new_volume(core: client.CoreV1Api, made: list[str], phase: str) -> str:
    name = f"pv-{uuid.uuid4().hex[:8]}"
    core.create_persistent_volume(
        {
            "metadata": {"name": name},
            "spec": {
                "capacity": {"storage": "1Gi"},
                "accessModes": ["ReadWriteOnce"],
                "persistentVolumeReclaimPolicy": "Retain",
                "hostPath": {"path": f"/var/lib/kubus-test/{name}"},
            },
        }
    )
    made.append(name)
    set_phase(core, name, phase)
    return name


def set_phase(core: client.CoreV1Api, name: str, phase: str) -> None:
    core.patch_persistent_volume_status(name, {"status": {"phase": phase}})


def volume_or_none(core: client.CoreV1Api, name: str) -> Any:
    try:
        return core.read_persistent_volume(name)
    except ApiException as error:
        if error.status == 404:
            return None
        raise


def pod_using(core: client.CoreV1Api, namespace: str, claim: str) -> str:
    """A pod on a kwok node (bound there directly: the scheduler would wait for the claim to
    be bound, and no binder runs) with the claim as a volume."""
    node = core.list_node().items[0].metadata.name
    name = f"user-{uuid.uuid4().hex[:6]}"
    core.create_namespaced_pod(
        namespace,
        {
            "metadata": {"name": name},
            "spec": {
                "nodeName": node,
                "containers": [{"name": "app", "image": "registry.example/app:1"}],
                "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": claim}}],
            },
        },
    )
    wait_for(
        lambda: core.read_namespaced_pod(name, namespace).status.phase == "Running",
        timeout=60,
        what=f"pod {name} Running (kwok)",
    )
    return name


def test_a_claim_a_pod_uses_stays_terminating_until_the_pod_is_gone(
    protection: Pool, core: client.CoreV1Api, namespace: str
) -> None:
    used = new_claim(core, namespace)
    unused = new_claim(core, namespace)
    # The apiserver's StorageObjectInUseProtection admission put the finalizer there.
    assert core.read_namespaced_persistent_volume_claim(used, namespace).metadata.finalizers == [
        PVC_FINALIZER
    ]
    user = pod_using(core, namespace, used)

    core.delete_namespaced_persistent_volume_claim(used, namespace)
    core.delete_namespaced_persistent_volume_claim(unused, namespace)
    wait_for(
        lambda: claim_or_none(core, namespace, unused) is None,
        timeout=60,
        what=f"claim {unused}, used by no pod, gone",
    )
    held = core.read_namespaced_persistent_volume_claim(used, namespace)
    assert held.metadata.deletion_timestamp is not None
    assert held.metadata.finalizers == [PVC_FINALIZER]

    core.delete_namespaced_pod(user, namespace, grace_period_seconds=0)
    wait_for(
        lambda: claim_or_none(core, namespace, used) is None,
        timeout=60,
        what=f"claim {used} gone once its pod is",
    )


def test_a_bound_volume_stays_until_it_is_released(
    protection: Pool, core: client.CoreV1Api, volumes: list[str]
) -> None:
    bound = new_volume(core, volumes, "Bound")
    available = new_volume(core, volumes, "Available")
    assert core.read_persistent_volume(bound).metadata.finalizers == [PV_FINALIZER]

    core.delete_persistent_volume(bound)
    core.delete_persistent_volume(available)
    wait_for(
        lambda: volume_or_none(core, available) is None,
        timeout=60,
        what=f"volume {available}, not bound, gone",
    )
    held = core.read_persistent_volume(bound)
    assert held.metadata.deletion_timestamp is not None
    assert held.metadata.finalizers == [PV_FINALIZER]

    set_phase(core, bound, "Released")
    wait_for(
        lambda: volume_or_none(core, bound) is None,
        timeout=60,
        what=f"volume {bound} gone once Released",
    )


def test_a_finalizer_taken_off_a_live_claim_or_volume_is_put_back(
    protection: Pool, core: client.CoreV1Api, namespace: str, volumes: list[str]
) -> None:
    claim = new_claim(core, namespace)
    volume = new_volume(core, volumes, "Available")
    unprotected = core.patch_namespaced_persistent_volume_claim(
        claim, namespace, {"metadata": {"finalizers": None}}
    )
    assert not unprotected.metadata.finalizers
    assert not core.patch_persistent_volume(
        volume, {"metadata": {"finalizers": None}}
    ).metadata.finalizers
    wait_for(
        lambda: (
            core.read_namespaced_persistent_volume_claim(claim, namespace).metadata.finalizers
            == [PVC_FINALIZER]
        ),
        timeout=60,
        what=f"the protection finalizer back on claim {claim}",
    )
    wait_for(
        lambda: core.read_persistent_volume(volume).metadata.finalizers == [PV_FINALIZER],
        timeout=60,
        what=f"the protection finalizer back on volume {volume}",
    )

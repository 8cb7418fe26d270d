"""The dev stack's storage: its default StorageClass, and what its provisioner decides.

The provisioner (:mod:`kubus.devstack.provisioner`) plays a CSI driver's external-provisioner
sidecar for the class ``standard`` (provisioner ``dev.kubus.io/hostpath``), as kwok plays the
kubelet: it makes PersistentVolume objects for the claims the persistentvolume binder hands
it, and deletes them once released. Nothing is ever created on disk; a volume's ``hostPath``
is a name only (kwok runs no kubelet, so nothing mounts it).

These are the pure decisions, ported from sig-storage-lib-external-provisioner's controller
(``shouldProvision``, ``provisionClaimOperation``, ``shouldDelete``,
``handleProtectionFinalizer``) and external-provisioner's ``Provision`` (the volume it builds).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

__all__ = [
    "ANN_BETA_STORAGE_CLASS",
    "ANN_BETA_STORAGE_PROVISIONER",
    "ANN_DEFAULT_CLASS",
    "ANN_PROVISIONED_BY",
    "ANN_SELECTED_NODE",
    "ANN_STORAGE_PROVISIONER",
    "DEFAULT_CLASS",
    "FINALIZER",
    "PROVISIONER",
    "VOLUME_ROOT",
    "Ignored",
    "ProvisionError",
    "build_volume",
    "claim_class",
    "claim_key",
    "default_storage_class",
    "handed_over",
    "provisioned_by",
    "should_delete",
    "should_provision",
    "volume_finalizers",
    "volume_name",
    "without_finalizer",
]

Object = Mapping[str, Any]

PROVISIONER: Final = "dev.kubus.io/hostpath"
DEFAULT_CLASS: Final = "standard"
VOLUME_ROOT: Final = "/var/lib/kubus-dev/volumes"

ANN_DEFAULT_CLASS: Final = "storageclass.kubernetes.io/is-default-class"
ANN_BETA_STORAGE_CLASS: Final = "volume.beta.kubernetes.io/storage-class"
# Set by the binder on a claim it hands to an external provisioner (the value: which one).
ANN_STORAGE_PROVISIONER: Final = "volume.kubernetes.io/storage-provisioner"
ANN_BETA_STORAGE_PROVISIONER: Final = "volume.beta.kubernetes.io/storage-provisioner"
# Set by the scheduler on a WaitForFirstConsumer claim: the node its first pod goes to.
ANN_SELECTED_NODE: Final = "volume.kubernetes.io/selected-node"
ANN_PROVISIONED_BY: Final = "pv.kubernetes.io/provisioned-by"
# external-provisioner (v5+, HonorPVReclaimPolicy) puts it on every volume it provisions with
# reclaim policy Delete, and takes it off once it has deleted the backing volume.
FINALIZER: Final = "external-provisioner.volume.kubernetes.io/finalizer"

HOSTNAME_LABEL: Final = "kubernetes.io/hostname"
_SNAPSHOT_GROUP: Final = "snapshot.storage.k8s.io"


class ProvisionError(Exception):
    """The claim cannot be provisioned as it is: a ``ProvisioningFailed`` event, then retries
    with backoff (the claim or its class may change)."""


class Ignored(Exception):
    """Not this provisioner's to make (an external populator's data source): no retry."""


def default_storage_class() -> dict[str, Any]:
    """The dev stack's default StorageClass, as kind's ``standard`` is to kind."""
    return {
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClass",
        "metadata": {"name": DEFAULT_CLASS, "annotations": {ANN_DEFAULT_CLASS: "true"}},
        "provisioner": PROVISIONER,
        "volumeBindingMode": "WaitForFirstConsumer",
        "reclaimPolicy": "Delete",
    }


def claim_class(claim: Object) -> str:
    """The claim's class, the beta annotation first (``GetPersistentVolumeClaimClass``)."""
    annotations = claim.get("metadata", {}).get("annotations") or {}
    if ANN_BETA_STORAGE_CLASS in annotations:
        return str(annotations[ANN_BETA_STORAGE_CLASS])
    return str(claim.get("spec", {}).get("storageClassName") or "")


def volume_name(claim: Object) -> str:
    """The deterministic name of the claim's volume: ``pvc-<claim uid>``."""
    return f"pvc-{claim['metadata']['uid']}"


def handed_over(claim: Object, provisioner: str = PROVISIONER) -> bool:
    """The binder gave the claim to ``provisioner`` and the claim has no volume yet."""
    if claim.get("spec", {}).get("volumeName"):
        return False
    annotations = claim.get("metadata", {}).get("annotations") or {}
    named = annotations.get(ANN_STORAGE_PROVISIONER)
    if named is None:
        named = annotations.get(ANN_BETA_STORAGE_PROVISIONER)
    return named == provisioner


def should_provision(claim: Object, storage_class: Object, provisioner: str = PROVISIONER) -> bool:
    """Handed over, and for a WaitForFirstConsumer class only once a node is selected (the
    scheduler takes the annotation away again to ask for another node)."""
    if not handed_over(claim, provisioner):
        return False
    if storage_class.get("volumeBindingMode") == "WaitForFirstConsumer":
        annotations = claim.get("metadata", {}).get("annotations") or {}
        return bool(annotations.get(ANN_SELECTED_NODE))
    return True


def build_volume(
    claim: Object, storage_class: Object, provisioner: str = PROVISIONER
) -> dict[str, Any]:
    """The PersistentVolume made for ``claim`` of ``storage_class``: pre-bound to the claim by
    ``claimRef`` (the binder completes the binding), with the claim's size, access modes and
    volume mode, the class's reclaim policy and mount options, and, when the scheduler chose
    a node, a node affinity to it. Raises :class:`ProvisionError` or :class:`Ignored`."""
    spec = claim.get("spec", {})
    meta = claim["metadata"]
    if not meta.get("uid"):
        raise ProvisionError("corrupted PVC object, it is missing UID")
    source = spec.get("dataSourceRef") or spec.get("dataSource")
    if source:
        kind = source.get("kind", "")
        if kind == "VolumeSnapshot" and source.get("apiGroup") == _SNAPSHOT_GROUP:
            raise ProvisionError(f"{provisioner} does not support snapshot restore")
        if kind == "PersistentVolumeClaim" and not source.get("apiGroup"):
            raise ProvisionError(f"{provisioner} does not support clone operations")
        raise Ignored(
            f"data source ({kind}) is not handled by the provisioner, assuming an external "
            "populator will provision it"
        )
    if spec.get("volumeAttributesClassName"):
        raise ProvisionError(f"{provisioner} does not support VolumeAttributesClass")
    if spec.get("selector") is not None:
        raise ProvisionError("claim Selector is not supported")
    size = (spec.get("resources", {}).get("requests") or {}).get("storage")
    if not size:
        raise ProvisionError("the claim requests no storage (spec.resources.requests.storage)")
    name = volume_name(claim)
    volume_spec: dict[str, Any] = {
        "capacity": {"storage": str(size)},
        "accessModes": list(spec.get("accessModes") or []),
        "hostPath": {"path": f"{VOLUME_ROOT}/{name}", "type": "DirectoryOrCreate"},
        "claimRef": {
            "kind": "PersistentVolumeClaim",
            "namespace": meta.get("namespace", ""),
            "name": meta["name"],
            "uid": meta["uid"],
            "apiVersion": claim.get("apiVersion") or "v1",
            "resourceVersion": meta.get("resourceVersion", ""),
        },
        "storageClassName": claim_class(claim),
    }
    if storage_class.get("mountOptions"):
        volume_spec["mountOptions"] = list(storage_class["mountOptions"])
    if storage_class.get("reclaimPolicy"):
        volume_spec["persistentVolumeReclaimPolicy"] = storage_class["reclaimPolicy"]
    if spec.get("volumeMode"):
        volume_spec["volumeMode"] = spec["volumeMode"]
    node = (meta.get("annotations") or {}).get(ANN_SELECTED_NODE)
    if node:
        volume_spec["nodeAffinity"] = {
            "required": {
                "nodeSelectorTerms": [
                    {
                        "matchExpressions": [
                            {"key": HOSTNAME_LABEL, "operator": "In", "values": [node]}
                        ]
                    }
                ]
            }
        }
    finalizers = [FINALIZER] if volume_spec.get("persistentVolumeReclaimPolicy") == "Delete" else []
    metadata: dict[str, Any] = {"name": name, "annotations": {ANN_PROVISIONED_BY: provisioner}}
    if finalizers:
        metadata["finalizers"] = finalizers
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": metadata,
        "spec": volume_spec,
    }


def provisioned_by(volume: Object, provisioner: str = PROVISIONER) -> bool:
    annotations = volume.get("metadata", {}).get("annotations") or {}
    return annotations.get(ANN_PROVISIONED_BY) == provisioner


def volume_finalizers(volume: Object) -> list[str] | None:
    """The finalizers the volume should have, or None if it has them already: ours added to a
    Bound volume with policy Delete that lacks it (one provisioned before), taken off when the
    policy became Retain or Recycle (``handleProtectionFinalizer``)."""
    meta = volume.get("metadata", {})
    finalizers = list(meta.get("finalizers") or [])
    policy = volume.get("spec", {}).get("persistentVolumeReclaimPolicy")
    phase = volume.get("status", {}).get("phase")
    if (
        policy == "Delete"
        and not meta.get("deletionTimestamp")
        and phase == "Bound"
        and FINALIZER not in finalizers
    ):
        return [*finalizers, FINALIZER]
    if policy in ("Retain", "Recycle") and FINALIZER in finalizers:
        return [f for f in finalizers if f != FINALIZER]
    return None


def should_delete(volume: Object) -> bool:
    """Released with policy Delete; a volume being deleted only while our finalizer is on it
    (once it is off, the backing volume is gone already)."""
    meta = volume.get("metadata", {})
    if meta.get("deletionTimestamp") and FINALIZER not in (meta.get("finalizers") or []):
        return False
    phase = volume.get("status", {}).get("phase")
    policy = volume.get("spec", {}).get("persistentVolumeReclaimPolicy")
    return bool(phase == "Released" and policy == "Delete")


def without_finalizer(volume: Object) -> list[str] | None:
    """The volume's finalizers without ours, or None if ours is not there."""
    finalizers = list(volume.get("metadata", {}).get("finalizers") or [])
    if FINALIZER not in finalizers:
        return None
    return [f for f in finalizers if f != FINALIZER]


def claim_key(claim: Object) -> str:
    meta = claim.get("metadata", {})
    return f"{meta.get('namespace', '')}/{meta.get('name', '')}"

"""The dev stack's provisioner decides as external-provisioner does: which claims it provisions,
the volume it makes of a claim and its class, and which volumes it deletes (pure functions)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from kubus.devstack import storage
from kubus.devstack.storage import Ignored, ProvisionError

UID = "6a0c1f0e-3b7e-4a55-9f61-0d2b9f6c1a11"


def claim(**annotations: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {
            "name": "data",
            "namespace": "shop",
            "uid": UID,
            "resourceVersion": "4242",
            "annotations": {
                storage.ANN_STORAGE_PROVISIONER: storage.PROVISIONER,
                storage.ANN_BETA_STORAGE_PROVISIONER: storage.PROVISIONER,
                **annotations,
            },
        },
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": "3Gi"}},
            "storageClassName": "standard",
            "volumeMode": "Filesystem",
        },
    }


def standard(**changes: Any) -> dict[str, Any]:
    return {**storage.default_storage_class(), **changes}


def test_the_default_class_is_kinds_standard_of_this_provisioner() -> None:
    cls = storage.default_storage_class()
    assert cls["metadata"] == {
        "name": "standard",
        "annotations": {"storageclass.kubernetes.io/is-default-class": "true"},
    }
    assert cls["provisioner"] == "dev.kubus.io/hostpath"
    assert cls["volumeBindingMode"] == "WaitForFirstConsumer"
    assert cls["reclaimPolicy"] == "Delete"


def test_the_volume_of_a_claim_with_a_selected_node() -> None:
    volume = storage.build_volume(
        claim(**{storage.ANN_SELECTED_NODE: "kwok-node-1"}),
        standard(mountOptions=["noatime"]),
    )
    assert volume == {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {
            "name": f"pvc-{UID}",
            "annotations": {"pv.kubernetes.io/provisioned-by": "dev.kubus.io/hostpath"},
            "finalizers": ["external-provisioner.volume.kubernetes.io/finalizer"],
        },
        "spec": {
            "capacity": {"storage": "3Gi"},
            "accessModes": ["ReadWriteOnce"],
            "volumeMode": "Filesystem",
            "storageClassName": "standard",
            "persistentVolumeReclaimPolicy": "Delete",
            "mountOptions": ["noatime"],
            "hostPath": {
                "path": f"/var/lib/kubus-dev/volumes/pvc-{UID}",
                "type": "DirectoryOrCreate",
            },
            "claimRef": {
                "kind": "PersistentVolumeClaim",
                "apiVersion": "v1",
                "namespace": "shop",
                "name": "data",
                "uid": UID,
                "resourceVersion": "4242",
            },
            "nodeAffinity": {
                "required": {
                    "nodeSelectorTerms": [
                        {
                            "matchExpressions": [
                                {
                                    "key": "kubernetes.io/hostname",
                                    "operator": "In",
                                    "values": ["kwok-node-1"],
                                }
                            ]
                        }
                    ]
                }
            },
        },
    }


def test_an_immediate_claim_gets_no_node_affinity_and_a_retain_class_no_finalizer() -> None:
    data = claim()
    data["spec"]["volumeMode"] = "Block"
    data["spec"]["accessModes"] = ["ReadWriteMany", "ReadOnlyMany"]
    volume = storage.build_volume(
        data, standard(volumeBindingMode="Immediate", reclaimPolicy="Retain")
    )
    assert "nodeAffinity" not in volume["spec"]
    assert "mountOptions" not in volume["spec"]
    assert "finalizers" not in volume["metadata"]
    assert volume["spec"]["persistentVolumeReclaimPolicy"] == "Retain"
    assert volume["spec"]["volumeMode"] == "Block"
    assert volume["spec"]["accessModes"] == ["ReadWriteMany", "ReadOnlyMany"]


def test_the_class_named_by_the_beta_annotation_comes_first() -> None:
    data = claim(**{storage.ANN_BETA_STORAGE_CLASS: "old-style"})
    assert storage.claim_class(data) == "old-style"
    assert storage.build_volume(data, standard())["spec"]["storageClassName"] == "old-style"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"selector": {"matchLabels": {"a": "b"}}}, "claim Selector is not supported"),
        (
            {"dataSource": {"kind": "PersistentVolumeClaim", "name": "other"}},
            "does not support clone operations",
        ),
        (
            {
                "dataSource": {
                    "kind": "VolumeSnapshot",
                    "apiGroup": "snapshot.storage.k8s.io",
                    "name": "snap",
                }
            },
            "does not support snapshot restore",
        ),
        ({"volumeAttributesClassName": "gold"}, "does not support VolumeAttributesClass"),
    ],
)
def test_what_it_cannot_provision_fails_naming_why(change: dict[str, Any], message: str) -> None:
    data = claim()
    data["spec"].update(change)
    with pytest.raises(ProvisionError, match=message):
        storage.build_volume(data, standard())


def test_a_populators_data_source_is_left_to_the_populator() -> None:
    data = claim()
    data["spec"]["dataSourceRef"] = {"apiGroup": "example.com", "kind": "Seed", "name": "s"}
    with pytest.raises(Ignored, match="external populator"):
        storage.build_volume(data, standard())


def test_which_claims_it_provisions() -> None:
    wffc, immediate = standard(), standard(volumeBindingMode="Immediate")
    assert not storage.should_provision(claim(), wffc)  # no node selected yet
    assert storage.should_provision(claim(**{storage.ANN_SELECTED_NODE: "n"}), wffc)
    assert not storage.should_provision(claim(**{storage.ANN_SELECTED_NODE: ""}), wffc)
    assert storage.should_provision(claim(), immediate)
    # Another provisioner's claim; one with a volume already.
    assert not storage.should_provision(
        claim(**{storage.ANN_STORAGE_PROVISIONER: "example.com/other"}), immediate
    )
    bound = claim()
    bound["spec"]["volumeName"] = "pv-1"
    assert not storage.should_provision(bound, immediate)
    # The legacy annotation alone.
    legacy = claim()
    del legacy["metadata"]["annotations"][storage.ANN_STORAGE_PROVISIONER]
    assert storage.should_provision(legacy, immediate)
    nothing = claim()
    nothing["metadata"]["annotations"] = {}
    assert not storage.should_provision(nothing, immediate)


def released(**changes: Any) -> dict[str, Any]:
    volume = storage.build_volume(claim(), standard())
    volume["metadata"]["resourceVersion"] = "7"
    volume["status"] = {"phase": "Released"}
    volume = copy.deepcopy(volume)
    volume["spec"].update(changes.pop("spec", {}))
    volume["metadata"].update(changes.pop("metadata", {}))
    volume["status"].update(changes.pop("status", {}))
    return volume


def test_which_volumes_it_deletes() -> None:
    assert storage.should_delete(released())
    assert not storage.should_delete(released(status={"phase": "Bound"}))
    assert not storage.should_delete(released(status={"phase": "Available"}))
    assert not storage.should_delete(released(spec={"persistentVolumeReclaimPolicy": "Retain"}))
    # Being deleted: still ours to finish while our finalizer is on it, not after.
    deleting = {"deletionTimestamp": "2026-01-01T00:00:00Z"}
    assert storage.should_delete(released(metadata=deleting))
    assert not storage.should_delete(released(metadata={**deleting, "finalizers": []}))


def test_the_finalizer_follows_the_reclaim_policy() -> None:
    bound_without = released(status={"phase": "Bound"}, metadata={"finalizers": ["x"]})
    assert storage.volume_finalizers(bound_without) == ["x", storage.FINALIZER]
    assert storage.volume_finalizers(released(status={"phase": "Bound"})) is None
    retain = released(spec={"persistentVolumeReclaimPolicy": "Retain"})
    assert storage.volume_finalizers(retain) == []
    assert storage.without_finalizer(released()) == []
    assert storage.without_finalizer(released(metadata={"finalizers": ["x"]})) is None

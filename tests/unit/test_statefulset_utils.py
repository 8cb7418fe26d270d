"""StatefulSet identity, ordinals, storage, claim retention and status arithmetic."""

from __future__ import annotations

import datetime
from typing import Any

import pytest

from reconcilers.controllers.statefulset.utils import (
    POD_INDEX_LABEL,
    POD_NAME_LABEL,
    REVISION_LABEL,
    InvalidMaxUnavailableError,
    complete_rolling_update,
    count_replicas,
    identity_matches,
    in_ordinal_range,
    inconsistent_status,
    is_claim_owner_up_to_date,
    max_unavailable,
    new_pod,
    new_versioned_pod,
    parent_and_ordinal,
    storage_matches,
    update_claim_owner_refs,
    update_identity,
    update_storage,
)
from reconcilers.kinds import Object
from tests.unit.statefulset_fixtures import STS_API

NOW = datetime.datetime(2026, 5, 1, 12, 0, 0, tzinfo=datetime.UTC)


def sts(replicas: int = 3, **spec: Any) -> Object:
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": "web", "namespace": "shop", "uid": "set-1"},
        "spec": {
            "replicas": replicas,
            "serviceName": "web-svc",
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}, "annotations": {"a": "1"}},
                "spec": {
                    "containers": [{"name": "c", "image": "c:1"}],
                    "volumes": [{"name": "scratch", "emptyDir": {}}],
                },
            },
            "volumeClaimTemplates": [
                {
                    "metadata": {"name": "data", "labels": {"kind": "db"}},
                    "spec": {"accessModes": ["ReadWriteOnce"]},
                    "status": {"phase": "Pending"},
                }
            ],
            **spec,
        },
    }


def pod(name: str, uid: str = "", phase: str = "Running", ready: bool = True) -> Object:
    return {
        "metadata": {"name": name, "namespace": "shop", "uid": uid or f"uid-{name}"},
        "status": {
            "phase": phase,
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True" if ready else "False",
                    "lastTransitionTime": "2026-05-01T11:00:00Z",
                }
            ],
        },
    }


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("web-0", ("web", 0)),
        ("my-db-12", ("my-db", 12)),
        ("web", ("", -1)),
        ("web-x", ("", -1)),
        ("web-3000000000", ("web", -1)),
    ],
)
def test_a_pod_name_spells_its_set_and_ordinal(name: str, expected: tuple[str, int]) -> None:
    assert parent_and_ordinal({"metadata": {"name": name}}) == expected


def test_ordinals_start_where_spec_ordinals_says() -> None:
    shifted = sts(2, ordinals={"start": 5})
    assert [in_ordinal_range(pod(f"web-{n}"), shifted) for n in (4, 5, 6, 7)] == [
        False,
        True,
        True,
        False,
    ]
    assert in_ordinal_range(pod("web-0"), sts(1))


def test_a_new_pod_carries_its_identity_hostname_subdomain_and_claims() -> None:
    made = new_pod(sts(), STS_API, 2)
    meta = made["metadata"]
    assert meta["name"] == "web-2"
    assert meta["generateName"] == "web-"
    assert meta["labels"] == {"app": "web", POD_NAME_LABEL: "web-2", POD_INDEX_LABEL: "2"}
    assert meta["annotations"] == {"a": "1"}
    assert meta["ownerReferences"][0]["kind"] == "StatefulSet"
    assert meta["ownerReferences"][0]["controller"] is True
    assert made["spec"]["hostname"] == "web-2"
    assert made["spec"]["subdomain"] == "web-svc"
    assert made["spec"]["volumes"] == [
        {"name": "data", "persistentVolumeClaim": {"claimName": "data-web-2"}},
        {"name": "scratch", "emptyDir": {}},
    ]
    assert identity_matches(sts(), made)
    assert storage_matches(sts(), made)


def test_identity_and_storage_are_repaired() -> None:
    broken = pod("web-1")
    broken["metadata"]["namespace"] = "elsewhere"
    assert not identity_matches(sts(), broken)
    assert not storage_matches(sts(), broken)
    update_identity(sts(), broken)
    update_storage(sts(), broken)
    assert identity_matches(sts(), broken)
    assert storage_matches(sts(), broken)
    assert broken["metadata"]["labels"][POD_INDEX_LABEL] == "1"


def test_missing_pods_below_the_partition_get_the_current_revision() -> None:
    current = sts(updateStrategy={"type": "RollingUpdate", "rollingUpdate": {"partition": 2}})
    update = sts(updateStrategy={"type": "RollingUpdate", "rollingUpdate": {"partition": 2}})
    update["spec"]["template"]["spec"]["containers"][0]["image"] = "c:2"

    def make(ordinal: int) -> Object:
        return new_versioned_pod(
            current,
            update,
            current_revision="web-old",
            update_revision="web-new",
            ordinal=ordinal,
            sts_api=STS_API,
        )

    low, high = make(1), make(2)
    assert low["metadata"]["labels"][REVISION_LABEL] == "web-old"
    assert low["spec"]["containers"][0]["image"] == "c:1"
    assert high["metadata"]["labels"][REVISION_LABEL] == "web-new"
    assert high["spec"]["containers"][0]["image"] == "c:2"


def claim(*refs: Object) -> Object:
    return {"metadata": {"name": "data-web-1", "ownerReferences": list(refs)}}


SET_REF = {
    "apiVersion": "apps/v1",
    "kind": "StatefulSet",
    "name": "web",
    "uid": "set-1",
    "controller": True,
    "blockOwnerDeletion": True,
}


def pod_ref(name: str = "web-1", uid: str = "uid-web-1") -> Object:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "name": name,
        "uid": uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


@pytest.mark.parametrize(
    ("when_deleted", "when_scaled", "replicas", "expected"),
    [
        ("Retain", "Retain", 3, []),
        ("Delete", "Retain", 3, [SET_REF]),
        ("Delete", "Retain", 1, [SET_REF]),
        ("Retain", "Delete", 3, []),
        ("Retain", "Delete", 1, [pod_ref()]),
        ("Delete", "Delete", 3, [SET_REF]),
        ("Delete", "Delete", 1, [pod_ref()]),
    ],
)
def test_claim_owners_follow_the_retention_policy(
    when_deleted: str, when_scaled: str, replicas: int, expected: list[Object]
) -> None:
    policy = {"whenDeleted": when_deleted, "whenScaled": when_scaled}
    owner = sts(replicas, persistentVolumeClaimRetentionPolicy=policy)
    member = pod("web-1")
    fresh = claim()
    update_claim_owner_refs(fresh, owner, member)
    assert fresh["metadata"]["ownerReferences"] == expected
    assert is_claim_owner_up_to_date(fresh, owner, member)
    # The other references are wrong for this policy, unless they happen to be the same.
    for other in ([], [SET_REF], [pod_ref()], [SET_REF, pod_ref()]):
        assert is_claim_owner_up_to_date(claim(*other), owner, member) == (other == expected)


def test_a_foreign_controller_keeps_the_claim_and_ours_is_removed() -> None:
    policy = {"whenDeleted": "Delete", "whenScaled": "Delete"}
    owner = sts(3, persistentVolumeClaimRetentionPolicy=policy)
    foreign = {"apiVersion": "v1", "kind": "Thing", "name": "x", "uid": "t", "controller": True}
    mixed = claim(foreign, SET_REF)
    assert not is_claim_owner_up_to_date(mixed, owner, pod("web-1"))
    update_claim_owner_refs(mixed, owner, pod("web-1"))
    assert mixed["metadata"]["ownerReferences"] == [foreign]
    assert is_claim_owner_up_to_date(mixed, owner, pod("web-1"))


def test_a_stale_reference_counts_as_up_to_date() -> None:
    policy = {"whenDeleted": "Retain", "whenScaled": "Delete"}
    owner = sts(1, persistentVolumeClaimRetentionPolicy=policy)
    assert is_claim_owner_up_to_date(claim(pod_ref(uid="old")), owner, pod("web-1"))


@pytest.mark.parametrize(
    ("value", "replicas", "expected"),
    [(None, 5, 1), (3, 5, 3), (0, 5, 1), ("50%", 5, 2), ("10%", 5, 1), ("100%", 4, 4)],
)
def test_max_unavailable_is_a_count_of_at_least_one(
    value: Any, replicas: int, expected: int
) -> None:
    assert max_unavailable(value, replicas) == expected


def test_a_bad_max_unavailable_is_an_error() -> None:
    with pytest.raises(InvalidMaxUnavailableError):
        max_unavailable("two", 3)


def test_status_counts_created_ready_available_current_and_updated() -> None:
    pods = [pod("web-0"), pod("web-1", ready=False), pod("web-2", phase="")]
    for index, item in enumerate(pods):
        item["metadata"]["labels"] = {REVISION_LABEL: "new" if index else "old"}
    pods[1]["metadata"]["deletionTimestamp"] = "2026-05-01T11:59:00Z"
    counts = count_replicas([pods, [None]], 0, "old", "new", NOW)
    assert counts == {
        "replicas": 2,
        "readyReplicas": 1,
        "availableReplicas": 1,
        "currentReplicas": 1,
        "updatedReplicas": 0,
    }
    # Ready an hour ago: not yet available with a two-hour minReadySeconds.
    assert count_replicas([pods], 7200, "old", "new", NOW)["availableReplicas"] == 0


def test_a_finished_rolling_update_makes_the_update_revision_current() -> None:
    status: dict[str, Any] = {
        "replicas": 3,
        "readyReplicas": 3,
        "updatedReplicas": 3,
        "currentReplicas": 0,
        "currentRevision": "old",
        "updateRevision": "new",
    }
    complete_rolling_update(sts(3), status)
    assert (status["currentRevision"], status["currentReplicas"]) == ("new", 3)
    ondelete = dict(status, currentRevision="old", currentReplicas=0)
    complete_rolling_update(sts(3, updateStrategy={"type": "OnDelete"}), ondelete)
    assert ondelete["currentRevision"] == "old"


def test_only_a_changed_status_is_written() -> None:
    owner = sts(3)
    owner["status"] = {"replicas": 3, "observedGeneration": 2, "currentRevision": "a"}
    assert not inconsistent_status(
        owner, {"replicas": 3, "observedGeneration": 2, "currentRevision": "a"}
    )
    assert inconsistent_status(
        owner, {"replicas": 3, "observedGeneration": 3, "currentRevision": "a"}
    )
    assert inconsistent_status(
        owner, {"replicas": 3, "observedGeneration": 2, "currentRevision": "b"}
    )
    assert inconsistent_status(
        owner, {"replicas": 2, "observedGeneration": 2, "currentRevision": "a"}
    )

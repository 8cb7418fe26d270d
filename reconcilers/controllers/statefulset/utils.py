"""Identity, ordinals, storage and retention helpers (upstream's stateful_set_utils.go).

Pure functions over apiserver JSON: a pod's place in its set comes from its name
(``<set>-<ordinal>``), its storage from the set's ``volumeClaimTemplates`` (claim
``<template>-<set>-<ordinal>``), and which owner references its claims should carry from the
set's ``persistentVolumeClaimRetentionPolicy``.
"""

from __future__ import annotations

import datetime
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any, Final

from kubus.kube import ApiResource
from reconcilers.controllers.history import (
    apply_template_revision,
    new_revision,
    template_patch,
)
from reconcilers.controllers.podutil import is_available, is_pod_ready
from reconcilers.kinds import Object, clone
from reconcilers.refmanager import controller_ref

__all__ = [
    "DELETE",
    "POD_INDEX_LABEL",
    "POD_NAME_LABEL",
    "RETAIN",
    "REVISION_LABEL",
    "SET_API_VERSION",
    "SET_KIND",
    "InvalidMaxUnavailableError",
    "allows_burst",
    "apply_revision",
    "claim_name",
    "claims_for",
    "complete_rolling_update",
    "count_replicas",
    "end_ordinal",
    "has_owner_ref",
    "has_stale_owner_ref",
    "has_unexpected_controller",
    "identity_matches",
    "in_ordinal_range",
    "inconsistent_status",
    "is_claim_owner_up_to_date",
    "is_created",
    "is_failed",
    "is_member_of",
    "is_pending",
    "is_running_and_available",
    "is_running_and_ready",
    "is_succeeded",
    "is_terminating",
    "is_unavailable",
    "max_unavailable",
    "new_pod",
    "new_versioned_pod",
    "ordinal_of",
    "parent_and_ordinal",
    "pod_name",
    "pod_revision",
    "replicas_of",
    "retention_policy",
    "set_revision",
    "set_revision_object",
    "start_ordinal",
    "storage_matches",
    "update_claim_owner_refs",
    "update_identity",
    "update_storage",
]

POD_NAME_LABEL: Final = "statefulset.kubernetes.io/pod-name"
POD_INDEX_LABEL: Final = "apps.kubernetes.io/pod-index"
REVISION_LABEL: Final = "controller-revision-hash"
SET_API_VERSION: Final = "apps/v1"
SET_KIND: Final = "StatefulSet"
RETAIN: Final = "Retain"
DELETE: Final = "Delete"
_POD_NAME: Final = re.compile(r"(.*)-([0-9]+)$", re.DOTALL)
_INT32_MAX: Final = 2**31 - 1


class InvalidMaxUnavailableError(ValueError):
    """A ``maxUnavailable`` that is neither an integer nor a percentage."""


# --- ordinals and names -----------------------------------------------------------------------


def parent_and_ordinal(pod: Object) -> tuple[str, int]:
    """The set name and ordinal a pod's name spells; ("", -1) if it spells none."""
    match = _POD_NAME.match(pod.get("metadata", {}).get("name", ""))
    if match is None:
        return "", -1
    digits = match.group(2)
    ordinal = int(digits)
    return match.group(1), ordinal if ordinal <= _INT32_MAX else -1


def ordinal_of(pod: Object) -> int:
    return parent_and_ordinal(pod)[1]


def start_ordinal(sts: Object) -> int:
    ordinals = sts.get("spec", {}).get("ordinals")
    return int((ordinals or {}).get("start") or 0)


def replicas_of(sts: Object) -> int:
    replicas = sts.get("spec", {}).get("replicas")
    return 1 if replicas is None else int(replicas)


def end_ordinal(sts: Object) -> int:
    return start_ordinal(sts) + replicas_of(sts) - 1


def in_ordinal_range(pod: Object, sts: Object) -> bool:
    ordinal = ordinal_of(pod)
    return start_ordinal(sts) <= ordinal <= end_ordinal(sts)


def pod_name(sts: Object, ordinal: int) -> str:
    return f"{sts['metadata']['name']}-{ordinal}"


def claim_name(sts: Object, template: Object, ordinal: int) -> str:
    return f"{template.get('metadata', {}).get('name', '')}-{sts['metadata']['name']}-{ordinal}"


def is_member_of(sts: Object, pod: Object) -> bool:
    return bool(parent_and_ordinal(pod)[0] == sts["metadata"]["name"])


# --- identity and storage ---------------------------------------------------------------------


def identity_matches(sts: Object, pod: Object) -> bool:
    parent, ordinal = parent_and_ordinal(pod)
    meta = pod["metadata"]
    return bool(
        ordinal >= 0
        and parent == sts["metadata"]["name"]
        and meta.get("name") == pod_name(sts, ordinal)
        and meta.get("namespace") == sts["metadata"].get("namespace")
        and (meta.get("labels") or {}).get(POD_NAME_LABEL) == meta.get("name")
    )


def _templates(sts: Object) -> list[Object]:
    return list(sts.get("spec", {}).get("volumeClaimTemplates") or [])


def storage_matches(sts: Object, pod: Object) -> bool:
    ordinal = ordinal_of(pod)
    if ordinal < 0:
        return False
    volumes = {v.get("name"): v for v in pod.get("spec", {}).get("volumes") or []}
    for template in _templates(sts):
        volume = volumes.get(template.get("metadata", {}).get("name"))
        claim = (volume or {}).get("persistentVolumeClaim")
        if not claim or claim.get("claimName") != claim_name(sts, template, ordinal):
            return False
    return True


def claims_for(sts: Object, pod: Object) -> dict[str, Object]:
    """The claims the pod's ordinal needs, by template name, as they would be created."""
    ordinal = ordinal_of(pod)
    match_labels = (sts.get("spec", {}).get("selector") or {}).get("matchLabels") or {}
    claims: dict[str, Object] = {}
    for template in _templates(sts):
        claim = clone(template)
        claim.pop("status", None)
        meta = claim.setdefault("metadata", {})
        meta["name"] = claim_name(sts, template, ordinal)
        meta["namespace"] = sts["metadata"].get("namespace")
        meta["labels"] = {**(meta.get("labels") or {}), **match_labels}
        claim.setdefault("apiVersion", "v1")
        claim.setdefault("kind", "PersistentVolumeClaim")
        claims[template.get("metadata", {}).get("name", "")] = claim
    return claims


def update_storage(sts: Object, pod: Object) -> None:
    """Point the pod's template-named volumes at its claims (others kept, after them)."""
    spec = pod.setdefault("spec", {})
    claims = claims_for(sts, pod)
    volumes: list[Object] = [
        {"name": name, "persistentVolumeClaim": {"claimName": claim["metadata"]["name"]}}
        for name, claim in claims.items()
    ]
    volumes += [v for v in spec.get("volumes") or [] if v.get("name") not in claims]
    spec["volumes"] = volumes


def update_identity(sts: Object, pod: Object) -> None:
    ordinal = ordinal_of(pod)
    meta = pod.setdefault("metadata", {})
    meta["name"] = pod_name(sts, ordinal)
    meta["namespace"] = sts["metadata"].get("namespace")
    labels = meta.get("labels") or {}
    labels[POD_NAME_LABEL] = meta["name"]
    labels[POD_INDEX_LABEL] = str(ordinal)
    meta["labels"] = labels


def set_revision(pod: Object, revision: str) -> None:
    meta = pod.setdefault("metadata", {})
    meta["labels"] = {**(meta.get("labels") or {}), REVISION_LABEL: revision}


def pod_revision(pod: Object) -> str:
    return str((pod.get("metadata", {}).get("labels") or {}).get(REVISION_LABEL, ""))


def new_pod(sts: Object, sts_api: ApiResource, ordinal: int) -> Object:
    """The pod of ``ordinal`` from the set's template: identity, hostname, subdomain, storage."""
    template = sts.get("spec", {}).get("template") or {}
    template_meta = template.get("metadata") or {}
    metadata: Object = {
        "name": pod_name(sts, ordinal),
        "generateName": f"{sts['metadata']['name']}-",
        "labels": dict(template_meta.get("labels") or {}),
        "ownerReferences": [controller_ref(sts, sts_api)],
    }
    for field in ("annotations", "finalizers"):
        if template_meta.get(field):
            metadata[field] = clone(template_meta[field])
    pod: Object = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": metadata,
        "spec": clone(template.get("spec") or {}),
    }
    update_identity(sts, pod)
    pod["spec"]["hostname"] = metadata["name"]
    service = sts.get("spec", {}).get("serviceName")
    if service:
        pod["spec"]["subdomain"] = service
    else:
        pod["spec"].pop("subdomain", None)
    update_storage(sts, pod)
    return pod


def new_versioned_pod(
    current_set: Object,
    update_set: Object,
    *,
    current_revision: str,
    update_revision: str,
    ordinal: int,
    sts_api: ApiResource,
) -> Object:
    """A missing pod at the revision its ordinal should run: below the partition (or, without
    a rollingUpdate block, below the current replicas) the current one, else the update one.
    The condition groups as upstream's Go does (``a && b || c``)."""
    spec = current_set.get("spec", {})
    strategy = spec.get("updateStrategy") or {}
    rolling = strategy.get("rollingUpdate")
    start = start_ordinal(current_set)
    current_replicas = int((current_set.get("status") or {}).get("currentReplicas") or 0)
    below_current = (
        strategy.get("type", "RollingUpdate") == "RollingUpdate"
        and rolling is None
        and ordinal < start + current_replicas
    )
    below_partition = rolling is not None and ordinal < start + int(rolling.get("partition") or 0)
    if below_current or below_partition:
        pod = new_pod(current_set, sts_api, ordinal)
        set_revision(pod, current_revision)
        return pod
    pod = new_pod(update_set, sts_api, ordinal)
    set_revision(pod, update_revision)
    return pod


# --- pod states -------------------------------------------------------------------------------


def _phase(pod: Object) -> str:
    return str((pod.get("status") or {}).get("phase") or "")


def is_created(pod: Object) -> bool:
    return _phase(pod) != ""


def is_pending(pod: Object) -> bool:
    return _phase(pod) == "Pending"


def is_failed(pod: Object) -> bool:
    return _phase(pod) == "Failed"


def is_succeeded(pod: Object) -> bool:
    return _phase(pod) == "Succeeded"


def is_terminating(pod: Object) -> bool:
    return bool(pod.get("metadata", {}).get("deletionTimestamp"))


def is_running_and_ready(pod: Object) -> bool:
    return _phase(pod) == "Running" and is_pod_ready(pod)


def is_running_and_available(pod: Object, min_ready: int, now: datetime.datetime) -> bool:
    return is_available(pod, min_ready, now)


def is_unavailable(pod: Object, min_ready: int, now: datetime.datetime) -> bool:
    return not is_available(pod, min_ready, now) or is_terminating(pod)


def allows_burst(sts: Object) -> bool:
    return bool(sts.get("spec", {}).get("podManagementPolicy") == "Parallel")


# --- revisions --------------------------------------------------------------------------------


def set_revision_object(
    sts: Object, sts_api: ApiResource, revision: int, collision_count: int | None
) -> Object:
    """``newRevision``: the set's template as a revision, with the set's annotations."""
    template_labels = ((sts.get("spec", {}).get("template") or {}).get("metadata") or {}).get(
        "labels"
    )
    created = new_revision(
        sts,
        sts_api,
        template_labels,
        template_patch(sts),
        revision=revision,
        collision_count=collision_count,
    )
    annotations = sts["metadata"].get("annotations")
    if annotations:
        created["metadata"]["annotations"] = dict(annotations)
    return created


def apply_revision(sts: Object, revision: Object) -> Object:
    return apply_template_revision(sts, revision)


def max_unavailable(value: Any, replicas: int) -> int:
    """``maxUnavailable`` (default 1) as a count, percentages rounded down, at least 1."""
    if value is None:
        count = 1
    elif isinstance(value, bool):
        raise InvalidMaxUnavailableError(f"invalid value for IntOrString: {value!r}")
    elif isinstance(value, int):
        count = value
    elif isinstance(value, str) and value.endswith("%") and value[:-1].lstrip("-").isdigit():
        count = math.floor(int(value[:-1]) * replicas / 100)
    else:
        raise InvalidMaxUnavailableError(
            f"invalid value for IntOrString: invalid type: string is not a percentage: {value!r}"
        )
    return max(count, 1)


# --- claim ownership (persistentVolumeClaimRetentionPolicy) ---------------------------------


def retention_policy(sts: Object) -> tuple[str, str]:
    """(whenDeleted, whenScaled), Retain when unset."""
    policy = sts.get("spec", {}).get("persistentVolumeClaimRetentionPolicy") or {}
    return str(policy.get("whenDeleted") or RETAIN), str(policy.get("whenScaled") or RETAIN)


def _refs(obj: Object) -> list[Object]:
    return list(obj.get("metadata", {}).get("ownerReferences") or [])


def _matches_ref(ref: Mapping[str, Any], obj: Object, api_version: str, kind: str) -> bool:
    return (
        ref.get("apiVersion") == api_version
        and ref.get("kind") == kind
        and ref.get("name") == obj["metadata"].get("name")
    )


def _matches_set(ref: Mapping[str, Any], sts: Object) -> bool:
    return _matches_ref(ref, sts, SET_API_VERSION, SET_KIND)


def _matches_pod(ref: Mapping[str, Any], pod: Object) -> bool:
    return _matches_ref(ref, pod, "v1", "Pod")


def _uid(obj: Object) -> str:
    return str(obj["metadata"].get("uid") or "")


def has_owner_ref(target: Object, owner: Object) -> bool:
    return any(ref.get("uid") == _uid(owner) for ref in _refs(target))


def has_stale_owner_ref(target: Object, owner: Object, *, pod: bool) -> bool:
    """The first reference naming ``owner`` (by kind and name) has another uid."""
    for ref in _refs(target):
        if _matches_pod(ref, owner) if pod else _matches_set(ref, owner):
            return bool(ref.get("uid") != _uid(owner))
    return False


def has_unexpected_controller(claim: Object, sts: Object, pod: Object) -> bool:
    if retention_policy(sts) == (RETAIN, RETAIN):
        return False
    for ref in _refs(claim):
        if _matches_set(ref, sts):
            if ref.get("uid") != _uid(sts):
                return True
            continue
        if _matches_pod(ref, pod):
            if ref.get("uid") != _uid(pod):
                return True
            continue
        if ref.get("controller"):
            return True
    return False


def _has_non_controller_owner(claim: Object, sts: Object, pod: Object) -> bool:
    return any(
        ref.get("uid") in (_uid(sts), _uid(pod)) and not ref.get("controller")
        for ref in _refs(claim)
    )


def is_claim_owner_up_to_date(claim: Object, sts: Object, pod: Object) -> bool:
    """Whether the claim's references already say what the retention policy asks."""
    if has_stale_owner_ref(claim, sts, pod=False) or has_stale_owner_ref(claim, pod, pod=True):
        return True
    if has_unexpected_controller(claim, sts, pod):
        return not (has_owner_ref(claim, sts) or has_owner_ref(claim, pod))
    if _has_non_controller_owner(claim, sts, pod):
        return False
    when_deleted, when_scaled = retention_policy(sts)
    set_ref, pod_ref = has_owner_ref(claim, sts), has_owner_ref(claim, pod)
    scaled_down = not in_ordinal_range(pod, sts)
    if when_scaled == RETAIN and when_deleted == DELETE:
        return set_ref and not pod_ref
    if when_scaled == DELETE and when_deleted == RETAIN:
        return not set_ref and scaled_down == pod_ref
    if when_scaled == DELETE and when_deleted == DELETE:
        return scaled_down != set_ref and scaled_down == pod_ref
    return not set_ref and not pod_ref  # Retain/Retain, and unknown policies


def _add_controller_ref(
    refs: list[Object], owner: Object, api_version: str, kind: str
) -> list[Object]:
    if any(ref.get("uid") == _uid(owner) for ref in refs):
        return refs
    return [
        *refs,
        {
            "apiVersion": api_version,
            "kind": kind,
            "name": owner["metadata"].get("name"),
            "uid": _uid(owner),
            "controller": True,
            "blockOwnerDeletion": True,
        },
    ]


def update_claim_owner_refs(claim: Object, sts: Object, pod: Object) -> None:
    """Rewrite the claim's references to the set and the pod as the retention policy asks:
    whenDeleted=Delete -> the set (while the pod is in range), whenScaled=Delete -> the pod
    (once it is scaled away). A claim with a foreign controller only loses ours."""
    unexpected = has_unexpected_controller(claim, sts, pod)
    refs = [r for r in _refs(claim) if not (_matches_set(r, sts) or _matches_pod(r, pod))]
    if not unexpected:
        when_deleted, when_scaled = retention_policy(sts)
        scaled_down = not in_ordinal_range(pod, sts)
        if when_scaled == RETAIN and when_deleted == DELETE:
            refs = _add_controller_ref(refs, sts, SET_API_VERSION, SET_KIND)
        elif when_scaled == DELETE and when_deleted in (RETAIN, DELETE) and scaled_down:
            refs = _add_controller_ref(refs, pod, "v1", "Pod")
        elif when_scaled == DELETE and when_deleted == DELETE:
            refs = _add_controller_ref(refs, sts, SET_API_VERSION, SET_KIND)
    claim.setdefault("metadata", {})["ownerReferences"] = refs


# --- status -----------------------------------------------------------------------------------

_STATUS_FIELDS: Final = (
    "replicas",
    "currentReplicas",
    "readyReplicas",
    "updatedReplicas",
    "currentRevision",
    "availableReplicas",
    "updateRevision",
)


def inconsistent_status(sts: Object, status: Mapping[str, Any]) -> bool:
    """Whether ``status`` says something the set's status does not (worth a write)."""
    current = sts.get("status") or {}
    if int(status.get("observedGeneration") or 0) > int(current.get("observedGeneration") or 0):
        return True
    for field in _STATUS_FIELDS:
        zero: Any = "" if field.endswith("Revision") else 0
        if (status.get(field) or zero) != (current.get(field) or zero):
            return True
    return False


def complete_rolling_update(sts: Object, status: dict[str, Any]) -> None:
    """A RollingUpdate whose pods are all updated and ready makes the update revision current."""
    strategy = (sts.get("spec", {}).get("updateStrategy") or {}).get("type", "RollingUpdate")
    replicas = replicas_of(sts)
    if (
        strategy == "RollingUpdate"
        and status.get("updatedReplicas") == replicas
        and status.get("readyReplicas") == replicas
        and status.get("replicas") == replicas
    ):
        status["currentReplicas"] = status["updatedReplicas"]
        status["currentRevision"] = status.get("updateRevision", "")


def count_replicas(
    pod_lists: Sequence[Sequence[Object | None]],
    min_ready: int,
    current_revision: str,
    update_revision: str,
    now: datetime.datetime,
) -> dict[str, int]:
    """``updateStatus``: the replica counts over the given pod lists."""
    counts = dict.fromkeys(
        ("replicas", "readyReplicas", "availableReplicas", "currentReplicas", "updatedReplicas"),
        0,
    )
    for pods in pod_lists:
        for pod in pods:
            if pod is None:
                continue
            created = is_created(pod)
            if created:
                counts["replicas"] += 1
            if is_running_and_ready(pod):
                counts["readyReplicas"] += 1
                if is_running_and_available(pod, min_ready, now):
                    counts["availableReplicas"] += 1
            if created and not is_terminating(pod):
                revision = pod_revision(pod)
                if revision == current_revision:
                    counts["currentReplicas"] += 1
                if revision == update_revision:
                    counts["updatedReplicas"] += 1
    return counts

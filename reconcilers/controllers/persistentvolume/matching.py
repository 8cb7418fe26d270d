"""Which volume a claim may bind to, and the annotations and references binding writes.

Upstream's ``index.go`` and component-helpers' ``storage/volume``: a claim takes the smallest
Available volume of its class that is big enough, has every access mode it asks for (among
the volumes with the fewest extra modes first), its volume mode, its volume attributes class
and matches its selector; a volume already pointing at the claim wins outright. Pure
functions over the apiserver's JSON.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from decimal import Decimal
from typing import Any, Final

from reconcilers.controllers.quantity import parse_quantity
from reconcilers.kinds import Object
from reconcilers.selectors import InvalidSelectorError, Selector

__all__ = [
    "ANN_BETA_STORAGE_PROVISIONER",
    "ANN_BIND_COMPLETED",
    "ANN_BOUND_BY_CONTROLLER",
    "ANN_DYNAMICALLY_PROVISIONED",
    "ANN_MIGRATED_TO",
    "ANN_SELECTED_NODE",
    "ANN_STORAGE_PROVISIONER",
    "access_modes_key",
    "annotations_of",
    "claim_class",
    "claim_has_class",
    "claim_key",
    "claim_ref",
    "claimref_key",
    "default_class",
    "find_best_match",
    "has_annotation",
    "is_volume_bound_to_claim",
    "storage_of",
    "volume_class",
    "volume_does_not_satisfy",
    "volume_mode_mismatch",
]

ANN_BIND_COMPLETED: Final = "pv.kubernetes.io/bind-completed"
ANN_BOUND_BY_CONTROLLER: Final = "pv.kubernetes.io/bound-by-controller"
ANN_SELECTED_NODE: Final = "volume.kubernetes.io/selected-node"
ANN_DYNAMICALLY_PROVISIONED: Final = "pv.kubernetes.io/provisioned-by"
ANN_MIGRATED_TO: Final = "pv.kubernetes.io/migrated-to"
ANN_STORAGE_PROVISIONER: Final = "volume.kubernetes.io/storage-provisioner"
ANN_BETA_STORAGE_PROVISIONER: Final = "volume.beta.kubernetes.io/storage-provisioner"
_BETA_STORAGE_CLASS: Final = "volume.beta.kubernetes.io/storage-class"
_IS_DEFAULT_CLASS: Final = (
    "storageclass.kubernetes.io/is-default-class",
    "storageclass.beta.kubernetes.io/is-default-class",
)
# v1helper.GetAccessModesAsString's order and abbreviations: the index's keys.
_MODE_ORDER: Final = ("ReadWriteOnce", "ReadOnlyMany", "ReadWriteMany", "ReadWriteOncePod")


def annotations_of(obj: Object) -> Mapping[str, str]:
    found: Mapping[str, str] = obj.get("metadata", {}).get("annotations") or {}
    return found


def has_annotation(obj: Object, key: str) -> bool:
    return key in annotations_of(obj)


def claim_key(claim: Object) -> str:
    meta = claim["metadata"]
    return f"{meta.get('namespace', '')}/{meta['name']}"


def claimref_key(ref: Mapping[str, Any]) -> str:
    return f"{ref.get('namespace', '')}/{ref.get('name', '')}"


def claim_has_class(claim: Object) -> bool:
    return _BETA_STORAGE_CLASS in annotations_of(claim) or (
        claim.get("spec", {}).get("storageClassName") is not None
    )


def claim_class(claim: Object) -> str:
    """The class a claim asks for: the beta annotation first, as upstream reads it."""
    beta = annotations_of(claim).get(_BETA_STORAGE_CLASS)
    if beta is not None:
        return str(beta)
    return str(claim.get("spec", {}).get("storageClassName") or "")


def volume_class(volume: Object) -> str:
    beta = annotations_of(volume).get(_BETA_STORAGE_CLASS)
    if beta is not None:
        return str(beta)
    return str(volume.get("spec", {}).get("storageClassName") or "")


def default_class(classes: Iterable[Object]) -> Object | None:
    """The default StorageClass: of those annotated default, the newest, then by name."""
    defaults = [
        c for c in classes if any(annotations_of(c).get(a) == "true" for a in _IS_DEFAULT_CLASS)
    ]
    if not defaults:
        return None
    defaults.sort(key=lambda c: c["metadata"]["name"])
    # RFC 3339 timestamps of one apiserver sort as text; stable sort keeps names ascending.
    defaults.sort(key=lambda c: c["metadata"].get("creationTimestamp", ""), reverse=True)
    return defaults[0]


def storage_of(resources: Mapping[str, Any] | None) -> Decimal:
    """The ``storage`` quantity of a capacity or requests map; absent or bad counts as 0."""
    text = (resources or {}).get("storage")
    if text is None:
        return Decimal(0)
    try:
        return parse_quantity(str(text))
    except ValueError:
        return Decimal(0)


def is_volume_bound_to_claim(volume: Object, claim: Object) -> bool:
    ref = volume.get("spec", {}).get("claimRef")
    if not ref:
        return False
    meta = claim["metadata"]
    if ref.get("name") != meta["name"] or ref.get("namespace") != meta.get("namespace"):
        return False
    uid = ref.get("uid") or ""
    return uid == "" or uid == meta.get("uid")


def volume_mode_mismatch(claim: Object, volume: Object) -> bool:
    wanted = claim.get("spec", {}).get("volumeMode") or "Filesystem"
    return wanted != (volume.get("spec", {}).get("volumeMode") or "Filesystem")


def _has_access_modes(claim: Object, volume: Object) -> bool:
    offered = set(volume.get("spec", {}).get("accessModes") or ())
    return all(mode in offered for mode in claim.get("spec", {}).get("accessModes") or ())


def _attributes_class(obj: Object) -> str:
    return str(obj.get("spec", {}).get("volumeAttributesClassName") or "")


def volume_does_not_satisfy(volume: Object, claim: Object) -> str | None:
    """Why ``volume`` cannot serve ``claim`` (checkVolumeSatisfyClaim), None when it can."""
    if volume["metadata"].get("deletionTimestamp"):
        return f'the volume is marked for deletion "{volume["metadata"]["name"]}"'
    requested = storage_of(claim.get("spec", {}).get("resources", {}).get("requests"))
    if storage_of(volume.get("spec", {}).get("capacity")) < requested:
        return "requested PV is too small"
    if volume_class(volume) != claim_class(claim):
        return "storageClassName does not match"
    if _attributes_class(claim) != _attributes_class(volume):
        return "volumeAttributesClassName does not match"
    if volume_mode_mismatch(claim, volume):
        return "incompatible volumeMode"
    if not _has_access_modes(claim, volume):
        return "incompatible accessMode"
    return None


def access_modes_key(volume: Object) -> tuple[str, ...]:
    modes = set(volume.get("spec", {}).get("accessModes") or ())
    return tuple(mode for mode in _MODE_ORDER if mode in modes)


def find_best_match(
    claim: Object, volumes: Iterable[Object], *, delay_binding: bool
) -> Object | None:
    """The volume ``claim`` should bind to now, or None.

    Volumes are grouped by their set of access modes; groups that hold every mode the claim
    asks for are searched with the fewest modes first, and the first group with a match
    decides (upstream's index). ``ValueError`` when the claim's selector is invalid.
    """
    requested_modes = set(claim.get("spec", {}).get("accessModes") or ())
    groups: dict[tuple[str, ...], list[Object]] = {}
    for volume in volumes:
        groups.setdefault(access_modes_key(volume), []).append(volume)
    matching = [key for key in groups if requested_modes <= set(key)]
    matching.sort(key=len)
    for key in matching:
        found = _match_in(claim, groups[key], delay_binding=delay_binding)
        if found is not None:
            return found
    return None


def _match_in(claim: Object, volumes: list[Object], *, delay_binding: bool) -> Object | None:
    spec = claim.get("spec", {})
    requested = storage_of(spec.get("resources", {}).get("requests"))
    requested_class = claim_class(claim)
    selector = spec.get("selector")
    smallest: Object | None = None
    smallest_size = Decimal(0)
    for volume in volumes:
        bound_here = is_volume_bound_to_claim(volume, claim)
        if volume.get("spec", {}).get("claimRef") and not bound_here:
            continue
        size = storage_of(volume.get("spec", {}).get("capacity"))
        if size < requested or volume_mode_mismatch(claim, volume):
            continue
        if _attributes_class(claim) != _attributes_class(volume):
            continue
        if volume["metadata"].get("deletionTimestamp"):
            continue
        if bound_here:
            return volume  # pre-bound (or bound by the scheduler): the claim's own
        if delay_binding:
            continue  # the scheduler picks among these, knowing the node
        if volume.get("status", {}).get("phase") != "Available":
            continue
        if selector is not None and not _selects(selector, volume):
            continue
        if volume_class(volume) != requested_class:
            continue
        if smallest is None or size < smallest_size:
            smallest, smallest_size = volume, size
    return smallest


def _selects(selector: Mapping[str, Any], volume: Object) -> bool:
    try:
        parsed = Selector.parse(selector)
    except InvalidSelectorError as error:
        raise ValueError(f"error creating internal label selector for claim: {error}") from error
    return parsed.matches(volume["metadata"].get("labels"))


def claim_ref(claim: Object) -> dict[str, Any]:
    """The ObjectReference a bound volume keeps of its claim (reference.GetReference)."""
    meta = claim["metadata"]
    return {
        "kind": "PersistentVolumeClaim",
        "namespace": meta.get("namespace", ""),
        "name": meta["name"],
        "uid": meta.get("uid", ""),
        "apiVersion": "v1",
        "resourceVersion": meta.get("resourceVersion", ""),
    }

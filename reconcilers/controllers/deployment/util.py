"""Deployment arithmetic and bookkeeping (upstream's deployment/util): pure functions on objects.

Rollout arithmetic (maxSurge, maxUnavailable, proportions), revisions and their annotations,
template equality and the pod-template-hash, and the Deployment conditions with the predicates
built on them (complete, progressing, timed out). Nothing here does I/O.
"""

from __future__ import annotations

import datetime
import math
from collections.abc import Iterable
from typing import Any, Final

from reconcilers.controllers import podtemplatehash
from reconcilers.controllers.podutil import parse_time
from reconcilers.kinds import Object, clone

__all__ = [
    "DESIRED_REPLICAS",
    "LAST_APPLIED",
    "MAX_INT32",
    "MAX_REPLICAS",
    "NOT_COPIED",
    "POD_TEMPLATE_HASH",
    "REVISION",
    "REVISION_HISTORY",
    "ROLLBACK_TO",
    "annotations_of",
    "compute_hash",
    "creation_key",
    "deployment_complete",
    "deployment_progressing",
    "deployment_timed_out",
    "equal_ignore_hash",
    "find_new_replicaset",
    "get_condition",
    "has_progress_deadline",
    "is_recreate",
    "is_saturated",
    "last_revision",
    "max_revision",
    "max_surge",
    "max_unavailable",
    "new_condition",
    "new_rs_new_replicas",
    "now_text",
    "proportional_sizes",
    "remove_condition",
    "replicas",
    "replicaset_name",
    "resolve_fenceposts",
    "revision",
    "scaled_value",
    "set_annotations_from_replicaset",
    "set_condition",
    "set_deployment_revision",
    "set_from_replicaset_template",
    "set_new_replicaset_annotations",
    "status_sum",
]

POD_TEMPLATE_HASH: Final = "pod-template-hash"
REVISION: Final = "deployment.kubernetes.io/revision"
REVISION_HISTORY: Final = "deployment.kubernetes.io/revision-history"
DESIRED_REPLICAS: Final = "deployment.kubernetes.io/desired-replicas"
MAX_REPLICAS: Final = "deployment.kubernetes.io/max-replicas"
ROLLBACK_TO: Final = "deprecated.deployment.rollback.to"
LAST_APPLIED: Final = "kubectl.kubernetes.io/last-applied-configuration"
NOT_COPIED: Final = frozenset(
    {LAST_APPLIED, REVISION, REVISION_HISTORY, DESIRED_REPLICAS, MAX_REPLICAS, ROLLBACK_TO}
)
MAX_INT32: Final = 2**31 - 1
MAX_HISTORY_CHARS: Final = 2000


def compute_hash(template: Object, collision_count: int | None) -> str:
    """The pod-template-hash, identical to kube-controller-manager's controller.ComputeHash:
    FNV-1a 32 of go-spew's print of the template as kcm's informer decodes it, then the
    collision count (uint32, little-endian, padded to 8 bytes), spelled with Kubernetes'
    vowel-free alphabet. ``template`` is the JSON the apiserver returns; see podtemplatehash
    for what is exact (everything but a non-null Time's zone, which assumes kcm's UTC fallback).
    """
    return podtemplatehash.compute_hash(template, collision_count)


def _normalized(value: Any) -> Any:
    """Semantic equality as apimachinery's: empty maps/lists and nulls are all 'unset'."""
    if isinstance(value, dict):
        cleaned = {k: _normalized(v) for k, v in value.items()}
        return {k: v for k, v in cleaned.items() if v not in (None, {}, [])}
    if isinstance(value, list):
        return [_normalized(v) for v in value]
    return value


def equal_ignore_hash(first: Object, second: Object) -> bool:
    """Two pod templates equal once the pod-template-hash label is set aside."""
    return bool(_without_hash(first) == _without_hash(second))


def _without_hash(template: Object) -> Any:
    """The normalized template without the hash label. Normalizing builds new dicts, so the
    label is dropped from those, not from the caller's template (and no deep copy is needed:
    this runs several times per Deployment reconcile)."""
    normalized = _normalized(template)
    metadata = normalized.get("metadata")
    labels = metadata.get("labels") if metadata else None
    if labels and POD_TEMPLATE_HASH in labels:
        del labels[POD_TEMPLATE_HASH]
        if not labels:  # as if normalized after the removal: empty means unset
            del metadata["labels"]
            if not metadata:
                del normalized["metadata"]
    return normalized


def scaled_value(value: int | str | None, total: int, *, round_up: bool) -> int:
    if value is None:
        raise ValueError("nil value for IntOrString")
    if isinstance(value, int):
        return value
    if not value.endswith("%"):
        raise ValueError("invalid type: string is not a percentage")
    try:
        percent = int(value[:-1])
    except ValueError as error:
        raise ValueError(f"invalid value for IntOrString: invalid value {value!r}") from error
    scaled = float(percent) * float(total) / 100
    return math.ceil(scaled) if round_up else math.floor(scaled)


def resolve_fenceposts(surge: Any, unavailable: Any, desired: int) -> tuple[int, int]:
    """maxSurge rounds up, maxUnavailable rounds down; both 0 makes maxUnavailable 1."""
    resolved_surge = scaled_value(surge if surge is not None else 0, desired, round_up=True)
    resolved_unavailable = scaled_value(
        unavailable if unavailable is not None else 0, desired, round_up=False
    )
    if resolved_surge == 0 and resolved_unavailable == 0:
        return 0, 1
    return resolved_surge, resolved_unavailable


def replicas(obj: Object | None) -> int:
    if obj is None:
        return 0
    return int(obj.get("spec", {}).get("replicas", 1))


def _rolling(deployment: Object) -> Object:
    rolling: Object = deployment.get("spec", {}).get("strategy", {}).get("rollingUpdate") or {}
    return rolling


def is_recreate(deployment: Object) -> bool:
    strategy: str = deployment.get("spec", {}).get("strategy", {}).get("type", "")
    return strategy == "Recreate"


def max_surge(deployment: Object) -> int:
    if is_recreate(deployment):
        return 0
    rolling = _rolling(deployment)
    surge, _ = resolve_fenceposts(
        rolling.get("maxSurge", "25%"), rolling.get("maxUnavailable", "25%"), replicas(deployment)
    )
    return surge


def max_unavailable(deployment: Object) -> int:
    desired = replicas(deployment)
    if is_recreate(deployment) or desired == 0:
        return 0
    rolling = _rolling(deployment)
    _, unavailable = resolve_fenceposts(
        rolling.get("maxSurge", "25%"), rolling.get("maxUnavailable", "25%"), desired
    )
    return min(unavailable, desired)


def new_rs_new_replicas(deployment: Object, all_rss: Iterable[Object], new_rs: Object) -> int:
    desired = replicas(deployment)
    if is_recreate(deployment):
        return desired
    surge = scaled_value(_rolling(deployment).get("maxSurge", "25%"), desired, round_up=True)
    # Upstream sums spec.replicas only, so for a moment after an old ReplicaSet is scaled down
    # its pods (not deleted yet) and the new ones may together pass replicas + maxSurge. kubus
    # also counts the pods a ReplicaSet still reports, so maxSurge holds for pods at all times.
    current = sum(max(replicas(rs), _status_replicas(rs)) for rs in all_rss)
    max_total = desired + surge
    if current >= max_total:
        return replicas(new_rs)
    return replicas(new_rs) + min(max_total - current, desired - replicas(new_rs))


def _status_replicas(rs: Object) -> int:
    return int((rs.get("status") or {}).get("replicas") or 0)


def revision(obj: Object) -> int:
    text = (obj.get("metadata", {}).get("annotations") or {}).get(REVISION)
    if not text:
        return 0
    return int(text)


def max_revision(rss: Iterable[Object]) -> int:
    best = 0
    for rs in rss:
        try:
            best = max(best, revision(rs))
        except ValueError:
            continue
    return best


def last_revision(rss: Iterable[Object]) -> int:
    """The revision before the newest (what a rollback to revision 0 means); 0 if none."""
    newest = previous = 0
    for rs in rss:
        try:
            value = revision(rs)
        except ValueError:
            continue
        if value >= newest:
            newest, previous = value, newest
        elif value > previous:
            previous = value
    return previous


def set_from_replicaset_template(deployment: Object, rs: Object) -> None:
    """The Deployment's pod template becomes the ReplicaSet's, without its hash label."""
    template = clone(rs["spec"]["template"])
    labels = (template.get("metadata") or {}).get("labels")
    if labels:
        labels.pop(POD_TEMPLATE_HASH, None)
    deployment["spec"]["template"] = template


def set_annotations_from_replicaset(deployment: Object, rs: Object) -> None:
    """On rollback the Deployment takes the ReplicaSet's annotations (change-cause and the
    like), keeping only its own controller-managed ones."""
    meta = deployment["metadata"]
    kept = {k: v for k, v in (meta.get("annotations") or {}).items() if k in NOT_COPIED}
    for key, value in (rs["metadata"].get("annotations") or {}).items():
        if key not in NOT_COPIED:
            kept[key] = value
    meta["annotations"] = kept


def status_sum(rss: Iterable[Object], field: str) -> int:
    return sum(int((rs.get("status") or {}).get(field) or 0) for rs in rss)


def now_text() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def creation_key(rs: Object) -> tuple[str, str]:
    meta = rs.get("metadata", {})
    return meta.get("creationTimestamp", ""), meta.get("name", "")


def proportional_sizes(deployment: Object, active: list[Object]) -> list[tuple[Object, int]]:
    """The sizes a scaling event gives the active ReplicaSets of a rollout in progress.

    The room (``replicas + maxSurge`` minus what the ReplicaSets hold) is shared in proportion
    to each one's size over the max-replicas it was last scaled for; the largest goes first
    (newest on ties when growing, oldest when shrinking) and takes the rounding leftovers.
    """
    desired = replicas(deployment)
    allowed = desired + max_surge(deployment) if desired > 0 else 0
    to_add = allowed - sum(replicas(rs) for rs in active)
    if to_add > 0:
        ordered = sorted(sorted(active, key=creation_key, reverse=True), key=lambda r: -replicas(r))
    elif to_add < 0:
        ordered = sorted(sorted(active, key=creation_key), key=lambda r: -replicas(r))
    else:
        return [(rs, replicas(rs)) for rs in active]
    sizes: list[int] = []
    added = 0
    for rs in ordered:
        part = _proportion(rs, deployment, to_add, added)
        sizes.append(replicas(rs) + part)
        added += part
    sizes[0] = max(0, sizes[0] + to_add - added)
    return list(zip(ordered, sizes, strict=True))


def _proportion(rs: Object, deployment: Object, to_add: int, added: int) -> int:
    if replicas(rs) == 0 or to_add in (0, added):
        return 0
    fraction = _fraction(rs, deployment)
    allowed = to_add - added
    return min(fraction, allowed) if to_add > 0 else max(fraction, allowed)


def _fraction(rs: Object, deployment: Object) -> int:
    if replicas(deployment) == 0:
        return -replicas(rs)
    maximum = replicas(deployment) + max_surge(deployment)
    text = (rs.get("metadata", {}).get("annotations") or {}).get(MAX_REPLICAS)
    annotated = int(text) if text and text.isdigit() else 0
    if annotated == 0:
        annotated = int((deployment.get("status") or {}).get("replicas") or 0)
        if annotated == 0:
            return 0
    size = replicas(rs) * maximum / annotated
    rounded = int(size + 0.5) if size >= 0 else -int(-size + 0.5)  # half away from zero
    return rounded - replicas(rs)


# --- ReplicaSets of a Deployment: names, revisions, annotations --------------------------------


def annotations_of(obj: Object) -> dict[str, str]:
    annotations: dict[str, str] = obj.get("metadata", {}).get("annotations") or {}
    return annotations


def replicaset_name(deployment: str, pod_hash: str) -> str:
    """``<deployment>-<hash>``, the Deployment's name cut so the whole fits 253 characters."""
    limit = 253 - 1 - len(pod_hash)
    if len(deployment) > limit > 0:
        deployment = deployment[:limit]
    return f"{deployment}-{pod_hash}"


def find_new_replicaset(d: Object, rs_list: list[Object]) -> Object | None:
    """FindNewReplicaSet: the oldest ReplicaSet whose template equals the Deployment's."""
    wanted = _without_hash(d["spec"]["template"])
    for rs in sorted(rs_list, key=creation_key):
        if _replicaset_template(rs) == wanted:
            return rs
    return None


# Normalized ReplicaSet templates by (uid, resourceVersion): a template only changes with its
# object's resourceVersion, and every Deployment sync compares each of its ReplicaSets' several
# times (normalizing was an eighth of a reconciler's CPU in a rolling update).
_TEMPLATES: dict[tuple[str, str], Any] = {}
_TEMPLATES_HELD = 8192


def _replicaset_template(rs: Object) -> Any:
    meta = rs["metadata"]
    key = (meta.get("uid") or "", meta.get("resourceVersion") or "")
    if not all(key):  # not stored yet (a ReplicaSet being built): nothing to key it by
        return _without_hash(rs["spec"]["template"])
    normalized = _TEMPLATES.get(key)
    if normalized is None:
        if len(_TEMPLATES) >= _TEMPLATES_HELD:
            _TEMPLATES.clear()
        normalized = _TEMPLATES[key] = _without_hash(rs["spec"]["template"])
    return normalized


def set_new_replicaset_annotations(
    d: Object, rs: Object, new_revision: str, *, exists: bool
) -> bool:
    """SetNewReplicaSetAnnotations: copy the Deployment's annotations, raise the revision
    (keeping the previous one in the history, at most 2000 characters), and on creation note the
    replicas it was sized for; True if anything changed."""
    rs_annotations = rs["metadata"].setdefault("annotations", {})
    changed = False
    for key, value in annotations_of(d).items():
        if key in NOT_COPIED or rs_annotations.get(key, "") == value:
            continue
        rs_annotations[key] = value
        changed = True
    old_text = rs_annotations.get(REVISION)
    try:
        old_revision = int(old_text) if old_text else 0
    except ValueError:
        return False
    new = int(new_revision)
    if old_revision < new:
        rs_annotations[REVISION] = new_revision
        changed = True
    if old_text and old_revision < new:
        history = rs_annotations.get(REVISION_HISTORY, "")
        if not history:
            rs_annotations[REVISION_HISTORY] = old_text
        else:
            entries = history.split(",")
            while entries and len(",".join(entries)) + len(old_text) + 1 > MAX_HISTORY_CHARS:
                entries.pop(0)
            if len(",".join(entries)) + len(old_text) + 1 <= MAX_HISTORY_CHARS:
                rs_annotations[REVISION_HISTORY] = ",".join([*entries, old_text]).strip(",")
    if not exists:
        desired, maximum = str(replicas(d)), str(replicas(d) + max_surge(d))
        if (
            rs_annotations.get(DESIRED_REPLICAS) != desired
            or rs_annotations.get(MAX_REPLICAS) != maximum
        ):
            rs_annotations[DESIRED_REPLICAS] = desired
            rs_annotations[MAX_REPLICAS] = maximum
            changed = True
    return changed


def set_deployment_revision(d: Object, revision_text: str) -> bool:
    annotations = d["metadata"].setdefault("annotations", {})
    if annotations.get(REVISION) != revision_text:
        annotations[REVISION] = revision_text
        return True
    return False


def is_saturated(d: Object, rs: Object) -> bool:
    """IsSaturated: the new ReplicaSet holds, and has available, all the replicas wanted."""
    desired = annotations_of(rs).get(DESIRED_REPLICAS)
    if desired is None or not desired.isdigit():
        return False
    return (
        replicas(rs) == replicas(d)
        and int(desired) == replicas(d)
        and int((rs.get("status") or {}).get("availableReplicas") or 0) == replicas(d)
    )


# --- conditions and the rollout predicates on them ---------------------------------------------


def has_progress_deadline(d: Object) -> bool:
    """HasProgressDeadline: unset (``MaxInt32``) turns the Progressing deadline off."""
    deadline = d["spec"].get("progressDeadlineSeconds", 600)
    return deadline is not None and deadline != MAX_INT32


def get_condition(d: Object, kind: str) -> Object | None:
    for condition in (d.get("status") or {}).get("conditions") or ():
        if condition.get("type") == kind:
            return dict(condition)
    return None


def new_condition(kind: str, status: str, reason: str, message: str) -> Object:
    now = now_text()
    return {
        "type": kind,
        "status": status,
        "lastUpdateTime": now,
        "lastTransitionTime": now,
        "reason": reason,
        "message": message,
    }


def set_condition(d: Object, condition: Object) -> None:
    """SetDeploymentCondition: no change for the same status and reason; the transition time
    stays while the status does."""
    status = d.setdefault("status", {})
    conditions = status.setdefault("conditions", [])
    current = next((c for c in conditions if c.get("type") == condition["type"]), None)
    if (
        current is not None
        and current.get("status") == condition["status"]
        and current.get("reason") == condition["reason"]
    ):
        return
    if current is not None and current.get("status") == condition["status"]:
        condition = {**condition, "lastTransitionTime": current.get("lastTransitionTime")}
    status["conditions"] = [c for c in conditions if c.get("type") != condition["type"]]
    status["conditions"].append(condition)


def remove_condition(d: Object, kind: str) -> None:
    status = d.get("status") or {}
    if status.get("conditions"):
        status["conditions"] = [c for c in status["conditions"] if c.get("type") != kind]


def deployment_complete(d: Object, status: Object) -> bool:
    """DeploymentComplete: every replica updated and available, the generation observed."""
    desired = replicas(d)
    return bool(
        status.get("updatedReplicas", 0) == desired
        and status.get("replicas", 0) == desired
        and status.get("availableReplicas", 0) == desired
        and status.get("observedGeneration", 0) >= d["metadata"].get("generation", 0)
    )


def deployment_progressing(d: Object, new: Object) -> bool:
    """DeploymentProgressing: more pods updated, ready or available, or fewer old ones."""
    old = d.get("status") or {}

    def get(status: Object, field: str) -> int:
        return int(status.get(field) or 0)

    return (
        get(new, "updatedReplicas") > get(old, "updatedReplicas")
        or get(new, "replicas") - get(new, "updatedReplicas")
        < get(old, "replicas") - get(old, "updatedReplicas")
        or get(new, "readyReplicas") > get(old, "readyReplicas")
        or get(new, "availableReplicas") > get(old, "availableReplicas")
    )


def deployment_timed_out(d: Object, current: Object) -> bool:
    """DeploymentTimedOut: no progress for progressDeadlineSeconds since the last update."""
    if not has_progress_deadline(d):
        return False
    condition = get_condition(current, "Progressing")
    if condition is None or condition.get("reason") == "NewReplicaSetAvailable":
        return False
    if condition.get("reason") == "ProgressDeadlineExceeded":
        return True
    updated = parse_time(condition.get("lastUpdateTime"))
    if updated is None:
        return False
    deadline = updated + datetime.timedelta(seconds=d["spec"]["progressDeadlineSeconds"])
    return deadline < datetime.datetime.now(datetime.UTC)

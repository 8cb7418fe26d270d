"""The disruption controller's arithmetic, without the apiserver or the cache: what a PDB's
status should say of a list of pods, the DisruptionAllowed condition, the disruptedPods
timeouts and the stale DisruptionTarget condition of a pod (upstream's ``disruption.go`` and
the ``poddisruptionbudget`` helpers of component-helpers)."""

from __future__ import annotations

import datetime
import json
import math
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, Final

from reconcilers.cache import controller_of
from reconcilers.controllers.podutil import is_pod_ready, parse_time
from reconcilers.kinds import Object, clone
from reconcilers.selectors import Selector

__all__ = [
    "COMPONENT",
    "DELETION_TIMEOUT",
    "ControllerScale",
    "Finder",
    "SyncError",
    "build_disrupted_pods",
    "conditions_up_to_date",
    "count_healthy",
    "disruptions_allowed",
    "expected_pod_count",
    "expected_scale",
    "fail_safe_status",
    "go_quote",
    "label_selector_text",
    "matching_pods",
    "pdb_selector",
    "relevant_fields",
    "scaled_value",
    "set_condition",
    "stale_disruption_wait",
    "status_update",
    "with_disruption_target_reset",
]

# How long an eviction's entry in disruptedPods keeps the pod out of currentHealthy while the
# pod is not seen being deleted (upstream's DeletionTimeout).
DELETION_TIMEOUT: Final = 120.0
# The events' source: upstream's recorder is the controller manager's, not the controller's.
COMPONENT: Final = "controllermanager"

CONDITION: Final = "DisruptionAllowed"
SUFFICIENT_PODS: Final = "SufficientPods"
INSUFFICIENT_PODS: Final = "InsufficientPods"
SYNC_FAILED: Final = "SyncFailed"
DISRUPTION_TARGET: Final = "DisruptionTarget"
TERMINATION_BY_KUBELET: Final = "TerminationByKubelet"


class SyncError(Exception):
    """Why a PDB's status cannot be computed: written into its SyncFailed condition."""


# --- upstream's small helpers -----------------------------------------------------------------


def go_quote(text: str) -> str:
    """Go's ``%q`` of printable text."""
    return json.dumps(text, ensure_ascii=False)


def _go_atoi(text: str) -> int:
    """strconv.Atoi: an optional sign and decimal digits, nothing else."""
    digits = text[1:] if text[:1] in ("+", "-") else text
    if not digits or not digits.isascii() or not digits.isdigit():
        raise ValueError(f"strconv.Atoi: parsing {go_quote(text)}: invalid syntax")
    return int(text)


def scaled_value(value: int | str, total: int, *, round_up: bool = True) -> int:
    """intstr.GetScaledValueFromIntOrPercent: a number as is, ``"N%"`` of ``total`` rounded up
    (or down). Raises :class:`SyncError` in upstream's words for anything else."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise SyncError("invalid value for IntOrString: invalid type: neither int nor percentage")
    if isinstance(value, int):
        return value
    if not value.endswith("%"):
        raise SyncError("invalid value for IntOrString: invalid type: string is not a percentage")
    try:
        percent = _go_atoi(value[:-1])
    except ValueError as error:
        raise SyncError(
            f"invalid value for IntOrString: invalid value {go_quote(value)}: {error}"
        ) from None
    scaled = percent * total / 100
    return math.ceil(scaled) if round_up else math.floor(scaled)


def pdb_selector(pdb: Object) -> Selector | None:
    """The PDB's selector; None selects nothing (no selector), ``{}`` everything (policy/v1)."""
    spec = pdb.get("spec", {}).get("selector")
    if spec is None:
        return None
    return Selector.parse(spec)


def matching_pods(selector: Selector | None, pods: Iterable[Object]) -> list[Object]:
    if selector is None:
        return []
    return [pod for pod in pods if selector.matches(pod["metadata"].get("labels"))]


def label_selector_text(selector: Mapping[str, Any] | None) -> str:
    """A ``*metav1.LabelSelector`` as Go's ``%v`` prints it (its generated String())."""
    if selector is None:
        return "nil"
    labels = selector.get("matchLabels") or {}
    shown_labels = "".join(f"{key}: {labels[key]}," for key in sorted(labels))
    shown_expressions = "".join(
        "LabelSelectorRequirement{"
        f"Key:{expression.get('key', '')},"
        f"Operator:{expression.get('operator', '')},"
        f"Values:[{' '.join(expression.get('values') or [])}],"
        "},"
        for expression in selector.get("matchExpressions") or []
    )
    return (
        "&LabelSelector{"
        f"MatchLabels:map[string]string{{{shown_labels}}},"
        f"MatchExpressions:[]LabelSelectorRequirement{{{shown_expressions}}},"
        "}"
    )


def _format_time(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _time_or_zero(text: str | None) -> datetime.datetime:
    """A metav1.Time; a missing or unreadable one is Go's zero time (long past)."""
    try:
        parsed = parse_time(text)
    except ValueError:
        parsed = None
    return parsed if parsed is not None else datetime.datetime(1, 1, 1, tzinfo=datetime.UTC)


# --- the counts -------------------------------------------------------------------------------

# What a controller finder answers: the controller's uid and its scale, or None (not this
# finder's kind, or not found).
ControllerScale = tuple[str, int]
Finder = Callable[[Mapping[str, Any], str], Awaitable[ControllerScale | None]]


async def expected_scale(pods: Iterable[Object], find: Finder) -> tuple[int, list[str]]:
    """The sum of the scales of the pods' controllers (each once), and the pods that have no
    controller. A controller no finder knows is a :class:`SyncError`."""
    scales: dict[str, int] = {}
    unmanaged: list[str] = []
    for pod in pods:
        reference = controller_of(pod)
        if reference is None:
            unmanaged.append(pod["metadata"].get("name", ""))
            continue
        if reference.get("uid") in scales:
            continue
        found = await find(reference, pod["metadata"].get("namespace", ""))
        if found is None:
            raise SyncError(f"found no controllers for pod {go_quote(pod['metadata']['name'])}")
        uid, scale = found
        scales[uid] = scale
    return sum(scales.values()), unmanaged


async def expected_pod_count(
    pdb: Object, pods: list[Object], find: Finder
) -> tuple[int, int, list[str]]:
    """(expectedPods, desiredHealthy, unmanaged pods) as upstream's getExpectedPodCount."""
    spec = pdb.get("spec", {})
    max_unavailable = spec.get("maxUnavailable")
    min_available = spec.get("minAvailable")
    if max_unavailable is not None:
        expected, unmanaged = await expected_scale(pods, find)
        unavailable = scaled_value(max_unavailable, expected, round_up=True)
        return expected, max(expected - unavailable, 0), unmanaged
    if min_available is not None:
        if isinstance(min_available, int) and not isinstance(min_available, bool):
            return len(pods), min_available, []
        if isinstance(min_available, str):
            expected, unmanaged = await expected_scale(pods, find)
            return expected, scaled_value(min_available, expected, round_up=True), unmanaged
    return 0, 0, []


def build_disrupted_pods(
    pods: Iterable[Object],
    disrupted: Mapping[str, str] | None,
    now: datetime.datetime,
    timeout: float = DELETION_TIMEOUT,
) -> tuple[dict[str, str], datetime.datetime | None, list[Object]]:
    """The disruptedPods entries to keep (pods present, not being deleted, within the
    timeout), when the first of them expires, and the pods whose entry expired."""
    kept: dict[str, str] = {}
    recheck: datetime.datetime | None = None
    expired: list[Object] = []
    if not disrupted:
        return kept, recheck, expired
    for pod in pods:
        meta = pod["metadata"]
        if meta.get("deletionTimestamp"):
            continue
        name = meta.get("name", "")
        if name not in disrupted:
            continue
        due = _time_or_zero(disrupted[name]) + datetime.timedelta(seconds=timeout)
        if due < now:
            expired.append(pod)
            continue
        if recheck is None or due < recheck:
            recheck = due
        kept[name] = disrupted[name]
    return kept, recheck, expired


def count_healthy(
    pods: Iterable[Object],
    disrupted: Mapping[str, str],
    now: datetime.datetime,
    timeout: float = DELETION_TIMEOUT,
) -> int:
    """Ready pods that are neither being deleted nor recently evicted."""
    healthy = 0
    for pod in pods:
        meta = pod["metadata"]
        if meta.get("deletionTimestamp"):
            continue
        since = disrupted.get(meta.get("name", ""))
        if since is not None and _time_or_zero(since) + datetime.timedelta(seconds=timeout) > now:
            continue
        if is_pod_ready(pod):
            healthy += 1
    return healthy


def disruptions_allowed(current_healthy: int, desired_healthy: int, expected: int) -> int:
    allowed = current_healthy - desired_healthy
    return 0 if expected <= 0 or allowed <= 0 else allowed


# --- status and conditions --------------------------------------------------------------------


def set_condition(
    conditions: list[Object], condition: Mapping[str, Any], now: datetime.datetime
) -> list[Object]:
    """meta.SetStatusCondition on a copy: a new condition is appended; an existing one takes
    the new status (and transition time if the status changed), reason, message and
    observedGeneration."""
    result = [dict(c) for c in conditions]
    for existing in result:
        if existing.get("type") == condition["type"]:
            if existing.get("status") != condition["status"]:
                existing["status"] = condition["status"]
                existing["lastTransitionTime"] = _format_time(now)
            existing["reason"] = condition.get("reason", "")
            existing["message"] = condition.get("message", "")
            generation = condition.get("observedGeneration", 0)
            if generation:
                existing["observedGeneration"] = generation
            else:
                existing.pop("observedGeneration", None)
            return result
    added = {
        "type": condition["type"],
        "status": condition["status"],
        "lastTransitionTime": _format_time(now),
        "reason": condition.get("reason", ""),
        "message": condition.get("message", ""),
    }
    if condition.get("observedGeneration"):
        added["observedGeneration"] = condition["observedGeneration"]
    result.append(added)
    return result


def _find_condition(conditions: Iterable[Object], kind: str) -> Object | None:
    return next((c for c in conditions if c.get("type") == kind), None)


def conditions_up_to_date(pdb: Object) -> bool:
    """pdbhelper.ConditionsAreUpToDate: the DisruptionAllowed condition agrees with the
    status's disruptionsAllowed, for the PDB's current generation."""
    status = pdb.get("status") or {}
    condition = _find_condition(status.get("conditions") or (), CONDITION)
    if condition is None:
        return False
    if status.get("observedGeneration", 0) != pdb["metadata"].get("generation", 0):
        return False
    if status.get("disruptionsAllowed", 0) > 0:
        return condition.get("status") == "True" and condition.get("reason") == SUFFICIENT_PODS
    return condition.get("status") == "False" and condition.get("reason") == INSUFFICIENT_PODS


def _allowed_condition(allowed: int, generation: int) -> dict[str, Any]:
    if allowed > 0:
        return {
            "type": CONDITION,
            "status": "True",
            "reason": SUFFICIENT_PODS,
            "observedGeneration": generation,
        }
    return {
        "type": CONDITION,
        "status": "False",
        "reason": INSUFFICIENT_PODS,
        "observedGeneration": generation,
    }


def status_update(
    pdb: Object,
    *,
    current_healthy: int,
    desired_healthy: int,
    expected: int,
    disrupted: Mapping[str, str],
    now: datetime.datetime,
) -> Object | None:
    """The status to write, or None when the PDB's status already says all of it."""
    allowed = disruptions_allowed(current_healthy, desired_healthy, expected)
    status = pdb.get("status") or {}
    generation = pdb["metadata"].get("generation", 0)
    if (
        status.get("currentHealthy", 0) == current_healthy
        and status.get("desiredHealthy", 0) == desired_healthy
        and status.get("expectedPods", 0) == expected
        and status.get("disruptionsAllowed", 0) == allowed
        and (status.get("disruptedPods") or {}) == dict(disrupted)
        and status.get("observedGeneration", 0) == generation
        and conditions_up_to_date(pdb)
    ):
        return None
    updated: Object = {
        "disruptionsAllowed": allowed,
        "currentHealthy": current_healthy,
        "desiredHealthy": desired_healthy,
        "expectedPods": expected,
    }
    if generation:
        updated["observedGeneration"] = generation
    if disrupted:
        updated["disruptedPods"] = dict(disrupted)
    updated["conditions"] = set_condition(
        status.get("conditions") or [], _allowed_condition(allowed, generation), now
    )
    return updated


def fail_safe_status(pdb: Object, error: str, now: datetime.datetime) -> Object:
    """upstream's failSafe: the status as it is, with no disruption allowed and the condition
    False/SyncFailed carrying the error (observedGeneration left as it was)."""
    status = clone(pdb.get("status") or {})
    status["disruptionsAllowed"] = 0
    status["conditions"] = set_condition(
        status.get("conditions") or [],
        {
            "type": CONDITION,
            "status": "False",
            "reason": SYNC_FAILED,
            "message": error,
            "observedGeneration": status.get("observedGeneration", 0),
        },
        now,
    )
    return status


# --- the stale DisruptionTarget condition -----------------------------------------------------


def stale_disruption_wait(pod: Object, now: datetime.datetime, timeout: float) -> float | None:
    """None when the pod has no stale DisruptionTarget condition (being deleted, finished,
    none, not True, or put there by the kubelet); else the seconds until it is due (0: now)."""
    if pod["metadata"].get("deletionTimestamp"):
        return None
    status = pod.get("status") or {}
    condition = _find_condition(status.get("conditions") or (), DISRUPTION_TARGET)
    if (
        condition is None
        or condition.get("status") != "True"
        or condition.get("reason") == TERMINATION_BY_KUBELET
        or status.get("phase") in ("Succeeded", "Failed")
    ):
        return None
    since = _time_or_zero(condition.get("lastTransitionTime"))
    return max(timeout - (now - since).total_seconds(), 0.0)


def with_disruption_target_reset(pod: Object, now: datetime.datetime) -> Object | None:
    """A copy of the pod with DisruptionTarget set to False (apipod.UpdatePodCondition:
    reason, message and probe time go; the observed generation is the pod's), or None if the
    condition is False already."""
    updated = clone(pod)
    conditions = updated.setdefault("status", {}).setdefault("conditions", [])
    replacement: Object = {"type": DISRUPTION_TARGET, "status": "False"}
    generation = pod["metadata"].get("generation", 0)
    if generation:
        replacement["observedGeneration"] = generation
    for index, condition in enumerate(conditions):
        if condition.get("type") != DISRUPTION_TARGET:
            continue
        if condition.get("status") == "False":
            replacement["lastTransitionTime"] = condition.get("lastTransitionTime")
            unchanged = not condition.get("reason") and not condition.get("message")
            if unchanged and not condition.get("lastProbeTime"):
                return None
        else:
            replacement["lastTransitionTime"] = _format_time(now)
        conditions[index] = replacement
        return updated
    replacement["lastTransitionTime"] = _format_time(now)
    conditions.append(replacement)
    return updated


# --- pods to PDBs -----------------------------------------------------------------------------


def relevant_fields(pod: Object) -> tuple[Any, ...]:
    """What of a pod any PDB's status depends on."""
    meta = pod["metadata"]
    reference = controller_of(pod) or {}
    return (
        meta.get("uid"),
        meta.get("labels") or {},
        bool(meta.get("deletionTimestamp")),
        is_pod_ready(pod),
        reference.get("uid"),
        reference.get("kind"),
        reference.get("apiVersion"),
        reference.get("name"),
    )

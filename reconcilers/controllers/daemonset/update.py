"""The RollingUpdate strategy (upstream's update.go rollingUpdate, and daemon/util's counts).

A pod is *updated* when its ``controller-revision-hash`` label is the current revision's hash
(or, for DaemonSets from before revisions, its ``pod-template-generation`` label is the
template generation annotation's). Per node there may be one old and one new pod at most; a
node with more is left to the manage loop to prune.

Without surge (``maxSurge`` 0), old pods are deleted so that at most ``maxUnavailable`` nodes
lack an available pod, and the manage loop creates their replacements; an old pod that is not
available is replaced at once. With surge, a new pod is created beside an old one on up to
``maxSurge`` nodes, and the old one is deleted once the new one is available; a node whose
old pod is unavailable gets its new pod at once. Both counts are ints or percentages of the
nodes that should run the pod (rounded up); both 0 means ``maxUnavailable`` 1.

The planning here is pure: it returns the pod names to delete and the node names to create
on; the controller carries them out (its syncNodes).
"""

from __future__ import annotations

import datetime
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from reconcilers.controllers.podutil import is_available
from reconcilers.kinds import Object

__all__ = [
    "HASH_LABEL",
    "TEMPLATE_GENERATION_ANNOTATION",
    "TEMPLATE_GENERATION_LABEL",
    "Plan",
    "allows_surge",
    "find_updated_pods_on_node",
    "is_pod_updated",
    "plan_rolling_update",
    "scaled_value",
    "surge_count",
    "template_generation",
    "unavailable_count",
    "update_limits",
]

HASH_LABEL: Final = "controller-revision-hash"
TEMPLATE_GENERATION_LABEL: Final = "pod-template-generation"
TEMPLATE_GENERATION_ANNOTATION: Final = "deprecated.daemonset.template.generation"


def template_generation(ds: Object) -> int | None:
    """The deprecated template generation annotation, if present and an integer."""
    text = ((ds.get("metadata") or {}).get("annotations") or {}).get(TEMPLATE_GENERATION_ANNOTATION)
    if text is None:
        return None
    return _atoi(text)


def is_pod_updated(pod: Object, hash_: str, generation: int | None) -> bool:
    labels = (pod.get("metadata") or {}).get("labels") or {}
    by_generation = generation is not None and labels.get(TEMPLATE_GENERATION_LABEL) == str(
        generation
    )
    by_hash = bool(hash_) and labels.get(HASH_LABEL) == hash_
    return by_hash or by_generation


def _atoi(text: str) -> int | None:
    body = text[1:] if text[:1] in ("+", "-") else text
    if not body or not body.isascii() or not body.isdigit():
        return None
    return int(text)


def scaled_value(value: int | str | None, total: int) -> int:
    """intstr.GetScaledValueFromIntOrPercent, rounding up."""
    if value is None:
        raise ValueError("nil value for IntOrString")
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"invalid value for IntOrString: {value!r}")
    if isinstance(value, int):
        return value
    if not value.endswith("%"):
        raise ValueError("invalid value for IntOrString: invalid type: string is not a percentage")
    percent = _atoi(value[:-1])
    if percent is None:
        raise ValueError(f"invalid value for IntOrString: invalid value {value!r}")
    return math.ceil(float(percent) * float(total) / 100)


def _rolling(ds: Object) -> Mapping[str, Any] | None:
    strategy = (ds.get("spec") or {}).get("updateStrategy") or {}
    if strategy.get("type", "RollingUpdate") != "RollingUpdate":
        return None
    rolling: Mapping[str, Any] | None = strategy.get("rollingUpdate")
    return rolling


def surge_count(ds: Object, number_to_schedule: int) -> int:
    """Pods allowed above one per node (0 unless RollingUpdate sets ``maxSurge``)."""
    rolling = _rolling(ds)
    if rolling is None or rolling.get("maxSurge") is None:
        return 0
    return scaled_value(rolling["maxSurge"], number_to_schedule)


def unavailable_count(ds: Object, number_to_schedule: int) -> int:
    """Nodes allowed without an available pod (0 unless RollingUpdate)."""
    rolling = _rolling(ds)
    if rolling is None:
        return 0
    return scaled_value(rolling.get("maxUnavailable"), number_to_schedule)


def allows_surge(ds: Object) -> bool:
    try:
        return surge_count(ds, 1) > 0
    except ValueError:
        return False


def update_limits(ds: Object, desired: int) -> tuple[int, int]:
    """(maxSurge, maxUnavailable) for ``desired`` nodes, as updatedDesiredNodeCounts: an
    impossible 0/0 is read as ``maxUnavailable`` 1. Raises ValueError on an invalid value."""
    try:
        unavailable = unavailable_count(ds, desired)
    except ValueError as error:
        raise ValueError(f"invalid value for MaxUnavailable: {error}") from error
    try:
        surge = surge_count(ds, desired)
    except ValueError as error:
        raise ValueError(f"invalid value for MaxSurge: {error}") from error
    if desired > 0 and unavailable == 0 and surge == 0:
        unavailable = 1
    return surge, unavailable


def find_updated_pods_on_node(
    ds: Object, pods: Sequence[Object], hash_: str
) -> tuple[Object | None, Object | None, bool]:
    """(new pod, old pod, ok) among the node's pods not being deleted; not ok when the node
    has two new or two old ones."""
    generation = template_generation(ds)
    new: Object | None = None
    old: Object | None = None
    for pod in pods:
        if pod["metadata"].get("deletionTimestamp"):
            continue
        if is_pod_updated(pod, hash_, generation):
            if new is not None:
                return None, None, False
            new = pod
        else:
            if old is not None:
                return None, None, False
            old = pod
    return new, old, True


@dataclass
class Plan:
    """What a rolling-update step does: pods to delete (names) and nodes to create a pod on."""

    delete: list[str] = field(default_factory=list)
    create: list[str] = field(default_factory=list)


def plan_rolling_update(
    ds: Object,
    node_to_pods: Mapping[str, Sequence[Object]],
    *,
    desired: int,
    hash_: str,
    now: datetime.datetime,
    should_run: Callable[[str], bool],
) -> Plan:
    """One step of the rollout. ``node_to_pods`` must hold every node that should run the
    pod (an empty list for those without one); ``should_run(node_name)`` tells whether a
    node should run it now."""
    surge, unavailable = update_limits(ds, desired)
    min_ready = int((ds.get("spec") or {}).get("minReadySeconds") or 0)

    def available(pod: Object) -> bool:
        return is_available(pod, min_ready, now)

    if surge == 0:
        return _without_surge(ds, node_to_pods, hash_, unavailable, available)
    return _with_surge(
        ds,
        node_to_pods,
        desired=desired,
        hash_=hash_,
        max_surge=surge,
        available=available,
        should_run=should_run,
    )


def _without_surge(
    ds: Object,
    node_to_pods: Mapping[str, Sequence[Object]],
    hash_: str,
    max_unavailable: int,
    available: Callable[[Object], bool],
) -> Plan:
    unavailable = 0
    replacements: list[str] = []
    candidates: list[str] = []
    for pods in node_to_pods.values():
        new, old, ok = find_updated_pods_on_node(ds, pods, hash_)
        if not ok or (old is None) == (new is None):
            # Excess pods, or nothing/both there: the manage loop acts; counted unavailable.
            unavailable += 1
        elif new is not None:
            if not available(new):
                unavailable += 1
        elif old is not None:
            if not available(old):
                replacements.append(old["metadata"]["name"])
                unavailable += 1
            elif unavailable < max_unavailable:
                candidates.append(old["metadata"]["name"])
    room = min(max(max_unavailable - unavailable, 0), len(candidates))
    return Plan(delete=replacements + candidates[:room])


def _with_surge(
    ds: Object,
    node_to_pods: Mapping[str, Sequence[Object]],
    *,
    desired: int,
    hash_: str,
    max_surge: int,
    available: Callable[[Object], bool],
    should_run: Callable[[str], bool],
) -> Plan:
    plan = Plan()
    sunset: list[str] = []  # old available pods on nodes that should no longer run one
    candidates: list[str] = []
    allowed: list[str] = []
    surging = 0
    available_count = 0
    for node_name, pods in node_to_pods.items():
        new, old, ok = find_updated_pods_on_node(ds, pods, hash_)
        if not ok:
            surging += 1
            continue
        shown = old if old is not None else new
        if shown is not None and available(shown):
            available_count += 1
        if old is None:
            continue
        if new is None:
            if not available(old):
                if not should_run(node_name):
                    plan.delete.append(old["metadata"]["name"])
                    continue
                allowed.append(node_name)
                continue
            if not should_run(node_name):
                sunset.append(old["metadata"]["name"])
                continue
            if surging >= max_surge:
                continue
            candidates.append(node_name)
            continue
        if not available(new):
            surging += 1
            continue
        plan.delete.append(old["metadata"]["name"])
    # Keep full availability when placement moves: an old pod on a node that should no longer
    # run one goes only once more pods are available than needed.
    deletable = min(available_count - desired, len(sunset))
    if deletable > 0:
        plan.delete.extend(sunset[:deletable])
    room = min(max(max_surge - surging, 0), len(candidates))
    plan.create = allowed + candidates[:room]
    return plan

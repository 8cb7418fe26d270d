"""Pod predicates and orderings shared by the workload controllers (controller_utils.go)."""

from __future__ import annotations

import datetime
import functools
from collections.abc import Mapping
from typing import Any

from reconcilers.kinds import Object

__all__ = [
    "deletion_order",
    "is_available",
    "is_pod_active",
    "is_pod_ready",
    "is_pod_terminating",
    "parse_time",
    "ready_since",
]

_PHASE_RANK = {"Pending": 0, "Unknown": 1, "Running": 2}
_DELETION_COST = "controller.kubernetes.io/pod-deletion-cost"


def parse_time(text: str | None) -> datetime.datetime | None:
    if not text:
        return None
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))


def is_pod_active(pod: Object) -> bool:
    phase = pod.get("status", {}).get("phase")
    return phase not in ("Succeeded", "Failed") and not pod["metadata"].get("deletionTimestamp")


def is_pod_terminating(pod: Object) -> bool:
    phase = pod.get("status", {}).get("phase")
    return phase not in ("Succeeded", "Failed") and bool(pod["metadata"].get("deletionTimestamp"))


def _ready_condition(pod: Object) -> Mapping[str, Any] | None:
    for condition in pod.get("status", {}).get("conditions") or ():
        if condition.get("type") == "Ready":
            return condition  # type: ignore[no-any-return]
    return None


def is_pod_ready(pod: Object) -> bool:
    condition = _ready_condition(pod)
    return condition is not None and condition.get("status") == "True"


def ready_since(pod: Object) -> datetime.datetime | None:
    condition = _ready_condition(pod)
    if condition is None or condition.get("status") != "True":
        return None
    return parse_time(condition.get("lastTransitionTime"))


def is_available(pod: Object, min_ready_seconds: int, now: datetime.datetime) -> bool:
    """Ready, and (with minReadySeconds) ready for strictly longer than that."""
    if not is_pod_ready(pod):
        return False
    if min_ready_seconds == 0:
        return True
    since = ready_since(pod)
    return since is not None and since + datetime.timedelta(seconds=min_ready_seconds) < now


def next_availability_check(
    pods: list[Object], min_ready_seconds: int, now: datetime.datetime
) -> float | None:
    """Seconds until the next ready pod becomes available, or None if none will."""
    best = None
    for pod in pods:
        since = ready_since(pod) if min_ready_seconds > 0 else None
        if since is None:
            continue
        remaining = (since + datetime.timedelta(seconds=min_ready_seconds) - now).total_seconds()
        if remaining > 0 and (best is None or remaining < best):
            best = remaining
    return best


def _deletion_cost(pod: Object) -> int:
    value = (pod["metadata"].get("annotations") or {}).get(_DELETION_COST)
    if value is None:
        return 0
    if not (value.startswith("-") or value == "0" or value[:1] in "123456789") or not value:
        return 0
    try:
        cost = int(value, 10)
    except ValueError:
        return 0
    return cost if -(2**31) <= cost < 2**31 else 0


def _max_restarts(pod: Object) -> tuple[int, int]:
    status = pod.get("status", {})
    regular = max(
        (c.get("restartCount", 0) for c in status.get("containerStatuses") or ()), default=0
    )
    sidecars = {
        c.get("name")
        for c in pod.get("spec", {}).get("initContainers") or ()
        if c.get("restartPolicy") == "Always"
    }
    sidecar = max(
        (
            c.get("restartCount", 0)
            for c in status.get("initContainerStatuses") or ()
            if c.get("name") in sidecars
        ),
        default=0,
    )
    return regular, sidecar


def _log_bucket(now: datetime.datetime, then: datetime.datetime) -> int:
    nanoseconds = int((now - then).total_seconds() * 1e9)
    return -1 if nanoseconds <= 0 else nanoseconds.bit_length() - 1  # floor(log2)


def _newer_first(
    first: datetime.datetime | None,
    second: datetime.datetime | None,
    now: datetime.datetime,
    uids: tuple[str, str],
) -> int | None:
    """-1 if the first goes first (newer, or unknown), 1 if the second, None if a tie."""
    if first == second:
        return None
    if first is None or second is None:
        return -1 if first is None else 1
    bucket_first, bucket_second = _log_bucket(now, first), _log_bucket(now, second)
    if bucket_first == bucket_second:
        return -1 if uids[0] < uids[1] else 1
    return -1 if bucket_first < bucket_second else 1


def deletion_order(
    pods: list[Object], ranks: Mapping[str, int], now: datetime.datetime
) -> list[Object]:
    """Pods in the order a scale-down removes them (ActivePodsWithRanks), first = first to go.

    Unscheduled before scheduled; Pending before Unknown before Running; not ready before
    ready; lower pod-deletion-cost first; more related pods on the same node first; more
    recently ready first (log-scale buckets); more restarts first; newer first.
    """

    def compare(a: Object, b: Object) -> int:
        node_a, node_b = (
            a.get("spec", {}).get("nodeName", ""),
            b.get("spec", {}).get("nodeName", ""),
        )
        if node_a != node_b and (not node_a or not node_b):
            return -1 if not node_a else 1
        phase_a = _PHASE_RANK.get(a.get("status", {}).get("phase", ""), 0)
        phase_b = _PHASE_RANK.get(b.get("status", {}).get("phase", ""), 0)
        if phase_a != phase_b:
            return -1 if phase_a < phase_b else 1
        ready_a, ready_b = is_pod_ready(a), is_pod_ready(b)
        if ready_a != ready_b:
            return -1 if not ready_a else 1
        cost_a, cost_b = _deletion_cost(a), _deletion_cost(b)
        if cost_a != cost_b:
            return -1 if cost_a < cost_b else 1
        uid_a, uid_b = a["metadata"].get("uid", ""), b["metadata"].get("uid", "")
        rank_a, rank_b = ranks.get(uid_a, 0), ranks.get(uid_b, 0)
        if rank_a != rank_b:
            return -1 if rank_a > rank_b else 1
        if ready_a and ready_b:
            verdict = _newer_first(ready_since(a), ready_since(b), now, (uid_a, uid_b))
            if verdict is not None:
                return verdict
        restarts_a, restarts_b = _max_restarts(a), _max_restarts(b)
        if restarts_a != restarts_b:
            return -1 if restarts_a > restarts_b else 1
        verdict = _newer_first(
            parse_time(a["metadata"].get("creationTimestamp")),
            parse_time(b["metadata"].get("creationTimestamp")),
            now,
            (uid_a, uid_b),
        )
        return verdict or 0

    return sorted(pods, key=functools.cmp_to_key(compare))

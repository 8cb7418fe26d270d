"""What every part of the Job controller asks of a Job or a pod (upstream's job/util and the
small predicates of job_controller.go), and its conditions."""

from __future__ import annotations

import datetime
import functools
from collections.abc import Mapping, Sequence
from typing import Any, Final

from reconcilers.controllers.podutil import is_pod_ready, parse_time, ready_since
from reconcilers.kinds import Object

__all__ = [
    "COMPLETION_INDEX",
    "CONTROLLER_NAME",
    "INDEX_FAILURE_COUNT",
    "INDEX_IGNORED_FAILURE_COUNT",
    "TRACKING_FINALIZER",
    "active_pods_order",
    "completions_of",
    "ensure_condition",
    "find_condition",
    "finished_condition",
    "format_time",
    "has_backoff_limit_per_index",
    "has_tracking_finalizer",
    "is_indexed",
    "is_job_finished",
    "is_pod_failed",
    "is_suspended",
    "managed_by_external_controller",
    "new_condition",
    "only_replace_failed_pods",
    "past_backoff_limit_on_failure",
]

TRACKING_FINALIZER: Final = "batch.kubernetes.io/job-tracking"
COMPLETION_INDEX: Final = "batch.kubernetes.io/job-completion-index"
INDEX_FAILURE_COUNT: Final = "batch.kubernetes.io/job-index-failure-count"
INDEX_IGNORED_FAILURE_COUNT: Final = "batch.kubernetes.io/job-index-ignored-failure-count"
CONTROLLER_NAME: Final = "kubernetes.io/job-controller"

_PHASE_RANK: Final = {"Pending": 0, "Unknown": 1, "Running": 2}


def format_time(when: datetime.datetime) -> str:
    """metav1.Time on the wire: RFC 3339 in UTC, whole seconds."""
    return when.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def spec_of(job: Mapping[str, Any]) -> Mapping[str, Any]:
    spec: Mapping[str, Any] = job.get("spec") or {}
    return spec


def is_indexed(job: Mapping[str, Any]) -> bool:
    return spec_of(job).get("completionMode") == "Indexed"


def completions_of(job: Mapping[str, Any]) -> int | None:
    value = spec_of(job).get("completions")
    return None if value is None else int(value)


def has_backoff_limit_per_index(job: Mapping[str, Any]) -> bool:
    return spec_of(job).get("backoffLimitPerIndex") is not None


def is_suspended(job: Mapping[str, Any]) -> bool:
    return bool(spec_of(job).get("suspend"))


def only_replace_failed_pods(job: Mapping[str, Any]) -> bool:
    """Replacements wait for a pod to be Failed, not merely terminating: asked for with
    ``podReplacementPolicy: Failed``, and implied by a pod failure policy."""
    spec = spec_of(job)
    return spec.get("podReplacementPolicy") == "Failed" or spec.get("podFailurePolicy") is not None


def managed_by_external_controller(job: Mapping[str, Any]) -> str | None:
    manager = spec_of(job).get("managedBy")
    return manager if manager is not None and manager != CONTROLLER_NAME else None


def has_tracking_finalizer(pod: Object) -> bool:
    return TRACKING_FINALIZER in (pod.get("metadata", {}).get("finalizers") or ())


def is_pod_failed(pod: Object, job: Mapping[str, Any]) -> bool:
    """Failed, or (unless only failed pods are replaced) being deleted before it succeeded:
    an orphan deleted by podgc never reaches a terminal phase."""
    phase = pod.get("status", {}).get("phase")
    if phase == "Failed":
        return True
    if only_replace_failed_pods(job):
        return False
    return bool(pod["metadata"].get("deletionTimestamp")) and phase != "Succeeded"


def find_condition(conditions: Sequence[Object] | None, kind: str) -> Object | None:
    for condition in conditions or ():
        if condition.get("type") == kind:
            return condition
    return None


def finished_condition(job: Mapping[str, Any]) -> str | None:
    """``Complete`` or ``Failed`` when the Job has finished (upstream's FinishedCondition)."""
    for condition in (job.get("status") or {}).get("conditions") or ():
        if condition.get("type") in ("Complete", "Failed") and condition.get("status") == "True":
            kind: str = condition["type"]
            return kind
    return None


def is_job_finished(job: Mapping[str, Any]) -> bool:
    return finished_condition(job) is not None


def new_condition(
    kind: str, status: str, reason: str, message: str, now: datetime.datetime
) -> Object:
    stamp = format_time(now)
    condition: Object = {
        "type": kind,
        "status": status,
        "lastProbeTime": stamp,
        "lastTransitionTime": stamp,
    }
    if reason:
        condition["reason"] = reason
    if message:
        condition["message"] = message
    return condition


def ensure_condition(
    conditions: list[Object],
    kind: str,
    status: str,
    *,
    reason: str,
    message: str,
    now: datetime.datetime,
) -> bool:
    """Sets the condition of ``kind`` in place; a new condition is only added when not False.
    Returns whether the list changed."""
    existing = find_condition(conditions, kind)
    if existing is not None:
        if (
            existing.get("status") != status
            or existing.get("reason", "") != reason
            or existing.get("message", "") != message
        ):
            existing.clear()
            existing.update(new_condition(kind, status, reason, message, now))
            return True
        return False
    if status != "False":
        conditions.append(new_condition(kind, status, reason, message, now))
        return True
    return False


def _restarts(pod: Object) -> int:
    return max(
        (c.get("restartCount", 0) for c in pod.get("status", {}).get("containerStatuses") or ()),
        default=0,
    )


def _later_first(first: datetime.datetime | None, second: datetime.datetime | None) -> int | None:
    """-1 when ``first`` sorts first (later, or unset), 1 when ``second`` does, None on a tie."""
    if first == second:
        return None
    if first is None or second is None:
        return -1 if first is None else 1
    return -1 if first > second else 1


def _compare_active(a: Object, b: Object) -> int:
    node_a = a.get("spec", {}).get("nodeName", "")
    node_b = b.get("spec", {}).get("nodeName", "")
    if node_a != node_b and (not node_a or not node_b):
        return -1 if not node_a else 1
    phase_a = _PHASE_RANK.get(a.get("status", {}).get("phase", ""), 0)
    phase_b = _PHASE_RANK.get(b.get("status", {}).get("phase", ""), 0)
    if phase_a != phase_b:
        return -1 if phase_a < phase_b else 1
    ready_a, ready_b = is_pod_ready(a), is_pod_ready(b)
    if ready_a != ready_b:
        return -1 if not ready_a else 1
    if ready_a and ready_b:
        verdict = _later_first(ready_since(a), ready_since(b))
        if verdict is not None:
            return verdict
    restarts_a, restarts_b = _restarts(a), _restarts(b)
    if restarts_a != restarts_b:
        return -1 if restarts_a > restarts_b else 1
    verdict = _later_first(
        parse_time(a["metadata"].get("creationTimestamp")),
        parse_time(b["metadata"].get("creationTimestamp")),
    )
    return verdict or 0


def active_pods_order(pods: Sequence[Object]) -> list[Object]:
    """Upstream's ActivePods order, first = first to remove: unscheduled, then Pending <
    Unknown < Running, not ready, ready more recently, more restarts, newer."""
    return sorted(pods, key=functools.cmp_to_key(_compare_active))


def past_backoff_limit_on_failure(job: Object, pods: Sequence[Object]) -> bool:
    """With ``restartPolicy: OnFailure``, container restarts of running pods count."""
    spec = job.get("spec") or {}
    if ((spec.get("template") or {}).get("spec") or {}).get("restartPolicy") != "OnFailure":
        return False
    restarts = 0
    for pod in pods:
        status = pod.get("status") or {}
        if status.get("phase") in ("Running", "Pending"):
            for field in ("initContainerStatuses", "containerStatuses"):
                restarts += sum(int(c.get("restartCount") or 0) for c in status.get(field) or ())
    limit = int(spec.get("backoffLimit", 6))
    return restarts > 0 if limit == 0 else restarts >= limit

"""``spec.podFailurePolicy`` (upstream's pod_failure_policy.go): which rule a failed pod
matches, by the exit code of a terminated container or by a pod condition, and what follows."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from reconcilers.controllers.job.util import is_pod_failed
from reconcilers.kinds import Object

__all__ = [
    "fail_job_message",
    "match_on_exit_codes",
    "match_on_pod_conditions",
    "match_pod_failure_policy",
]

Policy = Mapping[str, Any]


def match_pod_failure_policy(
    policy: Policy | None, pod: Object
) -> tuple[str | None, bool, str | None]:
    """For a failed pod: (the Job's failure message if a FailJob rule matched, whether the
    failure counts against the backoff limits, the matched rule's action). The first
    matching rule decides; no rule matching counts the failure."""
    if policy is None:
        return None, True, None
    status = pod.get("status") or {}
    meta = pod.get("metadata") or {}
    for index, rule in enumerate(policy.get("rules") or ()):
        action = rule.get("action")
        if rule.get("onExitCodes") is not None:
            container = match_on_exit_codes(status, rule["onExitCodes"])
            if container is None:
                continue
            if action == "FailJob":
                code = container["state"]["terminated"].get("exitCode", 0)
                return (
                    f"Container {container.get('name', '')} for pod {meta.get('namespace')}/"
                    f"{meta.get('name')} failed with exit code {code} matching FailJob rule "
                    f"at index {index}",
                    True,
                    action,
                )
        elif rule.get("onPodConditions") is not None:
            condition = match_on_pod_conditions(status, rule["onPodConditions"])
            if condition is None:
                continue
            if action == "FailJob":
                return (
                    f"Pod {meta.get('namespace')}/{meta.get('name')} has condition "
                    f"{condition.get('type')} matching FailJob rule at index {index}",
                    True,
                    action,
                )
        else:
            continue
        if action == "Ignore":
            return None, False, action
        if action in ("FailIndex", "Count"):
            return None, True, action
    return None, True, None


def match_on_exit_codes(status: Mapping[str, Any], requirement: Mapping[str, Any]) -> Object | None:
    """The first terminated container (regular ones first, then init containers) whose non-zero
    exit code the requirement matches."""
    return _matching_container(
        status.get("containerStatuses") or (), requirement
    ) or _matching_container(status.get("initContainerStatuses") or (), requirement)


def _matching_container(
    statuses: Sequence[Object], requirement: Mapping[str, Any]
) -> Object | None:
    name = requirement.get("containerName")
    values = requirement.get("values") or ()
    operator = requirement.get("operator")
    for container in statuses:
        terminated = (container.get("state") or {}).get("terminated")
        if terminated is None:
            continue
        if name is not None and name != container.get("name"):
            continue
        code = terminated.get("exitCode", 0)
        if code == 0:
            continue
        if (operator == "In" and code in values) or (operator == "NotIn" and code not in values):
            return container
    return None


def match_on_pod_conditions(
    status: Mapping[str, Any], patterns: Sequence[Mapping[str, Any]]
) -> Object | None:
    for condition in status.get("conditions") or ():
        for pattern in patterns:
            if condition.get("type") == pattern.get("type") and condition.get(
                "status"
            ) == pattern.get("status", "True"):
                found: Object = condition
                return found
    return None


def fail_job_message(job: Object, pods: Sequence[Object]) -> str | None:
    """The message of the first FailJob rule a failed pod matches."""
    policy = (job.get("spec") or {}).get("podFailurePolicy")
    if policy is None:
        return None
    for pod in pods:
        if is_pod_failed(pod, job):
            message, _, _ = match_pod_failure_policy(policy, pod)
            if message is not None:
                return message
    return None

"""``spec.successPolicy`` of Indexed Jobs (upstream's success_policy.go): a Job succeeds early
once the succeeded indexes satisfy one rule (``succeededIndexes``, ``succeededCount`` or
both)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from reconcilers.controllers.job.indexed import Intervals

__all__ = ["match_succeeded_indexes_rule", "match_success_policy"]


def match_success_policy(
    policy: Mapping[str, Any] | None, completions: int, succeeded: Intervals
) -> str | None:
    """The SuccessCriteriaMet message of the first rule met, or None."""
    if policy is None or len(succeeded) == 0:
        return None
    for index, rule in enumerate(policy.get("rules") or ()):
        count = rule.get("succeededCount")
        if rule.get("succeededIndexes") is not None:
            required = Intervals.parse(rule["succeededIndexes"], completions)
            if len(required) == 0:
                continue  # nothing parseable in range
            if match_succeeded_indexes_rule(required, succeeded, count):
                return f"Matched rules at index {index}"
        elif count is not None and succeeded.total() >= int(count):
            return f"Matched rules at index {index}"
    return None


def match_succeeded_indexes_rule(
    required: Intervals, succeeded: Intervals, succeeded_count: int | None
) -> bool:
    """All the required indexes succeeded, or (with a count) at least that many of them."""
    contains = 0
    for first, last in required.spans:
        for s_first, s_last in succeeded.spans:
            overlap = min(last, s_last) - max(first, s_first) + 1
            if overlap > 0:
                contains += overlap
    return contains == required.total() or (
        succeeded_count is not None and contains >= int(succeeded_count)
    )

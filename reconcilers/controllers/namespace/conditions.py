"""The deletion conditions of a namespace's status, as upstream's status_condition_utils.go.

One sync of the deleter collects what went wrong (discovery, group versions, content) and what
remains (instances per resource, per finalizer); :meth:`ConditionUpdater.update` then sets all
five condition types, each either its failure (status ``True``) or its "ok" variant (status
``False``), in upstream's order, and says whether anything changed (only then is the status
written). A condition's ``lastTransitionTime`` moves only when its status flips.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

__all__ = [
    "CONDITION_TYPES",
    "CONTENT_FAILURE",
    "CONTENT_REMAINING",
    "DISCOVERY_FAILURE",
    "FINALIZERS_REMAINING",
    "GROUP_VERSION_PARSING_FAILURE",
    "ConditionUpdater",
    "ContentTotals",
    "discovery_failure_message",
    "group_discovery_error",
]

DISCOVERY_FAILURE: Final = "NamespaceDeletionDiscoveryFailure"
GROUP_VERSION_PARSING_FAILURE: Final = "NamespaceDeletionGroupVersionParsingFailure"
CONTENT_FAILURE: Final = "NamespaceDeletionContentFailure"
CONTENT_REMAINING: Final = "NamespaceContentRemaining"
FINALIZERS_REMAINING: Final = "NamespaceFinalizersRemaining"

# The order the conditions are added to a status that has none of them yet.
CONDITION_TYPES: Final = (
    DISCOVERY_FAILURE,
    GROUP_VERSION_PARSING_FAILURE,
    CONTENT_FAILURE,
    CONTENT_REMAINING,
    FINALIZERS_REMAINING,
)
_OK: Final[Mapping[str, tuple[str, str]]] = {
    DISCOVERY_FAILURE: ("ResourcesDiscovered", "All resources successfully discovered"),
    GROUP_VERSION_PARSING_FAILURE: (
        "ParsedGroupVersions",
        "All legacy kube types successfully parsed",
    ),
    CONTENT_FAILURE: (
        "ContentDeleted",
        "All content successfully deleted, may be waiting on finalization",
    ),
    CONTENT_REMAINING: ("ContentRemoved", "All content successfully removed"),
    FINALIZERS_REMAINING: ("ContentHasNoFinalizers", "All content-preserving finalizers finished"),
}

Condition = dict[str, Any]


@dataclass
class ContentTotals:
    """What one sync found left: instances per (group, resource), and per finalizer."""

    remaining: dict[tuple[str, str], int] = field(default_factory=dict)
    finalizers: dict[str, int] = field(default_factory=dict)

    def add(self, group: str, resource: str, count: int, finalizers: Mapping[str, int]) -> None:
        if count <= 0:
            return
        self.remaining[group, resource] = count
        for finalizer, held in finalizers.items():
            if held:
                self.finalizers[finalizer] = self.finalizers.get(finalizer, 0) + held


def group_discovery_error(failed: Mapping[tuple[str, str], str]) -> str:
    """client-go's ErrGroupDiscoveryFailed: the group versions discovery could not describe."""
    groups = sorted(
        f"{group}/{version}: {why}" if group else f"{version}: {why}"
        for (group, version), why in failed.items()
    )
    return "unable to retrieve the complete list of server APIs: " + ", ".join(groups)


def discovery_failure_message(failed: Mapping[tuple[str, str], str]) -> str:
    """The condition's message for a partial discovery failure."""
    return (
        f"Discovery failed for some groups, {len(failed)} failing: {group_discovery_error(failed)}"
    )


class ConditionUpdater:
    """Collects one sync's failures and totals, then merges them into a status."""

    def __init__(self, now: datetime.datetime | None = None) -> None:
        self._now = _timestamp(now or datetime.datetime.now(datetime.UTC))
        self._new: dict[str, Condition] = {}
        self._content_errors: list[str] = []

    def discovery_failed(self, message: str) -> None:
        self._failure(DISCOVERY_FAILURE, "DiscoveryFailed", message)

    def group_version_failed(self, message: str) -> None:
        self._failure(GROUP_VERSION_PARSING_FAILURE, "GroupVersionParsingFailed", message)

    def content_deletion_failed(self, error: str) -> None:
        self._content_errors.append(error)

    def content_totals(self, totals: ContentTotals) -> None:
        if totals.remaining:
            listed = sorted(
                f"{resource}.{group} has {count} resource instances"
                for (group, resource), count in totals.remaining.items()
                if count
            )
            self._failure(
                CONTENT_REMAINING,
                "SomeResourcesRemain",
                "Some resources are remaining: " + ", ".join(listed),
            )
        if totals.finalizers:
            held = sorted(
                f"{finalizer} in {count} resource instances"
                for finalizer, count in totals.finalizers.items()
                if count
            )
            self._failure(
                FINALIZERS_REMAINING,
                "SomeFinalizersRemain",
                "Some content in the namespace has finalizers remaining: " + ", ".join(held),
            )

    def update(self, status: dict[str, Any]) -> bool:
        """Set every condition type in ``status`` (mutated); True if any changed."""
        if CONTENT_FAILURE not in self._new and self._content_errors:
            errors = sorted(self._content_errors)
            self._failure(
                CONTENT_FAILURE,
                "ContentDeletionFailed",
                f"Failed to delete all resource types, {len(errors)} remaining: "
                + ", ".join(errors),
            )
        conditions: list[Condition] = status.setdefault("conditions", None) or []
        status["conditions"] = conditions
        changed = False
        for kind in CONDITION_TYPES:
            wanted = self._new.get(kind) or self._ok(kind)
            old = next((c for c in conditions if c.get("type") == kind), None)
            if old is None:
                conditions.append(wanted)
                changed = True
                continue
            fields = ("status", "reason", "message")
            if any(old.get(name) != wanted[name] for name in fields):
                if old.get("status") != wanted["status"]:
                    old["lastTransitionTime"] = self._now
                for name in fields:
                    old[name] = wanted[name]
                changed = True
        return changed

    def _failure(self, kind: str, reason: str, message: str) -> None:
        self._new[kind] = self._condition(kind, "True", reason, message)

    def _ok(self, kind: str) -> Condition:
        reason, message = _OK[kind]
        return self._condition(kind, "False", reason, message)

    def _condition(self, kind: str, status: str, reason: str, message: str) -> Condition:
        return {
            "type": kind,
            "status": status,
            "lastTransitionTime": self._now,
            "reason": reason,
            "message": message,
        }


def _timestamp(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

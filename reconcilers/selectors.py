"""Label selectors (``metav1.LabelSelector``) as the apiserver and controllers read them."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["InvalidSelectorError", "Selector"]


class InvalidSelectorError(ValueError):
    pass


@dataclass(frozen=True)
class _Requirement:
    key: str
    operator: str
    values: frozenset[str]

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        if self.operator == "In":
            return present and labels[self.key] in self.values
        if self.operator == "NotIn":
            return not present or labels[self.key] not in self.values
        if self.operator == "Exists":
            return present
        return not present  # DoesNotExist


@dataclass(frozen=True)
class Selector:
    requirements: tuple[_Requirement, ...]
    everything: bool = False

    @classmethod
    def parse(cls, spec: Mapping[str, Any] | None) -> Selector:
        """A selector from its API form; ``{}`` selects everything (callers decide if allowed)."""
        if spec is None:
            raise InvalidSelectorError("selector is missing")
        requirements = [
            _Requirement(str(key), "In", frozenset([str(value)]))
            for key, value in (spec.get("matchLabels") or {}).items()
        ]
        for expression in spec.get("matchExpressions") or []:
            operator = expression.get("operator")
            values = frozenset(str(v) for v in expression.get("values") or [])
            key = expression.get("key")
            if not key:
                raise InvalidSelectorError("matchExpressions entry has no key")
            if operator in ("In", "NotIn"):
                if not values:
                    raise InvalidSelectorError(
                        f"for 'in', 'notin' operators, values set can't be empty (key {key})"
                    )
            elif operator in ("Exists", "DoesNotExist"):
                if values:
                    raise InvalidSelectorError(
                        f"values set must be empty for exists and does not exist (key {key})"
                    )
            else:
                raise InvalidSelectorError(f"{operator!r} is not a valid label selector operator")
            requirements.append(_Requirement(str(key), str(operator), values))
        return cls(tuple(requirements), everything=not requirements)

    @property
    def empty(self) -> bool:
        return self.everything

    def matches(self, labels: Mapping[str, str] | None) -> bool:
        labels = labels or {}
        return all(requirement.matches(labels) for requirement in self.requirements)

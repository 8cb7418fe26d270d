"""Status conditions in the standard ``metav1.Condition`` shape, set as apimachinery sets them.

``set_condition`` follows ``meta.SetStatusCondition``: a condition's ``lastTransitionTime``
moves only when its status changes; reason, message and ``observedGeneration`` are always the
latest. A status struct holds them as ``conditions: list[Condition] = []``.
"""

from __future__ import annotations

import datetime
import re
from typing import Annotated, Final, Literal

import msgspec

__all__ = ["Condition", "find_condition", "set_condition"]

# metav1.Condition's own validation: CamelCase reasons, a bounded message.
_REASON: Final = r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"


class Condition(msgspec.Struct, kw_only=True, rename="camel", omit_defaults=True):
    """One aspect of an object's state (``Ready``, ``Progressing``, ...)."""

    type: Annotated[str, msgspec.Meta(max_length=316)]
    status: Literal["True", "False", "Unknown"]
    reason: Annotated[str, msgspec.Meta(min_length=1, max_length=1024, pattern=_REASON)]
    message: Annotated[str, msgspec.Meta(max_length=32768)] = ""
    last_transition_time: str = ""
    observed_generation: int | None = None


def find_condition(conditions: list[Condition], type_: str) -> Condition | None:
    return next((c for c in conditions if c.type == type_), None)


def set_condition(
    conditions: list[Condition],
    type_: str,
    status: Literal["True", "False", "Unknown"],
    reason: str,
    message: str = "",
    *,
    observed_generation: int | None = None,
    now: datetime.datetime | None = None,
) -> bool:
    """Set ``type_`` in ``conditions`` (in place); whether anything changed."""
    if not re.match(_REASON, reason):
        raise ValueError(f"condition {type_}: reason {reason!r} is not CamelCase (e.g. Ready)")
    current = find_condition(conditions, type_)
    stamp = (now or datetime.datetime.now(datetime.UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")
    if current is None:
        conditions.append(
            Condition(
                type=type_,
                status=status,
                reason=reason,
                message=message,
                last_transition_time=stamp,
                observed_generation=observed_generation,
            )
        )
        return True
    changed = False
    if current.status != status:
        current.status, current.last_transition_time = status, stamp
        changed = True
    for attribute, value in (
        ("reason", reason),
        ("message", message),
        ("observed_generation", observed_generation),
    ):
        if getattr(current, attribute) != value:
            setattr(current, attribute, value)
            changed = True
    return changed

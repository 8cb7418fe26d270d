"""What to do with one object: upstream's attemptToDeleteItem decisions, as pure functions.

An object with owners is garbage when none of them is solid. It is deleted with the policy its
own finalizers ask for (orphan -> Orphan, foregroundDeletion -> Foreground, else Background),
except that one blocking a foreground-deleting owner while having dependents of its own goes in
the foreground too, so that the owner waits for the whole subtree. An object with a solid owner
keeps it and loses its references to dangling and waiting owners. References to an owner being
deleted with the ``orphan`` finalizer are dropped (the owner's process does it for the
dependents it holds; each process does it for its own, see the package docstring).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from reconcilers.controllers.garbagecollector.graph import (
    FINALIZER_DELETE_DEPENDENTS,
    FINALIZER_ORPHAN,
    has_finalizer,
)
from reconcilers.controllers.garbagecollector.owners import Classified
from reconcilers.kinds import Object

__all__ = ["Action", "Decision", "Policy", "decide", "policy_from_finalizers"]


class Policy(enum.Enum):
    """metav1.DeletionPropagation."""

    ORPHAN = "Orphan"
    FOREGROUND = "Foreground"
    BACKGROUND = "Background"


class Action(enum.Enum):
    NOTHING = "nothing"
    REMOVE_REFERENCES = "remove references"
    DELETE = "delete"


@dataclass(frozen=True)
class Decision:
    action: Action
    # REMOVE_REFERENCES: the uids of the references to remove.
    uids: tuple[str, ...] = ()
    # DELETE: the propagation policy, and whether to make its own references non-blocking
    # first (a dependent of it is itself deleting its dependents: a possible cycle).
    policy: Policy | None = None
    unblock_first: bool = False


NOTHING = Decision(Action.NOTHING)


def policy_from_finalizers(obj: Object) -> Policy:
    """An existing orphan or foreground finalizer on the object is honoured."""
    if has_finalizer(obj, FINALIZER_ORPHAN):
        return Policy.ORPHAN
    if has_finalizer(obj, FINALIZER_DELETE_DEPENDENTS):
        return Policy.FOREGROUND
    return Policy.BACKGROUND


def _uids(*groups: tuple[dict[str, object], ...]) -> tuple[str, ...]:
    return tuple(str(ref.get("uid", "")) for group in groups for ref in group)


def decide(
    item: Object,
    classified: Classified,
    *,
    has_dependents: bool,
    a_dependent_deletes_dependents: bool,
) -> Decision:
    """The action on ``item`` (its live state) given its classified references."""
    if classified.orphaning:
        # Let go of owners that orphan their dependents; what remains is decided on the
        # next look, once the patch is seen.
        return Decision(Action.REMOVE_REFERENCES, _uids(classified.orphaning))
    if classified.solid:
        if not classified.dangling and not classified.waiting:
            return NOTHING
        # Waiting references must go too, or those owners keep their finalizer for ever.
        return Decision(Action.REMOVE_REFERENCES, _uids(classified.dangling, classified.waiting))
    if not classified.dangling and not classified.waiting:
        return NOTHING  # no references at all
    if classified.waiting and has_dependents:
        return Decision(
            Action.DELETE,
            policy=Policy.FOREGROUND,
            unblock_first=a_dependent_deletes_dependents,
        )
    return Decision(Action.DELETE, policy=policy_from_finalizers(item))

"""The dependency graph: upstream's GraphBuilder, over the cache's uid and owner indexes.

Upstream keeps a graph of nodes (by uid) with their owners and dependents, fed by informers,
and puts items on ``attemptToDelete``/``attemptToOrphan`` when a change matters to collection.
Here the cache is the graph (``ObjectCache.by_uid``, ``ObjectCache.dependents_of``) and
:func:`requests_for` is the part of ``processGraphChanges`` that decides which objects to look
at. It runs for every change the process sees, so it must stay cheap: a change that touches
neither ownerReferences, nor deletionTimestamp/finalizers, makes no request at all.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, Final

from bus.subjects import ObjectRef, ResourceType
from reconcilers.cache import ObjectCache
from reconcilers.controller import Request
from reconcilers.kinds import Object

__all__ = [
    "FINALIZER_DELETE_DEPENDENTS",
    "FINALIZER_ORPHAN",
    "blocking_dependents",
    "deleting_dependents",
    "has_finalizer",
    "references_diff",
    "requests_for",
]

# metav1.FinalizerOrphanDependents and metav1.FinalizerDeleteDependents.
FINALIZER_ORPHAN: Final = "orphan"
FINALIZER_DELETE_DEPENDENTS: Final = "foregroundDeletion"

OwnerReference = dict[str, Any]


def has_finalizer(obj: Object, finalizer: str) -> bool:
    return finalizer in (obj.get("metadata", {}).get("finalizers") or ())


def being_deleted(obj: Object) -> bool:
    return bool(obj.get("metadata", {}).get("deletionTimestamp"))


def deleting_dependents(obj: Object) -> bool:
    """Deleted in the foreground: waits for its blocking dependents to go."""
    return being_deleted(obj) and has_finalizer(obj, FINALIZER_DELETE_DEPENDENTS)


def orphaning(obj: Object) -> bool:
    return being_deleted(obj) and has_finalizer(obj, FINALIZER_ORPHAN)


def references(obj: Object | None) -> list[OwnerReference]:
    if obj is None:
        return []
    return list(obj.get("metadata", {}).get("ownerReferences") or ())


def blocks(reference: OwnerReference) -> bool:
    return reference.get("blockOwnerDeletion") is True


def references_diff(
    old: list[OwnerReference], new: list[OwnerReference]
) -> tuple[list[OwnerReference], list[OwnerReference], list[tuple[OwnerReference, OwnerReference]]]:
    """Added, removed, and changed (old, new) references, matched by uid."""
    before = {ref.get("uid", ""): ref for ref in old}
    added, changed = [], []
    for ref in new:
        previous = before.pop(ref.get("uid", ""), None)
        if previous is None:
            added.append(ref)
        elif previous != ref:
            changed.append((previous, ref))
    return added, list(before.values()), changed


def starts(old: Object | None, new: Object, finalizer: str) -> bool:
    """upstream's deletionStartsWithFinalizer: being deleted with ``finalizer`` now, not before."""
    if not being_deleted(new) or not has_finalizer(new, finalizer):
        return False
    return old is None or not being_deleted(old) or not has_finalizer(old, finalizer)


def matches_coordinates(reference: OwnerReference, ref: ObjectRef, owner: Object) -> bool:
    """The reference names the object it points at by uid (apiVersion's group, kind, name);
    the version may differ, as the same object is served at several."""
    group = reference.get("apiVersion", "").rpartition("/")[0]
    return (
        group == ref.resource.group
        and reference.get("kind") == owner.get("kind")
        and reference.get("name") == ref.name
    )


def blocking_dependents(cache: ObjectCache, owner_uid: str) -> Iterator[tuple[ObjectRef, Object]]:
    """Cached dependents whose reference to ``owner_uid`` has ``blockOwnerDeletion: true``."""
    for ref, dependent in cache.dependents_of(owner_uid):
        if any(r.get("uid") == owner_uid and blocks(r) for r in references(dependent)):
            yield ref, dependent


def _request(ref: ObjectRef) -> Request:
    return Request(ref.namespace, ref.name, ref.resource)


def _suspicious(cache: ObjectCache, reference: OwnerReference, namespace: str | None) -> bool:
    """Worth a look: an owner the cache does not hold (upstream's virtual node), one whose
    coordinates or namespace disagree, or one being deleted."""
    found = cache.by_uid(reference.get("uid", ""))
    if found is None:
        return True
    ref, owner = found
    if ref.namespace is not None and ref.namespace != namespace:
        return True
    return not matches_coordinates(reference, ref, owner) or being_deleted(owner)


def _deleting_owner(cache: ObjectCache, reference: OwnerReference) -> ObjectRef | None:
    found = cache.by_uid(reference.get("uid", ""))
    if found is not None and deleting_dependents(found[1]):
        return found[0]
    return None


def requests_for(
    cache: ObjectCache, resource: ResourceType, obj: Object | None, old: Object | None
) -> Iterable[Request]:
    """The objects a change of ``obj`` (None: deleted) makes worth a garbage-collection look."""
    if obj is None:
        if old is None:
            return ()
        return _deleted(cache, old)
    meta = obj.get("metadata", {})
    old_meta = old.get("metadata", {}) if old is not None else {}
    new_refs = meta.get("ownerReferences")
    old_refs = old_meta.get("ownerReferences")
    deleting = meta.get("deletionTimestamp")
    if old is not None and new_refs == old_refs and not deleting:
        return ()  # the hot path: a status or spec update
    ref = ObjectRef(resource, meta.get("namespace"), meta.get("name", ""))
    requests: list[Request] = []
    if deleting and (
        starts(old, obj, FINALIZER_ORPHAN) or starts(old, obj, FINALIZER_DELETE_DEPENDENTS)
    ):
        # An owner starts orphaning or deleting its dependents: it, and each of its dependents
        # this process holds (a cluster-scoped owner's are spread over every process).
        requests.append(_request(ref))
        requests.extend(_request(dependent) for dependent, _ in cache.dependents_of(meta["uid"]))
    if old is None and (uid := meta.get("uid")):
        # An owner appears: dependents that named it wrongly are checked (upstream's virtual
        # node replaced by the observed one).
        for dependent, obj_ in cache.dependents_of(uid):
            if any(
                r.get("uid") == uid
                and (
                    (ref.namespace is not None and dependent.namespace != ref.namespace)
                    or not matches_coordinates(r, ref, obj)
                )
                for r in references(obj_)
            ):
                requests.append(_request(dependent))
    if new_refs != old_refs:
        added, removed, changed = references_diff(references(old), references(obj))
        if any(_suspicious(cache, r, ref.namespace) for r in added) or any(
            _suspicious(cache, new, ref.namespace) for _old, new in changed
        ):
            requests.append(_request(ref))
        # A blocking reference removed or unblocked may let a foreground deletion finish.
        unblocked = [r for r in removed if blocks(r)] + [
            new for previous, new in changed if blocks(previous) and not blocks(new)
        ]
        for reference in unblocked:
            owner = _deleting_owner(cache, reference)
            if owner is not None:
                requests.append(_request(owner))
    return requests


def _deleted(cache: ObjectCache, old: Object) -> list[Request]:
    """An object is gone: its dependents may be garbage now, and a foreground-deleting owner
    may be waiting for it."""
    meta = old.get("metadata", {})
    requests = [_request(dependent) for dependent, _ in cache.dependents_of(meta.get("uid", ""))]
    for reference in references(old):
        owner = _deleting_owner(cache, reference)
        if owner is not None:
            requests.append(_request(owner))
    return requests

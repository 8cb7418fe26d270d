"""Owner resolution: what an ownerReference points at, from the cache, else the apiserver.

Upstream's ``isDangling`` and ``classifyReferences``. An owner is found by apiVersion, kind and
name in the dependent's namespace (or cluster-wide for a cluster-scoped kind) and is the owner
only if its uid is the reference's: absent, or another uid (a recreated owner of the same name),
is dangling. A cached owner with the right uid is believed; anything else is read live, since
the cache may not have seen an owner created a moment ago. Owners found absent are remembered
(``absentOwnerCache``, 500 entries): uids are never reused, so the answer cannot go stale, and
the pods of a deleted ReplicaSet cost one GET of it, not one each.
"""

from __future__ import annotations

import enum
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Final

from kubus.kube import KubeClient, NotFoundError
from reconcilers.cache import ObjectCache
from reconcilers.controllers.garbagecollector.graph import (
    FINALIZER_DELETE_DEPENDENTS,
    FINALIZER_ORPHAN,
    has_finalizer,
)
from reconcilers.controllers.garbagecollector.restmapper import RestMapper
from reconcilers.kinds import Object

__all__ = [
    "AbsentOwners",
    "Classified",
    "NamespacedOwnerOfClusterScopedError",
    "OwnerResolver",
    "OwnerState",
    "state_of_owner",
]

ABSENT_OWNER_CACHE_SIZE: Final = 500

OwnerReference = dict[str, Any]


class OwnerState(enum.Enum):
    SOLID = "solid"  # exists, not waiting for its dependents
    DANGLING = "dangling"  # absent, or another uid
    WAITING = "waitingForDependentsDeletion"  # being deleted in the foreground
    ORPHANING = "orphaning"  # being deleted with the orphan finalizer: let go of it


class NamespacedOwnerOfClusterScopedError(Exception):
    """A cluster-scoped object refers to a namespaced owner: never valid, not retried."""


@dataclass(frozen=True)
class Classified:
    """A dependent's references by what their owners turned out to be."""

    solid: tuple[OwnerReference, ...] = ()
    dangling: tuple[OwnerReference, ...] = ()
    waiting: tuple[OwnerReference, ...] = ()
    orphaning: tuple[OwnerReference, ...] = ()

    @classmethod
    def of(cls, states: Iterable[tuple[OwnerReference, OwnerState]]) -> Classified:
        groups: dict[OwnerState, list[OwnerReference]] = {state: [] for state in OwnerState}
        for reference, state in states:
            groups[state].append(reference)
        return cls(
            tuple(groups[OwnerState.SOLID]),
            tuple(groups[OwnerState.DANGLING]),
            tuple(groups[OwnerState.WAITING]),
            tuple(groups[OwnerState.ORPHANING]),
        )


def state_of_owner(owner: Object) -> OwnerState:
    """A present owner's state. The orphan finalizer wins, as upstream handles it first."""
    meta = owner.get("metadata", {})
    if not meta.get("deletionTimestamp"):
        return OwnerState.SOLID
    if has_finalizer(owner, FINALIZER_ORPHAN):
        return OwnerState.ORPHANING
    if has_finalizer(owner, FINALIZER_DELETE_DEPENDENTS):
        return OwnerState.WAITING
    return OwnerState.SOLID


AbsentKey = tuple[str, str, str, str, str]  # apiVersion, kind, name, uid, namespace ("" = none)


@dataclass
class AbsentOwners:
    """Owners the apiserver said are gone (upstream's ReferenceCache): a bounded LRU."""

    size: int = ABSENT_OWNER_CACHE_SIZE
    _keys: OrderedDict[AbsentKey, None] = field(default_factory=OrderedDict)

    def add(self, key: AbsentKey) -> None:
        self._keys[key] = None
        self._keys.move_to_end(key)
        while len(self._keys) > self.size:
            self._keys.popitem(last=False)

    def has(self, key: AbsentKey) -> bool:
        if key in self._keys:
            self._keys.move_to_end(key)
            return True
        return False


def absent_key(reference: OwnerReference, namespace: str | None) -> AbsentKey:
    return (
        reference.get("apiVersion", ""),
        reference.get("kind", ""),
        reference.get("name", ""),
        reference.get("uid", ""),
        namespace or "",
    )


class OwnerResolver:
    def __init__(self, cache: ObjectCache, kube: KubeClient, mapper: RestMapper) -> None:
        self._cache = cache
        self._kube = kube
        self._mapper = mapper
        self.absent = AbsentOwners()

    async def classify(
        self, references: Iterable[OwnerReference], namespace: str | None
    ) -> Classified:
        """The references of a dependent in ``namespace`` (None: cluster-scoped), classified.

        Raises :class:`NamespacedOwnerOfClusterScopedError`, a RestMappingError for a kind
        discovery does not know, or the apiserver's error."""
        states = [(ref, await self.state(ref, namespace)) for ref in references]
        return Classified.of(states)

    async def state(self, reference: OwnerReference, namespace: str | None) -> OwnerState:
        if self.absent.has(absent_key(reference, None)) or self.absent.has(
            absent_key(reference, namespace)
        ):
            return OwnerState.DANGLING
        mapping = await self._mapper.mapping(
            reference.get("apiVersion", ""), reference.get("kind", "")
        )
        if mapping.namespaced and namespace is None:
            raise NamespacedOwnerOfClusterScopedError(
                f"cluster-scoped objects cannot refer to namespaced owners "
                f"({reference.get('kind')} {reference.get('name')})"
            )
        owner_namespace = namespace if mapping.namespaced else None
        key = absent_key(reference, owner_namespace)
        uid = reference.get("uid", "")
        cached = self._cache.get(mapping.cached, owner_namespace, reference.get("name", ""))
        if cached is not None and cached.get("metadata", {}).get("uid") == uid:
            return state_of_owner(cached)
        try:
            live = await self._kube.get_metadata(
                mapping.api, owner_namespace, reference.get("name", "")
            )
        except NotFoundError:
            self.absent.add(key)
            return OwnerState.DANGLING
        if live.get("metadata", {}).get("uid") != uid:
            self.absent.add(key)
            return OwnerState.DANGLING
        return state_of_owner(live)

    def observed_elsewhere(self, reference: OwnerReference, namespace: str | None) -> Object | None:
        """The owner, if this process caches it in another namespace than its dependent's:
        the reference can never resolve (upstream's ``OwnerRefInvalidNamespace``)."""
        found = self._cache.by_uid(reference.get("uid", ""))
        if found is None:
            return None
        ref, owner = found
        if ref.namespace is not None and ref.namespace != namespace:
            return owner
        return None

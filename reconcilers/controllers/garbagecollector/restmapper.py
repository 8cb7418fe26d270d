"""apiVersion + kind -> resource, from discovery, refreshed as kube-controller-manager's GC does.

kcm's garbage collector re-reads discovery every 30 s (``GarbageCollector.Sync``) so that kinds
added later (CRDs) can be resolved and their objects collected; a kind it cannot map is an
error the item is retried on. The refresh here runs on the reconcile path, at most once per
period (and at once, within a floor, when a kind is unknown), so no task has to own it.

Deletable resources are upstream's ``GetDeletableResources``: the preferred version of every
resource serving ``delete``, ``list`` and ``watch``, minus the ignored ones (events of the core
group and of ``events.k8s.io``, ``DefaultIgnoredResources``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Final

from bus.subjects import ResourceType
from kubus.kube import ApiResource, Discovery, KubeClient, discover_all

__all__ = [
    "IGNORED_RESOURCES",
    "RESYNC_PERIOD",
    "KindMapping",
    "RestMapper",
    "RestMappingError",
    "UnknownResourceError",
    "deletable",
    "split_api_version",
]

log = logging.getLogger(__name__)

# kcm's --garbage-collector resync: GarbageCollector.Sync runs every 30 s.
RESYNC_PERIOD: Final = 30.0
# A kind nobody serves yet (a CRD being created) triggers a refresh, but not more often.
MISS_REFRESH_FLOOR: Final = 2.0
# garbagecollector.DefaultIgnoredResources: (group, resource).
IGNORED_RESOURCES: Final = frozenset({("", "events"), ("events.k8s.io", "events")})
_VERBS: Final = frozenset({"delete", "list", "watch"})


class RestMappingError(Exception):
    """An ownerReference's apiVersion/kind that discovery does not know (yet): retried."""

    def __init__(self, api_version: str, kind: str) -> None:
        super().__init__(f"unable to get REST mapping for {kind}/{api_version}.")
        self.api_version = api_version
        self.kind = kind


class UnknownResourceError(Exception):
    """A resource on the bus that discovery does not serve (yet): retried."""

    def __init__(self, resource: ResourceType) -> None:
        super().__init__(f"{resource}: not served by the apiserver's discovery (yet)")


@dataclass(frozen=True)
class KindMapping:
    """One kind's resource: ``api`` at the version asked for, ``cached`` as the bus keys it."""

    api: ApiResource
    cached: ResourceType

    @property
    def namespaced(self) -> bool:
        return self.api.namespaced


def split_api_version(api_version: str) -> tuple[str, str]:
    """``apps/v1`` -> (``apps``, ``v1``); ``v1`` -> (``""``, ``v1``)."""
    group, _, version = api_version.rpartition("/")
    return group, version


def api_label(api: ApiResource) -> str:
    return f"{api.api_version}/{api.name}"


def is_deletable(api: ApiResource) -> bool:
    return api.verbs >= _VERBS and (api.group, api.name) not in IGNORED_RESOURCES


def deletable(discovery: Discovery) -> tuple[ApiResource, ...]:
    """The resources the garbage collector works with (preferred versions)."""
    return tuple(api for api in discovery.preferred if is_deletable(api))


class RestMapper:
    def __init__(self, kube: KubeClient, *, period: float = RESYNC_PERIOD) -> None:
        self._kube = kube
        self._period = period
        self._lock = asyncio.Lock()
        self._refreshed = -float("inf")
        self._kinds: dict[tuple[str, str, str], ApiResource] = {}  # group, version, kind
        self._preferred: dict[tuple[str, str], ApiResource] = {}  # group, resource
        self._deletable: tuple[ApiResource, ...] = ()
        # Every served version of a deletable resource, as the bus may carry any of them.
        self._deletable_versions: dict[tuple[str, str, str], ApiResource] = {}
        self._served: frozenset[tuple[str, str, str]] = frozenset()  # group, version, resource

    @property
    def deletable(self) -> tuple[ApiResource, ...]:
        return self._deletable

    def load(self, discovery: Discovery) -> None:
        """Take what discovery says; group versions it could not read keep what they had."""
        kinds = {
            key: api
            for key, api in self._kinds.items()
            if (api.group, api.version) in discovery.failed
        }
        for api in discovery.resources.values():
            kinds[(api.group, api.version, api.kind)] = api
        self._kinds = kinds
        self._preferred = {(api.group, api.name): api for api in discovery.preferred}
        self._deletable = deletable(discovery)
        self._deletable_versions = {
            key: api for key, api in discovery.resources.items() if is_deletable(api)
        }
        # What discovery serves, with what failed group versions served before.
        self._served = frozenset((api.group, api.version, api.name) for api in kinds.values())

    async def refresh(self, *, within: float | None = None) -> None:
        """Re-read discovery if the last read is older than ``within`` (the period)."""
        age = self._period if within is None else within
        async with self._lock:
            if time.monotonic() - self._refreshed < age:
                return
            discovery = await discover_all(self._kube)
            self._refreshed = time.monotonic()
            first = not self._kinds
            before = {api_label(api) for api in self._deletable}
            self.load(discovery)
            after = {api_label(api) for api in self._deletable}
            if first:
                log.info("garbage collector: %d deletable resources", len(after))
            elif before != after:
                log.info(
                    "garbage collector: deletable resources changed: added %s, removed %s",
                    sorted(after - before),
                    sorted(before - after),
                )

    def find(self, api_version: str, kind: str) -> KindMapping | None:
        group, version = split_api_version(api_version)
        api = self._kinds.get((group, version, kind))
        if api is None:
            return None
        preferred = self._preferred.get((group, api.name), api)
        return KindMapping(api, ResourceType(group, preferred.version, api.name))

    async def mapping(self, api_version: str, kind: str) -> KindMapping:
        """The resource of ``kind`` at ``api_version``; unknown ones refresh discovery once."""
        found = self.find(api_version, kind)
        if found is None:
            await self.refresh(within=MISS_REFRESH_FLOOR)
            found = self.find(api_version, kind)
        if found is None:
            raise RestMappingError(api_version, kind)
        return found

    def deletable_api(self, resource: ResourceType) -> ApiResource | None:
        """The resource behind a bus resource type, if the garbage collector works with it."""
        return self._deletable_versions.get((resource.group, resource.version, resource.resource))

    async def deletable_or_unknown(self, resource: ResourceType) -> ApiResource | None:
        """As :meth:`deletable_api`, for a resource the bus carries: one discovery has not
        shown yet (a CRD just created, the watcher quicker than the last refresh) refreshes it,
        and is an error to retry on if still unknown, never a silent skip."""
        key = (resource.group, resource.version, resource.resource)
        if key not in self._served:
            await self.refresh(within=MISS_REFRESH_FLOOR)
            if key not in self._served:
                raise UnknownResourceError(resource)
        return self._deletable_versions.get(key)

"""The binder's view of claims, volumes and classes: the cache, overlaid with its own writes.

Binding is several writes in a row (the volume, its status, the claim, its status), and the
next sync of either object often comes before the cache has caught up with them. Upstream keeps
its own copy of every object it wrote (``storeObjectUpdate``) and trusts whichever of that and
the informer's is newer by resourceVersion; so does this. A written copy is dropped as soon as
the cache holds that version or a newer one, or the object is gone from the cache.
"""

from __future__ import annotations

from collections.abc import Iterator

from bus.envelope import resource_version_number
from bus.subjects import ResourceType
from kubus.kube import ApiResource
from reconcilers.cache import ObjectCache
from reconcilers.kinds import Object

__all__ = ["Store"]

_Key = tuple[ResourceType, str | None, str]


class Store:
    def __init__(self, cache: ObjectCache, apis: dict[ResourceType, ApiResource]) -> None:
        self._cache = cache
        self._apis = apis
        self._written: dict[_Key, Object] = {}

    def api(self, resource: ResourceType) -> ApiResource:
        return self._apis[resource]

    def remember(self, resource: ResourceType, obj: Object) -> None:
        meta = obj["metadata"]
        self._written[(resource, meta.get("namespace"), meta["name"])] = obj

    def get(self, resource: ResourceType, namespace: str | None, name: str) -> Object | None:
        cached = self._cache.get(resource, namespace, name)
        key = (resource, namespace, name)
        written = self._written.get(key)
        if written is None:
            return cached
        if cached is None or _version(cached) >= _version(written):
            del self._written[key]  # deleted since, or the cache caught up
            return cached
        return written

    def all(self, resource: ResourceType) -> Iterator[Object]:
        """The cluster-scoped objects of ``resource`` (volumes, classes), newest copies."""
        for obj in self._cache.in_namespace(resource, None):
            newest = self.get(resource, None, obj["metadata"]["name"])
            if newest is not None:
                yield newest


def _version(obj: Object) -> int:
    return resource_version_number(obj["metadata"].get("resourceVersion", "0"))

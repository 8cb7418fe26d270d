"""Do not sync a StatefulSet on a cache older than its own last writes.

kcm v1.36 (gate ``StaleControllerConsistencyStatefulSet``, on by default) records the
resourceVersion of every pod, claim and status write a StatefulSet makes and refuses to sync
it until the informers have listed past those versions. kubus's cache is fed per object, not
per resource, so the record here is per object: a sync waits until every object the last sync
wrote is cached at (at least) the version the apiserver answered, or is cached as replaced or
gone; a delete waits until the pod is cached as terminating or gone. Records expire after
``WRITE_TIMEOUT`` (30 s), so an object created and deleted before the bus reported it (the
cache cannot tell that from lag) delays the set's next sync, never wedges it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from bus.envelope import resource_version_number
from bus.subjects import ResourceType
from reconcilers.cache import ObjectCache
from reconcilers.kinds import Object

__all__ = ["WRITE_TIMEOUT", "WriteTracker"]

WRITE_TIMEOUT: Final = 30.0

_GONE: Final = -1  # a delete: satisfied once the object is terminating or gone


@dataclass
class _Write:
    resource: ResourceType
    namespace: str | None
    name: str
    uid: str
    version: int


@dataclass
class _Record:
    owner_uid: str
    started: float
    writes: list[_Write] = field(default_factory=list)


class WriteTracker:
    """Per StatefulSet key: the writes its cache must show before the next sync."""

    def __init__(self, cache: ObjectCache, timeout: float = WRITE_TIMEOUT) -> None:
        self._cache = cache
        self._timeout = timeout
        self._records: dict[str, _Record] = {}

    def _record(self, key: str, owner_uid: str) -> _Record:
        record = self._records.get(key)
        if record is None or record.owner_uid != owner_uid:
            record = _Record(owner_uid, time.monotonic())
            self._records[key] = record
        return record

    def wrote(self, key: str, owner_uid: str, resource: ResourceType, obj: Object) -> None:
        """``obj``: the apiserver's answer to a create or update."""
        version = resource_version_number(str(obj["metadata"].get("resourceVersion") or "0"))
        self._record(key, owner_uid).writes.append(_write_of(resource, obj, version))

    def deleted(self, key: str, owner_uid: str, resource: ResourceType, obj: Object) -> None:
        self._record(key, owner_uid).writes.append(_write_of(resource, obj, _GONE))

    def _seen(self, write: _Write) -> bool:
        cached = self._cache.get(write.resource, write.namespace, write.name)
        if cached is None:
            # Gone, or not seen yet: a create that was deleted before the bus reported it is
            # indistinguishable from a lagging cache, and waits for the record to expire.
            return write.version == _GONE
        meta = cached.get("metadata", {})
        if write.uid and meta.get("uid") != write.uid:
            return True  # replaced since: the write is history
        if write.version == _GONE:
            return bool(meta.get("deletionTimestamp"))
        return resource_version_number(str(meta.get("resourceVersion") or "0")) >= write.version

    def pending(self, key: str) -> str | None:
        """None when the cache shows every recorded write (the record is dropped), else the
        first object still behind."""
        record = self._records.get(key)
        if record is None:
            return None
        if time.monotonic() - record.started > self._timeout:
            del self._records[key]
            return None
        record.writes = [w for w in record.writes if not self._seen(w)]
        if not record.writes:
            del self._records[key]
            return None
        first = record.writes[0]
        return f"{first.resource.resource} {first.namespace}/{first.name}"

    def forget(self, key: str) -> None:
        self._records.pop(key, None)

    def forget_where(self, matches: Callable[[str], bool]) -> None:
        for key in [key for key in self._records if matches(key)]:
            del self._records[key]


def _write_of(resource: ResourceType, obj: Object, version: int) -> _Write:
    meta = obj.get("metadata", {})
    name, uid = meta.get("name", ""), meta.get("uid", "")
    return _Write(resource, meta.get("namespace"), name, uid, version)

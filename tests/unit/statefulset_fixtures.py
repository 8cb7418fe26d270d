"""Fakes shared by the ControllerRevision history and StatefulSet unit tests: a cache built
from plain objects and an in-memory apiserver that records every write."""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import msgspec

from bus.envelope import Envelope, EventType
from bus.subjects import ObjectRef, ResourceType
from kubus.kube import AlreadyExistsError, ApiResource, ConflictError, NotFoundError
from reconcilers.cache import ObjectCache
from reconcilers.kinds import Object, clone

POD_API = ApiResource("", "v1", "pods", "Pod", True, frozenset())
PVC_API = ApiResource(
    "", "v1", "persistentvolumeclaims", "PersistentVolumeClaim", True, frozenset()
)
STS_API = ApiResource("apps", "v1", "statefulsets", "StatefulSet", True, frozenset())
REVISION_API = ApiResource(
    "apps", "v1", "controllerrevisions", "ControllerRevision", True, frozenset()
)


def cache_of(*objects: tuple[ResourceType, Object]) -> ObjectCache:
    cache = ObjectCache()
    for version, (resource, obj) in enumerate(objects, start=1):
        put(cache, resource, obj, version)
    return cache


def put(cache: ObjectCache, resource: ResourceType, obj: Object, version: int) -> None:
    meta = obj["metadata"]
    cache.apply(
        0,
        ObjectRef(resource, meta.get("namespace"), meta["name"]),
        Envelope(
            subject="kubus.obj.0",
            sequence=version,
            event=EventType.ADDED,
            resource_version=str(meta.get("resourceVersion") or version),
            uid=meta.get("uid", ""),
            payload=msgspec.json.encode(obj),
        ),
    )


@dataclass
class Call:
    verb: str
    resource: str
    namespace: str | None
    name: str
    body: Any = None
    patch_type: str = ""


@dataclass
class FakeKube:
    """Objects by (resource, namespace, name); ``refuse[(verb, name)]`` answers with an error
    (once per entry if ``once``)."""

    objects: dict[tuple[str, str | None, str], Object] = field(default_factory=dict)
    refuse: dict[tuple[str, str], Exception] = field(default_factory=dict)
    calls: list[Call] = field(default_factory=list)
    once: bool = False
    _versions: itertools.count[int] = field(default_factory=lambda: itertools.count(100))

    def writes(self, verb: str | None = None) -> list[Call]:
        return [c for c in self.calls if c.verb != "get" and (verb is None or c.verb == verb)]

    def _refused(self, verb: str, name: str) -> None:
        error = self.refuse.get((verb, name))
        if error is not None:
            if self.once:
                del self.refuse[(verb, name)]
            raise error

    def _stamp(self, obj: Object) -> Object:
        obj["metadata"]["resourceVersion"] = str(next(self._versions))
        return obj

    async def get(self, resource: ApiResource, namespace: str | None, name: str) -> Object:
        self.calls.append(Call("get", resource.name, namespace, name))
        self._refused("get", name)
        found = self.objects.get((resource.name, namespace, name))
        if found is None:
            raise NotFoundError(404, "NotFound", f'{resource.name} "{name}" not found')
        return clone(found)

    async def create(
        self, resource: ApiResource, namespace: str | None, body: Mapping[str, Any]
    ) -> Object:
        obj = clone(dict(body))
        name = obj["metadata"]["name"]
        self.calls.append(Call("create", resource.name, namespace, name, clone(obj)))
        self._refused("create", name)
        key = (resource.name, namespace, name)
        if key in self.objects:
            raise AlreadyExistsError(409, "AlreadyExists", f'{resource.name} "{name}" exists')
        obj["metadata"].setdefault("uid", f"uid-{name}")
        obj["metadata"]["namespace"] = namespace
        if resource.name == "pods":
            obj["status"] = {"phase": "Pending"}  # as the apiserver's pod strategy sets it
        self.objects[key] = self._stamp(obj)
        return clone(obj)

    async def replace(
        self,
        resource: ApiResource,
        namespace: str | None,
        name: str,
        body: Mapping[str, Any],
        *,
        subresource: str | None = None,
    ) -> Object:
        verb = f"replace/{subresource}" if subresource else "replace"
        self.calls.append(Call(verb, resource.name, namespace, name, clone(dict(body))))
        self._refused(verb, name)
        key = (resource.name, namespace, name)
        current = self.objects.get(key)
        if current is None:
            raise NotFoundError(404, "NotFound", f'{resource.name} "{name}" not found')
        sent = body.get("metadata", {}).get("resourceVersion")
        if sent and sent != current["metadata"].get("resourceVersion"):
            raise ConflictError(409, "Conflict", "the object has been modified")
        obj = clone(dict(body))
        self.objects[key] = self._stamp(obj)
        return clone(obj)

    async def patch(
        self,
        resource: ApiResource,
        namespace: str | None,
        name: str,
        patch: Mapping[str, Any] | list[Any],
        *,
        patch_type: str = "merge",
        subresource: str | None = None,
    ) -> Object:
        self.calls.append(Call("patch", resource.name, namespace, name, clone(patch), patch_type))
        self._refused("patch", name)
        found = self.objects.get((resource.name, namespace, name))
        if found is None:
            raise NotFoundError(404, "NotFound", f'{resource.name} "{name}" not found')
        return clone(found)

    async def delete(self, resource: ApiResource, namespace: str | None, name: str) -> Object:
        self.calls.append(Call("delete", resource.name, namespace, name))
        self._refused("delete", name)
        found = self.objects.pop((resource.name, namespace, name), None)
        if found is None:
            raise NotFoundError(404, "NotFound", f'{resource.name} "{name}" not found')
        return found

"""The finder of last resort: any controller's scale through its ``/scale`` subresource.

Upstream resolves the owner's kind with a RESTMapper, reads the scale with the scale client
and, when the read is a 404, asks discovery whether the resource has a scale subresource at
all (an error then) or the object is just gone (no controller found). Here one discovery
document per group version does both (``/apis/<group>/<version>`` lists the resources and
their subresources); it is kept for 30 s, and a kind it lacks reads it again (not within 2 s).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import msgspec

from kubus.kube import KubeClient, NotFoundError
from reconcilers.controllers.disruption.status import ControllerScale, SyncError, go_quote
from reconcilers.kinds import Object

__all__ = ["ScaleReader", "parse_group_version"]

# The Scale kinds the scale client reads (ScaleConverter.ScaleVersions, external ones).
_SCALE_VERSIONS: Final = frozenset(
    {("autoscaling", "v1"), ("extensions", "v1beta1"), ("apps", "v1beta1"), ("apps", "v1beta2")}
)
# Discovery of a group version is kept this long; a kind it lacks re-reads it, not sooner
# than the floor.
_DISCOVERY_TTL: Final = 30.0
_DISCOVERY_MISS_FLOOR: Final = 2.0


class _ListedResource(msgspec.Struct):
    name: str
    kind: str = ""
    namespaced: bool = False
    group: str | None = None
    version: str | None = None


class _ResourceList(msgspec.Struct):
    resources: list[_ListedResource] = msgspec.field(default_factory=list)


_decode_resources = msgspec.json.Decoder(_ResourceList).decode


@dataclass(frozen=True)
class _GroupVersion:
    read_at: float
    resources: tuple[_ListedResource, ...]


def parse_group_version(api_version: str) -> tuple[str, str]:
    """schema.ParseGroupVersion: ``""`` and ``v1`` are the core group."""
    if not api_version:
        return "", ""
    if api_version.count("/") > 1:
        raise SyncError(f"unexpected GroupVersion string: {api_version}")
    group, _, version = api_version.rpartition("/")
    return group, version


class ScaleReader:
    """What upstream's RESTMapper, discovery client and scale client do for the finder of last
    resort: a kind to its resource (discovery of its group version, kept for a while), a GET
    of the ``/scale`` subresource, and whether the resource has one at all."""

    def __init__(self, kube: KubeClient, clock: Callable[[], float] = time.monotonic) -> None:
        self._kube = kube
        self._clock = clock
        self._known: dict[tuple[str, str], _GroupVersion] = {}

    async def _listing(self, group: str, version: str, *, floor: float) -> _GroupVersion | None:
        cached = self._known.get((group, version))
        now = self._clock()
        if cached is not None and now - cached.read_at < floor:
            return cached
        path = f"/apis/{group}/{version}" if group else f"/api/{version}"
        try:
            body, _type = await self._kube.get_document(path, accept="application/json")
        except NotFoundError:
            self._known.pop((group, version), None)
            return None
        listed = _GroupVersion(now, tuple(_decode_resources(body).resources))
        self._known[(group, version)] = listed
        return listed

    async def resource_of(self, group: str, version: str, kind: str) -> _ListedResource:
        for floor in (_DISCOVERY_TTL, _DISCOVERY_MISS_FLOOR):
            listing = await self._listing(group, version, floor=floor)
            for entry in listing.resources if listing else ():
                if entry.kind == kind and "/" not in entry.name:
                    return entry
        shown = f"{group}/{version}" if group else version
        raise SyncError(f"no matches for kind {go_quote(kind)} in version {go_quote(shown)}")

    async def implements_scale(self, group: str, version: str, resource: str) -> bool:
        listing = await self._listing(group, version, floor=_DISCOVERY_MISS_FLOOR)
        for entry in listing.resources if listing else ():
            if entry.name != f"{resource}/scale" or entry.kind != "Scale":
                continue
            scale_group = entry.group if entry.group is not None else group
            scale_version = entry.version if entry.version is not None else version
            if (scale_group, scale_version) in _SCALE_VERSIONS:
                return True
        return False

    async def scale(self, reference: Mapping[str, Any], namespace: str) -> ControllerScale | None:
        """The controller's (uid, spec.replicas) from its scale subresource; None when the
        object is not there (or is another one by that name)."""
        group, version = parse_group_version(str(reference.get("apiVersion", "")))
        kind, name = str(reference.get("kind", "")), str(reference.get("name", ""))
        resource = await self.resource_of(group, version, kind)
        base = f"/apis/{group}/{version}" if group else f"/api/{version}"
        scope = f"/namespaces/{namespace}" if resource.namespaced else ""
        path = f"{base}{scope}/{resource.name}/{name}/scale"
        label = f"{resource.name}.{group}" if group else resource.name
        try:
            body, _type = await self._kube.get_document(path, accept="application/json")
        except NotFoundError:
            if not await self.implements_scale(group, version, resource.name):
                raise SyncError(f"{label} does not implement the scale subresource") from None
            return None
        scale: Object = msgspec.json.decode(body)
        if (scale.get("metadata") or {}).get("uid") != reference.get("uid"):
            return None
        return str(reference.get("uid")), int((scale.get("spec") or {}).get("replicas") or 0)

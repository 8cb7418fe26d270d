"""Small controllers the runtime's tests run in real reconciler processes.

They are loaded the way any controller from outside kubus is: through the ``kubus.controllers``
entry-point group, from a distribution the test writes next to them (see
:func:`entry_points_for_test_controllers`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any, ClassVar

from bench.support import entry_points_dir
from bus.subjects import ResourceType
from kubus.kube import ApiResource
from reconcilers.controller import (
    EVERY_RESOURCE,
    Context,
    ControllerBase,
    Permission,
    Request,
    Result,
    Scope,
)

PODS = ResourceType("", "v1", "pods")
NODES = ResourceType("", "v1", "nodes")
CONFIGMAPS = ResourceType("", "v1", "configmaps")
ZONE_LABEL = "kubus.test/zone"
ZONE_ANNOTATION = "kubus.test/node-zone"
GLOBAL_LABEL = "kubus.test/global"
DIGEST_ANNOTATION = "kubus.test/data-digest"
EVERY_LABEL = "kubus.test/every"
KIND_ANNOTATION = "kubus.test/resource"

Object = dict[str, Any]


class NodeZoneMirror(ControllerBase):
    """Copies its node's zone label onto every pod: a namespaced primary driven by a
    cluster-scoped kind, as a DaemonSet is by Nodes."""

    name: ClassVar[str] = "test-node-zone-mirror-controller"
    primary: ClassVar[ResourceType] = PODS
    reads: ClassVar[tuple[ResourceType, ...]] = (PODS, NODES)
    permissions: ClassVar[tuple[Permission, ...]] = (Permission.on(PODS, "patch"),)
    concurrency_flag: ClassVar[str] = "concurrent-test-node-zone-mirror-syncs"
    enabled_by_default: ClassVar[bool] = False

    def __init__(self, context: Context) -> None:
        self._ctx = context

    def requests_for(
        self, resource: ResourceType, obj: Object | None, old: Object | None
    ) -> Iterable[Request]:
        if resource == PODS:
            target = obj or old
            return [Request.of(target)] if target else []
        if obj is None or _zone(obj) == (_zone(old) if old else None):
            return []
        node = obj["metadata"]["name"]
        return [
            Request.of(pod)
            for namespace in self._namespaces()
            for pod in self._ctx.cache.in_namespace(PODS, namespace)
            if pod.get("spec", {}).get("nodeName") == node
        ]

    def _namespaces(self) -> set[str | None]:
        return {ref.namespace for ref in self._ctx.cache.refs() if ref.resource == PODS}

    async def reconcile(self, request: Request) -> Result:
        pod = self._ctx.cache.get(PODS, request.namespace, request.name)
        if pod is None or not pod.get("spec", {}).get("nodeName"):
            return Result()
        node = self._ctx.cache.get(NODES, None, pod["spec"]["nodeName"])
        zone = _zone(node) if node else None
        if zone is None:
            return Result()
        if (pod["metadata"].get("annotations") or {}).get(ZONE_ANNOTATION) == zone:
            return Result()
        await self._ctx.kube.patch(
            self._ctx.apis[PODS],
            request.namespace,
            request.name,
            {"metadata": {"annotations": {ZONE_ANNOTATION: zone}}},
        )
        return Result()


class GlobalDigest(ControllerBase):
    """Writes a digest of each labelled ConfigMap's data onto it, from one leader per pool."""

    name: ClassVar[str] = "test-global-digest-controller"
    primary: ClassVar[ResourceType] = CONFIGMAPS
    reads: ClassVar[tuple[ResourceType, ...]] = (CONFIGMAPS,)
    permissions: ClassVar[tuple[Permission, ...]] = (Permission.on(CONFIGMAPS, "patch"),)
    concurrency_flag: ClassVar[str] = "concurrent-test-global-digest-syncs"
    scope: ClassVar[Scope] = Scope.GLOBAL
    enabled_by_default: ClassVar[bool] = False

    def __init__(self, context: Context) -> None:
        self._ctx = context

    def requests_for(
        self, resource: ResourceType, obj: Object | None, old: Object | None
    ) -> Iterable[Request]:
        target = obj or old
        if target is None or (target["metadata"].get("labels") or {}).get(GLOBAL_LABEL) is None:
            return []
        return [Request.of(target)]

    async def reconcile(self, request: Request) -> Result:
        cm = self._ctx.cache.get(CONFIGMAPS, request.namespace, request.name)
        if cm is None:
            return Result()
        want = digest(cm.get("data") or {})
        if (cm["metadata"].get("annotations") or {}).get(DIGEST_ANNOTATION) == want:
            return Result()
        await self._ctx.kube.patch(
            self._ctx.apis[CONFIGMAPS],
            request.namespace,
            request.name,
            {"metadata": {"annotations": {DIGEST_ANNOTATION: want}}},
        )
        return Result()


class EveryResourceStamp(ControllerBase):
    """Stamps every labelled object of any kind, CRDs' included, with its resource: what a
    controller reading EVERY_RESOURCE (the garbage collector) is given."""

    name: ClassVar[str] = "test-every-resource-stamp-controller"
    primary: ClassVar[ResourceType] = EVERY_RESOURCE
    reads: ClassVar[tuple[ResourceType, ...]] = (EVERY_RESOURCE,)
    permissions: ClassVar[tuple[Permission, ...]] = (Permission("*", "*", ("patch",)),)
    concurrency_flag: ClassVar[str] = "concurrent-test-every-resource-stamp-syncs"
    enabled_by_default: ClassVar[bool] = False

    def __init__(self, context: Context) -> None:
        self._ctx = context
        self._apis: dict[ResourceType, ApiResource] = {}

    def requests_for(
        self, resource: ResourceType, obj: Object | None, old: Object | None
    ) -> Iterable[Request]:
        if obj is None or (obj["metadata"].get("labels") or {}).get(EVERY_LABEL) is None:
            return []
        return [Request.of(obj, resource)]

    async def reconcile(self, request: Request) -> Result:
        assert request.resource is not None
        obj = self._ctx.cache.get(request.resource, request.namespace, request.name)
        want = str(request.resource)
        if obj is None or (obj["metadata"].get("annotations") or {}).get(KIND_ANNOTATION) == want:
            return Result()
        api = self._apis.get(request.resource)
        if api is None:
            r = request.resource
            api = self._apis[r] = await self._ctx.kube.discover(r.group, r.version, r.resource)
        await self._ctx.kube.patch(
            api,
            request.namespace,
            request.name,
            {"metadata": {"annotations": {KIND_ANNOTATION: want}}},
        )
        return Result()


def digest(data: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def _zone(node: Object | None) -> str | None:
    if node is None:
        return None
    value = (node["metadata"].get("labels") or {}).get(ZONE_LABEL)
    return str(value) if value is not None else None


def entry_points_for_test_controllers(directory: Path) -> Path:
    """A directory to put on PYTHONPATH that registers the controllers above."""
    return entry_points_dir(
        directory,
        "kubus-test-controllers",
        {
            NodeZoneMirror.name: "tests.support.controllers:NodeZoneMirror",
            GlobalDigest.name: "tests.support.controllers:GlobalDigest",
            EveryResourceStamp.name: "tests.support.controllers:EveryResourceStamp",
        },
    )

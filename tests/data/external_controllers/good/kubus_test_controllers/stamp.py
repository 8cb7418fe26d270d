"""Stamps labelled ConfigMaps with an annotation: the smallest controller that writes."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar

from bus.subjects import ResourceType
from reconcilers.controller import Context, ControllerBase, Permission, Request, Result, Scope
from reconcilers.registry import controller_class

CONFIGMAPS = ResourceType("", "v1", "configmaps")
LABEL = "kubus.test/stamp"  # only ConfigMaps that ask for it
ANNOTATION = "kubus.test/stamped-by"


@controller_class
class StampController(ControllerBase):
    name: ClassVar[str] = "configmap-stamp-controller"
    aliases: ClassVar[tuple[str, ...]] = ("configmap-stamp",)
    primary: ClassVar[ResourceType] = CONFIGMAPS
    reads: ClassVar[tuple[ResourceType, ...]] = (CONFIGMAPS,)
    concurrency_flag: ClassVar[str] = "concurrent-configmap-stamp-syncs"
    default_concurrency: ClassVar[int] = 2
    scope: ClassVar[Scope] = Scope.PARTITIONED
    permissions: ClassVar[tuple[Permission, ...]] = (Permission.on(CONFIGMAPS, "patch"),)

    def __init__(self, context: Context) -> None:
        self._ctx = context

    def requests_for(
        self, resource: ResourceType, obj: dict[str, Any] | None, old: dict[str, Any] | None
    ) -> Iterable[Request]:
        if obj is not None and LABEL in obj.get("metadata", {}).get("labels", {}):
            yield Request.of(obj)

    async def reconcile(self, request: Request) -> Result:
        configmap = self._ctx.cache.get(CONFIGMAPS, request.namespace, request.name)
        if configmap is None:
            return Result()
        if ANNOTATION in configmap["metadata"].get("annotations", {}):
            return Result()
        stamp = {"metadata": {"annotations": {ANNOTATION: self.name}}}
        await self._ctx.kube.patch(
            self._ctx.apis[CONFIGMAPS], request.namespace, request.name, stamp
        )
        return Result()


@controller_class
class CountController(StampController):
    """On with ``--controllers=*``: it says so."""

    name: ClassVar[str] = "configmap-count-controller"
    aliases: ClassVar[tuple[str, ...]] = ()
    concurrency_flag: ClassVar[str] = "concurrent-configmap-count-syncs"
    enabled_by_default: ClassVar[bool] = True

    async def reconcile(self, request: Request) -> Result:
        return Result()

"""A controller that only caches (pods and nodes) and reconciles nothing: what the runtime
costs by itself, for ``bench.reconciler_rss``."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar

from bus.subjects import ResourceType
from reconcilers.controller import Context, ControllerBase, Request, Result

PODS = ResourceType("", "v1", "pods")
NODES = ResourceType("", "v1", "nodes")


class CacheOnly(ControllerBase):
    name: ClassVar[str] = "bench-cache-only-controller"
    primary: ClassVar[ResourceType] = PODS
    reads: ClassVar[tuple[ResourceType, ...]] = (PODS, NODES)
    concurrency_flag: ClassVar[str] = "concurrent-bench-cache-only-syncs"
    enabled_by_default: ClassVar[bool] = False

    def __init__(self, context: Context) -> None:
        self._ctx = context

    def requests_for(
        self, resource: ResourceType, obj: dict[str, Any] | None, old: dict[str, Any] | None
    ) -> Iterable[Request]:
        return ()

    async def reconcile(self, request: Request) -> Result:
        return Result()

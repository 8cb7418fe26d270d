"""The namespace controller's declarations, requests and sync (upstream's namespace_controller.go).

A namespace is queued only while it is being deleted, and each change of it is synced
:data:`DELETION_GRACE_PERIOD` after it was seen (upstream's ``namespaceDeletionGracePeriod``
and ``AddAfter``: time for every apiserver to refuse new objects in it and for last-minute
creations to become visible, so the cleanup really is complete; the controller's own status
writes are changes too). A sync is one :meth:`NamespacedResourcesDeleter.delete`:

- content remains with an estimate: requeued after ``estimate / 2 + 1`` seconds;
- a failure: raised, so the key is retried with the queue's backoff;
- done but the namespace is still there (another finalizer holds it): resynced every
  ``--namespace-sync-period``, as upstream's informer resync re-queues it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import ClassVar, Final

from bus.subjects import ResourceType
from reconcilers.controller import (
    Context,
    ControllerBase,
    Flag,
    Permission,
    Request,
    Result,
    RetryPolicy,
    Scope,
)
from reconcilers.controllers.flags import NAMESPACE_SYNC_PERIOD
from reconcilers.controllers.namespace.deleter import NamespacedResourcesDeleter
from reconcilers.kinds import NAMESPACES, Object

__all__ = ["DELETION_GRACE_PERIOD", "NamespaceController", "requeue_delay"]

DELETION_GRACE_PERIOD: Final = 5.0
DEFAULT_SYNC_PERIOD: Final[float] = NAMESPACE_SYNC_PERIOD.default
EVERYTHING: Final = ResourceType("*", "*", "*")


def requeue_delay(estimate: int) -> float:
    """Seconds until the next look at content estimated to go in ``estimate`` seconds."""
    return float(estimate // 2 + 1)


class NamespaceController(ControllerBase):
    name: ClassVar[str] = "namespace-controller"
    aliases: ClassVar[tuple[str, ...]] = ("namespace",)
    primary: ClassVar[ResourceType] = NAMESPACES
    reads: ClassVar[tuple[ResourceType, ...]] = (NAMESPACES,)
    concurrency_flag: ClassVar[str] = "concurrent-namespace-syncs"
    default_concurrency: ClassVar[int] = 10
    scope: ClassVar[Scope] = Scope.PARTITIONED
    enabled_by_default: ClassVar[bool] = True
    # Terminating namespaces are this controller's work: their errors are retried.
    retry: ClassVar[RetryPolicy] = RetryPolicy(forget_terminating_namespace=False)
    permissions: ClassVar[tuple[Permission, ...]] = (
        Permission.on(NAMESPACES, "get"),
        Permission.on(NAMESPACES, "update", subresource="status"),
        Permission.on(NAMESPACES, "update", subresource="finalize"),
        # The content: every namespaced resource, whatever its group (as kcm's own role).
        Permission.on(EVERYTHING, "delete", "deletecollection", "get", "list"),
    )
    flags: ClassVar[tuple[Flag, ...]] = (NAMESPACE_SYNC_PERIOD,)

    def __init__(self, context: Context) -> None:
        self._ctx = context
        self._sync_period = float(context.options.get("namespace-sync-period", DEFAULT_SYNC_PERIOD))
        self._deleter = NamespacedResourcesDeleter(context.kube, context.apis[NAMESPACES])
        # Per deleting namespace with a change not synced yet: when it may be (monotonic s).
        # As a delaying queue's AddAfter, a later change keeps the earlier time.
        self._not_before: dict[str, float] = {}

    def forget(self, matches: Callable[[Request], bool]) -> None:
        for name in [n for n in self._not_before if matches(Request(None, n))]:
            del self._not_before[name]

    def requests_for(
        self, resource: ResourceType, obj: Object | None, old: Object | None
    ) -> Iterable[Request]:
        if obj is None:
            if old is not None:
                self._not_before.pop(old["metadata"].get("name", ""), None)
            return []
        if not obj["metadata"].get("deletionTimestamp"):
            return []
        self._not_before.setdefault(
            obj["metadata"]["name"], time.monotonic() + DELETION_GRACE_PERIOD
        )
        return [Request.of(obj)]

    async def reconcile(self, request: Request) -> Result:
        namespace = self._ctx.cache.get(NAMESPACES, None, request.name)
        if namespace is None:
            self._not_before.pop(request.name, None)
            return Result()
        if not namespace["metadata"].get("deletionTimestamp"):
            return Result()
        # A change waits out its grace period; a sync requeued by an estimate or the resync
        # period (no change pending) runs now. A process taking the key over sees the
        # namespace as a change when its partition is replayed.
        due = self._not_before.get(request.name)
        if due is not None:
            wait = due - time.monotonic()
            if wait > 0:
                return Result(requeue_after=wait)
            del self._not_before[request.name]
        estimate = await self._deleter.delete(request.name)
        if estimate > 0:
            return Result(requeue_after=requeue_delay(estimate))
        return Result(requeue_after=self._sync_period) if self._sync_period > 0 else Result()

"""The garbage collector's declarations, its event handler and the reconcile of one object.

A request names one object of any resource. Its reconcile, on the object's live state:

- being deleted with the ``orphan`` finalizer: drop this owner from the dependents this process
  holds, then (see the package docstring for a cluster-scoped owner) the finalizer;
- being deleted with ``foregroundDeletion``: once no dependent blocks it, remove the finalizer;
- being deleted otherwise: nothing (a one-way trip; its dependents are looked at once it is gone);
- with owners: classify them and delete the object, or drop some references (:mod:`deletion`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from typing import Any, ClassVar, Final

from bus.subjects import ObjectRef, ResourceType
from kubus.kube import ApiResource
from reconcilers.controller import (
    EVERY_RESOURCE,
    Context,
    ControllerBase,
    Flag,
    Permission,
    Request,
    Result,
    RetryPolicy,
    Scope,
)
from reconcilers.controllers.flags import ENABLE_GARBAGE_COLLECTOR, parse_bool
from reconcilers.controllers.garbagecollector import graph
from reconcilers.controllers.garbagecollector.deletion import Action, decide
from reconcilers.controllers.garbagecollector.graph import (
    FINALIZER_DELETE_DEPENDENTS,
    FINALIZER_ORPHAN,
    being_deleted,
    blocking_dependents,
    deleting_dependents,
    orphaning,
    references,
)
from reconcilers.controllers.garbagecollector.operations import Operations
from reconcilers.controllers.garbagecollector.owners import (
    NamespacedOwnerOfClusterScopedError,
    OwnerResolver,
)
from reconcilers.controllers.garbagecollector.restmapper import IGNORED_RESOURCES, RestMapper
from reconcilers.kinds import EVENTS, Object

__all__ = ["GarbageCollectorController", "parse_bool"]

log = logging.getLogger(__name__)

COMPONENT: Final = "garbage-collector-controller"
# A cluster-scoped owner waiting for dependents held by other processes is looked at again
# after 1, 2, 4 ... seconds, at most this often.
MAX_WAIT: Final = 30.0


class GarbageCollectorController(ControllerBase):
    name: ClassVar[str] = "garbage-collector-controller"
    aliases: ClassVar[tuple[str, ...]] = ("garbagecollector",)
    primary: ClassVar[ResourceType] = EVERY_RESOURCE
    reads: ClassVar[tuple[ResourceType, ...]] = (EVERY_RESOURCE,)
    concurrency_flag: ClassVar[str] = "concurrent-gc-syncs"
    default_concurrency: ClassVar[int] = 20
    scope: ClassVar[Scope] = Scope.PARTITIONED
    retry: ClassVar[RetryPolicy] = RetryPolicy(max_retries=None)
    # system:controller:generic-garbage-collector: every resource.
    permissions: ClassVar[tuple[Permission, ...]] = (
        Permission("*", "*", ("delete", "get", "list", "patch")),
        Permission.on(EVENTS, "create", "patch"),
    )
    flags: ClassVar[tuple[Flag, ...]] = (ENABLE_GARBAGE_COLLECTOR,)
    enabled_by_default: ClassVar[bool] = True

    def __init__(self, context: Context) -> None:
        self._ctx = context
        self._enabled = bool(context.options.get("enable-garbage-collector", True))
        if not self._enabled:
            log.info("garbage collector disabled (--enable-garbage-collector=false)")
        self._mapper = RestMapper(context.kube)
        self._owners = OwnerResolver(context.cache, context.kube, self._mapper)
        self._operations = Operations(context.kube)
        self._waits: dict[Request, int] = {}

    def forget(self, matches: Callable[[Request], bool]) -> None:
        for request in [r for r in self._waits if matches(r)]:
            del self._waits[request]

    # --- event handler ------------------------------------------------------------------

    def requests_for(
        self, resource: ResourceType, obj: Object | None, old: Object | None
    ) -> Iterable[Request]:
        if not self._enabled or (resource.group, resource.resource) in IGNORED_RESOURCES:
            return ()
        return graph.requests_for(self._ctx.cache, resource, obj, old)

    # --- reconcile ----------------------------------------------------------------------

    async def reconcile(self, request: Request) -> Result:
        resource = request.resource
        if not self._enabled or resource is None:
            return Result()
        cached = self._ctx.cache.get(resource, request.namespace, request.name)
        if cached is None:
            self._waits.pop(request, None)
            return Result()  # gone: its dependents were asked about when it went
        await self._mapper.refresh()
        api = await self._mapper.deletable_or_unknown(resource)
        if api is None:
            return Result()  # served, but not a resource the garbage collector works with
        uid = cached.get("metadata", {}).get("uid", "")
        item = await self._operations.get(api, request.namespace, request.name)
        if item is None or item.get("metadata", {}).get("uid") != uid:
            self._waits.pop(request, None)
            return Result()  # gone, or another object of the same name now
        if orphaning(item):
            return await self._orphan(request, api, item)
        if deleting_dependents(item):
            return await self._finish_foreground(request, api, item)
        if being_deleted(item) or not references(item):
            return Result()
        await self._attempt_to_delete(resource, api, item, cached)
        return Result()

    def _deletable(self, resource: ResourceType) -> ApiResource | None:
        return self._mapper.deletable_api(resource)

    async def _attempt_to_delete(
        self, resource: ResourceType, api: ApiResource, item: Object, cached: Object
    ) -> None:
        meta = item["metadata"]
        namespace = meta.get("namespace")
        refs = references(item)
        try:
            classified = await self._owners.classify(refs, namespace)
        except NamespacedOwnerOfClusterScopedError as error:
            log.info("%s %s: %s; not collected", resource, meta.get("name"), error)
            self._report_invalid_namespace(cached, refs, namespace)
            return
        if classified.dangling:
            self._report_invalid_namespace(cached, list(classified.dangling), namespace)
        dependents = [d for _, d in self._ctx.cache.dependents_of(meta["uid"])]
        decision = decide(
            item,
            classified,
            has_dependents=bool(dependents),
            a_dependent_deletes_dependents=any(deleting_dependents(d) for d in dependents),
        )
        key = ObjectRef(resource, namespace, meta["name"]).key
        if decision.action is Action.REMOVE_REFERENCES:
            log.debug("%s %s: removing references to %s", resource, key, decision.uids)
            await self._operations.remove_references(api, item, set(decision.uids))
        elif decision.action is Action.DELETE:
            assert decision.policy is not None
            if decision.unblock_first:
                await self._operations.unblock_references(api, item)
            log.debug("%s %s: deleting (%s)", resource, key, decision.policy.value)
            await self._operations.delete(api, item, decision.policy.value)

    def _report_invalid_namespace(
        self, item: Object, refs: list[dict[str, Any]], namespace: str | None
    ) -> None:
        """upstream's reportInvalidNamespaceOwnerRef, for an owner this process can see."""
        for ref in refs:
            if self._owners.observed_elsewhere(ref, namespace) is None:
                continue
            identity = (
                f"[{ref.get('apiVersion', '')}/{ref.get('kind', '')}, namespace: "
                f"{namespace or ''}, name: {ref.get('name', '')}, uid: {ref.get('uid', '')}]"
            )
            self._ctx.events.record(
                item,
                "Warning",
                "OwnerRefInvalidNamespace",
                f'ownerRef {identity} does not exist in namespace "{namespace or ""}"',
                component=COMPONENT,
            )

    async def _orphan(self, request: Request, api: ApiResource, owner: Object) -> Result:
        """attemptToOrphan: this owner's uid off every dependent held here, then the
        finalizer (for a cluster-scoped owner, once none is left anywhere)."""
        uid = owner["metadata"]["uid"]
        held = list(self._ctx.cache.dependents_of(uid))
        results = await asyncio.gather(
            *(self._drop_reference(ref, dependent, uid) for ref, dependent in held),
            return_exceptions=True,
        )
        failures = [r for r in results if isinstance(r, BaseException)]
        if failures:
            raise RuntimeError(
                f"failed to orphan dependents of owner {request.key}, got errors: "
                + "; ".join(str(f) for f in failures)
            )
        if request.namespace is None and await self._held_elsewhere(uid, blocking_only=False):
            return self._wait(request)
        await self._operations.remove_finalizer(
            api, request.namespace, request.name, uid, FINALIZER_ORPHAN
        )
        self._waits.pop(request, None)
        return Result()

    async def _drop_reference(self, ref: ObjectRef, dependent: Object, owner_uid: str) -> None:
        api = await self._mapper.deletable_or_unknown(ref.resource)
        if api is None:
            return
        await self._operations.remove_references(api, dependent, {owner_uid})

    async def _finish_foreground(self, request: Request, api: ApiResource, owner: Object) -> Result:
        """processDeletingDependentsItem: the finalizer goes once nothing blocks the owner."""
        uid = owner["metadata"]["uid"]
        if any(True for _ in blocking_dependents(self._ctx.cache, uid)):
            # Each blocking dependent was asked about when the deletion started, and its
            # deletion asks about this owner again; the wait is a safety net.
            return self._wait(request)
        if request.namespace is None and await self._held_elsewhere(uid, blocking_only=True):
            return self._wait(request)
        await self._operations.remove_finalizer(
            api, request.namespace, request.name, uid, FINALIZER_DELETE_DEPENDENTS
        )
        self._waits.pop(request, None)
        return Result()

    async def _held_elsewhere(self, owner_uid: str, *, blocking_only: bool) -> bool:
        """A cluster-scoped owner's namespaced dependents live in every partition: whether any
        is left, read live (this process's cache holds only its own partitions)."""
        namespaced = tuple(api for api in self._mapper.deletable if api.namespaced)
        async for api, listed in self._operations.live_dependents(
            namespaced, owner_uid, blocking_only=blocking_only
        ):
            log.debug(
                "owner %s: still referenced by %s %s/%s",
                owner_uid,
                api.name,
                listed.metadata.namespace,
                listed.metadata.name,
            )
            return True
        return False

    def _wait(self, request: Request) -> Result:
        attempts = self._waits.get(request, 0)
        self._waits[request] = attempts + 1
        return Result(requeue_after=min(2.0**attempts, MAX_WAIT))

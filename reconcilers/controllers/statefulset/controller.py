"""The StatefulSet controller's class: event handlers and the sync (upstream's stateful_set.go).

A sync waits until the cache shows the set's last writes (kcm's consistency store), adopts
orphan ControllerRevisions the selector picks, claims pods (members by name: ``<set>-<n>``,
adopting orphans and releasing pods that stopped matching), runs the update algorithm
(:mod:`.control`) and, with ``minReadySeconds``, requeues itself for the moment the next
ready pod becomes available.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar, Final

from bus.subjects import ResourceType
from kubus.kube import ConflictError
from reconcilers.cache import controller_of
from reconcilers.controller import Context, ControllerBase, Permission, Request, Result, Scope
from reconcilers.controllers.history import History, RevisionOwnedError, owned_revisions
from reconcilers.controllers.podutil import is_pod_ready, next_availability_check
from reconcilers.controllers.statefulset.consistency import WriteTracker
from reconcilers.controllers.statefulset.control import StatefulSetControl
from reconcilers.controllers.statefulset.pods import StatefulPodControl
from reconcilers.controllers.statefulset.utils import is_member_of
from reconcilers.kinds import (
    CONTROLLERREVISIONS,
    EVENTS,
    PERSISTENTVOLUMECLAIMS,
    PODS,
    STATEFULSETS,
    Object,
)
from reconcilers.refmanager import (
    CannotAdoptError,
    ControllerRefManager,
    live_owner,
    recheck_deletion_timestamp,
    resolve_controller_ref,
    selecting_owners,
)
from reconcilers.selectors import InvalidSelectorError, Selector

__all__ = ["FEATURE_GATES", "StatefulSetController"]

log = logging.getLogger(__name__)

FEATURE_GATES: Final = {
    "MaxUnavailableStatefulSet": False,
    "StatefulSetSemanticRevisionComparison": True,
    "StaleControllerConsistencyStatefulSet": True,
}
_LAGGING_REQUEUE: Final = 0.5  # seconds: the cache is behind the set's own last writes
_STATUS_ATTEMPTS: Final = 5  # client-go's retry.DefaultRetry


class StatefulSetController(ControllerBase):
    name: ClassVar[str] = "statefulset-controller"
    aliases: ClassVar[tuple[str, ...]] = ("statefulset",)
    primary: ClassVar[ResourceType] = STATEFULSETS
    reads: ClassVar[tuple[ResourceType, ...]] = (
        STATEFULSETS,
        PODS,
        PERSISTENTVOLUMECLAIMS,
        CONTROLLERREVISIONS,
    )
    concurrency_flag: ClassVar[str] = "concurrent-statefulset-syncs"
    default_concurrency: ClassVar[int] = 5
    scope: ClassVar[Scope] = Scope.PARTITIONED
    enabled_by_default: ClassVar[bool] = True
    permissions: ClassVar[tuple[Permission, ...]] = (
        Permission.on(PODS, "get", "create", "update", "delete", "patch"),
        Permission.on(STATEFULSETS, "get"),
        Permission.on(STATEFULSETS, "update", subresource="status"),
        # As kcm's role: owner references that block their owner's deletion (pods and claims
        # on the set, claims on a pod) need this where OwnerReferencesPermissionEnforcement runs.
        Permission.on(STATEFULSETS, "update", subresource="finalizers"),
        Permission.on(PODS, "update", subresource="finalizers"),
        Permission.on(PERSISTENTVOLUMECLAIMS, "create", "update"),
        Permission.on(CONTROLLERREVISIONS, "get", "create", "update", "patch", "delete"),
        Permission.on(EVENTS, "create", "patch"),
    )
    feature_gates: ClassVar[Mapping[str, bool]] = FEATURE_GATES

    def __init__(self, context: Context) -> None:
        self._ctx = context
        self._tracker = WriteTracker(context.cache)
        self._consistency = context.enabled("StaleControllerConsistencyStatefulSet")
        self._history = History(context.kube, context.apis[CONTROLLERREVISIONS])
        self._control = StatefulSetControl(
            StatefulPodControl(context, self._tracker),
            self._history,
            self._write_status,
            context.apis[STATEFULSETS],
            max_unavailable_gate=context.enabled("MaxUnavailableStatefulSet"),
            semantic_revision_comparison=context.enabled("StatefulSetSemanticRevisionComparison"),
        )

    def forget(self, matches: Callable[[Request], bool]) -> None:
        def by_key(key: str) -> bool:
            namespace, _, name = key.partition("/")
            return matches(Request(namespace or None, name))

        self._tracker.forget_where(by_key)

    # --- event handlers -----------------------------------------------------------------

    def requests_for(
        self, resource: ResourceType, obj: Object | None, old: Object | None
    ) -> Iterable[Request]:
        if resource == STATEFULSETS:
            target = obj or old
            if obj is None and old is not None:
                self._tracker.forget(Request.of(old).key)
            return [Request.of(target)] if target else []
        if resource == PERSISTENTVOLUMECLAIMS:
            # Not upstream's (it has no claim handlers): a claim gone may unblock a pod its
            # stale owner reference held back, so the sets selecting it look again.
            if obj is None and old is not None:
                return [Request.of(s) for s in selecting_owners(self._ctx.cache, STATEFULSETS, old)]
            return []
        if resource != PODS:
            return []
        if obj is None:
            return self._owner_requests(old) if old else []
        if old is None:
            if obj["metadata"].get("deletionTimestamp"):
                return self._owner_requests(obj)
            return self._pod_added(obj)
        return self._pod_updated(obj, old)

    def _owner(self, pod: Object) -> Object | None:
        return resolve_controller_ref(self._ctx.cache, STATEFULSETS, "StatefulSet", pod)

    def _owner_requests(self, pod: Object) -> list[Request]:
        owner = self._owner(pod)
        return [Request.of(owner)] if owner is not None else []

    def _pod_added(self, pod: Object) -> list[Request]:
        if controller_of(pod) is not None:
            return self._owner_requests(pod)
        return [Request.of(s) for s in selecting_owners(self._ctx.cache, STATEFULSETS, pod)]

    def _pod_updated(self, pod: Object, old: Object) -> list[Request]:
        if pod["metadata"].get("resourceVersion") == old["metadata"].get("resourceVersion"):
            return []
        requests: list[Request] = []
        old_ref, new_ref = controller_of(old), controller_of(pod)
        if old_ref is not None and old_ref != new_ref:
            requests += self._owner_requests(old)
        if new_ref is not None:
            return requests + self._owner_requests(pod)
        labels_changed = old["metadata"].get("labels") != pod["metadata"].get("labels")
        if labels_changed or old_ref != new_ref:
            requests += [
                Request.of(s) for s in selecting_owners(self._ctx.cache, STATEFULSETS, pod)
            ]
        return requests

    # --- sync ---------------------------------------------------------------------------

    async def reconcile(self, request: Request) -> Result:
        key = request.key
        if self._consistency:
            behind = self._tracker.pending(key)
            if behind is not None:
                log.debug("statefulset %s: cache behind its write of %s", key, behind)
                return Result(requeue_after=_LAGGING_REQUEUE)
        sts = self._ctx.cache.get(STATEFULSETS, request.namespace, request.name)
        if sts is None:
            self._tracker.forget(key)
            return Result()
        try:
            selector = Selector.parse(sts.get("spec", {}).get("selector"))
        except InvalidSelectorError as error:
            log.error("error converting StatefulSet %s selector: %s", key, error)
            return Result()
        can_adopt = recheck_deletion_timestamp(
            live_owner(self._ctx.kube, self._ctx.apis[STATEFULSETS], sts)
        )
        await self._adopt_orphan_revisions(sts, selector, can_adopt)
        pods = await self._claim_pods(sts, selector, can_adopt)
        revisions = owned_revisions(self._ctx.cache, sts, selector)
        now = datetime.datetime.now(datetime.UTC)
        status = await self._control.update_stateful_set(sts, pods, revisions, now)
        min_ready = int(sts.get("spec", {}).get("minReadySeconds") or 0)
        if min_ready > 0 and status.get("readyReplicas") != status.get("availableReplicas"):
            after = next_availability_check([p for p in pods if is_pod_ready(p)], min_ready, now)
            return Result(requeue_after=after if after is not None else float(min_ready))
        return Result()

    async def _adopt_orphan_revisions(
        self, sts: Object, selector: Selector, can_adopt: Callable[[], Any]
    ) -> None:
        orphans = [
            r for r in owned_revisions(self._ctx.cache, sts, selector) if controller_of(r) is None
        ]
        if not orphans:
            return
        try:
            await can_adopt()
        except CannotAdoptError as error:
            raise CannotAdoptError(f"can't adopt ControllerRevisions: {error}") from error
        for revision in orphans:
            try:
                await self._history.adopt(sts, self._ctx.apis[STATEFULSETS], revision)
            except RevisionOwnedError:
                continue

    async def _claim_pods(
        self, sts: Object, selector: Selector, can_adopt: Callable[[], Any]
    ) -> list[Object]:
        uid = sts["metadata"]["uid"]
        namespace = sts["metadata"].get("namespace")
        candidates = list(self._ctx.cache.controlled_by(PODS, uid)) + [
            pod
            for pod in self._ctx.cache.in_namespace(PODS, namespace)
            if controller_of(pod) is None
        ]
        claims = ControllerRefManager(
            self._ctx.kube,
            sts,
            owner_api=self._ctx.apis[STATEFULSETS],
            child_api=self._ctx.apis[PODS],
            selector=selector,
            can_adopt=can_adopt,
        )
        return await claims.claim_pods(candidates, lambda pod: is_member_of(sts, pod))

    async def _write_status(self, sts: Object, status: Object) -> None:
        """``UpdateStatefulSetStatus``: the whole status replaced, conflicts retried on a fresh
        read of the set."""
        api = self._ctx.apis[STATEFULSETS]
        meta = sts["metadata"]
        body = {**sts, "status": dict(status)}
        for attempt in range(_STATUS_ATTEMPTS):
            try:
                updated = await self._ctx.kube.replace(
                    api, meta.get("namespace"), meta["name"], body, subresource="status"
                )
            except ConflictError:
                if attempt == _STATUS_ATTEMPTS - 1:
                    raise
                await asyncio.sleep(0.01)
                fresh = await self._ctx.kube.get(api, meta.get("namespace"), meta["name"])
                body = {**fresh, "status": dict(status)}
                continue
            self._tracker.wrote(Request.of(sts).key, meta["uid"], STATEFULSETS, updated)
            return

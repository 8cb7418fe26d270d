"""The controller itself (upstream's deployment_controller.go): event handlers and the sync entry.

Events map to the Deployment to sync: its own changes; a ReplicaSet's, to the Deployment that
controls it (and the one it left), or for an orphan to every Deployment selecting it; a pod's
deletion, to a Recreate Deployment waiting for its old pods to go. A sync claims the
ReplicaSets, then takes upstream's branches in upstream's order.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import ClassVar

from bus.subjects import ResourceType
from kubus.kube import KubeApiError
from reconcilers.cache import controller_of
from reconcilers.controller import (
    Context,
    ControllerBase,
    Permission,
    Request,
    Result,
    RetryPolicy,
    Scope,
)
from reconcilers.controllers.deployment import recreate, rollback, rolling, sync, util
from reconcilers.kinds import DEPLOYMENTS, EVENTS, PODS, REPLICASETS, Object, clone
from reconcilers.refmanager import ControllerRefManager, resolve_controller_ref, selecting_owners
from reconcilers.selectors import InvalidSelectorError, Selector

__all__ = ["DeploymentController"]


class DeploymentController(ControllerBase):
    name: ClassVar[str] = "deployment-controller"
    aliases: ClassVar[tuple[str, ...]] = ("deployment",)
    primary: ClassVar[ResourceType] = DEPLOYMENTS
    reads: ClassVar[tuple[ResourceType, ...]] = (DEPLOYMENTS, REPLICASETS, PODS)
    concurrency_flag: ClassVar[str] = "concurrent-deployment-syncs"
    default_concurrency: ClassVar[int] = 5
    scope: ClassVar[Scope] = Scope.PARTITIONED
    # kcm's maxRetries: a Deployment that keeps failing is dropped until its next change.
    retry: ClassVar[RetryPolicy] = RetryPolicy(max_retries=15)
    permissions: ClassVar[tuple[Permission, ...]] = (
        Permission.on(REPLICASETS, "create", "update", "patch", "delete"),
        Permission.on(DEPLOYMENTS, "get", "update"),
        Permission.on(DEPLOYMENTS, "update", subresource="status"),
        Permission.on(EVENTS, "create", "patch"),
    )
    feature_gates: ClassVar[Mapping[str, bool]] = {"DeploymentReplicaSetTerminatingReplicas": True}

    def __init__(self, context: Context) -> None:
        self._ctx = context

    # --- event handlers -----------------------------------------------------------------

    def requests_for(
        self, resource: ResourceType, obj: Object | None, old: Object | None
    ) -> Iterable[Request]:
        target = obj or old
        if target is None:
            return []
        if resource == DEPLOYMENTS:
            return [Request.of(target)]
        if resource == REPLICASETS:
            requests = []
            if obj is not None and old is not None:
                if obj["metadata"].get("resourceVersion") == old["metadata"].get("resourceVersion"):
                    return []
                if controller_of(old) and controller_of(old) != controller_of(obj):
                    owner = self._deployment_of(old)
                    if owner is not None:
                        requests.append(Request.of(owner))
            owner = self._deployment_of(target)
            if owner is not None:
                return [*requests, Request.of(owner)]
            if obj is not None and controller_of(obj) is None:
                requests += [
                    Request.of(d) for d in selecting_owners(self._ctx.cache, DEPLOYMENTS, obj)
                ]
            return requests
        if obj is None:  # a pod went away: a Recreate rollout may be waiting for it
            rs = resolve_controller_ref(self._ctx.cache, REPLICASETS, "ReplicaSet", target)
            deployment = self._deployment_of(rs) if rs else None
            if deployment is not None and util.is_recreate(deployment):
                return [Request.of(deployment)]
        return []

    def _deployment_of(self, rs: Object) -> Object | None:
        return resolve_controller_ref(self._ctx.cache, DEPLOYMENTS, "Deployment", rs)

    # --- sync ---------------------------------------------------------------------------

    async def reconcile(self, request: Request) -> Result:
        """syncDeployment."""
        ctx = self._ctx
        cached = ctx.cache.get(DEPLOYMENTS, request.namespace, request.name)
        if cached is None:
            return Result()
        d = clone(cached)
        spec = d.get("spec", {})
        selector_spec = spec.get("selector")
        if selector_spec == {}:
            sync.event(
                ctx,
                d,
                "Warning",
                "SelectingAll",
                "This deployment is selecting all pods. A non-empty selector is required.",
            )
            status = d.setdefault("status", {})
            if status.get("observedGeneration", 0) < d["metadata"].get("generation", 0):
                status["observedGeneration"] = d["metadata"]["generation"]
                await sync.update_status(ctx, d)
            return Result()
        try:
            selector = Selector.parse(selector_spec)
        except InvalidSelectorError as error:
            meta = d["metadata"]
            raise KubeApiError(
                0,
                "Invalid",
                (
                    f"deployment {meta['namespace']}/{meta['name']} has invalid label selector: "
                    f"{error}"
                ),
            ) from error
        rs_list = await self._replicasets_for(d, selector)
        if d["metadata"].get("deletionTimestamp"):
            return await sync.sync_status_only(ctx, d, rs_list)
        await sync.check_paused_conditions(ctx, d)
        if spec.get("paused"):
            return await sync.sync(ctx, d, rs_list)
        # Not re-entrant: the rollback is finished (annotation cleared) before any rollout.
        revision = rollback.rollback_to(d)
        if revision is not None:
            await rollback.rollback(ctx, d, rs_list, revision)
            return Result()
        if await sync.is_scaling_event(ctx, d, rs_list):
            return await sync.sync(ctx, d, rs_list)
        if util.is_recreate(d):
            return await recreate.rollout_recreate(ctx, d, rs_list)
        return await rolling.rollout_rolling(ctx, d, rs_list)

    async def _replicasets_for(self, d: Object, selector: Selector) -> list[Object]:
        """getReplicaSetsForDeployment: the namespace's ReplicaSets, adopted and released by
        the Deployment's selector (after a live read of the Deployment before adopting)."""
        claims = ControllerRefManager(
            self._ctx.kube,
            d,
            owner_api=self._ctx.apis[DEPLOYMENTS],
            child_api=self._ctx.apis[REPLICASETS],
            selector=selector,
        )
        candidates = list(self._ctx.cache.in_namespace(REPLICASETS, d["metadata"]["namespace"]))
        return await claims.claim_replicasets(candidates)

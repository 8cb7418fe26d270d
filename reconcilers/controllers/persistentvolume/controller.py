"""The binder's declarations and event handlers: upstream's ``pv_controller_base.go``.

Requests name a claim (``namespace/name``) or a volume (``name``), told apart by
``Request.resource``. A claim's change syncs it; a deleted claim syncs the volume it was bound
to (so the volume is Released at once). A volume's change syncs it, and also the claim it
points at while that claim has not taken the binding yet (upstream enqueues it from the
volume's sync: that is how a provisioned volume gets bound without waiting for a resync). A
claim left Pending is looked at again after ``--pvclaimbinder-sync-period``, which is what
upstream's periodic resync does for it: a static volume created later is found then.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import ClassVar

from bus.subjects import ResourceType
from reconcilers.controller import (
    Context,
    ControllerBase,
    Flag,
    Permission,
    Request,
    Result,
    Scope,
)
from reconcilers.controllers.flags import ENABLE_DYNAMIC_PROVISIONING, PVCLAIMBINDER_SYNC_PERIOD
from reconcilers.controllers.persistentvolume.matching import (
    ANN_BIND_COMPLETED,
    has_annotation,
)
from reconcilers.controllers.persistentvolume.pods import unscheduled_pods_using
from reconcilers.controllers.persistentvolume.store import Store
from reconcilers.controllers.persistentvolume.sync import Binder
from reconcilers.kinds import (
    EVENTS,
    PERSISTENTVOLUMECLAIMS,
    PERSISTENTVOLUMES,
    PODS,
    STORAGECLASSES,
    Object,
)

__all__ = ["PersistentVolumeBinderController"]


class PersistentVolumeBinderController(ControllerBase):
    name: ClassVar[str] = "persistentvolume-binder-controller"
    aliases: ClassVar[tuple[str, ...]] = ("persistentvolume-binder",)
    primary: ClassVar[ResourceType] = PERSISTENTVOLUMECLAIMS
    reads: ClassVar[tuple[ResourceType, ...]] = (
        PERSISTENTVOLUMECLAIMS,
        PERSISTENTVOLUMES,
        STORAGECLASSES,
    )
    # Upstream runs one claim worker and one volume worker beside each other; kcm has no flag.
    concurrency_flag: ClassVar[str] = "concurrent-persistentvolume-binder-syncs"
    default_concurrency: ClassVar[int] = 2
    # Matching a claim needs every volume: one leader per pool, as kcm's single binder.
    scope: ClassVar[Scope] = Scope.GLOBAL
    permissions: ClassVar[tuple[Permission, ...]] = (
        Permission.on(PERSISTENTVOLUMES, "get", "update"),
        Permission.on(PERSISTENTVOLUMES, "update", subresource="status"),
        Permission.on(PERSISTENTVOLUMECLAIMS, "get", "update"),
        Permission.on(PERSISTENTVOLUMECLAIMS, "update", subresource="status"),
        Permission.on(PODS, "list"),
        Permission.on(EVENTS, "create", "patch"),
    )
    flags: ClassVar[tuple[Flag, ...]] = (PVCLAIMBINDER_SYNC_PERIOD, ENABLE_DYNAMIC_PROVISIONING)
    enabled_by_default: ClassVar[bool] = True

    def __init__(self, context: Context) -> None:
        self._ctx = context
        options = context.options
        self._sync_period = float(
            options.get(PVCLAIMBINDER_SYNC_PERIOD.name, PVCLAIMBINDER_SYNC_PERIOD.default)
        )
        self._store = Store(context.cache, context.apis)
        pods = context.apis[PODS]

        async def unscheduled(claim: Object) -> list[str]:
            return await unscheduled_pods_using(context.kube, pods, claim)

        self._binder = Binder(
            self._store,
            context.kube,
            context.events,
            dynamic_provisioning=bool(
                options.get(ENABLE_DYNAMIC_PROVISIONING.name, ENABLE_DYNAMIC_PROVISIONING.default)
            ),
            unscheduled_pods=unscheduled,
        )

    def requests_for(
        self, resource: ResourceType, obj: Object | None, old: Object | None
    ) -> Iterable[Request]:
        target = obj if obj is not None else old
        if target is None:
            return []
        meta = target["metadata"]
        if resource == PERSISTENTVOLUMECLAIMS:
            requests = [Request(meta.get("namespace"), meta["name"], PERSISTENTVOLUMECLAIMS)]
            volume = target.get("spec", {}).get("volumeName")
            if obj is None and volume:
                requests.append(Request(None, volume, PERSISTENTVOLUMES))
            return requests
        if resource == PERSISTENTVOLUMES:
            requests = [Request(None, meta["name"], PERSISTENTVOLUMES)]
            ref = target.get("spec", {}).get("claimRef")
            if ref and (obj is None or self._claim_awaits(ref, meta["name"])):
                requests.append(
                    Request(ref.get("namespace"), ref.get("name", ""), PERSISTENTVOLUMECLAIMS)
                )
            return requests
        return []

    def _claim_awaits(self, ref: dict[str, str], volume: str) -> bool:
        claim = self._ctx.cache.get(
            PERSISTENTVOLUMECLAIMS, ref.get("namespace"), ref.get("name", "")
        )
        if claim is None:
            return False
        return not has_annotation(claim, ANN_BIND_COMPLETED) or (
            claim.get("spec", {}).get("volumeName") != volume
        )

    async def reconcile(self, request: Request) -> Result:
        if request.resource == PERSISTENTVOLUMES:
            volume = self._store.get(PERSISTENTVOLUMES, None, request.name)
            if volume is not None:
                await self._binder.sync_volume(volume)
            return Result()
        claim = self._store.get(PERSISTENTVOLUMECLAIMS, request.namespace, request.name)
        if claim is None:
            return Result()
        pending = await self._binder.sync_claim(claim)
        if pending is not None and self._sync_period > 0:
            return Result(requeue_after=self._sync_period)
        return Result()

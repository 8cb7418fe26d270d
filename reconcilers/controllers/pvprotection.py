"""The PV protection controller, as kube-controller-manager's
``persistentvolume-protection-controller`` (upstream's ``pvprotection`` package).

The apiserver's StorageObjectInUseProtection admission puts :data:`FINALIZER` on every
volume; this controller adds it to a live volume that lacks it and takes it off a volume being
deleted once no claim is bound to it (its phase, which the binder keeps, is not ``Bound``), so
a volume is not deleted from under its claim.

Requests name volumes (``Request(None, <name>)``), in the partition of their name's hash:
every process caches every volume (they are cluster-scoped) and reconciles the names of the
partitions it owns, as the namespace controller does with namespaces. Nothing but the volume
decides, so a global leader would only concentrate the work.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import ClassVar, Final

from bus.subjects import ResourceType
from kubus.kube import NotFoundError
from reconcilers.controller import Context, ControllerBase, Permission, Request, Result, Scope
from reconcilers.kinds import PERSISTENTVOLUMES, Object, clone

__all__ = [
    "FINALIZER",
    "PVProtectionController",
    "is_deletion_candidate",
    "is_volume_in_use",
    "needs_finalizer",
]

log = logging.getLogger(__name__)

FINALIZER: Final = "kubernetes.io/pv-protection"


def is_deletion_candidate(obj: Object) -> bool:
    """Being deleted, and still held by the finalizer."""
    meta = obj.get("metadata", {})
    return bool(meta.get("deletionTimestamp")) and FINALIZER in (meta.get("finalizers") or ())


def needs_finalizer(obj: Object) -> bool:
    """Live and without the finalizer."""
    meta = obj.get("metadata", {})
    return not meta.get("deletionTimestamp") and FINALIZER not in (meta.get("finalizers") or ())


def is_volume_in_use(volume: Object) -> bool:
    """Bound to a claim, as the binder records it in the volume's phase."""
    return bool(volume.get("status", {}).get("phase") == "Bound")


class PVProtectionController(ControllerBase):
    name: ClassVar[str] = "persistentvolume-protection-controller"
    aliases: ClassVar[tuple[str, ...]] = ("pv-protection",)
    primary: ClassVar[ResourceType] = PERSISTENTVOLUMES
    reads: ClassVar[tuple[ResourceType, ...]] = (PERSISTENTVOLUMES,)
    # kcm runs one worker and has no flag for it: the flag is kubus's own, the default kcm's.
    concurrency_flag: ClassVar[str] = "concurrent-pv-protection-syncs"
    default_concurrency: ClassVar[int] = 1
    scope: ClassVar[Scope] = Scope.PARTITIONED
    permissions: ClassVar[tuple[Permission, ...]] = (Permission.on(PERSISTENTVOLUMES, "update"),)
    enabled_by_default: ClassVar[bool] = True

    def __init__(self, context: Context) -> None:
        self._ctx = context

    def requests_for(
        self, resource: ResourceType, obj: Object | None, old: Object | None
    ) -> Iterable[Request]:
        if obj is None or not (needs_finalizer(obj) or is_deletion_candidate(obj)):
            return []
        return [Request(None, obj["metadata"]["name"])]

    async def reconcile(self, request: Request) -> Result:
        volume = self._ctx.cache.get(PERSISTENTVOLUMES, None, request.name)
        if volume is None:
            log.debug("PV %s not found, ignoring", request.name)
            return Result()
        if is_deletion_candidate(volume):
            if is_volume_in_use(volume):
                log.debug("Keeping PV %s because it is being used", request.name)
                return Result()
            await self._write(
                volume, [f for f in volume["metadata"]["finalizers"] if f != FINALIZER]
            )
            log.debug("Removed protection finalizer from PV %s", request.name)
            return Result()
        if needs_finalizer(volume):
            await self._write(volume, [*(volume["metadata"].get("finalizers") or ()), FINALIZER])
            log.debug("Added protection finalizer to PV %s", request.name)
        return Result()

    async def _write(self, volume: Object, finalizers: list[str]) -> None:
        """PUT with the cached resourceVersion: a stale cache is a conflict, retried."""
        updated = clone(volume)
        updated["metadata"]["finalizers"] = finalizers
        try:
            await self._ctx.kube.replace(
                self._ctx.apis[PERSISTENTVOLUMES], None, volume["metadata"]["name"], updated
            )
        except NotFoundError:
            return  # gone already: nothing left to protect

"""The binder's decisions for one claim or one volume: upstream's ``pv_controller.go``.

A claim without ``pv.kubernetes.io/bind-completed`` is bound: to the volume it names, to the
best Available match, or to one its StorageClass's provisioner makes (kubus hands every
claim to an external provisioner through ``volume.kubernetes.io/storage-provisioner``: it has
no in-tree volume plugins, as a kube-controller-manager without cloud providers has almost
none). A bound claim whose volume went away or went to another claim is ``Lost``. A volume
whose claim is gone is ``Released`` and its reclaim policy runs: Retain keeps it, Delete is
the external deleter's (its provisioner) job, Recycle has no recycler here and fails as
upstream's does without one.

Binding writes the volume first (``claimRef``, then phase Bound), then the claim
(``volumeName`` and the annotations, then phase Bound), each an update under the object's
resourceVersion: a second binder acting on the same volume gets a conflict, not a double bind.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Final

from kubus.kube import KubeApiError, KubeClient, NotFoundError
from reconcilers.controllers.persistentvolume.matching import (
    ANN_BETA_STORAGE_PROVISIONER,
    ANN_BIND_COMPLETED,
    ANN_BOUND_BY_CONTROLLER,
    ANN_DYNAMICALLY_PROVISIONED,
    ANN_MIGRATED_TO,
    ANN_SELECTED_NODE,
    ANN_STORAGE_PROVISIONER,
    annotations_of,
    claim_class,
    claim_has_class,
    claim_key,
    claim_ref,
    default_class,
    find_best_match,
    has_annotation,
    is_volume_bound_to_claim,
    storage_of,
    volume_does_not_satisfy,
    volume_mode_mismatch,
)
from reconcilers.controllers.persistentvolume.store import Store
from reconcilers.events import EventRecorder
from reconcilers.kinds import (
    PERSISTENTVOLUMECLAIMS,
    PERSISTENTVOLUMES,
    STORAGECLASSES,
    Object,
    clone,
)

__all__ = ["COMPONENT", "PENDING", "Binder", "Pending"]

log = logging.getLogger(__name__)

COMPONENT: Final = "persistentvolume-controller"
_NORMAL, _WARNING = "Normal", "Warning"


class Pending:
    """A claim left Pending: worth another look after the sync period (upstream's resync)."""


PENDING: Final = Pending()


class Binder:
    def __init__(
        self,
        store: Store,
        kube: KubeClient,
        events: EventRecorder,
        *,
        dynamic_provisioning: bool,
        unscheduled_pods: Callable[[Object], Any],
    ) -> None:
        self._store = store
        self._kube = kube
        self._events = events
        self._dynamic_provisioning = dynamic_provisioning
        self._unscheduled_pods = unscheduled_pods

    # -- claims ---------------------------------------------------------------------------

    async def sync_claim(self, claim: Object) -> Pending | None:
        if not has_annotation(claim, ANN_BIND_COMPLETED):
            return await self._sync_unbound_claim(claim)
        await self._sync_bound_claim(claim)
        return None

    async def _sync_unbound_claim(self, claim: Object) -> Pending | None:
        wanted = claim.get("spec", {}).get("volumeName") or ""
        if not wanted:
            return await self._bind_to_any(claim)
        volume = self._store.get(PERSISTENTVOLUMES, None, wanted)
        if volume is None:
            await self._update_claim_status(claim, "Pending", None)
            return PENDING
        if not volume.get("spec", {}).get("claimRef"):
            why = volume_does_not_satisfy(volume, claim)
            if why is not None:
                message = f'Cannot bind to requested volume "{wanted}": {why}'
                self._event(claim, _WARNING, "VolumeMismatch", message)
                await self._update_claim_status(claim, "Pending", None)
                return PENDING
            await self._bind(volume, claim)
            return None
        if is_volume_bound_to_claim(volume, claim):
            await self._bind(volume, claim)  # finish a binding the user or scheduler began
            return None
        message = f'volume "{wanted}" already bound to a different claim.'
        self._event(claim, _WARNING, "FailedBinding", message)
        if not has_annotation(claim, ANN_BOUND_BY_CONTROLLER):
            await self._update_claim_status(claim, "Pending", None)
            return PENDING
        ref = volume["spec"]["claimRef"]
        raise RuntimeError(
            f'invalid binding of claim "{claim_key(claim)}" to volume "{wanted}": volume already '
            f'claimed by "{ref.get("namespace", "")}/{ref.get("name", "")}"'
        )

    async def _bind_to_any(self, claim: Object) -> Pending | None:
        delay = self._delay_binding(claim)
        try:
            volume = find_best_match(claim, self._store.all(PERSISTENTVOLUMES), delay_binding=delay)
        except ValueError as error:
            raise RuntimeError(
                f'error finding PV for claim "{claim_key(claim)}": {error}'
            ) from error
        if volume is not None:
            await self._bind(volume, claim)
            return None
        if await self._assign_default_class(claim):
            return None  # the update comes back as an event and syncs the claim again
        if delay and not has_annotation(claim, ANN_SELECTED_NODE):
            await self._wait_for_first_consumer(claim)
        elif claim_class(claim):
            await self._provision(claim)
            return PENDING
        else:
            message = "no persistent volumes available for this claim and no storage class is set"
            self._event(claim, _NORMAL, "FailedBinding", message)
        await self._update_claim_status(claim, "Pending", None)
        return PENDING

    async def _sync_bound_claim(self, claim: Object) -> None:
        name = claim.get("spec", {}).get("volumeName") or ""
        if not name:
            message = (
                "Bound claim has lost reference to PersistentVolume. Data on the volume is lost!"
            )
            await self._claim_lost(claim, "ClaimLost", message)
            return
        volume = self._store.get(PERSISTENTVOLUMES, None, name)
        if volume is None:
            message = "Bound claim has lost its PersistentVolume. Data on the volume is lost!"
            await self._claim_lost(claim, "ClaimLost", message)
            return
        ref = volume.get("spec", {}).get("claimRef")
        if not ref or ref.get("uid") == claim["metadata"].get("uid"):
            await self._bind(volume, claim)  # re-bind a volume that came unbound; or a no-op
            return
        message = "Two claims are bound to the same volume, this one is bound incorrectly"
        await self._claim_lost(claim, "ClaimMisbound", message)

    async def _claim_lost(self, claim: Object, reason: str, message: str) -> None:
        if claim.get("status", {}).get("phase") == "Lost":
            return
        updated = await self._update_claim_status(claim, "Lost", None)
        self._event(updated, _WARNING, reason, message)

    # -- volumes --------------------------------------------------------------------------

    async def sync_volume(self, volume: Object) -> None:
        ref = volume.get("spec", {}).get("claimRef")
        if not ref or not ref.get("uid"):
            # unused, or reserved for a claim that has not bound yet (the claim's sync does)
            await self._update_volume_phase(volume, "Available")
            return
        claim = await self._claim_of(volume, ref)
        if claim is None:
            phase = volume.get("status", {}).get("phase")
            if phase not in ("Released", "Failed"):
                log.info(
                    "volume %s is released and reclaim policy %s will be executed",
                    volume["metadata"]["name"],
                    volume.get("spec", {}).get("persistentVolumeReclaimPolicy"),
                )
                volume = await self._update_volume_phase(volume, "Released")
            await self._reclaim(volume)
            return
        bound_to = claim.get("spec", {}).get("volumeName") or ""
        name = volume["metadata"]["name"]
        if not bound_to:
            if volume_mode_mismatch(claim, volume):
                self._event(
                    volume,
                    _WARNING,
                    "VolumeMismatch",
                    "Cannot bind PersistentVolume to requested PersistentVolumeClaim "
                    f'"{claim["metadata"]["name"]}" due to incompatible volumeMode.',
                )
                self._event(
                    claim,
                    _WARNING,
                    "VolumeMismatch",
                    f'Cannot bind PersistentVolume "{name}" to requested '
                    "PersistentVolumeClaim due to incompatible volumeMode.",
                )
            # else: the claim's sync finishes the binding; the controller enqueued it
            return
        if bound_to == name:
            await self._update_volume_phase(volume, "Bound")
            return
        dynamic = has_annotation(volume, ANN_DYNAMICALLY_PROVISIONED)
        if dynamic and volume.get("spec", {}).get("persistentVolumeReclaimPolicy") == "Delete":
            # provisioned for a claim that bound elsewhere: not needed
            if volume.get("status", {}).get("phase") not in ("Released", "Failed"):
                volume = await self._update_volume_phase(volume, "Released")
            await self._reclaim(volume)
            return
        await self._unbind_volume(volume)

    async def _claim_of(self, volume: Object, ref: dict[str, Any]) -> Object | None:
        """The volume's claim, if it still exists: the cache may be behind a provisioner or the
        scheduler, so a claim the cache lacks (or holds with another uid) is asked for."""
        namespace, name = ref.get("namespace", ""), ref.get("name", "")
        claim = self._store.get(PERSISTENTVOLUMECLAIMS, namespace, name)
        phase = volume.get("status", {}).get("phase")
        stale = claim is not None and claim["metadata"].get("uid") != ref.get("uid")
        if (claim is None and phase not in ("Released", "Failed")) or stale:
            try:
                claim = await self._kube.get(
                    self._store.api(PERSISTENTVOLUMECLAIMS), namespace, name
                )
            except NotFoundError:
                return None
        if claim is not None and claim["metadata"].get("uid") != ref.get("uid"):
            return None  # deleted and created again under the same name
        return claim

    async def _reclaim(self, volume: Object) -> None:
        if annotations_of(volume).get(ANN_MIGRATED_TO):
            return  # the CSI driver's external provisioner reclaims it
        policy = volume.get("spec", {}).get("persistentVolumeReclaimPolicy")
        if policy == "Retain":
            return
        if policy == "Recycle":
            await self._fail_volume(
                volume, "VolumeFailedRecycle", "No recycler plugin found for the volume!"
            )
        elif policy == "Delete":
            error = _in_tree_deleter_error(volume)
            if error is not None:
                await self._fail_volume(volume, "VolumeFailedDelete", error)
            # else: an external deleter (the volume's provisioner) deletes it
        else:
            await self._fail_volume(
                volume,
                "VolumeUnknownReclaimPolicy",
                "Volume has unrecognized PersistentVolumeReclaimPolicy",
            )

    async def _fail_volume(self, volume: Object, reason: str, message: str) -> None:
        if volume.get("status", {}).get("phase") == "Failed":
            return
        updated = await self._update_volume_phase(volume, "Failed", message)
        self._event(updated, _WARNING, reason, message)

    # -- binding --------------------------------------------------------------------------

    async def _bind(self, volume: Object, claim: Object) -> None:
        volume = await self._bind_volume_to_claim(volume, claim)
        volume = await self._update_volume_phase(volume, "Bound")
        claim = await self._bind_claim_to_volume(claim, volume)
        await self._update_claim_status(claim, "Bound", volume)

    async def _bind_volume_to_claim(self, volume: Object, claim: Object) -> Object:
        ref = volume.get("spec", {}).get("claimRef") or {}
        meta = claim["metadata"]
        same = (ref.get("name"), ref.get("namespace"), ref.get("uid")) == (
            meta["name"],
            meta.get("namespace"),
            meta.get("uid"),
        )
        mark = not is_volume_bound_to_claim(volume, claim) and not has_annotation(
            volume, ANN_BOUND_BY_CONTROLLER
        )
        if same and not mark:
            return volume
        updated = clone(volume)
        if not same:
            updated["spec"]["claimRef"] = claim_ref(claim)
        if mark:
            updated["metadata"].setdefault("annotations", {})[ANN_BOUND_BY_CONTROLLER] = "yes"
        log.info("claim %s bound to volume %s", claim_key(claim), volume["metadata"]["name"])
        return await self._write(PERSISTENTVOLUMES, updated)

    async def _bind_claim_to_volume(self, claim: Object, volume: Object) -> Object:
        updated = clone(claim)
        notes = updated["metadata"].setdefault("annotations", {})
        dirty = False
        if updated.get("spec", {}).get("volumeName") != volume["metadata"]["name"]:
            updated["spec"]["volumeName"] = volume["metadata"]["name"]
            notes.setdefault(ANN_BOUND_BY_CONTROLLER, "yes")
            dirty = True
        if ANN_BIND_COMPLETED not in notes:
            notes[ANN_BIND_COMPLETED] = "yes"
            dirty = True
        if not dirty:
            return claim
        log.info("volume %s bound to claim %s", volume["metadata"]["name"], claim_key(claim))
        return await self._write(PERSISTENTVOLUMECLAIMS, updated)

    async def _unbind_volume(self, volume: Object) -> None:
        """Roll back a binding the claim did not take (two binders, one claim)."""
        updated = clone(volume)
        if has_annotation(volume, ANN_BOUND_BY_CONTROLLER):
            updated["spec"].pop("claimRef", None)
            notes = updated["metadata"].get("annotations") or {}
            notes.pop(ANN_BOUND_BY_CONTROLLER, None)
            if not notes:
                updated["metadata"].pop("annotations", None)
        else:
            updated["spec"]["claimRef"]["uid"] = ""  # pre-bound by the user: keep the name
        written = await self._write(PERSISTENTVOLUMES, updated)
        await self._update_volume_phase(written, "Available")

    # -- classes and provisioning ---------------------------------------------------------

    def _delay_binding(self, claim: Object) -> bool:
        name = claim_class(claim)
        if not name:
            return False
        cls = self._store.get(STORAGECLASSES, None, name)
        if cls is None:
            return False
        mode = cls.get("volumeBindingMode")
        if mode is None:
            raise RuntimeError(f'VolumeBindingMode not set for StorageClass "{name}"')
        return bool(mode == "WaitForFirstConsumer")

    async def _assign_default_class(self, claim: Object) -> bool:
        """Retroactive default class: a claim created before any class was default gets it."""
        if claim_has_class(claim):
            return False
        chosen = default_class(self._store.all(STORAGECLASSES))
        if chosen is None:
            return False
        updated = clone(claim)
        updated["spec"]["storageClassName"] = chosen["metadata"]["name"]
        await self._write(PERSISTENTVOLUMECLAIMS, updated)
        return True

    async def _wait_for_first_consumer(self, claim: Object) -> None:
        pods = await self._unscheduled_pods(claim)
        if not pods:
            message = "waiting for first consumer to be created before binding"
            self._event(claim, _NORMAL, "WaitForFirstConsumer", message)
        elif len(pods) == 1:
            self._event(
                claim, _NORMAL, "WaitForPodScheduled", f"waiting for pod {pods[0]} to be scheduled"
            )
        else:
            message = f"waiting for pods {','.join(pods)} to be scheduled"
            self._event(claim, _NORMAL, "WaitForPodScheduled", message)

    async def _provision(self, claim: Object) -> None:
        if not self._dynamic_provisioning:
            return
        name = claim_class(claim)
        cls = self._store.get(STORAGECLASSES, None, name)
        if cls is None:
            message = f'storageclass.storage.k8s.io "{name}" not found'
            self._event(claim, _WARNING, "ProvisioningFailed", message)
            return
        provisioner = str(cls.get("provisioner", ""))
        if provisioner.startswith("kubernetes.io/"):
            # an in-tree plugin's name; kubus has none to provision with
            message = f"no volume plugin matched name: {provisioner}"
            self._event(claim, _WARNING, "ProvisioningFailed", message)
            return
        notes = annotations_of(claim)
        if notes.get(ANN_STORAGE_PROVISIONER) != provisioner:
            updated = clone(claim)
            new = updated["metadata"].setdefault("annotations", {})
            new[ANN_BETA_STORAGE_PROVISIONER] = provisioner
            new[ANN_STORAGE_PROVISIONER] = provisioner
            try:
                claim = await self._write(PERSISTENTVOLUMECLAIMS, updated)
            except KubeApiError as error:
                self._event(claim, _WARNING, "ProvisioningFailed", f"Error saving claim: {error}")
                raise
        message = (
            f"Waiting for a volume to be created either by the external provisioner "
            f"'{provisioner}' or manually by the system administrator. If volume creation is "
            "delayed, please verify that the provisioner is running and correctly registered."
        )
        self._event(claim, _NORMAL, "ExternalProvisioning", message)

    # -- status writes --------------------------------------------------------------------

    async def _update_claim_status(
        self, claim: Object, phase: str, volume: Object | None
    ) -> Object:
        status = claim.get("status") or {}
        new: dict[str, Any] = dict(status)
        if status.get("phase") != phase:
            new["phase"] = phase
        if volume is None:
            for field in ("accessModes", "capacity", "currentVolumeAttributesClassName"):
                new.pop(field, None)
        else:
            vspec = volume.get("spec", {})
            if status.get("accessModes") != vspec.get("accessModes"):
                new["accessModes"] = vspec.get("accessModes")
            if status.get("phase") != phase:
                # only when becoming Bound: a later difference may be a resize in progress
                capacity = vspec.get("capacity") or {}
                if "storage" not in capacity:
                    name = volume["metadata"]["name"]
                    raise RuntimeError(f'PersistentVolume "{name}" is without a storage capacity')
                if storage_of(status.get("capacity")) != storage_of(capacity) or "storage" not in (
                    status.get("capacity") or {}
                ):
                    new["capacity"] = dict(capacity)
            attributes = vspec.get("volumeAttributesClassName")
            if (
                status.get("phase") == "Pending"
                and phase == "Bound"
                and status.get("currentVolumeAttributesClassName") != attributes
            ):
                if attributes is None:
                    new.pop("currentVolumeAttributesClassName", None)
                else:
                    new["currentVolumeAttributesClassName"] = attributes
        if new == status:
            return claim
        updated = clone(claim)
        updated["status"] = new
        written = await self._write(PERSISTENTVOLUMECLAIMS, updated, subresource="status")
        log.info("claim %s entered phase %s", claim_key(claim), phase)
        return written

    async def _update_volume_phase(self, volume: Object, phase: str, message: str = "") -> Object:
        if volume.get("status", {}).get("phase") == phase:
            return volume
        updated = clone(volume)
        status = updated.setdefault("status", {})
        status["phase"] = phase
        if message:
            status["message"] = message
        else:
            status.pop("message", None)
        written = await self._write(PERSISTENTVOLUMES, updated, subresource="status")
        log.info("volume %s entered phase %s", volume["metadata"]["name"], phase)
        return written

    async def _write(
        self, resource: Any, body: Object, *, subresource: str | None = None
    ) -> Object:
        meta = body["metadata"]
        written = await self._kube.replace(
            self._store.api(resource),
            meta.get("namespace"),
            meta["name"],
            body,
            subresource=subresource,
        )
        self._store.remember(resource, written)
        return written

    def _event(self, obj: Object, event_type: str, reason: str, message: str) -> None:
        kind = "PersistentVolume" if "namespace" not in obj["metadata"] else "PersistentVolumeClaim"
        self._events.record(
            {**obj, "apiVersion": "v1", "kind": kind},
            event_type,
            reason,
            message,
            component=COMPONENT,
        )


def _in_tree_deleter_error(volume: Object) -> str | None:
    """Why kcm would fail to delete this volume itself (None: an external deleter's)."""
    provisioned_by = annotations_of(volume).get(ANN_DYNAMICALLY_PROVISIONED)
    if provisioned_by:
        if provisioned_by.startswith("kubernetes.io/"):
            return "no deletable volume plugin matched"
        return None
    if volume.get("spec", {}).get("csi") is not None:
        return None
    name = volume["metadata"]["name"]
    return (
        f'error getting deleter volume plugin for volume "{name}": '
        "no deletable volume plugin matched"
    )

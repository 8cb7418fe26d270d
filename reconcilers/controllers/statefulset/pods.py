"""Pod and claim writes of the StatefulSet controller (upstream's stateful_pod_control.go).

Creates a pod's claims before the pod, enforces a pod's identity and storage, keeps its
claims' owner references as the retention policy asks, deletes pods, and records upstream's
events (``SuccessfulCreate``/``FailedCreate``, ``SuccessfulUpdate``/``FailedUpdate``,
``SuccessfulDelete``/``FailedDelete`` on the StatefulSet, for pods and claims alike). Reads
(claims, pods) come from the cache, as upstream's listers; every write is recorded in the
:class:`~reconcilers.controllers.statefulset.consistency.WriteTracker`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Final

from bus.subjects import ResourceType
from kubus.kube import AlreadyExistsError, ConflictError, KubeApiError, NotFoundError
from reconcilers.controller import Context, Request
from reconcilers.controllers.statefulset.consistency import WriteTracker
from reconcilers.controllers.statefulset.utils import (
    RETAIN,
    claim_name,
    claims_for,
    has_stale_owner_ref,
    has_unexpected_controller,
    identity_matches,
    is_claim_owner_up_to_date,
    ordinal_of,
    retention_policy,
    storage_matches,
    update_claim_owner_refs,
    update_identity,
    update_storage,
)
from reconcilers.kinds import PERSISTENTVOLUMECLAIMS, PODS, Object, clone

__all__ = ["COMPONENT", "AggregateError", "StatefulPodControl", "aggregate"]

log = logging.getLogger(__name__)

COMPONENT: Final = "statefulset-controller"
_UPDATE_ATTEMPTS: Final = 5  # retry.RetryOnConflict with client-go's DefaultBackoff


class AggregateError(Exception):
    """Several errors, worded as apimachinery's aggregate (``[a, b]``)."""

    def __init__(self, errors: Sequence[Exception]) -> None:
        self.errors = tuple(errors)
        texts = list(dict.fromkeys(_text(e) for e in errors))
        super().__init__(texts[0] if len(texts) == 1 else f"[{', '.join(texts)}]")


def aggregate(errors: Sequence[Exception]) -> Exception | None:
    if not errors:
        return None
    return errors[0] if len(errors) == 1 else AggregateError(errors)


def _text(error: BaseException) -> str:
    """An error as Go prints it: the apiserver's message, without our status prefix."""
    if isinstance(error, KubeApiError) and error.message:
        return error.message
    return str(error)


class _ClaimError(Exception):
    pass


class StatefulPodControl:
    """The pod and claim writes of one sync's StatefulSet."""

    def __init__(self, context: Context, tracker: WriteTracker) -> None:
        self._ctx = context
        self._tracker = tracker

    # --- events -------------------------------------------------------------------------

    def _pod_event(self, verb: str, sts: Object, pod: Object, error: BaseException | None) -> None:
        title = verb.title()
        name, set_name = pod["metadata"].get("name"), sts["metadata"]["name"]
        if error is None:
            message = f"{title} Pod {name} in StatefulSet {set_name} successful"
            self._ctx.events.record(
                sts, "Normal", f"Successful{title}", message, component=COMPONENT
            )
        else:
            message = f"{title} Pod {name} in StatefulSet {set_name} failed error: {_text(error)}"
            self._ctx.events.record(sts, "Warning", f"Failed{title}", message, component=COMPONENT)

    def _claim_event(
        self, verb: str, sts: Object, pod: Object, claim: Object, error: BaseException | None
    ) -> None:
        title = verb.title()
        claim_name_, set_name = claim["metadata"]["name"], sts["metadata"]["name"]
        pod_name_ = pod["metadata"].get("name")
        if error is None:
            message = (
                f"{title} Claim {claim_name_} Pod {pod_name_} in StatefulSet {set_name} success"
            )
            self._ctx.events.record(
                sts, "Normal", f"Successful{title}", message, component=COMPONENT
            )
        else:
            message = (
                f"{title} Claim {claim_name_} for Pod {pod_name_} in StatefulSet {set_name} "
                f"failed error: {_text(error)}"
            )
            self._ctx.events.record(sts, "Warning", f"Failed{title}", message, component=COMPONENT)

    # --- bookkeeping --------------------------------------------------------------------

    def _wrote(self, sts: Object, resource: ResourceType, obj: Object) -> None:
        self._tracker.wrote(Request.of(sts).key, sts["metadata"]["uid"], resource, obj)

    def _claim(self, namespace: str | None, name: str) -> Object | None:
        return self._ctx.cache.get(PERSISTENTVOLUMECLAIMS, namespace, name)

    # --- pods ---------------------------------------------------------------------------

    async def create_pod(self, sts: Object, pod: Object) -> None:
        """``CreateStatefulPod``: the claims first, then the pod, then the claims' owners."""
        try:
            await self._create_claims(sts, pod)
        except Exception as error:
            self._pod_event("create", sts, pod, error)
            raise
        namespace = sts["metadata"].get("namespace")
        refused: KubeApiError | None = None
        try:
            created = await self._ctx.kube.create(self._ctx.apis[PODS], namespace, pod)
            self._wrote(sts, PODS, created)
        except AlreadyExistsError:
            raise
        except KubeApiError as failed:
            refused = failed
        try:
            await self.update_claims_for_retention(sts, pod)
        except Exception as failed:
            self._pod_event("update", sts, pod, failed)
            raise
        self._pod_event("create", sts, pod, refused)
        if refused is not None:
            raise refused

    async def update_pod(self, sts: Object, pod: Object) -> None:
        """``UpdateStatefulPod``: fix identity, storage and claim owners, then write the pod if
        any was off, retrying conflicts on a fresh read."""
        attempted = False
        error: Exception | None = None
        pod = clone(pod)
        for attempt in range(_UPDATE_ATTEMPTS):
            consistent = True
            if not identity_matches(sts, pod):
                update_identity(sts, pod)
                consistent = False
            try:
                if not storage_matches(sts, pod):
                    update_storage(sts, pod)
                    consistent = False
                    await self._create_claims(sts, pod)
                if not self.claims_match_retention(sts, pod):
                    await self.update_claims_for_retention(sts, pod)
                    consistent = False
            except Exception as failed:
                self._pod_event("update", sts, pod, failed)
                raise
            if consistent:
                return
            attempted = True
            meta = pod["metadata"]
            try:
                updated = await self._ctx.kube.replace(
                    self._ctx.apis[PODS], meta.get("namespace"), meta["name"], pod
                )
            except ConflictError as conflict:
                error = conflict
                if attempt == _UPDATE_ATTEMPTS - 1:
                    break
                try:
                    pod = await self._ctx.kube.get(
                        self._ctx.apis[PODS], meta.get("namespace"), meta["name"]
                    )
                except KubeApiError as read_error:
                    log.warning("error getting updated pod %s: %s", meta["name"], read_error)
                continue
            except KubeApiError as failed:
                error = failed
                break
            self._wrote(sts, PODS, updated)
            error = None
            break
        if attempted:
            self._pod_event("update", sts, pod, error)
        if error is not None:
            raise error

    async def delete_pod(self, sts: Object, pod: Object) -> None:
        """``DeleteStatefulPod``: a pod already gone counts as deleted."""
        meta = pod["metadata"]
        try:
            await self._ctx.kube.delete(self._ctx.apis[PODS], meta.get("namespace"), meta["name"])
        except NotFoundError:
            pass
        except KubeApiError as error:
            self._pod_event("delete", sts, pod, error)
            raise
        self._tracker.deleted(Request.of(sts).key, sts["metadata"]["uid"], PODS, pod)
        self._pod_event("delete", sts, pod, None)

    # --- claims -------------------------------------------------------------------------

    def _template_claims(self, sts: Object, pod: Object) -> list[tuple[str, Object | None]]:
        ordinal = ordinal_of(pod)
        namespace = sts["metadata"].get("namespace")
        return [
            (name, self._claim(namespace, name))
            for name in (
                claim_name(sts, template, ordinal)
                for template in sts.get("spec", {}).get("volumeClaimTemplates") or []
            )
        ]

    def claims_match_retention(self, sts: Object, pod: Object) -> bool:
        """``ClaimsMatchRetentionPolicy``: missing claims are left to a later sync."""
        return all(
            claim is None or is_claim_owner_up_to_date(claim, sts, pod)
            for _, claim in self._template_claims(sts, pod)
        )

    async def update_claims_for_retention(self, sts: Object, pod: Object) -> None:
        """``UpdatePodClaimForRetentionPolicy``."""
        for name, claim in self._template_claims(sts, pod):
            if claim is None:
                continue
            if has_unexpected_controller(claim, sts, pod):
                self._ctx.events.record(
                    sts,
                    "Warning",
                    "ConflictingController",
                    f"PersistentVolumeClaim {name} has a conflicting OwnerReference that acts "
                    "as a manging controller, the retention policy is ignored for this claim",
                    component=COMPONENT,
                )
            if is_claim_owner_up_to_date(claim, sts, pod):
                continue
            fresh = clone(claim)
            update_claim_owner_refs(fresh, sts, pod)
            meta = fresh["metadata"]
            try:
                updated = await self._ctx.kube.replace(
                    self._ctx.apis[PERSISTENTVOLUMECLAIMS], meta.get("namespace"), name, fresh
                )
            except KubeApiError as error:
                raise _ClaimError(
                    f"could not update claim {name} for delete policy ownerRefs: {_text(error)}"
                ) from error
            self._wrote(sts, PERSISTENTVOLUMECLAIMS, updated)

    def claim_is_stale(self, sts: Object, pod: Object) -> bool:
        """``PodClaimIsStale``: with whenScaled=Delete, a claim still referencing an earlier
        pod of this name blocks the new pod until the garbage collector has removed it."""
        if retention_policy(sts)[1] == RETAIN:
            return False
        for claim in claims_for(sts, pod).values():
            cached = self._claim(claim["metadata"].get("namespace"), claim["metadata"]["name"])
            if cached is not None and has_stale_owner_ref(cached, pod, pod=True):
                return True
        return False

    async def create_missing_claims(self, sts: Object, pod: Object) -> None:
        await self._create_claims(sts, pod)
        try:
            await self.update_claims_for_retention(sts, pod)
        except Exception as error:
            self._pod_event("update", sts, pod, error)
            raise

    async def _create_claims(self, sts: Object, pod: Object) -> None:
        errors: list[Exception] = []
        api = self._ctx.apis[PERSISTENTVOLUMECLAIMS]
        for claim in claims_for(sts, pod).values():
            meta = claim["metadata"]
            cached = self._claim(meta.get("namespace"), meta["name"])
            if cached is not None:
                if cached["metadata"].get("deletionTimestamp"):
                    errors.append(_ClaimError(f"pvc {meta['name']} is being deleted"))
                continue
            try:
                created = await self._ctx.kube.create(api, meta.get("namespace"), claim)
            except AlreadyExistsError as error:
                errors.append(_ClaimError(f"failed to create PVC {meta['name']}: {_text(error)}"))
                continue
            except KubeApiError as error:
                errors.append(_ClaimError(f"failed to create PVC {meta['name']}: {_text(error)}"))
                self._claim_event("create", sts, pod, claim, error)
                continue
            self._wrote(sts, PERSISTENTVOLUMECLAIMS, created)
            self._claim_event("create", sts, pod, claim, None)
        failure = aggregate(errors)
        if failure is not None:
            raise failure

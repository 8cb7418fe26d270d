"""The PVC protection controller, as kube-controller-manager's
``persistentvolumeclaim-protection-controller`` (upstream's ``pvcprotection`` package).

The apiserver's StorageObjectInUseProtection admission puts :data:`FINALIZER` on every claim;
this controller adds it to a live claim that lacks it (one made before the admission was on, or
a finalizer taken off by hand) and takes it off a claim being deleted once no pod uses it, so
the volume under a running pod is never released.

A pod uses a claim when it is scheduled (``spec.nodeName``: the kubelet starts no pod whose
claim is being deleted, so an unscheduled one never will) and a volume names the claim, whatever
the pod's phase: a finished pod may still have it mounted until the kubelet tears it down. A
generic ephemeral volume (claim ``<pod>-<volume>``, controlled by the pod) counts only while
the pod is not shut down (deleted with grace 0): the claim belongs to the pod, and waiting for
the pod object to go could wait for ever on a pod finalizer waiting for the claim.

"Unused" in the cache is confirmed with a live LIST of the namespace's pods before the
finalizer goes: a pod may be in the apiserver and not yet in the cache. As upstream's lazy live
pod list (one LIST per batch of a namespace's claims), one LIST serves every claim of the
namespace whose last change was queued before the LIST started: a burst of deletions costs one
LIST, and a pod gone since (a change that queues the claim again) is never judged by a list
that still shows it.

Pod changes that can free a claim (the pod deleted, finished, or not scheduled) queue the
claims its volumes name; an update that hides a delete and a re-create under the same name
queues the old pod's claims too. Requests name claims (``namespace/name``).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar, Final

import msgspec

from bus.subjects import ResourceType
from kubus.kube import NotFoundError
from reconcilers.cache import controller_of
from reconcilers.controller import Context, ControllerBase, Permission, Request, Result, Scope
from reconcilers.kinds import PERSISTENTVOLUMECLAIMS, PODS, Object, clone

__all__ = [
    "FINALIZER",
    "PVCProtectionController",
    "claim_names",
    "is_deletion_candidate",
    "needs_finalizer",
    "pod_is_shut_down",
    "pod_is_terminated",
    "pod_uses_claim",
    "requests_for_pod",
]

log = logging.getLogger(__name__)

FINALIZER: Final = "kubernetes.io/pvc-protection"
_PAGE: Final = 500
# A namespace's live pod list is reused this long at most, by claims queued before it started:
# enough for a burst of deletions, short enough to hold little memory.
_LIVE_LIST_TTL: Final = 10.0


def is_deletion_candidate(obj: Object) -> bool:
    """Being deleted, and still held by the finalizer."""
    meta = obj.get("metadata", {})
    return bool(meta.get("deletionTimestamp")) and FINALIZER in (meta.get("finalizers") or ())


def needs_finalizer(obj: Object) -> bool:
    """Live and without the finalizer."""
    meta = obj.get("metadata", {})
    return not meta.get("deletionTimestamp") and FINALIZER not in (meta.get("finalizers") or ())


def _not_running(statuses: Iterable[Object] | None) -> bool:
    return all(
        status.get("state", {}).get("terminated") is not None
        or status.get("state", {}).get("waiting") is not None
        for status in statuses or ()
    )


def pod_is_terminated(pod: Object) -> bool:
    """Finished, or deleted with no container running (upstream's ``IsPodTerminated``)."""
    status = pod.get("status", {})
    if status.get("phase") in ("Succeeded", "Failed"):
        return True
    return (
        bool(pod.get("metadata", {}).get("deletionTimestamp"))
        and _not_running(status.get("initContainerStatuses"))
        and _not_running(status.get("containerStatuses"))
        and _not_running(status.get("ephemeralContainerStatuses"))
    )


def pod_is_shut_down(pod: Object) -> bool:
    """Deleted with a zero grace period: the kubelet is done with it, or it was forced."""
    meta = pod.get("metadata", {})
    return bool(meta.get("deletionTimestamp")) and meta.get("deletionGracePeriodSeconds") == 0


def claim_names(pod: Object) -> list[str]:
    """The claims a pod's volumes name: ``claimName``s and ephemeral ``<pod>-<volume>``."""
    names: list[str] = []
    for volume in pod.get("spec", {}).get("volumes") or ():
        source = volume.get("persistentVolumeClaim")
        if source is not None:
            names.append(source.get("claimName", ""))
        elif volume.get("ephemeral") is not None:
            names.append(f"{pod['metadata']['name']}-{volume.get('name', '')}")
    return names


def pod_uses_claim(pod: Object, claim: Object) -> bool:
    """Whether ``pod`` keeps ``claim`` (same namespace) from going: see the module docstring."""
    if not pod.get("spec", {}).get("nodeName"):
        return False
    name = claim["metadata"]["name"]
    pod_name = pod["metadata"]["name"]
    for volume in pod["spec"].get("volumes") or ():
        source = volume.get("persistentVolumeClaim")
        if source is not None and source.get("claimName") == name:
            return True
        if (
            volume.get("ephemeral") is not None
            and f"{pod_name}-{volume.get('name', '')}" == name
            and not pod_is_shut_down(pod)
        ):
            owner = controller_of(claim)
            if owner is not None and owner.get("uid") == pod["metadata"].get("uid"):
                return True
    return False


def requests_for_pod(pod: Object | None, old: Object | None) -> list[Request]:
    """The claims a pod's change may free (``pod`` None: deleted, ``old`` its last state)."""
    requests: list[Request] = []
    current = pod if pod is not None else old
    if current is not None:
        requests.extend(_claims_freed_by(current, deleted=pod is None))
    # An update may hide a delete and a re-create under the same name: the old pod is gone.
    if (
        pod is not None
        and old is not None
        and old["metadata"].get("uid") != pod["metadata"].get("uid")
    ):
        requests.extend(_claims_freed_by(old, deleted=True))
    return requests


def _claims_freed_by(pod: Object, *, deleted: bool) -> Iterator[Request]:
    if not deleted and not pod_is_terminated(pod) and pod.get("spec", {}).get("nodeName"):
        return
    namespace = pod["metadata"].get("namespace")
    for name in claim_names(pod):
        yield Request(namespace, name)


@dataclass(frozen=True)
class _LiveList:
    """A namespace's pods as a live LIST returned them, in the shape ``pod_uses_claim`` reads."""

    started: float  # monotonic, when the LIST was sent
    pods: tuple[Object, ...]


class _ClaimSource(msgspec.Struct, rename="camel"):
    claim_name: str = ""


class _Volume(msgspec.Struct, rename="camel"):
    name: str = ""
    persistent_volume_claim: _ClaimSource | None = None
    ephemeral: msgspec.Raw | None = None


class _PodMeta(msgspec.Struct, rename="camel"):
    name: str = ""
    uid: str = ""
    deletion_timestamp: str | None = None
    deletion_grace_period_seconds: int | None = None


class _PodSpec(msgspec.Struct, rename="camel"):
    node_name: str = ""
    volumes: list[_Volume] | None = None


class _Pod(msgspec.Struct):
    metadata: _PodMeta = msgspec.field(default_factory=_PodMeta)
    spec: _PodSpec = msgspec.field(default_factory=_PodSpec)


_decode_pod = msgspec.json.Decoder(_Pod).decode


def _live_pod(raw: bytes) -> Object:
    """A listed pod reduced to what decides whether it uses a claim (a pod is kilobytes)."""
    pod = _decode_pod(raw)
    volumes: list[dict[str, Any]] = []
    for volume in pod.spec.volumes or ():
        entry: dict[str, Any] = {"name": volume.name}
        if volume.persistent_volume_claim is not None:
            entry["persistentVolumeClaim"] = {
                "claimName": volume.persistent_volume_claim.claim_name
            }
        elif volume.ephemeral is not None:
            entry["ephemeral"] = {}
        volumes.append(entry)
    meta = pod.metadata
    return {
        "metadata": {
            "name": meta.name,
            "uid": meta.uid,
            "deletionTimestamp": meta.deletion_timestamp,
            "deletionGracePeriodSeconds": meta.deletion_grace_period_seconds,
        },
        "spec": {"nodeName": pod.spec.node_name, "volumes": volumes},
    }


class PVCProtectionController(ControllerBase):
    name: ClassVar[str] = "persistentvolumeclaim-protection-controller"
    aliases: ClassVar[tuple[str, ...]] = ("pvc-protection",)
    primary: ClassVar[ResourceType] = PERSISTENTVOLUMECLAIMS
    reads: ClassVar[tuple[ResourceType, ...]] = (PERSISTENTVOLUMECLAIMS, PODS)
    # kcm runs one worker and has no flag for it: the flag is kubus's own, the default kcm's.
    concurrency_flag: ClassVar[str] = "concurrent-pvc-protection-syncs"
    default_concurrency: ClassVar[int] = 1
    # A claim and the pods that use it share a namespace, so a partition sees them all.
    scope: ClassVar[Scope] = Scope.PARTITIONED
    permissions: ClassVar[tuple[Permission, ...]] = (
        Permission.on(PERSISTENTVOLUMECLAIMS, "update"),
        Permission.on(PODS, "list"),  # the live check before a finalizer goes
    )
    enabled_by_default: ClassVar[bool] = True

    def __init__(self, context: Context, clock: Callable[[], float] = time.monotonic) -> None:
        self._ctx = context
        self._clock = clock
        # Per claim: when a change last queued it (a live list started later may serve it).
        self._queued_at: dict[Request, float] = {}
        self._live: dict[str, _LiveList] = {}

    def forget(self, matches: Callable[[Request], bool]) -> None:
        for request in [r for r in self._queued_at if matches(r)]:
            del self._queued_at[request]

    def requests_for(
        self, resource: ResourceType, obj: Object | None, old: Object | None
    ) -> Iterable[Request]:
        if resource == PODS:
            requests = requests_for_pod(obj, old)
        elif obj is None:
            if old is not None:
                self._queued_at.pop(Request.of(old), None)
            return []
        elif needs_finalizer(obj) or is_deletion_candidate(obj):
            requests = [Request.of(obj)]
        else:
            return []
        now = self._clock()
        for request in requests:
            self._queued_at[request] = now
        return requests

    async def reconcile(self, request: Request) -> Result:
        try:
            await self._sync(request)
        finally:
            # Done with this change: a later one queues the claim again. (One that came while
            # this ran is dropped too, so the claim's next look makes a list of its own.)
            self._queued_at.pop(request, None)
        return Result()

    async def _sync(self, request: Request) -> None:
        claim = self._ctx.cache.get(PERSISTENTVOLUMECLAIMS, request.namespace, request.name)
        if claim is None:
            log.debug("PVC %s not found, ignoring", request.key)
            return
        if is_deletion_candidate(claim):
            if await self._in_use(request, claim):
                log.debug("Keeping PVC %s because it is being used", request.key)
                return
            await self._write(claim, [f for f in claim["metadata"]["finalizers"] if f != FINALIZER])
            log.info("Removed protection finalizer from PVC %s", request.key)
            return
        if needs_finalizer(claim):
            await self._write(claim, [*(claim["metadata"].get("finalizers") or ()), FINALIZER])
            log.debug("Added protection finalizer to PVC %s", request.key)

    async def _in_use(self, request: Request, claim: Object) -> bool:
        """The cache first (a user found there settles it), then a live list."""
        for pod in self._ctx.cache.in_namespace(PODS, request.namespace):
            if pod_uses_claim(pod, claim):
                log.debug("Pod %s/%s uses PVC %s", request.namespace, _name(pod), request.key)
                return True
        log.debug("No Pod using PVC %s was found in the cache", request.key)
        for pod in (await self._live_pods(request)).pods:
            if pod_uses_claim(pod, claim):
                log.debug("Pod %s/%s uses PVC %s", request.namespace, _name(pod), request.key)
                return True
        log.debug("PVC %s is unused", request.key)
        return False

    async def _live_pods(self, request: Request) -> _LiveList:
        """The namespace's pods from the apiserver. A list started after the claim's last
        change was queued is reused: it is newer than the claim's deletion (any pod that may
        still use the claim existed by then) and than every pod change that queued the claim."""
        namespace = request.namespace or ""
        now = self._clock()
        for stale in [n for n, live in self._live.items() if now - live.started > _LIVE_LIST_TTL]:
            del self._live[stale]
        for old in [r for r, at in self._queued_at.items() if now - at > _LIVE_LIST_TTL]:
            del self._queued_at[old]  # too old for any list kept: no reuse without it either
        queued = self._queued_at.get(request, math.inf)
        cached = self._live.get(namespace)
        if cached is not None and cached.started > queued:
            return cached
        started = self._clock()
        pods: list[Object] = []
        token: str | None = None
        while True:
            page = await self._ctx.kube.list_page(
                self._ctx.apis[PODS], limit=_PAGE, continue_token=token, namespace=namespace
            )
            pods.extend(_live_pod(raw) for raw in page.items)
            token = page.metadata.continue_
            if not token:
                break
        live = _LiveList(started, tuple(pods))
        self._live[namespace] = live
        return live

    async def _write(self, claim: Object, finalizers: list[str]) -> None:
        """PUT with the cached resourceVersion: a stale cache is a conflict, retried."""
        updated = clone(claim)
        updated["metadata"]["finalizers"] = finalizers
        meta = claim["metadata"]
        try:
            await self._ctx.kube.replace(
                self._ctx.apis[PERSISTENTVOLUMECLAIMS], meta["namespace"], meta["name"], updated
            )
        except NotFoundError:
            return  # gone already: nothing left to protect


def _name(pod: Object) -> str:
    return str(pod["metadata"].get("name", ""))

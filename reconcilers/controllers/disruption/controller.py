"""The disruption controller's declarations, event handlers and syncs (see the package)."""

from __future__ import annotations

import datetime
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar

from bus.subjects import ResourceType
from kubus.kube import ConflictError, KubeApiError, NotFoundError
from reconcilers.cache import controller_of
from reconcilers.controller import (
    Context,
    ControllerBase,
    Flag,
    Permission,
    Request,
    Result,
    Scope,
)
from reconcilers.controllers.disruption.scale import ScaleReader, parse_group_version
from reconcilers.controllers.disruption.status import (
    COMPONENT,
    DELETION_TIMEOUT,
    ControllerScale,
    SyncError,
    build_disrupted_pods,
    count_healthy,
    expected_pod_count,
    fail_safe_status,
    go_quote,
    label_selector_text,
    matching_pods,
    pdb_selector,
    relevant_fields,
    stale_disruption_wait,
    status_update,
    with_disruption_target_reset,
)
from reconcilers.controllers.flags import STALE_POD_DISRUPTION_TIMEOUT
from reconcilers.kinds import (
    DEPLOYMENTS,
    EVENTS,
    PODDISRUPTIONBUDGETS,
    PODS,
    REPLICASETS,
    REPLICATIONCONTROLLERS,
    STATEFULSETS,
    Object,
)
from reconcilers.selectors import InvalidSelectorError

__all__ = ["DisruptionController"]

log = logging.getLogger(__name__)


def _is_kind(reference: Mapping[str, Any], kind: str, groups: tuple[str, ...]) -> bool:
    """verifyGroupKind: the reference's kind, in one of the groups."""
    group, _version = parse_group_version(str(reference.get("apiVersion", "")))
    return reference.get("kind") == kind and group in groups


def _replicas(obj: Object) -> int:
    return int(obj.get("spec", {}).get("replicas", 1))


def _message(error: BaseException) -> str:
    if isinstance(error, KubeApiError):
        return error.message or str(error)
    return str(error)


class DisruptionController(ControllerBase):
    name: ClassVar[str] = "disruption-controller"
    aliases: ClassVar[tuple[str, ...]] = ("disruption",)
    primary: ClassVar[ResourceType] = PODDISRUPTIONBUDGETS
    reads: ClassVar[tuple[ResourceType, ...]] = (
        PODDISRUPTIONBUDGETS,
        PODS,
        REPLICATIONCONTROLLERS,
        REPLICASETS,
        DEPLOYMENTS,
        STATEFULSETS,
    )
    # kcm runs one worker and has no flag for it: the flag is kubus's own, the default kcm's.
    concurrency_flag: ClassVar[str] = "concurrent-disruption-syncs"
    default_concurrency: ClassVar[int] = 1
    # Selectors never cross a namespace: a partition holds a PDB, its pods and their owners.
    scope: ClassVar[Scope] = Scope.PARTITIONED
    permissions: ClassVar[tuple[Permission, ...]] = (
        Permission.on(PODDISRUPTIONBUDGETS, "update", subresource="status"),
        Permission.on(PODS, "update", subresource="status"),
        Permission("*", "*/scale", ("get",)),
        Permission.on(EVENTS, "create", "patch"),
    )
    flags: ClassVar[tuple[Flag, ...]] = (STALE_POD_DISRUPTION_TIMEOUT,)
    enabled_by_default: ClassVar[bool] = True

    def __init__(
        self,
        context: Context,
        clock: Callable[[], datetime.datetime] | None = None,
        *,
        deletion_timeout: float = DELETION_TIMEOUT,
    ) -> None:
        self._ctx = context
        self._now = clock or (lambda: datetime.datetime.now(datetime.UTC))
        self._deletion_timeout = deletion_timeout
        self._stale_timeout = float(
            context.options.get(
                STALE_POD_DISRUPTION_TIMEOUT.name, STALE_POD_DISRUPTION_TIMEOUT.default
            )
        )
        self._scales = ScaleReader(context.kube)

    # --- event handlers ---------------------------------------------------------------------

    def requests_for(
        self, resource: ResourceType, obj: Object | None, old: Object | None
    ) -> Iterable[Request]:
        if resource == PODDISRUPTIONBUDGETS:
            target = obj if obj is not None else old
            return [Request.of(target)] if target is not None else []
        if resource != PODS:
            return []
        requests: list[Request] = []
        if obj is None or old is None or relevant_fields(obj) != relevant_fields(old):
            current = self._pdbs_for(obj) if obj is not None else []
            if len(current) > 1 and obj is not None:
                self._report_overlap(obj, current)
            previous = self._pdbs_for(old) if old is not None else []
            seen: set[str] = set()
            for pdb in [*current, *previous]:
                request = Request.of(pdb)
                if request.key not in seen:
                    seen.add(request.key)
                    requests.append(request)
        if (
            obj is not None
            and stale_disruption_wait(obj, self._now(), self._stale_timeout) is not None
        ):
            meta = obj["metadata"]
            requests.append(Request(meta.get("namespace"), meta.get("name", ""), PODS))
        return requests

    def _pdbs_for(self, pod: Object) -> list[Object]:
        """GetPodPodDisruptionBudgets: the namespace's PDBs whose selector matches the pod."""
        found = []
        labels = pod["metadata"].get("labels")
        for pdb in self._ctx.cache.in_namespace(
            PODDISRUPTIONBUDGETS, pod["metadata"].get("namespace")
        ):
            try:
                selector = pdb_selector(pdb)
            except InvalidSelectorError:
                continue
            if selector is not None and selector.matches(labels):
                found.append(pdb)
        return found

    def _report_overlap(self, pod: Object, pdbs: list[Object]) -> None:
        meta = pod["metadata"]
        names = ", ".join(sorted(go_quote(p["metadata"]["name"]) for p in pdbs))
        message = (
            f"Pod {go_quote(meta.get('namespace', ''))}/{go_quote(meta.get('name', ''))} matches "
            f"multiple PodDisruptionBudgets ({names}): the eviction subresource refuses to "
            "evict it."
        )
        log.info("%s", message)
        self._ctx.events.record(
            pod, "Warning", "MultiplePodDisruptionBudgets", message, component=COMPONENT
        )

    # --- sync -----------------------------------------------------------------------------

    async def reconcile(self, request: Request) -> Result:
        if request.resource == PODS:
            return await self._sync_stale_pod(request)
        pdb = self._ctx.cache.get(PODDISRUPTIONBUDGETS, request.namespace, request.name)
        if pdb is None:
            log.debug("podDisruptionBudget %s has been deleted", request.key)
            return Result()
        try:
            return await self._try_sync(pdb)
        except ConflictError:
            raise
        except (SyncError, KubeApiError) as error:
            log.error("Failed to sync PDB %s: %s", request.key, error)
            await self._write_status(pdb, fail_safe_status(pdb, _message(error), self._now()))
            return Result()

    async def _try_sync(self, pdb: Object) -> Result:
        namespace = pdb["metadata"].get("namespace")
        try:
            selector = pdb_selector(pdb)
        except InvalidSelectorError as error:
            self._event(pdb, "Warning", "NoPods", f"Failed to get pods: {error}")
            raise SyncError(str(error)) from None
        pods = matching_pods(selector, self._ctx.cache.in_namespace(PODS, namespace))
        if not pods:
            self._event(pdb, "Normal", "NoPods", "No matching pods found")
        try:
            expected, desired, unmanaged = await expected_pod_count(pdb, pods, self._find)
        except (SyncError, KubeApiError) as error:
            self._event(
                pdb,
                "Warning",
                "CalculateExpectedPodCountFailed",
                f"Failed to calculate the number of expected pods: {_message(error)}",
            )
            raise
        if unmanaged:
            log.debug("PDB %s selects unmanaged pods: %s", Request.of(pdb).key, unmanaged)
            self._event(
                pdb,
                "Warning",
                "UnmanagedPods",
                "Pods selected by this PodDisruptionBudget (selector: "
                f"{label_selector_text(pdb.get('spec', {}).get('selector'))}) were found to be "
                "unmanaged. As a result, the status of the PDB cannot be calculated correctly, "
                "which may result in undefined behavior. To account for these pods please set "
                '".spec.minAvailable" field of the PDB to an integer value.',
            )
        now = self._now()
        disrupted, recheck, expired = build_disrupted_pods(
            pods, (pdb.get("status") or {}).get("disruptedPods"), now, self._deletion_timeout
        )
        for pod in expired:
            log.info(
                "pod %s/%s was expected to be deleted but it wasn't, updating PDB %s",
                namespace,
                pod["metadata"].get("name"),
                pdb["metadata"]["name"],
            )
            self._event(
                pod,
                "Warning",
                "NotDeleted",
                f"Pod was expected by PDB {namespace}/{pdb['metadata']['name']} to be deleted "
                "but it wasn't",
            )
        healthy = count_healthy(pods, disrupted, now, self._deletion_timeout)
        status = status_update(
            pdb,
            current_healthy=healthy,
            desired_healthy=desired,
            expected=expected,
            disrupted=disrupted,
            now=now,
        )
        if status is not None:
            await self._write_status(pdb, status)
        if recheck is None:
            return Result()
        return Result(requeue_after=max((recheck - now).total_seconds(), 0.0))

    async def _find(self, reference: Mapping[str, Any], namespace: str) -> ControllerScale | None:
        """upstream's finders, in their order: ReplicationController, the Deployment of a
        ReplicaSet, a ReplicaSet of no Deployment, StatefulSet, then any scale subresource."""
        cache = self._ctx.cache
        name, uid = str(reference.get("name", "")), reference.get("uid")
        if _is_kind(reference, "ReplicationController", ("",)):
            rc = cache.get(REPLICATIONCONTROLLERS, namespace, name)
            if rc is not None and rc["metadata"].get("uid") == uid:
                return uid, _replicas(rc)
        if _is_kind(reference, "ReplicaSet", ("apps", "extensions")):
            rs = cache.get(REPLICASETS, namespace, name)
            if rs is not None and rs["metadata"].get("uid") == uid:
                owner = controller_of(rs)
                if owner is None:
                    return uid, _replicas(rs)
                if _is_kind(owner, "Deployment", ("apps", "extensions")):
                    deployment = cache.get(DEPLOYMENTS, namespace, str(owner.get("name", "")))
                    if deployment is not None and deployment["metadata"].get("uid") == owner.get(
                        "uid"
                    ):
                        return str(owner["uid"]), _replicas(deployment)
                if owner.get("kind") != "Deployment":
                    return uid, _replicas(rs)
        if _is_kind(reference, "StatefulSet", ("apps",)):
            sts = cache.get(STATEFULSETS, namespace, name)
            if sts is not None and sts["metadata"].get("uid") == uid:
                return uid, _replicas(sts)
        return await self._scales.scale(reference, namespace)

    async def _write_status(self, pdb: Object, status: Object) -> None:
        """UpdateStatus with the cached resourceVersion: a stale cache is a conflict, retried."""
        meta = pdb["metadata"]
        body = {**pdb, "status": status}
        await self._ctx.kube.replace(
            self._ctx.apis[PODDISRUPTIONBUDGETS],
            meta["namespace"],
            meta["name"],
            body,
            subresource="status",
        )

    async def _sync_stale_pod(self, request: Request) -> Result:
        pod = self._ctx.cache.get(PODS, request.namespace, request.name)
        if pod is None:
            return Result()
        now = self._now()
        wait = stale_disruption_wait(pod, now, self._stale_timeout)
        if wait is None:
            return Result()
        if wait > 0:
            return Result(requeue_after=wait)
        updated = with_disruption_target_reset(pod, now)
        if updated is None:
            return Result()
        try:
            await self._ctx.kube.replace(
                self._ctx.apis[PODS], request.namespace, request.name, updated, subresource="status"
            )
        except NotFoundError:
            return Result()
        log.info("Reset stale DisruptionTarget condition to False for pod %s", request.key)
        return Result()

    def _event(self, obj: Object, kind: str, reason: str, message: str) -> None:
        self._ctx.events.record(obj, kind, reason, message, component=COMPONENT)

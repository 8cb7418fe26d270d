"""The ReplicaSet controller, as kube-controller-manager's ``replicaset-controller``.

Keeps ``spec.replicas`` pods matching the selector and owned by the ReplicaSet:

- adopts matching orphans and releases owned pods that stopped matching (after a live read
  proving the ReplicaSet still exists and is not being deleted);
- creates missing pods in slow-start batches (1, 2, 4, ...), at most 500 per sync, from the
  template with ``generateName: <rs>-`` and a controller ownerReference;
- deletes surplus pods, least valuable first (unscheduled, pending, not ready, low
  pod-deletion-cost, crowded node, recently ready, restarted, new);
- never acts again before its previous creates/deletes are seen (expectations, 5 min expiry);
- writes status (replicas, fullyLabeledReplicas, readyReplicas, availableReplicas with
  minReadySeconds, terminatingReplicas, observedGeneration) and the ``ReplicaFailure``
  condition; emits SuccessfulCreate/FailedCreate/SuccessfulDelete/FailedDelete events.

The ReplicationController controller is this one with another kind, an equality-based
selector and no ``terminatingReplicas`` (``replicationcontroller.py``), as upstream wraps its
ReplicaSet controller.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar, Final

from bus.subjects import ResourceType
from kubus.kube import ConflictError, KubeApiError, NotFoundError
from reconcilers.cache import controller_of
from reconcilers.controller import Context, ControllerBase, Permission, Request, Result, Scope
from reconcilers.controllers.podutil import (
    deletion_order,
    is_available,
    is_pod_active,
    is_pod_ready,
    is_pod_terminating,
    next_availability_check,
)
from reconcilers.expectations import Expectations
from reconcilers.kinds import EVENTS, PODS, REPLICASETS, Object, clone
from reconcilers.refmanager import (
    ControllerRefManager,
    controller_ref,
    resolve_controller_ref,
    selecting_owners,
)
from reconcilers.selectors import InvalidSelectorError, Selector

__all__ = ["ReplicaSetController"]

log = logging.getLogger(__name__)

BURST_REPLICAS: Final = 500
COMPONENT: Final = "replicaset-controller"


class ReplicaSetController(ControllerBase):
    """Also the base of the ReplicationController controller: what differs between the two
    kinds is in the class attributes and :meth:`selector_of`."""

    name: ClassVar[str] = "replicaset-controller"
    aliases: ClassVar[tuple[str, ...]] = ("replicaset",)
    primary: ClassVar[ResourceType] = REPLICASETS
    reads: ClassVar[tuple[ResourceType, ...]] = (REPLICASETS, PODS)
    concurrency_flag: ClassVar[str] = "concurrent-replicaset-syncs"
    default_concurrency: ClassVar[int] = 5
    scope: ClassVar[Scope] = Scope.PARTITIONED
    permissions: ClassVar[tuple[Permission, ...]] = (
        Permission.on(PODS, "create", "delete", "patch"),
        Permission.on(REPLICASETS, "get"),
        Permission.on(REPLICASETS, "get", "update", subresource="status"),
        Permission.on(EVENTS, "create", "patch"),
    )
    feature_gates: ClassVar[Mapping[str, bool]] = {"DeploymentReplicaSetTerminatingReplicas": True}
    kind: ClassVar[str] = "ReplicaSet"
    component: ClassVar[str] = COMPONENT  # the events' source
    reports_terminating: ClassVar[bool] = True  # status.terminatingReplicas exists

    @staticmethod
    def selector_of(owner: Object) -> Mapping[str, Any] | None:
        """The owner's selector in ``metav1.LabelSelector`` form."""
        selector: Mapping[str, Any] | None = owner.get("spec", {}).get("selector")
        return selector

    def __init__(self, context: Context) -> None:
        self._ctx = context
        self._expectations = Expectations()

    def forget(self, matches: Callable[[Request], bool]) -> None:
        """Drop the expectations of the requests ``matches`` (a partition that moved away)."""

        def by_key(key: str) -> bool:
            namespace, _, name = key.partition("/")
            return matches(Request(namespace or None, name))

        self._expectations.forget_where(by_key)

    # --- event handlers -----------------------------------------------------------------

    def requests_for(
        self, resource: ResourceType, obj: Object | None, old: Object | None
    ) -> Iterable[Request]:
        if resource == self.primary:
            if obj is None and old is not None:
                self._expectations.forget(Request.of(old).key)
            target = obj or old
            return [Request.of(target)] if target else []
        if obj is None:
            return self._pod_deleted(old) if old else []
        if obj["metadata"].get("deletionTimestamp"):
            requests = list(self._pod_deleted(obj))
            if old and old["metadata"].get("labels") != obj["metadata"].get("labels"):
                requests += self._pod_deleted(old)
            return requests
        if old is None:
            return self._pod_added(obj)
        return self._pod_updated(obj, old)

    def _pod_added(self, pod: Object) -> list[Request]:
        owner = self._owner_of(pod)
        if owner is not None:
            self._expectations.creation_observed(Request.of(owner).key)
            return [Request.of(owner)]
        if controller_of(pod) is not None:
            return []
        return [Request.of(rs) for rs in self._matching_replicasets(pod)]

    def _pod_updated(self, pod: Object, old: Object) -> list[Request]:
        if pod["metadata"].get("resourceVersion") == old["metadata"].get("resourceVersion"):
            return []
        requests = []
        old_ref, new_ref = controller_of(old), controller_of(pod)
        if old_ref is not None and old_ref != new_ref:
            previous = self._owner_of(old)
            if previous is not None:
                requests.append(Request.of(previous))
        owner = self._owner_of(pod)
        if owner is not None:
            return [*requests, Request.of(owner)]
        if new_ref is None and (
            old_ref != new_ref or old["metadata"].get("labels") != pod["metadata"].get("labels")
        ):
            requests += [Request.of(rs) for rs in self._matching_replicasets(pod)]
        return requests

    def _pod_deleted(self, pod: Object) -> list[Request]:
        owner = self._owner_of(pod)
        if owner is None:
            return []
        key = Request.of(owner).key
        self._expectations.deletion_observed(key, _pod_key(pod))
        return [Request.of(owner)]

    def _owner_of(self, pod: Object) -> Object | None:
        return resolve_controller_ref(self._ctx.cache, self.primary, self.kind, pod)

    def _matching_replicasets(self, pod: Object) -> list[Object]:
        return selecting_owners(self._ctx.cache, self.primary, pod, selector_of=self.selector_of)

    # --- sync ---------------------------------------------------------------------------

    async def reconcile(self, request: Request) -> Result:
        key = request.key
        rs = self._ctx.cache.get(self.primary, request.namespace, request.name)
        if rs is None:
            self._expectations.forget(key)
            return Result()
        needs_sync = self._expectations.satisfied(key)
        try:
            selector = Selector.parse(self.selector_of(rs))
        except InvalidSelectorError as error:
            log.error("error converting pod selector to selector for rs %s: %s", key, error)
            return Result()
        uid = rs["metadata"]["uid"]
        namespace = request.namespace
        candidates = list(self._ctx.cache.controlled_by(PODS, uid)) + [
            pod
            for pod in self._ctx.cache.in_namespace(PODS, namespace)
            if controller_of(pod) is None
        ]
        claims = ControllerRefManager(
            self._ctx.kube,
            rs,
            owner_api=self._ctx.apis[self.primary],
            child_api=self._ctx.apis[PODS],
            selector=selector,
        )
        active = await claims.claim_pods(p for p in candidates if is_pod_active(p))
        terminating = [
            p
            for p in candidates
            if is_pod_terminating(p)
            and (controller_of(p) or {}).get("uid") == uid
            and selector.matches(p["metadata"].get("labels"))
        ]
        manage_error: Exception | None = None
        if needs_sync and not rs["metadata"].get("deletionTimestamp"):
            try:
                await self._manage_replicas(active, rs)
            except KubeApiError as error:
                manage_error = error
        now = datetime.datetime.now(datetime.UTC)
        status = _calculate_status(rs, active, terminating, manage_error, now)
        if not self.reports_terminating or not self._ctx.enabled(
            "DeploymentReplicaSetTerminatingReplicas"
        ):
            status.pop("terminatingReplicas", None)
        updated = await self._update_status(rs, status)
        if manage_error is not None:
            raise manage_error
        min_ready = int(updated.get("spec", {}).get("minReadySeconds") or 0)
        if min_ready > 0 and status["readyReplicas"] != status["availableReplicas"]:
            after = next_availability_check(active, min_ready, now)
            return Result(requeue_after=after if after is not None else float(min_ready))
        return Result()

    async def _manage_replicas(self, active: list[Object], rs: Object) -> None:
        key = Request.of(rs).key
        wanted = int(rs.get("spec", {}).get("replicas", 1))
        diff = len(active) - wanted
        if diff < 0:
            count = min(-diff, BURST_REPLICAS)
            self._expectations.expect_creations(key, count)
            successes, error = await _slow_start(count, lambda: self._create_pod(rs))
            for _ in range(count - successes):
                self._expectations.creation_observed(key)
            if error is not None:
                raise error
        elif diff > 0:
            count = min(diff, BURST_REPLICAS)
            doomed = self._pods_to_delete(rs, active, count)
            self._expectations.expect_deletions(key, [_pod_key(p) for p in doomed])
            results = await asyncio.gather(
                *(self._delete_pod(rs, pod) for pod in doomed), return_exceptions=True
            )
            first: Exception | None = None
            for pod, result in zip(doomed, results, strict=True):
                if isinstance(result, BaseException):
                    self._expectations.deletion_observed(key, _pod_key(pod))
                    if not isinstance(result, NotFoundError) and first is None:
                        first = result if isinstance(result, Exception) else None
            if first is not None:
                raise first

    def _pods_to_delete(self, rs: Object, active: list[Object], count: int) -> list[Object]:
        if count >= len(active):
            return active
        related = self._related_pods(rs)
        ranks = {
            pod["metadata"]["uid"]: sum(
                1
                for other in related
                if is_pod_active(other)
                and other.get("spec", {}).get("nodeName", "")
                == pod.get("spec", {}).get("nodeName", "")
            )
            for pod in active
        }
        return deletion_order(active, ranks, datetime.datetime.now(datetime.UTC))[:count]

    def _related_pods(self, rs: Object) -> list[Object]:
        """Pods of every ReplicaSet with the same controller (the same Deployment)."""
        owner = controller_of(rs)
        if owner is None:
            return []
        seen: dict[str, Object] = {}
        namespace = rs["metadata"]["namespace"]
        for sibling in self._ctx.cache.controlled_by(self.primary, owner.get("uid", "")):
            try:
                selector = Selector.parse(self.selector_of(sibling))
            except InvalidSelectorError:
                continue
            for pod in self._ctx.cache.in_namespace(PODS, namespace):
                if selector.matches(pod["metadata"].get("labels")):
                    seen.setdefault(pod["metadata"]["uid"], pod)
        return list(seen.values())

    async def _create_pod(self, rs: Object) -> None:
        template = rs.get("spec", {}).get("template", {})
        template_meta = template.get("metadata") or {}
        labels = dict(template_meta.get("labels") or {})
        if not labels:
            raise KubeApiError(0, "NoLabels", "unable to create pods, no labels")
        metadata: dict[str, Any] = {
            "generateName": f"{rs['metadata']['name']}-",
            "labels": labels,
            "ownerReferences": [controller_ref(rs, self._ctx.apis[self.primary])],
        }
        for field in ("annotations", "finalizers"):
            if template_meta.get(field):
                metadata[field] = clone(template_meta[field])
        body = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": metadata,
            "spec": clone(template.get("spec", {})),
        }
        namespace = rs["metadata"]["namespace"]
        try:
            pod = await self._ctx.kube.create(self._ctx.apis[PODS], namespace, body)
        except KubeApiError as error:
            if "NamespaceTerminating" in error.message or "being terminated" in error.message:
                return
            self._ctx.events.record(
                rs, "Warning", "FailedCreate", f"Error creating: {error}", component=self.component
            )
            raise
        self._ctx.events.record(
            rs,
            "Normal",
            "SuccessfulCreate",
            f"Created pod: {pod['metadata']['name']}",
            component=self.component,
        )

    async def _delete_pod(self, rs: Object, pod: Object) -> None:
        meta = pod["metadata"]
        try:
            await self._ctx.kube.delete(self._ctx.apis[PODS], meta["namespace"], meta["name"])
        except NotFoundError:
            raise
        except KubeApiError as error:
            self._ctx.events.record(
                rs, "Warning", "FailedDelete", f"Error deleting: {error}", component=self.component
            )
            raise KubeApiError(
                error.status, error.reason, f"unable to delete pods: {error}"
            ) from error
        self._ctx.events.record(
            rs,
            "Normal",
            "SuccessfulDelete",
            f"Deleted pod: {meta['name']}",
            component=self.component,
        )

    async def _update_status(self, rs: Object, status: Object) -> Object:
        current = rs.get("status") or {}
        generation = rs["metadata"].get("generation", 0)
        unchanged = (
            all(
                current.get(field, 0) == status.get(field, 0)
                for field in (
                    "replicas",
                    "fullyLabeledReplicas",
                    "readyReplicas",
                    "availableReplicas",
                )
            )
            and current.get("terminatingReplicas") == status.get("terminatingReplicas")
            and (current.get("observedGeneration") == generation)
            and (current.get("conditions") or []) == (status.get("conditions") or [])
        )
        if unchanged:
            return rs
        status["observedGeneration"] = generation
        api = self._ctx.apis[self.primary]
        body = {**rs, "status": status}
        meta = rs["metadata"]
        try:
            return await self._ctx.kube.replace(
                api, meta["namespace"], meta["name"], body, subresource="status"
            )
        except ConflictError:
            fresh = await self._ctx.kube.get(api, meta["namespace"], meta["name"])
            fresh["status"] = status
            return await self._ctx.kube.replace(
                api, meta["namespace"], meta["name"], fresh, subresource="status"
            )


def _calculate_status(
    rs: Object,
    active: list[Object],
    terminating: list[Object],
    manage_error: Exception | None,
    now: datetime.datetime,
) -> Object:
    status = clone(rs.get("status") or {})
    spec = rs.get("spec", {})
    template_labels = (spec.get("template", {}).get("metadata") or {}).get("labels") or {}
    min_ready = int(spec.get("minReadySeconds") or 0)
    status["replicas"] = len(active)
    status["fullyLabeledReplicas"] = sum(
        1
        for pod in active
        if all(
            (pod["metadata"].get("labels") or {}).get(k) == v for k, v in template_labels.items()
        )
    )
    ready = [pod for pod in active if is_pod_ready(pod)]
    status["readyReplicas"] = len(ready)
    status["availableReplicas"] = sum(1 for pod in ready if is_available(pod, min_ready, now))
    status["terminatingReplicas"] = len(terminating)
    conditions = [c for c in status.get("conditions") or [] if c.get("type") != "ReplicaFailure"]
    existing = next(
        (c for c in status.get("conditions") or [] if c.get("type") == "ReplicaFailure"), None
    )
    if manage_error is not None:
        if existing is None:
            wanted = int(spec.get("replicas", 1))
            reason = (
                "FailedCreate"
                if len(active) < wanted
                else "FailedDelete"
                if len(active) > wanted
                else ""
            )
            existing = {
                "type": "ReplicaFailure",
                "status": "True",
                "lastTransitionTime": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "reason": reason,
                "message": str(manage_error),
            }
        conditions.append(existing)
    if conditions:
        status["conditions"] = conditions
    else:
        status.pop("conditions", None)
    return status


async def _slow_start(count: int, create: Any) -> tuple[int, Exception | None]:
    """Run ``create`` count times in batches of 1, 2, 4, ...; stop at the first failing batch."""
    remaining, successes, batch = count, 0, min(count, 1)
    while batch > 0:
        results = await asyncio.gather(*(create() for _ in range(batch)), return_exceptions=True)
        failures = [r for r in results if isinstance(r, BaseException)]
        successes += batch - len(failures)
        if failures:
            error = failures[0]
            return successes, error if isinstance(error, Exception) else RuntimeError(str(error))
        remaining -= batch
        batch = min(2 * batch, remaining)
    return successes, None


def _pod_key(pod: Object) -> str:
    return f"{pod['metadata'].get('namespace')}/{pod['metadata'].get('name')}"

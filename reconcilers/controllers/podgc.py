"""The pod garbage collector, as kube-controller-manager's ``pod-garbage-collector-controller``
(upstream's ``podgc`` package).

Every check period it looks at every pod and force-deletes, in upstream's order: terminated pods
beyond ``--terminated-pod-gc-threshold`` (evicted first, then oldest), terminating pods on a
node that is out of service (tainted and not Ready), pods bound to a node that stays missing
for the quarantine time (checked with a live GET, as the cache may lag), and terminating pods
that were never scheduled. A pod not yet terminal is patched to ``Failed`` first (with the
``DisruptionTarget`` condition when orphaned), since no kubelet is left to do it.

There is one request, :data:`REQUEST`, requeued after every check: the threshold is
cluster-wide, so the pool runs one leader with every pod and node cached, as kcm runs one
podgc. Events only start the loop (the first one after the leader's cache is replayed); the
checks then run every period, as upstream's ``wait.Until``, however busy the cluster is.

Deletes carry the pod's uid as a precondition (upstream sends none): the cache may lag, and a
pod recreated under the same name (a StatefulSet's) must not go in its predecessor's place. A
pod found gone (or replaced) is not an error: it is what the GC wanted.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any, ClassVar, Final

from bus.subjects import ResourceType
from kubus.kube import ConflictError, NotFoundError
from reconcilers.controller import (
    Context,
    ControllerBase,
    Flag,
    Permission,
    Request,
    Result,
    Scope,
)
from reconcilers.controllers.flags import (
    POD_GC_CHECK_PERIOD,
    POD_GC_QUARANTINE_TIME,
    TERMINATED_POD_GC_THRESHOLD,
)
from reconcilers.kinds import NODES, PODS, Object

__all__ = [
    "REQUEST",
    "PodGCController",
    "deletion_order",
    "is_out_of_service",
    "is_pod_terminated",
    "is_pod_terminating",
    "status_patch",
]

log = logging.getLogger(__name__)

REQUEST: Final = Request(None, "podgc")
TAINT_OUT_OF_SERVICE: Final = "node.kubernetes.io/out-of-service"
ORPHAN_CONDITION: Final = {
    "type": "DisruptionTarget",
    "status": "True",
    "reason": "DeletionByPodGC",
    "message": "PodGC: node no longer exists",
}


def is_pod_terminated(pod: Object) -> bool:
    """Upstream's test: any phase but Pending, Running and Unknown (an empty one counts)."""
    return pod.get("status", {}).get("phase") not in ("Pending", "Running", "Unknown")


def is_pod_terminating(pod: Object) -> bool:
    return bool(pod["metadata"].get("deletionTimestamp"))


def _is_evicted(pod: Object) -> bool:
    status = pod.get("status", {})
    return bool(status.get("phase") == "Failed" and status.get("reason") == "Evicted")


def deletion_order(pod: Object) -> tuple[bool, str, str]:
    """Sort key: evicted pods first (they spare controllers' finished pods), then oldest, then
    by name. RFC 3339 timestamps in UTC sort as strings."""
    meta = pod["metadata"]
    return (not _is_evicted(pod), meta.get("creationTimestamp") or "", meta["name"])


def is_out_of_service(node: Object) -> bool:
    """Not Ready and tainted out-of-service (NodeOutOfServiceVolumeDetach is GA: always on)."""
    ready = any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in node.get("status", {}).get("conditions") or ()
    )
    taints = node.get("spec", {}).get("taints") or ()
    tainted = any(t.get("key") == TAINT_OUT_OF_SERVICE for t in taints)
    return not ready and tainted


def status_patch(pod: Object, condition: dict[str, Any] | None) -> dict[str, Any] | None:
    """The strategic merge patch upstream's ``PatchPodStatus`` sends to make ``pod`` Failed
    (None when it is terminal already): the uid rides along as a precondition, and a condition
    merges by type."""
    status = pod.get("status", {})
    if status.get("phase") in ("Succeeded", "Failed"):
        return None
    generation = pod["metadata"].get("generation")
    new: dict[str, Any] = {"phase": "Failed"}
    if generation is not None:
        new["observedGeneration"] = generation
    if condition is not None:
        merged = dict(condition)
        if generation is not None:
            merged["observedGeneration"] = generation
        old = next(
            (c for c in status.get("conditions") or () if c.get("type") == merged["type"]), None
        )
        if old is not None and old.get("status") == merged["status"]:
            merged["lastTransitionTime"] = old.get("lastTransitionTime")
        else:
            merged["lastTransitionTime"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        new["conditions"] = [merged]
    return {"metadata": {"uid": pod["metadata"]["uid"]}, "status": new}


def _key(pod: Object) -> str:
    return f"{pod['metadata'].get('namespace')}/{pod['metadata']['name']}"


class PodGCController(ControllerBase):
    name: ClassVar[str] = "pod-garbage-collector-controller"
    aliases: ClassVar[tuple[str, ...]] = ("podgc",)
    primary: ClassVar[ResourceType] = PODS
    reads: ClassVar[tuple[ResourceType, ...]] = (PODS, NODES)
    # One periodic request: kcm has no flag; the flag is kubus's own, the default kcm's.
    concurrency_flag: ClassVar[str] = "concurrent-pod-gc-syncs"
    default_concurrency: ClassVar[int] = 1
    scope: ClassVar[Scope] = Scope.GLOBAL
    permissions: ClassVar[tuple[Permission, ...]] = (
        # The apiserver verbs it uses itself (the watcher lists and watches for it): the
        # force delete, the status patch before it, and the live look at a missing node.
        Permission.on(PODS, "delete"),
        Permission.on(PODS, "patch", subresource="status"),
        Permission.on(NODES, "get"),
    )
    flags: ClassVar[tuple[Flag, ...]] = (
        TERMINATED_POD_GC_THRESHOLD,
        POD_GC_CHECK_PERIOD,
        POD_GC_QUARANTINE_TIME,
    )
    enabled_by_default: ClassVar[bool] = True

    def __init__(self, context: Context, clock: Callable[[], float] = time.monotonic) -> None:
        self._ctx = context
        options = context.options
        self._threshold = int(
            options.get(TERMINATED_POD_GC_THRESHOLD.name, TERMINATED_POD_GC_THRESHOLD.default)
        )
        self._period = float(options.get(POD_GC_CHECK_PERIOD.name, POD_GC_CHECK_PERIOD.default))
        self._quarantine = float(
            options.get(POD_GC_QUARANTINE_TIME.name, POD_GC_QUARANTINE_TIME.default)
        )
        self._clock = clock
        # Upstream's delaying queue of missing nodes: those waiting out their quarantine (name
        # -> when it ends), and those whose quarantine ended, due for a live GET.
        self._quarantined: dict[str, float] = {}
        self._due: set[str] = set()
        self._looping = False  # the check loop runs: its requeue keeps it going
        self._next_check = 0.0

    def requests_for(
        self, resource: ResourceType, obj: Object | None, old: Object | None
    ) -> Iterable[Request]:
        # An event starts the loop; once it runs, events add nothing (the checks are periodic).
        return [] if self._looping else [REQUEST]

    def forget(self, matches: Callable[[Request], bool]) -> None:
        if matches(REQUEST):  # leadership lost: a new term starts afresh, as a new kcm would
            self._quarantined.clear()
            self._due.clear()
            self._looping = False
            self._next_check = 0.0

    def _listed(self) -> tuple[list[Object], dict[str, Object]]:
        """Every cached pod, and every cached node by name: upstream's two lister calls, in
        one pass over the cache."""
        cache = self._ctx.cache
        pods: list[Object] = []
        nodes: dict[str, Object] = {}
        for ref in cache.refs():
            obj = cache.get(ref.resource, ref.namespace, ref.name)
            if obj is None:
                continue
            if ref.resource == PODS:
                pods.append(obj)
            elif ref.resource == NODES:
                nodes[ref.name] = obj
        return pods, nodes

    async def reconcile(self, request: Request) -> Result:
        self._looping = True
        early = self._next_check - self._clock()
        if early > 0:  # woken before the period ended (a stray wake-up): wait it out
            return Result(requeue_after=early)
        pods, nodes = self._listed()
        if self._threshold > 0:
            await self._gc_terminated(pods)
        await self._gc_terminating(pods, nodes)
        await self._gc_orphaned(pods, nodes)
        await self._gc_unscheduled_terminating(pods)
        # The period counts from the end of a check, as upstream's (sliding) wait.Until.
        self._next_check = self._clock() + self._period
        return Result(requeue_after=self._period)

    async def _gc_terminated(self, pods: list[Object]) -> None:
        terminated = [pod for pod in pods if is_pod_terminated(pod)]
        count = len(terminated) - self._threshold
        if count <= 0:
            return
        log.info("Garbage collecting pods numPods=%d", count)
        terminated.sort(key=deletion_order)
        await self._delete_all(terminated[:count], "Failed to delete terminated pod")

    async def _gc_terminating(self, pods: list[Object], nodes: dict[str, Object]) -> None:
        log.debug("GC'ing terminating pods that are on out-of-service nodes")
        doomed = []
        for pod in pods:
            if not is_pod_terminating(pod):
                continue
            node_name = pod.get("spec", {}).get("nodeName") or ""
            node = nodes.get(node_name)
            if node is None:
                log.error('Failed to get node node="%s": not found', node_name)
                continue
            if is_out_of_service(node):
                log.debug(
                    'Garbage collecting pod that is terminating pod="%s" phase=%s',
                    _key(pod),
                    pod.get("status", {}).get("phase"),
                )
                doomed.append(pod)
        if not doomed:
            return
        log.debug(
            "Garbage collecting pods that are terminating on node tainted with %s numPods=%d",
            TAINT_OUT_OF_SERVICE,
            len(doomed),
        )
        doomed.sort(key=deletion_order)
        await self._delete_all(doomed, "Failed to delete terminating pod on out-of-service node")

    async def _gc_orphaned(self, pods: list[Object], nodes: dict[str, Object]) -> None:
        log.debug("GC'ing orphaned")
        now = self._clock()
        # Quarantines that ended move to the due set; a node still missing is then quarantined
        # again, so that a failed or contradicted GET is retried one quarantine later.
        for node_name, until in list(self._quarantined.items()):
            if until <= now:
                del self._quarantined[node_name]
                self._due.add(node_name)
        for pod in pods:
            node_name = pod.get("spec", {}).get("nodeName")
            if node_name and node_name not in nodes:
                self._quarantined.setdefault(node_name, now + self._quarantine)
        deleted = set()
        due, self._due = self._due, set()
        for node_name in sorted(due):
            if node_name in nodes:
                continue
            try:
                await self._ctx.kube.get(self._ctx.apis[NODES], None, node_name)
            except NotFoundError:
                deleted.add(node_name)
            except Exception as err:  # upstream logs it; the next quarantine retries
                log.error('Error while getting node node="%s": %s', node_name, err)
        for pod in pods:
            node_name = pod.get("spec", {}).get("nodeName")
            if node_name not in deleted:
                continue
            log.info(
                'Found orphaned Pod assigned to the Node, deleting pod="%s" node="%s"',
                _key(pod),
                node_name,
            )
            if await self._delete(pod, ORPHAN_CONDITION, "Failed to delete orphaned pod"):
                log.info('Forced deletion of orphaned Pod succeeded pod="%s"', _key(pod))

    async def _gc_unscheduled_terminating(self, pods: list[Object]) -> None:
        log.debug("GC'ing unscheduled pods which are terminating")
        for pod in pods:
            if not is_pod_terminating(pod) or pod.get("spec", {}).get("nodeName"):
                continue
            log.info(
                'Found unscheduled terminating Pod not assigned to any Node, deleting pod="%s"',
                _key(pod),
            )
            if await self._delete(pod, None, "Failed to delete unscheduled terminating pod"):
                log.info(
                    'Forced deletion of unscheduled terminating Pod succeeded pod="%s"', _key(pod)
                )

    async def _delete_all(self, pods: list[Object], failure: str) -> None:
        """In parallel, as upstream's goroutines: thousands of terminated pods go at once."""
        await asyncio.gather(*(self._delete(pod, None, failure) for pod in pods))

    async def _delete(self, pod: Object, condition: dict[str, Any] | None, failure: str) -> bool:
        """Upstream's ``markFailedAndDeletePodWithCondition``: Failed first, then grace 0.
        True when this call deleted it. A failure is logged and left to the next check, as
        upstream does; a pod already gone (or replaced: the uid precondition) is left be."""
        meta = pod["metadata"]
        namespace, name = meta.get("namespace"), meta["name"]
        log.info('PodGC is force deleting Pod pod="%s"', _key(pod))
        api = self._ctx.apis[PODS]
        try:
            patch = status_patch(pod, condition)
            if patch is not None:
                await self._ctx.kube.patch(
                    api, namespace, name, patch, patch_type="strategic", subresource="status"
                )
            await self._ctx.kube.delete(
                api, namespace, name, uid=meta.get("uid"), grace_period_seconds=0
            )
        except (NotFoundError, ConflictError) as err:
            log.debug('Pod already gone or replaced pod="%s": %s', _key(pod), err)
            return False
        except Exception as err:  # one pod must not stop the others
            log.error('%s pod="%s": %s', failure, _key(pod), err)
            return False
        return True

"""The controller itself (upstream's daemon_controller.go): event handlers, the sync loop,
the node-to-daemon-pod mapping, and what each node needs (podsShouldBeOnNode).

Event handlers, as upstream's: a DaemonSet's own changes; a pod's, to the DaemonSet that
controls it (and the one it left), or for an orphan to every DaemonSet selecting it, lowering
the expectations as creations and deletions are seen; a revision's likewise. A node's
addition, or a change of its labels or taints, queues each DaemonSet whose answer for the node
changed: it should run a pod there and has none, or has one that may not stay, or has one
while its status counts misscheduled pods (upstream's syncNodeUpdate). Nodes are cluster-
scoped, so every process caches them all; the DaemonSets asked about are those of the
partitions this process caches, and the runtime keeps the requests of the units it holds.

A sync, in upstream's order: the revisions (current and old), then, once the previous creates
and deletes are seen, ``manage`` (one pod per node that should run it, failed pods deleted with
a per-node backoff, excess and misplaced pods deleted), the rolling update, the history
cleanup, and the status. The writes are ``podcontrol``'s.
"""

from __future__ import annotations

import datetime
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import ClassVar, Final

from bus.subjects import ResourceType
from kubus.kube import ConflictError, KubeApiError
from reconcilers.cache import controller_of
from reconcilers.controller import (
    Context,
    ControllerBase,
    Permission,
    Request,
    Result,
    Scope,
    TerminalError,
)
from reconcilers.controllers.daemonset import revisions
from reconcilers.controllers.daemonset.podcontrol import (
    FailedPodBackoff,
    PodControl,
    SyncExpectations,
)
from reconcilers.controllers.daemonset.predicates import Placement, target_node_name
from reconcilers.controllers.daemonset.status import (
    calculate_status,
    oldest_first,
    status_unchanged,
)
from reconcilers.controllers.daemonset.update import (
    HASH_LABEL,
    allows_surge,
    plan_rolling_update,
)
from reconcilers.controllers.podutil import (
    is_available,
    is_pod_ready,
    next_availability_check,
)
from reconcilers.kinds import CONTROLLERREVISIONS, DAEMONSETS, EVENTS, NODES, PODS, Object, clone
from reconcilers.refmanager import (
    ControllerRefManager,
    resolve_controller_ref,
    selecting_owners,
)
from reconcilers.selectors import InvalidSelectorError, Selector

__all__ = ["DaemonSetController"]

log = logging.getLogger(__name__)

KIND: Final = "DaemonSet"
COMPARISON_GATE: Final = "TaintTolerationComparisonOperators"

NodePods = dict[str, list[Object]]


@dataclass
class _Sync:
    """What one sync works from: the DaemonSet, the nodes, its claimed pods, the current
    revision's hash, its placement, and the delays the failed-pod backoff asks for."""

    ds: Object
    nodes: list[Object]
    claimed: list[Object]
    hash: str
    placement: Placement
    delays: list[float] = field(default_factory=list)


def _pod_key(pod: Object) -> str:
    return f"{pod['metadata'].get('namespace')}/{pod['metadata'].get('name')}"


def _is_terminal(pod: Object) -> bool:
    return (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")


def _ds_key_of(pod: Object) -> str | None:
    """The key of the DaemonSet a pod's controllerRef names (unchecked), if any."""
    ref = controller_of(pod)
    if ref is None or ref.get("kind") != KIND:
        return None
    return f"{pod['metadata'].get('namespace')}/{ref.get('name', '')}"


def _split(key: str) -> tuple[str, str]:
    namespace, _, name = key.partition("/")
    return namespace, name


class DaemonSetController(ControllerBase):
    name: ClassVar[str] = "daemonset-controller"
    aliases: ClassVar[tuple[str, ...]] = ("daemonset",)
    primary: ClassVar[ResourceType] = DAEMONSETS
    reads: ClassVar[tuple[ResourceType, ...]] = (DAEMONSETS, CONTROLLERREVISIONS, PODS, NODES)
    concurrency_flag: ClassVar[str] = "concurrent-daemonset-syncs"
    default_concurrency: ClassVar[int] = 2
    scope: ClassVar[Scope] = Scope.PARTITIONED
    permissions: ClassVar[tuple[Permission, ...]] = (
        Permission.on(PODS, "create", "delete", "patch"),
        Permission.on(DAEMONSETS, "get"),
        Permission.on(DAEMONSETS, "update", subresource="status"),
        Permission.on(CONTROLLERREVISIONS, "create", "delete", "get", "patch", "update"),
        Permission.on(EVENTS, "create", "patch"),
    )
    feature_gates: ClassVar[Mapping[str, bool]] = {COMPARISON_GATE: False}

    def __init__(self, context: Context) -> None:
        self._ctx = context
        self._expectations = SyncExpectations()
        self._pods = PodControl(context, self._expectations)
        self._backoff = FailedPodBackoff()
        self._daemonsets: set[str] = set()  # keys of the DaemonSets seen in the cache
        self._pod_node: dict[str, tuple[str, str]] = {}  # pod key -> (node, DaemonSet key)
        self._on_node: dict[str, Counter[str]] = {}  # node -> DaemonSet key -> pods there
        self._placements: dict[str, tuple[int, Placement]] = {}  # by uid, for a generation

    def forget(self, matches: Callable[[Request], bool]) -> None:
        """Drop what is known of the DaemonSets ``matches`` (their partition moved away)."""

        def by_key(key: str) -> bool:
            namespace, name = _split(key)
            return matches(Request(namespace or None, name))

        self._expectations.forget_where(by_key)
        self._daemonsets = {key for key in self._daemonsets if not by_key(key)}
        for pod_key in [k for k, (_, ds_key) in self._pod_node.items() if by_key(ds_key)]:
            self._unindex(pod_key)

    # --- event handlers -----------------------------------------------------------------

    def requests_for(
        self, resource: ResourceType, obj: Object | None, old: Object | None
    ) -> Iterable[Request]:
        if resource == DAEMONSETS:
            return self._daemonset_changed(obj, old)
        if resource == NODES:
            return self._node_changed(obj, old)
        if resource == PODS:
            self._index(obj, old)
        return self._child_changed(resource, obj, old)

    def _daemonset_changed(self, obj: Object | None, old: Object | None) -> list[Request]:
        target = obj or old
        if target is None:
            return []
        key = Request.of(target).key
        if obj is None:
            self._daemonsets.discard(key)
            self._expectations.forget(key)
            self._placements.pop(target["metadata"].get("uid", ""), None)
        else:
            self._daemonsets.add(key)
            if old is not None and old["metadata"].get("uid") != obj["metadata"].get("uid"):
                self._expectations.forget(key)  # re-created under the same name
        return [Request.of(target)]

    def _child_changed(
        self, resource: ResourceType, obj: Object | None, old: Object | None
    ) -> list[Request]:
        """addPod/updatePod/deletePod, and the same for revisions (without expectations)."""
        is_pod = resource == PODS
        if obj is None:
            return self._child_deleted(old, is_pod) if old else []
        if obj["metadata"].get("deletionTimestamp"):
            requests = self._child_deleted(obj, is_pod)
            if old is not None and controller_of(old) != controller_of(obj):
                requests += self._child_deleted(old, is_pod)
            return requests
        if old is None:
            owner = self._owner_of(obj)
            if owner is not None:
                if not is_pod:
                    return []  # upstream's addHistory only logs an owned revision
                self._expectations.creation_observed(Request.of(owner).key)
                return [Request.of(owner)]
            if controller_of(obj) is not None:
                return []
            return [Request.of(ds) for ds in selecting_owners(self._ctx.cache, DAEMONSETS, obj)]
        if obj["metadata"].get("resourceVersion") == old["metadata"].get("resourceVersion"):
            return []
        requests = []
        old_ref, new_ref = controller_of(old), controller_of(obj)
        if old_ref is not None and old_ref != new_ref:
            previous = self._owner_of(old)
            if previous is not None:
                requests.append(Request.of(previous))
        if new_ref is not None:
            owner = self._owner_of(obj)
            return [*requests, Request.of(owner)] if owner is not None else requests
        if old_ref != new_ref or old["metadata"].get("labels") != obj["metadata"].get("labels"):
            requests += [
                Request.of(ds) for ds in selecting_owners(self._ctx.cache, DAEMONSETS, obj)
            ]
        return requests

    def _child_deleted(self, child: Object, is_pod: bool) -> list[Request]:
        owner = self._owner_of(child)
        if owner is None:
            return []
        if is_pod:
            self._expectations.deletion_observed(Request.of(owner).key, _pod_key(child))
        return [Request.of(owner)]

    def _owner_of(self, child: Object) -> Object | None:
        return resolve_controller_ref(self._ctx.cache, DAEMONSETS, KIND, child)

    def _index(self, pod: Object | None, old: Object | None) -> None:
        """Which DaemonSets have pods on which node (upstream's pod node-name index)."""
        target = pod or old
        if target is None:
            return
        key = _pod_key(target)
        self._unindex(key)
        if pod is None:
            return
        ds_key = _ds_key_of(pod)
        node = target_node_name(pod)
        if ds_key is None or node is None:
            return
        self._pod_node[key] = (node, ds_key)
        self._on_node.setdefault(node, Counter())[ds_key] += 1

    def _unindex(self, pod_key: str) -> None:
        entry = self._pod_node.pop(pod_key, None)
        if entry is None:
            return
        node, ds_key = entry
        counts = self._on_node.get(node)
        if counts is None:
            return
        counts[ds_key] -= 1
        if counts[ds_key] <= 0:
            del counts[ds_key]
        if not counts:
            del self._on_node[node]

    def _node_changed(self, node: Object | None, old: Object | None) -> list[Request]:
        if node is None:
            # Not in upstream (it leaves a deleted node's pods to the pod GC): the status of
            # the DaemonSets with pods there changes at once.
            name = (old or {}).get("metadata", {}).get("name", "")
            return [Request(*_split(key)) for key in self._on_node.get(name, ())]
        if old is not None:
            same_labels = old["metadata"].get("labels") == node["metadata"].get("labels")
            same_taints = (old.get("spec") or {}).get("taints") == (node.get("spec") or {}).get(
                "taints"
            )
            if same_labels and same_taints:
                return []
        scheduled = self._on_node.get(node["metadata"]["name"], Counter())
        requests = []
        for key in list(self._daemonsets):
            namespace, name = _split(key)
            ds = self._ctx.cache.get(DAEMONSETS, namespace, name)
            if ds is None:
                self._daemonsets.discard(key)
                continue
            should_run, may_stay = self._placement(ds).decide(node)
            has_pods = scheduled.get(key, 0) > 0
            misscheduled = int((ds.get("status") or {}).get("numberMisscheduled") or 0)
            if (
                (should_run and not has_pods)
                or (not may_stay and has_pods)
                or (has_pods and misscheduled > 0)
            ):
                requests.append(Request(namespace, name))
        return requests

    def _placement(self, ds: Object) -> Placement:
        meta = ds["metadata"]
        uid, generation = meta.get("uid", ""), int(meta.get("generation") or 0)
        cached = self._placements.get(uid)
        if cached is not None and cached[0] == generation:
            return cached[1]
        placement = Placement(ds, comparison_operators=self._ctx.enabled(COMPARISON_GATE))
        self._placements[uid] = (generation, placement)
        return placement

    # --- sync ---------------------------------------------------------------------------

    async def reconcile(self, request: Request) -> Result:
        """syncDaemonSet."""
        key = request.key
        ds = self._ctx.cache.get(DAEMONSETS, request.namespace, request.name)
        if ds is None:
            self._expectations.forget(key)
            self._daemonsets.discard(key)
            return Result()
        self._daemonsets.add(key)
        nodes = list(self._ctx.cache.in_namespace(NODES, None))
        selector_spec = (ds.get("spec") or {}).get("selector")
        if selector_spec == {}:
            self._pods.event(
                ds,
                "Warning",
                "SelectingAll",
                "This daemon set is selecting all pods. A non-empty selector is required.",
            )
            return Result()
        try:
            selector = Selector.parse(selector_spec)
        except InvalidSelectorError as error:
            raise TerminalError(f"daemon set {key} has an invalid selector: {error}") from error
        if ds["metadata"].get("deletionTimestamp"):
            return Result()
        claims = ControllerRefManager(
            self._ctx.kube,
            ds,
            owner_api=self._ctx.apis[DAEMONSETS],
            child_api=self._ctx.apis[PODS],
            selector=selector,
        )
        uid = ds["metadata"]["uid"]
        candidates = list(self._ctx.cache.controlled_by(PODS, uid)) + [
            pod
            for pod in self._ctx.cache.in_namespace(PODS, request.namespace)
            if controller_of(pod) is None
        ]
        claimed = await claims.claim_pods(candidates)
        current, old = await revisions.construct_history(self._ctx, ds, selector, claimed)
        sync = _Sync(
            ds,
            nodes,
            claimed,
            (current["metadata"].get("labels") or {}).get(HASH_LABEL, ""),
            self._placement(ds),
        )
        self._backoff.gc(time.monotonic())
        if not self._expectations.satisfied(key):
            return await self._update_status(sync, observe=False)
        failure: Exception | None = None
        try:
            await self._manage(sync)
            if self._expectations.satisfied(key) and _strategy(ds) == "RollingUpdate":
                await self._rolling_update(sync)
            await revisions.cleanup_history(self._ctx, ds, old, self._refresh(sync))
        except Exception as error:
            failure = error
        try:
            result = await self._update_status(sync, observe=True)
        except Exception as status_error:
            if failure is None:
                raise
            log.error("failed to update status of daemon set %s: %s", key, status_error)
            raise failure from None
        if failure is not None:
            raise failure
        if sync.delays:
            wait = min(sync.delays)
            if result.requeue_after is None or wait < result.requeue_after:
                return Result(requeue_after=wait)
        return result

    def _refresh(self, sync: _Sync) -> list[Object]:
        """The claimed pods as the cache holds them now (the cache moves during a sync): the
        DaemonSet's pods, plus those just adopted that the cache still shows as orphans."""
        pods = {
            p["metadata"]["uid"]: p
            for p in self._ctx.cache.controlled_by(PODS, sync.ds["metadata"]["uid"])
        }
        for pod in sync.claimed:
            meta = pod["metadata"]
            if meta["uid"] in pods:
                continue
            cached = self._ctx.cache.get(PODS, meta.get("namespace"), meta["name"])
            if cached is not None and cached["metadata"].get("uid") == meta["uid"]:
                pods[meta["uid"]] = pod
        return list(pods.values())

    @staticmethod
    def _node_to_pods(pods: Iterable[Object], *, include_deleted_terminal: bool) -> NodePods:
        """getNodesToDaemonPods: the pods by the node they are for."""
        mapping: NodePods = {}
        for pod in pods:
            if (
                not include_deleted_terminal
                and _is_terminal(pod)
                and pod["metadata"].get("deletionTimestamp")
            ):
                continue
            node = target_node_name(pod)
            if node is None:
                continue
            mapping.setdefault(node, []).append(pod)
        return mapping

    async def _manage(self, sync: _Sync) -> None:
        node_to_pods = self._node_to_pods(sync.claimed, include_deleted_terminal=False)
        create: list[str] = []
        delete: list[str] = []
        for node in sync.nodes:
            created, deleted = self._pods_should_be_on_node(sync, node, node_to_pods)
            create += created
            delete += deleted
        # Unbound pods meant for a node that is gone: nothing else (pod GC) deletes them.
        names = {node["metadata"]["name"] for node in sync.nodes}
        for node_name, pods in node_to_pods.items():
            if node_name not in names:
                delete += [
                    p["metadata"]["name"] for p in pods if not (p.get("spec") or {}).get("nodeName")
                ]
        await self._pods.sync_nodes(sync.ds, delete, create, sync.hash)

    def _pods_should_be_on_node(
        self, sync: _Sync, node: Object, node_to_pods: NodePods
    ) -> tuple[list[str], list[str]]:
        """podsShouldBeOnNode: (the node, if it needs a pod; the pods there to delete)."""
        ds = sync.ds
        node_name = node["metadata"]["name"]
        should_run, may_stay = sync.placement.decide(node)
        pods = node_to_pods.get(node_name)
        if should_run and pods is None:
            return [node_name], []
        if not may_stay:
            return [], [
                p["metadata"]["name"]
                for p in pods or []
                if not p["metadata"].get("deletionTimestamp")
            ]
        delete: list[str] = []
        running: list[Object] = []
        for pod in pods or []:
            if pod["metadata"].get("deletionTimestamp"):
                continue
            phase = (pod.get("status") or {}).get("phase")
            if phase == "Failed":
                if self._failed_pod(ds, node_name, pod, sync.delays):
                    delete.append(pod["metadata"]["name"])
            elif phase == "Succeeded":
                self._pods.event(
                    ds,
                    "Normal",
                    "SucceededDaemonPod",
                    f"Found succeeded daemon pod {_pod_key(pod)} on node {node_name}, "
                    "will try to delete it",
                )
                delete.append(pod["metadata"]["name"])
            else:
                running.append(pod)
        if not allows_surge(ds):
            if len(running) > 1:
                delete += [p["metadata"]["name"] for p in oldest_first(running)[1:]]
            return [], delete
        if len(running) <= 1:
            return ([node_name] if not running and should_run else []), delete
        # Surging: an old pod and a new one may share the node while the new one is not
        # available (and the old one still ready); every other pod goes.
        oldest_new: Object | None = None
        oldest_old: Object | None = None
        for pod in oldest_first(running):
            if (pod["metadata"].get("labels") or {}).get(HASH_LABEL) == sync.hash:
                if oldest_new is None:
                    oldest_new = pod
                    continue
            elif oldest_old is None:
                oldest_old = pod
                continue
            delete.append(pod["metadata"]["name"])
        if oldest_new is not None and oldest_old is not None:
            min_ready = int((ds.get("spec") or {}).get("minReadySeconds") or 0)
            now = datetime.datetime.now(datetime.UTC)
            if not is_pod_ready(oldest_old) or is_available(oldest_new, min_ready, now):
                delete.append(oldest_old["metadata"]["name"])
        return [], delete

    def _failed_pod(self, ds: Object, node_name: str, pod: Object, delays: list[float]) -> bool:
        """Whether a failed pod is deleted now, or waits out its node's backoff."""
        observed = int((ds.get("status") or {}).get("observedGeneration") or 0)
        backoff_key = f"{ds['metadata']['uid']}/{observed}/{node_name}"
        now = time.monotonic()
        if self._backoff.in_backoff(backoff_key, now):
            delays.append(self._backoff.delay(backoff_key))
            return False
        self._backoff.next(backoff_key, now)
        self._pods.event(
            ds,
            "Warning",
            "FailedDaemonPod",
            f"Found failed daemon pod {_pod_key(pod)} on node {node_name}, will try to kill it",
        )
        return True

    async def _rolling_update(self, sync: _Sync) -> None:
        placement = sync.placement
        node_to_pods = self._node_to_pods(self._refresh(sync), include_deleted_terminal=False)
        by_name = {node["metadata"]["name"]: node for node in sync.nodes}
        desired = 0
        for node in sync.nodes:
            if placement.decide(node)[0]:
                desired += 1
                node_to_pods.setdefault(node["metadata"]["name"], [])

        def should_run(node_name: str) -> bool:
            node = by_name.get(node_name)
            return node is not None and placement.decide(node)[0]

        now = datetime.datetime.now(datetime.UTC)
        plan = plan_rolling_update(
            sync.ds, node_to_pods, desired=desired, hash_=sync.hash, now=now, should_run=should_run
        )
        await self._pods.sync_nodes(sync.ds, plan.delete, plan.create, sync.hash)

    async def _update_status(self, sync: _Sync, *, observe: bool) -> Result:
        """updateDaemonSetStatus, and the requeue after minReadySeconds it asks for."""
        ds = sync.ds
        pods = self._refresh(sync)
        node_to_pods = self._node_to_pods(pods, include_deleted_terminal=False)
        now = datetime.datetime.now(datetime.UTC)
        counts = calculate_status(
            ds,
            sync.nodes,
            node_to_pods,
            hash_=sync.hash,
            now=now,
            should_run=lambda node: sync.placement.decide(node)[0],
        )
        if not status_unchanged(ds, counts):
            await self._store_status(ds, counts, observe)
        min_ready = int((ds.get("spec") or {}).get("minReadySeconds") or 0)
        if min_ready <= 0:
            return Result()
        # Upstream's pod handler queues the DaemonSet minReadySeconds (+1 s) after a pod turns
        # ready; here the sync that sees the ready pod asks for the time it becomes available
        # (any pod: a surge pod beside an old one is not the one the counts judge).
        after = next_availability_check(pods, min_ready, now)
        if after is not None:
            return Result(requeue_after=after + 1.0)
        if counts["numberReady"] != counts["numberAvailable"]:
            return Result(requeue_after=float(min_ready))
        return Result()

    async def _store_status(self, ds: Object, counts: Mapping[str, int], observe: bool) -> None:
        """storeDaemonSetStatus: one retry on a fresh read after a failed write."""
        api = self._ctx.apis[DAEMONSETS]
        meta = ds["metadata"]
        body = clone(ds)
        for attempt in range(2):
            status = body.setdefault("status", {})
            if observe:
                status["observedGeneration"] = meta.get("generation")
            status.update(counts)
            try:
                await self._ctx.kube.replace(
                    api, meta["namespace"], meta["name"], body, subresource="status"
                )
                return
            except (ConflictError, KubeApiError):
                if attempt == 1:
                    raise
            body = await self._ctx.kube.get(api, meta["namespace"], meta["name"])


def _strategy(ds: Object) -> str:
    strategy = (ds.get("spec") or {}).get("updateStrategy") or {}
    return str(strategy.get("type") or "RollingUpdate")

"""The pod garbage collector's decisions, after upstream's gc_controller_test.go cases: which
terminated pods go past the threshold, when a missing node's pods are orphans, which
terminating pods are force-deleted, the status patch each gets first, the order of the four
passes, and the check loop's period."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
import pytest

from bus.envelope import Envelope, EventType
from bus.subjects import ObjectRef, ResourceType
from kubus.kube import ApiResource, ConflictError, KubeApiError, NotFoundError
from reconcilers.cache import ObjectCache
from reconcilers.controller import Context
from reconcilers.controllers.podgc import (
    REQUEST,
    PodGCController,
    deletion_order,
    is_out_of_service,
    is_pod_terminated,
    status_patch,
)
from reconcilers.kinds import NODES, PODS

NS = "default"


def pod(
    name: str,
    *,
    phase: str = "Running",
    node: str = "",
    created: str = "2026-01-01T00:00:00Z",
    deleting: bool = False,
    reason: str = "",
    conditions: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": name,
        "namespace": NS,
        "uid": f"uid-{name}",
        "creationTimestamp": created,
        "generation": 1,
    }
    if deleting:
        meta["deletionTimestamp"] = "2026-01-02T00:00:00Z"
    status: dict[str, Any] = {"phase": phase}
    if reason:
        status["reason"] = reason
    if conditions is not None:
        status["conditions"] = conditions
    return {"metadata": meta, "spec": {"nodeName": node}, "status": status}


def node(name: str, *, ready: bool = True, out_of_service: bool = False) -> dict[str, Any]:
    taints = [{"key": "node.kubernetes.io/out-of-service", "effect": "NoExecute"}]
    return {
        "metadata": {"name": name, "uid": f"uid-{name}"},
        "spec": {"taints": taints if out_of_service else []},
        "status": {"conditions": [{"type": "Ready", "status": "True" if ready else "False"}]},
    }


def put(cache: ObjectCache, resource: ResourceType, body: dict[str, Any]) -> None:
    meta = body["metadata"]
    envelope = Envelope(
        subject="",
        sequence=1,
        event=EventType.MODIFIED,
        resource_version="1",
        uid="",
        payload=msgspec.json.encode(body),
    )
    cache.apply(0, ObjectRef(resource, meta.get("namespace"), meta["name"]), envelope)


class FakeKube:
    """Records the status patches and deletes; GET of a node answers from ``live_nodes`` (or
    fails with ``get_error``)."""

    def __init__(self, live_nodes: tuple[str, ...] = ()) -> None:
        self.live_nodes = set(live_nodes)
        self.get_error: Exception | None = None
        self.node_gets: list[str] = []
        self.patches: list[tuple[str, dict[str, Any], str, str | None]] = []
        self.deletes: list[tuple[str, int | None]] = []
        self.delete_uids: list[str | None] = []

    async def get(self, resource: ApiResource, namespace: str | None, name: str) -> dict[str, Any]:
        assert resource.name == "nodes"
        self.node_gets.append(name)
        if self.get_error is not None:
            raise self.get_error
        if name not in self.live_nodes:
            raise NotFoundError(404, "NotFound", f"node {name} not found")
        return node(name)

    async def patch(
        self,
        resource: ApiResource,
        namespace: str | None,
        name: str,
        patch: dict[str, Any],
        *,
        patch_type: str = "merge",
        subresource: str | None = None,
    ) -> dict[str, Any]:
        self.patches.append((name, patch, patch_type, subresource))
        return {}

    async def delete(
        self,
        resource: ApiResource,
        namespace: str | None,
        name: str,
        *,
        uid: str | None = None,
        grace_period_seconds: int | None = None,
        **kw: Any,
    ) -> dict[str, Any]:
        self.deletes.append((name, grace_period_seconds))
        self.delete_uids.append(uid)
        return {}


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def controller(
    kube: FakeKube,
    cache: ObjectCache,
    clock: Clock | None = None,
    options: dict[str, Any] | None = None,
) -> PodGCController:
    def api(resource: ResourceType, kind: str, namespaced: bool) -> ApiResource:
        return ApiResource("", "v1", resource.resource, kind, namespaced, frozenset())

    ctx = Context(
        cache=cache,
        kube=kube,  # type: ignore[arg-type]
        apis={PODS: api(PODS, "Pod", True), NODES: api(NODES, "Node", False)},
        events=None,  # type: ignore[arg-type]
        tracer=None,
        options=options or {},
    )
    return PodGCController(ctx, clock=clock or Clock())


def deleted(kube: FakeKube) -> list[str]:
    return sorted(name for name, _ in kube.deletes)


# --- pure decisions -------------------------------------------------------------------------


def test_terminated_means_any_phase_but_pending_running_unknown() -> None:
    assert is_pod_terminated(pod("a", phase="Succeeded"))
    assert is_pod_terminated(pod("a", phase="Failed"))
    assert not any(is_pod_terminated(pod("a", phase=p)) for p in ("Pending", "Running", "Unknown"))


def test_order_puts_evicted_first_then_oldest_then_name() -> None:
    pods = [
        pod("c", phase="Failed", created="2026-01-01T00:00:01Z"),
        pod("b", phase="Failed", created="2026-01-01T00:00:00Z"),
        pod("a", phase="Failed", created="2026-01-01T00:00:01Z"),
        pod("z", phase="Failed", created="2026-01-01T00:00:09Z", reason="Evicted"),
    ]
    assert [p["metadata"]["name"] for p in sorted(pods, key=deletion_order)] == ["z", "b", "a", "c"]


def test_out_of_service_needs_both_the_taint_and_not_ready() -> None:
    assert is_out_of_service(node("n", ready=False, out_of_service=True))
    assert not is_out_of_service(node("n", ready=True, out_of_service=True))
    assert not is_out_of_service(node("n", ready=False))


def test_status_patch_marks_failed_with_uid_and_condition() -> None:
    condition = {"type": "DisruptionTarget", "status": "True", "reason": "DeletionByPodGC"}
    patch = status_patch(pod("a"), condition)
    assert patch is not None
    assert patch["metadata"] == {"uid": "uid-a"}
    assert patch["status"]["phase"] == "Failed"
    assert patch["status"]["observedGeneration"] == 1
    (sent,) = patch["status"]["conditions"]
    assert sent["reason"] == "DeletionByPodGC" and sent["observedGeneration"] == 1
    assert status_patch(pod("a", phase="Succeeded"), condition) is None


def test_status_patch_keeps_the_transition_time_of_an_unchanged_condition() -> None:
    old = {
        "type": "DisruptionTarget",
        "status": "True",
        "reason": "EvictionByEvictionAPI",
        "lastTransitionTime": "2025-01-01T00:00:00Z",
    }
    new = {"type": "DisruptionTarget", "status": "True", "reason": "DeletionByPodGC"}
    patch = status_patch(pod("a", conditions=[old]), new)
    assert patch is not None
    (sent,) = patch["status"]["conditions"]
    assert sent["reason"] == "DeletionByPodGC"
    assert sent["lastTransitionTime"] == "2025-01-01T00:00:00Z"
    flipped = status_patch(pod("a", conditions=[{**old, "status": "False"}]), new)
    assert flipped is not None
    assert flipped["status"]["conditions"][0]["lastTransitionTime"] != old["lastTransitionTime"]


def test_status_patch_of_a_pod_without_generation_sends_no_observed_generation() -> None:
    body = pod("a")
    del body["metadata"]["generation"]
    patch = status_patch(body, None)
    assert patch == {"metadata": {"uid": "uid-a"}, "status": {"phase": "Failed"}}


def test_events_only_start_the_loop() -> None:
    cache = ObjectCache()
    c = controller(FakeKube(), cache)
    assert list(c.requests_for(PODS, pod("a"), None)) == [REQUEST]
    assert list(c.requests_for(NODES, None, node("n"))) == [REQUEST]
    asyncio.run(c.reconcile(REQUEST))
    assert list(c.requests_for(PODS, pod("a"), None)) == []  # the requeue keeps it going
    c.forget(lambda _request: True)  # leadership lost: the next term starts it again
    assert list(c.requests_for(PODS, pod("a"), None)) == [REQUEST]


# --- reconciles -----------------------------------------------------------------------------


def test_terminated_pods_beyond_threshold_go_oldest_first() -> None:
    cache = ObjectCache()
    put(cache, NODES, node("n"))
    for i in range(5):
        put(
            cache,
            PODS,
            pod(f"p{i}", phase="Succeeded", node="n", created=f"2026-01-01T00:0{i}:00Z"),
        )
    put(cache, PODS, pod("live", node="n"))
    kube = FakeKube(live_nodes=("n",))
    result = asyncio.run(
        controller(kube, cache, options={"terminated-pod-gc-threshold": 3}).reconcile(REQUEST)
    )
    assert result.requeue_after == 20.0
    assert deleted(kube) == ["p0", "p1"]
    assert all(grace == 0 for _, grace in kube.deletes)
    assert kube.patches == []  # terminal already: no status patch


def test_threshold_zero_disables_terminated_gc() -> None:
    cache = ObjectCache()
    put(cache, NODES, node("n"))
    for i in range(5):
        put(cache, PODS, pod(f"p{i}", phase="Failed", node="n"))
    kube = FakeKube()
    asyncio.run(
        controller(kube, cache, options={"terminated-pod-gc-threshold": 0}).reconcile(REQUEST)
    )
    assert kube.deletes == []


def test_orphans_wait_for_quarantine_and_a_live_get() -> None:
    cache = ObjectCache()
    put(cache, PODS, pod("orphan", node="gone"))
    put(cache, PODS, pod("lagging", node="late"))  # the cache lags: the node exists
    kube = FakeKube(live_nodes=("late",))
    clock = Clock()
    c = controller(kube, cache, clock)
    asyncio.run(c.reconcile(REQUEST))
    assert kube.deletes == [] and kube.node_gets == []  # quarantined
    clock.now += 40.0
    asyncio.run(c.reconcile(REQUEST))
    assert sorted(kube.node_gets) == ["gone", "late"]
    assert deleted(kube) == ["orphan"]
    ((name, patch, patch_type, subresource),) = kube.patches
    assert (name, patch_type, subresource) == ("orphan", "strategic", "status")
    assert patch["status"]["phase"] == "Failed"
    (condition,) = patch["status"]["conditions"]
    assert condition["type"] == "DisruptionTarget" and condition["reason"] == "DeletionByPodGC"


def test_node_back_in_cache_clears_quarantine() -> None:
    cache = ObjectCache()
    put(cache, PODS, pod("a", node="n"))
    kube = FakeKube()
    clock = Clock()
    c = controller(kube, cache, clock)
    asyncio.run(c.reconcile(REQUEST))
    put(cache, NODES, node("n"))
    clock.now += 40.0
    asyncio.run(c.reconcile(REQUEST))
    assert kube.node_gets == [] and kube.deletes == []


def test_unscheduled_terminating_pods_are_force_deleted() -> None:
    cache = ObjectCache()
    put(cache, PODS, pod("stuck", deleting=True, phase="Pending"))
    put(cache, PODS, pod("pending", phase="Pending"))
    kube = FakeKube()
    asyncio.run(controller(kube, cache).reconcile(REQUEST))
    assert kube.deletes == [("stuck", 0)]
    ((name, patch, _, _),) = kube.patches
    assert name == "stuck" and "conditions" not in patch["status"]


def test_terminating_pods_on_out_of_service_nodes_are_force_deleted() -> None:
    cache = ObjectCache()
    put(cache, NODES, node("down", ready=False, out_of_service=True))
    put(cache, NODES, node("tainted-ready", ready=True, out_of_service=True))
    put(cache, NODES, node("not-ready", ready=False))
    put(cache, PODS, pod("a", node="down", deleting=True))
    put(cache, PODS, pod("b", node="tainted-ready", deleting=True))
    put(cache, PODS, pod("c", node="not-ready", deleting=True))
    put(cache, PODS, pod("d", node="down"))
    kube = FakeKube()
    asyncio.run(controller(kube, cache).reconcile(REQUEST))
    assert deleted(kube) == ["a"]


def test_one_failed_delete_does_not_stop_the_rest() -> None:
    class Failing(FakeKube):
        async def delete(
            self,
            resource: ApiResource,
            namespace: str | None,
            name: str,
            *,
            grace_period_seconds: int | None = None,
            **kw: Any,
        ) -> dict[str, Any]:
            if name == "p0":
                raise RuntimeError("boom")
            return await super().delete(
                resource, namespace, name, grace_period_seconds=grace_period_seconds
            )

    cache = ObjectCache()
    put(cache, NODES, node("n"))
    for i in range(3):
        put(cache, PODS, pod(f"p{i}", phase="Failed", node="n", created=f"2026-01-01T00:0{i}:00Z"))
    kube = Failing()
    asyncio.run(
        controller(kube, cache, options={"terminated-pod-gc-threshold": 1}).reconcile(REQUEST)
    )
    assert deleted(kube) == ["p1"]


def test_checks_run_once_a_period_however_often_woken() -> None:
    cache = ObjectCache()
    put(cache, PODS, pod("stuck", deleting=True, phase="Pending"))
    kube = FakeKube()
    clock = Clock()
    c = controller(kube, cache, clock, options={"pod-gc-check-period": 5.0})
    assert asyncio.run(c.reconcile(REQUEST)).requeue_after == 5.0
    assert len(kube.deletes) == 1
    clock.now += 2.0
    early = asyncio.run(c.reconcile(REQUEST))
    assert early.requeue_after == pytest.approx(3.0)
    assert len(kube.deletes) == 1  # no check before the period is over
    clock.now += 3.0
    asyncio.run(c.reconcile(REQUEST))
    assert len(kube.deletes) == 2  # the pod is still cached (it has a finalizer): again


def test_passes_run_in_upstream_order() -> None:
    """Terminated beyond the threshold, terminating on out-of-service nodes, orphans, then
    unscheduled terminating pods; a pod each."""
    cache = ObjectCache()
    put(cache, NODES, node("n"))
    put(cache, NODES, node("down", ready=False, out_of_service=True))
    put(cache, PODS, pod("unscheduled", deleting=True, phase="Pending"))
    put(cache, PODS, pod("orphan", node="gone"))
    put(cache, PODS, pod("out-of-service", node="down", deleting=True))
    put(
        cache,
        PODS,
        pod("terminated-old", phase="Succeeded", node="n", created="2025-01-01T00:00:00Z"),
    )
    put(cache, PODS, pod("terminated-new", phase="Succeeded", node="n"))
    kube = FakeKube()
    clock = Clock()
    c = controller(kube, cache, clock, options={"terminated-pod-gc-threshold": 1})
    asyncio.run(c.reconcile(REQUEST))
    clock.now += 40.0
    kube.deletes.clear()
    put(
        cache,
        PODS,
        pod("terminated-old", phase="Succeeded", node="n", created="2025-01-01T00:00:00Z"),
    )
    asyncio.run(c.reconcile(REQUEST))
    assert [name for name, _ in kube.deletes] == [
        "terminated-old",
        "out-of-service",
        "orphan",
        "unscheduled",
    ]


def test_evicted_pods_go_before_older_ones() -> None:
    cache = ObjectCache()
    put(cache, NODES, node("n"))
    put(cache, PODS, pod("old", phase="Failed", node="n", created="2025-01-01T00:00:00Z"))
    put(cache, PODS, pod("older", phase="Failed", node="n", created="2024-01-01T00:00:00Z"))
    put(cache, PODS, pod("evicted", phase="Failed", node="n", reason="Evicted"))
    put(cache, PODS, pod("new", phase="Succeeded", node="n", created="2026-06-01T00:00:00Z"))
    kube = FakeKube()
    asyncio.run(
        controller(kube, cache, options={"terminated-pod-gc-threshold": 2}).reconcile(REQUEST)
    )
    assert deleted(kube) == ["evicted", "older"]


def test_deletes_are_forced_and_preconditioned_on_the_uid() -> None:
    cache = ObjectCache()
    put(cache, PODS, pod("stuck", deleting=True, phase="Pending"))
    kube = FakeKube()
    asyncio.run(controller(kube, cache).reconcile(REQUEST))
    assert kube.deletes == [("stuck", 0)] and kube.delete_uids == ["uid-stuck"]


def test_a_terminal_orphan_is_deleted_without_a_status_patch() -> None:
    """Upstream's integration cases: a Succeeded or Failed orphan keeps its phase and gets no
    DisruptionTarget condition."""
    cache = ObjectCache()
    put(cache, PODS, pod("done", node="gone", phase="Succeeded"))
    put(cache, PODS, pod("failed", node="gone", phase="Failed"))
    kube = FakeKube()
    clock = Clock()
    c = controller(kube, cache, clock, options={"terminated-pod-gc-threshold": 5})
    asyncio.run(c.reconcile(REQUEST))
    clock.now += 40.0
    asyncio.run(c.reconcile(REQUEST))
    assert deleted(kube) == ["done", "failed"] and kube.patches == []


def test_a_failed_node_get_is_retried_one_quarantine_later() -> None:
    cache = ObjectCache()
    put(cache, PODS, pod("orphan", node="gone"))
    kube = FakeKube()
    kube.get_error = KubeApiError(500, "InternalError", "etcd is down")
    clock = Clock()
    c = controller(kube, cache, clock)
    asyncio.run(c.reconcile(REQUEST))  # t=100: quarantined until 140
    clock.now = 140.0
    asyncio.run(c.reconcile(REQUEST))  # the GET fails; quarantined again until 180
    assert kube.node_gets == ["gone"] and kube.deletes == []
    kube.get_error = None
    clock.now = 160.0
    asyncio.run(c.reconcile(REQUEST))
    assert kube.node_gets == ["gone"]  # still quarantined
    clock.now = 180.0
    asyncio.run(c.reconcile(REQUEST))
    assert kube.node_gets == ["gone", "gone"] and deleted(kube) == ["orphan"]


def test_a_node_found_by_the_live_get_keeps_its_pods() -> None:
    cache = ObjectCache()
    put(cache, PODS, pod("a", node="late"))
    kube = FakeKube(live_nodes=("late",))
    clock = Clock()
    c = controller(kube, cache, clock)
    for _ in range(3):
        asyncio.run(c.reconcile(REQUEST))
        clock.now += 40.0
    assert kube.node_gets == ["late", "late"] and kube.deletes == []


def test_leadership_lost_forgets_the_quarantine() -> None:
    cache = ObjectCache()
    put(cache, PODS, pod("orphan", node="gone"))
    kube = FakeKube()
    clock = Clock()
    c = controller(kube, cache, clock)
    asyncio.run(c.reconcile(REQUEST))
    c.forget(lambda _request: True)
    clock.now += 40.0
    asyncio.run(c.reconcile(REQUEST))  # a new term: the quarantine starts again
    assert kube.node_gets == [] and kube.deletes == []
    clock.now += 40.0
    asyncio.run(c.reconcile(REQUEST))
    assert deleted(kube) == ["orphan"]


@pytest.mark.parametrize(
    "error",
    [
        NotFoundError(404, "NotFound", "pods stuck not found"),
        ConflictError(409, "Conflict", "Precondition failed: UID in precondition"),
    ],
    ids=["gone", "replaced"],
)
def test_a_pod_gone_or_replaced_is_not_retried_as_a_failure(
    error: Exception, caplog: pytest.LogCaptureFixture
) -> None:
    class Gone(FakeKube):
        async def patch(self, *args: Any, **kw: Any) -> dict[str, Any]:
            raise error

    cache = ObjectCache()
    put(cache, PODS, pod("stuck", deleting=True, phase="Pending"))
    kube = Gone()
    with caplog.at_level("INFO", logger="reconcilers.controllers.podgc"):
        asyncio.run(controller(kube, cache).reconcile(REQUEST))
    assert kube.deletes == []
    messages = [r.getMessage() for r in caplog.records]
    assert not [m for m in messages if "Failed to delete" in m or "succeeded" in m]


def test_upstream_log_lines(caplog: pytest.LogCaptureFixture) -> None:
    cache = ObjectCache()
    put(cache, PODS, pod("stuck", deleting=True, phase="Pending"))
    kube = FakeKube()
    with caplog.at_level("INFO", logger="reconcilers.controllers.podgc"):
        asyncio.run(controller(kube, cache).reconcile(REQUEST))
    messages = [r.getMessage() for r in caplog.records if r.levelname == "INFO"]
    assert messages == [
        'Found unscheduled terminating Pod not assigned to any Node, deleting pod="default/stuck"',
        'PodGC is force deleting Pod pod="default/stuck"',
        'Forced deletion of unscheduled terminating Pod succeeded pod="default/stuck"',
    ]

"""The PVC and PV protection controllers' decisions: who uses a claim, which changes queue what,
when a finalizer goes or comes back, and when one live pod list serves several claims."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
import pytest

from bus.envelope import Envelope, EventType
from bus.subjects import ObjectRef, ResourceType
from kubus.kube import ApiResource
from kubus.kube.client import ListPage
from reconcilers.cache import ObjectCache
from reconcilers.controller import Context, Request
from reconcilers.controllers import pvcprotection, pvprotection
from reconcilers.controllers.pvcprotection import (
    PVCProtectionController,
    claim_names,
    pod_is_shut_down,
    pod_is_terminated,
    pod_uses_claim,
    requests_for_pod,
)
from reconcilers.controllers.pvprotection import PVProtectionController, is_volume_in_use
from reconcilers.kinds import PERSISTENTVOLUMECLAIMS, PERSISTENTVOLUMES, PODS

PVC_FINALIZER = "kubernetes.io/pvc-protection"
PV_FINALIZER = "kubernetes.io/pv-protection"
NS = "default"


def claim(
    name: str = "data",
    *,
    deleting: bool = False,
    finalizers: tuple[str, ...] = (PVC_FINALIZER,),
    owner_uid: str | None = None,
) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": name,
        "namespace": NS,
        "uid": f"uid-{name}",
        "resourceVersion": "1",
        "finalizers": list(finalizers),
    }
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    if owner_uid is not None:
        meta["ownerReferences"] = [
            {"apiVersion": "v1", "kind": "Pod", "name": "p", "uid": owner_uid, "controller": True}
        ]
    return {"metadata": meta, "spec": {}}


def pod(
    name: str = "web",
    *,
    claims: tuple[str, ...] = ("data",),
    ephemeral: tuple[str, ...] = (),
    node: str = "node-1",
    phase: str = "Running",
    uid: str | None = None,
    **meta: Any,
) -> dict[str, Any]:
    volumes: list[dict[str, Any]] = [
        {"name": f"v-{c}", "persistentVolumeClaim": {"claimName": c}} for c in claims
    ]
    volumes += [{"name": v, "ephemeral": {"volumeClaimTemplate": {"spec": {}}}} for v in ephemeral]
    volumes.append({"name": "scratch", "emptyDir": {}})
    spec: dict[str, Any] = {"volumes": volumes, "containers": [{"name": "c", "image": "i"}]}
    if node:
        spec["nodeName"] = node
    return {
        "metadata": {
            "name": name,
            "namespace": NS,
            "uid": uid or f"uid-{name}",
            "resourceVersion": "1",
            **meta,
        },
        "spec": spec,
        "status": {"phase": phase},
    }


# --- who uses a claim ---------------------------------------------------------------------


def test_a_scheduled_pod_naming_the_claim_uses_it_whatever_its_phase() -> None:
    assert pod_uses_claim(pod(), claim())
    # A finished pod may still have the volume mounted: upstream keeps the claim for it too.
    assert pod_uses_claim(pod(phase="Succeeded"), claim())
    assert pod_uses_claim(pod(phase="Failed"), claim())


def test_an_unscheduled_pod_or_one_naming_other_claims_does_not() -> None:
    assert not pod_uses_claim(pod(node=""), claim())
    assert not pod_uses_claim(pod(claims=("other",)), claim())


def test_an_ephemeral_claim_is_used_by_its_own_pod_until_it_is_shut_down() -> None:
    owner = pod("app", claims=(), ephemeral=("cache",))
    ephemeral = claim("app-cache", owner_uid="uid-app")
    assert pod_uses_claim(owner, ephemeral)
    # The same name, made by someone else (or for an earlier pod of that name): not its claim.
    assert not pod_uses_claim(owner, claim("app-cache", owner_uid="uid-other"))
    assert not pod_uses_claim(owner, claim("app-cache"))
    shut_down = pod(
        "app",
        claims=(),
        ephemeral=("cache",),
        deletionTimestamp="2026-01-01T00:00:00Z",
        deletionGracePeriodSeconds=0,
    )
    assert pod_is_shut_down(shut_down)
    assert not pod_uses_claim(shut_down, ephemeral)
    graceful = pod(
        "app",
        claims=(),
        ephemeral=("cache",),
        deletionTimestamp="2026-01-01T00:00:00Z",
        deletionGracePeriodSeconds=30,
    )
    assert pod_uses_claim(graceful, ephemeral)


def test_claim_names_are_named_claims_and_ephemeral_pod_volume_names() -> None:
    assert claim_names(pod("app", claims=("a", "b"), ephemeral=("cache",))) == [
        "a",
        "b",
        "app-cache",
    ]


def test_terminated_means_finished_or_deleted_with_nothing_running() -> None:
    assert pod_is_terminated(pod(phase="Succeeded"))
    assert pod_is_terminated(pod(phase="Failed"))
    assert not pod_is_terminated(pod())
    deleted = pod(deletionTimestamp="2026-01-01T00:00:00Z")
    assert pod_is_terminated(deleted)  # no container statuses: none running
    deleted["status"]["containerStatuses"] = [{"state": {"running": {}}}]
    assert not pod_is_terminated(deleted)
    deleted["status"]["containerStatuses"] = [{"state": {"terminated": {"exitCode": 0}}}]
    deleted["status"]["initContainerStatuses"] = [{"state": {"waiting": {}}}]
    assert pod_is_terminated(deleted)


# --- which changes queue what -------------------------------------------------------------


def test_pod_changes_queue_its_claims_only_when_they_may_free_them() -> None:
    data = Request(NS, "data")
    assert requests_for_pod(pod(), None) == []  # a running scheduled pod keeps them
    assert requests_for_pod(pod(phase="Succeeded"), pod()) == [data]
    assert requests_for_pod(pod(node=""), None) == [data]
    assert requests_for_pod(None, pod()) == [data]  # deleted
    # A delete and a re-create under one name, seen as an update: the old pod's claims.
    recreated = pod(claims=("other",), uid="uid-new")
    assert requests_for_pod(recreated, pod()) == [data]
    assert requests_for_pod(pod(ephemeral=("cache",), claims=()), None) == []
    assert requests_for_pod(None, pod("app", ephemeral=("cache",), claims=())) == [
        Request(NS, "app-cache")
    ]


def test_claim_changes_queue_claims_to_protect_or_release() -> None:
    controller = PVCProtectionController(context(FakeKube()))
    assert list(controller.requests_for(PERSISTENTVOLUMECLAIMS, claim(), None)) == []
    assert list(controller.requests_for(PERSISTENTVOLUMECLAIMS, claim(finalizers=()), None)) == [
        Request(NS, "data")
    ]
    assert list(controller.requests_for(PERSISTENTVOLUMECLAIMS, claim(deleting=True), None)) == [
        Request(NS, "data")
    ]
    # Deleting without the finalizer: the apiserver removes it, nothing to do.
    gone = claim(deleting=True, finalizers=("example.com/other",))
    assert list(controller.requests_for(PERSISTENTVOLUMECLAIMS, gone, None)) == []
    assert list(controller.requests_for(PERSISTENTVOLUMECLAIMS, None, claim())) == []


# --- reconciles ---------------------------------------------------------------------------


def envelope(body: dict[str, Any], rv: int) -> Envelope:
    return Envelope(
        subject="",
        sequence=rv,
        event=EventType.MODIFIED,
        resource_version=str(rv),
        uid="",
        payload=msgspec.json.encode(body),
    )


def put(cache: ObjectCache, resource: ResourceType, body: dict[str, Any], rv: int = 1) -> None:
    meta = body["metadata"]
    cache.apply(0, ObjectRef(resource, meta.get("namespace"), meta["name"]), envelope(body, rv))


class FakeKube:
    """The two calls the controllers make: the pods LIST and the PUT of the object."""

    def __init__(self, live_pods: list[dict[str, Any]] | None = None) -> None:
        self.live_pods = live_pods or []
        self.lists: list[str | None] = []
        self.puts: list[tuple[str | None, str, dict[str, Any]]] = []

    async def list_page(
        self, resource: ApiResource, *, limit: int, continue_token: str | None = None, **kw: Any
    ) -> ListPage:
        assert resource.name == "pods"
        self.lists.append(kw.get("namespace"))
        items = [msgspec.Raw(msgspec.json.encode(p)) for p in self.live_pods]
        return ListPage(items=items)

    async def replace(
        self, resource: ApiResource, namespace: str | None, name: str, body: dict[str, Any]
    ) -> dict[str, Any]:
        self.puts.append((namespace, name, body))
        return body


def api(resource: ResourceType, kind: str, namespaced: bool) -> ApiResource:
    return ApiResource("", "v1", resource.resource, kind, namespaced, frozenset())


def context(kube: FakeKube, cache: ObjectCache | None = None) -> Context:
    return Context(
        cache=cache if cache is not None else ObjectCache(),
        kube=kube,  # type: ignore[arg-type]
        apis={
            PODS: api(PODS, "Pod", True),
            PERSISTENTVOLUMECLAIMS: api(PERSISTENTVOLUMECLAIMS, "PersistentVolumeClaim", True),
            PERSISTENTVOLUMES: api(PERSISTENTVOLUMES, "PersistentVolume", False),
        },
        events=None,  # type: ignore[arg-type]
        tracer=None,
    )


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def deleting_claims(
    kube: FakeKube, *names: str, users: tuple[dict[str, Any], ...] = ()
) -> tuple[PVCProtectionController, ObjectCache, Clock]:
    cache = ObjectCache()
    clock = Clock()
    controller = PVCProtectionController(context(kube, cache), clock=clock)
    for user in users:
        put(cache, PODS, user)
    for name in names:
        body = claim(name, deleting=True, finalizers=("example.com/keep", PVC_FINALIZER))
        put(cache, PERSISTENTVOLUMECLAIMS, body)
        assert list(controller.requests_for(PERSISTENTVOLUMECLAIMS, body, None))
    return controller, cache, clock


def test_an_unused_deleting_claim_loses_the_finalizer_after_a_live_check() -> None:
    kube = FakeKube()
    controller, _, _ = deleting_claims(kube, "data")
    asyncio.run(controller.reconcile(Request(NS, "data")))
    assert kube.lists == [NS]
    ((namespace, name, body),) = kube.puts
    assert (namespace, name) == (NS, "data")
    assert body["metadata"]["finalizers"] == ["example.com/keep"]
    assert body["metadata"]["resourceVersion"] == "1"  # a PUT on the cached version


def test_a_user_in_the_cache_keeps_the_claim_without_a_live_list() -> None:
    kube = FakeKube()
    controller, _, _ = deleting_claims(kube, "data", users=(pod(),))
    asyncio.run(controller.reconcile(Request(NS, "data")))
    assert kube.lists == [] and kube.puts == []


def test_a_user_only_the_apiserver_knows_yet_keeps_the_claim() -> None:
    kube = FakeKube(live_pods=[pod()])
    controller, _, _ = deleting_claims(kube, "data")
    asyncio.run(controller.reconcile(Request(NS, "data")))
    assert kube.lists == [NS] and kube.puts == []


def test_one_live_list_serves_the_claims_seen_deleting_before_it_started() -> None:
    kube = FakeKube()
    controller, cache, clock = deleting_claims(kube, "a", "b")
    clock.now += 1
    asyncio.run(controller.reconcile(Request(NS, "a")))
    asyncio.run(controller.reconcile(Request(NS, "b")))
    assert kube.lists == [NS]
    # Seen deleting after that list started: a pod may have come in between, so a new list.
    clock.now += 1
    late = claim("c", deleting=True)
    put(cache, PERSISTENTVOLUMECLAIMS, late)
    list(controller.requests_for(PERSISTENTVOLUMECLAIMS, late, None))
    asyncio.run(controller.reconcile(Request(NS, "c")))
    assert kube.lists == [NS, NS]
    assert [name for _, name, _ in kube.puts] == ["a", "b", "c"]


def test_a_pod_gone_after_a_live_list_is_not_judged_by_that_list() -> None:
    user = pod()
    kube = FakeKube(live_pods=[user])
    controller, cache, clock = deleting_claims(kube, "data", "spare", users=(user,))
    clock.now += 1
    asyncio.run(controller.reconcile(Request(NS, "data")))  # the cache's pod keeps it
    asyncio.run(controller.reconcile(Request(NS, "spare")))  # a live list, the pod in it
    assert kube.lists == [NS] and [name for _, name, _ in kube.puts] == ["spare"]
    # The pod goes: its delete queues the claim again, and only a newer list may free it.
    clock.now += 1
    cache.apply(
        0,
        ObjectRef(PODS, NS, "web"),
        Envelope(
            subject="",
            sequence=2,
            event=EventType.DELETED,
            resource_version="2",
            uid="",
            payload=msgspec.json.encode(user),
        ),
    )
    kube.live_pods = []
    assert list(controller.requests_for(PODS, None, user)) == [Request(NS, "data")]
    clock.now += 1
    asyncio.run(controller.reconcile(Request(NS, "data")))
    assert kube.lists == [NS, NS]
    assert [name for _, name, _ in kube.puts] == ["spare", "data"]


def test_a_live_claim_without_the_finalizer_gets_it_back() -> None:
    kube = FakeKube()
    cache = ObjectCache()
    put(cache, PERSISTENTVOLUMECLAIMS, claim(finalizers=("example.com/keep",)))
    controller = PVCProtectionController(context(kube, cache))
    asyncio.run(controller.reconcile(Request(NS, "data")))
    ((_, _, body),) = kube.puts
    assert body["metadata"]["finalizers"] == ["example.com/keep", PVC_FINALIZER]
    assert kube.lists == []


# --- persistent volumes -------------------------------------------------------------------


def volume(phase: str, *, deleting: bool = False, finalizers: tuple[str, ...] = ()) -> Any:
    meta: dict[str, Any] = {"name": "pv-1", "resourceVersion": "3", "finalizers": list(finalizers)}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return {"metadata": meta, "spec": {}, "status": {"phase": phase}}


def test_only_a_bound_volume_is_in_use() -> None:
    assert is_volume_in_use(volume("Bound"))
    for phase in ("Pending", "Available", "Released", "Failed"):
        assert not is_volume_in_use(volume(phase)), phase


@pytest.mark.parametrize(
    ("body", "finalizers"),
    [
        (volume("Bound", deleting=True, finalizers=(PV_FINALIZER,)), None),
        (volume("Released", deleting=True, finalizers=(PV_FINALIZER, "x/y")), ["x/y"]),
        (volume("Available", finalizers=("x/y",)), ["x/y", PV_FINALIZER]),
        (volume("Available", finalizers=(PV_FINALIZER,)), None),
    ],
    ids=["bound-kept", "released-freed", "finalizer-added", "nothing-to-do"],
)
def test_volume_reconciles(body: dict[str, Any], finalizers: list[str] | None) -> None:
    kube = FakeKube()
    cache = ObjectCache()
    put(cache, PERSISTENTVOLUMES, body)
    controller = PVProtectionController(context(kube, cache))
    queued = list(controller.requests_for(PERSISTENTVOLUMES, body, None))
    asyncio.run(controller.reconcile(Request(None, "pv-1")))
    if finalizers is None:
        assert kube.puts == []
        deleting = bool(body["metadata"].get("deletionTimestamp"))
        assert queued == ([Request(None, "pv-1")] if deleting else [])
    else:
        ((namespace, name, written),) = kube.puts
        assert (namespace, name) == (None, "pv-1")
        assert written["metadata"]["finalizers"] == finalizers
        assert queued == [Request(None, "pv-1")]


def test_the_two_controllers_are_kcm_s_names_with_one_worker() -> None:
    assert PVCProtectionController.name == "persistentvolumeclaim-protection-controller"
    assert PVProtectionController.name == "persistentvolume-protection-controller"
    assert pvcprotection.FINALIZER == PVC_FINALIZER and pvprotection.FINALIZER == PV_FINALIZER
    assert PVCProtectionController.default_concurrency == 1
    assert PVProtectionController.default_concurrency == 1

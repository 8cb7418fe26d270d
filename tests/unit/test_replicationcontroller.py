"""The ReplicationController controller's differences from the ReplicaSet one: its names, an
equality selector (a map) for adoption and matching, owner references of its kind, no
``terminatingReplicas``, events from ``replication-controller``."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec

from bus.envelope import Envelope, EventType
from bus.subjects import ObjectRef, ResourceType
from kubus.kube import ApiResource
from reconcilers.cache import ObjectCache
from reconcilers.controller import Context, Request
from reconcilers.controllers.replicaset import ReplicaSetController
from reconcilers.controllers.replicationcontroller import ReplicationControllerController
from reconcilers.kinds import PODS, REPLICATIONCONTROLLERS

NS = "shop"


def rc(replicas: int = 2, selector: dict[str, str] | None = None) -> dict[str, Any]:
    labels = {"app": "web"}
    return {
        "apiVersion": "v1",
        "kind": "ReplicationController",
        "metadata": {
            "name": "web",
            "namespace": NS,
            "uid": "rc-uid",
            "resourceVersion": "1",
            "generation": 1,
        },
        "spec": {
            "replicas": replicas,
            "selector": labels if selector is None else selector,
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "c", "image": "i"}]},
            },
        },
        "status": {"replicas": 0},
    }


def pod(name: str, labels: dict[str, str], owner: str | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": name,
        "namespace": NS,
        "uid": f"uid-{name}",
        "resourceVersion": "1",
        "labels": labels,
    }
    if owner is not None:
        meta["ownerReferences"] = [
            {
                "apiVersion": "v1",
                "kind": owner,
                "name": "web",
                "uid": "rc-uid",
                "controller": True,
            }
        ]
    return {"metadata": meta, "spec": {}, "status": {"phase": "Running"}}


def put(cache: ObjectCache, resource: ResourceType, body: dict[str, Any]) -> None:
    meta = body["metadata"]
    envelope = Envelope(
        subject="",
        sequence=1,
        event=EventType.ADDED,
        resource_version=meta["resourceVersion"],
        uid=meta["uid"],
        payload=msgspec.json.encode(body),
    )
    cache.apply(0, ObjectRef(resource, meta.get("namespace"), meta["name"]), envelope)


class FakeKube:
    def __init__(self) -> None:
        self.created: list[dict[str, Any]] = []
        self.statuses: list[dict[str, Any]] = []

    async def create(
        self, resource: ApiResource, namespace: str | None, body: dict[str, Any]
    ) -> dict[str, Any]:
        made = {**body, "metadata": {**body["metadata"], "name": f"web-{len(self.created)}"}}
        self.created.append(made)
        return made

    async def replace(
        self,
        resource: ApiResource,
        namespace: str | None,
        name: str,
        body: dict[str, Any],
        *,
        subresource: str | None = None,
    ) -> dict[str, Any]:
        assert subresource == "status"
        self.statuses.append(body["status"])
        return body


class FakeEvents:
    def __init__(self) -> None:
        self.recorded: list[tuple[str, str]] = []

    def record(self, obj: Any, kind: str, reason: str, message: str, *, component: str) -> None:
        self.recorded.append((reason, component))


def controller(
    cache: ObjectCache, kube: FakeKube, events: FakeEvents
) -> ReplicationControllerController:
    apis = {
        PODS: ApiResource("", "v1", "pods", "Pod", True, frozenset()),
        REPLICATIONCONTROLLERS: ApiResource(
            "", "v1", "replicationcontrollers", "ReplicationController", True, frozenset()
        ),
    }
    context = Context(
        cache=cache,
        kube=kube,  # type: ignore[arg-type]
        apis=apis,
        events=events,  # type: ignore[arg-type]
        tracer=None,
    )
    return ReplicationControllerController(context)


def test_it_is_kcm_s_replicationcontroller_controller() -> None:
    assert ReplicationControllerController.name == "replicationcontroller-controller"
    assert ReplicationControllerController.aliases == ("replicationcontroller",)
    assert ReplicationControllerController.concurrency_flag == "concurrent-rc-syncs"
    assert ReplicationControllerController.default_concurrency == 5
    assert ReplicationControllerController.reads == (REPLICATIONCONTROLLERS, PODS)
    assert issubclass(ReplicationControllerController, ReplicaSetController)


def test_the_selector_is_a_map_meaning_equality() -> None:
    selector_of = ReplicationControllerController.selector_of
    assert selector_of(rc()) == {"matchLabels": {"app": "web"}}
    assert selector_of({"spec": {}}) is None


def test_an_orphan_matching_by_equality_queues_the_rc_and_one_of_another_kind_does_not() -> None:
    cache = ObjectCache()
    put(cache, REPLICATIONCONTROLLERS, rc())
    rcs = controller(cache, FakeKube(), FakeEvents())
    orphan = pod("orphan", {"app": "web", "extra": "x"})
    assert list(rcs.requests_for(PODS, orphan, None)) == [Request(NS, "web")]
    assert list(rcs.requests_for(PODS, pod("other", {"app": "db"}), None)) == []
    # A pod a ReplicaSet named "web" controls is not this RC's, nor an orphan.
    assert list(rcs.requests_for(PODS, pod("rs-pod", {"app": "web"}, "ReplicaSet"), None)) == []
    assert list(
        rcs.requests_for(PODS, pod("mine", {"app": "web"}, "ReplicationController"), None)
    ) == [Request(NS, "web")]


def test_a_sync_creates_pods_it_owns_and_writes_a_status_without_terminating_replicas() -> None:
    cache = ObjectCache()
    put(cache, REPLICATIONCONTROLLERS, rc(replicas=2))
    kube, events = FakeKube(), FakeEvents()
    asyncio.run(controller(cache, kube, events).reconcile(Request(NS, "web")))
    assert len(kube.created) == 2
    for made in kube.created:
        (ref,) = made["metadata"]["ownerReferences"]
        assert (ref["kind"], ref["name"], ref["controller"]) == (
            "ReplicationController",
            "web",
            True,
        )
        assert made["metadata"]["generateName"] == "web-"
    (status,) = kube.statuses
    assert "terminatingReplicas" not in status
    assert status["observedGeneration"] == 1
    assert events.recorded == [("SuccessfulCreate", "replication-controller")] * 2

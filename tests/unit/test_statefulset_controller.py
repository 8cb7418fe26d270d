"""The StatefulSet controller's sync on an in-memory apiserver and a real cache: what it writes,
in which order, with which events, and how it waits for the cache to show its own writes."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from kubus.kube import KubeApiError
from reconcilers.cache import ObjectCache
from reconcilers.controller import Context, Request, Result
from reconcilers.controllers.statefulset import StatefulSetController
from reconcilers.controllers.statefulset.controller import FEATURE_GATES
from reconcilers.controllers.statefulset.utils import REVISION_LABEL
from reconcilers.kinds import (
    CONTROLLERREVISIONS,
    PERSISTENTVOLUMECLAIMS,
    PODS,
    STATEFULSETS,
    Object,
    clone,
)
from tests.unit.statefulset_fixtures import (
    POD_API,
    PVC_API,
    REVISION_API,
    STS_API,
    FakeKube,
    put,
)

RESOURCES = {
    "pods": PODS,
    "persistentvolumeclaims": PERSISTENTVOLUMECLAIMS,
    "statefulsets": STATEFULSETS,
    "controllerrevisions": CONTROLLERREVISIONS,
}


class Events:
    def __init__(self) -> None:
        self.recorded: list[tuple[str, str, str]] = []

    def record(self, obj: Any, kind: str, reason: str, message: str, *, component: str) -> None:
        assert component == "statefulset-controller"
        self.recorded.append((kind, reason, message))


def statefulset(replicas: int = 2, **spec: Any) -> Object:
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {
            "name": "web",
            "namespace": "shop",
            "uid": "set-1",
            "generation": 1,
            "resourceVersion": "1",
        },
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": "web"}},
            "serviceName": "web",
            "podManagementPolicy": "OrderedReady",
            "revisionHistoryLimit": 10,
            "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"partition": 0}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "c", "image": "c:1"}]},
            },
            "volumeClaimTemplates": [{"metadata": {"name": "data"}, "spec": {}}],
            **spec,
        },
    }


class World:
    """The fake apiserver, the cache the bus would fill from it, and the controller."""

    def __init__(self, sts: Object, *extra: Object) -> None:
        self.kube = FakeKube()
        self.kube.objects[("statefulsets", "shop", "web")] = clone(sts)
        for obj in extra:
            resource = obj["kind"].lower() + "s"
            self.kube.objects[(resource, "shop", obj["metadata"]["name"])] = clone(obj)
        self.cache = ObjectCache()
        self.events = Events()
        self.version = 0
        context = Context(
            cache=self.cache,
            kube=self.kube,  # type: ignore[arg-type]
            apis={
                PODS: POD_API,
                PERSISTENTVOLUMECLAIMS: PVC_API,
                STATEFULSETS: STS_API,
                CONTROLLERREVISIONS: REVISION_API,
            },
            events=self.events,  # type: ignore[arg-type]
            tracer=None,
            gate_defaults=FEATURE_GATES,
        )
        self.controller = StatefulSetController(context)
        self.deliver()

    def deliver(self) -> None:
        """The bus catches up: every apiserver object is cached as it is now."""
        for (resource, _, _), obj in list(self.kube.objects.items()):
            self.version += 1
            put(
                self.cache,
                RESOURCES[resource],
                obj,
                int(obj["metadata"].get("resourceVersion") or 0) or self.version,
            )

    def run_pods(self) -> None:
        """kwok: every pod Running and Ready."""
        for (resource, _, _), obj in self.kube.objects.items():
            if resource == "pods" and obj["status"]["phase"] == "Pending":
                obj["status"] = {
                    "phase": "Running",
                    "conditions": [
                        {
                            "type": "Ready",
                            "status": "True",
                            "lastTransitionTime": "2026-01-01T00:00:00Z",
                        }
                    ],
                }
                obj["metadata"]["resourceVersion"] = str(
                    int(obj["metadata"]["resourceVersion"]) + 1
                )

    def sync(self) -> Result:
        return asyncio.run(self.controller.reconcile(Request("shop", "web")))

    def named(self, resource: str) -> list[str]:
        return sorted(name for (kind, _, name) in self.kube.objects if kind == resource)


def test_pods_come_up_in_order_with_their_claims_first() -> None:
    world = World(statefulset(2))
    world.sync()
    creates = [(c.resource, c.name) for c in world.kube.writes("create")]
    revision = world.named("controllerrevisions")[0]
    assert creates == [
        ("controllerrevisions", revision),
        ("persistentvolumeclaims", "data-web-0"),
        ("pods", "web-0"),
    ]
    pod = world.kube.objects[("pods", "shop", "web-0")]
    assert pod["metadata"]["labels"][REVISION_LABEL] == revision
    claim = world.kube.objects[("persistentvolumeclaims", "shop", "data-web-0")]
    assert claim["metadata"]["labels"] == {"app": "web"}
    assert (
        "Normal",
        "SuccessfulCreate",
        "Create Claim data-web-0 Pod web-0 in StatefulSet web success",
    ) in world.events.recorded
    assert (
        "Normal",
        "SuccessfulCreate",
        "Create Pod web-0 in StatefulSet web successful",
    ) in world.events.recorded
    status = world.kube.objects[("statefulsets", "shop", "web")]["status"]
    assert status["updateRevision"] == status["currentRevision"] == revision
    # Until the cache shows the pod, nothing more is done.
    writes = len(world.kube.writes())
    assert world.sync().requeue_after is not None
    assert len(world.kube.writes()) == writes
    world.deliver()
    world.sync()
    assert world.named("pods") == ["web-0"]  # not ready yet: OrderedReady waits
    world.run_pods()
    world.deliver()
    world.sync()
    world.deliver()
    assert world.named("pods") == ["web-0", "web-1"]
    assert world.named("persistentvolumeclaims") == ["data-web-0", "data-web-1"]


def test_when_deleted_delete_gives_the_claims_to_the_set() -> None:
    policy = {"whenDeleted": "Delete", "whenScaled": "Retain"}
    world = World(statefulset(1, persistentVolumeClaimRetentionPolicy=policy))
    world.sync()
    world.deliver()
    world.run_pods()
    world.deliver()
    world.sync()
    claim = world.kube.objects[("persistentvolumeclaims", "shop", "data-web-0")]
    assert [
        (r["kind"], r["name"], r["controller"]) for r in claim["metadata"]["ownerReferences"]
    ] == [("StatefulSet", "web", True)]


def test_a_refused_pod_is_a_failed_create_event_and_a_retry() -> None:
    world = World(statefulset(1))
    world.kube.refuse[("create", "web-0")] = KubeApiError(
        403, "Forbidden", 'pods "web-0" is forbidden: exceeded quota: q, requested: pods=1'
    )
    with pytest.raises(KubeApiError):
        world.sync()
    assert (
        "Warning",
        "FailedCreate",
        'Create Pod web-0 in StatefulSet web failed error: pods "web-0" is forbidden: '
        "exceeded quota: q, requested: pods=1",
    ) in world.events.recorded


def test_an_orphan_member_is_adopted_and_a_stranger_is_not() -> None:
    orphan: Object = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "web-0",
            "namespace": "shop",
            "uid": "orphan",
            "labels": {"app": "web"},
            "resourceVersion": "5",
        },
        "status": {"phase": "Pending"},
    }
    stranger = clone(orphan)
    stranger["metadata"] = {**orphan["metadata"], "name": "other-0", "uid": "stranger"}
    world = World(statefulset(1), orphan, stranger)
    world.sync()
    patched = [c.name for c in world.kube.writes("patch") if c.resource == "pods"]
    assert patched == ["web-0"]


def test_pod_events_map_to_the_owning_set() -> None:
    world = World(statefulset(1))
    world.sync()
    world.deliver()
    pod = world.kube.objects[("pods", "shop", "web-0")]
    requests = world.controller.requests_for(PODS, pod, None)
    assert list(requests) == [Request("shop", "web")]
    assert list(world.controller.requests_for(PODS, None, pod)) == [Request("shop", "web")]

"""The ReplicationController controller against the real stack: what a user sees of an RC's
pods, status, events, adoption by an equality selector, a creation refused by admission, and a
pool of three processes losing one to kill -9."""

from __future__ import annotations

import json
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from tests.integration.test_partition_shards import overlaps, reconciles
from tests.support.leases import member_of
from tests.support.services import kubus_pool
from tests.support.system import create_namespace
from tests.support.wait import wait_for

pytestmark = pytest.mark.integration

CONTROLLERS = "--controllers=replicationcontroller"
WATCHED = "--resources=v1/replicationcontrollers,v1/pods"


def rc(name: str, replicas: int) -> dict[str, Any]:
    labels = {"app": name}
    return {
        "apiVersion": "v1",
        "kind": "ReplicationController",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": labels,
            "template": {
                "metadata": {"labels": {**labels, "tier": "web"}},
                "spec": {"containers": [{"name": "c", "image": "registry.example/c:1"}]},
            },
        },
    }


def owned_pods(core: client.CoreV1Api, namespace: str, name: str) -> list[Any]:
    return [
        pod
        for pod in core.list_namespaced_pod(namespace).items
        if any(ref.controller and ref.name == name for ref in pod.metadata.owner_references or [])
        and pod.metadata.deletion_timestamp is None
    ]


def settled(core: client.CoreV1Api, namespace: str, name: str, replicas: int) -> bool:
    found = core.read_namespaced_replication_controller(name, namespace)
    status = found.status
    return bool(
        status.replicas == replicas
        and (status.ready_replicas or 0) == replicas
        and (status.available_replicas or 0) == replicas
        and (status.fully_labeled_replicas or 0) == replicas
        and status.observed_generation == found.metadata.generation
        and len(owned_pods(core, namespace, name)) == replicas
    )


def events_of(core: client.CoreV1Api, namespace: str, name: str) -> list[Any]:
    return [
        e
        for e in core.list_namespaced_event(namespace).items
        if e.involved_object.kind == "ReplicationController" and e.involved_object.name == name
    ]


def test_an_rc_keeps_its_pods_adopts_by_equality_and_reports_status(
    kube: Any, namespace: str, stack_env: dict[str, str], tmp_path: Path
) -> None:
    core = client.CoreV1Api(kube)
    core.create_namespaced_pod(
        namespace,
        {
            "metadata": {"name": "orphan", "labels": {"app": "web", "extra": "x"}},
            "spec": {"containers": [{"name": "c", "image": "registry.example/c:1"}]},
        },
    )
    with kubus_pool(stack_env, tmp_path, extra=[CONTROLLERS], watcher_args=[WATCHED]):
        core.create_namespaced_replication_controller(namespace, rc("web", 3))
        wait_for(
            lambda: (
                len(owned_pods(core, namespace, "web")) == 3
                and "orphan" in {p.metadata.name for p in owned_pods(core, namespace, "web")}
            ),
            timeout=60,
            what="the orphan adopted and two pods created",
        )
        pod = core.read_namespaced_pod("orphan", namespace)
        (ref,) = pod.metadata.owner_references
        assert (ref.kind, ref.name, ref.controller) == ("ReplicationController", "web", True)
        # The orphan lacks the template's tier label: 3 replicas, 2 fully labeled.
        wait_for(
            lambda: (
                core.read_namespaced_replication_controller("web", namespace).status.ready_replicas
                == 3
            ),
            timeout=60,
            what="3 ready replicas",
        )
        status = core.read_namespaced_replication_controller("web", namespace).status
        assert (status.replicas, status.fully_labeled_replicas) == (3, 2)
        raw = json.loads(
            core.read_namespaced_replication_controller(
                "web", namespace, _preload_content=False
            ).data
        )
        assert "terminatingReplicas" not in raw["status"], raw["status"]

        # Released when its labels stop matching, and replaced.
        core.patch_namespaced_pod("orphan", namespace, {"metadata": {"labels": {"app": "gone"}}})
        wait_for(
            lambda: (
                not core.read_namespaced_pod("orphan", namespace).metadata.owner_references
                and settled(core, namespace, "web", 3)
            ),
            timeout=60,
            what="the orphan released and replaced",
        )
        for replicas in (5, 1):
            core.patch_namespaced_replication_controller(
                "web", namespace, {"spec": {"replicas": replicas}}
            )
            wait_for(
                lambda r=replicas: settled(core, namespace, "web", r),
                timeout=60,
                what=f"scaled to {replicas}",
            )
        wait_for(
            lambda: (
                {"SuccessfulCreate", "SuccessfulDelete"}
                <= {e.reason for e in events_of(core, namespace, "web")}
            ),
            timeout=30,
            what="SuccessfulCreate and SuccessfulDelete events",
        )
        sources = {e.source.component for e in events_of(core, namespace, "web")}
        assert sources == {"replication-controller"}, sources


def test_creations_refused_by_admission_are_a_replica_failure_until_they_are_not(
    kube: Any, namespace: str, stack_env: dict[str, str], tmp_path: Path
) -> None:
    """A ResourceQuota used up: the test writes its usage as the quota controller would (none
    runs here), so the apiserver's quota admission refuses every pod of the namespace."""
    core = client.CoreV1Api(kube)
    core.create_namespaced_resource_quota(
        namespace, {"metadata": {"name": "pods"}, "spec": {"hard": {"pods": "1"}}}
    )
    core.patch_namespaced_resource_quota_status(
        "pods", namespace, {"status": {"hard": {"pods": "1"}, "used": {"pods": "1"}}}
    )
    with kubus_pool(stack_env, tmp_path, extra=[CONTROLLERS], watcher_args=[WATCHED]):
        core.create_namespaced_replication_controller(namespace, rc("blocked", 2))

        def failure() -> Any:
            found = core.read_namespaced_replication_controller("blocked", namespace)
            return next(
                (c for c in found.status.conditions or [] if c.type == "ReplicaFailure"), None
            )

        condition = wait_for(failure, timeout=60, what="the ReplicaFailure condition")
        assert (condition.status, condition.reason) == ("True", "FailedCreate")
        assert "forbidden" in condition.message, condition.message
        wait_for(
            lambda: "FailedCreate" in {e.reason for e in events_of(core, namespace, "blocked")},
            timeout=30,
            what="a FailedCreate event",
        )
        assert owned_pods(core, namespace, "blocked") == []

        core.delete_namespaced_resource_quota("pods", namespace)
        wait_for(
            lambda: settled(core, namespace, "blocked", 2) and failure() is None,
            timeout=120,
            what="2 pods once the quota is gone, and the condition cleared",
        )


def test_rcs_converge_on_three_processes_across_a_kill_9(
    kube: Any, stack_env: dict[str, str], tmp_path: Path
) -> None:
    core = client.CoreV1Api(kube)
    run = uuid.uuid4().hex[:5]
    namespaces = [create_namespace(core, f"rc-{run}-{i}") for i in range(6)]
    audit = tmp_path / "audit.jsonl"
    try:
        with kubus_pool(
            stack_env,
            tmp_path,
            reconcilers=3,
            extra=[CONTROLLERS, f"--reconcile-audit-log={audit}"],
            watcher_args=[WATCHED],
        ) as pool:
            members = {member_of(process): process for process in pool.reconcilers}
            for namespace in namespaces:
                core.create_namespaced_replication_controller(namespace, rc("web", 2))
            wait_for(
                lambda: all(settled(core, ns, "web", 2) for ns in namespaces),
                timeout=120,
                what="6 RCs at 2 ready pods",
            )
            busiest = Counter(
                member
                for (controller, _key), entries in reconciles(audit).items()
                if controller == "replicationcontroller-controller"
                for *_, member in entries
            ).most_common(1)[0][0]
            members[busiest].kill()
            for namespace in namespaces:
                core.patch_namespaced_replication_controller(
                    "web", namespace, {"spec": {"replicas": 3}}
                )
            wait_for(
                lambda: all(settled(core, ns, "web", 3) for ns in namespaces),
                timeout=180,
                what="6 RCs at 3 ready pods after the kill -9",
            )
    finally:
        for namespace in namespaces:
            try:
                core.delete_namespace(namespace)
            except ApiException as error:
                if error.status != 404:
                    raise
    assert overlaps(reconciles(audit)) == []

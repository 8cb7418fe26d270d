"""The ReplicaSet controller against the real stack: pods, adoption, release, status, events."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from tests.support.services import kubus_pool
from tests.support.wait import wait_for

pytestmark = pytest.mark.integration


def replicaset(name: str, replicas: int, **labels: str) -> dict[str, Any]:
    labels = labels or {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "c", "image": "registry.example/c:1"}]},
            },
        },
    }


def owned_pods(core: client.CoreV1Api, namespace: str, rs_name: str) -> list[Any]:
    return [
        pod
        for pod in core.list_namespaced_pod(namespace).items
        if any(
            ref.controller and ref.name == rs_name for ref in pod.metadata.owner_references or []
        )
        and pod.metadata.deletion_timestamp is None
    ]


def test_replicaset_keeps_its_replicas_and_reports_status(
    kube: Any, namespace: str, stack_env: dict[str, str], tmp_path: Path
) -> None:
    core, apps = client.CoreV1Api(kube), client.AppsV1Api(kube)
    with kubus_pool(stack_env, tmp_path):
        apps.create_namespaced_replica_set(namespace, replicaset("web", 3))

        def status_settles(expected: int) -> Any:
            rs = apps.read_namespaced_replica_set("web", namespace)
            status = rs.status
            return (
                rs
                if (
                    status.replicas == expected
                    and status.ready_replicas == expected
                    and status.available_replicas == expected
                    and status.observed_generation == rs.metadata.generation
                    and len(owned_pods(core, namespace, "web")) == expected
                )
                else None
            )

        wait_for(lambda: status_settles(3), timeout=60, what="3 ready replicas")
        pods = owned_pods(core, namespace, "web")
        assert all(p.metadata.name.startswith("web-") for p in pods)
        ref = pods[0].metadata.owner_references[0]
        assert (ref.kind, ref.controller, ref.block_owner_deletion) == ("ReplicaSet", True, True)

        apps.patch_namespaced_replica_set("web", namespace, {"spec": {"replicas": 5}})
        wait_for(lambda: status_settles(5), timeout=60, what="scaled up to 5")
        apps.patch_namespaced_replica_set("web", namespace, {"spec": {"replicas": 2}})
        wait_for(lambda: status_settles(2), timeout=60, what="scaled down to 2")

        # A pod deleted by hand is replaced.
        core.delete_namespaced_pod(owned_pods(core, namespace, "web")[0].metadata.name, namespace)
        wait_for(lambda: status_settles(2), timeout=60, what="the deleted pod replaced")

        def reasons() -> set[str]:
            return {
                event.reason
                for event in core.list_namespaced_event(namespace).items
                if event.involved_object.name == "web"
            }

        # Events are sent off the reconcile path, a moment after the pods change.
        wait_for(
            lambda: {"SuccessfulCreate", "SuccessfulDelete"} <= reasons(),
            timeout=30,
            what="SuccessfulCreate and SuccessfulDelete events",
        )


def test_orphans_are_adopted_and_pods_that_stop_matching_are_released(
    kube: Any, namespace: str, stack_env: dict[str, str], tmp_path: Path
) -> None:
    core, apps = client.CoreV1Api(kube), client.AppsV1Api(kube)
    core.create_namespaced_pod(
        namespace,
        {
            "metadata": {"name": "orphan", "labels": {"app": "db"}},
            "spec": {"containers": [{"name": "c", "image": "registry.example/c:1"}]},
        },
    )
    with kubus_pool(stack_env, tmp_path):
        apps.create_namespaced_replica_set(namespace, replicaset("db", 2))

        def adopted() -> bool:
            pod = core.read_namespaced_pod("orphan", namespace)
            refs = pod.metadata.owner_references or []
            return (
                any(r.controller and r.name == "db" for r in refs)
                and len(owned_pods(core, namespace, "db")) == 2
            )

        wait_for(adopted, timeout=60, what="the orphan adopted, one pod created")

        core.patch_namespaced_pod("orphan", namespace, {"metadata": {"labels": {"app": "gone"}}})

        def released_and_replaced() -> bool:
            pod = core.read_namespaced_pod("orphan", namespace)
            mine = owned_pods(core, namespace, "db")
            return (
                not pod.metadata.owner_references
                and len(mine) == 2
                and "orphan" not in {p.metadata.name for p in mine}
            )

        wait_for(released_and_replaced, timeout=60, what="the orphan released and replaced")

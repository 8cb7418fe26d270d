"""The Deployment controller against the real stack, as a user would check a rollout."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from tests.support.jaeger import ReconcileTrace, find_reconcile
from tests.support.rollout import RolloutChecker
from tests.support.services import kubus_pool
from tests.support.system import create_namespace
from tests.support.wait import wait_for

pytestmark = pytest.mark.integration


def deployment(
    name: str, replicas: int, image: str = "registry.example/web:1", **spec: Any
) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "web", "image": image}]},
            },
            **spec,
        },
    }


def complete(apps: client.AppsV1Api, namespace: str, name: str) -> Any:
    """The Deployment once it is rolled out, as `kubectl rollout status` decides."""
    d = apps.read_namespaced_deployment(name, namespace)
    status, want = d.status, d.spec.replicas
    conditions = {c.type: c for c in status.conditions or []}
    progressing = conditions.get("Progressing")
    done = (
        (status.observed_generation or 0) >= d.metadata.generation
        and (status.updated_replicas or 0) == want
        and (status.replicas or 0) == want
        and (status.available_replicas or 0) == want
        and progressing is not None
        and progressing.reason == "NewReplicaSetAvailable"
    )
    return d if done else None


def replicasets_of(apps: client.AppsV1Api, namespace: str, name: str) -> list[Any]:
    return [
        rs
        for rs in apps.list_namespaced_replica_set(namespace).items
        if any(r.controller and r.name == name for r in rs.metadata.owner_references or [])
    ]


def set_image(apps: client.AppsV1Api, namespace: str, name: str, image: str) -> None:
    apps.patch_namespaced_deployment(
        name,
        namespace,
        {"spec": {"template": {"spec": {"containers": [{"name": "web", "image": image}]}}}},
    )


def test_a_deployment_becomes_available_with_upstream_status_and_conditions(
    kube: Any, namespace: str, stack_env: dict[str, str], tmp_path: Path
) -> None:
    apps, core = client.AppsV1Api(kube), client.CoreV1Api(kube)
    with kubus_pool(stack_env, tmp_path, reconcilers=2):
        apps.create_namespaced_deployment(namespace, deployment("web", 3))
        d = wait_for(
            lambda: complete(apps, namespace, "web"), timeout=60, what="the deployment to complete"
        )
    (rs,) = replicasets_of(apps, namespace, "web")
    pod_hash = rs.metadata.labels["pod-template-hash"]
    assert rs.metadata.name == f"web-{pod_hash}"
    assert set(pod_hash) <= set("bcdfghjklmnpqrstvwxz2456789")
    assert rs.spec.selector.match_labels == {"app": "web", "pod-template-hash": pod_hash}
    assert rs.metadata.annotations["deployment.kubernetes.io/revision"] == "1"
    assert rs.metadata.annotations["deployment.kubernetes.io/desired-replicas"] == "3"
    assert rs.metadata.annotations["deployment.kubernetes.io/max-replicas"] == "4"
    assert d.metadata.annotations["deployment.kubernetes.io/revision"] == "1"
    pods = core.list_namespaced_pod(namespace, label_selector="app=web").items
    assert len(pods) == 3
    assert all(p.status.phase == "Running" for p in pods)
    conditions = {c.type: c for c in d.status.conditions}
    assert (
        conditions["Available"].status,
        conditions["Available"].reason,
        conditions["Available"].message,
    ) == ("True", "MinimumReplicasAvailable", "Deployment has minimum availability.")
    assert (
        conditions["Progressing"].status,
        conditions["Progressing"].reason,
        conditions["Progressing"].message,
    ) == (
        "True",
        "NewReplicaSetAvailable",
        f'ReplicaSet "{rs.metadata.name}" has successfully progressed.',
    )
    assert (
        d.status.replicas,
        d.status.updated_replicas,
        d.status.ready_replicas,
        d.status.available_replicas,
    ) == (3, 3, 3, 3)
    assert not d.status.unavailable_replicas

    def scaled_up() -> bool:
        return any(
            e.reason == "ScalingReplicaSet"
            and e.message == f"Scaled up replica set {rs.metadata.name} from 0 to 3"
            for e in core.list_namespaced_event(namespace).items
            if e.involved_object.kind == "Deployment"
        )

    wait_for(scaled_up, timeout=30, what="the ScalingReplicaSet event")


def test_rolling_updates_keep_surge_and_availability_bounds_and_the_history_limit(
    kube: Any, namespace: str, stack_env: dict[str, str], tmp_path: Path
) -> None:
    apps = client.AppsV1Api(kube)
    replicas, surge, unavailable = 6, 2, 1
    spec = {
        "revisionHistoryLimit": 2,
        "strategy": {
            "type": "RollingUpdate",
            "rollingUpdate": {"maxSurge": surge, "maxUnavailable": unavailable},
        },
    }
    with kubus_pool(stack_env, tmp_path, reconcilers=2):
        apps.create_namespaced_deployment(namespace, deployment("web", replicas, **spec))
        wait_for(lambda: complete(apps, namespace, "web"), timeout=60, what="first rollout")
        with RolloutChecker(kube, namespace, "app=web") as checker:
            for version in range(2, 6):
                set_image(apps, namespace, "web", f"registry.example/web:{version}")
                wait_for(
                    lambda: complete(apps, namespace, "web"),
                    timeout=90,
                    what=f"rollout to version {version}",
                )
        bounds = checker.bounds
        assert bounds.events > 0
        assert bounds.max_pods <= replicas + surge
        assert bounds.min_available is not None
        assert bounds.min_available >= replicas - unavailable
        rss = replicasets_of(apps, namespace, "web")
        wait_for(
            lambda: len(replicasets_of(apps, namespace, "web")) == 3,
            timeout=30,
            what="old ReplicaSets pruned to revisionHistoryLimit=2",
        )
    revisions = sorted(
        int(rs.metadata.annotations["deployment.kubernetes.io/revision"])
        for rs in replicasets_of(apps, namespace, "web")
    )
    assert revisions == [3, 4, 5]
    assert len(rss) >= 3


def test_recreate_never_runs_old_and_new_pods_together(
    kube: Any, namespace: str, stack_env: dict[str, str], tmp_path: Path
) -> None:
    apps = client.AppsV1Api(kube)
    with kubus_pool(stack_env, tmp_path):
        apps.create_namespaced_deployment(
            namespace, deployment("db", 3, strategy={"type": "Recreate"})
        )
        wait_for(lambda: complete(apps, namespace, "db"), timeout=60, what="first rollout")
        with RolloutChecker(kube, namespace, "app=db") as checker:
            set_image(apps, namespace, "db", "registry.example/web:2")
            wait_for(lambda: complete(apps, namespace, "db"), timeout=90, what="recreate")
    assert not checker.bounds.mixed
    assert checker.bounds.min_available == 0  # everything went down before the new came up
    assert checker.bounds.max_pods <= 3


def test_scaling_mid_rollout_pause_resume_and_a_deleted_pod(
    kube: Any, namespace: str, stack_env: dict[str, str], tmp_path: Path
) -> None:
    apps, core = client.AppsV1Api(kube), client.CoreV1Api(kube)
    with kubus_pool(stack_env, tmp_path):
        apps.create_namespaced_deployment(namespace, deployment("web", 4))
        wait_for(lambda: complete(apps, namespace, "web"), timeout=60, what="first rollout")

        set_image(apps, namespace, "web", "registry.example/web:2")
        apps.patch_namespaced_deployment("web", namespace, {"spec": {"replicas": 8}})
        d = wait_for(
            lambda: complete(apps, namespace, "web"), timeout=90, what="scaled up mid-rollout"
        )
        assert d.status.replicas == 8
        set_image(apps, namespace, "web", "registry.example/web:3")
        apps.patch_namespaced_deployment("web", namespace, {"spec": {"replicas": 2}})
        wait_for(
            lambda: complete(apps, namespace, "web"), timeout=90, what="scaled down mid-rollout"
        )

        apps.patch_namespaced_deployment("web", namespace, {"spec": {"paused": True}})

        def paused() -> bool:
            d = apps.read_namespaced_deployment("web", namespace)
            conditions = {c.type: c for c in d.status.conditions or []}
            return conditions["Progressing"].reason == "DeploymentPaused" and (
                conditions["Progressing"].status == "Unknown"
            )

        wait_for(paused, timeout=30, what="the DeploymentPaused condition")
        before = {rs.metadata.name for rs in replicasets_of(apps, namespace, "web")}
        set_image(apps, namespace, "web", "registry.example/web:4")
        apps.patch_namespaced_deployment("web", namespace, {"spec": {"replicas": 3}})
        wait_for(
            lambda: (
                apps.read_namespaced_deployment("web", namespace).status.available_replicas == 3
            ),
            timeout=60,
            what="scaling while paused",
        )
        assert {rs.metadata.name for rs in replicasets_of(apps, namespace, "web")} == before

        apps.patch_namespaced_deployment("web", namespace, {"spec": {"paused": False}})
        d = wait_for(lambda: complete(apps, namespace, "web"), timeout=90, what="resumed")
        assert d.metadata.annotations["deployment.kubernetes.io/revision"] == "4"

        victim = core.list_namespaced_pod(namespace, label_selector="app=web").items[0]
        core.delete_namespaced_pod(victim.metadata.name, namespace)

        def replaced() -> bool:
            pods = core.list_namespaced_pod(namespace, label_selector="app=web").items
            live = [p for p in pods if p.metadata.deletion_timestamp is None]
            return len(live) == 3 and victim.metadata.name not in {p.metadata.name for p in live}

        wait_for(replaced, timeout=60, what="the deleted pod replaced")


def test_progress_deadline_exceeded_is_reported(
    kube: Any, namespace: str, stack_env: dict[str, str], tmp_path: Path
) -> None:
    apps = client.AppsV1Api(kube)
    stuck = deployment("stuck", 2, progressDeadlineSeconds=3)
    stuck["spec"]["template"]["spec"]["nodeSelector"] = {"no-such-node": "anywhere"}
    with kubus_pool(stack_env, tmp_path):
        apps.create_namespaced_deployment(namespace, stuck)

        def timed_out() -> Any:
            d = apps.read_namespaced_deployment("stuck", namespace)
            conditions = {c.type: c for c in d.status.conditions or []}
            progressing = conditions.get("Progressing")
            return (
                d
                if progressing is not None and progressing.reason == ("ProgressDeadlineExceeded")
                else None
            )

        d = wait_for(timed_out, timeout=60, what="ProgressDeadlineExceeded")
    conditions = {c.type: c for c in d.status.conditions}
    (rs,) = replicasets_of(apps, namespace, "stuck")
    assert conditions["Progressing"].status == "False"
    assert conditions["Progressing"].message == (
        f'ReplicaSet "{rs.metadata.name}" has timed out progressing.'
    )
    assert conditions["Available"].status == "False"


def test_pods_the_apiserver_refuses_are_reported_and_other_deployments_carry_on(
    kube: Any, namespace: str, stack_env: dict[str, str], tmp_path: Path
) -> None:
    apps, core = client.AppsV1Api(kube), client.CoreV1Api(kube)
    core.patch_namespace(
        namespace, {"metadata": {"labels": {"pod-security.kubernetes.io/enforce": "restricted"}}}
    )
    bad = deployment("privileged", 2)
    bad["spec"]["template"]["spec"]["containers"][0]["securityContext"] = {"privileged": True}
    with kubus_pool(stack_env, tmp_path):
        apps.create_namespaced_deployment(namespace, bad)
        good_namespace = f"{namespace}-ok"
        create_namespace(core, good_namespace)
        apps.create_namespaced_deployment(good_namespace, deployment("fine", 2))

        def failure_reported() -> Any:
            d = apps.read_namespaced_deployment("privileged", namespace)
            conditions = {c.type: c for c in d.status.conditions or []}
            return conditions.get("ReplicaFailure")

        failure = wait_for(failure_reported, timeout=60, what="the ReplicaFailure condition")
        wait_for(
            lambda: complete(apps, good_namespace, "fine"),
            timeout=60,
            what="the healthy deployment to complete",
        )
    assert (failure.status, failure.reason) == ("True", "FailedCreate")
    assert "violates PodSecurity" in failure.message
    wait_for(
        lambda: any(
            e.reason == "FailedCreate" and e.message.startswith("Error creating: ")
            for e in core.list_namespaced_event(namespace).items
        ),
        timeout=30,
        what="the FailedCreate event",
    )


def test_an_unknown_controller_name_fails_the_cli_clearly(stack_env: dict[str, str]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "kubus.cli", "reconciler", "--controllers=*,deploymnt"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **stack_env},
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        'kubus reconciler: error: --controllers: "deploymnt" is not in the list of known '
        "controllers"
    )


def test_a_reconcile_is_traced_from_the_watcher_to_the_apiserver(
    kube: Any, namespace: str, stack_env: dict[str, str], tmp_path: Path
) -> None:
    apps = client.AppsV1Api(kube)
    with kubus_pool(stack_env, tmp_path):
        apps.create_namespaced_deployment(namespace, deployment("traced", 1))
        wait_for(lambda: complete(apps, namespace, "traced"), timeout=60, what="rollout")

        def of_traced(found: ReconcileTrace) -> bool:
            return found.tags.get("k8s.object.key") == f"{namespace}/traced" and bool(
                found.children
            )

        found = wait_for(
            lambda: find_reconcile(stack_env, "deployment-controller", of_traced),
            timeout=60,
            what="a reconcile trace in Jaeger",
        )
    assert found.service(found.parent) == "kubus-watcher"
    assert found.parent["operationName"].startswith("publish ")
    assert any(c["operationName"].startswith(("POST ", "PUT ", "PATCH ")) for c in found.children)
    assert all(found.service(c) in ("kubus-reconciler", "apiserver") for c in found.children)


def test_rolling_back_to_an_earlier_template_reuses_its_replicaset(
    kube: Any, namespace: str, stack_env: dict[str, str], tmp_path: Path
) -> None:
    apps = client.AppsV1Api(kube)
    with kubus_pool(stack_env, tmp_path):
        apps.create_namespaced_deployment(namespace, deployment("web", 2))
        wait_for(lambda: complete(apps, namespace, "web"), timeout=60, what="revision 1")
        (first,) = replicasets_of(apps, namespace, "web")
        set_image(apps, namespace, "web", "registry.example/web:2")
        wait_for(lambda: complete(apps, namespace, "web"), timeout=60, what="revision 2")
        # What `kubectl rollout undo` does: put the earlier template back.
        set_image(apps, namespace, "web", "registry.example/web:1")
        d = wait_for(lambda: complete(apps, namespace, "web"), timeout=60, what="rollback")
    rss = {rs.metadata.name: rs for rs in replicasets_of(apps, namespace, "web")}
    assert len(rss) == 2, "the earlier ReplicaSet came back; no third one was made"
    back = rss[first.metadata.name]
    assert back.spec.replicas == 2
    assert back.metadata.annotations["deployment.kubernetes.io/revision"] == "3"
    assert back.metadata.annotations["deployment.kubernetes.io/revision-history"] == "1"
    assert d.metadata.annotations["deployment.kubernetes.io/revision"] == "3"


def test_the_deprecated_rollback_annotation_rolls_back_and_is_cleared(
    kube: Any, namespace: str, stack_env: dict[str, str], tmp_path: Path
) -> None:
    apps, core = client.AppsV1Api(kube), client.CoreV1Api(kube)
    rollback_to = "deprecated.deployment.rollback.to"

    def annotate(value: str) -> None:
        apps.patch_namespaced_deployment(
            "web", namespace, {"metadata": {"annotations": {rollback_to: value}}}
        )

    def cleared() -> Any:
        d = apps.read_namespaced_deployment("web", namespace)
        return d if rollback_to not in (d.metadata.annotations or {}) else None

    def event(reason: str) -> Any:
        return next(
            (
                e
                for e in core.list_namespaced_event(namespace).items
                if e.reason == reason and e.involved_object.name == "web"
            ),
            None,
        )

    with kubus_pool(stack_env, tmp_path):
        apps.create_namespaced_deployment(namespace, deployment("web", 2))
        wait_for(lambda: complete(apps, namespace, "web"), timeout=60, what="revision 1")
        set_image(apps, namespace, "web", "registry.example/web:2")
        wait_for(lambda: complete(apps, namespace, "web"), timeout=60, what="revision 2")

        annotate("99")  # no such revision: a warning, and the request is dropped
        wait_for(cleared, timeout=30, what="the annotation cleared")
        missing = wait_for(
            lambda: event("DeploymentRollbackRevisionNotFound"), timeout=30, what="event"
        )
        assert missing.type == "Warning"
        assert missing.message == "Unable to find the revision to rollback to."

        annotate("0")  # 0: the revision before the latest, as `rollout undo` asked for it
        wait_for(cleared, timeout=30, what="the annotation cleared")
        d = wait_for(lambda: complete(apps, namespace, "web"), timeout=60, what="rolled back")
        done = wait_for(lambda: event("DeploymentRollback"), timeout=30, what="event")
    assert d.spec.template.spec.containers[0].image == "registry.example/web:1"
    assert "pod-template-hash" not in d.spec.template.metadata.labels
    assert d.metadata.annotations["deployment.kubernetes.io/revision"] == "3"
    assert done.type == "Normal"
    assert done.message == 'Rolled back deployment "web" to revision 1'
    assert len(replicasets_of(apps, namespace, "web")) == 2


def test_a_matching_orphan_replicaset_is_adopted_and_released_once_it_stops_matching(
    kube: Any, namespace: str, stack_env: dict[str, str], tmp_path: Path
) -> None:
    apps, core = client.AppsV1Api(kube), client.CoreV1Api(kube)
    template = deployment("web", 2)["spec"]["template"]
    orphan = {
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "metadata": {"name": "web-orphan", "labels": {"app": "web"}},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}}, "template": template},
    }
    with kubus_pool(stack_env, tmp_path):
        apps.create_namespaced_replica_set(namespace, orphan)
        # Its pod made and counted: kubus's cache holds the orphan before the Deployment comes
        # (the two kinds are watched apart, so their order on the bus is not otherwise given).
        wait_for(
            lambda: (
                (apps.read_namespaced_replica_set("web-orphan", namespace).status.replicas) == 1
            ),
            timeout=60,
            what="the orphan ReplicaSet's pod",
        )
        created = apps.create_namespaced_deployment(namespace, deployment("web", 2))
        d = wait_for(lambda: complete(apps, namespace, "web"), timeout=60, what="the rollout")
        # The orphan's template is the Deployment's: adopted, it is the new ReplicaSet, and no
        # other one is made.
        (adopted,) = replicasets_of(apps, namespace, "web")
        assert adopted.metadata.name == "web-orphan"
        (ref,) = adopted.metadata.owner_references
        assert (ref.kind, ref.name, ref.uid, ref.controller, ref.block_owner_deletion) == (
            "Deployment",
            "web",
            created.metadata.uid,
            True,
            True,
        )
        assert adopted.spec.replicas == 2
        assert d.status.updated_replicas == 2

        # Labelled out of the selector, it is let go; the Deployment makes its own again.
        apps.patch_namespaced_replica_set(
            "web-orphan", namespace, {"metadata": {"labels": {"app": "released"}}}
        )

        def released() -> Any:
            rs = apps.read_namespaced_replica_set("web-orphan", namespace)
            mine = replicasets_of(apps, namespace, "web")
            return rs if not rs.metadata.owner_references and len(mine) == 1 else None

        let_go = wait_for(released, timeout=60, what="the ReplicaSet released, a new one made")
        wait_for(lambda: complete(apps, namespace, "web"), timeout=60, what="the new rollout")
    (new,) = replicasets_of(apps, namespace, "web")
    assert new.metadata.name.startswith("web-") and new.metadata.name != "web-orphan"
    assert let_go.spec.replicas == 2, "a released ReplicaSet is left as it was"
    pods = core.list_namespaced_pod(namespace, label_selector="app=web").items
    owners = {ref.name for pod in pods for ref in pod.metadata.owner_references or []}
    assert owners == {"web-orphan", new.metadata.name}

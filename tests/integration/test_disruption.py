"""The disruption controller against the real stack, as upstream's test/integration/disruption
and what a user checks: a PDB's status and condition, the apiserver's eviction subresource
allowing and then refusing (429) from the status kubus writes, percentages through a
Deployment's and a custom resource's scale, pods without controllers, a pod that stops being
Ready, unready pods under each unhealthy-pod eviction policy, a stale DisruptionTarget
condition reset, and three processes losing one to kill -9.

The pods' controllers are inert where the test makes the pods itself (a ReplicaSet no
controller runs here, so nothing replaces an evicted pod); the Deployment case runs kubus's
deployment and replicaset controllers beside the disruption controller."""

from __future__ import annotations

import datetime
import time
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

CONTROLLERS = "--controllers=disruption"
WATCHED = (
    "--resources=policy/v1/poddisruptionbudgets,v1/pods,apps/v1/replicasets,"
    "apps/v1/deployments,apps/v1/statefulsets,v1/replicationcontrollers"
)
IMAGE = "registry.example/c:1"


def replicaset(apps: client.AppsV1Api, namespace: str, name: str, replicas: int) -> Any:
    """A ReplicaSet no controller runs here: the owner of pods the test makes itself."""
    labels = {"app": name}
    return apps.create_namespaced_replica_set(
        namespace,
        {
            "metadata": {"name": name},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {"containers": [{"name": "c", "image": IMAGE}]},
                },
            },
        },
    )


def make_pods(
    core: client.CoreV1Api,
    namespace: str,
    app: str,
    count: int,
    owner: dict[str, Any] | None = None,
) -> list[str]:
    names = []
    for i in range(count):
        metadata: dict[str, Any] = {"name": f"{app}-{i}", "labels": {"app": app}}
        if owner is not None:
            metadata["ownerReferences"] = [{**owner, "controller": True}]
        core.create_namespaced_pod(
            namespace,
            {"metadata": metadata, "spec": {"containers": [{"name": "c", "image": IMAGE}]}},
        )
        names.append(metadata["name"])
    return names


def owner_ref(obj: Any, api_version: str, kind: str) -> dict[str, Any]:
    meta = obj["metadata"] if isinstance(obj, dict) else obj.metadata
    name = meta["name"] if isinstance(meta, dict) else meta.name
    uid = meta["uid"] if isinstance(meta, dict) else meta.uid
    return {"apiVersion": api_version, "kind": kind, "name": name, "uid": uid}


def all_ready(core: client.CoreV1Api, namespace: str, names: list[str]) -> bool:
    for name in names:
        pod = core.read_namespaced_pod(name, namespace)
        conditions = {c.type: c.status for c in pod.status.conditions or []}
        if conditions.get("Ready") != "True":
            return False
    return True


def pdb_body(name: str, app: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {"name": name},
        "spec": {"selector": {"matchLabels": {"app": app}}, **spec},
    }


def status_of(policy: client.PolicyV1Api, namespace: str, name: str) -> dict[str, Any]:
    """The PDB's status as a user reads it (``kubectl get pdb -o yaml``), None while stale."""
    found = policy.read_namespaced_pod_disruption_budget(name, namespace)
    status = found.status
    if status is None or status.observed_generation != found.metadata.generation:
        return {}
    condition = next((c for c in status.conditions or [] if c.type == "DisruptionAllowed"), None)
    return {
        "currentHealthy": status.current_healthy,
        "desiredHealthy": status.desired_healthy,
        "expectedPods": status.expected_pods,
        "disruptionsAllowed": status.disruptions_allowed,
        "condition": None if condition is None else (condition.status, condition.reason),
        "message": None if condition is None else condition.message,
    }


def settles(
    policy: client.PolicyV1Api, namespace: str, name: str, want: dict[str, Any], timeout: float
) -> dict[str, Any]:
    def matches() -> dict[str, Any] | None:
        found = status_of(policy, namespace, name)
        return found if all(found.get(k) == v for k, v in want.items()) else None

    return wait_for(matches, timeout=timeout, what=f"PDB {namespace}/{name} at {want}")


def events_of(core: client.CoreV1Api, namespace: str, kind: str, name: str) -> list[Any]:
    return [
        e
        for e in core.list_namespaced_event(namespace).items
        if e.involved_object.kind == kind and e.involved_object.name == name
    ]


def evict(core: client.CoreV1Api, namespace: str, name: str) -> int:
    """The eviction subresource's answer: 201 when allowed, its error status otherwise."""
    try:
        core.create_namespaced_pod_eviction(
            name,
            namespace,
            client.V1Eviction(metadata=client.V1ObjectMeta(name=name, namespace=namespace)),
        )
    except ApiException as error:
        return int(error.status)
    return 201


def test_min_available_status_lets_one_eviction_through_then_refuses_with_429(
    kube: Any, namespace: str, stack_env: dict[str, str], tmp_path: Path
) -> None:
    core, apps, policy = client.CoreV1Api(kube), client.AppsV1Api(kube), client.PolicyV1Api(kube)
    rs = replicaset(apps, namespace, "web", 3)
    pods = make_pods(core, namespace, "web", 3, owner_ref(rs, "apps/v1", "ReplicaSet"))
    wait_for(lambda: all_ready(core, namespace, pods), timeout=60, what="3 ready pods")
    with kubus_pool(stack_env, tmp_path, extra=[CONTROLLERS], watcher_args=[WATCHED]):
        policy.create_namespaced_pod_disruption_budget(
            namespace, pdb_body("web", "web", minAvailable=2)
        )
        found = settles(
            policy,
            namespace,
            "web",
            {
                "currentHealthy": 3,
                "desiredHealthy": 2,
                "expectedPods": 3,
                "disruptionsAllowed": 1,
                "condition": ("True", "SufficientPods"),
            },
            timeout=60,
        )
        assert found["message"] == ""
        assert evict(core, namespace, pods[0]) == 201
        # The evicted pod goes (kwok deletes it), nothing replaces it: 2 healthy, 0 allowed.
        settles(
            policy,
            namespace,
            "web",
            {
                "currentHealthy": 2,
                "disruptionsAllowed": 0,
                "condition": ("False", "InsufficientPods"),
            },
            timeout=60,
        )
        assert evict(core, namespace, pods[1]) == 429
        assert core.read_namespaced_pod(pods[1], namespace).metadata.deletion_timestamp is None

        # A pod that stops being Ready lowers what a budget allows.
        policy.create_namespaced_pod_disruption_budget(
            namespace, pdb_body("loose", "web", minAvailable=0)
        )
        settles(policy, namespace, "loose", {"currentHealthy": 2, "disruptionsAllowed": 2}, 60)
        core.patch_namespaced_pod_status(
            pods[1], namespace, {"status": {"conditions": [{"type": "Ready", "status": "False"}]}}
        )
        settles(policy, namespace, "loose", {"currentHealthy": 1, "disruptionsAllowed": 1}, 60)
        # The pod matches two budgets now: the eviction subresource refuses such a pod, and
        # the controller says so on the pod when it sees the pod change.
        wait_for(
            lambda: (
                "MultiplePodDisruptionBudgets"
                in {e.reason for e in events_of(core, namespace, "Pod", pods[1])}
            ),
            timeout=30,
            what="a MultiplePodDisruptionBudgets event on the pod",
        )


def test_unready_pods_are_not_healthy_and_the_unhealthy_pod_eviction_policy_decides(
    kube: Any, namespace: str, stack_env: dict[str, str], tmp_path: Path
) -> None:
    """Upstream e2e's unhealthy-pod cases: pods whose readiness probe has not passed yet (kwok
    holds them unready through the probe's 10-minute initial delay) count for nothing; with
    the default policy (IfHealthyBudget) such a pod cannot be evicted while the budget is not
    met, with AlwaysAllow it can."""
    core, apps, policy = client.CoreV1Api(kube), client.AppsV1Api(kube), client.PolicyV1Api(kube)
    probe = {"httpGet": {"path": "/", "port": 80}, "initialDelaySeconds": 600}
    pods: dict[str, list[str]] = {}
    for app in ("strict", "lenient"):
        owner = owner_ref(replicaset(apps, namespace, app, 3), "apps/v1", "ReplicaSet")
        pods[app] = [f"{app}-{i}" for i in range(3)]
        for name in pods[app]:
            core.create_namespaced_pod(
                namespace,
                {
                    "metadata": {
                        "name": name,
                        "labels": {"app": app},
                        "ownerReferences": [{**owner, "controller": True}],
                    },
                    "spec": {
                        "containers": [{"name": "c", "image": IMAGE, "readinessProbe": probe}]
                    },
                },
            )
    with kubus_pool(stack_env, tmp_path, extra=[CONTROLLERS], watcher_args=[WATCHED]):
        policy.create_namespaced_pod_disruption_budget(
            namespace, pdb_body("strict", "strict", maxUnavailable=1)
        )
        policy.create_namespaced_pod_disruption_budget(
            namespace,
            pdb_body(
                "lenient", "lenient", maxUnavailable=1, unhealthyPodEvictionPolicy="AlwaysAllow"
            ),
        )
        unhealthy = {
            "currentHealthy": 0,
            "desiredHealthy": 2,
            "expectedPods": 3,
            "disruptionsAllowed": 0,
            "condition": ("False", "InsufficientPods"),
        }
        for name in ("strict", "lenient"):
            settles(policy, namespace, name, unhealthy, timeout=60)
        for app in ("strict", "lenient"):
            for name in pods[app]:
                pod = core.read_namespaced_pod(name, namespace)
                assert pod.status.phase == "Running", pod.status
                ready = {c.type: c.status for c in pod.status.conditions}["Ready"]
                assert ready == "False", f"{name} Ready before its probe's initial delay"
        assert [evict(core, namespace, name) for name in pods["strict"]] == [429] * 3
        assert [evict(core, namespace, name) for name in pods["lenient"]] == [201] * 3


CRD_GROUP = "disruption.kubus.test"


def scalable_crd() -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"scalers.{CRD_GROUP}"},
        "spec": {
            "group": CRD_GROUP,
            "scope": "Namespaced",
            "names": {"plural": "scalers", "singular": "scaler", "kind": "Scaler"},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "x-kubernetes-preserve-unknown-fields": True,
                        }
                    },
                    "subresources": {
                        "scale": {
                            "specReplicasPath": ".spec.replicas",
                            "statusReplicasPath": ".status.replicas",
                        }
                    },
                }
            ],
        },
    }


def test_percentages_use_the_controllers_scale_deployment_and_custom_resource(
    kube: Any, namespace: str, stack_env: dict[str, str], tmp_path: Path
) -> None:
    core, apps, policy = client.CoreV1Api(kube), client.AppsV1Api(kube), client.PolicyV1Api(kube)
    extensions = client.ApiextensionsV1Api(kube)
    custom = client.CustomObjectsApi(kube)
    try:
        extensions.create_custom_resource_definition(scalable_crd())
    except ApiException as error:
        if error.status != 409:
            raise
    wait_for(
        lambda: any(
            c.type == "Established" and c.status == "True"
            for c in extensions.read_custom_resource_definition(
                f"scalers.{CRD_GROUP}"
            ).status.conditions
            or []
        ),
        timeout=30,
        what="the CRD established",
    )
    scaler = custom.create_namespaced_custom_object(
        CRD_GROUP,
        "v1",
        namespace,
        "scalers",
        {
            "apiVersion": f"{CRD_GROUP}/v1",
            "kind": "Scaler",
            "metadata": {"name": "scaler"},
            "spec": {"replicas": 4},
        },
    )
    crd_pods = make_pods(core, namespace, "crd", 4, owner_ref(scaler, f"{CRD_GROUP}/v1", "Scaler"))
    labels = {"app": "deployed"}
    apps.create_namespaced_deployment(
        namespace,
        {
            "metadata": {"name": "deployed"},
            "spec": {
                "replicas": 4,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {"containers": [{"name": "c", "image": IMAGE}]},
                },
            },
        },
    )
    with kubus_pool(
        stack_env,
        tmp_path,
        extra=["--controllers=disruption,replicaset,deployment"],
        watcher_args=[WATCHED],
    ):
        wait_for(
            lambda: all_ready(core, namespace, crd_pods), timeout=60, what="the CR's pods ready"
        )
        policy.create_namespaced_pod_disruption_budget(
            namespace, pdb_body("deployed", "deployed", maxUnavailable="50%")
        )
        policy.create_namespaced_pod_disruption_budget(
            namespace, pdb_body("crd", "crd", maxUnavailable=2)
        )
        policy.create_namespaced_pod_disruption_budget(
            namespace, pdb_body("crd-percent", "crd", minAvailable="60%")
        )
        settles(
            policy,
            namespace,
            "deployed",
            {
                "currentHealthy": 4,
                "desiredHealthy": 2,
                "expectedPods": 4,
                "disruptionsAllowed": 2,
                "condition": ("True", "SufficientPods"),
            },
            timeout=90,
        )
        # upstream's TestPDBWithScaleSubresource: a custom resource's /scale gives 4 pods.
        settles(
            policy,
            namespace,
            "crd",
            {"expectedPods": 4, "desiredHealthy": 2, "disruptionsAllowed": 2},
            timeout=60,
        )
        settles(
            policy,
            namespace,
            "crd-percent",
            {"expectedPods": 4, "desiredHealthy": 3, "disruptionsAllowed": 1},  # ceil(2.4)
            timeout=60,
        )
        # The Deployment's scale, not the pods found: scaled to 6, 3 may be unavailable.
        apps.patch_namespaced_deployment("deployed", namespace, {"spec": {"replicas": 6}})
        settles(
            policy,
            namespace,
            "deployed",
            {"expectedPods": 6, "desiredHealthy": 3, "currentHealthy": 6, "disruptionsAllowed": 3},
            timeout=90,
        )
        custom.patch_namespaced_custom_object(
            CRD_GROUP, "v1", namespace, "scalers", "scaler", {"spec": {"replicas": 8}}
        )
        # A change of the custom resource is no event here (nothing watches it): the next
        # change of the budget's pods or budget brings it in.
        policy.patch_namespaced_pod_disruption_budget(
            "crd", namespace, {"metadata": {"labels": {"touched": "yes"}}}
        )
        settles(
            policy,
            namespace,
            "crd",
            {"expectedPods": 8, "desiredHealthy": 6, "disruptionsAllowed": 0},
            timeout=60,
        )


def test_pods_without_controllers_and_controllers_not_found(
    kube: Any, namespace: str, stack_env: dict[str, str], tmp_path: Path
) -> None:
    core, policy = client.CoreV1Api(kube), client.PolicyV1Api(kube)
    loose = make_pods(core, namespace, "loose", 2)
    ghost = {
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "name": "ghost",
        "uid": str(uuid.uuid4()),
    }
    orphaned = make_pods(core, namespace, "orphaned", 1, ghost)
    wait_for(lambda: all_ready(core, namespace, [*loose, *orphaned]), timeout=60, what="ready")
    with kubus_pool(stack_env, tmp_path, extra=[CONTROLLERS], watcher_args=[WATCHED]):
        # A number needs no controller; an empty selector selects every pod of the namespace.
        policy.create_namespaced_pod_disruption_budget(
            namespace,
            {"metadata": {"name": "everything"}, "spec": {"selector": {}, "minAvailable": 1}},
        )
        settles(
            policy,
            namespace,
            "everything",
            {"currentHealthy": 3, "expectedPods": 3, "disruptionsAllowed": 2},
            timeout=60,
        )
        # A percentage over pods without controllers: nothing is expected, nothing allowed.
        policy.create_namespaced_pod_disruption_budget(
            namespace, pdb_body("loose", "loose", minAvailable="50%")
        )
        settles(
            policy,
            namespace,
            "loose",
            {
                "currentHealthy": 2,
                "expectedPods": 0,
                "disruptionsAllowed": 0,
                "condition": ("False", "InsufficientPods"),
            },
            timeout=60,
        )
        wait_for(
            lambda: (
                "UnmanagedPods"
                in {e.reason for e in events_of(core, namespace, "PodDisruptionBudget", "loose")}
            ),
            timeout=30,
            what="an UnmanagedPods event",
        )
        # A controller that is not there: the sync fails, and says so.
        policy.create_namespaced_pod_disruption_budget(
            namespace, pdb_body("orphaned", "orphaned", maxUnavailable=1)
        )

        def sync_failed() -> Any:
            found = policy.read_namespaced_pod_disruption_budget("orphaned", namespace).status
            condition = next(
                (
                    c
                    for c in (found.conditions if found else None) or []
                    if c.reason == "SyncFailed"
                ),
                None,
            )
            return condition if condition and found.disruptions_allowed == 0 else None

        condition = wait_for(sync_failed, timeout=60, what="the SyncFailed condition")
        assert condition.status == "False"
        assert condition.message == f'found no controllers for pod "{orphaned[0]}"'
        failed = wait_for(
            lambda: [
                e
                for e in events_of(core, namespace, "PodDisruptionBudget", "orphaned")
                if e.reason == "CalculateExpectedPodCountFailed"
            ],
            timeout=30,
            what="a CalculateExpectedPodCountFailed event",
        )
        assert failed[0].type == "Warning"
        assert failed[0].source.component == "controllermanager"
        # A budget over nothing says so.
        policy.create_namespaced_pod_disruption_budget(
            namespace, pdb_body("empty", "nothing", minAvailable=1)
        )
        settles(policy, namespace, "empty", {"expectedPods": 0, "disruptionsAllowed": 0}, 60)
        wait_for(
            lambda: (
                "NoPods"
                in {e.reason for e in events_of(core, namespace, "PodDisruptionBudget", "empty")}
            ),
            timeout=30,
            what="a NoPods event",
        )


def test_a_stale_disruption_target_condition_is_reset_after_the_timeout(
    kube: Any, namespace: str, stack_env: dict[str, str], tmp_path: Path
) -> None:
    """upstream's TestStalePodDisruption, with its 3 s timeout (kubus's own flag)."""
    core = client.CoreV1Api(kube)
    stale, by_kubelet = make_pods(core, namespace, "target", 2)
    wait_for(lambda: all_ready(core, namespace, [stale, by_kubelet]), timeout=60, what="ready")
    with kubus_pool(
        stack_env,
        tmp_path,
        extra=[CONTROLLERS, "--stale-pod-disruption-timeout=3s"],
        watcher_args=[WATCHED],
    ):
        marked = time.monotonic()
        now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        for name, reason in (
            (stale, "EvictionByEvictionAPI"),
            (by_kubelet, "TerminationByKubelet"),
        ):
            condition = {
                "type": "DisruptionTarget",
                "status": "True",
                "reason": reason,
                "lastTransitionTime": now,
            }
            core.patch_namespaced_pod_status(
                name, namespace, {"status": {"conditions": [condition]}}
            )

        def target_of(name: str) -> Any:
            pod = core.read_namespaced_pod(name, namespace)
            return next(c for c in pod.status.conditions if c.type == "DisruptionTarget")

        reset = wait_for(
            lambda: (c := target_of(stale)).status == "False" and c,
            timeout=30,
            what="the stale DisruptionTarget condition set to False",
        )
        # Not before the timeout (the condition's time has whole seconds: up to 1 s early).
        assert time.monotonic() - marked >= 2.0
        assert (reset.reason, reset.observed_generation) == (None, 1)
        assert target_of(by_kubelet).status == "True"


def test_budgets_converge_on_three_processes_across_a_kill_9(
    kube: Any, stack_env: dict[str, str], tmp_path: Path
) -> None:
    core, apps, policy = client.CoreV1Api(kube), client.AppsV1Api(kube), client.PolicyV1Api(kube)
    run = uuid.uuid4().hex[:5]
    namespaces = [create_namespace(core, f"pdb-{run}-{i}") for i in range(6)]
    audit = tmp_path / "audit.jsonl"
    pods: dict[str, list[str]] = {}
    try:
        for namespace in namespaces:
            rs = replicaset(apps, namespace, "web", 3)
            pods[namespace] = make_pods(
                core, namespace, "web", 3, owner_ref(rs, "apps/v1", "ReplicaSet")
            )
        with kubus_pool(
            stack_env,
            tmp_path,
            reconcilers=3,
            extra=[CONTROLLERS, f"--reconcile-audit-log={audit}"],
            watcher_args=[WATCHED],
        ) as pool:
            members = {member_of(process): process for process in pool.reconcilers}
            for namespace in namespaces:
                policy.create_namespaced_pod_disruption_budget(
                    namespace, pdb_body("web", "web", maxUnavailable="34%")
                )
            for namespace in namespaces:
                settles(
                    policy,
                    namespace,
                    "web",
                    {"expectedPods": 3, "desiredHealthy": 1, "disruptionsAllowed": 2},
                    timeout=120,
                )
            busiest = Counter(
                member
                for (controller, _key), entries in reconciles(audit).items()
                if controller == "disruption-controller"
                for *_, member in entries
            ).most_common(1)[0][0]
            members[busiest].kill()
            for namespace in namespaces:
                core.patch_namespaced_pod_status(
                    pods[namespace][0],
                    namespace,
                    {"status": {"conditions": [{"type": "Ready", "status": "False"}]}},
                )
            for namespace in namespaces:
                settles(
                    policy,
                    namespace,
                    "web",
                    {"currentHealthy": 2, "disruptionsAllowed": 1},
                    timeout=120,
                )
    finally:
        for namespace in namespaces:
            try:
                core.delete_namespace(namespace)
            except ApiException as error:
                if error.status != 404:
                    raise
    assert overlaps(reconciles(audit)) == []

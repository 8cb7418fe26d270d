"""The MySQLCluster example operator (examples/mysql-operator), as a user runs it: built into a
virtualenv of its own, joining `kubus reconciler` through its entry point, beside kubus's
garbage collector and PersistentVolume controllers, on the dev stack (kwok plays the kubelet,
the stack's provisioner binds the PVCs through the default StorageClass).
"""

from __future__ import annotations

import datetime
import itertools
import json
import subprocess
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from tests.integration.test_partition_shards import overlaps, reconciles
from tests.support.crds import create_established_crd, delete_crd
from tests.support.jaeger import ReconcileTrace, find_reconcile
from tests.support.leases import member_of
from tests.support.services import kubus_pool
from tests.support.system import create_namespace
from tests.support.venv import entry_points_of, installed_beside_kubus
from tests.support.wait import wait_for

pytestmark = pytest.mark.integration

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "mysql-operator"
GROUP, VERSION, PLURAL = "database.example.com", "v1", "mysqlclusters"
CRD = f"{PLURAL}.{GROUP}"
FINALIZER = "database.example.com/cleanup"
CONTROLLERS = (
    "--controllers=mysql-operator,garbagecollector,persistentvolume-binder,"
    "pvc-protection,pv-protection"
)
# What those controllers read (the garbage collector: whatever is on the bus).
RESOURCES = "--resources=" + ",".join(
    (
        f"{GROUP}/{VERSION}/{PLURAL}",
        "v1/pods",
        "v1/services",
        "v1/secrets",  # metadata only: ownership and garbage collection see them
        "v1/persistentvolumeclaims",
        "v1/persistentvolumes",
        "storage.k8s.io/v1/storageclasses",
        "v1/nodes",
        "v1/namespaces",
    )
)
SMALL = {"cpu": "100m", "memory": "256Mi"}


# --- the operator's distribution, in a virtualenv of its own ---------------------------------


@pytest.fixture(scope="module")
def kubus_command(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """`kubus` as run from a fresh virtualenv that has the operator pip-installed (built from a
    copy of examples/mysql-operator, so the tree gets no build/ or egg-info)."""
    python = installed_beside_kubus(EXAMPLE, tmp_path_factory.mktemp("mysql-operator"))
    command = [str(python), "-m", "kubus.cli"]
    listed = entry_points_of(python)
    assert "kubus_mysql:MySQLOperator" in listed, "the entry point is installed"
    return command


@pytest.fixture(scope="module")
def mysql_crd(kubus_command: list[str], kube: Any) -> Iterator[dict[str, Any]]:
    """The CRD as `kubus crd generate kubus_mysql:MySQLCluster` writes it, created."""
    result = subprocess.run(
        [*kubus_command, "crd", "generate", "-o", "json", "kubus_mysql:MySQLCluster"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    crd: dict[str, Any] = json.loads(result.stdout)
    remove_crd(kube)  # left by an interrupted run
    create_established_crd(kube, crd)
    yield crd
    remove_crd(kube)


def remove_crd(kube: Any) -> None:
    """Take the operator's finalizer off clusters a failed test left, then delete the CRD."""
    extensions, custom = client.ApiextensionsV1Api(kube), client.CustomObjectsApi(kube)
    try:
        extensions.read_custom_resource_definition(CRD)
    except ApiException as error:
        if error.status == 404:
            return
        raise
    for item in custom.list_cluster_custom_object(GROUP, VERSION, PLURAL)["items"]:
        meta = item["metadata"]
        if meta.get("finalizers"):
            custom.patch_namespaced_custom_object(
                GROUP,
                VERSION,
                meta["namespace"],
                PLURAL,
                meta["name"],
                {"metadata": {"finalizers": None}},
            )
    delete_crd(kube, CRD)


# --- reading the cluster and what it owns ----------------------------------------------------


def mysql(name: str, replicas: int, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "MySQLCluster",
        "metadata": {"name": name},
        "spec": {"replicas": replicas, "storageSize": "1Gi", "resources": SMALL, **spec},
    }


def cluster_of(kube: Any, namespace: str, name: str) -> dict[str, Any] | None:
    try:
        got: dict[str, Any] = client.CustomObjectsApi(kube).get_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, name
        )
    except ApiException as error:
        if error.status == 404:
            return None
        raise
    return got


def pods_of(kube: Any, namespace: str, name: str) -> dict[str, Any]:
    """The cluster's live pods by name."""
    found = client.CoreV1Api(kube).list_namespaced_pod(
        namespace, label_selector=f"app.kubernetes.io/instance={name}"
    )
    return {p.metadata.name: p for p in found.items if p.metadata.deletion_timestamp is None}


def pod_ready(pod: Any) -> bool:
    conditions = {c.type: c.status for c in pod.status.conditions or []}
    return bool(pod.status.phase == "Running" and conditions.get("Ready") == "True")


def converged(kube: Any, namespace: str, name: str, replicas: int) -> bool:
    """Status and pods agree with spec.replicas: the operator's work for it is done."""
    cluster = cluster_of(kube, namespace, name)
    if cluster is None:
        return False
    status = cluster.get("status") or {}
    conditions = {c["type"]: c["status"] for c in status.get("conditions") or []}
    pods = pods_of(kube, namespace, name)
    return (
        status.get("observedGeneration") == cluster["metadata"]["generation"]
        and status.get("phase") == "Ready"
        and status.get("replicas") == replicas
        and status.get("readyReplicas") == replicas
        and conditions == {"Ready": "True", "Progressing": "False"}
        and set(pods) == {f"{name}-{i}" for i in range(replicas)}
        and all(pod_ready(p) for p in pods.values())
    )


def claims_of(kube: Any, namespace: str, name: str) -> dict[str, Any]:
    found = client.CoreV1Api(kube).list_namespaced_persistent_volume_claim(
        namespace, label_selector=f"app.kubernetes.io/instance={name}"
    )
    return {c.metadata.name: c for c in found.items}


def assert_created_in_order(pods: dict[str, Any], name: str) -> None:
    """OrderedReady: each pod was created no earlier than the one before it became Ready."""
    ordered = [pods[f"{name}-{i}"] for i in range(len(pods))]
    for before, after in itertools.pairwise(ordered):
        ready_at = next(
            c.last_transition_time for c in before.status.conditions if c.type == "Ready"
        )
        assert after.metadata.creation_timestamp >= ready_at, (
            before.metadata.name,
            after.metadata.name,
        )


# --- the CRD ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"replicas": -1}, "spec.replicas"),
        ({"storageSize": "10 GB"}, "spec.storageSize"),
        ({"version": "latest"}, "spec.version"),
        ({"resources": {"cpu": "lots"}}, "spec.resources.cpu"),
    ],
)
def test_the_apiserver_refuses_an_invalid_cluster_naming_the_field(
    mysql_crd: dict[str, Any], kube: Any, namespace: str, spec: dict[str, Any], field: str
) -> None:
    custom = client.CustomObjectsApi(kube)
    body = mysql("bad", 1)
    body["spec"].update(spec)
    with pytest.raises(ApiException) as refused:
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
    assert refused.value.status == 422
    causes = json.loads(refused.value.body)["details"]["causes"]
    # (The scale subresource adds its own cause for replicas, naming ".spec.replicas".)
    assert {c["field"].lstrip(".") for c in causes} == {field}, causes
    assert field in refused.value.body


def test_the_generated_crd_is_served_with_defaults_and_the_scale_subresource(
    mysql_crd: dict[str, Any], kube: Any, namespace: str
) -> None:
    custom = client.CustomObjectsApi(kube)
    body = mysql("defaults", 3)  # no operator runs here: nothing is made of it
    del body["spec"]["resources"]
    created = custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
    assert created["spec"] == {
        "version": "8.0",
        "replicas": 3,
        "storageSize": "1Gi",
        "resources": {"cpu": "500m", "memory": "1Gi"},
    }
    scale = custom.get_namespaced_custom_object_scale(GROUP, VERSION, namespace, PLURAL, "defaults")
    assert scale["spec"] == {"replicas": 3}
    custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "defaults")


# --- one cluster's life ----------------------------------------------------------------------


@pytest.mark.usefixtures("mysql_crd")
def test_a_cluster_is_created_scaled_and_deleted_with_what_it_owns(
    kubus_command: list[str], kube: Any, namespace: str, stack_env: dict[str, str], tmp_path: Path
) -> None:
    core, custom = client.CoreV1Api(kube), client.CustomObjectsApi(kube)
    audit = tmp_path / "audit.jsonl"
    with kubus_pool(
        stack_env,
        tmp_path,
        reconcilers=2,
        extra=[CONTROLLERS, f"--reconcile-audit-log={audit}"],
        watcher_args=[RESOURCES],
        kubus=kubus_command,
    ) as pool:
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, mysql("db", 2))
        wait_for(lambda: converged(kube, namespace, "db", 2), timeout=120, what="db Ready at 2")
        cluster = cluster_of(kube, namespace, "db")
        assert cluster is not None
        uid = cluster["metadata"]["uid"]
        assert cluster["metadata"]["finalizers"] == [FINALIZER]
        assert cluster["status"]["selector"] == (
            "app.kubernetes.io/instance=db,app.kubernetes.io/name=mysql"
        )
        assert datetime.datetime.fromisoformat(cluster["status"]["lastUpdate"])

        def controlled(obj: Any) -> bool:
            (owner,) = obj.metadata.owner_references
            return bool((owner.kind, owner.uid, owner.controller) == ("MySQLCluster", uid, True))

        secret = core.read_namespaced_secret("db-root", namespace)
        assert controlled(secret) and len(secret.data["password"]) >= 24
        service = core.read_namespaced_service("db", namespace)
        assert controlled(service)
        assert service.spec.cluster_ip == "None"
        assert [p.port for p in service.spec.ports] == [3306]
        assert service.spec.selector == {
            "app.kubernetes.io/name": "mysql",
            "app.kubernetes.io/instance": "db",
        }
        assert "mysql-operator" in {m.manager for m in service.metadata.managed_fields}
        pods = pods_of(kube, namespace, "db")
        assert_created_in_order(pods, "db")
        for i, pod in enumerate(pods[f"db-{i}"] for i in range(2)):
            assert controlled(pod)
            assert (pod.spec.hostname, pod.spec.subdomain) == (f"db-{i}", "db")
            (container,) = pod.spec.containers
            assert container.image == "mysql:8.0"
            assert container.env[0].value_from.secret_key_ref.name == "db-root"
            assert container.resources.limits == SMALL
            assert pod.spec.volumes[0].persistent_volume_claim.claim_name == f"data-db-{i}"
        claims = claims_of(kube, namespace, "db")
        assert set(claims) == {"data-db-0", "data-db-1"}
        for pvc in claims.values():
            assert controlled(pvc)
            assert pvc.spec.access_modes == ["ReadWriteOnce"]
            assert pvc.spec.resources.requests == {"storage": "1Gi"}
            assert pvc.spec.storage_class_name == "standard", "the default StorageClass's"
            assert pvc.status.phase == "Bound"

        # A converged cluster is not written again: a reconcile (for a pod's change) leaves
        # its status as it is.
        written = cluster["metadata"]["resourceVersion"]
        before = len(reconciles(audit)[("mysql-operator", f"{namespace}/db")])
        core.patch_namespaced_pod("db-0", namespace, {"metadata": {"labels": {"poke": "1"}}})
        wait_for(
            lambda: len(reconciles(audit)[("mysql-operator", f"{namespace}/db")]) > before,
            timeout=30,
            what="a reconcile of db after its pod changed",
        )
        now = cluster_of(kube, namespace, "db")
        assert now is not None and now["metadata"]["resourceVersion"] == written

        # Scaled through the scale subresource, as `kubectl scale` does.
        for replicas in (4, 1):
            custom.patch_namespaced_custom_object_scale(
                GROUP, VERSION, namespace, PLURAL, "db", {"spec": {"replicas": replicas}}
            )
            wait_for(
                lambda r=replicas: converged(kube, namespace, "db", r),
                timeout=120,
                what=f"db Ready at {replicas}",
            )
            if replicas == 4:
                assert_created_in_order(pods_of(kube, namespace, "db"), "db")
        scale = custom.get_namespaced_custom_object_scale(GROUP, VERSION, namespace, PLURAL, "db")
        assert (scale["status"]["replicas"], scale["status"]["selector"]) == (
            1,
            "app.kubernetes.io/instance=db,app.kubernetes.io/name=mysql",
        )
        assert set(claims_of(kube, namespace, "db")) == {f"data-db-{i}" for i in range(4)}, (
            "PVCs of scaled-away ordinals are kept"
        )

        custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "db")

        def cleanup_events() -> list[str]:
            return [
                e.message
                for e in core.list_namespaced_event(namespace).items
                if e.reason == "Cleanup" and e.involved_object.kind == "MySQLCluster"
            ]

        assert wait_for(cleanup_events, timeout=60, what="the Cleanup event") == [
            "Secret db-root deleted"
        ]
        wait_for(lambda: cluster_of(kube, namespace, "db") is None, timeout=60, what="db gone")
        secrets = [s.metadata.name for s in core.list_namespaced_secret(namespace).items]
        assert "db-root" not in secrets

        def owned_left() -> dict[str, list[str]]:
            services = [s.metadata.name for s in core.list_namespaced_service(namespace).items]
            return {
                "pods": sorted(pods_of(kube, namespace, "db")),
                "services": [s for s in services if s == "db"],
                "pvcs": sorted(claims_of(kube, namespace, "db")),
            }

        wait_for(
            lambda: not any(owned_left().values()),
            timeout=120,
            what="pods, Service and PVCs collected by kubus's garbage collector",
        )
        logs = [process.log.read_text() for process in pool.reconcilers]
    assert not any("Traceback" in log for log in logs)


@pytest.mark.usefixtures("mysql_crd")
def test_a_reconcile_is_traced_from_the_watcher_through_the_operator_to_the_apiserver(
    kubus_command: list[str], kube: Any, namespace: str, stack_env: dict[str, str], tmp_path: Path
) -> None:
    custom = client.CustomObjectsApi(kube)
    with kubus_pool(
        stack_env, tmp_path, extra=[CONTROLLERS], watcher_args=[RESOURCES], kubus=kubus_command
    ):
        custom.create_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, mysql("traced", 1)
        )
        wait_for(lambda: converged(kube, namespace, "traced", 1), timeout=120, what="Ready")

        def first(found: ReconcileTrace) -> bool:
            """The reconcile that made the cluster's objects (its Secret among them)."""
            return found.tags.get("k8s.object.key") == f"{namespace}/traced" and any(
                w["operationName"].startswith("POST ") for w in found.writes()
            )

        found = wait_for(
            lambda: find_reconcile(stack_env, "mysql-operator", first),
            timeout=60,
            what="the first mysql-operator reconcile of the cluster in Jaeger",
        )
        custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "traced")
        wait_for(lambda: cluster_of(kube, namespace, "traced") is None, timeout=60, what="gone")
    assert found.service(found.parent) == "kubus-watcher"
    assert found.parent["operationName"].startswith("publish ")
    assert {k: found.tags[k] for k in ("mysql.name", "mysql.namespace", "mysql.replicas")} == {
        "mysql.name": "traced",
        "mysql.namespace": namespace,
        "mysql.replicas": 1,
    }
    assert {"pvc_ensured", "service_ensured", "pods_ensured", "status_updated"} <= set(
        found.events
    ), found.events
    writes = {w["operationName"].split("?")[0] for w in found.writes()}
    base = f"/api/v1/namespaces/{namespace}"
    assert {
        f"POST {base}/secrets",
        f"PATCH {base}/services/traced",
        f"PATCH {base}/persistentvolumeclaims/data-traced-0",
        f"PATCH {base}/pods/traced-0",
        f"PATCH /apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}/traced/status",
    } <= writes, writes
    assert all(found.service(w) == "kubus-reconciler" for w in found.writes())


# --- many clusters, a pool of three, a kill -9 -----------------------------------------------


@pytest.mark.usefixtures("mysql_crd")
def test_thirty_clusters_on_three_processes_converge_across_a_kill_9_one_worker_per_key(
    kubus_command: list[str], kube: Any, stack_env: dict[str, str], tmp_path: Path
) -> None:
    core, custom = client.CoreV1Api(kube), client.CustomObjectsApi(kube)
    run = uuid.uuid4().hex[:5]
    namespaces = [create_namespace(core, f"my-{run}-{i}") for i in range(10)]
    clusters = [(ns, f"db{j}") for ns in namespaces for j in range(3)]
    audit = tmp_path / "audit.jsonl"
    key = "mysql-operator"

    def ready_count() -> int:
        items = custom.list_cluster_custom_object(GROUP, VERSION, PLURAL)["items"]
        return sum(
            (i.get("status") or {}).get("phase") == "Ready"
            for i in items
            if i["metadata"]["namespace"] in namespaces
        )

    with kubus_pool(
        stack_env,
        tmp_path,
        reconcilers=3,
        extra=[CONTROLLERS, f"--reconcile-audit-log={audit}"],
        watcher_args=[RESOURCES],
        kubus=kubus_command,
    ) as pool:
        members = {member_of(process): process for process in pool.reconcilers}
        for namespace, name in clusters:
            custom.create_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, mysql(name, 2)
            )
        wait_for(lambda: ready_count() >= 5, timeout=120, what="5 of 30 clusters Ready")
        done_before = ready_count()
        by_member: dict[str, int] = defaultdict(int)
        for (controller, _key), entries in reconciles(audit).items():
            if controller == key:
                for _start, _end, member in entries:
                    by_member[member] += 1
        victim = max(by_member, key=lambda member: by_member[member])
        victim_keys = {
            k
            for (c, k), entries in reconciles(audit).items()
            if c == key and any(m == victim for *_, m in entries)
        }
        members[victim].kill()
        killed_at = time.time()

        wait_for(
            lambda: all(converged(kube, ns, n, 2) for ns, n in clusters),
            timeout=300,
            what="all 30 clusters Ready after the kill -9",
        )
        after = reconciles(audit)
        taken_over = {
            k
            for (c, k), entries in after.items()
            if c == key
            and k in victim_keys
            and any(s > killed_at and m != victim for s, _e, m in entries)
        }
        assert taken_over, "the survivors reconciled clusters the killed process had"

        for namespace, name in clusters:
            custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)

        def left() -> dict[str, list[str]]:
            items = custom.list_cluster_custom_object(GROUP, VERSION, PLURAL)["items"]
            found: dict[str, list[str]] = {
                "clusters": [
                    f"{i['metadata']['namespace']}/{i['metadata']['name']}"
                    for i in items
                    if i["metadata"]["namespace"] in namespaces
                ]
            }
            for kind, list_of in (
                ("pods", core.list_namespaced_pod),
                ("pvcs", core.list_namespaced_persistent_volume_claim),
            ):
                found[kind] = [
                    f"{o.metadata.namespace}/{o.metadata.name} {o.metadata.finalizers}"
                    for ns in namespaces
                    for o in list_of(ns).items
                ]
            return {kind: names for kind, names in found.items() if names}

        try:
            wait_for(lambda: not left(), timeout=300, what="the 30 clusters and theirs gone")
        except AssertionError as timeout:
            raise AssertionError(f"{timeout}; left: {left()}") from None
    for namespace in namespaces:
        core.delete_namespace(namespace)
    print(f"{done_before} of 30 Ready when the process was killed")
    assert overlaps(reconciles(audit)) == []

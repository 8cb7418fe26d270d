"""The MySQLCluster example operator (examples/mysql-operator): its CRD, the bodies it writes,
its StatefulSet-like ordering and its status, on plain data and a recording context."""

from __future__ import annotations

import asyncio
import datetime
import re
import sys
from pathlib import Path
from typing import Any

import msgspec
import pytest

from bus.subjects import ResourceType
from reconcilers.kinds import PODS, SECRETS
from reconcilers.operator import InvalidResource, custom_resource_definition

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples" / "mysql-operator"))

from kubus_mysql import MySQLCluster, MySQLOperator
from kubus_mysql.operator import (
    BYTES,
    CPU,
    PVCS,
    SERVICES,
    SPEC_HASH,
    claim,
    cleanup,
    pod,
    reconcile,
    service,
    status_of,
    step_pods,
)

NOW = datetime.datetime(2026, 12, 3, 10, 0, 0, 123456, tzinfo=datetime.UTC)
Object = dict[str, Any]


def cluster(replicas: int = 3, version: str = "8.0", status: Object | None = None) -> MySQLCluster:
    return MySQLCluster.decode(
        {
            "apiVersion": "database.example.com/v1",
            "kind": "MySQLCluster",
            "metadata": {"name": "db", "namespace": "shop", "uid": "u-1", "generation": 2},
            "spec": {
                "version": version,
                "replicas": replicas,
                "storageSize": "10Gi",
                "resources": {"cpu": "250m", "memory": "512Mi"},
            },
            "status": status or {},
        }
    )


def running(body: Object, *, is_ready: bool = True) -> Object:
    """A pod as the cache holds it once kwok (the kubelet) has run it."""
    return {
        **body,
        "status": {
            "phase": "Running",
            "conditions": [{"type": "Ready", "status": "True" if is_ready else "False"}],
        },
    }


def pods_of(db: MySQLCluster, *ordinals: int, is_ready: bool = True) -> dict[int, Object]:
    return {i: running(pod(db, i), is_ready=is_ready) for i in ordinals}


# --- the CRD ---------------------------------------------------------------------------------


def test_the_crd_has_its_names_subresources_columns_and_a_validating_schema() -> None:
    crd = custom_resource_definition(MySQLCluster)
    assert crd["metadata"]["name"] == "mysqlclusters.database.example.com"
    spec = crd["spec"]
    assert spec["scope"] == "Namespaced"
    assert spec["names"]["plural"] == "mysqlclusters"
    assert spec["names"]["shortNames"] == ["mysql"]
    (version,) = spec["versions"]
    assert version["subresources"] == {
        "status": {},
        "scale": {
            "specReplicasPath": ".spec.replicas",
            "statusReplicasPath": ".status.replicas",
            "labelSelectorPath": ".status.selector",
        },
    }
    assert [c["name"] for c in version["additionalPrinterColumns"]] == [
        "Replicas",
        "Ready",
        "Phase",
        "Age",
    ]
    schema = version["schema"]["openAPIV3Schema"]["properties"]
    fields = schema["spec"]["properties"]
    assert schema["spec"]["required"] == ["storageSize"]
    assert fields["replicas"] == {"type": "integer", "minimum": 0, "default": 1}
    assert fields["version"]["default"] == "8.0"
    assert fields["storageSize"]["pattern"] == BYTES
    assert fields["resources"]["properties"]["cpu"]["pattern"] == CPU
    assert fields["resources"]["properties"]["memory"]["pattern"] == BYTES
    status = schema["status"]["properties"]
    assert status["lastUpdate"]["format"] == "date-time"
    assert {"replicas", "readyReplicas", "selector", "phase", "observedGeneration"} <= set(status)
    assert status["phase"]["enum"] == ["Pending", "Ready", "Scaling"]
    assert status["conditions"]["items"]["required"] == ["type", "status", "reason"]


@pytest.mark.parametrize("size", ["10Gi", "1.5Ti", "500M", "1024"])
def test_storage_sizes_that_are_quantities_match(size: str) -> None:
    assert re.fullmatch(BYTES, size)


@pytest.mark.parametrize("size", ["10 GB", "-1Gi", "1gi", "Gi", "10GiB", ""])
def test_storage_sizes_that_are_not_quantities_do_not(size: str) -> None:
    assert not re.fullmatch(BYTES, size)


def test_cpu_is_cores_or_millicores() -> None:
    assert all(re.fullmatch(CPU, v) for v in ("2", "0.5", "500m"))
    assert not any(re.fullmatch(CPU, v) for v in ("500Mi", "-1", "1 core"))


def test_a_cluster_that_does_not_match_the_types_is_refused_naming_the_field() -> None:
    with pytest.raises(InvalidResource, match=r"MySQLCluster shop/db: .* at `\$\.spec\.replicas`"):
        MySQLCluster.decode(
            {"metadata": {"name": "db", "namespace": "shop"}, "spec": {"replicas": -1}}
        )
    defaulted = MySQLCluster.decode({"spec": {"storageSize": "1Gi"}})
    assert (defaulted.spec.version, defaulted.spec.replicas) == ("8.0", 1)
    assert (defaulted.spec.resources.cpu, defaulted.spec.resources.memory) == ("500m", "1Gi")


def test_the_operator_is_named_and_reads_what_it_owns() -> None:
    assert MySQLOperator.name == "mysql-operator"
    assert set(MySQLOperator.reads) == {MySQLCluster.primary_resource(), PODS, PVCS, SERVICES}
    assert SECRETS not in MySQLOperator.reads, "Secrets are read live, never cached"
    rules = {(p.resource, p.verbs) for p in MySQLOperator.permissions}
    assert ("secrets", ("get", "create", "delete")) in rules


# --- the bodies ------------------------------------------------------------------------------


def test_a_pod_is_a_statefulset_pod_of_the_cluster() -> None:
    body = pod(cluster(), 1)
    assert body["metadata"]["name"] == "db-1"
    assert body["metadata"]["labels"] == {
        "app.kubernetes.io/name": "mysql",
        "app.kubernetes.io/instance": "db",
    }
    spec = body["spec"]
    assert (spec["hostname"], spec["subdomain"]) == ("db-1", "db")
    (container,) = spec["containers"]
    assert container["image"] == "mysql:8.0"
    assert container["env"] == [
        {
            "name": "MYSQL_ROOT_PASSWORD",
            "valueFrom": {"secretKeyRef": {"name": "db-root", "key": "password"}},
        }
    ]
    wanted = {"cpu": "250m", "memory": "512Mi"}
    assert container["resources"] == {"requests": wanted, "limits": wanted}
    assert container["readinessProbe"]["exec"]["command"][0] == "mysqladmin"
    assert spec["volumes"] == [
        {"name": "data", "persistentVolumeClaim": {"claimName": "data-db-1"}}
    ]
    assert container["volumeMounts"] == [{"name": "data", "mountPath": "/var/lib/mysql"}]


def test_a_claim_asks_the_default_storage_class_for_storage_size() -> None:
    body = claim(cluster(), 2)
    assert body["metadata"]["name"] == "data-db-2"
    assert body["spec"] == {
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": "10Gi"}},
    }
    assert "storageClassName" not in body["spec"]


def test_the_service_is_headless_on_3306_selecting_the_clusters_pods() -> None:
    spec = service(cluster())["spec"]
    assert spec["clusterIP"] == "None"
    assert spec["ports"] == [{"name": "mysql", "port": 3306, "targetPort": 3306}]
    assert spec["selector"] == pod(cluster(), 0)["metadata"]["labels"]


def test_the_spec_hash_follows_what_the_pod_runs() -> None:
    def digest(db: MySQLCluster) -> str:
        annotations: dict[str, str] = pod(db, 0)["metadata"]["annotations"]
        return annotations[SPEC_HASH]

    assert digest(cluster()) == digest(cluster(replicas=5)), "scaling changes no pod"
    assert digest(cluster()) != digest(cluster(version="8.4"))


# --- the order of pod changes ----------------------------------------------------------------


class Span:
    def __init__(self) -> None:
        self.attributes: dict[str, Any] = {}
        self.events: list[str] = []

    def set_attributes(self, attributes: dict[str, Any]) -> None:
        self.attributes.update(attributes)

    def add_event(self, name: str, attributes: Any = None) -> None:
        self.events.append(name)


class Kube:
    def __init__(self, context: Context) -> None:
        self._context = context

    async def create(self, api: ResourceType, namespace: str | None, body: Object) -> Object:
        from kubus.kube import AlreadyExistsError

        name = body["metadata"]["name"]
        if name in self._context.secrets:
            raise AlreadyExistsError(409, "AlreadyExists", "exists")
        self._context.writes.append(("create", api.resource, name))
        self._context.secrets[name] = body
        return body


class Context:
    """What the operator uses of OperatorContext, over a dict for a cache; writes recorded
    (and cached, as the bus would bring them back)."""

    def __init__(self, obj: MySQLCluster, cache: dict[tuple[ResourceType, str], Object]) -> None:
        self.obj, self.namespace = obj, obj.metadata.namespace
        self.cache = cache
        self.secrets: dict[str, Object] = {}
        self.writes: list[tuple[str, str, str]] = []
        self.events: list[tuple[str, str, str]] = []
        self.span = Span()
        self.kube = Kube(self)
        self.status: Any = None

    def get(self, resource: ResourceType, name: str) -> Object | None:
        return self.cache.get((resource, name))

    def owned(self, resource: ResourceType) -> list[Object]:
        return [obj for (kind, _), obj in self.cache.items() if kind == resource]

    async def read(self, resource: ResourceType, name: str) -> Object | None:
        assert resource == SECRETS
        return self.secrets.get(name)

    async def api(self, resource: ResourceType) -> ResourceType:
        return resource

    def owner_reference(self) -> Object:
        return {"kind": "MySQLCluster", "name": "db", "uid": "u-1", "controller": True}

    async def apply(self, resource: ResourceType, body: Object) -> Object:
        name = body["metadata"]["name"]
        self.writes.append(("apply", resource.resource, name))
        self.cache[(resource, name)] = body
        return body

    async def delete(self, resource: ResourceType, name: str) -> bool:
        self.writes.append(("delete", resource.resource, name))
        if resource == SECRETS:
            return self.secrets.pop(name, None) is not None
        return self.cache.pop((resource, name), None) is not None

    async def update_status(self, status: Any) -> Object:
        self.writes.append(("status", "mysqlclusters", "db"))
        self.status = status
        return {}

    def event(self, event_type: str, reason: str, message: str) -> None:
        self.events.append((event_type, reason, message))


def steps(db: MySQLCluster, pods: dict[int, Object]) -> list[tuple[str, str, str]]:
    context = Context(db, {})
    asyncio.run(step_pods(db, context, pods))  # type: ignore[arg-type]
    return context.writes


def test_pods_are_created_in_order_each_once_those_before_it_are_ready() -> None:
    db = cluster(replicas=3)
    assert steps(db, {}) == [("apply", "pods", "db-0")]
    assert steps(db, pods_of(db, 0, is_ready=False)) == []
    assert steps(db, pods_of(db, 0)) == [("apply", "pods", "db-1")]
    assert steps(db, pods_of(db, 0, 1)) == [("apply", "pods", "db-2")]
    assert steps(db, pods_of(db, 0, 1, 2)) == []


def test_scale_down_removes_the_highest_ordinal_one_at_a_time() -> None:
    db = cluster(replicas=1)
    assert steps(db, pods_of(db, 0, 1, 2, 3)) == [("delete", "pods", "db-3")]
    going = pods_of(db, 0, 1, 2, 3)
    going[3]["metadata"] = {**going[3]["metadata"], "deletionTimestamp": "2026-12-03T10:00:00Z"}
    assert steps(db, going) == [], "nothing while a pod is going"
    assert steps(db, pods_of(db, 0, 1, 2)) == [("delete", "pods", "db-2")]


def test_a_changed_spec_replaces_pods_from_the_highest_ordinal_and_a_failed_pod_is_replaced() -> (
    None
):
    old = cluster(replicas=3, version="8.0")
    new = cluster(replicas=3, version="8.4")
    assert steps(new, pods_of(old, 0, 1, 2)) == [("delete", "pods", "db-2")]
    assert steps(new, {**pods_of(old, 0, 1), 2: running(pod(new, 2))}) == [
        ("delete", "pods", "db-1")
    ]
    failed = pods_of(old, 0, 1)
    failed[1]["status"] = {"phase": "Failed"}
    assert steps(old, failed) == [("delete", "pods", "db-1")]


# --- status ----------------------------------------------------------------------------------


def conditions(status: Any) -> dict[str, tuple[str, str]]:
    return {c.type: (c.status, c.reason) for c in status.conditions}


def test_the_status_of_a_new_cluster_is_pending_and_progressing() -> None:
    status = status_of(cluster(replicas=3), {}, NOW)
    assert (status.replicas, status.ready_replicas, status.phase) == (0, 0, "Pending")
    assert status.selector == "app.kubernetes.io/instance=db,app.kubernetes.io/name=mysql"
    assert conditions(status) == {
        "Ready": ("False", "ReplicasNotReady"),
        "Progressing": ("True", "ScalingUp"),
    }
    assert status.observed_generation == 2
    assert status.last_update == NOW.replace(microsecond=0)
    assert all(c.observed_generation == 2 for c in status.conditions)


def test_the_status_follows_scaling_up_ready_and_scaling_down() -> None:
    db = cluster(replicas=3)
    scaling = status_of(db, pods_of(db, 0, 1), NOW)
    assert (scaling.replicas, scaling.ready_replicas, scaling.phase) == (2, 2, "Scaling")
    ready = status_of(db, pods_of(db, 0, 1, 2), NOW)
    assert (ready.replicas, ready.ready_replicas, ready.phase) == (3, 3, "Ready")
    assert conditions(ready) == {
        "Ready": ("True", "AllReplicasReady"),
        "Progressing": ("False", "Complete"),
    }
    smaller = cluster(replicas=1)
    down = status_of(smaller, pods_of(smaller, 0, 1, 2), NOW)
    assert down.phase == "Scaling"
    assert conditions(down) == {
        "Ready": ("True", "AllReplicasReady"),
        "Progressing": ("True", "ScalingDown"),
    }
    newer = cluster(replicas=3, version="8.4")
    assert conditions(status_of(newer, pods_of(db, 0, 1, 2), NOW))["Progressing"] == (
        "True",
        "Updating",
    )


def test_an_unchanged_status_is_equal_so_not_written_and_last_update_stays() -> None:
    db = cluster(replicas=2)
    first = status_of(db, pods_of(db, 0), NOW)
    stored = cluster(replicas=2, status=msgspec.to_builtins(first))
    later = NOW + datetime.timedelta(minutes=5)
    assert status_of(stored, pods_of(db, 0), later) == stored.status
    changed = status_of(stored, pods_of(db, 0, 1), later)
    assert changed.last_update == later.replace(microsecond=0)
    ready = {c.type: c for c in changed.conditions}["Ready"]
    assert ready.last_transition_time == "2026-12-03T10:05:00Z"
    progressing = {c.type: c for c in changed.conditions}["Progressing"]
    assert progressing.last_transition_time == "2026-12-03T10:05:00Z"


# --- the reconcile, on a recording context ---------------------------------------------------


def test_a_reconcile_writes_what_is_missing_and_a_second_one_nothing() -> None:
    db = cluster(replicas=2)
    context = Context(db, {})
    asyncio.run(reconcile(db, context))  # type: ignore[arg-type]
    assert context.writes == [
        ("create", "secrets", "db-root"),
        ("apply", "services", "db"),
        ("apply", "persistentvolumeclaims", "data-db-0"),
        ("apply", "persistentvolumeclaims", "data-db-1"),
        ("apply", "pods", "db-0"),
        ("status", "mysqlclusters", "db"),
    ]
    secret = context.secrets["db-root"]
    assert secret["metadata"]["ownerReferences"][0]["controller"] is True
    assert len(secret["stringData"]["password"]) >= 24
    assert context.span.attributes == {
        "mysql.name": "db",
        "mysql.namespace": "shop",
        "mysql.replicas": 2,
    }
    assert context.span.events == [
        "service_ensured",
        "pvc_ensured",
        "pods_ensured",
        "status_updated",
    ]

    # The status comes back, the pod appears (not Ready yet): the status says so, once; then
    # nothing is written, and the password is kept.
    password = secret["stringData"]["password"]
    for expected in ([("status", "mysqlclusters", "db")], []):
        stored = cluster(replicas=2, status=msgspec.to_builtins(context.status))
        context.obj = stored
        context.writes.clear()
        asyncio.run(reconcile(stored, context))  # type: ignore[arg-type]
        assert context.writes == expected
    assert context.status.replicas == 1
    assert context.secrets["db-root"]["stringData"]["password"] == password


def test_cleanup_deletes_the_root_secret_and_says_so() -> None:
    db = cluster()
    context = Context(db, {})
    context.secrets["db-root"] = {}
    asyncio.run(cleanup(db, context))  # type: ignore[arg-type]
    assert context.writes == [("delete", "secrets", "db-root")]
    assert context.events == [("Normal", "Cleanup", "Secret db-root deleted")]

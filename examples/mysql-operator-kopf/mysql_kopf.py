"""The MySQLCluster operator of examples/mysql-operator, written idiomatically with kopf.

The same resource (the CRD ``kubus crd generate kubus_mysql:MySQLCluster`` writes), the same
children and status: a root Secret ``<name>-root`` (generated once), a headless Service
``<name>``, pods ``<name>-<i>`` created one at a time once those before are Ready (as a
StatefulSet's ``OrderedReady``), each with its PVC ``data-<name>-<i>``, scale-down from the
highest ordinal, outdated pods replaced from the highest ordinal down; status ``replicas``,
``readyReplicas``, ``selector``, ``phase``, ``lastUpdate``, ``observedGeneration`` and the
conditions ``Ready`` and ``Progressing``. Deleting a cluster runs kopf's finalizer, which
deletes the Secret; Kubernetes' garbage collector removes the rest.

Run: ``kopf run mysql_kopf.py --all-namespaces`` (kopf 1.45, the ``kubernetes`` client).
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import secrets
import time
from typing import Any

import kopf
import kubernetes
from kubernetes.client.rest import ApiException

GROUP, VERSION, PLURAL = "database.example.com", "v1", "mysqlclusters"
SPEC_HASH = "database.example.com/spec-hash"
NAME_LABEL, INSTANCE_LABEL = "app.kubernetes.io/name", "app.kubernetes.io/instance"
# The benchmark's instrumentation (bench.operator_latency): when each reconcile starts.
AUDIT = os.environ.get("MYSQL_KOPF_AUDIT")


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    # The CRD's status schema is structural: kopf's progress goes to annotations, not status.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage()
    try:
        kubernetes.config.load_incluster_config()
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config()


# --- bodies ---------------------------------------------------------------------------------


def labels(name: str) -> dict[str, str]:
    return {NAME_LABEL: "mysql", INSTANCE_LABEL: name}


def stamped(body: dict[str, Any]) -> dict[str, Any]:
    digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]
    body["metadata"].setdefault("annotations", {})[SPEC_HASH] = digest
    return body


def spec_hash(obj: dict[str, Any]) -> str | None:
    return (obj["metadata"].get("annotations") or {}).get(SPEC_HASH)


def service_body(name: str) -> dict[str, Any]:
    return stamped(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": name, "labels": labels(name)},
            "spec": {
                "clusterIP": "None",
                "selector": labels(name),
                "ports": [{"name": "mysql", "port": 3306, "targetPort": 3306}],
                "publishNotReadyAddresses": True,
            },
        }
    )


def claim_body(name: str, ordinal: int, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": f"data-{name}-{ordinal}", "labels": labels(name)},
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": spec["storageSize"]}},
        },
    }


def pod_body(name: str, ordinal: int, spec: dict[str, Any]) -> dict[str, Any]:
    resources = spec.get("resources") or {}
    limits = {"cpu": resources.get("cpu", "500m"), "memory": resources.get("memory", "1Gi")}
    password = {"secretKeyRef": {"name": f"{name}-root", "key": "password"}}
    return stamped(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": f"{name}-{ordinal}", "labels": labels(name)},
            "spec": {
                "hostname": f"{name}-{ordinal}",
                "subdomain": name,
                "containers": [
                    {
                        "name": "mysql",
                        "image": f"mysql:{spec.get('version', '8.0')}",
                        "env": [{"name": "MYSQL_ROOT_PASSWORD", "valueFrom": password}],
                        "ports": [{"name": "mysql", "containerPort": 3306}],
                        "resources": {"requests": limits, "limits": limits},
                        "readinessProbe": {
                            "exec": {"command": ["mysqladmin", "ping", "-h", "127.0.0.1"]},
                            "initialDelaySeconds": 5,
                            "periodSeconds": 5,
                        },
                        "volumeMounts": [{"name": "data", "mountPath": "/var/lib/mysql"}],
                    }
                ],
                "volumes": [
                    {
                        "name": "data",
                        "persistentVolumeClaim": {"claimName": f"data-{name}-{ordinal}"},
                    }
                ],
            },
        }
    )


# --- the pods of each cluster, kept in memory by kopf ----------------------------------------


@kopf.index("pods", labels={NAME_LABEL: "mysql"})
def pods_by_cluster(
    namespace: str, name: str, labels: kopf.Labels, meta: kopf.Meta, status: kopf.Status, **_: Any
) -> dict[tuple[str, str], dict[str, Any]]:
    instance = labels.get(INSTANCE_LABEL, "")
    suffix = name.removeprefix(f"{instance}-")
    if not suffix.isdigit():
        return {}
    conditions = {c.get("type"): c.get("status") for c in status.get("conditions") or []}
    summary = {
        "ordinal": int(suffix),
        "name": name,
        "ready": status.get("phase") == "Running" and conditions.get("Ready") == "True",
        "failed": status.get("phase") in ("Failed", "Succeeded"),
        "terminating": meta.get("deletionTimestamp") is not None,
        "hash": (meta.get("annotations") or {}).get(SPEC_HASH),
    }
    return {(namespace, instance): summary}


# --- the reconcile --------------------------------------------------------------------------


def reconcile(cluster: dict[str, Any], index: kopf.Index[Any, Any]) -> dict[str, Any]:
    """Converge the children of ``cluster``; returns the status it should have."""
    meta, spec = cluster["metadata"], cluster["spec"]
    name, namespace = meta["name"], meta["namespace"]
    core = kubernetes.client.CoreV1Api()
    ensure_root_secret(core, cluster)
    wanted = service_body(name)
    kopf.adopt(wanted, owner=cluster)
    try:
        current = core.read_namespaced_service(name, namespace).to_dict()
        if spec_hash(current) != spec_hash(wanted):
            core.patch_namespaced_service(name, namespace, wanted)
    except ApiException as error:
        if error.status != 404:
            raise
        core.create_namespaced_service(namespace, wanted)
    for i in range(spec.get("replicas", 1)):
        create(
            core.create_namespaced_persistent_volume_claim,
            namespace,
            claim_body(name, i, spec),
            cluster,
        )
    pods = {p["ordinal"]: p for p in index.get((namespace, name), [])}
    step_pods(core, cluster, pods)
    return status_of(cluster, pods)


def create(call: Any, namespace: str, body: dict[str, Any], owner: dict[str, Any]) -> None:
    kopf.adopt(body, owner=owner)
    try:
        call(namespace, body)
    except ApiException as error:
        if error.status != 409:  # made by an earlier reconcile
            raise


def ensure_root_secret(core: Any, cluster: dict[str, Any]) -> None:
    name, namespace = f"{cluster['metadata']['name']}-root", cluster["metadata"]["namespace"]
    try:
        core.read_namespaced_secret(name, namespace)
        return
    except ApiException as error:
        if error.status != 404:
            raise
    body = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "labels": labels(cluster["metadata"]["name"])},
        "type": "Opaque",
        "stringData": {"password": secrets.token_urlsafe(24)},
    }
    create(core.create_namespaced_secret, namespace, body, cluster)
    kopf.info(cluster, reason="SecretCreated", message=f"root password in Secret {name}")


def step_pods(core: Any, cluster: dict[str, Any], pods: dict[int, dict[str, Any]]) -> None:
    """One change at a time, as a StatefulSet's OrderedReady."""
    name, namespace, spec = (
        cluster["metadata"]["name"],
        cluster["metadata"]["namespace"],
        cluster["spec"],
    )
    replicas = spec.get("replicas", 1)
    if any(p["terminating"] for p in pods.values()):
        return
    for i in range(replicas):
        current = pods.get(i)
        if current is None:
            create(core.create_namespaced_pod, namespace, pod_body(name, i, spec), cluster)
            return
        if current["failed"]:
            delete_pod(core, current["name"], namespace)
            return
        if not current["ready"]:
            return
    extra = [i for i in pods if i >= replicas]
    outdated = [
        i
        for i, p in pods.items()
        if i < replicas and p["hash"] != spec_hash(pod_body(name, i, spec))
    ]
    if extra or outdated:
        delete_pod(core, pods[max(extra or outdated)]["name"], namespace)


def delete_pod(core: Any, name: str, namespace: str) -> None:
    try:
        core.delete_namespaced_pod(name, namespace)
    except ApiException as error:
        if error.status != 404:
            raise


def set_condition(
    conditions: list[dict[str, Any]], type_: str, status: str, reason: str, message: str, **at: Any
) -> None:
    """As apimachinery's meta.SetStatusCondition: the transition time moves with the status."""
    for condition in conditions:
        if condition["type"] == type_:
            if condition["status"] != status:
                condition["lastTransitionTime"] = at["now"]
            condition.update(status=status, reason=reason, message=message)
            condition["observedGeneration"] = at["generation"]
            return
    conditions.append(
        {
            "type": type_,
            "status": status,
            "reason": reason,
            "message": message,
            "observedGeneration": at["generation"],
            "lastTransitionTime": at["now"],
        }
    )


def status_of(cluster: dict[str, Any], pods: dict[int, dict[str, Any]]) -> dict[str, Any]:
    spec, old = cluster["spec"], dict(cluster.get("status") or {})
    name, generation = cluster["metadata"]["name"], cluster["metadata"].get("generation", 0)
    wanted, version = spec.get("replicas", 1), spec.get("version", "8.0")
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    live = {i: p for i, p in pods.items() if not p["terminating"]}
    ready_count = sum(p["ready"] for p in live.values())
    serving = sum(i < wanted and p["ready"] for i, p in live.items())
    extra = sum(i >= wanted for i in pods)
    outdated = sum(
        i < wanted and p["hash"] != spec_hash(pod_body(name, i, spec)) for i, p in live.items()
    )
    if extra:
        reason, message = "ScalingDown", f"{extra} replicas to remove"
    elif serving < wanted:
        reason, message = "ScalingUp", f"{serving} of {wanted} replicas ready"
    elif outdated:
        reason, message = "Updating", f"{outdated} replicas to update to mysql:{version}"
    else:
        reason, message = "Complete", f"{wanted} replicas of mysql:{version} ready"
    conditions = [dict(c) for c in old.get("conditions") or []]
    all_ready = serving == wanted
    set_condition(
        conditions,
        "Ready",
        "True" if all_ready else "False",
        "AllReplicasReady" if all_ready else "ReplicasNotReady",
        f"{serving} of {wanted} replicas ready",
        generation=generation,
        now=now,
    )
    set_condition(
        conditions,
        "Progressing",
        "False" if reason == "Complete" else "True",
        reason,
        message,
        generation=generation,
        now=now,
    )
    phase = "Ready" if reason == "Complete" else "Pending" if ready_count == 0 else "Scaling"
    status = {
        "replicas": len(live),
        "readyReplicas": ready_count,
        "selector": ",".join(f"{k}={v}" for k, v in sorted(labels(name).items())),
        "phase": phase,
        "observedGeneration": generation,
        "conditions": conditions,
    }
    status["lastUpdate"] = now if changed(status, old) else old.get("lastUpdate")
    return status


def changed(status: dict[str, Any], old: Any) -> bool:
    """Whether ``status`` says anything ``old`` does not (``lastUpdate`` aside)."""
    return any((old or {}).get(k) != v for k, v in status.items() if k != "lastUpdate")


# --- the handlers ---------------------------------------------------------------------------


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL)
def cluster_changed(
    body: kopf.Body, patch: kopf.Patch, reason: str, pods_by_cluster: kopf.Index[Any, Any], **_: Any
) -> None:
    if AUDIT:
        audit(body, reason)
    cluster = dict(body)
    status = reconcile(cluster, pods_by_cluster)
    if changed(status, body.status):
        patch.status.update(status)


@kopf.on.event("pods", labels={NAME_LABEL: "mysql"})
def pod_changed(
    namespace: str, labels: kopf.Labels, pods_by_cluster: kopf.Index[Any, Any], **_: Any
) -> None:
    """A pod of a cluster changed: the cluster's next step (and status) may be due."""
    custom = kubernetes.client.CustomObjectsApi()
    name = labels.get(INSTANCE_LABEL, "")
    try:
        cluster = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
    except ApiException as error:
        if error.status == 404:
            return
        raise
    if cluster["metadata"].get("deletionTimestamp"):
        return
    if AUDIT:
        audit(cluster, "pod")
    status = reconcile(cluster, pods_by_cluster)
    if changed(status, cluster.get("status")):
        custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, namespace, PLURAL, name, {"status": status}
        )


@kopf.on.delete(GROUP, VERSION, PLURAL)
def cluster_deleted(name: str, namespace: str, body: kopf.Body, **_: Any) -> None:
    """kopf's finalizer holds the cluster until this ran: its root password goes first."""
    secret = f"{name}-root"
    try:
        kubernetes.client.CoreV1Api().delete_namespaced_secret(secret, namespace)
        done = "deleted"
    except ApiException as error:
        if error.status != 404:
            raise
        done = "already gone"
    kopf.info(body, reason="Cleanup", message=f"Secret {secret} {done}")


def audit(cluster: Any, cause: str) -> None:
    meta = cluster["metadata"]
    record = {
        "start": time.time(),
        "key": f"{meta['namespace']}/{meta['name']}",
        "marker": (meta.get("annotations") or {}).get("bench.kubus.dev/marker"),
        "cause": cause,
    }
    with open(AUDIT, "a") as log:  # type: ignore[arg-type]
        log.write(json.dumps(record) + "\n")

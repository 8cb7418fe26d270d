"""The MySQLCluster operator: a StatefulSet-shaped MySQL, written on kubus's operator API.

For a MySQLCluster ``db`` it keeps a root-password Secret ``db-root`` (generated once), a
headless Service ``db``, and pods ``db-0`` .. ``db-N-1``, each with its PVC ``data-db-<i>``,
all controlled by the cluster. Pods come and go one at a time as a StatefulSet's do
(``OrderedReady``): the next is created only when those before it are Ready, scale-down
removes the highest ordinal first, and a pod whose spec changed is replaced from the highest
ordinal down. PVCs of scaled-away ordinals are kept (a StatefulSet's ``whenScaled: Retain``);
kubus's garbage collector removes them with the cluster.

Every reconcile is driven by a change of the cluster or of what it owns: nothing requeues.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import secrets
from typing import Annotated, Any, ClassVar, Final, Literal

import msgspec

from kubus.kube import AlreadyExistsError
from reconcilers.controller import Permission
from reconcilers.kinds import PERSISTENTVOLUMECLAIMS as PVCS
from reconcilers.kinds import PODS, SECRETS, SERVICES
from reconcilers.operator import (
    Condition,
    CustomResource,
    OperatorContext,
    PrinterColumn,
    Scale,
    operator,
    set_condition,
)

__all__ = ["MySQLCluster", "MySQLClusterSpec", "MySQLClusterStatus", "MySQLOperator"]

# Kubernetes quantities, as the apiserver would parse them (no signs, no exponents).
CPU: Final = r"^[0-9]+(\.[0-9]+)?m?$"
BYTES: Final = r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$"
SPEC_HASH: Final = "database.example.com/spec-hash"
FINALIZER: Final = "database.example.com/cleanup"

Object = dict[str, Any]
Timestamp = Annotated[datetime.datetime, msgspec.Meta(tz=True)]


# --- the resource ---------------------------------------------------------------------------


class Resources(msgspec.Struct, kw_only=True):
    cpu: Annotated[str, msgspec.Meta(pattern=CPU, description="e.g. 500m or 2")] = "500m"
    memory: Annotated[str, msgspec.Meta(pattern=BYTES, description="e.g. 1Gi")] = "1Gi"


class MySQLClusterSpec(msgspec.Struct, kw_only=True, rename="camel"):
    version: Annotated[
        str, msgspec.Meta(pattern=r"^[0-9]+\.[0-9]+(\.[0-9]+)?$", description="mysql image tag")
    ] = "8.0"
    replicas: Annotated[int, msgspec.Meta(ge=0)] = 1
    storage_size: Annotated[str, msgspec.Meta(pattern=BYTES, description="e.g. 10Gi")]
    resources: Resources = msgspec.field(default_factory=Resources)


class MySQLClusterStatus(msgspec.Struct, kw_only=True, rename="camel"):
    replicas: int = 0  # pods that exist (the scale subresource's status)
    ready_replicas: int = 0
    selector: str = ""  # the pods' label selector (the scale subresource's)
    phase: Literal["Pending", "Scaling", "Ready"] = "Pending"  # a summary; see conditions
    last_update: Timestamp | None = None  # when anything above last changed
    observed_generation: int | None = None
    conditions: list[Condition] = []


class MySQLCluster(CustomResource, kw_only=True):
    """A MySQL server set: pods with stable names and storage, behind a headless Service."""

    group: ClassVar[str] = "database.example.com"
    version: ClassVar[str] = "v1"
    kind: ClassVar[str] = "MySQLCluster"
    short_names: ClassVar[tuple[str, ...]] = ("mysql",)
    printer_columns: ClassVar[tuple[PrinterColumn, ...]] = (
        PrinterColumn("Replicas", ".spec.replicas", "integer"),
        PrinterColumn("Ready", ".status.readyReplicas", "integer"),
        PrinterColumn("Phase", ".status.phase"),
        PrinterColumn("Age", ".metadata.creationTimestamp", "date"),
    )
    scale: ClassVar[Scale | None] = Scale(label_selector_path=".status.selector")
    spec: MySQLClusterSpec
    status: MySQLClusterStatus = msgspec.field(default_factory=MySQLClusterStatus)


# --- what it owns, as bodies ----------------------------------------------------------------


def labels(cluster: MySQLCluster) -> dict[str, str]:
    return {"app.kubernetes.io/name": "mysql", "app.kubernetes.io/instance": cluster.metadata.name}


def root_secret_name(cluster: MySQLCluster) -> str:
    return f"{cluster.metadata.name}-root"


def claim_name(cluster: MySQLCluster, ordinal: int) -> str:
    return f"data-{cluster.metadata.name}-{ordinal}"


def stamped(body: Object) -> Object:
    """``body`` with a hash of itself in an annotation: applied again only when it changes."""
    digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]
    body["metadata"].setdefault("annotations", {})[SPEC_HASH] = digest
    return body


def up_to_date(current: Object | None, body: Object) -> bool:
    if current is None:
        return False
    annotations = current["metadata"].get("annotations") or {}
    return bool(annotations.get(SPEC_HASH) == body["metadata"]["annotations"][SPEC_HASH])


def service(cluster: MySQLCluster) -> Object:
    return stamped(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": cluster.metadata.name, "labels": labels(cluster)},
            "spec": {
                "clusterIP": "None",
                "selector": labels(cluster),
                "ports": [{"name": "mysql", "port": 3306, "targetPort": 3306}],
                # Peers find each other by DNS before they are Ready, as replication needs.
                "publishNotReadyAddresses": True,
            },
        }
    )


def claim(cluster: MySQLCluster, ordinal: int) -> Object:
    """The PVC of one ordinal; no storageClassName, so the default StorageClass provisions."""
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": claim_name(cluster, ordinal), "labels": labels(cluster)},
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": cluster.spec.storage_size}},
        },
    }


def pod(cluster: MySQLCluster, ordinal: int) -> Object:
    name, resources = cluster.metadata.name, cluster.spec.resources
    limits = {"cpu": resources.cpu, "memory": resources.memory}
    password = {"secretKeyRef": {"name": root_secret_name(cluster), "key": "password"}}
    return stamped(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": f"{name}-{ordinal}", "labels": labels(cluster)},
            "spec": {
                "hostname": f"{name}-{ordinal}",  # db-0.db.<namespace>.svc
                "subdomain": name,
                "containers": [
                    {
                        "name": "mysql",
                        "image": f"mysql:{cluster.spec.version}",
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
                        "persistentVolumeClaim": {"claimName": claim_name(cluster, ordinal)},
                    }
                ],
            },
        }
    )


# --- reading pods ---------------------------------------------------------------------------


def ordinal_of(cluster: MySQLCluster, obj: Object) -> int | None:
    suffix = obj["metadata"]["name"].removeprefix(f"{cluster.metadata.name}-")
    return int(suffix) if suffix.isdigit() else None


def terminating(obj: Object) -> bool:
    return obj["metadata"].get("deletionTimestamp") is not None


def ready(obj: Object) -> bool:
    status = obj.get("status") or {}
    conditions = {c.get("type"): c.get("status") for c in status.get("conditions") or []}
    return status.get("phase") == "Running" and conditions.get("Ready") == "True"


def failed(obj: Object) -> bool:
    return (obj.get("status") or {}).get("phase") in ("Failed", "Succeeded")


def pods_by_ordinal(cluster: MySQLCluster, owned: list[Object]) -> dict[int, Object]:
    found = {ordinal_of(cluster, p): p for p in owned}
    return {i: p for i, p in found.items() if i is not None}


# --- the reconcile --------------------------------------------------------------------------


async def reconcile(cluster: MySQLCluster, ctx: OperatorContext[MySQLCluster]) -> None:
    ctx.span.set_attributes(
        {
            "mysql.name": cluster.metadata.name,
            "mysql.namespace": cluster.metadata.namespace or "",
            "mysql.replicas": cluster.spec.replicas,
        }
    )

    await ensure_root_secret(cluster, ctx)
    wanted = service(cluster)
    if not up_to_date(ctx.get(SERVICES, cluster.metadata.name), wanted):
        await ctx.apply(SERVICES, wanted)
    ctx.span.add_event("service_ensured")

    for i in range(cluster.spec.replicas):  # kept when scaled away, like a StatefulSet's
        body = claim(cluster, i)
        if ctx.get(PVCS, body["metadata"]["name"]) is None:
            await ctx.apply(PVCS, body)
    ctx.span.add_event("pvc_ensured")

    pods = pods_by_ordinal(cluster, ctx.owned(PODS))
    await step_pods(cluster, ctx, pods)
    ctx.span.add_event("pods_ensured")

    status = status_of(cluster, pods, datetime.datetime.now(datetime.UTC))
    if status != cluster.status:
        await ctx.update_status(status)
        ctx.span.add_event("status_updated", {"mysql.phase": status.phase})


async def ensure_root_secret(cluster: MySQLCluster, ctx: OperatorContext[MySQLCluster]) -> None:
    """Generated once. Secrets travel the bus as metadata only: read live, never cached."""
    name = root_secret_name(cluster)
    if await ctx.read(SECRETS, name) is not None:
        return
    body = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": name,
            "labels": labels(cluster),
            "ownerReferences": [ctx.owner_reference()],
        },
        "type": "Opaque",
        "stringData": {"password": secrets.token_urlsafe(24)},
    }
    with contextlib.suppress(AlreadyExistsError):  # another try made it first: keep that one
        await ctx.kube.create(await ctx.api(SECRETS), ctx.namespace, body)
        ctx.event("Normal", "SecretCreated", f"root password in Secret {name}")


async def step_pods(
    cluster: MySQLCluster, ctx: OperatorContext[MySQLCluster], pods: dict[int, Object]
) -> None:
    """One change at a time, as a StatefulSet's OrderedReady: nothing while a pod goes;
    create the lowest missing ordinal once all below it are Ready; then remove the highest
    ordinal beyond ``replicas``; then replace the highest pod whose spec is outdated."""
    if any(terminating(p) for p in pods.values()):
        return
    for i in range(cluster.spec.replicas):
        current = pods.get(i)
        if current is None:
            await ctx.apply(PODS, pod(cluster, i))
            return
        if failed(current):  # recreated at the next reconcile, with its data
            await ctx.delete(PODS, current["metadata"]["name"])
            return
        if not ready(current):
            return
    extra = [i for i in pods if i >= cluster.spec.replicas]
    outdated = [i for i, p in pods.items() if i not in extra and not up_to_date(p, pod(cluster, i))]
    for i in (max(extra),) if extra else (max(outdated),) if outdated else ():
        await ctx.delete(PODS, pods[i]["metadata"]["name"])


def status_of(
    cluster: MySQLCluster, pods: dict[int, Object], now: datetime.datetime
) -> MySQLClusterStatus:
    """The status the cached pods show (``lastUpdate`` moves only when the rest changes)."""
    wanted, generation = cluster.spec.replicas, cluster.metadata.generation
    live = {i: p for i, p in pods.items() if not terminating(p)}
    ready_count = sum(ready(p) for p in live.values())
    serving = sum(i < wanted and ready(p) for i, p in live.items())
    extra = sum(i >= wanted for i in pods)
    outdated = sum(i < wanted and not up_to_date(p, pod(cluster, i)) for i, p in live.items())
    if extra:
        progress = "ScalingDown", f"{extra} replicas to remove"
    elif serving < wanted:
        progress = "ScalingUp", f"{serving} of {wanted} replicas ready"
    elif outdated:
        progress = "Updating", f"{outdated} replicas to update to mysql:{cluster.spec.version}"
    else:
        progress = "Complete", f"{wanted} replicas of mysql:{cluster.spec.version} ready"
    conditions = [msgspec.structs.replace(c) for c in cluster.status.conditions]
    set_condition(
        conditions,
        "Ready",
        "True" if serving == wanted else "False",
        "AllReplicasReady" if serving == wanted else "ReplicasNotReady",
        f"{serving} of {wanted} replicas ready",
        observed_generation=generation,
        now=now,
    )
    reason, message = progress
    set_condition(
        conditions,
        "Progressing",
        "False" if reason == "Complete" else "True",
        reason,
        message,
        observed_generation=generation,
        now=now,
    )
    if reason == "Complete":
        phase: Literal["Pending", "Scaling", "Ready"] = "Ready"
    else:
        phase = "Pending" if ready_count == 0 else "Scaling"
    status = MySQLClusterStatus(
        replicas=len(live),
        ready_replicas=ready_count,
        selector=",".join(f"{k}={v}" for k, v in sorted(labels(cluster).items())),
        phase=phase,
        last_update=cluster.status.last_update,
        observed_generation=generation,
        conditions=conditions,
    )
    if status != cluster.status:
        status.last_update = now.replace(microsecond=0)
    return status


async def cleanup(cluster: MySQLCluster, ctx: OperatorContext[MySQLCluster]) -> None:
    """Before the cluster goes: its root password first, not left to the garbage collector's
    pace (pods, Service and PVCs follow through it)."""
    name = root_secret_name(cluster)
    deleted = await ctx.delete(SECRETS, name)
    ctx.event("Normal", "Cleanup", f"Secret {name} {'deleted' if deleted else 'already gone'}")


MySQLOperator = operator(
    MySQLCluster,
    reconcile,
    name="mysql-operator",
    owns=(PODS, PVCS, SERVICES),
    finalizer=FINALIZER,
    cleanup=cleanup,
    permissions=(Permission.on(SECRETS, "get", "create", "delete"),),
    install_crd=True,
)

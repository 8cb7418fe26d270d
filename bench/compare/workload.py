"""The workload every contender runs, and how the harness tells that it has converged.

N Deployments x R replicas in one of two shapes (spread over many namespaces, or all in one),
created at once, rolled to a new image, then deleted. The ceiling contender does the same
with plain pods and no controller. Every object carries the label ``kubus-bench=<shape>``, so
one label filter finds a shape's Deployments, ReplicaSets and pods.

Pure logic only (manifests, convergence checks, timestamp latencies); the apiserver calls live
in :mod:`bench.compare.driver`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import msgspec

__all__ = [
    "IMAGE_NEW",
    "IMAGE_OLD",
    "KINDS",
    "LABEL",
    "NOUNS",
    "PHASES_OF",
    "DeploymentView",
    "PodView",
    "ReplicaSetView",
    "Shape",
    "Workload",
    "create_latencies",
    "deployment_manifest",
    "deployments_not_converged",
    "first_child_latencies",
    "pod_manifest",
    "pod_spec",
    "pods_not_ready",
    "seconds_of",
    "update_latencies",
]

LABEL = "kubus-bench"
IMAGE_OLD = "registry.example/bench:1"
IMAGE_NEW = "registry.example/bench:2"


@dataclass(frozen=True)
class Shape:
    """Where the Deployments go: ``spread`` over many namespaces, or ``one-namespace``."""

    name: str
    namespaces: tuple[str, ...]

    @classmethod
    def spread(cls, namespaces: int) -> Shape:
        return cls("spread", tuple(f"bench-spread-{index:03d}" for index in range(namespaces)))

    @classmethod
    def one_namespace(cls) -> Shape:
        return cls("one-namespace", ("bench-one",))

    def namespace_of(self, index: int) -> str:
        return self.namespaces[index % len(self.namespaces)]


# --workload: what the contenders reconcile (bench/compare/jobs.py, statefulsets.py).
KINDS = ("deployments", "jobs", "statefulsets")
# Per kind: the object's name prefix, its noun, the noun of R, and the phases it runs (a Job
# has no rollout: it is created, runs to Complete, and is deleted).
_NAME_PREFIX = {"deployments": "web", "jobs": "job", "statefulsets": "sts"}
NOUNS = {
    "deployments": ("Deployments", "replicas"),
    "jobs": ("Jobs", "completions"),
    "statefulsets": ("StatefulSets", "replicas"),
}
PHASES_OF = {
    "deployments": ("create", "update", "delete"),
    "jobs": ("create", "delete"),
    "statefulsets": ("create", "update", "delete"),
}


@dataclass(frozen=True)
class Workload:
    """N objects of ``kind`` x R pods each (``deployments``: N; ``replicas``: R, a Job's
    completions)."""

    deployments: int
    replicas: int
    kind: str = "deployments"

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown workload {self.kind!r} (known: {', '.join(KINDS)})")

    @property
    def pods(self) -> int:
        return self.deployments * self.replicas

    @property
    def phases(self) -> tuple[str, ...]:
        return PHASES_OF[self.kind]

    def describe(self) -> str:
        """``20 Deployments x 5 replicas``, ``100 Jobs x 10 completions``."""
        noun, per = NOUNS[self.kind]
        return f"{self.deployments} {noun} x {self.replicas} {per}"

    def settings(self) -> dict[str, Any]:
        """The run's settings that name the workload, for results.json."""
        noun, per = NOUNS[self.kind]
        return {"workload": self.kind, noun.lower(): self.deployments, per: self.replicas}

    def names(self, shape: Shape) -> list[tuple[str, str]]:
        """(namespace, name) of every object of ``shape``."""
        prefix = _NAME_PREFIX[self.kind]
        return [(shape.namespace_of(i), f"{prefix}-{i:05d}") for i in range(self.deployments)]

    def nodes(self) -> int:
        """kwok nodes (1,000 pods each) for twice the pods: a rolling update surges, and the
        ceiling's replacement holds old and new pods at once."""
        return max(3, math.ceil(2 * self.pods / 1000) + 1)


def pod_spec(image: str) -> dict[str, Any]:
    return {
        "containers": [
            {
                "name": "web",
                "image": image,
                "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}},
            }
        ]
    }


def deployment_manifest(name: str, shape: Shape, replicas: int, image: str) -> dict[str, Any]:
    labels = {"app": name, LABEL: shape.name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": labels}, "spec": pod_spec(image)},
        },
    }


def pod_manifest(name: str, app: str, shape: Shape, image: str) -> dict[str, Any]:
    """A plain pod of the same template as ``app``'s Deployment (for the ceiling)."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": app, LABEL: shape.name}},
        "spec": pod_spec(image),
    }


# --- projections of what the harness reads (decoded with msgspec, only these fields) -------


class OwnerReference(msgspec.Struct):
    uid: str = ""
    controller: bool = False


class ObjectMeta(msgspec.Struct, rename="camel"):
    name: str = ""
    namespace: str = ""
    uid: str = ""
    generation: int = 0
    creation_timestamp: str = ""
    deletion_timestamp: str | None = None
    labels: dict[str, str] = msgspec.field(default_factory=dict)
    owner_references: list[OwnerReference] = msgspec.field(default_factory=list)


class Container(msgspec.Struct):
    image: str = ""


class PodSpec(msgspec.Struct):
    containers: list[Container] = msgspec.field(default_factory=list)


class PodTemplate(msgspec.Struct):
    spec: PodSpec = msgspec.field(default_factory=PodSpec)


class WorkloadSpec(msgspec.Struct):
    replicas: int = 1
    template: PodTemplate = msgspec.field(default_factory=PodTemplate)


class DeploymentStatus(msgspec.Struct, rename="camel"):
    observed_generation: int = 0
    replicas: int = 0
    updated_replicas: int = 0
    ready_replicas: int = 0
    available_replicas: int = 0


class ReplicaSetView(msgspec.Struct):
    metadata: ObjectMeta = msgspec.field(default_factory=ObjectMeta)
    spec: WorkloadSpec = msgspec.field(default_factory=WorkloadSpec)

    @property
    def image(self) -> str:
        containers = self.spec.template.spec.containers
        return containers[0].image if containers else ""


class DeploymentView(ReplicaSetView):
    status: DeploymentStatus = msgspec.field(default_factory=DeploymentStatus)


class Condition(msgspec.Struct):
    type: str = ""
    status: str = ""


class PodStatus(msgspec.Struct):
    phase: str = ""
    conditions: list[Condition] = msgspec.field(default_factory=list)


class PodView(msgspec.Struct):
    metadata: ObjectMeta = msgspec.field(default_factory=ObjectMeta)
    spec: PodSpec = msgspec.field(default_factory=PodSpec)
    status: PodStatus = msgspec.field(default_factory=PodStatus)

    @property
    def image(self) -> str:
        return self.spec.containers[0].image if self.spec.containers else ""

    @property
    def ready(self) -> bool:
        return (
            self.status.phase == "Running"
            and self.metadata.deletion_timestamp is None
            and any(c.type == "Ready" and c.status == "True" for c in self.status.conditions)
        )


# --- convergence ------------------------------------------------------------------------


def deployments_not_converged(
    deployments: list[DeploymentView], expected: set[tuple[str, str]], *, replicas: int, image: str
) -> list[str]:
    """What is not yet done, one line per object: empty once every expected Deployment has
    rolled out ``image`` completely (as ``kubectl rollout status`` judges it: the controller
    saw the latest generation; all replicas updated, available, and no old ones left)."""
    seen = {(d.metadata.namespace, d.metadata.name): d for d in deployments}
    stuck = []
    for key in sorted(expected):
        found = seen.get(key)
        if found is None:
            stuck.append(f"deployment {key[0]}/{key[1]}: missing")
            continue
        status = found.status
        if (
            found.image != image
            or status.observed_generation < found.metadata.generation
            or status.updated_replicas != replicas
            or status.available_replicas != replicas
            or status.replicas != replicas
        ):
            stuck.append(
                f"deployment {key[0]}/{key[1]}: generation {found.metadata.generation} "
                f"observed {status.observed_generation}, replicas {status.replicas} updated "
                f"{status.updated_replicas} available {status.available_replicas} of {replicas}"
            )
    return stuck


def pods_not_ready(pods: list[PodView], expected: set[tuple[str, str]], *, image: str) -> list[str]:
    """Empty once every expected pod runs ``image`` and is Ready."""
    seen = {(p.metadata.namespace, p.metadata.name): p for p in pods}
    stuck = []
    for key in sorted(expected):
        found = seen.get(key)
        if found is None:
            stuck.append(f"pod {key[0]}/{key[1]}: missing")
        elif not found.ready or found.image != image:
            stuck.append(f"pod {key[0]}/{key[1]}: phase {found.status.phase or 'Pending'}")
    return stuck


# --- event -> reconcile latency from object timestamps (whole seconds) --------------------


def seconds_of(timestamp: str) -> float:
    return datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp()


def create_latencies(
    deployments: list[DeploymentView], replicasets: list[ReplicaSetView], pods: list[PodView]
) -> list[float]:
    """Deployment created -> its first ReplicaSet created, and ReplicaSet created -> its first
    pod created: the two controllers' reactions, at the one-second resolution of
    ``creationTimestamp``."""
    latencies: list[float] = []
    created = {d.metadata.uid: seconds_of(d.metadata.creation_timestamp) for d in deployments}
    firsts: dict[str, float] = {}
    for replicaset in replicasets:
        for owner in replicaset.metadata.owner_references:
            if owner.controller and owner.uid in created:
                at = seconds_of(replicaset.metadata.creation_timestamp)
                firsts[owner.uid] = min(firsts.get(owner.uid, at), at)
    latencies.extend(max(0.0, firsts[uid] - created[uid]) for uid in firsts)
    rs_created = {r.metadata.uid: seconds_of(r.metadata.creation_timestamp) for r in replicasets}
    first_pods: dict[str, float] = {}
    for pod in pods:
        for owner in pod.metadata.owner_references:
            if owner.controller and owner.uid in rs_created:
                at = seconds_of(pod.metadata.creation_timestamp)
                first_pods[owner.uid] = min(first_pods.get(owner.uid, at), at)
    latencies.extend(max(0.0, first_pods[uid] - rs_created[uid]) for uid in first_pods)
    return latencies


def update_latencies(
    patched_at: dict[str, float], replicasets: list[ReplicaSetView], *, image: str
) -> list[float]:
    """Template changed (the harness's patch, by Deployment uid, wall-clock seconds) -> the
    new ReplicaSet created; whole seconds, as ``creationTimestamp`` has no finer resolution."""
    latencies: list[float] = []
    for replicaset in replicasets:
        if replicaset.image != image:
            continue
        for owner in replicaset.metadata.owner_references:
            if owner.controller and owner.uid in patched_at:
                created = seconds_of(replicaset.metadata.creation_timestamp)
                latencies.append(max(0.0, created - math.floor(patched_at[owner.uid])))
    return latencies


def first_child_latencies(owners: list[Any], children: list[Any]) -> list[float]:
    """Each owner created -> its first controlled child created (whole seconds): ``owners``
    and ``children`` are views with ``metadata`` (a Job and its pods, a StatefulSet and its)."""
    created = {o.metadata.uid: seconds_of(o.metadata.creation_timestamp) for o in owners}
    firsts: dict[str, float] = {}
    for child in children:
        for owner in child.metadata.owner_references:
            if owner.controller and owner.uid in created:
                at = seconds_of(child.metadata.creation_timestamp)
                firsts[owner.uid] = min(firsts.get(owner.uid, at), at)
    return [max(0.0, firsts[uid] - created[uid]) for uid in firsts]

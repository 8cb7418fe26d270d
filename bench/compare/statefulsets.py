"""``kubus bench --workload statefulsets``: N StatefulSets x R replicas, created (all pods
Ready), rolled to a new image (until ``updateRevision == currentRevision`` and every replica
updated), then deleted (the garbage collector takes the pods and ControllerRevisions).

The sets keep the defaults a user gets: ``OrderedReady`` (each pod waits for the one before
it to be Ready) and ``RollingUpdate`` (one pod at a time, highest ordinal first), so a set's
phases are sequential; the sets run side by side. The manifests and the convergence check
are pure; :class:`StatefulSetDriver` makes the calls.
"""

from __future__ import annotations

import math
from typing import Any

import msgspec

from bench.compare.driver import ControllerDriver, PhaseRun, Tick
from bench.compare.workload import (
    IMAGE_NEW,
    IMAGE_OLD,
    LABEL,
    ObjectMeta,
    PodView,
    Shape,
    WorkloadSpec,
    first_child_latencies,
    pod_spec,
    seconds_of,
)

__all__ = [
    "RevisionView",
    "StatefulSetDriver",
    "StatefulSetView",
    "revision_latencies",
    "statefulset_manifest",
    "statefulsets_not_converged",
]


def statefulset_manifest(name: str, shape: Shape, replicas: int, image: str) -> dict[str, Any]:
    labels = {"app": name, LABEL: shape.name}
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "replicas": replicas,
            # No Service is made: nothing resolves the pods' names in the benchmark.
            "serviceName": name,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": labels}, "spec": pod_spec(image)},
        },
    }


class StatefulSetStatus(msgspec.Struct, rename="camel"):
    observed_generation: int = 0
    replicas: int = 0
    ready_replicas: int = 0
    updated_replicas: int = 0
    current_revision: str = ""
    update_revision: str = ""


class StatefulSetView(msgspec.Struct):
    metadata: ObjectMeta = msgspec.field(default_factory=ObjectMeta)
    spec: WorkloadSpec = msgspec.field(default_factory=WorkloadSpec)
    status: StatefulSetStatus = msgspec.field(default_factory=StatefulSetStatus)

    @property
    def image(self) -> str:
        containers = self.spec.template.spec.containers
        return containers[0].image if containers else ""


class RevisionView(msgspec.Struct):
    metadata: ObjectMeta = msgspec.field(default_factory=ObjectMeta)
    revision: int = 0


def statefulsets_not_converged(
    sets: list[StatefulSetView], expected: set[tuple[str, str]], *, replicas: int, image: str
) -> list[str]:
    """Empty once every expected StatefulSet runs ``image`` on all ``replicas``, Ready, with
    its rollout done (``kubectl rollout status``'s judgement: the latest generation observed,
    every replica updated, ``updateRevision == currentRevision``)."""
    seen = {(s.metadata.namespace, s.metadata.name): s for s in sets}
    stuck = []
    for key in sorted(expected):
        found = seen.get(key)
        if found is None:
            stuck.append(f"statefulset {key[0]}/{key[1]}: missing")
            continue
        status = found.status
        if (
            found.image != image
            or status.observed_generation < found.metadata.generation
            or status.replicas != replicas
            or status.ready_replicas != replicas
            or status.updated_replicas != replicas
            or not status.update_revision
            or status.current_revision != status.update_revision
        ):
            stuck.append(
                f"statefulset {key[0]}/{key[1]}: generation {found.metadata.generation} "
                f"observed {status.observed_generation}, replicas {status.replicas} ready "
                f"{status.ready_replicas} updated {status.updated_replicas} of {replicas}, "
                f"revision {status.current_revision or '-'} -> {status.update_revision or '-'}"
            )
    return stuck


def revision_latencies(patched_at: dict[str, float], revisions: list[RevisionView]) -> list[float]:
    """Template changed (by StatefulSet uid, wall-clock seconds) -> the set's newest
    ControllerRevision created; whole seconds."""
    newest: dict[str, RevisionView] = {}
    for revision in revisions:
        for owner in revision.metadata.owner_references:
            if owner.controller and owner.uid in patched_at:
                best = newest.get(owner.uid)
                if best is None or revision.revision > best.revision:
                    newest[owner.uid] = revision
    return [
        max(0.0, seconds_of(r.metadata.creation_timestamp) - math.floor(patched_at[uid]))
        for uid, r in newest.items()
    ]


class StatefulSetDriver(ControllerDriver):
    """StatefulSets for a controller contender to reconcile."""

    resource = "statefulsets"
    leftover_kinds = (
        ("statefulsets", StatefulSetView),
        ("controllerrevisions", RevisionView),
        ("pods", PodView),
    )

    async def create(self, shape: Shape, *, deadline: float, tick: Tick) -> PhaseRun:
        started = await self._create_all(shape, statefulset_manifest)
        run = await self._converge(
            lambda: self._stuck(shape, IMAGE_OLD), started=started, deadline=deadline, tick=tick
        )
        if run.ok:
            run.timestamp_latencies = first_child_latencies(
                await self._cluster.list("statefulsets", StatefulSetView, shape),
                await self._cluster.list("pods", PodView, shape),
            )
        return run

    async def update(self, shape: Shape, *, deadline: float, tick: Tick) -> PhaseRun:
        started, patched_at = await self._roll_all(shape)
        run = await self._converge(
            lambda: self._stuck(shape, IMAGE_NEW), started=started, deadline=deadline, tick=tick
        )
        if run.ok:
            run.timestamp_latencies = revision_latencies(
                patched_at, await self._cluster.list("controllerrevisions", RevisionView, shape)
            )
        return run

    async def _stuck(self, shape: Shape, image: str) -> list[str]:
        return statefulsets_not_converged(
            await self._cluster.list("statefulsets", StatefulSetView, shape),
            set(self._workload.names(shape)),
            replicas=self._workload.replicas,
            image=image,
        )

"""``kubus bench --workload jobs``: N Jobs x C completions, created and run to Complete by the
contender's job controller (kwok's ``kubus-job-pod-succeeded`` stage runs each pod to
Succeeded), then deleted (the garbage collector takes the pods). No rollout phase.

The manifests and the convergence check are pure; :class:`JobDriver` makes the calls.
"""

from __future__ import annotations

from typing import Any

import msgspec

from bench.compare.driver import ControllerDriver, PhaseRun, Tick
from bench.compare.workload import (
    LABEL,
    Condition,
    ObjectMeta,
    PodView,
    Shape,
    first_child_latencies,
    pod_spec,
)

__all__ = ["JobDriver", "JobView", "job_manifest", "jobs_not_complete"]


def job_manifest(name: str, shape: Shape, completions: int, image: str) -> dict[str, Any]:
    """A Job of ``completions`` pods, all at once (parallelism = completions), never
    restarted; its pods carry the shape's label (the selector is the controller-made one)."""
    labels = {"app": name, LABEL: shape.name}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "completions": completions,
            "parallelism": completions,
            "template": {
                "metadata": {"labels": labels},
                "spec": {**pod_spec(image), "restartPolicy": "Never"},
            },
        },
    }


class JobSpec(msgspec.Struct):
    completions: int | None = None


class JobStatus(msgspec.Struct):
    active: int = 0
    succeeded: int = 0
    failed: int = 0
    conditions: list[Condition] = msgspec.field(default_factory=list)


class JobView(msgspec.Struct):
    metadata: ObjectMeta = msgspec.field(default_factory=ObjectMeta)
    spec: JobSpec = msgspec.field(default_factory=JobSpec)
    status: JobStatus = msgspec.field(default_factory=JobStatus)

    @property
    def complete(self) -> bool:
        return any(c.type == "Complete" and c.status == "True" for c in self.status.conditions)


def jobs_not_complete(
    jobs: list[JobView], expected: set[tuple[str, str]], *, completions: int
) -> list[str]:
    """Empty once every expected Job is Complete with ``succeeded == completions``."""
    seen = {(j.metadata.namespace, j.metadata.name): j for j in jobs}
    stuck = []
    for key in sorted(expected):
        found = seen.get(key)
        if found is None:
            stuck.append(f"job {key[0]}/{key[1]}: missing")
        elif not found.complete or found.status.succeeded != completions:
            status = found.status
            stuck.append(
                f"job {key[0]}/{key[1]}: succeeded {status.succeeded} of {completions}, "
                f"active {status.active}, failed {status.failed}"
                + ("" if found.complete else ", not Complete")
            )
    return stuck


class JobDriver(ControllerDriver):
    """Jobs for a controller contender to run to completion."""

    resource = "jobs"
    leftover_kinds = (("jobs", JobView), ("pods", PodView))

    async def create(self, shape: Shape, *, deadline: float, tick: Tick) -> PhaseRun:
        started = await self._create_all(shape, job_manifest)
        run = await self._converge(
            lambda: self._incomplete(shape), started=started, deadline=deadline, tick=tick
        )
        if run.ok:
            run.timestamp_latencies = first_child_latencies(
                await self._cluster.list("jobs", JobView, shape),
                await self._cluster.list("pods", PodView, shape),
            )
        return run

    async def _incomplete(self, shape: Shape) -> list[str]:
        return jobs_not_complete(
            await self._cluster.list("jobs", JobView, shape),
            set(self._workload.names(shape)),
            completions=self._workload.replicas,
        )

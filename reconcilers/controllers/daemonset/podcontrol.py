"""Pod creates and deletes (upstream's syncNodes and controller.RealPodControl), the
expectations that hold the next sync back until they are seen, and the failed-pod backoff.

Creates go in slow-start batches (1, 2, 4, ...: a quota that refuses the first pod stops the
rest), at most 250 creates and 250 deletes a sync (BurstReplicas). Each create is the template
with the daemon tolerations, the revision's labels, and a required node affinity on the
node's name; the scheduler binds it. Events as upstream's: SuccessfulCreate, FailedCreate,
SuccessfulDelete, FailedDelete.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from typing import Any, Final

from kubus.kube import KubeApiError, NotFoundError
from reconcilers.controller import Context, Request
from reconcilers.controllers.daemonset.predicates import (
    add_daemon_tolerations,
    replace_node_name_affinity,
)
from reconcilers.controllers.daemonset.update import (
    HASH_LABEL,
    TEMPLATE_GENERATION_LABEL,
    template_generation,
)
from reconcilers.kinds import DAEMONSETS, PODS, Object, clone
from reconcilers.refmanager import controller_ref

__all__ = [
    "BURST_REPLICAS",
    "COMPONENT",
    "FailedPodBackoff",
    "PodControl",
    "SyncExpectations",
    "pod_template",
]

BURST_REPLICAS: Final = 250
COMPONENT: Final = "daemonset-controller"
EXPECTATIONS_TIMEOUT: Final = 5 * 60.0
BACKOFF_GC_INTERVAL: Final = 60.0


class SyncExpectations:
    """ControllerExpectations with both counts set at once (SetExpectations); deletions are
    counted per pod key, so a pod's deletionTimestamp and its removal count once."""

    def __init__(self, timeout: float = EXPECTATIONS_TIMEOUT) -> None:
        self._timeout = timeout
        self._records: dict[str, tuple[list[int], set[str], float]] = {}

    def expect(self, key: str, creations: int, deletions: Iterable[str]) -> None:
        self._records[key] = ([creations], set(deletions), time.monotonic())

    def creation_observed(self, key: str, count: int = 1) -> None:
        record = self._records.get(key)
        if record is not None:
            record[0][0] -= count

    def deletion_observed(self, key: str, pod_key: str) -> None:
        record = self._records.get(key)
        if record is not None:
            record[1].discard(pod_key)

    def satisfied(self, key: str) -> bool:
        record = self._records.get(key)
        if record is None:
            return True
        adds, deletes, since = record
        return (adds[0] <= 0 and not deletes) or time.monotonic() - since > self._timeout

    def forget(self, key: str) -> None:
        self._records.pop(key, None)

    def forget_where(self, matches: Callable[[str], bool]) -> None:
        for key in [key for key in self._records if matches(key)]:
            del self._records[key]


class FailedPodBackoff:
    """flowcontrol.Backoff as kcm gives the controller (1 s doubling to 15 min, no jitter): how
    long a node's failed daemon pod waits before it is deleted again."""

    def __init__(self, initial: float = 1.0, maximum: float = 900.0) -> None:
        self._initial, self._max = initial, maximum
        self._entries: dict[str, tuple[float, float]] = {}  # id -> (delay, last update)
        self._last_gc = time.monotonic()

    def _expired(self, now: float, last: float) -> bool:
        return now - last > 2 * self._max

    def in_backoff(self, key: str, now: float) -> bool:
        entry = self._entries.get(key)
        if entry is None or self._expired(now, entry[1]):
            return False
        return now - entry[1] < entry[0]

    def delay(self, key: str) -> float:
        entry = self._entries.get(key)
        return entry[0] if entry else 0.0

    def next(self, key: str, now: float) -> None:
        entry = self._entries.get(key)
        if entry is None or self._expired(now, entry[1]):
            self._entries[key] = (self._initial, now)
        else:
            self._entries[key] = (min(entry[0] * 2, self._max), now)

    def gc(self, now: float) -> None:
        if now - self._last_gc < BACKOFF_GC_INTERVAL:
            return
        self._last_gc = now
        for key in [k for k, (_, last) in self._entries.items() if self._expired(now, last)]:
            del self._entries[key]


def pod_template(ds: Object, hash_: str) -> Object:
    """CreatePodTemplate: the template with the daemon tolerations and the revision's
    labels (the hash, and the deprecated template generation where it is set)."""
    template = clone((ds.get("spec") or {}).get("template") or {})
    add_daemon_tolerations(template.setdefault("spec", {}))
    labels = (template.setdefault("metadata", {})).get("labels") or {}
    generation = template_generation(ds)
    if generation is not None:
        labels[TEMPLATE_GENERATION_LABEL] = str(generation)
    if hash_:
        labels[HASH_LABEL] = hash_
    template["metadata"]["labels"] = labels
    return template


class PodControl:
    """The pod writes of one controller, and its expectations."""

    def __init__(self, context: Context, expectations: SyncExpectations) -> None:
        self._ctx = context
        self._expectations = expectations

    def event(self, ds: Object, kind: str, reason: str, message: str) -> None:
        self._ctx.events.record(ds, kind, reason, message, component=COMPONENT)

    async def sync_nodes(
        self, ds: Object, delete: list[str], create: list[str], hash_: str
    ) -> None:
        """syncNodes: expectations first, then creates in slow-start batches and deletes."""
        key = Request.of(ds).key
        namespace = ds["metadata"]["namespace"]
        creates = create[:BURST_REPLICAS]
        deletes = delete[:BURST_REPLICAS]
        self._expectations.expect(key, len(creates), [f"{namespace}/{n}" for n in deletes])
        template = pod_template(ds, hash_)
        errors: list[Exception] = []
        position, batch = 0, min(len(creates), 1)
        while batch > 0:
            results = await asyncio.gather(
                *(
                    self._create(ds, template, node)
                    for node in creates[position : position + batch]
                ),
                return_exceptions=True,
            )
            failed = [r for r in results if isinstance(r, BaseException)]
            for failure in failed:
                self._expectations.creation_observed(key)
                errors.append(failure if isinstance(failure, Exception) else RuntimeError(failure))
            position += batch
            skipped = len(creates) - position
            if failed and skipped > 0:
                self._expectations.creation_observed(key, skipped)
                break
            batch = min(2 * batch, skipped)
        results = await asyncio.gather(
            *(self._delete(ds, name) for name in deletes), return_exceptions=True
        )
        for name, result in zip(deletes, results, strict=True):
            if isinstance(result, BaseException):
                self._expectations.deletion_observed(key, f"{namespace}/{name}")
                if not isinstance(result, NotFoundError):
                    errors.append(result if isinstance(result, Exception) else RuntimeError(result))
        if errors:
            raise errors[0]

    async def _create(self, ds: Object, template: Object, node_name: str) -> None:
        template_meta = template.get("metadata") or {}
        metadata: dict[str, Any] = {
            "generateName": f"{ds['metadata']['name']}-",
            "labels": dict(template_meta.get("labels") or {}),
            "ownerReferences": [controller_ref(ds, self._ctx.apis[DAEMONSETS])],
        }
        for copied in ("annotations", "finalizers"):
            if template_meta.get(copied):
                metadata[copied] = clone(template_meta[copied])
        spec = clone(template.get("spec") or {})
        spec["affinity"] = replace_node_name_affinity(spec.get("affinity"), node_name)
        body = {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}
        try:
            pod = await self._ctx.kube.create(
                self._ctx.apis[PODS], ds["metadata"]["namespace"], body
            )
        except KubeApiError as error:
            if "NamespaceTerminating" in error.causes:
                # The namespace is going: so is this DaemonSet, and every create would fail.
                self._expectations.creation_observed(Request.of(ds).key)
                return
            self.event(ds, "Warning", "FailedCreate", f"Error creating: {_text(error)}")
            raise
        self.event(ds, "Normal", "SuccessfulCreate", f"Created pod: {pod['metadata']['name']}")

    async def _delete(self, ds: Object, name: str) -> None:
        try:
            await self._ctx.kube.delete(self._ctx.apis[PODS], ds["metadata"]["namespace"], name)
        except NotFoundError:
            raise
        except KubeApiError as error:
            self.event(ds, "Warning", "FailedDelete", f"Error deleting: {_text(error)}")
            raise KubeApiError(
                error.status, error.reason, f"unable to delete pods: {_text(error)}"
            ) from error
        self.event(ds, "Normal", "SuccessfulDelete", f"Deleted pod: {name}")


def _text(error: KubeApiError) -> str:
    return error.message or str(error)

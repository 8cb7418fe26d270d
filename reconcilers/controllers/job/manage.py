"""Keeping a Job's pods at the number it wants (upstream's manageJob, deleteJobPods,
deleteActivePods and the pod control they use).

A Job wants ``parallelism`` pods active, never more than the completions still missing;
without ``completions``, none are added once one pod succeeded. Surplus pods go first (for
Indexed Jobs, pods with a duplicated, missing or out-of-range index), in the active-pods
order. New pods are created in slow-start batches (1, 2, 4, ..., at most 500 a sync), each
with the tracking finalizer and a controller ownerReference, Indexed ones with their index
(annotation, label, ``JOB_COMPLETION_INDEX``, hostname ``<job>-<index>``). Replacing failed
pods waits out the pod failure backoff (:mod:`.backoff`); a suspended Job loses all its active
pods.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
from collections.abc import Awaitable, Callable
from typing import Final

from kubus.kube import KubeApiError, NotFoundError
from reconcilers.controller import Context
from reconcilers.controllers.job.backoff import (
    DEFAULT_POD_FAILURE_BACKOFF,
    MAX_POD_FAILURE_BACKOFF,
    pod_finished_time,
    remaining_time_for_failures,
)
from reconcilers.controllers.job.indexed import (
    add_completion_index_env,
    add_index_failure_annotations,
    duplicated_index_pods_for_removal,
    first_pending_indexes,
    index_absolute_failure_count,
    pod_generate_name_with_index,
)
from reconcilers.controllers.job.state import SyncJob
from reconcilers.controllers.job.tracking import (
    FinalizerExpectations,
    remove_tracking_finalizer_patch,
)
from reconcilers.controllers.job.util import (
    COMPLETION_INDEX,
    TRACKING_FINALIZER,
    active_pods_order,
    completions_of,
    has_backoff_limit_per_index,
    is_indexed,
    is_suspended,
    only_replace_failed_pods,
)
from reconcilers.controllers.podutil import is_pod_ready, is_pod_terminating
from reconcilers.expectations import Expectations
from reconcilers.kinds import JOBS, PODS, Object, clone
from reconcilers.refmanager import controller_ref

__all__ = ["MAX_POD_CREATE_DELETE_PER_SYNC", "PodsMixin", "active_pods_for_removal"]

log = logging.getLogger(__name__)

MAX_POD_CREATE_DELETE_PER_SYNC: Final = 500
SYNC_JOB_BATCH_PERIOD: Final = 1.0  # the shortest delayed requeue upstream makes
COMPONENT: Final = "job-controller"


def pod_key(pod: Object) -> str:
    return f"{pod['metadata'].get('namespace')}/{pod['metadata'].get('name')}"


def active_pods_for_removal(job: Object, pods: list[Object], at_least: int) -> list[Object]:
    remove: list[Object] = []
    left = pods
    if is_indexed(job):
        remove, left = duplicated_index_pods_for_removal(pods, completions_of(job) or 0)
    if len(remove) < at_least:
        remove += active_pods_order(left)[: at_least - len(remove)]
    return remove


def _namespace_terminating(error: KubeApiError) -> bool:
    return "NamespaceTerminating" in error.causes


def _text(error: Exception) -> str:
    return error.message if isinstance(error, KubeApiError) and error.message else str(error)


class PodsMixin:
    _ctx: Context
    _expectations: Expectations
    _finalizer_expectations: FinalizerExpectations
    _now: Callable[[], datetime.datetime]

    async def _manage_job(self, sj: SyncJob) -> tuple[int, Exception | None]:
        """The active count after this sync's creates or deletes, and their first error."""
        job = sj.job
        spec = job.get("spec") or {}
        active = len(sj.active_pods)
        parallelism = int(spec.get("parallelism", 1))
        if is_suspended(job):
            doomed = active_pods_for_removal(job, sj.active_pods, active)
            return await self._remove_pods(sj, doomed, active)
        completions = completions_of(job)
        if completions is None:
            want = active if sj.succeeded > 0 else parallelism
        else:
            want = max(0, min(completions - sj.succeeded, parallelism))
        doomed = active_pods_for_removal(job, sj.active_pods, max(active - want, 0))
        if doomed:
            # Deleting takes precedence: no creates in the same sync.
            return await self._remove_pods(sj, doomed[:MAX_POD_CREATE_DELETE_PER_SYNC], active)
        terminating = sj.terminating if only_replace_failed_pods(job) else 0
        diff = want - terminating - active
        if diff <= 0:
            return active, None
        now = self._now()
        if not has_backoff_limit_per_index(job):
            remaining = sj.new_backoff_record.remaining_time(now)
            if remaining > 0:
                sj.requeue_in(max(remaining, SYNC_JOB_BATCH_PERIOD))
                return active, None
        diff = min(diff, MAX_POD_CREATE_DELETE_PER_SYNC)
        indexes: list[int] = []
        if is_indexed(job):
            indexes = first_pending_indexes(
                active=sj.active_pods,
                terminating=(
                    [p for p in sj.pods if is_pod_terminating(p)]
                    if only_replace_failed_pods(job)
                    else None
                ),
                succeeded=sj.succeeded_indexes,
                failed=sj.failed_indexes,
                count=diff,
                completions=completions or 0,
            )
            if has_backoff_limit_per_index(job):
                indexes, remaining = self._indexes_out_of_backoff(sj, indexes, now)
                if remaining > 0:
                    sj.requeue_in(max(remaining, SYNC_JOB_BATCH_PERIOD))
                    return active, None
            diff = len(indexes)
        if diff == 0:
            return active, None
        return await self._create_pods(sj, diff, indexes, active)

    def _indexes_out_of_backoff(
        self, sj: SyncJob, indexes: list[int], now: datetime.datetime
    ) -> tuple[list[int], float]:
        ready: list[int] = []
        soonest: float | None = None
        for index in indexes:
            last_failed = sj.delayed_deletion_per_index.get(index)
            remaining = 0.0
            if last_failed is not None:
                remaining = remaining_time_for_failures(
                    now,
                    DEFAULT_POD_FAILURE_BACKOFF,
                    MAX_POD_FAILURE_BACKOFF,
                    index_absolute_failure_count(last_failed) + 1,
                    pod_finished_time(last_failed),
                )
            if remaining == 0:
                ready.append(index)
            elif soonest is None or remaining < soonest:
                soonest = remaining
        if ready:
            return ready, 0.0
        return ready, soonest or 0.0

    async def _remove_pods(
        self, sj: SyncJob, doomed: list[Object], active: int
    ) -> tuple[int, Exception | None]:
        self._expectations.expect_deletions(sj.key, [pod_key(p) for p in doomed])
        ready, removed, error = await self._delete_job_pods(sj.job, sj.key, doomed)
        sj.terminating += removed
        sj.ready -= ready
        return active - removed, error

    async def _delete_job_pods(
        self, job: Object, key: str, pods: list[Object]
    ) -> tuple[int, int, Exception | None]:
        """Removes each pod's finalizer, then deletes it: (ready ones deleted, deleted, error)."""

        async def one(pod: Object) -> tuple[bool, Exception | None]:
            meta = pod["metadata"]
            try:
                patch = remove_tracking_finalizer_patch(pod)
                if patch is not None:
                    await self._ctx.kube.patch(
                        self._ctx.apis[PODS],
                        meta["namespace"],
                        meta["name"],
                        patch,
                        patch_type="strategic",
                    )
                await self._delete_pod(job, pod)
            except Exception as error:
                self._expectations.deletion_observed(key, pod_key(pod))
                if isinstance(error, NotFoundError):
                    return is_pod_ready(pod), None
                return False, error
            return is_pod_ready(pod), None

        return await _count_deletes([one(pod) for pod in pods])

    async def _delete_active_pods(
        self, job: Object, pods: list[Object]
    ) -> tuple[int, int, Exception | None]:
        """Deletes pods, keeping their finalizers (the finished Job counts them after)."""

        async def one(pod: Object) -> tuple[bool, Exception | None]:
            try:
                await self._delete_pod(job, pod)
            except NotFoundError:
                pass
            except Exception as error:
                return False, error
            return is_pod_ready(pod), None

        return await _count_deletes([one(pod) for pod in pods])

    async def _delete_pod(self, job: Object, pod: Object) -> None:
        meta = pod["metadata"]
        try:
            await self._ctx.kube.delete(self._ctx.apis[PODS], meta["namespace"], meta["name"])
        except NotFoundError:
            raise
        except KubeApiError as error:
            self._event(job, "Warning", "FailedDelete", f"Error deleting: {_text(error)}")
            raise
        self._event(job, "Normal", "SuccessfulDelete", f"Deleted pod: {meta['name']}")

    async def _create_pods(
        self, sj: SyncJob, diff: int, indexes: list[int], active: int
    ) -> tuple[int, Exception | None]:
        job = sj.job
        key = sj.key
        self._expectations.expect_creations(key, diff)
        template = clone((job.get("spec") or {}).get("template") or {})
        if is_indexed(job):
            add_completion_index_env(template.setdefault("spec", {}))
        template_meta = template.setdefault("metadata", {}) or {}
        template["metadata"] = template_meta
        finalizers = list(template_meta.get("finalizers") or [])
        if TRACKING_FINALIZER not in finalizers:
            finalizers.append(TRACKING_FINALIZER)
        template_meta["finalizers"] = finalizers
        pending = list(indexes)
        active += diff
        first_error: Exception | None = None
        batch = min(diff, 1)
        while diff > 0:
            batch_indexes = [pending.pop(0) if pending else None for _ in range(batch)]
            results = await asyncio.gather(
                *(self._create_one(sj, template, index) for index in batch_indexes),
                return_exceptions=True,
            )
            failures = 0
            for result in results:
                if isinstance(result, BaseException):
                    failures += 1
                    self._expectations.creation_observed(key)
                    active -= 1
                    if first_error is None:
                        first_error = (
                            result if isinstance(result, Exception) else RuntimeError(str(result))
                        )
            skipped = diff - batch
            if failures and skipped > 0:
                log.debug("slow-start failure for job %s: skipping %d pods", key, skipped)
                active -= skipped
                for _ in range(skipped):
                    self._expectations.creation_observed(key)
                break
            diff -= batch
            batch = min(2 * batch, diff)
        return active, first_error

    async def _create_one(self, sj: SyncJob, template: Object, index: int | None) -> None:
        job = sj.job
        name = job["metadata"]["name"]
        source = template if index is None else clone(template)
        meta = source.get("metadata") or {}
        labels = dict(meta.get("labels") or {})
        annotations = dict(meta.get("annotations") or {})
        spec = clone(source.get("spec") or {})
        generate_name = f"{name}-"
        if index is not None:
            annotations[COMPLETION_INDEX] = str(index)
            labels[COMPLETION_INDEX] = str(index)
            spec["hostname"] = f"{name}-{index}"
            generate_name = pod_generate_name_with_index(name, index)
            if has_backoff_limit_per_index(job):
                add_index_failure_annotations(
                    annotations, job, sj.delayed_deletion_per_index.get(index)
                )
        if not labels:
            raise KubeApiError(0, "NoLabels", "unable to create pods, no labels")
        metadata: Object = {
            "generateName": generate_name,
            "labels": labels,
            "finalizers": list(meta.get("finalizers") or []),
            "ownerReferences": [controller_ref(job, self._ctx.apis[JOBS])],
        }
        if annotations:
            metadata["annotations"] = annotations
        body = {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}
        namespace = job["metadata"]["namespace"]
        try:
            pod = await self._ctx.kube.create(self._ctx.apis[PODS], namespace, body)
        except KubeApiError as error:
            if _namespace_terminating(error):
                return  # every create would fail the same way; the namespace goes anyway
            self._event(job, "Warning", "FailedCreate", f"Error creating: {_text(error)}")
            raise
        self._event(job, "Normal", "SuccessfulCreate", f"Created pod: {pod['metadata']['name']}")

    def _event(self, job: Object, kind: str, reason: str, message: str) -> None:
        self._ctx.events.record(job, kind, reason, message, component=COMPONENT)


async def _count_deletes(
    calls: list[Awaitable[tuple[bool, Exception | None]]],
) -> tuple[int, int, Exception | None]:
    results = await asyncio.gather(*calls)
    ready = sum(1 for was_ready, _ in results if was_ready)
    errors = [error for _, error in results if error is not None]
    return ready, len(results) - len(errors), errors[0] if errors else None

"""Counting finished pods exactly once (upstream's trackJobStatusAndRemoveFinalizers and
tracking_utils.go).

Every pod the controller creates carries the ``batch.kubernetes.io/job-tracking`` finalizer,
so a finished pod stays until it is counted. Counting takes two writes:

1. the UIDs of newly finished pods go into ``status.uncountedTerminatedPods`` (the Job's own
   record of "counted, finalizer not yet removed"), with any interim ``FailureTarget`` or
   ``SuccessCriteriaMet`` condition;
2. their finalizers are removed; the UIDs whose pods lost the finalizer (or are gone) move
   from the uncounted lists to ``status.succeeded`` / ``status.failed`` (Indexed Jobs count
   ``completedIndexes`` instead).

A crash between the two, or a sync by another process after a failover, finds the UIDs in the
status and finishes the job, so no pod is counted twice or lost. The finished condition
(``Complete``/``Failed``) is written only once no UID is uncounted and no pod terminates.
Finalizer removals this process has sent but its cache has not shown yet are remembered
(:class:`FinalizerExpectations`) so they are not counted again meanwhile.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
from collections.abc import Callable, Iterable
from typing import Final

from kubus.kube import NotFoundError
from reconcilers.controller import Context
from reconcilers.controllers.job.backoff import BackoffStore
from reconcilers.controllers.job.indexed import UNKNOWN_INDEX, completion_index
from reconcilers.controllers.job.metrics import (
    JOB_PODS_FINISHED,
    JOBS_FINISHED,
    POD_FAILURES_HANDLED_BY_FAILURE_POLICY,
)
from reconcilers.controllers.job.pod_failure_policy import match_pod_failure_policy
from reconcilers.controllers.job.state import SyncJob
from reconcilers.controllers.job.util import (
    TRACKING_FINALIZER,
    completions_of,
    ensure_condition,
    find_condition,
    has_backoff_limit_per_index,
    has_tracking_finalizer,
    is_indexed,
    is_pod_failed,
    new_condition,
)
from reconcilers.kinds import JOBS, PODS, Object

__all__ = [
    "MAX_UNCOUNTED_PODS",
    "FinalizerExpectations",
    "TrackingMixin",
    "clean_uncounted_pods_without_finalizers",
    "failed_for_failure_target",
    "is_success_criteria_met",
    "remove_tracking_finalizer_patch",
    "uncounted_of",
]

log = logging.getLogger(__name__)

MAX_UNCOUNTED_PODS: Final = 500
COMPONENT: Final = "job-controller"


class FinalizerExpectations:
    """Per Job key, the UIDs of pods whose finalizer removal was sent and not yet seen."""

    def __init__(self) -> None:
        self._uids: dict[str, set[str]] = {}

    def expect_removed(self, key: str, uids: Iterable[str]) -> None:
        self._uids.setdefault(key, set()).update(uids)

    def observed(self, key: str, uid: str) -> None:
        uids = self._uids.get(key)
        if uids is not None:
            uids.discard(uid)

    def expected(self, key: str) -> set[str]:
        return set(self._uids.get(key, ()))

    def delete(self, key: str) -> None:
        self._uids.pop(key, None)

    def forget_where(self, matches: Callable[[str], bool]) -> None:
        for key in [key for key in self._uids if matches(key)]:
            del self._uids[key]


def remove_tracking_finalizer_patch(pod: Object) -> Object | None:
    if not has_tracking_finalizer(pod):
        return None
    return {"metadata": {"$deleteFromPrimitiveList/finalizers": [TRACKING_FINALIZER]}}


def uncounted_of(status: Object) -> Object:
    """``status.uncountedTerminatedPods``, made present with both lists."""
    uncounted = status.get("uncountedTerminatedPods")
    if not isinstance(uncounted, dict):
        uncounted = status["uncountedTerminatedPods"] = {}
    uncounted["succeeded"] = list(uncounted.get("succeeded") or [])
    uncounted["failed"] = list(uncounted.get("failed") or [])
    return uncounted


def clean_uncounted_pods_without_finalizers(status: Object, with_finalizer: set[str]) -> bool:
    """Moves the uncounted UIDs whose pods no longer hold the finalizer into the counters."""
    uncounted = uncounted_of(status)
    updated = False
    for field in ("succeeded", "failed"):
        kept = [uid for uid in uncounted[field] if uid in with_finalizer]
        if len(kept) != len(uncounted[field]):
            updated = True
            status[field] = int(status.get(field) or 0) + len(uncounted[field]) - len(kept)
            uncounted[field] = kept
    return updated


def _can_remove_finalizer(sj: SyncJob, pod: Object, considered_failed: bool) -> bool:
    if (
        sj.job["metadata"].get("deletionTimestamp")
        or sj.finished_condition is not None
        or pod.get("status", {}).get("phase") == "Succeeded"
    ):
        return True
    if not considered_failed:
        return False
    if has_backoff_limit_per_index(sj.job):
        index = completion_index(pod)
        delayed = sj.delayed_deletion_per_index.get(index) if index != UNKNOWN_INDEX else None
        if delayed is not None and delayed["metadata"].get("uid") == pod["metadata"].get("uid"):
            return False
    return True


def is_success_criteria_met(condition: Object | None) -> bool:
    return (
        condition is not None
        and condition.get("type") == "SuccessCriteriaMet"
        and condition.get("status") == "True"
    )


class TrackingMixin:
    """The tracking half of the Job controller (its state is the controller's)."""

    _ctx: Context
    _finalizer_expectations: FinalizerExpectations
    _backoff: BackoffStore
    _finished_uids: set[str]
    _written: dict[str, tuple[str, str]]
    _now: Callable[[], datetime.datetime]

    async def _track_status_and_remove_finalizers(self, sj: SyncJob, needs_flush: bool) -> None:
        job = sj.job
        status = job.setdefault("status", {})
        indexed = is_indexed(job)
        completions = completions_of(job) or 0
        if indexed:
            sj.pods.sort(key=completion_index)
        with_finalizer = {
            pod["metadata"]["uid"]
            for pod in sj.pods
            if has_tracking_finalizer(pod)
            and pod["metadata"]["uid"] not in sj.expected_removed_finalizers
        }
        old_counters = (int(status.get("succeeded") or 0), int(status.get("failed") or 0))
        if clean_uncounted_pods_without_finalizers(status, with_finalizer):
            needs_flush = True
        uncounted = uncounted_of(status)
        by_action: dict[str, int] = {}
        to_remove: list[Object] = []
        new_succeeded_indexes: list[int] = []
        reached_max = False
        for pod in sj.pods:
            uid = pod["metadata"]["uid"]
            if not has_tracking_finalizer(pod) or uid in sj.expected_removed_finalizers:
                continue  # counted by an earlier sync
            failed = is_pod_failed(pod, job)
            if not _can_remove_finalizer(sj, pod, failed):
                continue
            to_remove.append(pod)
            phase = pod.get("status", {}).get("phase")
            if phase == "Succeeded" and uid not in sj.uncounted_failed:
                if indexed:
                    ix = completion_index(pod)
                    if (
                        ix != UNKNOWN_INDEX
                        and ix < completions
                        and not sj.prev_succeeded_indexes.has(ix)
                    ):
                        new_succeeded_indexes.append(ix)
                        needs_flush = True
                elif uid not in sj.uncounted_succeeded:
                    needs_flush = True
                    uncounted["succeeded"].append(uid)
            elif failed or (
                sj.finished_condition is not None
                and not is_success_criteria_met(sj.finished_condition)
            ):
                # Once the Job is finishing, a pod that did not succeed counts as failed.
                ix = completion_index(pod)
                if uid not in sj.uncounted_failed and (
                    not indexed or (ix != UNKNOWN_INDEX and ix < completions)
                ):
                    policy = job.get("spec", {}).get("podFailurePolicy")
                    counts = True
                    if policy is not None:
                        _, counts, action = match_pod_failure_policy(policy, pod)
                        if action is not None:
                            by_action[action] = by_action.get(action, 0) + 1
                    if counts:
                        needs_flush = True
                        uncounted["failed"].append(uid)
            if (
                len(new_succeeded_indexes) + len(uncounted["succeeded"]) + len(uncounted["failed"])
                >= MAX_UNCOUNTED_PODS
            ):
                # Keeps the status small and this sync short; the writes requeue the Job.
                reached_max = True
                break
        if indexed:
            sj.succeeded_indexes = sj.succeeded_indexes.with_indexes(sorted(new_succeeded_indexes))
            text = str(sj.succeeded_indexes)
            if text != status.get("completedIndexes", ""):
                needs_flush = True
            status["succeeded"] = sj.succeeded_indexes.total()
            if text:
                status["completedIndexes"] = text
            else:
                status.pop("completedIndexes", None)
            failed_text = None if sj.failed_indexes is None else str(sj.failed_indexes)
            if status.get("failedIndexes") != failed_text:
                needs_flush = True
                if failed_text is None:
                    status.pop("failedIndexes", None)
                else:
                    status["failedIndexes"] = failed_text
        now = self._now()
        finished = sj.finished_condition
        if finished is not None and finished.get("type") == "FailureTarget":
            status.setdefault("conditions", []).append(finished)
            needs_flush = True
            sj.finished_condition = failed_for_failure_target(finished, now)
        elif is_success_criteria_met(finished):
            assert finished is not None
            met = find_condition(status.get("conditions"), "SuccessCriteriaMet")
            if met is None or met.get("status") != "True":
                status.setdefault("conditions", []).append(finished)
                needs_flush = True
            sj.finished_condition = new_condition(
                "Complete", "True", finished.get("reason", ""), finished.get("message", ""), now
            )
        try:
            needs_flush = await self._flush_uncounted_and_remove_finalizers(
                sj, to_remove, with_finalizer, needs_flush
            )
        finally:
            for action, count in by_action.items():
                POD_FAILURES_HANDLED_BY_FAILURE_POLICY.labels(action).inc(count)
            _record_pods_finished(sj.job, old_counters)
        job_finished = not reached_max and self._enact_job_finished(sj)
        if job_finished:
            needs_flush = True
        if needs_flush:
            before = _counters(sj.job)
            sj.job = await self._update_status(sj.job)
            _record_pods_finished(sj.job, before)
            if job_finished:
                assert sj.finished_condition is not None
                self._record_job_finished(sj.job, sj.finished_condition)
                self._finished_uids.add(sj.job["metadata"]["uid"])

    async def _flush_uncounted_and_remove_finalizers(
        self, sj: SyncJob, to_remove: list[Object], with_finalizer: set[str], needs_flush: bool
    ) -> bool:
        """Writes the uncounted UIDs, removes the finalizers, counts what was removed; returns
        whether the status still has changes to write."""
        if needs_flush:
            sj.job = await self._update_status(sj.job)
            self._backoff.update(sj.new_backoff_record)
            needs_flush = False
        removal_error: Exception | None = None
        if to_remove:
            removed, removal_error = await self._remove_tracking_finalizers(sj.key, to_remove)
            for pod, ok in zip(to_remove, removed, strict=True):
                if ok:
                    with_finalizer.discard(pod["metadata"]["uid"])
        status = sj.job.setdefault("status", {})
        if clean_uncounted_pods_without_finalizers(status, with_finalizer):
            needs_flush = True
        if removal_error is not None:
            if needs_flush:
                sj.job = await self._update_status(sj.job)
            raise removal_error
        return needs_flush

    async def _remove_tracking_finalizers(
        self, key: str, pods: list[Object]
    ) -> tuple[list[bool], Exception | None]:
        self._finalizer_expectations.expect_removed(key, [p["metadata"]["uid"] for p in pods])
        results = await asyncio.gather(
            *(self._patch_out_finalizer(key, pod) for pod in pods), return_exceptions=True
        )
        first: Exception | None = None
        done = []
        for result in results:
            if isinstance(result, BaseException):
                done.append(False)
                if first is None:
                    first = result if isinstance(result, Exception) else RuntimeError(str(result))
            else:
                done.append(True)
        return done, first

    async def _patch_out_finalizer(self, key: str, pod: Object) -> None:
        patch = remove_tracking_finalizer_patch(pod)
        if patch is None:
            return
        meta = pod["metadata"]
        try:
            await self._ctx.kube.patch(
                self._ctx.apis[PODS], meta["namespace"], meta["name"], patch, patch_type="strategic"
            )
        except NotFoundError:
            self._finalizer_expectations.observed(key, meta["uid"])
        except Exception:
            self._finalizer_expectations.observed(key, meta["uid"])
            log.warning("removing tracking finalizer from pod %s/%s failed", key, meta["name"])
            raise

    def _enact_job_finished(self, sj: SyncJob) -> bool:
        """Sets Complete or Failed, once nothing is uncounted and no pod terminates."""
        finished = sj.finished_condition
        if finished is None:
            return False
        status = sj.job.setdefault("status", {})
        uncounted = uncounted_of(status)
        if uncounted["succeeded"] or uncounted["failed"]:
            log.debug("delaying %s of %s: uncounted pods", finished.get("type"), sj.key)
            return False
        if sj.terminating > 0:
            log.debug("delaying %s of %s: terminating pods", finished.get("type"), sj.key)
            return False
        ensure_condition(
            status.setdefault("conditions", []),
            finished["type"],
            finished["status"],
            reason=finished.get("reason", ""),
            message=finished.get("message", ""),
            now=self._now(),
        )
        if finished["type"] == "Complete":
            status["completionTime"] = finished["lastTransitionTime"]
        return True

    def _record_job_finished(self, job: Object, condition: Object) -> None:
        complete = condition.get("type") == "Complete"
        JOBS_FINISHED.labels(
            _mode(job), "succeeded" if complete else "failed", condition.get("reason", "")
        ).inc()
        events = self._ctx.events
        if condition.get("type") == "Complete":
            completions = completions_of(job)
            succeeded = int((job.get("status") or {}).get("succeeded") or 0)
            if completions is not None and succeeded > completions:
                events.record(
                    job,
                    "Warning",
                    "TooManySucceededPods",
                    "Too many succeeded pods running after completion count reached",
                    component=COMPONENT,
                )
            events.record(job, "Normal", "Completed", "Job completed", component=COMPONENT)
        else:
            events.record(
                job,
                "Warning",
                condition.get("reason", ""),
                condition.get("message", ""),
                component=COMPONENT,
            )

    async def _update_status(self, job: Object) -> Object:
        """PUT the status with the resourceVersion it was computed from: a stale cache gets a
        conflict (and a retry), never an overwrite of counts it did not see."""
        meta = job["metadata"]
        status = job.get("status") or {}
        if "conditions" in status and not status["conditions"]:
            del status["conditions"]  # omitted when empty, as Go sends it
        body = {**job, "apiVersion": "batch/v1", "kind": "Job"}
        updated: Object = await self._ctx.kube.replace(
            self._ctx.apis[JOBS], meta["namespace"], meta["name"], body, subresource="status"
        )
        updated_meta = updated.get("metadata") or {}
        key = f"{meta['namespace']}/{meta['name']}"
        self._written[key] = (updated_meta.get("uid", ""), updated_meta.get("resourceVersion", ""))
        updated.setdefault("status", {})
        uncounted_of(updated["status"])
        return updated


def failed_for_failure_target(condition: Object, now: datetime.datetime) -> Object:
    """The Failed condition a FailureTarget ends in: same reason and message."""
    return new_condition(
        "Failed", "True", condition.get("reason", ""), condition.get("message", ""), now
    )


def _mode(job: Object) -> str:
    return "Indexed" if is_indexed(job) else "NonIndexed"


def _counters(job: Object) -> tuple[int, int]:
    status = job.get("status") or {}
    return int(status.get("succeeded") or 0), int(status.get("failed") or 0)


def _record_pods_finished(job: Object, before: tuple[int, int]) -> None:
    """The pods counted since ``before`` (upstream counts them per status write)."""
    succeeded, failed = _counters(job)
    if succeeded > before[0]:
        JOB_PODS_FINISHED.labels(_mode(job), "succeeded").inc(succeeded - before[0])
    if failed > before[1]:
        JOB_PODS_FINISHED.labels(_mode(job), "failed").inc(failed - before[1])

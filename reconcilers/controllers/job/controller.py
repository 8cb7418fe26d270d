"""The Job controller, as kube-controller-manager's ``job-controller`` (upstream's
pkg/controller/job).

A sync reads the Job and its pods from the cache, claims the pods its selector picks
(adopting orphans with the tracking finalizer, releasing those that stopped matching), then,
in upstream's order:

1. an existing ``SuccessCriteriaMet`` or ``FailureTarget`` decides; else a ``FailJob`` rule of
   the pod failure policy, the backoff limit (``BackoffLimitExceeded``; restarts count for
   ``restartPolicy: OnFailure``), ``activeDeadlineSeconds`` (``DeadlineExceeded``; the key
   is requeued at the deadline), ``maxFailedIndexes`` / failed indexes, the success policy;
2. a Job that is finishing loses its active pods; otherwise its pods are managed
   (:mod:`.manage`) and it completes once enough pods succeeded; ``Suspended`` is set and
   cleared (resuming resets ``startTime``), with events;
3. the status is written and finished pods are counted through the tracking finalizer
   (:mod:`.tracking`); the terminal condition follows its interim one once every pod is
   counted and none terminates.

Jobs whose ``spec.managedBy`` names another controller are left alone. Orphaned pods that
still carry the tracking finalizer (their Job gone or finished) lose it: those requests name a
pod (``resource`` = pods).
"""

from __future__ import annotations

import contextlib
import datetime
import logging
from collections.abc import Callable, Iterable
from typing import ClassVar, Final

from bus.subjects import ResourceType
from kubus.kube import NotFoundError
from reconcilers.cache import controller_of
from reconcilers.controller import Context, ControllerBase, Permission, Request, Result, Scope
from reconcilers.controllers.job.backoff import BackoffStore
from reconcilers.controllers.job.indexed import (
    calculate_failed_indexes,
    calculate_succeeded_indexes,
    completion_index,
    pods_with_delayed_deletion_per_index,
)
from reconcilers.controllers.job.manage import PodsMixin
from reconcilers.controllers.job.metrics import STALE_SYNC_SKIPS
from reconcilers.controllers.job.pod_failure_policy import (
    fail_job_message,
    match_pod_failure_policy,
)
from reconcilers.controllers.job.state import SyncJob
from reconcilers.controllers.job.success_policy import match_success_policy
from reconcilers.controllers.job.tracking import (
    FinalizerExpectations,
    TrackingMixin,
    failed_for_failure_target,
    is_success_criteria_met,
    remove_tracking_finalizer_patch,
    uncounted_of,
)
from reconcilers.controllers.job.util import (
    TRACKING_FINALIZER,
    completions_of,
    ensure_condition,
    find_condition,
    format_time,
    has_backoff_limit_per_index,
    has_tracking_finalizer,
    is_indexed,
    is_job_finished,
    is_pod_failed,
    is_suspended,
    managed_by_external_controller,
    new_condition,
    past_backoff_limit_on_failure,
)
from reconcilers.controllers.podutil import (
    is_pod_active,
    is_pod_ready,
    is_pod_terminating,
    parse_time,
)
from reconcilers.expectations import Expectations
from reconcilers.kinds import EVENTS, JOBS, PODS, Object, clone
from reconcilers.refmanager import ControllerRefManager, resolve_controller_ref
from reconcilers.selectors import InvalidSelectorError, Selector

__all__ = ["COMPONENT", "JobController"]

log = logging.getLogger(__name__)

COMPONENT: Final = "job-controller"
KIND: Final = "Job"
# MutableSchedulingDirectivesForSuspendedJobs, beta and on in v1.36: suspending clears
# startTime.
_CLEAR_START_TIME_ON_SUSPEND: Final = True
_STALE_CACHE_RETRY: Final = 1.0

Clock = Callable[[], datetime.datetime]


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _key_of(obj: Object) -> str:
    meta = obj.get("metadata") or {}
    return f"{meta.get('namespace')}/{meta.get('name')}"


def _rv(text: str | None) -> int | None:
    return int(text) if text and text.isdigit() else None


class JobController(TrackingMixin, PodsMixin, ControllerBase):
    name: ClassVar[str] = "job-controller"
    aliases: ClassVar[tuple[str, ...]] = ("job",)
    primary: ClassVar[ResourceType] = JOBS
    reads: ClassVar[tuple[ResourceType, ...]] = (JOBS, PODS)
    concurrency_flag: ClassVar[str] = "concurrent-job-syncs"
    default_concurrency: ClassVar[int] = 5
    # A Job and its pods share a namespace, so a partition sees them all.
    scope: ClassVar[Scope] = Scope.PARTITIONED
    permissions: ClassVar[tuple[Permission, ...]] = (
        Permission.on(JOBS, "get"),  # the live read before adopting
        Permission.on(JOBS, "update", subresource="status"),
        # blockOwnerDeletion on the pods it creates (OwnerReferencesPermissionEnforcement).
        Permission.on(JOBS, "update", subresource="finalizers"),
        Permission.on(PODS, "create", "delete", "patch"),
        Permission.on(EVENTS, "create", "patch"),
    )
    enabled_by_default: ClassVar[bool] = True

    def __init__(self, context: Context, *, clock: Clock = _utcnow) -> None:
        self._ctx = context
        self._now = clock
        self._expectations = Expectations()
        self._finalizer_expectations = FinalizerExpectations()
        self._backoff = BackoffStore()
        # UIDs of Jobs this process marked finished, until the cache shows it.
        self._finished_uids: set[str] = set()
        # Per Job key, the (uid, resourceVersion) of this process's last status write: a
        # cache older than that is not synced from (StaleControllerConsistencyJob).
        self._written: dict[str, tuple[str, str]] = {}

    def forget(self, matches: Callable[[Request], bool]) -> None:
        def by_key(key: str) -> bool:
            namespace, _, name = key.partition("/")
            return matches(Request(namespace or None, name))

        self._expectations.forget_where(by_key)
        self._finalizer_expectations.forget_where(by_key)
        self._backoff.forget_where(by_key)
        for key in [key for key in self._written if by_key(key)]:
            del self._written[key]

    # --- event handlers -----------------------------------------------------------------

    def requests_for(
        self, resource: ResourceType, obj: Object | None, old: Object | None
    ) -> Iterable[Request]:
        if resource == JOBS:
            return self._job_changed(obj, old)
        if obj is None:
            return self._pod_deleted(old, final=True) if old is not None else []
        if old is None:
            return self._pod_added(obj)
        return self._pod_updated(obj, old)

    def _job_changed(self, job: Object | None, old: Object | None) -> list[Request]:
        if job is None:
            if old is None:
                return []
            key = _key_of(old)
            self._finished_uids.discard(old["metadata"].get("uid", ""))
            self._backoff.remove(key)
            self._written.pop(key, None)
            return [Request.of(old), *self._orphans_selected_by(old)]
        if old is not None and is_job_finished(job):
            # A backup: a finished Job's pods lost the finalizer before it was marked so.
            self._finished_uids.discard(job["metadata"].get("uid", ""))
            return self._orphans_selected_by(job)
        return [Request.of(job)]

    def _orphans_selected_by(self, job: Object) -> list[Request]:
        try:
            selector = Selector.parse((job.get("spec") or {}).get("selector"))
        except InvalidSelectorError as error:
            log.error("job %s has invalid label selector: %s", _key_of(job), error)
            return []
        namespace = job["metadata"].get("namespace")
        return [
            Request.of(pod, PODS)
            for pod in self._ctx.cache.in_namespace(PODS, namespace)
            if has_tracking_finalizer(pod) and selector.matches(pod["metadata"].get("labels"))
        ]

    def _owner_of(self, pod: Object) -> Object | None:
        return resolve_controller_ref(self._ctx.cache, JOBS, KIND, pod)

    def _matching_jobs(self, pod: Object) -> list[Object]:
        labels = pod["metadata"].get("labels")
        if not labels:
            return []
        found = []
        for job in self._ctx.cache.in_namespace(JOBS, pod["metadata"].get("namespace")):
            try:
                selector = Selector.parse((job.get("spec") or {}).get("selector"))
            except InvalidSelectorError:
                continue
            if not selector.empty and selector.matches(labels):
                found.append(job)
        return found

    def _pod_added(self, pod: Object) -> list[Request]:
        if pod["metadata"].get("deletionTimestamp"):
            return self._pod_deleted(pod, final=False)
        if controller_of(pod) is not None:
            job = self._owner_of(pod)
            if job is None:
                return []
            self._expectations.creation_observed(_key_of(job))
            return [Request.of(job)]
        requests = [Request.of(pod, PODS)] if has_tracking_finalizer(pod) else []
        return requests + [Request.of(job) for job in self._matching_jobs(pod)]

    def _pod_updated(self, pod: Object, old: Object) -> list[Request]:
        if pod["metadata"].get("resourceVersion") == old["metadata"].get("resourceVersion"):
            return []
        if pod["metadata"].get("deletionTimestamp"):
            return self._pod_deleted(pod, final=False)
        finalizer_removed = not has_tracking_finalizer(pod)
        uid = pod["metadata"].get("uid", "")
        new_ref, old_ref = controller_of(pod), controller_of(old)
        requests: list[Request] = []
        if new_ref != old_ref and old_ref is not None:
            previous = self._owner_of(old)
            if previous is not None:
                if finalizer_removed:
                    self._finalizer_expectations.observed(_key_of(previous), uid)
                requests.append(Request.of(previous))
        if new_ref is not None:
            job = self._owner_of(pod)
            if job is None:
                return requests
            if finalizer_removed:
                self._finalizer_expectations.observed(_key_of(job), uid)
            return [*requests, Request.of(job)]
        if has_tracking_finalizer(pod):
            requests.append(Request.of(pod, PODS))
        if new_ref != old_ref or pod["metadata"].get("labels") != old["metadata"].get("labels"):
            requests += [Request.of(job) for job in self._matching_jobs(pod)]
        return requests

    def _pod_deleted(self, pod: Object, *, final: bool) -> list[Request]:
        has_finalizer = has_tracking_finalizer(pod)
        orphan = [Request.of(pod, PODS)] if has_finalizer else []
        if controller_of(pod) is None:
            return orphan
        job = self._owner_of(pod)
        if job is None or is_job_finished(job):
            return orphan
        key = _key_of(job)
        self._expectations.deletion_observed(key, _key_of(pod))
        if final or not has_finalizer:
            self._finalizer_expectations.observed(key, pod["metadata"].get("uid", ""))
        return [Request.of(job)]

    # --- orphan pods --------------------------------------------------------------------

    async def _sync_orphan_pod(self, request: Request) -> Result:
        pod = self._ctx.cache.get(PODS, request.namespace, request.name)
        if pod is None:
            return Result()
        ref = controller_of(pod)
        if ref is not None:
            if ref.get("kind") != KIND or ref.get("apiVersion") != "batch/v1":
                return Result()  # not a Job's: its finalizer is not ours to remove
            job = self._owner_of(pod)
            if job is not None:
                if managed_by_external_controller(job) is not None:
                    return Result()
                if not is_job_finished(job):
                    return Result()  # adopted: the Job's sync counts it
        patch = remove_tracking_finalizer_patch(pod)
        if patch is not None:
            with contextlib.suppress(NotFoundError):
                await self._ctx.kube.patch(
                    self._ctx.apis[PODS],
                    request.namespace,
                    request.name,
                    patch,
                    patch_type="strategic",
                )
        return Result()

    # --- sync ---------------------------------------------------------------------------

    async def reconcile(self, request: Request) -> Result:
        if request.resource == PODS:
            return await self._sync_orphan_pod(request)
        key = request.key
        cached = self._ctx.cache.get(JOBS, request.namespace, request.name)
        if cached is None:
            self._expectations.forget(key)
            self._finalizer_expectations.delete(key)
            self._backoff.remove(key)
            self._written.pop(key, None)
            return Result()
        if managed_by_external_controller(cached) is not None:
            log.debug("skipping job %s: managed by %s", key, cached["spec"].get("managedBy"))
            return Result()
        uid = cached["metadata"].get("uid", "")
        written = self._written.get(key)
        if written is not None:
            seen, wrote = _rv(cached["metadata"].get("resourceVersion")), _rv(written[1])
            if written[0] != uid or seen is None or wrote is None or seen >= wrote:
                del self._written[key]
            else:
                log.debug("job %s: cache behind this process's last write", key)
                STALE_SYNC_SKIPS.labels("batch", "jobs").inc()
                return Result(requeue_after=_STALE_CACHE_RETRY)
        if is_job_finished(cached):
            self._backoff.remove(key)
            self._finished_uids.discard(uid)
            return Result()
        if uid in self._finished_uids:
            return Result()
        mode = (cached.get("spec") or {}).get("completionMode")
        if mode not in (None, "NonIndexed", "Indexed"):
            self._ctx.events.record(
                cached,
                "Warning",
                "UnknownCompletionMode",
                "Skipped Job sync because completion mode is unknown",
                component=COMPONENT,
            )
            return Result()
        return await self._sync_job(clone(cached))

    async def _pods_for_job(self, job: Object) -> list[Object]:
        selector = Selector.parse((job.get("spec") or {}).get("selector"))
        uid = job["metadata"]["uid"]
        namespace = job["metadata"]["namespace"]
        candidates = list(self._ctx.cache.controlled_by(PODS, uid)) + [
            pod
            for pod in self._ctx.cache.in_namespace(PODS, namespace)
            if controller_of(pod) is None
        ]
        claims = ControllerRefManager(
            self._ctx.kube,
            job,
            owner_api=self._ctx.apis[JOBS],
            child_api=self._ctx.apis[PODS],
            selector=selector,
            finalizers=(TRACKING_FINALIZER,),
        )
        pods = await claims.claim_pods(candidates)
        for index, pod in enumerate(pods):
            if not has_tracking_finalizer(pod) and not any(
                ref.get("uid") == uid for ref in pod["metadata"].get("ownerReferences") or ()
            ):
                pods[index] = clone(pod)
                pods[index]["metadata"]["finalizers"] = [
                    *(pod["metadata"].get("finalizers") or []),
                    TRACKING_FINALIZER,
                ]
        return pods

    async def _sync_job(self, job: Object) -> Result:
        key = _key_of(job)
        spec = job.setdefault("spec", {})
        status = job.setdefault("status", {})
        uncounted = uncounted_of(status)
        satisfied = self._expectations.satisfied(key)
        try:
            pods = await self._pods_for_job(job)
        except InvalidSelectorError as error:
            log.error("couldn't convert Job selector of %s: %s", key, error)
            return Result()
        active_pods = [pod for pod in pods if is_pod_active(pod)]
        sj = SyncJob(
            job=job,
            pods=pods,
            active_pods=active_pods,
            ready=sum(1 for pod in active_pods if is_pod_ready(pod)),
            uncounted_succeeded=set(uncounted["succeeded"]),
            uncounted_failed=set(uncounted["failed"]),
            expected_removed_finalizers=self._finalizer_expectations.expected(key),
            new_backoff_record=self._backoff.new_record(key, [], []),
            terminating=sum(1 for pod in pods if is_pod_terminating(pod)),
        )
        active = len(active_pods)
        new_succeeded, new_failed = self._new_finished_pods(sj)
        sj.succeeded = int(status.get("succeeded") or 0) + len(new_succeeded)
        sj.succeeded += len(sj.uncounted_succeeded)
        sj.failed = int(status.get("failed") or 0) + self._counted_failures(job, new_failed)
        sj.failed += len(sj.uncounted_failed)
        now = self._now()
        if not status.get("startTime") and not is_suspended(job):
            status["startTime"] = format_time(now)
        sj.new_backoff_record = self._backoff.new_record(key, new_succeeded, new_failed)

        backoff_limit = int(spec.get("backoffLimit", 6))
        exceeds_backoff_limit = sj.failed > backoff_limit
        met = find_condition(status.get("conditions"), "SuccessCriteriaMet")
        sj.finished_condition = met if is_success_criteria_met(met) else None
        if sj.finished_condition is None:
            target = find_condition(status.get("conditions"), "FailureTarget")
            if target is not None and target.get("status") == "True":
                sj.finished_condition = failed_for_failure_target(target, now)
            elif (message := fail_job_message(job, pods)) is not None:
                sj.finished_condition = new_condition(
                    "FailureTarget", "True", "PodFailurePolicy", message, now
                )
        if sj.finished_condition is None:
            if exceeds_backoff_limit or past_backoff_limit_on_failure(job, pods):
                sj.finished_condition = new_condition(
                    "FailureTarget",
                    "True",
                    "BackoffLimitExceeded",
                    "Job has reached the specified backoff limit",
                    now,
                )
            elif (left := self._active_deadline_left(job, now)) is not None and left <= 0:
                sj.finished_condition = new_condition(
                    "FailureTarget",
                    "True",
                    "DeadlineExceeded",
                    "Job was active longer than specified deadline",
                    now,
                )
            elif left is not None:
                log.debug("job %s: activeDeadlineSeconds, next sync in %.1fs", key, left)
                sj.requeue_in(left)

        if is_indexed(job):
            completions = completions_of(job) or 0
            sj.prev_succeeded_indexes, sj.succeeded_indexes = calculate_succeeded_indexes(job, pods)
            sj.succeeded = sj.succeeded_indexes.total()
            if has_backoff_limit_per_index(job):
                sj.failed_indexes = calculate_failed_indexes(job, pods)
                failed_total = sj.failed_indexes.total()
                if sj.finished_condition is None:
                    max_failed = spec.get("maxFailedIndexes")
                    if max_failed is not None and failed_total > int(max_failed):
                        sj.finished_condition = new_condition(
                            "FailureTarget",
                            "True",
                            "MaxFailedIndexesExceeded",
                            "Job has exceeded the specified maximal number of failed indexes",
                            now,
                        )
                    elif failed_total > 0 and failed_total + sj.succeeded >= completions:
                        sj.finished_condition = new_condition(
                            "FailureTarget", "True", "FailedIndexes", "Job has failed indexes", now
                        )
                sj.delayed_deletion_per_index = pods_with_delayed_deletion_per_index(
                    job,
                    pods=pods,
                    active=active_pods,
                    succeeded=sj.succeeded_indexes,
                    failed=sj.failed_indexes,
                    expected_removed=sj.expected_removed_finalizers,
                )
            if sj.finished_condition is None:
                message = match_success_policy(
                    spec.get("successPolicy"), completions, sj.succeeded_indexes
                )
                if message is not None:
                    sj.finished_condition = new_condition(
                        "SuccessCriteriaMet", "True", "SuccessPolicy", message, now
                    )

        suspend_changed = False
        manage_error: Exception | None = None
        if sj.finished_condition is not None:
            ready, deleted, manage_error = await self._delete_active_pods(job, sj.active_pods)
            if deleted != active or not satisfied:
                # Pods may remain, or be unseen yet: not finished this time.
                sj.finished_condition = None
            active -= deleted
            sj.terminating += deleted
            sj.ready -= ready
        else:
            managed = False
            if satisfied and not job["metadata"].get("deletionTimestamp"):
                active, manage_error = await self._manage_job(sj)
                managed = True
            wanted = completions_of(job)
            if wanted is None:
                complete = sj.succeeded > 0 and active == 0
            else:
                complete = sj.succeeded >= wanted and active == 0
            if complete:
                sj.finished_condition = new_condition(
                    "SuccessCriteriaMet",
                    "True",
                    "CompletionsReached",
                    "Reached expected number of succeeded pods",
                    now,
                )
            elif managed:
                suspend_changed = self._set_suspended_condition(job, now)

        needs_update = (
            suspend_changed
            or active != int(status.get("active") or 0)
            or sj.ready != status.get("ready")
            or sj.terminating != status.get("terminating")
        )
        job_status = sj.job["status"]
        job_status["active"] = active
        job_status["ready"] = sj.ready
        job_status["terminating"] = sj.terminating
        await self._track_status_and_remove_finalizers(sj, needs_update)
        if manage_error is not None:
            raise manage_error
        return Result(requeue_after=sj.requeue_after)

    def _set_suspended_condition(self, job: Object, now: datetime.datetime) -> bool:
        status = job["status"]
        conditions = status.setdefault("conditions", [])
        if is_suspended(job):
            if not ensure_condition(
                conditions,
                "Suspended",
                "True",
                reason="JobSuspended",
                message="Job suspended",
                now=now,
            ):
                return False
            self._ctx.events.record(
                job, "Normal", "Suspended", "Job suspended", component=COMPONENT
            )
            if _CLEAR_START_TIME_ON_SUSPEND:
                status.pop("startTime", None)
            return True
        if not ensure_condition(
            conditions, "Suspended", "False", reason="JobResumed", message="Job resumed", now=now
        ):
            return False
        self._ctx.events.record(job, "Normal", "Resumed", "Job resumed", component=COMPONENT)
        # activeDeadlineSeconds counts the time a Job is continuously active.
        status["startTime"] = format_time(now)
        return True

    def _new_finished_pods(self, sj: SyncJob) -> tuple[list[Object], list[Object]]:
        """Finished pods not counted yet: holding the finalizer, not in the uncounted lists,
        with a valid index for Indexed Jobs."""
        succeeded: list[Object] = []
        failed: list[Object] = []
        job = sj.job
        completions = completions_of(job) or 0
        for pod in sj.pods:
            uid = pod["metadata"].get("uid", "")
            if not has_tracking_finalizer(pod) or uid in sj.expected_removed_finalizers:
                continue
            if is_indexed(job):
                ix = completion_index(pod)
                if ix < 0 or ix >= completions:
                    continue
            if pod.get("status", {}).get("phase") == "Succeeded":
                if uid not in sj.uncounted_succeeded:
                    succeeded.append(pod)
            elif is_pod_failed(pod, job) and uid not in sj.uncounted_failed:
                failed.append(pod)
        return succeeded, failed

    @staticmethod
    def _counted_failures(job: Object, failed: list[Object]) -> int:
        policy = (job.get("spec") or {}).get("podFailurePolicy")
        if policy is None:
            return len(failed)
        return sum(1 for pod in failed if match_pod_failure_policy(policy, pod)[1])

    @staticmethod
    def _active_deadline_left(job: Object, now: datetime.datetime) -> float | None:
        """Seconds until ``activeDeadlineSeconds`` is reached (<= 0: reached), or None."""
        deadline = (job.get("spec") or {}).get("activeDeadlineSeconds")
        started = parse_time((job.get("status") or {}).get("startTime"))
        if deadline is None or started is None or is_suspended(job):
            return None
        return float(deadline) - (now - started).total_seconds()

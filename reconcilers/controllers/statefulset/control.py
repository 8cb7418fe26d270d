"""The StatefulSet update algorithm (upstream's stateful_set_control.go and its status updater).

One pass per sync: find (or create) the update revision and the current one; split the pods
into *replicas* (ordinals in ``[start, start + replicas)``, missing ones made from the right
revision) and *condemned* (ordinals above, highest first); then, unless the set is being
deleted, in ``OrderedReady`` mode one step at a time (stop at the first pod not Running, Ready
and available), in ``Parallel`` mode all at once in slow-start batches:

1. replicas: delete Failed/Succeeded pods (recreated next sync), create missing ones (claims
   first, unless a claim is stale), create missing claims of Pending pods, fix identity,
   storage and claim owners;
2. condemned: fix claim owners for the retention policy, then delete them;
3. ``RollingUpdate`` (not ``OnDelete``): delete the highest-ordinal pod at or above the
   partition that is not at the update revision, waiting for each to come back available;
   with the ``MaxUnavailableStatefulSet`` gate, up to ``maxUnavailable`` at a time.

Then the status is written when it changed (a complete rolling update makes the update
revision current) and the revision history is trimmed to ``revisionHistoryLimit``.

:class:`PodWrites`, :class:`RevisionWrites` and ``write_status`` are the seams the unit tests
fake; the controller passes the real ones.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

from kubus.kube import ApiResource
from reconcilers.controllers.history import (
    equal_revision,
    find_equal_revisions,
    next_revision,
    sort_revisions,
)
from reconcilers.controllers.statefulset.pods import aggregate
from reconcilers.controllers.statefulset.utils import (
    allows_burst,
    apply_revision,
    complete_rolling_update,
    count_replicas,
    identity_matches,
    in_ordinal_range,
    inconsistent_status,
    is_created,
    is_failed,
    is_pending,
    is_running_and_available,
    is_running_and_ready,
    is_succeeded,
    is_terminating,
    is_unavailable,
    max_unavailable,
    new_versioned_pod,
    ordinal_of,
    pod_revision,
    replicas_of,
    set_revision_object,
    start_ordinal,
    storage_matches,
)
from reconcilers.kinds import Object, clone

__all__ = ["MAX_BATCH_SIZE", "PodWrites", "RevisionWrites", "StatefulSetControl"]

log = logging.getLogger(__name__)

MAX_BATCH_SIZE: Final = 500


class PodWrites(Protocol):
    """What the algorithm asks of the pod control (``StatefulPodControl``)."""

    async def create_pod(self, sts: Object, pod: Object) -> None: ...
    async def update_pod(self, sts: Object, pod: Object) -> None: ...
    async def delete_pod(self, sts: Object, pod: Object) -> None: ...
    def claims_match_retention(self, sts: Object, pod: Object) -> bool: ...
    async def update_claims_for_retention(self, sts: Object, pod: Object) -> None: ...
    def claim_is_stale(self, sts: Object, pod: Object) -> bool: ...
    async def create_missing_claims(self, sts: Object, pod: Object) -> None: ...


class RevisionWrites(Protocol):
    """What the algorithm asks of the history (``reconcilers.controllers.history.History``)."""

    async def create(
        self, owner: Object, revision: Object, collision_count: int
    ) -> tuple[Object, int]: ...
    async def update_revision(self, revision: Object, new_revision: int) -> Object: ...
    async def delete(self, revision: Object) -> None: ...


StatusWriter = Callable[[Object, Object], Awaitable[None]]


@dataclass
class _Step:
    """The state of one pass: the set, its two revisions' sets, and the status being built."""

    sts: Object
    update_set: Object
    current: Object
    update: Object
    status: dict[str, Any]
    replicas: list[Object]
    condemned: list[Object]
    first_unavailable: Object | None
    now: datetime.datetime

    @property
    def min_ready(self) -> int:
        return int(self.sts.get("spec", {}).get("minReadySeconds") or 0)

    def recount(self) -> None:
        self.status.update(
            count_replicas(
                (self.replicas, self.condemned),
                self.min_ready,
                self.current["metadata"]["name"],
                self.update["metadata"]["name"],
                self.now,
            )
        )


class StatefulSetControl:
    def __init__(
        self,
        pods: PodWrites,
        history: RevisionWrites,
        write_status: StatusWriter,
        sts_api: ApiResource,
        *,
        max_unavailable_gate: bool = False,
        semantic_revision_comparison: bool = True,
    ) -> None:
        self._pods = pods
        self._history = history
        self._write_status = write_status
        self._api = sts_api
        self._max_unavailable_gate = max_unavailable_gate
        self._semantic = semantic_revision_comparison
        self._equal_cache: dict[tuple[str, int, str], None] = {}

    async def update_stateful_set(
        self,
        sts: Object,
        pods: Sequence[Object],
        revisions: Sequence[Object],
        now: datetime.datetime,
    ) -> Object:
        """One pass; returns the status written (or that needed no write). Raises the pass's
        error after trimming the history, as upstream's aggregate does."""
        sts = clone(sts)
        ordered = sort_revisions(revisions)
        current: Object | None = None
        update: Object | None = None
        status: Object | None = None
        error: Exception | None = None
        try:
            current, update, collision_count = await self._revisions(sts, ordered)
            status, error = await self._update(
                sts, current, update, collision_count=collision_count, pods=pods, now=now
            )
            if status is not None:
                complete_rolling_update(sts, status)
                if inconsistent_status(sts, status):
                    try:
                        await self._write_status(sts, status)
                    except Exception as status_error:
                        if error is None:
                            error = status_error
                        else:
                            log.error("could not update status of %s: %s", _key(sts), status_error)
        except Exception as failed:
            error = failed
        errors = [error] if error is not None else []
        try:
            await self._truncate_history(sts, pods, ordered, current, update)
        except Exception as history_error:
            errors.append(history_error)
        failure = aggregate(errors)
        if failure is not None:
            raise failure
        assert status is not None
        return status

    # --- revisions ----------------------------------------------------------------------

    async def _revisions(self, sts: Object, revisions: list[Object]) -> tuple[Object, Object, int]:
        status = sts.get("status") or {}
        collision_count = int(status.get("collisionCount") or 0)
        proposed = set_revision_object(sts, self._api, next_revision(revisions), collision_count)
        equal = find_equal_revisions(revisions, proposed)
        latest = revisions[-1] if revisions else None
        if equal and equal_revision(latest, equal[-1]):
            assert latest is not None
            update = latest
        elif equal:
            update = await self._history.update_revision(equal[-1], int(proposed["revision"]))
        elif latest is not None and self._matches_latest(sts, proposed, latest):
            update = latest
        else:
            update, collision_count = await self._history.create(sts, proposed, collision_count)
        current = next(
            (r for r in revisions if r["metadata"]["name"] == status.get("currentRevision")),
            update,
        )
        return current, update, collision_count

    def _matches_latest(self, sts: Object, proposed: Object, latest: Object) -> bool:
        """``setMatchesLatestExistingRevision``: restoring ``latest`` gives ``proposed``'s data
        (a revision written by another serialization of the same template)."""
        if not self._semantic:
            return False
        meta = sts["metadata"]
        key = (
            str(meta.get("uid")),
            int(meta.get("generation") or 0),
            str(latest["metadata"].get("resourceVersion")),
        )
        if key in self._equal_cache:
            return True
        restored = apply_revision(sts, latest)
        rebuilt = set_revision_object(restored, self._api, -1, None)
        if equal_revision(proposed, rebuilt):
            if len(self._equal_cache) >= 10_000:
                self._equal_cache.pop(next(iter(self._equal_cache)))
            self._equal_cache[key] = None
            return True
        return False

    async def _truncate_history(
        self,
        sts: Object,
        pods: Sequence[Object],
        revisions: list[Object],
        current: Object | None,
        update: Object | None,
    ) -> None:
        live = {r["metadata"]["name"] for r in (current, update) if r is not None}
        live |= {pod_revision(pod) for pod in pods}
        old = [r for r in revisions if r["metadata"]["name"] not in live]
        limit = sts.get("spec", {}).get("revisionHistoryLimit")
        limit = 10 if limit is None else int(limit)
        if limit < 0 or len(old) <= limit:
            return
        for revision in old[: len(old) - limit]:
            await self._history.delete(revision)

    # --- the pass -----------------------------------------------------------------------

    async def _update(
        self,
        sts: Object,
        current: Object,
        update: Object,
        *,
        collision_count: int,
        pods: Sequence[Object],
        now: datetime.datetime,
    ) -> tuple[Object | None, Exception | None]:
        current_set = apply_revision(sts, current)
        update_set = apply_revision(sts, update)
        status: dict[str, Any] = {
            "observedGeneration": sts["metadata"].get("generation", 0),
            "currentRevision": current["metadata"]["name"],
            "updateRevision": update["metadata"]["name"],
            "collisionCount": collision_count,
        }
        min_ready = int(sts.get("spec", {}).get("minReadySeconds") or 0)
        start, count = start_ordinal(sts), replicas_of(sts)
        slots: list[Object | None] = [None] * count
        condemned: list[Object] = []
        for pod in pods:
            if in_ordinal_range(pod, sts):
                slots[ordinal_of(pod) - start] = pod
            elif ordinal_of(pod) >= 0:
                condemned.append(pod)
        replicas = [
            pod
            if pod is not None
            else new_versioned_pod(
                current_set,
                update_set,
                current_revision=current["metadata"]["name"],
                update_revision=update["metadata"]["name"],
                ordinal=start + index,
                sts_api=self._api,
            )
            for index, pod in enumerate(slots)
        ]
        condemned.sort(key=ordinal_of, reverse=True)
        unavailable = [p for p in replicas if is_unavailable(p, min_ready, now)]
        unavailable += [p for p in reversed(condemned) if is_unavailable(p, min_ready, now)]
        step = _Step(
            sts,
            update_set,
            current,
            update,
            status,
            replicas,
            condemned,
            unavailable[0] if unavailable else None,
            now,
        )
        status.update(
            count_replicas(
                (list(pods),),
                min_ready,
                current["metadata"]["name"],
                update["metadata"]["name"],
                now,
            )
        )
        if sts["metadata"].get("deletionTimestamp"):
            return status, None
        monotonic = not allows_burst(sts)
        try:
            for phase, items in (
                (self._process_replica, replicas),
                (self._fix_condemned_claims, condemned),
                (self._process_condemned, condemned),
            ):
                if await _run_for_all(items, phase, step, monotonic):
                    step.recount()
                    return status, None
        except Exception as error:
            step.recount()
            return status, error
        step.recount()
        strategy = (sts.get("spec", {}).get("updateStrategy") or {}).get("type", "RollingUpdate")
        if strategy == "OnDelete":
            return status, None
        try:
            if self._max_unavailable_gate:
                await self._rolling_max_unavailable(step)
            else:
                await self._rolling_one_at_a_time(step)
        except Exception as error:
            return status, error
        return status, None

    async def _process_replica(self, step: _Step, pod: Object, monotonic: bool) -> bool:
        """One replica; True stops the pass (OrderedReady waits on it)."""
        sts = step.sts
        if is_failed(pod) or is_succeeded(pod):
            if not is_terminating(pod):
                await self._pods.delete_pod(sts, pod)
            return True  # the replacement comes once the old pod is gone
        if not is_created(pod):
            if self._pods.claim_is_stale(sts, pod):
                return True
            await self._pods.create_pod(sts, pod)
            if monotonic:
                return True
        if is_pending(pod):
            await self._pods.create_missing_claims(sts, pod)
        if is_terminating(pod) and monotonic:
            return True
        if not is_running_and_ready(pod) and monotonic:
            return True
        if not is_running_and_available(pod, step.min_ready, step.now) and monotonic:
            return True
        try:
            retention_ok = self._pods.claims_match_retention(step.update_set, pod)
        except Exception:
            retention_ok = True
        if identity_matches(sts, pod) and storage_matches(sts, pod) and retention_ok:
            return False
        await self._pods.update_pod(step.update_set, pod)
        return False

    async def _fix_condemned_claims(self, step: _Step, pod: Object, monotonic: bool) -> bool:
        if not self._pods.claims_match_retention(step.update_set, pod):
            await self._pods.update_claims_for_retention(step.update_set, pod)
        return False

    async def _process_condemned(self, step: _Step, pod: Object, monotonic: bool) -> bool:
        if is_terminating(pod):
            return monotonic
        first = step.first_unavailable
        if monotonic and pod is not first:
            if not is_running_and_ready(pod):
                return True
            if not is_running_and_available(pod, step.min_ready, step.now):
                return True
        await self._pods.delete_pod(step.sts, pod)
        return True

    async def _rolling_one_at_a_time(self, step: _Step) -> None:
        rolling = (step.sts.get("spec", {}).get("updateStrategy") or {}).get("rollingUpdate")
        floor = int((rolling or {}).get("partition") or 0)
        target_revision = step.update["metadata"]["name"]
        for index in range(len(step.replicas) - 1, floor - 1, -1):
            pod = step.replicas[index]
            if pod_revision(pod) != target_revision and not is_terminating(pod):
                await self._pods.delete_pod(step.sts, pod)
                step.status["currentReplicas"] = step.status.get("currentReplicas", 0) - 1
                return
            if is_unavailable(pod, step.min_ready, step.now):
                return

    async def _rolling_max_unavailable(self, step: _Step) -> None:
        spec = step.sts.get("spec", {})
        rolling = (spec.get("updateStrategy") or {}).get("rollingUpdate")
        floor, allowed = 0, 1
        if rolling is not None:
            floor = int(rolling.get("partition") or 0)
            allowed = max_unavailable(rolling.get("maxUnavailable"), replicas_of(step.sts))
        unavailable = sum(1 for p in step.replicas if is_unavailable(p, step.min_ready, step.now))
        if unavailable >= allowed:
            return
        budget = allowed - unavailable
        target_revision = step.update["metadata"]["name"]
        for index in range(len(step.replicas) - 1, floor - 1, -1):
            if budget <= 0:
                return
            pod = step.replicas[index]
            if pod_revision(pod) != target_revision and not is_terminating(pod):
                await self._pods.delete_pod(step.sts, pod)
                budget -= 1
                step.status["currentReplicas"] = step.status.get("currentReplicas", 0) - 1


_Phase = Callable[[_Step, Object, bool], Awaitable[bool]]


async def _run_for_all(pods: Sequence[Object], run: _Phase, step: _Step, monotonic: bool) -> bool:
    """Monotonic: one after the other, stopping at the first that asks to. Burst: slow-start
    batches (1, 2, 4, ... at most 500), stopping at the first batch with a failure."""
    if monotonic:
        for pod in pods:
            if await run(step, pod, monotonic):
                return True
        return False
    remaining, index, batch = len(pods), 0, min(len(pods), 1)
    while batch > 0:
        results = await asyncio.gather(
            *(run(step, pod, monotonic) for pod in pods[index : index + batch]),
            return_exceptions=True,
        )
        index += batch
        errors = [r for r in results if isinstance(r, Exception)]
        for result in results:
            if isinstance(result, BaseException) and not isinstance(result, Exception):
                raise result
        failure = aggregate(errors)
        if failure is not None:
            raise failure
        remaining -= batch
        batch = min(2 * batch, remaining, MAX_BATCH_SIZE)
    return False


def _key(sts: Object) -> str:
    meta = sts["metadata"]
    return f"{meta.get('namespace')}/{meta.get('name')}"

"""Indexed Jobs (upstream's indexed_job_utils.go): completion indexes, their interval strings
(``status.completedIndexes``, ``status.failedIndexes``, a success policy's
``succeededIndexes``), the pending indexes to start, duplicated indexes to remove, and the
per-index failure counts of ``backoffLimitPerIndex``."""

from __future__ import annotations

import bisect
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from reconcilers.controllers.job.backoff import pod_finished_time
from reconcilers.controllers.job.pod_failure_policy import match_pod_failure_policy
from reconcilers.controllers.job.util import (
    COMPLETION_INDEX,
    INDEX_FAILURE_COUNT,
    INDEX_IGNORED_FAILURE_COUNT,
    active_pods_order,
    completions_of,
    has_tracking_finalizer,
    is_pod_failed,
)
from reconcilers.kinds import Object

__all__ = [
    "COMPLETION_INDEX_ENV",
    "UNKNOWN_INDEX",
    "Intervals",
    "add_completion_index_env",
    "add_index_failure_annotations",
    "calculate_failed_indexes",
    "calculate_succeeded_indexes",
    "completion_index",
    "duplicated_index_pods_for_removal",
    "first_pending_indexes",
    "index_absolute_failure_count",
    "index_failure_count",
    "indexes_of",
    "is_index_failed",
    "new_index_failure_counts",
    "pod_generate_name_with_index",
    "pods_with_delayed_deletion_per_index",
]

log = logging.getLogger(__name__)

COMPLETION_INDEX_ENV: Final = "JOB_COMPLETION_INDEX"
UNKNOWN_INDEX: Final = -1
# apiserver's names.MaxGeneratedNameLength: 63 minus the 5 random characters.
_MAX_GENERATED_NAME: Final = 58
_MAX_INT32: Final = 2**31 - 1


@dataclass(frozen=True)
class Intervals:
    """Ordered, disjoint, non-adjacent closed intervals of indexes."""

    spans: tuple[tuple[int, int], ...] = ()

    @classmethod
    def parse(cls, text: str | None, completions: int) -> Intervals:
        """``"1,3-5,7"`` read as upstream reads it: intervals at or past ``completions`` are
        dropped (and clipped), a part that is no number is skipped, touching ones merge."""
        if not text:
            return cls()
        spans: list[list[int]] = []
        for part in text.split(","):
            limits = part.split("-")
            first = _atoi(limits[0])
            if first is None:
                log.info("Corrupted indexes interval, ignoring: %r", part)
                continue
            if first >= completions:
                break
            last = first
            if len(limits) > 1:
                parsed = _atoi(limits[1])
                if parsed is None:
                    log.info("Corrupted indexes interval, ignoring: %r", part)
                    continue
                last = min(parsed, completions - 1)
            if spans and spans[-1][1] == first - 1:
                spans[-1][1] = last
            else:
                spans.append([first, last])
        return cls(tuple((a, b) for a, b in spans))

    def __str__(self) -> str:
        parts = []
        for first, last in self.spans:
            if last == first:
                parts.append(str(first))
            elif last == first + 1:
                parts.append(f"{first},{last}")
            else:
                parts.append(f"{first}-{last}")
        return ",".join(parts)

    def __len__(self) -> int:
        return len(self.spans)

    def total(self) -> int:
        return sum(last - first + 1 for first, last in self.spans)

    def has(self, index: int) -> bool:
        lasts = [last for _, last in self.spans]
        at = bisect.bisect_left(lasts, index)
        return at < len(self.spans) and self.spans[at][0] <= index

    def with_indexes(self, indexes: Iterable[int]) -> Intervals:
        """These intervals and ``indexes`` (in increasing order)."""
        return self.merge(Intervals(tuple((ix, ix) for ix in indexes)))

    def merge(self, other: Intervals) -> Intervals:
        merged: list[list[int]] = []
        for first, last in sorted(self.spans + other.spans, key=lambda span: span[0]):
            if not merged or first > merged[-1][1] + 1:
                merged.append([first, last])
            elif merged[-1][1] < last:
                merged[-1][1] = last
        return Intervals(tuple((a, b) for a, b in merged))


def _atoi(text: str) -> int | None:
    """Go's strconv.Atoi: an optional sign and decimal digits."""
    body = text[1:] if text[:1] in "+-" else text
    if not body.isdigit() or not body.isascii():
        return None
    return int(text)


def completion_index(pod: Object) -> int:
    value = (pod.get("metadata", {}).get("annotations") or {}).get(COMPLETION_INDEX)
    if value is None:
        return UNKNOWN_INDEX
    parsed = _atoi(value)
    if parsed is None or parsed < 0:
        return UNKNOWN_INDEX
    return parsed


def _phase(pod: Object) -> str | None:
    phase: str | None = pod.get("status", {}).get("phase")
    return phase


def calculate_succeeded_indexes(job: Object, pods: Sequence[Object]) -> tuple[Intervals, Intervals]:
    """The indexes ``status.completedIndexes`` holds, and those plus the indexes of succeeded
    pods that still carry the tracking finalizer (not counted yet)."""
    completions = completions_of(job) or 0
    previous = Intervals.parse(job.get("status", {}).get("completedIndexes", ""), completions)
    new = {
        ix
        for pod in pods
        if _phase(pod) == "Succeeded"
        and (ix := completion_index(pod)) != UNKNOWN_INDEX
        and ix < completions
        and has_tracking_finalizer(pod)
    }
    return previous, previous.with_indexes(sorted(new))


def calculate_failed_indexes(job: Object, pods: Sequence[Object]) -> Intervals:
    completions = completions_of(job) or 0
    previous = Intervals.parse(job.get("status", {}).get("failedIndexes"), completions)
    new = {
        ix
        for pod in pods
        if (ix := completion_index(pod)) != UNKNOWN_INDEX
        and ix < completions
        and has_tracking_finalizer(pod)
        and is_index_failed(job, pod)
    }
    return previous.with_indexes(sorted(new))


def is_index_failed(job: Object, pod: Object) -> bool:
    counted = False
    if is_pod_failed(pod, job):
        policy = job.get("spec", {}).get("podFailurePolicy")
        if policy is not None:
            _, count_failed, action = match_pod_failure_policy(policy, pod)
            if action == "FailIndex":
                return True
            counted = count_failed
        else:
            counted = True
    limit = int(job.get("spec", {}).get("backoffLimitPerIndex") or 0)
    return counted and index_failure_count(pod) >= limit


def indexes_of(pods: Iterable[Object]) -> set[int]:
    return {ix for pod in pods if (ix := completion_index(pod)) != UNKNOWN_INDEX}


def first_pending_indexes(
    *,
    active: Sequence[Object],
    terminating: Sequence[Object] | None,
    succeeded: Intervals,
    failed: Intervals | None,
    count: int,
    completions: int,
) -> list[int]:
    """The ``count`` lowest indexes below ``completions`` with no active pod, not succeeded,
    not failed (and, when only failed pods are replaced, with no terminating pod)."""
    if count == 0:
        return []
    taken = succeeded.with_indexes(sorted(indexes_of(active)))
    if terminating is not None:
        taken = taken.with_indexes(sorted(indexes_of(terminating)))
    if failed is not None:
        taken = taken.merge(failed)
    result: list[int] = []
    candidate = 0
    for first, last in taken.spans:
        while candidate < completions and len(result) < count and candidate < first:
            result.append(candidate)
            candidate += 1
        candidate = max(candidate, last + 1)
    while candidate < completions and len(result) < count:
        result.append(candidate)
        candidate += 1
    return result


def duplicated_index_pods_for_removal(
    pods: Sequence[Object], completions: int
) -> tuple[list[Object], list[Object]]:
    """(to remove, to keep): pods without an index or with one out of range go; of the pods
    sharing an index, all but the one ranked last by the active-pods order go."""
    remove: list[Object] = []
    keep: list[Object] = []
    by_index: dict[int, list[Object]] = {}
    for pod in sorted(pods, key=completion_index):
        ix = completion_index(pod)
        if ix == UNKNOWN_INDEX or ix >= completions:
            remove.append(pod)
        else:
            by_index.setdefault(ix, []).append(pod)
    for ix in sorted(by_index):
        group = by_index[ix]
        if len(group) == 1:
            keep.append(group[0])
            continue
        ordered = active_pods_order(group)
        remove.extend(ordered[:-1])
        keep.append(ordered[-1])
    return remove, keep


def pods_with_delayed_deletion_per_index(
    job: Object,
    *,
    pods: Sequence[Object],
    active: Sequence[Object],
    succeeded: Intervals,
    failed: Intervals | None,
    expected_removed: set[str],
) -> dict[int, Object]:
    """Per index with no active pod and not finished: its latest failed pod still holding the
    finalizer, kept until its replacement carries the failure count on."""
    completions = completions_of(job) or 0
    active_indexes = indexes_of(active)
    delayed: dict[int, Object] = {}
    for pod in pods:
        uid = pod["metadata"].get("uid", "")
        if not has_tracking_finalizer(pod) or uid in expected_removed:
            continue
        ix = completion_index(pod)
        if ix == UNKNOWN_INDEX or ix >= completions or not is_pod_failed(pod, job):
            continue
        if succeeded.has(ix) or (failed is not None and failed.has(ix)) or ix in active_indexes:
            continue
        last = delayed.get(ix)
        if last is None or (
            index_absolute_failure_count(last) <= index_absolute_failure_count(pod)
            and not pod_finished_time(pod) < pod_finished_time(last)
        ):
            delayed[ix] = pod
    return delayed


def _int32_annotation(pod: Object, key: str) -> int:
    value = (pod.get("metadata", {}).get("annotations") or {}).get(key)
    if value is None:
        return 0
    parsed = _atoi(value)
    if parsed is None or parsed < 0 or parsed > _MAX_INT32:
        log.info("invalid value %r of annotation %s", value, key)
        return 0
    return parsed


def index_failure_count(pod: Object) -> int:
    return _int32_annotation(pod, INDEX_FAILURE_COUNT)


def index_absolute_failure_count(pod: Object) -> int:
    return index_failure_count(pod) + _int32_annotation(pod, INDEX_IGNORED_FAILURE_COUNT)


def new_index_failure_counts(job: Object, replaced: Object | None) -> tuple[int, int]:
    """The failure counts (counted, ignored) a replacement of ``replaced`` starts with."""
    if replaced is None:
        return 0, 0
    failures = index_failure_count(replaced)
    ignored = _int32_annotation(replaced, INDEX_IGNORED_FAILURE_COUNT)
    policy = job.get("spec", {}).get("podFailurePolicy")
    if policy is not None:
        _, count_failed, _ = match_pod_failure_policy(policy, replaced)
        if count_failed:
            failures += 1
        else:
            ignored += 1
    else:
        failures += 1
    return failures, ignored


def add_index_failure_annotations(
    annotations: dict[str, str], job: Object, replaced: Object | None
) -> None:
    failures, ignored = new_index_failure_counts(job, replaced)
    annotations[INDEX_FAILURE_COUNT] = str(failures)
    if ignored > 0:
        annotations[INDEX_IGNORED_FAILURE_COUNT] = str(ignored)


def add_completion_index_env(spec: dict[str, Any]) -> None:
    """``JOB_COMPLETION_INDEX`` from the pod's index label, in every (init) container."""
    env_var = {
        "name": COMPLETION_INDEX_ENV,
        "valueFrom": {"fieldRef": {"fieldPath": f"metadata.labels['{COMPLETION_INDEX}']"}},
    }
    for field in ("initContainers", "containers"):
        for container in spec.get(field) or ():
            env = container.setdefault("env", [])
            if not any(var.get("name") == COMPLETION_INDEX_ENV for var in env):
                env.append(dict(env_var))


def pod_generate_name_with_index(job_name: str, index: int) -> str:
    suffix = f"-{index}-"
    prefix = job_name + suffix
    if len(prefix) > _MAX_GENERATED_NAME:
        prefix = prefix[: _MAX_GENERATED_NAME - len(suffix)] + suffix
    return prefix

"""Indexed Jobs' pure logic (upstream's indexed_job_utils_test.go cases): interval strings,
pending indexes, duplicated indexes, failure-count annotations, generated names."""

from __future__ import annotations

from typing import Any

import pytest

from reconcilers.controllers.job.indexed import (
    Intervals,
    calculate_succeeded_indexes,
    completion_index,
    duplicated_index_pods_for_removal,
    first_pending_indexes,
    new_index_failure_counts,
    pod_generate_name_with_index,
)

INDEX = "batch.kubernetes.io/job-completion-index"


def pod(ix: str | None, phase: str = "Running", *, name: str = "", **annotations: str) -> Any:
    notes = dict(annotations)
    if ix is not None:
        notes[INDEX] = ix
    return {
        "metadata": {
            "name": name or f"p{ix}",
            "uid": name or f"u{ix}",
            "annotations": notes,
            "finalizers": ["batch.kubernetes.io/job-tracking"],
        },
        "spec": {"nodeName": "n"},
        "status": {"phase": phase},
    }


@pytest.mark.parametrize(
    ("text", "completions", "shown", "total"),
    [
        ("", 5, "", 0),
        ("0", 5, "0", 1),
        ("0,1", 5, "0,1", 2),
        ("0-2,4", 5, "0-2,4", 4),
        ("1-3,4-6", 10, "1-6", 6),  # touching intervals merge
        ("1-8", 5, "1-4", 4),  # clipped at completions
        ("3,7,9", 5, "3", 1),  # past completions: dropped
        ("a,2,3-x,5", 10, "2,5", 2),  # corrupted parts skipped
    ],
)
def test_interval_strings_parse_and_print_as_upstream(
    text: str, completions: int, shown: str, total: int
) -> None:
    parsed = Intervals.parse(text, completions)
    assert str(parsed) == shown
    assert parsed.total() == total


def test_adding_indexes_merges_and_has_finds_them() -> None:
    intervals = Intervals.parse("1,5-7", 100).with_indexes([0, 2, 3, 8, 20])
    assert str(intervals) == "0-3,5-8,20"
    assert [ix for ix in range(22) if intervals.has(ix)] == [0, 1, 2, 3, 5, 6, 7, 8, 20]
    assert str(Intervals.parse("0-2", 10).merge(Intervals.parse("2-4,9", 10))) == "0-4,9"


def test_completion_index_reads_only_non_negative_decimal_annotations() -> None:
    assert completion_index(pod("3")) == 3
    assert completion_index(pod("-1")) == -1
    assert completion_index(pod("x")) == -1
    assert completion_index(pod(None)) == -1


def test_pending_indexes_skip_active_succeeded_and_failed_ones() -> None:
    active = [pod("1"), pod("4")]
    succeeded = Intervals.parse("0,2", 10)
    failed = Intervals.parse("5", 10)
    found = first_pending_indexes(
        active=active, terminating=None, succeeded=succeeded, failed=failed, count=3, completions=10
    )
    assert found == [3, 6, 7]
    assert first_pending_indexes(
        active=active, terminating=None, succeeded=succeeded, failed=None, count=10, completions=6
    ) == [3, 5]
    # With podReplacementPolicy Failed, a terminating pod still holds its index.
    assert first_pending_indexes(
        active=[],
        terminating=[pod("0")],
        succeeded=Intervals(),
        failed=None,
        count=2,
        completions=3,
    ) == [1, 2]


def test_duplicated_missing_and_out_of_range_indexes_are_removed() -> None:
    pods = [
        pod("0", name="a"),
        pod("0", name="b"),
        pod(None, name="c"),
        pod("7", name="d"),
        pod("1"),
    ]
    remove, keep = duplicated_index_pods_for_removal(pods, 5)
    # Equal in the active-pods order: the first of the two goes.
    assert sorted(p["metadata"]["name"] for p in remove) == ["a", "c", "d"]
    assert len(keep) == 2


def test_succeeded_indexes_count_only_pods_still_holding_the_finalizer() -> None:
    job = {"spec": {"completions": 4}, "status": {"completedIndexes": "0"}}
    counted = pod("2", "Succeeded")
    counted["metadata"]["finalizers"] = []
    previous, now = calculate_succeeded_indexes(job, [pod("1", "Succeeded"), counted, pod("3")])
    assert (str(previous), str(now)) == ("0", "0,1")


def test_a_replacement_carries_the_failure_counts_on() -> None:
    job: dict[str, Any] = {"spec": {"completions": 3, "backoffLimitPerIndex": 2}}
    failed = pod("1", "Failed", **{"batch.kubernetes.io/job-index-failure-count": "1"})
    assert new_index_failure_counts(job, None) == (0, 0)
    assert new_index_failure_counts(job, failed) == (2, 0)
    job["spec"]["podFailurePolicy"] = {
        "rules": [{"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]}]
    }
    failed["status"]["conditions"] = [{"type": "DisruptionTarget", "status": "True"}]
    assert new_index_failure_counts(job, failed) == (1, 1)


def test_generated_names_keep_the_index_when_the_job_name_is_long() -> None:
    assert pod_generate_name_with_index("pi", 3) == "pi-3-"
    long = pod_generate_name_with_index("x" * 70, 12)
    assert long == "x" * 54 + "-12-"
    assert len(long) == 58

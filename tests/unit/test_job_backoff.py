"""The delay before failed pods are replaced (upstream's backoff_utils_test.go cases)."""

from __future__ import annotations

import datetime
from typing import Any

import pytest

from reconcilers.controllers.job.backoff import (
    BackoffRecord,
    BackoffStore,
    pod_finished_time,
    remaining_time_for_failures,
)

T0 = datetime.datetime(2026, 1, 1, 12, tzinfo=datetime.UTC)


def at(seconds: float) -> datetime.datetime:
    return T0 + datetime.timedelta(seconds=seconds)


def stamp(when: datetime.datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def finished(seconds: float, phase: str = "Failed") -> Any:
    return {
        "metadata": {"creationTimestamp": stamp(T0)},
        "status": {
            "phase": phase,
            "containerStatuses": [
                {"name": "c", "state": {"terminated": {"finishedAt": stamp(at(seconds))}}}
            ],
        },
    }


@pytest.mark.parametrize(
    ("failures", "elapsed", "left"),
    [
        (0, 0, 0.0),
        (1, 0, 10.0),
        (1, 4, 6.0),
        (1, 11, 0.0),
        (2, 0, 20.0),
        (3, 0, 40.0),
        (6, 0, 320.0),
        (7, 0, 600.0),  # capped at upstream's MaxJobPodFailureBackOff
        (50, 100, 500.0),
    ],
)
def test_the_delay_doubles_from_ten_seconds_to_the_cap(
    failures: int, elapsed: float, left: float
) -> None:
    assert remaining_time_for_failures(at(elapsed), 10.0, 600.0, failures, T0) == pytest.approx(
        left
    )


def test_failures_after_the_last_success_count_and_a_success_resets() -> None:
    store = BackoffStore()
    record = store.new_record("ns/j", [], [finished(5), finished(2)])
    assert record == BackoffRecord("ns/j", 2, at(5))
    store.update(record)
    assert store.new_record("ns/j", [], [finished(9)]) == BackoffRecord("ns/j", 3, at(9))
    assert store.new_record("ns/j", [finished(9, "Succeeded")], []) == BackoffRecord("ns/j")
    # Only failures after the latest success count.
    mixed = store.new_record("ns/j", [finished(6, "Succeeded")], [finished(4), finished(8)])
    assert mixed == BackoffRecord("ns/j", 1, at(8))
    assert store.new_record("ns/j", [], []) == record  # nothing new: unchanged
    store.remove("ns/j")
    assert store.get("ns/j") is None


def test_a_pod_finished_when_its_containers_did_else_when_it_stopped_being_ready() -> None:
    assert pod_finished_time(finished(7)) == at(7)
    running = {
        "metadata": {"creationTimestamp": stamp(T0)},
        "status": {
            "containerStatuses": [{"name": "c", "state": {"running": {}}}],
            "conditions": [
                {"type": "Ready", "status": "False", "lastTransitionTime": stamp(at(3))}
            ],
        },
    }
    assert pod_finished_time(running) == at(3)
    deleted = {
        "metadata": {
            "creationTimestamp": stamp(T0),
            "deletionTimestamp": stamp(at(40)),
            "deletionGracePeriodSeconds": 30,
        },
        "status": {},
    }
    assert pod_finished_time(deleted) == at(10)
    assert pod_finished_time({"metadata": {"creationTimestamp": stamp(T0)}}) == T0

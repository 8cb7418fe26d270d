"""The RollingUpdate arithmetic of the DaemonSet controller: maxSurge and maxUnavailable as
ints or percentages, and which pods a step deletes and which nodes it creates on."""

from __future__ import annotations

import datetime
from typing import Any

import pytest

from reconcilers.controllers.daemonset.update import (
    allows_surge,
    find_updated_pods_on_node,
    is_pod_updated,
    plan_rolling_update,
    scaled_value,
    update_limits,
)

NOW = datetime.datetime(2026, 1, 1, 12, 0, tzinfo=datetime.UTC)
LONG_AGO = "2026-01-01T11:00:00Z"


def ds(surge: Any = None, unavailable: Any = 1, kind: str = "RollingUpdate") -> Any:
    rolling: dict[str, Any] = {}
    if surge is not None:
        rolling["maxSurge"] = surge
    if unavailable is not None:
        rolling["maxUnavailable"] = unavailable
    return {
        "metadata": {"name": "d", "namespace": "ns", "uid": "u", "annotations": {}},
        "spec": {"updateStrategy": {"type": kind, "rollingUpdate": rolling}},
    }


def pod(name: str, hash_: str, *, ready: bool = True, deleting: bool = False) -> Any:
    meta: dict[str, Any] = {"name": name, "labels": {"controller-revision-hash": hash_}}
    if deleting:
        meta["deletionTimestamp"] = LONG_AGO
    status = "True" if ready else "False"
    return {
        "metadata": meta,
        "spec": {"nodeName": name.split("-", maxsplit=1)[0]},
        "status": {
            "phase": "Running",
            "conditions": [{"type": "Ready", "status": status, "lastTransitionTime": LONG_AGO}],
        },
    }


def plan(d: Any, node_to_pods: dict[str, list[Any]], *, off: frozenset[str] = frozenset()) -> Any:
    return plan_rolling_update(
        d,
        node_to_pods,
        desired=len([n for n in node_to_pods if n not in off]),
        hash_="new",
        now=NOW,
        should_run=lambda name: name not in off,
    )


def test_int_or_percent_rounds_up_and_rejects_what_is_neither() -> None:
    assert scaled_value(2, 10) == 2
    assert scaled_value("25%", 5) == 2
    assert scaled_value("10%", 3) == 1
    assert scaled_value("0%", 3) == 0
    for bad in ("5", "x%", None):
        with pytest.raises(ValueError):
            scaled_value(bad, 3)


def test_limits_default_to_one_unavailable_when_both_are_zero() -> None:
    assert update_limits(ds(surge=0, unavailable=0), 4) == (0, 1)
    assert update_limits(ds(surge="50%", unavailable=0), 4) == (2, 0)
    assert update_limits(ds(unavailable="50%"), 5) == (0, 3)
    assert update_limits(ds(surge=0, unavailable=0), 0) == (0, 0)
    assert update_limits(ds(kind="OnDelete"), 4) == (0, 1)
    with pytest.raises(ValueError, match="MaxUnavailable"):
        update_limits(ds(unavailable=None), 4)
    assert allows_surge(ds(surge=1)) and not allows_surge(ds(surge=0))
    assert not allows_surge(ds(surge=1, kind="OnDelete"))


def test_a_pod_is_updated_by_hash_or_by_the_template_generation() -> None:
    p = pod("a-1", "h")
    assert is_pod_updated(p, "h", None)
    assert not is_pod_updated(p, "other", None)
    p["metadata"]["labels"]["pod-template-generation"] = "3"
    assert is_pod_updated(p, "other", 3)
    assert not is_pod_updated(p, "", 2)


def test_one_old_and_one_new_pod_per_node_at_most() -> None:
    d = ds()
    new, old, ok = find_updated_pods_on_node(d, [pod("a-1", "old"), pod("a-2", "new")], "new")
    assert ok and new is not None and old is not None
    assert find_updated_pods_on_node(d, [pod("a-1", "old"), pod("a-2", "old")], "new")[2] is False
    deleting = pod("a-2", "old", deleting=True)
    assert find_updated_pods_on_node(d, [pod("a-1", "old"), deleting], "new")[2] is True


def test_without_surge_old_pods_go_within_max_unavailable() -> None:
    old = {f"n{i}": [pod(f"n{i}-p", "old")] for i in range(4)}
    assert len(plan(ds(unavailable=1), old).delete) == 1
    assert len(plan(ds(unavailable=2), old).delete) == 2
    assert len(plan(ds(unavailable="50%"), old).delete) == 2
    # A new pod that is not available yet uses up the budget.
    waiting = {**old, "n0": [pod("n0-q", "new", ready=False)]}
    assert plan(ds(unavailable=1), waiting).delete == []
    # A node without a pod counts as unavailable too.
    empty = {**old, "n0": []}
    assert plan(ds(unavailable=1), empty).delete == []
    # An old pod that is not available is replaced whatever the budget.
    broken = {**old, "n1": [pod("n1-p", "old", ready=False)]}
    assert plan(ds(unavailable=1), broken).delete == ["n1-p"]
    assert plan(ds(unavailable=1), broken).create == []


def test_with_surge_new_pods_come_first_and_old_ones_go_once_they_are_available() -> None:
    old = {f"n{i}": [pod(f"n{i}-p", "old")] for i in range(4)}
    step = plan(ds(surge=1, unavailable=0), old)
    assert (len(step.create), step.delete) == (1, [])
    surging = {**old, "n0": [pod("n0-p", "old"), pod("n0-q", "new", ready=False)]}
    assert plan(ds(surge=1, unavailable=0), surging).create == []
    done = {**old, "n0": [pod("n0-p", "old"), pod("n0-q", "new")]}
    step = plan(ds(surge=1, unavailable=0), done)
    assert step.delete == ["n0-p"]
    assert len(step.create) == 1 and step.create[0] != "n0"
    # An old pod that is not available gets its replacement beside it at once.
    broken = {**old, "n1": [pod("n1-p", "old", ready=False)]}
    step = plan(ds(surge=1, unavailable=0), broken)
    assert step.create[0] == "n1" and len(step.create) == 2
    assert plan(ds(surge="50%", unavailable=0), old).create == ["n0", "n1"]


def test_with_surge_a_pod_on_a_node_that_should_not_run_it_waits_for_availability() -> None:
    pods = {f"n{i}": [pod(f"n{i}-p", "old")] for i in range(3)}
    pods["n3"] = []
    # n0 should no longer run the pod: 3 desired (n1, n2, n3), 3 available, none extra.
    step = plan(ds(surge=1, unavailable=0), pods, off=frozenset({"n0"}))
    assert "n0-p" not in step.delete
    pods["n3"] = [pod("n3-p", "new")]
    step = plan(ds(surge=1, unavailable=0), pods, off=frozenset({"n0"}))
    assert "n0-p" in step.delete

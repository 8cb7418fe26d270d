"""The DaemonSet status counts, the revision data (upstream's getPatch bytes), and the
expectations and failed-pod backoff of the DaemonSet controller."""

from __future__ import annotations

import datetime
import json
from typing import Any

from reconcilers.controllers.daemonset.podcontrol import (
    FailedPodBackoff,
    SyncExpectations,
    pod_template,
)
from reconcilers.controllers.daemonset.predicates import Placement
from reconcilers.controllers.daemonset.revisions import matches, revision_data
from reconcilers.controllers.daemonset.status import (
    calculate_status,
    oldest_first,
    status_unchanged,
)

NOW = datetime.datetime(2026, 1, 1, 12, 0, tzinfo=datetime.UTC)


def ds(min_ready: int = 0) -> Any:
    return {
        "metadata": {"name": "d", "namespace": "ns", "uid": "u", "generation": 2},
        "spec": {
            "minReadySeconds": min_ready,
            "selector": {"matchLabels": {"app": "d"}},
            "template": {
                "metadata": {"labels": {"app": "d"}},
                "spec": {
                    "nodeSelector": {"run": "yes"},
                    "containers": [{"name": "c", "image": "i", "command": ["a && b <x>"]}],
                },
            },
        },
        "status": {"observedGeneration": 1},
    }


def node(name: str, run: bool = True) -> Any:
    return {"metadata": {"name": name, "labels": {"run": "yes"} if run else {}}, "spec": {}}


def pod(
    name: str, hash_: str, ready_since: str | None, created: str = "2026-01-01T10:00:00Z"
) -> Any:
    conditions = (
        [{"type": "Ready", "status": "True", "lastTransitionTime": ready_since}]
        if ready_since
        else []
    )
    return {
        "metadata": {
            "name": name,
            "labels": {"controller-revision-hash": hash_},
            "creationTimestamp": created,
        },
        "spec": {"nodeName": name.split("-", maxsplit=1)[0]},
        "status": {"phase": "Running", "conditions": conditions},
    }


def test_the_counts_follow_upstream() -> None:
    d = ds(min_ready=60)
    nodes = [node("a"), node("b"), node("c"), node("d"), node("e", run=False)]
    node_to_pods = {
        "a": [pod("a-1", "h", "2026-01-01T11:00:00Z")],  # ready, available, updated
        "b": [pod("b-1", "old", "2026-01-01T11:59:30Z")],  # ready, not available yet
        "c": [pod("c-1", "h", None)],  # not ready
        "e": [pod("e-1", "h", "2026-01-01T11:00:00Z")],  # misscheduled
    }
    placement = Placement(d)
    counts = calculate_status(
        d, nodes, node_to_pods, hash_="h", now=NOW, should_run=lambda n: placement.decide(n)[0]
    )
    assert counts == {
        "desiredNumberScheduled": 4,
        "currentNumberScheduled": 3,
        "numberMisscheduled": 1,
        "numberReady": 2,
        "updatedNumberScheduled": 2,
        "numberAvailable": 1,
        "numberUnavailable": 3,
    }
    assert not status_unchanged(d, counts)
    stored = {**d, "status": {**counts, "observedGeneration": 2}}
    assert status_unchanged(stored, counts)


def test_the_oldest_scheduled_pod_is_the_one_judged() -> None:
    older = pod("a-1", "h", None, created="2026-01-01T09:00:00Z")
    newer = pod("a-2", "h", "2026-01-01T11:00:00Z", created="2026-01-01T10:00:00Z")
    unbound = pod("a-0", "h", None, created="2026-01-01T08:00:00Z")
    unbound["spec"] = {}
    assert [p["metadata"]["name"] for p in oldest_first([newer, unbound, older])] == [
        "a-1",
        "a-2",
        "a-0",
    ]
    twins = [pod("a-b", "h", None), pod("a-a", "h", None)]
    assert [p["metadata"]["name"] for p in oldest_first(twins)] == ["a-a", "a-b"]


def test_the_revision_data_is_the_template_with_patch_replace_as_go_writes_it() -> None:
    d = ds()
    data = revision_data(d)
    assert data.startswith(b'{"spec":{"template":{"$patch":"replace","metadata":')
    assert b"a \\u0026\\u0026 b \\u003cx\\u003e" in data  # Go's HTML escaping
    assert json.loads(data)["spec"]["template"]["spec"] == d["spec"]["template"]["spec"]
    revision = {"data": json.loads(data)}
    assert matches(revision_data(d), revision)
    d["spec"]["template"]["metadata"]["labels"]["v"] = "2"
    assert not matches(revision_data(d), revision)


def test_pods_are_made_from_the_template_with_the_revision_labels() -> None:
    d = ds()
    d["metadata"]["annotations"] = {"deprecated.daemonset.template.generation": "4"}
    template = pod_template(d, "h1")
    assert template["metadata"]["labels"] == {
        "app": "d",
        "pod-template-generation": "4",
        "controller-revision-hash": "h1",
    }
    assert len(template["spec"]["tolerations"]) == 6
    assert "tolerations" not in d["spec"]["template"]["spec"]  # the DaemonSet is untouched


def test_expectations_wait_for_every_create_and_each_deleted_pod_once() -> None:
    expectations = SyncExpectations()
    expectations.expect("ns/d", 2, ["ns/p1"])
    assert not expectations.satisfied("ns/d")
    expectations.creation_observed("ns/d")
    expectations.deletion_observed("ns/d", "ns/p1")
    expectations.deletion_observed("ns/d", "ns/p1")
    assert not expectations.satisfied("ns/d")
    expectations.creation_observed("ns/d")
    assert expectations.satisfied("ns/d")
    expired = SyncExpectations(timeout=-1.0)
    expired.expect("ns/d", 5, [])
    assert expired.satisfied("ns/d")
    expectations.expect("ns/e", 1, [])
    expectations.forget_where(lambda key: key.endswith("/e"))
    assert expectations.satisfied("ns/e")


def test_a_failed_pod_backoff_doubles_up_to_fifteen_minutes_and_expires() -> None:
    backoff = FailedPodBackoff()
    assert not backoff.in_backoff("k", 0.0)
    backoff.next("k", 0.0)
    assert backoff.delay("k") == 1.0
    assert backoff.in_backoff("k", 0.5) and not backoff.in_backoff("k", 1.5)
    backoff.next("k", 1.5)
    assert backoff.delay("k") == 2.0
    for step in range(20):
        backoff.next("k", 2.0 + step)
    assert backoff.delay("k") == 900.0
    # Quiet for twice the maximum: the next failure starts over.
    backoff.next("k", 30.0 + 1801.0)
    assert backoff.delay("k") == 1.0

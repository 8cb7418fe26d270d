"""The namespace controller's pure parts: deletion conditions, the estimate, what is deletable."""

from __future__ import annotations

import datetime
from typing import Any

from kubus.kube import ApiResource
from reconcilers.controllers.namespace.conditions import (
    CONDITION_TYPES,
    ConditionUpdater,
    ContentTotals,
    discovery_failure_message,
)
from reconcilers.controllers.namespace.controller import requeue_delay
from reconcilers.controllers.namespace.deleter import (
    ContentDeletionError,
    deletable_resources,
    estimate_for_pods,
    remaining_estimate,
)

T0 = datetime.datetime(2026, 1, 1, 12, 0, 0, tzinfo=datetime.UTC)
T1 = T0 + datetime.timedelta(minutes=3)


def by_type(status: dict[str, Any]) -> dict[str, tuple[str, str, str]]:
    return {c["type"]: (c["status"], c["reason"], c["message"]) for c in status["conditions"]}


def test_a_clean_sync_sets_all_five_ok_conditions_in_upstreams_order() -> None:
    status: dict[str, Any] = {"phase": "Terminating"}
    assert ConditionUpdater(T0).update(status)
    assert [c["type"] for c in status["conditions"]] == list(CONDITION_TYPES)
    assert by_type(status) == {
        "NamespaceDeletionDiscoveryFailure": (
            "False",
            "ResourcesDiscovered",
            "All resources successfully discovered",
        ),
        "NamespaceDeletionGroupVersionParsingFailure": (
            "False",
            "ParsedGroupVersions",
            "All legacy kube types successfully parsed",
        ),
        "NamespaceDeletionContentFailure": (
            "False",
            "ContentDeleted",
            "All content successfully deleted, may be waiting on finalization",
        ),
        "NamespaceContentRemaining": (
            "False",
            "ContentRemoved",
            "All content successfully removed",
        ),
        "NamespaceFinalizersRemaining": (
            "False",
            "ContentHasNoFinalizers",
            "All content-preserving finalizers finished",
        ),
    }
    assert {c["lastTransitionTime"] for c in status["conditions"]} == {"2026-01-01T12:00:00Z"}
    # The same outcome again changes nothing: no status write.
    assert not ConditionUpdater(T1).update(status)


def test_remaining_content_and_finalizers_are_listed_sorted_with_upstreams_words() -> None:
    totals = ContentTotals()
    totals.add("", "pods", 2, {})
    totals.add("example.com", "widgets", 3, {"example.com/hold": 3})
    totals.add("", "configmaps", 1, {"example.com/hold": 1, "a.example/x": 1})
    totals.add("apps", "replicasets", 0, {"ignored": 1})  # nothing left: not listed
    updater = ConditionUpdater(T0)
    updater.content_totals(totals)
    status: dict[str, Any] = {}
    updater.update(status)
    conditions = by_type(status)
    assert conditions["NamespaceContentRemaining"] == (
        "True",
        "SomeResourcesRemain",
        "Some resources are remaining: configmaps. has 1 resource instances, "
        "pods. has 2 resource instances, widgets.example.com has 3 resource instances",
    )
    assert conditions["NamespaceFinalizersRemaining"] == (
        "True",
        "SomeFinalizersRemain",
        "Some content in the namespace has finalizers remaining: a.example/x in 1 resource "
        "instances, example.com/hold in 4 resource instances",
    )
    assert conditions["NamespaceDeletionContentFailure"][0] == "False"


def test_a_flip_moves_the_transition_time_a_new_message_alone_does_not() -> None:
    status: dict[str, Any] = {}
    first = ConditionUpdater(T0)
    totals = ContentTotals()
    totals.add("", "configmaps", 2, {"example.com/hold": 2})
    first.content_totals(totals)
    first.update(status)

    fewer = ContentTotals()
    fewer.add("", "configmaps", 1, {"example.com/hold": 1})
    second = ConditionUpdater(T1)
    second.content_totals(fewer)
    assert second.update(status)
    remaining = next(c for c in status["conditions"] if c["type"] == "NamespaceContentRemaining")
    assert (
        remaining["message"] == "Some resources are remaining: configmaps. has 1 resource instances"
    )
    assert remaining["lastTransitionTime"] == "2026-01-01T12:00:00Z"

    assert ConditionUpdater(T1).update(status)  # everything gone: back to the ok variants
    remaining = next(c for c in status["conditions"] if c["type"] == "NamespaceContentRemaining")
    assert (remaining["status"], remaining["reason"]) == ("False", "ContentRemoved")
    assert remaining["lastTransitionTime"] == "2026-01-01T12:03:00Z"
    # Conditions of other writers are kept, in place.
    status["conditions"].insert(0, {"type": "Other", "status": "True"})
    assert not ConditionUpdater(T1).update(status)
    assert status["conditions"][0] == {"type": "Other", "status": "True"}


def test_content_failures_are_aggregated_sorted_and_discovery_names_the_groups() -> None:
    updater = ConditionUpdater(T0)
    updater.content_deletion_failed("unexpected items still remain in namespace: ns for gvr: b")
    updater.content_deletion_failed("a failure")
    updater.discovery_failed(
        discovery_failure_message({("metrics.k8s.io", "v1beta1"): "stale", ("", "v1"): "timeout"})
    )
    updater.group_version_failed('unexpected GroupVersion string: "a/b/c"')
    status: dict[str, Any] = {}
    updater.update(status)
    conditions = by_type(status)
    assert conditions["NamespaceDeletionContentFailure"] == (
        "True",
        "ContentDeletionFailed",
        "Failed to delete all resource types, 2 remaining: a failure, "
        "unexpected items still remain in namespace: ns for gvr: b",
    )
    assert conditions["NamespaceDeletionDiscoveryFailure"] == (
        "True",
        "DiscoveryFailed",
        "Discovery failed for some groups, 2 failing: unable to retrieve the complete list "
        "of server APIs: metrics.k8s.io/v1beta1: stale, v1: timeout",
    )
    assert conditions["NamespaceDeletionGroupVersionParsingFailure"] == (
        "True",
        "GroupVersionParsingFailed",
        'unexpected GroupVersion string: "a/b/c"',
    )


def test_the_pod_estimate_is_the_longest_grace_of_unfinished_pods() -> None:
    pods = [("Running", 30), ("Pending", 120), ("Succeeded", 600), ("Failed", 900), ("", None)]
    assert estimate_for_pods(pods) == 120
    assert estimate_for_pods([("Succeeded", 30)]) == 0
    assert estimate_for_pods([]) == 0


def test_the_estimate_counts_from_the_namespaces_deletion() -> None:
    assert remaining_estimate(30, T0, T0 + datetime.timedelta(seconds=29)) == 30
    assert remaining_estimate(30, T0, T0 + datetime.timedelta(seconds=30)) == 0
    assert remaining_estimate(0, T0, T0) == 0
    # kcm's requeue: half the estimate, plus one second.
    assert [requeue_delay(e) for e in (30, 15, 1)] == [16.0, 8.0, 1.0]


def test_only_deletable_namespaced_resources_and_bad_group_versions_are_reported() -> None:
    def api(group: str, version: str, name: str, namespaced: bool, *verbs: str) -> ApiResource:
        return ApiResource(group, version, name, name.title(), namespaced, frozenset(verbs))

    pods = api("", "v1", "pods", True, "list", "delete", "deletecollection")
    nodes = api("", "v1", "nodes", False, "list", "delete")
    reviews = api("authorization.k8s.io", "v1", "localsubjectaccessreviews", True, "create")
    broken = api("a/b", "v1", "things", True, "delete")
    chosen, errors = deletable_resources([pods, nodes, reviews, broken])
    assert chosen == [pods]
    assert errors == ['unexpected GroupVersion string: "a/b/v1"']


def test_several_failures_read_as_one_aggregate() -> None:
    assert str(ContentDeletionError(["one"])) == "one"
    assert str(ContentDeletionError(["one", "two"])) == "[one, two]"

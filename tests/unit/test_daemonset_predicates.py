"""Which nodes run a daemon pod: node name, node selector, required node affinity, taints
against the pod's tolerations and those the controller adds (upstream's predicates)."""

from __future__ import annotations

from typing import Any

from reconcilers.controllers.daemonset.predicates import (
    DAEMON_TOLERATIONS,
    add_daemon_tolerations,
    matches_required_node_affinity,
    node_should_run_daemon_pod,
    replace_node_name_affinity,
    target_node_name,
    tolerates,
)


def node(name: str = "n1", labels: dict[str, str] | None = None, taints: Any = None) -> Any:
    return {"metadata": {"name": name, "labels": labels or {}}, "spec": {"taints": taints or []}}


def ds(spec: dict[str, Any] | None = None) -> Any:
    return {
        "metadata": {"name": "d", "namespace": "ns", "uid": "u", "generation": 1},
        "spec": {
            "selector": {"matchLabels": {"app": "d"}},
            "template": {
                "metadata": {"labels": {"app": "d"}},
                "spec": {"containers": [{"name": "c", "image": "i"}], **(spec or {})},
            },
        },
    }


def required(*terms: Any) -> dict[str, Any]:
    return {
        "affinity": {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": list(terms)}
            }
        }
    }


def test_the_daemon_tolerations_are_added_once_in_upstreams_order() -> None:
    spec: dict[str, Any] = {}
    add_daemon_tolerations(spec)
    assert [(t["key"], t["effect"]) for t in spec["tolerations"]] == [
        ("node.kubernetes.io/not-ready", "NoExecute"),
        ("node.kubernetes.io/unreachable", "NoExecute"),
        ("node.kubernetes.io/disk-pressure", "NoSchedule"),
        ("node.kubernetes.io/memory-pressure", "NoSchedule"),
        ("node.kubernetes.io/pid-pressure", "NoSchedule"),
        ("node.kubernetes.io/unschedulable", "NoSchedule"),
    ]
    assert all(t["operator"] == "Exists" for t in spec["tolerations"])
    add_daemon_tolerations(spec)
    assert len(spec["tolerations"]) == len(DAEMON_TOLERATIONS)


def test_host_network_pods_also_tolerate_an_unavailable_network() -> None:
    spec: dict[str, Any] = {"hostNetwork": True}
    add_daemon_tolerations(spec)
    assert spec["tolerations"][-1] == {
        "key": "node.kubernetes.io/network-unavailable",
        "operator": "Exists",
        "effect": "NoSchedule",
    }


def test_a_bounded_toleration_of_the_same_taint_is_replaced_by_the_unbounded_one() -> None:
    bounded = {
        "key": "node.kubernetes.io/not-ready",
        "operator": "Exists",
        "effect": "NoExecute",
        "tolerationSeconds": 300,
    }
    other = {"key": "dedicated", "operator": "Equal", "value": "x", "effect": "NoSchedule"}
    spec: dict[str, Any] = {"tolerations": [bounded, other]}
    add_daemon_tolerations(spec)
    assert spec["tolerations"][0] == {
        "key": "node.kubernetes.io/not-ready",
        "operator": "Exists",
        "effect": "NoExecute",
    }
    assert spec["tolerations"][1] == other
    assert len(spec["tolerations"]) == 7


def test_the_node_name_affinity_replaces_only_the_required_terms() -> None:
    assert replace_node_name_affinity(None, "n1") == {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n1"]}]}
                ]
            }
        }
    }
    preferred = [{"weight": 1, "preference": {"matchExpressions": []}}]
    affinity = {
        "podAntiAffinity": {"x": 1},
        "nodeAffinity": {
            "preferredDuringSchedulingIgnoredDuringExecution": preferred,
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {"matchExpressions": [{"key": "a", "operator": "Exists"}]},
                ]
            },
        },
    }
    replaced = replace_node_name_affinity(affinity, "n2")
    assert replaced["podAntiAffinity"] == {"x": 1}
    assert replaced["nodeAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"] == preferred
    terms = replaced["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert terms["nodeSelectorTerms"] == [
        {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n2"]}]}
    ]
    # The input is left as it was.
    assert affinity["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"] != terms


def test_the_target_node_is_the_bound_one_else_the_one_the_affinity_names() -> None:
    assert target_node_name({"spec": {"nodeName": "a"}}) == "a"
    pod = {"spec": {"affinity": replace_node_name_affinity(None, "b")}}
    assert target_node_name(pod) == "b"
    assert target_node_name({"spec": {}}) is None
    two = {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["x", "y"]}]}
    assert target_node_name({"spec": required(two)}) is None


def test_tolerations_match_taints_as_upstream() -> None:
    taint = {"key": "k", "value": "v", "effect": "NoSchedule"}
    assert tolerates({"key": "k", "operator": "Equal", "value": "v"}, taint)
    assert tolerates({"key": "k", "value": "v", "effect": "NoSchedule"}, taint)
    assert not tolerates({"key": "k", "value": "w"}, taint)
    assert not tolerates({"key": "k", "operator": "Exists", "effect": "NoExecute"}, taint)
    assert tolerates({"operator": "Exists"}, taint)
    assert tolerates({"key": "k", "operator": "Exists"}, taint)
    numeric = {"key": "k", "value": "5", "effect": "NoSchedule"}
    lt = {"key": "k", "operator": "Lt", "value": "10"}
    assert not tolerates(lt, numeric)  # the gate is off by default
    assert tolerates(lt, numeric, comparison_operators=True)
    assert not tolerates({**lt, "value": "3"}, numeric, comparison_operators=True)
    assert tolerates(
        {"key": "k", "operator": "Gt", "value": "3"}, numeric, comparison_operators=True
    )
    assert not tolerates({**lt, "value": "010"}, numeric, comparison_operators=True)


def test_node_selector_and_required_affinity_terms() -> None:
    labeled = node(labels={"disk": "ssd", "cores": "8"})
    assert matches_required_node_affinity({"nodeSelector": {"disk": "ssd"}}, labeled)
    assert not matches_required_node_affinity({"nodeSelector": {"disk": "hdd"}}, labeled)
    exists = {"matchExpressions": [{"key": "disk", "operator": "Exists"}]}
    missing = {"matchExpressions": [{"key": "gpu", "operator": "Exists"}]}
    assert matches_required_node_affinity(required(missing, exists), labeled)  # ORed
    assert not matches_required_node_affinity(required(missing), labeled)
    assert not matches_required_node_affinity(required({}), labeled)  # empty: nothing
    assert not matches_required_node_affinity(required(), labeled)
    gt = {"matchExpressions": [{"key": "cores", "operator": "Gt", "values": ["4"]}]}
    lt = {"matchExpressions": [{"key": "cores", "operator": "Lt", "values": ["4"]}]}
    assert matches_required_node_affinity(required(gt), labeled)
    assert not matches_required_node_affinity(required(lt), labeled)
    not_in = {"matchExpressions": [{"key": "gpu", "operator": "NotIn", "values": ["a"]}]}
    assert matches_required_node_affinity(required(not_in), labeled)
    by_name = {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n1"]}]}
    other = {"matchFields": [{"key": "metadata.name", "operator": "NotIn", "values": ["n1"]}]}
    assert matches_required_node_affinity(required(by_name), labeled)
    assert not matches_required_node_affinity(required(other), labeled)
    # A term that does not parse matches nothing, and the other terms still count.
    bad = {"matchExpressions": [{"key": "disk", "operator": "Near", "values": ["x"]}]}
    assert not matches_required_node_affinity(required(bad), labeled)
    assert matches_required_node_affinity(required(bad, exists), labeled)
    both = {**exists, **other}
    assert not matches_required_node_affinity(required(both), labeled)  # ANDed in a term
    selector_and_affinity = {"nodeSelector": {"disk": "hdd"}, **required(exists)}
    assert not matches_required_node_affinity(selector_and_affinity, labeled)


def test_a_node_runs_the_pod_unless_name_selector_affinity_or_taints_say_otherwise() -> None:
    assert node_should_run_daemon_pod(node(), ds()) == (True, True)
    assert node_should_run_daemon_pod(node(), ds({"nodeName": "n2"})) == (False, False)
    assert node_should_run_daemon_pod(node(), ds({"nodeName": "n1"})) == (True, True)
    assert node_should_run_daemon_pod(node(), ds({"nodeSelector": {"a": "b"}})) == (False, False)
    no_schedule = [{"key": "dedicated", "value": "x", "effect": "NoSchedule"}]
    no_execute = [{"key": "dedicated", "value": "x", "effect": "NoExecute"}]
    prefer = [{"key": "dedicated", "value": "x", "effect": "PreferNoSchedule"}]
    # A pod already there may stay on a NoSchedule taint, not on a NoExecute one.
    assert node_should_run_daemon_pod(node(taints=no_schedule), ds()) == (False, True)
    assert node_should_run_daemon_pod(node(taints=no_execute), ds()) == (False, False)
    assert node_should_run_daemon_pod(node(taints=prefer), ds()) == (True, True)
    tolerated = ds({"tolerations": [{"key": "dedicated", "operator": "Exists"}]})
    assert node_should_run_daemon_pod(node(taints=no_execute), tolerated) == (True, True)


def test_the_added_tolerations_keep_daemon_pods_on_troubled_nodes() -> None:
    for key, effect in (
        ("node.kubernetes.io/not-ready", "NoExecute"),
        ("node.kubernetes.io/unreachable", "NoExecute"),
        ("node.kubernetes.io/unschedulable", "NoSchedule"),
        ("node.kubernetes.io/memory-pressure", "NoSchedule"),
        ("node.kubernetes.io/disk-pressure", "NoSchedule"),
        ("node.kubernetes.io/pid-pressure", "NoSchedule"),
    ):
        assert node_should_run_daemon_pod(node(taints=[{"key": key, "effect": effect}]), ds()) == (
            True,
            True,
        ), key
    network = node(
        taints=[{"key": "node.kubernetes.io/network-unavailable", "effect": "NoSchedule"}]
    )
    assert node_should_run_daemon_pod(network, ds()) == (False, True)
    assert node_should_run_daemon_pod(network, ds({"hostNetwork": True})) == (True, True)

"""Deployment and ReplicaSet arithmetic, checked against upstream's documented cases."""

from __future__ import annotations

import copy
import datetime
from typing import Any

import pytest

from reconcilers.controllers.deployment import util
from reconcilers.controllers.podutil import deletion_order, is_available

NOW = datetime.datetime(2026, 11, 22, 12, 0, 0, tzinfo=datetime.UTC)


def deployment(
    replicas: int, surge: Any = "25%", unavailable: Any = "25%", strategy: str = "RollingUpdate"
) -> dict[str, Any]:
    spec: dict[str, Any] = {"replicas": replicas, "strategy": {"type": strategy}}
    if strategy == "RollingUpdate":
        spec["strategy"]["rollingUpdate"] = {"maxSurge": surge, "maxUnavailable": unavailable}
    return {"spec": spec}


@pytest.mark.parametrize(
    ("surge", "unavailable", "desired", "expected"),
    [
        ("25%", "25%", 10, (3, 2)),  # surge rounds up, unavailable rounds down
        ("25%", "25%", 1, (1, 0)),
        (0, 0, 5, (0, 1)),  # both zero: one may be unavailable
        ("0%", "0%", 3, (0, 1)),
        (2, 1, 6, (2, 1)),
    ],
)
def test_fenceposts(surge: Any, unavailable: Any, desired: int, expected: tuple[int, int]) -> None:
    assert util.resolve_fenceposts(surge, unavailable, desired) == expected


def test_bad_percentages_are_errors() -> None:
    with pytest.raises(ValueError, match="not a percentage"):
        util.scaled_value("25", 10, round_up=True)


def test_max_unavailable_is_zero_for_recreate_and_clamped_to_replicas() -> None:
    assert util.max_unavailable(deployment(4, strategy="Recreate")) == 0
    assert util.max_surge(deployment(4, strategy="Recreate")) == 0
    assert util.max_unavailable(deployment(2, unavailable=5)) == 2


def test_new_replicaset_grows_within_the_surge() -> None:
    d = deployment(10, surge=3)
    new = {"spec": {"replicas": 0}}
    old = {"spec": {"replicas": 10}}
    assert util.new_rs_new_replicas(d, [old, new], new) == 3
    new["spec"]["replicas"] = 3
    assert util.new_rs_new_replicas(d, [old, new], new) == 3  # at replicas + surge already
    old["spec"]["replicas"] = 7
    assert util.new_rs_new_replicas(d, [old, new], new) == 6
    assert util.new_rs_new_replicas(deployment(4, strategy="Recreate"), [old, new], new) == 4


def test_surge_room_waits_for_the_pods_an_old_replicaset_still_has() -> None:
    d = deployment(10, surge=3)
    new = {"spec": {"replicas": 3}, "status": {"replicas": 3}}
    # Scaled down to 7, but its controller has not deleted the 3 pods yet.
    old = {"spec": {"replicas": 7}, "status": {"replicas": 10}}
    assert util.new_rs_new_replicas(d, [old, new], new) == 3
    old["status"]["replicas"] = 8
    assert util.new_rs_new_replicas(d, [old, new], new) == 5
    old["status"]["replicas"] = 7
    assert util.new_rs_new_replicas(d, [old, new], new) == 6


def test_pod_template_hash_shape_and_collisions() -> None:
    template = {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c"}]}}
    plain = util.compute_hash(template, None)
    assert set(plain) <= set("456789bcdf")  # digits through the vowel-free alphabet
    assert 1 <= len(plain) <= 10
    assert util.compute_hash(template, None) == plain
    assert len({plain, util.compute_hash(template, 0), util.compute_hash(template, 1)}) == 3


def test_templates_are_compared_without_the_hash_label_and_empty_values() -> None:
    first = {
        "metadata": {"labels": {"app": "web", "pod-template-hash": "abc"}},
        "spec": {"containers": [{"name": "c", "args": []}]},
    }
    second = {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c"}]}}
    assert util.equal_ignore_hash(first, second)
    second["spec"]["containers"][0]["image"] = "other"
    assert not util.equal_ignore_hash(first, second)


def _equal_by_the_book(first: dict[str, Any], second: dict[str, Any]) -> bool:
    """Upstream's order: copy, drop the hash label, then compare semantically."""
    first, second = copy.deepcopy(first), copy.deepcopy(second)
    for template in (first, second):
        labels = (template.get("metadata") or {}).get("labels")
        if labels:
            labels.pop("pod-template-hash", None)
    return bool(util._normalized(first) == util._normalized(second))


HASH_EDGE_TEMPLATES: list[dict[str, Any]] = [
    {},
    {"metadata": {}},
    {"metadata": {"labels": {}}},
    {"metadata": {"labels": {"pod-template-hash": "abc"}}},
    {"metadata": {"labels": {"pod-template-hash": None}}},
    {"metadata": {"labels": {"pod-template-hash": ""}}},
    {"metadata": {"labels": {"pod-template-hash": "abc"}, "annotations": {"a": "1"}}},
    {"metadata": {"labels": {"pod-template-hash": "abc", "app": "web"}}},
    {"metadata": {"labels": {"app": "web"}}},
    {"metadata": {"labels": {"app": "web"}, "annotations": {}}, "spec": {"containers": []}},
    {"metadata": {"labels": {"app": ""}}},
    {"spec": {"containers": [{"name": "c", "args": []}]}},
    {"metadata": {"labels": {"pod-template-hash": "x"}}, "spec": {"containers": [{"name": "c"}]}},
    {"metadata": None, "spec": {"containers": [{"name": "c", "env": None}]}},
]


@pytest.mark.parametrize("first", HASH_EDGE_TEMPLATES)
def test_template_comparison_matches_drop_then_normalize(first: dict[str, Any]) -> None:
    before = copy.deepcopy(first)
    for second in HASH_EDGE_TEMPLATES:
        assert util.equal_ignore_hash(first, second) == _equal_by_the_book(first, second), second
    assert first == before  # the caller's template is left as it was


def pod(
    name: str,
    *,
    node: str = "n1",
    phase: str = "Running",
    ready: bool = True,
    ready_since: datetime.datetime | None = None,
    created: str = "2026-11-22T10:00:00Z",
    cost: str | None = None,
) -> dict[str, Any]:
    annotations = {"controller.kubernetes.io/pod-deletion-cost": cost} if cost else {}
    since = (ready_since or NOW - datetime.timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "metadata": {
            "name": name,
            "uid": name,
            "creationTimestamp": created,
            "annotations": annotations,
        },
        "spec": {"nodeName": node},
        "status": {
            "phase": phase,
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True" if ready else "False",
                    "lastTransitionTime": since,
                }
            ],
        },
    }


def test_deletion_order_prefers_the_least_valuable_pods() -> None:
    pods = [
        pod("running-ready"),
        pod("unscheduled", node=""),
        pod("pending", phase="Pending", ready=False),
        pod("not-ready", ready=False),
        pod("expensive", cost="100"),
        pod("cheap", cost="-5"),
        pod("recently-ready", ready_since=NOW - datetime.timedelta(seconds=30)),
    ]
    order = [p["metadata"]["name"] for p in deletion_order(pods, {}, NOW)]
    assert order[:4] == ["unscheduled", "pending", "not-ready", "cheap"]
    assert order.index("recently-ready") < order.index("running-ready")
    assert order[-1] == "expensive"


def test_crowded_nodes_lose_pods_first() -> None:
    pods = [pod("alone", node="a"), pod("crowded", node="b")]
    order = deletion_order(pods, {"alone": 1, "crowded": 3}, NOW)
    assert [p["metadata"]["name"] for p in order] == ["crowded", "alone"]


def test_availability_waits_strictly_longer_than_min_ready_seconds() -> None:
    just_ready = pod("p", ready_since=NOW - datetime.timedelta(seconds=10))
    assert is_available(just_ready, 0, NOW)
    assert not is_available(just_ready, 10, NOW)
    assert is_available(just_ready, 9, NOW)
    assert not is_available(pod("q", ready=False), 0, NOW)


def replicaset(name: str, size: int, created: str, max_replicas: int) -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "creationTimestamp": created,
            "annotations": {util.MAX_REPLICAS: str(max_replicas)},
        },
        "spec": {"replicas": size},
    }


def sizes_after(desired: int, rss: list[dict[str, Any]]) -> dict[str, int]:
    d = deployment(desired, surge=0, unavailable=1)
    return {rs["metadata"]["name"]: size for rs, size in util.proportional_sizes(d, rss)}


@pytest.mark.parametrize(
    ("desired", "before", "after"),
    [
        (10, {"old": 3, "new": 2}, {"old": 6, "new": 4}),  # 5 -> 10
        (3, {"old": 3, "new": 2}, {"old": 2, "new": 1}),  # 5 -> 3
        (10, {"v1": 2, "v2": 3, "v3": 2}, {"v1": 3, "v2": 4, "v3": 3}),  # 7 -> 10
        (4, {"v1": 1, "v2": 1, "v3": 1}, {"v1": 1, "v2": 1, "v3": 2}),  # leftover to the newest
        (2, {"v1": 1, "v2": 1, "v3": 1}, {"v1": 0, "v2": 1, "v3": 1}),  # leftover from the oldest
    ],
)
def test_proportional_scaling_of_a_rollout_in_progress(
    desired: int, before: dict[str, int], after: dict[str, int]
) -> None:
    created = {"old": "1", "v1": "1", "v2": "2", "new": "3", "v3": "3"}
    total = sum(before.values())
    rss = [
        replicaset(name, size, f"2026-11-22T0{created[name]}:00:00Z", total)
        for name, size in before.items()
    ]
    assert sizes_after(desired, rss) == after


def _rs_at(revision: str | None, **annotations: str) -> dict[str, Any]:
    if revision is not None:
        annotations["deployment.kubernetes.io/revision"] = revision
    return {
        "metadata": {"annotations": annotations},
        "spec": {
            "template": {
                "metadata": {"labels": {"app": "web", "pod-template-hash": "abc"}},
                "spec": {"containers": [{"name": "web", "image": f"web:{revision}"}]},
            }
        },
    }


@pytest.mark.parametrize(
    ("revisions", "expected"),
    [
        (["1", "2", "3"], 2),
        (["3", "1", "2"], 2),
        (["5"], 0),
        ([], 0),
        (["2", "not-a-number", None, "7"], 2),
        (["4", "4"], 4),
    ],
)
def test_the_last_revision_is_the_one_before_the_newest(
    revisions: list[str | None], expected: int
) -> None:
    assert util.last_revision([_rs_at(r) for r in revisions]) == expected


def test_a_rollback_takes_the_template_without_its_hash_and_the_replicasets_annotations() -> None:
    deployment: dict[str, Any] = {
        "metadata": {
            "annotations": {
                "kubernetes.io/change-cause": "edit",
                "deployment.kubernetes.io/revision": "2",
                "deprecated.deployment.rollback.to": "1",
            }
        },
        "spec": {"template": {"metadata": {"labels": {"app": "web"}}, "spec": {}}},
    }
    rs = _rs_at("1", **{"kubernetes.io/change-cause": "create", "team": "a"})
    util.set_from_replicaset_template(deployment, rs)
    util.set_annotations_from_replicaset(deployment, rs)
    assert deployment["spec"]["template"]["metadata"]["labels"] == {"app": "web"}
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == "web:1"
    assert rs["spec"]["template"]["metadata"]["labels"]["pod-template-hash"] == "abc"
    assert deployment["metadata"]["annotations"] == {
        "kubernetes.io/change-cause": "create",
        "team": "a",
        "deployment.kubernetes.io/revision": "2",
        "deprecated.deployment.rollback.to": "1",
    }


def _replicaset(name: str, image: str, version: str, created: str) -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "uid": f"uid-{name}",
            "resourceVersion": version,
            "creationTimestamp": created,
        },
        "spec": {
            "template": {
                "metadata": {"labels": {"app": "web", "pod-template-hash": name}},
                "spec": {"containers": [{"name": "web", "image": image}]},
            }
        },
    }


def test_the_new_replicaset_is_the_oldest_matching_one_and_follows_template_edits() -> None:
    d = {
        "spec": {
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "web", "image": "web:2"}]},
            }
        }
    }
    old = _replicaset("web-a", "web:1", "10", "2026-11-22T10:00:00Z")
    first = _replicaset("web-b", "web:2", "11", "2026-11-22T11:00:00Z")
    second = _replicaset("web-c", "web:2", "12", "2026-11-22T12:00:00Z")
    rs_list = [second, old, first]
    assert (util.find_new_replicaset(d, rs_list) or {})["metadata"]["name"] == "web-b"
    # Somebody edits web-b's template (a new resourceVersion): it no longer matches.
    edited = copy.deepcopy(first)
    edited["metadata"]["resourceVersion"] = "13"
    edited["spec"]["template"]["spec"]["containers"][0]["image"] = "web:3"
    assert (util.find_new_replicaset(d, [second, old, edited]) or {})["metadata"]["name"] == "web-c"
    # A ReplicaSet not stored yet (no uid) is compared as it is.
    unsaved = _replicaset("web-d", "web:2", "", "2026-11-22T09:00:00Z")
    assert (util.find_new_replicaset(d, [*rs_list, unsaved]) or {})["metadata"]["name"] == "web-d"
    assert util.find_new_replicaset(d, [old]) is None

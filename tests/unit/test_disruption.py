"""The disruption controller's arithmetic and decisions, as upstream's disruption_test.go
checks them: numbers and percentages (rounded up), expected pods from the controllers' scales,
healthy pods with recent evictions, the DisruptionAllowed condition, the fail-safe, the
disruptedPods timeout and the stale DisruptionTarget condition."""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import Mapping
from typing import Any

import msgspec
import pytest

from bus.envelope import Envelope, EventType
from bus.subjects import ObjectRef, ResourceType
from kubus.kube import ApiResource, ConflictError, NotFoundError
from reconcilers.cache import ObjectCache
from reconcilers.controller import Context, Request, Result
from reconcilers.controllers.disruption import DisruptionController
from reconcilers.controllers.disruption.scale import parse_group_version
from reconcilers.controllers.disruption.status import (
    ControllerScale,
    SyncError,
    build_disrupted_pods,
    conditions_up_to_date,
    count_healthy,
    disruptions_allowed,
    expected_pod_count,
    fail_safe_status,
    label_selector_text,
    scaled_value,
    set_condition,
    stale_disruption_wait,
    status_update,
    with_disruption_target_reset,
)
from reconcilers.kinds import (
    DEPLOYMENTS,
    PODDISRUPTIONBUDGETS,
    PODS,
    REPLICASETS,
    REPLICATIONCONTROLLERS,
    STATEFULSETS,
)

NS = "default"
NOW = datetime.datetime(2026, 3, 1, 12, 0, 0, tzinfo=datetime.UTC)


def stamp(moment: datetime.datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def ago(seconds: float) -> str:
    return stamp(NOW - datetime.timedelta(seconds=seconds))


def pod(
    name: str,
    *,
    ready: bool = True,
    labels: dict[str, str] | None = None,
    owner: tuple[str, str, str] | None = None,  # apiVersion, kind, name (uid: uid-<name>)
    deleting: bool = False,
    conditions: list[dict[str, Any]] | None = None,
    phase: str = "Running",
) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": name,
        "namespace": NS,
        "uid": f"uid-{name}",
        "resourceVersion": "1",
        "generation": 1,
        "labels": {"app": "web"} if labels is None else labels,
    }
    if owner is not None:
        api_version, kind, owner_name = owner
        meta["ownerReferences"] = [
            {
                "apiVersion": api_version,
                "kind": kind,
                "name": owner_name,
                "uid": f"uid-{owner_name}",
                "controller": True,
            }
        ]
    if deleting:
        meta["deletionTimestamp"] = ago(1)
    ready_condition = {"type": "Ready", "status": "True" if ready else "False"}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": meta,
        "spec": {},
        "status": {"phase": phase, "conditions": [ready_condition, *(conditions or [])]},
    }


def pdb(
    *,
    min_available: int | str | None = None,
    max_unavailable: int | str | None = None,
    selector: dict[str, Any] | None = None,
    status: dict[str, Any] | None = None,
    generation: int = 1,
    name: str = "budget",
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "selector": {"matchLabels": {"app": "web"}} if selector is None else selector
    }
    if min_available is not None:
        spec["minAvailable"] = min_available
    if max_unavailable is not None:
        spec["maxUnavailable"] = max_unavailable
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {
            "name": name,
            "namespace": NS,
            "uid": f"uid-{name}",
            "resourceVersion": "7",
            "generation": generation,
        },
        "spec": spec,
        "status": status or {},
    }


def owner(kind_resource: ResourceType, kind: str, name: str, replicas: int, **meta: Any) -> Any:
    api_version = (
        f"{kind_resource.group}/{kind_resource.version}"
        if kind_resource.group
        else kind_resource.version
    )
    return {
        "apiVersion": api_version,
        "kind": kind,
        "metadata": {"name": name, "namespace": NS, "uid": f"uid-{name}", **meta},
        "spec": {"replicas": replicas},
    }


def run(coro: Any) -> Any:
    return asyncio.run(coro)


# --- numbers and percentages ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "total", "up", "down"),
    [(3, 10, 3, 3), ("50%", 5, 3, 2), ("10%", 3, 1, 0), ("0%", 7, 0, 0), ("100%", 4, 4, 4)],
)
def test_percentages_scale_rounding_up_as_upstream(
    value: int | str, total: int, up: int, down: int
) -> None:
    assert scaled_value(value, total, round_up=True) == up
    assert scaled_value(value, total, round_up=False) == down


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("5", "invalid value for IntOrString: invalid type: string is not a percentage"),
        (
            "x%",
            'invalid value for IntOrString: invalid value "x%": strconv.Atoi: parsing "x": '
            "invalid syntax",
        ),
    ],
)
def test_bad_int_or_percent_is_a_sync_error_in_upstream_words(value: str, message: str) -> None:
    with pytest.raises(SyncError) as raised:
        scaled_value(value, 4)
    assert str(raised.value) == message


def test_disruptions_allowed_is_never_negative_and_zero_without_expected_pods() -> None:
    assert disruptions_allowed(5, 3, 5) == 2
    assert disruptions_allowed(2, 3, 5) == 0
    assert disruptions_allowed(3, 0, 0) == 0


# --- expected pods --------------------------------------------------------------------------------


class Finder:
    """Fake finders: owner uid -> (uid the scale belongs to, scale); counts the look-ups."""

    def __init__(self, scales: Mapping[str, ControllerScale | None]) -> None:
        self.scales = scales
        self.asked: list[str] = []

    async def __call__(self, reference: Mapping[str, Any], namespace: str) -> Any:
        self.asked.append(str(reference["uid"]))
        return self.scales.get(str(reference["uid"]))


def managed(n: int, owner_name: str = "rs") -> list[dict[str, Any]]:
    return [pod(f"p{i}", owner=("apps/v1", "ReplicaSet", owner_name)) for i in range(n)]


def test_min_available_number_expects_the_pods_found_and_asks_no_controller() -> None:
    find = Finder({})
    counts = run(expected_pod_count(pdb(min_available=2), [pod("a"), pod("b"), pod("c")], find))
    assert counts == (3, 2, [])
    assert find.asked == []


def test_min_available_percentage_uses_each_controller_once() -> None:
    find = Finder({"uid-rs": ("uid-rs", 8), "uid-other": ("uid-other", 2)})
    pods = [*managed(3), *managed(1, "other")]
    expected, desired, unmanaged = run(expected_pod_count(pdb(min_available="50%"), pods, find))
    assert (expected, desired, unmanaged) == (10, 5, [])
    assert sorted(find.asked) == ["uid-other", "uid-rs"]


def test_max_unavailable_from_the_scale_rounds_the_unavailable_up() -> None:
    find = Finder({"uid-rs": ("uid-deploy", 5)})
    counts = run(expected_pod_count(pdb(max_unavailable="30%"), managed(5), find))
    assert counts == (5, 3, [])  # ceil(1.5) = 2 may be unavailable
    counts = run(expected_pod_count(pdb(max_unavailable=7), managed(5), find))
    assert counts == (5, 0, [])


def test_pods_without_a_controller_are_reported_and_left_out_of_the_sum() -> None:
    find = Finder({"uid-rs": ("uid-rs", 2)})
    pods = [*managed(2), pod("loose")]
    assert run(expected_pod_count(pdb(min_available="100%"), pods, find)) == (2, 2, ["loose"])
    assert run(expected_pod_count(pdb(max_unavailable="50%"), [pod("x")], find)) == (0, 0, ["x"])


def test_a_controller_no_finder_knows_fails_the_count() -> None:
    with pytest.raises(SyncError, match='found no controllers for pod "p0"'):
        run(expected_pod_count(pdb(max_unavailable=1), managed(1), Finder({})))


# --- the finders, from the cache, and the scale subresource --------------------------------------


def put(cache: ObjectCache, resource: ResourceType, body: dict[str, Any]) -> None:
    meta = body["metadata"]
    envelope = Envelope(
        subject="",
        sequence=1,
        event=EventType.MODIFIED,
        resource_version=str(meta.get("resourceVersion", "1")),
        uid="",
        payload=msgspec.json.encode(body),
    )
    cache.apply(0, ObjectRef(resource, meta.get("namespace"), meta["name"]), envelope)


class Events:
    def __init__(self) -> None:
        self.recorded: list[tuple[str, str, str, str]] = []

    def record(
        self, obj: dict[str, Any], event_type: str, reason: str, message: str, *, component: str
    ) -> None:
        assert component == "controllermanager"
        self.recorded.append((obj["metadata"]["name"], event_type, reason, message))

    def reasons(self) -> list[str]:
        return [reason for _, _, reason, _ in self.recorded]


DISCOVERY = {
    "/apis/example.com/v1": {
        "resources": [
            {"name": "widgets", "kind": "Widget", "namespaced": True},
            {
                "name": "widgets/scale",
                "kind": "Scale",
                "namespaced": True,
                "group": "autoscaling",
                "version": "v1",
            },
            {"name": "gadgets", "kind": "Gadget", "namespaced": True},
        ]
    }
}


class FakeKube:
    def __init__(self) -> None:
        self.documents: dict[str, Any] = dict(DISCOVERY)
        self.gets: list[str] = []
        self.writes: list[tuple[str, str, dict[str, Any]]] = []
        self.conflict = False

    async def get_document(self, path: str, *, accept: str) -> tuple[bytes, str]:
        self.gets.append(path)
        if path not in self.documents:
            raise NotFoundError(404, "NotFound", "the server could not find the requested resource")
        return msgspec.json.encode(self.documents[path]), "application/json"

    async def replace(
        self,
        resource: ApiResource,
        namespace: str | None,
        name: str,
        body: dict[str, Any],
        *,
        subresource: str | None = None,
    ) -> dict[str, Any]:
        if self.conflict:
            raise ConflictError(409, "Conflict", "the object has been modified")
        self.writes.append((resource.name, f"{name}/{subresource}", body))
        return body


def make(
    cache: ObjectCache | None = None,
    *,
    now: datetime.datetime = NOW,
    options: dict[str, Any] | None = None,
) -> tuple[DisruptionController, ObjectCache, FakeKube, Events]:
    cache = cache if cache is not None else ObjectCache()
    kube, events = FakeKube(), Events()
    apis = {
        PODDISRUPTIONBUDGETS: ApiResource(
            "policy", "v1", "poddisruptionbudgets", "PodDisruptionBudget", True, frozenset()
        ),
        PODS: ApiResource("", "v1", "pods", "Pod", True, frozenset()),
    }
    ctx = Context(
        cache=cache,
        kube=kube,  # type: ignore[arg-type]
        apis=apis,
        events=events,  # type: ignore[arg-type]
        tracer=None,
        options=options or {},
    )
    return DisruptionController(ctx, clock=lambda: now), cache, kube, events


def find(controller: DisruptionController, api_version: str, kind: str, name: str) -> Any:
    reference = {"apiVersion": api_version, "kind": kind, "name": name, "uid": f"uid-{name}"}
    return run(controller._find(reference, NS))


def test_finders_read_rcs_replicasets_deployments_and_statefulsets_from_the_cache() -> None:
    controller, cache, kube, _ = make()
    put(
        cache,
        REPLICATIONCONTROLLERS,
        owner(REPLICATIONCONTROLLERS, "ReplicationController", "rc", 3),
    )
    put(cache, REPLICASETS, owner(REPLICASETS, "ReplicaSet", "bare", 4))
    put(cache, DEPLOYMENTS, owner(DEPLOYMENTS, "Deployment", "web", 6))
    deployed = owner(REPLICASETS, "ReplicaSet", "web-1", 2)
    deployed["metadata"]["ownerReferences"] = [
        {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web", "uid": "uid-web"}
        | {"controller": True}
    ]
    put(cache, REPLICASETS, deployed)
    put(cache, STATEFULSETS, owner(STATEFULSETS, "StatefulSet", "db", 5))
    assert find(controller, "v1", "ReplicationController", "rc") == ("uid-rc", 3)
    assert find(controller, "apps/v1", "ReplicaSet", "bare") == ("uid-bare", 4)
    assert find(controller, "extensions/v1beta1", "ReplicaSet", "bare") == ("uid-bare", 4)
    # A ReplicaSet of a Deployment counts with the Deployment's scale.
    assert find(controller, "apps/v1", "ReplicaSet", "web-1") == ("uid-web", 6)
    assert find(controller, "apps/v1", "StatefulSet", "db") == ("uid-db", 5)
    assert kube.gets == []


def test_any_other_controller_is_read_through_its_scale_subresource() -> None:
    controller, _, kube, _ = make()
    kube.documents["/apis/example.com/v1/namespaces/default/widgets/w/scale"] = {
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {"name": "w", "namespace": NS, "uid": "uid-w"},
        "spec": {"replicas": 4},
    }
    assert find(controller, "example.com/v1", "Widget", "w") == ("uid-w", 4)
    # Discovery of the group version is kept: the second look is one GET of the scale.
    kube.gets.clear()
    assert find(controller, "example.com/v1", "Widget", "w") == ("uid-w", 4)
    assert kube.gets == ["/apis/example.com/v1/namespaces/default/widgets/w/scale"]


def test_a_missing_scale_is_no_controller_and_a_kind_without_one_an_error() -> None:
    controller, _, _, _ = make()
    assert find(controller, "example.com/v1", "Widget", "gone") is None
    with pytest.raises(SyncError, match=r"^gadgets\.example\.com does not implement the scale"):
        find(controller, "example.com/v1", "Gadget", "g")
    with pytest.raises(
        SyncError, match=r'^no matches for kind "Thing" in version "example.com/v1"'
    ):
        find(controller, "example.com/v1", "Thing", "t")


def test_a_scale_of_another_object_by_that_name_is_not_the_controller() -> None:
    controller, _, kube, _ = make()
    kube.documents["/apis/example.com/v1/namespaces/default/widgets/w/scale"] = {
        "metadata": {"name": "w", "uid": "uid-a-new-one"},
        "spec": {"replicas": 4},
    }
    assert find(controller, "example.com/v1", "Widget", "w") is None


def test_group_versions_parse_as_upstream() -> None:
    assert parse_group_version("v1") == ("", "v1")
    assert parse_group_version("apps/v1") == ("apps", "v1")
    with pytest.raises(SyncError, match="unexpected GroupVersion string: a/b/c"):
        parse_group_version("a/b/c")


# --- healthy pods and disruptedPods ---------------------------------------------------------------


def test_healthy_pods_are_ready_not_deleting_and_not_recently_evicted() -> None:
    pods = [pod("a"), pod("b", ready=False), pod("c", deleting=True), pod("d"), pod("e")]
    disrupted = {"d": ago(30), "e": ago(200)}
    assert count_healthy(pods, disrupted, NOW) == 2  # a, and e whose entry expired
    assert count_healthy(pods, {}, NOW) == 3


def test_disrupted_pods_keep_live_entries_and_recheck_at_the_first_expiry() -> None:
    pods = [pod("a"), pod("b"), pod("c", deleting=True), pod("old")]
    disrupted = {"a": ago(100), "b": ago(10), "c": ago(5), "gone": ago(5), "old": ago(121)}
    kept, recheck, expired = build_disrupted_pods(pods, disrupted, NOW)
    assert kept == {"a": ago(100), "b": ago(10)}
    assert recheck == NOW + datetime.timedelta(seconds=20)
    assert [p["metadata"]["name"] for p in expired] == ["old"]
    assert build_disrupted_pods(pods, None, NOW) == ({}, None, [])


# --- status and the condition ---------------------------------------------------------------------


def test_status_counts_and_the_sufficient_pods_condition() -> None:
    budget = pdb(min_available=2, generation=3)
    status = status_update(
        budget, current_healthy=3, desired_healthy=2, expected=3, disrupted={}, now=NOW
    )
    assert status is not None
    assert {k: v for k, v in status.items() if k != "conditions"} == {
        "disruptionsAllowed": 1,
        "currentHealthy": 3,
        "desiredHealthy": 2,
        "expectedPods": 3,
        "observedGeneration": 3,
    }
    assert status["conditions"] == [
        {
            "type": "DisruptionAllowed",
            "status": "True",
            "lastTransitionTime": stamp(NOW),
            "reason": "SufficientPods",
            "message": "",
            "observedGeneration": 3,
        }
    ]
    budget["status"] = status
    assert conditions_up_to_date(budget)
    later = NOW + datetime.timedelta(minutes=1)
    assert (
        status_update(
            budget, current_healthy=3, desired_healthy=2, expected=3, disrupted={}, now=later
        )
        is None
    )
    lower = status_update(
        budget, current_healthy=2, desired_healthy=2, expected=3, disrupted={}, now=later
    )
    assert lower is not None and lower["disruptionsAllowed"] == 0
    (condition,) = lower["conditions"]
    assert (condition["status"], condition["reason"]) == ("False", "InsufficientPods")
    assert condition["lastTransitionTime"] == stamp(later)


def test_a_new_generation_or_a_stale_condition_is_rewritten() -> None:
    budget = pdb(min_available=1, generation=2)
    budget["status"] = status_update(
        budget, current_healthy=1, desired_healthy=1, expected=1, disrupted={}, now=NOW
    )
    budget["metadata"]["generation"] = 3
    assert not conditions_up_to_date(budget)
    status = status_update(
        budget, current_healthy=1, desired_healthy=1, expected=1, disrupted={}, now=NOW
    )
    assert status is not None and status["observedGeneration"] == 3
    assert status["conditions"][0]["observedGeneration"] == 3


def test_fail_safe_allows_nothing_and_says_sync_failed_keeping_the_rest() -> None:
    budget = pdb(min_available="50%")
    budget["status"] = status_update(
        budget, current_healthy=4, desired_healthy=2, expected=4, disrupted={}, now=NOW
    )
    later = NOW + datetime.timedelta(seconds=5)
    status = fail_safe_status(budget, 'found no controllers for pod "x"', later)
    assert status["disruptionsAllowed"] == 0
    assert status["currentHealthy"] == 4
    (condition,) = status["conditions"]
    assert condition == {
        "type": "DisruptionAllowed",
        "status": "False",
        "lastTransitionTime": stamp(later),
        "reason": "SyncFailed",
        "message": 'found no controllers for pod "x"',
        "observedGeneration": 1,
    }
    budget["status"] = status
    assert not conditions_up_to_date(budget)  # the next good sync writes the condition again


def test_set_condition_keeps_the_transition_time_when_the_status_stays() -> None:
    first = set_condition([], {"type": "X", "status": "False", "reason": "A"}, NOW)
    later = NOW + datetime.timedelta(hours=1)
    second = set_condition(first, {"type": "X", "status": "False", "reason": "B"}, later)
    assert second[0]["lastTransitionTime"] == stamp(NOW) and second[0]["reason"] == "B"


def test_selectors_print_as_go_prints_a_label_selector() -> None:
    selector = {
        "matchLabels": {"b": "2", "a": "1"},
        "matchExpressions": [{"key": "k", "operator": "In", "values": ["x", "y"]}],
    }
    assert label_selector_text(selector) == (
        "&LabelSelector{MatchLabels:map[string]string{a: 1,b: 2,},MatchExpressions:"
        "[]LabelSelectorRequirement{LabelSelectorRequirement{Key:k,Operator:In,Values:[x y],},},}"
    )
    assert label_selector_text({}) == (
        "&LabelSelector{MatchLabels:map[string]string{},"
        "MatchExpressions:[]LabelSelectorRequirement{},}"
    )


# --- the stale DisruptionTarget condition ---------------------------------------------------------


def target(seconds_ago: float, reason: str = "EvictionByEvictionAPI") -> dict[str, Any]:
    return {
        "type": "DisruptionTarget",
        "status": "True",
        "reason": reason,
        "message": "Eviction API: evicting",
        "lastTransitionTime": ago(seconds_ago),
    }


def test_a_disruption_target_is_stale_after_the_timeout_unless_deleting_or_finished() -> None:
    assert stale_disruption_wait(pod("a", conditions=[target(30)]), NOW, 120) == 90
    assert stale_disruption_wait(pod("a", conditions=[target(300)]), NOW, 120) == 0
    assert stale_disruption_wait(pod("a", conditions=[target(30)], deleting=True), NOW, 120) is None
    assert (
        stale_disruption_wait(pod("a", conditions=[target(300)], phase="Failed"), NOW, 120) is None
    )
    by_kubelet = pod("a", conditions=[target(300, "TerminationByKubelet")])
    assert stale_disruption_wait(by_kubelet, NOW, 120) is None
    assert stale_disruption_wait(pod("a"), NOW, 120) is None


def test_the_reset_sets_false_drops_reason_and_records_the_generation() -> None:
    reset = with_disruption_target_reset(pod("a", conditions=[target(300)]), NOW)
    assert reset is not None
    condition = reset["status"]["conditions"][1]
    assert condition == {
        "type": "DisruptionTarget",
        "status": "False",
        "observedGeneration": 1,
        "lastTransitionTime": stamp(NOW),
    }


# --- the controller: requests and syncs -----------------------------------------------------------


def test_pod_changes_queue_every_matching_pdb_before_and_after() -> None:
    controller, cache, _, events = make()
    put(cache, PODDISRUPTIONBUDGETS, pdb(name="web", min_available=1))
    put(cache, PODDISRUPTIONBUDGETS, pdb(name="all", min_available=1, selector={}))
    put(cache, PODDISRUPTIONBUDGETS, pdb(name="none", min_available=1))
    cache.get(PODDISRUPTIONBUDGETS, NS, "none")["spec"].pop("selector")  # type: ignore[index]
    put(
        cache,
        PODDISRUPTIONBUDGETS,
        pdb(name="db", min_available=1, selector={"matchLabels": {"app": "db"}}),
    )
    before = pod("p")
    after = pod("p", labels={"app": "db"})
    after["metadata"]["resourceVersion"] = "2"
    names = {r.name for r in controller.requests_for(PODS, after, before)}
    assert names == {"web", "all", "db"}
    assert events.reasons() == ["MultiplePodDisruptionBudgets"]
    # An update that changes nothing a PDB reads queues nothing.
    touched = pod("p")
    touched["metadata"]["annotations"] = {"x": "y"}
    assert list(controller.requests_for(PODS, touched, before)) == []
    assert {r.name for r in controller.requests_for(PODS, None, before)} == {"web", "all"}
    assert [r.name for r in controller.requests_for(PODDISRUPTIONBUDGETS, None, pdb())] == [
        "budget"
    ]


def test_a_pod_with_a_disruption_target_is_a_request_of_its_own() -> None:
    controller, _, _, _ = make()
    flagged = pod("p", conditions=[target(10)])
    requests = list(controller.requests_for(PODS, flagged, None))
    assert requests == [Request(NS, "p", PODS)]


def test_stale_pod_sync_waits_for_the_due_time_then_writes_false() -> None:
    cache = ObjectCache()
    put(cache, PODS, pod("p", conditions=[target(10)]))
    controller, _, kube, _ = make(cache, options={"stale-pod-disruption-timeout": 3.0})
    assert run(controller.reconcile(Request(NS, "p", PODS))) == Result()
    (write,) = kube.writes
    assert write[:2] == ("pods", "p/status")
    assert write[2]["status"]["conditions"][1]["status"] == "False"
    controller, _, kube, _ = make(cache)  # the default: 2 minutes
    assert run(controller.reconcile(Request(NS, "p", PODS))) == Result(requeue_after=110.0)
    assert kube.writes == []


def test_a_sync_writes_the_status_and_requeues_when_an_eviction_entry_expires() -> None:
    cache = ObjectCache()
    for name in ("a", "b", "c"):
        put(cache, PODS, pod(name))
    status = {"disruptedPods": {"a": ago(60)}}
    put(cache, PODDISRUPTIONBUDGETS, pdb(min_available=1, status=status))
    controller, _, kube, events = make(cache)
    result = run(controller.reconcile(Request(NS, "budget")))
    assert result == Result(requeue_after=60.0)
    (write,) = kube.writes
    written = write[2]["status"]
    assert (written["currentHealthy"], written["desiredHealthy"]) == (2, 1)
    assert (written["expectedPods"], written["disruptionsAllowed"]) == (3, 1)
    assert written["disruptedPods"] == {"a": ago(60)}
    assert write[2]["metadata"]["resourceVersion"] == "7"
    assert events.recorded == []


def test_no_pods_and_unmanaged_pods_are_events() -> None:
    cache = ObjectCache()
    put(cache, PODDISRUPTIONBUDGETS, pdb(min_available="50%"))
    controller, _, kube, events = make(cache)
    run(controller.reconcile(Request(NS, "budget")))
    assert events.recorded == [("budget", "Normal", "NoPods", "No matching pods found")]
    put(cache, PODS, pod("loose"))
    events.recorded.clear()
    run(controller.reconcile(Request(NS, "budget")))
    assert events.reasons() == ["UnmanagedPods"]
    assert (
        "(selector: &LabelSelector{MatchLabels:map[string]string{app: web,}"
        in (events.recorded[0][3])
    )
    status = kube.writes[-1][2]["status"]
    assert (status["expectedPods"], status["disruptionsAllowed"]) == (0, 0)
    assert status["conditions"][0]["reason"] == "InsufficientPods"


def test_a_failed_count_is_an_event_and_the_fail_safe_status() -> None:
    cache = ObjectCache()
    put(cache, PODS, pod("p", owner=("apps/v1", "ReplicaSet", "missing")))
    put(cache, PODDISRUPTIONBUDGETS, pdb(max_unavailable=1))
    controller, _, kube, events = make(cache)
    kube.documents["/apis/apps/v1"] = {
        "resources": [
            {"name": "replicasets", "kind": "ReplicaSet", "namespaced": True},
            {
                "name": "replicasets/scale",
                "kind": "Scale",
                "namespaced": True,
                "group": "autoscaling",
                "version": "v1",
            },
        ]
    }
    assert run(controller.reconcile(Request(NS, "budget"))) == Result()
    assert events.recorded == [
        (
            "budget",
            "Warning",
            "CalculateExpectedPodCountFailed",
            'Failed to calculate the number of expected pods: found no controllers for pod "p"',
        )
    ]
    status = kube.writes[-1][2]["status"]
    assert status["disruptionsAllowed"] == 0
    condition = status["conditions"][0]
    assert (condition["status"], condition["reason"]) == ("False", "SyncFailed")
    assert condition["message"] == 'found no controllers for pod "p"'


def test_a_conflict_is_retried_without_the_fail_safe() -> None:
    cache = ObjectCache()
    put(cache, PODS, pod("p"))
    put(cache, PODDISRUPTIONBUDGETS, pdb(min_available=1))
    controller, _, kube, _ = make(cache)
    kube.conflict = True
    with pytest.raises(ConflictError):
        run(controller.reconcile(Request(NS, "budget")))


def test_an_expired_eviction_entry_is_dropped_with_a_not_deleted_event() -> None:
    cache = ObjectCache()
    put(cache, PODS, pod("a"))
    put(
        cache, PODDISRUPTIONBUDGETS, pdb(min_available=1, status={"disruptedPods": {"a": ago(500)}})
    )
    controller, _, kube, events = make(cache)
    assert run(controller.reconcile(Request(NS, "budget"))) == Result()
    assert events.recorded == [
        (
            "a",
            "Warning",
            "NotDeleted",
            "Pod was expected by PDB default/budget to be deleted but it wasn't",
        )
    ]
    status = kube.writes[-1][2]["status"]
    assert "disruptedPods" not in status and status["currentHealthy"] == 1

"""The garbage collector's pure logic: the graph index, which changes make requests, how
references are classified and what is done with an object."""

from __future__ import annotations

import asyncio
import copy
import time
from typing import Any

import msgspec
import pytest

from bus.envelope import Envelope, EventType
from bus.subjects import ObjectRef, ResourceType
from kubus.kube import ApiResource, Discovery
from reconcilers.cache import ObjectCache
from reconcilers.controller import Request
from reconcilers.controllers.garbagecollector.controller import parse_bool
from reconcilers.controllers.garbagecollector.deletion import (
    Action,
    Decision,
    Policy,
    decide,
)
from reconcilers.controllers.garbagecollector.graph import references_diff, requests_for
from reconcilers.controllers.garbagecollector.owners import (
    AbsentOwners,
    Classified,
    OwnerState,
    state_of_owner,
)
from reconcilers.controllers.garbagecollector.restmapper import (
    RestMapper,
    UnknownResourceError,
    deletable,
)

PODS = ResourceType("", "v1", "pods")
REPLICASETS = ResourceType("apps", "v1", "replicasets")
CLUSTERROLES = ResourceType("rbac.authorization.k8s.io", "v1", "clusterroles")
CONFIGMAPS = ResourceType("", "v1", "configmaps")


def obj(
    api_version: str,
    kind: str,
    name: str,
    uid: str,
    *,
    namespace: str | None = "ns",
    owners: list[dict[str, Any]] | None = None,
    rv: int = 1,
    **meta: Any,
) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name, "uid": uid, "resourceVersion": str(rv), **meta}
    if namespace is not None:
        metadata["namespace"] = namespace
    if owners:
        metadata["ownerReferences"] = owners
    return {"apiVersion": api_version, "kind": kind, "metadata": metadata}


def ref_to(owner: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "apiVersion": owner["apiVersion"],
        "kind": owner["kind"],
        "name": owner["metadata"]["name"],
        "uid": owner["metadata"]["uid"],
        **extra,
    }


def envelope(body: dict[str, Any] | None, *, rv: int, deleted: bool = False) -> Envelope:
    return Envelope(
        subject="",
        sequence=rv,
        event=EventType.DELETED if deleted else EventType.MODIFIED,
        resource_version=str(rv),
        uid="",
        payload=msgspec.json.encode(body or {}),
    )


def put(
    cache: ObjectCache, resource: ResourceType, body: dict[str, Any], partition: int = 0
) -> Any:
    meta = body["metadata"]
    ref = ObjectRef(resource, meta.get("namespace"), meta["name"])
    return cache.apply(partition, ref, envelope(body, rv=int(meta["resourceVersion"])))


def delete(cache: ObjectCache, resource: ResourceType, body: dict[str, Any], rv: int) -> Any:
    meta = body["metadata"]
    ref = ObjectRef(resource, meta.get("namespace"), meta["name"])
    return cache.apply(0, ref, envelope(body, rv=rv, deleted=True))


RS = obj("apps/v1", "ReplicaSet", "web-1", "rs-uid")
ROLE = obj("rbac.authorization.k8s.io/v1", "ClusterRole", "admin-x", "role-uid", namespace=None)


def pod(name: str = "web-1-a", *, rv: int = 1, **meta: Any) -> dict[str, Any]:
    return obj(
        "v1",
        "Pod",
        name,
        f"{name}-uid",
        owners=[ref_to(RS, controller=True, blockOwnerDeletion=True)],
        rv=rv,
        **meta,
    )


# --- the cache's graph indexes --------------------------------------------------------------


def test_the_cache_indexes_dependents_by_every_owner_uid_and_objects_by_uid() -> None:
    cache = ObjectCache()
    put(cache, REPLICASETS, RS)
    put(cache, CLUSTERROLES, ROLE, partition=-1)
    cm = obj("v1", "ConfigMap", "cm", "cm-uid", owners=[ref_to(RS), ref_to(ROLE)])
    put(cache, CONFIGMAPS, cm)
    put(cache, PODS, pod())
    assert {ref.name for ref, _ in cache.dependents_of("rs-uid")} == {"cm", "web-1-a"}
    assert [ref.name for ref, _ in cache.dependents_of("role-uid")] == ["cm"]
    found = cache.by_uid("role-uid")
    assert found is not None and found[0] == ObjectRef(CLUSTERROLES, None, "admin-x")

    # A reference removed moves the object out of that owner's dependents.
    changed = copy.deepcopy(cm)
    changed["metadata"]["ownerReferences"] = [ref_to(ROLE)]
    changed["metadata"]["resourceVersion"] = "2"
    put(cache, CONFIGMAPS, changed)
    assert [ref.name for ref, _ in cache.dependents_of("rs-uid")] == ["web-1-a"]
    # Deleted, and a partition dropped: gone from every index.
    delete(cache, PODS, pod(), rv=3)
    assert list(cache.dependents_of("rs-uid")) == []
    cache.drop_partition(0)
    assert list(cache.dependents_of("role-uid")) == []
    assert cache.by_uid("cm-uid") is None and cache.by_uid("rs-uid") is None
    assert cache.by_uid("role-uid") is not None  # cluster-scoped: kept


# --- which changes make requests ------------------------------------------------------------


def _requests(cache: ObjectCache, resource: ResourceType, new: Any, old: Any) -> list[Request]:
    return list(requests_for(cache, resource, new, old))


def test_a_pod_status_update_makes_no_request_nor_does_a_pod_with_its_owner_cached() -> None:
    cache = ObjectCache()
    put(cache, REPLICASETS, RS)
    old = pod()
    put(cache, PODS, old)
    assert _requests(cache, PODS, old, None) == []  # new, its owner cached: nothing to check
    new = pod(rv=2)
    new["status"] = {"phase": "Running"}
    assert _requests(cache, PODS, new, old) == []
    graceful = pod(rv=3, deletionTimestamp="2025-01-01T00:00:00Z")
    assert _requests(cache, PODS, graceful, new) == []


def test_an_object_whose_owner_is_not_cached_or_named_wrongly_is_looked_at() -> None:
    cache = ObjectCache()
    orphan = pod()
    assert _requests(cache, PODS, orphan, None) == [Request("ns", "web-1-a", PODS)]
    put(cache, REPLICASETS, RS)
    wrong_kind = obj("v1", "Pod", "p", "p-uid", owners=[{**ref_to(RS), "kind": "Deployment"}])
    assert _requests(cache, PODS, wrong_kind, None) == [Request("ns", "p", PODS)]
    elsewhere = obj("v1", "Pod", "q", "q-uid", namespace="other", owners=[ref_to(RS)])
    assert _requests(cache, PODS, elsewhere, None) == [Request("other", "q", PODS)]


def test_an_owner_deleted_asks_about_its_dependents_and_a_dependent_about_waiting_owners() -> None:
    cache = ObjectCache()
    put(cache, REPLICASETS, RS)
    put(cache, PODS, pod())
    delete(cache, REPLICASETS, RS, rv=2)
    assert _requests(cache, REPLICASETS, None, RS) == [Request("ns", "web-1-a", PODS)]

    waiting = copy.deepcopy(RS)
    waiting["metadata"].update(
        deletionTimestamp="2025-01-01T00:00:00Z", finalizers=["foregroundDeletion"], uid="w"
    )
    waiting["metadata"]["resourceVersion"] = "5"
    put(cache, REPLICASETS, waiting)
    blocker = obj("v1", "Pod", "b", "b-uid", owners=[ref_to(waiting, blockOwnerDeletion=True)])
    put(cache, PODS, blocker)
    delete(cache, PODS, blocker, rv=6)
    assert _requests(cache, PODS, None, blocker) == [Request("ns", "web-1", REPLICASETS)]


def test_deletion_starting_with_a_finalizer_asks_about_the_owner_and_its_dependents() -> None:
    cache = ObjectCache()
    put(cache, CLUSTERROLES, ROLE, partition=-1)
    cm = obj("v1", "ConfigMap", "cm", "cm-uid", owners=[ref_to(ROLE)])
    put(cache, CONFIGMAPS, cm)
    for finalizer in ("orphan", "foregroundDeletion"):
        deleting = copy.deepcopy(ROLE)
        deleting["metadata"].update(
            deletionTimestamp="2025-01-01T00:00:00Z", finalizers=[finalizer], resourceVersion="2"
        )
        assert _requests(cache, CLUSTERROLES, deleting, ROLE) == [
            Request(None, "admin-x", CLUSTERROLES),
            Request("ns", "cm", CONFIGMAPS),
        ]
        # Seen again (a later update, a replay is old=None): only a start counts, or a replay.
        assert _requests(cache, CLUSTERROLES, deleting, deleting) == []


def test_a_blocking_reference_removed_from_a_dependent_asks_about_its_waiting_owner() -> None:
    cache = ObjectCache()
    waiting = obj(
        "apps/v1",
        "ReplicaSet",
        "web-1",
        "rs-uid",
        deletionTimestamp="2025-01-01T00:00:00Z",
        finalizers=["foregroundDeletion"],
    )
    put(cache, REPLICASETS, waiting)
    before = pod()
    after = pod(rv=2)
    after["metadata"]["ownerReferences"][0]["blockOwnerDeletion"] = False
    assert Request("ns", "web-1", REPLICASETS) in _requests(cache, PODS, after, before)


def test_references_diff_matches_by_uid() -> None:
    a, b, c = {"uid": "a"}, {"uid": "b"}, {"uid": "c"}
    added, removed, changed = references_diff([a, b], [{"uid": "b", "x": 1}, c])
    assert (added, removed, changed) == ([c], [a], [(b, {"uid": "b", "x": 1})])


# --- classification and decisions -----------------------------------------------------------


@pytest.mark.parametrize(
    ("meta", "state"),
    [
        ({}, OwnerState.SOLID),
        ({"finalizers": ["foregroundDeletion"]}, OwnerState.SOLID),  # not being deleted
        ({"deletionTimestamp": "t"}, OwnerState.SOLID),
        ({"deletionTimestamp": "t", "finalizers": ["foregroundDeletion"]}, OwnerState.WAITING),
        ({"deletionTimestamp": "t", "finalizers": ["orphan"]}, OwnerState.ORPHANING),
        (
            {"deletionTimestamp": "t", "finalizers": ["foregroundDeletion", "orphan"]},
            OwnerState.ORPHANING,
        ),
    ],
)
def test_an_owner_present_is_solid_unless_deleting_with_a_gc_finalizer(
    meta: dict[str, Any], state: OwnerState
) -> None:
    assert state_of_owner({"metadata": meta}) is state


def _classified(**groups: list[str]) -> Classified:
    return Classified(**{name: tuple({"uid": u} for u in uids) for name, uids in groups.items()})


ITEM = obj("v1", "ConfigMap", "cm", "cm-uid")


def test_solid_owners_keep_an_object_and_dangling_and_waiting_references_go() -> None:
    assert decide(
        ITEM, _classified(solid=["s"]), has_dependents=True, a_dependent_deletes_dependents=False
    ) == Decision(Action.NOTHING)
    assert decide(
        ITEM,
        _classified(solid=["s"], dangling=["d"], waiting=["w"]),
        has_dependents=False,
        a_dependent_deletes_dependents=False,
    ) == Decision(Action.REMOVE_REFERENCES, ("d", "w"))


def test_an_orphaning_owner_is_let_go_and_never_causes_a_deletion() -> None:
    assert decide(
        ITEM,
        _classified(orphaning=["o"], dangling=["d"]),
        has_dependents=False,
        a_dependent_deletes_dependents=False,
    ) == Decision(Action.REMOVE_REFERENCES, ("o",))


@pytest.mark.parametrize(
    ("finalizers", "policy"),
    [
        ([], Policy.BACKGROUND),
        (["orphan"], Policy.ORPHAN),
        (["foregroundDeletion"], Policy.FOREGROUND),
    ],
)
def test_garbage_is_deleted_with_the_policy_its_own_finalizers_ask_for(
    finalizers: list[str], policy: Policy
) -> None:
    item = obj("v1", "ConfigMap", "cm", "cm-uid", finalizers=finalizers)
    assert decide(
        item, _classified(dangling=["d"]), has_dependents=True, a_dependent_deletes_dependents=False
    ) == Decision(Action.DELETE, policy=policy)


def test_blocking_a_waiting_owner_with_dependents_of_its_own_means_the_foreground() -> None:
    waiting = _classified(waiting=["w"], dangling=["d"])
    assert decide(
        ITEM, waiting, has_dependents=True, a_dependent_deletes_dependents=False
    ) == Decision(Action.DELETE, policy=Policy.FOREGROUND)
    assert decide(
        ITEM, waiting, has_dependents=True, a_dependent_deletes_dependents=True
    ) == Decision(Action.DELETE, policy=Policy.FOREGROUND, unblock_first=True)
    assert decide(
        ITEM, waiting, has_dependents=False, a_dependent_deletes_dependents=False
    ) == Decision(Action.DELETE, policy=Policy.BACKGROUND)


def test_absent_owners_are_remembered_in_a_bounded_lru() -> None:
    absent = AbsentOwners(size=2)
    keys = [("v1", "ConfigMap", name, name, "ns") for name in "abc"]
    absent.add(keys[0])
    absent.add(keys[1])
    assert absent.has(keys[0])  # refreshed: b is now the oldest
    absent.add(keys[2])
    assert absent.has(keys[0]) and absent.has(keys[2]) and not absent.has(keys[1])


# --- discovery and flags --------------------------------------------------------------------


def _api(group: str, version: str, name: str, kind: str, *verbs: str) -> ApiResource:
    return ApiResource(group, version, name, kind, True, frozenset(verbs))


def test_deletable_resources_need_delete_list_watch_and_events_are_ignored() -> None:
    full = ("delete", "list", "watch", "get")
    apis = (
        _api("", "v1", "configmaps", "ConfigMap", *full),
        _api("", "v1", "events", "Event", *full),
        _api("events.k8s.io", "v1", "events", "Event", *full),
        _api("authorization.k8s.io", "v1", "localsubjectaccessreviews", "X", "create"),
        _api("apps", "v1", "deployments", "Deployment", *full),
    )
    discovery = Discovery(resources={(a.group, a.version, a.name): a for a in apis}, preferred=apis)
    assert [a.name for a in deletable(discovery)] == ["configmaps", "deployments"]
    mapper = RestMapper(kube=None)  # type: ignore[arg-type]  # load() only: no requests
    mapper.load(discovery)
    found = mapper.find("apps/v1", "Deployment")
    assert found is not None and found.cached == ResourceType("apps", "v1", "deployments")
    assert mapper.find("apps/v1beta1", "Deployment") is None
    assert mapper.deletable_api(ResourceType("", "v1", "events")) is None


def test_a_resource_discovery_has_not_shown_yet_is_retried_never_skipped() -> None:
    """A CRD's objects can reach the bus before the mapper's last refresh knew the CRD (the
    upstream e2e "cascading deletion of custom resources" caught a silent skip here)."""
    configmaps = _api("", "v1", "configmaps", "ConfigMap", "delete", "list", "watch")
    reviews = _api("authorization.k8s.io", "v1", "localsubjectaccessreviews", "X", "create")
    discovery = Discovery(
        resources={(a.group, a.version, a.name): a for a in (configmaps, reviews)},
        preferred=(configmaps, reviews),
    )
    mapper = RestMapper(kube=None)  # type: ignore[arg-type]  # refreshed just now: no requests
    mapper.load(discovery)
    mapper._refreshed = time.monotonic()
    check = mapper.deletable_or_unknown
    assert asyncio.run(check(ResourceType("", "v1", "configmaps"))) == configmaps
    served_not_deletable = ResourceType("authorization.k8s.io", "v1", "localsubjectaccessreviews")
    assert asyncio.run(check(served_not_deletable)) is None
    with pytest.raises(UnknownResourceError, match=r"example\.com/v1/widgets"):
        asyncio.run(check(ResourceType("example.com", "v1", "widgets")))


def test_enable_garbage_collector_reads_booleans_as_go_does() -> None:
    assert parse_bool("false") is False and parse_bool("T") is True
    with pytest.raises(ValueError, match="true or false"):
        parse_bool("yes")

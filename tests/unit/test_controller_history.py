"""The ControllerRevision history shared by the StatefulSet and DaemonSet controllers:
kcm's revision bytes and names (vectors computed by kcm v1.36.3's own Go code), equality,
order, the owned-revision listing, and the writes (collisions, rollback, adopt, release)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest

from kubus.kube import ConflictError, InvalidError
from reconcilers.controllers.history import (
    CONTROLLER_REVISION_HASH_LABEL,
    History,
    RevisionOwnedError,
    apply_template_revision,
    equal_revision,
    find_equal_revisions,
    hash_revision,
    new_revision,
    next_revision,
    owned_revisions,
    revision_bytes,
    revision_name,
    sort_revisions,
    template_patch,
)
from reconcilers.kinds import CONTROLLERREVISIONS, Object
from reconcilers.selectors import Selector
from tests.unit.statefulset_fixtures import REVISION_API, STS_API, FakeKube, cache_of

T = TypeVar("T")
CASES = json.loads(
    (Path(__file__).parent / "data" / "statefulset_revision_cases.json").read_text()
)["cases"]


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coroutine)


def owner(name: str = "web", uid: str = "set-1") -> Object:
    return {
        "metadata": {"name": name, "namespace": "shop", "uid": uid},
        "spec": {"template": {"metadata": {"labels": {"app": "web"}}, "spec": {"x": 1}}},
    }


def revision(
    name: str, number: int, data: Any = None, *, created: str = "", controller: str | None = None
) -> Object:
    meta: Object = {"name": name, "namespace": "shop", "uid": f"uid-{name}"}
    meta["labels"] = {"app": "web"}
    if created:
        meta["creationTimestamp"] = created
    if controller is not None:
        meta["ownerReferences"] = [{"kind": "StatefulSet", "uid": controller, "controller": True}]
    return {"metadata": meta, "revision": number, "data": data if data is not None else {"n": name}}


# --- kcm's bytes and names ------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=[c["revisionName"] for c in CASES])
def test_revision_bytes_and_name_are_kcms(case: Object) -> None:
    sts = case["statefulSet"]
    data = template_patch(sts)
    assert revision_bytes(data).decode() == case["data"]
    collision_count = (sts.get("status") or {}).get("collisionCount") or 0
    made = new_revision(
        sts,
        STS_API,
        sts["spec"]["template"]["metadata"]["labels"],
        data,
        revision=1,
        collision_count=collision_count,
    )
    assert made["metadata"]["name"] == case["revisionName"]
    assert hash_revision(data, None) == case["hashWithoutCollisionCount"]
    # Parsed back from the apiserver's JSON, the data hashes the same.
    assert hash_revision(json.loads(case["data"]), None) == case["hashWithoutCollisionCount"]


def test_new_revision_is_labelled_owned_and_named_after_its_owner() -> None:
    made = new_revision(
        owner(), STS_API, {"app": "web"}, {"spec": {}}, revision=3, collision_count=None
    )
    hash_ = hash_revision({"spec": {}}, None)
    assert made["metadata"]["name"] == f"web-{hash_}"
    assert made["metadata"]["labels"] == {"app": "web", CONTROLLER_REVISION_HASH_LABEL: hash_}
    assert made["metadata"]["ownerReferences"] == [
        {
            "apiVersion": "apps/v1",
            "kind": "StatefulSet",
            "name": "web",
            "uid": "set-1",
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    assert made["revision"] == 3


def test_the_collision_count_changes_the_hash_and_long_prefixes_are_cut() -> None:
    assert hash_revision({"a": 1}, 0) != hash_revision({"a": 1}, 1)
    assert hash_revision({"a": 1}, None) != hash_revision({"a": 1}, 0)
    assert revision_name("x" * 300, "abc") == "x" * 223 + "-abc"


def test_bytes_follow_go_json_marshal() -> None:
    assert revision_bytes({"b": [1, 2.5, None, True], "a": "<&>"}) == (
        b'{"a":"\\u003c\\u0026\\u003e","b":[1,2.5,null,true]}'
    )
    assert revision_bytes({"f": 1.0, "g": 1.5e-5, "h": 1e21, "i": 1e-7}) == (
        b'{"f":1,"g":0.000015,"h":1e+21,"i":1e-07}'
    )
    assert revision_bytes("\x08\x0c\n\u2028é") == '"\\u0008\\u000c\\n\\u2028é"'.encode()


def test_the_template_patch_round_trips() -> None:
    sts = owner()
    data = template_patch(sts)
    assert data == {"spec": {"template": {**sts["spec"]["template"], "$patch": "replace"}}}
    other = {**owner(), "spec": {"template": {"spec": {"y": 2}}, "replicas": 4}}
    restored = apply_template_revision(other, {"data": data})
    assert restored["spec"] == {"template": sts["spec"]["template"], "replicas": 4}
    assert other["spec"]["template"] == {"spec": {"y": 2}}  # the owner is not changed


# --- equality and order -----------------------------------------------------------------------


def test_equality_is_by_data() -> None:
    one, same, other = revision("a", 1, {"x": 1}), revision("b", 2, {"x": 1}), revision("c", 3)
    assert equal_revision(one, same)
    assert not equal_revision(one, other)
    assert equal_revision(None, None)
    assert not equal_revision(one, None)
    assert find_equal_revisions([other, one, same], same) == [one, same]


def test_sorting_is_by_revision_then_creation_then_name() -> None:
    early = revision("z", 2, created="2026-01-01T00:00:00Z")
    late = revision("a", 2, created="2026-01-02T00:00:00Z")
    tie_b, tie_a = revision("b", 5), revision("a", 5)
    first = revision("q", 1)
    ordered = sort_revisions([tie_b, late, first, tie_a, early])
    assert [r["metadata"]["name"] for r in ordered] == ["q", "z", "a", "a", "b"]
    assert ordered[3] is tie_a
    assert next_revision(ordered) == 6
    assert next_revision([]) == 1


def test_owned_revisions_are_the_owners_and_the_matching_orphans() -> None:
    cache = cache_of(
        (CONTROLLERREVISIONS, revision("mine", 1, controller="set-1")),
        (CONTROLLERREVISIONS, revision("orphan", 2)),
        (CONTROLLERREVISIONS, revision("theirs", 3, controller="set-2")),
        (
            CONTROLLERREVISIONS,
            {**revision("unlabelled", 4), "metadata": {"name": "unlabelled", "uid": "u"}},
        ),
    )
    found = owned_revisions(cache, owner(), Selector.parse({"matchLabels": {"app": "web"}}))
    assert sorted(r["metadata"]["name"] for r in found) == ["mine", "orphan"]


# --- writes -----------------------------------------------------------------------------------


def test_create_bumps_the_collision_count_until_the_name_is_free() -> None:
    kube = FakeKube()
    sts = owner()
    data = template_patch(sts)
    made = new_revision(sts, STS_API, {"app": "web"}, data, revision=1, collision_count=0)
    taken = revision_name("web", hash_revision(data, 0))
    kube.objects[("controllerrevisions", "shop", taken)] = revision(taken, 1, {"other": True})
    created, count = run(History(kube, REVISION_API).create(sts, made, 0))
    assert count == 1
    assert created["metadata"]["name"] == revision_name("web", hash_revision(data, 1))
    assert [c.verb for c in kube.calls] == ["create", "get", "create"]


def test_create_returns_an_existing_revision_with_the_same_data() -> None:
    kube = FakeKube()
    sts = owner()
    data = template_patch(sts)
    made = new_revision(sts, STS_API, {"app": "web"}, data, revision=1, collision_count=0)
    name = made["metadata"]["name"]
    kube.objects[("controllerrevisions", "shop", name)] = revision(
        name, 7, json.loads(revision_bytes(data))
    )
    existing, count = run(History(kube, REVISION_API).create(sts, made, 0))
    assert count == 0
    assert existing["revision"] == 7


def test_update_revision_renumbers_and_retries_a_conflict() -> None:
    kube = FakeKube()
    old = revision("web-1", 1)
    kube.objects[("controllerrevisions", "shop", "web-1")] = {
        **old,
        "metadata": {**old["metadata"], "resourceVersion": "5"},
    }
    stale = {**old, "metadata": {**old["metadata"], "resourceVersion": "4"}}
    updated = run(History(kube, REVISION_API).update_revision(stale, 3))
    assert updated["revision"] == 3
    assert [c.verb for c in kube.calls] == ["replace", "get", "replace"]
    assert run(History(kube, REVISION_API).update_revision(updated, 3)) == updated


def test_update_revision_gives_up_after_repeated_conflicts() -> None:
    kube = FakeKube(refuse={("replace", "web-1"): ConflictError(409, "Conflict", "modified")})
    kube.objects[("controllerrevisions", "shop", "web-1")] = revision("web-1", 1)
    with pytest.raises(ConflictError):
        run(History(kube, REVISION_API).update_revision(revision("web-1", 1), 2))
    assert len(kube.writes("replace")) == 4


def test_adopt_and_release_send_upstreams_patches() -> None:
    kube = FakeKube()
    orphan = revision("web-1", 1)
    kube.objects[("controllerrevisions", "shop", "web-1")] = orphan
    history = History(kube, REVISION_API)
    run(history.adopt(owner(), STS_API, orphan))
    run(history.release(owner(), orphan))
    adopt, release = kube.writes("patch")
    assert adopt.patch_type == release.patch_type == "strategic"
    assert adopt.body == {
        "metadata": {
            "ownerReferences": [
                {
                    "apiVersion": "apps/v1",
                    "kind": "StatefulSet",
                    "name": "web",
                    "uid": "set-1",
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
            "uid": "uid-web-1",
        }
    }
    assert release.body == {
        "metadata": {"uid": "uid-web-1", "ownerReferences": [{"$patch": "delete", "uid": "set-1"}]}
    }
    with pytest.raises(RevisionOwnedError):
        run(history.adopt(owner(), STS_API, revision("web-2", 1, controller="set-9")))


def test_release_of_a_gone_or_changed_revision_is_no_error() -> None:
    kube = FakeKube(refuse={("patch", "changed"): InvalidError(422, "Invalid", "uid mismatch")})
    kube.objects[("controllerrevisions", "shop", "changed")] = revision("changed", 1)
    history = History(kube, REVISION_API)
    assert run(history.release(owner(), revision("gone", 1))) is None
    assert run(history.release(owner(), revision("changed", 1))) is None


def test_delete_removes_the_revision() -> None:
    kube = FakeKube()
    kube.objects[("controllerrevisions", "shop", "web-1")] = revision("web-1", 1)
    run(History(kube, REVISION_API).delete(revision("web-1", 1)))
    assert not kube.objects

"""Claiming children as kube-controller-manager's ControllerRefManager does: adopt, release,
keep or ignore, and the patches it sends. Pure logic: the apiserver is a fake that records the
patches and answers the owner's live read; the integration tests run it against the real one."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import msgspec
import pytest

from bus.envelope import Envelope, EventType
from bus.subjects import ObjectRef, ResourceType
from kubus.kube import ApiResource, ConflictError, InvalidError, KubeApiError, NotFoundError
from reconcilers.cache import ObjectCache
from reconcilers.kinds import DEPLOYMENTS, PODS, REPLICASETS, Object
from reconcilers.refmanager import (
    CannotAdoptError,
    ClaimError,
    ControllerRefManager,
    Decision,
    adopt_patch,
    decide,
    release_patch,
    resolve_controller_ref,
    selecting_owners,
)
from reconcilers.selectors import Selector

T = TypeVar("T")

POD_API = ApiResource("", "v1", "pods", "Pod", True, frozenset())
RS_API = ApiResource("apps", "v1", "replicasets", "ReplicaSet", True, frozenset())
DEPLOYMENT_API = ApiResource("apps", "v1", "deployments", "Deployment", True, frozenset())
WEB = Selector.parse({"matchLabels": {"app": "web"}})


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coroutine)


def owner(name: str = "web", uid: str = "rs-1", **meta: Any) -> Object:
    return {"metadata": {"name": name, "namespace": "shop", "uid": uid, **meta}}


def child(
    name: str,
    *,
    labels: dict[str, str] | None = None,
    controller: str | None = None,
    namespace: str = "shop",
    **meta: Any,
) -> Object:
    metadata: Object = {
        "name": name,
        "namespace": namespace,
        "uid": f"uid-{name}",
        "labels": {"app": "web"} if labels is None else labels,
        **meta,
    }
    if controller is not None:
        metadata["ownerReferences"] = [
            {"kind": "ReplicaSet", "name": "x", "uid": controller, "controller": True}
        ]
    return {"metadata": metadata}


@dataclass
class Patch:
    resource: str
    namespace: str | None
    name: str
    body: str  # as sent on the wire
    patch_type: str


@dataclass
class FakeApiserver:
    """Answers the owner's live GET with ``live`` (or raises it) and records every PATCH; a
    child named in ``refuse`` gets that error back."""

    live: Object | Exception
    refuse: dict[str, Exception] = field(default_factory=dict)
    gets: list[str] = field(default_factory=list)
    patches: list[Patch] = field(default_factory=list)

    async def get(self, resource: ApiResource, namespace: str | None, name: str) -> Object:
        self.gets.append(f"{resource.name} {namespace}/{name}")
        if isinstance(self.live, Exception):
            raise self.live
        return self.live

    async def patch(
        self,
        resource: ApiResource,
        namespace: str | None,
        name: str,
        patch: Mapping[str, Any] | list[Any],
        *,
        patch_type: str = "merge",
        subresource: str | None = None,
    ) -> Object:
        body = msgspec.json.encode(patch).decode()
        self.patches.append(Patch(resource.name, namespace, name, body, patch_type))
        if name in self.refuse:
            raise self.refuse[name]
        return {"metadata": {"name": name, "namespace": namespace, "resourceVersion": "patched"}}


def pods_manager(api: FakeApiserver, rs: Object, **options: Any) -> ControllerRefManager:
    return ControllerRefManager(
        api, rs, owner_api=RS_API, child_api=POD_API, selector=WEB, **options
    )


# --- the decision ---------------------------------------------------------------------------

DELETING = {"deletionTimestamp": "2024-05-01T10:00:00Z"}


@pytest.mark.parametrize(
    ("case", "the_owner", "the_child", "selected", "expected"),
    [
        ("ours and selected", owner(), child("a", controller="rs-1"), True, Decision.KEEP),
        (
            "ours and selected, while we are deleted",
            owner(**DELETING),
            child("a", controller="rs-1"),
            True,
            Decision.KEEP,
        ),
        (
            "ours, no longer selected",
            owner(),
            child("a", controller="rs-1"),
            False,
            Decision.RELEASE,
        ),
        (
            "ours, no longer selected, while we are deleted",
            owner(**DELETING),
            child("a", controller="rs-1"),
            False,
            Decision.IGNORE,
        ),
        ("another controller's", owner(), child("a", controller="rs-2"), True, Decision.IGNORE),
        ("an orphan, selected", owner(), child("a"), True, Decision.ADOPT),
        ("an orphan, not selected", owner(), child("a"), False, Decision.IGNORE),
        ("an orphan, while we are deleted", owner(**DELETING), child("a"), True, Decision.IGNORE),
        ("an orphan being deleted", owner(), child("a", **DELETING), True, Decision.IGNORE),
        (
            "an orphan in another namespace",
            owner(),
            child("a", namespace="other"),
            True,
            Decision.IGNORE,
        ),
        (
            "a non-controller reference to us is no claim",
            owner(),
            child("a", ownerReferences=[{"kind": "ReplicaSet", "name": "web", "uid": "rs-1"}]),
            True,
            Decision.ADOPT,
        ),
    ],
)
def test_the_decision_for_each_kind_of_child(
    case: str, the_owner: Object, the_child: Object, selected: bool, expected: Decision
) -> None:
    assert decide(the_owner, the_child, selected=selected) is expected, case


# --- what is sent ---------------------------------------------------------------------------


def test_patch_bodies_are_upstreams_to_the_byte() -> None:
    # Upstream builds them with json.Marshal of Go structs: these strings are its output
    # (the release one with finalizers is upstream's own test vector).
    def wire(body: Object) -> str:
        return msgspec.json.encode(body).decode()

    assert wire(adopt_patch(owner(), RS_API, "uid-a")) == (
        '{"metadata":{"ownerReferences":[{"apiVersion":"apps/v1","kind":"ReplicaSet",'
        '"name":"web","uid":"rs-1","controller":true,"blockOwnerDeletion":true}],"uid":"uid-a"}}'
    )
    assert wire(adopt_patch(owner(), RS_API, "uid-a", ["f1"])).endswith(
        '"uid":"uid-a","finalizers":["f1"]}}'
    )
    assert wire(release_patch("rs-1", "uid-a")) == (
        '{"metadata":{"uid":"uid-a","ownerReferences":[{"$patch":"delete","uid":"rs-1"}]}}'
    )
    assert wire(release_patch("ss1", "ss2", ["f1"])) == (
        '{"metadata":{"uid":"ss2","ownerReferences":[{"$patch":"delete","uid":"ss1"}],'
        '"$deleteFromPrimitiveList/finalizers":["f1"]}}'
    )


def test_claiming_adopts_releases_keeps_and_ignores_with_one_live_read() -> None:
    rs = owner()
    api = FakeApiserver(live=owner())
    pods = [
        child("kept", controller="rs-1"),
        child("strayed", controller="rs-1", labels={"app": "other"}),
        child("orphan-1"),
        child("orphan-2"),
        child("theirs", controller="rs-2"),
        child("unselected", labels={"app": "other"}),
    ]
    claimed = run(pods_manager(api, rs).claim_pods(pods))

    assert [p["metadata"]["name"] for p in claimed] == ["kept", "orphan-1", "orphan-2"]
    # An adopted pod is returned as the apiserver answered the patch (its new resourceVersion).
    assert [p["metadata"].get("resourceVersion") for p in claimed] == [None, "patched", "patched"]
    assert [(p.name, p.resource, p.patch_type) for p in api.patches] == [
        ("strayed", "pods", "strategic"),
        ("orphan-1", "pods", "strategic"),
        ("orphan-2", "pods", "strategic"),
    ]
    assert api.patches[0].body == (
        '{"metadata":{"uid":"uid-strayed","ownerReferences":[{"$patch":"delete","uid":"rs-1"}]}}'
    )
    assert '"uid":"uid-orphan-1"}}' in api.patches[1].body
    assert api.gets == ["replicasets shop/web"], "one live read of the owner, for both adoptions"


def test_no_live_read_when_nothing_is_adopted() -> None:
    api = FakeApiserver(live=RuntimeError("must not be read"))
    claimed = run(pods_manager(api, owner()).claim_pods([child("kept", controller="rs-1")]))
    assert [p["metadata"]["name"] for p in claimed] == ["kept"]
    assert api.gets == []
    assert api.patches == []


def test_filters_narrow_what_is_selected() -> None:
    api = FakeApiserver(live=owner())
    pods = [child("kept", controller="rs-1"), child("filtered", controller="rs-1")]
    claimed = run(
        pods_manager(api, owner()).claim_pods(pods, lambda p: p["metadata"]["name"] != "filtered")
    )
    assert [p["metadata"]["name"] for p in claimed] == ["kept"]
    assert [p.name for p in api.patches] == ["filtered"], "an owned pod filtered out is released"


def test_an_owner_recreated_under_another_uid_adopts_nothing() -> None:
    api = FakeApiserver(live=owner(uid="rs-new"))
    pods = [child("orphan"), child("strayed", controller="rs-1", labels={})]
    with pytest.raises(ClaimError) as caught:
        run(pods_manager(api, owner()).claim_pods(pods))
    assert str(caught.value) == (
        "can't adopt Pod shop/orphan (uid-orphan): can't recheck DeletionTimestamp: "
        "original ReplicaSet shop/web is gone: got uid rs-new, wanted rs-1"
    )
    assert isinstance(caught.value.errors[0], CannotAdoptError)
    # The failure on one pod does not stop the others: the release still went out.
    assert [p.name for p in api.patches] == ["strayed"]


def test_an_owner_being_deleted_adopts_nothing() -> None:
    api = FakeApiserver(live=owner(deletionTimestamp="2024-05-01T10:00:00Z"))
    with pytest.raises(ClaimError) as caught:
        run(pods_manager(api, owner()).claim_pods([child("orphan-1"), child("orphan-2")]))
    # Both adoptions are refused for the one reason, read once.
    reason = "shop/web has just been deleted at 2024-05-01 10:00:00 +0000 UTC"
    assert str(caught.value) == (
        f"[can't adopt Pod shop/orphan-1 (uid-orphan-1): {reason}, "
        f"can't adopt Pod shop/orphan-2 (uid-orphan-2): {reason}]"
    )
    assert len(caught.value.errors) == 2
    assert api.gets == ["replicasets shop/web"]
    assert api.patches == []


def test_an_owner_that_cannot_be_read_adopts_nothing() -> None:
    api = FakeApiserver(live=NotFoundError(404, "NotFound", 'replicasets "web" not found'))
    with pytest.raises(ClaimError) as caught:
        run(pods_manager(api, owner()).claim_pods([child("orphan")]))
    assert str(caught.value) == (
        "can't adopt Pod shop/orphan (uid-orphan): can't recheck DeletionTimestamp: "
        '404 NotFound: replicasets "web" not found'
    )


def test_a_child_gone_or_changed_is_no_error_but_other_failures_are() -> None:
    gone = NotFoundError(404, "NotFound", "gone")
    api = FakeApiserver(
        live=owner(),
        refuse={
            "released-gone": gone,
            "released-recreated": InvalidError(422, "Invalid", "uid mismatch"),
            "adopted-gone": gone,
            "adopted-by-another": InvalidError(422, "Invalid", "only one controller"),
            "released-refused": KubeApiError(500, "InternalError", "etcd"),
        },
    )
    pods = [
        child("released-gone", controller="rs-1", labels={}),
        child("released-recreated", controller="rs-1", labels={}),
        child("adopted-gone"),
        child("adopted-by-another"),
        child("released-refused", controller="rs-1", labels={}),
        child("adopted"),
    ]
    with pytest.raises(ClaimError) as caught:
        run(pods_manager(api, owner()).claim_pods(pods))
    assert str(caught.value) == "[422 Invalid: only one controller, 500 InternalError: etcd]"
    assert len(api.patches) == len(pods), "every pod was tried"


def test_a_custom_adoption_check_runs_once_and_its_refusal_is_kept() -> None:
    calls = 0

    async def refuse() -> None:
        nonlocal calls
        calls += 1
        raise CannotAdoptError("not today")

    api = FakeApiserver(live=owner())
    manager = pods_manager(api, owner(), can_adopt=refuse)
    for _ in range(2):
        with pytest.raises(ClaimError, match=r"\(uid-orphan\): not today$"):
            run(manager.claim_pods([child("orphan")]))
    assert calls == 1
    assert api.gets == []


def test_a_deployment_claims_replicasets_under_its_own_kind() -> None:
    d = owner("web", "d-1")
    api = FakeApiserver(live=owner("web", "d-1"))
    manager = ControllerRefManager(api, d, owner_api=DEPLOYMENT_API, child_api=RS_API, selector=WEB)
    claimed = run(manager.claim_replicasets([child("web-abc"), child("mine", controller="d-1")]))
    assert [rs["metadata"]["name"] for rs in claimed] == ["web-abc", "mine"]
    (adoption,) = api.patches
    assert adoption.resource == "replicasets"
    assert '"apiVersion":"apps/v1","kind":"Deployment","name":"web","uid":"d-1"' in adoption.body
    assert api.gets == ["deployments shop/web"]


def test_claim_errors_read_as_upstreams_aggregate() -> None:
    one, two = RuntimeError("a"), RuntimeError("b")
    assert str(ClaimError([one])) == "a"
    assert str(ClaimError([one, RuntimeError("a")])) == "a"
    assert str(ClaimError([one, two])) == "[a, b]"


# --- the reverse lookups of event handlers ----------------------------------------------------


def cache_of(*objects: tuple[ResourceType, Object]) -> ObjectCache:
    cache = ObjectCache()
    for version, (resource, obj) in enumerate(objects, start=1):
        meta = obj["metadata"]
        cache.apply(
            0,
            ObjectRef(resource, meta.get("namespace"), meta["name"]),
            Envelope(
                subject="kubus.obj.0",
                sequence=version,
                event=EventType.ADDED,
                resource_version=str(version),
                uid=meta["uid"],
                payload=msgspec.json.encode(obj),
            ),
        )
    return cache


def rs_selecting(name: str, uid: str, selector: Object | None) -> Object:
    return {**owner(name, uid), "spec": {"selector": selector}}


def test_a_controller_ref_resolves_only_to_the_same_kind_name_and_uid() -> None:
    cache = cache_of((REPLICASETS, owner("web", "rs-1")), (DEPLOYMENTS, owner("web", "d-1")))
    pod = child(
        "a",
        ownerReferences=[{"kind": "ReplicaSet", "name": "web", "uid": "rs-1", "controller": True}],
    )
    stale = child("b", controller="rs-0")
    stale["metadata"]["ownerReferences"][0]["name"] = "web"
    found = resolve_controller_ref(cache, REPLICASETS, "ReplicaSet", pod)
    assert found is not None and found["metadata"]["uid"] == "rs-1"
    assert resolve_controller_ref(cache, REPLICASETS, "ReplicaSet", stale) is None
    assert resolve_controller_ref(cache, DEPLOYMENTS, "Deployment", pod) is None
    assert resolve_controller_ref(cache, REPLICASETS, "ReplicaSet", child("orphan")) is None


def test_an_orphan_is_offered_to_every_owner_whose_selector_picks_it() -> None:
    cache = cache_of(
        (REPLICASETS, rs_selecting("web", "rs-1", {"matchLabels": {"app": "web"}})),
        (
            REPLICASETS,
            rs_selecting(
                "tier", "rs-2", {"matchExpressions": [{"key": "app", "operator": "Exists"}]}
            ),
        ),
        (REPLICASETS, rs_selecting("other", "rs-3", {"matchLabels": {"app": "db"}})),
        (REPLICASETS, rs_selecting("everything", "rs-4", {})),
        (REPLICASETS, rs_selecting("broken", "rs-5", {"matchExpressions": [{"key": "app"}]})),
        (PODS, child("unrelated")),
    )
    names = sorted(o["metadata"]["name"] for o in selecting_owners(cache, REPLICASETS, child("a")))
    assert names == ["tier", "web"]
    assert selecting_owners(cache, REPLICASETS, child("bare", labels={})) == []


def test_a_conflict_on_adoption_is_reported() -> None:
    api = FakeApiserver(live=owner(), refuse={"orphan": ConflictError(409, "Conflict", "uid")})
    with pytest.raises(ClaimError, match="409 Conflict: uid"):
        run(pods_manager(api, owner()).claim_pods([child("orphan")]))

"""Which children are a controller's: kube-controller-manager's ControllerRefManager, once.

Every workload controller upstream (pkg/controller/controller_ref_manager.go) starts a sync by
claiming, among the objects of its namespace, those that are its own. For each candidate:

- owned (its controller ownerReference carries the owner's UID) and selected: **kept**, even
  while the owner is being deleted, since keeping writes nothing;
- owned but no longer selected: **released** (the ownerReference is patched away), unless the
  owner is being deleted; a child that is gone (404) or changed under us (422) is no error;
- an orphan that is selected, is not being deleted, lives in the owner's namespace, while the
  owner is not being deleted: **adopted** (a controller ownerReference is patched in, with the
  child's UID as a precondition), once a live read has shown that the owner still exists under
  the same UID and is not being deleted; that read runs lazily, at most once per manager;
- anything else (another controller's child, an orphan not selected): **ignored**.

A failure on one child does not stop the others; the failures are raised together at the end
(:class:`ClaimError`) so the sync retries. The patches are strategic-merge patches whose bodies
are, byte for byte, the ones upstream sends. One difference: an adopted child is returned as
the PATCH answered it, not as cached, so a write that follows in the same sync carries the
child's new resourceVersion instead of failing on a conflict.

The manager also hosts the reverse lookups controllers' event handlers make: the cached owner a
child's controllerRef names, and the owners whose selector picks an orphan.
"""

from __future__ import annotations

import asyncio
import datetime
import enum
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, Final, Protocol

from bus.subjects import ResourceType
from kubus.kube import ApiResource, InvalidError, NotFoundError
from reconcilers.cache import ObjectCache, controller_of
from reconcilers.kinds import Object
from reconcilers.selectors import InvalidSelectorError, Selector

__all__ = [
    "CanAdopt",
    "CannotAdoptError",
    "ClaimError",
    "ControllerRefManager",
    "Decision",
    "OwnerGoneError",
    "RefClient",
    "adopt_patch",
    "controller_ref",
    "decide",
    "live_owner",
    "recheck_deletion_timestamp",
    "release_patch",
    "resolve_controller_ref",
    "selecting_owners",
]

log = logging.getLogger(__name__)

CanAdopt = Callable[[], Awaitable[None]]
"""Raises the reason adoption may not go ahead; returns if it may."""

_UNCHECKED: Final = object()


class RefClient(Protocol):
    """The two apiserver calls claiming makes (KubeClient's; a recording fake in unit tests)."""

    async def get(self, resource: ApiResource, namespace: str | None, name: str) -> Object: ...

    async def patch(
        self,
        resource: ApiResource,
        namespace: str | None,
        name: str,
        patch: Mapping[str, Any] | list[Any],
        *,
        patch_type: str = "merge",
        subresource: str | None = None,
    ) -> Object: ...


class CannotAdoptError(Exception):
    """The live re-read of the owner denied (or failed) an adoption."""


class OwnerGoneError(Exception):
    """The owner read live is another object than the cached one (deleted and re-created)."""


class ClaimError(Exception):
    """Some children could not be adopted or released; worded as upstream's error aggregate."""

    def __init__(self, errors: Sequence[Exception]) -> None:
        self.errors = tuple(errors)
        messages = list(dict.fromkeys(str(error) for error in errors))
        super().__init__(messages[0] if len(messages) == 1 else f"[{', '.join(messages)}]")


class Decision(enum.Enum):
    KEEP = "keep"
    ADOPT = "adopt"
    RELEASE = "release"
    IGNORE = "ignore"


# --- the decision (pure) ----------------------------------------------------------------------


def decide(owner: Object, child: Object, *, selected: bool) -> Decision:
    """What claiming does with ``child`` for ``owner`` (upstream's ClaimObject, without I/O).

    ``selected``: the owner's selector (and any filters) match the child.
    """
    owner_meta, child_meta = owner["metadata"], child["metadata"]
    owner_deleting = bool(owner_meta.get("deletionTimestamp"))
    ref = controller_of(child)
    if ref is not None:
        if ref.get("uid") != owner_meta.get("uid"):
            return Decision.IGNORE
        if selected:
            return Decision.KEEP
        return Decision.IGNORE if owner_deleting else Decision.RELEASE
    if owner_deleting or not selected or child_meta.get("deletionTimestamp"):
        return Decision.IGNORE
    namespace = owner_meta.get("namespace")
    if namespace and namespace != child_meta.get("namespace"):
        return Decision.IGNORE
    return Decision.ADOPT


# --- patch bodies -----------------------------------------------------------------------------


def controller_ref(owner: Object, owner_api: ApiResource) -> Object:
    """The ownerReference a controller puts on what it creates or adopts (field order as Go's)."""
    return {
        "apiVersion": owner_api.api_version,
        "kind": owner_api.kind,
        "name": owner["metadata"]["name"],
        "uid": owner["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def adopt_patch(
    owner: Object, owner_api: ApiResource, child_uid: str, finalizers: Sequence[str] = ()
) -> Object:
    """Adds the controller ownerReference; the child's ``uid`` makes the patch conditional, and
    the apiserver refuses it if another controller ownerReference is there already."""
    metadata: Object = {"ownerReferences": [controller_ref(owner, owner_api)], "uid": child_uid}
    if finalizers:
        metadata["finalizers"] = list(finalizers)
    return {"metadata": metadata}


def release_patch(owner_uid: str, child_uid: str, finalizers: Sequence[str] = ()) -> Object:
    """Deletes the ownerReference with ``owner_uid`` (and the given finalizers) from the child."""
    metadata: Object = {
        "uid": child_uid,
        "ownerReferences": [{"$patch": "delete", "uid": owner_uid}],
    }
    if finalizers:
        metadata["$deleteFromPrimitiveList/finalizers"] = list(finalizers)
    return {"metadata": metadata}


# --- the live check before adopting -------------------------------------------------------------


def live_owner(
    client: RefClient, owner_api: ApiResource, owner: Object
) -> Callable[[], Awaitable[Object]]:
    """A live GET of the owner that fails if the object found has another UID."""
    meta = owner["metadata"]

    async def get_fresh() -> Object:
        fresh = await client.get(owner_api, meta.get("namespace"), meta["name"])
        uid = fresh.get("metadata", {}).get("uid")
        if uid != meta["uid"]:
            raise OwnerGoneError(
                f"original {owner_api.kind} {meta.get('namespace')}/{meta['name']} is gone: "
                f"got uid {uid}, wanted {meta['uid']}"
            )
        return fresh

    return get_fresh


def recheck_deletion_timestamp(get_fresh: Callable[[], Awaitable[Object]]) -> CanAdopt:
    """Adoption may go ahead only if ``get_fresh`` succeeds and finds no deletionTimestamp."""

    async def can_adopt() -> None:
        try:
            fresh = await get_fresh()
        except Exception as error:
            raise CannotAdoptError(f"can't recheck DeletionTimestamp: {error}") from error
        meta = fresh.get("metadata", {})
        deleted = meta.get("deletionTimestamp")
        if deleted:
            raise CannotAdoptError(
                f"{meta.get('namespace')}/{meta.get('name')} has just been deleted at "
                f"{_go_time(deleted)}"
            )

    return can_adopt


def _go_time(text: str) -> str:
    """A timestamp as Go prints a time.Time with %v (in kcm's UTC fallback zone)."""
    try:
        when = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return text
    when = when.astimezone(datetime.UTC)
    fraction = f".{when.microsecond:06d}".rstrip("0").rstrip(".")
    return f"{when:%Y-%m-%d %H:%M:%S}{fraction} +0000 UTC"


# --- the manager --------------------------------------------------------------------------------


class ControllerRefManager:
    """Claims children for one owner during one sync (create a new one for the next sync: the
    adoption check is cached for the manager's life, as upstream's)."""

    def __init__(
        self,
        client: RefClient,
        owner: Object,
        *,
        owner_api: ApiResource,
        child_api: ApiResource,
        selector: Selector,
        can_adopt: CanAdopt | None = None,
        finalizers: Sequence[str] = (),
    ) -> None:
        """``can_adopt`` defaults to what every upstream workload controller passes: a live
        read of the owner, denying adoption if its UID changed or it is being deleted.
        ``finalizers`` are added on adoption and removed on release (the Job controller's)."""
        self._client = client
        self._owner = owner
        self._owner_api = owner_api
        self._child_api = child_api
        self._selector = selector
        self._can_adopt = can_adopt or recheck_deletion_timestamp(
            live_owner(client, owner_api, owner)
        )
        self._finalizers = tuple(finalizers)
        self._verdict: object = _UNCHECKED  # None (may adopt) or the exception denying it
        self._lock = asyncio.Lock()

    async def claim_pods(
        self, pods: Iterable[Object], *filters: Callable[[Object], bool]
    ) -> list[Object]:
        """The pods that are now the owner's; a pod is claimed only if every filter passes."""
        return await self._claim_all(pods, filters)

    async def claim_replicasets(self, replicasets: Iterable[Object]) -> list[Object]:
        """The ReplicaSets that are now the owner's (a Deployment's, selected by labels)."""
        return await self._claim_all(replicasets, ())

    async def claim_object(self, child: Object, *, selected: bool) -> Object | None:
        """The child if it is now the owner's (as the apiserver returned it, if adopted)."""
        decision = decide(self._owner, child, selected=selected)
        if decision is Decision.KEEP:
            return child
        if decision is Decision.RELEASE:
            await self.release(child)
        elif decision is Decision.ADOPT:
            try:
                return await self.adopt(child)
            except NotFoundError:
                return None
        return None

    async def adopt(self, child: Object) -> Object:
        meta = child["metadata"]
        reason = await self._check_can_adopt()
        if reason is not None:
            raise CannotAdoptError(
                f"can't adopt {self._child_api.kind} {meta.get('namespace')}/{meta['name']} "
                f"({meta['uid']}): {reason}"
            ) from reason
        body = adopt_patch(self._owner, self._owner_api, meta["uid"], self._finalizers)
        return await self._patch(child, body)

    async def release(self, child: Object) -> None:
        meta = child["metadata"]
        log.debug(
            "patching %s %s/%s to remove its controllerRef to %s %s",
            self._child_api.kind,
            meta.get("namespace"),
            meta["name"],
            self._owner_api.kind,
            self._owner["metadata"]["name"],
        )
        body = release_patch(self._owner["metadata"]["uid"], meta["uid"], self._finalizers)
        try:
            await self._patch(child, body)
        except (NotFoundError, InvalidError):
            # Gone, or re-created under another UID, or no longer holding the reference.
            return

    async def _claim_all(
        self, children: Iterable[Object], filters: Sequence[Callable[[Object], bool]]
    ) -> list[Object]:
        claimed: list[Object] = []
        errors: list[Exception] = []
        for child in children:
            selected = self._selector.matches(child["metadata"].get("labels")) and all(
                keep(child) for keep in filters
            )
            try:
                mine = await self.claim_object(child, selected=selected)
            except Exception as error:
                errors.append(error)
                continue
            if mine is not None:
                claimed.append(mine)
        if errors:
            raise ClaimError(errors)
        return claimed

    async def _check_can_adopt(self) -> Exception | None:
        async with self._lock:
            if self._verdict is _UNCHECKED:
                try:
                    await self._can_adopt()
                except Exception as error:
                    self._verdict = error
                else:
                    self._verdict = None
        return self._verdict if isinstance(self._verdict, Exception) else None

    async def _patch(self, child: Object, body: Object) -> Object:
        meta = child["metadata"]
        return await self._client.patch(
            self._child_api, meta.get("namespace"), meta["name"], body, patch_type="strategic"
        )


# --- the reverse lookups of event handlers ------------------------------------------------------


def resolve_controller_ref(
    cache: ObjectCache, resource: ResourceType, kind: str, child: Object
) -> Object | None:
    """The cached owner ``child``'s controllerRef names: of ``kind``, found by name in the
    child's namespace, with the UID the reference holds (else None: a stale reference)."""
    ref = controller_of(child)
    if ref is None or ref.get("kind") != kind:
        return None
    owner = cache.get(resource, child["metadata"].get("namespace"), ref.get("name", ""))
    if owner is None or owner["metadata"].get("uid") != ref.get("uid"):
        return None
    return owner


def _label_selector(owner: Object) -> Mapping[str, Any] | None:
    selector: Mapping[str, Any] | None = owner.get("spec", {}).get("selector")
    return selector


def selecting_owners(
    cache: ObjectCache,
    resource: ResourceType,
    child: Object,
    *,
    selector_of: Callable[[Object], Mapping[str, Any] | None] = _label_selector,
) -> list[Object]:
    """The cached owners in ``child``'s namespace whose selector picks it: the candidates to
    adopt an orphan. A child without labels, and an owner with an empty or invalid selector,
    match nothing. ``selector_of``: the owner's selector as a ``metav1.LabelSelector`` (a
    ReplicationController's is a plain map)."""
    labels = child["metadata"].get("labels")
    if not labels:
        return []
    found = []
    for owner in cache.in_namespace(resource, child["metadata"].get("namespace")):
        try:
            selector = Selector.parse(selector_of(owner))
        except InvalidSelectorError:
            continue
        if not selector.empty and selector.matches(labels):
            found.append(owner)
    return found

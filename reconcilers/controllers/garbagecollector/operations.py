"""The garbage collector's writes and live reads, as upstream's ``operations.go`` and ``patch.go``.

Everything goes through the metadata-only representation where it reads (a Secret's data never
leaves the apiserver) and carries a precondition where it writes: deletes the item's uid and
resourceVersion (retried without the resourceVersion when only that moved and the owners are
the same), reference removals the item's uid, finalizer removals the owner's resourceVersion.
References are removed with a strategic merge patch (``$patch: delete`` by uid); a resource that
cannot take one (a custom resource: 415) gets a JSON merge patch of the remaining list instead.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, Final

import msgspec

from kubus.kube import ApiResource, ConflictError, KubeApiError, KubeClient, NotFoundError
from reconcilers.kinds import Object

__all__ = ["ListedDependent", "Operations"]

log = logging.getLogger(__name__)

# client-go's retry.DefaultBackoff has 5 steps: removeFinalizer gives up after them.
FINALIZER_RETRIES: Final = 5
LIST_PAGE: Final = 500
UNSUPPORTED_MEDIA_TYPE: Final = 415

OwnerReference = dict[str, Any]


class _Reference(msgspec.Struct, rename="camel"):
    uid: str = ""
    block_owner_deletion: bool | None = None


class _Meta(msgspec.Struct, rename="camel"):
    name: str = ""
    namespace: str | None = None
    owner_references: list[_Reference] = msgspec.field(default_factory=list)


class ListedDependent(msgspec.Struct):
    """One listed object, decoded only as far as its references."""

    metadata: _Meta = msgspec.field(default_factory=_Meta)


_listed = msgspec.json.Decoder(ListedDependent)


def _meta(obj: Object) -> dict[str, Any]:
    meta: dict[str, Any] = obj.get("metadata", {})
    return meta


class Operations:
    def __init__(self, kube: KubeClient) -> None:
        self._kube = kube

    async def get(self, api: ApiResource, namespace: str | None, name: str) -> Object | None:
        try:
            return await self._kube.get_metadata(api, namespace, name)
        except NotFoundError:
            return None

    async def delete(self, api: ApiResource, item: Object, policy: str) -> None:
        """Delete ``item`` (its live state) unless it changed owners meanwhile."""
        meta = _meta(item)
        namespace, name, uid = meta.get("namespace"), meta["name"], meta["uid"]
        try:
            await self._kube.delete(
                api,
                namespace,
                name,
                uid=uid,
                resource_version=meta.get("resourceVersion"),
                propagation=policy,
            )
        except NotFoundError:
            return
        except ConflictError:
            live = await self.get(api, namespace, name)
            if live is None:
                return
            live_meta = _meta(live)
            if (
                live_meta.get("uid") != uid
                or live_meta.get("resourceVersion") == meta.get("resourceVersion")
                or live_meta.get("ownerReferences") != meta.get("ownerReferences")
            ):
                raise
            try:
                await self._kube.delete(api, namespace, name, uid=uid, propagation=policy)
            except NotFoundError:
                return

    async def remove_references(self, api: ApiResource, item: Object, uids: set[str]) -> None:
        """Drop the references to ``uids`` from ``item``; a gone item is fine."""
        meta = _meta(item)
        strategic = {
            "metadata": {
                "ownerReferences": [{"$patch": "delete", "uid": uid} for uid in sorted(uids)],
                "uid": meta["uid"],
            }
        }

        def remaining(refs: list[OwnerReference]) -> list[OwnerReference]:
            return [ref for ref in refs if ref.get("uid") not in uids]

        await self._patch_references(api, item, strategic, remaining)

    async def unblock_references(self, api: ApiResource, item: Object) -> None:
        """Make every reference of ``item`` non-blocking (upstream's cycle breaker)."""
        meta = _meta(item)
        refs = list(meta.get("ownerReferences") or ())
        strategic = {
            "metadata": {
                "ownerReferences": [
                    {"uid": ref.get("uid"), "blockOwnerDeletion": False}
                    for ref in refs
                    if ref.get("blockOwnerDeletion")
                ],
                "uid": meta["uid"],
            }
        }

        def unblocked(current: list[OwnerReference]) -> list[OwnerReference]:
            return [
                {**ref, "blockOwnerDeletion": False} if ref.get("blockOwnerDeletion") else ref
                for ref in current
            ]

        await self._patch_references(api, item, strategic, unblocked)

    async def _patch_references(
        self,
        api: ApiResource,
        item: Object,
        strategic: dict[str, Any],
        rewrite: Callable[[list[OwnerReference]], list[OwnerReference]],
    ) -> None:
        meta = _meta(item)
        namespace, name, uid = meta.get("namespace"), meta["name"], meta["uid"]
        try:
            await self._kube.patch(api, namespace, name, strategic, patch_type="strategic")
            return
        except NotFoundError:
            return
        except KubeApiError as error:
            if error.status != UNSUPPORTED_MEDIA_TYPE:
                raise
        live = await self.get(api, namespace, name)
        if live is None or _meta(live).get("uid") != uid:
            return
        live_meta = _meta(live)
        merge = {
            "metadata": {
                "ownerReferences": rewrite(list(live_meta.get("ownerReferences") or ())),
                "uid": uid,
                "resourceVersion": live_meta.get("resourceVersion"),
            }
        }
        try:
            await self._kube.patch(api, namespace, name, merge, patch_type="merge")
        except NotFoundError:
            return

    async def remove_finalizer(
        self, api: ApiResource, namespace: str | None, name: str, uid: str, finalizer: str
    ) -> None:
        """Take ``finalizer`` off the owner, on its current resourceVersion; conflicts are
        retried a few times, then left to the item's own retry."""
        for attempt in range(FINALIZER_RETRIES):
            live = await self.get(api, namespace, name)
            if live is None or _meta(live).get("uid") != uid:
                return
            finalizers = list(_meta(live).get("finalizers") or ())
            if finalizer not in finalizers:
                return
            patch = {
                "metadata": {
                    "finalizers": [f for f in finalizers if f != finalizer] or None,
                    "resourceVersion": _meta(live).get("resourceVersion"),
                }
            }
            try:
                await self._kube.patch(api, namespace, name, patch, patch_type="merge")
                return
            except NotFoundError:
                return
            except ConflictError:
                if attempt == FINALIZER_RETRIES - 1:
                    raise
                log.debug("conflict removing %s from %s/%s; retrying", finalizer, namespace, name)

    async def live_dependents(
        self, resources: tuple[ApiResource, ...], owner_uid: str, *, blocking_only: bool
    ) -> AsyncIterator[tuple[ApiResource, ListedDependent]]:
        """Objects of ``resources`` (every namespace) referencing ``owner_uid`` (blocking it,
        with ``blocking_only``), read live: the dependents other processes hold."""
        for api in resources:
            token: str | None = None
            while True:
                try:
                    page = await self._kube.list_page(
                        api, limit=LIST_PAGE, continue_token=token, metadata_only=True
                    )
                except NotFoundError:
                    break  # the resource went away (a CRD deleted)
                for raw in page.items:
                    listed = _listed.decode(raw)
                    if any(
                        ref.uid == owner_uid and (ref.block_owner_deletion or not blocking_only)
                        for ref in listed.metadata.owner_references
                    ):
                        yield api, listed
                token = page.metadata.continue_
                if not token:
                    break

"""Controller ownerReferences, as kube-controller-manager's controller_ref_manager sets them."""

from __future__ import annotations

from typing import Any

from kubus.kube import ApiResource, KubeApiError, KubeClient

__all__ = ["controller_ref", "recheck_owner"]

Object = dict[str, Any]


def controller_ref(owner: Object, *, api_version: str, kind: str) -> Object:
    """The ownerReference a controller puts on what it creates or adopts."""
    return {
        "apiVersion": api_version,
        "kind": kind,
        "name": owner["metadata"]["name"],
        "uid": owner["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


async def recheck_owner(kube: KubeClient, api: ApiResource, owner: Object) -> Exception | None:
    """Before adopting: a live read proving the owner still exists and is not being deleted.

    None if adoption may go ahead, else the reason it may not (upstream's messages).
    """
    meta = owner["metadata"]
    try:
        fresh = await kube.get(api, meta["namespace"], meta["name"])
    except KubeApiError as error:
        return RuntimeError(f"can't recheck DeletionTimestamp: {error}")
    if fresh["metadata"].get("uid") != meta["uid"]:
        return RuntimeError(
            f"original {api.kind} {meta['namespace']}/{meta['name']} is gone: got uid "
            f"{fresh['metadata'].get('uid')}, wanted {meta['uid']}"
        )
    if fresh["metadata"].get("deletionTimestamp"):
        return RuntimeError(
            f"{meta['namespace']}/{meta['name']} has just been deleted at "
            f"{fresh['metadata']['deletionTimestamp']}"
        )
    return None

"""A DaemonSet's ControllerRevisions (upstream's update.go constructHistory, snapshot,
dedupCurHistories and cleanupHistory).

Every template a DaemonSet has run is a ControllerRevision it controls, named
``<ds>-<hash>`` with the pod-template-hash of the template (and the collision count), labelled
``controller-revision-hash: <hash>``, whose ``data`` is upstream's ``getPatch``: the template
under ``spec.template`` with ``$patch: replace``, as the bytes Go's ``json.Marshal`` writes
(:func:`reconcilers.controllers.history.revision_bytes`; sent as they are, so kcm and kubus
read each other's revisions as equal). The revision whose data is the DaemonSet's template is
the *current* one; its hash labels the pods created from now on.

A sync adopts orphan revisions its selector picks (and releases those it stops picking),
labels revisions that lack the hash label with their name, renumbers the current revision past
the old ones, keeps one current revision if several exist (relabelling pods to it first), and
deletes old revisions beyond ``revisionHistoryLimit`` that no pod uses any more.

Shared with the StatefulSet controller (``reconcilers.controllers.history``): the Go JSON
bytes and the ``$patch: replace`` data. The DaemonSet's own: the name and hash (the
pod-template-hash of the template, not HashControllerRevision of the data), the hash label,
and the collision handling (the count is bumped in the DaemonSet's status and the sync fails
to retry, as upstream's, instead of looping over names).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable
from typing import Any

import msgspec

from kubus.kube import AlreadyExistsError, KubeApiError, NotFoundError
from reconcilers.controller import Context
from reconcilers.controllers.daemonset.update import HASH_LABEL
from reconcilers.controllers.history import revision_bytes, template_patch
from reconcilers.controllers.podtemplatehash import compute_hash
from reconcilers.kinds import CONTROLLERREVISIONS, DAEMONSETS, PODS, Object, clone
from reconcilers.refmanager import ControllerRefManager, controller_ref
from reconcilers.selectors import Selector

__all__ = [
    "StaleCollisionCountError",
    "cleanup_history",
    "construct_history",
    "matches",
    "revision_data",
]

log = logging.getLogger(__name__)


class StaleCollisionCountError(KubeApiError):
    """The cached DaemonSet's collision count was older than the apiserver's: retry."""


def revision_data(ds: Object) -> bytes:
    """getPatch: the revision data of the DaemonSet's template, as kcm's bytes."""
    return revision_bytes(template_patch(ds))


def matches(data: bytes, revision: Object) -> bool:
    """Match: the revision records the template whose :func:`revision_data` is ``data``
    (computed once per sync by the caller, not once per revision)."""
    return revision_bytes(revision.get("data")) == data


def _revision(revision: Object) -> int:
    return int(revision.get("revision") or 0)


async def _claimed(ctx: Context, ds: Object, selector: Selector) -> list[Object]:
    """controlledHistories: the namespace's revisions, adopted and released by selector."""
    claims = ControllerRefManager(
        ctx.kube,
        ds,
        owner_api=ctx.apis[DAEMONSETS],
        child_api=ctx.apis[CONTROLLERREVISIONS],
        selector=selector,
    )
    candidates = list(ctx.cache.in_namespace(CONTROLLERREVISIONS, ds["metadata"]["namespace"]))
    # The claim is the same for any kind of child; ``claim_pods`` is its generic entry.
    return await claims.claim_pods(candidates)


async def construct_history(
    ctx: Context, ds: Object, selector: Selector, pods: Iterable[Object]
) -> tuple[Object, list[Object]]:
    """(current revision, old revisions), creating or renumbering the current one.
    ``pods``: the DaemonSet's claimed pods (relabelled if duplicates are merged)."""
    api = ctx.apis[CONTROLLERREVISIONS]
    namespace = ds["metadata"]["namespace"]
    data = revision_data(ds)
    current: list[Object] = []
    old: list[Object] = []
    for claimed in await _claimed(ctx, ds, selector):
        revision = claimed
        if HASH_LABEL not in (claimed["metadata"].get("labels") or {}):
            body = clone(claimed)
            body["metadata"].setdefault("labels", {})[HASH_LABEL] = body["metadata"]["name"]
            revision = await ctx.kube.replace(api, namespace, body["metadata"]["name"], body)
        (current if matches(data, revision) else old).append(revision)
    next_number = max((_revision(r) for r in old), default=0) + 1
    if not current:
        return await _snapshot(ctx, ds, data, next_number), old
    cur = await _dedup(ctx, ds, current, pods)
    if _revision(cur) < next_number:
        body = clone(cur)
        body["revision"] = next_number
        await ctx.kube.replace(api, namespace, cur["metadata"]["name"], body)
    return cur, old


async def _snapshot(ctx: Context, ds: Object, data: bytes, number: int) -> Object:
    meta = ds["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    spec = ds.get("spec") or {}
    collision_count = (ds.get("status") or {}).get("collisionCount")
    hash_ = compute_hash(spec.get("template") or {}, collision_count)
    revision_name = f"{name}-{hash_}"
    labels = dict(((spec.get("template") or {}).get("metadata") or {}).get("labels") or {})
    labels[HASH_LABEL] = hash_
    metadata: dict[str, Any] = {
        "name": revision_name,
        "namespace": namespace,
        "labels": labels,
        "ownerReferences": [controller_ref(ds, ctx.apis[DAEMONSETS])],
    }
    if meta.get("annotations"):
        metadata["annotations"] = dict(meta["annotations"])
    body = {
        "apiVersion": "apps/v1",
        "kind": "ControllerRevision",
        "metadata": metadata,
        "data": msgspec.Raw(data),
        "revision": number,
    }
    api = ctx.apis[CONTROLLERREVISIONS]
    try:
        return await ctx.kube.create(api, namespace, body)
    except AlreadyExistsError as collision:
        existing = await ctx.kube.get(api, namespace, revision_name)
        if matches(data, existing):
            return existing
        fresh = await ctx.kube.get(ctx.apis[DAEMONSETS], namespace, name)
        fresh_count = (fresh.get("status") or {}).get("collisionCount")
        if fresh_count != collision_count:
            raise StaleCollisionCountError(
                0,
                "StaleCollisionCount",
                f"found a stale collision count ({collision_count}, expected {fresh_count}) "
                f"of DaemonSet {name!r} while processing; will retry until it is updated",
            ) from collision
        fresh.setdefault("status", {})["collisionCount"] = int(fresh_count or 0) + 1
        await ctx.kube.replace(ctx.apis[DAEMONSETS], namespace, name, fresh, subresource="status")
        log.info(
            "found a hash collision for DaemonSet %s/%s: collisionCount bumped to %d",
            namespace,
            name,
            fresh["status"]["collisionCount"],
        )
        raise


async def _dedup(ctx: Context, ds: Object, current: list[Object], pods: Iterable[Object]) -> Object:
    """dedupCurHistories: the current revision of highest number is kept; pods labelled
    with the others' hashes are relabelled to it, then the others are deleted."""
    if len(current) == 1:
        return current[0]
    keep = current[0]
    for revision in current:
        if _revision(revision) >= _revision(keep):
            keep = revision
    namespace = ds["metadata"]["namespace"]
    keep_hash = (keep["metadata"].get("labels") or {}).get(HASH_LABEL)
    for pod in pods:
        if (pod["metadata"].get("labels") or {}).get(HASH_LABEL) != keep_hash:
            patch = {"metadata": {"labels": {HASH_LABEL: keep_hash}}}
            await ctx.kube.patch(ctx.apis[PODS], namespace, pod["metadata"]["name"], patch)
    api = ctx.apis[CONTROLLERREVISIONS]
    for revision in current:
        if revision["metadata"]["name"] != keep["metadata"]["name"]:
            await ctx.kube.delete(api, namespace, revision["metadata"]["name"])
    return keep


async def cleanup_history(
    ctx: Context, ds: Object, old: list[Object], pods: Iterable[Object]
) -> None:
    """Delete the oldest old revisions beyond ``revisionHistoryLimit`` (default 10) that no
    pod (``pods``: every claimed pod, terminal and deleted ones included) is labelled with."""
    limit = (ds.get("spec") or {}).get("revisionHistoryLimit")
    to_kill = len(old) - int(10 if limit is None else limit)
    if to_kill <= 0:
        return
    live = {h for pod in pods if (h := (pod["metadata"].get("labels") or {}).get(HASH_LABEL))}
    api = ctx.apis[CONTROLLERREVISIONS]
    for revision in sorted(old, key=_revision):
        if to_kill <= 0:
            break
        if (revision["metadata"].get("labels") or {}).get(HASH_LABEL) in live:
            continue
        meta = revision["metadata"]
        with contextlib.suppress(NotFoundError):
            await ctx.kube.delete(api, meta["namespace"], meta["name"])
        to_kill -= 1

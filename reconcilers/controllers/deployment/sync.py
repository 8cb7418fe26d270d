"""Syncing a Deployment (upstream's sync.go): its ReplicaSets, scaling, history and status.

The steps every strategy shares: find the new ReplicaSet (creating it, with the
pod-template-hash name and the revision annotations) and the old ones; scale them, also
proportionally when the Deployment is resized mid-rollout; prune old ReplicaSets past
``revisionHistoryLimit``; compute and write the status. Paused Deployments and scaling events
stop here (:func:`sync`); rollouts go on in ``rolling`` and ``recreate``.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Final

from kubus.kube import AlreadyExistsError, KubeApiError, NotFoundError
from reconcilers.cache import controller_of
from reconcilers.controller import Context, Result
from reconcilers.controllers.deployment import util
from reconcilers.controllers.deployment.util import (
    DESIRED_REPLICAS,
    MAX_INT32,
    MAX_REPLICAS,
    POD_TEMPLATE_HASH,
    REVISION,
    max_surge,
    max_unavailable,
    replicas,
    status_sum,
)
from reconcilers.kinds import DEPLOYMENTS, REPLICASETS, Object, clone
from reconcilers.refmanager import controller_ref

__all__ = [
    "COMPONENT",
    "calculate_status",
    "check_paused_conditions",
    "cleanup_deployment",
    "event",
    "get_new_replicaset",
    "is_scaling_event",
    "new_and_old",
    "put_replicaset",
    "scale",
    "scale_and_record",
    "scale_replicaset",
    "sync",
    "sync_deployment_status",
    "sync_status_only",
    "update_status",
]

log = logging.getLogger(__name__)

COMPONENT: Final = "deployment-controller"


async def sync_status_only(ctx: Context, d: Object, rs_list: list[Object]) -> Result:
    new_rs, old = await new_and_old(ctx, d, rs_list, create=False)
    await sync_deployment_status(ctx, [*old, *([new_rs] if new_rs else [])], new_rs, d)
    return Result()


async def sync(ctx: Context, d: Object, rs_list: list[Object]) -> Result:
    new_rs, old = await new_and_old(ctx, d, rs_list, create=False)
    old, new_rs = await scale(ctx, d, new_rs, old)
    if d["spec"].get("paused"):
        await cleanup_deployment(ctx, d, old)
    await sync_deployment_status(ctx, [*old, *([new_rs] if new_rs else [])], new_rs, d)
    return Result()


async def check_paused_conditions(ctx: Context, d: Object) -> None:
    if not util.has_progress_deadline(d):
        return
    condition = util.get_condition(d, "Progressing")
    if condition is not None and condition.get("reason") == "ProgressDeadlineExceeded":
        return
    paused_exists = condition is not None and condition.get("reason") == "DeploymentPaused"
    paused = bool(d["spec"].get("paused"))
    if paused and not paused_exists:
        util.set_condition(
            d,
            util.new_condition(
                "Progressing", "Unknown", "DeploymentPaused", "Deployment is paused"
            ),
        )
    elif not paused and paused_exists:
        util.set_condition(
            d,
            util.new_condition(
                "Progressing", "Unknown", "DeploymentResumed", "Deployment is resumed"
            ),
        )
    else:
        return
    await update_status(ctx, d)


async def new_and_old(
    ctx: Context, d: Object, rs_list: list[Object], *, create: bool
) -> tuple[Object | None, list[Object]]:
    existing = util.find_new_replicaset(d, rs_list)
    new_uid = existing["metadata"]["uid"] if existing else None
    old = [rs for rs in rs_list if rs["metadata"]["uid"] != new_uid]
    return await get_new_replicaset(ctx, d, existing, old, create=create), old


async def get_new_replicaset(
    ctx: Context, d: Object, existing: Object | None, old: list[Object], *, create: bool
) -> Object | None:
    """``existing``: the ReplicaSet find_new_replicaset found among the Deployment's, if any."""
    new_revision = str(util.max_revision(old) + 1)
    if existing is not None:
        rs = _for_annotating(existing)
        updated = util.set_new_replicaset_annotations(d, rs, new_revision, exists=True)
        min_ready = d["spec"].get("minReadySeconds", 0)
        if updated or rs["spec"].get("minReadySeconds", 0) != min_ready:
            rs["spec"]["minReadySeconds"] = min_ready
            return await put_replicaset(ctx, rs)
        needs_update = util.set_deployment_revision(d, util.annotations_of(rs).get(REVISION, ""))
        if util.has_progress_deadline(d) and util.get_condition(d, "Progressing") is None:
            util.set_condition(
                d,
                util.new_condition(
                    "Progressing",
                    "True",
                    "FoundNewReplicaSet",
                    f'Found new replica set "{rs["metadata"]["name"]}"',
                ),
            )
            needs_update = True
        if needs_update:
            await update_status(ctx, d)
        return rs
    if not create:
        return None
    template = clone(d["spec"]["template"])
    collision = (d.get("status") or {}).get("collisionCount")
    pod_hash = util.compute_hash(template, collision)
    template.setdefault("metadata", {}).setdefault("labels", {})[POD_TEMPLATE_HASH] = pod_hash
    selector = clone(d["spec"]["selector"])
    selector.setdefault("matchLabels", {})[POD_TEMPLATE_HASH] = pod_hash
    name = util.replicaset_name(d["metadata"]["name"], pod_hash)
    new_rs: Object = {
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "metadata": {
            "name": name,
            "namespace": d["metadata"]["namespace"],
            "ownerReferences": [controller_ref(d, ctx.apis[DEPLOYMENTS])],
            "labels": dict(template["metadata"]["labels"]),
        },
        "spec": {
            "replicas": 0,
            "minReadySeconds": d["spec"].get("minReadySeconds", 0),
            "selector": selector,
            "template": template,
        },
    }
    new_rs["spec"]["replicas"] = util.new_rs_new_replicas(d, [*old, new_rs], new_rs)
    util.set_new_replicaset_annotations(d, new_rs, new_revision, exists=False)
    already_exists = False
    try:
        created = await ctx.kube.create(ctx.apis[REPLICASETS], d["metadata"]["namespace"], new_rs)
    except AlreadyExistsError:
        live = await ctx.kube.get(ctx.apis[REPLICASETS], d["metadata"]["namespace"], name)
        owner = controller_of(live)
        if (
            owner
            and owner.get("uid") == d["metadata"]["uid"]
            and util.equal_ignore_hash(d["spec"]["template"], live["spec"]["template"])
        ):
            created, already_exists = live, True
        else:
            status = d.setdefault("status", {})
            status["collisionCount"] = int(status.get("collisionCount") or 0) + 1
            log.info(
                "Found a hash collision for deployment %s - bumping collisionCount "
                "(%d->%d) to resolve it",
                d["metadata"]["name"],
                status["collisionCount"] - 1,
                status["collisionCount"],
            )
            with contextlib.suppress(KubeApiError):
                await update_status(ctx, d)
            raise
    except KubeApiError as error:
        message = f'Failed to create new replica set "{name}": {error}'
        if util.has_progress_deadline(d):
            util.set_condition(
                d, util.new_condition("Progressing", "False", "ReplicaSetCreateError", message)
            )
            with contextlib.suppress(KubeApiError):
                await update_status(ctx, d)
        event(ctx, d, "Warning", "ReplicaSetCreateError", message)
        raise
    if not already_exists and replicas(created) > 0:
        event(
            ctx,
            d,
            "Normal",
            "ScalingReplicaSet",
            f"Scaled up replica set {name} from 0 to {replicas(created)}",
        )
    needs_update = util.set_deployment_revision(d, new_revision)
    if not already_exists and util.has_progress_deadline(d):
        util.set_condition(
            d,
            util.new_condition(
                "Progressing",
                "True",
                "NewReplicaSetCreated",
                f'Created new replica set "{name}"',
            ),
        )
        needs_update = True
    if needs_update:
        await update_status(ctx, d)
    return created


async def scale(
    ctx: Context, d: Object, new_rs: Object | None, old: list[Object]
) -> tuple[list[Object], Object | None]:
    desired = replicas(d)
    active = [rs for rs in [*old, *([new_rs] if new_rs else [])] if replicas(rs) > 0]
    target = None
    if len(active) == 1:
        target = active[0]
    elif not active:
        target = new_rs or (max(old, key=util.creation_key) if old else None)
    if target is not None and len(active) <= 1:
        if replicas(target) != desired:
            _, updated = await scale_and_record(ctx, target, desired, d)
            return _swap(old, new_rs, updated)
        return old, new_rs
    if new_rs is not None and util.is_saturated(d, new_rs):
        for rs in [rs for rs in old if replicas(rs) > 0]:
            _, updated = await scale_and_record(ctx, rs, 0, d)
            old, new_rs = _swap(old, new_rs, updated)
        return old, new_rs
    if util.is_recreate(d):
        return old, new_rs
    for rs, size in util.proportional_sizes(d, active):
        _, updated = await scale_replicaset(ctx, rs, size, d)
        old, new_rs = _swap(old, new_rs, updated)
    return old, new_rs


async def scale_and_record(ctx: Context, rs: Object, count: int, d: Object) -> tuple[bool, Object]:
    if replicas(rs) == count:
        return False, rs
    return await scale_replicaset(ctx, rs, count, d)


async def scale_replicaset(ctx: Context, rs: Object, count: int, d: Object) -> tuple[bool, Object]:
    resize = replicas(rs) != count
    desired, maximum = str(replicas(d)), str(replicas(d) + max_surge(d))
    annotations = util.annotations_of(rs)
    if (
        not resize
        and annotations.get(DESIRED_REPLICAS) == desired
        and annotations.get(MAX_REPLICAS) == maximum
    ):
        return False, rs
    updated = clone(rs)
    updated["spec"]["replicas"] = count
    updated["metadata"].setdefault("annotations", {}).update(
        {DESIRED_REPLICAS: desired, MAX_REPLICAS: maximum}
    )
    result = await put_replicaset(ctx, updated)
    if resize:
        direction = "up" if count > replicas(rs) else "down"
        event(
            ctx,
            d,
            "Normal",
            "ScalingReplicaSet",
            f"Scaled {direction} replica set {rs['metadata']['name']} from "
            f"{replicas(rs)} to {count}",
        )
    return resize, result


async def cleanup_deployment(ctx: Context, d: Object, old: list[Object]) -> None:
    limit = d["spec"].get("revisionHistoryLimit", 10)
    if limit is None or limit == MAX_INT32:
        return
    cleanable = [rs for rs in old if not rs["metadata"].get("deletionTimestamp")]
    diff = len(cleanable) - limit
    if diff <= 0:
        return

    def by_revision(rs: Object) -> tuple[int, tuple[str, str]]:
        try:
            return util.revision(rs), util.creation_key(rs)
        except ValueError:
            return -1, util.creation_key(rs)

    for rs in sorted(cleanable, key=by_revision)[:diff]:
        status = rs.get("status") or {}
        if (
            status.get("replicas", 0) != 0
            or replicas(rs) != 0
            or rs["metadata"].get("generation", 0) > status.get("observedGeneration", 0)
        ):
            continue
        try:
            await ctx.kube.delete(
                ctx.apis[REPLICASETS], rs["metadata"]["namespace"], rs["metadata"]["name"]
            )
        except NotFoundError:
            continue


async def sync_deployment_status(
    ctx: Context, all_rss: list[Object], new_rs: Object | None, d: Object
) -> None:
    status = calculate_status(all_rss, new_rs, d)
    if status != (d.get("status") or {}):
        d["status"] = status
        await update_status(ctx, d)


def calculate_status(all_rss: list[Object], new_rs: Object | None, d: Object) -> Object:
    previous = d.get("status") or {}
    available = status_sum(all_rss, "availableReplicas")
    total = sum(replicas(rs) for rs in all_rss)
    status: Object = {
        "observedGeneration": d["metadata"].get("generation", 0),
        "replicas": status_sum(all_rss, "replicas"),
        "updatedReplicas": int(((new_rs or {}).get("status") or {}).get("replicas") or 0),
        "readyReplicas": status_sum(all_rss, "readyReplicas"),
        "availableReplicas": available,
        "unavailableReplicas": max(0, total - available),
        "terminatingReplicas": status_sum(all_rss, "terminatingReplicas"),
    }
    if not any("terminatingReplicas" in (rs.get("status") or {}) for rs in all_rss):
        del status["terminatingReplicas"]  # no ReplicaSet reports it (the gate is off)
    if previous.get("collisionCount") is not None:
        status["collisionCount"] = previous["collisionCount"]
    status["conditions"] = clone(previous.get("conditions") or [])
    holder = {"status": status}
    if available >= replicas(d) - max_unavailable(d):
        util.set_condition(
            holder,
            util.new_condition(
                "Available",
                "True",
                "MinimumReplicasAvailable",
                "Deployment has minimum availability.",
            ),
        )
    else:
        util.set_condition(
            holder,
            util.new_condition(
                "Available",
                "False",
                "MinimumReplicasUnavailable",
                "Deployment does not have minimum availability.",
            ),
        )
    for field in (
        "replicas",
        "updatedReplicas",
        "readyReplicas",
        "availableReplicas",
        "unavailableReplicas",
        "terminatingReplicas",
    ):
        if status.get(field) == 0 and field not in previous:
            del status[field]
    return status


async def is_scaling_event(ctx: Context, d: Object, rs_list: list[Object]) -> bool:
    new_rs, old = await new_and_old(ctx, d, rs_list, create=False)
    for rs in [*old, *([new_rs] if new_rs else [])]:
        if replicas(rs) <= 0:
            continue
        desired = util.annotations_of(rs).get(DESIRED_REPLICAS)
        if desired is not None and desired.isdigit() and int(desired) != replicas(d):
            return True
    return False


def _for_annotating(rs: Object) -> Object:
    """A copy of ``rs`` whose annotations and spec may be changed: the rest is shared with the
    cached object, and only read (a whole clone on every sync cost more than the rest of it)."""
    meta = rs["metadata"]
    copied = {**rs, "metadata": {**meta}, "spec": {**rs["spec"]}}
    if meta.get("annotations") is not None:
        copied["metadata"]["annotations"] = dict(meta["annotations"])
    return copied


async def put_replicaset(ctx: Context, rs: Object) -> Object:
    meta = rs["metadata"]
    return await ctx.kube.replace(ctx.apis[REPLICASETS], meta["namespace"], meta["name"], rs)


async def update_status(ctx: Context, d: Object) -> None:
    """PUT /status; a conflict propagates (the key is retried from a fresher cache)."""
    meta = d["metadata"]
    updated = await ctx.kube.replace(
        ctx.apis[DEPLOYMENTS], meta["namespace"], meta["name"], d, subresource="status"
    )
    meta["resourceVersion"] = updated["metadata"]["resourceVersion"]


def event(ctx: Context, d: Object, event_type: str, reason: str, message: str) -> None:
    ctx.events.record(d, event_type, reason, message, component=COMPONENT)


def _swap(
    old: list[Object], new_rs: Object | None, updated: Object
) -> tuple[list[Object], Object | None]:
    uid = updated["metadata"]["uid"]
    if new_rs is not None and new_rs["metadata"]["uid"] == uid:
        return old, updated
    return [updated if rs["metadata"]["uid"] == uid else rs for rs in old], new_rs

"""The Recreate strategy (upstream's recreate.go).

Scale every old ReplicaSet to zero, wait until none of their pods is left running (the cache's
pods by controller, not only the ReplicaSets' status), and only then create or scale up the new
ReplicaSet, so old and new pods never run together.
"""

from __future__ import annotations

from reconcilers.controller import Context, Result
from reconcilers.controllers.deployment import progress, sync, util
from reconcilers.controllers.deployment.util import replicas, status_sum
from reconcilers.kinds import PODS, Object, clone

__all__ = ["old_pods_running", "rollout_recreate"]


async def rollout_recreate(ctx: Context, d: Object, rs_list: list[Object]) -> Result:
    status_before = clone(d.get("status") or {})
    new_rs, old = await sync.new_and_old(ctx, d, rs_list, create=False)
    all_rss = [*old, *([new_rs] if new_rs else [])]
    scaled = False
    updated_old = []
    for rs in old:
        current = rs
        if replicas(rs) > 0:
            changed, current = await sync.scale_and_record(ctx, rs, 0, d)
            scaled = scaled or changed
        updated_old.append(current)
    old = updated_old
    if scaled:
        return await progress.sync_rollout_status(
            ctx, [*old, *([new_rs] if new_rs else [])], new_rs, d
        )
    if old_pods_running(ctx, new_rs, old):
        return await progress.sync_rollout_status(ctx, all_rss, new_rs, d)
    if new_rs is None:
        new_rs, old = await sync.new_and_old(ctx, d, rs_list, create=True)
        assert new_rs is not None
    if replicas(new_rs) != replicas(d):
        _, new_rs = await sync.scale_and_record(ctx, new_rs, replicas(d), d)
    if util.deployment_complete(d, status_before):
        await sync.cleanup_deployment(ctx, d, old)
    return await progress.sync_rollout_status(ctx, [*old, new_rs], new_rs, d)


def old_pods_running(ctx: Context, new_rs: Object | None, old: list[Object]) -> bool:
    if status_sum(old, "replicas") > 0:
        return True
    new_uid = new_rs["metadata"]["uid"] if new_rs else None
    for rs in old:
        if rs["metadata"]["uid"] == new_uid:
            continue
        for pod in ctx.cache.controlled_by(PODS, rs["metadata"]["uid"]):
            if (pod.get("status") or {}).get("phase") not in ("Succeeded", "Failed"):
                return True
    return False

"""The RollingUpdate strategy (upstream's rolling.go).

Each sync takes one step: grow the new ReplicaSet up to ``replicas + maxSurge`` pods, or else
shrink old ones while ``replicas - maxUnavailable`` stay available (unhealthy pods first); once
the rollout is complete, prune the history. Any step ends with the status written.
"""

from __future__ import annotations

from kubus.kube import KubeApiError
from reconcilers.controller import Context, Result
from reconcilers.controllers.deployment import progress, sync, util
from reconcilers.controllers.deployment.util import max_unavailable, replicas, status_sum
from reconcilers.kinds import Object, clone

__all__ = ["reconcile_new_replicaset", "reconcile_old_replicasets", "rollout_rolling"]


async def rollout_rolling(ctx: Context, d: Object, rs_list: list[Object]) -> Result:
    status_before = clone(d.get("status") or {})
    new_rs, old = await sync.new_and_old(ctx, d, rs_list, create=True)
    assert new_rs is not None
    all_rss = [*old, new_rs]
    scaled, new_rs = await reconcile_new_replicaset(ctx, all_rss, new_rs, d)
    all_rss = [*old, new_rs]
    if scaled:
        return await progress.sync_rollout_status(ctx, all_rss, new_rs, d)
    scaled_old, old = await reconcile_old_replicasets(ctx, all_rss, old, new_rs, d)
    all_rss = [*old, new_rs]
    if scaled_old:
        return await progress.sync_rollout_status(ctx, all_rss, new_rs, d)
    if util.deployment_complete(d, status_before):
        await sync.cleanup_deployment(ctx, d, old)
    return await progress.sync_rollout_status(ctx, all_rss, new_rs, d)


async def reconcile_new_replicaset(
    ctx: Context, all_rss: list[Object], new_rs: Object, d: Object
) -> tuple[bool, Object]:
    desired = replicas(d)
    if replicas(new_rs) == desired:
        return False, new_rs
    target = desired if replicas(new_rs) > desired else util.new_rs_new_replicas(d, all_rss, new_rs)
    return await sync.scale_and_record(ctx, new_rs, target, d)


async def reconcile_old_replicasets(
    ctx: Context, all_rss: list[Object], old: list[Object], new_rs: Object, d: Object
) -> tuple[bool, list[Object]]:
    active_old = [rs for rs in old if replicas(rs) > 0]
    if sum(replicas(rs) for rs in active_old) == 0:
        return False, old
    all_pods = sum(replicas(rs) for rs in all_rss)
    min_available = replicas(d) - max_unavailable(d)
    new_unavailable = replicas(new_rs) - int(
        (new_rs.get("status") or {}).get("availableReplicas") or 0
    )
    max_scaled_down = all_pods - min_available - new_unavailable
    if max_scaled_down <= 0:
        return False, old
    replaced: dict[str, Object] = {}
    # cleanupUnhealthyReplicas: old ReplicaSets' unavailable pods go first, oldest first.
    cleaned = 0
    total = 0
    for rs in sorted(active_old, key=util.creation_key):
        if total >= max_scaled_down:
            break
        available = int((rs.get("status") or {}).get("availableReplicas") or 0)
        if replicas(rs) == 0 or replicas(rs) == available:
            continue
        count = min(max_scaled_down - total, replicas(rs) - available)
        if count < 0:
            return False, old
        try:
            _, updated = await sync.scale_and_record(ctx, rs, replicas(rs) - count, d)
        except KubeApiError:
            return False, old
        replaced[rs["metadata"]["uid"]] = updated
        total += count
        cleaned += count
    active_old = [replaced.get(rs["metadata"]["uid"], rs) for rs in active_old]
    # scaleDownOldReplicaSetsForRollingUpdate: then available ones, down to minAvailable.
    scaled = 0
    available_all = status_sum([*active_old, new_rs], "availableReplicas")
    if available_all > min_available:
        budget = available_all - min_available
        for rs in sorted(active_old, key=util.creation_key):
            if scaled >= budget:
                break
            if replicas(rs) == 0:
                continue
            count = min(replicas(rs), budget - scaled)
            try:
                _, updated = await sync.scale_and_record(ctx, rs, replicas(rs) - count, d)
            except KubeApiError:
                return False, old
            replaced[rs["metadata"]["uid"]] = updated
            scaled += count
    return cleaned + scaled > 0, [replaced.get(rs["metadata"]["uid"], rs) for rs in old]

"""Rollout progress (upstream's progress.go): the ``Progressing`` condition and its deadline.

After each rollout step the status is recomputed and the ``Progressing`` condition moved on:
``NewReplicaSetAvailable`` once complete, ``ReplicaSetUpdated`` while pods move,
``ProgressDeadlineExceeded`` past ``progressDeadlineSeconds`` without progress; a ReplicaSet's
``ReplicaFailure`` is carried over. A Deployment with nothing to write is requeued for the
moment its deadline would pass.
"""

from __future__ import annotations

import datetime

from reconcilers.controller import Context, Result
from reconcilers.controllers.deployment import sync, util
from reconcilers.controllers.podutil import parse_time
from reconcilers.kinds import Object, clone

__all__ = ["replica_failures", "requeue_stuck_deployment", "sync_rollout_status"]


async def sync_rollout_status(
    ctx: Context, all_rss: list[Object], new_rs: Object | None, d: Object
) -> Result:
    status = sync.calculate_status(all_rss, new_rs, d)
    current = clone(d)
    current["status"] = status
    if not util.has_progress_deadline(d):
        util.remove_condition(current, "Progressing")
    progressing = util.get_condition(d, "Progressing")
    name = new_rs["metadata"]["name"] if new_rs else None
    what = f'ReplicaSet "{name}"' if name else f'Deployment "{d["metadata"]["name"]}"'
    complete_already = (
        status.get("replicas") == status.get("updatedReplicas")
        and progressing is not None
        and progressing.get("reason") == "NewReplicaSetAvailable"
    )
    if util.has_progress_deadline(d) and not complete_already:
        if util.deployment_complete(d, status):
            util.set_condition(
                current,
                util.new_condition(
                    "Progressing",
                    "True",
                    "NewReplicaSetAvailable",
                    f"{what} has successfully progressed.",
                ),
            )
        elif util.deployment_progressing(d, status):
            condition = util.new_condition(
                "Progressing", "True", "ReplicaSetUpdated", f"{what} is progressing."
            )
            if progressing is not None:
                if progressing.get("status") == "True":
                    condition["lastTransitionTime"] = progressing.get("lastTransitionTime")
                util.remove_condition(current, "Progressing")
            util.set_condition(current, condition)
        elif util.deployment_timed_out(d, current):
            util.set_condition(
                current,
                util.new_condition(
                    "Progressing",
                    "False",
                    "ProgressDeadlineExceeded",
                    f"{what} has timed out progressing.",
                ),
            )
    failure = replica_failures(new_rs, all_rss)
    if failure is not None:
        util.set_condition(current, failure)
    else:
        util.remove_condition(current, "ReplicaFailure")
    if current["status"] == (d.get("status") or {}):
        return requeue_stuck_deployment(d, status)
    d["status"] = current["status"]
    await sync.update_status(ctx, d)
    return Result()


def requeue_stuck_deployment(d: Object, status: Object) -> Result:
    progressing = util.get_condition(d, "Progressing")
    if not util.has_progress_deadline(d) or progressing is None:
        return Result()
    if (
        util.deployment_complete(d, status)
        or progressing.get("reason") == "ProgressDeadlineExceeded"
    ):
        return Result()
    updated = parse_time(progressing.get("lastUpdateTime"))
    if updated is None:
        return Result()
    deadline = updated + datetime.timedelta(seconds=d["spec"]["progressDeadlineSeconds"])
    after = (deadline - datetime.datetime.now(datetime.UTC)).total_seconds()
    return Result(requeue_after=max(0.0, after) + 1.0)


def replica_failures(new_rs: Object | None, all_rss: list[Object]) -> Object | None:
    for candidates in ([new_rs] if new_rs else [], all_rss):
        for rs in candidates:
            for condition in (rs.get("status") or {}).get("conditions") or ():
                if condition.get("type") == "ReplicaFailure":
                    when = condition.get("lastTransitionTime")
                    return {
                        "type": "ReplicaFailure",
                        "status": condition.get("status"),
                        "lastUpdateTime": when,
                        "lastTransitionTime": when,
                        "reason": condition.get("reason"),
                        "message": condition.get("message"),
                    }
    return None

"""Rolling back by the deprecated ``deprecated.deployment.rollback.to`` annotation (rollback.go).

apps/v1 has no ``spec.rollbackTo``; kcm still honours the annotation that extensions/v1beta1
clients set: the Deployment takes the template (and annotations) of the ReplicaSet with that
revision, and the annotation is cleared, whatever the outcome, with an event saying which.
"""

from __future__ import annotations

import re
from typing import Final

from reconcilers.controller import Context
from reconcilers.controllers.deployment import sync, util
from reconcilers.controllers.deployment.util import ROLLBACK_TO
from reconcilers.kinds import DEPLOYMENTS, Object

__all__ = [
    "ROLLBACK_DONE",
    "ROLLBACK_NOT_FOUND",
    "ROLLBACK_UNCHANGED",
    "clear_rollback_to",
    "rollback",
    "rollback_to",
]

# Event reasons of a rollback, as upstream's deployment util names them.
ROLLBACK_DONE: Final = "DeploymentRollback"
ROLLBACK_NOT_FOUND: Final = "DeploymentRollbackRevisionNotFound"
ROLLBACK_UNCHANGED: Final = "DeploymentRollbackTemplateUnchanged"
_INT64: Final = re.compile(r"[+-]?[0-9]+")


async def rollback(ctx: Context, d: Object, rs_list: list[Object], revision: int) -> None:
    """The deprecated ``deprecated.deployment.rollback.to`` annotation (apps/v1's form of
    extensions/v1beta1's spec.rollbackTo): put that revision's template back, then clear it.
    Revision 0 means the one before the latest."""
    new_rs, old = await sync.new_and_old(ctx, d, rs_list, create=True)
    all_rss = [*old, new_rs] if new_rs is not None else old
    if revision == 0:
        revision = util.last_revision(all_rss)
        if revision == 0:
            sync.event(ctx, d, "Warning", ROLLBACK_NOT_FOUND, "Unable to find last revision.")
            await clear_rollback_to(ctx, d)
            return
    for rs in all_rss:
        try:
            found = util.revision(rs)
        except ValueError:
            continue
        if found != revision:
            continue
        if util.equal_ignore_hash(d["spec"]["template"], rs["spec"]["template"]):
            sync.event(
                ctx,
                d,
                "Warning",
                ROLLBACK_UNCHANGED,
                "The rollback revision contains the same template as current deployment "
                f'"{d["metadata"]["name"]}"',
            )
            await clear_rollback_to(ctx, d)
            return
        util.set_from_replicaset_template(d, rs)
        util.set_annotations_from_replicaset(d, rs)
        await clear_rollback_to(ctx, d)
        sync.event(
            ctx,
            d,
            "Normal",
            ROLLBACK_DONE,
            f'Rolled back deployment "{d["metadata"]["name"]}" to revision {revision}',
        )
        return
    sync.event(ctx, d, "Warning", ROLLBACK_NOT_FOUND, "Unable to find the revision to rollback to.")
    await clear_rollback_to(ctx, d)


async def clear_rollback_to(ctx: Context, d: Object) -> None:
    """PUT the Deployment (template included) without the rollback annotation."""
    util.annotations_of(d).pop(ROLLBACK_TO, None)
    meta = d["metadata"]
    await ctx.kube.replace(ctx.apis[DEPLOYMENTS], meta["namespace"], meta["name"], d)


def rollback_to(d: Object) -> int | None:
    """The revision asked for by the rollback annotation; an unparsable one is ignored."""
    text = util.annotations_of(d).get(ROLLBACK_TO, "")
    if not _INT64.fullmatch(text):
        return None
    value = int(text)
    return value if -(2**63) <= value < 2**63 else None

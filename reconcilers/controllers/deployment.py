"""The Deployment controller, as kube-controller-manager's ``deployment-controller``.

A Deployment owns ReplicaSets named ``<deployment>-<pod-template-hash>``; the one whose
template equals the Deployment's (hash label aside) is the *new* one, all others are *old*.
Each sync, in upstream's order: adopt/release ReplicaSets; honour pause (scale only), the
deprecated rollback annotation, and scaling events (proportional scaling across ReplicaSets);
otherwise roll out (RollingUpdate: surge the new up to ``replicas + maxSurge``, scale old down
while ``replicas - maxUnavailable`` stay available; Recreate: old to zero, wait for their pods,
then the new up); prune old ReplicaSets past ``revisionHistoryLimit`` once complete; and write
status with the ``Progressing`` and ``Available`` conditions and upstream's reasons.
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import logging
import re
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar, Final

from bus.subjects import ResourceType
from kubus.kube import AlreadyExistsError, KubeApiError, NotFoundError
from reconcilers.cache import controller_of
from reconcilers.controller import (
    Context,
    ControllerBase,
    Permission,
    Request,
    Result,
    RetryPolicy,
    Scope,
)
from reconcilers.controllers import deploymentutil as util
from reconcilers.controllers.deploymentutil import (
    DESIRED_REPLICAS,
    MAX_INT32,
    MAX_REPLICAS,
    NOT_COPIED,
    POD_TEMPLATE_HASH,
    REVISION,
    REVISION_HISTORY,
    ROLLBACK_TO,
    max_surge,
    max_unavailable,
    replicas,
    status_sum,
)
from reconcilers.controllers.ownerrefs import controller_ref, recheck_owner
from reconcilers.controllers.podutil import parse_time
from reconcilers.selectors import InvalidSelectorError, Selector

__all__ = ["DEPLOYMENTS", "DeploymentController"]

log = logging.getLogger(__name__)

DEPLOYMENTS: Final = ResourceType("apps", "v1", "deployments")
REPLICASETS: Final = ResourceType("apps", "v1", "replicasets")
PODS: Final = ResourceType("", "v1", "pods")
COMPONENT: Final = "deployment-controller"
MAX_HISTORY_CHARS: Final = 2000
# Event reasons of a rollback, as upstream's deployment util names them.
ROLLBACK_DONE: Final = "DeploymentRollback"
ROLLBACK_NOT_FOUND: Final = "DeploymentRollbackRevisionNotFound"
ROLLBACK_UNCHANGED: Final = "DeploymentRollbackTemplateUnchanged"
_INT64: Final = re.compile(r"[+-]?[0-9]+")

Object = dict[str, Any]


EVENTS: Final = ResourceType("", "v1", "events")


class DeploymentController(ControllerBase):
    name: ClassVar[str] = "deployment-controller"
    aliases: ClassVar[tuple[str, ...]] = ("deployment",)
    primary: ClassVar[ResourceType] = DEPLOYMENTS
    reads: ClassVar[tuple[ResourceType, ...]] = (DEPLOYMENTS, REPLICASETS, PODS)
    concurrency_flag: ClassVar[str] = "concurrent-deployment-syncs"
    default_concurrency: ClassVar[int] = 5
    scope: ClassVar[Scope] = Scope.PARTITIONED
    # kcm's maxRetries: a Deployment that keeps failing is dropped until its next change.
    retry: ClassVar[RetryPolicy] = RetryPolicy(max_retries=15)
    permissions: ClassVar[tuple[Permission, ...]] = (
        Permission.on(REPLICASETS, "create", "update", "patch", "delete"),
        Permission.on(DEPLOYMENTS, "get", "update"),
        Permission.on(DEPLOYMENTS, "update", subresource="status"),
        Permission.on(EVENTS, "create", "patch"),
    )
    feature_gates: ClassVar[Mapping[str, bool]] = {"DeploymentReplicaSetTerminatingReplicas": True}

    def __init__(self, context: Context) -> None:
        self._ctx = context

    # --- event handlers -----------------------------------------------------------------

    def requests_for(
        self, resource: ResourceType, obj: Object | None, old: Object | None
    ) -> Iterable[Request]:
        target = obj or old
        if target is None:
            return []
        if resource == DEPLOYMENTS:
            return [Request.of(target)]
        if resource == REPLICASETS:
            requests = []
            if obj is not None and old is not None:
                if obj["metadata"].get("resourceVersion") == old["metadata"].get("resourceVersion"):
                    return []
                if controller_of(old) and controller_of(old) != controller_of(obj):
                    owner = self._owner(old, DEPLOYMENTS, "Deployment")
                    if owner is not None:
                        requests.append(Request.of(owner))
            owner = self._owner(target, DEPLOYMENTS, "Deployment")
            if owner is not None:
                return [*requests, Request.of(owner)]
            if obj is not None and controller_of(obj) is None:
                requests += [Request.of(d) for d in self._matching_deployments(obj)]
            return requests
        if obj is None:  # a pod went away: a Recreate rollout may be waiting for it
            rs = self._owner(target, REPLICASETS, "ReplicaSet")
            deployment = self._owner(rs, DEPLOYMENTS, "Deployment") if rs else None
            if deployment is not None and util.is_recreate(deployment):
                return [Request.of(deployment)]
        return []

    def _owner(self, obj: Object, resource: ResourceType, kind: str) -> Object | None:
        ref = controller_of(obj)
        if ref is None or ref.get("kind") != kind:
            return None
        owner = self._ctx.cache.get(resource, obj["metadata"].get("namespace"), ref["name"])
        if owner is None or owner["metadata"].get("uid") != ref.get("uid"):
            return None
        return owner

    def _matching_deployments(self, rs: Object) -> list[Object]:
        labels = rs["metadata"].get("labels")
        if not labels:
            return []
        found = []
        for deployment in self._ctx.cache.in_namespace(DEPLOYMENTS, rs["metadata"]["namespace"]):
            try:
                selector = Selector.parse(deployment.get("spec", {}).get("selector"))
            except InvalidSelectorError:
                continue
            if not selector.empty and selector.matches(labels):
                found.append(deployment)
        return found

    # --- sync ---------------------------------------------------------------------------

    async def reconcile(self, request: Request) -> Result:
        cached = self._ctx.cache.get(DEPLOYMENTS, request.namespace, request.name)
        if cached is None:
            return Result()
        d = copy.deepcopy(cached)
        spec = d.get("spec", {})
        selector_spec = spec.get("selector")
        if selector_spec == {}:
            self._event(
                d,
                "Warning",
                "SelectingAll",
                "This deployment is selecting all pods. A non-empty selector is required.",
            )
            status = d.setdefault("status", {})
            if status.get("observedGeneration", 0) < d["metadata"].get("generation", 0):
                status["observedGeneration"] = d["metadata"]["generation"]
                await self._update_status(d)
            return Result()
        try:
            selector = Selector.parse(selector_spec)
        except InvalidSelectorError as error:
            meta = d["metadata"]
            raise KubeApiError(
                0,
                "Invalid",
                (
                    f"deployment {meta['namespace']}/{meta['name']} has invalid label selector: "
                    f"{error}"
                ),
            ) from error
        rs_list = await self._claim_replicasets(d, selector)
        if d["metadata"].get("deletionTimestamp"):
            return await self._sync_status_only(d, rs_list)
        await self._check_paused_conditions(d)
        if spec.get("paused"):
            return await self._sync(d, rs_list)
        # Not re-entrant: the rollback is finished (annotation cleared) before any rollout.
        rollback_to = _rollback_to(d)
        if rollback_to is not None:
            await self._rollback(d, rs_list, rollback_to)
            return Result()
        if await self._is_scaling_event(d, rs_list):
            return await self._sync(d, rs_list)
        if util.is_recreate(d):
            return await self._rollout_recreate(d, rs_list)
        return await self._rollout_rolling(d, rs_list)

    async def _claim_replicasets(self, d: Object, selector: Selector) -> list[Object]:
        uid = d["metadata"]["uid"]
        namespace = d["metadata"]["namespace"]
        deleting = bool(d["metadata"].get("deletionTimestamp"))
        claimed: list[Object] = []
        checked: Exception | bool | None = False
        for rs in list(self._ctx.cache.in_namespace(REPLICASETS, namespace)):
            ref = controller_of(rs)
            labels = rs["metadata"].get("labels")
            if ref is not None:
                if ref.get("uid") != uid:
                    continue
                if selector.matches(labels):
                    claimed.append(rs)
                elif not deleting:
                    await self._patch_owner(
                        rs,
                        {
                            "metadata": {
                                "uid": rs["metadata"]["uid"],
                                "ownerReferences": [{"$patch": "delete", "uid": uid}],
                            }
                        },
                    )
                continue
            if deleting or not selector.matches(labels) or rs["metadata"].get("deletionTimestamp"):
                continue
            if checked is False:
                checked = await recheck_owner(self._ctx.kube, self._ctx.apis[DEPLOYMENTS], d)
            if isinstance(checked, Exception):
                raise KubeApiError(
                    0,
                    "CannotAdopt",
                    (
                        f"can't adopt ReplicaSet {namespace}/{rs['metadata']['name']} "
                        f"({rs['metadata']['uid']}): {checked}"
                    ),
                )
            adopted = await self._patch_owner(
                rs,
                {
                    "metadata": {
                        "ownerReferences": [
                            controller_ref(d, api_version="apps/v1", kind="Deployment")
                        ],
                        "uid": rs["metadata"]["uid"],
                    }
                },
            )
            if adopted is not None:
                claimed.append(adopted)
        return claimed

    async def _patch_owner(self, rs: Object, patch: Object) -> Object | None:
        try:
            return await self._ctx.kube.patch(
                self._ctx.apis[REPLICASETS],
                rs["metadata"]["namespace"],
                rs["metadata"]["name"],
                patch,
                patch_type="strategic",
            )
        except NotFoundError:
            return None

    # --- new and old ReplicaSets ----------------------------------------------------------

    def _find_new(self, d: Object, rs_list: list[Object]) -> Object | None:
        template = d["spec"]["template"]
        for rs in sorted(rs_list, key=util.creation_key):
            if util.equal_ignore_hash(rs["spec"]["template"], template):
                return rs
        return None

    async def _new_and_old(
        self, d: Object, rs_list: list[Object], *, create: bool
    ) -> tuple[Object | None, list[Object]]:
        new_rs = self._find_new(d, rs_list)
        new_uid = new_rs["metadata"]["uid"] if new_rs else None
        old = [rs for rs in rs_list if rs["metadata"]["uid"] != new_uid]
        return await self._get_new_replicaset(d, rs_list, old, create=create), old

    async def _get_new_replicaset(
        self, d: Object, rs_list: list[Object], old: list[Object], *, create: bool
    ) -> Object | None:
        existing = self._find_new(d, rs_list)
        new_revision = str(util.max_revision(old) + 1)
        if existing is not None:
            rs = copy.deepcopy(existing)
            updated = _set_new_rs_annotations(d, rs, new_revision, exists=True)
            min_ready = d["spec"].get("minReadySeconds", 0)
            if updated or rs["spec"].get("minReadySeconds", 0) != min_ready:
                rs["spec"]["minReadySeconds"] = min_ready
                return await self._put_rs(rs)
            needs_update = _set_deployment_revision(d, _annotations(rs).get(REVISION, ""))
            if _has_deadline(d) and _condition(d, "Progressing") is None:
                _set_condition(
                    d,
                    _new_condition(
                        "Progressing",
                        "True",
                        "FoundNewReplicaSet",
                        f'Found new replica set "{rs["metadata"]["name"]}"',
                    ),
                )
                needs_update = True
            if needs_update:
                await self._update_status(d)
            return rs
        if not create:
            return None
        template = copy.deepcopy(d["spec"]["template"])
        collision = (d.get("status") or {}).get("collisionCount")
        pod_hash = util.compute_hash(template, collision)
        template.setdefault("metadata", {}).setdefault("labels", {})[POD_TEMPLATE_HASH] = pod_hash
        selector = copy.deepcopy(d["spec"]["selector"])
        selector.setdefault("matchLabels", {})[POD_TEMPLATE_HASH] = pod_hash
        name = _replicaset_name(d["metadata"]["name"], pod_hash)
        new_rs: Object = {
            "apiVersion": "apps/v1",
            "kind": "ReplicaSet",
            "metadata": {
                "name": name,
                "namespace": d["metadata"]["namespace"],
                "ownerReferences": [controller_ref(d, api_version="apps/v1", kind="Deployment")],
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
        _set_new_rs_annotations(d, new_rs, new_revision, exists=False)
        already_exists = False
        try:
            created = await self._ctx.kube.create(
                self._ctx.apis[REPLICASETS], d["metadata"]["namespace"], new_rs
            )
        except AlreadyExistsError:
            live = await self._ctx.kube.get(
                self._ctx.apis[REPLICASETS], d["metadata"]["namespace"], name
            )
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
                    await self._update_status(d)
                raise
        except KubeApiError as error:
            message = f'Failed to create new replica set "{name}": {error}'
            if _has_deadline(d):
                _set_condition(
                    d, _new_condition("Progressing", "False", "ReplicaSetCreateError", message)
                )
                with contextlib.suppress(KubeApiError):
                    await self._update_status(d)
            self._event(d, "Warning", "ReplicaSetCreateError", message)
            raise
        if not already_exists and replicas(created) > 0:
            self._event(
                d,
                "Normal",
                "ScalingReplicaSet",
                f"Scaled up replica set {name} from 0 to {replicas(created)}",
            )
        needs_update = _set_deployment_revision(d, new_revision)
        if not already_exists and _has_deadline(d):
            _set_condition(
                d,
                _new_condition(
                    "Progressing",
                    "True",
                    "NewReplicaSetCreated",
                    f'Created new replica set "{name}"',
                ),
            )
            needs_update = True
        if needs_update:
            await self._update_status(d)
        return created

    # --- strategies ---------------------------------------------------------------------

    async def _rollout_rolling(self, d: Object, rs_list: list[Object]) -> Result:
        status_before = copy.deepcopy(d.get("status") or {})
        new_rs, old = await self._new_and_old(d, rs_list, create=True)
        assert new_rs is not None
        all_rss = [*old, new_rs]
        scaled, new_rs = await self._reconcile_new(all_rss, new_rs, d)
        all_rss = [*old, new_rs]
        if scaled:
            return await self._sync_rollout_status(all_rss, new_rs, d)
        scaled_old, old = await self._reconcile_old(all_rss, old, new_rs, d)
        all_rss = [*old, new_rs]
        if scaled_old:
            return await self._sync_rollout_status(all_rss, new_rs, d)
        if _complete(d, status_before):
            await self._cleanup(d, old)
        return await self._sync_rollout_status(all_rss, new_rs, d)

    async def _reconcile_new(
        self, all_rss: list[Object], new_rs: Object, d: Object
    ) -> tuple[bool, Object]:
        desired = replicas(d)
        if replicas(new_rs) == desired:
            return False, new_rs
        target = (
            desired if replicas(new_rs) > desired else util.new_rs_new_replicas(d, all_rss, new_rs)
        )
        return await self._scale_and_record(new_rs, target, d)

    async def _reconcile_old(
        self, all_rss: list[Object], old: list[Object], new_rs: Object, d: Object
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
                _, updated = await self._scale_and_record(rs, replicas(rs) - count, d)
            except KubeApiError:
                return False, old
            replaced[rs["metadata"]["uid"]] = updated
            total += count
            cleaned += count
        active_old = [replaced.get(rs["metadata"]["uid"], rs) for rs in active_old]
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
                    _, updated = await self._scale_and_record(rs, replicas(rs) - count, d)
                except KubeApiError:
                    return False, old
                replaced[rs["metadata"]["uid"]] = updated
                scaled += count
        return cleaned + scaled > 0, [replaced.get(rs["metadata"]["uid"], rs) for rs in old]

    async def _rollout_recreate(self, d: Object, rs_list: list[Object]) -> Result:
        status_before = copy.deepcopy(d.get("status") or {})
        new_rs, old = await self._new_and_old(d, rs_list, create=False)
        all_rss = [*old, *([new_rs] if new_rs else [])]
        scaled = False
        updated_old = []
        for rs in old:
            current = rs
            if replicas(rs) > 0:
                changed, current = await self._scale_and_record(rs, 0, d)
                scaled = scaled or changed
            updated_old.append(current)
        old = updated_old
        if scaled:
            return await self._sync_rollout_status([*old, *([new_rs] if new_rs else [])], new_rs, d)
        if self._old_pods_running(new_rs, old):
            return await self._sync_rollout_status(all_rss, new_rs, d)
        if new_rs is None:
            new_rs, old = await self._new_and_old(d, rs_list, create=True)
            assert new_rs is not None
        if replicas(new_rs) != replicas(d):
            _, new_rs = await self._scale_and_record(new_rs, replicas(d), d)
        if _complete(d, status_before):
            await self._cleanup(d, old)
        return await self._sync_rollout_status([*old, new_rs], new_rs, d)

    def _old_pods_running(self, new_rs: Object | None, old: list[Object]) -> bool:
        if status_sum(old, "replicas") > 0:
            return True
        new_uid = new_rs["metadata"]["uid"] if new_rs else None
        for rs in old:
            if rs["metadata"]["uid"] == new_uid:
                continue
            for pod in self._ctx.cache.controlled_by(PODS, rs["metadata"]["uid"]):
                if (pod.get("status") or {}).get("phase") not in ("Succeeded", "Failed"):
                    return True
        return False

    # --- scaling ------------------------------------------------------------------------

    async def _rollback(self, d: Object, rs_list: list[Object], revision: int) -> None:
        """The deprecated ``deprecated.deployment.rollback.to`` annotation (apps/v1's form of
        extensions/v1beta1's spec.rollbackTo): put that revision's template back, then clear it.
        Revision 0 means the one before the latest."""
        new_rs, old = await self._new_and_old(d, rs_list, create=True)
        all_rss = [*old, new_rs] if new_rs is not None else old
        if revision == 0:
            revision = util.last_revision(all_rss)
            if revision == 0:
                self._event(d, "Warning", ROLLBACK_NOT_FOUND, "Unable to find last revision.")
                await self._clear_rollback_to(d)
                return
        for rs in all_rss:
            try:
                found = util.revision(rs)
            except ValueError:
                continue
            if found != revision:
                continue
            if util.equal_ignore_hash(d["spec"]["template"], rs["spec"]["template"]):
                self._event(
                    d,
                    "Warning",
                    ROLLBACK_UNCHANGED,
                    "The rollback revision contains the same template as current deployment "
                    f'"{d["metadata"]["name"]}"',
                )
                await self._clear_rollback_to(d)
                return
            util.set_from_replicaset_template(d, rs)
            util.set_annotations_from_replicaset(d, rs)
            await self._clear_rollback_to(d)
            self._event(
                d,
                "Normal",
                ROLLBACK_DONE,
                f'Rolled back deployment "{d["metadata"]["name"]}" to revision {revision}',
            )
            return
        self._event(d, "Warning", ROLLBACK_NOT_FOUND, "Unable to find the revision to rollback to.")
        await self._clear_rollback_to(d)

    async def _clear_rollback_to(self, d: Object) -> None:
        """PUT the Deployment (template included) without the rollback annotation."""
        _annotations(d).pop(ROLLBACK_TO, None)
        meta = d["metadata"]
        await self._ctx.kube.replace(
            self._ctx.apis[DEPLOYMENTS], meta["namespace"], meta["name"], d
        )

    async def _is_scaling_event(self, d: Object, rs_list: list[Object]) -> bool:
        new_rs, old = await self._new_and_old(d, rs_list, create=False)
        for rs in [*old, *([new_rs] if new_rs else [])]:
            if replicas(rs) <= 0:
                continue
            desired = _annotations(rs).get(DESIRED_REPLICAS)
            if desired is not None and desired.isdigit() and int(desired) != replicas(d):
                return True
        return False

    async def _sync(self, d: Object, rs_list: list[Object]) -> Result:
        new_rs, old = await self._new_and_old(d, rs_list, create=False)
        old, new_rs = await self._scale(d, new_rs, old)
        if d["spec"].get("paused"):
            await self._cleanup(d, old)
        await self._sync_status([*old, *([new_rs] if new_rs else [])], new_rs, d)
        return Result()

    async def _scale(
        self, d: Object, new_rs: Object | None, old: list[Object]
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
                _, updated = await self._scale_and_record(target, desired, d)
                return _swap(old, new_rs, updated)
            return old, new_rs
        if new_rs is not None and _saturated(d, new_rs):
            for rs in [rs for rs in old if replicas(rs) > 0]:
                _, updated = await self._scale_and_record(rs, 0, d)
                old, new_rs = _swap(old, new_rs, updated)
            return old, new_rs
        if util.is_recreate(d):
            return old, new_rs
        for rs, size in util.proportional_sizes(d, active):
            _, updated = await self._scale_rs(rs, size, d)
            old, new_rs = _swap(old, new_rs, updated)
        return old, new_rs

    async def _scale_and_record(self, rs: Object, count: int, d: Object) -> tuple[bool, Object]:
        if replicas(rs) == count:
            return False, rs
        return await self._scale_rs(rs, count, d)

    async def _scale_rs(self, rs: Object, count: int, d: Object) -> tuple[bool, Object]:
        resize = replicas(rs) != count
        desired, maximum = str(replicas(d)), str(replicas(d) + max_surge(d))
        annotations = _annotations(rs)
        if (
            not resize
            and annotations.get(DESIRED_REPLICAS) == desired
            and annotations.get(MAX_REPLICAS) == maximum
        ):
            return False, rs
        updated = copy.deepcopy(rs)
        updated["spec"]["replicas"] = count
        updated["metadata"].setdefault("annotations", {}).update(
            {DESIRED_REPLICAS: desired, MAX_REPLICAS: maximum}
        )
        result = await self._put_rs(updated)
        if resize:
            direction = "up" if count > replicas(rs) else "down"
            self._event(
                d,
                "Normal",
                "ScalingReplicaSet",
                f"Scaled {direction} replica set {rs['metadata']['name']} from "
                f"{replicas(rs)} to {count}",
            )
        return resize, result

    async def _put_rs(self, rs: Object) -> Object:
        meta = rs["metadata"]
        return await self._ctx.kube.replace(
            self._ctx.apis[REPLICASETS], meta["namespace"], meta["name"], rs
        )

    async def _cleanup(self, d: Object, old: list[Object]) -> None:
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
                await self._ctx.kube.delete(
                    self._ctx.apis[REPLICASETS], rs["metadata"]["namespace"], rs["metadata"]["name"]
                )
            except NotFoundError:
                continue

    # --- status -------------------------------------------------------------------------

    async def _sync_status_only(self, d: Object, rs_list: list[Object]) -> Result:
        new_rs, old = await self._new_and_old(d, rs_list, create=False)
        await self._sync_status([*old, *([new_rs] if new_rs else [])], new_rs, d)
        return Result()

    async def _sync_status(self, all_rss: list[Object], new_rs: Object | None, d: Object) -> None:
        status = _calculate_status(all_rss, new_rs, d)
        if status != (d.get("status") or {}):
            d["status"] = status
            await self._update_status(d)

    async def _sync_rollout_status(
        self, all_rss: list[Object], new_rs: Object | None, d: Object
    ) -> Result:
        status = _calculate_status(all_rss, new_rs, d)
        current = copy.deepcopy(d)
        current["status"] = status
        if not _has_deadline(d):
            _remove_condition(current, "Progressing")
        progressing = _condition(d, "Progressing")
        name = new_rs["metadata"]["name"] if new_rs else None
        what = f'ReplicaSet "{name}"' if name else f'Deployment "{d["metadata"]["name"]}"'
        complete_already = (
            status.get("replicas") == status.get("updatedReplicas")
            and progressing is not None
            and progressing.get("reason") == "NewReplicaSetAvailable"
        )
        if _has_deadline(d) and not complete_already:
            if _complete(d, status):
                _set_condition(
                    current,
                    _new_condition(
                        "Progressing",
                        "True",
                        "NewReplicaSetAvailable",
                        f"{what} has successfully progressed.",
                    ),
                )
            elif _progressing(d, status):
                condition = _new_condition(
                    "Progressing", "True", "ReplicaSetUpdated", f"{what} is progressing."
                )
                if progressing is not None:
                    if progressing.get("status") == "True":
                        condition["lastTransitionTime"] = progressing.get("lastTransitionTime")
                    _remove_condition(current, "Progressing")
                _set_condition(current, condition)
            elif _timed_out(d, current):
                _set_condition(
                    current,
                    _new_condition(
                        "Progressing",
                        "False",
                        "ProgressDeadlineExceeded",
                        f"{what} has timed out progressing.",
                    ),
                )
        failure = _replica_failure(new_rs, all_rss)
        if failure is not None:
            _set_condition(current, failure)
        else:
            _remove_condition(current, "ReplicaFailure")
        if current["status"] == (d.get("status") or {}):
            return self._requeue_stuck(d, status)
        d["status"] = current["status"]
        await self._update_status(d)
        return Result()

    def _requeue_stuck(self, d: Object, status: Object) -> Result:
        progressing = _condition(d, "Progressing")
        if not _has_deadline(d) or progressing is None:
            return Result()
        if _complete(d, status) or progressing.get("reason") == "ProgressDeadlineExceeded":
            return Result()
        updated = parse_time(progressing.get("lastUpdateTime"))
        if updated is None:
            return Result()
        deadline = updated + datetime.timedelta(seconds=d["spec"]["progressDeadlineSeconds"])
        after = (deadline - datetime.datetime.now(datetime.UTC)).total_seconds()
        return Result(requeue_after=max(0.0, after) + 1.0)

    async def _check_paused_conditions(self, d: Object) -> None:
        if not _has_deadline(d):
            return
        condition = _condition(d, "Progressing")
        if condition is not None and condition.get("reason") == "ProgressDeadlineExceeded":
            return
        paused_exists = condition is not None and condition.get("reason") == "DeploymentPaused"
        paused = bool(d["spec"].get("paused"))
        if paused and not paused_exists:
            _set_condition(
                d,
                _new_condition(
                    "Progressing", "Unknown", "DeploymentPaused", "Deployment is paused"
                ),
            )
        elif not paused and paused_exists:
            _set_condition(
                d,
                _new_condition(
                    "Progressing", "Unknown", "DeploymentResumed", "Deployment is resumed"
                ),
            )
        else:
            return
        await self._update_status(d)

    async def _update_status(self, d: Object) -> None:
        """PUT /status; a conflict propagates (the key is retried from a fresher cache)."""
        meta = d["metadata"]
        updated = await self._ctx.kube.replace(
            self._ctx.apis[DEPLOYMENTS], meta["namespace"], meta["name"], d, subresource="status"
        )
        meta["resourceVersion"] = updated["metadata"]["resourceVersion"]

    def _event(self, d: Object, event_type: str, reason: str, message: str) -> None:
        self._ctx.events.record(d, event_type, reason, message, component=COMPONENT)


# --- helpers ------------------------------------------------------------------------------


def _annotations(obj: Object) -> dict[str, str]:
    annotations: dict[str, str] = obj.get("metadata", {}).get("annotations") or {}
    return annotations


def _rollback_to(d: Object) -> int | None:
    """The revision asked for by the rollback annotation; an unparsable one is ignored."""
    text = _annotations(d).get(ROLLBACK_TO, "")
    if not _INT64.fullmatch(text):
        return None
    value = int(text)
    return value if -(2**63) <= value < 2**63 else None


def _replicaset_name(deployment: str, pod_hash: str) -> str:
    limit = 253 - 1 - len(pod_hash)
    if len(deployment) > limit > 0:
        deployment = deployment[:limit]
    return f"{deployment}-{pod_hash}"


def _set_new_rs_annotations(d: Object, rs: Object, new_revision: str, *, exists: bool) -> bool:
    annotations = rs["metadata"].setdefault("annotations", {})
    changed = False
    for key, value in _annotations(d).items():
        if key in NOT_COPIED or annotations.get(key, "") == value:
            continue
        annotations[key] = value
        changed = True
    old_text = annotations.get(REVISION)
    try:
        old_revision = int(old_text) if old_text else 0
    except ValueError:
        return False
    new = int(new_revision)
    if old_revision < new:
        annotations[REVISION] = new_revision
        changed = True
    if old_text and old_revision < new:
        history = annotations.get(REVISION_HISTORY, "")
        if not history:
            annotations[REVISION_HISTORY] = old_text
        else:
            entries = history.split(",")
            while entries and len(",".join(entries)) + len(old_text) + 1 > MAX_HISTORY_CHARS:
                entries.pop(0)
            if len(",".join(entries)) + len(old_text) + 1 <= MAX_HISTORY_CHARS:
                annotations[REVISION_HISTORY] = ",".join([*entries, old_text]).strip(",")
    if not exists:
        desired, maximum = str(replicas(d)), str(replicas(d) + max_surge(d))
        if annotations.get(DESIRED_REPLICAS) != desired or annotations.get(MAX_REPLICAS) != maximum:
            annotations[DESIRED_REPLICAS] = desired
            annotations[MAX_REPLICAS] = maximum
            changed = True
    return changed


def _set_deployment_revision(d: Object, revision_text: str) -> bool:
    annotations = d["metadata"].setdefault("annotations", {})
    if annotations.get(REVISION) != revision_text:
        annotations[REVISION] = revision_text
        return True
    return False


def _has_deadline(d: Object) -> bool:
    deadline = d["spec"].get("progressDeadlineSeconds", 600)
    return deadline is not None and deadline != MAX_INT32


def _condition(d: Object, kind: str) -> Object | None:
    for condition in (d.get("status") or {}).get("conditions") or ():
        if condition.get("type") == kind:
            return dict(condition)
    return None


def _new_condition(kind: str, status: str, reason: str, message: str) -> Object:
    now = util.now_text()
    return {
        "type": kind,
        "status": status,
        "lastUpdateTime": now,
        "lastTransitionTime": now,
        "reason": reason,
        "message": message,
    }


def _set_condition(d: Object, condition: Object) -> None:
    status = d.setdefault("status", {})
    conditions = status.setdefault("conditions", [])
    current = next((c for c in conditions if c.get("type") == condition["type"]), None)
    if (
        current is not None
        and current.get("status") == condition["status"]
        and current.get("reason") == condition["reason"]
    ):
        return
    if current is not None and current.get("status") == condition["status"]:
        condition = {**condition, "lastTransitionTime": current.get("lastTransitionTime")}
    status["conditions"] = [c for c in conditions if c.get("type") != condition["type"]]
    status["conditions"].append(condition)


def _remove_condition(d: Object, kind: str) -> None:
    status = d.get("status") or {}
    if status.get("conditions"):
        status["conditions"] = [c for c in status["conditions"] if c.get("type") != kind]


def _calculate_status(all_rss: list[Object], new_rs: Object | None, d: Object) -> Object:
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
    status["conditions"] = copy.deepcopy(previous.get("conditions") or [])
    holder = {"status": status}
    if available >= replicas(d) - max_unavailable(d):
        _set_condition(
            holder,
            _new_condition(
                "Available",
                "True",
                "MinimumReplicasAvailable",
                "Deployment has minimum availability.",
            ),
        )
    else:
        _set_condition(
            holder,
            _new_condition(
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


def _complete(d: Object, status: Object) -> bool:
    desired = replicas(d)
    return bool(
        status.get("updatedReplicas", 0) == desired
        and status.get("replicas", 0) == desired
        and status.get("availableReplicas", 0) == desired
        and status.get("observedGeneration", 0) >= d["metadata"].get("generation", 0)
    )


def _progressing(d: Object, new: Object) -> bool:
    old = d.get("status") or {}

    def get(status: Object, field: str) -> int:
        return int(status.get(field) or 0)

    return (
        get(new, "updatedReplicas") > get(old, "updatedReplicas")
        or get(new, "replicas") - get(new, "updatedReplicas")
        < get(old, "replicas") - get(old, "updatedReplicas")
        or get(new, "readyReplicas") > get(old, "readyReplicas")
        or get(new, "availableReplicas") > get(old, "availableReplicas")
    )


def _timed_out(d: Object, current: Object) -> bool:
    if not _has_deadline(d):
        return False
    condition = _condition(current, "Progressing")
    if condition is None or condition.get("reason") == "NewReplicaSetAvailable":
        return False
    if condition.get("reason") == "ProgressDeadlineExceeded":
        return True
    updated = parse_time(condition.get("lastUpdateTime"))
    if updated is None:
        return False
    deadline = updated + datetime.timedelta(seconds=d["spec"]["progressDeadlineSeconds"])
    return deadline < datetime.datetime.now(datetime.UTC)


def _replica_failure(new_rs: Object | None, all_rss: list[Object]) -> Object | None:
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


def _saturated(d: Object, rs: Object) -> bool:
    desired = _annotations(rs).get(DESIRED_REPLICAS)
    if desired is None or not desired.isdigit():
        return False
    return (
        replicas(rs) == replicas(d)
        and int(desired) == replicas(d)
        and int((rs.get("status") or {}).get("availableReplicas") or 0) == replicas(d)
    )


def _swap(
    old: list[Object], new_rs: Object | None, updated: Object
) -> tuple[list[Object], Object | None]:
    uid = updated["metadata"]["uid"]
    if new_rs is not None and new_rs["metadata"]["uid"] == uid:
        return old, updated
    return [updated if rs["metadata"]["uid"] == uid else rs for rs in old], new_rs

"""Deleting everything in a terminating namespace, as upstream's namespaced_resources_deleter.go.

All through the live apiserver, never the bus: the content of a namespace is every namespaced
resource discovery lists (custom resources included), far more than any cache holds. Per sync:

1. read the namespace live; nothing to do unless it has a ``deletionTimestamp`` and a non-empty
   ``spec.finalizers`` (upstream's ``finalized``); set ``status.phase: Terminating`` if needed;
2. discover every namespaced resource that can be deleted (each group's preferred version);
3. delete pods first (KEP-5080 ordered namespace deletion, GA and locked since 1.34): while
   pods remain, nothing else is touched, so a workload never loses its ConfigMaps, Secrets or
   policies before it has stopped;
4. for every resource: estimate the graceful termination left (pods only), ``deletecollection``
   (or list and delete each item where the verb is missing), then list again, metadata only,
   to count what remains and which finalizers hold it;
5. write the five deletion conditions (:mod:`.conditions`) if they changed;
6. once nothing remains, remove the ``kubernetes`` finalizer with ``PUT .../finalize``; the
   apiserver deletes the namespace when no finalizer is left.

``delete`` returns the estimate of seconds until the remaining content goes (0: done) or raises
:class:`ContentDeletionError` with every failure of the sync.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Final

import aiohttp
import msgspec

from kubus.kube import ApiResource, ConflictError, KubeApiError, KubeClient, NotFoundError
from kubus.kube.discovery import discover_all
from reconcilers.controllers.namespace.conditions import (
    ConditionUpdater,
    ContentTotals,
    discovery_failure_message,
    group_discovery_error,
)
from reconcilers.kinds import Object, clone

__all__ = [
    "FINALIZER_ESTIMATE_SECONDS",
    "FINALIZER_KUBERNETES",
    "ContentDeletionError",
    "NamespacedResourcesDeleter",
    "ResourceOutcome",
    "deletable_resources",
    "estimate_for_pods",
    "remaining_estimate",
]

log = logging.getLogger(__name__)

FINALIZER_KUBERNETES: Final = "kubernetes"
# What an item held by a finalizer is given to go (upstream's finalizerEstimateSeconds).
FINALIZER_ESTIMATE_SECONDS: Final = 15
PAGE_SIZE: Final = 500
BACKGROUND: Final = "Background"


class ContentDeletionError(Exception):
    """One or more failures of a sync (apimachinery's aggregate error)."""

    def __init__(self, errors: list[str]) -> None:
        text = errors[0] if len(errors) == 1 else "[" + ", ".join(errors) + "]"
        super().__init__(text)
        self.errors = errors


@dataclass
class ResourceOutcome:
    """What deleting one resource's content left (upstream's gvrDeletionMetadata)."""

    estimate: int = 0  # 0: no estimate made, not "all gone"
    remaining: int = 0
    finalizers: dict[str, int] = field(default_factory=dict)


class _ItemMeta(msgspec.Struct):
    name: str = ""
    finalizers: list[str] = msgspec.field(default_factory=list)


class _Item(msgspec.Struct):
    metadata: _ItemMeta = msgspec.field(default_factory=_ItemMeta)


class _PodSpec(msgspec.Struct, rename="camel"):
    termination_grace_period_seconds: int | None = None


class _PodStatus(msgspec.Struct):
    phase: str = ""


class _Pod(msgspec.Struct):
    spec: _PodSpec = msgspec.field(default_factory=_PodSpec)
    status: _PodStatus = msgspec.field(default_factory=_PodStatus)


_item_decoder = msgspec.json.Decoder(_Item)
_pod_decoder = msgspec.json.Decoder(_Pod)


def estimate_for_pods(pods: Iterable[tuple[str, int | None]]) -> int:
    """The longest grace period of the pods (phase, terminationGracePeriodSeconds) that have
    not finished: how long their kubelets may take to stop them."""
    estimate = 0
    for phase, grace in pods:
        if phase in ("Succeeded", "Failed") or grace is None:
            continue
        estimate = max(estimate, grace)
    return estimate


def remaining_estimate(estimate: int, deleted_at: datetime.datetime, now: datetime.datetime) -> int:
    """``estimate`` counted from the namespace's deletion: 0 once that much time has passed."""
    return 0 if (now - deleted_at).total_seconds() >= estimate else estimate


def deletable_resources(
    resources: Iterable[ApiResource],
) -> tuple[list[ApiResource], list[str]]:
    """The namespaced resources that can be deleted, and one error per group version that does
    not parse (upstream's discovery.GroupVersionResources; discovery here yields parsed ones,
    so only a malformed name can fail)."""
    chosen, errors = [], []
    for resource in resources:
        if not resource.namespaced or "delete" not in resource.verbs:
            continue
        if not resource.version or "/" in resource.version or "/" in resource.group:
            errors.append(f'unexpected GroupVersion string: "{resource.api_version}"')
            continue
        chosen.append(resource)
    return chosen, errors


def _gvr(resource: ApiResource) -> str:
    """schema.GroupVersionResource's String(), as upstream's messages print it."""
    return f"{resource.group}/{resource.version}, Resource={resource.name}"


def _text(error: Exception) -> str:
    """An apiserver error as client-go prints it: the Status's message."""
    if isinstance(error, KubeApiError) and error.message:
        return error.message
    return str(error) or type(error).__name__


def _unsupported(error: KubeApiError) -> bool:
    # A resource discovery lists may still refuse a verb: MethodNotSupported, or NotFound.
    return error.status in (404, 405)


class NamespacedResourcesDeleter:
    def __init__(
        self,
        kube: KubeClient,
        namespaces: ApiResource,
        *,
        finalizer_token: str = FINALIZER_KUBERNETES,
    ) -> None:
        self._kube = kube
        self._namespaces = namespaces
        self._token = finalizer_token

    async def delete(self, name: str) -> int:
        """One sync of namespace ``name``: the estimate of seconds left (0 when done)."""
        try:
            namespace = await self._kube.get(self._namespaces, None, name)
        except NotFoundError:
            return 0
        if not namespace["metadata"].get("deletionTimestamp"):
            return 0
        try:
            namespace = await self._retry_on_conflict(namespace, self._ensure_terminating)
        except NotFoundError:
            return 0
        if not namespace["metadata"].get("deletionTimestamp"):
            return 0
        if not namespace.get("spec", {}).get("finalizers"):
            return 0  # finalized: nothing of ours left to do
        estimate = await self.delete_all_content(namespace)
        if estimate > 0:
            return estimate
        # NotFound: another deleter with the same token finished first.
        with contextlib.suppress(NotFoundError):
            await self._retry_on_conflict(namespace, self._finalize)
        return 0

    # --- the namespace itself -------------------------------------------------------------

    async def _retry_on_conflict(self, namespace: Object, update: Any) -> Object:
        """``update`` (an async function of the namespace), again on the latest namespace
        after each conflict, unless its UID changed meanwhile."""
        latest = namespace
        while True:
            try:
                result: Object = await update(latest)
                return result
            except ConflictError:
                previous = latest
                latest = await self._kube.get(self._namespaces, None, previous["metadata"]["name"])
                if latest["metadata"].get("uid") != previous["metadata"].get("uid"):
                    raise KubeApiError(
                        409, "Conflict", "namespace uid has changed across retries"
                    ) from None

    async def _ensure_terminating(self, namespace: Object) -> Object:
        status = namespace.get("status") or {}
        if status.get("phase") == "Terminating":
            return namespace
        updated = clone(namespace)
        updated.setdefault("status", {})["phase"] = "Terminating"
        return await self._kube.replace(
            self._namespaces, None, namespace["metadata"]["name"], updated, subresource="status"
        )

    async def _finalize(self, namespace: Object) -> Object:
        kept = sorted(
            {f for f in namespace.get("spec", {}).get("finalizers") or [] if f != self._token}
        )
        body = {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": namespace["metadata"],
            "spec": {**namespace.get("spec", {}), "finalizers": kept},
        }
        try:
            return await self._kube.replace(
                self._namespaces, None, namespace["metadata"]["name"], body, subresource="finalize"
            )
        except NotFoundError:
            return namespace

    async def _write_status(self, namespace: Object) -> None:
        name = namespace["metadata"]["name"]
        try:
            await self._kube.replace(self._namespaces, None, name, namespace, subresource="status")
        except (KubeApiError, aiohttp.ClientError, TimeoutError) as error:
            log.error("couldn't update status condition for namespace %r: %s", name, _text(error))

    # --- the content ----------------------------------------------------------------------

    async def delete_all_content(self, namespace: Object) -> int:
        """Delete what the namespace holds; the estimate of seconds left. Failures are
        collected, every resource is still tried, and they are raised together at the end."""
        name = namespace["metadata"]["name"]
        deleted_at = _parse_time(namespace["metadata"]["deletionTimestamp"])
        errors: list[str] = []
        conditions = ConditionUpdater()
        resources: list[ApiResource] = []
        try:
            discovery = await discover_all(self._kube)
        except (KubeApiError, aiohttp.ClientError, TimeoutError) as error:
            errors.append(_text(error))
            conditions.discovery_failed(_text(error))
        else:
            resources = list(discovery.preferred)
            if discovery.failed:
                errors.append(group_discovery_error(discovery.failed))
                conditions.discovery_failed(discovery_failure_message(discovery.failed))
        resources, parse_errors = deletable_resources(resources)
        for error_text in parse_errors:
            errors.append(error_text)
            conditions.group_version_failed(error_text)

        estimate = 0
        totals = ContentTotals()
        pods = [r for r in resources if r.group == "" and r.name == "pods"]
        rest = [r for r in resources if r not in pods]
        for stage in (pods, rest):
            for resource in stage:
                outcome, failure = await self._delete_resource(resource, name, deleted_at)
                if failure is not None:
                    errors.append(failure)
                    conditions.content_deletion_failed(failure)
                estimate = max(estimate, outcome.estimate)
                totals.add(resource.group, resource.name, outcome.remaining, outcome.finalizers)
            if stage is pods and totals.remaining:
                # The rest waits until every pod is gone. As kcm v1.36 does, the totals are
                # not reported on this path: the remaining-content conditions stay "ok"
                # while only pods remain (checked against its binary).
                totals = ContentTotals()
                break
        conditions.content_totals(totals)
        # Always written when changed: a condition that said "failed" before must say "ok"
        # once it is, even if another finalizer keeps the namespace.
        if conditions.update(namespace.setdefault("status", {})):
            await self._write_status(namespace)
        log.debug("namespace %s: estimate %ds, errors %s", name, estimate, errors)
        if errors:
            raise ContentDeletionError(errors)
        return estimate

    async def _delete_resource(
        self, resource: ApiResource, namespace: str, deleted_at: datetime.datetime
    ) -> tuple[ResourceOutcome, str | None]:
        """Upstream's deleteAllContentForGroupVersionResource: what remains, and the error."""
        try:
            estimate = await self._estimate(resource, namespace, deleted_at)
        except (KubeApiError, aiohttp.ClientError, TimeoutError) as error:
            return ResourceOutcome(), _text(error)
        try:
            if not await self._delete_collection(resource, namespace):
                await self._delete_each(resource, namespace)
            items = await self._list(resource, namespace)
        except (KubeApiError, aiohttp.ClientError, TimeoutError) as error:
            return ResourceOutcome(estimate=estimate), _text(error)
        if items is None:  # cannot be listed: nothing to count
            return ResourceOutcome(estimate=estimate), None
        if not items:
            return ResourceOutcome(), None
        finalizers: dict[str, int] = {}
        for item in items:
            for finalizer in item.metadata.finalizers:
                finalizers[finalizer] = finalizers.get(finalizer, 0) + 1
        if estimate:
            return ResourceOutcome(estimate, len(items), finalizers), None
        if finalizers:
            return ResourceOutcome(FINALIZER_ESTIMATE_SECONDS, len(items), finalizers), None
        return (
            ResourceOutcome(estimate, len(items)),
            f"unexpected items still remain in namespace: {namespace} for gvr: {_gvr(resource)}",
        )

    async def _estimate(
        self, resource: ApiResource, namespace: str, deleted_at: datetime.datetime
    ) -> int:
        if resource.group != "" or resource.name != "pods":
            return 0
        pods: list[tuple[str, int | None]] = []
        token: str | None = None
        while True:
            page = await self._kube.list_page(
                resource, limit=PAGE_SIZE, continue_token=token, namespace=namespace
            )
            for raw in page.items:
                pod = _pod_decoder.decode(raw)
                pods.append((pod.status.phase, pod.spec.termination_grace_period_seconds))
            token = page.metadata.continue_
            if not token:
                break
        now = datetime.datetime.now(datetime.UTC)
        return remaining_estimate(estimate_for_pods(pods), deleted_at, now)

    async def _delete_collection(self, resource: ApiResource, namespace: str) -> bool:
        """True if the resource has ``deletecollection`` (and it was called)."""
        if "deletecollection" not in resource.verbs:
            return False
        try:
            # Background: the garbage collector must not add the orphan finalizer to what
            # the namespace controller deletes generically.
            await self._kube.delete_collection(resource, namespace, propagation=BACKGROUND)
        except KubeApiError as error:
            if _unsupported(error):
                return False
            raise
        return True

    async def _delete_each(self, resource: ApiResource, namespace: str) -> None:
        items = await self._list(resource, namespace)
        for item in items or []:
            try:
                await self._kube.delete(
                    resource, namespace, item.metadata.name, propagation=BACKGROUND
                )
            except KubeApiError as error:
                if not _unsupported(error):
                    raise

    async def _list(self, resource: ApiResource, namespace: str) -> list[_Item] | None:
        """Every item's metadata, or None if the resource cannot be listed."""
        if "list" not in resource.verbs:
            return None
        items: list[_Item] = []
        token: str | None = None
        while True:
            try:
                page = await self._kube.list_page(
                    resource,
                    limit=PAGE_SIZE,
                    continue_token=token,
                    metadata_only=True,
                    namespace=namespace,
                )
            except KubeApiError as error:
                if _unsupported(error):
                    return None
                raise
            items.extend(_item_decoder.decode(raw) for raw in page.items)
            token = page.metadata.continue_
            if not token:
                return items


def _parse_time(text: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))

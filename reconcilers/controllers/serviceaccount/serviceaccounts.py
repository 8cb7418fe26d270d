"""The ServiceAccounts controller, as kube-controller-manager's ``serviceaccount-controller``.

Every active namespace has a ``default`` ServiceAccount: created when the namespace appears or
changes, created again when it is deleted. A namespace that is not ``Active`` (terminating) is
left alone, and a create the apiserver refuses because the namespace is terminating is not an
error.

A request names a namespace (``Request(None, <namespace>)``): it hashes to the namespace's own
partition, where its ServiceAccounts are cached, so the process owning that partition does
the work.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import ClassVar, Final

from bus.subjects import ResourceType
from kubus.kube import AlreadyExistsError, KubeApiError
from reconcilers.controller import Context, ControllerBase, Permission, Request, Result, Scope
from reconcilers.kinds import NAMESPACES, SERVICEACCOUNTS, Object
from reconcilers.worker import namespace_terminating

__all__ = ["SERVICE_ACCOUNTS_TO_ENSURE", "ServiceAccountsController"]

log = logging.getLogger(__name__)

# kcm's ServiceAccountsControllerOptions default: only `default`.
SERVICE_ACCOUNTS_TO_ENSURE: Final = ("default",)


class ServiceAccountsController(ControllerBase):
    name: ClassVar[str] = "serviceaccount-controller"
    aliases: ClassVar[tuple[str, ...]] = ("serviceaccount",)
    primary: ClassVar[ResourceType] = NAMESPACES
    reads: ClassVar[tuple[ResourceType, ...]] = (NAMESPACES, SERVICEACCOUNTS)
    # kcm runs one worker and has no flag for it: the flag is kubus's own, the default kcm's.
    concurrency_flag: ClassVar[str] = "concurrent-serviceaccount-syncs"
    default_concurrency: ClassVar[int] = 1
    scope: ClassVar[Scope] = Scope.PARTITIONED
    permissions: ClassVar[tuple[Permission, ...]] = (Permission.on(SERVICEACCOUNTS, "create"),)
    enabled_by_default: ClassVar[bool] = True

    def __init__(self, context: Context) -> None:
        self._ctx = context

    def requests_for(
        self, resource: ResourceType, obj: Object | None, old: Object | None
    ) -> Iterable[Request]:
        if resource == NAMESPACES:
            # Added or updated (a relist included); a deleted namespace needs nothing.
            return [Request(None, obj["metadata"]["name"])] if obj is not None else []
        if obj is None and old is not None:
            return [Request(None, old["metadata"]["namespace"])]
        return []

    async def reconcile(self, request: Request) -> Result:
        namespace = self._ctx.cache.get(NAMESPACES, None, request.name)
        if namespace is None or namespace.get("status", {}).get("phase") != "Active":
            return Result()
        api = self._ctx.apis[SERVICEACCOUNTS]
        failures: list[Exception] = []
        for name in SERVICE_ACCOUNTS_TO_ENSURE:
            if self._ctx.cache.get(SERVICEACCOUNTS, request.name, name) is not None:
                continue
            try:
                await self._ctx.kube.create(
                    api, request.name, {"metadata": {"name": name, "namespace": request.name}}
                )
            except AlreadyExistsError:
                continue  # the cache is a hop behind
            except KubeApiError as error:
                if not namespace_terminating(error):
                    failures.append(error)
                continue
            log.debug("%s: created ServiceAccount %s/%s", self.name, request.name, name)
        if failures:
            raise failures[0]
        return Result()

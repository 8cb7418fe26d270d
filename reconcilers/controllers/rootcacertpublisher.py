"""The root CA publisher, as kube-controller-manager's ``root-ca-certificate-publisher-controller``.

Every namespace holds the ConfigMap ``kube-root-ca.crt``: key ``ca.crt`` is the CA bundle
(``--root-ca-file``, else the kubeconfig's CA), annotation ``kubernetes.io/description`` says
what it is for. A deleted one is created again, an edited one is put back (its data and the
annotation; other metadata is kept). Namespaces that are not ``Active`` are
left alone: upstream enqueues no update of them and ignores a create refused because the
namespace is terminating; kubus also skips them when the cache shows it.

A request names a namespace (``Request(None, <namespace>)``), in the namespace's partition.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar, Final

from bus.subjects import ResourceType
from kubus.kube import KubeApiError, NotFoundError
from reconcilers.controller import Context, ControllerBase, Flag, Permission, Request, Result, Scope
from reconcilers.controllers.serviceaccount.options import ROOT_CA_FILE, root_ca
from reconcilers.kinds import CONFIGMAPS, NAMESPACES, Object, clone
from reconcilers.worker import namespace_terminating

__all__ = ["CONFIGMAP_NAME", "DESCRIPTION", "RootCACertPublisher"]

CONFIGMAP_NAME: Final = "kube-root-ca.crt"
DESCRIPTION_ANNOTATION: Final = "kubernetes.io/description"
DESCRIPTION: Final = (
    "Contains a CA bundle that can be used to verify the kube-apiserver when using internal "
    "endpoints such as the internal service IP or kubernetes.default.svc. No other usage is "
    "guaranteed across distributions of Kubernetes clusters."
)


class RootCACertPublisher(ControllerBase):
    name: ClassVar[str] = "root-ca-certificate-publisher-controller"
    aliases: ClassVar[tuple[str, ...]] = ("root-ca-cert-publisher",)
    primary: ClassVar[ResourceType] = NAMESPACES
    reads: ClassVar[tuple[ResourceType, ...]] = (NAMESPACES, CONFIGMAPS)
    # kcm runs one worker and has no flag for it: the flag is kubus's own, the default kcm's.
    concurrency_flag: ClassVar[str] = "concurrent-root-ca-cert-publisher-syncs"
    default_concurrency: ClassVar[int] = 1
    scope: ClassVar[Scope] = Scope.PARTITIONED
    permissions: ClassVar[tuple[Permission, ...]] = (Permission.on(CONFIGMAPS, "create", "update"),)
    flags: ClassVar[tuple[Flag, ...]] = (ROOT_CA_FILE,)
    enabled_by_default: ClassVar[bool] = True

    def __init__(self, context: Context) -> None:
        self._ctx = context
        self._data = {"ca.crt": root_ca(context.options, context.kube).decode()}

    def requests_for(
        self, resource: ResourceType, obj: Object | None, old: Object | None
    ) -> Iterable[Request]:
        if resource == NAMESPACES:
            if obj is None:
                return []
            active = obj.get("status", {}).get("phase") == "Active"
            # Added: always; updated: only while active (upstream's handlers).
            return [Request(None, obj["metadata"]["name"])] if old is None or active else []
        target = obj or old
        if target is None or target["metadata"].get("name") != CONFIGMAP_NAME:
            return []
        if obj is not None and old is None:
            return []  # upstream watches updates and deletes, not adds
        return [Request(None, target["metadata"]["namespace"])]

    async def reconcile(self, request: Request) -> Result:
        namespace = self._ctx.cache.get(NAMESPACES, None, request.name)
        if namespace is not None and namespace.get("status", {}).get("phase") != "Active":
            return Result()
        api = self._ctx.apis[CONFIGMAPS]
        current = self._ctx.cache.get(CONFIGMAPS, request.name, CONFIGMAP_NAME)
        if current is None:
            body = {
                "metadata": {
                    "name": CONFIGMAP_NAME,
                    "namespace": request.name,
                    "annotations": {DESCRIPTION_ANNOTATION: DESCRIPTION},
                },
                "data": dict(self._data),
            }
            try:
                await self._ctx.kube.create(api, request.name, body)
            except KubeApiError as error:
                # No retry when the namespace is gone or terminating; AlreadyExists is (the
                # cache is behind, the retry sees the ConfigMap).
                if isinstance(error, NotFoundError) or namespace_terminating(error):
                    return Result()
                raise
            return Result()
        annotations = current["metadata"].get("annotations") or {}
        if current.get("data") == self._data and annotations.get(DESCRIPTION_ANNOTATION):
            return Result()
        updated: dict[str, Any] = clone(current)
        updated["data"] = dict(self._data)
        updated["metadata"].setdefault("annotations", {})[DESCRIPTION_ANNOTATION] = DESCRIPTION
        await self._ctx.kube.replace(api, request.name, CONFIGMAP_NAME, updated)
        return Result()

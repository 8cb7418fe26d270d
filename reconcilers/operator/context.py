"""What an operator's reconcile function works with, for one object.

Reads come from the process's cache (the kinds the operator ``owns`` and ``watches``, kept on
the bus), writes go to the apiserver under the operator's field manager: ``apply`` is
server-side apply with the object's controller reference set, ``update_status`` applies the
status subresource with ``observedGeneration``. Secrets travel the bus as metadata only: read
them with ``read`` (a live GET), never from the cache.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import msgspec
from opentelemetry import trace

from bus.subjects import ResourceType
from reconcilers.controller import Context
from reconcilers.operator.resource import CustomResource

if TYPE_CHECKING:
    from kubus.kube import ApiResource, KubeClient

__all__ = ["OperatorContext"]

R = TypeVar("R", bound=CustomResource)
Object = dict[str, Any]


class OperatorContext(Generic[R]):
    def __init__(self, runtime: Context, obj: R, raw: Object, *, manager: str) -> None:
        self._runtime = runtime
        self.obj = obj
        self.raw = raw  # the object as cached, for what the typed one leaves out
        self.manager = manager  # the field manager of every write, the operator's name

    @property
    def kube(self) -> KubeClient:
        return self._runtime.kube

    @property
    def span(self) -> trace.Span:
        """The reconcile's span: attributes and events added here land in its trace."""
        return trace.get_current_span()

    @property
    def namespace(self) -> str | None:
        return self.obj.metadata.namespace

    def owned(self, resource: ResourceType) -> list[Object]:
        """The cached ``resource`` objects this object controls (by uid)."""
        return list(self._runtime.cache.controlled_by(resource, self.obj.metadata.uid))

    def get(self, resource: ResourceType, name: str, namespace: str | None = None) -> Object | None:
        """A cached object (of a kind the operator owns or watches), in this object's namespace
        unless another is given."""
        return self._runtime.cache.get(resource, namespace or self.namespace, name)

    def cached(self, resource: ResourceType) -> Iterator[Object]:
        """Every cached ``resource`` object of this object's namespace."""
        return self._runtime.cache.in_namespace(resource, self.namespace)

    async def read(
        self, resource: ResourceType, name: str, namespace: str | None = None
    ) -> Object | None:
        """A live GET (Secrets, or anything not cached); None when it does not exist."""
        from kubus.kube import NotFoundError

        try:
            return await self.kube.get(await self.api(resource), namespace or self.namespace, name)
        except NotFoundError:
            return None

    def owner_reference(self) -> Object:
        """The controller reference to this object, as a dependent carries it."""
        cls = type(self.obj)
        return {
            "apiVersion": cls.api_version(),
            "kind": cls.kind,
            "name": self.obj.metadata.name,
            "uid": self.obj.metadata.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }

    async def apply(self, resource: ResourceType, body: Mapping[str, Any]) -> Object:
        """Server-side apply of ``body`` (apiVersion, kind, metadata.name and the fields the
        operator owns), in this object's namespace, controlled by it."""
        manifest = dict(body)
        metadata = dict(manifest.get("metadata") or {})
        if "name" not in metadata:
            raise ValueError(f"apply of {resource}: the body has no metadata.name")
        namespace = metadata.setdefault("namespace", self.namespace)
        references = [
            reference
            for reference in metadata.get("ownerReferences") or []
            if reference.get("uid") != self.obj.metadata.uid
        ]
        metadata["ownerReferences"] = [*references, self.owner_reference()]
        manifest["metadata"] = metadata
        manifest.setdefault("apiVersion", _api_version(resource))
        if "kind" not in manifest:
            raise ValueError(f"apply of {resource} {metadata['name']}: the body has no kind")
        return await self.kube.apply(
            await self.api(resource),
            namespace,
            metadata["name"],
            manifest,
            field_manager=self.manager,
        )

    async def delete(self, resource: ResourceType, name: str, namespace: str | None = None) -> bool:
        """Delete an object (background propagation); False when it was gone already."""
        from kubus.kube import NotFoundError

        try:
            await self.kube.delete(await self.api(resource), namespace or self.namespace, name)
        except NotFoundError:
            return False
        return True

    async def update_status(self, status: msgspec.Struct) -> Object:
        """Apply ``status`` to the status subresource, its ``observedGeneration`` (when the
        struct has one) set to the generation this reconcile read."""
        if "observed_generation" in status.__struct_fields__:
            status = msgspec.structs.replace(
                status, observed_generation=self.obj.metadata.generation
            )
        cls = type(self.obj)
        body = {
            "apiVersion": cls.api_version(),
            "kind": cls.kind,
            "metadata": {"name": self.obj.metadata.name, "namespace": self.namespace},
            "status": msgspec.to_builtins(status),
        }
        if self.namespace is None:
            del body["metadata"]["namespace"]
        return await self.kube.apply(
            await self.api(cls.primary_resource()),
            self.namespace,
            self.obj.metadata.name,
            body,
            field_manager=self.manager,
            subresource="status",
        )

    def event(self, event_type: str, reason: str, message: str) -> None:
        """An Event on this object (``Normal`` or ``Warning``), sent in the background."""
        self._runtime.events.record(self.raw, event_type, reason, message, component=self.manager)

    async def api(self, resource: ResourceType) -> ApiResource:
        """The apiserver's description of ``resource`` (discovered once, then kept)."""
        known = self._runtime.apis.get(resource)
        if known is None:
            known = await self.kube.discover(resource.group, resource.version, resource.resource)
            self._runtime.apis[resource] = known
        return known


def _api_version(resource: ResourceType) -> str:
    return f"{resource.group}/{resource.version}" if resource.group else resource.version

"""From apiserver JSON to an :class:`ObjectEvent`: the watcher's per-event hot path.

One msgspec projection decode per object (about a microsecond for a pod); the object's bytes
go on the bus as the apiserver sent them, with ``apiVersion`` and ``kind`` added to list items
(which the apiserver sends without them). An object too large for a NATS message becomes a
reference: its identity only, with a logged error naming it.

A metadata-only resource (Secrets without ``--mirror-secrets``) is listed and watched as
PartialObjectMetadata, so its data never reaches the watcher; what goes on the bus is rebuilt
from the metadata alone, under the resource's own apiVersion and kind, without managedFields
and without kubectl's last-applied-configuration annotation (which holds the whole object as
applied, a Secret's values included).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Final

import msgspec

from bus.envelope import EventType, decode_meta, reference_payload, resource_version_number
from bus.layout import BusLayout
from bus.subjects import ObjectRef, ResourceType
from kubus.kube import ApiResource, ObjectIdentity, decode_identity
from watcher import metrics
from watcher.publisher import Known, ObjectEvent

__all__ = ["MetadataOnlyEventFactory", "ObjectEventFactory"]

log = logging.getLogger(__name__)

# Headers travel inside the max payload too; keep room for them.
_HEADER_ROOM: Final = 2048
# Past this many remembered subjects the memo starts over (about 200 bytes an entry).
_LOCATED_MAX: Final = 200_000
LAST_APPLIED: Final = "kubectl.kubernetes.io/last-applied-configuration"


class _Metadata(msgspec.Struct):
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)


_metadata_decoder = msgspec.json.Decoder(_Metadata)
_encoder = msgspec.json.Encoder()


class ObjectEventFactory:
    def __init__(
        self,
        *,
        api: ApiResource,
        resource: ResourceType,
        layout: BusLayout,
        max_payload: int,
        known: Callable[[str], Known | None],
    ) -> None:
        self._api = api
        self._resource = resource
        self._layout = layout
        self._max_payload = max_payload
        self._known = known
        self._label = str(resource)
        self._list_prefix = (
            b'{"apiVersion":"'
            + api.api_version.encode()
            + b'","kind":"'
            + api.kind.encode()
            + b'",'
        )
        self._located: dict[tuple[str | None, str], tuple[ObjectRef, str]] = {}
        self._received = {
            event_type: metrics.EVENTS_RECEIVED.labels(self._label, event_type.value)
            for event_type in EventType
        }

    def _locate(self, namespace: str | None, name: str) -> tuple[ObjectRef, str]:
        """An object's ref and subject, remembered: objects change many times, and encoding a
        subject costs more than the rest of an event's bookkeeping."""
        if len(self._located) >= _LOCATED_MAX:
            self._located.clear()
        ref = ObjectRef(self._resource, namespace, name)
        located = self._located[namespace, name] = (ref, self._layout.subject(ref))
        return located

    def __call__(
        self, raw: bytes, event_type: EventType | None, identity: ObjectIdentity | None = None
    ) -> ObjectEvent:
        """``event_type`` None means a listed object: ADDED unless the bus holds it live.
        ``identity``, when the caller decoded it already (a watch event), saves a decode."""
        if identity is None:
            identity = decode_identity(raw)
        meta = identity.metadata
        payload = raw
        if not identity.api_version:
            payload = self._list_prefix + raw[1:]
        namespace = meta.namespace if self._api.namespaced else None
        located = self._located.get((namespace, meta.name))
        if located is None:
            located = self._locate(namespace, meta.name)
        ref, subject = located
        if event_type is None:
            known = self._known(subject)
            event_type = EventType.ADDED if known is None or known.deleted else EventType.MODIFIED
        reference = len(payload) + _HEADER_ROOM > self._max_payload
        if reference:
            metrics.OVERSIZED_OBJECTS.labels(self._label).inc()
            log.error(
                "%s %s is %d bytes, over the NATS max payload of %d: published as a reference "
                "(readers fetch it from the apiserver)",
                self._label,
                ref.key,
                len(payload),
                self._max_payload,
            )
            projection = decode_meta(raw)
            projection.api_version, projection.kind = self._api.api_version, self._api.kind
            payload = reference_payload(projection)
        self._received[event_type].inc()
        return ObjectEvent(
            resource=self._resource,
            ref=ref,
            subject=subject,
            event=event_type,
            resource_version=resource_version_number(meta.resource_version),
            resource_version_text=meta.resource_version,
            uid=meta.uid,
            payload=payload,
            reference=reference,
        )

    def metadata_payload(self, raw: bytes) -> bytes:
        """The object as metadata only: whatever ``raw`` holds (a PartialObjectMetadata, or a
        full object: a bus payload from a watcher that mirrored it), nothing else survives."""
        metadata = _metadata_decoder.decode(raw).metadata
        metadata.pop("managedFields", None)
        annotations = metadata.get("annotations")
        if isinstance(annotations, dict):
            annotations.pop(LAST_APPLIED, None)
            if not annotations:
                del metadata["annotations"]
        return _encoder.encode(
            {"apiVersion": self._api.api_version, "kind": self._api.kind, "metadata": metadata}
        )


class MetadataOnlyEventFactory(ObjectEventFactory):
    """The same, with the payload rebuilt from the metadata alone (a subclass, so that the
    hot path of every other resource does not test for it)."""

    def __call__(
        self, raw: bytes, event_type: EventType | None, identity: ObjectIdentity | None = None
    ) -> ObjectEvent:
        event = super().__call__(raw, event_type, identity)
        if not event.reference:
            event.payload = self.metadata_payload(raw)
        event.metadata_only = True
        return event

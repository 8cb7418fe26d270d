"""What one message on the object stream says about one object.

The payload is the object's JSON as the apiserver sent it (for a tombstone: the last state the
bus held). Headers carry what a reader needs without decoding the payload:

============================  ===========================================================
``Kubus-Event``               ``ADDED``, ``MODIFIED`` or ``DELETED`` (a tombstone)
``Kubus-Resource-Version``    the object's resourceVersion (for a tombstone found by a
                              relist: the list's resourceVersion)
``Kubus-Uid``                 the object's uid
``Kubus-Reference``           ``true`` when the object was too large for a message: the
                              payload then holds only its identity; read it from the apiserver
``Kubus-Metadata-Only``       ``true`` when the payload is the object's metadata only, by
                              policy (Secrets without ``--mirror-secrets``): apiVersion, kind
                              and metadata; read anything else from the apiserver
``Nats-Msg-Id``               ``<uid>:<resourceVersion>[:DELETED][:METADATA]``, so a
                              republish dedupes
``traceparent``               the W3C trace context of the watcher's publish span
============================  ===========================================================
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any, Final

import msgspec

from bus.errors import EnvelopeError

__all__ = [
    "Envelope",
    "EventType",
    "Header",
    "ObjectMeta",
    "ObjectProjection",
    "decode_meta",
    "header_block",
    "msg_id",
    "reference_payload",
    "resource_version_number",
]


class Header:
    EVENT: Final = "Kubus-Event"
    RESOURCE_VERSION: Final = "Kubus-Resource-Version"
    UID: Final = "Kubus-Uid"
    REFERENCE: Final = "Kubus-Reference"
    METADATA_ONLY: Final = "Kubus-Metadata-Only"
    MSG_ID: Final = "Nats-Msg-Id"
    EXPECTED_LAST_SUBJECT_SEQUENCE: Final = "Nats-Expected-Last-Subject-Sequence"
    TTL: Final = "Nats-TTL"
    TRACEPARENT: Final = "traceparent"
    TRACESTATE: Final = "tracestate"


class EventType(enum.StrEnum):
    ADDED = "ADDED"
    MODIFIED = "MODIFIED"
    DELETED = "DELETED"


class OwnerReference(msgspec.Struct, rename="camel", omit_defaults=True):
    api_version: str
    kind: str
    name: str
    uid: str
    controller: bool | None = None
    block_owner_deletion: bool | None = None


class ObjectMeta(msgspec.Struct, rename="camel", omit_defaults=True):
    """The part of ``metadata`` kubus reads on hot paths; everything else is skipped."""

    name: str = ""
    namespace: str | None = None
    uid: str = ""
    resource_version: str = ""
    generation: int | None = None
    creation_timestamp: str | None = None
    deletion_timestamp: str | None = None
    labels: dict[str, str] | None = None
    owner_references: list[OwnerReference] | None = None


class ObjectProjection(msgspec.Struct):
    """An object reduced to what identifies it: decodes a pod in about a microsecond."""

    metadata: ObjectMeta = msgspec.field(default_factory=ObjectMeta)
    api_version: str = msgspec.field(default="", name="apiVersion")
    kind: str = ""


_meta_decoder = msgspec.json.Decoder(ObjectProjection)
_encoder = msgspec.json.Encoder()


def decode_meta(payload: bytes) -> ObjectProjection:
    return _meta_decoder.decode(payload)


def resource_version_number(resource_version: str) -> int:
    """resourceVersion as the etcd revision it is, for ordering (-1 when not a number).

    Kubernetes documents resourceVersion as opaque, but every apiserver backed by etcd hands out
    the etcd revision, and client-go compares them the same way.
    """
    try:
        return int(resource_version)
    except ValueError:
        return -1


def msg_id(uid: str, resource_version: str, event: EventType) -> str:
    suffix = ":DELETED" if event is EventType.DELETED else ""
    return f"{uid}:{resource_version}{suffix}"


def header_block(
    event: EventType,
    resource_version: str,
    uid: str,
    expected_last_sequence: int,
    *,
    reference: bool = False,
    metadata_only: bool = False,
    ttl: str | None = None,
    extra: Mapping[str, str] | None = None,
) -> bytes:
    """The NATS header block of one object-stream message, built in one pass (hot path).

    A uid or resourceVersion with a line break is refused (ValueError): it would end the
    header block early and inject headers. A metadata-only message's msg id ends in
    ``:METADATA``: the same state republished in the other representation (the watcher's
    ``--mirror-secrets`` switched) then replaces what the bus holds instead of deduping.
    """
    identity = msg_id(uid, resource_version, event)
    if metadata_only:
        identity += ":METADATA"
    text = (
        f"NATS/1.0\r\n{Header.EVENT}: {event}\r\n"  # a StrEnum formats as its value
        f"{Header.RESOURCE_VERSION}: {resource_version}\r\n{Header.UID}: {uid}\r\n"
        f"{Header.MSG_ID}: {identity}\r\n"
        f"{Header.EXPECTED_LAST_SUBJECT_SEQUENCE}: {expected_last_sequence}\r\n"
    )
    if "\n" in resource_version or "\r" in resource_version or "\n" in uid or "\r" in uid:
        raise ValueError(f"uid {uid!r} or resourceVersion {resource_version!r} has a line break")
    if reference:
        text += f"{Header.REFERENCE}: true\r\n"
    if metadata_only:
        text += f"{Header.METADATA_ONLY}: true\r\n"
    if ttl is not None:
        text += f"{Header.TTL}: {ttl}\r\n"
    if extra:
        for key, value in extra.items():
            if "\n" in value or "\r" in value:
                raise ValueError(f"header {key} has a line break")
            text += f"{key}: {value}\r\n"
    return (text + "\r\n").encode()


def reference_payload(projection: ObjectProjection) -> bytes:
    """The payload of a reference-only message: apiVersion, kind and identifying metadata."""
    meta = projection.metadata
    identity = {
        "apiVersion": projection.api_version,
        "kind": projection.kind,
        "metadata": {
            key: value
            for key, value in (
                ("name", meta.name),
                ("namespace", meta.namespace),
                ("uid", meta.uid),
                ("resourceVersion", meta.resource_version),
                ("generation", meta.generation),
                ("labels", meta.labels),
                ("ownerReferences", meta.owner_references),
                ("deletionTimestamp", meta.deletion_timestamp),
            )
            if value is not None
        },
    }
    return _encoder.encode(identity)


class Envelope(msgspec.Struct, frozen=True):
    """One message of the object stream, as a reader sees it."""

    subject: str
    sequence: int
    event: EventType
    resource_version: str
    uid: str
    payload: bytes
    reference: bool = False
    traceparent: str | None = None
    metadata_only: bool = False

    @property
    def deleted(self) -> bool:
        return self.event is EventType.DELETED

    def object(self) -> dict[str, Any]:
        decoded: dict[str, Any] = msgspec.json.decode(self.payload)
        return decoded

    @classmethod
    def from_message(
        cls, *, subject: str, sequence: int, headers: Mapping[str, str] | None, payload: bytes
    ) -> Envelope:
        headers = headers or {}
        try:
            event = EventType(headers.get(Header.EVENT, ""))
        except ValueError as error:
            raise EnvelopeError(
                f"message {sequence} on {subject} has no valid {Header.EVENT} header"
            ) from error
        return cls(
            subject=subject,
            sequence=sequence,
            event=event,
            resource_version=headers.get(Header.RESOURCE_VERSION, ""),
            uid=headers.get(Header.UID, ""),
            payload=payload,
            reference=headers.get(Header.REFERENCE) == "true",
            traceparent=headers.get(Header.TRACEPARENT),
            metadata_only=headers.get(Header.METADATA_ONLY) == "true",
        )

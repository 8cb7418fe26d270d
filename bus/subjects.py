"""Subjects of the object stream, and the partition of every object.

``kubus.obj.<partition>.<group>.<version>.<resource>.<namespace>.<name>``

The partition comes first so that one filter (``kubus.obj.7.>``) selects a partition across
every kind. Tokens are made NATS-safe reversibly:

- the core group is ``core``; dots in groups and names become ``_`` (Kubernetes DNS names never
  hold ``_``);
- a cluster-scoped object has ``_`` as its namespace token;
- a name outside the DNS alphabet (RBAC names may hold almost anything) is written as ``=``
  followed by its unpadded URL-safe base64, which no DNS name can start with.

Partition = FNV-1a 32 of the namespace (of the name, for cluster-scoped objects) mod P. A
Namespace object hashes its own name, so it lands in the partition of its contents.
"""

from __future__ import annotations

import base64
import functools
import re
from dataclasses import dataclass
from typing import Final

from bus.errors import SubjectError

__all__ = [
    "DEFAULT_PARTITIONS",
    "OBJECT_SUBJECT_PREFIX",
    "ObjectRef",
    "ResourceType",
    "SubjectError",
    "decode_subject",
    "encode_subject",
    "partition_filter",
    "partition_of",
    "resource_filter",
]

DEFAULT_PARTITIONS: Final = 32
OBJECT_SUBJECT_PREFIX: Final = "kubus.obj"
CLUSTER_SCOPE_TOKEN: Final = "_"
CORE_GROUP_TOKEN: Final = "core"

_PLAIN_TOKEN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.:@+-]*$")
_FNV_OFFSET: Final = 0x811C9DC5
_FNV_PRIME: Final = 0x01000193


@dataclass(frozen=True, order=True)
class ResourceType:
    """A group/version/resource, e.g. ``apps/v1/deployments``; the core group is ``""``."""

    group: str
    version: str
    resource: str

    @classmethod
    def parse(cls, text: str) -> ResourceType:
        """``v1/pods``, ``apps/v1/deployments`` or ``example.com/v1/widgets``."""
        parts = text.strip().split("/")
        if len(parts) == 2:
            parts.insert(0, "")
        if len(parts) != 3 or not all(parts[1:]):
            raise SubjectError(
                f"resource {text!r} is not GROUP/VERSION/RESOURCE (or VERSION/RESOURCE for core)"
            )
        return cls(*parts)

    def __str__(self) -> str:
        return self.label

    @functools.cached_property
    def label(self) -> str:
        """``group/version/resource`` (``version/resource`` for core), as metrics label it."""
        if self.group:
            return f"{self.group}/{self.version}/{self.resource}"
        return f"{self.version}/{self.resource}"

    @functools.cached_property
    def tokens(self) -> str:
        group = self.group.replace(".", "_") if self.group else CORE_GROUP_TOKEN
        return f"{group}.{self.version}.{self.resource}"


@dataclass(frozen=True, order=True)
class ObjectRef:
    """One object of one resource type; ``namespace`` is None for cluster-scoped objects."""

    resource: ResourceType
    namespace: str | None
    name: str

    @property
    def key(self) -> str:
        """The object's key as client-go writes it: ``namespace/name`` or ``name``."""
        return f"{self.namespace}/{self.name}" if self.namespace else self.name


def partition_of(namespace: str | None, name: str, partitions: int = DEFAULT_PARTITIONS) -> int:
    """FNV-1a 32 of the namespace (or the name, when cluster-scoped) modulo ``partitions``."""
    if partitions < 1:
        raise SubjectError(f"partitions must be at least 1, not {partitions}")
    return _fnv1a_32(namespace or name) % partitions


@functools.lru_cache(maxsize=65_536)
def _fnv1a_32(text: str) -> int:
    # Cached: a watcher hashes the same few namespaces for every event.
    value = _FNV_OFFSET
    for byte in text.encode():
        value = ((value ^ byte) * _FNV_PRIME) & 0xFFFFFFFF
    return value


def encode_subject(
    ref: ObjectRef,
    partitions: int = DEFAULT_PARTITIONS,
    *,
    prefix: str = OBJECT_SUBJECT_PREFIX,
) -> str:
    if not ref.name:
        raise SubjectError(f"object of {ref.resource} has no name")
    partition = partition_of(ref.namespace, ref.name, partitions)
    namespace = _encode_name(ref.namespace) if ref.namespace else CLUSTER_SCOPE_TOKEN
    return f"{prefix}.{partition}.{ref.resource.tokens}.{namespace}.{_encode_name(ref.name)}"


def decode_subject(subject: str, *, prefix: str = OBJECT_SUBJECT_PREFIX) -> tuple[int, ObjectRef]:
    """The partition and object of a subject made by :func:`encode_subject`."""
    tokens = subject.split(".")
    if len(tokens) != 8 or ".".join(tokens[:2]) != prefix:
        raise SubjectError(f"{subject!r} is not a kubus object subject")
    partition, group, version, resource, namespace, name = tokens[2:]
    if not partition.isdigit():
        raise SubjectError(f"{subject!r} has no partition number")
    resource_type = ResourceType(
        "" if group == CORE_GROUP_TOKEN else group.replace("_", "."), version, resource
    )
    decoded_namespace = None if namespace == CLUSTER_SCOPE_TOKEN else _decode_name(namespace)
    return int(partition), ObjectRef(resource_type, decoded_namespace, _decode_name(name))


def partition_filter(partition: int, *, prefix: str = OBJECT_SUBJECT_PREFIX) -> str:
    """Every object of every kind in one partition."""
    return f"{prefix}.{partition}.>"


def resource_filter(
    resource: ResourceType, partition: int | None = None, *, prefix: str = OBJECT_SUBJECT_PREFIX
) -> str:
    """Every object of one kind, in one partition or (None) in all."""
    where = "*" if partition is None else str(partition)
    return f"{prefix}.{where}.{resource.tokens}.*.*"


def _encode_name(name: str) -> str:
    if _PLAIN_TOKEN.match(name):
        return name.replace(".", "_")
    return "=" + base64.urlsafe_b64encode(name.encode()).decode().rstrip("=")


def _decode_name(token: str) -> str:
    if token.startswith("="):
        body = token[1:]
        try:
            return base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)).decode()
        except (ValueError, UnicodeDecodeError) as error:
            raise SubjectError(f"token {token!r} is not a kubus-encoded name") from error
    return token.replace("_", ".")

"""Typed custom resources: spec and status as ``msgspec.Struct``s, the CRD's names beside them.

A custom resource is declared once, in Python, as kube-rs's ``CustomResource`` derive declares
it in Rust::

    class MySQLClusterSpec(msgspec.Struct, kw_only=True, rename="camel"):
        replicas: Annotated[int, msgspec.Meta(ge=1, le=9)] = 1

    class MySQLCluster(CustomResource, kw_only=True):
        group: ClassVar[str] = "database.example.com"
        version: ClassVar[str] = "v1"
        kind: ClassVar[str] = "MySQLCluster"
        spec: MySQLClusterSpec
        status: MySQLClusterStatus = msgspec.field(default_factory=MySQLClusterStatus)

From that one declaration come the CRD (:mod:`reconcilers.operator.crd`, its OpenAPI schema
from the structs) and the decoding of objects from the bus at msgspec speed, with errors that
name the field (:meth:`CustomResource.decode`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Final, Literal, TypeVar

import msgspec

from bus.subjects import ResourceType

__all__ = [
    "CustomResource",
    "InvalidDeclaration",
    "InvalidResource",
    "ObjectMeta",
    "OwnerReference",
    "PrinterColumn",
    "Scale",
    "declaration_problems",
]

R = TypeVar("R", bound="CustomResource")

# DNS-1123 labels and subdomains, as the apiserver checks a CRD's names and group.
_LABEL: Final = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_SUBDOMAIN: Final = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)+")
_VERSION: Final = re.compile(r"v[1-9][0-9]*((alpha|beta)[1-9][0-9]*)?")
_KIND: Final = re.compile(r"[A-Z][A-Za-z0-9]*")
COLUMN_TYPES: Final = ("integer", "number", "string", "boolean", "date")


class InvalidDeclaration(ValueError):
    """A custom resource class whose declaration cannot make a CRD (names the class)."""


class InvalidResource(ValueError):
    """An object that does not match its custom resource's types (names object and field)."""


class OwnerReference(msgspec.Struct, kw_only=True, rename="camel", omit_defaults=True):
    api_version: str
    kind: str
    name: str
    uid: str
    controller: bool | None = None
    block_owner_deletion: bool | None = None


class ObjectMeta(msgspec.Struct, kw_only=True, rename="camel", omit_defaults=True):
    """The part of an object's metadata an operator reads."""

    name: str = ""
    namespace: str | None = None
    uid: str = ""
    resource_version: str = ""
    generation: int = 0
    labels: dict[str, str] = {}
    annotations: dict[str, str] = {}
    finalizers: list[str] = []
    owner_references: list[OwnerReference] = []
    creation_timestamp: str | None = None
    deletion_timestamp: str | None = None


@dataclass(frozen=True)
class PrinterColumn:
    """One of ``kubectl get``'s columns (the CRD's ``additionalPrinterColumns``)."""

    name: str
    json_path: str
    type: Literal["integer", "number", "string", "boolean", "date"] = "string"
    description: str = ""
    priority: int = 0
    format: str = ""


@dataclass(frozen=True)
class Scale:
    """The scale subresource: ``kubectl scale``, HPAs and PodDisruptionBudgets read it."""

    spec_replicas_path: str = ".spec.replicas"
    status_replicas_path: str = ".status.replicas"
    label_selector_path: str | None = None


class CustomResource(msgspec.Struct, kw_only=True):
    """The base of a typed custom resource; a subclass sets the class variables and narrows
    ``spec`` and ``status`` to its own structs."""

    group: ClassVar[str]
    version: ClassVar[str]
    kind: ClassVar[str]
    plural: ClassVar[str] = ""  # default: the kind, lowercased, with an "s"
    scope: ClassVar[Literal["Namespaced", "Cluster"]] = "Namespaced"
    short_names: ClassVar[tuple[str, ...]] = ()
    categories: ClassVar[tuple[str, ...]] = ()
    printer_columns: ClassVar[tuple[PrinterColumn, ...]] = ()
    scale: ClassVar[Scale | None] = None

    metadata: ObjectMeta = msgspec.field(default_factory=ObjectMeta)
    spec: Any = None
    status: Any = None

    @classmethod
    def api_version(cls) -> str:
        return f"{cls.group}/{cls.version}"

    @classmethod
    def primary_resource(cls) -> ResourceType:
        """Its group/version/resource, as the bus and the apiserver name it."""
        return ResourceType(cls.group, cls.version, cls.plural_name())

    @classmethod
    def plural_name(cls) -> str:
        return cls.plural or f"{cls.kind.lower()}s"

    @classmethod
    def decode(cls: type[R], obj: Mapping[str, Any]) -> R:
        """``obj`` (an apiserver object, as the bus carries it) as this type; a mismatch is
        :class:`InvalidResource` naming the object and the field."""
        try:
            return msgspec.convert(obj, cls)
        except msgspec.ValidationError as error:
            raise InvalidResource(f"{cls.kind} {_object_name(obj)}: {error}") from None

    @classmethod
    def decode_json(cls: type[R], data: bytes) -> R:
        """As :meth:`decode`, from JSON bytes, without building dicts first."""
        try:
            return msgspec.json.decode(data, type=cls)
        except msgspec.ValidationError as error:
            raise InvalidResource(f"{cls.kind}: {error}") from None
        except msgspec.DecodeError as error:
            raise InvalidResource(f"{cls.kind}: not JSON: {error}") from None


def declaration_problems(cls: type[CustomResource]) -> list[str]:
    """What keeps ``cls`` from declaring a CRD the apiserver accepts (empty: nothing)."""
    problems = []
    for name in ("group", "version", "kind"):
        if not isinstance(getattr(cls, name, None), str):
            problems.append(f"sets no {name}")
    if problems:
        return problems
    if not _SUBDOMAIN.fullmatch(cls.group):
        problems.append(f"group {cls.group!r} is not a DNS subdomain with a dot (e.g. example.com)")
    if not _VERSION.fullmatch(cls.version):
        problems.append(f"version {cls.version!r} is not a Kubernetes version (v1, v2beta1, ...)")
    if not _KIND.fullmatch(cls.kind):
        problems.append(f"kind {cls.kind!r} is not CamelCase letters and digits")
    for what, name in [
        ("plural", cls.plural_name()),
        *(("short name", s) for s in cls.short_names),
    ]:
        if not _LABEL.fullmatch(name):
            problems.append(f"{what} {name!r} is not a lowercase DNS label")
    if cls.scope not in ("Namespaced", "Cluster"):
        problems.append(f"scope {cls.scope!r} is neither Namespaced nor Cluster")
    for column in cls.printer_columns:
        if column.type not in COLUMN_TYPES:
            problems.append(
                f"printer column {column.name!r} has type {column.type!r}, "
                f"not one of {', '.join(COLUMN_TYPES)}"
            )
        if not column.json_path.startswith("."):
            problems.append(
                f"printer column {column.name!r}: json path {column.json_path!r} "
                "does not start with '.'"
            )
    fields = {field.name: field for field in msgspec.structs.fields(cls)}
    spec = fields["spec"].type
    if not (isinstance(spec, type) and issubclass(spec, msgspec.Struct)):
        problems.append("does not narrow spec to a msgspec.Struct")
    status = fields["status"].type
    if status is not Any and not (isinstance(status, type) and issubclass(status, msgspec.Struct)):
        problems.append("narrows status to something other than a msgspec.Struct")
    return problems


def _object_name(obj: Mapping[str, Any]) -> str:
    metadata = obj.get("metadata")
    if not isinstance(metadata, Mapping):
        return "(no metadata)"
    name = metadata.get("name", "(no name)")
    namespace = metadata.get("namespace")
    return f"{namespace}/{name}" if namespace else str(name)

"""Typed custom resources the operator tests declare: a MySQLCluster as the seeds describe it,
and classes that cannot make a CRD, each in another way."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

import msgspec

from reconcilers.operator import CustomResource, PrinterColumn, Scale

QUANTITY = r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|m)?$"


class Resources(msgspec.Struct, kw_only=True, rename="camel"):
    """Compute resources of each MySQL pod."""

    cpu: Annotated[str, msgspec.Meta(pattern=QUANTITY)] = "500m"
    memory: Annotated[str, msgspec.Meta(pattern=QUANTITY)] = "1Gi"


class MySQLClusterSpec(msgspec.Struct, kw_only=True, rename="camel"):
    version: Literal["5.7", "8.0", "8.4"] = "8.0"
    replicas: Annotated[int, msgspec.Meta(ge=1, le=9, description="MySQL pods")] = 1
    storage_size: Annotated[str, msgspec.Meta(pattern=QUANTITY)]
    resources: Resources = msgspec.field(default_factory=Resources)
    port: int | str = 3306
    config: dict[str, str] = {}
    extra: dict[str, Any] = {}


class Condition(msgspec.Struct, kw_only=True, rename="camel"):
    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str
    message: str = ""
    last_transition_time: str
    observed_generation: int | None = None


class MySQLClusterStatus(msgspec.Struct, kw_only=True, rename="camel", omit_defaults=True):
    ready_replicas: int = 0
    replicas: int = 0
    selector: str = ""
    phase: str | None = None
    last_update: str | None = None
    observed_generation: int | None = None
    conditions: list[Condition] = []


class MySQLCluster(CustomResource, kw_only=True):
    """A MySQL cluster: a headless Service, its pods and their volumes."""

    group: ClassVar[str] = "database.example.com"
    version: ClassVar[str] = "v1"
    kind: ClassVar[str] = "MySQLCluster"
    short_names: ClassVar[tuple[str, ...]] = ("mysql",)
    categories: ClassVar[tuple[str, ...]] = ("all",)
    printer_columns: ClassVar[tuple[PrinterColumn, ...]] = (
        PrinterColumn("Replicas", ".spec.replicas", "integer"),
        PrinterColumn("Ready", ".status.readyReplicas", "integer"),
        PrinterColumn("Version", ".spec.version", priority=1),
        PrinterColumn("Age", ".metadata.creationTimestamp", "date"),
    )
    scale: ClassVar[Scale | None] = Scale(
        status_replicas_path=".status.replicas", label_selector_path=".status.selector"
    )

    spec: MySQLClusterSpec
    status: MySQLClusterStatus = msgspec.field(default_factory=MySQLClusterStatus)


class WithUnion(msgspec.Struct, kw_only=True):
    size: int | bool = 1


class Unstructural(CustomResource, kw_only=True):
    group: ClassVar[str] = "example.com"
    version: ClassVar[str] = "v1"
    kind: ClassVar[str] = "Unstructural"
    spec: WithUnion


class Node(msgspec.Struct, kw_only=True):
    children: list[Node] = []


class Recursive(CustomResource, kw_only=True):
    group: ClassVar[str] = "example.com"
    version: ClassVar[str] = "v1"
    kind: ClassVar[str] = "Recursive"
    spec: Node


class BadNames(CustomResource, kw_only=True):
    group: ClassVar[str] = "nodot"
    version: ClassVar[str] = "1"
    kind: ClassVar[str] = "bad_kind"
    spec: WithUnion


class NoSpec(CustomResource, kw_only=True):
    group: ClassVar[str] = "example.com"
    version: ClassVar[str] = "v1"
    kind: ClassVar[str] = "NoSpec"


def not_a_resource() -> None:
    """Named by a test that gives the CLI a function."""

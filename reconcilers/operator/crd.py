"""The CustomResourceDefinition of a typed custom resource, and its installation.

One version per class (the storage version): the structural schema of ``spec`` and ``status``
(:mod:`reconcilers.operator.schema`), the status subresource when the class declares a status
struct, the scale subresource when it sets ``scale``, its printer columns, short names and
categories.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any, Final

import msgspec

from bus.subjects import ResourceType
from reconcilers.operator.resource import (
    CustomResource,
    InvalidDeclaration,
    PrinterColumn,
    declaration_problems,
)
from reconcilers.operator.schema import SchemaError, structural_schema

if TYPE_CHECKING:
    from kubus.kube import KubeClient

__all__ = ["crd_name", "custom_resource_definition", "install"]

CRDS: Final = ResourceType("apiextensions.k8s.io", "v1", "customresourcedefinitions")
ESTABLISHED_WITHIN: Final = 30.0


def crd_name(cls: type[CustomResource]) -> str:
    return f"{cls.plural_name()}.{cls.group}"


def custom_resource_definition(cls: type[CustomResource]) -> dict[str, Any]:
    """The CRD manifest of ``cls``; :class:`InvalidDeclaration` says in one line what in the
    class cannot make one."""
    problems = declaration_problems(cls)
    if problems:
        raise InvalidDeclaration(f"{cls.__module__}.{cls.__qualname__}: {'; '.join(problems)}")
    fields = {field.name: field for field in msgspec.structs.fields(cls)}
    properties: dict[str, Any] = {
        "apiVersion": {"type": "string"},
        "kind": {"type": "string"},
        "metadata": {"type": "object"},
    }
    required = []
    for part in ("spec", "status"):
        struct = fields[part].type
        if not isinstance(struct, type) or not issubclass(struct, msgspec.Struct):
            continue
        try:
            properties[part] = structural_schema(struct)
        except SchemaError as error:
            raise InvalidDeclaration(
                f"{cls.__module__}.{cls.__qualname__}: {part}.{error}"
            ) from None
        if part == "spec" and fields[part].required:
            required.append(part)
    root: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        root["required"] = required
    if cls.__doc__ and cls.__doc__ != CustomResource.__doc__:
        root["description"] = " ".join(cls.__doc__.split())
    version: dict[str, Any] = {
        "name": cls.version,
        "served": True,
        "storage": True,
        "schema": {"openAPIV3Schema": root},
    }
    subresources: dict[str, Any] = {}
    if "status" in properties:
        subresources["status"] = {}
    if cls.scale is not None:
        scale = {
            "specReplicasPath": cls.scale.spec_replicas_path,
            "statusReplicasPath": cls.scale.status_replicas_path,
        }
        if cls.scale.label_selector_path:
            scale["labelSelectorPath"] = cls.scale.label_selector_path
        subresources["scale"] = scale
    if subresources:
        version["subresources"] = subresources
    if cls.printer_columns:
        version["additionalPrinterColumns"] = [_column(column) for column in cls.printer_columns]
    names: dict[str, Any] = {
        "kind": cls.kind,
        "listKind": f"{cls.kind}List",
        "plural": cls.plural_name(),
        "singular": cls.kind.lower(),
    }
    if cls.short_names:
        names["shortNames"] = list(cls.short_names)
    if cls.categories:
        names["categories"] = list(cls.categories)
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": crd_name(cls)},
        "spec": {
            "group": cls.group,
            "names": names,
            "scope": cls.scope,
            "versions": [version],
        },
    }


def _column(column: PrinterColumn) -> dict[str, Any]:
    out: dict[str, Any] = {"name": column.name, "type": column.type, "jsonPath": column.json_path}
    if column.description:
        out["description"] = column.description
    if column.priority:
        out["priority"] = column.priority
    if column.format:
        out["format"] = column.format
    return out


async def install(kube: KubeClient, cls: type[CustomResource], *, field_manager: str) -> None:
    """Apply ``cls``'s CRD (created, or upgraded to this schema) and wait until the apiserver
    serves it: Established, and its names accepted; TimeoutError says which condition is not."""
    manifest = custom_resource_definition(cls)
    name = manifest["metadata"]["name"]
    api = await kube.discover(CRDS.group, CRDS.version, CRDS.resource)
    await kube.apply(api, None, name, manifest, field_manager=field_manager)
    deadline = time.monotonic() + ESTABLISHED_WITHIN
    while True:
        crd = await kube.get(api, None, name)
        conditions = {c.get("type"): c for c in crd.get("status", {}).get("conditions") or []}
        rejected = conditions.get("NamesAccepted", {})
        if rejected.get("status") == "False":
            raise ValueError(f"CRD {name}: names not accepted: {rejected.get('message', '')}")
        if conditions.get("Established", {}).get("status") == "True":
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"CRD {name} not Established within {ESTABLISHED_WITHIN:.0f}s")
        await asyncio.sleep(0.2)

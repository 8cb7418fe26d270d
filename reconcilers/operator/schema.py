"""A ``msgspec.Struct`` as a structural OpenAPI v3 schema, the kind a CRD must carry.

msgspec writes JSON Schema 2020-12; the apiserver wants OpenAPI v3.0 in its structural subset
(every node typed, no ``$ref``, no unions but ``x-kubernetes-int-or-string``). The conversion
inlines references, turns ``X | None`` into ``nullable``, ``int | str`` into int-or-string,
``Any`` and ``dict[str, Any]`` into preserved unknown fields, typed enums from their values and
numeric exclusive bounds into OpenAPI's boolean ones. What has no structural form (a union of
two types, a tuple, a recursive type) is refused with the field's path named, not written as
a schema the apiserver would reject at install.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import msgspec

__all__ = ["SchemaError", "structural_schema"]

# JSON Schema keywords that mean the same in a structural schema, copied as they are.
_KEPT: Final = frozenset(
    {
        "description",
        "type",
        "format",
        "pattern",
        "minimum",
        "maximum",
        "minLength",
        "maxLength",
        "minItems",
        "maxItems",
        "minProperties",
        "maxProperties",
        "multipleOf",
        "uniqueItems",
        "enum",
        "default",
    }
)
# msgspec's keywords with no meaning in a CRD, dropped.
_DROPPED: Final = frozenset({"title", "$defs", "examples", "contentMediaType"})


class SchemaError(ValueError):
    """A type with no structural schema; the message names its path (e.g. ``spec.port``)."""


def structural_schema(struct: type[msgspec.Struct]) -> dict[str, Any]:
    """The structural schema of ``struct`` and everything it holds."""
    (root,), components = msgspec.json.schema_components([struct], ref_template="{name}")
    return _Converter(components).convert(root, path=())


class _Converter:
    def __init__(self, definitions: Mapping[str, Any]) -> None:
        self._definitions = definitions
        self._expanding: list[str] = []

    def convert(self, node: Mapping[str, Any], path: tuple[str, ...]) -> dict[str, Any]:
        if "$ref" in node:
            return self._reference(node, path)
        if "anyOf" in node:
            return self._union(node, path)
        unknown = (
            set(node)
            - _KEPT
            - _DROPPED
            - {
                "properties",
                "required",
                "items",
                "additionalProperties",
                "exclusiveMinimum",
                "exclusiveMaximum",
                "contentEncoding",
                "prefixItems",
            }
        )
        if unknown:
            raise SchemaError(f"{_where(path)}: no structural form for {sorted(unknown)[0]!r}")
        if "prefixItems" in node:
            raise SchemaError(f"{_where(path)}: a tuple has no structural schema: use a list")
        out: dict[str, Any] = {key: value for key, value in node.items() if key in _KEPT}
        if not set(node) - {"description", "default"}:  # Any
            out["x-kubernetes-preserve-unknown-fields"] = True
        if "enum" in node and "type" not in node:
            out["type"] = _enum_type(node["enum"], path)
        for bound, plain in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
            if bound in node:
                out[plain] = node[bound]
                out[bound] = True
        if node.get("contentEncoding") == "base64":
            out["format"] = "byte"
        if "properties" in node:
            required = node.get("required") or []
            out["properties"] = {
                name: _defaulted(self.convert(child, (*path, name)), name in required)
                for name, child in node["properties"].items()
            }
            if required:
                out["required"] = list(required)
        elif out.get("type") == "object":
            extra = node.get("additionalProperties")
            if isinstance(extra, Mapping) and extra:
                out["additionalProperties"] = self.convert(extra, (*path, "*"))
            else:  # dict[str, Any], or a bare mapping
                out["x-kubernetes-preserve-unknown-fields"] = True
        if "items" in node:
            out["items"] = self.convert(node["items"], (*path, "[]"))
        if out.get("default") in (None, [], {}) and "default" in out:
            # The decoder fills these in; stored objects need not carry them.
            del out["default"]
        return out

    def _reference(self, node: Mapping[str, Any], path: tuple[str, ...]) -> dict[str, Any]:
        name = node["$ref"]
        if name in self._expanding:
            raise SchemaError(
                f"{_where(path)}: {name} holds itself; a recursive type has no structural schema"
            )
        self._expanding.append(name)
        try:
            out = self.convert(self._definitions[name], path)
        finally:
            self._expanding.pop()
        return out | _annotations(node)

    def _union(self, node: Mapping[str, Any], path: tuple[str, ...]) -> dict[str, Any]:
        options = [option for option in node["anyOf"] if option != {"type": "null"}]
        nullable = len(options) < len(node["anyOf"])
        rest = {key: value for key, value in node.items() if key != "anyOf"}
        if len(options) == 1:
            out = self.convert(options[0] | rest, path)
        elif sorted(option.get("type", "") for option in options) == ["integer", "string"]:
            out = {"x-kubernetes-int-or-string": True} | _annotations(rest)
        else:
            kinds = " | ".join(str(option.get("type") or option.get("$ref")) for option in options)
            raise SchemaError(
                f"{_where(path)}: a union ({kinds}) has no structural schema: use one type "
                "(int | str is the one union a CRD allows)"
            )
        if nullable:
            out["nullable"] = True
        return out


def _defaulted(schema: dict[str, Any], required: bool) -> dict[str, Any]:
    """An optional struct field (``default_factory=Struct``) defaults to ``{}``, so the
    apiserver fills in its fields' defaults as the decoder does; a struct with required fields
    of its own has no such default (``{}`` would not validate)."""
    if (
        not required
        and schema.get("type") == "object"
        and "properties" in schema
        and "required" not in schema
        and "default" not in schema
        and not schema.get("nullable")
    ):
        return schema | {"default": {}}
    return schema


def _annotations(node: Mapping[str, Any]) -> dict[str, Any]:
    """What a reference or a union carries beside its types: description, a default."""
    out = {key: node[key] for key in ("description", "default") if key in node}
    if out.get("default", 0) in (None, [], {}):
        del out["default"]
    return out


def _enum_type(values: list[Any], path: tuple[str, ...]) -> str:
    for python, name in ((bool, "boolean"), (int, "integer"), (str, "string")):
        if all(isinstance(value, python) for value in values):
            return name
    raise SchemaError(f"{_where(path)}: an enum mixing types has no structural schema")


def _where(path: tuple[str, ...]) -> str:
    """``("spec", "children", "[]", "name")`` as ``spec.children[].name``."""
    return ".".join(path).replace(".[]", "[]") or "(the struct itself)"

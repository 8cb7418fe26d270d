"""Typed custom resources: the CRD made from their structs, and their decoding."""

from __future__ import annotations

import json
from typing import Annotated, Any

import msgspec
import pytest
import yaml

from kubus.cli import main
from reconcilers.operator import (
    InvalidDeclaration,
    InvalidResource,
    SchemaError,
    custom_resource_definition,
    structural_schema,
)
from tests.support.typed_resources import (
    BadNames,
    MySQLCluster,
    MySQLClusterSpec,
    NoSpec,
    Recursive,
    Unstructural,
)

HERE = "tests.support.typed_resources"


def version_of(crd: dict[str, Any]) -> dict[str, Any]:
    (version,) = crd["spec"]["versions"]
    return version


def test_the_crd_names_scope_subresources_and_columns_come_from_the_class() -> None:
    crd = custom_resource_definition(MySQLCluster)
    assert crd["metadata"]["name"] == "mysqlclusters.database.example.com"
    assert crd["spec"]["group"] == "database.example.com"
    assert crd["spec"]["scope"] == "Namespaced"
    assert crd["spec"]["names"] == {
        "kind": "MySQLCluster",
        "listKind": "MySQLClusterList",
        "plural": "mysqlclusters",
        "singular": "mysqlcluster",
        "shortNames": ["mysql"],
        "categories": ["all"],
    }
    version = version_of(crd)
    assert (version["name"], version["served"], version["storage"]) == ("v1", True, True)
    assert version["subresources"] == {
        "status": {},
        "scale": {
            "specReplicasPath": ".spec.replicas",
            "statusReplicasPath": ".status.replicas",
            "labelSelectorPath": ".status.selector",
        },
    }
    assert [c["name"] for c in version["additionalPrinterColumns"]] == [
        "Replicas",
        "Ready",
        "Version",
        "Age",
    ]
    assert version["additionalPrinterColumns"][2] == {
        "name": "Version",
        "type": "string",
        "jsonPath": ".spec.version",
        "priority": 1,
    }


def test_the_spec_schema_is_structural_with_required_fields_enums_bounds_and_defaults() -> None:
    root = version_of(custom_resource_definition(MySQLCluster))["schema"]["openAPIV3Schema"]
    assert root["required"] == ["spec"]
    spec = root["properties"]["spec"]
    assert spec["required"] == ["storageSize"]
    fields = spec["properties"]
    assert fields["version"] == {"type": "string", "enum": ["5.7", "8.0", "8.4"], "default": "8.0"}
    assert fields["replicas"] == {
        "type": "integer",
        "description": "MySQL pods",
        "minimum": 1,
        "maximum": 9,
        "default": 1,
    }
    assert fields["port"] == {"x-kubernetes-int-or-string": True, "default": 3306}
    assert fields["config"] == {"type": "object", "additionalProperties": {"type": "string"}}
    assert fields["extra"] == {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
    assert fields["resources"]["description"] == "Compute resources of each MySQL pod."
    # An optional struct defaults to {}, so the apiserver fills its fields in as decode does.
    assert fields["resources"]["default"] == {}
    assert fields["resources"]["properties"]["cpu"]["default"] == "500m"
    status = root["properties"]["status"]["properties"]
    assert status["observedGeneration"] == {"type": "integer", "nullable": True}
    condition = status["conditions"]["items"]
    assert condition["required"] == ["type", "status", "reason", "lastTransitionTime"]
    # Structural: every node says its type (or is int-or-string / preserves unknown fields),
    # and nothing is left of JSON Schema that OpenAPI v3.0 does not know.
    text = json.dumps(root)
    for keyword in ("$ref", "anyOf", "$defs", "title", "prefixItems"):
        assert keyword not in text

    def typed(node: dict[str, Any], path: str) -> None:
        assert (
            "type" in node
            or node.get("x-kubernetes-int-or-string")
            or node.get("x-kubernetes-preserve-unknown-fields")
        ), path
        for name, child in node.get("properties", {}).items():
            typed(child, f"{path}.{name}")
        for key in ("items", "additionalProperties"):
            if isinstance(node.get(key), dict):
                typed(node[key], f"{path}{key}")

    typed(root, "")


class Odd(msgspec.Struct, kw_only=True):
    ratio: Annotated[float, msgspec.Meta(gt=0, lt=1)]
    blob: bytes = b""
    anything: Any = None
    maybe_list: list[int] | None = None


class Pair(msgspec.Struct):
    at: tuple[int, int]


def test_numeric_exclusive_bounds_bytes_and_optional_anything_have_their_openapi_forms() -> None:
    schema = structural_schema(Odd)["properties"]
    assert schema["ratio"] == {
        "type": "number",
        "minimum": 0,
        "exclusiveMinimum": True,
        "maximum": 1,
        "exclusiveMaximum": True,
    }
    assert schema["blob"] == {"type": "string", "format": "byte", "default": ""}
    assert schema["anything"] == {"x-kubernetes-preserve-unknown-fields": True}
    assert schema["maybe_list"] == {"type": "array", "items": {"type": "integer"}, "nullable": True}


@pytest.mark.parametrize(
    ("resource", "says"),
    [
        (
            Unstructural,
            f"{HERE}.Unstructural: spec.size: a union (integer | boolean) has no structural "
            "schema: use one type (int | str is the one union a CRD allows)",
        ),
        (
            Recursive,
            f"{HERE}.Recursive: spec.children[]: Node holds itself; a recursive type has no "
            "structural schema",
        ),
        (
            BadNames,
            f"{HERE}.BadNames: group 'nodot' is not a DNS subdomain with a dot (e.g. "
            "example.com); version '1' is not a Kubernetes version (v1, v2beta1, ...); kind "
            "'bad_kind' is not CamelCase letters and digits; plural 'bad_kinds' is not a "
            "lowercase DNS label",
        ),
        (NoSpec, f"{HERE}.NoSpec: does not narrow spec to a msgspec.Struct"),
    ],
)
def test_a_class_that_cannot_make_a_crd_is_one_line_naming_the_class_and_the_field(
    resource: Any, says: str
) -> None:
    with pytest.raises(InvalidDeclaration) as refused:
        custom_resource_definition(resource)
    assert str(refused.value) == says


def test_a_tuple_has_no_structural_schema() -> None:
    with pytest.raises(SchemaError, match=r"^at: a tuple has no structural schema: use a list$"):
        structural_schema(Pair)


def cluster(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "database.example.com/v1",
        "kind": "MySQLCluster",
        "metadata": {"name": "db", "namespace": "shop", "uid": "u-1", "generation": 3},
        "spec": {"storageSize": "10Gi"} | spec,
    }


def test_an_object_decodes_to_its_types_with_the_declared_defaults() -> None:
    decoded = MySQLCluster.decode(cluster(replicas=3, resources={"cpu": "2"}))
    assert isinstance(decoded.spec, MySQLClusterSpec)
    assert decoded.spec.replicas == 3
    assert decoded.spec.storage_size == "10Gi"
    assert (decoded.spec.resources.cpu, decoded.spec.resources.memory) == ("2", "1Gi")
    assert decoded.spec.version == "8.0"
    assert decoded.metadata.namespace == "shop" and decoded.metadata.generation == 3
    assert decoded.status.ready_replicas == 0
    assert MySQLCluster.decode_json(json.dumps(cluster(replicas=3)).encode()) == (
        MySQLCluster.decode(cluster(replicas=3))
    )


@pytest.mark.parametrize(
    ("spec", "says"),
    [
        ({"replicas": "three"}, "Expected `int`, got `str` - at `$.spec.replicas`"),
        ({"replicas": 12}, "Expected `int` <= 9 - at `$.spec.replicas`"),
        ({"version": "9.1"}, "Invalid enum value '9.1' - at `$.spec.version`"),
        ({"storageSize": "lots"}, "Expected `str` matching regex"),
    ],
)
def test_an_object_that_does_not_match_its_types_is_refused_naming_object_and_field(
    spec: dict[str, Any], says: str
) -> None:
    with pytest.raises(InvalidResource) as refused:
        MySQLCluster.decode(cluster(**spec))
    assert str(refused.value).startswith("MySQLCluster shop/db: "), refused.value
    assert says in str(refused.value)


def test_kubus_crd_generate_prints_the_crds_as_yaml_or_json(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["crd", "generate", f"{HERE}:MySQLCluster"]) == 0
    (crd,) = yaml.safe_load_all(capsys.readouterr().out)
    assert crd == custom_resource_definition(MySQLCluster)
    assert main(["crd", "generate", "-o", "json", f"{HERE}:MySQLCluster"]) == 0
    assert json.loads(capsys.readouterr().out) == crd


@pytest.mark.parametrize(
    ("target", "says"),
    [
        (
            "nowhere_at_all:Thing",
            "cannot import 'nowhere_at_all': ModuleNotFoundError: No module named 'nowhere_at_all'",
        ),
        (f"{HERE}:Missing", f"module '{HERE}' has no 'Missing'"),
        (f"{HERE}:not_a_resource", f"'{HERE}:not_a_resource' is not a CustomResource class"),
        ("justamodule", "'justamodule' is not module:Class"),
        (f"{HERE}:Unstructural", f"{HERE}.Unstructural: spec.size: a union"),
    ],
)
def test_kubus_crd_generate_refuses_a_bad_class_in_one_line_with_exit_1(
    target: str, says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["crd", "generate", f"{HERE}:MySQLCluster", target])
    assert exit_.value.code == 1
    captured = capsys.readouterr()
    assert captured.out == ""  # nothing half-printed
    (line,) = captured.err.splitlines()
    assert line.startswith(f"kubus crd generate: error: {says}"), line

"""pod-template-hash byte-identical to kube-controller-manager v1.36 (controller.ComputeHash).

Two sources of truth, both produced by Go:
- docs/upstream/deployment-hash-golden.txt: three templates, their exact dump bytes and hashes;
- tests/unit/data/pod_template_hash_vectors.json: ``tools/hashschema vectors`` run over
  tests/unit/data/pod_template_hash_cases.json (JSON -> typed -> protobuf round trip ->
  dump.ForHash / ComputeHash), with both the input JSON and the JSON the apiserver would return.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from reconcilers.controllers import podtemplatehash
from reconcilers.controllers.deployment import util as deploymentutil
from reconcilers.controllers.podtemplatehash import (
    compute_hash,
    dump_for_hash,
    parse_quantity,
    quantity_wire_string,
)

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = (ROOT / "docs" / "upstream" / "deployment-hash-golden.txt").read_text()
VECTORS: list[dict[str, Any]] = json.loads(
    (Path(__file__).parent / "data" / "pod_template_hash_vectors.json").read_text()
)

# The three templates of the golden file, as the prose there describes them.
GOLDEN_TEMPLATES: dict[str, dict[str, Any]] = {
    "RAW": {
        "metadata": {"labels": {"app": "nginx"}},
        "spec": {"containers": [{"name": "nginx", "image": "nginx:1.14.2"}]},
    },
    "DEFAULTED": {
        "metadata": {
            "creationTimestamp": None,
            "labels": {"app": "nginx"},
            "annotations": {"b": "2", "a": "1"},
        },
        "spec": {
            "containers": [
                {
                    "name": "nginx",
                    "image": "nginx:1.14.2",
                    "ports": [{"containerPort": 80, "protocol": "TCP"}],
                    "terminationMessagePath": "/dev/termination-log",
                    "terminationMessagePolicy": "File",
                    "imagePullPolicy": "IfNotPresent",
                    "resources": {"limits": {"cpu": "500m", "memory": "128Mi"}},
                }
            ],
            "restartPolicy": "Always",
            "terminationGracePeriodSeconds": 30,
            "dnsPolicy": "ClusterFirst",
            "securityContext": {},
            "schedulerName": "default-scheduler",
        },
    },
    "RICH": {
        "metadata": {"labels": {"app": "web", "tier": "fe"}},
        "spec": {
            "nodeSelector": {"disk": "ssd"},
            "containers": [
                {
                    "name": "web",
                    "image": "busybox",
                    "command": ["sh", "-c", "echo hi && sleep 3600"],
                    "env": [{"name": "A", "value": "x y"}],
                    "readinessProbe": {"httpGet": {"path": "/", "port": 8080}, "periodSeconds": 5},
                    "securityContext": {"runAsNonRoot": True, "runAsUser": 1000},
                }
            ],
            "tolerations": [{"key": "k", "operator": "Exists", "effect": "NoSchedule"}],
        },
    },
}
GOLDEN_DUMPS = dict(re.findall(r"^## dump\.ForHash\((\w+)\).*\n(.*)$", GOLDEN, re.MULTILINE))
GOLDEN_HASHES = re.findall(r"^(\w+) collisionCount=(\S+) .*hash=(\w+)", GOLDEN, re.MULTILINE)


@pytest.mark.parametrize("name", sorted(GOLDEN_TEMPLATES))
def test_golden_dump_bytes(name: str) -> None:
    assert dump_for_hash(GOLDEN_TEMPLATES[name]) == GOLDEN_DUMPS[name]


def test_golden_has_all_vectors() -> None:
    assert set(GOLDEN_DUMPS) == set(GOLDEN_TEMPLATES)
    assert len(GOLDEN_HASHES) == 11


@pytest.mark.parametrize(("name", "collision", "expected"), GOLDEN_HASHES)
def test_golden_hashes(name: str, collision: str, expected: str) -> None:
    template = GOLDEN_TEMPLATES[name.upper()]
    count = None if collision == "nil" else int(collision)
    assert compute_hash(template, count) == expected
    assert deploymentutil.compute_hash(template, count) == expected


def test_vectors_cover_the_documented_shapes() -> None:
    names = {v["name"] for v in VECTORS}
    for shape in (
        "volumes",
        "affinity",
        "probes-lifecycle",
        "quantities",
        "init-env",
        "tolerations-spread",
        "security",
        "empty-vs-nil",
        "timestamps",
        "unicode-and-unknown",
    ):
        assert shape in names
    assert len(VECTORS) > 100


@pytest.mark.parametrize("vector", VECTORS, ids=[v["name"] for v in VECTORS])
def test_generated_vectors(vector: dict[str, Any]) -> None:
    # The JSON a user wrote and the JSON the apiserver returns for it hash the same.
    assert dump_for_hash(vector["template"]) == vector["dump"]
    assert dump_for_hash(vector["apiserver_template"]) == vector["dump"]
    for collision, expected in vector["hashes"].items():
        count = None if collision == "nil" else int(collision)
        assert compute_hash(vector["apiserver_template"], count) == expected


def test_empty_lists_and_maps_are_nil_but_empty_structs_are_not() -> None:
    bare = {"spec": {"containers": [{"name": "a", "image": "b"}]}}
    empty = {
        "metadata": {"labels": {}, "annotations": {}},
        "spec": {"containers": [{"name": "a", "image": "b", "command": [], "env": []}]},
    }
    assert compute_hash(bare, None) == compute_hash(empty, None)
    with_context = {"spec": {"containers": [{"name": "a", "image": "b"}], "securityContext": {}}}
    assert compute_hash(bare, None) != compute_hash(with_context, None)
    assert "SecurityContext:(*v1.PodSecurityContext){SELinuxOptions:" in dump_for_hash(with_context)


def test_explicit_null_time_pointer_is_a_non_nil_zero_time() -> None:
    # The apiserver omits a nil *metav1.Time and writes a non-nil zero one as null.
    absent = dump_for_hash({"metadata": {}})
    null = dump_for_hash({"metadata": {"deletionTimestamp": None}})
    assert "DeletionTimestamp:(*v1.Time)<nil>" in absent
    assert (
        "DeletionTimestamp:(*v1.Time){Time:(time.Time){wall:(uint64)0 ext:(int64)0 "
        "loc:(*time.Location)<nil>}}" in null
    )


def test_creation_timestamp_prints_the_utc_fallback_zone() -> None:
    dump = dump_for_hash({"metadata": {"creationTimestamp": "2024-05-06T07:08:09Z"}})
    assert (
        "CreationTimestamp:(v1.Time){Time:(time.Time){wall:(uint64)0 ext:(int64)63850576089 "
        "loc:(*time.Location){name:(string)UTC zone:([]time.zone)<nil> "
        "tx:([]time.zoneTrans)<nil> extend:(string) cacheStart:(int64)0 cacheEnd:(int64)0 "
        "cacheZone:(*time.zone)<nil>}}}" in dump
    )


def test_unknown_fields_are_ignored() -> None:
    plain = {"spec": {"containers": [{"name": "a", "image": "b"}]}}
    noisy = {
        "status": {},
        "spec": {"containers": [{"name": "a", "image": "b", "bogus": 1}], "other": [1]},
    }
    assert dump_for_hash(plain) == dump_for_hash(noisy)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("500m", (500, -3, None, "500m", "DecimalSI")),
        ("128Mi", (134217728, 0, None, "", "BinarySI")),
        ("1Gi", (1073741824, 0, None, "1Gi", "BinarySI")),
        ("1", (1, 0, None, "1", "DecimalSI")),
        ("0", (0, 0, None, "0", "DecimalSI")),
        ("1000m", (1000, -3, None, "", "DecimalSI")),
        ("0.5", (5, -1, None, "", "DecimalSI")),
        ("1e3", (1, 3, None, "1e3", "DecimalExponent")),
        ("+1", (1, 0, None, "+1", "DecimalSI")),
        ("1Pi", (0, 0, (1125899906842624 * 10**9, 9), "", "BinarySI")),
        ("9Ei", (0, 0, (2**63 - 1, 0), "", "BinarySI")),
        ("0.1Ki", (0, 0, (102400000000, 9), "", "BinarySI")),
        ("1e-20", (0, 0, (1, 9), "", "DecimalExponent")),
        ("123456789012345678901", (0, 0, (123456789012345678901 * 10**9, 9), "", "DecimalSI")),
    ],
)
def test_parse_quantity_internals(
    text: str, expected: tuple[int, int, tuple[int, int] | None, str, str]
) -> None:
    """(i.value, i.scale, d.Dec as (unscaled, scale), s, Format) of resource.ParseQuantity."""
    q = parse_quantity(text)
    assert (q.value, q.scale, q.dec, q.s, q.format) == expected


@pytest.mark.parametrize(
    ("text", "wire"),
    [
        ("0.5", "500m"),
        ("1.5Gi", "1536Mi"),
        ("0.1Ki", "102400m"),
        ("1024", "1024"),
        ("1025Ki", "1025Ki"),
        ("1.5Ki", "1536"),
        ("1000m", "1"),
        ("1e-20", "1e-9"),
        ("15e-1", "1500e-3"),
        (" 2 ", "2"),
        ("-0", "0"),
        ("1000E", "1"),  # 10**21 has no DecimalSI suffix: upstream prints the bare mantissa
    ],
)
def test_quantity_wire_string(text: str, wire: str) -> None:
    assert quantity_wire_string(text) == wire


def test_big_quantities_print_their_inf_dec() -> None:
    dump = dump_for_hash(
        {"spec": {"containers": [{"name": "a", "resources": {"limits": {"x": "1Ei"}}}]}}
    )
    assert (
        "map[x:{i:(resource.int64Amount){value:(int64)0 scale:(resource.Scale)0} "
        "d:(resource.infDecAmount){Dec:(*inf.Dec){unscaled:(big.Int){neg:(bool)false "
        "abs:(big.nat)[0 62500000]} scale:(inf.Scale)9}} s:(string) "
        "Format:(resource.Format)BinarySI}]" in dump
    )


def test_int_or_string() -> None:
    named = dump_for_hash(
        {"spec": {"containers": [{"name": "a", "livenessProbe": {"tcpSocket": {"port": "http"}}}]}}
    )
    assert "Port:(intstr.IntOrString){Type:(intstr.Type)1 IntVal:(int32)0 StrVal:(string)http}" in (
        named
    )


def test_schema_is_generated_and_shipped() -> None:
    path = Path(podtemplatehash.__file__).with_name("podtemplate_schema.json")
    raw = json.loads(path.read_text())
    assert raw["_comment"].startswith("Generated by tools/hashschema")
    assert raw["root"] == "v1.PodTemplateSpec"
    assert raw["types"]["resource.Quantity"]["special"] == "quantity"

"""Which volume a claim binds to, as upstream's index picks it, and quantities."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from reconcilers.controllers.persistentvolume.matching import (
    default_class,
    find_best_match,
    volume_does_not_satisfy,
)
from reconcilers.controllers.quantity import parse_quantity


def volume(
    name: str,
    size: str,
    *,
    modes: tuple[str, ...] = ("ReadWriteOnce",),
    cls: str = "manual",
    phase: str = "Available",
    claim: dict[str, Any] | None = None,
    labels: dict[str, str] | None = None,
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "capacity": {"storage": size},
        "accessModes": list(modes),
        "storageClassName": cls,
    }
    if claim is not None:
        spec["claimRef"] = claim
    return {
        "metadata": {"name": name, "labels": labels or {}},
        "spec": spec,
        "status": {"phase": phase},
    }


def claim(
    size: str = "1Gi",
    *,
    modes: tuple[str, ...] = ("ReadWriteOnce",),
    cls: str = "manual",
    selector: dict[str, Any] | None = None,
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "accessModes": list(modes),
        "resources": {"requests": {"storage": size}},
        "storageClassName": cls,
    }
    if selector is not None:
        spec["selector"] = selector
    return {"metadata": {"name": "data", "namespace": "ns", "uid": "u-1"}, "spec": spec}


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("1Gi", Decimal(2**30)),
        ("1073741824", Decimal(2**30)),
        ("1G", Decimal(10**9)),
        ("500m", Decimal("0.5")),
        ("1.5Ki", Decimal(1536)),
        ("2e3", Decimal(2000)),
        (".5", Decimal("0.5")),
    ],
)
def test_quantities_are_read_by_value(text: str, value: Decimal) -> None:
    assert parse_quantity(text) == value


@pytest.mark.parametrize("text", ["", "Gi", "1GB", "1 Gi", "one"])
def test_a_bad_quantity_is_an_error_naming_it(text: str) -> None:
    with pytest.raises(ValueError, match="quantities must match"):
        parse_quantity(text)


def test_the_smallest_volume_big_enough_wins() -> None:
    volumes = [volume("big", "10Gi"), volume("small", "512Mi"), volume("fits", "2Gi")]
    assert find_best_match(claim("1Gi"), volumes, delay_binding=False)["metadata"]["name"] == "fits"


def test_units_compare_by_value() -> None:
    # 1G is less than 1Gi: too small; 1100M is more.
    volumes = [volume("decimal", "1G"), volume("enough", "1100M")]
    assert (
        find_best_match(claim("1Gi"), volumes, delay_binding=False)["metadata"]["name"] == "enough"
    )


def test_volumes_with_fewer_extra_access_modes_are_searched_first() -> None:
    volumes = [
        volume("many-modes", "1Gi", modes=("ReadWriteOnce", "ReadOnlyMany", "ReadWriteMany")),
        volume("two-modes", "5Gi", modes=("ReadWriteOnce", "ReadOnlyMany")),
    ]
    # upstream's index: the group with two modes decides before size is compared across groups
    found = find_best_match(claim("1Gi"), volumes, delay_binding=False)
    assert found["metadata"]["name"] == "two-modes"
    assert (
        find_best_match(claim(modes=("ReadWriteMany",)), volumes, delay_binding=False)["metadata"][
            "name"
        ]
        == "many-modes"
    )


def test_class_phase_selector_and_claims_of_others_exclude_a_volume() -> None:
    other = {"namespace": "ns", "name": "other", "uid": "u-2"}
    volumes = [
        volume("wrong-class", "1Gi", cls="fast"),
        volume("released", "1Gi", phase="Released"),
        volume("taken", "1Gi", claim=other),
        volume("unlabelled", "1Gi"),
    ]
    assert find_best_match(claim(), volumes[:3], delay_binding=False) is None
    chosen = claim(selector={"matchLabels": {"tier": "gold"}})
    assert find_best_match(chosen, volumes, delay_binding=False) is None
    volumes.append(volume("gold", "1Gi", labels={"tier": "gold"}))
    assert find_best_match(chosen, volumes, delay_binding=False)["metadata"]["name"] == "gold"


def test_a_volume_pointing_at_the_claim_wins_even_when_binding_waits() -> None:
    mine = {"namespace": "ns", "name": "data", "uid": ""}
    volumes = [volume("any", "1Gi"), volume("reserved", "8Gi", phase="Available", claim=mine)]
    assert find_best_match(claim(), volumes, delay_binding=True)["metadata"]["name"] == "reserved"
    assert find_best_match(claim(), volumes[:1], delay_binding=True) is None


def test_a_bad_selector_is_an_error() -> None:
    bad = claim(selector={"matchExpressions": [{"key": "a", "operator": "Near"}]})
    with pytest.raises(ValueError, match="label selector"):
        find_best_match(bad, [volume("v", "1Gi")], delay_binding=False)


def test_why_a_requested_volume_does_not_fit() -> None:
    assert (
        volume_does_not_satisfy(volume("v", "100Mi"), claim("1Gi")) == "requested PV is too small"
    )
    assert (
        volume_does_not_satisfy(volume("v", "1Gi", cls="fast"), claim("1Gi"))
        == "storageClassName does not match"
    )
    assert (
        volume_does_not_satisfy(volume("v", "1Gi", modes=("ReadOnlyMany",)), claim("1Gi"))
        == "incompatible accessMode"
    )
    assert volume_does_not_satisfy(volume("v", "1Gi"), claim("1Gi")) is None


def test_the_default_class_is_the_newest_annotated_one() -> None:
    def cls(name: str, created: str, default: str | None) -> dict[str, Any]:
        notes = {} if default is None else {"storageclass.kubernetes.io/is-default-class": default}
        return {"metadata": {"name": name, "creationTimestamp": created, "annotations": notes}}

    classes = [
        cls("old", "2026-01-01T00:00:00Z", "true"),
        cls("new-b", "2026-02-01T00:00:00Z", "true"),
        cls("new-a", "2026-02-01T00:00:00Z", "true"),
        cls("newest", "2026-03-01T00:00:00Z", "false"),
    ]
    chosen = default_class(classes)
    assert chosen is not None and chosen["metadata"]["name"] == "new-a"
    assert default_class(classes[3:]) is None

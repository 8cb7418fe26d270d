"""Subjects and partitions of the object stream."""

from __future__ import annotations

import pytest

from bus.errors import SubjectError
from bus.layout import BusLayout
from bus.subjects import ObjectRef, ResourceType, partition_of

PODS = ResourceType.parse("v1/pods")
INGRESSES = ResourceType.parse("networking.k8s.io/v1/ingresses")


@pytest.mark.parametrize(
    ("ref", "subject"),
    [
        (ObjectRef(PODS, "default", "web-1"), "kubus.obj.{p}.core.v1.pods.default.web-1"),
        (
            ObjectRef(INGRESSES, "shop", "api.example.com"),
            "kubus.obj.{p}.networking_k8s_io.v1.ingresses.shop.api_example_com",
        ),
        (
            ObjectRef(ResourceType.parse("v1/nodes"), None, "node.a"),
            "kubus.obj.{p}.core.v1.nodes._.node_a",
        ),
        (
            ObjectRef(
                ResourceType.parse("rbac.authorization.k8s.io/v1/clusterroles"),
                None,
                "system:controller:job-controller",
            ),
            "kubus.obj.{p}.rbac_authorization_k8s_io.v1.clusterroles._.system:controller:job-controller",
        ),
    ],
)
def test_subjects_are_readable_and_reversible(ref: ObjectRef, subject: str) -> None:
    layout = BusLayout()
    partition = partition_of(ref.namespace, ref.name)
    assert layout.subject(ref) == subject.format(p=partition)
    assert layout.decode(layout.subject(ref)) == (partition, ref)


@pytest.mark.parametrize("name", ["has space", "wild*card", "gt>", "under_score", "uni\u00e9"])
def test_names_outside_the_dns_alphabet_are_encoded_reversibly(name: str) -> None:
    layout = BusLayout()
    ref = ObjectRef(ResourceType.parse("rbac.authorization.k8s.io/v1/clusterroles"), None, name)
    subject = layout.subject(ref)
    token = subject.split(".")[-1]
    assert token.startswith("=")
    assert not set(token) & set(" *>.")
    assert layout.decode(subject)[1] == ref


def test_a_namespace_shares_the_partition_of_its_contents() -> None:
    namespace = ObjectRef(ResourceType.parse("v1/namespaces"), None, "shop")
    pod = ObjectRef(PODS, "shop", "web-1")
    layout = BusLayout()
    assert layout.decode(layout.subject(namespace))[0] == layout.decode(layout.subject(pod))[0]


def test_partition_is_fnv1a_32_of_the_namespace() -> None:
    # The FNV-1a 32 test vectors of its specification: "a" and "foobar".
    assert partition_of("a", "ignored", 2**32) == 0xE40C292C
    assert partition_of(None, "foobar", 2**32) == 0xBF9CF968
    assert {partition_of(f"ns-{i}", "x") for i in range(400)} == set(range(32))


@pytest.mark.parametrize("text", ["pods", "a/b/c/d", "apps//deployments"])
def test_malformed_resources_are_named_in_the_error(text: str) -> None:
    with pytest.raises(SubjectError, match=repr(text).replace("/", "/")):
        ResourceType.parse(text)


@pytest.mark.parametrize("prefix", ["Kubus", "ku.bus", "", "a" * 33])
def test_bad_bus_prefixes_are_refused(prefix: str) -> None:
    with pytest.raises(SubjectError, match="bus prefix"):
        BusLayout(prefix=prefix)

"""A CRD generated from typed structs, installed in a real apiserver, validates as declared."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from reconcilers.operator import crd_name, custom_resource_definition
from tests.support.crds import create_established_crd, delete_crd
from tests.support.typed_resources import MySQLCluster

GROUP, VERSION, PLURAL = MySQLCluster.group, MySQLCluster.version, MySQLCluster.plural_name()


@pytest.fixture(scope="module")
def mysql_crd(kube: Any) -> Iterator[client.CustomObjectsApi]:
    create_established_crd(kube, custom_resource_definition(MySQLCluster))
    yield client.CustomObjectsApi(kube)
    delete_crd(kube, crd_name(MySQLCluster))


def manifest(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": MySQLCluster.api_version(),
        "kind": MySQLCluster.kind,
        "metadata": {"name": name},
        "spec": spec,
    }


def test_the_apiserver_serves_the_generated_crd_with_its_defaults_and_scale_subresource(
    mysql_crd: client.CustomObjectsApi, namespace: str
) -> None:
    created = mysql_crd.create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, manifest("db", storageSize="10Gi")
    )
    # The schema's defaults are the apiserver's: the object comes back filled in.
    assert created["spec"] == {
        "storageSize": "10Gi",
        "version": "8.0",
        "replicas": 1,
        "port": 3306,
        "resources": {"cpu": "500m", "memory": "1Gi"},
    }
    typed = MySQLCluster.decode(created)
    assert typed.spec.replicas == 1 and typed.metadata.namespace == namespace
    scale = mysql_crd.patch_namespaced_custom_object_scale(
        GROUP, VERSION, namespace, PLURAL, "db", {"spec": {"replicas": 4}}
    )
    assert scale["spec"]["replicas"] == 4
    again = mysql_crd.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "db")
    assert MySQLCluster.decode(again).spec.replicas == 4


@pytest.mark.parametrize(
    ("spec", "says"),
    [
        (
            {"storageSize": "10Gi", "replicas": 12},
            "spec.replicas: Invalid value: 12: spec.replicas in body should be less than or "
            "equal to 9",
        ),
        ({"storageSize": "10Gi", "version": "9.1"}, 'spec.version: Unsupported value: "9.1"'),
        ({"replicas": 2}, "spec.storageSize: Required value"),
        ({"storageSize": "lots"}, 'spec.storageSize: Invalid value: "lots"'),
    ],
)
def test_an_invalid_mysqlcluster_is_refused_by_the_apiserver_naming_the_field(
    mysql_crd: client.CustomObjectsApi, namespace: str, spec: dict[str, Any], says: str
) -> None:
    with pytest.raises(ApiException) as refused:
        mysql_crd.create_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, manifest("bad", **spec)
        )
    assert refused.value.status == 422
    message = json.loads(refused.value.body)["message"]
    assert message.startswith('MySQLCluster.database.example.com "bad" is invalid: '), message
    assert says in message, message

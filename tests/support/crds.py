"""CustomResourceDefinitions for tests: one manifest shape, created and waited on alike."""

from __future__ import annotations

from typing import Any

from tests.support.wait import wait_for

# Objects of any shape: what a test of the bus or a controller needs of a custom resource.
ANY_OBJECT: dict[str, Any] = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}


def crd_manifest(
    group: str,
    kind: str,
    *,
    scope: str = "Namespaced",
    schema: dict[str, Any] | None = None,
    version: str = "v1",
) -> dict[str, Any]:
    """A one-version CRD; the plural is the kind lowercased with an ``s``."""
    plural = kind.lower() + "s"
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{group}"},
        "spec": {
            "group": group,
            "scope": scope,
            "names": {"plural": plural, "singular": kind.lower(), "kind": kind},
            "versions": [
                {
                    "name": version,
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": schema or ANY_OBJECT},
                }
            ],
        },
    }


def create_established_crd(kube: Any, manifest: dict[str, Any], *, timeout: float = 30) -> str:
    """Create the CRD and wait until it is Established (served); returns its name."""
    from kubernetes import client

    extensions = client.ApiextensionsV1Api(kube)
    name: str = manifest["metadata"]["name"]
    extensions.create_custom_resource_definition(manifest)

    def established() -> bool:
        conditions = extensions.read_custom_resource_definition(name).status.conditions or []
        return any(c.type == "Established" and c.status == "True" for c in conditions)

    wait_for(established, timeout=timeout, what=f"CRD {name} established")
    return name


def delete_crd(kube: Any, name: str, *, timeout: float = 60) -> None:
    """Delete the CRD and wait until it is gone (its objects deleted with it), so a next
    create of the same name does not meet it still terminating."""
    from kubernetes import client
    from kubernetes.client.rest import ApiException

    extensions = client.ApiextensionsV1Api(kube)
    extensions.delete_custom_resource_definition(name)

    def gone() -> bool:
        try:
            extensions.read_custom_resource_definition(name)
        except ApiException as error:
            if error.status == 404:
                return True
            raise
        return False

    wait_for(gone, timeout=timeout, what=f"CRD {name} deleted")

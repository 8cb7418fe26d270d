"""kubus's service-account controllers, as the session's system pool runs them on the dev
stack: every namespace gets `default` and `kube-root-ca.crt`, kept there; legacy token Secrets
are populated with a token the apiserver accepts, and deleted with their ServiceAccount."""

from __future__ import annotations

import base64
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.support.system import wait_for_namespace_ready
from tests.support.wait import wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def ca_pem(stack_env: dict[str, str]) -> bytes:
    state_dir = stack_env.get("KUBUS_STATE_DIR")
    if not state_dir:
        pytest.skip("not the local dev stack: its own controllers serve these namespaces")
    return (Path(state_dir) / "pki" / "ca.crt").read_bytes()


@pytest.fixture
def core(kube: Any) -> client.CoreV1Api:
    return client.CoreV1Api(kube)


@pytest.fixture
def fresh_namespace(core: client.CoreV1Api) -> Iterator[str]:
    """A namespace created by the test itself (the `namespace` fixture waits for what this
    file measures)."""
    name = f"sa-{uuid.uuid4().hex[:8]}"
    yield name
    try:
        core.delete_namespace(name)
    except ApiException as error:
        if error.status != 404:
            raise


def _absent(read: Any) -> bool:
    try:
        read()
    except ApiException as error:
        if error.status == 404:
            return True
        raise
    return False


def test_a_new_namespace_gets_default_and_the_root_ca_within_two_seconds(
    core: client.CoreV1Api, fresh_namespace: str, ca_pem: bytes
) -> None:
    started = time.monotonic()
    core.create_namespace({"metadata": {"name": fresh_namespace}})
    wait_for_namespace_ready(core, fresh_namespace, timeout=10)
    elapsed = time.monotonic() - started
    print(f"default and kube-root-ca.crt {elapsed:.3f}s after the namespace's creation")
    assert elapsed < 2.0, f"default and kube-root-ca.crt took {elapsed:.2f}s"
    configmap = core.read_namespaced_config_map("kube-root-ca.crt", fresh_namespace)
    assert configmap.data == {"ca.crt": ca_pem.decode()}
    assert configmap.metadata.annotations["kubernetes.io/description"].startswith(
        "Contains a CA bundle that can be used to verify the kube-apiserver"
    )


def test_default_and_the_root_ca_come_back_after_deletion_and_an_edit_is_undone(
    core: client.CoreV1Api, namespace: str, ca_pem: bytes
) -> None:
    old_sa = core.read_namespaced_service_account("default", namespace).metadata.uid
    old_cm = core.read_namespaced_config_map("kube-root-ca.crt", namespace).metadata.uid
    core.delete_namespaced_service_account("default", namespace)
    core.delete_namespaced_config_map("kube-root-ca.crt", namespace)

    def recreated() -> bool:
        try:
            sa = core.read_namespaced_service_account("default", namespace)
            cm = core.read_namespaced_config_map("kube-root-ca.crt", namespace)
        except ApiException as error:
            if error.status == 404:
                return False
            raise
        return sa.metadata.uid != old_sa and cm.metadata.uid != old_cm

    wait_for(recreated, timeout=10, what="default and kube-root-ca.crt created again")

    core.patch_namespaced_config_map(
        "kube-root-ca.crt", namespace, {"data": {"ca.crt": "tampered", "extra": "x"}}
    )
    wait_for(
        lambda: (
            core.read_namespaced_config_map("kube-root-ca.crt", namespace).data
            == {"ca.crt": ca_pem.decode()}
        ),
        timeout=10,
        what="the edited kube-root-ca.crt put back",
    )


def _bearer_client(kube: Any, token: str) -> client.ApiClient:
    configuration = client.Configuration()
    configuration.host = kube.configuration.host
    configuration.ssl_ca_cert = kube.configuration.ssl_ca_cert
    configuration.api_key = {"authorization": f"Bearer {token}"}
    return client.ApiClient(configuration)


def test_a_legacy_token_secret_is_populated_accepted_and_deleted_with_its_account(
    kube: Any, core: client.CoreV1Api, namespace: str, ca_pem: bytes
) -> None:
    sa = core.create_namespaced_service_account(namespace, {"metadata": {"name": "robot"}})
    core.create_namespaced_secret(
        namespace,
        {
            "metadata": {
                "name": "robot-token",
                "annotations": {"kubernetes.io/service-account.name": "robot"},
            },
            "type": "kubernetes.io/service-account-token",
        },
    )

    def populated() -> Any:
        secret = core.read_namespaced_secret("robot-token", namespace)
        return secret if (secret.data or {}).get("token") else None

    secret = wait_for(populated, timeout=10, what="the token Secret populated")
    data = {key: base64.b64decode(value) for key, value in secret.data.items()}
    assert data["ca.crt"] == ca_pem
    assert data["namespace"] == namespace.encode()
    annotations = secret.metadata.annotations
    assert annotations["kubernetes.io/service-account.uid"] == sa.metadata.uid

    rbac = client.RbacAuthorizationV1Api(kube)
    rbac.create_namespaced_role(
        namespace,
        {
            "metadata": {"name": "read-root-ca"},
            "rules": [
                {
                    "apiGroups": [""],
                    "resources": ["configmaps"],
                    "resourceNames": ["kube-root-ca.crt"],
                    "verbs": ["get"],
                }
            ],
        },
    )
    rbac.create_namespaced_role_binding(
        namespace,
        {
            "metadata": {"name": "robot-reads-root-ca"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Role",
                "name": "read-root-ca",
            },
            "subjects": [{"kind": "ServiceAccount", "name": "robot", "namespace": namespace}],
        },
    )
    as_robot = client.CoreV1Api(_bearer_client(kube, data["token"].decode()))
    # RBAC takes effect through the apiserver's informers: a moment after the binding.
    configmap = wait_for(
        lambda: _read_or_none(as_robot, namespace),
        timeout=10,
        what="the robot's token to read kube-root-ca.crt",
    )
    assert configmap.data["ca.crt"] == ca_pem.decode()
    review = client.AuthenticationV1Api(kube).create_token_review(
        {"spec": {"token": data["token"].decode()}}
    )
    assert review.status.authenticated
    assert review.status.user.username == f"system:serviceaccount:{namespace}:robot"

    core.delete_namespaced_service_account("robot", namespace)
    wait_for(
        lambda: _absent(lambda: core.read_namespaced_secret("robot-token", namespace)),
        timeout=10,
        what="the token Secret deleted with its ServiceAccount",
    )


def _read_or_none(api: client.CoreV1Api, namespace: str) -> Any:
    try:
        return api.read_namespaced_config_map("kube-root-ca.crt", namespace)
    except ApiException as error:
        if error.status == 403:
            return None
        raise

"""Every overlay of deploy/ is accepted by a real apiserver: a server-side dry-run apply.

``kubectl apply --server-side --dry-run=server -k deploy/overlays/<name>`` runs each object
through the apiserver's decoding, defaulting, validation (CRD schemas included) and admission,
and stores nothing. The KEDA and Prometheus Operator CRDs are installed first, for real, from
their modules at the pinned versions (tests/support/deploy.py). The namespace ``kubus`` is
created for real too: a dry-run does not create the namespace it also applies, and its
namespaced objects would be refused for want of it.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.support.deploy import (
    DEPLOY,
    OVERLAYS,
    kubectl,
    operator_crd_files,
    overlay_with_component,
    render,
)
from tests.support.system import create_namespace
from tests.support.wait import wait_for

pytestmark = pytest.mark.integration

NAMESPACE = "kubus"


def run_kubectl(stack_env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(kubectl()), *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, "KUBECONFIG": stack_env["KUBECONFIG"]},
    )


@pytest.fixture(scope="module")
def operator_crds(stack_env: dict[str, str], kube: Any) -> Iterator[list[str]]:
    """The ScaledObject and ServiceMonitor CRDs, established; removed after if this made them."""
    extensions = client.ApiextensionsV1Api(kube)
    files = operator_crd_files()
    made = []
    for name, path in files.items():
        try:
            extensions.read_custom_resource_definition(name)
        except ApiException as error:
            assert error.status == 404, error
            made.append(name)
        applied = run_kubectl(stack_env, "apply", "--server-side", "-f", str(path))
        assert applied.returncode == 0, applied.stderr

        def established(name: str = name) -> bool:
            crd = extensions.read_custom_resource_definition(name)
            conditions = (crd.status and crd.status.conditions) or []
            return any(c.type == "Established" and c.status == "True" for c in conditions)

        wait_for(established, timeout=60, what=f"CRD {name} Established")
    yield list(files)
    for name in made:
        extensions.delete_custom_resource_definition(name)


@pytest.fixture(scope="module")
def kubus_namespace(kube: Any) -> Iterator[str]:
    core = client.CoreV1Api(kube)
    try:
        core.read_namespace(NAMESPACE)
        made = False
    except ApiException as error:
        assert error.status == 404, error
        create_namespace(core, NAMESPACE)
        made = True
    yield NAMESPACE
    if made:
        core.delete_namespace(NAMESPACE)


def dry_run(stack_env: dict[str, str], kustomization: Path) -> list[str]:
    """The apiserver's answer per object: `<kind>/<name> serverside-applied (server dry run)`."""
    result = run_kubectl(
        stack_env, "apply", "--server-side", "--dry-run=server", "-k", str(kustomization)
    )
    assert result.returncode == 0, f"{kustomization}:\n{result.stderr}"
    return result.stdout.splitlines()


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_apiserver_accepts_every_object_of_the_overlay(
    overlay: str,
    stack_env: dict[str, str],
    kube: Any,
    operator_crds: list[str],
    kubus_namespace: str,
) -> None:
    kustomization = DEPLOY / "overlays" / overlay
    apps: Any = client.AppsV1Api(kube)

    def workloads() -> set[str]:
        deployments = apps.list_namespaced_deployment(kubus_namespace).items
        stateful_sets = apps.list_namespaced_stateful_set(kubus_namespace).items
        return {f"deployment/{d.metadata.name}" for d in deployments} | {
            f"statefulset/{s.metadata.name}" for s in stateful_sets
        }

    before = workloads()
    answers = dry_run(stack_env, kustomization)
    objects = render(kustomization)
    assert len(answers) == len(objects), answers
    assert all(line.endswith("serverside-applied (server dry run)") for line in answers), answers
    for obj in objects:
        assert any(f"/{obj['metadata']['name']} " in line for line in answers), obj["metadata"]
    # A dry run: it made nothing.
    assert workloads() == before


def test_the_apiserver_accepts_the_signing_key_component(
    stack_env: dict[str, str], kubus_namespace: str, tmp_path: Path
) -> None:
    overlay_with_component(tmp_path, "dev", "service-account-key")
    answers = dry_run(stack_env, tmp_path)
    assert "deployment.apps/kubus-reconciler-default serverside-applied (server dry run)" in answers


def test_a_scaled_object_the_crd_refuses_is_refused(
    stack_env: dict[str, str], operator_crds: list[str], kubus_namespace: str, tmp_path: Path
) -> None:
    """The CRDs are there and validate: the same check fails on a ScaledObject that is wrong."""
    (scaled,) = [
        o for o in render(DEPLOY / "overlays" / "production") if o["kind"] == "ScaledObject"
    ]
    scaled["spec"]["maxReplicaCount"] = "thirty-two"
    wrong = tmp_path / "scaledobject.yaml"
    wrong.write_text(yaml.safe_dump(scaled))
    result = run_kubectl(stack_env, "apply", "--server-side", "--dry-run=server", "-f", str(wrong))
    assert result.returncode != 0
    assert "maxReplicaCount" in result.stderr, result.stderr

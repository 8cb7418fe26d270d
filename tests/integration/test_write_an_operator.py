"""The README's "Write an operator" section, run as written: its files are taken from the
README, pip-installed (editable, as it says) into a fresh virtualenv beside kubus, and the
operator runs on two processes of one pool against the real stack.

The README runs the operator in a pool of its own beside the dev stack's (whose Deployment
controller rolls the Deployment out); here one pool of two processes runs the operator with
the Deployment and ReplicaSet controllers, and its watcher watches every resource as the dev
stack's does.
"""

from __future__ import annotations

import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException

from tests.integration.test_partition_shards import overlaps, reconciles
from tests.support.crds import delete_crd
from tests.support.jaeger import ReconcileTrace, find_reconcile
from tests.support.services import kubus_pool
from tests.support.system import create_namespace
from tests.support.venv import entry_points_of, installed_beside_kubus
from tests.support.wait import wait_for

pytestmark = pytest.mark.integration

README = Path(__file__).resolve().parents[2] / "README.md"
GROUP, VERSION, PLURAL = "web.example.com", "v1", "websites"
CRD = f"{PLURAL}.{GROUP}"
OPERATOR = "website-operator"


def section() -> str:
    text = README.read_text()
    start = text.index("\n## Write an operator\n")
    return text[start : text.index("\n## ", start + 1)]


def files() -> dict[str, str]:
    """The section's code blocks whose first line names a file (``# website_operator.py``)."""
    found = {}
    for body in re.findall(r"^```\w+\n(.*?)^```$", section(), flags=re.S | re.M):
        first = body.splitlines()[0]
        if re.fullmatch(r"# [\w.-]+\.(py|toml|yaml)", first):
            found[first[2:]] = body
    return found


def test_the_section_names_its_files_and_the_operator_is_under_60_lines() -> None:
    written = files()
    assert set(written) == {"website_operator.py", "pyproject.toml", "hello.yaml"}
    assert len(written["website_operator.py"].splitlines()) < 60
    shell = section()
    assert "pip install -e ." in shell
    assert f"--pool websites --controllers {OPERATOR}" in shell


@pytest.fixture(scope="module")
def kubus_command(tmp_path_factory: pytest.TempPathFactory, kube: Any) -> Iterator[list[str]]:
    work = tmp_path_factory.mktemp("website-operator")
    project = work / "project"
    project.mkdir()
    for name, body in files().items():
        (project / name).write_text(body)
    python = installed_beside_kubus(project, work, pip_args=("-e",))
    assert "website_operator:WebsiteOperator" in entry_points_of(python)
    remove_crd(kube)  # left by an interrupted run
    yield [str(python), "-m", "kubus.cli"]
    remove_crd(kube)


def remove_crd(kube: Any) -> None:
    try:
        client.ApiextensionsV1Api(kube).read_custom_resource_definition(CRD)
    except ApiException as error:
        if error.status == 404:
            return
        raise
    delete_crd(kube, CRD)


def website(kube: Any, namespace: str) -> dict[str, Any] | None:
    try:
        got: dict[str, Any] = client.CustomObjectsApi(kube).get_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, "hello"
        )
    except ApiException as error:
        if error.status == 404:
            return None
        raise
    return got


def test_the_operator_runs_scaled_out_and_traced(
    kubus_command: list[str], kube: Any, stack_env: dict[str, str], tmp_path: Path
) -> None:
    core, apps = client.CoreV1Api(kube), client.AppsV1Api(kube)
    custom = client.CustomObjectsApi(kube)
    hello = yaml.safe_load(files()["hello.yaml"])
    run = uuid.uuid4().hex[:5]
    namespaces = [create_namespace(core, f"web-{run}-{i}") for i in range(6)]
    audit = tmp_path / "audit.jsonl"
    with kubus_pool(
        stack_env,
        tmp_path,
        reconcilers=2,
        extra=[
            f"--controllers={OPERATOR},deployment,replicaset",
            f"--reconcile-audit-log={audit}",
        ],
        watcher_args=["--resources=all"],
        kubus=kubus_command,
    ) as pool:
        # The first process to start installed the CRD (install_crd=True).
        crd = client.ApiextensionsV1Api(kube).read_custom_resource_definition(CRD)
        assert crd.spec.names.kind == "Website"
        with pytest.raises(ApiException) as refused:
            custom.create_namespaced_custom_object(
                GROUP, VERSION, namespaces[0], PLURAL, {**hello, "spec": {"replicas": 3}}
            )
        assert refused.value.status == 422 and "spec.html" in refused.value.body

        for namespace in namespaces:
            custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, hello)

        def ready(namespace: str) -> bool:
            site = website(kube, namespace) or {}
            status = site.get("status") or {}
            return bool(
                status.get("readyReplicas") == 3
                and status.get("observedGeneration") == site["metadata"]["generation"]
            )

        wait_for(lambda: all(ready(ns) for ns in namespaces), timeout=120, what="6 websites ready")
        page = core.read_namespaced_config_map("hello", namespaces[0])
        assert page.data == {"index.html": hello["spec"]["html"]}
        deployment = apps.read_namespaced_deployment("hello", namespaces[0])
        assert deployment.metadata.owner_references[0].kind == "Website"
        assert deployment.spec.template.spec.containers[0].image == "nginx:1.27"
        listed = subprocess.run(
            [str(Path(sys.executable).parent / "kubectl"), "get", "websites", "-n", namespaces[0]],
            env={**stack_env, "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},  # its cache
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout.split()
        assert listed[:4] == ["NAME", "READY", "hello", "3"], listed

        members = {m for entries in reconciles(audit).values() for *_, m in entries}
        assert len(members) == 2, "both processes reconcile websites of their namespaces"

        def traced(found: ReconcileTrace) -> bool:
            return found.tags.get("k8s.object.key") == f"{namespaces[0]}/hello" and any(
                w["operationName"].startswith("PATCH ") for w in found.writes()
            )

        found = wait_for(
            lambda: find_reconcile(stack_env, OPERATOR, traced),
            timeout=60,
            what="a website-operator reconcile in Jaeger",
        )
        for namespace in namespaces:
            custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "hello")
        wait_for(
            lambda: all(website(kube, ns) is None for ns in namespaces),
            timeout=60,
            what="the websites deleted",
        )
        logs = [process.log.read_text() for process in pool.reconcilers]
    for namespace in namespaces:
        core.delete_namespace(namespace)
    assert not any("Traceback" in log for log in logs)
    assert overlaps(reconciles(audit)) == []
    assert found.service(found.parent) == "kubus-watcher"
    assert found.parent["operationName"].startswith("publish ")
    assert found.tags["website.replicas"] == 3
    assert "deployment_applied" in found.events
    writes = {w["operationName"].split("?")[0] for w in found.writes()}
    base = f"/api/v1/namespaces/{namespaces[0]}"
    assert f"PATCH {base}/configmaps/hello" in writes, writes
    assert f"PATCH /apis/apps/v1/namespaces/{namespaces[0]}/deployments/hello" in writes, writes

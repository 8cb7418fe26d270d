"""kubus's pod-template-hash against the real kube-controller-manager: run kcm's Deployment
controller on the stack, create Deployments from every valid case of the unit vectors, and
check that the ReplicaSet kcm names for each carries the hash kubus computes from the
Deployment as the apiserver returns it."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from reconcilers.controllers.deployment.util import compute_hash
from tests.support.kcm import running_kcm
from tests.support.wait import wait_for

pytestmark = pytest.mark.integration

CASES = Path(__file__).resolve().parents[1] / "unit" / "data" / "pod_template_hash_cases.json"
# Cases the apiserver refuses (no containers, negative or fractional extended resources,
# unknown fields under strict decoding): they only exist for the Go-generated vectors.
INVALID = {
    "minimal-empty",
    "quantities",
    "quantity-027",
    "quantity-028",
    "quantity-081",
    "unicode-and-unknown",
}
KUBECTL = str(Path(sys.executable).with_name("kubectl"))


@pytest.fixture
def kcm(stack_env: dict[str, str], tmp_path: Path) -> Iterator[None]:
    # TZ empty: time.Local is Go's UTC fallback, as podtemplatehash assumes for Time fields.
    with running_kcm(stack_env, tmp_path / "kcm.log", "deployment,replicaset", env={"TZ": ""}):
        yield


def _kubectl(stack_env: dict[str, str], *args: str, stdin: str | None = None) -> str:
    result = subprocess.run(
        [KUBECTL, f"--kubeconfig={stack_env['KUBECONFIG']}", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return result.stdout


def _deployment(name: str, template: dict[str, Any]) -> dict[str, Any]:
    template = json.loads(json.dumps(template))
    metadata = template.setdefault("metadata", {})
    metadata["labels"] = {**(metadata.get("labels") or {}), "hash-case": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": {"hash-case": name}},
            "template": template,
        },
    }


def test_replicaset_names_match_kube_controller_manager(
    stack_env: dict[str, str], kcm: None
) -> None:
    cases = {c["name"]: c["template"] for c in json.loads(CASES.read_text())}
    wanted = {name: template for name, template in cases.items() if name not in INVALID}
    namespace = f"t-hash-kcm-{uuid.uuid4().hex[:5]}"
    _kubectl(stack_env, "create", "namespace", namespace)
    try:
        items = [_deployment(name, template) for name, template in wanted.items()]
        _kubectl(
            stack_env,
            "create",
            "-n",
            namespace,
            "-f",
            "-",
            stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": items}),
        )

        def all_replicasets() -> dict[str, str] | None:
            listed = json.loads(_kubectl(stack_env, "get", "rs", "-n", namespace, "-o", "json"))
            by_case = {
                rs["metadata"]["labels"]["hash-case"]: rs["metadata"]["labels"]["pod-template-hash"]
                for rs in listed["items"]
            }
            return by_case if set(by_case) == set(wanted) else None

        theirs = wait_for(all_replicasets, timeout=180, what="a ReplicaSet for every Deployment")
        deployments = json.loads(
            _kubectl(stack_env, "get", "deployments", "-n", namespace, "-o", "json")
        )["items"]
        ours = {
            d["metadata"]["name"]: compute_hash(
                d["spec"]["template"], d.get("status", {}).get("collisionCount")
            )
            for d in deployments
        }
        mismatched = {
            name: (ours[name], theirs[name]) for name in wanted if ours[name] != theirs[name]
        }
        assert not mismatched, mismatched
        assert len(ours) == len(wanted) > 100
    finally:
        _kubectl(stack_env, "delete", "namespace", namespace, "--wait=false")

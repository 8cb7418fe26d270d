"""`kubus deploy rbac`: the checked-in RBAC is the generator's output, and least privilege."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from kubus.deploy.rbac import manifests
from reconcilers.registry import select_controllers

ROOT = Path(__file__).resolve().parents[2]
CHECKED_IN = ROOT / "deploy" / "base" / "rbac.yaml"


def kubus(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kubus.cli", *argv], capture_output=True, text=True, check=False
    )


def test_the_checked_in_rbac_is_what_the_generator_writes() -> None:
    result = kubus("deploy", "rbac")
    assert result.returncode == 0, result.stderr
    assert result.stdout == CHECKED_IN.read_text(), (
        "deploy/base/rbac.yaml is stale: run `kubus deploy rbac --output deploy/base/rbac.yaml`"
    )


def test_the_watcher_only_reads_and_the_pool_gets_what_its_controllers_declare() -> None:
    objects = manifests(select_controllers(["replicaset"]), namespace="ops", pool="web")
    roles = {o["metadata"]["name"]: o for o in objects if o["kind"] == "ClusterRole"}
    assert roles["kubus-watcher"]["rules"] == [
        {"apiGroups": ["*"], "resources": ["*"], "verbs": ["list", "watch"]}
    ]
    by_resource = {
        (r["apiGroups"][0], r["resources"][0]): r["verbs"]
        for r in roles["kubus-reconciler-web"]["rules"]
    }
    # The ReplicaSet controller writes pods, its status and events; it never watches.
    assert by_resource[("", "pods")] == ["create", "delete", "patch"]
    assert ("apps", "replicasets/status") in by_resource
    assert ("*", "*") not in by_resource
    assert not [verbs for verbs in by_resource.values() if "watch" in verbs]
    bindings = [o for o in objects if o["kind"] == "ClusterRoleBinding"]
    assert {(b["roleRef"]["name"], b["subjects"][0]["namespace"]) for b in bindings} == {
        ("kubus-watcher", "ops"),
        ("kubus-reconciler-web", "ops"),
    }


def test_output_parses_as_kubernetes_objects() -> None:
    documents = [d for d in yaml.safe_load_all(kubus("deploy", "rbac").stdout) if d]
    assert [d["kind"] for d in documents] == [
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
    ] * 2


def test_bad_input_is_one_line_and_a_non_zero_exit(tmp_path: Path) -> None:
    for argv, message in (
        (("--controllers", "deploymnt"), '"deploymnt" is not in the list of known controllers'),
        (
            ("--controllers", "horizontalpodautoscaling"),
            "horizontal-pod-autoscaler-controller is not implemented",
        ),
        (("--namespace", "Kube_System"), "--namespace 'Kube_System': not a DNS-1123 label"),
        (("--output", str(tmp_path / "missing" / "rbac.yaml")), "--output"),
    ):
        result = kubus("deploy", "rbac", *argv)
        assert result.returncode == 1, (argv, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("kubus deploy rbac: error: "), lines
        assert message in lines[0], lines

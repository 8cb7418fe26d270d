"""The generated RBAC is enough and least privilege: kubus runs on nothing else.

The watcher and a pool of two reconcilers authenticate with tokens of the ServiceAccounts
`kubus deploy rbac` generates (minted with TokenRequest), not as the stack's admin; a Deployment
rolls out. Then a verb is taken from the pool's role, and the controller that needs it says so
in one line naming the verb and the resource, while the others keep working.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from kubus.deploy.rbac import manifests
from reconcilers.registry import select_controllers
from tests.integration.test_deployment import complete, deployment
from tests.support.services import kubus_pool
from tests.support.system import create_namespace
from tests.support.wait import wait_for

pytestmark = pytest.mark.integration

CONTROLLERS = "deployment,replicaset"


def _apply(kube: Any, objects: list[dict[str, Any]]) -> None:
    core, rbac = client.CoreV1Api(kube), client.RbacAuthorizationV1Api(kube)
    for obj in objects:
        name = obj["metadata"]["name"]
        if obj["kind"] == "ServiceAccount":
            core.create_namespaced_service_account(obj["metadata"]["namespace"], obj)
        elif obj["kind"] == "ClusterRole":
            rbac.create_cluster_role(obj)
        else:
            rbac.create_cluster_role_binding(obj)
        assert name


def _kubeconfig(stack_env: dict[str, str], token: str, path: Path) -> Path:
    """The stack's server and CA, with a bearer token instead of the admin's certificate."""
    admin = yaml.safe_load(Path(stack_env["KUBECONFIG"]).read_text())
    cluster = admin["clusters"][0]
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [cluster],
                "users": [{"name": "sa", "user": {"token": token}}],
                "contexts": [{"name": "sa", "context": {"cluster": cluster["name"], "user": "sa"}}],
                "current-context": "sa",
            }
        )
    )
    return path


def test_watcher_and_pool_run_on_the_generated_rbac_and_a_missing_verb_is_named(
    kube: Any, stack_env: dict[str, str], tmp_path: Path
) -> None:
    core, apps = client.CoreV1Api(kube), client.AppsV1Api(kube)
    rbac = client.RbacAuthorizationV1Api(kube)
    run = uuid.uuid4().hex[:6]
    home = create_namespace(core, f"kubus-{run}")
    pool_name = f"p{run}"
    objects = manifests(select_controllers(CONTROLLERS.split(",")), namespace=home, pool=pool_name)
    # A reused stack may hold the watcher's objects of an earlier run: this run's own names.
    for obj in objects:
        obj["metadata"]["name"] = f"{obj['metadata']['name']}-{run}"
        if obj["kind"] == "ClusterRoleBinding":
            obj["roleRef"]["name"] += f"-{run}"
            obj["subjects"][0]["name"] += f"-{run}"
    watcher_sa, pool_sa = f"kubus-watcher-{run}", f"kubus-reconciler-{pool_name}-{run}"
    _apply(kube, objects)
    try:
        tokens = {
            name: core.create_namespaced_service_account_token(
                name, home, {"spec": {"expirationSeconds": 3600}}
            ).status.token
            for name in (watcher_sa, pool_sa)
        }
        watcher_config = _kubeconfig(stack_env, tokens[watcher_sa], tmp_path / "watcher.kubeconfig")
        pool_config = _kubeconfig(stack_env, tokens[pool_sa], tmp_path / "pool.kubeconfig")
        namespace = create_namespace(core, f"work-{run}")
        with kubus_pool(
            stack_env,
            tmp_path,
            reconcilers=2,
            extra=[f"--kubeconfig={pool_config}", f"--controllers={CONTROLLERS}"],
            watcher_args=[f"--kubeconfig={watcher_config}"],
        ):
            apps.create_namespaced_deployment(namespace, deployment("web", 2))
            wait_for(
                lambda: complete(apps, namespace, "web"),
                timeout=90,
                what="a Deployment rolled out by kubus on its generated RBAC",
            )
            # Take `create` on pods from the pool's role: the ReplicaSet controller cannot
            # create pods any more; the Deployment controller still makes ReplicaSets.
            role = rbac.read_cluster_role(pool_sa)
            for rule in role.rules:
                if rule.resources == ["pods"] and rule.api_groups == [""]:
                    rule.verbs = [verb for verb in rule.verbs if verb != "create"]
            rbac.replace_cluster_role(pool_sa, role)
            apps.create_namespaced_deployment(namespace, deployment("blocked", 1))
            wait_for(
                lambda: (
                    apps.list_namespaced_replica_set(namespace, label_selector="app=blocked").items
                ),
                timeout=60,
                what="the deployment controller still creating the ReplicaSet",
            )

            def named_in_the_log() -> bool:
                for index in range(2):
                    for line in (tmp_path / f"reconciler-{index}.log").read_text().splitlines():
                        if (
                            "replicaset-controller" in line
                            and "403 Forbidden" in line
                            and 'cannot create resource "pods" in API group ""' in line
                        ):
                            return True
                return False

            wait_for(
                named_in_the_log,
                timeout=60,
                what="the replicaset controller's forbidden error naming the verb and resource",
            )
            assert not core.list_namespaced_pod(namespace, label_selector="app=blocked").items
    finally:
        for obj in objects:
            name = obj["metadata"]["name"]
            if obj["kind"] == "ClusterRole":
                rbac.delete_cluster_role(name)
            elif obj["kind"] == "ClusterRoleBinding":
                rbac.delete_cluster_role_binding(name)
        core.delete_namespace(home)

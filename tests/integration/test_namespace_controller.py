"""The namespace controller against the real stack: what a user sees deleting a namespace."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from tests.support.crds import crd_manifest, create_established_crd
from tests.support.services import Pool, kubus_pool
from tests.support.wait import wait_for

pytestmark = pytest.mark.integration

HOLD = "example.com/hold"
CONTROLLERS = "--controllers=namespace,deployment,replicaset"
WATCHED = "--resources=v1/namespaces,v1/pods,apps/v1/replicasets,apps/v1/deployments"


@contextmanager
def pool(stack_env: dict[str, str], tmp_path: Path) -> Iterator[Pool]:
    with kubus_pool(
        stack_env, tmp_path, reconcilers=2, extra=[CONTROLLERS], watcher_args=[WATCHED]
    ) as running:
        yield running


def fresh_name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def conditions(core: client.CoreV1Api, name: str) -> dict[str, tuple[str, str, str]]:
    ns = core.read_namespace(name)
    return {c.type: (c.status, c.reason, c.message) for c in ns.status.conditions or []}


def gone(core: client.CoreV1Api, name: str) -> bool:
    try:
        core.read_namespace(name)
    except ApiException as error:
        if error.status == 404:
            return True
        raise
    return False


def widget_crd(kube: Any, group: str) -> None:
    create_established_crd(kube, crd_manifest(group, "Widget"))

    def served() -> bool:
        try:
            client.CustomObjectsApi(kube).list_cluster_custom_object(group, "v1", "widgets")
        except ApiException:
            return False
        return True

    wait_for(served, timeout=30, what=f"widgets.{group} served")


def deployment(name: str, replicas: int) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "web", "image": "registry.example/web:1"}]},
            },
        },
    }


def test_deleting_a_namespace_deletes_its_content_and_reports_a_held_object(
    kube: Any, stack_env: dict[str, str], tmp_path: Path
) -> None:
    core, apps = client.CoreV1Api(kube), client.AppsV1Api(kube)
    custom = client.CustomObjectsApi(kube)
    group = f"t{uuid.uuid4().hex[:6]}.kubus.test"
    widget_crd(kube, group)
    name = fresh_name("ns-del")
    core.create_namespace({"metadata": {"name": name}})
    with pool(stack_env, tmp_path):
        apps.create_namespaced_deployment(name, deployment("web", 3))
        core.create_namespaced_pod(
            name,
            {"metadata": {"name": "bare"}, "spec": {"containers": [{"name": "c", "image": "i"}]}},
        )
        for index in range(3):
            core.create_namespaced_config_map(name, {"metadata": {"name": f"cm-{index}"}})
            custom.create_namespaced_custom_object(
                group,
                "v1",
                name,
                "widgets",
                {"apiVersion": f"{group}/v1", "kind": "Widget", "metadata": {"name": f"w{index}"}},
            )
        core.create_namespaced_config_map(
            name, {"metadata": {"name": "held", "finalizers": [HOLD]}}
        )
        wait_for(
            lambda: len(core.list_namespaced_pod(name).items) == 4,
            timeout=60,
            what="the Deployment's 3 pods and the bare one",
        )

        core.delete_namespace(name)
        held = wait_for(
            lambda: (
                conditions(core, name).get("NamespaceFinalizersRemaining", ("",))[0] == "True"
                and conditions(core, name)
            ),
            timeout=90,
            what="NamespaceFinalizersRemaining True",
        )
        assert held["NamespaceFinalizersRemaining"] == (
            "True",
            "SomeFinalizersRemain",
            f"Some content in the namespace has finalizers remaining: {HOLD} in 1 resource "
            "instances",
        )
        assert held["NamespaceContentRemaining"] == (
            "True",
            "SomeResourcesRemain",
            "Some resources are remaining: configmaps. has 1 resource instances",
        )
        assert held["NamespaceDeletionDiscoveryFailure"] == (
            "False",
            "ResourcesDiscovered",
            "All resources successfully discovered",
        )
        assert held["NamespaceDeletionContentFailure"][:2] == ("False", "ContentDeleted")
        assert core.read_namespace(name).status.phase == "Terminating"
        # Everything else is gone: pods, the Deployment and its ReplicaSet, the widgets.
        assert core.list_namespaced_pod(name).items == []
        assert apps.list_namespaced_deployment(name).items == []
        assert apps.list_namespaced_replica_set(name).items == []
        assert custom.list_namespaced_custom_object(group, "v1", name, "widgets")["items"] == []
        (left,) = core.list_namespaced_config_map(name).items
        assert left.metadata.name == "held"
        assert left.metadata.deletion_timestamp is not None

        core.patch_namespaced_config_map("held", name, {"metadata": {"finalizers": None}})
        wait_for(lambda: gone(core, name), timeout=60, what=f"namespace {name} gone")


def test_pods_go_first_and_only_then_the_rest(
    kube: Any, stack_env: dict[str, str], tmp_path: Path
) -> None:
    core = client.CoreV1Api(kube)
    name = fresh_name("ns-order")
    core.create_namespace({"metadata": {"name": name}})
    with pool(stack_env, tmp_path):
        core.create_namespaced_pod(
            name,
            {
                "metadata": {"name": "held", "finalizers": [HOLD]},
                "spec": {"containers": [{"name": "c", "image": "i"}]},
            },
        )
        core.create_namespaced_config_map(name, {"metadata": {"name": "cm"}})
        core.delete_namespace(name)
        wait_for(
            lambda: core.read_namespaced_pod("held", name).metadata.deletion_timestamp,
            timeout=60,
            what="the held pod being deleted",
        )
        # While a pod remains, nothing else is touched; as kcm v1.36, the remaining-content
        # conditions are not reported on that path.
        seen = wait_for(
            lambda: conditions(core, name).get("NamespaceContentRemaining"),
            timeout=30,
            what="the deletion conditions",
        )
        assert seen == ("False", "ContentRemoved", "All content successfully removed")
        assert core.read_namespaced_config_map("cm", name).metadata.deletion_timestamp is None

        core.patch_namespaced_pod("held", name, {"metadata": {"finalizers": None}})
        wait_for(lambda: gone(core, name), timeout=90, what=f"namespace {name} gone")


def test_namespaces_not_being_deleted_or_already_finalized_are_left_alone(
    kube: Any, stack_env: dict[str, str], tmp_path: Path
) -> None:
    core = client.CoreV1Api(kube)
    live, finalized, foreign, control = (
        fresh_name(prefix) for prefix in ("ns-live", "ns-fin", "ns-foreign", "ns-ctl")
    )
    for each in (live, finalized, foreign, control):
        core.create_namespace({"metadata": {"name": each}})
        core.create_namespaced_config_map(each, {"metadata": {"name": "cm"}})
    # Finalized before its deletion: spec.finalizers empty, a metadata finalizer holds it.
    core.patch_namespace(finalized, {"metadata": {"finalizers": [HOLD]}})
    body = core.read_namespace(finalized)
    body.spec.finalizers = []
    core.replace_namespace_finalize(finalized, body)
    # Another deleter's spec finalizer instead of kubernetes's: upstream still deletes the
    # content, and leaves that finalizer to its owner.
    body = core.read_namespace(foreign)
    body.spec.finalizers = [HOLD]
    core.replace_namespace_finalize(foreign, body)
    with pool(stack_env, tmp_path):
        for each in (finalized, foreign, control):
            core.delete_namespace(each)
        wait_for(lambda: gone(core, control), timeout=60, what="the control namespace gone")
        wait_for(
            lambda: core.list_namespaced_config_map(foreign).items == [],
            timeout=60,
            what="the content of the namespace with a foreign finalizer deleted",
        )
        # The conditions are written after the deletion pass that emptied it.
        wait_for(
            lambda: (
                conditions(core, foreign).get("NamespaceContentRemaining", ())[:2]
                == ("False", "ContentRemoved")
            ),
            timeout=30,
            what="NamespaceContentRemaining False/ContentRemoved on the emptied namespace",
        )
        foreign_ns = core.read_namespace(foreign)
        assert foreign_ns.spec.finalizers == [HOLD]
        assert foreign_ns.status.phase == "Terminating"

        assert core.read_namespace(live).status.conditions is None
        left = {c.metadata.name for c in core.list_namespaced_config_map(live).items}
        assert left == {"cm", "kube-root-ca.crt"}  # the root CA publisher's, and the test's
        finalized_ns = core.read_namespace(finalized)
        assert finalized_ns.status.phase == "Terminating"
        assert not finalized_ns.status.conditions
        cm = core.read_namespaced_config_map("cm", finalized)
        assert cm.metadata.deletion_timestamp is None
    # Clean up what the controller rightly left.
    core.delete_namespaced_config_map("cm", finalized)
    core.patch_namespace(finalized, {"metadata": {"finalizers": None}})
    body = core.read_namespace(foreign)
    body.spec.finalizers = []
    core.replace_namespace_finalize(foreign, body)
    core.delete_namespace(live)
    for each in (finalized, foreign):
        wait_for(lambda each=each: gone(core, each), timeout=30, what=f"{each} gone")

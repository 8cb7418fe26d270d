"""The garbage collector against the real stack: what `kubectl delete --cascade=...` promises.

The pool runs the garbage collector with the Deployment and ReplicaSet controllers, the watcher
carries every resource (``--resources all``), and nothing else collects garbage on this stack
(no kube-controller-manager runs): each object that goes, goes because kubus deleted it.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from bus.subjects import partition_of
from tests.integration.test_deployment import complete, deployment, replicasets_of
from tests.support.crds import crd_manifest, create_established_crd
from tests.support.leases import member_of, settled_owners
from tests.support.services import kubus_pool
from tests.support.wait import wait_for

pytestmark = pytest.mark.integration

CONTROLLERS = "--controllers=garbagecollector,deployment,replicaset"
WATCH_ALL = ["--resources", "all"]
HOLD = "kubus.test/hold"


def gone(read: Callable[[], Any]) -> bool:
    try:
        read()
    except ApiException as error:
        if error.status == 404:
            return True
        raise
    return False


def owner_ref(obj: Any, *, block: bool | None = None, uid: str | None = None) -> dict[str, Any]:
    """An ownerReference to ``obj`` (a client model or a dict)."""
    if isinstance(obj, dict):
        api_version, kind, meta = obj["apiVersion"], obj["kind"], obj["metadata"]
        name, real_uid = meta["name"], meta["uid"]
    else:
        api_version, kind = obj.api_version, obj.kind
        name, real_uid = obj.metadata.name, obj.metadata.uid
    ref = {"apiVersion": api_version, "kind": kind, "name": name, "uid": uid or real_uid}
    if block is not None:
        ref["blockOwnerDeletion"] = block
    return ref


def config_map(
    core: client.CoreV1Api, namespace: str, name: str, *owners: dict[str, Any], **meta: Any
) -> Any:
    cm = core.create_namespaced_config_map(
        namespace,
        {"metadata": {"name": name, "ownerReferences": list(owners), **meta}},
    )
    cm.api_version, cm.kind = "v1", "ConfigMap"
    return cm


def pods_of(core: client.CoreV1Api, namespace: str, rs_names: set[str]) -> list[Any]:
    return [
        p
        for p in core.list_namespaced_pod(namespace).items
        if any(r.name in rs_names for r in p.metadata.owner_references or [])
    ]


def rolled_out(apps: client.AppsV1Api, namespace: str, name: str) -> Any:
    return wait_for(
        lambda: complete(apps, namespace, name), timeout=90, what=f"deployment {name} complete"
    )


def test_deleting_a_deployment_in_the_background_the_foreground_and_orphaning(
    kube: Any, namespace: str, stack_env: dict[str, str], tmp_path: Path
) -> None:
    apps, core = client.AppsV1Api(kube), client.CoreV1Api(kube)
    with kubus_pool(
        stack_env, tmp_path, reconcilers=2, extra=[CONTROLLERS], watcher_args=WATCH_ALL
    ):
        for name in ("bg", "fg", "orphan"):
            apps.create_namespaced_deployment(namespace, deployment(name, 2))
        for name in ("bg", "fg", "orphan"):
            rolled_out(apps, namespace, name)

        # Background: the Deployment goes at once, then its ReplicaSets, then their pods.
        (rs,) = replicasets_of(apps, namespace, "bg")
        apps.delete_namespaced_deployment("bg", namespace, propagation_policy="Background")
        wait_for(
            lambda: (
                not replicasets_of(apps, namespace, "bg")
                and not pods_of(core, namespace, {rs.metadata.name})
            ),
            timeout=60,
            what="the ReplicaSet and pods of a Deployment deleted in the background to go",
        )

        # Foreground: the Deployment waits, with its finalizer, for every dependent that
        # blocks it; one that does not block it does not hold it up.
        fg = apps.read_namespaced_deployment("fg", namespace)
        fg.api_version, fg.kind = "apps/v1", "Deployment"
        (fg_rs,) = replicasets_of(apps, namespace, "fg")
        config_map(core, namespace, "fg-blocker", owner_ref(fg, block=True), finalizers=[HOLD])
        config_map(core, namespace, "fg-bystander", owner_ref(fg, block=False), finalizers=[HOLD])
        apps.delete_namespaced_deployment("fg", namespace, propagation_policy="Foreground")
        held = apps.read_namespaced_deployment("fg", namespace)
        assert held.metadata.deletion_timestamp is not None
        assert "foregroundDeletion" in (held.metadata.finalizers or [])
        wait_for(
            lambda: (
                not replicasets_of(apps, namespace, "fg")
                and not pods_of(core, namespace, {fg_rs.metadata.name})
                and core.read_namespaced_config_map(
                    "fg-blocker", namespace
                ).metadata.deletion_timestamp
            ),
            timeout=60,
            what="the foreground-deleted Deployment's ReplicaSet and pods to go",
        )
        # Only the blocker (held by a finalizer of the test's) is left, and it blocks.
        still = apps.read_namespaced_deployment("fg", namespace)
        assert "foregroundDeletion" in (still.metadata.finalizers or [])
        core.patch_namespaced_config_map(
            "fg-blocker", namespace, {"metadata": {"finalizers": None}}
        )
        wait_for(
            lambda: gone(lambda: apps.read_namespaced_deployment("fg", namespace)),
            timeout=60,
            what="the Deployment to go once its blocking dependent is gone",
        )
        bystander = core.read_namespaced_config_map("fg-bystander", namespace)
        assert bystander.metadata.deletion_timestamp is not None  # deleted, held by its finalizer
        core.patch_namespaced_config_map(
            "fg-bystander", namespace, {"metadata": {"finalizers": None}}
        )

        # Orphan: the ReplicaSets stay, without their ownerReference, and keep their pods.
        (orphan_rs,) = replicasets_of(apps, namespace, "orphan")
        apps.delete_namespaced_deployment("orphan", namespace, propagation_policy="Orphan")
        wait_for(
            lambda: gone(lambda: apps.read_namespaced_deployment("orphan", namespace)),
            timeout=60,
            what="the orphaning Deployment to go",
        )
        left = apps.read_namespaced_replica_set(orphan_rs.metadata.name, namespace)
        assert left.metadata.uid == orphan_rs.metadata.uid
        assert not left.metadata.owner_references
        assert left.metadata.deletion_timestamp is None
        assert len(pods_of(core, namespace, {left.metadata.name})) == 2


def _namespace_owned_apart(owners: dict[int, str], away_from: str, run: str) -> str:
    """A namespace name whose partition another process owns than ``away_from``'s."""
    for index in range(1000):
        name = f"gc-{run}-{index}"
        if owners[partition_of(name, name)] != owners[partition_of(None, away_from)]:
            return name
    raise AssertionError("no namespace name lands in another process's partition")


def test_cluster_scoped_and_custom_owners_and_a_wrong_uid_across_processes(
    kube: Any, stack_env: dict[str, str], tmp_path: Path
) -> None:
    core = client.CoreV1Api(kube)
    rbac = client.RbacAuthorizationV1Api(kube)
    extensions = client.ApiextensionsV1Api(kube)
    custom = client.CustomObjectsApi(kube)
    run = uuid.uuid4().hex[:5]
    group = f"gc{run}.kubus.test"
    role_name = f"gc-owner-{run}"
    namespace = ""
    create_established_crd(kube, crd_manifest(group, "Gadget"))
    try:
        with kubus_pool(
            stack_env, tmp_path, reconcilers=3, extra=[CONTROLLERS], watcher_args=WATCH_ALL
        ) as pool:
            owners = settled_owners(stack_env, pool)
            namespace = _namespace_owned_apart(owners, role_name, run)
            core.create_namespace({"metadata": {"name": namespace}})
            role = rbac.create_cluster_role({"metadata": {"name": role_name}})
            role.api_version, role.kind = "rbac.authorization.k8s.io/v1", "ClusterRole"
            gadget = custom.create_namespaced_custom_object(
                group,
                "v1",
                namespace,
                "gadgets",
                {"apiVersion": f"{group}/v1", "kind": "Gadget", "metadata": {"name": "g1"}},
            )
            keeper = config_map(core, namespace, "keeper")
            config_map(core, namespace, "of-role", owner_ref(role))
            config_map(core, namespace, "of-gadget", owner_ref(gadget))
            config_map(core, namespace, "right-uid", owner_ref(keeper))
            config_map(core, namespace, "wrong-uid", owner_ref(keeper, uid=str(uuid.uuid4())))

            def read(name: str) -> Callable[[], Any]:
                return lambda: core.read_namespaced_config_map(name, namespace)

            wait_for(
                lambda: gone(read("wrong-uid")),
                timeout=60,
                what="the dependent whose owner has another uid to be collected",
            )
            rbac.delete_cluster_role(role_name)
            wait_for(
                lambda: gone(read("of-role")),
                timeout=60,
                what="the ConfigMap of a deleted ClusterRole (another process's) to go",
            )
            custom.delete_namespaced_custom_object(group, "v1", namespace, "gadgets", "g1")
            wait_for(
                lambda: gone(read("of-gadget")),
                timeout=60,
                what="the ConfigMap of a deleted custom resource to go",
            )
            assert core.read_namespaced_config_map("right-uid", namespace).metadata.uid
            assert core.read_namespaced_config_map("keeper", namespace).metadata.uid
    finally:
        if gone(lambda: rbac.read_cluster_role(role_name)) is False:
            rbac.delete_cluster_role(role_name)
        extensions.delete_custom_resource_definition(f"gadgets.{group}")
        if namespace:
            core.delete_namespace(namespace)


def test_a_cluster_scoped_owner_deleted_in_the_foreground_and_orphaning_across_processes(
    kube: Any, stack_env: dict[str, str], tmp_path: Path
) -> None:
    core = client.CoreV1Api(kube)
    rbac = client.RbacAuthorizationV1Api(kube)
    run = uuid.uuid4().hex[:5]
    fg_name, orphan_name = f"gc-fg-{run}", f"gc-orphan-{run}"
    namespaces: list[str] = []
    try:
        with kubus_pool(
            stack_env, tmp_path, reconcilers=3, extra=[CONTROLLERS], watcher_args=WATCH_ALL
        ) as pool:
            owners = settled_owners(stack_env, pool)
            namespaces = [_namespace_owned_apart(owners, fg_name, run)]
            namespaces.append(_namespace_owned_apart(owners, orphan_name, run + "o"))
            for namespace in namespaces:
                core.create_namespace({"metadata": {"name": namespace}})
            fg = rbac.create_cluster_role({"metadata": {"name": fg_name}})
            orphaner = rbac.create_cluster_role({"metadata": {"name": orphan_name}})
            for role in (fg, orphaner):
                role.api_version, role.kind = "rbac.authorization.k8s.io/v1", "ClusterRole"
            fg_ns, orphan_ns = namespaces
            config_map(core, fg_ns, "blocker", owner_ref(fg, block=True), finalizers=[HOLD])
            config_map(core, orphan_ns, "orphaned", owner_ref(orphaner, block=True))

            rbac.delete_cluster_role(orphan_name, propagation_policy="Orphan")
            wait_for(
                lambda: gone(lambda: rbac.read_cluster_role(orphan_name)),
                timeout=60,
                what="the orphaning ClusterRole to go",
            )
            orphaned = core.read_namespaced_config_map("orphaned", orphan_ns)
            assert not orphaned.metadata.owner_references
            assert orphaned.metadata.deletion_timestamp is None

            rbac.delete_cluster_role(fg_name, propagation_policy="Foreground")
            wait_for(
                lambda: (
                    core.read_namespaced_config_map("blocker", fg_ns).metadata.deletion_timestamp
                ),
                timeout=60,
                what="the blocking dependent in another process's partition to be deleted",
            )
            held = rbac.read_cluster_role(fg_name)
            assert "foregroundDeletion" in (held.metadata.finalizers or [])
            core.patch_namespaced_config_map("blocker", fg_ns, {"metadata": {"finalizers": None}})
            wait_for(
                lambda: gone(lambda: rbac.read_cluster_role(fg_name)),
                timeout=60,
                what="the ClusterRole to go once its dependent elsewhere is gone",
            )
    finally:
        for name in (fg_name, orphan_name):
            if not gone(lambda name=name: rbac.read_cluster_role(name)):
                rbac.delete_cluster_role(name)
        for namespace in namespaces:
            core.delete_namespace(namespace)


def test_garbage_left_while_processes_were_down_is_collected_and_nothing_owned_is(
    kube: Any, stack_env: dict[str, str], tmp_path: Path
) -> None:
    core = client.CoreV1Api(kube)
    run = uuid.uuid4().hex[:5]
    namespaces = [f"gc-rs-{run}-{i}" for i in range(6)]
    for namespace in namespaces:
        core.create_namespace({"metadata": {"name": namespace}})

    def family(namespace: str, tag: str) -> tuple[Any, Any]:
        """An owner with a dependent (to collect), and a kept owner with one (to keep)."""
        owner = config_map(core, namespace, f"owner-{tag}")
        kept = config_map(core, namespace, f"kept-{tag}")
        config_map(core, namespace, f"dep-{tag}", owner_ref(owner, block=True))
        config_map(core, namespace, f"keeps-{tag}", owner_ref(kept))
        return owner, kept

    def collected(tag: str, where: list[str]) -> bool:
        return all(
            gone(lambda ns=ns: core.read_namespaced_config_map(f"dep-{tag}", ns)) for ns in where
        )

    try:
        with kubus_pool(
            stack_env, tmp_path, reconcilers=3, extra=[CONTROLLERS], watcher_args=WATCH_ALL
        ) as pool:
            for namespace in namespaces:
                family(namespace, "restart")
            # Every reconciler stops; owners are deleted meanwhile; they start again.
            for process in pool.reconcilers:
                process.stop()
            for namespace in namespaces:
                core.delete_namespaced_config_map("owner-restart", namespace)
            for process in pool.reconcilers:
                process.start(wait_ready=False)
            for process in pool.reconcilers:
                wait_for(process.ready, timeout=60, what=f"reconciler ready ({process.log})")
            wait_for(
                lambda: collected("restart", namespaces),
                timeout=60,
                what="dependents of owners deleted while every reconciler was down to go",
            )

            # kill -9 of one of three; the owners of what it held go while nobody holds it.
            owners = settled_owners(stack_env, pool)
            by_member = {member_of(process): process for process in pool.reconcilers}
            held_by = {
                member: [ns for ns in namespaces if owners[partition_of(ns, ns)] == member]
                for member in by_member
            }
            victim_member = max(held_by, key=lambda member: len(held_by[member]))
            victim, held = by_member[victim_member], held_by[victim_member]
            assert held, "the killed process held none of the test's namespaces"
            for namespace in namespaces:
                family(namespace, "kill")
            victim.kill()
            for namespace in held:
                core.delete_namespaced_config_map("owner-kill", namespace)
            wait_for(
                lambda: collected("kill", held),
                timeout=90,
                what="dependents in a killed process's partitions to be collected by the others",
            )
            for namespace in namespaces:
                for tag in ("restart", "kill"):
                    assert core.read_namespaced_config_map(f"keeps-{tag}", namespace).metadata.uid
                if namespace not in held:
                    assert core.read_namespaced_config_map("dep-kill", namespace).metadata.uid
    finally:
        for namespace in namespaces:
            core.delete_namespace(namespace)


def test_a_reference_to_an_owner_in_another_namespace_is_dangling_and_reported(
    kube: Any, stack_env: dict[str, str], tmp_path: Path
) -> None:
    core = client.CoreV1Api(kube)
    run = uuid.uuid4().hex[:5]
    home, away = f"gc-home-{run}", f"gc-away-{run}"
    for namespace in (home, away):
        core.create_namespace({"metadata": {"name": namespace}})
    try:
        # One process: it caches both namespaces, so it sees where the owner really is.
        with kubus_pool(
            stack_env, tmp_path, reconcilers=1, extra=[CONTROLLERS], watcher_args=WATCH_ALL
        ):
            owner = config_map(core, home, "owner")
            config_map(core, away, "astray", owner_ref(owner))
            wait_for(
                lambda: gone(lambda: core.read_namespaced_config_map("astray", away)),
                timeout=60,
                what="a dependent whose owner is in another namespace to be collected",
            )

            def reported() -> list[Any]:
                return [
                    e
                    for e in core.list_namespaced_event(away).items
                    if e.reason == "OwnerRefInvalidNamespace" and e.involved_object.name == "astray"
                ]

            (event,) = wait_for(reported, timeout=30, what="the OwnerRefInvalidNamespace event")
            assert event.type == "Warning"
            assert event.source.component == "garbage-collector-controller"
            assert event.message == (
                f"ownerRef [v1/ConfigMap, namespace: {away}, name: owner, "
                f'uid: {owner.metadata.uid}] does not exist in namespace "{away}"'
            )
            assert core.read_namespaced_config_map("owner", home).metadata.uid
    finally:
        for namespace in (home, away):
            core.delete_namespace(namespace)

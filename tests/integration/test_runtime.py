"""The runtime beyond partitions: cluster-scoped caches, global controllers, dead letters and
supervised partition runners, each in real reconciler processes on the real stack."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import time
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

import nats
import pytest
from kubernetes import client

from bus.layout import BusLayout
from bus.subjects import ObjectRef, ResourceType, partition_of
from tests.integration.test_deployment import complete, deployment
from tests.support.controllers import (
    DIGEST_ANNOTATION,
    EVERY_LABEL,
    GLOBAL_LABEL,
    KIND_ANNOTATION,
    ZONE_ANNOTATION,
    ZONE_LABEL,
    EveryResourceStamp,
    GlobalDigest,
    NodeZoneMirror,
    digest,
    entry_points_for_test_controllers,
)
from tests.support.crds import crd_manifest, create_established_crd
from tests.support.leases import member_of, settled_owners
from tests.support.services import ServiceProcess, kubus_pool
from tests.support.system import create_namespace
from tests.support.wait import wait_for

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
LEASE_DURATION = 10.0


def _controllers_env(tmp_path: Path) -> dict[str, str]:
    extra = entry_points_for_test_controllers(tmp_path / "entry-points")
    return {"PYTHONPATH": os.pathsep.join([str(REPO), str(extra)])}


def _audit(path: Path) -> dict[tuple[str, str], list[tuple[float, float, str]]]:
    spans: dict[tuple[str, str], list[tuple[float, float, str]]] = defaultdict(list)
    for line in path.read_text().splitlines():
        record = json.loads(line)
        spans[(record["controller"], record["key"])].append(
            (record["start"], record["end"], record["member"])
        )
    return spans


def _overlaps(entries: list[tuple[float, float, str]]) -> list[tuple[str, str, float]]:
    entries = sorted(entries)
    found = []
    for (_s, end, member), (start, _e, other) in itertools.pairwise(entries):
        if other != member and start < end:
            found.append((member, other, end - start))
    return found


def _cached(process: ServiceProcess, resource: str) -> float:
    return process.metric("kubus_reconciler_cached_objects", cache="shared", resource=resource)


def test_every_process_caches_all_nodes_and_a_node_change_reaches_pods_in_every_partition(
    kube: Any, stack_env: dict[str, str], tmp_path: Path
) -> None:
    core = client.CoreV1Api(kube)
    run = uuid.uuid4().hex[:5]
    namespaces: list[str] = []
    node = core.list_node().items[0].metadata.name
    audit = tmp_path / "audit.jsonl"
    try:
        with kubus_pool(
            stack_env,
            tmp_path,
            reconcilers=3,
            env=_controllers_env(tmp_path),
            extra=[f"--controllers={NodeZoneMirror.name}", f"--reconcile-audit-log={audit}"],
        ) as pool:
            # Eight namespaces of which one is served by another process than the first's.
            owners = settled_owners(stack_env, pool)
            names = (f"cs-{run}-{i}" for i in itertools.count())
            namespaces.extend(itertools.islice(names, 7))
            first_owner = owners[partition_of(namespaces[0], "")]
            namespaces.append(next(n for n in names if owners[partition_of(n, "")] != first_owner))
            for namespace in namespaces:
                create_namespace(core, namespace)
                for index in range(2):
                    core.create_namespaced_pod(
                        namespace,
                        {
                            "metadata": {"name": f"p{index}"},
                            "spec": {
                                "nodeName": node,
                                "containers": [{"name": "c", "image": "registry.example/c:1"}],
                            },
                        },
                    )
            nodes = len(core.list_node().items)

            def caches_settled() -> bool:
                pods = len(core.list_pod_for_all_namespaces().items)
                node_counts = [_cached(p, "v1/nodes") for p in pool.reconcilers]
                pod_counts = [_cached(p, "v1/pods") for p in pool.reconcilers]
                # Pods partitioned: no process holds them all once the members have shared
                # the partitions out (a process may hold every partition until its peers join).
                return (
                    node_counts == [nodes] * 3
                    and sum(pod_counts) == pods
                    and max(pod_counts) < sum(pod_counts)
                )

            wait_for(caches_settled, timeout=60, what="3 nodes in every cache, pods shared out")

            for zone in ("a", "b"):
                core.patch_node(node, {"metadata": {"labels": {ZONE_LABEL: zone}}})

                def mirrored(zone: str = zone) -> bool:
                    return all(
                        (pod.metadata.annotations or {}).get(ZONE_ANNOTATION) == zone
                        for ns in namespaces
                        for pod in core.list_namespaced_pod(ns).items
                    )

                wait_for(mirrored, timeout=60, what=f"zone {zone} on all 16 pods")
    finally:
        core.patch_node(node, {"metadata": {"labels": {ZONE_LABEL: None}}})
        for namespace in namespaces:
            core.delete_namespace(namespace)
    spans = _audit(audit)
    reconcilers = {m for entries in spans.values() for _s, _e, m in entries}
    assert len(reconcilers) >= 2, "pods of several partitions were reconciled by their owners"
    assert all(not _overlaps(entries) for entries in spans.values())


def test_a_global_controller_runs_on_one_leader_and_moves_after_kill_9(
    kube: Any, stack_env: dict[str, str], tmp_path: Path
) -> None:
    core = client.CoreV1Api(kube)
    run = uuid.uuid4().hex[:5]
    namespaces = [f"gl-{run}-{i}" for i in range(3)]
    for namespace in namespaces:
        create_namespace(core, namespace)
    names = [(ns, f"cm-{j}") for ns in namespaces for j in range(2)]
    audit = tmp_path / "audit.jsonl"
    leader_metric = "kubus_reconciler_leader"

    def leaders(pool: Any) -> list[ServiceProcess]:
        return [
            p
            for p in pool.reconcilers
            if p.running and p.metric(leader_metric, controller=GlobalDigest.name) == 1
        ]

    def digests_match() -> bool:
        for namespace, name in names:
            cm = core.read_namespaced_config_map(name, namespace)
            if (cm.metadata.annotations or {}).get(DIGEST_ANNOTATION) != digest(cm.data or {}):
                return False
        return True

    try:
        with kubus_pool(
            stack_env,
            tmp_path,
            reconcilers=3,
            env=_controllers_env(tmp_path),
            extra=[f"--controllers={GlobalDigest.name}", f"--reconcile-audit-log={audit}"],
        ) as pool:
            for namespace, name in names:
                core.create_namespaced_config_map(
                    namespace,
                    {
                        "metadata": {"name": name, "labels": {GLOBAL_LABEL: "yes"}},
                        "data": {"v": "1"},
                    },
                )
            wait_for(digests_match, timeout=60, what="digests written by the leader")
            (leader,) = wait_for(
                lambda: (found := leaders(pool)) and len(found) == 1 and found,
                timeout=30,
                what="exactly one leader",
            )
            first = member_of(leader)
            leader.kill()
            killed = time.monotonic()
            for namespace, name in names:  # changed while no process leads
                core.patch_namespaced_config_map(name, namespace, {"data": {"v": "2"}})
            (successor,) = wait_for(
                lambda: (found := leaders(pool)) and len(found) == 1 and found,
                timeout=60,
                what="a new leader",
            )
            took = time.monotonic() - killed
            wait_for(digests_match, timeout=60, what="the changes made meanwhile reconciled")
            assert member_of(successor) != first
    finally:
        for namespace in namespaces:
            core.delete_namespace(namespace)
    print(f"new leader after {took:.1f}s")
    assert took < LEASE_DURATION + 2 * 2.0 + 1, f"took {took:.1f}s"
    spans = _audit(audit)
    every = [entry for entries in spans.values() for entry in entries]
    assert {m for _s, _e, m in every} >= {first}
    assert len({m for _s, _e, m in every}) == 2, "the old leader, then its successor"
    assert _overlaps(every) == [], "two processes reconciled the global controller at once"


def _publish(
    stack_env: dict[str, str], subject: str, payload: bytes, headers: dict[str, str]
) -> None:
    async def send() -> None:
        connection = await nats.connect(stack_env["NATS_URL"])
        try:
            await connection.jetstream().publish(subject, payload, headers=headers)
        finally:
            await connection.close()

    asyncio.run(send())


def _dead_letters(stack_env: dict[str, str], layout: BusLayout) -> list[Any]:
    async def read() -> list[Any]:
        connection = await nats.connect(stack_env["NATS_URL"])
        try:
            js = connection.jetstream()
            info = await js.stream_info(layout.dead_letter_stream)
            return [
                await js.get_msg(layout.dead_letter_stream, seq)
                for seq in range(info.state.first_seq, info.state.last_seq + 1)
                if info.state.messages
            ]
        finally:
            await connection.close()

    return asyncio.run(read())


def test_a_poison_message_goes_to_the_dead_letter_stream_and_the_partition_goes_on(
    kube: Any, stack_env: dict[str, str], tmp_path: Path
) -> None:
    apps = client.AppsV1Api(kube)
    core = client.CoreV1Api(kube)
    namespace = f"dl-{uuid.uuid4().hex[:5]}"
    create_namespace(core, namespace)
    replicasets = ResourceType("apps", "v1", "replicasets")
    try:
        with kubus_pool(stack_env, tmp_path, reconcilers=1) as pool:
            layout = BusLayout(prefix=pool.prefix)
            not_json = layout.subject(ObjectRef(replicasets, namespace, "not-json"))
            no_headers = layout.subject(ObjectRef(replicasets, namespace, "no-headers"))
            _publish(
                stack_env,
                not_json,
                b"{this is not json",
                {"Kubus-Event": "MODIFIED", "Kubus-Resource-Version": "1", "Kubus-Uid": "x"},
            )
            _publish(stack_env, no_headers, b"{}", {})
            (process,) = pool.reconcilers
            wait_for(
                lambda: process.metric("kubus_reconciler_dead_letters_total") == 2,
                timeout=60,
                what="both poison messages dead-lettered",
            )
            letters = _dead_letters(stack_env, layout)
            subjects = sorted(m.headers["Kubus-Dead-Letter-Subject"] for m in letters)
            assert subjects == sorted([not_json, no_headers])
            by_subject = {m.headers["Kubus-Dead-Letter-Subject"]: m for m in letters}
            poisoned = by_subject[not_json]
            assert poisoned.data == b"{this is not json"
            assert "DecodeError" in poisoned.headers["Kubus-Dead-Letter-Error"]
            assert poisoned.headers["Kubus-Dead-Letter-Deliveries"] == "5"
            log = (tmp_path / "reconciler-0.log").read_text()
            assert f"{namespace}/not-json" in log, "the log names the object's key"
            apps.create_namespaced_deployment(namespace, deployment("after", 2))
            wait_for(
                lambda: complete(apps, namespace, "after"),
                timeout=60,
                what="the partition reconciling after the poison",
            )
            assert process.ready()
    finally:
        core.delete_namespace(namespace)


def test_a_failed_partition_runner_is_restarted_and_the_process_is_not_ready_meanwhile(
    kube: Any, stack_env: dict[str, str], tmp_path: Path
) -> None:
    apps = client.AppsV1Api(kube)
    core = client.CoreV1Api(kube)
    namespace = f"sv-{uuid.uuid4().hex[:5]}"
    create_namespace(core, namespace)
    partition = partition_of(namespace, "")
    try:
        with kubus_pool(stack_env, tmp_path, reconcilers=1) as pool:
            (process,) = pool.reconcilers
            layout = BusLayout(prefix=pool.prefix)

            async def delete_consumer() -> None:
                connection = await nats.connect(stack_env["NATS_URL"])
                try:
                    await connection.jetstream().delete_consumer(
                        layout.object_stream, f"default-p{partition:02d}"
                    )
                finally:
                    await connection.close()

            # What NATS losing a consumer does to a runner (a restart without its store, an
            # operator's mistake): its next fetch or check fails.
            asyncio.run(delete_consumer())
            wait_for(lambda: not process.ready(), timeout=30, what="not ready", interval=0.02)
            wait_for(
                lambda: (
                    process.metric(
                        "kubus_reconciler_runner_restarts_total", runner=f"partition {partition}"
                    )
                    >= 1
                ),
                timeout=60,
                what="the runner restarted",
            )
            wait_for(process.ready, timeout=60, what="ready again")
            apps.create_namespaced_deployment(namespace, deployment("resumed", 2))
            wait_for(
                lambda: complete(apps, namespace, "resumed"),
                timeout=60,
                what="work resumed in the restarted partition",
            )
    finally:
        core.delete_namespace(namespace)


def test_a_controller_reading_every_resource_gets_crd_objects_and_cluster_scoped_ones(
    kube: Any, stack_env: dict[str, str], tmp_path: Path
) -> None:
    core = client.CoreV1Api(kube)
    rbac = client.RbacAuthorizationV1Api(kube)
    extensions = client.ApiextensionsV1Api(kube)
    custom = client.CustomObjectsApi(kube)
    run = uuid.uuid4().hex[:5]
    group = f"t{run}.kubus.test"
    namespace = f"ev-{run}"
    create_namespace(core, namespace)
    create_established_crd(kube, crd_manifest(group, "Gadget"))
    labels = {EVERY_LABEL: "yes"}
    try:
        with kubus_pool(
            stack_env,
            tmp_path,
            reconcilers=2,
            env=_controllers_env(tmp_path),
            extra=[f"--controllers={EveryResourceStamp.name}"],
            watcher_args=["--resources=all,-v1/events,-events.k8s.io/v1/events"],
        ):
            custom.create_namespaced_custom_object(
                group,
                "v1",
                namespace,
                "gadgets",
                {
                    "apiVersion": f"{group}/v1",
                    "kind": "Gadget",
                    "metadata": {"name": "g1", "labels": labels},
                },
            )
            core.create_namespaced_config_map(
                namespace, {"metadata": {"name": "cm1", "labels": labels}}
            )
            rbac.create_cluster_role({"metadata": {"name": f"every-{run}", "labels": labels}})

            def stamped() -> list[str]:
                found = [
                    (custom.get_namespaced_custom_object(group, "v1", namespace, "gadgets", "g1"))[
                        "metadata"
                    ].get("annotations", {}),
                    core.read_namespaced_config_map("cm1", namespace).metadata.annotations or {},
                    rbac.read_cluster_role(f"every-{run}").metadata.annotations or {},
                ]
                return [a.get(KIND_ANNOTATION, "") for a in found]

            result = wait_for(
                lambda: all(stamped()) and stamped(),
                timeout=60,
                what="a CR, a ConfigMap and a ClusterRole stamped",
            )
            assert result == [
                f"{group}/v1/gadgets",
                "v1/configmaps",
                "rbac.authorization.k8s.io/v1/clusterroles",
            ]
    finally:
        rbac.delete_cluster_role(f"every-{run}")
        extensions.delete_custom_resource_definition(f"gadgets.{group}")
        core.delete_namespace(namespace)

"""The DaemonSet controller against the real stack (apiserver, kube-scheduler, kwok nodes):
what a user sees of a DaemonSet's pods, status, revisions and events as nodes come, go, and
change their labels and taints; rolling updates with maxUnavailable and with maxSurge;
OnDelete; and a pool of three processes losing one to kill -9 mid-rollout.

Scenarios from upstream's test/integration/daemonset. Extra nodes are kwok nodes (the dev
stack's annotation makes kwok run them), named per test and deleted at its end."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from tests.integration.test_partition_shards import overlaps, reconciles
from tests.support.leases import member_of
from tests.support.services import kubus_pool
from tests.support.system import create_namespace
from tests.support.wait import wait_for

pytestmark = pytest.mark.integration

# The pod GC deletes the pods of a node that is gone (upstream leaves that to it as well).
CONTROLLERS = [
    "--controllers=daemonset,podgc",
    "--pod-gc-quarantine-time=0s",
    "--pod-gc-check-period=1s",
]
WATCHED = "--resources=apps/v1/daemonsets,apps/v1/controllerrevisions,v1/pods,v1/nodes"
FAKE_NODE_ANNOTATION = "kwok.x-k8s.io/node"


def daemonset(
    name: str,
    *,
    image: str = "registry.example/agent:1",
    node_selector: dict[str, str] | None = None,
    tolerations: list[dict[str, Any]] | None = None,
    strategy: dict[str, Any] | None = None,
) -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": [{"name": "agent", "image": image}]}
    if node_selector:
        spec["nodeSelector"] = node_selector
    if tolerations:
        spec["tolerations"] = tolerations
    return {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {"name": name},
        "spec": {
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": spec},
            "updateStrategy": strategy or {"type": "RollingUpdate"},
        },
    }


@pytest.fixture
def nodes(kube: Any) -> Iterator[Any]:
    """A maker of extra kwok nodes; the nodes are deleted at the end of the test."""
    core = client.CoreV1Api(kube)
    made: list[str] = []

    def make(name: str, *, labels: dict[str, str] | None = None, taints: Any = None) -> str:
        capacity = {"cpu": "1000", "memory": "4Ti", "pods": "1000"}
        core.create_node(
            {
                "metadata": {
                    "name": name,
                    "annotations": {FAKE_NODE_ANNOTATION: "fake"},
                    "labels": {"type": "kwok", "kubernetes.io/hostname": name, **(labels or {})},
                },
                "spec": {"taints": taints or []},
                "status": {"capacity": capacity, "allocatable": capacity},
            }
        )
        made.append(name)
        wait_for(lambda: ready(core.read_node(name)), timeout=60, what=f"node {name} Ready")
        return name

    yield make
    for name in made:
        try:
            core.delete_node(name)
        except ApiException as error:
            if error.status != 404:
                raise


def ready(node: Any) -> bool:
    return any(c.type == "Ready" and c.status == "True" for c in node.status.conditions or [])


def untainted_nodes(core: client.CoreV1Api) -> set[str]:
    return {n.metadata.name for n in core.list_node().items if not n.spec.taints}


def daemon_pods(core: client.CoreV1Api, namespace: str, name: str) -> list[Any]:
    return [
        pod
        for pod in core.list_namespaced_pod(namespace).items
        if any(ref.controller and ref.name == name for ref in pod.metadata.owner_references or [])
        and pod.metadata.deletion_timestamp is None
    ]


def nodes_with_pods(core: client.CoreV1Api, namespace: str, name: str) -> Counter[str]:
    return Counter(p.spec.node_name or "" for p in daemon_pods(core, namespace, name))


def on_exactly(core: client.CoreV1Api, namespace: str, name: str, wanted: set[str]) -> bool:
    """One running, bound pod on each wanted node and nowhere else; status saying so."""
    pods = daemon_pods(core, namespace, name)
    placed = Counter(p.spec.node_name or "" for p in pods)
    if placed != Counter(dict.fromkeys(wanted, 1)):
        return False
    if not all(p.status.phase == "Running" for p in pods):
        return False
    ds = client.AppsV1Api(core.api_client).read_namespaced_daemon_set(name, namespace)
    status = ds.status
    return bool(
        status.desired_number_scheduled == len(wanted)
        and status.current_number_scheduled == len(wanted)
        and (status.number_ready or 0) == len(wanted)
        and (status.number_available or 0) == len(wanted)
        and (status.updated_number_scheduled or 0) == len(wanted)
        and (status.number_misscheduled or 0) == 0
        and (status.number_unavailable or 0) == 0
        and status.observed_generation == ds.metadata.generation
    )


def events_of(core: client.CoreV1Api, namespace: str, name: str) -> list[Any]:
    return [
        e
        for e in core.list_namespaced_event(namespace).items
        if e.involved_object.kind == "DaemonSet" and e.involved_object.name == name
    ]


def revisions(apps: client.AppsV1Api, namespace: str, name: str) -> list[Any]:
    return sorted(
        (
            r
            for r in apps.list_namespaced_controller_revision(namespace).items
            if any(ref.controller and ref.name == name for ref in r.metadata.owner_references or [])
        ),
        key=lambda r: r.revision,
    )


def rolled_out(apps: client.AppsV1Api, namespace: str, name: str, wanted: set[str]) -> bool:
    """Every pod from the newest revision, one per wanted node."""
    core = client.CoreV1Api(apps.api_client)
    history = revisions(apps, namespace, name)
    if not history or not on_exactly(core, namespace, name, wanted):
        return False
    newest = history[-1].metadata.labels["controller-revision-hash"]
    return all(
        p.metadata.labels.get("controller-revision-hash") == newest
        for p in daemon_pods(core, namespace, name)
    )


def test_one_pod_per_node_following_nodes_labels_taints_and_failures(
    kube: Any, namespace: str, stack_env: dict[str, str], tmp_path: Path, nodes: Any
) -> None:
    core = client.CoreV1Api(kube)
    apps = client.AppsV1Api(kube)
    run = uuid.uuid4().hex[:5]
    label = f"ds-{run}"
    with kubus_pool(stack_env, tmp_path, extra=CONTROLLERS, watcher_args=[WATCHED]):
        apps.create_namespaced_daemon_set(namespace, daemonset("every"))
        apps.create_namespaced_daemon_set(
            namespace, daemonset("picky", node_selector={label: "yes"})
        )
        everywhere = untainted_nodes(core)
        wait_for(
            lambda: on_exactly(core, namespace, "every", everywhere),
            timeout=90,
            what=f"one running pod on each of {sorted(everywhere)}",
        )
        pod = daemon_pods(core, namespace, "every")[0]
        terms = pod.spec.affinity.node_affinity.required_during_scheduling_ignored_during_execution
        (field,) = terms.node_selector_terms[0].match_fields
        assert (field.key, field.operator, field.values) == (
            "metadata.name",
            "In",
            [pod.spec.node_name],
        )
        keys = {t.key for t in pod.spec.tolerations}
        assert "node.kubernetes.io/unreachable" in keys and "node.kubernetes.io/not-ready" in keys
        (ref,) = pod.metadata.owner_references
        assert (ref.kind, ref.name, ref.controller) == ("DaemonSet", "every", True)
        (revision,) = revisions(apps, namespace, "every")
        assert (
            pod.metadata.labels["controller-revision-hash"]
            == (revision.metadata.labels["controller-revision-hash"])
        )
        assert revision.metadata.name == f"every-{pod.metadata.labels['controller-revision-hash']}"
        assert revision.data["spec"]["template"]["$patch"] == "replace"
        # The node selector matches no node yet.
        wait_for(
            lambda: apps.read_namespaced_daemon_set("picky", namespace).status.observed_generation,
            timeout=30,
            what="the picky DaemonSet's status",
        )
        assert (
            apps.read_namespaced_daemon_set("picky", namespace).status.desired_number_scheduled == 0
        )
        assert daemon_pods(core, namespace, "picky") == []

        # A labelled node gets the picky pod; unlabelled, it loses it.
        target = sorted(everywhere)[0]
        core.patch_node(target, {"metadata": {"labels": {label: "yes"}}})
        try:
            wait_for(
                lambda: on_exactly(core, namespace, "picky", {target}),
                timeout=60,
                what=f"the picky pod on {target}",
            )
        finally:
            core.patch_node(target, {"metadata": {"labels": {label: None}}})
        wait_for(
            lambda: on_exactly(core, namespace, "picky", set()),
            timeout=60,
            what="the picky pod gone with the label",
        )

        # A new node gets a pod; a tainted one none, unless tolerated; a removed one's goes.
        added = nodes(f"ds-{run}-new")
        tainted = nodes(
            f"ds-{run}-tainted",
            taints=[{"key": "dedicated", "value": run, "effect": "NoSchedule"}],
        )
        wait_for(
            lambda: on_exactly(core, namespace, "every", everywhere | {added}),
            timeout=60,
            what="a pod on the new node, none on the tainted one",
        )
        toleration = {"key": "dedicated", "operator": "Equal", "value": run}
        apps.create_namespaced_daemon_set(
            namespace, daemonset("tolerant", tolerations=[toleration])
        )
        wait_for(
            lambda: on_exactly(core, namespace, "tolerant", everywhere | {added, tainted}),
            timeout=90,
            what="the tolerant DaemonSet on the tainted node too",
        )
        core.delete_node(added)
        wait_for(
            lambda: on_exactly(core, namespace, "every", everywhere),
            timeout=90,
            what="the removed node's pod gone",
        )
        # Tainting a node with NoExecute evicts the daemon pod that does not tolerate it.
        core.patch_node(
            tainted,
            {"spec": {"taints": [{"key": "dedicated", "value": run, "effect": "NoExecute"}]}},
        )
        core.patch_node(target, {"spec": {"taints": [{"key": label, "effect": "NoExecute"}]}})
        try:
            wait_for(
                lambda: (
                    nodes_with_pods(core, namespace, "every").get(target, 0) == 0
                    and nodes_with_pods(core, namespace, "tolerant").get(target, 0) == 0
                    and nodes_with_pods(core, namespace, "tolerant").get(tainted, 0) == 1
                ),
                timeout=60,
                what=f"the pods on {target} evicted by the NoExecute taint",
            )
        finally:
            core.patch_node(target, {"spec": {"taints": None}})
        wait_for(
            lambda: on_exactly(core, namespace, "every", everywhere),
            timeout=60,
            what=f"the pod back on {target} once the taint is gone",
        )

        # A failed daemon pod is deleted and replaced.
        victim = daemon_pods(core, namespace, "every")[0]
        core.patch_namespaced_pod_status(
            victim.metadata.name, namespace, {"status": {"phase": "Failed"}}
        )
        wait_for(
            lambda: (
                victim.metadata.name
                not in {p.metadata.name for p in daemon_pods(core, namespace, "every")}
                and on_exactly(core, namespace, "every", everywhere)
            ),
            timeout=60,
            what="the failed pod replaced",
        )
        reasons = {e.reason for e in events_of(core, namespace, "every")}
        assert {"SuccessfulCreate", "SuccessfulDelete", "FailedDaemonPod"} <= reasons, reasons
        sources = {e.source.component for e in events_of(core, namespace, "every")}
        assert sources == {"daemonset-controller"}, sources


def test_rolling_updates_with_max_unavailable_and_max_surge_and_on_delete(
    kube: Any, namespace: str, stack_env: dict[str, str], tmp_path: Path
) -> None:
    core = client.CoreV1Api(kube)
    apps = client.AppsV1Api(kube)
    strategies = {
        "unavailable": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}},
        "surge": {
            "type": "RollingUpdate",
            "rollingUpdate": {"maxSurge": "100%", "maxUnavailable": 0},
        },
        "ondelete": {"type": "OnDelete"},
    }
    with kubus_pool(stack_env, tmp_path, extra=CONTROLLERS, watcher_args=[WATCHED]):
        everywhere = untainted_nodes(core)
        for name, strategy in strategies.items():
            body = daemonset(name, strategy=strategy)
            if name != "ondelete":
                # New pods stay unavailable a while: the rollouts' limits show, and the status
                # must come back after minReadySeconds by itself.
                body["spec"]["minReadySeconds"] = 2
            apps.create_namespaced_daemon_set(namespace, body)
        for name in strategies:
            wait_for(
                lambda n=name: rolled_out(apps, namespace, n, everywhere),
                timeout=90,
                what=f"{name} on every node",
            )
        before = {
            name: {p.metadata.name for p in daemon_pods(core, namespace, name)}
            for name in strategies
        }
        for name in strategies:
            apps.patch_namespaced_daemon_set(
                name,
                namespace,
                {
                    "spec": {
                        "template": {
                            "spec": {
                                "containers": [
                                    {"name": "agent", "image": "registry.example/agent:2"}
                                ]
                            }
                        }
                    }
                },
            )
        most_at_once = 0
        least_available = len(everywhere)

        def surge_rolled_out() -> bool:
            nonlocal most_at_once, least_available
            most_at_once = max(
                most_at_once, max(nodes_with_pods(core, namespace, "surge").values(), default=0)
            )
            status = apps.read_namespaced_daemon_set("unavailable", namespace).status
            least_available = min(least_available, status.number_available or 0)
            return rolled_out(apps, namespace, "surge", everywhere) and rolled_out(
                apps, namespace, "unavailable", everywhere
            )

        wait_for(surge_rolled_out, timeout=150, what="the two rolling updates done", interval=0.1)
        for name in ("surge", "unavailable"):
            after = {p.metadata.name for p in daemon_pods(core, namespace, name)}
            assert not after & before[name], name
            history = revisions(apps, namespace, name)
            assert [r.revision for r in history] == [1, 2], name
        # With maxUnavailable 1 (no surge) never more than one node without an available pod.
        assert least_available >= len(everywhere) - 1, least_available
        # With surge, a node ran its old and its new pod side by side at some point.
        assert most_at_once == 2 or len(everywhere) == 0

        # OnDelete: nothing is replaced until a pod is deleted, then only that one.
        def observed() -> bool:
            ds = apps.read_namespaced_daemon_set("ondelete", namespace)
            return bool(ds.status.observed_generation == ds.metadata.generation)

        wait_for(observed, timeout=30, what="the OnDelete DaemonSet's new generation observed")
        assert {p.metadata.name for p in daemon_pods(core, namespace, "ondelete")} == before[
            "ondelete"
        ]
        # 0 is omitted on the wire (omitempty): the client reads None.
        assert not apps.read_namespaced_daemon_set(
            "ondelete", namespace
        ).status.updated_number_scheduled
        core.delete_namespaced_pod(sorted(before["ondelete"])[0], namespace)
        wait_for(
            lambda: (
                len(daemon_pods(core, namespace, "ondelete")) == len(everywhere)
                and apps.read_namespaced_daemon_set(
                    "ondelete", namespace
                ).status.updated_number_scheduled
                == 1
            ),
            timeout=60,
            what="one OnDelete pod replaced from the new revision",
        )
        kept = {p.metadata.name for p in daemon_pods(core, namespace, "ondelete")}
        assert len(kept & before["ondelete"]) == len(everywhere) - 1


def test_daemonsets_roll_out_on_three_processes_across_a_kill_9(
    kube: Any, stack_env: dict[str, str], tmp_path: Path
) -> None:
    core = client.CoreV1Api(kube)
    apps = client.AppsV1Api(kube)
    run = uuid.uuid4().hex[:5]
    namespaces = [create_namespace(core, f"ds-{run}-{i}") for i in range(6)]
    audit = tmp_path / "audit.jsonl"
    try:
        with kubus_pool(
            stack_env,
            tmp_path,
            reconcilers=3,
            extra=["--controllers=daemonset", f"--reconcile-audit-log={audit}"],
            watcher_args=[WATCHED],
        ) as pool:
            members = {member_of(process): process for process in pool.reconcilers}
            everywhere = untainted_nodes(core)
            for ns in namespaces:
                apps.create_namespaced_daemon_set(ns, daemonset("agent"))
            wait_for(
                lambda: all(rolled_out(apps, ns, "agent", everywhere) for ns in namespaces),
                timeout=150,
                what="6 DaemonSets on every node",
            )
            for ns in namespaces:
                apps.patch_namespaced_daemon_set(
                    "agent",
                    ns,
                    {"spec": {"template": {"metadata": {"labels": {"app": "agent", "v": "2"}}}}},
                )
            busiest = Counter(
                member
                for (controller, _key), entries in reconciles(audit).items()
                if controller == "daemonset-controller"
                for *_, member in entries
            ).most_common(1)[0][0]
            members[busiest].kill()
            wait_for(
                lambda: all(
                    rolled_out(apps, ns, "agent", everywhere)
                    and len(revisions(apps, ns, "agent")) == 2
                    for ns in namespaces
                ),
                timeout=180,
                what="6 rollouts done after the kill -9",
            )
    finally:
        for ns in namespaces:
            try:
                core.delete_namespace(ns)
            except ApiException as error:
                if error.status != 404:
                    raise
    assert overlaps(reconciles(audit)) == []

"""kubus's pod garbage collector against the real stack, after upstream's
test/integration/podgc: what a user sees of terminated pods beyond the threshold, of pods left
on a deleted node, of terminating pods on an out-of-service node and of terminating pods that
were never scheduled; and the collector's work moving on when its leader is killed -9.

Nothing else in these pools touches pods: no kubelet runs for the plain Nodes made here (kwok
manages only the nodes annotated for it), so a pod that turns Failed or goes was collected.
Pods that must be read after the collector's delete carry a finalizer of the test's, which the
test removes.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from kubus.devstack.stack import FAKE_NODE_ANNOTATION
from tests.support.services import Pool, ServiceProcess, kubus_pool
from tests.support.wait import wait_for

pytestmark = pytest.mark.integration

CONTROLLER = "pod-garbage-collector-controller"
PERIOD, QUARANTINE, THRESHOLD = 1.0, 3.0, 3
FLAGS = [
    "--controllers=podgc",
    f"--pod-gc-check-period={PERIOD:g}s",
    f"--pod-gc-quarantine-time={QUARANTINE:g}s",
]
WATCHED = ["--resources=v1/pods,v1/nodes"]
FINALIZER = "kubus.test/hold"
OUT_OF_SERVICE = "node.kubernetes.io/out-of-service"
TERMINATED = ("Succeeded", "Failed")


@pytest.fixture
def gc_pool(stack_env: dict[str, str], tmp_path: Path) -> Iterator[Pool]:
    """One process, the terminated-pod GC off: the threshold is cluster-wide, and only
    :func:`test_terminated_pods_beyond_the_threshold_go_evicted_first_then_oldest` sets one.
    A pool per test: two collectors at once could not tell whose work a test sees."""
    with kubus_pool(
        stack_env,
        tmp_path,
        extra=[*FLAGS, "--terminated-pod-gc-threshold=0"],
        watcher_args=WATCHED,
    ) as pool:
        yield pool


@pytest.fixture
def core(kube: Any) -> client.CoreV1Api:
    return client.CoreV1Api(kube)


@pytest.fixture
def nodes(core: client.CoreV1Api) -> Iterator[list[str]]:
    """Names of the Nodes a test makes: deleted after it."""
    made: list[str] = []
    yield made
    for name in made:
        try:
            core.delete_node(name)
        except ApiException as error:
            if error.status != 404:
                raise


@pytest.fixture
def held(core: client.CoreV1Api, namespace: str) -> Iterator[list[str]]:
    """Names of the pods a test gives the finalizer: released after it, so the namespace goes."""
    names: list[str] = []
    yield names
    for name in names:
        release(core, namespace, name)


def suffix() -> str:
    return uuid.uuid4().hex[:6]


def make_node(core: client.CoreV1Api, nodes: list[str], name: str, *, kwok: bool) -> str:
    """A Node: managed by kwok (Ready, and its pods Running, as a kubelet would) or plain (no
    kubelet: no Ready condition, its pods stay as the test sets them)."""
    metadata: dict[str, Any] = {"name": name, "labels": {"kubernetes.io/hostname": name}}
    if kwok:
        metadata["annotations"] = {
            FAKE_NODE_ANNOTATION: "fake",
            "node.alpha.kubernetes.io/ttl": "0",
        }
        metadata["labels"]["type"] = "kwok"
    capacity = {"cpu": "100", "memory": "100Gi", "pods": "110"}
    core.create_node(
        {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": metadata,
            "spec": {},
            "status": {"capacity": capacity, "allocatable": capacity},
        }
    )
    nodes.append(name)
    return name


def make_pod(
    core: client.CoreV1Api,
    namespace: str,
    name: str,
    *,
    node: str | None = None,
    held: list[str] | None = None,
    node_selector: dict[str, str] | None = None,
) -> Any:
    spec: dict[str, Any] = {"containers": [{"name": "c", "image": "registry.example/c:1"}]}
    if node is not None:
        spec["nodeName"] = node
    if node_selector is not None:
        spec["nodeSelector"] = node_selector
    metadata: dict[str, Any] = {"name": name}
    if held is not None:
        metadata["finalizers"] = [FINALIZER]
        held.append(name)
    return core.create_namespaced_pod(namespace, {"metadata": metadata, "spec": spec})


def pod_or_none(core: client.CoreV1Api, namespace: str, name: str) -> Any:
    try:
        return core.read_namespaced_pod(name, namespace)
    except ApiException as error:
        if error.status == 404:
            return None
        raise


def release(core: client.CoreV1Api, namespace: str, name: str) -> None:
    try:
        core.patch_namespaced_pod(name, namespace, {"metadata": {"finalizers": None}})
    except ApiException as error:
        if error.status != 404:
            raise


def condition(pod: Any, kind: str) -> Any:
    return next((c for c in pod.status.conditions or () if c.type == kind), None)


def failed(core: client.CoreV1Api, namespace: str, name: str) -> Any:
    pod = pod_or_none(core, namespace, name)
    assert pod is not None, f"pod {name} went: its finalizer should have kept it"
    return pod if pod.status.phase == "Failed" else None


def gone(core: client.CoreV1Api, namespace: str, name: str) -> bool:
    return pod_or_none(core, namespace, name) is None


def logs(pool: Pool) -> str:
    return ", ".join(str(p.log) for p in pool.reconcilers)


def test_terminated_pods_beyond_the_threshold_go_evicted_first_then_oldest(
    stack_env: dict[str, str],
    tmp_path: Path,
    core: client.CoreV1Api,
    namespace: str,
    nodes: list[str],
) -> None:
    node = make_node(core, nodes, f"podgc-plain-{suffix()}", kwok=False)
    # Created one after the other: names in creation order break ties of the same second.
    # The evicted pod is the newest, yet goes first.
    names = [f"done-{i}" for i in range(5)]
    for name in [*names, "evicted"]:
        make_pod(core, namespace, name, node=node)
    for index, name in enumerate(names):
        phase = "Succeeded" if index % 2 else "Failed"
        core.patch_namespaced_pod_status(name, namespace, {"status": {"phase": phase}})
    core.patch_namespaced_pod_status(
        "evicted",
        namespace,
        {"status": {"phase": "Failed", "reason": "Evicted", "message": "low on memory"}},
    )

    def terminated_in_cluster() -> list[Any]:
        return [p for p in core.list_pod_for_all_namespaces().items if p.status.phase in TERMINATED]

    with kubus_pool(
        stack_env,
        tmp_path,
        extra=[*FLAGS, f"--terminated-pod-gc-threshold={THRESHOLD}"],
        watcher_args=WATCHED,
    ) as pool:
        # Older terminated pods of other tests, if any, go before these: the newest three
        # not evicted are what is left of this test's, and only they are left in the cluster.
        left = wait_for(
            lambda: (
                len(found := terminated_in_cluster()) == THRESHOLD
                and {p.metadata.name for p in core.list_namespaced_pod(namespace).items}
                == set(names[-THRESHOLD:])
                and found
            ),
            timeout=60,
            what=f"{THRESHOLD} terminated pods left, the newest ({logs(pool)})",
        )
        assert {(p.metadata.namespace, p.metadata.name) for p in left} == {
            (namespace, name) for name in names[-THRESHOLD:]
        }
        # One more terminated pod: the oldest left goes, the others stay as they are.
        witness = make_pod(core, namespace, f"running-{suffix()}", node=node).metadata.name
        core.patch_namespaced_pod_status(witness, namespace, {"status": {"phase": "Failed"}})
        wait_for(
            lambda: gone(core, namespace, names[-THRESHOLD]),
            timeout=30,
            what=f"{names[-THRESHOLD]}, now the oldest of {THRESHOLD + 1}, deleted",
        )
    survivors = {p.metadata.name: p.status.phase for p in core.list_namespaced_pod(namespace).items}
    assert survivors == {names[3]: "Succeeded", names[4]: "Failed", witness: "Failed"}


def test_pods_on_a_deleted_node_are_failed_with_disruption_target_then_deleted(
    gc_pool: Pool,
    core: client.CoreV1Api,
    namespace: str,
    nodes: list[str],
    held: list[str],
) -> None:
    node = make_node(core, nodes, f"podgc-kwok-{suffix()}", kwok=True)
    make_pod(core, namespace, "kept", node=node, held=held)
    make_pod(core, namespace, "plain", node=node)
    for name in ("kept", "plain"):
        wait_for(
            lambda name=name: core.read_namespaced_pod(name, namespace).status.phase == "Running",
            timeout=60,
            what=f"pod {name} Running on kwok's {node}",
        )
    generation = core.read_namespaced_pod("kept", namespace).metadata.generation
    before = time.monotonic()
    core.delete_node(node)

    pod = wait_for(
        lambda: failed(core, namespace, "kept"),
        timeout=60,
        what=f"pod kept Failed after its node went ({logs(gc_pool)})",
    )
    assert time.monotonic() - before >= QUARANTINE, "collected before the quarantine was over"
    target = condition(pod, "DisruptionTarget")
    assert target is not None, pod.status.conditions
    assert (target.status, target.reason, target.message) == (
        "True",
        "DeletionByPodGC",
        "PodGC: node no longer exists",
    )
    # The generation it was marked at (the delete that followed counts one more).
    assert target.observed_generation == generation
    wait_for(
        lambda: core.read_namespaced_pod("kept", namespace).metadata.deletion_timestamp,
        timeout=30,
        what="pod kept being deleted",
    )
    assert core.read_namespaced_pod("kept", namespace).metadata.deletion_grace_period_seconds == 0
    wait_for(lambda: gone(core, namespace, "plain"), timeout=30, what="pod plain deleted")
    release(core, namespace, "kept")
    wait_for(lambda: gone(core, namespace, "kept"), timeout=30, what="pod kept gone once released")


def test_terminating_pods_on_an_out_of_service_node_are_force_deleted(
    gc_pool: Pool,
    core: client.CoreV1Api,
    namespace: str,
    nodes: list[str],
    held: list[str],
) -> None:
    run = suffix()
    down = make_node(core, nodes, f"podgc-down-{run}", kwok=False)
    other = make_node(core, nodes, f"podgc-other-{run}", kwok=False)
    for name in (down, other):  # what a node whose kubelet stopped reports
        core.patch_node_status(
            name,
            {"status": {"conditions": [{"type": "Ready", "status": "False", "reason": "Down"}]}},
        )
    make_pod(core, namespace, "held", node=down, held=held)
    make_pod(core, namespace, "plain", node=down)
    make_pod(core, namespace, "elsewhere", node=other)
    try:
        # "elsewhere" first: a check that sees "plain" terminating has seen it terminating too.
        for name in ("elsewhere", "held", "plain"):
            core.patch_namespaced_pod_status(name, namespace, {"status": {"phase": "Running"}})
            # No kubelet will ever confirm: without the collector, these stay for 300s.
            core.delete_namespaced_pod(name, namespace, grace_period_seconds=300)
        taint = {"key": OUT_OF_SERVICE, "value": "nodeshutdown", "effect": "NoExecute"}
        core.patch_node(down, {"spec": {"taints": [taint]}})

        wait_for(
            lambda: gone(core, namespace, "plain"),
            timeout=30,
            what=f"pod plain force-deleted from {down} ({logs(gc_pool)})",
        )
        pod = wait_for(
            lambda: (
                (found := failed(core, namespace, "held"))
                and found.metadata.deletion_grace_period_seconds == 0
                and found
            ),
            timeout=30,
            what="pod held Failed and deleted with grace 0",
        )
        assert condition(pod, "DisruptionTarget") is None
        # The same checks saw the pod on the node that is down but not out of service.
        elsewhere = pod_or_none(core, namespace, "elsewhere")
        assert elsewhere is not None and elsewhere.status.phase == "Running"
        assert elsewhere.metadata.deletion_grace_period_seconds == 300
    finally:
        try:
            core.delete_namespaced_pod("elsewhere", namespace, grace_period_seconds=0)
        except ApiException as error:
            if error.status != 404:
                raise


def test_an_unscheduled_terminating_pod_is_failed_and_force_deleted(
    gc_pool: Pool, core: client.CoreV1Api, namespace: str, held: list[str]
) -> None:
    unscheduled_terminating_pod_is_collected(core, namespace, held, f"logs: {logs(gc_pool)}")


def unscheduled_terminating_pod_is_collected(
    core: client.CoreV1Api, namespace: str, held: list[str], where: str, timeout: float = 30
) -> None:
    name = f"nowhere-{suffix()}"
    make_pod(core, namespace, name, held=held, node_selector={"kubus.test/nowhere": "true"})
    wait_for(
        lambda: (
            (c := condition(core.read_namespaced_pod(name, namespace), "PodScheduled"))
            and c.status == "False"
        ),
        timeout=30,
        what=f"pod {name} found unschedulable by the scheduler",
    )
    core.delete_namespaced_pod(name, namespace)
    pod = wait_for(
        lambda: failed(core, namespace, name), timeout=timeout, what=f"pod {name} Failed ({where})"
    )
    assert not pod.spec.node_name
    assert condition(pod, "DisruptionTarget") is None
    release(core, namespace, name)
    wait_for(lambda: gone(core, namespace, name), timeout=30, what=f"pod {name} gone")


def test_after_kill_9_of_the_leader_another_process_collects(
    stack_env: dict[str, str],
    tmp_path: Path,
    core: client.CoreV1Api,
    namespace: str,
    held: list[str],
) -> None:
    def leaders(pool: Pool) -> list[ServiceProcess]:
        return [
            p
            for p in pool.reconcilers
            if p.running and p.metric("kubus_reconciler_leader", controller=CONTROLLER) == 1
        ]

    with kubus_pool(
        stack_env,
        tmp_path,
        reconcilers=3,
        extra=[*FLAGS, "--terminated-pod-gc-threshold=0"],
        watcher_args=WATCHED,
    ) as pool:
        (leader,) = wait_for(
            lambda: len(found := leaders(pool)) == 1 and found, timeout=30, what="one leader"
        )
        unscheduled_terminating_pod_is_collected(core, namespace, held, f"leader {leader.log}")
        leader.kill()
        # Made while no process may lead: the successor's lease comes within the lease time.
        unscheduled_terminating_pod_is_collected(
            core, namespace, held, f"after kill -9 of {leader.log}; logs: {logs(pool)}", 60
        )
        (successor,) = wait_for(
            lambda: len(found := leaders(pool)) == 1 and found, timeout=30, what="one new leader"
        )
        assert successor is not leader

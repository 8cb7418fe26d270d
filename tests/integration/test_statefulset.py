"""The StatefulSet controller against the real stack: ordered creation with claims bound by the
dev provisioner, reverse-order scale-down, a rolling update with a partition, OnDelete, the
claim retention policy carried out by the garbage collector, a creation refused by quota, and
a rollout across a kill -9 of one of three processes."""

from __future__ import annotations

import json
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from reconcilers.controllers.history import (
    CONTROLLER_REVISION_HASH_LABEL,
    hash_revision,
    revision_bytes,
    revision_name,
    template_patch,
)
from tests.integration.test_partition_shards import overlaps, reconciles
from tests.support.kcm import running_kcm
from tests.support.leases import member_of
from tests.support.services import kubus_pool
from tests.support.system import create_namespace
from tests.support.wait import wait_for

pytestmark = pytest.mark.integration

CASES = Path(__file__).resolve().parents[1] / "unit" / "data" / "statefulset_revision_cases.json"

STORAGE = (
    "--controllers=statefulset,persistentvolume-binder,pvc-protection,pv-protection,"
    "garbagecollector"
)
WATCH_ALL = ["--resources", "all"]  # the garbage collector reads every resource
REVISION = "controller-revision-hash"


def statefulset(name: str, replicas: int, *, claims: bool = True, **spec: Any) -> dict[str, Any]:
    labels = {"app": name}
    body: dict[str, Any] = {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "serviceName": name,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "c", "image": "registry.example/c:1"}]},
            },
            **spec,
        },
    }
    if claims:
        body["spec"]["volumeClaimTemplates"] = [
            {
                "metadata": {"name": "www"},
                "spec": {
                    "accessModes": ["ReadWriteOnce"],
                    "resources": {"requests": {"storage": "1Gi"}},
                },
            }
        ]
    return body


def pods_of(core: client.CoreV1Api, namespace: str, name: str) -> dict[str, Any]:
    return {
        pod.metadata.name: pod
        for pod in core.list_namespaced_pod(namespace, label_selector=f"app={name}").items
        if pod.metadata.deletion_timestamp is None
    }


def ready(pod: Any) -> bool:
    return any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])


def settled(apps: client.AppsV1Api, namespace: str, name: str, replicas: int) -> bool:
    found = apps.read_namespaced_stateful_set(name, namespace)
    status = found.status
    return bool(
        status.observed_generation == found.metadata.generation
        and status.replicas == replicas
        and (status.ready_replicas or 0) == replicas
        and (status.available_replicas or 0) == replicas
        and (status.updated_replicas or 0) == replicas
        and status.current_revision == status.update_revision
    )


def events_of(core: client.CoreV1Api, namespace: str, name: str) -> list[Any]:
    return [
        e
        for e in core.list_namespaced_event(namespace).items
        if e.involved_object.kind == "StatefulSet" and e.involved_object.name == name
    ]


class OrderWatch:
    """Polled while a set scales: records any moment its pods are not ``<name>-0..k-1`` with
    every pod but the highest Ready (OrderedReady's guarantee)."""

    def __init__(self, core: client.CoreV1Api, namespace: str, name: str) -> None:
        self.core, self.namespace, self.name = core, namespace, name
        self.violations: list[str] = []

    def look(self) -> dict[str, Any]:
        pods = pods_of(self.core, self.namespace, self.name)
        ordinals = sorted(int(n.rsplit("-", 1)[1]) for n in pods)
        if ordinals != list(range(len(ordinals))):
            self.violations.append(f"not a prefix: {ordinals}")
        for ordinal in ordinals[:-1]:
            if not ready(pods[f"{self.name}-{ordinal}"]):
                self.violations.append(f"{self.name}-{ordinal} not ready below {ordinals[-1]}")
        return pods


def test_ordered_creation_claims_scale_down_and_a_partitioned_rolling_update(
    kube: Any, namespace: str, stack_env: dict[str, str], tmp_path: Path
) -> None:
    apps, core = client.AppsV1Api(kube), client.CoreV1Api(kube)
    with kubus_pool(stack_env, tmp_path, extra=[STORAGE], watcher_args=WATCH_ALL):
        apps.create_namespaced_stateful_set(namespace, statefulset("web", 3))
        order = OrderWatch(core, namespace, "web")
        wait_for(
            lambda: len(order.look()) == 3 and settled(apps, namespace, "web", 3),
            timeout=120,
            what="3 ready pods",
            interval=0.1,
        )
        assert order.violations == []
        pods = pods_of(core, namespace, "web")
        for ordinal in range(3):
            pod = pods[f"web-{ordinal}"]
            assert pod.spec.hostname == f"web-{ordinal}"
            assert pod.spec.subdomain == "web"
            assert pod.metadata.labels["statefulset.kubernetes.io/pod-name"] == f"web-{ordinal}"
            assert pod.metadata.labels["apps.kubernetes.io/pod-index"] == str(ordinal)
            (volume,) = [v for v in pod.spec.volumes if v.name == "www"]
            assert volume.persistent_volume_claim.claim_name == f"www-web-{ordinal}"
        created = [pods[f"web-{n}"].metadata.creation_timestamp for n in range(3)]
        assert created == sorted(created)
        claims = wait_for(
            lambda: (
                found
                if len(
                    found := {
                        c.metadata.name: c
                        for c in core.list_namespaced_persistent_volume_claim(namespace).items
                        if c.status.phase == "Bound"
                    }
                )
                == 3
                else None
            ),
            timeout=60,
            what="3 claims bound",
        )
        assert sorted(claims) == ["www-web-0", "www-web-1", "www-web-2"]
        assert claims["www-web-0"].metadata.labels == {"app": "web"}

        # The revision is named as kcm names it.
        sts = apps.read_namespaced_stateful_set("web", namespace, _preload_content=False)
        raw = json.loads(sts.data)
        first = raw["status"]["currentRevision"]
        assert first == revision_name("web", hash_revision(template_patch(raw), 0))
        assert {p.metadata.labels[REVISION] for p in pods.values()} == {first}

        # Scale down: the highest ordinal goes first, one at a time; claims stay (Retain).
        apps.patch_namespaced_stateful_set("web", namespace, {"spec": {"replicas": 1}})
        wait_for(
            lambda: list(order.look()) == ["web-0"] and settled(apps, namespace, "web", 1),
            timeout=60,
            what="scaled down to web-0",
            interval=0.1,
        )
        assert order.violations == []
        names = {
            c.metadata.name for c in core.list_namespaced_persistent_volume_claim(namespace).items
        }
        assert names == {"www-web-0", "www-web-1", "www-web-2"}
        apps.patch_namespaced_stateful_set("web", namespace, {"spec": {"replicas": 3}})
        wait_for(lambda: settled(apps, namespace, "web", 3), timeout=90, what="back to 3")

        # A rolling update with partition 1: web-2 then web-1 move, web-0 stays.
        seen_order: list[str] = []

        def updated() -> dict[str, str]:
            revisions = {
                n: p.metadata.labels[REVISION] for n, p in pods_of(core, namespace, "web").items()
            }
            for pod_name, pod_revision in sorted(revisions.items(), reverse=True):
                if pod_revision != first and pod_name not in seen_order:
                    seen_order.append(pod_name)
            return revisions

        apps.patch_namespaced_stateful_set(
            "web",
            namespace,
            {
                "spec": {
                    "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"partition": 1}},
                    "template": {
                        "spec": {"containers": [{"name": "c", "image": "registry.example/c:2"}]}
                    },
                }
            },
        )

        def partitioned() -> bool:
            found = apps.read_namespaced_stateful_set("web", namespace).status
            revisions = updated()
            return bool(
                found.update_revision != first
                and found.current_revision == first
                and found.updated_replicas == 2
                and found.current_replicas == 1
                and found.ready_replicas == 3
                and revisions.get("web-0") == first
                and revisions.get("web-1") == revisions.get("web-2") == found.update_revision
            )

        wait_for(partitioned, timeout=120, what="web-1 and web-2 updated, web-0 not", interval=0.1)
        assert seen_order == ["web-2", "web-1"]
        apps.patch_namespaced_stateful_set(
            "web", namespace, {"spec": {"updateStrategy": {"rollingUpdate": {"partition": 0}}}}
        )
        wait_for(lambda: settled(apps, namespace, "web", 3), timeout=120, what="rollout complete")
        final = apps.read_namespaced_stateful_set("web", namespace).status
        assert final.current_revision != first
        revisions = client.AppsV1Api(kube).list_namespaced_controller_revision(namespace).items
        assert sorted(r.revision for r in revisions) == [1, 2]
        reasons: Counter[str] = Counter()
        for event in events_of(core, namespace, "web"):  # repeats are one event, counted
            reasons[event.reason] += event.count or 1
        assert reasons["SuccessfulCreate"] >= 3 + 3  # three claims and the pods
        assert reasons["SuccessfulDelete"] >= 2 + 3  # scale-down and the update
        assert {e.source.component for e in events_of(core, namespace, "web")} == {
            "statefulset-controller"
        }


def test_on_delete_waits_for_the_user_and_parallel_creates_at_once(
    kube: Any, namespace: str, stack_env: dict[str, str], tmp_path: Path
) -> None:
    apps, core = client.AppsV1Api(kube), client.CoreV1Api(kube)
    spec = {"updateStrategy": {"type": "OnDelete"}, "podManagementPolicy": "Parallel"}
    with kubus_pool(stack_env, tmp_path, extra=["--controllers=statefulset"]):
        apps.create_namespaced_stateful_set(namespace, statefulset("db", 3, claims=False, **spec))
        wait_for(lambda: settled(apps, namespace, "db", 3), timeout=90, what="3 ready pods")
        first = apps.read_namespaced_stateful_set("db", namespace).status.current_revision
        apps.patch_namespaced_stateful_set(
            "db",
            namespace,
            {"spec": {"template": {"metadata": {"annotations": {"version": "2"}}}}},
        )

        def noticed() -> Any:
            status = apps.read_namespaced_stateful_set("db", namespace).status
            return status if status.update_revision != first else None

        status = wait_for(noticed, timeout=60, what="the new update revision")
        assert (status.current_revision, status.updated_replicas or 0) == (first, 0)
        assert {p.metadata.labels[REVISION] for p in pods_of(core, namespace, "db").values()} == {
            first
        }
        old_uid = pods_of(core, namespace, "db")["db-1"].metadata.uid
        core.delete_namespaced_pod("db-1", namespace)
        wait_for(
            lambda: (
                (pod := pods_of(core, namespace, "db").get("db-1")) is not None
                and pod.metadata.uid != old_uid
                and pod.metadata.labels[REVISION] == status.update_revision
                and ready(pod)
            ),
            timeout=60,
            what="db-1 recreated at the update revision",
        )
        revisions = {
            n: p.metadata.labels[REVISION] for n, p in pods_of(core, namespace, "db").items()
        }
        assert revisions == {"db-0": first, "db-1": status.update_revision, "db-2": first}


def test_the_retention_policy_has_the_garbage_collector_delete_claims(
    kube: Any, namespace: str, stack_env: dict[str, str], tmp_path: Path
) -> None:
    apps, core = client.AppsV1Api(kube), client.CoreV1Api(kube)
    policy = {"whenDeleted": "Delete", "whenScaled": "Delete"}
    body = statefulset("kv", 2, persistentVolumeClaimRetentionPolicy=policy)

    def claims() -> dict[str, Any]:
        return {
            c.metadata.name: c
            for c in core.list_namespaced_persistent_volume_claim(namespace).items
        }

    def owners(claim: Any) -> list[tuple[str, str]]:
        return [(r.kind, r.name) for r in claim.metadata.owner_references or []]

    with kubus_pool(stack_env, tmp_path, extra=[STORAGE], watcher_args=WATCH_ALL):
        apps.create_namespaced_stateful_set(namespace, body)
        wait_for(
            lambda: (
                settled(apps, namespace, "kv", 2)
                and all(owners(c) == [("StatefulSet", "kv")] for c in claims().values())
                and len(claims()) == 2
            ),
            timeout=120,
            what="2 pods whose claims the set owns",
        )
        apps.patch_namespaced_stateful_set("kv", namespace, {"spec": {"replicas": 1}})
        wait_for(
            lambda: set(claims()) == {"www-kv-0"} and settled(apps, namespace, "kv", 1),
            timeout=90,
            what="the claim of kv-1 deleted with its pod",
        )
        apps.delete_namespaced_stateful_set("kv", namespace)
        wait_for(
            lambda: not claims() and not pods_of(core, namespace, "kv"),
            timeout=90,
            what="the pods and the last claim deleted with the set",
        )


def test_a_pod_refused_by_quota_is_a_failed_create_until_it_is_not(
    kube: Any, namespace: str, stack_env: dict[str, str], tmp_path: Path
) -> None:
    """A ResourceQuota used up (its usage written as the quota controller would): admission
    refuses every pod of the namespace."""
    apps, core = client.AppsV1Api(kube), client.CoreV1Api(kube)
    core.create_namespaced_resource_quota(
        namespace, {"metadata": {"name": "pods"}, "spec": {"hard": {"pods": "1"}}}
    )
    core.patch_namespaced_resource_quota_status(
        "pods", namespace, {"status": {"hard": {"pods": "1"}, "used": {"pods": "1"}}}
    )
    with kubus_pool(stack_env, tmp_path, extra=["--controllers=statefulset"]):
        apps.create_namespaced_stateful_set(namespace, statefulset("blocked", 2, claims=False))
        event = wait_for(
            lambda: next(
                (e for e in events_of(core, namespace, "blocked") if e.reason == "FailedCreate"),
                None,
            ),
            timeout=60,
            what="a FailedCreate event",
        )
        assert event.type == "Warning"
        assert event.message.startswith(
            "Create Pod blocked-0 in StatefulSet blocked failed error: "
        )
        assert "forbidden" in event.message
        assert pods_of(core, namespace, "blocked") == {}
        status = apps.read_namespaced_stateful_set("blocked", namespace).status
        assert (status.replicas or 0) == 0
        core.delete_namespaced_resource_quota("pods", namespace)
        wait_for(
            lambda: settled(apps, namespace, "blocked", 2),
            timeout=120,
            what="2 pods once the quota is gone",
        )


def test_rollouts_complete_on_three_processes_across_a_kill_9(
    kube: Any, stack_env: dict[str, str], tmp_path: Path
) -> None:
    apps, core = client.AppsV1Api(kube), client.CoreV1Api(kube)
    run = uuid.uuid4().hex[:5]
    namespaces = [create_namespace(core, f"sts-{run}-{i}") for i in range(6)]
    audit = tmp_path / "audit.jsonl"
    try:
        with kubus_pool(
            stack_env,
            tmp_path,
            reconcilers=3,
            extra=["--controllers=statefulset", f"--reconcile-audit-log={audit}"],
        ) as pool:
            members = {member_of(process): process for process in pool.reconcilers}
            for namespace in namespaces:
                apps.create_namespaced_stateful_set(namespace, statefulset("web", 3, claims=False))
            wait_for(
                lambda: all(settled(apps, ns, "web", 3) for ns in namespaces),
                timeout=180,
                what="6 sets at 3 ready pods",
            )
            firsts = {
                ns: apps.read_namespaced_stateful_set("web", ns).status.current_revision
                for ns in namespaces
            }
            patch = {"spec": {"template": {"metadata": {"annotations": {"rollout": "2"}}}}}
            for namespace in namespaces:
                apps.patch_namespaced_stateful_set("web", namespace, patch)
            wait_for(
                lambda: any(
                    (pods_of(core, ns, "web").get("web-2") is None)
                    or pods_of(core, ns, "web")["web-2"].metadata.labels[REVISION] != firsts[ns]
                    for ns in namespaces
                ),
                timeout=60,
                what="a rollout under way",
                interval=0.05,
            )
            busiest = Counter(
                member
                for (controller, _key), entries in reconciles(audit).items()
                if controller == "statefulset-controller"
                for *_, member in entries
            ).most_common(1)[0][0]
            members[busiest].kill()

            def rolled(ns: str) -> bool:
                status = apps.read_namespaced_stateful_set("web", ns).status
                return settled(apps, ns, "web", 3) and status.current_revision != firsts[ns]

            wait_for(
                lambda: all(rolled(ns) for ns in namespaces),
                timeout=240,
                what="6 rollouts complete after the kill -9",
            )
    finally:
        for namespace in namespaces:
            try:
                core.delete_namespace(namespace)
            except ApiException as error:
                if error.status != 404:
                    raise
    assert overlaps(reconciles(audit)) == []


@pytest.fixture
def kcm_statefulsets(stack_env: dict[str, str], tmp_path: Path) -> Iterator[None]:
    """kube-controller-manager running its statefulset-controller only."""
    with running_kcm(stack_env, tmp_path / "kcm.log", "statefulset-controller"):
        yield


def test_kcm_names_revisions_as_kubus_computes_them(
    kube: Any, namespace: str, kcm_statefulsets: None
) -> None:
    """The unit vectors' StatefulSets, created for real and synced by kcm: the revision kcm
    creates for each is named with the hash kubus computes from the set the apiserver returns."""
    apps = client.AppsV1Api(kube)
    for case in json.loads(CASES.read_text())["cases"]:
        body = case["statefulSet"]
        name = body["metadata"]["name"]
        sent = {
            "apiVersion": "apps/v1",
            "kind": "StatefulSet",
            "metadata": {"name": name, "annotations": body["metadata"].get("annotations", {})},
            "spec": body["spec"],
        }
        apps.create_namespaced_stateful_set(namespace, sent)
        stored = json.loads(
            apps.read_namespaced_stateful_set(name, namespace, _preload_content=False).data
        )
        expected = revision_name(name, hash_revision(template_patch(stored), 0))
        status = wait_for(
            lambda n=name: apps.read_namespaced_stateful_set(n, namespace).status.update_revision,
            timeout=60,
            what=f"kcm's update revision of {name}",
        )
        assert status == expected
        revision = apps.read_namespaced_controller_revision(
            expected, namespace, _preload_content=False
        )
        raw = json.loads(revision.data)
        assert raw["metadata"]["labels"][CONTROLLER_REVISION_HASH_LABEL] == expected.rsplit("-")[-1]
        assert revision_bytes(raw["data"]) == revision_bytes(template_patch(stored))

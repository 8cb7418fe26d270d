"""--partition-shards: one busy namespace served by several processes, the invariants kept."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from tests.integration.test_deployment import complete, deployment, set_image
from tests.support.leases import member_of
from tests.support.services import kubus_pool
from tests.support.system import create_namespace
from tests.support.wait import wait_for

pytestmark = pytest.mark.integration


def reconciles(audit: Path) -> dict[tuple[str, str], list[tuple[float, float, str]]]:
    """(controller, key) -> its reconciles (start, end, member), from the audit log."""
    spans: dict[tuple[str, str], list[tuple[float, float, str]]] = defaultdict(list)
    for line in audit.read_text().splitlines():
        record = json.loads(line)
        spans[(record["controller"], record["key"])].append(
            (record["start"], record["end"], record["member"])
        )
    return spans


def overlaps(spans: dict[tuple[str, str], list[tuple[float, float, str]]]) -> list[Any]:
    """Reconciles of one key by two processes at the same time."""
    found = []
    for key, entries in spans.items():
        entries.sort()
        for (_start, end, member), (next_start, _end, next_member) in itertools.pairwise(entries):
            if next_member != member and next_start < end:
                found.append((key, member, next_member, end - next_start))
    return found


def test_one_namespace_is_shared_by_three_processes_one_worker_per_key_across_a_kill_9(
    kube: Any, stack_env: dict[str, str], tmp_path: Path
) -> None:
    apps, core = client.AppsV1Api(kube), client.CoreV1Api(kube)
    namespace = create_namespace(core, f"hot-{uuid.uuid4().hex[:5]}")
    names = [f"app-{i}" for i in range(15)]
    audit = tmp_path / "audit.jsonl"
    extra = ["--partition-shards=3", f"--reconcile-audit-log={audit}"]
    with kubus_pool(stack_env, tmp_path, reconcilers=3, extra=extra) as pool:
        for name in names:
            apps.create_namespaced_deployment(namespace, deployment(name, 2))
        wait_for(
            lambda: all(complete(apps, namespace, n) for n in names),
            timeout=120,
            what="15 deployments of one namespace available",
        )
        members = {member_of(process): process for process in pool.reconcilers}
        settled = time.time()  # the pool is whole: each unit has its one holder from now on

        for name in names:
            set_image(apps, namespace, name, "registry.example/web:2")
        wait_for(
            lambda: all(complete(apps, namespace, n) for n in names),
            timeout=120,
            what="every rollout of the namespace to complete",
        )
        deployments_by: dict[str, set[str]] = defaultdict(set)
        for (controller, key), entries in reconciles(audit).items():
            if controller == "deployment-controller" and key.startswith(f"{namespace}/"):
                for start, _end, member in entries:
                    if start > settled:
                        deployments_by[member].add(key)
        assert set(deployments_by) == set(members), (
            "every process reconciles Deployments of the one namespace",
            {m: len(keys) for m, keys in deployments_by.items()},
        )
        for one, other in itertools.combinations(deployments_by.values(), 2):
            assert not one & other, "a key belongs to one shard, so to one process"

        for name in names:
            set_image(apps, namespace, name, "registry.example/web:3")
        victim = max(deployments_by, key=lambda member: len(deployments_by[member]))
        members[victim].kill()
        wait_for(
            lambda: all(complete(apps, namespace, n) for n in names),
            timeout=180,
            what="every rollout of the namespace to complete after the kill -9",
        )
        for name in names:
            d = apps.read_namespaced_deployment(name, namespace)
            assert d.metadata.annotations["deployment.kubernetes.io/revision"] == "3"
            pods = core.list_namespaced_pod(namespace, label_selector=f"app={name}").items
            live = [p for p in pods if p.metadata.deletion_timestamp is None]
            assert len(live) == 2, f"{name}: {len(live)} pods, not 2"

    assert overlaps(reconciles(audit)) == []


def test_a_process_with_another_shard_count_is_refused_by_the_pool_in_one_line(
    stack_env: dict[str, str], tmp_path: Path
) -> None:
    with kubus_pool(stack_env, tmp_path, reconcilers=1, extra=["--partition-shards=3"]) as pool:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "kubus.cli",
                "reconciler",
                f"--kubeconfig={stack_env['KUBECONFIG']}",
                f"--nats-url={stack_env['NATS_URL']}",
                f"--bus-prefix={pool.prefix}",
                "--partition-shards=2",
                "--health-probe-bind-address=0",
                "--metrics-bind-address=0",
            ],
            check=False,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert pool.reconcilers[0].ready(), "the pool's member carries on"
    assert result.returncode == 1, result.stderr
    errors = [line for line in result.stderr.splitlines() if "partition-shards" in line]
    assert len(errors) == 1, result.stderr
    assert "--partition-shards 3, this process with 2" in errors[0]
    assert "Traceback" not in result.stderr

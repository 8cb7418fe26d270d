"""Horizontal scale-out: one worker per key across a pool, and failover after kill -9."""

from __future__ import annotations

import itertools
import json
import time
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from bus.subjects import partition_of
from tests.integration.test_deployment import complete, deployment, set_image
from tests.support.leases import lease_owners, member_of
from tests.support.services import kubus_pool
from tests.support.system import create_namespace
from tests.support.wait import wait_for

pytestmark = pytest.mark.integration

LEASE_DURATION = 10.0  # the reconcilers' default --partition-lease-duration
FAILOVER_TARGET = 15.0  # the design's bound for moving a dead process's partitions


def test_kill_9_of_the_busiest_reconciler_moves_its_work_and_every_rollout_completes(
    kube: Any, stack_env: dict[str, str], tmp_path: Path
) -> None:
    apps, core = client.AppsV1Api(kube), client.CoreV1Api(kube)
    run = uuid.uuid4().hex[:5]
    namespaces = [f"fo-{run}-{i}" for i in range(10)]
    for namespace in namespaces:
        create_namespace(core, namespace)
    names = [(ns, f"app-{j}") for ns in namespaces for j in range(2)]
    audit = tmp_path / "audit.jsonl"
    with kubus_pool(
        stack_env, tmp_path, reconcilers=3, extra=[f"--reconcile-audit-log={audit}"]
    ) as pool:
        for namespace, name in names:
            apps.create_namespaced_deployment(namespace, deployment(name, 2))
        wait_for(
            lambda: all(complete(apps, ns, n) for ns, n in names),
            timeout=120,
            what="20 deployments available",
        )

        members = {member_of(process): process for process in pool.reconcilers}
        owners = wait_for(
            lambda: (o := lease_owners(stack_env, pool)) and len(o) == 32 and o,
            timeout=30,
            what="every partition leased",
        )
        load: dict[str, int] = defaultdict(int)
        for namespace, _name in names:
            load[owners[partition_of(namespace, "")]] += 1
        assert set(load) <= set(members)
        victim_member = max(load, key=lambda member: load[member])
        victim_partitions = {p for p, m in owners.items() if m == victim_member}
        assert len(set(owners.values())) == 3, "three processes share the partitions"

        for namespace, name in names:
            set_image(apps, namespace, name, "registry.example/web:2")
        members[victim_member].kill()
        killed_at = time.monotonic()

        def moved() -> bool:
            now = lease_owners(stack_env, pool)
            return all(now.get(p) not in (None, victim_member) for p in victim_partitions)

        wait_for(moved, timeout=60, what="the dead process's partitions to move")
        moved_after = time.monotonic() - killed_at
        wait_for(
            lambda: all(complete(apps, ns, n) for ns, n in names),
            timeout=180,
            what="every rollout to complete after the failover",
        )
        for namespace, name in names:
            d = apps.read_namespaced_deployment(name, namespace)
            assert d.metadata.annotations["deployment.kubernetes.io/revision"] == "2"

    assert moved_after < FAILOVER_TARGET, f"partitions moved after {moved_after:.1f}s"
    print(f"partitions of the killed process moved after {moved_after:.1f}s")

    spans: dict[tuple[str, str], list[tuple[float, float, str]]] = defaultdict(list)
    for line in audit.read_text().splitlines():
        record = json.loads(line)
        spans[(record["controller"], record["key"])].append(
            (record["start"], record["end"], record["member"])
        )
    assert {member for entries in spans.values() for _s, _e, member in entries} == set(members)
    overlaps = []
    for key, entries in spans.items():
        entries.sort()
        for (_start, end, member), (next_start, _next_end, next_member) in itertools.pairwise(
            entries
        ):
            if next_member != member and next_start < end:
                overlaps.append((key, member, next_member, end - next_start))
    assert overlaps == []

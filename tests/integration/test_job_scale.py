"""A 1,000-completion Indexed Job at parallelism 50 on three processes, the one reconciling it
killed -9 a fifth of the way: every index succeeds exactly once, counted once.

The Job's namespace partition moves to a survivor, which must take up the count from the Job's
status and the pods' tracking finalizers (not from anything the dead process held), neither
losing a finished pod nor counting one twice, nor creating a second pod for a finished index.
"""

from __future__ import annotations

import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from tests.integration.test_job import (
    CONTROLLERS,
    FINALIZER,
    INDEX,
    WATCHED,
    finished,
    job,
    read,
)
from tests.integration.test_partition_shards import overlaps, reconciles
from tests.support.leases import member_of
from tests.support.services import kubus_pool
from tests.support.system import create_namespace
from tests.support.wait import wait_for

pytestmark = pytest.mark.integration

COMPLETIONS = 1000
PARALLELISM = 50


def test_a_1000_completion_indexed_job_survives_a_kill_9_with_exact_counts(
    kube: Any, stack_env: dict[str, str], tmp_path: Path
) -> None:
    batch, core = client.BatchV1Api(kube), client.CoreV1Api(kube)
    namespace = create_namespace(core, f"job-scale-{uuid.uuid4().hex[:5]}")
    audit = tmp_path / "audit.jsonl"
    key = f"{namespace}/indexed"
    try:
        with kubus_pool(
            stack_env,
            tmp_path,
            reconcilers=3,
            extra=[CONTROLLERS, f"--reconcile-audit-log={audit}"],
            watcher_args=[WATCHED],
        ) as pool:
            members = {member_of(process): process for process in pool.reconcilers}
            batch.create_namespaced_job(
                namespace,
                job(
                    "indexed",
                    completions=COMPLETIONS,
                    parallelism=PARALLELISM,
                    completionMode="Indexed",
                ),
            )
            wait_for(
                lambda: (
                    read(batch, namespace, "indexed")["status"].get("succeeded", 0)
                    >= COMPLETIONS // 5
                ),
                timeout=300,
                what=f"{COMPLETIONS // 5} indexes succeeded",
            )
            owner = Counter(
                member
                for (controller, reconciled), entries in reconciles(audit).items()
                if controller == "job-controller" and reconciled == key
                for *_, member in entries
            ).most_common(1)[0][0]
            members[owner].kill()
            before = read(batch, namespace, "indexed")["status"].get("succeeded", 0)
            assert before < COMPLETIONS, "the Job finished before the kill: nothing was mid-way"

            found = wait_for(
                lambda: finished(batch, namespace, "indexed", "Complete"),
                timeout=600,
                what="the Job Complete after the kill -9",
            )
        status = found["status"]
        assert status["succeeded"] == COMPLETIONS, status
        assert status.get("failed", 0) == 0, status
        assert status["completedIndexes"] == f"0-{COMPLETIONS - 1}", status
        assert not status.get("uncountedTerminatedPods", {}).get("succeeded")
        pods = core.list_namespaced_pod(namespace).items
        succeeded = Counter(
            int(p.metadata.annotations[INDEX]) for p in pods if p.status.phase == "Succeeded"
        )
        assert sorted(succeeded) == list(range(COMPLETIONS))
        assert [index for index, count in succeeded.items() if count > 1] == []
        assert [p.metadata.name for p in pods if FINALIZER in (p.metadata.finalizers or [])] == []
    finally:
        try:
            # Its 1,000 pods would stay for the rest of the suite: nothing here deletes a
            # namespace's content (no namespace controller runs beside the tests).
            core.delete_collection_namespaced_pod(namespace)
            core.delete_namespace(namespace)
        except ApiException as error:
            if error.status != 404:
                raise
    assert overlaps(reconciles(audit)) == []

"""The StatefulSet update algorithm's choices, on recording fakes of its pod, revision and
status writes: ordered and parallel creation, scale-down order, rolling updates with a
partition and maxUnavailable, OnDelete, failed pods, rollback and history trimming."""

from __future__ import annotations

import asyncio
import datetime
from dataclasses import dataclass, field
from typing import Any

import pytest

from reconcilers.controllers.history import hash_revision, revision_name
from reconcilers.controllers.statefulset.control import StatefulSetControl
from reconcilers.controllers.statefulset.utils import (
    REVISION_LABEL,
    new_pod,
    set_revision,
    set_revision_object,
)
from reconcilers.kinds import Object, clone
from tests.unit.statefulset_fixtures import STS_API

NOW = datetime.datetime(2026, 5, 1, 12, 0, 0, tzinfo=datetime.UTC)


@dataclass
class Recorder:
    """PodWrites, RevisionWrites and the status writer in one, recording what is asked."""

    log: list[str] = field(default_factory=list)
    statuses: list[Object] = field(default_factory=list)
    stale: set[str] = field(default_factory=set)
    created: list[Object] = field(default_factory=list)
    fail: dict[str, Exception] = field(default_factory=dict)

    async def create_pod(self, sts: Object, pod: Object) -> None:
        self.log.append(f"create {pod['metadata']['name']}")
        if pod["metadata"]["name"] in self.fail:
            raise self.fail[pod["metadata"]["name"]]
        self.created.append(pod)

    async def update_pod(self, sts: Object, pod: Object) -> None:
        self.log.append(f"update {pod['metadata']['name']}")

    async def delete_pod(self, sts: Object, pod: Object) -> None:
        self.log.append(f"delete {pod['metadata']['name']}")

    def claims_match_retention(self, sts: Object, pod: Object) -> bool:
        return True

    async def update_claims_for_retention(self, sts: Object, pod: Object) -> None:
        self.log.append(f"claims {pod['metadata']['name']}")

    def claim_is_stale(self, sts: Object, pod: Object) -> bool:
        return pod["metadata"]["name"] in self.stale

    async def create_missing_claims(self, sts: Object, pod: Object) -> None:
        self.log.append(f"missing-claims {pod['metadata']['name']}")

    async def create(
        self, owner: Object, revision: Object, collision_count: int
    ) -> tuple[Object, int]:
        self.log.append(f"create-revision {revision['revision']}")
        return revision, collision_count

    async def update_revision(self, revision: Object, new_revision: int) -> Object:
        self.log.append(f"renumber {revision['metadata']['name']} {new_revision}")
        return {**revision, "revision": new_revision}

    async def delete(self, revision: Object) -> None:
        self.log.append(f"delete-revision {revision['metadata']['name']}")

    async def write_status(self, sts: Object, status: Object) -> None:
        self.statuses.append(status)


def sts(replicas: int = 3, image: str = "c:1", **spec: Any) -> Object:
    return {
        "metadata": {"name": "web", "namespace": "shop", "uid": "set-1", "generation": 2},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": "web"}},
            "serviceName": "web",
            "podManagementPolicy": "OrderedReady",
            "revisionHistoryLimit": 10,
            "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"partition": 0}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "c", "image": image}]},
            },
            **spec,
        },
        "status": {},
    }


def revision_of(owner: Object, number: int) -> Object:
    made = set_revision_object(owner, STS_API, number, 0)
    made["metadata"]["uid"] = f"rev-{number}"
    return made


def running(owner: Object, ordinal: int, revision: Object, *, ready: bool = True) -> Object:
    made = new_pod(owner, STS_API, ordinal)
    made["metadata"]["uid"] = f"uid-{ordinal}"
    set_revision(made, revision["metadata"]["name"])
    made["status"] = {
        "phase": "Running",
        "conditions": [
            {
                "type": "Ready",
                "status": "True" if ready else "False",
                "lastTransitionTime": "2026-05-01T11:00:00Z",
            }
        ],
    }
    return made


def sync(
    owner: Object,
    pods: list[Object],
    revisions: list[Object],
    *,
    gate: bool = False,
    recorder: Recorder | None = None,
) -> tuple[Recorder, Object]:
    recorder = recorder or Recorder()
    control = StatefulSetControl(
        recorder, recorder, recorder.write_status, STS_API, max_unavailable_gate=gate
    )
    status = asyncio.run(control.update_stateful_set(owner, pods, revisions, NOW))
    return recorder, status


def test_ordered_ready_creates_one_pod_at_a_time_in_order() -> None:
    owner = sts(3)
    recorder, status = sync(owner, [], [])
    assert recorder.log == ["create-revision 1", "create web-0"]
    rev = revision_of(owner, 1)
    assert status["updateRevision"] == status["currentRevision"] == rev["metadata"]["name"]
    assert status["collisionCount"] == 0
    assert status["observedGeneration"] == 2
    assert recorder.created[0]["metadata"]["labels"][REVISION_LABEL] == rev["metadata"]["name"]
    # web-0 running but not ready: wait.
    recorder, _ = sync(owner, [running(owner, 0, rev, ready=False)], [rev])
    assert recorder.log == []
    # web-0 ready: web-1 next.
    recorder, status = sync(owner, [running(owner, 0, rev)], [rev])
    assert recorder.log == ["create web-1"]
    assert (status["replicas"], status["readyReplicas"]) == (1, 1)


def test_parallel_creates_every_missing_pod() -> None:
    owner = sts(4, podManagementPolicy="Parallel")
    recorder, _ = sync(owner, [], [])
    assert sorted(recorder.log) == [
        "create web-0",
        "create web-1",
        "create web-2",
        "create web-3",
        "create-revision 1",
    ]


def test_parallel_stops_at_the_first_failing_batch() -> None:
    owner = sts(4, podManagementPolicy="Parallel")
    recorder = Recorder(fail={"web-0": RuntimeError("quota")})
    with pytest.raises(RuntimeError, match="quota"):
        sync(owner, [], [], recorder=recorder)
    assert recorder.log == ["create-revision 1", "create web-0"]
    assert recorder.statuses  # the status is written even so


def test_spec_ordinals_start_names_the_pods() -> None:
    owner = sts(2, ordinals={"start": 7})
    recorder, _ = sync(owner, [], [])
    assert recorder.log[-1] == "create web-7"


def test_scale_down_removes_the_highest_ordinal_first_one_at_a_time() -> None:
    owner = sts(1)
    rev = revision_of(owner, 1)
    pods = [running(owner, n, rev) for n in range(3)]
    recorder, _ = sync(owner, pods, [rev])
    assert recorder.log == ["delete web-2"]
    terminating = clone(pods)
    terminating[2]["metadata"]["deletionTimestamp"] = "2026-05-01T11:59:00Z"
    recorder, _ = sync(owner, terminating, [rev])
    assert recorder.log == []  # OrderedReady waits for web-2 to go


def test_a_stale_claim_blocks_the_pod() -> None:
    owner = sts(1)
    recorder, _ = sync(owner, [], [], recorder=Recorder(stale={"web-0"}))
    assert recorder.log == ["create-revision 1"]


def test_a_failed_pod_is_deleted_for_recreation() -> None:
    owner = sts(2)
    rev = revision_of(owner, 1)
    failed = running(owner, 0, rev)
    failed["status"]["phase"] = "Failed"
    recorder, _ = sync(owner, [failed, running(owner, 1, rev)], [rev])
    assert recorder.log == ["delete web-0"]


def test_a_rolling_update_replaces_the_highest_ordinal_first() -> None:
    old_set = sts(3)
    old = revision_of(old_set, 1)
    new_set = sts(3, image="c:2")
    new_set["status"] = {"currentRevision": old["metadata"]["name"]}
    pods = [running(old_set, n, old) for n in range(3)]
    recorder, status = sync(new_set, pods, [old])
    assert recorder.log == ["create-revision 2", "delete web-2"]
    new_name = revision_of(new_set, 2)["metadata"]["name"]
    assert status["updateRevision"] == new_name
    assert status["currentRevision"] == old["metadata"]["name"]
    assert status["currentReplicas"] == 2  # one fewer for the pod being replaced
    new = revision_of(new_set, 2)
    # web-2 back at the new revision, but not ready: wait.
    pods[2] = running(new_set, 2, new, ready=False)
    recorder, _ = sync(new_set, pods, [old, new])
    assert recorder.log == []
    pods[2] = running(new_set, 2, new)
    recorder, status = sync(new_set, pods, [old, new])
    assert recorder.log == ["delete web-1"]
    assert status["updatedReplicas"] == 1


def test_the_partition_keeps_lower_ordinals_at_the_current_revision() -> None:
    strategy = {"type": "RollingUpdate", "rollingUpdate": {"partition": 2}}
    old_set = sts(3, updateStrategy=strategy)
    old = revision_of(old_set, 1)
    new_set = sts(3, image="c:2", updateStrategy=strategy)
    new = revision_of(new_set, 2)
    new_set["status"] = {"currentRevision": old["metadata"]["name"]}
    pods = [running(old_set, 0, old), running(old_set, 1, old), running(new_set, 2, new)]
    recorder, status = sync(new_set, pods, [old, new])
    assert recorder.log == []
    assert status["currentRevision"] == old["metadata"]["name"]  # not complete below 2
    # A missing pod below the partition comes back at the current revision.
    recorder, _ = sync(new_set, [pods[0], pods[2]], [old, new])
    assert recorder.log == ["create web-1"]
    assert recorder.created[0]["metadata"]["labels"][REVISION_LABEL] == old["metadata"]["name"]
    assert recorder.created[0]["spec"]["containers"][0]["image"] == "c:1"


def test_on_delete_leaves_old_pods_alone() -> None:
    old_set = sts(2, updateStrategy={"type": "OnDelete"})
    old = revision_of(old_set, 1)
    new_set = sts(2, image="c:2", updateStrategy={"type": "OnDelete"})
    new_set["status"] = {"currentRevision": old["metadata"]["name"]}
    pods = [running(old_set, n, old) for n in range(2)]
    recorder, status = sync(new_set, pods, [old])
    assert recorder.log == ["create-revision 2"]
    assert status["updatedReplicas"] == 0
    # A pod the user deleted comes back at the update revision.
    recorder, _ = sync(new_set, pods[:1], [old, revision_of(new_set, 2)])
    assert recorder.created[0]["spec"]["containers"][0]["image"] == "c:2"


def test_max_unavailable_replaces_several_at_once_behind_the_gate() -> None:
    strategy = {"type": "RollingUpdate", "rollingUpdate": {"partition": 0, "maxUnavailable": 2}}
    old_set = sts(4, updateStrategy=strategy)
    old = revision_of(old_set, 1)
    new_set = sts(4, image="c:2", updateStrategy=strategy)
    new = revision_of(new_set, 2)
    new_set["status"] = {"currentRevision": old["metadata"]["name"]}
    pods = [running(old_set, n, old) for n in range(4)]
    recorder, _ = sync(new_set, pods, [old, new], gate=True)
    assert recorder.log == ["delete web-3", "delete web-2"]
    recorder, _ = sync(new_set, pods, [old, new], gate=False)
    assert recorder.log == ["delete web-3"]


def test_a_finished_update_writes_the_new_current_revision() -> None:
    new_set = sts(2, image="c:2")
    new = revision_of(new_set, 2)
    new_set["status"] = {"currentRevision": "web-old", "observedGeneration": 2}
    pods = [running(new_set, n, new) for n in range(2)]
    recorder, status = sync(new_set, pods, [new])
    assert status["currentRevision"] == status["updateRevision"] == new["metadata"]["name"]
    assert status["currentReplicas"] == 2
    assert recorder.statuses == [status]


def test_going_back_to_an_old_template_renumbers_its_revision() -> None:
    first_set = sts(1)
    first = revision_of(first_set, 1)
    second = revision_of(sts(1, image="c:2"), 2)
    recorder, status = sync(first_set, [running(first_set, 0, first)], [first, second])
    assert recorder.log[0] == f"renumber {first['metadata']['name']} 3"
    assert status["updateRevision"] == first["metadata"]["name"]


def test_history_is_trimmed_to_the_limit_keeping_live_revisions() -> None:
    owner = sts(1, revisionHistoryLimit=1)
    revisions = [revision_of(sts(1, image=f"c:{n}"), n) for n in range(2, 6)]
    current = revision_of(owner, 6)
    owner["status"] = {"currentRevision": current["metadata"]["name"]}
    # The pod still runs revision 3: live, kept whatever the limit.
    pods = [running(owner, 0, revisions[1])]
    pods[0]["metadata"]["labels"][REVISION_LABEL] = revisions[1]["metadata"]["name"]
    recorder, _ = sync(owner, pods, [*revisions, current])
    deleted = [line for line in recorder.log if line.startswith("delete-revision")]
    names = [r["metadata"]["name"] for r in revisions]
    assert deleted == [f"delete-revision {names[0]}", f"delete-revision {names[2]}"]


def test_a_set_being_deleted_only_reports_status() -> None:
    owner = sts(3)
    owner["metadata"]["deletionTimestamp"] = "2026-05-01T11:00:00Z"
    rev = revision_of(owner, 1)
    recorder, status = sync(owner, [running(owner, 0, rev)], [rev])
    assert recorder.log == []
    assert status["replicas"] == 1


def test_the_revision_name_is_the_set_and_its_hash() -> None:
    owner = sts(1)
    made = revision_of(owner, 1)
    assert made["metadata"]["name"] == revision_name("web", hash_revision(made["data"], 0))

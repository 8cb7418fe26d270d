"""The TTL-after-finished controller's decisions: when a Job is due (upstream's TestTimeLeft
cases), which Job changes make a request, and what a reconcile asks of the apiserver: nothing
before the due time, a live re-read at it, and a foreground delete with preconditions only if
the live Job is due too."""

from __future__ import annotations

import asyncio
import datetime
from typing import Any

import msgspec
import pytest
from prometheus_client import REGISTRY

from bus.envelope import Envelope, EventType
from bus.subjects import ObjectRef
from kubus.kube import ApiResource, NotFoundError
from reconcilers.cache import ObjectCache
from reconcilers.controller import Context, Request, Result, TerminalError
from reconcilers.controllers.ttlafterfinished import (
    TTLAfterFinishedController,
    finish_time,
    is_finished,
    needs_cleanup,
    time_left,
)
from reconcilers.kinds import JOBS
from reconcilers.registry import IMPLEMENTED, KNOWN, select_controllers

NS = "default"
NOW = datetime.datetime(2026, 12, 3, 12, 0, 0, tzinfo=datetime.UTC)
METRIC = "ttl_after_finished_controller_job_deletion_duration_seconds_count"


def stamp(offset: float) -> str:
    return (NOW + datetime.timedelta(seconds=offset)).strftime("%Y-%m-%dT%H:%M:%SZ")


def job(
    *,
    completed: float | None = None,
    failed: float | None = None,
    ttl: int | None = None,
    rv: str = "7",
    uid: str = "uid-1",
    **meta: Any,
) -> dict[str, Any]:
    """A Job finished ``completed``/``failed`` seconds from NOW (negative: ago)."""
    conditions = [
        {"type": kind, "status": "True", "lastTransitionTime": stamp(at)}
        for kind, at in (("Complete", completed), ("Failed", failed))
        if at is not None
    ]
    spec: dict[str, Any] = {"template": {"spec": {"containers": [{"name": "c", "image": "i"}]}}}
    if ttl is not None:
        spec["ttlSecondsAfterFinished"] = ttl
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "pi", "namespace": NS, "uid": uid, "resourceVersion": rv, **meta},
        "spec": spec,
        "status": {"conditions": conditions},
    }


# --- when a Job is due --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "left"),
    [
        (job(completed=0, ttl=0), 0.0),
        (job(completed=0, ttl=10), 10.0),
        (job(completed=-10, ttl=15), 5.0),
        (job(failed=0, ttl=0), 0.0),
        (job(failed=0, ttl=10), 10.0),
        (job(failed=-10, ttl=15), 5.0),
    ],
    ids=[
        "complete-0s",
        "complete-10s",
        "complete-10s-ago",
        "failed-0s",
        "failed-10s",
        "failed-10s-ago",
    ],
)
def test_time_left_counts_from_the_finished_condition(body: dict[str, Any], left: float) -> None:
    remaining, expire_at = time_left(body, NOW)
    assert remaining == left
    assert expire_at == NOW + datetime.timedelta(seconds=left)


@pytest.mark.parametrize(
    "body",
    [job(ttl=100), job(completed=0), job(failed=0)],
    ids=["unfinished", "complete-no-ttl", "failed-no-ttl"],
)
def test_a_job_unfinished_or_without_ttl_is_never_cleaned_up(body: dict[str, Any]) -> None:
    assert not needs_cleanup(body)
    with pytest.raises(ValueError, match="should not be cleaned up"):
        time_left(body, NOW)


def test_only_a_true_complete_or_failed_condition_finishes_a_job() -> None:
    body = job(ttl=0)
    body["status"]["conditions"] = [
        {"type": "Complete", "status": "False", "lastTransitionTime": stamp(0)},
        {"type": "Suspended", "status": "True", "lastTransitionTime": stamp(0)},
    ]
    assert not is_finished(body)
    body["status"]["conditions"].append({"type": "Failed", "status": "True"})
    assert is_finished(body) and needs_cleanup(body)
    # Finished, but when is unknown: the same object never gets better by retrying.
    with pytest.raises(TerminalError, match="unable to find the time"):
        finish_time(body)


def test_a_job_finished_in_the_future_waits_and_says_why(
    caplog: pytest.LogCaptureFixture,
) -> None:
    remaining, _ = time_left(job(completed=30, ttl=0), NOW)
    assert remaining == 30.0
    assert "Found Job finished in the future" in caplog.text


# --- which changes make a request ---------------------------------------------------------


def test_only_finished_jobs_with_a_ttl_and_not_being_deleted_are_queued() -> None:
    controller = TTLAfterFinishedController(context(FakeKube()))

    def queued(body: dict[str, Any] | None, old: dict[str, Any] | None = None) -> list[Request]:
        return list(controller.requests_for(JOBS, body, old))

    assert queued(job(completed=0, ttl=60)) == [Request(NS, "pi")]
    assert queued(job(failed=0, ttl=0), job(ttl=0)) == [Request(NS, "pi")]
    assert queued(job(ttl=60)) == []
    assert queued(job(completed=0)) == []
    assert queued(job(completed=0, ttl=0, deletionTimestamp=stamp(0))) == []
    assert queued(None, job(completed=0, ttl=0)) == []


# --- reconciles ---------------------------------------------------------------------------


class FakeKube:
    """The live GET and the DELETE; ``live`` None answers 404."""

    def __init__(self, live: dict[str, Any] | None = None, *, delete_gone: bool = False) -> None:
        self.live = live
        self.delete_gone = delete_gone
        self.gets: list[tuple[str | None, str]] = []
        self.deletes: list[tuple[str | None, str, dict[str, Any]]] = []

    async def get(self, resource: ApiResource, namespace: str | None, name: str) -> Any:
        assert resource.name == "jobs"
        self.gets.append((namespace, name))
        if self.live is None:
            raise NotFoundError(404, "NotFound", f'jobs.batch "{name}" not found')
        return self.live

    async def delete(
        self, resource: ApiResource, namespace: str | None, name: str, **options: Any
    ) -> dict[str, Any]:
        self.deletes.append((namespace, name, options))
        if self.delete_gone:
            raise NotFoundError(404, "NotFound", f'jobs.batch "{name}" not found')
        return {}


def context(kube: FakeKube, cache: ObjectCache | None = None) -> Context:
    return Context(
        cache=cache if cache is not None else ObjectCache(),
        kube=kube,  # type: ignore[arg-type]
        apis={JOBS: ApiResource("batch", "v1", "jobs", "Job", True, frozenset())},
        events=None,  # type: ignore[arg-type]
        tracer=None,
    )


def reconcile(cached: dict[str, Any] | None, kube: FakeKube) -> Result:
    cache = ObjectCache()
    if cached is not None:
        envelope = Envelope(
            subject="",
            sequence=1,
            event=EventType.MODIFIED,
            resource_version=cached["metadata"]["resourceVersion"],
            uid=cached["metadata"]["uid"],
            payload=msgspec.json.encode(cached),
        )
        cache.apply(0, ObjectRef(JOBS, NS, "pi"), envelope)
    controller = TTLAfterFinishedController(context(kube, cache), clock=lambda: NOW)
    return asyncio.run(controller.reconcile(Request(NS, "pi")))


def deletions() -> float:
    return REGISTRY.get_sample_value(METRIC) or 0.0


def test_a_job_not_yet_due_waits_for_its_due_time_without_asking_the_apiserver() -> None:
    kube = FakeKube(job(completed=-10, ttl=0))
    assert reconcile(job(completed=-10, ttl=100), kube) == Result(requeue_after=90.0)
    assert kube.gets == [] and kube.deletes == []


def test_a_due_job_is_read_live_and_deleted_in_the_foreground_with_preconditions() -> None:
    before = deletions()
    live = job(completed=-60, ttl=30, rv="9")
    kube = FakeKube(live)
    assert reconcile(job(completed=-60, ttl=30), kube) == Result()
    assert kube.gets == [(NS, "pi")]
    assert kube.deletes == [
        (NS, "pi", {"uid": "uid-1", "resource_version": "9", "propagation": "Foreground"})
    ]
    assert deletions() == before + 1


def test_a_ttl_removed_or_extended_live_saves_the_job() -> None:
    """Upstream's reason for the live read: the cache may not have seen the edit yet."""
    removed = FakeKube(job(completed=-60))
    assert reconcile(job(completed=-60, ttl=0), removed) == Result()
    extended = FakeKube(job(completed=-60, ttl=3600))
    assert reconcile(job(completed=-60, ttl=0), extended) == Result(requeue_after=3540.0)
    being_deleted = FakeKube(job(completed=-60, ttl=0, deletionTimestamp=stamp(0)))
    assert reconcile(job(completed=-60, ttl=0), being_deleted) == Result()
    assert removed.deletes == extended.deletes == being_deleted.deletes == []


def test_a_new_job_under_the_same_name_is_judged_on_its_own_terms() -> None:
    kube = FakeKube(job(ttl=0, uid="uid-2"))  # re-created, not finished yet
    assert reconcile(job(completed=-60, ttl=0), kube) == Result()
    assert kube.deletes == []
    finished = FakeKube(job(completed=-1, ttl=0, uid="uid-2"))
    reconcile(job(completed=-60, ttl=0), finished)
    assert [options["uid"] for _, _, options in finished.deletes] == ["uid-2"]


def test_a_job_gone_from_the_cache_or_the_apiserver_is_done() -> None:
    nothing = FakeKube(job(completed=-60, ttl=0))
    assert reconcile(None, nothing) == Result()
    assert nothing.gets == []
    gone_live = FakeKube(None)
    assert reconcile(job(completed=-60, ttl=0), gone_live) == Result()
    assert gone_live.deletes == []
    gone_at_delete = FakeKube(job(completed=-60, ttl=0), delete_gone=True)
    before = deletions()
    assert reconcile(job(completed=-60, ttl=0), gone_at_delete) == Result()
    assert len(gone_at_delete.deletes) == 1 and deletions() == before


def test_a_finished_job_without_a_finish_time_is_a_terminal_error() -> None:
    body = job(ttl=0)
    body["status"]["conditions"] = [{"type": "Complete", "status": "True"}]
    kube = FakeKube(body)
    with pytest.raises(TerminalError):
        reconcile(body, kube)
    assert kube.deletes == []


# --- declarations -------------------------------------------------------------------------


def test_it_is_kcm_s_controller_with_its_flag_and_default() -> None:
    controller = IMPLEMENTED["ttl-after-finished-controller"]
    assert controller is TTLAfterFinishedController
    assert KNOWN[controller.name].aliases == ("ttl-after-finished",)
    assert controller.concurrency_flag == "concurrent-ttl-after-finished-syncs"
    assert controller.default_concurrency == 5
    assert controller.enabled_by_default
    assert select_controllers(["ttl-after-finished"]) == (TTLAfterFinishedController,)
    assert TTLAfterFinishedController in select_controllers(["*"])

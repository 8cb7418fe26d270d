"""The worker loop and acknowledgement bookkeeping, with a plain controller and no servers.

What a user of a controller relies on: a failed key is retried with backoff until the
controller's retry policy drops it; a dropped or terminal key acknowledges its deliveries
(nothing waits for ever); a failure in a terminating namespace is not retried; a delivery is
acknowledged only after every request it made has been reconciled; a request of a partition
this process does not own is never reconciled and its deliveries are left unacknowledged.
"""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import pytest

from bus.envelope import Envelope, EventType
from bus.subjects import ResourceType
from kubus.kube.errors import ConflictError, KubeApiError
from reconcilers.acks import AckTracker
from reconcilers.controller import (
    ControllerBase,
    Request,
    Result,
    RetryPolicy,
    TerminalError,
)
from reconcilers.worker import InFlight, Worker
from reconcilers.workqueue import ItemExponentialFailureRateLimiter, WorkQueue
from tests.support.wait import wait_until

CONFIGMAPS = ResourceType("", "v1", "configmaps")
KEY = Request("ns", "a")


@dataclass
class _Metadata:
    timestamp: datetime.datetime | None = None
    num_delivered: int = 1


@dataclass
class _Message:
    """A delivery as the tracker sees one: something to acknowledge, with metadata."""

    acked: int = 0
    metadata: _Metadata = field(default_factory=_Metadata)

    async def ack(self) -> None:
        self.acked += 1


class _Plain(ControllerBase):
    name: ClassVar[str] = "plain-controller"
    primary: ClassVar[ResourceType] = CONFIGMAPS
    reads: ClassVar[tuple[ResourceType, ...]] = (CONFIGMAPS,)
    concurrency_flag: ClassVar[str] = "concurrent-plain-syncs"

    def __init__(self, outcomes: list[Exception | Result]) -> None:
        self.outcomes = outcomes
        self.calls: list[Request] = []

    def requests_for(self, resource: ResourceType, obj: Any, old: Any) -> Iterable[Request]:
        return [Request.of(obj or old)]

    async def reconcile(self, request: Request) -> Result:
        self.calls.append(request)
        outcome = self.outcomes.pop(0) if self.outcomes else Result()
        if isinstance(outcome, Exception):
            raise outcome
        return outcome


class _Retrying(_Plain):
    retry: ClassVar[RetryPolicy] = RetryPolicy(max_retries=2)


def _envelope() -> Envelope:
    return Envelope(
        subject="kubus.obj.1.core.v1.configmaps.ns.a",
        sequence=1,
        event=EventType.MODIFIED,
        resource_version="7",
        uid="u",
        payload=b"{}",
    )


def _worker(
    controller: _Plain, *, owned: Callable[[Request], Hashable | None] = lambda r: 1
) -> Worker:
    queue: WorkQueue[Request] = WorkQueue(
        "plain", rate_limiter=ItemExponentialFailureRateLimiter(base=0.001, cap=0.01)
    )
    return Worker(
        name=controller.name,
        controller=controller,  # type: ignore[arg-type]  # built without a Context
        queue=queue,
        acks=AckTracker(),
        responsible=owned,
        in_flight=InFlight(),
        member="m1",
    )


async def _until(condition: Callable[[], bool], what: str) -> None:
    await wait_until(condition, within=5, what=what, interval=0.001)


async def _run(worker: Worker, scenario: Callable[[], Any]) -> None:
    loop = asyncio.get_running_loop().create_task(worker.run())
    try:
        await scenario()
    finally:
        worker.queue.shut_down()
        await loop


def test_a_delivery_is_acknowledged_once_every_request_it_made_is_reconciled() -> None:
    controller = _Plain([])
    worker = _worker(controller)
    message = _Message()
    other = Request("ns", "b")

    async def scenario() -> None:
        worker.acks.track(message, _envelope(), [(worker.name, KEY), (worker.name, other)])
        worker.queue.add(KEY)
        await _until(lambda: controller.calls == [KEY], "first reconcile")
        assert message.acked == 0  # one of its two requests is still to come
        worker.queue.add(other)
        await _until(lambda: message.acked == 1, "the ack")

    asyncio.run(_run(worker, scenario))
    assert message.acked == 1


def test_a_failed_key_is_retried_with_backoff_and_acknowledged_when_it_succeeds() -> None:
    controller = _Plain([RuntimeError("boom"), ConflictError(409, "Conflict", "stale")])
    worker = _worker(controller)
    message = _Message()

    async def scenario() -> None:
        worker.acks.track(message, _envelope(), [(worker.name, KEY)])
        worker.queue.add(KEY)
        await _until(lambda: message.acked == 1, "the ack after two failures")

    asyncio.run(_run(worker, scenario))
    assert controller.calls == [KEY, KEY, KEY]
    assert worker.queue.num_requeues(KEY) == 0  # forgotten after the success


def test_max_retries_drops_the_key_until_its_next_change_and_settles_its_deliveries() -> None:
    controller = _Retrying([RuntimeError(f"failure {n}") for n in range(10)])
    worker = _worker(controller)
    message = _Message()

    async def scenario() -> None:
        worker.acks.track(message, _envelope(), [(worker.name, KEY)])
        worker.queue.add(KEY)
        await _until(lambda: message.acked == 1, "dropped and acknowledged")
        await asyncio.sleep(0.05)  # the backoff cap is 10 ms: a retry would have come
        assert len(controller.calls) == 3  # the first try and max_retries=2 retries
        worker.queue.add(KEY)  # the next change brings it back
        await _until(lambda: len(controller.calls) == 4, "reconciled again on a change")

    asyncio.run(_run(worker, scenario))


def test_terminal_errors_and_terminating_namespaces_are_not_retried() -> None:
    terminating = KubeApiError(
        403, "Forbidden", "namespace ns is being terminated", ("NamespaceTerminating",)
    )
    for failure in (TerminalError("bad spec"), terminating):
        controller = _Plain([failure])
        worker = _worker(controller)
        message = _Message()

        async def scenario(
            worker: Worker = worker, message: _Message = message, controller: _Plain = controller
        ) -> None:
            worker.acks.track(message, _envelope(), [(worker.name, KEY)])
            worker.queue.add(KEY)
            await _until(lambda: message.acked == 1, "acknowledged without retry")
            await asyncio.sleep(0.05)
            assert controller.calls == [KEY]

        asyncio.run(_run(worker, scenario))


def test_a_request_of_a_partition_not_owned_here_is_not_reconciled_nor_acknowledged() -> None:
    controller = _Plain([])
    worker = _worker(controller, owned=lambda request: None)
    message = _Message()

    async def scenario() -> None:
        worker.acks.track(message, _envelope(), [(worker.name, KEY)])
        worker.queue.add(KEY)
        await _until(lambda: len(worker.acks) == 0, "the delivery forgotten")

    asyncio.run(_run(worker, scenario))
    assert controller.calls == []
    assert message.acked == 0  # the partition's next owner gets it from the consumer


def test_requeue_after_brings_the_key_back() -> None:
    controller = _Plain([Result(requeue_after=0.01)])
    worker = _worker(controller)

    async def scenario() -> None:
        worker.queue.add(KEY)
        await _until(lambda: len(controller.calls) == 2, "the requeue")

    asyncio.run(_run(worker, scenario))


def test_in_flight_reports_idle_only_when_every_reconcile_of_a_shard_ended() -> None:
    async def scenario() -> None:
        in_flight = InFlight()
        in_flight.enter(3)
        in_flight.enter(3)
        waiting = asyncio.get_running_loop().create_task(in_flight.idle(3))
        await in_flight.leave(3)
        await asyncio.sleep(0)
        assert not waiting.done()
        await in_flight.leave(3)
        await asyncio.wait_for(waiting, timeout=1)

    asyncio.run(scenario())


@pytest.mark.parametrize("fail_times", [1, 3])
def test_supervised_work_is_restarted_with_backoff_and_reports_down_meanwhile(
    fail_times: int,
) -> None:
    from reconcilers.supervisor import Supervised, stop_task

    runs: list[int] = []
    seen_down: list[bool] = []

    class _Work:
        def __init__(self) -> None:
            self.stopped = asyncio.Event()

        def stop(self) -> None:
            self.stopped.set()

        async def run(self) -> None:
            runs.append(len(runs))
            if len(runs) <= fail_times:
                raise RuntimeError("consumer gone")
            await self.stopped.wait()

    async def scenario() -> None:
        work = Supervised("partition 3", _Work, backoff_min=0.01, backoff_max=0.02)
        task = asyncio.get_running_loop().create_task(work.run())
        await _until(lambda: work.down_since is not None, "down after the failure")
        seen_down.append(True)
        await _until(lambda: len(runs) == fail_times + 1 and work.down_since is None, "restarted")
        assert work.restarts == fail_times
        await stop_task(work, task)
        assert task.done()

    asyncio.run(scenario())
    assert seen_down == [True]

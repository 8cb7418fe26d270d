"""The work queue keeps client-go's promises: dedupe, one worker per key, delays, backoff."""

from __future__ import annotations

import asyncio

import pytest

from reconcilers.workqueue import (
    BucketRateLimiter,
    ItemExponentialFailureRateLimiter,
    ShutDown,
    WorkQueue,
)


def run(coroutine: object) -> None:
    asyncio.run(coroutine)  # type: ignore[arg-type]


def test_adding_a_dirty_key_again_is_a_no_op() -> None:
    async def scenario() -> None:
        queue: WorkQueue[str] = WorkQueue("t")
        for key in ("a", "b", "a", "a"):
            queue.add(key)
        assert len(queue) == 2
        assert [await queue.get(), await queue.get()] == ["a", "b"]

    run(scenario())


def test_a_key_is_never_handed_out_twice_at_once() -> None:
    async def scenario() -> None:
        queue: WorkQueue[str] = WorkQueue("t")
        queue.add("a")
        assert await queue.get() == "a"
        queue.add("a")  # changed while processing: dirty, but not queued
        assert len(queue) == 0
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(queue.get(), timeout=0.05)
        queue.done("a")  # now it is queued again
        assert len(queue) == 1
        assert await queue.get() == "a"
        queue.done("a")
        assert len(queue) == 0

    run(scenario())


def test_add_after_keeps_the_earliest_time() -> None:
    async def scenario() -> None:
        queue: WorkQueue[str] = WorkQueue("t")
        loop = asyncio.get_running_loop()
        started = loop.time()
        queue.add_after("a", 5.0)
        queue.add_after("a", 0.05)
        queue.add_after("a", 3.0)
        assert await asyncio.wait_for(queue.get(), timeout=1) == "a"
        assert loop.time() - started < 1

    run(scenario())


def test_exponential_backoff_per_key_and_forget() -> None:
    limiter: ItemExponentialFailureRateLimiter[str] = ItemExponentialFailureRateLimiter(
        base=0.005, cap=1000
    )
    assert [limiter.when("a") for _ in range(4)] == [0.005, 0.01, 0.02, 0.04]
    assert limiter.when("b") == 0.005
    assert limiter.retries("a") == 4
    limiter.forget("a")
    assert limiter.retries("a") == 0
    assert limiter.when("a") == 0.005
    for _ in range(40):
        limiter.when("c")
    assert limiter.when("c") == 1000


def test_bucket_allows_a_burst_then_the_rate() -> None:
    bucket: BucketRateLimiter[str] = BucketRateLimiter(qps=10, burst=3)
    assert [bucket.when("x") for _ in range(3)] == [0, 0, 0]
    assert bucket.when("x") == pytest.approx(0.1, abs=0.02)


def test_shutdown_wakes_getters_and_drain_waits_for_processing() -> None:
    async def scenario() -> None:
        queue: WorkQueue[str] = WorkQueue("t")
        waiting = asyncio.create_task(queue.get())
        await asyncio.sleep(0)
        queue.add("a")
        assert await waiting == "a"
        blocked = asyncio.create_task(queue.get())
        await asyncio.sleep(0)
        draining = asyncio.create_task(queue.shut_down_with_drain())
        with pytest.raises(ShutDown):
            await blocked
        await asyncio.sleep(0.01)
        assert not draining.done()  # "a" is still processing
        queue.done("a")
        await asyncio.wait_for(draining, timeout=1)
        queue.add("b")  # ignored once shut down
        assert len(queue) == 0

    run(scenario())


def test_a_cancelled_getter_does_not_swallow_a_key() -> None:
    async def scenario() -> None:
        queue: WorkQueue[str] = WorkQueue("t")
        first = asyncio.create_task(queue.get())
        second = asyncio.create_task(queue.get())
        await asyncio.sleep(0)
        queue.add("a")
        first.cancel()
        results = await asyncio.gather(first, second, return_exceptions=True)
        assert results[1] == "a" or results[0] == "a"

    run(scenario())

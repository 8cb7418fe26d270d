"""Stopping a partition's runner ends it even when a cancellation is swallowed.

CPython 3.11's asyncio.wait_for can drop a cancellation that arrives as the awaited future
completes; nats-py's fetch uses it. A runner that survived its stop kept pulling the pool's
consumer after its partition had moved to another process (found by `kubus bench`).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, cast

from reconcilers.supervisor import stop_task


class _Runner:
    def __init__(self) -> None:
        self.stopped = False

    def stop(self) -> None:
        self.stopped = True


def test_a_runner_that_swallows_cancellations_still_ends() -> None:
    async def scenario() -> int:
        runner = _Runner()
        turns = 0

        async def swallowing() -> None:
            nonlocal turns
            while not runner.stopped or turns == 0:
                turns += 1
                # Swallowed, as by a wait_for that lost the race.
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.sleep(0.01)

        task = asyncio.get_running_loop().create_task(swallowing())
        await asyncio.sleep(0.05)
        await asyncio.wait_for(stop_task(cast(Any, runner), task), timeout=5)
        assert task.done()
        return turns

    assert asyncio.run(scenario()) > 0

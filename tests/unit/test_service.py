"""kubus.service: what a service does on SIGTERM, a second signal, and SIGUSR1."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import Callable

import pytest

from kubus.service import run_service


class _OnRecord(logging.Handler):
    def __init__(self, call: Callable[[], None]) -> None:
        super().__init__()
        self._call = call

    def emit(self, record: logging.LogRecord) -> None:
        self._call()


def test_sigterm_lets_the_service_finish_in_order() -> None:
    finished: list[str] = []

    async def service(stop: asyncio.Event, serving: asyncio.Event) -> None:
        serving.set()
        await stop.wait()
        await asyncio.sleep(0.05)  # its orderly shutdown
        finished.append("in order")

    async def main() -> None:
        running = asyncio.ensure_future(run_service(service))
        await asyncio.sleep(0.1)
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.wait_for(running, timeout=5)

    asyncio.run(main())
    assert finished == ["in order"]


def test_a_shutdown_past_its_grace_is_cancelled() -> None:
    cancelled: list[bool] = []

    async def stuck(stop: asyncio.Event, serving: asyncio.Event) -> None:
        serving.set()
        await stop.wait()
        try:
            await asyncio.sleep(3600)  # a drain that never ends
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    async def main() -> float:
        running = asyncio.ensure_future(run_service(stuck, grace=0.3))
        await asyncio.sleep(0.1)
        began = time.monotonic()
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.wait_for(running, timeout=5)
        return time.monotonic() - began

    took = asyncio.run(main())
    assert cancelled == [True]
    assert took >= 0.3


def test_sigusr1_logs_where_every_task_waits_and_the_service_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def waits_on_a_named_thing(forever: asyncio.Event) -> None:
        await forever.wait()

    async def service(stop: asyncio.Event, serving: asyncio.Event) -> None:
        forever = asyncio.Event()
        helper = asyncio.create_task(waits_on_a_named_thing(forever), name="the-helper")
        serving.set()
        await stop.wait()
        helper.cancel()

    async def main() -> None:
        running = asyncio.ensure_future(run_service(service))
        await asyncio.sleep(0.1)
        logged = asyncio.Event()
        handler = _OnRecord(logged.set)
        logging.getLogger("kubus.service").addHandler(handler)
        try:
            os.kill(os.getpid(), signal.SIGUSR1)
            await asyncio.wait_for(logged.wait(), timeout=5)
        finally:
            logging.getLogger("kubus.service").removeHandler(handler)
        assert not running.done()  # a dump does not stop it
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.wait_for(running, timeout=5)

    with caplog.at_level(logging.WARNING, logger="kubus.service"):
        asyncio.run(main())
    assert "SIGUSR1:" in caplog.text
    assert "waits_on_a_named_thing" in caplog.text
    assert "the-helper" in caplog.text

"""Waiting on a condition with a deadline: the only way tests here wait."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_for(
    condition: Callable[[], T | None], *, timeout: float, what: str, interval: float = 0.2
) -> T:
    """Poll ``condition`` until it returns something truthy; fail naming ``what`` otherwise."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = condition()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


async def wait_until(
    condition: Callable[[], T | None], *, within: float, what: str, interval: float = 0.02
) -> T:
    """:func:`wait_for` inside an event loop: the loop (and the code under test) runs meanwhile."""
    deadline = time.monotonic() + within
    last: T | None = None
    while time.monotonic() < deadline:
        last = condition()
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out after {within:g}s waiting for {what} (last: {last!r})")

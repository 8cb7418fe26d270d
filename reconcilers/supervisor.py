"""Long-running loops of a reconciler process, restarted with backoff when they fail.

A partition's runner, a cache follower or a global controller's cache may fail (NATS restarted
and took the consumer along, a bug). The process must neither carry on as if nothing happened
(a crashed runner that keeps its lease starves its partition while the process looks healthy)
nor die for one partition. A :class:`Supervised` loop restarts the work with exponential
backoff, and reports itself down meanwhile, which makes the process not ready.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any, Final, NamedTuple, Protocol

from reconcilers import metrics

__all__ = [
    "Running",
    "Stoppable",
    "Supervised",
    "first_replay",
    "serving",
    "stop_task",
    "supervise",
]

log = logging.getLogger(__name__)

_BACKOFF_MIN: Final = 1.0
_BACKOFF_MAX: Final = 30.0
_HEALTHY_AFTER: Final = 60.0  # a run that lasted this long resets the backoff


class Stoppable(Protocol):
    """One run of supervised work: ``run`` it, ``stop`` it (a flag checked at each turn)."""

    def stop(self) -> None: ...

    async def run(self) -> None: ...


class Supervised:
    def __init__(
        self,
        name: str,
        make: Callable[[], Stoppable],
        *,
        on_restart: Callable[[], Coroutine[Any, Any, None]] | None = None,
        backoff_min: float = _BACKOFF_MIN,
        backoff_max: float = _BACKOFF_MAX,
    ) -> None:
        self.name = name
        self._make = make
        self._on_restart = on_restart
        self._backoff_min = backoff_min
        self._backoff_max = backoff_max
        self._stopped = False
        self.current: Stoppable | None = None
        self.down_since: float | None = None  # wall-clock time of the last failure, if down
        self.last_error: str | None = None
        self.restarts = 0

    def stop(self) -> None:
        self._stopped = True
        if self.current is not None:
            self.current.stop()

    async def run(self) -> None:
        delay = self._backoff_min
        while not self._stopped:
            self.current = self._make()
            started = time.monotonic()
            try:
                await self.current.run()
                return  # ended by stop()
            except asyncio.CancelledError:
                raise
            except Exception as error:
                if self._stopped:
                    return
                if time.monotonic() - started > _HEALTHY_AFTER:
                    delay = self._backoff_min
                self.down_since = time.time()
                self.last_error = f"{type(error).__name__}: {error}"
                log.error(
                    "%s failed (%s); restarting in %.0fs",
                    self.name,
                    self.last_error,
                    delay,
                    exc_info=not isinstance(error, OSError | TimeoutError),
                )
            await asyncio.sleep(delay)
            delay = min(self._backoff_max, delay * 2)
            if self._stopped:
                return
            self.restarts += 1
            metrics.RUNNER_RESTARTS.labels(self.name).inc()
            if self._on_restart is not None:
                await self._on_restart()
            self.down_since = None


async def stop_task(work: Supervised | Stoppable, task: asyncio.Task[None]) -> None:
    """Stop supervised work and wait until its task has ended, cancelling again if a
    cancellation was swallowed (CPython 3.11's wait_for inside nats-py's fetch can)."""
    work.stop()
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=1.0)
    if not task.cancelled():
        task.exception()  # mark it retrieved: the supervisor logged it already


class Running(NamedTuple):
    """Supervised work and the task running it."""

    work: Supervised
    task: asyncio.Task[None]


def supervise(
    name: str,
    make: Callable[[], Stoppable],
    *,
    on_restart: Callable[[], Coroutine[Any, Any, None]] | None = None,
) -> Running:
    """Start ``make()``'s work under a :class:`Supervised` loop, as a task of the loop."""
    work = Supervised(name, make, on_restart=on_restart)
    return Running(work, asyncio.get_running_loop().create_task(work.run()))


def serving(running: Running) -> bool:
    """Not down, and the current run has replayed its cache (a runner's or follower's
    ``replayed`` event)."""
    work = running.work
    replayed = getattr(work.current, "replayed", None)
    return (
        work.down_since is None
        and not running.task.done()
        and replayed is not None
        and replayed.is_set()
    )


async def first_replay(running: Running, stop: asyncio.Event) -> None:
    """Wait until the supervised work has replayed once (or the process is stopping)."""
    while not stop.is_set() and not serving(running):
        if running.task.done():
            running.task.result()  # surfaces a bug; the supervisor never ends on its own
            return
        await asyncio.sleep(0.05)

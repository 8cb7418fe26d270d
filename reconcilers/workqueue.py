"""A work queue with client-go's semantics, for asyncio.

The invariants, as in client-go's ``workqueue``:

- ``dirty``: keys that need processing. Adding a dirty key is a no-op (dedupe).
- ``processing``: keys handed out by :meth:`WorkQueue.get` and not yet :meth:`done`. A key is
  never handed out twice at once: adding a key that is processing marks it dirty only, and
  :meth:`done` puts it back in the queue if it became dirty meanwhile.
- ``queue``: the dirty keys not processing, in the order they became dirty.

On top: :meth:`add_after` (delayed add; the earliest pending time for a key wins),
:meth:`add_rate_limited` (delay from a :class:`RateLimiter`), :meth:`forget` (clears a key's
backoff only), and :meth:`shut_down` (wakes every waiter; ``drain`` waits for processing keys).
"""

from __future__ import annotations

import asyncio
import collections
import math
import time
from collections.abc import Hashable
from typing import Generic, Protocol, TypeVar

__all__ = [
    "BucketRateLimiter",
    "ItemExponentialFailureRateLimiter",
    "MaxOfRateLimiter",
    "RateLimiter",
    "ShutDown",
    "WorkQueue",
    "default_controller_rate_limiter",
]

K = TypeVar("K", bound=Hashable)


class ShutDown(Exception):
    """Raised by :meth:`WorkQueue.get` once the queue is shut down and empty."""


class RateLimiter(Protocol[K]):  # type: ignore[misc]
    def when(self, key: K) -> float:
        """Seconds to wait before ``key`` may be retried (and count the retry)."""

    def forget(self, key: K) -> None: ...

    def retries(self, key: K) -> int: ...


class ItemExponentialFailureRateLimiter(Generic[K]):
    """base * 2^failures per key, capped; client-go's default is 5 ms and 1000 s."""

    def __init__(self, base: float = 0.005, cap: float = 1000.0) -> None:
        self._base = base
        self._cap = cap
        self._failures: dict[K, int] = {}

    def when(self, key: K) -> float:
        failures = self._failures.get(key, 0)
        self._failures[key] = failures + 1
        if failures > 62:
            return self._cap
        return min(self._cap, self._base * math.pow(2, failures))

    def forget(self, key: K) -> None:
        self._failures.pop(key, None)

    def retries(self, key: K) -> int:
        return self._failures.get(key, 0)


class BucketRateLimiter(Generic[K]):
    """An overall token bucket (client-go: 10 qps, burst 100), shared by all keys."""

    def __init__(self, qps: float = 10.0, burst: int = 100) -> None:
        self._qps = qps
        self._burst = burst
        self._tokens = float(burst)
        self._last = time.monotonic()

    def when(self, key: K) -> float:
        now = time.monotonic()
        self._tokens = min(self._burst, self._tokens + (now - self._last) * self._qps)
        self._last = now
        self._tokens -= 1
        return 0.0 if self._tokens >= 0 else -self._tokens / self._qps

    def forget(self, key: K) -> None:
        pass

    def retries(self, key: K) -> int:
        return 0


class MaxOfRateLimiter(Generic[K]):
    def __init__(self, *limiters: RateLimiter[K]) -> None:
        self._limiters = limiters

    def when(self, key: K) -> float:
        return max(limiter.when(key) for limiter in self._limiters)

    def forget(self, key: K) -> None:
        for limiter in self._limiters:
            limiter.forget(key)

    def retries(self, key: K) -> int:
        return max(limiter.retries(key) for limiter in self._limiters)


def default_controller_rate_limiter() -> MaxOfRateLimiter[K]:
    """client-go's DefaultControllerRateLimiter: per-item 5 ms..1000 s, overall 10 qps/100."""
    return MaxOfRateLimiter(ItemExponentialFailureRateLimiter(), BucketRateLimiter())


class WorkQueue(Generic[K]):
    def __init__(self, name: str, rate_limiter: RateLimiter[K] | None = None) -> None:
        self.name = name
        self._limiter: RateLimiter[K] = rate_limiter or default_controller_rate_limiter()
        self._queue: collections.deque[K] = collections.deque()
        self._dirty: set[K] = set()
        self._processing: set[K] = set()
        self._waiting: dict[K, tuple[float, asyncio.TimerHandle]] = {}
        self._getters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._idle = asyncio.Event()
        self._idle.set()
        self._shutting_down = False
        self._added_at: dict[K, float] = {}

    # --- the basic queue ----------------------------------------------------------------

    def add(self, key: K) -> None:
        if self._shutting_down or key in self._dirty:
            return
        self._dirty.add(key)
        self._added_at.setdefault(key, time.monotonic())
        if key in self._processing:
            return
        self._queue.append(key)
        self._wake_one()

    async def get(self) -> K:
        """The next key; it is processing until :meth:`done`. Raises ShutDown when over."""
        while not self._queue:
            if self._shutting_down:
                raise ShutDown(self.name)
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._getters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                # Hand a wake-up we may have consumed to the next getter.
                if waiter.done() and not waiter.cancelled() and self._queue:
                    self._wake_one()
                raise
        key = self._queue.popleft()
        self._processing.add(key)
        self._dirty.discard(key)
        self._idle.clear()
        return key

    def done(self, key: K) -> None:
        self._processing.discard(key)
        if key in self._dirty:
            self._queue.append(key)
            self._wake_one()
        else:
            self._added_at.pop(key, None)
        if not self._processing:
            self._idle.set()

    def queued_since(self, key: K) -> float | None:
        """When the key became dirty (monotonic), for queue-latency metrics."""
        return self._added_at.get(key)

    def __len__(self) -> int:
        return len(self._queue)

    @property
    def processing(self) -> int:
        return len(self._processing)

    # --- delaying -------------------------------------------------------------------------

    def add_after(self, key: K, delay: float) -> None:
        if self._shutting_down:
            return
        if delay <= 0:
            self.add(key)
            return
        loop = asyncio.get_running_loop()
        ready_at = loop.time() + delay
        pending = self._waiting.get(key)
        if pending is not None:
            if pending[0] <= ready_at:
                return  # an earlier time already waits: the earliest wins
            pending[1].cancel()
        handle = loop.call_at(ready_at, self._ready, key)
        self._waiting[key] = (ready_at, handle)

    def _ready(self, key: K) -> None:
        self._waiting.pop(key, None)
        self.add(key)

    # --- rate limiting --------------------------------------------------------------------

    def add_rate_limited(self, key: K) -> None:
        self.add_after(key, self._limiter.when(key))

    def forget(self, key: K) -> None:
        self._limiter.forget(key)

    def num_requeues(self, key: K) -> int:
        return self._limiter.retries(key)

    # --- shutting down --------------------------------------------------------------------

    def shut_down(self) -> None:
        self._shutting_down = True
        for _ready_at, handle in self._waiting.values():
            handle.cancel()
        self._waiting.clear()
        while self._getters:
            getter = self._getters.popleft()
            if not getter.done():
                getter.set_result(None)

    async def shut_down_with_drain(self) -> None:
        """Shut down, then wait until every processing key is done."""
        self.shut_down()
        await self._idle.wait()

    @property
    def shutting_down(self) -> bool:
        return self._shutting_down

    def _wake_one(self) -> None:
        while self._getters:
            getter = self._getters.popleft()
            if not getter.done():
                getter.set_result(None)
                return

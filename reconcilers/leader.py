"""Leader election for a pool's global controllers: one fenced NATS KV lease per controller.

A ``Scope.GLOBAL`` controller sees the whole cluster, so exactly one member of a pool may run it
at a time. Each one has its own key, named after the controller, in the pool's
``<prefix>-<pool>-leaders`` bucket (TTL = the lease duration), held with a
:class:`reconcilers.lease.Lease` and the same timing as the partition leases:

- a candidate tries to take the key every retry period;
- the leader renews it every retry period and, if no renewal got through for the renew
  deadline, gives it up before the TTL can expire (the fence);
- leading begins with ``on_started_leading(name)`` and ends with ``on_stopped_leading(name)``,
  both awaited; renewals go on while they run. Handing back (on cancellation) stops the work
  first, with the lease still held and renewed, then deletes the key, so another member
  takes over at its next try instead of after the TTL.

One key per controller, not one per pool: each controller fails over on its own, and global
controllers may lead from different members (kube-controller-manager runs all of them in its
single leader). There is no balancing: whoever tries first takes a free key.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from nats.js.kv import KeyValue

from reconcilers import metrics
from reconcilers.lease import Lease, LeaseTiming, Renewal

__all__ = ["LeaderElection", "leaders_bucket"]

log = logging.getLogger(__name__)

Callback = Callable[[str], Coroutine[Any, Any, None]]
T = TypeVar("T")

_KEY = re.compile(r"[-/_=a-zA-Z0-9]+(\.[-/_=a-zA-Z0-9]+)*")  # what NATS KV accepts as a key


def leaders_bucket(prefix: str, pool: str) -> str:
    """The KV bucket of a pool's leader leases."""
    return f"{prefix}-{pool}-leaders"


@dataclass
class _Seat:
    """One controller's election, as this member sees it."""

    lease: Lease
    leading: bool = False  # holds the lease and has not begun to stop the work
    looked: bool = False  # tried the key at least once
    ended: asyncio.Event = field(default_factory=asyncio.Event)  # fenced or taken over


class LeaderElection:
    """Campaigns for every controller of ``controllers`` until :meth:`run` is cancelled."""

    def __init__(
        self,
        *,
        member: str,
        leaders: KeyValue,
        controllers: Iterable[str],
        timing: LeaseTiming,
        on_started_leading: Callback,
        on_stopped_leading: Callback,
    ) -> None:
        self.member = member
        self._timing = timing
        self._on_started = on_started_leading
        self._on_stopped = on_stopped_leading
        self._seats: dict[str, _Seat] = {}
        for name in sorted(set(controllers)):
            if not _KEY.fullmatch(name):
                raise ValueError(f"controller name {name!r} cannot name a NATS KV key")
            lease = Lease(
                leaders,
                name,
                holder=member,
                timing=timing,
                on_fenced=functools.partial(self._fenced, name),
            )
            self._seats[name] = _Seat(lease)
            metrics.LEADER.labels(name).set(0)

    def is_leader(self, name: str) -> bool:
        """True while this member holds ``name``'s lease and its work has not begun to stop."""
        return self._seats[name].leading

    def leader(self, name: str) -> str | None:
        """Who leads ``name``: this member, or the holder its key named when last read."""
        seat = self._seats[name]
        if seat.leading:
            return self.member
        seen = seat.lease.holder_seen
        return None if seen == self.member else seen

    def who_leads(self) -> dict[str, str | None]:
        """controller -> its leader as this member knows it (see :meth:`leader`)."""
        return {name: self.leader(name) for name in self._seats}

    @property
    def settled(self) -> bool:
        """Every controller's key has been tried once: :meth:`leader` means something."""
        return all(seat.looked or seat.leading for seat in self._seats.values())

    async def run(self) -> None:
        """Campaign until cancelled; cancelling hands back every controller this member leads."""
        async with asyncio.TaskGroup() as group:
            for name in self._seats:
                group.create_task(self._campaign(name), name=f"leader-election {name}")

    async def _campaign(self, name: str) -> None:
        seat = self._seats[name]
        loop = asyncio.get_running_loop()
        while True:
            began = loop.time()
            if await seat.lease.acquire():
                await self._lead(name, seat)
                began = loop.time()  # a term just ended: try again one retry period on
            seat.looked = True
            await asyncio.sleep(max(0.0, self._timing.retry_period - (loop.time() - began)))

    async def _lead(self, name: str, seat: _Seat) -> None:
        """One term: start the work, keep the lease until it ends, stop the work."""
        seat.ended.clear()
        self._set_leading(name, seat, True)
        log.info("%s: leading (member %s)", name, self.member)
        keeper = asyncio.get_running_loop().create_task(self._keep(name, seat))
        try:
            await self._on_started(name)
            await seat.ended.wait()  # fenced or taken over
        except Exception:
            log.exception("%s: starting to lead failed; handing the lease back", name)
        finally:
            # On cancellation too, and never cut short: stop the work, then hand back.
            await _uninterrupted(self._end_term(name, seat, keeper))

    async def _end_term(self, name: str, seat: _Seat, keeper: asyncio.Task[None]) -> None:
        keeper.cancel()
        await asyncio.wait({keeper})
        if not keeper.cancelled() and keeper.exception() is not None:
            log.error("%s: renewing the lease failed", name, exc_info=keeper.exception())
        held = seat.lease.held
        self._set_leading(name, seat, False)
        try:
            # Held: stopped with the lease still renewed, then deleted. Fenced or taken over:
            # just stopped (and the key deleted if it still names this member).
            await seat.lease.release(functools.partial(self._on_stopped, name))
        except Exception:
            log.exception("%s: stopping the work failed; its lease is left to expire", name)
            return
        log.info("%s: %s", name, "handed back" if held else "stopped")

    async def _keep(self, name: str, seat: _Seat) -> None:
        """Renew every retry period until the lease is lost or fenced."""
        loop = asyncio.get_running_loop()
        began = loop.time()
        while True:
            await asyncio.sleep(max(0.0, self._timing.retry_period - (loop.time() - began)))
            began = loop.time()
            outcome = await seat.lease.renew()
            if outcome is Renewal.LOST:
                log.error("%s: lease taken over; stopping the work", name)
            if outcome in (Renewal.LOST, Renewal.FENCED):
                seat.ended.set()
                return

    def _fenced(self, name: str) -> None:
        seat = self._seats[name]
        if not seat.leading:
            return
        log.error(
            "%s: lease not renewed within %.0fs; stopping the work",
            name,
            self._timing.renew_deadline,
        )
        self._set_leading(name, seat, False)
        seat.ended.set()

    def _set_leading(self, name: str, seat: _Seat, leading: bool) -> None:
        seat.leading = leading
        metrics.LEADER.labels(name).set(1 if leading else 0)


async def _uninterrupted(work: Awaitable[T]) -> T:
    """Await ``work`` to its end even if cancelled meanwhile; the cancellation follows it.

    Stopping the work must not be cut short: half-stopped work without a lease is the one
    state the election exists to prevent.
    """
    task = asyncio.ensure_future(work)
    cancelled = False
    while not task.done():
        try:
            await asyncio.wait({task})
        except asyncio.CancelledError:
            cancelled = True
    if cancelled:
        if not task.cancelled() and task.exception() is not None:
            log.error("failed while cancelled", exc_info=task.exception())
        raise asyncio.CancelledError
    return task.result()

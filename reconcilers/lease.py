"""One fenced lease: a key in a NATS KV bucket whose TTL is the lease duration.

Holding the key means the key's latest revision was written by this holder and has not
expired. Every write is a compare-and-set (create = "no key yet", renew = "the revision I
wrote last"), so two holders can never both believe a renewal of theirs succeeded.

The fence: a renewal *sent* at time t keeps the key until at least t + lease duration (the
server stores it after t), so a holder that has had no renewal answered for ``renew_deadline``
since the last one it sent gives the lease up locally, ``lease_duration - renew_deadline``
before anybody else can take it. That margin is what stopping the work may use.

The cases that make this subtle:

- a renewal that comes back after the fence fired: the lease stays given up (the work has been
  told to stop); the key may still be ours, so a later :meth:`Lease.acquire` may adopt it;
- a lease taken over (the key expired and someone else created it, or was deleted): the next
  renewal is rejected and reports :attr:`Renewal.LOST`;
- NATS unreachable for a while: renewals fail or time out and report
  :attr:`Renewal.UNREACHABLE` until the fence fires;
- a write whose outcome is unknown (it timed out, or its caller was cancelled) may have been
  stored all the same: the key then names this holder at a revision we never learned, and the
  next compare-and-set on the old revision is rejected.

The last two are settled by *adoption*: when the key names this holder and this very object
wrote to it without learning the outcome, a compare-and-set on the revision the key shows
takes it back (nobody can have written in between, or the key would name them). A holder id
shared by two processes by mistake does not let one take the other's lease.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from nats.errors import Error as NatsError
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

__all__ = ["Lease", "LeaseTiming", "Renewal"]

log = logging.getLogger(__name__)

_WRONG_LAST_SEQUENCE = 10071  # JetStream's err_code for a failed expected-last-sequence check


@dataclass(frozen=True)
class LeaseTiming:
    """As kube-controller-manager's leader election flags (``--partition-lease-*`` here)."""

    lease_duration: float = 10.0
    renew_deadline: float = 7.0
    retry_period: float = 2.0

    def __post_init__(self) -> None:
        if not self.retry_period < self.renew_deadline < self.lease_duration:
            raise ValueError(
                "partition leases need retry period < renew deadline < lease duration, got "
                f"{self.retry_period}s, {self.renew_deadline}s, {self.lease_duration}s"
            )


class Renewal(enum.Enum):
    RENEWED = "renewed"
    LOST = "lost"  # the key is gone or someone else's: stop the work
    FENCED = "fenced"  # the fence fired first; its callback had the work stopped already
    UNREACHABLE = "unreachable"  # no answer: still held until the fence fires


class Lease:
    """The lease on ``key`` in ``kv`` for ``holder`` (unique per process incarnation).

    ``on_fenced`` is called (from the event loop, not awaited) when the fence fires while the
    lease is held and not being released: the owner must stop the work it guards. Calls to
    :meth:`acquire`, :meth:`renew` and :meth:`release` must not overlap.
    """

    def __init__(
        self,
        kv: KeyValue,
        key: str,
        *,
        holder: str,
        timing: LeaseTiming,
        on_fenced: Callable[[], None],
    ) -> None:
        self.key = key
        self._kv = kv
        self._value = holder.encode()
        self._timing = timing
        self._on_fenced = on_fenced
        self._revision: int | None = None  # set while held
        self._fence: asyncio.TimerHandle | None = None
        self._term = 0  # +1 each time the lease ends: tells a renewal it was overtaken
        self._releasing = False
        # A write of ours may be the key's latest revision without us knowing that revision.
        self._maybe_ours = False
        self.holder_seen: str | None = None  # who held the key when last looked at

    @property
    def held(self) -> bool:
        return self._revision is not None

    async def acquire(self) -> bool:
        """Take the key if nobody holds it (or adopt it if it is still ours); True if held."""
        if self.held:
            return True
        try:
            entry = await self._kv.get(self.key)
        except KeyNotFoundError:  # never written, expired, or deleted
            self.holder_seen = None
            return await self._write(last=None)
        except (NatsError, TimeoutError) as error:
            log.warning("lease %s: cannot read it: %s", self.key, error)
            return False
        if entry.value != self._value or not self._maybe_ours:
            self.holder_seen = (entry.value or b"").decode(errors="replace") or None
            if entry.value != self._value:
                self._maybe_ours = False  # written after us: no late write of ours is the latest
            return False
        log.info("lease %s: still ours after an unanswered write; taking it back", self.key)
        return await self._write(last=entry.revision)

    async def renew(self) -> Renewal:
        """Compare-and-set the key on the revision written last; the fence moves on if so."""
        if self._revision is None:
            return Renewal.FENCED
        term, last = self._term, self._revision
        outcome = await self._attempt(last)
        if outcome is Renewal.LOST and self._term == term:
            adoptable = await self._ours()
            if adoptable is not None and self._term == term:
                log.info("lease %s: a write of ours landed unanswered; renewing on it", self.key)
                outcome = await self._attempt(adoptable)
        if self._term != term:
            return Renewal.FENCED  # overtaken by the fence; if it was stored, it is adoptable
        if outcome is Renewal.LOST:
            self._end()
        return outcome

    async def _attempt(self, last: int) -> Renewal:
        try:
            return Renewal.RENEWED if await self._write(last=last) else Renewal.LOST
        except _Unreachable:
            return Renewal.UNREACHABLE

    async def release(self, stop: Callable[[], Awaitable[None]]) -> None:
        """Stop the work while the lease still keeps others off, then delete the key.

        The lease is renewed meanwhile, so a slow stop does not let the TTL run out under it.
        If ``stop`` fails or is cancelled, the key is left to expire: the work may still run.
        """
        keeper = None
        if self.held:
            self._releasing = True
            keeper = asyncio.get_running_loop().create_task(self._keep())
        try:
            await stop()
        except BaseException:
            self._maybe_ours = self._maybe_ours or self.held  # left to expire; ours until then
            self._end()
            raise
        finally:
            self._releasing = False
            if keeper is not None:
                keeper.cancel()
                await asyncio.wait({keeper})
        last = self._revision
        self._end()
        if last is None:
            last = await self._ours()  # fenced meanwhile: the key may still name us
        if last is not None:
            await self._delete(last)

    async def _keep(self) -> None:
        """Renew every retry period until cancelled or the lease ends."""
        while True:
            await asyncio.sleep(self._timing.retry_period)
            if await self.renew() in (Renewal.LOST, Renewal.FENCED):
                return

    async def _write(self, *, last: int | None) -> bool:
        """Create (``last`` None) or compare-and-set the key; True if now held by us.

        A write with no answer is False for a lease not held, and raises :class:`_Unreachable`
        for a held one (whose fence decides when it is given up).
        """
        loop = asyncio.get_running_loop()
        sent = loop.time()
        term = self._term
        try:
            if last is None:
                revision = await self._kv.create(self.key, self._value)
            else:
                revision = await self._kv.update(self.key, self._value, last=last)
        except (KeyWrongLastSequenceError, KeyNotFoundError):
            return False  # someone else got there first, or the key expired under us
        except asyncio.CancelledError:
            self._maybe_ours = True
            raise
        except (NatsError, TimeoutError) as error:
            text = str(error).lower()
            if "key exists" in text or "wrong last sequence" in text:
                return False
            self._maybe_ours = True
            log.warning("lease %s: no answer to a write: %s", self.key, error)
            if self.held:
                raise _Unreachable from error
            return False
        if self._term != term:
            self._maybe_ours = True  # stored after the fence fired: adoptable later
            return False
        self._maybe_ours = False
        self.holder_seen = self._value.decode()
        self._hold(revision, sent)
        return True

    async def _ours(self) -> int | None:
        """The key's revision if it names us and a write of ours may be its latest."""
        if not self._maybe_ours:
            return None
        try:
            entry = await self._kv.get(self.key)
        except (NatsError, TimeoutError):  # KeyNotFoundError included: nothing to take back
            return None
        if entry.value != self._value:
            self._maybe_ours = False
            return None
        return entry.revision

    async def _delete(self, last: int) -> None:
        """Delete the key if ``last`` is still its revision (or, failing that, if it is ours)."""
        for attempt in (1, 2):
            try:
                await self._kv.delete(self.key, last=last)
            except (NatsError, TimeoutError) as error:
                self._maybe_ours = True
                retry = attempt == 1 and getattr(error, "err_code", None) == _WRONG_LAST_SEQUENCE
                adoptable = await self._ours() if retry else None
                if adoptable is None:
                    log.warning("lease %s: not deleted (it expires by itself): %s", self.key, error)
                    return
                last = adoptable  # a renewal of ours landed unbeknownst: delete that one
                continue
            self._maybe_ours = False
            return

    def _hold(self, revision: int, sent: float) -> None:
        """Held at ``revision``; fenced ``renew_deadline`` after the write was sent."""
        self._revision = revision
        if self._fence is not None:
            self._fence.cancel()
        loop = asyncio.get_running_loop()
        self._fence = loop.call_at(sent + self._timing.renew_deadline, self._fire)

    def _end(self) -> None:
        if self._fence is not None:
            self._fence.cancel()
            self._fence = None
        if self._revision is not None:
            self._revision = None
            self._term += 1

    def _fire(self) -> None:
        self._fence = None
        if self._revision is None:
            return
        self._maybe_ours = True  # the last renewal may still be the key's latest revision
        self._end()
        if self._releasing:
            return  # the work is being stopped already
        self._on_fenced()


class _Unreachable(Exception):
    """A write of a held lease got no answer (timeout, connection lost)."""

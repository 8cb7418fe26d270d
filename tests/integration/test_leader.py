"""Leader election of global controllers: candidates in processes of their own, one real
nats-server, and the terms every candidate reports laid side by side.

Each candidate (``tests/support/elector.py``) prints when it starts and when it has stopped
leading, on the machine-wide monotonic clock. The tests sample who leads all along (never two
at once) and check at the end that no two terms of a controller overlap at all.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
import pytest
from prometheus_client import REGISTRY

from bus.streams import ensure_bucket
from kubus.devstack.process import spawn, tail
from reconcilers.leader import LeaderElection
from reconcilers.lease import LeaseTiming
from tests.support.elector import PREFIX
from tests.support.nats_server import NatsServer
from tests.support.wait import wait_until

pytestmark = pytest.mark.integration

TIMING = LeaseTiming(lease_duration=4.0, renew_deadline=3.0, retry_period=0.5)
CONTROLLERS = ("node-lifecycle-controller", "persistentvolume-binder-controller")
BUCKET = "kubus-default-leaders"
# A shared 2-core machine delays a process now and then, and JetStream expires a message on a
# timer of its own: bounds that involve both get this much room.
SLACK = 1.0
ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Term:
    member: str
    controller: str
    start: float
    end: float | None  # None: still leading


class Candidates:
    """Elector processes against one nats-server, and the terms they report."""

    def __init__(self, server: NatsServer, directory: Path) -> None:
        self._server = server
        self._directory = directory
        self._processes: dict[str, subprocess.Popen[bytes]] = {}
        self._logs: dict[str, Path] = {}
        self._gone: dict[str, float] = {}  # member -> when its process had died (SIGKILL)

    def start(self, count: int = 1) -> list[str]:
        members = [f"m-{uuid.uuid4().hex[:6]}" for _ in range(count)]
        for member in members:
            log = self._directory / f"{member}.log"
            argv = [sys.executable, "-m", "tests.support.elector", self._server.url(), BUCKET]
            argv += [member, *(str(value) for value in _timing_args()), *CONTROLLERS]
            _record, process = spawn(
                "elector", argv, log_path=log, env=_env(), die_with_parent=True
            )
            self._processes[member], self._logs[member] = process, log
        for member in members:
            self.watch(
                functools.partial(self._said, member, "campaigning"),
                within=30,
                what=f"{member} campaigning",
            )
        return members

    def _said(self, member: str, event: str) -> bool:
        return any(e["event"] == event for e in self._events_of(member))

    def kill(self, member: str) -> float:
        """SIGKILL, as kill -9 would; returns when the signal was sent."""
        process = self._processes[member]
        killed_at = time.monotonic()
        process.kill()
        process.wait(timeout=10)
        self._gone[member] = time.monotonic()
        return killed_at

    def terminate(self, member: str) -> None:
        process = self._processes[member]
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=30)
        assert code == 0, f"{member} exited with {code}: {tail(self._logs[member], 20)}"

    def close(self) -> None:
        for process in self._processes.values():
            if process.poll() is None:
                process.kill()
                process.wait(timeout=10)

    def _events_of(self, member: str) -> list[dict[str, Any]]:
        text = self._logs[member].read_text(errors="replace")
        return [
            json.loads(line.removeprefix(PREFIX))
            for line in text.splitlines()
            if line.startswith(PREFIX) and line.endswith("}")
        ]

    def terms(self, controller: str) -> list[Term]:
        terms: list[Term] = []
        for member in self._logs:
            current: Term | None = None
            for event in self._events_of(member):
                if event["controller"] != controller:
                    continue
                if event["event"] == "started":
                    assert current is None, f"{member} started leading {controller} twice"
                    current = Term(member, controller, event["at"], None)
                    terms.append(current)
                elif event["event"] == "stopped":
                    assert current is not None, f"{member} stopped {controller} unled"
                    current.end, current = event["at"], None
            if current is not None and member in self._gone:
                current.end = self._gone[member]  # a SIGKILLed process works no more
        return sorted(terms, key=lambda term: term.start)

    def terms_since(self, controller: str, moment: float) -> list[Term]:
        """Terms of ``controller`` begun after ``moment``."""
        return [term for term in self.terms(controller) if term.start > moment]

    def ended_since(self, controller: str, member: str, moment: float) -> float | None:
        """When ``member`` last stopped leading ``controller``, if at ``moment`` or later."""
        ends = [
            t.end
            for t in self.terms(controller)
            if t.member == member and t.end is not None and t.end >= moment
        ]
        return ends[-1] if ends else None

    def leaders(self, controller: str) -> list[str]:
        return [term.member for term in self.terms(controller) if term.end is None]

    def watch(self, condition: Callable[[], Any], *, within: float, what: str) -> Any:
        """Wait for ``condition``, checking every 20 ms meanwhile that no controller has two
        leaders."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            for controller in CONTROLLERS:
                leaders = self.leaders(controller)
                assert len(leaders) <= 1, f"{controller} led by {leaders} at once"
            result = condition()
            if result:
                return result
            time.sleep(0.02)
        raise AssertionError(f"timed out after {within:g}s waiting for {what}")

    def observe(self, seconds: float) -> None:
        """Let ``seconds`` pass, checking all along that no controller has two leaders."""
        deadline = time.monotonic() + seconds
        self.watch(lambda: time.monotonic() >= deadline, within=seconds + 1, what="time")

    def single_leaders(self) -> dict[str, str]:
        """controller -> its one leader, once every controller has exactly one."""

        def each() -> dict[str, str] | None:
            leaders = {c: self.leaders(c) for c in CONTROLLERS}
            if all(len(members) == 1 for members in leaders.values()):
                return {c: members[0] for c, members in leaders.items()}
            return None

        found: dict[str, str] = self.watch(each, within=30, what="one leader per controller")
        return found

    def assert_one_leader_at_a_time(self) -> None:
        for controller in CONTROLLERS:
            for before, after in itertools.pairwise(self.terms(controller)):
                assert before.end is not None and before.end <= after.start, (
                    f"{controller}: {before} overlaps {after}"
                )


def _timing_args() -> tuple[float, float, float]:
    return TIMING.lease_duration, TIMING.renew_deadline, TIMING.retry_period


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


@pytest.fixture
def candidates(tmp_path: Path) -> Iterator[tuple[NatsServer, Candidates]]:
    with NatsServer(tmp_path / "nats", jetstream=True) as server:

        async def create_bucket() -> None:
            connection = await nats.connect(server.url())
            try:
                await ensure_bucket(
                    connection.jetstream(), BUCKET, ttl_seconds=TIMING.lease_duration
                )
            finally:
                await connection.close()

        asyncio.run(create_bucket())
        pool = Candidates(server, tmp_path / "electors")
        try:
            yield server, pool
        finally:
            pool.close()


def test_after_kill_9_of_the_leader_another_candidate_leads_within_the_lease_duration(
    candidates: tuple[NatsServer, Candidates],
) -> None:
    _server, pool = candidates
    pool.start(3)
    pool.single_leaders()
    takeovers: list[float] = []
    for _round in range(3):
        leaders = pool.single_leaders()
        victim = leaders[CONTROLLERS[0]]
        led = [c for c, member in leaders.items() if member == victim]
        killed_at = pool.kill(victim)
        for controller in led:
            successor = pool.watch(
                functools.partial(pool.terms_since, controller, killed_at),
                within=2 * TIMING.lease_duration + SLACK,
                what=f"a successor for {controller}",
            )[0]
            takeovers.append(successor.start - killed_at)
        pool.start(1)  # the pool back to three candidates
    pool.single_leaders()
    pool.assert_one_leader_at_a_time()
    print("takeover after kill -9 (s):", " ".join(f"{t:.2f}" for t in takeovers))
    # Not before the dead leader's fence would have fired (its last renewal was sent before
    # the kill), and once its key expires, within one retry period.
    assert all(t >= TIMING.renew_deadline for t in takeovers), takeovers
    assert all(t <= TIMING.lease_duration + TIMING.retry_period + SLACK for t in takeovers), (
        takeovers
    )


def test_a_leader_stopped_gracefully_hands_over_at_once(
    candidates: tuple[NatsServer, Candidates],
) -> None:
    _server, pool = candidates
    pool.start(3)
    handovers: list[float] = []
    for _round in range(3):
        leaders = pool.single_leaders()
        victim = leaders[CONTROLLERS[0]]
        led = [c for c, member in leaders.items() if member == victim]
        pool.terminate(victim)
        for controller in led:
            old = next(t for t in pool.terms(controller) if t.member == victim)
            assert old.end is not None, f"{victim} exited without stopping {controller}"
            successor = pool.watch(
                functools.partial(pool.terms_since, controller, old.start),
                within=TIMING.lease_duration,
                what=f"a successor for {controller}",
            )[0]
            handovers.append(successor.start - old.end)
        pool.start(1)
    pool.single_leaders()
    pool.assert_one_leader_at_a_time()
    print("hand-over after a graceful stop (s):", " ".join(f"{h:.2f}" for h in handovers))
    # At the next retry of a candidate, not after the lease's TTL.
    assert all(0 <= h <= TIMING.retry_period + 0.5 for h in handovers), handovers


def test_a_leader_cut_off_from_nats_fences_itself_before_its_lease_can_expire(
    candidates: tuple[NatsServer, Candidates],
) -> None:
    server, pool = candidates
    pool.start(3)
    before = pool.single_leaders()
    terms_before = {c: len(pool.terms(c)) for c in CONTROLLERS}

    # Cut off for less than the renew deadline: nobody gives anything up.
    server.pause()
    try:
        pool.observe(TIMING.renew_deadline / 2)
    finally:
        server.resume()
    pool.observe(2 * TIMING.retry_period)
    assert pool.single_leaders() == before
    assert {c: len(pool.terms(c)) for c in CONTROLLERS} == terms_before

    # Cut off for longer than the lease: the leader stops while the key still holds.
    frozen_at = time.monotonic()
    server.pause()
    try:
        for controller, leader in before.items():
            ended = pool.watch(
                functools.partial(pool.ended_since, controller, leader, frozen_at),
                within=TIMING.lease_duration,
                what=f"{leader} to stop leading {controller} while NATS is frozen",
            )
            fence = ended - frozen_at
            print(f"{controller}: fenced {fence:.2f}s into the freeze")
            # Its last renewal went out at most a retry period before the freeze: the TTL
            # cannot end before frozen_at + lease_duration - retry_period.
            assert fence <= TIMING.renew_deadline + 0.5, fence
            assert fence < TIMING.lease_duration - TIMING.retry_period, fence
        pool.observe(frozen_at + TIMING.lease_duration + TIMING.retry_period - time.monotonic())
        for controller in CONTROLLERS:
            assert pool.leaders(controller) == [], "someone leads while NATS is frozen"
    finally:
        server.resume()
    thawed_at = time.monotonic()
    after = pool.single_leaders()
    resumed = {
        c: next(t.start for t in pool.terms(c) if t.start > frozen_at) - thawed_at
        for c in CONTROLLERS
    }
    print("leadership resumed after the thaw (s):", resumed, "by", after, "before", before)
    assert all(r <= TIMING.lease_duration + TIMING.retry_period + SLACK for r in resumed.values())
    pool.assert_one_leader_at_a_time()


# --- in one process: what the manager reads (is_leader, leader, the metric), and the order ----


def test_a_hand_back_stops_the_work_before_the_key_goes_and_others_see_who_leads(
    tmp_path: Path,
) -> None:
    with NatsServer(tmp_path / "nats", jetstream=True) as server:

        async def scenario() -> None:
            connection = await nats.connect(server.url())
            kv = await ensure_bucket(
                connection.jetstream(), BUCKET, ttl_seconds=TIMING.lease_duration
            )
            seen_at_stop: list[str] = []

            async def started(_name: str) -> None:
                return None

            async def stopped(name: str) -> None:
                # Stop first: the key still names this member while its work stops.
                seen_at_stop.append(((await kv.get(name)).value or b"").decode())

            def election(member: str) -> LeaderElection:
                return LeaderElection(
                    member=member,
                    leaders=kv,
                    controllers=["x"],
                    timing=TIMING,
                    on_started_leading=started,
                    on_stopped_leading=stopped,
                )

            a, b = election("a"), election("b")
            a_run = asyncio.create_task(a.run())
            b_run: asyncio.Task[None] | None = None
            try:
                await wait_until(lambda: a.is_leader("x"), within=5, what="a leading")
                assert _leader_metric("x") == 1
                assert a.leader("x") == "a" and a.who_leads() == {"x": "a"}
                b_run = asyncio.create_task(b.run())
                await wait_until(lambda: b.settled, within=5, what="b looked at the key")
                assert not b.is_leader("x") and b.leader("x") == "a"
                a_run.cancel()
                await asyncio.gather(a_run, return_exceptions=True)
                handed_back_at = time.monotonic()
                assert seen_at_stop == ["a"]
                assert not a.is_leader("x") and _leader_metric("x") == 0
                await wait_until(lambda: b.is_leader("x"), within=5, what="b leading")
                assert time.monotonic() - handed_back_at <= TIMING.retry_period + 0.5
                assert _leader_metric("x") == 1
            finally:
                for run in (a_run, b_run):
                    if run is not None:
                        run.cancel()
                        await asyncio.gather(run, return_exceptions=True)
                await connection.close()

        asyncio.run(scenario())


def test_a_leader_whose_start_fails_hands_back_and_campaigns_again(tmp_path: Path) -> None:
    with NatsServer(tmp_path / "nats", jetstream=True) as server:

        async def scenario() -> None:
            connection = await nats.connect(server.url())
            kv = await ensure_bucket(
                connection.jetstream(), BUCKET, ttl_seconds=TIMING.lease_duration
            )
            calls: list[str] = []

            async def started(_name: str) -> None:
                calls.append("start")
                if calls.count("start") == 1:
                    raise RuntimeError("cache not ready")

            async def stopped(_name: str) -> None:
                calls.append("stop")

            election = LeaderElection(
                member="a",
                leaders=kv,
                controllers=["x"],
                timing=TIMING,
                on_started_leading=started,
                on_stopped_leading=stopped,
            )
            run = asyncio.create_task(election.run())
            try:
                await wait_until(
                    lambda: calls == ["start", "stop", "start"] and election.is_leader("x"),
                    within=5,
                    what="a second, successful term",
                )
            finally:
                run.cancel()
                await asyncio.gather(run, return_exceptions=True)
                await connection.close()
            assert calls == ["start", "stop", "start", "stop"]

        asyncio.run(scenario())


def _leader_metric(controller: str) -> float | None:
    return REGISTRY.get_sample_value("kubus_reconciler_leader", {"controller": controller})

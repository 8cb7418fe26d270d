"""The scale-up time in ``kubus bench``: bench/scale_up.py's measurement, after the contenders.

Issue 13's goal 5: with 10,000 pods on the bus, a reconciler joining a pool of 2 is ready and
reconciling its share within 5 s of its start. :func:`run_scale_up` runs
:func:`bench.scale_up.measure` on a fresh stack of its own and fills one record, the
``scale_up`` of results.json: the settings it ran with, min/median/max of the timeline's
milestones (seconds from the third reconciler's exec) and of its replay rate, and each run's
figures. Like a contender's, a failure is recorded with its reason in one line (the traceback
in its log dir), keeping the runs that ended before it.
"""

from __future__ import annotations

import contextlib
import math
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from bench import scale_up
from bench.compare.harness import one_line
from bench.support import require_finite

__all__ = [
    "FIGURES",
    "GOAL_PODS",
    "GOAL_SECONDS",
    "Measure",
    "ScaleUp",
    "goal",
    "new_record",
    "run_scale_up",
]

GOAL_SECONDS = 5.0
GOAL_PODS = 10_000
# kwok nodes per pod, as bench/scale_up.py's defaults have them (100 nodes for 10,000 pods):
# the nodes' Lease renewals are part of what the joiner replays and keeps up with.
PODS_PER_NODE = 100
# Namespaces the pods are spread over (at most): enough for every one of the 32 partitions.
NAMESPACES = 100

# (key in results.json, key in bench.scale_up's summary, label): the milestones reported.
FIGURES = (
    ("first_log_line", "first_log_line", "first log line (imports done, NATS connected)"),
    ("share_acquired", "share_acquired", "its whole share acquired"),
    ("share_replayed", "share_replayed", "its whole share replayed"),
    ("share_caught_up", "polled_share_caught_up", "share caught up on /metrics (lag ~0)"),
)

Progress = Callable[[str], None]


class Measure(Protocol):
    """:func:`bench.scale_up.measure`'s signature (tests give a stand-in without a stack)."""

    def __call__(
        self,
        plan: scale_up.Plan,
        *,
        log_dir: Path,
        progress: Progress,
        ended_run: Callable[[list[dict[str, Any]]], None],
    ) -> dict[str, Any]: ...


@dataclass(frozen=True)
class ScaleUp:
    """The scale-up of one ``kubus bench`` run: ``pods`` on the bus, ``runs`` joins."""

    pods: int
    runs: int
    log_dir: Path

    @property
    def nodes(self) -> int:
        return max(3, math.ceil(self.pods / PODS_PER_NODE))

    @property
    def namespaces(self) -> int:
        return min(NAMESPACES, self.pods)

    def plan(self) -> scale_up.Plan:
        return scale_up.Plan(
            pods=self.pods, nodes=self.nodes, namespaces=self.namespaces, runs=self.runs
        )


def new_record(settings: ScaleUp) -> dict[str, Any]:
    """The record before it runs: its settings, no figure yet (``null``)."""
    return {
        "ok": False,
        # Why it failed, in one line (None: it did not).
        "error": None,
        "pods": settings.pods,
        "nodes": settings.nodes,
        "namespaces": settings.namespaces,
        "runs": settings.runs,
        "pool": 2,
        "goal_seconds": GOAL_SECONDS,
        "pods_ready_seconds": None,
        # min/median/max over the runs of seconds from the joiner's exec (None: not measured).
        "seconds_from_exec": {key: None for key, _summary_key, _label in FIGURES},
        "replay_objects_per_s": None,
        # bench.scale_up's own summary (every milestone, the hand-back) and each run's figures.
        "summary": None,
        "per_run": [],
    }


def run_scale_up(
    settings: ScaleUp,
    record: dict[str, Any],
    progress: Progress,
    ended: Callable[[dict[str, Any]], None],
    *,
    measure: Measure | None = None,
) -> dict[str, Any]:
    """Fill ``record`` (from :func:`new_record`); ``ended`` gets it once it ended, whatever
    the outcome, so the results are on disk at once.

    An error is recorded, not raised, so the contenders' results and the exit code stay the
    caller's; an interrupt is recorded and raised again.
    """
    run = measure or scale_up.measure

    def ended_run(runs: list[dict[str, Any]]) -> None:
        _fill(record, runs)

    try:
        settings.log_dir.mkdir(parents=True, exist_ok=True)
        progress(
            f"scale-up: fresh stack with {settings.nodes} kwok nodes, {settings.pods} pods, "
            f"a third reconciler joining a pool of 2, {settings.runs} run(s)"
        )
        result = run(
            settings.plan(),
            log_dir=settings.log_dir,
            progress=lambda line: progress(f"scale-up: {line}"),
            ended_run=ended_run,
        )
        _fill(record, result["runs"])
        record["pods_ready_seconds"] = result["pods_ready_seconds"]
        # A NaN or inf fails here, naming the figure, not when results.json is written.
        require_finite(record, "scale-up")
        if len(record["per_run"]) != settings.runs:
            raise RuntimeError(f"{len(record['per_run'])} of {settings.runs} runs measured")
        record["ok"] = True
        caught_up = record["seconds_from_exec"]["share_caught_up"]
        progress(
            f"scale-up: caught up {caught_up and caught_up['max']} s from exec at most "
            f"(goal {GOAL_SECONDS:g} s)"
        )
    except KeyboardInterrupt as interrupt:
        record["ok"], record["error"] = False, f"interrupted ({interrupt or 'SIGINT'})"
        raise
    except Exception as error:  # recorded: the contenders' results must still be reported
        record["ok"], record["error"] = False, one_line(error)
        trace = settings.log_dir / "harness-error.log"
        with contextlib.suppress(OSError):
            trace.write_text(traceback.format_exc())
        progress(f"scale-up: failed: {record['error']} (traceback: {trace})")
    finally:
        ended(record)
    return record


def _fill(record: dict[str, Any], runs: list[dict[str, Any]]) -> None:
    """The figures of ``runs``, the ones that ended so far."""
    summary = scale_up.summarize(runs)
    record["per_run"] = list(runs)
    record["summary"] = summary
    record["seconds_from_exec"] = {
        key: summary["seconds_from_exec"][summary_key] for key, summary_key, _label in FIGURES
    }
    record["replay_objects_per_s"] = summary["replay_objects_per_s_overall"]


def goal(record: dict[str, Any] | None) -> dict[str, str]:
    """Goal 5 judged on the record: met when the slowest run's share was caught up (lag ~0:
    ready and reconciling) within GOAL_SECONDS of its exec. None: the scale-up was off."""
    text = (
        f"a reconciler joining a pool of 2 is ready and reconciling its share within "
        f"{GOAL_SECONDS:g} s of its start (the goal is for {GOAL_PODS:,} pods on the bus)"
    )
    if record is None:
        return {"goal": text, "status": "not measured", "figures": "off (--scale-up-pods 0)"}
    caught_up = record["seconds_from_exec"]["share_caught_up"]
    if not record["ok"] or caught_up is None:
        why = record["error"] or "not ended"
        return {"goal": text, "status": "not measured", "figures": f"scale-up: {why}"}
    runs = len(record["per_run"])
    return {
        "goal": text,
        "status": "met" if caught_up["max"] <= GOAL_SECONDS else "not met",
        "figures": f"caught up {caught_up['max']:g} s from exec (max of {runs} run"
        f"{'s' if runs != 1 else ''}), {record['pods']:,} pods",
    }

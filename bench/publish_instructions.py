"""The watcher's publish path in CPU instructions per event, a figure that does not drift.

Events per second on a shared VM move by ±15% from one minute to the next with the same code;
instructions counted by valgrind's callgrind do not. The kubus path of ``bench.watcher_publish``
runs twice under callgrind, over a short and a long prefix of the same recorded watch stream,
against a real nats-server; the difference of the two totals over the difference of the event
counts leaves out start-up, imports and the recording itself.

Run: ``python -m bench.publish_instructions [--short 6000] [--long 30000]`` (needs valgrind;
about four minutes, callgrind runs Python some fifty times slower).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shutil
import subprocess
import sys

from bench.support import machine, nats_server, recorded_watch_stream
from bench.watcher_publish import kubus
from kubus.service import tune_gc

_TOTAL = re.compile(r"refs:\s+([\d,]+)")


def count(events: int, url: str) -> int:
    """Instructions of one whole run of ``events`` events (a child process under callgrind)."""
    run = subprocess.run(
        [
            "valgrind",
            "--tool=callgrind",
            "--callgrind-out-file=/dev/null",
            sys.executable,
            "-m",
            "bench.publish_instructions",
            "--child",
            str(events),
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    found = _TOTAL.search(run.stderr)
    if found is None:
        raise SystemExit(f"no instruction total in callgrind's output:\n{run.stderr[-2000:]}")
    return int(found[1].replace(",", ""))


def child(events: int, url: str) -> None:
    tune_gc()
    lines = recorded_watch_stream(10_000, 3)[:events]  # the same recording in both runs
    asyncio.run(kubus(url, lines, max_in_flight=1024))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--short", type=int, default=6_000)
    parser.add_argument("--long", type=int, default=30_000)
    parser.add_argument("--child", nargs=2, metavar=("EVENTS", "URL"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(int(args.child[0]), args.child[1])
        return
    if not 0 < args.short < args.long <= 30_000:
        parser.error("--short and --long: 0 < short < long <= 30000")
    if shutil.which("valgrind") is None:
        parser.error("valgrind is not on PATH (Debian: apt-get install valgrind)")
    totals = []
    for events in (args.short, args.long):
        with nats_server() as url:
            totals.append(count(events, url))
    per_event = (totals[1] - totals[0]) / (args.long - args.short)
    print(f"kubus watcher publish path: {per_event:,.0f} instructions per event on {machine()}")
    print(
        json.dumps(
            {
                "benchmark": "publish_instructions",
                "machine": machine(),
                "events": [args.short, args.long],
                "instructions_per_event": round(per_event),
            },
            allow_nan=False,
        )
    )


if __name__ == "__main__":
    main()

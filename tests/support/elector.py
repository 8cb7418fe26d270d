"""A leader-election candidate in a process of its own, for tests that SIGKILL it.

    python -m tests.support.elector NATS_URL BUCKET MEMBER DURATION DEADLINE RETRY NAME...

runs a :class:`reconcilers.leader.LeaderElection` for the controllers ``NAME...`` and prints a
line ``elector {json}`` when it is campaigning and when it starts or has stopped leading one,
with ``time.monotonic()`` (CLOCK_MONOTONIC: one clock for every process of the machine), so a
test can lay the terms of all candidates side by side. SIGTERM hands back what it leads and
exits 0, as a reconciler's graceful shutdown does.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
import time

import nats

from reconcilers.leader import LeaderElection
from reconcilers.lease import LeaseTiming

PREFIX = "elector "


def emit(member: str, event: str, controller: str = "") -> None:
    record = {"member": member, "event": event, "controller": controller, "at": time.monotonic()}
    print(PREFIX + json.dumps(record), flush=True)


async def main(argv: list[str]) -> None:
    url, bucket, member = argv[:3]
    timing = LeaseTiming(*(float(value) for value in argv[3:6]))
    controllers = argv[6:]
    connection = await nats.connect(url, name=member, max_reconnect_attempts=-1)
    kv = await connection.jetstream().key_value(bucket)

    async def started(name: str) -> None:
        emit(member, "started", name)

    async def stopped(name: str) -> None:
        await asyncio.sleep(0.05)  # a stop takes a moment; the record marks its end
        emit(member, "stopped", name)

    election = LeaderElection(
        member=member,
        leaders=kv,
        controllers=controllers,
        timing=timing,
        on_started_leading=started,
        on_stopped_leading=stopped,
    )
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    campaign = asyncio.get_running_loop().create_task(election.run())
    emit(member, "campaigning")
    await stop.wait()
    campaign.cancel()
    await asyncio.gather(campaign, return_exceptions=True)
    emit(member, "exiting")
    await connection.close()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    asyncio.run(main(sys.argv[1:]))

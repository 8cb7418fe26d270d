"""Who owns which partition of a pool, read from the pool's lease bucket as a user would."""

from __future__ import annotations

import asyncio
from typing import Any

import nats
from nats.js.errors import KeyNotFoundError, NoKeysError

from bus.subjects import DEFAULT_PARTITIONS
from tests.support.services import Pool
from tests.support.wait import wait_for


def lease_owners(stack_env: dict[str, str], pool: Pool) -> dict[int, str]:
    """partition -> member, as the pool's lease bucket says right now."""

    async def read() -> dict[int, str]:
        connection = await nats.connect(stack_env["NATS_URL"])
        try:
            kv = await connection.jetstream().key_value(f"{pool.prefix}-default-leases")
            try:
                keys = await kv.keys()
            except NoKeysError:
                return {}
            owners = {}
            for key in keys:
                try:
                    entry = await kv.get(key)
                except KeyNotFoundError:
                    continue  # expired or released between the listing and the read
                if entry.value:
                    owners[int(key.removeprefix("p"))] = entry.value.decode()
            return owners
        finally:
            await connection.close()

    return asyncio.run(read())


def member_of(process: Any) -> str:
    for line in process.metrics().splitlines():
        if line.startswith("kubus_reconciler_member_info{"):
            return line.split('member="', 1)[1].split('"', 1)[0]
    raise AssertionError("no member id in the metrics")


def settled_owners(stack_env: dict[str, str], pool: Pool, timeout: float = 60) -> dict[int, str]:
    """partition -> member once every partition is leased and every running process owns some:
    the first member holds them all until its peers join and it hands some over."""
    members = {member_of(process) for process in pool.reconcilers if process.running}

    def settled() -> dict[int, str] | None:
        owners = lease_owners(stack_env, pool)
        return (
            owners
            if len(owners) == DEFAULT_PARTITIONS and set(owners.values()) == members
            else None
        )

    return wait_for(
        settled, timeout=timeout, what="every partition leased, every process owning some"
    )

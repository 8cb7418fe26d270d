"""Work units: the partitions, each optionally split by key into shards.

A partition is one namespace hash, so a namespace busier than one process can serve stays on
one process however large the pool grows. With ``--partition-shards K`` every partition's
*keys* (what a controller reconciles: a Deployment, a ReplicaSet) are split by a hash of their
name into K shards, and the lease, the one-worker-per-key guarantee and the hand-over all work
per unit (partition, shard) instead of per partition. A process holding any unit of a partition
caches the whole partition (selectors, adoption and owner lookups still see every object of the
namespace) and reconciles only the keys of the units it holds.

What that costs: the processes sharing a partition each receive and cache all of it. Units of
one partition therefore go to the partition's best-ranked members first (rendezvous ranking per
partition), so a partition is shared by at most min(K, members) processes; K=1 is exactly the
one-owner-per-partition scheme.
"""

from __future__ import annotations

import hashlib
import re
import zlib
from collections.abc import Iterable
from dataclasses import dataclass

from bus.subjects import partition_of

__all__ = ["MAX_SHARDS", "Sharding"]

MAX_SHARDS = 16
_LEASE_KEY = re.compile(r"^p(\d{3})(?:s(\d+))?$")


@dataclass(frozen=True)
class Sharding:
    partitions: int
    shards: int = 1

    def __post_init__(self) -> None:
        if not 1 <= self.shards <= MAX_SHARDS:
            raise ValueError(
                f"--partition-shards must be between 1 and {MAX_SHARDS}, not {self.shards}"
            )

    @property
    def units(self) -> int:
        return self.partitions * self.shards

    def partition(self, unit: int) -> int:
        return unit // self.shards

    def units_of(self, partition: int) -> range:
        return range(partition * self.shards, (partition + 1) * self.shards)

    def unit_of(self, namespace: str | None, name: str) -> int:
        """The unit of a key: its partition (by namespace), then its shard (by name)."""
        partition = partition_of(namespace, name, self.partitions)
        if self.shards == 1:
            return partition
        return partition * self.shards + zlib.crc32(name.encode()) % self.shards

    def lease_key(self, unit: int) -> str:
        partition, shard = divmod(unit, self.shards)
        return f"p{partition:03d}" if self.shards == 1 else f"p{partition:03d}s{shard}"

    def unit_of_lease_key(self, key: str) -> int | None:
        """The unit a lease key names, None for keys of another sharding (or not leases)."""
        match = _LEASE_KEY.match(key)
        if match is None or (match[2] is None) != (self.shards == 1):
            return None
        partition, shard = int(match[1]), int(match[2] or 0)
        if partition >= self.partitions or shard >= self.shards:
            return None
        return partition * self.shards + shard

    def describe(self, unit: int) -> str:
        partition, shard = divmod(unit, self.shards)
        if self.shards == 1:
            return f"partition {partition}"
        return f"partition {partition} shard {shard + 1}/{self.shards}"

    def share(self, member: str, members: Iterable[str]) -> set[int]:
        """The units ``member`` should hold among ``members``: shard s of a partition goes to
        its (s mod n)-th ranked member, so a join or a leave moves few units and a partition
        is spread over as few processes as its shards allow."""
        live = list(members)
        if member not in live:
            return set()
        wanted = set()
        for partition in range(self.partitions):
            ranked = rank(partition, live)
            for shard in range(self.shards):
                if ranked[shard % len(ranked)] == member:
                    wanted.add(partition * self.shards + shard)
        return wanted


def rank(partition: int, members: Iterable[str]) -> list[str]:
    """Members by rendezvous score for ``partition``, best first (highest random weight)."""
    return sorted(members, key=lambda member: _score(member, partition), reverse=True)


def _score(member: str, partition: int) -> bytes:
    return hashlib.blake2b(f"{member}/{partition}".encode(), digest_size=8).digest()

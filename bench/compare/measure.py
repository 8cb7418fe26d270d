"""What a phase costs: CPU seconds and peak RSS per process (from /proc), kubus's metrics.

CPU is ``utime + stime`` from ``/proc/<pid>/stat`` at the start and end of the phase. Peak RSS
is ``VmHWM`` after resetting it at the phase's start (``echo 5 > /proc/<pid>/clear_refs``), so
each phase reports its own peak; where the reset is refused, the peak since the process
started.
"""

from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass
from pathlib import Path

from bench.support import (
    BucketBound,
    bucket_quantile,
    gauge_sum,
    histogram_buckets,
    peak_rss_mb,
)

__all__ = ["KubusScrape", "ProcessMeter", "Usage", "latency_quantiles"]

_TICKS = os.sysconf("SC_CLK_TCK")

EVENT_LATENCY = "kubus_reconciler_event_latency_seconds"
CONSUMER_LAG = "kubus_reconciler_consumer_lag"
CACHED_OBJECTS = "kubus_reconciler_cached_objects"


@dataclass(frozen=True)
class Usage:
    cpu_seconds: float
    peak_rss_mb: float


def cpu_seconds(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / _TICKS


def _reset_peak(pid: int) -> None:
    with contextlib.suppress(OSError), open(f"/proc/{pid}/clear_refs", "w") as handle:
        handle.write("5")


class ProcessMeter:
    """CPU and peak RSS of named processes over one phase."""

    def __init__(self, pids: dict[str, int]) -> None:
        self._pids = dict(pids)
        self._cpu: dict[str, float] = {}

    def start(self) -> None:
        for name, pid in self._pids.items():
            _reset_peak(pid)
            self._cpu[name] = cpu_seconds(pid) or 0.0

    def stop(self) -> dict[str, Usage]:
        usage = {}
        for name, pid in self._pids.items():
            now = cpu_seconds(pid)
            used = 0.0 if now is None else now - self._cpu.get(name, now)
            try:
                peak = peak_rss_mb(pid)
            except OSError:
                peak = 0.0
            usage[name] = Usage(cpu_seconds=round(used, 3), peak_rss_mb=round(peak, 1))
        return usage


@dataclass(frozen=True)
class KubusScrape:
    """One scrape of every reconciler's /metrics."""

    texts: tuple[str, ...]

    def latency_buckets(self) -> dict[float, float]:
        return histogram_buckets(list(self.texts), EVENT_LATENCY)

    def bus_lag(self) -> float:
        """Messages not yet reconciled, over every owned partition of every process."""
        return sum(gauge_sum(text, CONSUMER_LAG) for text in self.texts)

    def cached_objects(self) -> list[int]:
        return [int(gauge_sum(text, CACHED_OBJECTS)) for text in self.texts]


def latency_quantiles(
    before: dict[float, float], after: dict[float, float]
) -> tuple[BucketBound | None, BucketBound | None, int]:
    """p50, p99 and count of the observations between two scrapes (None, None, 0: none).

    A quantile past the histogram's top bucket is ``above`` that bound (``> 30 s``), not inf.
    """
    delta = {bound: after[bound] - before.get(bound, 0.0) for bound in after}
    count = int(delta.get(math.inf, 0.0))
    if count <= 0:
        return None, None, 0
    return bucket_quantile(delta, 0.50), bucket_quantile(delta, 0.99), count

"""Scale-up time: a third reconciler joining a settled pool of two, with 10,000 pods on the bus.

A fresh infrastructure-only dev stack (``--nodes`` kwok nodes), a watcher, and a pool of two
reconcilers running the default controllers (every implemented one, as ``kubus dev up``
runs them); ``--pods`` plain pods over ``--namespaces`` namespaces (100: every one of the 32
partitions holds some), written through the apiserver, Running and Ready, mirrored onto the
bus by the watcher. Once the pool has settled (the partitions owned as rendezvous hashing
says, every consumer caught up, every pod cached), a third reconciler starts, and from the
moment it is exec'd the benchmark times:

- its first log line (imports done, flags parsed, NATS connected) and its first ownership
  round (joined);
- its /readyz answering ok (polled);
- its first partition acquired, and every partition rendezvous hashing gives it acquired and
  replayed (its log), then seen caught up on its /metrics (the consumer of each bound, its lag
  0, or at most ``LAG_SLACK`` on the partition that kwok's node Lease renewals keep busy);
- the replay: objects per second per partition, and over its whole share;
- the old owners' hand-back: from the join to each of them seeing the new member, and to the
  last of its partitions released.

Then it stops, the pool of two settles again, and the next run starts. Every process logs
JSON; times come from the log lines' timestamps (same clock) and from polls every 50 ms.

Run: ``python -m bench.scale_up [--pods 10000] [--nodes 100] [--runs 3] [--out FILE]``.
``kubus bench`` runs the same :func:`measure` after its contenders (bench/compare/scaleup.py).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.compare.driver import Cluster, PodDriver
from bench.compare.workload import Shape, Workload
from bench.support import (
    ServiceProcess,
    cached_objects,
    fresh_stack,
    json_log,
    kubus_service,
    labelled_values,
    machine,
    reconciler_processes,
    scrape_metrics,
    spread,
    stop_processes,
    watcher_process,
)
from bus.subjects import DEFAULT_PARTITIONS
from reconcilers.ownership import rendezvous_owner

POLL = 0.05
# Lag still counted as caught up, per partition: kwok renews each node's Lease every 10 s, so
# the partition of kube-node-lease (100 nodes: 10 renewals/s, each acknowledged once the garbage
# collector, which reads every kind, has seen it) is rarely at exactly 0 when scraped.
LAG_SLACK = 20
SETTLE_TIMEOUT = 300.0
JOIN_TIMEOUT = 120.0

_ACQUIRED = re.compile(r"^partition (\d+): acquired$")
_RELEASED = re.compile(r"^partition (\d+): released$")
_REPLAYED = re.compile(r"^partition (\d+): replayed (\d+) objects")


@dataclass(frozen=True)
class Scrape:
    """What one /metrics scrape of a reconciler says about its share."""

    member: str | None
    lags: dict[int, float]  # per owned partition whose consumer is bound
    owned: int
    pods: int
    queued: float

    @classmethod
    def of(cls, service: ServiceProcess) -> Scrape | None:
        try:
            text = scrape_metrics(service.metrics_port or 0, timeout=2)
        except OSError:
            return None
        members = [
            labels["member"]
            for labels, _ in labelled_values(text, "kubus_reconciler_member_info")
            if "member" in labels
        ]
        lags = {
            int(labels["partition"]): value
            for labels, value in labelled_values(text, "kubus_reconciler_consumer_lag")
        }
        owned = labelled_values(text, "kubus_reconciler_partitions_owned")
        return cls(
            member=members[0] if members else None,
            lags=lags,
            owned=int(owned[0][1]) if owned else 0,
            pods=cached_objects(text, "v1/pods"),
            queued=sum(value for _, value in labelled_values(text, "workqueue_depth")),
        )


def share(member: str, members: list[str], partitions: int) -> set[int]:
    return {p for p in range(partitions) if rendezvous_owner(p, members) == member}


def caught_up(lags: dict[int, float]) -> bool:
    return all(lag <= LAG_SLACK for lag in lags.values())


def settled(scrapes: list[Scrape | None], partitions: int, pods: int) -> bool:
    """Each member owns its rendezvous share, caught up, and the pool caches every pod."""
    if any(s is None or s.member is None for s in scrapes):
        return False
    members = [s.member for s in scrapes if s is not None and s.member is not None]
    for scrape in scrapes:
        assert scrape is not None and scrape.member is not None
        if set(scrape.lags) != share(scrape.member, members, partitions):
            return False
        if not caught_up(scrape.lags):
            return False
    return sum(s.pods for s in scrapes if s is not None) >= pods


def wait_settled(pool: list[ServiceProcess], partitions: int, pods: int, what: str) -> float:
    """Seconds until the pool has settled; an error after SETTLE_TIMEOUT."""
    started = time.monotonic()
    while True:
        scrapes = [Scrape.of(service) for service in pool]
        if settled(scrapes, partitions, pods):
            return time.monotonic() - started
        if time.monotonic() - started > SETTLE_TIMEOUT:
            shown = [(s.member, sorted(s.lags), s.pods) if s else None for s in scrapes]
            raise RuntimeError(f"{what}: the pool did not settle: {shown}")
        time.sleep(0.2)


def ready(service: ServiceProcess) -> bool:
    try:
        url = f"http://127.0.0.1:{service.health_port}/readyz"
        with urllib.request.urlopen(url, timeout=1):
            return True
    except OSError:
        return False


async def create_pods(env: dict[str, str], pods: int, namespaces: int) -> float:
    """Seconds to create ``pods`` plain pods over ``namespaces`` and see all of them Ready."""

    async def tick() -> None:
        return None

    async with Cluster.connect(Path(env["KUBECONFIG"])) as cluster:
        shape = Shape.spread(namespaces)
        await cluster.create_namespaces([shape])
        driver = PodDriver(cluster, Workload(deployments=pods, replicas=1))
        run = await driver.create(shape, deadline=time.monotonic() + 900, tick=tick)
    if not run.ok:
        raise RuntimeError(f"pods not Ready: {run.stuck[:3]}")
    return run.seconds


def _since(moment: float | None, origin: float) -> float | None:
    return None if moment is None else round(moment - origin, 3)


def join_once(
    env: dict[str, str],
    pool: list[ServiceProcess],
    args: list[str],
    *,
    run: int,
    log_dir: Path,
    partitions: int,
    profile: Path | None = None,
) -> dict[str, Any]:
    """Start a third reconciler, time it until its share is caught up, then stop it.

    With ``profile``, py-spy samples it from just after its exec (collapsed stacks, for
    where the time goes; such a run's figures are a little slower than an unprofiled one's).
    """
    old = [Scrape.of(service) for service in pool]
    old_members = [s.member for s in old if s is not None and s.member is not None]
    exec_at = time.time()
    joiner = kubus_service(env, "reconciler", f"joiner-{run}", *args, log_dir=log_dir)
    sampler = None
    if profile is not None:
        profile.mkdir(parents=True, exist_ok=True)
        sampler = subprocess.Popen(
            [
                str(Path(sys.executable).with_name("py-spy")),
                "record",
                "--pid",
                str(joiner.pid),
                "--rate",
                "200",
                "--duration",
                str(int(JOIN_TIMEOUT)),
                "--format",
                "raw",
                "--output",
                str(profile / f"joiner-{run}.txt"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    ready_at = caught_up_at = first_owned_at = drained_at = None
    expected: set[int] | None = None
    try:
        deadline = time.monotonic() + JOIN_TIMEOUT
        while drained_at is None:
            if time.monotonic() > deadline:
                raise RuntimeError(f"joiner-{run} did not catch up (log: {joiner.log})")
            if joiner.process.poll() is not None:
                raise RuntimeError(f"joiner-{run} exited (log: {joiner.log})")
            now = time.time()
            if ready_at is None and ready(joiner):
                ready_at = now
            scrape = Scrape.of(joiner)
            if scrape is not None and scrape.member is not None:
                if expected is None:
                    expected = share(scrape.member, [*old_members, scrape.member], partitions)
                if first_owned_at is None and scrape.owned:
                    first_owned_at = now
                if (
                    caught_up_at is None
                    and ready_at is not None
                    and set(scrape.lags) == expected
                    and caught_up(scrape.lags)
                ):
                    caught_up_at = now
                if caught_up_at is not None and not scrape.queued:
                    drained_at = now
            time.sleep(POLL)
    finally:
        stop_processes([joiner])
        if sampler is not None:
            sampler.wait(timeout=30)  # it writes its output once the process is gone
    assert expected is not None
    return _timeline(
        json_log(joiner.log),
        [json_log(service.log) for service in pool],
        exec_at=exec_at,
        expected=expected,
        polled={
            "ready": _since(ready_at, exec_at),
            "first_partition_owned": _since(first_owned_at, exec_at),
            "share_caught_up": _since(caught_up_at, exec_at),
            "queues_drained": _since(drained_at, exec_at),
        },
    )


def _timeline(
    joiner: list[dict[str, Any]],
    owners: list[list[dict[str, Any]]],
    *,
    exec_at: float,
    expected: set[int],
    polled: dict[str, float | None],
) -> dict[str, Any]:
    """The run's figures, from the joiner's and the old owners' log lines."""
    first_line = joiner[0]["ts"] if joiner else None
    cluster_replayed = joined = None
    member = None
    acquired: dict[int, float] = {}
    replayed: dict[int, tuple[float, int]] = {}
    for entry in joiner:
        message = entry.get("msg", "")
        if member is None and "member" in entry:
            member = entry["member"]
        if cluster_replayed is None and message.startswith("cluster-scoped cache: replayed"):
            cluster_replayed = entry["ts"]
        if joined is None and message.startswith("pool members now"):
            joined = entry["ts"]
        if (found := _ACQUIRED.match(message)) and int(found[1]) in expected:
            acquired.setdefault(int(found[1]), entry["ts"])
        if (found := _REPLAYED.match(message)) and int(found[1]) in expected:
            replayed.setdefault(int(found[1]), (entry["ts"], int(found[2])))
    seen: list[float] = []  # when each old owner first saw the new member
    released: dict[int, float] = {}
    for lines in owners:
        later = [entry for entry in lines if entry.get("ts", 0) >= exec_at]
        seen += [
            entry["ts"]
            for entry in later
            if entry.get("msg", "").startswith("pool members now")
            and member in entry.get("members", ())
        ][:1]
        for entry in later:
            if (found := _RELEASED.match(entry.get("msg", ""))) and int(found[1]) in expected:
                released.setdefault(int(found[1]), entry["ts"])
    per_partition: list[dict[str, Any]] = []
    for partition in sorted(expected):
        if partition in acquired and partition in replayed:
            took = replayed[partition][0] - acquired[partition]
            count = replayed[partition][1]
            per_partition.append(
                {
                    "partition": partition,
                    "objects": count,
                    "seconds": round(took, 3),
                    "objects_per_s": round(count / took) if took > 0 else None,
                }
            )
    objects = sum(row["objects"] for row in per_partition)
    replay_span = (
        max(t for t, _ in replayed.values()) - min(acquired.values())
        if replayed and acquired
        else None
    )
    return {
        "member": member,
        "partitions": len(expected),
        "objects_replayed": objects,
        "seconds_from_exec": {
            "first_log_line": _since(first_line, exec_at),
            "cluster_cache_replayed": _since(cluster_replayed, exec_at),
            "joined_pool": _since(joined, exec_at),
            "first_partition_acquired": _since(min(acquired.values(), default=None), exec_at),
            "share_acquired": _since(
                max(acquired.values()) if len(acquired) == len(expected) else None, exec_at
            ),
            "share_replayed": _since(
                max(t for t, _ in replayed.values()) if len(replayed) == len(expected) else None,
                exec_at,
            ),
            **{f"polled_{key}": value for key, value in polled.items()},
        },
        "handback_seconds_from_join": {
            "old_owners_saw_it": _since(max(seen, default=None), joined or exec_at),
            "last_released": _since(max(released.values(), default=None), joined or exec_at),
        },
        "replay": {
            "objects_per_s_overall": round(objects / replay_span) if replay_span else None,
            "per_partition": per_partition,
        },
    }


FIGURES = (
    ("first_log_line", "first log line (imports done, NATS connected)"),
    ("joined_pool", "first ownership round"),
    ("polled_ready", "/readyz ok"),
    ("first_partition_acquired", "first partition acquired"),
    ("share_acquired", "its whole share acquired"),
    ("share_replayed", "its whole share replayed"),
    ("polled_share_caught_up", "share caught up on /metrics (lag ~0)"),
    ("polled_queues_drained", "work queues drained"),
)


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    def values(section: str, key: str) -> list[float]:
        return [run[section][key] for run in runs if run[section].get(key) is not None]

    return {
        "seconds_from_exec": {key: spread(values("seconds_from_exec", key)) for key, _ in FIGURES},
        "handback_seconds_from_join": {
            key: spread(values("handback_seconds_from_join", key))
            for key in ("old_owners_saw_it", "last_released")
        },
        "replay_objects_per_s_overall": spread(values("replay", "objects_per_s_overall"), 0),
        "replay_objects_per_s_per_partition": spread(
            [
                row["objects_per_s"]
                for run in runs
                for row in run["replay"]["per_partition"]
                if row["objects_per_s"] is not None
            ],
            0,
        ),
    }


def print_table(summary: dict[str, Any], runs: int) -> None:
    def cell(figure: dict[str, float] | None, unit: str = "s") -> str:
        if figure is None:
            return "-"
        return f"{figure['min']:g} / {figure['median']:g} / {figure['max']:g} {unit}"

    print(f"from exec of the third reconciler (min / median / max of {runs} runs):")
    for key, label in FIGURES:
        print(f"  {label:<40} {cell(summary['seconds_from_exec'][key])}")
    handback = summary["handback_seconds_from_join"]
    print("old owners, from the new member's first round:")
    print(f"  {'saw the new member':<40} {cell(handback['old_owners_saw_it'])}")
    print(f"  {'released its last partition':<40} {cell(handback['last_released'])}")
    print("replay:")
    print(f"  {'objects/s over its share':<40} {cell(summary['replay_objects_per_s_overall'], '')}")
    print(
        f"  {'objects/s per partition':<40} "
        f"{cell(summary['replay_objects_per_s_per_partition'], '')}"
    )


@dataclass(frozen=True)
class Plan:
    """What one scale-up benchmark measures: its stack, its pods and how many joins."""

    pods: int = 10_000
    nodes: int = 100
    namespaces: int = 100
    runs: int = 3
    # py-spy each joining reconciler into DIR/joiner-N.txt (see join_once).
    profile: Path | None = None


def measure(
    plan: Plan,
    *,
    log_dir: Path,
    progress: Callable[[str], None],
    ended_run: Callable[[list[dict[str, Any]]], None] = lambda _runs: None,
) -> dict[str, Any]:
    """The whole benchmark on a fresh stack of its own: its result, as ``--out`` holds it.

    ``progress`` gets one line per step; ``ended_run`` the runs so far as each one ends, so
    that a caller can keep what was measured when a later run fails (which raises here).
    """
    partitions = DEFAULT_PARTITIONS
    prefix = "b" + uuid.uuid4().hex[:8]
    common = [f"--bus-prefix={prefix}", "--logging-format=json"]
    runs: list[dict[str, Any]] = []
    with fresh_stack(plan.nodes) as stack:
        env = stack.env
        with (
            watcher_process(env, f"--bus-prefix={prefix}"),
            reconciler_processes(env, 2, *common, log_dir=log_dir) as pool,
        ):
            created = asyncio.run(create_pods(env, plan.pods, plan.namespaces))
            progress(f"{plan.pods} pods Ready in {created:.0f}s")
            waited = wait_settled(pool, partitions, plan.pods, "after creating the pods")
            progress(f"pool of 2 settled {waited:.1f}s later")
            for run in range(plan.runs):
                result = join_once(
                    env,
                    pool,
                    common,
                    run=run,
                    log_dir=log_dir,
                    partitions=partitions,
                    profile=plan.profile,
                )
                runs.append(result)
                ended_run(runs)
                times = result["seconds_from_exec"]
                progress(
                    f"run {run + 1}: {result['partitions']} partitions, "
                    f"{result['objects_replayed']} objects; ready {times['polled_ready']}s, "
                    f"share replayed {times['share_replayed']}s, caught up "
                    f"{times['polled_share_caught_up']}s from exec"
                )
                if run + 1 < plan.runs:  # the next run joins the pool of 2 settled again
                    wait_settled(pool, partitions, plan.pods, f"after run {run + 1}")
    return {
        "benchmark": "scale_up",
        "machine": machine(),
        "pods": plan.pods,
        "nodes": plan.nodes,
        "namespaces": plan.namespaces,
        "pool": 2,
        "controllers": "default (every implemented controller)",
        "pods_ready_seconds": round(created, 1),
        "profiled": plan.profile is not None,
        "summary": summarize(runs),
        "runs": runs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--pods", type=int, default=10_000)
    parser.add_argument("--nodes", type=int, default=100)
    parser.add_argument("--namespaces", type=int, default=100)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", type=Path, help="write the results here as JSON")
    parser.add_argument(
        "--profile", type=Path, help="py-spy each joining reconciler into DIR/joiner-N.txt"
    )
    options = parser.parse_args()
    log_dir = Path(tempfile.mkdtemp(prefix="kubus-bench-scale-up-"))
    print(f"logs in {log_dir}", flush=True)
    result = measure(
        Plan(options.pods, options.nodes, options.namespaces, options.runs, options.profile),
        log_dir=log_dir,
        progress=lambda line: print(line, flush=True),
    )
    print_table(result["summary"], len(result["runs"]))
    text = json.dumps(result, allow_nan=False)
    if options.out:
        options.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()

"""Namespace deletion: seconds from a namespace's DELETE to its disappearance, N objects in it.

One fresh infrastructure-only dev stack; the contenders take turns on it, each alone:

- ``kube-controller-manager``: ``--controllers=namespace,garbagecollector``;
- ``kubus``: a watcher (its default ``--resources all``) and one reconciler with
  ``--controllers=namespace,garbagecollector``.

Per run: a fresh namespace (with its ``default`` ServiceAccount, which the bench makes) and
``--objects`` objects in it, a third each ConfigMaps, Secrets and bare pods (which kwok runs),
then DELETE and poll until the namespace is gone. Both controllers wait their 5 s deletion
grace period first, so that is in every figure. Both get the same
``--kube-api-qps``/``--kube-api-burst`` (kcm's defaults unless given).

Run: ``python -m bench.namespace_deletion [--objects 500] [--runs 3]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.compare.contenders import KCM, Limits, start_kcm, wait_kcm
from bench.support import (
    ServiceProcess,
    dev_stack,
    kubus_service,
    machine,
    stop_processes,
    wait_ready,
)
from kubus.kube import ApiResource, KubeClient, NotFoundError, load_kube_config

KUBUS = "kubus"
CONTROLLERS = "namespace,garbagecollector"
CONCURRENT_CREATES = 50
TIMEOUT = 600.0


@contextlib.contextmanager
def contender(name: str, env: dict[str, str], limits: Limits, log_dir: Path) -> Iterator[None]:
    """The contender's processes, ready; stopped on the way out."""
    started: list[ServiceProcess] = []
    try:
        if name == KCM:
            kcm = start_kcm(env, KCM, CONTROLLERS, limits, log_dir)
            started.append(kcm)
            wait_kcm(kcm)
        else:
            prefix = f"--bus-prefix=ns{uuid.uuid4().hex[:8]}"
            # The same controllers as kcm's; the watcher carries everything (its default), as
            # the garbage collector needs.
            watcher = kubus_service(env, "watcher", "watcher", prefix, log_dir=log_dir)
            started.append(watcher)
            reconciler = kubus_service(
                env,
                "reconciler",
                "reconciler",
                prefix,
                f"--controllers={CONTROLLERS}",
                f"--kube-api-qps={limits.kube_api_qps:g}",
                f"--kube-api-burst={limits.kube_api_burst}",
                log_dir=log_dir,
            )
            started.append(reconciler)
            for service in started:
                assert service.health_port is not None
                wait_ready(service.process, service.health_port, what=f"{service.name}")
        yield
    finally:
        stop_processes(started)


async def one_run(kube: KubeClient, apis: dict[str, ApiResource], objects: int) -> float:
    """Fill a fresh namespace, delete it; seconds until it is gone."""
    name = f"bench-{uuid.uuid4().hex[:8]}"
    await kube.create(apis["namespaces"], None, {"metadata": {"name": name}})
    # The ServiceAccount admission plugin refuses pods without it; no contender makes it.
    await kube.create(apis["serviceaccounts"], name, {"metadata": {"name": "default"}})
    limit = asyncio.Semaphore(CONCURRENT_CREATES)

    async def create(index: int) -> None:
        kind = ("configmaps", "secrets", "pods")[index % 3]
        body: dict[str, Any] = {"metadata": {"name": f"o-{index}"}}
        if kind == "configmaps":
            body["data"] = {"key": "value"}
        elif kind == "secrets":
            body["stringData"] = {"key": "value"}
        else:
            body["spec"] = {"containers": [{"name": "c", "image": "registry.example/c:1"}]}
        async with limit:
            await kube.create(apis[kind], name, body)

    async with asyncio.TaskGroup() as group:
        for index in range(objects):
            group.create_task(create(index))
    started = time.monotonic()
    await kube.delete(apis["namespaces"], None, name)
    while time.monotonic() - started < TIMEOUT:
        try:
            await kube.get(apis["namespaces"], None, name)
        except NotFoundError:
            return time.monotonic() - started
        await asyncio.sleep(0.1)
    raise RuntimeError(f"namespace {name} not gone after {TIMEOUT:g}s")


async def measure(kubeconfig: Path, objects: int, runs: int) -> list[float]:
    async with KubeClient(load_kube_config(kubeconfig)) as kube:
        apis = {
            "namespaces": await kube.discover("", "v1", "namespaces"),
            "configmaps": await kube.discover("", "v1", "configmaps"),
            "secrets": await kube.discover("", "v1", "secrets"),
            "pods": await kube.discover("", "v1", "pods"),
            "serviceaccounts": await kube.discover("", "v1", "serviceaccounts"),
        }
        return [await one_run(kube, apis, objects) for _ in range(runs)]


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--objects", type=int, default=500)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--contenders", default=f"{KCM},{KUBUS}")
    parser.add_argument("--kube-api-qps", type=float, default=20.0)
    parser.add_argument("--kube-api-burst", type=int, default=30)
    args = parser.parse_args()
    names = [n.strip() for n in args.contenders.split(",") if n.strip()]
    unknown = [n for n in names if n not in (KCM, KUBUS)]
    if unknown or args.objects < 1 or args.runs < 1:
        print(
            f"--contenders takes {KCM} and {KUBUS} (not {unknown}); --objects and --runs >= 1",
            file=sys.stderr,
        )
        raise SystemExit(2)
    limits = Limits(args.kube_api_qps, args.kube_api_burst)
    results = []
    with dev_stack(nodes=1) as env:
        log_dir = Path(tempfile.mkdtemp(prefix="kubus-bench-ns-"))
        for name in names:
            with contender(name, env, limits, log_dir):
                seconds = asyncio.run(measure(Path(env["KUBECONFIG"]), args.objects, args.runs))
            results.append(
                {
                    "contender": name,
                    "objects": args.objects,
                    "seconds": [round(s, 2) for s in seconds],
                    "min": round(min(seconds), 2),
                    "median": round(statistics.median(seconds), 2),
                }
            )
    print(f"{'contender':<26} {'objects':>7} {'min s':>7} {'median s':>9}  runs")
    for row in results:
        print(
            f"{row['contender']:<26} {row['objects']:>7} {row['min']:>7} {row['median']:>9}  "
            f"{row['seconds']}"
        )
    print(
        json.dumps(
            {
                "benchmark": "namespace_deletion",
                "machine": machine(),
                "kube_api_qps": args.kube_api_qps,
                "kube_api_burst": args.kube_api_burst,
                "results": results,
            },
            allow_nan=False,
        )
    )


if __name__ == "__main__":
    main()

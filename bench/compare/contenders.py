"""The contenders: the processes each one runs on a fresh stack, started and stopped.

- ``kube-controller-manager``: the reference, ``--controllers=deployment,replicaset`` (for
  ``--workload jobs``: ``job-controller``; ``statefulsets``: ``statefulset-controller``), and
  its garbage collector (which cascades the Deployment deletes) in a process of its own,
  ``kcm-garbagecollector``, so that its CPU and RSS show apart.
- ``kubus-P``: a watcher (``--resources all``: the garbage collector reads every resource, as
  kcm's does), P reconcilers (deployment and replicaset; job; statefulset) and kubus's
  garbage collector as a pool of its own (``--pool gc``, one process),
  ``kubus-garbagecollector``, the same split.
- ``ceiling``: no controller at all; the harness writes the pods itself.

Every controller process gets the same ``--kube-api-qps``/``--kube-api-burst``.
"""

from __future__ import annotations

import contextlib
import os
import re
import ssl
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from bench.support import (
    ServiceProcess,
    free_port,
    kubus_service,
    start_process,
    stop_processes,
    wait_ready,
)
from kubus.devstack import Binaries, default_cache_dir
from kubus.devstack.process import tail
from reconcilers.shards import MAX_SHARDS

__all__ = ["CEILING", "KCM", "Contender", "Limits", "Running", "contender_named", "kubus"]

KCM = "kube-controller-manager"
CEILING = "ceiling"
# The same controllers on both sides, the garbage collector apart.
CONTROLLERS = "deployment,replicaset"
# Per --workload: kcm's --controllers and kubus's (the Deployment workload's are CONTROLLERS).
KCM_CONTROLLERS = {
    "deployments": CONTROLLERS,
    "jobs": "job-controller",
    "statefulsets": "statefulset-controller",
}
KUBUS_CONTROLLERS = {"deployments": CONTROLLERS, "jobs": "job", "statefulsets": "statefulset"}
GC = "garbagecollector"
KCM_GC = "kcm-garbagecollector"
KUBUS_GC = "kubus-garbagecollector"
READY_TIMEOUT = 120.0


@dataclass(frozen=True)
class Limits:
    """The client rate limits every controller process gets (kcm's flags' names)."""

    kube_api_qps: float
    kube_api_burst: int


@dataclass(frozen=True)
class Running:
    """A started contender: its processes, and which of them are kubus reconcilers."""

    processes: list[ServiceProcess] = field(default_factory=list)
    reconcilers: list[ServiceProcess] = field(default_factory=list)

    def check_alive(self) -> None:
        for service in self.processes:
            if service.process.poll() is not None:
                raise RuntimeError(
                    f"{service.name} exited with code {service.process.returncode}: "
                    f"{tail(service.log)} (log: {service.log})"
                )


@dataclass(frozen=True)
class Contender:
    name: str
    # Reconciler processes for kubus, 0 for the others.
    reconcilers: int = 0
    # Their --partition-shards (kubus-PsK): each partition's keys split over K processes.
    shards: int = 1

    @property
    def is_ceiling(self) -> bool:
        return self.name == CEILING

    @property
    def is_kubus(self) -> bool:
        return self.reconcilers > 0

    @contextlib.contextmanager
    def start(
        self,
        env: dict[str, str],
        limits: Limits,
        *,
        log_dir: Path,
        workload: str = "deployments",
    ) -> Iterator[Running]:
        """The contender's processes, running the controllers of ``workload`` (--workload)."""
        started: list[ServiceProcess] = []
        try:
            if self.is_ceiling:
                yield Running()
                return
            if not self.is_kubus:
                started.append(start_kcm(env, KCM, KCM_CONTROLLERS[workload], limits, log_dir))
                started.append(start_kcm(env, KCM_GC, GC, limits, log_dir))
                for kcm in started:
                    wait_kcm(kcm)
                yield Running(processes=started)
                return
            watcher = kubus_service(env, "watcher", "watcher", "--resources=all", log_dir=log_dir)
            started.append(watcher)
            reconcilers = [
                kubus_service(
                    env,
                    "reconciler",
                    f"reconciler-{index}",
                    f"--controllers={KUBUS_CONTROLLERS[workload]}",
                    f"--kube-api-qps={limits.kube_api_qps:g}",
                    f"--kube-api-burst={limits.kube_api_burst}",
                    f"--partition-shards={self.shards}",
                    log_dir=log_dir,
                )
                for index in range(self.reconcilers)
            ]
            started.extend(reconcilers)
            collector = kubus_service(
                env,
                "reconciler",
                KUBUS_GC,
                "--pool=gc",
                f"--controllers={GC}",
                f"--kube-api-qps={limits.kube_api_qps:g}",
                f"--kube-api-burst={limits.kube_api_burst}",
                log_dir=log_dir,
            )
            started.append(collector)
            for service in (watcher, *reconcilers, collector):
                assert service.health_port is not None
                wait_ready(
                    service.process,
                    service.health_port,
                    what=f"{service.name} (log: {service.log})",
                    timeout=READY_TIMEOUT,
                )
            yield Running(processes=started, reconcilers=reconcilers)
        finally:
            stop_processes(started)


def kubus(processes: int, shards: int = 1) -> Contender:
    name = f"kubus-{processes}" if shards == 1 else f"kubus-{processes}s{shards}"
    return Contender(name, reconcilers=processes, shards=shards)


_KUBUS = re.compile(r"^kubus-([1-9][0-9]*)(?:s([1-9][0-9]*))?$")


def contender_named(name: str) -> Contender:
    """``kube-controller-manager``, ``ceiling``, ``kubus-P`` or ``kubus-PsK`` (P processes,
    ``--partition-shards K``); ValueError otherwise."""
    if name in (KCM, CEILING):
        return Contender(name)
    match = _KUBUS.match(name)
    if match is not None and int(match[2] or 1) <= MAX_SHARDS:
        return kubus(int(match[1]), int(match[2] or 1))
    raise ValueError(
        f"unknown contender {name!r} (known: {KCM}, kubus-P such as kubus-2, kubus-PsK such "
        f"as kubus-4s4 for --partition-shards K up to {MAX_SHARDS}, {CEILING})"
    )


def start_kcm(
    env: dict[str, str], name: str, controllers: str, limits: Limits, log_dir: Path
) -> ServiceProcess:
    binary = Binaries(cache_dir=default_cache_dir(os.environ)).ensure([KCM])[KCM].path
    port = free_port()
    cert_dir = tempfile.mkdtemp(prefix=f"kubus-bench-{name}-", dir=log_dir)
    service = start_process(
        name,
        [
            str(binary),
            f"--kubeconfig={env['KUBECONFIG']}",
            f"--controllers={controllers}",
            "--leader-elect=false",
            "--use-service-account-credentials=false",
            f"--kube-api-qps={limits.kube_api_qps:g}",
            f"--kube-api-burst={limits.kube_api_burst}",
            "--bind-address=127.0.0.1",
            f"--secure-port={port}",
            f"--cert-dir={cert_dir}",
            "--authentication-skip-lookup=true",
        ],
        log_dir=log_dir,
    )
    return ServiceProcess(name, service.process, service.log, health_port=port)


def wait_kcm(service: ServiceProcess) -> None:
    """Until kcm's /healthz answers and its controllers have synced their informers."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        healthy = False
        with (
            contextlib.suppress(OSError),
            urllib.request.urlopen(
                f"https://127.0.0.1:{service.health_port}/healthz", timeout=1, context=context
            ),
        ):
            healthy = True
        log = service.log.read_text(errors="replace")
        waiting, synced = log.count("Waiting for caches to sync"), log.count("Caches are synced")
        if healthy and 0 < waiting <= synced:
            return
        if time.monotonic() > deadline or service.process.poll() is not None:
            raise RuntimeError(
                f"{service.name} did not get ready: {tail(service.log)} (log: {service.log})"
            )
        time.sleep(0.1)

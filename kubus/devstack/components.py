"""How each dev stack component is launched and how its readiness is probed.

Each ``*_launch`` function turns the stack's layout (ports, files, binaries) into a
:class:`Launch`: the command line and a probe that answers "ready yet?" without blocking for
long. Everything binds to 127.0.0.1 and keeps its data under the state dir.
"""

from __future__ import annotations

import ssl
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import yaml

from kubus.devstack.pki import Pki
from kubus.devstack.ports import HOST

__all__ = [
    "SERVICE_CLUSTER_IP_RANGE",
    "SERVICE_IP",
    "Launch",
    "Layout",
    "apiserver_launch",
    "etcd_launch",
    "jaeger_launch",
    "kwok_launch",
    "nats_launch",
    "provisioner_launch",
    "reconciler_launch",
    "scheduler_launch",
    "service_account_flags",
    "watcher_launch",
]

SERVICE_CLUSTER_IP_RANGE = "10.96.0.0/16"
SERVICE_IP = "10.96.0.1"
POD_CIDR = "10.244.0.0/16"

Probe = Callable[[], bool]

# Port names, as `allocate_ports` and the CLI's --*-port flags know them.
PORT_NAMES = (
    "etcd",
    "etcd-peer",
    "apiserver",
    "scheduler",
    "kwok",
    "provisioner-health",
    "nats",
    "nats-monitor",
    "otlp-grpc",
    "otlp-http",
    "jaeger-query",
    "jaeger-query-grpc",
    "watcher-health",
    "watcher-metrics",
    "reconciler-0-health",
    "reconciler-0-metrics",
    "reconciler-1-health",
    "reconciler-1-metrics",
)
RECONCILERS = 2


@dataclass(frozen=True)
class Layout:
    """Where everything of one stack lives: its state dir, ports and binaries."""

    state_dir: Path
    ports: Mapping[str, int]
    binaries: Mapping[str, Path]

    def path(self, *parts: str) -> Path:
        return self.state_dir.joinpath(*parts)

    def url(self, port: str, scheme: str = "http") -> str:
        return f"{scheme}://{HOST}:{self.ports[port]}"

    @property
    def kubeconfig(self) -> Path:
        return self.path("kubeconfig")


@dataclass(frozen=True)
class Launch:
    name: str
    argv: tuple[str, ...]
    probe: Probe
    # Variables added to the inherited environment.
    env: Mapping[str, str] = field(default_factory=dict)


def etcd_launch(layout: Layout) -> Launch:
    client, peer = layout.url("etcd"), layout.url("etcd-peer")
    argv = (
        str(layout.binaries["etcd"]),
        "--name=kubus-dev",
        f"--data-dir={layout.path('etcd')}",
        f"--listen-client-urls={client}",
        f"--advertise-client-urls={client}",
        f"--listen-peer-urls={peer}",
        f"--initial-advertise-peer-urls={peer}",
        f"--initial-cluster=kubus-dev={peer}",
        "--unsafe-no-fsync",  # a throw-away data dir: durability buys nothing here
        "--log-level=warn",
    )
    return Launch("etcd", argv, _http_probe(client + "/health", expect=b'"health":"true"'))


def apiserver_launch(layout: Layout, pki: Pki) -> Launch:
    tracing = layout.path("apiserver-tracing.yaml")
    tracing.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "apiserver.config.k8s.io/v1",
                "kind": "TracingConfiguration",
                "endpoint": f"{HOST}:{layout.ports['otlp-grpc']}",
                # 0 per million: the apiserver samples only requests whose caller sampled.
                "samplingRatePerMillion": 0,
            }
        )
    )
    argv = (
        str(layout.binaries["kube-apiserver"]),
        f"--etcd-servers={layout.url('etcd')}",
        f"--bind-address={HOST}",
        f"--advertise-address={HOST}",
        f"--secure-port={layout.ports['apiserver']}",
        f"--cert-dir={layout.path('pki')}",
        f"--tls-cert-file={pki.serving_cert}",
        f"--tls-private-key-file={pki.serving_key}",
        f"--client-ca-file={pki.ca_cert}",
        f"--service-account-key-file={pki.service_account_public_key}",
        f"--service-account-signing-key-file={pki.service_account_key}",
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
        f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
        "--authorization-mode=RBAC",
        # Nothing lifts the not-ready taint off new nodes yet (node lifecycle controller).
        # ServiceAccount admission stays on: kubus's serviceaccount-controller (or k3s's
        # controllers) gives every namespace its `default` ServiceAccount.
        "--disable-admission-plugins=TaintNodesByCondition",
        "--allow-privileged=true",
        "--profiling=false",
        f"--tracing-config-file={tracing}",
    )
    context = _client_tls(pki)
    return Launch(
        "kube-apiserver",
        argv,
        _http_probe(layout.url("apiserver", "https") + "/readyz", context=context, expect=b"ok"),
    )


def scheduler_launch(layout: Layout) -> Launch:
    kubeconfig = str(layout.kubeconfig)
    argv = (
        str(layout.binaries["kube-scheduler"]),
        f"--kubeconfig={kubeconfig}",
        f"--authentication-kubeconfig={kubeconfig}",
        f"--authorization-kubeconfig={kubeconfig}",
        f"--bind-address={HOST}",
        f"--secure-port={layout.ports['scheduler']}",
        f"--cert-dir={layout.path('scheduler')}",
        # Its /healthz is always allowed; no front proxy exists whose CA it could look up.
        "--authentication-skip-lookup=true",
        "--leader-elect=false",
    )
    return Launch(
        "kube-scheduler",
        argv,
        _http_probe(
            layout.url("scheduler", "https") + "/healthz", context=_insecure_tls(), expect=b"ok"
        ),
    )


def kwok_launch(layout: Layout) -> Launch:
    stages = layout.path("kwok-stages.yaml")
    stages.write_text(
        resources.files("kubus.devstack").joinpath("assets/kwok-stages.yaml").read_text()
    )
    argv = (
        str(layout.binaries["kwok"]),
        f"--kubeconfig={layout.kubeconfig}",
        f"--config={stages}",
        "--manage-all-nodes=false",
        "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
        f"--cidr={POD_CIDR}",
        "--node-ip=10.0.0.1",
        "--node-lease-duration-seconds=40",
        f"--server-address={HOST}:{layout.ports['kwok']}",
    )
    return Launch("kwok", argv, _http_probe(layout.url("kwok") + "/healthz", expect=b"ok"))


def provisioner_launch(layout: Layout) -> Launch:
    """The stack's external provisioner (:mod:`kubus.devstack.provisioner`): volumes for the
    claims of the default StorageClass, as a CSI driver's external-provisioner makes them."""
    argv = (
        sys.executable,
        "-m",
        "kubus.devstack.provisioner",
        f"--kubeconfig={layout.kubeconfig}",
        f"--health-probe-bind-address={HOST}:{layout.ports['provisioner-health']}",
    )
    return Launch(
        "provisioner",
        argv,
        _http_probe(layout.url("provisioner-health") + "/readyz", expect=b"ok"),
    )


def nats_launch(layout: Layout) -> Launch:
    argv = (
        str(layout.binaries["nats-server"]),
        f"--addr={HOST}",
        f"--port={layout.ports['nats']}",
        f"--http_port={layout.ports['nats-monitor']}",
        "--jetstream",
        f"--store_dir={layout.path('nats')}",
        f"--server_name=kubus-dev-{layout.ports['nats']}",
    )
    return Launch(
        "nats-server",
        argv,
        _http_probe(
            layout.url("nats-monitor") + "/healthz?js-enabled-only=true", expect=b'"status":"ok"'
        ),
    )


def jaeger_launch(layout: Layout) -> Launch:
    """Jaeger v2 with in-memory storage, OTLP in (gRPC and HTTP) and the query API out."""
    storage = "memstore"
    config = {
        "service": {
            "extensions": ["jaeger_storage", "jaeger_query"],
            "pipelines": {
                "traces": {
                    "receivers": ["otlp"],
                    "processors": ["batch"],
                    "exporters": ["jaeger_storage_exporter"],
                }
            },
            "telemetry": {"metrics": {"level": "none"}, "logs": {"level": "warn"}},
        },
        "extensions": {
            "jaeger_storage": {"backends": {storage: {"memory": {"max_traces": 100_000}}}},
            "jaeger_query": {
                "storage": {"traces": storage},
                "http": {"endpoint": f"{HOST}:{layout.ports['jaeger-query']}"},
                "grpc": {"endpoint": f"{HOST}:{layout.ports['jaeger-query-grpc']}"},
                # Jaeger tracing its own queries would clutter the traces kubus is judged by.
                "enable_tracing": False,
            },
        },
        "receivers": {
            "otlp": {
                "protocols": {
                    "grpc": {"endpoint": f"{HOST}:{layout.ports['otlp-grpc']}"},
                    "http": {"endpoint": f"{HOST}:{layout.ports['otlp-http']}"},
                }
            }
        },
        # A short batch keeps a just-finished trace searchable within a fraction of a second.
        "processors": {"batch": {"timeout": "200ms"}},
        "exporters": {"jaeger_storage_exporter": {"trace_storage": storage}},
    }
    path = layout.path("jaeger.yaml")
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    argv = (str(layout.binaries["jaeger"]), f"--config={path}")
    return Launch(
        "jaeger",
        argv,
        _http_probe(layout.url("jaeger-query") + "/api/services"),
    )


def _http_probe(
    url: str, *, context: ssl.SSLContext | None = None, expect: bytes | None = None
) -> Probe:
    def probe() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=2, context=context) as response:
                body: bytes = response.read()
        except (urllib.error.URLError, OSError, ValueError):
            return False
        return expect is None or expect in body.replace(b" ", b"")

    return probe


def _client_tls(pki: Pki) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki.ca_cert))
    context.load_cert_chain(str(pki.admin_cert), str(pki.admin_key))
    return context


def _insecure_tls() -> ssl.SSLContext:
    # kube-scheduler serves /healthz with a self-signed certificate of its own.
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def service_account_flags(pki: Pki) -> tuple[str, ...]:
    """The reconciler flags kube-controller-manager's service-account controllers need: the
    key the apiserver's ``--service-account-key-file`` verifies, and the cluster's CA."""
    return (
        f"--service-account-private-key-file={pki.service_account_key}",
        f"--root-ca-file={pki.ca_cert}",
    )


def watcher_launch(layout: Layout) -> Launch:
    """The kubus watcher, run from this Python environment, traced to the stack's Jaeger."""
    argv = (
        sys.executable,
        "-m",
        "kubus.cli",
        "watcher",
        f"--kubeconfig={layout.kubeconfig}",
        f"--nats-url=nats://{HOST}:{layout.ports['nats']}",
        f"--health-probe-bind-address={HOST}:{layout.ports['watcher-health']}",
        f"--metrics-bind-address={HOST}:{layout.ports['watcher-metrics']}",
        # Whatever the default controllers read (Secrets as metadata only; the garbage
        # collector reads every resource).
        "--resources=all",
    )
    return Launch(
        "kubus-watcher",
        argv,
        _http_probe(layout.url("watcher-health") + "/readyz", expect=b"ok"),
        env={"OTEL_EXPORTER_OTLP_ENDPOINT": layout.url("otlp-grpc")},
    )


def reconciler_launch(layout: Layout, index: int, pki: Pki) -> Launch:
    """Process ``index`` of the dev stack's reconciler pool (pool ``default``), with the
    stack's service-account signing key and CA, as kube-controller-manager would get them."""
    argv = (
        sys.executable,
        "-m",
        "kubus.cli",
        "reconciler",
        f"--kubeconfig={layout.kubeconfig}",
        f"--nats-url=nats://{HOST}:{layout.ports['nats']}",
        *service_account_flags(pki),
        f"--health-probe-bind-address={HOST}:{layout.ports[f'reconciler-{index}-health']}",
        f"--metrics-bind-address={HOST}:{layout.ports[f'reconciler-{index}-metrics']}",
    )
    return Launch(
        f"kubus-reconciler-{index}",
        argv,
        _http_probe(layout.url(f"reconciler-{index}-health") + "/readyz", expect=b"ok"),
        env={"OTEL_EXPORTER_OTLP_ENDPOINT": layout.url("otlp-grpc")},
    )

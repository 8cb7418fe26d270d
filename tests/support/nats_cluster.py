"""kubus's production NATS, run on this machine: three nats-servers on 127.0.0.1 as one
JetStream cluster, each started from deploy/components/nats-cluster/nats.conf.

The file is the one the ConfigMap ``nats-config`` holds. It is rendered, not rewritten: only
what differs between a pod and a loopback process is replaced (listen addresses and ports, the
three route URLs, the store, TLS and pid paths), each replacement checked to hit exactly the
text it expects, so that a change to the file either still runs here or fails loudly. What
the pod takes from its environment (``POD_NAME``, the users' passwords) comes from the
process's environment, as nats-server reads it in the pod.

TLS material is made per run in cert-manager's layout (``tls.crt``, ``tls.key``, ``ca.crt``),
with the ``cryptography`` package: a CA, and one certificate for 127.0.0.1 and localhost that
each server presents to clients and to the other servers' routes.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import secrets
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from kubus.devstack.process import spawn, tail
from tests.support.nats_server import free_port, nats_server_binary

__all__ = [
    "COMPONENT",
    "CONFIG",
    "ClusterNode",
    "NatsCluster",
    "Tls",
    "make_password",
    "make_tls",
    "render_config",
]

REPO: Final = Path(__file__).resolve().parents[2]
COMPONENT: Final = REPO / "deploy" / "components" / "nats-cluster"
CONFIG: Final = COMPONENT / "nats.conf"
SIZE: Final = 3

# What a pod has that a loopback process has elsewhere: (text in nats.conf, times it occurs).
CLIENT_LISTEN: Final = ("listen: 0.0.0.0:4222", 1)
MONITOR_LISTEN: Final = ("http: 0.0.0.0:8222", 1)
ROUTE_LISTEN: Final = ("listen: 0.0.0.0:6222", 1)
TLS_DIR: Final = ("/etc/nats/tls/", 5)
STORE_DIR: Final = ("/data/jetstream", 1)
PID_FILE: Final = ("/var/run/nats/nats.pid", 1)
# The StatefulSet's pods as the routes name them (headless Service DNS names).
ROUTE_URLS: Final = tuple((f"nats-route://nats-{i}.nats-headless:6222", 1) for i in range(SIZE))


def make_password() -> str:
    """A password as README.md says to make one: a letter, then hex digits (nats-server reads
    it as a config value; a URL carries it unescaped)."""
    return "k" + secrets.token_hex(24)


@dataclass(frozen=True)
class Tls:
    """A directory laid out as the Secret ``kubus-nats-tls`` is mounted: tls.crt, tls.key,
    ca.crt."""

    directory: Path

    @property
    def ca(self) -> Path:
        return self.directory / "ca.crt"

    @property
    def cert(self) -> Path:
        return self.directory / "tls.crt"

    @property
    def key(self) -> Path:
        return self.directory / "tls.key"


def make_tls(directory: Path) -> Tls:
    """A throw-away CA and a certificate of it for 127.0.0.1 and localhost, usable by a server
    for clients (serverAuth) and by a route to present to another server (clientAuth)."""
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kubus test NATS CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "nats")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    tls = Tls(directory)
    tls.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    tls.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    tls.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    tls.key.chmod(0o600)
    return tls


@dataclass(frozen=True)
class ClusterNode:
    """Where one server of the cluster lives on this machine."""

    index: int
    port: int
    monitor_port: int
    route_port: int
    directory: Path

    @property
    def name(self) -> str:
        """The server_name: the pod's name in the StatefulSet."""
        return f"nats-{self.index}"

    @property
    def store_dir(self) -> Path:
        return self.directory / "jetstream"

    @property
    def config_file(self) -> Path:
        return self.directory / "nats.conf"

    @property
    def log(self) -> Path:
        return self.directory / "nats-server.log"


def render_config(
    text: str, node: ClusterNode, nodes: list[ClusterNode], tls: Tls, *, source: Path = CONFIG
) -> str:
    """nats.conf for ``node`` on loopback: the ConfigMap's text with each pod-only value
    replaced; AssertionError if the text no longer holds one where expected."""
    replacements = [
        (CLIENT_LISTEN, f"listen: 127.0.0.1:{node.port}"),
        (MONITOR_LISTEN, f"http: 127.0.0.1:{node.monitor_port}"),
        (ROUTE_LISTEN, f"listen: 127.0.0.1:{node.route_port}"),
        *(
            (route, f"nats-route://127.0.0.1:{other.route_port}")
            for route, other in zip(ROUTE_URLS, nodes, strict=True)
        ),
        (TLS_DIR, f"{tls.directory}/"),
        (STORE_DIR, str(node.store_dir)),
        (PID_FILE, str(node.directory / "nats.pid")),
    ]
    for (old, times), new in replacements:
        found = text.count(old)
        assert found == times, (
            f"{source} holds {old!r} {found} time(s), not {times}: the cluster test renders "
            "the file by replacing it (tests/support/nats_cluster.py)"
        )
        text = text.replace(old, new)
    return text


class NatsCluster:
    """Three nats-servers from the production config, on free loopback ports; the users'
    passwords are ``passwords`` (user -> password, as the Secret kubus-nats-users holds them).

    A context manager: every server is killed on the way out, whatever happened.
    """

    def __init__(self, directory: Path, tls: Tls, passwords: Mapping[str, str]) -> None:
        self.directory = directory
        self.tls = tls
        self.passwords = dict(passwords)
        self._binary = nats_server_binary()
        self.nodes = [
            ClusterNode(i, free_port(), free_port(), free_port(), directory / f"nats-{i}")
            for i in range(SIZE)
        ]
        text = CONFIG.read_text()
        for node in self.nodes:
            node.directory.mkdir(parents=True, exist_ok=True)
            node.config_file.write_text(render_config(text, node, self.nodes, tls))
        self._processes: dict[int, subprocess.Popen[bytes]] = {}

    # --- addresses ------------------------------------------------------------------------

    def url(self, user: str, *, scheme: str = "tls", first: ClusterNode | None = None) -> str:
        """The three servers as ``--nats-url`` takes them, with ``user``'s credentials;
        ``first`` first (kubus tries them in order)."""
        password = self.passwords[user]
        nodes = sorted(self.nodes, key=lambda node: node is not first)
        return ",".join(f"{scheme}://{user}:{password}@127.0.0.1:{node.port}" for node in nodes)

    def clients(self, node: ClusterNode) -> list[str]:
        """The names of the clients connected to ``node`` (/connz)."""
        document = self.monitor(node, "connz?limit=1024")
        return sorted(str(entry.get("name", "")) for entry in document.get("connections") or ())

    def node(self, name: str) -> ClusterNode:
        return next(node for node in self.nodes if node.name == name)

    # --- life -----------------------------------------------------------------------------

    def env(self, node: ClusterNode) -> dict[str, str]:
        """What the pod's environment gives nats-server (and nothing else: no PATH needed)."""
        return {
            "POD_NAME": node.name,
            "WATCHER_PASSWORD": self.passwords["watcher"],
            "RECONCILER_PASSWORD": self.passwords["reconciler"],
        }

    def check_config(self) -> str:
        """``nats-server -t``: the rendered file of each server is valid; its verdict."""
        verdicts = []
        for node in self.nodes:
            result = subprocess.run(
                [str(self._binary), "-t", "-c", str(node.config_file)],
                env=self.env(node),
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
            output = (result.stdout + result.stderr).strip()
            assert result.returncode == 0, f"nats-server -t {node.config_file}: {output}"
            verdicts.append(output)
        return verdicts[0]

    def start(self, node: ClusterNode | None = None) -> None:
        """Start one server (or all), then wait until the cluster serves JetStream."""
        for each in [node] if node is not None else self.nodes:
            assert not self.running(each), f"{each.name} is running already"
            tied = threading.current_thread() is threading.main_thread()
            _record, process = spawn(
                f"nats-server {each.name}",
                [str(self._binary), "-c", str(each.config_file)],
                log_path=each.log,
                env=self.env(each),
                die_with_parent=tied,
            )
            self._processes[each.index] = process
        self.wait_healthy(timeout=60)

    def kill(self, node: ClusterNode) -> None:
        """SIGKILL, as a node that loses power: no lame duck, nothing flushed."""
        process = self._processes[node.index]
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)

    def running(self, node: ClusterNode) -> bool:
        process = self._processes.get(node.index)
        return process is not None and process.poll() is None

    def stop(self) -> None:
        for process in self._processes.values():
            if process.poll() is None:
                process.kill()
                process.wait(timeout=10)

    def __enter__(self) -> NatsCluster:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    # --- monitoring -----------------------------------------------------------------------

    def monitor(self, node: ClusterNode, endpoint: str, timeout: float = 3.0) -> dict[str, Any]:
        address = f"http://127.0.0.1:{node.monitor_port}/{endpoint.lstrip('/')}"
        with urllib.request.urlopen(address, timeout=timeout) as response:
            document: dict[str, Any] = json.load(response)
            return document

    def healthz(self, node: ClusterNode) -> dict[str, Any]:
        """/healthz (JetStream included); an unreachable server says so instead."""
        try:
            return self.monitor(node, "healthz")
        except urllib.error.HTTPError as error:  # 503 with a JSON body: not healthy yet
            body: dict[str, Any] = json.loads(error.read() or b"{}")
            return body
        except OSError as error:
            return {"status": "unreachable", "error": str(error)}

    def live_nodes(self) -> Iterator[ClusterNode]:
        return (node for node in self.nodes if self.running(node))

    def wait_healthy(self, *, timeout: float) -> None:
        """Every running server's /healthz says ok: JetStream on, its meta group and streams
        current."""
        deadline = time.monotonic() + timeout
        problems: dict[str, Any] = {}
        while time.monotonic() < deadline:
            problems = {}
            for node in self.live_nodes():
                health = self.healthz(node)
                if health.get("status") != "ok":
                    problems[node.name] = health
            if not problems:
                return
            time.sleep(0.2)
        logs = {name: tail(self.node(name).log, 8) for name in problems}
        raise AssertionError(
            f"NATS cluster not healthy within {timeout:.0f}s: {problems}; logs: {logs}"
        )

    def stream_state(self, node: ClusterNode, stream: str) -> dict[str, Any] | None:
        """The stream as ``node`` holds it (its own replica), from /jsz?streams=true."""
        document = self.monitor(node, "jsz?streams=true&config=true")
        for account in document.get("account_details") or ():
            for detail in account.get("stream_detail") or ():
                if detail.get("name") == stream:
                    found: dict[str, Any] = detail
                    return found
        return None

    def violations(self) -> list[str]:
        """Permission violations every server logged (nats-server logs each refusal)."""
        lines = []
        for node in self.nodes:
            if node.log.exists():
                for line in node.log.read_text(errors="replace").splitlines():
                    if "Violation" in line:
                        lines.append(f"{node.name}: {line}")
        return lines

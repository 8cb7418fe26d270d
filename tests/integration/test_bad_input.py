"""Bad input to `kubus reconciler` and `kubus watcher`, tried as a new user would.

Each case runs the real command (``python -m kubus.cli ...``) against the dev stack's apiserver
and NATS (or a nats-server of this module's own, with a password) and checks what the user
sees: a non-zero exit, a last line on stderr ``kubus <command>: error: ...`` naming the flag or
file, no traceback, no password anywhere in the output (every NATS URL here carries one), a
bounded time, and, since the inputs are checked before anything is provisioned, no stream or
bucket of the case's own bus prefix on the NATS server.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import nats
import pytest

from tests.support.nats_server import NatsServer, free_port
from tests.support.services import kubus_pool
from tests.support.wait import wait_for

pytestmark = pytest.mark.integration

SECRET = "pw-" + uuid.uuid4().hex[:12]
OWN_PASSWORD = "right-" + uuid.uuid4().hex[:8]
CONNECT_TIMEOUT = 3.0
# Python start-up and imports take 1-3 s of CPU on this 2-core machine, more under load.
SLACK = 25.0


@dataclass
class Env:
    """What a case can refer to: URLs, files and ports, made once per module."""

    stack: dict[str, str]
    tmp: Path
    own: NatsServer
    taken: socket.socket  # listening: a port another process holds
    closed_port: int = field(default_factory=free_port)

    @property
    def taken_port(self) -> int:
        port: int = self.taken.getsockname()[1]
        return port

    def stack_nats(self, *, password: str = SECRET) -> str:
        address = urlsplit(self.stack["NATS_URL"]).netloc.rpartition("@")[2]
        return f"nats://kubus:{password}@{address}"

    def own_nats(self, password: str) -> str:
        return self.own.url(credentials=f"kubus:{password}")

    def closed_nats(self) -> str:
        return f"nats://kubus:{SECRET}@127.0.0.1:{self.closed_port}"

    def file(self, name: str, text: str) -> Path:
        path = self.tmp / name
        path.write_text(text)
        return path

    def dead_apiserver_kubeconfig(self) -> Path:
        return self.file(
            "dead-apiserver.kubeconfig",
            "apiVersion: v1\nkind: Config\ncurrent-context: dead\n"
            f"clusters: [{{name: dead, cluster: {{server: 'https://127.0.0.1:{self.closed_port}',"
            " insecure-skip-tls-verify: true}}]\n"
            "users: [{name: u, user: {token: not-a-real-token}}]\n"
            "contexts: [{name: dead, context: {cluster: dead, user: u}}]\n",
        )


@dataclass(frozen=True)
class Case:
    command: str  # reconciler | watcher
    args: Callable[[Env, str], list[str]]  # (env, bus prefix) -> extra flags
    names: Callable[[Env], str]  # what the last line must name
    code: int = 1
    nats_env: Callable[[Env], str] | None = None  # $NATS_URL instead of --nats-url
    nats: str = "stack"  # which server the case's own prefix must be absent from
    quick: bool = False  # refused without waiting for --connect-timeout: a tighter bound
    flags: Callable[[Env], list[str]] | None = None  # replaces the default --nats-url


def _case(command: str, case_id: str, **kw: Any) -> Any:
    return pytest.param(Case(command, **kw), id=f"{command}-{case_id}")


def _flag(name: str) -> Callable[[Env], str]:
    return lambda _env: name


CASES = [
    # --- NATS: where it is, and who we are there ---------------------------------------------
    *(
        _case(
            command,
            "nats-closed-port-with-password",
            args=lambda env, _p: [f"--nats-url={env.closed_nats()}"],
            names=lambda env: (
                f"--nats-url: cannot connect to NATS at nats://127.0.0.1:"
                f"{env.closed_port} within 3s"
            ),
        )
        for command in ("reconciler", "watcher")
    ),
    *(
        _case(
            command,
            "nats-url-env-closed-port-with-password",
            args=lambda _env, _p: [],
            nats_env=lambda env: env.closed_nats(),
            names=lambda env: (
                "--nats-url (from $NATS_URL): cannot connect to NATS at "
                f"nats://127.0.0.1:{env.closed_port} within 3s"
            ),
        )
        for command in ("reconciler", "watcher")
    ),
    *(
        _case(
            command,
            "nats-url-http-scheme",
            args=lambda env, _p: [f"--nats-url=http://kubus:{SECRET}@127.0.0.1:{env.closed_port}"],
            names=_flag("argument --nats-url: bad NATS URL 'http://***@127.0.0.1"),
            code=2,
            quick=True,
        )
        for command in ("reconciler", "watcher")
    ),
    *(
        _case(
            command,
            "nats-url-env-http-scheme",
            args=lambda _env, _p: [],
            nats_env=lambda env: f"http://kubus:{SECRET}@127.0.0.1:{env.closed_port}",
            names=_flag("--nats-url (from $NATS_URL): bad NATS URL 'http://***@127.0.0.1"),
            quick=True,
        )
        for command in ("reconciler", "watcher")
    ),
    *(
        _case(
            command,
            "nats-wrong-password",
            args=lambda env, _p: [f"--nats-url={env.own_nats(SECRET)}"],
            names=lambda env: (
                f"--nats-url: cannot connect to NATS at nats://127.0.0.1:"
                f"{env.own.port} within 3s: the server refused the credentials"
            ),
            nats="own",
            quick=True,
        )
        for command in ("reconciler", "watcher")
    ),
    _case(
        "reconciler",
        "config-nats-url-a-number",
        args=lambda env, _p: [f"--config={env.file('nats-number.yaml', 'nats-url: 12345')}"],
        names=lambda env: (
            f"--config {env.tmp / 'nats-number.yaml'}: nats-url: must be a string, not 12345 (int)"
        ),
        flags=lambda _env: [],
        quick=True,
    ),
    _case(
        "watcher",
        "stream-replicas-5-on-one-server",
        args=lambda env, _p: [f"--nats-url={env.own_nats(OWN_PASSWORD)}", "--stream-replicas=5"],
        names=lambda env: (
            f"--stream-replicas 5: 5 replicas asked for, but NATS at "
            f"nats://127.0.0.1:{env.own.port} is a single server"
        ),
        nats="own",
        quick=True,
    ),
    _case(
        "watcher",
        "stream-replicas-0",
        args=lambda _env, _p: ["--stream-replicas=0"],
        names=_flag("argument --stream-replicas: must be a whole number between 1 and 5"),
        code=2,
        quick=True,
    ),
    # --- the kubeconfig and the apiserver ---------------------------------------------------
    *(
        _case(
            command,
            "kubeconfig-missing",
            args=lambda env, _p: [f"--kubeconfig={env.tmp / 'no-such.kubeconfig'}"],
            names=lambda env: f"--kubeconfig {env.tmp / 'no-such.kubeconfig'}: no such file",
            quick=True,
        )
        for command in ("reconciler", "watcher")
    ),
    *(
        _case(
            command,
            "kubeconfig-malformed",
            args=lambda env, _p: [f"--kubeconfig={env.file('bad.kubeconfig', 'clusters: [')}"],
            names=lambda env: f"--kubeconfig {env.tmp / 'bad.kubeconfig'}: not YAML at line 1",
            quick=True,
        )
        for command in ("reconciler", "watcher")
    ),
    *(
        _case(
            command,
            "apiserver-dead",
            args=lambda env, _p: [f"--kubeconfig={env.dead_apiserver_kubeconfig()}"],
            names=lambda env: (
                f"--kubeconfig {env.tmp / 'dead-apiserver.kubeconfig'}: no answer "
                f"from the apiserver at https://127.0.0.1:{env.closed_port} within 3s"
            ),
        )
        for command in ("reconciler", "watcher")
    ),
    # --- numbers and durations ------------------------------------------------------------
    *(
        _case(
            "reconciler",
            f"{flag}={value}",
            args=lambda _env, _p, flag=flag, value=value: [f"--{flag}={value}"],
            names=lambda _env, flag=flag: (
                f"argument {'-v/--v' if flag == 'v' else '--' + flag}: must be"
            ),
            code=2,
            quick=True,
        )
        for flag, value in [
            ("concurrent-deployment-syncs", "0"),
            ("concurrent-deployment-syncs", "-1"),
            ("concurrent-replicaset-syncs", "0"),
            ("kube-api-qps", "0"),
            ("kube-api-qps", "-5"),
            ("kube-api-burst", "0"),
            ("partition-lease-duration", "nan"),
            ("partition-renew-deadline", "inf"),
            ("partition-retry-period", "-2s"),
            ("connect-timeout", "0"),
            ("pool", "a.b"),
            ("v", "-1"),
            ("logging-format", "xml"),
        ]
    ),
    _case(
        "reconciler",
        "negative-leases-in-order",
        args=lambda _env, _p: [
            "--partition-lease-duration=-1",
            "--partition-renew-deadline=-2",
            "--partition-retry-period=-3",
        ],
        names=_flag("argument --partition-lease-duration: must be a duration > 0s, not '-1'"),
        code=2,
        quick=True,
    ),
    _case(
        "reconciler",
        "leases-out-of-order",
        args=lambda _env, _p: ["--partition-lease-duration=10s", "--partition-renew-deadline=1m"],
        names=_flag(
            "--partition-retry-period (2s) < --partition-renew-deadline (1m0s) < "
            "--partition-lease-duration (10s) is needed"
        ),
        quick=True,
    ),
    *(
        _case(
            "watcher",
            f"tombstone-ttl={value}",
            args=lambda _env, _p, value=value: [f"--tombstone-ttl={value}"],
            names=_flag("argument --tombstone-ttl: must be a duration"),
            code=2,
            quick=True,
        )
        for value in ("0", "-1", "500ms", "nan")
    ),
    _case(
        "watcher",
        "partitions-0",
        args=lambda _env, _p: ["--partitions=0"],
        names=_flag("argument --partitions: must be a whole number between 1 and 1024"),
        code=2,
        quick=True,
    ),
    *(
        _case(
            command,
            "bus-prefix-upper-case",
            args=lambda _env, _p: ["--bus-prefix=Kubus"],
            names=_flag("--bus-prefix"),
            code=2 if command == "reconciler" else 1,
            quick=True,
        )
        for command in ("reconciler", "watcher")
    ),
    # --- probe addresses ------------------------------------------------------------------
    *(
        _case(
            command,
            f"{flag}-port-taken",
            args=lambda env, _p, flag=flag: [f"--{flag}=127.0.0.1:{env.taken_port}"],
            names=lambda env, flag=flag: (
                f"--{flag}: 127.0.0.1:{env.taken_port}: cannot listen there"
            ),
            quick=True,
        )
        for command in ("reconciler", "watcher")
        for flag in ("health-probe-bind-address", "metrics-bind-address")
    ),
    *(
        _case(
            command,
            "bind-host-unresolvable",
            args=lambda _env, _p: ["--metrics-bind-address=no-such-host.invalid:8080"],
            names=_flag("--metrics-bind-address: no-such-host.invalid:8080: cannot resolve"),
            quick=True,
        )
        for command in ("reconciler", "watcher")
    ),
    # --- --config and the flags' spelling --------------------------------------------------
    _case(
        "reconciler",
        "config-wrong-type",
        args=lambda env, _p: [f"--config={env.file('ten.yaml', 'kube-api-qps: ten')}"],
        names=lambda env: f"--config {env.tmp / 'ten.yaml'}: kube-api-qps: must be a number > 0",
        quick=True,
    ),
    *(
        _case(
            command,
            f"abbreviation-{arg}",
            args=lambda _env, _p, arg=arg: [arg],
            names=lambda _env, arg=arg: f"unrecognized arguments: {arg}",
            code=2,
            quick=True,
        )
        for command, arg in [
            ("reconciler", "--verbose"),
            ("reconciler", "--kube-api"),
            ("watcher", "--verbose"),
            ("watcher", "--stream-rep=1"),
        ]
    ),
    _case(
        "reconciler",
        "controllers-space-form",
        # Taken as the flag's value (not refused as an unknown option), and it selects nothing.
        args=lambda _env, _p: ["--controllers", "-deployment"],
        names=_flag("--controllers selects no controller kubus implements"),
        quick=True,
    ),
    # --- files the service-account controllers read -------------------------------------
    _case(
        "reconciler",
        "private-key-file-not-a-key",
        args=lambda env, _p: [
            f"--service-account-private-key-file={env.file('sa.key', 'not a key')}"
        ],
        names=lambda env: (
            f"argument --service-account-private-key-file: {env.tmp / 'sa.key'}: not a "
            "PEM-encoded, unencrypted RSA or ECDSA private key"
        ),
        code=2,
        quick=True,
    ),
    _case(
        "reconciler",
        "private-key-file-missing",
        args=lambda env, _p: [f"--service-account-private-key-file={env.tmp / 'none.key'}"],
        names=lambda env: (
            f"argument --service-account-private-key-file: {env.tmp / 'none.key'}: no such file"
        ),
        code=2,
        quick=True,
    ),
    _case(
        "reconciler",
        "root-ca-file-no-certificate",
        args=lambda env, _p: [f"--root-ca-file={env.file('ca.crt', 'nothing')}"],
        names=lambda env: (
            f"argument --root-ca-file: {env.tmp / 'ca.crt'}: no PEM-encoded certificate in it"
        ),
        code=2,
        quick=True,
    ),
]


@pytest.fixture(scope="module")
def env(stack_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    directory = tmp_path_factory.mktemp("bad-input")
    server = NatsServer(
        directory / "nats", jetstream=True, args=["--user", "kubus", "--pass", OWN_PASSWORD]
    )
    with server, socket.create_server(("127.0.0.1", 0)) as taken:
        yield Env(stack=stack_env, tmp=directory, own=server, taken=taken)


def run_kubus(command: str, args: list[str], environ: dict[str, str]) -> tuple[Any, float]:
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "kubus.cli", command, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=environ,
        check=False,
    )
    return result, time.monotonic() - started


def bus_names(url: str, prefix: str) -> list[str]:
    """Streams (KV buckets are streams KV_<bucket>) whose names hold ``prefix``."""

    async def names() -> list[str]:
        connection = await nats.connect(url)
        try:
            return [
                info.config.name
                for info in await connection.jetstream().streams_info()
                if info.config.name and prefix in info.config.name.lower()
            ]
        finally:
            await connection.close()

    return asyncio.run(names())


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_line_naming_it_and_creates_nothing(env: Env, case: Case) -> None:
    prefix = "b" + uuid.uuid4().hex[:10]
    environ = {**os.environ, **env.stack}
    environ.pop("NATS_URL", None)
    if case.nats_env is not None:
        environ["NATS_URL"] = case.nats_env(env)
    flags = (
        case.flags(env)
        if case.flags is not None
        else ([] if case.nats_env is not None else [f"--nats-url={env.stack_nats()}"])
    )
    argv = [
        f"--kubeconfig={env.stack['KUBECONFIG']}",
        *flags,
        f"--bus-prefix={prefix}",
        f"--connect-timeout={CONNECT_TIMEOUT:g}s",
        "--health-probe-bind-address=0",
        "--metrics-bind-address=0",
        "-v=6",  # the chattiest logs: still no password in them
        *case.args(env, prefix),
    ]
    result, elapsed = run_kubus(case.command, argv, environ)
    output = result.stdout + result.stderr

    assert result.returncode == case.code, output[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"kubus {case.command}: error: "), output[-3000:]
    assert case.names(env) in last, last
    assert "Traceback" not in output, output[-3000:]
    assert SECRET not in output and OWN_PASSWORD not in output
    bound = (0 if case.quick else CONNECT_TIMEOUT) + SLACK
    assert elapsed < bound, f"took {elapsed:.1f}s"
    server = env.own_nats(OWN_PASSWORD) if case.nats == "own" else env.stack["NATS_URL"]
    assert bus_names(server, prefix) == []


def test_the_bus_check_sees_what_a_start_creates(env: Env) -> None:
    """The "nothing created" assertion above can fail: it finds a bucket of a prefix."""
    prefix = "b" + uuid.uuid4().hex[:10]

    async def create() -> None:
        connection = await nats.connect(env.stack["NATS_URL"])
        try:
            js = connection.jetstream()
            await js.create_key_value(bucket=f"{prefix}-default-members")
        finally:
            await connection.close()

    asyncio.run(create())
    try:
        assert bus_names(env.stack["NATS_URL"], prefix) == [f"KV_{prefix}-default-members"]
    finally:

        async def delete() -> None:
            connection = await nats.connect(env.stack["NATS_URL"])
            try:
                await connection.jetstream().delete_key_value(f"{prefix}-default-members")
            finally:
                await connection.close()

        asyncio.run(delete())


def test_good_spellings_get_past_the_flags(env: Env) -> None:
    """kcm's spellings are taken: the run gets as far as NATS (a closed port), not further."""
    result, _elapsed = run_kubus(
        "reconciler",
        [
            f"--kubeconfig={env.stack['KUBECONFIG']}",
            f"--nats-url={env.closed_nats()}",
            "--connect-timeout=1s",
            "--health-probe-bind-address=0",
            "--metrics-bind-address=0",
            "--v=2",
            "--controllers",
            "-replicaset",
            "--controllers=*,-replicaset",
            "--partition-lease-duration=1m30s",
            "--partition-renew-deadline=1m",
            "--partition-retry-period=500ms",
            "--logging-format=json",
        ],
        {**os.environ, **env.stack},
    )
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("kubus reconciler: error: --nats-url: cannot connect to NATS"), last
    assert SECRET not in result.stderr


def test_a_failed_reconcile_logs_a_line_naming_the_controller_and_the_object(
    stack_env: dict[str, str], kube: Any, namespace: str, tmp_path: Path
) -> None:
    """The apiserver refuses the pods of a privileged Deployment (PodSecurity "restricted"):
    the reconciler's JSON log line says which controller failed on which object, in its
    fields as well as in words."""
    from kubernetes import client

    labels: Any = {"metadata": {"labels": {"pod-security.kubernetes.io/enforce": "restricted"}}}
    client.CoreV1Api(kube).patch_namespace(namespace, labels)
    privileged: Any = {
        "metadata": {"name": "privileged"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "privileged"}},
            "template": {
                "metadata": {"labels": {"app": "privileged"}},
                "spec": {
                    "containers": [
                        {
                            "name": "web",
                            "image": "example/web:1",
                            "securityContext": {"privileged": True},
                        }
                    ]
                },
            },
        },
    }
    with kubus_pool(stack_env, tmp_path, extra=["--logging-format=json"]) as pool:
        client.AppsV1Api(kube).create_namespaced_deployment(namespace, privileged)
        log = pool.reconcilers[0].log

        def failure_line() -> dict[str, Any] | None:
            for line in log.read_text().splitlines():
                if not line.startswith("{"):
                    continue
                entry: dict[str, Any] = json.loads(line)
                if "violates PodSecurity" in entry["msg"]:
                    return entry
            return None

        entry = wait_for(failure_line, timeout=60, what=f"the sync failure in {log}")
    assert entry["controller"] == "replicaset-controller"
    assert entry["key"].startswith(f"{namespace}/privileged-")
    assert entry["msg"].startswith(f"replicaset-controller: sync {entry['key']} failed: 403")
    assert entry["level"] == "warning"
    assert isinstance(entry["ts"], float)

"""What a service checks before it creates anything: inputs that only the machine, the
apiserver or NATS can judge.

The commands parse their flags first (kubus/cliutil.py). Then, still before connecting: the
probe addresses can be listened on, and the kubeconfig and the NATS CA file can be read.
Then, each within ``--connect-timeout``: the apiserver answers and takes the credentials, NATS
answers, has JetStream and can hold the stream's replicas. Each failure is a
:class:`StartupError` whose message starts with the flag (or the ``$VARIABLE``) the bad value
came from.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from bus.connect import (
    NatsConnectError,
    TooManyReplicas,
    check_jetstream,
    connect_nats,
    nats_tls_context,
)
from bus.errors import BusError
from kubus.cliutil import check_bindable
from kubus.kube.config import KubeConfig, KubeConfigError, load_kube_config
from kubus.kube.reachability import ApiserverUnreachable, wait_for_apiserver
from kubus.serving import BindAddress

__all__ = [
    "Outside",
    "StartupError",
    "check_outside",
    "check_probe_addresses",
    "read_kubeconfig",
    "read_nats_tls_ca",
]


class StartupError(Exception):
    """A service cannot start on these inputs; the message names the flag."""


@dataclass(frozen=True)
class Outside:
    """The servers a service needs, and the flags that named them (for messages)."""

    kube_config: KubeConfig
    kube_source: str  # "--kubeconfig /etc/k.yaml", "the in-cluster config", ...
    nats_url: str
    nats_source: str  # "--nats-url", "--nats-url (from $NATS_URL)"
    within: float  # --connect-timeout
    stream_replicas: int = 1
    nats_tls: ssl.SSLContext | None = None  # --nats-tls-ca


def check_probe_addresses(addresses: Mapping[str, BindAddress | None]) -> None:
    """Each flag's address can be listened on now, alone and together with the others."""
    wanted = {flag: address for flag, address in addresses.items() if address is not None}
    for flag, address in wanted.items():
        try:
            check_bindable([(address.host, address.port)])
        except ValueError as error:
            raise StartupError(f"{flag}: {error}") from None
    try:
        check_bindable((address.host, address.port) for address in wanted.values())
    except ValueError as error:
        raise StartupError(f"{' and '.join(wanted)} collide: {error}") from None


def read_kubeconfig(
    given: Path | None, environ: Mapping[str, str] = os.environ
) -> tuple[Path | None, KubeConfig, str]:
    """``--kubeconfig``, else ``$KUBECONFIG``, else in-cluster or ~/.kube/config: the path,
    the loaded config, and how messages should name where it came from."""
    path, source = given, "--kubeconfig"
    if path is None and environ.get("KUBECONFIG"):
        path, source = Path(environ["KUBECONFIG"]), "--kubeconfig (from $KUBECONFIG)"
    try:
        config = load_kube_config(path)
    except KubeConfigError as error:
        raise StartupError(f"{source} {error}" if error.path else str(error)) from None
    if path is not None:
        return path, config, f"{source} {path}"
    return None, config, "the in-cluster config or ~/.kube/config"


def read_nats_tls_ca(
    given: Path | None, environ: Mapping[str, str] = os.environ
) -> ssl.SSLContext | None:
    """``--nats-tls-ca``, else ``$NATS_TLS_CA``: the TLS context NATS servers are verified
    with, or None (the system trust store). A file that is missing or holds no PEM
    certificate is a StartupError naming the flag (or the variable) and the file."""
    path, source = given, "--nats-tls-ca"
    if path is None and environ.get("NATS_TLS_CA"):
        path, source = Path(environ["NATS_TLS_CA"]), "--nats-tls-ca (from $NATS_TLS_CA)"
    if path is None:
        return None
    try:
        return nats_tls_context(path.expanduser())
    except ValueError as error:
        raise StartupError(f"{source} {error}") from None


async def check_outside(outside: Outside, *, client_name: str) -> None:
    """The apiserver, then NATS, each given ``outside.within`` seconds."""
    try:
        await wait_for_apiserver(outside.kube_config, within=outside.within)
    except ApiserverUnreachable as error:
        raise StartupError(f"{outside.kube_source}: {error}") from None
    try:
        client = await connect_nats(
            outside.nats_url, name=client_name, within=outside.within, tls=outside.nats_tls
        )
    except NatsConnectError as error:
        raise StartupError(f"{outside.nats_source}: {error}") from None
    try:
        await check_jetstream(client, outside.nats_url, replicas=outside.stream_replicas)
    except TooManyReplicas as error:
        raise StartupError(f"--stream-replicas {outside.stream_replicas}: {error}") from None
    except BusError as error:
        raise StartupError(f"{outside.nats_source}: {error}") from None
    finally:
        await client.close()

"""``kubus watcher``: apiserver watch streams into JetStream subjects.

Every input is checked before the watcher connects anywhere (each flag's value, the probe ports
free, the kubeconfig readable), then, bounded by ``--connect-timeout``, that the apiserver and
NATS answer and that NATS can hold ``--stream-replicas``. Only then is the bus provisioned.
"""

from __future__ import annotations

import argparse
import asyncio
import os
from pathlib import Path

from bus.connect import DEFAULT_CONNECT_TIMEOUT, nats_url
from bus.errors import BusError
from bus.layout import MAX_PARTITIONS
from bus.subjects import DEFAULT_PARTITIONS
from kubus.cliutil import (
    ArgumentParser,
    choice,
    duration,
    flag_type,
    format_duration,
    klog_level,
    whole_number,
)
from kubus.kube import KubeApiError
from kubus.logs import FORMATS, setup_logging
from kubus.service import run_service
from kubus.serving import BindAddress, parse_bind_address
from kubus.startup import (
    Outside,
    StartupError,
    check_outside,
    check_probe_addresses,
    read_kubeconfig,
    read_nats_tls_ca,
)
from watcher.config import (
    ALL,
    DEFAULT_RESOURCES,
    MAX_STREAM_REPLICAS,
    MIN_TOMBSTONE_TTL,
    WatcherConfig,
    WatcherConfigError,
    parse_layout,
    parse_nats_url,
    parse_resources,
)
from watcher.service import WatcherError, run_watcher

__all__ = ["EXPECTED_ERRORS", "add_watcher_command", "run"]

DEFAULT_NATS_URL = "nats://127.0.0.1:4222"


def add_watcher_command(subparsers: argparse._SubParsersAction[ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "watcher",
        help="mirror apiserver watch streams into the JetStream object stream",
        description="Mirror apiserver watch streams into the JetStream object stream. "
        "Durations take Go's form (15s, 2m, 1m30s, 500ms) or seconds.",
    )
    parser.add_argument(
        "--kubeconfig",
        type=Path,
        default=None,
        metavar="FILE",
        help="kubeconfig (default $KUBECONFIG, else in-cluster, else ~/.kube/config)",
    )
    parser.add_argument(
        "--nats-url",
        type=flag_type(nats_url),
        default=None,
        metavar="URL",
        help="NATS server, nats://[user:password@|token@]host[:port] or tls://..., or a "
        f"comma-separated list of a cluster's servers (default $NATS_URL, else {DEFAULT_NATS_URL})",
    )
    parser.add_argument(
        "--nats-tls-ca",
        type=Path,
        default=None,
        metavar="FILE",
        help="PEM file of the CA certificates that NATS servers' TLS certificates are verified "
        "against, instead of the system trust store (default $NATS_TLS_CA)",
    )
    parser.add_argument(
        "--connect-timeout",
        type=flag_type(duration(minimum=0)),
        default=DEFAULT_CONNECT_TIMEOUT,
        metavar="DURATION",
        help="how long start-up waits for NATS and for the apiserver before giving up "
        f"(default {format_duration(DEFAULT_CONNECT_TIMEOUT)})",
    )
    parser.add_argument(
        "--resources",
        default=ALL,
        metavar="LIST",
        help="comma-separated GROUP/VERSION/RESOURCE list; 'all' (the default: what the "
        "default controllers read, the garbage collector and the namespace controller reading "
        "everything) is every resource discovery finds that can be listed and watched (CRDs "
        "and aggregated APIs included, followed as they come and go; Events only when named), "
        "'*' the core set ("
        + ", ".join(str(r) for r in DEFAULT_RESOURCES)
        + "), '-G/V/R' removes one",
    )
    parser.add_argument(
        "--mirror-secrets",
        action="store_true",
        help="publish Secrets in full (their data then travels on the bus); without it they "
        "are watched and published as metadata only",
    )
    parser.add_argument(
        "--partitions",
        type=flag_type(whole_number(minimum=1, maximum=MAX_PARTITIONS)),
        default=DEFAULT_PARTITIONS,
        metavar="N",
        help=f"partitions of the object stream (default {DEFAULT_PARTITIONS}; "
        "fixed for the life of the stream)",
    )
    parser.add_argument(
        "--bus-prefix",
        default="kubus",
        metavar="PREFIX",
        help="prefix of the stream, subjects and buckets (default kubus)",
    )
    parser.add_argument(
        "--tombstone-ttl",
        type=flag_type(duration(minimum=MIN_TOMBSTONE_TTL, inclusive=True)),
        default=24 * 3600.0,
        metavar="DURATION",
        help="how long a deleted object's tombstone stays on the bus; keep it longer than "
        "any consumer may lag (default 24h)",
    )
    parser.add_argument(
        "--stream-replicas",
        type=flag_type(whole_number(minimum=1, maximum=MAX_STREAM_REPLICAS)),
        default=1,
        metavar="N",
        help="JetStream replicas of the object stream and the watcher's KV bucket, at most the "
        f"servers of the NATS cluster and {MAX_STREAM_REPLICAS} (default 1)",
    )
    parser.add_argument(
        "--health-probe-bind-address",
        default=":8081",
        metavar="HOST:PORT",
        help="serve /healthz and /readyz here; 0 disables (default :8081)",
    )
    parser.add_argument(
        "--metrics-bind-address",
        default=":8080",
        metavar="HOST:PORT",
        help="serve /metrics here; 0 disables (default :8080)",
    )
    parser.add_argument(
        "-v",
        "--v",
        dest="v",
        type=flag_type(klog_level),
        default=0,
        metavar="N",
        help="log verbosity, klog's: 0-3 info, 4 adds kubus's debug lines, 6 the libraries' "
        "(default 0)",
    )
    parser.add_argument(
        "--logging-format",
        type=flag_type(choice(*FORMATS)),
        default="text",
        metavar="FORMAT",
        help="text (klog's) or json (one object a line) (default text)",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    setup_logging(args.logging_format, args.v)
    config, outside = _config(args)
    asyncio.run(_main(config, outside))
    return 0


def _config(args: argparse.Namespace) -> tuple[WatcherConfig, Outside]:
    """Every flag checked, alone and together, and the kubeconfig read: nothing connects yet."""
    nats_source = "--nats-url"
    if args.nats_url is not None:
        url: str = args.nats_url
    elif os.environ.get("NATS_URL"):
        nats_source = "--nats-url (from $NATS_URL)"
        url = parse_nats_url(os.environ["NATS_URL"], source=nats_source)
    else:
        url = DEFAULT_NATS_URL
    nats_tls = read_nats_tls_ca(args.nats_tls_ca)
    resources = parse_resources(args.resources)
    layout = parse_layout(args.bus_prefix, args.partitions)
    health = _bind_address(args.health_probe_bind_address, "--health-probe-bind-address")
    metrics = _bind_address(args.metrics_bind_address, "--metrics-bind-address")
    check_probe_addresses(
        {"--health-probe-bind-address": health, "--metrics-bind-address": metrics}
    )
    kubeconfig, kube_config, kube_source = read_kubeconfig(args.kubeconfig)
    config = WatcherConfig(
        nats_url=url,
        resources=resources,
        mirror_secrets=args.mirror_secrets,
        layout=layout,
        kubeconfig=kubeconfig,
        health=health,
        metrics=metrics,
        tombstone_ttl=args.tombstone_ttl,
        stream_replicas=args.stream_replicas,
        nats_tls=nats_tls,
    )
    outside = Outside(
        kube_config=kube_config,
        kube_source=kube_source,
        nats_url=url,
        nats_source=nats_source,
        within=args.connect_timeout,
        stream_replicas=args.stream_replicas,
        nats_tls=nats_tls,
    )
    return config, outside


async def _main(config: WatcherConfig, outside: Outside) -> None:
    async def service(stop: asyncio.Event, serving: asyncio.Event) -> None:
        await check_outside(outside, client_name="kubus-watcher-check")
        await run_watcher(config, stop=stop, serving=serving)

    await run_service(service)


# The errors `kubus watcher` turns into one line and exit code 1.
EXPECTED_ERRORS: tuple[type[Exception], ...] = (
    WatcherError,
    WatcherConfigError,
    BusError,
    KubeApiError,
    StartupError,
    ValueError,
)


def _bind_address(text: str, flag: str) -> BindAddress | None:
    try:
        return parse_bind_address(text, flag=flag)
    except ValueError as error:
        raise WatcherConfigError(str(error)) from error

"""``kubus watcher``: apiserver watch streams into JetStream subjects."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
from pathlib import Path

from bus.errors import BusError
from bus.layout import BusLayout
from bus.subjects import DEFAULT_PARTITIONS
from kubus.cliutil import ArgumentParser
from kubus.kube import KubeApiError
from kubus.service import run_service
from kubus.serving import BindAddress, parse_bind_address
from watcher.config import (
    DEFAULT_RESOURCES,
    WatcherConfig,
    WatcherConfigError,
    parse_nats_url,
    parse_resources,
)
from watcher.service import WatcherError, run_watcher

__all__ = ["add_watcher_command", "run"]

log = logging.getLogger("kubus.watcher")


def add_watcher_command(subparsers: argparse._SubParsersAction[ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "watcher", help="mirror apiserver watch streams into the JetStream object stream"
    )
    parser.add_argument(
        "--kubeconfig",
        type=Path,
        default=_env_path("KUBECONFIG"),
        help="kubeconfig (default $KUBECONFIG, else in-cluster, else ~/.kube/config)",
    )
    parser.add_argument(
        "--nats-url",
        default=os.environ.get("NATS_URL", "nats://127.0.0.1:4222"),
        help="NATS server (default $NATS_URL or nats://127.0.0.1:4222)",
    )
    parser.add_argument(
        "--resources",
        default="*",
        help="comma-separated GROUP/VERSION/RESOURCE list; '*' is the default set ("
        + ", ".join(str(r) for r in DEFAULT_RESOURCES)
        + "), 'all' every resource discovery finds that can be listed and watched (CRDs "
        "and aggregated APIs included, followed as they come and go), '-G/V/R' removes one",
    )
    parser.add_argument(
        "--mirror-secrets",
        action="store_true",
        help="publish Secrets in full (their data then travels on the bus); without it they "
        "are watched and published as metadata only",
    )
    parser.add_argument(
        "--partitions",
        type=int,
        default=DEFAULT_PARTITIONS,
        help=f"partitions of the object stream (default {DEFAULT_PARTITIONS}; "
        "fixed for the life of the stream)",
    )
    parser.add_argument(
        "--bus-prefix",
        default="kubus",
        help="prefix of the stream, subjects and buckets (default kubus)",
    )
    parser.add_argument(
        "--tombstone-ttl",
        type=float,
        default=24 * 3600,
        metavar="SECONDS",
        help="how long a deleted object's tombstone stays on the bus (default 86400)",
    )
    parser.add_argument(
        "--stream-replicas",
        type=int,
        default=1,
        help="JetStream replicas of the object stream (default 1)",
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
    parser.add_argument("-v", "--verbose", action="store_true", help="log at debug level")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    config = WatcherConfig(
        nats_url=parse_nats_url(args.nats_url),
        resources=parse_resources(args.resources),
        mirror_secrets=args.mirror_secrets,
        layout=BusLayout(prefix=args.bus_prefix, partitions=args.partitions),
        kubeconfig=args.kubeconfig,
        health=parse_bind_address(
            args.health_probe_bind_address, flag="--health-probe-bind-address"
        ),
        metrics=parse_bind_address(args.metrics_bind_address, flag="--metrics-bind-address"),
        tombstone_ttl=args.tombstone_ttl,
        stream_replicas=args.stream_replicas,
    )
    asyncio.run(_main(config))
    return 0


async def _main(config: WatcherConfig) -> None:
    await run_service(lambda stop, serving: run_watcher(config, stop=stop, serving=serving))


# The errors `kubus watcher` turns into one line and exit code 1.
EXPECTED_ERRORS: tuple[type[Exception], ...] = (
    WatcherError,
    WatcherConfigError,
    BusError,
    KubeApiError,
    ValueError,
)


def _bind_address(text: str, flag: str) -> BindAddress | None:
    try:
        return parse_bind_address(text, flag=flag)
    except ValueError as error:
        raise WatcherConfigError(str(error)) from error


def _env_path(name: str) -> Path | None:
    value = os.environ.get(name)
    return Path(value) if value else None

"""``kubus reconciler``: one process of a reconciler pool, with kube-controller-manager's flags."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
from pathlib import Path
from typing import Any

import yaml

from bus.errors import BusError
from bus.layout import BusLayout
from bus.subjects import DEFAULT_PARTITIONS
from kubus.cliutil import ArgumentParser
from kubus.kube import KubeApiError
from kubus.service import run_service
from kubus.serving import BindAddress, parse_bind_address
from reconcilers.manager import Manager, ManagerConfig, ManagerError
from reconcilers.ownership import LeaseTiming
from reconcilers.registry import IMPLEMENTED, ControllerSelectionError, select_controllers

__all__ = ["EXPECTED_ERRORS", "add_reconciler_command"]


class ReconcilerConfigError(ValueError):
    pass


def add_reconciler_command(subparsers: argparse._SubParsersAction[ArgumentParser]) -> None:
    parser = subparsers.add_parser("reconciler", help="run one process of a reconciler pool")
    parser.add_argument(
        "--config",
        type=Path,
        help="YAML file of flag values (flag names as "
        "keys, e.g. concurrent-deployment-syncs: 10); flags given win",
    )
    parser.add_argument("--kubeconfig", type=Path, default=None)
    parser.add_argument("--nats-url", default=None)
    parser.add_argument("--pool", default=None, help="pool name (default 'default')")
    parser.add_argument(
        "--controllers",
        default=None,
        help="comma-separated: '*' (all on by default), NAME, -NAME; "
        "kube-controller-manager's names and aliases",
    )
    parser.add_argument("--feature-gates", default=None, help="KEY=true|false,...")
    for controller in IMPLEMENTED.values():
        parser.add_argument(
            f"--{controller.concurrency_flag}",
            type=int,
            default=None,
            help=f"workers of {controller.name} (default {controller.default_concurrency})",
        )
    parser.add_argument("--kube-api-qps", type=float, default=None, help="default 20")
    parser.add_argument("--kube-api-burst", type=int, default=None, help="default 30")
    parser.add_argument("--bus-prefix", default=None)
    parser.add_argument("--partitions", type=int, default=None)
    parser.add_argument(
        "--partition-lease-duration", type=float, default=None, help="seconds (default 10)"
    )
    parser.add_argument(
        "--partition-renew-deadline", type=float, default=None, help="seconds (default 7)"
    )
    parser.add_argument(
        "--partition-retry-period", type=float, default=None, help="seconds (default 2)"
    )
    parser.add_argument("--health-probe-bind-address", default=None, help="default :8081")
    parser.add_argument("--metrics-bind-address", default=None, help="default :8080")
    parser.add_argument(
        "--reconcile-audit-log",
        type=Path,
        default=None,
        metavar="FILE",
        help="append a JSON line per reconcile (member, controller, key, "
        "start, end): to check one worker per key across a pool",
    )
    parser.add_argument("-v", "--verbose", action="store_true")
    parser.set_defaults(handler=run)


_DEFAULTS: dict[str, Any] = {
    "kubeconfig": None,
    "nats_url": os.environ.get("NATS_URL", "nats://127.0.0.1:4222"),
    "pool": "default",
    "controllers": "*",
    "feature_gates": "",
    "kube_api_qps": 20.0,
    "kube_api_burst": 30,
    "bus_prefix": "kubus",
    "partitions": DEFAULT_PARTITIONS,
    "partition_lease_duration": 10.0,
    "partition_renew_deadline": 7.0,
    "partition_retry_period": 2.0,
    "health_probe_bind_address": ":8081",
    "metrics_bind_address": ":8080",
}


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    values = _merged(args)
    gates = _check_feature_gates(str(values["feature_gates"]))
    controllers = select_controllers(str(values["controllers"]).split(","))
    concurrency = {
        controller.name: int(values[controller.concurrency_flag.replace("-", "_")])
        for controller in IMPLEMENTED.values()
        if values.get(controller.concurrency_flag.replace("-", "_")) is not None
    }
    try:
        timing = LeaseTiming(
            lease_duration=float(values["partition_lease_duration"]),
            renew_deadline=float(values["partition_renew_deadline"]),
            retry_period=float(values["partition_retry_period"]),
        )
    except ValueError as error:
        raise ReconcilerConfigError(str(error)) from error
    kubeconfig = values["kubeconfig"] or os.environ.get("KUBECONFIG") or None
    config = ManagerConfig(
        nats_url=str(values["nats_url"]),
        pool=str(values["pool"]),
        controllers=controllers,
        layout=BusLayout(prefix=str(values["bus_prefix"]), partitions=int(values["partitions"])),
        kubeconfig=Path(kubeconfig) if kubeconfig else None,
        concurrency=concurrency,
        kube_api_qps=float(values["kube_api_qps"]),
        kube_api_burst=int(values["kube_api_burst"]),
        timing=timing,
        health=_bind(str(values["health_probe_bind_address"]), "--health-probe-bind-address"),
        metrics=_bind(str(values["metrics_bind_address"]), "--metrics-bind-address"),
        audit_log=args.reconcile_audit_log,
        feature_gates=gates,
    )
    asyncio.run(_main(config))
    return 0


async def _main(config: ManagerConfig) -> None:
    manager = Manager(config)
    await run_service(manager.run)


def _merged(args: argparse.Namespace) -> dict[str, Any]:
    values = dict(_DEFAULTS)
    for controller in IMPLEMENTED.values():
        values.setdefault(controller.concurrency_flag.replace("-", "_"), None)
    if args.config is not None:
        try:
            loaded = yaml.safe_load(args.config.read_text()) or {}
        except (OSError, yaml.YAMLError) as error:
            raise ReconcilerConfigError(f"--config {args.config}: {error}") from error
        if not isinstance(loaded, dict):
            raise ReconcilerConfigError(f"--config {args.config}: expected a mapping of flags")
        for key, value in loaded.items():
            name = str(key).replace("-", "_")
            if name not in values:
                raise ReconcilerConfigError(
                    f"--config {args.config}: unknown setting {key!r} (settings are the "
                    "flags' names, e.g. concurrent-replicaset-syncs)"
                )
            values[name] = ",".join(value) if isinstance(value, list) else value
    for name, value in vars(args).items():
        if value is not None and name in values:
            values[name] = value
    return values


def _check_feature_gates(text: str) -> dict[str, bool]:
    gates: dict[str, bool] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or value.lower() not in ("true", "false"):
            raise ReconcilerConfigError(f"--feature-gates: {item!r} is not KEY=true|false")
        if key not in {gate for c in IMPLEMENTED.values() for gate in c.feature_gates}:
            raise ReconcilerConfigError(f"--feature-gates: unrecognized feature gate: {key}")
        gates[key] = value.lower() == "true"
    return gates


def _bind(text: str, flag: str) -> BindAddress | None:
    try:
        return parse_bind_address(text, flag=flag)
    except ValueError as error:
        raise ReconcilerConfigError(str(error)) from error


EXPECTED_ERRORS: tuple[type[Exception], ...] = (
    ReconcilerConfigError,
    ControllerSelectionError,
    ManagerError,
    BusError,
    KubeApiError,
)

"""``kubus reconciler``: one process of a reconciler pool, with kube-controller-manager's flags.

Every input is checked before the process connects anywhere: each flag's value (on the
command line or in ``--config``), then what flags mean together (lease timings in order, the
probe ports free, the kubeconfig readable), then, bounded by ``--connect-timeout``, that the
apiserver and NATS answer. Only then does the manager provision the bus. A bad input is one
line naming the flag, or the ``--config`` file and key.

This module imports what the flags need; the manager, the apiserver client, the probe server
and the controllers chosen are imported by the run, so that ``--help``, a bad flag and
whatever only builds the parser pay for none of them.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from bus.connect import DEFAULT_CONNECT_TIMEOUT, nats_url
from bus.errors import BusError
from bus.layout import MAX_PARTITIONS, BusLayout
from bus.streams import MAX_REPLICAS
from bus.subjects import DEFAULT_PARTITIONS
from kubus.cliutil import (
    ArgumentParser,
    Parse,
    choice,
    duration,
    flag_type,
    format_duration,
    klog_level,
    positive_int,
    positive_number,
    text,
    whole_number,
)
from kubus.logs import FORMATS, setup_logging
from reconcilers.controller import Flag
from reconcilers.registry import (
    ControllerSelectionError,
    declared_controllers,
    select_controllers,
)
from reconcilers.shards import MAX_SHARDS

if TYPE_CHECKING:
    from kubus.serving import BindAddress
    from kubus.startup import Outside
    from reconcilers.manager import ManagerConfig

__all__ = ["ReconcilerConfigError", "add_reconciler_command", "expected_errors"]

DEFAULT_NATS_URL: Final = "nats://127.0.0.1:4222"
# Pool names go into KV bucket and durable consumer names: letters, digits, '-' and '_'.
_POOL: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,62}")


class ReconcilerConfigError(ValueError):
    """A flag or ``--config`` value that cannot work; the message names it."""


# --- value parsers of this command's own flags -----------------------------------------------


def _path(value: object) -> Path:
    return Path(text(value)).expanduser()


def _pool(value: object) -> str:
    name = text(value)
    if not _POOL.fullmatch(name):
        raise ValueError(
            "must be 1-63 letters, digits, '-' or '_', starting with a letter or digit (it "
            f"names KV buckets and durable consumers), not {name!r}"
        )
    return name


def _bus_prefix(value: object) -> str:
    prefix = text(value)
    try:
        BusLayout(prefix=prefix)
    except BusError as error:
        raise ValueError(str(error)) from None
    return prefix


def _comma_list(value: object) -> str:
    """A comma-separated list; in YAML also a list of strings."""
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return ",".join(value)
    return text(value)


def _gates(value: object) -> str:
    """``KEY=true|false,...``; in YAML also a mapping of gate to boolean, as kcm's config."""
    if isinstance(value, dict):
        if not all(isinstance(v, bool) for v in value.values()):
            raise ValueError("must map each feature gate to true or false")
        return ",".join(f"{key}={str(v).lower()}" for key, v in value.items())
    return _comma_list(value)


def _bind(value: object) -> str:
    from kubus.serving import parse_bind_address

    address = text(value)
    parse_bind_address(address, flag="it")  # ValueError: "it must be HOST:PORT, ..."
    return address


@dataclass(frozen=True)
class _Flag:
    name: str
    parse: Parse[Any]
    help: str
    metavar: str | None = None
    short: str | None = None

    @property
    def dest(self) -> str:
        return self.name.replace("-", "_")


_LEASE_DURATION: Final = duration(minimum=0)

FLAGS: Final[tuple[_Flag, ...]] = (
    _Flag(
        "kubeconfig",
        _path,
        "kubeconfig file (default $KUBECONFIG, else the in-cluster config, else ~/.kube/config)",
        "FILE",
    ),
    _Flag(
        "nats-url",
        nats_url,
        "NATS server, nats://[user:password@|token@]host[:port] or tls://..., or a "
        f"comma-separated list of a cluster's servers (default $NATS_URL, else {DEFAULT_NATS_URL})",
        "URL",
    ),
    _Flag(
        "nats-tls-ca",
        _path,
        "PEM file of the CA certificates that NATS servers' TLS certificates are verified "
        "against, instead of the system trust store (default $NATS_TLS_CA)",
        "FILE",
    ),
    _Flag(
        "connect-timeout",
        duration(minimum=0),
        "how long start-up waits for NATS and for the apiserver before giving up "
        f"(default {format_duration(DEFAULT_CONNECT_TIMEOUT)})",
        "DURATION",
    ),
    _Flag("pool", _pool, "name of the pool this process joins (default default)", "NAME"),
    _Flag(
        "controllers",
        _comma_list,
        "comma-separated: '*' (every controller on by default), NAME, -NAME; "
        "kube-controller-manager's names and aliases (default *)",
        "LIST",
    ),
    _Flag(
        "kube-api-qps",
        positive_number,
        "writes per second to the apiserver, per controller (default 20)",
        "QPS",
    ),
    _Flag(
        "kube-api-burst",
        positive_int,
        "burst of writes to the apiserver, per controller (default 30)",
        "N",
    ),
    _Flag(
        "bus-prefix",
        _bus_prefix,
        "prefix of the stream, subjects and buckets on NATS (default kubus)",
        "PREFIX",
    ),
    _Flag(
        "partitions",
        whole_number(minimum=1, maximum=MAX_PARTITIONS),
        f"partitions of the object stream; must match the watcher's (default {DEFAULT_PARTITIONS})",
        "N",
    ),
    _Flag(
        "partition-shards",
        whole_number(minimum=1, maximum=MAX_SHARDS),
        "split each partition's keys into N shards leased apart, so that one busy namespace "
        "is served by up to N processes (each caches the partitions it has a shard of); every "
        "member of a pool must use the same N (default 1)",
        "N",
    ),
    _Flag(
        "stream-replicas",
        whole_number(minimum=1, maximum=MAX_REPLICAS),
        "JetStream replicas of the pool's KV buckets and of the dead-letter stream (and of the "
        "object stream, if this process is the first to need it), at most the servers of the "
        f"NATS cluster and {MAX_REPLICAS} (default 1)",
        "N",
    ),
    _Flag(
        "partition-lease-duration",
        _LEASE_DURATION,
        "how long a partition lease lasts unrenewed: the bound on failover time (default 10s)",
        "DURATION",
    ),
    _Flag(
        "partition-renew-deadline",
        _LEASE_DURATION,
        "how long a holder keeps trying to renew before it stops work on a partition; "
        "below the lease duration (default 7s)",
        "DURATION",
    ),
    _Flag(
        "partition-retry-period",
        _LEASE_DURATION,
        "how often leases are renewed and claimed; below the renew deadline (default 2s)",
        "DURATION",
    ),
    _Flag(
        "health-probe-bind-address",
        _bind,
        "serve /healthz and /readyz here; 0 disables (default :8081)",
        "HOST:PORT",
    ),
    _Flag(
        "metrics-bind-address",
        _bind,
        "serve /metrics here; 0 disables (default :8080)",
        "HOST:PORT",
    ),
    _Flag(
        "reconcile-audit-log",
        _path,
        "append a JSON line per reconcile (member, controller, key, start, end): to check one "
        "worker per key across a pool",
        "FILE",
    ),
    _Flag(
        "v",
        klog_level,
        "log verbosity, klog's: 0-3 info, 4 adds kubus's debug lines, 6 the libraries' (default 0)",
        "N",
        short="-v",
    ),
    _Flag(
        "logging-format",
        choice(*FORMATS),
        "text (klog's) or json (one object a line) (default text)",
        "FORMAT",
    ),
)


def feature_gates() -> dict[str, bool]:
    """The kcm feature gates the controllers this process can run consult, with defaults."""
    gates: dict[str, bool] = {}
    for controller in declared_controllers().values():
        gates.update(controller.feature_gates)
    return dict(sorted(gates.items()))


def _option(value: object, parse: Any) -> Any:
    return parse(text(value))


@functools.cache
def all_flags() -> tuple[_Flag, ...]:
    """The command's own flags, then those the controllers declare (every implemented one,
    from kubus or an entry point): ``--concurrent-*-syncs`` and each ``Controller.flags``."""
    gates = feature_gates()
    declared: list[_Flag] = [
        _Flag(
            "feature-gates",
            _gates,
            "KEY=true|false,... of the gates kubus's controllers consult: "
            + ", ".join(f"{gate} (default {str(on).lower()})" for gate, on in gates.items()),
            "GATES",
        )
    ]
    # A flag several controllers declare (kcm's --root-ca-file) is one flag, read by each.
    options: dict[str, tuple[Flag, list[str]]] = {}
    for controller in declared_controllers().values():
        declared.append(
            _Flag(
                controller.concurrency_flag,
                positive_int,
                f"workers of {controller.name} in this process "
                f"(default {controller.default_concurrency})",
                "N",
            )
        )
        for option in controller.flags:
            options.setdefault(option.name, (option, []))[1].append(controller.name)
    for option, users in options.values():
        shown = option.default_text
        declared.append(
            _Flag(
                option.name,
                functools.partial(_option, parse=option.parse),
                f"{option.help} ({', '.join(users)}"
                + (f"; default {shown})" if shown is not None else ")"),
                option.metavar,
            )
        )
    return (*FLAGS, *declared)


def _by_name() -> dict[str, _Flag]:
    return {flag.name: flag for flag in all_flags()}


_DEFAULTS: Final[dict[str, Any]] = {
    "kubeconfig": None,
    "nats_url": None,  # then $NATS_URL, then DEFAULT_NATS_URL
    "nats_tls_ca": None,  # then $NATS_TLS_CA, then the system trust store
    "connect_timeout": DEFAULT_CONNECT_TIMEOUT,
    "pool": "default",
    "controllers": "*",
    "feature_gates": "",
    "kube_api_qps": 20.0,
    "kube_api_burst": 30,
    "bus_prefix": "kubus",
    "partitions": DEFAULT_PARTITIONS,
    "partition_shards": 1,
    "stream_replicas": 1,
    "partition_lease_duration": 10.0,
    "partition_renew_deadline": 7.0,
    "partition_retry_period": 2.0,
    "health_probe_bind_address": ":8081",
    "metrics_bind_address": ":8080",
    "reconcile_audit_log": None,
    "v": 0,
    "logging_format": "text",
}


def add_reconciler_command(subparsers: argparse._SubParsersAction[ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "reconciler",
        help="run one process of a reconciler pool",
        description="One process of a reconciler pool: leases partitions of the bus, "
        "reconciles, writes back to the apiserver. Durations take Go's form (15s, 2m, "
        "1m30s, 500ms) or seconds.",
    )
    parser.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="YAML file of flag values, flag names as keys (concurrent-deployment-syncs: 10); "
        "flags given on the command line win",
    )
    for flag in all_flags():
        names = [flag.short, f"--{flag.name}"] if flag.short else [f"--{flag.name}"]
        parser.add_argument(
            *names,
            dest=flag.dest,
            type=flag_type(flag.parse),
            default=None,
            metavar=flag.metavar,
            help=flag.help,
        )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    values = _merged(args)
    setup_logging(values["logging_format"], values["v"])
    config, outside = _manager_config(values)
    asyncio.run(_main(config, outside))
    return 0


async def _main(config: ManagerConfig, outside: Outside) -> None:
    from kubus.service import run_service
    from kubus.startup import check_outside
    from reconcilers.manager import Manager

    manager = Manager(config)

    async def service(stop: asyncio.Event, serving: asyncio.Event) -> None:
        await check_outside(outside, client_name=f"kubus-reconciler-{config.member}-check")
        await manager.run(stop, serving)

    await run_service(service)


def _merged(args: argparse.Namespace) -> dict[str, Any]:
    """Defaults, then ``--config``, then the flags given; every value parsed and checked."""
    values = dict(_DEFAULTS)
    for flag in all_flags():
        values.setdefault(flag.dest, None)
    if args.config is not None:
        values.update(_read_config(args.config))
    for flag in all_flags():
        given = getattr(args, flag.dest, None)
        if given is not None:
            values[flag.dest] = given
    values["nats_url_source"] = "--nats-url"
    if values["nats_url"] is None:
        from_env = os.environ.get("NATS_URL")
        if from_env:
            values["nats_url_source"] = "--nats-url (from $NATS_URL)"
            try:
                values["nats_url"] = nats_url(from_env)
            except ValueError as error:
                raise ReconcilerConfigError(f"--nats-url (from $NATS_URL): {error}") from None
        else:
            values["nats_url"] = DEFAULT_NATS_URL
    return values


def _read_config(path: Path) -> dict[str, Any]:
    import yaml

    where = f"--config {path}"
    try:
        loaded = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ReconcilerConfigError(f"{where}: no such file") from None
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ReconcilerConfigError(f"{where}: not YAML{at}: {error.problem}") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise ReconcilerConfigError(f"{where}: {' '.join(str(error).split())}") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ReconcilerConfigError(f"{where}: expected a mapping of flag names to values")
    values: dict[str, Any] = {}
    for key, value in loaded.items():
        flag = _by_name().get(str(key))
        if flag is None:
            raise ReconcilerConfigError(
                f"{where}: unknown setting {key!r} (settings are the flags' names, e.g. "
                "concurrent-replicaset-syncs)"
            )
        try:
            values[flag.dest] = flag.parse(value)
        except ValueError as error:
            raise ReconcilerConfigError(f"{where}: {key}: {error}") from None
    return values


def _manager_config(values: dict[str, Any]) -> tuple[ManagerConfig, Outside]:
    """What the flags mean together, checked; the kubeconfig read."""
    from kubus.startup import Outside, check_probe_addresses, read_kubeconfig, read_nats_tls_ca
    from reconcilers.manager import ManagerConfig
    from reconcilers.ownership import LeaseTiming

    gates = _check_feature_gates(str(values["feature_gates"]))
    controllers = select_controllers(str(values["controllers"]).split(","))
    concurrency = {
        controller.name: values[controller.concurrency_flag.replace("-", "_")]
        for controller in controllers
        if values.get(controller.concurrency_flag.replace("-", "_")) is not None
    }
    options = {
        controller.name: {
            option.name: option.default
            if values.get(option.name.replace("-", "_")) is None
            else values[option.name.replace("-", "_")]
            for option in controller.flags
        }
        for controller in controllers
    }
    try:
        timing = LeaseTiming(
            lease_duration=values["partition_lease_duration"],
            renew_deadline=values["partition_renew_deadline"],
            retry_period=values["partition_retry_period"],
        )
    except ValueError:
        retry, renew, lease = (
            format_duration(values[name])
            for name in (
                "partition_retry_period",
                "partition_renew_deadline",
                "partition_lease_duration",
            )
        )
        raise ReconcilerConfigError(
            f"--partition-retry-period ({retry}) < --partition-renew-deadline ({renew}) < "
            f"--partition-lease-duration ({lease}) is needed"
        ) from None
    health = _bind_address(values["health_probe_bind_address"], "--health-probe-bind-address")
    metrics = _bind_address(values["metrics_bind_address"], "--metrics-bind-address")
    check_probe_addresses(
        {"--health-probe-bind-address": health, "--metrics-bind-address": metrics}
    )
    audit_log: Path | None = values["reconcile_audit_log"]
    if audit_log is not None:
        try:
            audit_log.open("a").close()
        except OSError as error:
            raise ReconcilerConfigError(
                f"--reconcile-audit-log {audit_log}: {error.strerror}"
            ) from None
    nats_tls = read_nats_tls_ca(values["nats_tls_ca"])
    kubeconfig, kube_config, kube_source = read_kubeconfig(values["kubeconfig"])
    config = ManagerConfig(
        nats_url=values["nats_url"],
        nats_tls=nats_tls,
        stream_replicas=values["stream_replicas"],
        pool=values["pool"],
        controllers=controllers,
        layout=BusLayout(prefix=values["bus_prefix"], partitions=values["partitions"]),
        partition_shards=values["partition_shards"],
        kubeconfig=kubeconfig,
        concurrency=concurrency,
        kube_api_qps=values["kube_api_qps"],
        kube_api_burst=values["kube_api_burst"],
        timing=timing,
        health=health,
        metrics=metrics,
        audit_log=audit_log,
        feature_gates=gates,
        options=options,
        connect_timeout=values["connect_timeout"],
    )
    outside = Outside(
        kube_config=kube_config,
        kube_source=kube_source,
        nats_url=values["nats_url"],
        nats_source=values["nats_url_source"],
        within=values["connect_timeout"],
        stream_replicas=values["stream_replicas"],
        nats_tls=nats_tls,
    )
    return config, outside


def _check_feature_gates(text: str) -> dict[str, bool]:
    gates: dict[str, bool] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or value.lower() not in ("true", "false"):
            raise ReconcilerConfigError(f"--feature-gates: {item!r} is not KEY=true|false")
        if key not in feature_gates():
            raise ReconcilerConfigError(f"--feature-gates: unrecognized feature gate: {key}")
        gates[key] = value.lower() == "true"
    return gates


def _bind_address(text: str, flag: str) -> BindAddress | None:
    from kubus.serving import parse_bind_address

    try:
        return parse_bind_address(text, flag=flag)
    except ValueError as error:
        raise ReconcilerConfigError(str(error)) from None


def expected_errors() -> tuple[type[Exception], ...]:
    """The errors ``kubus reconciler`` turns into one line and exit code 1 (a function: some
    live in modules only the run imports)."""
    from kubus.kube import KubeApiError
    from kubus.startup import StartupError
    from reconcilers.manager import ManagerError

    return (
        ReconcilerConfigError,
        ControllerSelectionError,
        ManagerError,
        BusError,
        KubeApiError,
        StartupError,
    )

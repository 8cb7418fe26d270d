"""``kubus dev``: start, stop and provision the local dev stack."""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys
from pathlib import Path
from types import FrameType

from kubus.cliutil import ArgumentParser, fail
from kubus.devstack.binaries import COMPONENTS, STACK_COMPONENTS, Binaries, default_cache_dir
from kubus.devstack.errors import DevStackError
from kubus.devstack.stack import DevStack, StackConfig, down

__all__ = ["add_dev_commands"]

# Ports a user may pin; the rest are internal and always picked free.
_PINNABLE_PORTS = (
    "apiserver",
    "etcd",
    "nats",
    "nats-monitor",
    "otlp-grpc",
    "otlp-http",
    "jaeger-query",
)


def default_state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "kubus" / "dev"


def add_dev_commands(subparsers: argparse._SubParsersAction[ArgumentParser]) -> None:
    dev = subparsers.add_parser("dev", help="run the local dev stack (no Docker needed)")
    commands = dev.add_subparsers(dest="dev_command", required=True, metavar="COMMAND")

    up = commands.add_parser("up", help="start the dev stack")
    _add_state_dir(up)
    _add_binary_flags(up)
    up.add_argument(
        "--detach",
        action="store_true",
        help="return once everything is ready, leaving the stack running",
    )
    up.add_argument(
        "--infra-only",
        action="store_true",
        help="start only the infrastructure (control plane, NATS, Jaeger)",
    )
    up.add_argument("--nodes", type=_positive_int, default=3, help="fake kwok nodes (default 3)")
    up.add_argument(
        "--start-timeout",
        type=float,
        default=120.0,
        metavar="SECONDS",
        help="how long each component may take to become ready (default 120)",
    )
    for name in _PINNABLE_PORTS:
        up.add_argument(
            f"--{name}-port",
            type=_port,
            default=0,
            metavar="PORT",
            help=f"port for {name} on 127.0.0.1 (default: a free one)",
        )
    up.set_defaults(handler=_up)

    stop = commands.add_parser("down", help="stop the dev stack started with --detach")
    _add_state_dir(stop)
    stop.set_defaults(handler=_down)

    env = commands.add_parser("env", help="print the running stack's env as export lines")
    _add_state_dir(env)
    env.set_defaults(handler=_env)

    binaries = commands.add_parser("binaries", help="find or build every binary the stack needs")
    _add_binary_flags(binaries)
    binaries.add_argument(
        "--with",
        dest="extra",
        action="append",
        default=[],
        choices=sorted(set(COMPONENTS) - set(STACK_COMPONENTS)),
        help="also provide this component (e.g. kube-controller-manager)",
    )
    binaries.set_defaults(handler=_binaries)


def _add_state_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=default_state_dir(),
        metavar="DIR",
        help=f"where the stack keeps data, logs and env (default {default_state_dir()})",
    )


def _add_binary_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="binary cache (default $KUBUS_CACHE_DIR or ~/.cache/kubus)",
    )
    parser.add_argument(
        "--bin",
        action="append",
        default=[],
        type=_binary_override,
        metavar="NAME=PATH",
        help="use this binary for a component",
    )


def _binaries_from(args: argparse.Namespace) -> Binaries:
    cache_dir = args.cache_dir or default_cache_dir(os.environ)
    return Binaries(cache_dir=cache_dir, explicit=dict(args.bin))


def _progress(line: str) -> None:
    print(f"kubus dev: {line}", file=sys.stderr, flush=True)


def _up(args: argparse.Namespace) -> int:
    config = StackConfig(
        state_dir=args.state_dir,
        binaries=_binaries_from(args),
        nodes=args.nodes,
        requested_ports={
            name: getattr(args, f"{name.replace('-', '_')}_port")
            for name in _PINNABLE_PORTS
            if getattr(args, f"{name.replace('-', '_')}_port")
        },
        start_timeout=args.start_timeout,
        services=not args.infra_only,
        tied_to_parent=not args.detach,
    )
    stack = DevStack(config)
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        stack.up(progress=_progress)
    finally:
        signal.signal(signal.SIGTERM, previous)
    if args.detach:
        _print_ready(stack)
        _progress(f"stop it with: kubus dev down --state-dir {stack.state_dir}")
        return 0
    try:
        signals: list[str] = []

        def on_signal(signum: int, _frame: FrameType | None) -> None:
            signals.append(signal.Signals(signum).name)  # no locks in a signal handler

        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, on_signal)
        _print_ready(stack)
        _progress("running in the foreground; Ctrl-C stops everything")
        failure = stack.wait(lambda: bool(signals))
        _progress(f"stopping: {failure or 'received ' + signals[0]}")
    finally:
        stack.stop()
    if failure:
        raise DevStackError(failure)
    return 0


def _print_ready(stack: DevStack) -> None:
    env_file = stack.state_dir / "env"
    _progress(f"ready; from another shell: source {shlex.quote(str(env_file))}")
    sys.stdout.write(env_file.read_text())
    sys.stdout.flush()


def _exit_on_sigterm(_signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(128 + signal.SIGTERM)


def _down(args: argparse.Namespace) -> int:
    stopped = down(args.state_dir)
    names = ", ".join(f"{record.name} ({record.pid})" for record in stopped) or "nothing running"
    _progress(f"stopped: {names}")
    return 0


def _env(args: argparse.Namespace) -> int:
    from kubus.devstack.state import StateDir, render_env

    state = StateDir(args.state_dir)
    if not state.env_file.exists():
        raise DevStackError(f"no running dev stack in {state.path} (no env file)")
    path_dir = state.bin_dir if state.bin_dir.is_dir() else None
    print(render_env(state.read_env(), path_dir=path_dir), end="")
    return 0


def _binaries(args: argparse.Namespace) -> int:
    binaries = _binaries_from(args)
    wanted = [*STACK_COMPONENTS, *args.extra]
    resolved = binaries.ensure(wanted, progress=_progress)
    width = max(len(name) for name in resolved)
    for binary in resolved.values():
        print(f"{binary.name:<{width}}  {binary.version:<9}  {binary.source:<10}  {binary.path}")
    return 0


def run(args: argparse.Namespace, prog: str) -> int:
    try:
        code: int = args.handler(args)
    except DevStackError as error:
        fail(prog, str(error))
    except KeyboardInterrupt:
        fail(prog, "interrupted", 130)
    return code


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a port number (0-65535)")
    return value


def _binary_override(text: str) -> tuple[str, Path]:
    name, sep, path = text.partition("=")
    if not sep or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=PATH, got {text!r}")
    if name not in COMPONENTS:
        raise argparse.ArgumentTypeError(
            f"unknown component {name!r}; known: {', '.join(COMPONENTS)}"
        )
    return name, Path(path)

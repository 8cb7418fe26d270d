"""The ``kubus`` command: one entry point for the dev stack and, later, the services."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

from nats.errors import Error as NatsError

from bench.compare import cli as bench_cli
from kubus.cliutil import ArgumentParser, fail
from kubus.deploy import cli as deploy_cli
from kubus.devstack import cli as dev_cli
from reconcilers import cli as reconciler_cli
from watcher import cli as watcher_cli

__all__ = ["main"]


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="kubus",
        description="The Kubernetes controller manager as event-sourced controllers on NATS "
        "JetStream.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    dev_cli.add_dev_commands(commands)
    watcher_cli.add_watcher_command(commands)
    reconciler_cli.add_reconciler_command(commands)
    bench_cli.add_bench_command(commands)
    deploy_cli.add_deploy_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    prog = _prog_of(args)
    if unknown:
        # Name the subcommand the flag was given to, not just the top-level program.
        fail(prog, f"unrecognized arguments: {' '.join(unknown)} (see '{prog} --help')", 2)
    if args.command == "dev":
        return dev_cli.run(args, prog)
    try:
        code: int = args.handler(args)
    except (*watcher_cli.EXPECTED_ERRORS, *reconciler_cli.EXPECTED_ERRORS) as error:
        fail(prog, _one_line(error))
    except NatsError as error:
        # The server refused a request at start-up (a cluster too small for the replicas).
        fail(prog, f"NATS: {_one_line(error)}")
    except OSError as error:
        # A port taken between the checks and the bind, a file that went away: one line;
        # the traceback at -v 4 and up.
        logging.getLogger("kubus").debug("%s failed", prog, exc_info=True)
        fail(prog, _one_line(error))
    except KeyboardInterrupt:
        return 130
    return code


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def _prog_of(args: argparse.Namespace) -> str:
    parts = ["kubus", args.command]
    sub = getattr(args, f"{args.command}_command", None)
    if sub:
        parts.append(sub)
    return " ".join(parts)


if __name__ == "__main__":
    raise SystemExit(main())

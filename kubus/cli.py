"""The ``kubus`` command: one entry point for the dev stack and, later, the services.

Each subcommand's module is imported only when that subcommand is chosen: ``kubus --help``
lists them all from the table here, and ``kubus reconciler`` imports nothing of the dev stack,
the benchmarks or the manifest generator, so a new reconciler process starts sooner.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from kubus.cliutil import ArgumentParser, fail

if TYPE_CHECKING:
    from _collections_abc import dict_items, dict_values

    _Subparsers = argparse._SubParsersAction[ArgumentParser]
else:  # generic only to the type checker
    _Subparsers = argparse._SubParsersAction

__all__ = ["COMMANDS", "main"]


def _add_dev(subparsers: _Subparsers) -> None:
    from kubus.devstack import cli

    cli.add_dev_commands(subparsers)


def _add_watcher(subparsers: _Subparsers) -> None:
    from watcher import cli

    cli.add_watcher_command(subparsers)


def _add_reconciler(subparsers: _Subparsers) -> None:
    from reconcilers import cli

    cli.add_reconciler_command(subparsers)


def _add_bench(subparsers: _Subparsers) -> None:
    from bench.compare import cli

    cli.add_bench_command(subparsers)


def _add_crd(subparsers: _Subparsers) -> None:
    from reconcilers.operator import cli

    cli.add_crd_commands(subparsers)


def _add_deploy(subparsers: _Subparsers) -> None:
    from kubus.deploy import cli

    cli.add_deploy_commands(subparsers)


@dataclass(frozen=True)
class Command:
    """A subcommand as ``kubus --help`` lists it, and how its module adds its parser."""

    name: str
    help: str
    add: Callable[[_Subparsers], None]


COMMANDS: Final[tuple[Command, ...]] = (
    Command("dev", "run the local dev stack (no Docker needed)", _add_dev),
    Command(
        "watcher", "mirror apiserver watch streams into the JetStream object stream", _add_watcher
    ),
    Command("reconciler", "run one process of a reconciler pool", _add_reconciler),
    Command(
        "bench",
        "kubus side by side with kube-controller-manager and a no-controller ceiling",
        _add_bench,
    ),
    Command("deploy", "generate in-cluster manifests", _add_deploy),
    Command("crd", "CustomResourceDefinitions of typed custom resources", _add_crd),
)


class _Parsers(dict[str, ArgumentParser]):
    """The subcommands' parsers by name, as argparse looks one up to dispatch: a command whose
    module has not added its parser yet is loaded first, so whoever reads a parser (argparse,
    a test walking every command's flags) gets it whole."""

    def __init__(self) -> None:
        super().__init__()
        self.pending: dict[str, Callable[[], None]] = {}

    def __getitem__(self, name: str) -> ArgumentParser:
        load = self.pending.pop(name, None)
        if load is not None:
            load()
        return super().__getitem__(name)

    def values(self) -> dict_values[str, ArgumentParser]:
        self._load_all()
        return super().values()

    def items(self) -> dict_items[str, ArgumentParser]:
        self._load_all()
        return super().items()

    def _load_all(self) -> None:
        for name in list(self.pending):
            self[name]


class _LazySubcommands(_Subparsers):
    """Subcommands listed with their help at once, each parser built by its module on first
    use (``kubus <command> ...``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._parsers = _Parsers()
        self._name_parser_map = self._parsers
        self.choices = self._parsers

    def add_lazy(self, command: Command) -> None:
        # A placeholder, so that argparse knows the name; its help goes into the listing.
        super().add_parser(command.name, help=command.help)

        def load() -> None:
            dict.__delitem__(self._parsers, command.name)
            command.add(self)

        self._parsers.pending[command.name] = load

    def add_parser(self, name: str, **kwargs: Any) -> ArgumentParser:
        listed = next((a for a in self._choices_actions if a.dest == name), None)
        if listed is not None and "help" in kwargs:
            # The module adding a listed command: its help replaces the listing's (they are
            # the same text; a test keeps them so), with no second line in the listing.
            listed.help = kwargs.pop("help")
        return super().add_parser(name, **kwargs)


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="kubus",
        description="The Kubernetes controller manager as event-sourced controllers on NATS "
        "JetStream.",
    )
    commands = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", action=_LazySubcommands
    )
    assert isinstance(commands, _LazySubcommands)
    for command in COMMANDS:
        commands.add_lazy(command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    prog = _prog_of(args)
    if unknown:
        # Name the subcommand the flag was given to, not just the top-level program.
        fail(prog, f"unrecognized arguments: {' '.join(unknown)} (see '{prog} --help')", 2)
    if args.command == "dev":
        from kubus.devstack import cli as dev_cli

        return dev_cli.run(args, prog)
    try:
        code: int = args.handler(args)
    except KeyboardInterrupt:
        return 130
    except Exception as error:
        message = _one_line_failure(prog, error)
        if message is None:
            raise
        fail(prog, message)
    return code


def _one_line_failure(prog: str, error: Exception) -> str | None:
    """The line an anticipated failure is reported with; None for a bug (its traceback).

    The services' error classes are imported here, on the way out, not at start: every
    command reports them as one line, as it did when they were imported up front.
    """
    from nats.errors import Error as NatsError

    from reconcilers import cli as reconciler_cli
    from watcher import cli as watcher_cli

    if isinstance(error, (*watcher_cli.EXPECTED_ERRORS, *reconciler_cli.expected_errors())):
        return _one_line(error)

    if isinstance(error, NatsError):
        # The server refused a request at start-up (a cluster too small for the replicas).
        return f"NATS: {_one_line(error)}"
    if isinstance(error, OSError):
        # A port taken between the checks and the bind, a file that went away: one line;
        # the traceback at -v 4 and up.
        logging.getLogger("kubus").debug("%s failed", prog, exc_info=error)
        return _one_line(error)
    return None


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

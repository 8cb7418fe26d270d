"""Command-line conventions shared by every ``kubus`` command.

A usage error is one line on stderr, ``kubus <command>: error: ...``, naming the command and
the bad input, and exit code 2; a runtime failure is one line and exit code 1.

Flags parse as kube-controller-manager's (spf13/pflag) do where argparse differs: no
abbreviations (``--v`` is never ``--verbose``), and a flag that takes a value takes the next
argument even when it starts with ``-`` (``--controllers -deployment``). The value parsers
here take a command-line string or a value from a YAML ``--config`` file, and raise
``ValueError`` with a message that the caller prefixes with the flag, or the file and the key.
"""

from __future__ import annotations

import argparse
import math
import re
import socket
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Final, NoReturn, TypeVar

__all__ = [
    "ArgumentParser",
    "Parse",
    "check_bindable",
    "choice",
    "duration",
    "fail",
    "flag_type",
    "format_duration",
    "klog_level",
    "parse_duration",
    "positive_int",
    "positive_number",
    "text",
    "whole_number",
]

T = TypeVar("T")
Parse = Callable[[object], T]
"""A flag's value parser: a command-line string or a YAML value in, the value or ValueError out."""


class ArgumentParser(argparse.ArgumentParser):
    """An argparse parser whose errors are a single line (no usage dump), with pflag's habits."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        given = sys.argv[1:] if args is None else list(args)
        return super().parse_known_args(self._join_dash_values(given), namespace)

    def _join_dash_values(self, args: list[str]) -> list[str]:
        """``--flag -value`` -> ``--flag=-value`` for flags of this parser that take a value:
        pflag hands such a flag the next argument whatever it looks like; argparse would take
        ``-value`` for an unknown option."""
        joined: list[str] = []
        index = 0
        while index < len(args):
            arg = args[index]
            action = self._option_string_actions.get(arg)
            following = args[index + 1] if index + 1 < len(args) else None
            if (
                action is not None
                and action.nargs is None
                and following is not None
                and following.startswith("-")
                and following != "--"
            ):
                joined.append(f"{arg}={following}")
                index += 2
                continue
            if arg == "--":
                joined.extend(args[index:])
                break
            joined.append(arg)
            index += 1
        return joined


def fail(prog: str, message: str, code: int = 1) -> NoReturn:
    print(f"{prog}: error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(code)


def flag_type(parse: Parse[T]) -> Callable[[str], T]:
    """``parse`` as an argparse ``type``: its message is shown after the flag's name."""

    def convert(value: str) -> T:
        try:
            return parse(value)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    convert.__name__ = getattr(parse, "__name__", "value")
    return convert


# --- value parsers ------------------------------------------------------------------------


def _shown(value: object) -> str:
    return repr(value) if isinstance(value, str) else f"{value!r} ({type(value).__name__})"


def whole_number(*, minimum: int, maximum: int | None = None) -> Parse[int]:
    """An integer in ``[minimum, maximum]``; YAML booleans and floats are refused."""
    bound = f"between {minimum} and {maximum}" if maximum is not None else f">= {minimum}"

    def parse(value: object) -> int:
        number: int | None = None
        if isinstance(value, int) and not isinstance(value, bool):
            number = value
        elif isinstance(value, str):
            try:
                number = int(value.strip(), 10)
            except ValueError:
                number = None
        if number is None or number < minimum or (maximum is not None and number > maximum):
            raise ValueError(f"must be a whole number {bound}, not {_shown(value)}")
        return number

    parse.__name__ = "whole number"
    return parse


def positive_int(value: object) -> int:
    return whole_number(minimum=1)(value)


def positive_number(value: object) -> float:
    """A finite number > 0 (a rate, say)."""
    number: float | None = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            number = None
    if number is None or not math.isfinite(number) or number <= 0:
        raise ValueError(f"must be a number > 0, not {_shown(value)}")
    return number


_UNITS: Final = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,  # U+00B5 micro sign, as Go accepts
    "μs": 1e-6,  # U+03BC Greek mu
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_TERM: Final = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_DURATION_FORMS: Final = "a duration such as 15s, 2m, 1m30s, 500ms, or a number of seconds"


def parse_duration(value: object) -> float:
    """Seconds, from Go's duration form (``1h``, ``1m30s``, ``500ms``; what
    kube-controller-manager's duration flags take) or a plain number of seconds.

    Only finite values: ``nan`` and ``inf`` are not durations.
    """
    if isinstance(value, int | float) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise ValueError(f"must be {_DURATION_FORMS}, not {_shown(value)}")
        return float(value)
    if not isinstance(value, str):
        raise ValueError(f"must be {_DURATION_FORMS}, not {_shown(value)}")
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        if not math.isfinite(seconds) or not re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)", text):
            raise ValueError(f"must be {_DURATION_FORMS}, not {value!r}")
        return seconds
    sign, body = (-1.0, text[1:]) if text.startswith("-") else (1.0, text.removeprefix("+"))
    total = 0.0
    position = 0
    while position < len(body):
        match = _TERM.match(body, position)
        if match is None:
            raise ValueError(f"must be {_DURATION_FORMS}, not {value!r}")
        total += float(match.group(1)) * _UNITS[match.group(2)]
        position = match.end()
    if not body:
        raise ValueError(f"must be {_DURATION_FORMS}, not {value!r}")
    return sign * total


def duration(*, minimum: float, inclusive: bool = False) -> Parse[float]:
    """A duration (see :func:`parse_duration`) above ``minimum`` (or at least, ``inclusive``)."""
    bound = f">= {format_duration(minimum)}" if inclusive else f"> {format_duration(minimum)}"

    def parse(value: object) -> float:
        seconds = parse_duration(value)
        if seconds < minimum or (seconds == minimum and not inclusive):
            raise ValueError(f"must be a duration {bound}, not {_shown(value)}")
        return seconds

    parse.__name__ = "duration"
    return parse


def format_duration(seconds: float) -> str:
    """Go's way of printing a duration, for messages and help (``1m30s``, ``500ms``)."""
    if seconds == 0:
        return "0s"
    if abs(seconds) < 1:
        return f"{seconds * 1000:g}ms"
    sign, rest = ("-", -seconds) if seconds < 0 else ("", seconds)
    hours, rest = divmod(rest, 3600)
    minutes, rest = divmod(rest, 60)
    parts = [f"{int(hours)}h"] if hours else []
    if hours or minutes:
        parts.append(f"{int(minutes)}m")
    parts.append(f"{round(rest, 6):g}s")
    return sign + "".join(parts)


def klog_level(value: object) -> int:
    """``-v``: klog's verbosity, a whole number >= 0 (0 is always shown, higher is chattier)."""
    return whole_number(minimum=0)(value)


def choice(*choices: str) -> Parse[str]:
    def parse(value: object) -> str:
        if not isinstance(value, str) or value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}, not {_shown(value)}")
        return value

    parse.__name__ = "choice"
    return parse


def text(value: object) -> str:
    """A string; in a YAML file, ``12345`` is a number, not a string."""
    if not isinstance(value, str):
        raise ValueError(f"must be a string, not {_shown(value)}")
    return value


# --- checks against the machine --------------------------------------------------------------


def check_bindable(addresses: Iterable[tuple[str, int]]) -> None:
    """Bind every ``(host, port)`` at once, then let go: a port another process holds, or a host
    that does not resolve, is found here before a service connects anywhere.

    Raises ``ValueError("HOST:PORT: why")``. Held together, two of our own addresses that
    would collide (``127.0.0.1:8080`` and ``:8080``) are found too.
    """
    held: list[socket.socket] = []
    try:
        for host, port in dict.fromkeys(addresses):
            shown = f"{host}:{port}"
            try:
                infos = socket.getaddrinfo(
                    host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
                )
            except socket.gaierror as error:
                raise ValueError(f"{shown}: cannot resolve {host!r} ({error.strerror})") from None
            for family, kind, proto, _name, address in dict.fromkeys(
                (info[0], info[1], info[2], info[3], info[4]) for info in infos
            ):
                sock = socket.socket(family, kind, proto)
                held.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                try:
                    sock.bind(address)
                    sock.listen()
                except OSError as error:
                    raise ValueError(f"{shown}: cannot listen there ({error.strerror})") from None
    finally:
        for sock in held:
            sock.close()

"""Command-line conventions shared by every ``kubus`` command.

A usage error is one line on stderr, naming the command and the bad input, and exit code 2;
a runtime failure is one line and exit code 1.
"""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn

__all__ = ["ArgumentParser", "fail"]


class ArgumentParser(argparse.ArgumentParser):
    """An argparse parser whose errors are a single line (no usage dump)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def fail(prog: str, message: str, code: int = 1) -> NoReturn:
    print(f"{prog}: error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(code)

"""The codebase keeps its own rules: layering (import-linter), types (mypy strict), ruff."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


@pytest.mark.parametrize(
    "command",
    [
        [str(BIN / "lint-imports")],
        [str(BIN / "ruff"), "check", "."],
        [str(BIN / "ruff"), "format", "--check", "."],
        [sys.executable, "-m", "mypy"],
        # The example operators: distributions of their own, so not among mypy's packages.
        [sys.executable, "-m", "mypy", "--strict", "examples/mysql-operator/kubus_mysql"],
    ],
    ids=["import-linter", "ruff-check", "ruff-format", "mypy-strict", "mypy-strict-examples"],
)
def test_tool_passes(command: list[str]) -> None:
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]

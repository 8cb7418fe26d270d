"""The state dir of one dev stack: what runs (``stack.json``) and how to reach it (``env``)."""

from __future__ import annotations

import json
import os
import shlex
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path

from kubus.devstack.errors import StateDirError
from kubus.devstack.process import ProcessRecord, is_alive

__all__ = ["StateDir", "read_env_file", "render_env"]

_FORMAT = 1
_STACK_DIRS = ("etcd", "nats", "logs", "pki", "scheduler", "bin")
_STACK_FILES = (
    "env",
    "stack.json",
    "kubeconfig",
    "jaeger.yaml",
    "kwok-stages.yaml",
    "apiserver-tracing.yaml",
)


class StateDir:
    def __init__(self, path: Path) -> None:
        self.path = path.expanduser().absolute()

    @property
    def stack_file(self) -> Path:
        return self.path / "stack.json"

    @property
    def env_file(self) -> Path:
        return self.path / "env"

    @property
    def bin_dir(self) -> Path:
        """The tools the env file puts first on ``PATH``."""
        return self.path / "bin"

    def prepare(self) -> None:
        """Create the dir and prove it writable, or say why it cannot be used."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            probe = self.path / ".write-test"
            probe.write_text("ok")
            probe.unlink()
        except OSError as error:
            reason = error.strerror or str(error)
            raise StateDirError(f"state dir {self.path} is not usable: {reason}") from error
        running = [record for record in self.records() if is_alive(record)]
        if running:
            pids = ", ".join(f"{record.name}={record.pid}" for record in running)
            raise StateDirError(
                f"a dev stack is already running from {self.path} ({pids}); "
                f"stop it with 'kubus dev down --state-dir {self.path}'"
            )

    def reset(self) -> None:
        """Forget the data of an earlier stack: every ``up`` starts from an empty cluster.

        Only what the stack itself writes is removed, never anything else in the dir.
        """
        for name in _STACK_DIRS:
            shutil.rmtree(self.path / name, ignore_errors=True)
        for name in _STACK_FILES:
            (self.path / name).unlink(missing_ok=True)

    def records(self) -> list[ProcessRecord]:
        try:
            data = json.loads(self.stack_file.read_text())
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as error:
            raise StateDirError(f"cannot read {self.stack_file}: {error}") from error
        if not isinstance(data, dict) or data.get("format") != _FORMAT:
            raise StateDirError(f"{self.stack_file} is not a kubus stack file (format {_FORMAT})")
        return [
            ProcessRecord(**{**entry, "argv": tuple(entry["argv"])})
            for entry in data.get("processes", [])
        ]

    def save(self, records: Sequence[ProcessRecord], *, status: str) -> None:
        data = {
            "format": _FORMAT,
            "status": status,
            "processes": [asdict(record) for record in records],
        }
        _write_atomically(self.stack_file, json.dumps(data, indent=2) + "\n")

    def link_tools(self, tools: Sequence[Path]) -> bool:
        """Link the given executables (those that exist) into :attr:`bin_dir`.

        Only these few names are put before the user's ``PATH``, not a whole virtualenv's
        ``bin`` (which would also shadow their ``python3`` and ``pip``).
        """
        present = [tool for tool in tools if tool.is_file() and os.access(tool, os.X_OK)]
        if not present:
            return False
        self.bin_dir.mkdir(exist_ok=True)
        for tool in present:
            link = self.bin_dir / tool.name
            link.unlink(missing_ok=True)
            link.symlink_to(tool.absolute())
        return True

    def write_env(self, values: Mapping[str, str], *, path_dir: Path | None = None) -> None:
        _write_atomically(self.env_file, render_env(values, path_dir=path_dir))

    def read_env(self) -> dict[str, str]:
        return read_env_file(self.env_file)

    def clear(self) -> None:
        self.stack_file.unlink(missing_ok=True)
        self.env_file.unlink(missing_ok=True)
        shutil.rmtree(self.bin_dir, ignore_errors=True)


def render_env(values: Mapping[str, str], *, path_dir: Path | None = None) -> str:
    """``export KEY=VALUE`` lines: ``source`` them in bash or sh, with or without ``set -a``.

    ``path_dir`` comes first on ``PATH`` (a line relative to the sourcing shell's own ``PATH``).
    """
    lines = [f"export {key}={shlex.quote(value)}\n" for key, value in values.items()]
    if path_dir is not None:
        lines.append(f'export PATH={shlex.quote(str(path_dir))}:"$PATH"\n')
    return "".join(lines)


def read_env_file(path: Path) -> dict[str, str]:
    """The variables of an ``env`` file (``[export ]KEY=VALUE`` lines, values shell-quoted).

    The ``PATH`` line is left out: its value extends the sourcing shell's, it is not the
    stack's.
    """
    values: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if line.startswith("export "):
            line = line[len("export ") :].lstrip()
        key, sep, value = line.partition("=")
        if not key or not sep or key.startswith("#") or key == "PATH":
            continue
        words = shlex.split(value)
        values[key] = words[0] if words else ""
    return values


def _write_atomically(path: Path, text: str) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text)
    os.replace(temporary, path)

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

__all__ = ["StateDir", "read_env_file"]

_FORMAT = 1
_STACK_DIRS = ("etcd", "nats", "logs", "pki", "scheduler")
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

    def write_env(self, values: Mapping[str, str]) -> None:
        text = "".join(f"{key}={shlex.quote(value)}\n" for key, value in values.items())
        _write_atomically(self.env_file, text)

    def read_env(self) -> dict[str, str]:
        return read_env_file(self.env_file)

    def clear(self) -> None:
        self.stack_file.unlink(missing_ok=True)
        self.env_file.unlink(missing_ok=True)


def read_env_file(path: Path) -> dict[str, str]:
    """``KEY=VALUE`` lines (values shell-quoted), as the stack writes its ``env`` file."""
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        key, sep, value = line.partition("=")
        if key and sep:
            values[key] = shlex.split(value)[0] if value else ""
    return values


def _write_atomically(path: Path, text: str) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text)
    os.replace(temporary, path)

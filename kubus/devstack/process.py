"""Child processes of the dev stack: started in their own session, stopped by process group.

A stack started with ``--detach`` outlives the command that started it, so a process is
identified by a :class:`ProcessRecord` kept in the state dir: its pid *and* its start time in
clock ticks, which guards ``kubus dev down`` against signalling a recycled pid.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ProcessRecord", "is_alive", "spawn", "stop", "tail"]


@dataclass(frozen=True)
class ProcessRecord:
    name: str
    pid: int
    start_ticks: int
    log: str
    argv: tuple[str, ...]


def spawn(
    name: str,
    argv: Sequence[str],
    *,
    log_path: Path,
    env: Mapping[str, str] | None = None,
    die_with_parent: bool = False,
) -> tuple[ProcessRecord, subprocess.Popen[bytes]]:
    """Start ``argv`` in a new session with its output appended to ``log_path``.

    ``die_with_parent`` asks the kernel to SIGKILL the child if this process dies, even by
    SIGKILL, so that a foreground stack never outlives its ``kubus dev up``. (SIGKILL, not
    SIGTERM: all components would get it at once, and an apiserver whose etcd is gone waits
    long for a graceful end. A dev stack's data is throw-away.)
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        child = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=None if env is None else dict(env),
            preexec_fn=_terminate_with_parent if die_with_parent else None,  # noqa: PLW1509
        )
    ticks = _start_ticks(child.pid)
    record = ProcessRecord(
        name, child.pid, ticks if ticks is not None else -1, str(log_path), tuple(argv)
    )
    return record, child


_PR_SET_PDEATHSIG = 1


def _terminate_with_parent() -> None:
    # Runs in the child between fork and exec: only async-signal-safe work.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def is_alive(record: ProcessRecord) -> bool:
    """True while the recorded process runs (a zombie or a recycled pid counts as gone)."""
    stat = _read_stat(record.pid)
    if stat is None:
        return False
    state, ticks, _group = stat
    return state not in ("Z", "X") and ticks == record.start_ticks


def stop(
    record: ProcessRecord, *, grace: float = 10.0, child: subprocess.Popen[bytes] | None = None
) -> None:
    """SIGTERM the process and its group, SIGKILL what is left after ``grace`` seconds.

    Group members are found in /proc by process group *and* start time, so a stale record
    never signals an unrelated process that happens to have the same pid.
    """
    for member in _group_members(record):
        _kill(member, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and _group_members(record):
        if child is not None:
            child.poll()
        time.sleep(0.05)
    for member in _group_members(record):
        _kill(member, signal.SIGKILL)
    if child is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(timeout=5)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and _group_members(record):
        time.sleep(0.05)


def tail(path: Path | str, lines: int = 5) -> str:
    """The last non-empty lines of a log, for error messages."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - 8192))
            text = handle.read().decode(errors="replace")
    except OSError:
        return ""
    kept = [line for line in text.splitlines() if line.strip()][-lines:]
    return " | ".join(kept)


def _kill(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signum)


def _group_members(record: ProcessRecord) -> list[int]:
    """Live processes in the record's process group that started no earlier than it."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        stat = _read_stat(int(entry.name))
        if stat is None:
            continue
        state, ticks, group = stat
        if group == record.pid and ticks >= record.start_ticks and state not in ("Z", "X"):
            members.append(int(entry.name))
    return members


def _read_stat(pid: int) -> tuple[str, int, int] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name is in parentheses and may hold spaces; fields follow the last ')'.
    fields = text[text.rindex(")") + 2 :].split()
    return fields[0], int(fields[19]), int(fields[2])


def _start_ticks(pid: int) -> int | None:
    stat = _read_stat(pid)
    return None if stat is None else stat[1]

"""A user's virtualenv: a fresh one that sees this interpreter's kubus, with a distribution
pip-installed into it as a user installs an operator beside kubus."""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Sequence
from pathlib import Path

__all__ = ["entry_points_of", "installed_beside_kubus"]


def installed_beside_kubus(
    source: Path, work: Path, *, pip_args: Sequence[str] = ("--no-deps",)
) -> Path:
    """The python of a new virtualenv under ``work`` with ``source`` (copied first, so that
    the build leaves nothing in the tree) installed by ``pip install *pip_args``."""
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    # kubus and its dependencies, as this interpreter has them: a virtualenv made from one
    # (the repo's .venv) would inherit only the base interpreter's with --system-site-packages.
    site_packages = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    ours = sysconfig.get_paths()["purelib"]
    (Path(site_packages) / "_kubus.pth").write_text(f"import site; site.addsitedir({ours!r})\n")
    copy = work / "src"
    shutil.copytree(
        source, copy, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__")
    )
    result = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", *pip_args, str(copy)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return python


def entry_points_of(python: Path) -> str:
    """The ``kubus.controllers`` entry points that interpreter sees, as text."""
    return subprocess.run(
        [
            str(python),
            "-c",
            "from importlib.metadata import entry_points; "
            "print([e.value for e in entry_points(group='kubus.controllers')])",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout

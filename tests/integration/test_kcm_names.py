"""kubus knows kube-controller-manager's controllers name for name: the real binary says which.

Its ``--help`` lists every controller and the disabled-by-default ones (canonical names only);
its ``--controllers`` validation tells which names and aliases it knows, in the words kubus
repeats. Needs the kube-controller-manager binary of the dev stack (``make binaries``), no
running servers.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from kubus.devstack import COMPONENTS, Binaries, default_cache_dir
from reconcilers.registry import (
    DISABLED_BY_DEFAULT,
    KNOWN,
    ControllerSelectionError,
    Registry,
    select_controllers,
)

pytestmark = pytest.mark.integration

VERSION = COMPONENTS["kube-controller-manager"].version


@pytest.fixture(scope="module")
def kcm() -> Path:
    binaries = Binaries(cache_dir=default_cache_dir(os.environ))
    found = binaries.find("kube-controller-manager")
    if found is None:
        pytest.fail(
            f"kube-controller-manager {VERSION} not found (on PATH, $KUBUS_KUBE_CONTROLLER_"
            f"MANAGER_BIN or {binaries.cached_path('kube-controller-manager')}): build it with "
            "`make binaries`",
            pytrace=False,
        )
    if found.version != VERSION:
        pytest.fail(
            f"{found.path} is kube-controller-manager {found.version}, not {VERSION}",
            pytrace=False,
        )
    return found.path


def controllers_help(kcm: Path) -> tuple[list[str], list[str], str]:
    """The ``--controllers`` help: all controllers, the disabled-by-default ones, the default."""
    result = subprocess.run(
        [str(kcm), "--help"], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    flag = re.search(r"^\s*--controllers strings\s(.*?)^\s*--", result.stdout, re.M | re.S)
    assert flag is not None, result.stdout
    text = " ".join(flag[1].split())  # the help may be wrapped to a terminal's width
    parts = re.fullmatch(
        r".*All controllers: (.*) Disabled-by-default controllers: (.*) \(default \[(.*)\]\)",
        text,
    )
    assert parts is not None, text
    return parts[1].split(", "), parts[2].split(", "), parts[3]


def validation_error(kcm: Path, controllers: list[str]) -> str:
    """What kube-controller-manager says of a ``--controllers`` value it rejects: it validates
    the flags before it contacts anything."""
    result = subprocess.run(
        [str(kcm), f"--controllers={','.join(controllers)}", "--kubeconfig=/nonexistent"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1, result.stderr
    logged = re.search(r'"command failed" err="((?:[^"\\]|\\.)*)"', result.stderr)
    assert logged is not None, result.stderr
    message: str = json.loads(f'"{logged[1]}"')
    return message


def test_the_registry_lists_the_controllers_kcm_help_lists(kcm: Path) -> None:
    listed, disabled, default = controllers_help(kcm)
    assert len(listed) == 52
    assert listed == sorted(KNOWN)
    assert disabled == sorted(DISABLED_BY_DEFAULT)
    assert default == "*"


def test_kcm_knows_every_alias_kubus_accepts_and_rejects_unknowns_in_the_same_words(
    kcm: Path,
) -> None:
    """Every kubus name and alias (some as -NAME) passes kcm's validation; only the unknown
    ones fail, and kubus's message is kcm's."""
    known = [alias for c in KNOWN.values() for alias in (c.name, *c.aliases)]
    items = [
        *("*", "kubus-no-such-controller"),
        *(("-" if index % 2 else "") + name for index, name in enumerate(known)),
        *("-kubus-no-such-controller-either", "kubus-no-such-controller"),
    ]
    theirs = validation_error(kcm, items)
    assert theirs == (
        '["kubus-no-such-controller" is not in the list of known controllers, '
        '"kubus-no-such-controller-either" is not in the list of known controllers]'
    )
    with pytest.raises(ControllerSelectionError) as ours:
        select_controllers(items, Registry.build())
    assert str(ours.value) == f"--controllers: {theirs}"

    single = ["deployment", "replicaset-contoller"]
    with pytest.raises(ControllerSelectionError) as ours:
        select_controllers(single, Registry.build())
    assert str(ours.value) == f"--controllers: {validation_error(kcm, single)}"

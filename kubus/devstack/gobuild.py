"""Build binaries from a Go module, as published on the module proxy.

``go install module/cmd@version`` refuses modules whose go.mod has ``replace`` directives, and
``k8s.io/kubernetes`` goes further: it requires every staging module at ``v0.0.0`` and points it
at ``./staging/src/...``, which the published module does not carry. So every build here goes
through a throw-away *wrapper module* that requires the target, repeats its non-local replaces,
and maps its local (staging) replaces to the versions published for that release.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from kubus.devstack.errors import BinaryError, ToolchainMissingError

__all__ = ["GoModule", "Replace", "build_binaries", "find_go", "parse_go_mod"]

Progress = Callable[[str], None]


@dataclass(frozen=True)
class GoModule:
    """One module at one version, and how its binaries are linked."""

    path: str
    version: str
    # For modules with local (./staging) replaces: the published version to use instead.
    staging_version: str | None = None
    tags: tuple[str, ...] = ()
    ldflags: tuple[str, ...] = ()


@dataclass(frozen=True)
class Replace:
    old: str
    old_version: str | None
    new: str
    new_version: str | None

    @property
    def is_local(self) -> bool:
        return self.new.startswith(("./", "../", "/"))

    def render(self) -> str:
        left = f"{self.old} {self.old_version}" if self.old_version else self.old
        right = f"{self.new} {self.new_version}" if self.new_version else self.new
        return f"{left} => {right}"


@dataclass
class GoModFacts:
    """What a wrapper needs from the target's go.mod."""

    go: str | None = None
    godebug: list[str] = field(default_factory=list)
    replaces: list[Replace] = field(default_factory=list)


_REPLACE_LINE = re.compile(r"^(\S+)(?:\s+(\S+))?\s+=>\s+(\S+)(?:\s+(\S+))?$")


def parse_go_mod(text: str) -> GoModFacts:
    """Read the ``go``, ``godebug`` and ``replace`` directives of a go.mod, block or line form."""
    facts = GoModFacts()
    block: str | None = None
    for raw in text.splitlines():
        line = raw.split("//", 1)[0].strip()
        if not line:
            continue
        if block is not None:
            if line == ")":
                block = None
            else:
                _take(facts, block, line)
            continue
        keyword, _, rest = line.partition(" ")
        rest = rest.strip()
        if rest == "(":
            block = keyword
        else:
            _take(facts, keyword, rest)
    return facts


def _take(facts: GoModFacts, keyword: str, rest: str) -> None:
    if keyword == "go":
        facts.go = rest
    elif keyword == "godebug":
        facts.godebug.append(rest)
    elif keyword == "replace":
        match = _REPLACE_LINE.match(rest)
        if match is None:
            raise BinaryError(f"cannot read the go.mod replace directive {rest!r}")
        old, old_version, new, new_version = match.groups()
        facts.replaces.append(Replace(old, old_version, new, new_version))


def wrapper_go_mod(module: GoModule, facts: GoModFacts) -> str:
    """The go.mod of a wrapper module that builds ``module``'s commands."""
    lines = ["module kubus.invalid/build", ""]
    if facts.go:
        lines += [f"go {facts.go}", ""]
    lines += [f"godebug {entry}" for entry in facts.godebug]
    lines += ["", f"require {module.path} {module.version}", "", "replace ("]
    for replace in facts.replaces:
        if not replace.is_local:
            lines.append(f"\t{replace.render()}")
        elif module.staging_version is not None:
            lines.append(f"\t{replace.old} => {replace.old} {module.staging_version}")
        # A local replace without a published counterpart cannot be honoured; the build
        # then uses the version the module requires, which is what `go get` would do.
    lines += [")", ""]
    return "\n".join(lines)


def find_go(environ: Mapping[str, str]) -> Path:
    """The Go toolchain to build with: ``$KUBUS_GO``, else ``go`` on PATH."""
    explicit = environ.get("KUBUS_GO")
    if explicit:
        if not os.access(explicit, os.X_OK):
            raise ToolchainMissingError(f"KUBUS_GO={explicit} is not an executable Go toolchain")
        return Path(explicit)
    found = shutil.which("go", path=environ.get("PATH", ""))
    if found is None:
        raise ToolchainMissingError("no Go toolchain: 'go' is not on PATH and KUBUS_GO is unset")
    return Path(found)


def build_binaries(
    module: GoModule,
    packages: Mapping[str, str],
    *,
    destinations: Mapping[str, Path],
    work_dir: Path,
    environ: Mapping[str, str],
    progress: Progress,
) -> None:
    """Build each ``name -> package`` of ``module`` into ``destinations[name]``.

    Binaries are linked in a temporary directory and renamed into place, so a cache never holds
    a half-written binary; a lock on the work dir lets concurrent callers share one build.
    """
    go = find_go(environ)
    work_dir.mkdir(parents=True, exist_ok=True)
    env = _go_environment(environ)
    log_path = work_dir / "build.log"
    with _locked(work_dir / ".lock"):
        missing = {name: pkg for name, pkg in packages.items() if not destinations[name].exists()}
        if not missing:
            return
        with log_path.open("a") as log:
            go_mod, go_sum = _download(go, module, env=env, cwd=work_dir, log=log)
            (work_dir / "go.mod").write_text(wrapper_go_mod(module, parse_go_mod(go_mod)))
            # The target's own go.sum vouches for its dependencies, so the build needs the
            # checksum database only for what the wrapper adds.
            (work_dir / "go.sum").write_text(go_sum)
            progress(f"resolving {module.path}@{module.version} (downloads on a cold cache)")
            _run(
                [str(go), "get", *(f"{pkg}@{module.version}" for pkg in missing.values())],
                env=env,
                cwd=work_dir,
                log=log,
                what=f"go get for {', '.join(missing)}",
            )
            progress(f"compiling {', '.join(missing)} (a few minutes on a cold cache)")
            with tempfile.TemporaryDirectory(dir=work_dir) as out:
                for name, pkg in missing.items():
                    built = Path(out) / name
                    command = [str(go), "build", "-o", str(built)]
                    if module.tags:
                        command.append("-tags=" + ",".join(module.tags))
                    if module.ldflags:
                        command.append("-ldflags=" + " ".join(module.ldflags))
                    _run(
                        [*command, pkg], env=env, cwd=work_dir, log=log, what=f"go build of {name}"
                    )
                    destination = destinations[name]
                    destination.parent.mkdir(parents=True, exist_ok=True)
                    os.replace(built, destination)


def _go_environment(environ: Mapping[str, str]) -> dict[str, str]:
    env = dict(environ)
    env["GOTOOLCHAIN"] = "local"  # never fetch another toolchain behind the user's back
    env["CGO_ENABLED"] = "0"
    env.setdefault("GOPROXY", "https://proxy.golang.org,direct")
    return env


def _download(
    go: Path, module: GoModule, *, env: Mapping[str, str], cwd: Path, log: TextIO
) -> tuple[str, str]:
    """The target's go.mod and go.sum (empty if it has none), from the module cache."""
    output = _run(
        [str(go), "mod", "download", "-json", f"{module.path}@{module.version}"],
        env=env,
        cwd=cwd,
        log=log,
        what=f"download of {module.path}@{module.version}",
    )
    try:
        facts = json.loads(output)
        go_mod = Path(facts["GoMod"]).read_text()
        go_sum_path = Path(facts["Dir"]) / "go.sum"
    except (ValueError, KeyError, OSError) as error:
        raise BinaryError(
            f"go mod download of {module.path}@{module.version} gave no go.mod: {error}"
        ) from error
    go_sum = go_sum_path.read_text() if go_sum_path.exists() else ""
    return go_mod, go_sum


def _run(
    command: Sequence[str], *, env: Mapping[str, str], cwd: Path, log: TextIO, what: str
) -> str:
    log.write(f"$ {' '.join(command)}\n")
    log.flush()
    result = subprocess.run(
        command, env=dict(env), cwd=cwd, capture_output=True, text=True, check=False
    )
    log.write(result.stderr)
    log.flush()
    if result.returncode != 0:
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        last = lines[-1] if lines else f"exit code {result.returncode}"
        raise BinaryError(f"{what} failed: {last} (full log: {cwd / 'build.log'})")
    return result.stdout


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)

"""The Dockerfile and its .dockerignore, checked without a Docker engine.

The Dockerfile is read as the builder reads it (continuation lines joined, comments dropped,
global ARG defaults substituted into FROM), and its final stage checked for what an operator
relies on: a non-root numeric user, ``kubus`` as the entry point, no build tools, a health
check that needs no curl. The .dockerignore is applied with Docker's rule (the last pattern
that matches a path or one of its parent directories decides; ``!`` lets back in) to this
checkout's files, and must send exactly what the Dockerfile copies.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from packaging.specifiers import SpecifierSet

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"


@dataclass
class Stage:
    image: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def values(self, keyword: str) -> list[str]:
        return [value for key, value in self.instructions if key == keyword]


def instructions(text: str) -> list[tuple[str, str]]:
    """(KEYWORD, arguments) per instruction, continuation lines joined, comments left out."""
    result: list[tuple[str, str]] = []
    pending = ""
    for line in text.splitlines():
        if line.lstrip().startswith("#") or (not line.strip() and not pending):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        whole = (pending + line).strip()
        pending = ""
        keyword, _, arguments = whole.partition(" ")
        result.append((keyword.upper(), arguments.strip()))
    assert not pending, "the Dockerfile ends inside a continued line"
    return result


def substitute(text: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args[m.group(1) or m.group(2)], text)


def stages() -> list[Stage]:
    global_args: dict[str, str] = {}
    result: list[Stage] = []
    for keyword, arguments in instructions(DOCKERFILE.read_text()):
        if keyword == "FROM":
            words = [w for w in arguments.split() if not w.startswith("--platform")]
            image = substitute(words[0], global_args)
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            result.append(Stage(image, name))
        elif not result:
            assert keyword == "ARG", f"{keyword} before the first FROM"
            key, _, default = arguments.partition("=")
            global_args[key] = default
        else:
            result[-1].instructions.append((keyword, arguments))
    assert result, "no FROM"
    return result


def final_stage() -> Stage:
    return stages()[-1]


def pyproject() -> dict[str, object]:
    with (ROOT / "pyproject.toml").open("rb") as file:
        return tomllib.load(file)


def kubus_help(command: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "kubus.cli", command, "--help"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "COLUMNS": "200"},
    )
    return result.stdout


def test_builds_in_stages_on_a_slim_python_that_pyproject_allows() -> None:
    all_stages = stages()
    assert len(all_stages) >= 2, "a builder stage and a final one"
    assert all_stages[0].name, "the builder stage is named, for COPY --from"
    final = all_stages[-1]
    match = re.fullmatch(r"python:(\d+\.\d+)-slim(-\w+)?", final.image)
    assert match, f"final stage from {final.image}, not a pinned slim Python"
    project = pyproject()["project"]
    assert isinstance(project, dict)
    assert match.group(1) in SpecifierSet(project["requires-python"])
    assert all(stage.image == final.image for stage in all_stages), "one Python for both"
    copies = final.values("COPY")
    assert copies and all(c.startswith(f"--from={all_stages[0].name} ") for c in copies)


def test_the_final_stage_runs_kubus_as_a_numeric_non_root_user() -> None:
    final = final_stage()
    users = final.values("USER")
    assert users, "no USER: the container would run as root"
    user, _, group = users[-1].partition(":")
    assert user.isdigit() and int(user) != 0, f"USER {users[-1]}"
    assert not group or (group.isdigit() and int(group) != 0), f"USER {users[-1]}"
    entrypoint = json.loads(final.values("ENTRYPOINT")[-1])
    assert entrypoint == ["kubus"], "ENTRYPOINT in exec form, the kubus command"


def test_the_final_stage_has_no_build_tools_nor_caches() -> None:
    final = final_stage()
    text = "\n".join(f"{key} {value}" for key, value in final.instructions)
    for forbidden in (
        r"build-essential",
        r"\bgcc\b",
        r"\bg\+\+",
        r"\bclang\b",
        r"apt-get install",
        r"pip install",
        r"/wheels",
        r"/root/\.cache",
    ):
        assert not re.search(forbidden, text), f"final stage: {forbidden}"
    env = " ".join(final.values("ENV"))
    assert "PYTHONDONTWRITEBYTECODE=1" in env
    assert "PYTHONUNBUFFERED=1" in env


def test_the_builder_installs_binary_wheels_only_without_extras() -> None:
    builder = stages()[0]
    runs = " ".join(builder.values("RUN"))
    assert "--only-binary=:all:" in runs, "a dependency without a wheel would need a compiler"
    assert "[" not in runs, "no extras (dev, bench, test) in the image"


def test_the_health_check_probes_readyz_with_python() -> None:
    check = final_stage().values("HEALTHCHECK")[-1]
    assert "curl" not in check and "wget" not in check
    assert '"python", "-c"' in check
    for command in ("watcher", "reconciler"):
        default = re.search(
            r"--health-probe-bind-address HOST:PORT\s+serve /healthz and /readyz here; "
            r"0 disables \(default :(\d+)\)",
            kubus_help(command),
        )
        assert default, f"kubus {command} --help: no default probe address"
        assert f"http://127.0.0.1:{default.group(1)}/readyz" in check


def test_oci_labels_agree_with_pyproject() -> None:
    final = final_stage()
    label_text = " ".join(final.values("LABEL"))
    labels = dict(re.findall(r'(org\.opencontainers\.image\.[\w.]+)="([^"]*)"', label_text))
    project = pyproject()["project"]
    assert isinstance(project, dict)
    assert labels["org.opencontainers.image.title"] == project["name"]
    assert labels["org.opencontainers.image.licenses"] == project["license"]
    declared = dict(a.partition("=")[::2] for a in final.values("ARG"))
    assert substitute(labels["org.opencontainers.image.version"], declared) == project["version"]
    # A stage sees only the ARGs it declares: an undeclared one would make an empty label.
    for value in labels.values():
        for variable in re.findall(r"\$\{?(\w+)", value):
            assert variable in declared, f"LABEL uses ${variable}, not declared in the stage"


# .dockerignore, as Docker applies it


def ignore_patterns() -> list[tuple[bool, re.Pattern[str]]]:
    patterns = []
    for raw in DOCKERIGNORE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        pattern = os.path.normpath(line.lstrip("!").strip()).lstrip("/")
        regex = ""
        i = 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                regex, i = regex + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                regex, i = regex + ".*", i + 2
            elif pattern[i] == "*":
                regex, i = regex + "[^/]*", i + 1
            elif pattern[i] == "?":
                regex, i = regex + "[^/]", i + 1
            elif pattern[i] == "[":
                end = pattern.index("]", i)
                regex, i = regex + pattern[i : end + 1], end + 1
            else:
                regex, i = regex + re.escape(pattern[i]), i + 1
        patterns.append((negated, re.compile(regex)))
    return patterns


def ignored(path: str, patterns: list[tuple[bool, re.Pattern[str]]]) -> bool:
    parts = PurePosixPath(path).parts
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    excluded = False
    for negated, regex in patterns:
        if any(regex.fullmatch(candidate) for candidate in candidates):
            excluded = not negated
    return excluded


def copied_sources() -> set[str]:
    """What the Dockerfile copies from the build context (COPY without --from)."""
    sources = set()
    for stage in stages():
        for arguments in stage.values("COPY"):
            words = arguments.split()
            if any(word.startswith("--from") for word in words):
                continue
            sources.update(w.rstrip("/") for w in words[:-1] if not w.startswith("--"))
    return sources


def tracked_files() -> list[str]:
    result = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return [path for path in result.stdout.splitlines() if (ROOT / path).is_file()]


def test_dockerignore_leaves_out_the_checkout_s_heavy_and_private_parts() -> None:
    patterns = ignore_patterns()
    for path in (
        ".venv/bin/python",
        ".git/HEAD",
        ".git",
        ".compose/kubeconfig.yaml",
        "tests/unit/test_dockerfile.py",
        "docs/upstream/README.md",
        "deploy/base/kustomization.yaml",
        "kubus/__pycache__/cli.cpython-311.pyc",
        "reconcilers/controllers/__pycache__/x.cpython-311.pyc",
        "kubus.egg-info/PKG-INFO",
        ".mypy_cache/3.11/x.json",
        "Dockerfile",
        "docker-compose.yml",
    ):
        assert ignored(path, patterns), f"{path} would be sent to the builder"


def test_dockerignore_sends_exactly_what_the_dockerfile_copies() -> None:
    patterns = ignore_patterns()
    sources = copied_sources()
    for source in sources:
        assert (ROOT / source).exists(), f"COPY {source}: no such file"
    for path in tracked_files():
        copied = any(path == s or path.startswith(s + "/") for s in sources)
        sent = not ignored(path, patterns)
        if copied and not path.endswith((".pyc", ".pyo")):
            assert sent, f"{path} is copied by the Dockerfile but left out by .dockerignore"
        if sent:
            assert copied, f"{path} is sent to the builder but copied by nothing"


def test_every_package_the_wheel_holds_is_copied() -> None:
    tool = pyproject()["tool"]
    assert isinstance(tool, dict)
    includes = tool["setuptools"]["packages"]["find"]["include"]
    sources = copied_sources()
    for include in includes:
        top = include.rstrip("*").split(".")[0]
        assert top in sources, f"the wheel would lack {include}: the Dockerfile copies no {top}"
    readme = pyproject()["project"]
    assert isinstance(readme, dict)
    assert readme["readme"] in sources, "setuptools reads the readme to build the wheel"

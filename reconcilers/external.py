"""Controllers of other distributions, found through the ``kubus.controllers`` entry points.

An entry point's name is the controller's canonical name, its value ``module:Class``::

    [project.entry-points."kubus.controllers"]
    configmap-stamp-controller = "my_package.stamp:StampController"

The class follows :class:`reconcilers.controller.Controller`, its ``name`` equal to the entry
point's, and may set ``enabled_by_default = True`` (default off) for ``--controllers=*``.

Nothing an installed distribution does here may break the built-in controllers: an entry point
that cannot be imported, is not a controller class, or takes a name already in use is dropped
with one line that names it and its distribution (the caller decides how to report it).
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from typing import Any, Final

from bus.subjects import ResourceType
from reconcilers.controller import (
    EVERY_RESOURCE,
    Controller,
    Flag,
    Permission,
    RetryPolicy,
    Scope,
)

__all__ = ["GROUP", "Loaded", "enabled_by_default", "installed", "load", "problem_of"]

GROUP: Final = "kubus.controllers"

# Names as kube-controller-manager's: lowercase words joined by dashes (so never "-x" or "*").
_NAME: Final = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")
_FLAG: Final = re.compile(r"concurrent-[a-z0-9]+(?:-[a-z0-9]+)*")


def _name(value: object) -> bool:
    return isinstance(value, str) and _NAME.fullmatch(value) is not None


def _names(value: object) -> bool:
    return isinstance(value, tuple) and all(_name(item) for item in value)


def _resources(value: object) -> bool:
    return (
        isinstance(value, tuple)
        and bool(value)
        and all(isinstance(item, ResourceType) for item in value)
    )


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


# The class attributes of the Controller protocol: how to check each, and what it should be.
ATTRIBUTES: Final[Mapping[str, tuple[Callable[[object], bool], str]]] = {
    "name": (_name, "a lowercase-dashed str"),
    "aliases": (_names, "a tuple of lowercase-dashed str"),
    "primary": (lambda v: isinstance(v, ResourceType), "a ResourceType"),
    "reads": (_resources, "a non-empty tuple of ResourceType"),
    "concurrency_flag": (
        lambda v: isinstance(v, str) and bool(_FLAG.fullmatch(v)),
        "a str like concurrent-NAME-syncs",
    ),
    "default_concurrency": (_positive_int, "an int >= 1"),
    "scope": (lambda v: isinstance(v, Scope), "a Scope"),
    "permissions": (
        lambda v: isinstance(v, tuple) and all(isinstance(p, Permission) for p in v),
        "a tuple of Permission",
    ),
    "retry": (lambda v: isinstance(v, RetryPolicy), "a RetryPolicy"),
    "feature_gates": (
        lambda v: (
            isinstance(v, Mapping)
            and all(isinstance(k, str) and isinstance(d, bool) for k, d in v.items())
        ),
        "a mapping of gate names to bool defaults",
    ),
    "flags": (
        lambda v: isinstance(v, tuple) and all(isinstance(f, Flag) for f in v),
        "a tuple of Flag",
    ),
    "enabled_by_default": (lambda v: isinstance(v, bool), "a bool"),
}
METHODS: Final = ("requests_for", "reconcile", "forget")


@dataclass(frozen=True)
class Loaded:
    controllers: dict[str, type[Controller]] = field(default_factory=dict)
    problems: dict[str, str] = field(default_factory=dict)  # entry point name -> one line


def installed() -> tuple[EntryPoint, ...]:
    """The group's entry points of every distribution on ``sys.path``."""
    return tuple(entry_points(group=GROUP))


def enabled_by_default(cls: type[Controller]) -> bool:
    return getattr(cls, "enabled_by_default", False) is True


def problem_of(obj: object) -> str | None:
    """Why ``obj`` is not a controller class, or None if it is one."""
    if not isinstance(obj, type):
        return f"is a {type(obj).__name__}, not a controller class"
    wrong: list[str] = []
    for attribute, (valid, what) in ATTRIBUTES.items():
        if not hasattr(obj, attribute):
            wrong.append(f"has no {attribute}")
        elif not valid(getattr(obj, attribute)):
            wrong.append(f"{attribute} is not {what}")
    reads = getattr(obj, "reads", ())
    if not wrong and getattr(obj, "primary", None) not in reads and EVERY_RESOURCE not in reads:
        wrong.append("reads does not include primary")
    for method in METHODS:
        if not callable(getattr(obj, method, None)):
            wrong.append(f"has no method {method}")
    reconcile = getattr(obj, "reconcile", None)
    if callable(reconcile) and not inspect.iscoroutinefunction(reconcile):
        wrong.append("reconcile is not async")
    try:
        inspect.signature(obj).bind(None)
    except TypeError:
        wrong.append("its constructor does not take one argument (the Context)")
    except ValueError:
        pass  # no signature to inspect: let the constructor speak when called
    if wrong:
        return f"{obj.__module__}.{obj.__qualname__} is not a controller class: " + ", ".join(wrong)
    return None


def load(
    entry_points: Iterable[EntryPoint], *, reserved: Mapping[str, str], flags: Iterable[str]
) -> Loaded:
    """Import and check each entry point. ``reserved`` maps the names and aliases already
    taken to their controllers; ``flags`` are the concurrency flags already taken."""
    by_name: dict[str, list[EntryPoint]] = {}
    for point in entry_points:
        by_name.setdefault(point.name, []).append(point)
    loaded = Loaded()
    candidates: dict[str, type[Controller]] = {}
    for name, points in by_name.items():
        point = points[0]
        if len(points) > 1:
            dists = ", ".join(_distribution(p) for p in points)
            loaded.problems[name] = f"{GROUP} entry point {name!r} is registered twice ({dists})"
            continue
        problem = _problem_before_import(point, reserved)
        cls: Any = None
        if problem is None:
            try:
                cls = point.load()
            except Exception as error:  # whatever the module's import raises
                problem = f"cannot be loaded: {type(error).__name__}: {error}"
        if problem is None:
            problem = problem_of(cls)
        if problem is None and cls.name != name:
            problem = f"names a class whose name is {cls.name!r}"
        if problem is None:
            taken = [alias for alias in cls.aliases if alias in reserved]
            if taken:
                problem = f"alias {taken[0]!r} is kube-controller-manager's {reserved[taken[0]]}"
        if problem is not None:
            loaded.problems[name] = _line(point, problem)
        else:
            candidates[name] = cls
    _drop_clashes(candidates, loaded, by_name, set(flags))
    loaded.controllers.update(candidates)
    return loaded


def _problem_before_import(point: EntryPoint, reserved: Mapping[str, str]) -> str | None:
    if not _NAME.fullmatch(point.name):
        return "has a name that is not lowercase words joined by dashes"
    if point.name in reserved:
        return f"takes the name of kube-controller-manager's {reserved[point.name]}"
    return None


def _drop_clashes(
    candidates: dict[str, type[Controller]],
    loaded: Loaded,
    by_name: Mapping[str, list[EntryPoint]],
    flags: set[str],
) -> None:
    """External controllers that share a name, alias or flag with another: neither is
    trusted to be the one meant."""
    holders: dict[str, set[str]] = {name: {name} for name in by_name}  # broken ones included
    flag_holders: dict[str, set[str]] = {}
    for name, cls in candidates.items():
        for alias in cls.aliases:
            holders.setdefault(alias, set()).add(name)
        flag_holders.setdefault(cls.concurrency_flag, set()).add(name)
    for name in list(candidates):
        cls = candidates[name]
        flag = cls.concurrency_flag
        shared = [(what, sorted(holders[what] - {name})) for what in (name, *cls.aliases)]
        clashes = [(what, others) for what, others in shared if others]
        if clashes:
            what, others = clashes[0]
            problem = f"shares {what!r} with entry point {others[0]!r}"
        elif flag in flags:
            problem = f"concurrency_flag {flag!r} is a built-in controller's"
        elif len(flag_holders[flag]) > 1:
            other = sorted(flag_holders[flag] - {name})[0]
            problem = f"shares concurrency_flag {flag!r} with entry point {other!r}"
        else:
            continue
        del candidates[name]
        loaded.problems[name] = _line(by_name[name][0], problem)


def _distribution(point: EntryPoint) -> str:
    dist = point.dist
    return f"distribution {dist.name} {dist.version}" if dist is not None else "no distribution"


def _line(point: EntryPoint, problem: str) -> str:
    where = f"{GROUP} entry point {point.name!r} = {point.value!r} ({_distribution(point)})"
    text = f"{where} {problem}"
    return " ".join(text.split())

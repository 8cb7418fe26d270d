"""``--controllers`` as kube-controller-manager reads it, and controllers from entry points.

The entry points here are real :class:`importlib.metadata.EntryPoint` objects that import the
classes below (``dist`` is None: "no distribution"); installed distributions are tested in
tests/integration/test_external_controller.py.
"""

from __future__ import annotations

import logging
import re
import subprocess
import sys
from collections.abc import Iterable
from importlib.metadata import EntryPoint
from pathlib import Path
from typing import Any, ClassVar

import pytest

from bus.subjects import ResourceType
from reconcilers import external
from reconcilers.controller import Context, Controller, ControllerBase, Request, Result, Scope
from reconcilers.controllers.deployment import DeploymentController
from reconcilers.controllers.replicaset import ReplicaSetController
from reconcilers.registry import (
    BUILTIN,
    CLOUD_PROVIDER,
    DISABLED_BY_DEFAULT,
    IMPLEMENTED,
    KNOWN,
    Builtin,
    ControllerSelectionError,
    Declared,
    Registry,
    select_controllers,
)

ROOT = Path(__file__).resolve().parents[2]
CONFIGMAPS = ResourceType("", "v1", "configmaps")
HERE = __name__


class Stamp(ControllerBase):
    name: ClassVar[str] = "stamp-controller"
    aliases: ClassVar[tuple[str, ...]] = ("stamp",)
    primary: ClassVar[ResourceType] = CONFIGMAPS
    reads: ClassVar[tuple[ResourceType, ...]] = (CONFIGMAPS,)
    concurrency_flag: ClassVar[str] = "concurrent-stamp-syncs"
    default_concurrency: ClassVar[int] = 1
    scope: ClassVar[Scope] = Scope.PARTITIONED

    def __init__(self, context: Context) -> None:
        self._ctx = context

    def requests_for(
        self, resource: ResourceType, obj: dict[str, Any] | None, old: dict[str, Any] | None
    ) -> Iterable[Request]:
        return [Request.of(obj)] if obj is not None else []

    async def reconcile(self, request: Request) -> Result:
        return Result()


class OnByDefault(Stamp):
    name: ClassVar[str] = "on-by-default-controller"
    aliases: ClassVar[tuple[str, ...]] = ()
    concurrency_flag: ClassVar[str] = "concurrent-on-by-default-syncs"
    enabled_by_default: ClassVar[bool] = True


class NoReconcile(ControllerBase):
    name: ClassVar[str] = "no-reconcile-controller"
    aliases: ClassVar[tuple[str, ...]] = ()
    primary: ClassVar[ResourceType] = CONFIGMAPS
    reads: ClassVar[tuple[ResourceType, ...]] = (CONFIGMAPS,)
    concurrency_flag: ClassVar[str] = "concurrent-no-reconcile-syncs"
    default_concurrency: ClassVar[int] = 1
    scope: ClassVar[Scope] = Scope.PARTITIONED

    def __init__(self, context: Context) -> None: ...

    def requests_for(
        self, resource: ResourceType, obj: dict[str, Any] | None, old: dict[str, Any] | None
    ) -> Iterable[Request]:
        return []


class WrongReads(Stamp):
    name: ClassVar[str] = "wrong-reads-controller"
    aliases: ClassVar[tuple[str, ...]] = ()
    concurrency_flag: ClassVar[str] = "concurrent-wrong-reads-syncs"
    reads = ("v1/configmaps",)  # type: ignore[assignment]


class SyncReconcile(Stamp):
    name: ClassVar[str] = "sync-reconcile-controller"
    aliases: ClassVar[tuple[str, ...]] = ()
    concurrency_flag: ClassVar[str] = "concurrent-sync-reconcile-syncs"

    def reconcile(self, request: Request) -> Result:  # type: ignore[override]
        return Result()


class NoContext(Stamp):
    name: ClassVar[str] = "no-context-controller"
    aliases: ClassVar[tuple[str, ...]] = ()
    concurrency_flag: ClassVar[str] = "concurrent-no-context-syncs"

    def __init__(self) -> None:  # type: ignore[override]
        pass


class AliasOfKcm(Stamp):
    name: ClassVar[str] = "alias-of-kcm-controller"
    aliases: ClassVar[tuple[str, ...]] = ("job",)
    concurrency_flag: ClassVar[str] = "concurrent-alias-of-kcm-syncs"


class BuiltinFlag(Stamp):
    name: ClassVar[str] = "builtin-flag-controller"
    aliases: ClassVar[tuple[str, ...]] = ()
    concurrency_flag: ClassVar[str] = "concurrent-deployment-syncs"


class SharesStampAlias(Stamp):
    name: ClassVar[str] = "shares-alias-controller"
    aliases: ClassVar[tuple[str, ...]] = ("stamp",)
    concurrency_flag: ClassVar[str] = "concurrent-shares-alias-syncs"


def not_a_class() -> None:
    """An entry point may name any object; only a controller class may join."""


def point(name: str, target: str) -> EntryPoint:
    return EntryPoint(name, f"{HERE}:{target}", external.GROUP)


def registry(*points: EntryPoint, builtin: Iterable[type[Controller]] = ()) -> Registry:
    return Registry.build(
        builtin=(DeploymentController, ReplicaSetController, *builtin), entry_points=points
    )


def names(controllers: Iterable[type[Controller]]) -> list[str]:
    return [controller.name for controller in controllers]


# --- kube-controller-manager's names ---------------------------------------------------------


def test_names_follow_kcm_registration_rules() -> None:
    """kcm panics at start-up on a duplicate alias or an alias that is also a name."""
    aliases = [alias for c in KNOWN.values() for alias in c.aliases]
    assert len(aliases) == len(set(aliases))
    assert not set(aliases) & set(KNOWN)
    assert len(KNOWN) == 52
    assert {
        "bootstrap-signer-controller",
        "selinux-warning-controller",
        "token-cleaner-controller",
    } == DISABLED_BY_DEFAULT
    assert {
        "cloud-node-lifecycle-controller",
        "node-route-controller",
        "service-lb-controller",
    } == CLOUD_PROVIDER


def test_builtin_controllers_carry_kcm_names_and_aliases() -> None:
    for name, controller in IMPLEMENTED.items():
        assert name in KNOWN, name
        assert controller.aliases == KNOWN[name].aliases
        assert external.problem_of(controller) is None, name


def test_each_builtin_is_declared_as_its_class_declares_itself() -> None:
    """What --help and parsing use before a controller is imported is what the controller
    says once it is: its names, --concurrent-*-syncs, flags (the same objects) and gates."""
    assert [builtin.declared.name for builtin in BUILTIN] == list(IMPLEMENTED)
    for builtin in BUILTIN:
        controller = builtin.load()
        assert Declared.of(controller) == builtin.declared, controller.name
        assert IMPLEMENTED[controller.name] is controller


def test_a_registry_imports_only_the_controllers_looked_up() -> None:
    """A built-in is listed, counted and tested for by name without importing it."""
    loads: list[str] = []

    def counted(controller: type[Controller]) -> Builtin:
        def load() -> type[Controller]:
            loads.append(controller.name)
            return controller

        return Builtin(Declared.of(controller), load)

    lazy = Registry.build(builtin=[counted(DeploymentController), counted(ReplicaSetController)])
    assert "replicaset-controller" in lazy.controllers
    assert list(lazy.controllers) == ["deployment-controller", "replicaset-controller"]
    assert len(lazy.controllers) == 2
    assert lazy.declared["replicaset-controller"].concurrency_flag == (
        "concurrent-replicaset-syncs"
    )
    assert loads == []
    assert select_controllers(["deployment"], lazy) == (DeploymentController,)
    assert select_controllers(["deployment"], lazy) == (DeploymentController,)
    assert loads == ["deployment-controller"]


def test_runtime_check_covers_the_whole_protocol() -> None:
    """The entry-point check and the Controller protocol list the same members."""
    declared = set(Controller.__annotations__)
    assert set(external.ATTRIBUTES) == declared
    methods = {name for name in vars(Controller) if name in ("requests_for", "reconcile", "forget")}
    assert set(external.METHODS) == methods


# --- --controllers ---------------------------------------------------------------------------


def test_star_names_aliases_and_exclusions() -> None:
    both = registry()
    assert names(select_controllers(["*"], both)) == [
        "deployment-controller",
        "replicaset-controller",
    ]
    assert names(select_controllers(["*", "-deployment"], both)) == ["replicaset-controller"]
    assert names(select_controllers(["replicaset-controller"], both)) == ["replicaset-controller"]
    assert names(select_controllers([" deployment ", ""], both)) == ["deployment-controller"]


def test_the_first_item_naming_a_controller_decides() -> None:
    """kcm's IsControllerEnabled: scan in order, the first NAME or -NAME wins, then '*'."""
    both = registry()
    assert names(select_controllers(["deployment", "-deployment"], both)) == [
        "deployment-controller"
    ]
    assert names(select_controllers(["-deployment", "deployment", "*"], both)) == [
        "replicaset-controller"
    ]
    assert names(select_controllers(["-deployment-controller", "*", "deployment"], both)) == [
        "replicaset-controller"
    ]


def test_star_leaves_disabled_by_default_controllers_off() -> None:
    class BootstrapSigner(Stamp):
        name: ClassVar[str] = "bootstrap-signer-controller"
        aliases: ClassVar[tuple[str, ...]] = ("bootstrapsigner",)
        concurrency_flag: ClassVar[str] = "concurrent-bootstrap-signer-syncs"

    with_signer = registry(builtin=[BootstrapSigner])
    assert "bootstrap-signer-controller" not in names(select_controllers(["*"], with_signer))
    assert names(select_controllers(["*", "bootstrapsigner"], with_signer))[-1] == (
        "bootstrap-signer-controller"
    )


@pytest.mark.parametrize(
    ("items", "message"),
    [
        (["deploymnt"], '--controllers: "deploymnt" is not in the list of known controllers'),
        (["-deploymnt"], '--controllers: "deploymnt" is not in the list of known controllers'),
        (["--deployment"], '--controllers: "-deployment" is not in the list of known controllers'),
        (["-*"], '--controllers: "*" is not in the list of known controllers'),
        (
            ["*", "a", "deployment", "b", "-a"],
            '--controllers: ["a" is not in the list of known controllers, '
            '"b" is not in the list of known controllers]',
        ),
    ],
)
def test_unknown_names_in_kcm_words(items: list[str], message: str) -> None:
    with pytest.raises(ControllerSelectionError) as raised:
        select_controllers(items, registry())
    assert str(raised.value) == message


def test_a_known_controller_kubus_lacks_is_an_error_only_when_chosen() -> None:
    both = registry()
    with pytest.raises(ControllerSelectionError) as raised:
        select_controllers(["*", "job", "cronjob-controller"], both)
    assert str(raised.value) == (
        "--controllers: cronjob-controller, job-controller are not implemented by kubus yet "
        "(implemented: deployment-controller, replicaset-controller)"
    )
    with pytest.raises(ControllerSelectionError, match="job-controller is not implemented"):
        select_controllers(["job", "-job"], both)
    assert len(select_controllers(["*", "-job", "job"], both)) == 2
    with pytest.raises(ControllerSelectionError, match="selects no controller"):
        select_controllers(["-deployment", "-replicaset"], both)


def test_cloud_provider_controllers_are_accepted_and_skipped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """kcm accepts service-lb-controller & co. and skips them: it has no cloud provider."""
    with caplog.at_level(logging.INFO, logger="reconcilers.registry"):
        chosen = select_controllers(["*", "service", "route"], registry())
    assert len(chosen) == 2
    assert "skipping node-route-controller" in caplog.text
    assert "skipping service-lb-controller" in caplog.text
    with pytest.raises(ControllerSelectionError, match="selects no controller"):
        select_controllers(["service-lb-controller"], registry())


# --- controllers from entry points -----------------------------------------------------------


def test_external_controllers_are_chosen_like_builtins_and_star_needs_their_consent() -> None:
    loaded = registry(
        point("stamp-controller", "Stamp"), point("on-by-default-controller", "OnByDefault")
    )
    assert loaded.problems == ()
    assert names(select_controllers(["*"], loaded)) == [
        "deployment-controller",
        "replicaset-controller",
        "on-by-default-controller",
    ]
    assert names(select_controllers(["stamp"], loaded)) == ["stamp-controller"]
    assert names(
        select_controllers(["*", "stamp-controller", "-on-by-default-controller"], loaded)
    ) == [
        "deployment-controller",
        "replicaset-controller",
        "stamp-controller",
    ]


ENTRY = f"kubus.controllers entry point {{name!r}} = '{HERE}:{{target}}' (no distribution)"


@pytest.mark.parametrize(
    ("name", "target", "problem"),
    [
        (
            "missing-controller",
            "Missing",
            f"cannot be loaded: AttributeError: module '{HERE}' has no attribute 'Missing'",
        ),
        ("not-a-class-controller", "not_a_class", "is a function, not a controller class"),
        (
            "no-reconcile-controller",
            "NoReconcile",
            f"{HERE}.NoReconcile is not a controller class: has no method reconcile",
        ),
        (
            "wrong-reads-controller",
            "WrongReads",
            f"{HERE}.WrongReads is not a controller class: "
            "reads is not a non-empty tuple of ResourceType",
        ),
        (
            "sync-reconcile-controller",
            "SyncReconcile",
            f"{HERE}.SyncReconcile is not a controller class: reconcile is not async",
        ),
        (
            "no-context-controller",
            "NoContext",
            f"{HERE}.NoContext is not a controller class: "
            "its constructor does not take one argument (the Context)",
        ),
        ("other-name-controller", "Stamp", "names a class whose name is 'stamp-controller'"),
        (
            "deployment",
            "Stamp",
            "takes the name of kube-controller-manager's deployment-controller",
        ),
        ("job-controller", "Stamp", "takes the name of kube-controller-manager's job-controller"),
        ("Stamp", "Stamp", "has a name that is not lowercase words joined by dashes"),
        (
            "alias-of-kcm-controller",
            "AliasOfKcm",
            "alias 'job' is kube-controller-manager's job-controller",
        ),
        (
            "builtin-flag-controller",
            "BuiltinFlag",
            "concurrency_flag 'concurrent-deployment-syncs' is a built-in controller's",
        ),
    ],
)
def test_a_bad_entry_point_is_one_line_and_the_rest_carries_on(
    name: str, target: str, problem: str, caplog: pytest.LogCaptureFixture
) -> None:
    loaded = registry(point(name, target), point("stamp-controller", "Stamp"))
    line = f"{ENTRY.format(name=name, target=target)} {problem}"
    assert loaded.problems == (line,)
    assert "\n" not in line
    with caplog.at_level(logging.ERROR, logger="reconcilers.registry"):
        assert names(select_controllers(["*", "stamp"], loaded)) == [
            "deployment-controller",
            "replicaset-controller",
            "stamp-controller",
        ]
    assert [record.getMessage() for record in caplog.records] == [line]
    if name in loaded.broken:  # asked for by its name, it is the error
        with pytest.raises(ControllerSelectionError) as raised:
            select_controllers([name], loaded)
        assert str(raised.value) == f"--controllers: {line}"
    else:  # a name kcm already has keeps kcm's meaning
        kcm = {alias: c.name for c in KNOWN.values() for alias in (c.name, *c.aliases)}
        assert loaded.names[name] == kcm[name]


def test_entry_points_that_share_a_name_or_alias_are_both_dropped() -> None:
    loaded = registry(
        point("stamp-controller", "Stamp"),
        point("shares-alias-controller", "SharesStampAlias"),
        point("on-by-default-controller", "OnByDefault"),
        point("on-by-default-controller", "OnByDefault"),
    )
    assert set(loaded.controllers) == {"deployment-controller", "replicaset-controller"}
    assert sorted(loaded.problems) == [
        "kubus.controllers entry point 'on-by-default-controller' is registered twice "
        "(no distribution, no distribution)",
        f"{ENTRY.format(name='shares-alias-controller', target='SharesStampAlias')} "
        "shares 'stamp' with entry point 'stamp-controller'",
        f"{ENTRY.format(name='stamp-controller', target='Stamp')} "
        "shares 'stamp' with entry point 'shares-alias-controller'",
    ]
    with pytest.raises(ControllerSelectionError, match="shares 'stamp'"):
        select_controllers(["stamp-controller"], loaded)
    with pytest.raises(ControllerSelectionError, match='"stamp" is not in the list'):
        select_controllers(["stamp"], loaded)


# --- static typing of the registry -----------------------------------------------------------

SNIPPET = """
from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar

from bus.subjects import ResourceType
from reconcilers.controller import Context, Controller, ControllerBase, Request, Result, Scope
from reconcilers.registry import controller_class

CONFIGMAPS = ResourceType("", "v1", "configmaps")


class Good(ControllerBase):
    name: ClassVar[str] = "good-controller"
    aliases: ClassVar[tuple[str, ...]] = ()
    primary: ClassVar[ResourceType] = CONFIGMAPS
    reads: ClassVar[tuple[ResourceType, ...]] = (CONFIGMAPS,)
    concurrency_flag: ClassVar[str] = "concurrent-good-syncs"
    default_concurrency: ClassVar[int] = 1
    scope: ClassVar[Scope] = Scope.PARTITIONED

    def __init__(self, context: Context) -> None:
        self.context = context

    def requests_for(
        self, resource: ResourceType, obj: dict[str, Any] | None, old: dict[str, Any] | None
    ) -> Iterable[Request]:
        return ()

    async def reconcile(self, request: Request) -> Result:
        return Result()


class NoReconcile(ControllerBase):
    name: ClassVar[str] = "no-reconcile-controller"
    aliases: ClassVar[tuple[str, ...]] = ()
    primary: ClassVar[ResourceType] = CONFIGMAPS
    reads: ClassVar[tuple[ResourceType, ...]] = (CONFIGMAPS,)
    concurrency_flag: ClassVar[str] = "concurrent-no-reconcile-syncs"
    default_concurrency: ClassVar[int] = 1
    scope: ClassVar[Scope] = Scope.PARTITIONED

    def __init__(self, context: Context) -> None:
        self.context = context

    def requests_for(
        self, resource: ResourceType, obj: dict[str, Any] | None, old: dict[str, Any] | None
    ) -> Iterable[Request]:
        return ()


class ReadsStrings(ControllerBase):
    name: ClassVar[str] = "reads-strings-controller"
    aliases: ClassVar[tuple[str, ...]] = ()
    primary: ClassVar[ResourceType] = CONFIGMAPS
    reads: ClassVar[tuple[str, ...]] = ("v1/configmaps",)
    concurrency_flag: ClassVar[str] = "concurrent-reads-strings-syncs"
    default_concurrency: ClassVar[int] = 1
    scope: ClassVar[Scope] = Scope.PARTITIONED

    def __init__(self, context: Context) -> None:
        self.context = context

    def requests_for(
        self, resource: ResourceType, obj: dict[str, Any] | None, old: dict[str, Any] | None
    ) -> Iterable[Request]:
        return ()

    async def reconcile(self, request: Request) -> Result:
        return Result()


class NoContext(Good):
    def __init__(self) -> None:
        pass


REGISTRY: dict[str, type[Controller]] = {"good": Good}
REGISTRY["no-reconcile"] = NoReconcile  # error: NoReconcile
REGISTRY["reads-strings"] = ReadsStrings  # error: ReadsStrings
REGISTRY["checked-good"] = controller_class(Good)
REGISTRY["checked-no-context"] = controller_class(NoContext)  # error: NoContext


@controller_class
class DecoratedNoContext(Good):  # error: DecoratedNoContext
    def __init__(self, name: str) -> None:
        self.name_ = name
"""


def test_mypy_rejects_a_registry_entry_that_is_not_a_controller(tmp_path: Path) -> None:
    """``dict[str, type[Controller]]`` catches a missing method or a mistyped class attribute;
    ``controller_class`` also catches a constructor that does not take the Context."""
    # mypy's cache (the repository's, as the code-quality test uses: a cold one takes a
    # minute) replays a file's errors under the path it first had, so match on the file name.
    snippet = tmp_path / "registry_typing_snippet.py"
    snippet.write_text(SNIPPET)
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-error-summary", str(snippet)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    errors = {
        int(found[1]): line
        for line in result.stdout.splitlines()
        if (found := re.search(rf"{snippet.name}:(\d+): error:", line))
    }
    expected = {
        number: text.rpartition("# error: ")[2]
        for number, text in enumerate(SNIPPET.splitlines(), 1)
        if "# error:" in text
    }
    assert set(errors) == set(expected), result.stdout + result.stderr
    for number, which in expected.items():  # each error is about the class on its line
        assert f"type[{which}]" in errors[number], errors[number]

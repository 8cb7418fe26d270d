"""A Greeting is written into ``copies`` ConfigMaps; deleting it leaves a farewell behind."""

from __future__ import annotations

import contextlib
import os
from typing import Annotated, ClassVar

import msgspec

from reconcilers.kinds import CONFIGMAPS
from reconcilers.operator import (
    Condition,
    CustomResource,
    OperatorContext,
    PrinterColumn,
    operator,
    set_condition,
)


class GreetingSpec(msgspec.Struct, kw_only=True, rename="camel"):
    message: Annotated[str, msgspec.Meta(min_length=1)]
    copies: Annotated[int, msgspec.Meta(ge=1, le=5)] = 1


class GreetingStatus(msgspec.Struct, kw_only=True, rename="camel", omit_defaults=True):
    copies: int = 0
    observed_generation: int | None = None
    conditions: list[Condition] = []


class Greeting(CustomResource, kw_only=True):
    group: ClassVar[str] = "operators.kubus.test"
    version: ClassVar[str] = "v1"
    kind: ClassVar[str] = "Greeting"
    printer_columns: ClassVar[tuple[PrinterColumn, ...]] = (
        PrinterColumn("Copies", ".status.copies", "integer"),
    )
    spec: GreetingSpec
    status: GreetingStatus = msgspec.field(default_factory=GreetingStatus)


async def reconcile(greeting: Greeting, ctx: OperatorContext[Greeting]) -> None:
    name = greeting.metadata.name
    ctx.span.set_attribute("greeting.copies", greeting.spec.copies)
    wanted = {f"{name}-{index}" for index in range(greeting.spec.copies)}
    for copy in sorted(wanted):
        current = ctx.get(CONFIGMAPS, copy)
        if current is None or current.get("data") != {"message": greeting.spec.message}:
            await ctx.apply(
                CONFIGMAPS,
                {
                    "kind": "ConfigMap",
                    "metadata": {"name": copy},
                    "data": {"message": greeting.spec.message},
                },
            )
    for owned in ctx.owned(CONFIGMAPS):
        if owned["metadata"]["name"] not in wanted:
            await ctx.delete(CONFIGMAPS, owned["metadata"]["name"])
    ctx.span.add_event("copies_written")
    status = GreetingStatus(
        copies=len(wanted),
        observed_generation=greeting.metadata.generation,
        conditions=[msgspec.structs.replace(c) for c in greeting.status.conditions],
    )
    set_condition(
        status.conditions,
        "Ready",
        "True",
        "CopiesWritten",
        f"{len(wanted)} copies of the greeting",
        observed_generation=greeting.metadata.generation,
    )
    if status != greeting.status:
        await ctx.update_status(status)
        ctx.event("Normal", "Written", f"{len(wanted)} copies")


async def farewell(greeting: Greeting, ctx: OperatorContext[Greeting]) -> None:
    """Before the Greeting goes: a ConfigMap nobody owns, so it outlives it."""
    api = await ctx.api(CONFIGMAPS)
    body = {
        "metadata": {"name": f"{greeting.metadata.name}-farewell"},
        "data": {"said": greeting.spec.message},
    }
    from kubus.kube import AlreadyExistsError

    with contextlib.suppress(AlreadyExistsError):  # written by an earlier try of this cleanup
        await ctx.kube.create(api, ctx.namespace, body)


GreetingOperator = operator(
    Greeting,
    reconcile,
    name="greeting-operator",
    owns=(CONFIGMAPS,),
    finalizer="operators.kubus.test/farewell",
    cleanup=farewell,
    # A test runs it against an older CRD, which installing would replace.
    install_crd="KUBUS_TEST_GREETING_NO_INSTALL" not in os.environ,
)

"""``kubus crd generate module:Class ...``: the CRDs of typed custom resources, as YAML or JSON."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from typing import Any

from kubus.cliutil import ArgumentParser, fail

__all__ = ["add_crd_commands", "load_resource"]

PROG = "kubus crd generate"


def add_crd_commands(subparsers: argparse._SubParsersAction[ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "crd",
        help="CustomResourceDefinitions of typed custom resources",
        description="CustomResourceDefinitions of custom resources declared in Python "
        "(reconcilers.operator.CustomResource).",
    )
    commands = parser.add_subparsers(dest="crd_command", required=True, metavar="COMMAND")
    generate = commands.add_parser(
        "generate",
        help="print the CRD of each class",
        description="Print the CustomResourceDefinition of each module:Class, the schema made "
        "from its spec and status structs (kubectl apply -f - takes it).",
    )
    generate.add_argument("classes", nargs="+", metavar="module:Class")
    generate.add_argument(
        "--output", "-o", choices=("yaml", "json"), default="yaml", help="(default yaml)"
    )
    generate.set_defaults(handler=run_generate)


def run_generate(args: argparse.Namespace) -> int:
    from reconcilers.operator.crd import custom_resource_definition
    from reconcilers.operator.resource import InvalidDeclaration

    manifests = []
    for spec in args.classes:
        try:
            manifests.append(custom_resource_definition(load_resource(spec)))
        except (InvalidDeclaration, ValueError) as error:
            fail(PROG, str(error))
    if args.output == "json":
        document: Any = (
            manifests[0]
            if len(manifests) == 1
            else {
                "apiVersion": "v1",
                "kind": "List",
                "items": manifests,
            }
        )
        json.dump(document, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        import yaml

        yaml.safe_dump_all(manifests, sys.stdout, sort_keys=False)
    return 0


def load_resource(spec: str) -> Any:
    """The CustomResource class ``module:Class`` names; ValueError in one line otherwise."""
    from reconcilers.operator.resource import CustomResource

    module_name, colon, attribute = spec.partition(":")
    if not colon or not module_name or not attribute:
        raise ValueError(f"{spec!r} is not module:Class (e.g. my_operator.types:MySQLCluster)")
    try:
        module = importlib.import_module(module_name)
    except Exception as error:  # whatever the module raises, said in one line
        message = " ".join(str(error).split())
        raise ValueError(
            f"cannot import {module_name!r}: {type(error).__name__}: {message}"
        ) from None
    target: Any = module
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise ValueError(f"module {module_name!r} has no {attribute!r}") from None
    if not (isinstance(target, type) and issubclass(target, CustomResource)):
        raise ValueError(
            f"{spec!r} is not a CustomResource class (a subclass of "
            "reconcilers.operator.CustomResource)"
        )
    return target

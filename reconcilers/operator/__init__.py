"""Writing an operator on kubus: typed custom resources, their CRDs, and a reconcile function
run as a controller of the runtime."""

from reconcilers.operator.conditions import Condition, find_condition, set_condition
from reconcilers.operator.context import OperatorContext
from reconcilers.operator.controller import Watch, operator
from reconcilers.operator.crd import crd_name, custom_resource_definition
from reconcilers.operator.resource import (
    CustomResource,
    InvalidDeclaration,
    InvalidResource,
    ObjectMeta,
    OwnerReference,
    PrinterColumn,
    Scale,
)
from reconcilers.operator.schema import SchemaError, structural_schema

__all__ = [
    "Condition",
    "CustomResource",
    "InvalidDeclaration",
    "InvalidResource",
    "ObjectMeta",
    "OperatorContext",
    "OwnerReference",
    "PrinterColumn",
    "Scale",
    "SchemaError",
    "Watch",
    "crd_name",
    "custom_resource_definition",
    "find_condition",
    "operator",
    "set_condition",
    "structural_schema",
]

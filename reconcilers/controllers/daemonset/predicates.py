"""Which nodes should run a daemon pod (upstream's NodeShouldRunDaemonPod and daemon/util).

A DaemonSet's pod for a node is its template with the node's name as ``spec.nodeName`` and the
tolerations the controller always adds (:func:`add_daemon_tolerations`). The node should run it
when the template's ``nodeName`` (if any) is the node's, the pod's ``nodeSelector`` and
required node affinity match the node's labels and name, and every ``NoSchedule`` and
``NoExecute`` taint of the node is tolerated. A pod already there may continue to run on a node
that fails only on taints, as long as each ``NoExecute`` taint is tolerated.

The pods the controller creates carry no ``nodeName``: a required node-affinity term on
``metadata.name`` (:func:`replace_node_name_affinity`) places them, and the scheduler binds
them. :func:`target_node_name` reads that term back for a pod not yet bound.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

from reconcilers.kinds import Object, clone

__all__ = [
    "DAEMON_TOLERATIONS",
    "NETWORK_UNAVAILABLE_TOLERATION",
    "Placement",
    "add_daemon_tolerations",
    "daemon_pod",
    "matches_required_node_affinity",
    "node_should_run_daemon_pod",
    "replace_node_name_affinity",
    "target_node_name",
    "tolerates",
    "untolerated_taint",
]

NAME_FIELD: Final = "metadata.name"


def _exists(key: str, effect: str) -> Object:
    return {"key": key, "operator": "Exists", "effect": effect}


# AddOrUpdateDaemonPodTolerations, in its order: the node lifecycle controller's NoExecute
# taints never evict a daemon pod, and the node-condition taints never keep one off a node.
DAEMON_TOLERATIONS: Final[tuple[Object, ...]] = (
    _exists("node.kubernetes.io/not-ready", "NoExecute"),
    _exists("node.kubernetes.io/unreachable", "NoExecute"),
    _exists("node.kubernetes.io/disk-pressure", "NoSchedule"),
    _exists("node.kubernetes.io/memory-pressure", "NoSchedule"),
    _exists("node.kubernetes.io/pid-pressure", "NoSchedule"),
    _exists("node.kubernetes.io/unschedulable", "NoSchedule"),
)
# Added only to pods on the host's network, which need no pod network to run.
NETWORK_UNAVAILABLE_TOLERATION: Final = _exists(
    "node.kubernetes.io/network-unavailable", "NoSchedule"
)

_IDENTITY: Final = ("key", "operator", "value", "effect")


def _same_toleration(first: Mapping[str, Any], second: Mapping[str, Any]) -> bool:
    """Toleration.MatchToleration: key, operator, value and effect (unset reads as empty)."""
    return all((first.get(f) or "") == (second.get(f) or "") for f in _IDENTITY)


def _add_or_update_toleration(spec: Object, toleration: Object) -> None:
    current: list[Object] = list(spec.get("tolerations") or [])
    replaced = False
    result: list[Object] = []
    for existing in current:
        if _same_toleration(toleration, existing):
            if existing.get("tolerationSeconds") is None:
                return  # already there, as is
            result.append(dict(toleration))
            replaced = True
            continue
        result.append(existing)
    if not replaced:
        result.append(dict(toleration))
    spec["tolerations"] = result


def add_daemon_tolerations(spec: Object) -> Object:
    """Adds (in place, and returns) the tolerations every daemon pod carries."""
    for toleration in DAEMON_TOLERATIONS:
        _add_or_update_toleration(spec, toleration)
    if spec.get("hostNetwork"):
        _add_or_update_toleration(spec, NETWORK_UNAVAILABLE_TOLERATION)
    return spec


def replace_node_name_affinity(affinity: Object | None, node_name: str) -> Object:
    """The affinity with its required node-affinity terms replaced by one term selecting the
    node by name (ReplaceDaemonSetPodNodeNameNodeAffinity); the rest is kept."""
    term = {"matchFields": [{"key": NAME_FIELD, "operator": "In", "values": [node_name]}]}
    result = dict(affinity) if affinity else {}
    node_affinity = dict(result.get("nodeAffinity") or {})
    required = dict(node_affinity.get("requiredDuringSchedulingIgnoredDuringExecution") or {})
    required["nodeSelectorTerms"] = [term]
    node_affinity["requiredDuringSchedulingIgnoredDuringExecution"] = required
    result["nodeAffinity"] = node_affinity
    return result


def target_node_name(pod: Object) -> str | None:
    """The node a daemon pod is for: its ``nodeName``, else the one its required node
    affinity names in a ``metadata.name In [node]`` field term; None if neither says."""
    spec = pod.get("spec") or {}
    if spec.get("nodeName"):
        return str(spec["nodeName"])
    required = ((spec.get("affinity") or {}).get("nodeAffinity") or {}).get(
        "requiredDuringSchedulingIgnoredDuringExecution"
    ) or {}
    for term in required.get("nodeSelectorTerms") or ():
        for expression in (term or {}).get("matchFields") or ():
            if expression.get("key") == NAME_FIELD and expression.get("operator") == "In":
                values = expression.get("values") or []
                return str(values[0]) if len(values) == 1 else None
    return None


# --- taints and tolerations -----------------------------------------------------------------


def _decimal_integer(text: str) -> int | None:
    """The value if ``text`` is a canonical decimal int64 (no sign but '-', no leading 0)."""
    digits = text[1:] if text.startswith("-") else text
    if not digits or not digits.isascii() or not digits.isdigit():
        return None
    if digits[0] == "0" and (len(digits) > 1 or text.startswith("-")):
        return None
    value = int(text)
    return value if -(2**63) <= value < 2**63 else None


def tolerates(
    toleration: Mapping[str, Any], taint: Mapping[str, Any], *, comparison_operators: bool = False
) -> bool:
    """Toleration.ToleratesTaint; ``Lt``/``Gt`` compare integers when the
    TaintTolerationComparisonOperators gate is on, and match nothing when it is off."""
    effect = toleration.get("effect") or ""
    if effect and effect != (taint.get("effect") or ""):
        return False
    key = toleration.get("key") or ""
    if key and key != (taint.get("key") or ""):
        return False
    operator = toleration.get("operator") or "Equal"
    if operator == "Equal":
        return (toleration.get("value") or "") == (taint.get("value") or "")
    if operator == "Exists":
        return True
    if operator in ("Lt", "Gt") and comparison_operators:
        wanted = _decimal_integer(toleration.get("value") or "")
        actual = _decimal_integer(taint.get("value") or "")
        if wanted is None or actual is None:
            return False
        return actual < wanted if operator == "Lt" else actual > wanted
    return False


def untolerated_taint(
    taints: Iterable[Mapping[str, Any]],
    tolerations: Sequence[Mapping[str, Any]],
    effects: Iterable[str],
    *,
    comparison_operators: bool = False,
) -> Mapping[str, Any] | None:
    """The first taint with one of ``effects`` that no toleration tolerates."""
    wanted = set(effects)
    for taint in taints:
        if taint.get("effect") not in wanted:
            continue
        if not any(
            tolerates(t, taint, comparison_operators=comparison_operators) for t in tolerations
        ):
            return taint
    return None


# --- node selectors and required node affinity -----------------------------------------------


class _ParseError(ValueError):
    pass


def _label_requirement(expression: Mapping[str, Any]) -> tuple[str, str, list[str]]:
    key = expression.get("key") or ""
    operator = expression.get("operator") or ""
    values = [str(v) for v in expression.get("values") or []]
    if not key:
        raise _ParseError("key: Required value")
    if operator in ("In", "NotIn"):
        if not values:
            raise _ParseError("values: Required value: for 'in', 'notin' operators")
    elif operator in ("Exists", "DoesNotExist"):
        if values:
            raise _ParseError("values: may not be specified for exists and does not exist")
    elif operator in ("Gt", "Lt"):
        if len(values) != 1 or _go_int(values[0]) is None:
            raise _ParseError("values: for 'Gt', 'Lt' operators, exactly one integer value")
    else:
        raise _ParseError(f"operator: Unsupported value: {operator!r}")
    return key, operator, values


def _go_int(text: str) -> int | None:
    """strconv.ParseInt(text, 10, 64)."""
    body = text[1:] if text[:1] in ("+", "-") else text
    if not body or not body.isascii() or not body.isdigit():
        return None
    value = int(text)
    return value if -(2**63) <= value < 2**63 else None


def _label_matches(labels: Mapping[str, str], key: str, operator: str, values: list[str]) -> bool:
    present = key in labels
    if operator == "In":
        return present and labels[key] in values
    if operator == "NotIn":
        return not present or labels[key] not in values
    if operator == "Exists":
        return present
    if operator == "DoesNotExist":
        return not present
    if not present:
        return False
    actual, bound = _go_int(labels[key]), _go_int(values[0])
    if actual is None or bound is None:
        return False
    return actual > bound if operator == "Gt" else actual < bound


def _term_matches(term: Mapping[str, Any], labels: Mapping[str, str], name: str) -> bool:
    """One node selector term: its label and field requirements ANDed (a parse error in
    either makes the term match nothing, as upstream's lazy-error selector)."""
    expressions = term.get("matchExpressions") or []
    fields = term.get("matchFields") or []
    parsed = [_label_requirement(e) for e in expressions]
    checks: list[tuple[str, str]] = []
    for expression in fields:
        operator = expression.get("operator")
        values = expression.get("values") or []
        if operator not in ("In", "NotIn"):
            raise _ParseError(f"operator: Unsupported value: {operator!r}")
        if len(values) != 1:
            raise _ParseError("values: Invalid value: must have one element")
        checks.append((str(expression.get("key") or ""), str(operator)))
    if not all(_label_matches(labels, *requirement) for requirement in parsed):
        return False
    if not name:
        return True
    for (key, operator), expression in zip(checks, fields, strict=True):
        field_value = name if key == NAME_FIELD else ""
        equal = field_value == str(expression["values"][0])
        if equal != (operator == "In"):
            return False
    return True


def matches_required_node_affinity(pod_spec: Mapping[str, Any], node: Object) -> bool:
    """The pod's ``nodeSelector`` and required node affinity (nodeaffinity's
    GetRequiredNodeAffinity(pod).Match(node)): terms ORed, an empty term matching nothing."""
    meta = node.get("metadata") or {}
    labels: Mapping[str, str] = meta.get("labels") or {}
    name = meta.get("name") or ""
    for key, value in (pod_spec.get("nodeSelector") or {}).items():
        if labels.get(key) != value:
            return False
    required = ((pod_spec.get("affinity") or {}).get("nodeAffinity") or {}).get(
        "requiredDuringSchedulingIgnoredDuringExecution"
    )
    if required is None:
        return True
    for entry in required.get("nodeSelectorTerms") or ():
        term = entry or {}
        if not term.get("matchExpressions") and not term.get("matchFields"):
            continue
        try:
            if _term_matches(term, labels, name):
                return True
        except _ParseError:
            continue
    return False


# --- the decision ----------------------------------------------------------------------------


def daemon_pod(ds: Object, node_name: str) -> Object:
    """NewPod: the pod the DaemonSet would run on the node, as the predicates see it."""
    template = (ds.get("spec") or {}).get("template") or {}
    spec = clone(template.get("spec") or {})
    spec["nodeName"] = node_name
    add_daemon_tolerations(spec)
    metadata = clone(template.get("metadata") or {})
    metadata["namespace"] = (ds.get("metadata") or {}).get("namespace")
    return {"metadata": metadata, "spec": spec}


class Placement:
    """NodeShouldRunDaemonPod for one DaemonSet, its pod built once for every node."""

    def __init__(self, ds: Object, *, comparison_operators: bool = False) -> None:
        spec = (((ds.get("spec") or {}).get("template") or {}).get("spec")) or {}
        self._node_name = spec.get("nodeName") or ""
        self._spec = daemon_pod(ds, "")["spec"]
        self._tolerations: list[Object] = self._spec.get("tolerations") or []
        self._comparison = comparison_operators

    def decide(self, node: Object) -> tuple[bool, bool]:
        """(should run, should continue running): whether a daemon pod should be created on
        the node if it has none, and whether one already there may stay."""
        name = (node.get("metadata") or {}).get("name") or ""
        if self._node_name and self._node_name != name:
            return False, False
        if not matches_required_node_affinity(self._spec, node):
            return False, False
        taints = (node.get("spec") or {}).get("taints") or []
        if not taints:
            return True, True
        blocking = untolerated_taint(
            taints,
            self._tolerations,
            ("NoSchedule", "NoExecute"),
            comparison_operators=self._comparison,
        )
        if blocking is None:
            return True, True
        evicting = untolerated_taint(
            taints, self._tolerations, ("NoExecute",), comparison_operators=self._comparison
        )
        return False, evicting is None


def node_should_run_daemon_pod(
    node: Object, ds: Object, *, comparison_operators: bool = False
) -> tuple[bool, bool]:
    """(should run, should continue running) of the DaemonSet's pod on the node."""
    return Placement(ds, comparison_operators=comparison_operators).decide(node)

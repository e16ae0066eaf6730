"""Pure helpers for the deploy/ templates: render a CloudFormation template for one account x region
(parameters, pseudo parameters, Conditions, Ref, Fn::Sub, Fn::If, Fn::Join, Fn::GetAtt) and
evaluate IAM policy documents with IAM's wildcard semantics (explicit Deny > Allow > implicit deny).

Small on purpose: it covers the intrinsic functions and condition operators the templates use and
raises on anything else, so a template change that outgrows it fails loudly instead of passing.
"""
from __future__ import annotations

import pathlib
import re
from typing import Any

from cfnlint.decode import decode

ROOT = pathlib.Path(__file__).resolve().parents[2]
MEMBER = ROOT / "deploy" / "member.yaml"
HUB = ROOT / "deploy" / "hub.yaml"

_NO_VALUE = object()


def load(path: pathlib.Path) -> dict:
    template, errors = decode(str(path))
    assert not errors, errors
    return template


class Rendered:
    """A template rendered for given parameters, account and region."""

    def __init__(self, template: dict, params: dict[str, Any], account: str, region: str,
                 partition: str = "aws"):
        self.template = template
        self.values: dict[str, Any] = {}
        for name, spec in template.get("Parameters", {}).items():
            if name in params:
                value = params[name]
            elif "Default" in spec:
                value = spec["Default"]
            else:
                raise KeyError(f"parameter {name} has no default and was not given")
            if spec["Type"] == "CommaDelimitedList" and isinstance(value, str):
                value = value.split(",")
            self.values[name] = value
        unknown = set(params) - set(self.values)
        assert not unknown, f"unknown parameters {unknown}"
        self.values.update({"AWS::AccountId": account, "AWS::Region": region,
                            "AWS::Partition": partition, "AWS::StackName": "kip-member",
                            "AWS::URLSuffix": "amazonaws.com"})
        self.conditions: dict[str, bool] = {}
        for name in template.get("Conditions", {}):
            self.condition(name)

    def condition(self, name: str) -> bool:
        if name not in self.conditions:
            self.conditions[name] = bool(self._eval(self.template["Conditions"][name]))
        return self.conditions[name]

    def resources(self) -> dict[str, dict]:
        """Logical id -> rendered properties, for the resources whose Condition holds."""
        out = {}
        for logical_id, res in self.template["Resources"].items():
            if "Condition" in res and not self.condition(res["Condition"]):
                continue
            out[logical_id] = {"Type": res["Type"],
                               "Properties": self.render(res.get("Properties", {}))}
        return out

    def outputs(self) -> dict[str, Any]:
        return {k: self.render(v["Value"]) for k, v in self.template.get("Outputs", {}).items()
                if "Condition" not in v or self.condition(v["Condition"])}

    def render(self, node: Any) -> Any:
        value = self._eval(node)
        return None if value is _NO_VALUE else value

    def _eval(self, node: Any) -> Any:
        if isinstance(node, dict):
            if len(node) == 1:
                (key, arg), = node.items()
                if key == "Ref":
                    if arg == "AWS::NoValue":
                        return _NO_VALUE
                    if arg in self.values:
                        return self.values[arg]
                    if arg in self.template["Resources"]:
                        return f"REF:{arg}"
                    raise KeyError(arg)
                if key == "Fn::Sub":
                    assert isinstance(arg, str), "only the one-string form of Fn::Sub is supported"
                    return re.sub(r"\$\{([^}!]+)\}", lambda m: self._sub(m.group(1)), arg)
                if key == "Fn::If":
                    cond, yes, no = arg
                    return self._eval(yes if self.condition(cond) else no)
                if key == "Fn::GetAtt":
                    return f"GETATT:{arg[0]}.{arg[1]}"
                if key == "Fn::Join":
                    sep, items = arg
                    return sep.join(str(x) for x in self._eval(items))
                if key == "Fn::Equals":
                    a, b = (self._eval(x) for x in arg)
                    return str(a) == str(b)
                if key == "Fn::Not":
                    return not self._eval(arg[0])
                if key == "Fn::And":
                    return all(self._eval(x) for x in arg)
                if key == "Fn::Or":
                    return any(self._eval(x) for x in arg)
                if key == "Condition":
                    return self.condition(arg)
                if key.startswith("Fn::"):
                    raise NotImplementedError(key)
            out = {}
            for k, v in node.items():
                value = self._eval(v)
                if value is not _NO_VALUE:
                    out[str(k)] = value
            return out
        if isinstance(node, list):
            return [v for v in (self._eval(x) for x in node) if v is not _NO_VALUE]
        if isinstance(node, str):
            return str(node)
        return node

    def _sub(self, name: str) -> str:
        if "." in name:
            res, attr = name.split(".", 1)
            return f"GETATT:{res}.{attr}"
        return str(self._eval({"Ref": name}))


# ---------------------------------------------------------------------------- IAM evaluation

def as_list(x: Any) -> list:
    return x if isinstance(x, list) else [x]


def iam_match(pattern: str, value: str, case_sensitive: bool = True) -> bool:
    """IAM wildcards: '*' any run of characters (including '/' and ':'), '?' one character."""
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    flags = 0 if case_sensitive else re.IGNORECASE
    return re.fullmatch(regex, value, flags) is not None


def _condition_holds(condition: dict | None, context: dict[str, str]) -> bool:
    for operator, pairs in (condition or {}).items():
        for key, expected in pairs.items():
            actual = context.get(key)
            if actual is None:
                return False  # a missing key never satisfies these (non-IfExists) operators
            wanted = [str(x) for x in as_list(expected)]
            if operator in ("ArnLike", "StringLike"):
                ok = any(iam_match(w, actual) for w in wanted)
            elif operator in ("ArnEquals", "StringEquals"):
                ok = actual in wanted
            elif operator == "Bool":
                ok = actual.lower() in [w.lower() for w in wanted]
            else:
                raise NotImplementedError(operator)
            if not ok:
                return False
    return True


def statement_applies(st: dict, action: str, resource: str, context: dict[str, str]) -> bool:
    if not any(iam_match(a, action, case_sensitive=False) for a in as_list(st["Action"])):
        return False
    # a trust (resource) policy names no Resource: it is the resource it is attached to
    if not any(iam_match(r, resource) for r in as_list(st.get("Resource", resource))):
        return False
    return _condition_holds(st.get("Condition"), context)


def decide(policy: dict, action: str, resource: str, context: dict[str, str] | None = None) -> str:
    """'Allow', 'ExplicitDeny' or 'ImplicitDeny' for one request against one identity policy."""
    context = context or {}
    statements = as_list(policy["Statement"])
    if any(st["Effect"] == "Deny" and statement_applies(st, action, resource, context)
           for st in statements):
        return "ExplicitDeny"
    if any(st["Effect"] == "Allow" and statement_applies(st, action, resource, context)
           for st in statements):
        return "Allow"
    return "ImplicitDeny"


def allowed(policy: dict, action: str, resource: str, context: dict[str, str] | None = None) -> bool:
    return decide(policy, action, resource, context) == "Allow"


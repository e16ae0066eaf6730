"""Pure: a CloudTrail change event -> which kip resource changed, and which clusters may own it.

``parse`` reads the event EventBridge delivers ("AWS API Call via CloudTrail") and returns a
:class:`Change` (account, region, resource kind, resource name) or the reason it is ignored:
malformed events, failed calls, changes made by kip itself and names outside kip's namespace are
ignored, never raised.

``lookup`` turns a resource name into the cluster names that may own it, from the naming scheme
(``naming.names_for``): the name minus the prefix, minus the DLQ's '_' mark, minus any '-suffix'
(every split at a '-' is a candidate, so the lookup does not depend on which rule suffixes exist),
and, for IAM, minus the region. A shortened name (``<prefix>_<cut>-<10 hex>...``) cannot be read
back: its cut is returned for a search. The caller confirms each candidate against the record's
recorded names: the record is the authority, the scheme only narrows where to look.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Optional
from urllib.parse import urlparse

from chalicelib.core import naming

RULE_EVENTS = {"DeleteRule", "DisableRule", "PutRule", "RemoveTargets", "PutTargets"}
QUEUE_EVENTS = {"DeleteQueue", "SetQueueAttributes", "RemovePermission", "UntagQueue"}
POLICY_EVENTS = {"DetachRolePolicy", "DeletePolicy", "CreatePolicyVersion",
                 "SetDefaultPolicyVersion", "DeletePolicyVersion"}
SOURCES = {"events.amazonaws.com": RULE_EVENTS, "sqs.amazonaws.com": QUEUE_EVENTS,
           "iam.amazonaws.com": POLICY_EVENTS}
KIND = {**{e: "rule" for e in RULE_EVENTS}, **{e: "queue" for e in QUEUE_EVENTS},
        **{e: "policy" for e in POLICY_EVENTS}}
# kip's own sessions in member accounts (aws/clients.py assumes the role with this session name)
KIP_SESSION = "kip-provisioner"
SHORTENED = re.compile(r"^_(?P<cut>.+)-[0-9a-f]{%d}(-[A-Za-z0-9]+)?$" % naming.HASH_LEN)
REGION_PART = re.compile(r"^(?P<region>[a-z]{2}(-gov|-iso[a-z]?)?-[a-z]+-[0-9]{1,2})-(?P<rest>.+)$")
DEFAULT_BUS = re.compile(r"^(default|arn:[a-z-]+:events:[a-z0-9-]+:[0-9]{12}:event-bus/default)$")


@dataclass(frozen=True)
class Change:
    account: str
    region: Optional[str]   # None for IAM (global): ``lookup`` reads it from the policy name
    kind: str               # "rule" | "queue" | "policy"
    name: str
    event: str
    actor: str = ""


@dataclass(frozen=True)
class Parsed:
    change: Optional[Change] = None
    ignored: Optional[str] = None


@dataclass(frozen=True)
class Lookup:
    account: str
    region: str
    clusters: list = field(default_factory=list)    # candidate cluster names, most likely first
    cut: Optional[str] = None                       # a shortened name's cut: search by it


def _ignored(reason: str) -> Parsed:
    return Parsed(ignored=reason)


def parse(event: Any, prefix: str, iam_path: str, own_roles: tuple = (),
          cross_account_role: str = "kip-provisioner") -> Parsed:
    """Never raises: anything unexpected is a reason to ignore the event."""
    try:
        return _parse(event, prefix, iam_path, own_roles, cross_account_role)
    except (AttributeError, TypeError, ValueError, KeyError, IndexError):
        return _ignored("malformed event")


def _parse(event: Any, prefix: str, iam_path: str, own_roles: tuple,
           cross_account_role: str) -> Parsed:
    detail = event.get("detail") if isinstance(event, dict) else None
    if not isinstance(detail, dict):
        return _ignored("malformed event: no detail")
    name = detail.get("eventName")
    if name not in SOURCES.get(detail.get("eventSource"), ()):
        return _ignored(f"not a drift event: {detail.get('eventSource')} {name}")
    if detail.get("errorCode"):
        return _ignored(f"the call failed ({detail['errorCode']}): nothing changed")
    actor = _actor(detail.get("userIdentity"))
    if _is_kip(detail.get("userIdentity"), own_roles, cross_account_role):
        return _ignored("a change made by kip itself")
    params = detail.get("requestParameters")
    if not isinstance(params, dict):
        return _ignored("malformed event: no requestParameters")
    account = str(detail.get("recipientAccountId") or event.get("account") or "")
    region = str(detail.get("awsRegion") or event.get("region") or "")
    kind = KIND[name]
    if kind == "rule":
        resource = params.get("name") if "name" in params else params.get("rule")
        if params.get("eventBusName") and not DEFAULT_BUS.match(str(params["eventBusName"])):
            return _ignored("a rule on another event bus (kip uses the default bus)")
    elif kind == "queue":
        account, resource = _queue(params.get("queueUrl"), account)
    else:
        account, resource = _policy(params.get("policyArn"), iam_path, account)
        region = ""
    if not isinstance(resource, str) or not resource.startswith(prefix):
        return _ignored("not a kip resource name")
    if not naming.ACCOUNT_RE.fullmatch(account):
        return _ignored("malformed event: no account")
    return Parsed(Change(account, region or None, kind, resource, name, actor))


def _queue(url: Any, account: str) -> tuple[str, Optional[str]]:
    """``https://sqs.<region>.amazonaws.com/<account>/<name>`` (or the legacy host form)."""
    if not isinstance(url, str):
        return account, None
    parts = [p for p in urlparse(url).path.split("/") if p]
    if len(parts) != 2:
        return account, None
    return parts[0], parts[1]


def _policy(arn: Any, iam_path: str, account: str) -> tuple[str, Optional[str]]:
    """``arn:<partition>:iam::<account>:policy<iam_path><name>``: only kip's path counts."""
    if not isinstance(arn, str):
        return account, None
    parts = arn.split(":", 5)
    if len(parts) != 6 or parts[2] != "iam" or not parts[5].startswith("policy" + iam_path):
        return account, None
    name = parts[5][len("policy" + iam_path):]
    return parts[4], (name if "/" not in name else None)


def _actor(identity: Any) -> str:
    return str(identity.get("arn") or "") if isinstance(identity, dict) else ""


def _is_kip(identity: Any, own_roles: tuple, cross_account_role: str) -> bool:
    """kip's Lambda role (``own_roles``: role ARNs) or kip's assumed role in a member account."""
    if not isinstance(identity, dict):
        return False
    issuer = ((identity.get("sessionContext") or {}).get("sessionIssuer") or {})
    issuer_arn = str(issuer.get("arn") or "")
    if issuer_arn and issuer_arn in own_roles:
        return True
    role_name = issuer_arn.rsplit("/", 1)[-1] if issuer_arn else ""
    session = str(identity.get("arn") or "").rsplit("/", 1)[-1]
    return role_name == cross_account_role and session == KIP_SESSION


def lookup(change: Change, prefix: str) -> Optional[Lookup]:
    """The clusters that may own ``change.name``; None when it cannot be one of kip's names.
    A leading '_' marks a shortened name (no cluster name starts with '_'); the DLQ carries
    one more '_' right after the prefix."""
    body, region = change.name[len(prefix):], change.region
    if change.kind == "policy":
        mark, rest = ("_", body[1:]) if body.startswith("_") else ("", body)
        m = REGION_PART.match(rest)
        if not m:
            return None
        region, body = m["region"], mark + m["rest"]
    if change.kind == "queue" and body.startswith("_") and \
            (body.startswith("__") or body.endswith("-dlq")):
        body = body[1:]             # the DLQ namespace: "<prefix>_<cluster>-dlq"
    if not region or not body:
        return None
    full, cut = body, None
    if body.startswith("_"):
        shortened = SHORTENED.match(body)
        if shortened is None:
            return None
        full, cut = "", shortened["cut"]
    clusters = [c for c in _splits(full) if naming.CLUSTER_NAME_RE.fullmatch(c)] if full else []
    return Lookup(change.account, region, clusters, cut)


def _splits(body: str) -> list[str]:
    """'a-b-c' -> ['a-b-c', 'a-b', 'a']: the whole name first (a queue, a policy), then every
    name with one more '-suffix' removed (rules, DLQs)."""
    out = [body]
    while "-" in body:
        body = body.rsplit("-", 1)[0]
        out.append(body)
    return out


def recorded_names(names: Optional[dict]) -> set[str]:
    """Every resource name a record's ``names`` holds (queue, dlq, rules, policy, ARNs)."""
    out: set[str] = set()
    stack: list = [names or {}]
    while stack:
        node = stack.pop()
        if isinstance(node, str):
            out.add(node)
        elif isinstance(node, dict):
            stack.extend(node.values())
        elif isinstance(node, (list, tuple)):
            stack.extend(node)
    return out

"""Pure: what a brownfield account already has. Which role a cluster's Karpenter runs as (an IRSA
trust on the cluster's OIDC provider), which queues a role's identity policies let it read, which
default-bus rules feed those queues with interruption events, and which tool made them.

Nothing here calls AWS: the use cases read (``aws.Target``) and pass the answers in.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional

ROLE_SOURCES = ("request", "pod-identity", "irsa", "template")
HANDLERS = ("kip", "external", "auto-mode", "none")
TOOLS = ("karpenter-cloudformation", "terraform-aws-eks", "eksctl", "unknown")

WEB_IDENTITY = "sts:AssumeRoleWithWebIdentity"
STS_AUDIENCE = "sts.amazonaws.com"
# Interruption events Karpenter acts on (DESIGN.md's table): a rule that matches any of them and
# targets a queue the controller role may read is an interruption handler.
INTERRUPTION_TYPES = {
    "aws.ec2": {"EC2 Spot Instance Interruption Warning", "EC2 Instance Rebalance Recommendation",
                "EC2 Instance State-change Notification",
                "EC2 Capacity Reservation Instance Interruption Warning"},
    "aws.health": {"AWS Health Event"},
}
# Names that tell the tool for certain (docs/BROWNFIELD.md; the facts file's cheat-sheet).
_TF_SUFFIX = r"[0-9]{18}[0-9a-f]{8}"
_TF_RULE = re.compile(r"^Karpenter(HealthEvent|SpotInterrupt|InstanceRebalance|"
                      r"InstanceStateChange|CRInterruption)-" + _TF_SUFFIX + "$")
_CFN_KINDS = r"(ScheduledChange|SpotInterruption|Rebalance|InstanceStateChange|" \
             r"CapacityReservationInterruption)Rule"


def _as_list(value: Any) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _iam_like(pattern: str, value: str) -> bool:
    """IAM's StringLike/ArnLike: ``*`` and ``?`` are wildcards, nothing else is special."""
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, value, re.DOTALL) is not None


def _statements(doc: Optional[dict]) -> list[dict]:
    return [s for s in _as_list((doc or {}).get("Statement")) if isinstance(s, dict)]


def _allows_action(stmt: dict, action: str) -> bool:
    return stmt.get("Effect") == "Allow" and any(
        _iam_like(str(a).lower(), action.lower()) for a in _as_list(stmt.get("Action")))


# ------------------------------------------------------------------------------ IRSA trust

def oidc_host(issuer: str) -> str:
    """The condition-key prefix and provider name: the issuer URL without ``https://``."""
    return re.sub(r"^https://", "", issuer or "").rstrip("/")


def provider_arn(partition: str, account: str, issuer: str) -> str:
    return f"arn:{partition}:iam::{account}:oidc-provider/{oidc_host(issuer)}"


def irsa_match(trust: Optional[dict], provider: str, subject: str) -> Optional[str]:
    """How the trust policy lets ``subject`` (``system:serviceaccount:<ns>:<sa>``) of the
    cluster's OIDC provider ``provider`` assume the role: ``"exact"`` (StringEquals),
    ``"wildcard"`` (StringLike), or None. A statement without a ``:sub`` condition ties the role
    to every service account of the cluster, not to Karpenter's: not a match. ``:aud``, when
    present, must allow sts.amazonaws.com; missing, it is accepted."""
    host = provider.split(":oidc-provider/", 1)[-1].lower()
    best = None
    for stmt in _statements(trust):
        feds = _as_list((stmt.get("Principal") or {}).get("Federated")
                        if isinstance(stmt.get("Principal"), dict) else None)
        if not _allows_action(stmt, WEB_IDENTITY) or provider not in feds:
            continue
        how = _sub_match(stmt.get("Condition") or {}, host, subject)
        if how == "exact":
            return how
        best = best or how
    return best


def _sub_match(condition: dict, host: str, subject: str) -> Optional[str]:
    how, aud_ok = None, True
    for operator, block in condition.items():
        if not isinstance(block, dict):
            continue
        op = operator.split(":")[-1]
        for key, values in block.items():
            key = key.lower()
            vals = [str(v) for v in _as_list(values)]
            if key == f"{host}:aud":
                aud_ok = any(_iam_like(v, STS_AUDIENCE) if op == "StringLike"
                             else v == STS_AUDIENCE for v in vals)
            elif key == f"{host}:sub":
                if op == "StringEquals" and subject in vals:
                    how = "exact"
                elif op == "StringLike" and any(_iam_like(v, subject) for v in vals):
                    how = how or ("exact" if subject in vals else "wildcard")
    return how if aud_ok else None


def irsa_role(roles: Iterable[dict], provider: str, subjects: Iterable[str]) -> Optional[dict]:
    """The role (``{"name", "arn", "trust"}``) whose trust best ties it to Karpenter's service
    account: the first service account in ``subjects`` order wins, an exact ``:sub`` beats a
    wildcard, then the role name decides (deterministic)."""
    roles = sorted(roles, key=lambda r: r["name"])
    for subject in subjects:
        found = [(irsa_match(r.get("trust"), provider, subject), r) for r in roles]
        for how in ("exact", "wildcard"):
            for match, role in found:
                if match == how:
                    return role
    return None


# ------------------------------------------------------------------ queues a role may read

def receive_grants(doc: Optional[dict]) -> list[str]:
    """The resource patterns an identity policy allows ``sqs:ReceiveMessage`` on (``*`` and
    ``?`` kept: the caller matches them against real queue ARNs). ``NotResource`` grants every
    queue but those named: conservatively, every queue."""
    out: list[str] = []
    for stmt in _statements(doc):
        if not _allows_action(stmt, "sqs:ReceiveMessage"):
            continue
        if "NotResource" in stmt:
            out.append("*")
        out.extend(str(r) for r in _as_list(stmt.get("Resource")))
    return list(dict.fromkeys(out))


def queue_arn(partition: str, region: str, account: str, name: str) -> str:
    return f"arn:{partition}:sqs:{region}:{account}:{name}"


def literal_queue(pattern: str, partition: str, region: str, account: str) -> Optional[str]:
    """The queue name of a grant without wildcards in this account-region, else None."""
    if any(c in pattern for c in "*?"):
        return None
    prefix = f"arn:{partition}:sqs:{region}:{account}:"
    return pattern[len(prefix):] if pattern.startswith(prefix) else None


def list_prefix(pattern: str, partition: str, region: str, account: str) -> Optional[str]:
    """For a wildcard grant that may cover queues here: the literal start of the queue name
    (ListQueues' QueueNamePrefix; "" = every queue), or None when it cannot match this
    account-region at all."""
    probe = f"arn:{partition}:sqs:{region}:{account}:"
    head = re.split(r"[*?]", pattern, maxsplit=1)[0]
    if len(head) <= len(probe):
        return "" if probe.startswith(head) or pattern == "*" else None
    return head[len(probe):] if head.startswith(probe) else None


def grants_cover(grants: Iterable[str], arn: str) -> bool:
    return any(_iam_like(g, arn) for g in grants)


def is_interruption_pattern(pattern: Optional[dict]) -> bool:
    """A rule pattern that delivers at least one interruption event kind."""
    if not isinstance(pattern, dict):
        return False
    sources = [s for s in _as_list(pattern.get("source")) if isinstance(s, str)]
    types = [t for t in _as_list(pattern.get("detail-type")) if isinstance(t, str)]
    for source in sources:
        wanted = INTERRUPTION_TYPES.get(source)
        if wanted and (not types or wanted & set(types)):
            return True
    return False


# ------------------------------------------------------------------ who made it

def tool_of(cluster: str, queue: str, queue_tags: dict, rules: dict) -> str:
    """The tool that made a handler, only where names or tags make it certain; else "unknown".
    ``rules``: rule name -> its tags."""
    stack = queue_tags.get("aws:cloudformation:stack-name", "")
    c = re.escape(cluster)
    names = list(rules)
    if any(k.startswith("alpha.eksctl.io/") for k in queue_tags) or \
            stack == f"eksctl-{cluster}-karpenter" or \
            any(re.match(rf"^eksctl-{c}-karpenter-{_CFN_KINDS}-", n) for n in names):
        return "eksctl"
    if stack == f"Karpenter-{cluster}" or \
            any(re.match(rf"^Karpenter-{c}-{_CFN_KINDS}-", n) for n in names):
        return "karpenter-cloudformation"
    if any(_TF_RULE.match(n) for n in names) and (
            queue == f"Karpenter-{cluster}" or
            any(t.get("ClusterName") == cluster for t in rules.values())):
        return "terraform-aws-eks"
    return "unknown"


@dataclass
class ExistingHandler:
    """Another tool's interruption wiring for this cluster's controller role."""
    tool: str
    queue: str                      # queue name
    queue_arn: str
    rules: list = field(default_factory=list)       # rule names feeding it
    policies: list = field(default_factory=list)    # policy ARNs / "inline:<role>/<name>"
    queue_url: Optional[str] = None     # its health is read the same way as kip's queue's

    def to_dict(self) -> dict:
        return {"tool": self.tool, "queue": self.queue, "queue_arn": self.queue_arn,
                "queue_url": self.queue_url, "rules": sorted(self.rules),
                "policies": sorted(self.policies)}


REMOVAL = {
    "karpenter-cloudformation": "remove KarpenterInterruptionQueue, its queue policy and the "
                                "interruption rules from the Karpenter-<cluster> stack's template "
                                "and update the stack (do not delete it: it also holds the node "
                                "role and the controller policies), and drop the "
                                "AllowInterruptionQueueActions statement",
    "terraform-aws-eks": "set enable_spot_termination = false on the terraform-aws-eks karpenter "
                         "module and apply",
    "eksctl": "set karpenter.withSpotInterruptionQueue: false and update the eksctl-<cluster>-"
              "karpenter stack",
    "unknown": "remove the queue, its rules and the role's grant with whatever made them",
}


def how_to_remove(tool: str, cluster: Optional[str] = None) -> str:
    text = REMOVAL.get(tool, REMOVAL["unknown"])
    return text.replace("<cluster>", cluster) if cluster else text

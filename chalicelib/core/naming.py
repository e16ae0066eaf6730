"""Pure: cluster identity -> every resource name and ARN, within AWS limits.

Names are deterministic. When ``prefix + cluster + suffix`` would exceed an AWS limit, the cluster
part is cut, marked with a leading '_' and followed by a 10-hex-digit SHA-256 of the *whole*
cluster part, so two clusters never share a name even when their names differ only at the end. Names are computed once and
recorded; teardown reads them from the record.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, replace

SQS_MAX = 80
RULE_MAX = 64
IAM_POLICY_MAX = 128
IAM_ROLE_MAX = 64
HASH_LEN = 10

CLUSTER_NAME_RE = re.compile(r"^[0-9A-Za-z][A-Za-z0-9_-]{0,99}$")
# ASCII only ([0-9], not \d) and meant for fullmatch (so a trailing newline never passes).
ACCOUNT_RE = re.compile(r"^[0-9]{12}$")
REGION_RE = re.compile(r"^[a-z]{2}(-gov|-iso[a-z]?)?-[a-z]+-[0-9]{1,2}$")

MANAGED_BY_TAG = "kip.io/managed-by"
MANAGED_BY_VALUE = "karpenter-interruption-provisioner"
CLUSTER_TAG = "kip.io/cluster"
DISCOVERY_TAG = "karpenter.sh/discovery"

TARGET_ID = "KarpenterInterruptionQueueTarget"

# The one rule's suffix; and, for migration, the per-kind suffixes of the earlier five-rule layout.
RULE_SUFFIX_ONE = "-events"
# event kind -> short suffix used in rule names (kept short so long cluster names keep more text)
RULE_SUFFIX = {
    "spot_interruption": "spot",
    "rebalance_recommendation": "rebalance",
    "instance_state_change": "state",
    "scheduled_change": "health",
    "capacity_reservation_interruption": "capres",
}


def partition_for(region: str) -> str:
    if region.startswith("cn-"):
        return "aws-cn"
    if region.startswith("us-gov-"):
        return "aws-us-gov"
    if region.startswith("us-iso-"):
        return "aws-iso"
    if region.startswith("us-isob-"):
        return "aws-iso-b"
    return "aws"


def short_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:HASH_LEN]


def fit(prefix: str, body: str, suffix: str, limit: int) -> str:
    """``prefix + body + suffix`` if it fits in ``limit``; else ``prefix + '_' + cut body + '-' +
    hash of the whole body + suffix``. The '_', which no EKS cluster name starts with, marks a
    shortened name, so it can never equal the full name of another, shorter cluster."""
    full = f"{prefix}{body}{suffix}"
    if len(full) <= limit:
        return full
    room = limit - len(prefix) - 1 - len(suffix) - 1 - HASH_LEN
    if room < 1:
        raise ValueError(f"prefix {prefix!r} leaves no room for a name within {limit} characters")
    return f"{prefix}_{body[:room]}-{short_hash(body)}{suffix}"


@dataclass(frozen=True)
class ClusterId:
    account_id: str
    region: str
    cluster_name: str

    @property
    def partition(self) -> str:
        return partition_for(self.region)

    @property
    def key(self) -> str:
        """The record key and the value of the ownership tag."""
        return f"{self.account_id}/{self.region}/{self.cluster_name}"


@dataclass(frozen=True)
class Names:
    queue: str
    dlq: str
    queue_arn: str
    dlq_arn: str
    rules: dict          # legacy: event kind -> rule name of the five-rule layout (migration only)
    rule_arns: dict      # legacy: event kind -> rule ARN
    policy: str
    policy_path: str
    policy_arn: str
    rule: str = ""       # the cluster's one rule, matching every selected kind
    rule_arn: str = ""

    def to_dict(self) -> dict:
        return {
            "queue": self.queue, "dlq": self.dlq, "queue_arn": self.queue_arn,
            "dlq_arn": self.dlq_arn, "rule": self.rule, "rule_arn": self.rule_arn,
            "rules": dict(self.rules), "rule_arns": dict(self.rule_arns),
            "policy": self.policy, "policy_path": self.policy_path, "policy_arn": self.policy_arn,
        }

    @classmethod
    def from_dict(cls, data: dict) -> "Names":
        return cls(**{k: (dict(v) if isinstance(v, dict) else v) for k, v in data.items()})

    def upgraded(self, current: "Names") -> "Names":
        """Recorded names of the five-rule layout gain the one rule of ``current``; the old rules
        stay (as legacy) until a run has removed them."""
        if self.rule:
            return self
        return replace(self, rule=current.rule, rule_arn=current.rule_arn)

    def without_legacy(self, kinds: "set[str] | None" = None) -> "Names":
        """These names, forgetting the legacy rules of ``kinds`` (all when None)."""
        keep = {k: v for k, v in self.rules.items() if kinds is not None and k not in kinds}
        return replace(self, rules=keep, rule_arns={k: self.rule_arns[k] for k in keep})


def names_for(cid: ClusterId, prefix: str, iam_path: str, legacy: bool = False) -> Names:
    """Every name of a cluster's resources. ``legacy``: also the five per-kind rules of the
    earlier layout (a teardown without a record looks for them too)."""
    p, region, account = cid.partition, cid.region, cid.account_id
    queue = fit(prefix, cid.cluster_name, "", SQS_MAX)
    # The DLQ shares the queue namespace. After the prefix comes '_', which no EKS cluster name
    # can start with, so no cluster's queue can ever be named like another cluster's DLQ
    # (with plain "<prefix><name>-dlq", cluster "x-dlq"'s queue would be cluster "x"'s DLQ).
    dlq = fit(f"{prefix}_", cid.cluster_name, "-dlq", SQS_MAX)
    # One rule per cluster. Its suffix is none of the legacy kind suffixes, so it can never be
    # named like another cluster's legacy rule (cluster "x-spot" vs cluster "x"'s spot rule).
    rule = fit(prefix, cid.cluster_name, RULE_SUFFIX_ONE, RULE_MAX)
    legacy_rules = {kind: fit(prefix, cid.cluster_name, f"-{suffix}", RULE_MAX)
                    for kind, suffix in RULE_SUFFIX.items()} if legacy else {}
    # IAM is global to the account: the region is part of the name so that two clusters with the
    # same name in two regions get two policies.
    policy = fit(prefix, f"{region}-{cid.cluster_name}", "", IAM_POLICY_MAX)

    def rule_arn(name: str) -> str:
        return f"arn:{p}:events:{region}:{account}:rule/{name}"
    return Names(
        queue=queue,
        dlq=dlq,
        queue_arn=f"arn:{p}:sqs:{region}:{account}:{queue}",
        dlq_arn=f"arn:{p}:sqs:{region}:{account}:{dlq}",
        rules=legacy_rules,
        rule_arns={k: rule_arn(n) for k, n in legacy_rules.items()},
        policy=policy,
        policy_path=iam_path,
        policy_arn=f"arn:{p}:iam::{account}:policy{iam_path}{policy}",
        rule=rule,
        rule_arn=rule_arn(rule),
    )


def role_arn(cid: ClusterId, role_name: str, path: str = "/") -> str:
    return f"arn:{cid.partition}:iam::{cid.account_id}:role{path}{role_name}"


def ownership_tags(cid: ClusterId) -> dict:
    return {MANAGED_BY_TAG: MANAGED_BY_VALUE, CLUSTER_TAG: cid.key}


def owned_by(tags: dict | None, cluster_key: str) -> bool:
    """Ours *and* this cluster's: a truncated name can never make us touch another cluster's."""
    tags = tags or {}
    return tags.get(MANAGED_BY_TAG) == MANAGED_BY_VALUE and tags.get(CLUSTER_TAG) == cluster_key


def is_owned(tags: dict | None, cid: ClusterId) -> bool:
    return owned_by(tags, cid.key)

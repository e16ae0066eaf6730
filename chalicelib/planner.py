"""Pure: plan(desired, observed) -> actions, as plain printable data.

An action names an adapter operation (``op``) and its parameters, plus the ids of actions that must
finish first (``after``). The executor in ``service`` runs actions as soon as their dependencies are
done, so the plan's dependency depth is the number of sequential AWS round-trips.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

from chalicelib import naming
from chalicelib.errors import ResourceNotOwned
from chalicelib.spec import DesiredSpec

JSON_ATTRIBUTES = ("Policy", "RedrivePolicy")


@dataclass
class QueueState:
    exists: bool = False
    url: Optional[str] = None
    attributes: dict = field(default_factory=dict)
    tags: dict = field(default_factory=dict)


@dataclass
class RuleState:
    exists: bool = False
    pattern: Optional[dict] = None
    state: Optional[str] = None
    tags: dict = field(default_factory=dict)
    targets: list = field(default_factory=list)    # [{"Id":..., "Arn":...}]


@dataclass
class PolicyState:
    exists: bool = False
    tags: dict = field(default_factory=dict)
    default_version: Optional[str] = None
    document: Optional[dict] = None
    versions: list = field(default_factory=list)    # [{"VersionId", "IsDefaultVersion", ...}]
    attached_roles: list = field(default_factory=list)  # role names (teardown only)


@dataclass
class RoleState:
    name: str = ""
    exists: bool = False
    attached: list = field(default_factory=list)    # policy ARNs


@dataclass
class Observed:
    queue: QueueState = field(default_factory=QueueState)
    dlq: QueueState = field(default_factory=QueueState)
    rules: dict = field(default_factory=dict)        # rule name -> RuleState
    policy: PolicyState = field(default_factory=PolicyState)
    role: RoleState = field(default_factory=RoleState)
    previous_role: Optional[RoleState] = None         # a recorded role we must detach from


@dataclass(frozen=True)
class Action:
    id: str
    op: str                 # adapter method name
    kind: str               # create | update | delete
    resource: str           # queue | dlq | rule | targets | policy | policy_version | attachment
    name: str
    params: dict
    after: tuple = ()

    def to_dict(self) -> dict:
        d = asdict(self)
        d["after"] = list(self.after)
        return d


def _norm(attr: str, value: Any) -> Any:
    if attr in JSON_ATTRIBUTES and isinstance(value, str) and value:
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def queue_diff(desired: dict, observed: dict) -> dict:
    """Attributes whose observed value differs from the desired one."""
    changed = {k: v for k, v in desired.items() if _norm(k, v) != _norm(k, observed.get(k))}
    if "SqsManagedSseEnabled" in desired and observed.get("KmsMasterKeyId"):
        changed["KmsMasterKeyId"] = ""
    if "KmsMasterKeyId" in desired and observed.get("SqsManagedSseEnabled") == "true":
        changed["SqsManagedSseEnabled"] = "false"
    return changed


def depth(actions: list[Action]) -> int:
    """Length of the longest dependency chain: the plan's sequential round-trips."""
    by_id = {a.id: a for a in actions}
    memo: dict[str, int] = {}

    def d(aid: str) -> int:
        if aid not in memo:
            memo[aid] = 1 + max((d(p) for p in by_id[aid].after if p in by_id), default=0)
        return memo[aid]
    return max((d(a.id) for a in actions), default=0)


def _check_owned(exists: bool, tags: dict, cid: naming.ClusterId, what: str, name: str) -> None:
    if exists and not naming.is_owned(tags, cid):
        raise ResourceNotOwned(
            f"{what} {name!r} already exists and is not managed by this service for cluster "
            f"{cid.key}; nothing was changed. Delete or rename it, or choose another prefix.",
            resource=name, resource_type=what)


def check_ownership(spec: DesiredSpec, obs: Observed) -> None:
    """Refuse before any write if a same-named resource we want to manage is not ours."""
    n, cid = spec.names, spec.cid
    _check_owned(obs.dlq.exists, obs.dlq.tags, cid, "SQS queue", n.dlq)
    _check_owned(obs.queue.exists, obs.queue.tags, cid, "SQS queue", n.queue)
    for kind in spec.event_kinds:
        st = obs.rules.get(n.rules[kind], RuleState())
        _check_owned(st.exists, st.tags, cid, "EventBridge rule", n.rules[kind])
    _check_owned(obs.policy.exists, obs.policy.tags, cid, "IAM policy", n.policy)


def plan_provision(spec: DesiredSpec, obs: Observed) -> list[Action]:
    check_ownership(spec, obs)
    n, acts = spec.names, []
    tags = spec.tags

    def add(*args: Any, **kw: Any) -> Action:
        a = Action(*args, **kw)
        acts.append(a)
        return a

    # -- dead-letter queue, then the queue whose redrive policy names it
    dlq_after: tuple = ()
    if not obs.dlq.exists:
        add("dlq.create", "create_queue", "create", "dlq", n.dlq,
            {"name": n.dlq, "attributes": spec.dlq_attributes, "tags": tags})
        dlq_after = ("dlq.create",)
    else:
        changed = queue_diff(spec.dlq_attributes, obs.dlq.attributes)
        if changed:
            add("dlq.update", "set_queue_attributes", "update", "dlq", n.dlq,
                {"url": obs.dlq.url, "attributes": changed})
        missing = {k: v for k, v in tags.items() if obs.dlq.tags.get(k) != v}
        if missing:
            add("dlq.tag", "tag_queue", "update", "dlq", n.dlq, {"url": obs.dlq.url, "tags": missing})
    if not obs.queue.exists:
        add("queue.create", "create_queue", "create", "queue", n.queue,
            {"name": n.queue, "attributes": spec.queue_attributes, "tags": tags}, dlq_after)
    else:
        changed = queue_diff(spec.queue_attributes, obs.queue.attributes)
        if changed:
            add("queue.update", "set_queue_attributes", "update", "queue", n.queue,
                {"url": obs.queue.url, "attributes": changed}, dlq_after)
        missing = {k: v for k, v in tags.items() if obs.queue.tags.get(k) != v}
        if missing:
            add("queue.tag", "tag_queue", "update", "queue", n.queue,
                {"url": obs.queue.url, "tags": missing})

    # -- rules and their targets. PutTargets needs the rule, not the queue: EventBridge accepts
    # a target ARN before the queue exists, which keeps the queue off the rules' critical path.
    target = {"Id": naming.TARGET_ID, "Arn": n.queue_arn}
    for kind, rule in n.rules.items():
        st = obs.rules.get(rule, RuleState())
        if kind in spec.rule_patterns:
            pattern = spec.rule_patterns[kind]
            put_after: tuple = ()
            if not st.exists or st.pattern != pattern or st.state != "ENABLED":
                add(f"rule.{kind}", "put_rule", "create" if not st.exists else "update", "rule",
                    rule, {"name": rule, "pattern": pattern, "tags": tags,
                           "description": f"Karpenter interruption handling ({kind}) for "
                                          f"{spec.cid.key}"})
                put_after = (f"rule.{kind}",)
            elif any(st.tags.get(k) != v for k, v in tags.items()):
                add(f"rule.{kind}.tag", "tag_rule", "update", "rule", rule,
                    {"arn": n.rule_arns[kind], "tags": tags})
            if target not in [{"Id": t.get("Id"), "Arn": t.get("Arn")} for t in st.targets]:
                add(f"targets.{kind}", "put_targets", "create", "targets", rule,
                    {"rule": rule, "targets": [target]}, put_after)
        elif st.exists and naming.is_owned(st.tags, spec.cid):
            _delete_rule(add, kind, rule, st)

    # -- controller policy: a changed document becomes a new default version
    policy_after: tuple = ()
    if not obs.policy.exists:
        add("policy.create", "create_policy", "create", "policy", n.policy,
            {"name": n.policy, "path": n.policy_path, "document": spec.controller_policy,
             "tags": tags, "description": f"Karpenter interruption queue access for {spec.cid.key}"})
        policy_after = ("policy.create",)
    elif obs.policy.document != spec.controller_policy:
        prune = []
        for v in obs.policy.versions:
            if not v.get("IsDefaultVersion"):
                a = add(f"policy.prune.{v['VersionId']}", "delete_policy_version", "delete",
                        "policy_version", n.policy, {"arn": n.policy_arn, "version": v["VersionId"]})
                prune.append(a.id)
        add("policy.version", "create_policy_version", "update", "policy_version", n.policy,
            {"arn": n.policy_arn, "document": spec.controller_policy}, tuple(prune))

    # -- attachment (only once the role exists; else the record waits for it)
    if obs.role.exists and n.policy_arn not in obs.role.attached:
        add("attach", "attach_role_policy", "create", "attachment", obs.role.name,
            {"role": obs.role.name, "policy_arn": n.policy_arn}, policy_after)
    prev = obs.previous_role
    if prev and prev.exists and prev.name != obs.role.name and n.policy_arn in prev.attached:
        add("detach.previous", "detach_role_policy", "delete", "attachment", prev.name,
            {"role": prev.name, "policy_arn": n.policy_arn})
    return acts


def _delete_rule(add: Any, kind: str, rule: str, st: RuleState) -> None:
    after: tuple = ()
    if st.targets:
        add(f"targets.{kind}.remove", "remove_targets", "delete", "targets", rule,
            {"rule": rule, "ids": [t["Id"] for t in st.targets]})
        after = (f"targets.{kind}.remove",)
    add(f"rule.{kind}.delete", "delete_rule", "delete", "rule", rule, {"name": rule}, after)


def plan_teardown(names: naming.Names, cid: naming.ClusterId, obs: Observed
                  ) -> tuple[list[Action], list[dict]]:
    """Delete what the record names, in dependency order; skip (and report) what is not ours."""
    acts: list[Action] = []
    skipped: list[dict] = []

    def add(*args: Any, **kw: Any) -> Action:
        a = Action(*args, **kw)
        acts.append(a)
        return a

    def skip(kind: str, name: str) -> None:
        skipped.append({"resource": kind, "name": name,
                        "reason": "exists but is not tagged as this cluster's; left untouched"})

    for kind, rule in names.rules.items():
        st = obs.rules.get(rule, RuleState())
        if st.exists:
            if naming.is_owned(st.tags, cid):
                _delete_rule(add, kind, rule, st)
            else:
                skip("rule", rule)
    p = obs.policy
    if p.exists:
        if naming.is_owned(p.tags, cid):
            detach = [add(f"detach.{r}", "detach_role_policy", "delete", "attachment", r,
                          {"role": r, "policy_arn": names.policy_arn}).id for r in p.attached_roles]
            prune = [add(f"policy.prune.{v['VersionId']}", "delete_policy_version", "delete",
                         "policy_version", names.policy,
                         {"arn": names.policy_arn, "version": v["VersionId"]}).id
                     for v in p.versions if not v.get("IsDefaultVersion")]
            add("policy.delete", "delete_policy", "delete", "policy", names.policy,
                {"arn": names.policy_arn}, tuple(detach + prune))
        else:
            skip("policy", names.policy)
    queue_after: tuple = ()
    if obs.queue.exists:
        if naming.is_owned(obs.queue.tags, cid):
            add("queue.delete", "delete_queue", "delete", "queue", names.queue,
                {"url": obs.queue.url})
            queue_after = ("queue.delete",)
        else:
            skip("queue", names.queue)
    if obs.dlq.exists:
        if naming.is_owned(obs.dlq.tags, cid):
            add("dlq.delete", "delete_queue", "delete", "dlq", names.dlq, {"url": obs.dlq.url},
                queue_after)
        else:
            skip("dlq", names.dlq)
    return acts, skipped

"""Pure: plan(desired, observed) -> actions, as plain printable data.

An action names an adapter operation (``op``) and its parameters, the ids of actions that must
finish first (``after``), and its effect on the record (``effect``, see ``records``). The executor
runs actions as soon as their dependencies are done, so the plan's dependency depth is the number
of sequential AWS round-trips. Action ids only order and name steps; nothing parses them.
"""
from __future__ import annotations

import json
from typing import Any, Optional

from chalicelib.converge import alarms, migration
from chalicelib.converge.actions import Action, Plan
from chalicelib import errors
from chalicelib.core import naming, policies
from chalicelib.errors import ResourceNotOwned
from chalicelib.core.records import Effect, Result
from chalicelib.core.spec import DesiredSpec
from chalicelib.core.observed import Observed, RuleState

JSON_ATTRIBUTES = ("Policy", "RedrivePolicy")


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


def _check_owned(exists: bool, tags: Optional[dict], cid: naming.ClusterId, what: str,
                 name: str) -> None:
    # tags None: not read (a check of a cluster the record says is in sync); any plan made from
    # such a look is made again from a full one before it runs
    if exists and tags is not None and not naming.is_owned(tags, cid):
        raise ResourceNotOwned(
            f"{what} {name!r} already exists and is not managed by this service for cluster "
            f"{cid.key}; nothing was changed. Delete or rename it, or choose another prefix.",
            resource=name, resource_type=what)


def check_ownership(spec: DesiredSpec, obs: Observed) -> None:
    """Refuse before any write if a same-named resource we want to manage is not ours."""
    n, cid = spec.names, spec.cid
    _check_owned(obs.dlq.exists, obs.dlq.tags, cid, "SQS queue", n.dlq)
    _check_owned(obs.queue.exists, obs.queue.tags, cid, "SQS queue", n.queue)
    st = obs.rule(n.rule)
    _check_owned(st.exists, st.tags, cid, "EventBridge rule", n.rule)
    _check_owned(obs.policy.exists, obs.policy.tags, cid, "IAM policy", n.policy)


def _gone(entry: str, key: Optional[str] = None, **more: Any) -> Effect:
    return Effect.of(entry, key, exists=False, **more)


def plan_provision(spec: DesiredSpec, obs: Observed) -> list[Action]:
    check_ownership(spec, obs)
    # the five-rule move: legacy rules go only when obs confirms the one rule delivers and the
    # queue policy allows it; else this run plans phase 1 again (``migration.for_this_run``)
    spec = migration.for_this_run(spec, obs)
    plan = Plan()
    _plan_queues(plan, spec, obs)
    _plan_rules(plan, spec, obs)
    if spec.grant_mode == "queue-policy":
        _plan_no_role_policy(plan, spec, obs)
    else:
        _plan_policy(plan, spec, obs)
    plan.extend(alarms.plan_provision(spec, obs))     # KIP_ALARMS (chalicelib/alarms.py)
    return list(plan)


def _plan_queues(plan: Plan, spec: DesiredSpec, obs: Observed) -> None:
    """The dead-letter queue, then the queue whose redrive policy names it."""
    n, tags = spec.names, spec.tags
    dlq_after: tuple = ()
    for key, attrs in (("dlq", spec.dlq_attributes), ("queue", spec.queue_attributes)):
        st, name = getattr(obs, key), getattr(n, key)
        # Tightening the queue policy to the one rule waits until the old rules are gone.
        after = dlq_after + tuple(f"legacy.{k}.delete" for k in _retiring(spec, obs)) \
            if key == "queue" else ()
        if not st.exists:
            plan.add(f"{key}.create", "create_queue", "create", key, name,
                     {"name": name, "attributes": attrs, "tags": tags}, after,
                     Effect.of(key, exists=True, url=Result("url")))
            dlq_after = ("dlq.create",) if key == "dlq" else dlq_after
            continue
        # SQS shows an attribute change up to 60 s later (retention: 15 min): what kip set
        # lately is not drift, and writing it again would not make it show sooner
        recent = spec.settling.get(key, {})
        changed = {k: v for k, v in queue_diff(attrs, st.attributes).items()
                   if not _lagging(k, v, st.attributes.get(k), recent.get(k))}
        if changed:
            plan.add(f"{key}.update", "set_queue_attributes", "update", key, name,
                     {"url": st.url, "attributes": changed}, after)
        missing = {k: v for k, v in tags.items()
                   if st.tags is not None and st.tags.get(k) != v}
        if missing:
            plan.add(f"{key}.tag", "tag_queue", "update", key, name,
                     {"url": st.url, "tags": missing})
        retired = _retired(spec, st.tags)
        if retired:
            plan.add(f"{key}.untag", "untag_queue", "update", key, name,
                     {"url": st.url, "keys": retired})


def _plan_rules(plan: Plan, spec: DesiredSpec, obs: Observed) -> None:
    """The cluster's one rule and its target. PutTargets needs the rule, not the queue:
    EventBridge accepts a target ARN before the queue exists, which keeps the queue off the rule's
    critical path. Rules of the earlier five-rule layout go once the queue policy has allowed the
    one rule long enough (``spec.keep_legacy`` false) and this run read back that it does, and
    that the one rule is enabled with its target (``migration.retire_now``): each delete comes
    after the one rule and its target, and the policy is tightened only after the deletes."""
    n, tags, st = spec.names, spec.tags, obs.rule(spec.names.rule)
    target = {"Id": naming.TARGET_ID, "Arn": n.queue_arn}
    after: tuple = ()
    if not st.exists or st.pattern != spec.rule_pattern or st.state != "ENABLED":
        after = (plan.add("rule", "put_rule", "create" if not st.exists else "update", "rule",
                          n.rule, {"name": n.rule, "pattern": spec.rule_pattern, "tags": tags,
                                   "description": "Karpenter interruption handling for "
                                                  f"{spec.cid.key}"},
                          effect=Effect.of("rule", exists=True)).id,)
    # PutRule ignores Tags when it updates an existing rule: tag it on its own.
    if st.exists and st.tags is not None and any(st.tags.get(k) != v for k, v in tags.items()):
        plan.add("rule.tag", "tag_rule", "update", "rule", n.rule,
                 {"arn": n.rule_arn, "tags": tags}, after)
    retired = _retired(spec, st.tags) if st.exists else []
    if retired:
        plan.add("rule.untag", "untag_rule", "update", "rule", n.rule,
                 {"arn": n.rule_arn, "keys": retired}, after)
    # Someone else's target on our rule would receive every interruption event: drift.
    foreign = [t["Id"] for t in st.targets if t.get("Id") != naming.TARGET_ID]
    if foreign:
        plan.add("targets.foreign", "remove_targets", "delete", "targets", n.rule,
                 {"rule": n.rule, "ids": foreign})
    if target not in [{"Id": t.get("Id"), "Arn": t.get("Arn")} for t in st.targets]:
        after = (plan.add("targets", "put_targets", "create", "targets", n.rule,
                          {"rule": n.rule, "targets": [target]}, after,
                          Effect.of("rule", target=True)).id,)
    for kind in _retiring(spec, obs):
        _delete_rule(plan, kind, n.rules[kind], obs.rule(n.rules[kind]), after)


def _retiring(spec: DesiredSpec, obs: Observed) -> list[str]:
    """Legacy rules (ours) this run removes: none unless phase 1 is confirmed by ``obs``."""
    if not migration.retire_now(spec, obs):
        return []
    return [k for k, name in spec.names.rules.items()
            if obs.rule(name).exists and naming.is_owned(obs.rule(name).tags, spec.cid)]


def _plan_no_role_policy(plan: Plan, spec: DesiredSpec, obs: Observed) -> None:
    """KIP_GRANT_MODE=queue-policy: the queue policy grants the role; a controller policy kip
    attached before (role-policy mode) is detached and deleted, after the queue policy that
    replaces it (no gap in the controller's access)."""
    n, pol = spec.names, obs.policy
    if not pol.exists:
        return
    grant = tuple(a.id for a in plan if a.resource == "queue")
    detach = ()
    if obs.role.exists and n.policy_arn in obs.role.attached:
        detach = (plan.add("detach", "detach_role_policy", "delete", "attachment", obs.role.name,
                           {"role": obs.role.name, "policy_arn": n.policy_arn}, grant,
                           Effect.of("attachment", attached=False)).id,)
    prune = [_prune(plan, n, v).id for v in pol.versions or [] if not v.get("IsDefaultVersion")]
    plan.add("policy.delete", "delete_policy", "delete", "policy", n.policy,
             {"arn": n.policy_arn}, grant + detach + tuple(prune),
             _gone("policy", default_version=None))


def _plan_policy(plan: Plan, spec: DesiredSpec, obs: Observed) -> None:
    """The controller policy (a changed document becomes a new default version), attached to the
    role once the role exists (else the record waits for it). The only document kip ever writes
    is the one ``policies.controller_policy`` makes for this queue and key."""
    n, pol = spec.names, obs.policy
    if not policies.is_controller_policy(spec.controller_policy, n.queue_arn, spec.kms_key_arn):
        raise errors.Forbidden("the controller policy kip would write is not the one it generates "
                               f"for {n.queue}; nothing was changed", field="controller_policy")
    policy_after: tuple = ()
    if not pol.exists:
        plan.add("policy.create", "create_policy", "create", "policy", n.policy,
                 {"name": n.policy, "path": n.policy_path, "document": spec.controller_policy,
                  "tags": spec.tags,
                  "description": f"Karpenter interruption queue access for {spec.cid.key}"},
                 effect=Effect.of("policy", exists=True, default_version=Result("version")),
                 owner=spec.cid.key)
        policy_after = ("policy.create",)
    elif pol.document != spec.controller_policy:
        prune = [_prune(plan, n, v).id for v in pol.versions or []
                 if not v.get("IsDefaultVersion")]
        plan.add("policy.version", "create_policy_version", "update", "policy_version", n.policy,
                 {"arn": n.policy_arn, "document": spec.controller_policy}, tuple(prune),
                 Effect.of("policy", default_version=Result("version")))
    else:   # IAM keeps 5 versions: beyond the previous one (a rollback), stray versions go
        older = [v for v in pol.versions or [] if not v.get("IsDefaultVersion")]
        for v in sorted(older, key=_version_number)[:-1]:
            _prune(plan, n, v)
    if pol.exists:      # CreatePolicy's tags are never updated by IAM on their own
        missing = {k: v for k, v in spec.tags.items() if pol.tags.get(k) != v}
        if missing:
            plan.add("policy.tag", "tag_policy", "update", "policy", n.policy,
                     {"arn": n.policy_arn, "tags": missing})
        retired = _retired(spec, pol.tags)
        if retired:
            plan.add("policy.untag", "untag_policy", "update", "policy", n.policy,
                     {"arn": n.policy_arn, "keys": retired})
    if obs.role.exists and n.policy_arn not in obs.role.attached:
        plan.add("attach", "attach_role_policy", "create", "attachment", obs.role.name,
                 {"role": obs.role.name, "policy_arn": n.policy_arn}, policy_after,
                 Effect.of("attachment", attached=True))
    prev = obs.previous_role
    if prev and prev.exists and prev.name != obs.role.name and n.policy_arn in prev.attached:
        plan.add("detach.previous", "detach_role_policy", "delete", "attachment", prev.name,
                 {"role": prev.name, "policy_arn": n.policy_arn})


def _lagging(attr: str, want: Any, seen: Any, change: Optional[tuple]) -> bool:
    """``seen`` is the value from before kip's recent change to ``want``: SQS has not shown the
    change yet (``change``: (value before, value set))."""
    return change is not None and _norm(attr, seen) == _norm(attr, change[0]) and \
        _norm(attr, want) == _norm(attr, change[1])


def _retired(spec: DesiredSpec, tags: Optional[dict]) -> list:
    """Keys kip applied before, no longer wanted, still on the resource (never kip's own)."""
    return [k for k in spec.retired_tags if tags is not None and k in tags]


def _version_number(version: dict) -> int:
    digits = "".join(c for c in str(version.get("VersionId", "")) if c.isdigit())
    return int(digits or 0)


def _prune(plan: Plan, names: naming.Names, version: dict) -> Action:
    return plan.add(f"policy.prune.{version['VersionId']}", "delete_policy_version", "delete",
                    "policy_version", names.policy,
                    {"arn": names.policy_arn, "version": version["VersionId"]})


def _delete_rule(plan: Plan, kind: Optional[str], rule: str, st: RuleState,
                 after: tuple = ()) -> None:
    """Remove a rule (its targets first). ``kind``: a legacy rule's kind; None: the one rule."""
    prefix, entry = (f"legacy.{kind}", "legacy_rule") if kind else ("rule", "rule")
    if st.targets:
        after = after + (plan.add(f"{prefix}.untarget", "remove_targets", "delete", "targets",
                                  rule, {"rule": rule, "ids": [t["Id"] for t in st.targets]},
                                  after, Effect.of(entry, kind, target=False)).id,)
    plan.add(f"{prefix}.delete", "delete_rule", "delete", "rule", rule, {"name": rule}, after,
             _gone(entry, kind, target=False))


def plan_teardown(names: naming.Names, cid: naming.ClusterId, obs: Observed
                  ) -> tuple[list[Action], list[dict]]:
    """Delete what the record names, in dependency order; skip (and report) what is not ours."""
    plan, skipped = Plan(), []

    def ours(exists: bool, tags: dict, resource: str, name: str) -> bool:
        if exists and not naming.is_owned(tags, cid):
            skipped.append({"resource": resource, "name": name,
                            "reason": "exists but is not tagged as this cluster's; left untouched"})
        return exists and naming.is_owned(tags, cid)

    rules = {None: names.rule, **names.rules} if names.rule else dict(names.rules)
    for kind, rule in rules.items():
        st = obs.rule(rule)
        if ours(st.exists, st.tags, "rule", rule):
            _delete_rule(plan, kind, rule, st)
    p = obs.policy
    if ours(p.exists, p.tags, "policy", names.policy):
        # IAM refuses to delete a policy still attached to any role, user or group
        # (DeleteConflict): detach it from every one of them first.
        detach = [plan.add(f"detach.{r}", "detach_role_policy", "delete", "attachment", r,
                           {"role": r, "policy_arn": names.policy_arn},
                           effect=Effect("holder", key=r)).id for r in p.attached_roles]
        detach += [plan.add(f"detach.user.{u}", "detach_user_policy", "delete", "attachment", u,
                            {"user": u, "policy_arn": names.policy_arn}).id
                   for u in p.attached_users]
        detach += [plan.add(f"detach.group.{g}", "detach_group_policy", "delete", "attachment",
                            g, {"group": g, "policy_arn": names.policy_arn}).id
                   for g in p.attached_groups]
        prune = [_prune(plan, names, v).id for v in p.versions if not v.get("IsDefaultVersion")]
        plan.add("policy.delete", "delete_policy", "delete", "policy", names.policy,
                 {"arn": names.policy_arn}, tuple(detach + prune),
                 _gone("policy", default_version=None))
    queue_after: tuple = ()
    if ours(obs.queue.exists, obs.queue.tags, "queue", names.queue):
        plan.add("queue.delete", "delete_queue", "delete", "queue", names.queue,
                 {"url": obs.queue.url}, effect=_gone("queue", url=None))
        queue_after = ("queue.delete",)
    if ours(obs.dlq.exists, obs.dlq.tags, "dlq", names.dlq):
        plan.add("dlq.delete", "delete_queue", "delete", "dlq", names.dlq, {"url": obs.dlq.url},
                 queue_after, _gone("dlq", url=None))
    plan.extend(alarms.plan_teardown(cid, obs, skipped))
    return list(plan), skipped

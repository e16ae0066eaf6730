"""Pure: changes AWS applies late, and how a run waits them out.

Queue attributes (``still_settling``): SQS shows a change up to 60 s later (retention up to
15 min); what kip set lately is not drift. And moving a cluster from the five-rule layout to one
rule, without a gap in delivery:

Phase 1 (the first run that sees legacy rules): the one rule and its target are created and the
queue policy allows both the one rule and the legacy rules; the record notes when, but only once
that is confirmed: every write of the run succeeded, or the run read it back (``in_place``).
Phase 2 (a later run, once SQS has had ``POLICY_SETTLE_SECONDS`` to apply the policy everywhere:
attribute changes take up to 60 s) removes the legacy rules, then tightens the policy to the one
rule, and only if what that run observed confirms phase 1: the one rule exists, is enabled, has
its pattern and its target on the queue, and the queue policy read back allows its ARN
(``aws:SourceArn``). A timestamp alone never deletes a rule: unconfirmed, the run goes back to
phase 1 (the legacy rules stay allowed) and the mark starts again. Events keep arriving
throughout: until phase 2, the legacy rules still deliver.
"""
from __future__ import annotations

import calendar
import dataclasses
import json
import time
from typing import Any, Optional

from chalicelib.core import naming, policies
from chalicelib.core.naming import Names
from chalicelib.core.observed import Observed
from chalicelib.core.records import Resources

POLICY_SETTLE_SECONDS = 60


def keep_legacy(names: Names, since: Optional[str], now: float,
                settle_seconds: float = POLICY_SETTLE_SECONDS) -> bool:
    """Whether this run keeps the legacy rules (and their place in the queue policy)."""
    if not names.rules:
        return False
    if since is None:
        return True
    started = calendar.timegm(time.strptime(since, "%Y-%m-%dT%H:%M:%SZ"))
    return now - started < settle_seconds


def allowed_senders(attributes: Optional[dict]) -> set:
    """The rule ARNs a queue policy (as read: the ``Policy`` attribute) lets EventBridge send
    from: the ``aws:SourceArn`` values (``ArnEquals``/``StringEquals``) of its Allow statements
    for ``sqs:SendMessage``. Anything else (no policy, unreadable JSON, wildcards) allows none:
    a doubt keeps the legacy rules."""
    raw = (attributes or {}).get("Policy")
    try:
        doc = json.loads(raw) if isinstance(raw, str) else (raw or {})
    except ValueError:
        return set()
    statements = doc.get("Statement", []) if isinstance(doc, dict) else []
    out: set = set()
    for st in statements if isinstance(statements, list) else [statements]:
        if not isinstance(st, dict) or st.get("Effect") != "Allow":
            continue
        actions = st.get("Action")
        if not {"sqs:SendMessage", "sqs:*", "*"} & set(_listed(actions)):
            continue
        for operator in ("ArnEquals", "StringEquals"):
            out.update(_listed((st.get("Condition", {}).get(operator) or {}).get(
                "aws:SourceArn")))
    return out


def _listed(value: Any) -> list:
    return [value] if isinstance(value, str) else list(value or [])


def in_place(spec: Any, obs: Observed) -> bool:
    """Phase 1 as observed: the one rule exists, is enabled, matches the wanted pattern, targets
    the queue, and the queue policy read back allows the rule's ARN."""
    n, st = spec.names, obs.rule(spec.names.rule)
    return bool(n.rule) and st.exists and st.state == "ENABLED" and \
        st.pattern == spec.rule_pattern and obs.queue.exists and \
        any(t.get("Id") == naming.TARGET_ID and t.get("Arn") == n.queue_arn
            for t in st.targets) and n.rule_arn in allowed_senders(obs.queue.attributes)


def retire_now(spec: Any, obs: Observed) -> bool:
    """Phase 2 in this run: the settle time has passed (``spec.keep_legacy`` false) and what
    the run observed confirms phase 1."""
    return bool(spec.names.rules) and not spec.keep_legacy and in_place(spec, obs)


def for_this_run(spec: Any, obs: Observed) -> Any:
    """The spec a run plans to: as built, unless it would retire the legacy rules while phase 1
    is not confirmed by ``obs``; then phase 1's (the legacy rules stay allowed)."""
    if not spec.names.rules or spec.keep_legacy or in_place(spec, obs):
        return spec
    n = spec.names
    qpolicy = policies.queue_policy(n.queue_arn, [n.rule_arn, *n.rule_arns.values()],
                                    spec.cid.partition)
    attrs = {**spec.queue_attributes, "Policy": json.dumps(qpolicy, sort_keys=True)}
    return dataclasses.replace(spec, keep_legacy=True, queue_policy=qpolicy,
                               queue_attributes=attrs)


def recorded_fields(spec: Any, resources: Resources, ok: bool, now_iso: str,
                    since: Optional[str], observed: Observed) -> dict:
    """The record's names, resources, spec hash and migration mark after a run (``observed``:
    what the run saw before it wrote).

    Phase 1 (kept or gone back to): the mark stays if the run saw phase 1 in place, starts now
    if the run saw it in place for the first time or put it in place (every write succeeded),
    and is cleared otherwise. Phase 2: legacy rules that are gone, or not ours, are forgotten."""
    names: Names = spec.names
    if not names.rules:
        return {"rule_migration_since": None}
    if not retire_now(spec, observed):
        if in_place(spec, observed):
            return {"rule_migration_since": since or now_iso}
        return {"rule_migration_since": now_iso if ok else None}
    gone = {k for k in names.rules
            if not (e := resources.rules.get(k)) or not e.exists
            or not _ours(observed, names.rules[k], spec.cid)}
    trimmed = names.without_legacy(gone)
    res = resources.model_copy(update={"rules": {k: e for k, e in resources.rules.items()
                                                 if k not in gone}})
    return {"names": trimmed.to_dict(), "resources": res,
            "spec_hash": dataclasses.replace(spec, names=trimmed).spec_hash,
            "rule_migration_since": since if trimmed.rules else None}


def _ours(obs: Observed, rule: str, cid: naming.ClusterId) -> bool:
    st = obs.rule(rule)
    return not st.exists or st.tags is None or naming.is_owned(st.tags, cid)


# SQS: "attribute changes can take up to 60 seconds to propagate; MessageRetentionPeriod up to
# 15 minutes" (SetQueueAttributes API reference).
SETTLE = {"MessageRetentionPeriod": 900}
SETTLE_DEFAULT = 60


def still_settling(settling: Optional[dict], now: float) -> dict:
    """The attribute changes kip made that SQS may not show yet:
    {queue key: {attribute: (value before, value set)}}. Seeing the value before is lag, not
    drift; any other value is drift."""
    out: dict = {}
    for key, entry in (settling or {}).items():
        age = now - calendar.timegm(time.strptime(entry["at"], "%Y-%m-%dT%H:%M:%SZ"))
        attrs = {k: (entry.get("before", {}).get(k), v)
                 for k, v in entry.get("attributes", {}).items()
                 if age < SETTLE.get(k, SETTLE_DEFAULT)}
        if attrs:
            out[key] = attrs
    return out


def settled_after(previous: Optional[dict], actions: list, done: dict, observed: object,
                  now: float, now_iso: str) -> Optional[dict]:
    """The record's ``settling`` after a run: what this run changed (and what each attribute
    was before), plus earlier changes still settling."""
    out = {k: v for k, v in (previous or {}).items() if still_settling({k: v}, now)}
    for a in actions:
        if a.id in done and a.op == "set_queue_attributes":
            seen = getattr(observed, a.resource).attributes
            out[a.resource] = {"at": now_iso, "attributes": dict(a.params["attributes"]),
                               "before": {k: seen.get(k) for k in a.params["attributes"]}}
    return out or None

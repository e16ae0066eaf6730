"""Pure: changes AWS applies late, and how a run waits them out.

Queue attributes (``still_settling``): SQS shows a change up to 60 s later (retention up to
15 min); what kip set lately is not drift. And moving a cluster from the five-rule layout to one
rule, without a gap in delivery:

Phase 1 (the first run that sees legacy rules): the one rule and its target are created and the
queue policy allows both the one rule and the legacy rules; the record notes when. Phase 2 (a
later run, once SQS has had ``POLICY_SETTLE_SECONDS`` to apply the policy everywhere: attribute
changes take up to 60 s): the legacy rules are removed, then the policy is tightened to the one
rule. Events keep arriving throughout: until phase 2, the legacy rules still deliver.
"""
from __future__ import annotations

import calendar
import dataclasses
import time
from typing import Optional

from chalicelib.core.naming import Names
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


def recorded_fields(spec: object, resources: Resources, ok: bool, now_iso: str,
                    since: Optional[str]) -> dict:
    """The record's names, resources, spec hash and migration mark after a run: legacy rules
    that are gone (or, after a complete phase 2, all of them) are forgotten."""
    names: Names = spec.names  # type: ignore[attr-defined]
    if not names.rules:
        return {"rule_migration_since": None}
    if spec.keep_legacy:  # type: ignore[attr-defined]
        return {"rule_migration_since": since or now_iso}
    gone = {k for k, e in resources.rules.items() if not e.exists} if not ok else set(names.rules)
    trimmed = names.without_legacy(gone)
    res = resources.model_copy(update={"rules": {k: e for k, e in resources.rules.items()
                                                 if k not in gone}})
    return {"names": trimmed.to_dict(), "resources": res,
            "spec_hash": dataclasses.replace(spec, names=trimmed).spec_hash,  # type: ignore
            "rule_migration_since": since if trimmed.rules else None}


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

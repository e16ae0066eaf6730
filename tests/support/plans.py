"""Plans without AWS: a settings object, one cluster's identity and names, the desired spec of a
request, what AWS looks like once it converged, and the five-rule layout kip moves from."""
from __future__ import annotations

import copy
import json

from chalicelib.config import Settings
from chalicelib.core import naming, policies, spec
from chalicelib.core.observed import Observed, PolicyState, QueueState, RoleState, RuleState
from tests.support.world import ACCOUNT, REGION, ROLE

SETTINGS = Settings(region=REGION, account_id=ACCOUNT)
CID = naming.ClusterId(ACCOUNT, REGION, "payments-prod")
NAMES = naming.names_for(CID, SETTINGS.prefix, SETTINGS.iam_path)


def desired(**body) -> spec.DesiredSpec:
    req = spec.parse_request({"cluster_name": "payments-prod", **body})
    return spec.build_spec(req, CID, NAMES, SETTINGS, body.get("kms_key_id"))


def converged(s: spec.DesiredSpec, role_exists: bool = True) -> Observed:
    """What AWS looks like after a successful provision of ``s``."""
    n = s.names
    tags = s.tags.copy       # every resource gets its own copy
    target = {"Id": naming.TARGET_ID, "Arn": n.queue_arn}
    return Observed(
        queue=QueueState(True, "https://sqs/q", dict(s.queue_attributes), tags()),
        dlq=QueueState(True, "https://sqs/dlq", dict(s.dlq_attributes), tags()),
        rules={n.rule: RuleState(True, copy.deepcopy(s.rule_pattern), "ENABLED", tags(),
                                 [dict(target)])},
        policy=PolicyState(True, tags(), "v1", copy.deepcopy(s.controller_policy),
                           [{"VersionId": "v1", "IsDefaultVersion": True}], [ROLE]),
        role=RoleState(ROLE, role_exists, [n.policy_arn] if role_exists else []),
    )


def by_id(actions: list) -> dict:
    return {a.id: a for a in actions}


def before(actions: list, first: str, then: str) -> bool:
    """``then`` (transitively) waits for ``first``."""
    ids = by_id(actions)
    stack, seen = list(ids[then].after), set()
    while stack:
        aid = stack.pop()
        if aid == first:
            return True
        if aid not in seen and aid in ids:
            seen.add(aid)
            stack.extend(ids[aid].after)
    return False


LEGACY = naming.names_for(CID, SETTINGS.prefix, SETTINGS.iam_path, legacy=True)


def legacy_world(keep_legacy: bool) -> tuple:
    """A cluster provisioned with five rules, now planned with the one-rule layout."""
    req = spec.parse_request({"cluster_name": "payments-prod"})
    s = spec.build_spec(req, CID, LEGACY, SETTINGS, keep_legacy=keep_legacy)
    obs = converged(s)
    del obs.rules[LEGACY.rule]
    old_policy = json.loads(s.queue_attributes["Policy"])
    old_policy["Statement"][0]["Condition"]["ArnEquals"]["aws:SourceArn"] = sorted(
        LEGACY.rule_arns.values())
    obs.queue.attributes["Policy"] = json.dumps(old_policy)
    target = {"Id": naming.TARGET_ID, "Arn": LEGACY.queue_arn}
    for kind, rule in LEGACY.rules.items():
        obs.rules[rule] = RuleState(True, policies.EVENT_PATTERNS[kind], "ENABLED",
                                    dict(s.tags), [dict(target)])
    return s, obs

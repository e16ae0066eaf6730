"""Pure: whether a customer KMS key can encrypt the interruption queue.

EventBridge delivers to an SSE-KMS queue only if the key is an enabled symmetric encryption key
and its key policy lets the service principal ``events.amazonaws.com`` use ``kms:GenerateDataKey``
and ``kms:Decrypt`` (Amazon SQS Developer Guide, "Enable compatibility between event sources from
AWS services and encrypted queues"; EventBridge User Guide, "Authorizing EventBridge to use a
customer managed key"). Otherwise every event is dropped silently. kip never edits a customer's
key policy: it refuses the key and says which statement to add.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Optional

from chalicelib.errors import ValidationError
from chalicelib.core.observed import KeyState

EVENTS_PRINCIPAL = "events.amazonaws.com"
REQUIRED_ACTIONS = ("kms:GenerateDataKey", "kms:Decrypt")
ALLOWED = "an enabled customer-managed symmetric encryption KMS key whose key policy lets " \
          "events.amazonaws.com use kms:GenerateDataKey and kms:Decrypt"


def required_statement() -> dict:
    """The key-policy statement a customer adds so EventBridge can write to the queue."""
    return {"Sid": "AllowEventBridgeToUseTheKeyForKarpenterInterruptionQueues",
            "Effect": "Allow", "Principal": {"Service": EVENTS_PRINCIPAL},
            "Action": list(REQUIRED_ACTIONS), "Resource": "*"}


# -- the policy evaluator (IAM semantics, the subset key policies use) ---------------------------
@dataclass(frozen=True)
class Gap:
    """A required action the key policy does not let EventBridge use, and why."""
    action: str
    reason: str          # "not allowed" | "denied"
    statement: Optional[str] = None     # the Sid (or index) of the denying statement

    def describe(self) -> str:
        if self.reason == "denied":
            return f"{self.action} is denied to {EVENTS_PRINCIPAL} by statement {self.statement}"
        return f"no statement allows {EVENTS_PRINCIPAL} {self.action}"


def _as_list(value: Any) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _wildcard(pattern: str, value: str, ignore_case: bool) -> bool:
    """IAM wildcards: ``*`` any run of characters, ``?`` one character."""
    rx = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(rx, value, re.IGNORECASE if ignore_case else 0) is not None


def _action_in(patterns: Any, action: str) -> bool:
    return any(isinstance(p, str) and _wildcard(p, action, True) for p in _as_list(patterns))


def _covers_action(stmt: dict, action: str) -> bool:
    if "Action" in stmt:
        return _action_in(stmt["Action"], action)
    if "NotAction" in stmt:
        return not _action_in(stmt["NotAction"], action)
    return False


def _covers_resource(stmt: dict, key_arn: str) -> bool:
    # In a key policy "*" means "this key"; a pattern must match the key's ARN.
    if "Resource" in stmt:
        return any(isinstance(p, str) and _wildcard(p, key_arn, False)
                   for p in _as_list(stmt["Resource"]))
    if "NotResource" in stmt:
        return not any(isinstance(p, str) and _wildcard(p, key_arn, False)
                       for p in _as_list(stmt["NotResource"]))
    return False


def _names_service(principal: Any) -> bool:
    """The principal block names events.amazonaws.com explicitly."""
    if not isinstance(principal, dict):
        return False
    return any(isinstance(s, str) and s.strip().lower() == EVENTS_PRINCIPAL
               for s in _as_list(principal.get("Service")))


def _is_everyone(principal: Any) -> bool:
    """``"*"`` or ``{"AWS": "*"}`` (which includes service principals)."""
    if principal == "*":
        return True
    return isinstance(principal, dict) and "*" in _as_list(principal.get("AWS"))


def _secure_transport_only(condition: Any) -> bool:
    """A Deny guarded only by ``aws:SecureTransport`` = false: AWS services call over TLS, so it
    never applies to EventBridge."""
    if not isinstance(condition, dict) or set(condition) != {"Bool"}:
        return False
    block = condition["Bool"]
    return (isinstance(block, dict) and len(block) == 1
            and {k.lower(): v for k, v in block.items()}.get("aws:securetransport")
            in ("false", False, ["false"], [False]))


def _allows(stmt: dict) -> bool:
    """An Allow statement applies to EventBridge. A service-principal grant counts whatever its
    conditions (AWS recommends aws:SourceArn / aws:SourceAccount there); a ``*`` principal counts
    only without conditions: a condition could exclude the service, so it is not relied on."""
    if stmt.get("Effect") != "Allow" or "NotPrincipal" in stmt:
        return False
    principal = stmt.get("Principal")
    if _names_service(principal):
        return True
    return _is_everyone(principal) and not stmt.get("Condition")


def _denies(stmt: dict) -> bool:
    """A Deny statement that may apply to EventBridge (conservative: a condition-guarded Deny is
    assumed to apply, except the aws:SecureTransport=false guard)."""
    if stmt.get("Effect") != "Deny":
        return False
    if "NotPrincipal" in stmt:
        applies = not _names_service(stmt["NotPrincipal"]) and not _is_everyone(stmt["NotPrincipal"])
    else:
        principal = stmt.get("Principal")
        applies = _names_service(principal) or _is_everyone(principal)
    return applies and not _secure_transport_only(stmt.get("Condition"))


def _statements(policy: Any) -> list[dict]:
    if not isinstance(policy, dict):
        return []
    return [s for s in _as_list(policy.get("Statement")) if isinstance(s, dict)]


def eventbridge_gaps(policy: Any, key_arn: str) -> list[Gap]:
    """What the key policy does not let ``events.amazonaws.com`` do on ``key_arn``; empty when
    both required actions are allowed and not explicitly denied (an explicit Deny wins)."""
    statements = _statements(policy)
    gaps = []
    for action in REQUIRED_ACTIONS:
        deny = next((i for i, s in enumerate(statements)
                     if _denies(s) and _covers_action(s, action) and _covers_resource(s, key_arn)),
                    None)
        if deny is not None:
            sid = statements[deny].get("Sid")
            gaps.append(Gap(action, "denied", repr(sid) if sid else f"#{deny + 1}"))
        elif not any(_allows(s) and _covers_action(s, action) and _covers_resource(s, key_arn)
                     for s in statements):
            gaps.append(Gap(action, "not allowed"))
    return gaps


# -- the decision ---------------------------------------------------------------------------------
def _refuse(message: str, **detail: Any) -> ValidationError:
    return ValidationError(f"kms_key_id: {message}", field="kms_key_id", allowed=ALLOWED,
                           details=[{"field": "kms_key_id", "message": message,
                                     **{k: v for k, v in detail.items() if v is not None}}])


def usable_key_arn(key_id: str, key: Optional[KeyState], account: str, region: str,
                   policy: Optional[dict] = None) -> str:
    """The key's ARN; refuses keys EventBridge cannot use (a 400 naming the key and the fix).

    ``policy``: the key policy as GetKeyPolicy returned it (decoded); ``None`` when it could not
    be found (the key vanished between the two reads)."""
    if key is None:
        raise ValidationError(f"kms_key_id: key {key_id!r} was not found in account {account} "
                              f"region {region}", field="kms_key_id",
                              allowed="an existing customer-managed KMS key")
    if key.manager == "AWS":
        raise ValidationError("kms_key_id: AWS-managed keys cannot be used: EventBridge cannot "
                              "encrypt with them", field="kms_key_id",
                              allowed="a customer-managed KMS key")
    named = f"key {key_id!r} ({key.arn})" if key_id != key.arn else f"key {key.arn}"
    if key.state == "PendingDeletion":
        raise _refuse(f"{named} is pending deletion; cancel the deletion (kms:CancelKeyDeletion) "
                      "and enable it, or use another key", key_state=key.state)
    if key.state == "Disabled":
        raise _refuse(f"{named} is disabled; enable it (kms:EnableKey) or use another key",
                      key_state=key.state)
    if key.state not in (None, "Enabled"):
        raise _refuse(f"{named} is in state {key.state}, not Enabled; EventBridge can use only "
                      "an enabled key", key_state=key.state)
    if key.spec not in (None, "SYMMETRIC_DEFAULT"):
        raise _refuse(f"{named} has key spec {key.spec}; SQS and EventBridge need a symmetric "
                      "encryption key (KeySpec SYMMETRIC_DEFAULT)", key_spec=key.spec)
    if key.usage not in (None, "ENCRYPT_DECRYPT"):
        raise _refuse(f"{named} has key usage {key.usage}; SQS and EventBridge need "
                      "KeyUsage ENCRYPT_DECRYPT", key_usage=key.usage)
    if policy is None:
        raise ValidationError(f"kms_key_id: {named} has no key policy kip could find in account "
                              f"{account} region {region}", field="kms_key_id",
                              allowed="an existing customer-managed KMS key")
    gaps = eventbridge_gaps(policy, key.arn)
    if gaps:
        stmt = required_statement()
        denied = [g for g in gaps if g.reason == "denied"]
        fix = ("remove or narrow the Deny statement(s) for events.amazonaws.com and make sure "
               if denied else "add ")
        raise _refuse(
            f"the key policy of {named} does not let EventBridge use the key, so every "
            f"interruption event would be dropped silently: "
            f"{'; '.join(g.describe() for g in gaps)}. kip does not edit key policies: "
            f"{fix}this statement is in the key policy: {json.dumps(stmt, sort_keys=True)}",
            missing=[g.action for g in gaps], denied_by=[g.statement for g in denied] or None,
            statement_to_add=stmt)
    return key.arn


def unreadable_policy(key_id: str, account: str, region: str, aws_code: str,
                      role: str) -> ValidationError:
    """GetKeyPolicy was refused: kip will not assume the policy is right (it never fails open)."""
    message = (f"kip could not read the key policy of key {key_id!r} in account {account} "
               f"region {region} ({aws_code}), so it cannot check that EventBridge may use the "
               f"key. Allow {role} kms:GetKeyPolicy (and kms:DescribeKey) on this key, in the key "
               "policy or in the role's IAM policy if the key policy delegates to the account, "
               "then retry")
    return ValidationError(f"kms_key_id: {message}", field="kms_key_id", allowed=ALLOWED,
                           details=[{"field": "kms_key_id", "message": message,
                                     "missing_permission": "kms:GetKeyPolicy", "role": role}])

"""Pure: the typed record of a cluster, and how a run's actions change it.

Each planner action carries an :class:`Effect` on one entry of the record. ``apply`` starts from
what was observed and applies the effects of the actions that finished, in plan order: nothing
parses action ids.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field

from chalicelib.core import naming
from chalicelib.config import STATUSES
from chalicelib.core.observed import Observed, RoleInfo

Status = Literal[STATUSES]  # type: ignore[valid-type]
Source = Literal["api", "eks-event", "reconcile", "backfill"]
INTERNAL = ("lease_owner", "write_id")


class _Entry(BaseModel):
    model_config = ConfigDict(extra="allow")


class QueueEntry(_Entry):
    name: str
    arn: str
    url: Optional[str] = None
    exists: bool = False


class RuleEntry(_Entry):
    name: str
    arn: str
    exists: bool = False
    enabled: bool = False
    target: bool = False


class PolicyEntry(_Entry):
    name: str
    arn: str
    path: str
    exists: bool = False
    default_version: Optional[str] = None


class AttachmentEntry(_Entry):
    role_name: str = ""
    role_arn: str = ""
    role_exists: bool = False
    attached: bool = False
    attached_roles: Optional[list[str]] = None    # every role holding the policy (teardown)


class AlarmEntry(_Entry):
    """A CloudWatch alarm kip made for this cluster (``KIP_ALARMS``). Recorded so that a teardown,
    or a run after ``KIP_ALARMS`` was turned off, still knows to look for it and delete it."""
    name: str
    exists: bool = False


class Resources(_Entry):
    queue: Optional[QueueEntry] = None
    dlq: Optional[QueueEntry] = None
    rule: Optional[RuleEntry] = None                # the cluster's one rule
    rules: dict[str, RuleEntry] = Field(default_factory=dict)   # the five-rule layout (legacy)
    policy: Optional[PolicyEntry] = None
    attachment: Optional[AttachmentEntry] = None
    alarms: dict[str, AlarmEntry] = Field(default_factory=dict)    # name -> alarm (KIP_ALARMS)


class LastError(_Entry):
    step: str
    call: str
    resource: str
    code: Optional[str] = None
    message: str
    at: str
    during: Literal["provisioning", "teardown", "admission"]


class Karpenter(_Entry):
    model_config = ConfigDict(extra="allow", populate_by_name=True)
    interruption_queue: str = Field(alias="settings.interruptionQueue")
    helm_values: dict

    @classmethod
    def for_queue(cls, queue: str) -> "Karpenter":
        return cls(interruption_queue=queue,
                   helm_values={"settings": {"interruptionQueue": queue}})


class EksCluster(_Entry):
    arn: Optional[str] = None
    status: Optional[str] = None
    version: Optional[str] = None
    # DescribeCluster's createdAt (epoch seconds) of the cluster generation kip wired: an event
    # about an older generation (deleted, re-created under the same name and ARN) is stale
    created_at: Optional[float] = None
    # EKS Auto Mode turned on after kip took the cluster on: its resources are kept (self-managed
    # Karpenter may still run during the move); DELETE the cluster's record once it is gone.
    auto_mode: Optional[bool] = None


class Health(_Entry):
    """The consumer's health as the last sweep found it (``GET /clusters?consumer=``)."""
    consumer: Literal["stale", "active", "idle", "unknown"]
    backlog: Optional[int] = None
    in_flight: Optional[int] = None
    dlq_depth: Optional[int] = None
    oldest_message_age_seconds: Optional[float] = None
    checked_at: Optional[str] = None


class ClusterRecord(BaseModel):
    """One cluster's record: the inventory a portal reads, and the state a retry resumes from."""
    model_config = ConfigDict(extra="allow", populate_by_name=True)

    id: str
    account_id: str
    region: str
    cluster_name: str
    status: Status
    version: int = 0
    write_id: Optional[str] = None
    lease_owner: Optional[str] = None
    lease_expires: Optional[int] = None
    source: Optional[Source] = None
    request: dict = Field(default_factory=dict)
    spec_hash: Optional[str] = None
    event_kinds: list[str] = Field(default_factory=list)
    names: Optional[dict] = None
    resources: Resources = Field(default_factory=Resources)
    applied: Optional[list[str]] = None
    removed: Optional[list[dict]] = None
    karpenter: Optional[Karpenter] = None
    cluster: Optional[EksCluster] = None
    last_error: Optional[LastError] = None
    requested_by: Optional[str] = None     # the API caller of the last change (JWT sub, IAM ARN)
    owner_team: Optional[str] = None       # the team (KIP_AUTHZ) whose callers may change it
    health: Optional[Health] = None        # written by the sweep when the consumer state changes
    settling: Optional[dict] = None     # queue attributes kip set lately: {key: {at, attributes}}
    tag_keys: Optional[list[str]] = None  # the tag keys kip applied (removed when unwanted)
    verified_at: Optional[str] = None   # the last full look at every resource (tags included)
    cluster_missing_since: Optional[str] = None  # the sweep found the EKS cluster gone (orphan)
    held_at: Optional[str] = None       # teardown_held: when the teardown budget held it
    unreachable_at: Optional[str] = None    # unreachable: when AssumeRole was last refused
    rule_migration_since: Optional[str] = None  # when the queue policy first allowed the one rule
    # brownfield (docs/BROWNFIELD.md): how the controller role was found, who handles the
    # cluster's interruptions, and another tool's wiring kip found for that role
    role_source: Optional[Literal["request", "pod-identity", "irsa", "template"]] = None
    handler: Optional[Literal["kip", "external", "auto-mode", "none"]] = None
    existing_handler: Optional[dict] = None
    cutover: Optional[dict] = None      # on_existing=takeover: {state, next} (core.brownfield)
    created_at: Optional[str] = None
    updated_at: Optional[str] = None

    @property
    def cid(self) -> naming.ClusterId:
        return naming.ClusterId(self.account_id, self.region, self.cluster_name)

    def recorded_names(self) -> Optional[naming.Names]:
        return naming.Names.from_dict(self.names) if self.names else None

    def item(self) -> dict:
        """The record as stored (top-level empty fields left out)."""
        item = {k: v for k, v in self.model_dump(by_alias=True).items() if v is not None}
        attachment = item.get("resources", {}).get("attachment") or {}
        if attachment.get("attached_roles") is None:    # only a stopped teardown lists them
            attachment.pop("attached_roles", None)
        if not item.get("resources", {}).get("alarms", True):     # only with KIP_ALARMS
            item["resources"].pop("alarms")
        return item

    def public(self) -> dict:
        """The record as the API shows it (no lease internals)."""
        return {k: v for k, v in self.item().items() if k not in INTERNAL}

    # Read access by field, as the API shows the record (``record["resources"]["queue"]``).
    def __getitem__(self, key: str) -> Any:
        return self.item()[key]

    def __contains__(self, key: object) -> bool:
        return key in self.item()

    def get(self, key: str, default: Any = None) -> Any:
        return self.item().get(key, default)

    def lease_live(self, now: float) -> bool:
        return bool(self.lease_owner) and int(self.lease_expires or 0) >= now


# ----------------------------------------------------------------------------- effects

class Result:
    """A value taken from the finished action's answer (e.g. the new queue's URL)."""

    def __init__(self, key: str) -> None:
        self.key = key

    def __repr__(self) -> str:
        return f"Result({self.key!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Result) and other.key == self.key

    def __hash__(self) -> int:
        return hash(("Result", self.key))


@dataclass(frozen=True)
class Effect:
    """What a finished action changes in the record: fields of one entry.

    ``entry`` is ``queue``, ``dlq``, ``rule`` (the one rule), ``policy``, ``attachment``,
    ``legacy_rule`` (``key`` = event kind, the five-rule layout), ``holder`` (``key`` = a
    role the policy was detached from) or ``alarm`` (``key`` = the alarm's name)."""
    entry: str
    sets: tuple = ()
    key: Optional[str] = None

    @classmethod
    def of(cls, entry: str, key: Optional[str] = None, **fields: Any) -> "Effect":
        return cls(entry, tuple(sorted(fields.items())), key)


def from_observed(names: naming.Names, obs: Observed, kinds: Iterable[str], role_name: str,
             role_arn: str, role_exists: bool, cid: Optional[naming.ClusterId] = None) -> Resources:
    """The record's resources as the run found them, before any action (alarms: the ones this
    cluster owns, when the run read them)."""
    def queue(key: str) -> QueueEntry:
        st = getattr(obs, key)
        return QueueEntry(name=getattr(names, key), arn=getattr(names, f"{key}_arn"),
                          url=st.url if st.exists else None, exists=st.exists)

    def rule(name: str, arn: str, enabled: bool) -> RuleEntry:
        st = obs.rule(name)
        return RuleEntry(name=name, arn=arn, exists=st.exists, enabled=enabled,
                         target=st.exists and any(t.get("Id") == naming.TARGET_ID
                                                  for t in st.targets))
    legacy = {kind: rule(name, names.rule_arns[kind], kind in kinds)
              for kind, name in names.rules.items()}
    pol = obs.policy
    return Resources(
        queue=queue("queue"), dlq=queue("dlq"),
        rule=rule(names.rule, names.rule_arn, True) if names.rule else None, rules=legacy,
        policy=PolicyEntry(name=names.policy, arn=names.policy_arn, path=names.policy_path,
                           exists=pol.exists,
                           default_version=pol.default_version if pol.exists else None),
        attachment=AttachmentEntry(role_name=role_name, role_arn=role_arn,
                                   role_exists=role_exists,
                                   attached=role_exists and names.policy_arn in obs.role.attached),
        alarms=(owned_alarms(obs, cid) or {}) if cid is not None else {})


def owned_alarms(obs: Observed, cid: naming.ClusterId) -> Optional[dict[str, AlarmEntry]]:
    """The alarms the run found that are this cluster's own; None when it did not read them."""
    if obs.alarms is None:
        return None
    return {name: AlarmEntry(name=name, exists=True)
            for name, seen in sorted(obs.alarms.items()) if naming.is_owned(seen.get("tags"), cid)}


def apply(resources: Resources, actions: Iterable[Any], done: dict[str, dict]) -> Resources:
    """``resources`` after the effects of every finished action (``done``: id -> answer)."""
    res = resources.model_copy(deep=True)
    for action in actions:
        effect: Optional[Effect] = getattr(action, "effect", None)
        if effect is None or action.id not in done:
            continue
        values = {k: (done[action.id].get(v.key) if isinstance(v, Result) else v)
                  for k, v in effect.sets}
        _set(res, effect, values)
    return res


def _set(res: Resources, effect: Effect, values: dict) -> None:
    if effect.entry == "legacy_rule":
        entry: Any = res.rules[effect.key]
    elif effect.entry == "alarm":
        if values.get("exists") is False:
            res.alarms.pop(effect.key, None)
            return
        entry = res.alarms.setdefault(effect.key, AlarmEntry(name=effect.key))
    elif effect.entry == "holder":
        att = res.attachment or AttachmentEntry()
        att.attached_roles = [r for r in (att.attached_roles or []) if r != effect.key]
        if effect.key == att.role_name:
            att.attached = False
        res.attachment = att
        return
    else:
        entry = getattr(res, effect.entry)
    for key, value in values.items():
        setattr(entry, key, value)


def known_urls(record: Optional["ClusterRecord"]) -> dict:
    """The queue URLs a record holds for queues it says exist."""
    res = record.resources if record else None
    return {key: entry.url for key in ("queue", "dlq")
            if res and (entry := getattr(res, key)) and entry.exists and entry.url}


def known_role(record: Optional["ClusterRecord"], name: str) -> Optional[RoleInfo]:
    """The role as the record resolved it, when it is ``name`` and existed."""
    att = record.resources.attachment if record else None
    if not att or att.role_name != name or not att.role_exists or not att.role_arn:
        return None
    path = att.role_arn.split(":role", 1)[1].rsplit("/", 1)[0] + "/"
    return RoleInfo(name=name, arn=att.role_arn, path=path)


def from_teardown(names: naming.Names, obs: Observed, kinds: Iterable[str],
                      attachment: Optional[AttachmentEntry],
                      cid: Optional[naming.ClusterId] = None) -> Resources:
    """As ``observed``, for a teardown: the role comes from the record, and every role that
    holds the policy is listed (the detaches remove them)."""
    att = attachment or AttachmentEntry()
    res = from_observed(names, obs, kinds, att.role_name, att.role_arn, att.role_exists, cid)
    res.attachment.attached_roles = list(obs.policy.attached_roles)
    res.attachment.attached = att.role_name in obs.policy.attached_roles
    return res

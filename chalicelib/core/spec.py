"""Pure: the request model (validated with pydantic) and the desired resources it implies."""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr
from pydantic import ValidationError as PydanticValidationError
from pydantic import AfterValidator, ValidationInfo, field_validator, model_validator

from chalicelib.core import cutover, naming, policies
from chalicelib.core.health import ConsumerState
from chalicelib.config import ALL_EVENT_KINDS, STATUSES, Settings
from chalicelib.errors import Forbidden, ValidationError

DEFAULT_RETENTION = 1209600      # 14 days, the SQS maximum
DEFAULT_VISIBILITY = 300
DEFAULT_MAX_RECEIVE = 5
DLQ_RETENTION = 1209600

# ASCII classes ([0-9], [A-Za-z0-9_]) rather than \d and \w, which also match other scripts' digits
# and letters; every check is a fullmatch, so a trailing newline never passes.
ROLE_NAME_RE = re.compile(r"^[A-Za-z0-9_+=,.@-]{1,64}$")
ROLE_ARN_RE = re.compile(
    r"^arn:(?P<partition>aws|aws-cn|aws-us-gov|aws-iso|aws-iso-b):iam::(?P<account>[0-9]{12}):"
    r"role(?P<path>/(?:[\x21-\x7e]{0,510}/)?)(?P<name>[A-Za-z0-9_+=,.@-]{1,64})$")
KMS_KEY_RE = re.compile(
    r"^(?:(?:mrk-[0-9a-f]{32})|(?:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})"
    r"|(?:alias/[A-Za-z0-9/_-]{1,250})"
    r"|(?:arn:(?:aws|aws-cn|aws-us-gov|aws-iso|aws-iso-b):kms:[a-z0-9-]+:[0-9]{12}:"
    r"(?:key/(?:mrk-[0-9a-f]{32}|[0-9a-f-]{36})|alias/[A-Za-z0-9/_-]{1,250})))$")
TAG_KEY_RE = re.compile(r"^[\w.:/=+\-@ ]{1,128}$")
TAG_VALUE_RE = re.compile(r"^[\w.:/=+\-@ ]{0,256}$")
RESERVED_TAG_PREFIXES = ("aws:", "kip.io/", "karpenter.sh/")
# AWS allows 50 tags per resource (SQS, EventBridge, IAM); kip adds its own to every resource.
MAX_TAGS_PER_RESOURCE = 50
KIP_TAG_KEYS = (naming.MANAGED_BY_TAG, naming.CLUSTER_TAG, naming.DISCOVERY_TAG)
EventKind = Literal[ALL_EVENT_KINDS]  # type: ignore[valid-type]

ALLOWED = {
    "cluster_name": "1-100 characters: letters, digits, '-' and '_', starting with a letter or digit",
    "account_id": "12 digits",
    "region": "an AWS region code such as eu-west-1",
    "controller_role": "an IAM role name ([A-Za-z0-9+=,.@_-], 1-64) or a role ARN in the cluster's account",
    "event_kinds": "a list without repeats drawn from " + ", ".join(ALL_EVENT_KINDS)
                   + "; it must include spot_interruption",
    "kms_key_id": "a customer-managed KMS key id, key ARN, alias name or alias ARN; not alias/aws/*",
    "message_retention_seconds": "an integer from 60 to 1209600",
    "visibility_timeout_seconds": "an integer from 0 to 43200",
    "max_receive_count": "an integer from 1 to 1000",
    "tags": "at most 20 tags; keys 1-128 and values 0-256 of letters, digits, spaces and _.:/=+-@; "
            "keys may not start with aws:, kip.io/ or karpenter.sh/, and must differ from each other "
            "and from KIP_DEFAULT_TAGS keys in more than case (IAM tag keys are case-insensitive); "
            "at most 50 tags per resource with KIP_DEFAULT_TAGS and kip's own 3",
    "dry_run": "true or false",
    "on_existing": "report, coexist or takeover",
    "limit": "an integer from 1 to 100",
    "next_token": "the next_token of the previous page of the same query",
    "status": "one of " + ", ".join(STATUSES),
    "handler": "one of kip, external, auto-mode, none",
    "accounts": "1-50 distinct 12-digit account ids",
    "regions": "1-20 distinct AWS region codes such as eu-west-1",
}


def tag_problem(tags: dict, default_tags: dict) -> Optional[str]:
    """Why AWS would refuse the tags kip puts on every resource, or None. IAM tag keys are
    case-insensitive (``Team`` and ``team`` collide at iam:CreatePolicy, after the queues and rules
    exist), so keys are compared case-insensitively with each other, with KIP_DEFAULT_TAGS (a key
    spelled exactly like a default overrides it) and with kip's own tags."""
    seen: dict[str, list[str]] = {}
    for key in tags:
        seen.setdefault(key.lower(), []).append(key)
    clashes = [sorted(keys) for keys in seen.values() if len(keys) > 1]
    if clashes:
        pairs = "; ".join(" and ".join(repr(k) for k in keys) for keys in clashes)
        return (f"tag keys {pairs} differ only in case; IAM tag keys are case-insensitive, so "
                "AWS would refuse them as duplicates: keep one spelling")
    own = {k.lower(): k for k in (*default_tags, *KIP_TAG_KEYS)}
    taken = [(key, own[key.lower()]) for key in tags
             if key.lower() in own and key != own[key.lower()]]
    if taken:
        pairs = "; ".join(f"{k!r} collides with {o!r}" for k, o in taken)
        return (f"tag keys collide case-insensitively with tags kip sets on every resource "
                f"(KIP_DEFAULT_TAGS and {', '.join(KIP_TAG_KEYS)}): {pairs}; IAM tag keys are "
                "case-insensitive: use the exact spelling to override a default, or another key")
    total = len({**default_tags, **tags}) + len(KIP_TAG_KEYS)
    if total > MAX_TAGS_PER_RESOURCE:
        return (f"{total} tags per resource with KIP_DEFAULT_TAGS and kip's own "
                f"{len(KIP_TAG_KEYS)}; AWS allows at most {MAX_TAGS_PER_RESOURCE}")
    return None


class ClusterRequest(BaseModel):
    """The body of ``POST /clusters``; also what the EKS trigger and reconcile build."""
    model_config = ConfigDict(extra="forbid", frozen=True)

    cluster_name: StrictStr = Field(pattern=naming.CLUSTER_NAME_RE.pattern)
    account_id: Optional[StrictStr] = Field(default=None, pattern=naming.ACCOUNT_RE.pattern)
    region: Optional[StrictStr] = Field(default=None, pattern=naming.REGION_RE.pattern)
    controller_role: Optional[StrictStr] = None
    event_kinds: Optional[list[EventKind]] = Field(default=None, min_length=1, max_length=5)
    kms_key_id: Optional[StrictStr] = None
    message_retention_seconds: Optional[StrictInt] = Field(default=None, ge=60, le=1209600)
    visibility_timeout_seconds: Optional[StrictInt] = Field(default=None, ge=0, le=43200)
    max_receive_count: Optional[StrictInt] = Field(default=None, ge=1, le=1000)
    tags: Optional[dict[StrictStr, StrictStr]] = Field(default=None, max_length=20)
    # the team the cluster is provisioned for (KIP_AUTHZ), when several of the caller's cover it
    team: Optional[StrictStr] = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")
    # another tool already handles the cluster: report (409, nothing created), coexist (kip's
    # wiring beside it) or takeover (beside it, with a cutover the record walks through);
    # default: the deployment's KIP_ON_EXISTING
    on_existing: Optional[Literal["report", "coexist", "takeover"]] = None
    dry_run: StrictBool = False

    @field_validator("controller_role")
    @classmethod
    def _role(cls, v: Optional[str]) -> Optional[str]:
        if v is not None and not (ROLE_NAME_RE.fullmatch(v) or ROLE_ARN_RE.fullmatch(v)):
            raise ValueError("not a role name or role ARN")
        return v

    @field_validator("event_kinds")
    @classmethod
    def _kinds(cls, v: Optional[list[str]]) -> Optional[list[str]]:
        if v is None:
            return v
        if len(set(v)) != len(v):
            raise ValueError("repeats a kind")
        if "spot_interruption" not in v:
            raise ValueError("must include spot_interruption")
        return [k for k in ALL_EVENT_KINDS if k in v]

    @field_validator("kms_key_id")
    @classmethod
    def _kms(cls, v: Optional[str]) -> Optional[str]:
        if v is None:
            return v
        if re.search(r"(^|:)alias/aws/", v):
            raise ValueError("AWS-managed keys (alias/aws/*, such as alias/aws/sqs) cannot be used: "
                             "EventBridge cannot encrypt with them, so events would never arrive. "
                             "Use a customer-managed key whose policy lets events.amazonaws.com use "
                             "kms:GenerateDataKey and kms:Decrypt")
        if not KMS_KEY_RE.fullmatch(v):
            raise ValueError("not a KMS key id, key ARN, alias or alias ARN")
        return v

    @field_validator("tags")
    @classmethod
    def _tags(cls, v: Optional[dict[str, str]], info: ValidationInfo) -> Optional[dict[str, str]]:
        for key, value in (v or {}).items():
            if not TAG_KEY_RE.fullmatch(key) or key.lower().startswith(RESERVED_TAG_PREFIXES):
                raise ValueError(f"tag key {key[:40]!r} is not allowed")
            if not TAG_VALUE_RE.fullmatch(value):
                raise ValueError(f"tag value for {key[:40]!r} is not allowed")
        if v:       # (without a context, build_spec checks the merged tags again)
            problem = tag_problem(v, (info.context or {}).get("default_tags") or {})
            if problem:
                raise ValueError(problem)
        return v

    @model_validator(mode="after")
    def _role_partition(self) -> "ClusterRequest":
        m = ROLE_ARN_RE.fullmatch(self.controller_role or "")
        if m and self.region and m["partition"] != naming.partition_for(self.region):
            raise ValueError("controller_role: the role ARN is in partition "
                             f"{m['partition']}, the region {self.region} is in "
                             f"{naming.partition_for(self.region)}")
        return self


def _page_limit(v: str) -> str:
    if not 1 <= int(v) <= 100:
        raise ValueError("must be an integer from 1 to 100")
    return v


# a page's size in a query string (GET /clusters, history): 1 to 100
PageLimit = Annotated[StrictStr, Field(pattern=r"^[0-9]{1,3}$"), AfterValidator(_page_limit)]


class ListQuery(BaseModel):
    """The query of ``GET /clusters``."""
    model_config = ConfigDict(extra="forbid", frozen=True)
    limit: PageLimit = "50"
    next_token: Optional[StrictStr] = Field(default=None, max_length=4096)
    status: Optional[Literal[STATUSES]] = None  # type: ignore[valid-type]
    consumer: Optional[ConsumerState] = None
    # who handles the cluster's interruptions (docs/BROWNFIELD.md): the fleet's coverage
    handler: Optional[Literal["kip", "external", "auto-mode", "none"]] = None


class IdentityQuery(BaseModel):
    """``account_id`` and ``region`` of the routes under ``/clusters/{cluster_name}``."""
    model_config = ConfigDict(extra="forbid", frozen=True)
    account_id: Optional[StrictStr] = Field(default=None, pattern=naming.ACCOUNT_RE.pattern)
    region: Optional[StrictStr] = Field(default=None, pattern=naming.REGION_RE.pattern)


class NoQuery(BaseModel):
    """Routes that take no query parameters."""
    model_config = ConfigDict(extra="forbid", frozen=True)


class HistoryQuery(IdentityQuery):
    """The query of ``GET /clusters/{cluster_name}/history``."""
    limit: PageLimit = "50"
    next_token: Optional[StrictStr] = Field(default=None, pattern=r"^[0-9]{1,12}$")


class ReconcileQuery(IdentityQuery):
    dry_run: Optional[Literal["true", "false", "1", "0"]] = None


class ReconcileBody(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    dry_run: StrictBool = False


AccountId = Annotated[StrictStr, Field(pattern=naming.ACCOUNT_RE.pattern)]
RegionCode = Annotated[StrictStr, Field(pattern=naming.REGION_RE.pattern)]


BackfillOutcome = Literal["provisioned", "would_provision", "already_managed", "opted_out",
                          "external", "no_karpenter",
                          "auto_mode", "skipped", "failed"]


class BackfillRequest(BaseModel):
    """The body of ``POST /backfill``: adopt every EKS cluster without a record in these
    account-regions (its opt-out tag honoured); ``dry_run`` changes nothing."""
    model_config = ConfigDict(extra="forbid", frozen=True)
    accounts: list[AccountId] = Field(min_length=1, max_length=50)
    regions: list[RegionCode] = Field(min_length=1, max_length=20)
    dry_run: StrictBool = False

    @field_validator("accounts", "regions")
    @classmethod
    def _distinct(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError("repeats a value")
        return v


def _field_of(loc: tuple) -> str:
    parts = [str(p) for p in loc if not str(p).startswith("function-after")]
    return ".".join(parts) if parts else "body"


def parse(model: type, data: Any, where: str = "body", context: Optional[dict] = None) -> Any:
    """Validate a decoded body or query against ``model``; every problem becomes a 400 naming
    the field and what is allowed."""
    if not isinstance(data, dict):
        raise ValidationError(f"the request {where} must be a JSON object", field=where,
                              allowed="a JSON object such as {\"cluster_name\": \"prod\"}")
    try:
        return model.model_validate(data, context=context)
    except PydanticValidationError as exc:
        details = [_detail(model, err, where)
                   for err in exc.errors(include_url=False, include_input=False)]
        first = details[0]
        raise ValidationError(f"{first['field']}: {first['message']}", field=first["field"],
                              allowed=first["allowed"], details=details) from None


def _detail(model: type, err: dict, where: str) -> dict:
    fld = _field_of(err["loc"])
    fld = where if fld == "body" else fld
    top, msg = fld.split(".")[0], err["msg"]
    if err["type"] == "extra_forbidden":
        what = "query parameter" if where == "query" else "field"
        msg, allowed = f"unknown {what}", "one of " + ", ".join(model.model_fields)
    else:
        allowed = ALLOWED.get(top)
    if fld == "body" and "controller_role" in msg:
        fld, allowed = "controller_role", ALLOWED["controller_role"]
    return {"field": fld[:60], "message": msg, "allowed": allowed}


def parse_request(body: Any, default_tags: Optional[dict] = None) -> ClusterRequest:
    """``default_tags``: the deployment's KIP_DEFAULT_TAGS, which the request's tags must leave
    room for (passed in: this module reads no settings)."""
    return parse(ClusterRequest, body, context={"default_tags": default_tags or {}})


def validate_identity(cluster_name: Any, account_id: Any, region: Any, settings: Settings,
                      known_regions: frozenset = frozenset()) -> None:
    """A cluster identity from any source (request, path, event): 400 naming the bad part.
    ``known_regions``: where the SDK's endpoint data lists EKS in the region's partition (empty:
    the SDK has no list; not second-guessed)."""
    if not isinstance(cluster_name, str) or not naming.CLUSTER_NAME_RE.fullmatch(cluster_name):
        raise ValidationError(f"cluster_name: {str(cluster_name)[:120]!r} is not a valid EKS "
                              "cluster name", field="cluster_name",
                              allowed=ALLOWED["cluster_name"])
    if not isinstance(account_id, str) or not naming.ACCOUNT_RE.fullmatch(account_id):
        raise ValidationError("account_id: must be 12 digits", field="account_id",
                              allowed=ALLOWED["account_id"])
    if not isinstance(region, str) or not naming.REGION_RE.fullmatch(region):
        raise ValidationError("region: not an AWS region code", field="region",
                              allowed=ALLOWED["region"])
    home = naming.partition_for(settings.region)
    if naming.partition_for(region) != home:
        raise ValidationError(
            f"region: {region} is in partition {naming.partition_for(region)}; this deployment "
            f"serves partition {home} only (deploy kip in that partition to serve it)",
            field="region", allowed=f"a region of partition {home}")
    if known_regions and region not in known_regions:
        raise ValidationError(
            f"region: {region!r} is not a region where EKS is available (per the AWS SDK's "
            "endpoint data)", field="region",
            allowed="an AWS region code where EKS runs, such as eu-west-1")


def is_opted_out(tags: Optional[dict], settings: Settings) -> bool:
    """The cluster's opt-out tag says no (checked on EKS events, adoption and backfill)."""
    value = str((tags or {}).get(settings.opt_out_tag, "")).strip().lower()
    return value in ("true", "yes", "1", "opt-out")


@dataclass(frozen=True)
class RoleRef:
    name: str
    arn: str
    given_as_arn: bool = field(default=False, compare=False)


def resolve_role(req: ClusterRequest, cid: naming.ClusterId, settings: Settings) -> RoleRef:
    if req.controller_role and req.controller_role.startswith("arn:"):
        m = ROLE_ARN_RE.fullmatch(req.controller_role)
        assert m  # validated by the model
        if m["account"] != cid.account_id:
            raise ValidationError(
                f"controller_role: the role is in account {m['account']}, the cluster in "
                f"{cid.account_id}; the controller role must be in the cluster's account",
                field="controller_role", allowed=ALLOWED["controller_role"])
        if m["partition"] != cid.partition:
            raise ValidationError("controller_role: the role ARN is in another partition than "
                                  "the cluster", field="controller_role",
                                  allowed=ALLOWED["controller_role"])
        ref = RoleRef(m["name"], req.controller_role, True)
    else:
        name = req.controller_role or settings.role_template.format(cluster_name=cid.cluster_name)
        if len(name) > naming.IAM_ROLE_MAX:
            raise ValidationError(f"controller_role: the role name {name!r} is longer than 64 "
                                  "characters; name the role in the request",
                                  field="controller_role", allowed=ALLOWED["controller_role"])
        ref = RoleRef(name, naming.role_arn(cid, name))
    if not settings.role_allowed(ref.name):
        raise Forbidden(f"controller_role: this service may only attach policies to roles named "
                        f"{settings.allowed_role_pattern!r}; {ref.name!r} is not one",
                        field="controller_role", allowed=settings.allowed_role_pattern)
    return ref


def resolve_real_role(wanted: RoleRef, found: Optional[Any]) -> RoleRef:
    """The role as IAM has it (``found``: GetRole's answer, or None while it does not exist).
    Its ARN includes its path: a role given by ARN must name the real path."""
    if found is None:
        return wanted
    if wanted.given_as_arn and found.arn != wanted.arn:
        raise ValidationError(
            f"controller_role: the role {wanted.name!r} is {found.arn} (path {found.path}), "
            f"not {wanted.arn}; give its real ARN or just its name",
            field="controller_role", allowed=ALLOWED["controller_role"])
    return RoleRef(found.name, found.arn, wanted.given_as_arn)


@dataclass(frozen=True)
class DesiredSpec:
    cid: naming.ClusterId
    names: naming.Names
    event_kinds: tuple
    queue_attributes: dict
    dlq_attributes: dict
    queue_policy: dict
    controller_policy: dict
    rule_pattern: dict           # the cluster's one rule: every selected kind
    role: RoleRef
    tags: dict                   # ownership + discovery + user tags
    kms_key_arn: Optional[str]
    parameters: dict = field(default_factory=dict)
    alarm_threshold: Optional[int] = None   # KIP_ALARMS: the stale alarm's age (s); None: off
    keep_legacy: bool = False    # the five-rule layout's rules stay allowed (migration, phase 1)
    retired_tags: tuple = ()     # tag keys kip applied before and no longer wants (removed)
    settling: dict = field(default_factory=dict)    # queue key -> attributes SQS may not show yet
    grant_mode: str = "role-policy"     # KIP_GRANT_MODE: how the controller role may read

    @property
    def spec_hash(self) -> str:
        body = {
            "names": self.names.to_dict(), "kinds": list(self.event_kinds),
            "queue": self.queue_attributes, "dlq": self.dlq_attributes,
            "controller_policy": self.controller_policy, "rule": self.rule_pattern,
            "role": self.role.arn, "tags": self.tags,
        }
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]


def _encryption(kms_key_arn: Optional[str]) -> dict:
    if kms_key_arn:
        return {"KmsMasterKeyId": kms_key_arn, "KmsDataKeyReusePeriodSeconds": "300"}
    return {"SqsManagedSseEnabled": "true"}


def build_spec(req: ClusterRequest, cid: naming.ClusterId, names: naming.Names,
               settings: Settings, kms_key_arn: Optional[str] = None,
               role: Optional[RoleRef] = None, keep_legacy: bool = False,
               applied_tags: Optional[list] = None,
               settling: Optional[dict] = None, hold: bool = False) -> DesiredSpec:
    """``applied_tags``: the tag keys kip applied last time (the record's ``tag_keys``): those no
    longer wanted are removed; tags others added are never touched. ``hold``: a takeover waits
    for Karpenter to switch, and nobody reads kip's queue yet: it keeps messages only
    ``cutover.HOLD_RETENTION`` seconds (core.cutover says why)."""
    kinds = tuple(req.event_kinds or ALL_EVENT_KINDS)
    role = role or resolve_role(req, cid, settings)
    # Only the cluster's rule may send; while a cluster moves from the five-rule layout, its old
    # rules too (``keep_legacy``), so events keep arriving until the old rules are gone.
    senders = [names.rule_arn] + (list(names.rule_arns.values()) if keep_legacy else [])
    by_queue = settings.grant_mode == "queue-policy"
    if by_queue and kms_key_arn:
        raise ValidationError(
            "kms_key_id: with KIP_GRANT_MODE=queue-policy kip grants the controller role through "
            "the queue policy alone and cannot give it kms:Decrypt on a customer key; use "
            "SSE-SQS (leave kms_key_id out) or a deployment with KIP_GRANT_MODE=role-policy",
            field="kms_key_id", allowed="no kms_key_id with KIP_GRANT_MODE=queue-policy")
    qpolicy = policies.queue_policy(names.queue_arn, senders, cid.partition,
                                    reader_arn=role.arn if by_queue else None)
    redrive = {"deadLetterTargetArn": names.dlq_arn,
               "maxReceiveCount": req.max_receive_count or DEFAULT_MAX_RECEIVE}
    queue_attrs = {
        "MessageRetentionPeriod": str(min(req.message_retention_seconds or DEFAULT_RETENTION,
                                          cutover.HOLD_RETENTION if hold else DEFAULT_RETENTION)),
        "VisibilityTimeout": str(DEFAULT_VISIBILITY if req.visibility_timeout_seconds is None
                                 else req.visibility_timeout_seconds),
        "DelaySeconds": "0",
        "RedrivePolicy": json.dumps(redrive, sort_keys=True),
        "Policy": json.dumps(qpolicy, sort_keys=True),
        **_encryption(kms_key_arn),
    }
    dlq_attrs = {
        "MessageRetentionPeriod": str(DLQ_RETENTION),
        "Policy": json.dumps(policies.dlq_policy(names.dlq_arn), sort_keys=True),
        **_encryption(kms_key_arn),
    }
    problem = tag_problem(req.tags or {}, settings.default_tags)
    if problem:
        raise ValidationError(f"tags: {problem}", field="tags", allowed=ALLOWED["tags"])
    tags = {**settings.default_tags, **(req.tags or {}), naming.DISCOVERY_TAG: cid.cluster_name,
            **naming.ownership_tags(cid)}
    params = req.model_dump(exclude_none=True, exclude={"dry_run", "team"})
    params.update(account_id=cid.account_id, region=cid.region)
    return DesiredSpec(
        cid=cid, names=names, event_kinds=kinds, queue_attributes=queue_attrs,
        dlq_attributes=dlq_attrs, queue_policy=qpolicy,
        controller_policy={} if by_queue else policies.controller_policy(names.queue_arn,
                                                                         kms_key_arn),
        grant_mode=settings.grant_mode,
        rule_pattern=policies.interruption_pattern(kinds), role=role, tags=tags,
        alarm_threshold=settings.stale_seconds if settings.alarms else None,
        kms_key_arn=kms_key_arn, parameters=params, keep_legacy=keep_legacy,
        retired_tags=tuple(sorted(set(applied_tags or ()) - set(tags))),
        settling=settling or {},
    )

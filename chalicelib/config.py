"""Settings from the environment, read once into a frozen dataclass.

Every variable is listed in the README's configuration table. The AWS endpoint is *not* a
setting: boto3 reads ``AWS_ENDPOINT_URL`` itself, so the same code runs on moto or AWS.
"""
from __future__ import annotations

import fnmatch
import os
import re
from dataclasses import dataclass, field, replace
from functools import lru_cache

# A record's status: "deleting" also marks a teardown that stopped part way (it is finished, never
# undone, by the next DELETE, reconcile or scheduled sweep).
# blocked: an automatic path (trigger, backfill, adoption) could not provision the cluster (quota,
# name clash, role name, account refused); the record says why and the sweep retries it.
# teardown_held: an event-driven teardown past KIP_TEARDOWN_BUDGET per hour, waiting for an
# operator's release or the sweep's second look after the hour.
# unreachable: kip's role in the cluster's account is missing or refuses AssumeRole.
# external: another tool handles the cluster's interruptions (KIP_ON_EXISTING=report): kip
# created nothing; no_karpenter: no Karpenter controller role was found by any method: kip
# created nothing. The sweep looks at both again.
STATUSES = ("provisioning", "ready", "waiting_for_role", "failed", "deleting", "blocked",
            "teardown_held", "unreachable", "external", "no_karpenter")

GRANT_MODES = ("role-policy", "queue-policy")

ALL_EVENT_KINDS = (
    "spot_interruption",
    "rebalance_recommendation",
    "instance_state_change",
    "scheduled_change",
    "capacity_reservation_interruption",
)


# KIP_PREFIX: short enough that a 100-character cluster name still fits every AWS name limit
# (tests/unit/test_naming.py), and only characters every one of those names allows.
PREFIX_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,19}$")


def _prefix(env: dict) -> str:
    """KIP_PREFIX starts every name kip makes, and the IAM patterns of the templates too."""
    prefix = env.get("KIP_PREFIX", "kip-")
    if not PREFIX_RE.fullmatch(prefix):
        raise ValueError(f"KIP_PREFIX: {prefix[:40]!r} is not allowed; 1-20 characters of "
                         "[A-Za-z0-9_-], starting with a letter or digit (default kip-)")
    return prefix


def _bool(value: str | None, default: bool) -> bool:
    if value is None or value == "":
        return default
    return value.strip().lower() in ("1", "true", "yes", "on")


def _int(env: dict, name: str, default: int) -> int:
    raw = env.get(name)
    return default if raw in (None, "") else int(raw)


@dataclass(frozen=True)
class Settings:
    prefix: str = "kip-"
    table_name: str = "kip-clusters"
    iam_path: str = "/kip/"
    role_template: str = "KarpenterController-{cluster_name}"
    role_pattern: str = ""          # fnmatch pattern of role names we may attach to
    cross_account_role: str = "kip-provisioner"
    external_id: str | None = None
    # KIP_EXTERNAL_ID_SECRET_ARN: a Secrets Manager secret holding the external id (the packaged
    # template creates it from a NoEcho parameter); read once, at the first invocation
    external_id_secret_arn: str | None = None
    account_id: str | None = None   # the service's own account; resolved via STS when unset
    region: str = "us-east-1"
    opt_out_tag: str = "kip.io/opt-out"
    lease_seconds: int = 300
    retry_mode: str = "standard"
    max_attempts: int = 5
    connect_timeout: int = 5
    read_timeout: int = 8     # a control-plane call; keeps an API request inside 29 s
    max_workers: int = 20           # wider than the widest read stage (18), so a stage is one wave
    status_bus: str | None = None   # EventBridge bus for status-change events; unset = off
    status_source: str = "kip.provisioner"
    adopt_existing: bool = False
    schedule_minutes: int = 15
    api_auth: str = "iam"           # "iam" on deployed stages, "none" locally
    cors_origin: str | None = None
    default_tags: dict = field(default_factory=dict)
    token_secret: str | None = None     # signs list tokens; default: a secret kept in the table
    stale_seconds: int = 600        # consumer health: older waiting messages mean nobody reads
    alarms: bool = False            # KIP_ALARMS: per-cluster CloudWatch alarms (stale, DLQ)
    # role-policy: an IAM policy attached to the controller role; queue-policy: the queue's own
    # policy allows the role (aws:PrincipalArn), and kip needs no IAM write permission at all
    grant_mode: str = "role-policy"
    rule_quota: int | None = None   # EventBridge rules per bus, when Service Quotas cannot say
    rule_reserve: int = 20          # rules kip leaves free for the account's other users
    api_budget_seconds: float = 12  # no AWS attempt starts later (+ connect 5 + read 8 < 29 s)
    api_max_attempts: int = 3       # attempts per AWS call within an API request
    full_check_hours: float = 24    # in-sync reconciles read tags too once a full look is older
    orphan_grace_minutes: int = 30  # a record's EKS cluster missing this long: torn down
    teardown_budget: int = 10       # automatic teardowns per hour per deployment; then held
    settle_seconds: float = 6.0     # waiting, within a run, for IAM/SQS eventual consistency
    # Organization reach (chalicelib/tenancy.py): accounts kip may act in besides its own; empty
    # with no org id = any account (the local stage only: deployed stages require one of them).
    allowed_accounts: frozenset = frozenset()
    # set when KIP_REQUIRE_ACCOUNT_LIST=true and neither list is given: every handler refuses to
    # run with this message (app.py); packaging and `import app` still work
    reach_refusal: str | None = None
    org_id: str | None = None       # o-...: members verified with organizations:DescribeAccount
    adopt_regions: tuple = ()       # the sweep's adoption (KIP_ADOPT_EXISTING); empty = own region
    # The sweep (chalicelib/fanout.py): "fanout" sends one work item per record to the SQS queue
    # KIP_SWEEP_QUEUE_URL, consumed by sweep_worker; "inline" sweeps in the schedule's process.
    sweep_mode: str = "inline"
    sweep_queue_url: str | None = None
    sweep_rate: float = 1.0         # reconciles/s per (account, region), per worker process
    sweep_account_rate: float = 1.0     # reconciles/s per account (IAM is global), per worker
    service_role_arns: tuple = ()   # kip's Lambda role(s): drift events they cause are ignored
    # The EKS trigger's on-failure destination / rule DLQ (chalicelib/failed_events.py): the
    # schedule replays what it holds; unset (the local stage) = replay off.
    failed_events_queue_url: str | None = None
    # Team scopes (chalicelib/core/scopes.py): KIP_AUTHZ, a JSON document or ``ssm:<name>`` of an
    # SSM parameter holding it (read once per container, app.py). Unset: no scopes (iam, none).
    authz: str | None = None
    # set when KIP_API_AUTH=jwt and KIP_AUTHZ is unset: every handler refuses to run (fail closed)
    authz_refusal: str | None = None
    audit_days: int = 400           # KIP_AUDIT_DAYS: audit entries outlive their cluster this long
    # Brownfield (docs/BROWNFIELD.md). Karpenter's service accounts, tried in order, when the
    # controller role is looked up from the cluster (Pod Identity, then IRSA trust).
    karpenter_service_accounts: tuple = (("kube-system", "karpenter"), ("karpenter", "karpenter"))
    # What kip does where another tool already handles a cluster: report | coexist | takeover.
    on_existing: str = "report"
    role_list_seconds: int = 300    # how long one account's ListRoles answer serves IRSA lookups
    # takeover: kip's queue read and the old one not for this long -> the cutover is switched
    cutover_window_seconds: int = 3600

    @property
    def allowed_role_pattern(self) -> str:
        """Default: the controller-role template with the cluster name as a wildcard."""
        return self.role_pattern or self.role_template.replace("{cluster_name}", "*")

    def role_allowed(self, role_name: str) -> bool:
        return fnmatch.fnmatchcase(role_name, self.allowed_role_pattern)

    @classmethod
    def from_env(cls, env: dict | None = None) -> "Settings":
        env = dict(os.environ if env is None else env)
        iam_path = env.get("KIP_IAM_PATH", "/kip/")
        if not (iam_path.startswith("/") and iam_path.endswith("/")):
            raise ValueError("KIP_IAM_PATH must start and end with '/'")
        retry_mode = env.get("KIP_RETRY_MODE", "standard")
        if retry_mode not in ("standard", "adaptive", "legacy"):
            raise ValueError("KIP_RETRY_MODE must be standard, adaptive or legacy")
        api_auth = env.get("KIP_API_AUTH", "iam")
        if api_auth not in ("iam", "none", "jwt"):
            # fail closed: a typo ("IAM", "iam ") must never silently remove authorization
            raise ValueError(f"KIP_API_AUTH must be exactly iam, none or jwt (got {api_auth!r})")
        allowed, org_id, adopt_regions, refusal = _organization_reach(env)
        return cls(
            prefix=_prefix(env),
            table_name=env.get("KIP_TABLE_NAME", "kip-clusters"),
            iam_path=iam_path,
            role_template=env.get("KIP_ROLE_TEMPLATE", "KarpenterController-{cluster_name}"),
            role_pattern=env.get("KIP_ROLE_PATTERN", ""),
            cross_account_role=env.get("KIP_CROSS_ACCOUNT_ROLE", "kip-provisioner"),
            external_id=env.get("KIP_EXTERNAL_ID") or None,
            external_id_secret_arn=(env.get("KIP_EXTERNAL_ID_SECRET_ARN") or "").strip() or None,
            account_id=env.get("KIP_ACCOUNT_ID") or None,
            region=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1",
            opt_out_tag=env.get("KIP_OPT_OUT_TAG", "kip.io/opt-out"),
            lease_seconds=_int(env, "KIP_LEASE_SECONDS", 300),
            retry_mode=retry_mode,
            max_attempts=_int(env, "KIP_MAX_ATTEMPTS", 5),
            connect_timeout=_int(env, "KIP_CONNECT_TIMEOUT", 5),
            read_timeout=_int(env, "KIP_READ_TIMEOUT", 8),
            max_workers=_int(env, "KIP_MAX_WORKERS", 20),
            status_bus=env.get("KIP_STATUS_BUS") or None,
            status_source=env.get("KIP_STATUS_SOURCE", "kip.provisioner"),
            adopt_existing=_bool(env.get("KIP_ADOPT_EXISTING"), False),
            schedule_minutes=_int(env, "KIP_SCHEDULE_MINUTES", 15),
            api_auth=api_auth,
            cors_origin=env.get("KIP_CORS_ORIGIN") or None,
            default_tags=_default_tags(env),
            token_secret=env.get("KIP_TOKEN_SECRET") or None,
            stale_seconds=_int(env, "KIP_STALE_SECONDS", 600),
            alarms=_bool(env.get("KIP_ALARMS"), False),
            settle_seconds=float(env.get("KIP_SETTLE_SECONDS") or 6.0),
            orphan_grace_minutes=_int(env, "KIP_ORPHAN_GRACE_MINUTES", 30),
            teardown_budget=_int(env, "KIP_TEARDOWN_BUDGET", 10),
            full_check_hours=float(env.get("KIP_FULL_CHECK_HOURS") or 24),
            api_budget_seconds=float(env.get("KIP_API_BUDGET_SECONDS") or 12),
            api_max_attempts=_int(env, "KIP_API_MAX_ATTEMPTS", 3),
            rule_quota=_int(env, "KIP_RULE_QUOTA", 0) or None,
            rule_reserve=_int(env, "KIP_RULE_RESERVE", 20),
            allowed_accounts=allowed, org_id=org_id, adopt_regions=adopt_regions,
            reach_refusal=refusal,
            **_sweep_settings(env),
            grant_mode=_grant_mode(env),
            failed_events_queue_url=(env.get("KIP_FAILED_EVENTS_QUEUE_URL") or "").strip()
            or None,
            **_authz_settings(env, api_auth),
            **_brownfield_settings(env),
        )


def _csv(env: dict, name: str, pattern: str, example: str) -> tuple:
    items = tuple(x.strip() for x in (env.get(name) or "").split(",") if x.strip())
    bad = [x for x in items if not re.fullmatch(pattern, x)]
    if bad:
        raise ValueError(f"{name}: {bad[0][:40]!r} is not valid; a comma-separated list of "
                         f"values such as {example}")
    return tuple(dict.fromkeys(items))


def _organization_reach(env: dict) -> tuple:
    """KIP_ALLOWED_ACCOUNTS, KIP_ORG_ID and KIP_ADOPT_REGIONS. A stage with
    KIP_REQUIRE_ACCOUNT_LIST=true (dev, prod) and neither list gets a refusal message instead of
    an error here: the lists are deploy-time inputs (stack parameters), so `chalice package` must
    import app.py without them, and the deployed handlers refuse to run (fail closed) until they
    are set (``Settings.reach_refusal``, checked by app.py on every invocation)."""
    allowed = frozenset(_csv(env, "KIP_ALLOWED_ACCOUNTS", r"[0-9]{12}", "111122223333"))
    org_id = (env.get("KIP_ORG_ID") or "").strip() or None
    if org_id is not None and not re.fullmatch(r"o-[a-z0-9]{10,32}", org_id):
        raise ValueError(f"KIP_ORG_ID: {org_id[:40]!r} is not an organization id (o- and 10-32 "
                         "lowercase letters or digits, as organizations:DescribeOrganization "
                         "reports it)")
    refusal = None
    if _bool(env.get("KIP_REQUIRE_ACCOUNT_LIST"), False) and not (allowed or org_id):
        refusal = ("KIP_REQUIRE_ACCOUNT_LIST=true: set KIP_ALLOWED_ACCOUNTS (comma-separated "
                   "12-digit account ids) and/or KIP_ORG_ID (o-...) for this stage (the stack "
                   "parameters AllowedAccountIds / OrgId); kip refuses to act in any account "
                   "without one of them")
    regions = _csv(env, "KIP_ADOPT_REGIONS", r"[a-z]{2}(-[a-z]+)+-[0-9]{1,2}", "eu-west-1")
    return allowed, org_id, regions, refusal


def _default_tags(env: dict) -> dict:
    tags = {}
    for pair in filter(None, (env.get("KIP_DEFAULT_TAGS") or "").split(",")):
        key, _, value = pair.partition("=")
        tags[key.strip()] = value.strip()
    return tags


def _grant_mode(env: dict) -> str:
    mode = env.get("KIP_GRANT_MODE", "role-policy")
    if mode not in GRANT_MODES:
        raise ValueError(f"KIP_GRANT_MODE must be role-policy or queue-policy (got {mode!r})")
    return mode


def _authz_settings(env: dict, api_auth: str) -> dict:
    """KIP_AUTHZ (validated here when it is inline JSON; an ``ssm:`` name is read and validated
    at the first invocation) and KIP_AUDIT_DAYS. JWT auth without KIP_AUTHZ gets a refusal
    message, like ``reach_refusal``: every handler refuses to run until it is set."""
    raw = (env.get("KIP_AUTHZ") or "").strip() or None
    if raw is not None and raw.startswith("{"):
        from chalicelib.core import scopes
        scopes.parse(raw)       # ValueError naming KIP_AUTHZ and the key
    elif raw is not None and not re.fullmatch(r"ssm:/?[A-Za-z0-9_.\-/]{1,1011}", raw):
        raise ValueError(f"KIP_AUTHZ: {raw[:80]!r} is not ssm:<parameter name> (e.g. "
                         "ssm:/kip/authz) nor a JSON document")
    refusal = None
    if api_auth == "jwt" and raw is None:
        refusal = ("KIP_API_AUTH=jwt needs KIP_AUTHZ (the team scopes: a JSON document, or "
                   "ssm:<parameter name>); kip refuses every request without it rather than "
                   "letting every token reach every cluster")
    days = _int(env, "KIP_AUDIT_DAYS", 400)
    if not 1 <= days <= 3650:
        raise ValueError("KIP_AUDIT_DAYS must be a number of days from 1 to 3650")
    return {"authz": raw, "authz_refusal": refusal, "audit_days": days}


def _sweep_settings(env: dict) -> dict:
    """KIP_SWEEP_MODE (default: fanout when KIP_SWEEP_QUEUE_URL is set, else inline),
    KIP_SWEEP_RATE, KIP_SWEEP_ACCOUNT_RATE and KIP_SERVICE_ROLE_ARN (comma-separated)."""
    url = (env.get("KIP_SWEEP_QUEUE_URL") or "").strip() or None
    mode = (env.get("KIP_SWEEP_MODE") or "").strip() or ("fanout" if url else "inline")
    if mode not in ("fanout", "inline"):
        raise ValueError(f"KIP_SWEEP_MODE must be fanout or inline (got {mode!r})")
    if mode == "fanout" and not url:
        raise ValueError("KIP_SWEEP_MODE=fanout needs KIP_SWEEP_QUEUE_URL (the sweep work queue)")
    rates = {}
    for name in ("KIP_SWEEP_RATE", "KIP_SWEEP_ACCOUNT_RATE"):
        rates[name] = float(env.get(name) or 1.0)
        if not 0 < rates[name] <= 100:
            raise ValueError(f"{name} must be a number of reconciles per second in (0, 100]")
    roles = tuple(r.strip() for r in (env.get("KIP_SERVICE_ROLE_ARN") or "").split(",")
                  if r.strip())
    return {"sweep_mode": mode, "sweep_queue_url": url, "sweep_rate": rates["KIP_SWEEP_RATE"],
            "sweep_account_rate": rates["KIP_SWEEP_ACCOUNT_RATE"], "service_role_arns": roles}


ON_EXISTING = ("report", "coexist", "takeover")


def _brownfield_settings(env: dict) -> dict:
    """KIP_KARPENTER_SERVICE_ACCOUNTS (``ns/sa,...``), KIP_ON_EXISTING, KIP_ROLE_LIST_SECONDS,
    KIP_CUTOVER_WINDOW_MINUTES (5 minutes to 7 days)."""
    raw = env.get("KIP_KARPENTER_SERVICE_ACCOUNTS") or "kube-system/karpenter,karpenter/karpenter"
    pairs = []
    for item in filter(None, (x.strip() for x in raw.split(","))):
        ns, _, sa = item.partition("/")
        if not (re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", ns) and
                re.fullmatch(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?", sa)):
            raise ValueError(f"KIP_KARPENTER_SERVICE_ACCOUNTS: {item[:80]!r} is not "
                             "<namespace>/<service account> (e.g. kube-system/karpenter)")
        pairs.append((ns, sa))
    mode = (env.get("KIP_ON_EXISTING") or "report").strip()
    if mode not in ON_EXISTING:
        raise ValueError(f"KIP_ON_EXISTING must be one of {', '.join(ON_EXISTING)} "
                         f"(got {mode[:40]!r})")
    window = _int(env, "KIP_CUTOVER_WINDOW_MINUTES", 60)
    if not 5 <= window <= 7 * 24 * 60:
        raise ValueError(f"KIP_CUTOVER_WINDOW_MINUTES must be from 5 to 10080 (got {window})")
    return {"karpenter_service_accounts": tuple(dict.fromkeys(pairs)), "on_existing": mode,
            "role_list_seconds": _int(env, "KIP_ROLE_LIST_SECONDS", 300),
            "cutover_window_seconds": window * 60}


def with_external_id(settings: Settings, read_secret) -> Settings:
    """``settings`` with the external id read from KIP_EXTERNAL_ID_SECRET_ARN (once, at cold
    start: the caller keeps the result). A plain KIP_EXTERNAL_ID wins; no secret, no change.
    ``read_secret(arn) -> str``: one Secrets Manager GetSecretValue (``aws.read_secret``; this
    module imports no boto3)."""
    arn = settings.external_id_secret_arn
    if settings.external_id or not arn:
        return settings
    value = (read_secret(arn) or "").strip()
    if not value:
        raise ValueError(f"KIP_EXTERNAL_ID_SECRET_ARN: the secret {arn} is empty")
    return replace(settings, external_id=value)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings.from_env()

"""Brownfield: the cluster's real controller role, and whoever already handles its interruptions.

``controller_role`` finds the role, in this order: the request's ``controller_role``; EKS Pod
Identity associations of Karpenter's service accounts (``KIP_KARPENTER_SERVICE_ACCOUNTS``); an
IRSA trust on the cluster's OIDC provider for one of them; ``KIP_ROLE_TEMPLATE``. A role found
from the cluster is accepted because its trust ties it to this cluster's Karpenter, not for its
name: ``KIP_ROLE_PATTERN`` guards only names given by a request or the template.

``gate`` runs once the role is read: no role at all (none named, none found) -> ``no_karpenter``;
another tool's queue and rules for that role -> reported (409 / ``external``) or kept beside kip's
(``coexist``), per request (``on_existing``) or deployment (``KIP_ON_EXISTING``).
"""
from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass, replace
from typing import Any, Callable, Optional

from chalicelib import aws, errors
from chalicelib.aws import registry
from chalicelib.converge.executor import gather
from chalicelib.core import brownfield, cutover, naming
from chalicelib.core.observed import ClusterState, RoleState
from chalicelib.core.records import ClusterRecord
from chalicelib.core.spec import ROLE_ARN_RE, ClusterRequest, RoleRef, resolve_role
from chalicelib.usecases.kit import Kit
from chalicelib.usecases import skeleton
from chalicelib.usecases.skeleton import Context, Outcome

MAX_QUEUES = 50     # queues a role's grants cover, looked at per run (broad grants: likeliest)
# Records kip wrote without creating anything: the sweep looks at them again, and a later
# provision may replace them.
PARKED = ("blocked", "external", "no_karpenter")


@dataclass(frozen=True)
class FoundRole:
    role: RoleRef
    source: str         # request | pod-identity | irsa | template
    cluster: Any = skeleton.UNREAD      # DescribeCluster as discovery read it (reused)
    namespace: Optional[str] = None     # Karpenter's, when discovery found its service account


@dataclass(frozen=True)
class Discovery:
    """Role discovery under way. ``guess``: the role the first wave reads beside it (the
    request's, the record's, else the template's; None when the template names no valid role);
    ``cluster``: DescribeCluster as discovery reads it (a Future, or UNREAD); ``found(guessed)``
    waits for the answer (``guessed``: whether the guessed role exists, as the first wave read
    it: False on an API request re-reads a role list older than the request before saying no
    role at all)."""
    guess: Optional[FoundRole]
    found: Callable[[Optional[bool]], FoundRole]
    cluster: Any = skeleton.UNREAD


def _settled(found: FoundRole) -> Discovery:
    return Discovery(found, lambda guessed=None: found)


def discover(kit: Kit, cid: naming.ClusterId, req: ClusterRequest,
             known: Optional[ClusterRecord], asked: bool = False) -> Discovery:
    """Begin finding the controller role to attach kip's policy to, and how it was found. A
    record whose discovered role still exists keeps it (a reconcile reads no association or
    role list). Else the cluster, every service account's associations and the account's role
    list (IRSA) are read at once, while the first wave reads the template's role.
    ``asked``: an API request; an IRSA miss where the template's role does not exist either
    re-reads the account's roles unless this request read them (a role made a moment ago is
    found before the answer says no_karpenter)."""
    if req.controller_role:
        return _settled(FoundRole(resolve_role(req, cid, kit.settings), "request"))
    att = known.resources.attachment if known else None
    if known and att and att.role_exists and att.role_name:
        if known.role_source in ("pod-identity", "irsa"):
            return _settled(FoundRole(RoleRef(att.role_name, att.role_arn), known.role_source))
        return _settled(FoundRole(resolve_role(req, cid, kit.settings), "template"))
    target = aws.Target(cid.account_id, cid.region, kit.settings)
    submit, began = kit.workers.submit, kit.clock()
    cluster_f = submit(target.describe_cluster, cid.cluster_name)
    pods_f = [submit(target.pod_identity_roles, cid.cluster_name, ns, sa)
              for ns, sa in kit.settings.karpenter_service_accounts]
    listed_f = submit(kit.role_list.roles, cid.account_id, target.list_roles) \
        if kit.role_list is not None else submit(target.list_roles)
    try:
        template: Optional[RoleRef] = resolve_role(req, cid, kit.settings)
    except errors.ValidationError:      # said only if nothing else is found
        template = None

    def finish(guessed: Optional[bool] = None) -> FoundRole:
        cluster, *pods = gather([cluster_f, *pods_f])
        if cluster is not None:
            again = began if asked and guessed is False else None
            found = _by_pod_identity(cid, pods, kit.settings.karpenter_service_accounts) or \
                _by_irsa(kit, cid, target, cluster, listed_f, again)
            if found is not None:
                return replace(found, cluster=cluster)
        return FoundRole(template or resolve_role(req, cid, kit.settings), "template",
                         cluster)
    return Discovery(FoundRole(template, "template") if template else None, finish, cluster_f)


def _ref(cid: naming.ClusterId, arn: str) -> Optional[RoleRef]:
    m = ROLE_ARN_RE.fullmatch(arn or "")
    if not m or m["account"] != cid.account_id:     # kip attaches only in the cluster's account
        return None
    return RoleRef(m["name"], arn)


def _by_pod_identity(cid: naming.ClusterId, per_account: list,
                     accounts: tuple) -> Optional[FoundRole]:
    """The first role of the associations, service accounts in their configured order."""
    for (namespace, _), arns in zip(accounts, per_account):
        for arn in arns:
            ref = _ref(cid, arn)
            if ref is not None:
                return FoundRole(ref, "pod-identity", namespace=namespace)
    return None


def _by_irsa(kit: Kit, cid: naming.ClusterId, target: aws.Target, cluster: ClusterState,
             listed: Future, again: Optional[float] = None) -> Optional[FoundRole]:
    """``listed``: the account's roles, as the role list (or ListRoles) gave them; on a miss a
    list older than a tenth of its life is read again (``again``: one read before that time)."""
    if not cluster.oidc_issuer:
        return None
    provider = brownfield.provider_arn(cid.partition, cid.account_id, cluster.oidc_issuer)
    subjects = [f"system:serviceaccount:{ns}:{sa}"
                for ns, sa in kit.settings.karpenter_service_accounts]
    role = brownfield.irsa_role(listed.result(), provider, subjects)
    if role is None and kit.role_list is not None:      # a miss: a list kept a while is read
        role = brownfield.irsa_role(kit.role_list.roles(cid.account_id, target.list_roles, True,
                                                        again), provider, subjects)
    ref = _ref(cid, role["arn"]) if role else None
    if role is None or ref is None:
        return None
    namespace = next((ns for ns, sa in kit.settings.karpenter_service_accounts
                      if brownfield.irsa_match(role.get("trust"), provider,
                                               f"system:serviceaccount:{ns}:{sa}")), None)
    return FoundRole(ref, "irsa", namespace=namespace)


# ------------------------------------------------------------------- existing handlers

def detect(kit: Kit, cid: naming.ClusterId, target: aws.Target, role: str, state: RoleState,
           own_queue: str, inline: Optional[tuple] = None) -> Optional[brownfield.ExistingHandler]:
    """Another tool's handler for ``role``: a queue (not kip's ``own_queue``) the role's identity
    policies let it receive from, fed by default-bus rules with interruption patterns. A
    wildcard grant counts only for queues such rules feed (conservative)."""
    others = [a for a in state.attached if f":policy{kit.settings.iam_path}" not in a]
    # kip's own policies left out; the inline ones as the first wave read them, if it did
    submit = kit.workers.submit
    inline_f = inline[1] if inline is not None and inline[0] == role else \
        submit(target.inline_documents, role)
    docs = {k: v for part in gather([*(submit(target.managed_documents, [a]) for a in others),
                                     inline_f]) for k, v in part.items()}
    grants: dict[str, list] = {}
    for where, doc in docs.items():
        for pattern in brownfield.receive_grants(doc):
            grants.setdefault(pattern, []).append(where)
    queues = _granted_queues(target, cid, list(grants))
    queues.pop(own_queue, None)
    # a broad grant ("*", sqs:*) may cover many queues: the likeliest first, a bounded number,
    # their rule look-ups in parallel
    names = sorted(queues, key=lambda n: (cid.cluster_name not in n,
                                          "karpenter" not in n.lower(), n))[:MAX_QUEUES]
    targeting = dict(zip(names, gather([kit.workers.submit(target.rules_targeting, queues[n])
                                        for n in names])))
    for name in names:
        arn = queues[name]
        rules = _interruption_rules(kit, target, targeting[name])
        url = target.queue_url(name) if rules else None
        if url:                 # rules feeding a queue that exists
            policies = {w for p, ws in grants.items() if brownfield.grants_cover([p], arn)
                        for w in ws}
            tool = brownfield.tool_of(cid.cluster_name, name, target.queue_tags(url), rules)
            return brownfield.ExistingHandler(tool, name, arn, sorted(rules), sorted(policies),
                                              url)
    return None


def _granted_queues(target: aws.Target, cid: naming.ClusterId, grants: list) -> dict:
    """queue name -> ARN for every queue in the cluster's account-region a grant covers."""
    part, region, account = cid.partition, cid.region, cid.account_id
    out: dict = {}
    prefixes = set()
    for g in grants:
        name = brownfield.literal_queue(g, part, region, account)
        if name is not None:
            out[name] = brownfield.queue_arn(part, region, account, name)
            continue
        prefix = brownfield.list_prefix(g, part, region, account)
        if prefix is not None:
            prefixes.add(prefix)
    if "" in prefixes:
        prefixes = {""}
    for prefix in sorted(prefixes):
        for name in target.queue_names(prefix):
            arn = brownfield.queue_arn(part, region, account, name)
            if brownfield.grants_cover(grants, arn):
                out[name] = arn
    return out


def _interruption_rules(kit: Kit, target: aws.Target, targeting: list) -> dict:
    """rule name -> tags, of the default-bus rules targeting a queue (``targeting``: their
    names) with an interruption pattern (kip's own rules left out: they carry its prefix)."""
    names = [n for n in targeting if not n.startswith(kit.settings.prefix)]
    futures: list[Future] = [kit.workers.submit(target.describe_rule, n) for n in names]
    found = {}
    for name, rule in zip(names, gather(futures)):
        if rule and brownfield.is_interruption_pattern(rule.get("pattern")):
            arn = f"arn:{naming.partition_for(target.region)}:events:{target.region}:" \
                  f"{target.account}:rule/{name}"
            found[name] = target.rule_tags(arn)
    return found


def already_handled(cid: naming.ClusterId, found: brownfield.ExistingHandler) -> errors.KipError:
    return errors.AlreadyHandled(
        f"cluster {cid.cluster_name!r} already has interruption handling made by {found.tool}: "
        f"queue {found.queue!r} fed by rule(s) {', '.join(found.rules)}; kip created nothing. "
        f"Keep it, or remove it ({brownfield.how_to_remove(found.tool, cid.cluster_name)}) and "
        "ask again, or ask with on_existing=coexist to add kip's beside it (takeover: beside "
        "it, with a cutover kip watches)", field="cluster_name",
        existing_handler=found.to_dict())


def gate(kit: Kit, ctx: Context, req: ClusterRequest, found: FoundRole,
         source: str, look: bool = True) -> Optional[Outcome]:
    """Before anything is created. No role by any method (the request named none, and neither
    the cluster nor the template finds one): ``no_karpenter``, no queue, no rule; the sweep looks
    again (a request that names its role keeps ``waiting_for_role``). Another tool's handler for
    the role: ``report`` (the default) creates nothing -- the API gets 409 AlreadyHandled, an
    automatic path an ``external`` record; ``coexist`` goes on, the record naming the other.
    A cluster kip already wires is never parked: the other handler is recorded beside it."""
    ctx.role_source, ctx.namespace = found.source, found.namespace
    ctx.cutover = ctx.record.cutover if ctx.record else None
    state = ctx.found.roles.get(ctx.role.name) if ctx.role else None
    current = ctx.record.status if ctx.record else None
    managed = current is not None and current not in PARKED
    automatic = source != "api"
    if state is None or not state.exists:
        if found.source == "template" and not managed:
            return _parked(kit, ctx, req, source, "no_karpenter", "none")
        return None
    room_on_role(ctx, state)
    if not look:            # an in-sync record verified lately: no detection this time
        return None
    ctx.looked = True
    ctx.existing = detect(kit, ctx.cid, ctx.target, ctx.role.name, state, ctx.names.queue,
                          ctx.inline)
    mode = ctx.on_existing = req.on_existing or kit.settings.on_existing
    if ctx.existing is None or mode in ("coexist", "takeover") or managed:
        ctx.cutover = _carried(kit, ctx)
        return None
    if not automatic:
        raise already_handled(ctx.cid, ctx.existing)
    return _parked(kit, ctx, req, source, "external", "external")


IAM_DEFAULT_POLICIES_PER_ROLE = 10      # IAM's default; adjustable up to 20, never below


def room_on_role(ctx: Context, state: RoleState) -> None:
    """Refuse, before anything is created, a role that cannot take kip's policy: it already
    holds as many managed policies as the account's quota allows (GetAccountSummary
    AttachedPoliciesPerRoleQuota, read only once the role holds the default 10)."""
    held = [a for a in state.attached if a != ctx.names.policy_arn]
    if len(held) != len(state.attached) or len(held) < IAM_DEFAULT_POLICIES_PER_ROLE:
        return
    quota = ctx.target.attached_policies_quota() or IAM_DEFAULT_POLICIES_PER_ROLE
    if len(held) >= quota:
        raise errors.RolePolicyQuotaExceeded(
            f"the controller role {state.name!r} already has {len(held)} managed policies "
            f"attached, IAM's quota 'Managed policies attached to an IAM role' for account "
            f"{ctx.cid.account_id} is {quota}: kip's policy cannot be attached; nothing was "
            "created. Detach a policy, merge two, or raise the quota (Service Quotas, us-east-1, "
            "up to 20)", field="controller_role", quota=quota, attached=len(held))


def _parked(kit: Kit, ctx: Context, req: ClusterRequest, source: str, status: str,
            handler: str) -> Outcome:
    if req.dry_run:
        return Outcome(ctx.record, dry_run=True, parked=status)
    rec = park(kit, ctx.cid, req, source, status, handler, ctx.role_source, ctx.existing)
    shown = rec or kit.registry.get(ctx.cid)    # another run wrote first: what it wrote
    if shown is None:
        raise errors.InProgress(f"another run is recording cluster {ctx.cid.key}; ask again",
                                field="cluster_name")
    return Outcome(shown, changed=rec is not None and
                   (ctx.record is None or ctx.record.status != status), parked=status)


def _carried(kit: Kit, ctx: Context) -> Optional[dict]:
    """The cutover after a full look: one under way is the sweep's to move (``takeover``); a
    takeover that finds another handler and has none starts one, ``waiting``."""
    previous = ctx.record.cutover if ctx.record else None
    existing = ctx.existing.to_dict() if ctx.existing else None
    args = (ctx.cid.cluster_name, ctx.names.queue,
            ctx.namespace or kit.settings.karpenter_service_accounts[0][0],
            registry.iso(kit.clock()), kit.settings.cutover_window_seconds)
    carried = cutover.resumed(previous, existing, *args) if previous else None
    if carried is not None:
        return carried
    if ctx.on_existing != "takeover" or existing is None:
        return None
    return cutover.begin(existing, *args)


def recorded(ctx: Context) -> dict:
    """The brownfield fields of a record kip wires: how the role was found, and the other
    handler and the cutover when this run looked (an unlooked run keeps what the record
    says)."""
    fields = {"handler": "kip", "role_source": ctx.role_source}
    if ctx.looked:
        fields["existing_handler"] = ctx.existing.to_dict() if ctx.existing else None
        fields["cutover"] = ctx.cutover
    return fields


def park(kit: Kit, cid: naming.ClusterId, req: ClusterRequest, source: str, status: str,
         handler: str, role_source: str,
         found: Optional[brownfield.ExistingHandler] = None,
         replaced: Optional[str] = None) -> Optional[ClusterRecord]:
    """Record a cluster kip created nothing for (``external``, ``no_karpenter``): the sweep
    looks again; a record kip already manages is left as it is, and one that says the same is
    not written again. ``replaced``: the handler of a record just deleted (kip's wiring retired
    for Auto Mode), for the status event."""
    fields = {"source": source, "handler": handler, "role_source": role_source,
              "existing_handler": found.to_dict() if found else None,
              "request": req.model_dump(exclude_none=True, exclude={"dry_run"}),
              "verified_at": registry.iso(kit.clock()), **kit.recorder.stamps(None),
              **({"owner_team": req.team} if req.team else {})}
    parked = kit.registry.park(cid, status, fields, PARKED, SAME)
    if parked is None:
        return None
    rec, before = parked
    if rec is not before:
        kit.recorder.parked(rec, before, replaced)
    return rec


# what makes a parked record say something new (stamps and the request's echo aside)
SAME = ("status", "handler", "role_source", "existing_handler", "last_error")

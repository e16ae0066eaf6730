"""The skeleton every change follows: observe (reads in parallel) -> plan (pure) -> lease -> run
the plan on its dependency graph -> record. This module holds its shared steps: the cluster's
identity (validated once, at the edge), the first wave of reads, and the second.

Names are written into the record with the lease, before anything is created, so a crash at any
point leaves a record naming everything that may exist.
"""
from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Optional

from chalicelib import aws, errors
from chalicelib.converge.executor import done, gather
from chalicelib.core import kms, naming, records, tenancy
from chalicelib.core.observed import ClusterState, Observed
from chalicelib.core.records import ClusterRecord
from chalicelib.core.spec import RoleRef, resolve_real_role, validate_identity
from chalicelib.usecases import reads
from chalicelib.usecases.kit import Kit


@dataclass
class Outcome:
    record: Optional[ClusterRecord]
    changed: bool = False
    actions: list = field(default_factory=list)
    dry_run: bool = False
    skipped: list = field(default_factory=list)
    opted_out: bool = False
    # "queue"/"dlq" -> GetQueueAttributes (All) as this run read them: the sweep's health read
    # takes its counts from here instead of asking SQS again
    queue_attributes: dict = field(default_factory=dict)
    parked: Optional[str] = None    # "external" / "no_karpenter": recorded, nothing created
    warning: Optional[str] = None   # what the caller must do now (a teardown mid-takeover)


@dataclass
class Context:
    """What the first wave of reads found for one run."""
    cid: naming.ClusterId
    target: aws.Target
    names: naming.Names
    record: Optional[ClusterRecord]
    found: reads.Located
    role: Optional[RoleRef] = None
    cluster: Optional[ClusterState] = None
    kms_key_arn: Optional[str] = None
    counting: Optional[list] = None     # the rule quota's reads, started early
    claimed: Optional[Future] = None    # the rule's claim on the shared count, started early
    role_source: Optional[str] = None   # request | pod-identity | irsa | template
    existing: Optional[Any] = None      # another tool's handler (core.brownfield)
    looked: bool = False                # this run looked for other handlers
    on_existing: Optional[str] = None   # report | coexist | takeover, for this run
    cutover: Optional[dict] = None      # the takeover's cutover this run records (core.cutover)
    inline: Optional[tuple] = None      # (role, Future of its inline policies) read early
    namespace: Optional[str] = None     # Karpenter's namespace, when discovery found it


def identity(kit: Kit, cluster_name: str, account_id: Optional[str] = None,
             region: Optional[str] = None) -> naming.ClusterId:
    """The only way to build a cluster's identity: every part checked (400 otherwise), the
    account inside the allow-list (403 otherwise). Called once, where a request or an event
    enters; the use cases take the identity it returns."""
    settings = kit.settings
    account = account_id or aws.own_account(settings)
    region = region or settings.region
    validate_identity(cluster_name, account, region, settings,
                      aws.available_regions(naming.partition_for(region)))
    tenancy.require_allowed(account, aws.own_account(settings), settings,
                            kit.org.organization_of)
    return naming.ClusterId(account, region, cluster_name)


def target_for(kit: Kit, cid: naming.ClusterId) -> aws.Target:
    target = aws.Target(cid.account_id, cid.region, kit.settings)
    target.warm()
    return target


UNREAD = object()      # a value this run has not read yet


def first_wave(kit: Kit, cid: naming.ClusterId, role: Optional[RoleRef], roles: list,
               kms_key_id: Optional[str] = None, legacy: bool = False,
               known: Optional[ClusterRecord] = None, cluster: Any = UNREAD,
               inline: bool = False) -> Context:
    """The first parallel wave. ``known``: the record as just read (a reconcile): not read
    again, and its queue URLs and resolved role save their look-ups. ``cluster``: the EKS
    cluster as role discovery reads it (a Future, or the answer; None: not found), not asked
    for again. ``inline``: the role's inline policies are read too (a run that will look for
    other handlers)."""
    target, names = target_for(kit, cid), kit.names(cid)
    submit = kit.workers.submit
    record_f = done(known) if known else submit(kit.registry.get, cid)
    cluster_f = role_f = key_f = policy_f = None
    if role is not None:
        cluster_f = submit(target.describe_cluster, cid.cluster_name) if cluster is UNREAD \
            else cluster if isinstance(cluster, Future) else done(cluster)
        seen = records.known_role(known, role.name)
        role_f = done(seen) if seen else submit(target.get_role, role.name)
    inline_f = submit(target.inline_documents, role.name) if inline and role else None
    if kms_key_id:
        key_f = submit(target.describe_key, kms_key_id)
        policy_f = submit(target.key_policy, kms_key_id)
    locating = reads.locate(target, names, roles, kit.workers, records.known_urls(known))
    gather([f for f in (record_f, cluster_f, role_f, key_f, policy_f) if f is not None])
    record, found = record_f.result(), locating()
    recorded = record.recorded_names() if record else None
    if recorded and recorded != names:          # names are recorded once: the record wins
        names = recorded.upgraded(names)        # (a five-rule record gains the one rule)
        found = reads.locate(target, names, roles, kit.workers)()
    elif record is None and legacy:             # a teardown without a record: look for the
        names = kit.names(cid, legacy=True)     # five-rule layout's rules as well
        found = reads.locate(target, names, roles, kit.workers)()
    ctx = Context(cid, target, names, record, found, role)
    if inline_f is not None and role is not None:
        ctx.inline = (role.name, inline_f)
    if cluster_f is not None and role_f is not None:
        ctx.cluster = cluster_f.result()
        if ctx.cluster is None:
            raise errors.ClusterNotFound(
                f"EKS cluster {cid.cluster_name!r} does not exist in account "
                f"{cid.account_id} region {cid.region}; nothing was created",
                field="cluster_name")
        ctx.role = resolve_real_role(role, role_f.result())
    if key_f is not None and policy_f is not None:
        ctx.kms_key_arn = kms.usable_key_arn(kms_key_id, key_f.result(), cid.account_id,
                                             cid.region, policy=policy_f.result())
    return ctx


def switch_role(kit: Kit, ctx: Context, role: RoleRef) -> None:
    """Discovery found another role than the first wave read: read that one (one wave)."""
    info = kit.workers.submit(ctx.target.get_role, role.name)
    ctx.found.roles.update(reads.roles(ctx.target, [role.name], kit.workers))
    ctx.role = resolve_real_role(role, info.result())


def previous_role(kit: Kit, ctx: Context) -> Optional[str]:
    """A role the record says holds the policy, other than the one wanted now."""
    att = ctx.record.resources.attachment if ctx.record else None
    if att and att.role_name and ctx.role and att.role_name != ctx.role.name:
        ctx.found.roles.update(reads.roles(ctx.target, [att.role_name], kit.workers))
        return att.role_name
    return None


def _alarms_to_read(kit: Kit, ctx: Context, purpose: reads.Purpose) -> bool:
    """Alarms are read when kip manages them, when the record lists some (KIP_ALARMS was
    turned off since: they are deleted), and by every teardown (rare, and in the same wave:
    a record from before alarms were recorded may not list them)."""
    return bool(kit.settings.alarms or purpose == "teardown" or
                (ctx.record and ctx.record.resources.alarms))


def detail(kit: Kit, ctx: Context, purpose: reads.Purpose,
           previous: Optional[str] = None) -> Observed:
    """The second wave: what the located resources hold."""
    obs = reads.detail(ctx.target, ctx.names, ctx.found, kit.workers, purpose,
                       read_alarms=_alarms_to_read(kit, ctx, purpose))
    if ctx.role is not None:
        obs.role = ctx.found.roles[ctx.role.name]
    if previous:
        obs.previous_role = ctx.found.roles[previous]
    return obs


def queue_attributes(obs: Observed) -> dict:
    """The attributes of the queues that existed when read (a queue this run created has none)."""
    return {key: st.attributes for key in ("queue", "dlq")
            if (st := getattr(obs, key)) is not None and st.exists and st.attributes}

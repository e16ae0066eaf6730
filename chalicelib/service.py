"""Use cases: provision, describe, list, reconcile, teardown, scheduled sweep.

Every run follows the same shape: observe (reads in parallel) -> plan (pure) -> take the lease ->
execute the plan on its dependency graph (independent calls in parallel) -> record the outcome.
Names are written into the record when the lease is taken, before anything is created, so a crash
at any point leaves a record that names everything that may exist.
"""
from __future__ import annotations

import json
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from aws_lambda_powertools import Logger

from chalicelib import aws, errors, naming, planner, registry
from chalicelib.config import Settings, get_settings
from chalicelib.planner import Action, Observed, PolicyState, QueueState, RuleState
from chalicelib.spec import ClusterRequest, DesiredSpec, RoleRef, build_spec, resolve_role

# A child of app.py's Powertools logger: same JSON format, same keys (the cluster identity).
log = Logger(service="kip", child=True)


@dataclass
class Outcome:
    record: Optional[dict]
    changed: bool = False
    actions: list = field(default_factory=list)
    dry_run: bool = False
    skipped: list = field(default_factory=list)
    round_trips: int = 0
    opted_out: bool = False


class Engine:
    def __init__(self, settings: Optional[Settings] = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.settings = settings or get_settings()
        self.clock = clock
        self.registry = registry.Registry(aws.Store(self.settings), self.settings, clock)
        self._pool: Optional[ThreadPoolExecutor] = None
        self._pool_lock = threading.Lock()

    # ------------------------------------------------------------------ plumbing
    @property
    def pool(self) -> ThreadPoolExecutor:
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.settings.max_workers,
                                                thread_name_prefix="kip-aws")
            return self._pool

    def parallel(self, calls: dict[str, Callable[[], Any]]) -> dict[str, Any]:
        """Run independent calls at once; raise the first failure (in ``calls`` order)."""
        futures = {k: self.pool.submit(fn) for k, fn in calls.items()}
        wait(futures.values())
        for fut in futures.values():
            exc = fut.exception()
            if exc is not None:
                raise exc
        return {k: f.result() for k, f in futures.items()}

    def identity(self, cluster_name: str, account_id: Optional[str] = None,
                 region: Optional[str] = None) -> naming.ClusterId:
        if region and not aws.region_known(region):
            raise errors.ValidationError(
                f"region: {region!r} is not a region where EKS is available (per the AWS SDK's "
                "endpoint data)", field="region",
                allowed="an AWS region code where EKS runs, such as eu-west-1")
        return naming.ClusterId(account_id or aws.own_account(self.settings),
                                region or self.settings.region, cluster_name)

    def names(self, cid: naming.ClusterId) -> naming.Names:
        return naming.names_for(cid, self.settings.prefix, self.settings.iam_path)

    # ------------------------------------------------------------------ observe
    def _stage1(self, t: aws.Target, n: naming.Names, roles: list[str]) -> dict[str, Callable]:
        calls: dict[str, Callable] = {
            "queue_url": lambda: t.queue_url(n.queue),
            "dlq_url": lambda: t.queue_url(n.dlq),
            "policy": lambda: t.get_policy(n.policy_arn),
        }
        for kind, rule in n.rules.items():
            calls[f"rule:{kind}"] = (lambda r=rule: t.describe_rule(r))
        for role in dict.fromkeys(r for r in roles if r):
            calls[f"role:{role}"] = (lambda r=role: t.role_attachments(r))
        return calls

    def _stage2(self, t: aws.Target, n: naming.Names, s1: dict, teardown: bool) -> Observed:
        calls: dict[str, Callable] = {}
        for key in ("queue", "dlq"):
            url = s1[f"{key}_url"]
            if url:
                calls[f"{key}:attrs"] = (lambda u=url: t.queue_attributes(u))
                calls[f"{key}:tags"] = (lambda u=url: t.queue_tags(u))
        for kind, rule in n.rules.items():
            if s1[f"rule:{kind}"]:
                calls[f"targets:{kind}"] = (lambda r=rule: t.rule_targets(r))
                calls[f"tags:{kind}"] = (lambda a=n.rule_arns[kind]: t.rule_tags(a))
        pol = s1["policy"]
        if pol:
            calls["policy:doc"] = lambda: t.policy_document(n.policy_arn, pol["DefaultVersionId"])
            calls["policy:versions"] = lambda: t.policy_versions(n.policy_arn)
            if teardown:
                calls["policy:roles"] = lambda: t.policy_roles(n.policy_arn)
        s2 = self.parallel(calls) if calls else {}
        obs = Observed()
        for key in ("queue", "dlq"):
            attrs = s2.get(f"{key}:attrs")
            if s1[f"{key}_url"] and attrs is not None:
                setattr(obs, key, QueueState(True, s1[f"{key}_url"], attrs, s2[f"{key}:tags"]))
        for kind, rule in n.rules.items():
            d = s1[f"rule:{kind}"]
            if d:
                obs.rules[rule] = RuleState(
                    True, json.loads(d.get("EventPattern") or "null"), d.get("State"),
                    s2[f"tags:{kind}"], s2[f"targets:{kind}"])
        if pol:
            obs.policy = PolicyState(True, aws._tags_dict(pol.get("Tags")),
                                     pol.get("DefaultVersionId"), s2.get("policy:doc"),
                                     s2.get("policy:versions", []), s2.get("policy:roles", []))
        return obs

    # ------------------------------------------------------------------ execute
    def execute(self, target: aws.Target, actions: list[Action]
                ) -> tuple[dict[str, dict], Optional[tuple[Action, errors.KipError]]]:
        """Run each action once its dependencies are done; stop scheduling on the first failure."""
        ids = {a.id for a in actions}
        pending = {a.id: a for a in actions}
        done: dict[str, dict] = {}
        running: dict[Future, Action] = {}
        failure: Optional[tuple[Action, errors.KipError]] = None
        while pending or running:
            if failure is None:
                for aid, a in list(pending.items()):
                    if all(p in done for p in a.after if p in ids):
                        del pending[aid]
                        running[self.pool.submit(getattr(target, a.op), **a.params)] = a
            if not running:
                break
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for fut in finished:
                a = running.pop(fut)
                try:
                    done[a.id] = fut.result() or {}
                except errors.KipError as exc:
                    failure = failure or (a, exc)
                except Exception as exc:  # an unexpected library error: still recorded
                    failure = failure or (a, aws.translate(exc, f"{a.op} {a.name}"))
        return done, failure

    # ------------------------------------------------------------------ records
    def _resources(self, spec_names: naming.Names, cid: naming.ClusterId, obs: Observed,
                   done: dict, kinds: tuple, role: Any, role_exists: bool) -> dict:
        n = spec_names

        def queue(key: str, st: QueueState) -> dict:
            exists = (st.exists or f"{key}.create" in done) and f"{key}.delete" not in done
            url = st.url or done.get(f"{key}.create", {}).get("url")
            return {"name": getattr(n, key), "arn": getattr(n, f"{key}_arn"),
                    "url": url if exists else None, "exists": exists}

        rules = {}
        for kind, rule in n.rules.items():
            st = obs.rules.get(rule, RuleState())
            exists = ((st.exists or f"rule.{kind}" in done)
                      and f"rule.{kind}.delete" not in done)
            has_target = exists and f"targets.{kind}.remove" not in done and (
                f"targets.{kind}" in done
                or any(t.get("Id") == naming.TARGET_ID for t in st.targets))
            rules[kind] = {"name": rule, "arn": n.rule_arns[kind], "exists": exists,
                           "enabled": kind in kinds, "target": has_target}
        pol_exists = (obs.policy.exists or "policy.create" in done) \
            and "policy.delete" not in done
        version = (done.get("policy.version", {}).get("version")
                   or done.get("policy.create", {}).get("version")
                   or obs.policy.default_version)
        attached = bool(role_exists and (n.policy_arn in obs.role.attached or "attach" in done))
        return {
            "queue": queue("queue", obs.queue), "dlq": queue("dlq", obs.dlq), "rules": rules,
            "policy": {"name": n.policy, "arn": n.policy_arn, "path": n.policy_path,
                       "exists": pol_exists, "default_version": version if pol_exists else None},
            "attachment": {"role_name": role.name, "role_arn": role.arn,
                           "role_exists": role_exists, "attached": attached},
        }

    def _save(self, rec: dict, owner: str, previous_status: Optional[str]) -> dict:
        saved = self.registry.save(rec, owner)
        if saved.get("status") != previous_status:
            try:
                aws.publish_status(self.settings, {
                    "cluster": saved["id"], "cluster_name": saved["cluster_name"],
                    "account_id": saved["account_id"], "region": saved["region"],
                    "status": saved["status"], "previous_status": previous_status,
                    "queue_name": saved.get("names", {}).get("queue"),
                    "last_error": saved.get("last_error")})
            except errors.KipError as exc:  # a portal notification never fails provisioning
                log.warning("status event not published", extra={"detail": exc.message})
        return saved

    # ------------------------------------------------------------------ use cases
    def provision(self, req: ClusterRequest, source: str = "api",
                  respect_opt_out: bool = False, reconcile: bool = False) -> Outcome:
        cid = self.identity(req.cluster_name, req.account_id, req.region)
        role = resolve_role(req, cid, self.settings)       # 400/403 before any AWS call
        target = aws.Target(cid.account_id, cid.region, self.settings)
        target.warm()
        names = self.names(cid)
        calls: dict[str, Callable] = {
            "record": lambda: self.registry.get(cid),
            "cluster": lambda: target.describe_cluster(cid.cluster_name),
        }
        if req.kms_key_id:
            calls["kms"] = lambda: target.resolve_kms_key(req.kms_key_id)
        calls.update(self._stage1(target, names, [role.name]))
        rt = 1
        s1 = self.parallel(calls)
        record, cluster = s1["record"], s1["cluster"]
        if record and record.get("names") and record["names"] != names.to_dict():
            names = naming.Names.from_dict(record["names"])   # names are recorded once
            s1.update(self.parallel(self._stage1(target, names, [role.name])))
            rt += 1
        if reconcile and record is None:
            raise errors.RecordNotFound(f"no record for cluster {cid.key}")
        if respect_opt_out and str(cluster["tags"].get(self.settings.opt_out_tag, "")).lower() \
                in ("true", "yes", "1", "opt-out"):
            return Outcome(record, opted_out=True, round_trips=rt)
        if cluster.get("status") in ("DELETING", "FAILED"):
            raise errors.Conflict(f"EKS cluster {cid.cluster_name!r} is {cluster['status']}; "
                                  "nothing was created", field="cluster_name")
        spec = build_spec(req, cid, names, self.settings, s1.get("kms"))
        prev_role = ((record or {}).get("resources", {}).get("attachment", {}) or {}).get(
            "role_name")
        if prev_role and prev_role != role.name:
            s1.update(self.parallel({f"role:{prev_role}": lambda: target.role_attachments(
                prev_role)}))
        now = self.clock()
        if record and registry.is_lease_live(record, now) and not req.dry_run:
            raise self.registry.lost(cid, record, now)

        up_to_date = (record is not None
                      and record.get("status") in ("ready", "waiting_for_role")
                      and record.get("spec_hash") == spec.spec_hash)
        owner = registry.new_token()
        lease: Optional[dict] = None
        if up_to_date or req.dry_run or reconcile:
            obs = self._stage2(target, names, s1, teardown=False)
            rt += 1
        else:   # something will change: take the lease while the rest is read
            # The stage-2 reads run from this thread (they fan out on the pool themselves): a
            # pool task that waits on pool tasks could starve a busy pool.
            lease_f = self.pool.submit(lambda: self.registry.acquire(
                cid, owner, record, self._lease_fields(spec, source, "provisioning", record,
                                                       cluster)))
            try:
                obs = self._stage2(target, names, s1, teardown=False)
            except BaseException:
                wait([lease_f])
                if lease_f.exception() is None:
                    self._release(record, lease_f.result(), owner)
                raise
            lease = lease_f.result()
            rt += 1
        obs.role = s1[f"role:{role.name}"]
        if prev_role and prev_role != role.name:
            obs.previous_role = s1[f"role:{prev_role}"]
        try:
            actions = planner.plan_provision(spec, obs)
        except errors.KipError:     # e.g. ResourceNotOwned: nothing was written, give back the lease
            if lease is not None:
                self._release(record, lease, owner)
            raise
        if req.dry_run:
            return Outcome(record, actions=[a.to_dict() for a in actions], dry_run=True,
                           round_trips=rt + planner.depth(actions))
        if lease is None:
            status_now = "ready" if obs.role.exists else "waiting_for_role"
            if not actions and record and record.get("spec_hash") == spec.spec_hash \
                    and record.get("status") == status_now:
                return Outcome(record, changed=False, round_trips=rt)
            lease = self.registry.acquire(cid, owner, record, self._lease_fields(
                spec, source, "provisioning", record, cluster))
            rt += 1
        done, failure = self.execute(target, actions)
        rt += planner.depth([a for a in actions if a.id in done or (failure and a is failure[0])])
        rec = dict(lease)
        rec["resources"] = self._resources(names, cid, obs, done, spec.event_kinds, role,
                                           obs.role.exists)
        rec["applied"] = [a.id for a in actions if a.id in done]
        if failure:
            action, exc = failure
            log.error("provisioning step failed", extra={
                "step": action.id, "resource": action.name, "code": exc.code,
                "detail": exc.message, "done": sorted(done)})
            rec["status"] = "failed"
            rec["last_error"] = self._last_error(action, exc, "provisioning")
        else:
            rec["status"] = "ready" if obs.role.exists else "waiting_for_role"
            rec.pop("last_error", None)
        saved = self._save(rec, owner, (record or {}).get("status"))
        rt += 1
        if failure:
            exc = failure[1]
            exc.extra["record"] = registry.public_view(saved)
            raise exc
        return Outcome(saved, changed=bool(actions) or record is None
                       or record.get("status") != saved["status"],
                       actions=[a.to_dict() for a in actions], round_trips=rt)

    def _last_error(self, action: Action, exc: errors.KipError, during: str) -> dict:
        return {"step": action.id, "call": action.op, "resource": action.name,
                "code": exc.extra.get("aws_code") or exc.code, "message": exc.message,
                "at": registry.iso_now(self.clock), "during": during}

    def _release(self, record: Optional[dict], lease: dict, owner: str) -> None:
        """Give back a lease taken for a run that stopped before any AWS write: the record
        returns to what it was, or goes away if this run created it."""
        try:
            if record is None:
                self.registry.delete(lease, owner)
            else:
                self.registry.save({**record, "version": lease["version"]}, owner)
        except errors.KipError as exc:
            log.warning("lease not released (it expires on its own)", extra={"detail": exc.message})

    def _lease_fields(self, spec: DesiredSpec, source: str, status: str,
                      record: Optional[dict], cluster: dict) -> dict:
        now = registry.iso_now(self.clock)
        fields = {
            "status": status, "source": source, "spec_hash": spec.spec_hash,
            "request": spec.parameters, "names": spec.names.to_dict(),
            "event_kinds": list(spec.event_kinds),
            "karpenter": {"settings.interruptionQueue": spec.names.queue,
                          "helm_values": {"settings": {"interruptionQueue": spec.names.queue}}},
            "cluster": {k: cluster.get(k) for k in ("arn", "status", "version")},
            "updated_at": now,
        }
        if record is None:
            fields["created_at"] = now
            fields["resources"] = {}
        return fields

    def describe(self, cid: naming.ClusterId) -> dict:
        rec = self.registry.get(cid)
        if rec is None:
            raise errors.RecordNotFound(f"no record for cluster {cid.key}; provision it with "
                                        "POST /clusters", field="cluster_name")
        return rec

    def list(self, limit: int = 50, next_token: Optional[str] = None,
             status: Optional[str] = None) -> tuple[list[dict], Optional[str]]:
        return self.registry.page(limit, next_token, status)

    def reconcile(self, cid: naming.ClusterId, dry_run: bool = False) -> Outcome:
        rec = self.describe(cid)
        if rec.get("status") == "deleting":     # an unfinished teardown: finish it, never undo it
            return self.teardown(cid, source="reconcile", dry_run=dry_run)
        params = dict(rec.get("request") or {})
        params.update(cluster_name=cid.cluster_name, account_id=cid.account_id,
                      region=cid.region, dry_run=dry_run)
        req = ClusterRequest.model_validate(params)
        return self.provision(req, source="reconcile", reconcile=True)

    def teardown(self, cid: naming.ClusterId, source: str = "api",
                 dry_run: bool = False) -> Outcome:
        """Remove everything the record names; without a record, this cluster's tagged
        resources under the computed names (a run whose record write failed)."""
        target = aws.Target(cid.account_id, cid.region, self.settings)
        target.warm()
        names = self.names(cid)
        s1 = self.parallel({"record": lambda: self.registry.get(cid),
                            **self._stage1(target, names, [])})
        record, rt = s1["record"], 1
        if record and record.get("names") and record["names"] != names.to_dict():
            names = naming.Names.from_dict(record["names"])   # teardown uses the record
            s1.update(self.parallel(self._stage1(target, names, [])))
            rt += 1
        now = self.clock()
        if record and registry.is_lease_live(record, now):
            raise self.registry.lost(cid, record, now)
        owner = registry.new_token()
        lease_f = None
        if dry_run:
            obs = self._stage2(target, names, s1, teardown=True)
            actions, skipped = planner.plan_teardown(names, cid, obs)
            return Outcome(record, actions=[a.to_dict() for a in actions], dry_run=True,
                           skipped=skipped, round_trips=rt + 1 + planner.depth(actions))
        if record is not None:      # take the lease while the rest is read
            lease_f = self.pool.submit(lambda: self.registry.acquire(
                cid, owner, record, self._teardown_fields(names, source, record)))
        try:
            obs = self._stage2(target, names, s1, teardown=True)
            actions, skipped = planner.plan_teardown(names, cid, obs)
        except BaseException:
            if lease_f is not None:
                wait([lease_f])
                if lease_f.exception() is None:
                    self._release(record, lease_f.result(), owner)
            raise
        rt += 1
        if lease_f is not None:
            lease = lease_f.result()
        elif not actions:
            raise errors.RecordNotFound(f"no record and no resources for cluster {cid.key}",
                                        field="cluster_name", skipped=skipped or None)
        else:   # no record, but this cluster's tagged resources exist: adopt them to delete
            lease = self.registry.acquire(cid, owner, None,
                                          self._teardown_fields(names, source, None))
            rt += 1
        done, failure = self.execute(target, actions)
        rt += planner.depth([a for a in actions if a.id in done or (failure and a is failure[0])])
        removed = [{"resource": a.resource, "name": a.name, "call": a.op}
                   for a in actions if a.id in done]
        if failure:
            action, exc = failure
            log.error("teardown step failed", extra={
                "step": action.id, "resource": action.name, "code": exc.code,
                "detail": exc.message, "removed": sorted(done)})
            rec = dict(lease)
            # Still "deleting": a retried DELETE, a reconcile or the schedule finishes the job.
            rec["status"] = "deleting"
            rec["last_error"] = self._last_error(action, exc, "teardown")
            rec["removed"] = removed
            rec["resources"] = self._teardown_resources(names, cid, obs, done, record)
            saved = self._save(rec, owner, lease.get("status"))
            exc.extra["record"] = registry.public_view(saved)
            raise exc
        self.registry.delete(lease, owner)
        rt += 1
        if record is not None:
            try:
                aws.publish_status(self.settings, {
                    "cluster": cid.key, "cluster_name": cid.cluster_name,
                    "account_id": cid.account_id, "region": cid.region, "status": "deleted",
                    "previous_status": record.get("status")})
            except errors.KipError as exc:
                log.warning("status event not published", extra={"detail": exc.message})
        return Outcome(None, changed=bool(actions), actions=removed, skipped=skipped,
                       round_trips=rt)

    def _teardown_resources(self, names: naming.Names, cid: naming.ClusterId, obs: Observed,
                            done: dict, record: Optional[dict]) -> dict:
        """What still exists after a teardown stopped part way."""
        att = ((record or {}).get("resources") or {}).get("attachment") or {}
        role = RoleRef(att.get("role_name", ""), att.get("role_arn", ""))
        res = self._resources(names, cid, obs, done, tuple((record or {}).get("event_kinds", ())),
                              role, bool(att.get("role_exists")))
        still = [r for r in obs.policy.attached_roles if f"detach.{r}" not in done]
        res["attachment"]["attached"] = role.name in still
        res["attachment"]["attached_roles"] = still
        return res

    def _teardown_fields(self, names: naming.Names, source: str,
                         record: Optional[dict]) -> dict:
        now = registry.iso_now(self.clock)
        fields = {"status": "deleting", "source": source, "names": names.to_dict(),
                  "updated_at": now}
        if record is None:
            fields.update(created_at=now, resources={})
        return fields

    def sweep(self, max_records: int = 1000) -> dict:
        """The scheduled job: finish waiting/failed/crashed runs, repair drift, and (when
        enabled) adopt EKS clusters that have no record."""
        summary: dict[str, list] = {"repaired": [], "up_to_date": [], "errors": [],
                                    "skipped": [], "adopted": []}
        token, seen = None, 0
        known: set[str] = set()
        while seen < max_records:
            items, token = self.list(limit=100, next_token=token)
            for rec in items:
                seen += 1
                known.add(rec["id"])
                cid = naming.ClusterId(rec["account_id"], rec["region"], rec["cluster_name"])
                if registry.is_lease_live(rec, self.clock()):
                    summary["skipped"].append(rec["id"])
                    continue
                try:
                    out = self.reconcile(cid)       # an unfinished teardown is finished
                    summary["repaired" if out.actions else "up_to_date"].append(rec["id"])
                except errors.KipError as exc:
                    summary["errors"].append({"cluster": rec["id"], "code": exc.code,
                                              "message": exc.message})
            if not token:
                break
        if self.settings.adopt_existing:
            account = aws.own_account(self.settings)
            target = aws.Target(account, self.settings.region, self.settings)
            for name in target.list_clusters():
                cid = naming.ClusterId(account, self.settings.region, name)
                if cid.key in known:
                    continue
                try:
                    out = self.provision(ClusterRequest(cluster_name=name), source="reconcile",
                                         respect_opt_out=True)
                    if not out.opted_out:
                        summary["adopted"].append(cid.key)
                except errors.KipError as exc:
                    summary["errors"].append({"cluster": cid.key, "code": exc.code,
                                              "message": exc.message})
        return summary

"""Reads the current state through the adapter, in parallel, in two waves.

* ``locate``: where things are (queue URLs, rules, the policy, each role's attachments);
* ``detail``: what they hold (attributes, tags, targets, the policy document and versions).

``locate`` submits its reads at once and returns a waiter, so the caller can overlap it with its
own reads (the record, the EKS cluster) in the same wave. All waiting happens in the caller's
thread: no pool task waits on another.
"""
from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Literal, Optional

from chalicelib.converge.executor import Workers, done, gather
from chalicelib.core.naming import Names
from chalicelib.core.observed import Observed, PolicyState, QueueState, RoleState, RuleState

# provision: everything a plan needs; check: a cheaper look at a cluster whose record says it is
# in sync (no tags, no policy versions: ``None`` = not read); teardown: also the policy's holders.
Purpose = Literal["provision", "check", "teardown"]


@dataclass
class Located:
    queue_url: Optional[str] = None
    dlq_url: Optional[str] = None
    policy: Optional[dict] = None                   # {"default_version", "tags"}
    rules: dict = field(default_factory=dict)       # rule name -> {"pattern", "state"} or None
    roles: dict = field(default_factory=dict)       # role name -> RoleState


def locate(target: Any, names: Names, roles: Iterable[str], workers: Workers,
           known_urls: Optional[dict] = None) -> Callable[[], Located]:
    """``known_urls``: queue URLs the record holds (``queue``, ``dlq``): not looked up again
    (a queue gone since is found missing by the second wave)."""
    wanted = list(dict.fromkeys(r for r in roles if r))
    urls = [_known((known_urls or {}).get(key)) or workers.submit(target.queue_url, name)
            for key, name in (("queue", names.queue), ("dlq", names.dlq))]
    policy = workers.submit(target.get_policy, names.policy_arn)
    rules = {rule: workers.submit(target.describe_rule, rule) for rule in rule_names(names)}
    role_reads = {role: workers.submit(target.role_attachments, role) for role in wanted}

    def result() -> Located:
        everything: list[Future] = [*urls, policy, *rules.values(), *role_reads.values()]
        gather(everything)
        return Located(urls[0].result(), urls[1].result(), policy.result(),
                       {k: f.result() for k, f in rules.items()},
                       {r: f.result() for r, f in role_reads.items()})
    return result


def _known(value: Optional[str]) -> Optional[Future]:
    return done(value) if value else None


def rule_names(names: Names) -> dict[str, str]:
    """Every rule name to look at -> its ARN: the one rule, and any legacy rules."""
    out = {names.rule: names.rule_arn} if names.rule else {}
    out.update({name: names.rule_arns[kind] for kind, name in names.rules.items()})
    return out


def roles(target: Any, names: Iterable[str], workers: Workers) -> dict[str, RoleState]:
    wanted = list(dict.fromkeys(n for n in names if n))
    return dict(zip(wanted, gather([workers.submit(target.role_attachments, r) for r in wanted])))


def detail(target: Any, names: Names, found: Located, workers: Workers,
           purpose: Purpose, read_alarms: bool = False) -> Observed:
    full = purpose != "check"

    def submit(fn: Callable, *args: Any, wanted: bool = True) -> Future:
        return workers.submit(fn, *args) if wanted else _known("not read")  # type: ignore
    alarm_reads = alarms(target, names, workers) if read_alarms else (lambda: None)
    queues = {key: (url, submit(target.queue_attributes, url),
                    submit(target.queue_tags, url, wanted=full))
              for key, url in (("queue", found.queue_url), ("dlq", found.dlq_url)) if url}
    rules = {rule: (found.rules[rule], submit(target.rule_targets, rule),
                    submit(target.rule_tags, arn, wanted=full))
             for rule, arn in rule_names(names).items() if found.rules.get(rule)}
    pol, policy_reads = found.policy, []
    if pol:
        policy_reads = [submit(target.policy_document, names.policy_arn, pol["default_version"]),
                        submit(target.policy_versions, names.policy_arn, wanted=full)]
        if purpose == "teardown":
            policy_reads.append(submit(target.policy_holders, names.policy_arn))
    gather([f for _, *fs in queues.values() for f in fs]
           + [f for _, *fs in rules.values() for f in fs] + policy_reads)

    obs = Observed()
    for key, (url, attrs, tags) in queues.items():
        if attrs.result() is not None:      # gone between the two waves: not there
            setattr(obs, key, QueueState(True, url, attrs.result(),
                                         tags.result() if full else None))
    for rule, (described, targets, tags) in rules.items():
        obs.rules[rule] = RuleState(True, described["pattern"], described["state"],
                                    tags.result() if full else None, targets.result())
    if pol:
        obs.policy = PolicyState(True, pol["tags"], pol["default_version"],
                                 policy_reads[0].result(),
                                 policy_reads[1].result() if full else None)
        if purpose == "teardown":
            holders = policy_reads[2].result()
            obs.policy.attached_roles = holders.roles
            obs.policy.attached_users = holders.users
            obs.policy.attached_groups = holders.groups
    obs.alarms = alarm_reads()
    return obs


def alarms(target: Any, names: Names, workers: Workers) -> Callable[[], dict]:
    """The cluster's CloudWatch alarms: DescribeAlarms by name and each alarm's tags (its ARN is
    known), all at once. Read when ``KIP_ALARMS`` is on, or the record lists alarms, or a
    teardown has no record (see ``Engine._detail``)."""
    from chalicelib.converge import alarms as kinds
    wanted = list(kinds.names(names).values())
    described = workers.submit(target.describe_alarms, wanted)
    tags = {n: workers.submit(target.alarm_tags,
                              kinds.alarm_arn(target.account, target.region, n)) for n in wanted}

    def result() -> dict:
        gather([described, *tags.values()])
        return {n: {**a, "tags": tags[n].result()} for n, a in described.result().items()}
    return result

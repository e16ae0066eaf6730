"""Pure: the CloudWatch alarms kip keeps per cluster when ``KIP_ALARMS=true``, and the actions
that converge them (called at the end of ``planner.plan_provision`` / ``plan_teardown``).

* ``<queue>-consumer-stale``: the queue's ``ApproximateAgeOfOldestMessage`` (Maximum,
  5 minutes) above ``KIP_STALE_SECONDS``: nobody reads the queue;
* ``<queue>-dlq-not-empty``: the DLQ's ``ApproximateNumberOfMessagesVisible`` above 0.

Both treat missing data as not breaching (SQS stops reporting metrics for a queue idle for six
hours). They carry kip's ownership tags; an alarm of that name without them is never touched.
``PutMetricAlarm`` is an upsert whose ``Tags`` only apply on creation: an existing alarm missing
the tags is tagged on its own (``TagResource``). ``DeleteAlarms`` deletes nothing when one name
is wrong, so each alarm is deleted alone.
"""
from __future__ import annotations

from typing import Any, Optional

from chalicelib.core import naming
from chalicelib.errors import ResourceNotOwned
from chalicelib.converge.actions import Action
from chalicelib.core.records import Effect

ALARM_MAX = 255             # CloudWatch alarm names: 1-255 characters
PERIOD = 300
KINDS = {"stale": "-consumer-stale", "dlq": "-dlq-not-empty"}
# The fields of DescribeAlarms' answer that kip sets (drift in any of them is repaired).
COMPARED = ("Namespace", "MetricName", "Dimensions", "Statistic", "Period", "EvaluationPeriods",
            "Threshold", "ComparisonOperator", "TreatMissingData", "ActionsEnabled")


def names(n: naming.Names) -> dict[str, str]:
    """kind -> alarm name: the recorded queue name and a suffix (within CloudWatch's limit
    through ``fit``; the suffixes end differently, so two queues never share an alarm name)."""
    return {kind: naming.fit("", n.queue, suffix, ALARM_MAX) for kind, suffix in KINDS.items()}


def alarm_arn(account: str, region: str, name: str) -> str:
    return f"arn:{naming.partition_for(region)}:cloudwatch:{region}:{account}:alarm:{name}"


def desired(spec: Any) -> dict[str, dict]:
    """alarm name -> PutMetricAlarm parameters (empty when alarms are off)."""
    threshold: Optional[int] = getattr(spec, "alarm_threshold", None)
    if threshold is None:
        return {}
    cid, n = spec.cid, spec.names
    wanted = names(n)
    tags = naming.ownership_tags(cid)

    def alarm(name: str, queue: str, metric: str, value: float, what: str) -> dict:
        return {"AlarmName": name, "Namespace": "AWS/SQS", "MetricName": metric,
                "Dimensions": [{"Name": "QueueName", "Value": queue}],
                "Statistic": "Maximum", "Period": PERIOD, "EvaluationPeriods": 1,
                "Threshold": float(value), "ComparisonOperator": "GreaterThanThreshold",
                "TreatMissingData": "notBreaching", "ActionsEnabled": True,
                "AlarmDescription": f"kip: {what} ({cid.key})"[:1024],
                "Tags": [{"Key": k, "Value": v} for k, v in sorted(tags.items())]}
    return {
        wanted["stale"]: alarm(wanted["stale"], n.queue, "ApproximateAgeOfOldestMessage",
                               threshold, "Karpenter is not reading its interruption queue"),
        wanted["dlq"]: alarm(wanted["dlq"], n.dlq, "ApproximateNumberOfMessagesVisible", 0,
                             "interruption events reached the dead-letter queue"),
    }


def differs(want: dict, found: dict) -> bool:
    return any(_norm(k, want.get(k)) != _norm(k, found.get(k)) for k in COMPARED)


def _norm(key: str, value: Any) -> Any:
    if key == "Dimensions":
        return sorted((d.get("Name"), d.get("Value")) for d in value or [])
    if key in ("Threshold",) and value is not None:
        return float(value)
    return value


def plan_provision(spec: Any, obs: Any) -> list:
    """Create or repair the desired alarms; delete kip's own alarms no longer desired (all of
    them once ``KIP_ALARMS`` is off: the run reads them while the record lists any). Nothing when
    the run did not read alarms (``obs.alarms`` None: off, and none recorded)."""
    found: Optional[dict] = getattr(obs, "alarms", None)
    if found is None:
        return []
    cid, actions = spec.cid, []
    want = desired(spec)
    for name, params in want.items():
        seen = found.get(name)
        if seen is not None and not naming.is_owned(seen.get("tags"), cid):
            raise ResourceNotOwned(
                f"CloudWatch alarm {name!r} already exists and is not managed by this service "
                f"for cluster {cid.key}; nothing was changed. Delete or rename it, or set "
                "KIP_ALARMS=false.", resource=name, resource_type="CloudWatch alarm")
        if seen is None or differs(params, seen):
            actions.append(Action(f"alarm.{name}", "put_metric_alarm",
                                  "create" if seen is None else "update", "alarm", name,
                                  {"params": params},
                                  effect=Effect.of("alarm", key=name, exists=True)))
        if seen is not None and any(seen.get("tags", {}).get(t["Key"]) != t["Value"]
                                    for t in params["Tags"]):
            actions.append(Action(f"alarm.{name}.tag", "tag_alarm", "update", "alarm", name,
                                  {"arn": alarm_arn(cid.account_id, cid.region, name),
                                   "tags": {t["Key"]: t["Value"] for t in params["Tags"]}}))
    for name, seen in found.items():
        if name not in want and naming.is_owned(seen.get("tags"), cid):
            actions.append(_delete(name))
    return actions


def plan_teardown(cid: naming.ClusterId, obs: Any, skipped: list) -> list:
    """Delete kip's own alarms of this cluster; report (and keep) anyone else's."""
    found: Optional[dict] = getattr(obs, "alarms", None)
    actions = []
    for name, seen in (found or {}).items():
        if naming.is_owned(seen.get("tags"), cid):
            actions.append(_delete(name))
        else:
            skipped.append({"resource": "alarm", "name": name,
                            "reason": "exists but is not tagged as this cluster's; left untouched"})
    return actions


def _delete(name: str) -> Any:
    return Action(f"alarm.{name}.delete", "delete_alarm", "delete", "alarm", name,
                  {"name": name}, effect=Effect.of("alarm", key=name, exists=False))

"""Pure: a takeover's cutover, decided from what CloudWatch says about both queues' readers.

Karpenter long-polls its interruption queue all the time (``ReceiveMessage``, 20-second waits),
whether or not events come. SQS counts every such call: ``NumberOfMessagesReceived`` (messages the
calls returned) and ``NumberOfEmptyReceives`` (calls that returned none), in ``AWS/SQS`` by
``QueueName``. A queue Karpenter reads has receive calls in every minute; a queue nobody reads has
none (SQS publishes no datapoint for a queue nobody touches and that holds nothing: no datapoint
is read as no reads). kip itself never receives from either queue (its health reads attributes).

The record's ``cutover`` (``on_existing=takeover``) has two states:

* ``waiting``: Karpenter still reads the other tool's queue, or nothing reads kip's, over the
  last ``window`` seconds (``reason`` says which). While waiting, kip's queue keeps messages only
  ``HOLD_RETENTION`` seconds: it is fed every interruption event of the account-region and nobody
  reads it, so the 14 days it keeps otherwise would hand Karpenter days of stale events at the
  switch. Five minutes is what Karpenter's own CloudFormation keeps, and longer than a Spot
  warning lives (2 minutes). A purge at the switch was the other choice: it would also throw
  away the events of the minute Karpenter switches (a live Spot warning among them), PurgeQueue
  is allowed once a minute and takes up to 60 s, and a purge kip misses leaves the pile.
* ``switched``: kip's queue was read and the other tool's was not, over the whole window. kip's
  queue gets its requested retention back. The other wiring is still kip's to report, never to
  touch: ``old_queue_still_fed`` stays true while rules still target the old queue, and ``next``
  names the tool's own way to remove them.

Metrics that cannot be read leave the state as it was (``reason: metrics_unreadable``). A switched
cluster whose old queue is read again goes back to waiting while the old rules still feed it; one
whose Karpenter pauses (nothing reads either queue) stays switched.
"""
from __future__ import annotations

from typing import Optional

from chalicelib.core import brownfield

HOLD_RETENTION = 300
READ_METRICS = ("NumberOfMessagesReceived", "NumberOfEmptyReceives")
KIP, OLD = "kip", "old"
STATES = ("waiting", "switched")


def queries(kip_queue: str, old_queue: str, window: int) -> list[dict]:
    """One GetMetricData call: both read metrics of both queues, summed in one bucket per
    window (Period: whole minutes)."""
    period = max(60, window - window % 60)
    return [{"Id": f"{who}{i}", "ReturnData": True, "MetricStat": {
        "Metric": {"Namespace": "AWS/SQS", "MetricName": metric,
                   "Dimensions": [{"Name": "QueueName", "Value": queue}]},
        "Period": period, "Stat": "Sum"}}
        for who, queue in ((KIP, kip_queue), (OLD, old_queue))
        for i, metric in enumerate(READ_METRICS)]


def reads(series: dict) -> tuple[float, float]:
    """Receive calls on (kip's queue, the old queue) over the window."""
    def total(who: str) -> float:
        return sum(v for i in range(len(READ_METRICS)) for _, v in series.get(f"{who}{i}", []))
    return total(KIP), total(OLD)


def helm_change(queue: str, namespace: str) -> str:
    """The one value to change, on the chart version the cluster runs (``--version``: without
    it Helm takes the newest chart, which with ``--reuse-values`` may be another major)."""
    return (f"helm upgrade karpenter oci://public.ecr.aws/karpenter/karpenter -n {namespace} "
            f"--version <the chart version it runs: helm list -n {namespace}> --reuse-values "
            f"--set settings.interruptionQueue={queue}")


def begin(existing: dict, cluster: str, queue: str, namespace: str, stamp: str,
          window: int) -> dict:
    """The cutover a takeover starts with: waiting, nothing observed yet."""
    return {"state": "waiting", "reason": "not_yet_observed", "tool": existing["tool"],
            "removal": brownfield.how_to_remove(existing["tool"], cluster),
            "old_queue": existing["queue"], "old_queue_arn": existing["queue_arn"],
            "old_rules": list(existing["rules"]), "queue": queue,
            "helm": helm_change(queue, namespace), "window_seconds": window,
            "retention_while_waiting": HOLD_RETENTION, "kip_queue_reads": None,
            "old_queue_reads": None, "old_queue_still_fed": True, "started_at": stamp,
            "switched_at": None, "checked_at": None,
            "next": _next("waiting", "not_yet_observed", "", queue, existing["queue"], True)}


def step(previous: dict, kip_reads: Optional[float], old_reads: Optional[float],
         old_fed: Optional[bool], stamp: str) -> dict:
    """The cutover after one look: ``kip_reads``/``old_reads`` None when the metrics could not
    be read (the state stays), ``old_fed`` None when the rules could not be listed (as
    before)."""
    fed = previous.get("old_queue_still_fed", True) if old_fed is None else old_fed
    state = previous["state"]
    if kip_reads is None or old_reads is None:
        reason = "metrics_unreadable"
    elif old_reads > 0 and fed:
        state, reason = "waiting", "old_queue_read"
    elif kip_reads <= 0:    # a switched Karpenter that pauses (scaled to zero) stays switched
        reason = "kip_queue_unread"
    else:
        state, reason = "switched", "kip_queue_read_old_not"
    out = {**previous, "state": state, "reason": reason, "checked_at": stamp,
           "kip_queue_reads": kip_reads, "old_queue_reads": old_reads,
           "old_queue_still_fed": fed,
           "next": _next(state, reason, previous["removal"], previous["queue"],
                         previous["old_queue"], fed)}
    if state == "switched" and previous["state"] != "switched":
        out["switched_at"] = stamp
    return out


def _next(state: str, reason: str, removal: str, queue: str, old_queue: str,
          fed: bool) -> Optional[str]:
    if state == "waiting":
        why = {"old_queue_read": f"Karpenter still reads {old_queue}",
               "kip_queue_unread": f"nothing reads kip's queue {queue} yet",
               "metrics_unreadable": "the queues' metrics could not be read"}.get(reason, "")
        return (f"{why + ': ' if why else ''}point Karpenter at kip's queue "
                f"(settings.interruptionQueue={queue}) and roll it out; kip moves to switched "
                f"once {queue} is read and {old_queue} is not for the whole window")
    if fed:
        return (f"Karpenter reads kip's queue {queue}; rules still feed {old_queue}: "
                f"{removal}")
    return None


LEGACY = {"wired": "waiting", "retire_other": "switched"}    # the states before the metrics


def resumed(previous: Optional[dict], existing: Optional[dict], cluster: str, queue: str,
            namespace: str, stamp: str, window: int) -> Optional[dict]:
    """A record's cutover after a full look found ``existing`` (the other handler, or None):
    one under way goes on (the old wiring back after it was gone: fed again); one in the states
    kip recorded before it read metrics is started again in the state it had reached; None
    when there is none (the caller starts a takeover's)."""
    state = (previous or {}).get("state")
    if previous and state in STATES:
        back = existing is not None and existing["queue"] == previous["old_queue"]
        return {**previous, "old_queue_still_fed": True} if back else previous
    if state in LEGACY and existing is not None:
        return {**begin(existing, cluster, queue, namespace, stamp, window),
                "state": LEGACY[state]}
    return None


def holding(cutover: Optional[dict]) -> bool:
    """Whether kip's queue keeps messages only ``HOLD_RETENTION`` seconds now."""
    return bool(cutover) and cutover.get("state") == "waiting"


def watching(cutover: Optional[dict]) -> bool:
    """Whether the sweep still looks at the cutover: waiting, or switched while the old rules
    still feed the old queue."""
    return bool(cutover) and cutover.get("state") in STATES and (
        cutover["state"] == "waiting" or bool(cutover.get("old_queue_still_fed")))


def after_teardown(cutover: Optional[dict]) -> Optional[str]:
    """What a caller must know once kip's wiring of a taken-over cluster is gone: Karpenter may
    read kip's queue by now (switched), and the other tool's queue is only still there if its
    rules still feed it. None outside a takeover."""
    if not cutover or cutover.get("state") not in STATES:
        return None
    old = cutover.get("old_queue")
    if cutover["state"] == "switched" and cutover.get("old_queue_still_fed"):
        return (f"Karpenter was reading kip's queue {cutover.get('queue')}, which is gone: "
                f"point it back at {old} (settings.interruptionQueue={old}, still fed by the "
                f"{cutover.get('tool')} rules) or it handles no interruptions")
    if cutover["state"] == "switched":
        return (f"Karpenter was reading kip's queue {cutover.get('queue')}, which is gone, and "
                f"the {cutover.get('tool')} wiring was removed: the cluster has no interruption "
                "handling until a queue is wired again")
    return (f"the takeover was still waiting: Karpenter reads {old}, which the "
            f"{cutover.get('tool')} wiring still feeds")

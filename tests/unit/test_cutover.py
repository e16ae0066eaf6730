"""Pure cutover rules: the state a takeover is in, from both queues' receive calls over the window
and whether rules still feed the other tool's queue."""
from __future__ import annotations

import pytest

from chalicelib.core import cutover

EXISTING = {"tool": "terraform-aws-eks", "queue": "Karpenter-brown",
            "queue_arn": "arn:aws:sqs:eu-west-1:123456789012:Karpenter-brown",
            "rules": ["KarpenterSpotInterrupt-1"]}


def started(**changes) -> dict:
    return {**cutover.begin(EXISTING, "brown", "kip-brown", "kube-system", "t0", 3600), **changes}


@pytest.mark.parametrize("before, kip, old, fed, state, reason", [
    ("waiting", 0, 120, True, "waiting", "old_queue_read"),
    ("waiting", 180, 120, True, "waiting", "old_queue_read"),      # both read: not yet
    ("waiting", 0, 0, True, "waiting", "kip_queue_unread"),
    ("waiting", 180, 0, True, "switched", "kip_queue_read_old_not"),
    ("waiting", None, 0, True, "waiting", "metrics_unreadable"),
    ("switched", None, None, True, "switched", "metrics_unreadable"),
    ("switched", 0, 120, True, "waiting", "old_queue_read"),       # rolled back
    ("switched", 0, 0, True, "switched", "kip_queue_unread"),      # Karpenter paused
    ("switched", 0, 0, False, "switched", "kip_queue_unread"),     # old wiring gone
    ("waiting", 180, 50, False, "switched", "kip_queue_read_old_not"),  # old queue fed no more
])
def test_the_state_follows_the_reads(before, kip, old, fed, state, reason):
    after = cutover.step(started(state=before), kip, old, fed, "t1")
    assert (after["state"], after["reason"]) == (state, reason)
    assert after["switched_at"] == ("t1" if state == "switched" != before else None)


def test_a_takeover_starts_waiting_with_the_helm_change_and_holds_the_queue_short():
    cut = started()
    assert (cut["state"], cut["old_queue"], cut["old_rules"]) == \
        ("waiting", "Karpenter-brown", ["KarpenterSpotInterrupt-1"])
    assert cut["helm"] == ("helm upgrade karpenter oci://public.ecr.aws/karpenter/karpenter "
                           "-n kube-system --version <the chart version it runs: helm list -n "
                           "kube-system> --reuse-values "
                           "--set settings.interruptionQueue=kip-brown")
    assert cutover.holding(cut) and cutover.watching(cut)
    switched = cutover.step(cut, 10, 0, True, "t1")
    assert not cutover.holding(switched) and cutover.watching(switched)
    assert "enable_spot_termination = false" in switched["next"]
    done = cutover.step(switched, 10, 0, False, "t2")
    assert not cutover.watching(done) and done["next"] is None
    assert cutover.step(switched, 10, 0, None, "t2")["old_queue_still_fed"]   # unknown: as was


def test_one_call_reads_both_metrics_of_both_queues_summed_per_window():
    qs = cutover.queries("kip-brown", "Karpenter-brown", 3630)
    assert [(q["Id"], q["MetricStat"]["Metric"]["MetricName"],
             q["MetricStat"]["Metric"]["Dimensions"][0]["Value"]) for q in qs] == [
        ("kip0", "NumberOfMessagesReceived", "kip-brown"),
        ("kip1", "NumberOfEmptyReceives", "kip-brown"),
        ("old0", "NumberOfMessagesReceived", "Karpenter-brown"),
        ("old1", "NumberOfEmptyReceives", "Karpenter-brown")]
    assert {q["MetricStat"]["Period"] for q in qs} == {3600}
    assert cutover.reads({"kip0": [(1, 2.0)], "kip1": [(1, 3.0), (2, 1.0)]}) == (6.0, 0)


def test_a_full_look_carries_the_cutover_on_and_restarts_the_states_before_metrics():
    args = ("brown", "kip-brown", "karpenter", "t5", 3600)
    switched = cutover.step(started(), 10, 0, False, "t1")        # the old wiring was gone
    assert cutover.resumed(switched, None, *args) is switched
    back = cutover.resumed(switched, EXISTING, *args)             # terraform applied again
    assert back["old_queue_still_fed"] and cutover.watching(back)
    # the states kip recorded before it read metrics: begun again where they had got to
    assert cutover.resumed({"state": "wired"}, EXISTING, *args)["state"] == "waiting"
    was = cutover.resumed({"state": "retire_other"}, EXISTING, *args)
    assert (was["state"], was["helm"].split(" -n ")[1][:9]) == ("switched", "karpenter")
    assert cutover.resumed({"state": "done", "next": None}, EXISTING, *args) is None
    assert cutover.resumed({"state": "wired"}, None, *args) is None


def test_a_teardown_mid_takeover_says_what_karpenter_reads_now():
    waiting = started()
    switched = cutover.step(waiting, 10, 0, True, "t1")
    done = cutover.step(switched, 10, 0, False, "t2")
    assert "Karpenter reads Karpenter-brown" in cutover.after_teardown(waiting)
    assert "point it back at Karpenter-brown" in cutover.after_teardown(switched)
    assert "no interruption handling" in cutover.after_teardown(done)
    assert cutover.after_teardown(None) is None
    assert cutover.after_teardown({"state": "done"}) is None

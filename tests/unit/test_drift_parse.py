"""Pure: CloudTrail change events -> kip resource -> candidate clusters; the sweep's pacing."""
from __future__ import annotations

import pytest

from chalicelib.core import drift, naming, policies
from chalicelib.usecases.fanout import TokenBucket
from tests.support.world import ACCOUNT


@pytest.mark.parametrize("cluster", ["payments-prod", "a", "x-dlq", "foo-0123456789",
                                     "a" * 60, "b" * 100, "Z9_z-" * 20])
def test_every_recorded_name_leads_back_to_its_cluster(cluster):
    cid = naming.ClusterId(ACCOUNT, "eu-west-1", cluster)
    names = naming.names_for(cid, "kip-", "/kip/").to_dict()
    for kind, name in [("queue", names["queue"]), ("queue", names["dlq"]),
                       ("policy", names["policy"])] + \
            [("rule", n) for n in drift.recorded_names(
                {k: v for k, v in names.items() if k.startswith("rule") and "arn" not in k})]:
        found = drift.lookup(drift.Change(ACCOUNT, None if kind == "policy" else "eu-west-1",
                                          kind, name, "X"), "kip-")
        assert found is not None and found.region == "eu-west-1", (kind, name)
        assert cluster in found.clusters or (found.cut and cluster.startswith(found.cut)), \
            (kind, name, found)


def test_own_changes_failed_calls_and_foreign_names_are_ignored():
    base = {"detail": {"eventSource": "events.amazonaws.com", "eventName": "DeleteRule",
                       "recipientAccountId": ACCOUNT, "awsRegion": "eu-west-1",
                       "requestParameters": {"name": "kip-x-events"},
                       "userIdentity": {"arn": "arn:aws:sts::1:assumed-role/r/s"}}}
    assert drift.parse(base, "kip-", "/kip/").change.name == "kip-x-events"
    own = {"detail": {**base["detail"], "userIdentity": {
        "arn": "arn:aws:sts::1:assumed-role/kip-dev-role/fn",
        "sessionContext": {"sessionIssuer": {"arn": "arn:aws:iam::1:role/kip-dev-role"}}}}}
    assert drift.parse(own, "kip-", "/kip/", ("arn:aws:iam::1:role/kip-dev-role",)).ignored
    failed = {"detail": {**base["detail"], "errorCode": "AccessDenied"}}
    assert drift.parse(failed, "kip-", "/kip/").ignored
    other_bus = {"detail": {**base["detail"], "requestParameters": {
        "name": "kip-x-events", "eventBusName": "team-bus"}}}
    assert drift.parse(other_bus, "kip-", "/kip/").ignored
    wrong_path = {"detail": {**base["detail"], "eventSource": "iam.amazonaws.com",
                             "eventName": "DeletePolicy", "requestParameters": {
                                 "policyArn": f"arn:aws:iam::{ACCOUNT}:policy/other/kip-x"}}}
    assert drift.parse(wrong_path, "kip-", "/kip/").ignored


@pytest.mark.parametrize("event", [None, 1, "x", [], {"detail": []}, {"detail": {
    "eventSource": "sqs.amazonaws.com", "eventName": "DeleteQueue",
    "requestParameters": {"queueUrl": "https://sqs/x"}}}, {"detail": {
        "eventSource": "iam.amazonaws.com", "eventName": "DeletePolicy",
        "requestParameters": {"policyArn": None}}}])
def test_malformed_events_never_raise(event):
    assert drift.parse(event, "kip-", "/kip/").ignored


def test_the_drift_pattern_filters_on_kips_names():
    p = policies.drift_event_pattern("kip-", "/kip/")
    assert set(p["source"]) == {"aws.events", "aws.sqs", "aws.iam"}
    assert {"policyArn": [{"wildcard": "arn:*:iam::*:policy/kip/kip-*"}]} in \
        p["detail"]["requestParameters"]["$or"]


def test_token_bucket_paces_to_its_rate():
    now, slept = [0.0], []

    def sleep(s):
        slept.append(s)
        now[0] += s
    bucket = TokenBucket(2.0, burst=2.0, clock=lambda: now[0], sleep=sleep)
    for _ in range(6):
        bucket.take()
    assert now[0] == pytest.approx(2.0)          # 2 at once, then one every 0.5 s

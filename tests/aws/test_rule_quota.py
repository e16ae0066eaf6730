"""Fleet density: the EventBridge rule quota is checked before a new cluster's rule is created."""
from __future__ import annotations

import json

import boto3
import pytest

from chalicelib import aws, errors
from chalicelib.core import quota
from chalicelib.core.spec import ClusterRequest
from tests.support.faults import FAULT_URL, Raw
from tests.support.world import make_cluster, make_role
from tests.support import drive


def other_rules(n: int) -> None:
    events = boto3.client("events")
    for i in range(n):
        events.put_rule(Name=f"someone-else-{i}", EventPattern=json.dumps({"source": ["x"]}))


def clusters(*names: str) -> None:
    for name in names:
        make_cluster(name)
        make_role(f"KarpenterController-{name}")


def calls(name: str) -> list:
    seen: list = []
    aws.add_hook(f"before-call.*.{name}", lambda **_: seen.append(name))
    return seen


def test_a_new_rule_that_would_eat_the_reserve_is_refused_before_anything_is_created(kit_factory):
    clusters("a")
    other_rules(5)
    eng = kit_factory(rule_quota=25, rule_reserve=20)
    with pytest.raises(quota.RuleQuotaExceeded) as err:
        drive.provision(eng, ClusterRequest(cluster_name="a"))
    e = err.value
    assert e.status == 409 and e.code == "RuleQuotaExceeded" and not e.retryable
    assert "5 of 25 in use" in e.message and "L-244521F2" in e.message
    assert e.extra["used"] == 5 and e.extra["limit"] == 25 and e.extra["reserve"] == 20
    assert boto3.client("sqs").list_queues().get("QueueUrls", []) == []
    assert boto3.client("iam").list_policies(Scope="Local", PathPrefix="/kip/")["Policies"] == []
    with pytest.raises(errors.RecordNotFound):          # the lease was given back
        drive.describe(eng, drive.identity(eng, "a"))


def test_clusters_that_have_their_rule_are_not_affected_by_a_full_quota(kit_factory):
    clusters("a")
    eng = kit_factory(rule_quota=25, rule_reserve=20)
    drive.provision(eng, ClusterRequest(cluster_name="a"))
    other_rules(10)
    assert drive.reconcile(eng, drive.identity(eng, "a")).record["status"] == "ready"


def test_the_count_is_read_once_per_account_region_and_kept_up_to_date(kit_factory):
    clusters("a", "b", "c")
    listed = calls("ListRules")
    eng = kit_factory(rule_quota=23, rule_reserve=20)   # room for 3 rules in all
    other_rules(1)
    drive.provision(eng, ClusterRequest(cluster_name="a"))
    drive.provision(eng, ClusterRequest(cluster_name="b"))
    with pytest.raises(quota.RuleQuotaExceeded):
        drive.provision(eng, ClusterRequest(cluster_name="c"))           # someone, a, b: full
    assert len(listed) == 1


def test_service_quotas_wins_when_it_can_be_read(kit_factory):
    def answer(request, **_):
        url, request.url = request.url, FAULT_URL
        from botocore.awsrequest import AWSResponse
        body = json.dumps({"Quota": {"ServiceCode": "events", "QuotaCode": "L-244521F2",
                                     "Value": 8.0}}).encode()
        return AWSResponse(url, 200, {"Content-Type": "application/x-amz-json-1.1"}, Raw(body))
    aws.add_hook("before-send.service-quotas.GetServiceQuota", answer)
    clusters("a")
    other_rules(3)
    eng = kit_factory(rule_quota=500, rule_reserve=5)
    with pytest.raises(quota.RuleQuotaExceeded) as err:
        drive.provision(eng, ClusterRequest(cluster_name="a"))
    assert "3 of 8 in use (Service Quotas)" in err.value.message


def test_without_service_quotas_the_regional_default_applies():
    assert quota.default_rule_quota("eu-west-1") == 300
    assert quota.default_rule_quota("af-south-1") == quota.default_rule_quota("eu-south-1") == 100
    assert quota.effective_quota("af-south-1", None, None) == (100, "the default for the region")
    assert quota.effective_quota("eu-west-1", None, 50) == (50, "KIP_RULE_QUOTA")
    quota.check_rule_room(279, 300, "x", 20, "1", "eu-west-1")          # 280 + 20 = 300: fits
    with pytest.raises(quota.RuleQuotaExceeded):
        quota.check_rule_room(280, 300, "x", 20, "1", "eu-west-1")

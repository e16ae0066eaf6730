"""End to end: moto server + `chalice local` on free loopback ports, driven over real HTTP."""
from __future__ import annotations

import json

import boto3
import pytest
import requests

from scripts.localstack import Stack

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def stack():
    with Stack() as s:
        yield s


def test_provision_list_get_reconcile_delete_over_http(stack):
    api = stack.api_url
    with stack.environ():
        iam, eks, events = boto3.client("iam"), boto3.client("eks"), boto3.client("events")
        trust = json.dumps({"Version": "2012-10-17", "Statement": [{"Effect": "Allow",
                            "Principal": {"Service": "eks.amazonaws.com"}, "Action": "sts:AssumeRole"}]})
        role = iam.create_role(RoleName="e2e-eks", AssumeRolePolicyDocument=trust)["Role"]["Arn"]
        eks.create_cluster(name="e2e-cluster", roleArn=role,
                           resourcesVpcConfig={"subnetIds": ["subnet-1"]})
        iam.create_role(RoleName="KarpenterController-e2e-cluster", AssumeRolePolicyDocument=trust)

        # provision
        created = requests.post(f"{api}/clusters", json={"cluster_name": "e2e-cluster"}, timeout=60)
        assert created.status_code == 201, created.text
        assert created.json()["karpenter"]["settings.interruptionQueue"] == "kip-e2e-cluster"

        # list and get
        listed = requests.get(f"{api}/clusters", params={"status": "ready"}, timeout=30).json()
        assert [r["cluster_name"] for r in listed["items"]] == ["e2e-cluster"]
        got = requests.get(f"{api}/clusters/e2e-cluster", timeout=30)
        assert got.status_code == 200 and got.json()["status"] == "ready"

        # a rule deleted behind our back is reported, then repaired
        events.remove_targets(Rule="kip-e2e-cluster-events",
                              Ids=["KarpenterInterruptionQueueTarget"])
        events.delete_rule(Name="kip-e2e-cluster-events")
        report = requests.post(f"{api}/clusters/e2e-cluster/reconcile", json={"dry_run": True},
                               timeout=60).json()
        assert not report["in_sync"] and not report["repaired"]
        fixed = requests.post(f"{api}/clusters/e2e-cluster/reconcile", timeout=60).json()
        assert fixed["repaired"] is True
        assert events.describe_rule(Name="kip-e2e-cluster-events")["State"] == "ENABLED"

        # bad input over real HTTP: 4xx in the one error shape
        bad = requests.post(f"{api}/clusters", data="{oops", timeout=30,
                            headers={"Content-Type": "application/json"})
        assert bad.status_code == 400 and bad.json()["error"]["field"] == "body"

        # delete
        etag = requests.get(f"{api}/clusters/e2e-cluster", timeout=30).headers["ETag"]
        deleted = requests.delete(f"{api}/clusters/e2e-cluster", timeout=60,
                                  headers={"If-Match": etag})
        assert deleted.status_code == 200
        assert requests.get(f"{api}/clusters/e2e-cluster", timeout=30).status_code == 404
        assert boto3.client("sqs").list_queues(QueueNamePrefix="kip-").get("QueueUrls", []) == []
        assert events.list_rules(NamePrefix="kip-")["Rules"] == []
        assert iam.list_policies(Scope="Local", PathPrefix="/kip/")["Policies"] == []

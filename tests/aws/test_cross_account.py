"""Provisioning a cluster of another account through STS.

Every test gets a fresh moto (the ``moto_env`` fixture) and fresh chalicelib clients. AWS state is
checked with plain boto3 clients, never through the code under test.
"""
from __future__ import annotations

import pytest

from chalicelib import aws, errors
from tests.support import drive
from tests.support.snapshots import assert_nothing_managed, managed
from tests.support.world import (CLUSTER, DLQ, OTHER_ACCOUNT, POLICY, QUEUE, REGION, ROLE, cid,
                                 other_account_session, req)


def test_cross_account_provision_goes_through_sts(engine):
    # given: the cluster and its controller role live in another account
    other = other_account_session()
    assert other.client("sts").get_caller_identity()["Account"] == OTHER_ACCOUNT
    iam = other.client("iam")
    iam.create_role(RoleName="eks-cluster-role", AssumeRolePolicyDocument="{}")
    iam.create_role(RoleName=ROLE, AssumeRolePolicyDocument="{}")
    other.client("eks").create_cluster(
        name=CLUSTER, roleArn=f"arn:aws:iam::{OTHER_ACCOUNT}:role/eks-cluster-role",
        resourcesVpcConfig={"subnetIds": ["subnet-0abc"]})
    assumed = []
    aws.add_hook("before-parameter-build.sts.AssumeRole",
                 lambda params, **kw: assumed.append(params["RoleArn"]))

    # when
    out = drive.provision(engine, req(account_id=OTHER_ACCOUNT))

    # then
    assert assumed == [f"arn:aws:iam::{OTHER_ACCOUNT}:role/kip-provisioner"]
    assert out.record["id"] == f"{OTHER_ACCOUNT}/{REGION}/{CLUSTER}"
    assert out.record["status"] == "ready"
    assert out.record["names"]["queue_arn"] == f"arn:aws:sqs:{REGION}:{OTHER_ACCOUNT}:{QUEUE}"
    theirs = managed(other)
    assert set(theirs["queues"]) == {QUEUE, DLQ}
    assert len(theirs["rules"]) == 1
    assert theirs["attachments"] == {
        ROLE: [f"arn:aws:iam::{OTHER_ACCOUNT}:policy/kip/{POLICY}"]}
    assert_nothing_managed()      # nothing in the service's own account
    assert engine.registry.get(cid(account=OTHER_ACCOUNT))["status"] == "ready"

    # when
    drive.teardown(engine, cid(account=OTHER_ACCOUNT))

    # then
    assert_nothing_managed(other)
    assert engine.registry.get(cid(account=OTHER_ACCOUNT)) is None


def test_cross_account_missing_cluster_is_not_found(engine, cluster):
    # when / then: a cluster of the same name in our own account does not count
    with pytest.raises(errors.ClusterNotFound):
        drive.provision(engine, req(account_id=OTHER_ACCOUNT))
    assert_nothing_managed(other_account_session())

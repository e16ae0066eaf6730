"""The teardown use case against moto in-process: nothing left, resources gone by hand or during
the run, and never someone else's queue.

Every test gets a fresh moto (the ``moto_env`` fixture) and fresh chalicelib clients. AWS state is
checked with plain boto3 clients, never through the code under test.
"""
from __future__ import annotations

import threading

import pytest

from chalicelib import aws, errors
from tests.support import drive
from tests.support.snapshots import (assert_nothing_managed, attached, list_kip_policies,
                                     list_queue_urls, list_rule_names, queue_attributes)
from tests.support.world import (POLICY_ARN, QUEUE, cid, delete_dlq_by_hand,
                                 delete_policy_by_hand, delete_queue_by_hand, detach, drop_rule,
                                 drop_target, make_key, make_role, plain, req)


def test_teardown_leaves_nothing(engine, cluster):
    # given
    drive.provision(engine, req())

    # when
    out = drive.teardown(engine, cid())

    # then
    assert out.changed is True
    assert out.skipped == []
    assert_nothing_managed()
    assert engine.registry.get(cid()) is None
    with pytest.raises(errors.RecordNotFound):
        drive.describe(engine, cid())


def test_teardown_removes_old_policy_versions_and_every_attachment(engine, cluster):
    # given
    drive.provision(engine, req())
    drive.provision(engine, req(max_receive_count=9))      # same policy document: no new version
    key_arn = make_key()["Arn"]
    drive.provision(engine, req(kms_key_id=key_arn))       # v2
    make_role("KarpenterController-extra")
    plain("iam").attach_role_policy(RoleName="KarpenterController-extra", PolicyArn=POLICY_ARN)

    # when
    drive.teardown(engine, cid())

    # then
    assert_nothing_managed()
    assert attached("KarpenterController-extra") == []


@pytest.mark.parametrize("by_hand", [delete_queue_by_hand, delete_dlq_by_hand, drop_target,
                                     drop_rule, detach, delete_policy_by_hand])


def test_teardown_after_a_resource_was_deleted_by_hand(engine, cluster, by_hand):
    # given
    drive.provision(engine, req())
    by_hand()

    # when
    drive.teardown(engine, cid())

    # then
    assert_nothing_managed()
    assert engine.registry.get(cid()) is None


@pytest.mark.parametrize("operation, remove", [
    ("DeleteQueue", lambda params: plain("sqs").delete_queue(QueueUrl=params["QueueUrl"])),
    ("RemoveTargets", lambda params: drop_rule()),
    ("DeleteRule", lambda params: plain("events").delete_rule(Name=params["Name"])),
    ("DetachRolePolicy", lambda params: detach()),
    ("DeletePolicy", lambda params: plain("iam").delete_policy(PolicyArn=POLICY_ARN)),
])
def test_teardown_treats_gone_during_the_run_as_done(engine, cluster, operation, remove):
    # given: the resource disappears between observing it and deleting it
    drive.provision(engine, req())
    lock, fired = threading.Lock(), []

    def vanish(params, model, **kw):
        with lock:
            if model.name == operation and not fired:
                fired.append(params)
                remove(params)
    aws.add_hook("before-parameter-build.*.*", vanish)

    # when
    drive.teardown(engine, cid())

    # then
    assert fired
    assert_nothing_managed()
    assert engine.registry.get(cid()) is None


def test_teardown_never_deletes_an_untagged_same_named_queue(engine, cluster):
    # given: after provisioning, someone replaced the queue with their own
    drive.provision(engine, req())
    delete_queue_by_hand()
    plain("sqs").create_queue(QueueName=QUEUE, tags={"team": "someone-else"})
    theirs = queue_attributes(QUEUE)

    # when
    out = drive.teardown(engine, cid())

    # then
    assert [(s["resource"], s["name"]) for s in out.skipped] == [("queue", QUEUE)]
    assert queue_attributes(QUEUE) == theirs
    assert [u.rsplit("/", 1)[1] for u in list_queue_urls()] == [QUEUE]
    assert list_rule_names() == [] and list_kip_policies() == []


def test_teardown_without_a_record_leaves_an_untagged_queue_alone(engine, cluster):
    # given
    plain("sqs").create_queue(QueueName=QUEUE)

    # when
    with pytest.raises(errors.RecordNotFound):
        drive.teardown(engine, cid())

    # then
    assert [u.rsplit("/", 1)[1] for u in list_queue_urls()] == [QUEUE]


def test_teardown_without_a_record_removes_tagged_leftovers(engine, cluster):
    # given: a run that created resources but lost its record
    drive.provision(engine, req())
    rec = engine.registry.get(cid())
    plain("dynamodb").delete_item(TableName=engine.settings.table_name,
                                   Key={"id": {"S": rec["id"]}})

    # when
    drive.teardown(engine, cid())

    # then
    assert_nothing_managed()

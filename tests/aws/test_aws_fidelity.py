"""Real-AWS behaviours moto does not model, reproduced in the wire protocol with botocore
``before-send`` hooks (the strict-AWS layer), and the hostile-user defects of the fidelity issue.
Each test fails on the engine before the fix."""
from __future__ import annotations
import json

import boto3
import pytest

from chalicelib import aws, errors
from chalicelib.core import naming
from chalicelib.core.spec import ClusterRequest
from tests.support.faults import FAULT_URL, Strict
from tests.support.world import ACCOUNT, CLUSTER, REGION, ROLE, load_event, make_cluster
from tests.support import drive
from tests.support.snapshots import attached


@pytest.fixture
def fast(kit_factory):
    """An engine that waits out eventual consistency quickly (the pauses are AWS's, not ours)."""
    return kit_factory(settle_seconds=0.05)


# -- 1. controller roles under an IAM path ----------------------------------------------------

def test_a_role_under_a_path_is_resolved_and_recorded_with_its_real_arn(engine, moto_env):
    make_cluster(CLUSTER)
    iam = boto3.client("iam")
    arn = iam.create_role(RoleName=ROLE, Path="/teams/platform/", AssumeRolePolicyDocument="{}"
                          )["Role"]["Arn"]
    out = drive.provision(engine, ClusterRequest(cluster_name=CLUSTER))
    assert out.record["resources"]["attachment"]["role_arn"] == arn
    assert out.record["status"] == "ready" and attached(ROLE)


def test_a_role_arn_with_the_wrong_path_is_refused_before_any_write(engine, moto_env):
    make_cluster(CLUSTER)
    boto3.client("iam").create_role(RoleName=ROLE, Path="/teams/platform/",
                                    AssumeRolePolicyDocument="{}")
    with pytest.raises(errors.ValidationError) as err:
        drive.provision(engine, ClusterRequest(cluster_name=CLUSTER,
                                        controller_role=f"arn:aws:iam::{ACCOUNT}:role/{ROLE}"))
    assert err.value.field == "controller_role" and "/teams/platform/" in err.value.message
    assert boto3.client("sqs").list_queues().get("QueueUrls", []) == []


# -- 2. IAM is eventually consistent -----------------------------------------------------------

def test_attach_right_after_create_policy_waits_for_iam(fast, cluster):
    strict = Strict("iam", "AttachRolePolicy", "query", "NoSuchEntity",
                    "Policy arn:aws:iam::123456789012:policy/kip/x does not exist or is not "
                    "attachable.", times=2, status=404)
    out = drive.provision(fast, ClusterRequest(cluster_name=cluster))
    assert strict.seen == 3
    assert out.record["status"] == "ready" and out.record["resources"]["attachment"]["attached"]


def test_never_ready_before_the_attachment_exists(fast, cluster):
    Strict("iam", "AttachRolePolicy", "query", "NoSuchEntity", "not attachable", times=99,
           status=404)
    with pytest.raises(errors.AwsCallFailed):
        drive.provision(fast, ClusterRequest(cluster_name=cluster))
    rec = drive.describe(fast, drive.identity(fast, cluster))
    assert rec["status"] == "failed" and not rec["resources"]["attachment"]["attached"]


def test_get_policy_lagging_after_entity_already_exists_is_waited_for(fast, cluster):
    drive.provision(fast, ClusterRequest(cluster_name=cluster))
    # the record is lost, so the next run creates again and meets EntityAlreadyExists...
    boto3.client("dynamodb").delete_item(TableName=fast.settings.table_name, Key={
        "id": {"S": f"{ACCOUNT}/{REGION}/{cluster}"}})
    boto3.client("iam").delete_policy  # noqa: B018 (the policy stays: it is ours)
    names = fast.names(drive.identity(fast, cluster))
    # ...while GetPolicy still says NoSuchEntity for a moment
    Strict("iam", "GetPolicy", "query", "NoSuchEntity", "not yet", times=2, status=404)
    out = drive.provision(fast, ClusterRequest(cluster_name=cluster))
    assert out.record["status"] == "ready"
    assert out.record["resources"]["policy"]["arn"] == names.policy_arn


# -- 3. SQS: the just-created dead-letter queue ------------------------------------------------

def test_redrive_to_a_just_created_dlq_is_retried_within_the_request(fast, cluster):
    strict = Strict("sqs", "CreateQueue", "json", "InvalidParameterValue",
                    "Value {\"deadLetterTargetArn\":\"x\"} for parameter RedrivePolicy is "
                    "invalid. Reason: Dead letter target does not exist.", times=1)
    # the DLQ's own CreateQueue goes first and is the one answered: the queue's retry is the
    # point, so let the DLQ through by creating it beforehand
    names = fast.names(drive.identity(fast, cluster))
    strict.times = 0
    drive.provision(fast, ClusterRequest(cluster_name=cluster, max_receive_count=3))
    boto3.client("sqs").delete_queue(QueueUrl=boto3.client("sqs").get_queue_url(
        QueueName=names.queue)["QueueUrl"])
    strict.seen, strict.times = 0, 1
    out = drive.reconcile(fast, drive.identity(fast, cluster))
    assert strict.seen == 2 and out.record["status"] == "ready"


def test_queue_deleted_recently_is_503_with_retry_after(engine, cluster):
    Strict("sqs", "CreateQueue", "json", "AWS.SimpleQueueService.QueueDeletedRecently",
           "You must wait 60 seconds after deleting a queue before you can create another "
           "with the same name.", times=99)
    with pytest.raises(errors.Throttled) as err:
        drive.provision(engine, ClusterRequest(cluster_name=cluster))
    assert err.value.status == 503 and err.value.retry_after == 60


# -- 5. PutRule ignores Tags on an existing rule; 9. per-entry failures ----------------------

def test_changed_tags_reach_existing_rules_through_tag_resource(engine, cluster):
    drive.provision(engine, ClusterRequest(cluster_name=cluster, tags={"team": "a"}))
    out = drive.provision(engine, ClusterRequest(cluster_name=cluster, tags={"team": "b"},
                                          event_kinds=["spot_interruption"]))
    ops = {(a["op"], a["name"]) for a in out.actions}
    assert ("tag_rule", f"kip-{cluster}-events") in ops
    events = boto3.client("events")
    arn = events.describe_rule(Name=f"kip-{cluster}-events")["Arn"]
    tags = {t["Key"]: t["Value"] for t in events.list_tags_for_resource(ResourceARN=arn)["Tags"]}
    assert tags["team"] == "b"


def test_remove_targets_per_entry_failure_is_a_failure(engine, cluster):
    drive.provision(engine, ClusterRequest(cluster_name=cluster))

    def failed_entry(request, **_):
        url, request.url = request.url, FAULT_URL
        from botocore.awsrequest import AWSResponse
        from tests.support.faults import Raw
        body = json.dumps({"FailedEntryCount": 1, "FailedEntries": [{
            "TargetId": naming.TARGET_ID, "ErrorCode": "InternalFailure",
            "ErrorMessage": "try again"}]}).encode()
        return AWSResponse(url, 200, {"Content-Type": "application/x-amz-json-1.1"}, Raw(body))
    aws.add_hook("before-send.eventbridge.RemoveTargets", failed_entry)
    with pytest.raises(errors.AwsCallFailed) as err:
        drive.teardown(engine, drive.identity(engine, cluster))
    assert err.value.extra["aws_code"] == "InternalFailure"
    assert drive.describe(engine, drive.identity(engine, cluster))["status"] == "deleting"


# -- 6. a quota is not throttling --------------------------------------------------------------

def test_a_full_rule_quota_is_final_at_once_and_names_the_quota(engine, cluster):
    strict = Strict("eventbridge", "PutRule", "json", "LimitExceededException",
                    "The requested resource exceeds the maximum number allowed.", times=99)
    with pytest.raises(errors.QuotaExceeded) as err:
        drive.provision(engine, ClusterRequest(cluster_name=cluster, event_kinds=["spot_interruption"]))
    assert strict.seen == 1                       # no retries
    assert err.value.status == 409 and "L-244521F2" in err.value.message
    assert "300" in err.value.message


# -- 9. a kip policy also attached to a user or group -----------------------------------------

def test_teardown_detaches_the_policy_from_users_and_groups_too(engine, cluster):
    out = drive.provision(engine, ClusterRequest(cluster_name=cluster))
    arn = out.record["resources"]["policy"]["arn"]
    iam = boto3.client("iam")
    iam.create_user(UserName="someone")
    iam.attach_user_policy(UserName="someone", PolicyArn=arn)
    iam.create_group(GroupName="admins")
    iam.attach_group_policy(GroupName="admins", PolicyArn=arn)
    drive.teardown(engine, drive.identity(engine, cluster))
    assert iam.list_policies(Scope="Local", PathPrefix="/kip/")["Policies"] == []
    with pytest.raises(errors.RecordNotFound):
        drive.describe(engine, drive.identity(engine, cluster))


# -- 10. partitions ---------------------------------------------------------------------------

def test_a_region_of_another_partition_is_a_400(engine):
    with pytest.raises(errors.ValidationError) as err:
        drive.identity(engine, CLUSTER, ACCOUNT, "cn-north-1")
    assert err.value.field == "region" and "partition" in err.value.message


# -- 13. list tokens ----------------------------------------------------------------------------

def test_list_tokens_are_bound_to_their_filter_and_integrity_protected(api, moto_env):
    for name in ("a1", "a2", "a3"):         # recorded no_karpenter: records all the same
        make_cluster(name)
        assert api.http.post("/clusters", body=json.dumps({"cluster_name": name}),
                             headers={"Content-Type": "application/json"}).status_code == 202
    token = api.http.get("/clusters?limit=1").json_body["next_token"]
    assert api.http.get(f"/clusters?limit=1&next_token={token}").status_code == 200
    # tampered: the signature's last hex digit changed (to one it is not: the per-deployment
    # secret is random, so a fixed replacement digit was the same one time in 16)
    tampered = token[:-1] + ("1" if token[-1] == "0" else "0")
    for bad in (f"/clusters?status=ready&next_token={token}",       # another filter
                "/clusters?next_token=eyJpZCI6IDEuNX0",               # {"id": 1.5}
                f"/clusters?next_token={tampered}"):
        resp = api.http.get(bad)
        assert resp.status_code == 400, (bad, resp.body)
        assert resp.json_body["error"]["field"] == "next_token"


# -- 16. a foreign target on a kip rule --------------------------------------------------------

def test_a_foreign_target_on_a_kip_rule_is_drift_and_is_removed(engine, cluster):
    drive.provision(engine, ClusterRequest(cluster_name=cluster))
    events = boto3.client("events")
    rule = f"kip-{cluster}-events"
    events.put_targets(Rule=rule, Targets=[{"Id": "eavesdropper", "Arn":
                                            f"arn:aws:sqs:{REGION}:{ACCOUNT}:elsewhere"}])
    report = drive.reconcile(engine, drive.identity(engine, cluster), dry_run=True)
    assert any(a["op"] == "remove_targets" and a["params"]["ids"] == ["eavesdropper"]
               for a in report.actions)
    drive.reconcile(engine, drive.identity(engine, cluster))
    assert [t["Id"] for t in events.list_targets_by_rule(Rule=rule)["Targets"]] == \
        [naming.TARGET_ID]


# -- 17. malformed EKS events are dropped, not retried ----------------------------------------

@pytest.mark.parametrize("mutate", [
    lambda e: e["detail"]["requestParameters"].update(name="bad name!"),
    lambda e: e["detail"].update(recipientAccountId="12345"),
    lambda e: e["detail"].update(awsRegion="mars-north-9"),
    lambda e: e["detail"].update(requestParameters=None),
    lambda e: e.update(detail="nope"),
], ids=["bad-name", "bad-account", "odd-region", "no-parameters", "detail-string"])
def test_malformed_eks_events_are_logged_and_ignored(api, mutate):
    event = load_event("cloudtrail-eks-create-cluster.json")
    event["version"] = "0"
    mutate(event)
    out = api.lambda_.invoke("on_eks_event", event).payload
    assert "ignored" in out, out


# -- 7. API Gateway cuts every integration at 29 s ---------------------------------------------

def test_a_throttled_api_request_stops_retrying_early_and_releases_the_lease(api, cluster):
    strict = Strict("eventbridge", "PutRule", "json", "ThrottlingException", "Rate exceeded",
                    times=99)
    resp = api.http.post("/clusters", body=json.dumps({"cluster_name": cluster}),
                         headers={"Content-Type": "application/json"})
    assert resp.status_code == 503 and int(resp.headers["Retry-After"]) > 0
    import app as service_app
    assert strict.seen == service_app.settings.api_max_attempts == 3   # not the deployed 8
    rec = api.http.get(f"/clusters/{cluster}").json_body
    assert rec["status"] == "failed" and "lease_owner" not in rec and "lease_expires" not in rec


def test_no_aws_attempt_starts_after_the_request_budget_but_the_record_is_written(engine,
                                                                                  cluster):
    with aws.request_budget(0.0, 3):
        with pytest.raises(errors.Throttled) as err:
            drive.provision(engine, ClusterRequest(cluster_name=cluster))
    assert err.value.extra["aws_code"] == "RequestBudgetExceeded" and err.value.retry_after
    # outside a request nothing is capped: the next run converges
    assert drive.provision(engine, ClusterRequest(cluster_name=cluster)).record["status"] == "ready"


def test_in_progress_retry_after_reflects_a_run_not_the_lease(engine, cluster):
    cid = drive.identity(engine, cluster)
    engine.registry.acquire(cid, "someone-else", None, {"status": "provisioning"})
    with pytest.raises(errors.InProgress) as err:
        drive.provision(engine, ClusterRequest(cluster_name=cluster))
    assert 1 <= err.value.retry_after <= 10 < engine.settings.lease_seconds

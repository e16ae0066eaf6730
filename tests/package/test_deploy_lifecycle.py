"""scripts/deploy.py through the stack's lifecycle: a first create that rolled back (deleted, the
retained table cleared, created again), a failed deploy (the stack's failure events printed), the
stack-name check, the parameters on create and update, and the code bucket (--bootstrap).

CloudFormation is a botocore Stubber (moto's CloudFormation never reaches ROLLBACK_COMPLETE); S3 and
DynamoDB are moto."""
from __future__ import annotations

import datetime
import json

import boto3
import pytest
from botocore.stub import ANY, Stubber
from moto import mock_aws

from scripts import deploy

REGION = "eu-west-1"
BUCKET = "kip-deploy-artifacts"
STACK = "kip-prod"
TABLE = "kip-clusters-prod"
CS_ID = "arn:aws:cloudformation:eu-west-1:123456789012:changeSet/kip-prod-1/abc"
STACK_ID = "arn:aws:cloudformation:eu-west-1:123456789012:stack/kip-prod/abc"
NOW = datetime.datetime.now(datetime.timezone.utc)
SAM = {
    "AWSTemplateFormatVersion": "2010-09-09",
    "Transform": "AWS::Serverless-2016-10-31",
    "Parameters": {"OrgId": {"Type": "String", "Default": ""},
                   "AllowedAccountIds": {"Type": "String", "Default": ""},
                   "ExternalId": {"Type": "String", "Default": "", "NoEcho": True}},
    "Resources": {
        "OnEksEvent": {"Type": "AWS::Serverless::Function",
                       "Properties": {"CodeUri": "./deployment.zip", "Handler": "app.on_eks_event"}},
        "ClustersTable": {"Type": "AWS::DynamoDB::Table", "DeletionPolicy": "Retain",
                          "Properties": {"TableName": TABLE}},
    },
}
FAILURE = {"StackId": STACK_ID, "EventId": "e1", "StackName": STACK, "Timestamp": NOW,
           "LogicalResourceId": "ClustersTable", "ResourceType": "AWS::DynamoDB::Table",
           "ResourceStatus": "CREATE_FAILED",
           "ResourceStatusReason": "Resource handler returned message: \"Table already exists: "
                                   "kip-clusters-prod\""}


class Session:
    def __init__(self, **clients):
        self.clients = clients

    def client(self, name):
        return self.clients[name]


@pytest.fixture
def aws(monkeypatch):
    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                 "AWS_DEFAULT_REGION": REGION}.items():
        monkeypatch.setenv(k, v)
    for k in ("AWS_ENDPOINT_URL", "AWS_PROFILE", "KIP_DEPLOY_BUCKET", "KIP_DEPLOY_EXTERNAL_ID"):
        monkeypatch.delenv(k, raising=False)
    with mock_aws():
        s3 = boto3.client("s3", region_name=REGION)
        s3.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION})
        yield


@pytest.fixture
def package_dir(tmp_path):
    (tmp_path / "deployment.zip").write_bytes(b"PK\x03\x04 not really a zip " * 100)
    (tmp_path / "sam.json").write_text(json.dumps(SAM))
    return tmp_path


def args(package_dir, *extra):
    return deploy.parse(["--stage", "prod", "--package-dir", str(package_dir), "--region", REGION,
                         "--bucket", BUCKET, *extra])


def stack(status, **kw):
    return {"Stacks": [{"StackName": STACK, "StackId": STACK_ID, "StackStatus": status,
                        "CreationTime": NOW, **kw}]}


def retained_table(items: int) -> None:
    ddb = boto3.client("dynamodb", region_name=REGION)
    ddb.create_table(TableName=TABLE, BillingMode="PAY_PER_REQUEST",
                     AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
                     KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
                     Tags=[{"Key": "kip.io/managed-by",
                            "Value": "karpenter-interruption-provisioner"}])
    for i in range(items):
        ddb.put_item(TableName=TABLE, Item={"id": {"S": f"111122223333/eu-west-1/c{i}"}})


def create_and_succeed(stub, params):
    stub.add_response("create_change_set", {"Id": CS_ID, "StackId": STACK_ID}, {
        "StackName": STACK, "ChangeSetName": ANY, "ChangeSetType": "CREATE",
        "Capabilities": ANY, "TemplateBody": ANY, "Tags": ANY, "Description": ANY,
        "Parameters": params})
    stub.add_response("describe_change_set", {"Status": "CREATE_COMPLETE"},
                      {"ChangeSetName": CS_ID, "StackName": STACK})
    stub.add_response("execute_change_set", {}, {"ChangeSetName": CS_ID, "StackName": STACK})
    stub.add_response("describe_stacks", stack("CREATE_COMPLETE"), {"StackName": STACK})
    stub.add_response("describe_stacks", stack("CREATE_COMPLETE", Outputs=[
        {"OutputKey": "EksTriggerFunctionArn", "OutputValue": "arn:aws:lambda:x"}]),
        {"StackName": STACK})


def test_a_rolled_back_first_create_is_deleted_its_empty_table_cleared_and_created_again(
        aws, package_dir):
    # given: the first create failed and rolled back; the table it created was retained
    retained_table(items=0)
    cfn = boto3.client("cloudformation", region_name=REGION)
    lines: list[str] = []
    with Stubber(cfn) as stub:
        stub.add_response("describe_stacks", stack("ROLLBACK_COMPLETE"), {"StackName": STACK})
        stub.add_response("describe_stack_events", {"StackEvents": [FAILURE]},
                          {"StackName": STACK})
        stub.add_response("delete_stack", {}, {"StackName": STACK})
        stub.add_client_error("describe_stacks", "ValidationError",
                              "Stack with id kip-prod does not exist")   # the delete waiter: done
        create_and_succeed(stub, [{"ParameterKey": "OrgId", "ParameterValue": "o-abcdefghij"}])
        # when
        result = deploy.deploy(args(package_dir, "--org-id", "o-abcdefghij"),
                               session=Session(s3=boto3.client("s3", region_name=REGION),
                                               cloudformation=cfn,
                                               dynamodb=boto3.client("dynamodb",
                                                                     region_name=REGION)),
                               out=lines.append)
        stub.assert_no_pending_responses()
    # then
    text = "\n".join(lines)
    assert "ROLLBACK_COMPLETE" in text and "Table already exists" in text   # why it failed
    assert f"removed the empty table {TABLE}" in text
    assert TABLE not in boto3.client("dynamodb", region_name=REGION).list_tables()["TableNames"]
    assert result["changed"] is True and "EksTriggerFunctionArn" in result["outputs"]


def test_a_retained_table_with_records_stops_the_deploy_with_what_to_do(aws, package_dir):
    retained_table(items=2)
    cfn = boto3.client("cloudformation", region_name=REGION)
    with Stubber(cfn) as stub:
        stub.add_response("describe_stacks", stack("ROLLBACK_COMPLETE"), {"StackName": STACK})
        stub.add_response("describe_stack_events", {"StackEvents": [FAILURE]},
                          {"StackName": STACK})
        stub.add_response("delete_stack", {}, {"StackName": STACK})
        stub.add_client_error("describe_stacks", "ValidationError",
                              "Stack with id kip-prod does not exist")
        with pytest.raises(SystemExit) as exc:
            deploy.deploy(args(package_dir, "--org-id", "o-abcdefghij"),
                          session=Session(s3=boto3.client("s3", region_name=REGION),
                                          cloudformation=cfn,
                                          dynamodb=boto3.client("dynamodb", region_name=REGION)),
                          out=lambda line: None)
    message = str(exc.value)
    assert "holds records" in message and "create-backup" in message and "delete-table" in message
    assert TABLE in boto3.client("dynamodb", region_name=REGION).list_tables()["TableNames"]


def test_a_failed_deploy_prints_the_stacks_failure_events(aws, package_dir):
    cfn = boto3.client("cloudformation", region_name=REGION)
    lines: list[str] = []
    # the events are stamped now: the script keeps only events of its own deploy (a minute of
    # skew allowed), and on a loaded machine this module's import-time stamp can be older
    failure = {**FAILURE, "Timestamp": datetime.datetime.now(datetime.timezone.utc)}
    with Stubber(cfn) as stub:
        stub.add_client_error("describe_stacks", "ValidationError",
                              "Stack with id kip-prod does not exist")
        stub.add_response("create_change_set", {"Id": CS_ID, "StackId": STACK_ID})
        stub.add_response("describe_change_set", {"Status": "CREATE_COMPLETE"})
        stub.add_response("execute_change_set", {})
        stub.add_response("describe_stacks", stack("ROLLBACK_COMPLETE"))   # the create waiter
        stub.add_response("describe_stacks", stack("ROLLBACK_COMPLETE"))
        stub.add_response("describe_stack_events", {"StackEvents": [
            {**failure, "EventId": "e2", "LogicalResourceId": STACK,
             "ResourceType": "AWS::CloudFormation::Stack", "ResourceStatus": "ROLLBACK_IN_PROGRESS",
             "ResourceStatusReason": "The following resource(s) failed to create: [ClustersTable]"},
            failure]})
        with pytest.raises(SystemExit, match="failed") as exc:
            deploy.deploy(args(package_dir, "--allowed-accounts", "111122223333"),
                          session=Session(s3=boto3.client("s3", region_name=REGION),
                                          cloudformation=cfn), out=lines.append)
    text = "\n".join(lines)
    assert "ClustersTable (AWS::DynamoDB::Table) CREATE_FAILED" in text
    assert "Table already exists" in text and "Traceback" not in text
    assert "deletes the rolled-back stack first" in str(exc.value)


def test_an_update_keeps_the_previous_parameters_and_reads_the_external_id_from_the_env(
        aws, package_dir, monkeypatch):
    monkeypatch.setenv("KIP_DEPLOY_EXTERNAL_ID", "0123456789abcdef0123")
    previous = stack("UPDATE_COMPLETE", Parameters=[
        {"ParameterKey": "OrgId", "ParameterValue": "o-abcdefghij"},
        {"ParameterKey": "AllowedAccountIds", "ParameterValue": ""}])
    template = deploy.rewrite_code_uris(SAM, BUCKET, "k")[0]
    got = deploy.parameters(args(package_dir), template, previous["Stacks"][0])
    assert got == [{"ParameterKey": "OrgId", "UsePreviousValue": True},
                   {"ParameterKey": "AllowedAccountIds", "UsePreviousValue": True},
                   {"ParameterKey": "ExternalId", "ParameterValue": "0123456789abcdef0123"}]


def test_a_new_stack_without_an_account_list_is_refused_before_any_change(aws, package_dir):
    cfn = boto3.client("cloudformation", region_name=REGION)
    with Stubber(cfn) as stub:
        stub.add_client_error("describe_stacks", "ValidationError",
                              "Stack with id kip-prod does not exist")
        with pytest.raises(SystemExit, match="--org-id"):
            deploy.deploy(args(package_dir), session=Session(
                s3=boto3.client("s3", region_name=REGION), cloudformation=cfn),
                out=lambda line: None)
        stub.assert_no_pending_responses()


@pytest.mark.parametrize("name", ["prod-kip", "kip", "kip_prod", "Kip-prod", "kip-" + "x" * 61])
def test_a_stack_name_that_breaks_the_iam_patterns_is_refused_before_deploying(package_dir,
                                                                               name):
    class NoAws:
        def client(self, service):
            raise AssertionError(f"called {service}")
    with pytest.raises(SystemExit, match="kip-"):
        deploy.deploy(args(package_dir, "--stack-name", name), session=NoAws())


def test_bootstrap_creates_a_versioned_encrypted_private_tls_only_bucket(aws, package_dir):
    lines: list[str] = []
    result = deploy.deploy(args(package_dir, "--bootstrap", "--bucket", "kip-code-eu"),
                           session=Session(s3=boto3.client("s3", region_name=REGION)),
                           out=lines.append)
    again = deploy.deploy(args(package_dir, "--bootstrap", "--bucket", "kip-code-eu"),
                          session=Session(s3=boto3.client("s3", region_name=REGION)),
                          out=lines.append)                      # idempotent
    s3 = boto3.client("s3", region_name=REGION)
    assert result == again == {"bootstrapped": "kip-code-eu"}
    assert s3.get_bucket_versioning(Bucket="kip-code-eu")["Status"] == "Enabled"
    rule = s3.get_bucket_encryption(Bucket="kip-code-eu")[
        "ServerSideEncryptionConfiguration"]["Rules"][0]
    assert rule["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"
    block = s3.get_public_access_block(Bucket="kip-code-eu")["PublicAccessBlockConfiguration"]
    assert all(block.values()) and len(block) == 4
    policy = json.loads(s3.get_bucket_policy(Bucket="kip-code-eu")["Policy"])
    assert policy["Statement"][0]["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}


def test_an_update_without_changes_is_a_no_op(aws, package_dir):
    cfn = boto3.client("cloudformation", region_name=REGION)
    lines: list[str] = []
    with Stubber(cfn) as stub:
        stub.add_response("describe_stacks", stack("UPDATE_COMPLETE", Parameters=[
            {"ParameterKey": "OrgId", "ParameterValue": "o-abcdefghij"}]))
        stub.add_response("create_change_set", {"Id": CS_ID, "StackId": STACK_ID}, {
            "StackName": STACK, "ChangeSetName": ANY, "ChangeSetType": "UPDATE",
            "Capabilities": ANY, "TemplateBody": ANY, "Tags": ANY, "Description": ANY,
            "Parameters": [{"ParameterKey": "OrgId", "UsePreviousValue": True}]})
        failed = {"Status": "FAILED", "StatusReason": "The submitted information didn't contain "
                                                      "changes. Submit different information "
                                                      "to create a change set."}
        stub.add_response("describe_change_set", failed)          # the waiter: FAILED
        stub.add_response("describe_change_set", failed)          # the script reads why
        stub.add_response("delete_change_set", {}, {"ChangeSetName": CS_ID, "StackName": STACK})
        stub.add_response("describe_stacks", stack("UPDATE_COMPLETE"))
        result = deploy.deploy(args(package_dir), session=Session(
            s3=boto3.client("s3", region_name=REGION), cloudformation=cfn), out=lines.append)
        stub.assert_no_pending_responses()
    assert result == {"changed": False, "outputs": {}} and "no changes to deploy" in lines

"""scripts/deploy.py: upload the code, point the template's CodeUri at it, one change set."""
from __future__ import annotations

import io
import json
import pathlib
from contextlib import redirect_stdout

import boto3
import pytest
from botocore.stub import ANY, Stubber
from moto import mock_aws

from scripts import deploy
from tests.support.world import REGION

BUCKET = "kip-deploy-artifacts"
SAM = {
    "AWSTemplateFormatVersion": "2010-09-09",
    "Transform": "AWS::Serverless-2016-10-31",
    "Resources": {
        "APIHandler": {"Type": "AWS::Serverless::Function",
                       "Properties": {"CodeUri": "./deployment.zip", "Handler": "app.app"}},
        "OnEksEvent": {"Type": "AWS::Serverless::Function",
                       "Properties": {"CodeUri": "./deployment.zip", "Handler": "app.on_eks_event"}},
        "ClustersTable": {"Type": "AWS::DynamoDB::Table", "Properties": {"TableName": "t"}},
    },
    "Outputs": {"EndpointURL": {"Value": "x"}},
}


@pytest.fixture
def package_dir(tmp_path):
    (tmp_path / "deployment.zip").write_bytes(b"PK\x03\x04 not really a zip " * 100)
    (tmp_path / "sam.json").write_text(json.dumps(SAM))
    return tmp_path


@pytest.fixture
def aws_env(monkeypatch):
    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                 "AWS_DEFAULT_REGION": REGION, "AWS_REGION": REGION}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.delenv("KIP_DEPLOY_BUCKET", raising=False)


def args(package_dir, *extra):
    return deploy.parse(["--stage", "prod", "--package-dir", str(package_dir), "--region", REGION,
                         *extra])


def test_upload_and_rewrite_point_every_code_uri_at_the_uploaded_object(aws_env, package_dir):
    with mock_aws():
        # given
        s3 = boto3.client("s3", region_name=REGION)
        s3.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION})
        key = deploy.code_key(package_dir / "deployment.zip", "kip/prod")
        # when
        assert deploy.upload_code(s3, package_dir / "deployment.zip", BUCKET, key) is True
        again = deploy.upload_code(s3, package_dir / "deployment.zip", BUCKET, key)
        template, changed = deploy.rewrite_code_uris(SAM, BUCKET, key)
        # then
        assert again is False                     # same content, same key: not uploaded twice
        body = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
        assert body == (package_dir / "deployment.zip").read_bytes()
        assert sorted(changed) == ["APIHandler", "OnEksEvent"]
        for lid in changed:
            uri = template["Resources"][lid]["Properties"]["CodeUri"]
            assert uri == f"s3://{BUCKET}/{key}"
            b, _, k = uri[len("s3://"):].partition("/")
            s3.head_object(Bucket=b, Key=k)       # the URI names the object that exists
        assert SAM["Resources"]["APIHandler"]["Properties"]["CodeUri"] == "./deployment.zip"
        assert key.startswith("kip/prod/deployment-") and key.endswith(".zip")


def test_code_key_changes_with_the_code(package_dir):
    k1 = deploy.code_key(package_dir / "deployment.zip", "kip/prod")
    (package_dir / "deployment.zip").write_bytes(b"other")
    assert deploy.code_key(package_dir / "deployment.zip", "kip/prod") != k1


def test_rewrite_refuses_a_code_uri_that_is_not_the_packaged_zip():
    t = json.loads(json.dumps(SAM))
    t["Resources"]["APIHandler"]["Properties"]["CodeUri"] = "./src"
    with pytest.raises(ValueError, match="APIHandler"):
        deploy.rewrite_code_uris(t, BUCKET, "k")


class Session:
    def __init__(self, **clients):
        self.clients = clients

    def client(self, name):
        return self.clients[name]


def test_new_stack_gets_one_create_change_set_with_the_rewritten_template(aws_env, package_dir,
                                                                          monkeypatch):
    monkeypatch.setenv("KIP_DEPLOY_BUCKET", BUCKET)
    with mock_aws():
        s3 = boto3.client("s3", region_name=REGION)
        s3.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION})
        cfn = boto3.client("cloudformation", region_name=REGION)
        key = deploy.code_key(package_dir / "deployment.zip", "kip/prod")
        expected_template, _ = deploy.rewrite_code_uris(SAM, BUCKET, key)
        cs_id = "arn:aws:cloudformation:eu-west-1:123456789012:changeSet/kip-prod-1/abc"
        stack_id = "arn:aws:cloudformation:eu-west-1:123456789012:stack/kip-prod/abc"
        with Stubber(cfn) as stub:
            stub.add_client_error("describe_stacks", "ValidationError",
                                  "Stack with id kip-prod does not exist",
                                  expected_params={"StackName": "kip-prod"})
            stub.add_response("create_change_set", {"Id": cs_id, "StackId": stack_id}, {
                "StackName": "kip-prod", "ChangeSetName": ANY, "ChangeSetType": "CREATE",
                "Capabilities": ["CAPABILITY_IAM", "CAPABILITY_AUTO_EXPAND"],
                "TemplateBody": json.dumps(expected_template, separators=(",", ":")),
                "Tags": [{"Key": "kip.io/stage", "Value": "prod"}], "Description": ANY})
            stub.add_response("describe_change_set", {"Status": "CREATE_COMPLETE",
                                                      "ExecutionStatus": "AVAILABLE"},
                              {"ChangeSetName": cs_id, "StackName": "kip-prod"})
            stub.add_response("execute_change_set", {},
                              {"ChangeSetName": cs_id, "StackName": "kip-prod"})
            stub.add_response("describe_stacks", {"Stacks": [{
                "StackName": "kip-prod", "StackStatus": "CREATE_COMPLETE",
                "CreationTime": "2024-01-01T00:00:00Z"}]}, {"StackName": "kip-prod"})
            stub.add_response("describe_stacks", {"Stacks": [{
                "StackName": "kip-prod", "StackStatus": "CREATE_COMPLETE",
                "CreationTime": "2024-01-01T00:00:00Z",
                "Outputs": [{"OutputKey": "EndpointURL", "OutputValue": "https://x/v1/"}]}]},
                {"StackName": "kip-prod"})
            lines: list[str] = []
            result = deploy.deploy(args(package_dir), session=Session(s3=s3, cloudformation=cfn),
                                   out=lines.append)
            stub.assert_no_pending_responses()
        assert result == {"changed": True, "outputs": {"EndpointURL": "https://x/v1/"}}
        assert s3.head_object(Bucket=BUCKET, Key=key)["ContentLength"] > 0
        assert any("EndpointURL" in line and "https://x/v1/" in line for line in lines)


def test_existing_stack_gets_an_update_change_set():
    cfn = boto3.client("cloudformation", region_name=REGION, aws_access_key_id="x",
                       aws_secret_access_key="x")
    with Stubber(cfn) as stub:
        stub.add_response("describe_stacks", {"Stacks": [{
            "StackName": "kip-prod", "StackStatus": "UPDATE_COMPLETE",
            "CreationTime": "2024-01-01T00:00:00Z"}]}, {"StackName": "kip-prod"})
        assert deploy.change_set_type(cfn, "kip-prod") == "UPDATE"


def test_dry_run_prints_the_plan_and_calls_nothing(aws_env, package_dir, monkeypatch):
    monkeypatch.setenv("KIP_DEPLOY_BUCKET", BUCKET)

    class NoAws:
        def client(self, name):
            raise AssertionError(f"dry run created a {name} client")

    buf = io.StringIO()
    with redirect_stdout(buf):
        result = deploy.deploy(args(package_dir, "--dry-run"), session=NoAws())
    text = buf.getvalue()
    assert result["dry_run"] is True and "would create" in text and f"s3://{BUCKET}/kip/prod/" in text
    written = json.loads((package_dir / "sam.deploy.json").read_text())
    assert written["Resources"]["APIHandler"]["Properties"]["CodeUri"].startswith(f"s3://{BUCKET}/")
    assert result["request"]["StackName"] == "kip-prod"


def test_no_bucket_is_a_clear_error(aws_env, package_dir):
    with pytest.raises(SystemExit, match="KIP_DEPLOY_BUCKET"):
        deploy.deploy(args(package_dir, "--dry-run"))


def test_missing_package_says_to_run_make_package(aws_env, tmp_path):
    with pytest.raises(SystemExit, match="make package"):
        deploy.deploy(args(tmp_path / "nothing", "--bucket", BUCKET))

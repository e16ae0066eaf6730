"""The package rehearsal: the artefact an operator deploys, tried the way AWS runs it.

- `make package` on a fresh clone (no KIP_* variable): built once per session (tests/conftest.py).
- sam.json through the SAM transform (aws-sam-translator) and cfn-lint.
- The translated template deployed into moto's CloudFormation on a moto server; every function's
  environment names resources that exist.
- deployment.zip unzipped into an empty folder; every handler the template declares invoked once
  with that function's deployed environment, tracing on as deployed, in ``python -I -S`` with only
  the folder and the runtime's boto3/botocore on sys.path (tests/package/lambda_runner.py).
"""
from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys
import zipfile

import boto3
import pytest

from scripts import package as pkg
from tests.support.package import (CODE_BUCKET, MOTO_SKIPS, REGION, ROOT, STACK, for_moto,
                                    free_port)

pytestmark = pytest.mark.xdist_group("package")

SHARED_EVENTS = ROOT.parent / "shared" / "reference" / "events"
MEMBER = "111122223333"
EXTERNAL_ID = "rehearsal-external-id-0123456789"
TRACE = "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1"
FUNCTION = "AWS::Lambda::Function"


def client(url: str, service: str):
    return boto3.client(service, region_name=REGION, endpoint_url=url,
                        aws_access_key_id="testing", aws_secret_access_key="testing")


# ------------------------------------------------------------------------- the package itself

def test_make_package_succeeds_on_a_fresh_clone_and_stays_small(built_package):
    zip_path = built_package / "deployment.zip"
    assert zip_path.stat().st_size <= 10_000_000, zip_path.stat().st_size
    names = zipfile.ZipFile(zip_path).namelist()
    tops = {n.split("/", 1)[0] for n in names}
    assert {"app.py", "chalicelib", "aws_lambda_powertools", "aws_xray_sdk", "pydantic",
            "jwt"} <= tops
    assert not [t for t in tops if pkg._runtime_provided(t)], "runtime-provided code shipped"


def test_the_translated_template_lints_clean(translated, tmp_path):
    path = tmp_path / "kip-prod.cfn.json"
    path.write_text(json.dumps(translated))
    proc = subprocess.run([str(pathlib.Path(sys.executable).parent / "cfn-lint"), str(path)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_template_takes_the_inputs_as_parameters_and_keeps_no_secret(built_package,
                                                                         translated):
    sam_text = (built_package / "sam.json").read_text()
    params = translated["Parameters"]
    assert params["ExternalId"]["NoEcho"] is True and params["ExternalId"]["Default"] == ""
    assert {"OrgId", "AllowedAccountIds", "LogRetentionDays", "Alarms"} <= set(params)
    assert "KIP_EXTERNAL_ID\"" not in sam_text     # only the secret's ARN reaches a function
    secret = translated["Resources"]["ExternalIdSecret"]
    assert secret["Properties"]["SecretString"] == {"Ref": "ExternalId"}


def test_every_function_has_a_retained_log_group_and_an_errors_alarm(translated):
    res = translated["Resources"]
    functions = [k for k, v in res.items() if v["Type"] == FUNCTION]
    assert len(functions) == 5
    for fn in functions:
        group = res[fn]["Properties"]["LoggingConfig"]["LogGroup"]["Ref"]
        assert res[group]["Properties"]["RetentionInDays"] == {"Ref": "LogRetentionDays"}
        alarm = res[f"{fn}ErrorsAlarm"]
        assert alarm["Condition"] == "AlarmsOn"
        assert alarm["Properties"]["Dimensions"] == [{"Name": "FunctionName",
                                                      "Value": {"Ref": fn}}]
    for queue in ("FailedEventsQueue", "FailedEventsDeadLetterQueue", "SweepDeadLetterQueue"):
        assert res[f"{queue}Alarm"]["Properties"]["Namespace"] == "AWS/SQS"
    # the teardown brake: a held teardown wakes someone (issue: destructive paths)
    held = res["TeardownHeldAlarm"]["Properties"]
    assert (held["Namespace"], held["MetricName"]) == ("KarpenterInterruptionProvisioner",
                                                       "TeardownHeld")


def test_api_access_logs_go_to_a_log_group_with_a_retention_and_audit_items_expire(translated):
    res = translated["Resources"]
    (stage,) = [v for v in res.values() if v["Type"] == "AWS::ApiGateway::Stage"]
    setting = stage["Properties"]["AccessLogSetting"]
    assert setting["DestinationArn"] == {"Fn::GetAtt": ["ApiAccessLogGroup", "Arn"]}
    fields = json.loads(setting["Format"])
    assert {"principal", "userArn", "status", "requestId"} <= set(fields)
    assert res["ApiAccessLogGroup"]["Properties"]["RetentionInDays"] == \
        {"Ref": "LogRetentionDays"}
    # audit items (and counters) carry expires_at: the table's TTL removes them
    assert res["ClustersTable"]["Properties"]["TimeToLiveSpecification"] == {
        "AttributeName": "expires_at", "Enabled": True}


def test_the_grant_mode_is_a_parameter_and_iam_writes_can_be_dropped(translated):
    # GrantMode reaches every function; IamWrites=false removes every statement of kip's IAM
    # write actions from its roles (issue: least authority), and nothing else
    from scripts.package import IAM_WRITES
    params, res = translated["Parameters"], translated["Resources"]
    assert params["GrantMode"]["AllowedValues"] == ["role-policy", "queue-policy"]
    assert params["IamWrites"]["Default"] == "true"
    functions = [r for r in res.values() if r["Type"] == "AWS::Lambda::Function"]
    assert all(f["Properties"]["Environment"]["Variables"]["KIP_GRANT_MODE"] == {
        "Ref": "GrantMode"} for f in functions)
    gated, plain = [], []
    for role in (r for r in res.values() if r["Type"] == "AWS::IAM::Role"):
        for policy in role["Properties"].get("Policies", []):
            for st in policy["PolicyDocument"]["Statement"]:
                (gated if "Fn::If" in st else plain).append(st)
    assert gated and all(st["Fn::If"][0] == "IamWritesOn" and
                         set(st["Fn::If"][1]["Action"]) <= IAM_WRITES for st in gated)
    assert not any(set(st["Action"] if isinstance(st["Action"], list) else [st["Action"]])
                   & IAM_WRITES for st in plain)


def test_the_docs_state_the_reserved_concurrency_the_config_reserves():
    config = json.loads((ROOT / ".chalice" / "config.json").read_text())
    total = sum(f["reserved_concurrency"]
                for f in config["stages"]["prod"]["lambda_functions"].values())
    for doc in (ROOT / "docs" / "DEPLOY.md", ROOT / "README.md"):
        text = " ".join(doc.read_text().split())       # line breaks are not meaning
        assert f"reserve {total}" in text or f"reserves {total}" in text, doc
        assert f"at least {total + 100}" in text, doc


# -------------------------------------------------------------- deployed into moto, then run

@pytest.fixture(scope="module")
def deployed(moto_server, built_package, deploy_template, translated):
    """The kip stack created from the translated template on the moto server."""
    s3 = client(moto_server, "s3")
    s3.create_bucket(Bucket=CODE_BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION})
    s3.upload_file(str(built_package / "deployment.zip"), CODE_BUCKET, deploy_template["key"])
    secret = client(moto_server, "secretsmanager").create_secret(
        Name=f"{STACK}-external-id", SecretString=EXTERNAL_ID)["ARN"]
    cfn = client(moto_server, "cloudformation")
    cfn.create_stack(StackName=STACK, TemplateBody=json.dumps(for_moto(translated, secret)),
                     Capabilities=["CAPABILITY_IAM", "CAPABILITY_AUTO_EXPAND"], Parameters=[
                         {"ParameterKey": "AllowedAccountIds", "ParameterValue": MEMBER},
                         {"ParameterKey": "ExternalId", "ParameterValue": EXTERNAL_ID}])
    stack = cfn.describe_stacks(StackName=STACK)["Stacks"][0]
    assert stack["StackStatus"] == "CREATE_COMPLETE", stack
    physical = {r["LogicalResourceId"]: r["PhysicalResourceId"]
                for r in cfn.list_stack_resources(StackName=STACK)["StackResourceSummaries"]}
    lam = client(moto_server, "lambda")
    functions = {}
    for lid, res in translated["Resources"].items():
        if res["Type"] == FUNCTION:
            conf = lam.get_function_configuration(FunctionName=physical[lid])
            functions[lid] = {"name": conf["FunctionName"], "handler": conf["Handler"],
                              "env": conf.get("Environment", {}).get("Variables", {})}
    return {"url": moto_server, "physical": physical, "functions": functions, "secret": secret,
            "outputs": {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}}


def test_moto_creates_every_resource_it_models(deployed, translated):
    missing = {lid: r["Type"] for lid, r in translated["Resources"].items()
               if lid not in deployed["physical"]}
    # the API's Deployment/Stage are left out for moto (tests/package/conftest.py for_moto)
    unexpected = {lid: t for lid, t in missing.items()
                  if t not in MOTO_SKIPS | {"AWS::ApiGateway::Deployment", "AWS::ApiGateway::Stage"}}
    assert not unexpected, unexpected


def test_the_outputs_name_what_hub_member_and_portal_need(deployed):
    out = deployed["outputs"]
    fns = deployed["functions"]
    assert out["EksTriggerFunctionArn"].endswith(f":function:{fns['OnEksEvent']['name']}")
    assert out["DriftFunctionArn"].endswith(f":function:{fns['OnDriftEvent']['name']}")
    assert out["HubAccountId"] == "123456789012" and out["HubPrincipalPattern"] == f"{STACK}-*"
    # the exact role ARNs member accounts trust: one per function, each a role that exists
    arns = out["HubRoleArns"].split(",")
    assert len(arns) == 5 and all(":role/" in a for a in arns)
    assert out["EndpointURL"].startswith("https://") and out["ClustersTableName"]


def test_each_functions_environment_names_resources_that_exist(deployed):
    url = deployed["url"]
    ddb, sqs, iam, sm = (client(url, s) for s in ("dynamodb", "sqs", "iam", "secretsmanager"))
    for lid, fn in deployed["functions"].items():
        env = fn["env"]
        assert ddb.describe_table(TableName=env["KIP_TABLE_NAME"])["Table"]["TableStatus"], lid
        assert env["KIP_ALLOWED_ACCOUNTS"] == MEMBER and env["KIP_REQUIRE_ACCOUNT_LIST"] == "true"
        assert sm.describe_secret(SecretId=env["KIP_EXTERNAL_ID_SECRET_ARN"])["ARN"] == \
            deployed["secret"], lid
        for key, value in env.items():
            if key.endswith("_QUEUE_URL"):
                sqs.get_queue_attributes(QueueUrl=value, AttributeNames=["QueueArn"])
        for arn in filter(None, env.get("KIP_SERVICE_ROLE_ARN", "").split(",")):
            iam.get_role(RoleName=arn.rsplit("/", 1)[1])
            assert arn.rsplit("/", 1)[1].startswith(f"{STACK}-")      # the kip-* IAM patterns
    mappings = client(url, "lambda").list_event_source_mappings()["EventSourceMappings"]
    queues = {m["EventSourceArn"] for m in mappings}
    assert any(q.endswith(":kip_sweep-prod") for q in queues), queues


@pytest.fixture(scope="module")
def code_dir(built_package, tmp_path_factory) -> pathlib.Path:
    out = tmp_path_factory.mktemp("lambda-task")
    with zipfile.ZipFile(built_package / "deployment.zip") as z:
        z.extractall(out)
    return out


@pytest.fixture(scope="module")
def runtime_dir(tmp_path_factory) -> pathlib.Path:
    """What Lambda's Python runtime adds: boto3, botocore and their dependencies, nothing else."""
    import botocore
    site = pathlib.Path(botocore.__file__).resolve().parents[1]
    out = tmp_path_factory.mktemp("lambda-runtime")
    for name in ("boto3", "botocore", "s3transfer", "jmespath", "dateutil", "urllib3", "six.py"):
        (out / name).symlink_to(site / name)
    return out


def run_handler(deployed, code_dir, runtime_dir, fn: dict, event: dict,
                drop: tuple = ()) -> dict:
    env = {k: v for k, v in fn["env"].items() if k not in drop}
    env.update({
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "en_US.UTF-8", "TZ": ":UTC",
        "AWS_ENDPOINT_URL": deployed["url"], "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": REGION, "AWS_DEFAULT_REGION": REGION,
        # what Lambda sets for an Active-tracing function: Powertools' Tracer turns on
        "AWS_LAMBDA_FUNCTION_NAME": fn["name"], "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "512",
        "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST", "AWS_EXECUTION_ENV": "AWS_Lambda_python3.11",
        "LAMBDA_TASK_ROOT": str(code_dir), "_HANDLER": fn["handler"], "_X_AMZN_TRACE_ID": TRACE,
        "AWS_XRAY_DAEMON_ADDRESS": f"127.0.0.1:{free_port()}",
        "AWS_XRAY_CONTEXT_MISSING": "LOG_ERROR",
    })
    proc = subprocess.run([sys.executable, "-I", "-S", str(ROOT / "tests" / "package" /
                                                            "lambda_runner.py"),
                           str(code_dir), str(runtime_dir), fn["handler"], json.dumps(event)],
                          env=env, cwd=code_dir, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["log"] = proc.stdout + proc.stderr
    return result


def api_event(path: str) -> dict:
    return {"resource": path, "path": path, "httpMethod": "GET",
            "headers": {"Host": "api.example", "Accept": "application/json"},
            "multiValueHeaders": {"Host": ["api.example"], "Accept": ["application/json"]},
            "queryStringParameters": None, "multiValueQueryStringParameters": None,
            "pathParameters": None, "stageVariables": None, "body": None,
            "isBase64Encoded": False,
            "requestContext": {"resourcePath": path, "httpMethod": "GET", "path": f"/v1{path}",
                               "stage": "v1", "requestId": "rehearsal",
                               "accountId": "123456789012",
                               "identity": {"sourceIp": "10.0.0.1",
                                            "userArn": "arn:aws:iam::123456789012:user/op"}}}


def cloudtrail(source: str, event_source: str, name: str, request: dict) -> dict:
    return {"version": "0", "id": "0c3e1b2a-0000-4000-8000-000000000001",
            "detail-type": "AWS API Call via CloudTrail", "source": source,
            "account": MEMBER, "time": "2026-12-05T10:00:00Z", "region": REGION,
            "resources": [], "detail": {
                "eventVersion": "1.09", "eventSource": event_source, "eventName": name,
                "awsRegion": REGION, "recipientAccountId": MEMBER,
                "eventTime": "2026-12-05T10:00:00Z", "requestParameters": request,
                "userIdentity": {"type": "IAMUser", "accountId": MEMBER,
                                 "arn": f"arn:aws:iam::{MEMBER}:user/someone"}}}


EVENTS = {
    "app.app": api_event("/clusters"),
    "app.on_eks_event": json.loads((SHARED_EVENTS / "cloudtrail-eks-create-cluster.json")
                                   .read_text()),
    "app.on_drift_event": cloudtrail("aws.events", "events.amazonaws.com", "DeleteRule",
                                     {"name": "kip-payments-prod-events"}),
    "app.sweep_worker": {"Records": []},
    "app.reconcile_all": {"version": "0", "id": "5f1e0a0c-0000-4000-8000-000000000002",
                          "detail-type": "Scheduled Event", "source": "aws.events",
                          "account": "123456789012", "time": "2026-12-05T10:00:00Z",
                          "region": REGION, "detail": {},
                          "resources": [f"arn:aws:events:{REGION}:123456789012:rule/x"]},
}


def test_every_declared_handler_answers_in_a_clean_runtime(deployed, code_dir, runtime_dir):
    handlers = {fn["handler"] for fn in deployed["functions"].values()}
    assert handlers == set(EVENTS), "give every handler the template declares an event"
    for lid, fn in sorted(deployed["functions"].items()):
        result = run_handler(deployed, code_dir, runtime_dir, fn, EVENTS[fn["handler"]])
        assert result["ok"], (lid, result.get("errorType"), result.get("trace"))
        assert not result["site_packages_modules"], result["site_packages_modules"]
        assert "ModuleNotFoundError" not in result["log"], (lid, result["log"][-2000:])
        answer = result["answer"]
        if fn["handler"] == "app.app":
            assert answer["statusCode"] == 200, answer
        else:
            assert isinstance(answer, dict), (lid, answer)


def test_the_deployed_tracer_runs_with_the_shipped_xray_sdk(deployed, code_dir, runtime_dir):
    probe = dict(deployed["functions"]["APIHandler"])
    result = run_handler(deployed, code_dir, runtime_dir, probe, api_event("/openapi.json"))
    assert result["ok"] and result["answer"]["statusCode"] == 200, result
    import_probe = subprocess.run(
        [sys.executable, "-I", "-S", "-c",
         f"import sys; sys.path[:0] = [{str(code_dir)!r}, {str(runtime_dir)!r}]; "
         "import aws_xray_sdk.core, wrapt; print(aws_xray_sdk.core.__file__)"],
        capture_output=True, text=True, timeout=60)
    assert import_probe.returncode == 0 and str(code_dir) in import_probe.stdout, \
        import_probe.stderr


def test_without_an_account_list_every_handler_refuses_naming_the_settings(deployed, code_dir,
                                                                             runtime_dir):
    drop = ("KIP_ALLOWED_ACCOUNTS", "KIP_ORG_ID")
    api = run_handler(deployed, code_dir, runtime_dir, deployed["functions"]["APIHandler"],
                      api_event("/clusters"), drop=drop)
    assert api["ok"] and api["answer"]["statusCode"] == 503
    assert json.loads(api["answer"]["body"])["error"]["code"] == "NotConfigured"
    trigger = run_handler(deployed, code_dir, runtime_dir, deployed["functions"]["OnEksEvent"],
                          EVENTS["app.on_eks_event"], drop=drop)
    assert not trigger["ok"] and "KIP_ALLOWED_ACCOUNTS" in trigger["errorMessage"]
    for result in (api, trigger):
        assert "kip is not configured" in result["log"] and "KIP_ORG_ID" in result["log"]

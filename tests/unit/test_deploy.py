"""The deployment artefacts: the Lambda's own IAM policy and the packaged CloudFormation template."""
from __future__ import annotations

import fnmatch
import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
# the packaged-template tests share the session's one build (tests/conftest.py built_package)
pytestmark = pytest.mark.xdist_group("package")
STAGES = ("dev", "prod")
# X-Ray's telemetry calls support no resource-level permissions: "*" is the only possible scope.
STAR_ALLOWED = {"xray:PutTraceSegments", "xray:PutTelemetryRecords"}
READ_PREFIXES = ("Get", "List", "Describe")
# Issue 20: the controller role is found from the cluster (Pod Identity, IRSA trust), whatever its
# name (eksctl's <cluster>-karpenter, terraform's KarpenterController-<suffix>) and path, so the
# role grants cover every role: the reads are reads, and attach/detach stay limited to kip's own
# policies by the iam:PolicyARN condition (kip's IAM path). KIP_ROLE_PATTERN still guards, in
# code, the roles a request or the template names.
ROLE_RESOURCES = ["arn:aws:iam::*:role/*"]
ROLE_ACTIONS = {"iam:AttachRolePolicy", "iam:DetachRolePolicy", "iam:ListAttachedRolePolicies",
                "iam:GetRole", "iam:ListRolePolicies", "iam:GetRolePolicy"}
# Reads of another tool's wiring (existing-handler detection), by Sid: any queue or rule of the
# account, never a write.
OTHER_HANDLERS = {"FindOtherHandlersQueues": ["*"],
                  "ReadOtherHandlersQueues": ["arn:aws:sqs:*:*:*"],
                  "ReadOtherHandlersRules": ["arn:aws:events:*:*:rule/*"]}


def statements(stage):
    return json.loads((ROOT / ".chalice" / f"policy-{stage}.json").read_text())["Statement"]


def _list(x):
    return x if isinstance(x, list) else [x]


@pytest.mark.parametrize("stage", STAGES)
def test_no_write_action_on_every_resource(stage):
    for st in statements(stage):
        if "*" in _list(st["Resource"]):
            for action in _list(st["Action"]):
                verb = action.split(":", 1)[1]
                assert verb.startswith(READ_PREFIXES) or action in STAR_ALLOWED, (stage, action)


@pytest.mark.parametrize("stage", STAGES)
def test_attach_only_our_policy_path_and_scoped_names(stage):
    for st in statements(stage):
        actions = _list(st["Action"])
        resources = _list(st["Resource"])
        if {"iam:AttachRolePolicy", "iam:DetachRolePolicy"} & set(actions):
            assert st["Condition"] == {"ArnLike": {"iam:PolicyARN": "arn:aws:iam::*:policy/kip/*"}}
            assert resources == ROLE_RESOURCES
        for action in actions:
            service = action.split(":")[0]
            if service == "sqs" and st.get("Sid") == "SweepWorkQueue":
                # the sweep's own work queue (resources-<stage>.json), nothing else
                assert resources == [f"arn:aws:sqs:*:*:kip_sweep-{stage}"]
            elif service == "sqs" and st.get("Sid") == "FailedEventsQueue":
                # the EKS trigger's failed-events queue (resources-<stage>.json), nothing else
                assert resources == [f"arn:aws:sqs:*:*:kip_failed-events-{stage}"]
            elif st.get("Sid") in OTHER_HANDLERS:
                assert resources == OTHER_HANDLERS[st["Sid"]] and \
                    action.split(":")[1].startswith(READ_PREFIXES), action
            elif service == "sqs":
                assert resources == ["arn:aws:sqs:*:*:kip-*"]
            if action in ("events:ListRules", "events:ListRuleNamesByTarget"):
                # counting the bus's rules, finding the rules that target another tool's queue:
                # read-only listings, on "*" (no narrower scope AWS is sure to accept)
                assert resources == ["*"]
            elif service == "events" and action != "events:PutEvents" and \
                    st.get("Sid") not in OTHER_HANDLERS:
                assert resources == ["arn:aws:events:*:*:rule/kip-*"]
            if service == "iam" and action in ROLE_ACTIONS:
                assert resources == ROLE_RESOURCES, action
            elif st.get("Sid") == "ReadRoleGrants":
                # the role's managed policies, whoever made them (AWS-managed ones too): read
                assert set(actions) == {"iam:GetPolicy", "iam:GetPolicyVersion"}
                assert resources == ["arn:aws:iam::*:policy/*"]
            elif action in ("iam:ListRoles", "iam:GetAccountSummary"):
                assert resources == ["*"]       # no resource type; read-only
            elif action in ("iam:DetachUserPolicy", "iam:DetachGroupPolicy"):
                # only ever our own policy, from whoever it was attached to (teardown)
                assert st["Condition"] == {
                    "ArnLike": {"iam:PolicyARN": "arn:aws:iam::*:policy/kip/*"}}
                assert resources == ["arn:aws:iam::*:user/*", "arn:aws:iam::*:group/*"]
            elif service == "iam":
                assert resources == ["arn:aws:iam::*:policy/kip/*"]
            if service == "dynamodb":
                assert all(f"table/kip-clusters-{stage}" in r for r in resources)
            if service == "sts":
                assert resources == ["arn:aws:iam::*:role/kip-provisioner"]


def test_every_call_the_adapter_makes_is_granted():
    """Each boto3 operation in chalicelib/aws.py (or the chalicelib/aws/ package) has its IAM
    action in the policy."""
    import re
    files = [ROOT / "chalicelib" / "aws.py", *sorted((ROOT / "chalicelib" / "aws").rglob("*.py"))]
    source = "\n".join(f.read_text() for f in files if f.is_file())
    assert source
    steps = set(re.findall(r'f?"(sqs|events|iam|eks|kms|dynamodb|sts|cloudwatch|organizations):([A-Z][A-Za-z]+)', source))
    granted = {a for st in statements("prod") for a in _list(st["Action"])}
    missing = {f"{svc}:{op}" for svc, op in steps
               if f"{svc}:{op}" not in granted and op not in ("CreateTable", "GetCallerIdentity")}
    assert not missing


def iam_arn_like(pattern: str, arn: str) -> bool:
    """IAM's wildcard match of a resource ARN: ``*`` (any run of characters, ``/`` included) and
    ``?`` (one character) work inside each colon-separated segment; a ``*`` that ends a segment may
    also run across the following colons."""
    def seg(p: str, s: str) -> bool:
        return fnmatch.fnmatchcase(s, p.replace("[", "[[]"))
    ps, ss = pattern.split(":", 5), arn.split(":", 5)
    if len(ps) != 6 or len(ss) != 6:
        return False
    for i, (p, s) in enumerate(zip(ps, ss)):
        if not seg(p, s):
            if p.endswith("*") and seg(p, ":".join(ss[i:])):
                return True
            return False
    return True


def allowed(stage: str, action: str, arn: str, policy_arn: str = "") -> bool:
    """Does the stage's policy allow ``action`` on ``arn`` (no Deny statements exist in it)."""
    for st in statements(stage):
        if st["Effect"] != "Allow" or action not in _list(st["Action"]):
            continue
        cond = st.get("Condition", {}).get("ArnLike", {}).get("iam:PolicyARN")
        if cond and not iam_arn_like(cond, policy_arn):
            continue
        if any(iam_arn_like(r, arn) for r in _list(st["Resource"])):
            return True
    return False


def test_iam_arn_like_follows_the_documented_wildcards():
    assert iam_arn_like("arn:aws:iam::*:user/accounting/*", "arn:aws:iam::1:user/accounting/a/b")
    assert iam_arn_like("arn:aws:iam::*:role/K-*", "arn:aws:iam::123:role/K-x")
    assert not iam_arn_like("arn:aws:iam::*:role/K-*", "arn:aws:iam::123:role/p/K-x")
    assert iam_arn_like("arn:aws:iam::*:role/*/K-*", "arn:aws:iam::123:role/p/q/K-x")
    assert not iam_arn_like("arn:aws:sqs:*:*:kip-*", "arn:aws-cn:sqs:r:1:kip-a")
    assert iam_arn_like("arn:aws:sqs:*:*:kip-?", "arn:aws:sqs:r:1:kip-a")


ROLE_ARNS = ["arn:aws:iam::111122223333:role/KarpenterController-payments",
             "arn:aws:iam::111122223333:role/teams/platform/KarpenterController-payments",
             "arn:aws:iam::111122223333:role/eks/KarpenterController-a_b-1"]
OUR_POLICY = "arn:aws:iam::111122223333:policy/kip/kip-payments-controller"


@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize("role_arn", ROLE_ARNS)
@pytest.mark.parametrize("action", sorted(ROLE_ACTIONS))
def test_controller_roles_under_any_iam_path_are_granted(stage, role_arn, action):
    assert allowed(stage, action, role_arn, policy_arn=OUR_POLICY), (stage, action, role_arn)


@pytest.mark.parametrize("stage", STAGES)
def test_role_grants_attach_and_detach_only_our_policies(stage):
    """Any role may be the controller role (found by its trust, issue 20): what keeps kip from
    changing a role's permissions beyond its own policy is the iam:PolicyARN condition."""
    for action in ("iam:AttachRolePolicy", "iam:DetachRolePolicy"):
        for role in (*ROLE_ARNS, "arn:aws:iam::1:role/Admin", "arn:aws:iam::1:role/shop-karpenter"):
            assert allowed(stage, action, role, policy_arn=OUR_POLICY)
            assert not allowed(stage, action, role,
                               policy_arn="arn:aws:iam::aws:policy/AdministratorAccess")
            assert not allowed(stage, action, role,
                               policy_arn="arn:aws:iam::1:policy/KarpenterController-x")


@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize("action,arn", [
    ("kms:GetKeyPolicy", "arn:aws:kms:eu-west-1:1:key/1234abcd-12ab-34cd-56ef-1234567890ab"),
    ("kms:DescribeKey", "arn:aws:kms:eu-west-1:1:key/1234abcd-12ab-34cd-56ef-1234567890ab"),
    ("iam:ListEntitiesForPolicy", "arn:aws:iam::1:policy/kip/kip-payments-controller"),
    ("iam:GetRole", "arn:aws:iam::1:role/teams/platform/KarpenterController-x"),
])
def test_untag_and_read_actions_the_engine_needs_are_granted(stage, action, arn):
    assert allowed(stage, action, arn)


# Reserved concurrency per function (prod): the API serves people and the portal, the EKS trigger
# fires per CreateCluster (throttled async events are retried by Lambda), the sweep must never
# overlap itself. 16 in all: the account must keep 100 unreserved, so it needs a limit >= 116.
RESERVED = {"api_handler": ("APIHandler", 10), "on_eks_event": ("OnEksEvent", 5),
            "reconcile_all": ("ReconcileAll", 1), "on_drift_event": ("OnDriftEvent", 5),
            "sweep_worker": ("SweepWorker", 5)}


def chalice_config():
    return json.loads((ROOT / ".chalice" / "config.json").read_text())


def test_reserved_concurrency_is_set_per_function_never_per_stage():
    config = chalice_config()
    assert "reserved_concurrency" not in config
    for name, stage in config["stages"].items():
        assert "reserved_concurrency" not in stage, name
    functions = config["stages"]["prod"]["lambda_functions"]
    assert {n: f["reserved_concurrency"] for n, f in functions.items()} == \
        {n: count for n, (_, count) in RESERVED.items()}


@pytest.fixture(scope="module")
def packaged(built_package):
    """`make package STAGE=prod` on a fresh clone (tests/conftest.py builds it once a session)."""
    return built_package


def test_packaged_template_passes_cfn_lint(packaged):
    proc = subprocess.run([str(pathlib.Path(sys.executable).parent / "cfn-lint"),
                           str(packaged / "sam.json")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_packaged_template_wires_the_table_and_protects_every_route(packaged):
    t = json.loads((packaged / "sam.json").read_text())
    res = t["Resources"]
    table = res["ClustersTable"]["Properties"]
    assert table["BillingMode"] == "PAY_PER_REQUEST"
    assert table["PointInTimeRecoverySpecification"]["PointInTimeRecoveryEnabled"] is True
    assert table["SSESpecification"]["SSEEnabled"] is True
    for fn in ("APIHandler", "OnEksEvent", "ReconcileAll"):
        assert res[fn]["Properties"]["Environment"]["Variables"]["KIP_TABLE_NAME"] == \
            {"Ref": "ClustersTable"}
    body = res["RestAPI"]["Properties"]["DefinitionBody"]
    for path, ops in body["paths"].items():
        for method, op in ops.items():
            if method == "options":
                continue
            assert op.get("security") == [{"sigv4": []}], (path, method)
    assert body["securityDefinitions"]["sigv4"]["x-amazon-apigateway-authtype"] == "awsSigv4"
    # the Lambda roles carry the least-privilege file, not an autogenerated policy
    policy = json.loads((ROOT / ".chalice" / "policy-prod.json").read_text())
    roles = [r for r in res.values() if r["Type"] == "AWS::IAM::Role"]
    # the IAM writes sit under IamWrites=true (Fn::If); ungated, the document is the stage's
    from scripts.package import _canon, ungated
    assert roles and all(_canon(ungated(r["Properties"]["Policies"][0]["PolicyDocument"]))
                         == _canon(policy) for r in roles)
    zip_mb = (packaged / "deployment.zip").stat().st_size / 1e6
    assert zip_mb <= 10, zip_mb


def test_packaged_functions_carry_their_own_reserved_concurrency(packaged):
    res = json.loads((packaged / "sam.json").read_text())["Resources"]
    functions = {k: v for k, v in res.items() if v["Type"] == "AWS::Serverless::Function"}
    assert {k: v["Properties"].get("ReservedConcurrentExecutions")
            for k, v in functions.items()} == {lid: n for lid, n in RESERVED.values()}


# --- API Gateway's own errors (unknown path, 415, missing or bad SigV4, throttling, timeouts) -----
# They are configured in the OpenAPI body (x-amazon-apigateway-gateway-responses), not as separate
# AWS::ApiGateway::GatewayResponse resources: the body is what each SAM deployment publishes, so the
# responses can never be left out of a later deployment.
GATEWAY_RESPONSES = "x-amazon-apigateway-gateway-responses"
GATEWAY_TYPES = ("DEFAULT_4XX", "DEFAULT_5XX", "MISSING_AUTHENTICATION_TOKEN",
                 "UNSUPPORTED_MEDIA_TYPE", "ACCESS_DENIED", "INTEGRATION_TIMEOUT", "THROTTLED")


def render_gateway_template(template: str, response_type: str, message: str) -> dict:
    """API Gateway's simple variable substitution ($context.error.messageString is the message
    already in double quotes)."""
    body = (template.replace("$context.error.messageString", json.dumps(message))
            .replace("$context.error.responseType", response_type))
    return json.loads(body)


def gateway_responses(stage):
    res = json.loads((ROOT / ".chalice" / f"resources-{stage}.json").read_text())["Resources"]
    return res["RestAPI"]["Properties"]["DefinitionBody"][GATEWAY_RESPONSES]


@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize("response_type", GATEWAY_TYPES)
def test_every_gateway_error_renders_kips_one_error_shape(stage, response_type):
    response = gateway_responses(stage)[response_type]
    assert set(response["responseTemplates"]) == {"application/json"}
    rendered = render_gateway_template(response["responseTemplates"]["application/json"],
                                       response_type, "Missing Authentication Token")
    assert rendered == {"error": {"code": response_type,
                                  "message": "Missing Authentication Token"}}
    # the status code stays API Gateway's own for each type (403, 415, 429, 504 ...)
    assert "statusCode" not in response


# A Lambda authorizer that raises anything but "Unauthorized" (kip's AuthUnavailable when the JWKS
# endpoint is down) is an authorizer configuration error to API Gateway: 500 by default. The token
# may be fine, so kip answers what its own routes answer for the same outage: 503 AuthUnavailable
# with Retry-After (API Gateway does not cache a failed authorizer call).
@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize("response_type", ["AUTHORIZER_CONFIGURATION_ERROR", "AUTHORIZER_FAILURE"])
def test_an_authorizer_failure_is_a_503_auth_unavailable_with_retry_after(stage, response_type):
    from chalicelib.errors import AuthUnavailable
    response = gateway_responses(stage)[response_type]
    assert response["statusCode"] == str(AuthUnavailable.status) == "503"
    retry_after = response["responseParameters"]["gatewayresponse.header.Retry-After"]
    assert retry_after.startswith("'") and retry_after.endswith("'") and int(retry_after[1:-1]) > 0
    rendered = render_gateway_template(response["responseTemplates"]["application/json"],
                                       response_type, "null")
    assert rendered["error"]["code"] == AuthUnavailable.code
    assert "retry" in rendered["error"]["message"]


def test_packaged_api_definition_carries_the_gateway_responses(packaged):
    body = json.loads((packaged / "sam.json").read_text())["Resources"]["RestAPI"][
        "Properties"]["DefinitionBody"]
    assert body[GATEWAY_RESPONSES] == gateway_responses("prod")
    assert body["paths"], "the merge must add to Chalice's definition, not replace it"


# --- partitions: the policy files say arn:aws:, `make package PARTITION=aws-cn` rewrites them ------
@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize("partition", ["aws-cn", "aws-us-gov"])
def test_partition_rewrite_of_the_policy_files(stage, partition):
    from scripts.package import policy_for, rewrite_partition
    text = (ROOT / ".chalice" / f"policy-{stage}.json").read_text()
    out = rewrite_partition(text, partition)
    assert "arn:aws:" not in out
    rewritten, original = json.loads(out), json.loads(text)
    assert policy_for(stage, partition) == rewritten
    resources = [r for st in rewritten["Statement"] for r in _list(st["Resource"]) if r != "*"]
    assert resources and all(r.startswith(f"arn:{partition}:") for r in resources)
    # nothing but the partition changes
    assert json.loads(out.replace(f"arn:{partition}:", "arn:aws:")) == original
    assert rewrite_partition(text, "aws") == text


def test_partition_rewrite_refuses_an_unknown_partition():
    from scripts.package import rewrite_partition
    with pytest.raises(ValueError, match="PARTITION"):
        rewrite_partition("arn:aws:sqs:*:*:kip-*", "aws-china")


def test_packaged_template_rewritten_for_aws_cn(packaged, tmp_path):
    copy = tmp_path / "sam.json"
    copy.write_text((packaged / "sam.json").read_text())
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "package.py"), "--stage", "prod",
                           "--partition", "aws-cn", str(copy)], capture_output=True, text=True,
                          timeout=60, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    t = json.loads(copy.read_text())
    assert "arn:aws:" not in copy.read_text()
    roles = [r for r in t["Resources"].values() if r["Type"] == "AWS::IAM::Role"]
    assert len(roles) == len(RESERVED)      # one role per function
    for role in roles:
        from scripts.package import ungated
        doc = ungated(role["Properties"]["Policies"][0]["PolicyDocument"])
        attach = next(st for st in doc["Statement"] if st["Sid"] == "AttachOnlyOurPolicies")
        assert attach["Condition"]["ArnLike"]["iam:PolicyARN"] == "arn:aws-cn:iam::*:policy/kip/*"
    bad = subprocess.run([sys.executable, str(ROOT / "scripts" / "package.py"), "--stage", "prod",
                          "--partition", "cn", str(copy)], capture_output=True, text=True,
                         timeout=60, cwd=ROOT)
    assert bad.returncode == 2 and "PARTITION" in bad.stderr


# --- the EKS trigger's failed events: Lambda drops an async event after two retries unless the
# function has an on-failure destination; EventBridge drops one it could not deliver unless the
# rule's target has a DLQ. Lambda's failure records go to kip_failed-events-<stage>, replayed by
# the schedule; EventBridge's dead letters (an event body anyone could forge) go to its -dlq, for
# a human, never replayed.
def test_packaged_eks_trigger_keeps_failed_events(packaged):
    from chalicelib.usecases import replay as failed_events
    res = json.loads((packaged / "sam.json").read_text())["Resources"]
    arn = {"Fn::GetAtt": ["FailedEventsQueue", "Arn"]}
    config = res["OnEksEventInvokeConfig"]
    assert config["Type"] == "AWS::Lambda::EventInvokeConfig"
    assert config["Properties"]["FunctionName"] == {"Ref": "OnEksEvent"}
    assert config["Properties"]["Qualifier"] == "$LATEST"      # the rule invokes it unqualified
    assert config["Properties"]["MaximumRetryAttempts"] == 2
    assert 60 <= config["Properties"]["MaximumEventAgeInSeconds"] <= 21600
    assert config["Properties"]["DestinationConfig"] == {"OnFailure": {"Destination": arn}}
    queue = res["FailedEventsQueue"]["Properties"]
    assert queue["QueueName"] == "kip_failed-events-prod"
    assert queue["MessageRetentionPeriod"] == 14 * 24 * 3600
    assert queue["SqsManagedSseEnabled"] is True
    assert queue["RedrivePolicy"]["maxReceiveCount"] == failed_events.KEEP_AFTER
    assert queue["VisibilityTimeout"] < 15 * 60      # back before the next schedule
    assert res["FailedEventsDeadLetterQueue"]["Properties"]["MessageRetentionPeriod"] == 1209600
    # the rule SAM generates from the function's event gets a DLQ and a retry policy
    target = res["OnEksEvent"]["Properties"]["Events"]["OnEksEventEvent"]
    assert target["Type"] == "CloudWatchEvent"
    assert target["Properties"]["DeadLetterConfig"] == {
        "Arn": {"Fn::GetAtt": ["FailedEventsDeadLetterQueue", "Arn"]}}
    assert set(target["Properties"]["RetryPolicy"]) == {"MaximumRetryAttempts",
                                                        "MaximumEventAgeInSeconds"}
    env = res["ReconcileAll"]["Properties"]["Environment"]["Variables"]
    assert env["KIP_FAILED_EVENTS_QUEUE_URL"] == {"Ref": "FailedEventsQueue"}


def test_packaged_failed_events_queue_takes_only_the_triggers_failure_records(packaged):
    res = json.loads((packaged / "sam.json").read_text())["Resources"]
    policy = res["FailedEventsQueuePolicy"]["Properties"]
    assert policy["Queues"] == [{"Ref": "FailedEventsQueue"}]
    by_sid = {st["Sid"]: st for st in policy["PolicyDocument"]["Statement"]}
    role = {"Fn::GetAtt": ["OnEksEventRole", "Arn"]}
    # Lambda sends the on-failure record with the trigger's execution role: only that role
    trigger = by_sid["EksTriggerOnFailureDestination"]
    assert trigger["Principal"] == {"AWS": role} and trigger["Action"] == "sqs:SendMessage"
    deny = by_sid["OnlyTheTriggersFailureRecords"]
    assert (deny["Effect"], deny["Principal"], deny["Action"]) == ("Deny", "*", "sqs:SendMessage")
    assert deny["Condition"] == {"ArnNotEquals": {"aws:PrincipalArn": role}}
    assert "EksTriggerRuleDeadLetters" not in by_sid
    assert by_sid["DenyHTTP"]["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    # EventBridge's dead letters go to the -dlq, from the trigger's rule only
    dlq = {st["Sid"]: st for st in res["FailedEventsDeadLetterQueuePolicy"]["Properties"][
        "PolicyDocument"]["Statement"]}
    rule = dlq["EksTriggerRuleDeadLetters"]
    assert rule["Principal"] == {"Service": "events.amazonaws.com"}
    # SAM names the rule <function logical id><event logical id>
    assert rule["Condition"] == {"ArnEquals": {"aws:SourceArn": {
        "Fn::GetAtt": ["OnEksEventOnEksEventEvent", "Arn"]}}}
    # and kip's roles may read that queue but no longer send to it
    for stage in STAGES:
        st = next(s for s in statements(stage) if s.get("Sid") == "FailedEventsQueue")
        assert st["Resource"] == f"arn:aws:sqs:*:*:kip_failed-events-{stage}"
        assert set(st["Action"]) == {"sqs:ReceiveMessage", "sqs:DeleteMessage",
                                     "sqs:ChangeMessageVisibility"}

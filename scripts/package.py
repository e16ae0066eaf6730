"""`make package`: `chalice package`, then finish what it built into build/package.

Finishing (``--build OUT`` runs `chalice package` first; without it only the template is finished):

- the zip: the Lambda Python runtime provides boto3/botocore and their dependencies; `chalice
  package` vendors botocore anyway when a runtime requirement depends on it (aws-xray-sdk does),
  which triples the zip. Those distributions are dropped (``RUNTIME_PROVIDED``); tests/package
  runs the slimmed zip with only the runtime's boto3 beside it.
- the template (``finish_template``): deploy-time inputs as stack parameters (OrgId,
  AllowedAccountIds, ExternalId as NoEcho, kept in a Secrets Manager secret; nothing secret is
  committed or packaged), each function's log group with a retention, alarms on function errors
  and on the failed-event / sweep dead-letter queues, and the outputs hub.yaml, the member
  StackSet and the portal need.
- the partition (below).

The policy files in .chalice/ are written for the `aws` partition (`arn:aws:...`). kip supports the
partition it is deployed in, one at a time; for AWS China or GovCloud, `make package
PARTITION=aws-cn` (or `aws-us-gov`) runs this script, which rewrites every `arn:aws:` of the stage's
policy to `arn:<partition>:` inside the packaged template. The files in .chalice/ stay unchanged.

Usage: python scripts/package.py --stage prod --partition aws-cn build/package/sam.json
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import zipfile
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parents[1]
PARTITIONS = ("aws", "aws-cn", "aws-us-gov")


def rewrite_partition(text: str, partition: str) -> str:
    """``arn:aws:`` -> ``arn:<partition>:`` in a policy document's text (the `sed` of DEPLOY.md)."""
    if partition not in PARTITIONS:
        raise ValueError(f"PARTITION must be one of {', '.join(PARTITIONS)} (got {partition!r})")
    return text.replace("arn:aws:", f"arn:{partition}:")


def policy_for(stage: str, partition: str) -> dict:
    text = (ROOT / ".chalice" / f"policy-{stage}.json").read_text()
    return json.loads(rewrite_partition(text, partition))


def _strings(node: Any):
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for v in node.values():
            yield from _strings(v)
    elif isinstance(node, list):
        for v in node:
            yield from _strings(v)


def rewrite_template(template: dict, stage: str, partition: str) -> int:
    """Replace the stage's policy document on every Lambda role of ``template`` with the one for
    ``partition``. Returns how many roles were rewritten; raises if a role carries another policy
    or if an ``arn:aws:`` literal is left anywhere for a non-``aws`` partition."""
    original = json.loads((ROOT / ".chalice" / f"policy-{stage}.json").read_text())
    wanted = policy_for(stage, partition)
    count = 0
    for logical_id, res in template.get("Resources", {}).items():
        if res.get("Type") != "AWS::IAM::Role":
            continue
        for policy in res.get("Properties", {}).get("Policies", []):
            doc = policy.get("PolicyDocument")
            if _canon(ungated(doc)) in (_canon(original), _canon(wanted)):
                policy["PolicyDocument"] = gated(wanted) \
                    if "IamWritesOn" in template.get("Conditions", {}) else wanted
                count += 1
            else:
                raise ValueError(f"{logical_id} carries a policy that is not "
                                 f".chalice/policy-{stage}.json; refusing to guess")
    if partition != "aws":
        left = sorted({s for s in _strings(template) if "arn:aws:" in s})
        if left:
            raise ValueError(f"ARNs still name the aws partition: {left[:5]}")
    return count


# Top-level names in the zip that the Lambda Python runtime already provides (boto3, botocore
# and what they depend on). Dropped from the zip: the runtime's copy is the one Lambda imports.
RUNTIME_PROVIDED = ("boto3", "botocore", "s3transfer", "jmespath", "dateutil", "urllib3", "six")
RUNTIME_DISTS = ("boto3", "botocore", "s3transfer", "jmespath", "python_dateutil", "urllib3",
                 "six")


def _runtime_provided(name: str) -> bool:
    top = name.split("/", 1)[0]
    if top in RUNTIME_PROVIDED or top == "six.py":
        return True
    if top.endswith((".dist-info", ".egg-info", ".data")):     # <dist>-<version>.dist-info
        return top.split("-", 1)[0].lower() in RUNTIME_DISTS
    return False


def slim_zip(zip_path: pathlib.Path) -> list[str]:
    """Rewrite ``zip_path`` without the runtime-provided distributions (entries keep their
    metadata, so the same input gives the same bytes). Returns the top-level names removed."""
    tmp = zip_path.with_suffix(".tmp")
    removed: set[str] = set()
    with zipfile.ZipFile(zip_path) as src, zipfile.ZipFile(tmp, "w") as dst:
        for info in src.infolist():
            if _runtime_provided(info.filename):
                removed.add(info.filename.split("/", 1)[0])
                continue
            dst.writestr(info, src.read(info.filename))
    tmp.replace(zip_path)
    return sorted(removed)


FUNCTION = "AWS::Serverless::Function"
RETENTION_DAYS = [1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827,
                  2192, 2557, 2922, 3288, 3653]
TAGS = [{"Key": "kip.io/managed-by", "Value": "karpenter-interruption-provisioner"}]
PARAMETERS = {
    "OrgId": {
        "Type": "String", "Default": "",
        "AllowedPattern": "^(o-[a-z0-9]{10,32})?$",
        "Description": "KIP_ORG_ID: kip may act in the accounts of this organization (o-...). "
                       "Give OrgId and/or AllowedAccountIds: with neither, every function "
                       "refuses to run (logged as NotConfigured)."},
    "AllowedAccountIds": {
        "Type": "String", "Default": "",
        "AllowedPattern": "^([0-9]{12}(,[0-9]{12})*)?$",
        "ConstraintDescription": "comma-separated 12-digit account ids, no spaces",
        "Description": "KIP_ALLOWED_ACCOUNTS: accounts kip may act in besides its own."},
    "ExternalId": {
        "Type": "String", "Default": "", "NoEcho": True,
        "AllowedPattern": "^([\\w+=,.@:/-]{16,1224})?$",
        "ConstraintDescription": "empty, or 16-1224 characters of letters, digits and +=,.@:/-_",
        "Description": "The sts:ExternalId kip presents to member accounts (member.yaml's "
                       "ExternalId). Kept in the Secrets Manager secret <stack>-external-id, "
                       "read by the functions at cold start. Empty: no external id."},
    "LogRetentionDays": {
        "Type": "Number", "Default": 90, "AllowedValues": RETENTION_DAYS,
        "Description": "Retention of every function's log group."},
    "Alarms": {
        "Type": "String", "Default": "true", "AllowedValues": ["true", "false"],
        "Description": "CloudWatch alarms on function errors, the EKS trigger's failed events "
                       "and the sweep's dead letters."},
    "AlarmTopicArn": {
        "Type": "String", "Default": "",
        "AllowedPattern": "^(arn:aws[a-z-]*:sns:[a-z0-9-]+:[0-9]{12}:[A-Za-z0-9_-]{1,256})?$",
        "Description": "SNS topic the alarms notify (empty: alarms without actions)."},
}
CONDITIONS = {
    "HasExternalId": {"Fn::Not": [{"Fn::Equals": [{"Ref": "ExternalId"}, ""]}]},
    "AlarmsOn": {"Fn::Equals": [{"Ref": "Alarms"}, "true"]},
    "HasAlarmTopic": {"Fn::Not": [{"Fn::Equals": [{"Ref": "AlarmTopicArn"}, ""]}]},
}
# queue -> (metric, threshold, what it means)
QUEUE_ALARMS = {
    "FailedEventsQueue": ("ApproximateAgeOfOldestMessage", 3600,
                          "EKS trigger events failed and the schedule's replay has not caught up "
                          "within an hour"),
    "FailedEventsDeadLetterQueue": ("ApproximateNumberOfMessagesVisible", 1,
                                    "EKS trigger events the replay gave up on: a human decides "
                                    "(docs/DEPLOY.md, Operations)"),
    "SweepDeadLetterQueue": ("ApproximateNumberOfMessagesVisible", 1,
                             "sweep work items failed 5 times (docs/DEPLOY.md, Operations)"),
}


def _alarm(description: str, namespace: str, metric: str, dimensions: list, threshold: int,
           statistic: str) -> dict:
    return {"Type": "AWS::CloudWatch::Alarm", "Condition": "AlarmsOn", "Properties": {
        "AlarmDescription": description, "Namespace": namespace, "MetricName": metric,
        "Dimensions": dimensions, "Statistic": statistic, "Period": 300, "EvaluationPeriods": 1,
        "Threshold": threshold, "ComparisonOperator": "GreaterThanOrEqualToThreshold",
        "TreatMissingData": "notBreaching",
        "AlarmActions": {"Fn::If": ["HasAlarmTopic", [{"Ref": "AlarmTopicArn"}],
                                    {"Ref": "AWS::NoValue"}]}}}


# kip's IAM write actions: only the role-policy grant needs them (KIP_GRANT_MODE)
IAM_WRITES = frozenset({"iam:CreatePolicy", "iam:CreatePolicyVersion", "iam:DeletePolicy",
                        "iam:DeletePolicyVersion", "iam:TagPolicy", "iam:UntagPolicy",
                        "iam:AttachRolePolicy", "iam:DetachRolePolicy", "iam:DetachUserPolicy",
                        "iam:DetachGroupPolicy"})
GRANT_PARAMETERS = {
    "GrantMode": {
        "Type": "String", "Default": "role-policy", "AllowedValues": ["role-policy", "queue-policy"],
        "Description": "KIP_GRANT_MODE: role-policy attaches an IAM policy to each controller "
                       "role; queue-policy lets the role read through the queue's own policy "
                       "(no IAM writes; no customer KMS keys)."},
    "IamWrites": {
        "Type": "String", "Default": "true", "AllowedValues": ["true", "false"],
        "Description": "false drops kip's IAM write permissions (create, version, attach, detach, "
                       "delete policies). Set it only with GrantMode=queue-policy, once a sweep "
                       "has moved every cluster (its old policy detached and deleted)."},
}


def _grant_mode(template: dict, functions: list) -> None:
    """GrantMode reaches every function as KIP_GRANT_MODE; with IamWrites=false the statements
    of kip's IAM write actions leave its roles' policies (Fn::If ... AWS::NoValue)."""
    template["Parameters"].update(GRANT_PARAMETERS)
    template["Conditions"]["IamWritesOn"] = {"Fn::Equals": [{"Ref": "IamWrites"}, "true"]}
    # (rewrite_template gates the roles' IAM write statements on IamWritesOn: ``gated``)
    res = template["Resources"]
    for fn in functions:
        res[fn]["Properties"]["Environment"]["Variables"]["KIP_GRANT_MODE"] = {"Ref": "GrantMode"}


def gated(doc: dict) -> dict:
    """``doc`` with kip's IAM write actions only under IamWrites=true: a statement that mixes
    them with reads is split in two (the reads stay, Sid kept; the writes get Sid<name>Writes)."""
    out = []
    for st in doc["Statement"]:
        actions = _as_list(st.get("Action"))
        writes = [a for a in actions if a in IAM_WRITES]
        if not writes:
            out.append(st)
            continue
        reads = [a for a in actions if a not in IAM_WRITES]
        if reads:
            out.append({**st, "Action": reads})
        sid = f"{st.get('Sid', 'Iam')}Writes" if reads else st.get("Sid")
        out.append({"Fn::If": ["IamWritesOn", {**st, "Action": writes,
                                                **({"Sid": sid} if sid else {})},
                               {"Ref": "AWS::NoValue"}]})
    return {**doc, "Statement": out}


def _canon(doc: dict) -> str:
    """A policy document with each statement's actions sorted (their order means nothing)."""
    return json.dumps({**doc, "Statement": [{**st, "Action": sorted(_as_list(st.get("Action")))}
                                            for st in doc.get("Statement", [])]}, sort_keys=True)


def ungated(doc: dict) -> dict:
    """The document ``gated`` was made from (read-back of an already finished template)."""
    merged: list = []
    for st in doc.get("Statement", []):
        st = st["Fn::If"][1] if "Fn::If" in st else st
        prev = merged[-1] if merged else None
        if prev is not None and st.get("Sid") == f"{prev.get('Sid')}Writes":
            merged[-1] = {**prev, "Action": _as_list(prev["Action"]) + _as_list(st["Action"])}
        else:
            merged.append(st)
    return {**doc, "Statement": merged}


def _as_list(value: object) -> list:
    return value if isinstance(value, list) else [value]


def _function_roles(res: dict) -> list:
    """The logical ids of the roles kip's functions run with (their Role: Fn::GetAtt [id, Arn])."""
    roles = {(v["Properties"].get("Role") or {}).get("Fn::GetAtt", [None])[0]
             for v in res.values() if v["Type"] == FUNCTION}
    return sorted(r for r in roles if r in res)


def finish_template(template: dict) -> dict:
    """Add the deploy-time parameters, the external-id secret, log groups, alarms and outputs to
    the packaged template (in place; returned for convenience). Idempotent."""
    res = template["Resources"]
    template.setdefault("Parameters", {}).update(PARAMETERS)
    template.setdefault("Conditions", {}).update(CONDITIONS)
    res["ExternalIdSecret"] = {
        "Type": "AWS::SecretsManager::Secret", "Condition": "HasExternalId",
        "Properties": {"Name": {"Fn::Sub": "${AWS::StackName}-external-id"},
                       "Description": "kip's sts:ExternalId for member accounts "
                                      "(the stack parameter ExternalId)",
                       "SecretString": {"Ref": "ExternalId"}, "Tags": TAGS}}
    functions = sorted(k for k, v in res.items() if v["Type"] == FUNCTION)
    _grant_mode(template, functions)
    for fn in functions:
        props = res[fn]["Properties"]
        env = props.setdefault("Environment", {}).setdefault("Variables", {})
        env.update({"KIP_ORG_ID": {"Ref": "OrgId"},
                    "KIP_ALLOWED_ACCOUNTS": {"Ref": "AllowedAccountIds"},
                    "KIP_EXTERNAL_ID_SECRET_ARN": {"Fn::If": [
                        "HasExternalId", {"Ref": "ExternalIdSecret"}, ""]}})
        # The log group is the stack's (with a retention) and named before the function exists,
        # so no invocation can create it first: /aws/lambda/<stack>/<function> (within the
        # roles' log-group:/aws/lambda/kip-* grant; scripts/deploy.py refuses other stack names).
        group = f"{fn}LogGroup"
        res[group] = {"Type": "AWS::Logs::LogGroup", "DeletionPolicy": "Delete",
                      "Properties": {"LogGroupName": {"Fn::Sub": f"/aws/lambda/${{AWS::StackName}}/{fn}"},
                                     "RetentionInDays": {"Ref": "LogRetentionDays"}}}
        props["LoggingConfig"] = {"LogGroup": {"Ref": group}, "LogFormat": "Text"}  # Ref: after it
        res[f"{fn}ErrorsAlarm"] = _alarm(
            f"kip {fn}: the function failed (its log group has the error)", "AWS/Lambda",
            "Errors", [{"Name": "FunctionName", "Value": {"Ref": fn}}], 1, "Sum")
    for queue, (metric, threshold, meaning) in QUEUE_ALARMS.items():
        if queue in res:
            res[f"{queue}Alarm"] = _alarm(
                f"kip: {meaning}", "AWS/SQS", metric,
                [{"Name": "QueueName", "Value": {"Fn::GetAtt": [queue, "QueueName"]}}],
                threshold, "Maximum")
    # Powertools metrics (app.py): namespace from POWERTOOLS_METRICS_NAMESPACE, dimension service
    res["TeardownHeldAlarm"] = _alarm(
        "kip: more than KIP_TEARDOWN_BUDGET automatic teardowns in an hour; the rest are held "
        "(status teardown_held) until released (POST /clusters/{name}/release) or re-checked by "
        "the sweep an hour later: find out why so many clusters went at once",
        "KarpenterInterruptionProvisioner", "TeardownHeld", [{"Name": "service", "Value": "kip"}],
        1, "Sum")
    _access_logs(res)
    outputs = template.setdefault("Outputs", {})
    outputs.update({
        "EksTriggerFunctionArn": {
            "Description": "hub.yaml TriggerFunctionArn", "Value": {"Fn::GetAtt": ["OnEksEvent", "Arn"]}},
        "DriftFunctionArn": {
            "Description": "hub.yaml DriftFunctionArn", "Value": {"Fn::GetAtt": ["OnDriftEvent", "Arn"]}},
        "HubAccountId": {"Description": "member.yaml HubAccountId", "Value": {"Ref": "AWS::AccountId"}},
        "HubPrincipalPattern": {
            "Description": "member.yaml HubPrincipalPattern: the names of this stack's function roles",
            "Value": {"Fn::Sub": "${AWS::StackName}-*"}},
        "ExternalIdSecretArn": {"Condition": "HasExternalId", "Value": {"Ref": "ExternalIdSecret"}},
        "HubRoleArns": {
            "Description": "member.yaml HubRoleArns: the exact ARNs of this stack's function roles, "
                           "the only principals member accounts should trust",
            "Value": {"Fn::Join": [",", [{"Fn::GetAtt": [lid, "Arn"]}
                                         for lid in _function_roles(res)]]}},
    })
    for name in ("EndpointURL", "ClustersTableName"):
        outputs.get(name, {}).setdefault("Description", "for the portal (docs/portal.md)")
    return template


# One JSON line per API request: who called (the JWT subject the authorizer returned, or the
# SigV4 caller's ARN), what, and the answer. Written to the stack's log group with a retention.
ACCESS_LOG_FORMAT = json.dumps({
    "requestId": "$context.requestId", "time": "$context.requestTime",
    "ip": "$context.identity.sourceIp", "principal": "$context.authorizer.principalId",
    "userArn": "$context.identity.userArn", "method": "$context.httpMethod",
    "path": "$context.path", "status": "$context.status",
    "error": "$context.error.message", "authorizerError": "$context.authorizer.error",
    "latencyMs": "$context.responseLatency"}, separators=(",", ":"))


def _access_logs(res: dict) -> None:
    """API Gateway access logs on the API's stage, into a log group of the stack with the
    LogRetentionDays retention. (API Gateway writes them through the account's CloudWatch role,
    set once per account and region: docs/DEPLOY.md.)"""
    apis = [k for k, v in res.items() if v["Type"] == "AWS::Serverless::Api"]
    if not apis:
        return
    res["ApiAccessLogGroup"] = {
        "Type": "AWS::Logs::LogGroup", "DeletionPolicy": "Delete",
        "Properties": {"LogGroupName": {"Fn::Sub": "/aws/apigateway/${AWS::StackName}/access"},
                       "RetentionInDays": {"Ref": "LogRetentionDays"}}}
    for api in apis:
        res[api]["Properties"]["AccessLogSetting"] = {
            "DestinationArn": {"Fn::GetAtt": ["ApiAccessLogGroup", "Arn"]},
            "Format": ACCESS_LOG_FORMAT}


def build(stage: str, out: pathlib.Path, partition: str = "aws") -> dict:
    """`chalice package` into ``out`` (the stage's resources merged in), then finish it."""
    env = dict(os.environ)
    env.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    chalice = pathlib.Path(sys.executable).parent / "chalice"
    subprocess.run([str(chalice), "package", "--stage", stage, "--merge-template",
                    f".chalice/resources-{stage}.json", str(out)], cwd=ROOT, env=env, check=True)
    removed = slim_zip(out / "deployment.zip")
    sam = out / "sam.json"
    template = finish_template(json.loads(sam.read_text()))
    count = rewrite_template(template, stage, partition)
    sam.write_text(json.dumps(template, indent=2) + "\n")
    return {"removed": removed, "roles": count,
            "zip_bytes": (out / "deployment.zip").stat().st_size}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stage", required=True)
    ap.add_argument("--partition", default="aws")
    ap.add_argument("--build", action="store_true",
                    help="run `chalice package` into the folder of TEMPLATE first, then finish")
    ap.add_argument("template", type=pathlib.Path,
                    help="build/package/sam.json (with --build: the folder, build/package)")
    args = ap.parse_args(argv)
    try:
        rewrite_partition("", args.partition)
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    if args.build:
        out = build(args.stage, args.template, args.partition)
        print(f"{args.template}: deployment.zip {out['zip_bytes'] / 1e6:.2f} MB (left to the "
              f"runtime: {', '.join(out['removed']) or 'nothing'}); policy-{args.stage}.json "
              f"for partition {args.partition} on {out['roles']} role(s)")
        return 0
    template = json.loads(args.template.read_text())
    count = rewrite_template(template, args.stage, args.partition)
    args.template.write_text(json.dumps(template, indent=2) + "\n")
    print(f"{args.template}: policy-{args.stage}.json for partition {args.partition} "
          f"on {count} role(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

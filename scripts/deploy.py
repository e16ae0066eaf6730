"""`make deploy STAGE=prod`: deploy the packaged template (build/package) with CloudFormation.

`make package` has already run `chalice package` with .chalice/resources-<stage>.json merged in, so
the template holds the functions, the API, the roles *and* the records table. This script, with
boto3 only (no AWS CLI needed):

1. uploads build/package/deployment.zip to the bucket in ``KIP_DEPLOY_BUCKET`` (or ``--bucket``)
   under a content-addressed key ``<prefix>/deployment-<sha256>.zip`` (same code, same key: no
   needless function update; new code, new key: CloudFormation sees the change);
2. rewrites every local ``CodeUri`` of the template to ``s3://<bucket>/<key>``;
3. creates a change set (CREATE for a new stack, UPDATE otherwise), waits for it, executes it,
   waits for the stack, and prints the stack outputs (EndpointURL, ClustersTableName, ...).

The stack's lifecycle: a new stack is created; an existing one updated (parameters not given keep
their previous values); "no changes" is a no-op; a stack whose first create rolled back
(ROLLBACK_COMPLETE, which CloudFormation cannot update) is deleted first, and the records table
that create left behind (DeletionPolicy Retain) is removed when it is empty and kip's, otherwise the
script stops and says what to do. When a change set or the stack fails, the stack's failure events
are printed. The stack name must start with ``kip-``: the function roles, log groups and secret are
named after the stack, and the IAM grants (.chalice/policy-<stage>.json, member.yaml's
HubPrincipalPattern) match ``kip-*``.

Deploy-time inputs (stack parameters, never committed): ``--org-id``, ``--allowed-accounts``,
the external id from the environment variable ``KIP_DEPLOY_EXTERNAL_ID`` (not an argument, so it
stays out of shell history and process lists), ``--log-retention-days``, ``--alarm-topic-arn``,
``--no-alarms``.

``--bootstrap`` creates the code bucket (versioned, encrypted, public access blocked, TLS only)
and stops; run it once per account and region.

``--dry-run`` makes no AWS call: it prints the upload, the rewritten CodeUris and the change set it
would create, and writes the rewritten template next to the original (sam.deploy.json).
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import pathlib
import re
import sys
import time
from typing import Any, Callable, Optional

from botocore.exceptions import ClientError, WaiterError

ROOT = pathlib.Path(__file__).resolve().parents[1]
TEMPLATE_BODY_LIMIT = 51_200            # bytes; larger templates must be passed by S3 URL
CAPABILITIES = ["CAPABILITY_IAM", "CAPABILITY_AUTO_EXPAND"]   # roles + the SAM transform
NO_CHANGES = ("didn't contain changes", "No updates are to be performed")
# kip-<something>: the roles (<stack>-<Function>Role-<id>), log groups (/aws/lambda/<stack>/...)
# and the external-id secret (<stack>-external-id) are named after the stack, and the IAM grants
# match kip-*. CloudFormation allows 128 characters; role names are cut at 64 by CloudFormation.
STACK_NAME = re.compile(r"kip-[A-Za-z0-9-]{1,60}")
# CloudFormation cannot update a stack in these: it must be deleted (ROLLBACK_COMPLETE: the first
# create failed; nothing but retained resources is left)
DELETE_FIRST = ("ROLLBACK_COMPLETE", "ROLLBACK_FAILED", "DELETE_FAILED")
FAILED = re.compile(r".*_FAILED$")


def check_stack_name(name: str) -> str:
    if not STACK_NAME.fullmatch(name):
        raise SystemExit(
            f"stack name {name!r}: must be kip- followed by 1-60 letters, digits or hyphens "
            "(e.g. kip-prod). The function roles, log groups and the external-id secret are "
            "named after the stack, and kip's IAM grants (.chalice/policy-<stage>.json, "
            "deploy/member.yaml HubPrincipalPattern) only match kip-*.")
    return name


def code_key(zip_path: pathlib.Path, prefix: str) -> str:
    digest = hashlib.sha256(zip_path.read_bytes()).hexdigest()
    return f"{prefix.strip('/')}/deployment-{digest}.zip"


def upload_code(s3: Any, zip_path: pathlib.Path, bucket: str, key: str) -> bool:
    """Upload unless the same content is already there. Returns True if it uploaded."""
    try:
        s3.head_object(Bucket=bucket, Key=key)
        return False
    except ClientError as exc:
        if exc.response["Error"]["Code"] not in ("404", "NoSuchKey", "NotFound"):
            raise
    s3.upload_file(str(zip_path), bucket, key)
    return True


def rewrite_code_uris(template: dict, bucket: str, key: str,
                      local: str = "./deployment.zip") -> tuple[dict, list[str]]:
    """A copy of ``template`` whose local CodeUri/ContentUri point at ``s3://bucket/key``; returns
    it and the logical ids that were rewritten."""
    out = copy.deepcopy(template)
    changed = []
    for logical_id, res in out.get("Resources", {}).items():
        props = res.get("Properties", {})
        for prop in ("CodeUri", "ContentUri"):
            uri = props.get(prop)
            if isinstance(uri, str) and not uri.startswith("s3://"):
                if pathlib.PurePosixPath(uri).name != pathlib.PurePosixPath(local).name:
                    raise ValueError(f"{logical_id}.{prop} = {uri!r}: not the packaged zip")
                props[prop] = f"s3://{bucket}/{key}"
                changed.append(logical_id)
    return out, changed


def describe(cfn: Any, stack: str) -> Optional[dict]:
    try:
        stacks = cfn.describe_stacks(StackName=stack)["Stacks"]
    except ClientError as exc:
        if "does not exist" in exc.response["Error"].get("Message", ""):
            return None
        raise
    return stacks[0] if stacks else None


def change_set_type(cfn: Any, stack: str) -> str:
    desc = describe(cfn, stack)
    # a stack left in REVIEW_IN_PROGRESS by an unexecuted CREATE change set is still new
    return "CREATE" if desc is None or desc["StackStatus"] == "REVIEW_IN_PROGRESS" else "UPDATE"


def failure_events(cfn: Any, stack: str, since: Optional[float] = None, limit: int = 20) -> list:
    """The stack's *_FAILED events (newest first), since ``since`` (epoch seconds) when given."""
    out: list = []
    kw: dict = {"StackName": stack}
    while len(out) < limit:
        try:
            page = cfn.describe_stack_events(**kw)
        except ClientError:
            break
        for ev in page.get("StackEvents", []):
            ts = ev.get("Timestamp")
            if since is not None and ts is not None and ts.timestamp() < since:
                return out
            if FAILED.match(ev.get("ResourceStatus", "")):
                out.append(ev)
        if not page.get("NextToken"):
            break
        kw["NextToken"] = page["NextToken"]
    return out[:limit]


def print_failures(cfn: Any, stack: str, out: Callable, since: Optional[float] = None) -> None:
    events = failure_events(cfn, stack, since)
    if not events:
        out(f"no failure events recorded for {stack}")
    for ev in events:
        out(f"  {ev.get('Timestamp')}  {ev.get('LogicalResourceId')} "
            f"({ev.get('ResourceType')}) {ev.get('ResourceStatus')}: "
            f"{ev.get('ResourceStatusReason', '')}")


def retained_table(template: dict) -> Optional[str]:
    """The fixed name of the records table the template retains on deletion, if any."""
    for res in template.get("Resources", {}).values():
        if res.get("Type") == "AWS::DynamoDB::Table" and res.get("DeletionPolicy") == "Retain":
            name = res.get("Properties", {}).get("TableName")
            return name if isinstance(name, str) else None
    return None


def clear_retained_table(ddb: Any, table: str, out: Callable) -> None:
    """After a failed first create: the table CloudFormation left behind blocks the next create
    ("already exists"). Removed if it is empty and tagged as kip's; otherwise stop and say how."""
    try:
        desc = ddb.describe_table(TableName=table)["Table"]
    except ClientError as exc:
        if exc.response["Error"]["Code"] == "ResourceNotFoundException":
            return
        raise
    tags = {t["Key"]: t["Value"] for t in
            ddb.list_tags_of_resource(ResourceArn=desc["TableArn"]).get("Tags", [])}
    empty = not ddb.scan(TableName=table, Limit=1, Select="COUNT").get("Count")
    if empty and tags.get("kip.io/managed-by") == "karpenter-interruption-provisioner":
        ddb.delete_table(TableName=table)
        ddb.get_waiter("table_not_exists").wait(TableName=table,
                                                WaiterConfig={"Delay": 5, "MaxAttempts": 60})
        out(f"removed the empty table {table} the failed create retained")
        return
    raise SystemExit(
        f"the table {table} exists ({'empty' if empty else 'holds records'}"
        f"{'' if tags.get('kip.io/managed-by') else ', not tagged as kip' + chr(39) + 's'}) and "
        "the stack would create it again. Keep its records: back it up (aws dynamodb "
        f"create-backup --table-name {table} --backup-name {table}-before-redeploy), delete it "
        f"(aws dynamodb delete-table --table-name {table}), deploy, then restore the items; or "
        "deploy under another --stage. kip never deletes a table that holds records.")


def recover(cfn: Any, ddb: Any, stack: str, template: dict, status: str, out: Callable) -> None:
    """A stack CloudFormation cannot update (a failed first create): show why it failed, delete
    it, and clear the retained table, so the deploy can create it again."""
    out(f"stack {stack} is {status}: CloudFormation cannot update it; it failed because:")
    print_failures(cfn, stack, out)
    out(f"deleting {stack}, then creating it again")
    cfn.delete_stack(StackName=stack)
    try:
        cfn.get_waiter("stack_delete_complete").wait(
            StackName=stack, WaiterConfig={"Delay": 10, "MaxAttempts": 180})
    except WaiterError:
        print_failures(cfn, stack, out)
        raise SystemExit(f"could not delete {stack}; see the events above")
    table = retained_table(template)
    if table:
        clear_retained_table(ddb, table, out)


def parameters(args: argparse.Namespace, template: dict, previous: Optional[dict]) -> list:
    """Stack parameters: the values given, the previous value for the others on an update (a
    parameter the deployed stack does not have yet takes the template's default)."""
    given = {"OrgId": args.org_id, "AllowedAccountIds": args.allowed_accounts,
             "ExternalId": os.environ.get("KIP_DEPLOY_EXTERNAL_ID") or None,
             "LogRetentionDays": args.log_retention_days, "AlarmTopicArn": args.alarm_topic_arn,
             "Alarms": "false" if args.no_alarms else None,
             "GrantMode": getattr(args, "grant_mode", None),
             "IamWrites": "false" if getattr(args, "no_iam_writes", False) else None}
    declared = template.get("Parameters", {})
    had = {p["ParameterKey"] for p in (previous or {}).get("Parameters", [])}
    out = []
    for key in declared:
        if given.get(key) is not None:
            out.append({"ParameterKey": key, "ParameterValue": str(given[key])})
        elif previous is not None and key in had:
            out.append({"ParameterKey": key, "UsePreviousValue": True})
    return out


def bootstrap(s3: Any, bucket: str, region: str, out: Callable = print) -> None:
    """The code bucket: versioned, encrypted (SSE-S3), public access blocked, TLS only.
    Idempotent: an existing bucket of this account gets the same settings."""
    try:
        kw: dict = {"Bucket": bucket}
        if region != "us-east-1":
            kw["CreateBucketConfiguration"] = {"LocationConstraint": region}
        s3.create_bucket(**kw)
        out(f"created s3://{bucket}")
    except ClientError as exc:
        if exc.response["Error"]["Code"] != "BucketAlreadyOwnedByYou":
            raise
        out(f"s3://{bucket} exists; applying the settings")
    s3.put_public_access_block(Bucket=bucket, PublicAccessBlockConfiguration={
        "BlockPublicAcls": True, "IgnorePublicAcls": True, "BlockPublicPolicy": True,
        "RestrictPublicBuckets": True})
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    s3.put_bucket_encryption(Bucket=bucket, ServerSideEncryptionConfiguration={"Rules": [
        {"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"},
         "BucketKeyEnabled": True}]})
    partition = "aws-cn" if region.startswith("cn-") else \
        "aws-us-gov" if region.startswith("us-gov-") else "aws"
    arn = f"arn:{partition}:s3:::{bucket}"
    s3.put_bucket_policy(Bucket=bucket, Policy=json.dumps({
        "Version": "2012-10-17", "Statement": [{
            "Sid": "DenyInsecureTransport", "Effect": "Deny", "Principal": "*",
            "Action": "s3:*", "Resource": [arn, f"{arn}/*"],
            "Condition": {"Bool": {"aws:SecureTransport": "false"}}}]}))
    out(f"s3://{bucket}: versioned, SSE-S3, public access blocked, TLS only")


def change_set_request(stack: str, stage: str, kind: str, body: Optional[str] = None,
                       url: Optional[str] = None, now: Callable[[], float] = time.time,
                       params: Optional[list] = None) -> dict:
    req: dict = {
        "StackName": stack,
        "ChangeSetName": f"kip-{stage}-{int(now())}",
        "ChangeSetType": kind,
        "Capabilities": list(CAPABILITIES),
        "Tags": [{"Key": "kip.io/stage", "Value": stage}],
        "Description": f"kip {stage} via scripts/deploy.py",
    }
    if url:
        req["TemplateURL"] = url
    else:
        req["TemplateBody"] = body
    if params:
        req["Parameters"] = params
    return req


def deploy(args: argparse.Namespace, session: Any = None, out=print) -> dict:
    stack = check_stack_name(args.stack_name or f"kip-{args.stage}")
    bucket = args.bucket or os.environ.get("KIP_DEPLOY_BUCKET")
    if args.bootstrap:
        if not bucket:
            raise SystemExit("--bootstrap needs --bucket (or KIP_DEPLOY_BUCKET): the name of the "
                             "code bucket to create")
        import boto3
        session = session or boto3.session.Session(region_name=args.region)
        region = args.region or getattr(session, "region_name", None) or "us-east-1"
        bootstrap(session.client("s3"), bucket, region, out)
        return {"bootstrapped": bucket}
    pkg = pathlib.Path(args.package_dir)
    zip_path, sam = pkg / "deployment.zip", pkg / "sam.json"
    for f in (zip_path, sam):
        if not f.is_file():
            raise SystemExit(f"{f} is missing: run `make package STAGE={args.stage}` first")
    if not bucket:
        raise SystemExit("set KIP_DEPLOY_BUCKET (or --bucket) to an S3 bucket in the target "
                         "region that the deploying identity may write to (create it once "
                         "with `make bootstrap`)")
    key = code_key(zip_path, args.prefix or f"kip/{args.stage}")
    template, changed = rewrite_code_uris(json.loads(sam.read_text()), bucket, key)
    body = json.dumps(template, separators=(",", ":"))
    (pkg / "sam.deploy.json").write_text(json.dumps(template, indent=2) + "\n")
    out(f"code       {zip_path} -> s3://{bucket}/{key}")
    out(f"CodeUri    {', '.join(changed)} -> s3://{bucket}/{key}")
    out(f"template   {pkg / 'sam.deploy.json'} ({len(body)} bytes)")
    if args.dry_run:
        req = change_set_request(stack, args.stage, "CREATE or UPDATE", body="<sam.deploy.json>",
                                 params=parameters(args, template, None))
        out("dry run: would create and execute this change set:")
        out(json.dumps(req, indent=2))
        return {"dry_run": True, "request": req, "template": template}

    import boto3
    session = session or boto3.session.Session(region_name=args.region)
    s3, cfn = session.client("s3"), session.client("cloudformation")
    previous = describe(cfn, stack)
    status = previous["StackStatus"] if previous else None
    if status in DELETE_FIRST:
        recover(cfn, session.client("dynamodb"), stack, template, status, out)
        previous = None
    elif status and status.endswith("_IN_PROGRESS") and status != "REVIEW_IN_PROGRESS":
        raise SystemExit(f"stack {stack} is {status}: wait until it settles, then deploy again")
    elif status == "UPDATE_ROLLBACK_FAILED":
        raise SystemExit(f"stack {stack} is UPDATE_ROLLBACK_FAILED: fix the resources its events "
                         "name, then `aws cloudformation continue-update-rollback --stack-name "
                         f"{stack}`, then deploy again")
    if status == "REVIEW_IN_PROGRESS":
        previous = None
    kind = "CREATE" if previous is None else "UPDATE"
    params = parameters(args, template, previous)
    if kind == "CREATE" and "OrgId" in template.get("Parameters", {}) and not (
            args.org_id or args.allowed_accounts):
        raise SystemExit("a new stack needs --org-id (o-...) and/or --allowed-accounts "
                         "(comma-separated account ids): without them every kip function "
                         "refuses to run (KIP_ALLOWED_ACCOUNTS / KIP_ORG_ID)")
    out("uploaded" if upload_code(s3, zip_path, bucket, key) else "code already uploaded")
    url = None
    if len(body.encode()) > TEMPLATE_BODY_LIMIT:
        tkey = key.replace("deployment-", "template-").replace(".zip", ".json")
        s3.put_object(Bucket=bucket, Key=tkey, Body=body.encode())
        url = f"{s3.meta.endpoint_url}/{bucket}/{tkey}"
    req = change_set_request(stack, args.stage, kind, body=None if url else body, url=url,
                             params=params)
    cs = cfn.create_change_set(**req)
    out(f"change set {req['ChangeSetName']} ({kind}) for stack {stack}")
    try:
        cfn.get_waiter("change_set_create_complete").wait(
            ChangeSetName=cs["Id"], StackName=stack, WaiterConfig={"Delay": 5, "MaxAttempts": 120})
    except WaiterError:     # the waiter raises on FAILED; tell "no changes" from a real failure
        desc = cfn.describe_change_set(ChangeSetName=cs["Id"], StackName=stack)
        reason = desc.get("StatusReason", "")
        if any(s in reason for s in NO_CHANGES):
            cfn.delete_change_set(ChangeSetName=cs["Id"], StackName=stack)
            out("no changes to deploy")
            return {"changed": False, "outputs": _outputs(cfn, stack)}
        raise SystemExit(f"change set failed: {reason}")
    started = time.time() - 60      # clock skew: events carry CloudFormation's time
    cfn.execute_change_set(ChangeSetName=cs["Id"], StackName=stack)
    waiter = "stack_create_complete" if kind == "CREATE" else "stack_update_complete"
    try:
        cfn.get_waiter(waiter).wait(StackName=stack,
                                    WaiterConfig={"Delay": 10, "MaxAttempts": 180})
    except WaiterError:
        final = describe(cfn, stack)
        out(f"stack {stack} did not deploy: "
            f"{final['StackStatus'] if final else 'deleted'}; its failure events:")
        print_failures(cfn, stack, out, since=started)
        hint = (" Deploy again: the script deletes the rolled-back stack first."
                if final and final["StackStatus"] in DELETE_FIRST else "")
        raise SystemExit(f"deploy of {stack} failed (events above).{hint}")
    outputs = _outputs(cfn, stack)
    for k, v in outputs.items():
        out(f"{k:<20} {v}")
    return {"changed": True, "outputs": outputs}


def _outputs(cfn: Any, stack: str) -> dict:
    desc = cfn.describe_stacks(StackName=stack)["Stacks"][0]
    return {o["OutputKey"]: o["OutputValue"] for o in desc.get("Outputs", [])}


def parse(argv: Optional[list[str]] = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stage", default="prod")
    ap.add_argument("--package-dir", default=str(ROOT / "build" / "package"))
    ap.add_argument("--bucket", help="default: $KIP_DEPLOY_BUCKET")
    ap.add_argument("--prefix", help="S3 key prefix; default kip/<stage>")
    ap.add_argument("--stack-name", help="default kip-<stage>")
    ap.add_argument("--region", default=None, help="default: the AWS SDK's (AWS_REGION, profile)")
    ap.add_argument("--dry-run", action="store_true")
    ap.add_argument("--bootstrap", action="store_true",
                    help="create the code bucket (--bucket / KIP_DEPLOY_BUCKET) and stop")
    ap.add_argument("--org-id", help="stack parameter OrgId (KIP_ORG_ID)")
    ap.add_argument("--allowed-accounts", help="stack parameter AllowedAccountIds, comma-separated")
    ap.add_argument("--log-retention-days", type=int, help="stack parameter LogRetentionDays")
    ap.add_argument("--alarm-topic-arn", help="stack parameter AlarmTopicArn (SNS)")
    ap.add_argument("--no-alarms", action="store_true", help="stack parameter Alarms=false")
    ap.add_argument("--grant-mode", choices=("role-policy", "queue-policy"),
                    help="stack parameter GrantMode (KIP_GRANT_MODE)")
    ap.add_argument("--no-iam-writes", action="store_true",
                    help="stack parameter IamWrites=false (only with queue-policy, once moved)")
    return ap.parse_args(argv)


def main(argv: Optional[list[str]] = None) -> int:
    deploy(parse(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())

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
import sys
import time
from typing import Any, Callable, Optional

from botocore.exceptions import ClientError, WaiterError

ROOT = pathlib.Path(__file__).resolve().parents[1]
TEMPLATE_BODY_LIMIT = 51_200            # bytes; larger templates must be passed by S3 URL
CAPABILITIES = ["CAPABILITY_IAM", "CAPABILITY_AUTO_EXPAND"]   # roles + the SAM transform
NO_CHANGES = ("didn't contain changes", "No updates are to be performed")


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


def change_set_type(cfn: Any, stack: str) -> str:
    try:
        stacks = cfn.describe_stacks(StackName=stack)["Stacks"]
    except ClientError as exc:
        if "does not exist" in exc.response["Error"].get("Message", ""):
            return "CREATE"
        raise
    # a stack left in REVIEW_IN_PROGRESS by an unexecuted CREATE change set is still new
    return "CREATE" if stacks and stacks[0]["StackStatus"] == "REVIEW_IN_PROGRESS" else "UPDATE"


def change_set_request(stack: str, stage: str, kind: str, body: Optional[str] = None,
                       url: Optional[str] = None, now: Callable[[], float] = time.time) -> dict:
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
    return req


def deploy(args: argparse.Namespace, session: Any = None, out=print) -> dict:
    pkg = pathlib.Path(args.package_dir)
    zip_path, sam = pkg / "deployment.zip", pkg / "sam.json"
    for f in (zip_path, sam):
        if not f.is_file():
            raise SystemExit(f"{f} is missing: run `make package STAGE={args.stage}` first")
    bucket = args.bucket or os.environ.get("KIP_DEPLOY_BUCKET")
    if not bucket:
        raise SystemExit("set KIP_DEPLOY_BUCKET (or --bucket) to an S3 bucket in the target "
                         "region that the deploying identity may write to")
    stack = args.stack_name or f"kip-{args.stage}"
    key = code_key(zip_path, args.prefix or f"kip/{args.stage}")
    template, changed = rewrite_code_uris(json.loads(sam.read_text()), bucket, key)
    body = json.dumps(template, separators=(",", ":"))
    (pkg / "sam.deploy.json").write_text(json.dumps(template, indent=2) + "\n")
    out(f"code       {zip_path} -> s3://{bucket}/{key}")
    out(f"CodeUri    {', '.join(changed)} -> s3://{bucket}/{key}")
    out(f"template   {pkg / 'sam.deploy.json'} ({len(body)} bytes)")
    if args.dry_run:
        req = change_set_request(stack, args.stage, "CREATE or UPDATE", body="<sam.deploy.json>")
        out("dry run: would create and execute this change set:")
        out(json.dumps(req, indent=2))
        return {"dry_run": True, "request": req, "template": template}

    import boto3
    session = session or boto3.session.Session(region_name=args.region)
    s3, cfn = session.client("s3"), session.client("cloudformation")
    out("uploaded" if upload_code(s3, zip_path, bucket, key) else "code already uploaded")
    url = None
    if len(body.encode()) > TEMPLATE_BODY_LIMIT:
        tkey = key.replace("deployment-", "template-").replace(".zip", ".json")
        s3.put_object(Bucket=bucket, Key=tkey, Body=body.encode())
        url = f"{s3.meta.endpoint_url}/{bucket}/{tkey}"
    kind = change_set_type(cfn, stack)
    req = change_set_request(stack, args.stage, kind, body=None if url else body, url=url)
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
    cfn.execute_change_set(ChangeSetName=cs["Id"], StackName=stack)
    waiter = "stack_create_complete" if kind == "CREATE" else "stack_update_complete"
    cfn.get_waiter(waiter).wait(StackName=stack, WaiterConfig={"Delay": 10, "MaxAttempts": 180})
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
    return ap.parse_args(argv)


def main(argv: Optional[list[str]] = None) -> int:
    deploy(parse(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())

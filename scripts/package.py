"""After `chalice package`: put the stage's IAM policy into the template for the target partition.

The policy files in .chalice/ are written for the `aws` partition (`arn:aws:...`). kip supports the
partition it is deployed in, one at a time; for AWS China or GovCloud, `make package
PARTITION=aws-cn` (or `aws-us-gov`) runs this script, which rewrites every `arn:aws:` of the stage's
policy to `arn:<partition>:` inside the packaged template. The files in .chalice/ stay unchanged.

Usage: python scripts/package.py --stage prod --partition aws-cn build/package/sam.json
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys
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
            if doc == original or doc == wanted:
                policy["PolicyDocument"] = wanted
                count += 1
            else:
                raise ValueError(f"{logical_id} carries a policy that is not "
                                 f".chalice/policy-{stage}.json; refusing to guess")
    if partition != "aws":
        left = sorted({s for s in _strings(template) if "arn:aws:" in s})
        if left:
            raise ValueError(f"ARNs still name the aws partition: {left[:5]}")
    return count


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stage", required=True)
    ap.add_argument("--partition", default="aws")
    ap.add_argument("template", type=pathlib.Path)
    args = ap.parse_args(argv)
    try:
        rewrite_partition("", args.partition)
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    template = json.loads(args.template.read_text())
    count = rewrite_template(template, args.stage, args.partition)
    args.template.write_text(json.dumps(template, indent=2) + "\n")
    print(f"{args.template}: policy-{args.stage}.json for partition {args.partition} "
          f"on {count} role(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The security scanners CI runs, each compared with a reviewed baseline in ``security/``.

* checkov on CloudFormation templates (``deploy/*.yaml``, and the packaged SAM template when one
  was built). checkov pins boto3 1.35 and cannot share the dev venv (boto3 1.44): it runs from its
  own venv, ``build/scanners/checkov-venv``, built here on first use from
  ``security/checkov-requirements.txt`` + ``security/checkov-constraints.txt`` (about 40 s, once;
  rebuilt when those files or the Python version change).
* bandit on kip's own code (``chalicelib/``, ``app.py``, ``scripts/``), from the dev venv.
* parliament (with its community auditors: privilege escalation, permissions management,
  credentials exposure) on every IAM policy document kip ships or generates: the Lambda's
  ``.chalice/policy-*.json``, the policies inside ``deploy/*.yaml`` and the policies kip writes at
  run time (``chalicelib/core/policies.py``, for a sample cluster).

A finding is identified without line numbers, so unrelated edits do not churn the baselines:
checkov (check id, file, resource), bandit (test id, file, the flagged source line), parliament
(issue, policy document, what it names). Each baseline entry carries a ``verdict``
(``false-positive``, ``by-design``, or ``open``: real, not fixed yet) and a ``reason``.

    python -m tests.support.scanners [checkov|bandit|parliament] [template ...]

prints what a scanner finds now, new and stale entries against its baseline, as JSON entries to
review and paste (a new entry needs a verdict and a reason written by a person).
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import venv
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import yaml

ROOT = Path(__file__).resolve().parents[2]
SECURITY = ROOT / "security"
SCANNERS_BUILD = ROOT / "build" / "scanners"
CHECKOV_VENV = SCANNERS_BUILD / "checkov-venv"
CHECKOV_REQUIREMENTS = SECURITY / "checkov-requirements.txt"
CHECKOV_CONSTRAINTS = SECURITY / "checkov-constraints.txt"
PACKAGED_TEMPLATE = ROOT / "build" / "package" / "sam.json"
BANDIT_TARGETS = ("chalicelib", "app.py", "scripts")
VERDICTS = ("false-positive", "by-design", "open")
PIP = "pip==26.0.1"      # as the Makefile's venv


@dataclass(frozen=True)
class Finding:
    rule: str       # checkov check id, bandit test id, parliament issue
    where: str      # file (relative to the repository), or policy document name
    what: str       # resource, flagged source line, or what the issue names (JSON)
    message: str = ""

    @property
    def key(self) -> tuple:
        return (self.rule, self.where, self.what)

    def entry(self) -> dict:
        return {"rule": self.rule, "where": self.where, "what": self.what,
                "message": self.message, "verdict": "", "reason": ""}


@dataclass
class Comparison:
    new: list          # findings the baseline does not accept: CI fails
    stale: list        # baseline entries that no longer occur: CI fails too (keep it honest)
    accepted: list     # findings the baseline accepts

    @property
    def clean(self) -> bool:
        return not self.new and not self.stale

    def report(self, scanner: str) -> str:
        lines = []
        if self.new:
            lines.append(f"{scanner}: {len(self.new)} new finding(s); fix them, or add them to "
                         f"security/{scanner}-baseline.json with a verdict and a reason:")
            lines += [f"  {json.dumps(f.entry())}" for f in self.new]
        if self.stale:
            lines.append(f"{scanner}: {len(self.stale)} baseline entr(y/ies) no longer found; "
                         f"remove them from security/{scanner}-baseline.json:")
            lines += [f"  {json.dumps(e)}" for e in self.stale]
        return "\n".join(lines)


def load_baseline(scanner: str) -> list:
    return json.loads((SECURITY / f"{scanner}-baseline.json").read_text())["accepted"]


def compare(found: Iterable[Finding], accepted: list, scanned: "set[str] | None" = None
            ) -> Comparison:
    """Multiset comparison by key. Entries whose ``where`` was not scanned this time (a
    template that was not built) are neither matched nor stale."""
    if scanned is not None:
        accepted = [e for e in accepted if e["where"] in scanned]
    allowance = Counter((e["rule"], e["where"], e["what"]) for e in accepted)
    new, ok = [], []
    for finding in sorted(found, key=lambda f: f.key):
        if allowance[finding.key] > 0:
            allowance[finding.key] -= 1
            ok.append(finding)
        else:
            new.append(finding)
    stale = []
    for entry in accepted:
        key = (entry["rule"], entry["where"], entry["what"])
        if allowance[key] > 0:
            allowance[key] -= 1
            stale.append(entry)
    return Comparison(new=new, stale=stale, accepted=ok)


def _relative(path: "str | Path") -> str:
    path = Path(path).resolve()
    try:
        return path.relative_to(ROOT).as_posix()
    except ValueError:
        return path.as_posix()


# ------------------------------------------------------------------------------------ checkov

def _checkov_stamp() -> str:
    digest = hashlib.sha256()
    for path in (CHECKOV_REQUIREMENTS, CHECKOV_CONSTRAINTS):
        digest.update(path.read_bytes())
    digest.update(sys.version.encode())
    return digest.hexdigest()


def checkov_python() -> Path:
    """The isolated venv's python, built (under a lock: pytest-xdist workers share it) when it
    is missing or its pins changed."""
    SCANNERS_BUILD.mkdir(parents=True, exist_ok=True)
    python = CHECKOV_VENV / "bin" / "python"
    stamp_file = CHECKOV_VENV / ".kip-stamp"
    stamp = _checkov_stamp()
    with open(SCANNERS_BUILD / "checkov-venv.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if python.exists() and stamp_file.exists() and stamp_file.read_text() == stamp:
            return python
        shutil.rmtree(CHECKOV_VENV, ignore_errors=True)
        venv.EnvBuilder(with_pip=True, clear=True).create(CHECKOV_VENV)
        pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
        for args in ([PIP], ["-r", str(CHECKOV_REQUIREMENTS), "-c", str(CHECKOV_CONSTRAINTS)]):
            done = subprocess.run(pip + args, cwd=ROOT, capture_output=True, text=True,
                                  timeout=900)
            if done.returncode != 0:
                raise RuntimeError(f"installing checkov into {_relative(CHECKOV_VENV)} failed:"
                                   f"\n{done.stderr[-3000:]}")
        stamp_file.write_text(stamp)
        return python


def run_checkov(templates: list, names: "dict | None" = None) -> "tuple[list[Finding], set[str]]":
    """Findings of checkov's CloudFormation checks on ``templates``, and the files it scanned.
    ``names``: the name a template outside the tree is reported under (the session's packaged
    template, built in a temporary folder, is ``build/package/sam.json``)."""
    templates = [Path(t) for t in templates]
    names = {_relative(k): v for k, v in (names or {}).items()}

    def rel(path: "str | Path") -> str:
        r = _relative(path)
        return names.get(r, r)
    args = [str(checkov_python()), "-m", "checkov.main", "--framework", "cloudformation",
            "--output", "json", "--compact", "--skip-download"]
    for template in templates:
        args += ["--file", str(template.resolve())]
    # BC_SKIP_MAPPING: no call to Prisma Cloud for guideline links (CI reaches PyPI only)
    env = {**os.environ, "BC_SKIP_MAPPING": "TRUE", "LOG_LEVEL": "WARNING"}
    done = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    if done.returncode not in (0, 1):
        raise RuntimeError(f"checkov exited {done.returncode}:\n{done.stderr[-3000:]}")
    reports = json.loads(done.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    findings, scanned = [], set()
    for report in reports:
        if report.get("summary", {}).get("parsing_errors"):
            raise RuntimeError(f"checkov could not parse: {report['results']['parsing_errors']}")
        results = report.get("results", {})
        for check in results.get("passed_checks", []) + results.get("failed_checks", []):
            scanned.add(rel(check["file_abs_path"]))
        for check in results.get("failed_checks", []):
            findings.append(Finding(check["check_id"], rel(check["file_abs_path"]),
                                    check["resource"], check["check_name"]))
    missing = {rel(t) for t in templates} - scanned
    if missing:
        raise RuntimeError(f"checkov checked nothing in {sorted(missing)}: not a template?")
    return findings, scanned


# ------------------------------------------------------------------------------------- bandit

def run_bandit(targets: Iterable[str] = BANDIT_TARGETS) -> list:
    args = [sys.executable, "-m", "bandit", "--quiet", "--recursive", "--format", "json",
            *[str(ROOT / t) for t in targets]]
    done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300)
    if done.returncode not in (0, 1):
        raise RuntimeError(f"bandit exited {done.returncode}:\n{done.stderr[-3000:]}")
    report = json.loads(done.stdout)
    if report.get("errors"):
        raise RuntimeError(f"bandit could not scan: {report['errors']}")
    findings = []
    for result in report["results"]:
        source = Path(result["filename"]).read_text().splitlines()
        line = source[result["line_number"] - 1].strip()
        findings.append(Finding(result["test_id"], _relative(result["filename"]), line,
                                f"{result['issue_severity']}/{result['issue_confidence']}: "
                                f"{result['issue_text']}"))
    return findings


# --------------------------------------------------------------------------------- parliament

# Values for template parameters without a default, and for pseudo parameters: parliament
# reads ARNs, so every ${...} must become something ARN-shaped.
SAMPLE_ACCOUNT = "111122223333"
SAMPLE_REGION = "eu-west-1"
PSEUDO = {"AWS::Partition": "aws", "AWS::AccountId": SAMPLE_ACCOUNT, "AWS::Region": SAMPLE_REGION,
          "AWS::URLSuffix": "amazonaws.com", "AWS::StackName": "kip-sample"}
SAMPLE_PARAMETERS = {
    "HubAccountId": "444455556666",
    "HubEventBusArn": f"arn:aws:events:{SAMPLE_REGION}:444455556666:event-bus/kip-hub",
    "ExternalId": "0123456789abcdef0123456789abcdef",
    "PrimaryRegion": SAMPLE_REGION,
    "TriggerFunctionArn": f"arn:aws:lambda:{SAMPLE_REGION}:444455556666:function:kip-prod-on_eks",
    "DriftFunctionArn": f"arn:aws:lambda:{SAMPLE_REGION}:444455556666:function:kip-prod-drift",
    "HubRoleArns": [f"arn:aws:iam::444455556666:role/kip-prod-OnEksEventRole-AbC1"],
    "OrgId": "o-abcdefghij",
    "AllowedAccountIds": [SAMPLE_ACCOUNT],
}


class _CfnLoader(yaml.SafeLoader):
    """CloudFormation's short forms (!Sub, !Ref, ...) as their long JSON forms."""


def _short_form(loader: _CfnLoader, suffix: str, node: yaml.Node) -> dict:
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    if suffix == "Ref":
        return {"Ref": value}
    if suffix == "GetAtt" and isinstance(value, str):
        value = value.split(".", 1)
    return {f"Fn::{suffix}": value}


_CfnLoader.add_multi_constructor("!", _short_form)


def load_template(path: Path) -> dict:
    text = path.read_text()
    return json.loads(text) if path.suffix == ".json" else yaml.load(text, Loader=_CfnLoader)


class _Resolver:
    """Evaluates the intrinsic functions a policy uses, with every condition true (the widest
    policy the template can produce)."""

    def __init__(self, template: dict) -> None:
        self.parameters = {}
        for name, spec in (template.get("Parameters") or {}).items():
            if name in SAMPLE_PARAMETERS:
                value = SAMPLE_PARAMETERS[name]
            elif spec.get("Default") not in (None, ""):
                value = spec["Default"]
            else:
                raise KeyError(f"template parameter {name} has no default: add a sample value "
                               "to SAMPLE_PARAMETERS in tests/support/scanners.py")
            if spec.get("Type") == "CommaDelimitedList" and isinstance(value, str):
                value = [v.strip() for v in value.split(",")]
            self.parameters[name] = value
        self.resources = template.get("Resources") or {}

    def ref(self, name: str):
        if name in PSEUDO:
            return PSEUDO[name]
        if name in self.parameters:
            return self.parameters[name]
        if name in self.resources:
            return f"sample-{name}"
        raise KeyError(f"Ref to unknown {name}")

    def get_att(self, logical: str, attribute: str) -> str:
        kind = self.resources[logical]["Type"].split("::")[1].lower()
        if attribute == "Arn":
            return f"arn:aws:{kind}:{SAMPLE_REGION}:{SAMPLE_ACCOUNT}:sample-{logical}"
        return f"sample-{logical}-{attribute}"

    def sub(self, text: str, local: dict) -> str:
        out, i = [], 0
        while i < len(text):
            start = text.find("${", i)
            if start < 0:
                out.append(text[i:])
                break
            end = text.index("}", start)
            out.append(text[i:start])
            name = text[start + 2:end]
            if name.startswith("!"):
                out.append("${" + name[1:] + "}")
            elif name in local:
                out.append(str(self.resolve(local[name])))
            elif "." in name:
                out.append(self.get_att(*name.split(".", 1)))
            else:
                out.append(str(self.ref(name)))
            i = end + 1
        return "".join(out)

    def resolve(self, node):
        if isinstance(node, list):
            items = [self.resolve(v) for v in node]
            return [v for v in items if v is not _NO_VALUE]
        if not isinstance(node, dict):
            return node
        if len(node) == 1:
            (key, value), = node.items()
            if key == "Ref":
                return _NO_VALUE if value == "AWS::NoValue" else self.ref(value)
            if key == "Fn::Sub":
                text, local = (value, {}) if isinstance(value, str) else value
                return self.sub(text, local)
            if key == "Fn::GetAtt":
                logical, attribute = value if isinstance(value, list) else value.split(".", 1)
                return self.get_att(logical, attribute)
            if key == "Fn::If":
                return self.resolve(value[1])
            if key == "Fn::Join":
                return value[0].join(str(v) for v in self.resolve(value[1]))
            if key.startswith("Fn::"):
                raise ValueError(f"{key} in a policy: teach tests/support/scanners.py to read it")
        resolved = {k: self.resolve(v) for k, v in node.items()}
        return {k: v for k, v in resolved.items() if v is not _NO_VALUE}


_NO_VALUE = object()


def template_policies(path: Path) -> dict:
    """name -> policy document of every IAM policy in a template: roles' inline policies,
    IAM managed and inline policy resources, SQS queue and event bus resource policies."""
    template = load_template(path)
    resolver = _Resolver(template)
    where, docs = _relative(path), {}
    for logical, resource in sorted(resolver.resources.items()):
        kind, props = resource.get("Type"), resource.get("Properties") or {}
        if kind == "AWS::IAM::Role":
            # (not the trust policy: parliament reads a statement without Resource as
            # MALFORMED; checkov's CKV_AWS_60/61 check trust policies)
            for policy in props.get("Policies") or []:
                docs[f"{where}#{logical}/{resolver.resolve(policy['PolicyName'])}"] = \
                    resolver.resolve(policy["PolicyDocument"])
        elif kind in ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy", "AWS::IAM::RolePolicy",
                      "AWS::SQS::QueuePolicy"):
            docs[f"{where}#{logical}"] = resolver.resolve(props["PolicyDocument"])
        elif kind == "AWS::Events::EventBus" and props.get("Policy"):
            docs[f"{where}#{logical}"] = resolver.resolve(props["Policy"])
    return docs


def generated_policies() -> dict:
    """The documents kip writes at run time, for a sample cluster (the pure functions of
    chalicelib/core/policies.py, with the names chalicelib/core/naming.py gives the cluster)."""
    from chalicelib.core import naming, policies

    cid = naming.ClusterId(SAMPLE_ACCOUNT, SAMPLE_REGION, "payments-prod")
    names = naming.names_for(cid, "kip-", "/kip/", legacy=True)
    key = f"arn:aws:kms:{SAMPLE_REGION}:{SAMPLE_ACCOUNT}:key/1234abcd-12ab-34cd-56ef-1234567890ab"
    senders = [names.rule_arn] + list(names.rule_arns.values())
    return {
        "generated:controller_policy": policies.controller_policy(names.queue_arn),
        "generated:controller_policy(kms)": policies.controller_policy(names.queue_arn, key),
        "generated:queue_policy": policies.queue_policy(names.queue_arn, senders, cid.partition),
        "generated:dlq_policy": policies.dlq_policy(names.dlq_arn),
    }


def policy_documents(templates: Iterable[Path] = ()) -> dict:
    docs = {_relative(p): json.loads(p.read_text())
            for p in sorted((ROOT / ".chalice").glob("policy-*.json"))}
    for template in templates:
        docs.update(template_policies(Path(template)))
    docs.update(generated_policies())
    return docs


def _parliament_what(finding) -> str:
    location = {k: v for k, v in (finding.location or {}).items()
                if k not in ("line", "column", "filepath")}
    for value in location.values():
        if isinstance(value, list):
            value.sort(key=str)
    return json.dumps({"detail": finding.detail or None, **location}, sort_keys=True,
                      default=str)


def _parliament_titles() -> dict:
    import parliament

    titles = {}
    for path in (Path(parliament.__file__).parent / "config.yaml",
                 Path(parliament.__file__).parent / "community_auditors" / "config_override.yaml"):
        for issue, spec in (yaml.safe_load(path.read_text()) or {}).items():
            if isinstance(spec, dict):
                titles[issue] = f"{spec.get('severity', '?')}: {spec.get('title', issue)}"
    return titles


def run_parliament(documents: dict) -> list:
    from parliament import analyze_policy_string

    titles, findings = _parliament_titles(), []
    for name, document in sorted(documents.items()):
        policy = analyze_policy_string(json.dumps(document, indent=1),
                                       include_community_auditors=True)
        for finding in policy.findings:
            findings.append(Finding(finding.issue, name, _parliament_what(finding),
                                    titles.get(finding.issue, "")))
    return findings


def deploy_templates() -> list:
    return sorted((ROOT / "deploy").glob("*.yaml"))


# ------------------------------------------------------------------------------------ command

def main(argv: list) -> int:
    scanner = argv[0] if argv else ""
    templates = [Path(p) for p in argv[1:]] or deploy_templates()
    if scanner == "checkov":
        found, scanned = run_checkov(templates)
    elif scanner == "bandit":
        found, scanned = run_bandit(), None
    elif scanner == "parliament":
        found, scanned = run_parliament(policy_documents(templates)), None
    else:
        print("usage: python -m tests.support.scanners [checkov|bandit|parliament] [template ...]")
        return 2
    result = compare(found, load_baseline(scanner), scanned)
    print(json.dumps([f.entry() for f in found], indent=2))
    print(result.report(scanner) or f"{scanner}: {len(found)} finding(s), all in the baseline",
          file=sys.stderr)
    return 0 if result.clean else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

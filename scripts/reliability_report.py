"""Run the reliability suite (tests/reliability) and write docs/RELIABILITY.md from its results.

    .venv/bin/python scripts/reliability_report.py                # 2 pytest-xdist workers
    .venv/bin/python scripts/reliability_report.py --workers 1    # serial
    .venv/bin/python scripts/reliability_report.py --results FILE # re-render a previous run

The suite writes one JSON line per test (tests/reliability/conftest.py, KIP_RELIABILITY_RESULTS):
its outcome, its duration and what it recorded with ``record_property`` (the matrix cell, the race
answers, the fuzz counts, the least-privilege check). Every figure in the document comes from those
lines; the prose around them is fixed. A finding is listed only while its test fails.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import pathlib
import platform
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from typing import Any, Optional

ROOT = pathlib.Path(__file__).resolve().parents[1]
COMMAND = ".venv/bin/python scripts/reliability_report.py"
FAULTS = [("throttle", "throttle"), ("server_error", "5xx"), ("timeout", "timeout"),
          ("hard", "hard (403)"), ("crash", "crash"), ("lost_response", "lost response")]
PHASES = ("provision", "reconcile", "teardown")

# A failing test matching ``match`` is explained by this finding. Listed only while it fails.
FINDINGS = [
    {
        "id": "F1",
        "match": r"lost_response.*dynamodb:(PutItem|DeleteItem)",
        "title": "A lost answer to a lease or record write is reported as a conflict with itself",
        "where": "chalicelib/aws/registry.py (Registry.acquire, save, delete)",
        "cause": "botocore retries a DynamoDB PutItem/DeleteItem whose first attempt was applied "
                 "but whose answer was lost (read timeout). The retry's condition now fails "
                 "against the run's own write: `acquire` raises ProvisioningInProgress (409) and "
                 "the run locks the cluster for `lease_seconds` with its own lease; `save` raises"
                 " StaleRecord (409) after a fully successful run; `delete` raises StaleRecord "
                 "after a successful teardown.",
        "fix": "On ConditionFailed, look at the returned item "
               "(ReturnValuesOnConditionCheckFailure = ALL_OLD is already requested): in "
               "`acquire`, if `item.lease_owner == owner` and `item.version == new version`, the "
               "write landed: return it. In `save`, if `item.version == record.version + 1` and "
               "it equals what was written, return it. In `delete`, a missing item (`lost.item is"
               " None`) after our conditional delete means it is gone: treat as done, like the "
               "GONE codes.",
    },
    {
        "id": "F2",
        "match": r"lost_response.*iam:CreatePolicy\]",
        "title": "A lost answer to iam:CreatePolicy becomes a 502 and the record says the policy "
                 "does not exist",
        "where": "chalicelib/aws/target.py (Target.create_policy)",
        "cause": "botocore retries CreatePolicy after a timeout; the first attempt created the "
                 "policy, so the retry gets EntityAlreadyExists and the run fails at step "
                 "policy.create with resources.policy.exists = false, although the (tagged) "
                 "policy exists. The next run adopts it, so nothing is orphaned, but a transient "
                 "timeout surfaced as a hard failure and the record was wrong in between.",
        "fix": "In `create_policy`, on EntityAlreadyExists read the policy (GetPolicy on the "
               "computed ARN); if `naming.is_owned(tags, cid)` return its ARN and default version"
               " (it is ours, created by the lost attempt), else raise ResourceNotOwned.",
    },
    {
        "id": "F3",
        "match": r"lost_response.*iam:CreatePolicyVersion",
        "title": "A lost answer to iam:CreatePolicyVersion leaves an extra policy version",
        "where": "chalicelib/aws/target.py (Target.create_policy_version)",
        "cause": "The retried CreatePolicyVersion creates a second identical version (v4 after "
                 "v3). The state then differs from a clean run (one more version, default v4); "
                 "IAM keeps at most 5 versions and the planner prunes non-default versions only "
                 "before the next change, so at most one extra survives. Low severity.",
        "fix": "After `policy.version`, prune non-default versions whose document equals the new "
               "default (an action that depends on policy.version), or compare the new default's "
               "document with older versions on the next reconcile and prune duplicates.",
    },
    {
        "id": "F4",
        "match": r"test_failed_teardown_record_lists_what_still_exists",
        "title": "After a failed teardown the record's resources.*.exists still claims deleted "
                 "resources exist",
        "where": "chalicelib/usecases/teardown.py (_remove, failure branch)",
        "cause": "The failure record is the lease copy of the old record plus `removed`; "
                 "`resources` is not updated, so it says the queue, rules and attachment exist "
                 "after they were deleted (provisioning failures update it correctly).",
        "fix": "In the failure branch, set `rec['resources']` from the observation and `done` "
               "(exists = observed and not deleted), e.g. by reusing `_resources()` with the "
               "delete action ids, as provision does.",
    },
    {
        "id": "F5",
        "match": r"test_reconcile_after_a_crashed_teardown",
        "title": "Reconciling a cluster whose teardown crashed provisions it again",
        "where": "chalicelib/usecases/clusters.py (reconcile)",
        "cause": "A DELETE that died part way leaves status 'deleting'. The scheduled sweep "
                 "finishes it with `teardown`, but `clusters.reconcile` (POST "
                 "/clusters/{name}/reconcile) calls `provision` and re-creates everything, "
                 "reversing the delete.",
        "fix": "In `clusters.reconcile`, when `rec.status == 'deleting'`, finish the teardown "
               "(`teardown.teardown(kit, cid, 'reconcile')`, as the sweep does) or refuse with "
               "409 saying a delete is pending.",
    },
    {
        "id": "F6",
        "match": r"deeply-nested",
        "title": "Deeply nested JSON is a 500",
        "where": "app.py (_json_body) and chalicelib/aws/registry.py (Registry.page, next_token)",
        "cause": "`json.loads` raises RecursionError (not ValueError) for ~1000+ nested arrays, "
                 "well inside the 64 KB body limit and inside a URL for next_token; it reaches "
                 "the catch-all and answers 500 InternalError.",
        "fix": "Catch RecursionError with ValueError in `_json_body` and in `Registry.page` "
               "(answer 400 naming `body` / `next_token`).",
    },
    {
        "id": "F7",
        "match": r"limit-superscript",
        "title": "GET /clusters?limit=² is a 500",
        "where": "app.py (list_clusters)",
        "cause": "`'²'.isdigit()` is True but `int('²')` raises ValueError, which reaches the "
                 "catch-all (500).",
        "fix": "Validate with `re.fullmatch(r'[0-9]{1,3}', raw_limit)` (or `isdecimal()` and "
               "`isascii()`) before `int()`.",
    },
    {
        "id": "F8",
        "match": r"arabic-digits|trailing-newline|decoded_path_parameters.*\\n",
        "title": "Non-ASCII digits and a trailing newline pass identity validation",
        "where": "chalicelib/core/naming.py (ACCOUNT_RE, REGION_RE, CLUSTER_NAME_RE), "
                 "chalicelib/core/spec.py (validate_identity, ClusterRequest.account_id)",
        "cause": "`\\d` matches any Unicode decimal digit (Python `re` and pydantic's regex "
                 "alike), and Python's `$` with `re.match` also matches before a trailing "
                 "newline. An account_id of Arabic-Indic digits is accepted in a POST body: "
                 "provisioning starts, then fails half way with 502 (SQS/IAM reject ARNs built "
                 "from it) after creating resources. account_id/region query values and a decoded"
                 " path cluster_name ending in a newline are accepted (404 instead of 400); "
                 "DELETE with region 'eu-west-1\\n' is a 500 (botocore raises InvalidRegionError "
                 "while creating the client, outside any error translation).",
        "fix": "Use `[0-9]` instead of `\\d`, and `re.fullmatch` (or `\\Z`) instead of `$` with "
               "`re.match`, in ACCOUNT_RE/REGION_RE/CLUSTER_NAME_RE and the pydantic patterns.",
    },
    {
        "id": "F9",
        "match": r"region-well-formed-but-unknown|test_fuzz_the_live_api",
        "title": "A well-formed but unknown region is a 5xx",
        "where": "chalicelib/usecases/skeleton.py (identity) with chalicelib/aws/clients.py (available_regions)",
        "cause": "The region is checked only for its shape (`xx-name-N`), so `zz-nowhere-9` "
                 "reaches AWS calls: against AWS the endpoint does not resolve "
                 "(EndpointConnectionError, retried, then 503 Throttled); on the moto server 500 "
                 "-> 503; in-process moto an unhandled error (500). The fuzzer finds it within a "
                 "few hundred requests.",
        "fix": "Validate the region against botocore's partition data (e.g. "
               "`boto3.session.Session().get_available_regions('sqs', partition_name=...)`, which"
               " includes opt-in regions) and answer 400 naming `region`.",
    },
    {
        "id": "F10",
        "match": r"truncated_form",
        "title": "A short cluster name equal to a long name's truncated form cannot be "
                 "provisioned",
        "where": "chalicelib/core/naming.py (fit)",
        "cause": "Truncated names are `<prefix><first chars>-<10 hex of sha256>`; a 55-character "
                 "cluster named exactly that (a valid EKS name) gets the same rule name as the "
                 "100-character cluster, so the second one is refused with 409 ResourceNotOwned. "
                 "Isolation holds (nothing is touched); availability is lost. Low severity: it "
                 "needs a crafted cluster name in the same account and region.",
        "fix": "Give truncated names a marker an untruncated name cannot produce, as the DLQ now "
               "does: no cluster name starts with '_', so e.g. `<prefix>__<cut>-<hash>` for "
               "truncated queue/rule names (the DLQ's `<prefix>_<alnum>` cannot collide with it)."
               " Existing clusters keep their recorded names.",
    },
]


# ----------------------------------------------------------------------------- run

# AWS behaviours moto does not model: (behaviour, AWS source, what kip does, the test). Each test
# reproduces the behaviour in the service's wire protocol (botocore before-send hooks) or, where
# moto models the data but not the consequence, checks kip's own evaluation.
MOTO_GAPS = [
    ("Organizations ListAccounts answers an account's life cycle in `State` (Status retired "
     "2026-09-09); moto sends only `Status`",
     "Organizations API Reference, ListAccounts / Account",
     "reads `State`, then `Status`; only ACTIVE accounts are discovered",
     "tests/aws/test_organization_reach.py::test_with_only_an_org_id_the_sweep_discovers_accounts_"
     "with_list_accounts"),
    ("An EKS cluster can turn Auto Mode on after kip took it on (moto drops computeConfig)",
     "EKS User Guide, Migrate from Karpenter to EKS Auto Mode",
     "new provisioning is refused (409); UpdateClusterConfig turning Auto Mode on (and the sweep, "
     "for a missed event) retires kip's wiring through the verified, budgeted teardown once "
     "DescribeCluster confirms it; the record says handler auto-mode",
     "tests/aws/test_organization_reach.py::test_an_update_cluster_config_turning_auto_mode_on_"
     "retires_kips_wiring, ::test_a_managed_cluster_that_turns_on_auto_mode_has_kips_wiring_"
     "retired"),
    ("API Gateway answers a Lambda authorizer that raises (not 'Unauthorized') with 500 "
     "AUTHORIZER_CONFIGURATION_ERROR; chalice local and moto have no gateway",
     "API Gateway Developer Guide, Gateway response types",
     "gateway responses AUTHORIZER_CONFIGURATION_ERROR / AUTHORIZER_FAILURE: 503 AuthUnavailable "
     "with Retry-After",
     "tests/unit/test_deploy.py::test_an_authorizer_failure_is_a_503_auth_unavailable_with_retry_"
     "after"),
    ("A role's ARN includes its IAM path; policies must match it",
     "IAM User Guide, IAM identifiers (paths)",
     "resolves the role with iam:GetRole, records the real ARN; wrong-path ARN is a 400; the "
     "Lambda policy covers `role/*/KarpenterController-*`",
     "tests/aws/test_aws_fidelity.py::test_a_role_under_a_path_is_resolved_and_recorded_with_its_"
     "real_arn, ::test_a_role_arn_with_the_wrong_path_is_refused_before_any_write"),
    ("IAM eventual consistency: a new policy is not attachable for seconds (NoSuchEntity); "
     "GetPolicy lags after EntityAlreadyExists",
     "IAM User Guide, Troubleshooting: changes that I make are not always immediately visible",
     "bounded pauses within the run (KIP_SETTLE_SECONDS, 6 s); never ready before attached",
     "test_attach_right_after_create_policy_waits_for_iam, "
     "test_never_ready_before_the_attachment_exists, "
     "test_get_policy_lagging_after_entity_already_exists_is_waited_for"),
    ("SQS: a redrive policy naming a just-created DLQ fails (Dead letter target does not exist)",
     "SQS Developer Guide, dead-letter queues; CreateQueue API reference",
     "retried within the request", "test_redrive_to_a_just_created_dlq_is_retried_within_the_"
     "request"),
    ("SQS: same-name CreateQueue within 60 s of DeleteQueue: QueueDeletedRecently",
     "SQS CreateQueue API reference", "503 with Retry-After: 60",
     "test_queue_deleted_recently_is_503_with_retry_after"),
    ("EventBridge silently drops events to an SSE-KMS queue whose key policy lacks "
     "events.amazonaws.com GenerateDataKey + Decrypt (moto does not model service principals in "
     "key policies: it delivers anyway, and applies a key policy's Deny to every caller)",
     "SQS Developer Guide, key management: compatibility between AWS event sources and encrypted "
     "queues; EventBridge User Guide, authorizing EventBridge to use a customer managed key "
     "(symmetric key); KMS GetKeyPolicy API reference (key id or ARN only, PolicyName default)",
     "reads DescribeKey and GetKeyPolicy in the first wave; a disabled, pending-deletion, "
     "non-symmetric or non-ENCRYPT_DECRYPT key, or a policy that does not allow "
     "events.amazonaws.com both actions (or explicitly denies them) is a 400 on kms_key_id before "
     "any write, naming the key, what is missing and the statement to add; an AccessDenied "
     "GetKeyPolicy is a 400 naming kms:GetKeyPolicy (never assumed right); never edits the key "
     "policy",
     "tests/aws/test_kms_keys.py, tests/unit/test_kms.py, tests/reliability/test_faults.py "
     "(hard kms:GetKeyPolicy)"),
    ("EventBridge PutRule ignores Tags on an existing rule", "EventBridge PutRule API reference",
     "TagResource whenever tags differ", "test_changed_tags_reach_existing_rules_through_tag_"
     "resource"),
    ("EventBridge RemoveTargets/PutTargets/PutEvents report per-entry failures with HTTP 200",
     "EventBridge API reference (FailedEntryCount)", "a failed entry fails the call",
     "test_remove_targets_per_entry_failure_is_a_failure"),
    ("A full quota (LimitExceededException) is retried by botocore as throttling (~70 s)",
     "EventBridge quotas; botocore retries/standard.py", "final at once: 409 QuotaExceeded "
     "naming the quota and its Service Quotas code", "test_a_full_rule_quota_is_final_at_once_"
     "and_names_the_quota"),
    ("DeletePolicy fails (DeleteConflict) while the policy is attached to any user or group",
     "IAM DeletePolicy API reference", "detaches from every role, user and group first",
     "test_teardown_detaches_the_policy_from_users_and_groups_too"),
    ("IAM tag keys are case-insensitive: Team and team pass SQS and EventBridge, then "
     "iam:CreatePolicy refuses them after the queues and rules exist",
     "IAM User Guide, tagging IAM resources: rules for tagging, case sensitivity; AWS tagging "
     "rules (50 tags per resource, keys 1-128, values 0-256)",
     "keys differing only in case (from each other or from KIP_DEFAULT_TAGS keys) and more than "
     "50 tags per resource with kip's own are a 400 on tags before any AWS call",
     "tests/unit/test_spec.py (test_tag_keys_*, test_more_than_50_tags_*), "
     "tests/aws/test_tags_validation.py"),
    ("EventBridge allows 300 rules per bus per region (100 in af-south-1, eu-south-1), shared "
     "with the account", "EventBridge quotas; Service Quotas L-244521F2",
     "one rule per cluster; before creating it, counts the bus's rules (ListRules) against "
     "Service Quotas / KIP_RULE_QUOTA keeping KIP_RULE_RESERVE free: 409 RuleQuotaExceeded",
     "tests/aws/test_rule_quota.py"),
    ("SQS attribute changes (the queue policy) take up to 60 s to apply everywhere",
     "SQS SetQueueAttributes API reference",
     "a five-rule cluster's old rules are removed only 60 s after the policy allowed the new "
     "one, then the policy is narrowed", "tests/aws/test_rule_migration.py"),
    ("organizations:DescribeAccount answers only in the management or a delegated-admin account; "
     "non-members are AccountNotFoundException", "Organizations DescribeAccount API reference",
     "refusal is 403 saying where kip must run; never allowed by default; answers cached",
     "tests/aws/test_organization_reach.py::test_org_check_that_organizations_refuses_is_403_"
     "never_allowed, ::test_org_id_membership_is_checked_with_describe_account_and_cached"),
    ("EKS Auto Mode clusters report computeConfig.enabled (moto drops it)",
     "EKS DescribeCluster API reference (ComputeConfigResponse)",
     "409 AutoModeCluster; skipped by the trigger and backfill",
     "test_auto_mode_cluster_is_409_and_skipped_by_trigger_and_backfill"),
    ("GetMetricData has no resource type; AccessDenied or throttling on it",
     "Service Authorization Reference, CloudWatch; CloudWatch common errors",
     "Resource '*' for that one read; the consumer is 'unknown', GET stays 200",
     "tests/aws/test_consumer_health.py"),
    ("PutMetricAlarm ignores Tags on update; DeleteAlarms fails whole on one bad name",
     "PutMetricAlarm / DeleteAlarms API references",
     "TagResource separately; one name per DeleteAlarms, ResourceNotFound is gone",
     "tests/aws/test_alarms.py"),
    ("IAM CloudTrail events reach EventBridge only in us-east-1; failed calls are recorded too",
     "CloudTrail User Guide, global service events; record contents (errorCode)",
     "the drift trigger reads the region from the policy name; failed calls are ignored",
     "tests/aws/test_drift.py"),
    ("SendMessageBatch reports per-entry failures with HTTP 200; an SQS event source without "
     "ReportBatchItemFailures redelivers the whole batch",
     "SQS SendMessageBatch API reference; Lambda with SQS, partial batch responses",
     "refused entries resent (3x); the worker returns only retryable ids; "
     "FunctionResponseTypes patched into the template", "tests/aws/test_sweep_fanout.py"),
    ("SQS attribute changes show up to 60 s later (retention up to 15 min)",
     "SQS SetQueueAttributes API reference",
     "the record keeps what kip set lately (settling); within the window an old value is not "
     "drift and is not written again", "tests/aws/test_attribute_lag.py"),
    ("Lambda drops an async event after 2 retries unless it has an on-failure destination; "
     "EventBridge drops one it cannot deliver unless the target has a DLQ",
     "Lambda asynchronous invocation (destinations); EventBridge target DeadLetterConfig",
     "EventInvokeConfig on-failure goes to kip_failed-events-<stage> (the schedule replays it; "
     "after 5 receives a human gets it); the rule target's DLQ is its -dlq, for a human",
     "tests/aws/test_failed_events.py"),
    ("API Gateway cuts every integration at 29 s; botocore's deployed retries (adaptive, 8) "
     "take longer when throttled", "API Gateway quotas; botocore retries",
     "within an API request: 3 attempts per call, no attempt after 12 s (record writes "
     "excepted), 503 + Retry-After, lease released",
     "test_a_throttled_api_request_stops_retrying_early_and_releases_the_lease"),
    ("A cluster deleted while its DeleteCluster event was missed", "EventBridge delivery "
     "(at least once, may be lost when the target fails)",
     "the sweep notes it missing, tears it down after KIP_ORPHAN_GRACE_MINUTES",
     "tests/aws/test_orphans.py"),
    ('moto evaluates no resource-based policy: its IAM authorization mode reads identity policies only, so a queue policy that alone grants a role (same account, no identity policy) cannot be shown in moto',
     'SQS Developer Guide, using identity-based and resource-based policies (within one account a queue policy can grant alone); IAM User Guide, aws:PrincipalArn',
     "KIP_GRANT_MODE=queue-policy: the queue policy allows exactly the controller role by aws:PrincipalArn; the test judges the role's own SQS calls in a before-send hook (SQS wire protocol) from the queue policy kip wrote: its own queue allowed, another cluster's refused",
     'tests/aws/test_grant_mode.py'),
    ('CloudTrail delivers EKS events late (hours), twice or replayed; a DeleteCluster can arrive after the cluster was re-created under the same name and ARN (moto delivers nothing on its own)',
     'CloudTrail User Guide, CloudTrail events and EventBridge (best effort); EKS DescribeCluster API reference (createdAt)',
     'a DeleteCluster acts only when DescribeCluster answers not found or DELETING and the event is about the recorded generation (createdAt, eventTime); else answered live/stale, nothing removed; envelope account must equal recipientAccountId; automatic teardowns past KIP_TEARDOWN_BUDGET per hour are held',
     'tests/aws/test_verified_teardown.py, tests/aws/test_teardown_brake.py'),
    ("Lambda sends an on-failure record with the function's execution role; an EventBridge target DLQ message is the bare event body, which any principal allowed to SendMessage can also write (moto enforces no queue policy)",
     'Lambda Developer Guide, asynchronous invocation destinations (execution role permissions); EventBridge User Guide, dead-letter queues',
     "the replay runs only Lambda's failure records naming kip's trigger function in kip's account and region; the failed-events queue policy denies SendMessage to every principal but the trigger's role; kip's roles lose sqs:SendMessage on it; EventBridge dead letters go to the -dlq for a human",
     'tests/aws/test_failed_events.py::test_a_message_that_is_not_lambdas_failure_record_of_the_trigger_changes_nothing, tests/unit/test_deploy.py::test_packaged_failed_events_queue_takes_only_the_triggers_failure_records'),
    ("STS AssumeRole is refused (AccessDenied) when the member's kip role is missing or its trust changed; moto's STS never refuses",
     'STS AssumeRole API reference (errors)',
     "the sweep marks the account's records unreachable (last_error names the call) and tries again an hour later, not on every pass",
     'tests/aws/test_blocked.py::test_an_account_whose_kip_role_refuses_assume_role_is_unreachable_not_retried_hot'),
    ("EKS Pod Identity: ListPodIdentityAssociations (summaries without roleArn) and DescribePodIdentityAssociation; moto answers 404 'Not yet implemented'",
     'EKS API reference, ListPodIdentityAssociations / DescribePodIdentityAssociation (rest-json GET /clusters/{name}/pod-identity-associations)',
     'with no controller_role in the request, the role of the association for KIP_KARPENTER_SERVICE_ACCOUNTS (kube-system/karpenter, karpenter/karpenter) is the controller role (role_source pod-identity), whatever its name; tests/support/pod_identity.py answers both calls in rest-json',
     'tests/aws/test_brownfield.py::test_an_eksctl_pod_identity_role_is_found_and_wired'),
    ('Each EKS cluster has its own OIDC issuer (identity.oidc.issuer), which is what an IRSA trust names; moto gives every cluster the same one',
     'EKS User Guide, create an IAM OIDC provider for your cluster; IAM roles for service accounts (trust policy :sub / :aud)',
     "an IRSA role is one whose trust allows AssumeRoleWithWebIdentity from this cluster's provider for Karpenter's service account (StringEquals over StringLike; :aud optional); the test world and the local stack's moto server give each cluster its own issuer",
     'tests/aws/test_brownfield.py::test_a_terraform_irsa_role_is_found_by_its_trust_not_its_name'),
    ('IAM attaches at most 10 managed policies per role by default (20 at most; GetAccountSummary AttachedPoliciesPerRoleQuota); moto attaches any number',
     'IAM User Guide, IAM and AWS STS quotas; IAM GetAccountSummary API reference',
     'before anything is created, a role already holding its quota is refused: 409 RolePolicyQuotaExceeded naming the quota; automatic paths record the cluster blocked',
     'tests/aws/test_brownfield.py::test_a_role_holding_the_quota_of_managed_policies_is_refused_before_anything_exists'),
    ("SQS counts every ReceiveMessage call in CloudWatch (AWS/SQS NumberOfMessagesReceived, NumberOfEmptyReceives by QueueName; a long-polling consumer makes them every minute) and publishes nothing for a queue nobody touches that holds nothing; moto publishes no AWS/SQS metric at all",
     'SQS Developer Guide, available CloudWatch metrics for Amazon SQS (metrics only for active queues); ReceiveMessage API reference (WaitTimeSeconds)',
     "a takeover's cutover is switched once kip's queue had receive calls and the other tool's had none over KIP_CUTOVER_WINDOW_MINUTES (no datapoint: no reads); until then kip's queue keeps 300 s of messages; GetMetricData refused: the state stays, logged; the tests publish the metrics with PutMetricData as SQS would",
     'tests/aws/test_brownfield.py::test_the_cutover_waits_while_karpenter_reads_the_old_queue_and_ends_with_the_old_rules, ::test_takeover_reaches_switched_from_metrics_and_never_touches_the_other_tool'),
    ("Reading another tool's queue (GetQueueAttributes for its health) and the rules on it (ListRuleNamesByTarget) needs IAM on that queue; a member stack deployed before this change refuses with AccessDenied, which moto without IAM mode never does",
     'SQS GetQueueAttributes / EventBridge ListRuleNamesByTarget API references (errors); Service Authorization Reference, Amazon SQS (queue resource)',
     "the external cluster's health keeps null counts (logged, GET stays 200); the cutover keeps old_queue_still_fed as it was; policy files and member.yaml grant sqs:GetQueueAttributes on other queues read-only",
     'tests/aws/test_brownfield.py::test_the_health_of_an_external_queue_is_read_the_same_way_as_kips, ::test_the_cutover_waits_while_karpenter_reads_the_old_queue_and_ends_with_the_old_rules'),
]


def run_suite(workers: int, results: pathlib.Path, extra: list[str]) -> dict:
    cmd = [sys.executable, "-m", "pytest", "tests/reliability", "-q", "-p", "no:cacheprovider",
           "-o", "addopts="]
    if workers > 1:
        cmd += ["-n", str(workers)]
    cmd += extra
    env = {**os.environ, "KIP_RELIABILITY_RESULTS": str(results)}
    started = time.monotonic()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    seconds = time.monotonic() - started
    summary = ""
    for line in reversed(proc.stdout.splitlines()):
        if re.search(r"\d+ (passed|failed)", line):
            summary = line.strip("= ").strip()
            break
    return {"command": " ".join(["python"] + cmd[1:]), "exit_code": proc.returncode,
            "seconds": round(seconds, 1), "summary": summary, "workers": workers,
            "stdout_tail": proc.stdout[-3000:] if proc.returncode not in (0, 1) else ""}


def load(results: pathlib.Path) -> list[dict]:
    rows = []
    for line in results.read_text(encoding="utf-8").splitlines():
        if line.strip():
            rows.append(json.loads(line))
    return rows


def git_revision() -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True,
                             capture_output=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "chalicelib", "app.py"],
                               cwd=ROOT, text=True, capture_output=True).stdout.strip()
        return sha + (" + uncommitted changes in chalicelib/app.py" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def versions() -> str:
    from importlib.metadata import version
    out = [f"Python {platform.python_version()}"]
    for pkg in ("botocore", "moto", "chalice", "schemathesis", "hypothesis", "pytest"):
        try:
            out.append(f"{pkg} {version(pkg)}")
        except Exception:  # noqa: BLE001
            pass
    return ", ".join(out)


# ----------------------------------------------------------------------------- render

def _name(row: dict) -> str:
    return row["nodeid"].split("::", 1)[-1]


def _md(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _mark(row: dict) -> str:
    return "✅" if row["outcome"] == "passed" else "❌"


def render(rows: list[dict], meta: dict) -> str:
    calls = [r for r in rows if r["when"] == "call" or (r["outcome"] != "passed"
                                                        and r["when"] != "teardown")
             or (r["when"] == "teardown" and r["outcome"] == "failed")]
    outcomes = Counter(r["outcome"] for r in calls)
    failed = [r for r in calls if r["outcome"] == "failed"]
    out: list[str] = []
    w = out.append

    w("# Reliability and security report")
    w("")
    w(f"Generated by `{COMMAND}` on {meta['date']} (commit {meta['revision']}). "
      "Every number below comes from that run; to refresh it, run the command again.")
    w("")
    w(f"* Suite: `{meta['run'].get('command', 'pytest tests/reliability')}` "
      f"({meta['run'].get('workers', '?')} worker(s)), wall time "
      f"**{meta['run'].get('seconds', '?')} s**; pytest says: `{meta['run'].get('summary', '')}`.")
    w(f"* Tests: **{len(calls)}** — {outcomes.get('passed', 0)} passed, "
      f"{outcomes.get('failed', 0)} failed, {outcomes.get('skipped', 0)} skipped. Nothing is "
      "marked xfail: a failing test is a product bug, explained under Findings.")
    w(f"* Environment: {meta['versions']}; moto in-process for the fault matrix, moto server + "
      "`chalice local` on 127.0.0.1 for races and fuzzing.")
    backoff = [r["props"]["backoff"] for r in rows
               if r["when"] == "teardown" and "backoff" in r.get("props", {})]
    if backoff:
        w(f"* Retries: botocore standard mode, max_attempts 3 (the matrix), lease 60 s. botocore "
          f"computed {sum(b['retries'] for b in backoff)} backoff delays totalling "
          f"{sum(b['seconds'] for b in backoff):.1f} s; the suite slept 1/1000 of each "
          "(tests/reliability/conftest.py patches botocore's ExponentialBackoff.delay_amount, the "
          "library, not our code).")
    w("")

    # -- headline
    matrix = [r for r in calls if "matrix" in r.get("props", {})]
    fuzz = next((r for r in calls if "fuzz" in r.get("props", {})), None)
    races = sorted((r for r in calls if "race" in r.get("props", {})),
                   key=lambda r: r["props"]["race"]["race"])
    hostile = [r for r in calls if "hostile" in r.get("props", {})]
    lp = [r for r in calls if "least_privilege" in r.get("props", {})]
    w("## Headline")
    w("")
    by_fault = defaultdict(Counter)
    for r in matrix:
        by_fault[r["props"]["matrix"]["fault"]][r["outcome"]] += 1
    distinct = {(r["props"]["matrix"]["phase"], r["props"]["matrix"]["call"]) for r in matrix}
    w(f"* Fault matrix: {len(distinct)} (phase, AWS call) pairs, enumerated automatically, x "
      f"{len(FAULTS)} fault classes = {len(matrix)} cases: " + "; ".join(
          f"{label} {by_fault[k]['passed']}/{sum(by_fault[k].values())} ok"
          for k, label in FAULTS if by_fault[k]) + ".")
    w(f"* Races: {sum(1 for r in races if r['outcome'] == 'passed')}/{len(races)} ok.")
    if fuzz:
        f = fuzz["props"]["fuzz"]
        five = sum(v for k, v in f["statuses"].items() if int(k) >= 500)
        w(f"* Fuzzing (schemathesis from GET /openapi.json, live chalice local): "
          f"**{f['requests']} requests**, status codes "
          + ", ".join(f"{k}: {v}" for k, v in f["statuses"].items())
          + f"; **{five} x 5xx**, {f['problem_count']} answers outside the contract.")
    hs = Counter(r["props"]["hostile"]["status"] for r in hostile)
    w(f"* Named hostile inputs: {len(hostile)} requests, "
      f"{sum(1 for r in hostile if r['outcome'] == 'passed')} refused correctly; status codes "
      + ", ".join(f"{k}: {v}" for k, v in sorted(hs.items())) + ".")
    w(f"* Least privilege and isolation: {sum(1 for r in lp if r['outcome'] == 'passed')}/"
      f"{len(lp)} checks ok.")
    active = _active_findings(failed)
    w(f"* Product bugs found (failing tests): **{len(active)}**"
      + (" — " + "; ".join(f"{f['id']}: {f['title']}" for f, _ in active) if active
         else "") + ".")
    w("")

    w("## AWS behaviours moto does not model")
    w("")
    w("| behaviour | AWS source | what kip does | the test |")
    w("|---|---|---|---|")
    for row in MOTO_GAPS:
        w("| " + " | ".join(_md(cell) for cell in row) + " |")
    w("")

    # -- matrix
    w("## Fault matrix")
    w("")
    w("Every AWS call made by a clean provision, a reconcile that repairs drift (a deleted rule, "
      "a changed queue attribute, a removed tag, a widened controller policy, a detached role) "
      "and a teardown is enumerated by running them with a recording hook (`before-call.*.*`); "
      "each (phase, call) is then run once per fault class, in a fresh moto world, for the "
      "cluster `payments-prod` with a customer KMS key:")
    w("")
    w("* **throttle / 5xx / timeout** — each call of that kind fails twice (max_attempts − 1: "
      "400 `ThrottlingException`/`Throttling`/`ProvisionedThroughputExceededException` in the "
      "service's protocol; 500 then 503; `ReadTimeoutError`), then passes through. Expected: "
      "botocore retries, the run succeeds, our code issues exactly the calls of a clean run, the "
      "state equals the clean run's, teardown leaves nothing.")
    w("* **hard (403)** — every attempt gets `AccessDenied`. Expected: `AwsCallFailed` "
      "(HTTP 502) naming the call; if the plan was executing, the record is `failed` (a teardown: "
      "still `deleting`, so a retry, reconcile or the schedule finishes it) with "
      "`last_error.step`/`call` and `resources.*.exists` matching reality; no lease left "
      "behind (except when the record write itself failed); the next run converges to the "
      "clean state; teardown leaves nothing.")
    w("* **crash** — `Crash(BaseException)` raised just before the call (and every later call of "
      "that process). Expected: no resources without a record; a live lease is respected (409) "
      "until it expires; after it expires, the scheduled reconcile (`usecases.sweep`) and, where "
      "the crash preceded the lease, the caller's retry converge to the clean state.")
    w("* **lost response** (writes only) — the first attempt reaches AWS and is applied, then "
      "the answer is lost (`ReadTimeoutError`) and botocore retries. Expected: absorbed like any "
      "timeout.")
    w("")
    cells: dict = defaultdict(dict)
    ncalls: dict = {}
    for r in matrix:
        m = r["props"]["matrix"]
        key = (m["phase"], m["call"])
        ncalls[key] = m.get("calls", "")
        text = m.get("cell") or ""
        if r["outcome"] == "passed":
            cells[key][m["fault"]] = f"✅ {text}"
        else:
            cells[key][m["fault"]] = "❌ " + (text if text and text != "not finished"
                                              else _short_failure(r)[:100])
    for phase in PHASES:
        keys = [k for k in cells if k[0] == phase]
        if not keys:
            continue
        w(f"### {phase} ({len(keys)} distinct calls)")
        w("")
        w("| AWS call | calls | " + " | ".join(label for _, label in FAULTS) + " |")
        w("|---|---|" + "---|" * len(FAULTS))
        for key in sorted(keys, key=lambda k: k[1]):
            row = [f"`{key[1]}`", str(ncalls.get(key, ""))]
            row += [_md(cells[key].get(f, "—")) for f, _ in FAULTS]
            w("| " + " | ".join(row) + " |")
        w("")
    w("<details><summary>Outcome of every hard-failure and crash case</summary>")
    w("")
    for r in sorted(matrix, key=lambda r: (r["props"]["matrix"]["phase"],
                                           r["props"]["matrix"]["call"])):
        m = r["props"]["matrix"]
        if m["fault"] in ("hard", "crash"):
            w(f"* {_mark(r)} {m['phase']} / `{m['call']}` / {m['fault']}: {_md(m['outcome'])}")
    w("")
    w("</details>")
    w("")
    focused = [r for r in calls if r["nodeid"].startswith("tests/reliability/test_faults.py")
               and "matrix" not in r.get("props", {})]
    if focused:
        w("### Focused fault cases")
        w("")
        w("| test | result |")
        w("|---|---|")
        for r in focused:
            why = _md(_short_failure(r)) if r["outcome"] != "passed" else ""
            w(f"| `{_name(r)}` | {_mark(r)} {why} |")
        w("")

    # -- races
    w("## Races")
    w("")
    w("Over real HTTP against `chalice local` (threaded, one shared Kit) on a moto server, "
      "connections opened first and requests written at the same instant; plus the registry's "
      "conditional writes in process.")
    w("")
    w("| race | answers | end state | result |")
    w("|---|---|---|---|")
    for r in races:
        x = r["props"]["race"]
        answers = ", ".join(f"{k}: {v}" for k, v in sorted(x.get("statuses", {}).items(),
                                                          key=lambda kv: str(kv[0])))
        w(f"| {_md(x['race'])} | {_md(answers)} | {_md(x.get('end', ''))} | {_mark(r)} |")
    w("")

    # -- hostile input
    w("## Hostile input")
    w("")
    if fuzz:
        f = fuzz["props"]["fuzz"]
        w(f"### Fuzzing: {f['requests']} generated requests")
        w("")
        w("schemathesis 4 loads the document served at `GET /openapi.json` by the live `chalice "
          "local` and generates valid (positive) and invalid (negative) requests for every "
          "operation (derandomized, so the run is repeatable). Every answer must be below 500, "
          "and every 4xx must be `{\"error\": {\"code\", \"message\", ...}}`.")
        w("")
        w("| operation | requests |")
        w("|---|---|")
        for op, n in f["operations"].items():
            w(f"| `{op}` | {n} |")
        w("")
        w("| status | count |")
        w("|---|---|")
        for k, v in f["statuses"].items():
            w(f"| {k} | {v} |")
        w("")
        if f["problems"]:
            w(f"{f['problem_count']} answers broke the contract; the first ones:")
            w("")
            for p in f["problems"][:8]:
                w(f"* `{_md(p)[:400]}`")
            w("")
    w(f"### Named cases: {len(hostile)} requests")
    w("")
    w("Malformed JSON, arrays and scalars instead of an object, a 1 MB body, deeply nested "
      "JSON, unknown fields, null everywhere, a 101-character name, names with `*`, `/`, `..`, "
      "spaces, unicode and control characters (in the body, in encoded path parameters, and "
      "decoded as API Gateway delivers them), ARNs of another partition and account, "
      "`alias/aws/sqs`, negative and oversize numbers, hostile query parameters. Each must be a "
      "4xx in the error shape and change nothing.")
    w("")
    bad = [r for r in hostile if r["outcome"] != "passed"]
    w(f"{len(hostile) - len(bad)} of {len(hostile)} refused correctly.")
    if bad:
        w("")
        w("| case | status | problem |")
        w("|---|---|---|")
        for r in bad:
            h = r["props"]["hostile"]
            w(f"| {_md(h['case'])} | {h['status']} | {_md(_short_failure(r))[:200]} |")
    w("")

    # -- least privilege
    w("## Least privilege and isolation")
    w("")
    w("Asserted on the documents stored in moto and on `.chalice/policy-<stage>.json`.")
    w("")
    w("| check | result | ok |")
    w("|---|---|---|")
    for r in lp:
        x = r["props"]["least_privilege"]
        res = x["result"] if r["outcome"] == "passed" else _short_failure(r)
        w(f"| {_md(x['check'])} | {_md(res)[:400]} | {_mark(r)} |")
    w("")

    # -- findings
    w("## Findings")
    w("")
    if not active:
        w("No test fails: no product bug is open.")
        w("")
    fixed = _fixed_findings(calls)
    if fixed:
        w("Found by this suite and fixed in the product; their tests now pass and stay as "
          "regression checks:")
        w("")
        w("| id | what was wrong | where | tests now passing |")
        w("|---|---|---|---|")
        for finding, tests in fixed:
            w(f"| {finding['id']} | {_md(finding['title'])} | {_md(finding['where'])} | "
              f"{len(tests)} |")
        w("")
    for finding, tests in active:
        w(f"### {finding['id']}. {finding['title']}")
        w("")
        w(f"* Where: {finding['where']}")
        w(f"* What happens: {finding['cause']}")
        w(f"* Suggested fix: {finding['fix']}")
        w(f"* Failing tests ({len(tests)}): " + ", ".join(f"`{_name(t)}`" for t in tests[:12])
          + (" …" if len(tests) > 12 else ""))
        w(f"* Evidence: `{_md(_short_failure(tests[0]))[:300]}`")
        w("")
    unexplained = [r for r in failed if not any(re.search(f["match"], r["nodeid"])
                                                for f in FINDINGS)]
    if unexplained:
        w("### Failures without a finding yet")
        w("")
        for r in unexplained:
            w(f"* `{_name(r)}`: {_md(_short_failure(r))[:300]}")
        w("")

    # -- method
    w("## Method and limits")
    w("")
    w("* Run the suite alone with `.venv/bin/python -m pytest tests/reliability -n 2` "
      "(pytest-xdist is in requirements-dev.txt; serial works too, about twice as long); it "
      "carries the "
      "`reliability` marker, so `-m 'not reliability'` leaves it out of the main suite, and its "
      "tests that start the local stack also carry `e2e`. Set `KIP_RELIABILITY_RESULTS=<file>` "
      "to get the JSON lines this report is built from.")
    w("* Faults enter through botocore event hooks registered with `chalicelib.aws.add_hook` "
      "(`before-parameter-build.*.*` labels a call, `before-call.*.*` records it, "
      "`before-send.*.*` answers an attempt with an `AWSResponse` in the service's wire protocol, "
      "or raises `ReadTimeoutError` / `Crash`). Nothing in `chalicelib/` or `app.py` is patched; "
      "retries are botocore's (`Settings.retry_mode`); time is moved with "
      "`make_kit(settings, clock=...)`.")
    w("* Test-only patches of libraries (tests/support/scenario.py, faults.py, world.py and tests/reliability/conftest.py): botocore's "
      "backoff sleeps 1/1000 of its computed delay; one botocore data loader per process; moto's "
      "KMS key generation and response-serializer alias lookup are memoized (speed only); two "
      "moto SQS deviations from AWS are corrected (SetQueueAttributes without `Policy` clears the "
      "policy in moto; a KMS-encrypted queue reports `SqsManagedSseEnabled: true` in moto). "
      "moto's in-process mock is itself a `before-send` handler, so the injector points a "
      "faulted attempt at an unroutable `.invalid` host to keep moto from also executing it.")
    w("* moto is not AWS: eventual consistency, IAM propagation delays, real throttling "
      "patterns and per-account limits are not modelled; fault injection runs in process only "
      "(the races and the fuzzer use the moto server without faults). `chalice local` listens "
      "with a backlog of 5, so the race tests open their connections before the burst.")
    w("* The deployed stages use `KIP_RETRY_MODE=adaptive` and `KIP_MAX_ATTEMPTS=8`; the matrix "
      "uses standard mode with 3 attempts to stay fast, and one test checks that adaptive mode "
      "retries a throttle too. With 8 attempts botocore's standard backoff can add up to ~1 "
      "minute per throttled call (random, capped at 20 s per retry), against a 120 s Lambda "
      "timeout.")
    w("")
    return "\n".join(out)


def _short_failure(row: dict) -> str:
    err = row.get("error") or ""
    err = re.sub(r"\s+", " ", err)
    m = re.search(r"AssertionError: (.*?)( assert |$)", err)
    return (m.group(1) if m else err)[:240]


def _fixed_findings(calls: list[dict]) -> list[tuple[dict, list[dict]]]:
    out = []
    for f in FINDINGS:
        tests = [r for r in calls if re.search(f["match"], r["nodeid"])]
        if tests and all(r["outcome"] == "passed" for r in tests):
            out.append((f, tests))
    return out


def _active_findings(failed: list[dict]) -> list[tuple[dict, list[dict]]]:
    out = []
    for f in FINDINGS:
        tests = [r for r in failed if re.search(f["match"], r["nodeid"])]
        if tests:
            out.append((f, tests))
    return out


# ----------------------------------------------------------------------------- main

def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=2, help="pytest-xdist workers (1 = serial)")
    ap.add_argument("--output", default=str(ROOT / "docs" / "RELIABILITY.md"))
    ap.add_argument("--results", help="render this JSON-lines file instead of running the suite")
    ap.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")
    args = ap.parse_args(argv)
    if args.results:
        results = pathlib.Path(args.results)
        run = {"command": "(re-rendered from " + args.results + ")"}
    else:
        fd, name = tempfile.mkstemp(prefix="kip-reliability-", suffix=".jsonl")
        os.close(fd)
        results = pathlib.Path(name)
        print(f"running tests/reliability with {args.workers} worker(s) ...", flush=True)
        run = run_suite(args.workers, results, args.pytest_args)
        print(f"done in {run['seconds']} s: {run['summary']}", flush=True)
        if run.get("stdout_tail"):
            print(run["stdout_tail"], file=sys.stderr)
    rows = load(results)
    if not rows:
        print("no results were recorded", file=sys.stderr)
        return 2
    meta = {"date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "revision": git_revision(), "versions": versions(), "run": run}
    pathlib.Path(args.output).write_text(render(rows, meta) + "\n", encoding="utf-8")
    print(f"wrote {args.output} ({len(rows)} results; raw results in {results})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

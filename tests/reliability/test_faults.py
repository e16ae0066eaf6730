"""Fault matrix: every AWS call of a clean provision, reconcile (of drift) and teardown, under
throttling, server errors, timeouts, hard failures, crashes and lost responses.

The calls are enumerated by running the clean phases with a recording hook
(enumerate_calls), so a new AWS call in the code is covered without editing this file.
Faults are injected through botocore event hooks registered with chalicelib.aws.add_hook;
retries are botocore's own.
"""
from __future__ import annotations

import pytest

from chalicelib import errors
from chalicelib.core import naming
from tests.support.faults import RECORD_WRITES, Fault, operation_of, snake
from tests.support.scenario import enumerate_calls, reliability_settings, world
from tests.support.snapshots import diff, from_ddb, nothing_left
from tests.support.world import CLUSTER, REGION, ROLE, plain
from tests.support import drive

JSON = {"Content-Type": "application/json"}


def _reference(phase: str) -> dict:
    return enumerate_calls()[phase]


def _converged(sc, phase: str) -> list[str]:
    return diff(_reference(phase)["reference"], sc.snapshot())


def _matrix(record_property, phase: str, label: str, fault: str, outcome: str,
            cell: str = "") -> None:
    """What the report shows: ``cell`` in the matrix table, ``outcome`` in the details."""
    record_property("matrix", {"phase": phase, "call": label, "fault": fault, "outcome": outcome,
                               "cell": cell, "calls": _reference(phase)["calls"][label]})


# ----------------------------------------------------------------------------- the matrix

def test_transient_fault_is_retried_by_botocore_and_the_run_succeeds(sc, transient_case,
                                                                     record_property):
    phase, label, kind = transient_case
    ref = _reference(phase)
    sc.setup(phase)
    times = sc.settings.max_attempts - 1            # the most failures that can still succeed
    _matrix(record_property, phase, label, kind, "not finished")
    # when every call carrying this label fails `times` times before it passes through
    sc.tap.arm(Fault(kind, label, times=times))
    sc.run(phase)
    sc.tap.disarm()
    # then botocore retried each of them; our code issued exactly the calls of a clean run
    calls = sc.tap.call_counts()
    assert sc.tap.injected[label] == times * ref["calls"][label]
    if label == "iam:CreatePolicyVersion":
        # after a retried CreatePolicyVersion the adapter looks for a duplicate version that a
        # lost answer may have left (reads only here: no duplicate exists in this case)
        for extra in ("iam:ListPolicyVersions", "iam:GetPolicyVersion"):
            assert calls.get(extra, 0) >= ref["calls"].get(extra, 0)
            calls[extra] = ref["calls"].get(extra, 0)
    assert calls == ref["calls"], "the code re-issued or skipped calls; retries must be botocore's"
    assert sc.tap.sends[label] == calls[label] + sc.tap.injected[label]
    differences = _converged(sc, phase)
    assert not differences, differences
    left = sc.teardown_leaves_nothing()
    assert not left, f"teardown left {left}"
    _matrix(record_property, phase, label, kind,
            f"retried x{times} per call by botocore ({sc.tap.injected[label]} injected) -> "
            "succeeded; state = clean run; teardown clean", f"retried x{times}, ok")


# A refused call that is the customer's to fix, not kip's: a 400 instead of a 502.
REFUSED_AS_400 = {
    "kms:GetKeyPolicy": "400 ValidationError on kms_key_id naming kms:GetKeyPolicy before any "
                        "write; record unchanged",
}


# A refused optional read: the run uses its documented fallback.
ABSORBED = {
    "service-quotas:GetServiceQuota": "absorbed: the rule quota falls back to KIP_RULE_QUOTA "
                                      "or the region's default; converged",
    # the change it records has happened: the entry goes to an error log line in full instead
    "dynamodb:UpdateItem(audit)": "absorbed: the audit entry is logged in full (error line "
                                  "'audit entry not written'); the change stands; converged",
}


def test_hard_failure_names_the_step_and_the_next_run_converges(sc, hard_case, record_property):
    phase, label, _ = hard_case
    sc.setup(phase)
    status_before = None if phase == "provision" else "ready"
    _matrix(record_property, phase, label, "hard", "not finished")
    # when the call is refused (403 AccessDenied on every attempt)
    sc.tap.arm(Fault("hard", label))
    if label in ABSORBED:
        sc.run(phase)                       # the run goes on without it
        sc.tap.disarm()
        assert not _converged(sc, phase)
        _matrix(record_property, phase, label, "hard", ABSORBED[label], "absorbed")
        return
    with pytest.raises(errors.KipError) as info:
        sc.run(phase)
    sc.tap.disarm()
    err = info.value
    call = label.split("(")[0]
    rec = sc.record()
    if label in REFUSED_AS_400:
        # kip cannot check the customer's key policy: a 400 on kms_key_id that names the missing
        # permission (never assumed right), made before any write
        assert isinstance(err, errors.ValidationError) and err.field == "kms_key_id", \
            f"{type(err).__name__} ({err.status}): {err.message}"
        assert call in err.message and "could not read the key policy" in err.message
        assert not sc.lease_live(rec), "a lease was left behind by a run that changed nothing"
        assert (rec or {}).get("status") == status_before
        where, cell = REFUSED_AS_400[label], "400, no write"
        _matrix(record_property, phase, label, "hard", where + "; not converged")
        how = sc.run_again(phase, may_wait_for_lease=False)
        assert not _converged(sc, phase)
        assert not sc.teardown_leaves_nothing()
        _matrix(record_property, phase, label, "hard", f"{where}; {how}; teardown clean",
                cell + ", converged")
        return
    # then a clear error that names the call
    assert isinstance(err, errors.AwsCallFailed) and err.status == 502, \
        f"{type(err).__name__} ({err.status}): {err.message}"
    assert call in (err.extra.get("step") or ""), err.extra
    assert err.extra.get("aws_code") in ("AccessDenied", "AccessDeniedException"), err.extra
    if "record" in err.extra:
        # failed while executing the plan: the record names the step and lists what exists;
        # an unfinished teardown stays "deleting" so a retry, a reconcile or the schedule ends it
        assert rec["status"] == ("deleting" if phase == "teardown" else "failed"), rec["status"]
        last = rec["last_error"]
        assert last["call"] == snake(operation_of(label)) and last["step"], last
        assert call in last["message"], last
        assert not sc.lease_live(rec), "the failed run kept its lease"
        wrong = sc.record_vs_reality(rec)
        assert not wrong, f"the record's resources.*.exists is wrong: {wrong}"
        where = f"502 AwsCallFailed; record failed at step {last['step']} ({last['call']})"
        cell = "502, step recorded"
    elif label in RECORD_WRITES:
        # the AWS work is done but its record could not be written: the lease record (written
        # before any AWS change) still names everything, and its lease blocks others until expiry
        assert rec is not None and rec["names"] == sc.names.to_dict()
        where = "502 AwsCallFailed writing the record; lease record names every resource"
        cell = "502, lease record"
    else:
        # failed before any write: the record is as it was and no lease is left behind
        assert not sc.lease_live(rec), "a lease was left behind by a run that changed nothing"
        assert (rec or {}).get("status") == status_before
        where = "502 AwsCallFailed before any write; record unchanged"
        cell = "502, no write"
    _matrix(record_property, phase, label, "hard", where + "; not converged")
    # when the next run comes (after the lease expired, only where nothing could release it)
    how = sc.run_again(phase, may_wait_for_lease=label in RECORD_WRITES)
    differences = _converged(sc, phase)
    assert not differences, differences
    left = sc.teardown_leaves_nothing()
    assert not left, f"teardown left {left}"
    _matrix(record_property, phase, label, "hard", f"{where}; {how}; teardown clean",
            cell + (", converged" if how == "next run converged" else ", converged after lease"))


def test_crash_between_calls_then_reconcile_after_lease_expiry_converges(sc, crash_case,
                                                                           record_property):
    phase, label, _ = crash_case
    sc.setup(phase)
    _matrix(record_property, phase, label, "crash", "not finished")
    # when the process dies just before this call
    sc.crash(phase, label)
    rec = sc.record()
    notes = []
    if rec is None:
        # it died before taking the lease, and nothing is created before the lease: no orphans
        left = sc.leftovers()
        assert not left, f"resources exist without any record: {left}"
        notes.append("no record, nothing created")
    elif sc.lease_live(rec):
        assert rec["names"] == sc.names.to_dict(), "the lease record must name every resource"
        with pytest.raises(errors.InProgress):
            sc.run(phase)                                 # the dead run's lease is respected
        notes.append(f"record {rec['status']} under the dead run's lease; 409 until it expires")
    else:
        notes.append(f"record {rec['status']}, no lease")
    # then, once the lease expired, the scheduled reconcile (and the caller's retry) converge
    sc.expire_lease()
    summary = drive.sweep(sc.engine())
    assert not summary["errors"], summary["errors"]
    if phase == "provision" and sc.record() is None:
        sc.run("provision")
        notes.append("caller's retry provisioned")
    elif phase == "teardown" and sc.record() is not None:
        sc.run("teardown")
        notes.append("caller's retry tore down")
    else:
        notes.append("scheduled reconcile converged")
    differences = _converged(sc, phase)
    assert not differences, differences
    left = sc.teardown_leaves_nothing()
    assert not left, f"teardown left {left}"
    _matrix(record_property, phase, label, "crash", "; ".join(notes) + "; teardown clean",
            "no orphan, converged" if rec is None else "409 until expiry, converged"
            if "409" in notes[0] else "converged")


def test_lost_response_is_absorbed_like_any_timeout(sc, lost_case, record_property):
    """The request reached AWS and changed it, but the answer was lost (a read timeout); botocore
    retries the same request. The run should succeed as for any other timeout."""
    phase, label, _ = lost_case
    sc.setup(phase)
    _matrix(record_property, phase, label, "lost_response", "not finished")
    sc.tap.arm(Fault("lost_response", label))
    failure = None
    try:
        sc.run(phase)
    except errors.KipError as exc:
        failure = exc
    sc.tap.disarm()
    assert sc.tap.injected[label] >= 1
    if failure is None:
        outcome, cell = "absorbed: succeeded", "absorbed"
    else:
        outcome = (f"FAILED {failure.status} {failure.code}: {failure.message[:140]}; record "
                   f"{(sc.record() or {}).get('status')}")
        cell = f"{failure.status} {failure.code}"
        try:
            how = sc.run_again(phase, may_wait_for_lease=True)
            outcome += "; " + how
            cell += ", next run converged" + (" after the lease" if "lease" in how else "")
        except errors.KipError as exc:
            outcome += f"; next run also failed: {exc.code}"
            cell += f", next run {exc.status} {exc.code}"
    differences = _converged(sc, phase)
    if label == "iam:CreatePolicyVersion":
        # IAM numbers versions: the lost attempt used v3, so the retried one is v4 and the
        # duplicate v3 is deleted. Same documents, same count of versions; only the id differs.
        differences = [d for d in differences if "version" not in d.split(":")[0]]
    if differences:
        outcome += f"; state differs from a clean run: {differences[:2]}"
        cell += "; state differs from a clean run: " + differences[0].split(":")[0]
    _matrix(record_property, phase, label, "lost_response", outcome, cell)
    assert failure is None, outcome
    assert not differences, differences
    left = sc.teardown_leaves_nothing()
    assert not left, f"teardown left {left}"
    _matrix(record_property, phase, label, "lost_response", outcome + "; state = clean run; "
            "teardown clean", "absorbed")


# ----------------------------------------------------------------------------- focused cases

def test_hard_failure_over_http_is_502_naming_the_step_and_the_record_says_so(sc, api):
    sc.setup("provision")
    sc.tap.arm(Fault("hard", "events:PutTargets"))
    resp = api.http.post("/clusters", body=sc.request().model_dump_json(exclude_none=True),
                         headers=JSON)
    sc.tap.disarm()
    assert resp.status_code == 502, resp.body
    err = resp.json_body["error"]
    assert err["code"] == "AwsCallFailed" and "events:PutTargets" in err["step"]
    assert err["record"]["status"] == "failed"
    assert err["record"]["last_error"]["call"] == "put_targets"
    got = api.http.get(f"/clusters/{CLUSTER}").json_body
    assert got["status"] == "failed" and got["last_error"]["step"] == "targets"
    again = api.http.post("/clusters", body=sc.request().model_dump_json(exclude_none=True),
                          headers=JSON)
    assert again.status_code == 201 and again.json_body["status"] == "ready"


def test_record_write_failure_does_not_orphan_the_resources(sc):
    # given PutItem of the final record fails after every AWS resource exists
    sc.setup("provision")
    sc.tap.arm(Fault("hard", "dynamodb:PutItem(record)"))
    with pytest.raises(errors.AwsCallFailed):
        sc.run("provision")
    sc.tap.disarm()
    snap = sc.snapshot()
    assert set(snap["queues"]) == {sc.names.queue, sc.names.dlq}
    rec = sc.record()
    assert rec["names"] == sc.names.to_dict(), "the lease record must name what may exist"
    # when the lease expires, the next provisioning adopts its own tagged resources
    sc.expire_lease()
    out = sc.run("provision")
    assert out.record["status"] == "ready"
    assert not diff(_reference("provision")["reference"], sc.snapshot())
    assert [a for a in out.actions if a["kind"] == "create"] == [], \
        "resources that exist and are ours must be adopted, not created again"


def test_teardown_without_a_record_finds_this_clusters_tagged_resources(sc):
    # given a provisioned cluster whose record is lost
    sc.setup("teardown")
    plain("dynamodb").delete_item(
        TableName=sc.settings.table_name, Key={"id": {"S": sc.cid.key}})
    # when it is torn down
    out = sc.run("teardown")
    # then everything tagged as this cluster's is gone, and nothing else was touched
    assert {a["call"] for a in out.actions} >= {"delete_queue", "delete_rule", "delete_policy",
                                                 "detach_role_policy"}
    assert nothing_left(sc.snapshot()) == []
    assert ROLE in sc.snapshot()["roles"]


def test_lost_record_then_provision_adopts_instead_of_duplicating(sc):
    sc.setup("teardown")
    plain("dynamodb").delete_item(
        TableName=sc.settings.table_name, Key={"id": {"S": sc.cid.key}})
    out = sc.run("provision")
    assert out.record["status"] == "ready"
    assert not [a for a in out.actions if a["kind"] == "create"], out.actions
    assert not diff(_reference("provision")["reference"], sc.snapshot())


def test_failed_teardown_record_lists_what_still_exists(sc):
    """After a teardown fails part way, resources.*.exists must say what is left, as it does
    after a failed provisioning (the matrix checks that for provision and reconcile)."""
    sc.setup("teardown")
    sc.tap.arm(Fault("hard", "iam:DeletePolicy"))
    with pytest.raises(errors.AwsCallFailed) as info:
        sc.run("teardown")
    sc.tap.disarm()
    assert "record" in info.value.extra
    rec = sc.record()
    assert rec["status"] == "deleting" and rec["last_error"]["during"] == "teardown"
    wrong = sc.record_vs_reality(rec)
    assert not wrong, f"the record's resources.*.exists is stale after a failed teardown: {wrong}"


def test_reconcile_after_a_crashed_teardown_finishes_the_teardown(sc):
    """A DELETE that died part way leaves status 'deleting'. A later reconcile (the
    POST /clusters/{name}/reconcile route) must finish the teardown, as the scheduled sweep does,
    not provision the cluster again."""
    sc.setup("teardown")
    sc.crash("teardown", "events:DeleteRule")
    assert sc.record()["status"] == "deleting"
    sc.expire_lease()
    try:
        sc.run("reconcile")
    except errors.KipError as exc:     # refusing would also be acceptable
        assert exc.status == 409, exc
        return
    left = nothing_left(sc.snapshot())
    assert not left, ("reconcile of a cluster being deleted re-created it: "
                      f"{len(left)} resources exist, record {sc.record()['status']!r}")


def test_adaptive_retry_mode_also_retries_throttling(record_property):
    """The deployed stages use KIP_RETRY_MODE=adaptive; its throttles are retried too."""
    settings = reliability_settings(retry_mode="adaptive")
    with world(settings) as sc:
        sc.setup("provision")
        # (adaptive mode also slows the client down after a throttle: one call, one throttle)
        sc.tap.arm(Fault("throttle", "iam:CreatePolicy", times=1))
        out = sc.run("provision")
        sc.tap.disarm()
        from chalicelib import aws
        cfg = aws.client("iam", None, REGION, settings).meta.config.retries
        assert cfg["mode"] == "adaptive"
        assert out.record["status"] == "ready"
        assert sc.tap.injected["iam:CreatePolicy"] == 1
        assert sc.tap.sends["iam:CreatePolicy"] == 2
        assert not diff(_reference("provision")["reference"], sc.snapshot())


def test_names_are_recorded_before_any_aws_write(sc):
    """The lease record written before the first AWS change already names every resource."""
    sc.setup("provision")
    seen = {}

    def first_write(**_):
        if "rec" not in seen:     # read with a client the tap does not see
            item = plain("dynamodb").get_item(
                TableName=sc.settings.table_name, Key={"id": {"S": sc.cid.key}},
                ConsistentRead=True).get("Item")
            seen["rec"] = from_ddb(item)
    from chalicelib import aws
    aws.add_hook("before-call.sqs.CreateQueue", first_write)
    sc.run("provision")
    assert seen["rec"]["status"] == "provisioning"
    assert seen["rec"]["names"] == sc.names.to_dict()
    assert seen["rec"]["names"]["queue"] == naming.names_for(
        sc.cid, sc.settings.prefix, sc.settings.iam_path).queue

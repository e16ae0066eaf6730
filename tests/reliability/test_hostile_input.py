"""Hostile input: named cases through chalice.test.Client (and, where the gateway decodes the
path, through an API Gateway event), and a schemathesis fuzz of the live API from its own
OpenAPI document (moto server + chalice local on loopback).

Every answer must be a 4xx in the one error shape {"error": {"code", "message", ...}}, never a
5xx, and a refused request must create nothing."""
from __future__ import annotations

import base64
import json
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import quote

import pytest

from tests.support.snapshots import diff
from tests.support.world import CLUSTER, make_cluster, make_role

JSON = {"Content-Type": "application/json"}
ARABIC_ACCOUNT = "\u0661\u0662\u0663\u0664\u0665\u0666\u0667\u0668\u0669\u0660\u0661\u0662"
FUZZ_MINIMUM = 1000


def error_shape_problem(status: int, body: object) -> str | None:
    """None when ``body`` is the one error shape; else what is wrong."""
    if not isinstance(body, dict) or not isinstance(body.get("error"), dict):
        return f"{status}: body is not {{'error': {{...}}}}: {str(body)[:160]}"
    err = body["error"]
    if not (isinstance(err.get("code"), str) and err["code"]):
        return f"{status}: error.code missing: {err}"
    if not (isinstance(err.get("message"), str) and err["message"]):
        return f"{status}: error.message missing: {err}"
    return None


def assert_refused(resp, statuses=None) -> dict:
    body = resp.json_body if resp.body else None
    assert 400 <= resp.status_code < 500, f"{resp.status_code}: {resp.body[:300]!r}"
    if statuses:
        assert resp.status_code in statuses, f"{resp.status_code}: {resp.body[:300]!r}"
    problem = error_shape_problem(resp.status_code, body)
    assert problem is None, problem
    return body["error"]


def assert_nothing_created(sc) -> None:
    left = sc.leftovers()
    assert not left, f"a refused request created {left}"


# ----------------------------------------------------------------------------- POST /clusters

BIG = '{"cluster_name": "payments-prod", "tags": {"k": "' + "v" * (1 << 20) + '"}}'
ALL_NULL = {"cluster_name": None, "account_id": None, "region": None, "controller_role": None,
            "event_kinds": None, "kms_key_id": None, "message_retention_seconds": None,
            "visibility_timeout_seconds": None, "max_receive_count": None, "tags": None,
            "dry_run": None}
OK = {"cluster_name": "payments-prod"}

BODIES = {
    # malformed / wrong type
    "malformed-json": "{not json",
    "trailing-comma": '{"cluster_name": "a",}',
    "invalid-utf8": b'{"cluster_name": "\xff\xfe"}',
    "nul-byte": '{"cluster_name": "a\x00"}',
    "json-array": "[]",
    "json-array-of-object": '[{"cluster_name": "payments-prod"}]',
    "json-null": "null",
    "json-number": "42",
    "json-string": '"payments-prod"',
    "json-nan": '{"cluster_name": "payments-prod", "max_receive_count": NaN}',
    "json-infinity": '{"cluster_name": "payments-prod", "message_retention_seconds": Infinity}',
    "huge-integer": '{"cluster_name": "payments-prod", "max_receive_count": 1' + "0" * 5000 + "}",
    "deeply-nested-array": "[" * 50000,
    "deeply-nested-object": '{"a":' * 12000 + "1" + "}" * 12000,
    "1MB-body": BIG,
    # unknown fields, nulls
    "unknown-field": {**OK, "surprise": 1},
    "unknown-nested": {**OK, "tags": {"k": {"nested": "x"}}},
    "object-in-list": {**OK, "event_kinds": [{"kind": "spot_interruption"}]},
    "null-everywhere": ALL_NULL,
    "null-name": {"cluster_name": None},
    "null-dry-run": {**OK, "dry_run": None},
    # names
    "name-101-chars": {"cluster_name": "a" * 101},
    "name-star": {"cluster_name": "pay*"},
    "name-slash": {"cluster_name": "pay/ments"},
    "name-dotdot": {"cluster_name": ".."},
    "name-dotdot-slash": {"cluster_name": "../payments-prod"},
    "name-space": {"cluster_name": "pay ments"},
    "name-unicode": {"cluster_name": "paymënts"},
    "name-fullwidth": {"cluster_name": "ｐａｙｍｅｎｔｓ"},
    "name-control": {"cluster_name": "pay\u0001ments"},
    "name-trailing-newline": {"cluster_name": "payments-prod\n"},
    "name-leading-dash": {"cluster_name": "-payments"},
    "name-empty": {"cluster_name": ""},
    # identities
    "account-short": {**OK, "account_id": "12345"},
    "account-letters": {**OK, "account_id": "12345678901x"},
    "account-arabic-digits": {**OK, "account_id": ARABIC_ACCOUNT},
    "account-trailing-newline": {**OK, "account_id": "123456789012\n"},
    "region-bogus": {**OK, "region": "mars-north-1"},
    "region-uppercase": {**OK, "region": "EU-WEST-1"},
    "region-trailing-newline": {**OK, "region": "eu-west-1\n"},
    "region-well-formed-but-unknown": {**OK, "region": "zz-nowhere-9"},
    # roles
    "role-other-partition": {**OK, "controller_role":
                             "arn:aws-cn:iam::123456789012:role/KarpenterController-payments-prod"},
    "role-other-account": {**OK, "controller_role":
                           "arn:aws:iam::210987654321:role/KarpenterController-payments-prod"},
    "role-wildcard": {**OK, "controller_role": "KarpenterController-*"},
    "role-too-long": {**OK, "controller_role": "r" * 65},
    "role-not-an-arn": {**OK, "controller_role": "arn:aws:s3:::bucket"},
    # KMS
    "kms-aws-managed-alias": {**OK, "kms_key_id": "alias/aws/sqs"},
    "kms-aws-managed-alias-arn": {**OK, "kms_key_id":
                                  "arn:aws:kms:eu-west-1:123456789012:alias/aws/sqs"},
    "kms-other-partition": {**OK, "kms_key_id": "arn:aws-cn:kms:cn-north-1:123456789012:key/"
                                                "12345678-1234-1234-1234-123456789012"},
    "kms-garbage": {**OK, "kms_key_id": "not a key"},
    "kms-unknown-alias": {**OK, "kms_key_id": "alias/does-not-exist"},
    # numbers
    "retention-negative": {**OK, "message_retention_seconds": -1},
    "retention-below-min": {**OK, "message_retention_seconds": 59},
    "retention-above-max": {**OK, "message_retention_seconds": 1209601},
    "retention-2^63": {**OK, "message_retention_seconds": 2 ** 63},
    "retention-float": {**OK, "message_retention_seconds": 60.5},
    "retention-1e308": {**OK, "message_retention_seconds": 1e308},
    "retention-string": {**OK, "message_retention_seconds": "600"},
    "visibility-negative": {**OK, "visibility_timeout_seconds": -1},
    "visibility-oversize": {**OK, "visibility_timeout_seconds": 43201},
    "receive-zero": {**OK, "max_receive_count": 0},
    "receive-oversize": {**OK, "max_receive_count": 1001},
    "receive-2^64": {**OK, "max_receive_count": 2 ** 64},
    "receive-bool": {**OK, "max_receive_count": True},
    # lists, tags
    "kinds-empty": {**OK, "event_kinds": []},
    "kinds-repeat": {**OK, "event_kinds": ["spot_interruption", "spot_interruption"]},
    "kinds-too-many": {**OK, "event_kinds": ["spot_interruption"] * 6},
    "tags-reserved": {**OK, "tags": {"kip.io/cluster": "someone-else"}},
    "tags-too-many": {**OK, "tags": {f"k{i}": "v" for i in range(21)}},
    "tags-control-char": {**OK, "tags": {"k": "v\u0007"}},
    "dry-run-string": {**OK, "dry_run": "true"},
}


@pytest.mark.parametrize("name", list(BODIES))
def test_post_clusters_refuses_hostile_bodies(sc, api, name, record_property):
    sc.setup("provision")          # the cluster and role exist: a valid body would provision
    body = BODIES[name]
    raw = body if isinstance(body, (str, bytes)) else json.dumps(body)
    resp = api.http.post("/clusters", body=raw, headers=JSON)
    record_property("hostile", {"case": f"POST /clusters {name}", "status": resp.status_code})
    left = sc.leftovers()
    assert 400 <= resp.status_code < 500 and not left, \
        f"{resp.status_code}: {resp.body[:240]!r}; left behind: {left}"
    err = assert_refused(resp)
    if name.startswith("kms-aws-managed"):
        assert "EventBridge" in err["message"], "alias/aws/* must be refused with the reason"


PATH_NAMES = {
    "101-chars": "a" * 101,
    "star": "pay%2A",
    "encoded-slash": "pay%2Fments",
    "dotdot": "..",
    "encoded-dotdot": "%2E%2E",
    "space": "pay%20ments",
    "unicode": "pay%C3%ABments",
    "control": "pay%01ments",
    "nul": "pay%00ments",
    "encoded-newline": "payments-prod%0A",
}


@pytest.mark.parametrize("method,suffix", [("GET", ""), ("DELETE", ""),
                                           ("POST", "/reconcile")])
@pytest.mark.parametrize("name", list(PATH_NAMES))
def test_path_parameters_are_validated(sc, api, method, suffix, name, record_property):
    # provisioned for DELETE, so that a delete slipping through would show
    sc.setup("teardown" if method == "DELETE" else "provision")
    before = sc.snapshot()
    resp = api.http.request(method, f"/clusters/{PATH_NAMES[name]}{suffix}", headers=JSON,
                            body=b"")
    record_property("hostile", {"case": f"{method} /clusters/{{{name}}}{suffix}",
                                "status": resp.status_code})
    assert_refused(resp)
    assert not diff(before, sc.snapshot()), "a refused request changed something"


QUERIES = {
    "account-short": "account_id=1",
    "account-arabic-digits": "account_id=" + quote(ARABIC_ACCOUNT),
    "account-trailing-newline": "account_id=123456789012%0A",
    "region-bogus": "region=mars-1",
    "region-trailing-newline": "region=eu-west-1%0A",
    "unknown-parameter": "surprise=1",
}


@pytest.mark.parametrize("method,suffix", [("GET", ""), ("DELETE", ""),
                                           ("POST", "/reconcile")])
@pytest.mark.parametrize("query", list(QUERIES))
def test_identity_query_parameters_are_validated(sc, api, method, suffix, query,
                                                 record_property):
    sc.setup("teardown" if method == "DELETE" else "provision")
    before = sc.snapshot()
    resp = api.http.request(method, f"/clusters/{CLUSTER}{suffix}?{QUERIES[query]}",
                            headers=JSON, body=b"")
    record_property("hostile", {"case": f"{method} /clusters/{{name}}{suffix}?{query}",
                                "status": resp.status_code})
    assert_refused(resp, statuses={400})
    assert not diff(before, sc.snapshot()), "a refused request changed something"


RECONCILE_BODIES = {
    "malformed-json": "{oops",
    "json-array": "[true]",
    "json-null": "null",
    "unknown-field": '{"force": true}',
    "dry-run-string": '{"dry_run": "yes"}',
    "dry-run-null": '{"dry_run": null}',
    "1MB-body": '{"dry_run": false, "pad": "' + "x" * (1 << 20) + '"}',
    "deeply-nested": "[" * 50000,
}


@pytest.mark.parametrize("name", list(RECONCILE_BODIES))
def test_reconcile_refuses_hostile_bodies(sc, api, name, record_property):
    sc.setup("reconcile")                 # drifted: a reconcile that slips through would repair
    before = sc.snapshot()
    resp = api.http.post(f"/clusters/{CLUSTER}/reconcile", headers=JSON,
                         body=RECONCILE_BODIES[name])
    record_property("hostile", {"case": f"POST /clusters/{{name}}/reconcile {name}",
                                "status": resp.status_code})
    assert_refused(resp, statuses={400})
    assert not diff(before, sc.snapshot())


LIST_QUERIES = {
    "limit-zero": "limit=0",
    "limit-negative": "limit=-1",
    "limit-oversize": "limit=101",
    "limit-huge": "limit=" + "9" * 400,
    "limit-superscript-two": "limit=%C2%B2",
    "limit-arabic-digit": "limit=%D9%A3",
    "status-bogus": "status=gone",
    "next-token-garbage": "next_token=%25%25%25",
    "next-token-not-an-object": "next_token=" + base64.urlsafe_b64encode(b"[1]").decode(),
    "next-token-deeply-nested": "next_token=" + base64.urlsafe_b64encode(b"[" * 5000).decode(),
    "unknown-parameter": "surprise=1",
}


@pytest.mark.parametrize("name", list(LIST_QUERIES))
def test_list_refuses_hostile_query_parameters(sc, api, name, record_property):
    resp = api.http.get(f"/clusters?{LIST_QUERIES[name]}")
    record_property("hostile", {"case": f"GET /clusters?{name}", "status": resp.status_code})
    if name == "limit-arabic-digit" and resp.status_code == 200:
        return          # "٣" is a decimal digit; Python's int() reads it as 3: harmless
    assert_refused(resp, statuses={400})


def _gateway_event(method: str, name: str, suffix: str = "") -> dict:
    """What API Gateway hands the function: path parameters already URL-decoded."""
    return {
        "resource": "/clusters/{cluster_name}" + suffix,
        "path": f"/clusters/{quote(name)}{suffix}",
        "httpMethod": method,
        "headers": {"content-type": "application/json"},
        "multiValueHeaders": {},
        "queryStringParameters": None,
        "multiValueQueryStringParameters": None,
        "pathParameters": {"cluster_name": name},
        "stageVariables": {},
        "requestContext": {"resourcePath": "/clusters/{cluster_name}" + suffix,
                           "httpMethod": method, "path": f"/v1/clusters/{quote(name)}{suffix}",
                           "identity": {"sourceIp": "127.0.0.1"}, "requestId": "r-1"},
        "body": None,
        "isBase64Encoded": False,
    }


@pytest.mark.parametrize("method,suffix", [("GET", ""), ("DELETE", ""),
                                           ("POST", "/reconcile")])
@pytest.mark.parametrize("name", ["payments-prod\n", "payments-prod\r\n", "pay\u0000ments",
                                  "pay/ments", "../payments-prod", "paymënts"])
def test_decoded_path_parameters_are_validated(sc, api, method, suffix, name, record_property):
    """API Gateway decodes %0A, %2F, ... before the function sees them; chalice local does not,
    so the decoded values are sent as the gateway would send them."""
    from chalice.local import LambdaContext

    import app as service_app
    sc.setup("teardown" if method == "DELETE" else "provision")
    before = sc.snapshot()
    out = service_app.app(_gateway_event(method, name, suffix),
                          LambdaContext("api_handler", 512, 120000))
    body = json.loads(out["body"]) if out.get("body") else None
    record_property("hostile", {"case": f"{method} /clusters/{{{name!r} decoded}}{suffix}",
                                "status": out["statusCode"]})
    assert out["statusCode"] == 400, f"{out['statusCode']}: {str(body)[:300]}"
    assert error_shape_problem(out["statusCode"], body) is None
    assert not diff(before, sc.snapshot())


def test_role_arn_of_another_partition_and_account_are_refused_with_field(sc, api):
    sc.setup("provision")
    for role in ("arn:aws-us-gov:iam::123456789012:role/KarpenterController-payments-prod",
                 "arn:aws:iam::999999999999:role/KarpenterController-payments-prod"):
        resp = api.http.post("/clusters", headers=JSON, body=json.dumps(
            {"cluster_name": CLUSTER, "controller_role": role}))
        err = assert_refused(resp, statuses={400})
        assert err["field"] == "controller_role"
    assert_nothing_created(sc)


# ----------------------------------------------------------------------------- fuzzing

FUZZ_BUDGET = {   # examples per operation and generation mode (hypothesis may find fewer)
    ("POST", "/clusters"): 160,
    ("GET", "/clusters"): 100,
    ("GET", "/clusters/{cluster_name}"): 100,
    ("DELETE", "/clusters/{cluster_name}"): 70,
    ("POST", "/clusters/{cluster_name}/reconcile"): 100,
    ("GET", "/openapi.json"): 3,
}


def test_fuzz_the_live_api_from_its_openapi_document(stack, record_property):
    """schemathesis generates requests (valid and invalid, from the document served at
    GET /openapi.json) against chalice local; at least 1000 of them, no 5xx, every 4xx in the
    error shape."""
    import requests
    import schemathesis
    from hypothesis import HealthCheck, Phase, given, settings
    from schemathesis import GenerationMode

    with stack.environ():                     # some valid requests reach real provisioning
        for name in ("fuzz-a", "fuzz-b"):
            make_cluster(name)
            make_role(f"KarpenterController-{name}")
    doc = requests.get(f"{stack.api_url}/openapi.json", timeout=30).json()
    schema = schemathesis.openapi.from_dict(doc)
    statuses: Counter = Counter()
    per_operation: Counter = Counter()
    problems: list[str] = []
    lock = threading.Lock()
    pool = ThreadPoolExecutor(3)
    pending: list = []

    def check(case) -> None:
        # a fresh connection per request: chalice local's keep-alive answers wait ~40 ms on
        # Nagle/delayed ACK, which would make 1000 requests take a minute
        resp = case.call(base_url=stack.api_url, headers={"Connection": "close"}, timeout=60)
        with lock:
            record(case, resp)

    def record(case, resp) -> None:
        statuses[resp.status_code] += 1
        per_operation[f"{case.method} {case.path}"] += 1
        if resp.status_code >= 500:
            body = json.dumps(case.body, default=str) if isinstance(case.body, (dict, list)) \
                else repr(case.body)
            problems.append(f"{resp.status_code} {case.method} {case.formatted_path} "
                            f"query={case.query} body={body[:300]} -> {resp.text[:200]}")
        elif resp.status_code >= 400:
            try:
                body = resp.json()
            except ValueError:
                body = resp.text
            problem = error_shape_problem(resp.status_code, body)
            if problem:
                problems.append(f"{case.method} {case.formatted_path}: {problem}")

    for result in schema.get_all_operations():
        op = result.ok()
        budget = FUZZ_BUDGET.get((op.method.upper(), op.path), 60)
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            strategy = op.as_strategy(generation_mode=mode)

            @settings(max_examples=budget, deadline=None, database=None, derandomize=True,
                      phases=[Phase.generate], suppress_health_check=list(HealthCheck))
            @given(case=strategy)
            def run(case) -> None:
                # generation (CPU here) overlaps with answering (the servers): three requests
                # in flight, below chalice local's listen backlog of 5
                pending.append(pool.submit(check, case))
            try:
                run()
            except Exception as exc:       # e.g. nothing negative can be generated for a route
                if "Unsatisfiable" not in type(exc).__name__ and "negative" not in str(exc):
                    raise
    for fut in pending:
        fut.result()
    pool.shutdown()
    total = sum(statuses.values())
    record_property("fuzz", {"requests": total, "statuses": dict(sorted(statuses.items())),
                             "operations": dict(sorted(per_operation.items())),
                             "problems": problems[:20], "problem_count": len(problems)})
    assert total >= FUZZ_MINIMUM, f"only {total} requests were generated"
    assert not problems, f"{len(problems)} bad answers, e.g. {problems[:5]}"

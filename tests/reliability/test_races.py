"""Races: concurrent requests for one cluster over real HTTP (chalice local serves each request
on its own thread, sharing one Kit, as a warm Lambda container would not but a portal backend
or `chalice local` does), a stale writer, and a crashed run's lease being taken over."""
from __future__ import annotations

import http.client
import json
import random
import socket
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from chalicelib.core.records import ClusterRecord
from chalicelib import aws, errors
from chalicelib.core import naming
from chalicelib.aws import registry
from scripts.localstack import LOCAL_TABLE, Stack
from tests.support.scenario import enumerate_calls
from tests.support.snapshots import diff, snapshot
from tests.support.world import ACCOUNT, REGION, make_cluster, make_role

ALLOWED = {200, 201, 202, 409}


class Answer:
    def __init__(self, status: int, body: bytes) -> None:
        self.status_code, self.text = status, body.decode("utf-8", "replace")

    def json(self):
        return json.loads(self.text)


def _call(method: str, url: str, timeout: float = 60, json_body=None) -> Answer:
    """One request on a fresh connection."""
    # a DELETE racing another request sends If-Match: * (whatever record is current)
    headers = {"Connection": "close", **({"If-Match": "*"} if method == "DELETE" else {})}
    resp = requests.request(method, url, headers=headers, timeout=timeout, json=json_body)
    return Answer(resp.status_code, resp.content)


def _burst(stack: Stack, calls: list, timeout: float = 60) -> list:
    """Send every (method, path, body[, delay]) at the same instant, each on its own connection.

    The connections are opened first, one by one: `chalice local` listens with a backlog of 5,
    so 20 simultaneous connects are reset by the kernel before the app sees them. Then all
    requests are written at once. A request not answered within ``timeout`` gets status 0."""
    conns = [http.client.HTTPConnection("127.0.0.1", stack.api_port, timeout=timeout)
             for _ in calls]
    for c in conns:
        c.connect()
    barrier = threading.Barrier(len(conns))

    def go(i: int) -> Answer:
        method, path, body, delay = (*calls[i], 0)[:4]
        conn = conns[i]
        data = None if body is None else json.dumps(body).encode()
        barrier.wait()
        if delay:
            threading.Event().wait(delay)
        try:
            conn.request(method, path, body=data, headers={
                "Content-Type": "application/json", "Connection": "close",
                **({"If-Match": "*"} if method == "DELETE" else {})})
            resp = conn.getresponse()
            return Answer(resp.status, resp.read())
        except (socket.timeout, TimeoutError):
            return Answer(0, b"")
        finally:
            conn.close()
    with ThreadPoolExecutor(len(conns)) as pool:
        return list(pool.map(go, range(len(conns))))


def _status(resp: Answer) -> int:
    return resp.status_code


def _prepare(stack: Stack, name: str) -> naming.ClusterId:
    with stack.environ():
        make_cluster(name)
        make_role(f"KarpenterController-{name}")
    return naming.ClusterId(ACCOUNT, REGION, name)


def cluster_state(stack: Stack, cid: naming.ClusterId) -> dict:
    """Everything in the stack that is tagged as this cluster's (under any name), its record,
    and whether that is exactly one complete set or nothing at all."""
    role = f"KarpenterController-{cid.cluster_name}"
    with stack.environ():
        snap = snapshot(LOCAL_TABLE)
    n = naming.names_for(cid, "kip-", "/kip/")

    def ours(tags):
        return (tags or {}).get(naming.CLUSTER_TAG) == cid.key
    queues = {k: v for k, v in snap["queues"].items() if ours(v["tags"])}
    rules = {k: v for k, v in snap["rules"].items() if ours(v["tags"])}
    policies = {k: v for k, v in snap["policies"].items() if ours(v["tags"])}
    attached = [a for a in snap["roles"].get(role, []) if ":policy/kip/" in a]
    record = snap["records"].get(cid.key)
    complete = (set(queues) == {n.queue, n.dlq}
                and set(rules) == {n.rule}
                and all(r["targets"] == [[naming.TARGET_ID, n.queue_arn]]
                        for r in rules.values())
                and set(policies) == {n.policy}
                and len(policies[n.policy]["versions"]) == 1
                and attached == [n.policy_arn]
                and record is not None and record["status"] == "ready"
                and not record["leased"])
    empty = not queues and not rules and not policies and not attached and record is None
    return {"queues": sorted(queues), "rules": sorted(rules), "policies": sorted(policies),
            "attached": attached, "record": record and {"status": record["status"],
                                                         "leased": record["leased"]},
            "complete": complete, "empty": empty}


def _cleanup(stack: Stack, cid: naming.ClusterId) -> None:
    _call("DELETE", f"{stack.api_url}/clusters/{cid.cluster_name}")


# ----------------------------------------------------------------------------- over HTTP

def test_20_concurrent_posts_for_a_new_cluster_make_exactly_one_set(stack, record_property):
    cid = _prepare(stack, "race-new")
    # when 20 requests arrive at once
    responses = _burst(stack, [("POST", "/clusters", {"cluster_name": cid.cluster_name})] * 20)
    codes = Counter(_status(r) for r in responses)
    state = cluster_state(stack, cid)
    record_property("race", {"race": "20 concurrent POST /clusters (new cluster)",
                             "statuses": dict(codes), "end": "one complete set" if
                             state["complete"] else "WRONG"})
    # then every answer is 200/201/202/409, one run created, and exactly one set exists
    assert set(codes) <= ALLOWED, codes
    assert codes[201] == 1, codes
    for r in responses:
        if r.status_code == 409:
            assert r.json()["error"]["code"] in ("ProvisioningInProgress", "StaleRecord")
    assert state["complete"], state
    _cleanup(stack, cid)


def test_20_concurrent_posts_updating_a_cluster_all_get_an_answer(record_property):
    """The same race when the cluster exists and the request changes it (new tags): every
    request must still be answered. Runs on its own stack because a wedged server would hang
    every later request."""
    with Stack() as stack:
        cid = _prepare(stack, "race-upd")
        first = _call("POST", f"{stack.api_url}/clusters", json_body={"cluster_name": "race-upd"})
        assert first.status_code == 201, first.text
        body = {"cluster_name": "race-upd", "tags": {"team": "payments"}}
        responses = _burst(stack, [("POST", "/clusters", body)] * 20, timeout=20)
        codes = Counter(_status(r) for r in responses)
        record_property("race", {"race": "20 concurrent POST /clusters (update of an existing "
                                         "cluster)", "statuses": dict(codes),
                                 "end": f"{codes.get(0, 0)} of 20 unanswered after 20 s"
                                 if codes.get(0) else "all answered"})
        assert codes.get(0, 0) == 0, (f"{codes[0]} of 20 requests got no answer within 20 s "
                                      f"(the server is wedged): {dict(codes)}")
        assert set(codes) <= ALLOWED, codes
        assert codes[201] == 1, codes
        state = cluster_state(stack, cid)
        assert state["complete"], state


def test_one_update_with_a_single_worker_is_answered(record_property):
    """KIP_MAX_WORKERS=1 is a valid setting; one request changing an existing cluster must not
    wait on itself."""
    class OneWorkerStack(Stack):
        def env(self) -> dict:
            return {**super().env(), "KIP_MAX_WORKERS": "1"}
    with OneWorkerStack() as stack:
        _prepare(stack, "one-worker")
        first = _call("POST", f"{stack.api_url}/clusters",
                      json_body={"cluster_name": "one-worker"})
        assert first.status_code == 201, first.text
        update = _burst(stack, [("POST", "/clusters", {"cluster_name": "one-worker",
                                                       "tags": {"team": "payments"}})],
                        timeout=10)[0]
        record_property("race", {"race": "1 update with KIP_MAX_WORKERS=1",
                                 "statuses": {str(_status(update)): 1},
                                 "end": "answered" if update.status_code else
                                 "no answer after 10 s"})
        assert update.status_code != 0, "no answer within 10 s: the request waits on itself"
        assert update.status_code == 201, update.text


@pytest.mark.parametrize("trial", range(6))
def test_concurrent_post_and_delete_end_consistent(stack, trial, record_property):
    """POST and DELETE of one cluster at once: afterwards either everything exists and the record
    says ready, or nothing exists and there is no record."""
    name = f"race-pd-{trial}"
    cid = _prepare(stack, name)
    existing = trial % 2 == 1
    if existing:            # the POST then changes it (new tags), so it needs the lease too
        assert _call("POST", f"{stack.api_url}/clusters",
                     json_body={"cluster_name": name}).status_code == 201
    rnd = random.Random(trial)
    body = {"cluster_name": name, "tags": {"team": "t"}} if existing else {"cluster_name": name}
    post, delete = _burst(stack, [("POST", "/clusters", body, rnd.uniform(0, 0.05)),
                                  ("DELETE", f"/clusters/{name}", None, rnd.uniform(0, 0.05))])
    state = cluster_state(stack, cid)
    record_property("race", {"race": f"POST || DELETE ({'existing' if existing else 'new'} "
                                     f"cluster, trial {trial})",
                             "statuses": {f"POST {_status(post)}": 1,
                                          f"DELETE {_status(delete)}": 1},
                             "end": "complete" if state["complete"] else
                                    "empty" if state["empty"] else "INCONSISTENT"})
    assert _status(post) in {200, 201, 409}, post.text
    assert _status(delete) in {200, 404, 409}, delete.text
    assert state["complete"] or state["empty"], state
    _cleanup(stack, cid)


# ----------------------------------------------------------------------------- in process

def test_a_stale_writer_loses_its_conditional_write(sc, record_property):
    sc.setup("provision")
    reg = registry.Registry(aws.Store(sc.settings), sc.settings, sc.clock)
    cid = sc.cid
    # given writer A read version 2 of the record ...
    a = reg.acquire(cid, "A", None, {"status": "provisioning"})
    read_by_a = reg.save(a, "A")
    # ... and writer B changed it since
    b = reg.acquire(cid, "B", reg.get(cid), {"status": "provisioning"})
    reg.save(b, "B")
    # when A writes on top of what it read, it loses
    with pytest.raises(errors.StaleWrite):
        reg.acquire(cid, "A", read_by_a, {"status": "provisioning"})
    # and a zombie save with an old lease loses too
    with pytest.raises(errors.StaleWrite):
        reg.save(a, "A")
    with pytest.raises(errors.StaleWrite):
        reg.delete(a, "A")
    assert reg.get(cid)["version"] == 4
    record_property("race", {"race": "stale writer (old version)", "statuses": {"StaleWrite": 3}})


def test_an_expired_lease_of_a_crashed_run_is_taken_over(sc, record_property):
    sc.setup("provision")
    # given a run that took the lease and died half way
    sc.crash("provision", "events:PutTargets")
    zombie = sc.record()
    assert zombie["status"] == "provisioning" and zombie["lease_owner"]
    # when another run comes before the lease expires, it is told to wait
    with pytest.raises(errors.InProgress) as waiting:
        sc.run("provision")
    assert waiting.value.retry_after >= 1
    # when it comes after, it takes the lease over and finishes the job
    sc.expire_lease()
    out = sc.run("provision")
    assert out.record["status"] == "ready"
    assert not diff(enumerate_calls()["provision"]["reference"], sc.snapshot())
    # and the dead run, should it wake up, cannot overwrite the record
    reg = registry.Registry(aws.Store(sc.settings), sc.settings, sc.clock)
    with pytest.raises(errors.StaleWrite):
        reg.save(ClusterRecord.model_validate({**zombie, "status": "failed"}), zombie["lease_owner"])
    assert sc.record()["status"] == "ready"
    record_property("race", {"race": "expired lease of a crashed run",
                             "statuses": {"InProgress before expiry": 1,
                                          "taken over after expiry": 1,
                                          "StaleWrite for the dead run": 1}})

"""Standalone measurement: the fan-out sweep and drift repair, in-process moto, with a fixed
latency added to every AWS call (as bench/run.py does). Not a test; prints figures.

  .venv/bin/python bench/sweep_fanout.py --records 1000 --concurrency 5 --latency-ms 50
"""
from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import os
import pathlib
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from tests.support import drive

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.update({"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                   "AWS_DEFAULT_REGION": "eu-west-1", "AWS_REGION": "eu-west-1",
                   "KIP_TABLE_NAME": "kip-bench", "POWERTOOLS_LOG_LEVEL": "ERROR",
                   "KIP_ACCOUNT_ID": "123456789012", "KIP_SETTLE_SECONDS": "0"})
for var in ("AWS_ENDPOINT_URL", "AWS_PROFILE"):
    os.environ.pop(var, None)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clusters", type=int, default=200, help="real clusters (records)")
    ap.add_argument("--concurrency", type=int, default=5)
    ap.add_argument("--latency-ms", type=int, default=50)
    ap.add_argument("--rate", type=float, default=2.0)
    args = ap.parse_args()
    from moto import mock_aws
    import boto3
    with mock_aws():
        from chalicelib import aws
        from chalicelib.usecases import fanout, repair
        from chalicelib.core import drift
        from chalicelib.aws import worklist
        from chalicelib.config import Settings
        from tests.support.drive import make_kit
        from chalicelib.core.spec import ClusterRequest
        base = Settings.from_env()
        aws.reset()
        aws.Store(base).create_table()
        url = worklist.create_work_queue(base, "kip_sweep-bench")
        settings = dataclasses.replace(base, sweep_mode="fanout", sweep_queue_url=url,
                                       sweep_rate=args.rate, sweep_account_rate=args.rate)
        engine = make_kit(settings)
        iam, eks = boto3.client("iam"), boto3.client("eks")
        trust = json.dumps({"Version": "2012-10-17", "Statement": [{"Effect": "Allow",
                            "Principal": {"Service": "eks.amazonaws.com"}, "Action": "sts:AssumeRole"}]})
        role = iam.create_role(RoleName="eks", AssumeRolePolicyDocument=trust)["Role"]["Arn"]
        names = [f"c{i:04d}" for i in range(args.clusters)]
        t_seed = time.perf_counter()
        for i, n in enumerate(names):
            if i and i % 100 == 0:
                print(f"seeded {i} clusters in {time.perf_counter() - t_seed:.0f} s", file=sys.stderr)
            eks.create_cluster(name=n, roleArn=role, resourcesVpcConfig={"subnetIds": ["s"]})
            iam.create_role(RoleName=f"KarpenterController-{n}", AssumeRolePolicyDocument=trust)
            drive.provision(engine, ClusterRequest(cluster_name=n))
        calls = collections.Counter()
        lock_sleep = args.latency_ms / 1000.0

        def slow(model=None, **_):
            calls[f"{model.service_model.service_name}:{model.name}"] += 1
            time.sleep(lock_sleep)
        aws.add_hook("before-call.*.*", slow)
        # -- fan-out: schedule, then workers drain the queue with bounded concurrency
        t0 = time.perf_counter()
        out = fanout.schedule(engine, remaining=lambda: 900.0)
        t_sched = time.perf_counter() - t0
        sqs = boto3.client("sqs")
        pending = []
        while True:
            got = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", [])
            if not got:
                break
            pending.append([(m["MessageId"], m["Body"]) for m in got])
            sqs.delete_message_batch(QueueUrl=url, Entries=[
                {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(got)])
        before = collections.Counter(calls)
        t1 = time.perf_counter()
        with ThreadPoolExecutor(args.concurrency) as pool:
            results = list(pool.map(lambda b: fanout.work(engine, b, lambda: 900.0), pending))
        t_work = time.perf_counter() - t1
        during = calls - before
        work_calls = sum(during.values())
        done = sum(len(r["up_to_date"]) + len(r["repaired"]) for r in results)
        events_calls = sum(v for k, v in during.items() if k.startswith("events:"))
        per_call = {k: round(v / max(done, 1), 2) for k, v in sorted(during.items())}
        print(json.dumps({"records": len(out["queued"]), "schedule_s": round(t_sched, 2),
                          "workers": args.concurrency, "work_s": round(t_work, 2),
                          "reconciled": done, "calls_per_cluster": round(work_calls / max(done, 1), 1),
                          "events_calls_per_cluster": round(events_calls / max(done, 1), 1),
                          "latency_ms": args.latency_ms, "rate_per_s": args.rate,
                          "sweep_s": round(t_sched + t_work, 2),
                          "clusters_per_s": round(done / t_work, 2), "calls": per_call}))
        # -- drift: delete a rule, time the repair from the event
        rec = drive.describe(engine, drive.identity(engine, names[0]))
        rule = rec.names.get("rule") or sorted(rec.names["rules"].values())[0]
        ev = boto3.client("events")
        ev.remove_targets(Rule=rule, Ids=["KarpenterInterruptionQueueTarget"])
        ev.delete_rule(Name=rule)
        t2 = time.perf_counter()
        r = repair.repair(engine, drift.Change("123456789012", "eu-west-1", "rule", rule,
                                               "DeleteRule"))
        print(json.dumps({"drift_repair_s": round(time.perf_counter() - t2, 2), **r}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

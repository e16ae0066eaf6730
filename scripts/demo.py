"""`make demo`: the whole job on the embedded local stack, narrated.

Starts moto + `chalice local`, creates a demo EKS cluster and Karpenter controller role in moto,
provisions through the HTTP API, prints the resources and the Helm values, sends Spot-interruption
and rebalance events through EventBridge and shows them in the queue, simulates EKS DeleteCluster
through the event handler, shows everything gone, and stops the stack.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from scripts import demo_brownfield  # noqa: E402
from scripts.localstack import Stack, port_free, free_port  # noqa: E402

CLUSTER = "demo-payments"
ROLE = f"KarpenterController-{CLUSTER}"
EVENTS_DIR = ROOT.parent / "shared" / "reference" / "events"
FALLBACK_EVENTS = {
    "ec2-spot-interruption-warning.json": {
        "source": "aws.ec2", "detail-type": "EC2 Spot Instance Interruption Warning",
        "detail": {"instance-id": "i-0a1b2c3d4e5f60718", "instance-action": "terminate"}},
    "ec2-rebalance-recommendation.json": {
        "source": "aws.ec2", "detail-type": "EC2 Instance Rebalance Recommendation",
        "detail": {"instance-id": "i-0a1b2c3d4e5f60718"}},
}


def say(title: str) -> None:
    print(f"\n== {title}", flush=True)


def row(*cols: object) -> None:
    print("   " + "  ".join(str(c) for c in cols), flush=True)


def sample(name: str) -> dict:
    path = EVENTS_DIR / name
    return json.loads(path.read_text()) if path.exists() else FALLBACK_EVENTS[name]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--moto-port", type=int, default=5000)
    ap.add_argument("--api-port", type=int, default=8000)
    args = ap.parse_args()
    moto_port = args.moto_port if port_free(args.moto_port) else free_port()
    api_port = args.api_port if port_free(args.api_port) else free_port()

    import boto3
    import requests

    say("Starting the local stack (moto server + chalice local, 127.0.0.1 only)")
    with Stack(moto_port, api_port) as stack, stack.environ():
        row("AWS (moto)", stack.moto_url)
        row("API       ", stack.api_url)
        iam, eks = boto3.client("iam"), boto3.client("eks")
        sqs, events = boto3.client("sqs"), boto3.client("events")

        say(f"Creating EKS cluster {CLUSTER!r} and its Karpenter controller role in moto")
        trust = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow",
                 "Principal": {"Service": "eks.amazonaws.com"}, "Action": "sts:AssumeRole"}]}
        cluster_role = iam.create_role(RoleName="demo-eks-cluster-role",
                                       AssumeRolePolicyDocument=json.dumps(trust))["Role"]["Arn"]
        eks.create_cluster(name=CLUSTER, roleArn=cluster_role,
                           resourcesVpcConfig={"subnetIds": ["subnet-0abc", "subnet-0def"]},
                           tags={"team": "payments"})
        iam.create_role(RoleName=ROLE, AssumeRolePolicyDocument=json.dumps(trust))
        row("cluster", CLUSTER, "| role", ROLE)

        say("POST /clusters  (provision through the HTTP API)")
        started = time.perf_counter()
        resp = requests.post(f"{stack.api_url}/clusters", json={"cluster_name": CLUSTER},
                             timeout=60)
        took = (time.perf_counter() - started) * 1000
        body = resp.json()
        row(f"HTTP {resp.status_code} in {took:.0f} ms, status={body.get('status')!r}, "
            f"{len(body.get('actions', []))} AWS changes")
        if resp.status_code != 201:
            print(json.dumps(body, indent=2))
            return 1
        res = body["resources"]
        say("Resources recorded for the cluster")
        row("queue      ", res["queue"]["name"], res["queue"]["url"])
        row("dead-letter", res["dlq"]["name"])
        for kind, rule in res["rules"].items():
            row("rule       ", f"{rule['name']:<32}", kind, "-> queue" if rule["target"] else "")
        row("IAM policy ", res["policy"]["arn"])
        row("attached to", res["attachment"]["role_arn"], "attached" if
            res["attachment"]["attached"] else "NOT attached")

        say("Karpenter Helm values (paste into your values.yaml)")
        print("   settings:\n     interruptionQueue: "
              + body["karpenter"]["settings.interruptionQueue"])

        resp = requests.post(f"{stack.api_url}/clusters", json={"cluster_name": CLUSTER},
                             timeout=60)
        say("POST /clusters again: idempotent")
        row(f"HTTP {resp.status_code}, changed={resp.json().get('changed')}")

        say("Sending a Spot interruption warning and a rebalance recommendation via EventBridge")
        entries = []
        for name in ("ec2-spot-interruption-warning.json", "ec2-rebalance-recommendation.json"):
            ev = sample(name)
            entries.append({"Source": ev["source"], "DetailType": ev["detail-type"],
                            "Detail": json.dumps(ev["detail"]), "Resources": ev.get("resources", [])})
            row("sent", ev["detail-type"])
        events.put_events(Entries=entries)
        url = res["queue"]["url"]
        got: list = []
        deadline = time.monotonic() + 10
        while len(got) < 2 and time.monotonic() < deadline:
            got += sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10,
                                       WaitTimeSeconds=1).get("Messages", [])
        say(f"Messages in {res['queue']['name']} (what Karpenter would read)")
        for m in got:
            msg = json.loads(m["Body"])
            row(msg.get("detail-type"), "|", msg.get("detail", {}).get("instance-id"))
        if len(got) != 2:
            print(f"   expected 2 messages, got {len(got)}")
            return 1

        say("Consumer health: nobody reads the queue (e.g. a wrong settings.interruptionQueue)")
        import datetime
        sent_at = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=1)
        boto3.client("cloudwatch").put_metric_data(Namespace="AWS/SQS", MetricData=[{
            "MetricName": "ApproximateAgeOfOldestMessage", "Value": 1800, "Timestamp": sent_at,
            "Dimensions": [{"Name": "QueueName", "Value": res["queue"]["name"]}]}])
        row("CloudWatch (as AWS would report it): oldest message waited 1800 s")
        health = requests.get(f"{stack.api_url}/clusters/{CLUSTER}", timeout=30).json()["health"]
        row("GET /clusters/{name} health ->", json.dumps(health))
        if health.get("consumer") != "stale":
            print("   expected the consumer to be reported stale")
            return 1

        import app as service_app
        from chalice.test import Client
        say("A DeleteCluster event while EKS still reports the cluster ACTIVE (late, replayed "
            "or forged)")
        event = sample_delete_event(CLUSTER)
        with Client(service_app.app, stage_name="local") as client:
            result = client.lambda_.invoke("on_eks_event", event).payload
        row("handler returned", json.dumps(result))
        still = sqs.list_queues(QueueNamePrefix="kip-").get("QueueUrls", [])
        row("kip asked EKS first: nothing removed, queues still there:", len(still))
        if result.get("verdict") != "live" or len(still) != 2:
            return 1

        say("Simulating EKS DeleteCluster (CloudTrail event -> the on_eks_event handler)")
        eks.delete_cluster(name=CLUSTER)
        row("EKS: cluster deleted; the same kind of event now finds it gone")
        with Client(service_app.app, stage_name="local") as client:
            result = client.lambda_.invoke("on_eks_event", sample_delete_event(CLUSTER)).payload
        row("handler returned", json.dumps(result))

        say("Everything is gone")
        queues = sqs.list_queues(QueueNamePrefix="kip-").get("QueueUrls", [])
        rules = events.list_rules(NamePrefix="kip-")["Rules"]
        policies = iam.list_policies(Scope="Local", PathPrefix="/kip/")["Policies"]
        attached = iam.list_attached_role_policies(RoleName=ROLE)["AttachedPolicies"]
        record = requests.get(f"{stack.api_url}/clusters/{CLUSTER}", timeout=30)
        row("queues", len(queues), "| rules", len(rules), "| policies", len(policies),
            "| attachments", len(attached), "| GET record ->", record.status_code)
        if queues or rules or policies or attached or record.status_code != 404:
            return 1
        if backfill_member_account(stack.api_url, trust) != 0:
            return 1

        def invoke(function: str, event: dict) -> dict:
            with Client(service_app.app, stage_name="local") as client:
                return client.lambda_.invoke(function, event).payload
        if demo_brownfield.run(stack.api_url, trust, cluster_role, say, row, invoke,
                               sample_event) != 0:
            return 1
        say("Stopping the local stack")
    print("\nDemo finished: provisioned, delivered events, tore down, met three brownfield "
          "clusters. Exit 0.")
    return 0


MEMBER = "210987654321"
MEMBER_CLUSTERS = {"eu-west-1": "shop-eu", "us-west-2": "shop-us"}


def backfill_member_account(api_url: str, trust: dict) -> int:
    """Organization reach: clusters that already exist in a member account (reached through STS,
    role kip-provisioner) in two regions, adopted with POST /backfill (dry run first)."""
    import boto3
    import requests
    say(f"Member account {MEMBER}: existing clusters in two regions (through STS)")
    creds = boto3.client("sts").assume_role(
        RoleArn=f"arn:aws:iam::{MEMBER}:role/kip-provisioner",
        RoleSessionName="demo")["Credentials"]
    member = boto3.session.Session(aws_access_key_id=creds["AccessKeyId"],
                                   aws_secret_access_key=creds["SecretAccessKey"],
                                   aws_session_token=creds["SessionToken"])
    iam = member.client("iam")
    node = iam.create_role(RoleName="demo-eks-cluster-role",
                           AssumeRolePolicyDocument=json.dumps(trust))["Role"]["Arn"]
    for region, name in MEMBER_CLUSTERS.items():
        member.client("eks", region_name=region).create_cluster(
            name=name, roleArn=node, resourcesVpcConfig={"subnetIds": ["subnet-0abc"]})
        iam.create_role(RoleName=f"KarpenterController-{name}",
                        AssumeRolePolicyDocument=json.dumps(trust))
        row("cluster", f"{MEMBER}/{region}/{name}")
    body = {"accounts": [MEMBER], "regions": list(MEMBER_CLUSTERS)}
    for dry_run in (True, False):
        say(f"POST /backfill{'  (dry run: changes nothing)' if dry_run else ''}")
        resp = requests.post(f"{api_url}/backfill", json={**body, "dry_run": dry_run},
                             timeout=60)
        out = resp.json()
        row(f"HTTP {resp.status_code}, counts={out.get('counts')}")
        for c in out.get("clusters", []):
            row(f"{c['cluster']:<36}", c["outcome"], c.get("status") or
                f"{len(c.get('plan') or [])} planned changes")
        if resp.status_code != 200:
            print(json.dumps(out, indent=2))
            return 1
    made = {region: member.client("sqs", region_name=region).list_queues(
        QueueNamePrefix=f"kip-{name}").get("QueueUrls", [])
        for region, name in MEMBER_CLUSTERS.items()}
    say("Queues now in the member account")
    for region, urls in made.items():
        row(region, ", ".join(u.rsplit("/", 1)[-1] for u in urls))
    return 0 if all(made.values()) else 1


def sample_delete_event(cluster: str) -> dict:
    return sample_event("DeleteCluster", cluster)


def sample_event(name: str, cluster: str) -> dict:
    """A CloudTrail EKS ``name`` event (CreateCluster, DeleteCluster) for ``cluster``, made just
    now in the demo account, from the shared samples when they are there."""
    path = EVENTS_DIR / f"cloudtrail-eks-{name.replace('Cluster', '').lower()}-cluster.json"
    event = json.loads(path.read_text()) if path.exists() else {
        "version": "0", "id": "demo", "detail-type": "AWS API Call via CloudTrail",
        "source": "aws.eks", "time": "2026-11-20T10:15:00Z", "resources": [],
        "detail": {"eventSource": "eks.amazonaws.com", "eventName": name}}
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())     # a call made just now
    event["account"] = "123456789012"
    event["region"] = "eu-west-1"
    event["time"] = now
    if name == "CreateCluster":     # the sample's cluster and creation time are not the demo's
        event["detail"].pop("responseElements", None)
    event["detail"].update(recipientAccountId="123456789012", awsRegion="eu-west-1",
                           requestParameters={"name": cluster}, eventTime=now, eventName=name)
    return event


if __name__ == "__main__":
    sys.exit(main())

"""`make bench`: the provisioner against moto server with a fixed latency added to every AWS call.

A report, not a test: it prints a table and writes the same figures to bench/results.json, with a
PASS/MISS beside each target. It exits 0 on a MISS and non-zero only if something broke.

  1. one cluster provision: our engine vs a sequential, Terraform-ordered baseline (bench/baseline.py)
     - wall time, AWS calls (botocore hook), critical-path round-trips
  2. the same for teardown and for a no-op re-provision (write calls must be 0)
  3. a burst of N clusters through the provision use case on a thread pool
  4. paging GET /clusters over N records (the page use case and HTTP via `chalice local`)
  5. cold start (`python -c "import app"`) and the `chalice package` deployment.zip size

Critical-path round-trips are measured, not assumed: the hook timestamps every call (before-call
to after-call) and the critical path is the longest chain of calls in which each one starts after
the previous one ended. With a fixed latency L per call, wall time ~= chain x L.

Only loopback addresses are used; every process started here is stopped before exit.
"""
from __future__ import annotations

import argparse
import collections
import dataclasses
import datetime
import json
import logging
import os
import pathlib
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.parse
import urllib.request
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Callable, Optional

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from scripts.localstack import Stack  # noqa: E402
from chalicelib.config import Settings  # noqa: E402
from tests.support import drive

RESULTS = ROOT / "bench" / "results.json"
VENV_PY = ROOT / ".venv" / "bin" / "python"
VENV_CHALICE = ROOT / ".venv" / "bin" / "chalice"

TARGETS = {
    "provision_speedup": 3.0,        # baseline wall / engine wall, at least
    "provision_round_trips": 5,      # critical path incl. record writes, at most
    "noop_writes": 0,
    "noop_round_trips": 2,
    "burst_seconds": 60.0,
    "import_ms": 300.0,
    "package_mb": 10.0,
}


# ----------------------------------------------------------------------------- call recording

@dataclass
class Call:
    service: str
    op: str
    t0: float
    t1: float
    write: bool
    ok: bool = True


class Recorder:
    """botocore hooks: count every call at before-call, time it until after-call(-error)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.calls: list[Call] = []
        self.started = 0

    def hooks(self) -> tuple:
        return (("before-call.*.*", self.before), ("after-call.*.*", self.after),
                ("after-call-error.*.*", self.after_error))

    def clear(self) -> None:
        with self.lock:
            self.calls, self.started = [], 0

    def before(self, model: Any = None, context: Any = None, **_: Any) -> None:
        if context is not None:
            context["_bench_t0"] = time.perf_counter()
            context["_bench_model"] = model
        with self.lock:
            self.started += 1

    def _done(self, model: Any, context: Any, ok: bool) -> None:
        t1 = time.perf_counter()
        t0 = (context or {}).get("_bench_t0", t1)
        name = model.name if model is not None else "?"
        svc = model.service_model.service_name if model is not None else "?"
        from chalicelib import aws
        with self.lock:
            self.calls.append(Call(svc, name, t0, t1, aws.is_write(name), ok))

    def after(self, model: Any = None, context: Any = None, **_: Any) -> None:
        self._done(model, context, True)

    def after_error(self, context: Any = None, **_: Any) -> None:
        self._done((context or {}).get("_bench_model"), context, False)

    def snapshot(self) -> list[Call]:
        with self.lock:
            return list(self.calls)


def waves(calls: list[Call]) -> list[int]:
    """Each call's position on the longest chain ending with it (1 = first wave)."""
    order = sorted(range(len(calls)), key=lambda i: calls[i].t0)
    depth = [0] * len(calls)
    for k, i in enumerate(order):
        depth[i] = 1 + max((depth[j] for j in order[:k] if calls[j].t1 <= calls[i].t0),
                           default=0)
    return depth


def summarize(calls: list[Call], wall: float, latency_ms: int, t_start: float) -> dict:
    depth = waves(calls)
    by_wave: dict[int, list[str]] = collections.defaultdict(list)
    for c, d in sorted(zip(calls, depth), key=lambda x: x[0].t0):
        by_wave[d].append(f"{c.service}:{c.op}")
    return {
        "wall_ms": round(wall * 1000, 1),
        "calls": len(calls),
        "writes": sum(c.write for c in calls),
        "reads": sum(not c.write for c in calls),
        "errors": sum(not c.ok for c in calls),
        "critical_path": max(depth, default=0),
        "wall_over_latency": round(wall * 1000 / latency_ms, 2) if latency_ms else None,
        "ops": dict(collections.Counter(f"{c.service}:{c.op}" for c in calls)),
        "waves": {str(k): v for k, v in sorted(by_wave.items())},
        "timeline_ms": [[f"{c.service}:{c.op}", round((c.t0 - t_start) * 1000, 1),
                         round((c.t1 - t_start) * 1000, 1)]
                        for c in sorted(calls, key=lambda c: c.t0)],
    }


def timed(rec: Recorder, latency_ms: int, fn: Callable[[], Any]) -> tuple[Any, dict]:
    rec.clear()
    t0 = time.perf_counter()
    value = fn()
    wall = time.perf_counter() - t0
    return value, summarize(rec.snapshot(), wall, latency_ms, t0)


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    k = (len(s) - 1) * p
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0   # KiB on Linux


def say(msg: str) -> None:
    print(msg, flush=True)


# ----------------------------------------------------------------------------- moto fixtures

TRUST = json.dumps({"Version": "2012-10-17", "Statement": [{
    "Effect": "Allow", "Principal": {"Service": "eks.amazonaws.com"},
    "Action": "sts:AssumeRole"}]})


def make_clusters(names: list[str], role_template: str, threads: int = 32) -> None:
    """EKS clusters and their Karpenter controller roles in moto (untimed, unhooked clients)."""
    import boto3
    sess = boto3.session.Session()
    iam, eks = sess.client("iam"), sess.client("eks")
    try:
        cluster_role = iam.create_role(RoleName="bench-eks-cluster-role",
                                       AssumeRolePolicyDocument=TRUST)["Role"]["Arn"]
    except iam.exceptions.EntityAlreadyExistsException:
        cluster_role = iam.get_role(RoleName="bench-eks-cluster-role")["Role"]["Arn"]

    def one(name: str) -> None:
        eks.create_cluster(name=name, roleArn=cluster_role,
                           resourcesVpcConfig={"subnetIds": ["subnet-0abc", "subnet-0def"]},
                           tags={"team": "bench"})
        iam.create_role(RoleName=role_template.format(cluster_name=name),
                        AssumeRolePolicyDocument=TRUST)

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(one, names))


# ----------------------------------------------------------------------------- 1 + 2: one cluster

def bench_single(args: argparse.Namespace, rec: Recorder, out: dict) -> dict:
    """Provision, no-op re-provision and teardown: engine vs sequential baseline.
    Returns a real record (template for the list benchmark)."""
    import boto3

    from bench.baseline import SequentialBaseline, footprint
    from chalicelib import aws
    from chalicelib.config import get_settings
    from tests.support.drive import make_kit
    from chalicelib.core.spec import ClusterRequest

    settings = get_settings()
    reps = args.reps
    eng_names = [f"bench-e{i}" for i in range(reps)]
    base_names = [f"bench-b{i}" for i in range(reps)]
    wide = args.what_if_workers if args.what_if_workers > settings.max_workers else 0
    wide_names = [f"bench-w{i}" for i in range(reps)] if wide else []
    make_clusters(["bench-warm-e", "bench-warm-b"] + eng_names + base_names + wide_names,
                  settings.role_template)

    engine = make_kit(settings)
    account = aws.own_account(settings)              # resolved once, as in a warm Lambda
    base = SequentialBaseline(settings, account, hooks=rec.hooks())
    strict = SequentialBaseline(settings, account, hooks=rec.hooks(), writes_only=True)
    strict_names = [f"bench-s{i}" for i in range(reps)]
    make_clusters(strict_names, settings.role_template)

    # warm-up (untimed): load botocore models, build clients, open connections on both sides
    drive.provision(engine, ClusterRequest(cluster_name="bench-warm-e"))
    drive.provision(engine, ClusterRequest(cluster_name="bench-warm-e"))
    drive.teardown(engine, drive.identity(engine, "bench-warm-e"))
    st = base.provision("bench-warm-b")
    base.check(st)
    base.teardown(st)

    samples: dict[str, list[dict]] = collections.defaultdict(list)
    template: Optional[dict] = None
    for i in range(reps):
        e, b = eng_names[i], base_names[i]
        o, s = timed(rec, args.latency_ms, lambda: drive.provision(engine, ClusterRequest(cluster_name=e)))
        if o.record.get("status") != "ready":
            raise RuntimeError(f"engine provision of {e} ended {o.record.get('status')!r}")
        samples["engine_provision"].append(s)
        template = template or o.record.item()
        state, s = timed(rec, args.latency_ms, lambda: base.provision(b))
        samples["baseline_provision"].append(s)
        _, s = timed(rec, args.latency_ms, lambda: strict.provision(strict_names[i]))
        samples["writes_only_provision"].append(s)

        if i == 0:   # both sides built the same resources (untimed)
            fe = footprint(boto3.session.Session(), settings, account, e)
            fb = footprint(boto3.session.Session(), settings, account, b)
            out["same_resources"] = fe == fb
            if fe != fb:
                out["footprint_diff"] = {"engine": fe, "baseline": fb}

        o, s = timed(rec, args.latency_ms, lambda: drive.provision(engine, ClusterRequest(cluster_name=e)))
        s["changed"] = o.changed
        samples["engine_noop"].append(s)
        ok, s = timed(rec, args.latency_ms, lambda: base.check(state))
        if not ok:
            raise RuntimeError(f"baseline check of {b} found differences")
        samples["baseline_noop"].append(s)

        o, s = timed(rec, args.latency_ms, lambda: drive.teardown(engine, drive.identity(engine, e)))
        samples["engine_teardown"].append(s)
        _, s = timed(rec, args.latency_ms, lambda: base.teardown(state))
        samples["baseline_teardown"].append(s)

    # what-if (diagnosis only): the same engine with a pool as wide as its widest read stage
    if wide:
        out["what_if_max_workers"] = wide
        wide_engine = make_kit(dataclasses.replace(settings, max_workers=wide))
        for w in wide_names:
            o, s = timed(rec, args.latency_ms,
                         lambda: drive.provision(wide_engine, ClusterRequest(cluster_name=w)))
            samples["whatif_provision"].append(s)
            o, s = timed(rec, args.latency_ms,
                         lambda: drive.provision(wide_engine, ClusterRequest(cluster_name=w)))
            s["changed"] = o.changed
            samples["whatif_noop"].append(s)
            _, s = timed(rec, args.latency_ms,
                         lambda: drive.teardown(wide_engine, drive.identity(wide_engine, w)))
            samples["whatif_teardown"].append(s)

    for key, runs in samples.items():
        walls = [r["wall_ms"] for r in runs]
        mid = sorted(runs, key=lambda r: r["wall_ms"])[len(runs) // 2]   # the median run
        out[key] = {
            "wall_ms_median": round(statistics.median(walls), 1),
            "wall_ms_samples": walls,
            "calls": mid["calls"], "writes": mid["writes"], "reads": mid["reads"],
            "errors": mid["errors"],
            "critical_path": mid["critical_path"],
            "critical_path_samples": [r["critical_path"] for r in runs],
            "wall_over_latency": round(statistics.median(walls) / args.latency_ms, 2)
            if args.latency_ms else None,
            "ops": mid["ops"], "waves": mid["waves"], "timeline_ms": mid["timeline_ms"],
            "writes_max": max(r["writes"] for r in runs),
        }
        if "changed" in mid:
            out[key]["changed"] = any(r["changed"] for r in runs)
    out["provision_speedup_vs_writes_only"] = round(
        out["writes_only_provision"]["wall_ms_median"] / out["engine_provision"]["wall_ms_median"], 2)
    for what in ("provision", "noop", "teardown"):
        e, b = out[f"engine_{what}"], out[f"baseline_{what}"]
        out[f"{what}_speedup"] = round(b["wall_ms_median"] / e["wall_ms_median"], 2)
        if f"whatif_{what}" in out:
            out[f"whatif_{what}_speedup"] = round(
                b["wall_ms_median"] / out[f"whatif_{what}"]["wall_ms_median"], 2)
    assert template is not None
    return template


# ----------------------------------------------------------------------------- 3: burst

def bench_burst(args: argparse.Namespace, rec: Recorder, out: dict) -> None:
    from chalicelib import aws
    from chalicelib.config import get_settings
    from chalicelib.errors import KipError
    from tests.support.drive import make_kit
    from chalicelib.core.spec import ClusterRequest

    settings = get_settings()
    names = [f"burst-{i:04d}" for i in range(args.burst)]
    t = time.perf_counter()
    make_clusters(names, settings.role_template)
    out["setup_s"] = round(time.perf_counter() - t, 2)

    local = threading.local()
    engines: list = []
    shared = make_kit(settings) if args.burst_engine == "shared" else None
    aws.own_account(settings)

    def engine() -> Any:
        if shared is not None:
            return shared
        if not hasattr(local, "engine"):
            local.engine = make_kit(settings)
            engines.append(local.engine)
        return local.engine

    def one(name: str) -> tuple[str, float, Optional[str]]:
        t0 = time.perf_counter()
        try:
            o = drive.provision(engine(), ClusterRequest(cluster_name=name))
            status, err = o.record.get("status"), None
        except KipError as exc:
            status, err = "error", f"{exc.code}: {exc.message}"[:200]
        except Exception as exc:  # noqa: BLE001 - counted and reported, not hidden
            status, err = "error", f"{type(exc).__name__}: {exc}"[:200]
        return status, time.perf_counter() - t0, err

    rss_before = rss_mb()
    rec.clear()
    t0 = time.perf_counter()
    with ThreadPoolExecutor(args.burst_threads, thread_name_prefix="burst") as pool:
        results = list(pool.map(one, names))
    wall = time.perf_counter() - t0
    calls = rec.snapshot()
    for e in engines + ([shared] if shared else []):
        pool_ = getattr(e, "_pool", None)
        if pool_ is not None:
            pool_.shutdown(wait=False)
    lat = [r[1] * 1000 for r in results]
    statuses = collections.Counter(r[0] for r in results)
    errors = [r[2] for r in results if r[2]]
    out.update({
        "clusters": args.burst, "threads": args.burst_threads, "engine_mode": args.burst_engine,
        "wall_s": round(wall, 2), "clusters_per_s": round(args.burst / wall, 2),
        "per_cluster_ms_p50": round(pct(lat, 0.5), 1), "per_cluster_ms_p95": round(pct(lat, 0.95), 1),
        "per_cluster_ms_max": round(max(lat), 1),
        "statuses": dict(statuses), "errors": errors[:10], "error_count": len(errors),
        "calls": len(calls), "calls_per_cluster": round(len(calls) / args.burst, 1),
        "aws_call_errors": sum(not c.ok for c in calls),
        "peak_rss_mb_before": round(rss_before, 1), "peak_rss_mb": round(rss_mb(), 1),
    })


# ----------------------------------------------------------------------------- 4: list

def seed_records(template: dict, n: int, table: str, threads: int = 16) -> float:
    """n records shaped like ``template`` (a real one), straight into the table."""
    import boto3
    from boto3.dynamodb.types import TypeSerializer

    from chalicelib.core import naming

    ser = TypeSerializer()
    old = template["cluster_name"]
    body = json.dumps({k: v for k, v in template.items()
                       if k not in ("lease_owner", "lease_expires")}, default=str)
    statuses = ["ready"] * 90 + ["waiting_for_role"] * 5 + ["failed"] * 3 + ["provisioning"] * 2

    def rec(i: int) -> dict:
        name = f"fleet-{i:05d}"
        item = json.loads(body.replace(old, name))
        cid = naming.ClusterId(item["account_id"], item["region"], name)
        item.update(id=cid.key, cluster_name=name, status=statuses[i % len(statuses)],
                    version=2 + i % 3)
        item = json.loads(json.dumps(item), parse_float=Decimal)
        return {"PutRequest": {"Item": {k: ser.serialize(v) for k, v in item.items()
                                        if v is not None}}}

    ddb = boto3.session.Session().client("dynamodb")
    batches = [[rec(i) for i in range(j, min(j + 25, n))] for j in range(0, n, 25)]

    def write(batch: list) -> None:
        req = {table: batch}
        for _ in range(10):
            r = ddb.batch_write_item(RequestItems=req)
            req = r.get("UnprocessedItems") or {}
            if not req:
                return
        raise RuntimeError("batch_write_item left unprocessed items after 10 tries")

    t = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(write, batches))
    return time.perf_counter() - t


class ServerClock:
    """Per thread: time from sending a request to having its bytes (before-send ->
    before-parse), i.e. the moto server's share of a call, latency included."""

    def __init__(self) -> None:
        self.local = threading.local()

    def hooks(self) -> tuple:
        return (("before-send.dynamodb.*", self.sent), ("before-parse.dynamodb.*", self.got))

    def sent(self, **_: Any) -> None:
        self.local.t = time.perf_counter()

    def got(self, **_: Any) -> None:
        self.local.total = getattr(self.local, "total", 0.0) + time.perf_counter() - getattr(
            self.local, "t", time.perf_counter())

    def take(self) -> float:
        total, self.local.total = getattr(self.local, "total", 0.0), 0.0
        return total


def page_through(fetch: Callable[[Optional[str]], tuple[int, Optional[str]]],
                 max_pages: Optional[int] = None, clock: Optional[ServerClock] = None) -> dict:
    times, server, total, token, pages = [], [], 0, None, 0
    while True:
        if clock:
            clock.take()
        t = time.perf_counter()
        count, token = fetch(token)
        times.append((time.perf_counter() - t) * 1000)
        if clock:
            server.append(clock.take() * 1000)
        total, pages = total + count, pages + 1
        if not token or (max_pages and pages >= max_pages):
            break
    out = {"pages": pages, "items": total, "complete": not token,
           "page_ms_median": round(statistics.median(times), 1),
           "page_ms_p95": round(pct(times, 0.95), 1), "page_ms_max": round(max(times), 1),
           "total_s": round(sum(times) / 1000, 2)}
    if clock:
        client = [a - b for a, b in zip(times, server)]
        out.update(server_ms_median=round(statistics.median(server), 1),
                   client_ms_median=round(statistics.median(client), 1),
                   client_ms_p95=round(pct(client, 0.95), 1))
    return out


def bench_list(args: argparse.Namespace, template: dict, out: dict) -> None:
    from chalicelib import aws
    from chalicelib.config import get_settings
    from tests.support.drive import make_kit

    latency = args.list_latency_ms
    out.update(records=args.records, latency_ms=latency,
               note=f"separate moto server (latency {latency} ms) + chalice local; "
                    "records seeded untimed with batch_write_item")
    with Stack(with_api=True, latency_ms=latency) as stack, stack.environ():
        aws.reset()
        clock = ServerClock()
        for event_name, handler in clock.hooks():
            aws.add_hook(event_name, handler)
        settings = get_settings()
        out["seed_s"] = round(seed_records(template, args.records, settings.table_name), 2)
        engine = make_kit(settings)
        drive.page(engine, limit=1)                                      # warm the client

        def via_engine(status: Optional[str]) -> Callable:
            def fetch(token: Optional[str]) -> tuple[int, Optional[str]]:
                items, nxt = drive.page(engine, limit=100, next_token=token, status=status)
                return len(items), nxt
            return fetch

        def via_http(token: Optional[str]) -> tuple[int, Optional[str]]:
            q = {"limit": "100", **({"next_token": token} if token else {})}
            url = f"{stack.api_url}/clusters?{urllib.parse.urlencode(q)}"
            with urllib.request.urlopen(url, timeout=120) as r:
                body = json.loads(r.read())
            return len(body["items"]), body.get("next_token")

        out["engine"] = page_through(via_engine(None), clock=clock)
        out["engine_status_ready"] = page_through(via_engine("ready"), args.filtered_pages,
                                                  clock=clock)
        with urllib.request.urlopen(f"{stack.api_url}/clusters?limit=1", timeout=120) as r:
            r.read()                                              # chalice local: first request
        out["http"] = page_through(via_http, args.http_pages)
    if out["engine"]["items"] != args.records:
        raise RuntimeError(f"Engine.list paged over {out['engine']['items']} of "
                           f"{args.records} records")
    if out["http"]["complete"] and out["http"]["items"] != args.records:
        raise RuntimeError(f"HTTP paging saw {out['http']['items']} of {args.records} records")


# ----------------------------------------------------------------------------- 5: cold start

BENCH_ACCOUNTS = "123456789012"


def lambda_env() -> dict:
    """The prod stage's environment (from .chalice/config.json), fake credentials, no endpoint."""
    cfg = json.loads((ROOT / ".chalice" / "config.json").read_text())
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "KIP_", "POWERTOOLS_"))}
    env.update(cfg.get("environment_variables", {}))
    env.update(cfg.get("stages", {}).get("prod", {}).get("environment_variables", {}))
    env.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
               AWS_DEFAULT_REGION="eu-west-1", AWS_REGION="eu-west-1")
    env.setdefault("KIP_ALLOWED_ACCOUNTS", BENCH_ACCOUNTS)   # what an operator sets per stage
    env.pop("PYTHONPATH", None)
    return env


def bench_cold_start(args: argparse.Namespace, out: dict) -> None:
    env = lambda_env()

    def run(code: str, *flags: str) -> tuple[float, str]:
        t = time.perf_counter()
        p = subprocess.run([str(VENV_PY), *flags, "-c", code], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=120)
        took = (time.perf_counter() - t) * 1000
        if p.returncode != 0:
            raise RuntimeError(f"python -c {code!r} failed: {p.stderr[-800:]}")
        return took, p.stderr

    run("import app")                                   # populate __pycache__ first
    times = [run("import app")[0] for _ in range(args.import_runs)]
    bare = [run("pass")[0] for _ in range(5)]
    _, importtime = run("import app", "-X", "importtime")
    top: dict[str, int] = {}
    children: dict[str, int] = {}
    for line in importtime.splitlines():                # children print before their parent
        raw = line[len("import time:"):].split("|") if line.startswith("import time:") else []
        if len(raw) != 3 or not raw[1].strip().isdigit():
            continue
        depth = (len(raw[2]) - len(raw[2].lstrip()) - 1) // 2
        mod, cum = raw[2].strip(), int(raw[1])
        if depth == 1:
            children[mod] = cum
        elif depth == 0:
            if mod == "app":                            # `app` and what it imports directly
                top = {"app (total)": cum, **children}
            children = {}
    heaviest = sorted(top.items(), key=lambda kv: -kv[1])[:8]
    out.update({
        "runs": args.import_runs, "import_app_ms_median": round(statistics.median(times), 1),
        "import_app_ms_min": round(min(times), 1), "import_app_ms_max": round(max(times), 1),
        "python_bare_ms_median": round(statistics.median(bare), 1),
        "heaviest_imports_ms": {m: round(us / 1000, 1) for m, us in heaviest},
        "env": "prod stage environment from .chalice/config.json, fake credentials",
    })


def bench_package(out: dict) -> None:
    env = dict(os.environ)
    env.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    env.setdefault("KIP_ALLOWED_ACCOUNTS", BENCH_ACCOUNTS)   # deployed stages require the list
    env.pop("AWS_ENDPOINT_URL", None)
    with tempfile.TemporaryDirectory(prefix="kip-bench-pkg-") as tmp:
        dest = pathlib.Path(tmp) / "package"
        t = time.perf_counter()
        # what `make package` ships: chalice package, then scripts/package.py leaves boto3 and
        # botocore to the Lambda runtime and finishes the template
        p = subprocess.run([sys.executable, str(ROOT / "scripts" / "package.py"), "--build",
                            "--stage", "prod", str(dest)], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=900)
        took = time.perf_counter() - t
        if p.returncode != 0:
            raise RuntimeError(f"make package failed: {(p.stderr or p.stdout)[-800:]}")
        zpath = dest / "deployment.zip"
        size = zpath.stat().st_size
        parts: collections.Counter = collections.Counter()
        unzipped = 0
        with zipfile.ZipFile(zpath) as z:
            for info in z.infolist():
                parts[info.filename.split("/")[0]] += info.compress_size
                unzipped += info.file_size
    out.update({"deployment_zip_mb": round(size / 1e6, 2), "deployment_zip_bytes": size,
                "unzipped_mb": round(unzipped / 1e6, 2), "package_s": round(took, 1),
                "largest_entries_mb": {k: round(v / 1e6, 2) for k, v in parts.most_common(6)}})


# ----------------------------------------------------------------------------- report

class Report:
    def __init__(self) -> None:
        self.rows: list[tuple[str, str, str, str]] = []   # (metric, value, target, verdict)
        self.checks: list[dict] = []
        self.current = ""

    def section(self, title: str) -> None:
        self.rows.append((f"[{title}]", "", "", ""))
        self.current = title.split("  (")[0].split(" (")[0]

    def row(self, metric: str, value: Any, target: str = "", ok: Optional[bool] = None) -> None:
        verdict = "" if ok is None else ("PASS" if ok else "MISS")
        self.rows.append((metric, str(value), target, verdict))
        if ok is not None:
            self.checks.append({"metric": f"{self.current}: {metric}", "value": value,
                                "target": target, "result": verdict})

    def render(self) -> str:
        w = [max(len(r[i]) for r in self.rows) for i in range(4)]
        lines = [f"{'metric':<{w[0]}}  {'value':>{w[1]}}  {'target':<{w[2]}}  result",
                 "-" * (sum(w) + 14)]
        for m, v, t, r in self.rows:
            if m.startswith("[") and not v:
                lines.append("")
                lines.append(m)
                continue
            lines.append(f"{m:<{w[0]}}  {v:>{w[1]}}  {t:<{w[2]}}  {r}")
        return "\n".join(lines)


def build_report(res: dict, args: argparse.Namespace) -> Report:
    rep = Report()
    lat = args.latency_ms
    one = res.get("single")
    if one and "engine_provision" in one:
        for what, title in (("provision", "1. one cluster provision"),
                            ("teardown", "2a. teardown"),
                            ("noop", "2b. no-op re-provision")):
            e, b = one[f"engine_{what}"], one[f"baseline_{what}"]
            rep.section(f"{title}  (median of {args.reps}; latency {lat} ms/call)")
            rep.row("engine wall ms", e["wall_ms_median"])
            rep.row("baseline (sequential, Terraform order) wall ms", b["wall_ms_median"])
            sp = one[f"{what}_speedup"]
            if what == "provision":
                rep.row("speedup (baseline / engine)", f"{sp}x",
                        f">= {TARGETS['provision_speedup']:g}x",
                        sp >= TARGETS["provision_speedup"])
                w = one["writes_only_provision"]
                rep.row("stricter baseline: its writes only, no reads (wall ms / calls)",
                        f"{w['wall_ms_median']} / {w['calls']}")
                rep.row("speedup vs the writes-only baseline",
                        f"{one['provision_speedup_vs_writes_only']}x")
            else:
                rep.row("speedup (baseline / engine)", f"{sp}x")
            rep.row("engine AWS calls (writes / reads)",
                    f"{e['calls']} ({e['writes']}/{e['reads']})")
            rep.row("baseline AWS calls (writes / reads)",
                    f"{b['calls']} ({b['writes']}/{b['reads']})")
            cp = e["critical_path"]
            rep.row("engine critical path, measured (round-trips)", cp,
                    f"<= {TARGETS['provision_round_trips']}" if what == "provision" else
                    f"<= {TARGETS['noop_round_trips']}" if what == "noop" else "",
                    cp <= TARGETS["provision_round_trips"] if what == "provision" else
                    cp <= TARGETS["noop_round_trips"] if what == "noop" else None)
            if lat:
                rep.row("engine wall / latency", e["wall_over_latency"])
            rep.row("baseline critical path, measured", b["critical_path"])
            if what == "noop":
                rep.row("engine write calls on no-op", e["writes_max"],
                        f"== {TARGETS['noop_writes']}", e["writes_max"] == TARGETS["noop_writes"])
                rep.row("engine reported changed", e.get("changed"))
        rep.row("engine and baseline built the same resources", one.get("same_resources"))
        if "whatif_provision" in one:
            rep.section(f"what-if, diagnosis only: KIP_MAX_WORKERS={one['what_if_max_workers']} "
                        f"(shipped default: {Settings().max_workers})")
            for what in ("provision", "noop", "teardown"):
                w = one[f"whatif_{what}"]
                rep.row(f"{what}: wall ms / critical path / speedup",
                        f"{w['wall_ms_median']} / {w['critical_path']} / "
                        f"{one[f'whatif_{what}_speedup']}x")
    burst = res.get("burst")
    if burst and "wall_s" in burst:
        rep.section(f"3. burst of {burst['clusters']} clusters ({burst['threads']} threads, "
                    f"{burst['engine_mode']} engine)")
        rep.row("total s", burst["wall_s"], f"<= {TARGETS['burst_seconds']:g} s",
                burst["wall_s"] <= TARGETS["burst_seconds"] and not burst["error_count"])
        rep.row("clusters / s", burst["clusters_per_s"])
        rep.row("per-cluster ms p50 / p95 / max",
                f"{burst['per_cluster_ms_p50']} / {burst['per_cluster_ms_p95']} / "
                f"{burst['per_cluster_ms_max']}")
        rep.row("statuses", ", ".join(f"{k}={v}" for k, v in burst["statuses"].items()))
        rep.row("AWS calls (per cluster)", f"{burst['calls']} ({burst['calls_per_cluster']})")
        rep.row("peak RSS MB (before burst -> after)",
                f"{burst['peak_rss_mb_before']} -> {burst['peak_rss_mb']}")
    lst = res.get("list")
    if lst and "engine" in lst:
        rep.section(f"4. GET /clusters over {lst['records']} records, limit=100 "
                    f"(separate moto, latency {lst['latency_ms']} ms)")
        for key, label in (("engine", "Engine.list"),
                           ("engine_status_ready", "Engine.list status=ready"),
                           ("http", "HTTP GET via chalice local")):
            r = lst[key]
            rep.row(f"{label}: page ms median / p95", f"{r['page_ms_median']} / {r['page_ms_p95']}")
            if "server_ms_median" in r:
                rep.row("  of which waiting on moto / client-side (median)",
                        f"{r['server_ms_median']} / {r['client_ms_median']}")
            rep.row(f"  pages, items{'' if r['complete'] else ' (first pages only)'}",
                    f"{r['pages']}, {r['items']}")
    cold = res.get("cold_start")
    if cold and "import_app_ms_median" in cold:
        rep.section("5. cold start and package")
        rep.row(f"python -c 'import app' ms, median of {cold['runs']}",
                cold["import_app_ms_median"], f"<= {TARGETS['import_ms']:g} ms",
                cold["import_app_ms_median"] <= TARGETS["import_ms"])
        rep.row("  of which bare interpreter (python -c pass)", cold["python_bare_ms_median"])
    pkg = res.get("package")
    if pkg and "deployment_zip_mb" in pkg:
        if not (cold and "import_app_ms_median" in cold):
            rep.section("5. package")
        rep.row("chalice package deployment.zip MB", pkg["deployment_zip_mb"],
                f"<= {TARGETS['package_mb']:g} MB", pkg["deployment_zip_mb"] <= TARGETS["package_mb"])
    return rep


def diagnostics(res: dict) -> list[str]:
    out = []
    one = res.get("single") or {}
    for key in ("engine_provision", "engine_noop", "engine_teardown"):
        if key in one:
            out.append(f"{key}: waves on the measured critical path (calls that ran together):")
            for wave, ops in one[key]["waves"].items():
                counts = collections.Counter(ops)
                out.append(f"  wave {wave}: " + ", ".join(
                    f"{op}{'x' + str(n) if n > 1 else ''}" for op, n in counts.items()))
    cold = res.get("cold_start") or {}
    if cold.get("heaviest_imports_ms"):
        out.append("heaviest top-level imports of `import app` (cumulative ms, -X importtime): "
                   + ", ".join(f"{m} {ms}" for m, ms in cold["heaviest_imports_ms"].items()))
    pkg = res.get("package") or {}
    if pkg.get("largest_entries_mb"):
        out.append("largest deployment.zip entries (compressed MB): " + ", ".join(
            f"{m} {mb}" for m, mb in pkg["largest_entries_mb"].items()))
    return out


# ----------------------------------------------------------------------------- main

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--latency-ms", type=int, default=50,
                    help="latency moto adds to every AWS call (default 50)")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: burst 20, 1000 records, fewer repetitions")
    ap.add_argument("--reps", type=int, help="single-cluster repetitions (default 5; quick 2)")
    ap.add_argument("--burst", type=int, help="clusters in the burst (default 200; quick 20)")
    ap.add_argument("--burst-threads", type=int, default=20,
                    help="concurrent provisions in the burst (default 20, the prod stage's "
                         "reserved Lambda concurrency)")
    ap.add_argument("--burst-engine", choices=("per-thread", "shared"), default="per-thread",
                    help="one Engine per thread (like Lambda containers, default) or one shared")
    ap.add_argument("--records", type=int, help="records for the list benchmark "
                                                "(default 10000; quick 1000)")
    ap.add_argument("--list-latency-ms", type=int,
                    help="latency of the list benchmark's moto (default: --latency-ms)")
    ap.add_argument("--what-if-workers", type=int, default=16,
                    help="also run the single-cluster cycle with this KIP_MAX_WORKERS, for "
                         "diagnosis (default 16; 0 = off)")
    ap.add_argument("--http-pages", type=int, default=20,
                    help="pages fetched over HTTP (default 20; 0 = all)")
    ap.add_argument("--filtered-pages", type=int, default=10,
                    help="pages fetched with status=ready (default 10; 0 = all)")
    ap.add_argument("--import-runs", type=int, help="`import app` runs (default 15; quick 5)")
    ap.add_argument("--skip", default="", help="comma list of sections to skip: "
                                               "single,burst,list,cold,package")
    ap.add_argument("--output", default=str(RESULTS))
    args = ap.parse_args()
    args.reps = args.reps or (2 if args.quick else 5)
    args.burst = args.burst or (20 if args.quick else 200)
    args.records = args.records or (1000 if args.quick else 10000)
    args.import_runs = args.import_runs or (5 if args.quick else 15)
    args.list_latency_ms = args.latency_ms if args.list_latency_ms is None else args.list_latency_ms
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}

    logging.basicConfig(level=logging.ERROR)
    logging.getLogger("urllib3").setLevel(logging.ERROR)     # "pool is full" under the burst

    started = time.perf_counter()
    res: dict[str, Any] = {
        "meta": {"cpu_count": os.cpu_count(), "latency_ms": args.latency_ms,
                 "quick": args.quick, "python": platform.python_version(),
                 "platform": platform.platform(),
                 "started_at": datetime.datetime.now(datetime.timezone.utc).isoformat(
                     timespec="seconds"),
                 "reps": args.reps, "burst": args.burst, "records": args.records,
                 "loadavg_at_start": [round(x, 2) for x in os.getloadavg()]},
        "targets": TARGETS,
    }
    failures: list[str] = []

    def section(name: str, fn: Callable[[dict], Any]) -> Any:
        if name in skip or name.split("_")[0] in skip:
            return None
        say(f"... {name}")
        t = time.perf_counter()
        res[name] = {}
        try:
            value = fn(res[name])
            res[name]["section_s"] = round(time.perf_counter() - t, 1)
            return value
        except Exception as exc:  # noqa: BLE001 - reported, and the run exits non-zero
            failures.append(f"{name}: {type(exc).__name__}: {exc}")
            res[name]["error"] = traceback.format_exc()
            say(f"!!! {name} broke: {type(exc).__name__}: {exc}")
            traceback.print_exc()
            return None

    template: Optional[dict] = None
    rec = Recorder()
    if not {"single", "burst"} <= skip:
        say(f"starting moto server on 127.0.0.1 with {args.latency_ms} ms per AWS call")
        try:
            with Stack(with_api=False, latency_ms=args.latency_ms) as stack, stack.environ():
                from chalicelib import aws
                aws.reset()
                for event_name, handler in rec.hooks():
                    aws.add_hook(event_name, handler)
                template = section("single", lambda o: bench_single(args, rec, o))
                section("burst", lambda o: bench_burst(args, rec, o))
                aws.reset()
        except Exception as exc:  # noqa: BLE001
            failures.append(f"stack: {type(exc).__name__}: {exc}")
            traceback.print_exc()
    if "list" not in skip:
        if template is None:   # the single section was skipped or broke: a plausible record
            template = {"id": "123456789012/eu-west-1/tmpl", "account_id": "123456789012",
                        "region": "eu-west-1", "cluster_name": "tmpl", "status": "ready",
                        "version": 2, "names": {"queue": "kip-tmpl"}}
        section("list", lambda o: bench_list(args, template, o))
    section("cold_start", lambda o: bench_cold_start(args, o))
    section("package", lambda o: bench_package(o))

    res["meta"]["total_runtime_s"] = round(time.perf_counter() - started, 1)
    res["meta"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    rep = build_report(res, args)
    res["checks"] = rep.checks
    res["failures"] = failures

    say("")
    say(f"kip benchmark  (cores: {os.cpu_count()}, injected latency: {args.latency_ms} ms per AWS "
        f"call{', QUICK' if args.quick else ''})")
    say(rep.render())
    say("")
    for line in diagnostics(res):
        say(line)
    misses = [c["metric"] for c in rep.checks if c["result"] == "MISS"]
    say("")
    say(f"targets: {len(rep.checks) - len(misses)} PASS, {len(misses)} MISS"
        + (f" ({'; '.join(misses)})" if misses else ""))
    say(f"total runtime {res['meta']['total_runtime_s']} s")

    out_path = pathlib.Path(args.output)
    tmp = out_path.with_name(out_path.name + ".tmp")
    tmp.write_text(json.dumps(res, indent=2, default=str) + "\n")
    tmp.replace(out_path)
    say(f"wrote {out_path.relative_to(ROOT) if out_path.is_relative_to(ROOT) else out_path}")
    if failures:
        say("BROKEN: " + " | ".join(failures))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Chalice entry points only: routes, the EKS event handler and the schedule.

Parse input -> call a use case -> map domain errors to HTTP. No boto3 here; the engine (and with
it boto3 and pydantic) is imported on first use, not at import time, to keep cold starts small.
"""
from __future__ import annotations

import functools
import json
import time
import warnings
from typing import Any, Callable, Optional

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit
from chalice import Chalice, ConvertToMiddleware, CORSConfig, IAMAuthorizer, Rate, Response
from chalice.app import Request

from chalicelib import errors
from chalicelib.config import get_settings, with_external_id
from chalicelib.core.policies import EKS_EVENT_PATTERN, drift_event_pattern

settings = get_settings()
app = Chalice(app_name="kip")
logger = Logger(service="kip")
metrics = Metrics(namespace="KarpenterInterruptionProvisioner", service="kip")
# Reads (GET routes) publish no metric; that is expected, not worth a warning per request.
warnings.filterwarnings("ignore", "No application metrics to publish", UserWarning)
_tracing: Any = None


def tracing(event: Any, get_response: Callable[..., Any]) -> Any:
    """Powertools Tracer, built on the first invocation: the X-Ray SDK it loads costs ~200 ms,
    which would otherwise sit in every `import app` (tools, tests, packaging) too."""
    global _tracing
    if _tracing is None:
        from aws_lambda_powertools import Tracer
        _tracing = ConvertToMiddleware(Tracer(service="kip").capture_lambda_handler)
    return _tracing(event, get_response)


def refuse_unconfigured(event: Any, get_response: Callable[..., Any]) -> Any:
    """Fail closed at run time: a deployed stage (KIP_REQUIRE_ACCOUNT_LIST) without an account
    list or org id answers every invocation with a refusal that names the settings. The lists are
    stack parameters, so packaging (which imports this module) works without them."""
    refusal = settings.reach_refusal or settings.authz_refusal
    if refusal is None:
        return get_response(event)
    logger.error(f"kip is not configured: {refusal}", extra={"code": "NotConfigured"})
    exc = errors.KipError(f"kip is not configured: {refusal}")
    exc.code, exc.status = "NotConfigured", 503
    if isinstance(event, Request):
        return error_response(exc)
    raise exc       # an event: Lambda retries it, then keeps it (failed-events queue / DLQ)


# Powertools' decorators take (event, context); Chalice handlers take one argument, so they are
# registered as middleware that Chalice runs around every handler.
app.register_middleware(refuse_unconfigured)
app.register_middleware(ConvertToMiddleware(
    functools.partial(logger.inject_lambda_context, clear_state=True)))
app.register_middleware(ConvertToMiddleware(metrics.log_metrics))
app.register_middleware(tracing)

def _authorizer() -> Any:
    """iam: SigV4; jwt: portal bearer tokens verified against KIP_JWKS_URL; none: local only.
    (config refuses any other value, so authorization never silently turns off.)"""
    if settings.api_auth == "iam":
        return IAMAuthorizer()
    if settings.api_auth != "jwt":
        return None
    import os

    from chalicelib.http import auth
    jwt_settings = auth.JwtSettings.from_env()      # fails at import, naming the variable

    @app.authorizer(ttl_seconds=60)
    def portal_jwt(auth_request: Any) -> Any:
        try:
            # the token's teams (KIP_AUTHZ) ride in the context; no KIP_AUTHZ: refused (500)
            return auth.scoped_authorizer_response(
                jwt_settings, _authz(), auth_request.token, auth_request.method_arn,
                local=bool(os.environ.get("AWS_CHALICE_CLI_MODE")))
        except Exception as exc:
            cause = exc.__cause__
            if isinstance(cause, errors.KipError):
                logger.info("token refused", extra={"code": cause.code, "detail": cause.message})
            raise
    return portal_jwt


AUTH = _authorizer()
CORS: Any = CORSConfig(allow_origin=settings.cors_origin, max_age=600) \
    if settings.cors_origin else False
CONTENT_TYPES = ["application/json", "text/plain", "application/octet-stream",
                 "application/x-www-form-urlencoded"]
MAX_BODY = 64 * 1024

_kit: Any = None
_authz_doc: Any = None


def kit() -> Any:
    """The use cases' kit (settings, clock, registry, recorder, workers, org), built once per
    container on first use."""
    global _kit
    if _kit is None:
        from chalicelib.usecases.kit import build
        if settings.reach_refusal:      # never act with no account list (see refuse_unconfigured)
            raise errors.KipError(f"kip is not configured: {settings.reach_refusal}")
        # the external id from Secrets Manager (KIP_EXTERNAL_ID_SECRET_ARN), read once per cold
        # start
        from chalicelib.aws import read_secret
        _kit = build(with_external_id(settings, lambda arn: read_secret(arn, settings)))
    return _kit


def _authz() -> Any:
    """KIP_AUTHZ parsed (core.scopes.Authz), read once per container: inline JSON, or the SSM
    parameter ``ssm:<name>`` names. None when unset (no scopes: local, or IAM without it); with
    JWT auth an unset one is refused (settings.authz_refusal)."""
    global _authz_doc
    if settings.authz_refusal:
        logger.error(f"kip is not configured: {settings.authz_refusal}",
                     extra={"code": "NotConfigured"})
        raise errors.KipError(f"kip is not configured: {settings.authz_refusal}")
    if _authz_doc is None and settings.authz:
        from chalicelib.core import scopes
        raw = settings.authz
        if raw.startswith("ssm:"):
            from chalicelib.aws.params import read_parameter
            raw = read_parameter(raw[len("ssm:"):], settings)
        _authz_doc = scopes.parse(raw)
    return _authz_doc


def _access() -> Any:
    """What this caller may read and change (core.scopes.Access): the teams the authorizer put in
    its context (JWT), or the teams KIP_AUTHZ ``principals`` give the SigV4 caller's ARN (IAM);
    everything when no scopes are configured."""
    from chalicelib.core.scopes import Access
    authz = None if settings.api_auth == "none" else _authz()
    if authz is None:
        return Access.everyone()
    context = app.current_request.context or {}
    if settings.api_auth == "jwt":
        try:
            teams = json.loads((context.get("authorizer") or {}).get("teams") or "[]")
        except ValueError:
            teams = []
        return Access.of(authz, [t for t in teams if isinstance(t, str)])
    return Access.of(authz, authz.teams_for_arn((context.get("identity") or {}).get("userArn")))


def _acting(source: str = "api") -> Any:
    """Within the block, changes are attributed to the caller (the audit trail, SourceIdentity)."""
    from chalicelib.core.actor import acting
    return acting(_caller(), source)


def _identity(name: Any, account_id: Any = None, region: Any = None) -> Any:
    """The cluster identity, validated once here at the edge (400/403), logged with every line."""
    from chalicelib.usecases.skeleton import identity
    cid = identity(kit(), name, account_id, region)
    logger.append_keys(cluster=cid.key)
    return cid


# ------------------------------------------------------------------------------- HTTP plumbing

def error_response(exc: errors.KipError) -> Response:
    headers = {"Content-Type": "application/json"}
    if exc.retry_after:
        headers["Retry-After"] = str(int(exc.retry_after))
    return Response(body=exc.to_body(), status_code=exc.status, headers=headers)


def api(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Every route answers errors in one shape: {"error": {"code", "message", "field", ...}}."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from chalicelib.aws import request_budget
        try:
            # every AWS call of the request is made as the caller (audit trail, SourceIdentity)
            with request_budget(settings.api_budget_seconds, settings.api_max_attempts), \
                    _acting():
                return fn(*args, **kwargs)
        except errors.KipError as exc:
            level = logger.warning if exc.status < 500 else logger.error
            level("request failed", extra={"code": exc.code, "status": exc.status,
                                            "detail": exc.message})
            if exc.status >= 500:
                metrics.add_metric(name="Failed", unit=MetricUnit.Count, value=1)
            return error_response(exc)
        except Exception:  # the one place a bug surfaces: logged with its traceback, no leak
            logger.exception("unhandled error")
            return error_response(errors.KipError(
                "internal error; the request id in the logs has the details"))
    return wrapper


def _json_body(required: bool = True) -> Any:
    raw = app.current_request.raw_body or b""
    if len(raw) > MAX_BODY:
        raise errors.ValidationError(f"the request body is {len(raw)} bytes; at most "
                                     f"{MAX_BODY} are accepted", field="body",
                                     allowed=f"a JSON object of at most {MAX_BODY} bytes")
    if not raw.strip():
        if required:
            raise errors.ValidationError("the request body is empty", field="body",
                                         allowed="a JSON object")
        return {}
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise errors.ValidationError(f"the request body is not valid JSON: {exc}"[:300],
                                     field="body", allowed="a UTF-8 JSON object") from None


def _query(model: str) -> Any:
    from chalicelib.core import spec
    return spec.parse(getattr(spec, model), dict(app.current_request.query_params or {}),
                      "query")


def _cluster_id(name: str, query: Any) -> Any:
    return _identity(name, query.account_id, query.region)


def _caller() -> Optional[str]:
    """Who is asking: the JWT ``sub`` the authorizer put in its context, else the SigV4 caller's
    IAM ARN (API Gateway's ``identity.userArn``), else None (``KIP_API_AUTH=none``)."""
    context = app.current_request.context or {}
    authorizer = context.get("authorizer") or {}
    caller = authorizer.get("sub") or (context.get("identity") or {}).get("userArn")
    return str(caller)[:512] if caller else None


def _view(record: Any) -> dict:
    return record.public() if record is not None else {}


def _if_match() -> Any:
    """The request's If-Match (None when absent), parsed: 400 when malformed."""
    from chalicelib.core import preconditions
    headers = app.current_request.headers or {}
    return preconditions.parse(headers.get(preconditions.HEADER))


def _etag(record: Any) -> dict:
    """The ETag header of a record (its version), for a later conditional request."""
    from chalicelib.core import preconditions
    version = record.get("version") if isinstance(record, dict) else \
        getattr(record, "version", None)
    return {"ETag": preconditions.etag(version)} if version else {}


# ------------------------------------------------------------------------------- routes

@app.route("/clusters", methods=["POST"], authorizer=AUTH, cors=CORS,
           content_types=CONTENT_TYPES)
@api
def create_cluster() -> Response:
    from chalicelib.core import spec
    _query("NoQuery")
    from chalicelib.usecases import clusters
    from chalicelib.usecases import access
    req = spec.parse_request(_json_body(), settings.default_tags)
    started = time.perf_counter()
    cid = _identity(req.cluster_name, req.account_id, req.region)
    req = req.model_copy(update={"team": access.write_team(kit(), _access(), cid, req.team)})
    out = clusters.provision(kit(), cid, req, source="api", requested_by=_caller(),
                             if_match=_if_match())
    if out.dry_run:     # a cluster kip would only record says so (external: a 409 already)
        more = {"message": NO_KARPENTER} if out.parked == "no_karpenter" else {}
        return Response(body={"dry_run": True, "cluster": cid.key, "plan": out.actions,
                              "record": _view(out.record) or None, **more}, status_code=200)
    metrics.add_metric(name="ProvisionDuration", unit=MetricUnit.Milliseconds,
                       value=(time.perf_counter() - started) * 1000)
    if out.changed:
        metrics.add_metric(name="Provisioned", unit=MetricUnit.Count, value=1)
    logger.info("provisioned", extra={"changed": out.changed, "status": out.record.status,
                                      "actions": len(out.actions)})
    body = {**_view(out.record), "changed": out.changed, "actions": out.actions}
    if out.parked == "no_karpenter":    # recorded; wired by the sweep once a role appears
        body["message"] = NO_KARPENTER
        return Response(body=body, status_code=202, headers=_etag(out.record))
    return Response(body=body, status_code=201 if out.changed else 200,
                    headers=_etag(out.record))


NO_KARPENTER = ("no Karpenter controller role was found for the cluster (Pod Identity, IRSA "
                "trust or the role template): kip created no queue and no rule and recorded it "
                "as no_karpenter; the sweep looks again and wires it once the role exists. Name "
                "the role (controller_role) to have kip wire it now and wait for the role")


@app.route("/clusters", methods=["GET"], authorizer=AUTH, cors=CORS)
@api
def list_clusters() -> dict:
    query = _query("ListQuery")
    from chalicelib.usecases import access, inventory
    items, token = inventory.page(kit(), int(query.limit), query.next_token, query.status,
                                  query.consumer, query.handler)
    return {"items": [_view(i) for i in access.visible(_access(), items)], "next_token": token}


@app.route("/clusters/{cluster_name}", methods=["GET"], authorizer=AUTH, cors=CORS)
@api
def get_cluster(cluster_name: str) -> Response:
    from chalicelib.usecases import access, inventory
    cid = _cluster_id(cluster_name, _query("IdentityQuery"))
    access.check_read(kit(), _access(), cid)
    view = inventory.describe(kit(), cid)
    return Response(body=view, status_code=200, headers=_etag(view))


@app.route("/clusters/{cluster_name}", methods=["DELETE"], authorizer=AUTH, cors=CORS)
@api
def delete_cluster(cluster_name: str) -> dict:
    """Conditional: If-Match with the ETag of GET /clusters/{name} (428 without, 412 stale), so a
    mistaken or concurrent DELETE never removes a record it did not see."""
    from chalicelib.usecases import access, teardown
    cid = _cluster_id(cluster_name, _query("IdentityQuery"))
    access.write_team(kit(), _access(), cid)
    out = teardown.teardown(kit(), cid, source="api", requested_by=_caller(),
                            if_match=_if_match(), require_match=True)
    metrics.add_metric(name="TornDown", unit=MetricUnit.Count, value=1)
    logger.info("torn down", extra={"removed": len(out.actions)})
    return {"cluster": cid.key, "deleted": True, "removed": out.actions, "skipped": out.skipped,
            **({"warning": out.warning} if out.warning else {})}


@app.route("/clusters/{cluster_name}/reconcile", methods=["POST"], authorizer=AUTH, cors=CORS,
           content_types=CONTENT_TYPES)
@api
def reconcile_cluster(cluster_name: str) -> dict:
    from chalicelib.core import spec
    query = _query("ReconcileQuery")
    body = spec.parse(spec.ReconcileBody, _json_body(required=False))
    dry_run = body.dry_run if "dry_run" in body.model_fields_set else query.dry_run in ("true", "1")
    from chalicelib.usecases import access, clusters
    cid = _cluster_id(cluster_name, query)
    access.write_team(kit(), _access(), cid)
    out = clusters.reconcile(kit(), cid, dry_run=dry_run, requested_by=_caller(),
                             if_match=_if_match())
    if out.actions and not dry_run:
        metrics.add_metric(name="DriftRepaired", unit=MetricUnit.Count, value=1)
    return {"cluster": cid.key, "dry_run": dry_run, "in_sync": not out.actions,
            "differences": out.actions, "repaired": bool(out.actions) and not dry_run,
            "record": _view(out.record) or None}


@app.route("/clusters/{cluster_name}/release", methods=["POST"], authorizer=AUTH, cors=CORS,
           content_types=CONTENT_TYPES)
@api
def release_cluster(cluster_name: str) -> dict:
    """Release a teardown the hourly budget held (status teardown_held): EKS is asked once more
    (409 if it reports the cluster live), then the cluster's wiring is removed."""
    from chalicelib.usecases import access, lifecycle
    cid = _cluster_id(cluster_name, _query("IdentityQuery"))
    access.write_team(kit(), _access(), cid)
    out = lifecycle.release(kit(), cid, requested_by=_caller(), if_match=_if_match())
    metrics.add_metric(name="TornDown", unit=MetricUnit.Count, value=1)
    logger.info("held teardown released", extra={"removed": len(out["removed"])})
    return out


@app.route("/backfill", methods=["POST"], authorizer=AUTH, cors=CORS,
           content_types=CONTENT_TYPES)
@api
def backfill() -> dict:
    """Adopt the EKS clusters without a record in these account-regions (chalicelib/backfill)."""
    from chalicelib.usecases import access, backfill as use_case
    from chalicelib.core import spec
    _query("NoQuery")
    access.require_admin(_access(), "POST /backfill")
    req = spec.parse(spec.BackfillRequest, _json_body())
    with _acting("backfill"):
        out = use_case.run(kit(), req.accounts, req.regions, dry_run=req.dry_run,
                           budget=use_case.API_BUDGET)
    if not req.dry_run:
        metrics.add_metric(name="Provisioned", unit=MetricUnit.Count,
                           value=out["counts"].get("provisioned", 0))
    logger.info("backfill done", extra={"dry_run": req.dry_run, **out["counts"]})
    return out


@app.route("/clusters/{cluster_name}/history", methods=["GET"], authorizer=AUTH, cors=CORS)
@api
def cluster_history(cluster_name: str) -> dict:
    """The audit trail of one cluster, newest first, also after its teardown: who changed what,
    by which path (API, trigger, replay, sweep, drift repair, backfill)."""
    from chalicelib.usecases import access, audit
    query = _query("HistoryQuery")
    cid = _cluster_id(cluster_name, query)
    access.check_read(kit(), _access(), cid)
    items, token = audit.history(kit(), cid, int(query.limit), query.next_token)
    return {"items": items, "next_token": token}


@app.route("/openapi.json", methods=["GET"], authorizer=AUTH, cors=CORS)
@api
def openapi() -> dict:
    from chalicelib.http.openapi import document
    return document()


# ------------------------------------------------------------------------------- events

@app.on_cw_event(EKS_EVENT_PATTERN, name="on_eks_event")
def on_eks_event(event: Any) -> dict:
    """EKS CreateCluster / DeleteCluster, as CloudTrail reports them. Malformed or final cases are
    logged and dropped; transient failures raise, so Lambda retries the event (twice; then its
    on-failure destination keeps it for the schedule's replay, chalicelib/failed_events)."""
    return handle_eks_event(event.to_dict())


def handle_eks_event(raw: dict, source: str = "trigger") -> dict:
    """on_eks_event's body, also run on each replayed failed event (``source="replay"``)."""
    from chalicelib.core.events import parse_eks_event
    from chalicelib.usecases import lifecycle
    ev = parse_eks_event(raw)
    if ev.ignored:
        level = logger.warning if "envelope" in ev.ignored else logger.info
        level("EKS event ignored", extra={"reason": ev.ignored})
        return {"ignored": ev.ignored}
    try:
        cid = _identity(ev.cluster_name, ev.account_id, ev.region)
        logger.append_keys(trigger=ev.name)
        from chalicelib.core.actor import acting
        with acting(ev.actor, source):
            if ev.name == "DeleteCluster":    # acted on only if EKS confirms (core.generations)
                out = lifecycle.cluster_deleted(kit(), cid, ev)
            elif ev.name == "UpdateClusterConfig":     # Auto Mode on: kip's wiring retired
                out = lifecycle.cluster_config_updated(kit(), cid, ev)
            else:
                out = lifecycle.cluster_created(kit(), cid, ev)
    except errors.KipError as exc:  # the record already says what exists; the sweep finishes
        if not exc.retryable and exc.status in (400, 403, 409):
            metrics.add_metric(name="Blocked", unit=MetricUnit.Count, value=1)
        return _retried_or_ignored(exc, "trigger failed", "trigger not acted on")
    for key, metric in (("deleted", "TornDown"), ("held", "TeardownHeld"),
                        ("provisioned", "Provisioned")):
        if key in out:
            metrics.add_metric(name=metric, unit=MetricUnit.Count, value=1)
    if out.get("verdict"):
        metrics.add_metric(name="StaleEventIgnored", unit=MetricUnit.Count, value=1)
    return out


def _retried_or_ignored(exc: errors.KipError, failed: str, ignored: str) -> dict:
    """An event handler's KipError: a retryable one is raised again so Lambda retries the event
    (metric Failed); any other is logged and the event answered as ignored."""
    if exc.retryable:
        metrics.add_metric(name="Failed", unit=MetricUnit.Count, value=1)
        logger.error(f"{failed}; Lambda will retry", extra={"code": exc.code,
                                                            "detail": exc.message})
        raise exc
    logger.warning(ignored, extra={"code": exc.code, "detail": exc.message})
    return {"ignored": exc.code, "message": exc.message}


def _remaining(event: Any) -> Callable[[], float]:
    """Seconds left in this invocation (Lambda's context), or unbounded when there is none."""
    context = getattr(event, "context", None)
    left = getattr(context, "get_remaining_time_in_millis", None)
    return (lambda: left() / 1000.0) if callable(left) else (lambda: float("inf"))


@app.on_cw_event(drift_event_pattern(settings.prefix, settings.iam_path), name="on_drift_event")
def on_drift_event(event: Any) -> dict:
    """CloudTrail reports a change to a kip-named rule, queue or policy: reconcile its cluster
    now (chalicelib/repair). Ignored: malformed events, kip's own changes, names kip does not
    record. Retryable failures raise, so Lambda retries the event; the sweep is the backstop."""
    from chalicelib.core import drift
    from chalicelib.usecases import repair
    started = time.perf_counter()
    parsed = drift.parse(event.to_dict(), settings.prefix, settings.iam_path,
                         settings.service_role_arns, settings.cross_account_role)
    if parsed.change is None:
        logger.info("drift event ignored", extra={"reason": parsed.ignored})
        return {"ignored": parsed.ignored}
    change = parsed.change
    logger.append_keys(trigger=change.event, resource=change.name)
    from chalicelib.core.actor import acting
    try:
        with acting(change.actor, "drift"):
            out = repair.repair(kit(), change)
    except errors.KipError as exc:
        return _retried_or_ignored(exc, "drift repair failed", "drift not repaired")
    if out.get("repaired"):
        metrics.add_metric(name="DriftRepaired", unit=MetricUnit.Count, value=1)
        metrics.add_metric(name="DriftRepairDuration", unit=MetricUnit.Milliseconds,
                           value=(time.perf_counter() - started) * 1000)
    logger.info("drift event handled", extra={**out, "actor": change.actor})
    return out


# Chalice takes the queue at import: the packaged template replaces this ARN with the work
# queue it creates (.chalice/resources-<stage>.json) and adds ReportBatchItemFailures.
@app.on_sqs_message(queue_arn="arn:aws:sqs:us-east-1:000000000000:kip_sweep", batch_size=10,
                    name="sweep_worker", maximum_concurrency=5)
def sweep_worker(event: Any) -> dict:
    """One batch of the fan-out sweep: reconcile each cluster; the ids of items to retry go
    back to Lambda as batchItemFailures (the others are deleted from the queue)."""
    from chalicelib.core.actor import acting
    from chalicelib.usecases import fanout
    with acting(None, "sweep"):
        out = fanout.work(kit(), [(r.to_dict().get("messageId", ""), r.body) for r in event],
                          _remaining(event))
    for key in ("repaired", "adopted", "failed", "errors"):
        metrics.add_metric(name=f"Sweep{key.title()}", unit=MetricUnit.Count,
                           value=len(out[key]))
    logger.info("sweep batch done", extra={k: len(v) for k, v in out.items()})
    return {"batchItemFailures": [{"itemIdentifier": i} for i in out["failed"]]}


def _sweep(event: Any) -> dict:
    """inline: reconcile every record here; fanout: queue one work item per record."""
    from chalicelib.usecases import fanout, sweep
    if settings.sweep_mode != "fanout":
        return sweep.sweep(kit())
    out = fanout.schedule(kit(), _remaining(event))
    if out["behind"]:
        metrics.add_metric(name="SweepPassSkipped", unit=MetricUnit.Count, value=1)
    return {"repaired": [], "adopted": [], "up_to_date": [], "queued": out["queued"],
            "skipped": out["skipped"], "continued": out["continued"], "behind": out["behind"],
            "errors": out["errors"] + [{"cluster": key, "code": "NotQueued"}
                                       for key in out["unsent"]]}


@app.schedule(Rate(settings.schedule_minutes, unit=Rate.MINUTES), name="reconcile_all")
def reconcile_all(event: Any) -> dict:
    from chalicelib.core.actor import acting
    from chalicelib.usecases import queue_health
    with acting(None, "sweep"):
        summary = _sweep(event)
        # inline: the health pass after the repairs; fanout: the worker reads each record's
        # health
        summary["health"] = [] if settings.sweep_mode == "fanout" else queue_health.sweep(kit())
    if kit().settings.failed_events_queue_url:   # the EKS trigger's lost events, replayed
        from chalicelib.usecases import replay
        summary["failed_events"] = replay.replay(
            kit(), functools.partial(handle_eks_event, source="replay"), _remaining(event))
    for key in ("repaired", "adopted", "errors"):
        metrics.add_metric(name=f"Sweep{key.title()}", unit=MetricUnit.Count,
                           value=len(summary[key]))
    logger.info("sweep done", extra={k: len(v) for k, v in summary.items()})
    return summary

"""Pure: the OpenAPI 3.1 document of every route, body and error (served at /openapi.json).

Schemas come from the pydantic models themselves (OpenAPI 3.1 is JSON Schema 2020-12, so they
are used unchanged): the request and query models of ``spec``, the record of ``records``, and the
response models below.
"""
from __future__ import annotations

import copy
from functools import lru_cache
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict
from pydantic.json_schema import models_json_schema

from chalicelib.core.records import ClusterRecord
from chalicelib.core.spec import (BackfillOutcome, BackfillRequest, ClusterRequest, HistoryQuery,
                                  IdentityQuery, ListQuery, ReconcileBody, ReconcileQuery)


class Action(BaseModel):
    id: str
    op: str
    kind: Literal["create", "update", "delete"]
    resource: str
    name: str
    params: dict
    after: list[str]


class ErrorDetail(BaseModel):
    model_config = ConfigDict(extra="allow")
    code: str
    message: str
    field: Optional[str] = None
    allowed: Optional[str] = None
    details: Optional[list[dict]] = None
    retry_after: Optional[int] = None


class Error(BaseModel):
    error: ErrorDetail


class ProvisionResult(ClusterRecord):
    changed: bool
    actions: list[Action]
    message: Optional[str] = None   # 202: why nothing was created yet


class DryRunResult(BaseModel):
    dry_run: Literal[True]
    cluster: str
    plan: list[Action]
    record: Optional[ClusterRecord] = None
    message: Optional[str] = None   # nothing would be created: why


class ClusterList(BaseModel):
    items: list[ClusterRecord]
    next_token: Optional[str] = None


class Removed(BaseModel):
    resource: str
    name: str
    call: Optional[str] = None
    reason: Optional[str] = None


class TeardownResult(BaseModel):
    cluster: str
    deleted: bool
    removed: list[Removed]
    skipped: list[Removed]
    warning: Optional[str] = None   # a takeover's cluster: what Karpenter reads now


class ReconcileResult(BaseModel):
    cluster: str
    dry_run: bool
    in_sync: bool
    repaired: bool
    differences: list[Action]
    record: Optional[ClusterRecord] = None


class BackfillCluster(BaseModel):
    """One cluster's outcome (``core.spec.BackfillOutcome``)."""
    cluster: str
    account_id: str
    region: str
    cluster_name: str
    outcome: BackfillOutcome
    status: Optional[str] = None        # the record's status (provisioned, already_managed)
    changed: Optional[bool] = None      # provisioned: whether anything was created or changed
    reason: Optional[str] = None        # opted_out, auto_mode, skipped
    code: Optional[str] = None          # failed (and skipped): the error code
    message: Optional[str] = None       # failed: what went wrong
    plan: Optional[list[str]] = None    # would_provision (dry run): "op name" per action


class BackfillListingError(BaseModel):
    """An account-region whose clusters could not be listed (e.g. no member role there)."""
    account_id: str
    region: str
    code: str
    message: str


class BackfillResult(BaseModel):
    dry_run: bool
    clusters: list[BackfillCluster]
    errors: list[BackfillListingError]
    counts: dict[str, int]


class AuditEntry(BaseModel):
    """One write to a cluster (``usecases.audit``)."""
    at: str                             # ISO-8601 UTC
    actor: str                          # token subject, IAM ARN, CloudTrail userIdentity.arn, kip
    source: str                         # api, trigger, replay, sweep, drift, backfill
    action: str                         # provision, reconcile, teardown, block, hold
    outcome: str                        # the resulting status, deleted, or failed: <code>
    resources: list[str]                # <resource>:<name> of each change made


class History(BaseModel):
    items: list[AuditEntry]
    next_token: Optional[str] = None


RESPONSES = {400: "Invalid input", 403: "Forbidden", 404: "Not found", 409: "Conflict",
             412: "If-Match names a version of the record that is no longer current",
             413: "Payload too large",
             428: "If-Match (the record's ETag from GET /clusters/{name}) is required",
             500: "Internal error", 502: "AWS call failed",
             503: "Throttled or unavailable; retry after Retry-After"}
OUTPUT_MODELS = (Error, ProvisionResult, DryRunResult, ClusterList, TeardownResult,
                 ReconcileResult, ClusterRecord, BackfillResult, History)


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict, description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _responses(ok: dict, *codes: int) -> dict:
    return {**ok, **{str(c): {"$ref": f"#/components/responses/E{c}"} for c in (*codes, 500)}}


def _parameters(model: type, where: str) -> list[dict]:
    """Query parameters from a model: a parameter is optional by being left out, never null."""
    out = []
    schema = model.model_json_schema()
    for name, prop in schema["properties"].items():
        variants = [v for v in prop.get("anyOf", [prop]) if v.get("type") != "null"]
        param = {k: v for k, v in variants[0].items() if k not in ("title", "default")}
        out.append({"name": name, "in": where, "required": name in schema.get("required", []),
                    "schema": param})
    return out


PATH_NAME = {"name": "cluster_name", "in": "path", "required": True,
             "schema": {"type": "string", "pattern": r"^[0-9A-Za-z][A-Za-z0-9_-]{0,99}$"}}
ETAG = {"ETag": {"description": "The record's version, for If-Match", "schema": {"type": "string"}}}


def _if_match(required: bool) -> dict:
    return {"name": "If-Match", "in": "header", "required": required,
            "description": "The ETag of GET /clusters/{name} (or *): the change is made only "
                           "if the record is still at that version (412 otherwise)"
                           + ("; required (428 without)" if required else ""),
            "schema": {"type": "string"}}


PROVISIONED = {
    "200": _json({"anyOf": [_ref("ProvisionResult"), _ref("DryRunResult")]},
                 "Already up to date (or a dry-run plan)"),
    "201": {**_json(_ref("ProvisionResult"), "Created or changed"), "headers": ETAG},
    "202": {**_json(_ref("ProvisionResult"), "Recorded as no_karpenter: no controller role "
                    "found, nothing created; the sweep wires it once one exists"),
            "headers": ETAG}}


def _paths() -> dict:
    ident = [PATH_NAME, *_parameters(IdentityQuery, "query")]
    body = lambda name, required: {"required": required, "content": {   # noqa: E731
        "application/json": {"schema": _ref(name)}}}
    return {
        "/clusters": {
            "post": {"operationId": "provisionCluster",
                     "summary": "Provision (or update) interruption handling for a cluster",
                     "parameters": [_if_match(False)],
                     "requestBody": body("ClusterRequest", True),
                     "responses": _responses(PROVISIONED, 400, 403, 404, 409, 412, 413, 502,
                                             503)},
            "get": {"operationId": "listClusters", "summary": "List records, paginated",
                    "parameters": _parameters(ListQuery, "query"),
                    "responses": _responses({"200": _json(_ref("ClusterList"),
                                                          "A page of records")}, 400, 503)}},
        "/clusters/{cluster_name}": {
            "get": {"operationId": "getCluster", "summary": "One record", "parameters": ident,
                    "responses": _responses({"200": {**_json(_ref("ClusterRecord"), "The record"),
                                                     "headers": ETAG}}, 400, 404, 503)},
            "delete": {"operationId": "deleteCluster",
                       "summary": "Tear down (conditional: If-Match with the record's ETag)",
                       "parameters": [*ident, _if_match(True)],
                       "responses": _responses({"200": _json(_ref("TeardownResult"),
                                                             "What was removed")},
                                               400, 403, 404, 409, 412, 428, 502, 503)}},
        "/clusters/{cluster_name}/release": {
            "post": {"operationId": "releaseTeardown",
                     "summary": "Release a teardown the hourly budget held (teardown_held); EKS "
                                "is asked again first",
                     "parameters": [*ident, _if_match(False)],
                     "responses": _responses({"200": _json(_ref("TeardownResult"),
                                                           "What was removed")},
                                             400, 403, 404, 409, 412, 502, 503)}},
        "/clusters/{cluster_name}/reconcile": {
            "post": {"operationId": "reconcileCluster",
                     "summary": "Detect drift and repair it (or only report, with dry_run)",
                     "parameters": [PATH_NAME, *_parameters(ReconcileQuery, "query"),
                                    _if_match(False)],
                     "requestBody": body("ReconcileBody", False),
                     "responses": _responses({"200": _json(_ref("ReconcileResult"),
                                                           "Differences found")},
                                             400, 403, 404, 409, 412, 502, 503)}},
        "/backfill": {
            "post": {"operationId": "backfill",
                     "summary": "Adopt the EKS clusters without a record in account-regions "
                                "(opt-out tag honoured, Auto Mode skipped; dry_run: plan only)",
                     "requestBody": body("BackfillRequest", True),
                     "responses": _responses({"200": _json(_ref("BackfillResult"),
                                                           "One outcome per cluster")},
                                             400, 403, 413, 503)}},
        "/openapi.json": {
            "get": {"operationId": "openapi", "summary": "This document",
                    "responses": {"200": _json({"type": "object"}, "OpenAPI 3.1 document")}}},
    }


def _history_paths() -> dict:
    return {"/clusters/{cluster_name}/history": {
        "get": {"operationId": "clusterHistory",
                "summary": "The cluster's audit trail, newest first (also after its teardown): "
                           "who changed what, by which path",
                "parameters": [PATH_NAME, *_parameters(HistoryQuery, "query")],
                "responses": _responses({"200": _json(_ref("History"), "A page of entries")},
                                        400, 404, 503)}}}


def _schemas() -> dict:
    models: list[Any] = [(ClusterRequest, "validation"), (ReconcileBody, "validation"),
                         (BackfillRequest, "validation")]
    models += [(m, "serialization") for m in OUTPUT_MODELS]
    _, defs = models_json_schema(models, ref_template="#/components/schemas/{model}")
    return defs["$defs"]


@lru_cache(maxsize=1)
def _document() -> dict:
    responses = {f"E{code}": _json(_ref("Error"), text) for code, text in RESPONSES.items()}
    for code in ("E409", "E503"):
        responses[code]["headers"] = {"Retry-After": {"schema": {"type": "integer"}}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "Karpenter interruption-handling provisioner", "version": "2.1.0",
                 "description": "Provisions, repairs and removes the SQS interruption queue, "
                                "EventBridge rules and IAM policy that Karpenter needs per EKS "
                                "cluster. Deployed stages require SigV4-signed requests or "
                                "portal bearer tokens; with team scopes (KIP_AUTHZ) a caller "
                                "reads and changes only its teams' clusters (others: 404 on "
                                "reads, 403 on writes); POST /backfill is for admin teams."},
        "security": [{"sigv4": []}],
        "paths": {**_paths(), **_history_paths()},
        "components": {
            "securitySchemes": {"sigv4": {"type": "apiKey", "name": "Authorization",
                                          "in": "header",
                                          "x-amazon-apigateway-authtype": "awsSigv4"}},
            "responses": responses,
            "schemas": _schemas(),
        },
    }


def document() -> dict:
    return copy.deepcopy(_document())

"""Pure: the OpenAPI 3 document of every route, body and error (served at /openapi.json)."""
from __future__ import annotations

import copy
from functools import lru_cache

from chalicelib.config import ALL_EVENT_KINDS, STATUSES
from chalicelib.spec import ClusterRequest



def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict, description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict:
    return {str(c): {"$ref": f"#/components/responses/E{c}"} for c in codes}


def _request_schema() -> dict:
    schema = ClusterRequest.model_json_schema(ref_template="#/components/schemas/{model}")
    schema.pop("title", None)
    for prop in schema.get("properties", {}).values():
        # pydantic writes Optional[X] as anyOf [X, null]; OpenAPI 3.0 says nullable instead
        if "anyOf" in prop:
            variants = [v for v in prop["anyOf"] if v.get("type") != "null"]
            prop.pop("anyOf")
            prop.update(variants[0] if len(variants) == 1 else {"anyOf": variants})
            prop["nullable"] = True
        prop.pop("title", None)
    return schema


IDENTITY_PARAMS = [
    {"name": "cluster_name", "in": "path", "required": True,
     "schema": {"type": "string", "pattern": r"^[0-9A-Za-z][A-Za-z0-9_-]{0,99}$"}},
    {"name": "account_id", "in": "query", "required": False,
     "schema": {"type": "string", "pattern": r"^[0-9]{12}$"}},
    {"name": "region", "in": "query", "required": False, "schema": {"type": "string"}},
]


@lru_cache(maxsize=1)
def _document() -> dict:
    resp_codes = {
        "E400": "Invalid input", "E403": "Forbidden", "E404": "Not found",
        "E409": "Conflict", "E413": "Payload too large", "E500": "Internal error",
        "E502": "AWS call failed", "E503": "Throttled or unavailable; retry after Retry-After"}
    responses = {}
    for key, text in resp_codes.items():
        responses[key] = _json(_ref("Error"), text)
        if key == "E503":
            responses[key]["headers"] = {"Retry-After": {"schema": {"type": "integer"}}}
    return {
        "openapi": "3.0.3",
        "info": {"title": "Karpenter interruption-handling provisioner", "version": "1.0.0",
                 "description": "Provisions, repairs and removes the SQS interruption queue, "
                                "EventBridge rules and IAM policy that Karpenter needs per EKS "
                                "cluster. Deployed stages require SigV4-signed requests."},
        "security": [{"sigv4": []}],
        "paths": {
            "/clusters": {
                "post": {
                    "operationId": "provisionCluster",
                    "summary": "Provision (or update) interruption handling for a cluster",
                    "requestBody": {"required": True, "content": {"application/json": {
                        "schema": _ref("ClusterRequest")}}},
                    "responses": {
                        "200": _json(_ref("ProvisionResult"),
                                     "Already up to date (or a dry-run plan)"),
                        "201": _json(_ref("ProvisionResult"), "Created or changed"),
                        **_errors(400, 403, 404, 409, 413, 502, 503),
                        "500": {"$ref": "#/components/responses/E500"}}},
                "get": {
                    "operationId": "listClusters", "summary": "List records, paginated",
                    "parameters": [
                        {"name": "limit", "in": "query",
                         "schema": {"type": "integer", "minimum": 1, "maximum": 100}},
                        {"name": "next_token", "in": "query", "schema": {"type": "string"}},
                        {"name": "status", "in": "query",
                         "schema": {"type": "string", "enum": list(STATUSES)}}],
                    "responses": {"200": _json(_ref("ClusterList"), "A page of records"),
                                  **_errors(400, 503),
                                  "500": {"$ref": "#/components/responses/E500"}}},
            },
            "/clusters/{cluster_name}": {
                "get": {
                    "operationId": "getCluster", "summary": "One record",
                    "parameters": IDENTITY_PARAMS,
                    "responses": {"200": _json(_ref("ClusterRecord"), "The record"),
                                  **_errors(400, 404, 503),
                                  "500": {"$ref": "#/components/responses/E500"}}},
                "delete": {
                    "operationId": "deleteCluster", "summary": "Tear down",
                    "parameters": IDENTITY_PARAMS,
                    "responses": {"200": _json(_ref("TeardownResult"), "What was removed"),
                                  **_errors(400, 404, 409, 502, 503),
                                  "500": {"$ref": "#/components/responses/E500"}}},
            },
            "/clusters/{cluster_name}/reconcile": {
                "post": {
                    "operationId": "reconcileCluster",
                    "summary": "Detect drift and repair it (or only report, with dry_run)",
                    "parameters": IDENTITY_PARAMS + [
                        {"name": "dry_run", "in": "query",
                         "schema": {"type": "string", "enum": ["true", "false"]}}],
                    "requestBody": {"required": False, "content": {"application/json": {
                        "schema": {"type": "object", "additionalProperties": False,
                                   "properties": {"dry_run": {"type": "boolean"}}}}}},
                    "responses": {"200": _json(_ref("ReconcileResult"), "Differences found"),
                                  **_errors(400, 403, 404, 409, 502, 503),
                                  "500": {"$ref": "#/components/responses/E500"}}},
            },
            "/openapi.json": {
                "get": {"operationId": "openapi", "summary": "This document",
                        "responses": {"200": {"description": "OpenAPI 3 document",
                                              "content": {"application/json": {
                                                  "schema": {"type": "object"}}}}}}},
        },
        "components": {
            "securitySchemes": {"sigv4": {"type": "apiKey", "name": "Authorization",
                                          "in": "header",
                                          "x-amazon-apigateway-authtype": "awsSigv4"}},
            "responses": responses,
            "schemas": {
                "ClusterRequest": _request_schema(),
                "Error": {"type": "object", "required": ["error"], "properties": {"error": {
                    "type": "object", "required": ["code", "message"],
                    "properties": {
                        "code": {"type": "string"}, "message": {"type": "string"},
                        "field": {"type": "string"}, "allowed": {"type": "string"},
                        "details": {"type": "array", "items": {"type": "object"}}},
                    "additionalProperties": True}}},
                "Action": {"type": "object", "properties": {
                    "id": {"type": "string"}, "op": {"type": "string"},
                    "kind": {"type": "string", "enum": ["create", "update", "delete"]},
                    "resource": {"type": "string"}, "name": {"type": "string"},
                    "params": {"type": "object"},
                    "after": {"type": "array", "items": {"type": "string"}}}},
                "ClusterRecord": {"type": "object", "properties": {
                    "id": {"type": "string"}, "cluster_name": {"type": "string"},
                    "account_id": {"type": "string"}, "region": {"type": "string"},
                    "status": {"type": "string", "enum": list(STATUSES)},
                    "version": {"type": "integer"},
                    "source": {"type": "string", "enum": ["api", "eks-event", "reconcile"]},
                    "event_kinds": {"type": "array", "items": {
                        "type": "string", "enum": list(ALL_EVENT_KINDS)}},
                    "request": {"type": "object"}, "spec_hash": {"type": "string"},
                    "names": {"type": "object"}, "resources": {"type": "object"},
                    "karpenter": {"type": "object", "properties": {
                        "settings.interruptionQueue": {"type": "string"}}},
                    "last_error": {"type": "object"}, "created_at": {"type": "string"},
                    "updated_at": {"type": "string"}}},
                "ProvisionResult": {"allOf": [_ref("ClusterRecord"), {"type": "object",
                    "properties": {"changed": {"type": "boolean"},
                                   "actions": {"type": "array", "items": _ref("Action")},
                                   "dry_run": {"type": "boolean"},
                                   "plan": {"type": "array", "items": _ref("Action")}}}]},
                "ClusterList": {"type": "object", "properties": {
                    "items": {"type": "array", "items": _ref("ClusterRecord")},
                    "next_token": {"type": "string", "nullable": True}}},
                "TeardownResult": {"type": "object", "properties": {
                    "cluster": {"type": "string"}, "deleted": {"type": "boolean"},
                    "removed": {"type": "array", "items": {"type": "object"}},
                    "skipped": {"type": "array", "items": {"type": "object"}}}},
                "ReconcileResult": {"type": "object", "properties": {
                    "cluster": {"type": "string"}, "dry_run": {"type": "boolean"},
                    "in_sync": {"type": "boolean"}, "repaired": {"type": "boolean"},
                    "differences": {"type": "array", "items": _ref("Action")},
                    "record": _ref("ClusterRecord")}},
            },
        },
    }


def document() -> dict:
    return copy.deepcopy(_document())

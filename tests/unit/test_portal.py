"""portal/backstage: the Software Template and catalog entities agree with the API they call.

The template's form must refuse what the API refuses (same patterns, same event kinds), its
request must be one the OpenAPI document describes, and its output must name the Helm key
Karpenter reads (settings.interruptionQueue; interruptionQueueName silently disables handling).
"""
from __future__ import annotations

import json
import re

import pytest
import yaml

from chalicelib.core import naming
from chalicelib.config import ALL_EVENT_KINDS
from tests.support.world import ROOT

TEMPLATE = ROOT / "portal" / "backstage" / "template.yaml"
APP_CONFIG = ROOT / "portal" / "backstage" / "app-config.kip.yaml"
CATALOG = ROOT / "catalog-info.yaml"
OPENAPI = ROOT / "docs" / "openapi.json"
HELM_KEY = "settings.interruptionQueue"


@pytest.fixture(scope="module")
def template() -> dict:
    return yaml.safe_load(TEMPLATE.read_text())


@pytest.fixture(scope="module")
def openapi() -> dict:
    return json.loads(OPENAPI.read_text())


def fields(template: dict) -> dict:
    out: dict = {}
    for page in template["spec"]["parameters"]:
        for name, schema in page["properties"].items():
            assert name not in out, f"{name} asked twice"
            out[name] = schema
    return out


def required(template: dict) -> set:
    return {name for page in template["spec"]["parameters"] for name in page.get("required", [])}


def step(template: dict) -> dict:
    steps = [s for s in template["spec"]["steps"] if s["action"] == "http:backstage:request"]
    assert len(steps) == 1
    return steps[0]


def test_is_a_v1beta3_template(template):
    assert template["apiVersion"] == "scaffolder.backstage.io/v1beta3"
    assert template["kind"] == "Template"
    assert template["metadata"]["name"] and template["spec"]["owner"] == "platform-team"


def test_asks_for_what_the_api_needs(template):
    assert {"cluster_name", "account_id", "region", "controller_role",
            "event_kinds"} <= required(template)
    assert set(required(template)) <= set(fields(template))


def test_cluster_name_pattern_is_the_apis(template):
    schema = fields(template)["cluster_name"]
    assert schema["pattern"] == naming.CLUSTER_NAME_RE.pattern
    # the form and the API agree on samples at the edges too
    for name in ("a", "prod-1", "A_b-C", "x" * 100, "-bad", "bad.name", "", "x" * 101, "é"):
        assert bool(re.fullmatch(schema["pattern"], name)) == \
            bool(naming.CLUSTER_NAME_RE.fullmatch(name)), name


def test_account_pattern_is_the_apis(template, openapi):
    pattern = fields(template)["account_id"]["pattern"]
    assert pattern == naming.ACCOUNT_RE.pattern
    prop = openapi["components"]["schemas"]["ClusterRequest"]["properties"]["account_id"]
    patterns = [v.get("pattern") for v in prop.get("anyOf", [prop])]
    assert pattern in patterns


def test_every_region_offered_is_one_the_api_accepts(template):
    schema = fields(template)["region"]
    assert schema["enum"] and len(set(schema["enum"])) == len(schema["enum"])
    assert all(naming.REGION_RE.fullmatch(r) for r in schema["enum"])
    assert schema["default"] in schema["enum"]


def test_controller_role_pattern_is_the_apis(template):
    from chalicelib.core.spec import ROLE_NAME_RE
    assert fields(template)["controller_role"]["pattern"] == ROLE_NAME_RE.pattern


def test_event_kinds_are_the_apis_and_spot_is_required(template):
    schema = fields(template)["event_kinds"]
    assert schema["type"] == "array" and schema["uniqueItems"] is True
    assert tuple(schema["items"]["enum"]) == ALL_EVENT_KINDS
    assert schema["minItems"] == 1 and schema["maxItems"] == len(ALL_EVENT_KINDS)
    assert schema["contains"] == {"const": "spot_interruption"}
    assert "spot_interruption" in schema["default"]
    assert set(schema["default"]) <= set(ALL_EVENT_KINDS)


def test_step_posts_through_the_proxy_to_an_operation_the_api_has(template, openapi):
    inp = step(template)["input"]
    assert inp["method"] == "POST"
    # /proxy/<endpoint>/<api path>: the roadie action resolves the first segment as a plugin id
    prefix = "/proxy/kip"
    assert inp["path"].startswith(prefix + "/")
    api_path = inp["path"][len(prefix):]
    assert api_path == "/clusters"
    assert "post" in openapi["paths"][api_path]
    # the action only serialises the body as JSON when the template itself says so
    assert {k.lower(): v for k, v in inp["headers"].items()}["content-type"] == "application/json"
    assert "authorization" not in {k.lower() for k in inp["headers"]}


def test_proxy_endpoint_exists_for_the_path(template):
    config = yaml.safe_load(APP_CONFIG.read_text())
    endpoint = config["proxy"]["endpoints"]["/kip"]
    # the signed-in user's Backstage token reaches kip; no shared secret rides along
    assert endpoint["credentials"] == "forward"
    assert "authorization" not in {k.lower() for k in endpoint.get("headers") or {}}
    assert step(template)["input"]["method"] in endpoint["allowedMethods"]
    assert set(endpoint["allowedMethods"]) == {"GET", "POST", "DELETE"}


def test_body_keys_are_cluster_request_properties(template, openapi):
    request = openapi["components"]["schemas"]["ClusterRequest"]
    body = step(template)["input"]["body"]
    assert set(body) <= set(request["properties"])
    assert set(request["required"]) <= set(body)
    # each value comes from the form field of the same name
    asked = fields(template)
    for key, value in body.items():
        assert value == "${{ parameters.%s }}" % key and key in asked


def test_output_shows_the_helm_value_from_the_response(template, openapi):
    sid = step(template)["id"]
    content = "\n".join(t["content"] for t in template["spec"]["output"]["text"])
    assert "interruptionQueueName" not in TEMPLATE.read_text()
    expression = f"steps['{sid}'].output.body.karpenter['{HELM_KEY}']"
    assert expression in content
    # and the key is where the API puts it: the record's karpenter object
    schemas = openapi["components"]["schemas"]
    assert HELM_KEY in schemas["Karpenter"]["properties"]
    for name in ("ClusterRecord", "ProvisionResult"):
        karpenter = schemas[name]["properties"]["karpenter"]
        assert {"$ref": "#/components/schemas/Karpenter"} in karpenter.get("anyOf", [karpenter])
    post = openapi["paths"]["/clusters"]["post"]["responses"]
    assert post["201"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/ProvisionResult")
    assert {"$ref": "#/components/schemas/ProvisionResult"} in \
        post["200"]["content"]["application/json"]["schema"]["anyOf"]
    # shown as YAML under settings: in the text output
    assert re.search(r"settings:\n\s+interruptionQueue: \$\{\{", content)


def test_catalog_has_the_api_beside_the_component_and_its_definition_exists():
    docs = list(yaml.safe_load_all(CATALOG.read_text()))
    by_kind = {d["kind"]: d for d in docs}
    component, api = by_kind["Component"], by_kind["API"]
    assert api["metadata"]["name"] in component["spec"]["providesApis"]
    assert api["spec"]["type"] == "openapi"
    definition = api["spec"]["definition"]["$text"]
    assert definition.startswith("./")
    path = (CATALOG.parent / definition).resolve()
    assert path == OPENAPI.resolve() and path.is_file()
    assert json.loads(path.read_text())["openapi"].startswith("3.")
    # the template is registered too, and the output link points at this API
    targets = by_kind["Location"]["spec"]["targets"]
    assert any((CATALOG.parent / t).resolve() == TEMPLATE.resolve() for t in targets)


def test_output_link_names_the_catalog_api(template):
    docs = list(yaml.safe_load_all(CATALOG.read_text()))
    api = next(d for d in docs if d["kind"] == "API")
    refs = [link.get("entityRef") for link in template["spec"]["output"]["links"]]
    assert f"api:default/{api['metadata']['name']}" in refs

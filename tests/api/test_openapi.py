"""/openapi.json describes every registered route, is valid OpenAPI 3.1, and /docs works offline."""

from __future__ import annotations

import re

from openapi_spec_validator import validate

from backend.api.openapi import undescribed


def test_every_registered_route_is_described(app):
    missing = undescribed(app)
    assert missing == [], ("routes without an entry in backend/api/specs/ (add one to the module of"
                           f" the route's blueprint): {missing}")


def test_a_new_route_without_a_description_is_named(make_app):
    app = make_app()
    app.add_url_rule("/api/brand-new/<thing>", "brand_new", lambda thing: thing, methods=["GET", "PUT"])
    assert undescribed(app) == ["GET /api/brand-new/<thing>", "PUT /api/brand-new/<thing>"]


def test_openapi_is_valid_3_1_and_covers_parameters_bodies_and_errors(client):
    r = client.get("/openapi.json")
    assert r.status_code == 200 and r.mimetype == "application/json"
    spec = r.json
    assert spec["openapi"].startswith("3.1")
    validate(spec)  # openapi-spec-validator: the OpenAPI 3.1 meta-schema and its rules
    paths = spec["paths"]
    flask_rules = {re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule) for rule in client.application.url_map.iter_rules()
                   if rule.endpoint != "static" and not rule.endpoint.endswith(".static")}
    assert set(paths) == flask_rules
    agg = paths["/telemetry/aggregate"]["get"]
    names = {p["name"]: p for p in agg["parameters"]}
    assert names["metric"]["required"] is True
    assert names["bucket"]["schema"]["enum"] and names["bucket"]["schema"]["default"] == "1m"
    assert {"400", "401", "403", "429", "503"} <= set(agg["responses"])
    assert agg["security"]  # a key is needed
    ingest = paths["/telemetry"]["post"]
    assert set(ingest["requestBody"]["content"]) == {"text/plain", "application/json"}
    assert {"200", "207", "413", "415"} <= set(ingest["responses"])
    assert paths["/health"]["get"]["security"] == []  # public
    rule = paths["/api/alert-rules/{rule_id}"]["delete"]
    assert rule["parameters"][0] == {"name": "rule_id", "in": "path", "required": True,
                                     "schema": {"type": "integer", "minimum": 0}}
    assert "text/plain" in paths["/metrics"]["get"]["responses"]["200"]["content"]


def test_reference_page_is_served_from_the_package_without_outside_urls(client):
    page = client.get("/docs")
    assert page.status_code == 200 and page.mimetype == "text/html"
    html = page.get_data(as_text=True)
    assert not re.search(r"(src|href)=\"(https?:)?//", html), "the page must not load anything from outside"
    for asset in re.findall(r"(?:src|href)=\"(/docs/[^\"]+)\"", html):
        r = client.get(asset)
        assert r.status_code == 200 and len(r.data) > 10_000, asset
    js = client.get("/docs/swagger-ui-bundle.js")
    assert js.mimetype == "text/javascript" and b"SwaggerUIBundle" in js.data

"""`/openapi.json` (OpenAPI 3.1, built from the app's own routes) and the `/docs` reference page.

The description is generated from what is registered: every Flask rule, its methods, its
path parameters (from the rule) and its query parameters (from its `@accepts(...)`), plus
the per-route entries of backend/api/specs/ (summary, bodies, answers). The usual errors
are added from the route: 401/403 unless it is public, 400 for parameters and bodies, 429
(rate limits) and 503 (database unreachable) everywhere. Flask's and blueprints' static
file routes are left out. `undescribed(app)` lists the rules
that have no entry; tests/api/test_openapi.py fails on any.

The reference page is Swagger UI from the `swagger-ui-bundle-v2` package, served from the
installed package (no CDN, no copy in the repository): it works offline.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
import re
from pathlib import Path
from typing import Any

from flask import Blueprint, Flask, Response, current_app, send_file

from backend.api import specs
from backend.api.params import Param, accepts
from backend.api.responses import json_response
from backend.api.specs.common import ERROR, Operation, Schema
from backend.fleet.auth import PUBLIC, requires
from backend.fleet.auth.hooks import required_scope

bp = Blueprint("openapi", __name__)

SKIPPED_METHODS = {"HEAD", "OPTIONS"}
ERROR_TEXT = {400: "bad parameter or body (named in `error`)", 401: "missing or unknown API key",
              403: "the key lacks the scope, or the device is not the key's", 404: "not found",
              409: "conflict", 413: "body too large", 415: "unsupported Content-Type or Content-Encoding",
              429: "rate limit (Retry-After)", 503: "database or buffer cannot take it now (Retry-After)"}
_RULE_PARAM = re.compile(r"<(?:(\w+)(?:\([^)]*\))?:)?(\w+)>")
PARAM_SCHEMAS: dict[str, Schema] = {"int": {"type": "integer"}, "number": {"type": "number"},
                                    "bool": {"type": "boolean"}, "time": {"type": "string"}}


def operations() -> dict[tuple[str, str], Operation]:
    """Every module of backend/api/specs: a new blueprint's spec module needs no registration."""
    out: dict[tuple[str, str], Operation] = {}
    for info in pkgutil.iter_modules(specs.__path__):
        module = importlib.import_module(f"{specs.__name__}.{info.name}")
        out.update(getattr(module, "OPERATIONS", {}))
    return out


def _rules(app: Flask) -> list[tuple[str, str, str]]:
    """(method, rule, endpoint) of every route the app serves (Flask's static route excluded)."""
    out = []
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static" or rule.endpoint.endswith(".static"):
            continue  # a blueprint's static files are pages' assets, not API
        for method in sorted((rule.methods or set()) - SKIPPED_METHODS):
            out.append((method, rule.rule, rule.endpoint))
    return out


def undescribed(app: Flask) -> list[str]:
    ops = operations()
    return [f"{m} {r}" for m, r, _e in _rules(app) if (m, r) not in ops]


def _query_param(p: Param) -> dict[str, Any]:
    if p.kind == "choice":
        schema: Schema = {"type": "string", "enum": list(p.choices)}
    else:
        schema = dict(PARAM_SCHEMAS.get(p.kind, {"type": "string"}))
    if p.multi:
        schema = {"type": "array", "items": schema}
    if p.default is not None and not p.multi:
        schema["default"] = p.default
    doc: dict[str, Any] = {"name": p.name, "in": "query", "required": p.required, "schema": schema}
    if p.multi:
        doc.update(style="form", explode=True, description="repeated and/or comma-separated")
    if p.aliases:
        doc["description"] = f"also accepted as {', '.join(p.aliases)}"
    return doc


def _path(rule: str) -> tuple[str, list[dict[str, Any]]]:
    params = []
    for conv, name in _RULE_PARAM.findall(rule):
        schema: Schema = {"type": "integer", "minimum": 0} if conv == "int" else {"type": "string"}
        params.append({"name": name, "in": "path", "required": True, "schema": schema})
    return _RULE_PARAM.sub(lambda m: "{" + m.group(2) + "}", rule), params


def _operation(app: Flask, method: str, rule: str, endpoint: str, op: Operation) -> dict[str, Any]:
    path, params = _path(rule)
    spec = getattr(app.view_functions[endpoint], "param_spec", None)
    if spec is not None:
        params += [_query_param(p) for p in spec.params]
    params += [{"name": h, "in": "header", "required": False, "schema": s} for h, s in op.headers.items()]
    scope = required_scope(app, endpoint, method)
    doc: dict[str, Any] = {"summary": op.summary, "operationId": endpoint.replace(".", "_") + "_" + method.lower(),
                           "tags": [op.tag]}
    if op.description:
        doc["description"] = op.description
    if op.streaming:
        doc["x-streaming"] = True
    if params:
        doc["parameters"] = params
    if op.body is not None:
        doc["requestBody"] = {"required": op.body_required,
                              "content": {mt: {"schema": s} for mt, s in op.body.items()}}
    responses: dict[str, Any] = {}
    for status, schema in sorted(op.responses.items()):
        entry: dict[str, Any] = {"description": "OK" if status < 300 else ERROR_TEXT.get(status, "see body")}
        if schema is not None:  # None: an answer without a body (204, a redirect)
            media = op.content_type if status < 400 else "application/json"
            entry["content"] = {mt: {"schema": schema} for mt in ((media,) if isinstance(media, str) else media)}
        responses[str(status)] = entry
    errors = {400, 429, 503, *op.errors}
    if scope != PUBLIC:
        errors |= {401, 403}
        doc["security"] = [{"bearer": []}, {"apiKey": []}]
        doc["description"] = (doc.get("description", "") + f"\n\nScope: `{scope}`.").strip()
    else:
        doc["security"] = []
    for status in sorted(errors):
        responses.setdefault(str(status), {"description": ERROR_TEXT.get(status, "error"),
                                           "content": {"application/json": {"schema": {"$ref": "#/components/"
                                                                                       "schemas/Error"}}}})
    doc["responses"] = responses
    return doc


def build(app: Flask) -> dict[str, Any]:
    ops = operations()
    paths: dict[str, dict[str, Any]] = {}
    for method, rule, endpoint in _rules(app):
        op = ops.get((method, rule))
        if op is None:
            continue  # undescribed(): the test names it
        path, _ = _path(rule)
        paths.setdefault(path, {})[method.lower()] = _operation(app, method, rule, endpoint, op)
    return {
        "openapi": "3.1.0",
        "info": {"title": "Telemetry ingestion service", "version": "1",
                 "description": "Readings in (many formats and transports), queries, fleet and alerts out."
                                " A 2xx on ingest means durable. Errors are JSON with `error` naming what was"
                                " wrong and `request_id` (also in the X-Request-Id header)."},
        "paths": dict(sorted(paths.items())),
        "components": {
            "schemas": {"Error": ERROR},
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"},
                                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"}},
        },
    }


@functools.cache
def _swagger_dir() -> Path:
    import swagger_ui_bundle

    return Path(swagger_ui_bundle.swagger_ui_path)


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Telemetry API reference</title>
<link rel="stylesheet" href="/docs/swagger-ui.css"></head>
<body><div id="ui"></div><script src="/docs/swagger-ui-bundle.js"></script>
<script>SwaggerUIBundle({url: "/openapi.json", dom_id: "#ui", deepLinking: true});</script>
</body></html>
"""


@bp.get("/openapi.json")
@requires(PUBLIC)
@accepts()
def openapi_json(_p: dict[str, Any]) -> Response:
    return json_response(build(current_app))


@bp.get("/docs")
@requires(PUBLIC)
@accepts()
def docs(_p: dict[str, Any]) -> Response:
    return Response(PAGE, mimetype="text/html")


@bp.get("/docs/swagger-ui-bundle.js")
@requires(PUBLIC)
@accepts()
def docs_js(_p: dict[str, Any]) -> Response:
    return send_file(_swagger_dir() / "swagger-ui-bundle.js", mimetype="text/javascript", max_age=3600)


@bp.get("/docs/swagger-ui.css")
@requires(PUBLIC)
@accepts()
def docs_css(_p: dict[str, Any]) -> Response:
    return send_file(_swagger_dir() / "swagger-ui.css", mimetype="text/css", max_age=3600)

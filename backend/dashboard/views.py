"""The dashboard's routes: the page, its static files and the plotly.js bundle."""

from __future__ import annotations

import functools
from importlib import resources
from pathlib import Path
from urllib.parse import urlsplit

from flask import Blueprint, Response, render_template, request, send_file, send_from_directory

from backend.api.params import accepts
from backend.api.responses import error_response
from backend.fleet.auth import PUBLIC, requires
from backend.services import services

HERE = Path(__file__).resolve().parent
STATIC = HERE / "static"
bp = Blueprint("dashboard", __name__, template_folder=str(HERE / "templates"), static_folder=None)

# The page loads scripts and styles only from this service and talks only to it and to its
# stream process (another port, or STREAM_PUBLIC_URL); plotly writes inline styles and SVG
# data: URIs. Nothing else is allowed in.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:;"
       " connect-src 'self'{stream}; font-src 'self' data:; object-src 'none'; base-uri 'none';"
       " frame-ancestors 'none'; form-action 'self'")
SECURITY_HEADERS = {"X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer", "X-Frame-Options": "DENY"}


def stream_origin() -> str:
    """The origin the page's EventSource connects to, as POST /api/stream/token will name it."""
    cfg = services().config
    if not cfg.stream_enabled:
        return ""
    if cfg.stream_public_url:
        parts = urlsplit(cfg.stream_public_url)
        return f" {parts.scheme}://{parts.netloc}" if parts.netloc else ""  # a path is 'self'
    host = urlsplit(f"//{request.host}").hostname or "127.0.0.1"
    host = f"[{host}]" if ":" in host else host
    return f" {request.scheme}://{host}:{cfg.stream_port}"


@functools.cache
def plotly_bundle() -> Path | None:
    """Where the installed plotly package keeps plotly.min.js (None when it is not installed)."""
    try:
        path = Path(str(resources.files("plotly") / "package_data" / "plotly.min.js"))
    except ModuleNotFoundError:
        return None
    return path if path.is_file() else None


@bp.get("/")
@requires(PUBLIC)
@accepts()
def index(_p: dict[str, object]) -> Response:
    resp = Response(render_template("dashboard.html"), mimetype="text/html")
    resp.headers.update(SECURITY_HEADERS)
    resp.headers["Content-Security-Policy"] = CSP.format(stream=stream_origin())
    resp.headers["Cache-Control"] = "no-store"
    return resp


@requires(PUBLIC)
@accepts()
def static(_p: dict[str, object], name: str) -> Response:
    resp = send_from_directory(STATIC, name, max_age=60)
    resp.headers["X-Content-Type-Options"] = "nosniff"
    return resp


# One route per file (a fixed list, no <path:...>): nothing else under static/ is served, and
# every route is a plain URL that the route-walking API tests can call.
FILES = ("app.js", "api.js", "chart.js", "live.js", "views.js", "dashboard.css")
for _name in FILES:
    bp.add_url_rule(f"/dashboard/static/{_name}", endpoint="static_" + _name.replace(".", "_"), view_func=static,
                    methods=["GET"], defaults={"name": _name})


@bp.get("/dashboard/vendor/plotly.min.js")
@requires(PUBLIC)
@accepts()
def plotly_js(_p: dict[str, object]) -> Response:
    path = plotly_bundle()
    if path is None:
        return error_response(503, "the plotly package is not installed (pip install -r requirements.txt)")
    resp = send_file(path, mimetype="text/javascript", max_age=3600)
    resp.headers["X-Content-Type-Options"] = "nosniff"
    return resp

"""`GET /config`: the field catalogue and the settings an operator may see."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response

from backend.api.params import accepts
from backend.api.responses import json_response, now_iso
from backend.ingest.parsing import PARSER_VERSION, parser_names
from backend.services import services

bp = Blueprint("config", __name__)


@bp.get("/config")
@accepts()
def config(_p: dict[str, Any]) -> Response:
    svc = services()
    fields = svc.catalogue.describe()
    cfg = svc.config
    return json_response({
        "telemetry_fields": {f["name"]: f["description"] or "" for f in fields},
        "fields": fields,
        "formats": parser_names(),
        "parser_version": PARSER_VERSION,
        "batch_size": cfg.batch_size,
        "flush_max_readings": cfg.flush_max_readings,
        "flush_interval": cfg.flush_interval,
        "max_retries": cfg.max_retries,
        "supabase_project_id": cfg.supabase_project_id or None,
        "timestamp": now_iso(),
    })

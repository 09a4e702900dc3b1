"""GET /api/flow-statistics?device_id=&start_time=&end_time=[&bucket=hour|day] (seed 004, FluxIO).

end_time is inclusive, as in /api/flow-data; without a range, the last 24 hours. Without
device_id: the whole fleet (rates over every meter's readings, volume summed over meters).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from flask import Blueprint, Response

from backend.api.params import accepts, choice, text, timestamp
from backend.api.responses import error_response, json_response, now_iso
from backend.fleet.auth import requires
from backend.ingest.parsing.base import MAX_DEVICE_ID_LEN
from backend.services import services
from backend.store.flow_stats import BUCKETS, RATE_METRIC, TOTAL_METRIC, FlowStats, flow_statistics
from backend.store.queries import iso, shift

bp = Blueprint("flow_stats", __name__)


def _figures(s: FlowStats) -> dict[str, Any]:
    return {"avg_flow_rate": s.rate_avg, "min_flow_rate": s.rate_min, "max_flow_rate": s.rate_max,
            "total_volume": s.volume, "flow_rate_readings": s.rate_readings,
            "totalizer_readings": s.totalizer_readings, "totalizer_resets": s.resets}


@bp.get("/api/flow-statistics")
@requires("read")
@accepts(
    text("device_id", max_len=MAX_DEVICE_ID_LEN),
    timestamp("start_time", aliases=("start",)),
    timestamp("end_time", aliases=("end",)),
    choice("bucket", BUCKETS, None),
)
def flow_statistics_route(p: dict[str, Any]) -> Response:
    end = p["end_time"] or datetime.now(UTC)
    start = p["start_time"] or shift(end, -timedelta(hours=24))
    if start > end:
        return error_response(400, "start_time: after end_time", parameter="start_time")
    report = flow_statistics(services().pool, p["device_id"], start, shift(end, timedelta(microseconds=1)),
                             p["bucket"])
    body: dict[str, Any] = {"success": True, "device_id": p["device_id"], "start_time": iso(start),
                            "end_time": iso(end), "metrics": {"flow_rate": RATE_METRIC, "totalizer": TOTAL_METRIC},
                            **_figures(report.total)}
    if p["bucket"]:
        body["bucket"] = p["bucket"]
        body["data"] = [{"bucket": iso(s.bucket), **_figures(s)} for s in report.buckets if s.bucket]
    body["timestamp"] = now_iso()
    return json_response(body, headers={"Cache-Control": "no-store"})

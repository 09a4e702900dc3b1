"""backend/api/flow_stats.py: GET /api/flow-statistics (seed 004, FluxIO)."""

from backend.api.specs.common import INT, NUM, STR, TIME, Operation, arr, envelope, nullable, obj

FIGURES = {"avg_flow_rate": nullable(NUM), "min_flow_rate": nullable(NUM), "max_flow_rate": nullable(NUM),
           "total_volume": nullable(NUM), "flow_rate_readings": INT, "totalizer_readings": INT,
           "totalizer_resets": INT}

OPERATIONS = {
    ("GET", "/api/flow-statistics"): Operation(
        "Flow rate and volume over a range (per meter or the fleet)",
        {200: envelope("device_id", "start_time", "end_time", "metrics", device_id=nullable(STR), start_time=TIME,
                       end_time=TIME, metrics=obj("flow_rate", "totalizer", flow_rate=STR, totalizer=STR),
                       bucket=STR, data=arr(obj("bucket", bucket=TIME, **FIGURES)), **FIGURES)},
        "end_time is inclusive; without a range, the last 24 hours. Without device_id: the whole fleet (rates"
        " over every meter's readings, volume summed over meters). bucket=hour|day adds `data`, one row per"
        " bucket.", tag="compatibility"),
}

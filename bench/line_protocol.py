"""Batched line-protocol ingest against the raw format, same readings, same server, same run.

Each round takes the readings of the raw-format batched phase (Bench.batch_messages: 1,000
readings a request, 4 fields a message, millisecond timestamps) in its own hour and devices,
then sends them once as raw lines to /telemetry/parse and once as line protocol to
/api/v2/write?precision=ms (`drone,device_id=<d> roll=..,pitch=..,alt=..,bat_v=.. <ms>`),
each timed from the first request until every row is counted. Raw and line protocol take
turns, so a change in the machine's other load hits both alike; the figure is the median
round of each and their ratio. Target: line protocol at least 0.9x the raw rate.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from .load import percentile, post_all
from .server import Gunicorn

if TYPE_CHECKING:  # run.py imports this module
    from .run import Bench

TARGET = 0.9
PATH = "/api/v2/write?org=bench&bucket=bench&precision=ms"


def lp_body(device: str, msgs: list[tuple[float, float, float, float, float]]) -> bytes:
    return "\n".join(f"drone,device_id={device} roll={r!r},pitch={pi!r},alt={a!r},bat_v={b!r} {round(ts * 1000)}"
                     for ts, r, pi, a, b in msgs).encode()


def batched_line_protocol(bench: Bench, srv: Gunicorn, clients_msgs: list) -> dict[str, Any]:
    auth = {"Authorization": f"Token {srv.api_key}", "Content-Type": "text/plain; charset=utf-8"}
    devices = [f"bl{c:02d}{bench.tag}" for c in range(len(clients_msgs))]
    work = [[(auth, lp_body(devices[c], msgs)) for msgs in reqs] for c, reqs in enumerate(clients_msgs)]
    expected = 4 * sum(len(m) for reqs in clients_msgs for m in reqs)
    t0 = time.perf_counter()
    run = post_all(srv.url, PATH, work)
    t_resp = time.perf_counter() - t0
    stored = bench.count_settled("SELECT count(*) FROM telemetry_readings WHERE device_id = ANY(%s)",
                                 (devices,), expected=expected)
    seconds = time.perf_counter() - t0
    out = {"format": "line_protocol", "readings": expected, "requests": run.requests, "ok": run.ok,
           "statuses": {str(k): v for k, v in run.statuses.items()}, "errors": run.errors[:3],
           "stored_readings": stored, "seconds": seconds, "responses_s": t_resp,
           "body_mb": round(sum(len(b) for items in work for _, b in items) / 2**20, 1),
           "readings_per_s": min(stored, expected) / seconds if seconds else 0.0,
           "p50_ms": percentile(run.latencies_ms, 50), "p99_ms": percentile(run.latencies_ms, 99)}
    bench.log(f"batched line protocol: {out['readings_per_s']:,.0f} readings/s ({stored}/{expected} rows,"
              f" {seconds:.2f} s, statuses {out['statuses']}) {run.errors[:1]}")
    return out


def line_protocol_phase(bench: Bench, srv: Gunicorn) -> dict[str, Any]:
    rounds = bench.plan.batch_rounds
    lp: list[dict[str, Any]] = []
    raw: list[dict[str, Any]] = []
    for rnd in range(rounds):
        # Hours before the raw/JSON phase's (3 .. 3 + rounds hours ago): nothing is a duplicate.
        msgs = bench.batch_messages(time.time() - (4 + rounds + rnd) * 3600)
        bench.tag = f"lp{rnd}"
        raw.append(bench.batched(srv, "raw", msgs))
        lp.append(batched_line_protocol(bench, srv, msgs))
    bench.tag = ""
    med_lp, med_raw = _median(lp), _median(raw)
    ratio = med_lp["readings_per_s"] / med_raw["readings_per_s"] if med_raw["readings_per_s"] else 0.0
    bench.log(f"line protocol / raw: {ratio:.2f}x (target >= {TARGET})")
    return {"line_protocol": med_lp, "raw": med_raw, "ratio": ratio, "target": TARGET, "met": ratio >= TARGET,
            "rounds_line_protocol": [round(x["readings_per_s"]) for x in lp],
            "rounds_raw": [round(x["readings_per_s"]) for x in raw]}


def _median(rs: list[dict[str, Any]]) -> dict[str, Any]:
    return sorted(rs, key=lambda x: x["readings_per_s"])[(len(rs) - 1) // 2]


def render(r: dict[str, Any]) -> list[str]:
    lp, raw = r["line_protocol"], r["raw"]
    rounds = f"{len(r['rounds_raw'])} round(s), raw and line protocol taking turns; the median round of each"
    return [
        "", "### Batched line protocol (issue 15) against raw lines, same readings", "",
        f"{rounds}. 1,000 readings a request (250 lines of 4 fields), `precision=ms`, to `/api/v2/write`;"
        " raw lines of the same readings to `/telemetry/parse`.", "",
        "| Run | readings stored / sent | requests (ok) | body MB | seconds | readings/s (rounds) | request p50 / p99 |",
        "|---|---|---|---|---|---|---|",
        f"| raw lines | {raw['stored_readings']:,} / {raw['readings']:,} | {raw['requests']} ({raw['ok']}) |"
        f" {raw['body_mb']} | {raw['seconds']:.2f} | {raw['readings_per_s']:,.0f}"
        f" ({', '.join(f'{v:,}' for v in r['rounds_raw'])}) | {raw['p50_ms']:.0f} / {raw['p99_ms']:.0f} ms |",
        f"| line protocol | {lp['stored_readings']:,} / {lp['readings']:,} | {lp['requests']} ({lp['ok']}) |"
        f" {lp['body_mb']} | {lp['seconds']:.2f} | {lp['readings_per_s']:,.0f}"
        f" ({', '.join(f'{v:,}' for v in r['rounds_line_protocol'])}) | {lp['p50_ms']:.0f} / {lp['p99_ms']:.0f} ms |",
        "", f"Line protocol / raw: **{r['ratio']:.2f}x** (target >= {r['target']}: {'met' if r['met'] else '**not met**'}).",
    ]

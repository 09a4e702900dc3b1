"""The stream phase's figures (bench/stream.py): runs of one subscriber count combined, the
targets, and the markdown section of docs/benchmarks.md."""

from __future__ import annotations

import statistics
from typing import Any

from .load import percentile

DEVICES = 500


def combine(rs: list[dict[str, Any]], ratios: list[float]) -> dict[str, Any]:
    """The runs of one subscriber count as one figure: latency percentiles over all their probe
    events, ingest as the mean of each run's ratio to its neighbouring baselines, sums of counts."""
    lat = [x for r in rs for x in r.pop("_lat")]
    ack = [x for r in rs for x in r.pop("_ack")]
    out = {**rs[-1], "runs": [{k: r[k] for k in ("readings_per_s", "p50_ms", "p99_ms", "cores", "load_average_1m",
                                                 "dispatches_per_s", "offers_per_s", "tries")} for r in rs]}
    for run, ratio in zip(out["runs"], ratios, strict=True):
        run["vs_neighbouring_baselines"] = round(ratio, 3)
    out.update({
        "readings_per_s": statistics.mean(r["readings_per_s"] for r in rs),
        "ingest_loss": 1 - statistics.mean(ratios),
        "p50_ms": percentile(lat, 50), "p99_ms": percentile(lat, 99), "max_ms": max(lat, default=float("nan")),
        "ack_to_event_p50_ms": percentile(ack, 50), "ack_to_event_p99_ms": percentile(ack, 99),
        "load_average_1m": max(r["load_average_1m"] for r in rs),
        **{k: sum(r[k] for r in rs) for k in ("probe_events", "expected_probe_events", "missed", "readings")},
        **{k: round(sum(r[k] for r in rs), 2) for k in ("stream_cpu_s", "clients_cpu_s", "seconds")},
    })
    return out


def stream_targets(r: dict[str, Any]) -> list[tuple[str, str, bool]]:
    s = r["stream"]
    top = s["with"][str(max(int(k) for k in s["with"]))]
    n = top["subscribers"]
    return [
        (f"stream commit-to-event p99 < 250 ms at {n} subscribers", f"{top['p99_ms']:.0f} ms", top["p99_ms"] < 250),
        (f"batched ingest loses < 15% with {n} subscribers", f"{top['ingest_loss']:.1%}", top["ingest_loss"] < 0.15),
    ]


def render_stream(r: dict[str, Any]) -> list[str]:
    s = r["stream"]
    lines = ["", "### Live stream (bench/stream.py)", "",
             f"Batched ingest ({s['plan']['readings']:,} readings per run, {s['plan']['clients']} clients, JSON bodies"
             f" of {s['plan']['per_request']:,} readings over {DEVICES} devices) with SSE subscribers held open,"
             " each watching one device and the probe device; a probe reading every"
             f" {s['plan']['probe_interval_s'] * 1000:.0f} ms.",
             "",
             "| Subscribers | Ingest readings/s | vs no subscriber | Commit-to-event p50 | p99 | max |"
             " Ack-to-event p50 / p99 | Probe events received | Missed | Stream process CPU s |"
             " Subscriber clients CPU s | Load average |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|",
             f"| 0 (mean of {len(s['baseline_runs'])} runs) | {s['baseline_readings_per_s']:,.0f} | 100% |"
             " | | | | | | | |"
             f" {s.get('baseline_load', '')} |"]
    for k, w in s["with"].items():
        lines.append(f"| {k} | {w['readings_per_s']:,.0f} | {1 - w['ingest_loss']:.0%} | {w['p50_ms']:.1f} ms |"
                     f" {w['p99_ms']:.1f} ms | {w['max_ms']:.0f} ms | {w['ack_to_event_p50_ms']:.1f} /"
                     f" {w['ack_to_event_p99_ms']:.1f} ms | {w['probe_events']:,} of"
                     f" {w['expected_probe_events']:,} | {w['missed']} | {w['stream_cpu_s']} | {w['clients_cpu_s']} |"
                     f" {w['load_average_1m']} |")
    lines += ["", f"Order of the runs: {', '.join(map(str, s.get('order', [])))} subscribers (the first a"
              " warm-up of a third of the readings, not counted). Each run with subscribers is compared with the"
              " mean of the baselines just before and after it; the table gives the mean of those ratios,"
              " latency over the probe events of all its runs, CPU summed over them. A run during which other"
              " jobs took more than 0.3 cores was done again (the least disturbed try kept; retries in this"
              f" phase: {s.get('retries', 0)}). What the subscribers took of the machine (the stream process"
              " above its baseline CPU, plus the subscriber clients; about what a CPU-bound ingest loses,"
              " and unmoved by other jobs): "
              + "; ".join(f"{k} subscribers {w['subscribers_cores']:.2f} cores = {w['subscribers_machine_share']:.1%}"
                          " of the machine" for k, w in s["with"].items() if "subscribers_cores" in w)
              + ". Per run:", ""]
    for k, w in s["with"].items():
        for run in w.get("runs", []):
            c = run["cores"]
            lines.append(f"- {k} subscribers: {run['readings_per_s']:,.0f} readings/s ="
                         f" {run['vs_neighbouring_baselines']:.0%} of its baselines, p50 / p99 {run['p50_ms']:.0f} /"
                         f" {run['p99_ms']:.0f} ms, {run['dispatches_per_s']} dispatches and {run['offers_per_s']:,.0f}"
                         f" subscriber writes per s; cores: gunicorn {c['gunicorn']}, PostgreSQL {c['postgres']},"
                         f" stream {c['stream']}, subscriber clients {c['subscriber_clients']}, ingest clients"
                         f" {c['ingest_clients']}, other jobs {c['other']} (tries: {run.get('tries', 1)})")
    lines += ["", "Commit-to-event is measured from the stream row's time (taken inside the writer's"
              " transaction, before its COMMIT) to arrival: an upper bound. Ack-to-event (from the probe's"
              " acknowledgement, after its commit) is a lower bound. The subscriber clients run on the same"
              " 2 cores: their CPU is part of the measured cost."]
    return lines

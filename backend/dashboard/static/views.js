// The fleet overview, the alert list and the ingest-health view. Each view is an object with
// start() and stop(); the router (app.js) starts one at a time.
import { api, ApiError, apiText, ago, el, fmtValue } from "./api.js";
import { LiveFeed } from "./live.js";

const REFRESH_MS = 2000;

function every(ms, fn) {
  let timer = null, stopped = false;
  const run = async () => {
    try { await fn(); } catch (exc) { if (!(exc instanceof ApiError)) console.error(exc); }
    if (!stopped) timer = setTimeout(run, ms);
  };
  run();
  return () => { stopped = true; clearTimeout(timer); };
}

function statusDot(online) {
  return el("span", { class: `dot ${online ? "online" : "offline"}`, title: online ? "online" : "offline" },
    online ? "online" : "offline");
}

function alertItem(a) {
  return el("li", { class: `alert ${a.severity}`, dataset: { alertId: a.id } },
    el("b", {}, a.severity), " ", el("a", { href: `#/device/${encodeURIComponent(a.device_id)}` }, a.device_id),
    " · ", a.message || a.alert_type, " · ", el("span", { class: "muted" }, a.triggered_at || a.created_at));
}

export class OverviewView {
  start() {
    this.cells = new Map();
    this.stopRefresh = every(REFRESH_MS, () => this.refresh());
    // Between refreshes, latest values move with the stream (when the service has one).
    this.feed = new LiveFeed({ poll: false, onReading: (r) => this.onReading(r) }).start();
  }

  stop() { this.stopRefresh(); this.feed.stop(); }

  async refresh() {
    const [summary, devices, alerts] = await Promise.all([
      api("/api/dashboard/summary"), api("/api/devices"), api("/api/alerts", { params: { is_resolved: "false",
        limit: 20 } }),
    ]);
    document.getElementById("card-devices").textContent = summary.total_devices;
    document.getElementById("card-online").textContent = summary.online_devices;
    document.getElementById("card-offline").textContent = summary.offline_devices;
    document.getElementById("card-alerts").textContent = summary.active_alerts;
    document.getElementById("offline-rule").textContent = `(offline after ${devices.offline_after_s} s silent)`;
    const body = document.getElementById("devices");
    this.cells.clear();
    body.replaceChildren(...devices.data.map((d) => this.deviceRow(d)));
    const list = document.getElementById("overview-alerts");
    list.replaceChildren(...(alerts.data.length ? alerts.data.map(alertItem) : [el("li", { class: "muted" },
      "no active alerts")]));
  }

  deviceRow(d) {
    const values = el("td", { class: "latest" });
    for (const [metric, v] of Object.entries(d.latest || {})) {
      const cell = el("span", { class: "value", dataset: { metric } }, `${metric} ${fmtValue(v.value)}`);
      this.cells.set(`${d.device_id}|${metric}`, cell);
      values.append(cell, " ");
    }
    return el("tr", { dataset: { deviceId: d.device_id, status: d.status } },
      el("td", {}, statusDot(d.online)),
      el("td", {}, el("a", { href: `#/device/${encodeURIComponent(d.device_id)}` }, d.device_name)),
      el("td", { title: d.last_seen || "" }, ago(d.seconds_since_seen)), values);
  }

  onReading(r) {
    const cell = this.cells.get(`${r.device_id}|${r.metric}`);
    if (cell) cell.textContent = `${r.metric} ${fmtValue(r.text ?? r.value)}`;
  }
}

export class AlertsView {
  start() { this.stopRefresh = every(REFRESH_MS, () => this.refresh()); }

  stop() { this.stopRefresh(); }

  async refresh() {
    const [open, resolved] = await Promise.all([
      api("/api/alerts", { params: { is_resolved: "false", limit: 200 } }),
      api("/api/alerts", { params: { is_resolved: "true", limit: 50 } }),
    ]);
    const dev = (a) => el("a", { href: `#/device/${encodeURIComponent(a.device_id)}` }, a.device_id);
    document.getElementById("alerts-open").replaceChildren(...open.data.map((a) => el("tr",
      { dataset: { alertId: a.id }, class: a.severity },
      el("td", {}, a.severity), el("td", {}, dev(a)), el("td", {}, a.metric ?? ""), el("td", {}, a.message ?? ""),
      el("td", {}, a.triggered_at ?? a.created_at),
      el("td", {}, el("button", { type: "button", class: "resolve", onclick: () => this.resolve(a.id) },
        "Resolve")))));
    document.getElementById("alerts-resolved").replaceChildren(...resolved.data.map((a) => el("tr",
      { dataset: { alertId: a.id } },
      el("td", {}, a.severity), el("td", {}, dev(a)), el("td", {}, a.metric ?? ""), el("td", {}, a.message ?? ""),
      el("td", {}, a.resolved_at ?? ""), el("td", {}, a.resolved_by ?? ""))));
  }

  async resolve(id) {
    const error = document.getElementById("alerts-error");
    error.textContent = "";
    try {
      await api("/api/alerts", { method: "PATCH", body: { alert_id: id, is_resolved: true,
        resolved_by: "dashboard" } });
    } catch (exc) {
      error.textContent = exc.status === 403 ? "Resolving an alert needs a key with admin scope."
        : `Could not resolve alert ${id}: ${exc.message}`;
    }
    await this.refresh();
  }
}

// The sum of a Prometheus counter or gauge over all its label sets (null: not in the text).
export function sumMetric(text, name) {
  let total = null;
  for (const line of text.split("\n")) {
    if (!line || line[0] === "#") continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{.*\})?\s+(\S+)/.exec(line);
    if (m && m[1] === name && Number.isFinite(Number(m[2]))) total = (total ?? 0) + Number(m[2]);
  }
  return total;
}

// Readings/s and rejections come from /metrics (all workers, prometheus-client multiprocess)
// when the service has it: accepted readings by format and transport, and readings rejected
// within accepted requests plus requests refused whole.
async function metricsFigures() {
  const text = await apiText("/metrics");
  if (text === null) return null;
  return {
    accepted: sumMetric(text, "telemetry_readings_accepted_total"),
    rejected: sumMetric(text, "telemetry_readings_rejected_total"),
    refusedRequests: sumMetric(text, "telemetry_ingest_requests_refused_total"),
  };
}

// The ingest figures. /telemetry/batch/status answers for the whole service once it says so
// (a `workers` field); before that each answer is one worker's, so the page keeps the newest
// answer of every worker it has seen and adds them up.
const COUNTERS = ["written_total", "refused_total", "failed_total", "quarantined_total", "rejected_total",
  "duplicates_total", "pending_records"];

export class HealthView {
  start() {
    this.perWorker = new Map();
    this.prev = null;
    this.hasMetrics = null; // learnt from the first /metrics answer
    this.stopRefresh = every(REFRESH_MS, () => this.refresh());
  }

  stop() { this.stopRefresh(); }

  totals(status) {
    const pick = (s) => Object.fromEntries(COUNTERS.map((k) => [k, Number(s[k] || 0)]));
    const w = status.workers;
    if (w !== undefined) {
      const n = Array.isArray(w) ? w.length : typeof w === "object" ? Object.keys(w).length : Number(w);
      return { sums: pick(status), scope: `the whole service (${n} worker${n === 1 ? "" : "s"})` };
    }
    this.perWorker.set(status.worker_pid, pick(status));
    const sums = Object.fromEntries(COUNTERS.map((k) => [k, 0]));
    for (const v of this.perWorker.values()) for (const k of COUNTERS) sums[k] += v[k];
    const pids = [...this.perWorker.keys()].join(", ");
    return { sums, scope: `only the worker(s) that answered (pid ${pids}): this service's /telemetry/batch/status`
      + " reports one worker per answer" };
  }

  async refresh() {
    const [status, health, metrics] = await Promise.all([
      api("/telemetry/batch/status"),
      api("/health", { params: { details: 1 } }).catch((exc) => exc.body || { status: "unreachable" }),
      this.hasMetrics === false ? null : metricsFigures().catch(() => null),
    ]);
    if (this.hasMetrics === null) this.hasMetrics = metrics !== null;
    const { sums, scope } = this.totals(status);
    const counted = metrics && metrics.accepted !== null ? metrics.accepted : sums.written_total;
    const now = performance.now();
    if (this.prev) {
      const dt = (now - this.prev.t) / 1000;
      const rate = Math.max(0, counted - this.prev.counted) / dt;
      document.getElementById("h-rate").textContent = rate.toFixed(1);
    }
    this.prev = { t: now, counted };
    const set = (id, text) => { document.getElementById(id).textContent = text; };
    set("h-written", sums.written_total);
    let rejected;
    if (metrics && metrics.rejected !== null) {
      rejected = metrics.rejected + (metrics.refusedRequests ?? 0);
      set("h-rejected", `${metrics.rejected} readings · ${metrics.refusedRequests ?? 0} requests`);
    } else {
      rejected = sums.refused_total + sums.failed_total + sums.quarantined_total;
      set("h-rejected", `${sums.refused_total + sums.failed_total} refused · ${sums.quarantined_total} quarantined`);
    }
    // Red only when something was rejected: a red zero reads as an alarm.
    document.getElementById("h-rejected-card").classList.toggle("bad", rejected > 0);
    set("h-buffer", `${sums.pending_records} / ${status.max_pending}`);
    const spool = status.spool || {};
    set("h-spool", spool.enabled === false ? "off" : `${spool.depth_bytes ?? 0} B`);
    const circuit = (status.circuit || {}).state || "unknown";
    const c = document.getElementById("h-circuit");
    c.textContent = circuit;
    c.className = `value circuit-${circuit}`;
    set("h-scope", `Figures of ${scope}.` + (metrics && metrics.accepted !== null
      ? " Readings/s and rejections: /metrics, all workers." : " Readings/s: the change of written_total."));
    const hs = document.getElementById("h-status");
    hs.textContent = health.status;
    hs.className = `status ${health.status}`;
    const db = health.database || {};
    const rows = [
      ["database", `${db.kind ?? "?"} ${db.name ?? ""} ${db.connected ? "connected" : "NOT connected"}`],
      ["oldest unflushed reading", `${health.oldest_unflushed_age_s ?? 0} s`],
      ["spool", spool.enabled === false ? "off" : `${spool.accepting ? "accepting" : "refusing"}, `
        + `${spool.own_pending_readings ?? 0} readings waiting, ${spool.replayed_readings_total ?? 0} replayed`],
      ["circuit", `${circuit}${status.circuit && status.circuit.reason ? ` (${status.circuit.reason})` : ""}`],
      ["duplicates", sums.duplicates_total],
      ["last error", status.last_error ? `${status.last_error} at ${status.last_error_at}` : "none"],
    ];
    document.getElementById("h-detail").replaceChildren(...rows.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
  }
}

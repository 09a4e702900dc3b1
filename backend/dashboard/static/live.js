// New readings for the page: the SSE stream (/api/stream with a short-lived token) when the
// service has it, else the query API polled every second. The mode is shown in the header
// badge and kept in window.dashboardLive.mode ("stream" or "polling") for tests.
import { api, ApiError, tsMicros } from "./api.js";

const POLL_MS = 1000;
const STREAM_RETRY_MS = 15000;
const RECONNECT_FIRST_MS = 1000, RECONNECT_MAX_MS = 30000;
const SEEN_MAX = 5000;

function setMode(mode) {
  window.dashboardLive = { ...(window.dashboardLive || {}), mode };
  const badge = document.getElementById("live-mode");
  if (badge) {
    badge.textContent = mode === "stream" ? "live: stream" : mode === "polling" ? "live: polling 1 s" : mode;
    badge.dataset.mode = mode;
  }
}

export class LiveFeed {
  // deviceIds/metrics filter what arrives (empty = everything); onReading gets
  // {device_id, metric, ts, value, text}; poll=false: no polling fallback (the overview
  // refreshes itself anyway); since: ISO time from which polling starts.
  constructor({ deviceIds = [], metrics = [], onReading, onMissed = () => {}, poll = true, since = null }) {
    Object.assign(this, { deviceIds, metrics, onReading, onMissed, poll });
    this.stopped = false;
    this.source = null;
    this.lastEventId = null;
    this.timers = new Set();
    this.last = new Map(); // "device|metric" -> µs of the newest reading seen
    this.seen = new Set(); // "device|metric|ts" of recent readings: a resumed stream may repeat polled ones
    this.seenOrder = [];
    this.reconnectMs = RECONNECT_FIRST_MS;
    this.since = since || new Date().toISOString();
  }

  start() { this.openStream(); return this; }

  stop() {
    this.stopped = true;
    if (this.source) this.source.close();
    for (const t of this.timers) clearTimeout(t);
    this.timers.clear();
  }

  later(fn, ms) {
    const t = setTimeout(() => { this.timers.delete(t); if (!this.stopped) fn(); }, ms);
    this.timers.add(t);
  }

  deliver(r) {
    const key = `${r.device_id}|${r.metric}`;
    const us = tsMicros(r.ts);
    const id = `${key}|${us}`;
    if (this.seen.has(id)) return;
    this.seen.add(id);
    this.seenOrder.push(id);
    if (this.seenOrder.length > SEEN_MAX) this.seen.delete(this.seenOrder.shift());
    this.last.set(key, Math.max(us, this.last.get(key) ?? -Infinity));
    this.onReading(r);
  }

  async openStream() {
    let grant;
    try {
      grant = await api("/api/stream/token", { method: "POST" });
    } catch (exc) {
      // 404/405: this service has no stream; anything else: try again later. Poll meanwhile.
      this.startPolling();
      if (!(exc instanceof ApiError && (exc.status === 404 || exc.status === 405))) {
        this.later(() => this.openStream(), STREAM_RETRY_MS);
      }
      return;
    }
    if (this.stopped) return;
    const url = new URL(grant.stream_url, window.location.origin);
    url.searchParams.set("token", grant.token);
    for (const d of this.deviceIds) url.searchParams.append("device_id", d);
    for (const m of this.metrics) url.searchParams.append("metric", m);
    if (this.lastEventId) url.searchParams.set("last_event_id", this.lastEventId);
    const source = new EventSource(url);
    this.source = source;
    source.addEventListener("open", () => { this.mode = "stream"; this.reconnectMs = RECONNECT_FIRST_MS;
      setMode("stream"); });
    source.addEventListener("reading", (ev) => {
      if (ev.lastEventId) this.lastEventId = ev.lastEventId;
      this.deliver(JSON.parse(ev.data));
    });
    source.addEventListener("missed", (ev) => this.onMissed(JSON.parse(ev.data).missed));
    source.addEventListener("error", () => {
      // EventSource would retry with the same (soon expired) token: reopen with a new one,
      // from the last event id, and poll in between so nothing waits on the stream.
      source.close();
      if (this.source !== source || this.stopped) return;
      this.source = null;
      this.startPolling();
      this.later(() => this.openStream(), this.reconnectMs);
      this.reconnectMs = Math.min(this.reconnectMs * 2, RECONNECT_MAX_MS);
    });
    // Renew the token before it lapses, resuming where this connection is.
    this.later(() => { if (this.source === source) { source.close(); this.source = null; this.openStream(); } },
      Math.max(5, (grant.expires_in || 60) * 0.8) * 1000);
  }

  startPolling() {
    if (!this.poll) { setMode("refresh 2 s"); return; }
    if (this.mode === "polling") return;
    this.mode = "polling";
    setMode("polling");
    const tick = async () => {
      if (this.stopped || this.mode !== "polling") return;
      try { await this.pollOnce(); } catch { /* shown by the next success; keep polling */ }
      this.later(tick, POLL_MS);
    };
    tick();
  }

  async pollOnce() {
    // From the oldest "newest reading" of the series seen, so that no series misses a point.
    let fromUs = tsMicros(this.since);
    if (this.last.size) fromUs = Math.min(...this.last.values());
    const start = new Date(Math.floor(fromUs / 1000)).toISOString();
    const body = await api("/telemetry/query", {
      params: { device_id: this.deviceIds, metric: this.metrics, start, desc: "false", order_by: "ts",
        limit: 10000 },
    });
    if (this.mode !== "polling") return;
    for (const r of body.data) this.deliver(r);
  }
}

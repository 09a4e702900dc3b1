// The device chart: history downsampled to about the chart's pixel width, live points
// appended without reload, and gaps (no data for a while) drawn as gaps, not as lines.
import { api, ApiError, tsMicros } from "./api.js";

export const RANGES = { "15m": 900, "1h": 3600, "24h": 86400, "7d": 7 * 86400 };
// The aggregate API's bucket sizes (backend/store/queries.py BUCKETS), in seconds.
const BUCKETS = [["1s", 1], ["10s", 10], ["1m", 60], ["5m", 300], ["15m", 900], ["1h", 3600], ["6h", 21600],
  ["1d", 86400]];
const RAW_LIMIT = 10000;
const FLUSH_MS = 250; // live points are drawn in batches: one redraw per batch, not per reading
const MARKERS_BELOW = 300; // markers on sparse traces (a lone point between gaps stays visible)
let downsampleSupported = null; // learnt from the first answer: null = not known yet

// Plotly has no time zones: it is given UTC wall-clock strings, and the axis says UTC.
export function plotTime(ms) { return new Date(ms).toISOString().slice(0, -1); }

// Insert a null point wherever two neighbours are further apart than `gapMs`, so that the
// line breaks there (connectgaps is off).
export function withGaps(xsMs, ys, gapMs) {
  const x = [], y = [];
  for (let i = 0; i < xsMs.length; i++) {
    if (i > 0 && xsMs[i] - xsMs[i - 1] > gapMs) { x.push(plotTime((xsMs[i] + xsMs[i - 1]) / 2)); y.push(null); }
    x.push(plotTime(xsMs[i]));
    y.push(ys[i]);
  }
  return { x, y };
}

function medianStep(xsMs) {
  const steps = [];
  for (let i = 1; i < xsMs.length; i++) steps.push(xsMs[i] - xsMs[i - 1]);
  if (!steps.length) return 1000;
  steps.sort((a, b) => a - b);
  return steps[Math.floor(steps.length / 2)];
}

function bySeries(rows) {
  const out = {};
  for (const r of rows) {
    if (typeof r.value !== "number") continue;
    (out[r.metric] ||= { xs: [], ys: [] });
    out[r.metric].xs.push(tsMicros(r.ts) / 1000);
    out[r.metric].ys.push(r.value);
  }
  for (const s of Object.values(out)) s.gapMs = Math.max(3 * medianStep(s.xs), 3000);
  return out;
}

async function rawHistory(device, metrics, start, end, points) {
  const params = { device_id: device, metric: metrics, start, end, desc: "true", limit: RAW_LIMIT };
  if (downsampleSupported !== false) params.downsample = points;
  let body;
  try {
    body = await api("/telemetry/query", { params });
    if (downsampleSupported === null) downsampleSupported = "downsample" in params;
  } catch (exc) {
    // Before the LTTB branch lands, the API names downsample as an unknown parameter.
    if (!(exc instanceof ApiError && exc.status === 400 && /downsample/.test(exc.message))) throw exc;
    downsampleSupported = false;
    delete params.downsample;
    body = await api("/telemetry/query", { params });
  }
  const rows = body.data.slice().sort((a, b) => tsMicros(a.ts) - tsMicros(b.ts));
  const source = downsampleSupported ? `LTTB downsample=${points}` : "raw";
  return { series: bySeries(rows), source, truncated: rows.length >= RAW_LIMIT && !downsampleSupported };
}

// Min and max per bucket of about one pixel: the shape of every spike survives.
async function minMaxHistory(device, metrics, start, end, points) {
  const perPixel = (Date.parse(end) - Date.parse(start)) / 1000 / points;
  const [bucket, seconds] = BUCKETS.find(([, s]) => s >= perPixel) || BUCKETS[BUCKETS.length - 1];
  const series = {};
  await Promise.all(metrics.map(async (metric) => {
    const [lo, hi] = await Promise.all(["min", "max"].map((agg) => api("/telemetry/aggregate", {
      params: { metric, bucket, agg, start, end, device_id: device },
    })));
    const pts = [];
    for (const r of lo.data) pts.push([Date.parse(r.bucket), r.value]);
    for (const r of hi.data) pts.push([Date.parse(r.bucket) + seconds * 500, r.value]);
    pts.sort((a, b) => a[0] - b[0]);
    series[metric] = { xs: pts.map((p) => p[0]), ys: pts.map((p) => p[1]), gapMs: seconds * 2500 };
  }));
  return { series, source: `min/max per ${bucket}` };
}

export async function loadHistory(device, metrics, startMs, endMs, widthPx) {
  const points = Math.max(100, Math.round(widthPx));
  const start = new Date(startMs).toISOString(), end = new Date(endMs).toISOString();
  const perPixelS = (endMs - startMs) / 1000 / points;
  // Up to about a reading a second per pixel the raw rows are what is drawn anyway.
  if (downsampleSupported !== false || perPixelS <= 1) {
    const raw = await rawHistory(device, metrics, start, end, points);
    if (downsampleSupported || (perPixelS <= 1 && !raw.truncated)) return raw;
  }
  return minMaxHistory(device, metrics, start, end, points);
}

export class DeviceChart {
  constructor(div, info) {
    Object.assign(this, { div, info, traces: [], pending: [], flushTimer: null, shiftedAt: 0 });
  }

  // range: {startMs, endMs, follow}; follow = the end is "now" and moves with the clock.
  async show(device, metrics, range) {
    this.device = device;
    this.range = range;
    const width = this.div.clientWidth || 900;
    const hist = await loadHistory(device, metrics, range.startMs, range.endMs, width);
    this.traces = metrics.map((m) => ({ metric: m, gapMs: hist.series[m]?.gapMs ?? 3000,
      lastMs: hist.series[m]?.xs.at(-1) ?? null }));
    const data = metrics.map((m) => {
      const s = hist.series[m] || { xs: [], ys: [] };
      const { x, y } = withGaps(s.xs, s.ys, s.gapMs ?? 3000);
      return { x, y, name: m, type: "scatter", mode: x.length < MARKERS_BELOW ? "lines+markers" : "lines",
        marker: { size: 4 }, connectgaps: false };
    });
    const layout = {
      margin: { l: 50, r: 20, t: 40, b: 50 }, height: 420, showlegend: true,
      legend: { orientation: "h", x: 0, y: 1.02, yanchor: "bottom" },
      xaxis: { type: "date", title: { text: "time (UTC)" }, range: [plotTime(range.startMs), plotTime(range.endMs)] },
      yaxis: { zeroline: false }, uirevision: `${device}|${metrics.join(",")}`,
    };
    this.pending = [];
    await window.Plotly.react(this.div, data, layout, { responsive: true, displaylogo: false });
    this.shiftedAt = Date.now();
    const n = Object.values(hist.series).reduce((a, s) => a + s.xs.length, 0);
    this.info.textContent = `${n} points from ${hist.source}`;
    this.info.dataset.source = hist.source;
  }

  // A reading from the live feed: queued, and drawn with the others of the next batch.
  append(r) {
    if (typeof r.value !== "number" || r.device_id !== this.device) return;
    if (!this.traces.some((t) => t.metric === r.metric)) return;
    this.pending.push(r);
    if (this.flushTimer === null) this.flushTimer = setTimeout(() => this.flush(), FLUSH_MS);
  }

  // Each trace gets its new points in order (after a null where they come after a gap).
  flush() {
    this.flushTimer = null;
    const batch = this.pending.sort((a, b) => tsMicros(a.ts) - tsMicros(b.ts));
    this.pending = [];
    const xs = this.traces.map(() => []), ys = this.traces.map(() => []);
    for (const r of batch) {
      const i = this.traces.findIndex((t) => t.metric === r.metric);
      const t = this.traces[i];
      const ms = tsMicros(r.ts) / 1000;
      if (!this.range.follow && ms > this.range.endMs) continue;
      if (t.lastMs !== null && ms - t.lastMs > t.gapMs) { xs[i].push(plotTime((ms + t.lastMs) / 2)); ys[i].push(null); }
      xs[i].push(plotTime(ms));
      ys[i].push(r.value);
      t.lastMs = t.lastMs === null ? ms : Math.max(t.lastMs, ms);
    }
    const idx = this.traces.map((_, i) => i).filter((i) => xs[i].length);
    if (idx.length) window.Plotly.extendTraces(this.div, { x: idx.map((i) => xs[i]), y: idx.map((i) => ys[i]) }, idx);
  }

  // A following range slides with the clock, redrawn once it has moved by about a pixel.
  tick() {
    if (!this.range || !this.range.follow) return;
    const span = this.range.endMs - this.range.startMs;
    const pixelMs = span / (this.div.clientWidth || 900);
    if (Date.now() - this.shiftedAt < Math.max(1000, pixelMs)) return;
    this.shiftedAt = Date.now();
    this.range.endMs = Date.now();
    this.range.startMs = this.range.endMs - span;
    window.Plotly.relayout(this.div, { "xaxis.range": [plotTime(this.range.startMs), plotTime(this.range.endMs)] });
  }
}

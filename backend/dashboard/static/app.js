// The page's router and sign-in. Views: #/ (fleet), #/device/<id>, #/alerts, #/health.
import { api, ApiError, clearKey, el, getKey, setKey } from "./api.js";
import { DeviceChart, RANGES } from "./chart.js";
import { LiveFeed } from "./live.js";
import { AlertsView, HealthView, OverviewView } from "./views.js";

const MAX_DEFAULT_METRICS = 5;

class DeviceView {
  constructor(deviceId) { this.deviceId = deviceId; this.rangeName = "15m"; this.selected = null; }

  async start() {
    document.getElementById("device-title").textContent = this.deviceId;
    this.chart = new DeviceChart(document.getElementById("chart"), document.getElementById("chart-info"));
    for (const b of document.querySelectorAll("#ranges button")) b.onclick = () => this.pickRange(b.dataset.range);
    document.getElementById("custom-range").onsubmit = (ev) => { ev.preventDefault(); this.pickRange("custom"); };
    const d = await this.refreshStatus();
    this.statusTimer = setInterval(() => this.refreshStatus().catch(() => {}), 2000);
    const numeric = Object.entries(d.latest || {}).filter(([, v]) => typeof v.value === "number").map(([m]) => m);
    this.selected = new Set(numeric.slice(0, MAX_DEFAULT_METRICS));
    document.getElementById("metrics").replaceChildren(...numeric.map((m) => {
      const box = el("input", { type: "checkbox", value: m, onchange: () => this.toggle(m, box.checked) });
      box.checked = this.selected.has(m);
      return el("label", {}, box, ` ${m}`);
    }));
    this.clock = setInterval(() => this.chart.tick(), 1000);
    await this.pickRange(this.rangeName);
  }

  async refreshStatus() {
    const d = (await api(`/api/devices/${encodeURIComponent(this.deviceId)}`)).data;
    const status = document.getElementById("device-status");
    status.textContent = `${d.status}, last seen ${d.last_seen ?? "never"}`;
    status.className = `status ${d.status}`;
    return d;
  }

  stop() { clearInterval(this.clock); clearInterval(this.statusTimer); if (this.feed) this.feed.stop(); this.stopped = true; }

  toggle(metric, on) {
    if (on) this.selected.add(metric); else this.selected.delete(metric);
    this.pickRange(this.rangeName);
  }

  range() {
    if (this.rangeName !== "custom") {
      const endMs = Date.now();
      return { startMs: endMs - RANGES[this.rangeName] * 1000, endMs, follow: true };
    }
    // datetime-local is the browser's local time; the chart is in UTC.
    const startMs = Date.parse(document.getElementById("custom-start").value);
    const endMs = Date.parse(document.getElementById("custom-end").value);
    return { startMs, endMs, follow: endMs >= Date.now() };
  }

  async pickRange(name) {
    const form = document.getElementById("custom-range");
    if (name === "custom" && form.hidden) {
      // First click: offer the last hour to edit.
      const toLocal = (ms) => new Date(ms - new Date().getTimezoneOffset() * 60000).toISOString().slice(0, 19);
      document.getElementById("custom-start").value = toLocal(Date.now() - 3600e3);
      document.getElementById("custom-end").value = toLocal(Date.now());
      form.hidden = false;
    } else if (name !== "custom") {
      form.hidden = true;
    }
    this.rangeName = name;
    for (const b of document.querySelectorAll("#ranges button")) b.classList.toggle("active", b.dataset.range === name);
    const range = this.range();
    if (!(range.startMs < range.endMs)) { document.getElementById("chart-info").textContent = "from must be before to"; return; }
    const metrics = [...this.selected];
    if (this.feed) this.feed.stop();
    // Subscribe first, buffer what arrives while the history loads, then append it: no gap.
    const early = [];
    let ready = false;
    this.feed = new LiveFeed({ deviceIds: [this.deviceId], metrics, since: new Date(range.endMs).toISOString(),
      onReading: (r) => (ready ? this.chart.append(r) : early.push(r)),
      onMissed: () => this.pickRange(this.rangeName) }).start();
    await this.chart.show(this.deviceId, metrics, range);
    ready = true;
    for (const r of early) this.chart.append(r);
  }
}

const VIEWS = { overview: () => new OverviewView(), alerts: () => new AlertsView(), health: () => new HealthView() };
let current = null;

function route() {
  if (current) current.stop();
  current = null;
  const hash = window.location.hash || "#/";
  const m = /^#\/device\/(.+)$/.exec(hash);
  const name = m ? "device" : hash === "#/alerts" ? "alerts" : hash === "#/health" ? "health" : "overview";
  for (const v of document.querySelectorAll(".view")) v.hidden = v.id !== `view-${name}`;
  for (const a of document.querySelectorAll("nav a")) a.classList.toggle("active", a.dataset.nav === name);
  const badge = document.getElementById("live-mode");
  badge.textContent = "refresh 2 s"; // a view with a live feed says which one it uses
  badge.dataset.mode = "refresh";
  window.dashboardLive = { mode: "refresh" };
  current = m ? new DeviceView(decodeURIComponent(m[1])) : VIEWS[name]();
  Promise.resolve(current.start()).catch((exc) => {
    if (!(exc instanceof ApiError && exc.status === 401)) console.error(exc);
  });
}

function askForKey(message = "") {
  if (current) current.stop();
  current = null;
  document.getElementById("app").hidden = true;
  document.getElementById("signin").hidden = false;
  document.getElementById("sign-out").hidden = true;
  document.getElementById("signin-error").textContent = message;
  document.getElementById("key-input").focus();
}

function signedIn() {
  document.getElementById("signin").hidden = true;
  document.getElementById("app").hidden = false;
  document.getElementById("sign-out").hidden = false;
  route();
}

async function trySignIn(key) {
  setKey(key);
  try {
    await api("/api/dashboard/summary");
  } catch (exc) {
    clearKey();
    askForKey(exc.status === 401 ? "That key is unknown, expired or revoked." : exc.status === 403
      ? "That key lacks read scope." : `Cannot check the key: ${exc.message}`);
    return;
  }
  signedIn();
}

function boot() {
  document.getElementById("signin-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const input = document.getElementById("key-input");
    const key = input.value.trim();
    input.value = ""; // the key leaves the DOM at once
    trySignIn(key);
  });
  document.getElementById("sign-out").addEventListener("click", () => { clearKey(); askForKey(); });
  window.addEventListener("auth-required", () => { clearKey(); askForKey("Please sign in (the key was refused)."); });
  window.addEventListener("hashchange", () => { if (getKey()) route(); });
  if (getKey()) signedIn(); else askForKey();
}

boot();

// The API client: the key lives in sessionStorage (this tab only) and travels as a header.
const KEY_NAME = "telemetry.apiKey";

export function getKey() { return sessionStorage.getItem(KEY_NAME); }
export function setKey(key) { sessionStorage.setItem(KEY_NAME, key); }
export function clearKey() { sessionStorage.removeItem(KEY_NAME); }

export class ApiError extends Error {
  constructor(status, message, body) {
    super(message);
    this.status = status;
    this.body = body;
  }
}

function buildUrl(path, params) {
  const url = new URL(path, window.location.origin);
  for (const [name, value] of Object.entries(params || {})) {
    if (value === undefined || value === null) continue;
    for (const v of Array.isArray(value) ? value : [value]) url.searchParams.append(name, String(v));
  }
  return url;
}

// fetch() against our own origin; a 401 tells the page to ask for a key again.
export async function api(path, { method = "GET", params, body } = {}) {
  const headers = {};
  const key = getKey();
  if (key) headers["X-API-Key"] = key;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const resp = await fetch(buildUrl(path, params), {
    method, headers, cache: "no-store", credentials: "same-origin",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  let data = null;
  try { data = await resp.json(); } catch { data = null; }
  if (resp.status === 401) window.dispatchEvent(new CustomEvent("auth-required"));
  if (!resp.ok) throw new ApiError(resp.status, (data && data.error) || resp.statusText, data);
  return data;
}

// A text answer (Prometheus' /metrics); null when the service has no such route (404).
export async function apiText(path) {
  const headers = {};
  const key = getKey();
  if (key) headers["X-API-Key"] = key;
  const resp = await fetch(buildUrl(path), { headers, cache: "no-store", credentials: "same-origin" });
  if (resp.status === 404) return null;
  if (!resp.ok) throw new ApiError(resp.status, resp.statusText, null);
  return resp.text();
}

// Microseconds since the epoch of an ISO time with up to 6 decimals ("…:47.263153Z"), so that
// two readings a few µs apart still compare correctly (Date keeps milliseconds only).
export function tsMicros(iso) {
  const m = /^(.*?:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:?\d\d)?$/.exec(iso);
  if (!m) return Date.parse(iso) * 1000;
  const whole = Date.parse(m[1] + (m[3] || "Z"));
  const frac = (m[2] || "").padEnd(6, "0").slice(0, 6);
  return whole * 1000 + Number(frac);
}

export function ago(seconds) {
  if (seconds === null || seconds === undefined) return "never";
  if (seconds < 60) return `${Math.round(seconds)} s ago`;
  if (seconds < 3600) return `${Math.round(seconds / 60)} min ago`;
  if (seconds < 86400) return `${(seconds / 3600).toFixed(1)} h ago`;
  return `${(seconds / 86400).toFixed(1)} d ago`;
}

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k === "dataset") Object.assign(node.dataset, v);
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c ?? "")));
  return node;
}

export function fmtValue(v) {
  if (typeof v !== "number") return String(v);
  return Math.abs(v) >= 1000 || Number.isInteger(v) ? String(v) : v.toFixed(3);
}

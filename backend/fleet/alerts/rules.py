"""Alert rules: what a rule is, how the API describes one, and the state machine (pure).

Rules of evaluation (see `step`): a breach must last `duration_s` of measurement time
before an alert opens; with `hysteresis` h an `above` rule at H clears only at
value <= H - h, so a value hovering at the threshold does not flap; readings whose
measurement time is older than the replay window (5 min) when they are written (a
gateway's backlog) do not touch live alert state (backend/fleet/alerts/engine.py); a
reading older than the newest one already evaluated for that rule and device is ignored.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlparse

from backend.ingest.parsing.base import DEVICE_RE, NAME_RE

RULE_TYPES = ("above", "below", "outside", "silent")
SEVERITIES = ("info", "warning", "critical")
# FluxIO rule types, mapped to ours: (rule_type, default metric)
FLUXIO_RULE_TYPES = {
    "high_flow": ("above", "flow_rate"),
    "low_flow": ("below", "flow_rate"),
    "battery_low": ("below", "battery_level"),
    "no_data": ("silent", None),
    "device_offline": ("silent", None),
}
REPLAY_WINDOW = timedelta(minutes=5)
MAX_DURATION_S = 366 * 86400


class RuleError(ValueError):
    """A rule or alert request the client got wrong; the message says what."""


def iso(ts: datetime | None) -> str | None:
    return ts.isoformat().replace("+00:00", "Z") if ts else None


@dataclass(frozen=True, slots=True)
class Rule:
    id: int
    rule_name: str
    device_id: str | None
    metric: str | None
    rule_type: str
    threshold_low: float | None
    threshold_high: float | None
    hysteresis: float = 0.0
    duration_s: int = 0
    auto_resolve: bool = True
    severity: str = "warning"
    is_enabled: bool = True
    webhook_url: str | None = None
    created_at: datetime | None = None

    def classify(self, v: float) -> str:
        """'breach', 'clear' or 'band' (between the threshold and the hysteresis edge: no change)."""
        lo, hi, h = self.threshold_low, self.threshold_high, self.hysteresis
        if self.rule_type == "above":
            assert hi is not None
            return "breach" if v > hi else "clear" if v <= hi - h else "band"
        if self.rule_type == "below":
            assert lo is not None
            return "breach" if v < lo else "clear" if v >= lo + h else "band"
        if self.rule_type == "outside":
            assert lo is not None and hi is not None
            if v < lo or v > hi:
                return "breach"
            return "clear" if lo + h <= v <= hi - h else "band"
        return "clear"

    def threshold_for(self, v: float | None) -> float | None:
        if self.rule_type == "above":
            return self.threshold_high
        if self.rule_type == "below":
            return self.threshold_low
        if self.rule_type == "outside":
            return self.threshold_low if v is not None and self.threshold_low is not None \
                and v < self.threshold_low else self.threshold_high
        return float(self.duration_s)

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id, "rule_name": self.rule_name, "device_id": self.device_id, "metric": self.metric,
            "rule_type": self.rule_type, "threshold_value": self.threshold_for(None),
            "threshold_low": self.threshold_low, "threshold_high": self.threshold_high,
            "hysteresis": self.hysteresis, "duration_s": self.duration_s,
            "duration_minutes": round(self.duration_s / 60, 3), "auto_resolve": self.auto_resolve,
            "severity": self.severity, "is_enabled": self.is_enabled, "webhook_url": self.webhook_url,
            "created_at": iso(self.created_at),
        }


@dataclass(slots=True)
class State:
    state: str = "normal"  # normal | pending | firing
    since: datetime | None = None
    last_ts: datetime | None = None
    last_value: float | None = None


def step(rule: Rule, st: State, ts: datetime, v: float) -> str | None:
    """Feed one reading; returns 'open', 'resolve' or None and updates `st` in place."""
    if st.last_ts is not None and ts <= st.last_ts:
        return None  # older than what we already judged (re-sent or out-of-order)
    st.last_ts, st.last_value = ts, v
    c = rule.classify(v)
    if st.state == "normal":
        if c != "breach":
            return None
        st.state, st.since = "pending", ts
    if st.state == "pending":
        if c == "clear":
            st.state, st.since = "normal", None
            return None
        if c == "breach" and st.since is not None and (ts - st.since).total_seconds() >= rule.duration_s:
            st.state = "firing"
            return "open"
        return None
    # firing
    if c == "clear":
        st.state, st.since = "normal", None
        return "resolve" if rule.auto_resolve else None
    return None


@dataclass(frozen=True)
class RuleSet:
    rules: tuple[Rule, ...] = ()
    by_id: dict[int, Rule] = field(default_factory=dict)
    by_metric: dict[str, tuple[Rule, ...]] = field(default_factory=dict)

    @classmethod
    def of(cls, rules: list[Rule]) -> RuleSet:
        by_metric: dict[str, list[Rule]] = {}
        for r in rules:
            if r.is_enabled and r.rule_type != "silent" and r.metric:
                by_metric.setdefault(r.metric, []).append(r)
        return cls(tuple(rules), {r.id: r for r in rules}, {m: tuple(v) for m, v in by_metric.items()})


def _finite(name: str, value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise RuleError(f"{name}: a finite number")
    return float(value)


def parse_rule(body: object) -> dict[str, Any]:
    """Validate a rule from the API (our names or FluxIO's) into column values.

    Checks only the request itself; whether a webhook URL may be called is the sender's
    policy (backend/fleet/alerts/webhooks.py), checked when the rule is stored.
    """
    if not isinstance(body, dict):
        raise RuleError("body: a JSON object")
    name = _name(body)
    rtype, default_metric = _rule_type(body)
    device = _device(body)
    metric = _metric(body, rtype, default_metric)
    low, high = _thresholds(body, rtype)
    hysteresis = _hysteresis(body, rtype, low, high)
    duration_s = _duration(body, rtype)
    severity = body.get("severity", "warning")
    if severity not in SEVERITIES:
        raise RuleError(f"severity: one of {', '.join(SEVERITIES)}")
    auto_resolve = body.get("auto_resolve", True)
    enabled = body.get("is_enabled", True)
    if not isinstance(auto_resolve, bool) or not isinstance(enabled, bool):
        raise RuleError("auto_resolve, is_enabled: true or false")
    return {"rule_name": name, "device_id": device, "metric": metric, "rule_type": rtype,
            "threshold_low": low, "threshold_high": high, "hysteresis": hysteresis, "duration_s": duration_s,
            "auto_resolve": auto_resolve, "severity": severity, "is_enabled": enabled,
            "webhook_url": _webhook_url(body)}


def _name(body: dict[str, Any]) -> str:
    name = body.get("rule_name") or body.get("name")
    if not isinstance(name, str) or not name.strip() or len(name) > 200:
        raise RuleError("rule_name: required, at most 200 characters")
    return name.strip()


def _rule_type(body: dict[str, Any]) -> tuple[str, str | None]:
    """Our rule type, and the metric a FluxIO rule type implies (None: the body must name one)."""
    rtype = body.get("rule_type")
    if rtype in FLUXIO_RULE_TYPES:
        return FLUXIO_RULE_TYPES[rtype]
    if rtype not in RULE_TYPES:
        raise RuleError(f"rule_type: one of {', '.join(RULE_TYPES + tuple(FLUXIO_RULE_TYPES))}")
    return rtype, None


def _device(body: dict[str, Any]) -> str | None:
    device = body.get("device_id")
    if device in ("", "*", "all"):
        return None
    if device is not None and (not isinstance(device, str) or not DEVICE_RE.match(device)):
        raise RuleError("device_id: a device id, or null for every device")
    return device


def _metric(body: dict[str, Any], rtype: str, default: str | None) -> str | None:
    if rtype == "silent":
        return None  # about the device, not one of its metrics
    metric = body.get("metric") or default
    if not isinstance(metric, str) or not NAME_RE.match(metric):
        raise RuleError("metric: the metric the rule watches")
    return metric


def _thresholds(body: dict[str, Any], rtype: str) -> tuple[float | None, float | None]:
    """(threshold_low, threshold_high): only those the rule type uses; threshold_value fills in."""
    low = _finite("threshold_low", body.get("threshold_low", body.get("min")))
    high = _finite("threshold_high", body.get("threshold_high", body.get("max")))
    single = _finite("threshold_value", body.get("threshold_value"))
    if rtype == "above":
        high = high if high is not None else single
        if high is None:
            raise RuleError("threshold_value (or threshold_high): required for an 'above' rule")
        return None, high
    if rtype == "below":
        low = low if low is not None else single
        if low is None:
            raise RuleError("threshold_value (or threshold_low): required for a 'below' rule")
        return low, None
    if rtype == "outside":
        if low is None or high is None or low > high:
            raise RuleError("threshold_low and threshold_high: required, low <= high, for an 'outside' rule")
        return low, high
    return None, None


def _hysteresis(body: dict[str, Any], rtype: str, low: float | None, high: float | None) -> float:
    hysteresis = _finite("hysteresis", body.get("hysteresis", 0)) or 0.0
    if hysteresis < 0:
        raise RuleError("hysteresis: must not be negative")
    if rtype == "outside" and low is not None and high is not None and 2 * hysteresis > high - low:
        raise RuleError("hysteresis: at most half the width of the allowed range")
    return hysteresis


def _duration(body: dict[str, Any], rtype: str) -> int:
    """duration_s, or FluxIO's duration_minutes / silent_minutes, in whole seconds."""
    if "duration_s" in body:
        duration = _finite("duration_s", body["duration_s"])
    elif "duration_minutes" in body:
        minutes = _finite("duration_minutes", body["duration_minutes"])
        duration = None if minutes is None else minutes * 60
    else:
        minutes = _finite("silent_minutes", body.get("silent_minutes"))
        duration = None if minutes is None else minutes * 60
    duration_s = int(round(duration or 0))
    if duration_s < 0 or duration_s > MAX_DURATION_S:
        raise RuleError("duration_s: between 0 and a year")
    if rtype == "silent" and duration_s <= 0:
        raise RuleError("duration_s (or duration_minutes): how long a device may be silent, required")
    return duration_s


def _webhook_url(body: dict[str, Any]) -> str | None:
    webhook = body.get("webhook_url")
    channels = body.get("notification_channels")
    if webhook is None and isinstance(channels, dict):
        webhook = channels.get("webhook_url") or channels.get("webhook")
    if webhook is None:
        return None
    parsed = urlparse(webhook) if isinstance(webhook, str) else None
    if parsed is None or parsed.scheme not in ("http", "https") or not parsed.netloc or len(webhook) > 2000:
        raise RuleError("webhook_url: an http(s) URL")
    return webhook


def alert_message(rule: Rule, device_id: str, v: float) -> str:
    vs = f"{v:g}"
    if rule.rule_type == "above":
        what = f"{rule.metric} {vs} above {rule.threshold_high:g}"
    elif rule.rule_type == "below":
        what = f"{rule.metric} {vs} below {rule.threshold_low:g}"
    else:
        what = f"{rule.metric} {vs} outside [{rule.threshold_low:g}, {rule.threshold_high:g}]"
    held = f" for {rule.duration_s} s" if rule.duration_s else ""
    return f"{device_id}: {what}{held} (rule {rule.rule_name!r})"

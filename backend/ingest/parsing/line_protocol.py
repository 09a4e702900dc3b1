"""InfluxDB line protocol: `measurement[,tag=v...] field=v[,field=v...] [timestamp]`, one point a line.

Syntax as InfluxDB documents it (docs/doors.md has the mapping):
- measurement: `\\,` and `\\ ` are escapes; tag keys, tag values and field keys also `\\=`;
  any other backslash is literal (InfluxDB's own parser does the same).
- field values: float (`1`, `-1.5`, `1e-3`), integer `12i`, unsigned `12u`, boolean
  (`t T true True TRUE f F false False FALSE`), string `"..."` with `\\"` and `\\\\` escapes.
- optional integer timestamp in the request's precision (ns, us, ms, s; v1 also h, m).
- lines starting with `#` and empty lines are skipped; a newline inside a string is not
  supported (InfluxDB's documentation says so too).

Mapping: the device is the first of `device_tags` present on the line (default
`device_id`, then `host`), else the request's default device; the metric is
`<measurement>.<field>` (or only `<field>` with metric_style="field"); the other tags go to
`ParseResult.device_metadata`. Integers and unsigned integers are stored as numbers and
must be within ±2^53 (a double holds them exactly; beyond, two different values could be
stored as one). Timestamps are kept to the microsecond (PostgreSQL's resolution): the
nanoseconds below it are dropped.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from backend.ingest.parsing.base import (
    EARLIEST,
    FUTURE_SLACK,
    MAX_TEXT_LEN,
    InvalidValue,
    Message,
    ParseContext,
    ParseError,
    ParseResult,
    Reading,
    check_device_id,
    check_name,
    register,
)
from backend.ingest.parsing.lp_syntax import (  # noqa: F401  (escape_*: the inverse, re-exported for callers)
    Fields,
    LineSyntaxError,
    Tags,
    escape_key,
    escape_measurement,
    escape_string,
    scan_line,
)

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_US = timedelta(microseconds=1)
# Nanoseconds per unit of each precision a client may name.
PRECISION_NS = {"ns": 1, "n": 1, "us": 1_000, "u": 1_000, "ms": 1_000_000, "s": 1_000_000_000,
                "m": 60_000_000_000, "h": 3_600_000_000_000}
V2_PRECISIONS = ("ns", "us", "ms", "s")
V1_PRECISIONS = ("n", "ns", "u", "us", "ms", "s", "m", "h")
MAX_EXACT_INT = 2**53
INT64 = 2**63
UINT64 = 2**64
MAX_TAGS = 64
MAX_TAG_VALUE_LEN = 256
DEFAULT_DEVICE_TAGS = ("device_id", "host")
METRIC_STYLES = ("measurement.field", "field")

_TRUE = frozenset(("t", "T", "true", "True", "TRUE"))
_FALSE = frozenset(("f", "F", "false", "False", "FALSE"))
_FLOAT_RE = re.compile(r"-?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_INT_RE = re.compile(r"-?\d+")
_UINT_RE = re.compile(r"\d+")
_TS_RE = re.compile(r"-?\d+")
_DIGITS = frozenset("0123456789")
_FLOAT_START = frozenset("-.0123456789")
@dataclass(frozen=True)
class LineProtocolParser:
    name: str = "line_protocol"
    content_types: tuple[str, ...] = ("application/x-influx-line-protocol", "text/x-influx-line-protocol")
    precision: str = "ns"
    device_tags: tuple[str, ...] = DEFAULT_DEVICE_TAGS
    metric_style: str = "measurement.field"
    fast: bool = True  # False: every line through the general scanner (tests compare the two)

    def __post_init__(self) -> None:
        if self.precision not in PRECISION_NS:
            raise ValueError(f"precision {self.precision!r}: one of {', '.join(PRECISION_NS)}")
        if self.metric_style not in METRIC_STYLES:
            raise ValueError(f"metric_style {self.metric_style!r}: one of {', '.join(METRIC_STYLES)}")

    def parse(self, body: str, ctx: ParseContext) -> ParseResult:
        result = ParseResult()
        state = _Body(self, ctx, result.device_metadata)
        fast = self.fast
        count = 0
        for lineno, line in enumerate(body.split("\n"), start=1):
            if line.endswith("\r"):
                line = line[:-1]
            stripped = line.lstrip(" \t")
            if not stripped or stripped[0] == "#":
                continue
            if count >= ctx.max_messages:
                result.errors.append(ParseError(lineno, f"more than {ctx.max_messages} lines in one body", "",
                                                readings=0))
                break
            count += 1
            fields: Fields = []
            try:
                if fast and (msg := state.simple(lineno, stripped)) is not None:
                    result.messages.append(msg)
                    continue
                measurement, tags, fields, ts_text = scan_line(stripped)
                result.messages.append(state.message(lineno, stripped, measurement, tags, fields, ts_text))
            except InvalidValue as exc:
                # Readings the line carried: its fields when it could be read that far, else 1.
                result.errors.append(ParseError(lineno, str(exc), stripped, max(1, len(fields))))
        return result


class _Body:
    """One body's parse: its settings and what it has already checked (names, devices, times)."""

    def __init__(self, parser: LineProtocolParser, ctx: ParseContext, metadata: dict[str, dict[str, str]]) -> None:
        self.device_tags = parser.device_tags
        self.by_field = parser.metric_style == "field"
        self.unit = PRECISION_NS[parser.precision]
        self.ctx = ctx
        self.metadata = metadata
        self.untimed: dict[str, int] = {}
        self.names: dict[tuple[str, str], str] = {}  # (measurement, field) -> checked metric name
        self.devices: set[str] = set()  # checked device ids
        self.earliest_us = (EARLIEST - EPOCH) // _ONE_US
        self.latest_us = (ctx.received_at + FUTURE_SLACK - EPOCH) // _ONE_US

    def simple(self, lineno: int, line: str) -> Message | None:
        """The common line (no escapes, no strings, floats, a time, devices and names this body
        has already checked) in one pass; None sends it through the general path, which also
        words every error. Same answer as the general path (tests/ingest/test_line_protocol.py)."""
        if "\\" in line or '"' in line:
            return None
        parts = line.split(" ")
        if len(parts) != 3:
            return None
        head, body, ts_text = parts
        if not (ts_text.isdigit() and ts_text.isascii()):
            return None
        us = int(ts_text) * self.unit // 1000
        if not self.earliest_us <= us <= self.latest_us:
            return None
        hs = head.split(",")
        measurement = hs[0]
        device = None
        extra: dict[str, str] = {}
        if len(hs) > 1:
            tags: Tags = []
            for chunk in hs[1:]:
                k, sep, v = chunk.partition("=")
                if not (sep and k and v):
                    return None
                tags.append((k, v))
            device, extra = self._tags(tags)
        if device is None:
            device = self.ctx.default_device_id
        if device is None or device not in self.devices or not measurement:
            return None
        names = self.names
        values: list[tuple[str, float]] = []
        for chunk in body.split(","):
            k, sep, text = chunk.partition("=")
            metric = names.get((measurement, k))
            if metric is None or not text or text[-1] not in _DIGITS or text[0] not in _FLOAT_START \
                    or "_" in text or not text.isascii():
                return None
            try:
                v = float(text)
            except ValueError:
                return None
            if not math.isfinite(v):
                return None
            values.append((metric, v))
        if len(values) > 1 and len({m for m, _ in values}) < len(values):
            return None
        ts = EPOCH + timedelta(microseconds=us)
        if extra:
            self.metadata.setdefault(device, {}).update(extra)
        new = tuple.__new__
        return Message(lineno, line, [new(Reading, (device, m, ts, v, None)) for m, v in values], False)

    def message(self, lineno: int, raw: str, measurement: str, tags: Tags, fields: Fields,
                ts_text: str | None) -> Message:
        device: str | None = None
        extra: dict[str, str] = {}
        if tags:
            device, extra = self._tags(tags)
        if device is None:
            device = self.ctx.default_device_id
            if device is None:
                raise InvalidValue(f"no device: tag {' or '.join(self.device_tags)} is missing"
                                   " (or send X-Device-Id / ?device_id=)")
        if device not in self.devices:
            self.devices.add(check_device_id(device))
        names = self.names
        values: list[tuple[str, float | None, str | None]] = []
        for key, text, quoted in fields:
            metric = names.get((measurement, key))
            if metric is None:
                metric = names[(measurement, key)] = check_name(key if self.by_field else f"{measurement}.{key}")
            values.append((metric, *field_value(key, text, quoted)))
        if len(values) > 1 and len({v[0] for v in values}) < len(values):
            seen: set[str] = set()
            dup = next(v[0] for v in values if v[0] in seen or seen.add(v[0]))  # type: ignore[func-returns-value]
            raise InvalidValue(f"field {dup[:40]!r} appears twice")
        if ts_text is None:
            ts = self.ctx.received_at
            k = self.untimed.get(device, 0)
            self.untimed[device] = k + 1
            if k:
                ts = ts + timedelta(microseconds=k)
        else:
            ts = timestamp(ts_text, self.unit, self.ctx)
        if extra:  # only for a line that became readings
            self.metadata.setdefault(device, {}).update(extra)
        new = tuple.__new__  # Reading._make without its extra call: this runs once per reading
        return Message(lineno, raw, [new(Reading, (device, m, ts, v, t)) for m, v, t in values], ts_text is None)

    def _tags(self, tags: Tags) -> tuple[str | None, dict[str, str]]:
        """The device the tags name, and the other tags (for the device's metadata)."""
        if len(tags) > MAX_TAGS:
            raise InvalidValue(f"more than {MAX_TAGS} tags")
        device: str | None = None
        rank = len(self.device_tags)
        extra: dict[str, str] = {}
        for k, v in tags:
            if k in self.device_tags:
                r = self.device_tags.index(k)
                if r < rank:
                    device, rank = v, r
            elif len(v) > MAX_TAG_VALUE_LEN:
                raise InvalidValue(f"tag {k[:40]!r}: value longer than {MAX_TAG_VALUE_LEN} characters")
            else:
                extra[k] = v
        return device, extra


def field_value(key: str, text: str, quoted: bool) -> tuple[float | None, str | None]:
    """(number, text) of one field value, or InvalidValue naming the field and why."""
    if quoted:
        if len(text) > MAX_TEXT_LEN:
            raise InvalidValue(f"field {key[:40]!r}: string longer than {MAX_TEXT_LEN} characters")
        if "\x00" in text:
            raise InvalidValue(f"field {key[:40]!r}: string contains a NUL character")
        return None, text
    if not text:
        raise LineSyntaxError(f"field {key[:40]!r}: missing field value")
    last = text[-1]
    if last in _DIGITS and text[0] in _FLOAT_START and "_" not in text and text.isascii():
        # The common case, a plain float: float() takes every such text the grammar does,
        # and refuses the rest (ASCII only, no "_": float() would take "1_0" and other digits).
        try:
            number = float(text)
        except ValueError:
            pass
        else:
            if math.isfinite(number):
                return number, None
            raise InvalidValue(f"field {key[:40]!r}: {text[:40]} is not a finite number")
    if last == "i" and _INT_RE.fullmatch(text, 0, len(text) - 1):
        n = int(text[:-1])
        if not -INT64 <= n < INT64:
            raise InvalidValue(f"field {key[:40]!r}: integer {text} is out of range (int64)")
        return _exact(key, n, text), None
    if last == "u" and _UINT_RE.fullmatch(text, 0, len(text) - 1):
        n = int(text[:-1])
        if n >= UINT64:
            raise InvalidValue(f"field {key[:40]!r}: unsigned {text} is out of range (uint64)")
        return _exact(key, n, text), None
    if text in _TRUE:
        return 1.0, None
    if text in _FALSE:
        return 0.0, None
    if _FLOAT_RE.fullmatch(text):
        number = float(text)
        if not math.isfinite(number):
            raise InvalidValue(f"field {key[:40]!r}: {text[:40]} is not a finite number")
        return number, None
    raise LineSyntaxError(f"field {key[:40]!r}: invalid field value {text[:40]!r}"
                          " (a number, 12i, 12u, true/false or a \"string\")")


def _exact(key: str, n: int, text: str) -> float:
    if abs(n) > MAX_EXACT_INT:
        raise InvalidValue(f"field {key[:40]!r}: {text} is beyond ±2^53, which this service cannot store exactly")
    return float(n)


def timestamp(text: str, unit: int, ctx: ParseContext) -> datetime:
    if not (text.isdigit() and text.isascii()) and not _TS_RE.fullmatch(text):
        raise LineSyntaxError(f"invalid timestamp {text[:40]!r} (an integer in the request's precision)")
    us = int(text) * unit // 1000  # floor: nanoseconds below the microsecond are dropped
    try:
        ts = EPOCH + timedelta(microseconds=us)
    except OverflowError as exc:
        raise InvalidValue(f"timestamp {text[:40]} is out of range") from exc
    if ts < EARLIEST:
        raise InvalidValue(f"timestamp {text[:40]} ({ts.isoformat()}) is before 2000; is the precision right?")
    if ts > ctx.received_at + FUTURE_SLACK:
        raise InvalidValue(f"timestamp {text[:40]} ({ts.isoformat()}) is more than a day ahead of the server"
                           " clock; is the precision right?")
    return ts


register(LineProtocolParser())

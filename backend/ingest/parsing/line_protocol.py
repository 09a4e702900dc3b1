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
from collections.abc import Sequence
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

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
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
_MEASUREMENT_ESC = frozenset(", ")
_KEY_ESC = frozenset(",= ")

# A scanned line: measurement, tags, fields (key, raw value, quoted?), timestamp text or None.
Tags = list[tuple[str, str]]
Fields = list[tuple[str, str, bool]]


class LineSyntaxError(InvalidValue):
    """The line is not line protocol; the message says where and why."""


@dataclass(frozen=True)
class LineProtocolParser:
    name: str = "line_protocol"
    content_types: tuple[str, ...] = ("application/x-influx-line-protocol", "text/x-influx-line-protocol")
    precision: str = "ns"
    device_tags: tuple[str, ...] = DEFAULT_DEVICE_TAGS
    metric_style: str = "measurement.field"

    def __post_init__(self) -> None:
        if self.precision not in PRECISION_NS:
            raise ValueError(f"precision {self.precision!r}: one of {', '.join(PRECISION_NS)}")
        if self.metric_style not in METRIC_STYLES:
            raise ValueError(f"metric_style {self.metric_style!r}: one of {', '.join(METRIC_STYLES)}")

    def parse(self, body: str, ctx: ParseContext) -> ParseResult:
        result = ParseResult()
        untimed: dict[str, int] = {}
        unit = PRECISION_NS[self.precision]
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
                measurement, tags, fields, ts_text = scan_line(stripped)
                result.messages.append(self._message(lineno, stripped, measurement, tags, fields, ts_text, unit,
                                                     ctx, untimed, result.device_metadata))
            except InvalidValue as exc:
                # Readings the line carried: its fields when it could be read that far, else 1.
                result.errors.append(ParseError(lineno, str(exc), stripped, max(1, len(fields))))
        return result

    def _message(self, lineno: int, raw: str, measurement: str, tags: Tags, fields: Fields, ts_text: str | None,
                 unit: int, ctx: ParseContext, untimed: dict[str, int],
                 metadata: dict[str, dict[str, str]]) -> Message:
        device: str | None = None
        extra: dict[str, str] = {}
        if tags:
            if len(tags) > MAX_TAGS:
                raise InvalidValue(f"more than {MAX_TAGS} tags")
            found = dict(tags)
            for name in self.device_tags:
                if name in found:
                    device = found[name]
                    break
            for k, v in tags:
                if k not in self.device_tags:
                    if len(v) > MAX_TAG_VALUE_LEN:
                        raise InvalidValue(f"tag {k[:40]!r}: value longer than {MAX_TAG_VALUE_LEN} characters")
                    extra[k] = v
        if device is None:
            device = ctx.default_device_id
            if device is None:
                raise InvalidValue(f"no device: tag {' or '.join(self.device_tags)} is missing"
                                   " (or send X-Device-Id / ?device_id=)")
        device = check_device_id(device)
        prefix = measurement + "." if self.metric_style == "measurement.field" else ""
        values: list[tuple[str, float | None, str | None]] = []
        seen: set[str] = set()
        for key, text, quoted in fields:
            metric = check_name(prefix + key)
            if metric in seen:
                raise InvalidValue(f"field {key[:40]!r} appears twice")
            seen.add(metric)
            values.append((metric, *field_value(key, text, quoted)))
        server_time = ts_text is None
        if ts_text is None:
            ts = ctx.received_at
            k = untimed.get(device, 0)
            untimed[device] = k + 1
            if k:
                ts = ts + timedelta(microseconds=k)
        else:
            ts = timestamp(ts_text, unit, ctx)
        if extra:
            metadata.setdefault(device, {}).update(extra)
        make = Reading._make
        return Message(lineno, raw, [make((device, m, ts, v, t)) for m, v, t in values], server_time)


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
    if not _TS_RE.fullmatch(text):
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


# ---- scanning -------------------------------------------------------------------------------


def scan_line(line: str) -> tuple[str, Tags, Fields, str | None]:
    """Split one line into its parts (escapes resolved), or LineSyntaxError."""
    if "\\" not in line and '"' not in line:
        parts = line.split(" ")
        if 2 <= len(parts) <= 3 and all(parts):
            try:
                return _fast(parts)
            except LineSyntaxError:
                pass  # the scanner says what is wrong in the same words for every line
    return _slow(line)


def _fast(parts: Sequence[str]) -> tuple[str, Tags, Fields, str | None]:
    # No escapes and no strings: plain splits give the same answer as the scanner, faster.
    head = parts[0].split(",")
    measurement = head[0]
    if not measurement:
        raise LineSyntaxError("missing measurement")
    tags: Tags = []
    for chunk in head[1:]:
        k, sep, v = chunk.partition("=")
        if not sep or not k or not v:
            raise LineSyntaxError(f"invalid tag {chunk[:40]!r} (key=value)")
        tags.append((k, v))
    fields: Fields = []
    for chunk in parts[1].split(","):
        k, sep, v = chunk.partition("=")
        if not sep or not k:
            raise LineSyntaxError(f"invalid field {chunk[:40]!r} (key=value)")
        fields.append((k, v, False))
    return measurement, tags, fields, parts[2] if len(parts) == 3 else None


def _slow(line: str) -> tuple[str, Tags, Fields, str | None]:
    n = len(line)
    measurement, i = _token(line, 0, _MEASUREMENT_ESC, ", ")
    if not measurement:
        raise LineSyntaxError("missing measurement")
    tags: Tags = []
    while i < n and line[i] == ",":
        key, i = _token(line, i + 1, _KEY_ESC, ",= ")
        if i >= n or line[i] != "=" or not key:
            raise LineSyntaxError(f"invalid tag after {measurement[:40]!r}: missing tag key or '='")
        value, i = _token(line, i + 1, _KEY_ESC, ", ")
        if not value:
            raise LineSyntaxError(f"tag {key[:40]!r}: missing tag value")
        tags.append((key, value))
    if i >= n:
        raise LineSyntaxError("missing fields")
    while i < n and line[i] == " ":
        i += 1
    fields: Fields = []
    while True:
        key, i = _token(line, i, _KEY_ESC, ",= ")
        if i >= n or line[i] != "=" or not key:
            raise LineSyntaxError("missing fields" if not key and not fields and i >= n
                                  else f"invalid field {key[:40]!r}: missing field key or '='")
        i += 1
        if i < n and line[i] == '"':
            value, i = _string(line, i + 1, key)
            fields.append((key, value, True))
        else:
            j = i
            while j < n and line[j] not in ", ":
                j += 1
            fields.append((key, line[i:j], False))
            i = j
        if i < n and line[i] == ",":
            i += 1
            continue
        break
    ts: str | None = None
    rest = line[i:].strip(" \t")
    if rest:
        if i < n and line[i] != " ":
            raise LineSyntaxError(f"unexpected {line[i:i + 20]!r} after field {key[:40]!r}")
        ts = rest
    return measurement, tags, fields, ts


def _token(line: str, i: int, escapes: frozenset[str], stops: str) -> tuple[str, int]:
    """Text from `i` to the first unescaped char of `stops`; `\\x` for x in `escapes` is x."""
    n = len(line)
    out: list[str] = []
    start = i
    while i < n:
        c = line[i]
        if c == "\\" and i + 1 < n and line[i + 1] in escapes:
            out.append(line[start:i])
            out.append(line[i + 1])
            i += 2
            start = i
            continue
        if c in stops:
            break
        i += 1
    out.append(line[start:i])
    return "".join(out), i


def _string(line: str, i: int, key: str) -> tuple[str, int]:
    """A quoted field value from just after its opening quote; returns it and the index after it."""
    n = len(line)
    out: list[str] = []
    start = i
    while i < n:
        c = line[i]
        if c == "\\" and i + 1 < n and line[i + 1] in '"\\':
            out.append(line[start:i])
            out.append(line[i + 1])
            i += 2
            start = i
            continue
        if c == '"':
            out.append(line[start:i])
            return "".join(out), i + 1
        i += 1
    raise LineSyntaxError(f"field {key[:40]!r}: unterminated string")


# ---- writing (the inverse, for tests, the benchmark and docs) ---------------------------------


def escape_measurement(text: str) -> str:
    return text.replace(",", "\\,").replace(" ", "\\ ") if _needs(text) else text


def escape_key(text: str) -> str:
    """Tag keys, tag values and field keys."""
    return text.replace(",", "\\,").replace("=", "\\=").replace(" ", "\\ ") if _needs(text) else text


def escape_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _needs(text: str) -> bool:
    return any(c in text for c in ",= \\")


register(LineProtocolParser())

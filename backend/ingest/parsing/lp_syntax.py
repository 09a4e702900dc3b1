"""Line protocol's syntax: one line into its parts with escapes resolved, and the inverse.

The parser (line_protocol.py) maps the parts to readings; this module only knows the text.
"""

from __future__ import annotations

from collections.abc import Sequence

from backend.ingest.parsing.base import InvalidValue

_MEASUREMENT_ESC = frozenset(", ")
_KEY_ESC = frozenset(",= ")

# A scanned line: measurement, tags, fields (key, raw value, quoted?), timestamp text or None.
Tags = list[tuple[str, str]]
Fields = list[tuple[str, str, bool]]


class LineSyntaxError(InvalidValue):
    """The line is not line protocol; the message says where and why."""


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


# ---- writing (the inverse, for tests and clients) -------------------------------------------------


def escape_measurement(text: str) -> str:
    return text.replace(",", "\\,").replace(" ", "\\ ") if _needs(text) else text


def escape_key(text: str) -> str:
    """Tag keys, tag values and field keys."""
    return text.replace(",", "\\,").replace("=", "\\=").replace(" ", "\\ ") if _needs(text) else text


def escape_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _needs(text: str) -> bool:
    return any(c in text for c in ",= \\")


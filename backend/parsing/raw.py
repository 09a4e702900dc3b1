"""The seed's raw strings: `roll:15.2,pitch:8.1,alt:150,bat_v:12.4`, one message per line."""

from __future__ import annotations

from .base import (
    InvalidValue,
    ParseContext,
    ParseError,
    ParseResult,
    Reading,
    build_message,
    coerce_text_value,
    register,
)


class RawParser:
    name = "raw"
    content_types = ("text/plain", "application/x-telemetry", "")

    def parse(self, body: str, ctx: ParseContext) -> ParseResult:
        result = ParseResult()
        for lineno, line in enumerate(body.splitlines(), start=1):
            stripped = line.strip()
            if not stripped or stripped.startswith("#"):
                continue
            if len(result.messages) + len(result.errors) >= ctx.max_messages:
                result.errors.append(ParseError(lineno, f"more than {ctx.max_messages} messages in one body"))
                break
            try:
                pairs = list(_pairs(stripped))
                result.messages.append(build_message(lineno, stripped, pairs, ctx, coerce_text_value))
            except InvalidValue as exc:
                result.errors.append(ParseError(lineno, str(exc), stripped))
        return result


def _pairs(line: str):
    for chunk in line.split(","):
        if not chunk.strip():
            continue
        name, sep, value = chunk.partition(":")
        if not sep:
            raise InvalidValue(f"{chunk.strip()[:40]!r} is not key:value")
        yield name.strip(), value.strip()


def format_raw(readings: list[Reading], include_device: bool = True) -> str:
    """The inverse of parsing one message: readings of one device and time as a raw line."""
    first = readings[0]
    parts = [f"device_id:{first.device_id}"] if include_device else []
    parts.append(f"ts:{first.ts.isoformat()}")
    for r in readings:
        parts.append(f"{r.metric}:{r.value_text if r.value_text is not None else repr(r.value)}")
    return ",".join(parts)


register(RawParser())

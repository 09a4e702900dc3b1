"""The seed's raw strings: `roll:15.2,pitch:8.1,alt:150,bat_v:12.4`, one message per line."""

from __future__ import annotations

from backend.ingest.parsing.base import (
    InvalidValue,
    ParseContext,
    ParseError,
    ParseResult,
    Reading,
    build_message,
    coerce_text_value,
    count_fields,
    register,
)


class RawParser:
    name = "raw"
    content_types = ("text/plain", "application/x-telemetry", "")

    def parse(self, body: str, ctx: ParseContext) -> ParseResult:
        result = ParseResult()
        untimed: dict[str, int] = {}
        lines = body.splitlines()
        for lineno, line in enumerate(lines, start=1):
            stripped = line.strip()
            if not stripped or stripped.startswith("#"):
                continue
            if len(result.messages) + len(result.errors) >= ctx.max_messages:
                rest = (ln.strip() for ln in lines[lineno - 1:])
                result.errors.append(ParseError(lineno, f"more than {ctx.max_messages} messages in one body", "",
                                                sum(_count(ln) for ln in rest if ln and not ln.startswith("#"))))
                break
            try:
                pairs = list(_pairs(stripped))
                result.messages.append(build_message(lineno, stripped, pairs, ctx, coerce_text_value, untimed))
            except InvalidValue as exc:
                result.errors.append(ParseError(lineno, str(exc), stripped, _count(stripped)))
        return result


def _pairs(line: str):
    for chunk in line.split(","):
        if not chunk.strip():
            continue
        name, sep, value = chunk.partition(":")
        if not sep:
            raise InvalidValue(f"{chunk.strip()[:40]!r} is not key:value")
        yield name.strip(), value.strip()


def _count(line: str) -> int:
    # A chunk that is not key:value still counts: it is something the client sent.
    return count_fields(c.partition(":")[0] for c in line.split(",") if c.strip())


def format_raw(readings: list[Reading], include_device: bool = True) -> str:
    """The inverse of parsing one message: readings of one device and time as a raw line."""
    first = readings[0]
    parts = [f"device_id:{first.device_id}"] if include_device else []
    parts.append(f"ts:{first.ts.isoformat()}")
    for r in readings:
        parts.append(f"{r.metric}:{r.value_text if r.value_text is not None else repr(r.value)}")
    return ",".join(parts)


register(RawParser())

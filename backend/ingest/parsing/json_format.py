"""JSON messages: an object or an array of objects.

Shapes accepted, all as one object per message:
- flat: `{"device_id": "n1", "ts": ..., "flow_rate": 1.2, ...}` (seed 004's gateway JSON);
- signals: `{"timestamp": ..., "signals": {"sine": 0.3}}` (seed 002's producer);
- nested objects one level deep are flattened with `_` (`{"gps": {"lat": 1}}` -> `gps_lat`).
"""

from __future__ import annotations

from functools import partial
from typing import Any

import orjson

from backend.ingest.parsing.base import (
    InvalidValue,
    ParseContext,
    ParseError,
    ParseResult,
    build_message,
    coerce_json_value,
    count_fields,
    register,
)

CONTAINER_KEYS = ("signals", "metrics", "values", "data")


class JsonParser:
    name = "json"
    content_types = ("application/json", "text/json")

    def parse(self, body: str, ctx: ParseContext) -> ParseResult:
        result = ParseResult()
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            result.errors.append(ParseError(0, f"body is not valid JSON: {exc}", readings=0))
            return result
        items = doc if isinstance(doc, list) else [doc]
        if not items:
            result.errors.append(ParseError(0, "empty array: no messages", readings=0))
            return result
        if isinstance(doc, list) and len(doc) > ctx.max_messages:
            result.errors.append(ParseError(0, f"more than {ctx.max_messages} messages in one body",
                                            readings=sum(_count(i) for i in items)))
            return result
        untimed: dict[str, int] = {}
        for index, item in enumerate(items):
            if not isinstance(item, dict):
                result.errors.append(ParseError(index, f"expected an object, got {type(item).__name__}"))
                continue
            try:
                fields = list(_fields(item))
                result.messages.append(build_message(index, partial(_raw, item), fields, ctx, coerce_json_value,
                                                     untimed))
            except InvalidValue as exc:
                result.errors.append(ParseError(index, str(exc), _raw(item), _count(item)))
        return result


def _count(item: Any) -> int:
    """The readings a refused item carried: one per leaf field, nested objects flattened."""
    if not isinstance(item, dict):
        return 1
    names: list[Any] = []
    for key, value in item.items():
        if isinstance(value, dict):
            names += [f"{key}_{k}" for k in value] or [key]
        else:
            names.append(key)
    return count_fields(names)


def _raw(item: dict[str, Any]) -> str:
    return orjson.dumps(item, option=orjson.OPT_SORT_KEYS).decode() if item else "{}"


def _fields(item: dict[str, Any]):
    for key, value in item.items():
        if key in CONTAINER_KEYS and isinstance(value, dict):
            yield from _flatten(value, "")
        elif isinstance(value, dict):
            yield from _flatten(value, f"{key}_")
        else:
            yield key, value


def _flatten(obj: dict[str, Any], prefix: str):
    for key, value in obj.items():
        if isinstance(value, dict):
            raise InvalidValue(f"field {prefix + key!r}: objects nested more than one level")
        yield prefix + key, value


register(JsonParser())

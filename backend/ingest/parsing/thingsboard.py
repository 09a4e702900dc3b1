"""ThingsBoard's device and gateway telemetry JSON (pure: text in, readings and errors out).

Device API (`v1/devices/me/telemetry` over MQTT, `POST /api/v1/<token>/telemetry` over HTTP),
as ThingsBoard documents it:
- `{"temperature": 42, "active": false}`: a flat object of values, timed by the server;
- `{"ts": 1451649600512, "values": {"temperature": 42}}`: values at `ts` (epoch ms);
- an array of either.
The device is not in the body: it is the one the access token is bound to (ctx.default_device_id).

Gateway API (`v1/gateway/telemetry`): `{"Device A": [{"ts": ..., "values": {...}}, ...], ...}`;
each entry may also be a flat object of values. ThingsBoard names devices freely; here a
name becomes a device id with its whitespace turned into `_` ("Device A" -> "Device_A"),
and a name with other characters outside [A-Za-z0-9_.:-] is refused with its reason.

Values: numbers and booleans as numbers (true -> 1), strings as in the other formats; a
JSON object value (ThingsBoard's "JSON" type) is refused, naming the key.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from backend.ingest.parsing.base import (
    InvalidValue,
    ParseContext,
    ParseError,
    ParseResult,
    build_message,
    check_device_id,
    coerce_json_value,
    register,
)

_SPACES = re.compile(r"\s+")
# Keys the shared message builder treats as time (and, for the gateway, device): inside
# ThingsBoard `values` they are ordinary telemetry keys, so they are refused rather than
# silently reinterpreted. A device API body may name its device ("device_id"): the
# endpoint's guard then refuses any device but the token's (403).
_RESERVED_TIME = frozenset({"ts", "timestamp", "time"})
_RESERVED_ALL = _RESERVED_TIME | {"device_id", "device"}


def device_name_to_id(name: str) -> str:
    """ThingsBoard device name -> our device id ("Device A" -> "Device_A"), or InvalidValue."""
    if not isinstance(name, str):
        raise InvalidValue("device name must be a string")
    return check_device_id(_SPACES.sub("_", name.strip()))


def _raw(item: Any) -> str:
    try:
        return orjson.dumps(item, option=orjson.OPT_SORT_KEYS).decode()
    except TypeError:
        return str(item)[:200]


def _fields(item: Any, reserved: frozenset[str]) -> list[tuple[str, Any]]:
    """One telemetry entry -> (name, value) pairs, with ("ts", ts) first when it has one."""
    if not isinstance(item, dict):
        raise InvalidValue(f"expected an object, got {type(item).__name__}")
    if "values" in item and ("ts" in item or len(item) == 1):
        values = item["values"]
        extra = set(item) - {"ts", "values"}
        if extra:
            raise InvalidValue(f"unexpected key {sorted(extra)[0]!r} next to ts and values")
        if not isinstance(values, dict):
            raise InvalidValue(f"values must be an object, got {type(values).__name__}")
        pairs: list[tuple[str, Any]] = [("ts", item["ts"])] if "ts" in item else []
    else:
        values = item
        pairs = []
    for key, value in values.items():
        if isinstance(key, str) and key.strip() in reserved:
            raise InvalidValue(f"telemetry key {key!r} is reserved here (the time comes from ts, the"
                               " device from the token or the gateway's device name)")
        if isinstance(value, dict | list):
            raise InvalidValue(f"field {key!r}: JSON object and array values are not stored")
        pairs.append((key, value))
    return pairs


def _entry_count(item: Any) -> int:
    if isinstance(item, dict):
        values = item.get("values") if isinstance(item.get("values"), dict) else item
        return max(1, sum(1 for k in values if k != "ts"))
    return 1


def _messages(result: ParseResult, items: list[Any], ctx: ParseContext, device: str | None,
              start: int, untimed: dict[str, int]) -> int:
    """Append one message per entry; returns the next position."""
    position = start
    for item in items:
        try:
            fields = _fields(item, _RESERVED_TIME if device is None else _RESERVED_ALL)
            if device is not None:
                fields.insert(0, ("device_id", device))
            result.messages.append(build_message(position, _raw(item), fields, ctx, coerce_json_value, untimed))
        except InvalidValue as exc:
            result.errors.append(ParseError(position, str(exc), _raw(item), _entry_count(item)))
        position += 1
    return position


def _load(body: str, result: ParseResult) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        result.errors.append(ParseError(0, f"body is not valid JSON: {exc}", readings=0))
        return None


class ThingsBoardParser:
    """Device telemetry: the device comes from the token (ctx.default_device_id)."""

    name = "thingsboard"
    content_types: tuple[str, ...] = ()  # chosen by the endpoint or topic, never by Content-Type

    def parse(self, body: str, ctx: ParseContext) -> ParseResult:
        result = ParseResult()
        doc = _load(body, result)
        if doc is None and result.errors:
            return result
        items = doc if isinstance(doc, list) else [doc]
        if not items:
            result.errors.append(ParseError(0, "empty array: no telemetry", readings=0))
            return result
        if len(items) > ctx.max_messages:
            result.errors.append(ParseError(0, f"more than {ctx.max_messages} entries in one body",
                                            readings=len(items)))
            return result
        _messages(result, items, ctx, None, 0, {})
        return result


class ThingsBoardGatewayParser:
    """Gateway telemetry: `{"<device name>": [entries]}`; positions count entries in body order."""

    name = "thingsboard-gateway"
    content_types: tuple[str, ...] = ()

    def parse(self, body: str, ctx: ParseContext) -> ParseResult:
        result = ParseResult()
        doc = _load(body, result)
        if doc is None and result.errors:
            return result
        if not isinstance(doc, dict) or not doc:
            result.errors.append(ParseError(0, 'expected an object {"<device name>": [{"ts": ..., "values":'
                                               ' {...}}]}', _raw(doc), readings=0))
            return result
        total = sum(len(v) if isinstance(v, list) else 1 for v in doc.values())
        if total > ctx.max_messages:
            result.errors.append(ParseError(0, f"more than {ctx.max_messages} entries in one body", readings=total))
            return result
        position = 0
        untimed: dict[str, int] = {}
        for name, entries in doc.items():
            items = entries if isinstance(entries, list) else [entries]
            if not items:
                result.errors.append(ParseError(position, f"device {str(name)[:40]!r}: no telemetry entries",
                                                _raw(entries), readings=0))
                position += 1
                continue
            try:
                device = device_name_to_id(name)
            except InvalidValue as exc:
                for item in items:
                    result.errors.append(ParseError(position, f"device {str(name)[:40]!r}: {exc}", _raw(item),
                                                    _entry_count(item)))
                    position += 1
                continue
            position = _messages(result, items, ctx, device, position, untimed)
        return result


def parse_attributes(body: str) -> dict[str, Any]:
    """ThingsBoard client attributes `{"firmware": "1.2", "model": "x"}` -> a metadata dict.

    Keys are strings up to 64 characters; values JSON scalars or small objects; raises
    InvalidValue naming the first bad key.
    """
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidValue(f"body is not valid JSON: {exc}") from None
    if not isinstance(doc, dict) or not doc:
        raise InvalidValue('expected a non-empty object {"attribute": value, ...}')
    for key in doc:
        if not key.strip() or len(key) > 64:
            raise InvalidValue(f"attribute name {key[:40]!r}: 1 to 64 characters")
        if "\x00" in key or (isinstance(doc[key], str) and "\x00" in doc[key]):
            raise InvalidValue(f"attribute {key[:40]!r}: contains a NUL character")
    return doc


register(ThingsBoardParser())
register(ThingsBoardGatewayParser())

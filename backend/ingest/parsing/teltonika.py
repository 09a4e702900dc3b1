"""Teltonika RUT/TRB "Data to Server" JSON (pure: text in, readings and errors out).

What Teltonika documents (Teltonika wiki, "Template:Networking rutXxx manual data to server",
the Data to Server page of the RUT/TRB manuals; see docs/doors.md for the citation):
- each data sender has a "JSON format", default `{"TS":"%t", "D":"%d","MAC":"%m","DT":"%b"}`,
  that the router fills per collected record ("segment"): `%t` the time as epoch seconds,
  `%d` the date, `%m` the (Bluetooth) MAC address, `%b` the data;
- "Segment count" 1..10: up to ten segments in one JSON string sent to the server;
- the data source is "Bluetooth data" or "Modbus data"; protocol HTTP(S) or MQTT.

What this parser does with a body:
- one segment object, an array of segments, or segments joined by commas without brackets;
- time: `TS` (epoch s/ms, number or string); else `D` when it reads as a time; else the
  server's time of receipt;
- device: `MAC` or `device_id` in the segment; else the gateway's id given by the endpoint
  or topic (ctx.default_device_id);
- data: `DT`, `Data`, `data` (or a list/object under `D`): an object of name -> value, a
  list of register values, or a string holding either (JSON, or numbers separated by
  commas/spaces). A register list is mapped to metric names by the gateway's mapping
  (`{"<device id>": ["flow_rate", "totalizer", null, ...], "*": [...]}`; null skips a
  register): without a mapping for the device the segment is refused, saying so;
- any other scalar field of a customised template is a metric of its own.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from backend.ingest.parsing.base import (
    DEVICE_KEYS,
    InvalidValue,
    ParseContext,
    ParseError,
    ParseResult,
    build_message,
    check_name,
    coerce_json_value,
    parse_time,
    register,
)

TIME_FIELD = "TS"
DATE_FIELD = "D"
DEVICE_FIELDS = ("MAC", *DEVICE_KEYS)
DATA_FIELDS = ("DT", "Data", "data")
_SPLIT = re.compile(r"[,;\s]+")
MAX_REGISTERS = 1000

RegisterMap = Mapping[str, Sequence[str | None]]


_TEMPLATE_START = re.compile(rb'\A\s*\[?\s*\{\s*"TS"\s*:')


def looks_like_teltonika(body: bytes) -> bool:
    """A body that starts like Teltonika's default JSON template (`{"TS": ...`, or an array of them)."""
    return bool(_TEMPLATE_START.match(body[:64]))


def validate_mapping(doc: object) -> dict[str, tuple[str | None, ...]]:
    """A register mapping from its JSON form; raises ValueError naming the bad entry."""
    if not isinstance(doc, dict):
        raise ValueError('expected an object {"<device id or *>": ["metric", null, ...]}')
    out: dict[str, tuple[str | None, ...]] = {}
    for device, names in doc.items():
        if not isinstance(names, list) or not names or len(names) > MAX_REGISTERS:
            raise ValueError(f"{device!r}: a list of 1..{MAX_REGISTERS} metric names (null to skip a register)")
        for name in names:
            if name is None:
                continue
            if not isinstance(name, str):
                raise ValueError(f"{device!r}: {name!r} is not a metric name")
            try:
                check_name(name)
            except InvalidValue as exc:
                raise ValueError(f"{device!r}: {exc}") from None
        taken = [n for n in names if n is not None]
        if len(set(taken)) != len(taken):
            raise ValueError(f"{device!r}: a metric name appears twice")
        out[str(device)] = tuple(names)
    return out


def _load(body: str) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        stripped = body.strip()
        if stripped.startswith("{") and stripped.endswith("}"):
            # Several segments joined by commas, without the array brackets.
            return orjson.loads("[" + stripped + "]")
        raise


def _raw(item: Any) -> str:
    try:
        return orjson.dumps(item, option=orjson.OPT_SORT_KEYS).decode()
    except TypeError:
        return str(item)[:200]


def _as_data(value: Any) -> dict[str, Any] | list[Any]:
    """A data field's value as an object or a value list."""
    if isinstance(value, dict | list):
        return value
    if isinstance(value, str):
        text = value.strip()
        if text[:1] in ("{", "["):
            try:
                decoded = orjson.loads(text)
            except orjson.JSONDecodeError:
                raise InvalidValue("data field holds text that starts like JSON but is not valid JSON") from None
            if isinstance(decoded, dict | list):
                return decoded
        parts = [p for p in _SPLIT.split(text) if p]
        if parts and all(_is_number(p) for p in parts):
            return parts
        raise InvalidValue("data field is neither an object, a register value list nor JSON;"
                           " customise the sender's JSON format")
    raise InvalidValue(f"data field: {type(value).__name__} is not an object or a value list")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


class TeltonikaParser:
    name = "teltonika"
    content_types: tuple[str, ...] = ()  # chosen by ?format=teltonika or a Teltonika topic

    def __init__(self, registers: RegisterMap | None = None) -> None:
        self.registers: RegisterMap = registers or {}

    def parse(self, body: str, ctx: ParseContext) -> ParseResult:
        result = ParseResult()
        try:
            doc = _load(body)
        except orjson.JSONDecodeError as exc:
            result.errors.append(ParseError(0, f"body is not valid JSON: {exc}", readings=0))
            return result
        items = doc if isinstance(doc, list) else [doc]
        if not items:
            result.errors.append(ParseError(0, "empty array: no segments", readings=0))
            return result
        if len(items) > ctx.max_messages:
            result.errors.append(ParseError(0, f"more than {ctx.max_messages} segments in one body",
                                            readings=len(items)))
            return result
        untimed: dict[str, int] = {}
        for position, item in enumerate(items):
            try:
                fields = self._fields(item, ctx)
                result.messages.append(build_message(position, _raw(item), fields, ctx, coerce_json_value, untimed))
            except InvalidValue as exc:
                count = len(item) if isinstance(item, dict) else 1
                result.errors.append(ParseError(position, str(exc), _raw(item), max(1, count)))
        return result

    def _fields(self, item: Any, ctx: ParseContext) -> list[tuple[str, Any]]:
        if not isinstance(item, dict):
            raise InvalidValue(f"expected a segment object, got {type(item).__name__}")
        fields: list[tuple[str, Any]] = []
        device = ctx.default_device_id
        for key in DEVICE_FIELDS:
            if item.get(key) not in (None, ""):
                device = item[key]
                break
        fields.append(("device_id", device))
        date = item.get(DATE_FIELD)
        if item.get(TIME_FIELD) not in (None, ""):
            fields.append(("ts", item[TIME_FIELD]))
        elif isinstance(date, str) and date.strip():
            parse_time(date, ctx)  # refuses, naming it, a date that is no time
            fields.append(("ts", date))
        data_seen = False
        meta = len(fields)
        for key, value in item.items():
            if key in (TIME_FIELD, *DEVICE_FIELDS):
                continue
            if key == DATE_FIELD and not isinstance(value, dict | list):
                continue
            if key in DATA_FIELDS or key == DATE_FIELD:
                data_seen = True
                fields += self._data(_as_data(value), device)
            elif isinstance(value, dict | list):
                raise InvalidValue(f"field {key!r}: nested value outside the data field")
            else:
                fields.append((key, value))
        if not data_seen and len(fields) == meta:
            raise InvalidValue(f"segment has no data field ({', '.join(DATA_FIELDS)}) and no values")
        return fields

    def _data(self, data: dict[str, Any] | list[Any], device: Any) -> list[tuple[str, Any]]:
        if isinstance(data, dict):
            out: list[tuple[str, Any]] = []
            for key, value in data.items():
                if isinstance(value, dict | list):
                    raise InvalidValue(f"field {key!r}: nested value in the data object")
                out.append((key, value))
            return out
        names = self.registers.get(device) if isinstance(device, str) else None
        if names is None:
            names = self.registers.get("*")
        if names is None:
            raise InvalidValue(f"register values for device {str(device)[:40]!r} but no register mapping for it"
                               " (TELTONIKA_REGISTER_MAP)")
        if len(data) != len(names):
            raise InvalidValue(f"{len(data)} register values, but the mapping for {str(device)[:40]!r}"
                               f" names {len(names)}")
        return [(name, value) for name, value in zip(names, data, strict=True) if name is not None]


register(TeltonikaParser())

"""The parser plugin interface: text in, readings and errors out, no I/O.

A format is one module in this package that defines a `Parser` and registers it with
`register()`. Parsers are pure so they can be property-tested and fuzzed.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple, Protocol

_ONE_US = timedelta(microseconds=1)

PARSER_VERSION = "2.0"
MAX_NAME_LEN = 64
MAX_TEXT_LEN = 1024
MAX_DEVICE_ID_LEN = 128
EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
FUTURE_SLACK = timedelta(days=1)
NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]*$")
# \A...\Z, not ^...$: "$" also matches before a final newline, so "gw7\n" passed `.match()`
# and was stored as a second device. Callers elsewhere use `.match()`, which is a full match now.
DEVICE_RE = re.compile(r"\A[A-Za-z0-9_.:\-]+\Z")
TIME_KEYS = ("ts", "timestamp", "time")
DEVICE_KEYS = ("device_id", "device")
_SPECIAL_KEYS = frozenset(TIME_KEYS + DEVICE_KEYS)
_NUMBER_START = frozenset("+-.0123456789")
# Names that already passed check_name(): gateways send the same few names in every
# message, so the regular expression runs once per name, not once per reading.
_VALID_NAMES: set[str] = set()
_VALID_NAMES_MAX = 10_000


class Reading(NamedTuple):
    """One value of one metric of one device at one time.

    A NamedTuple, not a frozen dataclass: a batch of 1,000 readings creates 1,000 of them
    per request, and a frozen dataclass's __init__ (object.__setattr__ per field) was the
    largest single cost of parsing (py-spy, docs/benchmarks.md).
    """

    device_id: str
    metric: str
    ts: datetime
    value: float | None = None
    value_text: str | None = None

    @property
    def value_type(self) -> str:
        return "text" if self.value_text is not None else "number"


@dataclass(frozen=True, slots=True)
class ParseError:
    position: int  # 1-based line number, or 0-based array index for JSON arrays
    reason: str
    raw: str = ""
    # How many readings the refused message carried (its value fields), so an answer can
    # account for every reading sent; 0 for a body-level error that refused no message.
    readings: int = 1

    def as_dict(self) -> dict[str, Any]:
        return {"position": self.position, "reason": self.reason, "raw": self.raw[:200]}


class Message:
    """One line or one JSON object: the readings it produced and its raw text.

    `raw` may be given as a function: the JSON parser re-serialises an object only when
    the text is needed (an error, a single-message answer), not for every object.
    `server_time` is True when the message had no time of its own, so its readings carry
    one the server assigned (see build_message and parsing/server_time.py).
    """

    __slots__ = ("position", "readings", "_raw", "server_time")

    def __init__(self, position: int, raw: str | Callable[[], str], readings: list[Reading],
                 server_time: bool = False) -> None:
        self.position = position
        self.readings = readings
        self._raw = raw
        self.server_time = server_time

    @property
    def raw(self) -> str:
        if not isinstance(self._raw, str):
            self._raw = self._raw()
        return self._raw

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, Message) and (self.position, self.raw, self.readings)
                == (other.position, other.raw, other.readings))

    def __repr__(self) -> str:
        return f"Message(position={self.position!r}, raw={self.raw!r}, readings={self.readings!r})"


@dataclass(slots=True)
class ParseResult:
    messages: list[Message] = field(default_factory=list)
    errors: list[ParseError] = field(default_factory=list)
    # What a format says about its devices besides readings (line protocol's other tags),
    # by device id; the ingest side keeps it with the device (backend/ingest/device_tags.py).
    device_metadata: dict[str, dict[str, str]] = field(default_factory=dict)

    @property
    def readings(self) -> list[Reading]:
        return [r for m in self.messages for r in m.readings]


@dataclass(frozen=True, slots=True)
class ParseContext:
    """What a parser may know besides the body: defaults from the request, and the clock."""

    received_at: datetime
    default_device_id: str | None = None
    max_messages: int = 100_000


class Parser(Protocol):
    name: str
    content_types: tuple[str, ...]

    def parse(self, body: str, ctx: ParseContext) -> ParseResult: ...


class InvalidValue(ValueError):
    """A field that cannot become a reading; the message names the field and why."""


_REGISTRY: dict[str, Parser] = {}


def register(parser: Parser) -> Parser:
    _REGISTRY[parser.name] = parser
    return parser


def get_parser(name: str) -> Parser | None:
    return _REGISTRY.get(name)


def parser_for_content_type(content_type: str) -> Parser | None:
    mime = (content_type or "").split(";", 1)[0].strip().lower()
    for parser in _REGISTRY.values():
        if mime in parser.content_types:
            return parser
    return None


def parser_names() -> list[str]:
    return sorted(_REGISTRY)


# ---- shared validation used by every format ---------------------------------------------


def check_name(name: str) -> str:
    if name in _VALID_NAMES:
        return name
    if not name:
        raise InvalidValue("empty field name")
    if len(name) > MAX_NAME_LEN:
        raise InvalidValue(f"field name longer than {MAX_NAME_LEN} characters")
    if not NAME_RE.match(name):
        raise InvalidValue(f"field name {name[:40]!r} has characters outside [A-Za-z0-9_.-]")
    if len(_VALID_NAMES) < _VALID_NAMES_MAX:
        _VALID_NAMES.add(name)
    return name


def check_device_id(device_id: Any) -> str:
    if device_id is None or device_id == "":
        raise InvalidValue("no device_id (send it in the message, X-Device-Id or ?device_id=)")
    if not isinstance(device_id, str):
        # str(true) == "True", str(1.5) == "1.5": a guessed id would file readings under a
        # device nobody named; the gateway's mistake must be visible instead.
        kind = {bool: "a boolean", int: "a number", float: "a number", list: "an array"}
        shown = str(device_id).lower() if isinstance(device_id, bool) else str(device_id)[:40]
        raise InvalidValue(f"device_id must be a string, not {kind.get(type(device_id), 'a value')} ({shown})")
    if len(device_id) > MAX_DEVICE_ID_LEN:
        raise InvalidValue(f"device_id longer than {MAX_DEVICE_ID_LEN} characters")
    if not DEVICE_RE.fullmatch(device_id):
        raise InvalidValue(f"device_id {device_id[:40]!r} has characters outside [A-Za-z0-9_.:-]")
    return device_id


_BOOLS = {"true": 1.0, "false": 0.0, "on": 1.0, "off": 0.0}


def coerce_text_value(name: str, text: str) -> tuple[float | None, str | None]:
    """A raw-string value: number if it reads as one, boolean words as 1/0, else text."""
    text = text.strip()
    if text == "":
        raise InvalidValue(f"field {name!r}: empty value")
    if text[0] in _NUMBER_START:  # the common case first: a plain number
        try:
            number = float(text)
        except ValueError:
            pass
        else:
            if not math.isfinite(number):
                raise InvalidValue(f"field {name!r}: {text} is not a finite number")
            return number, None
    if "\x00" in text:  # PostgreSQL text cannot hold it: refuse the field, not the whole flush
        raise InvalidValue(f"field {name!r}: text value contains a NUL character")
    lowered = text.lower()
    if lowered in _BOOLS:
        return _BOOLS[lowered], None
    if lowered in {"nan", "inf", "infinity"}:  # signed forms were refused as numbers above
        raise InvalidValue(f"field {name!r}: {text} is not a finite number")
    if len(text) > MAX_TEXT_LEN:
        raise InvalidValue(f"field {name!r}: text value longer than {MAX_TEXT_LEN} characters")
    return None, text


def coerce_json_value(name: str, value: Any) -> tuple[float | None, str | None]:
    """A JSON value: numbers and booleans as numbers, strings as in raw strings."""
    if isinstance(value, bool):
        return (1.0 if value else 0.0), None
    if isinstance(value, int | float):
        number = float(value)
        if not math.isfinite(number):
            raise InvalidValue(f"field {name!r}: {value} is not a finite number")
        return number, None
    if isinstance(value, str):
        return coerce_text_value(name, value)
    if value is None:
        raise InvalidValue(f"field {name!r}: null is not a value")
    raise InvalidValue(f"field {name!r}: {type(value).__name__} is not a number, boolean or string")


def parse_time(value: Any, ctx: ParseContext) -> datetime:
    """ISO 8601, or epoch seconds/ms/µs/ns told apart by magnitude; then a sanity window."""
    if isinstance(value, bool):
        raise InvalidValue("timestamp: a boolean is not a time")
    if isinstance(value, int | float) or (isinstance(value, str) and _looks_numeric(value)):
        try:
            number = float(value)
        except ValueError as exc:
            raise InvalidValue(f"timestamp: {value!r} is not a time") from exc
        if not math.isfinite(number):
            raise InvalidValue(f"timestamp: {value!r} is not a time")
        magnitude = abs(number)
        if magnitude < 1e11:
            seconds = number
        elif magnitude < 1e14:
            seconds = number / 1e3
        elif magnitude < 1e17:
            seconds = number / 1e6
        else:
            seconds = number / 1e9
        try:
            ts = datetime.fromtimestamp(seconds, tz=UTC)
        except (OverflowError, OSError, ValueError) as exc:
            raise InvalidValue(f"timestamp: {value!r} is out of range") from exc
    elif isinstance(value, str):
        try:
            ts = datetime.fromisoformat(value.strip())
        except ValueError as exc:
            raise InvalidValue(f"timestamp: {value[:40]!r} is neither ISO 8601 nor epoch") from exc
        if ts.tzinfo is None:
            ts = ts.replace(tzinfo=UTC)
    else:
        raise InvalidValue(f"timestamp: {type(value).__name__} is not a time")
    if ts < EARLIEST:
        raise InvalidValue(f"timestamp: {ts.isoformat()} is before 2000")
    if ts > ctx.received_at + FUTURE_SLACK:
        raise InvalidValue(f"timestamp: {ts.isoformat()} is more than a day ahead of the server clock")
    return ts


def _looks_numeric(text: str) -> bool:
    text = text.strip()
    return bool(text) and (text[0].isdigit() or text[0] in "+-.") and "-" not in text[1:] and ":" not in text


def build_message(
    position: int,
    raw: str | Callable[[], str],
    fields: Iterable[tuple[str, Any]],
    ctx: ParseContext,
    coerce: Callable[[str, Any], tuple[float | None, str | None]],
    untimed: dict[str, int] | None = None,
) -> Message:
    """Turn (name, value) pairs of one message into readings, or raise InvalidValue.

    A message is all-or-nothing: a gateway's line is one observation, so a half-stored
    line would be harder to reason about than a rejected one with its reason.

    A message without a time of its own gets the time of receipt plus k microseconds,
    k counting that device's earlier messages without a time in the same body (`untimed`,
    one dict per parse): two lines of one body are two observations, and giving them the
    same time made the second look like a re-send of the first and be dropped.
    """
    device_id = ctx.default_device_id
    ts: datetime | None = None
    values: list[tuple[str, float | None, str | None]] = []
    seen: set[str] = set()
    for name, value in fields:
        key = name.strip() if isinstance(name, str) else name
        if key in _SPECIAL_KEYS:
            if key in DEVICE_KEYS:
                device_id = value
            else:
                ts = parse_time(value, ctx)
            continue
        check_name(key)
        if key in seen:
            raise InvalidValue(f"field {key!r} appears twice")
        seen.add(key)
        number, text = coerce(key, value)
        values.append((key, number, text))
    device = check_device_id(device_id)
    if not values:
        raise InvalidValue("no readings in message")
    server_time = ts is None
    if ts is None:
        ts = ctx.received_at
        if untimed is not None:
            k = untimed.get(device, 0)
            untimed[device] = k + 1
            if k:
                ts = ts + k * _ONE_US
    make = Reading._make
    return Message(position, raw, [make((device, n, ts, v, t)) for n, v, t in values], server_time)


def count_fields(names: Iterable[Any]) -> int:
    """How many readings a refused message carried: its fields other than device and time."""
    return sum(1 for name in names if (name.strip() if isinstance(name, str) else name) not in _SPECIAL_KEYS)

"""Query-string parameters, declared once per route and checked before the view runs.

    @bp.get("/telemetry/aggregate")
    @accepts(text("metric", required=True), choice("agg", AGGREGATES, "avg"), timestamp("start"), ...)
    def aggregate(p: dict[str, Any]) -> Response: ...

The view receives the parsed values (defaults filled in, keyed by the canonical name).
Anything the declaration does not name is refused: a typo such as `devce_id` used to
return every row unfiltered. So are text with control characters (PostgreSQL cannot
store NUL, and no identifier here contains one), numbers that are not finite, and a
parameter given twice where one value is expected. Every refusal is a 400 naming the
parameter; an unknown one also lists the accepted names.

Times beyond the ends of the calendar (`0001-01-01T00:00:00+14:00` is in year 0 in UTC)
are clamped to its ends rather than refused: such a bound is a meaningful, if empty,
range, and clamping keeps every datetime sent to PostgreSQL representable.
"""

from __future__ import annotations

import difflib
import functools
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from flask import Response, request

from backend.api.responses import error_response
from backend.store.queries import QueryError, parse_bool, parse_int, parse_time_param

MAX_TEXT_LEN = 200
MAX_LIST_ITEMS = 1000
# C0 and C1 control characters (NUL among them); DEL too.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


class ParamError(QueryError):
    """A query-string parameter the client got wrong; `name` is the parameter."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.name = name


@dataclass(frozen=True)
class Param:
    """One accepted parameter: `convert(name, raw)` turns a non-empty raw value into its value."""

    name: str
    convert: Callable[[str, str], Any]
    default: Any = None
    aliases: tuple[str, ...] = ()
    multi: bool = False  # comma-separated and/or repeated: a list
    required: bool = False
    kind: str = "text"  # for documentation and the fuzz tests: text, int, number, bool, time, choice
    choices: tuple[str, ...] = ()


def _shown(value: str, n: int = 40) -> str:
    return repr(value[:n]) + ("..." if len(value) > n else "")


def check_text(name: str, value: str, max_len: int = MAX_TEXT_LEN) -> str:
    """A text value (also a path segment): no control characters, bounded length."""
    bad = _CONTROL.search(value)
    if bad:
        raise ParamError(name, f"{name}: contains the control character U+{ord(bad.group()):04X}"
                               f" at position {bad.start()}")
    if len(value) > max_len:
        raise ParamError(name, f"{name}: longer than {max_len} characters")
    return value


def text(name: str, default: str | None = None, *, max_len: int = MAX_TEXT_LEN, aliases: tuple[str, ...] = (),
         required: bool = False) -> Param:
    return Param(name, lambda n, v: check_text(n, v, max_len), default, aliases, required=required)


def text_list(name: str, *, max_len: int = MAX_TEXT_LEN) -> Param:
    """Comma-separated and/or repeated (`device_id=a,b&device_id=c`); blanks skipped."""
    return Param(name, lambda n, v: check_text(n, v, max_len), [], multi=True)


def choice(name: str, options: Sequence[str], default: str | None = None) -> Param:
    opts = tuple(options)

    def convert(n: str, v: str) -> str:
        if v not in opts:
            raise ParamError(n, f"{n}: {_shown(v)} is not one of {', '.join(opts)}")
        return v

    return Param(name, convert, default, kind="choice", choices=opts)


def integer(name: str, default: int | None, lo: int, hi: int) -> Param:
    def convert(n: str, v: str) -> int:
        return parse_int(n, v, 0, lo, hi)

    return Param(name, convert, default, kind="int")


def number(name: str, default: float | None = None, *, gt: float | None = None, le: float | None = None,
           what: str = "a number") -> Param:
    """A finite float, `gt < x <= le` where given."""

    def convert(n: str, v: str) -> float:
        try:
            x = float(v)
        except ValueError:
            raise ParamError(n, f"{n}: {_shown(v, 20)} is not a number") from None
        if not math.isfinite(x):
            raise ParamError(n, f"{n}: {_shown(v, 20)} is not a finite number")
        if (gt is not None and x <= gt) or (le is not None and x > le):
            bounds = " and ".join(s for s in (f"over {gt:g}" if gt is not None else "",
                                              f"at most {le:g}" if le is not None else "") if s)
            raise ParamError(n, f"{n}: {what}, {bounds}")
        return x

    return Param(name, convert, default, kind="number")


def boolean(name: str, default: bool | None) -> Param:
    return Param(name, lambda n, v: parse_bool(n, v, False), default, kind="bool")


def timestamp(name: str, *, aliases: tuple[str, ...] = ()) -> Param:
    """ISO 8601 (no offset: UTC) or epoch seconds; clamped to the calendar's ends."""

    def convert(n: str, v: str) -> datetime | None:
        check_text(n, v, 64)
        return parse_time_param(n, v)

    return Param(name, convert, None, aliases, kind="time")


class Spec:
    """The parameters of one route."""

    def __init__(self, params: Sequence[Param]) -> None:
        self.params = tuple(params)
        self.by_name: dict[str, Param] = {}
        for p in self.params:
            for n in (p.name, *p.aliases):
                self.by_name[n] = p

    @property
    def accepted(self) -> list[str]:
        return sorted(self.by_name)

    def parse(self, args: Any) -> dict[str, Any]:
        for name in args:
            if name not in self.by_name:
                raise ParamError(name, self._unknown(name))
        values: dict[str, Any] = {}
        for p in self.params:
            given = [n for n in (p.name, *p.aliases) if n in args]
            if len(given) > 1:
                raise ParamError(p.name, f"{' and '.join(given)} are the same parameter: give one")
            raw = args.getlist(given[0]) if given else []
            values[p.name] = self._value(p, given[0] if given else p.name, raw)
        return values

    def _value(self, p: Param, name: str, raw: list[str]) -> Any:
        if p.multi:
            for v in raw:  # before strip(), which would quietly take "a\n" for "a"
                check_text(name, v, max_len=len(v))
            items = [x.strip() for v in raw for x in v.split(",") if x.strip()]
            if len(items) > MAX_LIST_ITEMS:
                raise ParamError(name, f"{name}: more than {MAX_LIST_ITEMS} values")
            return [self._convert(p, name, x) for x in items]
        if len(raw) > 1:
            raise ParamError(name, f"{name}: given {len(raw)} times; give it once")
        if not raw or raw[0] == "":
            if p.required:
                raise ParamError(name, f"{name}: required")
            return p.default
        return self._convert(p, name, raw[0])

    @staticmethod
    def _convert(p: Param, name: str, raw: str) -> Any:
        try:
            return p.convert(name, raw)
        except ParamError:
            raise
        except QueryError as exc:  # parse_int & co. name the parameter already
            raise ParamError(name, str(exc)) from None

    def _unknown(self, name: str) -> str:
        shown = _shown(name)  # repr: control characters are shown escaped
        close = difflib.get_close_matches(name, self.accepted, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        accepts = ", ".join(self.accepted) if self.accepted else "no parameters"
        return f"unknown parameter {shown}{hint}; {request.path[:80]} accepts {accepts}"


def accepts(*params: Param) -> Callable[[Callable[..., Response]], Callable[..., Response]]:
    """Declare a route's query parameters; the view is called with their values first."""
    spec = Spec(params)

    def wrap(view: Callable[..., Response]) -> Callable[..., Response]:
        @functools.wraps(view)
        def checked(*args: Any, **kwargs: Any) -> Response:
            try:
                values = spec.parse(request.args)
            except ParamError as exc:
                return error_response(400, str(exc), parameter=exc.name[:80], accepted=spec.accepted)
            return view(values, *args, **kwargs)

        checked.param_spec = spec  # type: ignore[attr-defined]
        return checked

    return wrap

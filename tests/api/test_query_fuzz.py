"""Fuzz every route's query parameters: no input yields a 5xx.

Routes come from the app's url_map, so a new route is fuzzed (and must declare its
parameters, backend/api/params.py) without touching this file. Requests go through the
Flask test client to the real database.
"""

from __future__ import annotations

import string
from datetime import UTC, datetime, timedelta, timezone
from urllib.parse import quote, urlencode

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

ADMIN = {"Authorization": "Bearer test-admin-key"}
# Routes that take no part in the declared-parameter scheme, and why.
UNDECLARED = {
    "static": "Flask's own static files",
    "health.health": "owned by the health checks; load balancers may add cache-busting parameters",
}
EXAMPLES_PER_ROUTE = 60

EDGE_TIMES = [
    "0001-01-01", "0001-01-01T00:00:00", "0001-01-01T00:00:00+14:00", "0001-01-01T00:00:00-14:00",
    "0001-01-01T00:00:00+23:59", "9999-12-31", "9999-12-31T23:59:59.999999", "9999-12-31T23:59:59.999999-23:59",
    "9999-12-31T23:59:59.999999+14:00", "1970-01-01T00:00:00Z", "2026-11-23T10:00:00Z", "0", "99999999999999999999",
    "1" + "0" * 400, "1e20", "-1", "24:00", "2026-02-30", "2026-11-23T10:00:00+24:00",
]
EDGE_NUMBERS = [
    "inf", "-inf", "Infinity", "nan", "NaN", "-nan", "1e20", "1e308", "1e309", "-1e309", "1e-320", "-0", "0", "-1",
    "9" * 30, "-" + "9" * 30, "9" * 5000, "0x10", "1_000", " 5 ", "\u0665", "\u00b2", "1.5", "",
    str(2**63), str(2**62), str(-(2**63)),
]
# Tried on every route besides its declared names: the parameters any route of this API
# reads, so that a route reading one it forgot to declare is fuzzed with it as well.
COMMON_NAMES = ["device_id", "metric", "start", "end", "start_time", "end_time", "hours", "limit", "offset",
                "order_by", "desc", "format", "bucket", "agg", "status", "is_resolved", "severity", "rule_id",
                "include_revoked", "signal", "store"]
NASTY_CHARS = "\x00\x01\x08\t\n\r\x1b\x7f\x85\x9f\u2028\ufeff ,;%'\"\\/"


def _offsets() -> st.SearchStrategy[timezone]:
    return st.integers(-(24 * 60 - 1), 24 * 60 - 1).map(lambda m: timezone(timedelta(minutes=m)))


def times() -> st.SearchStrategy[str]:
    """Dates across the whole calendar in every offset, naive and epoch forms, and the edges."""
    aware = st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31, 23, 59, 59, 999999),
                         timezones=_offsets())
    naive = st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31, 23, 59, 59, 999999))
    return st.one_of(
        st.sampled_from(EDGE_TIMES),
        aware.map(lambda d: d.isoformat()),
        naive.map(lambda d: d.isoformat()),
        st.floats(allow_nan=True, allow_infinity=True).map(lambda x: repr(abs(x))),
        st.integers(min_value=0, max_value=10**30).map(str),
    )


def numbers() -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from(EDGE_NUMBERS),
        st.integers().map(str),
        st.floats(allow_nan=True, allow_infinity=True).map(repr),
    )


def texts() -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from(["\x00", "a\x00", "\x00a", "a\n", "a,\x01", "\x7f", "\x9f", "a" * 129, "a" * 5000]),
        st.text(max_size=40),
        st.text(alphabet=st.sampled_from(NASTY_CHARS + string.ascii_letters), max_size=20),
        st.text(alphabet=string.ascii_letters + "_.:-,", min_size=1, max_size=300),
        st.sampled_from(["a", "b", "alt", "a,b", "n1", "true", "false", "wide", "avg", "1m"]),
    )


def values_for(param) -> st.SearchStrategy[str]:
    """Any value for any parameter, weighted towards what its kind would parse."""
    own = {"int": numbers(), "number": numbers(), "time": times(),
           "bool": st.sampled_from(["true", "false", "1", "0", "yes", "maybe", "", "\x00"]),
           "choice": st.sampled_from([*param.choices, *(c.upper() for c in param.choices), ""]) if param else texts(),
           "text": texts()}
    kind = param.kind if param is not None else "text"
    return st.one_of(own[kind], own[kind], texts(), numbers(), times())


def _declared(spec, name: str):
    return spec.by_name.get(name) if spec is not None else None


def query_pairs(spec) -> st.SearchStrategy[list[tuple[str, str]]]:
    names = sorted(spec.by_name) if spec is not None else []
    name = st.one_of(*([st.sampled_from(names)] * 3 if names else []), st.sampled_from(COMMON_NAMES),
                     st.sampled_from(COMMON_NAMES), st.text(max_size=12))
    return st.lists(name.flatmap(lambda n: st.tuples(st.just(n), values_for(_declared(spec, n)))),
                    max_size=6)


def fuzzed_routes(app):
    """(method, rule, spec) of every GET route and every route that declares query parameters."""
    out = []
    for rule in sorted(app.url_map.iter_rules(), key=lambda r: r.rule):
        if rule.endpoint in UNDECLARED:
            continue
        spec = getattr(app.view_functions[rule.endpoint], "param_spec", None)
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            if method == "GET" or spec is not None:
                out.append((method, rule, spec))
    return out


INGEST_BODIES = {
    "/api/ingest": ('{"device_id": "fz1", "flow_rate": 1.5}', "application/json"),
    "/api/telemetry": ('{"signals": {"sine": 0.5}}', "application/json"),
}


def test_every_get_route_declares_its_parameters(app):
    missing = [(r.rule, r.endpoint) for r in app.url_map.iter_rules()
               if "GET" in r.methods and r.endpoint not in UNDECLARED
               and getattr(app.view_functions[r.endpoint], "param_spec", None) is None]
    assert not missing, f"GET routes without @accepts(...) (backend/api/params.py): {missing}"
    routes = {(m, r.rule) for m, r, _ in fuzzed_routes(app)}
    assert ("GET", "/telemetry/query") in routes and ("POST", "/telemetry/parse") in routes


@pytest.mark.parametrize("path_value", ["%00", "a%0Ab", "x" * 129, "%C3%A9", "nobody"])
def test_path_parameters_never_5xx(client, path_value):
    for path in (f"/api/devices/{path_value}",):
        assert client.get(path).status_code in (400, 404)
        assert client.patch(path, json={"name": "x"}).status_code in (400, 404)
    assert client.delete(f"/api/keys/{path_value}").status_code in (400, 404)
    assert client.delete(f"/api/alert-rules/{'9' * 30}").status_code == 404


def _fuzz_route(client, method: str, rule, spec) -> None:
    body, ctype = INGEST_BODIES.get(rule.rule, ("alt:1", "text/plain"))

    @settings(max_examples=EXAMPLES_PER_ROUTE, deadline=None, database=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
    @given(pairs=query_pairs(spec), path_arg=texts())
    def one_request(pairs, path_arg):
        path = rule.rule
        for arg in rule.arguments:
            path = path.replace(f"<{arg}>", quote(path_arg, safe="") or "x")
        qs = urlencode(pairs)
        if method == "GET":
            resp = client.get(path, query_string=qs)
        else:
            resp = client.open(path, method=method, query_string=qs, data=body,
                               headers={"Content-Type": ctype, "X-Device-Id": "fz1"})
        assert resp.status_code < 500, (method, path, pairs, resp.get_data(as_text=True)[:400])
        if resp.status_code == 400:
            assert resp.is_json and resp.get_json()["error"], (method, path, pairs)

    one_request()


def test_no_query_parameter_of_any_route_yields_a_5xx(app, client, db):
    now = datetime.now(UTC).replace(microsecond=0)
    lines = "\n".join(f"device_id:{d},ts:{(now - timedelta(minutes=i)).isoformat()},alt:{i},mode:M{i % 2}"
                      for d in ("a", "b") for i in range(5))
    assert client.post("/telemetry/parse", data=lines, headers={"Content-Type": "text/plain"}).status_code == 200

    for method, rule, spec in fuzzed_routes(app):
        _fuzz_route(client, method, rule, spec)

    # Nothing fuzzed got in under a name no gateway could send.
    for table, column in (("telemetry_readings", "device_id"), ("telemetry_readings", "metric"),
                          ("devices", "device_id")):
        bad = db.execute(f"SELECT DISTINCT {column} FROM {table} WHERE {column} ~ '[[:cntrl:]]'").fetchall()
        assert bad == [], (table, bad)

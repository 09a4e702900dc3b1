"""Hypothesis over MQTT topics and payloads through the real handler, pipeline and database.

Never an exception out of the handler (the subscriber would otherwise lose a worker), every
message acknowledged while storage is up, and every refusal logged with its reason.
"""

from __future__ import annotations

import logging

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backend.mqtt.runtime import IngestProcess
from backend.mqtt.settings import from_config


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture
def handler(db, app_config):
    cfg = app_config.replace(mqtt_teltonika_topics="teltonika/+/data")
    proc = IngestProcess.build(cfg, from_config(cfg), {"*": ["a", None, "b"]}).start()
    lines = Lines()
    logging.getLogger("backend.mqtt").addHandler(lines)
    yield proc.handler, lines
    logging.getLogger("backend.mqtt").removeHandler(lines)
    proc.close(5)


level = st.one_of(st.sampled_from(["pump-1", "k_nokey", "k_0123456789ab", "tk_x", "a b", "+", "", "dev.1:x", "\x00"]),
                  st.text(max_size=12))
topics = st.one_of(
    st.builds(lambda d: f"telemetry/{d}", level),
    st.builds(lambda d: f"tb/{d}/v1/devices/me/telemetry", level),
    st.builds(lambda d: f"tb/{d}/v1/devices/me/attributes", level),
    st.builds(lambda d: f"teltonika/{d}/data", level),
    st.sampled_from(["v1/gateway/telemetry", "v1/devices/me/telemetry", "other/topic"]),
    st.text(max_size=30),
)
scalar = st.one_of(st.none(), st.booleans(), st.integers(-10**15, 10**15), st.floats(), st.text(max_size=10))
doc = st.recursive(scalar, lambda c: st.one_of(st.lists(c, max_size=3),
                                               st.dictionaries(st.text(max_size=6), c, max_size=4)), max_leaves=10)
payloads = st.one_of(st.binary(max_size=120), doc.map(lambda d: orjson.dumps(d, option=orjson.OPT_SERIALIZE_NUMPY)
                                                      if not isinstance(d, float) or d == d else b"nan"),
                     st.text(max_size=80).map(str.encode))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(topics, payloads, st.sampled_from([None, "application/json", "text/plain", "image/png"]))
def test_handler_never_raises_and_every_refusal_is_logged_with_its_reason(handler, topic, payload, ctype):
    h, lines = handler
    lines.lines.clear()
    verdict = h.handle(topic, payload, ctype)
    assert verdict.ack
    if verdict.stored == 0 and verdict.duplicates == 0:
        assert verdict.reason, (topic, payload)
        assert any(verdict.reason[:60] in line or "refused" in line for line in lines.lines), lines.lines

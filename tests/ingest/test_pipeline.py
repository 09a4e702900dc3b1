"""The ingest pipeline without HTTP: bytes, headers and an identity in, a typed outcome or a
domain refusal out. Runs on the app's real buffer, catalogue and database."""

from __future__ import annotations

import ast
import gzip
from pathlib import Path

import pytest

from backend.ingest import pipeline
from backend.ingest.pipeline import IngestOutcome, IngestPipeline, IngestRefused, IngestRequest


def _pipeline(app) -> IngestPipeline:
    svc = app.extensions["telemetry"]
    return IngestPipeline(svc.config, svc.buffer, svc.catalogue)


def test_pipeline_module_imports_nothing_of_flask_or_werkzeug():
    tree = ast.parse(Path(pipeline.__file__).read_text())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert not {m for m in imported if m.split(".")[0] in ("flask", "werkzeug")}, imported


def test_outcome_is_typed_and_counts_every_reading(app, db):
    body = b"roll:1,pitch:2\nroll:x\nbad line\n"
    out = _pipeline(app).run(IngestRequest(body=body, content_type="text/plain", default_device="d1"))
    assert isinstance(out, IngestOutcome)
    assert (out.stored, out.durability, out.parsed, out.accepted, out.status) == (True, "committed", 2, 2, 207)
    # line 2: roll is a number in the catalogue; line 3: not a reading at all
    assert [e.position for e in out.rejected] == [2, 3] and out.rejected_readings == 2
    assert out.messages == 1 and out.server_timed == 2 and out.single is not None  # timed before the check
    assert db.execute("SELECT count(*) FROM telemetry_readings WHERE device_id = 'd1'").fetchone()[0] == 2
    again = _pipeline(app).run(IngestRequest(body=b"roll:1,pitch:2", content_type="text/plain",
                                             default_device="d1", store=False))
    assert (again.stored, again.status, again.rejected) == (False, 200, [])


@pytest.mark.parametrize(("req", "kind"), [
    (IngestRequest(body=b"a:1", content_type="application/xml"), pipeline.UNSUPPORTED),
    (IngestRequest(body=b"a:1", content_type="text/plain", format="csv"), pipeline.UNSUPPORTED),
    (IngestRequest(body=b"a:1", content_type="text/plain", content_encoding="br"), pipeline.UNSUPPORTED),
    (IngestRequest(body=b"\xff\xfe", content_type="text/plain"), pipeline.INVALID),
    (IngestRequest(body=b"not gzip", content_type="text/plain", content_encoding="gzip"), pipeline.INVALID),
    (IngestRequest(body=b"a:1", content_type="text/plain", default_device="bad id"), pipeline.INVALID),
    (IngestRequest(body=gzip.compress(b"a:1\n" * 400_000), content_type="text/plain", content_encoding="gzip"),
     pipeline.TOO_LARGE),
    (IngestRequest(body=b"a:1\nb:2", content_type="text/plain", default_device="d2",
                   device_guard=lambda ids: None if set(ids) <= {"d1"} else "not yours"), pipeline.FORBIDDEN_DEVICE),
])
def test_refusals_are_domain_errors_with_a_kind(make_app, db, req, kind):
    app = make_app(max_decompressed_bytes=1_000_000)
    with pytest.raises(IngestRefused) as info:
        _pipeline(app).run(req)
    assert info.value.kind == kind and info.value.message
    assert db.execute("SELECT count(*) FROM telemetry_readings").fetchone()[0] == 0


def test_admission_is_asked_for_the_decompressed_size_and_the_parsed_count(app, db):
    asked: list[tuple[str, int]] = []

    class Recording:
        def body(self, nbytes: int) -> None:
            asked.append(("body", nbytes))

        def readings(self, count: int) -> None:
            asked.append(("readings", count))
            if count > 2:
                raise IngestRefused(pipeline.BUSY, "busy", retry_after=2)

    raw = b"a:1,b:2\nc:3\n"
    with pytest.raises(IngestRefused) as info:
        _pipeline(app).run(IngestRequest(body=gzip.compress(raw), content_type="text/plain",
                                         content_encoding="gzip", default_device="d1", admission=Recording()))
    assert info.value.kind == pipeline.BUSY and info.value.retry_after == 2
    assert asked == [("body", len(raw)), ("readings", 3)]
    assert db.execute("SELECT count(*) FROM telemetry_fields WHERE name IN ('a', 'b', 'c')").fetchone()[0] == 0

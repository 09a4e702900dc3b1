"""`X-Request-Id`: one id per request, taken from the client (or nginx) or made here.

Every answer carries it in the header and every error body in `request_id`, so a client
quoting it finds the log line with the detail its answer leaves out (database errors).
"""

from __future__ import annotations

import re
import uuid

from flask import Flask, Response, g, has_request_context, request

HEADER = "X-Request-Id"
# An id from outside is echoed and logged: printable and short, else a fresh one is made.
_ACCEPTED = re.compile(r"[A-Za-z0-9._:@+=/-]{1,128}")


def init_app(app: Flask) -> None:
    app.after_request(_answer_with_id)


def current_request_id() -> str | None:
    """This request's id (made on first use, so hooks that answer early have one too)."""
    if not has_request_context():
        return None
    rid = g.get("request_id")
    if rid is None:
        sent = request.headers.get(HEADER, "")
        rid = g.request_id = sent if _ACCEPTED.fullmatch(sent) else uuid.uuid4().hex
    return rid


def _answer_with_id(resp: Response) -> Response:
    rid = current_request_id()
    if rid is not None:
        resp.headers[HEADER] = rid
    return resp

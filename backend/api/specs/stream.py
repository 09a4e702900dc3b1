"""backend/api/stream.py: the stream token, and GET /api/stream's redirect to the stream process."""

from backend.api.specs.common import INT, STR, Operation, obj

OPERATIONS = {
    ("POST", "/api/stream/token"): Operation(
        "A short-lived stream token (for EventSource's URL instead of the key)",
        {200: obj("token", "expires_in", "stream_url", token=STR, expires_in=INT, stream_url=STR)},
        "Connect to `stream_url?token=...` (text/event-stream, served by the stream process) before"
        " `expires_in` seconds pass.", tag="live"),
    ("GET", "/api/stream"): Operation(
        "The live stream: a 307 redirect to the stream process (text/event-stream there)", {307: None},
        "The query string (the token) goes along; EventSource follows the redirect.", tag="live",
        streaming=True),
}

"""backend/api/stream.py: the stream token. The stream itself (GET stream_url) is served by the
stream process (backend/live/server.py, docs/stream.md), not by these workers."""

from backend.api.specs.common import INT, STR, Operation, obj

OPERATIONS = {
    ("POST", "/api/stream/token"): Operation(
        "A short-lived stream token (for EventSource's URL instead of the key)",
        {200: obj("token", "expires_in", "stream_url", token=STR, expires_in=INT, stream_url=STR)},
        "Connect to `stream_url?token=...` (text/event-stream, served by the stream process) before"
        " `expires_in` seconds pass.", tag="live"),
}

"""HTTP/1.1 header blocks, as the event loop of backend/http_worker.py reads them: pure functions.

They decide only when a request is complete and what its connection does next; gunicorn
parses the request itself afterwards, so a header block these get wrong is still parsed,
or refused, by gunicorn.
"""

from __future__ import annotations


def _headers(head: bytes) -> list[tuple[bytes, bytes]]:
    out = []
    for line in head.split(b"\r\n")[1:]:
        name, sep, value = line.partition(b":")
        if sep:
            out.append((name.strip().lower(), value.strip()))
    return out


def _without(head: bytes, name: bytes) -> list[bytes]:
    """The header block's lines, without the headers called `name` (lower case)."""
    lines = head.split(b"\r\n")
    return [lines[0]] + [ln for ln in lines[1:] if ln.partition(b":")[0].strip().lower() != name]


def body_framing(head: bytes) -> int | None:
    """Body length from a header block: bytes, -1 for chunked, None when gunicorn must decide."""
    headers = _headers(head)
    te = [v for n, v in headers if n == b"transfer-encoding"]
    cl = [v for n, v in headers if n == b"content-length"]
    if te:
        if cl or not te[-1].lower().endswith(b"chunked"):
            return None
        return -1
    if not cl:
        return 0
    if len(cl) > 1 or not cl[0].isdigit():
        return None
    return int(cl[0])


def expects_continue(head: bytes) -> bool:
    request_line = head.split(b"\r\n", 1)[0]
    if not request_line.endswith(b"HTTP/1.1"):
        return False  # HTTP/1.0 must ignore it (RFC 9110 10.1.1)
    return any(n == b"expect" and v.lower() == b"100-continue" for n, v in _headers(head))


def strip_expect(head: bytes) -> bytes:
    return b"\r\n".join(_without(head, b"expect"))


def force_close(head: bytes) -> bytes:
    """The header block with `Connection: close` instead of its own Connection headers."""
    return b"\r\n".join([*_without(head, b"connection"), b"Connection: close"])

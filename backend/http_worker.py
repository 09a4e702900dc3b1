"""gunicorn's gthread worker, with each request read by the event loop before a thread runs it.

Stock gthread hands a connection to a thread as soon as it is readable, and the thread then
blocks until the whole request has arrived: sixteen clients that sent half a header block (or
a TLS ClientHello, or a body at one byte per second) held every thread of a worker, and the
service stopped answering (issue 11). Here the worker's main loop, which already waits on all
sockets with a selector, reads the header block and the body (Content-Length or chunked, up
to MAX_BODY_BYTES) without blocking, and only a complete request goes to a thread. Threads
are then spent on the application and its group commit, never on waiting for a client, so
slow clients cost a file descriptor and their bytes, not a thread.

Bounds (`Config`): the header block must arrive within CLIENT_HEADER_TIMEOUT seconds of the
first byte (or of the connection); the body within CLIENT_BODY_TIMEOUT seconds plus one
second per CLIENT_BODY_MIN_RATE bytes received (Apache mod_reqtimeout's rule: a large body on
a slow but honest link gets the time it needs, a trickle does not). A connection past its
bound gets a 408 (or nothing when it sent nothing) and is closed. While a thread runs the
request, one read or write of its socket waits at most GUNICORN_TIMEOUT seconds, so a client
that stops reading its answer cannot hold the thread either.

A request refused while its client may still be sending the body (a body over
MAX_BODY_BYTES by its Content-Length, answered 413 by the application; the event loop's
own 413 and 503) is answered with `Connection: close`, and the rest of its body is then
read and dropped before the socket closes (nginx's lingering close). Closing a socket with
bytes still arriving makes the kernel send a reset: a sender still writing its body (nginx
under load) then loses the answer and reports 502, which nginx turns into 503, "retry", for
a body that will never fit.

gunicorn parses the bytes itself afterwards (they are handed over through its parser's
unreader); the framing here only decides when a request is complete, so a request it gets
wrong is still parsed, or refused, by gunicorn.
"""

from __future__ import annotations

import errno
import json
import resource
import selectors
import socket
import time
from dataclasses import dataclass
from functools import partial
from typing import Any

from gunicorn import http, util
from gunicorn.workers.gthread import TConn, ThreadWorker

from backend.http_framing import body_framing, expects_continue, force_close, strip_expect

MAX_HEADER_BYTES = 64 * 1024
RECV_BYTES = 256 * 1024
MAX_READING = 1000  # per worker; the oldest is dropped for a new one beyond this


class TimedSocket(socket.socket):
    """A socket whose blocking mode is a timeout: gunicorn's threads set their socket blocking."""

    io_timeout: float | None = None

    def setblocking(self, flag: bool) -> None:
        if flag and self.io_timeout:
            self.settimeout(self.io_timeout)
        else:
            super().setblocking(flag)


@dataclass
class Reading:
    """A connection whose request is still arriving."""

    buf: bytearray
    deadline: float
    head_end: int = 0  # 0 until the header block is complete
    body_start: float = 0.0
    length: int | None = None  # Content-Length; None: chunked
    chunk_pos: int = 0  # where the next chunk-size line starts (chunked bodies)
    sent_anything: bool = False
    claim: int = 0  # bytes counted against the worker's budget: received, or announced if more


@dataclass
class Lingering:
    """A connection whose answer is sent, while its client may still send a body nobody reads."""

    start: float
    deadline: float  # as for a body: CLIENT_BODY_TIMEOUT plus a second per CLIENT_BODY_MIN_RATE bytes
    left: int  # bytes still to read and drop, at most
    received: int = 0


class BufferingThreadWorker(ThreadWorker):
    """gthread, with requests read in the event loop (see the module docstring)."""

    @classmethod
    def check_config(cls, cfg: Any, log: Any) -> None:
        if cfg.is_ssl:
            # The event loop reads plain HTTP; TLS ends at nginx (docker/nginx.conf).
            raise RuntimeError("BufferingThreadWorker does not terminate TLS: put nginx in front,"
                               " or set GUNICORN_WORKER_CLASS=gthread")
        super().check_config(cfg, log)

    def init_process(self) -> None:
        from backend.config import Config

        cfg = Config.from_env()
        self.header_timeout = cfg.client_header_timeout
        self.body_timeout = cfg.client_body_timeout
        self.body_min_rate = max(1, cfg.client_body_min_rate)
        self.body_limit = cfg.max_body_bytes
        # Bytes held for requests still arriving, all connections of this worker together.
        self.buffer_limit = max(MAX_HEADER_BYTES, cfg.client_buffer_max_bytes)
        self.buffered = 0
        self.reading: dict[TConn, Reading] = {}
        self.lingering: dict[TConn, Lingering] = {}
        self.unread_body: dict[TConn, int] = {}  # handed over with a body too large to read: its length
        soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        self.max_reading = max(16, min(MAX_READING, (soft - 64) // 2)) if soft > 0 else MAX_READING
        super().init_process()

    # --- connections come in: gunicorn's paths to a thread now start a read instead ------

    def accept(self, listener: socket.socket) -> None:
        try:
            client, addr = listener.accept()
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise
            return
        sock = TimedSocket(client.family, client.type, client.proto, fileno=client.detach())
        sock.io_timeout = self.cfg.timeout or None
        conn = TConn(self.cfg, sock, addr, listener.getsockname())
        self._start_reading(conn, b"")

    def enqueue_req(self, conn: TConn) -> None:
        # Reached from a kept-alive connection that became readable, or from bytes of a next
        # request already read with the last one: read that request here first. Such a
        # connection is counted in nr_conns; connections being read here are not (they do not
        # hold a thread and must not stop the worker from accepting).
        self.nr_conns -= 1
        leftover = conn.parser.unreader.take_buffered() if conn.parser is not None else b""
        conn.sock.setblocking(False)
        self._start_reading(conn, leftover)

    def _start_reading(self, conn: TConn, data: bytes) -> None:
        while len(self.reading) >= self.max_reading:
            self._close(next(iter(self.reading)))  # the oldest: slow clients are the old ones
        self.reading[conn] = Reading(bytearray(data), time.monotonic() + self.header_timeout,
                                     sent_anything=bool(data))
        self._claim(self.reading[conn], len(data))
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._on_readable, conn))
        if data:
            self._advance(conn, self.reading[conn])

    def _on_readable(self, conn: TConn, _sock: Any) -> None:
        st = self.reading.get(conn)
        if st is None:
            return
        data = _recv(conn.sock)
        if data is None:
            return
        if not data:
            if st.head_end:
                # Half-closed inside the body: the client may still read an answer, and the
                # application's reader says what was cut short (400), not silence.
                self._hand_over(conn)
            else:
                self._close(conn)
            return
        st.buf += data
        st.sent_anything = True
        if not self._claim(st, len(st.buf)):
            self._refuse_busy(conn)
            return
        self._advance(conn, st)

    # --- is the request complete? ---------------------------------------------------------

    def _advance(self, conn: TConn, st: Reading) -> None:
        if not st.head_end:
            end = st.buf.find(b"\r\n\r\n")
            if end < 0:
                if len(st.buf) > MAX_HEADER_BYTES:
                    self._refuse(conn, 431, "Request Header Fields Too Large",
                                 f"request headers larger than {MAX_HEADER_BYTES} bytes")
                return
            st.head_end = end + 4
            framing = body_framing(bytes(st.buf[:end]))
            if framing is None or framing == 0:
                # No body, or a framing gunicorn will refuse: nothing more to wait for.
                self._hand_over(conn)
                return
            if framing > self.body_limit:
                # A body the application refuses (413) from its Content-Length alone. The answer
                # closes the connection, and what is still coming is dropped (finish_request).
                head = force_close(bytes(st.buf[:end]))
                st.buf[:end] = head
                self.unread_body[conn] = framing
                self._hand_over(conn)
                return
            st.length = None if framing == -1 else framing
            if st.length is not None and not self._claim(st, st.head_end + st.length):
                self._refuse_busy(conn)  # from its Content-Length, before its body takes room
                return
            if expects_continue(bytes(st.buf[:end])):
                # The client waits for this before it sends the body; gunicorn would only send
                # it from a thread. Its header goes so that gunicorn does not send a second one.
                self._send(conn, b"HTTP/1.1 100 Continue\r\n\r\n")
                head = strip_expect(bytes(st.buf[:end]))
                st.buf[:end] = head
                st.head_end = len(head) + 4
            st.body_start = time.monotonic()
            st.chunk_pos = st.head_end
        received = len(st.buf) - st.head_end
        if st.length is not None:
            complete = received >= st.length
        else:
            complete = self._chunked_complete(st)
            if not complete and received > self.body_limit + 64 * 1024:
                self._refuse(conn, 413, "Payload Too Large", f"body is over the {self.body_limit}-byte limit",
                             linger=self.body_limit)
                return
        if complete:
            self._hand_over(conn)
            return
        st.deadline = st.body_start + self.body_timeout + received / self.body_min_rate

    def _chunked_complete(self, st: Reading) -> bool:
        buf = st.buf
        while True:
            eol = buf.find(b"\r\n", st.chunk_pos)
            if eol < 0:
                return False
            try:
                size = int(bytes(buf[st.chunk_pos:eol]).split(b";", 1)[0].strip(), 16)
            except ValueError:
                return True  # not chunked framing: gunicorn answers 400
            if size == 0:
                return buf.find(b"\r\n\r\n", eol) >= 0  # the empty line after the trailers
            nxt = eol + 2 + size + 2
            if len(buf) < nxt:
                return False
            st.chunk_pos = nxt

    # --- leaving the event loop ------------------------------------------------------------

    def _hand_over(self, conn: TConn) -> None:
        st = self.reading.pop(conn)
        self.buffered -= st.claim
        self.poller.unregister(conn.sock)
        if conn.parser is None:
            conn.parser = http.get_parser(self.cfg, conn.sock, conn.client)
        conn.parser.unreader.unread(bytes(st.buf))
        conn.data_ready = True
        self.nr_conns += 1
        super().enqueue_req(conn)

    def _claim(self, st: Reading, nbytes: int) -> bool:
        """Count up to `nbytes` for this connection; False when the worker's budget is spent."""
        if nbytes > st.claim:
            self.buffered += nbytes - st.claim
            st.claim = nbytes
        return self.buffered <= self.buffer_limit

    def _refuse_busy(self, conn: TConn) -> None:
        st = self.reading[conn]
        left = (st.length - (len(st.buf) - st.head_end)) if st.head_end and st.length is not None else 0
        self._refuse(conn, 503, "Service Unavailable", "too many request bytes arriving at once"
                     f" (CLIENT_BUFFER_MAX_BYTES={self.buffer_limit}); not stored, retry later", retry_after=2,
                     linger=left)

    def _refuse(self, conn: TConn, status: int, reason: str, message: str, retry_after: int | None = None,
                linger: int = 0) -> None:
        """Answer from the event loop and close; `linger`: body bytes the client may still send."""
        body = json.dumps({"success": False, "error": message, "status": status}).encode()
        extra = f"Retry-After: {retry_after}\r\n" if retry_after else ""
        self._send(conn, (f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n{extra}"
                          f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body)
        if linger > 0:
            st = self.reading.pop(conn)
            self.buffered -= st.claim
            self.poller.unregister(conn.sock)
            self._linger(conn, linger)
        else:
            self._close(conn)

    # --- a refused body: read and dropped before the close ---------------------------------

    def finish_request(self, conn: TConn, fs: Any) -> None:
        announced = self.unread_body.pop(conn, None)
        if announced is not None and not fs.cancelled() and fs.exception() is None and fs.result() is False:
            self.nr_conns -= 1  # as gunicorn counts a closed connection
            self._linger(conn, announced)
            return
        super().finish_request(conn, fs)

    def _linger(self, conn: TConn, left: int) -> None:
        """Half-close (the answer is complete), then drop what arrives, up to `left` bytes and
        within the time a body arriving at the same pace would get; then close."""
        try:
            conn.sock.shutdown(socket.SHUT_WR)
            conn.sock.setblocking(False)
        except OSError:
            util.close(conn.sock)
            return
        while len(self.lingering) >= self.max_reading:
            self._end_linger(next(iter(self.lingering)))  # the oldest
        now = time.monotonic()
        self.lingering[conn] = Lingering(now, now + self.body_timeout, left)
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._on_linger_readable, conn))

    def _on_linger_readable(self, conn: TConn, _sock: Any) -> None:
        lg = self.lingering.get(conn)
        if lg is None:
            return
        data = _recv(conn.sock)
        if data is None:
            return
        lg.left -= len(data)
        lg.received += len(data)
        lg.deadline = lg.start + self.body_timeout + lg.received / self.body_min_rate
        if not data or lg.left <= 0:
            self._end_linger(conn)

    def _end_linger(self, conn: TConn) -> None:
        if self.lingering.pop(conn, None) is not None:
            try:
                self.poller.unregister(conn.sock)
            except (KeyError, ValueError):
                pass
        util.close(conn.sock)

    def _send(self, conn: TConn, data: bytes) -> None:
        try:
            conn.sock.send(data)  # small, into an empty send buffer: it fits or the client is gone
        except OSError:
            pass

    def _close(self, conn: TConn) -> None:
        st = self.reading.pop(conn, None)
        if st is not None:
            self.buffered -= st.claim
            try:
                self.poller.unregister(conn.sock)
            except (KeyError, ValueError):
                pass
        util.close(conn.sock)

    def murder_pending(self) -> None:
        # Called by gunicorn's loop about once a second: also the sweep of reads past their bound.
        super().murder_pending()
        now = time.monotonic()
        for conn in [c for c, lg in self.lingering.items() if lg.deadline <= now]:
            self._end_linger(conn)
        for conn, st in [(c, s) for c, s in self.reading.items() if s.deadline <= now]:
            if not st.sent_anything:
                self._close(conn)
            elif not st.head_end:
                self._refuse(conn, 408, "Request Timeout",
                             f"request headers not complete within {self.header_timeout:g} s")
            else:
                self._refuse(conn, 408, "Request Timeout", "request body arriving too slowly (less than"
                             f" {self.body_min_rate} bytes/s after {self.body_timeout:g} s)")


def _recv(sock: socket.socket) -> bytes | None:
    """What a readable non-blocking socket holds: None when nothing after all, b"" when it is closed."""
    try:
        return sock.recv(RECV_BYTES)
    except (BlockingIOError, InterruptedError):
        return None
    except OSError:
        return b""

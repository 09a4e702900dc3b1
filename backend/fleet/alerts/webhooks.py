"""Alert webhooks: who may be called, and the delivery (retried with tenacity, with jitter).

A rule's webhook URL is chosen by whoever holds an admin key, and the server calls it: left
open, that is a way to make the server POST to its own loopback services, the cloud
metadata endpoint (169.254.169.254) or the private network behind it. So a URL whose host
resolves to a loopback, link-local, private, unspecified, multicast or otherwise non-public
address is refused, when the rule is created (400) and again on every connection (the name
may resolve elsewhere by then, and redirects are followed), unless the operator allows it
with ALERT_WEBHOOK_ALLOW_PRIVATE=true (an in-house receiver, the tests' local server).

Deliveries live in memory: a worker that dies with deliveries in flight loses them
(alerts.notified_at stays NULL, so they can be found and re-sent).
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlparse

import orjson
import requests
from psycopg_pool import ConnectionPool
from requests.adapters import HTTPAdapter
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential_jitter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NameResolutionError, NewConnectionError
from urllib3.util import connection as urllib3_connection

log = logging.getLogger(__name__)

ALLOW_SETTING = "ALERT_WEBHOOK_ALLOW_PRIVATE=true"
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# Most specific first, so the answer names the reason an operator recognises.
_KINDS = (
    ("is_unspecified", "unspecified"),
    ("is_loopback", "loopback"),
    ("is_link_local", "link-local (169.254.0.0/16 and fe80::/10, where cloud metadata lives)"),
    ("is_multicast", "multicast"),
    ("is_private", "private"),
    ("is_reserved", "reserved"),
)


class WebhookRefused(ValueError):
    """The webhook's host is not a public address (and private ones are not allowed)."""


class WebhookFailed(RuntimeError):
    """The receiver answered with a status worth retrying (5xx, 408, 429)."""


def address_kind(address: str) -> str | None:
    """Why `address` is not a public address ('loopback', 'private', ...), or None if it is."""
    ip: IPAddress = ipaddress.ip_address(address.split("%", 1)[0])  # no IPv6 zone index
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # ::ffff:127.0.0.1 is 127.0.0.1
    for attribute, kind in _KINDS:
        if getattr(ip, attribute):
            return kind
    return None if ip.is_global else "non-public"


def resolve_checked(host: str, port: int) -> list[str]:
    """The addresses `host` resolves to, all of them public; WebhookRefused otherwise.

    Raises socket.gaierror when the name does not resolve.
    """
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    for address in addresses:
        kind = address_kind(address)
        if kind is not None:
            shown = host if host == address else f"{host} resolves to {address}, which"
            raise WebhookRefused(f"{shown} is a {kind} address; webhooks go to public addresses only"
                                 f" unless the operator sets {ALLOW_SETTING}")
    return addresses


def url_refusal(url: str, allow_private: bool) -> str | None:
    """Why the server would not call `url`, or None if it would (checked when a rule is created)."""
    if allow_private:
        return None
    parsed = urlparse(url)
    try:
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
    except ValueError:
        return "the port is not a number between 0 and 65535"
    host = parsed.hostname
    if not host:
        return "the URL names no host"
    try:
        resolve_checked(host, port)
    except WebhookRefused as exc:
        return str(exc)
    except (socket.gaierror, UnicodeError):
        return f"the host {host!r} does not resolve"
    return None


class _CheckedConnect:
    """urllib3 connection mixin: resolve once, check every address, connect to a checked one.

    Connecting to the address that was checked (rather than letting the socket resolve the
    name again) leaves no window for a DNS answer that changes in between. TLS still
    verifies the certificate against the URL's host name.
    """

    host: str
    port: int
    timeout: Any
    source_address: Any
    socket_options: Any
    _dns_host: str

    def _new_conn(self) -> socket.socket:
        try:
            addresses = resolve_checked(self._dns_host, self.port)
        except socket.gaierror as exc:
            raise NameResolutionError(self.host, self, exc) from exc  # type: ignore[arg-type]
        last: OSError | None = None
        for address in addresses:
            try:
                return urllib3_connection.create_connection(
                    (address, self.port), self.timeout, source_address=self.source_address,
                    socket_options=self.socket_options)
            except TimeoutError as exc:
                raise ConnectTimeoutError(self, f"connection to {self.host} timed out") from exc
            except OSError as exc:
                last = exc
        raise NewConnectionError(self, f"failed to establish a new connection: {last}")  # type: ignore[arg-type]


class _CheckedHTTPConnection(_CheckedConnect, HTTPConnection):
    pass


class _CheckedHTTPSConnection(_CheckedConnect, HTTPSConnection):
    pass


class _CheckedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _CheckedHTTPConnection


class _CheckedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _CheckedHTTPSConnection


class _CheckedAdapter(HTTPAdapter):
    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _CheckedHTTPPool, "https": _CheckedHTTPSPool}


def make_session(allow_private: bool) -> requests.Session:
    session = requests.Session()
    if not allow_private:
        # Direct connections only: through an environment proxy the check would see the
        # proxy's address, not the receiver's.
        session.trust_env = False
        adapter = _CheckedAdapter()
        session.mount("http://", adapter)
        session.mount("https://", adapter)
    return session


class WebhookSender:
    """POSTs alert events from a small thread pool; each delivery retried with backoff and jitter."""

    def __init__(self, pool: ConnectionPool, *, base_delay: float, max_delay: float, attempts: int = 6,
                 allow_private: bool = False, timeout: float = 5.0, workers: int = 4) -> None:
        self.pool = pool
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.attempts = attempts
        self.timeout = timeout
        self._session = make_session(allow_private)
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="alert-webhook")
        self.stats = {"sent": 0, "failed": 0, "retries": 0}

    def submit(self, url: str, payload: dict[str, Any], alert_id: int) -> None:
        try:
            self._executor.submit(self._deliver, url, payload, alert_id)
        except RuntimeError:  # shut down
            pass

    def _deliver(self, url: str, payload: dict[str, Any], alert_id: int) -> None:
        body = orjson.dumps(payload)
        retrying = Retrying(
            stop=stop_after_attempt(self.attempts),
            wait=wait_exponential_jitter(initial=self.base_delay, max=self.max_delay, jitter=self.base_delay),
            retry=retry_if_exception_type((requests.RequestException, WebhookFailed)),
            reraise=True,
            before_sleep=lambda _state: self._count("retries"),
        )
        try:
            retrying(self._post, url, body)
        except Exception as exc:  # noqa: BLE001 - give up on this delivery, keep the rest going
            self._count("failed")
            log.warning("webhook for alert %s to %s failed: %s", alert_id, urlparse(url).netloc, exc)
            return
        self._count("sent")
        try:
            with self.pool.connection(timeout=5.0) as conn:
                conn.execute("UPDATE alerts SET notified_at = now() WHERE id = %s", (alert_id,))
        except Exception as exc:  # noqa: BLE001 - delivered; only the bookkeeping failed
            log.debug("could not record webhook delivery of alert %s: %s", alert_id, exc)

    def _post(self, url: str, body: bytes) -> None:
        resp = self._session.post(url, data=body, timeout=self.timeout,
                                  headers={"Content-Type": "application/json", "User-Agent": "telemetry-alerts/1"})
        if resp.status_code >= 500 or resp.status_code in (408, 429):
            raise WebhookFailed(f"HTTP {resp.status_code}")
        if resp.status_code >= 400:
            raise ValueError(f"HTTP {resp.status_code} (not retried)")

    def _count(self, name: str) -> None:
        self.stats[name] += 1

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._session.close()

"""Stream tokens: needed, signed, short-lived, issued only for a read key; no key in URLs."""

from __future__ import annotations

import pytest
import requests

from backend.live.tokens import StreamTokens, TokenError
from tests.live.sse import stream_token


def test_token_round_trip_forgery_and_expiry() -> None:
    tokens = StreamTokens("s" * 32, ttl_s=60)
    tok = tokens.issue("k_abc", now=1000.0)
    assert tokens.verify(tok, now=1001.0).key_id == "k_abc"
    with pytest.raises(TokenError, match="expired"):
        tokens.verify(tok, now=1061.0)
    forged = tok.replace("k_abc", "k_abd")
    with pytest.raises(TokenError, match="signature"):
        tokens.verify(forged, now=1001.0)
    with pytest.raises(TokenError, match="signature"):
        StreamTokens("t" * 32, ttl_s=60).verify(tok, now=1001.0)
    with pytest.raises(TokenError, match="malformed"):
        tokens.verify("nonsense", now=1001.0)


def test_stream_needs_a_valid_token_and_the_api_key_is_no_token(server) -> None:
    token, url = stream_token(server)
    assert requests.get(url, timeout=10).status_code == 401
    assert requests.get(url, params={"token": server.api_key}, timeout=10).status_code == 401
    assert requests.get(url, params={"token": token[:-2] + "xx"}, timeout=10).status_code == 401
    with requests.get(url, params={"token": token}, stream=True, timeout=10) as r:
        assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/event-stream")


def test_token_needs_a_read_key(server) -> None:
    r = requests.post(server.url + "/api/stream/token", timeout=10)
    assert r.status_code == 401
    r = requests.post(server.url + "/api/stream/token", headers={"X-API-Key": "nope" * 10}, timeout=10)
    assert r.status_code == 401
    # An ingest-only key may write but not watch.
    made = server.post("/api/keys", json={"name": "gw", "scopes": ["ingest"]})
    assert made.status_code in (200, 201), made.text
    r = requests.post(server.url + "/api/stream/token", headers={"X-API-Key": made.json()["key"]}, timeout=10)
    assert r.status_code == 403, r.text
    made = server.post("/api/keys", json={"name": "screen", "scopes": ["read"]})
    body = requests.post(server.url + "/api/stream/token", headers={"X-API-Key": made.json()["key"]},
                         timeout=10).json()
    assert body["expires_in"] == 300 and body["stream_url"].endswith("/api/stream")
    assert made.json()["key"] not in body["token"]


def test_the_service_page_origin_may_open_the_stream(server) -> None:
    token, url = stream_token(server)
    origin = f"http://127.0.0.1:{server.port}"
    with requests.get(url, params={"token": token}, headers={"Origin": origin}, stream=True, timeout=10) as r:
        assert r.headers.get("Access-Control-Allow-Origin") == origin
    with requests.get(url, params={"token": token}, headers={"Origin": "http://evil.example"}, stream=True,
                      timeout=10) as r:
        assert "Access-Control-Allow-Origin" not in r.headers

"""The dashboard's routes through Flask's test client (no browser needed)."""

from __future__ import annotations

import re

from backend.dashboard.views import FILES, STATIC, plotly_bundle


def test_page_is_public_and_locked_to_this_origin(client):
    client.environ_base.pop("HTTP_AUTHORIZATION", None)  # no key: the page itself holds no data
    r = client.get("/")
    assert r.status_code == 200 and r.mimetype == "text/html"
    csp = r.headers["Content-Security-Policy"]
    assert "default-src 'self'" in csp and "script-src 'self'" in csp and "unsafe-eval" not in csp
    assert r.headers["Cache-Control"] == "no-store"
    html = r.get_data(as_text=True)
    assert not re.search(r"(src|href)=\"(https?:)?//", html), "the page references another host"
    assert client.get("/?key=x").status_code == 400  # no query parameters (a key never goes in a URL)


def test_csp_names_the_stream_origin(make_app):
    app = make_app(stream_port=5999)
    r = app.test_client().get("/", base_url="http://example.test:5000")
    assert "connect-src 'self' http://example.test:5999;" in r.headers["Content-Security-Policy"]
    app = make_app(stream_public_url="/api/stream")  # behind nginx: same origin
    r = app.test_client().get("/")
    assert "connect-src 'self';" in r.headers["Content-Security-Policy"]


def test_static_files_are_exactly_the_listed_ones(client):
    assert sorted(FILES) == sorted(p.name for p in STATIC.iterdir())
    for name in FILES:
        r = client.get(f"/dashboard/static/{name}")
        assert r.status_code == 200, name
        assert r.mimetype == ("text/css" if name.endswith(".css") else "text/javascript"), (name, r.mimetype)
        assert r.headers["X-Content-Type-Options"] == "nosniff"
        assert b"http://" not in r.data and b"https://" not in r.data, f"{name} names another host"
    assert client.get("/dashboard/static/../views.py").status_code == 404
    assert client.get("/dashboard/static/nothing.js").status_code == 404


def test_plotly_comes_from_the_installed_package(client):
    path = plotly_bundle()
    assert path is not None and "site-packages" in str(path) and path.parts[-2:] == ("package_data", "plotly.min.js")
    r = client.get("/dashboard/vendor/plotly.min.js")
    assert r.status_code == 200 and r.mimetype == "text/javascript"
    assert r.data == path.read_bytes()
    assert r.data.startswith(b"/**") and b"plotly.js" in r.data[:2000]

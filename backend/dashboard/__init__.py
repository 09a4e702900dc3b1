"""The built-in dashboard at `/`: one HTML page, its own JS/CSS, and plotly.js from the installed
`plotly` package (never copied into the repository, never from a CDN: the page works offline).

The page itself carries no data and no secret, so it and its files are public; everything it
shows comes from the API with the key the operator types in (kept in sessionStorage, sent as
the `X-API-Key` header, never in a URL). docs/dashboard.md describes the page.
"""

from __future__ import annotations

from backend.dashboard.views import bp

__all__ = ["bp"]

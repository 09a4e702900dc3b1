"""Telemetry ingestion service.

Nothing happens at import time, and importing `backend` loads neither Flask nor the
database driver (the Modbus edge program, `python -m backend.modbus`, starts through this
package). gunicorn calls `backend:create_app()` (backend/app.py) once in each worker.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flask import Flask

    from backend.config import Config

__all__ = ["create_app"]


def create_app(config: Config | None = None, **overrides: Any) -> Flask:
    from backend.app import create_app as build

    return build(config, **overrides)


"""Which database this worker writes to: its URL, its kind, and a name safe to show."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from psycopg.conninfo import conninfo_to_dict

from backend.config import Config
from backend.store.embedded import EmbeddedServer

Kind = Literal["embedded", "postgresql", "supabase"]
# Supabase's direct hosts (db.<ref>.supabase.co) and its pooler (*.pooler.supabase.com).
SUPABASE_SUFFIXES = (".supabase.co", ".supabase.com")


@dataclass(frozen=True)
class Database:
    url: str = field(repr=False)  # carries the password
    kind: Kind
    # host:port/dbname, without user or password (operators' details only)
    display: str
    # Keeps an embedded server referenced for as long as the app lives.
    embedded: EmbeddedServer | None = field(default=None, repr=False, compare=False)

    @classmethod
    def from_url(cls, url: str, embedded: EmbeddedServer | None = None) -> Database:
        if embedded is not None:
            return cls(url, "embedded", "embedded", embedded)
        info = conninfo_to_dict(url)
        host = str(info.get("host") or "localhost")
        kind: Kind = "supabase" if host.lower().rstrip(".").endswith(SUPABASE_SUFFIXES) else "postgresql"
        return cls(url, kind, f"{host}:{info.get('port') or 5432}/{info.get('dbname') or ''}")

    @classmethod
    def resolve(cls, cfg: Config) -> Database:
        """DATABASE_URL, else the embedded server in DATA_DIR (started or attached to)."""
        if cfg.database_url:
            socket_dir = conninfo_to_dict(cfg.database_url).get("host") or ""
            if socket_dir and Path(socket_dir).resolve() == (Path(cfg.data_dir) / "pg").resolve():
                # `serve` started the embedded server and handed its URL to the workers.
                return cls(cfg.database_url, "embedded", "embedded")
            return cls.from_url(cfg.database_url)
        from backend.store.embedded import start_embedded

        # cleanup=None: several workers share the server; the serve command stops it.
        url, handle = start_embedded(cfg.data_dir, cleanup=None)
        return cls.from_url(url, handle)

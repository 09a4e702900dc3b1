"""Which database this worker writes to: its URL, its kind, and a name safe to show."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from psycopg.conninfo import conninfo_to_dict

from backend.config import Config
from backend.store.embedded import EmbeddedServer

Kind = Literal["embedded", "postgresql", "supabase"]
# How the connection reaches PostgreSQL, as far as the URL tells (`python -m backend supabase
# check` finds it out by behaviour).
Via = Literal["embedded", "direct", "transaction pooler", "session pooler", "pooler"]
# Supabase's direct hosts (db.<ref>.supabase.co) and its pooler (*.pooler.supabase.com).
SUPABASE_SUFFIXES = (".supabase.co", ".supabase.com")
SUPABASE_POOLER_SUFFIX = ".pooler.supabase.com"
# Supavisor's transaction port; 6432 is PgBouncer's customary one (mode not known from it).
TRANSACTION_POOLER_PORT = 6543
PGBOUNCER_PORT = 6432


def via_of(host: str, port: int) -> Via:
    if host.endswith(SUPABASE_POOLER_SUFFIX):
        return "transaction pooler" if port == TRANSACTION_POOLER_PORT else "session pooler"
    if port == TRANSACTION_POOLER_PORT:
        return "transaction pooler"
    return "pooler" if port == PGBOUNCER_PORT else "direct"


@dataclass(frozen=True)
class Database:
    url: str = field(repr=False)  # carries the password
    kind: Kind
    # host:port/dbname, without user or password (operators' details only)
    display: str
    via: Via = "direct"
    # Keeps an embedded server referenced for as long as the app lives.
    embedded: EmbeddedServer | None = field(default=None, repr=False, compare=False)

    @classmethod
    def from_url(cls, url: str, embedded: EmbeddedServer | None = None) -> Database:
        if embedded is not None:
            return cls(url, "embedded", "embedded", "embedded", embedded)
        info = conninfo_to_dict(url)
        host = str(info.get("host") or "localhost")
        name = host.lower().rstrip(".")
        port = int(str(info.get("port") or 5432).split(",")[0])
        kind: Kind = "supabase" if name.endswith(SUPABASE_SUFFIXES) else "postgresql"
        return cls(url, kind, f"{host}:{port}/{info.get('dbname') or ''}", via_of(name, port))

    @classmethod
    def resolve(cls, cfg: Config) -> Database:
        """DATABASE_URL, else the embedded server in DATA_DIR (started or attached to)."""
        if cfg.database_url:
            socket_dir = conninfo_to_dict(cfg.database_url).get("host") or ""
            if socket_dir and Path(socket_dir).resolve() == (Path(cfg.data_dir) / "pg").resolve():
                # `serve` started the embedded server and handed its URL to the workers.
                return cls(cfg.database_url, "embedded", "embedded", "embedded")
            return cls.from_url(cfg.database_url)
        from backend.store.embedded import start_embedded

        # cleanup=None: several workers share the server; the serve command stops it.
        url, handle = start_embedded(cfg.data_dir, cleanup=None)
        return cls.from_url(url, handle)

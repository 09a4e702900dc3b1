"""The read-only role for dashboard tools (migration 0026, docs/grafana.md): its password.

The password is sent as a SCRAM-SHA-256 verifier computed here, the form PostgreSQL stores,
so the plain text never reaches the server (nor its statement log).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

import psycopg
from psycopg import sql

ROLE = "telemetry_dashboard"
ITERATIONS = 4096  # PostgreSQL's own default (scram_iterations)


def scram_verifier(password: str, salt: bytes | None = None, iterations: int = ITERATIONS) -> str:
    """`SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>` (RFC 5802/7677, as libpq makes it)."""
    salt = salt or secrets.token_bytes(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", "sha256").digest()

    def b64(b: bytes) -> str:
        return base64.b64encode(b).decode()

    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


def set_password(conn: psycopg.Connection, password: str) -> None:
    """Set the dashboard role's password; raises LookupError when the role does not exist."""
    if len(password) < 12:
        raise ValueError("the password must have at least 12 characters")
    if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (ROLE,)).fetchone():
        raise LookupError(f"role {ROLE} does not exist: apply the migrations (or see docs/grafana.md)")
    conn.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(sql.Identifier(ROLE),
                                                             sql.Literal(scram_verifier(password))))

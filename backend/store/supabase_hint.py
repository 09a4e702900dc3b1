"""What to tell an operator who set Supabase's REST settings but no PostgreSQL connection string."""

from __future__ import annotations

import re
from urllib.parse import urlparse

# https://<project-ref>.supabase.co, the seed's SUPABASE_URL
_REF = re.compile(r"^([a-z0-9]{10,40})\.supabase\.(co|com)$")


def project_ref(supabase_url: str) -> str | None:
    """The project reference in a SUPABASE_URL, when it has one."""
    host = (urlparse(supabase_url if "//" in supabase_url else "//" + supabase_url).hostname or "").lower()
    match = _REF.match(host)
    return match.group(1) if match else None


def missing_database_url(supabase_url: str) -> str:
    ref = project_ref(supabase_url) or "<project-ref>"
    return (
        "SUPABASE_URL is set but DATABASE_URL is not: without DATABASE_URL this service would write to an"
        " embedded database on this machine, not to Supabase, so it does not start. It writes through"
        " PostgreSQL's protocol, not Supabase's REST API. Set DATABASE_URL (in .env or the environment) to"
        " your project's connection string: Supabase dashboard -> your project -> Connect (top bar) ->"
        " Connection string. Either the Transaction pooler (Supavisor, port 6543, recommended for several"
        f" workers or instances): postgresql://postgres.{ref}:<database-password>@aws-0-<region>.pooler"
        ".supabase.com:6543/postgres ; or the Direct connection (port 5432, IPv6 unless the IPv4 add-on):"
        f" postgresql://postgres:<database-password>@db.{ref}.supabase.co:5432/postgres . The password is"
        " the database password (Project Settings -> Database -> Reset database password), not"
        " SUPABASE_SERVICE_ROLE_KEY, which this service does not read. Then check it with"
        " `python -m backend supabase check`. To use the embedded database on purpose, unset SUPABASE_URL."
    )

"""`python -m backend keys create|list|revoke`: the operator's side of backend/fleet/auth/keys.py.

The commands get the way to find the database from backend/cli.py as an argument rather
than importing it, so the CLI and the key code do not import each other.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from functools import partial
from typing import Any

import psycopg

from backend.config import Config
from backend.fleet.auth.keys import KeyRequestError, create_key, list_keys, revoke_key

# backend.cli.resolve_database_url: (url, handle keeping an embedded server alive)
ResolveUrl = Callable[[Config], tuple[str, Any]]


def add_key_commands(sub: argparse._SubParsersAction, resolve_url: ResolveUrl) -> None:
    """Register `keys` on the CLI's subparsers (see backend/cli.py build_parser)."""
    keys = sub.add_parser("keys", help="create, list and revoke API keys")
    ksub = keys.add_subparsers(dest="keys_command", required=True)
    create = ksub.add_parser("create", help="create a key and print it once")
    create.add_argument("--name", required=True)
    create.add_argument("--scopes", default="ingest", help="comma-separated: ingest,read,admin")
    create.add_argument("--devices", default="", help="comma-separated device ids the key may write")
    create.add_argument("--expires-days", type=float, default=None)
    create.set_defaults(func=partial(_cmd_create, resolve_url))
    lst = ksub.add_parser("list", help="list keys (never shows a key, only its prefix)")
    lst.add_argument("--active", action="store_true", help="hide revoked keys")
    lst.set_defaults(func=partial(_cmd_list, resolve_url))
    revoke = ksub.add_parser("revoke", help="revoke a key (every worker refuses it within seconds)")
    revoke.add_argument("id")
    revoke.set_defaults(func=partial(_cmd_revoke, resolve_url))


def _connect(resolve_url: ResolveUrl) -> tuple[psycopg.Connection, Any]:
    from backend.store.migrations import migrate

    url, handle = resolve_url(Config.from_env())
    migrate(url)
    return psycopg.connect(url, autocommit=True, prepare_threshold=None), handle


def _cmd_create(resolve_url: ResolveUrl, args: argparse.Namespace) -> int:
    conn, _handle = _connect(resolve_url)
    with conn:
        try:
            info, raw = create_key(conn, args.name, args.scopes, args.devices, args.expires_days)
        except KeyRequestError as exc:
            print(f"error: {exc}")
            return 2
    print(f"id:      {info.id}")
    print(f"name:    {info.name}")
    print(f"scopes:  {','.join(info.scopes)}")
    print(f"devices: {','.join(info.devices) if info.devices else '(any)'}")
    print(f"expires: {info.expires_at.isoformat() if info.expires_at else 'never'}")
    print(f"key:     {raw}")
    print("Store the key now: it is shown only this once (the database keeps only its hash).")
    return 0


def _cmd_list(resolve_url: ResolveUrl, args: argparse.Namespace) -> int:
    conn, _handle = _connect(resolve_url)
    with conn:
        keys = list_keys(conn, include_revoked=not args.active)
    print(f"{'id':16} {'name':20} {'prefix':12} {'scopes':18} {'status':8} {'devices':24} last used")
    for k in keys:
        d = k.as_dict()
        print(f"{k.id:16} {k.name[:20]:20} {k.prefix:12} {','.join(k.scopes):18} {d['status']:8}"
              f" {(','.join(k.devices) if k.devices else '(any)')[:24]:24} {d['last_used_at'] or '-'}")
    return 0


def _cmd_revoke(resolve_url: ResolveUrl, args: argparse.Namespace) -> int:
    conn, _handle = _connect(resolve_url)
    with conn:
        info = revoke_key(conn, args.id)
    if info is None:
        print(f"no key with id {args.id!r}")
        return 1
    print(f"revoked {info.id} ({info.name}) at {info.revoked_at.isoformat() if info.revoked_at else '?'}")
    return 0

"""The operator's command line: first-run admin key."""

from __future__ import annotations

import stat

from backend.cli import bootstrap_admin_key, build_parser


def test_bootstrap_admin_key_is_random_private_and_stable(tmp_path):
    key = bootstrap_admin_key(tmp_path)
    path = tmp_path / "admin_api_key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(key) > 40 and key.startswith("tk_admin_")
    assert bootstrap_admin_key(tmp_path) == key  # kept across restarts
    assert bootstrap_admin_key(tmp_path / "other") != key


def test_cli_knows_its_commands():
    parser = build_parser()
    for argv in (["migrate"], ["partitions", "--months", "2"], ["serve"], ["keys", "list"]):
        assert parser.parse_args(argv).func

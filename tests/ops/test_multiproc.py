"""The instance directory (wiped at start, a fresh one per instance) and the settings' checks."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from backend.config import Config, ConfigError
from backend.ops import multiproc


def test_an_operators_directory_is_emptied_at_start(tmp_path):
    root = tmp_path / "metrics"
    (root / "status").mkdir(parents=True)
    (root / "counter_123.db").write_bytes(b"old run")
    (root / "status" / "123.json").write_text("{}")
    (root / "keep.txt").write_text("not ours")
    env = {multiproc.ENV: str(root)}
    assert multiproc.prepare(env) == root
    assert sorted(p.name for p in root.iterdir()) == ["keep.txt", "status"]
    assert list((root / "status").iterdir()) == []
    assert multiproc.CREATED_ENV not in env  # the operator's: never removed at exit


def test_without_one_each_instance_gets_its_own_and_dead_masters_ones_go(tmp_path):
    first, second = {}, {}
    a, b = multiproc.prepare(first), multiproc.prepare(second)
    dead = _a_dead_pid()
    left = a.parent / f"{dead}-leftover"
    left.mkdir()
    try:
        assert a != b and (a / "status").is_dir() and first[multiproc.ENV] == str(a)
        assert first[multiproc.CREATED_ENV] == "1"
        c = multiproc.prepare({})  # a new start sweeps what killed masters left
        assert not left.exists() and a.exists() and b.exists()  # this process is alive: its own stay
        shutil.rmtree(c)
    finally:
        for path in (a, b, left):
            shutil.rmtree(path, ignore_errors=True)


def _a_dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


@pytest.mark.parametrize("value,bad", [("127.0.0.1/33", "127.0.0.1/33"), ("10.0.0.0/8,nope", "nope"),
                                       ("::1/129", "::1/129")])
def test_metrics_allow_must_be_networks(value, bad):
    with pytest.raises(ConfigError, match="METRICS_ALLOW") as info:
        Config.from_env({"METRICS_ALLOW": value})
    assert repr(bad) in str(info.value)


def test_metrics_allow_and_log_format_are_read():
    cfg = Config.from_env({"METRICS_ALLOW": "127.0.0.1/32, 2001:db8::/32", "LOG_FORMAT": "text"})
    assert cfg.metrics_allow == ["127.0.0.1/32", "2001:db8::/32"] and cfg.log_format == "text"
    with pytest.raises(ConfigError, match="LOG_FORMAT"):
        Config.from_env({"LOG_FORMAT": "xml"})

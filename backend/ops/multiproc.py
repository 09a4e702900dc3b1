"""The instance's shared directory: prometheus-client's multiprocess files and the workers' status.

gunicorn's master calls `prepare()` once at start (gunicorn.conf.py `on_starting`), before
any worker exists, so every worker inherits PROMETHEUS_MULTIPROC_DIR: an operator's
directory, or a fresh one per instance under $TMPDIR/telemetry-metrics/ (two instances on
one machine never share it; those left by masters killed with SIGKILL go at the next
start). An operator's is emptied: values left by an earlier run would be added to this one's.
`worker_exited()` (gunicorn's `child_exit`) marks a worker's live gauges dead; its counters
stay, so totals never go backwards when a worker is recycled.

The status files (`status/<pid>.json`, backend/ops/board.py) live beside the metrics, and
outlive their worker for the same reason: its totals still count.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import MutableMapping
from pathlib import Path

ENV = "PROMETHEUS_MULTIPROC_DIR"
CREATED_ENV = "TELEMETRY_METRICS_DIR_CREATED"  # set when prepare() made the directory (removed at exit)
STATUS = "status"


def prepare(env: MutableMapping[str, str] | None = None) -> Path:
    """Create (or empty) the instance's directory and export it to the workers; returns it."""
    env = os.environ if env is None else env
    given = env.get(ENV, "").strip()
    if given:
        path = Path(given)
        path.mkdir(parents=True, exist_ok=True)
        for entry in path.iterdir():
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            elif entry.suffix in (".db", ".json", ".tmp"):
                entry.unlink(missing_ok=True)
    else:
        path = _fresh_directory()
        env[CREATED_ENV] = "1"
    (path / STATUS).mkdir(exist_ok=True)
    env[ENV] = str(path)
    return path


def _fresh_directory() -> Path:
    """A new directory under the temporary one, named by this master; those of dead masters go.

    A master killed with SIGKILL cannot remove its directory at exit: the next start does.
    """
    parent = Path(tempfile.gettempdir()) / "telemetry-metrics"
    try:
        parent.mkdir(mode=0o700, exist_ok=True)
        for old in parent.iterdir():
            owner = old.name.split("-", 1)[0]
            if owner.isdigit() and not alive(int(owner)):
                shutil.rmtree(old, ignore_errors=True)
        return Path(tempfile.mkdtemp(prefix=f"{os.getpid()}-", dir=parent))
    except OSError:  # another user's parent, a read-only /tmp: a plain temporary directory
        return Path(tempfile.mkdtemp(prefix="telemetry-metrics-"))


def alive(pid: int) -> bool:
    """Whether a process of this id exists (a directory or status file of a dead one is stale)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def directory() -> Path | None:
    """This instance's directory, or None outside gunicorn (one process: nothing to share)."""
    given = os.environ.get(ENV, "").strip()
    return Path(given) if given else None


def status_dir() -> Path | None:
    root = directory()
    if root is None:
        return None
    path = root / STATUS
    path.mkdir(exist_ok=True)
    return path


def worker_exited(pid: int) -> None:
    """A worker is gone: its live gauges no longer count (prometheus-client's rule)."""
    root = directory()
    if root is None:
        return
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid, str(root))


def remove_if_created() -> None:
    """At the master's exit: remove the directory when prepare() made it."""
    root = directory()
    if root is not None and os.environ.get(CREATED_ENV) == "1":
        shutil.rmtree(root, ignore_errors=True)

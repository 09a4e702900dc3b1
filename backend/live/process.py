"""The stream process as a child of gunicorn's master: started in when_ready, stopped in on_exit.

A watchdog thread in the master starts it again if it dies (with a growing pause), so a
crash of the stream never needs an operator; ingest does not depend on it at all.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent.parent


class StreamProcess:
    def __init__(self, env: dict[str, str] | None = None) -> None:
        self.env = dict(os.environ if env is None else env)
        self.proc: subprocess.Popen[bytes] | None = None
        self._stop = threading.Event()
        self._watchdog: threading.Thread | None = None
        self.starts = 0

    def start(self) -> None:
        self._spawn()
        self._watchdog = threading.Thread(target=self._watch, name="stream-watchdog", daemon=True)
        self._watchdog.start()

    def _spawn(self) -> None:
        self.starts += 1
        self.proc = subprocess.Popen([sys.executable, "-m", "backend.live"], cwd=ROOT, env=self.env)

    def _watch(self) -> None:
        pause = 1.0
        while not self._stop.is_set():
            proc = self.proc
            if proc is None:
                return
            code = proc.wait()
            if self._stop.is_set():
                return
            log.warning("stream process exited with %s; starting it again in %.0f s", code, pause)
            if self._stop.wait(pause):
                return
            pause = min(pause * 2, 30.0)
            self._spawn()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

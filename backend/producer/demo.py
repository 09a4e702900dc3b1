"""`make demo`: the service (`python -m backend serve`) and the producer, so that a newcomer
sees a live chart at http://127.0.0.1:5000 within a minute.

The key: ADMIN_API_KEY when set, else the one `serve` keeps in DATA_DIR/admin_api_key (made
on first run). The page asks for it once; this prints where it is, never the key itself.
Extra arguments go to the producer (`make demo DEMO_ARGS="--devices 10"`).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests

from backend.cli import ROOT, bootstrap_admin_key
from backend.config import Config
from backend.producer.__main__ import parse_args, run
from backend.producer.sender import Sender

log = logging.getLogger("backend.producer.demo")
STOP_TIMEOUT_S = 60.0
START_TIMEOUT_S = 180.0  # the first embedded PostgreSQL start downloads nothing but initdb takes a while


def wait_until_up(url: str, server: subprocess.Popen, timeout: float = START_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the service exited with {server.returncode}; see its log above")
        try:
            if requests.get(url + "/health", timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise SystemExit(f"the service did not answer on {url} within {timeout:g} s")


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Ctrl-C stops the demo even when started from a shell that ignores SIGINT in background jobs.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    cfg = Config.from_env()
    key = cfg.admin_api_key
    where = "ADMIN_API_KEY"
    if not key:
        key = bootstrap_admin_key(Path(cfg.data_dir))
        where = str((Path(cfg.data_dir) / "admin_api_key").resolve())
    host = "127.0.0.1" if cfg.host in ("0.0.0.0", "::", "") else cfg.host
    url = f"http://{host}:{cfg.port}"
    args = parse_args(["--url", url, *(argv if argv is not None else sys.argv[1:])])
    # Its own session: Ctrl-C reaches only this process, which then stops the service once,
    # gracefully (SIGTERM: gunicorn finishes requests and flushes), instead of every process
    # of the service getting the terminal's SIGINT at the same time.
    server = subprocess.Popen([sys.executable, "-m", "backend", "serve"], cwd=ROOT, start_new_session=True,
                              env={**os.environ, "ADMIN_API_KEY": key})
    try:
        wait_until_up(url, server)
        print(f"\n  Dashboard: {url}/  (sign in with the key in {where})\n"
              f"  Producer: {args.devices} device(s) x 5 signals every {args.interval:g} s. Ctrl-C stops both.\n",
              flush=True)
        sender = Sender(url, key, max_attempts=args.max_attempts)
        try:
            run(args, sender)
        except KeyboardInterrupt:
            pass
        finally:
            sender.close()
    finally:
        stop_service(server)
    return 0


def stop_service(server: subprocess.Popen, timeout: float = STOP_TIMEOUT_S) -> None:
    if server.poll() is None:
        log.info("stopping the service")
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("the service did not stop within %g s: killing its processes", timeout)
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(10)


if __name__ == "__main__":
    sys.exit(main())

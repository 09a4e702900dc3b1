"""The replayer: moves spooled batches into PostgreSQL, in bounded chunks, behind live traffic.

One thread per worker. While the circuit is closed (the database answers) it
  1. seals and replays this worker's own segments, oldest first;
  2. adopts directories of dead workers (their flock is free) and replays them, then
     removes them.
Each chunk (about BATCH_SIZE readings, whole records) is one transaction through the same
idempotent insert as live writes (ON CONFLICT (device_id, metric, ts) DO NOTHING), keeps
the original measurement times, received_at and request id, and is followed by a
checkpoint (the byte offset after the chunk). A crash between the commit and the
checkpoint replays that chunk again, which inserts nothing twice. Before every chunk the
replayer lets a pending live flush go first, so a backlog never starves live ingest.
A chunk that fails with a transient error opens the circuit; the replay resumes when the
probe finds the database again.

A completely full disk does not stop it (issue 11): the checkpoint is overwritten in place
in a file allocated with the segment (spool_checkpoint.py), a checkpoint that cannot be
written only costs a re-sent chunk after a crash, and a finished segment is deleted, which
frees space. Any other error of a pass is logged once with its traceback and retried with
capped exponential backoff, not every second.
"""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import psycopg

from backend.ingest.backoff import delay, equal_jitter
from backend.ingest.circuit import CircuitBreaker
from backend.ingest.deadline import DeadlineRunner
from backend.ingest.observers import WriteObservers
from backend.ingest.sinks import Sink, Submission, TransientSinkError, WriteResult
from backend.ingest.spool import Adoption, Spool, decode_batch, iter_spans, read_checkpoint_full, write_checkpoint_full

log = logging.getLogger(__name__)


class LiveWrites(Protocol):
    """What the replayer needs from the live write path (the batch buffer)."""

    def yield_to_live(self, max_wait: float = 2.0) -> None:
        """Return once a pending live flush went first (or none is pending)."""

    def report_sink_failure(self, message: str) -> None:
        """Count the failed write and open the circuit."""


class Replayer:
    def __init__(self, spool: Spool, sink: Sink, circuit: CircuitBreaker, live: LiveWrites,
                 observers: WriteObservers, *, runner: DeadlineRunner, chunk_rows: int = 500,
                 scan_interval: float = 1.0, write_timeout: float = 10.0) -> None:
        self.spool = spool
        self.sink = sink
        self.circuit = circuit
        self.live = live
        self.observers = observers
        self.runner = runner
        self.chunk_rows = max(1, chunk_rows)
        self.scan_interval = scan_interval
        self.write_timeout = write_timeout
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._busy = threading.Lock()
        # Backoff after a failed pass: from scan_interval, doubling, capped; planned delays are
        # kept (the last 50) so tests and operators can see the schedule.
        self.error_max_delay = max(self.scan_interval, 60.0 * self.scan_interval)
        self._error_wait = equal_jitter(self.scan_interval, self.error_max_delay)
        self.error_delays: list[float] = []
        self._checkpoint_failed: set[Path] = set()

    def start(self) -> Replayer:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="spool-replayer", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        failures = 0
        last_error = ""
        while not self._stop.is_set():
            try:
                worked = self.run_once()
            except Exception as exc:  # noqa: BLE001 - never let the replayer die; retry later
                error = f"{type(exc).__name__}: {exc}"
                delay = self._error_delay(failures)
                failures += 1
                if error != last_error:
                    log.exception("replayer: pass failed; retrying in %.1fs, then backing off", delay)
                elif failures & (failures - 1) == 0:  # 2, 4, 8, ... failures: a line, no traceback
                    log.warning("replayer: still failing after %d passes (%s); next try in %.1fs",
                                failures, error[:200], delay)
                last_error = error
                self.spool.note_problem(f"replayer error ({failures} passes): {error}")
                self._stop.wait(delay)
                continue
            if failures:
                log.warning("replayer: working again after %d failed passes", failures)
                failures, last_error = 0, ""
            if not worked:
                if self.circuit.is_open:
                    self.circuit.wait_closed(self.scan_interval)
                self._stop.wait(0.05 if self.circuit.is_open else self.scan_interval)

    def _error_delay(self, failures: int) -> float:
        wait_s = delay(self._error_wait, failures)
        self.error_delays = (self.error_delays + [wait_s])[-50:]
        return wait_s

    def run_once(self) -> bool:
        """One pass over own segments and orphaned directories; True when something was replayed."""
        with self._busy:
            if self.circuit.is_open:
                return False
            worked = False
            for path in self.spool.take_own_segments():
                if self._stop.is_set() or not self._replay_segment(path, own=True):
                    return worked
                worked = True
            for directory in self.spool.orphan_dirs():
                if self._stop.is_set() or self.circuit.is_open:
                    break
                adoption = self.spool.try_adopt(directory)
                if adoption is None:
                    continue
                worked = self._adopt(adoption) or worked
            return worked

    # ---- adoption ----------------------------------------------------------------------

    def _adopt(self, adoption: Adoption) -> bool:
        c = self.spool.counters
        segments = adoption.segments()
        log.warning("spool: adopting %s left by a dead worker (%d segments)", adoption.directory.name,
                    len(segments))
        c.adopted_dirs += 1
        missing = adoption.missing_segments()
        if missing:
            c.missing_segments += missing
            msg = f"{adoption.directory.name}: {missing} segment(s) missing (deleted or lost)"
            log.error("spool: %s; replaying the rest", msg)
            self.spool.note_problem(msg)
            self.spool.write_note(f"{adoption.directory.name}-missing.json",
                             {"worker_dir": adoption.directory.name, "missing_segments": missing,
                              "at": datetime.now(UTC).isoformat()})
        try:
            for _seq, path in segments:
                if self._stop.is_set() or not self._replay_segment(path, own=False):
                    adoption.release(remove=False)  # someone (maybe us) resumes from the checkpoint
                    return True
        except BaseException:
            adoption.release(remove=False)  # a lock kept by a failed pass would block every later one
            raise
        adoption.release(remove=True)
        return True

    # ---- one segment -------------------------------------------------------------------

    def _replay_segment(self, path: Path, own: bool) -> bool:
        """Replay `path` from its checkpoint; True when it is finished (deleted or moved aside)."""
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return True
        start, bad_records, bad_bytes = read_checkpoint_full(path)
        if start > len(data):
            start = 0
        c = self.spool.counters
        problems: list[dict[str, Any]] = []
        chunk: list[Submission] = []
        chunk_rows = chunk_records = 0
        chunk_end = start

        def flush_chunk() -> bool:
            nonlocal chunk, chunk_rows, chunk_records
            if chunk and not self._write_chunk(chunk, chunk_rows, chunk_records):
                return False
            self._checkpoint(path, chunk_end, bad_records, bad_bytes)
            if own:
                self.spool.note_progress(path, chunk_rows)
            chunk, chunk_rows, chunk_records = [], 0, 0
            return True

        for span in iter_spans(data, start):
            subs = None
            if span.problem is None:
                try:
                    subs = decode_batch(span.payload or b"")
                except Exception as exc:  # noqa: BLE001 - an intact frame we cannot read is corrupt too
                    span.problem = f"undecodable payload: {type(exc).__name__}: {exc}"[:200]
            if span.problem is not None or subs is None:
                bad_records += 1
                bad_bytes += span.end - span.offset
                c.corrupt_records += 1
                c.corrupt_bytes += span.end - span.offset
                problems.append({"offset": span.offset, "end": span.end, "problem": span.problem})
                msg = f"{path.parent.name}/{path.name}: corrupt span at {span.offset}-{span.end} ({span.problem})"
                log.error("spool: %s; skipped", msg)
                self.spool.note_problem(msg)
                chunk_end = span.end
                continue
            chunk.extend(subs)
            chunk_rows += sum(len(s.readings) for s in subs)
            chunk_records += 1
            chunk_end = span.end
            if chunk_rows >= self.chunk_rows and not flush_chunk():
                return False
            if self._stop.is_set():
                return False
        if not flush_chunk():
            return False
        if bad_records:
            target = self.spool.move_aside(path, {
                "segment": f"{path.parent.name}/{path.name}",
                "size": len(data),
                "corrupt_records": bad_records,
                "corrupt_bytes": bad_bytes,
                "spans": problems,
                "at": datetime.now(UTC).isoformat(),
                "note": "intact records of this segment were replayed; the corrupt spans could not be read",
            })
            log.error("spool: %s had %d corrupt span(s); intact records delivered, segment moved to %s",
                      path.name, bad_records, target)
        else:
            self.spool.segment_done(path)
        self._checkpoint_failed.discard(path)
        return True

    def _checkpoint(self, path: Path, offset: int, bad_records: int, bad_bytes: int) -> None:
        try:
            write_checkpoint_full(path, offset, bad_records, bad_bytes, sync=self.spool.fsync)
        except OSError as exc:
            # Only a segment without a pre-allocated checkpoint (an older version's) gets here,
            # on a full disk. The replay goes on from memory: a crash before the segment is
            # finished re-sends its chunks, which the idempotent insert makes no-ops.
            if path not in self._checkpoint_failed:
                self._checkpoint_failed.add(path)
                msg = f"{path.parent.name}/{path.name}: checkpoint not written ({exc}); replay continues"
                log.warning("spool: %s", msg)
                self.spool.note_problem(msg)
            return
        self._checkpoint_failed.discard(path)

    def _write_chunk(self, chunk: list[Submission], rows: int, records: int) -> bool:
        self.live.yield_to_live()
        c = self.spool.counters
        try:
            result = self.runner.run(self.sink.write, chunk, timeout=self.write_timeout)
        except TransientSinkError as exc:
            c.replay_failures += 1
            self.live.report_sink_failure(f"replay: {exc}")
            return False
        except Exception as exc:  # noqa: BLE001 - refused data: isolate it, keep the rest moving
            log.error("replay chunk refused (%s); writing its requests one by one", exc)
            result = None
            for sub in chunk:
                try:
                    r = self.runner.run(self.sink.write, [sub], timeout=self.write_timeout)
                except TransientSinkError as exc2:
                    c.replay_failures += 1
                    self.live.report_sink_failure(f"replay: {exc2}")
                    return False
                except (psycopg.errors.DataError, psycopg.errors.IntegrityError) as exc2:
                    self._dead_letter(sub, str(exc2))  # this request's data can never be stored
                    continue
                except Exception as exc2:  # noqa: BLE001 - schema, permissions, ...: retry later
                    c.replay_failures += 1
                    self.live.report_sink_failure(f"replay: {type(exc2).__name__}: {exc2}")
                    return False
                c.replay_inserted += r.inserted
                c.replay_duplicates += r.duplicates
                self._observe([sub], r)
        if result is not None:
            c.replay_inserted += result.inserted
            c.replay_duplicates += result.duplicates
            self._observe(chunk, result)
        c.replayed_records += records
        c.replayed_readings += rows
        c.replay_chunks += 1
        c.last_replay_at = datetime.now(UTC)
        return True

    def _observe(self, chunk: list[Submission], result: WriteResult) -> None:
        # Replayed readings reach the alert engine like live ones; it ignores old backlog itself.
        self.observers.notify(chunk, result)

    def _dead_letter(self, sub: Submission, error: str) -> None:
        self.spool.dead_letter(sub, error)
        log.error("spool: request %s refused by the database (%s); kept in corrupt/dead-letter.jsonl",
                  sub.request_id, error[:200])

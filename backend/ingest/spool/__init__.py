"""The local write-ahead spool (see spool.py); the names other modules and the tests use."""

from backend.ingest.spool.adoption import Adoption
from backend.ingest.spool.checkpoint import read_checkpoint_full, write_checkpoint_full
from backend.ingest.spool.framing import HEADER, decode_batch, encode_batch, frame, iter_spans
from backend.ingest.spool.segments import CORRUPT_DIR, SEGMENT_RE, list_segments
from backend.ingest.spool.spool import Spool, SpoolCounters, SpoolFull

__all__ = [
    "CORRUPT_DIR", "HEADER", "SEGMENT_RE", "Adoption", "Spool", "SpoolCounters", "SpoolFull", "decode_batch",
    "encode_batch", "frame", "iter_spans", "list_segments", "read_checkpoint_full", "write_checkpoint_full",
]

"""Storage sinks. A new sink is one module here implementing `Sink`."""

from backend.ingest.sinks.base import Sink, Submission, TransientSinkError, WriteResult

__all__ = ["Sink", "Submission", "TransientSinkError", "WriteResult"]

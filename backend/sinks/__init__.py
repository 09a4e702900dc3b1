"""Storage sinks. A new sink is one module here implementing `Sink`."""

from .base import Sink, Submission, TransientSinkError, WriteResult

__all__ = ["Sink", "Submission", "TransientSinkError", "WriteResult"]

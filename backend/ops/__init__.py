"""Operations: Prometheus metrics, the instance-wide status, JSON logs (docs/operations.md).

Kept empty on purpose: gunicorn's master imports backend.ops.logs (its logger class) before
PROMETHEUS_MULTIPROC_DIR is set, and prometheus-client picks its value class when it is
first imported, so nothing the master loads may import it. The wiring is backend/ops/wiring.py.
"""

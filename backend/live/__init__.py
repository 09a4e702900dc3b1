"""The live stream of committed readings: SSE and Socket.IO, in their own asyncio process.

`python -m backend.live` serves `GET /api/stream` (and `/socket.io/`) on STREAM_PORT; gunicorn's
master starts and stops it (backend/live/process.py). Design and limits: docs/stream.md.
Nothing here runs at import time.
"""

"""Socket.IO for seed 002's React dashboard: `connection_response` on connect, then one
`telemetry_update` `{timestamp, signals}` per committed message (python-socketio).

A message is the readings of one device at one time (what seed 002's producer POSTs to
/api/telemetry); `device_id` is added to the seed's shape. A client may pass `device_id`
in the connection query to receive only those; it joins a room per device,
or the room "all". Without STREAM_SOCKETIO_PUBLIC, the connection needs a stream token, in
the Socket.IO `auth` object (`{token}`) or the `token` query parameter.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from urllib.parse import parse_qs

import socketio

from backend.config import Config
from backend.live.frames import StreamEvent
from backend.live.hub import Hub
from backend.live.tokens import StreamTokens, TokenError

log = logging.getLogger(__name__)

ALL = "all"


def messages(events: list[StreamEvent]) -> list[tuple[str, dict[str, object]]]:
    """(device, telemetry_update payload) per (device, ts), in commit order."""
    grouped: dict[tuple[str, str], dict[str, object]] = {}
    for e in events:
        signals = grouped.setdefault((e.device_id, e.ts), {})
        signals[e.metric] = e.value if e.value is not None else e.text
    return [(d, {"timestamp": ts, "signals": s, "device_id": d}) for (d, ts), s in grouped.items()]


class SocketIOBridge:
    def __init__(self, cfg: Config, hub: Hub, tokens: StreamTokens) -> None:
        self.cfg = cfg
        self.tokens = tokens
        self.sio = socketio.AsyncServer(async_mode="aiohttp", cors_allowed_origins="*" if cfg.stream_socketio_public
                                        else self._origins(cfg), logger=False, engineio_logger=False)
        self.sio.on("connect", self.connect)
        self._pending: list[StreamEvent] = []
        self._flush_scheduled = False
        hub.add_listener(self.on_events, active=self.has_clients)

    @staticmethod
    def _origins(cfg: Config) -> list[str]:
        # The service's page (PORT) and this process itself (STREAM_PORT); the token is the gate.
        own = [f"{s}://{h}:{p}" for s in ("http", "https") for h in ("127.0.0.1", "localhost", cfg.host)
               for p in (cfg.port, cfg.stream_port)]
        return [*own, *cfg.cors_origins]

    async def connect(self, sid: str, environ: dict[str, object], auth: object = None) -> bool:
        query = parse_qs(str(environ.get("QUERY_STRING", "")))
        token = (auth or {}).get("token") if isinstance(auth, dict) else None
        token = token or (query.get("token") or [None])[0]
        if not self.cfg.stream_socketio_public:
            try:
                self.tokens.verify(str(token or ""))
            except TokenError as exc:
                raise socketio.exceptions.ConnectionRefusedError(f"token: {exc}") from None
        devices = [d for v in query.get("device_id", []) for d in v.split(",") if d]
        for room in devices or [ALL]:
            await self.sio.enter_room(sid, room)
        await self.sio.emit("connection_response", {"status": "connected", "sid": sid}, to=sid)
        return True

    def has_clients(self) -> bool:
        """Any Socket.IO client connected: without one the hub makes no events for the bridge."""
        return bool(self.sio.manager.rooms.get("/"))

    def on_events(self, events: list[StreamEvent]) -> None:
        # Called inside Hub.dispatch: emit in a task, dispatch must not wait for sockets.
        if not self.has_clients():
            return
        self._pending.extend(events)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().create_task(self._emit())

    async def _emit(self) -> None:
        events, self._pending, self._flush_scheduled = self._pending, [], False
        by_device: dict[str, list[dict[str, object]]] = defaultdict(list)
        for device, payload in messages(events):
            by_device[device].append(payload)
            await self.sio.emit("telemetry_update", payload, room=ALL)
        for device, payloads in by_device.items():
            for payload in payloads:
                await self.sio.emit("telemetry_update", payload, room=device)

"""The device guard: a key bound to devices may only write those devices.

A request with any reading for another device is refused whole (403, nothing stored): a
gateway that sends for a device it does not own is misconfigured, and storing half of its
batch would hide that. Plain functions of the identity and the device ids; the HTTP side
passes the request's identity in, the ingest core calls the result with the device ids.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from functools import partial

from backend.fleet.auth.keystore import Identity

SHOWN = 5  # device ids named in the answer; the rest are counted

# What ingest calls: the request's device ids in, None (allowed) or the reason it is refused.
DeviceGuard = Callable[[Iterable[str]], str | None]


def refused_devices(identity: Identity, device_ids: Iterable[str]) -> str | None:
    """None when `identity` may write every one of `device_ids`, else the message for the 403."""
    allowed = identity.devices
    if allowed is None:
        return None
    bad = sorted({d for d in device_ids if d not in allowed})
    if not bad:
        return None
    shown = ", ".join(bad[:SHOWN]) + (f" and {len(bad) - SHOWN} more" if len(bad) > SHOWN else "")
    return f"this API key may not write device {shown}; nothing was stored"


def guard_for(identity: Identity | None) -> DeviceGuard | None:
    """The guard for a request made with `identity`; None when it may write any device."""
    if identity is None or identity.devices is None:
        return None
    return partial(refused_devices, identity)

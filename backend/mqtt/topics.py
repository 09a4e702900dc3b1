"""Which topics the subscriber takes, and what a message's topic says (pure).

| kind        | filter (before `$share/<group>/`)          | device                              | format              |
|-------------|--------------------------------------------|-------------------------------------|---------------------|
| thingsboard | `v1/devices/me/telemetry`                  | MQTT_TB_DEVICE (one-device setups)  | thingsboard         |
| thingsboard | `<tb prefix>/+/v1/devices/me/telemetry`    | the device-bound key named by `+`   | thingsboard         |
| gateway     | `v1/gateway/telemetry`                     | in the body, per device name        | thingsboard-gateway |
| generic     | `<generic prefix>/+`                       | `+`                                 | json or raw (sniffed, or MQTT 5 content type) |
| teltonika   | each MQTT_TELTONIKA_TOPICS filter          | the filter's first `+` (else body)  | teltonika           |

A broker does not tell subscribers who published (the MQTT username ThingsBoard uses as
the device's access token stays with the broker), so a ThingsBoard device is told apart by
its topic: Mosquitto's per-listener `mount_point tb/<key id>/` (or a broker's topic rewrite
to `tb/<key id or token>/...`) puts the device's key in the topic. docs/doors.md shows it.
"""

from __future__ import annotations

from dataclasses import dataclass

from backend.ingest.parsing.base import DEVICE_RE
from backend.mqtt.settings import MqttSettings

TB_TELEMETRY = "v1/devices/me/telemetry"
TB_ATTRIBUTES = "v1/devices/me/attributes"
TB_GATEWAY = "v1/gateway/telemetry"


@dataclass(frozen=True)
class Route:
    kind: str  # thingsboard | thingsboard_attributes | gateway | generic | teltonika
    device: str | None = None  # a device id, or None when the body names it
    key_ref: str | None = None  # a ThingsBoard device's key id or token, resolved to its device


class Unroutable(ValueError):
    """A topic the subscriber cannot file readings under; the message says why."""


def filters(s: MqttSettings) -> list[str]:
    """The topic filters to subscribe to, without the shared-subscription prefix."""
    out: list[str] = []
    if "thingsboard" in s.kinds:
        out += [TB_TELEMETRY, f"{s.tb_mount_prefix}/+/{TB_TELEMETRY}", TB_ATTRIBUTES,
                f"{s.tb_mount_prefix}/+/{TB_ATTRIBUTES}"]
    if "gateway" in s.kinds:
        out.append(TB_GATEWAY)
    if "generic" in s.kinds:
        out.append(f"{s.generic_prefix}/+")
    if "teltonika" in s.kinds:
        out += list(s.teltonika_topics)
    return out


def subscriptions(s: MqttSettings) -> list[str]:
    """Shared (`$share/<group>/<filter>`) when a group is set: the broker spreads the load."""
    return [f"$share/{s.group}/{f}" if s.group else f for f in filters(s)]


def _matches(filter_: str, topic: str) -> list[str] | None:
    """The levels matched by '+' (and '#' as one joined level), or None when it does not match."""
    f_levels, t_levels = filter_.split("/"), topic.split("/")
    wild: list[str] = []
    for i, lv in enumerate(f_levels):
        if lv == "#":
            wild.append("/".join(t_levels[i:]))
            return wild
        if i >= len(t_levels):
            return None
        if lv == "+":
            wild.append(t_levels[i])
        elif lv != t_levels[i]:
            return None
    return wild if len(f_levels) == len(t_levels) else None


def _device(level: str, what: str) -> str:
    if not DEVICE_RE.fullmatch(level) or len(level) > 128:
        raise Unroutable(f"{what} {level[:40]!r} is not a device id ([A-Za-z0-9_.:-], at most 128)")
    return level


def route(s: MqttSettings, topic: str) -> Route:
    """What a message on `topic` is; raises Unroutable naming the reason."""
    if "thingsboard" in s.kinds:
        for suffix, kind in ((TB_TELEMETRY, "thingsboard"), (TB_ATTRIBUTES, "thingsboard_attributes")):
            if topic == suffix:
                if not s.tb_device:
                    raise Unroutable(f"{topic}: the broker does not say which device published; mount the"
                                     f" device's listener at {s.tb_mount_prefix}/<key id>/ or set MQTT_TB_DEVICE")
                return Route(kind, device=s.tb_device)
            wild = _matches(f"{s.tb_mount_prefix}/+/{suffix}", topic)
            if wild is not None:
                return Route(kind, key_ref=wild[0])
    if "gateway" in s.kinds and topic == TB_GATEWAY:
        return Route("gateway")
    if "generic" in s.kinds:
        wild = _matches(f"{s.generic_prefix}/+", topic)
        if wild is not None:
            return Route("generic", device=_device(wild[0], "topic level"))
    if "teltonika" in s.kinds:
        for f in s.teltonika_topics:
            wild = _matches(f, topic)
            if wild is not None:
                return Route("teltonika", device=_device(wild[0], "topic level") if wild else None)
    raise Unroutable(f"no subscription kind takes topic {topic[:120]!r}")

"""Run in a subprocess by test_tb_client.py: ThingsBoard's own tb-mqtt-client as the publisher.

argv: <dir tb-mqtt-client was installed into> <port> <mode: gateway|device> [<token>]. The
package brings its own paho-mqtt, so it runs apart from the test process's paho, with its
install directory first on sys.path only here.
"""

import sys
import time

sys.path.insert(0, sys.argv[1])

from tb_device_mqtt import TBDeviceMqttClient  # noqa: E402
from tb_gateway_mqtt import TBGatewayMqttClient  # noqa: E402

T0_MS = 1764806400000
port, mode = int(sys.argv[2]), sys.argv[3]


def wait_connected(client) -> None:
    deadline = time.time() + 30
    while not client.is_connected():
        if time.time() > deadline:
            raise SystemExit("tb client did not connect")
        time.sleep(0.05)


if mode == "gateway":
    gw = TBGatewayMqttClient("127.0.0.1", port, username="gateway-token", client_id="tb-gateway")
    gw.connect()
    wait_connected(gw)
    gw.gw_connect_device("Pump A")
    gw.gw_connect_device("Pump B")
    infos = [gw.gw_send_telemetry("Pump A", {"ts": T0_MS, "values": {"flow": 1.25, "running": True}}),
             gw.gw_send_telemetry("Pump B", [{"ts": T0_MS + 500, "values": {"flow": 0.5, "mode": "auto"}}]),
             gw.gw_send_telemetry("Pump A", {"ts": T0_MS, "values": {"flow": 1.25, "running": True}})]  # re-send
    results = [i.get() for i in infos]
    gw.disconnect()
else:
    dev = TBDeviceMqttClient("127.0.0.1", port, username=sys.argv[4], client_id="tb-device")
    dev.connect()
    wait_connected(dev)
    infos = [dev.send_telemetry({"ts": T0_MS, "values": {"temp": 71.25}}),
             dev.send_telemetry({"ts": T0_MS, "values": {"temp": 71.25}}),  # re-send
             dev.send_attributes({"firmware": "2.0.1"})]
    results = [i.get() for i in infos]
    dev.disconnect()
print("published", results, flush=True)

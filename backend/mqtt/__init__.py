"""The MQTT subscriber (`python -m backend.mqtt`): broker messages into the ingest pipeline.

settings.py (MQTT_* checked), topics.py (what a topic is), keys.py (ThingsBoard device keys),
handler.py (one message -> pipeline -> ack or refuse), acks.py (in-order PUBACKs),
subscriber.py (paho client), quarantine.py (refused messages), runtime.py (the process).
"""

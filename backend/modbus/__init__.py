"""Modbus edge poller: reads transmitters over Modbus TCP / RTU and forwards to the ingest API.

Run it as its own process: ``python -m backend.modbus run --config FILE``.
See docs/modbus.md.
"""

__all__ = ["__version__"]

__version__ = "1.0"

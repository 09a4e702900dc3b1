"""API keys and scopes: the key store (keystore.py), key SQL (keys.py), the Flask hooks
(hooks.py), the device guard (guard.py) and the `keys` CLI commands (cli.py)."""

from backend.fleet.auth.guard import DeviceGuard, guard_for, refused_devices
from backend.fleet.auth.hooks import PUBLIC, install_auth, request_identity, requires
from backend.fleet.auth.keystore import Identity, KeyStore

__all__ = ["PUBLIC", "DeviceGuard", "Identity", "KeyStore", "guard_for", "install_auth", "refused_devices",
           "request_identity", "requires"]

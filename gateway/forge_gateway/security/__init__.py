"""Security and operations of the gateway: API keys, rate limits, admission, usage, metrics.

See :mod:`forge_gateway.security.layer` for how it is wired into the app.
"""

from forge_gateway.security.keys import ApiKey, KeyStore
from forge_gateway.security.layer import (
    SecurityLayer,
    admit,
    check_open_listen,
    estimate_remote_tokens,
    install_security,
    preflight,
)

__all__ = [
    "ApiKey",
    "KeyStore",
    "SecurityLayer",
    "admit",
    "check_open_listen",
    "estimate_remote_tokens",
    "install_security",
    "preflight",
]

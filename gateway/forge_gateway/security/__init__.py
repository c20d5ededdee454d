"""Security and operations of the gateway: API keys, rate limits, admission, usage, metrics.

See :mod:`forge_gateway.security.install` for how it is wired into the app and
:mod:`forge_gateway.security.policy` for who may call which route.
"""

from forge_gateway.security.install import install_security
from forge_gateway.security.keys import ApiKey, KeyStore
from forge_gateway.security.layer import (
    SecurityLayer,
    admit,
    authorize,
    check_open_listen,
    estimate_remote_tokens,
    preflight,
)

__all__ = [
    "ApiKey",
    "KeyStore",
    "SecurityLayer",
    "admit",
    "authorize",
    "check_open_listen",
    "estimate_remote_tokens",
    "install_security",
    "preflight",
]

"""Remote expert endpoints: what an admin may point the gateway at, and how paths join.

An endpoint is a URL the gateway will POST prompts (and an upstream API key) to, so it is an
SSRF and secret-exfiltration vector in the hands of anyone who can register experts. The rules:
``http``/``https`` only, no credentials or fragment in the URL, an optional host allow-list,
and no link-local or cloud-metadata address (169.254.0.0/16, fe80::/10, fd00:ec2::254) unless
allowed; the address rule is checked at registration and again on every new connection (a DNS
name may change what it resolves to).
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit, urlunsplit

from forge_sdk.errors import InvalidRequestError

__all__ = ["check_endpoint", "forbidden_address", "join_endpoint"]

_METADATA = (ipaddress.ip_network("fd00:ec2::254/128"), ipaddress.ip_network("169.254.0.0/16"))


def join_endpoint(endpoint: str, path: str) -> str:
    """``endpoint`` + ``/`` + ``path``, with any query string kept after the joined path.

    ``http://h/v1?x=1`` + ``chat/completions`` is ``http://h/v1/chat/completions?x=1``: the
    query never swallows the path.
    """
    parts = urlsplit(endpoint)
    return urlunsplit((parts.scheme, parts.netloc, f"{parts.path.rstrip('/')}/{path}", parts.query, ""))


def forbidden_address(address: str) -> str | None:
    """Why the gateway must not connect to ``address`` (link-local / metadata), or None."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_link_local or any(ip in net for net in _METADATA):
        return f"{ip} is a link-local / cloud metadata address"
    return None


def check_endpoint(endpoint: str, *, allow_hosts: list[str], allow_link_local: bool) -> None:
    """Refuse an endpoint an admin may not register (blocking: it may resolve the host name).

    Raises:
        InvalidRequestError: the URL breaks a rule (400, ``param="endpoint"``).
    """

    def bad(why: str) -> InvalidRequestError:
        return InvalidRequestError(f"endpoint {endpoint!r} refused: {why}", param="endpoint")

    try:
        parts = urlsplit(endpoint)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        raise bad(f"not a valid URL ({exc})") from exc
    if parts.scheme not in ("http", "https"):
        raise bad("it must be an http:// or https:// URL")
    host = parts.hostname
    if not host:
        raise bad("it names no host")
    if parts.username is not None or parts.password is not None:
        raise bad("credentials in the URL are not allowed (use api_key_env)")
    if parts.fragment:
        raise bad("a fragment (#...) is not allowed")
    if any(c in endpoint for c in "\r\n\t "):
        raise bad("whitespace or control characters are not allowed")
    if allow_hosts and host not in allow_hosts:
        raise bad(f"host {host!r} is not in router.upstream_allow_hosts ({', '.join(allow_hosts)})")
    if allow_link_local:
        return
    addresses = [host]
    if forbidden_address(host) is None:
        try:
            infos = socket.getaddrinfo(host, parts.port or 80, type=socket.SOCK_STREAM)
            addresses = [str(info[4][0]) for info in infos]
        except (OSError, UnicodeError):
            addresses = []  # unresolvable now: the per-connection check still applies later
    for address in addresses:
        why = forbidden_address(address)
        if why is not None:
            raise bad(f"{why} (set router.upstream_allow_link_local to allow it)")

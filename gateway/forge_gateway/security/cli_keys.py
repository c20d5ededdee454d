"""``forge-gateway keys create|list|revoke|usage``: manage API keys in the key store.

Works on the store directly, the SQLite file or the PostgreSQL database (no running gateway
needed); running gateways pick changes up within ``auth.refresh_interval`` seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from forge_gateway.security.store import KeyBackend

__all__ = ["add_keys_parser", "run_keys"]

_EPILOG = """\
examples:
  forge-gateway keys create --name alice --rpm 60 --tpm 100000
  forge-gateway keys create --name ops --admin
  forge-gateway keys create --name math-only --models math,general
  forge-gateway keys list
  forge-gateway keys revoke 3f2a9c0d1b7e
  forge-gateway keys usage --since 2026-11-01
  forge-gateway keys --db postgresql://forge:secret@db:5432/forge list
"""


def add_keys_parser(sub: Any) -> None:
    """Register the ``keys`` command on the top-level subparsers."""
    p = sub.add_parser(
        "keys",
        help="create, list, revoke API keys and show their usage",
        description="Manage the gateway's API keys (stored hashed in SQLite or PostgreSQL).",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--db",
        help="key store: an SQLite file or a postgresql:// URL (default: $FORGE_AUTH_DATABASE_URL, "
        "else $FORGE_AUTH_DB_PATH, else ./forge-gateway.db)",
    )
    ks = p.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    create = ks.add_parser("create", help="create a key and print it (shown only this once)")
    create.add_argument("--name", required=True, help="label shown in listings and logs")
    create.add_argument("--rpm", type=int, help="requests per minute (default: server default)")
    create.add_argument(
        "--tpm", type=int, help="prompt+completion tokens per minute (default: server default)"
    )
    create.add_argument(
        "--models", "--experts", dest="models", help="comma-separated models/experts allowed (default: all)"
    )
    create.add_argument("--admin", action="store_true", help="may call /admin endpoints and read /metrics")
    create.add_argument("--json", action="store_true", help="print the key and its metadata as JSON")
    ls = ks.add_parser("list", help="list keys (never their secrets)")
    ls.add_argument("--all", action="store_true", help="include revoked keys")
    ls.add_argument("--json", action="store_true", help="JSON output")
    rv = ks.add_parser("revoke", help="revoke a key by id")
    rv.add_argument("key_id", help="the id part of lf-<id>-<secret>")
    us = ks.add_parser("usage", help="tokens per key per day")
    us.add_argument("--key", dest="key_id", help="only this key id")
    us.add_argument("--since", help="first day YYYY-MM-DD (UTC)")
    us.add_argument("--until", help="last day YYYY-MM-DD (UTC)")
    us.add_argument("--json", action="store_true", help="JSON output")


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=False)]
    lines = [
        "  ".join(str(v).ljust(w) for v, w in zip(r, widths, strict=False)).rstrip() for r in [header, *rows]
    ]
    return "\n".join(lines)


def _limit(value: int | None) -> str:
    return str(value) if value is not None else "default"


def run_keys(args: argparse.Namespace) -> int:
    """Run one ``keys`` action; user errors raise LargeForgeAIError (printed by ``main``)."""
    from forge_gateway.config import load_auth_config
    from forge_gateway.security.store import open_store

    store = open_store(load_auth_config(), create=args.keys_command == "create", db=args.db)
    return asyncio.run(_run(store, args))


async def _run(store: KeyBackend, args: argparse.Namespace) -> int:
    try:
        await store.open()
        return await _ACTIONS[args.keys_command](store, args)
    finally:
        await store.close()


async def _create(store: KeyBackend, args: argparse.Namespace) -> int:
    from forge_gateway.security.keys import new_key

    models = [m for m in args.models.split(",")] if args.models is not None else None
    full, record = new_key(args.name, rpm=args.rpm, tpm=args.tpm, models=models, admin=args.admin)
    await store.add_key(record)
    if args.json:
        print(json.dumps({"key": full, **record.public_dict()}))
    else:
        print(full)
        print(
            f"created key {record.id} ({record.name}{', admin' if record.admin else ''}); "
            "store it now: it cannot be shown again",
            file=sys.stderr,
        )
    return 0


async def _list(store: KeyBackend, args: argparse.Namespace) -> int:
    keys = await store.keys(include_revoked=args.all)
    if args.json:
        print(json.dumps([k.public_dict() for k in keys]))
        return 0
    rows = [
        [
            k.id,
            k.name,
            "yes" if k.admin else "",
            _limit(k.rpm),
            _limit(k.tpm),
            ",".join(k.models) if k.models is not None else "*",
            "active" if k.active else "revoked",
        ]
        for k in keys
    ]
    print(_table(rows, ["ID", "NAME", "ADMIN", "RPM", "TPM", "MODELS", "STATE"]))
    return 0


async def _revoke(store: KeyBackend, args: argparse.Namespace) -> int:
    record = await store.revoke(args.key_id)
    print(f"revoked key {record.id} ({record.name})")
    return 0


async def _usage(store: KeyBackend, args: argparse.Namespace) -> int:
    rows = await store.usage(key_id=args.key_id, since=args.since, until=args.until)
    if args.json:
        print(json.dumps([r.as_dict() for r in rows]))
        return 0
    names = {k.id: k.name for k in await store.keys()}
    table = [
        [
            r.day,
            r.key_id,
            names.get(r.key_id, "(open)" if r.key_id == "-" else "?"),
            str(r.requests),
            str(r.prompt_tokens),
            str(r.completion_tokens),
            str(r.prompt_tokens + r.completion_tokens),
        ]
        for r in rows
    ]
    print(_table(table, ["DAY", "KEY", "NAME", "REQUESTS", "PROMPT", "COMPLETION", "TOTAL"]))
    return 0


_ACTIONS: dict[str, Callable[[KeyBackend, argparse.Namespace], Awaitable[int]]] = {
    "create": _create,
    "list": _list,
    "revoke": _revoke,
    "usage": _usage,
}

"""Admin-API rules checked without a server: endpoint URLs, and the registry under concurrent writers."""

from __future__ import annotations

import multiprocessing
import stat
from pathlib import Path

import pytest

from forge_gateway.upstream.endpoints import check_endpoint, forbidden_address, join_endpoint
from forge_sdk.errors import InvalidRequestError
from forge_sdk.experts import ExpertModel, ExpertRegistry


def test_endpoint_rules_as_functions() -> None:
    assert join_endpoint("http://h:1/v1/?k=v", "completions") == "http://h:1/v1/completions?k=v"
    assert forbidden_address("169.254.169.254") and forbidden_address("fe80::1%eth0")
    assert forbidden_address("10.0.0.1") is None and forbidden_address("::1") is None
    with pytest.raises(InvalidRequestError, match="upstream_allow_hosts"):
        check_endpoint("http://evil.example/v1", allow_hosts=["vllm.internal"], allow_link_local=False)
    check_endpoint("http://169.254.1.1/v1", allow_hosts=[], allow_link_local=True)  # explicitly allowed


def _register_many(path: str, prefix: str, count: int) -> None:
    registry = ExpertRegistry(path)
    for i in range(count):
        registry.register(ExpertModel(name=f"{prefix}{i}", endpoint="http://127.0.0.1:1/v1"))


def test_concurrent_registry_writers_lose_nothing_and_keep_the_mode(tmp_path: Path) -> None:
    path = tmp_path / "experts.json"
    ExpertRegistry(path).register(ExpertModel(name="seed"))
    path.chmod(0o640)
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_register_many, args=(str(path), f"p{n}-", 15)) for n in range(3)]
    for proc in procs:
        proc.start()
    _register_many(str(path), "main-", 15)
    for proc in procs:
        proc.join(60)
        assert proc.exitcode == 0
    names = set(ExpertRegistry(path).experts)
    expected = {"seed"} | {f"{p}{i}" for p in ("p0-", "p1-", "p2-", "main-") for i in range(15)}
    assert names == expected, expected - names
    assert stat.S_IMODE(path.stat().st_mode) == 0o640

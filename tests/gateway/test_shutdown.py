"""Graceful shutdown of a real `forge-gateway serve`: SIGTERM mid-stream.

The in-flight SSE stream must run to ``[DONE]``, new connections must be refused, the process
must exit 0, and the stream's usage must be in the ledger (written at shutdown: the periodic
flush is set to an hour so only the shutdown flush can have written it).
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import httpx
import pytest

from forge_gateway.security import KeyStore
from tests.gateway.test_limits import LONG_PROMPT
from tests.support import GatewayProcess


@pytest.mark.slow
def test_sigterm_lets_stream_finish_and_exits_zero(tiny_model_dir: Path, tmp_path: Path) -> None:
    db = tmp_path / "keys.db"
    key, record = KeyStore(db).create("streamer")
    env = {"FORGE_AUTH_DB_PATH": str(db), "FORGE_AUTH_USAGE_FLUSH_INTERVAL": "3600"}
    args = ["--model", str(tiny_model_dir), "--served-model-name", "tiny", "--engine", "transformers"]
    args += ["--classifier", "keyword"]
    gw = GatewayProcess(args, env=env, log_path=tmp_path / "gw.log").start()
    try:
        body = {
            "model": "tiny",
            "messages": [{"role": "user", "content": LONG_PROMPT}],
            "max_tokens": 1500,
            "n": 2,  # two long sequences (greedy runs past 1800 tokens): seconds left at SIGTERM
            "temperature": 0,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        headers = {"Authorization": f"Bearer {key}"}
        events: list[str] = []
        signalled_at = None
        with httpx.stream(
            "POST", f"{gw.base_url}/v1/chat/completions", json=body, headers=headers, timeout=120
        ) as r:
            assert r.status_code == 200
            for line in r.iter_lines():
                if not line.startswith("data: "):
                    continue
                events.append(line[6:])
                if len(events) == 3 and signalled_at is None:
                    assert gw.proc is not None
                    gw.proc.send_signal(signal.SIGTERM)
                    signalled_at = time.monotonic()
                    time.sleep(0.3)
                    with pytest.raises(httpx.ConnectError):
                        httpx.get(f"{gw.base_url}/health", timeout=2)
        assert signalled_at is not None
        assert events[-1] == "[DONE]"
        chunks = [json.loads(e) for e in events[:-1]]
        usage = chunks[-1]["usage"]
        finishes = [
            c["choices"][0]["finish_reason"]
            for c in chunks
            if c["choices"] and c["choices"][0]["finish_reason"]
        ]
        assert finishes == ["length"] * 2 and usage["completion_tokens"] == 3000
        assert gw.proc is not None
        assert gw.proc.wait(60) == 0
    finally:
        gw.stop()
    rows = KeyStore(db).usage(key_id=record.id)
    assert [(r.requests, r.prompt_tokens + r.completion_tokens) for r in rows] == [(1, usage["total_tokens"])]
    log = gw.log_text()
    assert "Traceback" not in log
    # uvicorn really had to wait for our open stream (it was not already finished at SIGTERM).
    assert "Waiting for connections to close" in log

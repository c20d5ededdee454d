"""Schemathesis fuzzes a real `forge-gateway serve` from its own OpenAPI schema: no 5xx, no
response that breaks the documented schema, status codes and content types.

Bounded: small limits so generations stay short, ``--max-time``, a fixed seed. The admin
expert/adapter routes are left out (they change the served catalog while other cases run).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from forge_gateway.security import KeyStore
from tests.support import GatewayProcess

CHECKS = ",".join(
    [
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_schema_conformance",
        "response_headers_conformance",
    ]
)


@pytest.mark.slow
def test_schemathesis_finds_no_server_errors(tiny_model_dir: Path, tmp_path: Path) -> None:
    st = shutil.which("st", path=str(Path(sys.executable).parent)) or shutil.which("st")
    if st is None:
        pytest.skip("schemathesis is not installed")
    db = tmp_path / "keys.db"
    admin, _ = KeyStore(db).create("fuzzer", admin=True)
    env = {
        "FORGE_AUTH_DB_PATH": str(db),
        "FORGE_LIMITS_MAX_TOKENS": "16",
        "FORGE_LIMITS_DEFAULT_MAX_TOKENS": "8",
    }
    args = ["--model", str(tiny_model_dir), "--served-model-name", "tiny", "--engine", "transformers"]
    args += ["--classifier", "keyword"]
    with GatewayProcess(args, env=env, log_path=tmp_path / "gw.log") as gw:
        proc = subprocess.run(
            [
                st,
                "run",
                f"{gw.base_url}/openapi/openapi.json",
                "--header",
                f"Authorization: Bearer {admin}",
                "--checks",
                CHECKS,
                "--max-examples",
                "10",
                "--seed",
                "7",
                "--max-time",
                "40",
                "--workers",
                "1",
                "--phases",
                "examples,coverage,fuzzing",
                "--exclude-path-regex",
                "^/admin/(experts|adapters)",
                "--generation-database",
                "none",
                "--no-color",
            ],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "SCHEMATHESIS_TELEMETRY": "false"},
        )
        log = gw.log_text()
    report = proc.stdout[-6000:] + proc.stderr[-2000:]
    assert proc.returncode == 0, report
    assert "Tested:" in proc.stdout and "failures" not in proc.stdout.splitlines()[-1], report
    assert '"unhandled_error"' not in log

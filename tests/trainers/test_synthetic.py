"""Synthetic data: template filling, dedup, the local-model teacher (tiny model) and the endpoint
teacher against a real HTTP server on 127.0.0.1 that stands in for an external OpenAI-compatible
teacher."""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from forge_sdk.errors import DataError, UpstreamError
from forge_train.synthetic import (
    SynthCommand,
    SyntheticConfig,
    SyntheticDataGenerator,
    fill_template,
    normalize_text,
    parse_example,
)

SEEDS = [
    {"instruction": "Say hi", "response": "Hi!"},
    {"messages": [{"role": "user", "content": "Add 2 and 2."}, {"role": "assistant", "content": "4"}]},
    {"prompt": "Name a colour.", "response": "Blue."},
]


class _Teacher(BaseHTTPRequestHandler):
    """OpenAI-shaped /v1/chat/completions with scripted behaviour (see ``server`` fixture)."""

    def log_message(self, *args):  # keep test output quiet
        pass

    def _send(self, status: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        state = self.server.state
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with state["lock"]:
            state["requests"].append(body)
            state["in_flight"] += 1
            state["max_in_flight"] = max(state["max_in_flight"], state["in_flight"])
            fail = state["fail_next"] > 0
            state["fail_next"] -= fail
        try:
            time.sleep(0.03)
            if self.path != "/v1/chat/completions":
                return self._send(404, {"error": {"message": "not found", "type": "invalid_request_error"}})
            if self.headers.get("Authorization") != "Bearer sk-test":
                return self._send(401, {"error": {"message": "bad key", "type": "authentication_error"}})
            if fail:
                return self._send(503, {"error": {"message": "overloaded", "type": "service_unavailable"}})
            prompt, seed = body["messages"][-1]["content"], body["seed"]
            if "### Instruction:" in prompt:
                k = seed % 6
                if k == 0:
                    content = "### Instruction:\nSay  HI!\n### Response:\nHello."  # repeats a seed
                elif k == 5:
                    content = "I cannot follow the format."
                else:
                    content = (
                        f"### Instruction:\nDescribe animal number {k}.\n### Response:\nAnimal {k} is a cat."
                    )
            else:
                content = f"ANSWER[{prompt}]"
            self._send(
                200,
                {
                    "id": "x",
                    "object": "chat.completion",
                    "model": body["model"],
                    "choices": [
                        {
                            "index": 0,
                            "finish_reason": "stop",
                            "message": {"role": "assistant", "content": content},
                        }
                    ],
                },
            )
        finally:
            with state["lock"]:
                state["in_flight"] -= 1


@pytest.fixture
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Teacher)
    srv.state = {"lock": threading.Lock(), "requests": [], "in_flight": 0, "max_in_flight": 0, "fail_next": 0}
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def _endpoint_config(srv, **kw) -> SyntheticConfig:
    base = dict(
        base_url=f"http://127.0.0.1:{srv.server_address[1]}/v1",
        api_key="sk-test",
        show_progress=False,
        concurrency=4,
        seed=7,
    )
    base.update(kw)
    return SyntheticConfig(**base)


def test_fill_template_is_deterministic_and_covers_combinations():
    variables = {"topic": ["DNS", "TLS", "TCP"], "who": ["child", "expert"]}
    prompts = fill_template("Explain {topic} to a {who}.", variables, 6, seed=1)
    expected = {f"Explain {t} to a {w}." for t in variables["topic"] for w in variables["who"]}
    assert set(prompts) == expected
    assert fill_template("Explain {topic} to a {who}.", variables, 6, seed=1) == prompts
    assert fill_template("Explain {topic} to a {who}.", variables, 6, seed=2) != prompts
    more = fill_template("Explain {topic} to a {who}.", variables, 9, seed=1)
    assert len(more) == 9 and set(more[:6]) == expected
    assert fill_template("Say {{hi}} about {x}", {"x": ["a"]}, 1) == ["Say {hi} about a"]
    with pytest.raises(DataError, match="without values: who"):
        fill_template("{topic} {who}", {"topic": ["a"]}, 1)
    with pytest.raises(DataError, match="placeholders must be names"):
        fill_template("positional {}", {}, 1)


def test_normalize_and_parse():
    assert normalize_text("  Say, HI!\n") == normalize_text("say hi") == "say hi"
    assert parse_example("### Instruction:\nWrite.\n### Response:\nDone.\n### Instruction:\nmore") == (
        "Write.",
        "Done.",
    )
    assert parse_example("Write a poem\n### Response: ok") == ("Write a poem", "ok")
    assert parse_example("no format at all") is None
    assert parse_example("### Instruction:\n### Response:\n") is None


def test_local_model_template_and_self_instruct(tiny_model_dir):
    cfg = SyntheticConfig(
        model_name=str(tiny_model_dir),
        max_new_tokens=12,
        batch_size=4,
        show_progress=False,
        system_prompt="Be brief.",
    )
    gen = SyntheticDataGenerator(cfg)
    records = gen.generate_from_template("Explain {topic}.", {"topic": ["DNS", "TLS", "TCP"]}, 6)
    assert len(records) == 6 == gen.stats["generated"]
    for rec in records:
        roles = [m["role"] for m in rec["messages"]]
        assert roles == ["system", "user", "assistant"]
        assert rec["messages"][1]["content"].startswith("Explain ")
        assert rec["messages"][2]["content"].strip()
    again = SyntheticDataGenerator(cfg).generate_from_template(
        "Explain {topic}.", {"topic": ["DNS", "TLS", "TCP"]}, 6
    )
    assert again == records  # same seed, same data
    other = SyntheticDataGenerator(
        SyntheticConfig(
            model_name=str(tiny_model_dir),
            max_new_tokens=12,
            batch_size=4,
            show_progress=False,
            system_prompt="Be brief.",
            seed=99,
        )
    )
    assert other.generate_from_template("Explain {topic}.", {"topic": ["DNS", "TLS", "TCP"]}, 6) != records

    # The tiny model writes gibberish, so self-instruct parses (almost) nothing, but the loop is
    # bounded and accounts for every prompt.
    out = gen.generate_with_seed(SEEDS, 2)
    s = gen.stats
    assert 0 < s["prompts"] <= 8
    assert s["unparsed"] + s["duplicates"] + s["surplus"] + len(out) == s["prompts"]
    assert len(out) <= 2


def test_endpoint_template_concurrent_with_retries(server):
    server.state["fail_next"] = 2  # two 503s: retried, not fatal
    gen = SyntheticDataGenerator(_endpoint_config(server, model_name="teacher-x", max_new_tokens=32))
    records = gen.generate_from_template("Explain {topic}.", {"topic": ["DNS", "TLS", "TCP", "UDP"]}, 8)
    assert len(records) == 8
    for rec in records:
        user, answer = rec["messages"][0]["content"], rec["messages"][1]["content"]
        assert answer == f"ANSWER[{user}]"
    reqs = server.state["requests"]
    assert len(reqs) == 10
    assert {r["model"] for r in reqs} == {"teacher-x"} and {r["max_tokens"] for r in reqs} == {32}
    assert sorted({r["seed"] for r in reqs}) == list(range(7, 15))
    assert server.state["max_in_flight"] > 1


def test_endpoint_self_instruct_dedups(server):
    gen = SyntheticDataGenerator(_endpoint_config(server, batch_size=6))
    records = gen.generate_with_seed(SEEDS, 4)
    instructions = [r["messages"][0]["content"] for r in records]
    assert sorted(instructions) == [f"Describe animal number {k}." for k in range(1, 5)]
    assert gen.stats["duplicates"] >= 1 and gen.stats["unparsed"] >= 1
    # Each prompt shows the teacher some of the seeds in the parseable format.
    first = server.state["requests"][0]["messages"][-1]["content"]
    assert first.count("### Instruction:") >= 3 and "### Response:" in first
    with pytest.raises(DataError, match="seed example 0"):
        gen.generate_with_seed([{"foo": 1}], 1)


def test_endpoint_errors(server):
    with pytest.raises(UpstreamError, match="401"):
        SyntheticDataGenerator(_endpoint_config(server, api_key="wrong")).generate_from_template(
            "Hi {x}", {"x": ["a"]}, 1
        )
    server.state["fail_next"] = 10
    with pytest.raises(UpstreamError, match="after retries"):
        SyntheticDataGenerator(_endpoint_config(server, max_retries=1)).generate_from_template(
            "Hi {x}", {"x": ["a"]}, 1
        )
    dead = SyntheticConfig(base_url="http://127.0.0.1:9/v1", max_retries=0, show_progress=False)
    with pytest.raises(UpstreamError):
        SyntheticDataGenerator(dead).generate_from_template("Hi {x}", {"x": ["a"]}, 1)


def test_synth_command_writes_sft_ready_jsonl(server, tmp_path):
    parser = argparse.ArgumentParser()
    SynthCommand.add_arguments(parser)
    out = tmp_path / "synth.jsonl"
    args = parser.parse_args(
        [
            "--base-url",
            f"http://127.0.0.1:{server.server_address[1]}/v1",
            "--api-key",
            "sk-test",
            "--template",
            "Write about {topic} for {who}.",
            "--var",
            "topic=cats|dogs",
            "--var",
            "who=kids|adults",
            "--num-samples",
            "4",
            "--output",
            str(out),
            "--no-progress",
        ]
    )
    result = SynthCommand().run(args)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 4 == result.metrics["written"]
    assert all(list(r) == ["messages"] for r in rows)
    data = pytest.importorskip("forge_train.data")
    if hasattr(data, "load_sft_dataset"):
        assert len(data.load_sft_dataset(str(out))) == 4


def test_forge_train_cli_synth(server, tmp_path):
    exe = shutil.which("forge-train") or str(Path(sys.executable).with_name("forge-train"))
    if not Path(exe).exists():
        pytest.skip("forge-train console script not installed")
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text("\n".join(json.dumps(s) for s in SEEDS))
    out = tmp_path / "si.jsonl"
    base = [
        exe,
        "synth",
        "--base-url",
        f"http://127.0.0.1:{server.server_address[1]}/v1",
        "--api-key",
        "sk-test",
        "--output",
        str(out),
        "--no-progress",
    ]
    proc = subprocess.run(
        [*base, "--seed-file", str(seeds), "--num-samples", "3"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert len(out.read_text().splitlines()) == 3
    bad = subprocess.run(
        [*base, "--seed-file", str(tmp_path / "none.jsonl")], capture_output=True, text=True, timeout=120
    )
    assert bad.returncode == 2 and "seed file not found" in bad.stderr and "Traceback" not in bad.stderr

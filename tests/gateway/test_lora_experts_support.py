"""Helpers for the expert tests (no tests here): a live in-process gateway, LoRA adapters, references."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx

MESSAGES = [{"role": "user", "content": "Tell me something about rivers."}]


@asynccontextmanager
async def serve_app(app: Any) -> AsyncIterator[str]:
    """Serve an ASGI app with uvicorn on a free loopback port in this event loop; yield its URL."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on"))
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            if task.done():
                task.result()
                raise RuntimeError("uvicorn exited before it started")
            await asyncio.sleep(0.05)
        port = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


def make_adapter(model_dir: Path, out: Path, seed: int, rank: int = 8) -> Path:
    """A PEFT LoRA adapter on the tiny model with random non-zero weights, so it changes tokens."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(model_dir)
    config = LoraConfig(
        r=rank,
        lora_alpha=2 * rank,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        init_lora_weights=False,
    )
    get_peft_model(base, config).save_pretrained(out)
    return out


def reference_text(
    model_dir: Path, adapter: Path | None, messages: list[dict[str, str]], max_tokens: int
) -> str:
    """Greedy continuation by transformers (+PEFT for an adapter), decoded like the gateway does."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, adapter)
    model.eval()
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = tok.encode(text, add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(input_ids=torch.tensor([ids]), max_new_tokens=max_tokens, do_sample=False)
    new = out[0, len(ids) :].tolist()
    return f"{tok.decode(new, skip_special_tokens=True).rstrip(chr(0xFFFD))}#{len(new)}"


async def chat_text(http: httpx.AsyncClient, model: str, max_tokens: int) -> tuple[str, httpx.Response]:
    """Greedy chat completion through the gateway: (``text#completion tokens``, response)."""
    body = {"model": model, "messages": MESSAGES, "max_tokens": max_tokens, "temperature": 0}
    resp = await http.post("/v1/chat/completions", json=body)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    text = body["choices"][0]["message"]["content"].rstrip(chr(0xFFFD))
    return f"{text}#{body['usage']['completion_tokens']}", resp

"""The measured win, on the product's own path: experts trained and registered exactly as the
README tells a user, reached by ``model="auto"`` on the standard install (example plugin included).

1. ``forge-gateway models pull smollm2-135m-instruct`` (cached after the first run).
2. Split ../shared/data/expert_math_gsm8k_2k.jsonl (GSM8K train) and expert_code_mbpp.jsonl (MBPP):
   the first ``--train-rows`` rows of each train an expert, the last ``--eval-rows`` are held out.
3. ``forge-train sft --model smollm2-135m-instruct --dataset ... --output ... --register math-smol
   --specialization math --registry experts.json`` (the same for ``code-smol``): no priority, no
   keywords, a fresh registry, like a user's first run; the budget flags (steps, batch, length,
   learning rate) only size the run. Peak RSS and time of each run are measured (``os.wait4``).
4. ``forge-gateway serve --model smollm2-135m-instruct --registry experts.json`` with every other
   setting at its default (engine dtype included) and the installed plugins: the built-in aliases
   ``general``/``code``/``math``/``writing`` and the example plugin's ``mathexpert`` (priority 10)
   compete with the trained experts for ``auto``.
5. Held-out NLL per answer token (assistant tokens only) through the gateway (``/v1/completions``
   ``echo`` + ``logprobs``, :func:`forge_train.evaluate.gateway_answer_nll`) for the base, each
   expert and ``model="auto"`` on the math, code and mixed (both together) held-out sets, with
   who served ``auto`` and the ranking rule ``/route`` reports; the base is also scored locally
   (transformers, float32) as a cross-check of the gateway path.

Expected shape: each expert beats the base on its own domain; ``auto`` reaches the trained experts
(rule ``trained>alias``), so on the mixed set it beats the base and every single expert. Prints a
table; asserts nothing. CPU budget (2 shared cores): the defaults train 64 rows per expert for 16
steps (one epoch) of batch 4 at <= 256 tokens, and hold out 16 conversations per domain. Run (with
``pip install ./examples/forge-plugin-mathexpert`` done, as scripts/setup.sh does):

    OMP_NUM_THREADS=1 nice -n 10 python tests/performance/bench_experts.py [--train-rows 64 --steps 16]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[2]
DATA = REPO.parent / "shared" / "data"
MODEL = "smollm2-135m-instruct"
DOMAINS = {"math": "expert_math_gsm8k_2k.jsonl", "code": "expert_code_mbpp.jsonl"}
EXPERTS = {"math": "math-smol", "code": "code-smol"}
"""Registered names, as in the README's example."""

sys.path[:0] = [str(REPO / p) for p in ("sdk", "gateway", "trainers", "plugins", "")]


def _env() -> dict[str, str]:
    return {
        **os.environ,
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }


def _run(cmd: list[str]) -> tuple[str, float]:
    """Run a child; return its stdout and wall seconds."""
    started = time.monotonic()
    done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.stderr.write(done.stderr[-3000:])
        raise SystemExit(f"child failed: {' '.join(cmd)}")
    return done.stdout, time.monotonic() - started


def _train(domain: str, rows: Path, out: Path, registry: Path, a: argparse.Namespace) -> tuple[float, float]:
    cmd = [sys.executable, "-m", "forge_train.cli", "sft", "--model", MODEL, "--dataset", str(rows)]
    cmd += ["--output", str(out), "--max-steps", str(a.steps), "--batch-size", str(a.batch_size)]
    cmd += ["--max-length", str(a.max_length), "--lr", str(a.lr), "--lora-r", "16", "--lora-alpha", "32"]
    cmd += ["--lr-scheduler", "cosine", "--save-steps", "100000"]
    # Registration exactly as the README shows a user: a name and a specialization, nothing else.
    cmd += ["--register", EXPERTS[domain], "--specialization", domain, "--registry", str(registry)]
    # Peak RSS of the child itself (wait4 on its pid), not of this process.
    started = time.monotonic()
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out_text, err = proc.stdout.read(), proc.stderr.read()  # type: ignore[union-attr]
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        sys.stderr.write(err[-3000:])
        raise SystemExit(f"training {domain} failed")
    print(f"  {out_text.strip().splitlines()[-1]}", flush=True)
    return usage.ru_maxrss / 1024, time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--train-rows", type=int, default=64)
    parser.add_argument("--eval-rows", type=int, default=16)
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--workdir", help="keep outputs here (default: a temporary folder)")
    a = parser.parse_args()

    from importlib import metadata

    from forge_train.evaluate import EvalResult, gateway_answer_nll, local_answer_nll
    from tests.support import GatewayProcess

    try:
        metadata.distribution("forge-plugin-mathexpert")
    except metadata.PackageNotFoundError:
        raise SystemExit(
            "the standard install includes the example plugin: pip install ./examples/forge-plugin-mathexpert"
        ) from None

    work = Path(a.workdir or tempfile.mkdtemp(prefix="bench-experts-"))
    work.mkdir(parents=True, exist_ok=True)
    folder, secs = _run([sys.executable, "-m", "forge_gateway.cli", "models", "pull", MODEL])
    print(f"model: {folder.strip()} (pull/convert or cache hit: {secs:.0f} s)", flush=True)

    heldout: dict[str, Path] = {}
    registry = work / "experts.json"
    registry.unlink(missing_ok=True)  # a user's first run: no registry yet
    for domain, name in DOMAINS.items():
        lines = (DATA / name).read_text(encoding="utf-8").splitlines()
        train, held = lines[: a.train_rows], lines[-a.eval_rows :]
        (work / f"{domain}_train.jsonl").write_text("\n".join(train) + "\n", encoding="utf-8")
        heldout[domain] = work / f"{domain}_heldout.jsonl"
        heldout[domain].write_text("\n".join(held) + "\n", encoding="utf-8")

    print(
        f"training 2 experts: {a.train_rows} rows, {a.steps} steps x batch {a.batch_size}, <= {a.max_length} tokens"
    )
    for domain in DOMAINS:
        rss, wall = _train(domain, work / f"{domain}_train.jsonl", work / f"expert-{domain}", registry, a)
        print(f"  {domain}: peak RSS {rss:.0f} MiB, {wall:.0f} s wall (shared machine: noisy)", flush=True)

    local_base = {d: local_answer_nll(MODEL, str(p)) for d, p in heldout.items()}
    env = {"FORGE_AUTH_DB_PATH": str(work / "auth.db")}  # every engine setting at its default
    args = ["--model", MODEL, "--registry", str(registry)]
    results: dict[str, dict[str, EvalResult]] = {}
    rules: dict[str, int] = {}
    with GatewayProcess(args, env=env, log_path=work / "gateway.log", startup_timeout=900) as gw:
        listed = [m["id"] for m in httpx.get(f"{gw.base_url}/v1/models", timeout=30).json()["data"]]
        print(f"  /v1/models: {listed}", flush=True)
        for model in (MODEL, *EXPERTS.values(), "auto"):
            results[model] = {
                d: gateway_answer_nll(gw.base_url, model, str(p), MODEL) for d, p in heldout.items()
            }
            print(f"  scored {model}", flush=True)
        for path in heldout.values():
            for line in path.read_text(encoding="utf-8").splitlines():
                question = next(m["content"] for m in json.loads(line)["messages"] if m["role"] == "user")
                decision = httpx.post(f"{gw.base_url}/route", params={"query": question}, timeout=30).json()
                key = f"{decision['expert']} ({decision.get('rank') or decision['reason']})"
                rules[key] = rules.get(key, 0) + 1

    def mixed(r: dict[str, EvalResult]) -> float:
        tokens = sum(x.answer_tokens for x in r.values())
        return sum(x.nll * x.answer_tokens for x in r.values()) / tokens

    print()
    print(f"held-out NLL per answer token (nats; lower is better), {a.eval_rows} conversations per domain")
    print(f"{'model':<28}{'math':>9}{'code':>9}{'mixed':>9}   served by")
    label = {
        MODEL: "base (gateway)",
        **{n: f"{n} (expert)" for n in EXPERTS.values()},
        "auto": 'model="auto"',
    }
    print(
        f"{'base (local, transformers)':<28}"
        + "".join(f"{local_base[d].nll:>9.4f}" for d in DOMAINS)
        + f"{mixed(local_base):>9.4f}"
    )
    for model, r in results.items():
        served: dict[str, int] = {}
        for x in r.values():
            for k, v in x.served_by.items():
                served[k] = served.get(k, 0) + v
        cells = "".join(f"{r[d].nll:>9.4f}" for d in DOMAINS)
        print(f"{label[model]:<28}{cells}{mixed(r):>9.4f}   {json.dumps(served)}")
    print(f"\n/route on the held-out questions, expert (rank rule): {json.dumps(rules)}")
    print(f"outputs in {work}")


if __name__ == "__main__":
    main()

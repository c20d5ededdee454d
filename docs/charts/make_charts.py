"""Draw the benchmark charts of docs/benchmarks.md from the measured figures written below.

The figures are the ones printed by the scripts under tests/performance/ (each entry names the
command); this script only draws them. Rerun it after re-measuring and commit the PNGs:

    python docs/charts/make_charts.py        # writes docs/assets/charts/*.png
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

OUT = Path(__file__).resolve().parents[1] / "assets" / "charts"
COLORS = ["#3f51b5", "#ff9800", "#009688", "#e91e63", "#607d8b"]


def _bars(ax, groups: list[str], series: dict[str, list[float | None]], fmt: str = "{:.2f}") -> None:
    """Grouped bars with their values written on top (None: not measured, no bar)."""
    width = 0.8 / len(series)
    x = np.arange(len(groups))
    for i, (name, values) in enumerate(series.items()):
        pos = x - 0.4 + width * (i + 0.5)
        heights = [np.nan if v is None else v for v in values]
        bars = ax.bar(pos, heights, width, label=name, color=COLORS[i % len(COLORS)])
        for bar, v in zip(bars, values, strict=True):
            if v is not None:
                ax.annotate(
                    fmt.format(v),
                    (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center",
                    va="bottom",
                    fontsize=7,
                    xytext=(0, 1),
                    textcoords="offset points",
                )
    ax.set_xticks(x, groups)
    ax.spines[["top", "right"]].set_visible(False)


def _save(fig, name: str) -> None:
    fig.tight_layout()
    # No timestamp or version in the file: the same figures give the same bytes.
    fig.savefig(OUT / name, dpi=110, metadata={"Software": None})
    plt.close(fig)
    print("wrote", OUT / name)


def vs_vllm_server() -> None:
    # python tests/performance/bench_vs_vllm_server.py --model DIR --sections vllm,unused,lora
    #   --rounds 2 --requests 32 --single-requests 4 (SmolLM2-135M-Instruct, CPU): forge / vLLM tok/s.
    fig, ax = plt.subplots(figsize=(7.5, 3.6))
    _bars(
        ax,
        ["1 stream", "8 streams", "32 streams"],
        {
            "no adapter expert (both LoRA off, compiled)": [1.03, 0.96, 0.97],
            "both --enable-lora, no adapter": [1.00, 1.10, 1.08],
            "one adapter loaded: base requests": [None, 1.02, None],
            "one adapter loaded: adapter requests": [None, 1.45, None],
        },
    )
    ax.axhline(1.0, color="black", linewidth=0.8, linestyle="--")
    ax.set_ylim(0, 1.85)
    ax.set_ylabel("tok/s, forge / vLLM's server")
    ax.set_title(
        "forge-gateway vs vLLM's own OpenAI server (SmolLM2-135M, CPU; > 1: forge faster)", fontsize=9
    )
    ax.legend(fontsize=7, loc="upper left", ncols=2, frameon=False)
    _save(fig, "vs_vllm_server.png")


def router_quality() -> None:
    # python tests/performance/bench_router.py: macro-F1 of each classifier on each held-out set.
    sets = ["LOSO (4 folds)", "fresh", "plain", "practical", "stress"]
    fig, ax = plt.subplots(figsize=(7.5, 3.6))
    _bars(
        ax,
        sets,
        {
            "keyword (SDD baseline)": [None, 0.557, 0.336, 0.181, 0.553],
            "tf-idf model alone": [0.901, 0.965, 0.846, 0.895, 0.963],
            "fine-tuned encoder alone": [0.935, 0.975, 0.935, 0.950, 0.962],
            "neural (default)": [0.963, 0.985, 0.960, 0.967, 0.988],
        },
    )
    ax.set_ylim(0, 1.12)
    ax.set_ylabel("macro-F1")
    ax.set_title("Routing quality by classifier and held-out set (higher is better)", fontsize=9)
    ax.legend(fontsize=7, loc="upper center", ncols=4, frameon=False)
    _save(fig, "router_quality.png")


def experts_nll() -> None:
    # python tests/performance/bench_experts.py: held-out NLL per answer token through the gateway.
    fig, ax = plt.subplots(figsize=(7.5, 3.4))
    _bars(
        ax,
        ["math questions", "code questions", "both (mixed)"],
        {
            "base model": [1.336, 1.094, 1.237],
            "math-smol expert": [1.042, 1.044, 1.043],
            "code-smol expert": [1.299, 0.920, 1.144],
            'model="auto" (router picks)': [1.042, 0.920, 0.992],
        },
        fmt="{:.3f}",
    )
    ax.set_ylim(0, 1.55)
    ax.set_ylabel("NLL per answer token (nats)")
    ax.set_title(
        "Specialist experts vs base vs the router, SmolLM2-135M-Instruct (lower is better)", fontsize=9
    )
    ax.legend(fontsize=7, loc="upper center", ncols=4, frameon=False)
    _save(fig, "experts_nll.png")


def proxy_overhead() -> None:
    # python tests/performance/bench_proxy.py --duration 3: latency the gateway adds to a remote
    # expert, p50 at c=1 (keys and limits off); LiteLLM measured the same way.
    fig, ax = plt.subplots(figsize=(7.5, 2.6))
    labels = ["forge, non-stream", "forge, stream", "LiteLLM, non-stream", "LiteLLM, stream"]
    values = [0.159, 0.274, 11.0, 17.0]
    y = np.arange(len(labels))
    ax.barh(y, values, color=[COLORS[0], COLORS[0], COLORS[4], COLORS[4]])
    for yi, v in zip(y, values, strict=True):
        ax.annotate(f"{v:g} ms", (v, yi), xytext=(3, 0), textcoords="offset points", va="center", fontsize=8)
    ax.set_yticks(y, labels)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlim(0.05, 100)
    ax.set_xlabel("added latency per request, p50 at c=1 (ms, log scale)")
    ax.set_title("What the gateway adds in front of a remote expert (lower is better)", fontsize=9)
    ax.spines[["top", "right"]].set_visible(False)
    _save(fig, "proxy_overhead.png")


def transformers_engine() -> None:
    # python tests/performance/bench_vs_transformers.py --model DIR (SmolLM2-135M, float32, one
    # torch thread, 32 requests x 64 tokens; one interleaved round under load, so rough).
    fig, ax = plt.subplots(figsize=(7.5, 3.2))
    _bars(
        ax,
        ["1 stream", "8 streams", "32 streams"],
        {
            "forge transformers engine": [8.2, 14.9, 41.3],
            "transformers generate (static batches)": [5.6, 16.0, 35.9],
            "transformers generate_batch": [4.7, 18.9, 39.7],
        },
        fmt="{:.1f}",
    )
    ax.set_ylim(0, 50)
    ax.set_ylabel("output tok/s")
    ax.set_title("Transformers fallback engine vs transformers' own batching (higher is better)", fontsize=9)
    ax.legend(fontsize=7, loc="upper left", frameon=False)
    _save(fig, "transformers_engine.png")


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    vs_vllm_server()
    router_quality()
    experts_nll()
    proxy_overhead()
    transformers_engine()


if __name__ == "__main__":
    main()

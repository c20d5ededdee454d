"""Build a tiny Qwen2-style chat model and tokenizer locally, in seconds, with no download.

Used by the tests, the benchmarks and the offline demo. The weights are random (seeded), so its
text is gibberish, but it is a real model: every engine, adapter and training path runs on it.
head_dim is 32 (hidden 128, 4 heads) because vLLM's CPU attention needs head_dim in {32, 64, ...}.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

__all__ = ["CHAT_TEMPLATE", "build_tiny_model"]

# ChatML with {% generation %} markers so TRL's assistant_only_loss can mask non-assistant turns.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|im_start|>assistant\n' }}{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\n' }}"
    "{% else %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def _corpus(extra_text: str | None) -> list[str]:
    base = [
        "The quick brown fox jumps over the lazy dog.",
        "def add(a, b):\n    return a + b\n",
        "Solve 2x + 3 = 7. The answer is x = 2.",
        "Write a short poem about the sea and the sky.",
        "What is the capital of France? Paris is the capital of France.",
        "0 1 2 3 4 5 6 7 8 9 + - * / = ( ) [ ] { } < > : ; , . ! ? ' \" # @ $ % ^ & | \\ ~ `",
    ]
    if extra_text:
        base.append(extra_text)
    return base * 4


def build_tiny_model(
    output: str | Path,
    *,
    vocab_size: int = 1024,
    hidden_size: int = 128,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 256,
    max_position_embeddings: int = 2048,
    seed: int = 0,
    training_text: str | None = None,
    architecture: Literal["qwen2", "llama"] = "qwen2",
) -> Path:
    """Write a random-init Qwen2 (or Llama) causal LM with a byte-level BPE tokenizer to ``output``.

    Args:
        output: folder to create (overwritten files inside).
        vocab_size: most tokenizer entries (the model gets exactly as many rows as the tokenizer).
        hidden_size: model width; ``hidden_size / num_heads`` must be a vLLM head size (32, 64, ...).
        num_layers: transformer blocks.
        num_heads: attention heads.
        num_kv_heads: key/value heads (grouped-query attention).
        intermediate_size: MLP width.
        max_position_embeddings: context length.
        seed: torch seed for the weights, so the same arguments give the same model.
        training_text: extra text to train the tokenizer on.
        architecture: ``qwen2`` (biased q/k/v projections) or ``llama``.

    Returns:
        The output folder.
    """
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import (
        LlamaConfig,
        LlamaForCausalLM,
        PreTrainedTokenizerFast,
        Qwen2Config,
        Qwen2ForCausalLM,
    )

    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=_SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(training_text), trainer=trainer)
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        bos_token=None,
        unk_token=None,
        additional_special_tokens=["<|im_start|>"],
    )
    hf_tok.chat_template = CHAT_TEMPLATE
    hf_tok.model_max_length = max_position_embeddings
    hf_tok.save_pretrained(out)

    torch.manual_seed(seed)
    config_cls, model_cls = (
        (LlamaConfig, LlamaForCausalLM) if architecture == "llama" else (Qwen2Config, Qwen2ForCausalLM)
    )
    config = config_cls(
        vocab_size=len(hf_tok),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=True,
        eos_token_id=int(hf_tok.convert_tokens_to_ids("<|im_end|>")),  # type: ignore[arg-type]
        pad_token_id=int(hf_tok.convert_tokens_to_ids("<|endoftext|>")),  # type: ignore[arg-type]
        bos_token_id=None,
        # A wide init gives decisive logits, so greedy decoding has no near-ties that float
        # noise between engines could flip.
        initializer_range=0.2,
    )
    model = model_cls(config)
    model.generation_config.eos_token_id = config.eos_token_id
    model.generation_config.pad_token_id = config.pad_token_id
    model.save_pretrained(out)
    return out

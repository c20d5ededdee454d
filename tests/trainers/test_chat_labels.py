"""Assistant-only labels on real chat templates (SmolLM2's, Qwen2.5's, Llama 3's), no generation markers."""

from __future__ import annotations

from pathlib import Path

import pytest

from forge_train.chat_labels import IGNORE, tokenize_chat

CONVERSATION = [
    {"role": "system", "content": "You answer in one short sentence."},
    {"role": "user", "content": "What is 12 times 7?"},
    {"role": "assistant", "content": "12 times 7 is 84."},
    {"role": "user", "content": "And 84 divided by 4?"},
    {"role": "assistant", "content": "84 divided by 4 is 21."},
]


@pytest.fixture(scope="module")
def smollm2_tokenizer(real_model_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(real_model_dir)


def _trl_template(name: str) -> str:
    import trl

    return (Path(trl.__file__).parent / "chat_templates" / f"{name}.jinja").read_text()


def _learned(tokenizer, out) -> list[str]:
    """The learned tokens, split into runs of consecutive labelled positions, decoded."""
    runs: list[list[int]] = []
    previous = IGNORE
    for token, label in zip(out["input_ids"], out["labels"], strict=True):
        if label != IGNORE:
            if previous == IGNORE:
                runs.append([])
            runs[-1].append(token)
        previous = label
    return [tokenizer.decode(run) for run in runs]


def test_every_prompt_token_is_masked_on_smollm2(smollm2_tokenizer) -> None:
    tok = smollm2_tokenizer
    assert "{% generation %}" not in tok.chat_template  # the real template has no markers
    out = tokenize_chat(tok, CONVERSATION)
    assert (
        out["input_ids"]
        == tok(tok.apply_chat_template(CONVERSATION, tokenize=False), add_special_tokens=False)["input_ids"]
    )
    assert _learned(tok, out) == ["12 times 7 is 84.<|im_end|>\n", "84 divided by 4 is 21.<|im_end|>\n"]
    # Every token before the first answer (system, user, role headers) is -100.
    prompt = tok.apply_chat_template(CONVERSATION[:2], tokenize=False, add_generation_prompt=True)
    n_prompt = len(tok(prompt, add_special_tokens=False)["input_ids"])
    assert n_prompt > 10
    assert all(label == IGNORE for label in out["labels"][:n_prompt])
    assert out["labels"][n_prompt] == out["input_ids"][n_prompt]


@pytest.mark.parametrize(
    ("template", "answers"),
    [
        ("qwen2_5", ["12 times 7 is 84.<|im_end|>\n", "84 divided by 4 is 21.<|im_end|>\n"]),
        ("llama3", ["12 times 7 is 84.<|eot_id|>", "84 divided by 4 is 21.<|eot_id|>"]),
    ],
)
def test_other_real_templates(smollm2_tokenizer, template: str, answers: list[str]) -> None:
    import copy

    # SmolLM2's vocabulary with the family's special tokens added, as the real tokenizers have them.
    tok = copy.deepcopy(smollm2_tokenizer)
    specials = ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
    tok.add_special_tokens({"additional_special_tokens": specials})
    tok.chat_template = _trl_template(template)
    assert "{% generation %}" not in tok.chat_template
    out = tokenize_chat(tok, CONVERSATION)
    assert _learned(tok, out) == answers
    # The role headers and the user's words are never learned.
    assert "user" not in "".join(_learned(tok, out)) and "assistant" not in "".join(_learned(tok, out))

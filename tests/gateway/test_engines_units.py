"""Fast unit tests of the engines' shared pieces: stop-string streaming, sampling, request checks."""

from __future__ import annotations

import pytest

from forge_gateway.engines import EngineRequest, SamplingOptions
from forge_gateway.engines._common import StopChecker, check_request
from forge_sdk.errors import ContextLengthExceededError, EngineUnavailableError, InvalidRequestError


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory):
    from transformers import AutoTokenizer

    from forge_gateway.tiny_model import build_tiny_model

    return AutoTokenizer.from_pretrained(build_tiny_model(tmp_path_factory.mktemp("tok")))


def stream(tokenizer, text: str, stop: tuple[str, ...]) -> tuple[list[str], bool]:
    """Feed ``text`` one token at a time; return the deltas and whether a stop string hit."""
    checker = StopChecker(tokenizer, stop)
    deltas = []
    for tid in tokenizer.encode(text, add_special_tokens=False):
        deltas.append(checker.push([tid]))
        if checker.stopped:
            return deltas, True
    deltas.append(checker.push([], final=True))
    return deltas, False


def test_stop_string_is_cut_and_never_leaks(tokenizer) -> None:
    text = "The quick brown fox jumps over the lazy dog."
    deltas, stopped = stream(tokenizer, text, ("over the",))
    assert stopped
    assert "".join(deltas) == "The quick brown fox jumps "
    # No delta ever carried a piece of the stop string that later had to be taken back.
    assert all("ov" not in d for d in deltas)


def test_earliest_of_several_stop_strings_wins(tokenizer) -> None:
    deltas, stopped = stream(tokenizer, "Solve 2x + 3 = 7. The answer is x = 2.", ("answer", "+ 3"))
    assert stopped and "".join(deltas) == "Solve 2x "


def test_partial_stop_prefix_is_released_at_the_end(tokenizer) -> None:
    # "Paris" starts like the stop string "Parisian" but never completes it: all text must come out.
    deltas, stopped = stream(tokenizer, "What is the capital of France? Paris", ("Parisian",))
    assert not stopped
    assert "".join(deltas) == "What is the capital of France? Paris"


def _seq(**sampling):
    from forge_gateway.engines._tf_batch import Seq, make_generator

    opts = SamplingOptions(max_tokens=4, **sampling)
    return Seq(
        request=EngineRequest("r", [1], opts),
        post=None,
        stopper=None,  # type: ignore[arg-type]
        generator=make_generator(opts.seed) if opts.temperature > 0 else None,
    )


def test_sampling_penalties_follow_openai_semantics() -> None:
    import torch

    from forge_gateway.engines._tf_batch import sample_next

    logits = torch.tensor([0.0, 1.0, 0.0, 3.0, 0.0, 2.5])
    seq = _seq(temperature=0.0)
    assert sample_next(logits, seq) == 3
    seq.generated = [3]
    assert sample_next(logits, seq) == 3  # no penalty asked
    seq = _seq(temperature=0.0, frequency_penalty=0.4)
    seq.generated = [3, 3]  # 3.0 - 2 * 0.4 = 2.2 < 2.5
    assert sample_next(logits, seq) == 5
    seq = _seq(temperature=0.0, presence_penalty=0.6)
    seq.generated = [3]  # 3.0 - 0.6 = 2.4 < 2.5
    assert sample_next(logits, seq) == 5


def test_seeded_sampling_and_top_p() -> None:
    import torch

    from forge_gateway.engines._tf_batch import sample_next

    logits = torch.zeros(50)
    draws_a = [sample_next(logits, s) for s in [_seq(temperature=1.0, seed=7)] for _ in range(20)]
    draws_b = [sample_next(logits, s) for s in [_seq(temperature=1.0, seed=7)] for _ in range(20)]
    assert draws_a == draws_b and len(set(draws_a)) > 1
    peaked = torch.tensor([5.0, 4.9] + [0.0] * 48)
    # p = (0.45, 0.41, 0.003 x 48): top_p 0.4 keeps only token 0, 0.5 keeps tokens 0 and 1.
    seq = _seq(temperature=1.0, top_p=0.4, seed=3)
    assert {sample_next(peaked, seq) for _ in range(50)} == {0}
    seq = _seq(temperature=1.0, top_p=0.5, seed=3)
    assert {sample_next(peaked, seq) for _ in range(50)} == {0, 1}


def test_check_request_errors() -> None:
    ok = EngineRequest("r", [1, 2, 3], SamplingOptions(max_tokens=5))
    check_request(ok, started=True, max_model_len=8, vocab_size=10)
    with pytest.raises(ContextLengthExceededError):
        check_request(ok, started=True, max_model_len=7, vocab_size=10)
    with pytest.raises(EngineUnavailableError):
        check_request(ok, started=False, max_model_len=8, vocab_size=10)
    for bad in (
        EngineRequest("r", [], SamplingOptions(max_tokens=5)),
        EngineRequest("r", [1, 10], SamplingOptions(max_tokens=5)),
        EngineRequest("r", [1], SamplingOptions(max_tokens=0)),
        EngineRequest("r", [1], SamplingOptions(max_tokens=1, temperature=-1)),
        EngineRequest("r", [1], SamplingOptions(max_tokens=1, top_p=0)),
    ):
        with pytest.raises(InvalidRequestError):
            check_request(bad, started=True, max_model_len=8, vocab_size=10)

"""Distillation (SDD §8.1) on tiny models: the loss, training towards the teacher, errors."""

from __future__ import annotations

import argparse
import itertools
import json

import pytest

from forge_sdk.errors import ConfigurationError, DataError, ModelError

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def rows(shared_data):
    """Real chat rows from the shared SFT set: ``rows(start, n)``."""
    with open(shared_data / "sft_alpaca_2k.jsonl") as fh:
        lines = list(itertools.islice(fh, 0, 1100))

    def take(start: int, n: int) -> list[dict]:
        return [{"messages": json.loads(line)["messages"]} for line in lines[start : start + n]]

    return take


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from forge_gateway.tiny_model import build_tiny_model

    root = tmp_path_factory.mktemp("distill")
    teacher = build_tiny_model(root / "teacher", seed=1, num_layers=2)
    student = build_tiny_model(root / "student", seed=2, num_layers=1)
    return teacher, student, root


def _config(teacher, student, out, **kw):
    from forge_train.distill import DistillConfig

    base = dict(
        teacher_model=str(teacher),
        student_model=str(student),
        output_dir=str(out),
        max_seq_length=64,
        batch_size=4,
        logging_steps=2,
        save_steps=1000,
        seed=0,
    )
    base.update(kw)
    return DistillConfig(**base)


def _mean_kl(distiller, student_model, records) -> float:
    """Token-mean KL(teacher ‖ student) at tau=1 on held-out records."""
    batch = distiller._collate(list(distiller._tokenize(records)))
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    with torch.no_grad():
        s = student_model(**inputs).logits
        t = distiller.teacher(**inputs).logits
    saved = distiller.config.temperature, distiller.config.alpha
    distiller.config.temperature, distiller.config.alpha = 1.0, 1.0
    try:
        _, parts = distiller.distillation_loss(s, t, batch["labels"], return_parts=True)
    finally:
        distiller.config.temperature, distiller.config.alpha = saved
    return parts["kl"]


def test_loss_matches_definition(models, tmp_path):
    import torch.nn.functional as F  # noqa: N812

    from forge_train.distill import Distiller

    teacher, student, _ = models
    d = Distiller(_config(teacher, student, tmp_path, temperature=2.0, alpha=0.3))
    d.vocab_size = 11
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(2, 5, 11, generator=g), torch.randn(2, 5, 11, generator=g)
    labels = torch.randint(0, 11, (2, 5), generator=g)
    labels[1, 3:] = -100
    loss, parts = d.distillation_loss(s, t, labels, return_parts=True)

    mask = labels[:, 1:] != -100
    ss, tt = s[:, :-1][mask], t[:, :-1][mask]
    kl = F.kl_div(
        F.log_softmax(ss / 2, -1), F.log_softmax(tt / 2, -1), log_target=True, reduction="batchmean"
    )
    ce = F.cross_entropy(ss, labels[:, 1:][mask])
    torch.testing.assert_close(loss, 0.3 * 4 * kl + 0.7 * ce)
    assert parts["tokens"] == int(mask.sum())
    # Logits at masked positions do not matter; identical logits give zero KL.
    s2 = s.clone()
    s2[1, 2:] += 5.0
    torch.testing.assert_close(d.distillation_loss(s2, t, labels), loss)
    assert d.distillation_loss(t, t, labels, return_parts=True)[1]["kl"] == pytest.approx(0.0, abs=1e-6)


def test_alpha_one_pulls_student_towards_teacher(models, rows):
    from forge_train.distill import Distiller

    teacher, student, root = models
    cfg = _config(
        teacher,
        student,
        root / "full",
        alpha=1.0,
        temperature=2.0,
        use_lora=False,
        learning_rate=3e-3,
        max_steps=30,
        max_seq_length=128,  # the loss is on answers only: keep them within the window
    )
    d = Distiller(cfg)
    d.load_models()
    held_out = rows(1000, 8)
    before = _mean_kl(d, d.student, held_out)
    trained = d.train(rows(0, 64))
    after = _mean_kl(d, trained, held_out)
    losses = [e["loss"] for e in d.trainer.state.log_history if "loss" in e]
    print(f"KL(teacher||student) before={before:.4f} after={after:.4f}; losses {losses}")
    assert after < 0.7 * before, (before, after)
    assert sum(losses[-3:]) / 3 < 0.8 * sum(losses[:3]) / 3, losses
    assert (root / "full" / "model.safetensors").is_file()
    assert not any(p.requires_grad for p in d.teacher.parameters())


def test_command_trains_lora_student(models, rows):
    from forge_sdk.plugins import collect, get_plugin_manager
    from forge_train import distill

    teacher, student, root = models
    data = root / "data.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows(0, 16)))
    pm = get_plugin_manager(load_entrypoints=False, plugins=[distill])
    cmd = collect(pm, "register_training_methods", key=lambda c: c.name)["distill"]
    parser = argparse.ArgumentParser()
    cmd.add_arguments(parser)
    out = root / "lora"
    args = parser.parse_args(
        [
            "--teacher",
            str(teacher),
            "--student",
            str(student),
            "--dataset",
            str(data),
            "--output",
            str(out),
            "--max-steps",
            "4",
            "--max-seq-length",
            "48",
            "--logging-steps",
            "1",
            "--temperature",
            "1.5",
            "--alpha",
            "0.7",
            "--register",
            "distilled-tiny",
            "--registry",
            str(root / "experts.json"),
        ]
    )
    result = cmd().run(args)
    assert result.metrics["steps"] == 4
    assert (out / "adapter_config.json").is_file() and (out / "tokenizer.json").is_file()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["method"] == "distill" and manifest["global_step"] == 4
    assert "distilled-tiny" in (root / "experts.json").read_text()


def test_vocab_mismatch_and_bad_input(models, tmp_path):
    from forge_gateway.tiny_model import build_tiny_model
    from forge_train.distill import DistillConfig, Distiller, train_distill

    teacher, student, _ = models
    other = build_tiny_model(tmp_path / "other", vocab_size=300)
    with pytest.raises(ModelError, match="different vocabularies"):
        Distiller(_config(other, student, tmp_path)).load_models()
    with pytest.raises(ConfigurationError):
        DistillConfig(teacher_model="t", output_dir="o")
    with pytest.raises(ConfigurationError, match="differ"):
        DistillConfig(teacher_model="t", model_name="a", student_model="b", output_dir="o")
    with pytest.raises(DataError, match="not found"):
        train_distill(_config(teacher, student, tmp_path), tmp_path / "missing.jsonl")
    with pytest.raises(DataError, match="record 0"):
        train_distill(_config(teacher, student, tmp_path), [{"foo": "bar"}])


def test_forge_train_distill_cli_vocab_mismatch(models, tmp_path):
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    from forge_gateway.tiny_model import build_tiny_model

    exe = shutil.which("forge-train") or str(Path(sys.executable).with_name("forge-train"))
    if not Path(exe).exists():
        pytest.skip("forge-train console script not installed")
    teacher, _, _ = models
    other = build_tiny_model(tmp_path / "other", vocab_size=300)
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"text": "hello world"}) + "\n")
    proc = subprocess.run(
        [
            exe,
            "distill",
            "--teacher",
            str(teacher),
            "--student",
            str(other),
            "--dataset",
            str(data),
            "--output",
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1
    assert "different vocabularies" in proc.stderr and "Traceback" not in proc.stderr


def test_chunked_loss_and_gradients_match_one_pass(models, tmp_path, monkeypatch):
    """Chunks (recomputed in backward) give the loss and gradients of one full-vocabulary pass."""
    import forge_train.distill as distill_mod
    from forge_train.distill import Distiller

    teacher, student, _ = models
    d = Distiller(_config(teacher, student, tmp_path, temperature=2.0, alpha=0.5))
    d.vocab_size = 13
    g = torch.Generator().manual_seed(1)
    s0, t = torch.randn(3, 6, 13, generator=g), torch.randn(3, 6, 13, generator=g)
    labels = torch.randint(0, 13, (3, 6), generator=g)
    labels[2, 4:] = -100
    grads = []
    for chunk in (10_000, 2):
        monkeypatch.setattr(distill_mod, "KL_CHUNK", chunk)
        s = s0.clone().requires_grad_(True)
        loss = d.distillation_loss(s, t, labels)
        loss.backward()
        grads.append((loss.detach(), s.grad.clone()))
    torch.testing.assert_close(grads[0][0], grads[1][0])
    torch.testing.assert_close(grads[0][1], grads[1][1])


def test_gradient_accumulation_scales_by_the_steps_token_count(models, tmp_path):
    """Two micro-batches divided by the step's token count add up to the loss of one big batch."""
    from forge_train.distill import Distiller

    teacher, student, _ = models
    d = Distiller(_config(teacher, student, tmp_path))
    d.vocab_size = 11
    g = torch.Generator().manual_seed(2)
    s, t = torch.randn(4, 7, 11, generator=g), torch.randn(4, 7, 11, generator=g)
    labels = torch.randint(0, 11, (4, 7), generator=g)
    labels[0, 2:] = -100  # micro-batches with very different token counts
    whole = d.distillation_loss(s, t, labels)
    n = int((labels[:, 1:] != -100).sum())
    halves = sum(
        d.distillation_loss(s[i : i + 2], t[i : i + 2], labels[i : i + 2], num_items_in_batch=n)
        for i in (0, 2)
    )
    torch.testing.assert_close(halves, whole)


def test_chat_records_learn_answers_only(models, tmp_path):
    from forge_train.distill import Distiller

    teacher, student, _ = models
    d = Distiller(_config(teacher, student, tmp_path, max_seq_length=256))
    d.load_models()
    record = {
        "messages": [
            {"role": "user", "content": "Name a fruit."},
            {"role": "assistant", "content": "A pear."},
        ]
    }
    row = d._tokenize([record, {"text": "plain text is learned whole"}])
    learned = [t for t, y in zip(row[0]["input_ids"], row[0]["labels"], strict=True) if y != -100]
    assert d.tokenizer.decode(learned).startswith("A pear.")
    assert "fruit" not in d.tokenizer.decode(learned)
    assert row[1]["labels"] == row[1]["input_ids"]

"""Knowledge distillation (SDD §8.1): train a student on a frozen teacher's soft targets.

``L = alpha·τ²·KL(softmax(z_t/τ) ‖ softmax(z_s/τ)) + (1-alpha)·CE(z_s, labels)``, both averaged over the
tokens that carry a label. TRL's DistillationTrainer is on-policy (GKD) only, so this offline,
logit-matching trainer is ours: a transformers ``Trainer`` whose ``compute_loss`` runs the teacher
under ``no_grad``. Entry-point module ``train_distill`` (``forge-train distill``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Annotated, Any, ClassVar

from msgspec import Meta

from forge_sdk import TrainingMethod, TrainingResult, hookimpl
from forge_sdk.errors import ConfigurationError, DataError, ModelError, TrainingError
from forge_train.config import BaseTrainingConfig, LoraConfig

__all__ = ["DistillCommand", "DistillConfig", "Distiller", "load_text_records", "train_distill"]


class DistillConfig(BaseTrainingConfig, forbid_unknown_fields=True, kw_only=True):
    """Distillation settings (SDD §5.2 ``DistillConfig``). ``model_name`` is the student."""

    teacher_model: str
    """Teacher model folder or hub id; it must share the student's tokenizer vocabulary."""
    model_name: str = ""
    """Student model (same as ``student_model``; give either)."""
    student_model: str = ""
    """Student model folder or hub id (alias of ``model_name``)."""
    temperature: Annotated[float, Meta(gt=0)] = 2.0
    """Softmax temperature τ for the soft targets; the KL term is scaled by τ²."""
    alpha: Annotated[float, Meta(ge=0.0, le=1.0)] = 0.5
    """Weight alpha of the distillation term; 1 - alpha weighs the cross-entropy on the labels."""

    def __post_init__(self) -> None:
        if self.model_name and self.student_model and self.model_name != self.student_model:
            raise ConfigurationError(
                f"model_name {self.model_name!r} and student_model {self.student_model!r} differ: give one"
            )
        student = self.model_name or self.student_model
        if not student:
            raise ConfigurationError("DistillConfig needs a student model (student_model or model_name)")
        self.model_name = self.student_model = student
        if self.load_in_4bit:
            raise ConfigurationError(
                "load_in_4bit is not supported for distillation (the student trains in full precision)"
            )


def load_text_records(dataset: Any) -> list[dict[str, Any]]:
    """Normalise a dataset argument to a list of record dicts.

    Accepts a ``datasets.Dataset``, a list of dicts, or a JSON/JSONL file path. Records hold
    ``messages`` (chat), ``text``, or ``prompt`` + ``response``/``completion``.

    Raises:
        DataError: the file is missing or malformed, or it holds no records.
    """
    if isinstance(dataset, (str, Path)):
        path = Path(dataset)
        if not path.is_file():
            raise DataError(f"dataset file not found: {path}")
        raw = path.read_text(encoding="utf-8")
        try:
            if path.suffix == ".json":
                records = json.loads(raw)
            else:
                records = [json.loads(line) for line in raw.splitlines() if line.strip()]
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: not valid JSON/JSONL ({exc.msg} at line {exc.lineno})") from exc
    else:
        records = list(dataset)
    if not records:
        raise DataError("the distillation dataset is empty")
    return records


KL_CHUNK = 1024
"""Labelled positions per chunk of the KL / CE computation (bounds the float32 softmax copies)."""


def _chunk_terms(s: Any, t: Any, y: Any, tau: float) -> tuple[Any, Any]:
    """Summed KL(p_t ‖ p_s) at temperature ``tau`` and summed CE of one chunk of positions."""
    import torch.nn.functional as F  # noqa: N812

    s32, t32 = s.float(), t.float()
    log_p_s = F.log_softmax(s32 / tau, dim=-1)
    log_p_t = F.log_softmax(t32 / tau, dim=-1)
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum()
    ce = F.cross_entropy(s32, y, reduction="sum")
    return kl, ce


def _record_messages(record: Any, index: int) -> list[dict[str, str]] | None:
    if not isinstance(record, dict):
        raise DataError(f"record {index}: expected an object, got {type(record).__name__}")
    messages = record.get("messages")
    if messages is None and isinstance(record.get("prompt"), str):
        answer = record.get("response", record.get("completion"))
        if isinstance(answer, str):
            messages = [
                {"role": "user", "content": record["prompt"]},
                {"role": "assistant", "content": answer},
            ]
    return messages if isinstance(messages, list) and messages else None


def _record_text(record: dict[str, Any], tokenizer: Any, index: int) -> str:
    messages = _record_messages(record, index)
    if messages:
        if getattr(tokenizer, "chat_template", None):
            return tokenizer.apply_chat_template(messages, tokenize=False)
        return "\n".join(f"{m['role']}: {m['content']}" for m in messages)
    if isinstance(record.get("text"), str) and record["text"].strip():
        return record["text"]
    raise DataError(f"record {index}: needs 'messages', 'text', or 'prompt' + 'response'")


class Distiller:
    """Teacher → student distillation (SDD §5.2 ``Distiller``).

    Example:
        >>> cfg = DistillConfig(teacher_model="big", student_model="small", output_dir="out")
        >>> student = Distiller(cfg).train(load_text_records("data.jsonl"))  # doctest: +SKIP
    """

    def __init__(self, config: DistillConfig) -> None:
        """Keep the config; models load lazily in :meth:`load_models`."""
        self.config = config
        self.teacher: Any = None
        self.student: Any = None
        self.tokenizer: Any = None
        self.vocab_size: int = 0
        self.trainer: Any = None

    def load_models(self) -> None:
        """Load the frozen teacher, the student (LoRA-wrapped if ``use_lora``) and the tokenizer.

        Raises:
            ModelError: a model cannot be loaded, or teacher and student vocabularies differ.
        """
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        cfg = self.config

        def load(name: str, role: str):
            from forge_sdk.models import resolve_model

            name = resolve_model(name)  # a catalogue name or GGUF file: its converted folder
            try:
                return AutoTokenizer.from_pretrained(name), AutoModelForCausalLM.from_pretrained(
                    name, dtype="auto"
                )
            except (OSError, ValueError) as exc:
                raise ModelError(f"cannot load {role} model {name!r}: {exc}") from exc

        t_tok, teacher = load(cfg.teacher_model, "teacher")
        s_tok, student = load(cfg.model_name, "student")
        if t_tok.get_vocab() != s_tok.get_vocab():
            raise ModelError(
                f"teacher {cfg.teacher_model!r} ({len(t_tok)} tokens) and student {cfg.model_name!r} "
                f"({len(s_tok)} tokens) have different vocabularies; distillation matches logits token "
                "by token, so both must use the same tokenizer"
            )
        # Checkpoints of one family often pad the embedding matrix to different sizes; only the
        # tokenizer's ids are ever produced, so the logits are compared on those.
        self.vocab_size = len(s_tok)
        for role, model in (("teacher", teacher), ("student", student)):
            if model.get_output_embeddings().weight.shape[0] < self.vocab_size:
                raise ModelError(f"the {role} has fewer output logits than its tokenizer has tokens")
        if s_tok.pad_token is None:
            s_tok.pad_token = s_tok.eos_token
        teacher.eval()
        teacher.requires_grad_(False)
        torch.manual_seed(cfg.seed)
        if cfg.use_lora:
            from peft import LoraConfig as PeftLoraConfig
            from peft import get_peft_model

            lora: LoraConfig = cfg.lora
            student = get_peft_model(
                student,
                PeftLoraConfig(
                    r=lora.r,
                    lora_alpha=lora.lora_alpha,
                    lora_dropout=lora.lora_dropout,
                    target_modules=lora.target_modules,
                    task_type="CAUSAL_LM",
                ),
            )
        self.teacher, self.student, self.tokenizer = teacher, student, s_tok

    def distillation_loss(
        self,
        s_logits: Any,
        t_logits: Any,
        labels: Any,
        *,
        num_items_in_batch: Any = None,
        return_parts: bool = False,
    ) -> Any:
        """``alpha·τ²·KL(p_t ‖ p_s) + (1-alpha)·CE`` over the tokens whose label is not -100.

        Logits at position ``i`` predict token ``i+1`` (the causal-LM shift), so both terms use
        ``logits[:, :-1]`` against ``labels[:, 1:]``. Only labelled positions are scored, in chunks
        of :data:`KL_CHUNK` rows recomputed in the backward pass (``torch.utils.checkpoint``): the
        float32 softmax copies of a 150k vocabulary never exist for the whole batch at once.

        Args:
            s_logits: student logits ``[batch, seq, vocab]``.
            t_logits: teacher logits, same shape (extra padded vocab columns are ignored).
            labels: token ids ``[batch, seq]``, -100 where no loss applies (padding, masked prompt).
            num_items_in_batch: labelled tokens of the whole optimizer step (all gradient
                accumulation micro-batches), as ``Trainer`` passes it; sums are divided by it, so
                accumulated micro-batches add up to the mean over the step. None: this batch's count.
            return_parts: also return ``{"kl": ..., "ce": ..., "tokens": ...}`` (detached).

        Returns:
            The scalar loss, or ``(loss, parts)``.
        """
        import torch
        from torch.utils.checkpoint import checkpoint

        tau, alpha = self.config.temperature, self.config.alpha
        vocab = self.vocab_size or s_logits.shape[-1]
        target = labels[:, 1:]
        keep = target != -100
        s = s_logits[:, :-1, :vocab][keep]
        t = t_logits[:, :-1, :vocab][keep].detach()
        y = target[keep]
        count = int(keep.sum())
        denom = torch.as_tensor(num_items_in_batch if num_items_in_batch is not None else count).clamp(min=1)
        kl_sum = s.sum() * 0.0  # a zero that keeps the graph when no token is labelled
        ce_sum = s.sum() * 0.0
        for start in range(0, count, KL_CHUNK):
            part = slice(start, start + KL_CHUNK)
            kl_c, ce_c = checkpoint(_chunk_terms, s[part], t[part], y[part], tau, use_reentrant=False)
            kl_sum = kl_sum + kl_c
            ce_sum = ce_sum + ce_c
        kl = kl_sum / denom.to(kl_sum.device)
        ce = ce_sum / denom.to(ce_sum.device)
        loss = alpha * tau**2 * kl + (1.0 - alpha) * ce
        if return_parts:
            # Reported per token of this batch, whatever the accumulation.
            n = max(count, 1)
            return loss, {"kl": float(kl_sum.detach()) / n, "ce": float(ce_sum.detach()) / n, "tokens": count}
        return loss

    def _tokenize(self, records: list[dict[str, Any]]) -> Any:
        from datasets import Dataset

        from forge_train.chat_labels import tokenize_chat

        limit = self.config.max_seq_length
        ids: list[list[int]] = []
        labels: list[list[int]] = []
        for i, record in enumerate(records):
            messages = _record_messages(record, i)
            if messages is not None and getattr(self.tokenizer, "chat_template", None):
                # Chat data: the loss is on the assistant turns only, as in SFT (prompt tokens -100).
                row = tokenize_chat(self.tokenizer, messages)
                ids.append(row["input_ids"][:limit])
                labels.append(row["labels"][:limit])
            else:
                text = _record_text(record, self.tokenizer, i)
                tokens = self.tokenizer(text, add_special_tokens=False)["input_ids"][:limit]
                ids.append(tokens)
                labels.append(list(tokens))
        # A record whose answer was cut off entirely carries no loss: drop it rather than spend a
        # forward pass of both models on a zero.
        kept = [k for k, row in enumerate(labels) if any(y != -100 for y in row[1:])]
        if not kept:
            raise DataError(f"no record has answer tokens within max_seq_length={limit}; raise --max-length")
        return Dataset.from_dict({"input_ids": [ids[k] for k in kept], "labels": [labels[k] for k in kept]})

    def _collate(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        width = max(len(f["input_ids"]) for f in features)
        pad = self.tokenizer.pad_token_id
        ids = torch.full((len(features), width), pad, dtype=torch.long)
        attn = torch.zeros((len(features), width), dtype=torch.long)
        labels = torch.full((len(features), width), -100, dtype=torch.long)
        for row, f in enumerate(features):
            n = len(f["input_ids"])
            ids[row, :n] = torch.tensor(f["input_ids"])
            attn[row, :n] = 1
            labels[row, :n] = torch.tensor(f.get("labels", f["input_ids"]))
        return {"input_ids": ids, "attention_mask": attn, "labels": labels}

    def train(self, dataset: Any) -> Any:
        """Distil the teacher into the student on ``dataset`` and save the student.

        Args:
            dataset: records (see :func:`load_text_records`): a ``datasets.Dataset``, a list of
                dicts, or a JSON/JSONL path.

        Returns:
            The trained student (a PEFT model when ``use_lora``), also saved to ``output_dir``
            with the tokenizer.

        Raises:
            DataError: bad records.
            TrainingError: the loss became non-finite.
        """
        from transformers import TrainingArguments

        from forge_train.runner import common_training_args, run_training

        if self.student is None:
            self.load_models()
        cfg = self.config
        train_ds = self._tokenize(load_text_records(dataset))

        def factory(batch_size: int, grad_accum: int, callbacks: list[Any]) -> Any:
            targs = common_training_args(cfg, batch_size, grad_accum)
            targs.pop("max_length", None)  # a TRL option; plain TrainingArguments rejects it
            targs.update(remove_unused_columns=False, disable_tqdm=True)
            return _trainer_class()(
                distiller=self,
                model=self.student,
                args=TrainingArguments(**targs),
                train_dataset=train_ds,
                data_collator=self._collate,
                processing_class=self.tokenizer,
                callbacks=callbacks,
            )

        # The shared runner gives distillation what every method has: resume, OOM back-off,
        # a checkpoint on SIGINT, manifest/metrics/loss plot, and --register.
        self.trainer = run_training(cfg, "distill", factory)
        losses = [e["loss"] for e in self.trainer.state.log_history if "loss" in e]
        if losses and not all(map(_finite, losses)):
            raise TrainingError(f"distillation diverged (loss {losses[-1]}); lower the learning rate")
        return self.student


def _finite(x: float) -> bool:
    return x == x and abs(x) != float("inf")


def _trainer_class() -> type:
    # Built on first use so importing this module never imports transformers.
    import torch
    from transformers import Trainer

    class DistillationTrainer(Trainer):
        """A Trainer whose loss is the Distiller's; the teacher runs frozen under no_grad."""

        def __init__(self, *args: Any, distiller: Distiller, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.distiller = distiller
            self.last_parts: dict[str, float] = {}

        # The loss divides by the step's labelled-token count (``num_items_in_batch``), so the
        # accumulated micro-batches already add up to the step's mean: no further division.
        loss_is_scaled_for_ga = True

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            labels = inputs["labels"]
            batch = {"input_ids": inputs["input_ids"], "attention_mask": inputs["attention_mask"]}
            outputs = model(**batch)
            teacher = self.distiller.teacher
            device = inputs["input_ids"].device
            if next(teacher.parameters()).device != device:
                teacher.to(device)
            with torch.no_grad():
                t_logits = teacher(**batch).logits
            if num_items_in_batch is None and model.training:
                # No step-wide count (unusual): approximate the step with this micro-batch's.
                num_items_in_batch = (labels[:, 1:] != -100).sum() * self.args.gradient_accumulation_steps
            loss, self.last_parts = self.distiller.distillation_loss(
                outputs.logits, t_logits, labels, num_items_in_batch=num_items_in_batch, return_parts=True
            )
            return (loss, outputs) if return_outputs else loss

        def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
            if "loss" in logs and self.last_parts:
                logs = {**logs, "kl": self.last_parts["kl"], "ce": self.last_parts["ce"]}
            super().log(logs, *args, **kwargs)

    return DistillationTrainer


def train_distill(config: DistillConfig, dataset: Any = None) -> Any:
    """Distil ``config.teacher_model`` into the student (SDD §7.2 Python API).

    Args:
        config: distillation settings.
        dataset: records, a ``datasets.Dataset`` or a JSON/JSONL path; None reads
            ``config.dataset_path``.

    Returns:
        The trained student model (saved to ``config.output_dir``).
    """
    if dataset is None:
        if not config.dataset_path:
            raise ConfigurationError("no dataset: pass one or set dataset_path")
        dataset = config.dataset_path
    return Distiller(config).train(dataset)


class DistillCommand(TrainingMethod):
    """``forge-train distill``: logit distillation from a teacher into a (LoRA) student."""

    name: ClassVar[str] = "distill"
    help: ClassVar[str] = "distil a teacher into a student: alpha·τ²·KL + (1-alpha)·CE"

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """Flags for the teacher, student, data and hyper-parameters."""
        parser.add_argument("--teacher", required=True, help="teacher model folder or hub id")
        parser.add_argument("--student", required=True, help="student model folder or hub id")
        parser.add_argument(
            "--dataset", required=True, help="JSON/JSONL with messages, text or prompt+response"
        )
        parser.add_argument("--output", required=True, help="output folder for the student")
        parser.add_argument(
            "--temperature", type=float, default=2.0, help="softmax temperature τ (default 2.0)"
        )
        parser.add_argument(
            "--alpha", type=float, default=0.5, help="weight of the KL term alpha (default 0.5)"
        )
        parser.add_argument("--epochs", type=float, default=1.0, help="passes over the data")
        parser.add_argument("--max-steps", type=int, default=-1, help="stop after N steps (-1: epochs)")
        parser.add_argument("--batch-size", type=int, default=4, help="per-device batch size")
        parser.add_argument("--grad-accum", type=int, default=1, help="gradient accumulation steps")
        parser.add_argument("--lr", type=float, default=2e-4, help="learning rate")
        parser.add_argument("--max-seq-length", type=int, default=1024, help="truncate sequences to N tokens")
        parser.add_argument("--seed", type=int, default=42, help="random seed")
        parser.add_argument("--full", action="store_true", help="train all student weights instead of LoRA")
        parser.add_argument("--lora-r", type=int, default=8, help="LoRA rank")
        parser.add_argument("--lora-alpha", type=int, default=16, help="LoRA alpha")
        parser.add_argument(
            "--logging-steps", type=int, default=None, help="log every N steps (default: ceil(steps / 20))"
        )
        parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
        parser.add_argument(
            "--register", default=None, help="add the result to the expert registry under NAME"
        )
        parser.add_argument("--registry", default=None, help="expert registry file (default $FORGE_REGISTRY)")

    def run(self, args: argparse.Namespace) -> TrainingResult:
        """Build a :class:`DistillConfig` from the flags and train."""
        import msgspec

        try:
            config = msgspec.convert(
                {
                    "teacher_model": args.teacher,
                    "student_model": args.student,
                    "dataset_path": args.dataset,
                    "output_dir": args.output,
                    "temperature": args.temperature,
                    "alpha": args.alpha,
                    "num_train_epochs": args.epochs,
                    "max_steps": args.max_steps,
                    "batch_size": args.batch_size,
                    "gradient_accumulation_steps": args.grad_accum,
                    "learning_rate": args.lr,
                    "max_seq_length": args.max_seq_length,
                    "seed": args.seed,
                    "use_lora": not args.full,
                    "lora": {"r": args.lora_r, "lora_alpha": args.lora_alpha},
                    "logging_steps": args.logging_steps,
                    "resume": args.resume,
                    "register": args.register,
                    "registry_path": args.registry,
                },
                DistillConfig,
            )
        except msgspec.ValidationError as exc:
            raise ConfigurationError(f"invalid distill option: {exc}") from exc
        distiller = Distiller(config)
        distiller.train(config.dataset_path)
        history = distiller.trainer.state.log_history
        losses = [e["loss"] for e in history if "loss" in e]
        metrics = {"steps": distiller.trainer.state.global_step}
        if losses:
            metrics.update(first_loss=losses[0], final_loss=losses[-1])
        return TrainingResult(output_dir=config.output_dir, metrics=metrics)


@hookimpl
def register_training_methods(register) -> None:
    """Register ``distill``."""
    register(DistillCommand)

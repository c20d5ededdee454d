"""Synthetic training data (SDD §5.1): template filling and self-instruct from a teacher model.

The teacher is a local transformers model (batched ``generate``) or any OpenAI-compatible
endpoint (``base_url``; concurrent requests with retries), our own gateway included. Output
records are in the messages format that ``forge-train sft`` reads. Entry-point module
``train_synth`` (``forge-train synth``).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import random
import re
import string
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, ClassVar

from msgspec import Meta, Struct

from forge_sdk import TrainingMethod, TrainingResult, hookimpl
from forge_sdk.errors import ConfigurationError, DataError, ModelError, UpstreamError
from forge_train.flags import Flag, add_flags, config_from_args

__all__ = [
    "SyntheticConfig",
    "SyntheticDataGenerator",
    "SynthCommand",
    "fill_template",
    "normalize_text",
    "parse_example",
    "write_jsonl",
]

SELF_INSTRUCT_HEADER = (
    "You write training data for an AI assistant. Here are examples of tasks and ideal answers:\n\n"
)
SELF_INSTRUCT_FOOTER = (
    "Write ONE new task that differs from all the examples above, then answer it. "
    "Use exactly the same format:\n### Instruction:\n<the task>\n### Response:\n<the answer>"
)


class SyntheticConfig(Struct, forbid_unknown_fields=True, kw_only=True):
    """Synthetic data generation settings (SDD §5.1 ``SyntheticConfig``)."""

    model_name: str = ""
    """Teacher: a local model folder / hub id, or the model name sent to ``base_url``
    (default ``"auto"`` there, which our gateway routes)."""
    temperature: Annotated[float, Meta(ge=0.0)] = 0.7
    """Sampling temperature; 0 decodes greedily."""
    max_new_tokens: Annotated[int, Meta(ge=1)] = 256
    """Most tokens generated per sample."""
    num_samples: Annotated[int, Meta(ge=1)] = 100
    """Samples to produce when a call does not say ``n``."""
    batch_size: Annotated[int, Meta(ge=1)] = 8
    """Prompts per local ``generate`` call (and per self-instruct round)."""
    base_url: str | None = None
    """OpenAI-compatible endpoint, e.g. ``http://127.0.0.1:8000/v1``; None uses a local model."""
    api_key: str | None = None
    """Bearer key for ``base_url``."""
    top_p: Annotated[float, Meta(gt=0.0, le=1.0)] = 0.95
    """Nucleus sampling mass."""
    seed: int = 42
    """Seed for template choices, seed-example sampling and generation."""
    concurrency: Annotated[int, Meta(ge=1)] = 8
    """Requests in flight at once against ``base_url``."""
    timeout: Annotated[float, Meta(gt=0)] = 120.0
    """Seconds per endpoint request."""
    max_retries: Annotated[int, Meta(ge=0)] = 3
    """Retries per endpoint request on timeouts, connection errors, 429 and 5xx."""
    system_prompt: str | None = None
    """System message sent before every prompt (and kept in the output records)."""
    examples_per_prompt: Annotated[int, Meta(ge=1)] = 3
    """Seed examples shown to the teacher per self-instruct prompt."""
    show_progress: bool = True
    """Show a tqdm progress bar."""

    def __post_init__(self) -> None:
        if not self.model_name:
            if self.base_url is None:
                raise ConfigurationError("SyntheticConfig needs model_name (a local model) or base_url")
            self.model_name = "auto"


def normalize_text(text: str) -> str:
    """Lower-case, keep letters and digits, collapse the rest: the key for de-duplication."""
    return " ".join(re.sub(r"[^\w]+", " ", text.lower()).split())


def _placeholders(template: str) -> list[str]:
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as exc:
        raise DataError(f"bad template {template!r}: {exc}") from exc
    if any(not f or not f.isidentifier() for f in fields):
        raise DataError(f"template placeholders must be names like {{topic}}: {template!r}")
    return list(dict.fromkeys(fields))


def fill_template(
    template: str, variables: Mapping[str, Sequence[str]], n: int, *, seed: int = 42
) -> list[str]:
    """``n`` prompts from ``template``, its ``{placeholders}`` filled from ``variables``.

    Distinct combinations come first, in a seeded random order; once they run out they repeat
    (reshuffled). The same arguments always give the same list.

    Raises:
        DataError: a placeholder has no values, or the template is malformed.
    """
    fields = _placeholders(template)
    missing = [f for f in fields if not variables.get(f)]
    if missing:
        raise DataError(f"template placeholders without values: {', '.join(missing)}")
    rng = random.Random(seed)
    pools = [list(variables[f]) for f in fields]
    total = 1
    for pool in pools:
        total *= len(pool)
    out: list[str] = []
    if total <= 100_000:
        combos = list(itertools.product(*pools))
        while len(out) < n:
            rng.shuffle(combos)
            out.extend(template.format_map(dict(zip(fields, c, strict=True))) for c in combos[: n - len(out)])
    else:  # too many to enumerate: sample, and distinct draws are near-certain anyway
        out = [
            template.format_map({f: rng.choice(p) for f, p in zip(fields, pools, strict=True)})
            for _ in range(n)
        ]
    return out


def _seed_pair(example: Any, index: int) -> tuple[str, str]:
    if isinstance(example, Mapping):
        if isinstance(example.get("messages"), list):
            msgs = example["messages"]
            user = next(
                (m.get("content") for m in msgs if isinstance(m, Mapping) and m.get("role") == "user"), None
            )
            bot = next(
                (m.get("content") for m in msgs if isinstance(m, Mapping) and m.get("role") == "assistant"),
                None,
            )
            if isinstance(user, str) and isinstance(bot, str):
                return user, bot
        instruction = example.get("instruction", example.get("prompt"))
        response = example.get("response", example.get("output", example.get("completion")))
        if isinstance(instruction, str) and isinstance(response, str):
            extra = example.get("input")
            if isinstance(extra, str) and extra.strip():
                instruction = f"{instruction}\n\n{extra}"
            return instruction, response
    raise DataError(
        f"seed example {index}: needs 'messages' (user + assistant), 'instruction' + 'response'/'output', "
        "or 'prompt' + 'response'"
    )


def parse_example(text: str) -> tuple[str, str] | None:
    """Split a teacher reply into ``(instruction, response)``; None when it is not in the format."""
    body = text.strip()
    body = re.sub(r"^\s*#*\s*Instruction:\s*", "", body, flags=re.IGNORECASE)
    parts = re.split(r"#*\s*Response:\s*", body, maxsplit=1, flags=re.IGNORECASE)
    if len(parts) != 2:
        return None
    instruction = parts[0].strip()
    response = re.split(r"#*\s*Instruction:", parts[1], maxsplit=1, flags=re.IGNORECASE)[0].strip()
    return (instruction, response) if instruction and response else None


def write_jsonl(records: Iterable[Mapping[str, Any]], path: str | Path) -> int:
    """Write records, one JSON object per line; returns how many."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with path.open("w", encoding="utf-8") as fh:
        for record in records:
            fh.write(json.dumps(record, ensure_ascii=False) + "\n")
            count += 1
    return count


class _RetryableStatusError(Exception):
    """A 429 or 5xx answer: worth another try."""


class LocalTeacher:
    """A local transformers causal LM answering prompts in batches."""

    def __init__(self, config: SyntheticConfig) -> None:
        """Load model and tokenizer (left padding, for batched generation).

        Raises:
            ModelError: the model cannot be loaded.
        """
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.config = config
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(config.model_name)
            self.model = AutoModelForCausalLM.from_pretrained(config.model_name, dtype="auto")
        except (OSError, ValueError) as exc:
            raise ModelError(f"cannot load teacher model {config.model_name!r}: {exc}") from exc
        import torch

        if torch.cuda.is_available():
            self.model.to("cuda")
        self.model.eval()
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token

    def _render(self, prompt: str) -> str:
        if not getattr(self.tokenizer, "chat_template", None):
            return prompt
        msgs = [{"role": "system", "content": self.config.system_prompt}] if self.config.system_prompt else []
        msgs.append({"role": "user", "content": prompt})
        return self.tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)

    def complete(self, prompts: list[str], *, first_seed: int, progress: Any = None) -> list[str]:
        """One answer per prompt; batch ``i`` samples with seed ``first_seed + i`` (reproducible)."""
        import torch

        cfg, out = self.config, []
        for start in range(0, len(prompts), cfg.batch_size):
            chunk = [self._render(p) for p in prompts[start : start + cfg.batch_size]]
            enc = self.tokenizer(chunk, return_tensors="pt", padding=True, add_special_tokens=False)
            enc = enc.to(self.model.device)
            torch.manual_seed(first_seed + start)
            sample = cfg.temperature > 0
            with torch.no_grad():
                ids = self.model.generate(
                    **enc,
                    max_new_tokens=cfg.max_new_tokens,
                    do_sample=sample,
                    temperature=cfg.temperature if sample else None,
                    top_p=cfg.top_p if sample else None,
                    pad_token_id=self.tokenizer.pad_token_id,
                )
            out += self.tokenizer.batch_decode(ids[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
            if progress is not None:
                progress.update(len(chunk))
        return out


class EndpointTeacher:
    """An OpenAI-compatible ``/chat/completions`` endpoint, queried concurrently with retries."""

    def __init__(self, config: SyntheticConfig) -> None:
        """Keep the config; a client is opened per :meth:`complete` call."""
        self.config = config

    def complete(self, prompts: list[str], *, first_seed: int, progress: Any = None) -> list[str]:
        """One answer per prompt, in order; request ``i`` carries ``seed = first_seed + i``.

        Raises:
            UpstreamError: a request still failed after the retries, or the answer was malformed.
        """
        return _run_coroutine(self._complete_all(prompts, first_seed, progress))

    async def _complete_all(self, prompts: list[str], first_seed: int, progress: Any) -> list[str]:
        import httpx

        from forge_sdk.retry import RetryPolicy

        cfg = self.config
        policy = RetryPolicy(
            max_retries=cfg.max_retries,
            base_delay=0.5,
            max_delay=10.0,
            retryable=(httpx.TimeoutException, httpx.ConnectError, _RetryableStatusError),
        )
        headers = {"Authorization": f"Bearer {cfg.api_key}"} if cfg.api_key else {}
        url = f"{cfg.base_url.rstrip('/')}/chat/completions"
        gate = asyncio.Semaphore(cfg.concurrency)
        limits = httpx.Limits(max_connections=cfg.concurrency)
        async with httpx.AsyncClient(timeout=cfg.timeout, headers=headers, limits=limits) as client:

            async def one(i: int, prompt: str) -> str:
                msgs = [{"role": "system", "content": cfg.system_prompt}] if cfg.system_prompt else []
                body = {
                    "model": cfg.model_name,
                    "messages": [*msgs, {"role": "user", "content": prompt}],
                    "temperature": cfg.temperature,
                    "top_p": cfg.top_p,
                    "max_tokens": cfg.max_new_tokens,
                    "seed": first_seed + i,
                }

                async def attempt() -> httpx.Response:
                    response = await client.post(url, json=body)
                    if response.status_code == 429 or response.status_code >= 500:
                        raise _RetryableStatusError(f"HTTP {response.status_code}: {response.text[:200]}")
                    return response

                async with gate:
                    try:
                        response = await policy.acall(attempt)
                    except (httpx.HTTPError, _RetryableStatusError) as exc:
                        raise UpstreamError(f"teacher endpoint {url} failed after retries: {exc}") from exc
                if response.status_code >= 400:
                    raise UpstreamError(
                        f"teacher endpoint {url} answered {response.status_code}: {response.text[:300]}"
                    )
                try:
                    content = response.json()["choices"][0]["message"]["content"]
                except (ValueError, KeyError, IndexError, TypeError) as exc:
                    raise UpstreamError(f"teacher endpoint {url} sent a malformed completion") from exc
                if progress is not None:
                    progress.update(1)
                return content or ""

            return list(await asyncio.gather(*(one(i, p) for i, p in enumerate(prompts))))


def _run_coroutine(coro: Any) -> Any:
    """Run ``coro`` to completion from sync code, even when called inside a running event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


class SyntheticDataGenerator:
    """Generate chat training records with a teacher model (SDD §5.1).

    Example:
        >>> gen = SyntheticDataGenerator(SyntheticConfig(base_url="http://127.0.0.1:8000/v1"))
        >>> gen.generate_from_template("Explain {topic} simply.", {"topic": ["DNS", "TLS"]}, n=2)  # doctest: +SKIP
    """

    def __init__(self, config: SyntheticConfig) -> None:
        """Keep the config; the teacher loads lazily (:meth:`load_model`)."""
        self.config = config
        self.teacher: LocalTeacher | EndpointTeacher | None = None
        self.stats: dict[str, int] = {}

    @property
    def model(self) -> Any:
        """The local transformers model (None for an endpoint teacher)."""
        return getattr(self.teacher, "model", None)

    @property
    def tokenizer(self) -> Any:
        """The local tokenizer (None for an endpoint teacher)."""
        return getattr(self.teacher, "tokenizer", None)

    def load_model(self) -> None:
        """Load the local model, or prepare the endpoint client. Idempotent.

        Raises:
            ModelError: the local model cannot be loaded.
        """
        if self.teacher is not None:
            return
        cfg = self.config
        if cfg.base_url:
            self.teacher = EndpointTeacher(cfg)
        else:
            self.teacher = LocalTeacher(cfg)

    def _complete(self, prompts: list[str], progress: Any, first_seed: int) -> list[str]:
        self.load_model()
        assert self.teacher is not None
        return self.teacher.complete(prompts, first_seed=first_seed, progress=progress)

    def _messages(self, prompt: str, response: str) -> dict[str, Any]:
        msgs = [{"role": "system", "content": self.config.system_prompt}] if self.config.system_prompt else []
        msgs += [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
        return {"messages": msgs}

    def generate_from_template(
        self, template: str, variables: Mapping[str, Sequence[str]], n: int | None = None
    ) -> list[dict[str, Any]]:
        """Fill ``template`` ``n`` times and let the teacher answer each prompt.

        Args:
            template: prompt text with ``{placeholders}``.
            variables: values for each placeholder.
            n: records wanted (default ``config.num_samples``).

        Returns:
            Up to ``n`` ``{"messages": [...]}`` records (empty answers are retried once, then dropped).
        """
        n = n or self.config.num_samples
        prompts = fill_template(template, variables, n, seed=self.config.seed)
        progress = _progress(n, self.config.show_progress, "synth")
        try:
            replies = self._complete(prompts, progress, self.config.seed)
            empty = [i for i, r in enumerate(replies) if not r.strip()]
            if empty:  # a fresh sample for each empty answer, with other seeds
                retry = self._complete([prompts[i] for i in empty], None, self.config.seed + n)
                for i, reply in zip(empty, retry, strict=True):
                    replies[i] = reply
        finally:
            progress.close()
        records = [self._messages(p, r.strip()) for p, r in zip(prompts, replies, strict=True) if r.strip()]
        self.stats = {"requested": n, "generated": len(records), "empty": n - len(records)}
        return records

    def generate_with_seed(self, seed_examples: Sequence[Any], n: int | None = None) -> list[dict[str, Any]]:
        """Self-instruct: show the teacher a few seed examples and collect new instruction/answer pairs.

        Replies not in the ``### Instruction / ### Response`` format are dropped, and so are
        instructions that repeat a seed or an earlier result after :func:`normalize_text`. Rounds
        of ``batch_size`` prompts continue until ``n`` records exist or ``4·n`` prompts were spent.

        Args:
            seed_examples: dicts with ``messages``, ``instruction``/``response`` (Alpaca) or
                ``prompt``/``response``.
            n: records wanted (default ``config.num_samples``).

        Returns:
            Up to ``n`` new ``{"messages": [...]}`` records; ``self.stats`` counts what was dropped.

        Raises:
            DataError: no seed examples, or one is malformed.
        """
        n = n or self.config.num_samples
        seeds = [_seed_pair(example, i) for i, example in enumerate(seed_examples)]
        if not seeds:
            raise DataError("generate_with_seed needs at least one seed example")
        rng = random.Random(self.config.seed)
        seen = {normalize_text(inst) for inst, _ in seeds}
        k = min(self.config.examples_per_prompt, len(seeds))
        records: list[dict[str, Any]] = []
        stats = {"requested": n, "prompts": 0, "unparsed": 0, "duplicates": 0, "surplus": 0}
        budget = 4 * n
        progress = _progress(n, self.config.show_progress, "self-instruct")
        try:
            while len(records) < n and stats["prompts"] < budget:
                size = min(self.config.batch_size, budget - stats["prompts"], max(n - len(records), 1) * 2)
                prompts = [self._self_instruct_prompt(rng.sample(seeds, k)) for _ in range(size)]
                replies = self._complete(prompts, None, self.config.seed + stats["prompts"])
                stats["prompts"] += size
                for reply in replies:
                    parsed = parse_example(reply)
                    if parsed is None:
                        stats["unparsed"] += 1
                        continue
                    key = normalize_text(parsed[0])
                    if key in seen:
                        stats["duplicates"] += 1
                        continue
                    seen.add(key)
                    if len(records) >= n:
                        stats["surplus"] += 1
                        continue
                    records.append(self._messages(*parsed))
                    progress.update(1)
        finally:
            progress.close()
        stats["generated"] = len(records)
        self.stats = stats
        return records

    @staticmethod
    def _self_instruct_prompt(examples: list[tuple[str, str]]) -> str:
        shots = "".join(f"### Instruction:\n{i.strip()}\n### Response:\n{r.strip()}\n\n" for i, r in examples)
        return SELF_INSTRUCT_HEADER + shots + SELF_INSTRUCT_FOOTER


def _progress(total: int, enabled: bool, desc: str) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, disable=not enabled, desc=desc, unit="sample")


def _parse_vars(pairs: list[str], path: str | None) -> dict[str, list[str]]:
    variables: dict[str, list[str]] = {}
    if path:
        try:
            loaded = json.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise DataError(f"variables file not found: {path}") from exc
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: not valid JSON ({exc.msg})") from exc
        if not isinstance(loaded, dict) or not all(isinstance(v, list) for v in loaded.values()):
            raise DataError(f"{path}: expected an object of name -> list of values")
        variables.update({k: [str(x) for x in v] for k, v in loaded.items()})
    for pair in pairs:
        name, sep, values = pair.partition("=")
        if not sep or not name.strip():
            raise ConfigurationError(f"--var expects NAME=value1|value2, got {pair!r}")
        variables[name.strip()] = [v.strip() for v in values.split("|") if v.strip()]
    return variables


class SynthCommand(TrainingMethod):
    """``forge-train synth``: write synthetic chat data (JSONL) for ``forge-train sft``."""

    name: ClassVar[str] = "synth"
    help: ClassVar[str] = "generate synthetic chat data from templates or seed examples (self-instruct)"

    flags: ClassVar[list[Flag]] = [
        Flag(
            "--model",
            "model_name",
            "local teacher model, or the model name at --base-url",
            metavar="PATH|ID",
            group="teacher",
        ),
        Flag(
            "--base-url", "base_url", "OpenAI-compatible endpoint (e.g. http://host:8000/v1)", group="teacher"
        ),
        Flag("--api-key", "api_key", "API key for --base-url", metavar="KEY", group="teacher"),
        Flag("--num-samples", "num_samples", "records to generate", int, "N", group="sampling"),
        Flag("--temperature", "temperature", "sampling temperature", float, "T", group="sampling"),
        Flag("--max-new-tokens", "max_new_tokens", "tokens per answer", int, "N", group="sampling"),
        Flag("--batch-size", "batch_size", "prompts per local generate call", int, "N", group="sampling"),
        Flag("--concurrency", "concurrency", "concurrent endpoint requests", int, "N", group="sampling"),
        Flag("--system", "system_prompt", "system prompt", metavar="TEXT", group="sampling"),
        Flag("--seed", "seed", "random seed", int, "N", group="sampling"),
        Flag(
            "--no-progress",
            "show_progress",
            "hide the progress bar",
            action="store_const",
            const=False,
            group="sampling",
        ),
    ]

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """Source (template or seed file) and output flags, then the teacher and sampling
        settings from the shared flag table (``--config`` / ``FORGE_TRAIN_<FIELD>`` too)."""
        source = parser.add_mutually_exclusive_group(required=True)
        source.add_argument("--template", help="prompt template with {placeholders}")
        source.add_argument("--template-file", help="file holding the prompt template")
        source.add_argument("--seed-file", help="JSONL of seed examples for self-instruct")
        parser.add_argument(
            "--var", action="append", default=[], help="template values: NAME=v1|v2|v3 (repeatable)"
        )
        parser.add_argument("--variables", default=None, help="JSON file: {name: [values, ...]}")
        parser.add_argument("--output", required=True, help="output JSONL file")
        add_flags(parser, SyntheticConfig, cls.flags)

    def run(self, args: argparse.Namespace) -> TrainingResult:
        """Generate and write the JSONL file."""
        config = config_from_args(SyntheticConfig, args)
        generator = SyntheticDataGenerator(config)
        if args.seed_file:
            path = Path(args.seed_file)
            if not path.is_file():
                raise DataError(f"seed file not found: {path}")
            try:
                seeds = [
                    json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()
                ]
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}: not valid JSONL ({exc.msg} at line {exc.lineno})") from exc
            records = generator.generate_with_seed(seeds, config.num_samples)
        else:
            if args.template_file:
                try:
                    template = Path(args.template_file).read_text(encoding="utf-8").strip()
                except FileNotFoundError as exc:
                    raise DataError(f"template file not found: {args.template_file}") from exc
            else:
                template = args.template
            records = generator.generate_from_template(
                template, _parse_vars(args.var, args.variables), config.num_samples
            )
        if not records:
            raise ModelError(f"the teacher produced no usable samples ({generator.stats})")
        count = write_jsonl(records, args.output)
        return TrainingResult(
            output_dir=str(Path(args.output).parent), metrics={**generator.stats, "written": count}
        )


@hookimpl
def register_training_methods(register) -> None:
    """Register ``synth``."""
    register(SynthCommand)

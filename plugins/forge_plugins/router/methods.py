"""``forge-train router`` and ``forge-train router-eval``: train and score the neural router."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from forge_sdk import TrainingMethod, TrainingResult
from forge_sdk.errors import ConfigurationError

__all__ = ["RouterEvalMethod", "RouterTrainMethod"]


class RouterTrainMethod(TrainingMethod):
    """Train the neural router on ``{"query", "label"}`` JSON lines.

    The shipped model was built with (from the repository root)::

        forge-train router --data /work/shared/data/router_train.jsonl \\
            --filler /work/shared/data/pretrain_gutenberg_5mb.txt \\
            --code-chat /work/shared/data/sft_alpaca_2k.jsonl --code-chat-source codealpaca \\
            --domain-docs 500 --chat-prompts /work/shared/data/dpo_hh_1k.jsonl \\
            --generated 300 --embeddings --output plugins/forge_plugins/models/router
    """

    name = "router"
    help = "train the neural query router (tf-idf + logistic regression, numpy inference)"

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """Flags: --data, --output, optional augmentation sources and hyper-parameters."""
        parser.add_argument(
            "--data", required=True, help='labelled JSONL: {"query": ..., "label": ...} per line'
        )
        parser.add_argument("--output", required=True, help="folder to write router.npz and router.json into")
        parser.add_argument("--filler", help="plain-text file whose paragraphs serve as pasted context")
        parser.add_argument(
            "--code-chat", help="chat JSONL of code requests and answers, added as code examples"
        )
        parser.add_argument(
            "--code-chat-source", default="", help="keep only --code-chat rows whose source contains this"
        )
        parser.add_argument(
            "--code-label", default="code", help="label of the --code-chat examples (default: code)"
        )
        parser.add_argument(
            "--extra", action="append", default=[], help="more labelled JSONL added as is (repeatable)"
        )
        parser.add_argument(
            "--chat-prompts", help="chat/preference JSONL whose opening user turns are extra examples"
        )
        parser.add_argument(
            "--chat-prompts-label",
            default="general",
            help="label of the --chat-prompts turns (default: general)",
        )
        parser.add_argument(
            "--chat-prompts-n",
            type=int,
            default=300,
            help="how many --chat-prompts turns to sample (default: 300)",
        )
        parser.add_argument(
            "--domain-docs",
            type=int,
            default=0,
            metavar="N",
            help="add N math (SymPy) and N code (Python stdlib) documentation paragraphs (default: 0)",
        )
        parser.add_argument(
            "--generated",
            type=int,
            default=0,
            metavar="N",
            help="add N generated queries per class in under-covered styles (conceptual code questions,"
            " counting/probability, bare story premises; default: 0)",
        )
        parser.add_argument(
            "--embeddings",
            action="store_true",
            help="also fit the MiniLM embedding head (embed.npz; needs forge-plugins[embed])",
        )
        parser.add_argument("--no-augment", action="store_true", help="train on --data as given")
        parser.add_argument(
            "--c", type=float, default=10.0, help="inverse regularisation strength (default: 10)"
        )
        parser.add_argument("--seed", type=int, default=20240917, help="augmentation seed")

    def run(self, args: argparse.Namespace) -> TrainingResult:
        """Train, save and report the training-set fit.

        Raises:
            forge_sdk.errors.DataError: a bad record (the message names file and line).
            forge_sdk.errors.ConfigurationError: a bad flag value.
        """
        from forge_plugins.router.data import load_chat_prompts, load_code_chat, load_filler, load_labelled
        from forge_plugins.router.evaluation import evaluate
        from forge_plugins.router.training import train_router

        if args.c <= 0:
            raise ConfigurationError(f"--c must be positive, got {args.c}")
        records = load_labelled(args.data)
        filler = load_filler(args.filler) if args.filler else []
        pairs = (
            load_code_chat(args.code_chat, source_contains=args.code_chat_source) if args.code_chat else []
        )
        if args.domain_docs < 0:
            raise ConfigurationError(f"--domain-docs must be >= 0, got {args.domain_docs}")
        if args.generated < 0:
            raise ConfigurationError(f"--generated must be >= 0, got {args.generated}")
        extra = [record for path in args.extra for record in load_labelled(path)]
        if args.chat_prompts:
            if args.chat_prompts_n <= 0:
                raise ConfigurationError(f"--chat-prompts-n must be positive, got {args.chat_prompts_n}")
            turns = load_chat_prompts(args.chat_prompts, args.chat_prompts_n, seed=args.seed)
            extra += [(turn, args.chat_prompts_label) for turn in turns]
        if args.domain_docs:
            from forge_plugins.router.corpus import domain_docs, domain_docs_versions

            extra += domain_docs(args.domain_docs, seed=args.seed)
        if args.generated:
            from forge_plugins.router.generated import generated_examples

            extra += generated_examples(args.generated, seed=args.seed)
        model = train_router(
            records,
            filler=filler,
            code_pairs=pairs,
            code_label=args.code_label,
            extra=extra,
            augment=not args.no_augment,
            c=args.c,
            seed=args.seed,
        )
        model.meta["data"] = Path(args.data).name
        model.meta["sources"] = {
            "filler": Path(args.filler).name if args.filler else None,
            "code_chat": Path(args.code_chat).name if args.code_chat else None,
            "chat_prompts": Path(args.chat_prompts).name if args.chat_prompts else None,
            "extra": [Path(p).name for p in args.extra],
        }
        if args.domain_docs:
            model.meta["domain_docs"] = {"per_label": args.domain_docs, **domain_docs_versions()}
        if args.generated:
            model.meta["generated_per_label"] = args.generated
        if args.embeddings:
            from forge_plugins.router.embed import ENCODER_NAME, train_head

            # The head sees the examples as given (no augmentation): the encoder already
            # generalises over wording, and the code chat requests stand without their code.
            examples = [*records, *extra, *((req, args.code_label) for req, _ in pairs)]
            head = train_head(examples, model.labels)
            model.meta["embeddings"] = {"encoder": ENCODER_NAME, "n_examples": len(examples)}
        out = model.save(args.output)
        if args.embeddings:
            head.save(out)
        else:
            from forge_plugins.router.embed import HEAD_FILE

            # A head left from an earlier training would be paired with the new tf-idf model.
            (out / HEAD_FILE).unlink(missing_ok=True)
        fit = evaluate(lambda q: model.predict(q)[0], records)
        metrics = {"train_accuracy": fit["accuracy"], "train_macro_f1": fit["macro_f1"], **model.meta}
        print(json.dumps({"output_dir": str(out), **metrics}, indent=2))
        return TrainingResult(output_dir=str(out), metrics=metrics)


class RouterEvalMethod(TrainingMethod):
    """Score a router model on labelled JSONL; prints accuracy, macro_f1, per_class and n as JSON."""

    name = "router-eval"
    help = "evaluate a neural router model on labelled queries"

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """Flags: --model (default: the shipped model) and --data."""
        parser.add_argument("--model", help="model folder (default: the model shipped with forge-plugins)")
        parser.add_argument(
            "--embeddings",
            choices=("auto", "yes", "no"),
            default="auto",
            help="use the embedding head (auto: when the model has one and the extra is installed)",
        )
        parser.add_argument(
            "--data", required=True, help='labelled JSONL: {"query": ..., "label": ...} per line'
        )

    def run(self, args: argparse.Namespace) -> TrainingResult:
        """Evaluate and print the report.

        Raises:
            forge_sdk.errors.DataError: a bad record.
            forge_sdk.errors.ModelError: no readable model in --model.
        """
        from forge_plugins.router.classifiers import load_router
        from forge_plugins.router.data import load_labelled
        from forge_plugins.router.evaluation import evaluate
        from forge_plugins.router.model import DEFAULT_MODEL_DIR

        folder = Path(args.model) if args.model else DEFAULT_MODEL_DIR
        model = load_router(folder, "auto" if args.embeddings == "auto" else args.embeddings == "yes")
        records = load_labelled(args.data)
        report = evaluate(lambda q: model.predict(q)[0], records)
        sys.stdout.write(json.dumps(report, indent=2) + "\n")
        return TrainingResult(output_dir=str(folder), metrics=report)

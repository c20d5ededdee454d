"""``forge-train router`` and ``forge-train router-eval``: train and score the router."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from forge_sdk import TrainingMethod, TrainingResult
from forge_sdk.errors import ConfigurationError

__all__ = ["RouterEvalMethod", "RouterTrainMethod", "recorded_command"]


def recorded_command(argv: list[str]) -> str:
    """The command line as recorded in ``router.json``: file arguments by name, not by path."""
    return shlex.join(["forge-train", *(Path(a).name if "/" in a else a for a in argv)])


class RouterTrainMethod(TrainingMethod):
    """Train the router: the tf-idf model and the fine-tuned encoder, mixed and calibrated.

    The shipped model was built with exactly (from the repository root, the data files of
    ``../shared/data`` beside the labelled queries, see :mod:`forge_plugins.router.train.recipe`)::

        forge-train router --data ../shared/data/router_train.jsonl \
            --output plugins/forge_plugins/router/shipped
    """

    name = "router"
    help = "train the query router (fine-tuned MiniLM encoder + tf-idf model; ONNX int8 inference)"

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """Flags: --data and/or --from-registry, --output; the rest only change the recipe."""
        from forge_plugins.router.train.recipe import Recipe

        r = Recipe()
        parser.add_argument("--data", help='labelled JSONL: {"query": ..., "label": ...} per line')
        parser.add_argument(
            "--from-registry",
            metavar="REGISTRY",
            help="expert registry JSON: each registered expert's training data (trained_on, or "
            "dataset_path in its manifest.json) adds examples of its specialization",
        )
        parser.add_argument(
            "--registry-examples",
            type=int,
            default=300,
            metavar="N",
            help="examples per registered expert (default: 300)",
        )
        parser.add_argument("--output", required=True, help="folder to write the model into")
        parser.add_argument("--filler", help="plain-text pasted-context paragraphs (default: beside --data)")
        parser.add_argument(
            "--code-chat", help="chat JSONL of code requests and answers (default: beside --data)"
        )
        parser.add_argument(
            "--code-chat-source",
            default=r.code_chat_source,
            help="keep only --code-chat rows whose source contains this",
        )
        parser.add_argument("--code-label", default=r.code_label, help="label of the --code-chat examples")
        parser.add_argument(
            "--extra", action="append", default=[], help="more labelled JSONL added as is (repeatable)"
        )
        parser.add_argument(
            "--chat-prompts",
            help="chat/preference JSONL whose opening user turns are examples (default: beside --data)",
        )
        parser.add_argument("--chat-prompts-label", default=r.chat_prompts_label, help="label of those turns")
        parser.add_argument(
            "--chat-prompts-n", type=int, default=r.chat_prompts_n, help="how many turns to sample"
        )
        for flag, what in (
            ("domain_docs", "math (SymPy) and code (stdlib) documentation paragraphs per label"),
            ("generated", "generated queries per class in under-covered styles"),
            ("practical", "generated everyday requests without domain keywords per class"),
        ):
            default = getattr(r, flag)
            parser.add_argument(
                "--" + flag.replace("_", "-"),
                type=int,
                default=default,
                metavar="N",
                help=f"{what} (default: {default})",
            )
        parser.add_argument(
            "--no-encoder", action="store_true", help="tf-idf model only (seconds instead of minutes)"
        )
        parser.add_argument(
            "--epochs", type=int, default=r.epochs, help=f"encoder epochs (default: {r.epochs})"
        )
        parser.add_argument(
            "--encoder-examples",
            type=int,
            default=r.encoder_examples,
            help=f"examples the encoder is fine-tuned on (default: {r.encoder_examples})",
        )
        parser.add_argument("--no-augment", action="store_true", help="train on the examples as given")
        parser.add_argument(
            "--c", type=float, default=10.0, help="tf-idf inverse regularisation strength (default: 10)"
        )
        parser.add_argument("--seed", type=int, default=r.seed, help="seed of samples and augmentation")

    def run(self, args: argparse.Namespace) -> TrainingResult:
        """Train, save and report.

        Raises:
            forge_sdk.errors.DataError: a bad record (the message names file and line).
            forge_sdk.errors.ConfigurationError: a bad flag value.
        """
        from forge_plugins.router.train.data import load_labelled
        from forge_plugins.router.train.recipe import Recipe, train

        if not args.data and not args.from_registry:
            raise ConfigurationError("forge-train router needs --data, --from-registry or both")
        for flag in ("c", "epochs", "encoder_examples", "chat_prompts_n", "registry_examples"):
            if getattr(args, flag) <= 0:
                raise ConfigurationError(
                    f"--{flag.replace('_', '-')} must be positive, got {getattr(args, flag)}"
                )
        for flag in ("domain_docs", "generated", "practical"):
            if getattr(args, flag) < 0:
                raise ConfigurationError(
                    f"--{flag.replace('_', '-')} must be >= 0, got {getattr(args, flag)}"
                )
        recipe = Recipe(
            filler=args.filler,
            code_chat=args.code_chat,
            code_chat_source=args.code_chat_source,
            code_label=args.code_label,
            chat_prompts=args.chat_prompts,
            chat_prompts_n=args.chat_prompts_n,
            chat_prompts_label=args.chat_prompts_label,
            domain_docs=args.domain_docs,
            generated=args.generated,
            practical=args.practical,
            extra=list(args.extra),
            epochs=args.epochs,
            encoder_examples=args.encoder_examples,
            encoder=not args.no_encoder,
            augment=not args.no_augment,
            c=args.c,
            seed=args.seed,
        )
        records = load_labelled(args.data) if args.data else []
        registry: dict[str, object] = {}
        if args.from_registry:
            from forge_plugins.router.train.registry import registry_examples

            more, registry = registry_examples(
                args.from_registry, per_expert=args.registry_examples, seed=args.seed
            )
            records += more
        data_path = Path(args.data) if args.data else Path(args.from_registry)
        model = train(
            records, data_path, recipe, args.output, log=lambda m: print(m, file=sys.stderr, flush=True)
        )
        model.meta["data"] = data_path.name
        if registry:
            model.meta["registry"] = registry
        model.meta["command"] = recorded_command(sys.argv[1:] if sys.argv[1:2] == ["router"] else ["router"])
        out = model.save(args.output)
        print(json.dumps({"output_dir": str(out), **model.meta}, indent=2))
        keys = ("n_records", "n_examples", "data", "registry", "recipe", "command")
        return TrainingResult(
            output_dir=str(out), metrics={k: model.meta[k] for k in keys if k in model.meta}
        )


class RouterEvalMethod(TrainingMethod):
    """Score a router on labelled JSONL: macro-F1, per-class F1, confusion matrix, latency."""

    name = "router-eval"
    help = "evaluate the query router on labelled queries (quality and latency)"

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """Flags: --data (repeatable), --model, --classifier, --encoder, --threshold."""
        parser.add_argument(
            "--data",
            required=True,
            action="append",
            help='labelled JSONL: {"query": ..., "label": ...} per line (repeatable)',
        )
        parser.add_argument("--model", help="model folder (default: the model shipped with forge-plugins)")
        parser.add_argument(
            "--classifier",
            choices=("neural", "hybrid"),
            default="neural",
            help="classifier to score (default: neural, the gateway's default)",
        )
        parser.add_argument(
            "--encoder",
            choices=("auto", "yes", "no"),
            default="auto",
            help="use the fine-tuned encoder (auto: when the model has one and onnxruntime is installed)",
        )
        parser.add_argument(
            "--threshold",
            type=float,
            help="abstain threshold (default: the model's; 0 scores the model's own choice everywhere)",
        )

    def run(self, args: argparse.Namespace) -> TrainingResult:
        """Evaluate and print one JSON report per data file.

        Raises:
            forge_sdk.errors.DataError: a bad record.
            forge_sdk.errors.ModelError: no readable model in --model.
        """
        from forge_plugins.router.classifiers import HybridClassifier, NeuralClassifier
        from forge_plugins.router.combined import load_router
        from forge_plugins.router.model import DEFAULT_MODEL_DIR
        from forge_plugins.router.train.data import load_labelled
        from forge_plugins.router.train.evaluation import evaluate, latency
        from forge_sdk import DEFAULT_EXPERTS, ExpertModel

        folder = Path(args.model) if args.model else DEFAULT_MODEL_DIR
        options: dict[str, object] = {
            "model_dir": str(folder),
            "encoder": "auto" if args.encoder == "auto" else args.encoder == "yes",
        }
        if args.threshold is not None:
            options["threshold"] = args.threshold
        cls = HybridClassifier if args.classifier == "hybrid" else NeuralClassifier
        # One expert per label (the built-in one, with its keywords, where there is one), so an
        # expert's name maps back to the label it serves.
        labels = load_router(folder, options["encoder"]).labels
        builtin = {e.specialization: e for e in DEFAULT_EXPERTS}
        experts = [builtin.get(label) or ExpertModel(name=label, specialization=label) for label in labels]
        default = "general" if "general" in labels else labels[0]
        clf = cls(experts, default_expert=builtin[default].name if default in builtin else default, **options)
        label_of = {e.name: e.specialization for e in experts}
        reports: dict[str, object] = {}
        for path in args.data:
            records = load_labelled(path)
            clf.model.clear_cache()  # latency of first sight, not of the cache
            timing = latency(clf.classify_with_confidence, [q for q, _ in records])
            report = evaluate(lambda q: label_of.get(clf.classify(q), "?"), records)
            report["latency"] = timing
            report["classifier"] = clf.name
            report["encoder"] = clf.model.encoder is not None
            report["threshold"] = clf.threshold
            reports[Path(path).name] = report
        sys.stdout.write(json.dumps(reports, indent=2) + "\n")
        summary = {name: rep["macro_f1"] for name, rep in reports.items()}
        return TrainingResult(output_dir=str(folder), metrics={"macro_f1": summary})

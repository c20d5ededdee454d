"""Entry-point module ``train_deploy``: the ``merge`` and ``quantize`` commands and the built-in quantizers."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import ClassVar

from forge_sdk import Quantizer, TrainingMethod, TrainingResult, hookimpl
from forge_sdk.errors import ConfigurationError

__all__ = ["AwqQuantizer", "GptqQuantizer", "MergeCommand", "QuantizeCommand", "available_quantizers"]


class GptqQuantizer(Quantizer):
    """GPTQ W4A16/W8A16 via llm-compressor (compressed-tensors output)."""

    name: ClassVar[str] = "gptq"
    help: ClassVar[str] = "GPTQ (llm-compressor), weight-only int4/int8, vLLM-loadable"

    def quantize(self, model, output, *, bits=4, group_size=128, calibration=None) -> str:
        """See :func:`forge_train.deploy.quantize.quantize_gptq`."""
        from forge_train.deploy.quantize import quantize_gptq

        return quantize_gptq(model, output, bits=bits, group_size=group_size, calibration=calibration)


class AwqQuantizer(Quantizer):
    """AWQ W4A16/W8A16 via llm-compressor (compressed-tensors output)."""

    name: ClassVar[str] = "awq"
    help: ClassVar[str] = "AWQ (llm-compressor), weight-only int4/int8, vLLM-loadable"

    def quantize(self, model, output, *, bits=4, group_size=128, calibration=None) -> str:
        """See :func:`forge_train.deploy.quantize.quantize_awq`."""
        from forge_train.deploy.quantize import quantize_awq

        return quantize_awq(model, output, bits=bits, group_size=group_size, calibration=calibration)


def available_quantizers() -> dict[str, type[Quantizer]]:
    """Every quantizer registered by an installed plugin (built-ins included), by name."""
    from forge_sdk.plugins import collect, get_plugin_manager

    pm = get_plugin_manager()
    found = collect(pm, "register_quantizers", key=lambda cls: cls.name)
    if not found:  # entry points filtered out (FORGE_PLUGINS): still offer the built-ins
        found = {cls.name: cls for cls in (GptqQuantizer, AwqQuantizer)}
    return found


class MergeCommand(TrainingMethod):
    """``forge-train merge``: fold a LoRA adapter into its base model."""

    name: ClassVar[str] = "merge"
    help: ClassVar[str] = "merge a LoRA adapter into its base model (PEFT merge_and_unload)"

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """Flags: --base, --adapter, --output."""
        parser.add_argument("--base", required=True, help="base model folder or hub id")
        parser.add_argument("--adapter", required=True, help="LoRA adapter folder")
        parser.add_argument("--output", required=True, help="folder for the merged model")

    def run(self, args: argparse.Namespace) -> TrainingResult:
        """Merge and save; returns the output folder."""
        from forge_train.deploy.merge import merge_lora_weights

        out = merge_lora_weights(args.base, args.adapter, args.output)
        return TrainingResult(output_dir=out, metrics={})


class QuantizeCommand(TrainingMethod):
    """``forge-train quantize``: GPTQ or AWQ (or any plugin quantizer) into a vLLM-loadable folder."""

    name: ClassVar[str] = "quantize"
    help: ClassVar[str] = "quantize a model (gptq, awq, or a plugin quantizer)"

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """Flags: --method, --model, --output, --bits, --group-size, --calibration."""
        # Choices are checked in run(): listing them here would load every plugin at parser build.
        parser.add_argument("--method", default="gptq", help="quantizer name: gptq (default), awq, ...")
        parser.add_argument("--model", required=True, help="unquantized model folder or hub id")
        parser.add_argument("--output", required=True, help="folder for the quantized model")
        parser.add_argument("--bits", type=int, default=4, help="weight bits: 4 (default) or 8")
        parser.add_argument(
            "--group-size",
            type=int,
            default=128,
            help="weights per scale group (-1: per channel); default 128",
        )
        parser.add_argument(
            "--calibration",
            default=None,
            help="calibration text file (paragraphs) or JSONL (text/messages/prompt); default: built-in sample",
        )

    def run(self, args: argparse.Namespace) -> TrainingResult:
        """Run the chosen quantizer; returns the output folder."""
        from forge_train.deploy.quantize import load_calibration

        quantizers = available_quantizers()
        if args.method not in quantizers:
            raise ConfigurationError(
                f"unknown quantization method {args.method!r}; available: {', '.join(sorted(quantizers))}"
            )
        calibration = load_calibration(args.calibration)
        out = quantizers[args.method]().quantize(
            args.model, args.output, bits=args.bits, group_size=args.group_size, calibration=calibration
        )
        size = sum(p.stat().st_size for p in Path(out).rglob("*") if p.is_file())
        return TrainingResult(
            output_dir=out, metrics={"method": args.method, "bits": args.bits, "bytes": size}
        )


class QuantizeEnvCommand(TrainingMethod):
    """``forge-train quantize-env``: build the quantization venv ahead of time."""

    name = "quantize-env"
    help = "Build the quantization venv (llm-compressor, pinned) ahead of time, with pip's progress"

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """Flags of ``forge-train quantize-env``."""
        parser.add_argument(
            "--wheels", metavar="DIR", help="install only from this folder of wheels (offline)"
        )
        parser.add_argument(
            "--torch-index",
            metavar="URL",
            help="extra index for torch (e.g. https://download.pytorch.org/whl/cpu for the CPU build)",
        )

    def run(self, args: argparse.Namespace) -> TrainingResult:
        """Build (or check) the venv; returns its folder."""
        from forge_train.deploy.quantize import LLMCOMPRESSOR_VERSION, ensure_quant_env

        python = ensure_quant_env(
            auto_install=True, wheels=args.wheels, torch_index=args.torch_index, verbose=True
        )
        venv = python.parent.parent
        return TrainingResult(output_dir=str(venv), metrics={"llmcompressor": LLMCOMPRESSOR_VERSION})


@hookimpl
def register_training_methods(register) -> None:
    """Register ``merge``, ``quantize`` and ``quantize-env``."""
    register(MergeCommand)
    register(QuantizeCommand)
    register(QuantizeEnvCommand)


@hookimpl
def register_quantizers(register) -> None:
    """Register the built-in ``gptq`` and ``awq`` quantizers."""
    register(GptqQuantizer)
    register(AwqQuantizer)

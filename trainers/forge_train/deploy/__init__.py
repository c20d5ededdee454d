"""Deploy: merge LoRA adapters into their base and quantize models for vLLM (GPTQ, AWQ)."""

from forge_train.deploy.merge import merge_lora_weights
from forge_train.deploy.quantize import ensure_quant_env, load_calibration, quantize_awq, quantize_gptq

__all__ = ["ensure_quant_env", "load_calibration", "merge_lora_weights", "quantize_awq", "quantize_gptq"]

"""Deploy: merge LoRA adapters and quantize models."""

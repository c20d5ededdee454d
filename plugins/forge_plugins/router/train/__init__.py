"""Building the router: the recipe, labelled and generated data, the tf-idf training, the
encoder's fine-tuning and ONNX export, and evaluation (``forge-train router`` / ``router-eval``).

Training dependencies (scikit-learn, torch, transformers) are imported here and only here; the
run-time package :mod:`forge_plugins.router` never imports this one.
"""

__all__: list[str] = []

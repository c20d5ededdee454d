"""The query router at run time: features, the tf-idf model, the ONNX encoder, and the built-in
classifiers. It needs numpy (and onnxruntime + tokenizers for the encoder), never torch or
scikit-learn: the recipe, data generation, fine-tuning and evaluation live in
:mod:`forge_plugins.router.train`, imported only by ``forge-train router`` / ``router-eval``.

See ``README.md`` beside this file for how a query flows through it.
"""

from forge_plugins.router.classifiers import HybridClassifier, KeywordClassifier, NeuralClassifier
from forge_plugins.router.model import DEFAULT_MODEL_DIR, RouterModel

__all__ = ["DEFAULT_MODEL_DIR", "HybridClassifier", "KeywordClassifier", "NeuralClassifier", "RouterModel"]

"""The query router: features, models, encoder, training, evaluation and the built-in classifiers.

See ``README.md`` beside this file for how a query flows through it.
"""

from forge_plugins.router.classifiers import HybridClassifier, KeywordClassifier, NeuralClassifier
from forge_plugins.router.model import DEFAULT_MODEL_DIR, RouterModel

__all__ = ["DEFAULT_MODEL_DIR", "HybridClassifier", "KeywordClassifier", "NeuralClassifier", "RouterModel"]

"""Built-in LargeForge plugins: the keyword / neural / hybrid query classifiers and default experts."""

from forge_plugins.router.classifiers import HybridClassifier, KeywordClassifier, NeuralClassifier
from forge_plugins.router.model import RouterModel

__all__ = ["HybridClassifier", "KeywordClassifier", "NeuralClassifier", "RouterModel"]

"""Metrics: the small domain classifiers (judges of conditional samples, feature networks for Frechet distances)."""
from .classifier import SmallClassifier, guided_accuracy, load_classifier, train_classifier

__all__ = ["SmallClassifier", "guided_accuracy", "load_classifier", "train_classifier"]

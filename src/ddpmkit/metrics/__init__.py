"""Metrics: the small domain classifiers (judges of conditional samples, feature networks for Frechet distances)."""
from .classifier import SmallClassifier, guided_accuracy, load_classifier, train_classifier

# Every metric object is computed by one process: a distributed run gathers its samples first (ddpmkit.distributed),
# so torchmetrics must not try to combine the states of processes that are not computing with it.
LOCAL = {"sync_on_compute": False}

__all__ = ["LOCAL", "SmallClassifier", "guided_accuracy", "load_classifier", "train_classifier"]

"""Training objectives, one module each. ``METHODS`` maps the config key ``method`` to its class."""

from rayseg.methods.base import Method
from rayseg.methods.classifier import ImageClassifier
from rayseg.methods.densecl import DenseCL
from rayseg.methods.mdp import MDP
from rayseg.methods.pixcon import PixCon
from rayseg.methods.pssl import PSSL
from rayseg.methods.supervised import Supervised

METHODS: dict[str, type[Method]] = {
    "supervised": Supervised,
    "pssl": PSSL,
    "classifier": ImageClassifier,
    "mdp": MDP,
    "pixcon": PixCon,
    "densecl": DenseCL,
}


__all__ = ["MDP", "METHODS", "PSSL", "DenseCL", "PixCon", "ImageClassifier", "Method", "Supervised"]

"""Inference: one entry point, ``fit``, over a small explicit registry of methods."""

from .api import METHODS, fit
from .posterior import Posterior

__all__ = ["fit", "METHODS", "Posterior"]

"""Fairness audit pipeline for ReLU neural networks."""

__version__ = "0.1.0"

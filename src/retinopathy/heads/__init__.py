"""Heads found by name: what a network outputs for an image, how it learns (its loss) and how its outputs become a
continuous score and a grade. Every stage asks the head; none compares its name.

A head is one class in one file of this package, registered with :func:`register` (``docs/extending.md``).
This package imports neither torch nor fastai at import time: the light stages (preprocessing, folds, ONNX
serving) use the heads' numpy side only.
"""

from __future__ import annotations

from .base import HEADS, Head, get_head, head_of_columns, register

# each registers its head, in the order --help lists them
from . import classification, regression, ordinal, multitask  # noqa: F401  # isort: skip

__all__ = ["HEADS", "Head", "get_head", "head_of_columns", "register"]

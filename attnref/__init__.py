"""attnref: reference scaled dot-product attention.

The NumPy reference (:mod:`attnref.core`, :mod:`attnref.masks`), the fused C
kernel behind the same call (:mod:`attnref.kernel`), and the tolerance rule
that relates them (:mod:`attnref.testing.tolerance`).
"""
from . import analysis, kernel, masks, numerics, variants
from .core import (AttentionResult, attention_scores, attention_weights,
                   log_softmax, logsumexp, scaled_dot_product_attention, softmax)

__version__ = "0.1.0"

__all__ = [
    "AttentionResult",
    "analysis",
    "attention_scores",
    "attention_weights",
    "kernel",
    "log_softmax",
    "logsumexp",
    "masks",
    "numerics",
    "scaled_dot_product_attention",
    "softmax",
    "variants",
]

"""attnref: reference scaled dot-product attention.

The NumPy reference (:mod:`attnref.core`, :mod:`attnref.masks`) and its
backward pass (:mod:`attnref.backward`), the fused C
kernel behind the same call (:mod:`attnref.kernel`), and the tolerance rule
that relates them (:mod:`attnref.testing.tolerance`).
"""
from . import analysis, backward, kernel, masks, numerics, variants
from .backward import AttentionGradients, scaled_dot_product_attention_backward
from .core import (AttentionResult, attention_scores, attention_weights,
                   log_softmax, logsumexp, scaled_dot_product_attention, softmax)

__version__ = "0.1.0"

__all__ = [
    "AttentionGradients",
    "AttentionResult",
    "analysis",
    "attention_scores",
    "attention_weights",
    "backward",
    "kernel",
    "log_softmax",
    "logsumexp",
    "masks",
    "numerics",
    "scaled_dot_product_attention",
    "scaled_dot_product_attention_backward",
    "softmax",
    "variants",
]

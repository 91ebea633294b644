"""What a model's ``encode(text)`` returns: the same record for every model."""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

import numpy as np

from ..nn.trace import Trace

__all__ = ["ModelOutput"]


@dataclass
class ModelOutput:
    """One text run through a model.

    tokens : list of str, length T
    ids : (T,) int64 token ids
    hidden_states : (layers + 1, T, D) the residual stream entering the first
        layer and leaving each layer (``output_hidden_states`` in transformers)
    trace : :class:`attnref.nn.Trace` or None
    model : str, the model's name
    tokens_total : int or None, the number of tokens the whole input
        tokenizes to (specials included) before any truncation; None means
        the model read all of it (``tokens`` is the whole input)
    """
    tokens: List[str]
    ids: np.ndarray
    hidden_states: np.ndarray
    trace: Optional[Trace]
    model: str
    tokens_total: Optional[int] = None

    @property
    def attention_weights(self):
        """(layers, H, T, T) self-attention weights; needs the trace."""
        if self.trace is None:
            raise ValueError("this output was computed with trace=False; encode with trace=True "
                             "to get attention weights")
        return self.trace.attention_weights()

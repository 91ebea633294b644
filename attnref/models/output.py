"""What a model's ``encode(text)`` returns: the same record for every model."""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, NamedTuple, Optional

import numpy as np

from ..nn.trace import Trace

__all__ = ["ModelOutput", "Window"]


@dataclass
class ModelOutput:
    """One text run through a model.

    tokens : list of str, length T
    ids : (T,) int64 token ids
    hidden_states : (layers + 1, T, D) the residual stream entering the first
        layer and leaving each layer (``output_hidden_states`` in transformers;
        for a decoder with a final norm, such as Llama, the last entry is
        taken after that norm, as transformers does)
    trace : :class:`attnref.nn.Trace` or None
    model : str, the model's name
    tokens_total : int or None
        How many tokens the whole input tokenizes to, special tokens
        included, when the model read only ``T`` of them (``encode(...,
        truncation=True)``, or one window of ``encode_windows``); None when
        the model read everything. Nothing is ever cut without this being set.
    logits : (T, V) or None
        Next-token logits at every position, for models with an LM head
        (decoders such as :class:`~attnref.models.llama.LlamaModel`); None
        for encoders.
    """
    tokens: List[str]
    ids: np.ndarray
    hidden_states: np.ndarray
    trace: Optional[Trace]
    model: str
    tokens_total: Optional[int] = None
    logits: Optional[np.ndarray] = None

    @property
    def attention_weights(self):
        """(layers, H, T, T) self-attention weights; needs the trace."""
        if self.trace is None:
            raise ValueError("this output was computed with trace=False; encode with trace=True "
                             "to get attention weights")
        return self.trace.attention_weights()

    def read_text(self):
        """The text as the model read it: the tokens without the leading
        ``[CLS]`` and trailing ``[SEP]``, joined by spaces, WordPiece
        continuations (``##``) glued to the piece before (transformers'
        ``convert_tokens_to_string``). A pair keeps its middle ``[SEP]``."""
        tokens = list(self.tokens)
        if tokens and tokens[0] == "[CLS]":
            tokens = tokens[1:]
        if tokens and tokens[-1] == "[SEP]":
            tokens = tokens[:-1]
        return " ".join(tokens).replace(" ##", "")


class Window(NamedTuple):
    """One window of a long text read by a model's ``encode_windows``.

    ``output`` is ``[CLS]`` + the text's tokens ``start .. stop - 1`` (counted
    without special tokens) + ``[SEP]``; ``output.tokens_total`` is the whole
    text's length with its two special tokens when there is more than one
    window. ``index`` counts from 0 up to ``count - 1``.
    """
    index: int
    count: int
    start: int
    stop: int
    output: ModelOutput

r"""A Trace: opt-in recording of what every head of every layer does.

Seed note *heads-as-information-movers* ("Análise Matemática do Fluxo de
Informação") writes a layer as

.. math:: h_i^{l+1} = h_i^l + \mathrm{MLP}(\mathrm{LN}(h_i^l + \textstyle\sum_j \alpha_{ij} v_j))

and reads each head as moving information from token ``j``'s residual stream
to token ``i``'s, in proportion to :math:`\alpha_{ij}`. A Trace keeps every
quantity of that equation, per layer and per head:

- ``weights`` :math:`\alpha` ``(..., H, L, S)``;
- ``values`` :math:`v` ``(..., H, S, Ev)`` (kv heads repeated for GQA);
- ``head_outputs`` :math:`\sum_j \alpha_{ij} v_j` ``(..., H, L, Ev)``;
- ``head_contributions``: each head's output through its slice of
  :math:`W^O`, ``(..., H, L, D)`` -- what the head writes into the residual
  stream. Their sum over heads plus the bias of :math:`W^O` is the attention
  block's output (Elhage et al. 2021, "A Mathematical Framework for
  Transformer Circuits");
- the residual stream before the block, after the attention sub-layer, and
  after the feed-forward sub-layer, ``(..., T, D)``.

A Trace is a plain record: :mod:`attnref.analysis` reads its arrays without
importing :mod:`attnref.nn`. Pass ``trace=Trace()`` to a model call; with
``trace=None`` (the default) nothing is recorded and nothing extra computed.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

import numpy as np

__all__ = ["AttentionRecord", "LayerRecord", "Trace"]


@dataclass
class AttentionRecord:
    """One multi-head attention call. Shapes in the module docstring."""
    weights: np.ndarray             # (..., H, L, S)
    values: np.ndarray              # (..., H, S, Ev)
    head_outputs: np.ndarray        # (..., H, L, Ev)
    head_contributions: np.ndarray  # (..., H, L, D)
    w_o: np.ndarray                 # (H, Ev, D): head h's slice of W^O, transposed
    output_bias: Optional[np.ndarray]  # (D,) or None


@dataclass
class LayerRecord:
    """One encoder or decoder block: its attention calls and residual states."""
    name: str                                  # "encoder.3", "decoder.0", ...
    residual_in: np.ndarray                    # (..., T, D)  h^l
    residual_mid: np.ndarray                   # (..., T, D)  after the attention sub-layer(s)
    residual_out: np.ndarray                   # (..., T, D)  h^{l+1}
    self_attention: AttentionRecord
    cross_attention: Optional[AttentionRecord] = None


@dataclass
class Trace:
    """Per-layer records, in the order the layers ran."""
    layers: List[LayerRecord] = field(default_factory=list)

    def select(self, prefix):
        """The records whose name starts with ``prefix`` (``"encoder"``, ``"decoder"``)."""
        return [layer for layer in self.layers if layer.name.startswith(prefix)]

    def attention_weights(self, prefix="", *, cross=False):
        """Self- (or cross-) attention weights stacked over layers: ``(layers, ..., H, L, S)``.

        This is the ``(layers, heads, L, S)`` stack every metric in
        :mod:`attnref.analysis` takes.
        """
        return self._stack(prefix, cross, "weights")

    def head_contributions(self, prefix="", *, cross=False):
        """``(layers, ..., H, L, D)``: what each head wrote into the residual stream."""
        return self._stack(prefix, cross, "head_contributions")

    def residual_stream(self, prefix=""):
        """``(layers + 1, ..., T, D)``: the stream entering the first selected
        layer, then after each layer (``output_hidden_states`` in transformers)."""
        layers = self.select(prefix)
        if not layers:
            raise ValueError(f"the trace has no layer named {prefix!r}...; it has "
                             f"{[layer.name for layer in self.layers]}")
        return _stacked([layers[0].residual_in] + [layer.residual_out for layer in layers],
                        prefix)

    def _stack(self, prefix, cross, field_name):
        records = [layer.cross_attention if cross else layer.self_attention
                   for layer in self.select(prefix)]
        records = [record for record in records if record is not None]
        if not records:
            kind = "cross" if cross else "self"
            raise ValueError(f"the trace has no {kind}-attention record under {prefix!r}; "
                             f"layers: {[layer.name for layer in self.layers]}")
        return _stacked([getattr(record, field_name) for record in records], prefix)


def _stacked(arrays, prefix):
    shapes = {array.shape for array in arrays}
    if len(shapes) > 1:
        raise ValueError(f"layers under {prefix!r} have different shapes {sorted(shapes)} and "
                         f"cannot be stacked; select 'encoder' or 'decoder'")
    return np.stack(arrays)

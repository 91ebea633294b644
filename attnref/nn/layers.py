"""The pieces around attention: projections, embeddings, positions, LayerNorm
and RMSNorm, activations and the feed-forward blocks, plain and gated (pure NumPy).

Parameters follow PyTorch's layout (``Linear.weight`` is ``(out, in)``), so a
checkpoint's tensors drop in unchanged. Every layer computes in the dtype of
its input; a layer's parameters must have that dtype too (float32 or float64).

Shape letters: ``D`` model width (``d_model``), ``F`` feed-forward width,
``V`` vocabulary size, ``T`` sequence length; leading dims ``...`` broadcast.
"""
from __future__ import annotations

import math
import numbers

import numpy as np

from .products import matmul
from .rows import for_row_blocks

__all__ = [
    "Linear",
    "Embedding",
    "LearnedPositions",
    "LayerNorm",
    "RMSNorm",
    "FeedForward",
    "GatedFeedForward",
    "ACTIVATIONS",
    "gelu",
    "gelu_tanh",
    "relu",
    "silu",
    "sinusoidal_positions",
    "stack_outputs",
    "product_layout",
]

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def _check_parameter(name, value, ndim):
    """Return ``value`` as a float32/float64 array of rank ``ndim`` or raise."""
    array = np.asarray(value)
    if array.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32 or float64, got dtype {array.dtype}")
    if array.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dims, got shape {array.shape}")
    return array


def _check_input(name, x, width, dtype):
    x = np.asarray(x)
    if x.dtype != dtype:
        raise TypeError(f"{name} input must have the parameters' dtype {dtype}, got {x.dtype}")
    if x.ndim < 1 or x.shape[-1] != width:
        raise ValueError(f"{name} input must have shape (..., {width}), got {x.shape}")
    return x


def _uniform(rng, bound, shape, dtype):
    return rng.uniform(-bound, bound, size=shape).astype(dtype)


class Linear:
    """Affine map ``y = x W^T + b``, ``W`` of shape ``(out, in)`` (Vaswani et
    al. 2017, the projections W^Q, W^K, W^V, W^O and the FFN)."""

    def __init__(self, weight, bias=None):
        self.weight = _check_parameter("Linear weight", weight, 2)  # (out, in)
        self.bias = None if bias is None else _check_parameter("Linear bias", bias, 1)
        if self.bias is not None and (self.bias.shape[0] != self.weight.shape[0]
                                      or self.bias.dtype != self.weight.dtype):
            raise ValueError(f"Linear bias must have shape ({self.weight.shape[0]},) and dtype "
                             f"{self.weight.dtype}, got {self.bias.shape} {self.bias.dtype}")

    @classmethod
    def init(cls, in_features, out_features, *, rng, bias=True, dtype=np.float32):
        """PyTorch's default initialisation: U(-1/sqrt(in), 1/sqrt(in))."""
        bound = 1.0 / math.sqrt(in_features)
        return cls(_uniform(rng, bound, (out_features, in_features), dtype),
                   _uniform(rng, bound, (out_features,), dtype) if bias else None)

    @property
    def in_features(self):
        return self.weight.shape[1]

    @property
    def out_features(self):
        return self.weight.shape[0]

    def __call__(self, x):
        """(..., in) -> (..., out), the product on attnref's threads
        (:func:`attnref.nn.products.matmul`)."""
        x = _check_input("Linear", x, self.in_features, self.weight.dtype)
        y = matmul(x, self.weight.T)
        return y if self.bias is None else y + self.bias


def stack_outputs(*linears):
    """One :class:`Linear` that computes several reading the same input, or None.

    Their weights are stacked row-wise into one new ``(out_1 + out_2 + ..., in)``
    array (their biases likewise, zeros standing for an absent one), so one
    matrix product serves them all: BLAS runs one large product faster than
    several narrow ones, e.g. the Q, K and V projections of self attention
    or the gate and up projections of a gated FFN. The stacked weight is
    stored in :func:`product_layout`. Returns ``(stacked, parts)``:
    ``parts[i]`` is a Linear equal to ``linears[i]`` (same values, a bias
    only where it had one) whose arrays are views of ``stacked``'s rows, so
    the parameters are held once. None when the Linears do not all take the
    same input width in the same dtype.
    """
    first = linears[0].weight
    if any(linear.weight.shape[1] != first.shape[1] or linear.weight.dtype != first.dtype
           or (linear.bias is not None and linear.bias.dtype != first.dtype)
           for linear in linears):
        return None
    columns = np.empty((first.shape[1], sum(linear.out_features for linear in linears)),
                       first.dtype)                                    # (in, sum of out)
    start = 0
    for linear in linears:                # written in place: no second stacked copy
        columns[:, start:start + linear.out_features] = linear.weight.T
        start += linear.out_features
    weight = columns.T                                                 # (sum of out, in)
    bias = None
    if any(linear.bias is not None for linear in linears):
        bias = np.concatenate([np.zeros(linear.out_features, first.dtype)
                               if linear.bias is None else linear.bias for linear in linears])
    parts, start = [], 0
    for linear in linears:
        rows = slice(start, start + linear.out_features)
        parts.append(Linear(weight[rows], None if linear.bias is None else bias[rows]))
        start = rows.stop
    return Linear(weight, bias), parts


def product_layout(weight):
    """``weight`` ``(out, in)`` with the same values, stored as its transpose
    ``(in, out)`` C-contiguous (a Fortran-ordered ``(out, in)`` array; no copy
    when it already is one).

    :meth:`Linear.__call__` computes ``x @ weight.T``; with this layout
    ``weight.T`` is a C-contiguous ``(in, out)`` matrix, which OpenBLAS's
    sgemm ran 2-13% faster than the transposed read of a C-contiguous
    ``(out, in)`` one at SmolLM2's shapes (T = 128 and 1,024 rows, 1
    thread, CPU time); SmolLM2's logits came out the same bits either way.
    """
    return np.asfortranarray(weight)


class Embedding:
    """Lookup table ``ids -> weight[ids]``, ``weight`` of shape ``(V, D)``
    (seed note *transformer-architecture*, "Embedding")."""

    def __init__(self, weight):
        self.weight = _check_parameter("Embedding weight", weight, 2)  # (V, D)

    @classmethod
    def init(cls, num_embeddings, dim, *, rng, dtype=np.float32):
        """N(0, 1) entries, as ``torch.nn.Embedding``."""
        return cls(rng.standard_normal((num_embeddings, dim)).astype(dtype))

    def __call__(self, ids):
        """(...) integer ids -> (..., D)."""
        ids = np.asarray(ids)
        if not np.issubdtype(ids.dtype, np.integer):
            raise TypeError(f"Embedding ids must be integers, got dtype {ids.dtype}")
        V = self.weight.shape[0]
        if ids.size and (ids.min() < 0 or ids.max() >= V):
            raise ValueError(f"Embedding ids must lie in [0, {V}), got range "
                             f"[{ids.min()}, {ids.max()}]")
        return self.weight[ids]


class LearnedPositions:
    """Learned absolute position embeddings: rows ``offset .. offset+T-1`` of a
    ``(max_positions, D)`` table (BERT, GPT-2), added to the token embeddings."""

    def __init__(self, weight):
        self.weight = _check_parameter("LearnedPositions weight", weight, 2)  # (P, D)

    @classmethod
    def init(cls, max_positions, dim, *, rng, dtype=np.float32):
        """N(0, 0.02^2) entries, as BERT's initializer_range."""
        return cls((0.02 * rng.standard_normal((max_positions, dim))).astype(dtype))

    def __call__(self, length, offset=0):
        """-> (T, D) for positions ``offset .. offset + length - 1``."""
        P = self.weight.shape[0]
        if offset < 0 or length < 0 or offset + length > P:
            raise ValueError(f"positions [{offset}, {offset + length}) do not fit the table of "
                             f"{P} learned positions")
        return self.weight[offset:offset + length]


class LayerNorm:
    r"""Layer normalisation over the last dim (Ba et al. 2016):
    :math:`y = (x - \mu) / \sqrt{\sigma^2 + \epsilon} \cdot \gamma + \beta` with
    the biased variance, as PyTorch and BERT."""

    def __init__(self, weight, bias, eps=1e-5):
        self.weight = _check_parameter("LayerNorm weight", weight, 1)  # (D,)
        self.bias = _check_parameter("LayerNorm bias", bias, 1)        # (D,)
        if self.bias.shape != self.weight.shape:
            raise ValueError(f"LayerNorm bias must have shape {self.weight.shape}, "
                             f"got {self.bias.shape}")
        if (isinstance(eps, bool) or not isinstance(eps, numbers.Real)
                or not (math.isfinite(eps) and eps > 0)):
            raise ValueError(f"LayerNorm eps must be a positive finite number, got {eps!r}")
        self.eps = float(eps)

    @classmethod
    def init(cls, dim, *, eps=1e-5, dtype=np.float32):
        """gamma = 1, beta = 0."""
        return cls(np.ones(dim, dtype), np.zeros(dim, dtype), eps)

    def __call__(self, x):
        """(..., D) -> (..., D)."""
        x = _check_input("LayerNorm", x, self.weight.shape[0], self.weight.dtype)
        centred = x - x.mean(axis=-1, keepdims=True)
        variance = np.mean(centred * centred, axis=-1, keepdims=True)
        return centred / np.sqrt(variance + x.dtype.type(self.eps)) * self.weight + self.bias


class RMSNorm:
    r"""Root-mean-square normalisation over the last dim (Zhang & Sennrich 2019,
    eq. 4; Llama): :math:`y = x / \sqrt{\tfrac1D \sum_i x_i^2 + \epsilon} \cdot \gamma`.

    No centring and no bias, unlike :class:`LayerNorm`; ``eps`` sits inside
    the root, as in Hugging Face's ``LlamaRMSNorm`` and llama.cpp.
    """

    def __init__(self, weight, eps=1e-6):
        self.weight = _check_parameter("RMSNorm weight", weight, 1)  # (D,)
        if (isinstance(eps, bool) or not isinstance(eps, numbers.Real)
                or not (math.isfinite(eps) and eps > 0)):
            raise ValueError(f"RMSNorm eps must be a positive finite number, got {eps!r}")
        self.eps = float(eps)

    @classmethod
    def init(cls, dim, *, eps=1e-6, dtype=np.float32):
        """gamma = 1."""
        return cls(np.ones(dim, dtype), eps)

    def __call__(self, x):
        r"""(..., D) -> (..., D).

        Two passes over ``x``: the sums of squares as one dot product per
        row (``einsum``, no ``x * x`` temporary), then ``x`` times the
        per-row factor :math:`1/\sqrt{\cdot}` and :math:`\gamma` (the
        reciprocal root multiplied, as Hugging Face's ``torch.rsqrt``), on
        blocks of rows (:func:`attnref.nn.rows.for_row_blocks`).
        """
        x = _check_input("RMSNorm", x, self.weight.shape[0], self.weight.dtype)
        D, eps = x.shape[-1], x.dtype.type(self.eps)
        out = np.empty(x.shape, x.dtype)
        rows_in, rows_out = x.reshape(-1, D), out.reshape(-1, D)          # (rows, D)

        def normalise(start, stop):
            part, result = rows_in[start:stop], rows_out[start:stop]
            mean_square = np.einsum("rd,rd->r", part, part)[:, None] / D  # (rows, 1)
            np.multiply(part, 1 / np.sqrt(mean_square + eps), out=result)
            result *= self.weight

        for_row_blocks(normalise, rows_out.shape[0], D * x.itemsize)
        return out


_erf = np.frompyfunc(math.erf, 1, 1)


def _float_input(name, x, out):
    """``x`` as an array, and the array to write ``name``'s result into:
    ``out`` when given (it must have ``x``'s shape and the result dtype),
    else a new one. The result dtype is ``x``'s when it is floating, else
    float64 (an integer input is not truncated back to integers)."""
    x = np.asarray(x)
    dtype = x.dtype if np.issubdtype(x.dtype, np.floating) else np.dtype(np.float64)
    if out is None:
        return x, np.empty(x.shape, dtype)
    if not (isinstance(out, np.ndarray) and out.shape == x.shape and out.dtype == dtype):
        raise ValueError(f"{name} out must be a numpy array of shape {x.shape} and dtype "
                         f"{dtype}, got {type(out).__name__} {getattr(out, 'shape', '')} "
                         f"{getattr(out, 'dtype', '')}")
    return x, out


def _result(result, x, out):
    """What a ufunc returns: ``out`` when given, else the scalar of a 0-d
    ``result`` for a 0-d ``x``, else ``result``."""
    return out if out is not None else result[()] if x.ndim == 0 else result


def gelu(x, *, out=None):
    r"""Exact GELU (Hendrycks & Gimpel 2016): :math:`x \Phi(x) = \tfrac12 x (1 + \mathrm{erf}(x/\sqrt2))`.

    NumPy has no ``erf``; this evaluates the C library's ``erf`` (through
    :func:`math.erf`) element by element in float64, so it is exact to the
    input dtype at the price of speed (about 0.1 s per million elements).
    BERT's ``hidden_act="gelu"``. Integer input computes in float64.
    ``out``: an array of ``x``'s shape and that dtype to write the result
    into (``x`` itself included, and returned); else a new array, or for a
    0-d input the NumPy scalar a ufunc gives.
    """
    x, result = _float_input("gelu", x, out)
    wide = x.astype(np.float64)
    # np.asarray: on a 0-d input the ufunc returns a Python float
    product = np.asarray(_erf(wide / math.sqrt(2.0)), np.float64)
    product += 1
    product *= 0.5                                                # Phi(x)
    product *= wide
    np.copyto(result, product, casting="same_kind")
    return _result(result, x, out)


def gelu_tanh(x, *, out=None):
    r"""Tanh approximation of GELU (Hendrycks & Gimpel 2016; GPT-2, ``gelu_new``):
    :math:`\tfrac12 x (1 + \tanh(\sqrt{2/\pi}(x + 0.044715 x^3)))`.

    Evaluated in ``x``'s dtype (float64 for integer input) in one temporary:
    the cube and the tanh's argument are built in it, then ``out = 0.5 x``
    times it, the same roundings in the same order as the formula written
    out. ``out``: an array of ``x``'s shape and that dtype to write the
    result into (``x`` itself included, and returned); else a new array, or
    for a 0-d input the NumPy scalar a ufunc gives.
    """
    x, result = _float_input("gelu_tanh", x, out)
    real = result.dtype.type
    inner = np.multiply(real(0.044715), x, out=np.empty(x.shape, result.dtype))  # 0.044715 x
    inner *= x
    inner *= x                                                    # 0.044715 x^3
    inner += x
    inner *= real(math.sqrt(2.0 / math.pi))
    np.tanh(inner, out=inner)
    inner += 1
    np.multiply(real(0.5), x, out=result)       # x is read for the last time: out may be x
    result *= inner
    return _result(result, x, out)


def relu(x, *, out=None):
    """:math:`\\max(x, 0)` (the original Transformer's FFN, Vaswani et al. 2017 eq. 2).
    ``out``: an array to write the result into."""
    x = np.asarray(x)
    return np.maximum(x, x.dtype.type(0), out=out)


def silu(x, *, out=None):
    r"""SiLU, or swish (Elfwing et al. 2018; Ramachandran et al. 2017):
    :math:`x \sigma(x) = x / (1 + e^{-x})`.

    Evaluated as written, in four passes over ``x`` (``negative``, ``exp``,
    ``+= 1``, ``divide``), to a few ulp (one rounding each in ``exp``,
    ``1 +`` and the division). Where :math:`e^{-x}` overflows (``x < -88.7``
    in float32) that quotient would be ``-0``, but the true value
    :math:`x e^{x}/(1 + e^{x}) = x e^{x}` (``1 + e^x`` rounds to 1 there) can
    still be a normal float: when ``exp`` reports an overflow, those few
    entries are computed in that form instead. Integer input computes in
    float64. ``out``: an array of ``x``'s shape and that dtype to write the
    result into (``x`` itself included, and returned); else a new array, or
    for a 0-d input the NumPy scalar a ufunc gives.
    """
    x, result = _float_input("silu", x, out)
    dtype = result.dtype
    # the denominator goes into result unless it may overlap x, which the division still reads
    denominator = np.empty(x.shape, dtype) if np.may_share_memory(x, result) else result
    np.negative(x, out=denominator)
    try:
        with np.errstate(over="raise"):   # NumPy finishes the pass, then raises
            np.exp(denominator, out=denominator)
        far = None
    except FloatingPointError:
        overflow = -math.log(np.finfo(dtype).max)
        far = x < overflow
        near_zero = x[far] * np.exp(x[far].astype(dtype))
    denominator += 1
    np.divide(x, denominator, out=result)
    if far is not None:
        result[far] = near_zero
    return _result(result, x, out)


ACTIVATIONS = {"gelu": gelu, "gelu_tanh": gelu_tanh, "gelu_new": gelu_tanh, "relu": relu,
               "silu": silu}


class FeedForward:
    r"""Position-wise feed-forward block :math:`\mathrm{FFN}(x) = f(x W_1^T + b_1) W_2^T + b_2`
    (Vaswani et al. 2017, eq. 2; seed note *transformer-architecture*: "INPUT
    Tokens → Embedding → Atenção → Feed Forward → Saída")."""

    def __init__(self, up, down, activation="gelu"):
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        if up.out_features != down.in_features:
            raise ValueError(f"FeedForward up projection gives {up.out_features} features but "
                             f"the down projection takes {down.in_features}")
        self.up, self.down, self.activation = up, down, activation  # (F, D), (D, F)

    @classmethod
    def init(cls, dim, hidden, *, rng, activation="gelu", dtype=np.float32):
        return cls(Linear.init(dim, hidden, rng=rng, dtype=dtype),
                   Linear.init(hidden, dim, rng=rng, dtype=dtype), activation)

    def __call__(self, x):
        """(..., D) -> (..., D)."""
        return self.down(ACTIVATIONS[self.activation](self.up(x)))


class GatedFeedForward:
    r"""Gated feed-forward block (GLU variants, Shazeer 2020, eq. 6 "FFN_SwiGLU"
    with :math:`\beta = 1`; Llama):

    .. math:: \mathrm{FFN}(x) = \big(f(x W_{gate}^T) \odot x W_{up}^T\big) W_{down}^T

    with :math:`f` = SiLU by default. No biases in Llama; a :class:`Linear`
    with a bias works too. The gate and up weights are stacked into one
    ``gate_up`` Linear (:func:`stack_outputs`) and ``gate``/``up`` become
    views of its rows (read-only attributes, so the two cannot drift apart).
    """

    def __init__(self, gate, up, down, activation="silu"):
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        for name, projection in (("gate", gate), ("up", up), ("down", down)):
            if not isinstance(projection, Linear):
                raise TypeError(f"GatedFeedForward {name} must be an attnref.nn.Linear, got "
                                f"{type(projection).__name__}")
        if gate.weight.shape != up.weight.shape:
            raise ValueError(f"GatedFeedForward gate and up projections must have the same "
                             f"shape (F, D), got {gate.weight.shape} and {up.weight.shape}")
        if up.out_features != down.in_features:
            raise ValueError(f"GatedFeedForward up projection gives {up.out_features} features "
                             f"but the down projection takes {down.in_features}")
        stacked = stack_outputs(gate, up)
        self.gate_up = None if stacked is None else stacked[0]    # (2F, D): one product
        self._gate, self._up = (gate, up) if stacked is None else stacked[1]  # views of it
        self.down, self.activation = down, activation             # (D, F)

    @property
    def gate(self):
        """The gate projection ``(F, D)`` (rows of ``gate_up`` when that is set)."""
        return self._gate

    @property
    def up(self):
        """The up projection ``(F, D)`` (rows of ``gate_up`` when that is set)."""
        return self._up

    @classmethod
    def init(cls, dim, hidden, *, rng, activation="silu", bias=False, dtype=np.float32):
        return cls(Linear.init(dim, hidden, rng=rng, bias=bias, dtype=dtype),
                   Linear.init(dim, hidden, rng=rng, bias=bias, dtype=dtype),
                   Linear.init(hidden, dim, rng=rng, bias=bias, dtype=dtype), activation)

    def __call__(self, x):
        """(..., D) -> (..., D); the gate and up projections are one matrix
        product (``gate_up``) when their weights share a dtype. The
        activation and the product with ``up`` run on blocks of rows
        (:func:`attnref.nn.rows.for_row_blocks`)."""
        if self.gate_up is None:
            gate, up = self.gate(x), self.up(x)                   # (..., T, F) each
        else:
            both = self.gate_up(x)                                # (..., T, 2F)
            F = self.up.out_features
            gate, up = both[..., :F], both[..., F:]
        F = up.shape[-1]
        gate, up = gate.reshape(-1, F), up.reshape(-1, F)         # (rows, F) views
        hidden = np.empty(up.shape, up.dtype)                     # (rows, F)
        activation = ACTIVATIONS[self.activation]

        def gated(start, stop):
            activation(gate[start:stop], out=hidden[start:stop])
            hidden[start:stop] *= up[start:stop]

        for_row_blocks(gated, hidden.shape[0], F * hidden.itemsize)
        return self.down(hidden.reshape(x.shape[:-1] + (F,)))


def sinusoidal_positions(length, dim, *, base=10000.0, dtype=np.float32):
    r"""Sinusoidal position encodings, shape ``(T, D)`` (Vaswani et al. 2017, §3.5):

    .. math:: PE_{t, 2i} = \sin(t / \text{base}^{2i/D}), \quad PE_{t, 2i+1} = \cos(t / \text{base}^{2i/D})

    For odd ``D`` the last column is a sine. Computed in float64, returned in ``dtype``.
    """
    for name, value in (("length", length), ("dim", dim)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    positions = np.arange(length, dtype=np.float64)[:, None]           # (T, 1)
    frequencies = base ** (-np.arange(0, dim, 2, dtype=np.float64) / dim)  # (ceil(D/2),)
    angles = positions * frequencies                                    # (T, ceil(D/2))
    encoding = np.empty((length, dim), np.float64)
    encoding[:, 0::2] = np.sin(angles)
    encoding[:, 1::2] = np.cos(angles[:, : dim // 2])
    return encoding.astype(dtype)

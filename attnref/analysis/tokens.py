"""Token-level attention metrics: how each query spreads its attention over the
keys, and which keys (special tokens, punctuation, function words, the first
token) collect it.

Seed notes: ``attention-weights-and-vectors.md`` ("Interpretação dos Pesos":
``interpret_attention_weights``, ``compute_attention_entropy``; "Attention to
Content vs Function Words": ``analyze_content_function_attention``; "Quality
Metrics": ``compute_attention_sparsity``) and ``attention-allocation.md``
("Alocação em Nível de Token").

Shapes: ``weights`` are ``(..., L, S)`` (L queries, S keys; leading dims such
as ``(layers, H)`` are kept). Per-row metrics return ``(..., L)``, per-map
metrics ``(...)``. Weights are read as given: nothing is renormalised, so for
softmax rows (which sum to 1) every "share" below is a fraction of the row. A
row of zeros (a fully masked query) gives NaN in per-row metrics and is
skipped by per-map means. Query position ``i`` and key position ``j`` are
absolute indices (top-left alignment) when L != S.
"""
from __future__ import annotations

import dataclasses
import unicodedata
from typing import Optional

import numpy as np

from ._common import (Record, as_weights, check_tokens, key_share, mean_over_rows, row_mass,
                      support, xlogy)

__all__ = [
    "entropy",
    "mean_entropy",
    "effective_support",
    "confidence",
    "sparsity",
    "self_attention",
    "received_attention",
    "sink_score",
    "top_attended",
    "interpret_weights",
    "function_word_mask",
    "content_word_mask",
    "SPECIAL_TOKENS",
    "special_token_attention",
    "content_function_attention",
    "TopAttended",
    "TokenInterpretation",
    "SpecialTokenAttention",
    "ContentFunctionAttention",
    "CONTENT_POS",
    "FUNCTION_POS",
    "FUNCTION_WORDS",
]


def _nan_on_empty_rows(values, weights):
    """``values`` (..., L) with NaN where the row of ``weights`` has no mass."""
    return np.where(row_mass(weights) > 0, values, np.nan)


def _positions_mask(positions, length, name):
    """Bool (length,) from a bool mask or a sequence of integer positions."""
    if positions is None:
        return np.zeros(length, dtype=bool)
    positions = np.asarray(positions)
    if positions.dtype == bool:
        if positions.shape != (length,):
            raise ValueError(
                f"{name} as a bool mask must have shape ({length},), got {positions.shape}")
        return positions
    if positions.size and not np.issubdtype(positions.dtype, np.integer):
        raise TypeError(
            f"{name} must be integer positions or a bool mask, got dtype {positions.dtype}")
    positions = positions.astype(np.intp).ravel()
    if np.any((positions < -length) | (positions >= length)):
        raise ValueError(
            f"{name} positions must lie in [-{length}, {length}), got {positions.tolist()}")
    mask = np.zeros(length, dtype=bool)
    mask[positions] = True
    return mask


def entropy(weights, *, normalize=False, seed_epsilon=None):
    """Shannon entropy of each query's attention row, in nats.

    Parameters
    ----------
    weights : array_like, shape (..., L, S)
        Attention maps; rows are expected to be distributions (softmax rows).
    normalize : bool, default False
        Divide by ``log(n_i)``, where ``n_i`` is the number of visible keys of
        row ``i`` (keys with weight > 0), so a uniform row over its visible
        keys scores 1 and a one-hot row 0. A row with a single visible key
        gives 0.
    seed_epsilon : float, optional
        Reproduce the seed notes' ``compute_attention_entropy``, which adds
        ``seed_epsilon`` (1e-10 in the notes) to every weight before the log.
        Cannot be combined with ``normalize``. ``None`` (default) uses the
        exact formula below.

    Returns
    -------
    ndarray, shape (..., L)
        Entropy per row; NaN for a row of zeros (no visible key).

    Notes
    -----
    ``H_i = -sum_j w_ij log w_ij`` with ``0 log 0 = 0``, so keys of weight 0
    (masked keys) contribute nothing and no epsilon is needed. For a softmax
    row, ``0 <= H_i <= log n_i``.

    The notes' form is ``H_i = -sum_j (w_ij + eps) log(w_ij + eps)``
    (``attention-weights-and-vectors.md``, "Interpretação dos Pesos",
    ``compute_attention_entropy``). The epsilon biases the value: each zero
    weight adds ``-eps log eps`` (2.3e-9 for eps = 1e-10), so ``n`` zero
    weights add about ``-n eps log eps``, and each positive weight shifts by
    about ``-eps (log w + 1)``. The bias grows with the number of masked keys
    and serves no purpose under the ``0 log 0 = 0`` convention.
    """
    weights = as_weights(weights)
    if seed_epsilon is None:
        # 0.0 - x rather than -x: a one-hot row gives 0.0, not -0.0.
        entropy_per_row = 0.0 - xlogy(weights, weights).sum(axis=-1)
    else:
        if normalize:
            raise ValueError(
                "seed_epsilon reproduces the notes' unnormalised entropy; "
                "it cannot be combined with normalize=True")
        if not np.isscalar(seed_epsilon) or not seed_epsilon > 0:
            raise ValueError(
                f"seed_epsilon must be a positive number or None, got {seed_epsilon!r}")
        shifted = weights.astype(np.float64) + seed_epsilon
        entropy_per_row = -(shifted * np.log(shifted)).sum(axis=-1)
    if normalize:
        visible = support(weights).sum(axis=-1)
        # log(1) = 0: a row with one visible key is certain, entropy 0.
        entropy_per_row = np.where(
            visible > 1, entropy_per_row / np.log(np.maximum(visible, 2)), 0.0)
    return _nan_on_empty_rows(entropy_per_row, weights)


def mean_entropy(weights, *, normalize=False, seed_epsilon=None):
    """Mean of :func:`entropy` over the rows of each map.

    Parameters
    ----------
    weights : array_like, shape (..., L, S)
    normalize, seed_epsilon
        As in :func:`entropy`.

    Returns
    -------
    ndarray, shape (...)
        ``(1/L') sum_i H_i`` over the L' non-empty rows; NaN if there are none.

    Notes
    -----
    The seed's ``evaluate_attention_quality`` calls a
    ``compute_mean_attention_entropy`` it never defines
    (``attention-weights-and-vectors.md``, "Quality Metrics"); this is the
    natural reading: the mean per-query entropy.
    """
    return mean_over_rows(entropy(weights, normalize=normalize, seed_epsilon=seed_epsilon))


def effective_support(weights):
    """Effective number of keys each query attends to: ``exp(H_i)``.

    Parameters
    ----------
    weights : array_like, shape (..., L, S)

    Returns
    -------
    ndarray, shape (..., L)
        ``exp(H_i)`` (the perplexity of the row); NaN for empty rows.

    Notes
    -----
    For a softmax row, ``1 <= exp(H_i) <= n_i`` (visible keys): 1 for a
    one-hot row, ``n_i`` for a uniform one. It is the exponential of the
    Shannon entropy (Hill number of order 1); :func:`entropy` gives ``H_i``.
    """
    return np.exp(entropy(weights))


def confidence(weights, exclude=None):
    """Head confidence: the mean over queries of the largest weight in a row.

    Parameters
    ----------
    weights : array_like, shape (..., L, S)
    exclude : sequence of int or bool array of shape (S,), optional
        Positions left out of the metric, e.g. special tokens such as the
        end-of-sentence token. An excluded position is dropped in both roles:
        as a key it is not a candidate for the maximum (the remaining weights
        are not renormalised), and as a query (position ``i < L``) its row is
        not averaged. ``None`` keeps every position.

    Returns
    -------
    ndarray, shape (...)
        ``(1/|I|) sum_{i in I} max_{j not excluded} w_ij`` over the non-empty,
        non-excluded rows ``I``; NaN if there are none.

    Notes
    -----
    Voita, Talbot, Moiseev, Sennrich and Titov (2019), "Analyzing Multi-Head
    Self-Attention: Specialized Heads Do the Heavy Lifting, the Rest Can Be
    Pruned": the confidence of a head is "the average of its maximum attention
    weight excluding the end of sentence symbol". That phrase leaves open
    whether the symbol is excluded as a query or as a key; ``exclude`` drops
    it in both roles so that neither attention *from* nor attention *to* it
    counts. A row whose whole mass sits on excluded keys scores 0.
    """
    weights = as_weights(weights)
    length, n_keys = weights.shape[-2:]
    excluded = _positions_mask(exclude, n_keys, "exclude")
    largest = np.where(excluded, 0, weights).max(axis=-1, initial=0)
    largest = _nan_on_empty_rows(largest, weights)
    excluded_rows = np.zeros(length, dtype=bool)
    excluded_rows[:min(length, n_keys)] = excluded[:length]
    return mean_over_rows(np.where(excluded_rows, np.nan, largest))


def sparsity(weights, threshold=0.1):
    """Fraction of weights below ``threshold``, per map.

    Parameters
    ----------
    weights : array_like, shape (..., L, S)
    threshold : float, default 0.1

    Returns
    -------
    ndarray, shape (...)
        Mean over the non-empty rows of ``(1/S) #{j : w_ij < threshold}``;
        NaN if every row is empty.

    Notes
    -----
    Seed: ``attention-weights-and-vectors.md``, "Quality Metrics",
    ``compute_attention_sparsity``: ``(weights < threshold).float().mean()``.
    Every key counts, masked ones included, so a causal map looks sparser
    than a bidirectional one with the same visible pattern (about half of a
    causal L x L map is masked zeros). With no empty rows this equals the
    notes' mean over the whole map; the notes pool every map they are given,
    while here each map keeps its own value.
    """
    weights = as_weights(weights)
    below_per_row = (weights < threshold).mean(axis=-1)
    return mean_over_rows(_nan_on_empty_rows(below_per_row, weights))


def self_attention(weights):
    """Weight each query gives to the key at its own position, ``w_ii``.

    Parameters
    ----------
    weights : array_like, shape (..., L, S)

    Returns
    -------
    ndarray, shape (..., L)
        ``w_ii``: the top-left diagonal (absolute positions, i == j). Rows
        ``i >= S`` (when L > S) have no such key and give NaN, as do empty
        rows.

    Notes
    -----
    Seed: ``interpret_attention_weights`` field ``self_attention``
    (``outgoing_weights[i]``), ``attention-weights-and-vectors.md``,
    "Interpretação dos Pesos".
    """
    weights = as_weights(weights)
    diagonal = np.diagonal(weights, axis1=-2, axis2=-1)
    values = np.full(weights.shape[:-1], np.nan)
    values[..., :diagonal.shape[-1]] = diagonal
    return _nan_on_empty_rows(values, weights)


def received_attention(weights):
    """Total attention each key receives: the column sums ``sum_i w_ij``.

    Parameters
    ----------
    weights : array_like, shape (..., L, S)

    Returns
    -------
    ndarray, shape (..., S)
        Column sums; empty rows add nothing. For softmax rows the values sum
        to the number of non-empty rows.

    Notes
    -----
    The seed's "information flow" into a token
    (``attention-weights-and-vectors.md``, "Attention Flow Analysis",
    ``analyze_attention_flow``, which takes the column *mean*
    ``layer_attention[:, j].mean()``: divide by L for that).
    """
    return as_weights(weights).sum(axis=-2)


def sink_score(weights, k=1):
    """Share of attention that goes to the first ``k`` keys (attention sink).

    Parameters
    ----------
    weights : array_like, shape (..., L, S)
    k : int, default 1
        Number of leading keys counted as the sink, ``1 <= k <= S``.

    Returns
    -------
    ndarray, shape (...)
        ``(1/L') sum_i sum_{j < k} w_ij`` over the L' non-empty rows.

    Notes
    -----
    Xiao, Tian, Chen, Han and Lewis (2023), "Efficient Streaming Language
    Models with Attention Sinks": many heads park most of their attention on
    the first token(s), whatever they are. 1 means every query attends only
    to the sink; for uniform rows over S keys the score is ``k/S``.
    """
    weights = as_weights(weights)
    n_keys = weights.shape[-1]
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= n_keys:
        raise ValueError(f"k must be an integer in [1, S={n_keys}], got {k!r}")
    return key_share(weights, np.arange(n_keys) < k)


@dataclasses.dataclass
class TopAttended(Record):
    """The ``k`` keys each query attends to most, best first.

    Attributes
    ----------
    indices : ndarray of int, shape (..., L, k)
    weights : ndarray, shape (..., L, k)
    tokens : ndarray of str (object dtype), shape (..., L, k), or None
        ``tokens[indices]`` when tokens were given.
    """
    indices: np.ndarray
    weights: np.ndarray
    tokens: Optional[np.ndarray] = None


def top_attended(weights, k=5, tokens=None):
    """The ``k`` most attended keys of every query row.

    Parameters
    ----------
    weights : array_like, shape (..., L, S)
    k : int, default 5
        Number of keys kept; ``min(k, S)`` are returned.
    tokens : sequence of str, length S, optional
        Key tokens, to label the result.

    Returns
    -------
    TopAttended
        ``indices`` and ``weights`` of shape (..., L, min(k, S)), sorted by
        decreasing weight; equal weights keep the lower index first.

    Notes
    -----
    Seed: ``interpret_attention_weights``, ``torch.topk(outgoing_weights,
    k=min(5, seq_len))`` (``attention-weights-and-vectors.md``,
    "Interpretação dos Pesos"). As there, keys of weight 0 (not visible) can
    appear in the list when a row has fewer than ``k`` visible keys; their
    weight of 0 says so.
    """
    weights = as_weights(weights)
    n_keys = weights.shape[-1]
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    order = np.argsort(-weights, axis=-1, kind="stable")[..., :min(k, n_keys)]
    top_weights = np.take_along_axis(weights, order, axis=-1)
    labels = None
    if tokens is not None:
        labels = np.asarray(check_tokens(tokens, n_keys), dtype=object)[order]
    return TopAttended(indices=order, weights=top_weights, tokens=labels)


@dataclasses.dataclass
class TokenInterpretation(Record):
    """What one query position attends to (the seed's per-token record).

    Attributes
    ----------
    position : int
        Query position ``i``.
    token : str
        The token at that position.
    attends_to : list of (int, str, float)
        ``(key position, key token, weight)`` of the most attended visible
        keys, best first.
    entropy : float
        :func:`entropy` of the row (nats).
    self_attention : float
        ``w_ii``.
    """
    position: int
    token: str
    attends_to: list
    entropy: float
    self_attention: float


def interpret_weights(weights, tokens, k=5):
    """Per-position summary of one self-attention map.

    Parameters
    ----------
    weights : array_like, shape (L, L)
        One map (index a head first, e.g. ``weights[layer, head]``).
    tokens : sequence of str, length L
    k : int, default 5
        Number of attended keys listed per query.

    Returns
    -------
    list of TokenInterpretation
        One record per query position, in order.

    Notes
    -----
    Seed: ``interpret_attention_weights`` (``attention-weights-and-vectors.md``,
    "Interpretação dos Pesos"), with three departures:

    * the notes return a dict keyed by token text, so a repeated token (two
      "the", two "[SEP]") silently overwrites the earlier position's record;
      here the result is a list with one record per position, each carrying
      its position, and every attended key carries its position too;
    * ``attends_to`` lists only visible keys (weight > 0), at most ``k``; the
      notes' top-k can list masked keys with weight 0;
    * the entropy is the exact one (``0 log 0 = 0``), not the notes'
      epsilon-shifted form (available as ``entropy(..., seed_epsilon=1e-10)``).
    """
    weights = as_weights(weights)
    if weights.ndim != 2 or weights.shape[0] != weights.shape[1]:
        raise ValueError(
            "weights must be one square self-attention map (L, L); index a head "
            f"first (e.g. weights[layer, head]), got shape {weights.shape}")
    tokens = check_tokens(tokens, weights.shape[-1])
    top = top_attended(weights, k=k, tokens=tokens)
    entropy_per_row = entropy(weights)
    diagonal = self_attention(weights)
    return [
        TokenInterpretation(
            position=position,
            token=token,
            attends_to=[(int(index), str(label), float(weight))
                        for index, label, weight in zip(top.indices[position],
                                                        top.tokens[position],
                                                        top.weights[position])
                        if weight > 0],
            entropy=float(entropy_per_row[position]),
            self_attention=float(diagonal[position]))
        for position, token in enumerate(tokens)]


# Closed-class words, lower case: articles, determiners and quantifiers,
# pronouns, prepositions, conjunctions, auxiliary and modal verbs, negation
# and other particles. Forms that are mostly content words in running text
# are left out ("like", "past", "done"; "caso", "quer", "estado").
_ENGLISH_FUNCTION_WORDS = frozenset("""
a an the
this that these those some any no every each either neither all both few
many much more most less least several such what which whose whatever
whichever another other
i me my mine myself you your yours yourself yourselves he him his himself she
her hers herself it its itself we us our ours ourselves they them their theirs
themselves one oneself who whom whoever whomever someone somebody something
anyone anybody anything everyone everybody everything nobody nothing none
there
about above across after against along alongside amid amidst among amongst
around as at before behind below beneath beside besides between beyond by
despite down during except for from in inside into near of off on onto out
outside over per since than through throughout till to
toward towards under underneath unlike until up upon via with within without
and but or nor so yet although though because if unless whether while whilst
whereas when whenever where wherever whereby once lest
be am is are was were been being have has had having do does did
will would shall should can could may might must ought
not n't 't 's 're 've 'll 'd 'm
don't doesn't didn't isn't aren't wasn't weren't haven't hasn't hadn't won't
wouldn't shan't shouldn't can't cannot couldn't mustn't mightn't needn't
i'm you're he's she's it's we're they're i've you've we've they've i'd you'd
he'd she'd we'd they'd i'll you'll he'll she'll we'll they'll that's there's
what's who's let's
""".split())

_PORTUGUESE_FUNCTION_WORDS = frozenset("""
o a os as um uma uns umas
a ante após até com contra de desde em entre para perante por sem sob sobre
trás durante mediante exceto pra pro pras pros
do da dos das no na nos nas ao aos à às pelo pela pelos pelas num numa nuns
numas dum duma duns dumas deste desta destes destas disto desse dessa desses
dessas disso daquele daquela daqueles daquelas daquilo neste nesta nestes
nestas nisto nesse nessa nesses nessas nisso naquele naquela naqueles naquelas
naquilo àquele àquela àqueles àquelas àquilo dele dela deles delas nele nela
neles nelas daqui dali daí donde aonde doutro doutra doutros doutras noutro
noutra noutros noutras
eu tu ele ela nós vós eles elas você vocês me te se lhe lhes vos mim ti si
comigo contigo consigo conosco connosco convosco lo la los las
meu minha meus minhas teu tua teus tuas seu sua seus suas nosso nossa nossos
nossas vosso vossa vossos vossas
este esta estes estas isto esse essa esses essas isso aquele aquela aqueles
aquelas aquilo
que quem qual quais cujo cuja cujos cujas quanto quanta quantos quantas onde
algum alguma alguns algumas nenhum nenhuma nenhuns nenhumas todo toda todos
todas tudo outro outra outros outras cada qualquer quaisquer vários várias
ambos ambas tal tais algo alguém ninguém nada
e ou mas porém contudo todavia entretanto nem porque pois porquanto embora
conquanto quando enquanto como logo portanto conforme senão
não
ser sou és é somos sois são era eras éramos éreis eram fui foste foi fomos
fostes foram fora seja sejas sejamos sejam fosse fossem for forem sido sendo
será serão seria seriam
estar estou estás está estamos estão estava estavas estávamos estavam estive
esteve estivemos estiveram esteja estejam estivesse estivessem estiver
estiverem estando estará estarão estaria estariam
ter tenho tens tem temos têm tinha tinhas tínhamos tinham tive teve tivemos
tiveram tenha tenham tivesse tivessem tiver tiverem tido tendo terá terão
teria teriam
haver hei hás há havemos hão havia haviam houve haja hajam houvesse havido
havendo haverá haveria
""".split())

#: Built-in function-word lists, lower case, by language code.
FUNCTION_WORDS = {"en": _ENGLISH_FUNCTION_WORDS, "pt": _PORTUGUESE_FUNCTION_WORDS}

# Word-start markers of SentencePiece ("\u2581") and GPT-2 byte-level BPE
# ("\u0120"), and the leading space of a decoded byte-level token (" the"),
# stripped so "\u2581the" and " the" read as "the".
_WORD_START_MARKERS = "\u2581\u0120 "


def _word(token):
    """A token as a plain lower-case word, or None for a WordPiece
    continuation piece ("##ing"), which is never a whole word."""
    if token.startswith("##"):
        return None
    return unicodedata.normalize("NFC", token.lstrip(_WORD_START_MARKERS)).casefold()


def function_word_mask(tokens, lang="en"):
    """Which tokens are function (closed-class) words, from built-in lists.

    Parameters
    ----------
    tokens : sequence of str, length L
    lang : {"en", "pt"}, default "en"
        English or Portuguese list (:data:`FUNCTION_WORDS`).

    Returns
    -------
    ndarray of bool, shape (L,)

    Notes
    -----
    For when no POS tagger is available (with tags, use
    :func:`content_function_attention`). The lists hold articles,
    determiners and quantifiers, pronouns, prepositions (for Portuguese also
    their contractions: do, na, ao, pelo, num, deste, naquele, dele, ...),
    conjunctions, auxiliary and modal verbs (be/have/do; ser, estar, ter,
    haver) and negation. Matching is case-insensitive (``str.casefold``,
    Unicode NFC); SentencePiece and GPT-2 word-start markers are stripped;
    WordPiece continuation pieces ("##s") are never function words. Ambiguous
    forms count as function words: Portuguese "a" is an article, a
    preposition and a pronoun.
    """
    if lang not in FUNCTION_WORDS:
        raise ValueError(f"lang must be one of {sorted(FUNCTION_WORDS)}, got {lang!r}")
    words = FUNCTION_WORDS[lang]
    tokens = [str(token) for token in tokens]
    return np.array([_word(token) in words for token in tokens], dtype=bool)


#: Token strings that mark structure rather than text (BERT's and RoBERTa's
#: specials): never content words.
SPECIAL_TOKENS = frozenset({"[CLS]", "[SEP]", "[PAD]", "[MASK]", "[UNK]", "<s>", "</s>"})


def content_word_mask(tokens, lang="en"):
    """Which tokens are content words: words that are not function words.

    Parameters
    ----------
    tokens : sequence of str, length L
    lang : {"en", "pt"}, default "en"
        Function-word list (:func:`function_word_mask`).

    Returns
    -------
    ndarray of bool, shape (L,)

    Notes
    -----
    A token is a content word when it holds a letter or digit, is not in
    :data:`SPECIAL_TOKENS` and is not a function word: the notes' split into
    content and function words ("Tokens de Conteúdo vs. Funcionais",
    ``attention-allocation.md``) without a POS tagger. Punctuation and
    special tokens are neither class. A WordPiece continuation ("##ing")
    counts as content, as it continues a word that is not on the closed
    function-word lists.
    """
    tokens = [str(token) for token in tokens]
    is_word = np.array([token not in SPECIAL_TOKENS and any(char.isalnum() for char in token)
                        for token in tokens], dtype=bool)
    return is_word & ~function_word_mask(tokens, lang=lang)


def _is_punctuation(token):
    """True for a token made only of Unicode punctuation (categories P*)."""
    word = token[2:] if token.startswith("##") else token.lstrip(_WORD_START_MARKERS)
    return bool(word) and all(unicodedata.category(char).startswith("P") for char in word)


@dataclasses.dataclass
class SpecialTokenAttention(Record):
    """Share of each query's attention that goes to special tokens and
    punctuation, averaged over queries; every field has shape (...).

    Attributes
    ----------
    by_special : dict of str to ndarray
        Share per special token string (all its positions together).
    special : ndarray
        Share on all special tokens.
    punctuation : ndarray or None
        Share on punctuation tokens (None when not asked for).
    total : ndarray
        ``special + punctuation``.
    """
    by_special: dict
    special: np.ndarray
    punctuation: Optional[np.ndarray]
    total: np.ndarray


def special_token_attention(weights, tokens, specials=("[CLS]", "[SEP]"), punctuation=True):
    """How much attention goes to special tokens and punctuation.

    Parameters
    ----------
    weights : array_like, shape (..., L, S)
    tokens : sequence of str, length S
        Key tokens.
    specials : sequence of str, default ("[CLS]", "[SEP]")
        Token strings counted as special (exact match).
    punctuation : bool, default True
        Also measure the share on punctuation: tokens made only of Unicode
        punctuation characters (categories P*), specials excluded.

    Returns
    -------
    SpecialTokenAttention

    Notes
    -----
    Clark, Khandelwal, Levy and Manning (2019), "What Does BERT Look At? An
    Analysis of BERT's Attention", section 3 and figure 2: the average
    attention each head puts on [CLS], [SEP] and on periods and commas. Here
    ``share(T) = (1/L') sum_i sum_{j : token_j in T} w_ij`` over the L'
    non-empty rows. Heads that send most of their attention to [SEP] or
    punctuation often act as no-ops.
    """
    weights = as_weights(weights)
    tokens = check_tokens(tokens, weights.shape[-1])
    token_array = np.array(tokens, dtype=object)
    specials = tuple(str(special) for special in specials)
    by_special = {special: key_share(weights, token_array == special) for special in specials}
    is_special = np.isin(token_array, specials)
    special_share = key_share(weights, is_special)
    punctuation_share = None
    total = special_share
    if punctuation:
        is_punctuation = np.array([_is_punctuation(token) for token in tokens], dtype=bool)
        punctuation_share = key_share(weights, is_punctuation & ~is_special)
        total = special_share + punctuation_share
    return SpecialTokenAttention(by_special=by_special, special=special_share,
                                 punctuation=punctuation_share, total=total)


#: Universal POS tags counted as content words (the notes' set plus PROPN).
CONTENT_POS = frozenset({"NOUN", "VERB", "ADJ", "ADV", "PROPN"})
#: Tags counted as function words: the notes' set (DET, PREP, CONJ, PRON; PREP
#: and CONJ are pre-UD-v2 names kept so the notes' tags still work) plus the
#: Universal Dependencies v2 closed classes AUX, ADP, SCONJ, CCONJ, PART.
FUNCTION_POS = frozenset({"DET", "PREP", "CONJ", "PRON", "AUX", "ADP", "SCONJ", "CCONJ", "PART"})


@dataclasses.dataclass
class ContentFunctionAttention(Record):
    """Attention received by content vs function words; fields shape (...).

    Attributes
    ----------
    content_attention_ratio, function_attention_ratio : ndarray
        The notes' ratios: content (function) mass over content + function
        mass. NaN when neither class receives any attention.
    content_bias : ndarray of bool
        The notes' flag: content mass > function mass.
    content_share, function_share : ndarray
        Mean share of a query's attention on content (function) words; unlike
        the ratios these also see the mass on other tags (punctuation,
        numbers, special tokens).
    """
    content_attention_ratio: np.ndarray
    function_attention_ratio: np.ndarray
    content_bias: np.ndarray
    content_share: np.ndarray
    function_share: np.ndarray


def content_function_attention(weights, pos_tags):
    """Attention to content words vs function words, from POS tags.

    Parameters
    ----------
    weights : array_like, shape (..., L, S)
    pos_tags : sequence of str, length S
        Universal POS tag of each key (case-insensitive).

    Returns
    -------
    ContentFunctionAttention

    Notes
    -----
    Seed: ``analyze_content_function_attention``
    (``attention-weights-and-vectors.md``, "Attention to Content vs Function
    Words"): ``C = sum_i sum_{j in content} w_ij``, ``F`` likewise for
    function tags, ratios ``C / (C + F)`` and ``F / (C + F)``, bias
    ``C > F``. Tag sets: :data:`CONTENT_POS`, :data:`FUNCTION_POS` (the
    notes' sets extended with PROPN, AUX, ADP, SCONJ, CCONJ and PART, which
    the notes' sets miss under current Universal Dependencies tagging).
    Departure: the notes divide by zero when neither class gets attention;
    here the ratios are NaN and the bias False. The ``*_share`` fields are an
    addition (see :class:`ContentFunctionAttention`).
    """
    weights = as_weights(weights)
    tags = np.array([tag.upper() for tag in check_tokens(pos_tags, weights.shape[-1], "pos_tags")],
                    dtype=object)
    is_content = np.isin(tags, list(CONTENT_POS))
    is_function = np.isin(tags, list(FUNCTION_POS))
    received = weights.sum(axis=-2)
    content_mass = received @ is_content.astype(received.dtype)
    function_mass = received @ is_function.astype(received.dtype)
    total = content_mass + function_mass
    with np.errstate(invalid="ignore", divide="ignore"):  # 0/0 -> NaN, by design
        content_ratio = np.where(total > 0, content_mass / total, np.nan)
        function_ratio = np.where(total > 0, function_mass / total, np.nan)
    return ContentFunctionAttention(
        content_attention_ratio=content_ratio,
        function_attention_ratio=function_ratio,
        content_bias=np.asarray(content_mass > function_mass),
        content_share=key_share(weights, is_content),
        function_share=key_share(weights, is_function))

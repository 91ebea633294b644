"""Per-head metrics: what kind of pattern a head draws, which known head type
it matches, how alike the heads of a layer are, and how much each one moves.
:func:`head_taxonomy` gives each head its one type (the one ``attnref
report`` shows); :func:`classify_head` is the seed notes' rule, kept as
written.

Shape letters: ``L`` queries, ``S`` keys, ``H`` heads, ``Dv`` the width of one
head's value vectors, ``D`` the model width. ``weights`` are ``(..., L, S)``
maps; the functions that compare or add heads read dim -3 as the head axis,
``(..., H, L, S)``, so ``(layers, heads, L, S)`` gives per-layer tables.

Sources: the seed note ``attention-weights-and-vectors.md`` ("Head
Specialization Patterns": ``analyze_head_specialization``,
``classify_attention_pattern``); TransformerLens ``head_detector.py``
(``detect_head``); Clark et al. 2019; Kobayashi et al. 2020; the seed note
``heads-as-information-movers.md`` (heads that move little are pruning
candidates).
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass

import numpy as np

from ._common import (Record, as_array, as_weights, check_tokens, key_share, mean_over_rows,
                      row_mass, skip_distribution_check, xlogy)
from .diagnostics import (DEFAULT_THRESHOLDS, _share_and_lift, _sink_share, _uniformity,
                          _without_first_key)
from .positions import attention_locality, diagonal_score, next_token_score, previous_token_score
from .tokens import (FUNCTION_POS, FUNCTION_WORDS, content_word_mask, entropy, function_word_mask,
                     mean_entropy)
from .vectors import similarity_attention_correlation

__all__ = [
    "HEAD_PATTERNS",
    "HEAD_TYPES",
    "HEAD_TYPE_DESCRIPTIONS",
    "HeadTaxonomy",
    "head_taxonomy",
    "HeadClassification",
    "HeadImportance",
    "HeadOutputNorms",
    "HeadSpecialization",
    "classify_head",
    "detect_head",
    "head_diversity",
    "head_importance",
    "head_output_norms",
    "head_similarity",
    "head_specialization",
]

HEAD_PATTERNS = ("previous_token", "duplicate_token", "induction")
"""The head types :func:`detect_head` knows by name (TransformerLens's
``previous_token_head``, ``duplicate_token_head``, ``induction_head``)."""

HEAD_TYPES = ("previous-token", "next-token", "self", "sink", "broad", "content-focused",
              "local", "other")
"""The types :func:`head_taxonomy` gives, one per head."""

HEAD_TYPE_DESCRIPTIONS = {
    "previous-token": "attends to the token before",
    "next-token": "attends to the token after",
    "self": "attends to itself",
    "sink": "parks on [CLS]/[SEP]/punctuation or the first token (a no-op)",
    "broad": "spreads evenly over the text (bag of words)",
    "content-focused": "reads the content words",
    "local": "reads a small window around the token",
    "other": "no single pattern holds",
}
"""One line of plain language per :data:`HEAD_TYPES` entry."""

#: The position-specific and sink types, in tie-breaking order (see head_taxonomy).
_TARGET_TYPES = ("previous-token", "next-token", "self", "sink")
#: Shares closer than this are tied: float32 rows sum to 1 within about 1e-7 each.
_TIE = 1e-6

_CLASSIFY_MODES = ("seed", "rows")
_SEED_EPSILON = 1e-10  # compute_attention_entropy's shift, attention-weights-and-vectors.md
_ARC_DIRECTIONS = ("dependent_to_head", "head_to_dependent", "both")


@dataclass
class HeadClassification(Record):
    """:func:`classify_head`'s label and the three numbers it was read from,
    each shaped like the leading dims ``(...)``."""

    pattern: np.ndarray
    diagonal_strength: np.ndarray
    locality: np.ndarray
    entropy: np.ndarray


@dataclass
class HeadTaxonomy(Record):
    """:func:`head_taxonomy`'s verdict and the evidence it was read from;
    every array is shaped like the leading dims ``(...)``.

    Attributes
    ----------
    type : ndarray of str
        One of :data:`HEAD_TYPES` per map.
    score : ndarray
        The evidence behind ``type`` (the share or uniformity that crossed its
        threshold); NaN for ``"other"``.
    previous_token, next_token, diagonal : ndarray
        Mean weight on the key one before, one after, and at the query's own
        position (:func:`~attnref.analysis.positions.previous_token_score`,
        :func:`~attnref.analysis.positions.next_token_score`,
        :func:`~attnref.analysis.positions.diagonal_score`).
    sink : ndarray
        Share on special tokens and punctuation (with tokens), else on the
        first key: the evidence of :func:`attnref.analysis.diagnose`'s
        ``sink`` check.
    uniformity : ndarray
        Mean normalised row entropy: the evidence of ``diagnose``'s
        ``uniform`` check.
    content, content_lift : ndarray
        Share on content words and its ratio to uniform attention's share;
        NaN without tokens.
    local, local_lift : ndarray
        Share within ``window`` positions of the query and its ratio to
        uniform attention's share.
    thresholds : dict of str to float
    """

    type: np.ndarray
    score: np.ndarray
    previous_token: np.ndarray
    next_token: np.ndarray
    diagonal: np.ndarray
    sink: np.ndarray
    uniformity: np.ndarray
    content: np.ndarray
    content_lift: np.ndarray
    local: np.ndarray
    local_lift: np.ndarray
    thresholds: dict


@dataclass
class HeadSpecialization(Record):
    """:func:`head_specialization`'s per-head table: every field is shaped
    like the leading dims ``(...)``; a score whose input was not given is
    NaN."""

    pattern: np.ndarray
    syntactic_score: np.ndarray
    semantic_score: np.ndarray
    locality: np.ndarray
    function_word_bias: np.ndarray


@dataclass
class HeadOutputNorms(Record):
    """:func:`head_output_norms`: ``per_head`` ``(..., H, L, S)`` holds
    ``||alpha^h_ij f^h(x_j)||``; ``combined`` ``(..., L, S)`` holds
    ``||sum_h alpha^h_ij f^h(x_j)||`` (norm of the sum over heads)."""

    per_head: np.ndarray
    combined: np.ndarray


@dataclass
class HeadImportance(Record):
    """:func:`head_importance`: ``scores`` ``(..., H)`` and ``ranking``
    ``(..., H)``, the head indices from most to least information moved."""

    scores: np.ndarray
    ranking: np.ndarray


def classify_head(weights, *, mode="seed", self_threshold=0.5, locality_threshold=0.7,
                  entropy_threshold=3.0):
    """Label each map with the seed notes' four head patterns.

    Parameters
    ----------
    weights : array_like, shape (..., L, S)
        Attention maps (one head, heads, layers x heads, ...).
    mode : {"seed", "rows"}, keyword-only
        ``"seed"`` reproduces ``classify_attention_pattern`` exactly;
        ``"rows"`` reads the diagonal and the entropy per query row (see
        Notes). The locality is the notes' formula in both modes.
    self_threshold, locality_threshold, entropy_threshold : float, keyword-only
        The notes' constants 0.5, 0.7 and 3.0 (nats).

    Returns
    -------
    HeadClassification
        ``pattern``: str array shaped ``(...)``, one of
        ``"self_attention_dominant"``, ``"local_attention"``,
        ``"distributed_attention"``, ``"focused_attention"``; and the evidence
        ``diagonal_strength``, ``locality``, ``entropy``, each ``(...)``.

    Notes
    -----
    The rule is the seed's, checked in this order::

        diagonal_strength > 0.5  -> "self_attention_dominant"
        locality > 0.7           -> "local_attention"
        entropy > 3.0            -> "distributed_attention"
        otherwise                -> "focused_attention"

    with ``locality`` = :func:`attnref.analysis.positions.attention_locality`
    (``1 - (sum_ij A_ij |i - j| / sum_ij A_ij) / (S / 2)``).

    ``mode="seed"`` (``attention-weights-and-vectors.md``, "Head
    Specialization Patterns", ``classify_attention_pattern``):
    ``diagonal_strength`` is the mean of the main diagonal (``torch.diag``:
    ``min(L, S)`` entries, masked rows count as 0) and ``entropy`` is
    ``-sum_ij A_ij log A_ij`` over the *flattened* map. That map is not a
    distribution (it sums to L), and its entropy is the *sum* of the row
    entropies, i.e. L times their mean: the 3-nat threshold asks each query
    for only 3/L nats, so on any sentence longer than a handful of tokens
    nearly every head that is not self- or local-dominant is labelled
    ``"distributed_attention"``. As in the notes, 1e-10 is added to every
    weight before the log (``compute_attention_entropy``); an all-zero map
    gets entropy NaN.

    ``mode="rows"`` asks the questions per query: ``diagonal_strength`` is
    the mean of ``A_ii`` over the visible rows
    (:func:`attnref.analysis.positions.diagonal_score`) and ``entropy`` the
    mean row entropy in nats (:func:`attnref.analysis.tokens.mean_entropy`),
    so the 3-nat threshold means "more than e^3 ~ 20 keys' worth of spread
    per query", whatever L is. Fully masked rows are skipped.

    Even per row, the 3-nat rule cannot fire on a short text: a row's
    entropy is at most ``ln S`` (2.48 nats for the 12 tokens of "The cat
    chased the mouse because it was hungry." with [CLS] and [SEP]), so for
    ``S <= 20`` a perfectly uniform head is ``"focused_attention"``. The
    labels also have no name for the previous-token, next-token and sink
    heads of trained models. :func:`head_taxonomy` is the correct
    alternative: one type per head from the catalogue's detectors, with
    thresholds that do not depend on the length; ``attnref report`` uses it.

    ``analyze_head_specialization`` hands this function a ``(batch, L, S)``
    slice, on which ``torch.diag`` fails; here every map is classified on
    its own and the labels keep the leading dims.
    """
    weights = as_weights(weights)
    if mode == "seed":
        diagonal_strength = np.diagonal(weights, axis1=-2, axis2=-1).mean(axis=-1)
        flattened = weights.reshape(*weights.shape[:-2], 1, -1)
        with skip_distribution_check():  # the seed's flattened map sums to L, by design
            spread = entropy(flattened, seed_epsilon=_SEED_EPSILON)[..., 0]
    elif mode == "rows":
        diagonal_strength = diagonal_score(weights)
        spread = mean_entropy(weights)
    else:
        raise ValueError(f"mode must be one of {_CLASSIFY_MODES}, got {mode!r}")
    locality = attention_locality(weights)
    pattern = np.select(
        [diagonal_strength > self_threshold, locality > locality_threshold,
         spread > entropy_threshold],
        ["self_attention_dominant", "local_attention", "distributed_attention"],
        default="focused_attention")
    return HeadClassification(pattern=pattern, diagonal_strength=diagonal_strength,
                              locality=locality, entropy=spread)


def head_taxonomy(weights, tokens=None, *, lang="en", share=0.5,
                  uniform_entropy=DEFAULT_THRESHOLDS["uniform_entropy"], lift=1.5, window=2,
                  causal=False):
    """Give each head exactly one type: previous-token, next-token, self,
    sink (no-op), broad (bag of words), content-focused, local or other.

    Parameters
    ----------
    weights : array_like, shape (..., L, S)
        Attention maps (a head, heads, layers x heads, batches).
    tokens : sequence of str, length S, optional
        Key tokens. With them the sink is [CLS], [SEP] and punctuation and
        the content-focused type can be decided; without them the sink is
        the first key and no head is content-focused.
    lang : {"en", "pt"}, keyword-only
        Function-word list for the content words
        (:func:`attnref.analysis.tokens.content_word_mask`).
    share : float in (0, 1], keyword-only
        The share of a row's attention a target must hold (default 0.5, a
        majority; see Notes).
    uniform_entropy : float in (0, 1], keyword-only
        The mean normalised entropy from which a head is broad (default
        :data:`~attnref.analysis.diagnostics.DEFAULT_THRESHOLDS`
        ``["uniform_entropy"]``, 0.9).
    lift : float > 0, keyword-only
        How many times uniform attention's share the content and local
        types need (default 1.5).
    window : int >= 1, keyword-only
        Half-width of the local window, ``|j - i| <= window`` (default 2).
    causal : bool, keyword-only
        The maps are a decoder's causal self-attention (see Notes;
        :func:`attnref.analysis.positions.is_causal` tells). Default False.

    Returns
    -------
    HeadTaxonomy
        ``type`` (one of :data:`HEAD_TYPES` per map), ``score`` and the
        evidence, each shaped ``(...)``.

    Notes
    -----
    With shares averaged over the non-empty rows (``share(K) = (1/L')
    sum_i sum_{j in K_i} w_ij``), the first rule that holds gives the type:

    1. ``"broad"``: ``uniformity >= uniform_entropy``, with ``uniformity``
       the mean of ``H_i / log n_i`` over the rows with ``n_i >= 2`` visible
       keys. This is the evidence and threshold of
       :func:`attnref.analysis.diagnose`'s ``uniform`` check (seed:
       "Atenção Uniforme"), so a head is broad exactly when diagnose calls
       it uniform. Clark et al. 2019 ("What Does BERT Look At?", Sec. 3.3)
       call such heads broad: their output is roughly a bag of vectors of
       the sentence.
    2. The largest of four targets, if it holds at least ``share``:
       ``"previous-token"`` (``mean_i w_{i,i-1}``), ``"next-token"``
       (``mean_i w_{i,i+1}``), ``"self"`` (``mean_i w_ii``), each over the
       rows that have that key (Clark et al. 2019, Sec. 3.1, positional
       heads), and ``"sink"``: the share on [CLS], [SEP] and punctuation
       (with tokens, :func:`attnref.analysis.tokens.special_token_attention`
       ``.total``; Clark et al. 2019, Sec. 3.2, read such heads as no-ops)
       or on the first key (without,
       :func:`attnref.analysis.tokens.sink_score`; Xiao et al. 2023). This
       is diagnose's ``sink`` evidence, and ``share`` defaults to its
       threshold. Ties (shares within 1e-6, float rounding) go to the
       earlier type in that order (a position is the more specific claim).
       Above 0.5 two targets can both qualify only where they overlap (the
       token before the first word is [CLS]).
    3. ``"content-focused"``: ``share(content words) >= share`` and
       ``>= lift`` times the share uniform attention over each row's visible
       keys would give them (the notes' content vs function words,
       "Tokens de Conteúdo vs. Funcionais"; the lift is diagnose's
       ``function_word_lift`` default read the other way).
    4. ``"local"``: ``share(|j - i| <= window) >= share`` and ``>= lift``
       times uniform attention's share of that window (the notes' "early
       layers local"; the lift keeps a short text, where the window is most
       of the keys, from making every head local).
    5. ``"other"``.

    With ``causal``, as in :func:`attnref.analysis.diagnose`: the sink is
    the first key whatever its token, over the rows that see at least 2
    keys (Xiao et al. 2023: the default pattern of a decoder head),
    ``content`` is the share among the attention besides the first token
    (rows 1.. over keys 1.., renormalised), and ``next_token`` is NaN,
    since no query can see the token after it. The
    uniformity and the lifts already compare each row with uniform
    attention over its visible prefix (``log(i + 1)`` bounds row ``i``'s
    entropy), so they mean the same under a causal mask.

    None of the thresholds depends on the length, unlike the 3-nat rule of
    :func:`classify_head`. As everywhere in :mod:`attnref.analysis`, a key
    of weight exactly 0 is masked: a row even over the few keys it can see
    is uniform, so a constructed map that is even over two keys and exactly
    0 elsewhere is broad (softmax never gives exact zeros). Edge cases: with
    ``L = S = 1`` the one key is the query itself, so the head is
    ``"self"``; a map with no visible key is ``"other"`` with NaN evidence.

    Examples
    --------
    >>> previous = np.eye(4, k=-1); previous[0, 0] = 1
    >>> head_taxonomy(np.stack([previous, np.full((4, 4), 0.25)])).type
    array(['previous-token', 'broad'], dtype='<U15')
    """
    weights = as_weights(weights)
    length, n_keys = weights.shape[-2:]
    for name, value in (("share", share), ("uniform_entropy", uniform_entropy)):
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 < value <= 1:
            raise ValueError(f"{name} must be a number in (0, 1], got {value!r}")
    if isinstance(lift, bool) or not isinstance(lift, numbers.Real) or not lift > 0:
        raise ValueError(f"lift must be a positive number, got {lift!r}")
    if lang not in FUNCTION_WORDS:
        raise ValueError(f"lang must be one of {sorted(FUNCTION_WORDS)}, got {lang!r}")
    if isinstance(window, bool) or not isinstance(window, (int, np.integer)) or window < 1:
        raise ValueError(f"window must be an integer >= 1, got {window!r}")
    if not isinstance(causal, (bool, np.bool_)):
        raise TypeError(f"causal must be True or False, got {causal!r}")
    if tokens is not None:
        tokens = check_tokens(tokens, n_keys)

    next_token = (np.full(weights.shape[:-2], np.nan) if causal  # impossible under the mask
                  else next_token_score(weights))
    targets = np.stack([previous_token_score(weights), next_token,
                        diagonal_score(weights), _sink_share(weights, tokens, causal)[0]])
    uniformity = _uniformity(weights)
    if tokens is None:
        content = content_lift = np.full(weights.shape[:-2], np.nan)
    elif causal:   # the content words among what the head reads besides the sink
        content, content_lift = _share_and_lift(_without_first_key(weights),
                                                content_word_mask(tokens, lang=lang)[1:])
    else:
        content, content_lift = _share_and_lift(weights, content_word_mask(tokens, lang=lang))
    offsets = np.arange(n_keys)[None, :] - np.arange(length)[:, None]
    local, local_lift = _share_and_lift(weights, np.abs(offsets) <= window)

    filled = np.nan_to_num(targets, nan=-np.inf)
    # the first type within _TIE of the largest: float32 rounding does not break a tie
    best = np.argmax(filled >= filled.max(axis=0) - _TIE, axis=0)
    best_share = np.take_along_axis(filled, best[None], axis=0)[0]
    with np.errstate(invalid="ignore"):  # NaN evidence compares False: the rule does not hold
        rules = [uniformity >= uniform_entropy, best_share >= share,
                 (content >= share) & (content_lift >= lift),
                 (local >= share) & (local_lift >= lift)]
    kind = np.select(rules, ["broad", np.array(_TARGET_TYPES)[best], "content-focused", "local"],
                     default="other").astype(f"<U{max(map(len, HEAD_TYPES))}")
    score = np.select(rules, [uniformity, best_share, content, local], default=np.nan)
    return HeadTaxonomy(type=kind, score=score, previous_token=targets[0],
                        next_token=targets[1], diagonal=targets[2], sink=targets[3],
                        uniformity=uniformity, content=content, content_lift=content_lift,
                        local=local, local_lift=local_lift,
                        thresholds={"share": float(share),
                                    "uniform_entropy": float(uniform_entropy),
                                    "lift": float(lift), "window": int(window)})


def head_specialization(weights, tokens=None, pos_tags=None, arcs=None, embeddings=None, *,
                        mode="seed", arc_direction="dependent_to_head"):
    """The seed notes' per-head specialisation table, with every score defined.

    Parameters
    ----------
    weights : array_like, shape (..., L, S)
        Attention maps; for ``(layers, heads, L, S)`` every field is a
        ``(layers, heads)`` table.
    tokens : sequence of str, length S, optional
        Key tokens; used for ``function_word_bias`` when ``pos_tags`` is
        absent (:func:`attnref.analysis.tokens.function_word_mask`, English).
    pos_tags : sequence of str, length S, optional
        Universal POS tags of the keys; tags in
        :data:`attnref.analysis.tokens.FUNCTION_POS` are function words.
    arcs : sequence of (head_index, dependent_index) pairs, optional
        Dependency arcs, 0-based positions (leave the root out).
    embeddings : array_like, shape (..., L, E), optional
        One vector per position (self-attention maps, ``L == S``).
    mode : {"seed", "rows"}, keyword-only
        Passed to :func:`classify_head` for ``pattern``.
    arc_direction : {"dependent_to_head", "head_to_dependent", "both"}, keyword-only
        Which word of an arc is the query: the dependent attending to its
        head (default), the head attending to its dependents, or either.

    Returns
    -------
    HeadSpecialization
        ``pattern`` (str), ``syntactic_score``, ``semantic_score``,
        ``locality``, ``function_word_bias``, each shaped ``(...)``. A score
        whose input is missing is NaN.

    Notes
    -----
    ``analyze_head_specialization`` (``attention-weights-and-vectors.md``,
    "Head Specialization Patterns") calls three helpers the notes never
    define; attnref defines them as follows.

    * ``pattern``: :func:`classify_head` (``classify_attention_pattern``).
    * ``syntactic_score``: with ``P`` the set of (query, key) arc pairs in
      the chosen direction and ``Q`` their queries,
      ``sum_{(i,j) in P} A_ij / sum_{i in Q} sum_j A_ij``: the share of the
      arc queries' attention that lands on their arc partners (the mean of
      ``A[dependent, head]`` over arcs for softmax rows). This is the soft
      form of Clark et al. 2019 ("What Does BERT Look At? An Analysis of
      BERT's Attention", Sec. 4.2), who score each direction of a relation
      by how often the most-attended word is the partner, and the
      proportion-of-attention measure of Vig & Belinkov 2019 ("Analyzing
      the Structure of Attention in a Transformer Language Model") restricted
      to the rows that have an arc.
    * ``semantic_score``: the Pearson correlation between the map and the
      cosine similarities of ``embeddings`` over the token pairs, the notes'
      ``analyze_semantic_similarity_attention``
      (:func:`attnref.analysis.vectors.similarity_attention_correlation`,
      whose ``correlation`` this is). NaN when either side is constant.
    * ``locality``: :func:`attnref.analysis.positions.attention_locality`.
    * ``function_word_bias``: ``mean_i sum_j A_ij f_j`` over the visible
      rows, the mean share of a query's attention that goes to function-word
      keys (``f_j`` = 1 for them; tags compared case-insensitively), the same
      number as ``content_function_attention(...).function_share``.
    """
    weights = as_weights(weights)
    length, keys = weights.shape[-2:]
    nan_table = np.full(weights.shape[:-2], np.nan)
    if arc_direction not in _ARC_DIRECTIONS:
        raise ValueError(f"arc_direction must be one of {_ARC_DIRECTIONS}, got {arc_direction!r}")

    if arcs is None:
        syntactic_score = nan_table
    else:
        arc_pairs = _arc_pairs(arcs, length, keys, arc_direction)
        arc_queries = arc_pairs.any(axis=-1)
        with np.errstate(invalid="ignore", divide="ignore"):  # all arc rows masked -> NaN
            syntactic_score = ((weights * arc_pairs).sum(axis=(-2, -1))
                               / row_mass(weights)[..., arc_queries].sum(axis=-1))

    if embeddings is None:
        semantic_score = nan_table
    else:
        semantic_score = similarity_attention_correlation(embeddings, weights).correlation

    if pos_tags is not None:
        tags = [tag.upper() for tag in check_tokens(pos_tags, keys, "pos_tags")]
        function_keys = np.isin(tags, list(FUNCTION_POS))
    elif tokens is not None:
        function_keys = function_word_mask(check_tokens(tokens, keys))
    else:
        function_keys = None
    function_word_bias = nan_table if function_keys is None else key_share(weights, function_keys)

    return HeadSpecialization(
        pattern=classify_head(weights, mode=mode).pattern,
        syntactic_score=syntactic_score,
        semantic_score=semantic_score,
        locality=attention_locality(weights),
        function_word_bias=function_word_bias)


def _arc_pairs(arcs, length, keys, arc_direction):
    """Bool (L, S): the (query, key) pairs that the arcs make, in the chosen
    direction."""
    arcs = np.asarray(arcs)
    if arcs.size == 0:  # np.asarray([]) is float: no arcs, no type to check
        arcs = np.zeros((0, 2), dtype=int)
    if arcs.ndim != 2 or arcs.shape[1] != 2 or not np.issubdtype(arcs.dtype, np.integer):
        raise ValueError(
            f"arcs must be (head_index, dependent_index) integer pairs, got an array of "
            f"shape {arcs.shape} and dtype {arcs.dtype}")
    bound = min(length, keys)
    if arcs.size and (arcs.min() < 0 or arcs.max() >= bound):
        raise ValueError(
            f"arcs must hold positions in [0, {bound}) for weights with L={length}, S={keys}, "
            f"got values from {arcs.min()} to {arcs.max()}")
    heads, dependents = arcs[:, 0], arcs[:, 1]
    pairs = np.zeros((length, keys), dtype=bool)
    if arc_direction in ("dependent_to_head", "both"):
        pairs[dependents, heads] = True
    if arc_direction in ("head_to_dependent", "both"):
        pairs[heads, dependents] = True
    return pairs


def detect_head(weights, pattern, tokens=None, *, error_measure="mul", exclude_bos=False,
                exclude_current_token=False, decimals=3):
    """How well each map matches a known head type: TransformerLens's
    ``detect_head`` score.

    Parameters
    ----------
    weights : array_like, shape (..., L, L)
        Attention maps over one sequence (square: queries and keys are the
        same positions).
    pattern : {"previous_token", "duplicate_token", "induction"} or array_like
        A head type, or a detection pattern of shape (L, L).
    tokens : sequence, length L, optional
        The sequence (token ids or strings, compared for equality); needed for
        ``"duplicate_token"`` and ``"induction"``. With TransformerLens it
        includes the BOS token that ``model.to_tokens`` prepends.
    error_measure : {"mul", "abs"}, keyword-only
        See Notes.
    exclude_bos : bool, keyword-only
        Ignore attention paid to position 0.
    exclude_current_token : bool, keyword-only
        Ignore attention a position pays to itself.
    decimals : int or None, keyword-only
        ``"abs"`` scores are rounded to this many decimals, as TransformerLens
        does (3); ``None`` keeps the exact value. Unused by ``"mul"``.

    Returns
    -------
    ndarray, shape (...)
        One score per map.

    Notes
    -----
    Source: TransformerLens, ``transformer_lens/head_detector.py``
    (``detect_head``, ``get_*_detection_pattern``,
    ``compute_head_attention_similarity_score``). With ``D`` the detection
    pattern (lower triangular, 0/1):

    * previous token: ``D_ij = 1`` iff ``j = i - 1``;
    * duplicate token: ``D_ij = 1`` iff ``j < i`` and ``t_j = t_i``;
    * induction: ``D_ij = 1`` iff ``1 <= j <= i`` and ``t_{j-1} = t_i`` with
      ``j - 1 < i`` (the token right after an earlier occurrence of the
      current one; ``j = i`` when the current token repeats the previous one,
      as in TransformerLens).

    ``K_ij`` is 0 on column 0 when ``exclude_bos``, 0 on the diagonal when
    ``exclude_current_token``, else 1. Then

    * ``"mul"``: ``sum_ij K_ij A_ij D_ij / sum_ij K_ij A_ij``, the share of
      the (kept) attention that falls where the pattern says (0/0 = NaN when
      nothing is kept, e.g. L = 2 with both exclusions on a causal map);
    * ``"abs"``: ``1 - round(sum_ij K_ij |A_ij - D_ij| / L, decimals)``
      (TransformerLens writes it ``abs_diff.mean() * size``), 1 for a perfect
      match. Row i can miss by up to ``1 + sum_j D_ij``, so the floor is -1
      for the previous-token pattern (TransformerLens's documented range)
      but lower when tokens repeat several times.

    TransformerLens asserts for ``"abs"`` that the map is causal (zero above
    the diagonal); attnref instead counts any weight above the diagonal as
    mismatch, which gives the same number on causal maps and a defined one
    on bidirectional maps. TransformerLens averages the scores of a list of
    sequences; do the same with a mean over the batch dim of the result. A
    pattern given as an array is used as is (TransformerLens requires it
    lower triangular).
    """
    weights = as_weights(weights)
    length = weights.shape[-1]
    if weights.shape[-2] != length:
        raise ValueError(f"weights must be square (..., L, L) for detect_head, got {weights.shape}")
    if error_measure not in ("mul", "abs"):
        raise ValueError(f"error_measure must be 'mul' or 'abs', got {error_measure!r}")
    detection = _detection_pattern(pattern, tokens, length)

    kept = np.ones((length, length), dtype=bool)
    if exclude_bos:
        kept[:, 0] = False
    if exclude_current_token:
        np.fill_diagonal(kept, False)

    if error_measure == "mul":
        kept_weights = weights * kept
        with np.errstate(invalid="ignore", divide="ignore"):  # nothing kept -> NaN, as 0/0 in torch
            return (kept_weights * detection).sum(axis=(-2, -1)) / kept_weights.sum(axis=(-2, -1))
    # mean * L (not sum / L) to round the same float as TransformerLens.
    mismatch = (np.abs(weights - detection) * kept).mean(axis=(-2, -1)) * length
    if decimals is not None:
        # Python's round (correctly rounded decimal), as TransformerLens applies to .item();
        # np.round can differ from it by one unit in the last decimal.
        mismatch = np.vectorize(lambda value: round(value, decimals), otypes=[float])(mismatch)
    return 1 - mismatch


def _detection_pattern(pattern, tokens, length):
    """Float (L, L): the detection pattern named by ``pattern``, or ``pattern``
    itself when it is an array."""
    if not isinstance(pattern, str):
        detection = as_array(pattern, "pattern")
        if detection.shape != (length, length):
            raise ValueError(
                f"pattern must be one of {HEAD_PATTERNS} or an array of shape "
                f"{(length, length)}, got shape {detection.shape}")
        return detection
    if pattern == "previous_token":
        return np.eye(length, k=-1)
    if pattern not in HEAD_PATTERNS:
        raise ValueError(
            f"pattern must be one of {HEAD_PATTERNS} or an (L, L) array, got {pattern!r}")
    if tokens is None:
        raise ValueError(f"pattern {pattern!r} needs tokens (the sequence), got None")
    sequence = np.asarray(check_tokens(tokens, length))
    duplicate = np.tril(sequence[:, None] == sequence[None, :], k=-1).astype(float)
    if pattern == "duplicate_token":
        return duplicate
    induction = np.zeros((length, length))
    induction[:, 1:] = duplicate[:, :-1]
    return np.tril(induction)


def head_similarity(weights, *, smoothing=0.001):
    """Jensen-Shannon divergence between every pair of heads.

    Parameters
    ----------
    weights : array_like, shape (..., H, L, S)
        The heads of a layer (dim -3), with any leading dims.
    smoothing : float in [0, 1), keyword-only
        Weight of the uniform distribution mixed into every row before the
        comparison (Clark et al.'s 0.001).

    Returns
    -------
    ndarray, shape (..., H, H)
        Symmetric, zero diagonal, values in [0, log 2] nats: the mean over
        query rows of the divergence between the two heads' rows. Rows that
        are fully masked in either head are skipped (NaN if all are).

    Notes
    -----
    Clark et al. 2019, "What Does BERT Look At? An Analysis of BERT's
    Attention", Sec. 6, and their ``head_distances.py``
    (clarkkev/attention-analysis): every row is smoothed,
    ``p' = smoothing / S + (1 - smoothing) p``, and

    ``JS(p', q') = H(m) - (H(p') + H(q')) / 2``, ``m = (p' + q') / 2``

    with natural logs. Their script smooths with ``0.001 / attns.shape[1]``
    (the number of rows, = S on their square maps; S keeps rows summing to 1
    when L != S) and *sums* over tokens and documents; this takes the mean
    over the query rows of one map, so numbers do not grow with L (multiply
    by the number of rows to get theirs). Heads are compared one
    against all in turn, so memory stays ``(..., H, L, S)``.
    """
    weights = as_weights(weights, min_ndim=3)
    if not 0 <= smoothing < 1:
        raise ValueError(f"smoothing must be in [0, 1), got {smoothing}")
    smoothed = smoothing / weights.shape[-1] + (1 - smoothing) * weights
    row_negentropy = xlogy(smoothed, smoothed).sum(axis=-1)  # (..., H, L)
    visible = row_mass(weights) > 0  # (..., H, L)
    divergence_rows = []
    for head in range(weights.shape[-3]):
        mixture = (smoothed[..., head:head + 1, :, :] + smoothed) / 2  # (..., H, L, S)
        divergence = (-xlogy(mixture, mixture).sum(axis=-1)
                      + (row_negentropy[..., head:head + 1, :] + row_negentropy) / 2)
        both_visible = visible[..., head:head + 1, :] & visible
        # Clipped at 0: H(m) - mean entropy can round to -1e-17 for near-equal rows.
        divergence = np.where(both_visible, np.maximum(divergence, 0.0), np.nan)
        divergence_rows.append(mean_over_rows(divergence))  # (..., H)
    return np.stack(divergence_rows, axis=-2)


def head_diversity(weights, *, smoothing=0.001):
    """How different the heads of a layer are: mean pairwise Jensen-Shannon
    divergence.

    Parameters
    ----------
    weights : array_like, shape (..., H, L, S)
        The heads of a layer (dim -3).
    smoothing : float in [0, 1), keyword-only
        As in :func:`head_similarity`.

    Returns
    -------
    ndarray, shape (...)
        ``mean_{h != g} JS(h, g)`` from :func:`head_similarity`, in
        [0, log 2] nats: 0 when all heads draw the same map; NaN with one
        head.

    Notes
    -----
    The seed notes ("Boas Práticas": regularisation that encourages
    diversity between heads) name the goal; the distance is Clark et al.
    2019's (see :func:`head_similarity`).
    """
    divergence = head_similarity(weights, smoothing=smoothing)
    heads = divergence.shape[-1]
    return mean_over_rows(divergence[..., ~np.eye(heads, dtype=bool)])


def head_output_norms(weights, values, w_o=None):
    """Norm-based contributions of every key to every query, per head and for
    the heads together (Kobayashi et al. 2020).

    Parameters
    ----------
    weights : array_like, shape (..., H, L, S)
        Attention maps of the heads of a layer.
    values : array_like, shape (..., H, S, Dv)
        Each head's value vectors (bias included), leading dims broadcast
        with those of ``weights``.
    w_o : array_like, shape (H, Dv, D) or (H * Dv, D), optional
        The output projection in ``output = concat_h(head_h) @ w_o`` form
        (head h owns rows ``h * Dv : (h + 1) * Dv``). A ``torch.nn.Linear``
        stores the transpose (``out_proj.weight.T`` is this). ``None`` means
        no projection: each head's vectors stay in their own block.

    Returns
    -------
    HeadOutputNorms
        ``per_head`` ``(..., H, L, S)``: ``||alpha^h_ij f^h(x_j)||``;
        ``combined`` ``(..., L, S)``: ``||sum_h alpha^h_ij f^h(x_j)||``.

    Notes
    -----
    Kobayashi, Kuribayashi, Yokoi & Inui 2020, "Attention is Not Only a
    Weight: Analyzing Transformers with Vector Norms", Sec. 3: the output of
    head h at query i is ``sum_j alpha^h_ij f^h(x_j)`` with
    ``f^h(x_j) = v^h_j W_O^h``, so key j's contribution has norm
    ``|alpha^h_ij| ||f^h(x_j)||``, and across heads (the multi-head case)
    the contribution is the norm of the *sum* ``sum_h alpha^h_ij f^h(x_j)``, not
    the sum of norms. With ``w_o`` it is computed through the Gram matrix
    ``G_j[h, g] = <f^h(x_j), f^g(x_j)>`` as
    ``sqrt(sum_hg alpha^h_ij alpha^g_ij G_j[h, g])``, which never builds an
    ``(L, S, D)`` array. Without ``w_o``, ``f^h(x_j) = v^h_j`` and the heads
    are concatenated, so ``combined = sqrt(sum_h per_head**2)``.
    """
    weights = as_weights(weights, min_ndim=3)
    head_vectors = _head_vectors(weights, values, w_o)  # (..., H, S, Dv or D)
    per_head = _contribution_norms(weights, head_vectors)
    if w_o is None:
        combined = np.sqrt((per_head ** 2).sum(axis=-3))
    else:
        gram = np.einsum("...hsd,...gsd->...shg", head_vectors, head_vectors)
        squared = np.einsum("...hls,...gls,...shg->...ls", weights, weights, gram, optimize=True)
        # Clipped at 0: the Gram expansion can round a zero norm to -1e-17.
        combined = np.sqrt(np.maximum(squared, 0.0))
    return HeadOutputNorms(per_head=per_head, combined=combined)


def _head_vectors(weights, values, w_o):
    """(..., H, S, Dv) or (..., H, S, D): f^h(x_j), each head's value vectors
    after its slice of ``w_o`` (or as given when ``w_o`` is None)."""
    heads, _, keys = weights.shape[-3:]
    values = as_array(values, "values", min_ndim=3)
    if values.shape[-3:-1] != (heads, keys):
        raise ValueError(
            f"values must be (..., H, S, Dv) with H={heads}, S={keys} to match weights "
            f"{weights.shape}, got {values.shape}")
    if w_o is None:
        return values
    value_width = values.shape[-1]
    w_o = as_array(w_o, "w_o")
    if w_o.ndim == 2 and w_o.shape[0] == heads * value_width:
        w_o = w_o.reshape(heads, value_width, w_o.shape[1])
    if w_o.ndim != 3 or w_o.shape[:2] != (heads, value_width):
        raise ValueError(
            f"w_o must be (H, Dv, D) or (H * Dv, D) with H={heads}, Dv={value_width}, "
            f"got {w_o.shape}")
    return np.einsum("...hsv,hvd->...hsd", values, w_o)


def _contribution_norms(weights, head_vectors):
    """(..., H, L, S): ||alpha^h_ij f^h(x_j)|| = |alpha^h_ij| ||f^h(x_j)||."""
    return np.abs(weights) * np.linalg.norm(head_vectors, axis=-1)[..., None, :]


def head_importance(weights, values, w_o=None):
    """Rank heads by how much information they move between positions.

    Parameters
    ----------
    weights : array_like, shape (..., H, L, S)
        Attention maps of the heads of a layer.
    values, w_o
        As in :func:`head_output_norms`.

    Returns
    -------
    HeadImportance
        ``scores`` ``(..., H)`` and ``ranking`` ``(..., H)``: head indices
        sorted by decreasing score within each leading index (NaN last). For
        one ranking across layers, sort ``scores`` flattened.

    Notes
    -----
    ``score_h = mean_i sum_{j != i} ||alpha^h_ij f^h(x_j)||``: the total size
    of the pieces the head moves into query i from the *other* positions
    (Kobayashi et al. 2020's norm-based contributions,
    :func:`head_output_norms`), averaged over the visible query rows;
    ``j = i`` is the top-left diagonal. Attention to
    oneself moves nothing between residual streams, so it is left out. The
    seed note ``heads-as-information-movers.md`` ("Implicações para o Design
    de Modelos", item 2) names heads that move little information as pruning
    candidates: they are the tail of ``ranking``.
    """
    weights = as_weights(weights, min_ndim=3)
    per_head = _contribution_norms(weights, _head_vectors(weights, values, w_o))
    off_diagonal = ~np.eye(*weights.shape[-2:], dtype=bool)
    moved = np.where(row_mass(weights) > 0, (per_head * off_diagonal).sum(axis=-1), np.nan)
    scores = mean_over_rows(moved)
    return HeadImportance(scores=scores, ranking=np.argsort(-scores, axis=-1, kind="stable"))

"""Attention analysis: every metric of the seed notes, and the standard ones
from the interpretability literature, as pure NumPy functions.

Every metric takes weights shaped ``(..., L, S)`` and keeps the leading dims,
so ``(layers, heads, L, S)`` gives per-layer, per-head tables. Conventions
are in :mod:`attnref.analysis._common`; ``docs/analysis.md`` maps each seed
function and paper metric to its name here.

Weights must be distributions: every metric (and regulariser) that takes
``weights`` raises a ValueError naming the first negative (or NaN) entry or
the first row that sums to neither 1 nor 0 (0 is a fully masked row), within
a tolerance that scales with the dtype's epsilon and sqrt(S)
(:func:`~attnref.analysis._common.distribution_tolerance`). Rows of 5.0 or
raw scores would otherwise give meaningless numbers (an "entropy" of -24,
or NaN). To compute a formula on something else on purpose (unnormalised
rows, a subset of the keys), call it inside ``with
analysis.skip_distribution_check():``::

    with analysis.skip_distribution_check():
        analysis.sparsity(maps[..., 1:])      # the rows without the first key

Modules: :mod:`~attnref.analysis.tokens` (token-level allocation),
:mod:`~attnref.analysis.positions` (positional patterns),
:mod:`~attnref.analysis.heads` (head types, detection, similarity, norms),
:mod:`~attnref.analysis.flow` (layers, rollout, max-flow),
:mod:`~attnref.analysis.vectors` (value composition, similarity),
:mod:`~attnref.analysis.circuits` (induction and duplicate-token heads, the
repeated-tokens probe), :mod:`~attnref.analysis.lens` (logit lens, direct
logit attribution),
:mod:`~attnref.analysis.quality`, :mod:`~attnref.analysis.diagnostics`,
:mod:`~attnref.analysis.regularizers`.
"""
from ._common import skip_distribution_check
from .circuits import (InductionScores, duplicate_token_score, induction_head_scores,
                       induction_probe_ids, induction_score)
from .diagnostics import DEFAULT_THRESHOLDS, Diagnosis, Finding, diagnose
from .flow import (AttentionFlowTable, LayerProfile, attention_flow_table, attention_max_flow,
                   attention_rollout, layer_profile)
from .heads import (HEAD_PATTERNS, HEAD_TYPE_DESCRIPTIONS, HEAD_TYPES, HeadClassification,
                    HeadImportance, HeadOutputNorms, HeadSpecialization, HeadTaxonomy,
                    classify_head, detect_head, head_diversity, head_importance,
                    head_output_norms, head_similarity, head_specialization, head_taxonomy)
from .lens import (DirectLogitAttribution, LogitLens, direct_logit_attribution, logit_lens,
                   residual_components)
from .positions import (PositionalBias, RelativePositionProfile, attention_locality,
                        diagonal_score, is_causal, mean_attention_distance, next_token_score,
                        positional_bias, previous_token_score, relative_position_profile)
from .quality import AttentionQuality, attention_quality
from .regularizers import (LossAndGradient, clip_attention_weights, entropy_regularizer,
                           head_diversity_regularizer, sparsity_regularizer)
from .tokens import (CONTENT_POS, FUNCTION_POS, FUNCTION_WORDS, SPECIAL_TOKENS,
                     ContentFunctionAttention, SpecialTokenAttention, TokenInterpretation,
                     TopAttended, confidence, content_function_attention, content_word_mask,
                     effective_support, entropy,
                     function_word_mask, interpret_weights, mean_entropy, received_attention,
                     self_attention, sink_score, sparsity, special_token_attention,
                     top_attended)
from .vectors import (SimilarityAttention, VectorComposition, similarity_attention_correlation,
                      vector_composition)

__all__ = [
    # the distribution check
    "skip_distribution_check",
    # tokens
    "entropy", "mean_entropy", "effective_support", "confidence", "sparsity",
    "self_attention", "received_attention", "sink_score", "top_attended",
    "interpret_weights", "function_word_mask", "content_word_mask", "special_token_attention",
    "content_function_attention", "TopAttended", "TokenInterpretation",
    "SpecialTokenAttention", "ContentFunctionAttention", "CONTENT_POS",
    "FUNCTION_POS", "FUNCTION_WORDS", "SPECIAL_TOKENS",
    # positions
    "positional_bias", "attention_locality", "mean_attention_distance",
    "relative_position_profile", "previous_token_score", "next_token_score",
    "diagonal_score", "is_causal", "PositionalBias", "RelativePositionProfile",
    # heads
    "head_taxonomy", "classify_head", "head_specialization", "detect_head",
    "head_similarity", "head_diversity", "head_output_norms", "head_importance",
    "HEAD_TYPES", "HEAD_TYPE_DESCRIPTIONS", "HEAD_PATTERNS", "HeadTaxonomy",
    "HeadClassification", "HeadSpecialization", "HeadOutputNorms", "HeadImportance",
    # circuits: induction, duplicate tokens, the probe
    "induction_score", "duplicate_token_score", "induction_head_scores", "induction_probe_ids",
    "InductionScores",
    # the residual stream in vocabulary space
    "logit_lens", "direct_logit_attribution", "residual_components", "LogitLens",
    "DirectLogitAttribution",
    # layers and flow
    "attention_flow_table", "attention_rollout", "attention_max_flow", "layer_profile",
    "AttentionFlowTable", "LayerProfile",
    # vectors
    "vector_composition", "similarity_attention_correlation", "VectorComposition",
    "SimilarityAttention",
    # quality and diagnostics
    "attention_quality", "AttentionQuality", "diagnose", "Diagnosis", "Finding",
    "DEFAULT_THRESHOLDS",
    # regularisers and post-processing
    "entropy_regularizer", "sparsity_regularizer", "head_diversity_regularizer",
    "clip_attention_weights", "LossAndGradient",
]

"""attnref.variants: every variant against a brute-force definition written
as plain loops over (i, j), plus the properties that make each one usable.

All comparisons are in float64 with one tolerance, ``TOL``: the brute forces
sum in another order than the vectorised code, nothing more.
"""
import doctest
import math
import tracemalloc

import numpy as np
import pytest
from hypothesis import given, strategies as st

from attnref import masks, scaled_dot_product_attention, variants
from attnref.variants import (alibi_bias, alibi_slopes, clipped_relative_positions,
                              fixed_mask, global_tokens_mask, linear_attention,
                              relative_position_bias, relative_position_bucket,
                              strided_mask, topk_attention)

TOL = 1e-12
sdpa = scaled_dot_product_attention
sizes = st.integers(0, 10)
alignments = st.sampled_from(masks.ALIGNMENTS)
seeds = st.integers(0, 2**32 - 1)


def close(actual, expected):
    np.testing.assert_allclose(actual, expected, rtol=0, atol=TOL)


def qkv(seed, L, S, E=3, Ev=2, batch=()):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(batch + (L, E)), rng.standard_normal(batch + (S, E)),
            rng.standard_normal(batch + (S, Ev)))


def position(i, L, S, alignment):
    """Query i's position on the key axis."""
    return i if alignment == "top_left" else i + S - L


def brute_attention(query, key, value, allowed, bias=None, scale=None):
    """Softmax attention of one (L, E) query block, key by key: the definition."""
    L, S = allowed.shape
    scale = 1 / math.sqrt(query.shape[-1]) if scale is None else scale
    output = np.zeros((L, value.shape[-1]))
    weights = np.zeros((L, S))
    for i in range(L):
        scores = {j: scale * float(query[i] @ key[j]) + (0.0 if bias is None else bias[i, j])
                  for j in range(S) if allowed[i, j]}
        if not scores:
            continue
        top = max(scores.values())
        total = sum(math.exp(s - top) for s in scores.values())
        for j, s in scores.items():
            weights[i, j] = math.exp(s - top) / total
            output[i] += weights[i, j] * value[j]
    return output, weights


# ------------------------------------------------------------ sparse patterns

def strided_by_definition(L, S, stride, causal, alignment):
    mask = np.zeros((L, S), dtype=bool)
    for i in range(L):
        p = position(i, L, S, alignment)
        for j in range(S):
            local = abs(p - j) <= stride
            column = (p - j) % stride == 0
            mask[i, j] = (local or column) and (j <= p or not causal)
    return mask


@given(sizes, sizes, st.integers(1, 5), st.booleans(), alignments)
def test_strided_mask_matches_definition(L, S, stride, causal, alignment):
    assert np.array_equal(strided_mask(L, S, stride=stride, causal=causal, alignment=alignment),
                          strided_by_definition(L, S, stride, causal, alignment))


@given(st.integers(1, 12), st.integers(1, 5))
def test_strided_causal_is_the_union_of_the_papers_two_heads(n, stride):
    # Child et al. 2019, sec. 4.3: A1 = {t..i}, t = max(0, i - l); A2 = {j : (i - j) mod l = 0}.
    mask = strided_mask(n, stride=stride, causal=True)
    for i in range(n):
        head_1 = set(range(max(0, i - stride), i + 1))
        head_2 = {j for j in range(i + 1) if (i - j) % stride == 0}
        assert set(np.flatnonzero(mask[i])) == head_1 | head_2


def fixed_by_definition(L, S, block, summary, causal, alignment):
    mask = np.zeros((L, S), dtype=bool)
    for i in range(L):
        p = position(i, L, S, alignment)
        for j in range(S):
            same_block = j // block == p // block
            summary_column = j % block in range(block - summary, block)
            mask[i, j] = (same_block or summary_column) and (j <= p or not causal)
    return mask


@given(sizes, sizes, st.integers(1, 5), st.data(), st.booleans(), alignments)
def test_fixed_mask_matches_definition(L, S, block, data, causal, alignment):
    summary = data.draw(st.integers(0, block))
    assert np.array_equal(
        fixed_mask(L, S, block=block, summary=summary, causal=causal, alignment=alignment),
        fixed_by_definition(L, S, block, summary, causal, alignment))


def test_fixed_mask_without_summary_is_block_diagonal():
    assert np.array_equal(fixed_mask(7, block=3), masks.block_diagonal_mask([3, 3, 1]))
    assert np.array_equal(fixed_mask(7, block=3, causal=True),
                          masks.block_diagonal_mask([3, 3, 1], causal=True))


def global_by_definition(L, S, tokens, left, right, causal, alignment):
    mask = np.zeros((L, S), dtype=bool)
    for i in range(L):
        p = position(i, L, S, alignment)
        for j in range(S):
            local = (left is None or j >= p - left) and (right is None or j <= p + right)
            mask[i, j] = (local or j in tokens or p in tokens) and (j <= p or not causal)
    return mask


@given(sizes, sizes, st.data(), st.one_of(st.none(), st.integers(0, 3)),
       st.one_of(st.none(), st.integers(0, 3)), st.booleans(), alignments)
def test_global_tokens_mask_matches_definition(L, S, data, left, right, causal, alignment):
    tokens = data.draw(st.lists(st.integers(0, S - 1), max_size=3)) if S else []
    assert np.array_equal(
        global_tokens_mask(L, S, global_tokens=tokens, window=(left, right), causal=causal,
                           alignment=alignment),
        global_by_definition(L, S, tokens, left, right, causal, alignment))


def test_global_tokens_see_and_are_seen_by_everyone():
    mask = global_tokens_mask(9, global_tokens=np.array([0, 5]), window=(1, 1))
    assert mask[:, [0, 5]].all() and mask[[0, 5], :].all()
    assert np.array_equal(global_tokens_mask(6, global_tokens=[], window=(2, 0)),
                          masks.sliding_window_mask(6, window=(2, 0)))


PATTERNS = {
    "strided": lambda L, S, causal: strided_mask(L, S, stride=2, causal=causal),
    "fixed": lambda L, S, causal: fixed_mask(L, S, block=3, summary=1, causal=causal),
    "global": lambda L, S, causal: global_tokens_mask(L, S, global_tokens=[0], window=(1, 1),
                                                      causal=causal),
}


@pytest.mark.parametrize("name", PATTERNS)
@given(st.integers(1, 9), st.integers(1, 9))
def test_causal_option_is_combine_masks_with_causal_mask(name, L, S):
    pattern = PATTERNS[name]
    assert np.array_equal(pattern(L, S, True),
                          masks.combine_masks(pattern(L, S, False), masks.causal_mask(L, S)))


@pytest.mark.parametrize("name", PATTERNS)
@given(seeds, st.integers(1, 8), st.integers(1, 8), st.booleans())
def test_patterns_as_attn_mask_equal_brute_force(name, seed, L, S, causal):
    query, key, value = qkv(seed, L, S, batch=(2, 3))        # (B, H, L, E) ...
    pattern = PATTERNS[name](L, S, causal)                    # (L, S) broadcasts over (B, H)
    result = sdpa(query, key, value, attn_mask=pattern, return_weights=True, backend="numpy")
    for b, h in np.ndindex(2, 3):
        output, weights = brute_attention(query[b, h], key[b, h], value[b, h], pattern)
        close(result.output[b, h], output)
        close(result.weights[b, h], weights)
    sums = result.weights.sum(-1)
    close(sums, np.where(pattern.any(-1), 1.0, 0.0) * np.ones_like(sums))


def test_patterns_combine_with_padding_masks():
    pattern = strided_mask(5, stride=2, causal=True)
    padding = masks.padding_mask([5, 3], 5)                   # (2, 1, 1, 5)
    combined = masks.combine_masks(pattern, padding)
    assert combined.shape == (2, 1, 5, 5)
    assert np.array_equal(combined[1, 0], pattern & (np.arange(5) < 3))
    bias = masks.combine_masks(pattern, alibi_bias(2, 5, 5))
    assert bias.shape == (2, 5, 5) and np.isneginf(bias[:, ~pattern]).all()


# ------------------------------------------------------------ top-k

def topk_by_definition(query, key, value, k, allowed, bias=None, scale=None):
    """Keep, per row, the visible keys scoring at least the k-th largest visible score."""
    L, S = allowed.shape
    scale = 1 / math.sqrt(query.shape[-1]) if scale is None else scale
    kept = np.zeros((L, S), dtype=bool)
    for i in range(L):
        scores = [scale * float(query[i] @ key[j]) + (0.0 if bias is None else bias[i, j])
                  for j in range(S)]
        visible = [scores[j] for j in range(S) if allowed[i, j]]
        if not visible:
            continue
        threshold = sorted(visible, reverse=True)[min(k, len(visible)) - 1]
        for j in range(S):
            kept[i, j] = allowed[i, j] and scores[j] >= threshold
    return brute_attention(query, key, value, kept, bias, scale)


@given(seeds, st.integers(1, 7), st.integers(1, 7), st.integers(1, 8), st.booleans(),
       st.sampled_from(["none", "bool", "float"]))
def test_topk_attention_matches_definition(seed, L, S, k, causal, mask_kind):
    query, key, value = qkv(seed, L, S)
    rng = np.random.default_rng(seed + 1)
    attn_mask = {"none": None, "bool": rng.random((L, S)) < 0.7,
                 "float": rng.standard_normal((L, S))}[mask_kind]
    allowed = np.ones((L, S), dtype=bool)
    if mask_kind == "bool":
        allowed &= attn_mask
    if causal:
        allowed &= masks.causal_mask(L, S)
    bias = attn_mask if mask_kind == "float" else None
    result = topk_attention(query, key, value, k, attn_mask=attn_mask, is_causal=causal,
                            return_weights=True)
    output, weights = topk_by_definition(query, key, value, k, allowed, bias)
    close(result.output, output)
    close(result.weights, weights)
    assert result.lse is None
    assert np.all((result.weights > 0).sum(-1) <= np.minimum(k, allowed.sum(-1)))
    close(result.weights.sum(-1), np.where(allowed.any(-1), 1.0, 0.0))


@given(seeds, st.integers(1, 6), st.integers(1, 6))
def test_topk_with_k_at_least_S_is_full_attention(seed, L, S):
    query, key, value = qkv(seed, L, S, batch=(2,))
    close(topk_attention(query, key, value, S, is_causal=True),
          sdpa(query, key, value, is_causal=True, backend="numpy"))


@given(seeds, st.integers(1, 6), st.integers(2, 6), st.integers(1, 4))
def test_topk_is_key_order_independent(seed, L, S, k):
    query, key, value = qkv(seed, L, S)
    order = np.random.default_rng(seed).permutation(S)
    close(topk_attention(query, key[order], value[order], k), topk_attention(query, key, value, k))


def test_topk_keeps_every_key_tied_with_the_kth_score():
    query = np.array([[1.0, 0.0]])
    key = np.array([[2.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 0.0]])
    value = np.eye(4)
    weights = topk_attention(query, key, value, 2, scale=1.0, return_weights=True).weights
    expected = np.array([np.e**2, np.e, np.e, 0.0]) / (np.e**2 + 2 * np.e)
    close(weights[0], expected)


def test_topk_masked_keys_never_count_and_nan_propagates():
    query = np.array([[1.0]])
    key = np.array([[5.0], [1.0], [0.0]])
    value = np.array([[100.0], [1.0], [2.0]])
    hidden = np.array([[False, True, True]])
    close(topk_attention(query, key, value, 1, attn_mask=hidden), [[1.0]])   # not key 0
    fully = topk_attention(query, key, value, 1, attn_mask=np.zeros((1, 3), bool))
    close(fully, [[0.0]])
    with_nan = key.copy()
    with_nan[2] = np.nan
    assert np.isnan(topk_attention(query, with_nan, value, 1)).all()


def test_topk_keeps_dtype_and_broadcasts():
    query, key, value = (a.astype(np.float32) for a in qkv(0, 4, 5, batch=(2, 1)))
    output = topk_attention(query, key[:, :1].repeat(3, 1), value[0, 0], 2)
    assert output.dtype == np.float32 and output.shape == (2, 3, 4, 2)


# ------------------------------------------------------------ linear attention

def phi(x):
    return np.where(x > 0, x + 1, np.exp(np.minimum(x, 0)))


def linear_by_definition(query, key, value, causal, alignment="top_left"):
    """o_i = sum_j sim(q_i, k_j) v_j / sum_j sim(q_i, k_j), sim = phi(q) . phi(k): O(L S)."""
    L, S = query.shape[0], key.shape[0]
    output = np.zeros((L, value.shape[-1]))
    for i in range(L):
        numerator, denominator = np.zeros(value.shape[-1]), 0.0
        for j in range(S):
            if causal and j > position(i, L, S, alignment):
                continue
            similarity = float(phi(query[i]) @ phi(key[j]))
            numerator += similarity * value[j]
            denominator += similarity
        if denominator:
            output[i] = numerator / denominator
    return output


def test_elu_feature_map_is_elu_plus_one():
    x = np.array([-800.0, -1.0, 0.0, 0.5, 800.0])
    close(variants.elu_feature_map(x), [0.0, np.exp(-1.0), 1.0, 1.5, 801.0])


@given(seeds, sizes, sizes, st.booleans(), alignments, st.integers(1, 4))
def test_linear_attention_matches_definition(seed, L, S, causal, alignment, block_size):
    query, key, value = qkv(seed, L, S, E=3, Ev=2)
    output = linear_attention(query, key, value, causal=causal, causal_alignment=alignment,
                              block_size=block_size)
    assert output.shape == (L, 2)
    close(output, linear_by_definition(query, key, value, causal, alignment))


@given(seeds, st.integers(1, 20), st.integers(1, 7))
def test_linear_attention_causal_blocks_and_prefix_stability(seed, L, block_size):
    query, key, value = qkv(seed, L, L, batch=(2,))
    whole = linear_attention(query, key, value, causal=True, block_size=L)
    close(linear_attention(query, key, value, causal=True, block_size=block_size), whole)
    n = 1 + seed % L
    close(linear_attention(query[:, :n], key[:, :n], value[:, :n], causal=True,
                           block_size=block_size), whole[:, :n])
    changed_future = value.copy()
    changed_future[:, n:] = np.nan
    close(linear_attention(query, key, changed_future, causal=True,
                           block_size=block_size)[:, :n], whole[:, :n])


@given(seeds, st.integers(1, 6), st.integers(1, 6))
def test_linear_attention_broadcasts_and_rows_are_convex_combinations(seed, L, S):
    query, key, value = qkv(seed, L, S, batch=(2, 3))
    output = linear_attention(query, key[:1], value[:1, :1], causal=True)   # (2, 3, L, Ev)
    assert output.shape == (2, 3, L, 2)
    close(output[1, 2], linear_by_definition(query[1, 2], key[0, 2], value[0, 0], True))
    ones = linear_attention(query, key, np.ones_like(value))                # weights sum to 1
    close(ones, np.ones_like(ones))


def test_linear_attention_custom_feature_map_and_dtype():
    query, key, value = (a.astype(np.float32) for a in qkv(3, 5, 4))
    square = linear_attention(query, key, value, feature_map=np.square)
    similarity = np.square(query.astype(np.float64)) @ np.square(key.astype(np.float64)).T
    np.testing.assert_allclose(square, similarity @ value / similarity.sum(-1, keepdims=True),
                               rtol=1e-5)
    assert square.dtype == np.float32


def test_linear_attention_rows_without_keys_are_zero():
    query, key, value = qkv(4, 5, 3)
    output = linear_attention(query, key, value, causal=True, causal_alignment="bottom_right")
    close(output[:2], 0.0)
    close(linear_attention(query, key[:0], value[:0]), np.zeros((5, 2)))


def test_linear_attention_causal_memory_is_linear():
    L, E, Ev = 8192, 2, 64
    query, key, value = qkv(5, L, L, E=E, Ev=Ev)
    tracemalloc.start()
    linear_attention(query, key, value, causal=True, block_size=64)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    output_bytes = L * Ev * 8
    assert peak < output_bytes + L * E * Ev * 8 // 2      # far from (L, E, Ev), let alone (L, S)


# ------------------------------------------------------------ ALiBi

def reference_get_slopes(n):
    """``get_slopes`` of ofirpress/attention_with_linear_biases,
    fairseq/models/transformer.py, as published."""
    def get_slopes_power_of_2(n):
        start = (2**(-2**-(math.log2(n)-3)))
        ratio = start
        return [start*ratio**i for i in range(n)]

    if math.log2(n).is_integer():
        return get_slopes_power_of_2(n)
    closest_power_of_2 = 2**math.floor(math.log2(n))
    return (get_slopes_power_of_2(closest_power_of_2)
            + reference_get_slopes(2*closest_power_of_2)[0::2][:n-closest_power_of_2])


def test_alibi_slopes_for_8_and_12_heads():
    assert alibi_slopes(8).tolist() == [1 / 2**h for h in range(1, 9)]
    twelve = alibi_slopes(12)
    assert twelve.tolist() == reference_get_slopes(12)
    # 8 heads' slopes, then every other slope of 16 heads: 2^-0.5, 2^-1.5, 2^-2.5, 2^-3.5
    np.testing.assert_allclose(
        twelve, [2.0**-h for h in range(1, 9)] + [2.0**-0.5, 2.0**-1.5, 2.0**-2.5, 2.0**-3.5],
        rtol=4 * np.finfo(float).eps)


@given(st.integers(1, 100))
def test_alibi_slopes_equal_the_reference_code(n):
    assert alibi_slopes(n).tolist() == reference_get_slopes(n)


@given(st.integers(1, 6), sizes, sizes, alignments)
def test_alibi_bias_matches_definition(H, L, S, alignment):
    slopes = reference_get_slopes(H)
    expected = np.zeros((H, L, S))
    for h in range(H):
        for i in range(L):
            for j in range(S):
                expected[h, i, j] = -slopes[h] * abs(j - position(i, L, S, alignment))
    bias = alibi_bias(H, L, S, causal_alignment=alignment)
    assert bias.dtype == np.float64
    close(bias, expected)


@given(seeds, st.integers(1, 8), st.integers(1, 8))
def test_alibi_causal_weights_equal_the_reference_codes_bias(seed, L, S):
    # The reference adds m_h * j to every row; per row that is -m_h (p_i - j) + m_h p_i.
    H = 4
    query, key, value = qkv(seed, L, S, batch=(H,))
    reference_bias = np.array(reference_get_slopes(H))[:, None, None] * np.arange(S)
    options = dict(is_causal=True, causal_alignment="bottom_right", backend="numpy")
    close(sdpa(query, key, value, attn_mask=alibi_bias(H, L, S, causal_alignment="bottom_right"),
               **options),
          sdpa(query, key, value, attn_mask=np.broadcast_to(reference_bias, (H, L, S)),
               **options))


@given(seeds, st.integers(1, 6), st.integers(1, 6))
def test_alibi_as_attn_mask_equals_brute_force(seed, L, S):
    H = 3
    query, key, value = qkv(seed, L, S, batch=(2, H))
    bias = alibi_bias(H, L, S)
    output = sdpa(query, key, value, attn_mask=bias, is_causal=True, backend="numpy")
    for b, h in np.ndindex(2, H):
        close(output[b, h], brute_attention(query[b, h], key[b, h], value[b, h],
                                            masks.causal_mask(L, S), bias[h])[0])


# ------------------------------------------------------------ relative positions

# T5 defaults, bidirectional: 16 buckets per direction, exact below e = 8, then
# 8 + floor(log(d / 8) / log(128 / 8) * 8) = 8 + floor(2 log2(d / 8)), capped at 15;
# keys after the query (j - i > 0) add 16.
#   d:      0..7 | 8..11 | 12..15 | 16..22 | 23..31 | 32..45 | 46..63 | 64..90 | 91..127 | 128..
#   bucket: 0..7 |   8   |   9    |   10   |   11   |   12   |   13   |   14   |   15    |  15
T5_BIDIRECTIONAL = {
    0: 0, -1: 1, -7: 7, -8: 8, -11: 8, -12: 9, -15: 9, -16: 10, -22: 10, -23: 11, -31: 11,
    -32: 12, -45: 12, -46: 13, -63: 13, -64: 14, -90: 14, -91: 15, -127: 15, -128: 15,
    -1000: 15,
    1: 17, 7: 23, 8: 24, 12: 25, 16: 26, 23: 27, 32: 28, 46: 29, 64: 30, 91: 31, 500: 31,
}
# Unidirectional (decoder): 32 buckets, exact below 16, then
# 16 + floor(log(d / 16) / log(8) * 16), capped at 31; every future key is bucket 0.
#   d = 16 -> 16, 18 -> 16 + floor(0.906) = 16, 19 -> 17, 23 -> 18, 32 -> 21,
#   64 -> 26, 127 -> 31, 128 -> 32 -> capped 31.
T5_UNIDIRECTIONAL = {
    5: 0, 1: 0, 0: 0, -1: 1, -15: 15, -16: 16, -18: 16, -19: 17, -23: 18, -32: 21, -64: 26,
    -127: 31, -128: 31, -5000: 31,
}


@pytest.mark.parametrize("bidirectional, table",
                         [(True, T5_BIDIRECTIONAL), (False, T5_UNIDIRECTIONAL)])
def test_t5_buckets_against_a_hand_computed_table(bidirectional, table):
    relative = np.array(list(table))
    buckets = relative_position_bucket(relative, bidirectional=bidirectional)
    assert buckets.dtype == np.int64
    assert dict(zip(relative.tolist(), buckets.tolist())) == table


@pytest.mark.parametrize("num_buckets, max_distance", [(32, 128), (16, 64), (8, 20), (64, 256),
                                                       (5, 9), (30, 100)])
@pytest.mark.parametrize("bidirectional", [True, False])
def test_t5_buckets_equal_transformers(num_buckets, max_distance, bidirectional):
    torch = pytest.importorskip("torch")
    t5 = pytest.importorskip("transformers.models.t5.modeling_t5")
    relative = np.arange(-600, 600).reshape(4, -1)
    expected = t5.T5Attention._relative_position_bucket(
        torch.from_numpy(relative), bidirectional=bidirectional, num_buckets=num_buckets,
        max_distance=max_distance).numpy()
    assert np.array_equal(
        relative_position_bucket(relative, bidirectional=bidirectional,
                                 num_buckets=num_buckets, max_distance=max_distance),
        expected)


@given(seeds, st.integers(1, 4), sizes, sizes, st.booleans(), alignments)
def test_relative_position_bias_gathers_the_table(seed, H, L, S, bidirectional, alignment):
    table = np.random.default_rng(seed).standard_normal((32, H))
    bias = relative_position_bias(table, L, S, bidirectional=bidirectional, max_distance=20,
                                  causal_alignment=alignment)
    assert bias.shape == (H, L, S)
    for i in range(L):
        for j in range(S):
            bucket = int(relative_position_bucket(
                np.array(j - position(i, L, S, alignment)), bidirectional=bidirectional,
                max_distance=20))
            assert np.array_equal(bias[:, i, j], table[bucket])


@given(sizes, sizes, st.integers(0, 4), alignments)
def test_clipped_relative_positions_match_definition(L, S, k, alignment):
    expected = np.zeros((L, S), dtype=np.int64)
    for i in range(L):
        for j in range(S):
            expected[i, j] = max(-k, min(k, j - position(i, L, S, alignment))) + k
    index = clipped_relative_positions(L, S, k, causal_alignment=alignment)
    assert index.dtype == np.int64 and np.array_equal(index, expected)


def test_docstring_examples_run():
    failures, tried = doctest.testmod(variants, extraglobs={"np": np})
    assert tried > 0 and failures == 0


# ------------------------------------------------------------ errors

Q, K, V = qkv(0, 3, 4)

ERRORS = [
    (lambda: strided_mask(4, stride=0), ValueError, r"stride must be >= 1, got 0"),
    (lambda: strided_mask(4, stride=2.0), TypeError, r"stride must be an int >= 1, got float"),
    (lambda: strided_mask(4, stride=2, causal=1), TypeError, r"causal must be a bool, got int"),
    (lambda: strided_mask(-1, stride=2), ValueError, r"L must be >= 0, got -1"),
    (lambda: strided_mask(3, 2.5, stride=2), TypeError, r"S must be an int, got float"),
    (lambda: strided_mask(3, stride=2, alignment="left"), ValueError,
     r"alignment must be one of \('top_left', 'bottom_right'\), got 'left'"),
    (lambda: fixed_mask(4, block=2, summary=3), ValueError,
     r"summary must be in \[0, block=2\], got 3"),
    (lambda: fixed_mask(4, block=2, summary=True), TypeError,
     r"summary must be an int in \[0, block\], got bool"),
    (lambda: fixed_mask(4, block=-2), ValueError, r"block must be >= 1, got -2"),
    (lambda: global_tokens_mask(4, global_tokens=[4]), ValueError,
     r"global_tokens must be in \[0, S=4\), got \[4\]"),
    (lambda: global_tokens_mask(4, global_tokens=[[1]]), TypeError,
     r"global_tokens must be a 1-D sequence of ints, got shape \(1, 1\) and dtype int64"),
    (lambda: global_tokens_mask(4, global_tokens=[0.5]), TypeError,
     r"global_tokens must be a 1-D sequence of ints, got shape \(1,\) and dtype float64"),
    (lambda: global_tokens_mask(4, global_tokens=[0], window=3), ValueError,
     r"window must be a pair \(left, right\)"),
    (lambda: topk_attention(Q, K, V, 0), ValueError, r"k must be >= 1, got 0"),
    (lambda: topk_attention(Q, K, V, None), TypeError, r"k must be an int >= 1, got NoneType"),
    (lambda: topk_attention(Q, K, V, 2, return_weights="yes"), TypeError,
     r"return_weights must be a bool, got str"),
    (lambda: topk_attention(Q, K[:, :2], V, 2), ValueError,
     r"key must have the query's feature size E=3"),
    (lambda: topk_attention(Q, K, V, 2, attn_mask=np.ones((3, 5), bool)), ValueError,
     r"attn_mask of shape \(3, 5\) does not broadcast"),
    (lambda: topk_attention(Q, K, V, 2, scale=-1.0), ValueError,
     r"scale must be finite and > 0, got -1.0"),
    (lambda: linear_attention(Q, K, V, feature_map="relu"), ValueError,
     r"feature_map must be one of \('elu',\) or a callable, got 'relu'"),
    (lambda: linear_attention(Q, K, V, feature_map=lambda x: x.sum(-1)), ValueError,
     r"feature_map must map the query to a floating array \(\.\.\., 3, F\), got ndarray "
     r"of shape \(3,\)"),
    (lambda: linear_attention(Q, K, V, feature_map=lambda x: x[..., :x.shape[-2] - 1]),
     ValueError, r"feature_map must give query and key the same feature size F, got 2 and 3"),
    (lambda: linear_attention(Q, K, V, causal=None), TypeError, r"causal must be a bool"),
    (lambda: linear_attention(Q, K, V, block_size=0), ValueError, r"block_size must be >= 1"),
    (lambda: linear_attention(Q, K, V, causal_alignment="up"), ValueError,
     r"causal_alignment must be one of \('top_left', 'bottom_right'\), got 'up'"),
    (lambda: linear_attention(Q.astype(int), K, V), TypeError,
     r"query must have a floating dtype"),
    (lambda: linear_attention(Q, K, V[:2]), ValueError,
     r"value must have the key's length S=4 in dim -2"),
    (lambda: alibi_slopes(0), ValueError, r"num_heads must be >= 1, got 0"),
    (lambda: alibi_slopes(8.0), TypeError, r"num_heads must be an int >= 1, got float"),
    (lambda: alibi_bias(4, 3, 3, dtype=np.int32), TypeError,
     r"dtype must be a floating dtype, got int32"),
    (lambda: alibi_bias(4, 3, 3, dtype="nonsense"), TypeError,
     r"dtype must be a floating dtype, got 'nonsense'"),
    (lambda: alibi_bias(4, 3, 3, causal_alignment="middle"), ValueError,
     r"causal_alignment must be one of \('top_left', 'bottom_right'\), got 'middle'"),
    (lambda: relative_position_bucket(np.array([1.5])), TypeError,
     r"relative_position must have an integer dtype, got dtype float64"),
    (lambda: relative_position_bucket(np.array([1]), num_buckets=3), ValueError,
     r"num_buckets must be >= 4 when bidirectional=True, got 3"),
    (lambda: relative_position_bucket(np.array([1]), bidirectional=False, num_buckets=1),
     ValueError, r"num_buckets must be >= 2 when bidirectional=False, got 1"),
    (lambda: relative_position_bucket(np.array([1]), max_distance=8), ValueError,
     r"max_distance must be > 8 \(the exact buckets for num_buckets=32\), got 8"),
    (lambda: relative_position_bucket(np.array([1]), bidirectional="no"), TypeError,
     r"bidirectional must be a bool, got str"),
    (lambda: relative_position_bias(np.zeros(32), 3, 3), ValueError,
     r"table must be 2-D \(num_buckets, H\), got shape \(32,\)"),
    (lambda: relative_position_bias(np.zeros((32, 2), int), 3, 3), TypeError,
     r"table must have a floating dtype"),
    (lambda: clipped_relative_positions(3, 3, -1), ValueError,
     r"max_distance must be >= 0, got -1"),
    (lambda: clipped_relative_positions(3, 3, 2, causal_alignment=None), ValueError,
     r"causal_alignment must be one of"),
]


@pytest.mark.parametrize("call, error, message", ERRORS,
                         ids=[f"{e.__name__}:{m[:40]}" for _, e, m in ERRORS])
def test_errors_name_the_argument(call, error, message):
    with pytest.raises(error, match=message):
        call()

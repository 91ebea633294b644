"""attnref.nn.attention against an explicit per-head loop (Vaswani et al.
2017, §3.2.2), against torch.nn.MultiheadAttention when installed, and every
error message."""
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from attnref.masks import causal_mask, padding_mask
from attnref.nn import KVCache, Linear, MultiHeadAttention, Rotary, merge_heads, split_heads


def attention_by_hand(mha, x, context=None, allowed=None):
    """softmax(q_h k_h^T / sqrt(E) + mask) v_h for every batch row and head,
    heads concatenated, then W_O; in float64.

    ``allowed`` broadcasts to (B, H, L, S), True = may attend; a row with no
    visible key gives 0 (attnref's masked_rows="zero").
    """
    context = x if context is None else context
    x, context = x.astype(np.float64), context.astype(np.float64)
    B, L, _ = x.shape
    S = context.shape[1]
    Hq, Hkv = mha.num_heads, mha.num_kv_heads
    E, Ev = mha.w_q.out_features // Hq, mha.w_v.out_features // Hkv

    def project(linear, inputs):
        bias = 0.0 if linear.bias is None else linear.bias.astype(np.float64)
        return inputs @ linear.weight.astype(np.float64).T + bias

    q, k, v = project(mha.w_q, x), project(mha.w_k, context), project(mha.w_v, context)
    allowed = np.broadcast_to(np.ones((L, S), bool) if allowed is None else allowed,
                              (B, Hq, L, S))
    concat = np.zeros((B, L, Hq * Ev))
    for b in range(B):
        for h in range(Hq):
            g = h // (Hq // Hkv)  # the kv head this query head reads
            q_h = q[b, :, h * E:(h + 1) * E]
            k_h = k[b, :, g * E:(g + 1) * E]
            v_h = v[b, :, g * Ev:(g + 1) * Ev]
            for i in range(L):
                scores = [float(q_h[i] @ k_h[j]) / math.sqrt(E) if allowed[b, h, i, j]
                          else -math.inf for j in range(S)]
                peak = max(scores)
                if peak == -math.inf:
                    continue
                exps = [math.exp(s - peak) for s in scores]
                total = sum(exps)
                concat[b, i, h * Ev:(h + 1) * Ev] = sum(e / total * v_h[j]
                                                        for j, e in enumerate(exps))
    return project(mha.w_o, concat)


def make(dtype, dim=8, heads=2, kv_heads=None, context_dim=None, seed=0, bias=True):
    return MultiHeadAttention.init(dim, heads, rng=np.random.default_rng(seed),
                                   num_kv_heads=kv_heads, context_dim=context_dim, bias=bias,
                                   dtype=dtype)


def inputs(dtype, *shape, seed=1):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


# ---------------------------------------------------------------- against the loop

@pytest.mark.parametrize("heads, kv_heads", [(1, None), (2, None), (4, 2), (4, 1)])
def test_self_attention_matches_the_loop(heads, kv_heads, dtype, backend, assert_close):
    mha = make(dtype, heads=heads, kv_heads=kv_heads)
    x = inputs(dtype, 2, 5, 8)
    out = mha(x, backend=backend)
    assert out.dtype == dtype and out.shape == (2, 5, 8)
    assert_close(out, attention_by_hand(mha, x).astype(dtype))


@pytest.mark.parametrize("bias", [True, False])
def test_cross_attention_matches_the_loop(bias, dtype, backend, assert_close):
    mha = make(dtype, dim=8, heads=4, kv_heads=2, context_dim=6, bias=bias)
    x, memory = inputs(dtype, 2, 3, 8), inputs(dtype, 2, 7, 6, seed=2)
    assert_close(mha(x, memory, backend=backend),
                 attention_by_hand(mha, x, memory).astype(dtype))


def test_padding_mask_matches_the_loop(dtype, backend, assert_close):
    mha = make(dtype, heads=4)
    x = inputs(dtype, 3, 6, 8)
    mask = padding_mask([6, 2, 4], 6)  # (B, 1, 1, S)
    out = mha(x, attn_mask=mask, backend=backend)
    assert_close(out, attention_by_hand(mha, x, allowed=mask).astype(dtype))
    # padded keys are invisible: changing them changes nothing for sequence 1's real rows
    changed = x.copy()
    changed[1, 2:] = 100
    assert_close(mha(changed, attn_mask=mask, backend=backend)[1, :2], out[1, :2])


def test_padding_of_queries_gives_zero_rows_before_w_o(backend, assert_close):
    mha = make(np.float64, heads=2)
    x = inputs(np.float64, 2, 4, 8)
    mask = padding_mask([4, 2], 4, query_lengths=[4, 2], L=4)  # (B, 1, L, S)
    out = mha(x, attn_mask=mask, backend=backend)
    assert_close(out, attention_by_hand(mha, x, allowed=mask))
    assert_close(out[1, 2:], np.broadcast_to(mha.w_o.bias, (2, 8)))  # heads gave 0


def test_causal_matches_the_loop(dtype, backend, assert_close):
    mha = make(dtype, heads=2, kv_heads=1)
    x = inputs(dtype, 2, 6, 8)
    expected = attention_by_hand(mha, x, allowed=causal_mask(6)).astype(dtype)
    assert_close(mha(x, is_causal=True, backend=backend), expected)
    assert_close(mha(x, attn_mask=causal_mask(6), backend=backend), expected)
    assert_close(mha(x, attn_mask=padding_mask([6, 3], 6), is_causal=True, backend=backend),
                 attention_by_hand(mha, x, allowed=causal_mask(6) & padding_mask([6, 3], 6))
                 .astype(dtype))


def test_unbatched_and_extra_leading_dims(assert_close):
    mha = make(np.float64)
    x = inputs(np.float64, 2, 3, 5, 8)
    out = mha(x)
    assert out.shape == (2, 3, 5, 8)
    assert_close(out[1], attention_by_hand(mha, x[1]))
    assert_close(mha(x[1, 2]), out[1, 2])


@given(batch=st.integers(1, 2), L=st.integers(1, 4), S=st.integers(1, 4),
       kv_heads=st.sampled_from([1, 2]), group=st.sampled_from([1, 2, 3]),
       head_dim=st.integers(1, 3), cross=st.booleans(), causal=st.booleans(),
       seed=st.integers(0, 2 ** 16))
def test_attention_matches_the_loop_property(batch, L, S, kv_heads, group, head_dim, cross,
                                             causal, seed, assert_close):
    heads = kv_heads * group
    dim = heads * head_dim
    rng = np.random.default_rng(seed)
    mha = MultiHeadAttention.init(dim, heads, rng=rng, num_kv_heads=kv_heads,
                                  context_dim=3 if cross else None, dtype=np.float64)
    x = rng.standard_normal((batch, L, dim))
    context = rng.standard_normal((batch, S, 3)) if cross else None
    allowed = causal_mask(L, S if cross else L) if causal else None
    assert_close(mha(x, context, is_causal=causal, backend="numpy"),
                 attention_by_hand(mha, x, context, allowed))


# ---------------------------------------------------------------- GQA, heads, record

def test_gqa_equals_mha_with_repeated_kv_rows(dtype, backend, assert_close):
    gqa = make(dtype, dim=12, heads=6, kv_heads=2, seed=3)
    group, E = 3, 2

    def repeat_heads(linear):
        weight = linear.weight.reshape(2, E, 12)  # (Hkv, E, D)
        bias = linear.bias.reshape(2, E)
        return Linear(np.repeat(weight, group, axis=0).reshape(6 * E, 12),
                      np.repeat(bias, group, axis=0).reshape(6 * E))

    mha = MultiHeadAttention(gqa.w_q, repeat_heads(gqa.w_k), repeat_heads(gqa.w_v), gqa.w_o, 6)
    x = inputs(dtype, 2, 5, 12)
    assert_close(gqa(x, backend=backend), mha(x, backend=backend))
    assert_close(gqa(x, is_causal=True, backend=backend), mha(x, is_causal=True, backend=backend))


def test_split_and_merge_heads_are_inverse():
    x = np.arange(2 * 3 * 12.0).reshape(2, 3, 12)
    heads = split_heads(x, 4)
    assert heads.shape == (2, 4, 3, 3)
    assert np.array_equal(heads[1, 2, 0], x[1, 0, 6:9])  # head h holds columns h*E..(h+1)*E
    assert np.array_equal(merge_heads(heads), x)


@pytest.mark.parametrize("kv_heads, causal", [(None, False), (2, True), (1, False)])
def test_record_does_not_change_the_output(kv_heads, causal, dtype, assert_close):
    mha = make(dtype, heads=4, kv_heads=kv_heads)
    x = inputs(dtype, 2, 5, 8)
    plain = mha(x, is_causal=causal, backend="numpy")
    recorded, record = mha(x, is_causal=causal, record=True)
    assert np.array_equal(recorded, plain)  # same backend, same operations
    assert_close(mha(x, is_causal=causal, backend="auto"), recorded)


@pytest.mark.parametrize("kv_heads", [None, 2])
def test_record_holds_the_heads(kv_heads, dtype, assert_close):
    mha = make(dtype, dim=8, heads=4, kv_heads=kv_heads, context_dim=5)
    x, memory = inputs(dtype, 2, 3, 8), inputs(dtype, 2, 6, 5, seed=2)
    mask = padding_mask([6, 4], 6)
    out, record = mha(x, memory, attn_mask=mask, record=True)
    assert record.weights.shape == (2, 4, 3, 6) and record.weights.dtype == dtype
    assert record.values.shape == (2, 4, 6, 2)
    assert record.head_outputs.shape == (2, 4, 3, 2)
    assert record.head_contributions.shape == (2, 4, 3, 8)
    assert record.w_o.shape == (4, 2, 8)
    assert_close(record.weights.sum(-1), np.ones((2, 4, 3), dtype))
    assert not record.weights[1, ..., 4:].any()  # padded keys get exactly 0
    assert_close(record.weights @ record.values, record.head_outputs)
    assert_close(record.head_contributions.sum(-3) + record.output_bias, out)
    # each head's contribution is its output through its own columns of W_O
    for h in range(4):
        columns = mha.w_o.weight[:, 2 * h:2 * h + 2]
        assert_close(record.head_contributions[:, h], record.head_outputs[:, h] @ columns.T)
    # the values are the context's V projection, kv heads repeated per group
    v = split_heads(mha.w_v(memory), mha.num_kv_heads)
    assert np.array_equal(record.values, np.repeat(v, 4 // mha.num_kv_heads, axis=-3))


def test_record_without_output_bias(assert_close):
    mha = make(np.float64, bias=False)
    x = inputs(np.float64, 1, 4, 8)
    out, record = mha(x, record=True)
    assert record.output_bias is None
    assert_close(record.head_contributions.sum(-3), out)


# ---------------------------------------------------------------- errors

def linear(out_features, in_features=8, dtype=np.float32):
    return Linear(np.zeros((out_features, in_features), dtype), np.zeros(out_features, dtype))


@pytest.mark.parametrize("heads, kv_heads, match", [
    (0, None, "num_heads must be a positive integer, got 0"),
    (2.0, None, "num_heads must be a positive integer, got 2.0"),
    (True, None, "num_heads must be a positive integer, got True"),
    (2, 0, "num_kv_heads must be a positive integer, got 0"),
    (4, 3, r"num_heads \(4\) must be a multiple of num_kv_heads \(3\)"),
    (3, None, "w_q has 8 outputs, not a multiple of its 3 heads"),
])
def test_rejects_bad_head_counts(heads, kv_heads, match):
    with pytest.raises(ValueError, match=match):
        MultiHeadAttention(linear(8), linear(8), linear(8), linear(8), heads, kv_heads)


def test_rejects_kv_widths_that_do_not_divide():
    with pytest.raises(ValueError, match="w_k has 6 outputs, not a multiple of its 4 heads"):
        MultiHeadAttention(linear(8), linear(6), linear(8), linear(8), 4)
    with pytest.raises(ValueError, match="w_v has 7 outputs, not a multiple of its 2 heads"):
        MultiHeadAttention(linear(8), linear(4), linear(7), linear(8), 4, 2)


def test_rejects_mismatched_head_sizes():
    with pytest.raises(ValueError, match="query and key head sizes differ: w_q gives 2 per head, "
                                         "w_k 4"):
        MultiHeadAttention(linear(8), linear(8), linear(8), linear(8), 4, 2)
    with pytest.raises(ValueError, match="w_k and w_v must read the same context width, "
                                         "got 8 and 6"):
        MultiHeadAttention(linear(8), linear(8), linear(8, in_features=6), linear(8), 4)
    with pytest.raises(ValueError, match=r"w_o must be a Linear taking 16 = num_heads x Ev "
                                         r"features, got 8"):
        MultiHeadAttention(linear(8), linear(8), linear(16), linear(8), 2)
    with pytest.raises(ValueError, match="w_o must be a Linear taking 8 .* got <class 'str'>"):
        MultiHeadAttention(linear(8), linear(8), linear(8), "w_o", 2)


def test_rejects_projection_that_is_not_linear():
    with pytest.raises(TypeError, match="w_k must be an attnref.nn.Linear, got <class "
                                        "'numpy.ndarray'>"):
        MultiHeadAttention(linear(8), np.zeros((8, 8), np.float32), linear(8), linear(8), 2)


def test_rejects_bad_inputs():
    mha = make(np.float32, dim=8, heads=2, context_dim=5)
    with pytest.raises(TypeError, match="Linear input must have the parameters' dtype float32, "
                                        "got float64"):
        mha(np.zeros((2, 3, 8)), np.zeros((2, 4, 5), np.float32))
    with pytest.raises(ValueError, match=r"Linear input must have shape \(\.\.\., 8\), "
                                         r"got \(2, 3, 7\)"):
        mha(np.zeros((2, 3, 7), np.float32), np.zeros((2, 4, 5), np.float32))
    with pytest.raises(ValueError, match=r"Linear input must have shape \(\.\.\., 5\), "
                                         r"got \(2, 3, 8\)"):
        mha(np.zeros((2, 3, 8), np.float32))  # self attention of a cross-attention layer


# ---------------------------------------------------------------- against torch

@pytest.mark.parametrize("cross", [False, True])
def test_agrees_with_torch_multihead_attention(cross, dtype, backend, assert_close,
                                                copy_into_torch):
    torch = pytest.importorskip("torch")
    mha = make(dtype, dim=12, heads=3)
    x = inputs(dtype, 2, 5, 12)
    memory = inputs(dtype, 2, 7, 12, seed=2) if cross else x
    S = memory.shape[1]
    padding, causal = padding_mask([S, S - 3], S), np.tri(5, S, dtype=bool)
    allowed = padding & causal  # (B, 1, L, S)
    module = copy_into_torch(torch.nn.MultiheadAttention(
        12, 3, dropout=0.0, batch_first=True, dtype=torch.from_numpy(x).dtype), mha).eval()
    tx, tm = torch.from_numpy(x), torch.from_numpy(memory)
    with torch.no_grad():
        # torch's bool masks have the opposite polarity: True = masked out
        expected, weights = module(tx, tm, tm, attn_mask=torch.from_numpy(~causal),
                                   key_padding_mask=torch.from_numpy(~padding[:, 0, 0]),
                                   average_attn_weights=False)
    out = mha(x, None if not cross else memory, attn_mask=allowed, backend=backend)
    assert_close(out, expected.numpy())
    recorded, record = mha(x, None if not cross else memory, attn_mask=allowed, record=True)
    assert_close(recorded, expected.numpy())
    assert_close(record.weights, weights.numpy())


# ---------------------------------------------------------------- RoPE hook and KV cache

def rotary_attention(dtype, heads=4, kv_heads=2, dim=16, seed=7):
    return MultiHeadAttention.init(dim, heads, rng=np.random.default_rng(seed),
                                   num_kv_heads=kv_heads, bias=False, dtype=dtype,
                                   rotary=Rotary(dim // heads, base=100.0))


def test_rotary_hook_turns_queries_and_keys_before_the_scores(dtype, assert_close):
    mha = rotary_attention(dtype)
    x = np.random.default_rng(8).standard_normal((5, 16)).astype(dtype)
    q = mha.rotary(split_heads(mha.w_q(x), 4))                    # (4, 5, 4)
    k = np.repeat(mha.rotary(split_heads(mha.w_k(x), 2)), 2, axis=0)
    v = np.repeat(split_heads(mha.w_v(x), 2), 2, axis=0)
    heads = np.zeros((4, 5, 4), np.float64)
    for h in range(4):
        for i in range(5):
            scores = np.array([q[h, i] @ k[h, j] / 2.0 for j in range(i + 1)], np.float64)
            weights = np.exp(scores - scores.max()) / np.exp(scores - scores.max()).sum()
            heads[h, i] = weights @ v[h, :i + 1]
    assert_close(mha(x, is_causal=True), mha.w_o(merge_heads(heads.astype(dtype))))


@pytest.mark.parametrize("chunks", [[1] * 7, [3, 1, 2, 1], [7]])
def test_cached_steps_equal_the_full_causal_call(chunks, dtype, backend, assert_close):
    mha = rotary_attention(dtype)
    x = np.random.default_rng(9).standard_normal((2, 7, 16)).astype(dtype)
    full, full_record = mha(x, is_causal=True, record=True)
    cache, start = KVCache(), 0
    for size in chunks:
        step = mha(x[:, start:start + size], is_causal=True, cache=cache, backend=backend)
        assert_close(step, full[:, start:start + size])
        start += size
    assert cache.length == 7
    recorded_cache = KVCache()
    mha(x[:, :4], is_causal=True, cache=recorded_cache)
    _, record = mha(x[:, 4:], is_causal=True, cache=recorded_cache, record=True)
    assert_close(record.weights, full_record.weights[..., 4:, :])
    assert_close(record.head_contributions, full_record.head_contributions[..., 4:, :])


def test_kv_cache_grows_and_keeps_what_it_holds():
    rng = np.random.default_rng(10)
    cache, keys, values = KVCache(), [], []
    for size in (1, 1, 3, 1, 9, 2):
        key, value = rng.standard_normal((2, 3, size, 4)), rng.standard_normal((2, 3, size, 5))
        keys.append(key)
        values.append(value)
        stored_key, stored_value = cache.extend(key, value)
        np.testing.assert_array_equal(stored_key, np.concatenate(keys, axis=-2))
        np.testing.assert_array_equal(stored_value, np.concatenate(values, axis=-2))
    assert cache.length == 17


def test_kv_cache_and_rotary_errors():
    cache = KVCache()
    cache.extend(np.zeros((2, 1, 4)), np.zeros((2, 1, 4)))
    with pytest.raises(ValueError, match=r"KVCache holds keys \(2,\) x \(S, 4\) of float64; "
                                         r"cannot append \(3, 1, 4\) of float64"):
        cache.extend(np.zeros((3, 1, 4)), np.zeros((3, 1, 4)))
    with pytest.raises(ValueError, match=r"KVCache needs keys \(..., Hkv, L, E\) and values "
                                         r"\(..., Hkv, L, Ev\) of one dtype, got \(2, 1, 4\) "
                                         r"float64 and \(2, 2, 4\) float64"):
        cache.extend(np.zeros((2, 1, 4)), np.zeros((2, 2, 4)))
    mha = rotary_attention(np.float64)
    x = np.zeros((3, 16))
    with pytest.raises(ValueError, match="cache is for self attention"):
        mha(x, x, cache=KVCache())
    rng = np.random.default_rng(11)
    with pytest.raises(ValueError, match=r"rotary must be an attnref.nn.Rotary for head_dim 4, "
                                         r"got Rotary\(8, base=10000, interleaved=False\)"):
        MultiHeadAttention.init(16, 4, rng=rng, rotary=Rotary(8))
    with pytest.raises(ValueError, match="rotary must be an attnref.nn.Rotary"):
        MultiHeadAttention.init(16, 4, rng=rng, rotary="rope")


def test_self_attention_projects_q_k_v_at_once(dtype, assert_close):
    mha = make(dtype, heads=4, kv_heads=2)
    assert mha.w_qkv.weight.shape == (8 + 4 + 4, 8)
    for part, rows in ((mha.w_q, slice(0, 8)), (mha.w_k, slice(8, 12)), (mha.w_v, slice(12, 16))):
        assert np.shares_memory(part.weight, mha.w_qkv.weight)
        np.testing.assert_array_equal(part.weight, mha.w_qkv.weight[rows])
        np.testing.assert_array_equal(part.bias, mha.w_qkv.bias[rows])
    with pytest.raises(AttributeError):
        mha.w_q = mha.w_k                # the stacked product would not see the change
    x = inputs(dtype, 2, 5, 8)
    assert_close(mha(x, context=x.copy()), mha(x))      # separate products, same answer


def test_fast_scores_reach_the_kernel_and_stay_close(assert_close, monkeypatch):
    import attnref
    if not attnref.kernel.available():
        pytest.skip("the C kernel is not built")
    seen, original = [], attnref.kernel.attention

    def recording(call, **options):
        seen.append(call.scores)
        return original(call, **options)
    monkeypatch.setattr(attnref.kernel, "attention", recording)
    mha = make(np.float32, heads=4, kv_heads=2)
    x = inputs(np.float32, 2, 5, 8)
    assert_close(mha(x, backend="c", scores="fast"), mha(x, backend="numpy"))
    mha(x, backend="c")
    assert seen == ["fast", "exact"]

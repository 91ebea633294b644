"""Tests for attnref.analysis.flow: hand-computed examples, properties, and
oracles ported to NumPy from the seed notes (``analyze_attention_flow``) and
from Abnar and Zuidema's code (``compute_joint_attention``; networkx's
``maximum_flow_value`` for the flows, when networkx is installed)."""
import doctest
import functools

import numpy as np
import pytest
from hypothesis import given, strategies as st

from attnref import analysis
from attnref.analysis import flow as F
from attnref.analysis.positions import attention_locality, mean_attention_distance
from attnref.analysis.tokens import mean_entropy, sink_score
from attnref.testing.maps import random_attention_maps

# One rule for every float comparison here: the values are float64 sums and
# products of at most a few hundred terms in [0, 1], computed in another
# order, so they agree to far better than 1e-12.
assert_close = functools.partial(np.testing.assert_allclose, rtol=1e-12, atol=1e-12)

seeds = st.integers(0, 2**32 - 1)

def test_docstring_examples_run():
    failures, tried = doctest.testmod(F)
    assert tried > 0 and failures == 0


# --- attention_flow_table -------------------------------------------------------------------

TWO_TOKENS = np.array([[0.75, 0.25],
                       [0.5, 0.5]])


def test_flow_table_hand_example():
    table = F.attention_flow_table(TWO_TOKENS, tokens=["a", "b"])
    # Seed: column means (0.75 + 0.5) / 2, (0.25 + 0.5) / 2; row means 1/2.
    assert_close(table.incoming, [0.625, 0.375])
    assert_close(table.outgoing, [0.5, 0.5])
    assert_close(table.net_flow, [0.125, -0.125])
    assert table.tokens == ["a", "b"] and table.mode == "seed"
    external = F.attention_flow_table(TWO_TOKENS, mode="external")
    # Token 0 is read by token 1 with 0.5 and reads 0.25 from token 1.
    assert_close(external.incoming, [0.5, 0.25])
    assert_close(external.outgoing, [0.25, 0.5])
    assert_close(external.net_flow, [0.25, -0.25])


def seed_attention_flow(attention_weights_all_layers, tokens):
    """analyze_attention_flow (attention-weights-and-vectors.md), in NumPy."""
    flow_analysis = {}
    for token_idx, token in enumerate(tokens):
        token_flow = []
        for layer_idx, layer_attention in enumerate(attention_weights_all_layers):
            incoming_attention = layer_attention[:, token_idx].mean()
            outgoing_attention = layer_attention[token_idx, :].mean()
            token_flow.append({
                'layer': layer_idx,
                'incoming': incoming_attention,
                'outgoing': outgoing_attention,
                'net_flow': incoming_attention - outgoing_attention,
            })
        flow_analysis[token] = token_flow
    return flow_analysis


@given(seeds, st.integers(1, 4), st.integers(1, 6))
def test_flow_table_seed_mode_is_the_notes_code(seed, layers, length):
    weights = random_attention_maps(seed, (layers, length, length))
    tokens = [f"t{position}" for position in range(length)]  # distinct: the notes' dict keys
    table = F.attention_flow_table(weights, tokens)
    oracle = seed_attention_flow(weights, tokens)
    for position, token in enumerate(tokens):
        for layer, record in enumerate(oracle[token]):
            assert_close(table.incoming[layer, position], record["incoming"])
            assert_close(table.outgoing[layer, position], record["outgoing"])
            assert_close(table.net_flow[layer, position], record["net_flow"])


@given(seeds, st.integers(1, 6))
def test_flow_table_external_balance(seed, length):
    weights = random_attention_maps(seed, (2, 3, length, length), visible_fraction=0.7)
    external = F.attention_flow_table(weights, mode="external")
    # Every unit read by one token is read from another: net flow sums to 0.
    assert_close(external.net_flow.sum(axis=-1), 0)
    # The self-loop cancels in the difference: external net = L * seed net
    # wherever no row is masked.
    complete = random_attention_maps(seed, (2, 3, length, length))
    assert_close(F.attention_flow_table(complete, mode="external").net_flow,
                 length * F.attention_flow_table(complete).net_flow)


@given(seeds, st.integers(1, 5))
def test_flow_table_keeps_leading_dims(seed, length):
    weights = random_attention_maps(seed, (2, 3, length, length), visible_fraction=0.7)
    for mode in ("seed", "external"):
        table = F.attention_flow_table(weights, mode=mode)
        for index in np.ndindex(2, 3):
            alone = F.attention_flow_table(weights[index], mode=mode)
            for field in ("incoming", "outgoing", "net_flow"):
                assert_close(getattr(table, field)[index], getattr(alone, field))


def test_flow_table_masked_row_and_repeated_tokens():
    weights = np.array([[1.0, 0.0, 0.0],
                        [0.0, 0.0, 0.0],   # fully masked query
                        [0.5, 0.0, 0.5]])
    table = F.attention_flow_table(weights, tokens=["x", "x", "y"])
    assert table.tokens == ["x", "x", "y"]  # both "x" kept, by position
    # Incoming means skip the masked row: (1 + 0.5) / 2, 0, 0.5 / 2.
    assert_close(table.incoming, [0.75, 0.0, 0.25])
    assert_close(table.outgoing, [1 / 3, np.nan, 1 / 3])
    assert np.isnan(table.net_flow[1])
    external = F.attention_flow_table(weights, mode="external")
    # The masked token draws nothing: outgoing 0, not NaN.
    assert_close(external.outgoing, [0.0, 0.0, 0.5])
    assert_close(external.incoming, [0.5, 0.0, 0.0])


def test_flow_table_rejects_bad_input():
    with pytest.raises(ValueError, match="L=2 queries and S=3 keys"):
        F.attention_flow_table(np.full((2, 3), 1 / 3))
    with pytest.raises(ValueError, match="tokens must have 2 entries"):
        F.attention_flow_table(TWO_TOKENS, tokens=["a"])
    with pytest.raises(ValueError, match="mode must be one of"):
        F.attention_flow_table(TWO_TOKENS, mode="net")


# --- attention_rollout ----------------------------------------------------------------------

# Two layers, one head, two tokens. A_hat = (A + I) / 2 for softmax rows:
# layer 1: [[1, 0], [0.25, 0.75]]; layer 2: [[0.5, 0.5], [0.5, 0.5]].
LAYER_1 = [[1.0, 0.0], [0.5, 0.5]]
LAYER_2 = [[0.0, 1.0], [1.0, 0.0]]
HAND_STACK = np.array([[LAYER_1], [LAYER_2]])  # (layers=2, H=1, 2, 2)


def test_rollout_hand_example():
    joint = F.attention_rollout(HAND_STACK)
    assert_close(joint[0], [[1.0, 0.0], [0.25, 0.75]])
    # J_2 = A_hat_2 @ J_1: each row 0.5 * [1, 0] + 0.5 * [0.25, 0.75].
    assert_close(joint[1], [[0.625, 0.375], [0.625, 0.375]])
    # Without the residual: A_2 @ A_1 swaps the rows of A_1.
    assert_close(F.attention_rollout(HAND_STACK, residual=False)[1], [[0.5, 0.5], [1.0, 0.0]])


def abnar_joint_attention(att_mat, add_residual=True):
    """compute_joint_attention (samiraabnar/attention_flow,
    attention_graph_util.py), on a head-averaged (layers, L, L) stack."""
    if add_residual:
        residual_att = np.eye(att_mat.shape[1])[None, ...]
        aug_att_mat = att_mat + residual_att
        aug_att_mat = aug_att_mat / aug_att_mat.sum(axis=-1)[..., None]
    else:
        aug_att_mat = att_mat
    joint_attentions = np.zeros(aug_att_mat.shape)
    layers = joint_attentions.shape[0]
    joint_attentions[0] = aug_att_mat[0]
    for i in np.arange(1, layers):
        joint_attentions[i] = aug_att_mat[i].dot(joint_attentions[i - 1])
    return joint_attentions


@given(seeds, st.integers(1, 4), st.integers(1, 4), st.integers(1, 6), st.booleans())
def test_rollout_is_the_authors_code(seed, layers, heads, length, residual):
    weights = random_attention_maps(seed, (layers, heads, length, length))
    # The authors average heads with sum / H before compute_joint_attention.
    head_mean = weights.sum(axis=1) / weights.shape[1]
    expected = abnar_joint_attention(head_mean, add_residual=residual)
    assert_close(F.attention_rollout(weights, residual=residual), expected)
    assert_close(F.attention_rollout(head_mean, residual=residual, head_reduce=None), expected)


@given(seeds, st.integers(1, 4), st.integers(1, 6))
def test_rollout_residual_is_half_and_half_on_softmax_rows(seed, layers, length):
    weights = random_attention_maps(seed, (layers, 1, length, length))
    # The paper's A = 0.5 W + 0.5 I.
    half = 0.5 * weights[:, 0] + 0.5 * np.eye(length)
    assert_close(F.attention_rollout(weights),
                 F.attention_rollout(half, residual=False, head_reduce=None))


@given(seeds, st.integers(1, 4), st.integers(1, 3), st.integers(1, 6),
       st.sampled_from(["mean", "max", "min"]))
def test_rollout_rows_are_distributions(seed, layers, heads, length, head_reduce):
    weights = random_attention_maps(seed, (layers, heads, length, length), visible_fraction=0.6)
    joint = F.attention_rollout(weights, head_reduce=head_reduce)
    assert np.all(joint >= 0)
    assert_close(joint.sum(axis=-1), 1)


@given(seeds, st.integers(1, 5))
def test_rollout_keeps_leading_dims_and_is_permutation_equivariant(seed, length):
    weights = random_attention_maps(seed, (2, 3, 2, length, length))  # (batch, layers, H, L, L)
    joint = F.attention_rollout(weights, head_reduce="max")
    for item in range(2):
        assert_close(joint[item], F.attention_rollout(weights[item], head_reduce="max"))
    # Renaming positions the same way in every layer renames the result.
    order = np.random.default_rng(seed).permutation(length)
    permuted = weights[..., order, :][..., :, order]
    assert_close(F.attention_rollout(permuted, head_reduce="max"), joint[..., order, :][..., order])


def test_rollout_masked_row_keeps_its_own_stream():
    # Token 1's query sees nothing in layer 1 (a zero row): with the residual
    # it keeps its own stream, (0 + I) / 1 = e_1, instead of 0.5 e_1.
    weights = np.array([[[[1.0, 0.0], [0.0, 0.0]]]])
    assert_close(F.attention_rollout(weights)[0], [[1.0, 0.0], [0.0, 1.0]])


def test_rollout_rejects_bad_shapes_and_options():
    with pytest.raises(ValueError, match="at least 4 dims"):
        F.attention_rollout(np.ones((2, 3, 3)) / 3)
    with pytest.raises(ValueError, match="at least 3 dims"):
        F.attention_rollout(np.eye(3), head_reduce=None)
    with pytest.raises(ValueError, match="head_reduce must be one of"):
        F.attention_rollout(HAND_STACK, head_reduce="sum")
    with pytest.raises(ValueError, match="L=2 queries and S=3 keys"):
        F.attention_rollout(np.ones((1, 1, 2, 3)) / 3)


# --- attention_max_flow ---------------------------------------------------------------------

def test_max_flow_hand_example():
    flows = F.attention_max_flow(HAND_STACK)
    # One layer: the only path is the edge itself, A_hat_1.
    assert_close(flows[0], [[1.0, 0.0], [0.25, 0.75]])
    # Two layers: from output i, paths i -> q -> j share no edge, so the flow
    # is sum_q min(A_hat_2[i, q], A_hat_1[q, j]):
    # to 0: min(0.5, 1) + min(0.5, 0.25) = 0.75; to 1: min(0.5, 0) + min(0.5, 0.75) = 0.5
    # (rollout gives 0.625 and 0.375).
    assert_close(flows[1], [[0.75, 0.5], [0.75, 0.5]])
    # normalize: divided by the row sum 1.25.
    assert_close(F.attention_max_flow(HAND_STACK, normalize=True)[1], [[0.6, 0.4], [0.6, 0.4]])


def test_max_flow_needs_the_exact_algorithm():
    # Three layers, two tokens, where a greedy path-by-path flow is not
    # maximal. Capacities (edges point one layer down):
    #   layer 3: u=0 -> {0: 1, 1: 1}
    #   layer 2: 0 -> {0: 1, 1: 1}, 1 -> {0: 1, 1: 0}
    #   layer 1: 0 -> {0: 1}, 1 -> {0: 1}
    # Max flow from (3, 0) to token 0 is 2: 0 -> 0 -> 1 -> 0 and
    # 0 -> 1 -> 0 -> 0 together; a greedy first path 0 -> 0 -> 0 -> 0 would
    # block both and stop at 1 without the reverse edge.
    transitions = np.array([
        [[1.0, 0.0], [1.0, 0.0]],
        [[1.0, 1.0], [1.0, 0.0]],
        [[1.0, 1.0], [0.0, 0.0]],
    ])
    with analysis.skip_distribution_check():  # capacities, not distributions
        flows = F.attention_max_flow(transitions, residual=False, head_reduce=None)
    assert flows[2, 0, 0] == pytest.approx(2.0)


@given(seeds, st.integers(1, 5), st.booleans())
def test_max_flow_two_layers_closed_form(seed, length, residual):
    weights = random_attention_maps(seed, (2, 2, length, length), visible_fraction=0.7)
    transitions = F._layer_transitions(weights, residual, "mean")
    # Two layers: the paths i -> q -> j are edge-disjoint.
    expected = np.minimum(transitions[1][:, :, None], transitions[0][None, :, :]).sum(axis=1)
    flows = F.attention_max_flow(weights, residual=residual)
    assert_close(flows[0], transitions[0])
    assert_close(flows[1], expected)


def networkx_flows(transitions):
    """The authors' attention flow (get_adjmat + compute_flows without the
    final normalisation) with networkx's maximum_flow_value."""
    nx = pytest.importorskip("networkx")
    layers, length, _ = transitions.shape
    adjacency = np.zeros(((layers + 1) * length,) * 2)
    for layer in range(1, layers + 1):
        adjacency[layer * length:(layer + 1) * length,
                  (layer - 1) * length:layer * length] = transitions[layer - 1]
    graph = nx.from_numpy_array(adjacency, create_using=nx.DiGraph, edge_attr="capacity")
    flows = np.zeros(transitions.shape)
    for layer in range(1, layers + 1):
        for position in range(length):
            for token in range(length):
                flows[layer - 1, position, token] = nx.maximum_flow_value(
                    graph, layer * length + position, token,
                    flow_func=nx.algorithms.flow.edmonds_karp)
    return flows


@pytest.mark.parametrize("visible_fraction", [1.0, 0.5])
@pytest.mark.parametrize("seed", range(4))
def test_max_flow_equals_networkx(seed, visible_fraction):
    pytest.importorskip("networkx")
    weights = random_attention_maps(seed, (4, 2, 5, 5), visible_fraction=visible_fraction)
    for residual in (True, False):
        transitions = F._layer_transitions(weights, residual, "mean")
        assert_close(F.attention_max_flow(weights, residual=residual),
                     networkx_flows(transitions))


@given(seeds, st.integers(1, 4), st.integers(1, 4))
def test_max_flow_bounds_and_permutation_equivariance(seed, layers, length):
    weights = random_attention_maps(seed, (layers, 2, length, length), visible_fraction=0.8)
    flows = F.attention_max_flow(weights)
    transitions = F._layer_transitions(weights, True, "mean")
    # A flow never exceeds what leaves the source (1: a stochastic row) or
    # what can enter the token (the column of A_hat_1).
    assert np.all(flows >= 0)
    assert np.all(flows <= 1 + 1e-12)
    assert np.all(flows <= transitions[0].sum(axis=0) + 1e-12)
    order = np.random.default_rng(seed).permutation(length)
    permuted = weights[..., order, :][..., :, order]
    assert_close(F.attention_max_flow(permuted), flows[..., order, :][..., order])


@given(seeds, st.integers(1, 3))
def test_max_flow_keeps_leading_dims_and_normalizes(seed, length):
    weights = random_attention_maps(seed, (2, 3, 1, length, length), visible_fraction=0.7)
    flows = F.attention_max_flow(weights, head_reduce="max")
    normalized = F.attention_max_flow(weights, head_reduce="max", normalize=True)
    for item in range(2):
        assert_close(flows[item], F.attention_max_flow(weights[item], head_reduce="max"))
    # compute_flows: flow_values[u] /= flow_values[u].sum()
    assert_close(normalized, flows / flows.sum(axis=-1, keepdims=True))


def test_max_flow_guards():
    weights = np.full((3, 1, 100, 100), 0.01)
    with pytest.raises(ValueError, match=r"\(3 \+ 1\) \* 100 = 400 nodes, more than max_nodes=300"):
        F.attention_max_flow(weights)
    small = np.full((2, 1, 3, 3), 1 / 3)
    with pytest.raises(ValueError, match="more than max_nodes=8"):
        F.attention_max_flow(small, max_nodes=8)
    assert F.attention_max_flow(small, max_nodes=None).shape == (2, 3, 3)
    with pytest.raises(ValueError, match=r"weights must not be NaN .*weights\[0, 0, 0, 0\] is nan"):
        F.attention_max_flow(np.where(np.eye(3), np.nan, small))
    with pytest.raises(ValueError, match=r"weights must be >= 0 .*weights\[0, 0, 0, 0\] is -0.333"):
        F.attention_max_flow(-small, residual=False)
    with analysis.skip_distribution_check():  # capacities: max-flow's own guard
        with pytest.raises(ValueError, match="finite and non-negative"):
            F.attention_max_flow(np.where(np.eye(3), np.nan, small))
        with pytest.raises(ValueError, match="finite and non-negative"):
            F.attention_max_flow(-small, residual=False)


# --- layer_profile ----------------------------------------------------------------------------

def test_layer_profile_hand_example():
    length = 3
    identity = np.eye(length)
    uniform = np.full((length, length), 1 / length)
    weights = np.array([[identity, identity], [uniform, uniform]])  # (layers=2, H=2, 3, 3)
    profile = F.layer_profile(weights)
    # Identity: entropy 0, distance 0, locality 1, first key holds 1/3 of the rows' mass.
    # Uniform over 3: entropy log 3; distances per row 1, 2/3, 1 -> mean 8/9;
    # locality 1 - (8/9) / (3/2) = 11/27; sink share 1/3.
    assert_close(profile.mean_entropy, [0.0, np.log(3)])
    assert_close(profile.mean_distance, [0.0, 8 / 9])
    assert_close(profile.locality, [1.0, 11 / 27])
    assert_close(profile.sink_share, [1 / 3, 1 / 3])


@given(seeds, st.integers(1, 3), st.integers(1, 3), st.integers(1, 5), st.integers(1, 5))
def test_layer_profile_is_the_head_mean_of_the_metrics(seed, layers, heads, length, n_keys):
    weights = random_attention_maps(seed, (2, layers, heads, length, n_keys))
    profile = F.layer_profile(weights)
    for metric, field in [(mean_entropy, "mean_entropy"),
                          (mean_attention_distance, "mean_distance"),
                          (attention_locality, "locality"), (sink_score, "sink_share")]:
        assert_close(getattr(profile, field), metric(weights).mean(axis=-1))
    for item in range(2):
        alone = F.layer_profile(weights[item])
        assert_close(profile.locality[item], alone.locality)


def test_layer_profile_skips_empty_heads_and_checks_dims():
    weights = np.array([[np.eye(2), np.zeros((2, 2))]])  # layer 0: one head sees nothing
    assert_close(F.layer_profile(weights).mean_distance, [0.0])
    assert F.layer_profile(weights, sink_keys=2).sink_share == pytest.approx([1.0])
    with pytest.raises(ValueError, match="at least 4 dims"):
        F.layer_profile(np.eye(2)[None])

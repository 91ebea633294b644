"""attnref.nn.rotary against explicit 2x2 rotation matrices, the relative
position property of RoPE, and llama.cpp's Q/K row permutation."""
import numpy as np
import pytest

from attnref.nn import (Rotary, apply_rotary, interleaved_to_rotate_half, rotary_angles,
                        rotate_half_to_interleaved, split_heads)


def rotate_by_hand(x, positions, base, interleaved):
    """Each pair (a, b) of each vector turned by its 2x2 rotation matrix,
    theta = t * base ** (-2i / E) (RoFormer eq. 13-15), one pair at a time."""
    T, E = x.shape[-2:]
    out = np.empty(x.shape, np.float64)
    for index in np.ndindex(*x.shape[:-2]):
        for t in range(T):
            for i in range(E // 2):
                a, b = (2 * i, 2 * i + 1) if interleaved else (i, i + E // 2)
                theta = positions[t] * base ** (-2.0 * i / E)
                rotation = np.array([[np.cos(theta), -np.sin(theta)],
                                     [np.sin(theta), np.cos(theta)]])
                pair = np.array([x[index + (t, a)], x[index + (t, b)]], np.float64)
                out[index + (t, a)], out[index + (t, b)] = rotation @ pair
    return out


@pytest.mark.parametrize("interleaved", [False, True])
@pytest.mark.parametrize("base", [10000.0, 100000.0])
def test_rotation_matches_explicit_rotation_matrices(interleaved, base, dtype, assert_close):
    x = np.random.default_rng(0).standard_normal((2, 3, 5, 8)).astype(dtype)
    positions = np.array([0, 1, 2, 7, 300])
    rotated = apply_rotary(x, rotary_angles(positions, 8, base=base), interleaved=interleaved)
    assert rotated.dtype == dtype
    assert_close(rotated, rotate_by_hand(x, positions, base, interleaved).astype(dtype))


@pytest.mark.parametrize("interleaved", [False, True])
def test_rotary_class_starts_at_its_offset(interleaved, assert_close):
    x = np.random.default_rng(1).standard_normal((2, 4, 6))
    rotary = Rotary(6, base=500.0, interleaved=interleaved)
    assert_close(rotary(x, 3), rotate_by_hand(x, np.arange(3, 7), 500.0, interleaved))
    assert_close(rotary(x), rotate_by_hand(x, np.arange(4), 500.0, interleaved))


@pytest.mark.parametrize("interleaved", [False, True])
def test_one_rotary_shared_by_calls_of_other_positions_and_dtypes(interleaved):
    """The cosines and sines one instance keeps between calls never leak
    into a call at another offset, length or dtype (a model shares one
    instance across its layers)."""
    rng = np.random.default_rng(3)
    rotary = Rotary(8, base=10000.0, interleaved=interleaved)
    calls = [(rng.standard_normal((2, 5, 8)), 0), (rng.standard_normal((2, 5, 8)), 0),
             (rng.standard_normal((2, 5, 8)), 4), (rng.standard_normal((3, 8)), 4),
             (rng.standard_normal((2, 5, 8)).astype(np.float32), 4),
             (rng.standard_normal((2, 5, 8)), 4)]
    for x, offset in calls:
        angles = rotary_angles(np.arange(offset, offset + x.shape[-2]), 8, base=10000.0)
        turned = rotary(x, offset)
        assert turned.dtype == x.dtype
        assert np.array_equal(turned, apply_rotary(x, angles, interleaved=interleaved))


@pytest.mark.parametrize("interleaved", [False, True])
def test_scores_depend_on_relative_position_only(interleaved, assert_close):
    rng = np.random.default_rng(2)
    q, k = rng.standard_normal((2, 1, 16))
    rotary = Rotary(16, interleaved=interleaved)

    def score(t, s):
        return float(rotary(q, t)[0] @ rotary(k, s)[0])
    assert_close(np.array([score(5, 2), score(105, 102), score(3, 3)]),
                 np.array([score(3, 0), score(3, 0), float(q[0] @ k[0])]))


def test_permutation_round_trips_weights_and_biases():
    rng = np.random.default_rng(3)
    for array in (rng.standard_normal((3 * 8, 5)), rng.standard_normal(3 * 8)):
        permuted = rotate_half_to_interleaved(array, 3)
        assert not np.array_equal(permuted, array)
        np.testing.assert_array_equal(interleaved_to_rotate_half(permuted, 3), array)
        np.testing.assert_array_equal(rotate_half_to_interleaved(
            interleaved_to_rotate_half(array, 3), 3), array)


def test_permutation_moves_row_i_to_2i_and_i_plus_half_to_2i_plus_1():
    rows = np.arange(2 * 6)                      # two heads of E = 6
    np.testing.assert_array_equal(rotate_half_to_interleaved(rows, 2),
                                  [0, 3, 1, 4, 2, 5, 6, 9, 7, 10, 8, 11])


def test_permuted_weights_make_interleaved_equal_to_rotate_half(assert_close):
    """HF weights with rotate-half RoPE and the GGUF-permuted weights with
    interleaved RoPE give the same heads up to the permutation, and the same scores."""
    rng = np.random.default_rng(4)
    H, E, D, T = 2, 8, 12, 5
    w_q, w_k = rng.standard_normal((2, H * E, D))
    x = rng.standard_normal((T, D))
    rope_half, rope_interleaved = Rotary(E), Rotary(E, interleaved=True)
    q = rope_half(split_heads(x @ w_q.T, H))                                     # (H, T, E)
    k = rope_half(split_heads(x @ w_k.T, H))
    q_gguf = rope_interleaved(split_heads(x @ rotate_half_to_interleaved(w_q, H).T, H))
    k_gguf = rope_interleaved(split_heads(x @ rotate_half_to_interleaved(w_k, H).T, H))
    order = rotate_half_to_interleaved(np.arange(E), 1)
    assert_close(q_gguf, q[..., order])
    assert_close(q_gguf @ np.swapaxes(k_gguf, -1, -2), q @ np.swapaxes(k, -1, -2))


def test_position_zero_is_the_identity():
    x = np.random.default_rng(5).standard_normal((1, 8)).astype(np.float32)
    np.testing.assert_array_equal(Rotary(8)(x), x)


@pytest.mark.parametrize("head_dim", [0, 3, -2, 2.0, True])
def test_rejects_bad_head_dim(head_dim):
    with pytest.raises(ValueError, match="head_dim must be a positive even integer"):
        Rotary(head_dim)


@pytest.mark.parametrize("base", [1.0, 0, -5, float("inf"), float("nan"), "10000"])
def test_rejects_bad_base(base):
    with pytest.raises(ValueError, match="base must be a finite number > 1"):
        Rotary(8, base=base)


def test_rejects_bad_positions_and_shapes():
    with pytest.raises(ValueError, match="positions must be a 1-D integer array"):
        rotary_angles(np.array([0.5, 1.0]), 4)
    with pytest.raises(ValueError, match="positions must be >= 0, got -1"):
        rotary_angles(np.array([-1, 0]), 4)
    with pytest.raises(ValueError, match=r"apply_rotary needs x \(..., T, E\).*got x \(3, 4\) "
                                         r"and angles \(2, 2\)"):
        apply_rotary(np.zeros((3, 4)), np.zeros((2, 2)))
    with pytest.raises(ValueError, match=r"Rotary for head_dim 8 got heads of shape \(2, 4\)"):
        Rotary(8)(np.zeros((2, 4)))
    with pytest.raises(ValueError, match=r"Rotary needs heads \(..., T, E\), got shape \(8,\)"):
        Rotary(8)(np.zeros(8))


def test_permutation_rejects_bad_shapes():
    with pytest.raises(ValueError, match=r"weight must be \(H\*E, in\) or \(H\*E,\) with E even "
                                         r"for 3 heads, got shape \(9, 2\)"):
        rotate_half_to_interleaved(np.zeros((9, 2)), 3)
    with pytest.raises(ValueError, match="num_heads must be a positive integer"):
        interleaved_to_rotate_half(np.zeros(8), 0)
    with pytest.raises(ValueError, match="weight must be"):
        interleaved_to_rotate_half(np.zeros((2, 2, 2)), 1)


@pytest.mark.parametrize("interleaved", [False, True])
def test_rotary_turns_in_place_and_into_out(interleaved):
    """out=x turns the heads where they are, also as a strided view of a
    (T, H, E) projection (how MultiHeadAttention calls it)."""
    rng = np.random.default_rng(6)
    rotary = Rotary(8, interleaved=interleaved)
    projected = rng.standard_normal((5, 3 * 8))                                  # (T, H*E)
    heads = split_heads(projected, 3)                                            # (H, T, E) view
    expected = rotary(heads.copy(), 2)
    assert rotary(heads, 2, out=heads) is heads
    np.testing.assert_array_equal(heads, expected)
    np.testing.assert_array_equal(split_heads(projected, 3), expected)
    out = np.empty_like(expected)
    assert rotary(expected, 1, out=out) is out
    np.testing.assert_array_equal(out, rotary(expected, 1))
    with pytest.raises(ValueError, match=r"out must be a writeable numpy array of shape "
                                         r"\(3, 5, 8\) and dtype float64, got ndarray "
                                         r"\(3, 5, 8\) float32"):
        rotary(expected, out=out.astype(np.float32))

"""attnref.viz.projection: PCA against NumPy's own decompositions, and t-SNE's
calibration, gradient and behaviour on clusters. NumPy only: these run
without matplotlib."""
import doctest
import importlib.util

import numpy as np
import pytest

from attnref.viz import projection
from attnref.viz.projection import (conditional_probabilities, default_perplexity,
                                    joint_probabilities, pca, tsne, tsne_objective)


@pytest.fixture
def points():
    rng = np.random.default_rng(7)
    # anisotropic: distinct variances, so the components are well defined
    return rng.normal(size=(40, 6)) * np.array([5.0, 3.0, 2.0, 1.0, 0.5, 0.1]) @ \
        np.linalg.qr(rng.normal(size=(6, 6)))[0] + 3.0


def test_pca_matches_eigh_of_the_covariance(points):
    result = pca(points, k=3)
    covariance = np.cov(points, rowvar=False)                 # divides by N - 1
    eigenvalues, eigenvectors = np.linalg.eigh(covariance)    # ascending
    np.testing.assert_allclose(result.explained_variance, eigenvalues[::-1][:3], rtol=1e-10)
    for i in range(3):
        cosine = abs(result.components[i] @ eigenvectors[:, -1 - i])
        assert cosine == pytest.approx(1.0, abs=1e-10)
    np.testing.assert_allclose(result.explained_variance_ratio,
                               eigenvalues[::-1][:3] / eigenvalues.sum(), rtol=1e-10)


def test_pca_matches_svd_and_its_coordinates_are_the_centred_data(points):
    result = pca(points, k=2)
    centred = points - points.mean(axis=0)
    u, s, _ = np.linalg.svd(centred, full_matrices=False)
    np.testing.assert_allclose(np.abs(result.coordinates), np.abs(u[:, :2] * s[:2]),
                               atol=1e-10)
    np.testing.assert_allclose(result.coordinates, centred @ result.components.T, atol=1e-10)
    np.testing.assert_allclose(result.components @ result.components.T, np.eye(2), atol=1e-12)
    np.testing.assert_allclose(result.mean, points.mean(axis=0))


def test_pca_orders_by_explained_variance_and_fixes_the_sign(points):
    result = pca(points, k=6)
    assert np.all(np.diff(result.explained_variance) <= 0)
    assert result.explained_variance_ratio.sum() == pytest.approx(1.0)
    largest = np.argmax(np.abs(result.components), axis=1)
    assert np.all(result.components[np.arange(6), largest] > 0)
    # a flipped input direction gives the same picture
    np.testing.assert_allclose(pca(-points, k=2).components, pca(points, k=2).components,
                               atol=1e-10)


def test_pca_of_constant_data_has_zero_ratio():
    result = pca(np.ones((4, 3)), k=2)
    np.testing.assert_array_equal(result.explained_variance_ratio, [0.0, 0.0])


@pytest.mark.parametrize("bad, error, words", [
    (np.zeros(5), ValueError, "2-D (N, D)"),
    (np.zeros((1, 3)), ValueError, "at least 2 rows"),
    (np.array([[0.0, np.nan], [1.0, 2.0]]), ValueError, "finite"),
    (np.array([["a", "b"], ["c", "d"]]), TypeError, "real array"),
])
def test_pca_rejects_bad_vectors(bad, error, words):
    with pytest.raises(error, match=words.replace("(", r"\(").replace(")", r"\)")):
        pca(bad)


def test_pca_rejects_bad_k(points):
    with pytest.raises(ValueError, match="k must be an integer in"):
        pca(points, k=7)
    with pytest.raises(ValueError, match="k must be"):
        pca(points, k=True)


@pytest.mark.parametrize("perplexity", [2.0, 5.0, 12.5])
def test_each_conditional_has_entropy_log_perplexity(points, perplexity):
    conditional, beta = conditional_probabilities(points, perplexity)
    np.testing.assert_allclose(conditional.sum(axis=1), 1.0, rtol=1e-12)
    assert np.all(np.diag(conditional) == 0) and np.all(beta > 0)
    with np.errstate(divide="ignore"):
        logs = np.where(conditional > 0, np.log(conditional), 0.0)
    entropy = -(conditional * logs).sum(axis=1)
    np.testing.assert_allclose(entropy, np.log(perplexity), atol=1e-4)


def test_joint_probabilities_are_symmetric_and_sum_to_one(points):
    joint = joint_probabilities(points, 5.0)
    np.testing.assert_allclose(joint, joint.T)
    assert joint.sum() == pytest.approx(1.0)
    assert np.all(joint.sum(axis=1) >= 1 / (2 * len(points)) - 1e-15)  # section 3.1's floor


def test_tsne_gradient_matches_finite_differences_of_the_kl():
    rng = np.random.default_rng(3)
    joint = joint_probabilities(rng.normal(size=(6, 4)), 2.0)
    embedding = rng.normal(size=(6, 2))
    cost, gradient = tsne_objective(joint, embedding)
    # the cost, written out: KL(P || Q) over i != j
    kernel = 1 / (1 + ((embedding[:, None] - embedding[None]) ** 2).sum(-1))
    np.fill_diagonal(kernel, 0)
    q = kernel / kernel.sum()
    off = ~np.eye(6, dtype=bool)
    assert cost == pytest.approx(np.sum(joint[off] * np.log(joint[off] / q[off])), rel=1e-12)
    step = 1e-6
    numeric = np.zeros_like(embedding)
    for index in np.ndindex(*embedding.shape):
        shift = np.zeros_like(embedding)
        shift[index] = step
        numeric[index] = (tsne_objective(joint, embedding + shift)[0] -
                          tsne_objective(joint, embedding - shift)[0]) / (2 * step)
    np.testing.assert_allclose(gradient, numeric, rtol=1e-6, atol=1e-9)


def clusters(seed=11, per_cluster=12, dim=5):
    rng = np.random.default_rng(seed)
    centres = 20.0 * np.eye(3, dim)
    labels = np.repeat(np.arange(3), per_cluster)
    return centres[labels] + rng.normal(size=(labels.size, dim)), labels


def test_tsne_keeps_well_separated_clusters_apart():
    data, labels = clusters()
    result = tsne(data, perplexity=8.0, seed=0)
    points = result.coordinates
    assert points.shape == (36, 2) and np.all(np.isfinite(points))
    distances = np.linalg.norm(points[:, None] - points[None], axis=-1)
    np.fill_diagonal(distances, np.inf)
    assert np.all(labels[distances.argmin(axis=1)] == labels)     # nearest neighbour: same cluster
    same = labels[:, None] == labels[None]
    np.fill_diagonal(distances, 0)
    assert distances[~same].min() > distances[same].max()         # every gap beats every spread
    assert 0 <= result.kl_divergence < 1.0
    assert result.backend == "numpy" and result.n_iter == 1000


def test_tsne_is_reproducible_by_seed():
    data, _ = clusters(per_cluster=5)
    first = tsne(data, seed=4, n_iter=200).coordinates
    np.testing.assert_array_equal(first, tsne(data, seed=4, n_iter=200).coordinates)
    assert not np.allclose(first, tsne(data, seed=5, n_iter=200).coordinates)


def test_tsne_default_perplexity_fits_short_inputs():
    assert default_perplexity(12) == pytest.approx(11 / 3)
    assert default_perplexity(1000) == 30.0
    assert default_perplexity(3) == 1.0
    assert tsne(np.arange(12.0).reshape(4, 3), n_iter=10).perplexity == 1.0


def test_tsne_refuses_too_many_points_and_bad_options():
    with pytest.raises(ValueError, match="MAX_TSNE_POINTS"):
        tsne(np.zeros((projection.MAX_TSNE_POINTS + 1, 2)))
    data, _ = clusters(per_cluster=3)
    with pytest.raises(ValueError, match=r"perplexity must be in \[1, N - 1\)"):
        tsne(data, perplexity=8.0)
    with pytest.raises(TypeError, match="perplexity must be a number"):
        tsne(data, perplexity="5")
    with pytest.raises(ValueError, match="backend must be one of"):
        tsne(data, backend="torch")
    with pytest.raises(ValueError, match="at least 3 rows"):
        tsne(np.zeros((2, 2)))
    with pytest.raises(TypeError, match="seed must be an integer"):
        tsne(data, seed=1.5)
    with pytest.raises(ValueError, match="n_iter must be"):
        tsne(data, n_iter=-1)


def test_sklearn_backend_says_what_to_install_when_missing():
    if importlib.util.find_spec("sklearn") is None:
        with pytest.raises(ImportError, match="pip install scikit-learn"):
            tsne(clusters(per_cluster=3)[0], backend="sklearn")
    else:
        result = tsne(clusters(per_cluster=4)[0], backend="sklearn", perplexity=3.0)
        assert result.backend == "sklearn" and result.coordinates.shape == (12, 2)


def test_docstring_examples_run():
    failures, tried = doctest.testmod(projection)
    assert tried > 0 and failures == 0

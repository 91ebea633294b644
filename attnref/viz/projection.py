r"""Two-dimensional projections of token vectors: PCA and exact t-SNE, in NumPy.

The seed note ``attention-weights-and-vectors.md`` ("Visualização e
Interpretação", ``plot_attention_vectors_tsne``) looks at attention vectors
(hidden states, attention outputs) by projecting them to 2-D with
scikit-learn's t-SNE. attnref does the projection itself, so looking needs
neither scikit-learn nor matplotlib: :func:`pca` (SVD of the centred data)
and :func:`tsne` (van der Maaten and Hinton 2008, exact gradient, for up to
:data:`MAX_TSNE_POINTS` points). The plotting lives in
:mod:`attnref.viz.vectors`; this module depends on NumPy alone.

Shape letters: ``N`` vectors (points), ``D`` their dimension, ``k`` the
dimension of the projection (2 for a plot).
"""
from __future__ import annotations

import dataclasses

import numpy as np

from ..analysis._common import Record

__all__ = [
    "MAX_TSNE_POINTS",
    "PCAResult",
    "TSNEResult",
    "conditional_probabilities",
    "default_perplexity",
    "joint_probabilities",
    "pca",
    "tsne",
    "tsne_objective",
]

MAX_TSNE_POINTS = 3000
"""The most points :func:`tsne` accepts with ``backend="numpy"``: the exact
method holds several (N, N) float64 matrices (about 70 MB each at 3000
points) and costs O(N^2) per iteration."""

_TSNE_BACKENDS = ("numpy", "sklearn")


def as_vectors(vectors, name="vectors", min_points=2):
    """``vectors`` as a finite float64 (N, D) array, or a TypeError/ValueError
    naming ``name``."""
    array = np.asarray(vectors)
    if array.dtype == bool or not (np.issubdtype(array.dtype, np.floating)
                                   or np.issubdtype(array.dtype, np.integer)):
        raise TypeError(f"{name} must be a real array (N, D), got dtype {array.dtype}")
    if array.ndim != 2:
        raise ValueError(
            f"{name} must be 2-D (N, D): one row per token; got shape {array.shape} "
            "(for hidden states (layers + 1, T, D), pick a layer: hidden_states[-1])")
    if array.shape[0] < min_points:
        raise ValueError(f"{name} must have at least {min_points} rows (points), "
                         f"got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} must be finite, got NaN or inf")
    return array.astype(np.float64)


def _check_k(k, limit):
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= limit:
        raise ValueError(f"k must be an integer in [1, {limit}], got {k!r}")
    return int(k)


@dataclasses.dataclass
class PCAResult(Record):
    """What :func:`pca` returns.

    Attributes
    ----------
    coordinates : ndarray, shape (N, k)
        The centred vectors in the basis of the components.
    components : ndarray, shape (k, D)
        Orthonormal principal directions, by decreasing variance.
    explained_variance : ndarray, shape (k,)
        Variance along each component (``s^2 / (N - 1)``).
    explained_variance_ratio : ndarray, shape (k,)
        Its share of the total variance (0 when the data have none).
    mean : ndarray, shape (D,)
        The mean that was subtracted.
    """
    coordinates: np.ndarray
    components: np.ndarray
    explained_variance: np.ndarray
    explained_variance_ratio: np.ndarray
    mean: np.ndarray


def pca(vectors, k=2):
    r"""Principal component analysis by SVD of the centred data.

    Parameters
    ----------
    vectors : array_like, shape (N, D)
        One row per point, N >= 2.
    k : int, default 2
        Number of components, ``1 <= k <= min(N, D)``.

    Returns
    -------
    PCAResult

    Notes
    -----
    With :math:`X_c = X - \bar x` and the thin SVD :math:`X_c = U S V^T`, the
    components are the first ``k`` rows of :math:`V^T`, the coordinates
    :math:`X_c V_k = U_k S_k`, and the variance along component ``i`` is
    :math:`s_i^2 / (N - 1)` (Jolliffe, *Principal Component Analysis*, 2002,
    ch. 1 and 3.5). The sign of a component is arbitrary; it is fixed here so
    that each component's entry of largest magnitude is positive, which makes
    the picture reproducible across LAPACK builds.

    Examples
    --------
    Three points on a horizontal line: one component, along x, with all the
    variance.

    >>> import numpy as np
    >>> result = pca(np.array([[0.0, 1.0], [2.0, 1.0], [4.0, 1.0]]), k=1)
    >>> result.components
    array([[1., 0.]])
    >>> result.coordinates[:, 0], result.explained_variance_ratio
    (array([-2.,  0.,  2.]), array([1.]))
    """
    data = as_vectors(vectors)
    n_points, dim = data.shape
    k = _check_k(k, min(n_points, dim))
    mean = data.mean(axis=0)
    centred = data - mean
    _, singular, vt = np.linalg.svd(centred, full_matrices=False)
    components = vt[:k]
    largest = np.argmax(np.abs(components), axis=1)
    components = components * np.sign(components[np.arange(k), largest])[:, None]
    variance = singular ** 2 / (n_points - 1)
    total = variance.sum()
    ratio = variance[:k] / total if total > 0 else np.zeros(k)
    return PCAResult(coordinates=centred @ components.T, components=components,
                     explained_variance=variance[:k], explained_variance_ratio=ratio,
                     mean=mean)


def _squared_distances(data):
    """(N, N) squared Euclidean distances, exactly 0 on the diagonal and >= 0."""
    sq_norms = np.einsum("nd,nd->n", data, data)
    distances = sq_norms[:, None] + sq_norms[None, :] - 2.0 * data @ data.T
    np.fill_diagonal(distances, 0.0)
    return np.maximum(distances, 0.0)


def _check_perplexity(perplexity, n_points):
    if isinstance(perplexity, bool) or not isinstance(perplexity, (int, float, np.number)):
        raise TypeError(f"perplexity must be a number, got {type(perplexity).__name__}")
    if not 1.0 <= perplexity < n_points - 1:
        raise ValueError(
            f"perplexity must be in [1, N - 1) = [1, {n_points - 1}) for N={n_points} points "
            f"(it is the effective number of neighbours), got {perplexity!r}")
    return float(perplexity)


def default_perplexity(n_points):
    """``min(30, (N - 1) / 3)``, at least 1: the usual 30 (van der Maaten and
    Hinton 2008 use 5 to 50), shrunk so that a sentence of a dozen tokens
    still has a valid value."""
    return float(max(1.0, min(30.0, (n_points - 1) / 3.0)))


def conditional_probabilities(vectors, perplexity, *, tol=1e-5, max_steps=200):
    r"""The t-SNE input affinities :math:`p_{j|i}`, each row calibrated to
    ``perplexity``.

    Parameters
    ----------
    vectors : array_like, shape (N, D)
    perplexity : float
        Target perplexity, ``1 <= perplexity < N - 1``.
    tol : float, keyword-only, default 1e-5
        Stop when every row's entropy is within ``tol`` nats of
        ``log(perplexity)``.
    max_steps : int, keyword-only, default 200
        Bisection steps at most.

    Returns
    -------
    conditional : ndarray, shape (N, N)
        ``conditional[i, j]`` = :math:`p_{j|i}`; rows sum to 1, diagonal 0.
    beta : ndarray, shape (N,)
        The precision :math:`\beta_i = 1 / (2 \sigma_i^2)` found for each row.

    Notes
    -----
    van der Maaten and Hinton (2008), "Visualizing Data using t-SNE", JMLR 9,
    section 2:

    .. math:: p_{j|i} = \frac{\exp(-\beta_i \lVert x_i - x_j \rVert^2)}
              {\sum_{k \ne i} \exp(-\beta_i \lVert x_i - x_k \rVert^2)},
              \qquad \mathrm{Perp}(P_i) = e^{H(P_i)},
              \quad H(P_i) = -\sum_j p_{j|i} \log p_{j|i}

    (entropy in nats, so the target is ``log(perplexity)``; the paper writes
    bits and :math:`2^H`, the same thing). :math:`H(P_i)` decreases as
    :math:`\beta_i` grows, so each :math:`\beta_i` is found by bisection: it
    doubles (or halves) until the target is bracketed, then halves the
    bracket, all rows at once, as in van der Maaten's reference ``x2p``.
    Each row's distances are shifted by their minimum before the
    exponential, which leaves :math:`p_{j|i}` unchanged and keeps the largest
    term at 1 (no underflow of a whole row).
    """
    data = as_vectors(vectors, min_points=3)
    n_points = data.shape[0]
    target = np.log(_check_perplexity(perplexity, n_points))
    distances = _squared_distances(data)
    off_diagonal = ~np.eye(n_points, dtype=bool)
    # shift by the nearest neighbour's distance (the diagonal excluded)
    nearest = np.where(off_diagonal, distances, np.inf).min(axis=1, keepdims=True)
    shifted = np.where(off_diagonal, distances - nearest, 0.0)
    spread = shifted.sum(axis=1) / (n_points - 1)
    beta = np.where(spread > 0, 1.0 / np.where(spread > 0, spread, 1.0), 1.0)
    low, high = np.zeros(n_points), np.full(n_points, np.inf)
    conditional, entropy = _rows_at(beta, shifted, off_diagonal)
    for _ in range(max_steps):
        error = entropy - target
        if np.all(np.abs(error) < tol):
            break
        too_flat = error > 0                      # entropy too high: sharpen (raise beta)
        low = np.where(too_flat, beta, low)
        high = np.where(too_flat, high, beta)
        beta = np.where(too_flat,
                        np.where(np.isinf(high), beta * 2.0, (beta + high) / 2.0),
                        (beta + low) / 2.0)
        conditional, entropy = _rows_at(beta, shifted, off_diagonal)
    return conditional, beta


def _rows_at(beta, shifted, off_diagonal):
    """Rows ``p_{.|i}`` at precision ``beta`` and their entropies (nats)."""
    kernel = np.where(off_diagonal, np.exp(-beta[:, None] * shifted), 0.0)
    rows = kernel / kernel.sum(axis=1, keepdims=True)  # the nearest term is exp(0) = 1
    with np.errstate(divide="ignore"):                 # 0 log 0 = 0, taken care of by where
        logs = np.where(rows > 0, np.log(np.where(rows > 0, rows, 1.0)), 0.0)
    return rows, -(rows * logs).sum(axis=1)


def joint_probabilities(vectors, perplexity):
    r"""The symmetric t-SNE affinities :math:`p_{ij} = (p_{j|i} + p_{i|j}) / 2N`.

    Parameters
    ----------
    vectors : array_like, shape (N, D)
    perplexity : float

    Returns
    -------
    ndarray, shape (N, N)
        Symmetric, zero diagonal, summing to 1.

    Notes
    -----
    van der Maaten and Hinton (2008), section 3.1 ("Symmetric SNE"): the
    symmetrisation gives every point a share of at least :math:`1/2N`, so
    outliers still place themselves.
    """
    conditional, _ = conditional_probabilities(vectors, perplexity)
    return (conditional + conditional.T) / (2.0 * conditional.shape[0])


def tsne_objective(joint, embedding):
    r"""The t-SNE cost and its exact gradient.

    Parameters
    ----------
    joint : array_like, shape (N, N)
        :math:`p_{ij}` from :func:`joint_probabilities` (symmetric, summing
        to 1), possibly multiplied by the early-exaggeration factor.
    embedding : array_like, shape (N, k)
        The low-dimensional points :math:`y_i`.

    Returns
    -------
    cost : float
        :math:`C = \mathrm{KL}(P \Vert Q) = \sum_{i \ne j} p_{ij}
        \log(p_{ij} / q_{ij})`, with ``0 log 0 = 0``.
    gradient : ndarray, shape (N, k)
        :math:`\partial C / \partial y_i`.

    Notes
    -----
    van der Maaten and Hinton (2008), section 3.2, equations (4) and (5):

    .. math:: q_{ij} = \frac{(1 + \lVert y_i - y_j \rVert^2)^{-1}}
              {\sum_{k \ne l} (1 + \lVert y_k - y_l \rVert^2)^{-1}}, \qquad
              \frac{\partial C}{\partial y_i} = 4 \sum_j (p_{ij} - q_{ij})
              (y_i - y_j) (1 + \lVert y_i - y_j \rVert^2)^{-1}.

    The gradient formula assumes a symmetric ``joint``; with the exaggerated
    :math:`\alpha P` (which does not sum to 1) it is the gradient of
    :math:`\sum \alpha p_{ij} \log(\alpha p_{ij} / q_{ij})`, the cost the
    paper's optimiser follows in its first iterations.
    """
    joint = np.asarray(joint, dtype=np.float64)
    points = np.asarray(embedding, dtype=np.float64)
    kernel, q = _student_t(points)
    positive = joint > 0
    cost = float(np.sum(joint[positive] * np.log(joint[positive] / q[positive])))
    return cost, _gradient(joint, points, kernel, q)


def _student_t(points):
    r"""The kernel :math:`(1 + \lVert y_i - y_j \rVert^2)^{-1}` (zero diagonal)
    and :math:`q_{ij}`, both (N, N)."""
    kernel = 1.0 / (1.0 + _squared_distances(points))   # Student-t, one dof
    np.fill_diagonal(kernel, 0.0)
    return kernel, kernel / kernel.sum()


def _gradient(joint, points, kernel, q):
    r""":math:`\partial C / \partial y_i` of :func:`tsne_objective`, (N, k)."""
    attraction = (joint - q) * kernel                    # (N, N)
    return 4.0 * (attraction.sum(axis=1)[:, None] * points - attraction @ points)


@dataclasses.dataclass
class TSNEResult(Record):
    """What :func:`tsne` returns.

    Attributes
    ----------
    coordinates : ndarray, shape (N, k)
    kl_divergence : float
        The final cost KL(P || Q).
    perplexity : float
        The perplexity used.
    n_iter : int
        Iterations run.
    backend : str
        ``"numpy"`` or ``"sklearn"``.
    """
    coordinates: np.ndarray
    kl_divergence: float
    perplexity: float
    n_iter: int
    backend: str


def tsne(vectors, k=2, *, perplexity=None, seed=0, n_iter=1000, learning_rate=100.0,
         early_exaggeration=4.0, exaggeration_iter=50, momentum=(0.5, 0.8),
         momentum_switch=250, min_gain=0.01, backend="numpy"):
    r"""t-distributed stochastic neighbour embedding (exact gradient).

    Parameters
    ----------
    vectors : array_like, shape (N, D)
        One row per point; ``3 <= N <= MAX_TSNE_POINTS`` with the NumPy
        backend.
    k : int, default 2
        Dimension of the embedding, 1 to 3.
    perplexity : float, keyword-only, optional
        Effective number of neighbours, ``1 <= perplexity < N - 1``. None:
        :func:`default_perplexity`, ``min(30, (N - 1) / 3)``.
    seed : int, keyword-only, default 0
        Seed of the initial layout (``numpy.random.default_rng(seed)``):
        the same input and seed give the same picture.
    n_iter : int, keyword-only, default 1000
        Gradient-descent iterations (the paper's T).
    learning_rate : float, keyword-only, default 100
        The paper's initial :math:`\eta`; each coordinate's step is scaled by
        an adaptive gain (see Notes).
    early_exaggeration : float, keyword-only, default 4
        Factor on :math:`P` during the first ``exaggeration_iter`` (50)
        iterations.
    momentum : (float, float), keyword-only, default (0.5, 0.8)
        Momentum before and from iteration ``momentum_switch`` (250).
    min_gain : float, keyword-only, default 0.01
        Floor of the adaptive gains.
    backend : {"numpy", "sklearn"}, keyword-only, default "numpy"
        ``"numpy"``: this implementation, always. ``"sklearn"``:
        ``sklearn.manifold.TSNE(n_components=k, perplexity=perplexity,
        random_state=seed)`` with its own defaults for everything else (it
        uses Barnes-Hut and a PCA initialisation, so its picture differs);
        an ImportError when scikit-learn is not installed. attnref never
        switches backend on its own.

    Returns
    -------
    TSNEResult

    Notes
    -----
    van der Maaten and Hinton (2008), "Visualizing Data using t-SNE", JMLR 9,
    2579-2605. Input affinities :math:`p_{ij}` from
    :func:`joint_probabilities` (one Gaussian per point, its width set by
    binary search to the perplexity); output similarities :math:`q_{ij}`
    from a Student-t kernel with one degree of freedom; the cost
    KL(P || Q) is minimised by gradient descent with momentum
    (:func:`tsne_objective` gives the cost and its exact gradient, O(N^2)
    per iteration). The optimiser follows section 3.4 of the paper:

    * initial points from :math:`\mathcal N(0, 10^{-4} I)`;
    * :math:`Y^{(t)} = Y^{(t-1)} + \eta\, g \odot (-\partial C/\partial Y)
      + \alpha(t) (Y^{(t-1)} - Y^{(t-2)})`, with :math:`\alpha(t) = 0.5` for
      :math:`t < 250` and 0.8 after;
    * the step sizes adapt per coordinate (Jacobs 1988, "delta-bar-delta",
      as in the authors' reference code): a gain grows by 0.2 while the
      gradient's sign is opposite to the last update's (the descent keeps
      its direction) and shrinks by a factor 0.8 otherwise, never below
      ``min_gain``;
    * early exaggeration: :math:`p_{ij}` times 4 for the first 50
      iterations, so clusters form tight and far apart before the fine
      layout.

    The embedding is centred after every step (the cost does not depend on
    a translation). t-SNE preserves neighbourhoods, not distances: the sizes
    of clusters and the gaps between them carry little meaning (Wattenberg,
    Viégas and Johnson 2016, "How to Use t-SNE Effectively").
    """
    data = as_vectors(vectors, min_points=3)
    n_points = data.shape[0]
    k = _check_k(k, 3)
    perplexity = (default_perplexity(n_points) if perplexity is None
                  else _check_perplexity(perplexity, n_points))
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an integer, got {seed!r}")
    for name, value in (("n_iter", n_iter), ("exaggeration_iter", exaggeration_iter),
                        ("momentum_switch", momentum_switch)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    if backend == "sklearn":
        return _sklearn_tsne(data, k, perplexity, seed)
    if backend != "numpy":
        raise ValueError(f"backend must be one of {_TSNE_BACKENDS}, got {backend!r}")
    if n_points > MAX_TSNE_POINTS:
        raise ValueError(
            f"vectors has N={n_points} points, more than MAX_TSNE_POINTS={MAX_TSNE_POINTS}: "
            "exact t-SNE needs O(N^2) memory and time per iteration. Use pca, a subset of "
            "the points, or backend='sklearn' (Barnes-Hut)")

    joint = joint_probabilities(data, perplexity)
    rng = np.random.default_rng(seed)
    points = rng.normal(scale=1e-2, size=(n_points, k))     # N(0, 1e-4 I)
    update = np.zeros_like(points)
    gains = np.ones_like(points)
    exaggerated = early_exaggeration * joint
    for iteration in range(n_iter):
        # the gradient alone: the cost (an N x N log) is read once, after the loop
        gradient = _gradient(exaggerated if iteration < exaggeration_iter else joint,
                             points, *_student_t(points))
        alpha = momentum[0] if iteration < momentum_switch else momentum[1]
        same_direction = np.sign(gradient) == np.sign(update)
        gains = np.maximum(np.where(same_direction, gains * 0.8, gains + 0.2), min_gain)
        update = alpha * update - learning_rate * gains * gradient
        points = points + update
        points -= points.mean(axis=0)
    cost, _ = tsne_objective(joint, points)
    return TSNEResult(coordinates=points, kl_divergence=cost, perplexity=perplexity,
                      n_iter=n_iter, backend="numpy")


def _sklearn_tsne(data, k, perplexity, seed):
    try:
        from sklearn.manifold import TSNE
    except ImportError as missing:
        raise ImportError(
            "tsne(backend='sklearn') needs scikit-learn: pip install scikit-learn "
            "(or use backend='numpy', attnref's own exact t-SNE)") from missing
    model = TSNE(n_components=k, perplexity=perplexity, random_state=seed)
    coordinates = model.fit_transform(data)
    return TSNEResult(coordinates=np.asarray(coordinates, dtype=np.float64),
                      kl_divergence=float(model.kl_divergence_), perplexity=perplexity,
                      n_iter=int(model.n_iter_), backend="sklearn")

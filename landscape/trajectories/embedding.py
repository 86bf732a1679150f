"""Low-dimensional embeddings of trajectory points ``[n, k]``: PCA and PHATE (optional extra).

PHATE (Moon et al. 2019) is imported lazily; its settings ``knn``, ``decay``, ``t`` and ``random_state`` are
explicit arguments so a config pins them. PHATE's licence is non-commercial, so it stays optional.
"""

from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger(__name__)


def pca(points: np.ndarray, n_components: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Project centred ``points [n, k]`` on their top principal axes: returns ``(coords [n, c],
    explained_variance_ratio [c])`` (SVD; deterministic up to the sign of each axis, fixed so that the
    largest-magnitude loading of each axis is positive)."""
    x = np.asarray(points, dtype=np.float64)
    x = x - x.mean(axis=0, keepdims=True)
    u, s, vt = np.linalg.svd(x, full_matrices=False)
    c = min(n_components, vt.shape[0])
    signs = np.sign(vt[np.arange(c), np.abs(vt[:c]).argmax(axis=1)])
    signs[signs == 0] = 1.0
    coords = u[:, :c] * s[:c] * signs
    var = s**2
    return coords, var[:c] / max(var.sum(), 1e-300)


def phate_embedding(
    points: np.ndarray,
    n_components: int = 2,
    knn: int = 5,
    decay: float = 40.0,
    t: int | str = "auto",
    random_state: int = 0,
    n_jobs: int = 1,
) -> np.ndarray:
    """PHATE coordinates ``[n, n_components]`` of ``points [n, k]``. Raises ImportError naming the extra when
    the ``phate`` package is missing."""
    try:
        import phate
    except ImportError as e:
        raise ImportError(
            "embedding='phate' needs the optional 'phate' extra (pip install phate; non-commercial licence); "
            "use embedding='pca' otherwise"
        ) from e
    x = np.asarray(points, dtype=np.float64)
    knn = int(min(knn, max(1, len(x) - 2)))
    op = phate.PHATE(
        n_components=n_components, knn=knn, decay=decay, t=t, random_state=random_state, n_jobs=n_jobs, verbose=0
    )
    return np.asarray(op.fit_transform(x), dtype=np.float64)


def embed(points: np.ndarray, method: str = "phate", **phate_kwargs: object) -> np.ndarray:
    """``method``: ``phate`` (with ``phate_kwargs``) or ``pca`` (first two axes)."""
    if method == "phate":
        return phate_embedding(points, **phate_kwargs)  # type: ignore[arg-type]
    if method == "pca":
        return pca(points, 2)[0]
    raise ValueError(f"embedding={method!r}: expected 'phate' or 'pca'")


def plot_embedding(
    coords: np.ndarray,
    values: np.ndarray,
    ax=None,
    label: str = "train loss",
    title: str | None = None,
    log_scale: bool = True,
):
    """Scatter of 2-D ``coords`` coloured by ``values`` (e.g. the loss); returns the Axes."""
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm

    if ax is None:
        _, ax = plt.subplots(figsize=(4.5, 4))
    v = np.asarray(values, dtype=np.float64)
    norm = LogNorm(vmin=max(v[v > 0].min(), 1e-8), vmax=v.max()) if log_scale and (v > 0).any() else None
    sc = ax.scatter(coords[:, 0], coords[:, 1], c=np.clip(v, 1e-8, None) if norm else v, s=8, cmap="viridis", norm=norm)
    ax.figure.colorbar(sc, ax=ax, label=label)
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title)
    return ax

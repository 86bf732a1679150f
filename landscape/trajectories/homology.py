"""Persistent homology of trajectories (ripser) and distances between diagrams (persim).

Two filtrations:

* ``rips_diagrams(points)``: Vietoris-Rips on a point cloud ``[n, k]`` (e.g. a PHATE embedding);
* ``sublevel_diagrams(values, edges)``: the sublevel-set filtration of a function on the vertices of a graph
  (the loss at each recorded parameter point), extended to the graph's clique complex as a lower-star
  filtration: vertex ``v`` enters at ``f(v)``, edge ``(u, v)`` at ``max(f(u), f(v))``, a triangle at the max of
  its vertices. Its H0 bars are basins of the loss: a bar ``(f(min), f(saddle))`` per local minimum that merges
  into a deeper basin at a barrier. The graph is the symmetrised *k-nearest-neighbour* graph of the points
  (``knn_edges``); linking far-away points would merge basins across barriers that the data never crossed.

Diagrams are lists ``[H0, H1, ...]`` of ``[n_bars, 2]`` arrays ``(birth, death)``; death may be ``inf``.
Summaries (``diagram_summary``) count bars with persistence ``death - birth`` above a threshold and give the
total and maximum persistence and the persistent entropy ``-sum p_i log p_i`` (``p_i`` = persistence share).
Infinite H0 bars (one per connected component) are capped at ``cap`` (the filtration's largest finite value).
Infinite bars in dimension >= 1 are left out of the summaries: on a kNN graph they are cycles of the graph
that no triangle ever fills (a sparse graph is not a triangulation), i.e. artefacts of the graph, not
features of the loss; ``summarise`` reports their number as ``h{d}_essential``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from scipy import sparse

log = logging.getLogger(__name__)


def _ripser():
    try:
        from ripser import ripser
    except ImportError as e:  # pragma: no cover
        raise ImportError("persistent homology needs the optional 'topology' extra: pip install ripser persim") from e
    return ripser


def rips_diagrams(points: np.ndarray, maxdim: int = 1) -> list[np.ndarray]:
    """Vietoris-Rips persistence diagrams ``[H0, ..., H_maxdim]`` of the point cloud ``points [n, k]``."""
    return [
        np.asarray(d, dtype=np.float64) for d in _ripser()(np.asarray(points, dtype=np.float64), maxdim=maxdim)["dgms"]
    ]


def knn_edges(points: np.ndarray, k: int) -> np.ndarray:
    """Edges ``[m, 2]`` (``i < j``, unique) of the symmetrised k-nearest-neighbour graph of ``points [n, d]``:
    ``(i, j)`` is an edge if ``j`` is among the ``k`` nearest points to ``i`` or vice versa."""
    from scipy.spatial import cKDTree

    pts = np.asarray(points, dtype=np.float64)
    n = len(pts)
    if n < 2:
        return np.zeros((0, 2), dtype=np.int64)
    k = min(int(k), n - 1)
    if k < 1:
        raise ValueError(f"knn={k}: must be >= 1")
    _, idx = cKDTree(pts).query(pts, k=k + 1)
    rows = np.repeat(np.arange(n), k)
    cols = idx[:, 1:].reshape(-1)
    e = np.sort(np.stack([rows, cols], axis=1), axis=1)
    e = e[e[:, 0] != e[:, 1]]
    return np.unique(e, axis=0)


def sublevel_diagrams(values: np.ndarray, edges: np.ndarray, maxdim: int = 1) -> list[np.ndarray]:
    """Lower-star (sublevel-set) persistence diagrams of ``values [n]`` on the graph ``edges [m, 2]``
    (clique complex), via ripser on a sparse filtration matrix whose diagonal holds the vertex values
    (ripser's documented lower-star construction; it filters in float32, so births/deaths carry ~1e-7
    relative round-off)."""
    f = np.asarray(values, dtype=np.float64)
    e = np.asarray(edges, dtype=np.int64).reshape(-1, 2)
    n = len(f)
    # ripser treats absent sparse entries as "no edge" and may drop explicit zeros: shift all values above 0
    shift = 1.0 - float(f.min()) if n else 0.0
    g = f + shift
    w = np.maximum(g[e[:, 0]], g[e[:, 1]])
    rows = np.concatenate([np.arange(n), e[:, 0]])
    cols = np.concatenate([np.arange(n), e[:, 1]])
    data = np.concatenate([g, w])
    mat = sparse.coo_matrix((data, (rows, cols)), shape=(n, n))
    dgms = _ripser()(mat, maxdim=maxdim, distance_matrix=True)["dgms"]
    return [np.asarray(d, dtype=np.float64) - shift for d in dgms]


@dataclass
class DiagramSummary:
    count: int  # bars with persistence > threshold (infinite bars included)
    total: float  # sum of persistence (infinite bars capped)
    maximum: float
    entropy: float  # persistent entropy of all bars with positive persistence


def diagram_summary(
    dgm: np.ndarray, threshold: float = 0.0, cap: float | None = None, drop_infinite: bool = False
) -> DiagramSummary:
    """Summary of one diagram ``[n_bars, 2]``. Infinite deaths are replaced by ``cap`` (default: the largest
    finite birth or death in the diagram) before persistence is computed, or dropped if ``drop_infinite``."""
    d = np.asarray(dgm, dtype=np.float64).reshape(-1, 2)
    if drop_infinite:
        d = d[np.isfinite(d[:, 1])]
    if len(d) == 0:
        return DiagramSummary(0, 0.0, 0.0, 0.0)
    finite = np.isfinite(d)
    if cap is None:
        cap = float(d[finite].max()) if finite.any() else 0.0
    death = np.where(np.isfinite(d[:, 1]), d[:, 1], max(cap, float(d[:, 0].max())))
    pers = np.clip(death - d[:, 0], 0.0, None)
    count = int((pers > threshold).sum() + (~np.isfinite(d[:, 1]) & (pers <= threshold)).sum())
    pos = pers[pers > 0]
    if pos.size:
        p = pos / pos.sum()
        entropy = float(-(p * np.log(p)).sum())
    else:
        entropy = 0.0
    return DiagramSummary(count=count, total=float(pers.sum()), maximum=float(pers.max()), entropy=entropy)


def summarise(
    dgms: list[np.ndarray], threshold: float = 0.0, cap: float | None = None, prefix: str = "topology"
) -> dict[str, float]:
    """``{prefix}.h{d}_count/_total/_max/_entropy`` for each diagram of ``dgms`` (H0: infinite bars capped;
    H1+: infinite bars dropped and counted in ``{prefix}.h{d}_essential``; see the module docstring)."""
    out: dict[str, float] = {}
    for dim, dgm in enumerate(dgms):
        s = diagram_summary(dgm, threshold, cap, drop_infinite=dim >= 1)
        out.update(
            {
                f"{prefix}.h{dim}_count": s.count,
                f"{prefix}.h{dim}_total": s.total,
                f"{prefix}.h{dim}_max": s.maximum,
                f"{prefix}.h{dim}_entropy": s.entropy,
            }
        )
        if dim >= 1:
            out[f"{prefix}.h{dim}_essential"] = int(np.isinf(np.asarray(dgm).reshape(-1, 2)[:, 1]).sum())
    return out


def diagram_distance(a: np.ndarray, b: np.ndarray, metric: str = "bottleneck") -> float:
    """Bottleneck or Wasserstein distance (persim's definitions) between two diagrams ``[n, 2]``; infinite
    bars are dropped (persim compares finite bars)."""
    import persim

    fa = np.asarray(a, dtype=np.float64).reshape(-1, 2)
    fb = np.asarray(b, dtype=np.float64).reshape(-1, 2)
    fa, fb = fa[np.isfinite(fa).all(axis=1)], fb[np.isfinite(fb).all(axis=1)]
    if metric == "bottleneck":
        return float(persim.bottleneck(fa, fb))
    if metric == "wasserstein":
        return float(persim.wasserstein(fa, fb))
    raise ValueError(f"metric={metric!r}: expected 'bottleneck' or 'wasserstein'")


def plot_diagrams(dgms: list[np.ndarray], ax=None, title: str | None = None):
    """Persistence diagram (birth vs death, one colour per dimension; infinite bars drawn at the top)."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(4, 4))
    finite_vals = (
        np.concatenate([d[np.isfinite(d)] for d in dgms if len(d)]) if any(len(d) for d in dgms) else np.zeros(1)
    )
    lo, hi = float(finite_vals.min()), float(finite_vals.max())
    top = hi + 0.1 * (hi - lo + 1e-12)
    for dim, d in enumerate(dgms):
        if not len(d):
            continue
        death = np.where(np.isfinite(d[:, 1]), d[:, 1], top)
        ax.scatter(d[:, 0], death, s=12, label=f"H{dim}")
    ax.plot([lo, top], [lo, top], "k--", lw=0.8)
    ax.axhline(top, color="grey", lw=0.5, ls=":")
    ax.set_xlabel("birth")
    ax.set_ylabel("death")
    if title:
        ax.set_title(title)
    ax.legend()
    return ax

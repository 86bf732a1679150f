"""Persistent homology: Rips on a circle and on two clusters; the loss sublevel filtration on a kNN graph."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("ripser", reason="the optional 'topology' extra (ripser, persim) is not installed")

from landscape.trajectories.homology import (
    diagram_distance,
    diagram_summary,
    knn_edges,
    rips_diagrams,
    sublevel_diagrams,
    summarise,
)


def test_noisy_circle_has_one_dominant_h1_bar():
    rng = np.random.default_rng(0)
    t = rng.uniform(0, 2 * np.pi, 120)
    pts = np.stack([np.cos(t), np.sin(t)], 1) + 0.05 * rng.standard_normal((120, 2))
    h0, h1 = rips_diagrams(pts, maxdim=1)
    pers = np.sort(h1[:, 1] - h1[:, 0])[::-1]
    assert pers[0] > 1.0  # the hole of a unit circle lives from ~0.1 to ~sqrt(3)
    assert pers[0] > 5 * (pers[1] if len(pers) > 1 else 0.0)
    s = diagram_summary(h1, threshold=0.5)
    assert s.count == 1 and s.maximum == pytest.approx(pers[0])
    assert np.isinf(h0[:, 1]).sum() == 1


def test_two_separated_clusters_give_two_long_h0_bars():
    rng = np.random.default_rng(1)
    pts = np.concatenate([rng.standard_normal((40, 3)) * 0.1, rng.standard_normal((40, 3)) * 0.1 + [5.0, 0, 0]])
    h0 = rips_diagrams(pts, maxdim=0)[0]
    pers = np.sort(h0[:, 1] - h0[:, 0])[::-1]
    assert np.isinf(pers[0])
    assert pers[1] > 4.0  # the gap between the clusters (~5 minus their radii)
    assert pers[2] < 0.5  # every other component merges within its cluster
    assert diagram_summary(h0, threshold=1.0).count == 2


def double_well(x: np.ndarray) -> np.ndarray:
    """Two basins: minima near x = -0.7 (f ~ -0.1) and x = +0.7 (f = 0), barrier f(0) = 0.24 between them."""
    return (x**2 - 0.49) ** 2 - 0.1 * np.exp(-((x + 0.7) ** 2) / 0.02)


def farthest_edges(points: np.ndarray, k: int) -> np.ndarray:
    """The published code's mistake, reproduced for the test: link each point to its k *farthest* points."""
    d = np.linalg.norm(points[:, None] - points[None], axis=-1)
    idx = np.argsort(-d, axis=1)[:, :k]
    e = np.sort(np.stack([np.repeat(np.arange(len(points)), k), idx.reshape(-1)], 1), axis=1)
    return np.unique(e, axis=0)


def test_loss_sublevel_filtration_on_the_nearest_neighbour_graph():
    x = np.linspace(-1.2, 1.2, 121)
    rng = np.random.default_rng(2)
    pts = np.stack([x, 0.002 * rng.standard_normal(len(x))], 1)  # a path in the plane
    f = double_well(x)
    deep, shallow = f[x < 0].min(), f[x > 0].min()
    barrier = f[np.abs(x) < 0.3].max()

    def check(dgms: list[np.ndarray]) -> None:
        h0 = dgms[0]
        inf = h0[np.isinf(h0[:, 1])]
        finite = h0[np.isfinite(h0[:, 1])]
        assert len(inf) == 1 and inf[0, 0] == pytest.approx(deep, abs=1e-5)  # the global basin never dies
        long = finite[finite[:, 1] - finite[:, 0] > 0.05]
        assert len(long) == 1  # exactly one other basin ...
        assert long[0, 0] == pytest.approx(shallow, abs=1e-5)  # ... born at the shallow minimum ...
        assert long[0, 1] == pytest.approx(barrier, abs=1e-5)  # ... merging at the barrier between them

    check(sublevel_diagrams(f, knn_edges(pts, k=2), maxdim=1))
    assert len(sublevel_diagrams(f, knn_edges(pts, k=2))[1]) == 0  # a path has no loops
    # linking farthest neighbours joins the two basins above the barrier's height: the check must fail
    with pytest.raises(AssertionError):
        check(sublevel_diagrams(f, farthest_edges(pts, k=2), maxdim=1))


def test_summary_and_distances():
    dgm = np.array([[0.0, 1.0], [0.0, 3.0], [0.5, np.inf]])
    s = diagram_summary(dgm, threshold=0.5, cap=4.0)
    assert diagram_summary(dgm, threshold=0.5, drop_infinite=True).count == 2
    out = summarise([dgm, dgm], threshold=0.5, cap=4.0)
    assert out["topology.h0_count"] == 3 and out["topology.h1_count"] == 2 and out["topology.h1_essential"] == 1
    assert s.count == 3 and s.total == pytest.approx(1 + 3 + 3.5) and s.maximum == pytest.approx(3.5)
    p = np.array([1, 3, 3.5]) / 7.5
    assert s.entropy == pytest.approx(-(p * np.log(p)).sum())
    a = np.array([[0.0, 1.0], [0.0, 2.0]])
    b = np.array([[0.0, 1.0], [0.0, 2.5]])
    assert diagram_distance(a, a) == pytest.approx(0.0)
    assert diagram_distance(a, b) == pytest.approx(0.5)
    assert diagram_distance(a, b, "wasserstein") == pytest.approx(0.5)
    with pytest.raises(ValueError, match="metric="):
        diagram_distance(a, b, "l2")

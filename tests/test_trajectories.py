"""Random projections, jump-and-retrain trajectories, embeddings and the geometry metric families."""

from __future__ import annotations

import copy
import itertools
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import dense_hessian, h0_summary, knn_graph, lower_star_h0

from landscape.data import load_data
from landscape.directions import flat_parameters
from landscape.metrics import ModelContext
from landscape.models import MLP
from landscape.training import make_loss
from landscape.trajectories.embedding import pca
from landscape.trajectories.jump_retrain import JumpRetrainSettings, analyse, jump_and_retrain
from landscape.trajectories.projection import RandomProjection


def test_blocked_projection_equals_the_dense_matrix_and_preserves_distances():
    p, k = 5000, 256
    cached = RandomProjection(p, k, seed=3, block_rows=1000)
    streamed = RandomProjection(p, k, seed=3, block_rows=1000, cache_bytes=0)
    assert streamed._full is None and cached._full is not None
    gen = torch.Generator().manual_seed(0)
    v = torch.randn(4, p, generator=gen)
    r = cached.matrix()
    assert r.shape == (p, k)
    torch.testing.assert_close(cached(v), v @ r)
    torch.testing.assert_close(streamed(v), v @ r, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(streamed(v[0]), (v @ r)[0], rtol=1e-4, atol=1e-4)
    # Johnson-Lindenstrauss: pairwise distances kept within ~3/sqrt(k) relative error
    d_in = torch.cdist(v, v)
    d_out = torch.cdist(cached(v), cached(v))
    mask = ~torch.eye(4, dtype=torch.bool)
    assert ((d_out[mask] / d_in[mask] - 1).abs() < 3 / np.sqrt(k)).all()
    assert not torch.allclose(RandomProjection(p, k, seed=4)(v), cached(v))  # the seed matters


def test_phate_embedding_and_its_missing_extra_error(monkeypatch):
    from landscape.trajectories.embedding import embed

    pytest.importorskip("phate")
    rng = np.random.default_rng(0)
    pts = np.outer(np.linspace(0, 1, 60), rng.standard_normal(10)) + 0.01 * rng.standard_normal((60, 10))
    a = embed(pts, "phate", knn=5, decay=40.0, t=5, random_state=0)
    b = embed(pts, "phate", knn=5, decay=40.0, t=5, random_state=0)
    assert a.shape == (60, 2) and np.isfinite(a).all()
    np.testing.assert_allclose(a, b)  # pinned random_state: reproducible
    monkeypatch.setitem(__import__("sys").modules, "phate", None)
    with pytest.raises(ImportError, match="optional 'phate' extra"):
        embed(pts, "phate")
    with pytest.raises(ValueError, match="embedding='umap'"):
        embed(pts, "umap")


def test_pca_recovers_the_dominant_axis():
    rng = np.random.default_rng(0)
    pts = np.outer(rng.standard_normal(200), [3.0, 4.0, 0.0]) + 0.01 * rng.standard_normal((200, 3))
    coords, ratio = pca(pts, 2)
    assert ratio[0] > 0.99
    np.testing.assert_allclose(np.abs(np.corrcoef(coords[:, 0], pts @ [0.6, 0.8, 0])[0, 1]), 1.0, atol=1e-4)


@pytest.fixture(scope="module")
def digits_ctx(tmp_path_factory):
    cfg = SimpleNamespace(name="digits", split_seed=0, subsample=300, subsample_seed=0, label_noise=0.0, noise_seed=0)
    data = load_data(cfg)
    torch.manual_seed(0)
    model = MLP(64, 10, width=16, depth=1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    lf = make_loss("cross_entropy")
    for _ in range(60):
        opt.zero_grad()
        lf(model(data.x_train), data.y_train).backward()
        opt.step()
    model.eval()
    return ModelContext(
        model=model,
        seed=0,
        data=data,
        loss_fn=lf,
        make_model=lambda: MLP(64, 10, 16, 1),
        cfg=None,
        device=torch.device("cpu"),
        workdir=tmp_path_factory.mktemp("work"),
    )


def test_jump_and_retrain_records_jumps_and_retraining(digits_ctx):
    ctx = digits_ctx
    s = JumpRetrainSettings(
        n_jumps=2, scales=(0.5,), epochs=1, lr=0.05, batch_size=50, record_every=2, projection_dim=32, seed=1
    )
    theta = flat_parameters(ctx.model).clone()
    traj = jump_and_retrain(ctx.model, ctx.loss_fn, ctx.data, s)
    torch.testing.assert_close(flat_parameters(ctx.model), theta)  # the trained model is untouched
    df = traj.frame()
    # origin + per jump: the jump point, steps 2, 4, 6 (6 steps of 50 samples)
    assert list(df.jump) == [-1] + [0] * 4 + [1] * 4
    assert list(df.step[df.jump == 0]) == [0, 2, 4, 6]
    assert traj.coords.shape == (9, 32)
    # a jump raises the loss, retraining brings it down again
    origin = df.train_loss[0]
    for j in (0, 1):
        seg = df[df.jump == j].train_loss.to_numpy()
        assert seg[0] > origin and seg[-1] < seg[0]
    proj = RandomProjection(theta.numel(), 32, seed=1)
    np.testing.assert_allclose(traj.coords[0], proj(theta).numpy(), rtol=1e-5)


def _table_types_ok(rows: list[dict], schema: dict) -> None:
    import pyarrow as pa

    assert rows and set(rows[0]) <= set(schema)
    pa.Table.from_pylist(rows, schema=pa.schema(schema))  # raises on a type mismatch


def test_geometry_families_fill_their_declared_columns(digits_ctx):
    import pyarrow as pa

    from landscape.metrics import jump_retrain, projection_trace, surfaces

    ctx = digits_ctx
    for mod, overrides in (
        (surfaces, dict(resolution=5, eval_samples=200)),
        (projection_trace, dict(n_directions=20, eval_samples=200, saddle_draws=3)),
        (jump_retrain, dict(n_jumps=2, scales=[0.5], epochs=1, batch_size=100, embedding="pca", projection_dim=16)),
    ):
        fam = mod.FAMILY
        cfg = mod.Config(enabled=True, **overrides)
        res = fam.compute(ctx, cfg)
        out, tables = res.values, res.tables
        assert res.error is None
        assert set(out) <= set(fam.columns), set(out) - set(fam.columns)
        pa.Table.from_pylist([out], schema=pa.schema({k: fam.columns[k] for k in out}))
        assert set(tables) == set(fam.long_tables)
        for name, rows in tables.items():
            _table_types_ok(rows, fam.long_tables[name])
    # the saddle check option is the library's saddle_check on the family's evaluation subset
    from landscape.projection_trace import saddle_check
    from landscape.surfaces import eval_subset

    pt = projection_trace.FAMILY.compute(
        ctx, projection_trace.Config(enabled=True, n_directions=4, eval_samples=100, saddle_draws=3)
    ).values
    x, y = eval_subset(ctx.data.x_train, ctx.data.y_train, 100, 0)
    sc = saddle_check(ctx.model, ctx.loss_fn, x, y, n_draws=3, step=1e-2, seed=1, dtype=torch.float64)
    assert pt["projection_trace.saddle_share_minimum"] == sc.share_minimum
    # the surface's centre is the trained model
    out = surfaces.FAMILY.compute(ctx, surfaces.Config(enabled=True, resolution=5, eval_samples=0, dims=1)).values
    from landscape.training import evaluate

    assert out["surfaces.center_train_loss"] == pytest.approx(
        evaluate(ctx.model, ctx.data.x_train, ctx.data.y_train, ctx.loss_fn)[0], rel=1e-5
    )
    assert out["surfaces.n_points"] == 5
    with pytest.raises(ValueError, match="metrics.surfaces.directions='x'"):
        surfaces.FAMILY.compute(ctx, surfaces.Config(enabled=True, directions="x"))


def test_hessian_direction_surface_family(digits_ctx):
    """Against the dense float64 Hessian (``torch.func.hessian``, 1210 x 1210) of the same 50 samples: the
    reported eigenvalues are the extreme ones (Ritz values lie inside the spectrum and, converged, within
    ``tol * ||H||`` of its ends), the directions are the eigenvectors, and the surface's second differences at
    the centre are the curvatures along them (its mixed difference ~ 0: the directions are H-orthogonal)."""
    from landscape.directions import hessian_directions
    from landscape.metrics import surfaces
    from landscape.params import eval_subset

    ctx = digits_ctx
    tol, h = 1e-5, 0.01
    cfg = surfaces.Config(
        enabled=True,
        directions="hessian",
        resolution=3,
        eval_samples=50,
        range=h,
        hessian_tol=tol,
        hessian_max_iter=400,
        include_test=False,
    )
    res = surfaces.FAMILY.compute(ctx, cfg)
    out = res.values
    x, y = eval_subset(ctx.data.x_train, ctx.data.y_train, 50, 0)  # the family's evaluation subset (seed 0)
    H = dense_hessian(copy.deepcopy(ctx.model).double(), ctx.loss_fn, x.double(), y)
    lam, vec = torch.linalg.eigh(H)
    top, bottom = float(lam[-1]), float(lam[0])
    assert top > 1.0 and bottom < -0.05  # a saddle-ish point: both ends worth checking
    bound = tol * top + 1e-5  # + float32 round-off of the operator
    lam_max, lam_min = out["surfaces.hessian_max_eigenvalue"], out["surfaces.hessian_min_eigenvalue"]
    assert top - bound <= lam_max <= top + 1e-5, (lam_max, top)
    assert bottom - 1e-5 <= lam_min <= bottom + bound, (lam_min, bottom)
    # the same directions, as the family gets them: eigenvectors of H (d1: a well separated top eigenvalue)
    d1, d2, _, _ = hessian_directions(
        ctx.model, ctx.loss_fn, x, y, batch_size=int(cfg.batch_size), seed=0, tol=tol, max_iter=400
    )
    d1, d2 = d1.double(), d2.double()
    assert abs(float(d1 @ vec[:, -1])) > 0.999
    assert float(torch.linalg.vector_norm(H @ d2 - lam_min * d2)) <= bound
    # the surface: 3 x 3 points at alpha, beta in {-h, 0, h}; central second differences = curvatures
    rows = res.tables["surfaces"]
    assert len(rows) == 9
    L = {(round(r["alpha"] / h), round(r["beta"] / h)): r["train_loss"] for r in rows}
    assert set(L) == set(itertools.product((-1, 0, 1), repeat=2))
    curv1 = (L[1, 0] + L[-1, 0] - 2 * L[0, 0]) / h**2
    curv2 = (L[0, 1] + L[0, -1] - 2 * L[0, 0]) / h**2
    mixed = (L[1, 1] - L[1, -1] - L[-1, 1] + L[-1, -1]) / (4 * h**2)
    assert curv1 == pytest.approx(top, rel=0.01)  # measured 0.3 % (higher-order terms at h = 0.01)
    assert abs(curv2 - bottom) <= bound + 5e-4 and curv2 < -0.05
    assert abs(mixed) < 0.01 * top
    assert out["surfaces.center_train_loss"] == pytest.approx(L[0, 0])


def _compare_generalisation_module():
    """``analysis/compare_generalisation.py`` (an experiment script, not part of the package)."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "analysis" / "compare_generalisation.py"
    spec = importlib.util.spec_from_file_location("compare_generalisation", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_clean_and_noisy_networks_give_different_jump_retrain_summaries(monkeypatch):
    """The table's numbers against their own recomputation: accuracies and losses of the trained models (by
    hand, from the models handed to jump-and-retrain), the mean retrained loss from the recorded points, and the
    H0 summaries of the loss filtration from an independent PCA, brute-force kNN graph and union-find (elder
    rule) on those points. Then the sharp facts of the comparison, with margins from measurement."""
    pytest.importorskip("ripser")
    mod = _compare_generalisation_module()
    seen = []  # per level: [the trained model (a copy), its data, its trajectories, the settings used]

    def recording_jump_and_retrain(model, loss_fn, data, s):
        seen.append([copy.deepcopy(model), data])
        return jump_and_retrain(model, loss_fn, data, s)

    def recording_analyse(traj, s):
        seen[-1] += [traj, s]
        return analyse(traj, s)

    monkeypatch.setattr(mod, "jump_and_retrain", recording_jump_and_retrain)
    monkeypatch.setattr(mod, "analyse", recording_analyse)
    s = JumpRetrainSettings(
        n_jumps=2,
        scales=(0.5,),
        epochs=1,
        batch_size=100,
        record_every=1,
        projection_dim=32,
        embedding="pca",
        graph_knn=4,
    )
    df = mod.compare_generalisation(label_noise=(0.0, 0.5), width=16, train_epochs=8, settings=s, subsample=400)
    assert list(df.label_noise) == [0.0, 0.5] and len(seen) == 2
    for (model, data, traj, s_used), (_, row) in zip(seen, df.iterrows(), strict=True):
        with torch.no_grad():
            logits_tr, logits_te = model(data.x_train), model(data.x_test)
        assert row.train_loss == pytest.approx(float(F.cross_entropy(logits_tr, data.y_train)), rel=1e-5)
        assert row.train_acc == pytest.approx(float((logits_tr.argmax(1) == data.y_train).double().mean()))
        assert row.test_acc == pytest.approx(float((logits_te.argmax(1) == data.y_test).double().mean()))
        loss = np.array([r["train_loss"] for r in traj.rows])
        jumped = np.array([r["jump"] >= 0 for r in traj.rows])
        assert row.n_points == len(loss) == 1 + 2 * (1 + 4)  # origin + per jump: the jump and 4 steps of 100
        assert row.mean_traj_train_loss == pytest.approx(loss[jumped].mean())
        centred = traj.coords - traj.coords.mean(0)
        emb = centred @ np.linalg.svd(centred, full_matrices=False)[2][:2].T  # PCA: distances do not see signs
        want = h0_summary(
            lower_star_h0(loss, knn_graph(emb, s_used.graph_knn)), s_used.persistence_threshold, cap=float(loss.max())
        )
        for k, v in want.items():
            assert row[f"topology.{k}"] == pytest.approx(v, rel=1e-5, abs=1e-6), (row.label_noise, k)
    clean, noisy = df.iloc[0], df.iloc[1]
    # the noisy model memorises: much worse on the test set, and jumps land it (and leave it after one epoch)
    # at a higher train loss on its own labels than the clean one
    assert clean.test_acc > noisy.test_acc + 0.1  # measured 0.93 vs 0.75
    assert noisy.train_loss > clean.train_loss + 1.0  # measured 1.69 vs 0.13
    assert noisy.mean_traj_train_loss > clean.mean_traj_train_loss + 0.5  # measured 1.92 vs 0.85
    # H0 total is dominated by the capped essential bar, the loss range of the points: wide where a jump leaves
    # a deep minimum (clean), narrow where the model never fitted (noisy); measured 2.48 vs 0.51
    assert clean["topology.h0_total"] > 2 * noisy["topology.h0_total"]

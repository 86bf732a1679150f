"""The spine through the real ``landscape`` CLI (Hydra multiruns in subprocesses)."""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import FAST, LANDSCAPE, REPO

from landscape.results import load

METRICS = ["train_loss", "train_acc", "test_loss", "test_acc", "train_acc_clean", "training.steps"]


def saved_models(sweep: Path, cell_id: str, seeds: list[int]):
    """The cell's data and each seed's final weights, loaded from disk as a user would (independent of the job)."""
    import torch
    from omegaconf import OmegaConf

    from landscape.data import load_data
    from landscape.models import build_model

    cfg = OmegaConf.load(sweep / "cells" / cell_id / "config.yaml")
    data = load_data(cfg.data)
    models = {}
    for s in seeds:
        m = build_model(cfg.model, data.input_shape, data.n_classes)
        m.load_state_dict(torch.load(sweep / "cells" / cell_id / "seeds" / str(s) / "final.pt", weights_only=True))
        models[s] = m.eval()
    return data, models


def linear_cka(X, Y) -> float:
    """Linear CKA in feature space, ||Yc' Xc||_F^2 / (||Xc' Xc||_F ||Yc' Yc||_F), float64."""
    Xc, Yc = X.double() - X.double().mean(0), Y.double() - Y.double().mean(0)
    return float((Yc.T @ Xc).norm() ** 2 / ((Xc.T @ Xc).norm() * (Yc.T @ Yc).norm()))


def exact_hessian(model, x, y):
    """The Hessian ``[P, P]`` of the mean cross-entropy over ``(x, y)`` at the model's parameters, float64."""
    import torch
    from torch.func import functional_call

    m = copy.deepcopy(model).double()
    names = [n for n, _ in m.named_parameters()]
    shapes = [p.shape for _, p in m.named_parameters()]
    theta = torch.cat([p.detach().reshape(-1) for p in m.parameters()])

    def loss(flat):
        params, i = {}, 0
        for n, sh in zip(names, shapes, strict=True):
            params[n] = flat[i : i + sh.numel()].reshape(sh)
            i += sh.numel()
        return torch.nn.functional.cross_entropy(functional_call(m, params, (x.double(),)), y)

    return torch.func.hessian(loss)(theta)


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_mtime_ns, p.stat().st_size) for p in root.rglob("*") if p.is_file()}


def test_readme_demo_command_end_to_end(tmp_path):
    """`make demo` (the README's first command) on a reduced grid: rows, summary table, phase diagram."""
    venv = Path(sys.executable).parent.parent
    demo_dir = tmp_path / "demo"
    proc = subprocess.run(
        [
            "make",
            "-C",
            str(REPO),
            "demo",
            f"VENV={venv}",
            f"DEMO_DIR={demo_dir}",
            "ARGS=model.width=8,32 data.label_noise=0.2 train.epochs=2",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"results of {demo_dir}" in proc.stdout and "test_acc" in proc.stdout
    df = load(demo_dir, "models")
    assert len(df) == 6 and set(df["model.width"]) == {8, 32} and (df["status"] == "done").all()  # 3 seeds
    assert df["test_acc"].between(0, 1).all()
    assert len(load(demo_dir, "pairs")) == 6  # 3 seeds: 3 pairs per cell
    assert list((demo_dir / "phase").glob("*.png")), proc.stdout[-2000:]
    assert "phases (data.label_noise rows, model.width columns" in proc.stdout and "per phase" in proc.stdout


def test_same_config_twice_gives_bitwise_identical_metrics(cli, tmp_path):
    for name in ("a", "b"):
        cli([f"hydra.sweep.dir={name}", *FAST])
    a, b = load(tmp_path / "a").sort_values("seed"), load(tmp_path / "b").sort_values("seed")
    assert len(a) == 2
    pd.testing.assert_frame_equal(
        a[METRICS + ["cell_id"]].reset_index(drop=True),
        b[METRICS + ["cell_id"]].reset_index(drop=True),
        check_exact=True,
    )
    pa_, pb = load(tmp_path / "a", "pairs"), load(tmp_path / "b", "pairs")
    assert pa_["l2_distance"].tolist() == pb["l2_distance"].tolist()


def test_sigkill_mid_training_then_rerun_gives_the_uninterrupted_rows(cli, tmp_path):
    args = [
        "data.subsample=0.25",
        "model.width=8",
        "train.batch_size=32",
        "train.epochs=80",
        "train.checkpoint_every=1",
        "train.vectorize=off",
    ]  # serial: seed 0 finishes before seed 1
    cli(["hydra.sweep.dir=ref", *args])
    ref = load(tmp_path / "ref")
    cid = ref["cell_id"].iloc[0]

    proc = subprocess.Popen(
        [*LANDSCAPE, "hydra.sweep.dir=run", *args],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    seed1_ckpt = tmp_path / "run" / "cells" / cid / "seeds" / "1" / "checkpoint.pt"
    deadline = time.time() + 240
    while not seed1_ckpt.exists():
        assert proc.poll() is None, "the run finished before it could be killed"
        assert time.time() < deadline
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    seed0 = tmp_path / "run" / "cells" / cid / "seeds" / "0" / "result.json"
    assert seed0.exists() and not (tmp_path / "run" / "results").exists()
    seed0_mtime = seed0.stat().st_mtime_ns

    cli(["hydra.sweep.dir=run", *args])
    run = load(tmp_path / "run")
    assert len(run) == 2 and sorted(run["seed"]) == [0, 1]  # no duplicates
    assert len(list((tmp_path / "run" / "results" / "models").glob("*.parquet"))) == 1
    pd.testing.assert_frame_equal(
        run.sort_values("seed")[METRICS].reset_index(drop=True),
        ref.sort_values("seed")[METRICS].reset_index(drop=True),
        check_exact=True,
    )
    assert seed0.stat().st_mtime_ns == seed0_mtime  # the finished seed was not retrained
    resumed = run.set_index("seed")["training.resumed"]
    assert not resumed[0] and resumed[1]


def test_rerunning_a_finished_multirun_writes_nothing_and_launches_no_job(cli, tmp_path):
    # The rerun's speed is not asserted here (a timed test fails on a loaded machine); what makes it fast is
    # asserted instead: the planner finds every cell done and starts no job, and not one file changes.
    grid = [
        "-m",
        "hydra.sweep.dir=grid",
        "data.subsample=0.5",
        "train.batch_size=16",
        "train.epochs=60",
        "model.width=16,32",
    ]
    cli(grid)
    before = snapshot(tmp_path / "grid")
    proc = cli(grid)
    assert snapshot(tmp_path / "grid") == before
    assert "nothing to launch" in proc.stdout + proc.stderr
    assert "launching" not in (proc.stdout + proc.stderr).lower()
    # a different grid in the same sweep directory adds only the new cell
    cli(
        [
            "-m",
            "hydra.sweep.dir=grid",
            "data.subsample=0.5",
            "train.batch_size=16",
            "train.epochs=60",
            "model.width=16,48",
        ]
    )
    after = snapshot(tmp_path / "grid")
    assert all(after[k] == v for k, v in before.items() if k.startswith("results"))
    assert len(load(tmp_path / "grid")) == 6


def test_a_bad_cell_anywhere_in_the_grid_stops_the_launch(cli, tmp_path):
    proc = cli(
        [
            "-m",
            "hydra.sweep.dir=bad",
            *FAST[:-2],
            "model.width=8,-3",
            "data.label_noise=0.2,1.5",
            "train.batch_size=32,5000",
        ],
        check=False,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    for named in ("model.width=-3", "data.label_noise=1.5", "train.batch_size=5000"):
        assert named in out, out[-3000:]
    assert "nothing was launched" in out
    assert not (tmp_path / "bad" / "cells").exists()


@pytest.mark.parametrize(
    "override,named",
    [("model.widht=3", "model.widht"), ("model=transformer", "transformer"), ("data=imagenet", "imagenet")],
)
def test_typos_and_unknown_options_are_refused_by_name(cli, tmp_path, override, named):
    proc = cli(["-m", "hydra.sweep.dir=typo", "model.width=8,16", override], check=False)
    assert proc.returncode != 0 and named in proc.stdout + proc.stderr
    assert not (tmp_path / "typo" / "cells").exists()


def test_global_metrics_through_the_cli_write_pairs_rows_joinable_with_models(cli, tmp_path):
    cli(
        [
            "-m",
            "hydra.sweep.dir=g",
            *FAST,
            "train.seeds=[0,1,2]",
            "metrics.cka.enabled=true",
            "metrics.connectivity.enabled=true",
            "metrics.connectivity.epochs=2",
            "metrics.connectivity.n_points=5",
        ]
    )
    models, pairs = load(tmp_path / "g"), load(tmp_path / "g", "pairs")
    assert sorted(zip(pairs["seed_a"], pairs["seed_b"], strict=True)) == [(0, 1), (0, 2), (1, 2)]
    assert pairs["connectivity.mc"].notna().all() and pairs["connectivity.barrier"].notna().all()
    # independent: the saved final weights, softmax outputs on the test set, CKA and distance written out here
    import torch

    data, nets = saved_models(tmp_path / "g", models["cell_id"].iloc[0], [0, 1, 2])
    with torch.no_grad():
        feats = {s: torch.softmax(m(data.x_test).double(), -1) for s, m in nets.items()}
    flat = {s: torch.cat([p.detach().double().reshape(-1) for p in m.parameters()]) for s, m in nets.items()}
    with torch.no_grad():  # the training family: loss and accuracy of each saved model, written out
        for _, r in models.iterrows():
            net = nets[int(r["seed"])]
            assert r["test_acc"] == pytest.approx(
                float((net(data.x_test).argmax(1) == data.y_test).double().mean()), abs=1e-12
            )
            assert r["train_loss"] == pytest.approx(
                float(torch.nn.functional.cross_entropy(net(data.x_train).double(), data.y_train)), rel=1e-5
            )
    for _, r in pairs.iterrows():
        a, b = int(r["seed_a"]), int(r["seed_b"])
        assert r["cka"] == pytest.approx(linear_cka(feats[a], feats[b]), rel=1e-9)
        assert r["l2_distance"] == pytest.approx(float((flat[a] - flat[b]).norm()), rel=1e-12)
        assert r["cka.error"] is None or pd.isna(r["cka.error"])
    assert all(len(t) == 5 for t in pairs["connectivity.t"])
    joined = pairs.merge(
        models[["cell_id", "seed", "test_acc"]], left_on=["cell_id", "seed_a"], right_on=["cell_id", "seed"]
    )
    assert len(joined) == 3 and joined["test_acc"].notna().all()


def test_pair_metrics_need_two_seeds(cli, tmp_path):
    proc = cli(["hydra.sweep.dir=one", *FAST, "train.seeds=[0]", "metrics.cka.enabled=true"], check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "train.seeds=[0]" in out and "cka" in out


def test_hessian_metrics_through_the_cli_write_their_columns(cli, tmp_path):
    cli(
        [
            "hydra.sweep.dir=h",
            *FAST,
            "metrics.hessian.enabled=true",
            "metrics.hessian.n_top=2",
            "metrics.hessian.eval_samples=200",
            "metrics.hessian.trace_matvecs=30",
        ]
    )
    m = load(tmp_path / "h")
    assert len(m) == 2 and m["hessian.converged"].all() and m["hessian.error"].isna().all()
    assert (m["hessian.eval_samples"] == 200).all() and (m["hessian.trace_method"] == "krylov").all()
    # independent: the exact Hessian (torch.func, float64) of each saved model over the same 200 samples
    import torch

    from landscape.metrics.hessian import eval_indices

    data, nets = saved_models(tmp_path / "h", m["cell_id"].iloc[0], [0, 1])
    idx = eval_indices(data.n_train, 200, 0)
    for _, r in m.iterrows():
        lam = torch.linalg.eigvalsh(exact_hessian(nets[int(r["seed"])], data.x_train[idx], data.y_train[idx]))
        assert list(r["hessian.top_eigenvalues"]) == pytest.approx([float(lam[-1]), float(lam[-2])], rel=1e-3)
        assert r["hessian.top_eigenvalue"] == pytest.approx(float(lam[-1]), rel=1e-3)
        assert r["hessian.min_eigenvalue"] == pytest.approx(float(lam[0]), rel=1e-2, abs=1e-3 * float(lam[-1]))
        assert abs(r["hessian.trace"] - float(lam.sum())) <= 4 * r["hessian.trace_stderr"]


def test_a_configured_subset_of_pairs(cli, tmp_path):
    cli(["hydra.sweep.dir=p", *FAST, "train.seeds=[0,1,2,3]", "metrics.pairs=chain"])
    pairs = load(tmp_path / "p", "pairs")
    assert sorted(zip(pairs["seed_a"], pairs["seed_b"], strict=True)) == [(0, 1), (1, 2), (2, 3)]

"""The GPU projection of a grid (``landscape.gpu_cost``): FLOP counts equal the hand count of the architecture,
each unit's price follows the stated roofline and floor, packing divides the GPU-seconds of floor-bound cells
only, measured steps scale the projection, and the taxonomy width x batch grid is the sweep file's 169 cells."""

from __future__ import annotations

import math

import pytest
import torch
from omegaconf import OmegaConf

from landscape import gpu_cost as G
from landscape import placement
from landscape.cli.app import sweep_configs
from landscape.cost import Op, cell_work
from landscape.models import build_model


def resnet18_forward_flops(w: int) -> int:
    """FLOPs (2 per multiply-add) of the CIFAR ResNet18 of width ``w`` on one 32x32 image, counted by hand:
    the stem, then per stage its 3x3 convolutions and the 1x1 projection of its first block, and the head."""
    total = 2 * 3 * w * 9 * 32 * 32  # stem
    total += 4 * 2 * w * w * 9 * 32 * 32  # stage 1: four 3x3 convolutions, w -> w
    for i, side in ((1, 16), (2, 8), (3, 4)):
        c_in, c = w * 2 ** (i - 1), w * 2**i
        total += 2 * c_in * c * 9 * side**2 + 3 * 2 * c * c * 9 * side**2 + 2 * c_in * c * side**2
    return total + 2 * 8 * w * 10  # head


def _resnet(width: int) -> dict:
    return {"name": "resnet18", "width": width}


@pytest.mark.parametrize("width", [2, 16, 64])
def test_flops_are_the_hand_count_of_the_architecture(width):
    c = G.model_counts(_resnet(width), (3, 32, 32), 10)
    assert c.forward_flops == resnet18_forward_flops(width)
    assert 2.9 * c.forward_flops < c.train_flops < 3.0 * c.forward_flops  # the stem's input gradient is not needed
    assert c.hvp_flops > 2 * c.train_flops
    if width == 64:
        assert c.n_params == 11_173_962 and c.forward_flops == 1_110_845_440


def test_mlp_flops_exactly():
    w = 8
    c = G.model_counts(
        {"name": "mlp", "width": w, "depth": 2, "activation": "relu", "batch_norm": False}, (1, 8, 8), 10
    )
    forward = 2 * (64 * w + w * w + w * 10)
    assert c.forward_flops == forward
    assert c.train_flops == 2 * forward + 2 * (w * w + w * 10)  # weight gradients + input gradients of layers 2, 3


def test_a_unit_is_priced_by_the_roofline_with_its_floor():
    a, gpu = G.Assumptions(), G.GPUS["h100"]
    c = G.model_counts(_resnet(64), (3, 32, 32), 10)
    peak, bw = gpu.peak["tf32"] * a.compute_util, gpu.bandwidth * a.memory_util
    per_sample = c.train_flops / peak + c.activations * a.act_passes_train * 4 / bw
    assert G.op_seconds(Op("sgd", 512, 1), c, 64, gpu, a) == pytest.approx(512 * per_sample)
    assert 512 * per_sample > a.step_floor_s
    small = G.model_counts(_resnet(4), (3, 32, 32), 10)
    assert G.op_seconds(Op("sgd", 16, 1), small, 4, gpu, a) == a.step_floor_s  # launch-bound
    assert G.op_seconds(Op("curve", 16, 1), small, 4, gpu, a) == a.curve_floor_s
    bf16 = G.op_seconds(Op("sgd", 512, 1), c, 64, gpu, G.with_assumptions(a, precision="bf16"))
    assert bf16 == pytest.approx(512 * (c.train_flops / (2 * peak) + c.activations * a.act_passes_train * 2 / bw))
    # the utilisation of a narrow network is lower (u_c = compute_util x width / 64)
    narrow = G.op_seconds(Op("forward"), small, 4, gpu, G.with_assumptions(a, eval_floor_s=0.0))
    u = a.compute_util * 4 / 64
    expected = small.forward_flops / (gpu.peak["tf32"] * u) + small.activations * a.act_passes_forward * 4 / bw
    assert narrow == pytest.approx(expected)
    with pytest.raises(ValueError, match="op kind 'jump'"):
        G.op_seconds(Op("jump"), c, 64, gpu, a)


def test_packing_divides_only_what_the_floor_wastes():
    a, gpu = G.Assumptions(), G.GPUS["h100"]
    small = G.model_counts(_resnet(4), (3, 32, 32), 10)
    one = G.op_seconds(Op("sgd", 128, 1), small, 4, gpu, a, k=1)
    eight = G.op_seconds(Op("sgd", 128, 1), small, 4, gpu, a, k=8)
    assert one == eight == a.step_floor_s  # 8 launch-bound cells share the GPU at no cost: GPU-seconds / 8
    big = G.model_counts(_resnet(128), (3, 32, 32), 10)
    alone = G.op_seconds(Op("sgd", 1024, 1), big, 128, gpu, a, k=1)
    assert G.op_seconds(Op("sgd", 1024, 1), big, 128, gpu, a, k=2) == pytest.approx(2 * alone)  # no gain
    # without MPS the narrow cells' kernels do not overlap: their compute adds up
    no_mps = G.with_assumptions(a, mps=False)
    w16 = G.model_counts(_resnet(16), (3, 32, 32), 10)
    k1 = G.op_seconds(Op("sgd", 1024, 1), w16, 16, gpu, no_mps, k=1)
    assert G.op_seconds(Op("sgd", 1024, 1), w16, 16, gpu, no_mps, k=4) == pytest.approx(4 * k1)
    assert G.op_seconds(Op("sgd", 1024, 1), w16, 16, gpu, a, k=4) < 4 * k1  # MPS: 4 x u_c, up to the cap


@pytest.fixture(scope="module")
def grid():
    return sweep_configs("taxonomy_width_batch")


def test_the_taxonomy_grid_is_the_sweep_files_169_cells(grid):
    assert len(grid) == 169
    widths = sorted({int(c.model.width) for c in grid})
    batches = sorted({int(c.train.batch_size) for c in grid})
    assert widths == [2, 3, 4, 6, 8, 11, 16, 23, 32, 45, 64, 91, 128]
    assert batches == [16, 24, 32, 44, 64, 92, 128, 180, 256, 364, 512, 724, 1024]
    c = grid[0]
    assert c.model.name == "resnet18" and c.data.name == "cifar10" and list(c.train.seeds) == [0, 1, 2, 3, 4]
    assert int(c.train.epochs) == 100 and int(c.metrics.connectivity.epochs) == 100


def test_a_cells_projection_counts_its_steps_and_packing(grid):
    a, gpu = G.Assumptions(), G.GPUS["h100"]
    cell = next(c for c in grid if int(c.model.width) == 4 and int(c.train.batch_size) == 128)
    p = G.project_cell(cell, gpu, a)
    assert p.train_steps == 5 * 100 * math.ceil(50_000 / 128)  # 5 seeds, 100 epochs, 391 steps (no batch of one)
    assert p.curve_steps == 10 * 100 * math.ceil(50_000 / 128)  # 10 curves, 100 epochs at batch 128
    assert p.k == placement.auto_cells_per_gpu(placement.cell_demand(cell), gpu.memory) == 8
    alone = G.project_cell(cell, gpu, G.with_assumptions(a, cells_per_gpu=1))
    assert alone.k == 1
    # launch-bound steps and Hessian products take the same wall time packed as alone: their GPU-seconds / 8
    assert p.seconds["hessian"].high == alone.seconds["hessian"].high
    # what packing adds is the evaluation passes, priced by work: a width-4 forward pass runs at compute_util x 4/64
    # of the peak alone and at 8x that with 8 cells, so its compute is shared but its memory traffic adds up 8x
    c = G.model_counts(cell.model, (3, 32, 32), 10)
    bw = gpu.bandwidth * a.memory_util

    def fwd(k: int) -> float:
        peak = gpu.peak["tf32"] * a.compute_util * k * 4 / 64
        return max(
            a.eval_floor_s / a.eval_batch, k * (c.forward_flops / peak + c.activations * a.act_passes_forward * 4 / bw)
        )

    fwd8, fwd1 = fwd(8), fwd(1)
    assert fwd1 < fwd8 < 8 * fwd1
    with torch.device("meta"):
        model = build_model(OmegaConf.create(OmegaConf.to_container(cell.model, resolve=True)), (3, 32, 32), 10)
    forwards = sum(
        n.high
        for ops in cell_work(cell, G.CIFAR10, model).parts.values()
        for o, n in ops.items()
        if o.kind == "forward"
    )
    assert p.wall.high - alone.wall.high == pytest.approx(forwards * (fwd8 - fwd1), rel=1e-9)
    assert p.gpu_seconds.high == pytest.approx((alone.wall.high + forwards * (fwd8 - fwd1)) / 8, rel=1e-9)


def test_measured_steps_scale_the_projection(grid):
    a, gpu = G.Assumptions(), G.GPUS["h100"]
    rows = []
    for width, factor in ((4, 2.0), (64, 0.5)):
        c = G.model_counts(_resnet(width), (3, 32, 32), 10)
        step = G.op_seconds(Op("sgd", 128, 1), c, width, gpu, a, 1)
        rows.append({"width": width, "batch": 128, "cells": 1, "step_s": factor * step})
    rows.append({"width": 16, "batch": 128, "cells": 1, "error": "out of memory"})  # ignored
    factors = G.calibration(rows, gpu, a)
    assert factors == {4: pytest.approx(2.0), 64: pytest.approx(0.5)}
    assert G.factor_at(factors, 16) == pytest.approx(1.0)  # halfway in log2 width: the geometric mean
    assert G.factor_at(factors, 2) == pytest.approx(2.0) and G.factor_at(factors, 128) == pytest.approx(0.5)
    cell = next(c for c in grid if int(c.model.width) == 4 and int(c.train.batch_size) == 128)
    plain, scaled = G.project_cell(cell, gpu, a), G.project_cell(cell, gpu, a, factors=factors)
    assert scaled.seconds["models"].high > 1.8 * plain.seconds["models"].high
    assert scaled.seconds["hessian"] == plain.seconds["hessian"]  # products are not scaled by training steps


def test_the_grid_total_and_wall_time(grid):
    a, gpu = G.Assumptions(), G.GPUS["h200"]
    some = grid[::40]
    p = G.project_grid(some, gpu, a, n_gpus=2)
    assert [c.width for c in p.cells] == [int(c.model.width) for c in some]
    total = sum(c.gpu_seconds.high for c in p.cells) / 3600
    assert p.gpu_hours().high == pytest.approx(total)
    parts = sum(p.gpu_hours(col).high for col in ("models", "curves", "hessian", "cka"))
    assert parts == pytest.approx(total)
    assert p.wall_hours().high >= total / 2
    assert p.wall_hours().high >= max(c.wall.high for c in p.cells) / 3600
    text = G.format_projection(p)
    assert "wall time on 2 GPU(s)" in text and "H200" in text
    with pytest.raises(ValueError, match="precision='fp8'"):
        G.project_grid(some, gpu, G.with_assumptions(a, precision="fp8"))
    with pytest.raises(ValueError, match="n_gpus=0"):
        G.project_grid(some, gpu, a, n_gpus=0)
    assert OmegaConf.is_config(some[0])

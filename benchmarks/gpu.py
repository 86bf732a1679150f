"""GPU measurements (run on a machine with CUDA): HVP vs gradient, Lanczos, seeds trained together, one cell.

    python benchmarks/gpu.py [--out benchmarks/results/gpu.json]

Side by side in one run on one device: (1) one Hessian-vector product vs one gradient (cached gradient graph)
for a CNN on digits and a ResNet18 (width 64) on CIFAR-shaped inputs, with the peak GPU memory; (2) the top
eigenvalue by Lanczos to 1e-3 on the ResNet18; (3) 4 seeds of the demo MLP trained together vs one by one on the
GPU. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from landscape.config import DataConfig, ModelConfig, TrainConfig
from landscape.curvature import HessianOperator, eigenvalues
from landscape.data import load_data
from landscape.models import build_model
from landscape.training import TrainSettings, train_model
from landscape.vectorized import train_together


def _cuda_time(fn: Callable[[], Any], repeats: int = 5) -> float:
    fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / repeats


def hvp_vs_grad(
    model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int, cache_graph: bool = True
) -> dict[str, Any]:
    model.eval()
    params = [p for p in model.parameters() if p.requires_grad]

    def grad() -> None:
        for i in range(0, x.shape[0], batch_size):
            torch.autograd.grad(F.cross_entropy(model(x[i : i + batch_size]), y[i : i + batch_size]), params)

    torch.cuda.reset_peak_memory_stats()
    op = HessianOperator(model, F.cross_entropy, (x, y), batch_size=batch_size, cache_graph=cache_graph)
    v = torch.randn(op.shape[0], device=x.device)
    t_grad = _cuda_time(grad)
    t_hvp = _cuda_time(lambda: op.matvec(v))
    t_eig0 = time.perf_counter()
    eig = eigenvalues(op, k=1, tol=1e-3, max_iter=100, seed=0)
    torch.cuda.synchronize()
    return {
        "n_params": op.shape[0],
        "n_samples": int(x.shape[0]),
        "grad_s": t_grad,
        "hvp_s": t_hvp,
        "hvp_over_grad": t_hvp / t_grad,
        "top_eigenvalue": float(eig.values[0]),
        "eig_products": eig.n_matvecs,
        "eig_s": time.perf_counter() - t_eig0,
        "peak_gib": torch.cuda.max_memory_allocated() / 2**30,
    }


def seeds_together(k: int = 4) -> dict[str, float]:
    data = load_data(OmegaConf.structured(DataConfig())).to("cuda")
    mcfg = OmegaConf.structured(ModelConfig(width=32))
    s = TrainSettings.from_config(OmegaConf.structured(TrainConfig(epochs=15, batch_size=16)), data.n_train)
    seeds = list(range(k))
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        for seed in seeds:
            train_model(
                build_model(mcfg, data.input_shape, 10, seed=seed).cuda(),
                data.x_train,
                data.y_train,
                s,
                seed,
                Path(d) / "serial" / str(seed),
            )
        serial = time.perf_counter() - t0
        models = {seed: build_model(mcfg, data.input_shape, 10, seed=seed).cuda() for seed in seeds}
        t0 = time.perf_counter()
        train_together(
            models,
            data.x_train,
            data.y_train,
            s,
            {seed: Path(d) / "tog" / str(seed) for seed in seeds},
            Path(d) / "group",
        )
        together = time.perf_counter() - t0
    return {"k": k, "serial_s": serial, "together_s": together, "ratio": serial / together}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/gpu.json")
    args = parser.parse_args(argv)
    assert torch.cuda.is_available(), "benchmarks/gpu.py needs a CUDA device"
    out: dict[str, Any] = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
    digits = load_data(OmegaConf.structured(DataConfig(subsample=1000))).to("cuda")
    cnn = build_model(
        OmegaConf.structured(ModelConfig(name="cnn", width=16, batch_norm=True)), digits.input_shape, 10, seed=0
    ).cuda()
    out["cnn_digits"] = hvp_vs_grad(cnn, digits.x_train, digits.y_train, batch_size=1000)
    gen = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(1000, 3, 32, 32, device="cuda", generator=gen)
    y = torch.randint(0, 10, (1000,), device="cuda", generator=gen)
    resnet = build_model(OmegaConf.structured(ModelConfig(name="resnet18", width=64)), (3, 32, 32), 10, seed=0).cuda()
    for cache in (False, True):
        try:
            out[f"resnet18_w64_cache_{cache}"] = hvp_vs_grad(resnet, x, y, batch_size=250, cache_graph=cache)
        except torch.cuda.OutOfMemoryError as exc:
            out[f"resnet18_w64_cache_{cache}"] = {"error": str(exc).splitlines()[0]}
        torch.cuda.empty_cache()
    out["seeds_together"] = seeds_together()
    print(json.dumps(out, indent=1))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()

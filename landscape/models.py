"""Width-scaled model families: ``mlp``, ``cnn`` and a CIFAR-style ``resnet18``.

Inputs are ``[n, C, L]`` sequences (1-D convolutions), ``[n, C, H, W]`` images (2-D convolutions) or
``[n, D]`` vectors (treated as a one-channel sequence by the convolutional models). Every model returns
logits ``[n, n_classes]``. Parameters are initialised by PyTorch's defaults under ``torch.manual_seed(seed)``,
so the same seed gives the same initial model.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch import Tensor, nn

MODELS = ("mlp", "cnn", "resnet18")
ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "gelu": nn.GELU,
    "sigmoid": nn.Sigmoid,
    "elu": nn.ELU,
    "softplus": nn.Softplus,
}


def _layers(spatial_dims: int) -> tuple[type, type, type]:
    if spatial_dims == 1:
        return nn.Conv1d, nn.BatchNorm1d, nn.MaxPool1d
    if spatial_dims == 2:
        return nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d
    raise ValueError(f"convolutional models take 1-D or 2-D inputs, got {spatial_dims} spatial dims")


class _AsSequence(nn.Module):
    """``[n, D]`` -> ``[n, 1, D]``: lets convolutional models read vector data."""

    def forward(self, x: Tensor) -> Tensor:
        return x.unsqueeze(1) if x.dim() == 2 else x


class MLP(nn.Module):
    """``depth`` hidden layers of ``width`` units with the given activation, then a linear read-out."""

    def __init__(self, in_features: int, n_classes: int, width: int, depth: int, activation: str = "relu"):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        fan_in = in_features
        for _ in range(depth):
            layers += [nn.Linear(fan_in, width), ACTIVATIONS[activation]()]
            fan_in = width
        layers.append(nn.Linear(fan_in, n_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class CNN(nn.Module):
    """``depth`` conv blocks (3-wide kernels) of k, 2k, 4k, ... channels, each followed by 2x max-pooling while
    the input is large enough, then global average pooling and a linear read-out. Optional BatchNorm."""

    def __init__(
        self,
        input_shape: tuple[int, ...],
        n_classes: int,
        width: int,
        depth: int = 2,
        activation: str = "relu",
        batch_norm: bool = False,
    ):
        super().__init__()
        shape = input_shape if len(input_shape) >= 2 else (1, *input_shape)
        conv, bn, pool = _layers(len(shape) - 1)
        layers: list[nn.Module] = [_AsSequence()]
        channels, size = shape[0], min(shape[1:])
        for i in range(depth):
            out = width * 2**i
            layers.append(conv(channels, out, 3, padding=1, bias=not batch_norm))
            if batch_norm:
                layers.append(bn(out))
            layers.append(ACTIVATIONS[activation]())
            if size >= 4:
                layers.append(pool(2))
                size //= 2
            channels = out
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(channels, n_classes)

    def forward(self, x: Tensor) -> Tensor:
        h = self.features(x)
        return self.head(h.flatten(2).mean(dim=2))


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with BatchNorm and an identity (or 1x1-projected) shortcut."""

    def __init__(self, conv: type, bn: type, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = conv(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = bn(c_out)
        self.conv2 = conv(c_out, c_out, 3, stride=1, padding=1, bias=False)
        self.bn2 = bn(c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(conv(c_in, c_out, 1, stride=stride, bias=False), bn(c_out))

    def forward(self, x: Tensor) -> Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    """CIFAR-style ResNet18: a 3x3 stem, four stages of two BasicBlocks with k, 2k, 4k, 8k channels
    (strides 1, 2, 2, 2), global average pooling, linear read-out. k = 64 is the usual ResNet18."""

    def __init__(self, input_shape: tuple[int, ...], n_classes: int, width: int = 64):
        super().__init__()
        shape = input_shape if len(input_shape) >= 2 else (1, *input_shape)
        conv, bn, _ = _layers(len(shape) - 1)
        k = width
        self.stem = nn.Sequential(_AsSequence(), conv(shape[0], k, 3, padding=1, bias=False), bn(k), nn.ReLU())
        blocks: list[nn.Module] = []
        c_in = k
        for i, stride in enumerate((1, 2, 2, 2)):
            c_out = k * 2**i
            blocks += [BasicBlock(conv, bn, c_in, c_out, stride), BasicBlock(conv, bn, c_out, c_out, 1)]
            c_in = c_out
        self.layers = nn.Sequential(*blocks)
        self.head = nn.Linear(c_in, n_classes)

    def forward(self, x: Tensor) -> Tensor:
        h = self.layers(self.stem(x))
        return self.head(h.flatten(2).mean(dim=2))


def build_model(cfg: Any, input_shape: tuple[int, ...], n_classes: int, seed: int | None = None) -> nn.Module:
    """Instantiate the model described by the ``model`` config node; initialise under ``seed`` if given."""
    name = cfg.name
    if name not in MODELS:
        raise ValueError(f"model.name={name!r}: expected one of {', '.join(MODELS)}")
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(int(seed))
        if name == "mlp":
            return MLP(math.prod(input_shape), n_classes, int(cfg.width), int(cfg.depth), str(cfg.activation))
        if name == "cnn":
            return CNN(
                input_shape, n_classes, int(cfg.width), int(cfg.depth), str(cfg.activation), bool(cfg.batch_norm)
            )
        return ResNet18(input_shape, n_classes, int(cfg.width))


def has_batch_norm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def n_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)

"""Centred kernel alignment (CKA) between the representations of two models.

For feature matrices ``X [n, p]`` and ``Y [n, q]`` of the same ``n`` inputs, with Gram matrices ``K``, ``L``
(``[n, n]``) of a kernel applied to the rows,

    CKA(X, Y) = HSIC(K, L) / sqrt(HSIC(K, K) * HSIC(L, L)),

a number in [0, 1] for the biased estimator (about [0, 1] for the debiased one).

* biased HSIC (Kornblith et al. 2019): ``tr(K H L H) / (n - 1)^2`` with ``H`` the centring matrix;
* unbiased HSIC (Song et al. 2012), ``debiased=True``: with ``K~``, ``L~`` the Grams with zeroed diagonals,
  ``[tr(K~ L~) + 1'K~1 1'L~1 / ((n-1)(n-2)) - 2/(n-2) 1'K~L~1] / (n (n-3))``; needs ``n >= 4``;
* minibatch CKA (Nguyen et al. 2021): unbiased HSICs of the three pairs averaged over minibatches, then the
  ratio above (``MinibatchCKA``); memory is ``O(batch^2)`` whatever the number of samples.

Kernels: ``linear`` (``K = X X'``) and ``rbf`` (``K_ij = exp(-|x_i - x_j|^2 / (2 s^2))`` with bandwidth
``s = rbf_fraction * median`` of the distances between distinct rows, per matrix).

Features of a model (``model_features``): its logits, its softmax probabilities, or the (flattened) output
of a named inner module, on a probe set from ``probe_inputs``: a seeded subset of the test or training
inputs, or ``mixup`` inputs (``lam x_i + (1 - lam) x_j`` of random training pairs, ``lam ~ Beta(16, 16)``,
the setting of the taxonomy paper; 768 samples there).

CKA is undefined when one representation has (numerically) zero variance after centring, e.g. the constant
outputs of a collapsed network (a zero self-HSIC), or, for the rbf kernel, when all rows coincide: then the
value is NaN and ``cka_value`` / ``MinibatchCKA.result`` say why (``CKAValue.reason``). Bad input is an error
(``ValueError``): mismatched ``n``, non-finite entries, fewer than 4 samples for the unbiased estimator.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Iterator, Literal

import numpy as np
import torch
from torch import Tensor, nn

from landscape.data import CellData

log = logging.getLogger(__name__)

KERNELS = ("linear", "rbf")
FEATURES = ("logits", "softmax", "layer")
PROBES = ("test", "train", "mixup")
MIXUP_ALPHA = 16.0
_TINY = 1e-24  # relative: a self-HSIC below this fraction of mean(K^2) is round-off, i.e. zero variance

Kernel = Literal["linear", "rbf"]


@dataclass(frozen=True)
class CKAValue:
    """A CKA value, NaN when it is undefined for these features, with the ``reason`` (None when defined)."""

    value: float
    reason: str | None = None


class UndefinedCKA(ValueError):
    """Raised inside this module for features on which CKA is undefined; ``cka_value`` turns it into NaN."""


# ------------------------------------------------------------------------------------------------ kernels
def _as_matrix(X: Tensor, name: str) -> Tensor:
    X = torch.as_tensor(X)
    if X.dim() == 1:
        X = X[:, None]
    X = X.reshape(X.shape[0], -1).to(torch.float64)
    if not torch.isfinite(X).all():
        raise ValueError(f"{name}: features contain NaN or inf")
    return X


def gram(X: Tensor, kernel: Kernel = "linear", rbf_fraction: float = 1.0, name: str = "X") -> Tensor:
    """Gram matrix ``[n, n]`` (float64) of the rows of ``X [n, ...]`` (flattened to ``[n, p]``)."""
    X = _as_matrix(X, name)
    if kernel == "linear":
        return X @ X.T
    if kernel == "rbf":
        sq = X.pow(2).sum(dim=1)
        d2 = (sq[:, None] + sq[None, :] - 2.0 * (X @ X.T)).clamp_min(0.0)
        n = X.shape[0]
        off = d2[~torch.eye(n, dtype=torch.bool, device=d2.device)]
        median = off.sqrt().median() if off.numel() else torch.tensor(0.0, dtype=torch.float64)
        if not float(median) > 0.0:
            raise UndefinedCKA(f"{name}: rbf kernel needs distinct rows (median distance between rows is 0)")
        if not rbf_fraction > 0.0:
            raise ValueError(f"rbf_fraction={rbf_fraction!r}: expected a positive fraction of the median distance")
        s = rbf_fraction * median
        return torch.exp(-d2 / (2.0 * s * s))
    raise ValueError(f"kernel={kernel!r}: expected one of {', '.join(KERNELS)}")


# --------------------------------------------------------------------------------------------------- HSIC
def _centre(K: Tensor) -> Tensor:
    return K - K.mean(dim=0, keepdim=True) - K.mean(dim=1, keepdim=True) + K.mean()


def hsic_biased(K: Tensor, L: Tensor) -> float:
    """Biased HSIC ``tr(K H L H) / (n - 1)^2`` of two Gram matrices ``[n, n]``."""
    n = K.shape[0]
    if n < 2:
        raise ValueError(f"n={n} samples: HSIC needs at least 2")
    return float((_centre(K) * _centre(L)).sum()) / (n - 1) ** 2


def hsic_unbiased(K: Tensor, L: Tensor) -> float:
    """Unbiased HSIC of Song et al. (2012) of two Gram matrices ``[n, n]``; needs ``n >= 4``."""
    n = K.shape[0]
    if n < 4:
        raise ValueError(f"n={n} samples: the unbiased (debiased) HSIC needs at least 4")
    Kt = K - torch.diag(torch.diagonal(K))
    Lt = L - torch.diag(torch.diagonal(L))
    k1, l1 = Kt.sum(dim=1), Lt.sum(dim=1)
    value = (Kt * Lt).sum() + k1.sum() * l1.sum() / ((n - 1) * (n - 2)) - 2.0 / (n - 2) * (k1 @ l1)
    return float(value) / (n * (n - 3))


def _check_pair(X: Tensor, Y: Tensor) -> None:
    if X.shape[0] != Y.shape[0]:
        raise ValueError(f"X has {X.shape[0]} samples, Y has {Y.shape[0]}: CKA needs the same inputs (same n)")


def _self_hsic_scale(K: Tensor) -> float:
    """``mean(K^2)``: the scale of a Gram's round-off, to tell a zero self-HSIC from a small one."""
    return float(K.pow(2).mean())


def _ratio(hxy: float, hxx: float, hyy: float, sx: float, sy: float, debiased: bool) -> float:
    kind = "unbiased" if debiased else "biased"
    for name, h, s in (("X", hxx, sx), ("Y", hyy, sy)):
        if not h > _TINY * s or s <= 0.0:
            raise UndefinedCKA(
                f"{name}: {kind} self-HSIC = {h:.3g} <= 0: the features have (numerically) zero variance after "
                "centring (constant features?) or too few samples"
            )
    return hxy / float(np.sqrt(hxx * hyy))


def cka_value(
    X: Tensor,
    Y: Tensor,
    kernel: Kernel = "linear",
    debiased: bool = False,
    rbf_fraction: float = 1.0,
) -> CKAValue:
    """CKA between feature matrices ``X [n, p]`` and ``Y [n, q]`` (rows = the same ``n`` inputs), in float64.

    ``kernel`` is ``linear`` or ``rbf`` (bandwidth ``rbf_fraction`` times the median distance between rows);
    ``debiased`` uses the unbiased HSIC (``n >= 4``). NaN with a reason where CKA is undefined (constant
    features); ``ValueError`` on bad input (see the module docstring).
    """
    X, Y = _as_matrix(X, "X"), _as_matrix(Y, "Y")
    _check_pair(X, Y)
    try:
        K = gram(X, kernel, rbf_fraction, "X")
        L = gram(Y, kernel, rbf_fraction, "Y")
        hsic = hsic_unbiased if debiased else hsic_biased
        return CKAValue(_ratio(hsic(K, L), hsic(K, K), hsic(L, L), _self_hsic_scale(K), _self_hsic_scale(L), debiased))
    except UndefinedCKA as exc:
        return CKAValue(float("nan"), str(exc))


def cka(
    X: Tensor,
    Y: Tensor,
    kernel: Kernel = "linear",
    debiased: bool = False,
    rbf_fraction: float = 1.0,
) -> float:
    """``cka_value(...).value``: the CKA of ``X [n, p]`` and ``Y [n, q]``, NaN where it is undefined."""
    return cka_value(X, Y, kernel, debiased, rbf_fraction).value


class MinibatchCKA:
    """Minibatch CKA (Nguyen et al. 2021): unbiased HSICs accumulated over minibatches.

    ``update(Xb, Yb)`` adds one minibatch (``b >= 4`` rows each, the same inputs); ``value()`` returns
    ``mean HSIC(X, Y) / sqrt(mean HSIC(X, X) * mean HSIC(Y, Y))``. Memory is ``O(b^2)``, independent of the
    total number of samples.
    """

    def __init__(self, kernel: Kernel = "linear", rbf_fraction: float = 1.0):
        if kernel not in KERNELS:
            raise ValueError(f"kernel={kernel!r}: expected one of {', '.join(KERNELS)}")
        self.kernel = kernel
        self.rbf_fraction = rbf_fraction
        self.n_batches = 0
        self.n_samples = 0
        self._sums = np.zeros(3)  # xy, xx, yy
        self._scales = np.zeros(2)
        self._undefined: str | None = None  # reason, once a batch made CKA undefined

    def update(self, Xb: Tensor, Yb: Tensor) -> None:
        Xb, Yb = _as_matrix(Xb, "X"), _as_matrix(Yb, "Y")
        _check_pair(Xb, Yb)
        if Xb.shape[0] < 4:
            raise ValueError(f"n={Xb.shape[0]} samples: the unbiased (debiased) HSIC needs at least 4")
        self.n_batches += 1
        self.n_samples += Xb.shape[0]
        try:
            K = gram(Xb, self.kernel, self.rbf_fraction, "X")
            L = gram(Yb, self.kernel, self.rbf_fraction, "Y")
        except UndefinedCKA as exc:
            self._undefined = self._undefined or f"{exc} (minibatch {self.n_batches})"
            return
        self._sums += (hsic_unbiased(K, L), hsic_unbiased(K, K), hsic_unbiased(L, L))
        self._scales += (_self_hsic_scale(K), _self_hsic_scale(L))

    def result(self) -> CKAValue:
        """The minibatch CKA, NaN with a reason where it is undefined."""
        if self.n_batches == 0:
            raise ValueError("MinibatchCKA.value(): no minibatch was added (call update first)")
        if self._undefined is not None:
            return CKAValue(float("nan"), self._undefined)
        hxy, hxx, hyy = self._sums / self.n_batches
        sx, sy = self._scales / self.n_batches
        try:
            return CKAValue(_ratio(hxy, hxx, hyy, sx, sy, debiased=True))
        except UndefinedCKA as exc:
            return CKAValue(float("nan"), str(exc))

    def value(self) -> float:
        """``result().value``."""
        return self.result().value


def minibatch_cka(X: Tensor, Y: Tensor, batch_size: int, kernel: Kernel = "linear", rbf_fraction: float = 1.0) -> float:
    """Minibatch CKA over consecutive batches of ``batch_size`` rows (a last batch of < 4 rows is dropped)."""
    X, Y = _as_matrix(X, "X"), _as_matrix(Y, "Y")
    _check_pair(X, Y)
    if batch_size < 4:
        raise ValueError(f"batch_size={batch_size}: minibatch CKA needs batches of at least 4 samples")
    acc = MinibatchCKA(kernel, rbf_fraction)
    for i in range(0, X.shape[0], batch_size):
        if X[i : i + batch_size].shape[0] >= 4:
            acc.update(X[i : i + batch_size], Y[i : i + batch_size])
    return acc.value()


# ------------------------------------------------------------------------------------------------ features
def probe_inputs(data: CellData, probe: str, n_samples: int, seed: int) -> Tensor:
    """A fixed, seeded probe set ``[m, *input_shape]`` on the data's device.

    ``test``/``train``: ``m = min(n_samples, n)`` inputs drawn without replacement (in drawn order);
    ``mixup``: ``n_samples`` inputs ``lam x_i + (1 - lam) x_j`` with ``i, j`` uniform over the training set
    and ``lam ~ Beta(16, 16)``.
    """
    if n_samples < 1:
        raise ValueError(f"n_samples={n_samples}: expected a positive number of probe samples")
    rng = np.random.default_rng(seed)
    if probe in ("test", "train"):
        x = data.x_test if probe == "test" else data.x_train
        idx = rng.permutation(x.shape[0])[: min(n_samples, x.shape[0])]
        return x[torch.from_numpy(idx).to(x.device)]
    if probe == "mixup":
        x = data.x_train
        i = torch.from_numpy(rng.integers(0, x.shape[0], size=n_samples)).to(x.device)
        j = torch.from_numpy(rng.integers(0, x.shape[0], size=n_samples)).to(x.device)
        lam = torch.from_numpy(rng.beta(MIXUP_ALPHA, MIXUP_ALPHA, size=n_samples)).to(x.device, x.dtype)
        lam = lam.reshape(-1, *([1] * (x.dim() - 1)))
        return lam * x[i] + (1.0 - lam) * x[j]
    raise ValueError(f"probe={probe!r}: expected one of {', '.join(PROBES)}")


def _batches(x: Tensor, batch_size: int) -> Iterator[Tensor]:
    for i in range(0, x.shape[0], batch_size):
        yield x[i : i + batch_size]


@torch.no_grad()
def model_features(
    model: nn.Module, x: Tensor, features: str = "softmax", layer: str | None = None, batch_size: int = 1024
) -> Tensor:
    """Features ``[n, p]`` (float64, on ``x``'s device) of ``model`` in eval mode on inputs ``x``.

    ``logits``: the model's outputs; ``softmax``: their softmax probabilities; ``layer``: the flattened
    output of the module named ``layer`` (a name of ``model.named_modules()``), read with a forward hook.
    """
    if features not in FEATURES:
        raise ValueError(f"features={features!r}: expected one of {', '.join(FEATURES)}")
    was_training = model.training
    model.eval()
    captured: list[Tensor] = []
    handle = None
    if features == "layer":
        modules = dict(model.named_modules())
        if not layer or layer not in modules:
            known = ", ".join(n for n in modules if n)
            raise ValueError(f"layer={layer!r}: not a module of the model; known: {known}")
        handle = modules[layer].register_forward_hook(lambda m, i, o: captured.append(o.detach()))
    outs = []
    try:
        for xb in _batches(x, batch_size):
            logits = model(xb)
            if features == "layer":
                out = captured.pop()
            elif features == "softmax":
                out = torch.softmax(logits.double(), dim=-1)
            else:
                out = logits
            outs.append(out.reshape(out.shape[0], -1).double())
    finally:
        if handle is not None:
            handle.remove()
        model.train(was_training)
    return torch.cat(outs)

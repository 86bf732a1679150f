"""Symmetric linear operators on flat parameter vectors: an explicit matrix and the Hessian of a model's loss.

Every curvature estimator (``eigen``, ``trace``, ``density``) only needs ``shape``, ``dtype``, ``device`` and
the products ``matvec(v)`` (``[n] -> [n]``) and ``matmat(V)`` (``[n, k] -> [n, k]``), so each estimator is
tested on explicit matrices with known spectra and on the exact Hessian of small models.
"""

from __future__ import annotations

import contextlib
import logging
import math
from typing import Any, Callable, Iterable, Iterator, Protocol, Sequence, runtime_checkable

import torch
from torch import Tensor, nn
from torch.func import grad, jvp, vmap

from landscape.params import ParamLayout, functional_loss

log = logging.getLogger(__name__)

LossFn = Callable[[Tensor, Tensor], Tensor]
"""``loss_fn(outputs, targets) -> scalar`` mean loss (the same shape as ``landscape.training.LossFn``)."""

Batch = tuple[Tensor, Tensor]


@runtime_checkable
class SymmetricOperator(Protocol):
    """A symmetric linear map ``R^n -> R^n`` known through its products."""

    @property
    def shape(self) -> tuple[int, int]: ...

    @property
    def dtype(self) -> torch.dtype: ...

    @property
    def device(self) -> torch.device: ...

    def matvec(self, v: Tensor) -> Tensor: ...

    def matmat(self, V: Tensor) -> Tensor: ...


class MatrixOperator:
    """An explicit symmetric matrix ``A`` ``[n, n]`` as an operator (for tests and small problems).

    ``n_products`` counts the matrix-vector products performed (a ``matmat`` of k columns counts k).
    """

    def __init__(self, matrix: Tensor, check_symmetric: bool = True):
        if matrix.dim() != 2 or matrix.shape[0] != matrix.shape[1]:
            raise ValueError(f"matrix: expected a square 2-D tensor, got shape {tuple(matrix.shape)}")
        if check_symmetric:
            scale = float(matrix.abs().max()) if matrix.numel() else 0.0
            asym = float((matrix - matrix.T).abs().max()) if matrix.numel() else 0.0
            if asym > 1e-6 * max(scale, 1e-30):
                raise ValueError(f"matrix: not symmetric (max |A - A^T| = {asym:.3g}, max |A| = {scale:.3g})")
        self.matrix = matrix
        self.n_products = 0

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.matrix.shape[0]), int(self.matrix.shape[1]))

    @property
    def dtype(self) -> torch.dtype:
        return self.matrix.dtype

    @property
    def device(self) -> torch.device:
        return self.matrix.device

    def matvec(self, v: Tensor) -> Tensor:
        self.n_products += 1
        return self.matrix @ v

    def matmat(self, V: Tensor) -> Tensor:
        self.n_products += int(V.shape[1])
        return self.matrix @ V


def _as_batches(data: Batch | Iterable[Batch], batch_size: int | None) -> list[Batch]:
    """Normalise ``data`` (one ``(x, y)`` batch or an iterable of them) into a list of batches of at most
    ``batch_size`` samples each (``None``: keep the given batches)."""
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, Tensor) for t in data):
        given: list[Batch] = [(data[0], data[1])]
    else:
        given = [(x, y) for x, y in data]
    if not given:
        raise ValueError("data: expected at least one (inputs, targets) batch, got none")
    out: list[Batch] = []
    for x, y in given:
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"data: batch inputs have {x.shape[0]} samples but targets {y.shape[0]}")
        if x.shape[0] == 0:
            continue
        step = x.shape[0] if batch_size is None else int(batch_size)
        if step < 1:
            raise ValueError(f"batch_size={batch_size!r}: expected a positive integer or None")
        out += [(x[i : i + step], y[i : i + step]) for i in range(0, x.shape[0], step)]
    return out


class HessianOperator:
    """The Hessian of the mean loss over ``data`` w.r.t. the trainable parameters of ``model``.

    ``H = sum_b (n_b / N) * Hess L_b(theta)``, where ``L_b = loss_fn(model(x_b), y_b)`` is the *mean* loss of
    batch ``b`` of ``n_b`` samples and ``N = sum_b n_b``: the Hessian of the mean loss over all samples,
    whatever the batching. Products are exact (``matvec``: double backward; ``matmat``: vmapped forward-over-reverse), with the model in
    eval mode (BatchNorm uses its running statistics, dropout is off). The model itself is not modified:
    parameters and buffers are passed functionally, cast to ``dtype`` (default: the parameters' dtype);
    floating inputs are cast to ``dtype`` and all data is moved to the parameters' device.

    Vectors are flat ``[P]`` (``P`` = number of trainable parameters, in ``model.parameters()`` order).
    ``matmat`` maps ``[P, k]`` to ``[P, k]`` with ``vmap`` over blocks of at most ``max_block`` columns (to cap
    memory: activations scale with ``batch samples x block``). ``batch_size`` re-chunks the data for the same
    reason. ``n_products`` counts Hessian-vector products (a ``matmat`` of k columns counts k).
    ``cache_graph`` (default) builds each batch's gradient graph once, on the first ``matvec``, and keeps it:
    every later product is a single backward pass through it (as PyHessian does), at the memory cost of the
    batches' activations; ``release()`` frees it. With ``cache_graph=False`` each product redoes the forward
    and first backward pass (double backward), holding one batch's graph at a time.

    ``batch_size="auto"``: the data in as few equal chunks (graphs) as ``memory_budget`` bytes allow (default:
    half the free memory of the GPU, or a quarter of the available RAM, at most 8 GiB on the CPU), from the
    bytes autograd saves per sample (``graph_bytes_per_sample``, measured on two small slices); fewer graphs
    mean fewer, larger kernels per product. ``batched``: whether ``matmat`` through the cached graphs uses one
    batched backward pass per block (``is_grads_batched``) or one product per column; ``"auto"`` batches on
    accelerators only (on the CPU a batched pass costs 1.3-1.5x a single product per column, measured on the
    MLP and CNN of the benchmarks).
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        data: Batch | Iterable[Batch],
        batch_size: int | str | None = None,
        dtype: torch.dtype | None = None,
        max_block: int = 16,
        cache_graph: bool = True,
        batched: bool | str = "auto",
        memory_budget: int | None = None,
    ):
        if max_block < 1:
            raise ValueError(f"max_block={max_block!r}: expected a positive integer")
        self.model = model
        self.loss_fn = loss_fn
        self.max_block = int(max_block)
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        if not named:
            raise ValueError("model: has no trainable parameters")
        self._dtype = dtype or named[0][1].dtype
        self._device = named[0][1].device
        self.names = [n for n, _ in named]
        self.shapes = [tuple(p.shape) for _, p in named]
        self.numels = [p.numel() for _, p in named]
        self.layout = ParamLayout(self.names, self.shapes)
        self.params = {n: p.detach().to(self._dtype) for n, p in named}
        frozen = {n: p.detach().to(self._dtype) for n, p in model.named_parameters() if not p.requires_grad}
        buffers = {n: (b.to(self._dtype) if b.is_floating_point() else b) for n, b in model.named_buffers()}
        self.constants = {**frozen, **buffers}
        if batch_size == "auto":
            given = [(self._cast(x), y.to(self._device)) for x, y in _as_batches(data, None)]
            total = sum(int(x.shape[0]) for x, _ in given)
            budget = memory_budget if memory_budget is not None else default_memory_budget(self._device)
            per_sample = self.graph_bytes_per_sample(given[0][0], given[0][1])
            n_chunks = max(1, math.ceil(2 * per_sample * total / max(budget, 1)))  # x2: the product's own pass
            batch_size = math.ceil(total / n_chunks)
            data = [(torch.cat([x for x, _ in given]), torch.cat([y for _, y in given]))]
            log.debug(
                "HessianOperator: %d samples in %d graph(s) (%.3g bytes per sample, budget %.3g)",
                total,
                n_chunks,
                per_sample,
                budget,
            )
        elif isinstance(batch_size, str):
            raise ValueError(f"batch_size={batch_size!r}: expected a positive integer, None or 'auto'")
        self.batches = [(self._cast(x), y.to(self._device)) for x, y in _as_batches(data, batch_size)]
        self.n_samples = sum(int(x.shape[0]) for x, _ in self.batches)
        self.n_products = 0
        self.cache_graph = bool(cache_graph)
        if batched not in ("auto", True, False):
            raise ValueError(f"batched={batched!r}: expected 'auto', True or False")
        self.batched = self._device.type != "cpu" if batched == "auto" else bool(batched)
        self._graphs: list[tuple[list[Tensor], list[Tensor]]] | None = None

    # ----------------------------------------------------------------------------------------- plumbing
    def _cast(self, x: Tensor) -> Tensor:
        return x.to(self._device, self._dtype) if x.is_floating_point() else x.to(self._device)

    @property
    def shape(self) -> tuple[int, int]:
        n = sum(self.numels)
        return (n, n)

    @property
    def dtype(self) -> torch.dtype:
        return self._dtype

    @property
    def device(self) -> torch.device:
        return self._device

    @contextlib.contextmanager
    def _eval_mode(self) -> Iterator[None]:
        was_training = self.model.training
        self.model.eval()
        try:
            yield
        finally:
            self.model.train(was_training)

    def unflatten(self, v: Tensor) -> dict[str, Tensor]:
        """Flat ``[P]`` -> ``{name: tensor of the parameter's shape}`` (views, no copy)."""
        return self.layout.unflatten(v)

    def _unflatten_cols(self, V: Tensor) -> dict[str, Tensor]:
        """``[P, k]`` -> ``{name: [k, *shape]}``."""
        return self.layout.unflatten_rows(V.T)

    def flatten(self, tensors: dict[str, Tensor] | Sequence[Tensor], leading: int = 0) -> Tensor:
        """Inverse of ``unflatten`` (``leading`` batch dims are kept in front)."""
        return self.layout.flatten(tensors, leading)

    def flat_parameters(self) -> Tensor:
        """The point ``theta`` ``[P]`` at which the Hessian is taken (in ``dtype``)."""
        return self.flatten(self.params)

    def graph_bytes_per_sample(self, x: Tensor, y: Tensor) -> float:
        """Bytes autograd saves per sample for one batch's gradient graph (forward + ``create_graph`` backward),
        from the difference between two small slices of ``(x, y)`` (so the parameters, saved once per graph,
        do not count); an upper estimate of the activation memory a product through that graph needs."""
        sizes = (min(4, x.shape[0]), min(12, x.shape[0]))
        if sizes[0] == sizes[1]:
            sizes = (0, sizes[1])
        saved: list[int] = []
        for b in sizes:
            if b == 0:
                saved.append(0)
                continue
            total = 0

            def pack(t: Tensor) -> Tensor:
                nonlocal total
                total += t.numel() * t.element_size()
                return t

            params = {n: p.detach().requires_grad_(True) for n, p in self.params.items()}
            with self._eval_mode(), torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                torch.autograd.grad(
                    self._loss(params, x[:b], y[:b]), [params[n] for n in self.names], create_graph=True
                )
            saved.append(total)
        return max((saved[1] - saved[0]) / max(sizes[1] - sizes[0], 1), 1.0)

    def _loss(self, params: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        return functional_loss(self.model, params, x, y, self.loss_fn, buffers=self.constants)

    def _hvp(self, x: Tensor, y: Tensor, tangent: dict[str, Tensor]) -> dict[str, Tensor]:
        """Forward-over-reverse product (``torch.func``): composable with ``vmap`` (used by ``matmat``)."""
        g = grad(self._loss)
        return jvp(lambda p: g(p, x, y), (self.params,), (tangent,))[1]

    def _gradient_graphs(self) -> list[tuple[list[Tensor], list[Tensor]]]:
        """Per batch: (parameter leaves, gradient with its graph), built once and kept (``cache_graph``)."""
        if self._graphs is None:
            graphs = []
            with self._eval_mode(), torch.enable_grad():
                for x, y in self.batches:
                    params = {n: p.detach().requires_grad_(True) for n, p in self.params.items()}
                    leaves = [params[n] for n in self.names]
                    grads = torch.autograd.grad(self._loss(params, x, y), leaves, create_graph=True)
                    graphs.append((leaves, list(grads)))
            self._graphs = graphs
        return self._graphs

    def release(self) -> None:
        """Free the cached gradient graphs (they hold the activations of every batch)."""
        self._graphs = None

    def _matvec_cached(self, tangent: dict[str, Tensor]) -> Tensor:
        out = torch.zeros(self.shape[0], dtype=self._dtype, device=self._device)
        for (leaves, grads), (x, _) in zip(self._gradient_graphs(), self.batches, strict=True):
            with torch.enable_grad():
                dot = sum((g * tangent[n]).sum() for g, n in zip(grads, self.names, strict=True))
                hv = torch.autograd.grad(dot, leaves, retain_graph=True)
            out += self.flatten(list(hv)) * (x.shape[0] / self.n_samples)
        return out

    def _matmat_cached(self, block: Tensor) -> Tensor:
        """``H V`` for ``V`` ``[P, k]`` through the cached graphs: one batched backward pass (``is_grads_batched``)."""
        tangents = self._unflatten_cols(block)  # {name: [k, *shape]}
        out = torch.zeros(block.shape[1], self.shape[0], dtype=self._dtype, device=self._device)
        for (leaves, grads), (x, _) in zip(self._gradient_graphs(), self.batches, strict=True):
            with torch.enable_grad():
                hv = torch.autograd.grad(
                    grads,
                    leaves,
                    grad_outputs=[tangents[n] for n in self.names],
                    retain_graph=True,
                    is_grads_batched=True,
                )
            out += self.flatten(list(hv), leading=1) * (x.shape[0] / self.n_samples)
        return out.T

    def _hvp_double_backward(self, x: Tensor, y: Tensor, tangent: dict[str, Tensor]) -> list[Tensor]:
        """Reverse-over-reverse product: grad of <grad L, v>. For a single vector it is the cheaper of the two
        in eager mode (about 2.8 gradients per product on CPU, against 3.6-10 for forward-over-reverse)."""
        params = {n: p.detach().requires_grad_(True) for n, p in self.params.items()}
        leaves = [params[n] for n in self.names]
        with torch.enable_grad():
            loss = self._loss(params, x, y)
            grads = torch.autograd.grad(loss, leaves, create_graph=True)
            dot = sum((g * tangent[n]).sum() for g, n in zip(grads, self.names, strict=True))
            return list(torch.autograd.grad(dot, leaves))

    # ----------------------------------------------------------------------------------------- products
    def loss(self) -> float:
        """The mean loss over all samples at ``theta`` (eval mode)."""
        with self._eval_mode(), torch.no_grad():
            total = sum(float(self._loss(self.params, x, y)) * x.shape[0] for x, y in self.batches)
        return total / self.n_samples

    def gradient(self) -> Tensor:
        """The gradient ``[P]`` of the mean loss at ``theta``."""
        out = torch.zeros(self.shape[0], dtype=self._dtype, device=self._device)
        with self._eval_mode():
            for x, y in self.batches:
                out += self.flatten(grad(self._loss)(self.params, x, y)) * (x.shape[0] / self.n_samples)
        return out

    def matvec(self, v: Tensor) -> Tensor:
        """``H v`` for a flat ``v`` ``[P]``."""
        if v.shape != (self.shape[0],):
            raise ValueError(f"v: expected shape ({self.shape[0]},), got {tuple(v.shape)}")
        tangent = self.unflatten(v.to(self._device, self._dtype))
        self.n_products += 1
        if self.cache_graph:
            return self._matvec_cached(tangent)
        out = torch.zeros(self.shape[0], dtype=self._dtype, device=self._device)
        with self._eval_mode():
            for x, y in self.batches:
                out += self.flatten(self._hvp_double_backward(x, y, tangent)) * (x.shape[0] / self.n_samples)
        return out

    def matmat(self, V: Tensor) -> Tensor:
        """``H V`` for ``V`` ``[P, k]``, in vmapped blocks of at most ``max_block`` columns."""
        if V.dim() != 2 or V.shape[0] != self.shape[0]:
            raise ValueError(f"V: expected shape ({self.shape[0]}, k), got {tuple(V.shape)}")
        V = V.to(self._device, self._dtype)
        out = torch.zeros_like(V)
        if self.cache_graph:
            if not self.batched:  # one product per column: the cheaper way on the CPU
                for c in range(V.shape[1]):
                    out[:, c] = self._matvec_cached(self.unflatten(V[:, c].contiguous()))
                self.n_products += int(V.shape[1])
                return out
            for start in range(0, V.shape[1], self.max_block):
                out[:, start : start + self.max_block] = self._matmat_cached(V[:, start : start + self.max_block])
            self.n_products += int(V.shape[1])
            return out
        with self._eval_mode():
            for start in range(0, V.shape[1], self.max_block):
                block = V[:, start : start + self.max_block]
                if block.shape[1] == 1:
                    for x, y in self.batches:
                        hv = self.flatten(self._hvp_double_backward(x, y, self.unflatten(block[:, 0])))
                        out[:, start] += hv * (x.shape[0] / self.n_samples)
                    continue
                tangents = self._unflatten_cols(block)
                for x, y in self.batches:
                    hv = vmap(lambda t: self._hvp(x, y, t))(tangents)  # {name: [k, *shape]}  # noqa: B023 (called within this iteration)
                    out[:, start : start + block.shape[1]] += self.flatten(hv, leading=1).T * (
                        x.shape[0] / self.n_samples
                    )
        self.n_products += int(V.shape[1])
        return out

    def dense(self) -> Tensor:
        """The full Hessian ``[P, P]`` via ``matmat(I)`` (only for small models: P^2 memory)."""
        return self.matmat(torch.eye(self.shape[0], dtype=self._dtype, device=self._device))


def default_memory_budget(device: torch.device) -> int:
    """Bytes the gradient graphs of a ``HessianOperator`` may take: half the free memory of a GPU, or a
    quarter of the available RAM (``/proc/meminfo``; 4 GiB where unknown) capped at 8 GiB on the CPU."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free) // 2
    try:
        with open("/proc/meminfo") as fh:
            avail = next(int(line.split()[1]) * 1024 for line in fh if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        avail = 16 * 2**30
    return min(avail // 4, 8 * 2**30)


def as_operator(obj: Any) -> SymmetricOperator:
    """Accept an operator or an explicit square tensor."""
    if isinstance(obj, Tensor):
        return MatrixOperator(obj)
    if not isinstance(obj, SymmetricOperator):
        raise TypeError(f"op: expected a symmetric operator (shape, dtype, device, matvec, matmat), got {type(obj)}")
    return obj

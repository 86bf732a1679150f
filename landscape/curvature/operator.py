"""Symmetric linear operators on flat parameter vectors: an explicit matrix and the curvature matrices of a
model's loss (Hessian, generalised Gauss-Newton, Fisher, empirical Fisher).

Every curvature estimator (``eigen``, ``trace``, ``density``) only needs ``shape``, ``dtype``, ``device`` and
the products ``matvec(v)`` (``[n] -> [n]``) and ``matmat(V)`` (``[n, k] -> [n, k]``), so each estimator is
tested on explicit matrices with known spectra and on the exact curvature matrices of small models, and takes
any of the operators unchanged. No operator builds its matrix (but ``dense()``, for tests).

* ``HessianOperator``: ``H = Hess_theta L``;
* ``GGNOperator``: ``G = J^T H_out J`` (``J`` the Jacobian of the network outputs, ``H_out`` the Hessian of the
  loss w.r.t. the outputs: ``diag(p) - p p^T`` per sample for the softmax cross-entropy);
* ``FisherOperator``: the Fisher information of the model's predictive distribution ``E_{y ~ p(y|x)}[g g^T]``
  (``g = grad_theta log p(y|x)``), exactly (no Monte Carlo over ``y``): ``J^T F_out J`` with the output Fisher
  of the likelihood in closed form; it equals the GGN for the softmax cross-entropy and for the squared error;
* ``EmpiricalFisherOperator``: ``(1/N) sum_i g_i g_i^T`` over the per-sample loss gradients ``g_i`` at the
  observed labels;
* ``curvature_operator(name, ...)`` builds one by name (``OPERATORS``).

All of them take the model in eval mode (BatchNorm with its running statistics, dropout off), over a fixed data
set whose batches are weighted by size (the matrix of the mean over all samples).
"""

from __future__ import annotations

import contextlib
import logging
import math
from typing import Any, Callable, Iterable, Iterator, Protocol, Sequence, runtime_checkable

import torch
from torch import Tensor, nn
from torch.func import grad, jvp, vjp, vmap

from landscape.params import ParamLayout, functional_forward, functional_loss

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


class _ModelOperator:
    """What every curvature operator of a model shares: the trainable parameters ``theta`` (detached copies in
    ``dtype``, in ``model.parameters()`` order), the frozen parameters and buffers as constants, the data batches
    (cast to ``dtype``, on the parameters' device), eval mode, flat-vector layout, the loss, its gradient and
    ``dense()``. Subclasses set the products (``matvec``, ``matmat``)."""

    name = "operator"

    def _init_model(self, model: nn.Module, loss_fn: LossFn, dtype: torch.dtype | None, max_block: int) -> None:
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
        self.n_products = 0

    def _init_batches(self, data: Batch | Iterable[Batch], batch_size: int | None) -> None:
        self.batches = [(self._cast(x), y.to(self._device)) for x, y in _as_batches(data, batch_size)]
        self.n_samples = sum(int(x.shape[0]) for x, _ in self.batches)

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
        """The point ``theta`` ``[P]`` at which the operator is taken (in ``dtype``)."""
        return self.flatten(self.params)

    def _forward(self, params: dict[str, Tensor], x: Tensor) -> Tensor:
        """The network outputs ``[B, C]`` at ``params`` (functional; eval mode is the caller's)."""
        return functional_forward(self.model, params, x, buffers=self.constants)

    def _loss(self, params: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        return functional_loss(self.model, params, x, y, self.loss_fn, buffers=self.constants)

    def _check_vector(self, v: Tensor) -> Tensor:
        if v.shape != (self.shape[0],):
            raise ValueError(f"v: expected shape ({self.shape[0]},), got {tuple(v.shape)}")
        return v.to(self._device, self._dtype)

    def _check_matrix(self, V: Tensor) -> Tensor:
        if V.dim() != 2 or V.shape[0] != self.shape[0]:
            raise ValueError(f"V: expected shape ({self.shape[0]}, k), got {tuple(V.shape)}")
        return V.to(self._device, self._dtype)

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

    def matvec(self, v: Tensor) -> Tensor:  # pragma: no cover - every subclass defines it
        raise NotImplementedError

    def matmat(self, V: Tensor) -> Tensor:
        """``A V`` for ``V`` ``[P, k]``: one ``matvec`` per column (subclasses batch it where that pays)."""
        V = self._check_matrix(V)
        out = torch.zeros_like(V)
        for c in range(V.shape[1]):
            out[:, c] = self.matvec(V[:, c].contiguous())
        return out

    def release(self) -> None:
        """Free what the operator keeps between products (cached graphs or gradients); nothing by default."""

    def dense(self) -> Tensor:
        """The full matrix ``[P, P]`` via ``matmat(I)`` (only for small models: P^2 memory)."""
        return self.matmat(torch.eye(self.shape[0], dtype=self._dtype, device=self._device))

    def graph_bytes_per_sample(self, x: Tensor, y: Tensor) -> float:  # operators with cached graphs define it
        raise NotImplementedError

    def _init_graph_batches(
        self,
        data: Batch | Iterable[Batch],
        batch_size: int | str | None,
        memory_budget: int | None,
        cache_graph: bool,
        batched: bool | str,
    ) -> None:
        """The batches of an operator that caches one graph per batch (``batch_size="auto"``: the data in as few
        equal chunks as ``memory_budget`` bytes allow, from :meth:`graph_bytes_per_sample`, twice that for the
        product's own pass), ``cache_graph`` and ``batched`` (``"auto"``: on accelerators)."""
        if batch_size == "auto":
            given = [(self._cast(x), y.to(self._device)) for x, y in _as_batches(data, None)]
            total = sum(int(x.shape[0]) for x, _ in given)
            budget = memory_budget if memory_budget is not None else default_memory_budget(self._device)
            per_sample = self.graph_bytes_per_sample(given[0][0], given[0][1])
            n_chunks = max(1, math.ceil(2 * per_sample * total / max(budget, 1)))  # x2: the product's own pass
            batch_size = math.ceil(total / n_chunks)
            data = [(torch.cat([x for x, _ in given]), torch.cat([y for _, y in given]))]
            log.debug(
                "%s: %d samples in %d graph(s) (%.3g bytes per sample, budget %.3g)",
                type(self).__name__,
                total,
                n_chunks,
                per_sample,
                budget,
            )
        elif isinstance(batch_size, str):
            raise ValueError(f"batch_size={batch_size!r}: expected a positive integer, None or 'auto'")
        self._init_batches(data, batch_size)
        self.cache_graph = bool(cache_graph)
        if batched not in ("auto", True, False):
            raise ValueError(f"batched={batched!r}: expected 'auto', True or False")
        self.batched = self._device.type != "cpu" if batched == "auto" else bool(batched)


class HessianOperator(_ModelOperator):
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

    name = "hessian"

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
        self._init_model(model, loss_fn, dtype, max_block)
        self._init_graph_batches(data, batch_size, memory_budget, cache_graph, batched)
        self._graphs: list[tuple[list[Tensor], list[Tensor]]] | None = None

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


def _saved_bytes_per_sample(build: Callable[[Tensor, Tensor], Any], x: Tensor, y: Tensor) -> float:
    """Bytes autograd saves per sample while ``build(x_slice, y_slice)`` runs, from the difference between two
    small slices of ``(x, y)`` (so what is saved once per graph, the parameters, does not count)."""
    sizes = (min(4, x.shape[0]), min(12, x.shape[0]))
    if sizes[0] == sizes[1]:
        sizes = (0, sizes[1])
    saved: list[int] = []
    for b in sizes:
        total = 0

        def pack(t: Tensor) -> Tensor:
            nonlocal total
            total += t.numel() * t.element_size()
            return t

        if b:
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                build(x[:b], y[:b])
        saved.append(total)
    return max((saved[1] - saved[0]) / max(sizes[1] - sizes[0], 1), 1.0)


LIKELIHOODS = ("categorical", "gaussian")
"""Predictive distributions of ``FisherOperator``: ``categorical`` = softmax of the outputs (the likelihood of
the cross-entropy loss), ``gaussian`` = ``N(outputs, I / 2)`` (the likelihood of the squared error summed over
outputs, ``landscape.training``'s ``mse``: ``-log p = ||y - f||^2 + const``)."""


class _OutputCurvatureOperator(_ModelOperator):
    """``A = sum_b (n_b / N) J_b^T M_b J_b``: ``J_b`` ``[n_b C, P]`` the Jacobian of the network outputs of batch
    ``b`` w.r.t. ``theta``, ``M_b`` ``[n_b C, n_b C]`` a positive semi-definite, block-diagonal (per sample)
    output curvature given by the subclass (``_output_state``, ``_output_apply``). Products never build ``J`` or
    ``A``.

    ``cache_graph=True`` (default): per batch, the outputs' graph and the graph of ``J^T u`` (``u`` a dummy
    ``[n_b, C]`` leaf) are built once and kept; a product is then two backward passes, ``J v`` =
    ``d<J^T u, v>/du`` (the double-backward trick) and ``J^T (M J v)``. Memory kept: the activations of every
    batch and their first backward graph (about that of ``HessianOperator``'s cached graphs), plus ``2 n_b C``
    numbers per product. ``cache_graph=False``: per product and batch, a forward-mode ``jvp`` and a ``vjp``
    (``torch.func``), holding one batch's activations (forward tangents included: about twice a forward pass)
    at a time. ``batched`` (``"auto"``: on accelerators): ``matmat`` in blocks of ``max_block`` columns through
    one batched pass (``is_grads_batched`` / ``vmap``), else one product per column. ``batch_size``: samples
    per batch (``None``: as given; ``"auto"``: as few equal batches as ``memory_budget`` bytes allow, see
    ``HessianOperator``).
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
        self._init_model(model, loss_fn, dtype, max_block)
        self._init_graph_batches(data, batch_size, memory_budget, cache_graph, batched)
        self._graphs: list[tuple[list[Tensor], Tensor, Tensor, list[Tensor | None], Any]] | None = None

    # ------------------------------------------------------------------------------------- output side
    def _output_state(self, f: Tensor, y: Tensor) -> Any:
        """What ``_output_apply`` needs of one batch's outputs ``f`` ``[n_b, C]`` (kept with a cached graph)."""
        raise NotImplementedError

    def _output_apply(self, state: Any, u: Tensor) -> Tensor:
        """``M u`` for ``u`` ``[n_b, C]`` (or ``[k, n_b, C]``), ``M`` the output curvature of the batch's *mean*
        loss (it carries ``1 / n_b``)."""
        raise NotImplementedError

    # ----------------------------------------------------------------------------------------- graphs
    def _build(self, x: Tensor, y: Tensor) -> tuple[list[Tensor], Tensor, Tensor, list[Tensor | None], Any]:
        params = {n: p.detach().requires_grad_(True) for n, p in self.params.items()}
        leaves = [params[n] for n in self.names]
        with self._eval_mode(), torch.enable_grad():
            f = self._forward(params, x)
            u = torch.zeros_like(f, requires_grad=True)
            gu = torch.autograd.grad(f, leaves, grad_outputs=u, create_graph=True, allow_unused=True)
        return leaves, f, u, list(gu), self._output_state(f.detach(), y)

    def graph_bytes_per_sample(self, x: Tensor, y: Tensor) -> float:
        """Bytes autograd saves per sample for one batch's cached graphs (outputs and ``J^T u``)."""
        return _saved_bytes_per_sample(self._build, x, y)

    def _cached_graphs(self) -> list[tuple[list[Tensor], Tensor, Tensor, list[Tensor | None], Any]]:
        if self._graphs is None:
            self._graphs = [self._build(x, y) for x, y in self.batches]
        return self._graphs

    def release(self) -> None:
        """Free the cached graphs (they hold the activations of every batch)."""
        self._graphs = None

    def _product_cached(self, tangent: dict[str, Tensor], batched: bool) -> Tensor:
        """``A v`` ``[P]`` (or ``A V`` as ``[k, P]`` with ``batched``: tangents ``{name: [k, *shape]}``)."""
        out: Tensor | None = None
        for (leaves, f, u, gu, state), (x, _) in zip(self._cached_graphs(), self.batches, strict=True):
            used = [(g, tangent[n]) for g, n in zip(gu, self.names, strict=True) if g is not None]
            with torch.enable_grad():
                jv = torch.autograd.grad(
                    [g for g, _ in used],
                    u,
                    grad_outputs=[t for _, t in used],
                    retain_graph=True,
                    is_grads_batched=batched,
                )[0]
            w = self._output_apply(state, jv) * (x.shape[0] / self.n_samples)
            with torch.enable_grad():
                jtw = torch.autograd.grad(
                    f, leaves, grad_outputs=w, retain_graph=True, is_grads_batched=batched, materialize_grads=True
                )
            part = self.flatten(list(jtw), leading=1 if batched else 0)
            out = part if out is None else out + part
        assert out is not None
        return out

    def _product_func(self, x: Tensor, y: Tensor, tangents: dict[str, Tensor], batched: bool) -> Tensor:
        """One batch's weighted ``J^T M J v`` through ``torch.func`` (``jvp`` then ``vjp``), no graph kept."""

        def fwd(p: dict[str, Tensor]) -> Tensor:
            return self._forward(p, x)

        with self._eval_mode():
            if batched:
                f = fwd(self.params).detach()
                jv = vmap(lambda t: jvp(fwd, (self.params,), (t,))[1])(tangents)
            else:
                f, jv = jvp(fwd, (self.params,), (tangents,))
            w = self._output_apply(self._output_state(f.detach(), y), jv) * (x.shape[0] / self.n_samples)
            _, vjp_fn = vjp(fwd, self.params)
            jtw = vmap(vjp_fn)(w)[0] if batched else vjp_fn(w)[0]
        return self.flatten(jtw, leading=1 if batched else 0)

    # ----------------------------------------------------------------------------------------- products
    def matvec(self, v: Tensor) -> Tensor:
        """``A v`` for a flat ``v`` ``[P]``."""
        tangent = self.unflatten(self._check_vector(v))
        self.n_products += 1
        if self.cache_graph:
            return self._product_cached(tangent, batched=False)
        out = torch.zeros(self.shape[0], dtype=self._dtype, device=self._device)
        for x, y in self.batches:
            out += self._product_func(x, y, tangent, batched=False)
        return out

    def matmat(self, V: Tensor) -> Tensor:
        """``A V`` for ``V`` ``[P, k]``: batched blocks of at most ``max_block`` columns, or column by column."""
        V = self._check_matrix(V)
        if not self.batched:
            out = torch.zeros_like(V)
            for c in range(V.shape[1]):
                out[:, c] = self.matvec(V[:, c].contiguous())
            return out
        out = torch.zeros_like(V)
        for start in range(0, V.shape[1], self.max_block):
            block = V[:, start : start + self.max_block]
            tangents = self._unflatten_cols(block)
            if self.cache_graph:
                part = self._product_cached(tangents, batched=True)
            else:
                part = sum(self._product_func(x, y, tangents, batched=True) for x, y in self.batches)
            out[:, start : start + block.shape[1]] = part.T
        self.n_products += int(V.shape[1])
        return out


class GGNOperator(_OutputCurvatureOperator):
    """The generalised Gauss-Newton matrix of the mean loss over ``data``:
    ``G = sum_b (n_b / N) J_b^T H_b J_b``, ``H_b = Hess_f loss_fn(f, y_b)`` at the outputs ``f = model(x_b)``
    (for the softmax cross-entropy ``(diag(p_i) - p_i p_i^T) / n_b`` per sample ``i``; for ``mse``
    ``2 I / n_b``), i.e. the Hessian without the term of the network's own second derivatives. Positive
    semi-definite when the loss is convex in the outputs (cross-entropy, squared error).

    ``H_b u`` is an exact Hessian-vector product of ``loss_fn`` in the outputs (double backward through the
    graph of ``grad_f loss_fn``, built once per batch; ``[n_b, C]`` numbers), so any ``loss_fn`` that sums
    per-sample terms works. Products, batching, caching and memory:
    see ``_OutputCurvatureOperator``; a product costs about two backward passes through the cached graphs
    (``benchmarks/bench_operators.py``). ``n_products`` counts GGN-vector products.
    """

    name = "ggn"

    def _output_state(self, f: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        f_leaf = f.detach().requires_grad_(True)
        with torch.enable_grad():
            g = torch.autograd.grad(self.loss_fn(f_leaf, y), f_leaf, create_graph=True)[0]
        return f_leaf, g

    def _output_apply(self, state: tuple[Tensor, Tensor], u: Tensor) -> Tensor:
        f_leaf, g = state
        with torch.enable_grad():
            return torch.autograd.grad(
                g,
                f_leaf,
                grad_outputs=u,
                retain_graph=True,
                is_grads_batched=u.dim() == f_leaf.dim() + 1,
                materialize_grads=True,
            )[0]


class FisherOperator(_OutputCurvatureOperator):
    """The Fisher information of the model's predictive distribution over ``data`` (the "true" Fisher):
    ``F = (1/N) sum_i E_{y ~ p(.|x_i)}[g_i(y) g_i(y)^T]``, ``g_i(y) = grad_theta log p(y | x_i, theta)``.

    Computed exactly, without sampling ``y``: by the chain rule ``g_i(y) = J_i^T s_i(y)`` with the output score
    ``s_i(y) = grad_f log p(y | f_i)``, so ``F = (1/N) sum_i J_i^T F_i J_i`` with the output Fisher
    ``F_i = E_y[s s^T]`` in closed form (``likelihood``, see ``LIKELIHOODS``):

    * ``categorical`` (``p = softmax(f)``): ``s(y) = e_y - p`` and ``F_i = sum_y p_y (e_y - p)(e_y - p)^T =
      diag(p) - p p^T``;
    * ``gaussian`` (``y ~ N(f, I / 2)``, the likelihood of ``mse``): ``s(y) = 2 (y - f)``, ``F_i = 2 I``.

    **Equality with the GGN**: for both likelihoods the output Fisher equals the Hessian of the negative
    log-likelihood in the outputs (they are exponential families in their natural parameters), so ``F = G``
    (``GGNOperator``) for the softmax cross-entropy and for ``mse``; ``tests/test_curvature_operators.py``
    checks it, and checks ``F`` against ``(1/N) sum_i sum_y p_y g_i(y) g_i(y)^T`` built from per-class
    gradients. The implementation path differs from the GGN's (closed-form output Fisher from the predicted
    distribution, no differentiation of ``loss_fn``), so ``loss_fn`` serves only ``loss()`` and
    ``gradient()``. Products, batching, caching and memory: see ``_OutputCurvatureOperator``.
    """

    name = "fisher"

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        data: Batch | Iterable[Batch],
        likelihood: str = "categorical",
        **options: Any,
    ):
        if likelihood not in LIKELIHOODS:
            raise ValueError(f"likelihood={likelihood!r}: expected one of {', '.join(LIKELIHOODS)}")
        self.likelihood = likelihood
        super().__init__(model, loss_fn, data, **options)

    def _output_state(self, f: Tensor, y: Tensor) -> Tensor:
        return torch.softmax(f, dim=-1) if self.likelihood == "categorical" else f  # [n, C]

    def _output_apply(self, state: Tensor, u: Tensor) -> Tensor:
        n = state.shape[0]
        if self.likelihood == "gaussian":
            return 2.0 * u / n
        p = state  # u: [..., n, C]
        return (p * u - p * (p * u).sum(dim=-1, keepdim=True)) / n


class EmpiricalFisherOperator(_ModelOperator):
    """The empirical Fisher ``(1/N) sum_i g_i g_i^T`` over ``data``, ``g_i`` ``[P]`` = the gradient of sample
    ``i``'s loss ``loss_fn(model(x_i), y_i)`` at its observed label (eval mode). Positive semi-definite, rank
    at most ``N``. Not the Fisher: it uses the labels, not the model's predictions.

    Per-sample gradients come from ``torch.func.vmap(grad(...))`` in chunks of ``batch_size`` samples
    (``None``: as many as ``memory_budget`` allows, ``4 * chunk * P`` numbers). ``cache`` (``"auto"``: when
    the ``N x P`` matrix ``G`` of all per-sample gradients takes at most half of ``memory_budget``) keeps
    ``G``: a product is then two matrix products ``G^T (G v) / N`` (memory ``N P`` numbers kept, ``N k`` per
    product); without it each product recomputes the chunks' gradients (memory per product: one chunk's
    gradients ``chunk x P`` and its vmapped activations). ``n_products`` counts operator-vector products.
    """

    name = "empirical_fisher"

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        data: Batch | Iterable[Batch],
        batch_size: int | None = None,
        dtype: torch.dtype | None = None,
        max_block: int = 16,
        cache: bool | str = "auto",
        memory_budget: int | None = None,
    ):
        self._init_model(model, loss_fn, dtype, max_block)
        if cache not in ("auto", True, False):
            raise ValueError(f"cache={cache!r}: expected 'auto', True or False")
        budget = memory_budget if memory_budget is not None else default_memory_budget(self._device)
        itemsize = torch.empty((), dtype=self._dtype).element_size()
        n_params = sum(self.numels)
        if batch_size is None:
            batch_size = max(1, int(budget) // max(1, 4 * n_params * itemsize))
        given = [(self._cast(x), y.to(self._device)) for x, y in _as_batches(data, None)]
        data = [(torch.cat([x for x, _ in given]), torch.cat([y for _, y in given]))]
        self._init_batches(data, int(batch_size))
        self.cache = self.n_samples * n_params * itemsize <= budget // 2 if cache == "auto" else bool(cache)
        self._grads: list[Tensor] | None = None

    def per_sample_gradients(self, x: Tensor, y: Tensor) -> Tensor:
        """``[b, P]``: the gradient of each sample's loss at ``theta`` (eval mode), as ``J_i^T r_i`` with the
        output gradients ``r_i = b * grad_f loss_fn(f, y)[i]`` (``loss_fn`` is a mean of per-sample terms) and
        one vmapped vector-Jacobian product per sample (``loss_fn`` itself is never vmapped)."""
        with self._eval_mode():
            with torch.enable_grad():
                f = self._forward(self.params, x).detach().requires_grad_(True)
                r = torch.autograd.grad(self.loss_fn(f, y), f)[0] * x.shape[0]  # [b, C]

            def one(p: dict[str, Tensor], xi: Tensor, ri: Tensor) -> Tensor:
                return (self._forward(p, xi[None])[0] * ri).sum()

            g = vmap(grad(one), in_dims=(None, 0, 0))(self.params, x, r.detach())
        return self.flatten(g, leading=1)

    def _chunks(self) -> Iterator[Tensor]:
        if self._grads is not None:
            yield from self._grads
            return
        kept = []
        for x, y in self.batches:
            G = self.per_sample_gradients(x, y)
            if self.cache:
                kept.append(G)
            yield G
        if self.cache:
            self._grads = kept

    def release(self) -> None:
        """Free the cached per-sample gradients."""
        self._grads = None

    def matvec(self, v: Tensor) -> Tensor:
        """``F_emp v`` for a flat ``v`` ``[P]``."""
        v = self._check_vector(v)
        self.n_products += 1
        out = torch.zeros_like(v)
        for G in self._chunks():
            out += G.T @ (G @ v)
        return out / self.n_samples

    def matmat(self, V: Tensor) -> Tensor:
        """``F_emp V`` for ``V`` ``[P, k]`` (two matrix products per chunk)."""
        V = self._check_matrix(V)
        self.n_products += int(V.shape[1])
        out = torch.zeros_like(V)
        for G in self._chunks():
            out += G.T @ (G @ V)
        return out / self.n_samples


OPERATORS = ("hessian", "ggn", "fisher", "empirical_fisher")
"""The curvature operators by name (``metrics.hessian.operator``, ``metrics.sharpness.operator``)."""


def curvature_operator(
    name: str,
    model: nn.Module,
    loss_fn: LossFn,
    data: Batch | Iterable[Batch],
    likelihood: str | None = None,
    batch_size: int | str | None = None,
    dtype: torch.dtype | None = None,
    max_block: int = 16,
    cache: bool = True,
    memory_budget: int | None = None,
) -> _ModelOperator:
    """The operator ``name`` (``OPERATORS``) of ``model``'s mean ``loss_fn`` over ``data``: ``HessianOperator``,
    ``GGNOperator``, ``FisherOperator`` (needs ``likelihood``) or ``EmpiricalFisherOperator``. ``batch_size``:
    samples per chunk (``"auto"``: chosen from ``memory_budget``; for the empirical Fisher ``"auto"`` means
    ``None``); ``cache``: keep graphs (or, for the empirical Fisher, the per-sample gradients when they fit)."""
    common: dict[str, Any] = {"dtype": dtype, "max_block": max_block, "memory_budget": memory_budget}
    if name == "hessian":
        return HessianOperator(model, loss_fn, data, batch_size=batch_size, cache_graph=cache, **common)
    if name == "ggn":
        return GGNOperator(model, loss_fn, data, batch_size=batch_size, cache_graph=cache, **common)
    if name == "fisher":
        if likelihood is None:
            raise ValueError(f"operator 'fisher' needs a likelihood: one of {', '.join(LIKELIHOODS)}")
        return FisherOperator(model, loss_fn, data, likelihood, batch_size=batch_size, cache_graph=cache, **common)
    if name == "empirical_fisher":
        chunk = None if batch_size in (None, "auto") else int(batch_size)
        return EmpiricalFisherOperator(model, loss_fn, data, chunk, cache="auto" if cache else False, **common)
    raise ValueError(f"operator={name!r}: expected one of {', '.join(OPERATORS)}")


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

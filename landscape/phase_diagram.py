"""Phase-diagram figures (Yang et al. 2021, Figure 1) from per-cell aggregates of :mod:`landscape.phase`.

Conventions:

* Axes are the real knob values. A knob whose values are all positive gets a log axis; the cells are drawn
  by ``pcolormesh`` with edges at the geometric midpoints of neighbouring values (outer edges mirrored), so a
  non-uniform grid is drawn as such. A knob with a value <= 0 (e.g. ``data.label_noise = 0``) gets a linear
  axis with arithmetic midpoints.
* Temperature-like knobs are oriented as in the paper: high temperature at the top. Small batches are "hot",
  so ``train.batch_size`` is drawn with an inverted axis (small batch at the top); ``train.lr`` and
  ``train.weight_decay`` are hot when large and keep the usual orientation (:data:`INVERTED_KNOBS`).
* Every metric has a fixed colour range and colour map (:data:`METRIC_STYLES`, the paper's ranges), the same
  in every facet; mode connectivity uses a diverging map centred at 0; Hessian metrics are drawn as the
  natural log of the cell mean.
* A cell with no value (never run, failed, diverged, or a metric that is NaN) is masked: drawn in a neutral
  grey (the colour map's "bad" colour) and marked with a symbol (:data:`MASK_MARKERS`); nothing is
  interpolated.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.colors as mcolors  # noqa: E402
import matplotlib.ticker  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.collections import LineCollection, QuadMesh  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

log = logging.getLogger(__name__)

#: Temperature-like knobs drawn with an inverted axis (their *small* values are hot and go on top).
INVERTED_KNOBS: frozenset[str] = frozenset({"train.batch_size"})
#: Temperature-like knobs with the usual orientation (large values are hot and are on top already).
TEMPERATURE_KNOBS: frozenset[str] = frozenset({"train.batch_size", "train.lr", "train.weight_decay"})

MISSING_COLOUR = "#d0d0d0"
#: Marker per reason a cell is masked: no rows at all, all models failed, all diverged, metric NaN.
MASK_MARKERS: dict[str, dict] = {
    "missing": dict(marker="x", color="0.35", markersize=5, linestyle="none"),
    "failed": dict(marker="x", color="black", markersize=7, linestyle="none", markeredgewidth=1.5),
    "diverged": dict(marker="+", color="black", markersize=8, linestyle="none", markeredgewidth=1.5),
    "nan": dict(marker=".", color="0.35", markersize=4, linestyle="none"),
}


@dataclass(frozen=True)
class MetricStyle:
    """How one metric is drawn: label, colour range (of the transformed value), colour map, transform."""

    label: str
    vmin: float
    vmax: float
    cmap: str = "viridis"
    log: bool = False
    centre: float | None = None  # diverging map centred here

    def transform(self, values: np.ndarray) -> np.ndarray:
        """The drawn value: natural log for ``log`` styles (non-positive -> NaN), else unchanged."""
        v = np.asarray(values, dtype=np.float64)
        if self.log:
            with np.errstate(divide="ignore", invalid="ignore"):
                v = np.where(v > 0, np.log(np.where(v > 0, v, 1.0)), np.nan)
        return v

    def norm(self) -> mcolors.Normalize:
        if self.centre is not None:
            return mcolors.TwoSlopeNorm(vcenter=self.centre, vmin=self.vmin, vmax=self.vmax)
        return mcolors.Normalize(vmin=self.vmin, vmax=self.vmax)


#: The paper's colour ranges (Figure 1 of Yang et al. 2021).
METRIC_STYLES: dict[str, MetricStyle] = {
    "test_acc": MetricStyle("test accuracy", 0.56, 0.91, "viridis"),
    "train_loss": MetricStyle("training loss", 0.0, 3.0, "magma_r"),
    "hessian.top_eigenvalue": MetricStyle("log top Hessian eigenvalue", 0.0, 6.0, "magma_r", log=True),
    "hessian.trace": MetricStyle("log Hessian trace", 3.0, 8.0, "magma_r", log=True),
    "connectivity.mc": MetricStyle("mode connectivity", -30.0, 30.0, "RdBu_r", centre=0.0),
    "cka": MetricStyle("CKA similarity", 0.3, 0.8, "viridis"),
    "l2_distance": MetricStyle("L2 distance", 0.0, 100.0, "cividis"),
}

#: The paper's panel order.
DEFAULT_METRICS: tuple[str, ...] = (
    "test_acc", "train_loss", "hessian.top_eigenvalue", "hessian.trace", "connectivity.mc", "cka", "l2_distance",
)


def style_for(metric: str, cells: pd.DataFrame | None = None) -> MetricStyle:
    """The fixed style of a known metric; an unknown metric gets viridis over its finite range in ``cells``."""
    if metric in METRIC_STYLES:
        return METRIC_STYLES[metric]
    lo, hi = 0.0, 1.0
    if cells is not None and metric in cells.columns:
        v = cells[metric].astype("float64").to_numpy()
        v = v[np.isfinite(v)]
        if v.size:
            lo, hi = float(v.min()), float(v.max())
            if lo == hi:
                lo, hi = lo - 0.5, hi + 0.5
    return MetricStyle(metric, lo, hi)


def axis_scale(values: Sequence[float]) -> str:
    """``"log"`` if every value is > 0, else ``"linear"``."""
    v = np.asarray(values, dtype=np.float64)
    return "log" if v.size and np.all(v > 0) else "linear"


def cell_edges(values: Sequence[float], scale: str | None = None) -> np.ndarray:
    """Edges ``[n + 1]`` of cells centred on the sorted unique ``values`` ``[n]``.

    Log scale: inner edges at geometric midpoints ``sqrt(v_i v_{i+1})``, outer edges mirrored in log space
    (``v_0^2 / e_1``); a single value spans a factor 2 around it. Linear scale: arithmetic midpoints, outer
    edges mirrored; a single value spans +-0.5.
    """
    v = np.unique(np.asarray(values, dtype=np.float64))
    scale = scale or axis_scale(v)
    if v.size == 0:
        raise ValueError("cell_edges: no values")
    if scale == "log":
        if np.any(v <= 0):
            raise ValueError(f"cell_edges: log scale needs values > 0, got {v.tolist()}")
        lv = np.log(v)
        return np.exp(_mid_edges(lv, half_single=np.log(2.0) / 2))
    return _mid_edges(v, half_single=0.5)


def _mid_edges(v: np.ndarray, half_single: float) -> np.ndarray:
    if v.size == 1:
        return np.array([v[0] - half_single, v[0] + half_single])
    mids = 0.5 * (v[1:] + v[:-1])
    return np.concatenate([[2 * v[0] - mids[0]], mids, [2 * v[-1] - mids[-1]]])


def pivot(cells: pd.DataFrame, x: str, y: str, column: str) -> pd.DataFrame:
    """``column`` of the cells as a table, rows = sorted ``y`` values, columns = sorted ``x`` values, NaN
    where a cell is absent. Raises if two cells share an (x, y) pair (a facet or filter is missing)."""
    dup = cells.duplicated([x, y])
    if dup.any():
        raise ValueError(f"several cells share ({x}, {y}) = {cells.loc[dup, [x, y]].iloc[0].tolist()}; "
                         "filter or facet the other knobs")
    xs = np.sort(cells[x].unique())
    ys = np.sort(cells[y].unique())
    table = cells.pivot(index=y, columns=x, values=column)
    return table.reindex(index=ys, columns=xs)


@dataclass
class Grid:
    """The (x, y) grid of a figure: sorted unique knob values, cell edges and axis scales."""

    x: str
    y: str
    xs: np.ndarray
    ys: np.ndarray
    x_edges: np.ndarray
    y_edges: np.ndarray
    x_scale: str
    y_scale: str

    @classmethod
    def from_cells(cls, cells: pd.DataFrame, x: str, y: str) -> "Grid":
        xs = np.sort(cells[x].astype("float64").unique())
        ys = np.sort(cells[y].astype("float64").unique())
        xsc, ysc = axis_scale(xs), axis_scale(ys)
        return cls(x, y, xs, ys, cell_edges(xs, xsc), cell_edges(ys, ysc), xsc, ysc)

    def array(self, cells: pd.DataFrame, column: str) -> np.ndarray:
        """``[len(ys), len(xs)]`` values of ``column`` (NaN where a cell is absent)."""
        out = np.full((self.ys.size, self.xs.size), np.nan)
        if column not in cells.columns:
            return out
        ix = np.searchsorted(self.xs, cells[self.x].astype("float64").to_numpy())
        iy = np.searchsorted(self.ys, cells[self.y].astype("float64").to_numpy())
        out[iy, ix] = pd.to_numeric(cells[column], errors="coerce").astype("float64").to_numpy()
        return out

    def labels(self, cells: pd.DataFrame, column: str) -> np.ndarray:
        """``[len(ys), len(xs)]`` object array of ``column`` (None where a cell is absent)."""
        out = np.full((self.ys.size, self.xs.size), None, dtype=object)
        if column not in cells.columns:
            return out
        ix = np.searchsorted(self.xs, cells[self.x].astype("float64").to_numpy())
        iy = np.searchsorted(self.ys, cells[self.y].astype("float64").to_numpy())
        out[iy, ix] = cells[column].to_numpy()
        return out

    def setup_axes(self, ax) -> None:
        """Scales, limits (the grid's outer edges), ticks at the knob values, orientation."""
        ax.set_xscale(self.x_scale)
        ax.set_yscale(self.y_scale)
        ax.set_xlim(self.x_edges[0], self.x_edges[-1])
        if self.y in INVERTED_KNOBS:
            ax.set_ylim(self.y_edges[-1], self.y_edges[0])
        else:
            ax.set_ylim(self.y_edges[0], self.y_edges[-1])
        for axis, vals in ((ax.xaxis, self.xs), (ax.yaxis, self.ys)):
            axis.set_major_locator(matplotlib.ticker.FixedLocator(vals))
            axis.set_major_formatter(matplotlib.ticker.FixedFormatter([_fmt(v) for v in vals]))
            axis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.tick_params(axis="x", labelrotation=90, labelsize=6)
        ax.tick_params(axis="y", labelsize=6)
        ax.set_xlabel(self.x)
        ax.set_ylabel(self.y)


def _fmt(v: float) -> str:
    return f"{v:g}"


def mask_reasons(grid: Grid, cells: pd.DataFrame, values: np.ndarray) -> np.ndarray:
    """``[len(ys), len(xs)]`` object array: None for drawn cells, else why the cell is masked
    (``missing``: no rows; ``failed`` / ``diverged``: the cell's status; ``nan``: the metric is NaN)."""
    status = grid.labels(cells, "status") if "status" in cells.columns else None
    present = grid.labels(cells, grid.x) != None  # noqa: E711  (object array comparison)
    out = np.full(values.shape, None, dtype=object)
    bad = ~np.isfinite(values)
    for iy, ix in zip(*np.nonzero(bad)):
        if not present[iy, ix]:
            out[iy, ix] = "missing"
        elif status is not None and status[iy, ix] in ("failed", "diverged"):
            out[iy, ix] = str(status[iy, ix])
        elif status is not None and status[iy, ix] not in ("done", None):
            out[iy, ix] = "failed"
        else:
            out[iy, ix] = "nan"
    return out


def draw_metric(ax, grid: Grid, cells: pd.DataFrame, metric: str, style: MetricStyle | None = None) -> QuadMesh:
    """One panel: ``pcolormesh`` of the (transformed) cell means of ``metric`` with the style's fixed norm;
    masked cells in the neutral colour, marked by :data:`MASK_MARKERS` (Line2D artists with ``gid``
    ``mask:<reason>``). Returns the QuadMesh."""
    style = style or style_for(metric, cells)
    values = style.transform(grid.array(cells, metric))
    cmap = plt.get_cmap(style.cmap).with_extremes(bad=MISSING_COLOUR)
    mesh = ax.pcolormesh(grid.x_edges, grid.y_edges, np.ma.masked_invalid(values), cmap=cmap,
                         norm=style.norm(), shading="flat")
    mesh.set_gid(f"metric:{metric}")
    reasons = mask_reasons(grid, cells, values)
    for reason, kw in MASK_MARKERS.items():
        iy, ix = np.nonzero(reasons == reason)
        if iy.size:
            (line,) = ax.plot(grid.xs[ix], grid.ys[iy], label=reason, **kw)
            line.set_gid(f"mask:{reason}")
    grid.setup_axes(ax)
    ax.set_title(style.label, fontsize=9)
    return mesh


def _facet_values(cells: pd.DataFrame, facet: str | None) -> list:
    if facet is None:
        return [None]
    if facet not in cells.columns:
        raise KeyError(f"facet {facet!r} is not a cell column; available: {list(cells.columns)}")
    return sorted(cells[facet].dropna().unique().tolist())


def _facet_cells(cells: pd.DataFrame, facet: str | None, value) -> pd.DataFrame:
    return cells if facet is None else cells[cells[facet] == value]


def metrics_figure(
    cells: pd.DataFrame, x: str, y: str, metrics: Sequence[str] = DEFAULT_METRICS, facet: str | None = None
) -> Figure:
    """The Figure-1 layout: one column per metric, one row per facet value, the same grid (all facets'
    knob values) in every panel, one colour bar per metric column (colour limits fixed per metric)."""
    metrics = list(metrics)
    if not metrics:
        raise ValueError("metrics: empty list")
    grid = Grid.from_cells(cells, x, y)
    facets = _facet_values(cells, facet)
    fig, axes = plt.subplots(len(facets), len(metrics), figsize=(2.9 * len(metrics), 2.8 * len(facets) + 0.6),
                             squeeze=False, layout="constrained")
    for r, fv in enumerate(facets):
        sub = _facet_cells(cells, facet, fv)
        for c, metric in enumerate(metrics):
            ax = axes[r, c]
            style = style_for(metric, cells)
            mesh = draw_metric(ax, grid, sub, metric, style)
            if facet is not None:
                ax.set_title(f"{style.label}\n{facet} = {fv:g}" if isinstance(fv, (int, float)) else
                             f"{style.label}\n{facet} = {fv}", fontsize=8)
            if c:
                ax.set_ylabel("")
            if r < len(facets) - 1:
                ax.set_xlabel("")
            if r == len(facets) - 1:
                fig.colorbar(mesh, ax=axes[:, c].tolist(), location="bottom", shrink=0.9, aspect=25)
    _legend_masks(fig, axes)
    return fig


def _legend_masks(fig: Figure, axes) -> None:
    seen: dict[str, object] = {}
    for ax in np.ravel(axes):
        for line in ax.lines:
            gid = line.get_gid() or ""
            if gid.startswith("mask:") and line.get_label() not in seen:
                seen[line.get_label()] = line
    if seen:
        fig.legend(list(seen.values()), [f"masked: {k}" for k in seen], loc="outside upper right", fontsize=7,
                   ncols=len(seen))


def boundary_segments(grid: Grid, labels: np.ndarray) -> list[list[tuple[float, float]]]:
    """Segments along the cell edges between horizontally or vertically adjacent cells whose labels differ
    (both labelled). ``labels``: ``[len(ys), len(xs)]`` object array."""
    segs: list[list[tuple[float, float]]] = []
    ny, nx = labels.shape
    for iy in range(ny):
        for ix in range(nx - 1):
            a, b = labels[iy, ix], labels[iy, ix + 1]
            if a is not None and b is not None and a != b:
                xe = grid.x_edges[ix + 1]
                segs.append([(xe, grid.y_edges[iy]), (xe, grid.y_edges[iy + 1])])
    for iy in range(ny - 1):
        for ix in range(nx):
            a, b = labels[iy, ix], labels[iy + 1, ix]
            if a is not None and b is not None and a != b:
                ye = grid.y_edges[iy + 1]
                segs.append([(grid.x_edges[ix], ye), (grid.x_edges[ix + 1], ye)])
    return segs


def draw_phase_map(ax, grid: Grid, cells: pd.DataFrame, phase_column: str = "phase",
                   background: str = "test_acc") -> QuadMesh:
    """The phase map on one axes: the ``background`` metric panel, each labelled cell's phase written at
    its centre, and the phase boundaries (a LineCollection with ``gid`` ``phase-boundaries``)."""
    mesh = draw_metric(ax, grid, cells, background)
    labels = grid.labels(cells, phase_column)
    labels = np.where(pd.isna(labels), None, labels)
    for iy, ix in zip(*np.nonzero(labels != None)):  # noqa: E711
        ax.text(grid.xs[ix], grid.ys[iy], str(labels[iy, ix]), ha="center", va="center", fontsize=5,
                color="white", fontweight="bold", gid="phase-label")
    lc = LineCollection(boundary_segments(grid, labels), colors="red", linewidths=1.6, gid="phase-boundaries")
    ax.add_collection(lc)
    grid.setup_axes(ax)
    ax.set_title(f"phases over {style_for(background).label}", fontsize=9)
    return mesh


def phase_map_figure(cells: pd.DataFrame, x: str, y: str, phase_column: str = "phase",
                     facet: str | None = None, background: str = "test_acc") -> Figure:
    """One phase-map panel per facet value (same grid, same colour limits), with a shared colour bar."""
    grid = Grid.from_cells(cells, x, y)
    facets = _facet_values(cells, facet)
    fig, axes = plt.subplots(1, len(facets), figsize=(5.0 * len(facets), 5.0), squeeze=False,
                             layout="constrained")
    mesh = None
    for c, fv in enumerate(facets):
        ax = axes[0, c]
        mesh = draw_phase_map(ax, grid, _facet_cells(cells, facet, fv), phase_column, background)
        if facet is not None:
            ax.set_title(f"phases, {facet} = {fv}", fontsize=9)
    fig.colorbar(mesh, ax=axes[0, :].tolist(), location="right", shrink=0.8, label=style_for(background).label)
    _legend_masks(fig, axes)
    return fig


__all__ = [
    "DEFAULT_METRICS", "Grid", "INVERTED_KNOBS", "METRIC_STYLES", "MetricStyle", "TEMPERATURE_KNOBS",
    "axis_scale", "boundary_segments", "cell_edges", "draw_metric", "draw_phase_map", "mask_reasons",
    "metrics_figure", "phase_map_figure", "pivot", "style_for",
]

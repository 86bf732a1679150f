"""Phase-diagram figures (Yang et al. 2021, Figure 1) from per-cell aggregates of :mod:`landscape.phase`.

Conventions:

* Axes are the real knob values. A knob whose values are all positive gets a log axis; the cells are drawn
  by ``pcolormesh`` with edges at the geometric midpoints of neighbouring values (outer edges mirrored), so a
  non-uniform grid is drawn as such. A knob with a value <= 0 (e.g. ``data.label_noise = 0``) gets a linear
  axis with arithmetic midpoints.
* Temperature-like knobs are oriented as in the paper: high temperature at the top. Small batches are "hot",
  so ``train.batch_size`` is drawn with an inverted axis (small batch at the top); ``train.lr`` and
  ``train.weight_decay`` are hot when large and keep the usual orientation (:data:`INVERTED_KNOBS`).
* Colour limits come from the data by default: the 2nd and 98th percentiles of the cell means of all facets
  together (:func:`colour_limits`; for log scales, of the logarithms), so every facet shares one colour bar.
  ``limits="paper"`` uses the paper's ranges (``FigureStyle.paper``). Values beyond the limits are clipped:
  the colour bar gets extend arrows and the cells a triangle (up: above, down: below the limits).
* Every panel is drawn with the :class:`~landscape.metrics.FigureStyle` its metric's family declares (label,
  unit, scale with its base, paper range, diverging centre); this module styles only derived columns
  (:data:`DERIVED_STYLES`) and names a column no style covers readably (:func:`readable_style`). Training loss,
  Hessian eigenvalue and trace use a log10 colour scale (the colour bar is ticked in the metric's own units);
  mode connectivity a diverging symmetric-log scale (linear within +-1 pp) whose limits follow the data's
  sign: an all-negative panel spends no colour on positive values, the centre keeps the map's middle colour
  and each side the data reaches is ticked (:func:`symlog_ticks`). Every colour bar is labelled with the
  metric, its unit and the scale, and marks the phase rule's thresholds when given.
* Axes are labelled by knob names a person reads (:data:`KNOB_NAMES`, the key in parentheses); titles and
  labels are wrapped to the space they have, measured after drawing (:func:`fit_text`), so nothing is clipped.
* A cell with no value (never run, failed, diverged, a metric that is missing, or <= 0 on a log scale) is
  masked: drawn in a neutral grey and marked with a symbol (:data:`MASK_MARKERS`) at its place; the axes
  always hold every cell of the grid, so a failed row never vanishes.
* The phase map draws one discrete colour per phase (:data:`PHASE_COLOURS`), the boundaries between phases,
  a legend (what each phase means, :data:`PHASE_MEANINGS`, with its cells and mean test accuracy), each cell's
  label confidence and its numbers of models and pairs, hatches cells whose confidence is below a level, and
  says in its title what was measured (dataset, model, epochs, seeds: :func:`caption_from_rows`) and the
  rule's thresholds.
"""

from __future__ import annotations

import logging
import textwrap
from dataclasses import dataclass
from typing import Any, Sequence

import matplotlib  # the backend is the caller's: a notebook's inline one, Agg in landscape-phase
import matplotlib.colors as mcolors
import matplotlib.patches as mpatches
import matplotlib.pyplot as plt
import matplotlib.ticker
import matplotlib.transforms
import numpy as np
import pandas as pd
from matplotlib.collections import LineCollection, PatchCollection, QuadMesh
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from landscape.metrics import FigureStyle
from landscape.phase import MIN_RESOLVED_PAIRS, PHASES

log = logging.getLogger(__name__)

#: Temperature-like knobs drawn with an inverted axis (their *small* values are hot and go on top).
INVERTED_KNOBS: frozenset[str] = frozenset({"train.batch_size"})
#: Temperature-like knobs with the usual orientation (large values are hot and are on top already).
TEMPERATURE_KNOBS: frozenset[str] = frozenset({"train.batch_size", "train.lr", "train.weight_decay"})

MISSING_COLOUR = "#d0d0d0"
#: Marker per reason a cell is masked.
MASK_MARKERS: dict[str, dict] = {
    "missing": dict(marker="s", markerfacecolor="none", color="0.35", markersize=6, linestyle="none"),
    "failed": dict(marker="x", color="black", markersize=7, linestyle="none", markeredgewidth=1.5),
    "diverged": dict(marker="+", color="black", markersize=8, linestyle="none", markeredgewidth=1.5),
    "nan": dict(marker="o", markerfacecolor="none", color="0.2", markersize=5, linestyle="none"),
    "nonpositive": dict(marker="_", color="0.2", markersize=8, linestyle="none", markeredgewidth=1.5),
}
MASK_LABELS: dict[str, str] = {
    "missing": "no rows (not run / pending)",
    "failed": "failed",
    "diverged": "diverged",
    "nan": "value missing",
    "nonpositive": "<= 0 on a log scale",
}
CLIP_MARKERS: dict[str, dict] = {
    "high": dict(marker="^", markerfacecolor="white", markeredgecolor="0.45", markersize=7, linestyle="none"),
    "low": dict(marker="v", markerfacecolor="white", markeredgecolor="0.45", markersize=7, linestyle="none"),
}
#: One colour per phase (poorly trained: warm; well trained: purple / greens).
PHASE_COLOURS: dict[str, str] = {
    "I": "#b2182b",
    "II": "#f4a582",
    "III": "#7b3294",
    "IV-A": "#a6dba0",
    "IV-B": "#1b7837",
}
_DARK_PHASES = frozenset({"I", "III", "IV-B"})


#: Styles of derived columns (computed by :mod:`landscape.phase`, declared by no family). A family's metric is
#: drawn with the :class:`~landscape.metrics.FigureStyle` its family declares (``landscape.metrics``): nowhere else.
DERIVED_STYLES: dict[str, FigureStyle] = {
    "train_error": FigureStyle("training error", "%", "log10", cmap="magma_r"),  # 100 (1 - train_acc)
}

#: The paper's panel order.
DEFAULT_METRICS: tuple[str, ...] = (
    "test_acc",
    "train_loss",
    "hessian.top_eigenvalue",
    "hessian.trace",
    "connectivity.mc",
    "cka",
    "l2_distance",
)
LIMIT_MODES: tuple[str, ...] = ("data", "paper")
#: Percentiles of the data that bound the colour scale (robust to a few extreme cells).
DATA_PERCENTILES: tuple[float, float] = (2.0, 98.0)

#: Names a person reads for the common knobs (axis labels read ``<name> (<key>)``; other keys as they are).
KNOB_NAMES: dict[str, str] = {
    "model.width": "model width",
    "model.depth": "model depth",
    "model.name": "model",
    "model.activation": "activation",
    "model.n_params": "parameters",
    "data.label_noise": "label noise",
    "data.subsample": "training-set fraction",
    "data.n_train": "training samples",
    "data.name": "dataset",
    "train.batch_size": "batch size",
    "train.lr": "learning rate",
    "train.weight_decay": "weight decay",
    "train.momentum": "momentum",
    "train.epochs": "epochs",
    "train.steps": "training steps",
    "train.schedule": "learning-rate schedule",
}
#: What each phase means (Yang et al. 2021): fit (training loss), barrier (mode connectivity), similarity (CKA).
PHASE_MEANINGS: dict[str, str] = {
    "I": "under-fitted, barrier",
    "II": "under-fitted, no barrier",
    "III": "fitted, barrier",
    "IV-A": "fitted, connected, dissimilar",
    "IV-B": "fitted, connected, similar",
}


def knob_label(key: str) -> str:
    """``"batch size (train.batch_size)"`` for a knob of :data:`KNOB_NAMES`, else the key itself."""
    name = KNOB_NAMES.get(key)
    return f"{name} ({key})" if name else key


def _family_styles() -> dict[str, FigureStyle]:
    """``{column: FigureStyle}`` declared by the metric families (the family contract)."""
    import landscape.metrics as metrics_mod

    return metrics_mod.figure_styles()


#: Units guessed from a column's name where no style declares one (last resort).
_UNIT_BY_SUFFIX: tuple[tuple[str, str], ...] = (
    ("seconds", "s"),
    ("_count", "count"),
    ("loss", "nats"),
    ("_acc", "fraction"),
    ("eigenvalue", "nats / param²"),
    ("trace", "nats / param²"),
)


def readable_style(column: str) -> FigureStyle:
    """A style for a column no style declares: its name without the family prefix, underscores as spaces, the
    family in parentheses (``connectivity.foo_bar`` -> ``foo bar (connectivity)``), a unit guessed from the
    name where it says one (``seconds``, ``loss``, ...), a linear scale."""
    try:
        from landscape.metrics import family_of

        family: str | None = family_of(column)
    except KeyError:
        family = None
    head, _, tail = column.rpartition(".")
    words = (tail or column).replace("_", " ").strip()
    owner = family or head.replace("_", " ")
    label = f"{words} ({owner})" if owner and owner != words else words
    unit = next((u for suffix, u in _UNIT_BY_SUFFIX if column.endswith(suffix)), "")
    return FigureStyle(label, unit)


def style_for(metric: str) -> FigureStyle:
    """The style of a column: :data:`DERIVED_STYLES` for a derived column, else the :class:`FigureStyle` its
    family declares, else :func:`readable_style` (a readable name, never the raw column)."""
    if metric in DERIVED_STYLES:
        return DERIVED_STYLES[metric]
    return _family_styles().get(metric) or readable_style(metric)


@dataclass(frozen=True)
class ColourScale:
    """A metric's colour scale over all facets: norm, limits (metric units), extend arrows, scale (one of
    ``landscape.metrics.FIGURE_SCALES``), limit mode, and the colour map to draw with (for a diverging style:
    the part of the style's map its limits reach, so that the centre keeps the map's middle colour)."""

    norm: mcolors.Normalize
    vmin: float
    vmax: float
    extend: str
    scale: str  # "linear" | "log10" | "symlog"
    mode: str  # "data" | "paper"
    cmap: mcolors.Colormap | None = None
    centre: float | None = None
    linthresh: float = 1.0

    def clipped(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Boolean masks ``(below, above)`` of finite values beyond the limits."""
        v = np.asarray(values, dtype=np.float64)
        fin = np.isfinite(v)
        with np.errstate(invalid="ignore"):
            return fin & (v < self.vmin), fin & (v > self.vmax)

    def ticks(self) -> list[float] | None:
        """Colour-bar ticks of a ``symlog`` scale (:func:`symlog_ticks`); None: the scale's own locator."""
        if self.scale != "symlog":
            return None
        return symlog_ticks(self.vmin, self.vmax, self.centre or 0.0, self.linthresh)


def _symlog(d: np.ndarray, linthresh: float) -> np.ndarray:
    """Signed distance from the centre on a symmetric-log axis (1 unit = the linear part = one decade)."""
    a = np.abs(d)
    return np.sign(d) * np.where(a <= linthresh, a / linthresh, 1.0 + np.log10(np.maximum(a, linthresh) / linthresh))


def _centred_cmap(name: str, lo: float, hi: float, centre: float, linthresh: float | None) -> mcolors.Colormap:
    """The part of the diverging map ``name`` that limits ``[lo, hi]`` reach when ``centre`` has the map's
    middle colour and the farther limit its end colour (the nearer side uses only part of its half): all
    negative values use the blue half only, so no colour-bar length is spent on values that do not occur."""
    base = plt.get_cmap(name)
    t = (
        (lambda d: _symlog(np.asarray(d, dtype=np.float64), linthresh))
        if linthresh
        else (lambda d: np.asarray(d, float))
    )
    tlo, thi = float(t(lo - centre)), float(t(hi - centre))
    half = max(abs(tlo), abs(thi)) or 1.0
    a, b = 0.5 + 0.5 * tlo / half, 0.5 + 0.5 * thi / half
    if a <= 0.0 and b >= 1.0:
        return base
    return mcolors.ListedColormap(base(np.linspace(a, b, 256)), name=f"{base.name}[{a:.2f}:{b:.2f}]")


def symlog_ticks(lo: float, hi: float, centre: float = 0.0, linthresh: float = 1.0) -> list[float]:
    """Ticks of a symmetric-log colour bar over ``[lo, hi]``: the centre, and on each side that the limits
    reach, ``centre +- m 10^k`` up to the limit (``m`` = 1, 2, 5 where that side's ticks lie within one
    decade, else 1), starting at the side's decade or ``linthresh``'s, whichever is lower, so
    that a side that holds values always gets a tick beyond the linear part when it reaches one."""
    ticks = {float(centre)}
    for sign, extent in ((-1.0, centre - lo), (1.0, hi - centre)):
        if not extent > 0:
            continue
        kmax = int(np.floor(np.log10(extent)))
        kmin = min(kmax, int(np.floor(np.log10(linthresh))))
        mant = (1.0, 2.0, 5.0) if kmax == kmin else (1.0,)
        side = [m * 10.0**k for k in range(kmin, kmax + 1) for m in mant if m * 10.0**k <= extent * (1 + 1e-9)]
        ticks.update(centre + sign * v for v in side)
    return sorted(ticks)


def colour_limits(values: np.ndarray, style: FigureStyle, mode: str = "data") -> ColourScale:
    """The colour scale of a metric from all its cell values (every facet together), fitted to the data's sign
    and range. ``data``: the :data:`DATA_PERCENTILES` of the finite values (of their log10 for ``log10``
    styles), stretched to include a diverging style's centre (limits on the side of the centre that the data
    does not reach stop at the centre: an all-negative mc spends no colour on positive values); ``paper``: the
    style's paper range, drawn with its ``paper_scale`` (data limits where the style has no paper range).
    ``extend`` says which side has values beyond the limits."""
    if mode not in LIMIT_MODES:
        raise ValueError(f"limits={mode!r}: expected one of {', '.join(LIMIT_MODES)}")
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    centre, lt = style.centre, style.linthresh
    if mode == "paper" and style.paper is not None:
        lo, hi = (float(x) for x in style.paper)
        scale = style.paper_scale_used
    else:
        mode, scale = "data", style.scale
        p_lo, p_hi = DATA_PERCENTILES
        if scale == "log10":
            pos = v[v > 0]
            llo, lhi = np.percentile(np.log10(pos), [p_lo, p_hi]) if pos.size else (0.0, 1.0)
            if lhi - llo < 1e-6:
                llo, lhi = llo - 0.5, lhi + 0.5
            lo, hi = float(10**llo), float(10**lhi)
        else:
            lo, hi = (float(x) for x in np.percentile(v, [p_lo, p_hi])) if v.size else (0.0, 1.0)
            if centre is not None:
                lo, hi = min(lo, centre), max(hi, centre)
            if hi - lo < 1e-12:
                pad = lt if scale == "symlog" else 0.5
                lo, hi = (lo - pad, hi + pad) if centre is None else (centre - pad, centre + pad)
    cmap = None
    if scale == "log10":
        norm = mcolors.LogNorm(lo, hi)
    elif scale == "symlog":
        c = centre if centre is not None else 0.0
        norm = mcolors.SymLogNorm(linthresh=lt, linscale=1.0, vmin=lo, vmax=hi, base=10)
        cmap = _centred_cmap(style.cmap, lo, hi, c, lt)
    else:
        norm = mcolors.Normalize(lo, hi)
        if centre is not None:
            cmap = _centred_cmap(style.cmap, lo, hi, centre, None)
    below = bool((v < lo).any()) if v.size else False
    above = bool((v > hi).any()) if v.size else False
    extend = "both" if below and above else "min" if below else "max" if above else "neither"
    cmap = cmap or plt.get_cmap(style.cmap)
    return ColourScale(norm, float(lo), float(hi), extend, scale, mode, cmap, centre, lt)


def colour_bar_label(style: FigureStyle, scale: ColourScale) -> str:
    """``"<label> [<unit>]"`` and the scale: ``log10 scale``, ``symlog scale, linear within ±t``, ``centred at
    c``, ``paper's limits``."""
    text = style.label + (f" [{style.unit}]" if style.unit else "")
    extra = {
        "log10": "log10 scale",
        "symlog": f"symlog scale, linear within ±{scale.linthresh:g}",
        "linear": f"centred at {scale.centre:g}" if scale.centre is not None else "",
    }[scale.scale]
    if scale.mode == "paper":
        extra = ", ".join(x for x in (extra, "paper's limits") if x)
    return text + (f"\n({extra})" if extra else "")


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
        raise ValueError(
            f"several cells share ({x}, {y}) = {cells.loc[dup, [x, y]].iloc[0].tolist()}; "
            "filter or facet the other knobs"
        )
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
        xs = np.sort(pd.to_numeric(cells[x], errors="coerce").astype("float64").dropna().unique())
        ys = np.sort(pd.to_numeric(cells[y], errors="coerce").astype("float64").dropna().unique())
        if not xs.size or not ys.size:
            raise ValueError(f"no numeric values of {x!r} or {y!r} in the cells")
        xsc, ysc = axis_scale(xs), axis_scale(ys)
        return cls(x, y, xs, ys, cell_edges(xs, xsc), cell_edges(ys, ysc), xsc, ysc)

    def _index(self, cells: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        ix = np.searchsorted(self.xs, pd.to_numeric(cells[self.x], errors="coerce").to_numpy(dtype=np.float64))
        iy = np.searchsorted(self.ys, pd.to_numeric(cells[self.y], errors="coerce").to_numpy(dtype=np.float64))
        return iy, ix

    def array(self, cells: pd.DataFrame, column: str) -> np.ndarray:
        """``[len(ys), len(xs)]`` values of ``column`` (NaN where a cell is absent)."""
        out = np.full((self.ys.size, self.xs.size), np.nan)
        if column not in cells.columns or cells.empty:
            return out
        iy, ix = self._index(cells)
        out[iy, ix] = pd.to_numeric(cells[column], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        return out

    def labels(self, cells: pd.DataFrame, column: str) -> np.ndarray:
        """``[len(ys), len(xs)]`` object array of ``column`` (None where a cell is absent or null)."""
        out = np.full((self.ys.size, self.xs.size), None, dtype=object)
        if column not in cells.columns or cells.empty:
            return out
        iy, ix = self._index(cells)
        vals = cells[column].astype(object).to_numpy()
        out[iy, ix] = [None if (v is None or (isinstance(v, float) and np.isnan(v)) or v is pd.NA) else v for v in vals]
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
        ax.tick_params(axis="x", labelrotation=45 if self.crowded else 0, labelsize=7)
        ax.tick_params(axis="y", labelsize=7)
        ax.set_xlabel(knob_label(self.x), fontsize=8)
        ax.set_ylabel(knob_label(self.y) + ("\nsmall = hot, on top" if self.y in INVERTED_KNOBS else ""), fontsize=8)

    @property
    def crowded(self) -> bool:
        """Whether the x tick labels are rotated (many or long values)."""
        return bool(self.xs.size > 8 or max(len(_fmt(v)) for v in self.xs) * self.xs.size > 40)


def _fmt(v: float) -> str:
    return f"{v:g}"


def mask_reasons(grid: Grid, cells: pd.DataFrame, values: np.ndarray, log_scale: bool = False) -> np.ndarray:
    """``[len(ys), len(xs)]`` object array: None for drawn cells, else why the cell is masked
    (``missing``: no rows or not run yet; ``failed`` / ``diverged``: the cell's status; ``nan``: the metric is
    missing in a done cell; ``nonpositive``: <= 0 on a log colour scale)."""
    status = grid.labels(cells, "status") if "status" in cells.columns else None
    present = grid.labels(cells, grid.x) != None  # noqa: E711  (object array comparison)
    out = np.full(values.shape, None, dtype=object)
    with np.errstate(invalid="ignore"):
        bad = ~np.isfinite(values) | ((values <= 0) if log_scale else False)
    for iy, ix in zip(*np.nonzero(bad), strict=True):
        st = None if status is None else status[iy, ix]
        if not present[iy, ix] or st in ("missing", "pending", "running", "interrupted"):
            out[iy, ix] = "missing"
        elif st in ("failed", "diverged"):
            out[iy, ix] = str(st)
        elif st not in ("done", None):
            out[iy, ix] = "failed"
        elif np.isfinite(values[iy, ix]):
            out[iy, ix] = "nonpositive"
        else:
            out[iy, ix] = "nan"
    return out


def _mark(ax, grid: Grid, reasons: np.ndarray, markers: dict[str, dict], prefix: str, labels: dict[str, str]) -> None:
    for reason, kw in markers.items():
        iy, ix = np.nonzero(reasons == reason)
        if iy.size:
            (line,) = ax.plot(grid.xs[ix], grid.ys[iy], label=labels.get(reason, reason), zorder=5, **kw)
            line.set_gid(f"{prefix}:{reason}")


def _clip_marks(ax, grid: Grid, values: np.ndarray, scale: ColourScale) -> None:
    below, above = scale.clipped(values)
    # at the cell's upper-right corner area (a quarter of the way in), so they do not hide mask markers
    fx = np.sqrt(grid.x_edges[1:] * grid.xs) if grid.x_scale == "log" else 0.5 * (grid.x_edges[1:] + grid.xs)
    fy_edge = grid.y_edges[:-1] if grid.y in INVERTED_KNOBS else grid.y_edges[1:]
    fy = np.sqrt(fy_edge * grid.ys) if grid.y_scale == "log" else 0.5 * (fy_edge + grid.ys)
    for name, mask in (("high", above), ("low", below)):
        iy, ix = np.nonzero(mask)
        if iy.size:
            (line,) = ax.plot(
                fx[ix],
                fy[iy],
                label=f"{'above' if name == 'high' else 'below'} colour limits",
                zorder=6,
                **CLIP_MARKERS[name],
            )
            line.set_gid(f"clipped:{name}")


def draw_metric(
    ax, grid: Grid, cells: pd.DataFrame, metric: str, style: FigureStyle | None = None, scale: ColourScale | None = None
) -> QuadMesh:
    """One panel: ``pcolormesh`` of the cell means of ``metric`` under ``scale`` (default: data limits of these
    cells); masked cells in the neutral colour, marked by :data:`MASK_MARKERS` (Line2D artists with ``gid``
    ``mask:<reason>``); clipped cells by :data:`CLIP_MARKERS` (``gid`` ``clipped:high`` / ``clipped:low``).
    Returns the QuadMesh (``gid`` ``metric:<metric>``)."""
    style = style or style_for(metric)
    values = grid.array(cells, metric)
    scale = scale or colour_limits(values, style)
    log_scale = isinstance(scale.norm, mcolors.LogNorm)
    with np.errstate(invalid="ignore"):
        drawn = np.where(np.isfinite(values) & np.logical_or(not log_scale, values > 0), values, np.nan)
    cmap = (scale.cmap or plt.get_cmap(style.cmap)).with_extremes(bad=MISSING_COLOUR)
    mesh = ax.pcolormesh(
        grid.x_edges, grid.y_edges, np.ma.masked_invalid(drawn), cmap=cmap, norm=scale.norm, shading="flat"
    )
    mesh.set_gid(f"metric:{metric}")
    _mark(ax, grid, mask_reasons(grid, cells, values, log_scale), MASK_MARKERS, "mask", MASK_LABELS)
    _clip_marks(ax, grid, values, scale)
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


def _facet_title(facet: str | None, fv: Any) -> str:
    if facet is None:
        return ""
    name = knob_label(facet)
    return f"{name} = {fv:g}" if isinstance(fv, (int, float, np.number)) else f"{name} = {fv}"


def _threshold_marks(cbar, metric: str, rule: Any) -> None:
    """Lines on a colour bar at the phase rule's thresholds of that metric."""
    if rule is None:
        return
    marks = {
        rule.fit_column: [rule.fit_threshold],
        rule.mc_column: [rule.mc_barrier, rule.mc_underfit],
        rule.cka_column: [rule.cka],
    }.get(metric, [])
    lo, hi = cbar.mappable.norm.vmin, cbar.mappable.norm.vmax
    for t in marks:
        if lo <= t <= hi:
            cbar.ax.axvline(t, color="black", linewidth=1.2, linestyle="--", gid=f"threshold:{metric}")


def metrics_figure(
    cells: pd.DataFrame,
    x: str,
    y: str,
    metrics: Sequence[str] = DEFAULT_METRICS,
    facet: str | None = None,
    limits: str = "data",
    rule: Any = None,
) -> Figure:
    """The Figure-1 layout: one column per metric, one row per facet value, the same grid (all facets'
    knob values) in every panel, one colour bar per metric column with limits shared by all facets
    (``limits``: data | paper, :func:`colour_limits`), extend arrows where values are clipped, and dashed lines
    at the thresholds of ``rule`` (a :class:`landscape.phase.PhaseRule`). Every title and label is wrapped to
    the space it has, and the margins are measured from the drawn text, so nothing is clipped."""
    metrics = list(metrics)
    if not metrics:
        raise ValueError("metrics: empty list")
    grid = Grid.from_cells(cells, x, y)
    facets = _facet_values(cells, facet)
    cbar_axes: list[Any] = []
    if facet is None:
        # one facet: panels in rows of at most 4, each with its own colour bar below it, on a fixed layout
        # (computed here in inches, then fitted to the drawn text: a constrained layout costs a second per figure)
        fig, slots, cbar_axes = _wrapped_layout(len(metrics), crowded=grid.crowded)
        axes = np.array([s[0] for s in slots])
        text_width = _LAYOUT["pw"] + 2 * _LAYOUT["right"]
    else:
        fig, grid_axes = plt.subplots(
            len(facets),
            len(metrics),
            figsize=(3.0 * len(metrics), 2.9 * len(facets) + 1.0),
            squeeze=False,
            layout="constrained",
        )
        slots = [grid_axes[:, c].tolist() for c in range(len(metrics))]
        axes = grid_axes
        text_width = 2.3  # a panel of a 3-inch column (its colour bar and y labels take the rest)
    renderer = fig.canvas.get_renderer()
    for c, metric in enumerate(metrics):
        style = style_for(metric)
        all_values = np.concatenate([grid.array(_facet_cells(cells, facet, fv), metric).ravel() for fv in facets])
        scale = colour_limits(all_values, style, limits)
        mesh = None
        for r, fv in enumerate(facets):
            ax = slots[c][r]
            mesh = draw_metric(ax, grid, _facet_cells(cells, facet, fv), metric, style, scale)
            if facet is not None:
                ax.set_title(f"{style.label}\n{_facet_title(facet, fv)}", fontsize=8)
                if c:
                    ax.set_ylabel("")
                if r < len(facets) - 1:
                    ax.set_xlabel("")
            fit_text(ax.title, text_width, renderer)
            fit_text(ax.xaxis.label, text_width, renderer)
            fit_text(ax.yaxis.label, ax.get_position().height * fig.get_figheight(), renderer, along="y")
        if cbar_axes:
            cbar = fig.colorbar(mesh, cax=cbar_axes[c], orientation="horizontal", extend=scale.extend)
        else:
            cbar = fig.colorbar(mesh, ax=slots[c], location="bottom", shrink=0.95, aspect=22, extend=scale.extend)
        cbar.set_label(colour_bar_label(style, scale), fontsize=7)
        fit_text(cbar.ax.xaxis.label, text_width, renderer)
        ticks = scale.ticks()
        if ticks is not None:
            cbar.set_ticks(ticks)
            cbar.ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
            cbar.ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        elif scale.scale == "log10":
            span = np.log10(scale.vmax / scale.vmin)
            axis = cbar.ax.xaxis
            axis.set_major_locator(matplotlib.ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0) if span < 2 else (1.0,)))
            axis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
            axis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        else:  # at most 5 labelled ticks: large values (thousands) stay apart on a 2-inch bar
            cbar.ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(nbins=5))
        cbar.ax.tick_params(labelsize=6)
        _threshold_marks(cbar, metric, rule)
    legend = _legend_marks(fig, axes, outside=not cbar_axes)
    if cbar_axes:
        _fit_wrapped_layout(fig, slots, cbar_axes, legend, renderer)
    return fig


#: The fixed layout of a wrapped metrics figure, in inches: panel width/height, left margin (y ticks and
#: label), right margin, title band, gap under a panel (x ticks and label; more when rotated), colour-bar
#: height, band under the colour bar (its ticks and two-line label), legend band at the top. The bands are
#: the starting point: :func:`_fit_wrapped_layout` widens them to the text drawn.
_LAYOUT = dict(
    pw=2.45, ph=1.95, left=0.85, right=0.2, title=0.3, gap=0.55, gap_crowded=0.72, cb=0.11, below=0.55, legend=0.35
)
#: Space (inches) kept between drawn text and the edges of its band.
_PAD = 0.06


def _wrapped_layout(n: int, crowded: bool = False, ncols_max: int = 4):
    """A figure with ``n`` panels in rows of at most ``ncols_max``, each with a horizontal colour-bar axes
    under it. Returns ``(fig, [[panel axes]], [colour-bar axes])``."""
    L = dict(_LAYOUT, gap=_LAYOUT["gap_crowded"] if crowded else _LAYOUT["gap"])
    fig = plt.figure()
    slots, caxes = [], []
    for _ in range(n):
        slots.append([fig.add_axes((0, 0, 1, 1))])
        caxes.append(fig.add_axes((0, 0, 1, 1)))
    fig._wrapped = dict(L=L, n=n, ncols=min(ncols_max, n))  # type: ignore[attr-defined]
    _place(fig, slots, caxes)
    return fig, slots, caxes


def _place(fig: Figure, slots, caxes) -> None:
    """Size ``fig`` and place its panels and colour bars by its layout bands (``fig._wrapped``)."""
    L, n, ncols = fig._wrapped["L"], fig._wrapped["n"], fig._wrapped["ncols"]  # type: ignore[attr-defined]
    nrows = -(-n // ncols)
    cw = L["left"] + L["pw"] + L["right"]
    ch = L["title"] + L["ph"] + L["gap"] + L["cb"] + L["below"]
    W, H = ncols * cw, L["legend"] + nrows * ch
    fig.set_size_inches(W, H)
    for i in range(n):
        r, c = divmod(i, ncols)
        x0 = c * cw + L["left"]
        bottom = H - L["legend"] - r * ch - L["title"] - L["ph"]
        slots[i][0].set_position((x0 / W, bottom / H, L["pw"] / W, L["ph"] / H))
        caxes[i].set_position(((x0 + 0.1) / W, (bottom - L["gap"] - L["cb"]) / H, (L["pw"] - 0.2) / W, L["cb"] / H))


def _fit_wrapped_layout(fig: Figure, slots, caxes, legend, renderer) -> None:
    """Widen the bands of a wrapped layout to the text drawn (titles, tick labels, axis and colour-bar labels,
    the legend: measured, in inches), then place the legend in the top band, in as many columns as fit."""
    L = fig._wrapped["L"]  # type: ignore[attr-defined]
    dpi = fig.dpi
    need = dict(title=0.0, left=0.0, right=0.0, gap=0.0, below=0.0)
    for ax, cax in zip((s[0] for s in slots), caxes, strict=True):
        pos = ax.get_window_extent(renderer)
        tight = ax.get_tightbbox(renderer)
        need["title"] = max(need["title"], (tight.y1 - pos.y1) / dpi)
        need["left"] = max(need["left"], (pos.x0 - tight.x0) / dpi)
        need["right"] = max(need["right"], (tight.x1 - pos.x1) / dpi)
        need["gap"] = max(need["gap"], (pos.y0 - tight.y0) / dpi)
        cpos = cax.get_window_extent(renderer)
        ctight = cax.get_tightbbox(renderer)
        need["below"] = max(need["below"], (cpos.y0 - ctight.y0) / dpi)
        need["right"] = max(need["right"], (ctight.x1 - pos.x1) / dpi)
        need["left"] = max(need["left"], (pos.x0 - ctight.x0) / dpi)
    for k, v in need.items():
        L[k] = max(L[k], v + _PAD) if k != "gap" else max(L[k], v + 2 * _PAD)
    L["legend"] = _PAD
    _place(fig, slots, caxes)
    if legend is not None:
        W = fig.get_figwidth()
        handles, names = legend.legend_handles, [t.get_text() for t in legend.get_texts()]
        legend.remove()
        for ncols in range(min(len(handles), 4), 0, -1):
            legend = fig.legend(
                handles, names, fontsize=7, ncols=ncols, frameon=False, loc="upper center", bbox_to_anchor=(0.5, 1.0)
            )
            if legend.get_window_extent(renderer).width / dpi <= W - 2 * _PAD or ncols == 1:
                break
            legend.remove()
        L["legend"] = legend.get_window_extent(renderer).height / dpi + _PAD
        _place(fig, slots, caxes)


class _KeyWrapper(textwrap.TextWrapper):
    """Wraps words longer than a line (dotted knob keys, column names) after a ``_`` or ``.`` where one fits."""

    def _handle_long_word(self, reversed_chunks, cur_line, cur_len, width):
        chunk = reversed_chunks[-1]
        space_left = max(width - cur_len, 1)
        cut = max(chunk.rfind("_", 0, space_left), chunk.rfind(".", 0, space_left))
        if cut > 0:
            cur_line.append(chunk[: cut + 1])
            reversed_chunks[-1] = chunk[cut + 1 :]
        else:
            super()._handle_long_word(reversed_chunks, cur_line, cur_len, width)


def fit_text(artist, max_length: float, renderer=None, along: str = "x", fontsize_min: float = 5.0) -> None:
    """Re-wrap a text artist's paragraphs so that it is at most ``max_length`` inches long (its width; its
    height for a rotated label with ``along="y"``), measured with the figure's renderer. A word longer than the
    space (e.g. a long knob key) is broken after a ``_`` or ``.``, else inside; as a last resort the font shrinks down to ``fontsize_min``."""
    text = artist.get_text()
    if not text:
        return
    fig = artist.figure
    renderer = renderer or fig.canvas.get_renderer()
    paragraphs = getattr(artist, "_paragraphs", None) or text.split("\n")
    artist._paragraphs = paragraphs
    limit = max_length * fig.dpi

    def length() -> float:
        bb = artist.get_window_extent(renderer)
        return bb.height if along == "y" else bb.width

    chars = max(len(p) for p in paragraphs)
    while True:
        wrapper = _KeyWrapper(max(chars, 1), break_on_hyphens=False)
        artist.set_text("\n".join(wrapper.fill(p) if p else p for p in paragraphs))
        now = length()
        if now <= limit:
            return
        if chars <= 6:
            if artist.get_fontsize() <= fontsize_min:
                return
            artist.set_fontsize(max(fontsize_min, artist.get_fontsize() - 0.5))
            continue
        longest = max(len(line) for line in artist.get_text().split("\n"))
        chars = max(6, min(longest - 1, int(longest * limit / now)))


def _legend_marks(fig: Figure, axes, extra: Sequence[tuple[Any, str]] = (), outside: bool = True):
    seen: dict[str, Any] = {}
    for ax in np.ravel(axes):
        for line in ax.lines:
            gid = line.get_gid() or ""
            if gid.startswith(("mask:", "clipped:")) and line.get_label() not in seen:
                seen[line.get_label()] = line
    handles = [h for h, _ in extra] + list(seen.values())
    names = [n for _, n in extra] + list(seen)
    if handles:
        where = dict(loc="outside upper center") if outside else dict(loc="upper center", bbox_to_anchor=(0.5, 1.0))
        return fig.legend(handles, names, fontsize=7, ncols=min(len(handles), 4), frameon=False, **where)
    return None


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


#: Marker of a labelled cell with fewer than ``MIN_RESOLVED_PAIRS`` resolved pairs (at its upper-left corner).
FEW_PAIRS_MARKER: dict = dict(
    marker="D", markerfacecolor="#ffd700", markeredgecolor="black", markersize=6, markeredgewidth=0.9, linestyle="none"
)
#: Marker of an unlabelled cell whose mc is still moving (the label depends on where it converges).
MOVING_MARKER: dict = dict(marker="$?$", color="black", markersize=9, linestyle="none")


def _few_pairs_label(min_pairs: int) -> str:
    return f"labelled from < {min_pairs} resolved pairs"


MOVING_LABEL = "no label: mc still moving (unresolved)"
#: An adaptive sweep's cell not measured and not inferred (no measured cell with a label or a value).
UNMEASURED_MARKER: dict = dict(marker="$?$", color="0.45", markersize=8, linestyle="none")
UNMEASURED_LABEL = "not measured, no label inferred (no measured cell to infer from)"
#: How an adaptive sweep's inferred cells are drawn over their phase colour (lighter, dotted).
INFERRED_STYLE: dict = dict(facecolor=(1.0, 1.0, 1.0, 0.5), edgecolor="0.35", hatch="...", linewidth=0.0)


def _label_sources(grid: "Grid", cells: pd.DataFrame) -> np.ndarray:
    """``[len(ys), len(xs)]`` object array of ``label_source`` (an adaptive sweep's map: ``measured``,
    ``inferred``, ``unmeasured``); all ``measured`` without that column."""
    if "label_source" not in cells.columns:
        return np.full((grid.ys.size, grid.xs.size), "measured", dtype=object)
    out = grid.labels(cells, "label_source")
    out[out == None] = "measured"  # noqa: E711 - elementwise on an object array
    return out


def _corner(grid: Grid, ix: np.ndarray, iy: np.ndarray, frac: float = 0.28) -> tuple[np.ndarray, np.ndarray]:
    """Points ``frac`` of the way from a cell's upper-left corner (as drawn) to its centre."""

    def towards(edge: np.ndarray, centre: np.ndarray, scale: str) -> np.ndarray:
        if scale == "log":
            return np.exp(np.log(edge) + frac * 2 * (np.log(centre) - np.log(edge)))
        return edge + frac * 2 * (centre - edge)

    top = grid.y_edges[:-1] if grid.y in INVERTED_KNOBS else grid.y_edges[1:]
    return (towards(grid.x_edges[:-1][ix], grid.xs[ix], grid.x_scale), towards(top[iy], grid.ys[iy], grid.y_scale))


def draw_phase_map(
    ax,
    grid: Grid,
    cells: pd.DataFrame,
    phase_column: str = "phase",
    confidence_column: str = "phase_confidence",
    uncertain_below: float = 0.9,
    min_pairs: int = MIN_RESOLVED_PAIRS,
) -> QuadMesh:
    """The phase map on one axes: each labelled cell in its phase's colour (:data:`PHASE_COLOURS`, a
    ``pcolormesh`` with ``gid`` ``phase-map``); its label, confidence and counts written in it (``gid``
    ``phase-label``): ``Nm`` models with a fit value (``N/Mm`` when some of its ``M`` models have none) and
    ``E/Tp`` resolved pairs (converged, or a bound beyond every mc threshold) of its pairs with an mc slot
    (``n_pairs_resolved`` / ``n_pairs_total``; ``Np`` pairs with an mc where those columns are absent); cells with
    a confidence below ``uncertain_below`` hatched (a PatchCollection, ``gid`` ``uncertain``); labelled cells with
    fewer than ``min_pairs`` resolved pairs marked
    by :data:`FEW_PAIRS_MARKER` at their upper-left corner (a Line2D, ``gid`` ``few-pairs``, ``.cells`` = their
    ``(x, y)``); the boundaries between phases (a LineCollection, ``gid`` ``phase-boundaries``); unlabelled
    cells grey and marked by why: ``mask:moving`` (:data:`MOVING_MARKER`, with the ``phase_reason``
    ``mc still moving in k of n pairs`` written in the cell) for a cell whose mc is still moving, else the
    :data:`MASK_MARKERS`. An adaptive sweep's map (a ``label_source`` column): inferred cells in their phase's
    colour under :data:`INFERRED_STYLE` (a PatchCollection, ``gid`` ``inferred``, ``.cells``), their label in italics
    with ``inferred``; cells without an inferred label marked ``mask:unmeasured``."""
    labels = grid.labels(cells, phase_column)
    codes = np.full(labels.shape, np.nan)
    for iy, ix in zip(*np.nonzero(labels != None), strict=True):  # noqa: E711 - elementwise on an object array
        codes[iy, ix] = PHASES.index(str(labels[iy, ix]))
    cmap = mcolors.ListedColormap([PHASE_COLOURS[p] for p in PHASES]).with_extremes(bad=MISSING_COLOUR)
    norm = mcolors.BoundaryNorm(np.arange(len(PHASES) + 1) - 0.5, len(PHASES))
    mesh = ax.pcolormesh(
        grid.x_edges,
        grid.y_edges,
        np.ma.masked_invalid(codes),
        cmap=cmap,
        norm=norm,
        shading="flat",
        edgecolors="white",
        linewidth=0.3,
    )
    mesh.set_gid("phase-map")
    conf = grid.array(cells, confidence_column)
    n_m = grid.array(cells, "n_models")
    n_p = grid.array(cells, "n_pairs_mc")
    n_mt = grid.array(cells, "n_models_total")
    n_pe = grid.array(cells, "n_pairs_resolved" if "n_pairs_resolved" in cells.columns else "n_pairs_exact")
    n_pt = grid.array(cells, "n_pairs_total")
    dense = grid.xs.size * grid.ys.size > 64

    def counts(iy: int, ix: int) -> str:
        m = int(n_m[iy, ix])
        mt = int(n_mt[iy, ix]) if np.isfinite(n_mt[iy, ix]) else m
        models = f"{m}m" if mt == m else f"{m}/{mt}m"
        if np.isfinite(n_pe[iy, ix]) and np.isfinite(n_pt[iy, ix]):
            return f"{models} {int(n_pe[iy, ix])}/{int(n_pt[iy, ix])}p"
        return f"{models}/{int(n_p[iy, ix]) if np.isfinite(n_p[iy, ix]) else 0}p"

    source = _label_sources(grid, cells)
    for iy, ix in zip(*np.nonzero(labels != None), strict=True):  # noqa: E711 - elementwise on an object array
        lab = str(labels[iy, ix])
        text = lab
        if source[iy, ix] == "inferred":
            ax.text(
                grid.xs[ix],
                grid.ys[iy],
                lab if dense else f"{lab}\ninferred",
                ha="center",
                va="center",
                fontsize=5 if dense else 6.5,
                color="black",
                fontstyle="italic",
                gid="inferred-label",
                linespacing=1.0,
                zorder=4,
            )
            continue
        if not dense:
            if np.isfinite(conf[iy, ix]):
                text += f"\n{conf[iy, ix]:.2f}"
            if np.isfinite(n_m[iy, ix]):
                text += "\n" + counts(iy, ix)
        ax.text(
            grid.xs[ix],
            grid.ys[iy],
            text,
            ha="center",
            va="center",
            fontsize=5 if dense else 6.5,
            color="white" if lab in _DARK_PHASES else "black",
            fontweight="bold",
            gid="phase-label",
            linespacing=1.0,
            zorder=4,
            bbox=dict(
                boxstyle="round,pad=0.15", facecolor=PHASE_COLOURS.get(lab, MISSING_COLOUR), edgecolor="none", alpha=0.9
            ),
        )  # readable over the hatching of uncertain cells
    uncertain = []
    with np.errstate(invalid="ignore"):
        unc = (labels != None) & np.isfinite(conf) & (conf < uncertain_below)  # noqa: E711 - elementwise on an object array
    for iy, ix in zip(*np.nonzero(unc), strict=True):
        x0, x1 = grid.x_edges[ix], grid.x_edges[ix + 1]
        y0, y1 = grid.y_edges[iy], grid.y_edges[iy + 1]
        uncertain.append(mpatches.Rectangle((x0, y0), x1 - x0, y1 - y0))
    pc = PatchCollection(
        uncertain, facecolor="none", edgecolor="black", hatch="////", linewidth=0.0, zorder=3, gid="uncertain"
    )
    pc.cells = [
        (grid.xs[ix], grid.ys[iy]) for iy, ix in zip(*np.nonzero(unc), strict=True)
    ]  # for readers of the figure
    ax.add_collection(pc)
    inf_y, inf_x = np.nonzero((source == "inferred") & (labels != None))  # noqa: E711 - elementwise on an object array
    pc_inf = PatchCollection(
        [
            mpatches.Rectangle(
                (grid.x_edges[ix], grid.y_edges[iy]),
                grid.x_edges[ix + 1] - grid.x_edges[ix],
                grid.y_edges[iy + 1] - grid.y_edges[iy],
            )
            for iy, ix in zip(inf_y, inf_x, strict=True)
        ],
        zorder=2.5,
        gid="inferred",
        **INFERRED_STYLE,
    )
    pc_inf.cells = [(grid.xs[ix], grid.ys[iy]) for iy, ix in zip(inf_y, inf_x, strict=True)]  # for readers
    ax.add_collection(pc_inf)
    lc = LineCollection(
        boundary_segments(grid, labels), colors="black", linewidths=1.8, gid="phase-boundaries", zorder=4
    )
    ax.add_collection(lc)
    with np.errstate(invalid="ignore"):
        few = (labels != None) & np.isfinite(n_pe) & (n_pe < min_pairs)  # noqa: E711 - elementwise on an object array
    fy, fx = np.nonzero(few)
    (few_line,) = ax.plot(
        *_corner(grid, fx, fy), zorder=6, label=_few_pairs_label(min_pairs), gid="few-pairs", **FEW_PAIRS_MARKER
    )
    few_line.cells = [(grid.xs[ix], grid.ys[iy]) for iy, ix in zip(fy, fx, strict=True)]  # for readers of the figure
    reasons = np.full(labels.shape, None, dtype=object)
    masked = mask_reasons(grid, cells, codes)
    reasons[labels == None] = masked[labels == None]  # noqa: E711 - elementwise on an object array
    why = grid.labels(cells, "phase_reason")
    unmeasured = (labels == None) & (source == "unmeasured")  # noqa: E711 - elementwise on an object array
    moving = (labels == None) & (why != None) & ~unmeasured  # noqa: E711 - elementwise on an object array
    reasons[moving] = "moving"
    reasons[unmeasured] = "unmeasured"
    for iy, ix in zip(*np.nonzero(moving), strict=True):
        text = str(why[iy, ix]).replace("mc still moving in ", "mc moving:\n").replace(" of ", "/")
        if not dense:
            ax.text(
                grid.xs[ix],
                grid.ys[iy],
                text,
                ha="center",
                va="top",
                fontsize=5.5,
                color="black",
                gid="unresolved-reason",
                linespacing=1.0,
                zorder=4,
                transform=ax.transData + matplotlib.transforms.ScaledTranslation(0, -5 / 72, ax.figure.dpi_scale_trans),
            )
    _mark(
        ax,
        grid,
        reasons,
        {"moving": MOVING_MARKER, "unmeasured": UNMEASURED_MARKER, **MASK_MARKERS},
        "mask",
        {
            **MASK_LABELS,
            "nan": "no label (a metric is missing)",
            "moving": MOVING_LABEL,
            "unmeasured": UNMEASURED_LABEL,
        },
    )
    grid.setup_axes(ax)
    return mesh


def caption_from_rows(models: pd.DataFrame, axes: Sequence[str] = ()) -> str:
    """What a phase map was measured on, from the ``models`` rows: dataset, model, epochs (or steps) and
    seeds, e.g. ``"digits, mlp (depth 2), 60 epochs, seeds 0-2 (3 per cell)"``. A key on an axis (``axes``) is
    left out; a key that varies otherwise is given as its range."""

    def values(key: str) -> list:
        if key not in models.columns or key in axes:
            return []
        return sorted(models[key].dropna().unique().tolist(), key=str)

    def span(vals: list) -> str:
        if len(vals) <= 3:
            return ", ".join(_fmt(v) if isinstance(v, (int, float, np.number)) else str(v) for v in vals)
        return (
            f"{_fmt(vals[0])}-{_fmt(vals[-1])}"
            if all(isinstance(v, (int, float, np.number)) for v in vals)
            else f"{vals[0]} ... {vals[-1]}"
        )

    parts = []
    data = values("data.name")
    if data:
        parts.append(f"dataset {span(data)}")
    model = values("model.name")
    if model:
        extra = [
            f"{KNOB_NAMES.get(k, k).replace('model ', '')} {span(values(k))}"
            for k in ("model.depth", "model.width")
            if values(k)
        ]
        parts.append(f"model {span(model)}" + (f" ({', '.join(extra)})" if extra else ""))
    steps, epochs = values("train.steps"), values("train.epochs")
    if steps:
        parts.append(f"{span(steps)} steps")
    elif epochs:
        parts.append(f"{span(epochs)} epochs")
    if "seed" in models.columns and not models.empty:
        seeds = sorted(int(v) for v in models["seed"].dropna().unique())
        per = models.groupby("cell_id")["seed"].nunique() if "cell_id" in models.columns else None
        text = f"seeds {span(seeds) if len(seeds) <= 3 else f'{seeds[0]}-{seeds[-1]}'}" if seeds else ""
        if per is not None and len(per):
            lo, hi = int(per.min()), int(per.max())
            text += f" ({lo} per cell)" if lo == hi else f" ({lo}-{hi} per cell)"
        parts.append(text)
    return ", ".join(p for p in parts if p)


def phase_map_figure(
    cells: pd.DataFrame,
    x: str,
    y: str,
    phase_column: str = "phase",
    facet: str | None = None,
    uncertain_below: float = 0.9,
    rule: Any = None,
    target: str = "test_acc",
    caption: str | None = None,
) -> Figure:
    """One phase-map panel per facet value (same grid); a legend that says what each phase means
    (:data:`PHASE_MEANINGS`) with its number of cells and mean ``target``, and names hatched (uncertain) and
    masked cells; a title naming what the map was measured on (``caption``, e.g. from
    :func:`caption_from_rows`) and the rule's thresholds; a note under the panels on what a cell's text says.
    The figure is as wide as its panels and legend, and every text is wrapped to the figure's width."""
    grid = Grid.from_cells(cells, x, y)
    facets = _facet_values(cells, facet)
    nx, ny = grid.xs.size, grid.ys.size
    w = max(3.6, 0.75 * nx + 1.6)
    h = max(3.8, 0.6 * ny + 2.2)
    fig, axes = plt.subplots(1, len(facets), figsize=(w * len(facets) + 2.5, h), squeeze=False, layout="constrained")
    renderer = fig.canvas.get_renderer()
    for c, fv in enumerate(facets):
        ax = axes[0, c]
        draw_phase_map(ax, grid, _facet_cells(cells, facet, fv), phase_column, uncertain_below=uncertain_below)
        ax.set_title(_facet_title(facet, fv), fontsize=9)
        fit_text(ax.title, w - 0.3, renderer)
        fit_text(ax.xaxis.label, w - 0.5, renderer)
        fit_text(ax.yaxis.label, h - 1.6, renderer, along="y")
    labelled = cells[phase_column].astype(object) if phase_column in cells else pd.Series([], dtype=object)
    inferred = (
        (cells["label_source"] == "inferred").to_numpy()
        if "label_source" in cells.columns
        else np.zeros(len(cells), dtype=bool)
    )
    handles = []
    for p in PHASES:
        sel = labelled == p
        n = int(sel.sum())
        acc = pd.to_numeric(cells.loc[sel, target], errors="coerce").mean() if n and target in cells.columns else np.nan
        n_inf = int((sel.to_numpy() & inferred).sum())
        count = (f"{n - n_inf} measured + {n_inf} inferred cells" if n_inf else f"{n} cell{'s' if n != 1 else ''}") + (
            f", test acc. {acc:.3f}" if np.isfinite(acc) else ""
        )
        name = f"{p}: {PHASE_MEANINGS[p]} ({count})"
        handles.append(
            (
                mpatches.Patch(
                    facecolor=PHASE_COLOURS[p], edgecolor="black", linewidth=0.5, alpha=1.0 if n else 0.35, label=name
                ),
                name,
            )
        )
    handles.append(
        (
            mpatches.Patch(
                facecolor="white", edgecolor="black", hatch="////", label=f"confidence < {uncertain_below:g}"
            ),
            f"confidence < {uncertain_below:g}",
        )
    )
    if inferred.any():
        name = (
            f"inferred from the measured cells: {int(inferred.sum())} of {len(cells)} grid points "
            f"({100 * inferred.mean():.0f} %)"
        )
        handles.append((mpatches.Patch(**{**INFERRED_STYLE, "edgecolor": "0.35", "linewidth": 0.5}), name))
    handles.append((Line2D([], [], color="black", linewidth=1.8), "phase boundary"))
    seen: dict[str, Any] = {}
    for ax in axes.ravel():
        for line in ax.lines:
            if (
                ((line.get_gid() or "").startswith("mask:") or line.get_gid() == "few-pairs")
                and len(line.get_xdata())
                and line.get_label() not in seen
            ):
                seen[line.get_label()] = line
    handles += [(h_, n_) for n_, h_ in seen.items()]
    legend = fig.legend(
        [h_ for h_, _ in handles],
        [n_ for _, n_ in handles],
        loc="outside right center",
        fontsize=7,
        frameon=False,
        title="phase: meaning (cells, mean test accuracy)",
        title_fontsize=7,
    )
    # the figure: its panels plus the legend as drawn
    legend_w = legend.get_window_extent(renderer).width / fig.dpi
    width = w * len(facets) + legend_w + 0.3
    fig.set_size_inches(width, h)
    head = "phase map" + (f": {caption}" if caption else "")
    lines = [head] + ([rule.describe()] if rule is not None else [])
    fig.suptitle("\n".join(lines), fontsize=8)
    fit_text(fig._suptitle, width - 0.2, renderer)
    fig.supxlabel(
        "cell text: phase, confidence = P(same label on a rerun with new seeds), models with a value "
        "(Nm), resolved/all pairs (E/Tp)",
        fontsize=6.5,
    )
    fit_text(fig._supxlabel, width - 0.2, renderer)
    return fig


def save(fig: Figure, stem, formats: Sequence[str] = ("png", "pdf"), dpi: int = 150) -> dict[str, Any]:
    """Write ``fig`` as ``<stem>.<fmt>`` for each format and close it; the layout is computed once (for the
    first format) and then kept. Returns ``{"<name>.<fmt>": path}``."""
    from pathlib import Path

    stem = Path(stem)
    out: dict[str, Any] = {}
    try:
        for i, fmt in enumerate(formats):
            path = stem.with_name(f"{stem.name}.{fmt}")
            fig.savefig(path, dpi=dpi)
            if i == 0:
                fig.set_layout_engine("none")  # positions are fixed now: later formats skip the layout
            out[path.name] = path
    finally:
        plt.close(fig)
    return out


__all__ = [
    "CLIP_MARKERS",
    "ColourScale",
    "DEFAULT_METRICS",
    "Grid",
    "INVERTED_KNOBS",
    "LIMIT_MODES",
    "MASK_MARKERS",
    "DERIVED_STYLES",
    "KNOB_NAMES",
    "PHASE_MEANINGS",
    "PHASE_COLOURS",
    "caption_from_rows",
    "fit_text",
    "knob_label",
    "readable_style",
    "symlog_ticks",
    "TEMPERATURE_KNOBS",
    "axis_scale",
    "boundary_segments",
    "cell_edges",
    "colour_bar_label",
    "colour_limits",
    "draw_metric",
    "draw_phase_map",
    "mask_reasons",
    "metrics_figure",
    "phase_map_figure",
    "pivot",
    "save",
    "style_for",
]


# ------------------------------------------------------------------------------------------------ mc against budget
#: Marker of a point of :func:`mc_budget_figure` by the state of its pairs (see :func:`mc_budget_points`).
BUDGET_MARKERS: dict[str, dict[str, Any]] = {
    "converged": dict(marker="o", fillstyle="full", label="every pair converged"),
    "moving": dict(marker="o", fillstyle="none", label="still moving (an earlier stage)"),
    "lower": dict(marker="^", fillstyle="full", label="last value still rising (lower bound)"),
    "upper": dict(marker="v", fillstyle="full", label="last value still falling (upper bound)"),
}


def _value(v: Any) -> Any:
    """A scalar cell value, None for a missing one (None, NaN, pd.NA, NaT)."""
    if v is None or isinstance(v, (list, tuple, np.ndarray)):
        return v
    try:
        return None if pd.isna(v) else v
    except (TypeError, ValueError):
        return v


def _as_list(v: Any) -> list[float] | None:
    if v is None or isinstance(v, (str, bytes)):
        return None
    try:
        out = [float(t) for t in v]
    except TypeError:
        return None
    return out or None


def mc_budget_points(pairs: pd.DataFrame, x: str, panel_by: Sequence[str]) -> pd.DataFrame:
    """Cell mean mode connectivity at each curve budget, from every ``done`` pair row (all settings: rows of
    requests with other ``connectivity.budget`` add points).

    A row gives one point per stage of its curve: ``connectivity.budgets`` (multiples of the endpoints' SGD
    steps) with ``connectivity.mc_by_budget`` (pp of training error); a row without them, one point at
    ``connectivity.final_budget`` (else its ``connectivity.budget``) with ``connectivity.mc``. Each point's state:
    ``converged`` (the row's last stage, ``connectivity.converged``), ``lower``/``upper`` (the last stage of a
    curve still moving, ``connectivity.mc_bound``), ``moving`` (an earlier stage, or a last one without a
    bound). A pair's last value is carried to every larger budget another pair of its cell reached (converged: more
    training no longer moves it; a bound: at least/most that value, drawn as a bound), so a cell's mean at a
    budget is over all its pairs, not only the slow ones (without it a cell's line jumps where fast pairs stop).

    ``pairs`` must hold the knob columns ``x`` and ``panel_by``. Returns one row per (``panel_by``, ``x``,
    ``budget``): ``mc`` (mean), ``n`` (points), ``state`` (``converged`` when all are, else ``lower``/``upper``
    by the majority of bounds where any is, else ``moving``)."""
    cols = list(panel_by) + [x]
    if pairs.empty or "connectivity.mc" not in pairs.columns and "connectivity.mc_by_budget" not in pairs.columns:
        return pd.DataFrame(columns=cols + ["budget", "mc", "n", "state"])
    p = pairs
    if "status" in p.columns:
        p = p[p["status"].astype(object).eq("done").to_numpy(dtype=bool)]
    pts: list[dict[str, Any]] = []
    for idx, r in p.iterrows():
        key = {c: r[c] for c in cols}
        cell = r.get("cell_id", tuple(key.values()))
        conv = bool(_value(r.get("connectivity.converged")) or False)
        bound = _value(r.get("connectivity.mc_bound"))
        last_state = "converged" if conv else (bound if bound in ("lower", "upper") else "moving")
        budgets, mcs = _as_list(r.get("connectivity.budgets")), _as_list(r.get("connectivity.mc_by_budget"))
        if budgets is None or mcs is None or len(budgets) != len(mcs):
            b = _value(r.get("connectivity.final_budget"))
            b = b if b is not None and np.isfinite(float(b)) else _value(r.get("connectivity.budget"))
            m = _value(r.get("connectivity.mc"))
            if b is None or m is None or not np.isfinite(float(b)) or not np.isfinite(float(m)):
                continue
            budgets, mcs = [float(b)], [float(m)]
        n = len(budgets)
        for i, (b, m) in enumerate(zip(budgets, mcs, strict=True)):
            if np.isfinite(b) and np.isfinite(m) and b > 0:
                pts.append(
                    {
                        **key,
                        "_cell": cell,
                        "_row": idx,
                        "budget": b,
                        "mc": m,
                        "state": last_state if i == n - 1 else "moving",
                    }
                )
    if not pts:
        return pd.DataFrame(columns=cols + ["budget", "mc", "n", "state"])
    df = pd.DataFrame(pts)
    # carry converged values forward to the larger budgets their cell reached
    extra = []
    for _, g in df.groupby("_cell", sort=False):
        budgets = sorted(g["budget"].unique())
        for _, row_pts in g.groupby("_row", sort=False):
            last = row_pts.loc[row_pts["budget"].idxmax()]
            if last["state"] == "moving":
                continue
            for b in budgets:
                if b > last["budget"]:
                    extra.append({**last.to_dict(), "budget": b})
    if extra:
        df = pd.concat([df, pd.DataFrame(extra)], ignore_index=True)

    def state(s: pd.Series) -> str:
        if (s == "converged").all():
            return "converged"
        lo, up = int((s == "lower").sum()), int((s == "upper").sum())
        if lo or up:
            return "lower" if lo >= up else "upper"
        return "moving"

    g = df.groupby(cols + ["budget"], dropna=False)
    out = pd.DataFrame({"mc": g["mc"].mean(), "n": g["mc"].size(), "state": g["state"].agg(state)}).reset_index()
    return out


#: y ticks of :func:`mc_budget_figure` (pp; symmetric-log axis).
_MC_TICKS = (-50, -20, -10, -5, -2, -1, -0.5, 0, 0.5, 1, 2, 5, 10, 20, 50)


def mc_budget_figure(points: pd.DataFrame, x: str, y: str, facet: str | None = None, rule: Any = None) -> Figure:
    """Mode connectivity against curve budget (the points of :func:`mc_budget_points`): one panel per value of
    ``y`` (and of ``facet``), x axis the curve budget (multiples of the endpoints' SGD steps, log2), y axis the
    cell mean mc (pp of training error, symmetric-log, linear within +-1 pp), one line per value of ``x``,
    markers by the state of the pairs (:data:`BUDGET_MARKERS`), dashed lines at the phase rule's mc thresholds
    (``rule.mc_underfit``, ``rule.mc_barrier``)."""
    panel_by = [k for k in (facet, y) if k]
    panels = (
        points[panel_by].drop_duplicates().sort_values(panel_by).itertuples(index=False, name=None)
        if not points.empty
        else []
    )
    panels = list(panels)
    n = max(len(panels), 1)
    ncols = min(4, n)
    nrows = -(-n // ncols)
    fig, axes = plt.subplots(
        nrows,
        ncols,
        figsize=(3.1 * ncols + 2.3, 2.6 * nrows + 0.7),
        squeeze=False,
        sharex=True,
        sharey=True,
        layout="constrained",
    )
    xs = sorted(points[x].dropna().unique().tolist()) if not points.empty else []
    cmap = plt.get_cmap("viridis")
    colour = {v: cmap(0.9 * i / max(len(xs) - 1, 1)) for i, v in enumerate(xs)}
    budgets = sorted(points["budget"].unique().tolist()) if not points.empty else [1.0]
    thresholds = []
    if rule is not None:
        thresholds = [(float(rule.mc_underfit), "mc_underfit"), (float(rule.mc_barrier), "mc_barrier")]
    for k, ax in enumerate(axes.flat):
        if k >= len(panels):
            ax.set_visible(False)
            continue
        pv = panels[k]
        sel = np.ones(len(points), dtype=bool)
        for col, v in zip(panel_by, pv, strict=True):
            sel &= (points[col] == v).to_numpy()
        sub = points[sel]
        for xv in xs:
            line = sub[sub[x] == xv].sort_values("budget")
            if line.empty:
                continue
            ax.plot(line["budget"], line["mc"], "-", color=colour[xv], lw=1.4, zorder=2)
            for st, spec in BUDGET_MARKERS.items():
                pts = line[line["state"] == st]
                if not pts.empty:
                    ax.plot(
                        pts["budget"],
                        pts["mc"],
                        linestyle="none",
                        marker=spec["marker"],
                        fillstyle=spec["fillstyle"],
                        color=colour[xv],
                        markersize=5.5,
                        markerfacecolor=colour[xv] if spec["fillstyle"] == "full" else "white",
                        zorder=3,
                    )
        for value, _name in thresholds:
            ax.axhline(value, color="0.35", ls="--", lw=0.9, zorder=1)
        ax.set_xscale("log", base=2)
        ax.set_yscale("symlog", linthresh=1.0)
        ax.yaxis.set_major_locator(matplotlib.ticker.FixedLocator(_MC_TICKS))
        ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.set_xticks(budgets)
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.grid(True, which="major", color="0.9", lw=0.6)
        ax.set_title(
            ", ".join(
                f"{KNOB_NAMES.get(c, c)} = {_fmt(v) if isinstance(v, float) else v}"
                for c, v in zip(panel_by, pv, strict=True)
            ),
            fontsize=9,
        )
        if k % ncols == 0:
            ax.set_ylabel("mc (pp of training error)", fontsize=8.5)
        if k // ncols == nrows - 1 or k + ncols >= len(panels):
            ax.set_xlabel("curve budget (x endpoints' SGD steps)", fontsize=8.5)
        ax.tick_params(labelsize=8, labelbottom=True)
    handles = [Line2D([], [], color=colour[v], lw=1.6, label=f"{_fmt(v) if isinstance(v, float) else v}") for v in xs]
    handles += [
        Line2D(
            [],
            [],
            color="0.25",
            linestyle="none",
            marker=s["marker"],
            fillstyle=s["fillstyle"],
            markerfacecolor="0.25" if s["fillstyle"] == "full" else "white",
            label=s["label"],
        )
        for s in BUDGET_MARKERS.values()
    ]
    if thresholds:
        handles.append(
            Line2D(
                [],
                [],
                color="0.35",
                ls="--",
                lw=0.9,
                label="phase thresholds: " + ", ".join(f"{nm} {v:g}" for v, nm in thresholds) + " pp",
            )
        )
    fig.legend(
        handles=handles, loc="outside right center", fontsize=7.5, title=knob_label(x), title_fontsize=8, frameon=False
    )
    fig.suptitle("mode connectivity against curve budget (cell means over pairs)", fontsize=10)
    return fig


__all__ += ["BUDGET_MARKERS", "mc_budget_figure", "mc_budget_points"]

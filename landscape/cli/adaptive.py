"""The adaptive sweeper (``hydra/sweeper=adaptive``): a grid's phase diagram from fewer cells.

It takes the same grid as the grid sweeper (``hydra.sweeper.params`` and the command line's swept keys: the full
grid it stands for), plans and validates every cell of it before any job starts (``GridSweeper.plan``), then
measures it in waves through the configured launcher (in-process, ``hydra/launcher=local``, ``=slurm``):

1. the initial design (``auto``: values spread evenly over each axis, corners included, at most half the budget,
   :func:`landscape.adaptive.auto_design`; or every ``initial_stride``-th value of each axis,
   :func:`landscape.adaptive.initial_design`);
2. after each wave, the finished cells are labelled by the phase rule and the sweep's ``phase:`` section, as
   ``landscape-phase`` labels them (its loading and labelling functions, :func:`label_points`), the others are
   inferred by the phase rule on the rule's values interpolated from the measured cells
   (:func:`landscape.adaptive.infer`), and the next wave is taken where the map is uncertain
   (:func:`landscape.adaptive.next_wave`: between measured cells of different phases, next to an inferred
   boundary, next to cells without a label or with a low confidence, ``phase.uncertain_below``);
3. until ``max_cells`` cells of the grid are measured (a count, or a fraction of the grid) or nothing is
   uncertain.

Settings (``conf/hydra/sweeper/adaptive.yaml``): ``max_cells`` (default 0.5), ``initial_stride`` (auto),
``refine`` (``boundary``, ``labels`` or ``random``: :data:`landscape.adaptive.RULES`), ``wave_size`` (auto: half
the budget left), ``seed`` (the ``random`` rule's). A bad one is refused before anything runs, naming the key,
the value and what is allowed (exit status 2, no traceback).

The sweep directory is the state: ``<sweep>/adaptive/waves.jsonl`` (append-only: each launch's grid and
settings, each wave's cells with the reason each was chosen, the labels after each wave, why the launch
stopped), ``decisions.log`` (the same, for reading) and ``order.png`` (the order in which the cells were
measured, redrawn after each wave). A relaunch of the same command first resumes the cells an earlier wave chose
and did not finish (interrupted, failed), then goes on; a cell that is done is never launched again. Each wave
writes a launch record naming its own cells, so ``landscape-status`` knows what is pending and its completing
command is the adaptive command itself. ``landscape-phase`` on the directory draws the whole grid: measured
cells as usual, the others inferred from their measured neighbours (:func:`landscape.adaptive.infer`; with the
phase rule when ``landscape-phase`` passes it to :func:`landscape.adaptive.complete_cells`).
"""

from __future__ import annotations

import logging
import math
import sys
from collections import Counter
from pathlib import Path
from typing import Any, List, Mapping, Optional

from omegaconf import OmegaConf

from landscape import adaptive as ad
from landscape import sweepdir
from landscape.cli.sweeper import GridPlan, GridSweeper, Launched, PlannedCell

log = logging.getLogger(__name__)

#: States of a cell's status file that make it measured (a result: its rows, or its failure).
FINISHED_STATES = ("done", "diverged")


def label_points(
    sweep_dir: Path, grid: ad.Grid, ids: Mapping[ad.Point, str]
) -> tuple[dict[ad.Point, ad.Measured], Any]:
    """The phase of each finished cell ``ids`` (``{point: cell_id}``) as ``landscape-phase`` labels it: the
    sweep's ``phase:`` settings (``landscape.cli.phase.resolve_settings``: thresholds, ``select``, bootstrap,
    seed), its rows of these cells (``load_filtered_rows``, ``choose_settings``), aggregated over the grid's
    axes (``landscape.phase.aggregate_cells``), labelled with their confidence (``label_cells``), with the values
    of the rule's columns (to interpolate); and the rule (None before any cell has rows). A cell without rows, or
    without a label, is measured without one (its reason says why)."""
    import warnings

    import pandas as pd

    from landscape import phase as ph
    from landscape.cli import phase as cli_phase

    out = {p: ad.Measured(None, reason="no rows") for p in ids}
    if not ids:
        return out, None
    settings, t_over, _, _ = cli_phase.resolve_settings(sweep_dir, {})
    by = [a.column for a in grid.axes]
    try:
        rows = cli_phase.load_filtered_rows(sweep_dir, {"cell_id": sorted(set(ids.values()))}, by)
    except (FileNotFoundError, ValueError) as exc:
        log.warning("no rows to label yet (%s)", exc)
        return out, None
    rows = cli_phase.choose_settings(rows, settings["select"], by)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=getattr(pd.errors, "PerformanceWarning", Warning))
        cells = ph.aggregate_cells(rows.models, rows.pairs_or_none, by)
        rule, _ = ph.resolve_rule(settings["thresholds"], t_over, cells)
        cells, _, _ = cli_phase.label_cells(cells, rows, by, rule, settings)
    for p, m in ad.measured_from_cells(grid, cells, rule.columns).items():
        if p in out:
            out[p] = m
    return out, rule


def _uncertain_below(sweep_dir: Path) -> float:
    from landscape.cli import phase as cli_phase

    settings, _, _, _ = cli_phase.resolve_settings(sweep_dir, {})
    return float(settings["uncertain_below"])


def every(stride: int | None) -> str:
    """``every other value`` (2), ``every 4th value`` ...; ``evenly spread values`` (None: ``auto``)."""
    if stride is None:
        return "evenly spread values"
    return {1: "every value", 2: "every other value", 3: "every 3rd value"}.get(stride, f"every {stride}th value")


def _refuse(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
    raise SystemExit(2)


class AdaptiveSweeper(GridSweeper):
    """The grid sweeper's planning, validation and skipping of done cells, launching the grid in waves chosen
    where the phase map is uncertain (see the module docstring)."""

    def __init__(
        self,
        max_batch_size: Optional[int] = None,
        params: Optional[dict] = None,
        max_cells: Any = 0.5,
        initial_stride: Any = "auto",
        refine: str = "boundary",
        wave_size: Any = "auto",
        seed: int = 0,
    ):
        super().__init__(max_batch_size=max_batch_size, params=params)
        self.max_cells, self.initial_stride, self.refine = max_cells, initial_stride, refine
        self.wave_size, self.seed = wave_size, seed

    def settings(self, grid: ad.Grid) -> dict[str, Any]:
        """The checked settings for ``grid`` (``AdaptiveError`` naming the key, the value and what is allowed)."""
        rule = ad.check_rule(self.refine)
        max_cells = ad.resolve_max_cells(self.max_cells, grid.size)
        stride = ad.resolve_stride(self.initial_stride, grid.shape, max_cells)
        wave_size = ad.check_wave_size(self.wave_size)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ad.AdaptiveError(f"hydra.sweeper.seed={self.seed!r}: allowed: an integer")
        return {"max_cells": max_cells, "stride": stride, "refine": rule, "wave_size": wave_size, "seed": self.seed}

    def sweep(self, arguments: List[str]) -> Any:
        assert self.config is not None and self.launcher is not None and self.hydra_context is not None
        from landscape.cli.app import startup_done
        from landscape.results import schema

        startup_done()
        jobs = self.grid_jobs(arguments)
        try:
            grid, index = ad.grid_from_jobs(jobs)
            settings = self.settings(grid)
            columns = set(schema.schema_for("models").names)
            for a in grid.axes:
                if a.column not in columns:
                    raise ad.AdaptiveError(
                        f"hydra/sweeper=adaptive: the swept key {a.key} is no knob column of the rows ({a.column}), "
                        "so its cells cannot be placed on the map; allowed: swept data, model and train knobs"
                    )
        except ad.AdaptiveError as exc:
            _refuse(str(exc))
        plan = self.plan(arguments, jobs)  # every cell of the full grid composed and validated
        cells = {p: plan.planned[i] for p, i in index.items()}
        design = ad.design(grid.shape, settings["max_cells"], settings["stride"])
        head = (
            f"adaptive sweep of {grid.size} cells ({' x '.join(f'{a.key} ({len(a.values)})' for a in grid.axes)}): "
            f"at most {settings['max_cells']} cells ({100 * settings['max_cells'] / grid.size:.0f} %), initial design "
            f"{len(design)} cells ({every(settings['stride'])} of each axis, corners included), rule "
            f"{settings['refine']}"
        )
        if bool(self.config.get("dry_run", False)):
            print(head + "; the plan of the initial design:", flush=True)
            self.print_dry_run(plan, [cells[p] for p in design])
            return []
        log.info("%s", head)
        return AdaptiveRun(self, plan, grid, cells, settings, design, arguments).run()


class AdaptiveRun:
    """One launch of an adaptive sweep: its waves, their records, labels and figure."""

    def __init__(
        self,
        sweeper: AdaptiveSweeper,
        plan: GridPlan,
        grid: ad.Grid,
        cells: dict[ad.Point, PlannedCell],
        settings: dict[str, Any],
        design: list[ad.Point],
        arguments: List[str],
    ):
        self.sweeper, self.plan, self.grid, self.cells = sweeper, plan, grid, cells
        self.settings, self.design, self.arguments = settings, design, arguments
        self.sweep_dir = plan.sweep_dir
        self.ids = {p: str(c.cell_id) for p, c in cells.items()}
        self.finished = {p for p, c in cells.items() if c.state == "done"}
        self.launched: dict[ad.Point, int] = {}  # by this launch: point -> wave
        self.launched_cells: list[PlannedCell] = []
        self.failures: list[Any] = []
        self.labels: dict[ad.Point, ad.Measured] = {}
        self.phase_rule: Any = None  # the rule that labelled the cells: inference interpolates its columns

    # ------------------------------------------------------------------------------------ the loop
    def run(self) -> list:
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.sweeper.config, sweepdir.multirun_path(self.sweep_dir))  # its phase: section
        state = ad.read_state(self.sweep_dir) or ad.State()
        chosen = {p: state.chosen()[cid] for p, cid in self.ids.items() if cid in state.chosen()}
        self.order = dict(chosen)
        settings = dict(self.settings)
        ad.append_records(
            self.sweep_dir,
            [
                {
                    "kind": "launch",
                    "grid": self.grid.to_dict(),
                    "settings": settings,
                    "cell_ids": {ad.point_key(p): cid for p, cid in self.ids.items()},
                }
            ],
            [
                "",
                f"launch: grid {' x '.join(f'{a.key} ({len(a.values)})' for a in self.grid.axes)} = {self.grid.size} "
                f"cells; max_cells {settings['max_cells']}, initial stride {settings['stride'] or 'auto'}, rule "
                f"{settings['refine']}, wave size {settings['wave_size'] or 'auto'}; {len(self.finished)} cells done "
                f"already, {len(chosen)} chosen by earlier waves",
            ],
        )
        wave_no = state.next_wave_number()
        returns: list = []
        self.relabel()
        while True:
            wave, why_stop = self.choose(state, chosen, wave_no)
            if not wave:
                self.stop(why_stop)
                break
            self.record_wave(wave_no, wave)
            launched = self.launch(wave)
            returns.extend(launched.returns)
            for c in wave:
                self.launched[c.point] = wave_no
                self.order.setdefault(c.point, wave_no)
            wave_no += 1
            if launched.signum is not None:
                self.stop(f"stopped by signal {launched.signum}")
                self.sweeper.end_of_launch(self.launched_cells, self._all(launched), self.sweep_dir)
            self.relabel()
        self.end()
        return returns

    def choose(
        self, state: ad.State, chosen: dict[ad.Point, int], wave_no: int
    ) -> tuple[list[ad.Candidate], str | None]:
        """The next wave and, when empty, why the sweep stops."""
        resume = [
            ad.Candidate(p, "resume") for p in sorted(chosen) if p not in self.finished and p not in self.launched
        ]
        if resume:
            return resume, None
        used = len(self.finished | set(chosen) | set(self.launched))
        left = self.settings["max_cells"] - used
        if not state.waves and not self.launched:
            todo = [p for p in self.design if p not in self.finished][: max(left, 0)]
            if todo:
                return [ad.Candidate(p, "initial") for p in todo], None
        if left <= 0:
            return [], f"budget spent: {used} of {self.settings['max_cells']} cells measured or chosen"
        wave = ad.next_wave(
            self.grid.shape,
            self.measured(),
            left,
            self.settings["wave_size"],
            _uncertain_below(self.sweep_dir),
            self.settings["refine"],
            self.settings["seed"],
            exclude=set(chosen) | set(self.launched),
            phase_rule=self.phase_rule,
        )
        return wave, (None if wave else "nothing uncertain: every unmeasured cell's neighbours agree")

    def measured(self) -> dict[ad.Point, ad.Measured]:
        """The measured points: finished cells with their labels, and cells this launch ran that did not finish
        (failed: measured without a label)."""
        out = {p: self.labels.get(p, ad.Measured(None, reason="no label")) for p in self.finished}
        for p in self.launched:
            if p not in out:
                out[p] = ad.Measured(None, reason="not finished (failed)")
        return out

    def launch(self, wave: list[ad.Candidate]) -> Launched:
        todo = [
            self.cells[c.point] for c in wave if self.cells[c.point].state != "done" and c.point not in self.finished
        ]
        self.launched_cells.extend(todo)
        if not todo:
            return Launched([])
        launched = self.sweeper.launch_cells(self.plan, todo, self.arguments, record=todo)
        self.failures.extend(launched.failures)
        from landscape.cell import CellDir, DamagedFile

        for c in wave:
            try:
                status = CellDir(self.sweep_dir, self.ids[c.point]).read_status()
            except DamagedFile:
                status = None
            if status is not None and status.state in FINISHED_STATES:
                self.finished.add(c.point)
        return launched

    def _all(self, last: Launched) -> Launched:
        return Launched(self.launched_cells, list(last.returns), list(self.failures), last.signum)

    # ------------------------------------------------------------------------------------ records
    def relabel(self) -> None:
        """Label the finished cells, record the labels and draw the order of measurement."""
        ids = {p: self.ids[p] for p in self.finished}
        self.labels, self.phase_rule = label_points(self.sweep_dir, self.grid, ids) if ids else ({}, None)
        measured = self.measured()
        full = ad.complete_map(self.grid.shape, measured, self.phase_rule)
        counts = Counter(src for src, _, _ in full.values())
        phases = Counter(lab for _, lab, _ in full.values() if lab is not None)
        line = (
            f"map: {counts[ad.MEASURED]} measured, {counts[ad.INFERRED]} inferred, {counts[ad.UNKNOWN_SOURCE]} "
            f"unknown of {self.grid.size}; phases (measured + inferred): "
            + (", ".join(f"{k} {v}" for k, v in sorted(phases.items())) or "none")
        )
        log.info("%s", line)
        ad.append_records(
            self.sweep_dir,
            [
                {
                    "kind": "labels",
                    "labels": {
                        ad.point_key(p): {
                            "cell_id": self.ids[p],
                            "label": m.label,
                            "confidence": m.confidence if math.isfinite(m.confidence) else None,
                        }
                        | ({"reason": m.reason} if m.reason else {})
                        for p, m in measured.items()
                    },
                }
            ],
            [line],
        )
        try:
            self.draw(full)
        except Exception as exc:  # noqa: BLE001 - a figure never stops the sweep
            log.warning("the order figure was not drawn: %s: %s", type(exc).__name__, exc)

    def record_wave(self, wave_no: int, wave: list[ad.Candidate]) -> None:
        measured = self.measured()
        why = Counter(c.reason for c in wave)
        head = f"wave {wave_no}: {len(wave)} cells ({', '.join(f'{n} {r}' for r, n in why.items())})"
        lines = [head]
        cells = []
        for c in wave:
            detail = self.detail(c, measured)
            lines.append(f"  {self.grid.describe(c.point)}  [{self.ids[c.point]}]  {c.reason}: {detail}")
            cells.append(
                {
                    "point": list(c.point),
                    "cell_id": self.ids[c.point],
                    "overrides": self.grid.overrides(c.point),
                    "reason": c.reason,
                    "detail": detail,
                    "distance": round(c.distance, 4),
                    "balance": round(c.balance, 4),
                }
            )
        log.info("%s", "\n".join(lines))
        ad.append_records(self.sweep_dir, [{"kind": "wave", "wave": wave_no, "cells": cells}], lines)

    def detail(self, c: ad.Candidate, measured: Mapping[ad.Point, ad.Measured]) -> str:
        """Why ``c`` was chosen, in words, naming the measured cells the reason rests on."""
        if c.reason == "initial":
            return f"initial design ({every(self.settings['stride'])} of each axis, corners included)"
        if c.reason == "resume":
            return "chosen by an earlier wave, not finished: resumed"
        if c.reason == "random":
            return "random baseline"

        def said(q: ad.Point) -> str:
            m = measured.get(q)
            lab = "?" if m is None else (m.label or f"no label ({m.reason})")
            conf = "" if m is None or not math.isfinite(m.confidence) else f" {m.confidence:.2f}"
            return f"{lab}{conf} at {self.grid.describe(q)}"

        what = {
            "split": "nearest measured cells disagree",
            "edge": "a boundary passes near it (other labels one step farther, or on a neighbouring point)",
            "unresolved": "a nearest measured cell has no label",
            "low_confidence": "a nearest measured cell has a low-confidence label",
        }[c.reason]
        shown = sorted(c.support)[:6]
        more = f" (+{len(c.support) - len(shown)} more)" if len(c.support) > len(shown) else ""
        return f"{what} ({c.distance:.3g} steps): " + "; ".join(said(q) for q in shown) + more

    def stop(self, why: str | None) -> None:
        line = f"stop: {why}"
        log.info("adaptive sweep: %s", line)
        ad.append_records(self.sweep_dir, [{"kind": "end", "why": why}], [line])

    def end(self) -> None:
        measured = self.measured()
        n = len(measured)
        log.info(
            "adaptive sweep: %d of %d cells measured (%.0f %%) in %d wave(s) of this launch; landscape-phase %s "
            "draws the whole grid (unmeasured cells inferred); waves and reasons: %s",
            n,
            self.grid.size,
            100 * n / self.grid.size,
            len(set(self.launched.values())),
            self.sweep_dir,
            ad.decisions_path(self.sweep_dir),
        )
        if self.launched_cells:
            self.sweeper.end_of_launch(
                self.launched_cells, Launched(self.launched_cells, [], self.failures, None), self.sweep_dir
            )

    def draw(self, full: Mapping[ad.Point, tuple[str, str | None, str | None]]) -> None:
        from landscape.cli import phase as cli_phase

        settings, _, _, _ = cli_phase.resolve_settings(self.sweep_dir, {})
        fig = order_figure(self.grid, self.order, full, settings.get("x"), settings.get("y"))
        from landscape.phase_diagram import save

        save(fig, ad.state_dir(self.sweep_dir) / ad.ORDER_FIGURE, ("png",))


def order_figure(
    grid: ad.Grid,
    order: Mapping[ad.Point, int],
    full: Mapping[ad.Point, tuple[str, str | None, str | None]],
    x: str | None = None,
    y: str | None = None,
) -> Any:
    """The order in which the cells were measured: one panel per value of the axes beyond ``x`` and ``y`` (default:
    the first two axes); each cell chosen by a wave coloured by its wave (0: the initial design) and its label
    written in it; unmeasured cells white with their inferred label in grey (``?``: unknown). Axes by index, ticked
    with the knob values."""
    import itertools

    import matplotlib.colors as mcolors
    import matplotlib.pyplot as plt
    import numpy as np

    from landscape.phase_diagram import INVERTED_KNOBS, knob_label

    names = [a.column for a in grid.axes]
    ix = names.index(x) if x in names else 0
    iy = names.index(y) if y in names and names.index(y) != ix else (1 if len(names) > 1 and ix != 1 else 0)
    if len(names) == 1:
        iy = None
    rest = [i for i in range(len(names)) if i not in (ix, iy)]
    facets = list(itertools.product(*(range(grid.shape[i]) for i in rest))) or [()]
    nx = grid.shape[ix]
    ny = grid.shape[iy] if iy is not None else 1
    n_waves = max(order.values(), default=0) + 1
    cmap = plt.get_cmap("viridis", max(n_waves, 2))
    w, h = max(3.5, 0.6 * nx + 1.8), max(2.8, 0.5 * ny + 1.8)
    fig, axes = plt.subplots(1, len(facets), figsize=(w * len(facets) + 1.2, h), squeeze=False, layout="constrained")
    mesh = None
    for k, f in enumerate(facets):
        ax = axes[0, k]
        waves = np.full((ny, nx), np.nan)
        for p in grid.points():
            if any(p[i] != v for i, v in zip(rest, f, strict=True)):
                continue
            cx, cy = p[ix], (p[iy] if iy is not None else 0)
            src, lab, _ = full.get(p, (ad.UNKNOWN_SOURCE, None, None))
            if p in order:
                waves[cy, cx] = order[p]
                text, colour, style = (
                    f"{order[p]}\n{lab or '-'}",
                    "white" if order[p] < n_waves / 2 else "black",
                    "normal",
                )
            else:
                text, colour, style = (lab or "?"), "0.45", "italic"
            ax.text(cx, cy, text, ha="center", va="center", fontsize=6.5, color=colour, fontstyle=style)
        mesh = ax.pcolormesh(
            np.arange(nx + 1) - 0.5,
            np.arange(ny + 1) - 0.5,
            np.ma.masked_invalid(waves),
            cmap=cmap,
            norm=mcolors.BoundaryNorm(np.arange(max(n_waves, 2) + 1) - 0.5, max(n_waves, 2)),
            edgecolors="0.8",
            linewidth=0.5,
        )
        ax.set_facecolor("white")
        ax.set_xticks(range(nx), grid.axes[ix].values, fontsize=7, rotation=45 if nx > 8 else 0)
        ax.set_xlabel(knob_label(names[ix]), fontsize=8)
        if iy is not None:
            ax.set_yticks(range(ny), grid.axes[iy].values, fontsize=7)
            ax.set_ylabel(knob_label(names[iy]), fontsize=8)
        else:
            ax.set_yticks([])
        ax.set_xlim(-0.5, nx - 0.5)
        ax.set_ylim(-0.5, ny - 0.5)
        if iy is not None and names[iy] in INVERTED_KNOBS:
            ax.invert_yaxis()  # small batches (hot) on top, as on the phase map
        if f:
            ax.set_title(
                ", ".join(f"{names[i]} = {grid.axes[i].values[v]}" for i, v in zip(rest, f, strict=True)), fontsize=8
            )
    measured = sum(1 for s, _, _ in full.values() if s == ad.MEASURED)
    fig.suptitle(
        f"order of measurement: {len(order)} of {grid.size} cells chosen in {n_waves} wave(s) ({measured} measured); "
        "cell text: wave, label; white cells: not measured, their inferred label in grey (? = unknown)",
        fontsize=8,
        wrap=True,
    )
    if mesh is not None:
        cb = fig.colorbar(mesh, ax=axes.ravel().tolist(), ticks=range(max(n_waves, 2)), shrink=0.9)
        cb.set_label("wave (0 = initial design)", fontsize=8)
        cb.ax.tick_params(labelsize=7)
    return fig

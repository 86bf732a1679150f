"""Import the published results of Yang et al. 2021 into the project's row schema.

The authors' released results (public repository ``nsfzyzz/loss_landscape_taxonomy``, MIT licence; see
``README.md`` beside the CSVs) come as three CSVs: ``models.csv`` (one row per trained ResNet18),
``pairs.csv`` (one row per *ordered* pair of models of a cell) and ``curves.csv`` (a Bezier curve between
models 0 and 1 of each cell, at t = 0, .25, .5, .75, 1). This module turns them into ``models`` and
``pairs`` rows with the project's column names, so ``landscape-phase`` regenerates the paper's figure:

* models: ``cell_id``, ``sweep="taxonomy2021"``, ``seed``, ``status="done"``, the knobs (``data.name``,
  ``model.name="resnet18"``, ``model.width``, ``train.batch_size``, ``train.lr``, ``train.momentum``,
  ``train.weight_decay``, ``train.epochs``), ``train_loss``, ``train_acc`` and ``test_acc`` as fractions
  (the CSV has %), ``test_loss``, ``hessian.top_eigenvalue``, ``hessian.trace``;
* pairs: one row per unordered pair ``seed_a < seed_b`` with ``l2_distance`` and ``cka`` (linear CKA of the
  softmax outputs). The CSV's CKA of (a, b) and (b, a) differ (different mixup draws), so ``cka`` is the mean
  of the two orders (ignoring a missing one): the cell mean then equals the paper's mean over off-diagonal
  pairs. ``connectivity.mc`` (in percentage points of training error) is computed from the curve with the
  library's :func:`landscape.connectivity.mode_connectivity` (the same function and t grid as the
  ``connectivity`` family's defaults), and set on pair (0, 1) only (null elsewhere).

:func:`fit_phase_thresholds` fits the phase rule's thresholds on cells aggregated from these rows (see there
for what "fitted" can mean without published phase labels).

Run as a script: ``python analysis/taxonomy2021.py OUT_DIR [--reference DIR]`` writes
``OUT_DIR/results/models/<cell_id>.parquet`` and ``OUT_DIR/results/pairs/<cell_id>.parquet``; then
``landscape-phase OUT_DIR --x model.width --y train.batch_size`` draws the figure.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from landscape import sweepdir
from landscape.connectivity import MC_ENDPOINTS, PAPER_T_GRID
from landscape.connectivity import mode_connectivity as _library_mc

MC_DEFAULT = MC_ENDPOINTS[0]

if TYPE_CHECKING:
    from landscape.phase import PhaseRule

log = logging.getLogger(__name__)

SWEEP = "taxonomy2021"
#: The reference CSVs: the project's test copy, and the shared original.
DEFAULT_REFERENCE = Path(__file__).resolve().parents[1] / "tests" / "data" / "taxonomy2021"

#: Fixed settings of the paper's runs (its README), stored as knob columns.
FIXED_KNOBS: dict[str, object] = {
    "data.name": "cifar10",
    "model.name": "resnet18",
    "train.lr": 0.1,
    "train.momentum": 0.9,
    "train.weight_decay": 5e-4,
    "train.epochs": 100,
}

KNOB_TYPES: dict[str, pa.DataType] = {
    "data.name": pa.string(),
    "model.name": pa.string(),
    "model.width": pa.int64(),
    "train.batch_size": pa.int64(),
    "train.lr": pa.float64(),
    "train.momentum": pa.float64(),
    "train.weight_decay": pa.float64(),
    "train.epochs": pa.int64(),
}

MODELS_SCHEMA = pa.schema(
    [("cell_id", pa.string()), ("sweep", pa.string()), ("status", pa.string()), ("seed", pa.int64())]
    + list(KNOB_TYPES.items())
    + [
        ("train_loss", pa.float64()),
        ("train_acc", pa.float64()),
        ("test_loss", pa.float64()),
        ("test_acc", pa.float64()),
        ("hessian.top_eigenvalue", pa.float64()),
        ("hessian.trace", pa.float64()),
    ]
)

PAIRS_SCHEMA = pa.schema(
    [
        ("cell_id", pa.string()),
        ("sweep", pa.string()),
        ("status", pa.string()),
        ("seed_a", pa.int64()),
        ("seed_b", pa.int64()),
    ]
    + list(KNOB_TYPES.items())
    + [("l2_distance", pa.float64()), ("cka", pa.float64()), ("connectivity.mc", pa.float64())]
)


def cell_id(width: int, batch_size: int) -> str:
    """Readable, stable id of a reference cell, e.g. ``tax21-w064-b0128``."""
    return f"tax21-w{int(width):03d}-b{int(batch_size):04d}"


def mode_connectivity(t: Sequence[float], err: Sequence[float], endpoints: str = MC_DEFAULT) -> float:
    """Mode connectivity of one published curve, in the units of ``err`` (here % training error):
    :func:`landscape.connectivity.mode_connectivity` of ``err`` at the sorted ``t`` (the library's one
    definition; ``endpoints="paper"`` is the authors' argmax over all five points). On the published curves
    the default equals the paper's formula wherever that is unambiguous (209 of the 210 curves, every cell of
    the 13 x 13 grid); NaN if a value is not finite.
    """
    return _library_mc(err, t=t, endpoints=endpoints)


def read_reference(
    reference: Path = DEFAULT_REFERENCE, endpoints: str = MC_DEFAULT
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The reference CSVs of ``reference`` as (models rows, pairs rows) in the project's schema; ``endpoints``:
    the endpoint handling of the curves' mode connectivity (see :func:`mode_connectivity`)."""
    reference = Path(reference)
    m = pd.read_csv(reference / "models.csv")
    p = pd.read_csv(reference / "pairs.csv")
    c = pd.read_csv(reference / "curves.csv")

    models = pd.DataFrame(
        {
            "cell_id": [cell_id(w, b) for w, b in zip(m["width"], m["batch_size"], strict=True)],
            "sweep": SWEEP,
            "status": "done",
            "seed": m["seed"].astype("int64"),
            "model.width": m["width"].astype("int64"),
            "train.batch_size": m["batch_size"].astype("int64"),
            "train_loss": m["train_loss"].astype("float64"),
            "train_acc": m["train_acc"].astype("float64") / 100.0,
            "test_loss": m["test_loss"].astype("float64"),
            "test_acc": m["test_acc"].astype("float64") / 100.0,
            "hessian.top_eigenvalue": m["top_eigenvalue"].astype("float64"),
            "hessian.trace": m["trace"].astype("float64"),
        }
    )

    # Unordered pairs: mean of the (a, b) and (b, a) values.
    lo = np.minimum(p["seed_a"], p["seed_b"])
    hi = np.maximum(p["seed_a"], p["seed_b"])
    und = p.assign(seed_a=lo, seed_b=hi)
    und = und[und["seed_a"] < und["seed_b"]]
    und = und.groupby(["width", "batch_size", "seed_a", "seed_b"], as_index=False)[
        ["l2_distance", "cka_softmax"]
    ].mean()  # pandas mean skips NaN

    grids = c.groupby(["width", "batch_size"])["t"].apply(lambda t: tuple(sorted(t)))
    off_grid = grids[grids != PAPER_T_GRID]
    if len(off_grid):
        log.warning(
            "curves of cells %s are not on the grid t = %s the phase thresholds were fitted on",
            list(off_grid.index)[:5],
            PAPER_T_GRID,
        )
    mc = (
        c.groupby(["width", "batch_size"])[["t", "train_err"]]
        .apply(lambda g: mode_connectivity(g["t"].to_numpy(), g["train_err"].to_numpy(), endpoints))
        .rename("connectivity.mc")
        .reset_index()
    )
    und = und.merge(mc.assign(seed_a=0, seed_b=1), on=["width", "batch_size", "seed_a", "seed_b"], how="left")
    missing_curves = set(map(tuple, mc[["width", "batch_size"]].to_numpy())) - set(
        map(tuple, und.loc[und["seed_a"].eq(0) & und["seed_b"].eq(1), ["width", "batch_size"]].to_numpy())
    )
    if missing_curves:
        log.warning("curves without a pair (0, 1) row, mc dropped for cells %s", sorted(missing_curves))

    pairs = pd.DataFrame(
        {
            "cell_id": [cell_id(w, b) for w, b in zip(und["width"], und["batch_size"], strict=True)],
            "sweep": SWEEP,
            "status": "done",
            "seed_a": und["seed_a"].astype("int64"),
            "seed_b": und["seed_b"].astype("int64"),
            "model.width": und["width"].astype("int64"),
            "train.batch_size": und["batch_size"].astype("int64"),
            "l2_distance": und["l2_distance"].astype("float64"),
            "cka": und["cka_softmax"].astype("float64"),
            "connectivity.mc": und["connectivity.mc"].astype("float64"),
        }
    )
    for k, v in FIXED_KNOBS.items():
        models[k] = v
        pairs[k] = v
    return models[MODELS_SCHEMA.names], pairs[PAIRS_SCHEMA.names]


def _write_cells(rows: pd.DataFrame, schema: pa.Schema, directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for cid, part in rows.groupby("cell_id", sort=True):
        table = pa.Table.from_pandas(part, schema=schema, preserve_index=False)
        path = directory / f"{cid}.parquet"
        tmp = path.with_name(path.name + ".tmp")
        pq.write_table(table, tmp)
        tmp.replace(path)
        paths.append(path)
    return paths


def write_sweep(out: Path, models: pd.DataFrame, pairs: pd.DataFrame) -> dict[str, list[Path]]:
    """Write rows as ``out/results/{models,pairs}/<cell_id>.parquet`` (one file per cell, atomic rename)."""
    out = Path(out)
    return {
        "models": _write_cells(models, MODELS_SCHEMA, sweepdir.table_dir(out, "models")),
        "pairs": _write_cells(pairs, PAIRS_SCHEMA, sweepdir.table_dir(out, "pairs")),
    }


def import_reference(
    out: Path,
    reference: Path = DEFAULT_REFERENCE,
    widths: Sequence[int] | None = None,
    batch_sizes: Sequence[int] | None = None,
) -> dict[str, list[Path]]:
    """Read the reference CSVs and write them as a sweep directory under ``out``, optionally restricted
    to some widths and batch sizes (for small test sweeps). Returns the written files per table."""
    models, pairs = read_reference(reference)
    if widths is not None:
        models = models[models["model.width"].isin(widths)]
        pairs = pairs[pairs["model.width"].isin(widths)]
    if batch_sizes is not None:
        models = models[models["train.batch_size"].isin(batch_sizes)]
        pairs = pairs[pairs["train.batch_size"].isin(batch_sizes)]
    paths = write_sweep(out, models, pairs)
    manifest = {
        "sweep": SWEEP,
        "reference": str(Path(reference).resolve()),
        "widths": list(map(int, widths)) if widths is not None else None,
        "batch_sizes": list(map(int, batch_sizes)) if batch_sizes is not None else None,
        "n_models": int(len(models)),
        "n_pairs": int(len(pairs)),
    }
    (Path(out) / "taxonomy2021_import.json").write_text(json.dumps(manifest, indent=2))
    return paths


def threshold_margins(cells: pd.DataFrame, rule: "PhaseRule | None" = None) -> pd.DataFrame:
    """For each threshold of ``rule`` (default :class:`landscape.phase.PhaseRule`): the interval of values that
    gives every cell of ``cells`` the same phase as ``rule`` does, the other thresholds held fixed.

    ``cells``: one row per grid cell with the rule's columns (cell means, as from
    :func:`landscape.phase.aggregate_cells`). Returns one row per threshold: ``threshold``, ``value`` (the
    rule's), ``low``/``high`` (the nearest cell values on either side that would change a label; -inf/inf if
    none), ``closed`` (which end the rule's comparison includes), ``centre`` (the middle of the interval, the
    value farthest from every deciding cell), ``n_deciding`` (cells whose label this threshold decides).
    """
    from landscape.phase import PhaseRule

    r = rule or PhaseRule()
    tl = cells[r.train_loss_column].astype("float64").to_numpy()
    mc = cells[r.mc_column].astype("float64").to_numpy()
    ck = cells[r.cka_column].astype("float64").to_numpy()
    ok = np.isfinite(tl) & np.isfinite(mc)
    high = ok & (tl > r.train_loss)
    low = ok & ~high
    connected = low & (mc >= r.mc_barrier) & np.isfinite(ck)

    def interval(values: np.ndarray, at: float, above_if_ge: bool) -> tuple[float, float, str]:
        v = values[np.isfinite(values)]
        if above_if_ge:  # label "above" when value >= threshold: same labels for threshold in (max{v < t}, min{v >= t}]
            lo, hi, closed = v[v < at].max(initial=-np.inf), v[v >= at].min(initial=np.inf), "high"
        else:  # "above" when value > threshold: same labels for threshold in [max{v <= t}, min{v > t})
            lo, hi, closed = v[v <= at].max(initial=-np.inf), v[v > at].min(initial=np.inf), "low"
        return float(lo), float(hi), closed

    rows = []
    for name, values, value, ge in (
        ("train_loss", tl[ok], r.train_loss, False),
        ("mc_underfit", mc[high], r.mc_underfit, True),
        ("mc_barrier", mc[low], r.mc_barrier, True),
        ("cka", ck[connected], r.cka, True),
    ):
        lo, hi, closed = interval(values, value, ge)
        centre = 0.5 * (lo + hi) if np.isfinite(lo) and np.isfinite(hi) else float(value)
        if name == "train_loss" and lo > 0 and np.isfinite(hi):
            centre = float(np.sqrt(lo * hi))  # losses span decades: the geometric middle
        rows.append(
            {
                "threshold": name,
                "value": float(value),
                "low": lo,
                "high": hi,
                "closed": closed,
                "centre": centre,
                "n_deciding": int(np.isfinite(values).sum()),
            }
        )
    return pd.DataFrame(rows)


def fit_phase_thresholds(cells: pd.DataFrame, rule: "PhaseRule | None" = None) -> tuple["PhaseRule", pd.DataFrame]:
    """The max-margin thresholds that reproduce the phases ``rule`` gives ``cells``: each threshold moved to
    the centre of its :func:`threshold_margins` interval (one pass, in the rule's order: train loss, then the
    mc thresholds of each branch, then CKA). Returns the fitted rule and the margins table.

    What "fitted" means here: the paper draws its phase boundaries by hand and publishes no per-cell labels,
    and the project's default thresholds (0.05, 0, -0.5, 0.7) were set by hand so that the rule's map of the
    published results looks like Figure 1. The only data-driven freedom left is where inside the gap between
    the deciding cells each boundary sits; this function puts it in the middle, so the labels of ``cells``
    cannot change, and the table says how much room each threshold has (small room = a fragile boundary).
    The mc of the cells must come from :func:`landscape.connectivity.mode_connectivity` on the t grid the job
    uses (both default to the published grid ``t = 0, .25, .5, .75, 1``), or the thresholds do not transfer.
    """
    from landscape.phase import PhaseRule

    r = rule or PhaseRule()
    margins = threshold_margins(cells, r)
    for name in ("train_loss", "mc_underfit", "mc_barrier", "cka"):
        row = threshold_margins(cells, r).set_index("threshold").loc[name]
        r = dataclasses.replace(r, **{name: float(row["centre"])})
    return r, margins


#: The paper's 13 x 13 grid (Figure 1): the CSVs also hold width 1 and batch sizes 19 and 27.
PAPER_WIDTHS: tuple[int, ...] = (2, 3, 4, 6, 8, 11, 16, 23, 32, 45, 64, 91, 128)
PAPER_BATCH_SIZES: tuple[int, ...] = (16, 24, 32, 44, 64, 92, 128, 180, 256, 364, 512, 724, 1024)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path, help="sweep directory to write (results/models, results/pairs)")
    ap.add_argument("--reference", type=Path, default=DEFAULT_REFERENCE, help="folder of the reference CSVs")
    ap.add_argument("--paper-grid", action="store_true", help="only the paper's 13 x 13 grid")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    paths = import_reference(
        args.out,
        args.reference,
        PAPER_WIDTHS if args.paper_grid else None,
        PAPER_BATCH_SIZES if args.paper_grid else None,
    )
    print(f"{len(paths['models'])} cells written under {args.out / 'results'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

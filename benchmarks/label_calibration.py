"""Is the label confidence calibrated? Two sweeps of one grid with disjoint seed sets, labelled alike, compared.

Run the same grid twice into two directories with disjoint seeds (e.g. ``train.seeds=[0,1,2]`` and
``train.seeds=[3,4,5]``), then

    .venv/bin/python benchmarks/label_calibration.py SWEEP_A SWEEP_B [SWEEP_C ...] [--x KNOB --y KNOB] [--facet KNOB]
        [--thresholds paper|calibrate|NAME=VALUE ...] [--select FAMILY.SETTING=VALUE ...] [--bootstrap N]
        [--bins 0,0.5,0.7,0.9,1] [--cells] [--out DIR]

Each sweep is labelled by ``landscape-phase`` itself (``landscape.cli.phase.run``: the same row choice,
aggregation, rule and confidence; its outputs go to ``--out``/a or b, default a temporary directory). The
thresholds are resolved on sweep A as ``landscape-phase`` resolves them (defaults, A's sweep file, the flags)
and used unchanged for sweep B, so that both are labelled by one rule.

Printed, as Markdown (for a closing note):

* the share of cells labelled in both runs whose labels agree (and how many cells were labelled in one only);
* among the labels with confidence >= ``--high`` (0.9) in either run, the share kept: a label of run A is *kept*
  when run B gives the same label (and vice versa), both directions pooled; a cell unlabelled in the other
  run does not keep its label;
* per confidence bin (``--bins``, default [0, 0.5), [0.5, 0.7), [0.7, 0.9), [0.9, 1.0]): the number of labels
  and of distinct cells they come from, their mean confidence, the fraction kept (both directions pooled) and
  its Wilson 95 % interval, and the gap (fraction kept minus mean confidence) with its 95 % interval when the
  bin's cells are resampled. A calibrated confidence has the fraction kept near the mean confidence in every bin.
  The Wilson interval treats the labels as independent draws; labels of one cell are not (the same borderline
  cell recurs in both directions and in every pair of runs), so it is a lower bound on the real uncertainty,
  wider the fewer cells a bin holds; the cell-resampled interval of the gap takes the cell as the unit (with
  2-5 cells in a bin it is wide: how far a gap can be told from 0 with that many cells).

With three or more sweeps (seed sets), every pair of them is compared and the pairs are pooled at the end
(each cell's label then counts once per other run it is compared with: more labels per bin, not independent
ones). ``--cells`` adds the per-cell table (knobs, label and confidence in each run). With three or more sweeps it
also prints, per column the rule reads, how much more a cell's mean varies between runs than its values' spread
within a run predicts (:func:`rerun_variance_ratio`: ~1 for one value per model; pairs that share models more).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

DEFAULT_BINS = (0.0, 0.5, 0.7, 0.9, 1.0)


def paired_labels(a: pd.DataFrame, b: pd.DataFrame, by: Sequence[str]) -> pd.DataFrame:
    """One row per cell of either run (outer join on the knob columns ``by``): ``phase_a``, ``conf_a``,
    ``phase_b``, ``conf_b`` (None/NaN where a run has no label)."""
    by = list(by)

    def side(c: pd.DataFrame, s: str) -> pd.DataFrame:
        lab = c["phase"].where(c["phase"].map(lambda v: isinstance(v, str) and v != ""), None)
        return pd.DataFrame(
            {
                **{k: c[k] for k in by},
                f"phase_{s}": lab.astype(object),
                f"conf_{s}": pd.to_numeric(c.get("phase_confidence"), errors="coerce"),
            }
        )

    return side(a, "a").merge(side(b, "b"), on=by, how="outer").sort_values(by).reset_index(drop=True)


def _kept(paired: pd.DataFrame) -> pd.DataFrame:
    """Both directions pooled: one row per label of either run, ``conf``, ``kept`` (the other run gives the
    same label) and ``cell`` (the cell's knob values, the columns of ``paired`` other than the labels)."""
    knobs = [c for c in paired.columns if not c.startswith(("phase_", "conf_"))]
    out = []
    for s, o in (("a", "b"), ("b", "a")):
        has = paired[f"phase_{s}"].notna()
        sub = paired[has]
        out.append(
            pd.DataFrame(
                {
                    "conf": sub[f"conf_{s}"].to_numpy(dtype=float),
                    "kept": (sub[f"phase_{s}"] == sub[f"phase_{o}"]).to_numpy(dtype=bool),
                    "cell": list(sub[knobs].itertuples(index=False, name=None)),
                }
            )
        )
    return pd.concat(out, ignore_index=True)


def wilson_interval(kept: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """The Wilson score interval of a proportion, ``kept`` successes in ``n`` independent trials (95 % at the
    default ``z``): ``(p + z^2/2n -+ z sqrt(p(1-p)/n + z^2/4n^2)) / (1 + z^2/n)``; (nan, nan) for ``n = 0``."""
    if n <= 0:
        return float("nan"), float("nan")
    p = kept / n
    centre = p + z * z / (2 * n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    den = 1 + z * z / n
    return max(0.0, (centre - half) / den), min(1.0, (centre + half) / den)


def cell_bootstrap_gap(
    labels: pd.DataFrame, n_boot: int = 4000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """The ``level`` percentile interval of a bin's calibration gap, fraction kept minus mean confidence, when the
    bin's distinct cells are resampled with replacement (each drawn cell brings all of its labels in the bin):
    the labels of one cell are not independent (one borderline cell recurs in both directions and in every pair
    of runs), so the cell is the unit of resampling. ``labels``: rows ``conf``, ``kept``, ``cell`` (:func:`_kept`
    restricted to the bin). (nan, nan) for an empty bin; a single cell gives its own gap at both ends."""
    if labels.empty:
        return float("nan"), float("nan")
    g = labels.groupby("cell", sort=True)
    n_lab = g.size().to_numpy(dtype=float)
    s_kept = g["kept"].sum().to_numpy(dtype=float)
    s_conf = g["conf"].sum().to_numpy(dtype=float)
    rng = np.random.default_rng(seed)
    draw = rng.integers(0, n_lab.size, size=(n_boot, n_lab.size))
    gap = (s_kept[draw].sum(axis=1) - s_conf[draw].sum(axis=1)) / n_lab[draw].sum(axis=1)
    tail = 100 * (1 - level) / 2
    lo, hi = np.percentile(gap, [tail, 100 - tail])
    return float(lo), float(hi)


def rerun_variance_ratio(
    runs: Sequence[tuple[pd.DataFrame, pd.DataFrame]], by: Sequence[str], rule: Any = None
) -> dict[str, dict[str, float]]:
    """How much more a cell's mean varies between runs with disjoint seeds than its values' spread within a run
    predicts for independent values: per column the rule reads, ``sum over cells of var(run means) / sum of
    mean(s^2 / r)`` (``total``) and the median of the per-cell ratios (``median``), over cells with >= 3 measured
    values (exact or bounds) in >= 3 runs; the fit column on the log scale ``label_confidence`` uses. ~1 for
    independent values (one per model); for pair values that share models up to 4 for 3 seeds
    (``landscape.phase_stats.pair_design_effect``). ``runs``: ``(models, pairs)`` rows of each run."""
    from landscape.phase import PhaseRule, _cell_slots, fit_log_floor, measured_values, variance_scale

    rule = rule or PhaseRule.paper()
    slots = [_cell_slots(m, p, list(by), rule)[1] for m, p in runs]
    floors = {rule.fit_column: fit_log_floor(rule)}
    out: dict[str, dict[str, float]] = {}
    for col in rule.columns:
        across, within = [], []
        for key in slots[0][col]:
            means, s2 = [], []
            for sl in slots:
                x = variance_scale(measured_values(*sl[col].get(key, (np.empty(0), np.empty(0)))), floors.get(col))
                if x.size >= 3:
                    means.append(x.mean())
                    s2.append(x.var(ddof=1) / x.size)
            if len(means) >= 3 and np.mean(s2) > 0:
                across.append(np.var(means, ddof=1))
                within.append(np.mean(s2))
        a, w = np.array(across), np.array(within)
        out[col] = {
            "cells": int(a.size),
            "total": float(a.sum() / w.sum()) if a.size else float("nan"),
            "median": float(np.median(a / w)) if a.size else float("nan"),
        }
    return out


def calibration(paired: pd.DataFrame, bins: Sequence[float] = DEFAULT_BINS, high: float = 0.9) -> dict[str, Any]:
    """The numbers of the report from :func:`paired_labels`: ``n_cells``, ``n_both`` (labelled in both runs),
    ``n_one`` (in one only), ``agree`` (share of ``n_both`` with equal labels), ``n_high`` (labels with
    confidence >= ``high``, both runs), ``high_kept`` (their share kept), ``bins`` (rows ``lo``, ``hi``, ``n``,
    ``n_cells``: distinct cells, ``mean_conf``, ``kept``, ``ci``: its :func:`wilson_interval`, ``gap_ci``: the
    interval of ``kept - mean_conf`` with the cells resampled, :func:`cell_bootstrap_gap`; the last bin closed
    on the right)."""
    both = paired["phase_a"].notna() & paired["phase_b"].notna()
    one = paired["phase_a"].notna() ^ paired["phase_b"].notna()
    agree = float((paired.loc[both, "phase_a"] == paired.loc[both, "phase_b"]).mean()) if both.any() else float("nan")
    k = _kept(paired)
    hi = k[k["conf"] >= high]
    rows = []
    edges = list(bins)
    for i, (lo, up) in enumerate(zip(edges[:-1], edges[1:], strict=True)):
        last = i == len(edges) - 2
        sel = (k["conf"] >= lo) & ((k["conf"] <= up) if last else (k["conf"] < up))
        s = k[sel]
        rows.append(
            {
                "lo": lo,
                "hi": up,
                "closed": last,
                "n": int(len(s)),
                "n_cells": int(s["cell"].nunique()),
                "mean_conf": float(s["conf"].mean()) if len(s) else float("nan"),
                "kept": float(s["kept"].mean()) if len(s) else float("nan"),
                "ci": wilson_interval(int(s["kept"].sum()), int(len(s))),
                "gap_ci": cell_bootstrap_gap(s, seed=i),
            }
        )
    return {
        "n_cells": int(len(paired)),
        "n_both": int(both.sum()),
        "n_one": int(one.sum()),
        "agree": agree,
        "n_high": int(len(hi)),
        "high": high,
        "high_kept": float(hi["kept"].mean()) if len(hi) else float("nan"),
        "n_labels": int(len(k)),
        "no_conf": int(k["conf"].isna().sum()),
        "bins": rows,
    }


def _pct(v: float) -> str:
    return "-" if not np.isfinite(v) else f"{100 * v:.0f} %"


def markdown(res: dict[str, Any], title: str, paired: pd.DataFrame | None = None, by: Sequence[str] = ()) -> str:
    """The report as Markdown: a heading, the agreement lines, the bin table (and the cell table)."""
    lines = [
        f"### {title}",
        "",
        f"- cells: {res['n_cells']}; labelled in both runs: {res['n_both']}; in one only: {res['n_one']}",
        f"- labels agree in {_pct(res['agree'])} of the cells labelled in both runs",
        f"- labels with confidence >= {res['high']:g} in either run: {res['n_high']}, kept in the other run: "
        f"{_pct(res['high_kept'])}",
        "",
        "| confidence | labels (cells) | mean confidence | fraction kept | 95 % interval | kept - confidence, cells"
        " resampled (95 %) |",
        "|---|---:|---:|---:|---|---|",
    ]
    for r in res["bins"]:
        rng = f"[{r['lo']:g}, {r['hi']:g}{']' if r['closed'] else ')'}"
        mc = "-" if not np.isfinite(r["mean_conf"]) else f"{r['mean_conf']:.2f}"
        kept = "-" if not np.isfinite(r["kept"]) else f"{r['kept']:.2f}"
        lo, hi = r["ci"]
        ci = "-" if not np.isfinite(lo) else f"{lo:.2f}-{hi:.2f}"
        glo, ghi = r["gap_ci"]
        gap = "-" if not np.isfinite(glo) else f"{r['kept'] - r['mean_conf']:+.2f} ({glo:+.2f} to {ghi:+.2f})"
        lines.append(f"| {rng} | {r['n']} ({r['n_cells']}) | {mc} | {kept} | {ci} | {gap} |")
    if res.get("no_conf"):
        lines.append(f"\n({res['no_conf']} labels without a confidence are left out of the bins.)")
    if paired is not None:
        lines += ["", "| " + " | ".join(list(by) + ["run A", "run B"]) + " |", "|" + "---|" * (len(by) + 2)]
        for _, r in paired.iterrows():

            def lab(s: str) -> str:
                p, c = r[f"phase_{s}"], r[f"conf_{s}"]  # noqa: B023 (called within this iteration)
                return (
                    "-"
                    if p is None or (isinstance(p, float) and np.isnan(p))
                    else (f"{p} ({c:.2f})" if np.isfinite(c) else str(p))
                )

            lines.append("| " + " | ".join([f"{r[k]}" for k in by] + [lab("a"), lab("b")]) + " |")
    return "\n".join(lines)


def label_sweep(sweep: Path, out: Path, rule: Any = None, **kw: Any) -> tuple[pd.DataFrame, dict[str, Any]]:
    """``landscape-phase`` on ``sweep`` (outputs under ``out``; ``rule``: a ready phase rule, else resolved as
    the command resolves it): its ``cells.csv`` and ``manifest.json``."""
    from landscape.cli import phase as phase_cli

    paths = phase_cli.run(sweep, out=out, rule=rule, formats=("png",), **kw)
    cells = pd.read_csv(paths["cells.csv"])
    return cells, json.loads(Path(paths["manifest.json"]).read_text())


def rule_of(manifest: dict[str, Any]) -> Any:
    """The phase rule a ``landscape-phase`` manifest records (its thresholds, columns and source)."""
    from landscape.phase import PhaseRule

    t = manifest["thresholds"]
    values = {k: t[k]["value"] for k in PhaseRule.THRESHOLD_NAMES if isinstance(t.get(k), dict)}
    rule = PhaseRule.paper().with_overrides(values)
    import dataclasses

    return dataclasses.replace(rule, source=f"{t.get('source', 'paper')}, resolved on run A")


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "sweeps",
        type=Path,
        nargs="+",
        metavar="SWEEP",
        help="two or more sweeps of one grid with disjoint seed sets (the first resolves the thresholds)",
    )
    ap.add_argument("--x", default=None)
    ap.add_argument("--y", default=None)
    ap.add_argument("--facet", default=None)
    ap.add_argument("--thresholds", action="append", default=[], metavar="paper|calibrate|NAME=VALUE")
    ap.add_argument("--select", action="append", default=[], metavar="FAMILY.SETTING=VALUE")
    ap.add_argument("--bootstrap", type=int, default=None)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--bins", default=",".join(f"{b:g}" for b in DEFAULT_BINS), help="bin edges of confidence")
    ap.add_argument("--high", type=float, default=0.9, help="confidence of the 'high' labels (0.9)")
    ap.add_argument("--cells", action="store_true", help="also print the per-cell table")
    ap.add_argument("--title", default=None, help="heading of the report (default: the two directories)")
    ap.add_argument("--out", type=Path, default=None, help="where landscape-phase writes (default: a temporary dir)")
    args = ap.parse_args(argv)
    from landscape.cli import phase as phase_cli

    preset, overrides = phase_cli._split_thresholds(args.thresholds)
    bins = [float(b) for b in args.bins.split(",")]
    kw = dict(
        x=args.x, y=args.y, facet=args.facet, bootstrap=args.bootstrap, seed=args.seed, select=args.select or None
    )
    if len(args.sweeps) < 2:
        ap.error("give two or more sweeps (disjoint seed sets of one grid)")
    with tempfile.TemporaryDirectory() as tmp:
        root = args.out or Path(tmp)
        labelled = []
        cells_a, man_a = label_sweep(args.sweeps[0], root / "0", thresholds=preset, threshold_overrides=overrides, **kw)
        labelled.append(cells_a)
        kw.update(x=man_a["x"], y=man_a["y"], facet=man_a["facet"])
        for i, sweep in enumerate(args.sweeps[1:], start=1):
            labelled.append(label_sweep(sweep, root / str(i), rule=rule_of(man_a), **kw)[0])
    by = [k for k in (man_a["x"], man_a["y"], man_a["facet"]) if k]
    pooled = []
    for i, j in itertools.combinations(range(len(args.sweeps)), 2):
        paired = paired_labels(labelled[i], labelled[j], by)
        pooled.append(paired)
        title = args.title or f"{args.sweeps[i].name} vs {args.sweeps[j].name} ({', '.join(by)})"
        print(markdown(calibration(paired, bins, args.high), title, paired if args.cells else None, by))
    if len(pooled) > 1:  # every pair of runs: a cell's label counts once per other run it is compared with
        print(
            markdown(
                calibration(pd.concat(pooled, ignore_index=True), bins, args.high),
                f"pooled over the {len(pooled)} pairs of runs ({', '.join(by)})",
            )
        )
    if len(args.sweeps) >= 3:
        from landscape.results import load

        runs = [(load(d, table="models"), load(d, table="pairs")) for d in args.sweeps]
        ratio = rerun_variance_ratio(runs, by, rule_of(man_a))
        print(
            "\nbetween-run variance of a cell's mean / the within-run s^2 / r of its values (1 for independent "
            "values; pairs that share models: up to 4 for 3 seeds): "
            + "; ".join(
                f"{c} {r['total']:.2f} (median cell {r['median']:.2f}, {r['cells']} cells)" for c, r in ratio.items()
            )
        )
    print(f"\n({rule_of(man_a).describe()})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

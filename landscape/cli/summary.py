"""``python -m landscape.cli.summary SWEEP_DIR``: where a sweep's results are, and a short table of them."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from landscape.results import load, table_dir


def summarize(sweep_dir: Path) -> str:
    """Text: result locations, row counts by status, and mean test accuracy / training loss per cell."""
    models = load(sweep_dir, "models")
    lines = [f"results of {sweep_dir}:", f"  models rows: {table_dir(sweep_dir, 'models')}  ({len(models)} rows)"]
    pairs_dir = table_dir(sweep_dir, "pairs")
    if pairs_dir.is_dir():
        lines.append(f"  pairs rows:  {pairs_dir}  ({len(load(sweep_dir, 'pairs'))} rows)")
    lines.append(
        f"  read them:   pandas.read_parquet('{table_dir(sweep_dir, 'models')}')  or  landscape.results.load(...)"
    )
    if models.empty:
        return "\n".join(lines + ["  (no rows yet)"])
    lines.append("  status: " + ", ".join(f"{k} {v}" for k, v in models["status"].value_counts().items()))
    swept = [
        c
        for c in models.columns
        if c.split(".")[0] in ("data", "model", "train")
        and c not in ("data.n_train", "model.n_params")
        and models[c].astype(str).nunique() > 1
    ]
    done = models[models["status"] == "done"]
    if swept and not done.empty:
        table = done.groupby(swept)[["train_loss", "test_acc"]].agg(["mean", "count"])
        table.columns = [f"{a} {b}" for a, b in table.columns]
        with pd.option_context(
            "display.width", 200, "display.max_columns", None, "display.max_rows", 60, "display.precision", 4
        ):
            lines += ["", str(table)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("sweep_dir", type=Path)
    args = parser.parse_args(argv)
    print(summarize(args.sweep_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())

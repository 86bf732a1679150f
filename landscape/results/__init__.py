"""Results: the versioned row schema of each table and Parquet I/O (the contract with analysis).

A sweep directory holds ``results/<table>/<cell_id>.parquet`` for ``table`` in ``models`` (one row per
trained model), ``pairs`` (one row per pair of models of a cell) and any long table of a metric family.
Read them with ``load(sweep_dir, "models")``, ``pandas.read_parquet(sweep_dir / "results/models")`` or DuckDB
``read_parquet('<sweep_dir>/results/models/*.parquet', union_by_name=true)``.
"""

from landscape.results.io import load, read_table, table_dir, write_table
from landscape.results.schema import SCHEMA_VERSION, schema_for

__all__ = ["SCHEMA_VERSION", "load", "read_table", "schema_for", "table_dir", "write_table"]

"""Results: the versioned row schema of each table and Parquet I/O (the contract with analysis).

A sweep directory holds ``results/<table>/<cell_id>-<key>.parquet`` for ``table`` in ``models`` (one row per
trained model), ``pairs`` (one row per pair of models of a cell) and any long table of a metric family;
``key`` hashes the settings of that table's metric families (``landscape.job.table_keys``), and a file holds
every seed (pair) of its cell ever computed with those settings. Read them with ``load(sweep_dir, "models")``
(only files committed by their cell's status, with a matching SHA-256), ``pandas.read_parquet(sweep_dir /
"results/models")`` or DuckDB ``read_parquet('<sweep_dir>/results/models/*.parquet', union_by_name=true)``
(the raw files, unchecked).
"""

from landscape.results.io import load, read_table, table_dir, write_table
from landscape.results.schema import SCHEMA_VERSION, schema_for

__all__ = ["SCHEMA_VERSION", "load", "read_table", "schema_for", "table_dir", "write_table"]

"""The plain-pandas baseline of benchmarks/run.py figure 4: read the rows into a DataFrame, write a CSV.

    .venv/bin/python benchmarks/pandas_export.py DATABASE.duckdb "SELECT ..." OUT.csv

What a data engineer would write without the product: DuckDB's own DataFrame conversion (faster than
``pd.read_sql`` through DB-API) and ``DataFrame.to_csv``. The parent times the whole process.
"""

from __future__ import annotations

import sys

import duckdb
import pandas as pd  # noqa: F401 - the DataFrame API used below


def main() -> int:
    database, query, out = sys.argv[1], sys.argv[2], sys.argv[3]
    con = duckdb.connect(database, read_only=True)
    try:
        df = con.sql(query).df()
    finally:
        con.close()
    df.to_csv(out, index=False)
    print(len(df))
    return 0


if __name__ == "__main__":
    sys.exit(main())

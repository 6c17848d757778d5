"""`dinmo preview`: change counts and samples, nothing written, the baseline left alone."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import duckdb

PROJECT = """
sources:
  wh: {type: duckdb, path: wh.duckdb}
models:
  customers: {source: wh, table: raw.customers, primary_key: customer_id}
segments:
  big:
    model: customers
    filter: {all: [{attribute: ltv, op: gt, value: 500}]}
destinations:
  out: {type: local, path: out}
activations:
  big_diff: {segment: big, destination: out, file_name: big, sync_mode: difference}
"""


def dinmo(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, DAGSTER_HOME=str(tmp_path / "dh"))
    return subprocess.run([sys.executable, "-m", "dinmo_dagster.cli", "--project", str(tmp_path), *args],
                          check=False, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)


def test_preview_shows_changes_and_writes_nothing(tmp_path: Path) -> None:
    (tmp_path / "dinmo.yaml").write_text(textwrap.dedent(PROJECT))
    with duckdb.connect(str(tmp_path / "wh.duckdb")) as con:
        con.execute("create schema raw")
        con.execute("create table raw.customers as select range as customer_id, range * 100 as ltv "
                    "from range(1, 11)")
    first = dinmo(tmp_path, "sync", "big_diff")
    assert first.returncode == 0, first.stdout + first.stderr
    with duckdb.connect(str(tmp_path / "wh.duckdb")) as con:
        con.execute("update raw.customers set ltv = 5000 where customer_id = 10")
        con.execute("insert into raw.customers values (11, 1100)")
    files_before = {p: p.read_bytes() for p in (tmp_path / "out").iterdir()}
    preview = dinmo(tmp_path, "preview", "big_diff")
    assert preview.returncode == 0, preview.stdout + preview.stderr
    lines = preview.stdout.splitlines()
    assert lines[0] == "segment SQL (duckdb):"
    assert lines[1] == '  SELECT * FROM "dinmo_segments"."model_customers" AS m WHERE m."ltv" > 500'
    assert ("preview big_diff: delta sync: 1 added, 1 updated, 0 removed, 4 unchanged "
            "(nothing written, baseline unchanged)") in lines
    assert "  would write big_added.csv" in lines and "  would write big_removed.csv" in lines
    assert "    {'customer_id': 11, 'ltv': 1100}" in lines
    assert "    {'customer_id': 10, 'ltv': 5000}" in lines
    assert {p: p.read_bytes() for p in (tmp_path / "out").iterdir()} == files_before
    # The baseline did not move: the real sync sees the same changes.
    second = dinmo(tmp_path, "sync", "big_diff")
    assert "delta sync (difference, full_then_delta): 1 added, 1 updated, 0 removed, 4 unchanged" in second.stdout
    with duckdb.connect(str(tmp_path / "wh.duckdb"), read_only=True) as con:
        tables = {r[0] for r in con.execute("select table_name from information_schema.tables "
                                            "where table_schema = 'dinmo_delta_storage'").fetchall()}
    assert not any("preview" in t for t in tables)

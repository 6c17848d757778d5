"""`dinmo preview`: change counts and samples, nothing written, the baseline left alone."""

from __future__ import annotations

import csv
import io
import json
import os
import re
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
  big_diff: {segment: big, destination: out, file_name: "big_{X}", sync_mode: difference}
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
    stem = next(ln for ln in lines if ln.startswith("  would write ")).removeprefix("  would write ")[:14]
    assert re.fullmatch(r"big_\d{10}", stem)
    assert [ln for ln in lines if ln.startswith("  would write ")] == [
        f"  would write {stem}_{kind}.csv" for kind in ("added", "updated", "removed")]
    added = lines.index(f"  first 1 row(s) of {stem}_added.csv:")
    assert lines[added + 1:added + 3] == ["    customer_id,ltv", "    11,1100"]
    updated = lines.index(f"  first 1 row(s) of {stem}_updated.csv:")
    assert lines[updated + 1:updated + 3] == ["    customer_id,ltv", "    10,5000"]
    assert {p: p.read_bytes() for p in (tmp_path / "out").iterdir()} == files_before
    # The baseline did not move: the real sync sees the same changes.
    second = dinmo(tmp_path, "sync", "big_diff")
    assert "delta sync (difference, full_then_delta): 1 added, 1 updated, 0 removed, 4 unchanged" in second.stdout
    with duckdb.connect(str(tmp_path / "wh.duckdb"), read_only=True) as con:
        tables = {r[0] for r in con.execute("select table_name from information_schema.tables "
                                            "where table_schema = 'dinmo_delta_storage'").fetchall()}
    assert not any("preview" in t for t in tables)


TYPED = """
sources:
  wh: {type: duckdb, path: wh.duckdb}
models:
  people: {source: wh, table: raw.people, primary_key: id}
segments:
  everyone: {model: people, sql: "select * from {{ model }}"}
destinations:
  out: {type: local, path: out}
activations:
  people_csv:
    {segment: everyone, destination: out, file_name: "people_{X}", csv: {delimiter: ";"}, sync_mode: upsert,
     mapping: {id: ID, amount: Amount, seen_at: seen, note: Note}}
  people_json: {segment: everyone, destination: out, folder: json, file_name: "people_{X}", format: json}
"""


def typed_project(tmp_path: Path) -> None:
    (tmp_path / "dinmo.yaml").write_text(textwrap.dedent(TYPED))
    with duckdb.connect(str(tmp_path / "wh.duckdb")) as con:
        con.execute("create schema raw")
        con.execute("create table raw.people (id int, amount decimal(12, 2), seen_at timestamp, note text)")
        con.execute("insert into raw.people values (1, 1938.08, '2025-04-14 09:05:07.042', 'a;b'), "
                    "(2, 12.50, null, ''), (3, null, '2025-01-01 00:00:00', null)")


def test_preview_shows_rows_as_the_file_holds_them(tmp_path: Path) -> None:
    typed_project(tmp_path)
    preview = dinmo(tmp_path, "preview", "people_csv")
    assert preview.returncode == 0, preview.stdout + preview.stderr
    assert "Decimal(" not in preview.stdout and "datetime" not in preview.stdout
    lines = preview.stdout.splitlines()
    start = lines.index("  first 3 row(s) of " + lines[lines.index("preview people_csv: full sync: 3 added, 0 updated, "
                        "0 removed, 0 unchanged (nothing written, baseline unchanged)") + 1].split()[-1] + ":")
    shown = [ln.removeprefix("    ") for ln in lines[start + 1:start + 5]]
    assert shown[0] == "ID;Amount;seen;Note"
    assert sorted(shown[1:]) == ['1;1938.08;2025-04-14T09:05:07.042000;"a;b"', '2;12.50;;""',
                                 "3;;2025-01-01T00:00:00.000000;"]

    # The sync writes exactly those lines.
    sync = dinmo(tmp_path, "sync", "people_csv")
    assert sync.returncode == 0, sync.stdout + sync.stderr
    [path] = (tmp_path / "out").glob("people_*.csv")
    text = path.read_text()
    assert text.splitlines()[0] == shown[0] and sorted(text.splitlines()[1:]) == sorted(shown[1:])
    assert min(csv.reader(io.StringIO(text), delimiter=";")) == ["1", "1938.08", "2025-04-14T09:05:07.042000", "a;b"]

    preview = dinmo(tmp_path, "preview", "people_json")
    assert preview.returncode == 0, preview.stdout + preview.stderr
    lines = preview.stdout.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("  first 3 row(s) of people_"))
    assert lines[start].endswith(".json:")
    objects = [json.loads(ln) for ln in lines[start + 1:start + 4]]
    assert '"amount":1938.08' in lines[start + 1:start + 4][[o["id"] for o in objects].index(1)]
    sync = dinmo(tmp_path, "sync", "people_json")
    assert sync.returncode == 0, sync.stdout + sync.stderr
    [path] = (tmp_path / "out" / "json").glob("people_*.json")
    assert sorted(json.loads(path.read_text()), key=lambda o: o["id"]) == sorted(objects, key=lambda o: o["id"])


def test_preview_of_a_broken_project_reports_what_validate_reports(tmp_path: Path) -> None:
    typed_project(tmp_path)
    with duckdb.connect(str(tmp_path / "wh.duckdb")) as con:
        con.execute("drop table raw.people")
    preview = dinmo(tmp_path, "preview", "people_csv")
    validate = dinmo(tmp_path, "validate", "--connect")
    assert (preview.returncode, validate.returncode) == (1, 1)
    assert preview.stdout.splitlines() == validate.stdout.splitlines() == [
        f"1 problem(s) in {tmp_path} (checked with --connect):",
        "  models.people: table raw.people does not exist"]
    assert preview.stderr == ""

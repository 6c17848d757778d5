"""Models' and segments' views, compiled and built by the engine alone (no Dagster), on DuckDB."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from dinmo_dagster.compile import CompileError, refresh_views
from dinmo_dagster.config import load_project
from dinmo_dagster.warehouses import warehouse_from_config

PROJECT = """
sources:
  wh: {type: duckdb, path: wh.duckdb}
models:
  customers:
    source: wh
    table: raw.customers
    primary_key: customer_id
    relationships: [{name: orders, model: orders, type: one_to_many, on: {customer_id: customer_id}}]
    calculated_fields: [{name: order_count, type: aggregate, relation: orders, function: count}]
  orders: {source: wh, table: raw.orders, primary_key: order_id}
segments:
  buyers: {model: customers, filter: {all: [{attribute: order_count, op: gte, value: 1}]}}
  others: {model: customers, filter: {all: [{segment: buyers, op: not_in}]}}
  emails: {model: customers, sql: "select email from {{ model }}"}
destinations:
  out: {type: local, path: out}
activations:
  to_others: {segment: others, destination: out, file_name: others}
  to_emails: {segment: emails, destination: out, file_name: emails}
"""


@pytest.fixture
def project_dir(tmp_path: Path) -> Path:
    (tmp_path / "dinmo.yaml").write_text(PROJECT)
    with duckdb.connect(str(tmp_path / "wh.duckdb")) as con:
        con.execute("create schema raw")
        con.execute("create table raw.customers as select * from (values (1, 'a@x.io'), (2, 'b@x.io'), "
                    "(3, 'c@x.io')) t(customer_id, email)")
        con.execute("create table raw.orders as select * from (values (10, 1), (11, 1), (12, 3)) t(order_id, customer_id)")
    return tmp_path


def test_an_activations_views_are_built_without_dagster(project_dir: Path) -> None:
    """The views an activation reads (its model, the related model, the segment its filter names, its
    segment) are created in dependency order, in a process that never imports Dagster."""
    code = f"""
import sys
from dinmo_dagster.compile import refresh_views
from dinmo_dagster.config import load_project
from dinmo_dagster.warehouses import warehouse_from_config
project = load_project({str(project_dir)!r})
wh = warehouse_from_config("wh", {{"type": "duckdb", "path": {str(project_dir / "wh.duckdb")!r}}})
refresh_views(wh, project, "to_others")
print(wh.query("select customer_id, email, order_count from dinmo_segments.segment_others order by 1"))
print(wh.query("select customer_id from dinmo_segments.segment_buyers order by 1"))
print(sorted(m for m in sys.modules if m.split(".")[0] == "dagster"))
"""
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, timeout=120)
    assert out.stdout.splitlines() == ["[(2, 'b@x.io', 0)]", "[(1,), (3,)]", "[]"]


def test_a_segment_without_the_primary_key_names_its_key_path(project_dir: Path) -> None:
    wh = warehouse_from_config("wh", {"type": "duckdb", "path": str(project_dir / "wh.duckdb")})
    with pytest.raises(CompileError) as err:
        refresh_views(wh, load_project(project_dir), "to_emails")
    assert str(err.value) == ("segments.emails: the segment does not return the primary key 'customer_id' of "
                              "model 'customers'; columns: email")

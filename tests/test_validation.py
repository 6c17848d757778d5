"""`dinmo validate --connect` (validation.check_project) against a real DuckDB warehouse.

Each test breaks one thing a sync would trip over later and checks the exact line validation prints
for it, with the entity to blame first (the validation sensor pauses what depends on that entity).
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import duckdb
import pytest

from dinmo_dagster.config import load_project
from dinmo_dagster.validation import validate_connections

PROJECT = """
sources:
  wh: {type: duckdb, path: wh.duckdb}
models:
  customers:
    source: wh
    table: raw.customers
    primary_key: customer_id
    order_by: updated_at
    relationships:
      - {name: orders, model: orders, type: one_to_many, on: {customer_id: customer_id}}
  orders:
    source: wh
    table: raw.orders
    primary_key: order_id
segments:
  everyone:
    model: customers
    sql: "select * from {{ model }}"
destinations:
  out: {type: local, path: out}
activations:
  daily:
    segment: everyone
    destination: out
    file_name: "customers_{X}"
    format: parquet
    mapping: {customer_id: id, email: email}
    trigger: {watermark_column: updated_at}
"""
CUSTOMER_COLUMNS = "customer_id, email, updated_at, membership"


@pytest.fixture
def project_dir(tmp_path: Path) -> Path:
    with duckdb.connect(str(tmp_path / "wh.duckdb")) as con:
        con.execute("create schema raw")
        con.execute("create table raw.customers (customer_id integer, email varchar, updated_at timestamp, "
                    "membership interval)")
        con.execute("insert into raw.customers values (1, 'a@x.io', '2025-04-14 09:00:00', interval 3 day)")
        con.execute("create table raw.orders (order_id integer, customer_id integer, amount decimal(10, 2))")
        con.execute("insert into raw.orders values (10, 1, 12.50)")
    return tmp_path


def problems(project_dir: Path, old: str = "", new: str = "") -> list[str]:
    text = PROJECT.replace(old, new) if old else PROJECT
    assert text != PROJECT or not old, f"{old!r} is not in the project"
    (project_dir / "dinmo.yaml").write_text(textwrap.dedent(text))
    return validate_connections(load_project(project_dir))


def test_a_sound_project_has_no_problem(project_dir: Path) -> None:
    assert problems(project_dir) == []


def test_order_by_column_must_exist(project_dir: Path) -> None:
    assert problems(project_dir, "order_by: updated_at", "order_by: updated") == [
        f"models.customers: order_by: column 'updated' does not exist; columns: {CUSTOMER_COLUMNS}"]


def test_relationship_columns_must_exist_in_this_model(project_dir: Path) -> None:
    assert problems(project_dir, "on: {customer_id: customer_id}", "on: {cust_id: customer_id}") == [
        f"models.customers: relationships[0].on: column 'cust_id' does not exist; columns: {CUSTOMER_COLUMNS}"]


def test_relationship_columns_must_exist_in_the_related_model(project_dir: Path) -> None:
    assert problems(project_dir, "on: {customer_id: customer_id}", "on: {customer_id: client_id}") == [
        ("models.customers: relationships[0].on: column 'client_id' does not exist in model 'orders'; "
        "columns: order_id, customer_id, amount")]


def test_trigger_watermark_column_must_exist(project_dir: Path) -> None:
    assert problems(project_dir, "watermark_column: updated_at", "watermark_column: changed_at") == [
        (f"activations.daily: trigger.watermark_column: column 'changed_at' does not exist in model "
        f"'customers'; columns: {CUSTOMER_COLUMNS}")]


def test_interval_column_exported_as_parquet_is_reported(project_dir: Path) -> None:
    mapped = "mapping: {customer_id: id, email: email, membership: member_for}"
    assert problems(project_dir, "mapping: {customer_id: id, email: email}", mapped) == [
        ('activations.daily: format parquet: column "member_for" has type INTERVAL, which Parquet cannot '
        "hold: cast it in the segment (for example to VARCHAR or to a number of seconds)")]


def test_interval_column_exported_as_csv_is_fine(project_dir: Path) -> None:
    mapped = "mapping: {customer_id: id, email: email, membership: member_for}\n    csv: {header: true}"
    text = PROJECT.replace("format: parquet", "format: csv")
    (project_dir / "dinmo.yaml").write_text(textwrap.dedent(
        text.replace("mapping: {customer_id: id, email: email}", mapped)))
    assert validate_connections(load_project(project_dir)) == []


def test_without_mapping_every_segment_column_is_checked(project_dir: Path) -> None:
    assert problems(project_dir, "    mapping: {customer_id: id, email: email}\n", "") == [
        ('activations.daily: format parquet: column "membership" has type INTERVAL, which Parquet cannot '
        "hold: cast it in the segment (for example to VARCHAR or to a number of seconds)")]


def test_filters_at_the_depth_limit_validate_and_materialize(project_dir: Path) -> None:
    """The deepest filters the loader accepts (12 levels) compile, parse back and run inside a Dagster run."""
    import dagster as dg

    from dinmo_dagster.definitions import build_definitions

    def nots(levels: int, leaf: str) -> str:
        return "{not: " * (levels - 1) + leaf + "}" * (levels - 1)

    def hops(levels: int, leaf: str) -> str:
        text = leaf
        for level in range(levels - 1, 0, -1):  # level 1 is on customers, level 2 on orders, ...
            text = f"{{relation: {'orders' if level % 2 else 'customer'}, exists: true, where: {text}}}"
        return text

    with duckdb.connect(str(project_dir / "wh.duckdb")) as con:
        con.execute("insert into raw.customers values (2, 'b@x.io', '2025-04-14 10:00:00', null)")
    alls = "{all: [" * 11 + "{attribute: amount, op: gt, value: 10}" + "]}" * 11
    text = PROJECT.replace("    order_by: updated_at\n", f"""    order_by: updated_at
    calculated_fields:
      - {{name: big_orders, type: aggregate, relation: orders, function: count, where: {alls}}}
""").replace("    primary_key: order_id\n", """    primary_key: order_id
    relationships:
      - {name: customer, model: customers, type: many_to_one, on: {customer_id: customer_id}}
""").replace("segments:\n", f"""segments:
  deep_not:
    model: customers
    filter: {nots(12, "{attribute: email, op: eq, value: a@x.io}")}
  deep_hops:
    model: customers
    filter: {hops(12, "{attribute: amount, op: gt, value: 10}")}
""")
    (project_dir / "dinmo.yaml").write_text(textwrap.dedent(text))
    project = load_project(project_dir)
    assert validate_connections(project) == []
    job = dg.define_asset_job("all", selection=dg.AssetSelection.key_prefixes(["models"], ["segments"]))
    defs = dg.Definitions.merge(build_definitions(project), dg.Definitions(jobs=[job]))
    assert defs.resolve_job_def("all").execute_in_process(instance=dg.DagsterInstance.ephemeral()).success
    with duckdb.connect(str(project_dir / "wh.duckdb"), read_only=True) as con:
        def rows(sql: str) -> list[tuple]:
            return con.execute(sql).fetchall()

        assert rows("select customer_id from dinmo_segments.segment_deep_not") == [(2,)]  # 11 nots: not a@x.io
        assert rows("select customer_id from dinmo_segments.segment_deep_hops") == [(1,)]
        assert rows("select customer_id, big_orders from dinmo_segments.model_customers order by 1") == [(1, 1), (2, 0)]

"""No-code segments, calculated fields and segment statistics, materialized through Dagster from YAML."""

from __future__ import annotations

import textwrap
from datetime import datetime, timedelta
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from dinmo_dagster.config import load_project
from dinmo_dagster.definitions import build_definitions

PROJECT = """
sources:
  wh: {type: duckdb, path: wh.duckdb}
models:
  customers:
    source: wh
    table: raw.customers
    primary_key: customer_id
    categorical: [country]
    relationships:
      - {name: orders, model: orders, type: one_to_many, on: {customer_id: customer_id}}
    calculated_fields:
      - {name: order_count, type: aggregate, relation: orders, function: count}
      - {name: ltv_band, type: formula, sql: "case when ltv > 500 then 'high' else 'low' end"}
  orders:
    source: wh
    kind: fact
    table: raw.orders
    primary_key: order_id
    time_column: ordered_at
segments:
  shoe_fans:
    model: customers
    filter:
      all:
        - {attribute: country, op: in, value: [FR, DE]}
        - {attribute: ltv, op: gt, value: 100}
        - relation: orders
          count: {op: gte, value: 2}
          where:
            all:
              - {attribute: product_type, op: eq, value: shoes}
              - {attribute: ordered_at, op: within_last, value: 90 days}
  high_band:
    model: customers
    filter: {all: [{attribute: ltv_band, op: eq, value: high}]}
  not_shoe_fans:
    model: customers
    filter: {all: [{segment: shoe_fans, op: not_in}, {attribute: name, op: neq, value: "' or 1=1 --"}]}
destinations:
  out: {type: local, path: out}
activations:
  fans:
    segment: shoe_fans
    destination: out
    file_name: fans
    mapping: {customer_id: id, order_count: orders, ltv_band: band}
"""

NOW = datetime.now().replace(microsecond=0)
CUSTOMERS = [  # id, name, country, ltv
    (1, "Ann", "FR", 900), (2, "Bob", "DE", 150), (3, "Cid", "FR", 50), (4, "Dee", "ES", 800),
    (5, "O'Neil", "DE", 600), (6, "Fay", None, 700),
]
ORDERS = [  # id, customer, product_type, days ago
    (1, 1, "shoes", 5), (2, 1, "shoes", 40), (3, 2, "shoes", 10), (4, 2, "shoes", 200), (5, 2, "bags", 3),
    (6, 3, "shoes", 1), (7, 3, "shoes", 2), (8, 4, "shoes", 1), (9, 4, "shoes", 2), (10, 5, "shoes", 89),
    (11, 5, "shoes", 30), (12, 5, "hats", 1),
]


def expected_shoe_fans() -> set[int]:
    """The documented shoe-fans example, computed in Python from the same rows."""
    fans = set()
    for cid, _name, country, ltv in CUSTOMERS:
        recent_shoes = [o for o in ORDERS if o[1] == cid and o[2] == "shoes" and o[3] < 90]
        if country in ("FR", "DE") and ltv > 100 and len(recent_shoes) >= 2:
            fans.add(cid)
    return fans


@pytest.fixture
def project_dir(tmp_path: Path) -> Path:
    (tmp_path / "dinmo.yaml").write_text(textwrap.dedent(PROJECT))
    with duckdb.connect(str(tmp_path / "wh.duckdb")) as con:
        con.execute("create schema raw")
        con.execute("create table raw.customers (customer_id int, name varchar, country varchar, ltv int)")
        con.executemany("insert into raw.customers values (?, ?, ?, ?)", CUSTOMERS)
        con.execute("create table raw.orders (order_id int, customer_id int, product_type varchar, "
                    "ordered_at timestamp)")
        con.executemany("insert into raw.orders values (?, ?, ?, ?)",
                        [(o, c, p, NOW - timedelta(days=d)) for o, c, p, d in ORDERS])
    return tmp_path


def materialize_all(project_dir: Path, raise_on_error: bool = True,
                    instance: dg.DagsterInstance | None = None) -> dg.ExecuteInProcessResult:
    defs = build_definitions(load_project(project_dir))
    job = dg.define_asset_job("segments_job", selection=dg.AssetSelection.key_prefixes(["models"], ["segments"]))
    defs = dg.Definitions.merge(defs, dg.Definitions(jobs=[job]))
    return defs.resolve_job_def("segments_job").execute_in_process(
        instance=instance or dg.DagsterInstance.ephemeral(), raise_on_error=raise_on_error)


def column_table(instance: dg.DagsterInstance, *key: str) -> list[tuple[str, str, str | None]]:
    """The ``dagster/column_schema`` of an asset's last materialization: (name, type, role) per column."""
    event = instance.get_latest_materialization_event(dg.AssetKey(list(key)))
    assert event is not None and event.asset_materialization is not None
    schema = event.asset_materialization.metadata["dagster/column_schema"].value
    return [(c.name, c.type, c.description) for c in schema.columns]


def members(project_dir: Path, segment: str) -> set[int]:
    with duckdb.connect(str(project_dir / "wh.duckdb"), read_only=True) as con:
        return {r[0] for r in con.execute(f"select customer_id from dinmo_segments.segment_{segment}").fetchall()}


def test_filter_segment_matches_the_spec_example(project_dir: Path) -> None:
    result = materialize_all(project_dir)
    assert result.success
    assert expected_shoe_fans() == {1, 5}
    assert members(project_dir, "shoe_fans") == {1, 5}
    # Calculated fields are columns of the model, usable in filters.
    assert members(project_dir, "high_band") == {1, 4, 5, 6}
    # Excluding another segment's members; an injection attempt is only a value.
    assert members(project_dir, "not_shoe_fans") == {2, 3, 4, 6}


def test_calculated_fields_are_model_columns(project_dir: Path) -> None:
    materialize_all(project_dir)
    with duckdb.connect(str(project_dir / "wh.duckdb"), read_only=True) as con:
        rows = con.execute("select customer_id, order_count, ltv_band from dinmo_segments.model_customers "
                           "order by 1").fetchall()
    assert rows == [(1, 2, "high"), (2, 3, "low"), (3, 2, "low"), (4, 2, "high"), (5, 3, "high"), (6, 0, "high")]


def test_segment_statistics_after_three_materializations(project_dir: Path) -> None:
    for _ in range(3):
        assert materialize_all(project_dir).success
    with duckdb.connect(str(project_dir / "wh.duckdb"), read_only=True) as con:
        sizes = con.execute("select segment, size, model_size, share_pct from dinmo_stats.segment_sizes "
                            "where segment = 'shoe_fans'").fetchall()
        breakdown = con.execute(
            "select value, size, pct from dinmo_stats.segment_breakdowns where segment = 'high_band' "
            "and property = 'country' and measured_at = (select max(measured_at) from "
            "dinmo_stats.segment_breakdowns where segment = 'high_band') order by value nulls last").fetchall()
        overlap = con.execute(
            "select segment_a, segment_b, overlap from dinmo_stats.segment_overlaps where segment_a = 'high_band' "
            "and segment_b = 'shoe_fans' order by measured_at desc limit 1").fetchall()
    assert sizes == [("shoe_fans", 2, 6, pytest.approx(33.3333, abs=1e-3))] * 3
    assert breakdown == [("DE", 1, 25.0), ("ES", 1, 25.0), ("FR", 1, 25.0), (None, 1, 25.0)]
    assert overlap == [("high_band", "shoe_fans", 2)]


def test_unknown_attribute_fails_with_the_valid_ones(project_dir: Path) -> None:
    text = (project_dir / "dinmo.yaml").read_text().replace("attribute: ltv, op: gt", "attribute: ltvv, op: gt")
    (project_dir / "dinmo.yaml").write_text(text)
    result = materialize_all(project_dir, raise_on_error=False)
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure and e.step_key == "segments__shoe_fans")
    message = failure.step_failure_data.user_failure_data.description
    assert message.startswith("segments.shoe_fans.filter.all[1].attribute: unknown attribute 'ltvv' of model "
                              "'customers'")
    assert "customer_id" in message and "ltv_band" in message


def test_materialized_model_is_a_table_refreshed_by_its_own_schedule(project_dir: Path) -> None:
    text = (project_dir / "dinmo.yaml").read_text().replace(
        "    primary_key: order_id\n", "    primary_key: order_id\n    materialized: true\n"
        "    schedule: {at: \"03:00\", days: [mon, thu], timezone: Europe/Paris}\n")
    (project_dir / "dinmo.yaml").write_text(text)
    defs = build_definitions(load_project(project_dir))
    schedule = defs.resolve_schedule_def("model_orders_refresh")
    assert (schedule.cron_schedule, schedule.execution_timezone, schedule.job_name) == (
        "0 3 * * 1,4", "Europe/Paris", "refresh_model_orders")
    instance = dg.DagsterInstance.ephemeral()
    for _ in range(2):
        assert defs.resolve_job_def("refresh_model_orders").execute_in_process(instance=instance).success
    with duckdb.connect(str(project_dir / "wh.duckdb"), read_only=True) as con:
        kind = con.execute("select table_type from information_schema.tables where table_schema = "
                           "'dinmo_segments' and table_name = 'model_orders'").fetchone()
        count = con.execute("select count(*) from dinmo_segments.model_orders").fetchone()
    assert kind == ("BASE TABLE",) and count == (len(ORDERS),)
    history = instance.fetch_materializations(dg.AssetKey(["models", "orders"]), limit=10).records
    assert [r.asset_materialization.metadata["dagster/row_count"].value for r in history] == [12, 12]


def test_validate_connect_on_a_project_that_never_synced(project_dir: Path) -> None:
    from dinmo_dagster.validation import validate_connections

    assert validate_connections(load_project(project_dir)) == []
    with duckdb.connect(str(project_dir / "wh.duckdb")) as con:
        con.execute("alter table raw.customers drop column country")
    # The model is the culprit; its segments are not reported again.
    assert validate_connections(load_project(project_dir)) == [
        "models.customers: column 'country' does not exist; columns: customer_id, name, ltv, order_count, ltv_band"]


def test_column_schema_has_the_warehouse_types(project_dir: Path) -> None:
    instance = dg.DagsterInstance.ephemeral()
    assert materialize_all(project_dir, instance=instance).success
    customers = [
        ("customer_id", "INTEGER", "primary key"), ("name", "VARCHAR", None), ("country", "VARCHAR", "categorical"),
        ("ltv", "INTEGER", None), ("order_count", "BIGINT", "calculated (aggregate)"),
        ("ltv_band", "VARCHAR", "calculated (formula)"),
    ]
    assert column_table(instance, "models", "customers") == customers
    assert column_table(instance, "segments", "shoe_fans") == customers
    assert column_table(instance, "models", "orders") == [
        ("order_id", "INTEGER", "primary key"), ("customer_id", "INTEGER", None), ("product_type", "VARCHAR", None),
        ("ordered_at", "TIMESTAMP", "event time")]


def test_column_schema_on_postgres(tmp_path: Path, postgres_server, monkeypatch: pytest.MonkeyPatch) -> None:
    import psycopg

    server = postgres_server
    monkeypatch.setenv("PG_PASSWORD", server.password)
    (tmp_path / "dinmo.yaml").write_text(textwrap.dedent(f"""
        sources:
          pg: {{type: postgres, host: {server.host}, port: {server.port}, database: {server.database},
                user: {server.user}, password: {{env: PG_PASSWORD}}}}
        models:
          buyers: {{source: pg, table: colschema_raw.buyers, primary_key: buyer_id, identifiers: [email]}}
        segments:
          big: {{model: buyers, sql: "select buyer_id, email, ltv from {{{{ model }}}} where ltv > 10"}}
        """))
    helper = ("dinmo_segments", "dinmo_stats", "dinmo_delta_storage")
    with psycopg.connect(server.dsn, autocommit=True) as con:
        con.execute("create schema colschema_raw")
        con.execute("create table colschema_raw.buyers (buyer_id bigint, email varchar(80), ltv numeric(12, 2), "
                    "seen timestamptz, vip boolean)")
    try:
        instance = dg.DagsterInstance.ephemeral()
        assert materialize_all(tmp_path, instance=instance).success
        assert column_table(instance, "models", "buyers") == [
            ("buyer_id", "bigint", "primary key"), ("email", "character varying", "identifier"),
            ("ltv", "numeric(12,2)", None), ("seen", "timestamp with time zone", None), ("vip", "boolean", None)]
        assert column_table(instance, "segments", "big") == [
            ("buyer_id", "bigint", "primary key"), ("email", "character varying", "identifier"),
            ("ltv", "numeric(12,2)", None)]
    finally:
        with psycopg.connect(server.dsn, autocommit=True) as con:
            for schema in ("colschema_raw", *helper):
                con.execute(f"drop schema if exists {schema} cascade")

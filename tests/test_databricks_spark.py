"""The Databricks source, executed: the product's own `DatabricksWarehouse` runs its SQL on a local Apache
Spark session through a stand-in of databricks-sql-connector (tests/spark_connection.py says how, and why
the tables are Iceberg rather than Delta tables).

The shared warehouse scenario (tests/test_warehouse_scenarios.py: a full sync, changes of every kind, a
delta sync, a sync with no change, and `dinmo validate --connect`'s checks) runs here as on DuckDB,
PostgreSQL and fakesnow; the no-code filters of tests/test_filters.py (operators, relative dates,
relationships, segment membership) run on the same data as there.

One Spark session for the whole test session (it takes a few seconds to start); each test uses schemas of
its own and drops them.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import dagster as dg
import pyarrow as pa
import pytest
import sqlglot
import test_filters
from sqlglot import exp

try:  # pytest puts either the repository root or tests/ on sys.path, depending on the import mode
    from tests import spark_connection
except ImportError:  # pragma: no cover - depends on the pytest import mode
    import spark_connection  # type: ignore[no-redef]

from test_warehouse_scenarios import (
    SEED,
    _project_yaml,
    _yaml_source,
    check_same_files_and_rows,
    check_validation_finds_nothing_wrong,
    run,
)

from dinmo_dagster.config import load_project
from dinmo_dagster.filters import compile_segment_filter
from dinmo_dagster.resources import build_resources
from dinmo_dagster.warehouses import WarehouseError, warehouse_from_config
from dinmo_dagster.warehouses.databricks import DatabricksWarehouse

HOST, HTTP_PATH = "dbc-local.cloud.databricks.com", "/sql/1.0/warehouses/spark"


@pytest.fixture(scope="session")
def spark(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    reason = spark_connection.skip_reason()
    if reason:
        print(f"skipping the Spark tests: {reason}")
        pytest.skip(reason)
    session = spark_connection.start_spark(tmp_path_factory.mktemp("spark"))
    try:
        yield session
    finally:
        session.stop()


@pytest.fixture
def driver(spark: Any) -> Iterator[spark_connection.Driver]:
    with spark_connection.install_driver(spark) as installed:
        yield installed


def _drop_schemas(wh: DatabricksWarehouse, schemas: list[str]) -> None:
    """Drop the test's schemas: their views and tables first (Iceberg's catalog refuses DROP ... CASCADE)."""
    existing = {row[0] for row in wh.query("SHOW SCHEMAS")}
    for schema in schemas:
        if schema not in existing:
            continue
        views = {row[1] for row in wh.query(f"SHOW VIEWS IN `{schema}`")}
        for kind, names in (
            ("VIEW", views),
            ("TABLE", {r[1] for r in wh.query(f"SHOW TABLES IN `{schema}`")} - views),
        ):
            for name in names:
                wh.execute(f"DROP {kind} IF EXISTS `{schema}`.`{name}`")
        wh.execute(f"DROP SCHEMA `{schema}`")


@contextlib.contextmanager
def spark_project(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **settings: str
) -> Iterator[SimpleNamespace]:
    """The scenario project of test_warehouse_scenarios.py on a Databricks source answered by Spark: model
    `customers` (SEED rows), segment `big`, activations `diff` and `ups`, in schemas of its own."""
    monkeypatch.setenv("DBX_TOKEN", spark_connection.TOKEN)
    prefix = f"dinmo_test_{uuid.uuid4().hex[:10]}_"
    raw = f"{prefix}raw"
    source = _yaml_source({"type": "databricks", "server_hostname": HOST, "http_path": HTTP_PATH,
                           "access_token": "{env: DBX_TOKEN}", **settings}, prefix)  # fmt: skip
    (tmp_path / "dinmo.yaml").write_text(_project_yaml(source, raw))
    project = load_project(tmp_path)
    with dg.build_resources(build_resources(project)) as resources:
        wh = resources.source_wh.get_warehouse()
        assert isinstance(wh, DatabricksWarehouse)
        try:
            run(wh, f"create schema if not exists {raw}")
            run(wh, f"create table {raw}.customers (customer_id integer, email varchar, ltv decimal(10, 2), "
                    "country varchar, note varchar, unmapped varchar)")  # fmt: skip
            values = ", ".join(f"({i}, '{e}', {ltv}, '{c}', {'null' if n is None else repr(n)}, 'u')"
                               for i, e, ltv, c, n in SEED)  # fmt: skip
            run(wh, f"insert into {raw}.customers values {values}")
            yield SimpleNamespace(project=project, resources=resources, wh=wh, dir=tmp_path, kind="databricks",
                                  raw=raw, names={k: k for k in ("customers", "big", "diff", "ups")})  # fmt: skip
        finally:
            _drop_schemas(wh, [raw, f"{prefix}segments", f"{prefix}stats", f"{prefix}delta"])


def test_same_files_and_rows_on_spark(driver, tmp_path: Path, monkeypatch) -> None:
    """The shared scenario and `dinmo validate --connect`'s checks, with three-part names
    (`main`.`schema`.`table`) everywhere: the source names its catalog, as a Unity Catalog source does."""
    with spark_project(tmp_path, monkeypatch, catalog=spark_connection.CATALOG) as env:
        check_validation_finds_nothing_wrong(env)
        check_same_files_and_rows(env)
    assert any(f"`{spark_connection.CATALOG}`.`dinmo_test_" in s for s in driver.log)


def test_validation_and_column_types_on_spark(driver, tmp_path: Path, monkeypatch) -> None:
    """Without a catalog setting: two-part names in the connection's current catalog."""
    with spark_project(tmp_path, monkeypatch) as env:
        check_validation_finds_nothing_wrong(env)
        assert env.wh.table_columns(f"{env.raw}.customers") == [
            ("customer_id", "int"), ("email", "string"), ("ltv", "decimal(10,2)"), ("country", "string"),
            ("note", "string"), ("unmapped", "string"),
        ]  # fmt: skip
        assert env.wh.table_columns(f"{env.raw}.missing") is None
        assert env.wh.table_columns("dinmo_no_such_schema.customers") is None


def test_a_wrong_token_is_an_error_that_names_the_source_and_not_the_token(driver) -> None:
    wh = warehouse_from_config("dbx", {"type": "databricks", "server_hostname": HOST, "http_path": HTTP_PATH,
                                       "access_token": "dapi-WRONG-secret-42"})  # fmt: skip
    with pytest.raises(WarehouseError) as info:
        wh.check_connection()
    assert str(info.value) == (
        f"source 'dbx' (databricks): cannot connect to {HOST}{HTTP_PATH}: Error during request to server: "
        f"403 Forbidden: Invalid access token ({HOST}{HTTP_PATH})"
    )
    assert "dapi-WRONG" not in str(info.value)


def test_a_statement_spark_rejects_is_a_warehouse_error_naming_the_source(driver) -> None:
    wh = warehouse_from_config("dbx", {"type": "databricks", "server_hostname": HOST, "http_path": HTTP_PATH,
                                       "access_token": spark_connection.TOKEN})  # fmt: skip
    with pytest.raises(
        WarehouseError, match=r"^source 'dbx' \(databricks\): query failed: .*TABLE_OR_VIEW_NOT_FOUND"
    ):
        wh.query("select * from dinmo_no_such_schema.no_such_table")


# ------------------------------------------------------------------------------ no-code filters


@pytest.fixture(scope="module")
def filters_wh(spark: Any) -> Iterator[DatabricksWarehouse]:
    """tests/test_filters.py's tables and model views, loaded through the product's `insert_rows`."""
    with spark_connection.install_driver(spark):
        wh = warehouse_from_config("dbx", {"type": "databricks", "server_hostname": HOST, "http_path": HTTP_PATH,
                                           "access_token": spark_connection.TOKEN})  # fmt: skip
        assert isinstance(wh, DatabricksWarehouse)
        wh.execute([s for s in sqlglot.transpile(test_filters.DDL, read="postgres", write="databricks")])
        for (sql, _), rows in zip(test_filters.INSERTS, (test_filters.C, test_filters.O, test_filters.L,
                                                         test_filters.VISITS)):  # fmt: skip
            table = exp.to_table(sql.split()[2])
            names = wh.relation_columns(table)
            data = [r if isinstance(r, dict) else dict(zip(names, r)) for r in rows]
            wh.insert_rows(table, pa.Table.from_pylist(data))
        segment = compile_segment_filter(
            test_filters.FRENCH, "customers", test_filters.MODELS, {}, "databricks"
        )
        wh.execute(f"CREATE VIEW ft_views.segment_french AS {segment}")
        try:
            yield wh
        finally:
            _drop_schemas(wh, ["ft_views", "ft_raw"])


def _members(wh: DatabricksWarehouse, filter: dict, model: str = "customers") -> set:
    sql = compile_segment_filter(filter, model, test_filters.MODELS, test_filters.SEGMENT_VIEWS, "databricks")
    key = test_filters.MODELS[model].primary_key
    return {row[0] for row in wh.query(f"SELECT `{key}` FROM ({sql}) AS q")}


def test_no_code_filters_select_the_same_members_on_spark(filters_wh: DatabricksWarehouse) -> None:
    """Every attribute operator (relative dates included), group and relationship case of test_filters.py:
    the members Spark selects are the ones computed in Python from the same rows."""
    cases = {**test_filters.OPERATOR_CASES, **test_filters.GROUP_CASES, **test_filters.RELATION_CASES}
    wrong = {}
    for name, (filter, predicate) in cases.items():
        expected, got = test_filters.customers_where(predicate), _members(filters_wh, filter)
        if got != expected:
            wrong[name] = (sorted(got), sorted(expected))
    assert wrong == {}


def test_relationships_across_models_and_segment_membership_on_spark(filters_wh: DatabricksWarehouse) -> None:
    C, O, L = test_filters.C, test_filters.O, test_filters.L
    french = {c["customer_id"] for c in C if c["country"] == "FR"}
    many_to_one = {"relation": "customer", "exists": True, "where": test_filters.FRENCH}
    assert _members(filters_wh, many_to_one, "orders") == {
        o["order_id"] for o in O if o["customer_id"] in french
    }
    vip = {c["customer_id"] for c in C if c["vip"] is True}
    vip_orders = {o["order_id"] for o in O if o["customer_id"] in vip}
    three_hops = {
        "relation": "order",
        "exists": True,
        "where": {"relation": "customer", "exists": True, "where": test_filters.attr("vip", "eq", True)},
    }
    assert _members(filters_wh, three_hops, "order_lines") == {
        x["line_id"] for x in L if x["order_id"] in vip_orders
    }
    assert _members(filters_wh, {"segment": "french", "op": "not_in"}) == test_filters.customers_where(
        lambda c: c["country"] != "FR"
    )


# ------------------------------------------------------------------------------ a platform sync


def test_hubspot_mirror_with_its_acknowledgement_and_rejection_tables_on_spark(
        driver, request, tmp_path: Path, monkeypatch) -> None:  # fmt: skip
    """tests/test_platform_sync.py's HubSpot mirror (first sync, a delta with a record leaving, a rejected
    record retried then accepted, a sync with no change) with its state on Spark: the acknowledgement and
    rejection tables written through `insert_rows`, read back, and cleared."""
    import platform_scenarios
    import test_platform_sync

    @contextlib.contextmanager
    def spark_source(kind: str, *args: Any) -> Iterator[str]:
        monkeypatch.setenv("DBX_TOKEN", spark_connection.TOKEN)
        try:
            yield (f"{{type: databricks, server_hostname: {HOST}, http_path: {HTTP_PATH}, "
                   "access_token: {env: DBX_TOKEN}}")  # fmt: skip
        finally:
            wh = warehouse_from_config(
                "wh",
                {
                    "type": "databricks",
                    "server_hostname": HOST,
                    "http_path": HTTP_PATH,
                    "access_token": spark_connection.TOKEN,
                },
            )
            _drop_schemas(wh, list(platform_scenarios.SCHEMAS))  # type: ignore[arg-type]

    # the scenario's own code, with the Databricks source in place of DuckDB's
    monkeypatch.setattr(test_platform_sync, "warehouse_source", spark_source)
    test_platform_sync.test_hubspot_mirror_first_sync_delta_leaving_records_and_a_rejected_record_retried(
        "databricks", request, tmp_path, monkeypatch
    )
    assert any("INSERT INTO `dinmo_delta_storage`" in s for s in driver.log)

"""Predictions on the warehouses other than DuckDB: the feature SQL, the score write-back and a segment
filtering on the scores, on the real PostgreSQL server (``postgres_server``) and on Snowflake's connector
under fakesnow, against the same expectations as DuckDB; the compiled SQL of BigQuery, Redshift and
Databricks, parsed back by sqlglot in their dialects.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import math
import textwrap
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlglot
from prediction_scenarios import HAND_FEATURES, HAND_ORDERS
from sqlglot import exp

from dinmo_dagster.compile import refresh_model, refresh_segment
from dinmo_dagster.config import load_project
from dinmo_dagster.predictions import engine
from dinmo_dagster.predictions import features as F
from dinmo_dagster.predictions.simulate import simulate
from dinmo_dagster.warehouses import Warehouse, warehouse_from_config

pytest.importorskip("lightgbm")
pytest.importorskip("sklearn")

T = dt.datetime

PROJECT = """
sources:
  wh: {source}
models:
  customers:
    source: wh
    table: raw.customers
    primary_key: customer_id
    relationships:
      - {{name: orders, model: orders, type: one_to_many, on: {{customer_id: customer_id}}}}
  orders: {{source: wh, kind: fact, table: raw.orders, primary_key: order_id, time_column: ordered_at}}
predictions:
  value:
    model: customers
    events: orders
    amount: amount
    item: product_id
    item_category: category
    ltv_horizons_months: [3]
    churn_window_days: 90
    recommendations: {{top_k: 5, exclude_purchased: true}}
segments:
  at_risk:
    model: customers
    filter: {{any: [{{attribute: predictions.value.churn_probability, op: gt, value: 0.5}},
                   {{attribute: predictions.value.ltv_3m, op: gt, value: 100}}]}}
"""



@contextlib.contextmanager
def _source(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[str]:
    if kind == "duckdb":
        yield f"{{type: duckdb, path: {tmp_path / 'wh.duckdb'}}}"
    elif kind == "postgres":
        server = request.getfixturevalue("postgres_server")
        request.getfixturevalue("monkeypatch").setenv("PG_PASSWORD", server.password)
        # The server is shared by the session's tests (other files' included): start from no schema of
        # ours and leave none behind.
        _drop_schemas(server)
        try:
            yield (
                f"{{type: postgres, host: {server.host}, port: {server.port}, database: {server.database}, "
                "user: dinmo, password: {env: PG_PASSWORD}}"
            )
        finally:
            _drop_schemas(server)
    else:
        import fakesnow

        request.getfixturevalue("monkeypatch").setenv("SF_PASSWORD", "not-a-real-password")
        (tmp_path / "fakesnow").mkdir()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # fakesnow's DuckDB Arrow copies
            with fakesnow.patch(db_path=str(tmp_path / "fakesnow")):
                yield (
                    "{type: snowflake, account: acct, user: dinmo, password: {env: SF_PASSWORD}, "
                    "database: CRM, warehouse: WH, role: DINMO}"
                )


def _drop_schemas(server: object) -> None:
    import psycopg

    with psycopg.connect(server.dsn, autocommit=True) as con:
        for schema in ("raw", "dinmo_segments", "dinmo_predictions", "dinmo_stats", "dinmo_delta_storage"):
            con.execute(f"drop schema if exists {schema} cascade")


@contextlib.contextmanager
def project_on(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[tuple[object, Warehouse]]:
    with _source(kind, tmp_path, request) as source:
        (tmp_path / "dinmo.yaml").write_text(textwrap.dedent(PROJECT.format(source=source)))
        project = load_project(tmp_path)
        config = project.sources["wh"].model_dump(by_alias=True, exclude_none=True)
        yield project, warehouse_from_config("wh", config)


def load(wh: Warehouse, customers: list[tuple], orders: list[tuple], raw: str = "raw") -> None:
    """The raw tables, written once in DuckDB's SQL and transpiled for the warehouse."""

    def literal(v: object) -> str:
        if isinstance(v, str):
            return f"'{v}'"
        if isinstance(v, dt.datetime):
            return f"timestamp '{v:%Y-%m-%d %H:%M:%S}'"
        return repr(v)

    def values(rows: list[tuple]) -> str:
        return ", ".join("(" + ", ".join(literal(v) for v in r) + ")" for r in rows)

    dialect = wh.dialect
    statements = [
        f"create schema if not exists {raw}",
        f"create table {raw}.customers (customer_id integer, name varchar)",
        (
            f"create table {raw}.orders (order_id integer, customer_id integer, ordered_at timestamp, "
            "amount double, product_id varchar, category varchar)"
        ),
        f"insert into {raw}.customers values {values(customers)}",
    ]
    for start in range(0, len(orders), 2000):
        statements.append(f"insert into {raw}.orders values {values(orders[start : start + 2000])}")
    wh.execute([sqlglot.transpile(s, read="duckdb", write=dialect)[0] for s in statements])


def _plain(value: object) -> object:
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _round(value: object) -> object:
    """12 decimals: the last bits of a division may differ between engines."""
    return round(float(value), 12) if isinstance(value, (int, float)) else value


WAREHOUSES = ["duckdb", "postgres", "snowflake"]


@pytest.mark.parametrize("kind", WAREHOUSES)
def test_features_are_the_same_on_every_warehouse(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    with project_on(kind, tmp_path, request) as (project, wh):
        load(wh, [(1, "ann"), (2, "bob"), (3, "cid")], HAND_ORDERS)
        for m in ("customers", "orders"):
            refresh_model(wh, project, m)  # type: ignore[arg-type]
        table = engine.feature_table(wh, project, "value", T(2024, 7, 1))
        rows = [{k: _plain(v) for k, v in r.items()} for r in table.to_dict("records")]
        assert [int(r.pop("customer_key")) for r in rows] == [1, 2, 3]
        expected = [{k: _round(v) for k, v in r.items() if k != "customer_key"} for r in HAND_FEATURES]
        assert [{k: _round(v) for k, v in r.items()} for r in rows] == expected


# Few customers, as fakesnow's translation of every multi-row INSERT costs seconds; on these 400 (seed 3)
# every model beats its baseline, churn included.
N = 400


def _simulated(n: int) -> tuple[list[tuple], list[tuple]]:
    sim = simulate(n, seed=3, rate_shape=0.7, mean_orders_per_year=8)
    customers = [(int(c), f"c{c}") for c in sim.customers.column("customer_id").to_pylist()]
    o = sim.orders
    orders = list(
        zip(
            *(
                o.column(c).to_pylist()
                for c in ("order_id", "customer_id", "ordered_at", "amount", "product_id", "category")
            )
        )
    )
    return customers, orders


SCORES = (
    "select customer_id, ltv_3m, churn_probability, model_version from dinmo_predictions.value "
    "order by customer_id"
)
RECOMMENDATIONS = (
    "select recommendation_id, customer_id, rank, item from dinmo_predictions.value_recommendations "
    "where customer_id <= 2 order by customer_id, rank"
)


def _scores(rows: list[tuple]) -> list[tuple]:
    return [(int(k), _plain(a), _plain(b), v) for k, a, b, v in rows]


def _recommendations(rows: list[tuple]) -> list[tuple]:
    return [(r[0], int(r[1]), int(r[2]), r[3]) for r in rows]


@pytest.fixture(scope="module")
def on_duckdb(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[tuple], list[tuple]]:
    """The published scores and the first two customers' recommendations, trained on DuckDB."""
    tmp = tmp_path_factory.mktemp("duckdb")
    customers, orders = _simulated(N)
    (tmp / "dinmo.yaml").write_text(
        textwrap.dedent(PROJECT.format(source=f"{{type: duckdb, path: {tmp / 'wh.duckdb'}}}"))
    )
    project = load_project(tmp)
    wh = warehouse_from_config("wh", project.sources["wh"].model_dump(by_alias=True, exclude_none=True))
    load(wh, customers, orders)
    for m in ("customers", "orders"):
        refresh_model(wh, project, m)
    result = engine.train(wh, project, "value", now=T(2025, 1, 2, 8))
    assert result.promoted == ["ltv_3m", "churn_probability", "recommendations"]
    engine.publish(wh, project, "value")
    return _scores(wh.query(SCORES)), _recommendations(wh.query(RECOMMENDATIONS))


@pytest.mark.parametrize("kind", ["postgres", "snowflake"])
def test_scores_are_written_back_and_filtered_on_every_warehouse(
    kind: str,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    on_duckdb: tuple[list[tuple], list[tuple]],
) -> None:
    n = N
    customers, orders = _simulated(n)
    with project_on(kind, tmp_path, request) as (project, wh):
        load(wh, customers, orders)
        for m in ("customers", "orders", "predictions.value", "predictions.value_recommendations"):
            refresh_model(wh, project, m)  # type: ignore[arg-type]
        # before the first training: the empty score tables, and the segment on them
        refresh_segment(wh, project, "at_risk")  # type: ignore[arg-type]
        assert wh.query("select count(*) from dinmo_segments.segment_at_risk") == [(0,)]
        result = engine.train(wh, project, "value", now=T(2025, 1, 2, 8))
        assert result.promoted == ["ltv_3m", "churn_probability", "recommendations"]
        published = engine.publish(wh, project, "value")
        assert (published.rows, published.recommendation_rows) == (n, 5 * n)
        scores = _scores(wh.query(SCORES))
        recs = _recommendations(wh.query(RECOMMENDATIONS))
        at_risk = wh.query("select customer_id from dinmo_segments.segment_at_risk order by customer_id")
    # the same scores and lists as on DuckDB: the features agree and the learners are deterministic
    assert (scores, recs) == on_duckdb
    assert {r[3] for r in scores} == {"v1"} and [r[0] for r in scores] == list(range(1, n + 1))
    assert [int(r[0]) for r in at_risk] == [
        k for k, ltv, churn, _ in scores if (churn is not None and churn > 0.5) or ltv > 100
    ]
    assert 0 < len(at_risk) < n
    # customers the churn score alone selects
    assert any(churn > 0.5 and ltv <= 100 for _, ltv, churn, _ in scores if churn is not None)
    assert [r[:3] for r in recs] == [(f"{c}:{i}", c, i) for c in (1, 2) for i in range(1, 6)]


COLUMNS = F.Columns(
    customers=exp.to_table("crm.customers"),
    events=exp.to_table("crm.orders"),
    pk="customer_id",
    customer_key="customer_id",
    time="ordered_at",
    amount="amount",
    item="product_id",
    category="category",
)


@pytest.mark.parametrize("dialect", ["bigquery", "redshift", "databricks"])
def test_compiled_sql_of_the_other_warehouses(dialect: str) -> None:
    cutoff = T(2024, 7, 1)
    sql = F.features_sql(COLUMNS, cutoff, dialect, ["A", "B"])
    parsed = sqlglot.parse_one(sql, read=dialect)
    assert [s.alias_or_name for s in parsed.selects] == [
        F.KEY,
        *F.FEATURES,
        "category_share_0",
        "category_share_1",
    ]
    # the gap to the previous order of the same customer, in calendar days, in the dialect's own spelling
    gap = next(a for a in parsed.find_all(exp.Alias) if a.alias == "gap").this.sql(dialect=dialect)
    assert (
        gap
        == {
            "bigquery": "DATE_DIFF(CAST(t AS DATE), CAST(LAG(t) OVER (PARTITION BY k ORDER BY t NULLS LAST) AS DATE), "
            "DAY)",
            "redshift": "DATEDIFF(DAY, CAST(LAG(t) OVER (PARTITION BY k ORDER BY t) AS DATE), CAST(t AS DATE))",
            "databricks": "DATEDIFF(DAY, CAST(LAG(t) OVER (PARTITION BY k ORDER BY t NULLS LAST) AS DATE), "
            "CAST(t AS DATE))",
        }[dialect]
    )
    assert "STDDEV_SAMP(CAST(gap AS" in sql  # the regularity of the gaps
    for other in (
        F.labels_sql(COLUMNS, cutoff - dt.timedelta(days=90), cutoff, dialect),
        F.interactions_sql(COLUMNS, None, cutoff, dialect),
        F.categories_sql(COLUMNS, cutoff, dialect),
        F.history_sql(COLUMNS, dialect),
    ):
        assert sqlglot.parse_one(other, read=dialect).sql(dialect=dialect) == other


def test_features_on_databricks_sql_run_by_local_spark(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The Databricks source's feature SQL executed by a local Spark session through the stand-in of
    databricks-sql-connector (tests/spark_connection.py), against the same expectations."""
    import uuid

    try:
        from tests import spark_connection
    except ImportError:  # pragma: no cover - depends on the pytest import mode
        import spark_connection  # type: ignore[no-redef]

    reason = spark_connection.skip_reason()
    if reason:
        pytest.skip(reason)
    monkeypatch.setenv("DBX_TOKEN", spark_connection.TOKEN)
    prefix = f"dinmo_test_{uuid.uuid4().hex[:10]}_"
    source = (
        "{type: databricks, server_hostname: dbc-local.cloud.databricks.com, http_path: /sql/1.0/warehouses/spark, "
        f"access_token: {{env: DBX_TOKEN}}, helper_schemas: {{segments: {prefix}segments}}}}"
    )
    text = textwrap.dedent(PROJECT.format(source=source)).replace("raw.", f"{prefix}raw.")
    (tmp_path / "dinmo.yaml").write_text(text)
    from pyspark.sql import SparkSession

    # the session of tests/test_databricks_spark.py when it is running (getOrCreate would return it anyway)
    shared = SparkSession.getActiveSession()
    session = shared or spark_connection.start_spark(tmp_path_factory.mktemp("spark"))
    try:
        with spark_connection.install_driver(session):
            project = load_project(tmp_path)
            wh = warehouse_from_config(
                "wh", project.sources["wh"].model_dump(by_alias=True, exclude_none=True)
            )
            try:
                load(wh, [(1, "ann"), (2, "bob"), (3, "cid")], HAND_ORDERS, raw=f"{prefix}raw")
                for m in ("customers", "orders"):
                    refresh_model(wh, project, m)  # type: ignore[arg-type]
                table = engine.feature_table(wh, project, "value", T(2024, 7, 1))
            finally:  # Iceberg's catalog refuses DROP SCHEMA ... CASCADE: views, tables, then the schemas
                for schema, kind, name in (
                    (f"{prefix}segments", "VIEW", "model_customers"),
                    (f"{prefix}segments", "VIEW", "model_orders"),
                    (f"{prefix}raw", "TABLE", "customers"),
                    (f"{prefix}raw", "TABLE", "orders"),
                ):
                    wh.execute(f"DROP {kind} IF EXISTS `{schema}`.`{name}`")
                for schema in (f"{prefix}segments", f"{prefix}raw"):
                    wh.execute(f"DROP SCHEMA IF EXISTS `{schema}`")
    finally:
        if shared is None:
            session.stop()
    rows = [{k: _plain(v) for k, v in r.items()} for r in table.to_dict("records")]
    assert [int(r.pop("customer_key")) for r in rows] == [1, 2, 3]
    expected = [{k: _round(v) for k, v in r.items() if k != "customer_key"} for r in HAND_FEATURES]
    assert [{k: _round(v) for k, v in r.items()} for r in rows] == expected

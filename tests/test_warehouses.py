"""Warehouse resources against real engines: DuckDB (file), PostgreSQL (a server started by the
`postgres_server` fixture; Redshift's code path runs on it too), Snowflake (fakesnow patches the real
connector under dagster-snowflake). BigQuery and Databricks: construction and SQL compilation, and the
shared sync scenario against a live project / SQL warehouse when its credentials are in the
environment (`test_bigquery_live`, `test_databricks_live`; skipped otherwise, saying what to set).
"""

import datetime as dt
import json
import logging
import subprocess
import sys
import textwrap
import time
import warnings
from decimal import Decimal

import dagster as dg
import pyarrow as pa
import pytest
import sqlglot

# the shared scenario suite, run here against the live warehouses (tests/ is on sys.path under pytest)
from test_warehouse_scenarios import (
    BIGQUERY_SKIP,
    DATABRICKS_SKIP,
    check_same_files_and_rows,
    check_validation_finds_nothing_wrong,
    live_configured,
    scenario_project,
)

from dinmo_dagster.resources import WarehouseResource
from dinmo_dagster.warehouses import Warehouse, WarehouseError, warehouse_from_config
from dinmo_dagster.warehouses.bigquery import BigQueryWarehouse
from dinmo_dagster.warehouses.databricks import DatabricksWarehouse
from dinmo_dagster.warehouses.duckdb import DuckDBWarehouse
from dinmo_dagster.warehouses.postgres import PostgresWarehouse
from dinmo_dagster.warehouses.redshift import RedshiftWarehouse
from dinmo_dagster.warehouses.snowflake import SnowflakeWarehouse

UTC = dt.timezone.utc
N_ROWS = 250_000
SF_PASSWORD = "Snow-Pa55word-xyz"

# the same logical table on every engine: 250k rows, ints, decimal(12,2), timestamptz, NULLs, unicode
BIG_SQL = {
    "duckdb": """
        CREATE TABLE raw.big AS
        SELECT g::INTEGER AS id, (g::BIGINT * 1000000) AS big,
               CAST((g % 100000) / 100 AS DECIMAL(12,2)) AS amount,
               TIMESTAMPTZ '2024-01-01 00:00:00+00' + g * INTERVAL 1 SECOND AS ts,
               CASE WHEN g % 10 = 0 THEN NULL ELSE 'clé-' || g::VARCHAR || ' ✓' END AS name
        FROM range(1, 250001) t(g)
    """,
    "postgres": """
        CREATE TABLE raw.big AS
        SELECT g::int4 AS id, g::int8 * 1000000 AS big,
               ((g % 100000) / 100.0)::numeric(12,2) AS amount,
               timestamptz '2024-01-01 00:00:00+00' + g * interval '1 second' AS ts,
               CASE WHEN g % 10 = 0 THEN NULL ELSE 'clé-' || g || ' ✓' END AS name
        FROM generate_series(1, 250000) g
    """,
    "snowflake": """
        CREATE TABLE raw.big AS
        SELECT id, id * 1000000 AS big, (id % 100000 / 100)::NUMBER(12,2) AS amount,
               DATEADD(second, id, '2024-01-01 00:00:00 +00:00'::TIMESTAMP_TZ) AS ts,
               IFF(id % 10 = 0, NULL, 'clé-' || id::VARCHAR || ' ✓') AS name
        FROM (SELECT seq4() + 1 AS id FROM TABLE(GENERATOR(ROWCOUNT => 250000)))
    """,
}


def _check_big_stream(
    wh: Warehouse, sql: str, int_type: pa.DataType, names: list[str], exact_batches: bool = True
) -> None:
    """Batches hold at most `batch_rows` rows (DuckDB's parallel scan may hand over smaller ones)."""
    id_, big, amount, ts, name = names
    with wh.stream(sql, batch_rows=100_000) as reader:
        schema = reader.schema
        sizes, total, id_sum, nulls, seen = [], 0, 0, 0, {}
        for batch in reader:
            sizes.append(batch.num_rows)
            total += batch.num_rows
            ids = batch.column(id_)
            id_sum += pa.compute.sum(ids).as_py()
            nulls += batch.column(name).null_count
            for row in batch.filter(pa.compute.is_in(ids, pa.array([1, 12345], type=ids.type))).to_pylist():
                seen[row[id_]] = row
    assert max(sizes) <= 100_000
    if exact_batches:
        assert sizes == [100_000, 100_000, 50_000]
    assert total == N_ROWS and id_sum == N_ROWS * (N_ROWS + 1) // 2
    assert nulls == N_ROWS // 10
    assert schema.field(id_).type == int_type
    assert schema.field(big).type == pa.int64()
    assert schema.field(amount).type == pa.decimal128(12, 2)
    assert schema.field(ts).type == pa.timestamp("us", tz="UTC")
    assert schema.field(name).type == pa.string()
    assert seen[12345][amount] == Decimal("123.45")
    assert seen[12345][big] == 12_345_000_000
    assert seen[1][ts] == dt.datetime(2024, 1, 1, 0, 0, 1, tzinfo=UTC)
    assert seen[1][name] == "clé-1 ✓"


def _check_empty_stream(wh: Warehouse, sql: str, expected: dict[str, pa.DataType]) -> None:
    with wh.stream(sql) as reader:
        assert dict(zip(reader.schema.names, reader.schema.types)) == expected
        assert reader.read_all().num_rows == 0


# ============================================================================ DuckDB


@pytest.fixture
def duck(tmp_path) -> DuckDBWarehouse:
    wh = warehouse_from_config(
        "local", {"type": "duckdb", "path": str(tmp_path / "nested" / "dir" / "wh.duckdb")}
    )
    assert isinstance(wh, DuckDBWarehouse)
    return wh


def test_duckdb_creates_parent_dir_and_runs_sql(duck, tmp_path):
    duck.ensure_schema("dinmo_segments")
    duck.ensure_schema("dinmo_segments")  # idempotent
    assert (tmp_path / "nested" / "dir" / "wh.duckdb").exists()
    table = duck.qualify("dinmo_segments", "model_Customers")
    assert table.sql(dialect="duckdb") == '"dinmo_segments"."model_customers"'
    duck.execute(
        [
            "CREATE SCHEMA raw",
            "CREATE TABLE raw.Customers (id INTEGER, email VARCHAR, amount DECIMAL(12,2))",
            "INSERT INTO raw.customers VALUES (1, 'a@x.io', 1.50), (2, NULL, NULL)",
            f"CREATE VIEW {table.sql(dialect='duckdb')} AS SELECT * FROM raw.customers",
        ]
    )
    assert duck.query(f"SELECT count(*) FROM {table.sql(dialect='duckdb')}") == [(2,)]
    assert duck.table_columns("raw.customers") == [
        ("id", "INTEGER"),
        ("email", "VARCHAR"),
        ("amount", "DECIMAL(12,2)"),
    ]
    assert duck.table_columns("RAW.CUSTOMERS") is not None  # DuckDB names are case-insensitive
    assert duck.table_columns("dinmo_segments.model_customers") is not None  # views too
    assert duck.table_columns("raw.missing") is None
    assert duck.table_columns("customers") is None  # unqualified: schema main
    assert duck.query_columns("SELECT id, email AS e FROM raw.customers WHERE false;") == ["id", "e"]


def test_duckdb_execute_is_one_transaction(duck):
    duck.execute("CREATE TABLE t (x INTEGER)")
    with pytest.raises(WarehouseError, match=r"source 'local' \(duckdb\): statement failed"):
        duck.execute(["INSERT INTO t VALUES (1)", "INSERT INTO missing VALUES (1)"])
    assert duck.query("SELECT count(*) FROM t") == [(0,)]


def test_duckdb_stream_250k_rows(duck):
    duck.execute(["CREATE SCHEMA raw", BIG_SQL["duckdb"]])
    _check_big_stream(
        duck, "SELECT * FROM raw.big", pa.int32(), ["id", "big", "amount", "ts", "name"], exact_batches=False
    )


def test_duckdb_stream_empty_result_has_schema(duck):
    duck.execute("CREATE TABLE t (id BIGINT, amount DECIMAL(12,2), ts TIMESTAMPTZ, s VARCHAR)")
    _check_empty_stream(
        duck,
        "SELECT * FROM t",
        {
            "id": pa.int64(),
            "amount": pa.decimal128(12, 2),
            "ts": pa.timestamp("us", tz="UTC"),
            "s": pa.string(),
        },
    )


def test_duckdb_stream_is_lazy(duck):
    # 10^10 rows: only the first batch is ever computed
    sql = "SELECT a.range * 100000 + b.range AS g FROM range(100000) a, range(100000) b"
    with duck.stream(sql, batch_rows=1000) as reader:
        assert reader.read_next_batch().num_rows == 1000


def test_duckdb_connection_released_after_each_operation(duck, tmp_path):
    """Another process can write to the file between our operations, and we wait for its lock."""
    duck.execute("CREATE TABLE t (x INTEGER)")
    with duck.stream("SELECT * FROM t") as reader:
        reader.read_all()
    holder = textwrap.dedent(
        f"""
        import duckdb, sys, time
        con = duckdb.connect({duck.config.path!r})
        con.execute("INSERT INTO t VALUES (42)")
        print("locked", flush=True)
        time.sleep(1.5)
        con.close()
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", holder], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        started = time.monotonic()
        duck.execute("INSERT INTO t VALUES (43)")  # waits for the other process's lock
        assert time.monotonic() - started > 0.3
    finally:
        proc.wait(timeout=30)
    assert sorted(duck.query("SELECT x FROM t")) == [(42,), (43,)]


def test_duckdb_unusable_path_is_a_clear_error(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    wh = warehouse_from_config("local", {"type": "duckdb", "path": str(blocker / "sub" / "wh.duckdb")})
    with pytest.raises(WarehouseError, match=r"source 'local' \(duckdb\): cannot connect to DuckDB database"):
        wh.check_connection()
    not_a_db = tmp_path / "garbage.duckdb"
    not_a_db.write_bytes(b"\x00garbage" * 1000)
    with pytest.raises(WarehouseError, match="source 'local'"):
        warehouse_from_config("local", {"type": "duckdb", "path": str(not_a_db)}).query("SELECT 1")


def test_duckdb_works_as_a_dagster_resource(duck, monkeypatch):
    monkeypatch.setenv("DINMO_TEST_DUCK_PATH", duck.config.path)
    seen = {}

    @dg.asset
    def probe(warehouse: WarehouseResource) -> None:
        seen["rows"] = warehouse.get_warehouse().query("SELECT 41 + 1")

    resource = WarehouseResource(
        source_name="local", settings={"type": "duckdb", "path": {"env": "DINMO_TEST_DUCK_PATH"}}
    )
    result = dg.materialize(
        [probe], resources={"warehouse": resource}, instance=dg.DagsterInstance.ephemeral()
    )
    assert result.success and seen["rows"] == [(42,)]
    # outside a run the EnvVar is read from the environment when connecting
    assert resource.get_warehouse().query("SELECT 1") == [(1,)]


def _duckdb_limit_for(setting: str) -> str:
    """What DuckDB itself reports for `SET memory_limit = setting` (the oracle for our connections)."""
    import duckdb

    con = duckdb.connect()
    try:
        con.execute(f"SET memory_limit = '{setting}'")
        return con.execute("SELECT current_setting('memory_limit')").fetchone()[0]
    finally:
        con.close()


def _default_duckdb_source(tmp_path, settings: str = "") -> DuckDBWarehouse:
    """The resource of a project source written with no DuckDB setting besides its path (and `settings`)."""
    from dinmo_dagster.config import load_project
    from dinmo_dagster.resources import build_resources

    (tmp_path / "dinmo.yaml").write_text(f"sources:\n  wh: {{type: duckdb, path: wh.duckdb{settings}}}\n")
    wh = build_resources(load_project(tmp_path))["source_wh"].get_warehouse()
    assert isinstance(wh, DuckDBWarehouse)
    return wh


def test_duckdb_default_memory_limit_is_auto_a_small_working_limit(tmp_path):
    """With no `memory_limit` in the YAML, DuckDB works within 128 MB and spills next to the database file."""
    wh = _default_duckdb_source(tmp_path)
    assert wh.config.memory_limit == "auto"
    [(limit, temp_directory)] = wh.query(
        "SELECT current_setting('memory_limit'), current_setting('temp_directory')"
    )
    assert limit == _duckdb_limit_for("128MB")
    assert temp_directory == str(tmp_path / "wh.duckdb") + ".tmp"


# A query that cannot spill: one list of 20M integers (160 MB) is more than the 128 MB working limit.
UNSPILLABLE = "SELECT list(i)[-1] AS top FROM range(20000000) t(i)"
# ... and 150M integers (1.2 GB) more than the next step's 1 GB.
UNSPILLABLE_1GB = "SELECT list(i)[-1] AS top FROM range(150000000) t(i)"


def test_auto_memory_limit_runs_a_statement_that_needs_more_again_with_a_raised_limit(tmp_path, caplog):
    """`auto`: the statement that ran out of the working limit is run again with 1 GB, then with half the
    machine's memory, which later connections keep; a warning names the source each time."""
    wh = _default_duckdb_source(tmp_path)
    with caplog.at_level(logging.WARNING, logger="dinmo_dagster.warehouses.duckdb"):
        assert wh.query(UNSPILLABLE) == [(19_999_999,)]
        assert wh.query("SELECT current_setting('memory_limit')") == [(_duckdb_limit_for("1GB"),)]
        assert wh.query(UNSPILLABLE_1GB) == [(149_999_999,)]
    assert [r.getMessage() for r in caplog.records] == [
        ("source 'wh' (duckdb): DuckDB needed more than its 128MB working memory (memory_limit auto); running the "
         "statement again with 1GB"),
        ("source 'wh' (duckdb): DuckDB needed more than its 1GB working memory (memory_limit auto); running the "
         "statement again with 50% of the machine's memory")]
    assert wh.query("SELECT current_setting('memory_limit')") == [(_duckdb_limit_for("50%"),)]
    # a statement list (one transaction) and a stream, on a fresh warehouse each time
    wh = _default_duckdb_source(tmp_path)
    wh.execute(["CREATE SCHEMA IF NOT EXISTS raw", "CREATE TABLE raw.n AS SELECT 1 AS one",
                f"CREATE TABLE raw.top AS {UNSPILLABLE}", "INSERT INTO raw.n VALUES (2)"])
    assert wh.query("SELECT (SELECT list(one ORDER BY one) FROM raw.n), (SELECT top FROM raw.top)") == [([1, 2], 19_999_999)]
    wh = _default_duckdb_source(tmp_path)
    with wh.stream(UNSPILLABLE) as reader:
        assert reader.read_all().to_pylist() == [{"top": 19_999_999}]


def test_a_fixed_memory_limit_is_never_raised(tmp_path):
    wh = _default_duckdb_source(tmp_path, ", memory_limit: 128MB")
    with pytest.raises(WarehouseError, match=r"^source 'wh' \(duckdb\): query failed: Out of Memory Error"):
        wh.query(UNSPILLABLE)
    assert wh.query("SELECT current_setting('memory_limit')") == [(_duckdb_limit_for("128MB"),)]


def test_duckdb_memory_limit_null_in_the_yaml_is_duckdbs_own_default(tmp_path):
    wh = _default_duckdb_source(tmp_path, ", memory_limit: null")
    assert wh.query("SELECT current_setting('memory_limit')") == [(_duckdb_limit_for("80%"),)]


def test_duckdb_defaults_count_distinct_keys_of_two_million_rows(tmp_path):
    """The key statistics of the primary-key check and the snapshot, on an ordinary 2M-row table.

    The former 64 MB default failed here: `Out of Memory Error: failed to allocate data of size
    16.0 MiB (49.1 MiB/61.0 MiB used)`.
    """
    from dinmo_dagster import delta

    wh = _default_duckdb_source(tmp_path)
    wh.execute(
        ["CREATE SCHEMA raw", "CREATE TABLE raw.keys AS SELECT i::BIGINT AS id FROM range(2000000) t(i)"]
    )
    stats_sql = delta.key_stats_sql(sqlglot.exp.to_table("raw.keys"), "id", "duckdb")
    assert wh.query(stats_sql) == [(2_000_000, 2_000_000, 2_000_000)]


def test_duckdb_spill_files_of_a_killed_process_are_deleted_when_the_file_is_next_opened(tmp_path):
    """A process killed while DuckDB had spilled leaves rows in `<path>.tmp`; the next connection deletes them."""
    wh = _default_duckdb_source(tmp_path)
    wh.execute(
        ["CREATE SCHEMA raw", "CREATE TABLE raw.keys AS SELECT i::BIGINT AS id FROM range(2000000) t(i)"]
    )
    holder = textwrap.dedent(
        f"""
        import duckdb, time
        con = duckdb.connect({wh.config.path!r})
        con.execute("SET enable_progress_bar = false")  # its output would come before ours
        con.execute("SET memory_limit = '64MB'")
        con.execute("SET threads = 1")
        reader = con.sql("SELECT id, md5(id::VARCHAR) AS h FROM raw.keys ORDER BY h").to_arrow_reader(1000)
        reader.read_next_batch()
        print("spilled", flush=True)
        time.sleep(120)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", holder], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines = [proc.stdout.readline().strip()]
        while lines[-1] not in ("spilled", ""):
            lines.append(proc.stdout.readline().strip())
        line = lines[-1]
    finally:
        proc.kill()  # SIGKILL: DuckDB cannot clean up
        proc.wait(timeout=30)
    assert line == "spilled", (lines, proc.returncode, proc.stderr.read()[-2000:])
    spill_dir = tmp_path / "wh.duckdb.tmp"
    # the dead process's spilled rows are still there
    assert [p for p in spill_dir.iterdir() if p.name.endswith(".tmp")] != []
    assert wh.query("SELECT count(*) FROM raw.keys") == [(2_000_000,)]
    assert list(spill_dir.iterdir()) == []


def test_duckdb_memory_limit_setting(tmp_path):
    path = str(tmp_path / "wh.duckdb")
    for setting, expected in (
        ("1GB", "953.6 MiB"),
        ("512MiB", "512.0 MiB"),
        ("25%", _duckdb_limit_for("25%")),
    ):
        wh = warehouse_from_config("local", {"type": "duckdb", "path": path, "memory_limit": setting})
        assert wh.query("SELECT current_setting('memory_limit')") == [(expected,)], setting
    # null: DuckDB's own default
    wh = warehouse_from_config("local", {"type": "duckdb", "path": path, "memory_limit": None})
    assert wh.query("SELECT current_setting('memory_limit')") == [(_duckdb_limit_for("80%"),)]
    for bad in ("lots", "0%", "150%", "12"):
        wh = warehouse_from_config("local", {"type": "duckdb", "path": path, "memory_limit": bad})
        with pytest.raises(WarehouseError) as info:
            wh.query("SELECT 1")
        assert str(info.value) == (
            f"source 'local' (duckdb): memory_limit: found {bad!r}; allowed: 'auto', a size such as '512MB' or '4GB',"
            " or a share of the machine's memory from 1% to 100% such as '50%'"
        )


# ============================================================================ PostgreSQL


@pytest.fixture
def pg(postgres_server) -> PostgresWarehouse:
    wh = warehouse_from_config("pg", postgres_server.config())
    assert isinstance(wh, PostgresWarehouse)
    wh.execute(["DROP SCHEMA IF EXISTS raw CASCADE", "DROP SCHEMA IF EXISTS dinmo_segments CASCADE"])
    return wh


def test_postgres_runs_sql(pg):
    pg.ensure_schema("dinmo_segments")
    pg.ensure_schema("dinmo_segments")
    table = pg.qualify("dinmo_segments", "model_Customers")
    assert table.sql(dialect="postgres") == '"dinmo_segments"."model_customers"'
    pg.execute(
        [
            "CREATE SCHEMA raw",
            "CREATE TABLE raw.customers (id int PRIMARY KEY, email text, amount numeric(12,2), seen timestamptz)",
            "INSERT INTO raw.customers VALUES (1, 'a@x.io', 1.5, now()), (2, NULL, NULL, NULL)",
            f"CREATE VIEW {table.sql(dialect='postgres')} AS SELECT * FROM raw.customers",
        ]
    )
    assert pg.query("SELECT count(*) FROM dinmo_segments.model_customers") == [(2,)]
    assert pg.table_columns("raw.customers") == [
        ("id", "integer"),
        ("email", "text"),
        ("amount", "numeric(12,2)"),
        ("seen", "timestamp with time zone"),
    ]
    assert pg.table_columns("RAW.Customers") is not None  # unquoted names fold to lower case
    assert pg.table_columns('raw."Customers"') is None
    assert pg.table_columns("dinmo_segments.model_customers") is not None
    assert pg.table_columns("raw.missing") is None
    assert pg.query_columns("SELECT id, email AS e FROM raw.customers;") == ["id", "e"]


def test_postgres_execute_is_one_transaction(pg):
    pg.execute(["CREATE SCHEMA raw", "CREATE TABLE raw.t (x int)"])
    with pytest.raises(WarehouseError, match=r"source 'pg' \(postgres\): statement failed: .*missing"):
        pg.execute(
            [
                "INSERT INTO raw.t VALUES (1)",
                "CREATE TABLE raw.t2 (x int)",
                "INSERT INTO raw.missing VALUES (1)",
            ]
        )
    assert pg.query("SELECT count(*) FROM raw.t") == [(0,)]
    assert pg.table_columns("raw.t2") is None


def test_postgres_schema_setting_sets_search_path(postgres_server, pg):
    pg.execute(["CREATE SCHEMA raw", "CREATE TABLE raw.customers (id int)"])
    wh = warehouse_from_config("pg", postgres_server.config(schema="raw"))
    assert wh.query("SELECT count(*) FROM customers") == [(0,)]
    assert wh.table_columns("customers") == [("id", "integer")]


def test_postgres_stream_250k_rows(pg):
    pg.execute(["CREATE SCHEMA raw", BIG_SQL["postgres"]])
    _check_big_stream(pg, "SELECT * FROM raw.big", pa.int32(), ["id", "big", "amount", "ts", "name"])


def test_postgres_type_mapping(pg):
    sql = """
        SELECT 1::int2 AS i2, 2::int4 AS i4, 3::int8 AS i8, 1.25::numeric(5,2) AS n, 1.5::numeric AS n_free,
               1.5::float4 AS f4, 2.5::float8 AS f8, true AS b, 'x'::text AS t, 'y'::varchar(3) AS v,
               date '2024-02-29' AS d, timestamp '2024-01-01 12:00:00.123456' AS ts,
               timestamptz '2024-01-01 12:00:00+02' AS tstz, '{"a": [1, "é"]}'::json AS j, '{"b": 2}'::jsonb AS jb,
               '00000000-0000-0000-0000-000000000001'::uuid AS u, interval '1 day' AS iv, ARRAY[1, 2] AS arr,
               NULL::int4 AS nothing
    """
    with pg.stream(sql) as reader:
        table = reader.read_all()
    types = dict(zip(table.schema.names, table.schema.types))
    assert types == {
        "i2": pa.int16(), "i4": pa.int32(), "i8": pa.int64(), "n": pa.decimal128(5, 2), "n_free": pa.string(),
        "f4": pa.float32(), "f8": pa.float64(), "b": pa.bool_(), "t": pa.string(), "v": pa.string(),
        "d": pa.date32(), "ts": pa.timestamp("us"), "tstz": pa.timestamp("us", tz="UTC"), "j": pa.string(),
        "jb": pa.string(), "u": pa.string(), "iv": pa.string(), "arr": pa.string(), "nothing": pa.int32(),
    }  # fmt: skip
    row = table.to_pylist()[0]
    assert row["n"] == Decimal("1.25") and row["n_free"] == "1.5"
    assert row["ts"] == dt.datetime(2024, 1, 1, 12, 0, 0, 123456)
    assert row["tstz"] == dt.datetime(2024, 1, 1, 10, 0, tzinfo=UTC)
    assert row["j"] == '{"a": [1, "é"]}' and row["jb"] == '{"b": 2}'
    assert row["u"] == "00000000-0000-0000-0000-000000000001"
    assert row["arr"] == "[1, 2]" and row["nothing"] is None


def test_postgres_stream_empty_result_has_schema(pg):
    pg.execute(
        ["CREATE SCHEMA raw", "CREATE TABLE raw.e (id int8, amount numeric(12,2), ts timestamptz, s text)"]
    )
    _check_empty_stream(
        pg,
        "SELECT * FROM raw.e",
        {
            "id": pa.int64(),
            "amount": pa.decimal128(12, 2),
            "ts": pa.timestamp("us", tz="UTC"),
            "s": pa.string(),
        },
    )


def test_postgres_stream_uses_a_server_side_cursor(pg):
    # 10^10 rows: a client-side cursor would never return; the named cursor fetches one batch
    sql = "SELECT a * 100000 + b AS g FROM generate_series(1, 100000) a, generate_series(1, 100000) b"
    started = time.monotonic()
    with pg.stream(sql, batch_rows=1000) as reader:
        assert reader.read_next_batch().num_rows == 1000
    assert time.monotonic() - started < 30
    assert pg.query("SELECT 1") == [(1,)]


def test_postgres_stream_error_is_a_warehouse_error(pg):
    with (
        pytest.raises(WarehouseError, match=r"source 'pg' \(postgres\): query failed: .*missing_table"),
        pg.stream("SELECT * FROM missing_table"),
    ):
        pass


@pytest.mark.parametrize(
    ("override", "cause"),
    [
        ({"password": "wrong-Pa55word"}, "password authentication failed"),
        ({"database": "no_such_db"}, 'database "no_such_db" does not exist'),
        ({"port": None}, "refused"),
        ({"host": "no-such-host.invalid"}, "no-such-host.invalid"),
    ],
)
def test_postgres_bad_connection(postgres_server, override, cause):
    if "port" in override:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            override = {"port": s.getsockname()[1]}  # nothing listens there once closed
    wh = warehouse_from_config("pg", postgres_server.config(**override))
    for operation in (wh.check_connection, lambda: wh.query("SELECT 1"), lambda: wh.execute("SELECT 1")):
        with pytest.raises(WarehouseError) as info:
            operation()
        message = str(info.value)
        assert message.startswith("source 'pg' (postgres): cannot connect to ")
        assert cause in message
        assert postgres_server.password not in message and "wrong-Pa55word" not in message
        assert info.value.__cause__ is None and info.value.__suppress_context__  # driver error not chained
        assert "Pa55word" not in repr(info.value)


def test_postgres_secret_never_shown(postgres_server, monkeypatch):
    monkeypatch.setenv("DINMO_TEST_PG_PASSWORD", postgres_server.password)
    wh = warehouse_from_config("pg", postgres_server.config(password={"env": "DINMO_TEST_PG_PASSWORD"}))
    wh.check_connection()  # EnvVar read from the environment outside a Dagster run
    plain = warehouse_from_config("pg", postgres_server.config())
    for text in (repr(plain), str(plain), repr(wh)):
        assert postgres_server.password not in text and "password" not in text
    # a driver message that echoes the secret is scrubbed
    with pytest.raises(WarehouseError) as info:
        plain.query(f'SELECT * FROM "{postgres_server.password}"')
    assert postgres_server.password not in str(info.value) and "***" in str(info.value)
    monkeypatch.delenv("DINMO_TEST_PG_PASSWORD")
    with pytest.raises(WarehouseError, match="environment variable 'DINMO_TEST_PG_PASSWORD'.*not set"):
        wh.check_connection()


# ============================================================================ Redshift (its SQL on PostgreSQL)


def test_redshift_construction_and_sql(postgres_server):
    wh = warehouse_from_config(
        "rs",
        {"type": "redshift", "host": "example.redshift.amazonaws.com", "database": "dev", "user": "dinmo",
         "password": {"env": "RS_PASSWORD"}},
    )  # fmt: skip
    assert isinstance(wh, RedshiftWarehouse) and wh.dialect == "redshift" and wh.config.port == 5439
    assert wh.qualify("dinmo_segments", "model_X").sql(dialect="redshift") == '"dinmo_segments"."model_x"'
    assert wh._render(wh._create_schema("dinmo_stats")) == 'CREATE SCHEMA IF NOT EXISTS "dinmo_stats"'


def test_redshift_code_path_on_postgres(postgres_server):
    """Redshift speaks the PostgreSQL protocol: run its generated SQL where the dialects agree."""
    wh = warehouse_from_config("rs", postgres_server.config(type="redshift"))
    assert isinstance(wh, RedshiftWarehouse)
    wh.execute("DROP SCHEMA IF EXISTS rs_raw CASCADE")
    wh.ensure_schema("rs_raw")
    target = wh.qualify("rs_raw", "Events").sql(dialect="redshift")
    wh.execute(
        [
            f"CREATE TABLE {target} (id BIGINT, amount DECIMAL(12,2), at TIMESTAMPTZ, label VARCHAR(20))",
            (
                f"INSERT INTO {target} SELECT g, g / 100.0, TIMESTAMPTZ '2024-01-01 00:00:00+00', 'é' "
                "FROM generate_series(1, 2500) g"
            ),
        ]
    )
    assert wh.table_columns("rs_raw.events") == [
        ("id", "bigint"), ("amount", "numeric(12,2)"), ("at", "timestamp with time zone"),
        ("label", "character varying"),
    ]  # fmt: skip
    assert wh.query_columns(f"SELECT id, label FROM {target}") == ["id", "label"]
    with wh.stream(f"SELECT * FROM {target} ORDER BY id", batch_rows=1000) as reader:
        batches = list(reader)
    assert [b.num_rows for b in batches] == [1000, 1000, 500]
    assert batches[0].schema.field("amount").type == pa.decimal128(12, 2)
    assert batches[0].column("amount")[0].as_py() == Decimal("0.01")


# ============================================================================ Snowflake (fakesnow)


@pytest.fixture
def snow():
    import fakesnow

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fakesnow's DuckDB Arrow copies
        with fakesnow.patch():
            wh = warehouse_from_config(
                "snow",
                {"type": "snowflake", "account": "acme-xy12345", "user": "dinmo", "password": SF_PASSWORD,
                 "database": "crm", "warehouse": "WH", "role": "DINMO", "schema": "raw"},
            )  # fmt: skip
            assert isinstance(wh, SnowflakeWarehouse)
            wh.execute("CREATE SCHEMA IF NOT EXISTS crm.raw")
            yield wh


def test_snowflake_goes_through_dagster_snowflake(snow):
    from dagster_snowflake import SnowflakeResource

    resource = snow.snowflake_resource()
    assert isinstance(resource, SnowflakeResource)
    assert resource.database == "crm" and resource.warehouse == "WH" and resource.role == "DINMO"
    assert SF_PASSWORD not in repr(snow)


def test_snowflake_runs_sql(snow):
    snow.ensure_schema("dinmo_segments")
    snow.ensure_schema("dinmo_segments")
    table = snow.qualify("dinmo_segments", "model_Customers")
    assert table.sql(dialect="snowflake") == '"CRM"."DINMO_SEGMENTS"."MODEL_CUSTOMERS"'
    snow.execute(
        [
            "CREATE TABLE raw.customers (id INT, email VARCHAR, amount NUMBER(12,2))",
            "INSERT INTO raw.customers VALUES (1, 'a@x.io', 1.5), (2, NULL, NULL)",
            f"CREATE VIEW {table.sql(dialect='snowflake')} AS SELECT * FROM crm.raw.customers",
        ]
    )
    assert snow.query("SELECT count(*) FROM dinmo_segments.model_customers") == [(2,)]
    assert snow.table_columns("raw.customers") == [
        ("ID", "NUMBER(38,0)"),
        ("EMAIL", "TEXT"),
        ("AMOUNT", "NUMBER(12,2)"),
    ]
    assert snow.table_columns("customers") is not None  # schema from the source config
    assert snow.table_columns("crm.raw.customers") is not None
    assert snow.table_columns("raw.missing") is None
    assert snow.query_columns("SELECT id, email AS e FROM raw.customers") == ["ID", "E"]


def test_snowflake_stream_250k_rows(snow):
    snow.execute(BIG_SQL["snowflake"])
    _check_big_stream(snow, "SELECT * FROM raw.big", pa.int64(), ["ID", "BIG", "AMOUNT", "TS", "NAME"])


def test_snowflake_stream_empty_result_has_schema(snow):
    snow.execute("CREATE TABLE raw.e (id INT, amount NUMBER(12,2), ts TIMESTAMP_TZ, s VARCHAR, b BOOLEAN)")
    _check_empty_stream(
        snow,
        "SELECT * FROM raw.e",
        {"ID": pa.int64(), "AMOUNT": pa.decimal128(12, 2), "TS": pa.timestamp("us", tz="UTC"),
         "S": pa.string(), "B": pa.bool_()},
    )  # fmt: skip


def test_snowflake_errors_name_the_source_not_the_password(snow):
    with pytest.raises(WarehouseError, match=r"source 'snow' \(snowflake\): query failed") as info:
        snow.query(f'SELECT * FROM raw."{SF_PASSWORD}"')
    assert SF_PASSWORD not in str(info.value) and "***" in str(info.value)
    with pytest.raises(WarehouseError) as info:
        snow.execute(f"SELECT '{SF_PASSWORD}' FROM raw.missing")
    assert SF_PASSWORD not in str(info.value)


def snowflake(name: str, **settings: str) -> SnowflakeWarehouse:
    """A Snowflake source built from these settings (no connection is opened)."""
    wh = warehouse_from_config(name, {"type": "snowflake", **settings})
    assert isinstance(wh, SnowflakeWarehouse)
    return wh


def test_snowflake_auth_config():
    with pytest.raises(WarehouseError, match="needs `password`, `private_key` or `private_key_path`"):
        snowflake("snow", account="a", user="u", database="d").snowflake_resource()
    with pytest.raises(WarehouseError, match="either `password` or a private key"):
        snowflake("snow", account="a", user="u", database="d", password="p", private_key="k").snowflake_resource()
    key_only = snowflake("snow", account="a", user="u", database="d", private_key="KEY-xyz")
    assert key_only.snowflake_resource().private_key == "KEY-xyz"
    assert "KEY-xyz" not in repr(key_only)
    # a key that cannot be loaded fails at connect time, without echoing the key
    with pytest.raises(WarehouseError) as info:
        key_only.check_connection()
    assert str(info.value).startswith("source 'snow' (snowflake): cannot connect to account a/d")
    assert "KEY-xyz" not in str(info.value)


# ============================================================================ BigQuery (compiled SQL only)

BQ_KEY = json.dumps(
    {
        "type": "service_account",
        "project_id": "acme-data",
        "private_key": "-----BEGIN PRIVATE KEY-----\nNOTAKEY\n-----END PRIVATE KEY-----\n",
        "client_email": "x@acme-data.iam.gserviceaccount.com",
    }
)


def test_bigquery_construction_and_sql(monkeypatch):
    monkeypatch.setenv("BQ_KEY", BQ_KEY)
    wh = warehouse_from_config(
        "bq",
        {
            "type": "bigquery",
            "project": "acme-data",
            "location": "EU",
            "service_account_json": {"env": "BQ_KEY"},
        },
    )
    assert isinstance(wh, BigQueryWarehouse) and wh.dialect == "bigquery"
    assert "NOTAKEY" not in repr(wh)
    table = wh.qualify("dinmo_segments", "model_Customers")
    assert table.sql(dialect="bigquery") == "`acme-data`.`dinmo_segments`.`model_Customers`"
    create = wh._render(wh._create_schema("dinmo_stats"))
    assert create == "CREATE SCHEMA IF NOT EXISTS `acme-data`.`dinmo_stats` OPTIONS (location='EU')"
    columns_sql = wh._columns_query(*wh._parse_table("raw.customers"))
    assert "`acme-data.raw`.INFORMATION_SCHEMA.COLUMNS" in columns_sql
    assert "table_name = 'customers'" in columns_sql
    for sql in (create, columns_sql):
        sqlglot.parse_one(sql, dialect="bigquery")  # valid BigQuery SQL
    with pytest.raises(WarehouseError, match="needs its schema"):
        wh.table_columns("customers")  # no default dataset configured


def test_bigquery_bad_key_is_a_clear_error():
    wh = warehouse_from_config(
        "bq", {"type": "bigquery", "project": "acme-data", "service_account_json": "not json NOTAKEY-123"}
    )
    assert isinstance(wh, BigQueryWarehouse)
    with pytest.raises(WarehouseError) as info:
        wh.check_connection()
    assert "neither a JSON key nor a base64-encoded JSON key" in str(info.value)
    assert "NOTAKEY-123" not in str(info.value)


@pytest.mark.skipif(not live_configured("bigquery"), reason=BIGQUERY_SKIP)
def test_bigquery_live(request, tmp_path, monkeypatch):
    """The shared sync scenario and `dinmo validate --connect`'s checks against a live BigQuery project."""
    with scenario_project("bigquery", request, tmp_path, monkeypatch) as env:
        check_validation_finds_nothing_wrong(env)
        check_same_files_and_rows(env)


# ============================================================================ Databricks (compiled SQL only)


def test_databricks_construction_and_sql():
    wh = warehouse_from_config(
        "dbx",
        {"type": "databricks", "server_hostname": "dbc-1.cloud.databricks.com", "http_path": "/sql/1.0/warehouses/a",
         "access_token": "dapi-SECRET-123", "catalog": "main"},
    )  # fmt: skip
    assert isinstance(wh, DatabricksWarehouse) and wh.dialect == "databricks"
    assert "dapi-SECRET-123" not in repr(wh)
    assert (
        wh.qualify("dinmo_segments", "model_X").sql(dialect="databricks")
        == "`main`.`dinmo_segments`.`model_x`"
    )
    create = wh._render(wh._create_schema("dinmo_stats"))
    assert create == "CREATE SCHEMA IF NOT EXISTS `main`.`dinmo_stats`"
    columns_sql = wh._columns_query(*wh._parse_table("raw.customers"))
    assert "FROM `main`.information_schema.columns" in columns_sql
    assert "LOWER(table_name) = 'customers'" in columns_sql
    sqlglot.parse_one(columns_sql, dialect="databricks")


def test_databricks_without_driver_is_a_clear_error():
    try:
        import databricks.sql  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("databricks-sql-connector is installed: this test covers its absence")
    wh = warehouse_from_config(
        "dbx",
        {"type": "databricks", "server_hostname": "h", "http_path": "/p", "access_token": "dapi-SECRET-123",
         "catalog": "main"},
    )  # fmt: skip
    assert isinstance(wh, DatabricksWarehouse)
    with pytest.raises(WarehouseError, match="pip install databricks-sql-connector"):
        wh.check_connection()


@pytest.mark.skipif(not live_configured("databricks"), reason=DATABRICKS_SKIP)
def test_databricks_live(request, tmp_path, monkeypatch):
    """The shared sync scenario and `dinmo validate --connect`'s checks against a live Databricks SQL warehouse."""
    with scenario_project("databricks", request, tmp_path, monkeypatch) as env:
        check_validation_finds_nothing_wrong(env)
        check_same_files_and_rows(env)


# ============================================================================ warehouse_from_config


def test_from_config_errors(tmp_path):
    with pytest.raises(WarehouseError, match="source 'x': unknown type 'oracle'"):
        warehouse_from_config("x", {"type": "oracle"})
    with pytest.raises(WarehouseError, match="source 'x': missing `type`"):
        warehouse_from_config("x", {"path": "a.duckdb"})
    with pytest.raises(WarehouseError, match=r"source 'x' \(postgres\): unknown key\(s\) passwd"):
        warehouse_from_config(
            "x", {"type": "postgres", "host": "h", "database": "d", "user": "u", "passwd": "s3cr3t"}
        )
    with pytest.raises(WarehouseError) as info:
        warehouse_from_config(
            "x", {"type": "postgres", "host": "h", "user": "u", "password": "s3cr3t", "port": "abc"}
        )
    message = str(info.value)
    assert message.startswith("source 'x' (postgres): invalid configuration")
    assert "database" in message and "port" in message and "s3cr3t" not in message
    wh = warehouse_from_config("x", {"type": "duckdb", "path": str(tmp_path / "w.duckdb")})
    assert wh.source_name == "x"
    # null is "unset" for a setting that cannot be None
    pg = warehouse_from_config("x", {"type": "postgres", "host": "h", "database": "d", "user": "u",
                                     "password": None, "schema": None})  # fmt: skip
    assert (pg.config.password, pg.config.schema_) == (None, "public")


def test_every_project_config_key_is_accepted():
    """The project YAML and the warehouse read a source's settings with the same model, one per type."""
    from dinmo_dagster.config import connector_models
    from dinmo_dagster.connectors import ConnectorKind, connectors

    models = connector_models("sources")
    assert list(models) == ["duckdb", "postgres", "snowflake", "bigquery", "redshift", "databricks"]
    for connector in connectors(ConnectorKind.WAREHOUSE):
        assert models[connector.type] is connector.config_model
        assert connector.adapter.source_type == connector.type

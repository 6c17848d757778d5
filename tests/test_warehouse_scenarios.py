"""One scenario suite, the same syncs against every warehouse available here: DuckDB, a real
PostgreSQL server (also as a Redshift source: Redshift's dialect where the two agree), and Snowflake's
real connector under fakesnow. Same files, same rows.

The same scenario runs against a live BigQuery project and a live Databricks SQL warehouse
(`test_bigquery_live` and `test_databricks_live` in test_warehouses.py) when their credentials are in
the environment; see `BIGQUERY_SKIP` and `DATABRICKS_SKIP` for the variables. There, every schema it
creates has a unique `dinmo_test_<random>_` name and is dropped at the end.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import dagster as dg
import pytest
import sqlglot
from sqlglot import exp

from dinmo_dagster import sync
from dinmo_dagster.assets.activations import sync_target
from dinmo_dagster.assets.models import refresh_upstream
from dinmo_dagster.config import load_project
from dinmo_dagster.resources import build_resources

SEED = [
    (1, "ann@example.com", "12.50", "FR", None),
    (2, "bob@example.com", "900.00", "DE", "vip"),
    (3, "cle@example.com", "600.10", "FR", ""),
    (4, "dan@example.com", "700.00", "ES", "NULL"),
    (5, "eve@example.com", "510.00", "DE", None),
]
# Between sync 1 and sync 2: one insert, value-to-NULL, NULL-to-value, a change in an unmapped column,
# and a delete. `{raw}` is the schema of the customer table.
CHANGES = [
    "insert into {raw}.customers values (6, 'fay@example.com', 800.00, 'FR', 'new', 'x')",
    "update {raw}.customers set note = null where customer_id = 2",
    "update {raw}.customers set note = 'now set' where customer_id = 5",
    "update {raw}.customers set unmapped = 'changed' where customer_id = 3",
    "delete from {raw}.customers where customer_id = 4",
]

BIGQUERY_SKIP = (
    "live BigQuery test: set DINMO_TEST_BIGQUERY_PROJECT (a project where the credentials may create and "
    "drop datasets) and DINMO_TEST_BIGQUERY_KEY (a service-account JSON key, as text or base64; without it "
    "Application Default Credentials are used); optional DINMO_TEST_BIGQUERY_LOCATION (e.g. EU). There is "
    "no BigQuery emulator to run it locally"
)
DATABRICKS_SKIP = (
    "live Databricks test: set DINMO_TEST_DATABRICKS_SERVER_HOSTNAME, DINMO_TEST_DATABRICKS_HTTP_PATH and "
    "DINMO_TEST_DATABRICKS_TOKEN (a token that may create and drop schemas); optional "
    "DINMO_TEST_DATABRICKS_CATALOG; needs pip install databricks-sql-connector. There is no Databricks "
    "emulator to run it locally"
)


def live_configured(kind: str) -> bool:
    """Whether the environment holds what the live test of `kind` (bigquery, databricks) needs."""
    if kind == "bigquery":
        return bool(os.environ.get("DINMO_TEST_BIGQUERY_PROJECT"))
    names = ("DINMO_TEST_DATABRICKS_SERVER_HOSTNAME", "DINMO_TEST_DATABRICKS_HTTP_PATH", "DINMO_TEST_DATABRICKS_TOKEN")
    return all(os.environ.get(n) for n in names)


# The longest names a project may use (63 characters), sharing their first 59: PostgreSQL cuts
# identifiers at 63 bytes, so the tables and views named after them must still be told apart.
LONG = "x" * 59
LONG_NAMES = {"customers": f"{LONG}cust", "big": f"{LONG}_big", "diff": f"{LONG}diff", "ups": f"{LONG}_ups"}


def _project_yaml(source: str, raw: str = "raw", names: dict[str, str] | None = None) -> str:
    n = {k: k for k in LONG_NAMES} | (names or {})
    return textwrap.dedent(f"""
        sources:
          wh: {source}
        models:
          {n["customers"]}: {{source: wh, table: {raw}.customers, primary_key: customer_id}}
        segments:
          {n["big"]}: {{model: {n["customers"]}, sql: "select * from {{{{ model }}}} where ltv > 500"}}
        destinations:
          out: {{type: local, path: out}}
        activations:
          {n["diff"]}:
            segment: {n["big"]}
            destination: out
            file_name: "big_{{DD}}"
            sync_mode: difference
            mapping: {{customer_id: id, email: email, ltv: ltv, note: note}}
          {n["ups"]}:
            segment: {n["big"]}
            destination: out
            folder: ups
            file_name: "big_{{DD}}"
            sync_mode: upsert
            mapping: {{customer_id: id, note: note}}
        """)


@contextlib.contextmanager
def duckdb_source(tmp_path: Path) -> Iterator[str]:
    yield f"{{type: duckdb, path: {tmp_path / 'wh.duckdb'}}}"


@contextlib.contextmanager
def postgres_source(tmp_path: Path, server, monkeypatch) -> Iterator[str]:
    monkeypatch.setenv("PG_PASSWORD", server.password)
    yield (f"{{type: postgres, host: {server.host}, port: {server.port}, database: {server.database}, "
           f"user: {server.user}, password: {{env: PG_PASSWORD}}}}")


@contextlib.contextmanager
def redshift_source(tmp_path: Path, server, monkeypatch) -> Iterator[str]:
    """Redshift's dialect and code path, run on the PostgreSQL server where the two agree."""
    monkeypatch.setenv("RS_PASSWORD", server.password)
    yield (f"{{type: redshift, host: {server.host}, port: {server.port}, database: {server.database}, "
           f"user: {server.user}, password: {{env: RS_PASSWORD}}}}")


@contextlib.contextmanager
def snowflake_source(tmp_path: Path, monkeypatch) -> Iterator[str]:
    import fakesnow

    monkeypatch.setenv("SF_PASSWORD", "not-a-real-password")
    (tmp_path / "fakesnow").mkdir()
    with fakesnow.patch(db_path=str(tmp_path / "fakesnow")):
        yield ("{type: snowflake, account: acct, user: dinmo, password: {env: SF_PASSWORD}, database: CRM, "
               "warehouse: WH, role: DINMO}")


def _helper_schemas_yaml(prefix: str) -> str:
    return f"helper_schemas: {{segments: {prefix}segments, stats: {prefix}stats, delta_storage: {prefix}delta}}"


def _yaml_source(settings: dict[str, str], prefix: str) -> str:
    """A flow mapping of `settings` (JSON strings are YAML scalars) with the test's own helper schemas."""
    items = [f"{key}: {value if value.startswith('{env:') else json.dumps(value)}" for key, value in settings.items()]
    return "{" + ", ".join([*items, _helper_schemas_yaml(prefix)]) + "}"


def bigquery_source(prefix: str) -> str:
    """A live BigQuery source from DINMO_TEST_BIGQUERY_* (see BIGQUERY_SKIP)."""
    settings = {"type": "bigquery", "project": os.environ["DINMO_TEST_BIGQUERY_PROJECT"]}
    if os.environ.get("DINMO_TEST_BIGQUERY_LOCATION"):
        settings["location"] = os.environ["DINMO_TEST_BIGQUERY_LOCATION"]
    if os.environ.get("DINMO_TEST_BIGQUERY_KEY"):
        settings["service_account_json"] = "{env: DINMO_TEST_BIGQUERY_KEY}"
    return _yaml_source(settings, prefix)


def databricks_source(prefix: str) -> str:
    """A live Databricks source from DINMO_TEST_DATABRICKS_* (see DATABRICKS_SKIP)."""
    settings = {
        "type": "databricks",
        "server_hostname": os.environ["DINMO_TEST_DATABRICKS_SERVER_HOSTNAME"],
        "http_path": os.environ["DINMO_TEST_DATABRICKS_HTTP_PATH"],
        "access_token": "{env: DINMO_TEST_DATABRICKS_TOKEN}",
    }
    if os.environ.get("DINMO_TEST_DATABRICKS_CATALOG"):
        settings["catalog"] = os.environ["DINMO_TEST_DATABRICKS_CATALOG"]
    return _yaml_source(settings, prefix)


def _drop_schemas(wh, schemas: list[str]) -> None:
    for schema in schemas:
        drop = exp.Drop(tables=[wh._schema_expression(schema)], kind="SCHEMA", exists=True, cascade=True)
        wh.execute(wh._render(drop))


@contextlib.contextmanager
def scenario_project(kind: str, request, tmp_path: Path, monkeypatch,
                     names: dict[str, str] | None = None) -> Iterator[SimpleNamespace]:
    """A project with model `customers` (SEED rows), segment `big` and activations `diff` and `ups`, on a
    warehouse of `kind`: duckdb, postgres, redshift, snowflake, or live bigquery / databricks."""
    raw, live_schemas = "raw", []
    if kind == "duckdb":
        ctx = duckdb_source(tmp_path)
    elif kind in ("postgres", "redshift"):
        source = postgres_source if kind == "postgres" else redshift_source
        ctx = source(tmp_path, request.getfixturevalue("postgres_server"), monkeypatch)
        _reset_postgres(request.getfixturevalue("postgres_server"))
    elif kind == "snowflake":
        ctx = snowflake_source(tmp_path, monkeypatch)
    else:
        if not live_configured(kind):
            pytest.skip(BIGQUERY_SKIP if kind == "bigquery" else DATABRICKS_SKIP)
        # unique names: runs in parallel, and the customer's own schemas, are never touched
        prefix = f"dinmo_test_{uuid.uuid4().hex[:10]}_"
        raw = f"{prefix}raw"
        live_schemas = [raw, f"{prefix}segments", f"{prefix}stats", f"{prefix}delta"]
        ctx = contextlib.nullcontext(bigquery_source(prefix) if kind == "bigquery" else databricks_source(prefix))
    with ctx as source:
        (tmp_path / "dinmo.yaml").write_text(_project_yaml(source, raw, names))
        project = load_project(tmp_path)
        with dg.build_resources(build_resources(project)) as resources:
            wh = resources.source_wh.get_warehouse()
            try:
                if live_schemas:
                    wh.ensure_schema(raw)  # in the source's location (BigQuery)
                else:
                    run(wh, f"create schema if not exists {raw}")
                run(wh, f"create table {raw}.customers (customer_id integer, email varchar, ltv decimal(10, 2), "
                        "country varchar, note varchar, unmapped varchar)")
                values = ", ".join(f"({i}, '{e}', {ltv}, '{c}', {'null' if n is None else repr(n)}, 'u')"
                                   for i, e, ltv, c, n in SEED)
                run(wh, f"insert into {raw}.customers values {values}")
                yield SimpleNamespace(project=project, resources=resources, wh=wh, dir=tmp_path, kind=kind, raw=raw,
                                      names={k: k for k in LONG_NAMES} | (names or {}))
            except BaseException:
                # the test's own failure is the one to report, not a failing clean-up after it
                with contextlib.suppress(Exception):
                    _drop_schemas(wh, live_schemas)
                raise
            _drop_schemas(wh, live_schemas)


@pytest.fixture(params=["duckdb", "postgres", "redshift", "snowflake"])
def warehouse_project(request, tmp_path: Path, monkeypatch):
    with scenario_project(request.param, request, tmp_path, monkeypatch) as env:
        yield env


def _reset_postgres(server) -> None:
    import psycopg

    with psycopg.connect(server.dsn, autocommit=True) as con:
        for schema in ("raw", "dinmo_segments", "dinmo_stats", "dinmo_delta_storage"):
            con.execute(f"drop schema if exists {schema} cascade")


def run(wh, duckdb_sql: str) -> None:
    """Test data set-up, written once in DuckDB's dialect and transpiled for the warehouse."""
    # The Redshift source runs on a PostgreSQL server: its test data is set up in PostgreSQL's SQL.
    dialect = "postgres" if wh.dialect == "redshift" else wh.dialect
    wh.execute(sqlglot.transpile(duckdb_sql, read="duckdb", write=dialect))


def do_sync(env, activation: str, key: str) -> sync.SyncResult:
    activation = env.names[activation]
    t = sync_target(env.project, activation, env.resources)
    refresh_upstream(env.project, activation, env.resources)
    sync.take_snapshot(t, key)
    return sync.deliver(t, key)


def read_csv(path: Path) -> list[list[str]]:
    return list(csv.reader(io.StringIO(path.read_text(encoding="utf-8"))))


def test_same_files_and_rows_on_every_warehouse(warehouse_project) -> None:
    check_same_files_and_rows(warehouse_project)


def check_same_files_and_rows(env: SimpleNamespace) -> None:
    """The shared scenario: a full sync, changes of every kind, a delta sync, a sync with no change."""
    out = env.dir / "out"
    r1 = do_sync(env, "diff", "20250101T000000.000000Z")
    assert (r1.sync_type, r1.counts.added, r1.rows_written) == ("full", 4, 4)
    assert sorted(p.name for p in out.iterdir() if p.is_file()) == ["big_01_added.csv", "big_01_removed.csv",
                                                                    "big_01_updated.csv"]
    assert read_csv(out / "big_01_added.csv")[0] == ["id", "email", "ltv", "note"]
    assert sorted(read_csv(out / "big_01_added.csv")[1:]) == [
        ["2", "bob@example.com", "900.00", "vip"],
        ["3", "cle@example.com", "600.10", ""],
        ["4", "dan@example.com", "700.00", "NULL"],
        ["5", "eve@example.com", "510.00", ""],
    ]
    assert read_csv(out / "big_01_removed.csv") == [["id", "email", "ltv", "note"]]
    u1 = do_sync(env, "ups", "20250101T000001.000000Z")
    assert (u1.sync_type, u1.counts.added) == ("full", 4)

    for statement in CHANGES:
        run(env.wh, statement.format(raw=env.raw))

    r2 = do_sync(env, "diff", "20250102T000000.000000Z")
    c = r2.counts
    assert (r2.sync_type, c.added, c.updated, c.removed, c.unchanged) == ("delta", 1, 2, 1, 1)
    assert read_csv(out / "big_02_added.csv")[1:] == [["6", "fay@example.com", "800.00", "new"]]
    assert sorted(read_csv(out / "big_02_updated.csv")[1:]) == [
        ["2", "bob@example.com", "900.00", ""],
        ["5", "eve@example.com", "510.00", "now set"],
    ]
    # Removed rows carry their last synced values.
    assert read_csv(out / "big_02_removed.csv")[1:] == [["4", "dan@example.com", "700.00", "NULL"]]

    # The upsert activation has its own baseline: it sees the same changes, and only its mapped columns.
    u2 = do_sync(env, "ups", "20250102T000001.000000Z")
    assert (u2.counts.added, u2.counts.updated, u2.counts.removed) == (1, 2, 1)
    assert sorted(read_csv(out / "ups" / "big_02.csv")[1:]) == [["2", ""], ["5", "now set"], ["6", "new"]]

    r3 = do_sync(env, "diff", "20250103T000000.000000Z")
    assert (r3.counts.added, r3.counts.updated, r3.counts.removed, r3.counts.unchanged) == (0, 0, 0, 4)
    assert [len(read_csv(out / f"big_03_{k}.csv")) for k in ("added", "updated", "removed")] == [1, 1, 1]
    u3 = do_sync(env, "ups", "20250103T000001.000000Z")
    assert (u3.files, u3.rows_written) == ([], 0)


@pytest.mark.parametrize("kind", ["duckdb", "postgres"])
def test_names_of_63_characters_keep_their_own_tables_and_views(kind, request, tmp_path: Path, monkeypatch) -> None:
    """Two activations, and two syncs of one activation, never share a snapshot table, even where the
    warehouse cuts long identifiers (PostgreSQL: 63 bytes)."""
    with scenario_project(kind, request, tmp_path, monkeypatch, names=LONG_NAMES) as env:
        check_same_files_and_rows(env)


def test_validation_finds_nothing_wrong_on_every_warehouse(warehouse_project) -> None:
    """Configured names match the warehouse's whatever case it reports them in (Snowflake: upper case)."""
    check_validation_finds_nothing_wrong(warehouse_project)


def check_validation_finds_nothing_wrong(env: SimpleNamespace) -> None:
    """`dinmo validate --connect`'s checks find no problem in the scenario's project."""
    from dinmo_dagster.validation import check_project

    assert [str(p) for p in check_project(env.project, env.resources)] == []

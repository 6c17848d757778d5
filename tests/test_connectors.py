"""Connectors: one registry of warehouse and destination types, thin Dagster resources, secrets by name.

A connector of one's own (a SQLite source, here) is one module ending with its registration line; the
project YAML, its messages and the Dagster resources take it like a built-in one. Real engines only:
SQLite and the PostgreSQL server of the `postgres_server` fixture.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Literal

import dagster as dg
import pytest

from dinmo_dagster.config import ProjectError, load_project
from dinmo_dagster.connectors import register_warehouse
from dinmo_dagster.destinations import DestinationError, destination_from_config
from dinmo_dagster.resources import DestinationResource, WarehouseResource, build_resources
from dinmo_dagster.warehouses import SourceConfig
from dinmo_dagster.warehouses.duckdb import DuckDBWarehouse

SQLITE_CONNECTOR = '''
"""A SQLite file as a source: one module, one registration line."""

import sqlite3
from contextlib import contextmanager
from typing import ClassVar, Literal

from dinmo_dagster.connectors import register_warehouse
from dinmo_dagster.warehouses import SourceConfig, Warehouse


class SQLiteSource(SourceConfig):
    path_fields: ClassVar[tuple[str, ...]] = ("path",)

    type: Literal["sqlite"]
    path: str


class SQLiteWarehouse(Warehouse):
    dialect: ClassVar[str] = "sqlite"
    source_type: ClassVar[str] = "sqlite"

    @contextmanager
    def _open(self):
        conn = sqlite3.connect(self._value("path"))
        try:
            yield conn
        finally:
            conn.close()


register_warehouse("sqlite", SQLiteSource, SQLiteWarehouse)
'''

USE_IT = '''
import json, sys
from pathlib import Path

import dagster as dg

import acme_sqlite  # registers the connector, as a code location would before loading the project
from dinmo_dagster.config import ProjectError, load_project
from dinmo_dagster.resources import build_resources, warehouse_of

root = Path(sys.argv[1])
project = load_project(root / "good")
resources = build_resources(project)
with dg.build_resources(resources) as initialized:
    wh = warehouse_of(initialized, "wh")
    wh.execute(["create table t (x integer)", "insert into t values (41)"])
    rows = wh.query("select x + 1 from t")
try:
    load_project(root / "bad")
    problems = []
except ProjectError as exc:
    problems = exc.problems
print(json.dumps({"adapter": type(wh).__name__, "settings": resources["source_wh"].settings,
                  "rows": rows, "problems": problems}))
'''


def test_a_connector_of_ones_own_is_one_module_and_one_registration_line(tmp_path: Path) -> None:
    """Registered before the project loads, a `sqlite` source is validated, listed and connected like a built-in."""
    (tmp_path / "acme_sqlite.py").write_text(SQLITE_CONNECTOR)
    (tmp_path / "use_it.py").write_text(USE_IT)
    for name, source in (("good", "{type: sqlite, path: wh.db}"), ("bad", "{type: sqlite3, path: wh.db}")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "dinmo.yaml").write_text(f"sources:\n  wh: {source}\n")
    # a child process: the registration must not outlive this test
    out = subprocess.run([sys.executable, str(tmp_path / "use_it.py"), str(tmp_path)], cwd=tmp_path,
                         capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    seen = json.loads(out.stdout.splitlines()[-1])
    assert seen == {
        "adapter": "SQLiteWarehouse",
        "settings": {"type": "sqlite", "path": str(tmp_path / "good" / "wh.db")},
        "rows": [[42]],
        "problems": [("dinmo.yaml: sources.wh.type: found 'sqlite3'; allowed: duckdb, postgres, snowflake, "
                      "bigquery, redshift, databricks, sqlite")],
    }
    assert (tmp_path / "good" / "wh.db").is_file()


def test_a_type_registered_twice_or_with_another_literal_is_an_error() -> None:
    class OtherSource(SourceConfig):
        type: Literal["duckdb"]

    class OtherWarehouse(DuckDBWarehouse):
        pass

    with pytest.raises(ValueError) as info:
        register_warehouse("duckdb", OtherSource, OtherWarehouse)
    assert str(info.value) == (
        "warehouse type 'duckdb' is already registered by dinmo_dagster.warehouses.duckdb.DuckDBWarehouse"
    )
    with pytest.raises(TypeError) as info:
        register_warehouse("oracle", OtherSource, OtherWarehouse)
    assert str(info.value) == "connector 'oracle': OtherSource.type must be Literal['oracle']"


def test_a_source_secret_stays_a_variable_name_in_dagster_and_is_read_when_connecting(
    postgres_server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DINMO_TEST_PG_SECRET", postgres_server.password)
    s = postgres_server
    (tmp_path / "dinmo.yaml").write_text(
        f"sources:\n  pg: {{type: postgres, host: {s.host}, port: {s.port}, database: {s.database}, "
        f"user: {s.user}, password: {{env: DINMO_TEST_PG_SECRET}}}}\n"
    )
    resources = build_resources(load_project(tmp_path))
    expected = {"type": "postgres", "host": s.host, "port": s.port, "database": s.database, "user": s.user,
                "password": {"env": "DINMO_TEST_PG_SECRET"}}
    assert resources["source_pg"].settings == expected
    seen = {}

    @dg.asset(required_resource_keys={"source_pg"})
    def probe(context) -> None:  # unannotated: Dagster would read the annotation as a string here
        resource = context.resources.source_pg
        seen["settings"] = resource.settings  # what the run holds: the variable's name
        seen["rows"] = resource.get_warehouse().query("SELECT 41 + 1")
        context.log.info(f"connected with {resource!r}")

    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize([probe], resources=resources, instance=instance)
    assert result.success
    assert seen == {"settings": expected, "rows": [(42,)]}
    logs = "\n".join(str(record) for record in instance.all_logs(result.run_id))
    assert "connected with WarehouseResource(" in logs
    assert postgres_server.password not in logs


def test_a_resource_with_an_inline_secret_is_refused_without_quoting_it() -> None:
    with pytest.raises(ValueError) as info:
        WarehouseResource(source_name="pg", settings={"type": "postgres", "host": "h", "database": "d",
                                                      "user": "u", "password": "Inline-Pa55word"})
    assert str(info.value) == ("source 'pg': password: secrets must not be written in resource config; found an "
                               "inline value; allowed: {env: VARIABLE_NAME}")
    with pytest.raises(ValueError) as info:
        DestinationResource(destination_name="exports", settings={"type": "gcs", "bucket": "acme-exports",
                                                                  "service_account_json": '{"k": "KEY-123"}'})
    assert str(info.value) == ("destination 'exports': service_account_json: secrets must not be written in "
                               "resource config; found an inline value; allowed: {env: VARIABLE_NAME}")


def test_a_destination_key_whose_variable_is_unset_is_named_not_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    """A key named in the YAML is never replaced by application default credentials because its variable is unset."""
    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    monkeypatch.delenv("DINMO_TEST_UNSET_KEY", raising=False)
    dest = destination_from_config(
        "exports", {"type": "gcs", "bucket": "acme-exports", "service_account_json": {"env": "DINMO_TEST_UNSET_KEY"}}
    )
    with pytest.raises(DestinationError) as info:
        dest.check()
    assert str(info.value) == (
        "destination 'exports': environment variable 'DINMO_TEST_UNSET_KEY' (for `service_account_json`) is not set"
    )


def test_gcs_settings_are_checked_when_the_project_loads(tmp_path: Path) -> None:
    """The YAML and the destination share one settings model: its checks speak when the project loads."""
    (tmp_path / "dinmo.yaml").write_text(textwrap.dedent("""
        destinations:
          a: {type: gcs, bucket: "gs://acme"}
          b: {type: gcs, bucket: acme-exports, retry_attempts: 0}
          c: {type: gcs, bucket: acme-exports, service_account_json: {env: KEY}, service_account_file: key.json}
          d: {type: gcs, bucket: acme-exports, retry_attempts: 2, timeout_seconds: 30}
    """))
    with pytest.raises(ProjectError) as info:
        load_project(tmp_path)
    assert info.value.problems == [
        ("dinmo.yaml: destinations.a.bucket: invalid GCS bucket name 'gs://acme' (expected a bare bucket name such "
         "as 'my-bucket', without 'gs://' or a folder)"),
        "dinmo.yaml: destinations.b: retry_attempts must be at least 1",
        "dinmo.yaml: destinations.c: set service_account_json or service_account_file, not both",
    ]

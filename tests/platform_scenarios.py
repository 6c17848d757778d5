"""The set-up the platform scenario tests share (tests/test_platform_*.py): the project file of a
`customers` model and its `big` segment with API-platform destinations, a DuckDB file or the shared
PostgreSQL server as its warehouse (schemas dropped before and after), raw.customers seeded, and one
sync run the way Dagster runs it (the job in process, or its two steps called directly).

Imported as a top-level module, like the `fakes` package: pytest puts tests/ (the folder of the
rootdir's conftest.py, which has no __init__.py) on sys.path.
"""

from __future__ import annotations

import contextlib
import json
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import requests
import sqlglot

from dinmo_dagster import platform_sync, sync
from dinmo_dagster.assets.activations import sync_target
from dinmo_dagster.assets.models import refresh_upstream
from dinmo_dagster.config import load_project
from dinmo_dagster.names import job_name, partitions_name
from dinmo_dagster.resources import build_resources

# The schemas a sync creates (and raw, the test's own tables): dropped from the session-wide server.
SCHEMAS = ("raw", "dinmo_segments", "dinmo_stats", "dinmo_delta_storage")
# raw.customers of the scenarios: Ann is out of the ``big`` segment (ltv > 500), the others in.
SEED = [
    (1, "ann@example.com", "Ann", "12.50"),
    (2, "bob@example.com", "Bob", "900.00"),
    (3, "cle@example.com", "Cle", "600.10"),
    (4, "dan@example.com", "Dan", "700.00"),
]
# The environment variable each platform's secret is read from in the project files below.
SECRET_ENV = {"hubspot": ("access_token", "HUBSPOT_TOKEN"), "meta_ads": ("access_token", "META_TOKEN"),
              "braze": ("api_key", "BRAZE_API_KEY")}


def run(wh: Any, duckdb_sql: str) -> None:
    """Run a statement written in DuckDB's SQL on ``wh``, in its own dialect."""
    wh.execute(sqlglot.transpile(duckdb_sql, read="duckdb", write=wh.dialect))


def reset_postgres(server: Any) -> None:
    """Drop every schema a scenario creates on the PostgreSQL server (shared by the whole session)."""
    import psycopg

    with psycopg.connect(server.dsn, autocommit=True) as con:
        for schema in SCHEMAS:
            con.execute(f"drop schema if exists {schema} cascade")


def postgres_source(server: Any) -> str:
    """The ``sources.wh`` entry of the PostgreSQL server, its password read from ``PG_PASSWORD``."""
    return (f"{{type: postgres, host: {server.host}, port: {server.port}, database: {server.database}, "
            f"user: {server.user}, password: {{env: PG_PASSWORD}}}}")


@contextlib.contextmanager
def warehouse_source(kind: str, request: pytest.FixtureRequest, tmp_path: Path,
                     monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The ``sources.wh`` entry of a ``kind`` warehouse: a DuckDB file in ``tmp_path``, or the
    ``postgres_server`` fixture's server with its schemas dropped before and after (``PG_PASSWORD`` set)."""
    if kind == "duckdb":
        yield f"{{type: duckdb, path: {tmp_path / 'wh.duckdb'}}}"
        return
    server = request.getfixturevalue("postgres_server")
    reset_postgres(server)
    monkeypatch.setenv("PG_PASSWORD", server.password)
    try:
        yield postgres_source(server)
    finally:  # the server is shared by the whole session: leave no schema behind
        reset_postgres(server)


def destination(name: str, type_: str, service: str, url: str, **fields: Any) -> str:
    """A ``destinations`` entry (YAML) of a platform served by a fake at ``url``, its secret read from the
    variable of ``SECRET_ENV``; ``fields`` (values written as JSON) follow."""
    secret, env = SECRET_ENV[type_]
    lines = [f"{name}:", f"  type: {type_}", f"  service: {service}",
             *(f"  {k}: {json.dumps(v)}" for k, v in fields.items()),
             f"  {secret}: {{env: {env}}}", f"  base_url: {url}"]
    return "\n".join(lines) + "\n"


def project_yaml(source: str, *, destinations: list[str], activations: str, models: str = "",
                 segments: str = "") -> str:
    """A dinmo.yaml: warehouse ``wh`` (``source``), the ``customers`` model on raw.customers and its
    ``big`` segment (ltv > 500), then the extra ``models`` and ``segments``, ``destinations`` and
    ``activations`` (YAML entries, dedented here)."""

    def entries(text: str) -> str:
        return textwrap.indent(textwrap.dedent(text).strip("\n"), "  ") + "\n" if text.strip() else ""

    return ("sources:\n"
            f"  wh: {source}\n"
            "models:\n"
            "  customers: {source: wh, table: raw.customers, primary_key: customer_id}\n"
            + entries(models)
            + "segments:\n"
            '  big: {model: customers, sql: "select * from {{ model }} where ltv > 500"}\n'
            + entries(segments)
            + "destinations:\n" + "".join(entries(d) for d in destinations)
            + "activations:\n" + entries(activations))


@contextlib.contextmanager
def open_project(project_dir: Path) -> Iterator[tuple[Any, Any, Any]]:
    """The project in ``project_dir`` loaded, its resources built and its warehouse ``wh`` opened:
    ``(project, resources, warehouse)``."""
    project = load_project(project_dir)
    with dg.build_resources(build_resources(project)) as resources:
        yield project, resources, resources.source_wh.get_warehouse()


def create_customers(wh: Any, rows: list[tuple] | str, note: bool = False) -> None:
    """Create raw.customers (customer_id, email, first_name, ltv, and ``note`` if asked: 'x' in every
    seeded row) holding ``rows``: ``(id, email, first name, ltv)`` tuples, or a DuckDB query."""
    run(wh, "create schema if not exists raw")
    run(wh, "create table raw.customers (customer_id integer, email varchar, first_name varchar, "
            "ltv decimal(10, 2)" + (", note varchar)" if note else ")"))
    if isinstance(rows, str):
        run(wh, f"insert into raw.customers {rows}")
    else:
        extra = ", 'x'" if note else ""
        run(wh, "insert into raw.customers values " + ", ".join(
            f"({i}, '{e}', '{n}', {ltv}{extra})" for i, e, n, ltv in rows))


def run_sync_job(defs: dg.Definitions, instance: dg.DagsterInstance, activation: str,
                 key: str | None = None) -> dg.ExecuteInProcessResult:
    """The activation's Dagster sync job run in process on partition ``key`` (a new one, added to the
    instance, unless given), failures returned rather than raised."""
    if key is None:
        key = sync.new_partition_key()
        instance.add_dynamic_partitions(partitions_name(activation), [key])
    return defs.resolve_job_def(job_name(activation)).execute_in_process(
        instance=instance, partition_key=key, raise_on_error=False)


def sync_steps(env: Any, activation: str, full_refresh: bool = False, key: str | None = None,
               on_log: Callable[[str], None] | None = None) -> sync.SyncResult:
    """One sync of ``activation`` (``env`` has ``project`` and ``resources``) under partition ``key`` (a new
    one unless given): its snapshot, then its delivery, what the Dagster sync job runs; ``on_log`` gets
    the delivery's log lines."""
    key = key or sync.new_partition_key()
    t = sync_target(env.project, activation, env.resources)
    refresh_upstream(env.project, activation, env.resources)
    sync.take_snapshot(t, key, full=full_refresh)
    return platform_sync.deliver(t, key, force_full=full_refresh, on_log=on_log or sync.log.info)


def seed_braze(url: str, api_key: str, emails: list[str]) -> None:
    """Users Braze holds (an audience add creates no profile), 75 per request."""
    for i in range(0, len(emails), 75):
        answer = requests.post(f"{url}/users/track",
                               json={"attributes": [{"email": e} for e in emails[i:i + 75]]},
                               headers={"Authorization": f"Bearer {api_key}"}, timeout=5)
        assert answer.status_code == 201 and "errors" not in answer.json()


def braze_audience(braze: Any, audience: str) -> set[str]:
    """The e-mails of the Braze fake's users in ``audience``."""
    return {u.email for u in braze.users if audience in (u.attributes.get("dinmo_audiences") or [])}

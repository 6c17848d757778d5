"""Identity resolution on BigQuery, Redshift and Databricks: the population of tests/test_identity.py.

- Databricks: the product's own ``DatabricksWarehouse`` runs the SQL on a local Apache Spark session behind a
  stand-in of databricks-sql-connector (tests/spark_connection.py; Iceberg tables instead of Delta). Fuzzy
  rules use Spark's ``levenshtein``: similarity = 1 - distance / longer length.
- BigQuery: no emulator. The engine writes BigQuery's SQL (sqlglot's ``bigquery`` dialect), asserted as text,
  and a stand-in runs each statement on DuckDB after transpiling it back (as tests/test_unload.py does for
  ``EXPORT DATA``): this proves the statements parse as GoogleSQL and mean what the DuckDB ones do, not that
  BigQuery accepts every one of them. Fuzzy rules use ``EDIT_DISTANCE``
  (https://cloud.google.com/bigquery/docs/reference/standard-sql/string_functions#edit_distance).
- Redshift: its SQL (sqlglot's ``redshift`` dialect, texts as ``VARCHAR(65535)``) runs on the real PostgreSQL
  server, as the other Redshift tests do; exact rules only (Redshift has neither Levenshtein nor
  Jaro-Winkler), a fuzzy rule is refused at load time (tests/test_identity.py's validation test).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
import sqlglot
from sqlglot import exp
from test_databricks_spark import HOST, HTTP_PATH, _drop_schemas, driver, spark  # noqa: F401 - fixtures
from test_identity import (
    CRM,
    EXPECTED_GROUPS,
    WEB,
    assert_population,
    groups,
    literal,
    load_raw,
    pid,
    project_yaml,
    resolve,
    warehouse,
)

from dinmo_dagster.config import load_project
from dinmo_dagster.warehouses.duckdb import DuckDBWarehouse
from dinmo_dagster.warehouses.redshift import RedshiftWarehouse

try:  # pytest puts either the repository root or tests/ on sys.path, depending on the import mode
    from tests import spark_connection
except ImportError:  # pragma: no cover - depends on the pytest import mode
    import spark_connection  # type: ignore[no-redef]


# ------------------------------------------------------------------------------ Databricks (Spark)


def test_population_on_spark(driver: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    """The same groups, ids and golden records as on PostgreSQL (both compare names by Levenshtein:
    christopher / christophe = 1 - 1/11 = 0.909 >= 0.9), then a second run (incremental) keeps every id."""
    monkeypatch.setenv("DBX_TOKEN", spark_connection.TOKEN)
    prefix = f"dinmo_idt_{uuid.uuid4().hex[:8]}_"
    schemas = {k: f"{prefix}{k}" for k in ("segments", "stats", "delta_storage", "predictions", "identity")}
    source = (
        f"wh: {{type: databricks, server_hostname: {HOST}, http_path: {HTTP_PATH}, "
        f"access_token: {{env: DBX_TOKEN}}, helper_schemas: {{"
        + ", ".join(f"{k}: {v}" for k, v in schemas.items())
        + "}}"
    )
    raw = f"{prefix}raw"
    (tmp_path / "dinmo.yaml").write_text(project_yaml(source, raw))
    project = load_project(tmp_path)
    wh = warehouse(project)
    try:
        wh.execute(
            [
                f"create schema {raw}",
                (
                    f"create table {raw}.crm (id int, email string, phone string, fname string, lname string, "
                    "zip string, ltv int, updated_at timestamp)"
                ),
                (
                    f"create table {raw}.web (anon_id string, email_address string, first string, last string, "
                    "zip string, created_at timestamp)"
                ),
                f"insert into {raw}.crm values "
                + ", ".join(f"({', '.join(map(literal, r[:-1]))}, timestamp'{r[-1]}')" for r in CRM),
                f"insert into {raw}.web values "
                + ", ".join(f"({', '.join(map(literal, r[:-1]))}, timestamp'{r[-1]}')" for r in WEB),
            ]
        )
        resolve(wh, project)
        assert_population(wh, schemas["identity"])
        resolve(wh, project)
        assert_population(wh, schemas["identity"])
        assert wh.query(f"select count(*) from {schemas['identity']}.people_merges") == [(0,)]
    finally:
        _drop_schemas(wh, [raw, *schemas.values()])
    assert any("LEVENSHTEIN(" in s.upper() for s in driver.log)


# ------------------------------------------------------------------------------ BigQuery (DuckDB stand-in)


class BigQueryStandIn(DuckDBWarehouse):
    """A DuckDB database answering BigQuery's SQL: each statement is parsed as GoogleSQL and transpiled to
    DuckDB by sqlglot; ``statements`` keeps the BigQuery text the product sent."""

    dialect: ClassVar[str] = "bigquery"
    statements: ClassVar[list[str]] = []

    @staticmethod
    def _duckdb(sql: str) -> str:
        return sqlglot.transpile(sql, read="bigquery", write="duckdb")[0]

    def execute(self, statements: Any) -> None:
        stmts = [statements] if isinstance(statements, str) else list(statements)
        BigQueryStandIn.statements.extend(stmts)
        super().execute([self._duckdb(s) for s in stmts])

    def query(self, sql: str) -> list[tuple]:
        BigQueryStandIn.statements.append(sql)
        return super().query(self._duckdb(sql))

    def query_columns(self, sql: str) -> list[str]:
        return super().query_columns(self._duckdb(sql))


@pytest.fixture
def bigquery(tmp_path: Path) -> Iterator[tuple[Any, BigQueryStandIn]]:
    (tmp_path / "dinmo.yaml").write_text(
        project_yaml(f"wh: {{type: duckdb, path: {tmp_path / 'wh.duckdb'}}}", "raw")
    )
    project = load_project(tmp_path)
    load_raw(warehouse(project), "raw", CRM, WEB)
    BigQueryStandIn.statements.clear()
    yield project, BigQueryStandIn(project.sources["wh"], name="wh")


def test_the_bigquery_sql_on_a_duckdb_stand_in(bigquery: tuple[Any, BigQueryStandIn]) -> None:
    project, wh = bigquery
    resolve(wh, project)
    assert_population(wh, "dinmo_identity")  # Levenshtein as on PostgreSQL: christopher / christophe joined
    sent = BigQueryStandIn.statements
    for statement in sent:  # every statement is GoogleSQL sqlglot reads back unchanged in meaning
        sqlglot.parse_one(statement, read="bigquery")
    links = next(s for s in sent if s.startswith("CREATE TABLE `dinmo_identity`.`people_edges`"))
    assert (  # the fuzzy rule's pass blocked by zip and the first letter of the last name
        "SELECT x.n AS a, y.n AS b, 4 AS rule_no FROM `dinmo_identity`.`people_records` AS x JOIN "
        "`dinmo_identity`.`people_records` AS y ON x.`k__zip` = y.`k__zip` AND LEFT(x.`k__last_name`, 1) = "
        "LEFT(y.`k__last_name`, 1) AND x.n < y.n WHERE NOT x.`k__zip` IS NULL AND NOT y.`k__zip` IS NULL AND NOT "
        "x.`k__first_name` IS NULL AND NOT y.`k__first_name` IS NULL AND NOT x.`k__last_name` IS NULL AND NOT "
        "y.`k__last_name` IS NULL AND (1.0 - EDIT_DISTANCE(x.`k__first_name`, y.`k__first_name`) / CAST(GREATEST("
        "LENGTH(x.`k__first_name`), LENGTH(y.`k__first_name`), 1) AS FLOAT64)) >= 0.9 AND (1.0 - EDIT_DISTANCE("
        "x.`k__last_name`, y.`k__last_name`) / CAST(GREATEST(LENGTH(x.`k__last_name`), LENGTH(y.`k__last_name`), "
        "1) AS FLOAT64)) >= 0.9"
    ) in links
    records = next(s for s in sent if s.startswith("CREATE TABLE `dinmo_identity`.`people_records`"))
    # BigQuery's MD5 returns BYTES: hex-encoded; an ordered window numbers the records
    assert "TO_HEX(MD5(" in records and "ROW_NUMBER() OVER (ORDER BY record_id NULLS LAST) AS n" in records
    assert "REGEXP_REPLACE(TRIM(CAST(`phone` AS STRING)), '[^0-9]', '')" in records
    ids = next(s for s in sent if s.startswith("CREATE TABLE `dinmo_identity`.`people_ids_next`"))
    assert "'p_' || LEFT(TO_HEX(MD5(" in ids
    # a second run is incremental: nothing changed, every id kept; BigQuery's DELETE has a WHERE
    BigQueryStandIn.statements.clear()
    resolve(wh, project)
    assert_population(wh, "dinmo_identity")
    assert all(re.search(r"\bWHERE\b", s) for s in BigQueryStandIn.statements if s.startswith("DELETE"))
    assert "DELETE FROM `dinmo_identity`.`people_state` WHERE TRUE" in BigQueryStandIn.statements


# ------------------------------------------------------------------------------ Redshift (on PostgreSQL)


class RedshiftOnPostgres(RedshiftWarehouse):
    """The Redshift source on a PostgreSQL server, with the one difference the identity SQL meets: Redshift's
    ``REGEXP_REPLACE(s, pattern, '')`` replaces every match
    (https://docs.aws.amazon.com/redshift/latest/dg/REGEXP_REPLACE.html), PostgreSQL's only the first unless
    given the flag ``'g'``, which Redshift would read as a position. ``statements``: the Redshift text sent."""

    statements: ClassVar[list[str]] = []

    @staticmethod
    def _postgres(sql: str) -> str:
        return sql.replace("'[^0-9]', '')", "'[^0-9]', '', 'g')")

    def execute(self, statements: Any) -> None:
        stmts = [statements] if isinstance(statements, str) else list(statements)
        RedshiftOnPostgres.statements.extend(stmts)
        super().execute([self._postgres(s) for s in stmts])


def test_exact_rules_with_the_redshift_sql_on_postgres(
    tmp_path: Path, postgres_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = postgres_server
    monkeypatch.setenv("RS_PASSWORD", server.password)
    schemas = {k: f"idr_{k}" for k in ("segments", "stats", "delta_storage", "predictions", "identity")}
    source = (
        f"wh: {{type: redshift, host: {server.host}, port: {server.port}, database: {server.database}, "
        f"user: {server.user}, password: {{env: RS_PASSWORD}}, helper_schemas: {{"
        + ", ".join(f"{k}: {v}" for k, v in schemas.items())
        + "}}"
    )
    text = re.sub(r"\n *- fuzzy: .*", "", project_yaml(source, "idr_raw"))
    (tmp_path / "dinmo.yaml").write_text(text)
    project = load_project(tmp_path)
    wh = RedshiftOnPostgres(project.sources["wh"], name="wh")
    RedshiftOnPostgres.statements.clear()
    try:
        load_raw(wh, "idr_raw", CRM, WEB)
        resolve(wh, project)
        found, of = groups(wh, "idr_identity")
        # without the fuzzy rule, Christopher's two sign-ups stay apart
        christopher = {"web_signups:a2", "web_signups:a3"}
        expected = [g for g in EXPECTED_GROUPS if g != christopher] + [{"web_signups:a2"}, {"web_signups:a3"}]
        assert found == sorted(expected, key=min)
        assert {of[min(g)] for g in expected} == {pid(min(g)) for g in expected}
        ids = f"{literal(pid('crm_contacts:1'))}, {literal(pid('web_signups:a3'))}"
        assert wh.query(
            "select profile_id, email, phone, customer_id, first_name, ltv from idr_identity.people_profiles "
            f"where profile_id in ({ids}) order by profile_id"
        ) == sorted(
            [
                (pid("crm_contacts:1"), "ann.lee@work.com", "+33612345678", "2", "Ann", 300),
                (pid("web_signups:a3"), "chris@z.com", None, None, "Christophe", None),
            ]
        )
        records = next(s for s in RedshiftOnPostgres.statements if 'people_records" AS SELECT' in s)
        assert 'CAST("phone" AS VARCHAR(65535))' in records and "'[^0-9]', '')" in records
        assert wh.relation_columns(exp.to_table("idr_identity.people_records"))[-1] == "key_hash"
    finally:
        wh.execute([f"drop schema if exists {s} cascade" for s in ("idr_raw", *schemas.values())])

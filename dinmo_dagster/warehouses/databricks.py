"""Databricks: a SQL warehouse, through databricks-sql-connector (an optional install)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, ClassVar, Literal

import pyarrow as pa
from pydantic import Field
from sqlglot import exp

from dinmo_dagster.connectors import register_warehouse
from dinmo_dagster.secrets import Secret
from dinmo_dagster.warehouses.base import SourceConfig, Warehouse, WarehouseError, quietly, strip_statement


class DatabricksSource(SourceConfig):
    """``{type: databricks, server_hostname, http_path, access_token: {env: NAME}, catalog, schema}``."""

    type: Literal["databricks"]
    server_hostname: str
    """Server hostname of the SQL warehouse (dbc-....cloud.databricks.com)."""
    http_path: str
    """HTTP path of the SQL warehouse (/sql/1.0/warehouses/...)."""
    access_token: Secret
    """Personal access token or service principal token."""
    catalog: str | None = None
    """Unity Catalog catalog holding the customer data and the helper schemas (the workspace's default
    catalog if unset)."""
    schema_: str | None = Field(None, alias="schema")
    """Schema of unqualified table names (default: `default`)."""


class DatabricksWarehouse(Warehouse):
    """A Databricks SQL warehouse (databricks-sql-connector, imported when first used)."""

    dialect: ClassVar[str] = "databricks"
    source_type: ClassVar[str] = "databricks"
    default_schema: ClassVar[str | None] = "default"
    case_insensitive: ClassVar[bool] = True

    config: DatabricksSource

    def _target(self) -> str:
        catalog = self._value("catalog")
        return f"{self._value('server_hostname')}{self._value('http_path')}" + (
            f" (catalog {catalog})" if catalog else ""
        )

    def _configured_schema(self) -> str | None:
        return self._value("schema_")

    def _catalog_prefix(self) -> str | None:
        return self._value("catalog")

    @contextmanager
    def _open(self) -> Iterator[Any]:
        try:
            from databricks import sql as dbsql  # an optional driver, imported when a connection opens
        except ImportError:
            raise WarehouseError(
                self._prefix() + "the Databricks driver is missing: pip install databricks-sql-connector"
            ) from None
        conn = dbsql.connect(
            server_hostname=self._value("server_hostname"),
            http_path=self._value("http_path"),
            access_token=self._value("access_token"),
            catalog=self._value("catalog"),
            schema=self._value("schema_"),
        )
        try:
            yield conn
        finally:
            conn.close()

    def _run_statements(self, conn: Any, statements: list[str]) -> None:
        # no multi-statement transactions on Databricks: each statement commits on its own
        with conn.cursor() as cur:
            for statement in statements:
                cur.execute(statement)

    def query(self, sql: str) -> list[tuple]:
        with self._connection() as conn, self._wrap("query failed"), conn.cursor() as cur:
            cur.execute(sql)
            return [tuple(row) for row in cur.fetchall()] if cur.description else []

    def query_columns(self, sql: str) -> list[str]:
        wrapped = f"SELECT * FROM (\n{strip_statement(sql)}\n) AS dinmo_columns_probe LIMIT 0"
        with self._connection() as conn, self._wrap("query failed"), conn.cursor() as cur:
            cur.execute(wrapped)
            return [col[0] for col in cur.description]

    def check_connection(self) -> None:
        with (
            self._connection() as conn,
            self._wrap(f"cannot connect to {self._target()}"),
            conn.cursor() as cur,
        ):
            cur.execute("SELECT 1")
            cur.fetchall()

    def table_columns(self, table: str) -> list[tuple[str, str]] | None:
        """``DESCRIBE TABLE``'s columns (name, type such as ``int``, ``decimal(10,2)``); None when the table
        does not exist (the warehouse's error class ``TABLE_OR_VIEW_NOT_FOUND``).

        Not ``information_schema.columns``: only Unity Catalog catalogs have one; a workspace's
        ``hive_metastore`` and Apache Spark have none, and ``DESCRIBE TABLE`` answers on all of them.
        """
        catalog, db, name = self._parse_table(table)
        relation = exp.Table(
            this=name, db=db if db is not None else self._default_schema_ident(), catalog=catalog
        )
        describe = exp.Describe(this=relation, kind="TABLE")
        try:
            rows = self.query(self._render(describe))
        except WarehouseError as exc:
            if "TABLE_OR_VIEW_NOT_FOUND" in str(exc):
                return None
            raise
        columns = []
        for column, data_type, *_ in rows:
            if not column or column.startswith("#"):  # partitioning and details follow the columns
                break
            columns.append((column, data_type))
        return columns

    def _information_schema_columns(self, catalog: exp.Identifier | None) -> exp.Table:
        name = catalog.name if catalog is not None else self._value("catalog")
        return exp.Table(
            this=exp.to_identifier("columns"),
            db=exp.to_identifier("information_schema"),
            catalog=exp.Identifier(this=name, quoted=True) if name else None,
        )

    @contextmanager
    def stream(self, sql: str, batch_rows: int = 100_000) -> Iterator[pa.RecordBatchReader]:
        """`fetchmany_arrow` chunks (Arrow end to end: the connector downloads Arrow results)."""
        with self._connection() as conn:
            cur = conn.cursor()
            try:
                with self._wrap("query failed"):
                    cur.execute(sql)
                    first = cur.fetchmany_arrow(batch_rows)
                schema = first.schema

                def batches() -> Iterator[pa.RecordBatch]:
                    table = first
                    while table.num_rows:
                        yield from table.to_batches(max_chunksize=batch_rows)
                        with self._wrap("streaming the result failed"):
                            table = cur.fetchmany_arrow(batch_rows)

                yield pa.RecordBatchReader.from_batches(schema, batches())
            finally:
                quietly(cur.close)


register_warehouse("databricks", DatabricksSource, DatabricksWarehouse)

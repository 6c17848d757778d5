"""Amazon Redshift: a cluster or serverless workgroup, over the PostgreSQL protocol (psycopg 3)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar, Literal

import pyarrow as pa
from sqlglot import exp

from dinmo_dagster.connectors import register_warehouse
from dinmo_dagster.warehouses.base import Warehouse
from dinmo_dagster.warehouses.postgres import PostgresSource, PostgresWarehouse


class RedshiftSource(PostgresSource):
    """``{type: redshift, host, port: 5439, database, user, password: {env: NAME}, schema, sslmode}``."""

    type: Literal["redshift"]  # type: ignore[assignment]
    port: int = 5439
    """TCP port of the cluster's or workgroup's endpoint."""


class RedshiftWarehouse(PostgresWarehouse):
    """A Redshift database: PostgreSQL's driver and connection code, Redshift's SQL dialect.

    Text is cast to `VARCHAR(65535)` by the SQL generators, because Redshift's `TEXT` is `VARCHAR(256)`.
    Its ``UNLOAD`` writes only to Amazon S3, so a gcs destination's files always stream
    (``dinmo_dagster.unload``).
    """

    dialect: ClassVar[str] = "redshift"
    source_type: ClassVar[str] = "redshift"

    config: RedshiftSource

    def insert_rows(
        self, table: exp.Table, rows: pa.Table, *, before: Sequence[str] = (), after: Sequence[str] = ()
    ) -> None:
        """Multi-row INSERTs of literals (``Warehouse``'s): Redshift has no ``COPY ... FROM STDIN``."""
        Warehouse.insert_rows(self, table, rows, before=before, after=after)


register_warehouse("redshift", RedshiftSource, RedshiftWarehouse)

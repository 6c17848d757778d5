"""PostgreSQL (psycopg 3). Redshift speaks the same protocol: see `redshift.py`."""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, ClassVar, Literal

import pyarrow as pa
from pydantic import Field
from sqlglot import exp

from dinmo_dagster.connectors import register_warehouse
from dinmo_dagster.secrets import EnvRef, Secret
from dinmo_dagster.warehouses.base import SourceConfig, Warehouse, quietly

# PostgreSQL type OIDs -> Arrow types (numeric is handled apart: it needs the type modifier)
_PG_ARROW_TYPES: dict[int, pa.DataType] = {
    16: pa.bool_(),  # bool
    17: pa.binary(),  # bytea
    20: pa.int64(),  # int8
    21: pa.int16(),  # int2
    23: pa.int32(),  # int4
    26: pa.int64(),  # oid
    700: pa.float32(),  # float4
    701: pa.float64(),  # float8
    1082: pa.date32(),  # date
    1083: pa.time64("us"),  # time
    1114: pa.timestamp("us"),  # timestamp
    1184: pa.timestamp("us", tz="UTC"),  # timestamptz
}
_PG_NUMERIC_OID = 1700
# types loaded as their text form (instead of dict/UUID/timedelta/... objects)
_PG_TEXT_TYPES = ("json", "jsonb", "uuid", "interval", "inet", "cidr", "timetz", "money")
# 'infinity' / '-infinity' -> the integer limits DuckDB hands Arrow for them (the writers write 'infinity')
_PG_INFINITY_LIMITS = {"timestamp": 2**63 - 1, "timestamptz": 2**63 - 1, "date": 2**31 - 1}


class PostgresSource(SourceConfig):
    """``{type: postgres, host, port, database, user, password: {env: NAME}, schema, sslmode}``."""

    type: Literal["postgres"]
    host: str
    """Host name or IP address of the server."""
    port: int = 5432
    """TCP port of the server."""
    database: str
    """Database holding the customer data and the helper schemas."""
    user: str | EnvRef
    """User name to connect as."""
    password: Secret | None = None
    """Password of `user`, as {env: NAME}."""
    schema_: str = Field("public", alias="schema")
    """Schema of unqualified table names (first on the search_path)."""
    sslmode: str | None = None
    """libpq sslmode (disable, prefer, require, verify-ca, verify-full); libpq's default if unset."""


def _pg_infinity_loader(name: str) -> type:
    """psycopg's text loader of date/timestamp/timestamptz, with +/-infinity as integers, not an error."""
    from psycopg.types import datetime as pg_datetime  # the driver: imported when a stream starts

    base = {"timestamp": pg_datetime.TimestampLoader, "timestamptz": pg_datetime.TimestamptzLoader,
            "date": pg_datetime.DateLoader}[name]  # fmt: skip
    limit = _PG_INFINITY_LIMITS[name]

    class InfinityLoader(base):  # type: ignore[valid-type, misc]
        def load(self, data: Any) -> Any:
            if bytes(data) in (b"infinity", b"-infinity"):
                return -limit if bytes(data)[0] == 0x2D else limit
            return super().load(data)

    return InfinityLoader


def pg_arrow_type(type_code: int, precision: int | None, scale: int | None) -> pa.DataType:
    """The Arrow type of a PostgreSQL/Redshift result column.

    int2/int4/int8 -> int16/int32/int64; numeric(p,s) -> decimal128(p,s) (decimal256 up to
    76 digits); numeric without a declared precision (or wider) -> string, which keeps every digit;
    float4/float8 -> float32/float64; bool; date; time -> time64[us]; timestamp -> timestamp[us];
    timestamptz -> timestamp[us, UTC]; bytea -> binary; everything else (text, varchar, json,
    jsonb, uuid, interval, arrays, enums, Redshift SUPER, ...) -> string.
    """
    if type_code == _PG_NUMERIC_OID:
        if precision and scale is not None and 0 < precision:
            if precision <= 38:
                return pa.decimal128(precision, scale)
            if precision <= 76:
                return pa.decimal256(precision, scale)
        return pa.string()
    return _PG_ARROW_TYPES.get(type_code, pa.string())


class PostgresWarehouse(Warehouse):
    """A PostgreSQL database (psycopg 3)."""

    dialect: ClassVar[str] = "postgres"
    source_type: ClassVar[str] = "postgres"
    default_schema: ClassVar[str | None] = "public"

    config: PostgresSource

    def _target(self) -> str:
        return f"{self._value('host')}:{self._value('port')}/{self._value('database')}"

    def _configured_schema(self) -> str | None:
        return self._value("schema_")

    def _connect_kwargs(self) -> dict[str, Any]:
        return {
            "host": self._value("host"),
            "port": int(self._value("port")),
            "dbname": self._value("database"),
            "user": self._value("user"),
            "password": self._value("password") or None,
            "connect_timeout": 10,
            "application_name": "dinmo-dagster",
            **({"sslmode": self._value("sslmode")} if self._value("sslmode") else {}),
        }

    @contextmanager
    def _open(self) -> Iterator[Any]:
        import psycopg  # the driver, imported when a connection opens (import cost only)
        from psycopg import sql as pgsql

        conn = psycopg.connect(**self._connect_kwargs())
        try:
            schema = self._value("schema_")
            if schema and schema != "public":
                path = pgsql.SQL("SET search_path TO {}, public").format(pgsql.Identifier(schema))
                conn.execute(path)
                conn.commit()
            yield conn
        finally:
            conn.close()

    def _arrow_schema(self, description: Sequence[Any]) -> pa.Schema:
        return pa.schema(
            [
                pa.field(col.name, pg_arrow_type(col.type_code, col.precision, col.scale))
                for col in description
            ]
        )

    def insert_rows(
        self, table: exp.Table, rows: pa.Table, *, before: Sequence[str] = (), after: Sequence[str] = ()
    ) -> None:
        """Insert ``rows`` into ``table`` through ``COPY ... FROM STDIN`` (values travel as data), in one
        transaction with ``before`` and ``after``."""
        names = ", ".join(self._render(exp.to_identifier(n, quoted=True)) for n in rows.column_names)
        copy = f"COPY {self._render(table)} ({names}) FROM STDIN"
        with self._connection() as conn, self._wrap("statement failed"):
            cur = conn.cursor()
            try:
                for statement in before:
                    cur.execute(statement)
                if rows.num_rows:
                    with cur.copy(copy) as writer:
                        for row in zip(*(column.to_pylist() for column in rows.columns)):
                            writer.write_row(row)
                for statement in after:
                    cur.execute(statement)
                conn.commit()
            except BaseException:
                quietly(conn.rollback)
                raise
            finally:
                quietly(cur.close)

    @contextmanager
    def stream(self, sql: str, batch_rows: int = 100_000) -> Iterator[pa.RecordBatchReader]:
        """Stream through a server-side (named) cursor, `batch_rows` rows per round trip."""
        from psycopg.types.string import TextLoader

        with self._connection() as conn:
            for name in _PG_TEXT_TYPES:
                quietly(lambda name=name: conn.adapters.register_loader(name, TextLoader))
            for name in _PG_INFINITY_LIMITS:
                quietly(lambda name=name: conn.adapters.register_loader(name, _pg_infinity_loader(name)))
            cur = conn.cursor(name=f"dinmo_stream_{uuid.uuid4().hex[:12]}")
            cur.itersize = batch_rows
            try:
                yield self._cursor_reader(cur, sql, batch_rows)
            finally:
                quietly(cur.close)
                quietly(conn.rollback)


register_warehouse("postgres", PostgresSource, PostgresWarehouse, aliases=("postgresql",))

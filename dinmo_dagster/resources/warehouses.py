"""Warehouse resources: one abstract interface, one Dagster resource per warehouse.

Every computation on customer data runs inside the warehouse; these resources only open a
connection per operation, run SQL, and stream the rows that must leave the warehouse as Arrow
record batches.

Conventions shared by every implementation:

- A connection is opened per operation and closed afterwards (DuckDB allows one writing process
  per database file; the Dagster code server, scheduled runs and the CLI share the warehouse).
- `execute()` runs its statements in order, in one transaction where the warehouse has
  transactional DDL (DuckDB, PostgreSQL, Redshift). Snowflake commits DDL implicitly, BigQuery runs
  the statements as one script, Databricks has no multi-statement transactions. Each string is one
  statement.
- SQL that differs per warehouse (schema creation, identifier quoting, catalog lookups) is built
  with sqlglot expressions rendered in `dialect`.
- Errors from drivers are re-raised as `WarehouseError` naming the source, its type and the
  target, with every secret (password, token, private key, service account key) scrubbed. The
  driver exception is not chained (its message or arguments may hold a secret).
- Secret fields are plain `str` config, normally given as `dagster.EnvVar`; they are excluded from
  `repr()`. Outside a Dagster run (CLI) an unresolved `EnvVar` is read from the environment when the
  connection is opened.
"""

import base64
import json
import re
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager
from pathlib import Path
from typing import Any, ClassVar, get_args

import pyarrow as pa
import pyarrow.compute as pc
import sqlglot
from dagster import ConfigurableResource, EnvVar
from pydantic import Field, PrivateAttr, ValidationError
from pydantic_core import PydanticUndefined
from sqlglot import exp
from sqlglot.dialects.dialect import Dialect

__all__ = [
    "WAREHOUSE_TYPES",
    "BigQueryWarehouse",
    "DatabricksWarehouse",
    "DuckDBWarehouse",
    "PostgresWarehouse",
    "RedshiftWarehouse",
    "SnowflakeWarehouse",
    "Warehouse",
    "WarehouseError",
    "warehouse_from_config",
]


class WarehouseError(Exception):
    """A warehouse operation failed. The message names the source and never holds a secret."""


_MAX_REASON = 600
_LOCK_WAIT_SECONDS = 30.0


def _one_line(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


class Warehouse(ConfigurableResource, ABC):
    """A data warehouse holding the customer data (a `sources:` entry of the project YAML)."""

    dialect: ClassVar[str]
    """sqlglot dialect of the warehouse."""
    source_type: ClassVar[str]
    """The `type:` of the source in the project YAML."""
    secret_fields: ClassVar[tuple[str, ...]] = ()
    """Fields whose values must never appear in messages."""
    default_schema: ClassVar[str | None] = None
    """Schema of unqualified table names when the source config names none."""
    case_insensitive: ClassVar[bool] = False
    """Whether unquoted names are matched case-insensitively in the catalog (DuckDB, Databricks)."""

    source_name: str = Field(
        default="",
        description="Name of the source in the project YAML; used in error messages.",
    )

    # ------------------------------------------------------------------ config values and secrets

    def _value(self, field: str) -> Any:
        """The configured value of `field`, reading an unresolved `EnvVar` from the environment."""
        value = getattr(self, field)
        if _is_env_var(value):
            resolved = value.get_value()
            if resolved is None:
                raise WarehouseError(
                    self._prefix()
                    + f"environment variable {value.env_var_name!r} (for `{field.rstrip('_')}`) is not set"
                )
            return resolved
        return value

    def _secret_values(self) -> list[str]:
        secrets: list[str] = []
        for field in self.secret_fields:
            value = getattr(self, field, None)
            if _is_env_var(value):
                value = value.get_value()
            if not value:
                continue
            value = str(value)
            secrets.append(value)
            secrets.extend(_secret_parts(value))
        # longest first so that a secret containing another is removed whole
        return sorted({s for s in secrets if len(s) >= 3}, key=len, reverse=True)

    def _scrub(self, text: str) -> str:
        for secret in self._secret_values():
            text = text.replace(secret, "***")
        return text

    # ------------------------------------------------------------------ errors

    def _prefix(self) -> str:
        return f"source '{self.source_name or '?'}' ({self.source_type}): "

    def _target(self) -> str:
        """Where the warehouse is, for messages (host:port/database); never a secret."""
        return self.source_type

    def _error(self, what: str, exc: BaseException) -> WarehouseError:
        reason = _one_line(str(exc)) or type(exc).__name__
        if len(reason) > _MAX_REASON:
            reason = reason[:_MAX_REASON] + "..."
        return WarehouseError(self._scrub(f"{self._prefix()}{what}: {reason}"))

    @contextmanager
    def _wrap(self, what: str) -> Iterator[None]:
        try:
            yield
        except WarehouseError:
            raise
        except Exception as exc:  # noqa: BLE001 - every driver error becomes a WarehouseError
            raise self._error(what, exc) from None

    # ------------------------------------------------------------------ connections

    @abstractmethod
    def _open(self) -> AbstractContextManager[Any]:
        """A context manager yielding a new DB-API connection and closing it on exit."""

    @contextmanager
    def session(self) -> Iterator[None]:
        """Operations inside the block may share one connection (one sync step).

        Only DuckDB does: reopening its file costs ~10 ms per statement. Other warehouses keep a
        connection per operation.
        """
        yield

    @contextmanager
    def _connection(self) -> Iterator[Any]:
        with ExitStack() as stack:
            try:
                conn = stack.enter_context(self._open())
            except WarehouseError:
                raise
            except Exception as exc:  # noqa: BLE001 - every driver error becomes a WarehouseError
                raise self._error(f"cannot connect to {self._target()}", exc) from None
            yield conn

    # ------------------------------------------------------------------ names

    def _catalog_prefix(self) -> str | None:
        """Catalog (database / project) holding our helper schemas, when qualified by one."""
        return None

    def _ident(self, name: str) -> exp.Identifier:
        """An identifier in the canonical case of the warehouse, always quoted.

        Names that are valid unquoted are normalised the way the warehouse normalises unquoted
        names (upper case on Snowflake, lower case elsewhere), so that the quoted identifier means
        the same object as the unquoted one a user would write.
        """
        ident = exp.to_identifier(name)
        if not ident.quoted:
            ident = Dialect.get_or_raise(self.dialect).normalize_identifier(ident)
        return exp.Identifier(this=ident.name, quoted=True)

    def qualify(self, schema: str, name: str) -> exp.Table:
        """The table `name` in one of our helper schemas (dinmo_segments, dinmo_stats, ...)."""
        catalog = self._catalog_prefix()
        return exp.Table(
            this=self._ident(name),
            db=self._ident(schema),
            catalog=self._ident(catalog) if catalog else None,
        )

    def _schema_expression(self, schema: str) -> exp.Table:
        catalog = self._catalog_prefix()
        return exp.Table(this=self._ident(schema), db=self._ident(catalog) if catalog else None)

    def _render(self, expression: exp.Expression) -> str:
        return expression.sql(dialect=self.dialect)

    # ------------------------------------------------------------------ operations

    def execute(self, statements: str | Sequence[str]) -> None:
        """Run the statements in order (one transaction where supported) and commit."""
        stmts = [statements] if isinstance(statements, str) else list(statements)
        stmts = [s for s in stmts if s and s.strip()]
        if not stmts:
            return
        with self._connection() as conn, self._wrap("statement failed"):
            self._run_statements(conn, stmts)

    def _run_statements(self, conn: Any, statements: list[str]) -> None:
        cur = conn.cursor()
        try:
            for statement in statements:
                cur.execute(statement)
            conn.commit()
        except BaseException:
            _quietly(conn.rollback)
            raise
        finally:
            _quietly(cur.close)

    def query(self, sql: str) -> list[tuple]:
        """Run `sql` and fetch every row (for small results: counts, metadata)."""
        with self._connection() as conn, self._wrap("query failed"):
            cur = conn.cursor()
            try:
                cur.execute(sql)
                rows = [tuple(row) for row in cur.fetchall()] if cur.description else []
                conn.commit()
            except BaseException:
                _quietly(conn.rollback)
                raise
            finally:
                _quietly(cur.close)
            return rows

    @contextmanager
    def stream(self, sql: str, batch_rows: int = 100_000) -> Iterator[pa.RecordBatchReader]:
        """Stream the result of `sql` as Arrow record batches of at most `batch_rows` rows.

        The connection stays open until the context exits; the reader's schema is known even when
        the query returns no row.
        """
        with self._connection() as conn:
            cur = conn.cursor()
            try:
                yield self._cursor_reader(cur, sql, batch_rows)
            finally:
                _quietly(cur.close)

    def _cursor_reader(self, cur: Any, sql: str, batch_rows: int) -> pa.RecordBatchReader:
        """Run ``sql`` on a DB-API cursor and read it ``batch_rows`` rows at a time as Arrow batches."""
        with self._wrap("query failed"):
            cur.execute(sql)
            schema = self._arrow_schema(cur.description)

        def batches() -> Iterator[pa.RecordBatch]:
            while True:
                with self._wrap("streaming the result failed"):
                    rows = cur.fetchmany(batch_rows)
                    if not rows:
                        return
                    batch = _rows_to_batch(rows, schema)
                yield batch

        return pa.RecordBatchReader.from_batches(schema, batches())

    def _guarded(self, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        """``batches``, with a driver error while fetching one reported as a WarehouseError."""
        while True:
            with self._wrap("streaming the result failed"):
                batch = next(batches, None)
            if batch is None:
                return
            yield batch

    def _arrow_schema(self, description: Sequence[Any]) -> pa.Schema:
        return pa.schema([pa.field(col[0], pa.string()) for col in description])

    def ensure_schema(self, schema: str) -> None:
        """Create the helper schema `schema` if it does not exist."""
        self.execute(self._render(self._create_schema(schema)))

    def _create_schema(self, schema: str) -> exp.Create:
        return exp.Create(kind="SCHEMA", exists=True, this=self._schema_expression(schema))

    def _parse_table(self, table: str) -> tuple[exp.Identifier | None, exp.Identifier | None, exp.Identifier]:
        try:
            parsed = exp.to_table(table, dialect=self.dialect)
        except sqlglot.errors.ParseError as exc:
            raise WarehouseError(
                self._prefix() + f"invalid table name {table!r}: {_one_line(str(exc))}"
            ) from None
        if not isinstance(parsed, exp.Table) or not parsed.name:
            raise WarehouseError(self._prefix() + f"invalid table name {table!r}")
        parts = parsed.parts
        if len(parts) > 3:
            raise WarehouseError(self._prefix() + f"invalid table name {table!r}: more than 3 parts")
        name = parts[-1]
        db = parts[-2] if len(parts) >= 2 else None
        catalog = parts[-3] if len(parts) >= 3 else None
        return catalog, db, name  # type: ignore[return-value]

    def _name_value(self, ident: exp.Identifier) -> str:
        """The name as stored in the catalog (unquoted names normalised like the warehouse does)."""
        if ident.quoted or self.case_insensitive:
            return ident.name
        return Dialect.get_or_raise(self.dialect).normalize_identifier(ident.copy()).name

    def _match(self, column: str, ident: exp.Identifier) -> exp.Expression:
        value = self._name_value(ident)
        if self.case_insensitive and not ident.quoted:
            return exp.EQ(
                this=exp.Lower(this=exp.column(column)), expression=exp.Literal.string(value.lower())
            )
        return exp.EQ(this=exp.column(column), expression=exp.Literal.string(value))

    def _columns_query(
        self, catalog: exp.Identifier | None, db: exp.Identifier | None, name: exp.Identifier
    ) -> str:
        """The information_schema query listing (name, type, precision, scale) of a table."""
        schema_ident = db if db is not None else self._default_schema_ident()
        conditions = [self._match("table_schema", schema_ident), self._match("table_name", name)]
        if catalog is not None:
            conditions.append(self._match("table_catalog", catalog))
        query = (
            exp.select("column_name", "data_type", "numeric_precision", "numeric_scale")
            .from_(self._information_schema_columns(catalog))
            .where(exp.and_(*conditions))
            .order_by("ordinal_position")
        )
        return self._render(query)

    def _information_schema_columns(self, catalog: exp.Identifier | None) -> exp.Table:
        return exp.Table(this=exp.to_identifier("columns"), db=exp.to_identifier("information_schema"))

    def _default_schema_ident(self) -> exp.Identifier:
        schema = self._configured_schema() or self.default_schema
        if not schema:
            raise WarehouseError(
                self._prefix() + "a table name needs its schema (no default schema configured)"
            )
        return exp.to_identifier(schema)

    def _configured_schema(self) -> str | None:
        return None

    def table_columns(self, table: str) -> list[tuple[str, str]] | None:
        """Columns (name, type) of a user table such as "raw.customers"; None when it does not exist."""
        catalog, db, name = self._parse_table(table)
        rows = self.query(self._columns_query(catalog, db, name))
        if not rows:
            return None
        return [(row[0], _type_name(*row[1:4])) for row in rows]

    def relation_columns(self, relation: exp.Expression) -> list[str]:
        """Names of the columns of a table, view or subquery expression, without fetching rows."""
        return self.query_columns(self._render(exp.select(exp.Star()).from_(relation.copy())))

    def query_columns(self, sql: str) -> list[str]:
        """Names of the columns `sql` (a SELECT) returns, without fetching its rows."""
        wrapped = f"SELECT * FROM (\n{_strip_statement(sql)}\n) AS dinmo_columns_probe LIMIT 0"
        with self._connection() as conn, self._wrap("query failed"):
            cur = conn.cursor()
            try:
                cur.execute(wrapped)
                names = [col[0] for col in cur.description]
                cur.fetchall()
                _quietly(conn.rollback)
            finally:
                _quietly(cur.close)
            return names

    def check_connection(self) -> None:
        """Raise `WarehouseError` (naming the source and the cause) unless the warehouse answers."""
        what = f"cannot connect to {self._target()}"
        with self._connection() as conn, self._wrap(what):
            cur = conn.cursor()
            try:
                cur.execute("SELECT 1")
                cur.fetchall()
            finally:
                _quietly(cur.close)


# ====================================================================== helpers


def _is_env_var(value: Any) -> bool:
    """A `dagster.EnvVar` (or `EnvVar.int`) not resolved yet (outside a Dagster run)."""
    return isinstance(value, EnvVar) or (hasattr(value, "env_var_name") and hasattr(value, "get_value"))


def _quietly(fn: Callable[[], Any]) -> None:
    try:
        fn()
    except Exception:  # noqa: BLE001, S110 - best-effort cleanup
        pass


def _strip_statement(sql: str) -> str:
    return sql.strip().rstrip(";").strip()


def _secret_parts(value: str) -> list[str]:
    """Substrings of a secret that could be echoed alone (the key inside a service-account JSON)."""
    parts: list[str] = []
    for candidate in (value, _try_b64(value)):
        if not candidate:
            continue
        if candidate is not value:
            parts.append(candidate)
        try:
            info = json.loads(candidate)
        except (ValueError, TypeError):
            continue
        if isinstance(info, dict):
            for key in ("private_key", "private_key_id", "client_secret", "refresh_token"):
                if isinstance(info.get(key), str):
                    parts.append(info[key])
                    # the PEM body lines, in case a message quotes part of the key
                    parts.extend(line for line in info[key].splitlines() if len(line) >= 16)
    return parts


def _try_b64(value: str) -> str | None:
    try:
        return base64.b64decode(value, validate=True).decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        return None


def _type_name(data_type: Any, precision: Any, scale: Any) -> str:
    text = str(data_type)
    if (
        precision is not None
        and scale is not None
        and "(" not in text
        and text.upper() in {"NUMERIC", "DECIMAL", "NUMBER"}
    ):
        return f"{text}({int(precision)},{int(scale)})"
    return text


def _as_text(value: Any) -> Any:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, default=str, ensure_ascii=False)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    return str(value)


def _to_arrow(values: Sequence[Any], type_: pa.DataType) -> pa.Array:
    try:
        return pa.array(values, type=type_)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        if pa.types.is_string(type_) or pa.types.is_large_string(type_):
            return pa.array([_as_text(v) for v in values], type=type_)
        raise


def _rows_to_batch(rows: Sequence[Sequence[Any]], schema: pa.Schema) -> pa.RecordBatch:
    columns = list(zip(*rows)) if rows else [() for _ in schema]
    arrays = [_to_arrow(col, field.type) for col, field in zip(columns, schema)]
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def _split(batch: pa.RecordBatch, max_rows: int) -> Iterator[pa.RecordBatch]:
    """`batch` in slices of at most `max_rows` rows (zero-copy)."""
    if batch.num_rows <= max_rows:
        yield batch
        return
    for offset in range(0, batch.num_rows, max_rows):
        yield batch.slice(offset, max_rows)


def _cast_batch(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    if batch.schema.equals(schema):
        return batch
    arrays = []
    for column, field in zip(batch.columns, schema):
        if column.type.equals(field.type):
            arrays.append(column)
            continue
        options = pc.CastOptions(target_type=field.type, allow_time_truncate=True)
        arrays.append(pc.cast(column, options=options))
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


# ====================================================================== DuckDB


DUCKDB_DEFAULT_MEMORY_LIMIT = "50%"
"""DuckDB's memory cap on the tool's connections when the source sets none: half the machine's memory.

The Python side of a sync stays small whatever the table size (rows leave DuckDB in Arrow batches of
100,000 rows), so the cap is about DuckDB's own work. Most of it spills to disk beyond the cap, but
an ungrouped count(distinct key), which every primary-key check and snapshot runs, cannot: it holds
every key in memory (about 2.3 GB for 50M keys). A fixed 64 MB cap failed on a 2M-row table; half
the memory syncs a 50M-row table on a 24 GB machine and leaves the other half to Python, the writer
threads and the rest of the machine.
"""


class DuckDBWarehouse(Warehouse):
    """An embedded DuckDB database file (the default source).

    DuckDB spills to the directory `<path>.tmp` next to the database file (its default, kept), so
    spilled customer rows stay with the warehouse on the same disk. DuckDB deletes its spill files when
    the connection closes; those of a killed process are deleted when the tool next opens the file.
    """

    dialect: ClassVar[str] = "duckdb"
    source_type: ClassVar[str] = "duckdb"
    default_schema: ClassVar[str | None] = "main"
    case_insensitive: ClassVar[bool] = True

    path: str = Field(
        description=(
            "Path of the DuckDB database file; created with its parent directory when missing."
            " Relative paths are resolved against the project directory by the project loader."
        ),
    )

    memory_limit: str | None = Field(
        default=DUCKDB_DEFAULT_MEMORY_LIMIT,
        description=(
            "DuckDB's memory_limit for the tool's connections: a size ('512MB', '4GB') or a share of the"
            " machine's memory ('50%', the default). DuckDB spills to `<path>.tmp` beyond it where the"
            " operator can (joins, GROUP BY, sorts); an ungrouped count(distinct key), which every primary"
            " key check runs, cannot spill and needs about 50 bytes per key. None: DuckDB's own default"
            " (80% of the memory)."
        ),
    )
    preserve_insertion_order: bool = Field(
        default=False,
        description=(
            "DuckDB's preserve_insertion_order. Off by default: snapshots and exports need no row order,"
            " and keeping it costs memory on large tables."
        ),
    )

    def _target(self) -> str:
        return f"DuckDB database {self._value('path')}"

    def _connection_settings(self, con: Any) -> None:
        """Settings each connection (and each cursor of a shared one) needs."""
        # timestamps with time zone come out in UTC, whatever the machine's time zone
        _quietly(lambda: con.execute("SET TimeZone = 'UTC'"))
        # no progress bar on the terminal of `dinmo sync` or in Dagster's captured logs
        _quietly(lambda: con.execute("SET enable_progress_bar = false"))

    def _memory_limit(self) -> str:
        """The configured `memory_limit`, checked: a size with its unit, or a percentage of 1 to 100."""
        limit = str(self.memory_limit).strip()
        size = re.fullmatch(r"\d+(\.\d+)?\s*(KB|MB|GB|TB|KiB|MiB|GiB|TiB)", limit, re.IGNORECASE)
        share = re.fullmatch(r"(\d+(\.\d+)?)\s*%", limit)
        if not size and not (share and 1 <= float(share.group(1)) <= 100):
            raise WarehouseError(
                self._prefix() + f"memory_limit: found {self.memory_limit!r}; allowed: a size such as '512MB' or"
                " '4GB', or a share of the machine's memory from 1% to 100% such as '50%'"
            )
        return limit

    def _settings(self, con: Any) -> None:
        """Settings of a newly opened database: the connection's, plus the database-wide ones that its
        cursors share."""
        self._connection_settings(con)
        if self.memory_limit:
            con.execute(f"SET memory_limit = '{self._memory_limit()}'")
        con.execute(f"SET preserve_insertion_order = {str(bool(self.preserve_insertion_order)).lower()}")

    _shared: Any = PrivateAttr(default=None)

    @contextmanager
    def session(self) -> Iterator[None]:
        if self._shared is not None:
            yield
            return
        with self._open_file() as con:
            self._shared = con
            try:
                yield
            finally:
                self._shared = None

    @contextmanager
    def _open(self) -> Iterator[Any]:
        if self._shared is not None:
            # A cursor is a second connection to the same open database: a pending streamed result
            # on one is not disturbed by statements on the other, and nothing reopens the file.
            cur = self._shared.cursor()
            try:
                self._connection_settings(cur)
                yield cur
            finally:
                cur.close()
            return
        with self._open_file() as con:
            yield con

    @contextmanager
    def _open_file(self) -> Iterator[Any]:
        import duckdb

        path = str(self._value("path"))
        if path != ":memory:" and not path.startswith("md:"):
            Path(path).expanduser().parent.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + _LOCK_WAIT_SECONDS
        delay = 0.05
        while True:
            try:
                con = duckdb.connect(path)
                break
            except duckdb.IOException as exc:
                # another process holds the write lock: wait for it (bounded)
                if "lock" not in str(exc).lower() or time.monotonic() > deadline:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 1.0)
        try:
            self._settings(con)
            if path != ":memory:" and not path.startswith("md:"):
                _remove_stale_spill_files(con)
            yield con
        finally:
            con.close()

    def _run_statements(self, conn: Any, statements: list[str]) -> None:
        conn.begin()
        try:
            for statement in statements:
                conn.execute(statement)
            conn.commit()
        except BaseException:
            _quietly(conn.rollback)
            raise

    @contextmanager
    def stream(self, sql: str, batch_rows: int = 100_000) -> Iterator[pa.RecordBatchReader]:
        with self._connection() as con:
            with self._wrap("query failed"):
                reader = con.sql(sql).to_arrow_reader(batch_rows)

            try:
                yield pa.RecordBatchReader.from_batches(reader.schema, self._guarded(iter(reader)))
            finally:
                _quietly(reader.close)


def _remove_stale_spill_files(con: Any) -> None:
    """Delete the spill files (customer rows) that a killed process left in the database's temp directory.

    Called once the database file is open for writing: no other process can have it open then, so
    every DuckDB temporary file there is stale. DuckDB itself would remove them only when it next spills.
    """
    # fetchall: DuckDB refuses further work on a connection whose result was not read to its end
    [(temp_directory,)] = con.execute("SELECT current_setting('temp_directory')").fetchall()
    if not temp_directory:
        return
    for leftover in Path(temp_directory).glob("duckdb_temp_*"):
        _quietly(leftover.unlink)


# ====================================================================== PostgreSQL / Redshift

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


def _pg_infinity_loader(name: str) -> type:
    """psycopg's text loader of date/timestamp/timestamptz, with +/-infinity as integers, not an error."""
    from psycopg.types import datetime as pg_datetime

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
    secret_fields: ClassVar[tuple[str, ...]] = ("password",)
    default_schema: ClassVar[str | None] = "public"
    default_port: ClassVar[int] = 5432

    host: str = Field(description="Host name or IP address of the server.")
    port: int = Field(default=5432, description="TCP port of the server.")
    database: str = Field(description="Database holding the customer data and the helper schemas.")
    user: str = Field(description="User name to connect as.")
    password: str = Field(
        default="",
        repr=False,
        description="Password of `user` (give it as an environment variable: {env: NAME}).",
    )
    schema_: str = Field(
        default="public",
        alias="schema",
        description="Schema of unqualified table names (first on the search_path).",
    )
    sslmode: str | None = Field(
        default=None,
        description="libpq sslmode (disable, prefer, require, verify-ca, verify-full); libpq's default if unset.",
    )

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
        import psycopg
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

    @contextmanager
    def stream(self, sql: str, batch_rows: int = 100_000) -> Iterator[pa.RecordBatchReader]:
        """Stream through a server-side (named) cursor, `batch_rows` rows per round trip."""
        from psycopg.types.string import TextLoader

        with self._connection() as conn:
            for name in _PG_TEXT_TYPES:
                _quietly(lambda name=name: conn.adapters.register_loader(name, TextLoader))
            for name in _PG_INFINITY_LIMITS:
                _quietly(lambda name=name: conn.adapters.register_loader(name, _pg_infinity_loader(name)))
            cur = conn.cursor(name=f"dinmo_stream_{uuid.uuid4().hex[:12]}")
            cur.itersize = batch_rows
            try:
                yield self._cursor_reader(cur, sql, batch_rows)
            finally:
                _quietly(cur.close)
                _quietly(conn.rollback)


class RedshiftWarehouse(PostgresWarehouse):
    """An Amazon Redshift cluster or serverless workgroup (psycopg 3 over the PostgreSQL protocol)."""

    dialect: ClassVar[str] = "redshift"
    source_type: ClassVar[str] = "redshift"
    default_port: ClassVar[int] = 5439

    host: str = Field(description="Endpoint host name of the cluster or workgroup.")
    port: int = Field(default=5439, description="TCP port of the endpoint.")
    database: str = Field(description="Database holding the customer data and the helper schemas.")


# ====================================================================== Snowflake

# snowflake.connector.constants.FIELD_TYPES codes -> Arrow types
_SF_FIXED, _SF_REAL, _SF_TEXT, _SF_DATE = 0, 1, 2, 3
_SF_ARROW_TYPES: dict[int, pa.DataType] = {
    _SF_REAL: pa.float64(),
    _SF_TEXT: pa.string(),
    _SF_DATE: pa.date32(),
    4: pa.timestamp("us"),  # TIMESTAMP (an alias, NTZ by default)
    6: pa.timestamp("us", tz="UTC"),  # TIMESTAMP_LTZ
    7: pa.timestamp("us", tz="UTC"),  # TIMESTAMP_TZ
    8: pa.timestamp("us"),  # TIMESTAMP_NTZ
    11: pa.binary(),  # BINARY
    12: pa.time64("us"),  # TIME
    13: pa.bool_(),  # BOOLEAN
}


def snowflake_arrow_type(type_code: int, precision: int | None, scale: int | None) -> pa.DataType:
    """NUMBER(p,0) -> int64, NUMBER(p,s) -> decimal128(p,s), FLOAT -> float64, TEXT -> string,
    DATE, TIME, TIMESTAMP_NTZ -> timestamp[us], TIMESTAMP_TZ/LTZ -> timestamp[us, UTC], BOOLEAN,
    BINARY; VARIANT/OBJECT/ARRAY (JSON text) and others -> string."""
    if type_code == _SF_FIXED:
        if not scale:
            return pa.int64()
        return pa.decimal128(precision or 38, scale)
    return _SF_ARROW_TYPES.get(type_code, pa.string())


class SnowflakeWarehouse(Warehouse):
    """A Snowflake database, through `dagster_snowflake.SnowflakeResource`."""

    dialect: ClassVar[str] = "snowflake"
    source_type: ClassVar[str] = "snowflake"
    secret_fields: ClassVar[tuple[str, ...]] = ("password", "private_key", "private_key_passphrase")
    default_schema: ClassVar[str | None] = "PUBLIC"

    account: str = Field(description="Snowflake account identifier (orgname-accountname or locator).")
    user: str = Field(description="User login name.")
    password: str | None = Field(
        default=None, repr=False, description="Password of `user` (password authentication)."
    )
    private_key: str | None = Field(
        default=None,
        repr=False,
        description="PEM private key, raw or base64-encoded (key-pair authentication).",
    )
    private_key_path: str | None = Field(
        default=None, description="Path of a PEM private key file (key-pair authentication)."
    )
    private_key_passphrase: str | None = Field(
        default=None, repr=False, description="Passphrase of an encrypted private key."
    )
    database: str = Field(description="Database holding the customer data and the helper schemas.")
    warehouse: str | None = Field(default=None, description="Virtual warehouse that runs the queries.")
    role: str | None = Field(default=None, description="Role to use.")
    schema_: str | None = Field(
        default=None, alias="schema", description="Schema of unqualified table names (default PUBLIC)."
    )

    def _target(self) -> str:
        return f"account {self._value('account')}/{self._value('database')}"

    def _configured_schema(self) -> str | None:
        return self._value("schema_")

    def _catalog_prefix(self) -> str | None:
        return self._value("database")

    def snowflake_resource(self) -> Any:
        """The `dagster_snowflake.SnowflakeResource` this source connects through."""
        from dagster_snowflake import SnowflakeResource

        settings = {
            key: self._value(field)
            for key, field in (
                ("account", "account"),
                ("user", "user"),
                ("password", "password"),
                ("private_key", "private_key"),
                ("private_key_path", "private_key_path"),
                ("private_key_password", "private_key_passphrase"),
                ("database", "database"),
                ("warehouse", "warehouse"),
                ("role", "role"),
                ("schema", "schema_"),
            )
        }
        settings = {k: v for k, v in settings.items() if v not in (None, "")}
        if not any(k in settings for k in ("password", "private_key", "private_key_path")):
            raise WarehouseError(self._prefix() + "needs `password`, `private_key` or `private_key_path`")
        if "password" in settings and ("private_key" in settings or "private_key_path" in settings):
            raise WarehouseError(self._prefix() + "give either `password` or a private key, not both")
        try:
            return SnowflakeResource(
                **settings,
                autocommit=False,
                validate_default_parameters=True,
                login_timeout=30,
            )
        except Exception as exc:  # noqa: BLE001 - dagster/pydantic config errors
            raise self._error("invalid configuration", exc) from None

    @contextmanager
    def _open(self) -> Iterator[Any]:
        with self.snowflake_resource().get_connection() as conn:
            # get_connection commits and closes on a normal exit only
            try:
                yield conn
            except BaseException:
                _quietly(conn.rollback)
                _quietly(conn.close)
                raise

    def _arrow_schema(self, description: Sequence[Any]) -> pa.Schema:
        return pa.schema(
            [
                pa.field(col.name, snowflake_arrow_type(col.type_code, col.precision, col.scale))
                for col in description
            ]
        )

    @contextmanager
    def stream(self, sql: str, batch_rows: int = 100_000) -> Iterator[pa.RecordBatchReader]:
        """Arrow result chunks (`fetch_arrow_batches`) cast to the schema of the result metadata;
        `fetchmany` + pyarrow where the cursor has no Arrow fetch (fakesnow)."""
        with self._connection() as conn:
            cur = conn.cursor()
            try:
                if not hasattr(cur, "fetch_arrow_batches"):
                    yield self._cursor_reader(cur, sql, batch_rows)
                    return
                with self._wrap("query failed"):
                    cur.execute(sql)
                    schema = self._arrow_schema(cur.description)

                def arrow_batches() -> Iterator[pa.RecordBatch]:
                    for table in cur.fetch_arrow_batches():
                        for batch in table.to_batches(max_chunksize=batch_rows):
                            yield _cast_batch(batch.rename_columns(schema.names), schema)

                yield pa.RecordBatchReader.from_batches(schema, self._guarded(arrow_batches()))
            finally:
                _quietly(cur.close)

    def _information_schema_columns(self, catalog: exp.Identifier | None) -> exp.Table:
        database = catalog if catalog is not None else exp.to_identifier(self._value("database"))
        return exp.Table(
            this=exp.to_identifier("COLUMNS"),
            db=exp.to_identifier("INFORMATION_SCHEMA"),
            catalog=exp.Identifier(this=self._name_value(database), quoted=True),
        )

    def _columns_query(
        self, catalog: exp.Identifier | None, db: exp.Identifier | None, name: exp.Identifier
    ) -> str:
        # the catalog is chosen by the information_schema's database, not by a condition
        schema_ident = db if db is not None else self._default_schema_ident()
        query = (
            exp.select("column_name", "data_type", "numeric_precision", "numeric_scale")
            .from_(self._information_schema_columns(catalog))
            .where(exp.and_(self._match("table_schema", schema_ident), self._match("table_name", name)))
            .order_by("ordinal_position")
        )
        return self._render(query)


# ====================================================================== BigQuery


class BigQueryWarehouse(Warehouse):
    """A Google BigQuery project; helper schemas are datasets of `project`."""

    dialect: ClassVar[str] = "bigquery"
    source_type: ClassVar[str] = "bigquery"
    secret_fields: ClassVar[tuple[str, ...]] = ("service_account_json",)

    project: str = Field(description="Project that runs the jobs and holds the helper datasets.")
    location: str | None = Field(
        default=None, description="Location of the jobs and of the helper datasets (EU, US, europe-west1...)."
    )
    service_account_json: str | None = Field(
        default=None,
        repr=False,
        description=(
            "Service account key: the JSON text, or that JSON base64-encoded. Without it, Application"
            " Default Credentials are used (through dagster_gcp.BigQueryResource)."
        ),
    )
    service_account_file: str | None = Field(
        default=None, description="Path of a service account key file (instead of service_account_json)."
    )
    dataset: str | None = Field(
        default=None, description="Dataset of unqualified table names (the jobs' default dataset)."
    )

    def _target(self) -> str:
        location = self._value("location")
        return f"project {self._value('project')}" + (f" ({location})" if location else "")

    def _configured_schema(self) -> str | None:
        return self._value("dataset")

    def _catalog_prefix(self) -> str | None:
        return self._value("project")

    def _ident(self, name: str) -> exp.Identifier:
        # BigQuery dataset and table names are case-sensitive: never normalised
        return exp.Identifier(this=name, quoted=True)

    def _name_value(self, ident: exp.Identifier) -> str:
        return ident.name

    def _credentials(self) -> Any:
        from google.oauth2 import service_account

        key = self._value("service_account_json")
        path = self._value("service_account_file")
        if key and path:
            raise WarehouseError(
                self._prefix() + "give service_account_json or service_account_file, not both"
            )
        if path:
            return service_account.Credentials.from_service_account_file(path)
        if not key:
            return None

        text = key.strip()
        if not text.startswith("{"):
            text = _try_b64(text) or ""
        try:
            info = json.loads(text)
        except ValueError:
            raise WarehouseError(
                self._prefix() + "service_account_json is neither a JSON key nor a base64-encoded JSON key"
            ) from None
        return service_account.Credentials.from_service_account_info(info)

    @contextmanager
    def _open(self) -> Iterator[Any]:
        """A `google.cloud.bigquery.Client`.

        With a key, the credentials are built in memory (dagster_gcp's `gcp_credentials` would
        write the key to a temporary file and set GOOGLE_APPLICATION_CREDENTIALS process-wide);
        without one, `dagster_gcp.BigQueryResource` builds the client from the environment.
        """
        credentials = self._credentials()
        if credentials is not None:
            from google.cloud import bigquery

            client = bigquery.Client(
                project=self._value("project"), location=self._value("location"), credentials=credentials
            )
            try:
                yield client
            finally:
                client.close()
        else:
            from dagster_gcp import BigQueryResource

            resource = BigQueryResource(project=self._value("project"), location=self._value("location"))
            with resource.get_client() as client:
                try:
                    yield client
                finally:
                    client.close()

    def _job_config(self, **kwargs: Any) -> Any:
        from google.cloud import bigquery

        dataset = self._value("dataset")
        if dataset:
            kwargs["default_dataset"] = f"{self._value('project')}.{dataset}"
        return bigquery.QueryJobConfig(**kwargs)

    def _run_statements(self, conn: Any, statements: list[str]) -> None:
        script = ";\n".join(_strip_statement(s) for s in statements)
        conn.query(script, job_config=self._job_config()).result()

    def query(self, sql: str) -> list[tuple]:
        with self._connection() as client, self._wrap("query failed"):
            return [tuple(row.values()) for row in client.query(sql, job_config=self._job_config()).result()]

    def _create_schema(self, schema: str) -> exp.Create:
        create = super()._create_schema(schema)
        location = self._value("location")
        if location:
            create.set(
                "properties",
                exp.Properties(
                    expressions=[exp.Property(this=exp.var("location"), value=exp.Literal.string(location))]
                ),
            )
        return create

    def _information_schema_columns(self, catalog: exp.Identifier | None) -> exp.Table:
        raise NotImplementedError  # BigQuery's INFORMATION_SCHEMA is per dataset: see _columns_query

    def _columns_query(
        self, catalog: exp.Identifier | None, db: exp.Identifier | None, name: exp.Identifier
    ) -> str:
        project = catalog.name if catalog is not None else self._value("project")
        dataset = (db if db is not None else self._default_schema_ident()).name
        columns = exp.Table(
            this=exp.to_identifier("COLUMNS"),
            db=exp.to_identifier("INFORMATION_SCHEMA"),
            catalog=exp.Identifier(this=f"{project}.{dataset}", quoted=True),
        )
        query = (
            exp.select("column_name", "data_type", exp.null(), exp.null())
            .from_(columns)
            .where(exp.EQ(this=exp.column("table_name"), expression=exp.Literal.string(name.name)))
            .order_by("ordinal_position")
        )
        return self._render(query)

    def query_columns(self, sql: str) -> list[str]:
        """A dry-run job: BigQuery returns the result schema without running the query."""
        with self._connection() as client, self._wrap("query failed"):
            job = client.query(sql, job_config=self._job_config(dry_run=True, use_query_cache=False))
            return [field.name for field in job.schema]

    def check_connection(self) -> None:
        with self._connection() as client, self._wrap(f"cannot connect to {self._target()}"):
            client.query("SELECT 1", job_config=self._job_config()).result()

    def _bqstorage_client(self, client: Any) -> Any:
        """A BigQuery Storage Read API client when google-cloud-bigquery-storage is installed."""
        try:
            from google.cloud import bigquery_storage
        except ImportError:
            return None
        return bigquery_storage.BigQueryReadClient(credentials=client._credentials)

    @contextmanager
    def stream(self, sql: str, batch_rows: int = 100_000) -> Iterator[pa.RecordBatchReader]:
        """Result pages as Arrow batches (Storage Read API when available, else REST pages)."""
        from google.cloud.bigquery import _pandas_helpers

        with self._connection() as client:
            with self._wrap("query failed"):
                rows = client.query(sql, job_config=self._job_config()).result(page_size=batch_rows)
                source = iter(rows.to_arrow_iterable(bqstorage_client=self._bqstorage_client(client)))
                first = next(source, None)
                if first is not None:
                    schema = first.schema
                else:
                    schema = _pandas_helpers.bq_to_arrow_schema(rows.schema) or pa.schema([])

            def batches() -> Iterator[pa.RecordBatch]:
                batch = first
                while batch is not None:
                    yield from _split(batch, batch_rows)
                    with self._wrap("streaming the result failed"):
                        batch = next(source, None)

            yield pa.RecordBatchReader.from_batches(schema, batches())


# ====================================================================== Databricks


class DatabricksWarehouse(Warehouse):
    """A Databricks SQL warehouse (databricks-sql-connector, imported when first used)."""

    dialect: ClassVar[str] = "databricks"
    source_type: ClassVar[str] = "databricks"
    secret_fields: ClassVar[tuple[str, ...]] = ("access_token",)
    default_schema: ClassVar[str | None] = "default"
    case_insensitive: ClassVar[bool] = True

    server_hostname: str = Field(
        description="Server hostname of the SQL warehouse (dbc-....cloud.databricks.com)."
    )
    http_path: str = Field(description="HTTP path of the SQL warehouse (/sql/1.0/warehouses/...).")
    access_token: str = Field(repr=False, description="Personal access token or service principal token.")
    catalog: str | None = Field(
        default=None,
        description=(
            "Unity Catalog catalog holding the customer data and the helper schemas"
            " (the workspace's default catalog if unset)."
        ),
    )
    schema_: str | None = Field(
        default=None, alias="schema", description="Schema of unqualified table names (default: `default`)."
    )

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
            from databricks import sql as dbsql
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
        wrapped = f"SELECT * FROM (\n{_strip_statement(sql)}\n) AS dinmo_columns_probe LIMIT 0"
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
                _quietly(cur.close)


# ====================================================================== construction from YAML

WAREHOUSE_TYPES: dict[str, type[Warehouse]] = {
    "duckdb": DuckDBWarehouse,
    "postgres": PostgresWarehouse,
    "postgresql": PostgresWarehouse,
    "snowflake": SnowflakeWarehouse,
    "bigquery": BigQueryWarehouse,
    "redshift": RedshiftWarehouse,
    "databricks": DatabricksWarehouse,
}


def config_keys(cls: type[Warehouse]) -> list[str]:
    """The YAML keys a source of this class accepts (besides `type`)."""
    return [field.alias or name for name, field in cls.model_fields.items() if name != "source_name"]


def warehouse_from_config(source_name: str, config: dict) -> Warehouse:
    """The warehouse resource of one `sources:` entry of the project YAML.

    `config` holds `type` and the settings; a secret may be a plain string, a `dagster.EnvVar`
    or an `{env: NAME}` mapping. Errors name the source and the key, never a value.
    """
    settings = dict(config)
    source_type = settings.pop("type", None)
    prefix = f"source '{source_name}'"
    if source_type is None:
        raise WarehouseError(f"{prefix}: missing `type` (one of {', '.join(sorted(set(WAREHOUSE_TYPES)))})")
    cls = WAREHOUSE_TYPES.get(str(source_type).lower())
    if cls is None:
        raise WarehouseError(
            f"{prefix}: unknown type {source_type!r} (one of {', '.join(sorted(set(WAREHOUSE_TYPES)))})"
        )
    prefix = f"{prefix} ({cls.source_type})"
    allowed = config_keys(cls)
    unknown = sorted(str(k) for k in settings if k not in allowed)
    if unknown:
        raise WarehouseError(f"{prefix}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(allowed)}")
    # null means "unset", except for a setting that takes None instead of its default (`memory_limit: null`)
    nullable = {
        field.alias or name
        for name, field in cls.model_fields.items()
        if field.default not in (None, PydanticUndefined) and type(None) in get_args(field.annotation)
    }
    for key, value in list(settings.items()):
        if isinstance(value, dict) and set(value) == {"env"}:
            settings[key] = EnvVar(str(value["env"]))
        elif value is None and key not in nullable:
            del settings[key]
    try:
        return cls(source_name=source_name, **settings)
    except ValidationError as exc:
        problems = "; ".join(
            f"`{'.'.join(str(p) for p in err.get('loc', ())) or '?'}`: {err.get('msg', 'invalid')}"
            for err in exc.errors(include_input=False, include_url=False)
        )
        raise WarehouseError(f"{prefix}: invalid configuration: {problems}") from None
    except Exception as exc:  # noqa: BLE001 - dagster config errors
        reason = _one_line(str(exc))
        for key in cls.secret_fields:
            value = settings.get(key)
            if isinstance(value, str) and not isinstance(value, EnvVar) and len(value) >= 3:
                reason = reason.replace(value, "***")
        raise WarehouseError(f"{prefix}: invalid configuration: {reason}") from None

"""The `Warehouse` adapter every source connector implements, and what the connectors share.

Every computation on customer data runs inside the warehouse; an adapter only opens a connection per
operation, runs SQL, and streams the rows that must leave the warehouse as Arrow record batches.

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
- The adapter holds the source's settings unresolved: a secret written `{env: NAME}` is read from
  the environment (`dinmo_dagster.secrets.resolve`) each time a connection opens, and never appears
  in `repr()`.

Plain Python: no Dagster import.
"""

from __future__ import annotations

import datetime
import json
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager
from typing import Any, ClassVar

import pyarrow as pa
import pyarrow.compute as pc
import sqlglot
from pydantic import BaseModel, ConfigDict
from sqlglot import exp
from sqlglot.dialects.dialect import Dialect

from dinmo_dagster import secrets
from dinmo_dagster.connectors import ConnectorConfig

__all__ = [
    "HelperSchemas",
    "SourceConfig",
    "Warehouse",
    "WarehouseError",
]


class WarehouseError(Exception):
    """A warehouse operation failed. The message names the source and never holds a secret."""


_MAX_REASON = 600


def one_line(text: str) -> str:
    """``text`` with every run of whitespace (line breaks included) made one space."""
    return re.sub(r"\s+", " ", text).strip()


class HelperSchemas(BaseModel):
    """Names of the helper schemas the tool creates in a source on first use."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)

    segments: str = "dinmo_segments"
    stats: str = "dinmo_stats"
    delta_storage: str = "dinmo_delta_storage"
    predictions: str = "dinmo_predictions"
    identity: str = "dinmo_identity"


class SourceConfig(ConnectorConfig):
    """The settings of a ``sources:`` entry: its connector's own, plus the helper schemas' names."""

    helper_schemas: HelperSchemas = HelperSchemas()


class Warehouse(ABC):
    """A data warehouse holding the customer data (a ``sources:`` entry of the project YAML).

    Built from the source's settings (``config``, secrets unresolved) and its name, which messages
    quote. Subclasses give ``dialect`` and ``_open``; the DB-API defaults here serve the rest.
    """

    dialect: ClassVar[str]
    """sqlglot dialect of the warehouse."""
    source_type: ClassVar[str]
    """The `type:` of the source in the project YAML."""
    default_schema: ClassVar[str | None] = None
    """Schema of unqualified table names when the source config names none."""
    case_insensitive: ClassVar[bool] = False
    """Whether unquoted names are matched case-insensitively in the catalog (DuckDB, Databricks)."""

    def __init__(self, config: SourceConfig, *, name: str = "") -> None:
        self.config = config
        self.source_name = name

    def __repr__(self) -> str:
        # the type and name only: a setting may be a secret, and a target may need an unset variable
        return f"{type(self).__name__}(source={self.source_name!r}, type={self.source_type!r})"

    # ------------------------------------------------------------------ settings and secrets

    def _value(self, field: str) -> Any:
        """The plain value of setting `field`, reading an `{env: NAME}` from the environment."""
        info = type(self.config).model_fields[field]
        try:
            return secrets.resolve(getattr(self.config, field), key=info.alias or field)
        except secrets.MissingSecret as exc:
            raise WarehouseError(self._prefix() + str(exc)) from None

    def _scrub(self, text: str) -> str:
        return secrets.scrub(text, secrets.secret_values(self.config))

    # ------------------------------------------------------------------ errors

    def _prefix(self) -> str:
        return f"source '{self.source_name or '?'}' ({self.source_type}): "

    def _target(self) -> str:
        """Where the warehouse is, for messages (host:port/database); never a secret."""
        return self.source_type

    def _error(self, what: str, exc: BaseException) -> WarehouseError:
        reason = one_line(str(exc)) or type(exc).__name__
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
            quietly(conn.rollback)
            raise
        finally:
            quietly(cur.close)

    def insert_rows(
        self, table: exp.Table, rows: pa.Table, *, before: Sequence[str] = (), after: Sequence[str] = ()
    ) -> None:
        """Insert ``rows`` into ``table`` (each Arrow column into the table's column of the same name), in
        one transaction with the statements ``before`` and ``after`` where the warehouse has transactions
        (as :meth:`execute`).

        For small bookkeeping writes that come often (a platform sync's acknowledgements). DuckDB reads
        the Arrow table itself and PostgreSQL takes the rows through COPY, so no value becomes SQL text;
        this default renders multi-row INSERTs of typed literals with sqlglot (values quoted by the
        dialect, never pasted), 1,000 rows per statement.
        """
        self.execute([*before, *self._insert_literals_sql(table, rows), *after])

    def _insert_literals_sql(self, table: exp.Table, rows: pa.Table, chunk: int = 1000) -> list[str]:
        """INSERT statements of ``rows`` as literals, ``chunk`` rows each."""
        if not rows.num_rows:
            return []
        target = exp.Schema(this=table.copy(), expressions=[exp.to_identifier(n, quoted=True) for n in rows.column_names])
        statements = []
        for start in range(0, rows.num_rows, chunk):
            part = rows.slice(start, chunk)
            values = zip(*(column.to_pylist() for column in part.columns))
            statements.append(self._render(exp.Insert(this=target.copy(), expression=exp.Values(
                expressions=[exp.Tuple(expressions=[_literal(v) for v in row]) for row in values]))))
        return statements

    def query(self, sql: str) -> list[tuple]:
        """Run `sql` and fetch every row (for small results: counts, metadata)."""
        with self._connection() as conn, self._wrap("query failed"):
            cur = conn.cursor()
            try:
                cur.execute(sql)
                rows = [tuple(row) for row in cur.fetchall()] if cur.description else []
                conn.commit()
            except BaseException:
                quietly(conn.rollback)
                raise
            finally:
                quietly(cur.close)
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
                quietly(cur.close)

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
                    batch = rows_to_batch(rows, schema)
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
                self._prefix() + f"invalid table name {table!r}: {one_line(str(exc))}"
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
        wrapped = f"SELECT * FROM (\n{strip_statement(sql)}\n) AS dinmo_columns_probe LIMIT 0"
        with self._connection() as conn, self._wrap("query failed"):
            cur = conn.cursor()
            try:
                cur.execute(wrapped)
                names = [col[0] for col in cur.description]
                cur.fetchall()
                quietly(conn.rollback)
            finally:
                quietly(cur.close)
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
                quietly(cur.close)


# ====================================================================== helpers shared by the connectors


def quietly(fn: Callable[[], Any]) -> None:
    """Call ``fn``, ignoring any error (best-effort cleanup: closing, rolling back)."""
    try:
        fn()
    except Exception:  # noqa: BLE001, S110 - best-effort cleanup
        pass


def _literal(value: Any) -> exp.Expression:
    """A typed SQL literal of a Python value (text, number, boolean, timestamp or NULL)."""
    if value is None:
        return exp.Null()
    if isinstance(value, bool):
        return exp.Boolean(this=value)
    if isinstance(value, (int, float)):
        return exp.Literal.number(value)
    if isinstance(value, datetime.datetime):
        return exp.cast(exp.Literal.string(value.isoformat(sep=" ")), exp.DataType.build("timestamp"))
    return exp.Literal.string(str(value))


def strip_statement(sql: str) -> str:
    """``sql`` without surrounding blanks and trailing semicolons (to wrap it or join it in a script)."""
    return sql.strip().rstrip(";").strip()


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


def rows_to_batch(rows: Sequence[Sequence[Any]], schema: pa.Schema) -> pa.RecordBatch:
    """DB-API rows as one Arrow batch of ``schema`` (values a string column cannot take become text)."""
    columns = list(zip(*rows)) if rows else [() for _ in schema]
    arrays = [_to_arrow(col, field.type) for col, field in zip(columns, schema)]
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def split_batch(batch: pa.RecordBatch, max_rows: int) -> Iterator[pa.RecordBatch]:
    """`batch` in slices of at most `max_rows` rows (zero-copy)."""
    if batch.num_rows <= max_rows:
        yield batch
        return
    for offset in range(0, batch.num_rows, max_rows):
        yield batch.slice(offset, max_rows)


def cast_batch(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    """``batch`` cast column by column to ``schema`` (times truncated to its unit where needed)."""
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

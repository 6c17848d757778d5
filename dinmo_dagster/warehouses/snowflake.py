"""Snowflake, through `dagster_snowflake.SnowflakeResource`'s connection code.

The connection is opened by `dagster-snowflake` (its password and key-pair handling: raw or base64
PEM keys, key files, passphrases), imported when a connection opens; everything else here is plain
Python.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, ClassVar, Literal

import pyarrow as pa
from pydantic import Field
from sqlglot import exp

from dinmo_dagster.connectors import register_warehouse
from dinmo_dagster.secrets import EnvRef, Secret
from dinmo_dagster.warehouses.base import SourceConfig, Warehouse, WarehouseError, cast_batch, quietly

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


class SnowflakeSource(SourceConfig):
    """``{type: snowflake, account, user, password | private_key | private_key_path, database, warehouse,
    role, schema}``."""

    path_fields: ClassVar[tuple[str, ...]] = ("private_key_path",)

    type: Literal["snowflake"]
    account: str | EnvRef
    """Snowflake account identifier (orgname-accountname or locator)."""
    user: str | EnvRef
    """User login name."""
    password: Secret | None = None
    """Password of `user` (password authentication)."""
    private_key: Secret | None = None
    """PEM private key, raw or base64-encoded (key-pair authentication)."""
    private_key_path: str | None = None
    """Path of a PEM private key file (key-pair authentication)."""
    private_key_passphrase: Secret | None = None
    """Passphrase of an encrypted private key."""
    database: str
    """Database holding the customer data and the helper schemas."""
    warehouse: str | None = None
    """Virtual warehouse that runs the queries."""
    role: str | None = None
    """Role to use."""
    schema_: str | None = Field(None, alias="schema")
    """Schema of unqualified table names (default PUBLIC)."""
    unload_storage_integration: str | None = None
    """Storage integration through which ``COPY INTO 'gcs://bucket/...'`` writes a gcs destination's files
    (``unload: auto | always`` of its activations); its service account needs to create and delete objects."""
    unload_stage: str | None = None
    """Or: an external stage whose URL is the gcs destination bucket's root (``gcs://bucket/``)."""


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
    """A Snowflake database; connections come from `dagster_snowflake.SnowflakeResource`."""

    dialect: ClassVar[str] = "snowflake"
    source_type: ClassVar[str] = "snowflake"
    default_schema: ClassVar[str | None] = "PUBLIC"

    config: SnowflakeSource

    def _target(self) -> str:
        return f"account {self._value('account')}/{self._value('database')}"

    def _configured_schema(self) -> str | None:
        return self._value("schema_")

    def _catalog_prefix(self) -> str | None:
        return self._value("database")

    def snowflake_resource(self) -> Any:
        """The `dagster_snowflake.SnowflakeResource` this source connects through (secrets resolved)."""
        # imported when a connection opens: dagster-snowflake brings the Snowflake connector (import cost)
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
                quietly(conn.rollback)
                quietly(conn.close)
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
                            yield cast_batch(batch.rename_columns(schema.names), schema)

                yield pa.RecordBatchReader.from_batches(schema, self._guarded(arrow_batches()))
            finally:
                quietly(cur.close)

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


register_warehouse("snowflake", SnowflakeSource, SnowflakeWarehouse)

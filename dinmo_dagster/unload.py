"""Warehouse-native unload to Google Cloud Storage: the warehouse writes the files, no row passes through Python.

An activation's ``unload`` setting (``auto``, the default; ``never``; ``always``) decides whether a sync to
a ``gcs`` destination asks its warehouse to write the files itself: BigQuery ``EXPORT DATA``, Snowflake
``COPY INTO <location>``, Databricks ``INSERT OVERWRITE DIRECTORY``. The SELECT is the change-set query the
streaming path runs (``sync.plan``), wrapped so that each value is written as the shared writer writes it
(ISO 8601 dates and timestamps, NULL an empty CSV field, NaN and infinities ``null`` in JSON).

What the warehouses can and cannot do (``static_reason``, ``column_reason``):

- Redshift ``UNLOAD`` writes only to Amazon S3 (https://docs.aws.amazon.com/redshift/latest/dg/r_UNLOAD.html),
  so a Redshift source always streams. DuckDB writes its files through its own ``COPY`` (``sync._copy_export``)
  and PostgreSQL has no unload: both stream.
- No warehouse writes XML.
- BigQuery ``EXPORT DATA`` (https://cloud.google.com/bigquery/docs/reference/standard-sql/export-statements):
  its URI takes one ``*`` wildcard, replaced by a 12-digit shard number (``…-000000000000.csv``); it decides
  the number of files itself and "the size of the files generated when using the EXPORT DATA statement is
  not guaranteed"; in JSON it writes INT64 values as JSON strings (the product's JSON keeps numbers). So
  BigQuery unloads CSV only, and never with ``max_file_size_mb``; Parquet (several files that cannot be
  joined into one) streams.
- Snowflake ``COPY INTO <location>`` (https://docs.snowflake.com/en/sql-reference/sql/copy-into-location)
  reaches a ``gcs://`` bucket only through a storage integration or an external stage: the source names one
  (``unload_storage_integration`` or ``unload_stage``). It writes JSON as newline-delimited JSON only (a
  JSON array streams), Parquet compressed with snappy or none (gzip and zstd stream). ``MAX_FILE_SIZE`` is
  the upper size "of each file to be generated in parallel per thread", and the docs add that "the actual
  file size and number of files unloaded are determined by the total amount of data and number of nodes
  available": a target, not a bound on every file, so ``max_file_size_mb`` streams. CSV NULLs and empty
  strings stay distinct with ``FIELD_OPTIONALLY_ENCLOSED_BY = '"'`` and ``NULL_IF = ('')``
  (https://docs.snowflake.com/en/user-guide/data-unload-considerations); Snowflake then quotes every text
  field, which RFC 4180 allows and every CSV parser reads as the same value.
- Databricks ``INSERT OVERWRITE DIRECTORY … USING CSV | JSON | PARQUET OPTIONS (…) query``
  (https://docs.databricks.com/sql/language-manual/sql-ref-syntax-dml-insert-overwrite-directory.html):
  Spark's JSON writer writes JSON lines only, and Spark splits files by rows (``maxRecordsPerFile``), never by
  bytes, so ``max_file_size_mb`` streams. Spark trims leading and trailing white space of CSV values unless
  told not to, and escapes quotes with a backslash by default: both are set to the RFC 4180 behaviour.

Same names, journal and manifest as the streaming path (``export_file``): the warehouse writes into a private
temporary prefix of the bucket (``.dinmo-unload/<activation>/<partition>/<n>-<random>/``), recorded in the
journal (as ``<prefix>*``) before the statement runs, so the next sync removes what a killed one left there,
as it removes the streaming path's part files. The objects then take their final names through GCS:
text files (CSV, JSON lines, gzip or not) are joined with ``compose`` in shard order behind a first object
the shared writer writes (the header line, or nothing; a gzip member for gzip: a gzip file may hold several
members, RFC 1952), so the warehouse's files need no header and any number of them make the one file
``name.csv``; a Parquet file (written as one file: Snowflake ``SINGLE = TRUE``, Spark ``REPARTITION(1)``) is
copied. The temporary objects are deleted, and the baseline moves only after every final object exists.
An unload that finds nothing to write (no object) and every ``auto`` unload whose statement fails go
through the streaming path instead; ``always`` fails the sync there, naming the reason.
"""

from __future__ import annotations

import re
import tempfile
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import sqlglot
from sqlglot import exp

from dinmo_dagster import naming, writers

if TYPE_CHECKING:
    from dinmo_dagster.config import Activation
    from dinmo_dagster.destinations.gcs import GCSDestination
    from dinmo_dagster.sync import SyncResult, SyncTarget

__all__ = [
    "LABELS",
    "MODES",
    "TEMP_ROOT",
    "WRITER",
    "Choice",
    "activation_problem",
    "choose",
    "column_reason",
    "expand_temporary",
    "export_file",
    "static_reason",
    "unload_sql",
]

MODES = ("auto", "never", "always")
WRITER = "warehouse_unload"
"""The name the run metadata (``writer``) gives files the warehouse wrote."""
TEMP_ROOT = ".dinmo-unload"
"""The bucket's top-level prefix of the warehouses' temporary objects."""
_MARK = "*"  # a journalled ``<prefix>*`` stands for every object under the prefix
LABELS = {
    "bigquery": "bigquery EXPORT DATA",
    "snowflake": "snowflake COPY INTO",
    "databricks": "databricks INSERT OVERWRITE DIRECTORY",
}
_SIZE_GUARANTEE = {
    "bigquery": "BigQuery EXPORT DATA has no file size setting and does not guarantee the size of its files",
    "snowflake": "Snowflake's MAX_FILE_SIZE is a target per parallel thread, not a bound on every file",
    "databricks": "Spark splits files by row count (maxRecordsPerFile), never by bytes",
}
_SNOWFLAKE_SINGLE_MAX = 5 * 1024**3  # MAX_FILE_SIZE's largest value: a SINGLE Parquet file's limit
_SNOWFLAKE_PARQUET = {"snappy": "SNAPPY", "none": "NONE"}
_SPARK_PARQUET = {"snappy": "snappy", "gzip": "gzip", "zstd": "zstd", "none": "none"}
_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]*(\.[A-Za-z_][A-Za-z0-9_$]*){0,2}$")


# ---------------------------------------------------------------------------------------------------------
# What each warehouse can write
# ---------------------------------------------------------------------------------------------------------


def static_reason(
    kind: str,
    source: Any,
    destination_type: str | None,
    options: writers.FormatOptions,
    max_file_size_mb: float | None,
) -> str | None:
    """Why warehouse ``kind`` cannot write this activation's files itself (None: it can), from the settings
    alone: the destination, the source's reach to the bucket, the format and its options, the size limit."""
    if destination_type != "gcs":
        return f"the destination is {destination_type or 'an API platform'}, not gcs: warehouses unload to GCS only"
    if kind == "redshift":
        return "Redshift UNLOAD writes only to Amazon S3, not to Google Cloud Storage"
    if kind not in LABELS:
        return f"a {kind} source has no unload to Cloud Storage"
    label = LABELS[kind]
    fmt = options.format
    if fmt == "xml":
        return f"{label} cannot write XML"
    if max_file_size_mb is not None:
        return f"max_file_size_mb needs parts under a byte limit: {_SIZE_GUARANTEE[kind]}"
    if kind == "bigquery":
        if fmt == "json":
            return "BigQuery EXPORT DATA writes INT64 values as JSON strings, and the product's JSON keeps numbers"
        if fmt == "parquet":
            return "BigQuery EXPORT DATA decides the number of Parquet files itself, and Parquet files cannot be joined"
    if kind == "snowflake":
        if not (getattr(source, "unload_storage_integration", None) or getattr(source, "unload_stage", None)):
            return (
                "the source sets neither unload_storage_integration nor unload_stage: Snowflake writes to "
                "gcs:// only through one of them"
            )
        if fmt == "parquet" and options.parquet_compression not in _SNOWFLAKE_PARQUET:
            return (
                f"Snowflake writes Parquet with snappy or no compression, not {options.parquet_compression}"
            )
    if fmt == "json" and not options.json_lines and kind in ("snowflake", "databricks"):
        writer = "Snowflake COPY INTO" if kind == "snowflake" else "Spark's JSON writer"
        return f"{writer} writes only newline-delimited JSON (json: {{lines: true}}), not a JSON array"
    return None


def _is_utc(t: pa.TimestampType) -> bool:
    return t.tz is None or t.tz.upper() in ("UTC", "ETC/UTC", "Z", "+00:00", "GMT", "ETC/GMT")


def column_reason(kind: str, schema: pa.Schema, options: writers.FormatOptions) -> str | None:
    """Why warehouse ``kind`` cannot write these columns as the shared writer does (None: it can).

    Text formats take integers, floats, booleans, text, decimals, dates and timestamps (of UTC or without a
    time zone); Parquet also takes binary. Everything else (time of day, intervals, lists, structs, maps,
    binary in text) keeps the shared writer, which renders it as the README describes.
    """
    label = {"csv": "CSV", "json": "JSON", "parquet": "Parquet"}.get(options.format, options.format)
    for field in schema:
        t = field.type
        ok = (
            pa.types.is_integer(t)
            or pa.types.is_floating(t)
            or pa.types.is_boolean(t)
            or pa.types.is_string(t)
            or pa.types.is_large_string(t)
            or pa.types.is_decimal(t)
            or pa.types.is_date32(t)
            or (pa.types.is_timestamp(t) and _is_utc(t))
            or (options.format == "parquet" and (pa.types.is_binary(t) or pa.types.is_large_binary(t)))
        )
        if not ok:
            return f'column "{field.name}" has type {t}, which {LABELS.get(kind, kind)} writes differently in {label}'
    return None


def activation_problem(kind: str, source: Any, destination_type: str | None, a: Activation) -> str | None:
    """For ``dinmo validate``: why ``unload: always`` cannot hold for activation ``a`` (None: it can)."""
    if a.unload != "always":
        return None
    try:
        options = writers.FormatOptions(
            format=a.format,
            csv_delimiter=a.csv.delimiter,
            csv_header=a.csv.header,
            json_lines=a.json_.lines,
            compression=a.compression,
            parquet_compression=a.parquet.compression,
        )
    except ValueError:
        return None  # the option's own problem is reported elsewhere
    return static_reason(kind, source, destination_type, options, a.max_file_size_mb)


@dataclass(frozen=True)
class Choice:
    """A sync's export path: the warehouse's unload (``label``) or streaming (``reason``)."""

    unload: bool
    kind: str
    reason: str = ""

    @property
    def label(self) -> str:
        return LABELS.get(self.kind, self.kind)

    def describe(self) -> str:
        """``unload (bigquery EXPORT DATA)`` or ``streaming (<reason>)``: the run metadata's text."""
        return f"unload ({self.label})" if self.unload else f"streaming ({self.reason})"


class UnloadRefused(Exception):
    """``unload: always`` where the warehouse cannot write the files; the sync turns it into its own
    ``SyncError`` (sync imports this module, not the other way round)."""


def _refuse(t: SyncTarget, reason: str) -> Exception:
    return UnloadRefused(
        f"activations.{t.name}.unload: 'always' cannot unload: {reason}; nothing was written. "
        f"Set activations.{t.name}.unload to 'auto' or 'never'"
    )


def choose(t: SyncTarget, options: writers.FormatOptions, result: SyncResult | None = None) -> Choice:
    """The export path of the sync of ``t`` from its settings; ``always`` with a reason not to raises. A
    streaming choice is recorded in ``result.export_path`` (an unload's, file by file by ``export_file``)."""
    choice = _choose(t, options)
    if result is not None and not choice.unload:
        result.export_path = choice.describe()
    return choice


def _choose(t: SyncTarget, options: writers.FormatOptions) -> Choice:
    kind = t.warehouse.source_type
    mode = getattr(t.activation, "unload", "auto")
    destination_type = getattr(getattr(t.destination, "config", None), "type", None)
    if mode == "never":
        return Choice(False, kind, f"activations.{t.name}.unload is 'never'")
    reason = static_reason(kind, t.warehouse.config, destination_type, options, t.activation.max_file_size_mb)
    if reason is not None:
        if mode == "always":
            raise _refuse(t, reason)
        return Choice(False, kind, reason)
    return Choice(True, kind)


# ---------------------------------------------------------------------------------------------------------
# The statements
# ---------------------------------------------------------------------------------------------------------


def _parse(template: str, kind: str, column: exp.Expression) -> exp.Expression:
    """A fixed SQL expression of dialect ``kind`` with ``x`` replaced by ``column`` (no value is pasted)."""
    tree = sqlglot.parse_one(template, read=kind)
    return tree.transform(
        lambda node: column.copy() if isinstance(node, exp.Column) and node.name == "x" else node
    )


def _fraction(t: pa.TimestampType) -> int:
    return {"s": 0, "ms": 3, "us": 6, "ns": 9}[t.unit]


def _fn(name: str, *args: exp.Expression) -> exp.Expression:
    """A function call rendered as written (sqlglot would rewrite the format strings of some)."""
    return exp.Anonymous(this=name, expressions=list(args))


def _value(kind: str, column: exp.Expression, t: pa.DataType, fmt: str) -> exp.Expression:
    """``column`` as the shared writer writes it in format ``fmt``: ISO 8601 text for dates and timestamps
    (with ``+00:00`` when time-zone-aware), NaN and infinities null in JSON; other values as they are.

    BigQuery's are parsed from GoogleSQL text (so that a stand-in can transpile them); Snowflake's and
    Databricks' are written as calls, their format strings kept as the documentation spells them.
    """
    if fmt == "parquet":
        return column
    if pa.types.is_date32(t):
        if kind == "bigquery":
            return _parse("FORMAT_DATE('%Y-%m-%d', x)", kind, column)
        return (
            _fn("TO_VARCHAR", column, _lit("YYYY-MM-DD"))
            if kind == "snowflake"
            else _fn("DATE_FORMAT", column, _lit("yyyy-MM-dd"))
        )
    if pa.types.is_timestamp(t):
        n, aware = _fraction(t), t.tz is not None
        offset = "+00:00" if aware else ""
        if kind == "bigquery":
            seconds = f"%E{n}S" if n else "%S"
            return _parse(
                f"FORMAT_TIMESTAMP('%Y-%m-%dT%H:%M:{seconds}{offset}', x, 'UTC')"
                if aware
                else f"FORMAT_DATETIME('%Y-%m-%dT%H:%M:{seconds}', x)",
                kind,
                column,
            )
        if kind == "snowflake":
            fraction = f".FF{n}" if n else ""
            value = _fn("CONVERT_TIMEZONE", _lit("UTC"), column) if aware else column
            return _fn(
                "TO_VARCHAR",
                value,
                _lit(f'YYYY-MM-DD"T"HH24:MI:SS{fraction}' + (f'"{offset}"' if aware else "")),
            )
        fraction = "." + "S" * n if n else ""
        value = _fn("TO_UTC_TIMESTAMP", column, _fn("CURRENT_TIMEZONE")) if aware else column
        return _fn(
            "DATE_FORMAT", value, _lit(f"yyyy-MM-dd'T'HH:mm:ss{fraction}" + (f"'{offset}'" if aware else ""))
        )
    if fmt == "json" and pa.types.is_floating(t):
        template = {
            "bigquery": "IF(IS_NAN(x) OR IS_INF(x), NULL, x)",
            "snowflake": "IFF(x IN ('NaN'::FLOAT, 'inf'::FLOAT, '-inf'::FLOAT), NULL, x)",
            "databricks": "CASE WHEN ISNAN(x) OR ABS(x) = DOUBLE('infinity') THEN NULL ELSE x END",
        }[kind]
        return _parse(template, kind, column)
    return column


def _select(kind: str, sql: str, dialect: str, schema: pa.Schema, fmt: str) -> exp.Select:
    """The export query ``sql`` (of dialect ``dialect``) wrapped: its columns by name (``schema``'s, the
    file's column names), each value as the shared writer writes it."""
    inner = exp.maybe_parse(sql, dialect=dialect).subquery("_dinmo_export")
    columns = [
        (
            f.name,
            _value(
                kind, exp.column(exp.to_identifier(f.name, quoted=True), table="_dinmo_export"), f.type, fmt
            ),
        )
        for f in schema
    ]
    if kind == "snowflake" and fmt == "json":
        # Snowflake unloads JSON from one VARIANT column: an object per row, its NULLs kept as null.
        pairs = [e for name, value in columns for e in (exp.Literal.string(name), value)]
        return exp.select(exp.Anonymous(this="OBJECT_CONSTRUCT_KEEP_NULL", expressions=pairs)).from_(inner)
    return exp.select(*[value.as_(name, quoted=True) for name, value in columns]).from_(inner)


def _lit(value: str) -> exp.Literal:
    return exp.Literal.string(value)


def unload_sql(
    kind: str,
    sql: str,
    dialect: str,
    schema: pa.Schema,
    options: writers.FormatOptions,
    bucket: str,
    prefix: str,
    source: Any = None,
) -> list[str]:
    """The statements with which warehouse ``kind`` writes the export query ``sql``'s rows under
    ``gs://bucket/prefix`` (``prefix`` ends with ``/``), without a header (the header is joined in front).

    Built with sqlglot: every value (bucket, prefix, delimiter, names) is a literal or an identifier the
    dialect quotes, never pasted text. The Snowflake storage integration and stage are names checked
    against Snowflake's identifier syntax.
    """
    fmt, gzip = options.format, options.compression == "gzip"
    select = _select(kind, sql, dialect, schema, fmt)
    if kind == "bigquery":
        ext = "csv.gz" if gzip else "csv"
        props: list[exp.Expression] = [
            exp.Property(this=exp.var("uri"), value=_lit(f"gs://{bucket}/{prefix}data-*.{ext}")),
            exp.FileFormatProperty(this=_lit("CSV")),
            exp.Property(this=exp.var("overwrite"), value=exp.true()),
            exp.Property(this=exp.var("header"), value=exp.false()),
            exp.Property(this=exp.var("field_delimiter"), value=_lit(options.csv_delimiter)),
        ]
        if gzip:
            props.append(exp.Property(this=exp.var("compression"), value=_lit("GZIP")))
        return [exp.Export(this=select, options=exp.Properties(expressions=props)).sql(dialect="bigquery")]
    if kind == "snowflake":
        return [_snowflake_copy(select, options, bucket, prefix, source)]
    if kind == "databricks":
        return [_databricks_insert(select, options, bucket, prefix)]
    raise ValueError(f"no unload statement for a {kind} source")


def _snowflake_copy(
    select: exp.Select, options: writers.FormatOptions, bucket: str, prefix: str, source: Any
) -> str:
    stage = getattr(source, "unload_stage", None)
    integration = getattr(source, "unload_storage_integration", None)
    for key, name in (("unload_stage", stage), ("unload_storage_integration", integration)):
        if name is not None and not _NAME_RE.match(name):
            raise ValueError(
                f"{key}: {name!r} is not a Snowflake object name (letters, digits, '_', '$', dots)"
            )
    target = _lit(f"@{stage}/{prefix}" if stage else f"gcs://{bucket}/{prefix}")
    fmt = options.format

    def prop(name: str, value: exp.Expression) -> exp.Property:
        return exp.Property(this=exp.var(name), value=value)

    codec = exp.var("GZIP" if options.compression == "gzip" else "NONE")
    if fmt == "csv":
        file_format = [
            prop("TYPE", exp.var("CSV")),
            prop("FIELD_DELIMITER", _lit(options.csv_delimiter)),
            prop("RECORD_DELIMITER", _lit("\n")),
            prop("FIELD_OPTIONALLY_ENCLOSED_BY", _lit('"')),
            prop("ESCAPE_UNENCLOSED_FIELD", exp.var("NONE")),
            prop("NULL_IF", exp.Paren(this=_lit(""))),
            prop("EMPTY_FIELD_AS_NULL", exp.false()),
            prop("COMPRESSION", codec),
        ]
    elif fmt == "json":
        file_format = [prop("TYPE", exp.var("JSON")), prop("COMPRESSION", codec)]
    else:
        file_format = [
            prop("TYPE", exp.var("PARQUET")),
            prop("COMPRESSION", exp.var(_SNOWFLAKE_PARQUET[options.parquet_compression])),
        ]
    params = [
        exp.CopyParameter(this=exp.var("FILE_FORMAT"), expressions=file_format),
        exp.CopyParameter(this=exp.var("HEADER"), expression=exp.Boolean(this=fmt == "parquet")),
        exp.CopyParameter(this=exp.var("OVERWRITE"), expression=exp.true()),
    ]
    if fmt == "parquet":  # one file (column names kept by HEADER), at most 5 GB
        params += [
            exp.CopyParameter(this=exp.var("SINGLE"), expression=exp.true()),
            exp.CopyParameter(
                this=exp.var("MAX_FILE_SIZE"), expression=exp.Literal.number(_SNOWFLAKE_SINGLE_MAX)
            ),
        ]
    copy = exp.Copy(this=exp.Table(this=target), kind=True, files=[select.subquery()], params=params)
    if integration and not stage:
        copy.set("credentials", exp.Credentials(storage=exp.to_identifier(integration)))
    return copy.sql(dialect="snowflake")


def _databricks_insert(select: exp.Select, options: writers.FormatOptions, bucket: str, prefix: str) -> str:
    """``INSERT OVERWRITE DIRECTORY`` (sqlglot parses no ``USING`` clause there: the head is put together
    from literals sqlglot renders, the query is sqlglot's)."""
    fmt, codec = options.format, "gzip" if options.compression == "gzip" else "none"
    if fmt == "csv":
        using = "CSV"
        opts = {
            "sep": options.csv_delimiter,
            "header": "false",
            "quote": '"',
            "escape": '"',
            "nullValue": "",
            "emptyValue": '""',
            "ignoreLeadingWhiteSpace": "false",
            "ignoreTrailingWhiteSpace": "false",
            "lineSep": "\n",
            "compression": codec,
        }
    elif fmt == "json":
        using, opts = "JSON", {"ignoreNullFields": "false", "lineSep": "\n", "compression": codec}
    else:
        using, opts = "PARQUET", {"compression": _SPARK_PARQUET[options.parquet_compression]}
        # One Parquet file: Spark writes one file per partition of the result.
        select = select.copy()
        select.set(
            "hint",
            exp.Hint(expressions=[exp.Anonymous(this="REPARTITION", expressions=[exp.Literal.number(1)])]),
        )

    def q(text: str) -> str:
        return _lit(text).sql(dialect="databricks")

    options_sql = ", ".join(f"{q(k)} = {q(v)}" for k, v in opts.items())
    return (
        f"INSERT OVERWRITE DIRECTORY {q(f'gs://{bucket}/{prefix}')} USING {using} OPTIONS ({options_sql}) "
        f"{select.sql(dialect='databricks')}"
    )


# ---------------------------------------------------------------------------------------------------------
# Running an unload: temporary prefix, final names, journal
# ---------------------------------------------------------------------------------------------------------


def _natural(name: str) -> list[Any]:
    """Sort key reading digit runs as numbers: ``data_0_2_0`` before ``data_0_10_0``."""
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


def data_objects(names: Sequence[str]) -> list[str]:
    """The objects holding rows, in shard order: not the markers Spark writes (``_SUCCESS``,
    ``_committed_…``, ``_started_…``) nor hidden files, nor our own (``_header``, ``_compose-…``)."""
    rows = [n for n in names if not n.rsplit("/", 1)[-1].startswith(("_", "."))]
    return sorted(rows, key=_natural)


def expand_temporary(destination: Any, paths: Sequence[str]) -> list[str]:
    """``paths`` (a journal entry's files) with each temporary prefix (``….dinmo-unload/…/*``) replaced by
    the objects under it now: what a clean-up must delete."""
    out: list[str] = []
    for path in paths:
        if path.startswith(f"{TEMP_ROOT}/") and path.endswith(f"/{_MARK}"):
            out += destination.list(path[: -len(_MARK)])
        else:
            out.append(path)
    return out


def file_rows(t: SyncTarget, p: Any, stem: str) -> int:
    """How many rows the file ``stem`` of plan ``p`` holds, from the change counts the plan took (the
    warehouses' unload statements do not all report a row count)."""
    c, a, full = p.counts, t.activation, p.sync_type == "full"
    everything = c.added + c.updated + c.unchanged
    if a.sync_mode == "difference":
        kind = stem.rsplit("_", 1)[-1]
        if full:
            if kind == "added":
                return everything
            return c.removed if kind == "removed" and p.changes_table is not None and t.keeps_values() else 0
        return {"added": c.added, "updated": c.updated, "removed": c.removed}.get(kind, 0)
    if full or a.sync_mode == "snapshot":
        return everything
    return c.added + c.updated if a.sync_mode == "upsert" else c.added


def export_file(
    t: SyncTarget,
    choice: Choice,
    partition_key: str,
    index: int,
    stem: str,
    sql: str,
    names: list[str],
    options: writers.FormatOptions,
    rows: int,
    uploaded: list[str],
    journal: Callable[[], None],
    result: SyncResult,
    on_log: Callable[[str], None],
) -> bool:
    """Have the warehouse write file ``stem`` (the rows of ``sql``) under its final name: True when done;
    False when the streaming path must write it (``auto``; ``always`` raises instead). Either way the
    outcome joins ``result.export_path``.

    ``uploaded`` is the sync's journalled list of objects; ``journal()`` records it. The temporary prefix
    goes in first (``<prefix>*``), then the final name before it is composed; the prefix leaves the list
    once its objects are deleted, so a finished sync's journal lists only final objects.
    """
    why = _export_file(
        t, choice, partition_key, index, stem, sql, names, options, rows, uploaded, journal, result, on_log
    )
    outcome = choice.describe() if why is None else f"streaming ({why})"
    if why is not None:
        on_log(f"{stem}: {outcome}")
    if outcome not in result.export_path.split("; "):
        result.export_path = "; ".join(x for x in (result.export_path, outcome) if x)
    return why is None


def _export_file(
    t: SyncTarget,
    choice: Choice,
    partition_key: str,
    index: int,
    stem: str,
    sql: str,
    names: list[str],
    options: writers.FormatOptions,
    rows: int,
    uploaded: list[str],
    journal: Callable[[], None],
    result: SyncResult,
    on_log: Callable[[str], None],
) -> str | None:
    wh, dest = t.warehouse, t.destination
    always = getattr(t.activation, "unload", "auto") == "always"
    limit0 = (
        exp.select(exp.Star())
        .from_(exp.maybe_parse(sql, dialect=wh.dialect).subquery("_dinmo_probe"))
        .limit(0)
    )
    with wh.stream(limit0.sql(dialect=wh.dialect)) as reader:
        schema = pa.schema([f.with_name(n) for f, n in zip(reader.schema, names)])
    reason = column_reason(choice.kind, schema, options)
    if reason is not None:
        if always:
            raise _refuse(t, reason)
        return reason
    token = naming.warehouse_name("", partition_key.lower())
    prefix = f"{TEMP_ROOT}/{t.name}/{re.sub(r'[^a-z0-9_]', '_', token)}/{index}-{uuid.uuid4().hex[:8]}/"
    mark = prefix + _MARK
    uploaded.append(mark)
    journal()  # before the warehouse writes anything: a killed sync's objects are found and removed
    gcs: GCSDestination = dest  # type: ignore[assignment]

    def clean() -> None:
        dest.delete(expand_temporary(dest, [mark]))
        uploaded.remove(mark)
        journal()

    try:
        wh.execute(unload_sql(choice.kind, sql, wh.dialect, schema, options, gcs.bucket, prefix, wh.config))
    except Exception as exc:  # auto streams instead; always fails with the warehouse's message
        clean()
        if always:
            raise
        return f"{choice.label} failed: {exc}"
    shards = data_objects(dest.list(prefix))
    final = naming.join_object_name(t.activation.folder, f"{stem}.{options.extension}")
    if options.format == "parquet" and len(shards) != 1:
        clean()
        if not shards:  # (Snowflake writes no file for no row): the shared writer writes the empty file
            return f"{choice.label} wrote no file (no row to write)"
        reason = f"{choice.label} wrote {len(shards)} Parquet files where one was asked for"
        if always:
            raise _refuse(t, reason)
        return reason
    uploaded.append(final)
    journal()
    if options.format == "parquet":
        size = gcs.copy(shards[0], final)
    else:
        components = shards
        if options.csv_header and options.format == "csv" or not shards:
            components = [_write_lead(gcs, schema, options, prefix), *shards]
        size = gcs.compose(components, final, prefix)
    clean()
    result.bytes += size
    result.rows_written += rows
    result.files.append(dest.uri(final))
    on_log(f"wrote {dest.uri(final)} ({rows} rows, {size} bytes) with {choice.label}")
    return None


def _write_lead(gcs: GCSDestination, schema: pa.Schema, options: writers.FormatOptions, prefix: str) -> str:
    """Upload what the shared writer writes for no row (the header line, or an empty file or gzip member)
    as ``<prefix>_header``: the first object of the composed file."""
    text_schema = pa.schema([pa.field(f.name, pa.string()) for f in schema])
    path = f"{prefix}_header"
    with tempfile.TemporaryDirectory(prefix="dinmo-unload-") as tmp:
        [part] = writers.write_parts([], text_schema, options, "header", None, Path(tmp), lambda _: None)
        gcs.upload(part.path, path)
    return path

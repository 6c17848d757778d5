"""Warehouse-native unload to GCS (``unload: auto | never | always``).

- The decision table: every warehouse, format and option -> unload or streaming, with the reason.
- The statement each warehouse runs, as exact text (compiled only: no BigQuery, Snowflake or Databricks here).
- ``always`` refused at validation and at sync time.
- End to end against the real GCS emulator: a BigQuery stand-in (DuckDB underneath) runs the ``EXPORT DATA``
  statement the product generates, transpiled to DuckDB by sqlglot, and writes headerless shards named as
  BigQuery names them (``data-000000000000.csv``...); the product composes them into its final names, journals
  the temporary prefix, and the file is compared byte for byte with the streaming path's.
"""

from __future__ import annotations

import gzip
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import dagster as dg
import duckdb
import pyarrow as pa
import pytest
import sqlglot
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage
from sqlglot import exp

from dinmo_dagster import sync, unload, writers
from dinmo_dagster.assets.activations import sync_target
from dinmo_dagster.assets.models import refresh_upstream
from dinmo_dagster.config import ProjectError, load_project
from dinmo_dagster.resources import build_resources
from dinmo_dagster.state import JournalState
from dinmo_dagster.warehouses.base import WarehouseError
from dinmo_dagster.warehouses.duckdb import DuckDBWarehouse

try:  # pytest puts either the repository root or tests/ on sys.path, depending on the import mode
    from tests.gcs_emulator import EmulatorHandle, start_gcs_emulator
except ImportError:  # pragma: no cover - depends on the pytest import mode
    from gcs_emulator import EmulatorHandle, start_gcs_emulator


class Sf:
    """Snowflake source settings as the unload reads them."""

    def __init__(self, integration: str | None = "gcs_int", stage: str | None = None) -> None:
        self.unload_storage_integration, self.unload_stage = integration, stage


def opts(fmt: str = "csv", **kw: Any) -> writers.FormatOptions:
    return writers.FormatOptions(format=fmt, **kw)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------------
# The decision table
# --------------------------------------------------------------------------------------------------

SIZE = "max_file_size_mb needs parts under a byte limit: "
DECISIONS = [
    # kind, source, destination, options, max_file_size_mb, reason (None: unload)
    (
        "bigquery",
        None,
        "local",
        opts(),
        None,
        "the destination is local, not gcs: warehouses unload to GCS only",
    ),
    ("duckdb", None, "gcs", opts(), None, "a duckdb source has no unload to Cloud Storage"),
    ("postgres", None, "gcs", opts(), None, "a postgres source has no unload to Cloud Storage"),
    (
        "redshift",
        None,
        "gcs",
        opts(),
        None,
        "Redshift UNLOAD writes only to Amazon S3, not to Google Cloud Storage",
    ),
    ("bigquery", None, "gcs", opts(), None, None),
    ("bigquery", None, "gcs", opts(csv_delimiter="\t", csv_header=False, compression="gzip"), None, None),
    ("bigquery", None, "gcs", opts("xml"), None, "bigquery EXPORT DATA cannot write XML"),
    (
        "bigquery",
        None,
        "gcs",
        opts("json", json_lines=True),
        None,
        "BigQuery EXPORT DATA writes INT64 values as JSON strings, and the product's JSON keeps numbers",
    ),
    (
        "bigquery",
        None,
        "gcs",
        opts("parquet"),
        None,
        "BigQuery EXPORT DATA decides the number of Parquet files itself, and Parquet files cannot be joined",
    ),
    (
        "bigquery",
        None,
        "gcs",
        opts(),
        10.0,
        SIZE + "BigQuery EXPORT DATA has no file size setting and does not guarantee the size of its files",
    ),
    ("snowflake", Sf(), "gcs", opts(), None, None),
    (
        "snowflake",
        Sf(None, "my_db.public.gcs_stage"),
        "gcs",
        opts(";" and "csv", csv_delimiter=";"),
        None,
        None,
    ),
    (
        "snowflake",
        Sf(None),
        "gcs",
        opts(),
        None,
        (
            "the source sets neither unload_storage_integration nor unload_stage: Snowflake writes to gcs:// only "
            "through one of them"
        ),
    ),
    ("snowflake", Sf(), "gcs", opts("json", json_lines=True, compression="gzip"), None, None),
    (
        "snowflake",
        Sf(),
        "gcs",
        opts("json"),
        None,
        "Snowflake COPY INTO writes only newline-delimited JSON (json: {lines: true}), not a JSON array",
    ),
    ("snowflake", Sf(), "gcs", opts("parquet"), None, None),
    ("snowflake", Sf(), "gcs", opts("parquet", parquet_compression="none"), None, None),
    (
        "snowflake",
        Sf(),
        "gcs",
        opts("parquet", parquet_compression="zstd"),
        None,
        "Snowflake writes Parquet with snappy or no compression, not zstd",
    ),
    ("snowflake", Sf(), "gcs", opts("xml"), None, "snowflake COPY INTO cannot write XML"),
    (
        "snowflake",
        Sf(),
        "gcs",
        opts(),
        100.0,
        SIZE + "Snowflake's MAX_FILE_SIZE is a target per parallel thread, not a bound on every file",
    ),
    ("databricks", None, "gcs", opts(csv_delimiter="|"), None, None),
    ("databricks", None, "gcs", opts("json", json_lines=True), None, None),
    (
        "databricks",
        None,
        "gcs",
        opts("json"),
        None,
        "Spark's JSON writer writes only newline-delimited JSON (json: {lines: true}), not a JSON array",
    ),
    ("databricks", None, "gcs", opts("parquet", parquet_compression="zstd"), None, None),
    (
        "databricks",
        None,
        "gcs",
        opts("xml", compression="gzip"),
        None,
        "databricks INSERT OVERWRITE DIRECTORY cannot write XML",
    ),
    (
        "databricks",
        None,
        "gcs",
        opts("parquet"),
        5.0,
        SIZE + "Spark splits files by row count (maxRecordsPerFile), never by bytes",
    ),
]


@pytest.mark.parametrize(("kind", "source", "dest", "options", "max_mb", "reason"), DECISIONS)
def test_the_decision_table(
    kind: str,
    source: Any,
    dest: str,
    options: writers.FormatOptions,
    max_mb: float | None,
    reason: str | None,
) -> None:
    assert unload.static_reason(kind, source, dest, options, max_mb) == reason


@pytest.mark.parametrize(
    ("kind", "fmt", "column", "reason"),
    [
        (
            "bigquery",
            "csv",
            pa.time64("us"),
            'column "c" has type time64[us], which bigquery EXPORT DATA writes differently in CSV',
        ),
        (
            "snowflake",
            "json",
            pa.list_(pa.int64()),
            'column "c" has type list<item: int64>, which snowflake COPY INTO writes differently in JSON',
        ),
        (
            "databricks",
            "csv",
            pa.binary(),
            (
                'column "c" has type binary, which databricks INSERT OVERWRITE DIRECTORY '
                "writes differently in CSV"
            ),
        ),
        (
            "snowflake",
            "parquet",
            pa.timestamp("us", tz="Europe/Paris"),
            'column "c" has type timestamp[us, tz=Europe/Paris], which snowflake COPY INTO writes differently in Parquet',
        ),
        ("databricks", "parquet", pa.binary(), None),
        ("bigquery", "csv", pa.timestamp("us", tz="UTC"), None),
        ("snowflake", "json", pa.decimal128(12, 2), None),
    ],
)
def test_column_types_a_warehouse_writes_as_the_shared_writer(
    kind: str, fmt: str, column: pa.DataType, reason: str | None
) -> None:
    schema = pa.schema([("id", pa.int64()), ("c", column)])
    assert unload.column_reason(kind, schema, opts(fmt, json_lines=True)) == reason


# --------------------------------------------------------------------------------------------------
# The statements (compiled, exact text)
# --------------------------------------------------------------------------------------------------

SCHEMA = pa.schema(
    [
        ("id", pa.int64()),
        ("it's", pa.string()),
        ("d", pa.date32()),
        ("ts", pa.timestamp("us", tz="UTC")),
        ("f", pa.float64()),
    ]
)


def query(dialect: str) -> str:
    q = exp.select(
        exp.column("customer_id").as_("id", quoted=True),
        exp.column("email").as_("it's", quoted=True),
        exp.column("d").as_("d", quoted=True),
        exp.column("ts").as_("ts", quoted=True),
        exp.column("f").as_("f", quoted=True),
    ).from_("s.t")
    return q.sql(dialect=dialect)


def test_bigquery_export_data_statement() -> None:
    [sql] = unload.unload_sql(
        "bigquery",
        query("bigquery"),
        "bigquery",
        SCHEMA,
        opts(csv_delimiter="\t", compression="gzip"),
        "my-bucket",
        ".dinmo-unload/a/k/0-x/",
    )
    assert sql == (
        "EXPORT DATA OPTIONS (uri='gs://my-bucket/.dinmo-unload/a/k/0-x/data-*.csv.gz', FORMAT='CSV', "
        "overwrite=TRUE, header=FALSE, field_delimiter='\\t', compression='GZIP') AS SELECT _dinmo_export.`id` AS "
        "`id`, _dinmo_export.`it's` AS `it's`, FORMAT_DATE('%F', _dinmo_export.`d`) AS `d`, "
        "FORMAT_TIMESTAMP('%FT%H:%M:%E6S+00:00', _dinmo_export.`ts`, 'UTC') AS `ts`, _dinmo_export.`f` AS `f` "
        "FROM (SELECT customer_id AS `id`, email AS `it's`, d AS `d`, ts AS `ts`, f AS `f` FROM s.t) AS "
        "_dinmo_export"
    )


def test_snowflake_copy_into_statements() -> None:
    [csv_sql] = unload.unload_sql(
        "snowflake",
        query("snowflake"),
        "snowflake",
        SCHEMA,
        opts(csv_delimiter=";"),
        "my-bucket",
        ".dinmo-unload/a/k/0-x/",
        Sf(),
    )
    select = (
        'SELECT _dinmo_export."id" AS "id", _dinmo_export."it\'s" AS "it\'s", '
        "TO_VARCHAR(_dinmo_export.\"d\", 'YYYY-MM-DD') AS \"d\", TO_VARCHAR(CONVERT_TIMEZONE('UTC', "
        '_dinmo_export."ts"), \'YYYY-MM-DD"T"HH24:MI:SS.FF6"+00:00"\') AS "ts", _dinmo_export."f" AS '
        '"f" FROM (SELECT customer_id AS "id", email AS "it\'s", d AS "d", ts AS "ts", f AS "f" FROM s.t) '
        "AS _dinmo_export"
    )
    assert csv_sql == (
        f"COPY INTO 'gcs://my-bucket/.dinmo-unload/a/k/0-x/' FROM ({select}) STORAGE_INTEGRATION = gcs_int "
        "FILE_FORMAT = (TYPE=CSV FIELD_DELIMITER=';' RECORD_DELIMITER='\\n' FIELD_OPTIONALLY_ENCLOSED_BY='\"' "
        "ESCAPE_UNENCLOSED_FIELD=NONE NULL_IF=('') EMPTY_FIELD_AS_NULL=FALSE COMPRESSION=NONE) HEADER = FALSE "
        "OVERWRITE = TRUE"
    )
    [parquet_sql] = unload.unload_sql(
        "snowflake",
        query("snowflake"),
        "snowflake",
        SCHEMA,
        opts("parquet"),
        "my-bucket",
        ".dinmo-unload/a/k/0-x/",
        Sf(None, "db.sch.gcs_stage"),
    )
    assert parquet_sql == (
        'COPY INTO \'@db.sch.gcs_stage/.dinmo-unload/a/k/0-x/\' FROM (SELECT _dinmo_export."id" AS "id", '
        '_dinmo_export."it\'s" AS "it\'s", _dinmo_export."d" AS "d", _dinmo_export."ts" AS "ts", '
        '_dinmo_export."f" AS "f" FROM (SELECT customer_id AS "id", email AS "it\'s", d AS "d", ts AS '
        '"ts", f AS "f" FROM s.t) AS _dinmo_export) FILE_FORMAT = (TYPE=PARQUET COMPRESSION=SNAPPY) '
        "HEADER = TRUE OVERWRITE = TRUE SINGLE = TRUE MAX_FILE_SIZE = 5368709120"
    )
    [json_sql] = unload.unload_sql(
        "snowflake",
        query("snowflake"),
        "snowflake",
        SCHEMA,
        opts("json", json_lines=True, compression="gzip"),
        "my-bucket",
        "p/",
        Sf(),
    )
    assert json_sql == (
        "COPY INTO 'gcs://my-bucket/p/' FROM (SELECT OBJECT_CONSTRUCT_KEEP_NULL('id', _dinmo_export.\"id\", "
        "'it\\'s', _dinmo_export.\"it's\", 'd', TO_VARCHAR(_dinmo_export.\"d\", 'YYYY-MM-DD'), 'ts', "
        'TO_VARCHAR(CONVERT_TIMEZONE(\'UTC\', _dinmo_export."ts"), \'YYYY-MM-DD"T"HH24:MI:SS.FF6"+00:00"\'), '
        "'f', IFF(_dinmo_export.\"f\" IN (CAST('NaN' AS DOUBLE), CAST('inf' AS DOUBLE), CAST('-inf' AS DOUBLE)), "
        'NULL, _dinmo_export."f")) FROM (SELECT customer_id AS "id", email AS "it\'s", d AS "d", ts AS '
        '"ts", f AS "f" FROM s.t) AS _dinmo_export) STORAGE_INTEGRATION = gcs_int FILE_FORMAT = (TYPE=JSON '
        "COMPRESSION=GZIP) HEADER = FALSE OVERWRITE = TRUE"
    )


def test_snowflake_names_are_checked_not_pasted() -> None:
    with pytest.raises(
        ValueError, match=r"unload_stage: \"st'; drop table x; --\" is not a Snowflake object name"
    ):
        unload.unload_sql(
            "snowflake",
            'SELECT 1 AS "id"',
            "snowflake",
            pa.schema([("id", pa.int64())]),
            opts(),
            "b-1",
            "p/",
            Sf(None, "st'; drop table x; --"),
        )


def test_databricks_insert_overwrite_directory_statements() -> None:
    [csv_sql] = unload.unload_sql(
        "databricks", query("databricks"), "databricks", SCHEMA, opts(compression="gzip"), "my-bucket", "p/"
    )
    inner = (
        "FROM (SELECT customer_id AS `id`, email AS `it's`, d AS `d`, ts AS `ts`, f AS `f` FROM s.t) AS "
        "_dinmo_export"
    )
    assert csv_sql == (
        "INSERT OVERWRITE DIRECTORY 'gs://my-bucket/p/' USING CSV OPTIONS ('sep' = ',', 'header' = 'false', "
        "'quote' = '\"', 'escape' = '\"', 'nullValue' = '', 'emptyValue' = '\"\"', 'ignoreLeadingWhiteSpace' = "
        "'false', 'ignoreTrailingWhiteSpace' = 'false', 'lineSep' = '\\n', 'compression' = 'gzip') SELECT "
        "_dinmo_export.`id` AS `id`, _dinmo_export.`it's` AS `it's`, DATE_FORMAT(_dinmo_export.`d`, 'yyyy-MM-dd') "
        "AS `d`, DATE_FORMAT(TO_UTC_TIMESTAMP(_dinmo_export.`ts`, CURRENT_TIMEZONE()), "
        "'yyyy-MM-dd\\'T\\'HH:mm:ss.SSSSSS\\'+00:00\\'') AS `ts`, _dinmo_export.`f` AS `f` " + inner
    )
    [parquet_sql] = unload.unload_sql(
        "databricks",
        query("databricks"),
        "databricks",
        SCHEMA,
        opts("parquet", parquet_compression="zstd"),
        "my-bucket",
        "p/",
    )
    assert parquet_sql == (
        "INSERT OVERWRITE DIRECTORY 'gs://my-bucket/p/' USING PARQUET OPTIONS ('compression' = 'zstd') SELECT "
        "/*+ REPARTITION(1) */ _dinmo_export.`id` AS `id`, _dinmo_export.`it's` AS `it's`, _dinmo_export.`d` AS "
        "`d`, _dinmo_export.`ts` AS `ts`, _dinmo_export.`f` AS `f` " + inner
    )


# --------------------------------------------------------------------------------------------------
# ``always`` at validation
# --------------------------------------------------------------------------------------------------


def _project(root: Path, source: str, activation: str) -> None:
    (root / "dinmo.yaml").write_text(
        textwrap.dedent(f"""\
        sources:
          wh: {source}
        models:
          m: {{source: wh, table: t, primary_key: id}}
        segments:
          s: {{model: m, sql: "select * from {{{{ model }}}}"}}
        destinations:
          g: {{type: gcs, bucket: my-bucket}}
        activations:
          a: {{segment: s, destination: g, file_name: "x_{{X}}", {activation}}}
        """),
        encoding="utf-8",
    )


@pytest.mark.parametrize(
    ("source", "activation", "problem"),
    [
        (
            "{type: redshift, host: h, database: d, user: u, password: {env: PW}}",
            "unload: always",
            (
                "activations.a.unload: 'always' cannot unload: Redshift UNLOAD writes only to Amazon S3, not to Google Cloud "
                "Storage; allowed here: auto, never"
            ),
        ),
        (
            "{type: bigquery, project: p}",
            "unload: always, format: json, json: {lines: true}",
            (
                "activations.a.unload: 'always' cannot unload: BigQuery EXPORT DATA writes INT64 values as JSON strings, and "
                "the product's JSON keeps numbers; allowed here: auto, never"
            ),
        ),
        (
            "{type: snowflake, account: a, user: u, password: {env: PW}, database: d}",
            "unload: always",
            (
                "activations.a.unload: 'always' cannot unload: the source sets neither unload_storage_integration nor "
                "unload_stage: Snowflake writes to gcs:// only through one of them; allowed here: auto, never"
            ),
        ),
        (
            "{type: bigquery, project: p}",
            "unload: sometimes",
            "activations.a.unload: found 'sometimes'; allowed: 'auto', 'never' or 'always'",
        ),
    ],
)
def test_always_is_a_validation_error_naming_the_reason(
    tmp_path: Path, source: str, activation: str, problem: str
) -> None:
    _project(tmp_path, source, activation)
    with pytest.raises(ProjectError) as err:
        load_project(tmp_path)
    assert err.value.problems == [f"dinmo.yaml: {problem}"]


def test_always_validates_where_the_warehouse_can_write_the_files(tmp_path: Path) -> None:
    _project(
        tmp_path,
        "{type: snowflake, account: a, user: u, password: {env: PW}, database: d, "
        "unload_storage_integration: gcs_int}",
        "unload: always, format: parquet",
    )
    assert load_project(tmp_path).activations["a"].unload == "always"


# --------------------------------------------------------------------------------------------------
# End to end: the GCS emulator and a BigQuery stand-in
# --------------------------------------------------------------------------------------------------


class BigQueryStandIn(DuckDBWarehouse):
    """DuckDB underneath, BigQuery's ``EXPORT DATA`` on top: the statement is parsed as GoogleSQL, its query
    transpiled to DuckDB by sqlglot, and its rows written as headerless CSV shards (DuckDB's COPY with the
    statement's delimiter and compression) named ``<uri with * as 000000000000, 000000000001, ...>``, the
    last one empty, as BigQuery may leave one. ``fail_after_writing`` makes the export fail once its shards
    are in the bucket (a job that dies half-way)."""

    source_type: ClassVar[str] = "bigquery"
    shards = 3
    fail_after_writing = False
    statements: ClassVar[list[str]] = []

    def execute(self, statements: Any) -> None:
        stmts = [statements] if isinstance(statements, str) else list(statements)
        exports = [s for s in stmts if s.startswith("EXPORT DATA")]
        for s in exports:
            BigQueryStandIn.statements.append(s)
            self._export(s)
        super().execute([s for s in stmts if s not in exports])

    def _export(self, statement: str) -> None:
        tree = sqlglot.parse_one(statement, read="bigquery")
        options = {
            p.this.name.lower(): p.args["value"]
            for p in tree.args["options"].expressions
            if type(p) is exp.Property
        }
        uri, header = options["uri"].name, options["header"].this
        assert header is False and "*" in uri
        gz = options.get("compression") is not None
        bucket, _, pattern = uri.removeprefix("gs://").partition("/")
        client = storage.Client(project="test", credentials=AnonymousCredentials())
        with self._connection() as con:
            rows = con.sql(tree.this.sql(dialect="duckdb")).arrow()
            rows = rows.read_all() if isinstance(rows, pa.RecordBatchReader) else rows
            step = -(-rows.num_rows // (self.shards - 1)) if rows.num_rows else 1
            for i in range(self.shards):
                shard = rows.slice(i * step, step) if i < self.shards - 1 else rows.slice(0, 0)
                path = Path(self.tmp) / f"shard{i}"
                con.register("shard", shard)
                delimiter = options["field_delimiter"].name.replace("'", "''")
                con.execute(
                    f"COPY shard TO '{path}' (FORMAT csv, HEADER false, DELIMITER '{delimiter}', "
                    f"QUOTE '\"', ESCAPE '\"', NULLSTR '', COMPRESSION {'gzip' if gz else 'none'})"
                )
                con.unregister("shard")
                client.bucket(bucket).blob(pattern.replace("*", f"{i:012d}")).upload_from_filename(str(path))
                path.unlink()
        if self.fail_after_writing:
            raise WarehouseError("source 'wh' (bigquery): statement failed: 400 the job died")


PROJECT = """\
sources:
  wh: {{type: duckdb, path: "{db}"}}
models:
  customers: {{source: wh, table: raw.customers, primary_key: customer_id}}
segments:
  everyone: {{model: customers, sql: "select * from {{{{ model }}}}"}}
destinations:
  out: {{type: gcs, bucket: {bucket}, project: test}}
activations:
  snap: {{segment: everyone, destination: out, folder: exports, file_name: "snap_{{YYYY}}{{MM}}{{DD}}_{{HH}}{{mm}}{{ss}}",
          mapping: {{customer_id: id, email: "e-mail, quoted", note: note, ltv: ltv, seen: seen_at}}}}
  snap_gz: {{segment: everyone, destination: out, folder: gz, file_name: "snap_{{X}}", compression: gzip,
             csv: {{delimiter: ";"}}}}
  diff: {{segment: everyone, destination: out, folder: diff, file_name: "diff_{{X}}", sync_mode: difference,
          mapping: {{customer_id: id, email: email}}}}
"""

ROWS = [
    (1, "a@x.org", "plain", 12.5, "2025-04-14 09:05:07.042"),
    (2, 'say "hi", then', None, 0, "2025-04-14 00:00:00"),
    (3, "", "", None, None),
    (4, "line\nbreak", " spaced ", 7.25, "1999-12-31 23:59:59.999999"),
    (5, "ünïcode", "n5", 1, "2025-01-01 00:00:00"),
]


@pytest.fixture(scope="module")
def emulator() -> Iterator[EmulatorHandle]:
    handle = start_gcs_emulator("dinmo-unload-default")
    try:
        yield handle
    finally:
        handle.stop()


_buckets = iter(range(1, 10_000))


@pytest.fixture
def env(emulator: EmulatorHandle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", emulator.url)
    monkeypatch.setenv(sync.WRITER_ENV, "arrow")  # the streaming reference: the shared writer's bytes
    client = storage.Client(project="test", credentials=AnonymousCredentials())
    bucket = f"unload-{next(_buckets)}"
    client.create_bucket(bucket)
    db = tmp_path / "wh.duckdb"
    con = duckdb.connect(str(db))
    con.execute("create schema raw")
    con.execute(
        "create table raw.customers (customer_id integer, email varchar, note varchar, "
        "ltv decimal(12, 2), seen timestamp)"
    )
    con.executemany("insert into raw.customers values (?, ?, ?, ?, ?)", ROWS)
    con.close()
    (tmp_path / "dinmo.yaml").write_text(PROJECT.format(db=db, bucket=bucket), encoding="utf-8")
    project = load_project(tmp_path)
    BigQueryStandIn.tmp, BigQueryStandIn.fail_after_writing = str(tmp_path), False
    BigQueryStandIn.statements.clear()
    with dg.build_resources(build_resources(project)) as resources:
        yield project, resources, client.bucket(bucket)


def target(env: Any, name: str, stand_in: bool = True, **activation: Any) -> sync.SyncTarget:
    project, resources, _ = env
    t = sync_target(project, name, resources)
    refresh_upstream(project, name, resources)
    if activation:
        t.activation = t.activation.model_copy(update=activation)
    if stand_in:
        t.warehouse = BigQueryStandIn(t.warehouse.config, name="wh")
    return t


def run(t: sync.SyncTarget, key: str) -> sync.SyncResult:
    sync.take_snapshot(t, key)
    return sync.deliver(t, key)


def objects(bucket: Any) -> dict[str, bytes]:
    return {b.name: b.download_as_bytes() for b in bucket.client.list_blobs(bucket.name)}


K1, K2, K3 = "20250414T090507.042000Z", "20250414T091507.042000Z", "20250414T092507.042000Z"


def test_a_bigquery_unload_gives_the_streaming_path_s_file_byte_for_byte(env: Any) -> None:
    bucket = env[2]
    streamed = run(target(env, "snap", stand_in=False, unload="never", folder="streamed"), K1)
    unloaded = run(target(env, "snap"), K2)
    files = objects(bucket)
    assert sorted(files) == ["exports/snap_20250414_091507.csv", "streamed/snap_20250414_090507.csv"]
    assert files["exports/snap_20250414_091507.csv"] == files["streamed/snap_20250414_090507.csv"]
    assert files["exports/snap_20250414_091507.csv"].decode().splitlines()[:2] == [
        'id,"e-mail, quoted",note,ltv,seen_at',
        "1,a@x.org,plain,12.50,2025-04-14T09:05:07.042000",
    ]
    assert (streamed.export_path, streamed.writer) == (
        "streaming (activations.snap.unload is 'never')",
        "arrow",
    )
    assert (unloaded.export_path, unloaded.writer) == ("unload (bigquery EXPORT DATA)", "warehouse_unload")
    assert (unloaded.rows_written, unloaded.bytes) == (5, len(files["exports/snap_20250414_091507.csv"]))
    assert unloaded.files == [f"gs://{bucket.name}/exports/snap_20250414_091507.csv"]
    [statement] = BigQueryStandIn.statements
    assert statement.startswith(
        f"EXPORT DATA OPTIONS (uri='gs://{bucket.name}/.dinmo-unload/snap/20250414t091507_042000z/0-"
    )
    # The journal lists the final object only; the temporary prefix is gone.
    [entry] = [e for e in target(env, "snap").store.journal_entries() if e.partition_key == K2]
    assert (entry.state, entry.files) == (JournalState.DONE, ["exports/snap_20250414_091507.csv"])


def test_a_gzip_unload_is_one_multi_member_gzip_file_with_the_streaming_content(env: Any) -> None:
    bucket = env[2]
    run(target(env, "snap_gz", stand_in=False, unload="never", folder="streamed"), K1)
    result = run(target(env, "snap_gz"), K2)
    files = objects(bucket)
    [mine] = [n for n in files if n.startswith("gz/")]
    [reference] = [n for n in files if n.startswith("streamed/")]
    assert mine.endswith(".csv.gz") and result.export_path == "unload (bigquery EXPORT DATA)"
    assert gzip.decompress(files[mine]) == gzip.decompress(files[reference])
    assert gzip.decompress(files[mine]).decode().splitlines()[0] == "customer_id;email;note;ltv;seen"


def test_a_difference_unload_writes_its_three_files_and_a_delta_only_the_changes(env: Any) -> None:
    bucket = env[2]
    run(target(env, "diff"), K1)
    t = target(env, "diff")
    t.warehouse.execute(
        [
            "update raw.customers set email = 'new@x.org' where customer_id = 2",
            "delete from raw.customers where customer_id = 5",
            "insert into raw.customers values (6, 'f@x.org', NULL, NULL, NULL)",
        ]
    )
    result = run(target(env, "diff"), K2)
    files = objects(bucket)
    x2 = "1744622107"  # {X} of K2
    assert {n: files[n].decode() for n in files if x2 in n} == {
        f"diff/diff_{x2}_added.csv": "id,email\n6,f@x.org\n",
        f"diff/diff_{x2}_updated.csv": "id,email\n2,new@x.org\n",
        f"diff/diff_{x2}_removed.csv": "id,email\n5,ünïcode\n",
    }
    assert (result.rows_written, result.export_path) == (3, "unload (bigquery EXPORT DATA)")
    assert not [n for n in files if n.startswith(".dinmo-unload/")]


def test_auto_streams_when_the_export_fails_and_leaves_no_temporary_object(env: Any) -> None:
    bucket = env[2]
    BigQueryStandIn.fail_after_writing = True
    result = run(target(env, "snap"), K1)
    files = objects(bucket)
    assert sorted(files) == ["exports/snap_20250414_090507.csv"]
    assert result.writer == "arrow"
    assert result.export_path == (
        "streaming (bigquery EXPORT DATA failed: source 'wh' (bigquery): statement failed: 400 the job died)"
    )


def test_always_fails_the_sync_when_the_export_fails_and_removes_what_it_wrote(env: Any) -> None:
    bucket = env[2]
    BigQueryStandIn.fail_after_writing = True
    with pytest.raises(WarehouseError, match="400 the job died"):
        run(target(env, "snap", unload="always"), K1)
    assert objects(bucket) == {}


def test_always_refuses_before_writing_what_the_warehouse_cannot_write(env: Any) -> None:
    t = target(env, "snap", unload="always", max_file_size_mb=1.0)
    with pytest.raises(sync.SyncError) as err:
        run(t, K1)
    assert str(err.value) == (
        "activations.snap.unload: 'always' cannot unload: max_file_size_mb needs parts under a byte limit: BigQuery "
        "EXPORT DATA has no file size setting and does not guarantee the size of its files; nothing was written. "
        "Set activations.snap.unload to 'auto' or 'never'"
    )
    assert objects(env[2]) == {} and BigQueryStandIn.statements == []
    # auto streams it instead, and says why
    assert run(target(env, "snap", max_file_size_mb=1.0), K2).export_path == (
        "streaming (max_file_size_mb needs parts under a byte limit: BigQuery EXPORT DATA has no file size setting "
        "and does not guarantee the size of its files)"
    )


def test_a_column_the_warehouse_writes_differently_streams_that_file(env: Any) -> None:
    t = target(env, "snap")
    t.warehouse.execute(
        [
            "alter table raw.customers add column at_time time",
            "update raw.customers set at_time = TIME '10:11:12'",
        ]
    )
    result = run(target(env, "snap", mapping={"customer_id": "id", "at_time": "at"}), K1)
    assert result.export_path == (
        'streaming (column "at" has type time64[us], which bigquery EXPORT DATA writes differently in CSV)'
    )
    assert objects(env[2])["exports/snap_20250414_090507.csv"].decode().splitlines()[:2] == [
        "id,at",
        "1,10:11:12.000000",
    ]


def test_the_next_sync_removes_what_a_killed_unload_left_in_its_temporary_prefix(env: Any) -> None:
    bucket = env[2]
    t = target(env, "snap")
    t.store.ensure()
    prefix = ".dinmo-unload/snap/20250414t090507_042000z/0-deadbeef/"
    for name in ("data-000000000000.csv", "data-000000000001.csv"):
        bucket.blob(prefix + name).upload_from_string(b"1,a@x.org\n")
    # What a sync killed during its EXPORT DATA left: the journal names the prefix, the objects are there.
    t.store.journal(K1, "dead-run", JournalState.WRITING, [prefix + "*"], sync_mode="snapshot")
    result = run(target(env, "snap"), K2)
    assert result.recovered == [
        "removed 1 file(s) left by the dead sync 20250414T090507.042000Z (run dead-run, marked failed)"
    ]
    assert sorted(objects(bucket)) == ["exports/snap_20250414_091507.csv"]

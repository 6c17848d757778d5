"""Warehouse values that have no plain text form: each lands in a valid file, or the export fails first.

The values come from a real DuckDB query through its Arrow reader (the product's own source path):
intervals, +/-infinity timestamps and dates, dates past year 9999 and before year 1, U+FFFF/U+FFFE in
text, NaN and infinities inside a list, and the nested and binary types. Every file is read back with
an independent parser: ``csv``, strict ``json`` (``parse_constant`` refuses NaN/Infinity),
``xml.etree`` and ``pyarrow.parquet``. A format that cannot hold a value fails before any file exists,
with a message naming the column; the end-to-end tests show that message from a real sync.
"""

from __future__ import annotations

import csv
import io
import json
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import dagster as dg
import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from dinmo_dagster import sync
from dinmo_dagster.assets import activations as activation_assets
from dinmo_dagster.assets import models as model_assets
from dinmo_dagster.config import load_project
from dinmo_dagster.resources import build_resources
from dinmo_dagster.writers import ExportError, FormatOptions, check_exportable, write_parts

INT64_MAX = 2**63 - 1
INT32_MAX = 2**31 - 1

# One row per line; DuckDB gives these values to Arrow exactly as a segment's stream would.
VALUES_SQL = r"""
select * from (values
  (1, interval '1 year 2 months -3 days 04:05:06.789', 'infinity'::timestamp, 'infinity'::date,
   'infinity'::timestamptz, 'infinity'::timestamp_s, [1.5, 'nan'::double, 'inf'::double, '-inf'::double, null],
   {'dur': interval '1 day', 'at': 'infinity'::timestamp}, 'u' || chr(65535) || 'v', '\x00\xFF'::blob,
   map(['a', 'b,c'], [1, null]), ['x', 'y,"z"']),
  (2, interval '-01:02:03', '-infinity'::timestamp, '-infinity'::date,
   '-infinity'::timestamptz, '-infinity'::timestamp_s, []::double[],
   {'dur': interval '-1 month', 'at': '2025-04-14 09:05:07.042'::timestamp}, 'x' || chr(65534), ''::blob,
   map([]::varchar[], []::integer[]), []::varchar[]),
  (3, interval '0 seconds', '2025-04-14 09:05:07.042'::timestamp, '5881580-07-10'::date,
   '2025-04-14 09:05:07.042+00'::timestamptz, '2025-04-14 09:05:07'::timestamp_s, null,
   null, 'plain, "quoted"', null, null, null),
  (4, null, '294247-01-10 04:00:54.775806'::timestamp, '0044-03-15 (BC)'::date,
   '0044-03-15 (BC) 12:00:00+00'::timestamptz, null, [null::double],
   {'dur': null, 'at': null}, null, '\x41'::blob, map(['k'], [2]), [null])
) t(id, dur, ts, d, tstz, ts_s, scores, info, label, blob, m, tags)
"""

NAMES = ["id", "dur", "ts", "d", "tstz", "ts_s", "scores", "info", "label", "blob", "m", "tags"]

# What each value becomes as text (CSV fields; XML element text; JSON strings or raw JSON), written
# here by hand: ISO 8601 durations as PostgreSQL's iso_8601 IntervalStyle writes them, infinite
# timestamps and dates as 'infinity' / '-infinity' (PostgreSQL's and DuckDB's own text), years past
# 9999 in full and years before 1 in astronomical numbering (1 BC is 0000), as Arrow and ISO 8601 do.
EXPECTED_TEXT: list[dict[str, str | None]] = [
    {"id": "1", "dur": "P1Y2M-3DT4H5M6.789S", "ts": "infinity", "d": "infinity", "tstz": "infinity",
     "ts_s": "infinity", "scores": "[1.5,null,null,null,null]", "info": '{"dur":"P1D","at":"infinity"}',
     "label": "u\uffffv", "blob": "AP8=", "m": '[["a",1],["b,c",null]]', "tags": '["x","y,\\"z\\""]'},
    {"id": "2", "dur": "PT-1H-2M-3S", "ts": "-infinity", "d": "-infinity", "tstz": "-infinity",
     "ts_s": "-infinity", "scores": "[]", "info": '{"dur":"P-1M","at":"2025-04-14T09:05:07.042000"}',
     "label": "x\ufffe", "blob": "", "m": "[]", "tags": "[]"},
    {"id": "3", "dur": "PT0S", "ts": "2025-04-14T09:05:07.042000", "d": "5881580-07-10",
     "tstz": "2025-04-14T09:05:07.042000+00:00", "ts_s": "2025-04-14T09:05:07", "scores": None, "info": None,
     "label": 'plain, "quoted"', "blob": None, "m": None, "tags": None},
    {"id": "4", "dur": None, "ts": "294247-01-10T04:00:54.775806", "d": "-0043-03-15",
     "tstz": "-0043-03-15T12:00:00.000000+00:00", "ts_s": None, "scores": "[null]",
     "info": '{"dur":null,"at":null}', "label": None, "blob": "QQ==", "m": '[["k",2]]', "tags": "[null]"},
]  # fmt: skip

# Columns whose text is JSON (nested values) and so become JSON values, not strings, in JSON files.
NESTED = {"scores", "info", "m", "tags"}
NUMBERS = {"id"}


def duckdb_values(columns: list[str] | None = None) -> pa.Table:
    con = duckdb.connect()
    try:
        con.execute("SET TimeZone = 'UTC'")
        sql = VALUES_SQL if columns is None else f"select {', '.join(columns)} from ({VALUES_SQL})"
        with con.sql(sql).to_arrow_reader(2) as reader:  # batches of 2 rows: values cross batches
            batches = list(reader)
            schema = reader.schema
    finally:
        con.close()
    return pa.Table.from_batches(batches, schema)


def write(table: pa.Table, options: FormatOptions, workdir: Path, limit: int | None = None) -> list[Path]:
    parts = write_parts(table.to_batches(), table.schema, options, "values", limit, workdir, lambda p: None)
    return [p.path for p in parts]


def expected(columns: list[str]) -> list[dict[str, str | None]]:
    return [{c: row[c] for c in columns} for row in EXPECTED_TEXT]


def _no_constants(name: str) -> Any:
    raise ValueError(f"not strict JSON: {name}")


def strict_json(text: str) -> Any:
    return json.loads(text, parse_constant=_no_constants)


def as_json_value(column: str, text: str | None) -> Any:
    """What a strict JSON parser should give for a value whose text form is ``text``."""
    if text is None:
        return None
    if column in NESTED:
        return strict_json(text)
    if column in NUMBERS:
        return int(text)
    return text


ALL_BUT_LABEL = [n for n in NAMES if n != "label"]


def test_duckdb_gives_arrow_these_types() -> None:
    """What DuckDB's Arrow reader produces, so the tests below exercise what a sync sees."""
    table = duckdb_values()
    assert [str(t) for t in table.schema.types[:6]] == [
        "int32", "month_day_nano_interval", "timestamp[us]", "date32[day]", "timestamp[us, tz=UTC]",
        "timestamp[s]",
    ]  # fmt: skip
    ts = table.column("ts").combine_chunks()
    assert ts.view(pa.int64()).to_pylist()[:2] == [INT64_MAX, -INT64_MAX]  # infinity is the int64 limit
    days = table.column("d").combine_chunks().view(pa.int32()).to_pylist()
    assert days[:3] == [INT32_MAX, -INT32_MAX, INT32_MAX - 1]  # 5881580-07-10 is the last finite date


# ----------------------------------------------------------------------------------------------- CSV


@pytest.mark.parametrize("delimiter", [",", ";", "|", "\t"])
def test_csv_every_value_is_one_field(tmp_path: Path, delimiter: str) -> None:
    (path,) = write(duckdb_values(), FormatOptions("csv", csv_delimiter=delimiter), tmp_path)
    rows = list(csv.reader(io.StringIO(path.read_text(encoding="utf-8"), newline=""), delimiter=delimiter))
    assert rows[0] == NAMES
    assert all(len(r) == len(NAMES) for r in rows)
    assert [dict(zip(NAMES, r)) for r in rows[1:]] == [
        {k: "" if v is None else v for k, v in row.items()} for row in EXPECTED_TEXT
    ]


def test_csv_exact_lines(tmp_path: Path) -> None:
    table = duckdb_values(["id", "dur", "ts", "d", "scores", "m", "blob"])
    (path,) = write(table, FormatOptions("csv"), tmp_path)
    assert path.read_text().split("\n")[1:3] == [
        '1,P1Y2M-3DT4H5M6.789S,infinity,infinity,"[1.5,null,null,null,null]","[[""a"",1],[""b,c"",null]]",AP8=',
        '2,PT-1H-2M-3S,-infinity,-infinity,[],[],""',  # an empty binary is "" as an empty string is
    ]


# ---------------------------------------------------------------------------------------------- JSON


@pytest.mark.parametrize("lines", [False, True])
def test_json_is_strict_json(tmp_path: Path, lines: bool) -> None:
    (path,) = write(duckdb_values(), FormatOptions("json", json_lines=lines), tmp_path)
    text = path.read_text(encoding="utf-8")
    if lines:
        records = [strict_json(line) for line in text.split("\n")[:-1]]
    else:
        records = strict_json(text)
    assert records == [{c: as_json_value(c, v) for c, v in row.items()} for row in EXPECTED_TEXT]


def test_json_nested_nan_is_null(tmp_path: Path) -> None:
    table = pa.table(
        {
            "v": pa.array([[1.0, float("nan")], [float("inf"), -float("inf")]], pa.list_(pa.float32())),
            "s": pa.array([{"x": float("nan")}, {"x": 2.5}]),
        }
    )
    (path,) = write(table, FormatOptions("json", json_lines=True), tmp_path)
    assert path.read_text() == '{"v":[1.0,null],"s":{"x":null}}\n{"v":[null,null],"s":{"x":2.5}}\n'


# ----------------------------------------------------------------------------------------------- XML


def test_xml_is_well_formed(tmp_path: Path) -> None:
    (path,) = write(duckdb_values(ALL_BUT_LABEL), FormatOptions("xml"), tmp_path)
    records = list(ET.parse(path).getroot())
    got = [{c.tag: c.text or "" for c in record} for record in records]
    assert got == [{k: v for k, v in row.items() if v is not None} for row in expected(ALL_BUT_LABEL)]


@pytest.mark.parametrize(
    ("label", "char"), [("u\uffffv", "U+FFFF"), ("x\ufffe", "U+FFFE"), ("bell\x07", "U+0007")]
)
def test_xml_refuses_characters_it_cannot_carry_before_writing(tmp_path: Path, label: str, char: str) -> None:
    table = pa.table({"id": [1, 2], "label": ["fine", label]})
    with pytest.raises(ExportError) as info:
        write(table, FormatOptions("xml"), tmp_path)
    assert str(info.value) == (
        f'column "label" holds a character XML 1.0 cannot carry ({char}): remove it in the segment '
        "(for example with regexp_replace) or export another format"
    )
    assert list(tmp_path.iterdir()) == []


def test_xml_nonchar_from_duckdb_is_refused(tmp_path: Path) -> None:
    with pytest.raises(
        ExportError, match=r'^column "label" holds a character XML 1\.0 cannot carry \(U\+FFFF\)'
    ):
        write(duckdb_values(), FormatOptions("xml"), tmp_path)
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------- Parquet

PARQUET_OK = ["id", "ts", "d", "tstz", "ts_s", "scores", "label", "blob", "m", "tags"]
INTERVAL_PROBLEMS = [
    (
        'column "dur" has type INTERVAL, which Parquet cannot hold: cast it in the segment '
        "(for example to VARCHAR or to a number of seconds)"
    ),
    (
        'column "info" has type struct<dur: INTERVAL, at: timestamp[us]>, which Parquet cannot hold: cast it '
        "in the segment (for example to VARCHAR or to a number of seconds)"
    ),
]


def test_parquet_refuses_intervals_before_writing(tmp_path: Path) -> None:
    table = duckdb_values()
    assert check_exportable(table.schema, "parquet") == INTERVAL_PROBLEMS
    with pytest.raises(ExportError) as info:
        write(table, FormatOptions("parquet"), tmp_path)
    assert str(info.value) == "; ".join(INTERVAL_PROBLEMS)
    assert list(tmp_path.iterdir()) == []


def test_parquet_keeps_infinite_and_far_values(tmp_path: Path) -> None:
    table = duckdb_values(PARQUET_OK)
    (path,) = write(table, FormatOptions("parquet"), tmp_path)
    back = pq.read_table(path)
    assert back.column_names == PARQUET_OK
    for name in ("ts", "d", "tstz"):
        assert back.schema.field(name).type == table.schema.field(name).type
        width = pa.int32() if name == "d" else pa.int64()
        assert back.column(name).combine_chunks().view(width).to_pylist() == (
            table.column(name).combine_chunks().view(width).to_pylist()
        )
    # Parquet has no seconds unit: seconds become milliseconds, and infinity stays the int64 limit.
    assert back.schema.field("ts_s").type == pa.timestamp("ms")
    assert back.column("ts_s").combine_chunks().view(pa.int64()).to_pylist() == [
        INT64_MAX, -INT64_MAX, 1744621507000, None,
    ]  # fmt: skip
    assert back.column("scores").to_pylist()[1:] == [[], None, [None]]
    first = back.column("scores").to_pylist()[0]
    assert first[0] == 1.5 and first[1] != first[1] and first[2:4] == [float("inf"), -float("inf")]
    assert back.column("label").to_pylist() == ["u\uffffv", "x\ufffe", 'plain, "quoted"', None]
    assert back.column("blob").to_pylist() == [b"\x00\xff", b"", None, b"A"]
    assert back.column("m").to_pylist() == [[("a", 1), ("b,c", None)], [], None, [("k", 2)]]
    # DuckDB reads the same file back as infinity: nothing was lost.
    con = duckdb.connect()
    try:
        got = con.execute(
            f"select ts::varchar, d::varchar from read_parquet('{path}') order by id"
        ).fetchall()
    finally:
        con.close()
    assert got[:3] == [
        ("infinity", "infinity"),
        ("-infinity", "-infinity"),
        ("2025-04-14 09:05:07.042", "5881580-07-10"),
    ]


# --------------------------------------------------------------------------- text of rarer Arrow types


def test_durations_and_nanosecond_intervals(tmp_path: Path) -> None:
    mdn = pa.MonthDayNano
    table = pa.table({
        "iv": pa.array([mdn([25, 0, 1]), mdn([-1, -2, -1_500_000_000]), mdn([0, 0, 90_000 * 10**9]), None],
                       pa.month_day_nano_interval()),
        "secs": pa.array([90061, -1, 0, None], pa.duration("s")),
        "micros": pa.array([1_500_000, -250, 3_600_000_000, None], pa.duration("us")),
    })  # fmt: skip
    (path,) = write(table, FormatOptions("csv"), tmp_path)
    assert list(csv.reader(io.StringIO(path.read_text(), newline=""))) == [
        ["iv", "secs", "micros"],
        ["P2Y1MT0.000000001S", "PT25H1M1S", "PT1.5S"],
        ["P-1M-2DT-1.5S", "PT-1S", "PT-0.00025S"],
        ["PT25H", "PT0S", "PT1H"],
        ["", "", ""],
    ]
    (path,) = write(table, FormatOptions("json", json_lines=True), tmp_path)
    assert strict_json(path.read_text().split("\n")[0]) == {
        "iv": "P2Y1MT0.000000001S",
        "secs": "PT25H1M1S",
        "micros": "PT1.5S",
    }


def test_far_timestamps_in_every_unit_and_zone(tmp_path: Path) -> None:
    table = pa.table({
        "s": pa.array([INT64_MAX, -INT64_MAX, -(2**63), 253402300800, -62135596801], pa.timestamp("s")),
        "ms": pa.array([INT64_MAX, -INT64_MAX, 0, 253402300800_000, -62135596800_001], pa.timestamp("ms")),
        "ns": pa.array([INT64_MAX, -INT64_MAX, 0, 1, -1], pa.timestamp("ns")),
        "paris": pa.array([INT64_MAX, -INT64_MAX, 0, 253402300800_000_000, 1], pa.timestamp("us", "Europe/Paris")),
        "d64": pa.array([INT64_MAX, -INT64_MAX, 0, 253402300800_000, None], pa.date64()),
    })  # fmt: skip
    (path,) = write(table, FormatOptions("csv"), tmp_path)
    assert list(csv.reader(io.StringIO(path.read_text(), newline="")))[1:] == [
        ["infinity", "infinity", "infinity", "infinity", "infinity"],
        ["-infinity", "-infinity", "-infinity", "-infinity", "-infinity"],
        ["-infinity", "1970-01-01T00:00:00.000", "1970-01-01T00:00:00.000000000",
         "1970-01-01T01:00:00.000000+01:00", "1970-01-01"],
        ["10000-01-01T00:00:00", "10000-01-01T00:00:00.000", "1970-01-01T00:00:00.000000001",
         "10000-01-01T00:00:00.000000+00:00", "10000-01-01"],
        ["0000-12-31T23:59:59", "0000-12-31T23:59:59.999", "1969-12-31T23:59:59.999999999",
         "1970-01-01T01:00:00.000001+01:00", ""],
    ]  # fmt: skip


def test_far_dates_agree_with_arrow_where_arrow_has_a_text() -> None:
    """Outside years 1-9999 dates are formatted here, not by Arrow; where Arrow can, it agrees."""
    from dinmo_dagster.writers import _text

    days = [-4_000_000, -3_652_059, -719_163, -719_162, -1, 0, 2_932_896, 2_932_897, 4_000_000, 10_000_000]
    arrow = pa.array(days, pa.date32()).cast(pa.string()).to_pylist()
    assert _text(pa.array(days, pa.date32())).to_pylist() == arrow
    micros = [d * 86_400_000_000 + 3_723_000_004 for d in days]
    arrow_ts = pa.array(micros, pa.timestamp("us")).cast(pa.string()).to_pylist()
    assert _text(pa.array(micros, pa.timestamp("us"))).to_pylist() == [
        t.replace(" ", "T", 1) for t in arrow_ts
    ]


def test_intervals_match_postgresql_iso_8601(postgres_server: Any) -> None:
    """The ISO 8601 durations are the ones PostgreSQL writes with IntervalStyle iso_8601."""
    import psycopg

    literals = [
        "1 year 2 months -3 days 04:05:06.789",
        "-01:02:03",
        "0 seconds",
        "-14 months",
        "1 day -1 hour",
        "0.000001 seconds",
        "-1.5 seconds",
        "100 hours",
        "-1 year 3 days 00:00:00.5",
    ]
    with psycopg.connect(postgres_server.dsn) as conn:
        conn.execute("SET intervalstyle = iso_8601")
        pg = [conn.execute(f"select interval '{lit}'::text").fetchone()[0] for lit in literals]
    con = duckdb.connect()
    try:
        sql = " union all ".join(f"select {i} as i, interval '{lit}' as iv" for i, lit in enumerate(literals))
        table = con.sql(f"select iv from ({sql}) order by i").to_arrow_table()
    finally:
        con.close()
    from dinmo_dagster.writers import _text

    assert _text(table.column("iv").combine_chunks()).to_pylist() == pg


def test_postgresql_infinity_lands_as_duckdb_infinity(postgres_server: Any, tmp_path: Path) -> None:
    """PostgreSQL's infinite timestamps and dates stream as DuckDB's do, and are written 'infinity'."""
    from dinmo_dagster.warehouses import warehouse_from_config

    pg = warehouse_from_config("pg", postgres_server.config())
    sql = (
        "SELECT * FROM (VALUES (1, 'infinity'::timestamp, '-infinity'::timestamptz, 'infinity'::date),"
        " (2, '-infinity'::timestamp, 'infinity'::timestamptz, '-infinity'::date),"
        " (3, '2025-04-14 09:05:07.042'::timestamp, '2025-04-14 09:05:07+00'::timestamptz, '2025-04-14'::date))"
        " t(id, ts, tstz, d) ORDER BY id"
    )
    with pg.stream(sql) as reader:
        table = reader.read_all()
    assert table.column("ts").combine_chunks().view(pa.int64()).to_pylist()[:2] == [INT64_MAX, -INT64_MAX]
    assert table.column("d").combine_chunks().view(pa.int32()).to_pylist()[:2] == [INT32_MAX, -INT32_MAX]
    (path,) = write(table, FormatOptions("csv"), tmp_path)
    assert list(csv.reader(io.StringIO(path.read_text(), newline=""))) == [
        ["id", "ts", "tstz", "d"],
        ["1", "infinity", "-infinity", "infinity"],
        ["2", "-infinity", "infinity", "-infinity"],
        ["3", "2025-04-14T09:05:07.042000", "2025-04-14T09:05:07.000000+00:00", "2025-04-14"],
    ]
    (path,) = write(table, FormatOptions("json"), tmp_path)
    assert strict_json(path.read_text())[0] == {
        "id": 1,
        "ts": "infinity",
        "tstz": "-infinity",
        "d": "infinity",
    }


# ------------------------------------------------------------------------------------ check_exportable


def test_check_exportable_lists_each_column() -> None:
    schema = pa.schema([
        ("ok", pa.int64()), ("dur", pa.month_day_nano_interval()), ("durs", pa.list_(pa.month_day_nano_interval())),
        ("u", pa.sparse_union([pa.field("a", pa.int64())])), ("1st", pa.string()),
    ])  # fmt: skip
    cast = "cast it in the segment (for example to VARCHAR)"
    union = 'column "u" has type sparse_union<a: int64=0>, which {fmt} cannot hold: ' + cast
    assert check_exportable(schema, "csv") == [union.format(fmt="CSV")]
    assert check_exportable(schema, "json") == [union.format(fmt="JSON")]
    xml_name = (
        "column '1st' cannot be an XML element: '1st' is not a valid XML element name: it cannot start with "
        "'1' (start with a letter or '_')"
    )
    assert check_exportable(schema, "xml") == [union.format(fmt="XML"), xml_name]
    seconds = "cast it in the segment (for example to VARCHAR or to a number of seconds)"
    assert check_exportable(schema, "parquet") == [
        f'column "dur" has type INTERVAL, which Parquet cannot hold: {seconds}',
        f'column "durs" has type list<item: INTERVAL>, which Parquet cannot hold: {seconds}',
        union.format(fmt="Parquet"),
    ]
    assert check_exportable(pa.schema([("ok", pa.int64())]), "parquet") == []
    with pytest.raises(ValueError, match="unknown format 'txt'; allowed: csv, json, xml, parquet"):
        check_exportable(schema, "txt")


def test_unsupported_type_fails_before_any_file(tmp_path: Path) -> None:
    table = pa.table({"u": pa.UnionArray.from_sparse(pa.array([0], pa.int8()), [pa.array([1])])})
    with pytest.raises(
        ExportError, match=r'^column "u" has type sparse_union<0: int64=0>, which CSV cannot hold'
    ):
        write(table, FormatOptions("csv"), tmp_path)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------- through a real sync


def _project(root: Path, fmt: str) -> None:
    con = duckdb.connect(str(root / "warehouse.duckdb"))
    try:
        con.execute("create schema raw")
        con.execute(
            "create table raw.customers as select * from (values"
            " (1, interval '1 year 2 months -3 days 04:05:06.789', 'infinity'::timestamp, 'x'),"
            " (2, interval '-01:02:03', '-infinity'::timestamp, 'y'),"
            " (3, null, '2025-04-14 09:05:07.042'::timestamp, null)) t(customer_id, dur, seen_at, note)"
        )
    finally:
        con.close()
    doc = {
        "sources": {"wh": {"type": "duckdb", "path": "warehouse.duckdb"}},
        "models": {"customers": {"source": "wh", "table": "raw.customers", "primary_key": "customer_id"}},
        "segments": {"everyone": {"model": "customers", "sql": "select * from {{ model }}"}},
        "destinations": {"out": {"type": "local", "path": "exports"}},
        "activations": {
            "everyone_out": {
                "segment": "everyone",
                "destination": "out",
                "file_name": "customers",
                "format": fmt,
            }
        },
    }
    (root / "dinmo.yaml").write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")


def _sync(root: Path) -> tuple[bool, str]:
    """One sync through the activation's Dagster job (the job `dinmo sync` runs); (success, error text)."""
    project = load_project(root)
    defs = dg.Definitions.merge(
        model_assets.defs(project),
        activation_assets.defs(project),
        dg.Definitions(resources=build_resources(project)),
    )
    instance = dg.DagsterInstance.ephemeral()
    key = sync.new_partition_key()
    instance.add_dynamic_partitions(activation_assets.partitions_name("everyone_out"), [key])
    result = defs.resolve_job_def(activation_assets.job_name("everyone_out")).execute_in_process(
        instance=instance,
        partition_key=key,
        raise_on_error=False,
        run_config={
            "ops": activation_assets.sync_ops_config("everyone_out"),
            "loggers": {"console": {"config": {"log_level": "ERROR"}}},
        },
    )
    errors = []
    for event in result.all_events:
        err = event.step_failure_data.error if event.is_step_failure and event.step_failure_data else None
        while err is not None:  # the step's error, then its causes (the writer's own message)
            errors.append(err.message)
            err = err.cause
    return result.success, "\n".join(errors)


def test_sync_of_an_interval_to_parquet_fails_before_writing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _project(tmp_path, "parquet")
    # The sync's temporary folder (dinmo-sync-*) goes here, so the test sees that none stays behind.
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    ok, error = _sync(tmp_path)
    assert not ok
    assert (
        'column "dur" has type INTERVAL, which Parquet cannot hold: cast it in the segment '
        "(for example to VARCHAR or to a number of seconds)"
    ) in error
    exports = tmp_path / "exports"
    assert not exports.exists() or list(exports.rglob("*")) == []
    assert list(scratch.glob("dinmo-sync-*")) == []  # (Dagster's ephemeral instance keeps its own tmp*)


def test_sync_of_intervals_and_infinity_to_csv(tmp_path: Path) -> None:
    _project(tmp_path, "csv")
    ok, error = _sync(tmp_path)
    assert ok, error
    rows = list(csv.reader(io.StringIO((tmp_path / "exports" / "customers.csv").read_text(), newline="")))
    assert rows[0] == ["customer_id", "dur", "seen_at", "note"]
    assert sorted(rows[1:]) == [
        ["1", "P1Y2M-3DT4H5M6.789S", "infinity", "x"],
        ["2", "PT-1H-2M-3S", "-infinity", "y"],
        ["3", "", "2025-04-14T09:05:07.042000", ""],
    ]


def test_extension_values_are_their_text(tmp_path: Path) -> None:
    ids = [b"\x12\x34\x56\x78" * 4, None]
    table = pa.table({"u": pa.array(ids, pa.uuid()), "j": pa.array(['{"a": "b\\\\"}', None], pa.json_())})
    (path,) = write(table, FormatOptions("json", json_lines=True), tmp_path)
    assert [strict_json(line) for line in path.read_text().split("\n")[:-1]] == [
        {"u": "12345678-1234-5678-1234-567812345678", "j": '{"a": "b\\\\"}'},
        {"u": None, "j": None},
    ]
    (path,) = write(table, FormatOptions("csv"), tmp_path)
    assert path.read_text() == 'u,j\n12345678-1234-5678-1234-567812345678,"{""a"": ""b\\\\""}"\n,\n'

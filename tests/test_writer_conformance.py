"""One conformance suite for both file writers: DuckDB's own ``COPY (query) TO`` and the shared Arrow writer.

A DuckDB source is exported with DuckDB's COPY where it writes the same values as the Arrow writer
(``writers.duckdb_copy_plan``), and with the Arrow writer otherwise or when ``DINMO_EXPORT_WRITER=arrow``.
Every case below syncs the same segment (every value type both writers accept in that format, with
their edge values: empty strings, delimiters, quotes and line breaks, NaN and infinities, decimals
with trailing zeros, infinite, far-future and BC dates and timestamps) through two activations that
differ only in their folder, once per writer, through the product's sync path (``take_snapshot`` and
``deliver`` against a real DuckDB file and a local destination). It then compares the two files: the
same bytes where they must be identical (CSV without floating-point columns), else the same values
read back by independent parsers (``csv``, strict ``json``, ``pyarrow.parquet``).
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import tempfile
from collections.abc import Iterator
from decimal import Decimal
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

# One row per line. Row 8 is all NULL but its key.
TABLE_SQL = r"""
create table raw.customers as select * from (values
  (1, (-128)::tinyint, 18446744073709551615::ubigint, 999999999999999999999999999999::hugeint, true,
   12.50::decimal(12,2), 1234567890123456789012345678.1234567890::decimal(38,10), 1.5::double, 0.1::real,
   'plain', '2025-04-14'::date, '2025-04-14 09:05:07.042'::timestamp, '2025-04-14 09:05:07.042+00'::timestamptz,
   '\x00\xFF'::blob, '09:05:07.042'::time, '2025-04-14 09:05:07.042'::timestamp_ms,
   '2025-04-14 09:05:07.123456789'::timestamp_ns),
  (2, 127::tinyint, 0::ubigint, -5::hugeint, false, -0.01::decimal(12,2), 0.0000000001::decimal(38,10),
   'nan'::double, 'nan'::real, '', 'infinity'::date, 'infinity'::timestamp, 'infinity'::timestamptz,
   ''::blob, '00:00:00'::time, 'infinity'::timestamp_ms, 'infinity'::timestamp_ns),
  (3, 0::tinyint, 1::ubigint, 0::hugeint, true, 0.00::decimal(12,2), -1::decimal(38,10), 'inf'::double,
   'inf'::real, 'a,b;c|d' || chr(9) || 'e', '-infinity'::date, '-infinity'::timestamp, '-infinity'::timestamptz,
   '\x41'::blob, '23:59:59.999999'::time, '-infinity'::timestamp_ms, '-infinity'::timestamp_ns),
  (4, 1::tinyint, 2::ubigint, 1::hugeint, false, 9999999999.99::decimal(12,2), 0::decimal(38,10), '-inf'::double,
   '-inf'::real, 'say "hi"', '5881580-07-10'::date, '294247-01-10 04:00:54.775806'::timestamp,
   '2262-04-11 23:47:16.854775+00'::timestamptz, null, null, '2025-04-14 09:05:07'::timestamp_ms, null),
  (5, 2::tinyint, 3::ubigint, 2::hugeint, true, 1.00::decimal(12,2), 2.5::decimal(38,10), -0.0::double,
   -0.0::real, 'two' || chr(10) || 'lines and cr' || chr(13) || 'here', '0044-03-15 (BC)'::date,
   '0044-03-15 (BC) 12:00:00'::timestamp, '0044-03-15 (BC) 12:00:00+00'::timestamptz, null, null, null, null),
  (6, 3::tinyint, 4::ubigint, 3::hugeint, false, 2.00::decimal(12,2), 3::decimal(38,10), 1e20::double,
   1e20::real, ' lead and trail ', '0001-03-15 (BC)'::date, '0001-03-15 (BC) 00:00:01'::timestamp,
   '0001-01-01 00:00:00+00'::timestamptz, null, null, null, null),
  (7, 4::tinyint, 5::ubigint, 4::hugeint, true, 3.00::decimal(12,2), 4::decimal(38,10), 1e-7::double,
   3.25::real, 'é ü 中文 😀 ' || chr(65535), '0001-01-01'::date, '2025-04-14 09:05:07'::timestamp,
   '9999-12-31 23:59:59.999999+00'::timestamptz, null, null, null, null),
  (8, null, null, null, null, null, null, null, null, null, null, null, null, null, null, null, null)
) t(customer_id, tiny, ubig, huge, flag, amount, exact, score, ratio, label, born, seen_at, seen_tz, bin, at_time,
    seen_ms, seen_ns)
"""

# The file's columns per format: every type both writers accept there (see writers.duckdb_copy_plan).
# Renamed through the mapping; the CSV names need quoting in the header.
TEXT_COLUMNS = {"customer_id": "id", "tiny": "tiny", "ubig": "ubig", "huge": "huge", "flag": "flag",
                "amount": "montant, \"EUR\"", "exact": "exact", "score": "score", "label": "label; text",
                "born": "born", "seen_at": "seen|at", "seen_tz": "seen tab\tz"}  # fmt: skip
CSV_COLUMNS = {**TEXT_COLUMNS, "ratio": "ratio"}
JSON_COLUMNS = TEXT_COLUMNS
PARQUET_COLUMNS = {**{k: v for k, v in TEXT_COLUMNS.items() if k != "huge"}, "ratio": "ratio", "bin": "bin",
                   "at_time": "at_time", "seen_ms": "seen_ms", "seen_ns": "seen_ns"}
# CSV without floating-point columns: DuckDB and Arrow write the very same bytes.
EXACT_COLUMNS = {k: v for k, v in CSV_COLUMNS.items() if k not in ("score", "ratio")}
FLOATS = {"score", "ratio"}

# (case, activation settings, columns): each case is synced by both writers.
CASES: list[tuple[str, dict[str, Any], dict[str, str]]] = [
    ("csv_comma", {"format": "csv"}, CSV_COLUMNS),
    ("csv_semicolon", {"format": "csv", "csv": {"delimiter": ";"}}, CSV_COLUMNS),
    ("csv_pipe", {"format": "csv", "csv": {"delimiter": "|"}}, CSV_COLUMNS),
    ("csv_tab", {"format": "csv", "csv": {"delimiter": "\t"}}, CSV_COLUMNS),
    ("csv_no_header", {"format": "csv", "csv": {"header": False}}, CSV_COLUMNS),
    ("csv_gzip", {"format": "csv", "compression": "gzip"}, CSV_COLUMNS),
    ("csv_exact_comma", {"format": "csv"}, EXACT_COLUMNS),
    ("csv_exact_tab", {"format": "csv", "csv": {"delimiter": "\t"}}, EXACT_COLUMNS),
    ("csv_exact_no_header", {"format": "csv", "csv": {"delimiter": ";", "header": False}}, EXACT_COLUMNS),
    ("json_array", {"format": "json"}, JSON_COLUMNS),
    ("json_lines", {"format": "json", "json": {"lines": True}}, JSON_COLUMNS),
    ("json_gzip", {"format": "json", "compression": "gzip"}, JSON_COLUMNS),
    ("parquet_snappy", {"format": "parquet"}, PARQUET_COLUMNS),
    ("parquet_zstd", {"format": "parquet", "parquet": {"compression": "zstd"}}, PARQUET_COLUMNS),
    ("parquet_none", {"format": "parquet", "parquet": {"compression": "none"}}, PARQUET_COLUMNS),
]
CODECS = {"parquet_snappy": "SNAPPY", "parquet_zstd": "ZSTD", "parquet_none": "UNCOMPRESSED"}


def _activation(case: str, settings: dict[str, Any], columns: dict[str, str], writer: str,
                **extra: Any) -> dict[str, Any]:
    return {"segment": "everyone", "destination": "out", "folder": f"{case}/{writer}", "file_name": "customers",
            "run_type": "full_only", "sync_mode": "snapshot", "mapping": dict(columns), **settings, **extra}


def _write_project(root: Path, activations: dict[str, dict[str, Any]]) -> None:
    doc = {
        "sources": {"wh": {"type": "duckdb", "path": "warehouse.duckdb"}},
        "models": {"customers": {"source": "wh", "table": "raw.customers", "primary_key": "customer_id"}},
        "segments": {"everyone": {"model": "customers", "sql": "select * from {{ model }}"}},
        "destinations": {"out": {"type": "local", "path": "exports"}},
        "activations": activations,
    }
    (root / "dinmo.yaml").write_text(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True), encoding="utf-8")


def _make_warehouse(root: Path, sql: str = TABLE_SQL) -> None:
    con = duckdb.connect(str(root / "warehouse.duckdb"))
    try:
        con.execute("create schema raw")
        con.execute(sql)
    finally:
        con.close()


class Project:
    """A project's resources, opened once; syncs run as the activation assets run them (no Dagster run)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.project = load_project(root)
        self._cm = dg.build_resources(build_resources(self.project))
        self.resources = self._cm.__enter__()
        self.refreshed = False

    def close(self) -> None:
        self._cm.__exit__(None, None, None)

    def sync(self, activation: str, writer: str, monkeypatch: pytest.MonkeyPatch) -> sync.SyncResult:
        """One sync of ``activation``, with the writer chosen by DINMO_EXPORT_WRITER (``auto`` or ``arrow``)."""
        if not self.refreshed:
            model_assets.refresh_upstream(self.project, activation, self.resources)
            self.refreshed = True
        monkeypatch.setenv(sync.WRITER_ENV, writer)
        t = activation_assets.sync_target(self.project, activation, self.resources)
        key = sync.new_partition_key()
        sync.take_snapshot(t, key)
        return sync.deliver(t, key)


@pytest.fixture(scope="module")
def scratch() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="dinmo-conformance-") as d:
        yield Path(d)


@pytest.fixture(scope="module")
def project(scratch: Path) -> Iterator[Project]:
    root = scratch / "project"
    root.mkdir()
    _make_warehouse(root)
    activations = {}
    for case, settings, columns in CASES:
        for writer in ("arrow", "copy"):
            activations[f"{case}_{writer}"] = _activation(case, settings, columns, writer)
    xml_columns = {k: k for k in ("customer_id", "amount", "born", "seen_at")}
    activations["xml_copy"] = _activation("xml", {"format": "xml"}, xml_columns, "copy")
    _write_project(root, activations)
    p = Project(root)
    yield p
    p.close()


@pytest.fixture
def private_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The syncs' working directories (dinmo-sync-*) go here, so the test sees that none stays behind."""
    scratch_dir = tmp_path / "tmp"
    scratch_dir.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch_dir))
    return scratch_dir


# ------------------------------------------------------------------------------------------ parsers


def _no_constants(name: str) -> Any:
    raise ValueError(f"not strict JSON: {name}")


def _text(data: bytes) -> str:
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    return data.decode("utf-8")


def _float_key(text: str) -> str:
    # The same number whatever its spelling (-0.0 / -0, 1e-07 / 1e-7); NaN equal to NaN.
    return repr(float(text)) if text else ""


def csv_rows(data: bytes, delimiter: str, float_columns: set[int], header: bool) -> list[list[str]]:
    """The CSV's rows (header first), floating-point fields as the number they spell."""
    rows = list(csv.reader(io.StringIO(_text(data), newline=""), delimiter=delimiter, strict=True))
    body = [[_float_key(v) if i in float_columns else v for i, v in enumerate(r)] for r in rows[header:]]
    return rows[:header] + body


def json_records(data: bytes, lines: bool) -> list[dict[str, Any]]:
    text = _text(data)
    parse: dict[str, Any] = {"parse_float": Decimal, "parse_int": Decimal, "parse_constant": _no_constants}
    if lines:
        return [json.loads(line, **parse) for line in text.splitlines()]
    records = json.loads(text, **parse)
    assert isinstance(records, list)
    return records


def parquet_columns(path: Path) -> dict[str, tuple[str, list[Any]]]:
    """Each column's Arrow type and values; temporal values as their stored integers (infinity is
    the int64 limit, which Python's datetime cannot hold), floats by repr (NaN equal to NaN)."""
    table = pq.read_table(path)
    out = {}
    for name, col in zip(table.column_names, table.columns):
        t = col.type
        if pa.types.is_timestamp(t) or pa.types.is_date(t) or pa.types.is_time(t):
            values = col.cast(pa.int64() if t.bit_width == 64 else pa.int32()).to_pylist()
        elif pa.types.is_floating(t):
            values = [None if v is None else repr(v) for v in col.to_pylist()]
        else:
            values = col.to_pylist()
        out[name] = (str(t), values)
    return out


# ------------------------------------------------------------------------------------------ the suite


def _files(root: Path, folder: str) -> dict[str, bytes]:
    base = root / "exports" / folder
    return {p.relative_to(base).as_posix(): p.read_bytes() for p in sorted(base.rglob("*")) if p.is_file()}


@pytest.mark.parametrize(("case", "settings", "columns"), CASES, ids=[c[0] for c in CASES])
def test_both_writers_give_the_same_file(project: Project, private_tmp: Path, monkeypatch: pytest.MonkeyPatch,
                                         case: str, settings: dict[str, Any], columns: dict[str, str]) -> None:
    arrow = project.sync(f"{case}_arrow", "arrow", monkeypatch)
    copy = project.sync(f"{case}_copy", "auto", monkeypatch)
    assert (arrow.writer, copy.writer) == ("arrow", "duckdb_copy"), copy.writer_reason
    assert copy.writer_reason == ""
    assert arrow.rows_written == copy.rows_written == 8
    a_files, c_files = _files(project.root, f"{case}/arrow"), _files(project.root, f"{case}/copy")
    ext = {"csv": "csv", "json": "jsonl" if settings.get("json", {}).get("lines") else "json",
           "parquet": "parquet"}[settings["format"]]
    name = f"customers.{ext}" + (".gz" if settings.get("compression") == "gzip" else "")
    assert list(a_files) == list(c_files) == [name]
    a, c = a_files[name], c_files[name]
    names = list(columns.values())
    if settings["format"] == "csv":
        delimiter = settings.get("csv", {}).get("delimiter", ",")
        floats = {i for i, src in enumerate(columns) if src in FLOATS}
        header = settings.get("csv", {}).get("header", True)
        if case.startswith("csv_exact"):
            assert c == a
        a_rows, c_rows = csv_rows(a, delimiter, floats, header), csv_rows(c, delimiter, floats, header)
        if header:
            assert a_rows[0] == c_rows[0] == names
        assert c_rows == a_rows
        assert len(a_rows) == 8 + header
    elif settings["format"] == "json":
        lines = bool(settings.get("json", {}).get("lines"))
        a_records, c_records = json_records(a, lines), json_records(c, lines)
        assert [list(r) for r in c_records] == [names] * 8
        assert c_records == a_records
    else:
        a_path, c_path = project.root / "a.parquet", project.root / "c.parquet"
        a_path.write_bytes(a)
        c_path.write_bytes(c)
        try:
            a_cols, c_cols = parquet_columns(a_path), parquet_columns(c_path)
            assert list(c_cols) == names
            assert c_cols == a_cols
            codecs = {pq.ParquetFile(p).metadata.row_group(0).column(0).compression for p in (a_path, c_path)}
            assert codecs == {CODECS[case]}
        finally:
            a_path.unlink()
            c_path.unlink()
    assert list(private_tmp.glob("dinmo-sync-*")) == []


def test_exact_csv_text(project: Project, private_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What both writers write, spelled out: quoting, NULL against the empty string, ISO 8601 text."""
    result = project.sync("csv_exact_comma_copy", "auto", monkeypatch)
    assert result.writer == "duckdb_copy"
    text = (project.root / "exports/csv_exact_comma/copy/customers.csv").read_bytes().decode("utf-8")
    lines = text.split("\n")
    assert lines[0] == 'id,tiny,ubig,huge,flag,"montant, ""EUR""",exact,label; text,born,seen|at,seen tab\tz'
    assert lines[1] == ("1,-128,18446744073709551615,999999999999999999999999999999,true,12.50,"
                        "1234567890123456789012345678.1234567890,plain,2025-04-14,2025-04-14T09:05:07.042000,"
                        "2025-04-14T09:05:07.042000+00:00")
    assert lines[2] == '2,127,0,-5,false,-0.01,0.0000000001,"",infinity,infinity,infinity'
    assert lines[3] == '3,0,1,0,true,0.00,-1.0000000000,"a,b;c|d\te",-infinity,-infinity,-infinity'
    assert lines[4] == ('4,1,2,1,false,9999999999.99,0.0000000000,"say ""hi""",5881580-07-10,'
                        "294247-01-10T04:00:54.775806,2262-04-11T23:47:16.854775+00:00")
    assert lines[5] == '5,2,3,2,true,1.00,2.5000000000,"two'
    assert lines[6] == ('lines and cr\rhere",-0043-03-15,-0043-03-15T12:00:00.000000,'
                        "-0043-03-15T12:00:00.000000+00:00")
    assert lines[7] == ("6,3,4,3,false,2.00,3.0000000000, lead and trail ,0000-03-15,0000-03-15T00:00:01.000000,"
                        "0001-01-01T00:00:00.000000+00:00")
    assert lines[8] == ("7,4,5,4,true,3.00,4.0000000000,é ü 中文 😀 \uffff,0001-01-01,2025-04-14T09:05:07.000000,"
                        "9999-12-31T23:59:59.999999+00:00")
    assert lines[9] == "8,,,,,,,,,,"
    assert lines[10:] == [""]


def test_xml_keeps_the_shared_writer(project: Project, private_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    result = project.sync("xml_copy", "auto", monkeypatch)
    assert (result.writer, result.writer_reason) == ("arrow", "DuckDB's COPY does not write XML")
    assert list(_files(project.root, "xml/copy")) == ["customers.xml"]


def _project_with(root: Path, activations: dict[str, dict[str, Any]], sql: str = TABLE_SQL) -> Project:
    root.mkdir()
    _make_warehouse(root, sql)
    _write_project(root, activations)
    return Project(root)


@pytest.mark.parametrize("fmt", ["csv", "json", "parquet"])
def test_difference_files_agree_through_a_delta(tmp_path: Path, private_tmp: Path, monkeypatch: pytest.MonkeyPatch,
                                                fmt: str) -> None:
    """Full then delta, difference mode: _added, _updated and _removed (empty ones included, and removed
    records carrying their last synced values) hold the same rows whichever writer wrote them."""
    columns = {"csv": EXACT_COLUMNS, "json": JSON_COLUMNS, "parquet": PARQUET_COLUMNS}[fmt]
    activations = {
        f"diff_{writer}": _activation("diff", {"format": fmt}, columns, writer, run_type="full_then_delta",
                                      sync_mode="difference", file_name="c_{x}")
        for writer in ("arrow", "copy")
    }
    p = _project_with(tmp_path / "project", activations)
    try:
        for step in (1, 2):
            arrow = p.sync("diff_arrow", "arrow", monkeypatch)
            copy = p.sync("diff_copy", "auto", monkeypatch)
            assert (arrow.writer, copy.writer) == ("arrow", "duckdb_copy")
            assert copy.counts == arrow.counts
            if step == 1:
                assert (copy.counts.added, copy.counts.updated, copy.counts.removed) == (8, 0, 0)
                con = duckdb.connect(str(p.root / "warehouse.duckdb"))
                try:
                    con.execute("update raw.customers set label = 'changed', born = '0044-03-15 (BC)' "
                                "where customer_id = 1")
                    con.execute("delete from raw.customers where customer_id in (2, 5)")
                    con.execute("insert into raw.customers select 9, * exclude (customer_id) from raw.customers "
                                "where customer_id = 3")
                finally:
                    con.close()
            else:
                assert (copy.counts.added, copy.counts.updated, copy.counts.removed) == (1, 1, 2)
        a_files, c_files = _files(p.root, "diff/arrow"), _files(p.root, "diff/copy")
        assert len(a_files) == len(c_files) == 6
        for (a_name, a), (c_name, c) in zip(sorted(a_files.items()), sorted(c_files.items())):
            kind = a_name.rsplit("_", 1)[1]
            assert c_name.rsplit("_", 1)[1] == kind
            if fmt == "csv":
                assert c == a, kind
                assert len(a.splitlines()) >= 1  # the header, even in an empty file
            elif fmt == "json":
                assert json_records(c, False) == json_records(a, False), kind
            else:
                a_path, c_path = private_tmp / "a.parquet", private_tmp / "c.parquet"
                a_path.write_bytes(a)
                c_path.write_bytes(c)
                assert parquet_columns(c_path) == parquet_columns(a_path), kind
                a_path.unlink()
                c_path.unlink()
        removed = max(n for n in c_files if n.endswith(f"_removed.{fmt}"))
        if fmt == "csv":
            ids = [r[0] for r in csv_rows(c_files[removed], ",", set(), True)[1:]]
        elif fmt == "json":
            ids = [int(r["id"]) for r in json_records(c_files[removed], False)]
        else:
            ids = pq.read_table(io.BytesIO(c_files[removed])).column("id").to_pylist()
        assert sorted(str(i) for i in ids) == ["2", "5"]
    finally:
        p.close()
    assert list(private_tmp.glob("dinmo-sync-*")) == []


def test_split_exports_keep_the_shared_writer(tmp_path: Path, private_tmp: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """COPY cannot split exactly: a file over max_file_size_mb is written again, in parts, by the shared
    writer; one that fits stays DuckDB's, under its plain name."""
    limit = int(0.0005 * 1024 * 1024)
    activations = {
        "whole": _activation("whole", {"format": "csv"}, EXACT_COLUMNS, "copy", max_file_size_mb=1),
        "split": _activation("split", {"format": "csv"}, EXACT_COLUMNS, "copy", max_file_size_mb=0.0005),
        "reference": _activation("reference", {"format": "csv"}, EXACT_COLUMNS, "arrow"),
    }
    p = _project_with(tmp_path / "project", activations)
    try:
        whole = p.sync("whole", "auto", monkeypatch)
        split = p.sync("split", "auto", monkeypatch)
        p.sync("reference", "arrow", monkeypatch)
    finally:
        p.close()
    reference = _files(p.root, "reference/arrow")["customers.csv"]
    assert (whole.writer, whole.writer_reason) == ("duckdb_copy", "")
    assert _files(p.root, "whole/copy") == {"customers.csv": reference}
    assert split.writer == "arrow"
    assert split.writer_reason == (f"the file was {len(reference)} bytes as one file, over max_file_size_mb "
                                   f"({limit} bytes): the shared writer splits it")
    parts = _files(p.root, "split/copy")
    assert list(parts) == [f"customers_part-{i:05d}.csv" for i in range(1, len(parts) + 1)]
    assert len(parts) > 1 and all(len(b) <= limit for b in parts.values())
    rows = [r for b in parts.values() for r in csv_rows(b, ",", set(), True)[1:]]
    assert rows == csv_rows(reference, ",", set(), True)[1:]
    assert list(private_tmp.glob("dinmo-sync-*")) == []


@pytest.mark.parametrize(
    ("fmt", "column_sql", "type_name"),
    [
        ("csv", "interval '1 day'", "INTERVAL"),
        ("json", "[1.5, 'nan'::double]", "DOUBLE[]"),
        ("csv", "'\\x00'::blob", "BLOB"),
        ("json", "0.1::real", "FLOAT"),
        ("parquet", "12::hugeint", "HUGEINT"),
        ("csv", "'09:05:07'::time", "TIME"),
    ],
)
def test_types_copy_writes_differently_keep_the_shared_writer(
    tmp_path: Path, private_tmp: Path, monkeypatch: pytest.MonkeyPatch, fmt: str, column_sql: str, type_name: str
) -> None:
    label = {"csv": "CSV", "json": "JSON", "parquet": "Parquet"}[fmt]
    reason = f'column "extra" has type {type_name}, which DuckDB\'s COPY writes differently in {label}'
    sql = f"create table raw.customers as select 1 as customer_id, {column_sql} as extra"
    p = _project_with(tmp_path / "project", {"one": {
        "segment": "everyone", "destination": "out", "file_name": "customers", "format": fmt}}, sql)
    try:
        result = p.sync("one", "auto", monkeypatch)
    finally:
        p.close()
    assert (result.writer, result.writer_reason) == ("arrow", reason)
    assert result.rows_written == 1
    assert list(private_tmp.glob("dinmo-sync-*")) == []


def test_unknown_writer_setting_fails_the_sync(tmp_path: Path, private_tmp: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    p = _project_with(tmp_path / "project", {"one": _activation("one", {"format": "csv"}, EXACT_COLUMNS, "copy")})
    try:
        with pytest.raises(sync.SyncError) as info:
            p.sync("one", "duckdb", monkeypatch)
    finally:
        p.close()
    assert str(info.value) == "environment variable DINMO_EXPORT_WRITER: found 'duckdb'; allowed: 'auto', 'arrow'"
    assert not (p.root / "exports").exists() or list((p.root / "exports").rglob("*.csv")) == []
    assert list(private_tmp.glob("dinmo-sync-*")) == []


def test_the_run_metadata_names_the_writer(tmp_path: Path, private_tmp: Path) -> None:
    """Through the activation's Dagster job, as `dinmo sync` runs it: the materialization says who wrote."""
    root = tmp_path / "project"
    root.mkdir()
    _make_warehouse(root)
    _write_project(root, {
        "to_csv": _activation("to_csv", {"format": "csv"}, EXACT_COLUMNS, "copy"),
        "to_xml": _activation("to_xml", {"format": "xml"}, {"customer_id": "id", "born": "born"}, "copy"),
    })
    project = load_project(root)
    defs = dg.Definitions.merge(model_assets.defs(project), activation_assets.defs(project),
                                dg.Definitions(resources=build_resources(project)))
    seen = {}
    with dg.instance_for_test() as instance:
        for name in ("to_csv", "to_xml"):
            key = sync.new_partition_key()
            instance.add_dynamic_partitions(activation_assets.partitions_name(name), [key])
            result = defs.resolve_job_def(activation_assets.job_name(name)).execute_in_process(
                instance=instance, partition_key=key,
                run_config={"ops": activation_assets.sync_ops_config(name),
                            "loggers": {"console": {"config": {"log_level": "ERROR"}}}})
            assert result.success
            for event in result.all_events:
                if event.is_step_materialization:
                    m = event.step_materialization_data.materialization
                    if m.asset_key == dg.AssetKey(["activations", name]):
                        seen[name] = {k: getattr(v, "value", v) for k, v in m.metadata.items()
                                      if k in ("writer", "writer_reason")}
    assert seen == {"to_csv": {"writer": "duckdb_copy"},
                    "to_xml": {"writer": "arrow", "writer_reason": "DuckDB's COPY does not write XML"}}
    assert list(private_tmp.glob("dinmo-sync-*")) == []

"""Export formats and part splitting, read back with independent parsers."""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import threading
import xml.etree.ElementTree as ET
from datetime import date, datetime, timezone
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dinmo_dagster import writers
from dinmo_dagster.writers import FormatOptions, PartFile, write_parts, xml_name_problem

UTC = timezone.utc
BIG = Decimal("1234567890123456789012345678.1234567890")  # 38 digits: beyond float and int64
NEG_BIG = Decimal("-1234567890123456789012345678.1234567890")  # a literal: -BIG would round to 28 digits

AWKWARD_TEXT = [
    "plain",
    'comma, "quotes"; semi|pipe\ttab',
    "multi\nline\r\nwith CRLF",
    "été 東京 🚀",
    "<tag a='1'> & \"x\" </tag>",
    "",
    None,
]


def awkward_table() -> pa.Table:
    n = len(AWKWARD_TEXT)
    return pa.table(
        {
            "id": pa.array(range(1, n + 1), pa.int64()),
            "text": pa.array(AWKWARD_TEXT, pa.string()),
            "amount": pa.array(
                [
                    Decimal("12.5000000000"),
                    BIG,
                    NEG_BIG,
                    Decimal("0.0000000001"),
                    Decimal("0E-10"),
                    None,
                    Decimal("-7.0000000000"),
                ],
                pa.decimal128(38, 10),
            ),
            "price": pa.array(
                [
                    Decimal("12.50"),
                    Decimal("0.05"),
                    Decimal("-0.05"),
                    None,
                    Decimal("0.00"),
                    Decimal("9999999999999999.99"),
                    Decimal("1.00"),
                ],
                pa.decimal128(18, 2),
            ),
            "seen_at": pa.array(
                [
                    datetime(2025, 4, 14, 9, 5, 7, 42_000, tzinfo=UTC),
                    None,
                    datetime(1999, 12, 31, 23, 59, 59, tzinfo=UTC),
                ]
                + [datetime(2025, 1, 1, tzinfo=UTC)] * 4,
                pa.timestamp("us", tz="UTC"),
            ),
            "local_at": pa.array(
                [datetime(2025, 4, 14, 9, 5, 7, 42_000, tzinfo=UTC)] * n,
                pa.timestamp("us", tz="Europe/Paris"),
            ),
            "naive_at": pa.array(
                [datetime(2025, 4, 14, 9, 5, 7, 42_000)] + [None] * (n - 1), pa.timestamp("us")
            ),
            "day": pa.array([date(2025, 4, 14), None] + [date(2000, 2, 29)] * (n - 2), pa.date32()),
            "active": pa.array([True, False, None] + [True] * (n - 3), pa.bool_()),
            "score": pa.array([1.5, None, -0.25, 1e20, 0.1, 3.0, 2.0], pa.float64()),
        }
    )


def write(
    table: pa.Table | list[pa.RecordBatch],
    options: FormatOptions,
    workdir: Path,
    limit: int | None = None,
    base: str = "export",
    schema: pa.Schema | None = None,
) -> list[PartFile]:
    batches = table if isinstance(table, list) else table.to_batches(max_chunksize=3)
    if schema is None:
        schema = table.schema if isinstance(table, pa.Table) else batches[0].schema
    return write_parts(batches, schema, options, base, limit, workdir, lambda part: None)


# ----------------------------------------------------------------------------------------------- CSV


EXPECTED_CSV = (
    "id,text,amount,price,seen_at,local_at,naive_at,day,active,score\n"
    "1,plain,12.5000000000,12.50,2025-04-14T09:05:07.042000+00:00,2025-04-14T11:05:07.042000+02:00,"
    "2025-04-14T09:05:07.042000,2025-04-14,true,1.5\n"
    '2,"comma, ""quotes""; semi|pipe\ttab",1234567890123456789012345678.1234567890,0.05,,'
    "2025-04-14T11:05:07.042000+02:00,,,false,\n"
    '3,"multi\nline\r\nwith CRLF",-1234567890123456789012345678.1234567890,-0.05,'
    "1999-12-31T23:59:59.000000+00:00,2025-04-14T11:05:07.042000+02:00,,2000-02-29,,-0.25\n"
    "4,été 東京 🚀,0.0000000001,,2025-01-01T00:00:00.000000+00:00,2025-04-14T11:05:07.042000+02:00,,"
    "2000-02-29,true,1e+20\n"
    '5,"<tag a=\'1\'> & ""x"" </tag>",0.0000000000,0.00,2025-01-01T00:00:00.000000+00:00,'
    "2025-04-14T11:05:07.042000+02:00,,2000-02-29,true,0.1\n"
    '6,"",,9999999999999999.99,2025-01-01T00:00:00.000000+00:00,2025-04-14T11:05:07.042000+02:00,,'
    "2000-02-29,true,3\n"
    "7,,-7.0000000000,1.00,2025-01-01T00:00:00.000000+00:00,2025-04-14T11:05:07.042000+02:00,,"
    "2000-02-29,true,2\n"
)


def test_csv_exact_output(tmp_path: Path) -> None:
    parts = write(awkward_table(), FormatOptions("csv"), tmp_path)
    assert [p.name for p in parts] == ["export.csv"]
    assert parts[0].path == tmp_path / "export.csv"
    assert parts[0].rows == 7
    assert parts[0].bytes == parts[0].path.stat().st_size
    assert parts[0].path.read_bytes() == EXPECTED_CSV.encode("utf-8")


def test_csv_quotes_only_fields_that_need_it(tmp_path: Path) -> None:
    table = pa.table({"s": ["plain", "a b", "x,y", 'q"', "l\n", "c\r", "semi;", "", None]})
    (part,) = write(table, FormatOptions("csv"), tmp_path)
    assert part.path.read_bytes().decode() == 's\nplain\na b\n"x,y"\n"q"""\n"l\n"\n"c\r"\nsemi;\n""\n\n'


@pytest.mark.parametrize("delimiter", [",", ";", "|", "\t"])
def test_csv_round_trip_with_each_delimiter(tmp_path: Path, delimiter: str) -> None:
    table = awkward_table()
    (part,) = write(table, FormatOptions("csv", csv_delimiter=delimiter), tmp_path)
    with part.path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f, delimiter=delimiter))
    assert rows[0] == table.column_names
    assert len(rows) == 8
    assert [r[1] for r in rows[1:]] == [t if t is not None else "" for t in AWKWARD_TEXT]
    assert [r[2] for r in rows[1:]] == [
        "12.5000000000",
        str(BIG),
        str(NEG_BIG),
        "0.0000000001",
        "0.0000000000",
        "",
        "-7.0000000000",
    ]
    assert rows[1][4] == "2025-04-14T09:05:07.042000+00:00"
    assert datetime.fromisoformat(rows[1][5]) == datetime(2025, 4, 14, 9, 5, 7, 42_000, tzinfo=UTC)


def test_csv_null_and_empty_string_differ(tmp_path: Path) -> None:
    table = pa.table({"a": pa.array(["", None, "x"]), "b": pa.array([1, 2, None])})
    (part,) = write(table, FormatOptions("csv"), tmp_path)
    assert part.path.read_text() == 'a,b\n"",1\n,2\nx,\n'


def test_csv_without_header(tmp_path: Path) -> None:
    table = pa.table({"a": [1, 2], "b": ["x;y", "z"]})
    (part,) = write(table, FormatOptions("csv", csv_header=False, csv_delimiter=";"), tmp_path)
    assert part.path.read_text() == '1;"x;y"\n2;z\n'


def test_csv_header_quotes_awkward_column_names(tmp_path: Path) -> None:
    table = pa.table({"a,b": [1], 'say "hi"': [2], "ok": [3]})
    (part,) = write(table, FormatOptions("csv"), tmp_path)
    assert part.path.read_text() == '"a,b","say ""hi""",ok\n1,2,3\n'


def test_csv_other_types(tmp_path: Path) -> None:
    table = pa.table(
        {
            "secs": pa.array([datetime(2025, 4, 14, 9, 5, 7)], pa.timestamp("s")),
            "millis": pa.array([datetime(2025, 4, 14, 9, 5, 7, 42_000)], pa.timestamp("ms", tz="UTC")),
            "tokyo": pa.array(
                [datetime(2025, 4, 14, 9, 5, 7, tzinfo=UTC)], pa.timestamp("s", tz="Asia/Tokyo")
            ),
            "small": pa.array([7], pa.int8()),
            "cat": pa.array(["FR"]).dictionary_encode(),
            "big": pa.array([2**63 - 1], pa.int64()),
            "blob": pa.array([b"\x00\xff"], pa.binary()),
            "tags": pa.array([["a", "b,c"]], pa.list_(pa.string())),
            "nothing": pa.nulls(1),
        }
    )
    (part,) = write(table, FormatOptions("csv"), tmp_path)
    assert part.path.read_text().split("\n")[1] == (
        "2025-04-14T09:05:07,2025-04-14T09:05:07.042+00:00,2025-04-14T18:05:07+09:00,7,FR,"
        '9223372036854775807,AP8=,"[""a"",""b,c""]",'
    )


# ---------------------------------------------------------------------------------------------- JSON


def test_json_array_round_trip(tmp_path: Path) -> None:
    (part,) = write(awkward_table(), FormatOptions("json"), tmp_path)
    assert part.name == "export.json"
    text = part.path.read_text(encoding="utf-8")
    assert "été 東京 🚀" in text  # UTF-8, not \u escapes
    records = json.loads(text, parse_float=Decimal)
    assert [r["id"] for r in records] == [1, 2, 3, 4, 5, 6, 7]
    assert [r["text"] for r in records] == AWKWARD_TEXT
    assert [r["amount"] for r in records] == [
        Decimal("12.5000000000"),
        BIG,
        NEG_BIG,
        Decimal("0.0000000001"),
        Decimal("0E-10"),
        None,
        Decimal("-7.0000000000"),
    ]
    assert str(records[0]["price"]) == "12.50"  # the decimal's scale survives as number text
    assert records[0]["seen_at"] == "2025-04-14T09:05:07.042000+00:00"
    assert records[1]["seen_at"] is None
    assert records[0]["local_at"] == "2025-04-14T11:05:07.042000+02:00"
    assert records[0]["naive_at"] == "2025-04-14T09:05:07.042000"
    assert records[0]["day"] == "2025-04-14"
    assert [r["active"] for r in records[:3]] == [True, False, None]
    assert [r["score"] for r in records[:4]] == [Decimal("1.5"), None, Decimal("-0.25"), Decimal("1E+20")]
    assert list(records[0]) == awkward_table().column_names


def test_json_exact_layout(tmp_path: Path) -> None:
    table = pa.table({"id": [1, 2], "name": ['a"b\\c\u0001', None], "ok": [True, False]})
    (part,) = write(table, FormatOptions("json"), tmp_path)
    assert part.path.read_text() == (
        '[\n{"id":1,"name":"a\\"b\\\\c\\u0001","ok":true},\n{"id":2,"name":null,"ok":false}\n]\n'
    )


def test_json_lines(tmp_path: Path) -> None:
    table = awkward_table()
    (part,) = write(table, FormatOptions("json", json_lines=True), tmp_path)
    assert part.name == "export.jsonl"
    lines = part.path.read_text(encoding="utf-8").split("\n")
    assert lines[-1] == ""
    records = [json.loads(line) for line in lines[:-1]]
    assert [r["text"] for r in records] == AWKWARD_TEXT


def test_json_nan_and_infinity_are_null(tmp_path: Path) -> None:
    table = pa.table({"x": [float("nan"), float("inf"), -float("inf"), 1.0]})
    (part,) = write(table, FormatOptions("json", json_lines=True), tmp_path)
    assert part.path.read_text() == '{"x":null}\n{"x":null}\n{"x":null}\n{"x":1}\n'


def test_json_nested_values(tmp_path: Path) -> None:
    table = pa.table({"tags": pa.array([["a", "é"], None]), "info": pa.array([{"k": 1}, {"k": None}])})
    (part,) = write(table, FormatOptions("json", json_lines=True), tmp_path)
    assert part.path.read_text(encoding="utf-8") == (
        '{"tags":["a","é"],"info":{"k":1}}\n{"tags":null,"info":{"k":null}}\n'
    )


# ----------------------------------------------------------------------------------------------- XML


def test_xml_round_trip(tmp_path: Path) -> None:
    (part,) = write(awkward_table(), FormatOptions("xml"), tmp_path)
    assert part.name == "export.xml"
    raw = part.path.read_bytes()
    assert raw.startswith(b'<?xml version="1.0" encoding="UTF-8"?>\n<records>\n<record><id>1</id>')
    root = ET.fromstring(raw)
    assert root.tag == "records"
    records = list(root)
    assert [r.tag for r in records] == ["record"] * 7
    texts = [r.find("text") for r in records]
    # A NULL omits the element; an empty string is an empty element.
    assert [None if e is None else (e.text or "") for e in texts] == AWKWARD_TEXT
    assert records[0].findtext("amount") == "12.5000000000"
    assert records[1].findtext("amount") == str(BIG)
    assert records[0].findtext("price") == "12.50"
    assert records[0].findtext("seen_at") == "2025-04-14T09:05:07.042000+00:00"
    assert records[1].find("seen_at") is None
    assert records[0].findtext("active") == "true"
    assert records[2].find("active") is None
    assert [c.tag for c in records[0]] == awkward_table().column_names


def test_xml_exact_escaping_and_names(tmp_path: Path) -> None:
    table = pa.table({"name": ["a<b>&'\"\r\n", None], "n": [1, None]})
    options = FormatOptions("xml", xml_root="Customers", xml_record="Customer")
    (part,) = write(table, options, tmp_path)
    assert part.path.read_text() == (
        '<?xml version="1.0" encoding="UTF-8"?>\n<Customers>\n'
        "<Customer><name>a&lt;b&gt;&amp;'\"&#13;\n</name><n>1</n></Customer>\n"
        "<Customer></Customer>\n</Customers>\n"
    )
    root = ET.parse(part.path).getroot()
    assert root[0].findtext("name") == "a<b>&'\"\r\n"


def test_xml_invalid_column_name_is_an_error(tmp_path: Path) -> None:
    table = pa.table({"ok": [1], "1st": [2]})
    with pytest.raises(ValueError, match=r"column '1st' cannot be an XML element: '1st' is not a valid XML"):
        write(table, FormatOptions("xml"), tmp_path)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("customer_id", None),
        ("été", None),
        ("a-b.c", None),
        ("_x", None),
        ("", "an XML element name cannot be empty"),
        (
            "1st",
            "'1st' is not a valid XML element name: it cannot start with '1' (start with a letter or '_')",
        ),
        (
            "first name",
            (
                "'first name' is not a valid XML element name: it cannot contain ' ' "
                "(letters, digits, '_', '-' and '.' are allowed)"
            ),
        ),
        ("ns:tag", "'ns:tag' is not a valid XML element name: ':' is reserved for namespaces"),
        ("-x", "'-x' is not a valid XML element name: it cannot start with '-' (start with a letter or '_')"),
    ],
)
def test_xml_name_problem(name: str, problem: str | None) -> None:
    assert xml_name_problem(name) == problem


def test_xml_rejects_characters_xml_cannot_carry(tmp_path: Path) -> None:
    table = pa.table({"name": ["ok", "bell\x07"]})
    with pytest.raises(
        writers.ExportError, match=r'^column "name" holds a character XML 1.0 cannot carry \(U\+0007\)'
    ):
        write(table, FormatOptions("xml"), tmp_path)
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------- Parquet


def test_parquet_round_trip_keeps_types(tmp_path: Path) -> None:
    table = awkward_table()
    (part,) = write(table, FormatOptions("parquet"), tmp_path)
    assert part.name == "export.parquet"
    back = pq.read_table(part.path)
    assert back.schema.equals(table.schema)
    assert back.equals(table)
    assert pq.ParquetFile(part.path).metadata.row_group(0).column(0).compression == "SNAPPY"


def test_parquet_compression_option(tmp_path: Path) -> None:
    (part,) = write(awkward_table(), FormatOptions("parquet", parquet_compression="zstd"), tmp_path)
    assert pq.ParquetFile(part.path).metadata.row_group(0).column(0).compression == "ZSTD"


def test_parquet_dictionary_only_for_repetitive_columns(tmp_path: Path) -> None:
    n = 5_000
    table = pa.table({"id": pa.array(range(n)), "country": pa.array(["FR", "DE"] * (n // 2))})
    (part,) = write(table, FormatOptions("parquet"), tmp_path)
    meta = pq.ParquetFile(part.path).metadata.row_group(0)
    assert "RLE_DICTIONARY" not in meta.column(0).encodings
    assert "RLE_DICTIONARY" in meta.column(1).encodings
    assert pq.read_table(part.path).equals(table)


# ------------------------------------------------------------------------------------ empty / gzip


SMALL = pa.schema([("id", pa.int64()), ("name", pa.string())])


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (FormatOptions("csv"), "id,name\n"),
        (FormatOptions("csv", csv_header=False), ""),
        (FormatOptions("json"), "[\n]\n"),
        (FormatOptions("json", json_lines=True), ""),
        (FormatOptions("xml"), '<?xml version="1.0" encoding="UTF-8"?>\n<records>\n</records>\n'),
    ],
)
@pytest.mark.parametrize(
    "batches", [[], [pa.record_batch([pa.array([], pa.int64()), pa.array([], pa.string())], schema=SMALL)]]
)
def test_empty_text_exports_still_write_one_file(
    tmp_path: Path, options: FormatOptions, expected: str, batches: list[pa.RecordBatch]
) -> None:
    parts = write(batches, options, tmp_path, schema=SMALL, limit=10_000)
    assert [(p.name, p.rows) for p in parts] == [(f"export.{options.extension}", 0)]
    assert parts[0].path.read_text() == expected
    if options.format == "json" and not options.json_lines:
        assert json.loads(expected) == []
    if options.format == "xml":
        assert list(ET.fromstring(expected)) == []


def test_empty_parquet_has_the_schema(tmp_path: Path) -> None:
    parts = write([], FormatOptions("parquet"), tmp_path, schema=SMALL)
    assert [(p.name, p.rows) for p in parts] == [("export.parquet", 0)]
    back = pq.read_table(parts[0].path)
    assert back.num_rows == 0
    assert back.schema.equals(SMALL)


@pytest.mark.parametrize("fmt", ["csv", "json", "xml"])
def test_gzip_holds_the_same_bytes(tmp_path: Path, fmt: str) -> None:
    table = awkward_table()
    (plain,) = write(table, FormatOptions(fmt), tmp_path)
    (zipped,) = write(table, FormatOptions(fmt, compression="gzip"), tmp_path)
    assert zipped.name == f"export.{fmt}.gz"
    assert gzip.decompress(zipped.path.read_bytes()) == plain.path.read_bytes()


def test_empty_gzip_is_a_valid_gzip(tmp_path: Path) -> None:
    (part,) = write([], FormatOptions("json", compression="gzip"), tmp_path, schema=SMALL)
    assert gzip.decompress(part.path.read_bytes()) == b"[\n]\n"


# ------------------------------------------------------------------------------------------ options


@pytest.mark.parametrize(
    ("options", "extension"),
    [
        (FormatOptions("csv"), "csv"),
        (FormatOptions("csv", compression="gzip"), "csv.gz"),
        (FormatOptions("json"), "json"),
        (FormatOptions("json", compression="gzip"), "json.gz"),
        (FormatOptions("json", json_lines=True), "jsonl"),
        (FormatOptions("json", json_lines=True, compression="gzip"), "jsonl.gz"),
        (FormatOptions("xml"), "xml"),
        (FormatOptions("xml", compression="gzip"), "xml.gz"),
        (FormatOptions("parquet"), "parquet"),
    ],
)
def test_extensions(options: FormatOptions, extension: str) -> None:
    assert options.extension == extension


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"format": "avro"}, "unknown format 'avro'; allowed: csv, json, xml, parquet"),
        (
            {"format": "csv", "csv_delimiter": ":"},
            "unsupported CSV delimiter ':'; allowed: ',', ';', '|', '\\t'",
        ),
        ({"format": "csv", "compression": "zip"}, "unknown compression 'zip'; allowed: 'none', 'gzip'"),
        (
            {"format": "parquet", "compression": "gzip"},
            "gzip compression applies to csv, json and xml; Parquet compresses internally (use parquet_compression)",
        ),
        (
            {"format": "xml", "xml_record": "a b"},
            (
                "xml_record: 'a b' is not a valid XML element name: it cannot contain ' ' "
                "(letters, digits, '_', '-' and '.' are allowed)"
            ),
        ),
    ],
)
def test_option_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError) as info:
        FormatOptions(**kwargs)
    assert str(info.value) == message


def test_bad_limit_and_no_columns(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="max_file_bytes must be positive, got 0"):
        write(pa.table({"a": [1]}), FormatOptions("csv"), tmp_path, limit=0)
    with pytest.raises(ValueError, match="an export needs at least one column"):
        write([], FormatOptions("csv"), tmp_path, schema=pa.schema([]))


# ---------------------------------------------------------------------------------------- splitting


ROWS = 10_000


def many_rows(n: int = ROWS) -> pa.Table:
    ids = pa.array(range(n), pa.int64())
    return pa.table(
        {
            "id": ids,
            "email": pa.array([f"user{i}@example.com" for i in range(n)]),
            "note": pa.array([None if i % 7 == 0 else f'note "{i}", line\nnext é' for i in range(n)]),
            "amount": pa.array([Decimal(i % 1000) / 4 for i in range(n)], pa.decimal128(18, 2)),
            "at": pa.array([datetime(2025, 1, 1, tzinfo=UTC)] * n, pa.timestamp("us", tz="UTC")),
        }
    )


def parse_ids(part_bytes: bytes, options: FormatOptions) -> list[int]:
    """Parse one part on its own with an independent parser and return its ids in order."""
    if options.compression == "gzip":
        part_bytes = gzip.decompress(part_bytes)
    if options.format == "parquet":
        return pq.read_table(io.BytesIO(part_bytes)).column("id").to_pylist()
    text = part_bytes.decode("utf-8")
    if options.format == "csv":
        rows = list(csv.reader(io.StringIO(text, newline="")))
        assert rows[0] == ["id", "email", "note", "amount", "at"]  # every part repeats the header
        return [int(r[0]) for r in rows[1:]]
    if options.format == "json" and options.json_lines:
        return [json.loads(line)["id"] for line in text.splitlines()]
    if options.format == "json":
        return [r["id"] for r in json.loads(text)]
    root = ET.fromstring(text)
    assert root.tag == "records"
    return [int(r.findtext("id")) for r in root]


SPLIT_CASES = [
    (FormatOptions("csv"), 8_000),
    (FormatOptions("csv", compression="gzip"), 4_000),
    (FormatOptions("json"), 8_000),
    (FormatOptions("json", compression="gzip"), 4_000),
    (FormatOptions("json", json_lines=True), 8_000),
    (FormatOptions("json", json_lines=True, compression="gzip"), 4_000),
    (FormatOptions("xml"), 8_000),
    (FormatOptions("xml", compression="gzip"), 4_000),
    (FormatOptions("parquet"), 20_000),
]


@pytest.mark.parametrize(("options", "limit"), SPLIT_CASES, ids=lambda v: getattr(v, "extension", str(v)))
def test_split_export(tmp_path: Path, options: FormatOptions, limit: int) -> None:
    table = many_rows()
    delivered: list[tuple[str, int, int]] = []
    ids: list[int] = []

    def deliver(part: PartFile) -> None:
        # Streaming: the delivered file plus at most the part being written are on disk (Parquet
        # parts are written by a worker thread and delivered by this one, so one more may wait).
        assert part.path.exists()
        assert len(list(tmp_path.iterdir())) <= (3 if options.format == "parquet" else 2)
        assert threading.current_thread() is threading.main_thread()  # never from a writer thread
        data = part.path.read_bytes()
        assert len(data) == part.bytes <= limit
        part_ids = parse_ids(data, options)
        assert len(part_ids) == part.rows > 0
        ids.extend(part_ids)
        delivered.append((part.name, part.rows, part.bytes))
        part.path.unlink()  # as the uploader does

    parts = write_parts(
        table.to_batches(max_chunksize=1_000), table.schema, options, "vip", limit, tmp_path, deliver
    )
    assert len(parts) >= 3
    assert [(p.name, p.rows, p.bytes) for p in parts] == delivered
    assert [p.name for p in parts] == [
        f"vip_part-{i:05d}.{options.extension}" for i in range(1, len(parts) + 1)
    ]
    assert ids == list(range(ROWS))  # every row exactly once, in order
    assert list(tmp_path.iterdir()) == []  # nothing left behind
    # Parts are filled, not cut early: all but the last use most of the limit.
    assert min(p.bytes for p in parts[:-1]) > limit * (0.5 if options.format == "parquet" else 0.8)


@pytest.mark.parametrize(("options", "limit"), SPLIT_CASES, ids=lambda v: getattr(v, "extension", str(v)))
def test_export_that_fits_keeps_the_plain_name(tmp_path: Path, options: FormatOptions, limit: int) -> None:
    table = many_rows(20)
    parts = write(table, options, tmp_path, limit=limit, base="vip")
    assert [p.name for p in parts] == [f"vip.{options.extension}"]
    assert parse_ids(parts[0].path.read_bytes(), options) == list(range(20))


def test_parquet_parts_written_by_the_worker_are_delivered_by_the_caller(tmp_path: Path) -> None:
    n = 300_000  # more than one buffered row group, so parts close in the writer thread
    table = pa.table({"id": pa.array(range(n), pa.int64()), "v": pa.array([i % 97 for i in range(n)])})
    threads: list[threading.Thread] = []
    ids: list[int] = []

    def deliver(part: PartFile) -> None:
        threads.append(threading.current_thread())
        assert part.bytes <= 400_000
        ids.extend(pq.read_table(part.path).column("id").to_pylist())
        part.path.unlink()

    parts = write_parts(
        table.to_batches(max_chunksize=50_000),
        table.schema,
        FormatOptions("parquet"),
        "p",
        400_000,
        tmp_path,
        deliver,
    )
    assert len(parts) >= 3
    assert set(threads) == {threading.main_thread()}
    assert ids == list(range(n))
    assert list(tmp_path.iterdir()) == []


def test_split_exactly_at_the_limit(tmp_path: Path) -> None:
    # Header "a\n" (2 bytes) + rows "1\n" (2 bytes each): a 6-byte limit holds exactly two rows.
    table = pa.table({"a": [1, 2, 3, 4]})
    parts = write(table, FormatOptions("csv"), tmp_path, limit=6)
    assert [(p.name, p.path.read_text()) for p in parts] == [
        ("export_part-00001.csv", "a\n1\n2\n"),
        ("export_part-00002.csv", "a\n3\n4\n"),
    ]
    # One more byte of room does not leave an empty trailing part.
    parts = write(table, FormatOptions("csv"), tmp_path, limit=7, base="other")
    assert [p.rows for p in parts] == [2, 2]


def test_json_array_split_exactly_at_the_limit(tmp_path: Path) -> None:
    # "[\n" + '{"a":1}' + ",\n" + '{"a":2}' + "\n]\n" = 21 bytes.
    table = pa.table({"a": [1, 2, 3]})
    parts = write(table, FormatOptions("json"), tmp_path, limit=21)
    assert [p.path.read_text() for p in parts] == ['[\n{"a":1},\n{"a":2}\n]\n', '[\n{"a":3}\n]\n']


def test_row_larger_than_the_limit(tmp_path: Path) -> None:
    table = pa.table({"a": ["short", "x" * 500, "short"]})
    with pytest.raises(
        ValueError, match=r"a single row needs 501 bytes .*max_file_bytes=100; raise the limit"
    ):
        write(table, FormatOptions("csv"), tmp_path, limit=100)
    # The first part was delivered; no half-written file is left behind.
    assert [p.name for p in tmp_path.iterdir()] == ["export_part-00001.csv"]


def test_parquet_row_larger_than_the_limit(tmp_path: Path) -> None:
    table = pa.table({"a": [os.urandom(25_000).hex()]})  # random: does not compress below the limit
    with pytest.raises(ValueError, match=r"max_file_bytes=5000; raise the limit"):
        write(table, FormatOptions("parquet"), tmp_path, limit=5_000)
    assert list(tmp_path.iterdir()) == []


def test_limit_smaller_than_the_file_frame(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="max_file_bytes=10 is too small: an empty file needs"):
        write(pa.table({"a": [1]}), FormatOptions("xml"), tmp_path, limit=10)


def test_parquet_resplits_when_an_estimate_was_wrong(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A far too optimistic estimate makes parts overflow; they are rewritten as halves from disk.
    monkeypatch.setattr(writers, "_PARQUET_SAFETY", 0.05)
    table = many_rows(3_000)
    limit = 20_000
    parts = write(table, FormatOptions("parquet"), tmp_path, limit=limit)
    assert len(parts) >= 2
    assert all(p.bytes <= limit for p in parts)
    assert [p.name for p in parts] == [f"export_part-{i:05d}.parquet" for i in range(1, len(parts) + 1)]
    ids = [i for p in parts for i in pq.read_table(p.path).column("id").to_pylist()]
    assert ids == list(range(3_000))
    assert sorted(f.name for f in tmp_path.iterdir()) == sorted(p.name for p in parts)


def test_failure_in_the_source_removes_the_unfinished_part(tmp_path: Path) -> None:
    def batches():
        yield pa.record_batch({"id": [1, 2]})
        raise RuntimeError("warehouse went away")

    with pytest.raises(RuntimeError, match="warehouse went away"):
        write_parts(
            batches(),
            pa.schema([("id", pa.int64())]),
            FormatOptions("csv"),
            "x",
            None,
            tmp_path,
            lambda p: None,
        )
    assert list(tmp_path.iterdir()) == []


def test_large_batches_are_rendered_in_slices(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(writers, "_MAX_SLICE_ROWS", 7)
    table = many_rows(100)
    (part,) = write_parts(
        table.to_batches(), table.schema, FormatOptions("csv"), "x", None, tmp_path, lambda p: None
    )
    assert parse_ids(part.path.read_bytes(), FormatOptions("csv")) == list(range(100))

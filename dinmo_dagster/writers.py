"""Export file formats and size-based splitting, streaming Arrow record batches.

Every text format is rendered with vectorised pyarrow compute, one batch at a time: each column is
turned into its text form once per batch and the rows are assembled with ``binary_join_element_wise``.
No per-row Python runs except for rare types (binary, nested, intervals, years outside 1-9999). Knowing
each rendered row's exact byte length makes splitting exact for uncompressed text.

Format choices (the README repeats them):

* CSV: RFC 4180 quoting, UTF-8, ``\\n`` line ends. A field is quoted when it contains the delimiter,
  a double quote, CR or LF (quotes doubled inside); an empty string (or empty binary) is written ``""`` so
  that it differs from NULL, which is an empty unquoted field (as DuckDB's COPY does). Booleans ``true`` /
  ``false``; decimals keep their scale (``12.50``), never scientific notation; floats use the
  shortest round-trip text (``nan``/``inf`` as such). pyarrow's own CSVWriter is not used because
  its "needed" style quotes every string value and it cannot report per-row sizes for splitting.
* Timestamps (all text formats): ISO 8601 with ``T``; the fraction follows the column's unit
  (microseconds: ``2025-04-14T09:05:07.042000``, seconds: none). A timezone-aware column is written
  at its wall clock in its own timezone with a ``+HH:MM`` offset (``+00:00`` for UTC). Dates
  ``2025-04-14``; times ``09:05:07.042000``.
* Infinite and far timestamps and dates (all text formats): DuckDB hands Arrow ``'infinity'`` and
  ``'-infinity'`` as the int64 limits +/-(2^63-1) for timestamps of every unit and as the int32
  limits +/-(2^31-1) days for dates (the PostgreSQL source loads its infinities to the same values).
  They are written ``infinity`` / ``-infinity``, the warehouses' own text (a string in JSON). Years
  outside 1-9999 are written in full, as Arrow writes the years it can: ``5881580-07-10``,
  ``294247-01-10T04:00:54.775806``, and astronomical years before year 1 (1 BC is ``0000``, 44 BC
  ``-0043``). A timezone-aware value that far is written in UTC (``+00:00``).
* Intervals (DuckDB/PostgreSQL ``INTERVAL``, Arrow month_day_nano and durations; all text formats):
  ISO 8601 durations as PostgreSQL's IntervalStyle ``iso_8601`` writes them: ``P1Y2M-3DT4H5M6.789S``,
  ``PT-1H-2M-3S``, ``PT0S``. Months, days and time stay apart and each part carries its own sign.
  A string in JSON.
* Nested values (lists, structs, maps): compact JSON text in CSV and XML, JSON values in JSON. Inside
  them NaN and infinities are ``null`` (as in a float column), timestamps, dates and intervals have
  the text above, binary is base64 and decimals are strings of their exact text; maps are
  ``[[key, value], ...]``.
* JSON: an array of objects, one object per line (``[\\n{...},\\n{...}\\n]``), or newline-delimited
  JSON with ``json_lines`` (extension ``jsonl``, so consumers do not parse it as one document).
  Integers and decimals are JSON numbers (decimals written from their exact text, scale kept:
  ``12.50``), NaN/Infinity become ``null``, NULL is ``null``, timestamps/dates are ISO strings,
  binary is base64 text, non-ASCII stays UTF-8. Files parse with a strict parser (no ``NaN``).
* XML: ``<?xml version="1.0" encoding="UTF-8"?>`` then ``<records>`` with one ``<record>`` per row
  and one element per column (names configurable). A NULL value omits the element (an empty
  element would be indistinguishable from an empty string). Text escapes ``& < >`` and CR. A value
  holding a character XML 1.0 cannot carry even as a reference (controls other than tab, LF, CR;
  U+FFFE; U+FFFF) fails the export with ``ExportError`` naming the column, rather than alter the
  data: the batch holding it is refused before it reaches a file, the unfinished part is removed,
  and the sync removes the parts it had already delivered. Column names must be valid XML names
  (no ``:``); ``xml_name_problem`` says why one is not.
* Parquet: ``pyarrow.parquet.ParquetWriter``, Arrow types kept, ``snappy`` by default, about
  100k rows per row group. Infinite and far timestamps and dates keep their stored integers (DuckDB
  reads them back as infinity). ``timestamp[s]`` is written as ``timestamp[ms]`` (Parquet has no
  seconds unit), infinity kept at the int64 limits where pyarrow's own conversion would overflow.
  Parquet cannot hold an INTERVAL (pyarrow has no mapping for month_day_nano): such a column fails
  the export before any file exists (cast it in the segment); Arrow durations are kept.
* ``compression="gzip"`` (text formats only) appends ``.gz``.

Types: ``check_exportable(schema, format)`` lists the columns a format cannot hold (INTERVAL in
Parquet; unions and other types no format here renders; invalid XML names), one line each naming the
column and what to do. ``write_parts`` runs it before opening any file and raises ``ExportError``
with those lines, so an export fails before writing even when its caller did not check first.

Threads: the batch source is iterated and ``deliver`` is called only in the calling thread; worker
threads render text batches (pyarrow compute releases the GIL) or write Parquet row groups, so
reading from the warehouse overlaps with formatting. At most a few batches are in flight.

Splitting: with ``max_file_bytes`` set, each file (its compressed size for gzip) stays at or under
the limit and is complete on its own; parts are ``{base}_part-00001.{ext}``, ... and an export that
fits one file keeps ``{base}.{ext}``. Gzip parts are bounded with zlib's worst-case expansion and
sync flushes near the limit; Parquet parts are estimated from the bytes already on disk, verified
after closing, and re-split in halves if an estimate was ever wrong.

DuckDB's own writer: for a DuckDB source, ``duckdb_copy_plan`` says whether ``COPY (query) TO file``
gives a file with the same values as ``write_parts`` (CSV, JSON, JSON lines and Parquet, gzip too; never
XML) and builds that COPY; the sync then writes with it (see its docstring for the types it takes).
"""

from __future__ import annotations

import base64
import decimal
import json
import os
import re
import tempfile
import threading
import zlib
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

__all__ = [
    "ARROW_WRITER",
    "COPY_WRITER",
    "CSV_DELIMITERS",
    "CopyExport",
    "ExportError",
    "FormatOptions",
    "PartFile",
    "check_exportable",
    "duckdb_copy_plan",
    "write_parts",
    "xml_name_problem",
]

CSV_DELIMITERS: tuple[str, ...] = (",", ";", "|", "\t")
_FORMATS = ("csv", "json", "xml", "parquet")
_UTC_NAMES = frozenset(
    {"UTC", "Etc/UTC", "utc", "Z", "+00:00", "GMT", "Etc/GMT", "Etc/Universal", "Universal"}
)
# Rendering slices stay far below the 2 GiB offset limit of Arrow's 32-bit string arrays.
_MAX_SLICE_TEXT_BYTES = 256 * 1024 * 1024
_MAX_SLICE_ROWS = 131_072
# Parquet row groups near DuckDB's size: small input batches are combined up to this many rows.
_ROW_GROUP_ROWS = 100_000
# Columns with at most half distinct values in the first rows get dictionary encoding.
_DICTIONARY_SAMPLE = 100_000
_DICTIONARY_SAMPLE_MIN = 1_000
# Parquet size estimates are multiplied by this before deciding a slice fits.
_PARQUET_SAFETY = 1.25
_GZIP_LEVEL = 6
_IO_BUFFER = 1 << 20

_XML_START = (
    ":A-Z_a-z\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u02ff\u0370-\u037d\u037f-\u1fff\u200c-\u200d"
    "\u2070-\u218f\u2c00-\u2fef\u3001-\ud7ff\uf900-\ufdcf\ufdf0-\ufffd\U00010000-\U000effff"
)
_XML_NAME = re.compile(f"[{_XML_START}][{_XML_START}\\-.0-9\u00b7\u0300-\u036f\u203f-\u2040]*")
_XML_BAD_CHARS = "[\\x00-\\x08\\x0b\\x0c\\x0e-\\x1f\\x{fffe}\\x{ffff}]"  # RE2 syntax, for pyarrow
_XML_BAD_CHAR = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def xml_name_problem(name: str) -> str | None:
    """Why `name` cannot be an XML element name, or None when it can."""
    if not isinstance(name, str) or name == "":
        return "an XML element name cannot be empty"
    if ":" in name:
        return f"{name!r} is not a valid XML element name: ':' is reserved for namespaces"
    if _XML_NAME.fullmatch(name):
        return None
    if not _XML_NAME.fullmatch(name[0]):
        return (
            f"{name!r} is not a valid XML element name: it cannot start with {name[0]!r} "
            "(start with a letter or '_')"
        )
    bad = next(ch for ch in name if not _XML_NAME.fullmatch("a" + ch))
    return (
        f"{name!r} is not a valid XML element name: it cannot contain {bad!r} "
        "(letters, digits, '_', '-' and '.' are allowed)"
    )


@dataclass(frozen=True)
class FormatOptions:
    """How an export is written: format, its options and compression."""

    format: Literal["csv", "json", "xml", "parquet"]
    csv_delimiter: str = ","
    csv_header: bool = True
    json_lines: bool = False
    xml_root: str = "records"
    xml_record: str = "record"
    compression: Literal["none", "gzip"] = "none"
    parquet_compression: str = "snappy"

    def __post_init__(self) -> None:
        if self.format not in _FORMATS:
            raise ValueError(f"unknown format {self.format!r}; allowed: {', '.join(_FORMATS)}")
        if self.csv_delimiter not in CSV_DELIMITERS:
            allowed = ", ".join(repr(d) for d in CSV_DELIMITERS)
            raise ValueError(f"unsupported CSV delimiter {self.csv_delimiter!r}; allowed: {allowed}")
        if self.compression not in ("none", "gzip"):
            raise ValueError(f"unknown compression {self.compression!r}; allowed: 'none', 'gzip'")
        if self.compression == "gzip" and self.format == "parquet":
            raise ValueError(
                "gzip compression applies to csv, json and xml; Parquet compresses internally "
                "(use parquet_compression)"
            )
        for label, value in (("xml_root", self.xml_root), ("xml_record", self.xml_record)):
            problem = xml_name_problem(value)
            if problem:
                raise ValueError(f"{label}: {problem}")

    @property
    def extension(self) -> str:
        """The file extension without the dot: csv, csv.gz, json, jsonl(.gz), xml(.gz), parquet."""
        base = {"csv": "csv", "json": "jsonl" if self.json_lines else "json", "xml": "xml"}.get(
            self.format, "parquet"
        )
        return base + ".gz" if self.compression == "gzip" else base


@dataclass
class PartFile:
    """One finished file of an export, on local disk under its final name."""

    name: str
    path: Path
    rows: int
    bytes: int


class ExportError(ValueError):
    """A value or column type the chosen format cannot hold; raised before the part holding it is kept."""


_FORMAT_LABELS = {"csv": "CSV", "json": "JSON", "xml": "XML", "parquet": "Parquet"}


def check_exportable(schema: pa.Schema, fmt: str) -> list[str]:
    """Why columns of `schema` cannot be exported as `fmt` (csv, json, xml, parquet): one line each.

    Each problem names the column, its type and what to do, for example ``column "dur" has type
    INTERVAL, which Parquet cannot hold: cast it in the segment (for example to VARCHAR or to a number
    of seconds)``. An empty list means every column can be written (values XML 1.0 cannot carry, such
    as U+FFFF, are only known when the rows are read). `write_parts` runs this before opening any file.
    """
    if fmt not in _FORMATS:
        raise ValueError(f"unknown format {fmt!r}; allowed: {', '.join(_FORMATS)}")
    label = _FORMAT_LABELS[fmt]
    # Parquet: one probe of the whole schema; each column is probed alone only when that one fails.
    parquet_ok = fmt == "parquet" and _parquet_writable(schema)
    problems: list[str] = []
    for field in schema:
        t = field.type
        if fmt == "parquet":
            if _contains(t, pa.types.is_interval) or not (
                parquet_ok or _parquet_writable(pa.schema([field]))
            ):
                problems.append(_cannot_hold(field.name, t, label))
            continue
        if not _renderable(t):
            problems.append(_cannot_hold(field.name, t, label))
        if fmt == "xml":
            problem = xml_name_problem(field.name)
            if problem:
                problems.append(f"column {field.name!r} cannot be an XML element: {problem}")
    return problems


def _cannot_hold(name: str, t: pa.DataType, label: str) -> str:
    hint = "VARCHAR or to a number of seconds" if _contains(t, pa.types.is_interval) else "VARCHAR"
    type_name = (
        "INTERVAL" if pa.types.is_interval(t) else str(t).replace("month_day_nano_interval", "INTERVAL")
    )
    return (
        f'column "{name}" has type {type_name}, which {label} cannot hold: cast it in the segment '
        f"(for example to {hint})"
    )


def _children(t: pa.DataType) -> list[pa.DataType]:
    if pa.types.is_dictionary(t):
        return [t.value_type]
    if pa.types.is_map(t):
        return [t.key_type, t.item_type]
    if pa.types.is_struct(t):
        return [t.field(i).type for i in range(t.num_fields)]
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        return [t.value_type]
    return []


def _contains(t: pa.DataType, predicate: Callable[[pa.DataType], bool]) -> bool:
    """Whether `t`, or a type nested in it, satisfies `predicate`."""
    return predicate(t) or any(_contains(c, predicate) for c in _children(t))


def _renderable(t: pa.DataType) -> bool:
    """Whether the text formats can write values of `t` (unions, run-end encoded, list views: no)."""
    if _children(t):
        return all(_renderable(c) for c in _children(t))
    return isinstance(t, pa.BaseExtensionType) or any(
        check(t)
        for check in (pa.types.is_null, pa.types.is_boolean, pa.types.is_integer, pa.types.is_floating,
                      pa.types.is_decimal, _is_stringy, _is_binary, pa.types.is_date, pa.types.is_time,
                      pa.types.is_timestamp, pa.types.is_duration, pa.types.is_interval)
    )  # fmt: skip


def _parquet_writable(schema: pa.Schema) -> bool:
    """Whether pyarrow's ParquetWriter accepts `schema` (it refuses intervals, unions, ...)."""
    try:
        pq.ParquetWriter(pa.BufferOutputStream(), schema).close()
    except (pa.ArrowException, TypeError):
        return False
    return True


# --------------------------------------------------------------------------------------------------
# Column rendering (vectorised)
# --------------------------------------------------------------------------------------------------


def _is_stringy(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t) or _is_string_view(t)


def _is_string_view(t: pa.DataType) -> bool:
    check = getattr(pa.types, "is_string_view", None)
    return bool(check and check(t))


def _is_binary(t: pa.DataType) -> bool:
    view = getattr(pa.types, "is_binary_view", None)
    return (
        pa.types.is_binary(t)
        or pa.types.is_large_binary(t)
        or pa.types.is_fixed_size_binary(t)
        or bool(view and view(t))
    )


def _json_default(value: object) -> object:
    # Values _json_ready leaves to Python: decimals (exact text), binary (base64), extension values.
    if isinstance(value, decimal.Decimal):
        return format(value, "f")
    if isinstance(value, (bytes, bytearray)):
        return base64.b64encode(value).decode("ascii")
    return str(value)


def _python_text(arr: pa.Array, fn: Callable[[object], str]) -> pa.Array:
    # Rare types only (binary, nested, intervals): per-value Python is acceptable there.
    return pa.array([None if v is None else fn(v) for v in arr.to_pylist()], pa.string())


def _nested_json(value: object) -> str:
    # allow_nan=False: a NaN that slipped past _json_ready fails here instead of making invalid JSON.
    return json.dumps(
        value, ensure_ascii=False, default=_json_default, separators=(",", ":"), allow_nan=False
    )


def _set_t_separator(s: pa.Array) -> pa.Array:
    """Turn 'YYYY-MM-DD hh:mm:ss' into 'YYYY-MM-DDThh:mm:ss' by patching byte 10 of each value."""
    s = s.cast(pa.string())
    n = len(s)
    if n == 0:
        return s
    validity, offsets_buf, data_buf = s.buffers()
    offsets = np.frombuffer(offsets_buf, dtype=np.int32)[s.offset : s.offset + n + 1]
    if data_buf is None or offsets[-1] == offsets[0]:
        return s
    data = np.frombuffer(data_buf, dtype=np.uint8).copy()
    starts = offsets[:-1][(offsets[1:] - offsets[:-1]) >= 11]
    pos = starts + 10
    if not np.all(data[pos] == 0x20):
        # Years outside 0000-9999 shift the layout: fall back to a text replacement.
        return pc.replace_substring(s, " ", "T", max_replacements=1)
    data[pos] = 0x54
    return pa.StringArray.from_buffers(n, offsets_buf, pa.py_buffer(data), validity, s.null_count, s.offset)


# ---- Infinite and far timestamps and dates ------------------------------------------------------
# DuckDB hands 'infinity' / '-infinity' to Arrow as the largest / smallest-but-one integer of the
# column's storage (int64 for timestamps in every unit, int32 days for dates); PostgreSQL stores them
# as the largest and smallest integers. Arrow's own cast turns them, and any year past about 32767,
# into '<value out of range: ...>', so those values are written here instead.

_INT64_MAX, _INT32_MAX = 2**63 - 1, 2**31 - 1
_INFINITY = {_INT64_MAX: "infinity", -_INT64_MAX: "-infinity", -_INT64_MAX - 1: "-infinity",
             _INT32_MAX: "infinity", -_INT32_MAX: "-infinity", -_INT32_MAX - 1: "-infinity"}  # fmt: skip
# Days from 1970-01-01 to 0001-01-01 and to 10000-01-01: Arrow's text is used for years 1-9999 only.
_FIRST_DAY, _END_DAY = -719_162, 2_932_897
_PER_SECOND = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}
_FRACTION_DIGITS = {"s": 0, "ms": 3, "us": 6, "ns": 9}


def _civil_date(days: int) -> tuple[int, int, int]:
    """(year, month, day) of a day number from 1970-01-01, proleptic Gregorian, any year.

    Howard Hinnant's ``civil_from_days``, the algorithm Arrow itself uses for years it can format.
    """
    z = days + 719_468
    era = z // 146_097
    doe = z - era * 146_097
    yoe = (doe - doe // 1460 + doe // 36_524 - doe // 146_096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    day = doy - (153 * mp + 2) // 5 + 1
    month = mp + 3 if mp < 10 else mp - 9
    return yoe + era * 400 + (month <= 2), month, day


def _year_text(year: int) -> str:
    # As Arrow writes years: four digits at least, astronomical numbering (1 BC is 0000, 2 BC -0001).
    return f"{year:04d}" if year >= 0 else f"-{-year:04d}"


def _far_temporal_text(value: int, t: pa.DataType) -> str:
    """ISO 8601 text of a timestamp or date outside years 1-9999 (or 'infinity' / '-infinity')."""
    width_max = _INT32_MAX if pa.types.is_date32(t) else _INT64_MAX
    if abs(value) >= width_max:
        return _INFINITY[value]
    if pa.types.is_date32(t):
        y, m, d = _civil_date(value)
        return f"{_year_text(y)}-{m:02d}-{d:02d}"
    if pa.types.is_date64(t):
        y, m, d = _civil_date(value // 86_400_000)
        return f"{_year_text(y)}-{m:02d}-{d:02d}"
    per_second = _PER_SECOND[t.unit]
    days, rest = divmod(value, 86_400 * per_second)
    seconds, fraction = divmod(rest, per_second)
    y, m, d = _civil_date(days)
    text = (
        f"{_year_text(y)}-{m:02d}-{d:02d}T{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
    )
    digits = _FRACTION_DIGITS[t.unit]
    if digits:
        text += f".{fraction:0{digits}d}"
    # The instant in UTC: a time zone's offset is not known this far from today.
    return text + "+00:00" if t.tz is not None else text


def _far_mask(arr: pa.Array) -> pa.Array | None:
    """Which values of a timestamp/date array fall outside years 1-9999 (None when none do)."""
    t = arr.type
    if pa.types.is_date32(t):
        ints, lo, hi = arr.view(pa.int32()), _FIRST_DAY, _END_DAY - 1
    else:
        per_day = 86_400_000 if pa.types.is_date64(t) else 86_400 * _PER_SECOND[t.unit]
        ints, lo, hi = arr.view(pa.int64()), _FIRST_DAY * per_day, _END_DAY * per_day - 1
        if pa.types.is_timestamp(t) and t.tz is not None and t.tz not in _UTC_NAMES:
            # A day of margin: the wall clock in a zone can cross into year 0 or 10000.
            lo, hi = lo + per_day, hi - per_day
        # The int64 limits are infinity even where they are ordinary instants (nanoseconds: 1677-2262).
        lo, hi = max(lo, -_INT64_MAX + 1), min(hi, _INT64_MAX - 1)
    if len(arr) == arr.null_count:
        return None
    bounds = pc.min_max(ints).as_py()
    if bounds["min"] >= lo and bounds["max"] <= hi:
        return None
    return pc.fill_null(pc.or_(pc.less(ints, lo), pc.greater(ints, hi)), False)


def _temporal_text(arr: pa.Array, fast: Callable[[pa.Array], pa.Array]) -> pa.Array:
    """`fast` (Arrow's text) for years 1-9999; infinity and far years written by _far_temporal_text."""
    mask = _far_mask(arr)
    if mask is None:
        return fast(arr)
    # Arrow's cast would print '<value out of range: ...>' for these (or raise): null them first.
    text = fast(pc.if_else(mask, pa.scalar(None, arr.type), arr))
    ints = arr.filter(mask).view(pa.int32() if pa.types.is_date32(arr.type) else pa.int64())
    far = pa.array([_far_temporal_text(v, arr.type) for v in ints.to_pylist()], pa.string())
    return pc.replace_with_mask(text, mask, far)


def _timestamp_text(arr: pa.Array) -> pa.Array:
    t: pa.TimestampType = arr.type
    if t.tz is None:
        return _set_t_separator(pc.cast(arr, pa.string()))
    if t.tz in _UTC_NAMES:
        naive = _set_t_separator(pc.cast(arr.cast(pa.timestamp(t.unit)), pa.string()))
        return pc.binary_join_element_wise(naive, "+00:00", "")
    fmt = "%Y-%m-%dT%H:%M:%S%z"
    text = pc.strftime(arr, format=fmt)
    # strftime writes +0200; ISO 8601 extended form wants +02:00.
    return pc.replace_substring_regex(text, pattern=r"([+-]\d\d)(\d\d)$", replacement=r"\1:\2")


# ---- Intervals and durations ---------------------------------------------------------------------


def _trunc_divmod(n: int, d: int) -> tuple[int, int]:
    """divmod rounding toward zero, so each part keeps the sign of the whole (-90 min: -1 h, -30 min)."""
    q = abs(n) // d
    q = -q if n < 0 else q
    return q, n - q * d


def _iso_duration(months: int, days: int, nanoseconds: int) -> str:
    """ISO 8601 duration, as PostgreSQL's IntervalStyle iso_8601 writes it (P1Y2M-3DT4H5M6.789S).

    Months, days and time stay apart (a month is not a fixed number of days, nor a day of hours); each
    part carries its own sign; 14 months are 1Y2M and 25 hours stay 25H.
    """
    if not (months or days or nanoseconds):
        return "PT0S"
    years, months = _trunc_divmod(months, 12)
    text = "P" + "".join(f"{v}{u}" for v, u in ((years, "Y"), (months, "M"), (days, "D")) if v)
    if nanoseconds:
        hours, rest = _trunc_divmod(nanoseconds, 3_600_000_000_000)
        minutes, rest = _trunc_divmod(rest, 60_000_000_000)
        text += "T" + "".join(f"{v}{u}" for v, u in ((hours, "H"), (minutes, "M")) if v)
        if rest:
            whole, fraction = divmod(abs(rest), 1_000_000_000)
            seconds = ("-" if rest < 0 else "") + str(whole)
            if fraction:
                seconds += "." + f"{fraction:09d}".rstrip("0")
            text += seconds + "S"
    return text


def _interval_text(arr: pa.Array) -> pa.Array:
    """ISO 8601 durations of an INTERVAL (month_day_nano) or a duration column."""
    if pa.types.is_duration(arr.type):
        scale = 1_000_000_000 // _PER_SECOND[arr.type.unit]
        return _python_text(arr.view(pa.int64()), lambda v: _iso_duration(0, 0, v * scale))
    return _python_text(arr, lambda v: _iso_duration(v.months, v.days, v.nanoseconds))


# ---- Nested values ---------------------------------------------------------------------------------


def _is_interval(t: pa.DataType) -> bool:
    return pa.types.is_interval(t) or pa.types.is_duration(t)


def _rebuild(arr: pa.Array, leaf: Callable[[pa.Array], pa.Array]) -> pa.Array:
    """`arr` with `leaf` applied to every non-nested array inside it (lists, structs and maps rebuilt,
    field names kept; dictionaries decoded)."""
    t = arr.type
    if pa.types.is_dictionary(t):
        return _rebuild(arr.dictionary_decode(), leaf)
    mask = arr.is_null() if arr.null_count else None
    if pa.types.is_map(t):
        entries = arr.values  # every entry of the underlying storage; the offsets pick this slice's
        keys, items = _rebuild(entries.field(0), leaf), _rebuild(entries.field(1), leaf)
        return pa.MapArray.from_arrays(arr.offsets, keys, items, mask=mask)
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        values = _rebuild(arr.values, leaf)
        field = pa.field(t.value_field.name, values.type, t.value_field.nullable)
        cls, make = (pa.ListArray, pa.list_) if pa.types.is_list(t) else (pa.LargeListArray, pa.large_list)
        return cls.from_arrays(arr.offsets, values, type=make(field), mask=mask)
    if pa.types.is_fixed_size_list(t):
        size = t.list_size
        values = _rebuild(arr.values.slice(arr.offset * size, len(arr) * size), leaf)
        field = pa.field(t.value_field.name, values.type, t.value_field.nullable)
        return pa.FixedSizeListArray.from_arrays(values, type=pa.list_(field, size), mask=mask)
    if pa.types.is_struct(t):
        children = [_rebuild(arr.field(i), leaf) for i in range(t.num_fields)]
        fields = [pa.field(t.field(i).name, c.type, t.field(i).nullable) for i, c in enumerate(children)]
        return pa.StructArray.from_arrays(children, fields=fields, mask=mask)
    return leaf(arr)


def _json_leaf(arr: pa.Array) -> pa.Array:
    """A leaf of a nested value in the form json.dumps writes as it appears in a top-level column."""
    t = arr.type
    if pa.types.is_floating(t):
        # NaN and infinities have no JSON form: null, as in a top-level column.
        arr = arr.cast(pa.float64())
        return pc.if_else(pc.is_finite(arr), arr, pa.scalar(None, pa.float64()))
    if pa.types.is_temporal(t):
        return _text(arr)
    if isinstance(t, pa.BaseExtensionType):
        return _python_text(arr, str)
    return arr


def _json_ready(arr: pa.Array) -> pa.Array:
    """A nested array whose values ``to_pylist`` can give and ``json.dumps`` can write strictly."""
    return _rebuild(arr, _json_leaf)


def _nested_text(arr: pa.Array) -> pa.Array:
    return _python_text(_json_ready(arr), _nested_json)


def _decimal_text(arr: pa.Array) -> pa.Array:
    text = pc.cast(arr, pa.string())
    # Arrow writes tiny values as 1E-10; rewrite only those rows in plain notation.
    if not _may_match(text, b"E"):
        return text
    mask = pc.fill_null(pc.match_substring(text, "E"), False)
    if not pc.any(mask).as_py():
        return text
    fixed = [format(v, "f") for v in arr.filter(mask).to_pylist()]
    return pc.replace_with_mask(text, mask, pa.array(fixed, pa.string()))


def _text(arr: pa.Array) -> pa.Array:
    """Plain text of each value (StringArray, NULL kept as null)."""
    t = arr.type
    if pa.types.is_dictionary(t):
        return _text(arr.dictionary_decode())
    if _is_stringy(t):
        return arr.cast(pa.string())
    if pa.types.is_null(t):
        return pa.nulls(len(arr), pa.string())
    if pa.types.is_timestamp(t):
        return _temporal_text(arr, _timestamp_text)
    if pa.types.is_date(t):
        return _temporal_text(arr, lambda a: pc.cast(a, pa.string()))
    if pa.types.is_decimal(t):
        return _decimal_text(arr)
    if pa.types.is_boolean(t) or pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_time(t):
        return pc.cast(arr, pa.string())
    if _is_binary(t):
        return _python_text(arr, lambda v: base64.b64encode(v).decode("ascii"))
    if _is_interval(t):
        return _interval_text(arr)
    if isinstance(t, pa.BaseExtensionType):
        # arrow.uuid and the like: their Python value's text (a UUID in its usual form).
        return _python_text(arr, str)
    return _nested_text(arr)


def _may_match(
    s: pa.Array, chars: bytes, control: bool = False, empty: bool = False, nonchar: bool = False
) -> bool:
    """Cheap scan of a StringArray's raw bytes: False means no value holds any of `chars`.

    With `control`, bytes below 0x20 count too; with `empty`, so does an empty (non-null) string;
    with `nonchar`, so do U+FFFE and U+FFFF (UTF-8 EF BF BE / EF BF BF), which XML 1.0 excludes.
    """
    n = len(s)
    if n == 0 or s.null_count == n:
        return False
    _, offsets_buf, data_buf = s.buffers()
    offsets = np.frombuffer(offsets_buf, dtype=np.int32)[s.offset : s.offset + n + 1]
    if (
        empty
        and bool((offsets[1:] == offsets[:-1]).any())
        and (s.null_count == 0 or pc.any(pc.equal(pc.binary_length(s), 0)).as_py())
    ):
        return True
    if data_buf is None or offsets[-1] == offsets[0]:
        return False
    data = np.frombuffer(data_buf, dtype=np.uint8)[offsets[0] : offsets[-1]]
    if control and bool((data < 0x20).any()):
        return True
    if nonchar and data.size >= 3:
        lead = np.flatnonzero(data[:-2] == 0xEF)
        if lead.size and bool(((data[lead + 1] == 0xBF) & (data[lead + 2] >= 0xBE)).any()):
            return True
    return any(bool((data == c).any()) for c in chars)


def _replace_where(s: pa.Array, pattern: str, fix: Callable[[pa.Array], pa.Array]) -> pa.Array:
    """Apply `fix` only to the values matching regex `pattern` (most values need nothing)."""
    mask = pc.fill_null(pc.match_substring_regex(s, pattern), False)
    if not pc.any(mask).as_py():
        return s
    return pc.replace_with_mask(s, mask, fix(s.filter(mask)))


def _may_need_escaping(t: pa.DataType) -> bool:
    # Numbers, booleans and temporal text (ISO 8601 durations too) never contain delimiters, quotes
    # or markup. Binary is scanned: its base64 text is empty for an empty value, quoted in CSV.
    return not (
        pa.types.is_boolean(t)
        or pa.types.is_integer(t)
        or pa.types.is_floating(t)
        or pa.types.is_decimal(t)
        or pa.types.is_temporal(t)
        or pa.types.is_null(t)
    )


def _csv_quote(value: str, delimiter: str) -> str:
    if value == "" or any(c in value for c in ('"', "\r", "\n", delimiter)):
        return '"' + value.replace('"', '""') + '"'
    return value


def _csv_field(arr: pa.Array, delimiter: str) -> pa.Array:
    text = _text(arr)
    if _may_need_escaping(arr.type) and _may_match(text, b'"\r\n' + delimiter.encode(), empty=True):
        pattern = '^$|["\\r\\n' + re.escape(delimiter) + "]"

        def quote(sub: pa.Array) -> pa.Array:
            doubled = pc.replace_substring(sub, '"', '""')
            return pc.binary_join_element_wise('"', doubled, '"', "")

        text = _replace_where(text, pattern, quote)
    return pc.fill_null(text, "")


_JSON_CONTROL = {i: json.dumps(chr(i))[1:-1] for i in range(32)}


def _json_escape(sub: pa.Array) -> pa.Array:
    sub = pc.replace_substring(sub, "\\", "\\\\")
    sub = pc.replace_substring(sub, '"', '\\"')
    if pc.any(pc.match_substring_regex(sub, "[\\x00-\\x1f]")).as_py():
        for code, escaped in _JSON_CONTROL.items():
            sub = pc.replace_substring(sub, chr(code), escaped)
    return sub


def _json_quoted(text: pa.Array) -> pa.Array:
    return pc.binary_join_element_wise('"', text, '"', "")


def _json_value(arr: pa.Array) -> pa.Array:
    t = arr.type
    if pa.types.is_dictionary(t):
        return _json_value(arr.dictionary_decode())
    if pa.types.is_boolean(t) or pa.types.is_integer(t) or pa.types.is_decimal(t):
        frag = _text(arr)
    elif pa.types.is_floating(t):
        # NaN and infinities have no JSON form.
        finite = pc.is_finite(arr)
        frag = pc.if_else(finite, pc.cast(arr, pa.string()), pa.scalar(None, pa.string()))
    elif pa.types.is_temporal(t) or _is_binary(t):
        # Dates, timestamps ('infinity' too) and ISO 8601 durations are JSON strings.
        frag = _json_quoted(_text(arr))
    elif _is_stringy(t) or isinstance(t, pa.BaseExtensionType):
        text = _text(arr)
        if _may_match(text, b'\\"', control=True):
            text = _replace_where(text, '[\\\\"\\x00-\\x1f]', _json_escape)
        frag = _json_quoted(text)
    elif pa.types.is_null(t):
        frag = pa.nulls(len(arr), pa.string())
    else:
        frag = _nested_text(arr)
    return pc.fill_null(frag, "null")


def _xml_escape(sub: pa.Array) -> pa.Array:
    sub = pc.replace_substring(sub, "&", "&amp;")
    sub = pc.replace_substring(sub, "<", "&lt;")
    sub = pc.replace_substring(sub, ">", "&gt;")
    # A raw CR would be normalised away by XML parsers; a character reference keeps it.
    return pc.replace_substring(sub, "\r", "&#13;")


def _xml_element(arr: pa.Array, name: str) -> pa.Array:
    text = _text(arr)
    if _may_need_escaping(arr.type) and _may_match(text, b"&<>\r", control=True, nonchar=True):
        bad = pc.fill_null(pc.match_substring_regex(text, _XML_BAD_CHARS), False)
        if pc.any(bad).as_py():
            value = text.filter(bad)[0].as_py()
            match = _XML_BAD_CHAR.search(value)
            char = match.group() if match else "?"
            # Not even a character reference can carry these in XML 1.0: refuse rather than alter data.
            raise ExportError(
                f'column "{name}" holds a character XML 1.0 cannot carry (U+{ord(char):04X}): remove it in '
                "the segment (for example with regexp_replace) or export another format"
            )
        text = _replace_where(text, "[&<>\\r]", _xml_escape)
    return pc.fill_null(pc.binary_join_element_wise(f"<{name}>", text, f"</{name}>", ""), "")


# --------------------------------------------------------------------------------------------------
# Row rendering per format
# --------------------------------------------------------------------------------------------------


@dataclass
class _Rows:
    """Rendered rows: row i is data[offsets[i]:offsets[i + 1]]."""

    data: np.ndarray  # uint8
    offsets: np.ndarray  # int64, len(rows) + 1, starting at 0

    @classmethod
    def of(cls, lines: pa.Array, writable: bool = False) -> _Rows:
        n = len(lines)
        _, offsets_buf, data_buf = lines.buffers()
        offsets = np.frombuffer(offsets_buf, dtype=np.int32)[lines.offset : lines.offset + n + 1].astype(
            np.int64
        )
        start, end = int(offsets[0]), int(offsets[-1])
        data = np.frombuffer(data_buf, dtype=np.uint8)[start:end] if end > start else np.zeros(0, np.uint8)
        return cls(data.copy() if writable else data, offsets - start)

    def __len__(self) -> int:
        return len(self.offsets) - 1


class _TextFormat:
    """Renders batches into rows of bytes; also the bytes around rows in each part."""

    header: bytes = b""
    footer: bytes = b""  # closes a part holding rows
    empty_footer: bytes = b""  # closes a part holding none
    sep: bytes = b""  # written between rows; each rendered row ends with it

    def __init__(self, schema: pa.Schema, options: FormatOptions) -> None:
        self.schema = schema
        self.options = options
        self.names = list(schema.names)

    def render(self, batch: pa.RecordBatch) -> _Rows:
        """The batch's rows as bytes, each ending with `sep` (or a newline)."""
        raise NotImplementedError


class _CsvFormat(_TextFormat):
    def __init__(self, schema: pa.Schema, options: FormatOptions) -> None:
        super().__init__(schema, options)
        self.delim = options.csv_delimiter
        if options.csv_header:
            self.header = (self.delim.join(_csv_quote(n, self.delim) for n in self.names) + "\n").encode()

    def render(self, batch: pa.RecordBatch) -> _Rows:
        fields = [_csv_field(col, self.delim) for col in batch.columns]
        # A trailing empty field makes every row end with one delimiter byte, patched into "\n"
        # below: cheaper than a second join to append the newline.
        rows = _Rows.of(pc.binary_join_element_wise(*fields, "", self.delim), writable=True)
        rows.data[rows.offsets[1:] - 1] = 0x0A
        return rows


class _JsonFormat(_TextFormat):
    def __init__(self, schema: pa.Schema, options: FormatOptions) -> None:
        super().__init__(schema, options)
        keys = [json.dumps(n, ensure_ascii=False) for n in self.names]
        self.prefixes = ["{" + keys[0] + ":"] + ["," + k + ":" for k in keys[1:]]
        if options.json_lines:
            self.end = "}\n"
        else:
            self.end = "},\n"
            self.sep = b",\n"
            self.header = b"[\n"
            self.footer = b"\n]\n"
            self.empty_footer = b"]\n"

    def render(self, batch: pa.RecordBatch) -> pa.Array:
        parts: list[object] = []
        for prefix, col in zip(self.prefixes, batch.columns):
            parts.append(prefix)
            parts.append(_json_value(col))
        parts.append(self.end)
        return _Rows.of(pc.binary_join_element_wise(*parts, ""))


class _XmlFormat(_TextFormat):
    def __init__(self, schema: pa.Schema, options: FormatOptions) -> None:
        super().__init__(schema, options)
        for name in self.names:
            problem = xml_name_problem(name)
            if problem:
                raise ValueError(f"column {name!r} cannot be an XML element: {problem}")
        root = options.xml_root
        self.record = options.xml_record
        self.header = f'<?xml version="1.0" encoding="UTF-8"?>\n<{root}>\n'.encode()
        self.footer = self.empty_footer = f"</{root}>\n".encode()

    def render(self, batch: pa.RecordBatch) -> pa.Array:
        elements = [_xml_element(col, name) for col, name in zip(batch.columns, self.names)]
        return _Rows.of(pc.binary_join_element_wise(f"<{self.record}>", *elements, f"</{self.record}>\n", ""))


# --------------------------------------------------------------------------------------------------
# Part files and naming
# --------------------------------------------------------------------------------------------------


class _Namer:
    """Gives finished parts their final names; `deliver_ready` hands them to the caller.

    Delivery always happens in the calling thread (never in a writer thread), so the caller's
    upload code never runs concurrently with its own batch source (often one warehouse connection).
    """

    def __init__(self, base: str, ext: str, workdir: Path, deliver: Callable[[PartFile], None]) -> None:
        self.base, self.ext, self.workdir, self.deliver = base, ext, workdir, deliver
        self.numbered = 0
        self.parts: list[PartFile] = []
        self.ready: deque[PartFile] = deque()
        self.changed = threading.Condition()
        self.caller = threading.current_thread()

    def temp_path(self) -> Path:
        fd, name = tempfile.mkstemp(prefix=".part-", suffix=".tmp", dir=self.workdir)
        os.close(fd)
        return Path(name)

    def finished(self, path: Path, rows: int, more: bool) -> None:
        """Name and deliver a closed part; `more` says whether another part follows it."""
        if not more and self.numbered == 0:
            name = f"{self.base}.{self.ext}"
        else:
            self.numbered += 1
            name = f"{self.base}_part-{self.numbered:05d}.{self.ext}"
        final = self.workdir / name
        os.replace(path, final)
        part = PartFile(name=name, path=final, rows=rows, bytes=final.stat().st_size)
        with self.changed:
            self.ready.append(part)
            self.changed.notify_all()
        if threading.current_thread() is self.caller:
            self.deliver_ready()

    def wake(self) -> None:
        with self.changed:
            self.changed.notify_all()

    def deliver_ready(self) -> None:
        """Deliver, in order, every part named so far (calling thread only)."""
        while True:
            with self.changed:
                if not self.ready:
                    return
                part = self.ready.popleft()
            self.parts.append(part)
            self.deliver(part)

    def discard_ready(self) -> None:
        """After a failure: remove named parts that were never delivered."""
        with self.changed:
            while self.ready:
                self.ready.popleft().path.unlink(missing_ok=True)


class _Sink:
    """An open part file that counts what its final size can be."""

    def __init__(self, path: Path, gzip: bool) -> None:
        self.path = path
        self.file = open(path, "wb", buffering=_IO_BUFFER)  # noqa: SIM115 - closed in close()
        self.gzip = gzip
        self.raw = 0  # uncompressed bytes written
        self.out = 0  # bytes in the file
        self.pending = 0  # uncompressed bytes since the last gzip flush
        self.out_at_flush = 0
        if gzip:
            self.comp = zlib.compressobj(_GZIP_LEVEL, zlib.DEFLATED, 31)

    def write(self, data: bytes | memoryview) -> None:
        size = len(data)
        if not size:
            return
        self.raw += size
        if self.gzip:
            data = self.comp.compress(data)
            self.pending += size
        self.file.write(data)
        self.out += len(data)

    def room(self, limit: int, tail: int) -> int:
        """How many more uncompressed bytes fit, leaving `tail` bytes still to write, within `limit`."""
        if not self.gzip:
            return limit - self.out - tail
        # The largest n whose _gzip_bound still fits after the bytes flushed so far.
        budget = limit - self.out_at_flush - _GZIP_FRAME
        return int((budget - _DEFLATE_EXTRA) / _DEFLATE_FACTOR) - self.pending - tail

    def tighten(self) -> bool:
        """Flush the compressor so the bytes so far are counted exactly; False when nothing changed."""
        if not self.gzip or self.pending == 0:
            return False
        data = self.comp.flush(zlib.Z_SYNC_FLUSH)
        self.file.write(data)
        self.out += len(data)
        self.out_at_flush = self.out
        self.pending = 0
        return True

    def close(self) -> int:
        if self.gzip:
            data = self.comp.flush(zlib.Z_FINISH)
            self.file.write(data)
            self.out += len(data)
        self.file.close()
        return self.out

    def abort(self) -> None:
        self.file.close()
        self.path.unlink(missing_ok=True)


class _TextParts:
    """Writes rendered rows into one or more text parts, splitting at row boundaries."""

    def __init__(self, fmt: _TextFormat, gzip: bool, limit: int | None, namer: _Namer) -> None:
        self.fmt, self.gzip, self.limit, self.namer = fmt, gzip, limit, namer
        self.sink: _Sink | None = None
        self.rows = 0  # rows in the open part
        self.sep = fmt.sep
        self.tail = max(len(fmt.footer), len(fmt.empty_footer))
        if limit is not None:
            # A part holding nothing but its frame must already fit.
            frame = len(fmt.header) + self.tail
            need = frame if not gzip else _gzip_bound(frame)
            if need > limit:
                raise ValueError(f"max_file_bytes={limit} is too small: an empty file needs {need} bytes")

    def _open(self) -> _Sink:
        self.sink = _Sink(self.namer.temp_path(), self.gzip)
        self.sink.write(self.fmt.header)
        self.rows = 0
        return self.sink

    def _write_rows(self, sink: _Sink, data: memoryview, offsets: np.ndarray, a: int, b: int) -> None:
        # Rows carry a trailing separator (",\n" for JSON arrays); the last one of a part is dropped.
        seplen = len(self.sep)
        if self.rows and seplen:
            sink.write(self.sep)
        sink.write(data[offsets[a] : offsets[b] - seplen])
        self.rows += b - a

    def _close(self, more: bool) -> None:
        sink = self.sink
        assert sink is not None
        sink.write(self.fmt.footer if self.rows else self.fmt.empty_footer)
        size = sink.close()
        self.sink = None
        if self.limit is not None and size > self.limit:
            sink.path.unlink(missing_ok=True)
            raise RuntimeError(f"internal error: part of {size} bytes exceeds max_file_bytes={self.limit}")
        self.namer.finished(sink.path, self.rows, more)

    def add(self, rows: _Rows) -> None:
        n = len(rows)
        if n == 0:
            return
        offsets = rows.offsets
        data = memoryview(rows.data)
        sink = self.sink or self._open()
        if self.limit is None:
            self._write_rows(sink, data, offsets, 0, n)
            return
        seplen = len(self.sep)
        i = 0
        while i < n:
            # Largest j with rows i..j-1 fitting: their bytes, minus the dropped trailing
            # separator, plus the separator before them when the part already has rows.
            room = sink.room(self.limit, self.tail)
            budget = room + seplen - (seplen if self.rows else 0)
            j = int(np.searchsorted(offsets, offsets[i] + budget, side="right")) - 1
            if j > i:
                self._write_rows(sink, data, offsets, i, min(j, n))
                i = min(j, n)
            elif sink.tighten():
                continue
            elif self.rows:
                self._close(more=True)
                sink = self._open()
            else:
                row = int(offsets[i + 1] - offsets[i]) - seplen
                raise ValueError(
                    f"a single row needs {row} bytes (row {i + 1} of its batch), more than fits in "
                    f"max_file_bytes={self.limit}; raise the limit"
                )

    def finish(self) -> None:
        if self.sink is None:
            self._open()
        self._close(more=False)

    def abort(self) -> None:
        if self.sink is not None:
            self.sink.abort()
            self.sink = None


def _is_seconds(t: pa.DataType) -> bool:
    return pa.types.is_timestamp(t) and t.unit == "s"


def _seconds_to_millis(arr: pa.Array) -> pa.Array:
    """timestamp[s] as timestamp[ms], what Parquet stores, with +/-infinity kept at the int64 limits.

    pyarrow's own conversion overflows on DuckDB's infinity (the int64 limit in seconds) and fails.
    """
    if not _is_seconds(arr.type):
        return arr
    ints = arr.view(pa.int64())
    limit = _INT64_MAX // 1000
    over, under = pc.greater(ints, limit), pc.less(ints, -limit)
    millis = pc.multiply(pc.if_else(pc.or_(over, under), 0, ints), 1000)
    millis = pc.if_else(over, _INT64_MAX, pc.if_else(under, -_INT64_MAX, millis))
    return millis.view(pa.timestamp("ms", arr.type.tz))


def _parquet_field(field: pa.Field) -> pa.Field:
    if not _contains(field.type, _is_seconds):
        return field
    return field.with_type(_rebuild(pa.array([], field.type), _seconds_to_millis).type)


class _ParquetParts:
    """Writes batches into one or more Parquet files, each under the size limit."""

    def __init__(self, schema: pa.Schema, options: FormatOptions, limit: int | None, namer: _Namer) -> None:
        # Columns holding timestamp[s] are written as timestamp[ms] (see _seconds_to_millis).
        self.convert = [_contains(t, _is_seconds) for t in schema.types]
        if any(self.convert):
            schema = pa.schema([_parquet_field(f) for f in schema], metadata=schema.metadata)
        self.schema, self.limit, self.namer = schema, limit, namer
        self.compression = options.parquet_compression
        self.use_dictionary: bool | list[str] = True
        self.writer: pq.ParquetWriter | None = None
        self.file = None
        self.path: Path | None = None
        self.rows = 0
        self.row_groups = 0
        self.stats_allowance = 0
        self.bytes_per_row: float | None = None
        self.probe: tuple[int, int] | None = None  # (one-row file size, extra bytes per row group)
        self.buffer: list[pa.RecordBatch] = []
        self.buffered = 0

    def _new_writer(self, sink: object) -> pq.ParquetWriter:
        return pq.ParquetWriter(
            sink, self.schema, compression=self.compression, use_dictionary=self.use_dictionary
        )

    def _choose_dictionary(self, table: pa.Table) -> None:
        """Dictionary-encode only columns that repeat values in the first rows.

        Dictionary encoding of unique values (ids, emails, timestamps) more than doubles the write
        time and makes larger files before the writer falls back to plain encoding.
        """
        if self.use_dictionary is not True or table.num_rows < _DICTIONARY_SAMPLE_MIN:
            return
        sample = table.slice(0, _DICTIONARY_SAMPLE)
        chosen = []
        for name, col in zip(sample.column_names, sample.columns):
            t = col.type
            if pa.types.is_nested(t):
                continue
            if pa.types.is_dictionary(t) or pc.count_distinct(col).as_py() <= 0.5 * len(col):
                chosen.append(name)
        self.use_dictionary = chosen

    def _open(self) -> None:
        self.path = self.namer.temp_path()
        self.file = open(self.path, "wb", buffering=_IO_BUFFER)  # noqa: SIM115 - closed in _close()
        self.writer = self._new_writer(self.file)
        self.rows = self.row_groups = self.stats_allowance = 0

    def _probe(self, table: pa.Table) -> tuple[int, int]:
        """Measure the fixed size of a file and the cost of one more row group, with one real row."""
        sizes = []
        for groups in (1, 2):
            out = pa.BufferOutputStream()
            with self._new_writer(out) as w:
                for _ in range(groups):
                    w.write_table(table.slice(0, 1))
            sizes.append(out.getvalue().size)
        return sizes[0], max(sizes[1] - sizes[0], 1)

    def _string_stats(self, table: pa.Table) -> int:
        # Row-group statistics keep min and max of string columns in the footer.
        total = 0
        for col in table.columns:
            if _is_stringy(col.type) or _is_binary(col.type):
                longest = pc.max(pc.binary_length(col)).as_py()
                total += 2 * (longest or 0)
        return total

    def add(self, batch: pa.RecordBatch) -> None:
        if batch.num_rows == 0:
            return
        if any(self.convert):
            columns = [
                _rebuild(c, _seconds_to_millis) if convert else c
                for c, convert in zip(batch.columns, self.convert)
            ]
            batch = pa.RecordBatch.from_arrays(columns, schema=self.schema)
        self.buffer.append(batch)
        self.buffered += batch.num_rows
        if self.buffered >= _ROW_GROUP_ROWS:
            self._flush_buffer()

    def _flush_buffer(self) -> None:
        if not self.buffer:
            return
        table = pa.Table.from_batches(self.buffer, self.schema)
        self.buffer, self.buffered = [], 0
        if self.writer is None:
            self._choose_dictionary(table)
            self._open()
        if self.limit is None:
            self._write(table)
        else:
            self._add_limited(table)

    def _write(self, table: pa.Table) -> None:
        assert self.writer is not None
        self.writer.write_table(table, row_group_size=max(table.num_rows, 1))
        self.rows += table.num_rows
        self.row_groups += 1

    def _add_limited(self, table: pa.Table) -> None:
        assert self.limit is not None
        if self.probe is None:
            self.probe = self._probe(table)
        one_file, per_group = self.probe
        stats = self._string_stats(table)
        i, n = 0, table.num_rows
        while i < n:
            if self.writer is None:
                self._open()
            assert self.file is not None
            on_disk = self.file.tell()
            if self.rows:
                estimate = (on_disk - 4) / self.rows
            else:
                estimate = self.bytes_per_row or table.nbytes / n
            footer = one_file + (self.row_groups + 1) * per_group + self.stats_allowance + stats
            room = self.limit - on_disk - footer
            k = int(room / (estimate * _PARQUET_SAFETY)) if room > 0 else 0
            if k >= 1 or self.rows == 0:
                # A fresh part always takes at least one row; _close verifies the real size.
                k = max(1, min(k, n - i))
                self._write(table.slice(i, k))
                self.stats_allowance += stats
                i += k
            else:
                self._close(more=True)

    def _close(self, more: bool) -> None:
        assert self.writer is not None and self.file is not None and self.path is not None
        self.writer.close()
        self.file.close()
        self.writer = self.file = None
        path, rows = self.path, self.rows
        size = path.stat().st_size
        self.bytes_per_row = size / max(rows, 1)
        if self.limit is not None and size > self.limit:
            self._resplit(path, rows, more)
        else:
            self.namer.finished(path, rows, more)

    def _resplit(self, path: Path, rows: int, more: bool) -> None:
        """A part came out over the limit (estimate too low): rewrite it from disk as two halves."""
        assert self.limit is not None
        if rows <= 1:
            size = path.stat().st_size
            path.unlink(missing_ok=True)
            raise ValueError(
                f"a single row needs a {size}-byte Parquet file, more than max_file_bytes={self.limit}; "
                "raise the limit"
            )
        # Later parts start with a more cautious estimate.
        self.bytes_per_row = (self.bytes_per_row or 0.0) * 1.5 or None
        half = rows // 2
        for start, count, is_last in ((0, half, False), (half, rows - half, True)):
            out = self.namer.temp_path()
            with open(out, "wb") as f, self._new_writer(f) as w:
                pos = 0
                for batch in pq.ParquetFile(path).iter_batches(batch_size=65_536):
                    lo, hi = max(start - pos, 0), min(start + count - pos, batch.num_rows)
                    if lo < hi:
                        w.write_batch(batch.slice(lo, hi - lo))
                    pos += batch.num_rows
                    if pos >= start + count:
                        break
            follows = more if is_last else True
            if out.stat().st_size > self.limit:
                self._resplit(out, count, follows)
            else:
                self.namer.finished(out, count, follows)
        path.unlink(missing_ok=True)

    def finish(self) -> None:
        self._flush_buffer()
        if self.writer is None:
            self._open()
        self._close(more=False)

    def abort(self) -> None:
        if self.writer is not None:
            try:
                self.writer.close()
            finally:
                if self.file is not None:
                    self.file.close()
                if self.path is not None:
                    self.path.unlink(missing_ok=True)
                self.writer = self.file = None


_TEXT_FORMATS: dict[str, type[_TextFormat]] = {"csv": _CsvFormat, "json": _JsonFormat, "xml": _XmlFormat}


def _slices(batch: pa.RecordBatch, schema: pa.Schema, overhead: int) -> Iterable[pa.RecordBatch]:
    """Cut a batch so that each slice's rendered text stays far below Arrow's 2 GiB string limit."""
    n = batch.num_rows
    if n == 0:
        return
    if batch.schema != schema:
        batch = pa.RecordBatch.from_arrays(batch.columns, schema=schema)
    per_row = batch.nbytes / n * 3 + overhead
    step = max(1, min(_MAX_SLICE_ROWS, int(_MAX_SLICE_TEXT_BYTES / per_row)))
    for start in range(0, n, step):
        yield batch.slice(start, step)


def write_parts(
    batches: Iterable[pa.RecordBatch],
    schema: pa.Schema,
    options: FormatOptions,
    base_name: str,
    max_file_bytes: int | None,
    workdir: Path,
    deliver: Callable[[PartFile], None],
) -> list[PartFile]:
    """Stream `batches` into export files under `workdir`, splitting them at `max_file_bytes`.

    Each finished part is renamed to its final name (``{base_name}.{ext}``, or
    ``{base_name}_part-00001.{ext}``... when the export needs several files) and passed to `deliver`
    in order, as soon as its name is known; the caller may delete it afterwards. An empty input still
    gives one file. Returns the parts delivered. Raises ValueError when a single row cannot fit the
    limit, and removes the unfinished part file on any error.
    """
    if max_file_bytes is not None and max_file_bytes <= 0:
        raise ValueError(f"max_file_bytes must be positive, got {max_file_bytes}")
    if len(schema) == 0:
        raise ValueError("an export needs at least one column")
    # Before any file exists: a column the format cannot hold fails the export, not its last part.
    problems = check_exportable(schema, options.format)
    if problems:
        raise ExportError("; ".join(problems))
    workdir = Path(workdir)
    namer = _Namer(base_name, options.extension, workdir, deliver)
    parts: _TextParts | _ParquetParts
    if options.format == "parquet":
        parts = _ParquetParts(schema, options, max_file_bytes, namer)
        # One worker writes in order while this thread pulls the next batch from the source.
        workers, work = 1, parts.add
    else:
        fmt = _TEXT_FORMATS[options.format](schema, options)
        parts = _TextParts(fmt, options.compression == "gzip", max_file_bytes, namer)
        # Workers render batches (pyarrow compute releases the GIL); this thread writes in order.
        workers, work = _render_threads(), fmt.render
    overhead = sum(2 * len(n.encode()) + 8 for n in schema.names)
    in_flight: deque[Future] = deque()
    try:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="dinmo-writer") as pool:
            try:
                for batch in batches:
                    for piece in _slices(batch, schema, overhead):
                        in_flight.append(pool.submit(work, piece))
                        while len(in_flight) > workers + 1:
                            _drain_one(in_flight, parts, namer)
                        namer.deliver_ready()
                while in_flight:
                    _drain_one(in_flight, parts, namer)
                    namer.deliver_ready()
            finally:
                for future in in_flight:
                    future.cancel()
        parts.finish()  # delivers the last part itself
    except BaseException:
        parts.abort()
        namer.discard_ready()
        raise
    return namer.parts


# zlib's conservative deflateBound, n + (n+7)/8 + (n+63)/64 + 5 <= n * 1.140625 + 7 (+5 of slack), plus
# the gzip header 10, trailer 8, final empty block 2 and 16 of slack.
_DEFLATE_FACTOR, _DEFLATE_EXTRA, _GZIP_FRAME = 1.140625, 12, 10 + 8 + 2 + 16


def _gzip_bound(n: int) -> int:
    """The most bytes a gzip file holding ``n`` bytes can take."""
    return int(n * _DEFLATE_FACTOR) + _DEFLATE_EXTRA + _GZIP_FRAME


def _render_threads() -> int:
    return max(1, min(4, os.cpu_count() or 1))


def _drain_one(in_flight: deque[Future], parts: _TextParts | _ParquetParts, namer: _Namer) -> None:
    """Take the oldest result in order, delivering parts a writer thread finishes meanwhile."""
    future = in_flight[0]
    future.add_done_callback(lambda _: namer.wake())
    while not future.done():
        namer.deliver_ready()
        with namer.changed:
            # Checked under the lock that wake() takes: a result finished during the upload above is seen
            # here instead of costing a timed-out wait.
            if not namer.ready and not future.done():
                namer.changed.wait(0.5)
    in_flight.popleft()
    result = future.result()
    if isinstance(parts, _TextParts):
        parts.add(result)


# --------------------------------------------------------------------------------------------------
# DuckDB's own writer (COPY)
# --------------------------------------------------------------------------------------------------

COPY_WRITER = "duckdb_copy"
"""The name the run metadata gives files written by DuckDB's ``COPY (query) TO``."""
ARROW_WRITER = "arrow"
"""The name the run metadata gives files written by ``write_parts`` from Arrow batches."""

_COPY_INTEGERS = frozenset(
    {"TINYINT", "SMALLINT", "INTEGER", "BIGINT", "UTINYINT", "USMALLINT", "UINTEGER", "UBIGINT"}
)
_COPY_DECIMAL = re.compile(r"DECIMAL\(\d+,\d+\)")
# Parquet: the types whose DuckDB Parquet file pyarrow reads back with the same Arrow type and values
# as the file ParquetWriter makes from DuckDB's Arrow batches. HUGEINT is not one (DuckDB stores it as
# DOUBLE), nor UUID, ENUM, TIMESTAMP_S (stored in another unit), INTERVAL (which Parquet here refuses).
_COPY_PARQUET = _COPY_INTEGERS | {
    "BOOLEAN", "FLOAT", "DOUBLE", "VARCHAR", "BLOB", "DATE", "TIME", "TIMESTAMP", "TIMESTAMP WITH TIME ZONE",
    "TIMESTAMP_MS", "TIMESTAMP_NS",
}  # fmt: skip
# Text (CSV, JSON): the types whose text DuckDB writes as the shared writer does, or is made to write
# by an expression in the COPY's SELECT (dates and timestamps). FLOAT is CSV only: DuckDB's JSON writes
# a FLOAT as the DOUBLE it widens to (0.10000000149011612 for 0.1).
_COPY_TEXT = _COPY_INTEGERS | {
    "BOOLEAN", "HUGEINT", "DOUBLE", "VARCHAR", "DATE", "TIMESTAMP", "TIMESTAMP WITH TIME ZONE",
}  # fmt: skip
_PARQUET_CODECS = {"snappy": "snappy", "gzip": "gzip", "zstd": "zstd", "none": "uncompressed"}


@dataclass(frozen=True)
class CopyExport:
    """A DuckDB ``COPY (select) TO '<file>' (options)`` that writes what ``write_parts`` would write.

    ``select`` wraps the export query: its columns taken by position, renamed to the file's column
    names, dates and timestamps turned into the shared writer's ISO 8601 text in the text formats, NaN
    and infinities nulled in JSON. ``options`` is the COPY's option list.
    """

    select: str
    options: str

    def statement(self, path: Path) -> str:
        """The COPY statement writing to ``path`` (a local file name)."""
        return f"COPY ({self.select}) TO {_sql_string(str(path))} ({self.options})"


def _sql_string(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _sql_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _iso_temporal_sql(column: str, kind: str) -> str:
    """DuckDB SQL giving the shared writer's text of a DATE or TIMESTAMP column.

    ``strftime`` writes years 0-9999 and later ones (294247-01-10) as the writer does, and
    ``infinity`` / ``-infinity`` as such; it writes year -43 (44 BC) as ``-43`` where ISO 8601 and
    the writer want ``-0043``, so years before 0 take a second branch (rare values: the first test
    passes every ordinary one).
    """
    date_only = kind == "DATE"
    fmt, rest = ("%Y-%m-%d", "-%m-%d") if date_only else ("%Y-%m-%dT%H:%M:%S.%f", "-%m-%dT%H:%M:%S.%f")
    year_zero = "DATE '0001-01-01 (BC)'" if date_only else "TIMESTAMP '0001-01-01 (BC) 00:00:00'"
    return (
        f"CASE WHEN {column} >= {year_zero} THEN strftime({column}, '{fmt}') "
        f"WHEN isfinite({column}) THEN printf('-%04d', -year({column})) || strftime({column}, '{rest}') "
        f"ELSE CAST({column} AS VARCHAR) END"
    )


def _copy_column_sql(column: str, duck_type: str, fmt: str) -> str | None:
    """The SELECT expression writing ``column`` (of DuckDB type ``duck_type``) as the shared writer
    does in format ``fmt``, or None when DuckDB's COPY cannot."""
    t = duck_type.upper()
    if fmt == "parquet":
        return column if t in _COPY_PARQUET or _COPY_DECIMAL.fullmatch(t) else None
    if not (t in _COPY_TEXT or _COPY_DECIMAL.fullmatch(t) or (t == "FLOAT" and fmt == "csv")):
        return None
    if t in ("DATE", "TIMESTAMP"):
        return _iso_temporal_sql(column, t)
    if t == "TIMESTAMP WITH TIME ZONE":
        # The connection's time zone is UTC: the wall clock in UTC, then the writer's '+00:00'.
        utc = f"CAST({column} AS TIMESTAMP)"
        return f"CASE WHEN isfinite({column}) THEN {_iso_temporal_sql(utc, 'TIMESTAMP')} || '+00:00' " \
               f"ELSE CAST({column} AS VARCHAR) END"
    if t == "DOUBLE" and fmt == "json":
        # JSON has no NaN or Infinity: the writer writes null (DuckDB would write NaN, invalid JSON).
        return f"CASE WHEN isfinite({column}) THEN {column} END"
    return column


def duckdb_copy_plan(sql: str, columns: list[tuple[str, str]], options: FormatOptions) -> CopyExport | str:
    """DuckDB's own writer for the export query ``sql``, or why it cannot write this file.

    ``columns`` are the file's column names with the DuckDB type of each column ``sql`` returns
    (``DECIMAL(12,2)``, ``TIMESTAMP WITH TIME ZONE``). ``COPY (query) TO`` is chosen only when its
    file holds the same values as the shared Arrow writer's, read back by each format's own parser:

    * formats: CSV (every delimiter, header on or off, NULL an empty field, an empty string ``""``),
      JSON arrays and JSON lines, Parquet (``snappy``, ``gzip``, ``zstd`` or none), and ``gzip`` for
      CSV and JSON. Never XML, which COPY does not write.
    * types, CSV and JSON: integers (HUGEINT too), BOOLEAN, VARCHAR, DECIMAL, DOUBLE, DATE, TIMESTAMP
      and TIMESTAMP WITH TIME ZONE; FLOAT in CSV only. Dates and timestamps are written through an
      expression giving the writer's ISO 8601 text (``2025-04-14T09:05:07.042000``, ``+00:00`` for
      time zones, ``infinity``, ``294247-01-10...``, ``-0043-03-15``); in JSON, NaN and infinities
      become null as the writer makes them. DuckDB's number text can differ in form only (``-0.0``
      for ``-0``, ``1e-07`` for ``1e-7``, ``12.5`` for ``12.50`` in JSON): the same number.
    * types, Parquet: integers (not HUGEINT, which DuckDB stores as DOUBLE), BOOLEAN, FLOAT, DOUBLE,
      DECIMAL, VARCHAR, BLOB, DATE, TIME, TIMESTAMP (also _MS and _NS) and TIMESTAMP WITH TIME ZONE.
    * anything else (INTERVAL, BLOB in text, UUID, ENUM, lists, structs, maps, TIME in text,
      TIMESTAMP_S, ...) keeps the shared writer, which renders it as documented above or refuses it
      with the message ``check_exportable`` gives. So does a column name with a line break (CSV
      header quoting).
    """
    fmt = options.format
    if fmt == "xml":
        return "DuckDB's COPY does not write XML"
    label = _FORMAT_LABELS[fmt]
    selects = []
    for i, (name, duck_type) in enumerate(columns):
        if fmt == "csv" and options.csv_header and ("\n" in name or "\r" in name):
            return f"column name {name!r} holds a line break"
        expression = _copy_column_sql(_sql_ident(f"c{i}"), duck_type, fmt)
        if expression is None:
            return f'column "{name}" has type {duck_type}, which DuckDB\'s COPY writes differently in {label}'
        selects.append(f"{expression} AS {_sql_ident(name)}")
    positional = ", ".join(_sql_ident(f"c{i}") for i in range(len(columns)))
    select = f"SELECT {', '.join(selects)} FROM ({sql}) AS _dinmo_export({positional})"
    if fmt == "parquet":
        opts = f"FORMAT parquet, COMPRESSION {_PARQUET_CODECS[options.parquet_compression]}"
    else:
        codec = "gzip" if options.compression == "gzip" else "none"
        if fmt == "csv":
            opts = (f"FORMAT csv, HEADER {str(options.csv_header).lower()}, "
                    f"DELIMITER {_sql_string(options.csv_delimiter)}, QUOTE '\"', ESCAPE '\"', NULLSTR ''")
        else:
            opts = f"FORMAT json, ARRAY {str(not options.json_lines).lower()}"
        opts += f", COMPRESSION {codec}"
    return CopyExport(select=select, options=opts)

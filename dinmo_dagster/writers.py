"""Export file formats and size-based splitting (SPEC section 5), streaming Arrow record batches.

Every text format is rendered with vectorised pyarrow compute, one batch at a time: each column is
turned into its text form once per batch and the rows are assembled with ``binary_join_element_wise``.
No per-row Python runs except for rare types (binary, nested). Knowing each rendered row's exact byte
length makes splitting exact for uncompressed text.

Format choices (the README repeats them):

* CSV: RFC 4180 quoting, UTF-8, ``\\n`` line ends. A field is quoted when it contains the delimiter,
  a double quote, CR or LF (quotes doubled inside); an empty string is written ``""`` so that it
  differs from NULL, which is an empty unquoted field (as DuckDB's COPY does). Booleans ``true`` /
  ``false``; decimals keep their scale (``12.50``), never scientific notation; floats use the
  shortest round-trip text (``nan``/``inf`` as such). pyarrow's own CSVWriter is not used because
  its "needed" style quotes every string value and it cannot report per-row sizes for splitting.
* Timestamps (all text formats): ISO 8601 with ``T``; the fraction follows the column's unit
  (microseconds: ``2025-04-14T09:05:07.042000``, seconds: none). A timezone-aware column is written
  at its wall clock in its own timezone with a ``+HH:MM`` offset (``+00:00`` for UTC). Dates
  ``2025-04-14``; times ``09:05:07.042000``.
* JSON: an array of objects, one object per line (``[\\n{...},\\n{...}\\n]``), or newline-delimited
  JSON with ``json_lines`` (extension ``jsonl``, so consumers do not parse it as one document).
  Integers and decimals are JSON numbers (decimals written from their exact text, scale kept:
  ``12.50``), NaN/Infinity become ``null``, NULL is ``null``, timestamps/dates are ISO strings,
  binary is base64 text, non-ASCII stays UTF-8.
* XML: ``<?xml version="1.0" encoding="UTF-8"?>`` then ``<records>`` with one ``<record>`` per row
  and one element per column (names configurable). A NULL value omits the element (an empty
  element would be indistinguishable from an empty string). Text escapes ``& < >`` and CR; a value
  with a character XML 1.0 cannot carry (control characters other than tab, LF, CR) is an error.
  Column names must be valid XML names (no ``:``); ``xml_name_problem`` says why one is not.
* Parquet: ``pyarrow.parquet.ParquetWriter``, Arrow types kept, ``snappy`` by default, about
  100k rows per row group.
* ``compression="gzip"`` (text formats only) appends ``.gz``.

Threads: the batch source is iterated and ``deliver`` is called only in the calling thread; worker
threads render text batches (pyarrow compute releases the GIL) or write Parquet row groups, so
reading from the warehouse overlaps with formatting. At most a few batches are in flight.

Splitting: with ``max_file_bytes`` set, each file (its compressed size for gzip) stays at or under
the limit and is complete on its own; parts are ``{base}_part-00001.{ext}``, ... and an export that
fits one file keeps ``{base}.{ext}``. Gzip parts are bounded with zlib's worst-case expansion and
sync flushes near the limit; Parquet parts are estimated from the bytes already on disk, verified
after closing, and re-split in halves if an estimate was ever wrong.
"""

from __future__ import annotations

import base64
import datetime as _dt
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

__all__ = ["CSV_DELIMITERS", "FormatOptions", "PartFile", "write_parts", "xml_name_problem"]

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
    if isinstance(value, decimal.Decimal):
        return format(value, "f")
    if isinstance(value, (_dt.datetime, _dt.date, _dt.time)):
        return value.isoformat()
    if isinstance(value, (bytes, bytearray)):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, _dt.timedelta):
        return value.total_seconds()
    return str(value)


def _python_text(arr: pa.Array, fn: Callable[[object], str]) -> pa.Array:
    # Rare types only (binary, nested): per-value Python is acceptable there.
    return pa.array([None if v is None else fn(v) for v in arr.to_pylist()], pa.string())


def _nested_json(value: object) -> str:
    return json.dumps(value, ensure_ascii=False, default=_json_default, separators=(",", ":"))


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
        return _timestamp_text(arr)
    if pa.types.is_decimal(t):
        return _decimal_text(arr)
    if (
        pa.types.is_boolean(t)
        or pa.types.is_integer(t)
        or pa.types.is_floating(t)
        or pa.types.is_date(t)
        or pa.types.is_time(t)
    ):
        return pc.cast(arr, pa.string())
    if _is_binary(t):
        return _python_text(arr, lambda v: base64.b64encode(v).decode("ascii"))
    if pa.types.is_duration(t):
        return pc.cast(arr.cast(pa.int64()), pa.string())
    return _python_text(arr, _nested_json)


def _may_match(s: pa.Array, chars: bytes, control: bool = False, empty: bool = False) -> bool:
    """Cheap scan of a StringArray's raw bytes: False means no value holds any of `chars`.

    With `control`, bytes below 0x20 count too; with `empty`, so does an empty (non-null) string.
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
    return any(bool((data == c).any()) for c in chars)


def _replace_where(s: pa.Array, pattern: str, fix: Callable[[pa.Array], pa.Array]) -> pa.Array:
    """Apply `fix` only to the values matching regex `pattern` (most values need nothing)."""
    mask = pc.fill_null(pc.match_substring_regex(s, pattern), False)
    if not pc.any(mask).as_py():
        return s
    return pc.replace_with_mask(s, mask, fix(s.filter(mask)))


def _may_need_escaping(t: pa.DataType) -> bool:
    # Numbers, booleans and temporal text never contain delimiters, quotes or markup.
    return not (
        pa.types.is_boolean(t)
        or pa.types.is_integer(t)
        or pa.types.is_floating(t)
        or pa.types.is_decimal(t)
        or pa.types.is_temporal(t)
        or pa.types.is_null(t)
        or _is_binary(t)
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
    elif pa.types.is_duration(t):
        frag = _text(arr)
    elif pa.types.is_temporal(t) or _is_binary(t):
        frag = _json_quoted(_text(arr))
    elif _is_stringy(t):
        text = arr.cast(pa.string())
        if _may_match(text, b'\\"', control=True):
            text = _replace_where(text, '[\\\\"\\x00-\\x1f]', _json_escape)
        frag = _json_quoted(text)
    elif pa.types.is_null(t):
        frag = pa.nulls(len(arr), pa.string())
    else:
        frag = _python_text(arr, _nested_json)
    return pc.fill_null(frag, "null")


def _xml_escape(sub: pa.Array) -> pa.Array:
    sub = pc.replace_substring(sub, "&", "&amp;")
    sub = pc.replace_substring(sub, "<", "&lt;")
    sub = pc.replace_substring(sub, ">", "&gt;")
    # A raw CR would be normalised away by XML parsers; a character reference keeps it.
    return pc.replace_substring(sub, "\r", "&#13;")


def _xml_element(arr: pa.Array, name: str) -> pa.Array:
    text = _text(arr)
    if _may_need_escaping(arr.type) and _may_match(text, b"&<>\r", control=True):
        bad = pc.fill_null(pc.match_substring_regex(text, _XML_BAD_CHARS), False)
        if pc.any(bad).as_py():
            value = text.filter(bad)[0].as_py()
            match = _XML_BAD_CHAR.search(value)
            char = match.group() if match else "?"
            raise ValueError(
                f"column {name!r} holds a character XML 1.0 cannot represent (U+{ord(char):04X}); "
                "clean it in the segment's SQL or export another format"
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


class _ParquetParts:
    """Writes batches into one or more Parquet files, each under the size limit."""

    def __init__(self, schema: pa.Schema, options: FormatOptions, limit: int | None, namer: _Namer) -> None:
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

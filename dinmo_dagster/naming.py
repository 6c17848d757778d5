"""File-name templates and destination folders.

A template is literal text plus variables in braces, taken from the sync's start time:

    {YYYY} full year, {YY} two-digit year, {MM} month, {DD} day, {HH} hour (00-23), {mm} minute,
    {ss} second, {ms} millisecond (000-999), {X} Unix seconds, {x} Unix milliseconds.

``{{`` and ``}}`` write a literal brace. The rendered text is the file's base name; the writer adds
the extension (and ``_part-00001`` when an export is split). Positions in error messages are
1-based character positions in the template.

A folder is a relative path inside the bucket (``crm/vip``); ``""`` is the bucket root.

Length limits, so that every object name fits Google Cloud Storage's 1024 bytes (UTF-8) and every
path segment fits the 255 bytes of a local file system's file name:

* a rendered file name: at most ``MAX_NAME_BYTES`` (200) bytes;
* a folder: at most ``MAX_FOLDER_BYTES`` (768) bytes, and each of its segments at most
  ``MAX_SEGMENT_BYTES`` (255) bytes.

The writer adds at most ``MAX_SUFFIX_BYTES`` (32) bytes to a name (``_updated``, ``_part-00001``,
``.jsonl.gz``), so the longest object name is 768 + 1 + 200 + 32 = 1001 bytes.
"""

from __future__ import annotations

import hashlib
import re
from datetime import datetime, timedelta, timezone

__all__ = [
    "TEMPLATE_VARIABLES",
    "TemplateError",
    "join_object_name",
    "render_template",
    "template_variables",
    "validate_folder",
    "validate_template",
]

TEMPLATE_VARIABLES: tuple[str, ...] = ("YYYY", "YY", "MM", "DD", "HH", "mm", "ss", "ms", "X", "x")

# Rendered base names stay well under the 255-byte file-name limit of local filesystems, leaving room
# for "_part-00001" and the extension.
MAX_NAME_BYTES = 200
# GCS caps object names at 1024 bytes; a folder leaves room for "/", a name and the writer's suffixes.
MAX_OBJECT_NAME_BYTES = 1024
MAX_SUFFIX_BYTES = 32
MAX_FOLDER_BYTES = 768
# A folder segment is a directory name in a local destination: 255 bytes on common file systems.
MAX_SEGMENT_BYTES = 255

_ALLOWED = ", ".join("{" + v + "}" for v in TEMPLATE_VARIABLES)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
# A fixed clock to measure the longest possible rendering (all variables have fixed widths until 2286).
_SAMPLE_CLOCK = datetime(2025, 12, 31, 23, 59, 59, 999000, tzinfo=timezone.utc)


class TemplateError(ValueError):
    """An invalid file-name template or folder; the message says what is wrong and what is allowed."""


def _parse(template: str) -> list[tuple[bool, str]]:
    """Split a template into (is_variable, text) pieces, raising TemplateError on bad braces."""
    pieces: list[tuple[bool, str]] = []
    literal: list[str] = []
    i, n = 0, len(template)
    while i < n:
        ch = template[i]
        if ch == "{":
            if template.startswith("{{", i):
                literal.append("{")
                i += 2
                continue
            end = template.find("}", i + 1)
            inner_open = template.find("{", i + 1)
            if end == -1 or (inner_open != -1 and inner_open < end):
                raise TemplateError(
                    f"unclosed brace at position {i + 1} in {_clip(template, 80)!r}; "
                    f"close it with '}}' or write '{{{{' for a literal brace"
                )
            name = template[i + 1 : end]
            if name not in TEMPLATE_VARIABLES:
                what = "empty variable {}" if not name else f"unknown variable {{{name}}}"
                raise TemplateError(f"{what}; allowed: {_ALLOWED} (at position {i + 1})")
            if literal:
                pieces.append((False, "".join(literal)))
                literal = []
            pieces.append((True, name))
            i = end + 1
        elif ch == "}":
            if template.startswith("}}", i):
                literal.append("}")
                i += 2
                continue
            raise TemplateError(
                f"unmatched '}}' at position {i + 1} in {_clip(template, 80)!r}; "
                "write '}}' for a literal brace"
            )
        else:
            literal.append(ch)
            i += 1
    if literal:
        pieces.append((False, "".join(literal)))
    return pieces


def _values(when: datetime) -> dict[str, str]:
    """The text of every variable for one clock reading."""
    # Integer arithmetic on the timedelta avoids float rounding of Unix time.
    millis = (when - _EPOCH) // timedelta(milliseconds=1)
    return {
        "YYYY": f"{when.year:04d}",
        "YY": f"{when.year % 100:02d}",
        "MM": f"{when.month:02d}",
        "DD": f"{when.day:02d}",
        "HH": f"{when.hour:02d}",
        "mm": f"{when.minute:02d}",
        "ss": f"{when.second:02d}",
        "ms": f"{when.microsecond // 1000:03d}",
        "X": str(millis // 1000),
        "x": str(millis),
    }


def _join(pieces: list[tuple[bool, str]], values: dict[str, str]) -> str:
    return "".join(values[text] if is_var else text for is_var, text in pieces)


def validate_template(template: str) -> None:
    """Check a file-name template; raise TemplateError saying what is wrong and what is allowed.

    Rejects unknown or empty variables, unclosed or unmatched braces, '/', '\\', control characters,
    an empty name, a name that is '.' or '..', and names longer than MAX_NAME_BYTES once rendered.
    """
    if not isinstance(template, str):
        raise TemplateError(f"a file name template must be text, got {type(template).__name__}")
    if not template:
        raise TemplateError("a file name template cannot be empty; example: '{YYYY}-{MM}-{DD}_export'")
    pieces = _parse(template)
    literal = "".join(text for is_var, text in pieces if not is_var)
    if "/" in literal:
        raise TemplateError("a file name cannot contain '/'; put sub-folders in 'folder' instead")
    if "\\" in literal:
        raise TemplateError("a file name cannot contain '\\'")
    if _CONTROL.search(literal):
        raise TemplateError("a file name cannot contain control characters (tab, newline, ...)")
    rendered = _join(pieces, _values(_SAMPLE_CLOCK))
    if not rendered.strip():
        raise TemplateError("a file name cannot be empty or only spaces")
    if rendered in (".", ".."):
        raise TemplateError("a file name cannot be '.' or '..'")
    size = len(rendered.encode("utf-8"))
    if size > MAX_NAME_BYTES:
        raise TemplateError(
            f"a file name cannot be longer than {MAX_NAME_BYTES} bytes; this one renders to {size}"
        )


def template_variables(template: str) -> set[str]:
    """The variables a valid template uses, e.g. ``{"YYYY", "MM", "DD"}`` for ``'{YYYY}-{MM}-{DD}_vip'``."""
    return {text for is_var, text in _parse(template) if is_var}


def render_template(template: str, when: datetime) -> str:
    """Render a validated template at the timezone-aware clock `when`.

    Date and time variables use `when`'s wall clock in its own timezone; {X} and {x} are Unix time.
    Example: '{YY}-{MM}-{DD}_export' on 14 April 2025 gives '25-04-14_export'.
    """
    if when.tzinfo is None or when.utcoffset() is None:
        raise ValueError("render_template needs a timezone-aware datetime (for example in UTC)")
    validate_template(template)
    return _join(_parse(template), _values(when))


def validate_folder(folder: str) -> None:
    """Check a folder path inside the bucket; raise TemplateError when it is not a clean relative path.

    '' is the bucket root. Rejected: a leading or trailing '/', an empty segment ('a//b'), a '.' or '..'
    segment, '\\', control characters, a folder longer than MAX_FOLDER_BYTES and a segment longer than
    MAX_SEGMENT_BYTES (UTF-8 bytes).
    """
    if not isinstance(folder, str):
        raise TemplateError(f"a folder must be text, got {type(folder).__name__}")
    if folder == "":
        return
    shown = _clip(folder, 80)
    if folder.startswith("/"):
        raise TemplateError(f"a folder cannot start with '/' (it is relative to the bucket root): {shown!r}")
    if folder.endswith("/"):
        raise TemplateError(f"a folder cannot end with '/': {shown!r}; write it without the trailing slash")
    if "\\" in folder:
        raise TemplateError(f"a folder cannot contain '\\': {shown!r}; separate segments with '/'")
    if _CONTROL.search(folder):
        raise TemplateError(f"a folder cannot contain control characters: {shown!r}")
    for segment in folder.split("/"):
        if segment == "":
            raise TemplateError(f"a folder cannot contain an empty segment ('//'): {shown!r}")
        if segment in (".", ".."):
            raise TemplateError(f"a folder cannot contain a '{segment}' segment: {shown!r}")
        size = len(segment.encode("utf-8"))
        if size > MAX_SEGMENT_BYTES:
            raise TemplateError(f"a folder segment cannot be longer than {MAX_SEGMENT_BYTES} bytes; "
                                f"segment {_clip(segment)!r} has {size}")
    size = len(folder.encode("utf-8"))
    if size > MAX_FOLDER_BYTES:
        raise TemplateError(f"a folder cannot be longer than {MAX_FOLDER_BYTES} bytes (object names are at "
                            f"most {MAX_OBJECT_NAME_BYTES}, with the file name); this one has {size}")


def _clip(text: str, limit: int = 40) -> str:
    """The start of a long text, for messages that must stay on one line."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def join_object_name(folder: str, name: str) -> str:
    """The object name of file `name` in a validated `folder` ('' = bucket root)."""
    return f"{folder}/{name}" if folder else name


# PostgreSQL cuts identifiers at 63 bytes (NAMEDATALEN - 1), the shortest limit of the supported
# warehouses: a longer table name would silently become another table's name.
MAX_IDENTIFIER_BYTES = 63


def warehouse_name(prefix: str, name: str, suffix: str = "") -> str:
    """The name of a table or view the tool creates for ``name`` (``prefix + name + suffix``).

    Names that fit in 63 bytes are kept as they are; a longer one keeps ``prefix`` and ``suffix``,
    the start of ``name`` and 8 hex digits of its SHA-1, so distinct names stay distinct and the same
    name always gives the same table.
    """
    full = f"{prefix}{name}{suffix}"
    if len(full.encode()) <= MAX_IDENTIFIER_BYTES:
        return full
    digest = hashlib.sha1(name.encode()).hexdigest()[:8]
    room = MAX_IDENTIFIER_BYTES - len(prefix.encode()) - len(suffix.encode()) - len(digest) - 1
    return f"{prefix}{name.encode()[:max(room, 0)].decode(errors='ignore')}_{digest}{suffix}"

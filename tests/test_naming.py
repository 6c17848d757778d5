"""File-name templates and folders."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from dinmo_dagster.naming import (
    TEMPLATE_VARIABLES,
    TemplateError,
    join_object_name,
    render_template,
    template_variables,
    validate_folder,
    validate_template,
)

CLOCK = datetime(2025, 4, 14, 9, 5, 7, 42_000, tzinfo=timezone.utc)
ALLOWED = "allowed: {YYYY}, {YY}, {MM}, {DD}, {HH}, {mm}, {ss}, {ms}, {X}, {x}"


def test_variables_listed_in_spec_order() -> None:
    assert TEMPLATE_VARIABLES == ("YYYY", "YY", "MM", "DD", "HH", "mm", "ss", "ms", "X", "x")


@pytest.mark.parametrize(
    ("variable", "expected"),
    [
        ("YYYY", "2025"),
        ("YY", "25"),
        ("MM", "04"),
        ("DD", "14"),
        ("HH", "09"),
        ("mm", "05"),
        ("ss", "07"),
        ("ms", "042"),
        ("X", "1744621507"),
        ("x", "1744621507042"),
    ],
)
def test_each_variable_at_a_fixed_clock(variable: str, expected: str) -> None:
    assert render_template("{" + variable + "}", CLOCK) == expected


def test_spec_example() -> None:
    assert render_template("{YY}-{MM}-{DD}_export", CLOCK) == "25-04-14_export"


def test_all_variables_together_with_literal_text() -> None:
    template = "vip_{YYYY}{MM}{DD}T{HH}{mm}{ss}.{ms}_{X}_{x}"
    assert render_template(template, CLOCK) == "vip_20250414T090507.042_1744621507_1744621507042"


def test_non_utc_clock_uses_its_wall_clock_and_unix_time_is_absolute() -> None:
    paris = CLOCK.astimezone(ZoneInfo("Europe/Paris"))  # 11:05:07 local (CEST, UTC+2)
    assert render_template("{YYYY}-{MM}-{DD} {HH}:{mm}:{ss}.{ms}", paris) == "2025-04-14 11:05:07.042"
    assert render_template("{X}/{x}".replace("/", "-"), paris) == "1744621507-1744621507042"


def test_timezone_can_change_the_date() -> None:
    late = datetime(2025, 12, 31, 23, 30, tzinfo=timezone.utc)
    tokyo = late.astimezone(ZoneInfo("Asia/Tokyo"))
    assert render_template("{YYYY}-{MM}-{DD}_{HH}", tokyo) == "2026-01-01_08"
    fixed = late.astimezone(timezone(timedelta(hours=-5)))
    assert render_template("{YY}{MM}{DD}{HH}", fixed) == "25123118"


def test_milliseconds_truncate_and_pad() -> None:
    clock = datetime(2025, 1, 2, 3, 4, 5, 999_999, tzinfo=timezone.utc)
    assert render_template("{ms}", clock) == "999"
    assert render_template("{ms}", clock.replace(microsecond=1_000)) == "001"
    assert render_template("{x}", clock) == "1735787045999"


def test_year_before_2000_and_short_year() -> None:
    clock = datetime(1999, 1, 1, tzinfo=timezone.utc)
    assert render_template("{YY}{YYYY}", clock) == "991999"


def test_literal_braces() -> None:
    assert render_template("{{YYYY}}_{YYYY}", CLOCK) == "{YYYY}_2025"
    assert render_template("a{{b}}c", CLOCK) == "a{b}c"
    assert render_template("}}{{", CLOCK) == "}{"


def test_render_needs_timezone_aware_clock() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        render_template("{YYYY}", datetime(2025, 4, 14))


def test_render_validates() -> None:
    with pytest.raises(TemplateError, match=r"unknown variable \{Y\}"):
        render_template("{Y}", CLOCK)


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("{YYY}", "unknown variable {YYY}; " + ALLOWED + " (at position 1)"),
        ("export_{yyyy}", "unknown variable {yyyy}; " + ALLOWED + " (at position 8)"),
        ("a{}b", "empty variable {}; " + ALLOWED + " (at position 2)"),
        (
            "data{YYYY",
            "unclosed brace at position 5 in 'data{YYYY'; close it with '}' or write '{{' for a literal brace",
        ),
        (
            "{YY{MM}",
            "unclosed brace at position 1 in '{YY{MM}'; close it with '}' or write '{{' for a literal brace",
        ),
        ("a}b", "unmatched '}' at position 2 in 'a}b'; write '}}' for a literal brace"),
        ("", "a file name template cannot be empty; example: '{YYYY}-{MM}-{DD}_export'"),
        ("crm/{YYYY}", "a file name cannot contain '/'; put sub-folders in 'folder' instead"),
        ("..\\{YYYY}", "a file name cannot contain '\\'"),
        ("a\nb", "a file name cannot contain control characters (tab, newline, ...)"),
        (".", "a file name cannot be '.' or '..'"),
        ("..", "a file name cannot be '.' or '..'"),
        ("   ", "a file name cannot be empty or only spaces"),
        ("x" * 201, "a file name cannot be longer than 200 bytes; this one renders to 201"),
    ],
)
def test_validation_errors(template: str, message: str) -> None:
    with pytest.raises(TemplateError) as info:
        validate_template(template)
    assert str(info.value) == message


def test_template_error_is_a_value_error() -> None:
    assert issubclass(TemplateError, ValueError)


@pytest.mark.parametrize(
    ("template", "rendered"),
    [
        ("{YYYY}-{MM}-{DD}_vip", "2025-04-14_vip"),
        ("export", "export"),
        ("..{YYYY}", "..2025"),
        ("a.b.c", "a.b.c"),
        ("{{}}", "{}"),
        ("été_{x}", "été_1744621507042"),
    ],
)
def test_valid_templates(template: str, rendered: str) -> None:
    assert validate_template(template) is None
    assert render_template(template, CLOCK) == rendered


@pytest.mark.parametrize(
    ("template", "variables"),
    [("{YYYY}-{MM}-{DD}_vip", {"YYYY", "MM", "DD"}), ("export", set()), ("{{ss}}_{X}", {"X"})],
)
def test_template_variables(template: str, variables: set[str]) -> None:
    assert template_variables(template) == variables


def test_long_template_counts_rendered_bytes() -> None:
    # {x} renders 13 digits: 187 + 13 = 200 bytes is allowed, one more is not.
    validate_template("a" * 187 + "{x}")
    with pytest.raises(TemplateError, match="renders to 201"):
        validate_template("a" * 188 + "{x}")


@pytest.mark.parametrize(
    ("folder", "object_name"),
    [
        ("", "a.csv"),
        ("crm", "crm/a.csv"),
        ("crm/vip", "crm/vip/a.csv"),
        ("a/b/c", "a/b/c/a.csv"),
        ("exports.v2/.hidden", "exports.v2/.hidden/a.csv"),
        ("été/2025", "été/2025/a.csv"),
        ("s" * 255, "s" * 255 + "/a.csv"),
    ],
)
def test_valid_folders(folder: str, object_name: str) -> None:
    assert validate_folder(folder) is None
    assert join_object_name(folder, "a.csv") == object_name


def test_folder_segment_of_256_bytes_is_refused_counting_utf8_bytes() -> None:
    with pytest.raises(TemplateError) as info:
        validate_folder("crm/" + "é" * 128)  # 128 characters, 256 bytes
    assert str(info.value) == (
        "a folder segment cannot be longer than 255 bytes; segment 'ééééééééééééééééééééééééééééééééééééé...' has 256"
    )


def test_folder_of_768_bytes_is_allowed_and_769_is_not() -> None:
    longest = "/".join(["a" * 255, "b" * 255, "c" * 254])
    assert len(longest.encode()) == 766
    assert validate_folder(longest + "/d") is None
    with pytest.raises(TemplateError) as info:
        validate_folder(longest + "/de")
    assert str(info.value) == (
        "a folder cannot be longer than 768 bytes (object names are at most 1024, with the file name); "
        "this one has 769"
    )


def test_longest_folder_and_name_with_every_suffix_fit_a_gcs_object_name() -> None:
    folder = "/".join(["a" * 255, "b" * 255, "c" * 254, "d"])
    assert len(folder.encode()) == 768 and validate_folder(folder) is None
    name = "n" * 200 + "_updated_part-00001.jsonl.gz"
    validate_template("n" * 200)
    assert len(join_object_name(folder, name).encode("utf-8")) <= 1024


@pytest.mark.parametrize(
    ("folder", "message"),
    [
        ("/crm", "a folder cannot start with '/' (it is relative to the bucket root): '/crm'"),
        ("crm/", "a folder cannot end with '/': 'crm/'; write it without the trailing slash"),
        ("crm//vip", "a folder cannot contain an empty segment ('//'): 'crm//vip'"),
        ("crm/../x", "a folder cannot contain a '..' segment: 'crm/../x'"),
        ("..", "a folder cannot contain a '..' segment: '..'"),
        ("./crm", "a folder cannot contain a '.' segment: './crm'"),
        ("crm\\vip", "a folder cannot contain '\\': 'crm\\\\vip'; separate segments with '/'"),
        ("crm\tvip", "a folder cannot contain control characters: 'crm\\tvip'"),
    ],
)
def test_folder_errors(folder: str, message: str) -> None:
    with pytest.raises(TemplateError) as info:
        validate_folder(folder)
    assert str(info.value) == message


def test_join_object_name() -> None:
    assert join_object_name("", "a.csv") == "a.csv"
    assert join_object_name("crm/vip", "a.csv") == "crm/vip/a.csv"


def test_warehouse_names_fit_postgresql_and_stay_distinct() -> None:
    from dinmo_dagster.naming import warehouse_name

    assert warehouse_name("snap__", "vip", "__20250414t090507_042000z") == "snap__vip__20250414t090507_042000z"
    long_a, long_b = "x" * 59 + "diff", "x" * 59 + "_ups"
    a = warehouse_name("snap__", long_a, "__20250414t090507_042000z")
    b = warehouse_name("snap__", long_b, "__20250414t090507_042000z")
    assert len(a.encode()) == len(b.encode()) == 63
    assert a != b and a.startswith("snap__xxx") and a.endswith("__20250414t090507_042000z")
    assert a == "snap__" + "x" * 23 + "_c458ca76__20250414t090507_042000z"  # start of the name, its SHA-1
    assert warehouse_name("model_", "é" * 40) == warehouse_name("model_", "é" * 40)  # stable, valid UTF-8
    assert len(warehouse_name("model_", "é" * 40).encode()) <= 63

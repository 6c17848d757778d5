"""Project configuration: loading, validation messages, `dinmo validate` exit codes."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from dinmo_dagster.config import QUICKSTART_DIR, ProjectError, load_project

BASE = """
sources:
  warehouse: {type: duckdb, path: data/warehouse.duckdb}
models:
  customers:
    source: warehouse
    table: raw.customers
    primary_key: customer_id
    relationships:
      - {name: orders, model: orders, type: one_to_many, on: {customer_id: customer_id}}
  orders:
    source: warehouse
    kind: fact
    time_column: ordered_at
    table: raw.orders
    primary_key: order_id
segments:
  vip:
    model: customers
    sql: "select * from {{ model }} where ltv > 500"
destinations:
  exports: {type: gcs, bucket: acme-activation, project: acme-data, service_account_json: {env: GCS_KEY}}
activations:
  daily_vip:
    segment: vip
    destination: exports
    folder: crm/vip
    file_name: "{YYYY}-{MM}-{DD}_vip"
    format: csv
    mapping: {customer_id: id, email: Email}
    run_type: full_then_delta
    sync_mode: difference
"""


def write(tmp_path: Path, text: str, name: str = "dinmo.yaml") -> Path:
    (tmp_path / name).write_text(textwrap.dedent(text))
    return tmp_path


def problems(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(ProjectError) as exc:
        load_project(write(tmp_path, text))
    return exc.value.problems


def test_quickstart_loads() -> None:
    project = load_project(QUICKSTART_DIR)
    assert sorted(project.models) == ["customers", "orders"]
    assert sorted(project.activations) == ["subscribers_snapshot", "vip_europe_daily", "vip_to_crm"]
    # YAML 1.1 would read an `on:` key as the boolean True.
    assert project.models["customers"].relationships[0].on == {"customer_id": "customer_id"}


def test_base_project_is_valid(tmp_path: Path) -> None:
    project = load_project(write(tmp_path, BASE))
    a = project.activations["daily_vip"]
    assert (a.sync_mode, a.effective_run_type, a.csv.delimiter) == ("difference", "full_then_delta", ",")
    assert project.resolve_path("data/warehouse.duckdb") == tmp_path / "data/warehouse.duckdb"


def test_unknown_key_is_an_error_listing_allowed_keys(tmp_path: Path) -> None:
    got = problems(tmp_path, BASE.replace("    format: csv\n", "    format: csv\n    fromat: csv\n"))
    assert len(got) == 1
    assert got[0].startswith("dinmo.yaml: activations.daily_vip: unknown key 'fromat'; did you mean 'format'? "
                             "allowed: ")
    assert "file_name" in got[0] and "sync_mode" in got[0]


def test_unknown_key_far_from_any_allowed_key_has_no_suggestion(tmp_path: Path) -> None:
    got = problems(tmp_path, BASE.replace("    format: csv\n", "    format: csv\n    zzz: 1\n"))
    assert len(got) == 1
    assert got[0].startswith("dinmo.yaml: activations.daily_vip: unknown key 'zzz'; allowed: alerts, audience, "
                             "compression, csv, ")


def test_typo_in_a_required_key_is_one_problem_and_references_to_the_model_still_resolve(tmp_path: Path) -> None:
    got = problems(tmp_path, BASE.replace("primary_key: customer_id", "primary_kye: customer_id"))
    assert got == [
        ("dinmo.yaml: models.customers: unknown key 'primary_kye'; did you mean 'primary_key'? allowed: attributes, "
        "calculated_fields, categorical, class, custom_attributes, description, identifiers, kind, materialized, "
        "max_duplicate_pct, order_by, primary_key, relationships, schedule, source, sql, table, time_column")]


def test_a_model_that_fails_to_parse_still_counts_as_defined(tmp_path: Path) -> None:
    got = problems(tmp_path, BASE.replace("    kind: fact\n", "    kind: facts\n"))
    assert got == ["dinmo.yaml: models.orders.kind: found 'facts'; allowed: 'dimension' or 'fact'"]


def test_misspelt_section_is_one_problem(tmp_path: Path) -> None:
    got = problems(tmp_path, BASE.replace("segments:", "segmets:"))
    assert got == [("dinmo.yaml: segmets: unknown key 'segmets'; did you mean 'segments'? allowed: sources, models, "
                   "segments, destinations, activations, identity, predictions, settings, alerts")]


def test_unknown_reference_suggests_the_closest_name(tmp_path: Path) -> None:
    got = problems(tmp_path, BASE.replace("model: customers\n    sql", "model: custmers\n    sql"))
    assert got == [("dinmo.yaml: segments.vip.model: unknown model 'custmers'; did you mean 'customers'? "
                   "allowed: customers, orders")]


def test_a_list_as_source_type_is_a_problem_not_a_crash(tmp_path: Path) -> None:
    got = problems(tmp_path, BASE.replace("type: duckdb", "type: [duckdb]"))
    assert got == [("dinmo.yaml: sources.warehouse.type: found ['duckdb']; allowed: duckdb, postgres, snowflake, "
                   "bigquery, redshift, databricks")]


def test_wrong_enum_value_names_found_and_allowed(tmp_path: Path) -> None:
    got = problems(tmp_path, BASE.replace("format: csv", "format: xlsx"))
    assert got == [("dinmo.yaml: activations.daily_vip.format: found 'xlsx'; "
                   "allowed: 'csv', 'json', 'xml' or 'parquet'")]


def test_unknown_reference_lists_defined_names(tmp_path: Path) -> None:
    got = problems(tmp_path, BASE.replace("model: customers\n    sql", "model: clients\n    sql"))
    assert got == ["dinmo.yaml: segments.vip.model: unknown model 'clients'; allowed: customers, orders"]


def test_inline_secret_is_refused(tmp_path: Path) -> None:
    got = problems(tmp_path, BASE.replace("service_account_json: {env: GCS_KEY}",
                                          "service_account_json: '{\"private_key\": \"x\"}'"))
    assert got == [("dinmo.yaml: destinations.exports.service_account_json: secrets must not be written in the "
                   "YAML; found an inline value; allowed: {env: VARIABLE_NAME}")]
    assert all("private_key" not in p for p in got)


def test_full_then_delta_with_snapshot_says_why(tmp_path: Path) -> None:
    got = problems(tmp_path, BASE.replace("sync_mode: difference", "sync_mode: snapshot"))
    assert got == [("dinmo.yaml: activations.daily_vip.run_type: 'full_then_delta' cannot be used with sync_mode "
                   "'snapshot' (a snapshot always exports the full segment); allowed with snapshot: full_only")]


def test_invalid_template_and_folder(tmp_path: Path) -> None:
    text = BASE.replace('"{YYYY}-{MM}-{DD}_vip"', '"{YYY}_vip"').replace("folder: crm/vip", "folder: ../up")
    got = problems(tmp_path, text)
    assert len(got) == 2
    assert got[0].startswith("dinmo.yaml: activations.daily_vip.file_name: unknown variable {YYY}")
    assert got[1].startswith("dinmo.yaml: activations.daily_vip.folder: a folder cannot contain a '..' segment")


def test_two_columns_mapped_to_one_name(tmp_path: Path) -> None:
    got = problems(tmp_path, BASE.replace("{customer_id: id, email: Email}", "{customer_id: id, email: id}"))
    assert got == [("dinmo.yaml: activations.daily_vip.mapping: columns 'customer_id' and 'email' are both "
                   "mapped to 'id'; destination names must be unique")]


@pytest.mark.parametrize(("cron", "message"), [
    ("61 * * * *", "minute '61' is out of range in '61 * * * *'; allowed: 0-59"),
    ("0 25 * * *", "hour '25' is out of range in '0 25 * * *'; allowed: 0-23"),
    ("0 6 0 * *", "day '0' is out of range in '0 6 0 * *'; allowed: 1-31"),
    ("0 6 * 13 *", "month '13' is out of range in '0 6 * 13 *'; allowed: 1-12 or jan-dec"),
    ("0 6 * * 1-8", "weekday '8' is out of range in '0 6 * * 1-8'; allowed: 0-7 or sun-sat (0 and 7 are Sunday)"),
    ("0,15,75 6 * * *", "minute '75' is out of range in '0,15,75 6 * * *'; allowed: 0-59"),
    ("*/0 * * * *", "minute step '0' is not valid in '*/0 * * * *'; allowed: a whole number of at least 1 after '/'"),
    ("0 6 * * funday", ("weekday 'funday' is not valid in '0 6 * * funday'; allowed: *, a number, a range a-b, "
                       "a step */n or a-b/n, or a list of these separated by ','")),
    ("0 6 30 2 *", "day 30 never occurs in February, in '0 6 30 2 *'; allowed: 1-29 in February"),
    ("0 6 * *", ("invalid cron expression '0 6 * *': found 4 field(s); allowed: five fields "
                "'minute hour day month weekday'")),
    ("0 0 6 * * *", ("invalid cron expression '0 0 6 * * *': found 6 field(s); allowed: five fields "
                    "'minute hour day month weekday'")),
])
def test_invalid_cron_names_the_field_and_its_range(tmp_path: Path, cron: str, message: str) -> None:
    got = problems(tmp_path, BASE + f'    schedule: {{cron: "{cron}"}}\n')
    assert got == [f"dinmo.yaml: activations.daily_vip.schedule: cron: {message}"]


def test_invalid_validation_cron_is_a_problem(tmp_path: Path) -> None:
    got = problems(tmp_path, BASE + 'settings: {validation_cron: "0 24 * * *"}\n')
    assert got == ["dinmo.yaml: settings.validation_cron: hour '24' is out of range in '0 24 * * *'; allowed: 0-23"]


def test_malformed_yaml_names_the_line(tmp_path: Path) -> None:
    got = problems(tmp_path, "sources:\n  warehouse: {type: duckdb\n")
    assert len(got) == 1 and got[0].startswith("dinmo.yaml: line ")
    assert "malformed YAML" in got[0]


def test_unknown_source_type(tmp_path: Path) -> None:
    got = problems(tmp_path, BASE.replace("type: duckdb", "type: oracle"))
    assert got[0] == ("dinmo.yaml: sources.warehouse.type: found 'oracle'; allowed: duckdb, postgres, snowflake, "
                      "bigquery, redshift, databricks")


def test_directory_of_files_and_duplicates(tmp_path: Path) -> None:
    sources, rest = BASE.split("models:", 1)
    write(tmp_path, sources, "a_sources.yaml")
    write(tmp_path, "models:" + rest, "b_rest.yaml")
    project = load_project(tmp_path)
    assert project.origins["activations.daily_vip"] == "b_rest.yaml"
    write(tmp_path, sources, "c_again.yaml")
    with pytest.raises(ProjectError) as exc:
        load_project(tmp_path)
    assert exc.value.problems == ["c_again.yaml: sources.warehouse: already defined in a_sources.yaml"]


def test_dinmo_validate_exit_codes_and_writes_nothing(tmp_path: Path) -> None:
    project = write(tmp_path, BASE.replace("format: csv", "format: xlsx"))
    before = sorted(p.name for p in tmp_path.iterdir())
    proc = subprocess.run([sys.executable, "-m", "dinmo_dagster.cli", "--project", str(project), "validate"],
                          check=False, capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 1
    assert proc.stdout.splitlines() == [
        f"1 problem(s) in {project}:",
        "  dinmo.yaml: activations.daily_vip.format: found 'xlsx'; allowed: 'csv', 'json', 'xml' or 'parquet'",
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    write(tmp_path, BASE)
    ok = subprocess.run([sys.executable, "-m", "dinmo_dagster.cli", "--project", str(project), "validate"],
                        check=False, capture_output=True, text=True, cwd=tmp_path)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.strip().endswith("1 destination(s), 1 activation(s): valid")


# ----------------------------------------------------------------------------------- malformed input
# Each of these took a traceback, a minute or gigabytes before; now one line names the file and where.

def alias_bomb(levels: int = 25) -> str:
    """A filter of 2**levels conditions written in `levels` lines (the YAML "billion laughs")."""
    lines = ["        - &a0 {all: [{attribute: ltv, op: gt, value: 1}, {attribute: ltv, op: gt, value: 1}]}"]
    lines += [f"        - &a{i} {{all: [*a{i - 1}, *a{i - 1}]}}" for i in range(1, levels)]
    return "  bomb:\n    model: customers\n    filter:\n      any:\n" + "\n".join(lines) + "\n"


def test_alias_bomb_in_a_filter_is_refused_at_load(tmp_path: Path) -> None:
    got = problems(tmp_path, BASE.replace("segments:\n", "segments:\n" + alias_bomb()))
    assert got == [("dinmo.yaml: line 30, column 27: segments.bomb.filter.any[8].all[1]: the aliases of this file "
                   "stand for more than 10000 values (at alias *a7); allowed: at most 10000 values repeated "
                   "through aliases per file")]


def test_a_few_aliases_are_fine(tmp_path: Path) -> None:
    text = BASE.replace("    format: csv\n", "    format: csv\n    csv: &semicolon {delimiter: ';'}\n")
    text += "  weekly_vip:\n    segment: vip\n    destination: exports\n    file_name: 'weekly_{X}'\n" \
            "    csv: *semicolon\n"
    project = load_project(write(tmp_path, text))
    assert project.activations["weekly_vip"].csv.delimiter == ";"


def position(text: str, needle: str, offset: int = 0) -> str:
    """``line L, column C`` (1-based) of the first ``needle`` in the dedented ``text``, plus ``offset``
    characters, found independently of the loader."""
    lines = textwrap.dedent(text).split("\n")
    line = next(i for i, content in enumerate(lines) if needle in content)
    return f"line {line + 1}, column {lines[line].index(needle) + 1 + offset}"


def test_alias_inside_the_value_it_names_is_refused(tmp_path: Path) -> None:
    text = BASE + "settings: &loop {validation_cron: *loop}\n"
    got = problems(tmp_path, text)
    assert got == [(f"dinmo.yaml: {position(text, '*loop')}: settings.validation_cron: the alias *loop is inside the "
                   "value it refers to; allowed: aliases of values defined before and outside them")]


def test_a_key_written_twice_in_one_mapping_is_an_error_not_a_silent_replacement(tmp_path: Path) -> None:
    text = BASE + "  daily_vip: {segment: vip, destination: exports, file_name: copy}\n"
    got = problems(tmp_path, text)
    at = position(text, "daily_vip: {")
    assert got == [(f"dinmo.yaml: {at}: activations: the key 'daily_vip' appears twice in this mapping; "
                    "allowed: each key once (the second would silently replace the first)")]


def test_non_utf8_file_names_line_and_column(tmp_path: Path) -> None:
    text = BASE.replace("project: acme-data", "project: acmé")
    (tmp_path / "dinmo.yaml").write_bytes(textwrap.dedent(text).encode("latin-1"))
    with pytest.raises(ProjectError) as exc:
        load_project(tmp_path)
    assert exc.value.problems == [(f"dinmo.yaml: {position(text, 'é')}: found byte 0xe9, which is not UTF-8; "
                                  "allowed: UTF-8 text (save the file as UTF-8)")]


def test_nul_character_names_line_and_column(tmp_path: Path) -> None:
    text = BASE.replace("file_name: ", "file_name: été\0")  # characters before it, not bytes, count
    got = problems(tmp_path, text)
    assert got == [(f"dinmo.yaml: {position(text, chr(0))}: found the character #x0000, which YAML does not allow; "
                   "allowed: printable characters, tabs and line breaks")]


def test_100k_nested_brackets_are_refused(tmp_path: Path) -> None:
    got = problems(tmp_path, "sources: " + "[" * 100_000 + "]" * 100_000 + "\n")
    assert len(got) == 1
    assert got[0].startswith("dinmo.yaml: line 1, column ")
    assert got[0].endswith(": nested deeper than 64 levels; allowed: at most 64 levels of mappings and lists "
                           "(aliases included)")


def test_filter_nested_10k_deep_is_refused(tmp_path: Path) -> None:
    condition = "{attribute: ltv, op: gt, value: 1}"
    for _ in range(10_000):
        condition = "{not: " + condition + "}"
    text = BASE.replace('    sql: "select * from {{ model }} where ltv > 500"\n', f"    filter: {condition}\n")
    got = problems(tmp_path, text)
    # The document, segments and vip are 3 levels: the 62nd '{' of the filter is the 65th level.
    where = position(text, "{not: ", 61 * len("{not: "))
    assert got == [(f"dinmo.yaml: {where}: segments.vip.filter.not.not.not.not.not.(53 more).not.not.not: "
                   "nested deeper than 64 levels; allowed: at most 64 levels of mappings and lists "
                   "(aliases included)")]


def test_aliases_that_nest_deeper_than_the_limit_are_refused(tmp_path: Path) -> None:
    # 70 anchors, each one level deeper than the last: a small file, but a tree 70 levels deep.
    chain = "".join(f"  n{i}: &n{i} [*n{i - 1}]\n" for i in range(1, 70))
    text = "x:\n  n0: &n0 [1]\n" + chain
    got = problems(tmp_path, text)
    # The document and x are 2 levels, n62's list a 3rd; *n61 stands for 62 more: 65.
    assert got == [(f"dinmo.yaml: {position(text, '*n61')}: x.n62[0]: nested deeper "
                   "than 64 levels; allowed: at most 64 levels of mappings and lists (aliases included)")]


def test_filter_nested_deeper_than_12_conditions_is_refused(tmp_path: Path) -> None:
    condition = "{attribute: ltv, op: gt, value: 1}"
    for _ in range(12):
        condition = "{not: " + condition + "}"
    got = problems(tmp_path, BASE.replace('    sql: "select * from {{ model }} where ltv > 500"\n',
                                          f"    filter: {condition}\n"))
    assert got == ["dinmo.yaml: segments.vip.filter" + ".not" * 12 + ": conditions nested deeper than 12 levels; "
                   "allowed: at most 12 levels of all, any, not and relation where"]


def test_calculated_field_where_nested_too_deep_is_refused(tmp_path: Path) -> None:
    condition = "{attribute: amount, op: gt, value: 1}"
    for _ in range(12):
        condition = "{any: [" + condition + "]}"
    field = ("    calculated_fields:\n      - {name: big_orders, type: aggregate, relation: orders, function: count, "
             f"where: {condition}}}\n")
    got = problems(tmp_path, BASE.replace("    primary_key: customer_id\n", "    primary_key: customer_id\n" + field))
    assert got == ["dinmo.yaml: models.customers.calculated_fields[0].where" + ".any[0]" * 12 + ": conditions nested "
                   "deeper than 12 levels; allowed: at most 12 levels of all, any, not and relation where"]


def test_file_larger_than_the_limit_is_refused(tmp_path: Path) -> None:
    padding = "# " + "x" * 98 + "\n"
    got = problems(tmp_path, BASE + padding * 20_000)
    assert len(got) == 1
    size = (tmp_path / "dinmo.yaml").stat().st_size
    assert got == [f"dinmo.yaml: the file has {size} bytes; allowed: at most 2000000 bytes per project file"]


def test_too_many_values_are_refused(tmp_path: Path) -> None:
    values = ",".join("1" for _ in range(200_001))
    got = problems(tmp_path, BASE.replace('    sql: "select * from {{ model }} where ltv > 500"\n',
                                          f"    filter: {{attribute: ltv, op: in, value: [{values}]}}\n"))
    assert len(got) == 1
    assert got[0].startswith("dinmo.yaml: line 20, column ")
    assert got[0].endswith(": segments.vip.filter.value[199942]: more than 200000 values in one file; allowed: at "
                           "most 200000 (keep long lists of values in a warehouse table and select them with a "
                           "SQL segment)")


def test_many_problems_are_capped(tmp_path: Path) -> None:
    extra = "".join(f"    unknown_{i}: 1\n" for i in range(60))
    got = problems(tmp_path, BASE.replace("    format: csv\n", "    format: csv\n" + extra))
    assert len(got) == 51
    assert got[-1] == "... and 10 more problem(s); fix these first"


def test_malformed_input_gives_one_line_from_dinmo_validate(tmp_path: Path) -> None:
    write(tmp_path, BASE.replace("segments:\n", "segments:\n" + alias_bomb()))
    proc = subprocess.run([sys.executable, "-m", "dinmo_dagster.cli", "--project", str(tmp_path), "validate"],
                          check=False, capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert proc.returncode == 1
    assert proc.stdout.splitlines() == [
        f"1 problem(s) in {tmp_path}:",
        ("  dinmo.yaml: line 30, column 27: segments.bomb.filter.any[8].all[1]: the aliases of this file stand for "
        "more than 10000 values (at alias *a7); allowed: at most 10000 values repeated through aliases per file")]
    assert "Traceback" not in proc.stderr


# ------------------------------------------------------------------------------- names and folders

def test_empty_mapping_target_is_refused(tmp_path: Path) -> None:
    got = problems(tmp_path, BASE.replace("{customer_id: id, email: Email}", "{customer_id: '', email: ' '}"))
    assert got == [
        ("dinmo.yaml: activations.daily_vip.mapping.customer_id: found the destination name ''; allowed: a column "
        "name with at least one visible character"),
        ("dinmo.yaml: activations.daily_vip.mapping.email: found the destination name ' '; allowed: a column "
        "name with at least one visible character")]


def test_folder_segment_longer_than_255_bytes_is_refused(tmp_path: Path) -> None:
    got = problems(tmp_path, BASE.replace("folder: crm/vip", "folder: crm/" + "v" * 300))
    assert got == [("dinmo.yaml: activations.daily_vip.folder: a folder segment cannot be longer than 255 bytes; "
                   "segment 'vvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvv...' has 300")]


def test_folder_longer_than_768_bytes_is_refused(tmp_path: Path) -> None:
    got = problems(tmp_path, BASE.replace("folder: crm/vip", "folder: " + "/".join(["é" * 100] * 4)))
    assert got == [("dinmo.yaml: activations.daily_vip.folder: a folder cannot be longer than 768 bytes (object names "
                   "are at most 1024, with the file name); this one has 803")]


# ----------------------------------------------------------------------------------------- warnings

def test_change_set_file_name_without_seconds_is_a_warning(tmp_path: Path) -> None:
    project = load_project(write(tmp_path, BASE))
    assert project.warnings == [
        ("dinmo.yaml: activations.daily_vip.file_name: '{YYYY}-{MM}-{DD}_vip' has no seconds or finer variable "
        "({ss}, {ms}, {X} or {x}), so two difference syncs in the same day would render the same name and the "
        "later sync would refuse to overwrite the earlier file; add {HH}{mm}{ss} (or {X})")]


@pytest.mark.parametrize(("mode", "template", "expected"), [
    ("upsert", "vip_{HH}{mm}", "so two upsert syncs in the same minute would render the same name"),
    ("insert", "vip", "so every insert sync would render the same name"),
    ("upsert", "vip_{YYYY}{MM}", "so two upsert syncs in the same month would render the same name"),
])
def test_warning_names_the_period_and_the_variable_to_add(tmp_path: Path, mode: str, template: str,
                                                         expected: str) -> None:
    text = BASE.replace("sync_mode: difference", f"sync_mode: {mode}").replace('"{YYYY}-{MM}-{DD}_vip"',
                                                                                f'"{template}"')
    [warning] = load_project(write(tmp_path, text)).warnings
    assert expected in warning


@pytest.mark.parametrize(("mode", "template"), [
    ("difference", "vip_{YYYY}{MM}{DD}{HH}{mm}{ss}"), ("upsert", "vip_{X}"), ("insert", "vip_{x}"),
    ("upsert", "vip_{HH}{mm}_{ms}"),
])
def test_no_warning_with_seconds_or_finer(tmp_path: Path, mode: str, template: str) -> None:
    text = BASE.replace("sync_mode: difference", f"sync_mode: {mode}").replace('"{YYYY}-{MM}-{DD}_vip"',
                                                                                f'"{template}"')
    assert load_project(write(tmp_path, text)).warnings == []


def test_no_warning_for_snapshot_mode(tmp_path: Path) -> None:
    text = BASE.replace("sync_mode: difference", "sync_mode: snapshot").replace("run_type: full_then_delta",
                                                                                "run_type: full_only")
    assert load_project(write(tmp_path, text)).warnings == []

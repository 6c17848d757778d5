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
    assert sorted(project.activations) == ["subscribers_snapshot", "vip_europe_daily"]
    # YAML 1.1 would read the SPEC's `on:` key as the boolean True.
    assert project.models["customers"].relationships[0].on == {"customer_id": "customer_id"}


def test_base_project_is_valid(tmp_path: Path) -> None:
    project = load_project(write(tmp_path, BASE))
    a = project.activations["daily_vip"]
    assert (a.sync_mode, a.effective_run_type, a.csv.delimiter) == ("difference", "full_then_delta", ",")
    assert project.resolve_path("data/warehouse.duckdb") == tmp_path / "data/warehouse.duckdb"


def test_unknown_key_is_an_error_listing_allowed_keys(tmp_path: Path) -> None:
    got = problems(tmp_path, BASE.replace("    format: csv\n", "    format: csv\n    fromat: csv\n"))
    assert len(got) == 1
    assert got[0].startswith("dinmo.yaml: activations.daily_vip: unknown key 'fromat'; allowed: ")
    assert "file_name" in got[0] and "sync_mode" in got[0]


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


def test_invalid_cron(tmp_path: Path) -> None:
    got = problems(tmp_path, BASE + '    schedule: {cron: "61 * * * *"}\n')
    assert got == [("dinmo.yaml: activations.daily_vip.schedule: cron: invalid cron expression '61 * * * *'; "
                   "allowed: five fields 'minute hour day month weekday'")]


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

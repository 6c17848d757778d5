"""Operations: destination defaults, activations of a whole model, several recurrences in one schedule, the
JSON Schema of dinmo.yaml and ``dinmo init``. (The Dagster Component is in test_component.py.)"""

from __future__ import annotations

import datetime as dt
import json
import textwrap
from pathlib import Path

import dagster as dg
import duckdb
import jsonschema
import pytest
from dagster._utils.schedules import schedule_execution_time_iterator
from fakes.hubspot import FakeHubSpot

from dinmo_dagster import config, schedules
from dinmo_dagster.cli import main, sync_activation
from dinmo_dagster.config import QUICKSTART_DIR, ProjectError, load_project
from dinmo_dagster.defaults import allowed_keys
from dinmo_dagster.definitions import build_definitions
from dinmo_dagster.init import SOURCES
from dinmo_dagster.schema import SCHEMA_FILE, project_schema, schema_text

HUBSPOT_TOKEN = "pat-eu1-operations-test"

PEOPLE = """
sources:
  wh: {type: duckdb, path: wh.duckdb}
models:
  people: {source: wh, table: raw.people, primary_key: id}
segments:
  french: {model: people, sql: "select * from {{ model }} where country = 'FR'"}
"""


def _people(tmp_path: Path) -> None:
    with duckdb.connect(str(tmp_path / "wh.duckdb")) as con:
        con.execute("create schema raw")
        con.execute("create table raw.people (id integer, email varchar, country varchar)")
        con.execute(
            "insert into raw.people values (1, 'ann@example.com', 'FR'), (2, 'bob@example.com', 'DE'), "
            "(3, 'cle@example.com', 'FR')"
        )


def _write(tmp_path: Path, extra: str, base: str = PEOPLE) -> Path:
    (tmp_path / "dinmo.yaml").write_text(base + textwrap.dedent(extra))
    return tmp_path


def _problems(path: Path) -> list[str]:
    with pytest.raises(ProjectError) as err:
        load_project(path)
    return err.value.problems


# ---------------------------------------------------------------------------------------------------------
# destination defaults
# ---------------------------------------------------------------------------------------------------------

DEFAULTS = (
    PEOPLE
    + """
destinations:
  out:
    type: local
    path: out
    defaults:
      file_name: "people_{YYYY}{MM}{DD}_{HH}{mm}{ss}"
      format: json
      mapping: {id: id, email: email}
      schedule: {every: 1 day, at: "06:30", timezone: Europe/Paris}
activations:
  inherits: {segment: french, destination: out}
  overrides: {segment: french, destination: out, format: csv, mapping: {id: key}}
"""
)


def test_activations_inherit_their_destinations_defaults_and_override_them_key_by_key(
    tmp_path: Path, capsys
) -> None:
    p = load_project(_write(tmp_path, DEFAULTS, base=""))
    inherits, overrides = p.activations["inherits"], p.activations["overrides"]
    assert (inherits.file_name, inherits.format, inherits.mapping) == (
        "people_{YYYY}{MM}{DD}_{HH}{mm}{ss}",
        "json",
        {"id": "id", "email": "email"},
    )
    # the activation's own mapping replaces the default's as a whole: 'email' is not exported
    assert (overrides.file_name, overrides.format, overrides.mapping) == (
        "people_{YYYY}{MM}{DD}_{HH}{mm}{ss}",
        "csv",
        {"id": "key"},
    )
    assert p.inherited["overrides"] == {
        "file_name": "destinations.out.defaults",
        "schedule": "destinations.out.defaults",
    }
    # the inherited schedule is a real one: each activation gets its Dagster schedule at 06:30 Paris time
    sched = {s.name: s for s in schedules.defs(p).schedules}
    assert (sched["inherits_schedule"].cron_schedule, sched["inherits_schedule"].execution_timezone) == (
        "30 6 * * *",
        "Europe/Paris",
    )

    assert main(["--project", str(tmp_path), "validate", "--verbose"]) == 0
    out = capsys.readouterr().out.splitlines()
    block = out[out.index("activations.overrides: segment 'french' -> destination 'out' (local files)") :]
    assert [
        line
        for line in block
        if line.split(":")[0].strip()
        in ("file_name", "format", "mapping", "sync_mode", "run_type", "schedule")
    ] == [
        '  file_name: "people_{YYYY}{MM}{DD}_{HH}{mm}{ss}"  (destinations.out.defaults)',
        '  format: "csv"  (activation)',
        '  mapping: {"id": "key"}  (activation)',
        '  run_type: "full_only"  (default)',
        '  sync_mode: "snapshot"  (default)',
        (
            '  schedule: {"every": "1 day", "at": "06:30", "timezone": "Europe/Paris", "enabled": true}  '
            "(destinations.out.defaults)"
        ),
    ]


def test_defaults_problems_name_the_destinations_defaults_key_once(tmp_path: Path) -> None:
    _write(
        tmp_path,
        """
    destinations:
      out:
        type: local
        path: out
        defaults: {file_name: a, format: txt, segment: french, match: {email: email}, fromat: csv}
    activations:
      one: {segment: french, destination: out}
      two: {segment: french, destination: out}
    """,
    )
    keys = allowed_keys(config.Activation, False, config.FILE_KEYS, config.PLATFORM_KEYS)
    assert keys[:18] == [
        "folder",
        "file_name",
        "format",
        "csv",
        "json",
        "xml",
        "parquet",
        "compression",
        "mapping",
        "run_type",
        "sync_mode",
        "max_file_size_mb",
        "unload",
        "max_removed_pct",
        "keep_snapshots",
        "lookback",
        "schedule",
        "trigger",
    ]
    assert not {"segment", "model", "destination", "audience", "match", "identifiers"} & set(keys)
    allowed = ", ".join(keys)
    assert _problems(tmp_path) == [
        (
            "dinmo.yaml: destinations.out.defaults.segment: what an activation is, not a shared setting; allowed in "
            f"defaults: {allowed}"
        ),
        (
            "dinmo.yaml: destinations.out.defaults.match: not an option of the file destination 'out'; allowed in "
            f"defaults: {allowed}"
        ),
        f"dinmo.yaml: destinations.out.defaults: unknown key 'fromat'; did you mean 'format'? allowed: {allowed}",
        # once, not once per activation: the activations inherit the valid defaults only
        "dinmo.yaml: destinations.out.defaults.format: found 'txt'; allowed: 'csv', 'json', 'xml' or 'parquet'",
    ]


# ---------------------------------------------------------------------------------------------------------
# activating a whole model
# ---------------------------------------------------------------------------------------------------------


def test_an_activation_of_a_whole_model_syncs_every_row_with_lineage_from_the_model(
    tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dh"))
    monkeypatch.setenv("HS_TOKEN", HUBSPOT_TOKEN)
    _people(tmp_path)
    with FakeHubSpot(HUBSPOT_TOKEN) as hubspot:
        p = load_project(
            _write(
                tmp_path,
                f"""
        destinations:
          out: {{type: local, path: out}}
          crm: {{type: hubspot, service: attributes, object: contacts, access_token: {{env: HS_TOKEN}},
                base_url: "{hubspot.url}"}}
        activations:
          everyone: {{model: people, destination: out, file_name: everyone, format: csv}}
          everyone_to_crm: {{model: people, destination: crm, match: {{email: email}}, mapping: {{country: lastname}}}}
        """,
            )
        )
        graph = build_definitions(p).resolve_asset_graph()
        for name in ("everyone", "everyone_to_crm"):
            assert graph.get(dg.AssetKey(["snapshots", name])).parent_keys == {
                dg.AssetKey(["models", "people"])
            }
        assert not [
            k for k in graph.get_all_asset_keys() if k.path[0] == "segments" and k.path[1] != "french"
        ]

        out = sync_activation(p, "everyone")
        assert out.success, out.error
        assert (tmp_path / "out" / "everyone.csv").read_text().splitlines() == [
            "id,email,country",
            "1,ann@example.com,FR",
            "2,bob@example.com,DE",
            "3,cle@example.com,FR",
        ]
        out = sync_activation(p, "everyone_to_crm")
        assert out.success, out.error
        assert sorted((r["email"], r["lastname"]) for r in hubspot.records("contacts").values()) == [
            ("ann@example.com", "FR"),
            ("bob@example.com", "DE"),
            ("cle@example.com", "FR"),
        ]


def test_an_activation_takes_exactly_one_of_segment_and_model(tmp_path: Path) -> None:
    _write(
        tmp_path,
        """
    destinations:
      out: {type: local, path: out}
    activations:
      both: {segment: french, model: people, destination: out, file_name: a}
      neither: {destination: out, file_name: b}
      unknown: {model: peple, destination: out, file_name: c}
    """,
    )
    assert _problems(tmp_path) == [
        (
            "dinmo.yaml: activations.both: give exactly one of 'segment' (a segment of a model) or 'model' "
            "(the whole model)"
        ),
        (
            "dinmo.yaml: activations.neither: give exactly one of 'segment' (a segment of a model) or 'model' "
            "(the whole model)"
        ),
        "dinmo.yaml: activations.unknown.model: unknown model 'peple'; did you mean 'people'? allowed: people",
    ]


# ---------------------------------------------------------------------------------------------------------
# several recurrences in one schedule
# ---------------------------------------------------------------------------------------------------------


def test_several_recurrences_make_one_dagster_schedule_that_ticks_at_each(tmp_path: Path) -> None:
    p = load_project(
        _write(
            tmp_path,
            """
    destinations:
      out: {type: local, path: out}
    activations:
      twice:
        segment: french
        destination: out
        file_name: "f_{X}"
        schedule:
          recurrences: [{at: "09:00", days: [mon, wed]}, {at: "20:00", days: [sat, sun]}, {every: 1 day, at: "06:30"}]
          timezone: Europe/Paris
    """,
        )
    )
    (sched,) = schedules.defs(p).schedules
    assert (sched.cron_schedule, sched.execution_timezone) == (
        ["0 9 * * 1,3", "0 20 * * 6,0", "30 6 * * *"],
        "Europe/Paris",
    )
    assert sched.description == (
        "Sync activation 'twice' (at 09:00 on mon, wed; at 20:00 on sat, sun; "
        "every 1 day at 06:30, Europe/Paris)"
    )
    # Dagster's own tick times over one week, in Paris time: the union of the three recurrences
    start = dt.datetime(2026, 6, 1, tzinfo=dt.timezone.utc).timestamp()  # a Monday
    it = schedule_execution_time_iterator(start, sched.cron_schedule, "Europe/Paris")
    week = [next(it).strftime("%a %H:%M") for _ in range(11)]
    assert week == [
        "Mon 06:30",
        "Mon 09:00",
        "Tue 06:30",
        "Wed 06:30",
        "Wed 09:00",
        "Thu 06:30",
        "Fri 06:30",
        "Sat 06:30",
        "Sat 20:00",
        "Sun 06:30",
        "Sun 20:00",
    ]


def test_a_bad_recurrence_is_named_by_its_place_in_the_list(tmp_path: Path) -> None:
    _write(
        tmp_path,
        """
    destinations:
      out: {type: local, path: out}
    activations:
      a: {segment: french, destination: out, file_name: a, schedule: {recurrences: [{at: "09:00"}, {at: "25:00"}]}}
      b: {segment: french, destination: out, file_name: b, schedule: {every: 4 hours, at: "06:30"}}
      c: {segment: french, destination: out, file_name: c, schedule: {cron: "0 1 * * *", recurrences: [{at: "09:00"}]}}
    """,
    )
    assert _problems(tmp_path) == [
        "dinmo.yaml: activations.c.schedule: give exactly one of 'cron', 'every', 'at' or 'recurrences'",
        "dinmo.yaml: activations.a.schedule: recurrences[1].at: found '25:00'; allowed: times as 'HH:MM' (24-hour)",
        (
            "dinmo.yaml: activations.b.schedule: at: a time of day goes with 'every: 1 day' only; found every: "
            "'4 hours'; allowed: 'every: 1 day' with 'at', or 'at' alone (with 'days')"
        ),
    ]


# ---------------------------------------------------------------------------------------------------------
# JSON Schema
# ---------------------------------------------------------------------------------------------------------


def _validator() -> jsonschema.Draft202012Validator:
    schema = json.loads(SCHEMA_FILE.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def _leaves(error: jsonschema.ValidationError) -> list[jsonschema.ValidationError]:
    """The innermost errors (an entry's own, not "not valid under any of the given schemas" of its section)."""
    if not error.context:
        return [error]
    return [
        leaf for sub in error.context for leaf in _leaves(sub) if not leaf.message.endswith("of type 'null'")
    ]


def _errors(path: Path) -> list[str]:
    # read as the loader reads it (YAML 1.2: `on:` is a key, not True), as editors read it
    doc = config._read_yaml(path)
    return sorted(
        {
            f"{'.'.join(map(str, e.absolute_path))}: {e.message}"
            for top in _validator().iter_errors(doc)
            for e in _leaves(top)
        }
    )


def test_the_shipped_schema_is_the_generated_one(capsys) -> None:
    """Regenerate with: .venv/bin/dinmo schema > dinmo_dagster/dinmo.schema.json"""
    assert SCHEMA_FILE.read_text() == schema_text(), (
        "stale: run `dinmo schema > dinmo_dagster/dinmo.schema.json`"
    )
    assert main(["schema"]) == 0
    assert json.loads(capsys.readouterr().out) == project_schema()


def test_every_example_project_and_every_init_project_is_valid_under_the_schema(tmp_path: Path) -> None:
    examples = sorted((QUICKSTART_DIR.parent).glob("*/*.yaml"))
    assert QUICKSTART_DIR / "dinmo.yaml" in examples
    assert (QUICKSTART_DIR / "dinmo.yaml").read_text().splitlines()[
        0
    ] == "# yaml-language-server: $schema=../../dinmo_dagster/dinmo.schema.json"
    for path in examples:
        assert _errors(path) == [], path
    for source in SOURCES:
        assert main(["init", str(tmp_path / source), "--source", source]) == 0
        assert _errors(tmp_path / source / "dinmo.yaml") == [], source
    assert _errors(_write(tmp_path, DEFAULTS, base="") / "dinmo.yaml") == []


def test_the_schema_rejects_what_the_loader_rejects(tmp_path: Path) -> None:
    bad = (
        _write(
            tmp_path,
            base=PEOPLE.replace("primary_key: id", "primary_kye: id"),
            extra="""
    destinations:
      out: {type: local, path: out, defaults: {match: {email: email}}}
      crm: {type: hubspot, service: attributes, object: contacts, access_token: pat-inline-secret}
    activations:
      a: {segment: french, destination: out, format: txt}
    """,
        )
        / "dinmo.yaml"
    )
    errors = _errors(bad)
    assert "activations.a.format: 'txt' is not one of ['csv', 'json', 'xml', 'parquet']" in errors
    assert "models.people: Additional properties are not allowed ('primary_kye' was unexpected)" in errors
    assert "models.people: 'primary_key' is a required property" in errors
    assert (
        "destinations.out.defaults: Additional properties are not allowed ('match' was unexpected)" in errors
    )
    # a secret written inline: only {env: NAME} is allowed
    assert "destinations.crm.access_token: 'pat-inline-secret' is not of type 'object'" in errors


# ---------------------------------------------------------------------------------------------------------
# dinmo init
# ---------------------------------------------------------------------------------------------------------


def test_dinmo_init_scaffolds_a_valid_project_for_every_source_and_never_overwrites(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dh"))
    for source in SOURCES:
        assert main(["init", str(tmp_path / source), "--source", source]) == 0
        capsys.readouterr()
        assert main(["--project", str(tmp_path / source), "validate"]) == 0
        assert capsys.readouterr().out == (
            f"{tmp_path / source}: 1 source(s), 1 model(s), 1 segment(s), "
            "1 destination(s), 1 activation(s): valid\n"
        )
        text = (tmp_path / source / "dinmo.yaml").read_text()
        assert text.splitlines()[0] == f"# yaml-language-server: $schema={SCHEMA_FILE.as_uri()}"
        p = load_project(tmp_path / source)
        assert p.sources["warehouse"].type == source
        if source != "duckdb":  # every credential is a {env: NAME}
            assert "{env: DINMO_" in text
    # the duckdb project syncs as it is, from its sample table
    out = sync_activation(load_project(tmp_path / "duckdb"), "high_value_files")
    assert out.success, out.error
    (written,) = (tmp_path / "duckdb" / "exports" / "high_value").iterdir()
    assert written.read_text().splitlines() == [
        "id,email,country,lifetime_value",
        "1,ada@example.com,FR,540.0",
        "3,chloe@example.com,FR,125.5",
    ]
    before = (tmp_path / "duckdb" / "dinmo.yaml").read_text()
    assert main(["init", str(tmp_path / "duckdb"), "--source", "postgres"]) == 1
    assert capsys.readouterr().out == (
        f"dinmo init: {tmp_path / 'duckdb' / 'dinmo.yaml'} already exists; not "
        "overwriting it (remove it or choose another directory)\n"
    )
    assert (tmp_path / "duckdb" / "dinmo.yaml").read_text() == before

"""Schedules, sensors, automatic pause/resume and concurrency, against real DuckDB and a real instance."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import dagster as dg
import duckdb
import pytest
import yaml
from dagster._core.events import DagsterEventType
from dagster._core.scheduler.instigation import InstigatorStatus
from dagster._core.test_utils import in_process_test_workspace
from dagster._core.types.loadable_target_origin import LoadableTargetOrigin

from dinmo_dagster import sync
from dinmo_dagster.config import load_project
from dinmo_dagster.definitions import build_definitions
from dinmo_dagster.names import (
    FAILURE_SENSOR,
    VALIDATION_SENSOR,
    job_name,
    partitions_name,
    source_sensor_name,
)
from dinmo_dagster.sensors.fingerprint import fingerprint_sql
from dinmo_dagster.translator import DinmoEntity, DinmoTranslator

PROJECT = """
sources:
  warehouse: {type: duckdb, path: warehouse.duckdb}
models:
  customers:
    source: warehouse
    table: raw.customers
    primary_key: customer_id
    order_by: updated_at
  people:
    source: warehouse
    sql: "select * from raw.customers"
    primary_key: customer_id
segments:
  vip:
    model: customers
    sql: "select * from {{ model }} where ltv > 100"
  everyone:
    model: people
    sql: "select * from {{ model }}"
destinations:
  out: {type: local, path: out}
activations:
  vip_daily:
    segment: vip
    destination: out
    file_name: vip
    schedule: {every: 15 minutes}
    trigger: {on_source_change: true}
  vip_weekly:
    segment: vip
    destination: out
    file_name: vip_weekly
    schedule: {at: "09:00", days: [mon, wed], timezone: Europe/Paris}
  people_hash:
    segment: everyone
    destination: out
    file_name: people
    trigger: {on_source_change: true}
  people_mark:
    segment: everyone
    destination: out
    file_name: people_mark
    trigger: {watermark_column: updated_at}
settings:
  consecutive_failures_to_pause: 3
"""

CUSTOMERS = """
create schema if not exists raw;
create or replace table raw.customers as
select * from (values
  (1, 'a@x.io', 500.0, timestamp '2025-01-01 00:00:00'),
  (2, 'b@x.io', 50.0, timestamp '2025-01-02 00:00:00'),
  (3, 'c@x.io', 900.0, timestamp '2025-01-03 00:00:00')
) as t(customer_id, email, ltv, updated_at);
"""


def sql(project_dir: Path, statement: str) -> None:
    with duckdb.connect(str(project_dir / "warehouse.duckdb")) as con:
        con.execute(statement)


@pytest.fixture
def project_dir(tmp_path: Path) -> Path:
    d = tmp_path / "project"
    d.mkdir()
    (d / "dinmo.yaml").write_text(PROJECT)
    (d / "out").mkdir()
    sql(d, CUSTOMERS)
    return d


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as inst:
        yield inst


class Workspace:
    """The project's definitions loaded as a code location, as the webserver and the daemon see them."""

    def __init__(self, instance: dg.DagsterInstance, project_dir: Path, request_context: Any):
        self.instance = instance
        self.project = load_project(project_dir)
        self.defs = build_definitions(self.project)
        self.repo_def = self.defs.get_repository_def()
        entry = next(iter(request_context.get_code_location_entries().values()))
        assert entry.code_location, entry.load_error
        self.remote_repo = entry.code_location.get_repository(self.repo_def.name)

    @property
    def code_location_origin(self) -> Any:
        return self.remote_repo.get_remote_origin().code_location_origin

    def remote(self, kind: str, name: str) -> Any:
        return self.remote_repo.get_schedule(name) if kind == "schedule" else self.remote_repo.get_sensor(name)

    def status(self, kind: str, name: str) -> InstigatorStatus:
        """The status the UI shows for a schedule or sensor."""
        r = self.remote(kind, name)
        stored = self.instance.get_instigator_state(r.get_remote_origin_id(), r.selector_id)
        return r.get_current_instigator_state(stored).status

    def running(self, kind: str, name: str) -> bool:
        return self.status(kind, name) != InstigatorStatus.STOPPED

    def evaluate(self, sensor_name: str, cursor: str | None = None) -> Any:
        """Evaluate a sensor exactly as the daemon's code server does (with the code location origin)."""
        sensor_def = self.repo_def.get_sensor_def(sensor_name)
        resources = self.repo_def.get_top_level_resources()
        with dg.SensorEvaluationContext(
            instance_ref=None, instance=self.instance, cursor=cursor, repository_name=self.repo_def.name,
            repository_def=self.repo_def, sensor_name=sensor_name, code_location_origin=self.code_location_origin,
            resources={k: resources[k] for k in sensor_def.required_resource_keys},
        ) as context:
            return sensor_def.evaluate_tick(context)


@pytest.fixture
def workspace(instance: dg.DagsterInstance, project_dir: Path, tmp_path: Path) -> Iterator[Workspace]:
    module = tmp_path / "dinmo_defs.py"
    module.write_text(textwrap.dedent(f"""
        from dinmo_dagster.config import load_project
        from dinmo_dagster.definitions import build_definitions
        defs = build_definitions(load_project({str(project_dir)!r}))
    """))
    origin = LoadableTargetOrigin(python_file=str(module), working_directory=str(tmp_path))
    with in_process_test_workspace(instance, origin) as ctx:
        yield Workspace(instance, project_dir, ctx)


# ---------------------------------------------------------------------------------------------------------
# schedules
# ---------------------------------------------------------------------------------------------------------


def test_schedule_tick_adds_the_partition_and_requests_the_sync(project_dir: Path, instance) -> None:
    defs = build_definitions(load_project(project_dir))
    sched = defs.resolve_schedule_def("vip_daily_schedule")
    repo = defs.get_repository_def()
    assert sched.job_name == job_name("vip_daily")
    when = datetime(2025, 4, 14, 9, 15, tzinfo=timezone.utc)
    request = sched.evaluate_tick(dg.build_schedule_context(instance=instance, scheduled_execution_time=when, repository_def=repo))
    [rr] = request.run_requests
    key = sync.new_partition_key(when)
    assert rr.partition_key == key and rr.run_key == key
    assert instance.get_dynamic_partitions(partitions_name("vip_daily")) == [key]
    # A retried tick (same scheduled time) asks for the same run key: Dagster does not sync twice.
    again = sched.evaluate_tick(dg.build_schedule_context(instance=instance, scheduled_execution_time=when, repository_def=repo))
    assert again.run_requests[0].run_key == key
    assert instance.get_dynamic_partitions(partitions_name("vip_daily")) == [key]


@pytest.mark.parametrize(("schedule", "cron", "tz"), [
    ("{every: 15 minutes}", "*/15 * * * *", "UTC"),
    ("{every: 1 minute}", "* * * * *", "UTC"),
    ("{every: 4 hours}", "0 */4 * * *", "UTC"),
    ("{every: 1 hour}", "0 * * * *", "UTC"),
    ("{every: 1 day}", "0 0 * * *", "UTC"),
    ('{at: "09:00", days: [mon, wed]}', "0 9 * * 1,3", "UTC"),
    ('{at: "09:30"}', "30 9 * * *", "UTC"),
    ('{at: ["08:00", "18:45"], days: [sun]}', ["0 8 * * 0", "45 18 * * 0"], "UTC"),
    ('{cron: "5 4 * * 2", timezone: America/New_York}', "5 4 * * 2", "America/New_York"),
    ('{at: "07:00", timezone: Europe/Paris, enabled: false}', "0 7 * * *", "Europe/Paris"),
])
def test_schedule_options_become_cron_and_timezone(tmp_path: Path, schedule: str, cron: Any, tz: str) -> None:
    text = PROJECT.split("activations:")[0] + f"""activations:
  a:
    segment: vip
    destination: out
    file_name: a
    schedule: {schedule}
"""
    (tmp_path / "dinmo.yaml").write_text(text)
    sched = build_definitions(load_project(tmp_path)).resolve_schedule_def("a_schedule")
    assert sched.cron_schedule == cron
    assert sched.execution_timezone == tz
    enabled = "enabled: false" not in schedule
    assert sched.default_status == (dg.DefaultScheduleStatus.RUNNING if enabled else dg.DefaultScheduleStatus.STOPPED)


# ---------------------------------------------------------------------------------------------------------
# source change
# ---------------------------------------------------------------------------------------------------------


def _source_tick(project: Any, instance: dg.DagsterInstance, name: str, cursor: str | None) -> Any:
    from dinmo_dagster.resources import build_resources

    defs = build_definitions(project)
    sensor_def = defs.resolve_sensor_def(source_sensor_name(name))
    context = dg.build_sensor_context(instance=instance, cursor=cursor, resources=build_resources(project),
                                      repository_def=defs.get_repository_def())
    from dagster._core.definitions.partitions.context import partition_loading_context

    # the daemon resolves partitioned run requests against the instance's dynamic partitions
    with partition_loading_context(dynamic_partitions_store=instance):
        return sensor_def.evaluate_tick(context)


@pytest.mark.parametrize("activation", ["vip_daily", "people_hash", "people_mark"])
def test_source_change_sensor_fires_only_after_a_change(project_dir: Path, instance, activation: str) -> None:
    defs = load_project(project_dir)
    first = _source_tick(defs, instance, activation, None)
    assert not first.run_requests and first.cursor and "first fingerprint" in first.skip_message
    same = _source_tick(defs, instance, activation, first.cursor)
    assert not same.run_requests and "unchanged" in same.skip_message
    # a change that keeps the row count: a new max(updated_at) (order_by / watermark) or new row content
    sql(project_dir, "update raw.customers set email = 'z@x.io', updated_at = timestamp '2025-02-01' "
                     "where customer_id = 2")
    changed = _source_tick(defs, instance, activation, same.cursor or first.cursor)
    [rr] = changed.run_requests
    assert rr.run_key == rr.partition_key and rr.tags["dinmo/trigger"] == "source_change"
    [add] = changed.dynamic_partitions_requests
    assert add.partitions_def_name == partitions_name(activation) and list(add.partition_keys) == [rr.partition_key]
    assert changed.cursor != first.cursor
    assert not _source_tick(defs, instance, activation, changed.cursor).run_requests


def test_fingerprint_queries_by_model_kind(project_dir: Path) -> None:
    project = load_project(project_dir)
    from dinmo_dagster.resources import build_resources

    with dg.build_resources(build_resources(project)) as res:
        wh = res.source_warehouse.get_warehouse()
        assert "max(" in fingerprint_sql(wh, project, "vip_daily").lower()  # table model with order_by
        assert "hash(" in fingerprint_sql(wh, project, "people_hash").lower()  # sql model, no watermark
        assert "max(" in fingerprint_sql(wh, project, "people_mark").lower()  # watermark column


# ---------------------------------------------------------------------------------------------------------
# validation: pause and resume
# ---------------------------------------------------------------------------------------------------------


def test_broken_source_pauses_and_fix_resumes_exactly_what_validation_paused(
        workspace: Workspace, project_dir: Path) -> None:
    ws = workspace
    # Declared RUNNING in code: vip_daily's schedule and sensor, vip_weekly's schedule.
    assert ws.running("schedule", "vip_daily_schedule") and ws.running("sensor", "vip_daily_source_change")
    # A user pauses vip_weekly from the UI before anything breaks.
    weekly = ws.remote("schedule", "vip_weekly_schedule")
    ws.instance.stop_schedule(weekly.get_remote_origin_id(), weekly.selector_id, weekly)
    assert not ws.running("schedule", "vip_weekly_schedule")

    ok = ws.evaluate(VALIDATION_SENSOR)
    assert "validation passed" in ok.skip_message and json.loads(ok.cursor)["paused"] == {}
    skipped = ws.evaluate(VALIDATION_SENSOR, ok.cursor)  # the nightly tick has not come yet
    assert "validated at" in skipped.skip_message

    sql(project_dir, "drop table raw.customers")
    old = json.dumps({**json.loads(ok.cursor), "last_check": "2000-01-01T00:00:00+00:00"})
    broken = ws.evaluate(VALIDATION_SENSOR, old)
    culprit = "models.customers: table raw.customers does not exist"
    assert culprit in broken.skip_message
    paused = json.loads(broken.cursor)["paused"]
    assert set(paused) == {"vip_daily", "people_hash", "people_mark"}  # vip_weekly was already stopped
    assert paused["vip_daily"]["culprit"] == culprit
    assert not ws.running("schedule", "vip_daily_schedule")
    assert not ws.running("sensor", "vip_daily_source_change")
    assert not ws.running("sensor", "people_hash_source_change")
    assert not ws.running("schedule", "vip_weekly_schedule")
    observed = {tuple(e.asset_key.path): e.metadata["dinmo/culprit"].value for e in broken.asset_events}
    assert observed[("activations", "vip_daily")] == culprit

    still = ws.evaluate(VALIDATION_SENSOR, json.dumps({**json.loads(broken.cursor), "last_check": "2000-01-01"}))
    assert "stays paused" in still.skip_message and not ws.running("schedule", "vip_daily_schedule")

    sql(project_dir, CUSTOMERS)
    fixed = ws.evaluate(VALIDATION_SENSOR, json.dumps({**json.loads(still.cursor), "last_check": "2000-01-01"}))
    assert "resumed activation 'vip_daily'" in fixed.skip_message
    assert json.loads(fixed.cursor)["paused"] == {}
    assert ws.status("schedule", "vip_daily_schedule") == InstigatorStatus.DECLARED_IN_CODE
    assert ws.running("sensor", "vip_daily_source_change") and ws.running("sensor", "people_mark_source_change")
    assert not ws.running("schedule", "vip_weekly_schedule")  # the user's pause stands


def test_validation_leaves_a_schedule_alone_when_a_user_resumed_it_meanwhile(workspace: Workspace,
                                                                          project_dir: Path) -> None:
    ws = workspace
    sql(project_dir, "drop table raw.customers")
    broken = ws.evaluate(VALIDATION_SENSOR)
    assert not ws.running("schedule", "vip_daily_schedule")
    daily = ws.remote("schedule", "vip_daily_schedule")
    ws.instance.start_schedule(daily)  # a user turns it back on by hand, then off again
    ws.instance.stop_schedule(daily.get_remote_origin_id(), daily.selector_id, daily)
    ws.instance.start_schedule(daily)
    sql(project_dir, CUSTOMERS)
    ws.evaluate(VALIDATION_SENSOR, json.dumps({**json.loads(broken.cursor), "last_check": "2000-01-01"}))
    assert ws.status("schedule", "vip_daily_schedule") == InstigatorStatus.RUNNING


# ---------------------------------------------------------------------------------------------------------
# consecutive failures
# ---------------------------------------------------------------------------------------------------------


def _failed_sync(ws: Workspace, activation: str) -> dg.RunFailureSensorContext:
    key = sync.new_partition_key()
    ws.instance.add_dynamic_partitions(partitions_name(activation), [key])
    result = ws.defs.resolve_job_def(job_name(activation)).execute_in_process(
        instance=ws.instance, partition_key=key, raise_on_error=False)
    assert not result.success
    run = ws.instance.get_run_by_id(result.run_id)
    [event] = [e.dagster_event for e in ws.instance.all_logs(result.run_id, of_type=DagsterEventType.RUN_FAILURE)]
    return dg.build_run_status_sensor_context(
        sensor_name=FAILURE_SENSOR, dagster_instance=ws.instance, dagster_run=run, dagster_event=event,
    ).for_run_failure()


def test_three_failed_syncs_pause_the_activation(workspace: Workspace, project_dir: Path) -> None:
    ws = workspace
    daily = ws.remote("schedule", "vip_daily_schedule")
    # A user toggles it off and on in the UI: a stored RUNNING state, started now.
    ws.instance.stop_schedule(daily.get_remote_origin_id(), daily.selector_id, daily)
    ws.instance.start_schedule(daily)
    sensor = ws.repo_def.get_sensor_def(FAILURE_SENSOR)
    sql(project_dir, "drop table raw.customers")
    for _ in range(2):
        sensor(_failed_sync(ws, "vip_daily"))
        assert ws.running("schedule", "vip_daily_schedule")
    ctx = _failed_sync(ws, "vip_daily")
    sensor(ctx)
    assert not ws.running("schedule", "vip_daily_schedule")
    assert not ws.running("sensor", "vip_daily_source_change")
    tag = ws.instance.get_run_by_id(ctx.dagster_run.run_id).tags["dinmo/paused"]
    assert "after 3 consecutive failed syncs" in tag and "raw.customers" in tag.lower()
    # another activation's schedule is untouched
    assert ws.running("schedule", "vip_daily_schedule") is False and ws.running("schedule", "vip_weekly_schedule")
    # a user resumes it: older failures no longer count, one new failure does not pause it again
    ws.instance.start_schedule(daily)
    sensor(_failed_sync(ws, "vip_daily"))
    assert ws.running("schedule", "vip_daily_schedule")


def test_short_error_is_one_scrubbed_line(project_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from dinmo_dagster.sensors import short_error

    (project_dir / "dinmo.yaml").write_text(PROJECT.replace(
        "warehouse: {type: duckdb, path: warehouse.duckdb}",
        "warehouse: {type: duckdb, path: warehouse.duckdb}\n  pg: {type: postgres, host: h, database: d, "
        "user: u, password: {env: PG_PW}}"))
    monkeypatch.setenv("PG_PW", "hunter2-secret")
    project = load_project(project_dir)
    text = "login failed for password hunter2-secret\nTraceback..." + "x" * 500
    assert short_error(project, text) == "login failed for password ***"
    assert len(short_error(project, "y" * 1000)) == 300


# ---------------------------------------------------------------------------------------------------------
# concurrency
# ---------------------------------------------------------------------------------------------------------


def test_sync_steps_share_the_activation_pool(project_dir: Path) -> None:
    defs = build_definitions(load_project(project_dir))
    graph = defs.resolve_asset_graph()
    for key in (dg.AssetKey(["snapshots", "vip_daily"]), dg.AssetKey(["activations", "vip_daily"])):
        assert graph.get(key).pools == {"dinmo_activation_vip_daily"}


def test_pool_limit_of_one_is_applied_to_a_sync(project_dir: Path) -> None:
    """With ``concurrency: pools: default_limit: 1`` a sync's steps claim the activation's pool, limit 1."""
    overrides = {"concurrency": {"pools": {"default_limit": 1}}}
    with dg.instance_for_test(overrides=overrides) as inst:
        assert inst.get_concurrency_config().pool_config.default_pool_limit == 1
        defs = build_definitions(load_project(project_dir))
        key = sync.new_partition_key()
        inst.add_dynamic_partitions(partitions_name("vip_daily"), [key])
        result = defs.resolve_job_def(job_name("vip_daily")).execute_in_process(instance=inst, partition_key=key)
        assert result.success
        info = inst.event_log_storage.get_concurrency_info("dinmo_activation_vip_daily")
        assert info.slot_count == 1 and not info.claimed_slots


# ---------------------------------------------------------------------------------------------------------
# names that reach Dagster: a valid configuration never stops the project from loading
# ---------------------------------------------------------------------------------------------------------

QUOTED_PROJECT = """
sources:
  wh: {type: duckdb, path: wh.duckdb}
models:
  plain: {source: wh, table: raw.customers, primary_key: id}
  dashed: {source: wh, table: 'raw."cust-data"', primary_key: id}
  spaced: {source: wh, table: 'raw."my customers"', primary_key: id}
  dotted: {source: wh, table: '"raw.v2"."cust.v2"', primary_key: id}
segments:
  plain_all: {model: plain, sql: "select * from {{ model }}"}
  dashed_all: {model: dashed, sql: "select * from {{ model }}"}
  spaced_all: {model: spaced, sql: "select * from {{ model }}"}
  dotted_all: {model: dotted, sql: "select * from {{ model }}"}
destinations:
  out: {type: local, path: out}
activations:
  plain_csv: {segment: plain_all, destination: out, file_name: plain}
  dashed_csv: {segment: dashed_all, destination: out, file_name: dashed}
  spaced_csv: {segment: spaced_all, destination: out, file_name: spaced}
  dotted_csv: {segment: dotted_all, destination: out, file_name: dotted}
"""


def _sync(defs: dg.Definitions, instance: dg.DagsterInstance, activation: str) -> dg.ExecuteInProcessResult:
    key = sync.new_partition_key()
    instance.add_dynamic_partitions(partitions_name(activation), [key])
    return defs.resolve_job_def(job_name(activation)).execute_in_process(
        instance=instance, partition_key=key, raise_on_error=False)


def _read_csv(path: Path) -> list[list[str]]:
    import csv

    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.reader(f))


def test_quoted_table_names_load_and_sync_end_to_end(tmp_path: Path, instance) -> None:
    (tmp_path / "dinmo.yaml").write_text(QUOTED_PROJECT)
    (tmp_path / "out").mkdir()
    with duckdb.connect(str(tmp_path / "wh.duckdb")) as con:
        con.execute('create schema raw; create schema "raw.v2"')
        for table, tag in (("raw.customers", "plain"), ('raw."cust-data"', "dash"),
                           ('raw."my customers"', "space"), ('"raw.v2"."cust.v2"', "dot")):
            con.execute(f"create table {table} as select * from (values (1, '{tag}-a'), (2, '{tag}-b')) t(id, v)")
    defs = build_definitions(load_project(tmp_path))
    dg.Definitions.validate_loadable(defs)
    graph = defs.resolve_asset_graph()
    # Each part of a source table's key is the real name, made of [A-Za-z0-9_] with a stable suffix when
    # it had other characters; plain names keep the key they always had.
    expected = {
        "plain": "sources/wh/raw/customers",
        "dashed": "sources/wh/raw/cust_data_da4b09fd",
        "spaced": "sources/wh/raw/my_customers_08780a37",
        "dotted": "sources/wh/raw_v2_d09c3cbb/cust_v2_49292df6",
    }
    for model, key in expected.items():
        parents = {k.to_user_string() for k in graph.get(dg.AssetKey(["models", model])).parent_keys}
        assert parents == {key}
    tables = {graph.get(dg.AssetKey.from_user_string(k)).metadata["dagster/table_name"] for k in expected.values()}
    assert tables == {"raw.customers", 'raw."cust-data"', 'raw."my customers"', '"raw.v2"."cust.v2"'}
    for model, tag in (("plain", "plain"), ("dashed", "dash"), ("spaced", "space"), ("dotted", "dot")):
        assert _sync(defs, instance, f"{model}_csv").success
        assert _read_csv(tmp_path / "out" / f"{model}.csv") == [["id", "v"], ["1", f"{tag}-a"], ["2", f"{tag}-b"]]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["dashed.csv", "dotted.csv", "plain.csv",
                                                                   "spaced.csv"]


TRICKY_NAMES = """
sources:
  source: {type: duckdb, path: wh.duckdb}
models:
  class:
    source: source
    table: raw.people
    primary_key: id
    relationships: [{name: referrals, model: class, type: one_to_many, on: {id: referrer_id}}]
    calculated_fields: [{name: referred, type: aggregate, relation: referrals, function: count}]
  {long_model}: {source: source, table: raw.people, primary_key: id}
segments:
  input: {model: class, sql: "select * from {{ model }} where referred > 0"}
  {long_segment}: {model: {long_model}, sql: "select * from {{ model }}"}
destinations:
  type: {type: local, path: out}
activations:
  config: {segment: input, destination: type, file_name: referrers, schedule: {every: 1 hour},
           trigger: {on_source_change: true}}
  {long_activation}: {segment: {long_segment}, destination: type, file_name: everyone}
"""


def test_keywords_longest_names_and_a_self_relationship_load_and_sync(tmp_path: Path, instance) -> None:
    names = {"long_model": "m" * 63, "long_segment": "s" * 63, "long_activation": "a" * 63}
    text = TRICKY_NAMES
    for key, value in names.items():
        text = text.replace("{" + key + "}", value)
    (tmp_path / "dinmo.yaml").write_text(text)
    (tmp_path / "out").mkdir()
    with duckdb.connect(str(tmp_path / "wh.duckdb")) as con:
        con.execute("create schema raw; create table raw.people as select * from (values (1, null), (2, 1), (3, 1), "
                    "(4, 2)) t(id, referrer_id)")
    defs = build_definitions(load_project(tmp_path))
    dg.Definitions.validate_loadable(defs)
    # A model whose calculated field aggregates its own rows (customers referred by customers) does not
    # depend on itself in the graph: its view reads the table.
    assert {k.to_user_string() for k in defs.resolve_asset_graph().get(dg.AssetKey(["models", "class"])).parent_keys} \
        == {"sources/source/raw/people"}
    assert _sync(defs, instance, "config").success
    assert _read_csv(tmp_path / "out" / "referrers.csv") == [["id", "referrer_id", "referred"], ["1", "", "2"],
                                                             ["2", "1", "1"]]
    assert _sync(defs, instance, "a" * 63).success
    assert len(_read_csv(tmp_path / "out" / "everyone.csv")) == 5


CYCLES = """
sources:
  wh: {type: duckdb, path: wh.duckdb}
models:
  customers:
    source: wh
    table: raw.customers
    primary_key: id
    relationships: [{name: orders, model: orders, type: one_to_many, on: {id: customer_id}}]
    calculated_fields: [{name: order_count, type: aggregate, relation: orders, function: count}]
  orders:
    source: wh
    table: raw.orders
    primary_key: order_id
    relationships: [{name: buyer, model: customers, type: many_to_one, on: {customer_id: id}}]
    calculated_fields: [{name: buyer_orders, type: aggregate, relation: buyer, function: max, attribute: order_count}]
  people: {source: wh, table: raw.customers, primary_key: id}
segments:
  a: {model: people, filter: {segment: b, op: in}}
  b: {model: people, filter: {segment: a, op: not_in}}
  me: {model: people, filter: {segment: me, op: in}}
  fine: {model: people, sql: "select * from {{ model }}"}
"""


def test_dependency_cycles_are_validation_errors_and_never_stop_the_project_loading(tmp_path: Path,
                                                                                   instance) -> None:
    from dinmo_dagster.config import ProjectError

    (tmp_path / "dinmo.yaml").write_text(CYCLES)
    with duckdb.connect(str(tmp_path / "wh.duckdb")) as con:
        con.execute("create schema raw; create table raw.customers as select 1 as id; "
                    "create table raw.orders as select 10 as order_id, 1 as customer_id")
    with pytest.raises(ProjectError) as err:
        load_project(tmp_path)
    models_cycle = ("dinmo.yaml: models.{0}.calculated_fields: the aggregate calculated fields of models customers, "
                    "orders read each other's views in a cycle ({0} -> {1} -> {0}); allowed: aggregates over models "
                    "that do not aggregate back")
    allowed = "allowed: conditions on other segments that do not refer back to this one"
    assert err.value.problems == [
        models_cycle.format("customers", "orders"),
        models_cycle.format("orders", "customers"),
        f"dinmo.yaml: segments.a.filter: segments a, b refer to each other in a cycle (a -> b -> a); {allowed}",
        f"dinmo.yaml: segments.b.filter: segments a, b refer to each other in a cycle (b -> a -> b); {allowed}",
        f"dinmo.yaml: segments.me.filter: segment 'me' refers to itself (me -> me); {allowed}",
    ]
    # Definitions built from such a project anyway (as a code location that skipped validation would) still
    # load: the entities in a cycle fail when they run, with the same message, and the others work.
    from dinmo_dagster import config
    from dinmo_dagster.warehouses.duckdb import DuckDBSource

    project = config.Project(directory=tmp_path)
    raw = yaml.load(CYCLES, Loader=config._Loader)  # the project's YAML 1.2 loader: `on:` stays a key
    project.sources = {"wh": DuckDBSource.model_validate(raw["sources"]["wh"])}
    project.models = {n: config.Model.model_validate(v) for n, v in raw["models"].items()}
    project.segments = {n: config.Segment.model_validate(v) for n, v in raw["segments"].items()}
    project.destinations = {}
    defs = build_definitions(project)
    dg.Definitions.validate_loadable(defs)
    job = dg.define_asset_job("all", selection=dg.AssetSelection.all() - dg.AssetSelection.key_prefixes("sources"))
    result = dg.Definitions.merge(defs, dg.Definitions(jobs=[job])).resolve_job_def("all").execute_in_process(
        instance=instance, raise_on_error=False)
    failures = {e.step_key: e.step_failure_data.user_failure_data.description
                for e in result.all_events if e.is_step_failure}
    assert set(failures) == {"models__customers", "models__orders", "segments__a", "segments__b", "segments__me"}
    assert failures["segments__me"] == f"segments.me.filter: segment 'me' refers to itself (me -> me); {allowed}"
    assert instance.get_latest_materialization_event(dg.AssetKey(["segments", "fine"])) is not None


# ---------------------------------------------------------------------------------------------------------
# the translator: keys and groups of the user's own
# ---------------------------------------------------------------------------------------------------------


class CrmTranslator(DinmoTranslator):
    """Every asset under the key prefix ``crm``, in one group ``crm``."""

    def get_asset_spec(self, entity: DinmoEntity) -> dg.AssetSpec:
        spec = super().get_asset_spec(entity)
        return spec.replace_attributes(key=spec.key.with_prefix("crm"), group_name="crm")


def test_a_translator_re_prefixes_keys_and_regroups_and_the_sync_still_runs(project_dir: Path, instance) -> None:
    defs = build_definitions(load_project(project_dir), translator=CrmTranslator())
    dg.Definitions.validate_loadable(defs)
    graph = defs.resolve_asset_graph()
    lineage = {k.to_user_string(): (graph.get(k).group_name, sorted(p.to_user_string() for p in graph.get(k).parent_keys))
               for k in graph.get_all_asset_keys()}
    assert lineage == {
        "crm/sources/warehouse/raw/customers": ("crm", []),
        "crm/models/customers": ("crm", ["crm/sources/warehouse/raw/customers"]),
        "crm/models/people": ("crm", []),
        "crm/segments/vip": ("crm", ["crm/models/customers"]),
        "crm/segments/everyone": ("crm", ["crm/models/people"]),
        **{f"crm/snapshots/{a}": ("crm", [f"crm/segments/{s}"]) for a, s in (
            ("vip_daily", "vip"), ("vip_weekly", "vip"), ("people_hash", "everyone"), ("people_mark", "everyone"))},
        **{f"crm/activations/{a}": ("crm", [f"crm/snapshots/{a}"])
           for a in ("vip_daily", "vip_weekly", "people_hash", "people_mark")},
    }
    assert sorted(c.to_user_string() for c in graph.asset_check_keys) == [
        "crm/models/customers:primary_key_unique", "crm/models/people:primary_key_unique",
        "crm/segments/everyone:primary_key_unique", "crm/segments/vip:primary_key_unique"]
    # The sync job, its partitions and its run config keep their names: `dinmo sync` runs it unchanged.
    result = _sync(defs, instance, "vip_daily")
    assert result.success
    assert _read_csv(project_dir / "out" / "vip.csv") == [
        ["customer_id", "email", "ltv", "updated_at"],
        ["1", "a@x.io", "500.0", "2025-01-01T00:00:00.000000"],
        ["3", "c@x.io", "900.0", "2025-01-03T00:00:00.000000"]]
    event = instance.get_latest_materialization_event(dg.AssetKey(["crm", "activations", "vip_daily"]))
    assert event is not None and event.asset_materialization.metadata["rows_added"].value == 2
    assert instance.get_latest_materialization_event(dg.AssetKey(["activations", "vip_daily"])) is None


def test_validation_pauses_the_activation_observed_under_the_translated_key(workspace: Workspace,
                                                                            project_dir: Path) -> None:
    ws = workspace
    # The definitions the sensor runs with (schedule and sensor names do not depend on the translator).
    ws.defs = build_definitions(ws.project, translator=CrmTranslator())
    ws.repo_def = ws.defs.get_repository_def()
    sql(project_dir, "drop table raw.customers")
    broken = ws.evaluate(VALIDATION_SENSOR)
    observed = {e.asset_key.to_user_string(): e.metadata["dinmo/culprit"].value for e in broken.asset_events}
    assert sorted(observed) == ["crm/activations/people_hash", "crm/activations/people_mark",
                                "crm/activations/vip_daily", "crm/activations/vip_weekly"]
    assert observed["crm/activations/vip_daily"] == "models.customers: table raw.customers does not exist"
    assert not ws.running("schedule", "vip_daily_schedule")


def test_importing_the_definitions_module_loads_no_project(tmp_path: Path) -> None:
    """`dinmo --project P` imports the definitions module: a broken DINMO_PROJECT_DIR must not stop it."""
    missing = tmp_path / "missing"
    code = ("import dinmo_dagster.cli, dinmo_dagster.definitions as d\n"
            "from dinmo_dagster.config import ProjectError\n"
            "try:\n    d.defs()\nexcept ProjectError as exc:\n    print(exc.problems)\n")
    out = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "DINMO_PROJECT_DIR": str(missing)})
    assert (out.returncode, out.stdout.strip()) == (0, str([f"{missing}: project directory does not exist"]))

"""The concurrency guard (a running sync blocks a second one; a dead one never blocks), the working
directories of dead syncs, and incremental event syncs by event-time cursor."""

from __future__ import annotations

import csv
import io
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import dagster as dg
import duckdb
import pytest

from dinmo_dagster import sync
from dinmo_dagster.assets.activations import sync_target
from dinmo_dagster.assets.models import refresh_upstream
from dinmo_dagster.config import load_project
from dinmo_dagster.definitions import build_definitions
from dinmo_dagster.resources import build_resources
from dinmo_dagster.state import JournalState

PROJECT = """
sources:
  wh: {type: duckdb, path: wh.duckdb}
models:
  customers: {source: wh, table: raw.customers, primary_key: customer_id}
  orders: {source: wh, kind: fact, table: raw.orders, primary_key: order_id, time_column: ordered_at}
segments:
  everyone: {model: customers, sql: "select * from {{ model }}"}
  all_orders: {model: orders, sql: "select * from {{ model }}"}
destinations:
  out: {type: local, path: out}
activations:
  people:
    segment: everyone
    destination: out
    file_name: "people_{YYYY}{MM}{DD}"
    sync_mode: upsert
  events:
    segment: all_orders
    destination: out
    folder: events
    file_name: "orders_{X}"
    sync_mode: insert
    lookback: 2 hours
    mapping: {order_id: order_id, amount: amount, ordered_at: ordered_at}
"""

T0 = datetime(2025, 4, 14, 12, 0, 0)


@pytest.fixture(autouse=True)
def sync_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The temporary directory of this test's syncs: no sync may leave its part files behind there."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    monkeypatch.setenv("TMPDIR", str(tmp))
    yield tmp
    assert sorted(p.name for p in tmp.iterdir() if p.name.startswith("dinmo-sync-")) == []


@pytest.fixture
def env(tmp_path: Path):
    (tmp_path / "dinmo.yaml").write_text(textwrap.dedent(PROJECT))
    with duckdb.connect(str(tmp_path / "wh.duckdb")) as con:
        con.execute("create schema raw")
        con.execute("create table raw.customers as select range as customer_id, 'c' || range as name "
                    "from range(1, 6)")
        con.execute("create table raw.orders (order_id int, amount decimal(8, 2), ordered_at timestamp)")
        con.executemany("insert into raw.orders values (?, ?, ?)",
                        [(i, 10 * i, T0 - timedelta(hours=10 - i)) for i in range(1, 6)])
    project = load_project(tmp_path)
    with dg.build_resources(build_resources(project)) as resources:
        yield SimpleNamespace(project=project, resources=resources, dir=tmp_path)


def snapshot_and_deliver(env, activation: str, key: str, **kwargs) -> sync.SyncResult:
    t = sync_target(env.project, activation, env.resources)
    refresh_upstream(env.project, activation, env.resources)
    sync.take_snapshot(t, key)
    return sync.deliver(t, key, **kwargs)


def journal(env, activation: str, partition_key: str, state: JournalState, files: list[str], owner: str,
            run_id: str = "other-run") -> None:
    t = sync_target(env.project, activation, env.resources)
    t.store.ensure()
    t.store.journal(partition_key, run_id, state, files, owner=owner)


def test_a_running_sync_blocks_a_second_one_and_a_dead_one_does_not(env) -> None:
    snapshot_and_deliver(env, "people", "20250101T000000.000000Z")
    leftover = env.dir / "out" / "people_20250102.csv"
    leftover.write_text("partial")
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        journal(env, "people", "20250102T000000.000000Z", JournalState.WRITING, ["people_20250102.csv"],
                owner=f"{socket.gethostname()}:{sleeper.pid}")
        t = sync_target(env.project, "people", env.resources)
        sync.take_snapshot(t, "20250103T000000.000000Z")
        with pytest.raises(sync.SyncError) as exc:
            sync.deliver(t, "20250103T000000.000000Z")
        assert str(exc.value) == (
            "another sync of activation 'people' is running (partition 20250102T000000.000000Z, run other-run); "
            "two syncs of one activation never overlap. Try again when it has finished")
        assert leftover.exists()
    finally:
        sleeper.kill()
        sleeper.wait()
    # The same entry, now from a dead process: the next sync cleans up after it and proceeds.
    dead: list[tuple[str, bool]] = []
    result = sync.deliver(t, "20250103T000000.000000Z", on_dead=lambda run_id, completed: dead.append(
        (run_id, completed)))
    assert not leftover.exists()
    assert dead == [("other-run", False)]
    assert result.recovered == [("removed 1 file(s) left by the dead sync 20250102T000000.000000Z "
                                 "(run other-run, marked failed)")]


MAKE_WORKDIR = """
import sys, time
from dinmo_dagster import sync
workdir = sync.new_workdir()
(workdir / "customers_part-00001.csv").write_text("id,email\\n1,ann@example.com\\n")
print(workdir, flush=True)
if sys.argv[1] == "live":
    time.sleep(120)
"""


def test_any_sync_removes_the_working_directories_of_dead_processes_and_only_those(env, sync_tmp: Path) -> None:
    """Part files of a killed process (rows with e-mails) do not stay in the temporary directory: the next
    sync on the machine, of any activation, removes the directory of a process that is gone. A live
    process's directory, another machine's, and a recent one of an older version are left alone."""
    dead = Path(subprocess.run([sys.executable, "-c", MAKE_WORKDIR, "dead"], check=True, capture_output=True,
                               text=True).stdout.strip())
    live_proc = subprocess.Popen([sys.executable, "-c", MAKE_WORKDIR, "live"], stdout=subprocess.PIPE, text=True)
    try:
        live = Path(live_proc.stdout.readline().strip())
        host = socket.gethostname()
        assert dead.parent == live.parent == sync_tmp
        assert dead.name.startswith(f"dinmo-sync-{host}-") and live.name.startswith(f"dinmo-sync-{host}-{live_proc.pid}-")
        # This process's pid with another start time: the pid was reused, the process that made it is gone.
        reused = sync_tmp / f"dinmo-sync-{host}-{os.getpid()}-1-abcdefgh"
        elsewhere = sync_tmp / "dinmo-sync-elsewhere.example-1-1-abcdefgh"
        old_version, recent_old_version = sync_tmp / "dinmo-sync-a1b2c3d4", sync_tmp / "dinmo-sync-e5f6g7h8"
        for d in (reused, elsewhere, old_version, recent_old_version):
            d.mkdir()
            (d / "customers.csv").write_text("id,email\n1,ann@example.com\n")
        day_ago = time.time() - 25 * 3600
        for p in (old_version / "customers.csv", old_version):
            os.utime(p, (day_ago, day_ago))

        snapshot_and_deliver(env, "people", "20250101T000000.000000Z")
        left = sorted(p.name for p in sync_tmp.iterdir())
        assert left == sorted([live.name, elsewhere.name, recent_old_version.name])
        assert (live / "customers_part-00001.csv").exists()
    finally:
        live_proc.kill()
        live_proc.wait()
        live_proc.stdout.close()
        for p in sync_tmp.glob("dinmo-sync-*"):
            shutil.rmtree(p)


def test_a_run_dagster_reports_finished_never_blocks(env) -> None:
    snapshot_and_deliver(env, "people", "20250101T000000.000000Z")
    # A live pid on another machine: only Dagster's word is known, and it says the run is finished.
    journal(env, "people", "20250102T000000.000000Z", JournalState.WRITING, [], owner="elsewhere:1")
    result = snapshot_and_deliver(env, "people", "20250103T000000.000000Z",
                                  is_alive=lambda run_id, owner: False)
    assert result.sync_type == "delta"
    with pytest.raises(sync.SyncError, match="is running"):
        journal(env, "people", "20250104T000000.000000Z", JournalState.WRITING, [], owner="elsewhere:1")
        snapshot_and_deliver(env, "people", "20250105T000000.000000Z", is_alive=lambda run_id, owner: True)


def csv_rows(path: Path) -> list[list[str]]:
    return list(csv.reader(io.StringIO(path.read_text(encoding="utf-8"))))


def read_events(result: sync.SyncResult) -> list[tuple[str, str, str]]:
    assert len(result.files) == 1
    rows = csv_rows(Path(result.files[0].removeprefix("file://")))
    assert rows[0] == ["order_id", "amount", "ordered_at"]
    return [tuple(r) for r in rows[1:]]


def test_event_sync_delivers_each_event_once_including_late_ones(env) -> None:
    r1 = snapshot_and_deliver(env, "events", "20250414T120000.000000Z")
    assert sorted(read_events(r1)) == [
        (str(i), f"{10 * i}.00", (T0 - timedelta(hours=10 - i)).isoformat(timespec="microseconds")) for i in range(1, 6)]
    last = T0 - timedelta(hours=5)  # the newest event delivered
    with duckdb.connect(str(env.dir / "wh.duckdb")) as con:
        con.executemany("insert into raw.orders values (?, ?, ?)", [
            (6, 60, last + timedelta(minutes=30)),   # new
            (7, 70, last - timedelta(minutes=90)),   # late, within the 2-hour lookback: delivered
            (8, 80, last - timedelta(hours=3)),      # later than the lookback: outside the window
        ])
        # An already delivered event inside the window is not sent again, even when edited.
        con.execute("update raw.orders set amount = 99 where order_id = 5")
    t = sync_target(env.project, "events", env.resources)
    snap = sync.take_snapshot(t, "20250414T130000.000000Z")
    assert snap.window_start == last - timedelta(hours=2)
    r2 = sync.deliver(t, "20250414T130000.000000Z")
    assert (r2.sync_type, r2.counts.added) == ("delta", 2)
    assert sorted(read_events(r2)) == [
        ("6", "60.00", (last + timedelta(minutes=30)).isoformat(timespec="microseconds")),
        ("7", "70.00", (last - timedelta(minutes=90)).isoformat(timespec="microseconds")),
    ]
    r3 = snapshot_and_deliver(env, "events", "20250414T140000.000000Z")
    assert (r3.counts.added, r3.files) == (0, [])


def test_state_tables_of_an_older_version_get_their_new_columns(env) -> None:
    t = sync_target(env.project, "people", env.resources)
    t.warehouse.ensure_schema("dinmo_delta_storage")
    # The journal as it was before the `owner` column existed.
    t.warehouse.execute([("create table dinmo_delta_storage.dinmo_sync_journal (activation text, "
                          "partition_key text, run_id text, state text, files text, updated_at timestamp)")])
    result = snapshot_and_deliver(env, "people", "20250101T000000.000000Z")
    assert result.rows_written == 5
    columns = t.warehouse.query_columns("select * from dinmo_delta_storage.dinmo_sync_journal")
    assert columns == ["activation", "partition_key", "run_id", "state", "files", "updated_at", "owner", "workdir",
                       "sync_mode", "summary"]


def test_a_killed_cli_sync_holding_the_pool_slot_does_not_block_the_next(tmp_path: Path, monkeypatch) -> None:
    """A sync killed outright keeps its run STARTED and its pool slot; the next `dinmo sync` reaps it."""
    from dinmo_dagster.assets.activations import OWNER_TAG, job_name, pool_name
    from dinmo_dagster.cli import run_sync

    (tmp_path / "dinmo.yaml").write_text(textwrap.dedent(PROJECT))
    with duckdb.connect(str(tmp_path / "wh.duckdb")) as con:
        con.execute("create schema raw")
        con.execute("create table raw.customers as select range as customer_id from range(1, 4)")
        con.execute("create table raw.orders (order_id int, amount decimal(8, 2), ordered_at timestamp)")
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dh"))
    project = load_project(tmp_path)
    ok, _md, error = run_sync(project, "people")  # creates the instance with its pool limit of 1
    assert ok, error
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], check=True,
                          capture_output=True, text=True).stdout.strip()
    with dg.DagsterInstance.get() as instance:
        job = build_definitions(project).resolve_job_def(job_name("people"))
        run = instance.create_run_for_job(job_def=job, tags={OWNER_TAG: f"{socket.gethostname()}:{dead}"},
                                          status=dg.DagsterRunStatus.STARTED)
        assert run.job_name == job_name("people")
        instance.event_log_storage.claim_concurrency_slot(pool_name("people"), run.run_id, "snapshots__people")
        assert instance.event_log_storage.get_concurrency_info(pool_name("people")).active_slot_count == 1
    # In a child process with a timeout: without the reaper, the sync would wait for the slot forever.
    proc = subprocess.run([sys.executable, "-m", "dinmo_dagster.cli", "--project", str(tmp_path), "sync", "people"],
                          check=False, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.splitlines()[0] == (f"sync people: run {run.run_id} had died (its process is gone): "
                                           "marked it failed")
    assert "sync people: delta sync (upsert, full_then_delta)" in proc.stdout
    with dg.DagsterInstance.get() as instance:
        assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.FAILURE
        assert instance.event_log_storage.get_concurrency_info(pool_name("people")).active_slot_count == 0


def people_csv(env, day: str) -> list[list[str]]:
    """The rows of the file the sync of ``day`` (YYYYMMDD) wrote."""
    return csv_rows(env.dir / "out" / f"people_{day}.csv")


def test_a_change_made_between_the_snapshot_and_the_delivery_is_sent_by_the_next_sync(env) -> None:
    snapshot_and_deliver(env, "people", "20250101T000000.000000Z")
    db = duckdb.connect(str(env.dir / "wh.duckdb"))
    try:
        db.execute("update raw.customers set name = 'x2' where customer_id = 2")
        t = sync_target(env.project, "people", env.resources)
        sync.take_snapshot(t, "20250102T000000.000000Z")
        db.execute("update raw.customers set name = 'y2' where customer_id = 2")
        db.execute("update raw.customers set name = 'z3' where customer_id = 3")
    finally:
        db.close()
    # The delivery sends the rows its snapshot holds: what the baseline will say was sent.
    second = sync.deliver(t, "20250102T000000.000000Z")
    assert (second.sync_type, second.counts.updated) == ("delta", 1)
    assert people_csv(env, "20250102") == [["customer_id", "name"], ["2", "x2"]]
    third = snapshot_and_deliver(env, "people", "20250103T000000.000000Z")
    assert (third.sync_type, third.counts.updated) == ("delta", 2)
    assert sorted(people_csv(env, "20250103")[1:]) == [["2", "y2"], ["3", "z3"]]


def test_a_full_refresh_asked_of_the_delivery_only_exports_every_record(env) -> None:
    """A run launched from the UI with full_refresh set on activations/A only: the snapshot holds the
    changes, so the delivery takes every row itself."""
    snapshot_and_deliver(env, "people", "20250101T000000.000000Z")
    db = duckdb.connect(str(env.dir / "wh.duckdb"))
    try:
        db.execute("update raw.customers set name = 'x2' where customer_id = 2")
    finally:
        db.close()
    t = sync_target(env.project, "people", env.resources)
    sync.take_snapshot(t, "20250102T000000.000000Z")
    result = sync.deliver(t, "20250102T000000.000000Z", force_full=True)
    assert (result.sync_type, result.rows_written) == ("full", 5)
    assert people_csv(env, "20250102") == [["customer_id", "name"], ["1", "c1"], ["2", "x2"], ["3", "c3"],
                                           ["4", "c4"], ["5", "c5"]]

"""The snapshot step in one pass: a ``full_only`` activation's key statistics and change counts come from
one query over the snapshot it builds (no uniqueness scan of the segment, no change-set table), a DuckDB
delta hashes the segment once, and every step's time is reported (``timings``).

Real warehouses (DuckDB, the PostgreSQL server, Redshift's dialect on it, Snowflake under fakesnow),
real files read back with ``csv``.
"""

from __future__ import annotations

import csv
import io
import json
import textwrap
from pathlib import Path

import dagster as dg
import duckdb
import pytest
from test_warehouse_scenarios import CHANGES, _reset_postgres, run, scenario_project

from dinmo_dagster import sync
from dinmo_dagster.assets.activations import sync_target
from dinmo_dagster.assets.models import refresh_upstream
from dinmo_dagster.config import load_project
from dinmo_dagster.resources import build_resources

SNAPSHOT_STEPS = {"setup", "snapshot", "key_stats_and_changes", "null_keys", "register"}
DELIVERY_STEPS = {"recover", "plan", "write", "promote", "retention"}


def read_csv(path: Path) -> list[list[str]]:
    return list(csv.reader(io.StringIO(path.read_text(encoding="utf-8"))))


def full_only(t: sync.SyncTarget) -> sync.SyncTarget:
    """The scenario's ``diff`` activation (mapping id, email, ltv, note) as a ``full_only`` snapshot export."""
    t.activation = t.activation.model_copy(update={"run_type": "full_only", "sync_mode": "snapshot",
                                                   "folder": "snap", "file_name": "snap_{DD}"})
    return t


@pytest.mark.parametrize("kind", ["duckdb", "postgres", "redshift", "snowflake"])
def test_a_full_only_sync_counts_its_changes_in_the_snapshot_step_on_every_warehouse(
    kind: str, request, tmp_path: Path, monkeypatch,
) -> None:
    with scenario_project(kind, request, tmp_path, monkeypatch) as env:
        t = full_only(sync_target(env.project, "diff", env.resources))
        refresh_upstream(env.project, "diff", env.resources)
        s1 = sync.take_snapshot(t, "20250101T000000.000000Z")
        r1 = sync.deliver(t, "20250101T000000.000000Z")
        assert (s1.rows, s1.null_keys, s1.duplicates_dropped) == (4, 0, 0)
        assert (r1.sync_type, r1.counts.added, r1.counts.updated, r1.counts.removed) == ("full", 4, 0, 0)
        assert set(s1.timings) == SNAPSHOT_STEPS and set(r1.timings) == DELIVERY_STEPS
        assert all(v >= 0 for v in [*s1.timings.values(), *r1.timings.values()])

        for statement in CHANGES:
            run(env.wh, statement.format(raw=env.raw))
        s2 = sync.take_snapshot(t, "20250102T000000.000000Z")
        # The counts are recorded with the snapshot, against the baseline it was compared with.
        registry = t.store.snapshot_info("20250102T000000.000000Z")
        assert registry is not None and registry.change_counts == (1, 2, 1)
        assert registry.base_partition == "20250101T000000.000000Z"
        assert "key_stats" not in s2.timings  # no separate uniqueness scan of the segment
        r2 = sync.deliver(t, "20250102T000000.000000Z")
        c = r2.counts
        # 6 added; 2 (note to NULL) and 5 (NULL to a value) updated; 3's unmapped column is no change; 4 removed
        assert (r2.sync_type, c.added, c.updated, c.removed, c.unchanged) == ("full", 1, 2, 1, 1)
        assert read_csv(env.dir / "out" / "snap" / "snap_02.csv")[0] == ["id", "email", "ltv", "note"]
        assert sorted(read_csv(env.dir / "out" / "snap" / "snap_02.csv")[1:]) == [
            ["2", "bob@example.com", "900.00", ""],
            ["3", "cle@example.com", "600.10", ""],
            ["5", "eve@example.com", "510.00", "now set"],
            ["6", "fay@example.com", "800.00", "new"],
        ]
        assert "chg__" not in " ".join(str(r) for r in env.wh.query(
            "select table_name from information_schema.tables")).lower()
    if kind in ("postgres", "redshift"):  # the server is shared by the session's tests: leave nothing behind
        _reset_postgres(request.getfixturevalue("postgres_server"))


PROJECT = """
sources:
  wh: {{type: duckdb, path: {db}}}
models:
  customers: {{source: wh, table: raw.customers, primary_key: customer_id, order_by: updated_at}}
segments:
  everyone: {{model: customers, sql: "select * from {{{{ model }}}}"}}
destinations:
  out: {{type: local, path: out}}
activations:
  snap:
    segment: everyone
    destination: out
    folder: snap
    file_name: "snap_{{DD}}"
    sync_mode: snapshot
  diff:
    segment: everyone
    destination: out
    folder: diff
    file_name: "diff_{{DD}}"
    sync_mode: difference
"""


@pytest.fixture
def duck(tmp_path: Path):
    db = tmp_path / "wh.duckdb"
    con = duckdb.connect(str(db))
    con.execute("create schema raw")
    con.execute("create table raw.customers (customer_id integer, email varchar, updated_at timestamp)")
    con.execute("insert into raw.customers values (1, 'a@x.org', '2025-01-01'), (2, 'b@x.org', '2025-01-01'),"
                " (3, 'c@x.org', '2025-01-01')")
    con.close()
    (tmp_path / "dinmo.yaml").write_text(textwrap.dedent(PROJECT.format(db=db)))
    project = load_project(tmp_path)
    with dg.build_resources(build_resources(project)) as resources:
        yield project, resources, tmp_path


def _sync(project, resources, name: str, key: str) -> tuple[sync.SnapshotResult, sync.SyncResult]:
    t = sync_target(project, name, resources)
    refresh_upstream(project, name, resources)
    return sync.take_snapshot(t, key), sync.deliver(t, key)


def _insert(project, resources, values: str) -> None:
    sync_target(project, "snap", resources).warehouse.execute([f"insert into raw.customers values {values}"])


def test_a_full_only_snapshot_with_duplicate_and_null_keys_is_taken_again_with_one_row_per_key(duck) -> None:
    project, resources, root = duck
    _sync(project, resources, "snap", "20250101T000000.000000Z")
    # A newer row for customer 2 (it wins: the highest updated_at), an older one for 3 (it loses), no key.
    _insert(project, resources, "(2, 'b2@x.org', '2025-02-01'), (3, 'c0@x.org', '2024-01-01'), "
                                "(NULL, 'nokey@x.org', '2025-01-01')")
    snap, result = _sync(project, resources, "snap", "20250102T000000.000000Z")
    assert (snap.rows, snap.duplicates_dropped, snap.null_keys) == (3, 2, 1)
    assert (result.counts.added, result.counts.updated, result.counts.removed, result.counts.unchanged) == (0, 1, 0, 2)
    header, *body = read_csv(root / "out" / "snap" / "snap_02.csv")
    assert header == ["customer_id", "email", "updated_at"]
    assert sorted(body) == [["1", "a@x.org", "2025-01-01T00:00:00.000000"],
                            ["2", "b2@x.org", "2025-02-01T00:00:00.000000"],
                            ["3", "c@x.org", "2025-01-01T00:00:00.000000"]]
    info = sync_target(project, "snap", resources).store.snapshot_info("20250102T000000.000000Z")
    assert info is not None and info.deduped and info.change_counts == (0, 1, 0)
    # The baseline is the de-duplicated snapshot: the same rows again are no change.
    _, again = _sync(project, resources, "snap", "20250103T000000.000000Z")
    assert (again.counts.added, again.counts.updated, again.counts.removed, again.counts.unchanged) == (0, 0, 0, 3)


def test_a_duckdb_delta_hashes_the_segment_once_and_sends_each_change_once(duck) -> None:
    project, resources, root = duck
    first, _ = _sync(project, resources, "diff", "20250101T000000.000000Z")
    assert "key_stats" in first.timings and "snapshot" in first.timings
    # A newer duplicate of 2 (sent as its update), a new customer 4, customer 1 gone.
    t = sync_target(project, "diff", resources)
    t.warehouse.execute([("insert into raw.customers values (2, 'b2@x.org', '2025-02-01'), "
                         "(4, 'd@x.org', '2025-01-01')"), "delete from raw.customers where customer_id = 1"])
    snap, result = _sync(project, resources, "diff", "20250102T000000.000000Z")
    assert (snap.rows, snap.duplicates_dropped) == (3, 1)
    assert (result.sync_type, result.counts.added, result.counts.updated, result.counts.removed) == ("delta", 1, 1, 1)
    out = root / "out" / "diff"
    assert read_csv(out / "diff_02_added.csv")[1:] == [["4", "d@x.org", "2025-01-01T00:00:00.000000"]]
    assert read_csv(out / "diff_02_updated.csv")[1:] == [["2", "b2@x.org", "2025-02-01T00:00:00.000000"]]
    assert read_csv(out / "diff_02_removed.csv")[1:] == [["1", "a@x.org", "2025-01-01T00:00:00.000000"]]
    # The new snapshot holds the hash of each row as it was read: nothing changed, nothing is sent.
    _, again = _sync(project, resources, "diff", "20250103T000000.000000Z")
    assert (again.counts.added, again.counts.updated, again.counts.removed, again.counts.unchanged) == (0, 0, 0, 3)
    assert json.loads(json.dumps(again.timings)) == again.timings and set(again.timings) == DELIVERY_STEPS

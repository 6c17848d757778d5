"""A DuckDB delta sync that writes only its changes and updates the baseline in place.

With ``keep_snapshots: 1`` a DuckDB ``full_then_delta`` file activation keeps no snapshot of its own per
sync: the snapshot step writes the changed keys only (the rows table), and the promotion deletes and
inserts those keys in the baseline's snapshot table, then renames it, in the transaction that moves the
baseline. These tests check what a user sees (the exact rows of each file, the change counts, the
tables left in the delta storage schema) through sequences that a wrong in-place update would get
wrong: a key deleted then added again, a row changed in two syncs in a row and back to its first
values, duplicate keys, and syncs killed (SIGKILL, in a child process) before, during and after the
promotion, then run again.

Real DuckDB files, a ``local`` destination, files read back with ``csv``.
"""

from __future__ import annotations

import csv
import io
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from dinmo_dagster import sync
from dinmo_dagster.assets.activations import sync_target
from dinmo_dagster.assets.models import refresh_upstream
from dinmo_dagster.config import load_project
from dinmo_dagster.resources import build_resources
from dinmo_dagster.state import RowsKind

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
  diff:
    segment: everyone
    destination: out
    folder: diff
    file_name: "diff_{{DD}}"
    sync_mode: difference
    run_type: full_then_delta
    keep_snapshots: 1
  up:
    segment: everyone
    destination: out
    folder: up
    file_name: "up_{{DD}}"
    sync_mode: upsert
    run_type: full_then_delta
    keep_snapshots: 1
  snap:
    segment: everyone
    destination: out
    folder: snap
    file_name: "snap_{{DD}}"
    sync_mode: snapshot
    run_type: full_only
    keep_snapshots: 1
  kept:
    segment: everyone
    destination: out
    folder: kept
    file_name: "kept_{{DD}}"
    sync_mode: upsert
    run_type: full_then_delta
    keep_snapshots: 2
"""

HEADER = ["customer_id", "email", "updated_at"]


def key(day: int) -> str:
    """The partition key of the sync of January ``day`` (its files are named ``_<DD>``)."""
    return f"202501{day:02d}T000000.000000Z"


def ts(day: int) -> str:
    return f"2025-01-{day:02d}T00:00:00.000000"


class Env:
    """A project with one DuckDB file; syncs run in-process as the activation assets run them."""

    def __init__(self, root: Path, resources) -> None:
        self.root, self.resources = root, resources
        self.project = load_project(root)

    def target(self, name: str) -> sync.SyncTarget:
        return sync_target(self.project, name, self.resources)

    def sql(self, *statements: str) -> None:
        self.target("diff").warehouse.execute(list(statements))

    def query(self, sql: str) -> list[tuple]:
        return self.target("diff").warehouse.query(sql)

    def snapshot(self, name: str, day: int) -> sync.SnapshotResult:
        refresh_upstream(self.project, name, self.resources)
        return sync.take_snapshot(self.target(name), key(day))

    def sync(self, name: str, day: int) -> tuple[sync.SnapshotResult, sync.SyncResult]:
        snap = self.snapshot(name, day)
        return snap, sync.deliver(self.target(name), key(day))

    def file(self, name: str, day: int, suffix: str = "") -> list[list[str]]:
        """The rows of a delivered CSV file, sorted, after checking its header."""
        header, *body = csv.reader(
            io.StringIO(
                (self.root / "out" / name / f"{name}_{day:02d}{suffix}.csv").read_text(encoding="utf-8")
            )
        )
        assert header == HEADER
        return sorted(body, key=lambda r: int(r[0]))

    def tables(self, name: str) -> list[str]:
        """The activation's tables in the delta storage schema (snapshots, rows, values), sorted."""
        return sorted(
            r[0]
            for r in self.query(
                "select table_name from information_schema.tables where table_schema = 'dinmo_delta_storage' "
                f"and regexp_matches(table_name, '^[a-z]+__{name}(__|$)')"
            )
        )

    def baseline_key(self, name: str) -> str | None:
        base = self.target(name).store.baseline()
        return base.partition_key if base else None

    def baseline_keys(self, name: str) -> list[int]:
        """The keys in the baseline's snapshot table, sorted (one row each, or the test fails)."""
        base = self.target(name).store.baseline()
        assert base is not None
        table = self.target(name).snapshot_table(base.partition_key).sql(dialect="duckdb")
        keys = [r[0] for r in self.query(f"select customer_id from {table} order by 1")]
        assert len(keys) == len(set(keys))
        return keys


def counts(result: sync.SyncResult) -> tuple[int, int, int, int]:
    c = result.counts
    return c.added, c.updated, c.removed, c.unchanged


@pytest.fixture
def env(tmp_path: Path):
    db = tmp_path / "wh.duckdb"
    con = duckdb.connect(str(db))
    con.execute("create schema raw")
    con.execute("create table raw.customers (customer_id integer, email varchar, updated_at timestamp)")
    con.execute(
        "insert into raw.customers values (1, 'a@x.org', '2025-01-01'), (2, 'b@x.org', '2025-01-01'),"
        " (3, 'c@x.org', '2025-01-01')"
    )
    con.close()
    (tmp_path / "dinmo.yaml").write_text(textwrap.dedent(PROJECT.format(db=db)))
    with dg.build_resources(build_resources(load_project(tmp_path))) as resources:
        yield Env(tmp_path, resources)


def test_a_delta_writes_only_its_changes_and_the_promotion_updates_the_baseline_in_place(env: Env) -> None:
    _, first = env.sync("diff", 1)
    assert first.sync_type == "full" and env.tables("diff") == [
        "rows__diff__20250101t000000_000000z",
        "snap__diff__20250101t000000_000000z",
        "vals__diff",
    ]
    env.sql(
        "insert into raw.customers values (4, 'd@x.org', '2025-01-02')",
        "update raw.customers set email = 'b2@x.org' where customer_id = 2",
        "delete from raw.customers where customer_id = 3",
    )
    snap = env.snapshot("diff", 2)
    assert (snap.rows, snap.null_keys, snap.duplicates_dropped) == (3, 0, 0)
    info = env.target("diff").store.snapshot_info(key(2))
    assert info is not None and (info.rows_kind, info.base_partition, info.row_count) == (
        RowsKind.CHANGES,
        key(1),
        3,
    )
    # The snapshot step wrote the 3 changes only: no snapshot of every key for this sync.
    assert env.tables("diff") == [
        "rows__diff__20250101t000000_000000z",
        "rows__diff__20250102t000000_000000z",
        "snap__diff__20250101t000000_000000z",
        "vals__diff",
    ]
    assert env.query("select count(*) from dinmo_delta_storage.rows__diff__20250102t000000_000000z") == [(3,)]

    result = sync.deliver(env.target("diff"), key(2))
    assert (result.sync_type, *counts(result)) == ("delta", 1, 1, 1, 1)
    assert env.file("diff", 2, "_added") == [["4", "d@x.org", ts(2)]]
    assert env.file("diff", 2, "_updated") == [["2", "b2@x.org", ts(1)]]
    assert env.file("diff", 2, "_removed") == [["3", "c@x.org", ts(1)]]
    # The baseline's table became this sync's snapshot; the previous one is gone, not copied.
    assert env.baseline_key("diff") == key(2)
    assert env.tables("diff") == [
        "rows__diff__20250102t000000_000000z",
        "snap__diff__20250102t000000_000000z",
        "vals__diff",
    ]
    assert env.baseline_keys("diff") == [1, 2, 4]
    assert env.target("diff").store.baseline().row_count == 3  # type: ignore[union-attr]

    _, again = env.sync("diff", 3)
    assert (again.sync_type, *counts(again)) == ("delta", 0, 0, 0, 3)
    assert (
        env.file("diff", 3, "_added")
        == env.file("diff", 3, "_updated")
        == env.file("diff", 3, "_removed")
        == []
    )


def test_a_key_deleted_then_added_again_is_removed_then_added_with_its_new_values(env: Env) -> None:
    env.sync("diff", 1)
    env.sql("delete from raw.customers where customer_id = 2")
    _, removed = env.sync("diff", 2)
    assert counts(removed) == (0, 0, 1, 2) and env.file("diff", 2, "_removed") == [["2", "b@x.org", ts(1)]]
    assert env.baseline_keys("diff") == [1, 3]

    # Back with the very values it had: the baseline no longer holds it, so it is added.
    env.sql("insert into raw.customers values (2, 'b@x.org', '2025-01-01')")
    _, back = env.sync("diff", 3)
    assert counts(back) == (1, 0, 0, 2) and env.file("diff", 3, "_added") == [["2", "b@x.org", ts(1)]]
    assert env.baseline_keys("diff") == [1, 2, 3]

    # Deleted and added again with other values between two syncs: one update, sent once.
    env.sql(
        "delete from raw.customers where customer_id = 2",
        "insert into raw.customers values (2, 'b3@x.org', '2025-01-04')",
    )
    _, swapped = env.sync("diff", 4)
    assert counts(swapped) == (0, 1, 0, 2)
    assert env.file("diff", 4, "_updated") == [["2", "b3@x.org", ts(4)]]
    assert env.file("diff", 4, "_removed") == env.file("diff", 4, "_added") == []

    _, quiet = env.sync("diff", 5)
    assert counts(quiet) == (0, 0, 0, 3) and env.baseline_keys("diff") == [1, 2, 3]


def test_a_row_changed_in_two_syncs_in_a_row_and_back_to_its_first_values_is_sent_each_time(env: Env) -> None:
    env.sync("up", 1)
    for day, email in ((2, "a2@x.org"), (3, "a3@x.org"), (4, "a@x.org")):
        env.sql(f"update raw.customers set email = '{email}' where customer_id = 1")
        _, result = env.sync("up", day)
        # Each time against the baseline the previous promotion left: the hash it inserted is the new one.
        assert counts(result) == (0, 1, 0, 2), day
        assert env.file("up", day) == [["1", email, ts(1)]]
    _, quiet = env.sync("up", 5)
    assert counts(quiet) == (0, 0, 0, 3) and quiet.files == []
    assert env.tables("up") == ["rows__up__20250105t000000_000000z", "snap__up__20250105t000000_000000z"]


def test_duplicate_keys_are_taken_again_with_one_row_per_key_and_null_keys_are_counted(env: Env) -> None:
    env.sync("up", 1)
    # A newer row for 2 (it wins), an older one for 3 (it loses: no change), a new key twice, no key.
    env.sql(
        "insert into raw.customers values (2, 'b2@x.org', '2025-01-05'), (3, 'c0@x.org', '2024-01-01'),"
        " (5, 'e-old@x.org', '2025-01-01'), (5, 'e@x.org', '2025-01-02'), (NULL, 'nokey@x.org', '2025-01-01')"
    )
    snap, result = env.sync("up", 2)
    assert (snap.rows, snap.duplicates_dropped, snap.null_keys) == (4, 3, 1)
    assert counts(result) == (1, 1, 0, 2)
    assert env.file("up", 2) == [["2", "b2@x.org", ts(5)], ["5", "e@x.org", ts(2)]]
    assert env.baseline_keys("up") == [1, 2, 3, 5]
    _, quiet = env.sync("up", 3)
    assert counts(quiet) == (0, 0, 0, 4)


@pytest.mark.parametrize("name", ["kept", "snap"])
def test_keep_snapshots_above_one_and_full_only_syncs_keep_a_whole_snapshot_per_sync(
    env: Env, name: str
) -> None:
    """Keeping earlier snapshots needs each one whole, and a ``full_only`` sync's one-pass snapshot costs
    what applying its changes in place would: such activations build their own per sync."""
    env.sync(name, 1)
    env.sql("update raw.customers set email = 'a2@x.org' where customer_id = 1")
    env.snapshot(name, 2)
    info = env.target(name).store.snapshot_info(key(2))
    assert info is not None and info.rows_kind is (RowsKind.DELTA if name == "kept" else RowsKind.NONE)
    assert f"snap__{name}__20250102t000000_000000z" in env.tables(name)  # its own snapshot, whole
    result = sync.deliver(env.target(name), key(2))
    assert counts(result) == (0, 1, 0, 2)
    everyone = [["1", "a2@x.org", ts(1)], ["2", "b@x.org", ts(1)], ["3", "c@x.org", ts(1)]]
    assert env.file(name, 2) == (everyone[:1] if name == "kept" else everyone)
    assert env.baseline_key(name) == key(2) and env.baseline_keys(name) == [1, 2, 3]


def test_a_baseline_that_moved_since_the_changes_were_taken_is_never_updated_with_them(env: Env) -> None:
    """Two snapshots taken against the same baseline: the second one's changes are taken again at its
    delivery, against the baseline the first one's promotion left, never applied over it."""
    env.sync("up", 1)
    env.sql("update raw.customers set email = 'a2@x.org' where customer_id = 1")
    env.snapshot("up", 2)
    env.sql("update raw.customers set email = 'b2@x.org' where customer_id = 2")
    env.snapshot("up", 3)  # against day 1 too: its changes are 1 and 2
    sync.deliver(env.target("up"), key(2))
    assert env.target("up").store.snapshot_info(key(3)).base_partition == key(1)  # type: ignore[union-attr]
    late = sync.deliver(env.target("up"), key(3))
    assert counts(late) == (0, 1, 0, 2) and env.file("up", 3) == [["2", "b2@x.org", ts(1)]]
    assert env.baseline_key("up") == key(3) and env.baseline_keys("up") == [1, 2, 3]
    _, quiet = env.sync("up", 4)
    assert counts(quiet) == (0, 0, 0, 3)
    with pytest.raises(sync.SyncError, match="the changes of sync .* were taken against the baseline"):
        sync._apply_changes_sql(env.target("up"), key(9), key(1))


# --------------------------------------------------------------------------------------------------
# Syncs killed around the promotion, in a child process
# --------------------------------------------------------------------------------------------------

KILLED_SYNC = textwrap.dedent('''
    """A sync of activation 'diff' that dies by SIGKILL at one point of its promotion."""
    import os, signal, sys

    import dagster as dg

    from dinmo_dagster import sync
    from dinmo_dagster.assets.activations import sync_target
    from dinmo_dagster.assets.models import refresh_upstream
    from dinmo_dagster.config import load_project
    from dinmo_dagster.resources import build_resources
    from dinmo_dagster.warehouses.duckdb import DuckDBWarehouse

    root, key, when = sys.argv[1], sys.argv[2], sys.argv[3]

    def die(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGKILL)

    if when == "before_promotion":  # every file landed; the machine dies before the baseline moves
        sync._promote = die
    elif when == "during_promotion":  # the in-place update ran, its transaction is not committed
        run = DuckDBWarehouse._run_statements

        def run_then_die(self, conn, statements):
            if any("RENAME TO" in s for s in statements):
                conn.begin()
                for statement in statements:
                    conn.execute(statement)
                die()
            return run(self, conn, statements)

        DuckDBWarehouse._run_statements = run_then_die
    elif when == "after_promotion":  # the baseline moved; the journal still says 'written'
        journal = sync._journal

        def journal_then_die(t, partition_key, run_id, state, *args, **kwargs):
            if state == "done":
                die()
            return journal(t, partition_key, run_id, state, *args, **kwargs)

        sync._journal = journal_then_die
    project = load_project(root)
    with dg.build_resources(build_resources(project)) as r:
        refresh_upstream(project, "diff", r)
        t = sync_target(project, "diff", r)
        sync.take_snapshot(t, key)
        sync.deliver(t, key, run_id="killed-run")
    sys.exit("the sync was not killed")
''')


@pytest.mark.parametrize("when", ["before_promotion", "during_promotion", "after_promotion"])
def test_a_sync_killed_around_its_promotion_loses_no_change_and_applies_its_changes_once(
    env: Env,
    when: str,
) -> None:
    env.sync("diff", 1)
    env.sql(
        "insert into raw.customers values (4, 'd@x.org', '2025-01-02')",
        "update raw.customers set email = 'b2@x.org' where customer_id = 2",
        "delete from raw.customers where customer_id = 3",
    )
    script = env.root / "killed_sync.py"
    script.write_text(KILLED_SYNC, encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, str(script), str(env.root), key(2), when],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    # Every file of the killed sync landed.
    assert (
        env.file("diff", 2, "_added"),
        env.file("diff", 2, "_updated"),
        env.file("diff", 2, "_removed"),
    ) == ([["4", "d@x.org", ts(2)]], [["2", "b2@x.org", ts(1)]], [["3", "c@x.org", ts(1)]])
    if when == "after_promotion":
        assert env.baseline_key("diff") == key(2) and env.baseline_keys("diff") == [1, 2, 4]
    else:  # the baseline did not move, and its table is whole (an uncommitted update is rolled back)
        assert env.baseline_key("diff") == key(1) and env.baseline_keys("diff") == [1, 2, 3]

    # More changes after the kill: the next sync completes the dead one (without sending it again),
    # then sends exactly these.
    env.sql(
        "update raw.customers set email = 'a2@x.org' where customer_id = 1",
        "update raw.customers set email = 'd2@x.org' where customer_id = 4",
    )
    _, nxt = env.sync("diff", 3)
    if when != "after_promotion":
        assert nxt.recovered_partitions == [key(2)]
    assert (nxt.sync_type, *counts(nxt)) == ("delta", 0, 2, 0, 1)
    assert env.file("diff", 3, "_updated") == [["1", "a2@x.org", ts(1)], ["4", "d2@x.org", ts(2)]]
    assert env.file("diff", 3, "_added") == env.file("diff", 3, "_removed") == []
    assert env.baseline_key("diff") == key(3) and env.baseline_keys("diff") == [1, 2, 4]
    history = dict(
        env.query("select partition_key, status from dinmo_stats.sync_history where activation = 'diff'")
    )
    assert (history[key(1)], history[key(3)]) == ("success", "success")
    if when != "after_promotion":  # (killed after its promotion, a sync has written no history row)
        assert history[key(2)] == "recovered"

    # Removed later, a record goes with the values it was last sent with (the in-place baseline agrees).
    env.sql("delete from raw.customers where customer_id = 4")
    _, last = env.sync("diff", 4)
    assert counts(last) == (0, 0, 1, 2) and env.file("diff", 4, "_removed") == [["4", "d2@x.org", ts(2)]]
    assert env.tables("diff") == [
        "rows__diff__20250104t000000_000000z",
        "snap__diff__20250104t000000_000000z",
        "vals__diff",
    ]

"""The sync state store (``dinmo_dagster.state``) on DuckDB and on the real PostgreSQL server.

Each test reads the state tables back twice: through the store (enums, dataclasses) and with plain
SQL, as a user querying the warehouse sees them.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar

import pyarrow as pa
import pytest
from fakes.server import FakeRequest, FakeResponse, FakeServer

from dinmo_dagster.platforms import (
    ActivationSpec,
    BatchOutcome,
    HttpResponse,
    IdentifierSpec,
    Journal,
    Limits,
    Platform,
    PlatformSettings,
    PreparedRequest,
    Record,
    RecordResult,
    deliver,
)
from dinmo_dagster.state import (
    Baseline,
    HistoryEntry,
    JournalEntry,
    JournalState,
    Rejection,
    RowsKind,
    SnapshotInfo,
    SyncStateStore,
    SyncStatus,
)
from dinmo_dagster.warehouses import Warehouse, WarehouseError, warehouse_from_config

DELTA, STATS = "state_test_delta", "state_test_stats"
T0 = datetime(2025, 4, 14, 9, 0, 0)


@pytest.fixture(params=["duckdb", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> SyncStateStore:
    """A store of activation ``vip`` whose helper schemas are fresh."""
    if request.param == "duckdb":
        wh = warehouse_from_config("wh", {"type": "duckdb", "path": str(tmp_path / "wh.duckdb")})
    else:
        wh = warehouse_from_config("pg", request.getfixturevalue("postgres_server").config())
        wh.execute([f"DROP SCHEMA IF EXISTS {DELTA} CASCADE", f"DROP SCHEMA IF EXISTS {STATS} CASCADE"])
    s = SyncStateStore(wh, "vip", delta_storage=DELTA, stats=STATS)
    s.ensure()
    return s


def sql(store: SyncStateStore, text: str) -> list[tuple]:
    return store.warehouse.query(text)


# ---------------------------------------------------------------------------------------------------------
# Baseline, snapshots, retention
# ---------------------------------------------------------------------------------------------------------


def register(store: SyncStateStore, partition: str, rows: int, kind: RowsKind, base: str | None = None) -> None:
    store.warehouse.execute(store.register_snapshot_sql(partition, f"snap__vip__{partition}", rows, kind, False, base))


def test_the_baseline_is_the_last_promoted_snapshot_and_retention_keeps_it(store: SyncStateStore) -> None:
    assert store.baseline() is None
    register(store, "p1", 10, RowsKind.FULL)
    store.warehouse.execute(store.register_snapshot_sql("p2", "snap__vip__p2", 12, RowsKind.DELTA, True, "p1"))
    register(store, "p3", 11, RowsKind.DELTA, "p2")
    register(store, "p4", 9, RowsKind.NONE)
    assert store.snapshot_info("p2") == SnapshotInfo(12, RowsKind.DELTA, True, "p1")
    assert store.snapshot_info("p9") is None
    assert sql(store, f"select partition_key, rows_kind, deduped, base_partition from {DELTA}.dinmo_snapshots "
                      "order by partition_key") == [
        ("p1", "full", 0, None), ("p2", "delta", 1, "p1"), ("p3", "delta", 0, "p2"), ("p4", "none", 0, None)]

    store.warehouse.execute(store.promote_sql("p1", "snap__vip__p1", 10, None))
    store.warehouse.execute(store.promote_sql("p2", "snap__vip__p2", 12, "vals__vip"))
    assert store.baseline() == Baseline("p2", 12, "vals__vip")
    assert sql(store, f"select activation, partition_key, snapshot_table, row_count, values_table "
                      f"from {DELTA}.dinmo_baselines") == [("vip", "p2", "snap__vip__p2", 12, "vals__vip")]
    # Another activation of the same source has its own state.
    assert SyncStateStore(store.warehouse, "other", DELTA, STATS).baseline() is None

    assert store.snapshot_partitions() == ["p4", "p3", "p2", "p1"]
    assert store.retention(keep=1) == ["p3", "p1"]  # the newest one and the baseline stay
    store.warehouse.execute([store.forget_snapshot_sql(p) for p in store.retention(keep=1)])
    assert store.snapshot_partitions() == ["p4", "p2"]


# ---------------------------------------------------------------------------------------------------------
# Journal and history
# ---------------------------------------------------------------------------------------------------------


def test_journal_states_are_stored_by_name_and_read_back_as_enums(store: SyncStateStore) -> None:
    store.journal("p1", "run-1", JournalState.WRITING, ["vip_1.csv"], workdir="/tmp/dinmo-sync-h-1-1-abc",
                  sync_mode="upsert", summary={"added": 2}, owner="host-a:41")
    assert store.journal_entries() == [JournalEntry("p1", JournalState.WRITING, ["vip_1.csv"], "run-1", "host-a:41",
                                                    "/tmp/dinmo-sync-h-1-1-abc", "upsert", {"added": 2})]
    store.journal("p1", "run-1", JournalState.WRITTEN, ["vip_1.csv", "vip_2.csv"], sync_mode="upsert")
    store.journal("p2", "run-2", JournalState.FAILED, [], sync_mode="upsert")
    store.journal("p0", "", JournalState.DONE, ["vip_0.csv"], sync_mode="snapshot")
    store.journal("p3", "", JournalState.ABANDONED, ["vip_3.csv"], sync_mode="upsert")
    assert sql(store, f"select partition_key, state, files from {DELTA}.dinmo_sync_journal order by partition_key") == [
        ("p0", "done", '["vip_0.csv"]'), ("p1", "written", '["vip_1.csv", "vip_2.csv"]'), ("p2", "failed", "[]"),
        ("p3", "abandoned", '["vip_3.csv"]')]
    assert [(e.partition_key, e.state) for e in store.journal_entries()] == [
        ("p0", JournalState.DONE), ("p1", JournalState.WRITTEN), ("p2", JournalState.FAILED),
        ("p3", JournalState.ABANDONED)]
    assert [e.state for e in store.journal_entries("p2")] == [JournalState.FAILED]
    # Only files of syncs whose files all landed count as delivered.
    assert store.delivered_files() == {"vip_0.csv": ("p0", "snapshot"), "vip_1.csv": ("p1", "upsert"),
                                       "vip_2.csv": ("p1", "upsert")}
    assert [s for s in JournalState if s.in_flight] == [JournalState.WRITING, JournalState.WRITTEN]


def test_history_rows_carry_their_status_and_counts(store: SyncStateStore) -> None:
    store.record_history(HistoryEntry("p1", "run-1", SyncStatus.SUCCESS, "full", "full_then_delta", "upsert",
                                      rows_added=20, rows_written=20, files=1, bytes=300, started_at=T0,
                                      finished_at=T0 + timedelta(seconds=3)))
    store.record_history(HistoryEntry("p2", "run-2", SyncStatus.RECOVERED, "delta", "full_then_delta", "upsert",
                                      rows_updated=2, rows_unchanged=18, rows_written=2, files=1,
                                      started_at=T0 + timedelta(hours=1), completed_by="run-3"))
    store.record_history(HistoryEntry("p3", "run-3", SyncStatus.FAILED, "delta", "full_then_delta", "upsert",
                                      started_at=T0 + timedelta(hours=2), error="warehouse unreachable"))
    assert sql(store, f"select partition_key, run_id, status, rows_added, rows_updated, rows_written, files, "
                      f"error, completed_by from {STATS}.sync_history order by started_at") == [
        ("p1", "run-1", "success", 20, 0, 20, 1, None, None),
        ("p2", "run-2", "recovered", 0, 2, 2, 1, None, "run-3"),
        ("p3", "run-3", "failed", 0, 0, 0, 0, "warehouse unreachable", None)]
    assert store.history("p1") == [HistoryEntry("p1", "run-1", SyncStatus.SUCCESS, "full", "full_then_delta",
                                                "upsert", rows_added=20, rows_written=20, files=1, bytes=300,
                                                started_at=T0, finished_at=T0 + timedelta(seconds=3))]
    assert [h.status for h in store.history()] == [SyncStatus.SUCCESS, SyncStatus.RECOVERED, SyncStatus.FAILED]
    assert [h.status.delivered for h in store.history()] == [True, True, False]
    assert store.history("p2", run_id="run-9") == []


# ---------------------------------------------------------------------------------------------------------
# Rejected records
# ---------------------------------------------------------------------------------------------------------


def test_rejected_records_are_retried_for_retry_rejected_days_then_reported_and_dropped(
        store: SyncStateStore) -> None:
    day = timedelta(days=1)
    store.record_rejections("p1", [("7", "upsert", "INVALID_EMAIL: not an address"),
                                   ("9", "upsert", "MISSING_FIELD: name")], now=T0)
    # The same sync retried (same partition) is not a new attempt; the next sync is.
    store.record_rejections("p1", [("7", "upsert", "INVALID_EMAIL: not an address")], now=T0 + timedelta(minutes=5))
    store.record_rejections("p2", [("7", "upsert", "INVALID_EMAIL: still not an address"),
                                   ("3", "delete", "NOT_FOUND")], now=T0 + day)
    assert sql(store, f"select activation, record_key, operation, reason, attempts, first_seen, last_seen "
                      f"from {DELTA}.dinmo_rejections order by operation, record_key") == [
        ("vip", "3", "delete", "NOT_FOUND", 1, T0 + day, T0 + day),
        ("vip", "7", "upsert", "INVALID_EMAIL: still not an address", 2, T0, T0 + day),
        ("vip", "9", "upsert", "MISSING_FIELD: name", 1, T0, T0)]

    assert store.keys_to_retry(now=T0 + 13 * day) == ["3", "7", "9"]
    assert store.keys_to_retry("upsert", now=T0 + 13 * day) == ["7", "9"]
    # The platform accepted 9 since: it is no longer a rejection.
    store.clear_rejections("upsert", ["9"])
    assert store.keys_to_retry("upsert", now=T0 + 13 * day) == ["7"]

    # Past retry_rejected_days (14 by default, counted from the first rejection) a record is not retried.
    assert store.keys_to_retry(now=T0 + 14 * day) == ["3"]
    assert store.expired_rejections(now=T0 + 14 * day) == [
        Rejection("7", "upsert", "INVALID_EMAIL: still not an address", 2, T0, T0 + day)]
    assert store.keys_to_retry(retry_rejected_days=30, now=T0 + 14 * day) == ["3", "7"]
    assert [r.record_key for r in store.drop_expired_rejections(now=T0 + 14 * day)] == ["7"]
    assert store.rejections() == [Rejection("3", "delete", "NOT_FOUND", 1, T0 + day, T0 + day)]
    assert store.drop_expired_rejections(now=T0 + 14 * day) == []


# ---------------------------------------------------------------------------------------------------------
# The platform journal: a killed sync re-sends only what was not acknowledged
# ---------------------------------------------------------------------------------------------------------


class ListSettings(PlatformSettings):
    service: str = "audiences"


class ListPlatform(Platform):
    """A test platform (members of a list, 100 per request) whose fake answers per member."""

    name = "list_test"
    settings_model = ListSettings
    services: ClassVar = {"audiences": ("add", "remove")}
    default_base_url = "https://list.invalid"
    limits = Limits(max_records_per_batch=100, requests_per_window=1000, window_seconds=1.0, max_concurrency=1)
    die_at_request: int | None = None  # the process dies when sending this request (1-based)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sent = 0

    def identifier_spec(self, name: str) -> IdentifierSpec | None:
        return IdentifierSpec("id") if name == "external_id" else None

    def record_input(self, operation: str, record: Record) -> dict[str, Any]:
        return {"key": record.key, "ids": record.identifiers}

    def build_request(self, operation: str, inputs: Sequence[Any], records: Sequence[Record]) -> PreparedRequest:
        return PreparedRequest("POST", f"/v1/{operation}", json={"members": list(inputs)})

    def deliver_batch(self, operation: str, records: Sequence[Record], inputs: Sequence[Any],
                      transport: Any) -> BatchOutcome:
        self.sent += 1
        if self.sent == self.die_at_request:
            raise SystemExit("killed")
        return super().deliver_batch(operation, records, inputs, transport)

    def parse_response(self, operation: str, records: Sequence[Record], response: HttpResponse) -> BatchOutcome:
        rejected = (response.json() or {}).get("rejected", {})
        return BatchOutcome([RecordResult(r.key, "rejected", rejected[r.key], "BAD_MEMBER") if r.key in rejected
                             else RecordResult(r.key, "accepted") for r in records])


class ListApi:
    """The list's server: refuses the members listed in ``refuse``."""

    def __init__(self) -> None:
        self.refuse: set[str] = set()
        self.server = FakeServer(self)

    def __call__(self, request: FakeRequest) -> FakeResponse:
        keys = [m["key"] for m in request.json["members"]]
        return FakeResponse(200, {"rejected": {k: f"BAD_MEMBER: member {k} refused" for k in keys if k in self.refuse}})

    def keys_sent(self, since: int = 0) -> list[str]:
        return [m["key"] for r in self.server.requests[since:] for m in r.json["members"]]


@pytest.fixture
def list_api() -> Iterator[ListApi]:
    api = ListApi()
    with api.server:
        yield api


SPEC = ActivationSpec("vip_list", "customer_id", {"external_id": "customer_id"})


def members(n: int) -> dict[str, list[pa.RecordBatch]]:
    return {"add": [pa.record_batch({"customer_id": list(range(1, n + 1))})]}


def test_a_killed_platform_sync_re_sends_only_what_was_not_acknowledged(store: SyncStateStore,
                                                                        list_api: ListApi) -> None:
    list_api.refuse = {"7"}
    platform = ListPlatform(ListSettings(base_url=list_api.server.url), destination="vip_list")
    platform.die_at_request = 3
    journal: Journal = store.platform_journal("p1")
    with pytest.raises(SystemExit):
        deliver(platform, SPEC, members(500), journal)
    acknowledged = store.acknowledged_keys("p1", "add")
    # The first batch was journalled before the third request went out; the second may have been too.
    first, second = {str(i) for i in range(1, 101)} - {"7"}, {str(i) for i in range(101, 201)}
    assert acknowledged in (first, first | second)
    assert sql(store, f"select count(*) from {DELTA}.dinmo_acknowledgements where activation = 'vip' "
                      "and partition_key = 'p1' and operation = 'add'") == [(len(acknowledged),)]

    # The retry of the same sync, in a new process: a new store, nothing cached.
    again = SyncStateStore(store.warehouse, "vip", DELTA, STATS)
    before = len(list_api.server.requests)
    with again.platform_journal("p1") as retry_journal:
        result = deliver(ListPlatform(ListSettings(base_url=list_api.server.url), destination="vip_list"), SPEC,
                         members(500), retry_journal)
    resent = list_api.keys_sent(before)
    assert sorted(resent, key=int) == sorted({str(i) for i in range(1, 501)} - acknowledged, key=int)
    assert result.counts("add").already_acknowledged == len(acknowledged)
    assert again.rejections() == [Rejection("7", "add", "BAD_MEMBER: member 7 refused", 1,
                                            again.rejections()[0].first_seen, again.rejections()[0].last_seen)]
    assert again.keys_to_retry("add") == ["7"]

    # The next sync sends 7 again and the platform takes it: its rejection is cleared.
    list_api.refuse = set()
    with again.platform_journal("p2") as next_journal:
        deliver(ListPlatform(ListSettings(base_url=list_api.server.url), destination="vip_list"), SPEC,
                {"add": [pa.record_batch({"customer_id": [7]})]}, next_journal)
    assert again.rejections() == []
    assert again.acknowledged_keys("p2", "add") == {"7"}
    again.warehouse.execute([again.clear_acknowledgements_sql("p1")])
    assert again.acknowledged_keys("p1", "add") == set()


# ---------------------------------------------------------------------------------------------------------
# Bulk writes: Warehouse.insert_rows and the journal's group commits
# ---------------------------------------------------------------------------------------------------------


def test_insert_rows_writes_the_arrow_rows_exactly_in_one_transaction_with_its_statements(
        store: SyncStateStore) -> None:
    wh = store.warehouse
    wh.execute(f"CREATE TABLE {DELTA}.bulk (record_key text, note text, seen_at timestamp)")
    table = wh.qualify(DELTA, "bulk")
    keys = ["O'Brien", "back\\slash", "tab\there", "line\nbreak", "é ü 漢字", "'); DROP TABLE bulk; --", ""]
    rows = pa.table({"record_key": keys, "note": ["x", None, "y", "z", "w", "v", "u"],
                     "seen_at": pa.array([T0] * len(keys), pa.timestamp("us"))})
    wh.insert_rows(table, rows, before=[f"INSERT INTO {DELTA}.bulk VALUES ('before', NULL, NULL)"],
                   after=[f"UPDATE {DELTA}.bulk SET note = 'after' WHERE record_key = 'before'"])
    assert sorted(sql(store, f"select record_key, note, seen_at from {DELTA}.bulk"), key=lambda r: r[0]) == sorted(
        [*zip(keys, ["x", None, "y", "z", "w", "v", "u"], [T0] * len(keys)), ("before", "after", None)],
        key=lambda r: r[0])

    # The portable default (multi-row INSERTs of literals, what Snowflake, BigQuery and Redshift get) writes
    # the same rows.
    wh.execute(f"DELETE FROM {DELTA}.bulk WHERE record_key <> 'before'")
    Warehouse.insert_rows(wh, table, rows)
    assert sorted(sql(store, f"select record_key, note, seen_at from {DELTA}.bulk"), key=lambda r: r[0]) == sorted(
        [*zip(keys, ["x", None, "y", "z", "w", "v", "u"], [T0] * len(keys)), ("before", "after", None)],
        key=lambda r: r[0])

    # A statement that fails after the rows undoes them and the statements before: one transaction.
    with pytest.raises(WarehouseError):
        wh.insert_rows(table, pa.table({"record_key": ["late"], "note": ["n"],
                                        "seen_at": pa.array([T0], pa.timestamp("us"))}),
                       before=[f"DELETE FROM {DELTA}.bulk"], after=["SELECT * FROM no_such_table_here"])
    assert sql(store, f"select count(*) from {DELTA}.bulk") == [(len(keys) + 1,)]


class CountingWarehouse:
    """The store's real warehouse, counting the transactions that write the journal."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.transactions: list[list[str]] = []  # the statements of each write, bulk inserts as "INSERT rows"

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def execute(self, statements: str | Sequence[str]) -> None:
        self.transactions.append([statements] if isinstance(statements, str) else list(statements))
        self.inner.execute(statements)

    def insert_rows(self, table: Any, rows: pa.Table, *, before: Sequence[str] = (),
                    after: Sequence[str] = ()) -> None:
        self.transactions.append([*before, f"INSERT {rows.num_rows} rows", *after])
        self.inner.insert_rows(table, rows, before=before, after=after)


class SlowListApi(ListApi):
    """The list's server, answering each request after 20 ms (a platform across a network)."""

    def __call__(self, request: FakeRequest) -> FakeResponse:
        time.sleep(0.02)
        return super().__call__(request)


def test_the_journal_writes_the_batches_answered_together_in_one_transaction(store: SyncStateStore) -> None:
    store.record_rejections("p0", [("42", "add", "BAD_MEMBER: member 42 refused")])
    api = SlowListApi()
    api.refuse = {"7"}
    counting = CountingWarehouse(store.warehouse)
    counted = SyncStateStore(counting, "vip", DELTA, STATS)  # type: ignore[arg-type]

    class Concurrent(ListPlatform):
        limits = Limits(max_records_per_batch=10, requests_per_window=1000, window_seconds=1.0, max_concurrency=4)

    with api.server, counted.platform_journal("p1") as journal:
        result = deliver(Concurrent(ListSettings(base_url=api.server.url), destination="vip_list"), SPEC,
                         members(400), journal)
    assert result.accepted == 399 and result.batches == 40

    # Every answered key is journalled, in fewer transactions than batches (the batches answered while a
    # write ran go together), and only 42, which had a kept rejection, costs a DELETE of dinmo_rejections.
    assert store.acknowledged_keys("p1", "add") == {str(i) for i in range(1, 401)} - {"7"}
    writes = [t for t in counting.transactions if any("INSERT" in s for s in t)]
    assert len(writes) < 40
    assert sum(int(s.split()[1]) for t in writes for s in t if s.startswith("INSERT ") and s.endswith(" rows")) == 399
    deletes = [s for t in writes for s in t if s.upper().startswith("DELETE")]
    assert len(deletes) == 2  # the rejection of 7 replaced (delete + insert), the rejection of 42 cleared
    assert [(r.record_key, r.reason) for r in store.rejections()] == [("7", "BAD_MEMBER: member 7 refused")]


def test_a_journal_write_that_fails_loses_nothing_and_the_next_one_writes_it(store: SyncStateStore) -> None:
    journal = store.platform_journal("p1")
    journal.acknowledged("add", ["1", "2"])
    journal.rejected("9", "add", "BAD_MEMBER: member 9 refused")
    store.warehouse.execute(f"DROP TABLE {DELTA}.dinmo_acknowledgements")
    with pytest.raises(WarehouseError, match="dinmo_acknowledgements"):
        journal.flush()
    assert sql(store, f"select count(*) from {DELTA}.dinmo_rejections") == [(0,)]  # one transaction: none of it

    SyncStateStore(store.warehouse, "vip", DELTA, STATS).ensure_platform()  # the table is back
    journal.acknowledged("add", ["3"])
    journal.flush()
    assert store.acknowledged_keys("p1", "add") == {"1", "2", "3"}
    assert [(r.record_key, r.reason, r.attempts) for r in store.rejections()] == [
        ("9", "BAD_MEMBER: member 9 refused", 1)]

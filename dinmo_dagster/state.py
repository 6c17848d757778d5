"""Sync state: what an activation's syncs leave in its warehouse, behind one object.

:class:`SyncStateStore` reads and writes the state of one activation. Its tables hold names, record
keys, counts and timestamps (never the rows' values); all but the history live in the source's delta
storage schema (``dinmo_delta_storage`` unless ``helper_schemas`` says otherwise):

- ``dinmo_baselines``: one row per activation, its last successful sync (the baseline the next delta
  is computed against);
- ``dinmo_snapshots``: one row per snapshot taken (row count, :class:`RowsKind`, the baseline a
  delta was computed against): what retention drops;
- ``dinmo_sync_journal``: one row per sync, its :class:`JournalState` and the files it wrote or is
  about to write: what recovery reads after a killed process;
- ``sync_history`` (in the stats schema, ``dinmo_stats``): one row per finished sync, its
  :class:`SyncStatus` and counts;
- ``dinmo_rejections``: records a platform rejected, kept so later syncs try them again for
  ``retry_rejected_days`` (with their latest values), then reported and dropped;
- ``dinmo_acknowledgements``: per batch, the record keys a platform accepted during one sync, so a
  killed sync's retry re-sends only what was not acknowledged (:meth:`SyncStateStore.platform_journal`).

Every statement is a sqlglot expression rendered for the warehouse's dialect (``delta``'s helpers):
values are literals, never pasted text. A platform sync's acknowledgements, written often, go in bulk
through ``Warehouse.insert_rows`` (Arrow on DuckDB, COPY on PostgreSQL). No Dagster import.
"""

from __future__ import annotations

import json
import os
import socket
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from enum import StrEnum
from typing import Any, Protocol, Self

import pyarrow as pa
from sqlglot import exp

from dinmo_dagster import delta

OWNER = f"{socket.gethostname()}:{os.getpid()}"
"""This process, as journal entries name the process that wrote them (``host:pid``)."""

RETRY_REJECTED_DAYS = 14
"""How long a rejected record is tried again by later syncs, by default (days since first rejected)."""

_IN_CHUNK = 1000  # keys per IN list or multi-row INSERT: every warehouse takes statements this size


class JournalState(StrEnum):
    """Where one sync stands, in ``dinmo_sync_journal``."""

    WRITING = "writing"  # claimed the activation and uploading: ``files`` is what it wrote or is about to
    WRITTEN = "written"  # every file landed; the baseline has not moved yet
    DONE = "done"  # promoted to baseline, by itself or by the recovery of a later sync
    FAILED = "failed"  # failed in-process (or refused to run); the files it had uploaded were removed
    ABANDONED = "abandoned"  # its process died while writing; a later sync removed its files

    @property
    def in_flight(self) -> bool:
        """A sync in this state is still running, or died (recovery tells which)."""
        return self in (JournalState.WRITING, JournalState.WRITTEN)

    @property
    def delivered(self) -> bool:
        """Every file of a sync in this state is in the destination."""
        return self in (JournalState.WRITTEN, JournalState.DONE)


class SyncStatus(StrEnum):
    """How a sync ended, in ``sync_history``."""

    SUCCESS = "success"
    FAILED = "failed"
    RECOVERED = "recovered"  # died after all its files landed; a later run (``completed_by``) promoted it

    @property
    def delivered(self) -> bool:
        """The sync's files were delivered and its snapshot became the baseline."""
        return self in (SyncStatus.SUCCESS, SyncStatus.RECOVERED)


class RowsKind(StrEnum):
    """What the rows table of a snapshot (``rows__A__<partition>``) holds."""

    FULL = "full"  # every row of the segment, with values (a full sync)
    DELTA = "delta"  # the changes against the baseline, with values (a delta sync)
    NONE = "none"  # no rows table: a ``full_only`` sync reads the segment when it writes
    # The changes against the baseline, with values, and no snapshot table yet: the promotion applies
    # them to the baseline's snapshot table in place and renames it (a DuckDB delta, ``sync._promote``).
    CHANGES = "changes"

    @property
    def is_delta(self) -> bool:
        """The rows table holds changes against one baseline (``base_partition``), not every row."""
        return self in (RowsKind.DELTA, RowsKind.CHANGES)


BASELINES = delta.StateTable("dinmo_baselines", (
    ("activation", "text"), ("partition_key", "text"), ("snapshot_table", "text"), ("row_count", "bigint"),
    ("promoted_at", "timestamp"), ("values_table", "text"),
))
SNAPSHOTS = delta.StateTable("dinmo_snapshots", (
    ("activation", "text"), ("partition_key", "text"), ("snapshot_table", "text"), ("row_count", "bigint"),
    ("created_at", "timestamp"), ("rows_kind", "text"), ("deduped", "bigint"), ("base_partition", "text"),
    ("change_counts", "text"),
))
# ``files``: JSON list of object paths; ``summary``: the sync's counts as JSON (the history row of a
# sync that recovery completes).
JOURNAL = delta.StateTable("dinmo_sync_journal", (
    ("activation", "text"), ("partition_key", "text"), ("run_id", "text"), ("owner", "text"),
    ("state", "text"), ("files", "text"), ("updated_at", "timestamp"), ("workdir", "text"),
    ("sync_mode", "text"), ("summary", "text"),
))
SYNC_HISTORY = delta.StateTable("sync_history", (
    ("activation", "text"), ("partition_key", "text"), ("run_id", "text"), ("status", "text"),
    ("sync_type", "text"), ("run_type", "text"), ("sync_mode", "text"), ("rows_added", "bigint"),
    ("rows_updated", "bigint"), ("rows_removed", "bigint"), ("rows_unchanged", "bigint"),
    ("rows_written", "bigint"), ("files", "bigint"), ("bytes", "bigint"), ("started_at", "timestamp"),
    ("finished_at", "timestamp"), ("error", "text"), ("completed_by", "text"),
))
# ``last_partition``: the sync that last rejected the record; a retry of that same sync does not count
# as a new attempt.
REJECTIONS = delta.StateTable("dinmo_rejections", (
    ("activation", "text"), ("record_key", "text"), ("operation", "text"), ("reason", "text"),
    ("attempts", "bigint"), ("first_seen", "timestamp"), ("last_seen", "timestamp"), ("last_partition", "text"),
))
ACKNOWLEDGEMENTS = delta.StateTable("dinmo_acknowledgements", (
    ("activation", "text"), ("partition_key", "text"), ("operation", "text"), ("record_key", "text"),
    ("acknowledged_at", "timestamp"),
))
SYNC_TABLES = (BASELINES, SNAPSHOTS, JOURNAL, SYNC_HISTORY)
PLATFORM_TABLES = (REJECTIONS, ACKNOWLEDGEMENTS)


class StateWarehouse(Protocol):
    """What the store needs of a warehouse (every ``Warehouse`` adapter has it)."""

    @property
    def dialect(self) -> str:
        """The sqlglot dialect statements are rendered in."""
        ...

    def qualify(self, schema: str, name: str) -> exp.Table:
        """Table ``name`` in ``schema``, quoted as the warehouse needs."""
        ...

    def ensure_schema(self, schema: str) -> None:
        """Create ``schema`` if it does not exist."""
        ...

    def execute(self, statements: str | Sequence[str]) -> None:
        """Run the statements in order, in one transaction where supported."""
        ...

    def query(self, sql: str) -> list[tuple]:
        """Every row of ``sql``."""
        ...

    def relation_columns(self, relation: exp.Expression) -> list[str]:
        """The column names of a table."""
        ...


@dataclass(frozen=True)
class Baseline:
    """The activation's last successful sync."""

    partition_key: str
    row_count: int
    values_table: str | None  # set once a difference activation keeps its delivered values


@dataclass(frozen=True)
class SnapshotInfo:
    """A snapshot as the registry knows it."""

    row_count: int
    rows_kind: RowsKind
    deduped: bool
    base_partition: str | None  # the baseline a delta snapshot was computed against
    # (added, updated, removed) against ``base_partition``, when the snapshot step counted them
    change_counts: tuple[int, int, int] | None = None


@dataclass(frozen=True)
class JournalEntry:
    """One sync's journal row."""

    partition_key: str
    state: JournalState
    files: list[str]
    run_id: str
    owner: str
    workdir: str | None
    sync_mode: str | None
    summary: dict[str, Any]


@dataclass(frozen=True)
class HistoryEntry:
    """One finished sync, as ``sync_history`` records it."""

    partition_key: str
    run_id: str
    status: SyncStatus
    sync_type: str
    run_type: str
    sync_mode: str
    rows_added: int = 0
    rows_updated: int = 0
    rows_removed: int = 0
    rows_unchanged: int = 0
    rows_written: int = 0
    files: int = 0
    bytes: int = 0
    started_at: datetime | None = None
    finished_at: datetime | None = None
    error: str | None = None
    completed_by: str | None = None


_HISTORY_INTS = ("rows_added", "rows_updated", "rows_removed", "rows_unchanged", "rows_written", "files", "bytes")


@dataclass(frozen=True)
class Rejection:
    """A record a platform rejected, and how often."""

    record_key: str
    operation: str
    reason: str
    attempts: int
    first_seen: datetime
    last_seen: datetime


def utc_now() -> datetime:
    """Now in UTC, without a time zone: how the state tables store times."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


def _chunks(items: Sequence[str]) -> list[Sequence[str]]:
    return [items[i:i + _IN_CHUNK] for i in range(0, len(items), _IN_CHUNK)]


class SyncStateStore:
    """The state of one activation's syncs in its warehouse: baseline, snapshots, journal, history,
    retention, rejected records and acknowledgements.

    ``delta_storage`` and ``stats`` are the source's helper schemas. Call :meth:`ensure` before the
    first read or write of a sync (it creates what is missing); the platform tables are created on
    first use.
    """

    def __init__(self, warehouse: StateWarehouse, activation: str, delta_storage: str = "dinmo_delta_storage",
                 stats: str = "dinmo_stats") -> None:
        self.warehouse = warehouse
        self.activation = activation
        self.delta_storage = delta_storage
        self.stats = stats
        self._platform_ready = False

    @property
    def dialect(self) -> str:
        """The warehouse's sqlglot dialect."""
        return self.warehouse.dialect

    def table(self, spec: delta.StateTable) -> exp.Table:
        """Where the state table ``spec`` lives: the history in the stats schema, the rest in delta storage."""
        return self.warehouse.qualify(self.stats if spec is SYNC_HISTORY else self.delta_storage, spec.name)

    # ------------------------------------------------------------------------------------------ setup

    def ensure(self) -> None:
        """Create the helper schemas and the sync's state tables on first use; tables created by an older
        version get the columns added since."""
        self.warehouse.ensure_schema(self.delta_storage)
        self.warehouse.ensure_schema(self.stats)
        self._create(SYNC_TABLES)

    def ensure_platform(self) -> None:
        """Create the tables of platform syncs (rejections, acknowledgements), once per store."""
        if not self._platform_ready:
            self.warehouse.ensure_schema(self.delta_storage)
            self._create(PLATFORM_TABLES)
            self._platform_ready = True

    def _create(self, specs: Sequence[delta.StateTable]) -> None:
        wh = self.warehouse
        wh.execute([delta.create_state_table_sql(self.table(s), s, self.dialect) for s in specs])
        upgrades = [sql for s in specs for sql in delta.add_columns_sql(
            self.table(s), s, wh.relation_columns(self.table(s)), self.dialect)]
        if upgrades:
            wh.execute(upgrades)

    def _select(self, spec: delta.StateTable, columns: Sequence[str], filters: dict[str, object] | None = None,
                order_by: str | None = None, desc: bool = False, where: exp.Expression | None = None) -> list[tuple]:
        return self.warehouse.query(delta.select_sql(
            self.table(spec), columns, {"activation": self.activation, **(filters or {})}, self.dialect,
            order_by=order_by, desc=desc, where=where))

    def _delete_sql(self, spec: delta.StateTable, filters: dict[str, object] | None = None,
                    where: exp.Expression | None = None) -> str:
        return delta.delete_sql(self.table(spec), {"activation": self.activation, **(filters or {})}, self.dialect,
                                where=where)

    def _insert_sql(self, spec: delta.StateTable, rows: Sequence[dict[str, object]]) -> list[str]:
        full = [{"activation": self.activation, **row} for row in rows]
        return [delta.insert_rows_sql(self.table(spec), spec, full[i:i + _IN_CHUNK], self.dialect)
                for i in range(0, len(full), _IN_CHUNK)]

    # --------------------------------------------------------------------------------------- baseline

    def baseline(self) -> Baseline | None:
        """The activation's last successful sync; None before the first."""
        rows = self._select(BASELINES, ["partition_key", "row_count", "values_table"])
        return Baseline(rows[0][0], int(rows[0][1]), rows[0][2]) if rows else None

    def promote_sql(self, partition_key: str, snapshot_table: str, row_count: int,
                    values_table: str | None) -> list[str]:
        """Statements that make ``partition_key`` the baseline (to run in one transaction with the
        statements that go with it)."""
        return [self._delete_sql(BASELINES), *self._insert_sql(BASELINES, [{
            "partition_key": partition_key, "snapshot_table": snapshot_table, "row_count": row_count,
            "promoted_at": utc_now(), "values_table": values_table}])]

    # -------------------------------------------------------------------------------------- snapshots

    def snapshot_info(self, partition_key: str) -> SnapshotInfo | None:
        """The registry's record of a partition's snapshot; None when there is none."""
        rows = self._select(SNAPSHOTS, ["row_count", "rows_kind", "deduped", "base_partition", "change_counts"],
                            {"partition_key": partition_key})
        if not rows:
            return None
        count, kind, deduped, against, counted = rows[0]
        changes = tuple(int(n) for n in json.loads(counted)) if counted else None
        return SnapshotInfo(int(count), RowsKind(kind or RowsKind.NONE), bool(deduped), against,
                            changes)  # type: ignore[arg-type]

    def register_snapshot_sql(self, partition_key: str, snapshot_table: str, row_count: int, rows_kind: RowsKind,
                              deduped: bool, base_partition: str | None,
                              change_counts: tuple[int, int, int] | None = None) -> list[str]:
        """Statements that record a partition's snapshot (replacing an earlier record of it), to run in
        the transaction that creates its tables. ``change_counts``: (added, updated, removed) against
        ``base_partition``, when the snapshot step counted them."""
        return [self._delete_sql(SNAPSHOTS, {"partition_key": partition_key}), *self._insert_sql(SNAPSHOTS, [{
            "partition_key": partition_key, "snapshot_table": snapshot_table, "row_count": row_count,
            "created_at": utc_now(), "rows_kind": rows_kind, "deduped": int(deduped),
            "base_partition": base_partition,
            "change_counts": json.dumps(list(change_counts)) if change_counts is not None else None}])]

    def forget_snapshot_sql(self, partition_key: str) -> str:
        """The statement that removes a partition's snapshot from the registry."""
        return self._delete_sql(SNAPSHOTS, {"partition_key": partition_key})

    def snapshot_partitions(self) -> list[str]:
        """The partitions that have a snapshot, newest first."""
        return [r[0] for r in self._select(SNAPSHOTS, ["partition_key"], order_by="partition_key", desc=True)]

    def retention(self, keep: int) -> list[str]:
        """The partitions whose snapshots retention drops: all but the newest ``keep`` and the baseline's."""
        partitions = self.snapshot_partitions()
        base = self.baseline()
        kept = set(partitions[:keep]) | ({base.partition_key} if base else set())
        return [p for p in partitions if p not in kept]

    # ---------------------------------------------------------------------------------------- journal

    def journal(self, partition_key: str, run_id: str, state: JournalState, files: Sequence[str] = (), *,
                workdir: str | None = None, sync_mode: str | None = None, summary: dict[str, Any] | None = None,
                owner: str = OWNER) -> None:
        """Record a sync's state (replacing its earlier entry): the objects it wrote or is about to write,
        the working directory of its part files and its counts (``summary``: what recovery puts in the
        history)."""
        self.warehouse.execute([self._delete_sql(JOURNAL, {"partition_key": partition_key}), *self._insert_sql(
            JOURNAL, [{
                "partition_key": partition_key, "run_id": run_id, "owner": owner, "state": JournalState(state),
                "files": json.dumps(list(files)), "updated_at": utc_now(), "workdir": workdir,
                "sync_mode": sync_mode, "summary": json.dumps(summary) if summary else None}])])

    def journal_entries(self, partition_key: str | None = None) -> list[JournalEntry]:
        """The journal's entries (of one partition, when given), oldest partition first."""
        rows = self._select(JOURNAL, ["partition_key", "state", "files", "run_id", "owner", "workdir", "sync_mode",
                                      "summary"],
                            {"partition_key": partition_key} if partition_key is not None else None,
                            order_by="partition_key")
        return [JournalEntry(pk, JournalState(state), json.loads(files or "[]"), run_id or "", owner or "", workdir,
                             mode, json.loads(summary or "{}"))
                for pk, state, files, run_id, owner, workdir, mode, summary in rows]

    def delivered_files(self) -> dict[str, tuple[str, str | None]]:
        """Object path -> (partition, sync mode) of the latest sync that delivered it (journal ``written``
        or ``done``)."""
        owners: dict[str, tuple[str, str | None]] = {}
        for entry in self.journal_entries():
            if entry.state.delivered:
                for path in entry.files:
                    owners[path] = (entry.partition_key, entry.sync_mode)
        return owners

    # ---------------------------------------------------------------------------------------- history

    def record_history(self, entry: HistoryEntry) -> None:
        """Append one finished sync to ``sync_history`` (``finished_at`` and ``started_at`` default to now)."""
        now = utc_now()
        row = {name: getattr(entry, name) for name, _ in SYNC_HISTORY.columns if name != "activation"}
        row["status"] = SyncStatus(entry.status)
        row["finished_at"] = entry.finished_at or now
        row["started_at"] = entry.started_at or now
        self.warehouse.execute(self._insert_sql(SYNC_HISTORY, [row]))

    def history(self, partition_key: str | None = None, run_id: str | None = None) -> list[HistoryEntry]:
        """The history rows of the activation (of one partition, of one run, when given), oldest first."""
        filters: dict[str, object] = {}
        if partition_key is not None:
            filters["partition_key"] = partition_key
        if run_id is not None:
            filters["run_id"] = run_id
        names = [n for n, _ in SYNC_HISTORY.columns if n != "activation"]
        out = []
        for row in self._select(SYNC_HISTORY, names, filters, order_by="started_at"):
            values = dict(zip(names, row))
            values["status"] = SyncStatus(values["status"])
            values["run_id"] = values["run_id"] or ""
            for name in _HISTORY_INTS:
                values[name] = int(values[name] or 0)
            out.append(HistoryEntry(**values))
        return out

    # ------------------------------------------------------------------------------------- rejections

    def record_rejections(self, partition_key: str, rejections: Iterable[tuple[str, str, str]],
                          now: datetime | None = None) -> None:
        """Keep the records a platform rejected during sync ``partition_key``: ``(record key, operation,
        reason)`` each. A record rejected before keeps its first rejection time and counts one more
        attempt (not when the same sync rejects it again, as a retried run does)."""
        self.warehouse.execute(self._rejection_sql(partition_key, rejections, now or utc_now()))

    def _rejection_sql(self, partition_key: str, rejections: Iterable[tuple[str, str, str]],
                       now: datetime) -> list[str]:
        self.ensure_platform()
        latest = {(op, key): reason for key, op, reason in rejections}  # the last reason of a record wins
        if not latest:
            return []
        statements: list[str] = []
        for op in sorted({op for op, _ in latest}):
            keys = sorted(key for o, key in latest if o == op)
            for chunk in _chunks(keys):
                before = {key: (int(attempts or 0), first, last)
                          for key, attempts, first, last in self._select(
                              REJECTIONS, ["record_key", "attempts", "first_seen", "last_partition"],
                              {"operation": op, "record_key": list(chunk)})}
                rows: list[dict[str, object]] = []
                for key in chunk:
                    attempts, first, last = before.get(key, (0, None, None))
                    rows.append({"record_key": key, "operation": op, "reason": latest[(op, key)][:1000],
                                 "attempts": attempts if last == partition_key else attempts + 1,
                                 "first_seen": first or now, "last_seen": now, "last_partition": partition_key})
                statements += [self._delete_sql(REJECTIONS, {"operation": op, "record_key": list(chunk)}),
                               *self._insert_sql(REJECTIONS, rows)]
        return statements

    def _cutoff(self, retry_rejected_days: float, now: datetime | None) -> exp.Expression:
        return delta.ts_literal((now or utc_now()) - timedelta(days=retry_rejected_days))

    def keys_to_retry(self, operation: str | None = None, retry_rejected_days: float = RETRY_REJECTED_DAYS,
                      now: datetime | None = None) -> list[str]:
        """The keys of the rejected records (of ``operation``, when given) that later syncs send again: those
        first rejected less than ``retry_rejected_days`` ago, sorted."""
        self.ensure_platform()
        where = exp.GT(this=delta.col("first_seen"), expression=self._cutoff(retry_rejected_days, now))
        rows = self._select(REJECTIONS, ["record_key"], {"operation": operation} if operation else None, where=where)
        return sorted({r[0] for r in rows})

    def rejections(self, operation: str | None = None) -> list[Rejection]:
        """Every kept rejection (of ``operation``, when given), by operation and key."""
        self.ensure_platform()
        return self._rejections({"operation": operation} if operation else {})

    def _rejections(self, filters: dict[str, object], where: exp.Expression | None = None) -> list[Rejection]:
        rows = self._select(REJECTIONS, ["record_key", "operation", "reason", "attempts", "first_seen", "last_seen"],
                            filters, where=where)
        return sorted((Rejection(key, op, reason or "", int(attempts or 0), first, last)
                       for key, op, reason, attempts, first, last in rows), key=lambda r: (r.operation, r.record_key))

    def clear_rejections(self, operation: str, keys: Sequence[str]) -> None:
        """Forget the rejections of ``keys`` for ``operation``: the platform accepted them since."""
        self.warehouse.execute(self._clear_rejections_sql(operation, keys))

    def _clear_rejections_sql(self, operation: str, keys: Sequence[str]) -> list[str]:
        self.ensure_platform()
        return [self._delete_sql(REJECTIONS, {"operation": operation, "record_key": list(chunk)})
                for chunk in _chunks(sorted(set(keys)))]

    def expired_rejections(self, retry_rejected_days: float = RETRY_REJECTED_DAYS,
                           now: datetime | None = None) -> list[Rejection]:
        """The rejected records no longer tried: first rejected ``retry_rejected_days`` ago or more."""
        self.ensure_platform()
        where = exp.LTE(this=delta.col("first_seen"), expression=self._cutoff(retry_rejected_days, now))
        return self._rejections({}, where)

    def drop_expired_rejections(self, retry_rejected_days: float = RETRY_REJECTED_DAYS,
                                now: datetime | None = None) -> list[Rejection]:
        """Remove the expired rejections (``expired_rejections``) and return them, to report."""
        now = now or utc_now()
        expired = self.expired_rejections(retry_rejected_days, now)
        if expired:
            where = exp.LTE(this=delta.col("first_seen"), expression=self._cutoff(retry_rejected_days, now))
            self.warehouse.execute([self._delete_sql(REJECTIONS, where=where)])
        return expired

    # ------------------------------------------------------------------------------- acknowledgements

    def acknowledged_keys(self, partition_key: str, operation: str) -> set[str]:
        """The keys the platform acknowledged for ``operation`` during sync ``partition_key``."""
        self.ensure_platform()
        return {r[0] for r in self._select(ACKNOWLEDGEMENTS, ["record_key"],
                                           {"partition_key": partition_key, "operation": operation})}

    def _acknowledge_sql(self, partition_key: str, operation: str, keys: Sequence[str], now: datetime) -> list[str]:
        self.ensure_platform()
        return self._insert_sql(ACKNOWLEDGEMENTS, [
            {"partition_key": partition_key, "operation": operation, "record_key": k, "acknowledged_at": now}
            for k in keys])

    def clear_acknowledgements_sql(self, partition_key: str) -> str:
        """The statement that forgets the acknowledgements of sync ``partition_key`` and of every earlier one
        (failed syncs never retried included): once it is promoted, the baseline says what was delivered.
        Partition keys sort by time; a later partition's acknowledgements stay."""
        self.ensure_platform()
        return self._delete_sql(ACKNOWLEDGEMENTS, where=exp.LTE(this=delta.col("partition_key"),
                                                                expression=delta.lit(partition_key)))

    def platform_journal(self, partition_key: str) -> PlatformJournal:
        """A journal of sync ``partition_key`` for the platform delivery engine (its ``Journal`` protocol)."""
        self.ensure_platform()
        return PlatformJournal(self, partition_key)


@dataclass
class PlatformJournal:
    """The platform engine's ``Journal`` on the warehouse: one sync's acknowledgements and rejections.

    **Write contract (group commit).** ``acknowledged`` and ``rejected`` note verdicts in memory;
    :meth:`flush` writes every verdict noted since the previous write in **one** transaction: the
    rejections (kept with their attempts), the acknowledgements (one bulk insert, ``insert_rows``: no
    SQL text per key) and, for accepted records that had a kept rejection, the deletion of that
    rejection. The delivery engine runs :meth:`flush` on its journal thread while its workers keep
    sending, one write at a time: the batches the platform answered while the previous write ran are
    written together, and the engine bounds what is acknowledged and not yet journalled (about 0.05 s
    of answers plus the write in progress, never more than ``20 x max_concurrency`` batches: see
    ``platforms.engine``). A process killed in that window re-sends those batches on its retry, which
    idempotent keys make harmless. A write also happens on the first :meth:`already_acknowledged` of
    an operation (before it reads the operation's keys once), when ``max_pending`` verdicts are waiting
    (for callers that never flush), and when the journal is used as a context manager, on exit.
    :meth:`flush` may run on another thread than the other calls; writes never overlap.

    A killed sync's retry of the same partition asks ``already_acknowledged`` and re-sends only the
    rest. The keys holding a kept rejection are read once per operation, so a batch whose records were
    never rejected costs no DELETE.
    """

    store: SyncStateStore
    partition_key: str
    max_pending: int = 10_000
    _pending: list[tuple[str, str, str]] = field(default_factory=list)  # (key, operation, reason)
    _accepted: list[tuple[str, Sequence[str], datetime]] = field(default_factory=list)  # (operation, keys, when)
    _waiting: int = 0  # verdicts noted and not written
    _known: dict[str, set[str]] = field(default_factory=dict)  # operation -> acknowledged keys, read once
    _rejected: dict[str, set[str]] = field(default_factory=dict)  # operation -> keys with a kept rejection
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)  # the buffers
    _writing: threading.Lock = field(default_factory=threading.Lock, repr=False)  # one write at a time

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.flush()

    def already_acknowledged(self, operation: str, keys: Sequence[str]) -> set[str]:
        """Which of ``keys`` this sync (an earlier attempt of it included) delivered for ``operation``."""
        if operation not in self._known:
            self.flush()  # read once, with everything noted so far; kept up to date by acknowledged()
            self._known[operation] = self.store.acknowledged_keys(self.partition_key, operation)
        known = self._known[operation]
        return {k for k in keys if k in known}

    def acknowledged(self, operation: str, keys: Sequence[str]) -> None:
        """The platform accepted ``keys`` for ``operation``: written with the next :meth:`flush`, which
        also forgets their kept rejections."""
        if not keys:
            return
        with self._lock:
            self._accepted.append((operation, list(keys), utc_now()))
            self._waiting += len(keys)
        if operation in self._known:  # else read whole from the warehouse on first ask
            self._known[operation].update(keys)
        if self._waiting >= self.max_pending:
            self.flush()

    def rejected(self, key: str, operation: str, reason: str) -> None:
        """The platform (or the engine, before sending) rejected this record, for ``reason``."""
        with self._lock:
            self._pending.append((key, operation, reason))
            self._waiting += 1
        if self._waiting >= self.max_pending:
            self.flush()

    def flush(self) -> None:
        """Write every verdict noted since the last write, in one transaction. On failure nothing is
        forgotten: the next flush writes it again."""
        with self._writing:
            with self._lock:
                pending, accepted = self._pending, self._accepted
                self._pending, self._accepted, self._waiting = [], [], 0
            if not pending and not accepted:
                return
            try:
                self._write(pending, accepted)
            except BaseException:
                with self._lock:  # kept, before what was noted since, for the next flush
                    self._pending[:0], self._accepted[:0] = pending, accepted
                    self._waiting += len(pending) + sum(len(keys) for _, keys, _ in accepted)
                raise

    def _write(self, pending: list[tuple[str, str, str]], accepted: list[tuple[str, Sequence[str], datetime]]) -> None:
        """One transaction: the rejections, the acknowledgements, the rejections the acceptances clear."""
        store = self.store
        now = utc_now()
        before = store._rejection_sql(self.partition_key, pending, now) if pending else []
        rejected_now: dict[str, set[str]] = {}
        for key, operation, _ in pending:
            rejected_now.setdefault(operation, set()).add(key)
        after: list[str] = []
        columns: dict[str, list[Any]] = {"activation": [], "partition_key": [], "operation": [], "record_key": [],
                                         "acknowledged_at": []}
        cleared: dict[str, set[str]] = {}
        for operation, keys, when in accepted:
            n = len(keys)
            columns["operation"] += [operation] * n
            columns["record_key"] += keys
            columns["acknowledged_at"] += [when] * n
            kept, now_rejected = self._rejected_keys(operation), rejected_now.get(operation, set())
            if kept or now_rejected:
                cleared.setdefault(operation, set()).update(k for k in keys if k in kept or k in now_rejected)
        for operation, keys in sorted(cleared.items()):
            if keys:
                after += store._clear_rejections_sql(operation, sorted(keys))
        rows = len(columns["record_key"])
        columns["activation"] = [store.activation] * rows
        columns["partition_key"] = [self.partition_key] * rows
        table = pa.table({
            name: pa.array(values, type=pa.timestamp("us") if name == "acknowledged_at" else pa.string())
            for name, values in columns.items()})
        store.warehouse.insert_rows(store.table(ACKNOWLEDGEMENTS), table, before=before, after=after)
        # Written: what the warehouse now holds as kept rejections.
        for operation, keys in rejected_now.items():
            self._rejected_keys(operation).update(keys)
        for operation, keys in cleared.items():
            self._rejected_keys(operation).difference_update(keys)

    def _rejected_keys(self, operation: str) -> set[str]:
        """The keys of ``operation`` that have a kept rejection (read from the warehouse once)."""
        if operation not in self._rejected:
            self.store.ensure_platform()
            self._rejected[operation] = {r[0] for r in self.store._select(
                REJECTIONS, ["record_key"], {"operation": operation})}
        return self._rejected[operation]

"""One activation's sync, end to end, with no Dagster imports.

The way of a row: the snapshot step stores keys and row hashes, and the rows the sync delivers (all of
them, or the changes) -> warehouse query over those rows (over the segment for ``full_only``) -> Arrow
batches -> mapping (in the SELECT) -> FileWriter parts -> Destination upload -> baseline promotion (for a
DuckDB source, DuckDB's own ``COPY (query) TO`` writes the file where it gives the same values, see
``_copy_export``; the file then takes the same naming, journal and upload path). The
Dagster assets in ``assets/`` call ``take_snapshot`` and ``deliver``; the CLI's ``preview`` calls
``preview``. The activation's state in the warehouse (baseline, snapshot registry, journal, history)
is read and written through ``SyncTarget.store``, a ``state.SyncStateStore``.

Guarantees:
- the baseline moves only after every file of the sync is in the destination;
- before its first upload a sync journals what it is about to write; a later sync removes what a dead
  one left behind, or, when all of it landed, promotes it without sending it twice (and records it in
  the sync history as ``recovered``);
- a sync that fails in-process deletes the files it had already uploaded;
- a file an earlier sync delivered is never overwritten by a later sync whose file name renders the
  same (``snapshot`` syncs may replace the activation's own earlier snapshot): the later sync fails
  before writing anything (``_check_overwrites``);
- part files are written in a private working directory whose name carries the host, pid and process
  start time, recorded in the journal: the next sync of the activation, and any sync on the machine,
  removes what a dead process left there (``sweep_workdirs``).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import socket
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from functools import cached_property
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pyarrow as pa
from sqlglot import exp

from dinmo_dagster import delta, naming, unload, writers
from dinmo_dagster.config import Activation, Model
from dinmo_dagster.destinations import FileDestination
from dinmo_dagster.platform_connectors import PlatformDestination
from dinmo_dagster.state import (
    ACKNOWLEDGEMENTS,
    OWNER,
    Baseline,
    HistoryEntry,
    JournalState,
    RowsKind,
    SyncStateStore,
    SyncStatus,
)
from dinmo_dagster.warehouses import HelperSchemas, Warehouse

PARTITION_FORMAT = "%Y%m%dT%H%M%S.%fZ"
DIFFERENCE_SUFFIXES = (delta.ADDED, delta.UPDATED, delta.REMOVED)

log = logging.getLogger("dinmo_dagster.sync")


class SyncError(Exception):
    """A sync refused to run or failed; the message is meant for the user. ``event``: what alerts call it
    (``failure``; ``removal_guard``, ``rejections``, ``size_change``, ``empty_segment``: see alerts.py)."""

    def __init__(self, message: str, event: str = "failure") -> None:
        super().__init__(message)
        self.event = event


def new_partition_key(now: datetime | None = None) -> str:
    """A sortable partition key from the sync's start time in UTC, e.g. ``20250414T090507.042000Z``."""
    now = now or datetime.now(timezone.utc)
    return now.astimezone(timezone.utc).strftime(PARTITION_FORMAT)


def partition_time(partition_key: str) -> datetime:
    """The sync's start time encoded in its partition key (UTC); all files of a sync share it."""
    try:
        return datetime.strptime(partition_key, PARTITION_FORMAT).replace(tzinfo=timezone.utc)
    except ValueError:
        # Partitions added by hand in the UI may have any name: fall back to "now".
        return datetime.now(timezone.utc)


def _table_suffix(partition_key: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in partition_key).lower()


@dataclass
class SyncTarget:
    """Everything a sync of one activation needs: its config, the warehouse and the destination."""

    name: str
    activation: Activation
    model_name: str
    model: Model
    segment_name: str
    warehouse: Warehouse
    destination: FileDestination | None  # None in a step that delivers nothing (the snapshot)
    schemas: HelperSchemas
    platform: PlatformDestination | None = None  # an activation to an API platform: its settings

    @property
    def dialect(self) -> str:
        return self.warehouse.dialect

    def segment_relation(self) -> exp.Table:
        """The view the sync reads: the segment's, or the model's for an activation of a whole model."""
        if self.activation.segment is None:
            return self.warehouse.qualify(self.schemas.segments,
                                          naming.warehouse_name("model_", self.model_name.replace(".", "__")))
        return self.warehouse.qualify(self.schemas.segments, naming.warehouse_name("segment_", self.segment_name))

    @cached_property
    def store(self) -> SyncStateStore:
        """The activation's sync state (baseline, snapshots, journal, history) in its warehouse."""
        return SyncStateStore(self.warehouse, self.name, self.schemas.delta_storage, self.schemas.stats)

    def _delta_table(self, prefix: str, partition_key: str | None = None) -> exp.Table:
        suffix = f"__{_table_suffix(partition_key)}" if partition_key is not None else ""
        return self.warehouse.qualify(self.schemas.delta_storage, naming.warehouse_name(prefix, self.name, suffix))

    def snapshot_table(self, partition_key: str) -> exp.Table:
        return self._delta_table("snap__", partition_key)

    def changes_table(self, partition_key: str) -> exp.Table:
        return self._delta_table("chg__", partition_key)

    def undone_table(self, partition_key: str) -> exp.Table:
        """A platform sync's keys the platform did not acknowledge, while its baseline is promoted."""
        return self._delta_table("und__", partition_key)

    def rows_table(self, partition_key: str) -> exp.Table:
        """The rows a sync delivers, with their values: all of them (full sync) or its changes (delta)."""
        return self._delta_table("rows__", partition_key)

    def values_table(self) -> exp.Table:
        """A difference activation's last delivered values of every record: where removed rows come from."""
        return self._delta_table("vals__")

    def keeps_values(self) -> bool:
        """Whether the activation keeps its last delivered values (``vals__A``): difference files list removed
        records with them; platforms remove records (and old identifiers) by them."""
        a = self.activation
        return (a.sync_mode == "difference" or a.platform_service is not None) and \
            a.effective_run_type == "full_then_delta"

    def sync_time(self, partition_key: str) -> datetime:
        """The sync's start time in the schedule's time zone (UTC without one)."""
        tz = self.activation.schedule.timezone if self.activation.schedule else "UTC"
        return partition_time(partition_key).astimezone(ZoneInfo(tz))


@dataclass
class SnapshotResult:
    table: str
    rows: int
    null_keys: int
    duplicates_dropped: int
    columns: list[str]
    window_start: datetime | None = None  # event syncs: the start of the event-time window
    timings: dict[str, float] = field(default_factory=dict)  # seconds per step (``_step``)


@dataclass
class ChangeCounts:
    added: int = 0
    updated: int = 0
    removed: int = 0
    unchanged: int = 0


@dataclass
class SyncResult:
    """What a sync did: what the asset's metadata and the CLI show."""

    sync_type: str  # "full" | "delta"
    counts: ChangeCounts
    rows_written: int = 0
    files: list[str] = field(default_factory=list)  # URIs
    bytes: int = 0
    duration_s: float = 0.0
    dropped_partitions: list[str] = field(default_factory=list)
    recovered: list[str] = field(default_factory=list)  # what recovery did, one line each
    recovered_partitions: list[str] = field(default_factory=list)  # dead syncs this one completed
    recovered_files: list[str] = field(default_factory=list)  # their files (URIs)
    platform: dict[str, Any] = field(default_factory=dict)  # a platform sync's delivery metrics
    writer: str = ""  # who wrote the files: "duckdb_copy", "arrow", or both in file order ("duckdb_copy, arrow")
    writer_reason: str = ""  # why a file did not go through DuckDB's COPY (a DuckDB source only)
    # The warehouse's own unload to GCS or streaming, and why: "unload (bigquery EXPORT DATA)", "streaming (...)"
    export_path: str = ""
    # Seconds per step of the delivery: recover, plan (change counts), write (files and uploads), promote
    # (baseline and delivered values), retention. The snapshot step's are in ``SnapshotResult.timings``.
    timings: dict[str, float] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------------------
# Setup and state
# ---------------------------------------------------------------------------------------------------------


@contextmanager
def _step(timings: dict[str, float], name: str) -> Iterator[None]:
    """Add the wall time of the block to ``timings[name]`` (seconds): the per-step figures of a sync."""
    started = time.perf_counter()
    try:
        yield
    finally:
        timings[name] = round(timings.get(name, 0.0) + time.perf_counter() - started, 4)


def exported_columns(t: SyncTarget, segment_columns: list[str]) -> list[tuple[str, str]]:
    """(source column, destination name) pairs: the mapping in its order, or every segment column."""
    pk = delta.resolve_column(t.model.primary_key, segment_columns)
    if pk not in segment_columns:
        raise SyncError(f"segment '{t.segment_name}' does not return the primary key '{pk}' of model "
                        f"'{t.model_name}'; columns: {', '.join(segment_columns)}")
    if t.activation.platform_service is not None:
        # A platform gets the match identifiers and the mapped columns, under their segment names: the
        # row hash covers only them, so a change elsewhere is no change.
        wanted = [*t.activation.platform_match.values(), *(t.activation.mapping or {})]
        found = [delta.resolve_column(c, segment_columns) for c in wanted]
        missing = [w for w, f in zip(wanted, found) if f not in segment_columns]
        if missing:
            raise SyncError(f"activations.{t.name}: column '{missing[0]}' is not in segment "
                            f"'{t.segment_name}'; available: {', '.join(segment_columns)}")
        return [(c, c) for c in dict.fromkeys(found)]
    if t.activation.mapping is None:
        return [(c, c) for c in segment_columns]
    pairs = [(delta.resolve_column(src, segment_columns), dst) for src, dst in t.activation.mapping.items()]
    missing = [src for src, _ in pairs if src not in segment_columns]
    if missing:
        raise SyncError(f"activations.{t.name}.mapping: column '{missing[0]}' is not in segment "
                        f"'{t.segment_name}'; available: {', '.join(segment_columns)}")
    return pairs


def _promote(t: SyncTarget, partition_key: str) -> list[str]:
    """Statements that make this partition's snapshot the baseline, in one transaction.

    A difference activation's delivered values follow (``_values_sql``).
    """
    info = t.store.snapshot_info(partition_key)
    rows_count, rows_kind = (info.row_count, info.rows_kind) if info else (0, RowsKind.NONE)
    statements, values_table = _values_sql(t, partition_key, rows_kind)
    if info is not None and rows_kind is RowsKind.CHANGES:
        statements += _apply_changes_sql(t, partition_key, info.base_partition)
    return statements + t.store.promote_sql(partition_key, t.snapshot_table(partition_key).name, rows_count,
                                            values_table)


def _apply_changes_sql(t: SyncTarget, partition_key: str, base_partition: str | None) -> list[str]:
    """Statements that make the baseline's snapshot table this sync's (``RowsKind.CHANGES``): its changes
    applied in place, the table renamed (``delta.apply_changes_sql``), in the promotion's transaction.

    The changes hold against the baseline they were taken against only: the delivery takes them again
    when the baseline moved (``plan``), so a promotion over another baseline is refused, never applied.
    """
    base = t.store.baseline()
    if base is None or base.partition_key != base_partition:
        raise SyncError(f"activation '{t.name}': the changes of sync {partition_key} were taken against the "
                        f"baseline {base_partition}, but the baseline is now "
                        f"{base.partition_key if base else 'gone'}; nothing was promoted. Run a new sync")
    rows = t.rows_table(partition_key)
    pk = delta.resolve_column(t.model.primary_key, t.warehouse.relation_columns(rows))
    baseline, target = t.snapshot_table(base.partition_key), t.snapshot_table(partition_key)
    return delta.apply_changes_sql(baseline, rows, target, pk, [pk], t.dialect)


def _values_sql(t: SyncTarget, partition_key: str, rows_kind: RowsKind) -> tuple[list[str], str | None]:
    """Statements that bring a difference activation's delivered values (``vals__A``) up to this sync,
    and the table's name (None when the activation keeps none).

    A full sync replaces them with its rows; so does a delta whose mapping changed (every hash changed,
    so its rows hold every record). Other deltas delete and re-insert their changed keys: applying one
    twice gives the same table, so a promotion repeated after a crash is harmless.
    """
    if not t.keeps_values() or rows_kind is RowsKind.NONE:
        return [], None
    wh, dialect = t.warehouse, t.dialect
    vals, rows = t.values_table(), t.rows_table(partition_key)
    columns = [c for c in wh.relation_columns(rows) if c != delta.CHANGE_COL]
    base = t.store.baseline()
    if rows_kind is RowsKind.FULL:
        return delta.create_table_sql(vals, delta.sent_rows_select(rows, columns), dialect), vals.name
    if base is None:  # a delta with no baseline left to apply it to: nothing to keep
        return [], None
    if base.values_table is not None:
        if set(columns) != set(wh.relation_columns(vals)):
            return delta.create_table_sql(vals, delta.sent_rows_select(rows, columns), dialect), vals.name
        statements: list[str] = []
    else:
        # An activation synced before it kept its values (an older version's full-width snapshot, or
        # another sync mode): start from what its baseline snapshot holds. Without values there, records
        # not sent since carry only their key when removed, until a full refresh.
        base_snap = t.snapshot_table(base.partition_key)
        known = [c for c in columns if c in wh.relation_columns(base_snap)]
        empty = exp.select(*[delta.col(c) for c in columns]).from_(rows).where(
            exp.EQ(this=delta.lit(1), expression=delta.lit(0)))
        statements = [*delta.create_table_sql(vals, empty, dialect), delta.render(exp.Insert(
            this=exp.Schema(this=vals.copy(), expressions=[delta.ident(c) for c in known]),
            expression=exp.select(*[delta.col(c) for c in known]).from_(base_snap)), dialect)]
    pk = delta.resolve_column(t.model.primary_key, columns)
    return statements + delta.apply_values_sql(vals, rows, pk, columns, dialect), vals.name


def _journal(t: SyncTarget, partition_key: str, run_id: str, state: JournalState, files: list[str],
             workdir: Path | None = None, summary: dict[str, Any] | None = None) -> None:
    """Record a sync's state in the journal, with this activation's sync mode."""
    t.store.journal(partition_key, run_id, state, files, workdir=str(workdir) if workdir else None,
                    sync_mode=t.activation.sync_mode, summary=summary)


# ---------------------------------------------------------------------------------------------------------
# Working directories of part files
# ---------------------------------------------------------------------------------------------------------

WORKDIR_PREFIX = "dinmo-sync-"
# Directories of versions that named them without their process (``dinmo-sync-<8 random characters>``):
# removed once untouched for this long, since nothing tells whether their process still runs.
LEGACY_WORKDIR_AGE_S = 24 * 3600
_WORKDIR_RE = re.compile(r"^dinmo-sync-(?P<host>.+)-(?P<pid>\d+)-(?P<start>\d+)-[a-z0-9_]+$")
_LEGACY_WORKDIR_RE = re.compile(r"^dinmo-sync-[a-z0-9_]{8}$")


def _host_token() -> str:
    """This machine's name as it appears in working directory names."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", socket.gethostname())[:64] or "host"


def _process_start(pid: int) -> int:
    """When process ``pid`` started, in clock ticks since boot (Linux ``/proc``); 0 when unknown.

    With the pid it identifies a process: a pid reused by a later process has another start time.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            data = stat.read()
        return int(data[data.rindex(b")") + 2:].split()[19])  # field 22, counted after "pid (comm) "
    except (OSError, ValueError, IndexError):
        return 0


def new_workdir() -> Path:
    """A private (0700) directory for this process's part files, in the system temporary directory
    (``TMPDIR``): ``dinmo-sync-<host>-<pid>-<process start>-<random>``, so that any later sync on this
    machine can tell whether the process that made it is gone."""
    pid = os.getpid()
    return Path(tempfile.mkdtemp(prefix=f"{WORKDIR_PREFIX}{_host_token()}-{pid}-{_process_start(pid)}-"))


def _workdir_dead(name: str) -> bool | None:
    """Whether the process that made working directory ``name`` is gone; None when the name says
    nothing of its process (not ours, or an older version's)."""
    m = _WORKDIR_RE.match(name)
    if m is None:
        return None
    if m["host"] != _host_token():
        return False  # another machine's (a shared temporary directory): syncs there clean it up
    pid, start = int(m["pid"]), int(m["start"])
    if process_alive(f"{socket.gethostname()}:{pid}") is False:
        return True
    current = _process_start(pid)
    return bool(start and current and current != start)  # the pid now belongs to another process


def _untouched_for(path: Path, seconds: float) -> bool:
    """Nothing in directory ``path`` (nor the directory itself) changed for ``seconds``."""
    try:
        newest = max([path.stat().st_mtime, *(p.stat().st_mtime for p in path.iterdir())])
    except OSError:
        return False
    return time.time() - newest > seconds


def sweep_workdirs() -> list[str]:
    """Remove the working directories (and the customer rows in them) that syncs on this machine left
    when their process died; returns their names. A directory of a live process is never touched."""
    try:
        candidates = sorted(Path(tempfile.gettempdir()).glob(f"{WORKDIR_PREFIX}*"))
    except OSError:
        return []
    removed = []
    for path in candidates:
        if path.is_symlink() or not path.is_dir():
            continue
        dead = _workdir_dead(path.name)
        if dead is None and _LEGACY_WORKDIR_RE.match(path.name):
            dead = _untouched_for(path, LEGACY_WORKDIR_AGE_S)
        if dead:
            shutil.rmtree(path, ignore_errors=True)
            if not path.exists():
                removed.append(path.name)
    return removed


def _remove_workdir(workdir: str | None, owner: str) -> None:
    """Remove a dead sync's working directory, as recorded in the journal: only on the machine that
    ran it, and only a directory named as this module names them (never any other path)."""
    if not workdir or owner.rpartition(":")[0] != socket.gethostname():
        return
    path = Path(workdir)
    if path.is_absolute() and _WORKDIR_RE.match(path.name) and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)


def take_snapshot(t: SyncTarget, partition_key: str, full: bool = False) -> SnapshotResult:
    """Store what this sync will deliver, with row hashes, in the delta storage schema.

    Two tables per sync: the snapshot (each record's key and row hash: the baseline of the next sync
    once this one succeeds) and, for ``full_then_delta`` activations, the rows this sync delivers with
    their values (every row for a full sync, the changes for a delta sync). ``full``: a full refresh.
    """
    with t.warehouse.session():
        return _take_snapshot(t, partition_key, full)


def incremental_events(t: SyncTarget) -> bool:
    """Event (fact) models synced with insert + full_then_delta go by their event-time cursor."""
    a = t.activation
    mode = a.platform_mode if a.platform_service is not None else a.sync_mode
    return (t.model.kind == "fact" and bool(t.model.time_column) and mode == "insert"
            and a.effective_run_type == "full_then_delta")


def lookback(a: Activation) -> timedelta:
    n, unit = a.lookback.split()
    return timedelta(**{unit.rstrip("s") + "s": int(n)})


def _take_snapshot(t: SyncTarget, partition_key: str, full: bool) -> SnapshotResult:
    timings: dict[str, float] = {}
    with _step(timings, "setup"):
        t.store.ensure()
        base = t.store.baseline()
        # A partition whose files all landed (journal 'written' or 'done') must keep the snapshot it
        # delivered: re-snapshotting it would let recovery promote rows that were never sent.
        delivered = t.store.journal_entries(partition_key)
    if (base and base.partition_key == partition_key) or any(e.state.delivered for e in delivered):
        raise SyncError(f"partition '{partition_key}' of activation '{t.name}' was already delivered; "
                        "start a new sync instead of re-running it")
    wh, dialect = t.warehouse, t.dialect
    seg: exp.Expression = t.segment_relation()
    seg_columns = wh.relation_columns(seg)
    mapping = exported_columns(t, seg_columns)
    pk = delta.resolve_column(t.model.primary_key, seg_columns)
    exported = [src for src, _ in mapping]
    narrow = [pk]
    window: exp.Expression | None = None
    window_start: datetime | None = None
    if incremental_events(t):
        time_col = delta.resolve_column(t.model.time_column or "", seg_columns)
        if time_col not in seg_columns:
            raise SyncError(f"segment '{t.segment_name}' does not return the event-time column "
                            f"'{t.model.time_column}' of model '{t.model_name}'")
        narrow += [time_col] if time_col != pk else []
        if base is not None and not full:
            # Only events at or after the last delivered event time, minus the lookback for late ones;
            # the diff against the baseline (the previous window) drops the ones already sent.
            cursor = wh.query(delta.render(exp.select(exp.Max(this=delta.col(time_col))).from_(
                t.snapshot_table(base.partition_key)), dialect))[0][0]
            if cursor is not None:
                if cursor.tzinfo is not None:
                    cursor = cursor.astimezone(timezone.utc).replace(tzinfo=None)
                window_start = cursor - lookback(t.activation)
                window = exp.GTE(this=delta.col(time_col), expression=delta.ts_literal(window_start))
                seg = exp.select(exp.Star()).from_(seg).where(window.copy()).subquery("w")
    order_by = _order_by(t, seg_columns)
    # The stored columns in file order: the exported ones, then the key and the event time if not exported.
    columns = exported + [c for c in narrow if c not in exported]
    target, rows = t.snapshot_table(partition_key), t.rows_table(partition_key)
    if base is not None and not full and changes_in_place(t):
        return _snapshot_changes(t, partition_key, base, seg, pk, columns, exported, narrow, order_by,
                                 timings)
    if t.activation.platform_service is None and (t.activation.effective_run_type == "full_only" or (
            dialect == "duckdb" and base is not None and not full)):
        return _snapshot_in_one_pass(t, partition_key, base, seg, pk, columns, exported, narrow, order_by, window,
                                     window_start, timings)
    with _step(timings, "key_stats"):
        total, with_key, distinct = wh.query(delta.key_stats_sql(seg, pk, dialect))[0]
    total, with_key, distinct = int(total), int(with_key), int(distinct)
    dedupe = distinct < with_key
    src = delta.source_rows(seg, pk, columns, exported, dialect, dedupe=dedupe, order_by=order_by)
    if t.activation.effective_run_type == "full_only":
        # Every sync exports the whole segment and nothing is computed from the rows it sent: keys
        # and hashes are enough (change counts, removal guard); the export reads the segment.
        rows_kind = RowsKind.NONE
        statements = [delta.drop_table_sql(rows, dialect),
                      *delta.create_table_sql(target, delta.narrow_select(src, narrow), dialect)]
    elif base is None or full:
        rows_kind = RowsKind.FULL
        statements = [*delta.create_table_sql(rows, delta.full_rows_select(src, columns), dialect),
                      *delta.create_table_sql(target, delta.narrow_select(rows, narrow), dialect)]
    else:
        rows_kind = RowsKind.DELTA
        base_rows = delta.narrow_select(t.snapshot_table(base.partition_key), narrow, where=window)
        # Each statement may see newer rows (READ COMMITTED): the snapshot is derived from the rows
        # delivered, so the hashes and the values sent always agree.
        statements = [*delta.create_table_sql(rows, delta.delta_rows_select(src, base_rows, pk, columns), dialect),
                      *delta.create_table_sql(target, delta.derive_snapshot_select(base_rows, rows, pk, narrow),
                                              dialect)]
    with _step(timings, "snapshot"):
        wh.execute([*_keep_acknowledged_sql(t, partition_key, pk, statements), *t.store.register_snapshot_sql(
            partition_key, target.name, distinct, rows_kind, dedupe,
            base.partition_key if rows_kind is RowsKind.DELTA and base else None)])
    return SnapshotResult(table=target.sql(dialect=dialect), rows=distinct, null_keys=total - with_key,
                          duplicates_dropped=with_key - distinct, columns=exported, window_start=window_start,
                          timings=timings)


def _snapshot_in_one_pass(
    t: SyncTarget, partition_key: str, base: Baseline | None, seg: exp.Expression, pk: str, columns: list[str],
    exported: list[str], narrow: list[str], order_by: str | None, window: exp.Expression | None,
    window_start: datetime | None, timings: dict[str, float],
) -> SnapshotResult:
    """The snapshot of a file activation's ``full_only`` sync (any warehouse) or delta sync (DuckDB): the
    segment is read and hashed once, and its key statistics come from the tables just built.

    - ``full_only``: the snapshot (keys and row hashes); then one full outer join with the baseline gives
      the change counts, recorded with the snapshot (``change_counts``): the delivery builds no
      change-set table.
    - DuckDB delta: the snapshot, then the rows to deliver (the snapshot's keys and hashes joined with the
      baseline's; the values of the changed keys only), in one transaction, which in DuckDB reads one
      state of the database; no copy of the baseline is derived.

    The baseline has one row per key, so the snapshot's distinct keys are the baseline keys it matched
    plus the distinct keys among the rows the baseline lacks: no ``count(distinct)`` over the whole
    segment (``delta.snapshot_stats_sql``). Built as if every key were unique; when the snapshot's rows
    outnumber its distinct keys, it is built again keeping one row per key (``delta.source_rows``). NULL
    keys are counted apart (a count of the key column).
    """
    wh, dialect = t.warehouse, t.dialect
    target, rows = t.snapshot_table(partition_key), t.rows_table(partition_key)
    full_only = t.activation.effective_run_type == "full_only"
    base_rows = (delta.narrow_select(t.snapshot_table(base.partition_key), narrow if not full_only else [pk],
                                     where=window) if base is not None else None)
    dedupe, keyed = False, 0
    while True:
        src = delta.source_rows(seg, pk, columns, exported, dialect, dedupe=dedupe, order_by=order_by)
        if full_only:
            statements = [delta.drop_table_sql(rows, dialect),
                          *delta.create_table_sql(target, delta.narrow_select(src, [pk]), dialect)]
            stats = delta.snapshot_stats_sql(target, base_rows, pk, dialect)
        else:
            assert base_rows is not None  # (a delta has a baseline)
            statements = [*delta.create_table_sql(target, delta.narrow_select(src, narrow), dialect),
                          *delta.create_table_sql(rows, delta.delta_rows_select(src, base_rows, pk, columns,
                                                                                hashed=target), dialect)]
            stats = delta.delta_stats_sql(target, base_rows, rows, pk, dialect)
        with _step(timings, "snapshot"):
            # The registry row goes with the old tables: a crash before the new ones are registered leaves
            # no record, so the delivery asks for a new snapshot instead of trusting a stale one.
            wh.execute([t.store.forget_snapshot_sql(partition_key), *statements])
        with _step(timings, "key_stats_and_changes"):
            n_rows, n_base, new_keys, added, updated, removed = (int(v) for v in wh.query(stats)[0])
        distinct = n_base - removed + new_keys
        keyed = keyed or n_rows
        if dedupe or distinct == n_rows:
            break
        dedupe = True
    with _step(timings, "null_keys"):
        # (``seg``: the segment's table, or its event-time window as a named subquery)
        null_keys = int(wh.query(delta.render(exp.select(exp.Count(this=exp.Star())).from_(seg.copy()).where(
            exp.Is(this=delta.col(pk), expression=exp.Null())), dialect))[0][0])
    with _step(timings, "register"):
        wh.execute(t.store.register_snapshot_sql(
            partition_key, target.name, distinct, RowsKind.NONE if full_only else RowsKind.DELTA, dedupe,
            base.partition_key if base else None, (added, updated, removed) if base and full_only else None))
    return SnapshotResult(table=target.sql(dialect=dialect), rows=distinct, null_keys=null_keys,
                          duplicates_dropped=keyed - distinct, columns=exported, window_start=window_start,
                          timings=timings)


def changes_in_place(t: SyncTarget) -> bool:
    """Whether this activation's delta syncs keep no snapshot of their own: the snapshot step writes only
    the changes (``RowsKind.CHANGES``), and the promotion applies them to the baseline's snapshot table
    in place (``_promote``).

    A DuckDB source (one transaction reads one state of the database, and DDL is transactional), a file
    destination, a ``full_then_delta`` activation of a dimension (an event sync's snapshot is its time
    window, not the baseline plus changes), and ``keep_snapshots: 1``: the previous snapshot is not
    kept anyway, whereas keeping more needs each one whole, so the others keep a snapshot per sync.
    (A ``full_only`` sync keeps its one-pass snapshot: measured on 5M rows, applying its changed keys
    in place instead took as long, 0.48-0.86 s against 0.59-0.92 s for the snapshot and its join.)
    """
    a = t.activation
    return (t.dialect == "duckdb" and hasattr(t.warehouse, "execute_then_query")
            and a.platform_service is None and a.effective_run_type == "full_then_delta"
            and not incremental_events(t) and a.keep_snapshots == 1)


def _snapshot_changes(
    t: SyncTarget, partition_key: str, base: Baseline, seg: exp.Expression, pk: str, columns: list[str],
    exported: list[str], narrow: list[str], order_by: str | None, timings: dict[str, float],
) -> SnapshotResult:
    """The snapshot of a delta whose changes are applied in place (``changes_in_place``): one statement
    hashes the segment, joins the hashes with the baseline's and writes the changed keys only (added and
    updated with their values and new hashes, removed with their key), the rows table; no snapshot of
    every key is written. In the same transaction (one state of the database), one query counts the
    changes, the baseline's rows and the segment's keys (``delta.changes_stats_sql``): the uniqueness
    check and the NULL keys need no other pass. When keys repeat, the changes are taken again keeping
    one row per key (``delta.source_rows``).

    The baseline's table is left as it is: ``_promote`` applies these changes to it once every file
    landed, in the transaction that moves the baseline.
    """
    wh, dialect = t.warehouse, t.dialect
    target, rows = t.snapshot_table(partition_key), t.rows_table(partition_key)
    base_rows = delta.narrow_select(t.snapshot_table(base.partition_key), narrow)
    stats = delta.changes_stats_sql(seg, base_rows, rows, pk, dialect)
    dedupe = False
    while True:
        src = delta.source_rows(seg, pk, columns, exported, dialect, dedupe=dedupe, order_by=order_by)
        # The registry row goes with the old tables (see ``_snapshot_in_one_pass``); a snapshot table of this
        # partition left by an earlier attempt would be stale.
        statements = [t.store.forget_snapshot_sql(partition_key), delta.drop_table_sql(target, dialect),
                      *delta.create_table_sql(rows, delta.delta_rows_select(src, base_rows, pk, columns),
                                              dialect)]
        with _step(timings, "snapshot"):
            found = wh.execute_then_query(statements, stats)[0]  # type: ignore[attr-defined]
        keyed, n_base, new_keys, _, _, removed, null_keys = (int(v) for v in found)
        distinct = n_base - removed + new_keys
        if dedupe or distinct == keyed:
            break
        dedupe = True
    with _step(timings, "register"):
        wh.execute(t.store.register_snapshot_sql(partition_key, target.name, distinct, RowsKind.CHANGES,
                                                 dedupe, base.partition_key))
    return SnapshotResult(table=target.sql(dialect=dialect), rows=distinct, null_keys=null_keys,
                          duplicates_dropped=keyed - distinct, columns=exported, timings=timings)


EARLIER_ATTEMPT = "_earlier"
"""Suffix of the partition key under which a platform sync's earlier attempt is kept when its partition
is snapshotted again (``_keep_acknowledged_sql``)."""


def _keep_acknowledged_sql(t: SyncTarget, partition_key: str, pk: str, statements: list[str]) -> list[str]:
    """``statements`` (that take the snapshot of ``partition_key``), for a platform sync snapshotted again
    (a re-run of a killed or failed partition), with what its earlier attempt got acknowledged kept.

    With a baseline, the earlier attempt's snapshot and rows are copied, and its acknowledgements moved,
    to partition ``partition_key + EARLIER_ATTEMPT``: the delivery recovers it first (its acknowledged
    part moves the baseline, ``platform_sync.recover_unfinished``), then takes this snapshot again
    against what the platform holds, so a record acknowledged and changed since (back to its baseline
    values too) goes again. Events keep their acknowledgements (the delivery skips them; an event is
    never sent twice). A first sync with no baseline keeps the acknowledgements of the records whose row
    hash is the same in both snapshots: the earlier snapshot is copied aside, compared, and dropped in
    the same transaction.
    """
    info = t.store.snapshot_info(partition_key)
    if t.activation.platform_service is None or info is None or info.rows_kind is RowsKind.NONE:
        return statements  # (the snapshot step has no platform resource: ask the activation)
    t.store.ensure_platform()
    ack = t.store.table(ACKNOWLEDGEMENTS)
    acknowledged = exp.select(exp.Count(this=exp.Star())).from_(ack).where(_acknowledgements_of(t, partition_key))
    if not int(t.warehouse.query(delta.render(acknowledged, t.dialect))[0][0]) or \
            t.activation.platform_service == "events":
        return statements
    current, prior = t.snapshot_table(partition_key), t._delta_table("prior__", partition_key)
    if t.store.baseline() is not None:
        attempt = partition_key + EARLIER_ATTEMPT
        moved = exp.update(ack, {"partition_key": delta.lit(attempt)}, where=_acknowledgements_of(t, partition_key))
        return [*delta.create_table_sql(t.snapshot_table(attempt), exp.select(exp.Star()).from_(current.copy()),
                                        t.dialect),
                *delta.create_table_sql(t.rows_table(attempt), exp.select(exp.Star()).from_(
                    t.rows_table(partition_key)), t.dialect),
                *t.store.register_snapshot_sql(attempt, t.snapshot_table(attempt).name, info.row_count, info.rows_kind,
                                               info.deduped, info.base_partition),
                delta.render(moved, t.dialect), *statements]
    forget = exp.Delete(this=ack.copy(), where=exp.Where(this=exp.and_(
        _acknowledgements_of(t, partition_key),
        exp.In(this=delta.col("record_key"), query=_changed_keys(current, prior, pk, t.dialect).subquery()))))
    return [*delta.create_table_sql(prior, exp.select(exp.Star()).from_(current.copy()), t.dialect), *statements,
            delta.render(forget, t.dialect), delta.drop_table_sql(prior, t.dialect)]


def _acknowledgements_of(t: SyncTarget, partition_key: str) -> exp.Expression:
    """The ``dinmo_acknowledgements`` rows of sync ``partition_key`` of this activation."""
    return exp.and_(exp.EQ(this=delta.col("activation"), expression=delta.lit(t.name)),
                    exp.EQ(this=delta.col("partition_key"), expression=delta.lit(partition_key)))


def _changed_keys(current: exp.Table, earlier: exp.Table, pk: str, dialect: str) -> exp.Select:
    """The keys, as text (as the journal stores them), whose row hash differs between two snapshots, or
    that only one of them holds."""
    return exp.select(exp.Cast(this=delta.col(pk), to=delta.text_type(dialect))).from_(
        delta.changes_select(current, earlier, pk).subquery("c"))


def _segment_rows(t: SyncTarget, deduped: bool) -> tuple[exp.Select, list[str]]:
    """The segment's rows as a full_only sync exports them (NULL keys out, deduplicated as its snapshot
    was), and the segment's columns."""
    seg = t.segment_relation()
    seg_columns = t.warehouse.relation_columns(seg)
    exported = [src for src, _ in exported_columns(t, seg_columns)]
    pk = delta.resolve_column(t.model.primary_key, seg_columns)
    src = delta.source_rows(seg, pk, exported + ([pk] if pk not in exported else []), exported, t.dialect,
                            dedupe=deduped, order_by=_order_by(t, seg_columns))
    return src, seg_columns


def _order_by(t: SyncTarget, seg_columns: list[str]) -> str | None:
    """The model's order_by column as the segment spells it; None when absent (de-duplication order)."""
    order_by = delta.resolve_column(t.model.order_by, seg_columns) if t.model.order_by else None
    return order_by if order_by in seg_columns else None


# ---------------------------------------------------------------------------------------------------------
# Delivery
# ---------------------------------------------------------------------------------------------------------


def _format_options(a: Activation) -> writers.FormatOptions:
    return writers.FormatOptions(
        format=a.format, csv_delimiter=a.csv.delimiter, csv_header=a.csv.header, json_lines=a.json_.lines,
        xml_root=a.xml.root, xml_record=a.xml.record, compression=a.compression,
        parquet_compression=a.parquet.compression,
    )


def _counts(t: SyncTarget, changes: exp.Table, new_rows: int) -> ChangeCounts:
    got = {k: int(v) for k, v in t.warehouse.query(delta.change_counts_sql(changes, t.dialect))}
    c = ChangeCounts(added=got.get(delta.ADDED, 0), updated=got.get(delta.UPDATED, 0),
                     removed=got.get(delta.REMOVED, 0))
    c.unchanged = new_rows - c.added - c.updated
    return c


@dataclass
class _Plan:
    """The files one sync writes: (base name, SELECT) pairs, in order."""

    sync_type: str
    counts: ChangeCounts
    files: list[tuple[str, str]]
    changes_table: exp.Table | None
    baseline_rows: int | None
    names: list[str]  # destination column names, in file order


def plan(t: SyncTarget, partition_key: str, force_full: bool = False) -> _Plan:
    """Decide full or delta, count the changes in the warehouse, and list the files to write."""
    a, dialect = t.activation, t.dialect
    info = t.store.snapshot_info(partition_key)
    if info is None:
        raise SyncError(f"no snapshot for partition '{partition_key}' of activation '{t.name}': "
                        f"materialize snapshots/{t.name} for this partition first")
    base = t.store.baseline()
    full = force_full or base is None or a.effective_run_type == "full_only" or info.rows_kind is RowsKind.FULL
    if info.rows_kind.is_delta and (full or base is None or base.partition_key != info.base_partition):
        # The snapshot holds changes against a baseline that has moved since (recovery completed a sync
        # that had died after its files landed), or a full refresh was asked of the delivery only: take
        # it again, now, against the current baseline.
        _take_snapshot(t, partition_key, full=full)
        info = t.store.snapshot_info(partition_key)
        assert info is not None  # just registered
    new_rows = info.row_count
    snap, rows = t.snapshot_table(partition_key), t.rows_table(partition_key)
    source: exp.Expression
    if info.rows_kind is RowsKind.NONE:
        source, stored = _segment_rows(t, info.deduped)
    else:
        source, stored = rows, [c for c in t.warehouse.relation_columns(rows)
                                if c not in (delta.CHANGE_COL, delta.HASH_COL)]
    mapping = exported_columns(t, stored)
    pk = delta.resolve_column(t.model.primary_key, stored)
    changes = None
    counts = ChangeCounts(added=new_rows)
    if not full:
        counts = _counts(t, rows, new_rows)
    elif base is not None and info.change_counts is not None and info.base_partition == base.partition_key \
            and not (a.sync_mode == "difference" and t.keeps_values()):
        # Counted by the snapshot step against this very baseline: no change-set table to build.
        added, updated, removed = info.change_counts
        counts = ChangeCounts(added=added, updated=updated, removed=removed, unchanged=new_rows - added - updated)
    elif base is not None:
        changes = t.changes_table(partition_key)
        t.warehouse.execute(delta.create_changes_sql(snap, t.snapshot_table(base.partition_key), changes, pk, dialect))
        counts = _counts(t, changes, new_rows)
    stem = naming.render_template(a.file_name, t.sync_time(partition_key))

    def removed_rows(change_set: exp.Table) -> str:
        # Removed rows carry their last synced values: from the activation's delivered values (or, for
        # an activation synced before it kept them, from its baseline snapshot).
        assert base is not None
        values = (t.warehouse.qualify(t.schemas.delta_storage, base.values_table) if base.values_table
                  else t.snapshot_table(base.partition_key))
        return delta.changed_rows_sql(values, change_set, pk, mapping, [delta.REMOVED], dialect,
                                      t.warehouse.relation_columns(values))

    files: list[tuple[str, str]] = []
    if a.sync_mode == "difference":
        for kind in DIFFERENCE_SUFFIXES:
            if full and kind == delta.REMOVED and changes is not None and t.keeps_values():
                # A full refresh over a baseline still tells the consumer which records left the segment.
                sql = removed_rows(changes)
            elif full:
                sql = delta.export_sql(source, mapping, dialect, where_false=kind != delta.ADDED)
            elif kind == delta.REMOVED:
                sql = removed_rows(rows)
            else:
                sql = delta.export_sql(rows, mapping, dialect, kinds=[kind])
            files.append((f"{stem}_{kind}", sql))
    elif full or a.sync_mode == "snapshot":
        files.append((stem, delta.export_sql(source, mapping, dialect)))
    elif a.sync_mode == "upsert" and counts.added + counts.updated:
        files.append((stem, delta.export_sql(rows, mapping, dialect, kinds=[delta.ADDED, delta.UPDATED])))
    elif a.sync_mode == "insert" and counts.added:
        files.append((stem, delta.export_sql(rows, mapping, dialect, kinds=[delta.ADDED])))
    return _Plan("full" if full else "delta", counts, files, changes, base.row_count if base else None,
                 [dst for _, dst in mapping])


def _removal_guard(t: SyncTarget, p: _Plan, forced: bool = False) -> None:
    """Refuse a sync that would remove more than max_removed_pct of the destination's records.

    Only syncs that take records away are guarded: a snapshot (it replaces the file set) and a
    ``full_then_delta`` difference sync (its ``_removed`` file). A ``full_only`` difference sync lists no
    removal, and an explicit full refresh (``forced``) is the user's override, as the guard's own
    message says: it still lists the removed records in ``_removed``.
    """
    a = t.activation
    removes = a.sync_mode == "snapshot" or (a.sync_mode == "difference" and (p.sync_type == "delta"
                                                                              or t.keeps_values()))
    if forced or not removes or not p.baseline_rows or p.counts.removed == 0:
        return
    pct = 100.0 * p.counts.removed / p.baseline_rows
    if pct > a.max_removed_pct:
        raise SyncError(
            f"activation '{t.name}' would remove {p.counts.removed} of {p.baseline_rows} records "
            f"({pct:.1f}%), more than max_removed_pct {a.max_removed_pct:g}%; nothing was written. "
            f"If this is expected, raise activations.{t.name}.max_removed_pct or run "
            f"`dinmo sync {t.name} --full-refresh`", event="removal_guard")


def check_warnings(t: SyncTarget, partition_key: str, run_id: str = "") -> list[tuple[str, str]]:
    """The sync's warnings, ``(event, message)``, known before anything is written: an empty segment
    (``empty_segment``), a segment whose size moved more than ``max_size_change_pct`` since the last
    sync (``size_change``, against the baseline's record count; none on a first sync or from an empty
    baseline). An event sync (a fact model's window of new events) has neither: its size is not the
    segment's.

    A warning that ``warnings_block`` names fails the sync here (SyncError with its event), before
    anything is written: the snapshot is dropped and the sync gets a ``failed`` history row.
    """
    a = t.activation
    info = t.store.snapshot_info(partition_key)
    if info is None or incremental_events(t):
        return []
    found: list[tuple[str, str]] = []
    rows, base = info.row_count, t.store.baseline()
    if rows == 0:
        found.append(("empty_segment", f"segment '{t.segment_name}' is empty"))
    if base is not None and base.row_count > 0:
        pct = 100.0 * abs(rows - base.row_count) / base.row_count
        if pct > a.max_size_change_pct:
            direction = "more" if rows > base.row_count else "fewer"
            text = (f"segment '{t.segment_name}' has {rows} records, {pct:.1f}% {direction} than the "
                    f"{base.row_count} of the last sync; more than max_size_change_pct {a.max_size_change_pct:g}%")
            found.append(("size_change", text))
    blocked = [(event, text) for event, text in found if event in a.warnings_block]
    if blocked:
        event, text = blocked[0]
        message = (f"activation '{t.name}': {text}; nothing was written (activations.{t.name}.warnings_block "
                   f"names {event}). If this is expected, remove {event} from warnings_block"
                   + (" or raise max_size_change_pct" if event == "size_change" else ""))
        _history(t, partition_key, run_id, SyncStatus.FAILED, SyncResult(sync_type="unknown", counts=ChangeCounts()),
                 a, datetime.now(timezone.utc).replace(tzinfo=None), message[:500])
        drop_snapshot(t, partition_key)
        raise SyncError(message, event=event)
    return found


def process_alive(owner: str) -> bool | None:
    """Whether the process that wrote a journal entry still runs; None when it ran on another machine."""
    host, _, pid = (owner or "").rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return None
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class Recovery:
    """What ``recover`` did: one line per action, and the dead syncs it completed, with their files."""

    notes: list[str] = field(default_factory=list)
    partitions: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)  # URIs


def recover(
    t: SyncTarget,
    run_id: str = "",
    is_alive: Callable[[str, str], bool | None] | None = None,
    on_dead: Callable[[str, bool], None] | None = None,
) -> Recovery:
    """The concurrency guard and the clean-up after dead syncs.

    A journal entry in 'writing' or 'written' state belongs to a sync that is still running (then this
    one refuses to start: two syncs of one activation never overlap) or to one that died. A dead
    'writing' sync's files and working directory are removed, it gets a ``failed`` history row, and
    ``on_dead(run_id, False)`` marks its run failed. A dead 'written' sync (every file landed, the
    baseline not yet moved) is completed by promoting its snapshot, without sending anything again; it
    gets a ``recovered`` history row and ``on_dead(run_id, True)`` marks its run failed, saying so.
    """

    def alive(partition_key: str, other_run: str, owner: str) -> bool:
        if owner == OWNER:  # this very process: alive only while its deliver() runs
            return (t.name, partition_key) in _ACTIVE
        pid_alive = process_alive(owner)
        if pid_alive is False:
            return False
        told = is_alive(other_run, owner) if is_alive is not None else None
        return told if told is not None else bool(pid_alive)

    entries = t.store.journal_entries()
    for e in entries:
        if e.state.in_flight and e.run_id != run_id and alive(e.partition_key, e.run_id, e.owner):
            raise SyncError(f"another sync of activation '{t.name}' is running (partition {e.partition_key}, "
                            f"run {e.run_id or 'unknown'}); two syncs of one activation never overlap. "
                            "Try again when it has finished")
    done = Recovery()
    base = t.store.baseline()
    for e in entries:
        partition_key, files, summary = e.partition_key, e.files, e.summary
        dead_run = e.run_id if e.run_id and e.run_id != run_id else ""
        if e.state is JournalState.WRITING:
            if t.destination is not None:  # a platform sync writes no file
                t.destination.delete(unload.expand_temporary(t.destination, files))  # (an unload's prefix too)
            _remove_workdir(e.workdir, e.owner)
            _journal(t, partition_key, "", JournalState.ABANDONED, files)
            _history_once(t, partition_key, e.run_id, summary,
                          f"the sync's process died before all its files landed; its {len(files)} file(s) "
                          f"were removed by run {run_id or 'unknown'}")
            if dead_run and on_dead is not None:
                on_dead(dead_run, False)
            done.notes.append(f"removed {len(files)} file(s) left by the dead sync {partition_key}"
                              + (f" (run {dead_run}, marked failed)" if dead_run else ""))
        elif e.state is JournalState.WRITTEN:
            if base is None or partition_key > base.partition_key:
                t.warehouse.execute(_promote(t, partition_key))
                base = Baseline(partition_key, 0, None)
                _history(t, partition_key, e.run_id, SyncStatus.RECOVERED, _summary_result(summary, files),
                         t.activation, _summary_start(summary), None, completed_by=run_id)
                if dead_run and on_dead is not None:
                    on_dead(dead_run, True)
                done.partitions.append(partition_key)
                done.files += [t.destination.uri(f) for f in files]
                done.notes.append(f"completed the sync {partition_key}: all its files had landed; "
                                  "promoted its snapshot to baseline")
            _journal(t, partition_key, "", JournalState.DONE, files, summary=summary)
    return done


def _summary(t: SyncTarget, r: SyncResult, started_at: datetime) -> dict[str, Any]:
    """A sync's counts as the journal keeps them (no customer data): what recovery records."""
    return {"sync_type": r.sync_type, "added": r.counts.added, "updated": r.counts.updated,
            "removed": r.counts.removed, "unchanged": r.counts.unchanged, "rows_written": r.rows_written,
            "bytes": r.bytes, "started_at": started_at.isoformat()}


def _summary_result(summary: dict[str, Any], files: list[str]) -> SyncResult:
    counts = ChangeCounts(added=int(summary.get("added", 0)), updated=int(summary.get("updated", 0)),
                          removed=int(summary.get("removed", 0)), unchanged=int(summary.get("unchanged", 0)))
    return SyncResult(sync_type=summary.get("sync_type", "unknown"), counts=counts,
                      rows_written=int(summary.get("rows_written", 0)), files=list(files),
                      bytes=int(summary.get("bytes", 0)))


def _summary_start(summary: dict[str, Any]) -> datetime | None:
    started = summary.get("started_at")
    return datetime.fromisoformat(started) if started else None


def _history_once(t: SyncTarget, partition_key: str, run_id: str, summary: dict[str, Any], error: str) -> None:
    """A ``failed`` history row for a sync that died, unless that run recorded its own outcome."""
    if not t.store.history(partition_key, run_id):
        _history(t, partition_key, run_id, SyncStatus.FAILED, _summary_result(summary, []), t.activation,
                 _summary_start(summary), error)


def deliver(
    t: SyncTarget,
    partition_key: str,
    run_id: str = "",
    force_full: bool = False,
    on_log: Callable[[str], None] = log.info,
    is_alive: Callable[[str, str], bool | None] | None = None,
    on_dead: Callable[[str, bool], None] | None = None,
) -> SyncResult:
    """Compute the change set against the baseline, write the files, then promote the baseline.

    ``is_alive(run_id, owner)`` tells whether another sync's run still runs (None: unknown; then its
    process is checked when it ran on this machine); ``on_dead(run_id, completed)`` is told about runs
    found dead: ``completed`` when all their files had landed and this sync completed them.
    """
    with t.warehouse.session():
        return _deliver(t, partition_key, run_id, force_full, on_log, is_alive, on_dead)


_ACTIVE: set[tuple[str, str]] = set()  # (activation, partition) of the syncs running in this process


def _deliver(
    t: SyncTarget,
    partition_key: str,
    run_id: str,
    force_full: bool,
    on_log: Callable[[str], None],
    is_alive: Callable[[str, str], bool | None] | None,
    on_dead: Callable[[str, bool], None] | None,
) -> SyncResult:
    started = time.monotonic()
    started_at = datetime.now(timezone.utc).replace(tzinfo=None)
    timings: dict[str, float] = {}
    with _step(timings, "recover"):
        t.store.ensure()
        swept = sweep_workdirs()
        if swept:
            on_log(f"removed {len(swept)} working director{'y' if len(swept) == 1 else 'ies'} of dead syncs: "
                   + ", ".join(swept))
        recovered = recover(t, run_id, is_alive, on_dead)
    workdir = new_workdir()
    try:
        # Claim the activation at once: a concurrent sync's recover() now sees this one running.
        _journal(t, partition_key, run_id, JournalState.WRITING, [], workdir,
                 {"started_at": started_at.isoformat()})
        _ACTIVE.add((t.name, partition_key))
        try:
            return _write_and_promote(t, partition_key, run_id, force_full, on_log, recovered, started, started_at,
                                      workdir, timings)
        finally:
            _ACTIVE.discard((t.name, partition_key))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _write_and_promote(
    t: SyncTarget, partition_key: str, run_id: str, force_full: bool, on_log: Callable[[str], None],
    recovered: Recovery, started: float, started_at: datetime, workdir: Path, timings: dict[str, float],
) -> SyncResult:
    a = t.activation
    for note in recovered.notes:
        on_log(note)
    with _step(timings, "plan"):
        p = plan(t, partition_key, force_full=force_full)
    options = _format_options(a)
    try:
        _removal_guard(t, p, forced=force_full)
        _check_overwrites(t, p, partition_key, options.extension)
    except SyncError as exc:  # a refused sync is a failed sync: it gets its history row too
        _journal(t, partition_key, run_id, JournalState.FAILED, [])
        _history(t, partition_key, run_id, SyncStatus.FAILED, SyncResult(sync_type=p.sync_type, counts=p.counts),
                 a, started_at, str(exc)[:500])
        raise
    max_bytes = int(a.max_file_size_mb * 1024 * 1024) if a.max_file_size_mb else None
    result = SyncResult(sync_type=p.sync_type, counts=p.counts, recovered=recovered.notes,
                        recovered_partitions=recovered.partitions, recovered_files=recovered.files,
                        timings=timings)
    uploaded: list[str] = []
    write_started = time.perf_counter()
    summary = _summary(t, result, started_at)

    def landed(part: writers.PartFile, path: str, size: int) -> None:
        result.bytes += size
        result.rows_written += part.rows
        result.files.append(t.destination.uri(path))
        part.path.unlink(missing_ok=True)
        on_log(f"wrote {t.destination.uri(path)} ({part.rows} rows, {part.bytes} bytes)")

    uploads = _PartUploads(t.destination, landed)
    try:
        choice = unload.choose(t, options, result)  # (``unload: always`` refused fails here, before any file)
        for index, (stem, sql) in enumerate(p.files):
            def upload(part: writers.PartFile) -> None:
                path = naming.join_object_name(a.folder, part.name)
                uploaded.append(path)
                # Journal before the upload, so a kill mid-upload still knows what to remove.
                _journal(t, partition_key, run_id, JournalState.WRITING, uploaded, workdir, summary)
                uploads.submit(part, path)

            used = unload.WRITER if choice.unload and unload.export_file(
                t, choice, partition_key, index, stem, sql, p.names, options, unload.file_rows(t, p, stem), uploaded,
                lambda: _journal(t, partition_key, run_id, JournalState.WRITING, uploaded, workdir, summary), result,
                on_log) else None
            used = used or _copy_export(t, sql, p.names, options, stem, max_bytes, workdir, upload, result, on_log)
            if used is None:
                used = writers.ARROW_WRITER
                with t.warehouse.stream(sql) as reader:
                    # Name columns from the mapping, whatever case the driver reports them in.
                    schema = pa.schema([f.with_name(n) for f, n in zip(reader.schema, p.names)])
                    batches = (pa.RecordBatch.from_arrays(b.columns, schema=schema) for b in reader)
                    writers.write_parts(batches, schema, options, stem, max_bytes, workdir, upload)
            if used not in result.writer.split(", "):
                result.writer = ", ".join(w for w in (result.writer, used) if w)
        uploads.finish()
        _journal(t, partition_key, run_id, JournalState.WRITTEN, uploaded, workdir, _summary(t, result, started_at))
        timings["write"] = round(time.perf_counter() - write_started, 4)
    except unload.UnloadRefused as exc:
        _failed_write(t, partition_key, run_id, uploads, uploaded, result, a, started_at, exc, on_log)
        raise SyncError(str(exc)) from None
    except BaseException as exc:
        _failed_write(t, partition_key, run_id, uploads, uploaded, result, a, started_at, exc, on_log)
        raise
    with _step(timings, "promote"):
        t.warehouse.execute(_promote(t, partition_key))
        _journal(t, partition_key, run_id, JournalState.DONE, uploaded, summary=_summary(t, result, started_at))
    with _step(timings, "retention"):
        if p.changes_table is not None:
            t.warehouse.execute([delta.drop_table_sql(p.changes_table, t.dialect)])
        result.dropped_partitions = apply_retention(t)
    result.duration_s = time.monotonic() - started
    _history(t, partition_key, run_id, SyncStatus.SUCCESS, result, a, started_at, None)
    return result


class _PartUploads:
    """Uploads a sync's part files, ``destination.upload_concurrency`` at a time (1: in the caller's
    thread), while the writer goes on with the next part. At most that many parts wait or travel, so the
    working directory holds few part files; ``landed`` hears of each part in the order it was written. A
    failed upload fails the next ``submit`` or ``finish``; ``close`` cancels what has not started and
    waits for what has."""

    def __init__(self, destination: FileDestination, landed: Callable[[writers.PartFile, str, int], None]) -> None:
        self.destination, self.landed = destination, landed
        self.workers = max(1, destination.upload_concurrency)
        self.pool = ThreadPoolExecutor(self.workers, thread_name_prefix="dinmo-upload") if self.workers > 1 else None
        self.pending: deque[tuple[writers.PartFile, str, Future[int]]] = deque()

    def submit(self, part: writers.PartFile, path: str) -> None:
        if self.pool is None:
            self.landed(part, path, self.destination.upload(part.path, path))
            return
        while self.pending and (len(self.pending) >= self.workers or self.pending[0][2].done()):
            self._land_oldest()
        failed = next((f for _, _, f in self.pending if f.done() and f.exception() is not None), None)
        if failed is not None:
            failed.result()
        self.pending.append((part, path, self.pool.submit(self.destination.upload, part.path, path)))

    def _land_oldest(self) -> None:
        part, path, future = self.pending.popleft()
        self.landed(part, path, future.result())

    def finish(self) -> None:
        while self.pending:
            self._land_oldest()
        self.close()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)


WRITER_ENV = "DINMO_EXPORT_WRITER"
"""Environment variable choosing the file writer: ``auto`` (the default: DuckDB's own ``COPY`` for a
DuckDB source where it writes the same values, else the shared Arrow writer) or ``arrow`` (always the
shared writer)."""


def _failed_write(t: SyncTarget, partition_key: str, run_id: str, uploads: _PartUploads, uploaded: list[str],
                  result: SyncResult, a: Activation, started_at: datetime, exc: BaseException,
                  on_log: Callable[[str], None]) -> None:
    """What a write that failed leaves: no upload still running, its files (and an unload's temporary
    prefix) removed, the journal entry failed, the history row."""
    uploads.close()  # no upload still running may land after the clean-up below
    try:
        t.destination.delete(unload.expand_temporary(t.destination, uploaded))  # (an unload's prefix too)
        _journal(t, partition_key, run_id, JournalState.FAILED, [])
    except Exception as cleanup_exc:  # noqa: BLE001 - keep the journal entry: the next sync cleans up
        on_log(f"could not remove the files of the failed sync yet: {cleanup_exc}")
    _history(t, partition_key, run_id, SyncStatus.FAILED, result, a, started_at, str(exc)[:500])


def _copy_export(
    t: SyncTarget, sql: str, names: list[str], options: writers.FormatOptions, stem: str, max_bytes: int | None,
    workdir: Path, upload: Callable[[writers.PartFile], None], result: SyncResult, on_log: Callable[[str], None],
) -> str | None:
    """Write one file with the warehouse's own writer (DuckDB's ``COPY (query) TO``) and upload it.

    Returns ``"duckdb_copy"``, or None when the shared Arrow writer must write the file instead (the
    reason goes in ``result.writer_reason``). COPY is used when ``writers.duckdb_copy_plan`` accepts the
    file's format and column types (the same values as the shared writer, read back by each format's
    parser), and the file fits ``max_file_size_mb`` as one file. COPY's own splitting cannot keep every
    part under a byte limit: ``FILE_SIZE_BYTES`` is checked after each chunk is written (a 1,000,000-byte
    setting gave CSV files of 1.01-1.05 MB, and Parquet files whole row groups over it),
    ``ROW_GROUPS_PER_FILE`` counts row groups, not bytes, and ``PER_THREAD_OUTPUT`` one file per thread;
    all name their files ``data_0.csv``, ... in a directory. So a COPY file over the limit is deleted
    and the shared writer, which splits exactly, writes the parts (``_part-00001``, ...). DuckDB writes into the sync's private working directory; the file then
    takes the final name and upload path every part takes (journal, destination, row counts).
    """
    wh = t.warehouse
    setting = os.environ.get(WRITER_ENV, "auto").strip().lower() or "auto"
    if setting not in ("auto", writers.ARROW_WRITER):
        raise SyncError(f"environment variable {WRITER_ENV}: found {setting!r}; allowed: 'auto', 'arrow'")
    # The DuckDB adapter's copy_to / column_types, found by name: importing its module here would load a
    # connector the project may not use.
    copies = wh.dialect == "duckdb" and hasattr(wh, "copy_to") and wh.copies_locally()  # type: ignore[attr-defined]
    if setting == writers.ARROW_WRITER or not copies:
        return None
    plan = writers.duckdb_copy_plan(sql, list(zip(names, wh.column_types(sql))), options)  # type: ignore[attr-defined]
    if isinstance(plan, str):
        result.writer_reason = result.writer_reason or plan
        return None
    fd, name = tempfile.mkstemp(prefix=".copy-", suffix=".tmp", dir=workdir)
    os.close(fd)
    path = Path(name)
    try:
        rows = wh.copy_to(plan.statement(path))  # type: ignore[attr-defined]
        size = path.stat().st_size
        if max_bytes is not None and size > max_bytes:
            reason = (f"the file was {size} bytes as one file, over max_file_size_mb "
                      f"({max_bytes} bytes): the shared writer splits it")
            result.writer_reason = result.writer_reason or reason
            on_log(f"{stem}: {reason}")
            return None
        final = workdir / f"{stem}.{options.extension}"
        os.replace(path, final)
        upload(writers.PartFile(name=final.name, path=final, rows=rows, bytes=size))
        return writers.COPY_WRITER
    finally:
        path.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------------------
# Never overwrite a delivered file
# ---------------------------------------------------------------------------------------------------------

_TIME_UNITS = (("year", "{YYYY}"), ("month", "{MM}"), ("day", "{DD}"), ("hour", "{HH}"), ("minute", "{mm}"),
               ("second", "{ss}"))


def _missing_time_variables(t: SyncTarget) -> list[str]:
    """The date and time variables, down to the second, that the file name template does not render.

    Found by rendering the template at clocks one unit apart: ``{X}`` covers every unit to the second.
    """
    tz = t.sync_time(new_partition_key()).tzinfo
    clock = datetime(2001, 2, 3, 4, 5, 6, 7000, tzinfo=tz)
    steps = {"year": clock.replace(year=2002), "month": clock.replace(month=3), "day": clock.replace(day=4),
             "hour": clock.replace(hour=5), "minute": clock.replace(minute=6), "second": clock.replace(second=7)}
    name = naming.render_template(t.activation.file_name, clock)
    return [var for unit, var in _TIME_UNITS if naming.render_template(t.activation.file_name, steps[unit]) == name]


def _and(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _mode_of(t: SyncTarget, partition_key: str, mode: str | None) -> str | None:
    """The sync mode a partition was delivered in: from its journal entry, or (entries of versions that
    did not record it) from its history row."""
    if mode:
        return mode
    return next((h.sync_mode for h in t.store.history(partition_key) if h.status.delivered), None)


def _check_overwrites(t: SyncTarget, p: _Plan, partition_key: str, ext: str) -> None:
    """Refuse, before writing anything, a sync that would overwrite a file already in the destination.

    Each file the sync writes may exist under its plain name or as parts (``_part-00001`` first). An
    existing file may be replaced only when this same partition delivered it (a retry completing its
    own files), or when this is a ``snapshot`` sync and the file is the activation's own earlier
    snapshot (the whole segment each time: a fixed name always holds the latest). A file delivered as a
    change set (upsert, insert, difference), or one this activation did not deliver, never is.
    """
    a = t.activation
    existing = [path for stem, _ in p.files
                for path in (naming.join_object_name(a.folder, f"{stem}.{ext}"),
                             naming.join_object_name(a.folder, f"{stem}_part-00001.{ext}"))
                if t.destination.exists(path)]
    if not existing:
        return
    owners = t.store.delivered_files()
    for path in existing:
        owner = owners.get(path)
        if owner is not None and owner[0] == partition_key:
            continue
        mode = _mode_of(t, owner[0], owner[1]) if owner else None
        if owner is not None and a.sync_mode == "snapshot" and mode == "snapshot":
            continue
        uri = t.destination.uri(path)
        if owner is None:
            raise SyncError(
                f"activation '{t.name}': the sync {partition_key} would overwrite {uri}, which activation "
                f"'{t.name}' did not deliver; nothing was written. Change activations.{t.name}.file_name or "
                f"activations.{t.name}.folder so that its files get names of their own, or remove that file")
        missing = _missing_time_variables(t)
        fix = (f"add {_and(missing)} to activations.{t.name}.file_name (or use {{X}}, Unix seconds)" if missing
               else f"add {{ms}} to activations.{t.name}.file_name (or use {{x}}, Unix milliseconds)")
        raise SyncError(
            f"activation '{t.name}': the sync {partition_key} would overwrite {uri}, which the sync {owner[0]} "
            f"delivered ({mode or 'unknown mode'}); nothing was written. The file name template "
            f"'{a.file_name}' renders the same name for both: {fix} so that each sync's files get their "
            "own names")


def _history(t: SyncTarget, partition_key: str, run_id: str, status: SyncStatus, r: SyncResult, a: Activation,
             started_at: datetime | None, error: str | None, completed_by: str | None = None) -> None:
    """One row of ``sync_history``: success, failed, or recovered (completed by run ``completed_by``)."""
    entry = HistoryEntry(
        partition_key=partition_key, run_id=run_id, status=status, sync_type=r.sync_type,
        run_type=a.effective_run_type, sync_mode=a.sync_mode, rows_added=r.counts.added,
        rows_updated=r.counts.updated, rows_removed=r.counts.removed, rows_unchanged=r.counts.unchanged,
        rows_written=r.rows_written, files=len(r.files), bytes=r.bytes, started_at=started_at, error=error,
        completed_by=completed_by)
    try:
        t.store.record_history(entry)
    except Exception as exc:  # noqa: BLE001 - history is informative; never mask the sync's own outcome
        log.warning("could not record sync history: %s", exc)


def apply_retention(t: SyncTarget) -> list[str]:
    """Keep the baseline and the newest N snapshots; drop older tables. Returns dropped partition keys."""
    dropped = t.store.retention(t.activation.keep_snapshots)
    if dropped:
        t.warehouse.execute([sql for k in dropped for sql in _drop_snapshot_sql(t, k)])
    return dropped


@dataclass
class Preview:
    sync_type: str
    counts: ChangeCounts
    files: list[str]
    samples: dict[str, pa.Table]  # per file stem: its first rows, columns named as in the file


def preview(t: SyncTarget, partition_key: str, sample_rows: int = 5) -> Preview:
    """Change counts and sample rows of each kind; writes no file and leaves the baseline alone.

    The caller takes a snapshot under a throwaway partition key and drops it afterwards.
    """
    p = plan(t, partition_key)
    samples: dict[str, pa.Table] = {}
    for stem, sql in p.files:
        limited = delta.render(exp.select(exp.Star()).from_(exp.maybe_parse(sql, dialect=t.dialect).subquery("p"))
                               .limit(sample_rows), t.dialect)
        with t.warehouse.stream(limited) as reader:
            # Arrow, not Python values: the CLI renders them as the file's format writes them.
            samples[stem] = reader.read_all().rename_columns(p.names)
    if p.changes_table is not None:
        t.warehouse.execute([delta.drop_table_sql(p.changes_table, t.dialect)])
    ext = _format_options(t.activation).extension
    return Preview(p.sync_type, p.counts, [f"{stem}.{ext}" for stem, _ in p.files], samples)


def drop_snapshot(t: SyncTarget, partition_key: str) -> None:
    t.warehouse.execute(_drop_snapshot_sql(t, partition_key))


def _drop_snapshot_sql(t: SyncTarget, partition_key: str) -> list[str]:
    """Drop a partition's tables (snapshot, rows, change counts) and its registry row."""
    tables = (t.snapshot_table(partition_key), t.rows_table(partition_key), t.changes_table(partition_key),
              t.undone_table(partition_key))
    return [*(delta.drop_table_sql(table, t.dialect) for table in tables), t.store.forget_snapshot_sql(partition_key)]

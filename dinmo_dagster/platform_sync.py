"""One sync of an activation to an API platform (HubSpot, Braze, Meta Ads, Firestore...), no Dagster.

The snapshot step is the files' one (``sync.take_snapshot``): each record's key and row hash, over the
match identifiers and the mapped columns only, and the rows this sync sends (all of them for a full
sync, the changes for a delta). :func:`deliver` then turns the change set into platform operations,
reads each one from the warehouse as Arrow batches and hands them to the delivery SDK
(``platforms.deliver``) with the sync's journal in the warehouse (``SyncStateStore.platform_journal``):

- attributes: ``upsert`` sends added and updated records as upsert; ``insert`` the added ones;
  ``update`` added and updated ones as update (the platform rejects the ones it does not hold);
  ``mirror`` upserts, and deletes the records that left the segment (their identifiers are the last
  ones delivered, kept in ``vals__A``);
- audiences: the first (or a full) sync replaces the membership where the platform can (else adds);
  then records that enter are added, records that leave are removed, and a record whose identifiers
  changed is removed under its old values, then added under its new ones;
- events: the fact model's new events (event-time cursor and lookback), as ``track``.

The baseline moves only over what the platform acknowledged: a record rejected or not sent keeps its
baseline row hash in the promoted snapshot (a new record gets no row), so the next sync sends it again
with its latest values. Rejected records are kept in ``dinmo_rejections`` (key, operation, reason,
attempts, first and last seen); one rejected for ``retry_rejected_days`` is reported and no longer
retried. More than ``max_rejected_pct`` % rejected fails the sync and the baseline stays. A quota that
runs out mid-sync is a partial success: what was acknowledged moves the baseline.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import pyarrow as pa
import requests
from sqlglot import exp

from dinmo_dagster import delta, platforms, secrets, sync
from dinmo_dagster.config import platform_extra
from dinmo_dagster.platforms import ActivationSpec, DeliveryResult, Platform, PlatformError
from dinmo_dagster.state import ACKNOWLEDGEMENTS, JournalState, RowsKind, SyncStatus

__all__ = ["PlatformPlan", "build", "deliver", "plan", "preview"]


@dataclass
class PlatformPlan:
    """The operations of one platform sync: ``(operation, SELECT)`` pairs in the order they are sent."""

    sync_type: str  # "full" | "delta"
    counts: sync.ChangeCounts
    operations: list[tuple[str, exp.Select]]
    columns: list[str]  # the columns every SELECT returns: key, identifiers, mapped columns
    pk: str
    changes_table: exp.Table | None
    baseline_rows: int | None
    removes: bool = False
    notes: list[str] = field(default_factory=list)


def build(t: sync.SyncTarget) -> tuple[Platform, ActivationSpec]:
    """The platform adapter (its secrets read from the environment now) and the activation's spec."""
    a = t.activation
    if t.platform is None:
        raise sync.SyncError(f"activation '{t.name}': destination '{a.destination}' is not an API platform")
    try:
        platform = t.platform.build(a.destination, platform_extra(a, t.platform))
    except (secrets.MissingSecret, PlatformError) as exc:
        raise sync.SyncError(f"destination '{a.destination}': {exc}") from None
    return platform, spec_of(t)


def spec_of(t: sync.SyncTarget, columns: list[str] | None = None) -> ActivationSpec:
    """The activation's match identifiers and mapping, columns spelt as the warehouse spells them."""
    a = t.activation
    columns = columns or [src for src, _ in sync.exported_columns(t, t.warehouse.relation_columns(
        t.segment_relation()))]
    pk = delta.resolve_column(t.model.primary_key, columns)
    return ActivationSpec(
        destination=a.destination,
        key_column=pk,
        match={name: delta.resolve_column(c, columns) for name, c in a.platform_match.items()},
        mapping={delta.resolve_column(c, columns): dst for c, dst in (a.mapping or {}).items()},
        null_values=a.null_values,
        default_country=a.default_country,
    )


def _kinds(rows: exp.Table, columns: list[str], kinds: list[str]) -> exp.Select:
    return exp.select(*[delta.col(c) for c in columns]).from_(rows.copy()).where(
        exp.In(this=delta.col(delta.CHANGE_COL), expressions=[exp.Literal.string(k) for k in kinds]))


def _last_sent(values: exp.Table, change_set: exp.Table, pk: str, columns: list[str], available: list[str],
               kinds: list[str]) -> exp.Select:
    """The last delivered values of the records of ``kinds`` in ``change_set`` (removed ones, or updated ones
    under their old identifiers)."""
    keys = exp.select(delta.col(pk)).from_(change_set.copy()).where(
        exp.In(this=delta.col(delta.CHANGE_COL), expressions=[exp.Literal.string(k) for k in kinds]))
    return exp.select(*[delta.col(c) if c in available else exp.Null().as_(c, quoted=True) for c in columns]) \
        .from_(values.copy()).where(exp.In(this=delta.col(pk), query=keys.subquery()))


def plan(t: sync.SyncTarget, partition_key: str, force_full: bool = False) -> PlatformPlan:
    """Full or delta, the change counts, and the operations to send (nothing is sent)."""
    a, wh, dialect = t.activation, t.warehouse, t.dialect
    info = t.store.snapshot_info(partition_key)
    if info is None:
        raise sync.SyncError(f"no snapshot for partition '{partition_key}' of activation '{t.name}': "
                             f"materialize snapshots/{t.name} for this partition first")
    if info.rows_kind is RowsKind.NONE:
        raise sync.SyncError(f"activations.{t.name}.run_type: an API platform activation is synced "
                             "full_then_delta; found full_only")
    base = t.store.baseline()
    full = force_full or base is None or info.rows_kind is RowsKind.FULL
    if info.rows_kind is RowsKind.DELTA and (full or base is None or base.partition_key != info.base_partition):
        sync._take_snapshot(t, partition_key, full=full)  # the baseline moved since: take it again
        info = t.store.snapshot_info(partition_key)
        assert info is not None
    rows, snap = t.rows_table(partition_key), t.snapshot_table(partition_key)
    columns = [c for c in wh.relation_columns(rows) if c not in (delta.CHANGE_COL, delta.HASH_COL)]
    spec = spec_of(t, columns)
    pk = spec.key_column
    sent = list(dict.fromkeys([pk, *spec.match.values(), *spec.mapping]))
    changes: exp.Table | None = None
    if not full:
        counts = sync._counts(t, rows, info.row_count)
        change_set = rows
    else:
        counts = sync.ChangeCounts(added=info.row_count)
        change_set = rows
        if base is not None:
            changes = t.changes_table(partition_key)
            wh.execute(delta.create_changes_sql(snap, t.snapshot_table(base.partition_key), changes, pk, dialect))
            counts = sync._counts(t, changes, info.row_count)
            change_set = changes
    values = wh.qualify(t.schemas.delta_storage, base.values_table) if base and base.values_table else None
    available = wh.relation_columns(values) if values is not None else []

    def last_sent(kinds: list[str]) -> list[exp.Select]:
        return [_last_sent(values, change_set, pk, sent, available, kinds)] if values is not None else []

    ops: list[tuple[str, exp.Select]] = []
    service, mode = a.platform_service, a.platform_mode
    offered = t.platform.operations() if t.platform is not None else ()
    everything = _kinds(rows, sent, [delta.ADDED, delta.UPDATED])
    if service == "audiences":
        if full and "replace" in offered:
            ops.append(("replace", everything))
        elif full:
            ops += [("remove", q) for q in last_sent([delta.REMOVED])] + [("add", everything)]
        else:
            ops += [("remove", q) for q in last_sent([delta.REMOVED, delta.UPDATED])] + [("add", everything)]
    elif service == "events":
        ops.append(("track", _kinds(rows, sent, [delta.ADDED])))
    elif mode == "insert":
        added = _kinds(rows, sent, [delta.ADDED])
        if full and changes is not None:  # a full refresh creates only the records the baseline lacks
            added = added.where(exp.In(this=delta.col(pk), query=exp.select(delta.col(pk)).from_(changes.copy())
                                       .where(exp.EQ(this=delta.col(delta.CHANGE_COL),
                                                     expression=exp.Literal.string(delta.ADDED))).subquery()))
        ops.append(("insert", added))
    else:
        ops.append(("update" if mode == "update" else "upsert", everything))
        if mode == "mirror":
            ops += [("delete", q) for q in last_sent([delta.REMOVED])]
    removes = any(op in ("remove", "delete") for op, _ in ops)
    return PlatformPlan("full" if full else "delta", counts, ops, sent, pk, changes,
                        base.row_count if base else None, removes)


def _batches(t: sync.SyncTarget, select: exp.Select, columns: list[str]) -> Iterator[pa.RecordBatch]:
    """The rows of ``select``, read whole before the first is yielded: the journal writes to the same
    warehouse while they are sent."""
    with t.warehouse.stream(delta.render(select, t.dialect)) as reader:
        table = reader.read_all()
    table = table.rename_columns(columns)  # the warehouse may report the names in another case
    yield from table.to_batches(max_chunksize=10_000)


def _undone_sql(t: sync.SyncTarget, partition_key: str, p: PlatformPlan, undone: exp.Table) -> list[str]:
    """A table of the keys this sync sent that the platform did not acknowledge, for every operation."""
    ack = t.store.table(ACKNOWLEDGEMENTS)
    parts: list[exp.Select] = []
    for operation, select in p.operations:
        acknowledged = exp.select(delta.col("record_key")).from_(ack.copy()).where(exp.and_(
            exp.EQ(this=delta.col("activation"), expression=delta.lit(t.name)),
            exp.EQ(this=delta.col("partition_key"), expression=delta.lit(partition_key)),
            exp.EQ(this=delta.col("operation"), expression=delta.lit(operation))))
        as_text = exp.Cast(this=delta.col(p.pk), to=delta.text_type(t.dialect))
        parts.append(exp.select(delta.col(p.pk)).from_(select.subquery("o")).where(
            exp.Not(this=exp.In(this=as_text, query=acknowledged.subquery()))))
    union: exp.Expression = parts[0]
    for part in parts[1:]:
        union = exp.union(union, part, distinct=False)
    return delta.create_table_sql(undone, exp.select(delta.col(p.pk)).from_(union.subquery("u")), t.dialect)


def _keep_out_sql(t: sync.SyncTarget, partition_key: str, p: PlatformPlan, undone: exp.Table) -> list[str]:
    """Statements that keep the records in ``undone`` out of the new baseline: their snapshot rows become
    their baseline rows again (none for a record the baseline lacks), and their values stay the last sent."""
    wh, dialect = t.warehouse, t.dialect
    snap, rows = t.snapshot_table(partition_key), t.rows_table(partition_key)
    keys = exp.select(delta.col(p.pk)).from_(undone.copy())

    def delete(table: exp.Table) -> str:
        return delta.render(exp.Delete(this=table.copy(), where=exp.Where(
            this=exp.In(this=delta.col(p.pk), query=keys.subquery()))), dialect)

    statements = [delete(snap), delete(rows)]
    base = t.store.baseline()
    if base is not None:
        base_snap = t.snapshot_table(base.partition_key)
        shared = [c for c in wh.relation_columns(snap) if c in wh.relation_columns(base_snap)]
        statements.append(delta.render(exp.Insert(
            this=exp.Schema(this=snap.copy(), expressions=[delta.ident(c) for c in shared]),
            expression=exp.select(*[delta.col(c) for c in shared]).from_(base_snap.copy()).where(
                exp.In(this=delta.col(p.pk), query=keys.subquery()))), dialect))
    return statements


def _metadata_of(result: DeliveryResult, expired: int) -> dict[str, Any]:
    meta = result.as_metadata()
    if expired:
        meta["rejections_expired"] = expired
    return meta


def deliver(
    t: sync.SyncTarget,
    partition_key: str,
    run_id: str = "",
    force_full: bool = False,
    on_log: Callable[[str], None] = sync.log.info,
    is_alive: Callable[[str, str], bool | None] | None = None,
    on_dead: Callable[[str, bool], None] | None = None,
    retry: platforms.RetryPolicy | None = None,
) -> sync.SyncResult:
    """Send this sync's changes to the platform, then promote what it acknowledged to the baseline.

    Raises SyncError (the sync failed; the baseline did not move) for a refused credential, a request
    that failed for good, or a rejection rate above ``max_rejected_pct``. A quota that ran out is logged
    as a warning and the sync succeeds with what was acknowledged.
    """
    with t.warehouse.session():
        return _deliver(t, partition_key, run_id, force_full, on_log, is_alive, on_dead, retry)


def _deliver(
    t: sync.SyncTarget, partition_key: str, run_id: str, force_full: bool, on_log: Callable[[str], None],
    is_alive: Callable[[str, str], bool | None] | None, on_dead: Callable[[str, bool], None] | None,
    retry: platforms.RetryPolicy | None,
) -> sync.SyncResult:
    a = t.activation
    started = time.monotonic()
    started_at = datetime.now(timezone.utc).replace(tzinfo=None)
    t.store.ensure()
    t.store.ensure_platform()
    recovered = sync.recover(t, run_id, is_alive, on_dead)
    for note in recovered.notes:
        on_log(note)
    sync._journal(t, partition_key, run_id, JournalState.WRITING, [], None, {"started_at": started_at.isoformat()})
    result = sync.SyncResult(sync_type="unknown", counts=sync.ChangeCounts(), recovered=recovered.notes)
    sync._ACTIVE.add((t.name, partition_key))
    secret_values: list[str] = []
    try:
        p = plan(t, partition_key, force_full)
        result.sync_type, result.counts = p.sync_type, p.counts
        if p.removes and not force_full and p.baseline_rows and p.counts.removed:
            pct = 100.0 * p.counts.removed / p.baseline_rows
            if pct > a.max_removed_pct:
                raise sync.SyncError(
                    f"activation '{t.name}' would remove {p.counts.removed} of {p.baseline_rows} records "
                    f"({pct:.1f}%) from destination '{a.destination}', more than max_removed_pct "
                    f"{a.max_removed_pct:g}%; nothing was sent. If this is expected, raise "
                    f"activations.{t.name}.max_removed_pct or run `dinmo sync {t.name} --full-refresh`")
        platform, spec = build(t)
        secret_values = sorted(platform.settings.secret_values(), key=len, reverse=True)
        with t.store.platform_journal(partition_key) as journal:
            expired = t.store.drop_expired_rejections(a.retry_rejected_days)
            for rejection in expired:  # reported once, then no longer retried: they move the baseline
                journal.acknowledged(rejection.operation, [rejection.record_key])
            if expired:
                # keys and operations only: a platform's reason may quote the rejected value
                on_log(f"WARNING: {len(expired)} record(s) rejected for {a.retry_rejected_days:g} days or more are "
                       "no longer retried (their reasons stay in dinmo_rejections until now): "
                       + ", ".join(f"key {r.record_key} ({r.operation})" for r in expired[:20]))
            changes = [(op, _batches(t, select, p.columns)) for op, select in p.operations]
            delivered = platforms.deliver(platform, spec, changes, journal, retry=retry)
        result.platform = _metadata_of(delivered, len(expired))
        result.rows_written = delivered.accepted
        platforms.check_rejection_rate(delivered, a.max_rejected_pct)
    except BaseException as exc:
        message = secrets.scrub(str(exc), secret_values)
        sync._journal(t, partition_key, run_id, JournalState.FAILED, [])
        sync._history(t, partition_key, run_id, SyncStatus.FAILED, result, a, started_at, message[:500])
        sync._ACTIVE.discard((t.name, partition_key))
        if isinstance(exc, (PlatformError, requests.RequestException)):
            raise sync.SyncError(message) from None
        raise
    if delivered.quota is not None:
        on_log(f"WARNING: {delivered.quota.message}; the sync ends early as a partial success: what the "
               "platform acknowledged moves the baseline, the rest goes with the next sync")
    for operation, counts in delivered.operations.items():
        on_log(f"{operation}: {counts.records} record(s), {counts.accepted} accepted, {counts.rejected} rejected"
               + (f", {counts.not_sent} not sent" if counts.not_sent else ""))
    undone = t.undone_table(partition_key)
    try:
        if p.operations:
            t.warehouse.execute(_undone_sql(t, partition_key, p, undone))
            t.warehouse.execute(_keep_out_sql(t, partition_key, p, undone))
        row_count = int(t.warehouse.query(delta.count_sql(t.snapshot_table(partition_key), t.dialect))[0][0])
        info = t.store.snapshot_info(partition_key)
        statements, values_table = sync._values_sql(t, partition_key, info.rows_kind if info else RowsKind.NONE)
        t.warehouse.execute([*statements, *t.store.promote_sql(
            partition_key, t.snapshot_table(partition_key).name, row_count, values_table),
            t.store.clear_acknowledgements_sql(partition_key)])
        sync._journal(t, partition_key, run_id, JournalState.DONE, [],
                      summary=sync._summary(t, result, started_at))
    finally:
        sync._ACTIVE.discard((t.name, partition_key))
        drops = [delta.drop_table_sql(undone, t.dialect)]
        if p.changes_table is not None:
            drops.append(delta.drop_table_sql(p.changes_table, t.dialect))
        t.warehouse.execute(drops)
    result.dropped_partitions = sync.apply_retention(t)
    result.duration_s = time.monotonic() - started
    sync._history(t, partition_key, run_id, SyncStatus.SUCCESS, result, a, started_at, None)
    return result


@dataclass
class PlatformPreview:
    """What a platform sync would send: records per operation and the first requests, identifiers masked."""

    sync_type: str
    counts: sync.ChangeCounts
    records: dict[str, int]
    requests: list[platforms.PreviewRequest]


def preview(t: sync.SyncTarget, partition_key: str, max_requests: int = 2) -> PlatformPreview:
    """The operations and first request bodies of a sync, built without sending anything (the caller takes
    a snapshot under a throwaway partition key and drops it afterwards)."""
    p = plan(t, partition_key)
    platform, spec = build(t)
    records: dict[str, int] = {}
    changes = []
    for op, select in p.operations:
        batches = list(_batches(t, select, p.columns))
        records[op] = sum(b.num_rows for b in batches)
        changes.append((op, batches))
    shown = platforms.preview(platform, spec, changes, max_requests=max_requests)
    if p.changes_table is not None:
        t.warehouse.execute([delta.drop_table_sql(p.changes_table, t.dialect)])
    return PlatformPreview(p.sync_type, p.counts, records, shown)

"""One sync of an activation to an API platform (HubSpot, Braze, Meta Ads, Firestore...), no Dagster.

The snapshot step is the files' one (``sync.take_snapshot``): each record's key and row hash, over the
match identifiers and the mapped columns only, and the rows this sync sends (all of them for a full
sync, the changes for a delta). :func:`deliver` then turns the change set into platform operations,
streams each one from the warehouse in Arrow batches (:func:`_batches`: a few batches in memory, never
the change set) and hands them to the delivery SDK (``platforms.deliver``) with the sync's journal in
the warehouse (``SyncStateStore.platform_journal``), which writes while the rows are read. Records are
named by :data:`KEY_COL`, the warehouse's text of the key, on both sides:

- attributes: ``upsert`` sends added and updated records as upsert; ``insert`` the added ones;
  ``update`` added and updated ones as update (the platform rejects the ones it does not hold);
  ``mirror`` upserts, and deletes the records that left the segment (their identifiers are the last
  ones delivered, kept in ``vals__A``);
- audiences: the first (or a full) sync replaces the membership where the platform can; where it
  cannot (Braze), a full sync is remove + add, never clear + add: the records that left and the old
  identifiers of the changed ones are removed, then every member is added. Delta syncs add records
  that enter, remove records that leave, and remove a record whose identifiers changed under its old
  values, then add it under its new ones;
- events: the fact model's new events (event-time cursor and lookback), as ``track``.

The baseline moves only over what the platform acknowledged: a record rejected or not sent keeps its
baseline row hash in the promoted snapshot (a new record gets no row), so the next sync sends it again
with its latest values, and its values last delivered in ``vals__A`` (a full sync too), so a later
removal names the identifiers the platform holds. A promoted sync deletes the acknowledgements of its
partition and of every earlier one. A sync that was killed or failed is recovered by the next one
(:func:`recover_unfinished`): what the platform acknowledged during it moves the baseline first
(:func:`absorb`), so the platform and the baseline agree before the change set is computed.
Rejected records are kept in ``dinmo_rejections`` (key, operation, reason, attempts, first and last
seen); one rejected for ``retry_rejected_days`` is reported and no longer retried. More than ``max_rejected_pct`` % rejected fails the sync and the baseline stays. A quota that
runs out mid-sync is a partial success: what was acknowledged moves the baseline.
"""

from __future__ import annotations

import dataclasses
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

__all__ = ["KEY_COL", "STREAM_BATCH_ROWS", "PlatformPlan", "build", "deliver", "plan", "preview"]

KEY_COL = "_dinmo_key"
"""The record key as the warehouse writes it as text (``CAST(pk AS text)``), added to every operation's rows.

The delivery engine names records by it and the journal stores it (``dinmo_acknowledgements``,
``dinmo_rejections``); the warehouse compares it with the same cast to tell which records were
acknowledged. One text on both sides, whatever the key's type: Python's text of a value differs from a
warehouse's for some (a double ``100.0`` is ``100`` on PostgreSQL, a timestamp's microseconds).
"""

STREAM_BATCH_ROWS = 10_000
"""Rows per Arrow batch read from the warehouse while a sync sends them: memory holds a few batches,
never the change set."""


@dataclass
class PlatformPlan:
    """The operations of one platform sync: ``(operation, SELECT)`` pairs in the order they are sent."""

    sync_type: str  # "full" | "delta"
    counts: sync.ChangeCounts
    operations: list[tuple[str, exp.Select]]
    columns: list[str]  # the columns every SELECT returns: key, identifiers, mapped columns, then KEY_COL
    pk: str
    changes_table: exp.Table | None
    baseline_rows: int | None
    removes: bool = False
    notes: list[str] = field(default_factory=list)
    values_table: exp.Table | None = None  # the baseline's last delivered values (vals__A), if any
    values_columns: list[str] = field(default_factory=list)


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


def _key_text(pk: str, dialect: str) -> exp.Expression:
    """The record key as text, as the warehouse writes it: the only key text the sync compares."""
    return exp.Cast(this=delta.col(pk), to=delta.text_type(dialect))


def _kinds(rows: exp.Table, columns: list[str], pk: str, dialect: str, kinds: list[str]) -> exp.Select:
    return exp.select(*[delta.col(c) for c in columns], _key_text(pk, dialect).as_(KEY_COL, quoted=True)) \
        .from_(rows.copy()).where(
            exp.In(this=delta.col(delta.CHANGE_COL), expressions=[exp.Literal.string(k) for k in kinds]))


def _last_sent(values: exp.Table, change_set: exp.Table, pk: str, dialect: str, columns: list[str],
               available: list[str], kinds: list[str]) -> exp.Select:
    """The last delivered values of the records of ``kinds`` in ``change_set`` (removed ones, or updated ones
    under their old identifiers)."""
    keys = exp.select(delta.col(pk)).from_(change_set.copy()).where(
        exp.In(this=delta.col(delta.CHANGE_COL), expressions=[exp.Literal.string(k) for k in kinds]))
    return exp.select(*[delta.col(c) if c in available else exp.Null().as_(c, quoted=True) for c in columns],
                      _key_text(pk, dialect).as_(KEY_COL, quoted=True)) \
        .from_(values.copy()).where(exp.In(this=delta.col(pk), query=keys.subquery()))


def plan(t: sync.SyncTarget, partition_key: str, force_full: bool = False) -> PlatformPlan:
    """Full or delta, the change counts, and the operations to send (nothing is sent)."""
    wh, dialect = t.warehouse, t.dialect
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
        return [_last_sent(values, change_set, pk, dialect, sent, available, kinds)] if values is not None else []

    offered = t.platform.operations() if t.platform is not None else ()
    ops = _operations(t, rows, changes, full and "replace" in offered, last_sent, sent, pk)
    removes = any(op in ("remove", "delete") for op, _ in ops)
    return PlatformPlan("full" if full else "delta", counts, ops, [*sent, KEY_COL], pk, changes,
                        base.row_count if base else None, removes, values_table=values, values_columns=available)


def _operations(t: sync.SyncTarget, rows: exp.Table, changes: exp.Table | None,
                replace: bool, last_sent: Callable[[list[str]], list[exp.Select]], sent: list[str],
                pk: str) -> list[tuple[str, exp.Select]]:
    """The ``(operation, SELECT)`` pairs of a sync whose rows are ``rows``, in the order they are sent.

    ``changes``: a full sync's changes against the baseline (None for a delta, or a sync with no baseline);
    ``last_sent(kinds)``: the last delivered values of the change set's records of ``kinds``; ``replace``:
    a full audience sync the platform replaces whole."""
    a, dialect = t.activation, t.dialect
    ops: list[tuple[str, exp.Select]] = []
    service, mode = a.platform_service, a.platform_mode
    everything = _kinds(rows, sent, pk, dialect, [delta.ADDED, delta.UPDATED])
    if service == "audiences":
        if replace:
            ops.append(("replace", everything))
        else:
            # No replace (Braze): remove who left and the old identifiers of who changed, then add every
            # member; a full sync's change set is the one against the baseline, as a delta's is.
            ops += [("remove", q) for q in last_sent([delta.REMOVED, delta.UPDATED])] + [("add", everything)]
    elif service == "events":
        ops.append(("track", _kinds(rows, sent, pk, dialect, [delta.ADDED])))
    elif mode == "insert":
        added = _kinds(rows, sent, pk, dialect, [delta.ADDED])
        if changes is not None:  # a full refresh creates only the records the baseline lacks
            added = added.where(exp.In(this=delta.col(pk), query=exp.select(delta.col(pk)).from_(changes.copy())
                                       .where(exp.EQ(this=delta.col(delta.CHANGE_COL),
                                                     expression=exp.Literal.string(delta.ADDED))).subquery()))
        ops.append(("insert", added))
    else:
        ops.append(("update" if mode == "update" else "upsert", everything))
        if mode == "mirror":
            ops += [("delete", q) for q in last_sent([delta.REMOVED])]
    return ops


def _batches(t: sync.SyncTarget, select: exp.Select, columns: list[str]) -> Iterator[pa.RecordBatch]:
    """The rows of ``select`` as the warehouse hands them, :data:`STREAM_BATCH_ROWS` at a time.

    The stream holds a connection of its own (on DuckDB a cursor of the sync's open database, elsewhere
    a connection, a server-side cursor on PostgreSQL), so the journal writes acknowledgements to the same
    warehouse while the rows are read. Close the generator when the delivery stops early: that ends the
    stream and frees its connection.
    """
    with t.warehouse.stream(delta.render(select, t.dialect), batch_rows=STREAM_BATCH_ROWS) as reader:
        for batch in reader:
            yield batch.rename_columns(columns)  # the warehouse may report the names in another case


def _undone_sql(t: sync.SyncTarget, partition_key: str, p: PlatformPlan, undone: exp.Table) -> list[str]:
    """A table of the keys this sync sent that the platform did not acknowledge, for every operation, with
    the values last delivered of each one the baseline's values table holds (``_dinmo_had_values`` = 1).

    Keys are compared as :data:`KEY_COL`, the same cast of the key the engine named the records by.
    """
    keys = exp.select(delta.col(p.pk)).from_(
        _union(_keys_by_verdict(t, partition_key, p.operations, p.pk, acknowledged=False)).subquery("u")).distinct()
    if p.values_table is None:
        return delta.create_table_sql(undone, keys, t.dialect)
    kept = [c for c in p.values_columns if c != p.pk]
    had = exp.Case(ifs=[exp.If(this=exp.Is(this=delta.col(p.pk, "v"), expression=exp.Null()), true=delta.lit(0))],
                   default=delta.lit(1))
    with_values = exp.select(delta.col(p.pk, "k"), *[delta.col(c, "v") for c in kept], had.as_(_HAD_VALUES, quoted=True)) \
        .from_(keys.subquery("k")).join(exp.alias_(p.values_table.copy(), "v"), join_type="LEFT",
                                        on=exp.EQ(this=delta.col(p.pk, "v"), expression=delta.col(p.pk, "k")))
    return delta.create_table_sql(undone, with_values, t.dialect)


_HAD_VALUES = "_dinmo_had_values"


def _acknowledgements(t: sync.SyncTarget, partition_key: str, operation: str | None = None) -> exp.Expression:
    """The condition on ``dinmo_acknowledgements`` rows of sync ``partition_key`` of this activation (of
    one ``operation``, when given)."""
    conditions: list[exp.Expression] = [
        exp.EQ(this=delta.col("activation"), expression=delta.lit(t.name)),
        exp.EQ(this=delta.col("partition_key"), expression=delta.lit(partition_key))]
    if operation is not None:
        conditions.append(exp.EQ(this=delta.col("operation"), expression=delta.lit(operation)))
    return exp.and_(*conditions)


def _keys_by_verdict(t: sync.SyncTarget, partition_key: str, operations: list[tuple[str, exp.Select]], pk: str,
                     acknowledged: bool) -> list[exp.Select]:
    """Per operation, the keys it holds that the platform acknowledged (or did not) during sync
    ``partition_key``; keys compared as :data:`KEY_COL`, the cast of the key the engine named them by."""
    ack = t.store.table(ACKNOWLEDGEMENTS)
    parts = []
    for operation, select in operations:
        keys = exp.select(delta.col("record_key")).from_(ack.copy()).where(
            _acknowledgements(t, partition_key, operation))
        found: exp.Expression = exp.In(this=delta.col(KEY_COL), query=keys.subquery())
        parts.append(exp.select(delta.col(pk)).from_(select.subquery("o")).where(
            found if acknowledged else exp.Not(this=found)))
    return parts


def _union(parts: list[exp.Select]) -> exp.Expression:
    union: exp.Expression = parts[0]
    for part in parts[1:]:
        union = exp.union(union, part, distinct=False)
    return union


def _restore_values_sql(t: sync.SyncTarget, partition_key: str, p: PlatformPlan, undone: exp.Table,
                        values: exp.Table) -> list[str]:
    """Statements (after the values table was brought up to this sync) that give each record the platform did
    not acknowledge its values last delivered again, when this sync's rows replaced them (a full sync, or
    a mapping change): a later removal must name the identifiers the platform holds."""
    if p.values_table is None:
        return []
    new_columns = [c for c in t.warehouse.relation_columns(t.rows_table(partition_key)) if c != delta.CHANGE_COL]
    shared = [c for c in new_columns if c in p.values_columns]
    present = exp.select(delta.col(p.pk)).from_(values.copy())
    insert = exp.Insert(
        this=exp.Schema(this=values.copy(), expressions=[delta.ident(c) for c in shared]),
        expression=exp.select(*[delta.col(c) for c in shared]).from_(undone.copy()).where(exp.and_(
            exp.EQ(this=delta.col(_HAD_VALUES), expression=delta.lit(1)),
            exp.Not(this=exp.In(this=delta.col(p.pk), query=present.subquery())))))
    return [delta.render(insert, t.dialect)]


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

# ---------------------------------------------------------------------------------------------------------
# Recovery: what an unfinished sync got acknowledged moves the baseline
# ---------------------------------------------------------------------------------------------------------


def _count(t: sync.SyncTarget, relation: exp.Expression, where: exp.Expression | None = None) -> int:
    select = exp.select(exp.Count(this=exp.Star())).from_(relation.copy())
    return int(t.warehouse.query(delta.render(select.where(where) if where is not None else select,
                                              t.dialect))[0][0])


def _in_keys(pk: str, keys: exp.Table, negate: bool = False) -> exp.Expression:
    found: exp.Expression = exp.In(this=delta.col(pk), query=exp.select(delta.col(pk)).from_(keys.copy()).subquery())
    return exp.Not(this=found) if negate else found


def _delete_where(table: exp.Table, condition: exp.Expression, dialect: str) -> str:
    return delta.render(exp.Delete(this=table.copy(), where=exp.Where(this=condition)), dialect)


def _insert_select(table: exp.Table, columns: list[str], source: exp.Table, condition: exp.Expression,
                   dialect: str) -> str:
    return delta.render(exp.Insert(
        this=exp.Schema(this=table.copy(), expressions=[delta.ident(c) for c in columns]),
        expression=exp.select(*[delta.col(c) for c in columns]).from_(source.copy()).where(condition)), dialect)


def absorb(t: sync.SyncTarget, partition_key: str) -> str:
    """Move the baseline over what the platform acknowledged during the unfinished sync ``partition_key``
    (killed, or failed after some batches), exactly as that sync would have had it succeeded with what it
    got acknowledged; returns what was done, in one line.

    A record is *done* when it is in one of that sync's operations and the platform acknowledged it in
    every operation that holds it (an identifier change is a remove and an add); the platform then holds
    that sync's version of it. The new baseline is the current one with each done record's snapshot row
    and last delivered values (``vals__A``) replaced by that sync's (removed, for a record it removed or
    deleted); every other record keeps its baseline row, which says what the platform still holds. So
    each later change, a change back included, is a change for the next sync: a record acknowledged
    with new values and changed back is sent again, a member acknowledged and gone since is removed.
    Applied to the baseline in place (its partition key stays); with no baseline yet (the first sync
    died), that sync's snapshot holding its done records only becomes the baseline. The operations are
    rebuilt from the sync's rows table, as :func:`plan` built them: a ``replace`` whose session was not
    committed acknowledged nothing (Meta) and replaced nothing, so its records keep their baseline rows
    and the ones it would have dropped are removed by the next sync; records a replace acknowledged
    (committed, or written one by one, Firestore) are done. Applying it twice gives the same baseline.
    """
    wh, dialect, store = t.warehouse, t.dialect, t.store
    ack = store.table(ACKNOWLEDGEMENTS)
    forget = _delete_where(ack, _acknowledgements(t, partition_key), dialect)
    acknowledged = _count(t, ack, _acknowledgements(t, partition_key))
    info = store.snapshot_info(partition_key)
    base = store.baseline()
    if info is None or info.rows_kind is RowsKind.NONE:
        # Retention dropped its snapshot: what it sent is unknown. Its acknowledged records that the
        # baseline holds get a row hash no row takes in practice (DuckDB's is a 64-bit number, the others'
        # an MD5 in hex), so the next sync sends them again, or removes them.
        statements = [forget]
        if base is not None:
            target = t.snapshot_table(base.partition_key)
            pk = delta.resolve_column(t.model.primary_key, wh.relation_columns(target))
            keys = exp.select(delta.col("record_key")).from_(ack.copy()).where(_acknowledgements(t, partition_key))
            unknown = exp.Literal.number(0) if dialect == "duckdb" else exp.Literal.string("")
            statements.insert(0, delta.render(exp.Update(
                this=target.copy(), expressions=[exp.EQ(this=delta.col(delta.HASH_COL), expression=unknown)],
                where=exp.Where(this=exp.In(this=_key_text(pk, dialect), query=keys.subquery()))), dialect))
        wh.execute(statements)
        return (f"the unfinished sync {partition_key} has no snapshot left (retention): its {acknowledged} "
                "acknowledged record(s) the baseline holds are sent again by this sync")
    rows, snap = t.rows_table(partition_key), t.snapshot_table(partition_key)
    columns = [c for c in wh.relation_columns(rows) if c not in (delta.CHANGE_COL, delta.HASH_COL)]
    spec = spec_of(t, columns)
    pk = spec.key_column
    sent = list(dict.fromkeys([pk, *spec.match.values(), *spec.mapping]))
    full = info.rows_kind is RowsKind.FULL
    changes: exp.Table | None = None
    change_set = rows
    if full and base is not None:
        changes = t.changes_table(partition_key)
        wh.execute(delta.create_changes_sql(snap, t.snapshot_table(base.partition_key), changes, pk, dialect))
        change_set = changes
    values = wh.qualify(t.schemas.delta_storage, base.values_table) if base and base.values_table else None
    available = wh.relation_columns(values) if values is not None else []

    def last_sent(kinds: list[str]) -> list[exp.Select]:
        return [_last_sent(values, change_set, pk, dialect, sent, available, kinds)] if values is not None else []

    # the replace of a full audience sync, if it ran: its acknowledgements say so
    replace = full and bool(_count(t, ack, _acknowledgements(t, partition_key, "replace")))
    operations = _operations(t, rows, changes, replace, last_sent, sent, pk)
    done = t._delta_table("done__", partition_key)
    keys = exp.select(delta.col(pk)).from_(
        _union(_keys_by_verdict(t, partition_key, operations, pk, acknowledged=True)).subquery("a")).distinct() \
        .where(exp.Not(this=exp.In(this=delta.col(pk), query=exp.select(delta.col(pk)).from_(
            _union(_keys_by_verdict(t, partition_key, operations, pk, acknowledged=False)).subquery("u")).subquery())))
    try:
        wh.execute(delta.create_table_sql(done, keys, dialect))
        moved = _count(t, done)
        if base is not None:
            target = t.snapshot_table(base.partition_key)
            shared = [c for c in wh.relation_columns(snap) if c in wh.relation_columns(target)]
            statements = [_delete_where(target, _in_keys(pk, done), dialect),
                          _insert_select(target, shared, snap, _in_keys(pk, done), dialect)]
            if values is not None:
                kept = [c for c in wh.relation_columns(rows) if c != delta.CHANGE_COL and c in available]
                statements += [_delete_where(values, _in_keys(pk, done), dialect), _insert_select(
                    values, kept, rows, exp.and_(_in_keys(pk, done), exp.NEQ(
                        this=delta.col(delta.CHANGE_COL), expression=delta.lit(delta.REMOVED))), dialect)]
            wh.execute(statements)
            wh.execute([*store.promote_sql(base.partition_key, target.name, _count(t, target), base.values_table),
                        forget])
        else:
            statements = [_delete_where(snap, _in_keys(pk, done, negate=True), dialect)]
            values_sql, values_table = sync._values_sql(t, partition_key, RowsKind.FULL)
            if values_table is not None:
                statements += [*values_sql, _delete_where(t.values_table(), _in_keys(pk, done, negate=True), dialect)]
            wh.execute(statements)
            wh.execute([*store.promote_sql(partition_key, snap.name, _count(t, snap), values_table),
                        store.clear_acknowledgements_sql(partition_key)])
    finally:
        wh.execute([delta.drop_table_sql(done, dialect),
                    *([delta.drop_table_sql(changes, dialect)] if changes is not None else [])])
    if partition_key.endswith(sync.EARLIER_ATTEMPT):  # a copy kept for this recovery only
        wh.execute(sync._drop_snapshot_sql(t, partition_key))
        partition_key = partition_key.removesuffix(sync.EARLIER_ATTEMPT)
    return (f"recovered the unfinished sync {partition_key}: the {moved} record(s) the platform acknowledged "
            "moved the baseline; they are sent again only if they changed since")


def recover_unfinished(t: sync.SyncTarget, partition_key: str) -> tuple[list[str], bool]:
    """Recover the activation's unfinished syncs before sync ``partition_key`` plans its change set: one
    line per sync recovered, and whether the baseline moved (then this sync's snapshot is taken again).

    The unfinished syncs are the earlier partitions newer than the baseline with acknowledgements left in
    ``dinmo_acknowledgements`` (a promoted sync deletes its own and every earlier one; a later partition's
    belong to a sync not to be touched), and this partition's own earlier attempt when its snapshot was
    taken again (``sync.EARLIER_ATTEMPT``), oldest first: each one's acknowledged part moves the baseline
    (:func:`absorb`). Events are tracked, never changed nor removed, and the next window starts at the
    baseline's event cursor, so it holds every event of those syncs: their acknowledgements are carried
    over to this sync instead, whose delivery skips them (an event acknowledged is not sent twice, an
    event not acknowledged is not skipped). Run it after the concurrency guard (``sync.recover``).
    """
    wh, dialect, store = t.warehouse, t.dialect, t.store
    ack = store.table(ACKNOWLEDGEMENTS)
    base = store.baseline()
    earlier: exp.Expression = exp.LT(this=delta.col("partition_key"), expression=delta.lit(partition_key))
    if base is not None:
        earlier = exp.and_(earlier, exp.GT(this=delta.col("partition_key"), expression=delta.lit(base.partition_key)))
    # this partition's own earlier attempt, when it was snapshotted again (sync.EARLIER_ATTEMPT): the newest
    attempt = exp.EQ(this=delta.col("partition_key"), expression=delta.lit(partition_key + sync.EARLIER_ATTEMPT))
    found = exp.select(delta.col("partition_key")).distinct().from_(ack.copy()).where(exp.and_(
        exp.EQ(this=delta.col("activation"), expression=delta.lit(t.name)), exp.or_(earlier, attempt)))
    unfinished = sorted(str(r[0]) for r in wh.query(delta.render(found, dialect)))
    if t.activation.platform_service != "events":
        return [absorb(t, partition) for partition in unfinished], bool(unfinished)
    notes = []
    columns = ["activation", "partition_key", "operation", "record_key", "acknowledged_at"]
    for partition in unfinished:
        carried = exp.select(delta.col("activation"), delta.lit(partition_key), delta.col("operation"),
                             delta.col("record_key"), delta.col("acknowledged_at")).from_(ack.copy()).where(
            _acknowledgements(t, partition))
        count = _count(t, ack, _acknowledgements(t, partition))
        wh.execute([delta.render(exp.Insert(this=exp.Schema(this=ack.copy(), expressions=[
            delta.ident(c) for c in columns]), expression=carried), dialect),
            _delete_where(ack, _acknowledgements(t, partition), dialect)])
        notes.append(f"{count} event(s) the platform acknowledged during the unfinished sync {partition} are not "
                     "sent again")
    return notes, False


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
        base_before = t.store.baseline()
        notes, moved = recover_unfinished(t, partition_key)
        for note in notes:
            on_log(note)
        info = t.store.snapshot_info(partition_key)
        if moved and info is not None:
            # The snapshot holds the changes against the baseline before recovery: take it again. A full
            # one taken because there was no baseline yet becomes a delta; a full refresh stays one.
            sync._take_snapshot(t, partition_key, full=force_full or (
                info.rows_kind is RowsKind.FULL and base_before is not None))
        p = plan(t, partition_key, force_full)
        result.sync_type, result.counts = p.sync_type, p.counts
        if p.removes and not force_full and p.baseline_rows and p.counts.removed:
            pct = 100.0 * p.counts.removed / p.baseline_rows
            if pct > a.max_removed_pct:
                raise sync.SyncError(
                    f"activation '{t.name}' would remove {p.counts.removed} of {p.baseline_rows} records "
                    f"({pct:.1f}%) from destination '{a.destination}', more than max_removed_pct "
                    f"{a.max_removed_pct:g}%; nothing was sent. If this is expected, raise "
                    f"activations.{t.name}.max_removed_pct or run `dinmo sync {t.name} --full-refresh`",
                    event="removal_guard")
        platform, spec = build(t)
        spec = dataclasses.replace(spec, key_column=KEY_COL)
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
            try:
                delivered = platforms.deliver(platform, spec, changes, journal, retry=retry)
            finally:
                for _, stream in changes:  # a delivery that stopped early leaves its stream open
                    stream.close()
        result.platform = _metadata_of(delivered, len(expired))
        result.rows_written = delivered.accepted
        platforms.check_rejection_rate(delivered, a.max_rejected_pct)
    except BaseException as exc:
        message = secrets.scrub(str(exc), secret_values)
        sync._journal(t, partition_key, run_id, JournalState.FAILED, [])
        sync._history(t, partition_key, run_id, SyncStatus.FAILED, result, a, started_at, message[:500])
        sync._ACTIVE.discard((t.name, partition_key))
        if isinstance(exc, (PlatformError, requests.RequestException)):
            raise sync.SyncError(message, "rejections" if isinstance(exc, platforms.RejectionRateExceeded)
                                 else "failure") from None
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
        if values_table is not None and p.operations:
            statements += _restore_values_sql(t, partition_key, p, undone, t.values_table())
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
    spec = dataclasses.replace(spec, key_column=KEY_COL)
    # counted in the warehouse; only the rows of the first requests are read
    records = {op: int(t.warehouse.query(delta.render(exp.select(exp.Count(this=exp.Star())).from_(
        select.subquery("o")), t.dialect))[0][0]) for op, select in p.operations}
    changes = [(op, _batches(t, select, p.columns)) for op, select in p.operations]
    try:
        shown = platforms.preview(platform, spec, changes, max_requests=max_requests)
    finally:
        for _, stream in changes:
            stream.close()
    if p.changes_table is not None:
        t.warehouse.execute([delta.drop_table_sql(p.changes_table, t.dialect)])
    return PlatformPreview(p.sync_type, p.counts, records, shown)

"""The delta engine's SQL: snapshots with NULL-safe row hashes, change sets, and the state tables.

Everything is built as sqlglot expressions and rendered for the warehouse's dialect; identifiers are
quoted and values are literals, never pasted text. No Dagster imports: this module can be read and
tested alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import Enum

from sqlglot import exp

HASH_COL = "_dinmo_row_hash"
CHANGE_COL = "_dinmo_change"
ADDED, UPDATED, REMOVED = "added", "updated", "removed"


def ident(name: str) -> exp.Identifier:
    return exp.to_identifier(name, quoted=True)


def col(name: str, table: str | None = None) -> exp.Column:
    return exp.column(ident(name), table=exp.to_identifier(table) if table else None)


def text_type(dialect: str) -> exp.DataType:
    """Unbounded text. Redshift's TEXT is VARCHAR(256) and would cut long values: use its maximum,
    which PostgreSQL accepts too."""
    return exp.DataType.build("varchar(65535)" if dialect == "redshift" else "text")


def resolve_column(name: str, columns: Sequence[str]) -> str:
    """The warehouse's spelling of a configured column: exact, else the one case-insensitive match.

    Snowflake returns unquoted names in upper case; the YAML says ``customer_id``.
    """
    if name in columns:
        return name
    matches = [c for c in columns if c.lower() == name.lower()]
    return matches[0] if len(matches) == 1 else name


def lit(value: object) -> exp.Expression:
    return exp.convert(value)


def render(expression: exp.Expression, dialect: str) -> str:
    return expression.sql(dialect=dialect)


def row_hash(columns: Sequence[str], dialect: str, table: str | None = None) -> exp.Expression:
    """A NULL-safe, unambiguous row hash over ``columns``.

    Each value becomes ``'~'`` when NULL, else ``'v' || length(text) || ':' || text``, so NULL, the empty
    string and the string 'NULL' differ, and no value can bleed into its neighbour; the others hash that
    with MD5. DuckDB hashes the row value itself with its native 64-bit ``hash``, which has the same
    properties.
    """
    parts: list[exp.Expression] = []
    for c in columns:
        value = exp.cast(col(c, table), text_type(dialect))
        encoded = exp.Concat(
            expressions=[
                exp.Literal.string("v"),
                exp.cast(exp.Length(this=value.copy()), text_type(dialect)),
                exp.Literal.string(":"),
                value,
            ],
            safe=False,
        )
        parts.append(
            exp.Case(ifs=[exp.If(this=exp.Is(this=col(c, table), expression=exp.Null()),
                                 true=exp.Literal.string("~"))], default=encoded)
        )
    if dialect == "duckdb":
        # DuckDB's native hash of a row value: NULL-safe and unambiguous, and ~3x cheaper than
        # hashing the text encoding below.
        return exp.Anonymous(this="hash", expressions=[
            exp.Anonymous(this="row", expressions=[col(c, table) for c in columns] or [exp.Literal.string("")])])
    joined = exp.Concat(expressions=parts or [exp.Literal.string("")], safe=False)
    return exp.MD5(this=joined)


def ts_literal(value: datetime) -> exp.Expression:
    """A timestamp literal (a value, never pasted SQL)."""
    return exp.cast(exp.Literal.string(value.isoformat(sep=" ")), exp.DataType.build("timestamp"))


def _rows_per_key(source: exp.Expression, pk: str) -> exp.Expression:
    """``(SELECT pk, COUNT(*) AS n FROM source GROUP BY pk) AS g``: one row per key (NULL keys in one row).

    Distinct keys are counted as the rows of this grouping, not with ``COUNT(DISTINCT key)``: a grouping
    spills to disk when it outgrows the warehouse's memory (DuckDB's hash aggregate does), a distinct
    count does not (DuckDB fails with "Out of Memory" on tens of millions of keys under a small
    ``memory_limit``), so the first sync of a large table never depends on the memory limit."""
    rel = source.copy() if isinstance(source, (exp.Table, exp.Subquery)) else relation(source, "k0")
    return (exp.select(col(pk), exp.Count(this=exp.Star()).as_(_PER_KEY, quoted=True)).from_(rel)
            .group_by(col(pk)).subquery("g"))


_PER_KEY = "_dinmo_rows"


def _total(expression: exp.Expression) -> exp.Expression:
    return exp.Coalesce(this=exp.Sum(this=expression), expressions=[lit(0)])


def key_stats_sql(source: exp.Expression, pk: str, dialect: str) -> str:
    """Total rows, rows with a key, distinct keys: one scan of the segment, grouped by key."""
    q = exp.select(
        _total(col(_PER_KEY)).as_("n_total"),
        _total(exp.Case(ifs=[exp.If(this=exp.Not(this=exp.Is(this=col(pk), expression=exp.Null())),
                                    true=col(_PER_KEY))])).as_("n_keyed"),
        exp.Count(this=col(pk)).as_("n_distinct"),
    ).from_(_rows_per_key(source, pk))
    return render(q, dialect)


def source_rows(
    source: exp.Expression,
    pk: str,
    columns: Sequence[str],
    hashed: Sequence[str],
    dialect: str,
    dedupe: bool,
    order_by: str | None = None,
) -> exp.Select:
    """The rows a sync reads from its segment: ``columns`` plus the row hash over ``hashed``.

    NULL keys are left out. With ``dedupe`` one row per key is kept: the highest ``order_by`` value,
    then the highest row hash, so the choice is the same on every run.
    """
    extra_order = [col(order_by)] if dedupe and order_by and order_by not in columns else []
    inner = exp.select(*[col(c) for c in columns], *extra_order, row_hash(hashed, dialect).as_(HASH_COL, quoted=True))
    inner = inner.from_(source.copy()).where(exp.Not(this=exp.Is(this=col(pk), expression=exp.Null())))
    if not dedupe:
        return inner
    order = [exp.Ordered(this=col(order_by), desc=True, nulls_first=False)] if order_by else []
    order.append(exp.Ordered(this=col(HASH_COL), desc=True))
    rn = exp.Window(this=exp.RowNumber(), partition_by=[col(pk)], order=exp.Order(expressions=order))
    ranked = exp.select(exp.Star(), rn.as_("_dinmo_rn")).from_(inner.subquery("s"))
    return exp.select(*[col(c) for c in columns], col(HASH_COL)).from_(ranked.subquery("r")).where(
        exp.EQ(this=col("_dinmo_rn"), expression=lit(1)))


def create_table_sql(target: exp.Table, select: exp.Expression, dialect: str) -> list[str]:
    """Drop ``target`` if it exists, then CREATE TABLE ... AS ``select``."""
    create = exp.Create(this=target.copy(), kind="TABLE", expression=select)
    return [render(exp.Drop(tables=[target.copy()], kind="TABLE", exists=True), dialect), render(create, dialect)]


def relation(source: exp.Expression, alias: str = "src") -> exp.Expression:
    """A FROM item: a table as it is, a SELECT as a subquery named ``alias``."""
    return source.copy() if isinstance(source, exp.Table) else source.copy().subquery(alias)


def narrow_select(source: exp.Expression, narrow: Sequence[str], where: exp.Expression | None = None) -> exp.Select:
    """The key (and event time), plus the row hash, of every row of ``source``: a snapshot's columns."""
    q = exp.select(*[col(c) for c in narrow], col(HASH_COL)).from_(relation(source))
    return q.where(where) if where is not None else q


def full_rows_select(src: exp.Select, columns: Sequence[str]) -> exp.Select:
    """Every row of a full sync, as rows of kind ``added``: the rows table of a full sync (same columns as
    ``delta_rows_select``)."""
    return exp.select(exp.Literal.string(ADDED).as_(CHANGE_COL, quoted=True), col(HASH_COL),
                      *[col(c) for c in columns]).from_(src.copy().subquery("s"))


def changes_select(new: exp.Expression, base: exp.Expression, pk: str, with_hash: bool = False) -> exp.Select:
    """(kind, key[, new row hash]) of each change: one full outer join of keys and row hashes only.

    ``new`` and ``base`` are tables or SELECTs with the key and the row hash column.
    """
    def keys_and_hashes(rel: exp.Expression, alias: str) -> exp.Subquery:
        return exp.select(col(pk), col(HASH_COL)).from_(relation(rel, f"{alias}0")).subquery(alias)

    n_pk, b_pk = col(pk, "n"), col(pk, "b")
    kind = exp.Case(
        ifs=[
            exp.If(this=exp.Is(this=b_pk.copy(), expression=exp.Null()), true=exp.Literal.string(ADDED)),
            exp.If(this=exp.Is(this=n_pk.copy(), expression=exp.Null()), true=exp.Literal.string(REMOVED)),
        ],
        default=exp.Literal.string(UPDATED),
    )
    changed = exp.or_(
        exp.Is(this=n_pk.copy(), expression=exp.Null()),
        exp.Is(this=b_pk.copy(), expression=exp.Null()),
        exp.NEQ(this=col(HASH_COL, "n"), expression=col(HASH_COL, "b")),
    )
    columns = [kind.as_(CHANGE_COL, quoted=True),
               exp.Coalesce(this=n_pk.copy(), expressions=[b_pk.copy()]).as_(pk, quoted=True)]
    if with_hash:
        columns.append(col(HASH_COL, "n").as_(HASH_COL, quoted=True))
    return (
        exp.select(*columns)
        .from_(keys_and_hashes(new, "n"))
        .join(keys_and_hashes(base, "b"), on=exp.EQ(this=n_pk.copy(), expression=b_pk.copy()), join_type="FULL OUTER")
        .where(changed)
    )


def delta_rows_select(
    src: exp.Select, base: exp.Select, pk: str, columns: Sequence[str], hashed: exp.Expression | None = None,
) -> exp.Select:
    """The rows a delta sync delivers, in one statement, so the hashes and the values agree.

    A full outer join of keys and row hashes (the segment's ``src`` against the baseline ``base``) finds
    the changes; the values of added and updated rows are then read from ``src`` again, for the changed
    keys only, within the same statement (one consistent read of the warehouse). Columns: the change
    kind, the row hash, then ``columns`` in their order (only the key is set on removed rows).
    ``hashed``: a snapshot table just built from ``src`` in the same transaction, whose keys and
    hashes are joined instead of hashing ``src`` again (a database whose transaction reads one snapshot
    of its tables, such as DuckDB).
    """
    keys = changes_select(hashed if hashed is not None else src, base, pk, with_hash=True)
    on = exp.and_(
        exp.EQ(this=col(pk, "v"), expression=col(pk, "k")),
        exp.NEQ(this=col(CHANGE_COL, "k"), expression=exp.Literal.string(REMOVED)),
    )
    return (
        exp.select(col(CHANGE_COL, "k"), col(HASH_COL, "k"), *[col(c, "k" if c == pk else "v") for c in columns])
        .from_(keys.subquery("k"))
        .join(src.copy().subquery("v"), on=on, join_type="LEFT")
    )


STATS_COLUMNS = ("n_rows", "n_base", "n_new_keys", "n_added", "n_updated", "n_removed")
"""What ``snapshot_stats_sql`` and ``delta_stats_sql`` return, in order: the snapshot's rows, the
baseline's rows, the distinct keys among the rows the baseline lacks, then the added, updated and
removed counts."""


def _count_if(condition: exp.Expression) -> exp.Expression:
    return exp.Count(this=exp.Case(ifs=[exp.If(this=condition, true=lit(1))]))


def _count_rows(rel: exp.Expression) -> exp.Expression:
    """``(SELECT COUNT(*) FROM rel)``: a scalar subquery (a metadata lookup for a DuckDB table)."""
    return exp.select(exp.Count(this=exp.Star())).from_(relation(rel, "c0")).subquery()


def _named(expressions: Sequence[exp.Expression]) -> list[exp.Expression]:
    # every column named: some drivers (Snowflake's) key a row's values by column name
    return [e.as_(n) for e, n in zip(expressions, STATS_COLUMNS)]


def snapshot_stats_sql(snapshot: exp.Table, baseline: exp.Expression | None, pk: str, dialect: str) -> str:
    """Key statistics and change counts of a snapshot just built (keys and row hashes, NULL keys left
    out, one row per segment row) against ``baseline`` (the last successful sync's keys and hashes), in
    one full outer join; columns ``STATS_COLUMNS``.

    The baseline has one row per key, so the snapshot's distinct keys are the baseline rows it matched
    (``n_base - n_removed``) plus the distinct keys among its unmatched rows (``n_new_keys``): the
    uniqueness check counts distinct keys over the added rows only, not the whole snapshot. Without a
    baseline every key is new.
    """
    if baseline is None:  # the snapshot has no NULL key: its distinct keys are the groups (see _rows_per_key)
        return render(exp.select(*_named([
            _total(col(_PER_KEY)), lit(0), exp.Count(this=exp.Star()), _total(col(_PER_KEY)), lit(0), lit(0),
        ])).from_(_rows_per_key(snapshot, pk)), dialect)
    n_pk, b_pk = col(pk, "n"), col(pk, "b")
    new_row = exp.and_(exp.Is(this=b_pk.copy(), expression=exp.Null()),
                       exp.Not(this=exp.Is(this=n_pk.copy(), expression=exp.Null())))
    base_rel = exp.select(col(pk), col(HASH_COL)).from_(relation(baseline, "b0")).subquery("b")
    q = exp.select(*_named([
        exp.Count(this=n_pk.copy()),
        _count_rows(baseline),
        exp.Count(this=exp.Distinct(expressions=[exp.Case(ifs=[exp.If(this=new_row.copy(), true=n_pk.copy())])])),
        _count_if(new_row),
        _count_if(exp.and_(exp.Not(this=exp.Is(this=n_pk.copy(), expression=exp.Null())),
                           exp.Not(this=exp.Is(this=b_pk.copy(), expression=exp.Null())),
                           exp.NEQ(this=col(HASH_COL, "n"), expression=col(HASH_COL, "b")))),
        _count_if(exp.Is(this=n_pk.copy(), expression=exp.Null())),
    ])).from_(exp.alias_(snapshot.copy(), "n")).join(
        base_rel, on=exp.EQ(this=n_pk.copy(), expression=b_pk.copy()), join_type="FULL OUTER")
    return render(q, dialect)


def delta_stats_sql(snapshot: exp.Table, baseline: exp.Expression, rows: exp.Table, pk: str, dialect: str) -> str:
    """``STATS_COLUMNS`` of a delta snapshot from the tables just built: the snapshot's and the
    baseline's row counts, and the rows table (its changes), which holds every snapshot row the
    baseline lacks; so the uniqueness check reads the changes only (see ``snapshot_stats_sql``)."""
    kind = col(CHANGE_COL)
    added = exp.EQ(this=kind.copy(), expression=exp.Literal.string(ADDED))
    q = exp.select(*_named([
        _count_rows(snapshot), _count_rows(baseline),
        exp.Count(this=exp.Distinct(expressions=[exp.Case(ifs=[exp.If(this=added.copy(), true=col(pk))])])),
        _count_if(added),
        _count_if(exp.EQ(this=kind.copy(), expression=exp.Literal.string(UPDATED))),
        _count_if(exp.EQ(this=kind.copy(), expression=exp.Literal.string(REMOVED))),
    ])).from_(rows.copy())
    return render(q, dialect)


CHANGES_STATS_COLUMNS = (*STATS_COLUMNS, "n_null_keys")
"""What ``changes_stats_sql`` returns: ``STATS_COLUMNS`` (``n_rows``: the segment's rows with a key),
then the segment's rows without a key."""


def changes_stats_sql(segment: exp.Expression, baseline: exp.Expression, rows: exp.Table, pk: str,
                      dialect: str) -> str:
    """``CHANGES_STATS_COLUMNS`` of a delta whose only new table is its rows table (the changes, see
    ``apply_changes_sql``): the changes are counted from it, the segment's rows with and without a key
    from one scan of its key column (no hashing), the baseline's rows from the baseline.

    As in ``snapshot_stats_sql``, the distinct keys are ``n_base - n_removed + n_new_keys``; they equal
    ``n_rows`` only when no key repeats in the segment (a repeated key that matches the baseline is
    counted twice in ``n_rows`` and once in the baseline), so the uniqueness check needs no snapshot.
    Run it in the transaction that built ``rows``, so both read the same state of the segment.
    """
    kind = col(CHANGE_COL)
    added = exp.EQ(this=kind.copy(), expression=exp.Literal.string(ADDED))
    changes = exp.select(
        exp.Count(this=exp.Distinct(expressions=[exp.Case(ifs=[exp.If(this=added.copy(), true=col(pk))])]))
        .as_("n_new_keys"),
        _count_if(added).as_("n_added"),
        _count_if(exp.EQ(this=kind.copy(), expression=exp.Literal.string(UPDATED))).as_("n_updated"),
        _count_if(exp.EQ(this=kind.copy(), expression=exp.Literal.string(REMOVED))).as_("n_removed"),
    ).from_(rows.copy()).subquery("r")
    seg = exp.select(exp.Count(this=col(pk)).as_("n_keyed"), exp.Count(this=exp.Star()).as_("n_total")).from_(
        relation(segment, "s0")).subquery("s")
    q = exp.select(
        col("n_keyed", "s").as_("n_rows"), _count_rows(baseline).as_("n_base"),
        *[col(c, "r").as_(c) for c in ("n_new_keys", "n_added", "n_updated", "n_removed")],
        exp.Sub(this=col("n_total", "s"), expression=col("n_keyed", "s")).as_("n_null_keys"),
    ).from_(changes).join(seg, join_type="CROSS")
    return render(q, dialect)


def apply_changes_sql(baseline: exp.Table, rows: exp.Table, target: exp.Table, pk: str, narrow: Sequence[str],
                      dialect: str) -> list[str]:
    """Turn the baseline's snapshot table into the next one, in place: a delta's promotion.

    Its changed keys (added, updated, removed: every key of the rows table) are deleted, the rows the
    sync sent (added and updated, with their new hashes) inserted, and the table renamed ``target`` (the
    new baseline's snapshot name; a leftover of that name is dropped first). Only the changes are
    written, never a copy of the whole snapshot. Run in the promotion's transaction, which also moves
    the baseline: applied once, atomically; a crash before the commit leaves the old baseline whole.
    """
    keys = exp.select(col(pk)).from_(rows.copy())
    where = exp.Where(this=exp.In(this=col(pk), query=keys.subquery()))
    delete = exp.Delete(this=baseline.copy(), where=where)
    stored = [*narrow, HASH_COL]
    insert = exp.Insert(this=exp.Schema(this=baseline.copy(), expressions=[ident(c) for c in stored]),
                        expression=sent_rows_select(rows, stored))
    rename = exp.Alter(this=baseline.copy(), kind="TABLE",
                       actions=[exp.AlterRename(this=exp.Table(this=target.this.copy()))])
    return [render(delete, dialect), render(insert, dialect), drop_table_sql(target, dialect),
            render(rename, dialect)]


def derive_snapshot_select(base: exp.Select, rows: exp.Table, pk: str, narrow: Sequence[str]) -> exp.Select:
    """The new snapshot of a delta sync: the baseline with this sync's changes applied.

    Derived from what the sync delivers, never read from the segment again: a row that changed after
    the rows table was taken keeps its baseline hash, and the next sync sends it.
    """
    untouched = exp.select(*[col(c, "b") for c in narrow], col(HASH_COL, "b")).from_(base.copy().subquery("b")).where(
        exp.Not(this=exp.Exists(this=exp.select(lit(1)).from_(exp.alias_(rows.copy(), "r")).where(
            exp.EQ(this=col(pk, "r"), expression=col(pk, "b"))))))
    return exp.union(untouched, sent_rows_select(rows, [*narrow, HASH_COL]), distinct=False)


def sent_rows_select(rows: exp.Table, columns: Sequence[str]) -> exp.Select:
    """``columns`` of the rows a sync sends with values (its added and updated rows, not its removed ones)."""
    return exp.select(*[col(c) for c in columns]).from_(rows.copy()).where(
        exp.NEQ(this=col(CHANGE_COL), expression=exp.Literal.string(REMOVED)))


def apply_values_sql(values: exp.Table, rows: exp.Table, pk: str, columns: Sequence[str], dialect: str) -> list[str]:
    """Bring a difference activation's last-delivered values up to date with a delta sync's rows."""
    keys = exp.select(col(pk)).from_(rows.copy())
    delete = exp.Delete(this=values.copy(), where=exp.Where(this=exp.In(this=col(pk), query=keys.subquery())))
    insert = exp.Insert(this=exp.Schema(this=values.copy(), expressions=[ident(c) for c in columns]),
                        expression=sent_rows_select(rows, columns))
    return [render(delete, dialect), render(insert, dialect)]


def create_changes_sql(
    current: exp.Table, baseline: exp.Table, target: exp.Table, pk: str, dialect: str,
) -> list[str]:
    """One full outer join on the key, reading only keys and row hashes: (kind, key) of each change.

    The change counts of a full sync that has a baseline (a ``full_only`` sync, a full refresh): they go
    into the metadata and the removal guard. Delta syncs get theirs from ``delta_rows_select``.
    """
    return create_table_sql(target, changes_select(current, baseline, pk), dialect)


def changed_rows_sql(
    source: exp.Table, changes: exp.Table, pk: str, mapping: Sequence[tuple[str, str]], kinds: Sequence[str],
    dialect: str, available: Sequence[str] | None = None,
) -> str:
    """The exported columns of ``source`` for the keys of ``kinds`` in the change set.

    A mapped column missing from ``source`` (the baseline of a mapping that gained a column since) was
    never delivered: it comes out NULL.
    """
    have = set(available) if available is not None else {src for src, _ in mapping}
    keys = exp.select(col(pk)).from_(changes.copy()).where(
        exp.In(this=col(CHANGE_COL), expressions=[exp.Literal.string(k) for k in kinds]))
    q = exp.select(*[(col(src) if src in have else exp.Null()).as_(dst, quoted=True) for src, dst in mapping])
    q = q.from_(source.copy()).where(exp.In(this=col(pk), query=keys.subquery()))
    return render(q, dialect)


def change_counts_sql(changes: exp.Table, dialect: str) -> str:
    q = (
        exp.select(col(CHANGE_COL), exp.Count(this=exp.Star()))
        .from_(changes.copy())
        .group_by(col(CHANGE_COL))
    )
    return render(q, dialect)


def export_sql(
    table: exp.Expression, mapping: Sequence[tuple[str, str]], dialect: str, kinds: Sequence[str] = (),
    where_false: bool = False,
) -> str:
    """SELECT the exported columns renamed as the mapping says, optionally only some kinds of change."""
    q = exp.select(*[col(src_col).as_(dst, quoted=True) for src_col, dst in mapping]).from_(relation(table))
    if kinds:
        q = q.where(exp.In(this=col(CHANGE_COL), expressions=[exp.Literal.string(k) for k in kinds]))
    if where_false:
        q = q.where(exp.EQ(this=lit(1), expression=lit(0)))
    return render(q, dialect)


def count_sql(table: exp.Table, dialect: str) -> str:
    return render(exp.select(exp.Count(this=exp.Star())).from_(table.copy()), dialect)


def drop_table_sql(table: exp.Table, dialect: str) -> str:
    return render(exp.Drop(tables=[table.copy()], kind="TABLE", exists=True), dialect)


# ---------------------------------------------------------------------------------------------------------
# State tables: small tables of names, keys, counts and timestamps, written one row at a time. The
# sync's own (baselines, journal, history, rejections ...) are declared in ``dinmo_dagster.state``.
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StateTable:
    """A table of state (not customer rows): its name and ``(column, type)`` pairs, ``text`` rendered as
    the dialect's unbounded text. The sync's tables are declared in ``dinmo_dagster.state``."""

    name: str
    columns: tuple[tuple[str, str], ...]


def create_state_table_sql(table: exp.Table, spec: StateTable, dialect: str) -> str:
    schema = exp.Schema(
        this=table.copy(),
        expressions=[exp.ColumnDef(this=ident(n), kind=text_type(dialect) if t == "text" else exp.DataType.build(t))
                     for n, t in spec.columns],
    )
    return render(exp.Create(this=schema, kind="TABLE", exists=True), dialect)


def add_columns_sql(table: exp.Table, spec: StateTable, existing: Sequence[str], dialect: str) -> list[str]:
    """ALTER TABLE statements adding the columns of ``spec`` that an older state table lacks."""
    have = {c.lower() for c in existing}
    return [
        render(exp.Alter(this=table.copy(), kind="TABLE", actions=[exp.ColumnDef(
            this=ident(n), kind=text_type(dialect) if t == "text" else exp.DataType.build(t))]), dialect)
        for n, t in spec.columns if n.lower() not in have
    ]


def _value(v: object) -> exp.Expression:
    if v is None:
        return exp.Null()
    if isinstance(v, Enum):
        return lit(v.value)
    if hasattr(v, "isoformat"):
        # DataType(this=...) instead of DataType.build("timestamp"): no type text parsed per value
        timestamp = exp.DataType(this=exp.DataType.Type.TIMESTAMP)
        return exp.cast(exp.Literal.string(v.isoformat(sep=" ")), timestamp)  # type: ignore[call-arg]
    return lit(v)


def insert_sql(table: exp.Table, spec: StateTable, row: dict[str, object], dialect: str) -> str:
    """INSERT one row of ``spec`` (the columns ``row`` names, as literals)."""
    return insert_rows_sql(table, spec, [row], dialect)


def insert_rows_sql(table: exp.Table, spec: StateTable, rows: Sequence[dict[str, object]], dialect: str) -> str:
    """INSERT several rows of ``spec`` in one statement; every row names the columns of the first."""
    names = [n for n, _ in spec.columns if n in rows[0]]
    ins = exp.Insert(
        this=exp.Schema(this=table.copy(), expressions=[ident(n) for n in names]),
        expression=exp.Values(expressions=[exp.Tuple(expressions=[_value(row[n]) for n in names]) for row in rows]),
    )
    return render(ins, dialect)


def _where(filters: dict[str, object], where: exp.Expression | None = None) -> exp.Expression:
    """``column = value`` for each filter (``column IN (...)`` for a list, tuple or set), and ``where``."""
    conditions: list[exp.Expression] = [
        exp.In(this=col(k), expressions=[_value(x) for x in v]) if isinstance(v, (list, tuple, set, frozenset))
        else exp.EQ(this=col(k), expression=_value(v))
        for k, v in filters.items()
    ]
    return exp.and_(*conditions, *([where] if where is not None else []))


def delete_sql(table: exp.Table, filters: dict[str, object], dialect: str, where: exp.Expression | None = None) -> str:
    """DELETE the rows matching ``filters`` (and the extra condition ``where``)."""
    return render(exp.Delete(this=table.copy(), where=exp.Where(this=_where(filters, where))), dialect)


def select_sql(
    table: exp.Table, columns: Sequence[str], filters: dict[str, object], dialect: str,
    order_by: str | None = None, desc: bool = False, where: exp.Expression | None = None,
) -> str:
    """SELECT ``columns`` of the rows matching ``filters`` (and the extra condition ``where``)."""
    q = exp.select(*[col(c) for c in columns]).from_(table.copy()).where(_where(filters, where))
    if order_by:
        q = q.order_by(exp.Ordered(this=col(order_by), desc=desc))
    return render(q, dialect)

"""Statistics computed in the warehouse; only counts come back to Python.

- Segment statistics in ``dinmo_stats``: size history, share of the model, categorical breakdowns,
  pairwise overlaps.
- Primary-key uniqueness of a model's or segment's view (``measure_key``), for the blocking
  ``primary_key_unique`` checks.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

from sqlglot import exp

from dinmo_dagster import delta
from dinmo_dagster.warehouses import Warehouse

SEGMENT_SIZES = delta.StateTable("segment_sizes", (
    ("segment", "text"), ("measured_at", "timestamp"), ("size", "bigint"), ("model_size", "bigint"),
    ("share_pct", "double"),
))
SEGMENT_BREAKDOWNS = delta.StateTable("segment_breakdowns", (
    ("segment", "text"), ("measured_at", "timestamp"), ("property", "text"), ("value", "text"),
    ("size", "bigint"), ("pct", "double"),
))
SEGMENT_OVERLAPS = delta.StateTable("segment_overlaps", (
    ("model", "text"), ("measured_at", "timestamp"), ("segment_a", "text"), ("segment_b", "text"),
    ("overlap", "bigint"),
))


@dataclass
class SegmentStats:
    size: int
    model_size: int
    share_pct: float
    breakdowns: dict[str, list[tuple[str | None, int, float]]]

    @property
    def breakdown_markdown(self) -> str:
        lines: list[str] = []
        for prop, rows in self.breakdowns.items():
            lines += [f"**{prop}**", "", "| value | size | % |", "|---|---:|---:|"]
            lines += [f"| {'(null)' if v is None else v} | {n} | {p:.1f} |" for v, n, p in rows]
            lines.append("")
        return "\n".join(lines)


def _ensure(wh: Warehouse, schema: str, spec: delta.StateTable) -> exp.Table:
    table = wh.qualify(schema, spec.name)
    wh.execute([delta.create_state_table_sql(table, spec, wh.dialect)])
    return table


def record_segment_stats(
    wh: Warehouse, stats_schema: str, segment: str, relation: exp.Table, model_relation: exp.Table,
    categorical: list[str], top: int = 20,
) -> SegmentStats:
    """Measure a segment and append the figures to the stats tables."""
    wh.ensure_schema(stats_schema)
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    size = int(wh.query(delta.count_sql(relation, wh.dialect))[0][0])
    model_size = int(wh.query(delta.count_sql(model_relation, wh.dialect))[0][0])
    share = round(100.0 * size / model_size, 4) if model_size else 0.0
    sizes = _ensure(wh, stats_schema, SEGMENT_SIZES)
    statements = [delta.insert_sql(sizes, SEGMENT_SIZES, {
        "segment": segment, "measured_at": now, "size": size, "model_size": model_size, "share_pct": share},
        wh.dialect)]
    breakdowns: dict[str, list[tuple[str | None, int, float]]] = {}
    if categorical:
        bd = _ensure(wh, stats_schema, SEGMENT_BREAKDOWNS)
        for prop in categorical:
            q = (exp.select(exp.cast(delta.col(prop), delta.text_type(wh.dialect)).as_("v"),
                            exp.Count(this=exp.Star()).as_("n"))
                 .from_(relation.copy()).group_by(exp.cast(delta.col(prop), delta.text_type(wh.dialect)))
                 .order_by(exp.Ordered(this=exp.column("n"), desc=True)).limit(top))
            rows = [(v, int(n), round(100.0 * int(n) / size, 4) if size else 0.0)
                    for v, n in wh.query(delta.render(q, wh.dialect))]
            breakdowns[prop] = rows
            statements += [delta.insert_sql(bd, SEGMENT_BREAKDOWNS, {
                "segment": segment, "measured_at": now, "property": prop, "value": v, "size": n, "pct": p},
                wh.dialect) for v, n, p in rows]
    wh.execute(statements)
    return SegmentStats(size, model_size, share, breakdowns)


def record_overlaps(wh: Warehouse, stats_schema: str, model: str, segments: dict[str, exp.Table], pk: str,
                    focus: str) -> list[tuple[str, str, int]]:
    """Intersections (by primary key) of ``focus`` (the segment just materialized) with each other segment
    of its model, counted in one query; pairs are named in alphabetical order."""
    others = [n for n in sorted(segments) if n != focus]
    counts: dict[str, int] = {}
    if others:
        branches = [
            exp.select(exp.Literal.string(other).as_("other"), exp.Count(this=exp.Star()))
            .from_(segments[focus].copy().as_("a"))
            .join(segments[other].copy().as_("b"), on=exp.EQ(this=delta.col(pk, "a"), expression=delta.col(pk, "b")))
            for other in others
        ]
        query = branches[0] if len(branches) == 1 else exp.union(*branches, distinct=False)
        counts = {other: int(n) for other, n in wh.query(delta.render(query, wh.dialect))}
    out = [(*sorted((focus, other)), counts[other]) for other in others]
    if out:
        table = _ensure(wh, stats_schema, SEGMENT_OVERLAPS)
        now = datetime.now(timezone.utc).replace(tzinfo=None)
        wh.execute([delta.insert_sql(table, SEGMENT_OVERLAPS, {
            "model": model, "measured_at": now, "segment_a": a, "segment_b": b, "overlap": n}, wh.dialect)
            for a, b, n in out])
    return out


@dataclass(frozen=True)
class KeyStats:
    """Primary-key uniqueness of a view: count(distinct key) / count(key), NULL keys counted apart."""

    key: str  # the key column as the warehouse spells it
    rows: int
    keyed_rows: int  # rows whose key is not NULL
    distinct_keys: int
    sample_duplicates: list[str]  # up to 10 duplicated keys, in order

    @property
    def null_keys(self) -> int:
        return self.rows - self.keyed_rows

    @property
    def duplicate_rows(self) -> int:
        return self.keyed_rows - self.distinct_keys

    @property
    def uniqueness_pct(self) -> float:
        return 100.0 if self.keyed_rows == 0 else 100.0 * self.distinct_keys / self.keyed_rows

    @property
    def unique(self) -> bool:
        """Every row has a key, and no key appears twice."""
        return self.duplicate_rows == 0 and self.null_keys == 0

    def blocks(self, max_duplicate_pct: float) -> bool:
        """More duplicated rows than ``max_duplicate_pct`` allows: syncs must not run."""
        return 100.0 - self.uniqueness_pct > max_duplicate_pct

    def describe(self, max_duplicate_pct: float, what: str) -> str:
        """One line for a user: unique, or what is wrong and whether the sync goes on."""
        if self.unique:
            return f"primary key '{self.key}' of {what} is unique"
        parts = []
        if self.duplicate_rows:
            parts.append(f"{self.duplicate_rows} duplicate row(s) on primary key '{self.key}' of {what} "
                         f"({100.0 - self.uniqueness_pct:.2f}% of keyed rows, uniqueness {self.uniqueness_pct:.2f}%)")
        if self.null_keys:
            parts.append(f"{self.null_keys} row(s) with a NULL '{self.key}' are never synced")
        if self.blocks(max_duplicate_pct):
            parts.append(f"above max_duplicate_pct {max_duplicate_pct:g}%: syncs are blocked; sample keys: "
                         f"{', '.join(self.sample_duplicates)}")
        elif self.duplicate_rows:
            parts.append("the sync keeps one row per key")
        return "; ".join(parts)


def measure_key(wh: Warehouse, relation: exp.Table, primary_key: str) -> KeyStats:
    """Count rows, keyed rows and distinct keys of ``relation`` in one query, and sample duplicated keys."""
    key = delta.resolve_column(primary_key, wh.relation_columns(relation))
    total, keyed, distinct = (int(v) for v in wh.query(delta.key_stats_sql(relation, key, wh.dialect))[0])
    sample: list[str] = []
    if keyed > distinct:
        q = (exp.select(delta.col(key)).from_(relation.copy()).where(
            exp.Not(this=exp.Is(this=delta.col(key), expression=exp.Null())))
            .group_by(delta.col(key)).having(exp.GT(this=exp.Count(this=exp.Star()), expression=delta.lit(1)))
            .order_by(delta.col(key)).limit(10))
        sample = [str(r[0]) for r in wh.query(delta.render(q, wh.dialect))]
    return KeyStats(key, total, keyed, distinct, sample)

"""A cheap fingerprint of an activation's model source, computed in the warehouse.

One aggregate query over the model's ``table`` (or its ``sql``): the row count, plus

- ``max(watermark_column)`` when the activation's trigger names one;
- else, for a ``table:`` model with an ``order_by`` column, ``max(order_by)``;
- else an order-independent hash aggregate over whole rows, written for the warehouse's dialect
  (DuckDB ``sum(hash(t))``, PostgreSQL ``md5(t::text)``, Snowflake ``hash_agg(*)``, BigQuery
  ``farm_fingerprint(to_json_string(t))``, Databricks ``hash(*)``, Redshift ``fnv_hash`` over the columns).

Only the aggregates leave the warehouse. The fingerprint is a short JSON string (the sensor's cursor).
"""

from __future__ import annotations

import json
from typing import Any

import sqlglot
from sqlglot import exp

from dinmo_dagster.config import Project


def _relation(project: Project, model_name: str, dialect: str) -> exp.Expression:
    m = project.models[model_name]
    if m.table is not None:
        return exp.to_table(m.table, dialect=dialect).as_("t")
    query = sqlglot.parse_one(m.sql or "", read=dialect)
    return exp.Subquery(this=query, alias=exp.TableAlias(this=exp.to_identifier("t")))


def _hash_aggregate(wh: Any, relation: exp.Expression) -> str | None:
    """SQL of an order-independent hash of every row of ``t`` (None: row count only)."""
    dialect = wh.dialect
    if dialect == "duckdb":
        return "sum(hash(t))"
    if dialect == "postgres":
        return "sum(('x' || substr(md5(t::text), 1, 15))::bit(60)::bigint)"
    if dialect == "snowflake":
        return "hash_agg(*)"
    if dialect == "bigquery":
        return "bit_xor(farm_fingerprint(to_json_string(t)))"
    if dialect in ("databricks", "spark"):
        return "sum(cast(hash(*) as bigint))"
    if dialect == "redshift":
        cols = wh.relation_columns(relation)
        if not cols:
            return None
        expr = "fnv_hash(coalesce(cast({c} as varchar), '~'){seed})"
        acc = ""
        for c in cols:
            ident = exp.to_identifier(c, quoted=True).sql(dialect=dialect)
            acc = expr.format(c=f"t.{ident}", seed=f", {acc}" if acc else "")
        return f"sum({acc})"
    return None


def fingerprint_sql(wh: Any, project: Project, activation: str) -> str:
    """The one aggregate query behind ``fingerprint``."""
    dialect = wh.dialect
    seg, _ = project.model_of(activation)
    relation = _relation(project, seg.model, dialect)
    mark = _mark_column(project, activation)
    parts = ["count(*) AS row_count"]
    if mark:
        parts.append(f"max({exp.column(mark, table='t').sql(dialect=dialect)}) AS mark")
    else:
        agg = _hash_aggregate(wh, relation)
        if agg:
            parts.append(f"{agg} AS rows_hash")
    return f"SELECT {', '.join(parts)} FROM {relation.sql(dialect=dialect)}"


def fingerprint(wh: Any, project: Project, activation: str) -> str:
    """``{"rows": N, "mark": ...}`` or ``{"rows": N, "hash": ...}`` as compact JSON."""
    row = wh.query(fingerprint_sql(wh, project, activation))[0]
    out: dict[str, Any] = {"rows": int(row[0])}
    if len(row) > 1:  # the second column is the mark when the activation has one, else the hash
        key = "mark" if _mark_column(project, activation) else "hash"
        out[key] = None if row[1] is None else str(row[1])
    return json.dumps(out, separators=(",", ":"), sort_keys=True)


def _mark_column(project: Project, activation: str) -> str | None:
    """The column whose maximum marks a change: the trigger's watermark, else a table model's order_by."""
    _, m = project.model_of(activation)
    trigger = project.activations[activation].trigger
    return (trigger.watermark_column if trigger else None) or (m.order_by if m.table is not None else None)

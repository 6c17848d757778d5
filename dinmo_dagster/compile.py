"""Models' and segments' SQL: the SELECTs behind their views, and the views themselves.

- A model ``M`` is the view ``<segments schema>.model_M`` (a table when ``materialized: true``): ``SELECT *``
  of its ``table``, or its ``sql``, plus its calculated fields and custom attributes (compiled by
  ``filters.compile_model_select``).
- A segment ``S`` is the view ``<segments schema>.segment_S``: its ``sql`` with ``{{ model }}`` replaced
  by the model's view, or its no-code ``filter`` compiled by ``filters.compile_segment_filter``.

Everything is built as sqlglot expressions and rendered in the warehouse's dialect. Plain Python over a
warehouse adapter, without Dagster: the ``models/M`` and ``segments/S`` assets (``assets/models.py``), the
CLI's preview and the validation run it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import sqlglot
from sqlglot import exp

from dinmo_dagster import delta, filters, naming
from dinmo_dagster.config import Model, Project, referenced_segments
from dinmo_dagster.predictions.tables import declared_select, ensure_score_tables
from dinmo_dagster.warehouses import Warehouse

__all__ = [
    "CompileError",
    "column_roles",
    "create_statements",
    "describe_columns",
    "filters_model_infos",
    "model_relation",
    "model_select",
    "refresh_model",
    "refresh_segment",
    "refresh_views",
    "segment_relation",
    "segment_select",
    "table_parts",
]


class CompileError(Exception):
    """A model or segment cannot be built as written; the message starts with its key path."""


def table_parts(table: str, dialect: str) -> list[str]:
    """The names in a model's ``table`` as the warehouse reads them: ``raw."cust-data"`` -> ``raw``,
    ``cust-data``; a dot inside quotes stays in its name. Text that does not parse as a table name is
    split on its dots (the model's materialization then reports the bad name)."""
    try:
        parsed = exp.to_table(table, dialect=dialect)
        parts = [p.name for p in parsed.parts] if isinstance(parsed, exp.Table) else []
    except Exception:  # noqa: BLE001 - any parse failure: the name is reported when the model runs
        parts = []
    if parts and all(parts):
        return parts
    return [p for p in table.split(".") if p] or [table]


def model_relation(wh: Warehouse, project: Project, name: str) -> exp.Table:
    """The view (or table) of model ``name``: ``<segments schema>.model_<name>``."""
    schemas = project.sources[project.models[name].source].helper_schemas
    # the built-in identity models (identity.people) have a dot: model_identity__people
    return wh.qualify(schemas.segments, naming.warehouse_name("model_", name.replace(".", "__")))


def segment_relation(wh: Warehouse, project: Project, name: str) -> exp.Table:
    """The view of segment ``name``: ``<segments schema>.segment_<name>``."""
    schemas = project.sources[project.models[project.segments[name].model].source].helper_schemas
    return wh.qualify(schemas.segments, naming.warehouse_name("segment_", name))


def create_statements(relation: exp.Table, select: exp.Expression, materialized: bool, dialect: str) -> list[str]:
    """``CREATE OR REPLACE VIEW relation AS select``, or drop and create a table when ``materialized``."""
    if materialized:
        return [delta.drop_table_sql(relation, dialect),
                delta.render(exp.Create(this=relation.copy(), kind="TABLE", expression=select), dialect)]
    return [delta.render(exp.Create(this=relation.copy(), kind="VIEW", replace=True, expression=select), dialect)]


def _parse_select(sql: str, dialect: str, where: str) -> exp.Expression:
    try:
        parsed = sqlglot.parse_one(sql, read=dialect)
    except sqlglot.errors.ParseError as exc:
        raise CompileError(f"{where}: the SQL does not parse in the {dialect} dialect: "
                           f"{str(exc).splitlines()[0]}") from None
    if not isinstance(parsed, exp.Query):
        raise CompileError(f"{where}: must be a SELECT query")
    return parsed


def _base_select(project: Project, name: str, dialect: str) -> exp.Expression:
    """A model's own SELECT: ``SELECT *`` of its table, or its SQL."""
    m = project.models[name]
    if m.table is not None:
        return exp.select(exp.Star()).from_(exp.to_table(m.table, dialect=dialect))
    return _parse_select(m.sql or "", dialect, f"models.{name}.sql")


def model_select(wh: Warehouse, project: Project, name: str,
                 infos: dict[str, filters.ModelInfo] | None = None) -> exp.Expression:
    """The SELECT behind a model's view: its table or SQL, plus calculated fields and custom attributes.

    ``infos``: ``filters_model_infos`` of the source when the caller already has them.
    """
    m = project.models[name]
    dialect = wh.dialect
    base = _base_select(project, name, dialect)
    if not m.calculated_fields and not m.custom_attributes:
        return base
    info = dict(infos) if infos is not None else filters_model_infos(wh, project, exclude=name)
    this = _model_info(wh, project, name, wh.query_columns(delta.render(base, dialect)))
    if any(r.model == name for r in m.relationships):
        # A self-relationship (customers referred by customers) aggregates the model's own base rows:
        # its view cannot read itself while it is being created.
        own = base if isinstance(base, exp.Table) else exp.Subquery(this=base.copy())
        this = dataclasses.replace(this, relation=own)
    info[name] = this
    sql = filters.compile_model_select(
        base, this, [f.model_dump(exclude_none=True) for f in m.calculated_fields],
        [f.model_dump() for f in m.custom_attributes], info, dialect)
    return sqlglot.parse_one(sql, read=dialect)


def _model_info(wh: Warehouse, project: Project, name: str, columns: Sequence[str]) -> filters.ModelInfo:
    """The filter compiler's view of a model with these columns."""
    m = project.models[name]
    return filters.ModelInfo(
        name=name, relation=model_relation(wh, project, name), primary_key=m.primary_key, columns=tuple(columns),
        relationships={r.name: filters.Relationship(r.name, r.model, r.type, dict(r.on)) for r in m.relationships},
        time_column=m.time_column,
    )


def filters_model_infos(wh: Warehouse, project: Project, exclude: str | None = None) -> dict[str, filters.ModelInfo]:
    """What the filter compiler needs about every model of the project (its view's columns, or, before the
    view exists, the columns it will have)."""
    out: dict[str, filters.ModelInfo] = {}
    for name in project.models:
        if name == exclude:
            continue
        try:
            cols = wh.relation_columns(model_relation(wh, project, name))
        except Exception:  # noqa: BLE001 - the view does not exist yet (a project that never synced)
            cols = _declared_columns(wh, project, name)
        out[name] = _model_info(wh, project, name, cols)
    return out


def _declared_columns(wh: Warehouse, project: Project, name: str) -> list[str]:
    """A model's columns before its view exists: its table's or SQL's, plus its calculated fields."""
    m = project.models[name]
    try:
        # a prediction model before its first training: the columns its score table will have
        base = declared_select(wh, project, name) or _base_select(project, name, wh.dialect)
        cols = wh.query_columns(delta.render(base, wh.dialect))
    except Exception:  # noqa: BLE001 - another source, or a broken table: the compiler reports what is used
        return []
    return [*cols, *(f.name for f in m.calculated_fields), *(c.name for c in m.custom_attributes)]


def segment_select(wh: Warehouse, project: Project, name: str,
                   infos: dict[str, filters.ModelInfo] | None = None) -> exp.Expression:
    """The SELECT behind a segment's view: its SQL over ``{{ model }}``, or its compiled filter."""
    s = project.segments[name]
    dialect = wh.dialect
    if s.sql is not None:
        model_sql = model_relation(wh, project, s.model).sql(dialect=dialect)
        text = s.sql.replace("{{ model }}", model_sql).replace("{{model}}", model_sql)
        return _parse_select(text, dialect, f"segments.{name}.sql")
    infos = infos if infos is not None else filters_model_infos(wh, project)
    seg_rel = {n: segment_relation(wh, project, n) for n, other in project.segments.items()
               if other.model == s.model and n != name}
    try:
        sql = filters.compile_segment_filter(s.filter or {}, s.model, infos, seg_rel, dialect,
                                             path=f"segments.{name}.filter")
    except filters.FilterError as exc:
        raise CompileError(str(exc)) from None
    return sqlglot.parse_one(sql, read=dialect)


def refresh_model(wh: Warehouse, project: Project, name: str) -> exp.Table:
    """Create or replace the model's view (or table when ``materialized``); returns it."""
    m = project.models[name]
    wh.ensure_schema(project.sources[m.source].helper_schemas.segments)
    relation = model_relation(wh, project, name)
    ensure_score_tables(wh, project, name)  # predictions.<set>: its table exists before the first training
    wh.execute(create_statements(relation, model_select(wh, project, name), m.materialized, wh.dialect))
    return relation


def refresh_segment(wh: Warehouse, project: Project, name: str) -> tuple[exp.Table, str, list[str]]:
    """Create or replace the segment's view; fails when it does not return the model's primary key.

    Returns the view, its compiled SQL and its columns.
    """
    s = project.segments[name]
    m = project.models[s.model]
    wh.ensure_schema(project.sources[m.source].helper_schemas.segments)
    relation = segment_relation(wh, project, name)
    select = segment_select(wh, project, name)
    wh.execute(create_statements(relation, select, False, wh.dialect))
    cols = wh.relation_columns(relation)
    if delta.resolve_column(m.primary_key, cols) not in cols:
        raise CompileError(f"segments.{name}: the segment does not return the primary key '{m.primary_key}' "
                           f"of model '{s.model}'; columns: {', '.join(cols)}")
    return relation, select.sql(dialect=wh.dialect), cols


def refresh_views(wh: Warehouse, project: Project, activation: str) -> str:
    """Refresh the views an activation reads (its segment, the segments its filter names, the segment's
    model and related models), in the order they read each other. Returns the segment's compiled SQL."""
    s, m = project.model_of(activation)
    for rel in m.relationships:
        refresh_model(wh, project, rel.model)
    refresh_model(wh, project, s.model)
    if project.activations[activation].segment is None:  # the whole model: its view is what the sync reads
        return model_select(wh, project, s.model).sql(dialect=wh.dialect)
    for other in referenced_segments(s.filter or {}):
        refresh_segment(wh, project, other)
    return refresh_segment(wh, project, project.activations[activation].segment)[1]


def column_roles(model: Model) -> dict[str, str]:
    """The role of each configured column of a model: primary key, identifier, categorical, event time,
    calculated (with its type) or custom attribute."""
    roles = {model.primary_key: "primary key"}
    roles.update({c: "identifier" for c in model.identifiers})
    roles.update({c: "categorical" for c in model.categorical})
    if model.time_column:
        roles[model.time_column] = "event time"
    roles.update({f.name: f"calculated ({f.type})" for f in model.calculated_fields})
    roles.update({f.name: "custom attribute" for f in model.custom_attributes})
    return roles


def describe_columns(wh: Warehouse, relation: exp.Table, model: Model,
                     log: Callable[[str], Any] | None = None) -> list[tuple[str, str, str | None]]:
    """``(name, type, role)`` of each column of a model's or segment's view: names and types as the
    warehouse reports them (its ``information_schema``: ``INTEGER``, ``DECIMAL(10,2)``,
    ``character varying`` ...), roles from ``column_roles``.

    When the warehouse does not list the view's columns, the names come from a ``LIMIT 0`` query and
    the types stay empty (``log`` says why): describing a view never fails.
    """
    try:
        typed = wh.table_columns(relation.sql(dialect=wh.dialect))
    except Exception as exc:  # noqa: BLE001 - any catalog error: fall back to the names below
        typed = None
        if log is not None:
            log(f"column types of {relation.sql(dialect=wh.dialect)} unavailable: {str(exc).splitlines()[0]}")
    columns = typed or [(c, "") for c in wh.relation_columns(relation)]
    names = [c for c, _ in columns]
    # The warehouse's spelling of each configured name (Snowflake reports unquoted names in upper case).
    by_column = {delta.resolve_column(c, names): role for c, role in column_roles(model).items()}
    return [(c, t, by_column.get(c)) for c, t in columns]

"""Connection and entity validation (``dinmo validate --connect`` and the validation sensor).

Checks every source connection and every related entity: each model's table and columns (primary
key, identifiers, categorical, time column, ``order_by``, both sides of each relationship's ``on``),
calculated fields and segments (by compiling and running them with LIMIT 0), each activation's
mapping, trigger ``watermark_column`` and whether its columns' types can be written in its format
(read from a zero-row query of the exported columns, as the sync streams them), and each destination.
Returns problems as ``(culprit, message)`` so callers can pause what depends on them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import dagster as dg
from sqlglot import exp

from dinmo_dagster import delta, platforms, writers
from dinmo_dagster.compile import (
    filters_model_infos,
    model_relation,
    model_select,
    segment_relation,
    segment_select,
)
from dinmo_dagster.config import Project, platform_extra
from dinmo_dagster.predictions.tables import declared_select
from dinmo_dagster.resources import build_resources, destination_of, platform_of, warehouse_of


@dataclass(frozen=True)
class Problem:
    culprit: str  # "sources.warehouse", "models.customers", "segments.vip", "destinations.exports"
    message: str

    def __str__(self) -> str:
        return f"{self.culprit}: {self.message}"


def check_project(project: Project, resources: Any) -> list[Problem]:
    """Connect to everything the project uses and report what is broken."""
    problems: list[Problem] = []
    inliners: dict[str, _Inliner] = {}

    def inliner(source: str) -> _Inliner:
        if source not in inliners:
            inliners[source] = _Inliner(warehouse_of(resources, source), project)
        return inliners[source]

    broken_sources: set[str] = set()
    model_columns: dict[str, list[str]] = {}  # models whose view's columns were read
    for name in project.sources:
        try:
            warehouse_of(resources, name).check_connection()
        except Exception as exc:  # noqa: BLE001 - any failure is a validation problem
            broken_sources.add(name)
            problems.append(Problem(f"sources.{name}", _short(exc)))
    for name, m in project.models.items():
        if m.source in broken_sources:
            continue
        wh = warehouse_of(resources, m.source)
        try:
            if m.table and wh.table_columns(m.table) is None:
                problems.append(Problem(f"models.{name}", f"table {m.table} does not exist"))
                continue
            cols = wh.query_columns(delta.render(inliner(m.source).select("model", name), wh.dialect))
            needed = [m.primary_key, *m.identifiers, *m.categorical, *([m.time_column] if m.time_column else [])]
            missing = _missing(needed, cols)
            if missing:
                problems.append(Problem(f"models.{name}", f"column '{missing[0]}' does not exist; "
                                                          f"columns: {', '.join(cols)}"))
            elif m.order_by and _missing([m.order_by], cols):
                problems.append(Problem(f"models.{name}", f"order_by: column '{m.order_by}' does not exist; "
                                                          f"columns: {', '.join(cols)}"))
            else:
                model_columns[name] = cols
        except Exception as exc:  # noqa: BLE001 - any failure is a validation problem
            problems.append(Problem(f"models.{name}", _short(exc)))
    # Relationships once every model's columns are known: `on` maps this model's columns to the other's.
    for name, cols in model_columns.items():
        for i, rel in enumerate(project.models[name].relationships):
            other = model_columns.get(rel.model)
            mine = _missing(rel.on.keys(), cols)
            theirs = _missing(rel.on.values(), other) if other is not None else []
            if mine or theirs:
                where = f"relationships[{i}].on"
                problems.append(Problem(f"models.{name}", (
                    f"{where}: column '{mine[0]}' does not exist; columns: {', '.join(cols)}" if mine else
                    f"{where}: column '{theirs[0]}' does not exist in model '{rel.model}'; "
                    f"columns: {', '.join(other or [])}")))
                break  # one problem per model
    for name, s in project.segments.items():
        m = project.models[s.model]
        if m.source in broken_sources or any(p.culprit == f"models.{s.model}" for p in problems):
            continue
        wh = warehouse_of(resources, m.source)
        try:
            q = inliner(m.source).select("segment", name)
            cols = wh.relation_columns(q.subquery("s"))
            if _missing([m.primary_key], cols):
                problems.append(Problem(f"segments.{name}", f"does not return the primary key '{m.primary_key}'"))
                continue
            for aname, a in project.activations.items():
                if a.segment == name:
                    problems += _activation_checks(wh, project, aname, q, cols)
        except Exception as exc:  # noqa: BLE001 - any failure is a validation problem
            problems.append(Problem(f"segments.{name}", _short(exc)))
    for aname, a in project.activations.items():  # activations of a whole model read the model's view
        if a.segment is None and a.model in model_columns:
            m = project.models[str(a.model)]
            wh = warehouse_of(resources, m.source)
            problems += _activation_checks(wh, project, aname, inliner(m.source).select("model", str(a.model)),
                                           model_columns[str(a.model)])
    for name in project.destinations:
        try:
            destination = destination_of(resources, name)
            if destination is not None:
                destination.check()
        except Exception as exc:  # noqa: BLE001 - any failure is a validation problem
            problems.append(Problem(f"destinations.{name}", _short(exc)))
    problems += _platform_problems(project, resources, problems)
    return problems


def _activation_checks(wh: Any, project: Project, aname: str, q: exp.Expression, cols: list[str]) -> list[Problem]:
    """Activation ``aname``'s columns (mapping, match) in what it reads (``q``, with columns ``cols``), then
    ``_activation_problem``."""
    a = project.activations[aname]
    missing = _missing([*(a.mapping or []), *a.platform_match.values()], cols)
    if missing:
        return [Problem(f"activations.{aname}", f"{_where(a, missing[0])}: column '{missing[0]}' is not in "
                                                f"{a.reads}; available: {', '.join(cols)}")]
    try:
        problem = _activation_problem(wh, project, aname, q, cols)
    except Exception as exc:  # noqa: BLE001 - the activation's own query failed: it is the culprit
        problem = _short(exc)
    return [Problem(f"activations.{aname}", problem)] if problem else []


def _where(a: Any, column: str) -> str:
    """The key naming a segment column in an activation: ``mapping``, ``match`` or ``identifiers``."""
    if column in (a.mapping or {}):
        return "mapping"
    return "match" if a.match else "identifiers"


def _platform_problems(project: Project, resources: Any, found: list[Problem]) -> list[Problem]:
    """Each platform activation's credentials, target (object, audience...) and, where the platform exposes
    a schema, its match identifiers and mapped fields: ``platforms.validate_connection``."""
    problems: list[Problem] = []
    for name, a in project.activations.items():
        config = platform_of(resources, a.destination)
        if config is None or any(p.culprit == f"activations.{name}" for p in found):
            continue
        _, model = project.model_of(name)
        try:
            platform = config.build(a.destination, platform_extra(a, config))
            spec = platforms.ActivationSpec(destination=a.destination, key_column=model.primary_key,
                                            match=a.platform_match, mapping=dict(a.mapping or {}),
                                            null_values=a.null_values, default_country=a.default_country)
            problems += [Problem(f"activations.{name}", text) for text in platforms.validate_connection(platform, spec)]
        except Exception as exc:  # noqa: BLE001 - any failure is a validation problem
            problems.append(Problem(f"destinations.{a.destination}", _short(exc)))
    return problems


def _activation_problem(wh: Any, project: Project, name: str, segment: exp.Expression,
                        segment_columns: list[str]) -> str | None:
    """What in activation ``name`` the warehouse shows to be broken: its trigger's watermark column, or a
    column type its format cannot hold (read from a zero-row query of the exported columns)."""
    a = project.activations[name]
    seg, m = project.model_of(name)
    mark = a.trigger.watermark_column if a.trigger else None
    if mark:
        # The source-change sensor reads the watermark from the model's own table or SQL.
        base = ([c for c, _ in wh.table_columns(m.table) or []] if m.table
                else wh.query_columns(m.sql or ""))
        if _missing([mark], base):
            return (f"trigger.watermark_column: column '{mark}' does not exist in model '{seg.model}'; "
                    f"columns: {', '.join(base)}")
    if a.platform_service is not None:
        return None  # a platform takes JSON values: its own checks run with validate_connection
    pairs = [(delta.resolve_column(src, segment_columns), dst) for src, dst in
             (a.mapping.items() if a.mapping else ((c, c) for c in segment_columns))]
    sql = delta.export_sql(segment, pairs, wh.dialect, where_false=True)
    with wh.stream(sql) as reader:
        schema = reader.schema
    unwritable = writers.check_exportable(schema, a.format)
    if not unwritable:
        return None
    more = f" (and {len(unwritable) - 1} more column(s))" if len(unwritable) > 1 else ""
    return f"format {a.format}: {unwritable[0]}{more}"


class _Inliner:
    """Models' and segments' SELECTs with references to their views replaced by the SELECTs behind them.

    A project that never synced has no views yet in ``dinmo_segments``, and existing views may be
    stale; validating against the SELECTs behind them checks the entities as the next sync will
    build them, without creating anything in the warehouse. One per source: the views it can replace
    and the filter compiler's model columns are read once.
    """

    def __init__(self, wh: Any, project: Project) -> None:
        self.wh, self.project = wh, project
        self.infos = filters_model_infos(wh, project)
        self.views: dict[str, tuple[str, str]] = {}
        self.untrained: dict[str, exp.Select] = {}  # prediction models whose score table is not made yet
        for name, m in project.models.items():
            if getattr(wh, "source_name", None) in (None, "", m.source):
                self.views[model_relation(wh, project, name).sql(dialect=wh.dialect)] = ("model", name)
                empty = declared_select(wh, project, name)
                if empty is not None:
                    self.untrained[name] = empty
        for name, seg in project.segments.items():
            if getattr(wh, "source_name", None) in (None, "", project.models[seg.model].source):
                self.views[segment_relation(wh, project, name).sql(dialect=wh.dialect)] = ("segment", name)

    def select(self, kind: str, name: str, depth: int = 0) -> exp.Expression:
        if kind == "model" and name in self.untrained:
            return self.untrained[name].copy()
        build = model_select if kind == "model" else segment_select
        return self._inline(build(self.wh, self.project, name, self.infos), depth)

    def _inline(self, query: exp.Expression, depth: int) -> exp.Expression:
        if depth > 5:
            return query

        def swap(node: exp.Expression) -> exp.Expression:
            if isinstance(node, exp.Table):
                bare = node.copy()
                bare.set("alias", None)
                found = self.views.get(bare.sql(dialect=self.wh.dialect))
                if found is not None:
                    kind, name = found
                    alias = node.alias or f"{kind}_{name}"
                    return exp.Subquery(this=self.select(kind, name, depth + 1),
                                        alias=exp.TableAlias(this=exp.to_identifier(alias)))
            return node

        return query.copy().transform(swap)


def affected_activations(project: Project, problems: list[Problem]) -> dict[str, str]:
    """activation -> the culprit that breaks it."""
    out: dict[str, str] = {}
    for name, a in project.activations.items():
        seg, m = project.model_of(name)
        related = {f"models.{r.model}" for r in m.relationships}
        entities = {f"sources.{m.source}", f"models.{seg.model}", f"segments.{a.segment}",
                    f"destinations.{a.destination}", f"activations.{name}", *related}
        for p in problems:
            if p.culprit in entities:
                out[name] = str(p)
                break
    return out


def validate_connections(project: Project) -> list[str]:
    """``check_project`` with the project's resources, as ``dinmo validate --connect`` runs it."""
    with dg.build_resources(build_resources(project)) as resources:
        return [str(p) for p in check_project(project, resources)]


def _missing(names: Any, columns: list[str]) -> list[str]:
    """The configured ``names`` the warehouse's ``columns`` lack, matched as the sync matches them
    (``delta.resolve_column``: Snowflake reports unquoted names in upper case)."""
    return [n for n in names if delta.resolve_column(n, columns) not in columns]


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:300]

"""Model and segment assets: views in ``dinmo_segments``, primary-key checks, segment statistics.

``models/M`` creates or replaces the view ``dinmo_segments.model_M`` (a table when ``materialized``);
``segments/S`` creates or replaces ``dinmo_segments.segment_S``. Both carry a blocking primary-key
check: 100% unique passes, up to ``max_duplicate_pct`` duplicates warns (the sync keeps one row per
key), above it the check fails with ERROR and the downstream sync stops in the same run.
"""


import dataclasses
import hashlib
import re
import unicodedata
from collections.abc import Sequence
from typing import Any

import dagster as dg
import sqlglot
from sqlglot import exp

from dinmo_dagster import delta, naming, stats
from dinmo_dagster.config import Model, Project, Segment
from dinmo_dagster.resources import source_key


def model_key(name: str) -> dg.AssetKey:
    return dg.AssetKey(["models", name])


def segment_key(name: str) -> dg.AssetKey:
    return dg.AssetKey(["segments", name])


_DAGSTER_NAME_RE = re.compile(r"^[A-Za-z0-9_]+$")


def key_part(name: str) -> str:
    """``name`` as an asset key part Dagster accepts (``[A-Za-z0-9_]``, which op and input names need).

    A name made of those characters is kept as it is. Any other name has each run of other characters
    replaced by ``_`` (accents dropped first) and the first 8 hex digits of the SHA-1 of the real name
    appended, so the mapping is stable across processes and versions and different names get different
    keys (barring a 32-bit hash collision): ``cust-data`` -> ``cust_data_da4b09fd``,
    ``my customers`` -> ``my_customers_08780a37``.
    """
    if _DAGSTER_NAME_RE.match(name):
        return name
    ascii_text = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode("ascii")  # é -> e
    base = re.sub(r"[^A-Za-z0-9_]+", "_", ascii_text).strip("_") or "name"
    return f"{base}_{hashlib.sha1(name.encode('utf-8')).hexdigest()[:8]}"


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


def source_dialect(project: Project, source: str) -> str:
    """The sqlglot dialect of a source (the dialect of its warehouse resource)."""
    from dinmo_dagster.resources.warehouses import WAREHOUSE_TYPES

    return WAREHOUSE_TYPES[project.sources[source].type].dialect


def source_table_key(project: Project, source: str, table: str) -> dg.AssetKey:
    """The external asset of a model's source table: ``sources/<source>/<schema>/<table>``.

    Each part is the real name (quotes removed) passed through ``key_part``, so any table name the
    warehouse accepts gives a valid key; the SQL always uses the table as written.
    """
    parts = table_parts(table, source_dialect(project, source))
    return dg.AssetKey(["sources", source, *(key_part(p) for p in parts)])


def model_relation(wh: Any, project: Project, name: str) -> exp.Table:
    schemas = project.sources[project.models[name].source].helper_schemas
    return wh.qualify(schemas.segments, naming.warehouse_name("model_", name))


def segment_relation(wh: Any, project: Project, name: str) -> exp.Table:
    schemas = project.sources[project.models[project.segments[name].model].source].helper_schemas
    return wh.qualify(schemas.segments, naming.warehouse_name("segment_", name))


def _kinds(project: Project, source: str) -> set[str]:
    return {project.sources[source].type}


def view_version(*definition: str) -> dg.DataVersion:
    """The data version of a view: its definition. A view is live, so re-creating it unchanged (every
    sync refreshes its model and segment) leaves the views on it in sync: without this, a sync of one
    activation marks the other segments of its model "Unsynced" in the UI. A materialized model's
    table keeps Dagster's default, a new version on every refresh."""
    return dg.DataVersion(hashlib.sha256("\x00".join(definition).encode()).hexdigest()[:24])


def column_schema(wh: Any, relation: exp.Table, model: Model, log: Any = None) -> dg.TableSchema:
    """``dagster/column_schema`` of a model's or segment's view: each column's name and type as the
    warehouse reports them (its ``information_schema``: ``INTEGER``, ``DECIMAL(10,2)``,
    ``character varying`` ...) and its role in the knowledge store (primary key, identifier, ...).

    When the warehouse does not list the view's columns, the names come from a ``LIMIT 0`` query and
    the types stay empty (``log`` says why): metadata never fails a materialization.
    """
    try:
        typed = wh.table_columns(relation.sql(dialect=wh.dialect))
    except Exception as exc:  # noqa: BLE001 - any catalog error: fall back to the names below
        typed = None
        if log is not None:
            log(f"column types of {relation.sql(dialect=wh.dialect)} unavailable: {str(exc).splitlines()[0]}")
    columns = typed or [(c, "") for c in wh.relation_columns(relation)]
    names = [c for c, _ in columns]
    roles = {model.primary_key: "primary key"}
    roles.update({c: "identifier" for c in model.identifiers})
    roles.update({c: "categorical" for c in model.categorical})
    if model.time_column:
        roles[model.time_column] = "event time"
    roles.update({f.name: f"calculated ({f.type})" for f in model.calculated_fields})
    roles.update({f.name: "custom attribute" for f in model.custom_attributes})
    # The warehouse's spelling of each configured name (Snowflake reports unquoted names in upper case).
    by_column = {delta.resolve_column(c, names): role for c, role in roles.items()}
    return dg.TableSchema(columns=[dg.TableColumn(name=c, type=t, description=by_column.get(c)) for c, t in columns])


def _create_relation(relation: exp.Table, select: exp.Expression, materialized: bool, dialect: str) -> list[str]:
    if materialized:
        return [delta.drop_table_sql(relation, dialect),
                delta.render(exp.Create(this=relation.copy(), kind="TABLE", expression=select), dialect)]
    return [delta.render(exp.Create(this=relation.copy(), kind="VIEW", replace=True, expression=select), dialect)]


def _parse_select(sql: str, dialect: str, where: str) -> exp.Expression:
    try:
        parsed = sqlglot.parse_one(sql, read=dialect)
    except sqlglot.errors.ParseError as exc:
        raise dg.Failure(f"{where}: the SQL does not parse in the {dialect} dialect: {str(exc).splitlines()[0]}")
    if not isinstance(parsed, exp.Query):
        raise dg.Failure(f"{where}: must be a SELECT query")
    return parsed


def model_select(wh: Any, project: Project, name: str, infos: dict[str, Any] | None = None) -> exp.Expression:
    """The SELECT behind a model's view: its table or SQL, plus calculated fields and custom attributes.

    ``infos``: ``filters_model_infos`` of the source when the caller already has them.
    """
    m = project.models[name]
    dialect = wh.dialect
    base = _base_select(project, name, dialect)
    if not m.calculated_fields and not m.custom_attributes:
        return base
    from dinmo_dagster import filters

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


def _base_select(project: Project, name: str, dialect: str) -> exp.Expression:
    """A model's own SELECT: ``SELECT *`` of its table, or its SQL."""
    m = project.models[name]
    if m.table is not None:
        return exp.select(exp.Star()).from_(exp.to_table(m.table, dialect=dialect))
    return _parse_select(m.sql or "", dialect, f"models.{name}.sql")


def _model_info(wh: Any, project: Project, name: str, columns: Sequence[str]) -> Any:
    """The filter compiler's view of a model (a ``filters.ModelInfo``) with these columns."""
    from dinmo_dagster import filters

    m = project.models[name]
    return filters.ModelInfo(
        name=name, relation=model_relation(wh, project, name), primary_key=m.primary_key, columns=tuple(columns),
        relationships={r.name: filters.Relationship(r.name, r.model, r.type, dict(r.on)) for r in m.relationships},
        time_column=m.time_column,
    )


def filters_model_infos(wh: Any, project: Project, exclude: str | None = None) -> dict[str, Any]:
    """What the filter compiler needs about every model of the same source whose view exists."""
    out: dict[str, Any] = {}
    for name in project.models:
        if name == exclude:
            continue
        try:
            cols = wh.relation_columns(model_relation(wh, project, name))
        except Exception:  # noqa: BLE001 - the view does not exist yet (a project that never synced)
            cols = _declared_columns(wh, project, name)
        out[name] = _model_info(wh, project, name, cols)
    return out


def _declared_columns(wh: Any, project: Project, name: str) -> list[str]:
    """A model's columns before its view exists: its table's or SQL's, plus its calculated fields."""
    m = project.models[name]
    try:
        cols = wh.query_columns(delta.render(_base_select(project, name, wh.dialect), wh.dialect))
    except Exception:  # noqa: BLE001 - another source, or a broken table: the compiler reports what is used
        return []
    return [*cols, *(f.name for f in m.calculated_fields), *(c.name for c in m.custom_attributes)]


def segment_select(wh: Any, project: Project, name: str, infos: dict[str, Any] | None = None) -> exp.Expression:
    """The SELECT behind a segment's view: its SQL over ``{{ model }}``, or its compiled filter."""
    s: Segment = project.segments[name]
    dialect = wh.dialect
    if s.sql is not None:
        model_sql = model_relation(wh, project, s.model).sql(dialect=dialect)
        text = s.sql.replace("{{ model }}", model_sql).replace("{{model}}", model_sql)
        return _parse_select(text, dialect, f"segments.{name}.sql")
    from dinmo_dagster import filters

    infos = infos if infos is not None else filters_model_infos(wh, project)
    seg_rel = {n: segment_relation(wh, project, n) for n, other in project.segments.items()
               if other.model == s.model and n != name}
    try:
        sql = filters.compile_segment_filter(s.filter or {}, s.model, infos, seg_rel, dialect,
                                             path=f"segments.{name}.filter")
    except filters.FilterError as exc:
        raise dg.Failure(str(exc)) from None
    return sqlglot.parse_one(sql, read=dialect)


def refresh_model(wh: Any, project: Project, name: str) -> exp.Table:
    """Create or replace the model's view (or table when ``materialized``)."""
    m = project.models[name]
    wh.ensure_schema(project.sources[m.source].helper_schemas.segments)
    relation = model_relation(wh, project, name)
    wh.execute(_create_relation(relation, model_select(wh, project, name), m.materialized, wh.dialect))
    return relation


def refresh_segment(wh: Any, project: Project, name: str) -> tuple[exp.Table, str, list[str]]:
    """Create or replace the segment's view; fails when it does not return the model's primary key.

    Returns the view, its compiled SQL and its columns.
    """
    s = project.segments[name]
    m = project.models[s.model]
    wh.ensure_schema(project.sources[m.source].helper_schemas.segments)
    relation = segment_relation(wh, project, name)
    select = segment_select(wh, project, name)
    wh.execute(_create_relation(relation, select, False, wh.dialect))
    cols = wh.relation_columns(relation)
    if delta.resolve_column(m.primary_key, cols) not in cols:
        raise dg.Failure(f"segments.{name}: the segment does not return the primary key '{m.primary_key}' "
                         f"of model '{s.model}'; columns: {', '.join(cols)}")
    return relation, select.sql(dialect=wh.dialect), cols


def refresh_upstream(project: Project, activation: str, resources: Any) -> str:
    """Refresh the views an activation reads (its segment, the segment's model and related models).

    Returns the segment's compiled SQL.
    """
    s = project.segments[project.activations[activation].segment]
    m = project.models[s.model]
    wh = getattr(resources, source_key(m.source))
    for rel in m.relationships:
        refresh_model(wh, project, rel.model)
    refresh_model(wh, project, s.model)
    for other in _referenced_segments(s.filter or {}):
        refresh_segment(wh, project, other)
    return refresh_segment(wh, project, project.activations[activation].segment)[1]


def key_check(wh: Any, relation: exp.Table, pk: str, max_pct: float, what: str) -> dg.AssetCheckResult:
    """Primary-key uniqueness: count(distinct key) / count(key); NULL keys are counted apart."""
    cols = wh.relation_columns(relation)
    pk = delta.resolve_column(pk, cols)
    total, with_key, distinct = (int(v) for v in wh.query(delta.key_stats_sql(relation, pk, wh.dialect))[0])
    null_keys = total - with_key
    dup_rows = with_key - distinct
    uniqueness = 100.0 if with_key == 0 else 100.0 * distinct / with_key
    dup_pct = 100.0 - uniqueness
    sample: list[str] = []
    if dup_rows:
        q = (exp.select(delta.col(pk)).from_(relation.copy()).where(
            exp.Not(this=exp.Is(this=delta.col(pk), expression=exp.Null())))
            .group_by(delta.col(pk)).having(exp.GT(this=exp.Count(this=exp.Star()), expression=delta.lit(1)))
            .order_by(delta.col(pk)).limit(10))
        sample = [str(r[0]) for r in wh.query(delta.render(q, wh.dialect))]
    metadata: dict[str, Any] = {
        "uniqueness_pct": dg.MetadataValue.float(round(uniqueness, 4)),
        "rows": dg.MetadataValue.int(total),
        "duplicate_rows": dg.MetadataValue.int(dup_rows),
        "null_keys": dg.MetadataValue.int(null_keys),
        "max_duplicate_pct": dg.MetadataValue.float(max_pct),
        "sample_duplicate_keys": dg.MetadataValue.text(", ".join(sample) or "(none)"),
    }
    if dup_rows == 0 and null_keys == 0:
        return dg.AssetCheckResult(passed=True, metadata=metadata,
                                   description=f"primary key '{pk}' of {what} is unique")
    parts = []
    if dup_rows:
        parts.append(f"{dup_rows} duplicate row(s) on primary key '{pk}' of {what} "
                     f"({dup_pct:.2f}% of keyed rows, uniqueness {uniqueness:.2f}%)")
    if null_keys:
        parts.append(f"{null_keys} row(s) with a NULL '{pk}' are never synced")
    blocking = dup_pct > max_pct
    if blocking:
        parts.append(f"above max_duplicate_pct {max_pct:g}%: syncs are blocked; sample keys: {', '.join(sample)}")
    elif dup_rows:
        parts.append("the sync keeps one row per key")
    return dg.AssetCheckResult(
        passed=False, metadata=metadata, description="; ".join(parts),
        severity=dg.AssetCheckSeverity.ERROR if blocking else dg.AssetCheckSeverity.WARN,
    )


def _model_edges(project: Project, name: str) -> list[str]:
    """The models whose views model ``name``'s view reads: those of its aggregate calculated fields
    (itself excluded: a self-relationship reads the model's own base rows)."""
    m = project.models[name]
    used = {f.relation for f in m.calculated_fields if f.type == "aggregate"}
    return list(dict.fromkeys(r.model for r in m.relationships
                              if r.name in used and r.model != name and r.model in project.models))


def _segment_edges(project: Project, name: str) -> list[str]:
    """The segments whose views segment ``name``'s filter reads (``{segment: S, op: in | not_in}``)."""
    return list(dict.fromkeys(n for n in _referenced_segments(project.segments[name].filter or {})
                              if n in project.segments))


def _cycle_from(start: str, edges: Any) -> list[str] | None:
    """The shortest path ``start -> ... -> start`` through ``edges(node)``, or None."""
    paths: list[list[str]] = [[start]]
    seen: set[str] = set()
    while paths:
        path = paths.pop(0)
        for nxt in edges(path[-1]):
            if nxt == start:
                return [*path, start]
            if nxt not in seen:
                seen.add(nxt)
                paths.append([*path, nxt])
    return None


def dependency_cycles(project: Project) -> dict[str, str]:
    """Models and segments whose views would read themselves: ``{"models.M" | "segments.S": problem}``.

    Model views read the views of the models their aggregate calculated fields aggregate over, and
    segment views read the segments their filter names. A cycle there cannot be built in any
    warehouse, and a cycle of asset dependencies would stop Dagster from loading the whole project:
    the definitions leave those dependencies out, and the entities in a cycle fail when they run,
    with this message. ``dinmo validate`` reports the same problems.
    """
    out: dict[str, str] = {}
    for name in project.models:
        cycle = _cycle_from(name, lambda n: _model_edges(project, n))
        if cycle:
            members = ", ".join(sorted(set(cycle)))
            out[f"models.{name}"] = (
                f"models.{name}.calculated_fields: the aggregate calculated fields of models {members} read each "
                f"other's views in a cycle ({' -> '.join(cycle)}); allowed: aggregates over models that do not "
                "aggregate back")
    for name in project.segments:
        cycle = _cycle_from(name, lambda n: _segment_edges(project, n))
        if cycle:
            what = f"segment '{name}' refers to itself" if len(cycle) == 2 else \
                f"segments {', '.join(sorted(set(cycle)))} refer to each other in a cycle"
            out[f"segments.{name}"] = (f"segments.{name}.filter: {what} ({' -> '.join(cycle)}); allowed: "
                                       "conditions on other segments that do not refer back to this one")
    return out


def _acyclic(project: Project, kind: str, name: str, targets: list[str]) -> list[str]:
    """``targets`` without those that lead back to ``name`` (a dependency cycle, see ``dependency_cycles``)."""
    edges = _model_edges if kind == "models" else _segment_edges
    return [t for t in targets if t != name and name not in _reachable(t, lambda n: edges(project, n))]


def _reachable(start: str, edges: Any) -> set[str]:
    seen: set[str] = set()
    todo = [start]
    while todo:
        for nxt in edges(todo.pop()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def _model_assets(project: Project, name: str, cycles: dict[str, str]) -> list[Any]:
    m = project.models[name]
    rkey = source_key(m.source)
    deps: list[dg.AssetKey] = []
    if m.table:
        deps.append(source_table_key(project, m.source, m.table))
    deps += [model_key(r) for r in _acyclic(project, "models", name, _model_edges(project, name))]
    cycle = cycles.get(f"models.{name}")
    desc = m.description or f"Model '{name}' ({m.kind}{', ' + m.class_ if m.class_ else ''}) over " + (
        m.table or "SQL")

    @dg.asset(
        key=model_key(name), group_name=name, description=desc, deps=deps,
        required_resource_keys={rkey}, kinds=_kinds(project, m.source) | {"view" if not m.materialized else "table"},
        tags={"dinmo/model_kind": m.kind},
    )
    def _model(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        if cycle:
            raise dg.Failure(cycle)
        wh = getattr(context.resources, rkey)
        relation = refresh_model(wh, project, name)
        rows = int(wh.query(delta.count_sql(relation, wh.dialect))[0][0])
        schema = column_schema(wh, relation, m, context.log.warning)
        return dg.MaterializeResult(metadata={
            "dagster/row_count": dg.MetadataValue.int(rows),
            "dagster/column_schema": schema,
            "dagster/relation_identifier": relation.sql(dialect=wh.dialect),
            "materialized": m.materialized,
        }, data_version=None if m.materialized else view_version(m.model_dump_json(), repr(schema.columns)))

    return [_model, _key_check(project, model_key(name), m, model_relation, name, f"model '{name}'")]


def _segment_assets(project: Project, name: str, cycles: dict[str, str]) -> list[Any]:
    s = project.segments[name]
    m = project.models[s.model]
    rkey = source_key(m.source)
    deps = [model_key(s.model), *(model_key(r.model) for r in m.relationships if r.model in project.models)]
    deps += [segment_key(n) for n in _acyclic(project, "segments", name, _segment_edges(project, name))]
    cycle = cycles.get(f"segments.{name}")
    desc = s.description or f"Segment '{name}' of model '{s.model}'"

    @dg.asset(
        key=segment_key(name), group_name=s.model, description=desc, deps=list(dict.fromkeys(deps)),
        required_resource_keys={rkey}, kinds=_kinds(project, m.source) | {"segment"},
    )
    def _segment(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        if cycle:
            raise dg.Failure(cycle)
        wh = getattr(context.resources, rkey)
        schemas = project.sources[m.source].helper_schemas
        relation, _sql, cols = refresh_segment(wh, project, name)
        categorical = [delta.resolve_column(c, cols) for c in m.categorical]
        st = stats.record_segment_stats(wh, schemas.stats, name, relation, model_relation(wh, project, s.model),
                                        [c for c in categorical if c in cols])
        if st.size == 0:
            context.log.warning(f"segment '{name}' is empty")
        # Overlaps with the other segments of the same model whose views exist already.
        others = {name: relation}
        for other, seg in project.segments.items():
            if other != name and seg.model == s.model:
                rel = segment_relation(wh, project, other)
                try:
                    wh.relation_columns(rel)
                except Exception:  # noqa: BLE001, S112 - not materialized yet: no overlap to measure
                    continue
                others[other] = rel
        overlaps = stats.record_overlaps(wh, schemas.stats, s.model, others,
                                         delta.resolve_column(m.primary_key, cols), focus=name)
        overlap_md = "\n".join(["| segment | overlap | % of this segment |", "|---|---:|---:|"] + [
            f"| {b if a == name else a} | {n} | {100.0 * n / st.size if st.size else 0:.1f} |"
            for a, b, n in overlaps])
        return dg.MaterializeResult(data_version=view_version(_sql), metadata={
            **({"overlaps": dg.MetadataValue.md(overlap_md)} if overlaps else {}),
            "dagster/row_count": dg.MetadataValue.int(st.size),
            "share_of_model_pct": dg.MetadataValue.float(st.share_pct),
            "model_rows": dg.MetadataValue.int(st.model_size),
            "dagster/column_schema": column_schema(wh, relation, m, context.log.warning),
            "dagster/relation_identifier": relation.sql(dialect=wh.dialect),
            **({"breakdowns": dg.MetadataValue.md(st.breakdown_markdown)} if st.breakdown_markdown else {}),
        })

    return [_segment, _key_check(project, segment_key(name), m, segment_relation, name, f"segment '{name}'")]


def _key_check(project: Project, key: dg.AssetKey, m: Model, relation_of: Any, name: str, what: str) -> Any:
    """The blocking primary-key check of a model or segment asset."""
    rkey = source_key(m.source)

    @dg.asset_check(asset=key, name="primary_key_unique", blocking=True, required_resource_keys={rkey},
                    description=f"count(distinct {m.primary_key}) / count({m.primary_key}) = 100%")
    def _check(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
        wh = getattr(context.resources, rkey)
        return key_check(wh, relation_of(wh, project, name), m.primary_key, m.max_duplicate_pct, what)

    return _check


def _referenced_segments(node: Any) -> list[str]:
    found: list[str] = []
    if isinstance(node, dict):
        if isinstance(node.get("segment"), str):
            found.append(node["segment"])
        for v in node.values():
            found += _referenced_segments(v)
    elif isinstance(node, list):
        for v in node:
            found += _referenced_segments(v)
    return found


def source_table_specs(project: Project) -> list[dg.AssetSpec]:
    """Source tables as external assets, so lineage starts at the warehouse."""
    seen: dict[dg.AssetKey, dg.AssetSpec] = {}
    for m in project.models.values():
        if m.table:
            key = source_table_key(project, m.source, m.table)
            seen[key] = dg.AssetSpec(key=key, group_name="sources", kinds=_kinds(project, m.source),
                                     description=f"Table {m.table} in source '{m.source}'",
                                     metadata={"dagster/table_name": m.table})
    return list(seen.values())


def defs(project: Project) -> dg.Definitions:
    assets: list[Any] = []
    checks: list[Any] = []
    cycles = dependency_cycles(project)
    for name in project.models:
        a, c = _model_assets(project, name, cycles)
        assets.append(a)
        checks.append(c)
    for name in project.segments:
        a, c = _segment_assets(project, name, cycles)
        assets.append(a)
        checks.append(c)
    jobs = [dg.define_asset_job(refresh_job_name(name), selection=dg.AssetSelection.assets(model_key(name)),
                                description=f"Refresh the materialized model '{name}'")
            for name, m in project.models.items() if m.materialized]
    return dg.Definitions(assets=[*source_table_specs(project), *assets], asset_checks=checks, jobs=jobs)


def refresh_job_name(model: str) -> str:
    return f"refresh_model_{model}"

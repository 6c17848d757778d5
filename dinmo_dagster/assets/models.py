"""Model and segment assets: views in ``dinmo_segments``, primary-key checks, segment statistics.

``models/M`` creates or replaces the view ``dinmo_segments.model_M`` (a table when ``materialized``);
``segments/S`` creates or replaces ``dinmo_segments.segment_S``. Both carry a blocking primary-key
check: 100% unique passes, up to ``max_duplicate_pct`` duplicates warns (the sync keeps one row per
key), above it the check fails with ERROR and the downstream sync stops in the same run.

The SQL is compiled and run by ``dinmo_dagster.compile``; keys, groups and descriptions come from the
translator. This module wraps them as Dagster assets, checks and metadata.
"""

import hashlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import dagster as dg
from sqlglot import exp

from dinmo_dagster import delta, names, stats
from dinmo_dagster.compile import (
    CompileError,
    describe_columns,
    model_relation,
    refresh_model,
    refresh_segment,
    refresh_views,
    segment_relation,
)
from dinmo_dagster.config import Model, Project, dependency_cycles
from dinmo_dagster.resources import source_key, warehouse_of
from dinmo_dagster.translator import DinmoEntity, DinmoTranslator
from dinmo_dagster.warehouses import Warehouse

__all__ = ["column_schema", "defs", "key_check", "refresh_upstream", "source_table_specs", "view_version"]


def view_version(*definition: str) -> dg.DataVersion:
    """The data version of a view: its definition. A view is live, so re-creating it unchanged (every
    sync refreshes its model and segment) leaves the views on it in sync: without this, a sync of one
    activation marks the other segments of its model "Unsynced" in the UI. A materialized model's
    table keeps Dagster's default, a new version on every refresh."""
    return dg.DataVersion(hashlib.sha256("\x00".join(definition).encode()).hexdigest()[:24])


def column_schema(wh: Warehouse, relation: exp.Table, model: Model,
                  log: Callable[[str], Any] | None = None) -> dg.TableSchema:
    """``dagster/column_schema`` of a model's or segment's view: each column's name and type as the
    warehouse reports them and its role (``compile.describe_columns``). Never fails a materialization."""
    return dg.TableSchema(columns=[dg.TableColumn(name=c, type=t, description=role)
                                   for c, t, role in describe_columns(wh, relation, model, log)])


def key_check(wh: Warehouse, relation: exp.Table, pk: str, max_pct: float, what: str) -> dg.AssetCheckResult:
    """Primary-key uniqueness: count(distinct key) / count(key); NULL keys are counted apart."""
    ks = stats.measure_key(wh, relation, pk)
    metadata: dict[str, Any] = {
        "uniqueness_pct": dg.MetadataValue.float(round(ks.uniqueness_pct, 4)),
        "rows": dg.MetadataValue.int(ks.rows),
        "duplicate_rows": dg.MetadataValue.int(ks.duplicate_rows),
        "null_keys": dg.MetadataValue.int(ks.null_keys),
        "max_duplicate_pct": dg.MetadataValue.float(max_pct),
        "sample_duplicate_keys": dg.MetadataValue.text(", ".join(ks.sample_duplicates) or "(none)"),
    }
    severity = dg.AssetCheckSeverity.ERROR if ks.blocks(max_pct) else dg.AssetCheckSeverity.WARN
    return dg.AssetCheckResult(passed=ks.unique, metadata=metadata, description=ks.describe(max_pct, what),
                               severity=severity)


def refresh_upstream(project: Project, activation: str, resources: Any) -> str:
    """``compile.refresh_views`` with the warehouse of the activation's source taken from Dagster
    ``resources``: refresh the views the activation reads; returns the segment's compiled SQL."""
    _, m = project.model_of(activation)
    return refresh_views(warehouse_of(resources, m.source), project, activation)


@contextmanager
def _as_failure() -> Iterator[None]:
    """A model or segment that cannot be built fails its step with the compiler's message alone."""
    try:
        yield
    except CompileError as exc:
        raise dg.Failure(str(exc)) from None


def _model_assets(project: Project, name: str, cycle: str | None, translator: DinmoTranslator) -> list[Any]:
    m = project.models[name]
    rkey = source_key(m.source)
    spec = translator.get_asset_spec(DinmoEntity.model(project, name))

    @dg.multi_asset(specs=[spec], name=names.op_name(names.model_key(name)), required_resource_keys={rkey})
    def _model(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        if cycle:
            raise dg.Failure(cycle)
        wh = warehouse_of(context.resources, m.source)
        with wh.session():  # one connection for the step's statements (DuckDB: one open of the file)
            with _as_failure():
                relation = refresh_model(wh, project, name)
            rows = int(wh.query(delta.count_sql(relation, wh.dialect))[0][0])
            schema = column_schema(wh, relation, m, context.log.warning)
        return dg.MaterializeResult(metadata={
            "dagster/row_count": dg.MetadataValue.int(rows),
            "dagster/column_schema": schema,
            "dagster/relation_identifier": relation.sql(dialect=wh.dialect),
            "materialized": m.materialized,
        }, data_version=None if m.materialized else view_version(m.model_dump_json(), repr(schema.columns)))

    return [_model, _key_check(project, spec.key, m, model_relation, name, f"model '{name}'")]


def _segment_assets(project: Project, name: str, cycle: str | None, translator: DinmoTranslator) -> list[Any]:
    s = project.segments[name]
    m = project.models[s.model]
    rkey = source_key(m.source)
    spec = translator.get_asset_spec(DinmoEntity.segment(project, name))

    @dg.multi_asset(specs=[spec], name=names.op_name(names.segment_key(name)), required_resource_keys={rkey})
    def _segment(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        if cycle:
            raise dg.Failure(cycle)
        wh = warehouse_of(context.resources, m.source)
        with wh.session():  # one connection for the step's statements
            schemas = project.sources[m.source].helper_schemas
            with _as_failure():
                relation, sql, cols = refresh_segment(wh, project, name)
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
            return dg.MaterializeResult(data_version=view_version(sql), metadata={
                **({"overlaps": dg.MetadataValue.md(overlap_md)} if overlaps else {}),
                "dagster/row_count": dg.MetadataValue.int(st.size),
                "share_of_model_pct": dg.MetadataValue.float(st.share_pct),
                "model_rows": dg.MetadataValue.int(st.model_size),
                "dagster/column_schema": column_schema(wh, relation, m, context.log.warning),
                "dagster/relation_identifier": relation.sql(dialect=wh.dialect),
                **({"breakdowns": dg.MetadataValue.md(st.breakdown_markdown)} if st.breakdown_markdown else {}),
            })

    return [_segment, _key_check(project, spec.key, m, segment_relation, name, f"segment '{name}'")]


def _key_check(project: Project, key: dg.AssetKey, m: Model, relation_of: Callable[[Warehouse, Project, str], exp.Table],
               name: str, what: str) -> dg.AssetChecksDefinition:
    """The blocking primary-key check of a model or segment asset."""
    rkey = source_key(m.source)

    @dg.asset_check(asset=key, name=names.KEY_CHECK, blocking=True, required_resource_keys={rkey},
                    description=f"count(distinct {m.primary_key}) / count({m.primary_key}) = 100%")
    def _check(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
        wh = warehouse_of(context.resources, m.source)
        with wh.session():
            return key_check(wh, relation_of(wh, project, name), m.primary_key, m.max_duplicate_pct, what)

    return _check


def source_table_specs(project: Project, translator: DinmoTranslator) -> list[dg.AssetSpec]:
    """The models' source tables as external assets, so lineage starts at the warehouse (one per key)."""
    seen: dict[dg.AssetKey, dg.AssetSpec] = {}
    for m in project.models.values():
        if m.table:
            spec = translator.get_asset_spec(DinmoEntity.source_table(project, m.source, m.table))
            seen[spec.key] = spec
    return list(seen.values())


def defs(project: Project, translator: DinmoTranslator | None = None) -> dg.Definitions:
    """Source tables, model and segment assets with their checks, and the refresh job of each
    materialized model."""
    translator = translator or DinmoTranslator()
    cycles = dependency_cycles(project)
    assets: list[Any] = []
    checks: list[Any] = []
    for name in project.models:
        a, c = _model_assets(project, name, cycles.get(f"models.{name}"), translator)
        assets.append(a)
        checks.append(c)
    for name in project.segments:
        a, c = _segment_assets(project, name, cycles.get(f"segments.{name}"), translator)
        assets.append(a)
        checks.append(c)
    jobs = [dg.define_asset_job(names.refresh_job_name(name), description=f"Refresh the materialized model '{name}'",
                                selection=dg.AssetSelection.assets(
                                    translator.get_asset_key(DinmoEntity.model(project, name))),
                                executor_def=dg.in_process_executor)  # see the sync job
            for name, m in project.models.items() if m.materialized]
    return dg.Definitions(assets=[*source_table_specs(project, translator), *assets], asset_checks=checks, jobs=jobs)

"""Identity assets: ``identity/<space>/graph`` and ``identity/<space>/profiles`` with their checks.

``identity/<space>/graph`` reads the views of the space's source models (``models/M``, upstream in the
lineage) and builds the graph, the stable profile ids and the merges (``identity.engine.build_graph``);
``identity/<space>/profiles`` writes the golden records. The graph's metadata says whether the run was
``incremental`` (only the profiles of records added, removed or whose rule keys changed) or ``full`` (and
why), and how many records changed. The built-in models ``identity.<space>`` and
``identity.<space>_graph`` are views on those tables, downstream of these assets, so a sync of an activation
on ``identity.<space>`` refreshes the identity tables first (its job selects everything upstream).

Two blocking checks on the graph stop the syncs downstream when the graph is wrong: ``profile_size``
(no profile holds more than ``max_profile_size`` records: a larger one means a shared identifier chained
strangers together; add a limit) and ``one_profile_per_record``.
"""

# No `from __future__ import annotations`: Dagster reads the `context` annotations at definition time.

from typing import Any

import dagster as dg

from dinmo_dagster import names
from dinmo_dagster.config import Project
from dinmo_dagster.identity.engine import (
    IdentityError,
    build_graph,
    build_profiles,
    membership_check,
    profile_sizes,
    tables,
)
from dinmo_dagster.identity.spec import space_source
from dinmo_dagster.resources import source_key, warehouse_of
from dinmo_dagster.translator import DinmoEntity, DinmoTranslator

__all__ = ["defs"]

SIZE_CHECK = "profile_size"
MEMBERSHIP_CHECK = "one_profile_per_record"


def _space_assets(project: Project, space: str, translator: DinmoTranslator) -> tuple[list[Any], list[Any]]:
    source = space_source(project, project.identity[space]) or ""
    rkey = source_key(source)
    limit = project.identity[space].max_profile_size
    graph_spec = translator.get_asset_spec(DinmoEntity.identity(project, space, "graph"))
    profiles_spec = translator.get_asset_spec(DinmoEntity.identity(project, space, "profiles"))

    @dg.multi_asset(
        specs=[graph_spec],
        name=names.op_name(names.identity_key(space, "graph")),
        required_resource_keys={rkey},
    )
    def _graph(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        wh = warehouse_of(context.resources, source)
        with wh.session():
            try:
                result = build_graph(wh, project, space)
            except IdentityError as exc:
                raise dg.Failure(str(exc)) from None
            relation = tables(wh, project, space).graph.sql(dialect=wh.dialect)
        per_source = "\n".join(
            [
                "| source model | records |",
                "|---|---:|",
                *(f"| {m} | {n} |" for m, n in result.records_per_source.items()),
            ]
        )
        merges = "\n".join(
            [
                "| rule | kept | merged |",
                "|---|---|---|",
                *(f"| {r} | {k} | {m} |" for r, k, m in result.merges[:50]),
            ]
        )
        return dg.MaterializeResult(
            metadata={
                "dagster/row_count": dg.MetadataValue.int(result.records),
                "dagster/relation_identifier": relation,
                "records": dg.MetadataValue.int(result.records),
                "profiles": dg.MetadataValue.int(result.profiles),
                "new_profiles": dg.MetadataValue.int(result.new_profiles),
                "merges": dg.MetadataValue.int(len(result.merges)),
                "largest_profile": dg.MetadataValue.int(result.largest_profile),
                "links": dg.MetadataValue.int(result.links),
                "iterations": dg.MetadataValue.int(result.iterations),
                "mode": result.mode,
                "records_changed": dg.MetadataValue.int(result.records_changed),
                **({"full_run_because": result.reason} if result.mode == "full" else {}),
                "records_per_source": dg.MetadataValue.md(per_source),
                **({"merges_this_run": dg.MetadataValue.md(merges)} if result.merges else {}),
            }
        )

    @dg.multi_asset(
        specs=[profiles_spec],
        name=names.op_name(names.identity_key(space, "profiles")),
        required_resource_keys={rkey},
    )
    def _profiles(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        wh = warehouse_of(context.resources, source)
        with wh.session():
            try:
                count = build_profiles(wh, project, space)
            except IdentityError as exc:
                raise dg.Failure(str(exc)) from None
            _, largest, _ = profile_sizes(wh, project, space)
            relation = tables(wh, project, space).profiles.sql(dialect=wh.dialect)
        return dg.MaterializeResult(
            metadata={
                "dagster/row_count": dg.MetadataValue.int(count),
                "dagster/relation_identifier": relation,
                "profiles": dg.MetadataValue.int(count),
                "largest_profile": dg.MetadataValue.int(largest),
            }
        )

    @dg.asset_check(
        asset=graph_spec.key,
        name=SIZE_CHECK,
        blocking=True,
        required_resource_keys={rkey},
        description=f"No profile holds more than {limit} records (identity.{space}.max_profile_size)",
    )
    def _size(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
        wh = warehouse_of(context.resources, source)
        with wh.session():
            count, largest, largest_id = profile_sizes(wh, project, space)
        passed = largest <= limit
        text = (
            f"the largest profile holds {largest} records (limit {limit})"
            if passed
            else f"profile {largest_id} holds {largest} records, above the limit of {limit}: a shared identifier "
            f"probably links unrelated records; add a limit for it under identity.{space}.limits"
        )
        return dg.AssetCheckResult(
            passed=passed,
            description=text,
            metadata={
                "largest_profile": dg.MetadataValue.int(largest),
                "largest_profile_id": str(largest_id),
                "max_profile_size": dg.MetadataValue.int(limit),
                "profiles": dg.MetadataValue.int(count),
            },
        )

    @dg.asset_check(
        asset=graph_spec.key,
        name=MEMBERSHIP_CHECK,
        blocking=True,
        required_resource_keys={rkey},
        description="Every record of the source models is in exactly one profile",
    )
    def _membership(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
        wh = warehouse_of(context.resources, source)
        with wh.session():
            c = membership_check(wh, project, space)
        duplicated = c["graph_rows"] - c["distinct_records"]
        passed = duplicated == 0 and c["without_profile"] == 0 and c["missing"] == 0
        text = (
            f"{c['records']} records, each in exactly one profile"
            if passed
            else f"{c['missing']} record(s) in no profile, {duplicated} in more than one, {c['without_profile']} "
            "graph row(s) without a profile id"
        )
        return dg.AssetCheckResult(
            passed=passed, description=text, metadata={k: dg.MetadataValue.int(v) for k, v in c.items()}
        )

    return [_graph, _profiles], [_size, _membership]


def defs(project: Project, translator: DinmoTranslator | None = None) -> dg.Definitions:
    """The graph and profiles assets and checks of every identity space of ``project``."""
    translator = translator or DinmoTranslator()
    assets: list[Any] = []
    checks: list[Any] = []
    for space in project.identity:
        a, c = _space_assets(project, space, translator)
        assets += a
        checks += c
    return dg.Definitions(assets=assets, asset_checks=checks)

"""Prediction assets: ``predictions/<set>`` (training) and ``predictions/<set>/scores`` (published scores).

``predictions/<set>`` reads the views of the customer and orders models (``models/M``, upstream in the
lineage), back-tests every model against its naive baseline on a time split, fits the promoted ones and
writes their scores to candidate tables (``predictions.engine.train``). Its metadata: the model version, the
training windows, the feature importances, the back-test's metrics next to the baselines', and what was
promoted (or why not). ``predictions/<set>/scores`` publishes the promoted scores into the tables behind the
models ``predictions.<set>`` and ``predictions.<set>_recommendations``; a model that did not beat its
baseline leaves its previous scores in place.

Both run in the job ``predict_<set>`` (with the models they read), on the set's ``schedule``; the syncs of
activations that read the scores do not retrain them (the assets carry the tag ``dinmo/own_schedule``).
"""

# No `from __future__ import annotations`: Dagster reads the `context` annotations at definition time.

import importlib
import json
from types import ModuleType
from typing import TYPE_CHECKING, Any

import dagster as dg

from dinmo_dagster import names
from dinmo_dagster.config import Project
from dinmo_dagster.predictions.tables import score_tables
from dinmo_dagster.recurrence import describe, to_cron
from dinmo_dagster.resources import source_key, warehouse_of
from dinmo_dagster.translator import DinmoEntity, DinmoTranslator

if TYPE_CHECKING:
    from dinmo_dagster.predictions.engine import TrainResult

# The engine (pandas, numpy, the learners) is loaded by name when a training or a publication runs, not
# with the definitions, which every `dinmo sync` builds and most never train (pandas alone was 0.17 s and
# 30 MB of each sync).
ENGINE_MODULE = "dinmo_dagster.predictions.engine"


def _engine() -> ModuleType:
    return importlib.import_module(ENGINE_MODULE)

__all__ = ["defs", "job_name", "train_metadata"]


def job_name(name: str) -> str:
    """The job that trains and publishes prediction set ``name``."""
    return f"predict_{name}"


def _fmt(value: Any) -> str:
    return "" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)


def train_metadata(result: "TrainResult") -> dict[str, Any]:
    """The training asset's metadata: version, windows, importances, back-test and baselines, promotions."""
    rows = ["| model | metric | model | baseline | promoted | customers |", "|---|---|---:|---:|---|---:|"]
    for what, ev in result.evaluations.items():
        for metric in ev.model or {"-": None}:
            rows.append(
                f"| {what} | {metric} | {_fmt(ev.model.get(metric))} | {_fmt(ev.baseline.get(metric))} | "
                f"{'yes' if ev.promoted else 'no'} | {ev.rows} |"
            )
    importance = ["| model | feature | share of gain (%) |", "|---|---|---:|"]
    for what, shares in result.importance.items():
        importance += [f"| {what} | {f} | {s:.2f} |" for f, s in list(shares.items())[:10]]
    not_promoted = {k: e.reason for k, e in result.evaluations.items() if not e.promoted}
    return {
        "model_version": f"v{result.version}",
        "cutoff": result.cutoff.isoformat(),
        "customers": dg.MetadataValue.int(result.customers),
        "training_window": dg.MetadataValue.md(
            "\n".join(f"- **{k}**: {w}" for k, w in result.windows.items())
            or "(no model could be back-tested)"
        ),
        "backtest": dg.MetadataValue.md("\n".join(rows)),
        "metrics": dg.MetadataValue.json(
            {
                k: {"model": e.model, "baseline": e.baseline, "promoted": e.promoted, "rows": e.rows}
                for k, e in result.evaluations.items()
            }
        ),
        "feature_importance": dg.MetadataValue.md("\n".join(importance)),
        "promoted": ", ".join(result.promoted) or "(none)",
        "not_promoted": dg.MetadataValue.json(not_promoted),
        "timings_s": dg.MetadataValue.json(result.timings),
    }


def _set_assets(project: Project, name: str, translator: DinmoTranslator) -> tuple[list[Any], list[Any]]:
    p = project.predictions[name]
    source = project.models[p.model].source
    rkey = source_key(source)
    train_spec = translator.get_asset_spec(DinmoEntity.predictions(project, name))
    scores_spec = translator.get_asset_spec(DinmoEntity.predictions(project, name, scores=True))

    @dg.multi_asset(
        specs=[train_spec], name=names.op_name(names.prediction_key(name)), required_resource_keys={rkey}
    )
    def _train(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        engine = _engine()
        wh = warehouse_of(context.resources, source)
        with wh.session():
            try:
                result = engine.train(wh, project, name)
            except engine.PredictionError as exc:
                raise dg.Failure(str(exc)) from None
            relation = score_tables(wh, project, name).candidate.sql(dialect=wh.dialect)
        for what, ev in result.evaluations.items():
            if not ev.promoted:
                context.log.warning(f"{what} not promoted: {ev.reason}")
        return dg.MaterializeResult(
            metadata={
                **train_metadata(result),
                "dagster/relation_identifier": relation,
                "dagster/row_count": dg.MetadataValue.int(result.customers),
            }
        )

    @dg.multi_asset(
        specs=[scores_spec],
        name=names.op_name(names.prediction_key(name, scores=True)),
        required_resource_keys={rkey},
    )
    def _scores(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        engine = _engine()
        wh = warehouse_of(context.resources, source)
        with wh.session():
            try:
                result = engine.publish(wh, project, name)
            except engine.PredictionError as exc:
                raise dg.Failure(str(exc)) from None
            relation = score_tables(wh, project, name).scores.sql(dialect=wh.dialect)
        if result.kept:
            context.log.warning("previous scores kept: " + json.dumps(result.kept))
        return dg.MaterializeResult(
            metadata={
                "dagster/row_count": dg.MetadataValue.int(result.rows),
                "dagster/relation_identifier": relation,
                "rows": dg.MetadataValue.int(result.rows),
                "recommendation_rows": dg.MetadataValue.int(result.recommendation_rows),
                "scored_at": result.scored_at.isoformat() if result.scored_at else "(unchanged)",
                "model_version": f"v{result.version}" if result.published else "(previous scores kept)",
                "published": ", ".join(result.published) or "(none)",
                "kept_previous": dg.MetadataValue.json(result.kept),
            }
        )

    job = dg.define_asset_job(
        job_name(name),
        selection=dg.AssetSelection.assets(scores_spec.key).upstream().materializable(),
        description=f"Train predictions '{name}' (back-tested against baselines); publish promoted scores",
        executor_def=dg.in_process_executor,  # steps in a row: see the sync job
    )
    schedules = []
    if p.schedule is not None:
        schedules.append(
            dg.ScheduleDefinition(
                name=f"{job_name(name)}_schedule",
                job_name=job_name(name),
                cron_schedule=to_cron(p.schedule),
                execution_timezone=p.schedule.timezone,
                description=f"Predictions '{name}' ({describe(p.schedule)})",
                default_status=dg.DefaultScheduleStatus.RUNNING
                if p.schedule.enabled
                else dg.DefaultScheduleStatus.STOPPED,
            )
        )
    return [_train, _scores], [job, *schedules]


def defs(project: Project, translator: DinmoTranslator | None = None) -> dg.Definitions:
    """The training and scores assets, job and schedule of every prediction set of ``project``."""
    translator = translator or DinmoTranslator()
    assets: list[Any] = []
    jobs: list[Any] = []
    schedules: list[Any] = []
    for name in project.predictions:
        a, rest = _set_assets(project, name, translator)
        assets += a
        jobs.append(rest[0])
        schedules += rest[1:]
    return dg.Definitions(assets=assets, jobs=jobs, schedules=schedules)

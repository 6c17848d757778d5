"""The tables of a prediction set in the source's ``helper_schemas.predictions`` schema.

``<set>`` and ``<set>_recommendations`` hold the published scores (the models ``predictions.<set>`` and
``predictions.<set>_recommendations`` read them); ``<set>__candidate`` and
``<set>__candidate_recommendations``
the scores of the latest training; ``<set>__runs`` one row per training (version, cutoff, promoted models,
reasons, metrics). No Dagster, no import of the compiler: ``compile.refresh_model`` creates the empty score
tables through ``ensure_score_tables`` before the first training, and validation reads the columns they will
have from ``declared_select``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlglot
from sqlglot import exp

from dinmo_dagster import delta
from dinmo_dagster.predictions.spec import PredictionSet, prediction_model
from dinmo_dagster.warehouses import Warehouse

__all__ = ["CHURN", "Tables", "declared_select", "ensure_score_tables", "existing_columns", "score_tables"]

CHURN = "churn_probability"


@dataclass(frozen=True)
class Tables:
    scores: exp.Table
    recommendations: exp.Table
    candidate: exp.Table
    candidate_recommendations: exp.Table
    runs: exp.Table
    staging: exp.Table


def score_tables(wh: Warehouse, project: Any, name: str) -> Tables:
    p: PredictionSet = project.predictions[name]
    schema = project.sources[project.models[p.model].source].helper_schemas.predictions

    def t(suffix: str) -> exp.Table:
        return wh.qualify(schema, f"{name}{suffix}")

    return Tables(
        t(""),
        t("_recommendations"),
        t("__candidate"),
        t("__candidate_recommendations"),
        t("__runs"),
        t("__staging"),
    )


def existing_columns(wh: Warehouse, table: exp.Table) -> list[str] | None:
    try:
        return [c.lower() for c in wh.relation_columns(table)]
    except Exception:  # noqa: BLE001 - does not exist
        return None


def declared_select(wh: Warehouse, project: Any, model: str) -> exp.Select | None:
    """The zero-row SELECT of a built-in prediction model's columns, with their types, when its score table
    does not exist yet (else None): what the model will read once trained, known from the configuration alone.

    ``ensure_score_tables`` creates the table from it; ``dinmo validate --connect`` and the filter compiler
    read the model's columns from it before the first training, without creating anything."""
    found = prediction_model(project, model)
    if found is None:
        return None
    name, what = found
    p: PredictionSet = project.predictions[name]
    t = score_tables(wh, project, name)
    if existing_columns(wh, t.scores if what == "scores" else t.recommendations) is not None:
        return None
    return _empty_select(wh, project, p, what)


def _empty_select(wh: Warehouse, project: Any, p: PredictionSet, what: str) -> exp.Select:
    customers = project.models[p.model]
    d = wh.dialect
    if customers.table is not None:
        base: exp.Expression = exp.to_table(customers.table, dialect=d)
    else:
        base = sqlglot.parse_one(customers.sql or "", read=d).subquery("b")
    double, text = exp.DataType.build("double"), delta.text_type(d)
    ts = exp.DataType.build("timestamp")
    pk = delta.col(customers.primary_key)
    if what == "scores":
        cols = [
            pk,
            *(exp.cast(exp.null(), double).as_(c, quoted=True) for c in [*p.ltv_columns(), CHURN]),
            exp.cast(exp.null(), text).as_("model_version", quoted=True),
            exp.cast(exp.null(), ts).as_("scored_at", quoted=True),
        ]
    else:
        cols = [
            exp.cast(exp.null(), text).as_("recommendation_id", quoted=True),
            pk,
            exp.cast(exp.null(), exp.DataType.build("int")).as_("rank", quoted=True),
            exp.cast(exp.null(), text).as_("item", quoted=True),
            exp.cast(exp.null(), double).as_("score", quoted=True),
            exp.cast(exp.null(), text).as_("model_version", quoted=True),
            exp.cast(exp.null(), ts).as_("scored_at", quoted=True),
        ]
    return exp.select(*cols).from_(base).where(exp.false())


def ensure_score_tables(wh: Warehouse, project: Any, model: str) -> None:
    """Create the (empty) score table a built-in prediction model reads, when no run has published yet, so its
    view, and the customer model's segments related to it, can be built before the first training."""
    select = declared_select(wh, project, model)
    if select is None:
        return
    name, what = prediction_model(project, model) or ("", "")
    p: PredictionSet = project.predictions[name]
    t = score_tables(wh, project, name)
    table = t.scores if what == "scores" else t.recommendations
    wh.ensure_schema(project.sources[project.models[p.model].source].helper_schemas.predictions)
    create = exp.Create(this=table.copy(), kind="TABLE", exists=True, expression=select)
    wh.execute(delta.render(create, wh.dialect))

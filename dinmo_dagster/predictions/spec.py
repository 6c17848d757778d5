"""The ``predictions:`` section of a project: prediction sets, their validation and their score models.

A prediction set learns, from a customer model and a fact model of its orders, the customers' lifetime value
over one or more horizons, their probability to churn and the products to recommend them::

    predictions:
      value:
        model: customers                  # the customers predicted for (its primary key)
        events: orders                    # a fact model (kind: fact, with time_column)
        amount: amount                    # order value column of events
        item: product_id                  # for recommendations
        item_category: category           # optional: the category mix features
        ltv_horizons_months: [3, 12]      # 1 to 36
        churn_window_days: 90
        recommendations: {top_k: 10, exclude_purchased: true}
        schedule: {every: 1 day}

The set adds two models every segment and activation can use, each related to the customer model:
``predictions.<set>`` (one row per customer: its key, ``ltv_<H>m`` per horizon, ``churn_probability``,
``model_version``, ``scored_at``) and ``predictions.<set>_recommendations`` (``rank``, ``item``, ``score`` per
customer). The customer model gets the relationships ``predictions.<set>`` (one_to_one) and
``predictions.<set>_recommendations`` (one_to_many), so a filter on customers can say
``{attribute: predictions.value.churn_probability, op: gt, value: 0.7}``.

Plain Python (pydantic), no Dagster and no import of ``dinmo_dagster.config`` at module level: the
configuration loader imports this module.
"""

from __future__ import annotations

import difflib
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlglot import exp

from dinmo_dagster.recurrence import Schedule, schedule_problem
from dinmo_dagster.warehouses import dialect_of

__all__ = [
    "MODEL_PREFIX",
    "PredictionSet",
    "Recommendations",
    "add_prediction_models",
    "customer_key_of",
    "prediction_model",
    "recommendations_model_name",
    "scores_model_name",
    "set_problems",
]

MODEL_PREFIX = "predictions."
# Warehouses whose SQL the feature queries are written and tested for.
SUPPORTED_WAREHOUSES = ("duckdb", "postgres", "snowflake", "bigquery", "redshift", "databricks")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)


class Recommendations(_Strict):
    """Product recommendations: the ``top_k`` items per customer, by item-item co-occurrence."""

    top_k: Annotated[int, Field(ge=1, le=100)] = 10
    exclude_purchased: bool = True
    """True: never recommend an item the customer already bought."""
    window_days: Annotated[int, Field(ge=1, le=730)] = 90
    """The back-test's window: lists made at a cutoff are judged on the purchases of the days after it."""


class PredictionSet(_Strict):
    """A ``predictions.<name>`` entry."""

    description: str | None = None
    model: str
    """The customer model; its primary key is the key of every score."""
    events: str
    """A fact model (``kind: fact`` with a ``time_column``): the orders."""
    amount: str
    """The order value column of ``events``."""
    customer_key: str | None = None
    """The column of ``events`` holding the customer's key. Default: the ``on`` of the customer model's
    relationship to ``events``, else a column named like the customer model's primary key."""
    item: str | None = None
    """The product column of ``events``; required for recommendations."""
    item_category: str | None = None
    """A product category column of ``events``: adds the share of each frequent category to the features."""
    ltv_horizons_months: Annotated[
        list[Annotated[int, Field(ge=1, le=36)]], Field(min_length=1, max_length=6)
    ] = [12]
    churn_window_days: Annotated[int, Field(ge=7, le=730)] = 90
    recommendations: Recommendations | None = None
    schedule: Schedule | None = None
    seed: int = 0
    """The random seed of every learner: the same data gives the same scores."""

    @field_validator("ltv_horizons_months")
    @classmethod
    def _distinct(cls, v: list[int]) -> list[int]:
        if len(set(v)) != len(v):
            raise ValueError(f"found {v}; allowed: distinct horizons (months from 1 to 36)")
        return sorted(v)

    def ltv_columns(self) -> list[str]:
        """``ltv_3m``, ``ltv_12m``...: one score column per horizon."""
        return [f"ltv_{h}m" for h in self.ltv_horizons_months]


def scores_model_name(name: str) -> str:
    """The built-in model of a set's scores: ``predictions.<name>``."""
    return f"{MODEL_PREFIX}{name}"


def recommendations_model_name(name: str) -> str:
    """The built-in model of a set's recommendations: ``predictions.<name>_recommendations``."""
    return f"{MODEL_PREFIX}{name}_recommendations"


def prediction_model(project: Any, model: str) -> tuple[str, str] | None:
    """``(set, "scores" | "recommendations")`` when ``model`` is a built-in prediction model."""
    if not model.startswith(MODEL_PREFIX):
        return None
    for name in getattr(project, "predictions", {}):
        if model == scores_model_name(name):
            return name, "scores"
        if model == recommendations_model_name(name):
            return name, "recommendations"
    return None


def customer_key_of(project: Any, p: PredictionSet) -> str:
    """The column of ``events`` that holds the customer's key (see ``PredictionSet.customer_key``)."""
    if p.customer_key:
        return p.customer_key
    customers = project.models[p.model]
    for rel in customers.relationships:
        if rel.model == p.events and customers.primary_key in rel.on:
            return rel.on[customers.primary_key]
    return customers.primary_key


def _hint(found: str, allowed: list[str]) -> str:
    close = difflib.get_close_matches(found, allowed, n=1)
    return f"; did you mean {close[0]!r}?" if close else ";"


def set_problems(project: Any, name: str, p: PredictionSet, file: str) -> list[str]:
    """What is wrong with ``predictions.<name>`` beyond its types: unknown models, a non-fact events model,
    models of two sources, recommendations without an item. One line each: file, key path, found, allowed."""
    out: list[str] = []
    k = f"predictions.{name}"
    models = sorted(m for m in project.models if "." not in m)
    for key, found in (("model", p.model), ("events", p.events)):
        if found not in project.models:
            out.append(
                f"{file}: {k}.{key}: unknown model '{found}'{_hint(found, models)} allowed: "
                f"{', '.join(models) or '(none defined)'}"
            )
    events = project.models.get(p.events)
    if events is not None and (events.kind != "fact" or not events.time_column):
        out.append(
            f"{file}: {k}.events: model '{p.events}' is a {events.kind} model"
            f"{' without time_column' if not events.time_column else ''}; allowed: a fact model with a "
            "time_column (the orders, dated)"
        )
    customers = project.models.get(p.model)
    if customers is not None and events is not None and customers.source != events.source:
        out.append(
            f"{file}: {k}.events: model '{p.events}' is in source '{events.source}' and '{p.model}' in "
            f"'{customers.source}'; allowed: models of one source (features are computed in one warehouse)"
        )
    if customers is not None and p.model == p.events:
        out.append(
            f"{file}: {k}.events: found the customer model '{p.model}' itself; "
            "allowed: its orders' fact model"
        )
    if p.recommendations is not None and not p.item:
        out.append(
            f"{file}: {k}.recommendations: needs the product column; add {k}.item (allowed: a column of "
            f"'{p.events}') or remove recommendations"
        )
    if p.item_category and not p.item:
        out.append(
            f"{file}: {k}.item_category: found '{p.item_category}' without item; allowed: item_category "
            "together with item"
        )
    if p.schedule is not None:
        problem = schedule_problem(p.schedule)
        if problem:
            out.append(f"{file}: {k}.schedule.{problem}")
    taken = {scores_model_name(name), recommendations_model_name(name)}
    for other in getattr(project, "predictions", {}):
        if other != name and recommendations_model_name(other) in taken:
            out.append(
                f"{file}: {k}: the name '{name}' makes the model 'predictions.{name}', which set '{other}' "
                f"already makes ('predictions.{other}_recommendations'); allowed: another name"
            )
    return out


def _relation_sql(schema: str, table: str, dialect: str) -> str:
    return exp.select(exp.Star()).from_(exp.table_(table, db=schema)).sql(dialect=dialect)


def add_prediction_models(project: Any, defined: dict[str, set[str]] | None = None) -> list[str]:
    """Validate every prediction set, add its score models to ``project.models`` and relate them to the
    customer model (relationships ``predictions.<set>`` and ``predictions.<set>_recommendations``).

    The models read the score tables in the source's ``helper_schemas.predictions`` (``<set>`` and
    ``<set>_recommendations``). Returns the problems (one line each); a set with problems adds nothing.
    """
    out: list[str] = []
    for name, p in getattr(project, "predictions", {}).items():
        file = project.origins.get(f"predictions.{name}", "?")
        problems = set_problems(project, name, p, file)
        out.extend(problems)
        if problems:
            continue
        customers = project.models[p.model]
        if customers.source not in project.sources:
            continue  # an unknown source is reported on the model
        src = project.sources[customers.source]
        schema = src.helper_schemas.predictions
        dialect = dialect_of(src)
        pk = customers.primary_key
        built = (
            (
                scores_model_name(name),
                name,
                pk,
                "one_to_one",
                (
                    f"Predictions '{name}' of {p.model}: lifetime value ({', '.join(p.ltv_columns())}) and "
                    "churn "
                    "probability per customer"
                ),
                [*p.ltv_columns(), "churn_probability", "model_version", "scored_at"],
            ),
        )
        if p.recommendations is not None:
            built += (
                (
                    recommendations_model_name(name),
                    f"{name}_recommendations",
                    "recommendation_id",
                    "one_to_many",
                    f"Product recommendations '{name}': the top {p.recommendations.top_k} items per customer",
                    ["rank", "item", "score", "model_version", "scored_at"],
                ),
            )
        # the loader's Model class, without importing the loader (it imports this module)
        model_class = type(customers)
        relationships = [r.model_dump() for r in customers.relationships]
        for model, table, key, rtype, desc, cols in built:
            project.models[model] = model_class.model_validate(
                {
                    "source": customers.source,
                    "sql": _relation_sql(schema, table, dialect),
                    "primary_key": key,
                    "description": desc,
                    "attributes": [pk, *cols] if key != pk else cols,
                    "relationships": [
                        {"name": p.model, "model": p.model, "type": "many_to_one", "on": {pk: pk}}
                    ],
                }
            )
            project.origins[f"models.{model}"] = file
            if defined is not None:
                defined.setdefault("models", set()).add(model)
            relationships.append({"name": model, "model": model, "type": rtype, "on": {pk: pk}})
        field = model_class.model_fields["relationships"].annotation.__args__[0]  # config.Relationship
        project.models[p.model] = customers.model_copy(
            update={"relationships": [field.model_validate(r) for r in relationships]}
        )
    return out

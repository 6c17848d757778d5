"""Training, back-testing and publishing a prediction set over a warehouse. No Dagster.

``train`` computes the features in the warehouse (``features.py``) at the cutoffs the back-tests need,
reads them as Arrow batches, back-tests every model against its baseline on a time split, fits the promoted
ones on the latest window and writes their scores in bulk (``insert_rows``) to candidate tables in the
source's ``helper_schemas.predictions`` schema, with one row in ``<set>__runs`` (version, cutoff, what was
promoted and why not, the metrics). ``publish`` then makes the candidate scores of the promoted models the
live tables ``<set>`` and ``<set>_recommendations``, inside the warehouse; the columns of a model that was
not promoted keep their previous values.

The time split, for a horizon ``H`` and the cutoff ``T`` (by default the day after the latest order):
the back-test trains on the features as of ``T - 2H`` with the outcome of ``[T - 2H, T - H)`` and is judged
on the features as of ``T - H`` against the outcome of ``[T - H, T)``, the most recent horizon, which it never
saw. The published model is then trained on ``T - H`` / ``[T - H, T)`` and scores the features as of ``T``.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from dateutil.relativedelta import relativedelta
from sqlglot import exp

from dinmo_dagster import delta
from dinmo_dagster.compile import model_relation
from dinmo_dagster.predictions import features as F
from dinmo_dagster.predictions import learn
from dinmo_dagster.predictions.spec import PredictionSet, customer_key_of
from dinmo_dagster.predictions.tables import CHURN, Tables, existing_columns, score_tables
from dinmo_dagster.warehouses import Warehouse

__all__ = [
    "PredictionError",
    "PublishResult",
    "TrainResult",
    "feature_table",
    "last_run",
    "publish",
    "train",
]

RECOMMENDATIONS = "recommendations"
MIN_ROWS = 20  # a back-test on fewer customers is not a measure


class PredictionError(Exception):
    """A prediction set cannot be trained or published as configured; the message says why."""


@dataclass
class TrainResult:
    """What a training run did: its version, cutoff, back-tests, promotions and feature importances."""

    version: int
    cutoff: dt.datetime
    trained_at: dt.datetime
    customers: int
    evaluations: dict[str, learn.Evaluation] = field(default_factory=dict)
    windows: dict[str, str] = field(default_factory=dict)
    importance: dict[str, dict[str, float]] = field(default_factory=dict)
    recommendation_rows: int = 0
    timings: dict[str, float] = field(default_factory=dict)  # seconds per phase

    @property
    def promoted(self) -> list[str]:
        return [k for k, e in self.evaluations.items() if e.promoted]


@dataclass
class PublishResult:
    version: int | None
    published: list[str]
    kept: dict[str, str]
    rows: int
    recommendation_rows: int
    scored_at: dt.datetime | None


# --------------------------------------------------------------------------------------------------- reading


def _columns(wh: Warehouse, project: Any, name: str) -> F.Columns:
    p: PredictionSet = project.predictions[name]
    customers, events = model_relation(wh, project, p.model), model_relation(wh, project, p.events)
    out: dict[str, Any] = {}
    for what, rel, model in (("customers", customers, p.model), ("events", events, p.events)):
        try:
            out[what] = wh.relation_columns(rel)
        except Exception as exc:  # noqa: BLE001 - the view is missing: say which asset builds it
            raise PredictionError(
                f"predictions.{name}: the view of model '{model}' ({rel.sql(wh.dialect)}) cannot be "
                f"read; materialize models/{model} first ({str(exc).splitlines()[0]})"
            ) from None

    def find(column: str | None, what: str, key: str) -> str | None:
        if column is None:
            return None
        found = delta.resolve_column(column, out[what])
        if found not in out[what]:
            model = p.model if what == "customers" else p.events
            raise PredictionError(
                f"predictions.{name}.{key}: model '{model}' has no column '{column}'; columns: "
                f"{', '.join(out[what])}"
            )
        return found

    ev = project.models[p.events]
    return F.Columns(
        customers=customers,
        events=events,
        pk=find(project.models[p.model].primary_key, "customers", "model") or "",
        customer_key=find(customer_key_of(project, p), "events", "customer_key") or "",
        time=find(ev.time_column, "events", "events") or "",
        amount=find(p.amount, "events", "amount") or "",
        item=find(p.item, "events", "item"),
        category=find(p.item_category, "events", "item_category"),
    )


def _frame(wh: Warehouse, sql: str) -> pd.DataFrame:
    """The result of ``sql``, read in Arrow batches."""
    with wh.stream(sql) as reader:
        table = reader.read_all()
    return table.to_pandas()


class _Reader:
    """Features per cutoff, read once each."""

    def __init__(self, wh: Warehouse, c: F.Columns, categories: list[str]) -> None:
        self.wh, self.c, self.categories = wh, c, categories
        self._features: dict[dt.datetime, pd.DataFrame] = {}
        self.sql_columns = [*F.FEATURES, *(f"category_share_{i}" for i in range(len(categories)))]
        self.columns = [*self.sql_columns, *learn.BGNBD_FEATURES]

    def features(self, cutoff: dt.datetime) -> pd.DataFrame:
        if cutoff not in self._features:
            df = _frame(self.wh, F.features_sql(self.c, cutoff, self.wh.dialect, self.categories))
            df.columns = [str(c).lower() for c in df.columns]
            for column in self.sql_columns:
                df[column] = pd.to_numeric(df[column], errors="coerce").astype(float)
            df["k"] = df[F.KEY].map(_key_text)
            # BG/NBD's probability to be alive and rate, fitted on this cutoff's features alone
            fitted = learn.BgNbd.fit(df)
            bgnbd = list(learn.BGNBD_FEATURES)
            df[bgnbd] = fitted.features(df) if fitted else pd.DataFrame(np.nan, index=df.index, columns=bgnbd)
            self._features[cutoff] = df
        return self._features[cutoff]

    def forget(self, keep: dt.datetime) -> None:
        """Drop the feature tables of every cutoff but ``keep`` (one model's cutoffs are not another's)."""
        self._features = {c: f for c, f in self._features.items() if c == keep}

    def labels(self, start: dt.datetime, end: dt.datetime) -> pd.DataFrame:
        df = _frame(self.wh, F.labels_sql(self.c, start, end, self.wh.dialect))
        df.columns = [str(c).lower() for c in df.columns]
        return pd.DataFrame(
            {
                "value": pd.to_numeric(df["value"]).astype(float).to_numpy(),
                "orders": pd.to_numeric(df["orders"]).astype(float).to_numpy(),
            },
            index=df[F.KEY].astype(str).to_numpy(),
        )

    def interactions(self, start: dt.datetime | None, end: dt.datetime) -> pd.DataFrame:
        """(customer key, item, orders) as categorical columns: millions of pairs hold each text once."""
        with self.wh.stream(F.interactions_sql(self.c, start, end, self.wh.dialect)) as reader:
            table = reader.read_all()
        table = table.rename_columns([str(c).lower() for c in table.column_names])
        return pd.DataFrame(
            {
                F.KEY: _categorical(table[F.KEY]),
                "item": _categorical(table["item"]),
                "n": table["n"].to_numpy(),
            }
        )


def _categorical(column: pa.ChunkedArray) -> pd.Series:
    """A text column as a pandas categorical with sorted categories (codes independent of row order)."""
    series = pc.cast(column, pa.string()).dictionary_encode().to_pandas()
    return series.cat.set_categories(sorted(series.cat.categories))


def _key_text(value: Any) -> str:
    """A key as the warehouse casts it to text (integers without a decimal point)."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _outcome(x: pd.DataFrame, labels: pd.DataFrame, column: str) -> np.ndarray:
    return labels[column].reindex(x["k"]).fillna(0.0).to_numpy(dtype=float)


def _day(value: Any) -> dt.datetime:
    """Midnight of the day after ``value`` (the cutoff that includes the whole day of the latest order)."""
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
    if not isinstance(value, dt.datetime):
        value = dt.datetime.combine(value, dt.time())
    return dt.datetime.combine(value.date(), dt.time()) + dt.timedelta(days=1)


# -------------------------------------------------------------------------------------------------- training


def train(
    wh: Warehouse, project: Any, name: str, cutoff: dt.datetime | None = None, now: dt.datetime | None = None
) -> TrainResult:
    """Back-test, fit and score every model of set ``name``; write the candidate tables and the run's row.

    ``cutoff``: the "as of" date; by default the day after the latest order. ``now``: the run's time
    (``scored_at``)."""
    p: PredictionSet = project.predictions[name]
    missing = [m for m in ("lightgbm", "sklearn", "scipy") if importlib.util.find_spec(m) is None]
    if missing:
        raise PredictionError(
            f"predictions.{name}: the learners are not installed ({', '.join(missing)} missing); "
            "install them with: pip install 'dinmo-dagster[predictions]'"
        )
    c = _columns(wh, project, name)
    first, last = wh.query(F.history_sql(c, wh.dialect))[0]
    if last is None:
        raise PredictionError(f"predictions.{name}: model '{p.events}' has no order; nothing to learn from")
    first = pd.Timestamp(first).to_pydatetime()
    cutoff = cutoff or _day(pd.Timestamp(last).to_pydatetime())
    now = (now or dt.datetime.now(dt.timezone.utc)).replace(tzinfo=None, microsecond=0)
    categories: list[str] = []
    if c.category:
        categories = [str(r[0]) for r in wh.query(F.categories_sql(c, cutoff, wh.dialect))]
    r = _Reader(wh, c, categories)
    clock = time.perf_counter()
    current = r.features(cutoff)
    t = score_tables(wh, project, name)
    version = _next_version(wh, t)
    result = TrainResult(version=version, cutoff=cutoff, trained_at=now, customers=len(current))
    scores = pd.DataFrame({"key": current[F.KEY]})
    cols = r.columns

    for months, column in zip(p.ltv_horizons_months, p.ltv_columns()):
        c1 = cutoff - relativedelta(months=months)
        c0 = c1 - relativedelta(months=months)
        if first >= c0:
            result.evaluations[column] = _no_history(column, first, c0, f"{2 * months} months")
            continue
        x0, x1 = r.features(c0), r.features(c1)
        y0, y1 = _outcome(x0, r.labels(c0, c1), "value"), _outcome(x1, r.labels(c1, cutoff), "value")
        model = learn.fit_ltv(x0[cols], y0, p.seed)
        ev = learn.evaluate_ltv(
            y1, learn.predict_ltv(model, x1[cols]), learn.ltv_baseline(x1, (cutoff - c1).days), column
        )
        result.evaluations[column] = ev
        result.windows[column] = (
            f"trained on features as of {c0:%Y-%m-%d} and spend in [{c0:%Y-%m-%d}, "
            f"{c1:%Y-%m-%d}); back-tested on [{c1:%Y-%m-%d}, {cutoff:%Y-%m-%d}); published "
            f"model trained on [{c1:%Y-%m-%d}, {cutoff:%Y-%m-%d})"
        )
        if ev.promoted:
            final = learn.fit_ltv(x1[cols], y1, p.seed)
            scores[column] = np.round(learn.predict_ltv(final, current[cols]), 2)
            result.importance[column] = learn.importance(final, cols)
        r.forget(keep=cutoff)
        result.timings[column], clock = round(time.perf_counter() - clock, 1), time.perf_counter()

    window = dt.timedelta(days=p.churn_window_days)
    c1, c0 = cutoff - window, cutoff - 2 * window
    if first >= c0:
        result.evaluations[CHURN] = _no_history(CHURN, first, c0, f"{2 * p.churn_window_days} days")
    else:
        x0, x1 = r.features(c0), r.features(c1)
        a0, a1 = x0[x0["frequency"] > 0], x1[x1["frequency"] > 0]
        y0 = (_outcome(a0, r.labels(c0, c1), "orders") == 0).astype(int)
        y1 = (_outcome(a1, r.labels(c1, cutoff), "orders") == 0).astype(int)
        if len(a0) < MIN_ROWS or len(np.unique(y0)) < 2:
            result.evaluations[CHURN] = learn.Evaluation(
                {},
                {},
                False,
                f"{CHURN}: {len(a0)} customers with orders "
                "before the back-test's training cutoff, not all of one "
                f"outcome, are needed (at least {MIN_ROWS})",
                len(a0),
            )
        else:
            model = learn.fit_churn(a0[cols], y0, p.seed)
            ev = learn.evaluate_churn(
                y1, model.predict_proba(a1[cols])[:, 1], learn.churn_baseline(a1, p.churn_window_days), CHURN
            )
            result.evaluations[CHURN] = ev
            result.windows[CHURN] = (
                f"customers with an order before the cutoff; churn: no order in the next "
                f"{p.churn_window_days} days; trained as of {c0:%Y-%m-%d}, back-tested as of "
                f"{c1:%Y-%m-%d}, published model trained as of {c1:%Y-%m-%d}"
            )
            if ev.promoted and len(np.unique(y1)) == 2:
                final = learn.fit_churn(a1[cols], y1, p.seed)
                active = current["frequency"] > 0
                probability = np.full(len(current), np.nan)
                probability[active.to_numpy()] = final.predict_proba(current.loc[active, cols])[:, 1]
                scores[CHURN] = np.round(probability, 4)
                result.importance[CHURN] = learn.churn_importance(final, cols)

    r.forget(keep=cutoff)
    result.timings[CHURN], clock = round(time.perf_counter() - clock, 1), time.perf_counter()
    recs: pa.Table | None = None
    if p.recommendations is not None:
        rc = p.recommendations
        c1 = cutoff - dt.timedelta(days=rc.window_days)
        before, after = r.interactions(None, c1), r.interactions(c1, cutoff)
        owned = before.groupby(F.KEY, observed=True)["item"].agg(set).to_dict()
        truth = {
            k: ({*g} - owned.get(k, set()) if rc.exclude_purchased else {*g})
            for k, g in after.groupby(F.KEY, observed=True)["item"]
        }
        truth = {k: v for k, v in truth.items() if v}
        if len(truth) < MIN_ROWS:
            result.evaluations[RECOMMENDATIONS] = learn.Evaluation(
                {},
                {},
                False,
                f"{RECOMMENDATIONS}: {len(truth)} customers bought new items in the last "
                f"{rc.window_days} days; at least {MIN_ROWS} are needed to back-test",
                len(truth),
            )
        else:
            cf = learn.ItemCF(before)
            who = sorted(truth)
            lists = cf.recommend(who, rc.top_k, rc.exclude_purchased).lists(who)
            base = learn.popularity_lists(
                who, before, learn.popularity(before), rc.top_k, rc.exclude_purchased
            )
            ev = learn.evaluate_recommendations(lists, base, truth, rc.top_k, RECOMMENDATIONS)
            result.evaluations[RECOMMENDATIONS] = ev
            result.windows[RECOMMENDATIONS] = (
                f"item co-occurrence of the purchases before {c1:%Y-%m-%d}, "
                f"back-tested on the new items bought in [{c1:%Y-%m-%d}, "
                f"{cutoff:%Y-%m-%d}); published on every purchase before "
                f"{cutoff:%Y-%m-%d}"
            )
            if ev.promoted:
                final_cf = learn.ItemCF(r.interactions(None, cutoff))
                keys = current["k"].tolist()
                got = final_cf.recommend(keys, rc.top_k, rc.exclude_purchased)
                customer = pa.array(current[F.KEY].tolist()).take(pa.array(got.customer))
                recs = pa.table(
                    {
                        "recommendation_id": pc.binary_join_element_wise(
                            pa.array(keys).take(pa.array(got.customer)),
                            pc.cast(pa.array(got.rank), pa.string()),
                            ":",
                        ),
                        "_key": customer,
                        "rank": pa.array(got.rank, pa.int32()),
                        "item": pa.array(got.items.astype(str), pa.string()).take(pa.array(got.item)),
                        "score": pa.array(got.score, pa.float64()),
                    }
                )
                result.recommendation_rows = recs.num_rows

    if p.recommendations is not None:
        result.timings[RECOMMENDATIONS], clock = round(time.perf_counter() - clock, 1), time.perf_counter()
    _write_candidates(wh, project, name, t, result, scores, recs, c.pk)
    result.timings["writing"] = round(time.perf_counter() - clock, 1)
    return result


def _no_history(what: str, first: dt.datetime, needed: dt.datetime, span: str) -> learn.Evaluation:
    return learn.Evaluation(
        {},
        {},
        False,
        f"{what}: the back-test needs {span} of orders before the cutoff (orders "
        f"from {needed:%Y-%m-%d}); the first order is of {first:%Y-%m-%d}",
    )


# --------------------------------------------------------------------------------------------------- writing


def _sql_type(t: pa.DataType, dialect: str) -> exp.DataType:
    if pa.types.is_integer(t):
        return exp.DataType.build("bigint")
    if pa.types.is_floating(t) or pa.types.is_decimal(t):
        return exp.DataType.build("double")
    if pa.types.is_timestamp(t):
        return exp.DataType.build("timestamp")
    if pa.types.is_boolean(t):
        return exp.DataType.build("boolean")
    return delta.text_type(dialect)


def write_table(wh: Warehouse, table: exp.Table, rows: pa.Table) -> None:
    """Replace ``table`` by ``rows``: CREATE TABLE with the Arrow schema's types, then ``insert_rows``."""
    schema = exp.Schema(
        this=table.copy(),
        expressions=[
            exp.ColumnDef(this=delta.ident(f.name), kind=_sql_type(f.type, wh.dialect)) for f in rows.schema
        ],
    )
    wh.insert_rows(
        table,
        rows,
        before=[
            delta.drop_table_sql(table, wh.dialect),
            delta.render(exp.Create(this=schema, kind="TABLE"), wh.dialect),
        ],
    )


RUN_COLUMNS = (
    ("version", "bigint"),
    ("trained_at", "timestamp"),
    ("cutoff", "timestamp"),
    ("promoted", "text"),
    ("reasons", "text"),
    ("metrics", "text"),
)


def _next_version(wh: Warehouse, t: Tables) -> int:
    try:
        found = wh.query(
            delta.render(exp.select(exp.Max(this=delta.col("version"))).from_(t.runs.copy()), wh.dialect)
        )
    except Exception:  # noqa: BLE001 - no run yet
        return 1
    return int(found[0][0] or 0) + 1


def _write_candidates(
    wh: Warehouse,
    project: Any,
    name: str,
    t: Tables,
    result: TrainResult,
    scores: pd.DataFrame,
    recs: pa.Table | None,
    pk: str,
) -> None:
    p: PredictionSet = project.predictions[name]
    schema = project.sources[project.models[p.model].source].helper_schemas.predictions
    wh.ensure_schema(schema)
    n = len(scores)
    version = f"v{result.version}"
    pk_name = project.models[p.model].primary_key
    columns: dict[str, Any] = {pk_name: pa.array(scores["key"].tolist())}
    for column in [*p.ltv_columns(), CHURN]:
        values = scores[column].to_numpy(dtype=float) if column in scores else np.full(n, np.nan)
        columns[column] = pa.array(values, pa.float64(), mask=np.isnan(values))
    columns["model_version"] = pa.array([version] * n, pa.string())
    columns["scored_at"] = pa.array([result.trained_at] * n, pa.timestamp("us"))
    write_table(wh, t.candidate, pa.table(columns))
    if recs is not None:
        recs = recs.rename_columns([pk_name if c == "_key" else c for c in recs.column_names])
        recs = recs.append_column("model_version", pa.array([version] * recs.num_rows, pa.string()))
        recs = recs.append_column(
            "scored_at", pa.array([result.trained_at] * recs.num_rows, pa.timestamp("us"))
        )
        write_table(wh, t.candidate_recommendations, recs)
    run = pa.table(
        {
            "version": pa.array([result.version], pa.int64()),
            "trained_at": pa.array([result.trained_at], pa.timestamp("us")),
            "cutoff": pa.array([result.cutoff], pa.timestamp("us")),
            "promoted": pa.array([",".join(result.promoted)], pa.string()),
            "reasons": pa.array(
                [json.dumps({k: e.reason for k, e in result.evaluations.items()})], pa.string()
            ),
            "metrics": pa.array(
                [
                    json.dumps(
                        {
                            k: {"model": e.model, "baseline": e.baseline, "rows": e.rows}
                            for k, e in result.evaluations.items()
                        },
                        default=str,
                    )
                ],
                pa.string(),
            ),
        }
    )
    create = exp.Create(
        this=exp.Schema(
            this=t.runs.copy(),
            expressions=[
                exp.ColumnDef(
                    this=delta.ident(n_),
                    kind=delta.text_type(wh.dialect) if ty == "text" else exp.DataType.build(ty),
                )
                for n_, ty in RUN_COLUMNS
            ],
        ),
        kind="TABLE",
        exists=True,
    )
    wh.insert_rows(t.runs, run, before=[delta.render(create, wh.dialect)])


def last_run(wh: Warehouse, project: Any, name: str) -> dict[str, Any] | None:
    """The latest row of ``<set>__runs`` (version, trained_at, cutoff, promoted, reasons, metrics) or None."""
    t = score_tables(wh, project, name)
    q = (
        exp.select(*(delta.col(c) for c, _ in RUN_COLUMNS))
        .from_(t.runs.copy())
        .order_by(exp.Ordered(this=delta.col("version"), desc=True))
        .limit(1)
    )
    try:
        rows = wh.query(delta.render(q, wh.dialect))
    except Exception:  # noqa: BLE001 - never trained
        return None
    if not rows:
        return None
    out = dict(zip([c for c, _ in RUN_COLUMNS], rows[0]))
    out["promoted"] = [x for x in str(out["promoted"] or "").split(",") if x]
    out["reasons"] = json.loads(out["reasons"] or "{}")
    out["metrics"] = json.loads(out["metrics"] or "{}")
    return out


# ----------------------------------------------------------------------------------------------- publishing


def _replace(
    wh: Warehouse, live: exp.Table, staging: exp.Table, select: exp.Expression, columns: list[str]
) -> None:
    """Make ``live`` hold ``select``: rows replaced in place when its columns are the same (views on it stay
    valid), else the table re-created."""
    d = wh.dialect
    statements = delta.create_table_sql(staging, select, d)
    have = existing_columns(wh, live)
    if have is not None and sorted(have) == sorted(c.lower() for c in columns):
        names = [delta.ident(c) for c in columns]
        statements += [
            delta.render(exp.Delete(this=live.copy()), d),
            delta.render(
                exp.Insert(
                    this=exp.Schema(this=live.copy(), expressions=names),
                    expression=exp.select(*(exp.column(n.copy()) for n in names)).from_(staging.copy()),
                ),
                d,
            ),
        ]
    else:
        statements += delta.create_table_sql(live, exp.select(exp.Star()).from_(staging.copy()), d)
    statements.append(delta.drop_table_sql(staging, d))
    wh.execute(statements)


def publish(wh: Warehouse, project: Any, name: str) -> PublishResult:
    """Publish the latest run's promoted models into the live score tables; the others keep their scores."""
    p: PredictionSet = project.predictions[name]
    t = score_tables(wh, project, name)
    run = last_run(wh, project, name)
    if run is None:
        raise PredictionError(
            f"predictions.{name}: no training run yet; materialize predictions/{name} first"
        )
    promoted = set(run["promoted"])
    kept = {k: v for k, v in run["reasons"].items() if k not in promoted}
    pk = project.models[p.model].primary_key
    outputs = [*p.ltv_columns(), CHURN]
    published: list[str] = []
    rows = rec_rows = 0
    d = wh.dialect
    if promoted & set(outputs):
        prev = existing_columns(wh, t.scores)
        cand, old = "c", "o"
        select_cols: list[exp.Expression] = [delta.col(pk, cand)]
        for column in outputs:
            if column in promoted:
                select_cols.append(delta.col(column, cand).as_(column, quoted=True))
            elif prev is not None and column.lower() in prev:
                select_cols.append(delta.col(column, old).as_(column, quoted=True))
            else:
                select_cols.append(
                    exp.cast(exp.null(), exp.DataType.build("double")).as_(column, quoted=True)
                )
        select_cols += [delta.col("model_version", cand), delta.col("scored_at", cand)]
        q = exp.select(*select_cols).from_(exp.alias_(t.candidate.copy(), cand, table=True))
        if prev is not None:
            q = q.join(
                exp.alias_(t.scores.copy(), old, table=True),
                on=exp.EQ(this=delta.col(pk, cand), expression=delta.col(pk, old)),
                join_type="left",
            )
        _replace(wh, t.scores, t.staging, q, [pk, *outputs, "model_version", "scored_at"])
        published += [c for c in outputs if c in promoted]
    if RECOMMENDATIONS in promoted and p.recommendations is not None:
        cols = wh.relation_columns(t.candidate_recommendations)
        _replace(
            wh,
            t.recommendations,
            t.staging,
            exp.select(exp.Star()).from_(t.candidate_recommendations.copy()),
            cols,
        )
        published.append(RECOMMENDATIONS)
    if existing_columns(wh, t.scores) is not None:
        rows = int(wh.query(delta.count_sql(t.scores, d))[0][0])
    if existing_columns(wh, t.recommendations) is not None:
        rec_rows = int(wh.query(delta.count_sql(t.recommendations, d))[0][0])
    scored = pd.Timestamp(run["trained_at"]).to_pydatetime() if published else None
    return PublishResult(int(run["version"]), published, kept, rows, rec_rows, scored)


def feature_table(wh: Warehouse, project: Any, name: str, cutoff: dt.datetime) -> pd.DataFrame:
    """The feature table of set ``name`` as of ``cutoff`` as the warehouse computes it, one row per customer
    (``train`` adds the BG/NBD features, ``learn.BGNBD_FEATURES``, fitted in Python on it)."""
    c = _columns(wh, project, name)
    categories = [str(r[0]) for r in wh.query(F.categories_sql(c, cutoff, wh.dialect))] if c.category else []
    return _Reader(wh, c, categories).features(cutoff).drop(columns=["k", *learn.BGNBD_FEATURES])

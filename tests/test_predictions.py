"""Predictions: features computed in the warehouse, the time split, the promotion rule, metric bounds on
generated customers, a churn-risk segment activated through Dagster, and the validation messages.

DuckDB warehouses in a temporary directory; the customers and orders come from hand-made rows (exact feature
values) or from ``predictions.simulate`` (a known process, seeded).
"""

from __future__ import annotations

import csv
import datetime as dt
import math
import textwrap
from pathlib import Path

import dagster as dg
import duckdb
import pytest
from prediction_scenarios import HAND_FEATURES, HAND_ORDERS

from dinmo_dagster import names, sync
from dinmo_dagster.compile import CompileError, refresh_model, refresh_segment
from dinmo_dagster.config import ProjectError, load_project
from dinmo_dagster.definitions import build_definitions
from dinmo_dagster.predictions import engine
from dinmo_dagster.predictions.simulate import simulate
from dinmo_dagster.warehouses import Warehouse, warehouse_from_config

pytest.importorskip("lightgbm")
pytest.importorskip("sklearn")

MODELS = """
sources:
  wh: {type: duckdb, path: wh.duckdb}
models:
  customers:
    source: wh
    table: raw.customers
    primary_key: customer_id
    relationships:
      - {name: orders, model: orders, type: one_to_many, on: {customer_id: customer_id}}
  orders: {source: wh, kind: fact, table: raw.orders, primary_key: order_id, time_column: ordered_at}
"""

PREDICTIONS = """
predictions:
  value:
    model: customers
    events: orders
    amount: amount
    item: product_id
    item_category: category
    ltv_horizons_months: [3]
    churn_window_days: 90
    recommendations: {top_k: 10, exclude_purchased: true}
    schedule: {every: 1 day}
"""


def write_project(tmp_path: Path, extra: str = "", predictions: str = PREDICTIONS) -> None:
    (tmp_path / "dinmo.yaml").write_text(
        textwrap.dedent(MODELS) + textwrap.dedent(predictions) + textwrap.dedent(extra)
    )


def warehouse(tmp_path: Path) -> Warehouse:
    return warehouse_from_config("wh", {"type": "duckdb", "path": str(tmp_path / "wh.duckdb")})


def load_rows(tmp_path: Path, customers: list[tuple], orders: list[tuple]) -> None:
    con = duckdb.connect(str(tmp_path / "wh.duckdb"))
    con.execute("create schema if not exists raw")
    con.execute("create or replace table raw.customers (customer_id integer, name varchar)")
    con.execute(
        "create or replace table raw.orders (order_id integer, customer_id integer, ordered_at timestamp, "
        "amount double, product_id varchar, category varchar)"
    )
    con.executemany("insert into raw.customers values (?, ?)", customers)
    con.executemany("insert into raw.orders values (?, ?, ?, ?, ?, ?)", orders)
    con.close()


def load_simulation(tmp_path: Path, customers: int, seed: int = 1) -> None:
    sim = simulate(customers, seed=seed, rate_shape=0.7, mean_orders_per_year=8)
    con = duckdb.connect(str(tmp_path / "wh.duckdb"))
    con.execute("create schema if not exists raw")
    c, o = sim.customers, sim.orders  # noqa: F841 - DuckDB reads the Arrow tables by their Python names
    con.execute("create or replace table raw.customers as select * from c")
    con.execute("create or replace table raw.orders as select * from o")
    con.close()


def views(wh: Warehouse, project: object) -> None:
    for m in ("customers", "orders"):
        refresh_model(wh, project, m)  # type: ignore[arg-type]


T = dt.datetime


def test_features_as_of_a_cutoff_are_computed_in_the_warehouse(tmp_path: Path) -> None:
    write_project(tmp_path)
    load_rows(tmp_path, [(1, "ann"), (2, "bob"), (3, "cid")], HAND_ORDERS)
    project = load_project(tmp_path)
    wh = warehouse(tmp_path)
    views(wh, project)
    table = engine.feature_table(wh, project, "value", T(2024, 7, 1))
    rows = [
        {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()}
        for r in table.to_dict("records")
    ]
    assert rows == HAND_FEATURES


def test_time_split_and_the_history_it_needs(tmp_path: Path) -> None:
    # orders from 2024-08-01 to 2024-12-31: the 3-month back-test needs orders before 2024-07-01
    write_project(tmp_path)
    orders = [(i, 1 + i % 3, T(2024, 8, 1) + dt.timedelta(days=i), 10.0, "p1", "A") for i in range(153)]
    load_rows(tmp_path, [(1, "ann"), (2, "bob"), (3, "cid")], orders)
    project = load_project(tmp_path)
    wh = warehouse(tmp_path)
    views(wh, project)
    result = engine.train(wh, project, "value", now=T(2025, 1, 2, 8))
    assert result.cutoff == T(2025, 1, 1)  # the day after the latest order
    assert {k: e.reason for k, e in result.evaluations.items()} == {
        "ltv_3m": (
            "ltv_3m: the back-test needs 6 months of orders before the cutoff (orders from 2024-07-01); "
            "the first order is of 2024-08-01"
        ),
        "churn_probability": (
            "churn_probability: the back-test needs 180 days of orders before the cutoff (orders "
            "from 2024-07-05); the first order is of 2024-08-01"
        ),
        "recommendations": (
            "recommendations: 0 customers bought new items in the last 90 days; at least 20 are "
            "needed to back-test"
        ),
    }
    assert result.promoted == []


def test_metrics_beat_the_baselines_and_a_losing_model_keeps_the_previous_scores(tmp_path: Path) -> None:
    write_project(tmp_path)
    load_simulation(tmp_path, 3000)
    project = load_project(tmp_path)
    wh = warehouse(tmp_path)
    views(wh, project)
    first = engine.train(wh, project, "value", now=T(2025, 1, 2, 8))
    ev = first.evaluations
    # bounds on the back-test of 3,000 generated customers (seeded: the same figures on every run)
    assert first.cutoff == T(2025, 1, 1) and first.version == 1
    assert ev["ltv_3m"].model["spearman"] >= ev["ltv_3m"].baseline["spearman"] + 0.05
    assert ev["ltv_3m"].model["mae"] < 0.9 * ev["ltv_3m"].baseline["mae"]
    assert ev["churn_probability"].model["roc_auc"] > 0.8
    assert ev["churn_probability"].model["brier"] < ev["churn_probability"].baseline["brier"] - 0.03
    assert (
        ev["recommendations"].model["precision_at_k"] > 1.3 * ev["recommendations"].baseline["precision_at_k"]
    )
    assert first.promoted == ["ltv_3m", "churn_probability", "recommendations"]
    assert list(first.importance["ltv_3m"])[:1] and sum(first.importance["ltv_3m"].values()) == pytest.approx(
        100, 0.01
    )
    published = engine.publish(wh, project, "value")
    assert (published.published, published.rows, published.recommendation_rows) == (
        ["ltv_3m", "churn_probability", "recommendations"],
        3000,
        30000,
    )
    before = wh.query("select * from dinmo_predictions.value order by customer_id")
    assert before[0][-2:] == ("v1", T(2025, 1, 2, 8))
    assert wh.query(
        "select count(*) from dinmo_predictions.value where churn_probability is null"
    ) == wh.query(
        "select count(*) from raw.customers c where not exists "
        "(select 1 from raw.orders o where o.customer_id = c.customer_id)"
    )
    # the same data again: the same scores (deterministic), version 2
    again = engine.train(wh, project, "value", now=T(2025, 1, 2, 8))
    assert again.version == 2 and again.evaluations["ltv_3m"].model == ev["ltv_3m"].model
    assert wh.query(
        "select * exclude (model_version) from dinmo_predictions.value__candidate order by 1"
    ) == [r[:-2] + r[-1:] for r in before]

    # orders where the historical average is exact: every customer spends the same amount every day, so the
    # learned model cannot beat the baseline's MAE of 0: it is not promoted and the previous scores stay
    con = duckdb.connect(str(tmp_path / "wh.duckdb"))
    con.execute(
        "create or replace table raw.orders as select row_number() over () as order_id, c.customer_id, "
        "timestamp '2024-01-01' + to_days(cast(d.range as integer)) as ordered_at, "
        "cast(c.customer_id % 50 + 1 as double) as amount, 'p1' as product_id, 'A' as category "
        "from raw.customers c, range(366) d where c.customer_id <= 200"
    )
    con.close()
    third = engine.train(wh, project, "value", now=T(2025, 1, 3, 8))
    assert third.evaluations["ltv_3m"].baseline["mae"] == 0.0
    assert not third.evaluations["ltv_3m"].promoted
    assert third.evaluations["ltv_3m"].reason == (
        "ltv_3m does not beat its baseline: spearman 0.9999 vs baseline "
        "1.0000; mae 49.4871 vs baseline 0.0000"
    )
    kept = engine.publish(wh, project, "value")
    assert kept.published == [] and set(kept.kept) == {"ltv_3m", "churn_probability", "recommendations"}
    assert wh.query("select * from dinmo_predictions.value order by customer_id") == before


def test_churn_risk_segment_on_predictions_activated_through_dagster(tmp_path: Path) -> None:
    extra = """
        segments:
          churn_risk: {model: predictions.value, filter: {attribute: churn_probability, op: gt, value: 0.7}}
          customers_at_risk:
            model: customers
            filter: {attribute: predictions.value.churn_probability, op: gt, value: 0.7}
        destinations:
          out: {type: local, path: out}
        activations:
          churn_file:
            segment: churn_risk
            destination: out
            file_name: churn
            mapping: {customer_id: customer_id, churn_probability: churn, ltv_3m: ltv_3m}
          customers_file: {segment: customers_at_risk, destination: out, file_name: customers,
                           mapping: {customer_id: id}}
        """
    write_project(tmp_path, extra)
    load_simulation(tmp_path, 2000, seed=2)
    project = load_project(tmp_path)
    defs = build_definitions(project)
    graph = defs.resolve_asset_graph()
    key = dg.AssetKey
    assert graph.get(key(["models", "predictions.value"])).parent_keys == {
        key(["predictions", "value", "scores"])
    }
    assert graph.get(key(["predictions", "value", "scores"])).parent_keys == {key(["predictions", "value"])}
    assert graph.get(key(["predictions", "value"])).parent_keys == {
        key(["models", "customers"]),
        key(["models", "orders"]),
    }
    assert (
        key(["models", "predictions.value"]) in graph.get(key(["segments", "customers_at_risk"])).parent_keys
    )
    sync_job = defs.resolve_job_def(names.job_name("churn_file"))
    assert key(["predictions", "value"]) not in sync_job.asset_layer.selected_asset_keys  # own schedule
    assert defs.resolve_schedule_def("predict_value_schedule").cron_schedule == "0 0 * * *"

    instance = dg.DagsterInstance.ephemeral()
    trained = defs.resolve_job_def("predict_value").execute_in_process(instance=instance)
    assert trained.success
    md = {
        k: v.value
        for k, v in instance.get_latest_materialization_event(
            key(["predictions", "value"])
        ).asset_materialization.metadata.items()
    }
    assert md["model_version"] == "v1"
    assert md["backtest"].startswith("| model | metric | model | baseline | promoted | customers |\n")
    assert "churn_probability" in md["promoted"]
    scores_md = {
        k: v.value
        for k, v in instance.get_latest_materialization_event(
            key(["predictions", "value", "scores"])
        ).asset_materialization.metadata.items()
    }
    assert scores_md["rows"] == 2000 and scores_md["model_version"] == "v1"

    wh = warehouse(tmp_path)
    expected = wh.query(
        "select customer_id, churn_probability, ltv_3m from dinmo_predictions.value "
        "where churn_probability > 0.7 order by customer_id"
    )
    assert 0 < len(expected) < 2000
    for activation in ("churn_file", "customers_file"):
        part = sync.new_partition_key()
        instance.add_dynamic_partitions(names.partitions_name(activation), [part])
        result = defs.resolve_job_def(names.job_name(activation)).execute_in_process(
            instance=instance, partition_key=part
        )
        assert result.success
    with next((tmp_path / "out").glob("churn*.csv")).open() as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["customer_id", "churn", "ltv_3m"]
    assert sorted((int(r[0]), float(r[1]), float(r[2])) for r in rows[1:]) == expected
    with next((tmp_path / "out").glob("customers*.csv")).open() as f:
        assert sorted(int(r[0]) for r in list(csv.reader(f))[1:]) == [r[0] for r in expected]


UNKNOWN_HORIZON = """
predictions:
  value: {model: customer, events: orders, amount: amount, recommendations: {top_k: 10},
          ltv_horizons_months: [3, 40]}
"""
WRONG_MODELS = """
predictions:
  value: {model: customer, events: customers, amount: amount, recommendations: {top_k: 10}}
"""
UNKNOWN_KEY = """
predictions:
  value: {model: customers, events: orders, amount: amount, horizon: 3, churn_window_days: 3}
"""
P = "dinmo.yaml: predictions.value"
VALIDATION_CASES = [
    (UNKNOWN_HORIZON, [f"{P}.ltv_horizons_months[1]: Input should be less than or equal to 36, found 40"]),
    (
        WRONG_MODELS,
        [
            f"{P}.model: unknown model 'customer'; did you mean 'customers'? allowed: customers, orders",
            (
                f"{P}.events: model 'customers' is a dimension model without time_column; "
                "allowed: a fact model with a time_column (the orders, dated)"
            ),
            (
                f"{P}.recommendations: needs the product column; add predictions.value.item "
                "(allowed: a column of 'customers') or remove recommendations"
            ),
        ],
    ),
    (
        UNKNOWN_KEY,
        [
            f"{P}.churn_window_days: Input should be greater than or equal to 7, found 3",
            (
                f"{P}: unknown key 'horizon'; allowed: amount, churn_window_days, customer_key, description, "
                "events, item, item_category, ltv_horizons_months, model, recommendations, schedule, seed"
            ),
        ],
    ),
]


@pytest.mark.parametrize(("predictions", "problems"), VALIDATION_CASES)
def test_validation_messages(tmp_path: Path, predictions: str, problems: list[str]) -> None:
    write_project(tmp_path, predictions=predictions)
    with pytest.raises(ProjectError) as err:
        load_project(tmp_path)
    assert err.value.problems == problems


def test_filter_on_an_unknown_prediction_attribute_names_the_model(tmp_path: Path) -> None:
    write_project(
        tmp_path,
        """
        segments:
          risky: {model: customers, filter: {attribute: predictions.value.churn, op: gt, value: 0.7}}
        """,
    )
    load_rows(tmp_path, [(1, "ann")], HAND_ORDERS[:1])
    project = load_project(tmp_path)
    wh = warehouse(tmp_path)
    views(wh, project)
    refresh_model(wh, project, "predictions.value")  # the empty score table, before any training
    with pytest.raises(CompileError) as err:
        refresh_segment(wh, project, "risky")
    assert str(err.value).splitlines()[-1].strip() == (
        "segments.risky.filter.attribute: unknown attribute 'churn' of model 'predictions.value' (through "
        "relationship 'predictions.value'); valid: churn_probability, customer_id, ltv_3m, model_version, "
        "scored_at"
    )


def test_validate_connect_on_a_new_project_before_the_first_training(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from dinmo_dagster.cli import main

    extra = """
        segments:
          churn_risk: {model: predictions.value, filter: {attribute: churn_probability, op: gt, value: 0.7}}
          customers_at_risk:
            model: customers
            filter: {attribute: predictions.value.churn_probability, op: gt, value: 0.7}
          recommended_p42:
            model: customers
            filter: {relation: predictions.value_recommendations, exists: true,
                     where: {attribute: item, op: eq, value: p42}}
        destinations:
          out: {type: local, path: out}
        activations:
          churn_file:
            segment: churn_risk
            destination: out
            file_name: churn
            mapping: {customer_id: customer_id, churn_probability: churn, ltv_3m: ltv_3m}
        """
    write_project(tmp_path, extra)
    load_rows(tmp_path, [(1, "ann")], HAND_ORDERS[:1])
    monkeypatch.chdir(tmp_path)
    # the score models read tables no training made yet: validation knows their columns from the configuration
    assert main(["--project", str(tmp_path), "validate", "--connect"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == (
        f"{tmp_path}: 1 source(s), 4 model(s), 3 segment(s), 1 destination(s), 1 activation(s) "
        "(connections and entities checked): valid"
    )
    with duckdb.connect(str(tmp_path / "wh.duckdb"), read_only=True) as con:  # and it created nothing
        assert con.execute(
            "select distinct schema_name from information_schema.schemata order by 1"
        ).fetchall() == [
            ("information_schema",),
            ("main",),
            ("pg_catalog",),
            ("raw",),
        ]
    # a column the scores will not have is still found
    text = (tmp_path / "dinmo.yaml").read_text().replace("ltv_3m: ltv_3m}", "ltv_6m: ltv_6m}")
    (tmp_path / "dinmo.yaml").write_text(text)
    assert main(["--project", str(tmp_path), "validate", "--connect"]) == 1
    assert capsys.readouterr().out.splitlines() == [
        f"1 problem(s) in {tmp_path} (checked with --connect):",
        (
            "  activations.churn_file: mapping: column 'ltv_6m' is not in segment 'churn_risk'; available: "
            "customer_id, ltv_3m, churn_probability, model_version, scored_at"
        ),
    ]


def test_bgnbd_recovers_the_dropout_of_the_process_and_says_who_is_alive() -> None:
    import numpy as np
    import pandas as pd

    from dinmo_dagster.predictions import learn

    # frequency, recency and tenure as of the end of 20,000 generated customers' history
    sim = simulate(20000, seed=7, rate_shape=0.7, mean_orders_per_year=24)
    ids = sim.orders.column("customer_id").to_numpy() - 1
    days = (sim.orders.column("ordered_at").to_numpy() - np.datetime64(sim.end)) / np.timedelta64(1, "D")
    first, last = np.full(20000, np.inf), np.full(20000, -np.inf)
    np.minimum.at(first, ids, np.floor(days))
    np.maximum.at(last, ids, np.floor(days))
    x = pd.DataFrame({"frequency": np.bincount(ids, minlength=20000).astype(float), "tenure_days": -first,
                      "recency_days": -last})  # fmt: skip
    fitted = learn.BgNbd.fit(x[x["frequency"] > 0])
    assert fitted is not None
    # the dropout's beta(0.79, 2.43) and the rates' gamma(0.7, 0.7 * 365 / 24) of the process
    # (the process also has regular gaps, seasons and rate changes, which BG/NBD does not model)
    assert fitted.a == pytest.approx(0.79, abs=0.1) and fitted.b == pytest.approx(2.43, abs=0.3)
    assert fitted.r == pytest.approx(0.7, abs=0.1) and fitted.alpha == pytest.approx(0.7 * 365 / 24, rel=0.15)
    hand = pd.DataFrame({"frequency": [3.0, 1.0, 0.0], "recency_days": [11.0, 1.0, None],
                         "tenure_days": [173.0, 1.0, None]})  # fmt: skip
    got = learn.BgNbd(r=0.7, alpha=10.0, a=0.8, b=2.4).features(hand)
    # 2 repeat orders, the last 162 days after the first, 173 days of tenure: 1 / (1 + a / (b + x - 1) * ...)
    alive = 1 / (1 + 0.8 / (2.4 + 1) * ((10 + 173) / (10 + 162)) ** (0.7 + 2))
    assert got["p_alive"].tolist()[:2] == [pytest.approx(alive), 1.0]  # one order: no repeat to leave after
    assert got["bgnbd_rate"].tolist()[:2] == [pytest.approx(2.7 / 183), pytest.approx(0.7 / 11)]
    assert got.iloc[2].isna().all()

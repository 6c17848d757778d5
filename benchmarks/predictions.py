"""Predictions benchmark: every model against its baseline and against the truth of a known process.

    .venv/bin/python benchmarks/predictions.py [--customers 100000] [--large 1000000] [--orders-per-year 24]
                                               [--out benchmarks/results/predictions.json] [--workdir DIR]
                                               [--reuse]

Customers and orders come from ``dinmo_dagster.predictions.simulate``, with orders simulated a year past the
cutoff: the history before it goes into a DuckDB warehouse, the year after is the truth. The process is the
standard one of non-contractual customer behaviour, chosen for realism and not for any model:

- order rates gamma-distributed across customers (shape 0.7 here: a long tail of heavy buyers), the NBD of
  Pareto/NBD and BG/NBD, which fits purchase counts in study after study;
- gaps between orders gamma-distributed with a regularity of each customer's own (Pareto/GGG, Platzer &
  Reutterer 2016): real buyers restock on a rhythm, they are not memoryless;
- churn as a latent dropout after a repeat purchase with a beta-distributed probability (BG/NBD), at the
  CDNow estimates of Fader, Hardie & Lee (2005): nobody announces it, so "no order for a while" is evidence,
  not the event. This is what keeps the recency rule from being an oracle: a frequent buyer silent for two
  months has probably left, a rare one has not;
- a yearly season (a December peak, a summer trough), as retail has; the cutoff is the first of January;
- a change of rate at a random time per customer (log-normal factor): real rates drift with life events;
- 10% of the accounts never order; order values per customer independent of timing (gamma-gamma's
  assumption).

For each size the training runs in a child process (``benchmarks/measure.py``: wall time, CPU time and peak
RSS of that process alone, DuckDB included) through the product's own path (model views,
``predictions.engine.train`` and ``publish``). Then the published scores, made at the cutoff, are judged on
what really happened next:

- lifetime value (3 and 12 months): Spearman and MAE of the model, of the historical-average baseline and of
  the oracle (expected spend from each customer's true state at the cutoff: rate, regularity, dropout
  probability, whether they already left, time since their last order; ``Simulation.oracle``, 100 futures
  per customer) against the realised spend;
- churn (no order in the next 90 days, customers with an order before the cutoff): ROC AUC and Brier of the
  model, of the recency rule and of the oracle's probability. The oracle knows whether the customer already
  left, which no warehouse records: it bounds what any model can reach from above, it is not reachable;
- both next to the parameter oracle (``Simulation.parameter_oracle``): it knows each customer's true
  parameters (rate, regularity, dropout probability, rate change, season) but not whether they already
  left, which it infers from the silence since the last order (exactly, for churn). Any predictor that sees
  only the orders does at most as well as it (up to sampling noise), so the gap between it and the recency
  rule is the most a churn model can gain on this data;
- for churn also the Bayes posterior from the orders alone (``Simulation.posterior_churn``): the probability
  of no order given each customer's orders and the population's distributions, the parameters integrated
  out. It is about the best any predictor from the data can do (a grid, and without the rate change);
- recommendations: precision@10 and recall@10 of the published lists and of popularity on the new items each
  customer bought in the next 90 days.

Goals at 100k customers: LTV Spearman +0.1 over the baseline, churn AUC +0.05, precision@10 x1.5. The large
size (``--large``, 0 to skip) measures training time and peak memory. The load average is recorded: on a
shared machine compare CPU seconds, not wall time. ``--reuse`` with ``--workdir`` trains again on the
warehouse and truth a previous run built there (the oracle's futures take minutes at 100k customers).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import duckdb
import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from dinmo_dagster.predictions import learn
from dinmo_dagster.predictions.simulate import Simulation, simulate

HORIZONS = (3, 12)
WINDOW = 90
TOP_K = 10
ORACLE_DRAWS = 100  # futures drawn per customer for the oracle
# the arrays the parameter oracle adds to truth.npz (a --reuse of an older workdir computes them)
PARAMETER_KEYS = ("param_oracle_churn", "posterior_churn", *(f"param_oracle_{m}m" for m in HORIZONS))


def add_months(when: dt.datetime, months: int) -> dt.datetime:
    return when.replace(
        year=when.year + (when.month - 1 + months) // 12, month=(when.month - 1 + months) % 12 + 1
    )


def project_yaml(db: Path) -> str:
    return textwrap.dedent(f"""
        sources:
          wh: {{type: duckdb, path: {db}}}
        models:
          customers:
            source: wh
            table: raw.customers
            primary_key: customer_id
            relationships:
              - {{name: orders, model: orders, type: one_to_many, on: {{customer_id: customer_id}}}}
          orders:
            {{source: wh, kind: fact, table: raw.orders, primary_key: order_id, time_column: ordered_at}}
        predictions:
          value:
            model: customers
            events: orders
            amount: amount
            item: product_id
            item_category: category
            ltv_horizons_months: [{", ".join(map(str, HORIZONS))}]
            churn_window_days: {WINDOW}
            recommendations: {{top_k: {TOP_K}, exclude_purchased: true, window_days: {WINDOW}}}
        """)


def simulated(customers: int, orders_per_year: float, seed: int) -> Simulation:
    return simulate(
        customers, seed=seed, rate_shape=0.7, mean_orders_per_year=orders_per_year, future_days=400
    )


def parameter_bound(sim: Simulation) -> dict[str, np.ndarray]:
    """The parameter oracle's churn probability and expected spend per horizon, and the Bayes posterior's
    churn probability (see the module docstring)."""
    out = {
        "param_oracle_churn": sim.parameter_oracle(WINDOW, draws=ORACLE_DRAWS)[1],
        "posterior_churn": sim.posterior_churn(WINDOW),
    }
    for months in HORIZONS:
        horizon = (add_months(sim.end, months) - sim.end).days
        out[f"param_oracle_{months}m"] = sim.parameter_oracle(horizon, draws=ORACLE_DRAWS)[0] * sim.value
    return out


def build(workdir: Path, customers: int, orders_per_year: float, seed: int, with_truth: bool = True) -> dict:
    """Simulate, load the history into DuckDB, save the truth (``with_truth``); returns the sizes."""
    started = time.perf_counter()
    sim = simulated(customers, orders_per_year, seed)
    db = workdir / "wh.duckdb"
    con = duckdb.connect(str(db))
    con.execute("create schema raw")
    c, o = sim.customers, sim.orders  # noqa: F841 - DuckDB reads the Arrow tables by their Python names
    con.execute("create table raw.customers as select * from c")
    con.execute("create table raw.orders as select * from o")
    con.close()
    (workdir / "dinmo.yaml").write_text(project_yaml(db))
    sizes = {"customers": customers, "orders": sim.orders.num_rows, "future_orders": sim.future.num_rows}
    if not with_truth:  # the large size measures time and memory only
        return {**sizes, "build_s": round(time.perf_counter() - started, 1)}
    end = sim.end
    truth: dict[str, np.ndarray] = {}
    oracles: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def oracle(days: int) -> tuple[np.ndarray, np.ndarray]:
        if days not in oracles:
            oracles[days] = sim.oracle(days, draws=ORACLE_DRAWS)
        return oracles[days]

    for months in HORIZONS:
        horizon = (add_months(end, months) - end).days
        spend, _ = sim.truth(horizon)
        truth[f"spend_{months}m"] = spend
        # the oracle: expected orders from each customer's true state at the cutoff, times the true value
        expected, _ = oracle(horizon)
        truth[f"oracle_{months}m"] = expected * sim.value
    _, count = sim.truth(WINDOW)
    truth["orders_next"] = count
    truth["oracle_churn"] = oracle(WINDOW)[1]
    truth.update(parameter_bound(sim))
    # new items bought in the window after the cutoff, per customer
    fut = sim.future
    t = fut.column("ordered_at").to_numpy().astype("datetime64[s]")
    keep = t < np.datetime64(end + dt.timedelta(days=WINDOW), "s")
    pairs = {
        (int(a), str(b))
        for a, b in zip(
            fut.column("customer_id").to_numpy()[keep],
            np.asarray(fut.column("product_id").to_pylist(), dtype=object)[keep],
        )
    }
    owned = {
        (int(a), str(b))
        for a, b in zip(
            sim.orders.column("customer_id").to_numpy(), sim.orders.column("product_id").to_pylist()
        )
    }
    new: dict[int, list[str]] = {}
    for a, b in pairs - owned:
        new.setdefault(a, []).append(b)
    (workdir / "new_items.json").write_text(json.dumps({str(k): sorted(v) for k, v in new.items()}))
    np.savez(workdir / "truth.npz", **truth)
    return {**sizes, "build_s": round(time.perf_counter() - started, 1)}


def train_child(workdir: Path) -> None:
    """In a fresh process: model views, training and publishing, as the assets run them."""
    from dinmo_dagster.compile import refresh_model
    from dinmo_dagster.config import load_project
    from dinmo_dagster.predictions import engine
    from dinmo_dagster.warehouses import warehouse_from_config

    project = load_project(workdir)
    wh = warehouse_from_config("wh", project.sources["wh"].model_dump(by_alias=True, exclude_none=True))
    started = time.perf_counter()
    with wh.session():
        for m in ("customers", "orders", "predictions.value", "predictions.value_recommendations"):
            refresh_model(wh, project, m)
        result = engine.train(wh, project, "value")
        trained = time.perf_counter()
        published = engine.publish(wh, project, "value")
    done = time.perf_counter()
    out = {
        "train_s": round(trained - started, 1),
        "publish_s": round(done - trained, 1),
        "cutoff": result.cutoff.isoformat(),
        "promoted": result.promoted,
        "backtest": {
            k: {
                "model": e.model,
                "baseline": e.baseline,
                "promoted": e.promoted,
                "reason": e.reason,
                "rows": e.rows,
            }
            for k, e in result.evaluations.items()
        },
        "importance": {k: dict(list(v.items())[:5]) for k, v in result.importance.items()},
        "timings_s": result.timings,
        "published": published.published,
        "rows": published.rows,
        "recommendation_rows": published.recommendation_rows,
    }
    (workdir / "train.json").write_text(json.dumps(out, default=str))


def judge(workdir: Path) -> dict:
    """The published scores (made at the cutoff) against what happened next, next to baselines and oracle."""
    from sklearn.metrics import brier_score_loss, roc_auc_score

    truth = dict(np.load(workdir / "truth.npz"))
    con = duckdb.connect(str(workdir / "wh.duckdb"), read_only=True)
    cols = ", ".join(f"ltv_{m}m" for m in HORIZONS)
    scores = con.execute(
        f"select customer_id, {cols}, churn_probability from dinmo_predictions.value order by customer_id"
    ).fetchnumpy()
    cutoff = con.execute(
        "select cutoff from dinmo_predictions.value__runs order by version desc limit 1"
    ).fetchone()[0]
    features = con.execute(
        "select c.customer_id, count(o.order_id) as n, coalesce(sum(o.amount), 0) as total, "
        f"date_diff('day', min(o.ordered_at), timestamp '{cutoff}') as tenure, "
        f"date_diff('day', max(o.ordered_at), timestamp '{cutoff}') as recency "
        "from raw.customers c left join raw.orders o using (customer_id) group by c.customer_id order by 1"
    ).fetchnumpy()
    recs = con.execute(
        "select customer_id, item from dinmo_predictions.value_recommendations order by customer_id, rank"
    ).fetchall()
    items = con.execute(
        "select product_id, count(distinct customer_id) n from raw.orders group by 1 "
        "order by n desc, product_id"
    ).fetchall()
    owned_rows = con.execute("select distinct customer_id, product_id from raw.orders").fetchall()
    con.close()
    out: dict = {}

    def spearman(a: np.ndarray, b: np.ndarray) -> float:
        from scipy.stats import spearmanr

        return round(float(spearmanr(a, b).statistic), 4)

    tenure = np.maximum(np.nan_to_num(features["tenure"].astype(float), nan=0.0), 30.0)
    for m in HORIZONS:
        actual = truth[f"spend_{m}m"]
        model = np.nan_to_num(scores[f"ltv_{m}m"].astype(float), nan=0.0)
        horizon_days = {3: 90, 12: 365}[m]
        baseline = features["total"].astype(float) / tenure * horizon_days
        oracle = truth[f"oracle_{m}m"]
        bound = truth[f"param_oracle_{m}m"]
        out[f"ltv_{m}m"] = {
            name: {"spearman": spearman(actual, p), "mae": round(float(np.mean(np.abs(actual - p))), 2)}
            for name, p in (
                ("model", model),
                ("baseline", baseline),
                ("oracle", oracle),
                ("parameter_oracle", bound),
            )
        }
    active = features["n"] > 0
    churned = (truth["orders_next"][active] == 0).astype(int)
    prob = scores["churn_probability"].astype(float)[active]
    recency = features["recency"].astype(float)[active]
    out["churn_probability"] = {
        "model": {
            "roc_auc": round(float(roc_auc_score(churned, prob)), 4),
            "brier": round(float(brier_score_loss(churned, prob)), 4),
        },
        "baseline": {
            "roc_auc": round(float(roc_auc_score(churned, recency)), 4),
            "brier": round(float(brier_score_loss(churned, (recency > WINDOW).astype(float))), 4),
        },
        "oracle": {
            "roc_auc": round(float(roc_auc_score(churned, truth["oracle_churn"][active])), 4),
            "brier": round(float(brier_score_loss(churned, truth["oracle_churn"][active])), 4),
        },
        "parameter_oracle": {
            "roc_auc": round(float(roc_auc_score(churned, truth["param_oracle_churn"][active])), 4),
            "brier": round(float(brier_score_loss(churned, truth["param_oracle_churn"][active])), 4),
        },
        "posterior": {
            "roc_auc": round(float(roc_auc_score(churned, truth["posterior_churn"][active])), 4),
            "brier": round(float(brier_score_loss(churned, truth["posterior_churn"][active])), 4),
        },
        "customers": int(active.sum()),
        "churn_rate": round(float(churned.mean()), 4),
    }
    lists: dict[str, list[str]] = {}
    for cid, item in recs:
        lists.setdefault(str(cid), []).append(item)
    new = {k: set(v) for k, v in json.loads((workdir / "new_items.json").read_text()).items()}
    owned: dict[str, set[str]] = {}
    for cid, item in owned_rows:
        owned.setdefault(str(cid), set()).add(item)
    popular = [i for i, _ in items]
    base = {
        c: [i for i in popular[: TOP_K + len(owned.get(c, ()))] if i not in owned.get(c, set())][:TOP_K]
        for c in new
    }
    model_ev = learn.evaluate_recommendations(lists, base, new, TOP_K, "recommendations")
    out["recommendations"] = {"model": model_ev.model, "baseline": model_ev.baseline, "customers": len(new)}
    return out


def run_size(
    customers: int,
    orders_per_year: float,
    seed: int,
    workdir: Path,
    with_truth: bool = True,
    reuse: bool = False,
) -> dict:
    workdir.mkdir(parents=True, exist_ok=True)
    saved = workdir / "sizes.json"
    if reuse and saved.exists():  # the same warehouse and truth as a previous run with --workdir
        sizes = json.loads(saved.read_text())
        truth_file = workdir / "truth.npz"
        if with_truth and truth_file.exists():
            truth = dict(np.load(truth_file))
            if not all(k in truth for k in PARAMETER_KEYS):  # a workdir from before the parameter oracle
                truth.update(parameter_bound(simulated(customers, orders_per_year, seed)))
                np.savez(truth_file, **truth)
    else:
        sizes = build(workdir, customers, orders_per_year, seed, with_truth)
        saved.write_text(json.dumps(sizes))
    print(
        f"{customers} customers: {sizes['orders']} orders of history ({sizes['build_s']} s to build)",
        flush=True,
    )
    measured = workdir / "measure.json"
    load_before = os.getloadavg()
    subprocess.run(
        [
            sys.executable,
            str(HERE / "measure.py"),
            str(measured),
            sys.executable,
            __file__,
            "_train",
            str(workdir),
        ],
        check=True,
    )
    load_after = os.getloadavg()
    m = json.loads(measured.read_text())
    trained = json.loads((workdir / "train.json").read_text())
    result = {
        **sizes,
        "wall_s": round(m["wall_s"], 1),
        "peak_rss_mb": round(m["maxrss_kb"] / 1024),
        "cpu_s": round(m["user_s"] + m["sys_s"], 1),
        "load_average_before": load_before,
        "load_average_after": load_after,
        "training": trained,
        **({"against_truth": judge(workdir)} if with_truth else {}),
    }
    return result


def report(r: dict) -> None:
    print(
        f"\n== {r['customers']} customers, {r['orders']} orders: training + publishing {r['wall_s']} s wall "
        f"({r['training']['train_s']} s training, {r['training']['publish_s']} s publishing), "
        f"{r['cpu_s']} s CPU, "
        f"peak RSS {r['peak_rss_mb']} MB; load average {r['load_average_before'][0]:.1f} -> "
        f"{r['load_average_after'][0]:.1f} (2 cores)"
    )
    print(f"phases (s): {r['training']['timings_s']}")
    print("back-test (promotion rule):")
    for k, e in r["training"]["backtest"].items():
        print(f"  {k:18} model {e['model']}  baseline {e['baseline']}  promoted {e['promoted']}")
    if "against_truth" not in r:
        return
    print("published scores against the next months (truth):")
    for k, e in r["against_truth"].items():
        shown = {
            n: v
            for n, v in e.items()
            if n in ("model", "baseline", "oracle", "parameter_oracle", "posterior")
        }
        print(f"  {k:18} " + "  ".join(f"{n} {v}" for n, v in shown.items()))
    t = r["against_truth"]
    goals = {
        "ltv_3m spearman gain (goal +0.1)": t["ltv_3m"]["model"]["spearman"]
        - t["ltv_3m"]["baseline"]["spearman"],
        "ltv_12m spearman gain (goal +0.1)": t["ltv_12m"]["model"]["spearman"]
        - t["ltv_12m"]["baseline"]["spearman"],
        "churn AUC gain (goal +0.05)": t["churn_probability"]["model"]["roc_auc"]
        - t["churn_probability"]["baseline"]["roc_auc"],
        "churn AUC gain reachable from the data, at most (parameter oracle)": t["churn_probability"][
            "parameter_oracle"
        ]["roc_auc"]
        - t["churn_probability"]["baseline"]["roc_auc"],
        "churn AUC gain of the Bayes posterior from the orders": t["churn_probability"]["posterior"][
            "roc_auc"
        ]
        - t["churn_probability"]["baseline"]["roc_auc"],
        "precision@10 ratio (goal x1.5)": t["recommendations"]["model"]["precision_at_k"]
        / max(t["recommendations"]["baseline"]["precision_at_k"], 1e-9),
    }
    for k, v in goals.items():
        print(f"  {k}: {v:.3f}")
    r["goals"] = {k: round(v, 4) for k, v in goals.items()}


def main() -> int:
    if len(sys.argv) > 2 and sys.argv[1] == "_train":
        train_child(Path(sys.argv[2]))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--customers", type=int, default=100_000, help="0: skip the size judged against the truth"
    )
    ap.add_argument("--large", type=int, default=1_000_000, help="0: skip the timing and memory size")
    ap.add_argument("--orders-per-year", type=float, default=24.0)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--out", default=str(HERE / "results" / "predictions.json"))
    ap.add_argument(
        "--workdir", default=None, help="keep the warehouses there (default: a temporary directory)"
    )
    ap.add_argument(
        "--reuse",
        action="store_true",
        help="with --workdir: train again on the warehouse and truth a previous run built there",
    )
    args = ap.parse_args()
    root = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="dinmo_predictions_"))
    results = []
    try:
        sizes = [
            *([(args.customers, True)] if args.customers else []),
            *([(args.large, False)] if args.large else []),
        ]
        for n, truth in sizes:
            r = run_size(n, args.orders_per_year, args.seed, root / f"n{n}", truth, args.reuse)
            report(r)
            results.append(r)
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(
                json.dumps({"results": results, "cpus": os.cpu_count()}, indent=2, default=str)
            )
    finally:
        if not args.workdir:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

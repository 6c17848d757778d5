"""Customers and orders drawn from a known process, so predictions can be judged against the truth.

Each customer has a segment, a signup day, an order rate (orders per day, gamma-distributed), a mean order
value (log-normal) and a churn hazard (per day): they stop ordering at an exponential time after signup.
While alive, orders come as a Poisson process; each order's value is log-normal around the customer's mean,
and its product is drawn from the segment's preferred items (80%) or from all items (20%). Orders are
simulated up to ``end + future_days``: those before ``end`` are the history a warehouse holds, those after
are the truth a prediction made at ``end`` is judged on (``Simulation.truth``).

Used by ``benchmarks/predictions.py`` and the tests; numpy only, seeded.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

__all__ = ["Simulation", "simulate"]


@dataclass
class Simulation:
    customers: pa.Table  # customer_id, segment, signup_at
    orders: pa.Table  # order_id, customer_id, ordered_at, amount, product_id, category (before end)
    future: pa.Table  # the same columns, at or after end
    end: dt.datetime
    rate: np.ndarray  # true orders per day, per customer
    value: np.ndarray  # true mean order value
    hazard: np.ndarray  # true churn hazard per day
    alive_until: np.ndarray  # days after the start when the customer stops ordering

    def truth(self, days: int) -> tuple[np.ndarray, np.ndarray]:
        """Per customer (in customer_id order): the spend and the number of orders in [end, end + days)."""
        n = self.customers.num_rows
        t = self.future.column("ordered_at").to_numpy().astype("datetime64[s]")
        keep = t < np.datetime64(self.end + dt.timedelta(days=days), "s")
        ids = self.future.column("customer_id").to_numpy()[keep]
        amounts = self.future.column("amount").to_numpy()[keep]
        spend = np.bincount(ids - 1, weights=amounts, minlength=n)
        count = np.bincount(ids - 1, minlength=n)
        return spend, count


def simulate(
    customers: int,
    *,
    days: int = 900,
    future_days: int = 365,
    items: int = 200,
    segments: int = 5,
    seed: int = 0,
    end: dt.datetime = dt.datetime(2025, 1, 1),
    mean_orders_per_year: float = 4.0,
    rate_shape: float = 1.5,
    mean_lifetime_days: float = 500.0,
) -> Simulation:
    """``customers`` customers over ``days`` days of history before ``end`` (and ``future_days`` after).

    ``rate_shape``: the gamma shape of the order rates (smaller: more unequal customers);
    ``mean_lifetime_days``: the mean time from signup to churn."""
    rng = np.random.default_rng(seed)
    n = customers
    start = end - dt.timedelta(days=days)
    segment = rng.integers(0, segments, n)
    signup = rng.uniform(0, days - 30, n)
    rate = rng.gamma(rate_shape, mean_orders_per_year / 365 / rate_shape, n)
    value = np.exp(rng.normal(3.8, 0.6, n) + 0.15 * segment)
    hazard = rng.gamma(1.2, 1 / mean_lifetime_days / 1.2, n)
    alive_until = signup + rng.exponential(1 / hazard)
    horizon = days + future_days
    span = np.clip(np.minimum(alive_until, horizon) - signup, 0, None)
    counts = rng.poisson(rate * span)
    owner = np.repeat(np.arange(n), counts)
    when = signup[owner] + rng.uniform(0, 1, owner.size) * span[owner]
    amount = np.round(value[owner] * np.exp(rng.normal(-0.045, 0.3, owner.size)), 2)
    # items: each segment prefers its own slice of the catalogue (and, inside it, a few items more)
    per = items // segments
    preferred = segment[owner] * per + np.minimum(rng.zipf(1.6, owner.size) - 1, per - 1)
    anywhere = np.minimum(rng.zipf(1.3, owner.size) - 1, items - 1)
    item = np.where(rng.uniform(size=owner.size) < 0.8, preferred, anywhere)
    category = item // max(1, items // 10)
    order = np.lexsort((when, owner))
    owner, when, amount, item, category = (
        owner[order],
        when[order],
        amount[order],
        item[order],
        category[order],
    )
    seconds = (when * 86400).astype("int64")
    ts = np.datetime64(start, "s") + seconds.astype("timedelta64[s]")
    table = pa.table(
        {
            "order_id": pa.array(np.arange(1, owner.size + 1)),
            "customer_id": pa.array(owner + 1),
            "ordered_at": pa.array(ts, pa.timestamp("s")),
            "amount": pa.array(amount),
            "product_id": pa.array([f"p{i:04d}" for i in range(items)]).take(pa.array(item)),
            "category": pa.array([f"c{i:02d}" for i in range(10)]).take(pa.array(category)),
        }
    )
    past = when < days
    mask = pa.array(past)
    signup_ts = np.datetime64(start, "s") + (signup * 86400).astype("int64").astype("timedelta64[s]")
    cust = pa.table(
        {
            "customer_id": pa.array(np.arange(1, n + 1)),
            "segment": pa.array(segment),
            "signup_at": pa.array(signup_ts, pa.timestamp("s")),
        }
    )
    return Simulation(
        cust, table.filter(mask), table.filter(pc.invert(mask)), end, rate, value, hazard, alive_until
    )

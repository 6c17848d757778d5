"""Customers and orders drawn from a known process, so predictions can be judged against the truth.

The process follows the standard models of non-contractual customer behaviour, each element for a reason a
real customer base shows:

- **Heterogeneous order rates, gamma-distributed** across customers (the NBD part of Pareto/NBD,
  Schmittlein, Morrison & Colombo 1987, and of BG/NBD, Fader, Hardie & Lee 2005): a few customers order
  far more often than most.
- **Regularity of the gaps between orders** (Pareto/GGG, Platzer & Reutterer 2016): the gaps are
  gamma-distributed with a shape ``k`` of each customer's own (``k = 1`` is the memoryless Poisson case;
  most retail customers are more regular than that, ``k > 1``, and some less). Real inter-purchase times
  are not exponential: people restock, pay day comes monthly.
- **Dropout as a latent event after a purchase** (the beta-geometric of BG/NBD): after each repeat order
  the customer leaves for good with a probability ``p`` of their own, beta-distributed across customers
  (default ``a, b``: the CDNow estimates of Fader, Hardie & Lee 2005, 0.79 and 2.43). Nobody records the
  dropout: a customer who has not ordered for a while may be gone or merely slow, which is why recency
  alone is not the whole story.
- **Seasonality**: every rate follows the calendar, with a peak in late December (retail's fourth quarter)
  and a trough in the summer, ``1 + seasonality * cos(2 pi (day of year - 355) / 365)``.
- **Rates that change**: at an exponential time after signup (mean ``change_after_days``) a customer's rate
  is multiplied by a log-normal factor (moving house, a new job, a competitor): the stationary models assume
  it away, real customers do not.
- **Customers who never order**: a share of the accounts (``never_order``) signs up without buying.
- **Order values**: a mean value per customer (log-normal, higher in some segments), each order's value
  log-normal around it, independent of the timing (the gamma-gamma assumption of Fader, Hardie & Lee's
  "RFM and CLV", 2005). Products: the segment's preferred items (80%) or any (20%).

A customer's first order is their signup (customers are acquired by a purchase). Orders are simulated up to
``end + future_days``: those before ``end`` are the history a warehouse holds, those after are the truth a
prediction made at ``end`` is judged on (``Simulation.truth``). ``Simulation.oracle`` draws many futures from
each customer's true state at ``end`` (rate, regularity, dropout probability, whether they already dropped
out, days since their last order): the best any prediction can do, knowing what no warehouse knows.
``Simulation.parameter_oracle`` knows the same parameters (and the rate change and the season) but not
whether the customer already left: it infers that from the silence since the last order, as the data
allows, so it bounds from above what a prediction made from the orders alone can reach.
``Simulation.posterior_churn`` knows only the population's distributions and each customer's orders: the
Bayes posterior of the probability of no order, which no predictor from the orders can beat by more than its
approximations (a grid, and the rate change left out).

Used by ``benchmarks/predictions.py`` and the tests; numpy and scipy, seeded.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

__all__ = ["Simulation", "simulate"]


def _season(t: np.ndarray, start: dt.datetime, amplitude: float) -> np.ndarray:
    """The cumulative seasonal clock: days of "average-season time" elapsed from day 0 to day ``t``."""
    phase0 = 2 * np.pi * (start.timetuple().tm_yday - 355) / 365.0
    w = 2 * np.pi / 365.0
    return t + amplitude / w * (np.sin(w * t + phase0) - np.sin(phase0))


@dataclass
class Simulation:
    customers: pa.Table  # customer_id, segment, signup_at
    orders: pa.Table  # order_id, customer_id, ordered_at, amount, product_id, category (before end)
    future: pa.Table  # the same columns, at or after end
    end: dt.datetime
    days: int  # days of history before end
    rate: np.ndarray  # orders per (average-season) day at end, per customer
    regularity: np.ndarray  # the gamma shape k of each customer's gaps
    dropout: np.ndarray  # probability to leave after each repeat order
    value: np.ndarray  # true mean order value
    alive: np.ndarray  # not yet dropped out at end
    last_order: np.ndarray  # days (from the start) of the last order before end, NaN without one
    seasonality: float
    start: dt.datetime
    # the parameter oracle's extra knowledge (stored by ``simulate``, not used by the process itself)
    orders_before: np.ndarray | None = None  # orders before end, per customer
    rate_before: np.ndarray | None = None  # orders per seasonal day before the rate change
    rate_after: np.ndarray | None = None  # and after it
    change_u: np.ndarray | None = None  # seasonal time of the rate change
    # the population's distributions: rate_shape, rate_mean (per day), regularity_shape, regularity_mean,
    # dropout_a, dropout_b
    priors: dict[str, float] | None = None

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

    def oracle(self, days: int, draws: int = 200, seed: int = 12345) -> tuple[np.ndarray, np.ndarray]:
        """Per customer: (expected orders in [end, end + days), probability of no order in it), from
        ``draws`` futures of each customer's true state at ``end`` (no rate change inside the window)."""
        from scipy.stats import gamma

        rng = np.random.default_rng(seed)
        n = len(self.rate)
        expected = np.zeros(n)
        none = np.zeros(n)
        bought = ~np.isnan(self.last_order)
        who = np.flatnonzero(self.alive & bought)
        none[~(self.alive & bought)] = 1.0
        if len(who) == 0:
            return expected, none
        k, lam, p = self.regularity[who], self.rate[who], self.dropout[who]
        u_end = _season(np.array([float(self.days)]), self.start, self.seasonality)[0]
        u_last = _season(self.last_order[who], self.start, self.seasonality)
        u_stop = _season(np.array([float(self.days + days)]), self.start, self.seasonality)[0]
        age = u_end - u_last  # seasonal time since the last order
        scale = 1.0 / (k * lam)
        for _ in range(draws):
            # the first gap is at least the age already elapsed (the renewal's residual life)
            low = gamma.cdf(age, k, scale=scale)
            u = low + rng.uniform(size=len(who)) * (1 - low)
            gap = gamma.ppf(np.minimum(u, 1 - 1e-12), k, scale=scale)
            at = u_last + gap
            alive = np.ones(len(who), dtype=bool)
            count = np.zeros(len(who))
            while True:
                inside = alive & (at < u_stop)
                if not inside.any():
                    break
                count += inside
                alive &= inside & (rng.uniform(size=len(who)) >= p)
                at = at + rng.gamma(k, scale)
            expected[who] += count / draws
            none[who] += (count == 0) / draws
        return expected, np.clip(none, 0.0, 1.0)

    def parameter_oracle(
        self, days: int, draws: int = 200, seed: int = 12345
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per customer: (expected orders in [end, end + days), probability of no order in it, probability
        to be alive at ``end``), knowing every true parameter but not whether the customer already left.

        The generator's dropout happens right after a repeat order, with probability ``p``, and otherwise
        the next gap is drawn at the rate of the moment of that order. So, after a silence of ``a`` seasonal
        days since the last order (of a customer with two orders or more; after the first order nobody
        leaves), with ``S`` the survival function of that gap:

            P(alive | history) = (1 - p) S(a) / ((1 - p) S(a) + p)
            P(no order until b | history) = (p + (1 - p) S(b)) / (p + (1 - p) S(a))

        where ``b`` is the window's end in seasonal days since the last order: both exact, no draws. Nothing
        else in the history tells more, given the parameters (the earlier orders only show the customer
        stayed after them). The expected orders are P(alive) times the mean count of ``draws`` futures of
        an alive customer: the first gap drawn beyond the silence, later gaps at the rate before or after
        the rate change, the dropout after each order. Customers without an order get 0 and 1."""
        from scipy.stats import gamma

        if self.orders_before is None or self.rate_before is None or self.rate_after is None:
            raise ValueError("the parameter oracle needs a Simulation made by simulate()")
        assert self.change_u is not None
        rng = np.random.default_rng(seed)
        n = len(self.rate)
        expected = np.zeros(n)
        none = np.ones(n)
        p_alive = np.zeros(n)
        who = np.flatnonzero(~np.isnan(self.last_order))
        if len(who) == 0:
            return expected, none, p_alive
        k, p = self.regularity[who], self.dropout[who]
        p = np.where(self.orders_before[who] >= 2, p, 0.0)  # no dropout after the first order
        change = self.change_u[who]
        before, after = self.rate_before[who], self.rate_after[who]
        u_last = _season(self.last_order[who], self.start, self.seasonality)
        u_end = _season(np.array([float(self.days)]), self.start, self.seasonality)[0]
        u_stop = _season(np.array([float(self.days + days)]), self.start, self.seasonality)[0]
        scale = 1.0 / (k * np.where(u_last < change, before, after))  # the pending gap's rate
        log_s_end = gamma.logsf(u_end - u_last, k, scale=scale)
        log_s_stop = gamma.logsf(u_stop - u_last, k, scale=scale)
        s_end = np.exp(log_s_end)
        stays = (1 - p) * s_end
        alive = np.divide(stays, stays + p, out=np.ones(len(who)), where=(stays + p) > 0)
        with np.errstate(invalid="ignore"):  # -inf - -inf: the gap is surely past the window
            log_quiet = log_s_stop - log_s_end
        quiet = np.where(np.isfinite(log_quiet), np.exp(np.minimum(log_quiet, 0.0)), 1.0)  # P(none | alive)
        none[who] = np.clip((1 - alive) + alive * quiet, 0.0, 1.0)
        p_alive[who] = alive
        count = np.zeros(len(who))
        for _ in range(draws):
            # the pending gap, beyond the silence already elapsed: inverse survival of a uniform share
            q = s_end * (1.0 - rng.uniform(size=len(who)))
            at = u_last + gamma.isf(q, k, scale=scale)
            idx = np.arange(len(who))
            while len(idx):
                inside = at < u_stop
                idx, at = idx[inside], at[inside]
                count[idx] += 1
                stay = rng.uniform(size=len(idx)) >= self.dropout[who][idx]
                idx, at = idx[stay], at[stay]
                rate = np.where(at < change[idx], before[idx], after[idx])
                at = at + rng.gamma(k[idx], 1.0 / (k[idx] * rate))
        expected[who] = alive * count / draws
        return expected, none, p_alive

    def posterior_churn(self, days: int, chunk: int = 500) -> np.ndarray:
        """Per customer: the probability of no order in [end, end + days) given only their orders and the
        population's distributions (``priors``): the Bayes posterior predictive, as well as the data allow.

        Ranking by the true posterior probability maximises the AUC and it minimises the Brier score, so this
        approximates the best any predictor from the orders can do. The rate ``lambda`` and regularity ``k``
        are integrated on a grid (100 rates, log-spaced, by the gamma prior; 30 quantiles of the regularity
        prior), the dropout probability exactly (beta integrals). The likelihood of the gaps (in seasonal
        time) is gamma; of the silence, ``p + (1 - p) S(a)`` after a repeat order and ``S(a)`` after the
        first. The rate change is left out (a single rate per customer): integrating over its time and
        factor too moved the AUC by less than 0.001 on a sample. Customers without an order get 1."""
        from scipy.special import betaln, gammaincc, gammaln
        from scipy.stats import gamma

        if self.priors is None or self.orders_before is None:
            raise ValueError("the posterior needs a Simulation made by simulate()")
        pr = self.priors
        n_all = len(self.rate)
        t = self.orders.column("ordered_at").to_numpy().astype("datetime64[s]")
        days_at = (t - np.datetime64(self.start, "s")).astype("timedelta64[s]").astype(float) / 86400
        u = _season(days_at, self.start, self.seasonality)
        cid = self.orders.column("customer_id").to_numpy() - 1
        order = np.lexsort((u, cid))
        cid, u = cid[order], u[order]
        same = cid[1:] == cid[:-1]
        gap, owner = np.diff(u)[same], cid[1:][same]
        sum_gap = np.bincount(owner, weights=gap, minlength=n_all)
        sum_log = np.bincount(owner, weights=np.log(np.maximum(gap, 1e-6)), minlength=n_all)
        count = self.orders_before.astype(float)
        ks = np.maximum(
            gamma.ppf(
                np.linspace(0.005, 0.995, 30),
                pr["regularity_shape"],
                scale=pr["regularity_mean"] / pr["regularity_shape"],
            ),
            0.3,
        )
        rates = np.exp(np.linspace(np.log(1e-4), np.log(2.0), 100))
        rate_w = gamma.pdf(rates, pr["rate_shape"], scale=pr["rate_mean"] / pr["rate_shape"]) * rates
        k_grid, l_grid = (g.ravel() for g in np.meshgrid(ks, rates, indexing="ij"))
        log_prior = np.log(np.tile(rate_w / rate_w.sum(), len(ks)) / len(ks))
        a, b = pr["dropout_a"], pr["dropout_b"]
        u_end = _season(np.array([float(self.days)]), self.start, self.seasonality)[0]
        u_stop = _season(np.array([float(self.days + days)]), self.start, self.seasonality)[0]
        last = _season(self.last_order, self.start, self.seasonality)
        out = np.ones(n_all)
        who = np.flatnonzero(count > 0)
        for s in range(0, len(who), chunk):
            i = who[s : s + chunk]
            gaps = (count[i] - 1)[:, None]
            ll = (
                gaps * (k_grid * np.log(k_grid * l_grid) - gammaln(k_grid))
                + (k_grid - 1) * sum_log[i][:, None]
                - k_grid * l_grid * sum_gap[i][:, None]
                + log_prior
            )
            w = np.exp(ll - ll.max(axis=1, keepdims=True))
            # E[(1 - p)^m p] and E[(1 - p)^(m + 1)] under the beta prior: m repeat orders survived so far
            m = np.maximum(count[i] - 2, 0)[:, None]
            repeat = (count[i] >= 2)[:, None]
            drop = np.where(repeat, np.exp(betaln(a + 1, b + m) - betaln(a, b)), 0.0)
            stay = np.where(repeat, np.exp(betaln(a, b + m + 1) - betaln(a, b)), 1.0)
            s_end = gammaincc(k_grid, k_grid * l_grid * (u_end - last[i])[:, None])
            s_stop = gammaincc(k_grid, k_grid * l_grid * (u_stop - last[i])[:, None])
            out[i] = (w * (drop + stay * s_stop)).sum(1) / (w * (drop + stay * s_end)).sum(1)
        return np.clip(out, 0.0, 1.0)


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
    regularity_shape: float = 4.0,
    regularity_mean: float = 1.6,
    dropout_a: float = 0.79,
    dropout_b: float = 2.43,
    seasonality: float = 0.3,
    change_after_days: float = 730.0,
    change_sigma: float = 0.6,
    never_order: float = 0.1,
) -> Simulation:
    """``customers`` customers over ``days`` days of history before ``end`` (and ``future_days`` after).

    ``rate_shape``: the gamma shape of the order rates (smaller: more unequal customers);
    ``regularity_shape`` / ``regularity_mean``: the gamma distribution of each customer's gap shape ``k``;
    ``dropout_a`` / ``dropout_b``: the beta distribution of the dropout probability after a repeat order;
    ``seasonality``: the amplitude of the yearly cycle; ``change_after_days`` / ``change_sigma``: when a
    customer's rate changes and by how much (log-normal sigma); ``never_order``: the share who never buy."""
    rng = np.random.default_rng(seed)
    n = customers
    start = end - dt.timedelta(days=days)
    horizon = float(days + future_days)
    segment = rng.integers(0, segments, n)
    signup = rng.uniform(0, days - 30, n)
    rate0 = rng.gamma(rate_shape, mean_orders_per_year / 365 / rate_shape, n)
    k = np.maximum(rng.gamma(regularity_shape, regularity_mean / regularity_shape, n), 0.3)
    p = rng.beta(dropout_a, dropout_b, n)
    change_at = signup + rng.exponential(change_after_days, n)
    rate1 = rate0 * np.exp(rng.normal(-(change_sigma**2) / 2, change_sigma, n))
    value = np.exp(rng.normal(3.8, 0.6, n) + 0.15 * segment)
    buyer = rng.uniform(size=n) >= never_order

    # orders in seasonal time u (the rate is constant in it), then mapped back to calendar days
    grid = np.arange(0.0, horizon + 2.0, 0.25)
    clock = _season(grid, start, seasonality)
    u_signup = np.interp(signup, grid, clock)
    u_change = np.interp(np.minimum(change_at, horizon + 1), grid, clock)
    u_horizon = clock[-1]
    owners: list[np.ndarray] = []
    times: list[np.ndarray] = []
    who = np.flatnonzero(buyer)
    at = u_signup[who]
    alive = np.ones(n, dtype=bool)
    first = True
    while len(who):
        owners.append(who)
        times.append(at)
        if not first:  # the beta-geometric dropout, after each repeat order
            stays = rng.uniform(size=len(who)) >= p[who]
            alive[who[~stays]] = False
            who, at = who[stays], at[stays]
        first = False
        lam = np.where(at < u_change[who], rate0[who], rate1[who])
        at = at + rng.gamma(k[who], 1.0 / (k[who] * lam))
        keep = at < u_horizon
        who, at = who[keep], at[keep]
    owner = np.concatenate(owners) if owners else np.zeros(0, dtype=np.int64)
    when = np.interp(np.concatenate(times), clock, grid) if times else np.zeros(0)
    # alive at end unless the order after which they left came before end
    order_dropped = np.zeros(n, dtype=bool)
    last_before = np.full(n, np.nan)
    past = when < days
    np.fmax.at(last_before, owner[past], when[past])
    orders_before = np.bincount(owner[past], minlength=n)
    left = ~alive  # they left right after their final order
    final = np.full(n, -np.inf)
    np.maximum.at(final, owner, when)
    order_dropped[left] = final[left] < days
    alive_at_end = buyer & ~order_dropped

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
    mask = pa.array(when < days)
    signup_ts = np.datetime64(start, "s") + (signup * 86400).astype("int64").astype("timedelta64[s]")
    cust = pa.table(
        {
            "customer_id": pa.array(np.arange(1, n + 1)),
            "segment": pa.array(segment),
            "signup_at": pa.array(signup_ts, pa.timestamp("s")),
        }
    )
    rate_at_end = np.where(np.interp(float(days), grid, clock) < u_change, rate0, rate1)
    return Simulation(
        customers=cust,
        orders=table.filter(mask),
        future=table.filter(pc.invert(mask)),
        end=end,
        days=days,
        rate=rate_at_end,
        regularity=k,
        dropout=p,
        value=value,
        alive=alive_at_end,
        last_order=last_before,
        seasonality=seasonality,
        start=start,
        orders_before=orders_before,
        rate_before=rate0,
        rate_after=rate1,
        change_u=u_change,
        priors={
            "rate_shape": rate_shape,
            "rate_mean": mean_orders_per_year / 365,
            "regularity_shape": regularity_shape,
            "regularity_mean": regularity_mean,
            "dropout_a": dropout_a,
            "dropout_b": dropout_b,
        },
    )

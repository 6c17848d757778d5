"""The SQL of a prediction set's features and labels, built with sqlglot and run inside the warehouse.

Every aggregate over the orders runs in the warehouse: what leaves it is one row per customer (the feature
table, and the labels of a window), plus, for recommendations, one row per (customer, item) with its count.

Features of a customer as of a cutoff ``c`` (orders strictly before ``c``):

- ``frequency``: orders; ``monetary_total`` / ``monetary_avg``: their sum / average value (0 / NULL without
  orders);
- ``recency_days`` / ``tenure_days``: days from the last / first order to ``c`` (NULL without orders);
- ``interpurchase_days``: average days between two orders (NULL below two orders);
- ``orders_30d``, ``orders_90d``, ``orders_365d``: orders in the last 30, 90, 365 days;
- ``orders_prev_90d``, ``amount_90d``, ``amount_prev_90d``, ``amount_365d``: the trend, the last 90 days
  against the 90 before;
- ``orders_per_day``: ``frequency / tenure_days`` (tenure at least 1 day);
- ``recency_to_interpurchase``: ``recency_days / interpurchase_days``, how many usual gaps the customer is
  late by;
- ``max_gap_days``: the longest gap between two consecutive orders (NULL below two orders);
- ``gap_cv``: the gaps' coefficient of variation (sample standard deviation / mean; NULL below three orders
  or when every gap is 0 days): how regular the customer is. A regular buyer who is late is more likely gone
  than an irregular one who is equally late;
- ``recency_to_max_gap``: ``recency_days / max(max_gap_days, 1)``: above 1, the silence is longer than any
  the customer had before;
- ``category_share_<i>``: share of the orders in the i-th most frequent category (with ``item_category``).

Days are calendar days (``DATEDIFF(day, ...)`` of the two dates). The customer key is compared as text, so a
customer model keyed by integers and orders keyed by text still join.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from sqlglot import exp

from dinmo_dagster import delta

__all__ = ["FEATURES", "Columns", "categories_sql", "features_sql", "interactions_sql", "labels_sql"]

# The features every set has, in the order of the feature table (category shares come after).
FEATURES = (
    "frequency",
    "monetary_total",
    "monetary_avg",
    "recency_days",
    "tenure_days",
    "interpurchase_days",
    "orders_30d",
    "orders_90d",
    "orders_365d",
    "orders_prev_90d",
    "amount_90d",
    "amount_prev_90d",
    "amount_365d",
    "orders_per_day",
    "recency_to_interpurchase",
    "max_gap_days",
    "gap_cv",
    "recency_to_max_gap",
)
KEY = "customer_key"
MAX_CATEGORIES = 8


@dataclass(frozen=True)
class Columns:
    """The warehouse's spelling of the columns a set reads, and the views it reads them from."""

    customers: exp.Table
    events: exp.Table
    pk: str  # customer model's primary key
    customer_key: str  # events' column of the customer's key
    time: str
    amount: str
    item: str | None = None
    category: str | None = None


def _c(name: str, table: str | None = None) -> exp.Column:
    return delta.col(name, table)


def _text(e: exp.Expression) -> exp.Expression:
    return exp.cast(e, exp.DataType.build("text"))


def _days(end: exp.Expression, start: exp.Expression) -> exp.Expression:
    """Calendar days from ``start`` to ``end``: both cast to dates first, so every dialect counts alike
    (DuckDB counts day boundaries, PostgreSQL's rendering whole elapsed days)."""
    date = exp.DataType.build("date")
    return exp.DateDiff(this=exp.cast(end, date), expression=exp.cast(start, date), unit=exp.var("DAY"))


def _ts(when: dt.datetime) -> exp.Expression:
    return delta.ts_literal(when)


def _when(
    cond: exp.Expression, then: exp.Expression, default: exp.Expression | None = None
) -> exp.Expression:
    case = exp.Case(ifs=[exp.If(this=cond, true=then)])
    return case.else_(default) if default is not None else case


def _events(c: Columns, start: dt.datetime | None, end: dt.datetime, with_item: bool = False) -> exp.Select:
    """The orders in [start, end): key as text, time as a timestamp, amount as a double (item, category)."""
    t = exp.cast(_c(c.time), exp.DataType.build("timestamp"))
    cols: list[exp.Expression] = [
        _text(_c(c.customer_key)).as_("k"),
        t.copy().as_("t"),
        exp.cast(_c(c.amount), exp.DataType.build("double")).as_("a"),
    ]
    if c.category:
        cols.append(_text(_c(c.category)).as_("cat"))
    if with_item and c.item:
        cols.append(_text(_c(c.item)).as_("item"))
    where: list[exp.Expression] = [
        exp.LT(this=t.copy(), expression=_ts(end)),
        exp.not_(exp.Is(this=_c(c.customer_key), expression=exp.null())),
    ]
    if start is not None:
        where.append(exp.GTE(this=t.copy(), expression=_ts(start)))
    if with_item and c.item:
        where.append(exp.not_(exp.Is(this=_c(c.item), expression=exp.null())))
    return exp.select(*cols).from_(c.events.copy()).where(exp.and_(*where))


def categories_sql(c: Columns, cutoff: dt.datetime, dialect: str) -> str:
    """The ``MAX_CATEGORIES`` most frequent categories of the orders before ``cutoff`` (ties by name)."""
    q = (
        exp.select(exp.column("cat"), exp.Count(this=exp.Star()).as_("n"))
        .from_(_events(c, None, cutoff).subquery("e"))
        .where(exp.not_(exp.Is(this=exp.column("cat"), expression=exp.null())))
        .group_by(exp.column("cat"))
        .order_by(exp.Ordered(this=exp.column("n"), desc=True), exp.column("cat"))
        .limit(MAX_CATEGORIES)
    )
    return delta.render(q, dialect)


def features_sql(c: Columns, cutoff: dt.datetime, dialect: str, categories: Sequence[str] = ()) -> str:
    """One row per customer of the customer model: ``customer_key`` (its primary key, as stored) and the
    features as of ``cutoff``, ordered by key."""
    day = dt.timedelta(days=1)
    t, a, one, zero = exp.column("t"), exp.column("a"), exp.Literal.number(1), exp.Literal.number(0)

    def since(days: int) -> exp.Expression:
        return exp.GTE(this=t.copy(), expression=_ts(cutoff - days * day))

    prev_90 = exp.and_(since(180), exp.LT(this=t.copy(), expression=_ts(cutoff - 90 * day)))
    aggregates: list[exp.Expression] = [
        exp.column("k"),
        exp.Count(this=exp.Star()).as_("n"),
        exp.Sum(this=a.copy()).as_("total"),
        exp.Avg(this=a.copy()).as_("avg_a"),
        exp.Max(this=t.copy()).as_("last_t"),
        exp.Min(this=t.copy()).as_("first_t"),
        *(exp.Sum(this=_when(since(d), one.copy(), zero.copy())).as_(f"n_{d}") for d in (30, 90, 365)),
        exp.Sum(this=_when(prev_90.copy(), one.copy(), zero.copy())).as_("n_prev_90"),
        exp.Sum(this=_when(since(90), a.copy(), zero.copy())).as_("a_90"),
        exp.Sum(this=_when(prev_90.copy(), a.copy(), zero.copy())).as_("a_prev_90"),
        exp.Sum(this=_when(since(365), a.copy(), zero.copy())).as_("a_365"),
        *(
            exp.Sum(
                this=_when(
                    exp.EQ(this=exp.column("cat"), expression=exp.Literal.string(cat)),
                    one.copy(),
                    zero.copy(),
                )
            ).as_(f"cat_{i}")
            for i, cat in enumerate(categories)
        ),
    ]
    events = _events(c, None, cutoff)
    previous = exp.Window(
        this=exp.Anonymous(this="LAG", expressions=[exp.column("t")]),
        partition_by=[exp.column("k")],
        order=exp.Order(expressions=[exp.Ordered(this=exp.column("t"))]),
    )
    gaps = exp.select(exp.Star(), _days(exp.column("t"), previous).as_("gap")).from_(events.subquery("e0"))
    gap = exp.cast(exp.column("gap"), exp.DataType.build("double"))
    aggregates += [
        exp.Max(this=gap.copy()).as_("max_gap"),
        exp.StddevSamp(this=gap.copy()).as_("sd_gap"),
        exp.Avg(this=gap.copy()).as_("mean_gap"),
    ]
    agg = exp.select(*aggregates).from_(gaps.subquery("e")).group_by(exp.column("k"))

    def g(name: str) -> exp.Column:
        return exp.column(name, table="g")

    def zero_if_null(e: exp.Expression) -> exp.Expression:
        return exp.Coalesce(this=e, expressions=[exp.Literal.number(0)])

    double = exp.DataType.build("double")
    n = g("n")
    select: list[exp.Expression] = [
        _c(c.pk, "m").as_(KEY, quoted=True),
        zero_if_null(n.copy()).as_("frequency", quoted=True),
        zero_if_null(g("total")).as_("monetary_total", quoted=True),
        g("avg_a").as_("monetary_avg", quoted=True),
        _days(_ts(cutoff), g("last_t")).as_("recency_days", quoted=True),
        _days(_ts(cutoff), g("first_t")).as_("tenure_days", quoted=True),
        _when(
            exp.GT(this=n.copy(), expression=exp.Literal.number(1)),
            exp.Div(
                this=exp.cast(_days(g("last_t"), g("first_t")), double),
                expression=exp.paren(exp.Sub(this=n.copy(), expression=exp.Literal.number(1))),
            ),
        ).as_("interpurchase_days", quoted=True),
        *(zero_if_null(g(f"n_{d}")).as_(f"orders_{d}d", quoted=True) for d in (30, 90, 365)),
        zero_if_null(g("n_prev_90")).as_("orders_prev_90d", quoted=True),
        zero_if_null(g("a_90")).as_("amount_90d", quoted=True),
        zero_if_null(g("a_prev_90")).as_("amount_prev_90d", quoted=True),
        zero_if_null(g("a_365")).as_("amount_365d", quoted=True),
        exp.Div(
            this=exp.cast(zero_if_null(n.copy()), double),
            expression=exp.Greatest(
                this=zero_if_null(_days(_ts(cutoff), g("first_t"))), expressions=[exp.Literal.number(1)]
            ),
        ).as_("orders_per_day", quoted=True),
        _when(
            exp.GT(this=n.copy(), expression=exp.Literal.number(1)),
            exp.Div(
                this=exp.cast(_days(_ts(cutoff), g("last_t")), double),
                expression=exp.Greatest(
                    this=exp.Div(
                        this=exp.cast(_days(g("last_t"), g("first_t")), double),
                        expression=exp.paren(exp.Sub(this=n.copy(), expression=exp.Literal.number(1))),
                    ),
                    expressions=[exp.Literal.number(1)],
                ),
            ),
        ).as_("recency_to_interpurchase", quoted=True),
        g("max_gap").as_("max_gap_days", quoted=True),
        _when(
            exp.GT(this=g("mean_gap"), expression=exp.Literal.number(0)),
            exp.Div(this=g("sd_gap"), expression=g("mean_gap")),
        ).as_("gap_cv", quoted=True),
        _when(
            exp.GT(this=n.copy(), expression=exp.Literal.number(1)),
            exp.Div(
                this=exp.cast(_days(_ts(cutoff), g("last_t")), double),
                expression=exp.Greatest(this=g("max_gap"), expressions=[exp.Literal.number(1)]),
            ),
        ).as_("recency_to_max_gap", quoted=True),
        *(
            exp.Div(this=exp.cast(g(f"cat_{i}"), double), expression=n.copy()).as_(
                f"category_share_{i}", quoted=True
            )
            for i in range(len(categories))
        ),
    ]
    customers = c.customers.copy()
    customers.set("alias", exp.TableAlias(this=exp.to_identifier("m")))
    q = (
        exp.select(*select)
        .from_(customers)
        .join(agg.subquery("g"), on=exp.EQ(this=_text(_c(c.pk, "m")), expression=g("k")), join_type="left")
        .where(exp.not_(exp.Is(this=_c(c.pk, "m"), expression=exp.null())))
        .order_by(_c(c.pk, "m"))
    )
    return delta.render(q, dialect)


def labels_sql(c: Columns, start: dt.datetime, end: dt.datetime, dialect: str) -> str:
    """Per customer key (as text) with orders in [start, end): ``value`` (their sum) and ``orders``."""
    q = (
        exp.select(
            exp.column("k").as_(KEY, quoted=True),
            exp.Sum(this=exp.column("a")).as_("value", quoted=True),
            exp.Count(this=exp.Star()).as_("orders", quoted=True),
        )
        .from_(_events(c, start, end).subquery("e"))
        .group_by(exp.column("k"))
    )
    return delta.render(q, dialect)


def interactions_sql(c: Columns, start: dt.datetime | None, end: dt.datetime, dialect: str) -> str:
    """Per (customer key as text, item as text) with orders in [start, end): ``n``, the number of orders."""
    q = (
        exp.select(
            exp.column("k").as_(KEY, quoted=True),
            exp.column("item").as_("item", quoted=True),
            exp.Count(this=exp.Star()).as_("n", quoted=True),
        )
        .from_(_events(c, start, end, with_item=True).subquery("e"))
        .group_by(exp.column("k"), exp.column("item"))
    )
    return delta.render(q, dialect)


def history_sql(c: Columns, dialect: str) -> str:
    """The first and last order times (to know which back-tests the history allows)."""
    t = exp.cast(_c(c.time), exp.DataType.build("timestamp"))
    return delta.render(exp.select(exp.Min(this=t), exp.Max(this=t.copy())).from_(c.events.copy()), dialect)

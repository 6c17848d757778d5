"""No-code segment filters and calculated fields, run on DuckDB and PostgreSQL.

Each filter is compiled, run against the same small database on both warehouses, and its members are
compared with the set computed in Python from the same rows. Other dialects are checked by parsing
the rendered SQL back with sqlglot.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

import duckdb
import psycopg
import pytest
import sqlglot
from sqlglot import exp

from dinmo_dagster.filters import (
    FilterError,
    ModelInfo,
    Relationship,
    compile_model_select,
    compile_segment_filter,
    filter_depth_problem,
    validate_filter,
)

NOW = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
DAY = dt.timedelta(days=1)
INJECTION = "' or 1=1 --"


def ago(days: float) -> dt.datetime:
    return NOW - days * DAY


# ------------------------------------------------------------------------------------------ the data

CUSTOMERS = [
    # id, name, country, ltv, signup_at, vip
    (1, "Alice", "FR", 600.0, ago(5), True),
    (2, "O'Brien", "IE", 150.0, ago(40), False),
    (3, "Bob", "DE", None, None, None),
    (4, None, None, 50.0, ago(400), False),
    (5, "100% Real_Deal", "FR", 100.0, ago(1), False),
    (6, "1000 RealXDeal", "US", 1000.0, ago(10 / 24), True),
    (7, INJECTION, "FR", 0.0, ago(730), False),
    (8, "Eve", "de", 300.0, ago(20), True),
    (9, "Zed", "FR", 200.0, ago(-3), False),  # signs up in the future: never "within the last N days"
]
ORDERS = [
    # id, customer_id, amount, ordered_at
    (101, 1, 50.0, ago(10)),
    (102, 1, 80.0, ago(100)),
    (103, 1, 20.0, ago(2)),
    (104, 2, 200.0, ago(25)),
    (105, 3, None, ago(5)),
    (106, 5, 10.0, ago(400)),
    (107, 8, 70.0, ago(60)),
    (108, 8, 40.0, ago(1)),
    (109, None, 999.0, ago(3)),
]
ORDER_LINES = [
    # id, order_id, product_type, quantity
    (1, 101, "shoes", 1),
    (2, 101, "hats", 2),
    (3, 102, "shoes", 1),
    (4, 103, "shoes", 3),
    (5, 104, "hats", 1),
    (6, 105, "shoes", 1),
    (7, 107, "shoes", 2),
    (8, 108, "bags", 1),
    (9, 106, "shoes", 1),
]
VISITS = [(1, "Paris"), (1, "Lyon"), (2, "Dublin"), (8, "Berlin"), (8, None), (99, "Nowhere")]

C = [dict(zip(("customer_id", "name", "country", "ltv", "signup_at", "vip"), r)) for r in CUSTOMERS]
O = [dict(zip(("order_id", "customer_id", "amount", "ordered_at"), r)) for r in ORDERS]
L = [dict(zip(("line_id", "order_id", "product_type", "quantity"), r)) for r in ORDER_LINES]
ALL_IDS = {c["customer_id"] for c in C}

DDL = """
CREATE SCHEMA ft_raw;
CREATE SCHEMA ft_views;
CREATE TABLE ft_raw.customers (customer_id INTEGER, name VARCHAR, country VARCHAR, ltv DOUBLE PRECISION,
                               signup_at TIMESTAMPTZ, vip BOOLEAN);
CREATE TABLE ft_raw.orders (order_id INTEGER, customer_id INTEGER, amount DOUBLE PRECISION,
                            ordered_at TIMESTAMPTZ);
CREATE TABLE ft_raw.order_lines (line_id INTEGER, order_id INTEGER, product_type VARCHAR, quantity INTEGER);
CREATE TABLE ft_raw.visits (customer_id INTEGER, store VARCHAR);
CREATE VIEW ft_views.model_customers AS SELECT * FROM ft_raw.customers;
CREATE VIEW ft_views.model_orders AS SELECT * FROM ft_raw.orders;
CREATE VIEW ft_views.model_order_lines AS SELECT * FROM ft_raw.order_lines
"""
INSERTS = [
    ("INSERT INTO ft_raw.customers VALUES (%s, %s, %s, %s, %s, %s)", CUSTOMERS),
    ("INSERT INTO ft_raw.orders VALUES (%s, %s, %s, %s)", ORDERS),
    ("INSERT INTO ft_raw.order_lines VALUES (%s, %s, %s, %s)", ORDER_LINES),
    ("INSERT INTO ft_raw.visits VALUES (%s, %s)", VISITS),
]

R = Relationship
MODELS = {
    "customers": ModelInfo(
        name="customers",
        relation=exp.to_table("ft_views.model_customers"),
        primary_key="customer_id",
        columns=("customer_id", "name", "country", "ltv", "signup_at", "vip"),
        relationships={"orders": R("orders", "orders", "one_to_many", {"customer_id": "customer_id"})},
    ),
    "orders": ModelInfo(
        name="orders",
        relation=exp.to_table("ft_views.model_orders"),
        primary_key="order_id",
        columns=("order_id", "customer_id", "amount", "ordered_at"),
        relationships={
            "lines": R("lines", "order_lines", "one_to_many", {"order_id": "order_id"}),
            "customer": R("customer", "customers", "many_to_one", {"customer_id": "customer_id"}),
        },
        time_column="ordered_at",
    ),
    "order_lines": ModelInfo(
        name="order_lines",
        relation=exp.to_table("ft_views.model_order_lines"),
        primary_key="line_id",
        columns=("line_id", "order_id", "product_type", "quantity"),
        relationships={"order": R("order", "orders", "many_to_one", {"order_id": "order_id"})},
    ),
}
SEGMENTS = {"french": "customers", "big_orders": "orders"}
SEGMENT_VIEWS = {"french": exp.to_table("ft_views.segment_french")}
FRENCH = {"attribute": "country", "op": "eq", "value": "FR"}


class Warehouse:
    """One backend (DuckDB or PostgreSQL) holding the test data and the model views."""

    def __init__(self, dialect: str, execute: Callable[[str], list[tuple]]):
        self.dialect = dialect
        self.execute = execute

    def members(self, filter: dict, model: str = "customers") -> set:
        sql = compile_segment_filter(filter, model, MODELS, SEGMENT_VIEWS, self.dialect)
        key = MODELS[model].primary_key
        return {row[0] for row in self.execute(f'SELECT "{key}" FROM ({sql}) AS q')}


def _setup(dialect: str, run: Callable[[str], list[tuple]], insert: Callable[[str, list], None]) -> Warehouse:
    for statement in DDL.split(";"):
        run(statement)
    for sql, rows in INSERTS:
        insert(sql, rows)
    segment = compile_segment_filter(FRENCH, "customers", MODELS, {}, dialect)
    run(f"CREATE VIEW ft_views.segment_french AS {segment}")
    return Warehouse(dialect, run)


@pytest.fixture(scope="module")
def duckdb_warehouse():
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")

    def run_once(sql: str) -> list[tuple]:
        cursor = con.execute(sql)
        return cursor.fetchall() if cursor.description else []

    def insert(sql: str, rows: list) -> None:
        con.executemany(sql.replace("%s", "?"), rows)

    yield _setup("duckdb", run_once, insert)
    con.close()


@pytest.fixture(scope="module")
def postgres_warehouse(postgres_server):
    conn = psycopg.connect(postgres_server.dsn, autocommit=True)
    conn.execute("DROP SCHEMA IF EXISTS ft_views CASCADE")
    conn.execute("DROP SCHEMA IF EXISTS ft_raw CASCADE")

    def run(sql: str) -> list[tuple]:
        with conn.cursor() as cursor:
            cursor.execute(sql)
            return cursor.fetchall() if cursor.description else []

    def insert(sql: str, rows: list) -> None:
        with conn.cursor() as cursor:
            cursor.executemany(sql, rows)

    yield _setup("postgres", run, insert)
    conn.execute("DROP SCHEMA ft_views CASCADE")
    conn.execute("DROP SCHEMA ft_raw CASCADE")
    conn.close()


@pytest.fixture(params=["duckdb", "postgres"])
def warehouse(request) -> Warehouse:
    return request.getfixturevalue(f"{request.param}_warehouse")


# ------------------------------------------------------------------------- expected sets, in Python


def customers_where(predicate: Callable[[dict], bool]) -> set[int]:
    return {c["customer_id"] for c in C if predicate(c)}


def within(value: dt.datetime | None, days: float) -> bool:
    return value is not None and NOW - days * DAY <= value <= NOW


def orders_of(customer: dict, predicate: Callable[[dict], bool] = lambda o: True) -> list[dict]:
    return [o for o in O if o["customer_id"] == customer["customer_id"] and predicate(o)]


def lines_of(order: dict) -> list[dict]:
    return [line for line in L if line["order_id"] == order["order_id"]]


def has_shoes(order: dict) -> bool:
    return any(line["product_type"] == "shoes" for line in lines_of(order))


def gt(value, bound) -> bool:
    return value is not None and value > bound


def attr(attribute: str, op: str, *value) -> dict:
    return {"attribute": attribute, "op": op, **({"value": value[0]} if value else {})}


# ------------------------------------------------------------------------------- attribute operators

OPERATOR_CASES = {
    "eq": (attr("country", "eq", "FR"), lambda c: c["country"] == "FR"),
    "eq_boolean": (attr("vip", "eq", True), lambda c: c["vip"] is True),
    "neq_includes_null": (attr("country", "neq", "FR"), lambda c: c["country"] != "FR"),
    "gt": (attr("ltv", "gt", 100), lambda c: gt(c["ltv"], 100)),
    "gte": (attr("ltv", "gte", 100), lambda c: c["ltv"] is not None and c["ltv"] >= 100),
    "lt": (attr("ltv", "lt", 100), lambda c: c["ltv"] is not None and c["ltv"] < 100),
    "lte": (attr("ltv", "lte", 100.0), lambda c: c["ltv"] is not None and c["ltv"] <= 100),
    "gt_date": (
        attr("signup_at", "gt", (NOW - 30 * DAY).date()),
        lambda c: c["signup_at"] is not None and c["signup_at"].date() > (NOW - 30 * DAY).date(),
    ),
    "in": (attr("country", "in", ["FR", "DE"]), lambda c: c["country"] in ("FR", "DE")),
    "not_in_includes_null": (
        attr("country", "not_in", ["FR", "DE"]),
        lambda c: c["country"] not in ("FR", "DE"),
    ),
    "between_inclusive": (
        attr("ltv", "between", [100, 600]),
        lambda c: c["ltv"] is not None and 100 <= c["ltv"] <= 600,
    ),
    "is_null": (attr("ltv", "is_null"), lambda c: c["ltv"] is None),
    "is_not_null": (attr("country", "is_not_null"), lambda c: c["country"] is not None),
    "contains": (attr("name", "contains", "e"), lambda c: c["name"] is not None and "e" in c["name"]),
    "contains_percent_is_literal": (attr("name", "contains", "100%"), lambda c: c["customer_id"] == 5),
    "contains_underscore_is_literal": (attr("name", "contains", "_Deal"), lambda c: c["customer_id"] == 5),
    "contains_quote": (attr("name", "contains", "'"), lambda c: c["name"] is not None and "'" in c["name"]),
    "starts_with": (attr("name", "starts_with", "O'"), lambda c: c["customer_id"] == 2),
    "starts_with_percent_is_literal": (attr("name", "starts_with", "100%"), lambda c: c["customer_id"] == 5),
    "contains_is_case_sensitive": (attr("country", "contains", "DE"), lambda c: c["country"] == "DE"),
    "within_last_days": (attr("signup_at", "within_last", "30 days"), lambda c: within(c["signup_at"], 30)),
    "within_last_hours": (
        attr("signup_at", "within_last", "36 hours"),
        lambda c: within(c["signup_at"], 1.5),
    ),
    "within_last_minutes": (
        attr("signup_at", "within_last", "720 minutes"),
        lambda c: within(c["signup_at"], 0.5),
    ),
    "within_last_weeks": (attr("signup_at", "within_last", "1 week"), lambda c: within(c["signup_at"], 7)),
    "within_last_months": (
        attr("signup_at", "within_last", "2 months"),
        lambda c: within(c["signup_at"], 50),
    ),
    "within_last_years": (attr("signup_at", "within_last", "1 year"), lambda c: within(c["signup_at"], 300)),
    "not_within_last": (
        attr("signup_at", "not_within_last", "30 days"),
        lambda c: not within(c["signup_at"], 30),
    ),
}


@pytest.mark.parametrize("case", OPERATOR_CASES, ids=list(OPERATOR_CASES))
def test_attribute_operator_selects_the_expected_customers(warehouse, case):
    filter, predicate = OPERATOR_CASES[case]
    expected = customers_where(predicate)
    assert warehouse.members(filter) == expected
    assert warehouse.members({"all": [filter]}) == expected


def test_operator_cases_are_not_trivial():
    # Each case above must separate the customers, or it would prove nothing.
    for name, (_, predicate) in OPERATOR_CASES.items():
        assert customers_where(predicate) not in (set(), ALL_IDS), name


# ------------------------------------------------------------------------------------ groups: all/any/not

GROUP_CASES = {
    "all": (
        {"all": [attr("country", "in", ["FR", "DE"]), attr("ltv", "gte", 100)]},
        lambda c: c["country"] in ("FR", "DE") and c["ltv"] is not None and c["ltv"] >= 100,
    ),
    "any": (
        {"any": [attr("country", "eq", "DE"), attr("ltv", "gt", 500)]},
        lambda c: c["country"] == "DE" or gt(c["ltv"], 500),
    ),
    "not_is_the_exact_complement": (
        {"not": attr("ltv", "gt", 100)},
        lambda c: not gt(c["ltv"], 100),  # customers with no ltv are "not above 100"
    ),
    "not_of_any": (
        {"not": {"any": [FRENCH, attr("ltv", "is_null")]}},
        lambda c: not (c["country"] == "FR" or c["ltv"] is None),
    ),
    "nested_any_of_all": (
        {
            "any": [
                {"all": [FRENCH, attr("vip", "eq", True)]},
                {"all": [{"not": FRENCH}, attr("ltv", "lt", 100)]},
            ]
        },
        lambda c: (
            (c["country"] == "FR" and c["vip"] is True)
            or (c["country"] != "FR" and c["ltv"] is not None and c["ltv"] < 100)
        ),
    ),
    "double_not": ({"not": {"not": FRENCH}}, lambda c: c["country"] == "FR"),
    "empty_all_is_everyone": ({"all": []}, lambda c: True),
}


@pytest.mark.parametrize("case", GROUP_CASES, ids=list(GROUP_CASES))
def test_groups_combine_conditions(warehouse, case):
    filter, predicate = GROUP_CASES[case]
    assert warehouse.members(filter) == customers_where(predicate)


# --------------------------------------------------------------------------------------- relationships

SHOES_90D = {
    "all": [
        {"relation": "lines", "exists": True, "where": attr("product_type", "eq", "shoes")},
        attr("ordered_at", "within_last", "90 days"),
    ]
}

RELATION_CASES = {
    "exists": ({"relation": "orders", "exists": True}, lambda c: bool(orders_of(c))),
    "exists_false": ({"relation": "orders", "exists": False}, lambda c: not orders_of(c)),
    "count_gte": (
        {"relation": "orders", "count": {"op": "gte", "value": 2}},
        lambda c: len(orders_of(c)) >= 2,
    ),
    "count_lt_1_includes_customers_without_orders": (
        {"relation": "orders", "count": {"op": "lt", "value": 1}},
        lambda c: not orders_of(c),
    ),
    "count_between": (
        {"relation": "orders", "count": {"op": "between", "value": [1, 2]}},
        lambda c: 1 <= len(orders_of(c)) <= 2,
    ),
    "count_where_multi_hop_within_last": (
        {"relation": "orders", "count": {"op": "gte", "value": 1}, "where": SHOES_90D},
        lambda c: len(orders_of(c, lambda o: has_shoes(o) and within(o["ordered_at"], 90))) >= 1,
    ),
    "count_gte_2_shoe_orders_in_90_days": (  # the README's example
        {"relation": "orders", "count": {"op": "gte", "value": 2}, "where": SHOES_90D},
        lambda c: len(orders_of(c, lambda o: has_shoes(o) and within(o["ordered_at"], 90))) >= 2,
    ),
    "multi_hop_line_quantity": (
        {
            "relation": "orders",
            "exists": True,
            "where": {"relation": "lines", "exists": True, "where": attr("quantity", "gte", 3)},
        },
        lambda c: any(line["quantity"] >= 3 for o in orders_of(c) for line in lines_of(o)),
    ),
    "sum_gt": (
        {"relation": "orders", "sum": {"attribute": "amount", "op": "gt", "value": 100}},
        lambda c: sum(o["amount"] or 0 for o in orders_of(c)) > 100,
    ),
    "sum_lt_includes_customers_without_orders": (
        {"relation": "orders", "sum": {"attribute": "amount", "op": "lt", "value": 20}},
        lambda c: sum(o["amount"] or 0 for o in orders_of(c)) < 20,
    ),
    "sum_where_within_last": (
        {
            "relation": "orders",
            "sum": {"attribute": "amount", "op": "gt", "value": 60},
            "where": attr("ordered_at", "within_last", "45 days"),
        },
        lambda c: sum(o["amount"] or 0 for o in orders_of(c, lambda o: within(o["ordered_at"], 45))) > 60,
    ),
    "avg_gte": (
        {"relation": "orders", "avg": {"attribute": "amount", "op": "gte", "value": 100}},
        lambda c: (
            any(o["amount"] is not None for o in orders_of(c))
            and sum(o["amount"] or 0 for o in orders_of(c))
            / len([o for o in orders_of(c) if o["amount"] is not None])
            >= 100
        ),
    ),
    "min_within_last": (  # first order in the last 30 days
        {"relation": "orders", "min": {"attribute": "ordered_at", "op": "within_last", "value": "30 days"}},
        lambda c: bool(orders_of(c)) and within(min(o["ordered_at"] for o in orders_of(c)), 30),
    ),
    "max_not_within_last_includes_never_ordered": (  # lapsed: no order in the last 30 days
        {
            "relation": "orders",
            "max": {"attribute": "ordered_at", "op": "not_within_last", "value": "30 days"},
        },
        lambda c: not any(within(o["ordered_at"], 30) for o in orders_of(c)),
    ),
    "not_relation": (
        {"not": {"relation": "orders", "exists": True, "where": attr("amount", "gt", 100)}},
        lambda c: not orders_of(c, lambda o: gt(o["amount"], 100)),
    ),
}


@pytest.mark.parametrize("case", RELATION_CASES, ids=list(RELATION_CASES))
def test_relationship_condition(warehouse, case):
    filter, predicate = RELATION_CASES[case]
    expected = customers_where(predicate)
    assert expected not in (set(), ALL_IDS)
    assert warehouse.members(filter) == expected


def test_many_to_one_relationship_filters_orders_by_their_customer(warehouse):
    filter = {"relation": "customer", "exists": True, "where": FRENCH}
    french = {c["customer_id"] for c in C if c["country"] == "FR"}
    assert warehouse.members(filter, model="orders") == {
        o["order_id"] for o in O if o["customer_id"] in french
    }


def test_three_hops_back_from_order_lines_to_customers(warehouse):
    filter = {
        "relation": "order",
        "exists": True,
        "where": {"relation": "customer", "exists": True, "where": attr("vip", "eq", True)},
    }
    vip = {c["customer_id"] for c in C if c["vip"] is True}
    vip_orders = {o["order_id"] for o in O if o["customer_id"] in vip}
    expected = {line["line_id"] for line in L if line["order_id"] in vip_orders}
    assert warehouse.members(filter, model="order_lines") == expected


# ------------------------------------------------------------------------------------------ segments


def test_segment_in_keeps_members_of_the_other_segment(warehouse):
    filter = {"all": [{"segment": "french", "op": "in"}, attr("ltv", "gte", 100)]}
    assert warehouse.members(filter) == customers_where(
        lambda c: c["country"] == "FR" and (c["ltv"] or 0) >= 100
    )


def test_segment_not_in_excludes_members_of_the_other_segment(warehouse):
    assert warehouse.members({"segment": "french", "op": "not_in"}) == customers_where(
        lambda c: c["country"] != "FR"
    )


# ------------------------------------------------------------------------------------------ injection


@pytest.mark.parametrize(
    "filter, expected",
    [
        (attr("country", "eq", INJECTION), set()),
        (attr("country", "in", [INJECTION, "x') OR ('1'='1"]), set()),
        (attr("name", "eq", INJECTION), {7}),  # the customer really named like this, and nobody else
        (attr("name", "contains", "1=1 --"), {7}),
        (attr("country", "starts_with", "' OR '1'='1"), set()),
        (attr("signup_at", "within_last", "1 days'; --"), None),  # rejected, never rendered
    ],
)
def test_values_stay_literals(warehouse, filter, expected):
    if expected is None:
        with pytest.raises(FilterError):
            warehouse.members(filter)
    else:
        assert warehouse.members(filter) == expected


def test_identifiers_cannot_be_smuggled_through_attribute_names():
    with pytest.raises(FilterError, match="unknown attribute 'ltv\" OR 1=1 --'"):
        compile_segment_filter(attr('ltv" OR 1=1 --', "gt", 1), "customers", MODELS, {}, "duckdb")


# ------------------------------------------------------------------------------------------ validation

VALID = ", ".join(sorted(MODELS["customers"].columns))
OPS = (
    "eq, neq, gt, gte, lt, lte, in, not_in, between, is_null, is_not_null, contains, starts_with, "
    "within_last, not_within_last"
)

VALIDATION_CASES = {
    "unknown_attribute": (
        {"all": [FRENCH, attr("ltvv", "gt", 1)]},
        f"filter.all[1].attribute: unknown attribute 'ltvv' of model 'customers'; valid: {VALID}",
    ),
    "unknown_operator": (
        {"all": [attr("name", "like", "A%")]},
        f"filter.all[0].op: unknown operator 'like'; allowed: {OPS}",
    ),
    "missing_operator": ({"attribute": "name", "value": 1}, f"filter.op: missing operator; allowed: {OPS}"),
    "unknown_relationship": (
        {"any": [{"relation": "ordres", "exists": True}]},
        "filter.any[0].relation: unknown relationship 'ordres' of model 'customers'; valid: orders",
    ),
    "between_not_a_pair": (
        attr("ltv", "between", [1, 2, 3]),
        "filter.value: operator 'between' needs a list [low, high] of two values; found [1, 2, 3]",
    ),
    "between_scalar": (
        attr("ltv", "between", 5),
        "filter.value: operator 'between' needs a list [low, high] of two values; found 5",
    ),
    "in_scalar": (
        attr("country", "in", "FR"),
        (
            "filter.value: operator 'in' needs a non-empty list of values "
            "(each single value (text, number, boolean or date), no nulls); found 'FR'"
        ),
    ),
    "in_empty": (
        attr("country", "not_in", []),
        (
            "filter.value: operator 'not_in' needs a non-empty list of values "
            "(each single value (text, number, boolean or date), no nulls); found []"
        ),
    ),
    "unknown_unit": (
        attr("signup_at", "within_last", "2 fortnights"),
        (
            "filter.value: unknown time unit 'fortnights' in '2 fortnights'; "
            "allowed: minutes, hours, days, weeks, months, years"
        ),
    ),
    "duration_without_unit": (
        attr("signup_at", "within_last", 30),
        "filter.value: expected a duration '<number> <unit>' such as '30 days'; found 30",
    ),
    "eq_null": (
        attr("country", "eq", None),
        (
            "filter.value: operator 'eq' needs a single value (text, number, boolean or date); found null "
            "(use is_null / is_not_null to test for missing values)"
        ),
    ),
    "is_null_with_value": (
        attr("country", "is_null", "x"),
        "filter.value: operator 'is_null' takes no value; found 'x'",
    ),
    "contains_empty": (
        attr("name", "contains", ""),
        "filter.value: operator 'contains' needs a non-empty text value; found ''",
    ),
    "unknown_key": (
        {"attribute": "ltv", "op": "gt", "value": 1, "vaule": 2},
        "filter.vaule: unknown key 'vaule'; did you mean 'value'? allowed: attribute, op, value",
    ),
    "unknown_key_far_from_any": (
        {"attribute": "ltv", "op": "gt", "value": 1, "zzz": 2},
        "filter.zzz: unknown key 'zzz'; allowed: attribute, op, value",
    ),
    "misspelt_condition_kind": (
        {"all": [{"atribute": "ltv", "op": "gt", "value": 1}]},
        ("filter.all[0]: expected one of all, any, not, attribute, segment, relation; found keys: atribute, op, "
        "value; did you mean 'attribute'?"),
    ),
    "unknown_key_in_a_count": (
        {"relation": "orders", "count": {"op": "gte", "valeu": 2}},
        ("filter.count.valeu: unknown key 'valeu'; did you mean 'value'? allowed: op, value\n"
        "filter.count.value: operator 'gte' needs a value"),
    ),
    "not_a_node": (
        {"all": [{"foo": 1}]},
        "filter.all[0]: expected one of all, any, not, attribute, segment, relation; found keys: foo",
    ),
    "group_with_extra_key": (
        {"all": [], "any": []},
        "filter: a group takes exactly one key (all, any or not); found keys: all, any",
    ),
    "empty_any": (
        {"any": []},
        "filter.any: expected a non-empty list of conditions (an empty `any` matches nobody)",
    ),
    "segment_of_another_model": (
        {"segment": "big_orders", "op": "in"},
        "filter.segment: segment 'big_orders' is a segment of model 'orders', not of 'customers'; valid: french",
    ),
    "unknown_segment": (
        {"segment": "frnch", "op": "in"},
        "filter.segment: unknown segment 'frnch'; valid segments of model 'customers': french",
    ),
    "segment_operator": (
        {"segment": "french", "op": "eq"},
        "filter.op: unknown operator 'eq' for a segment condition; allowed: in, not_in",
    ),
    "relation_two_measures": (
        {"relation": "orders", "exists": True, "count": {"op": "gt", "value": 1}},
        "filter: a relation condition takes exactly one of exists, count, sum, avg, min, max; found exists, count",
    ),
    "count_not_a_number": (
        {"relation": "orders", "count": {"op": "gt", "value": "two"}},
        "filter.count.value: operator 'gt' needs a number; found 'two'",
    ),
    "count_operator": (
        {"relation": "orders", "count": {"op": "contains", "value": 1}},
        "filter.count.op: unknown operator 'contains'; allowed: eq, neq, gt, gte, lt, lte, in, not_in, between",
    ),
    "sum_unknown_attribute_of_related_model": (
        {"relation": "orders", "sum": {"attribute": "ltv", "op": "gt", "value": 1}},
        "filter.sum.attribute: unknown attribute 'ltv' of model 'orders'; valid: amount, customer_id, order_id, ordered_at",
    ),
    "unknown_attribute_in_where_names_the_related_model": (
        {
            "relation": "orders",
            "exists": True,
            "where": {"all": [{"relation": "lines", "exists": True, "where": attr("colour", "eq", "red")}]},
        },
        (
            "filter.where.all[0].where.attribute: unknown attribute 'colour' of model 'order_lines'; "
            "valid: line_id, order_id, product_type, quantity"
        ),
    ),
    "exists_not_boolean": (
        {"relation": "orders", "exists": "yes"},
        "filter.exists: expected true or false; found 'yes'",
    ),
}


@pytest.mark.parametrize("case", VALIDATION_CASES, ids=list(VALIDATION_CASES))
def test_validation_error_message(case):
    filter, message = VALIDATION_CASES[case]
    with pytest.raises(FilterError) as raised:
        validate_filter(filter, "customers", MODELS, SEGMENTS)
    assert str(raised.value) == message


def test_validation_reports_every_problem_one_per_line():
    filter = {
        "all": [attr("ltvv", "like", 1), {"relation": "ordres", "exists": True}, attr("ltv", "between", 5)]
    }
    with pytest.raises(FilterError) as raised:
        validate_filter(filter, "customers", MODELS, SEGMENTS, path="segments.shoe_fans.filter")
    assert raised.value.errors == [
        f"segments.shoe_fans.filter.all[0].attribute: unknown attribute 'ltvv' of model 'customers'; valid: {VALID}",
        f"segments.shoe_fans.filter.all[0].op: unknown operator 'like'; allowed: {OPS}",
        "segments.shoe_fans.filter.all[1].relation: unknown relationship 'ordres' of model 'customers'; valid: orders",
        "segments.shoe_fans.filter.all[2].value: operator 'between' needs a list [low, high] of two values; found 5",
    ]
    assert str(raised.value) == "\n".join(raised.value.errors)


VALID_CASES = {**OPERATOR_CASES, **GROUP_CASES, **RELATION_CASES,
               "not_in_segment": ({"segment": "french", "op": "not_in"}, lambda c: c["country"] != "FR")}


@pytest.mark.parametrize("case", VALID_CASES, ids=list(VALID_CASES))
def test_valid_filters_pass_validation(duckdb_warehouse, case):
    # What validation accepts compiles to SQL that selects exactly the customers the filter describes.
    filter, predicate = VALID_CASES[case]
    assert validate_filter(filter, "customers", MODELS, SEGMENTS) is None
    assert duckdb_warehouse.members(filter) == customers_where(predicate)


def nested(levels: int, wrap: Callable[[dict], dict], leaf: dict = FRENCH) -> dict:
    """``leaf`` wrapped ``levels`` times: ``levels + 1`` levels of conditions."""
    for _ in range(levels):
        leaf = wrap(leaf)
    return leaf


DEPTH_CASES = {
    # 11 groups around one condition: 12 levels, the most a filter may nest.
    "not": (lambda f: {"not": f}, lambda c: c["country"] != "FR"),  # 11 nots: not French
    "all": (
        lambda f: {"all": [f, attr("ltv", "is_not_null")]},
        lambda c: c["country"] == "FR" and c["ltv"] is not None,
    ),
    "any": (lambda f: {"any": [f, attr("ltv", "gt", 500)]}, lambda c: c["country"] == "FR" or gt(c["ltv"], 500)),
}


@pytest.mark.parametrize("case", DEPTH_CASES, ids=list(DEPTH_CASES))
def test_twelve_levels_of_conditions_compile_and_select_the_rows(warehouse, case):
    wrap, predicate = DEPTH_CASES[case]
    filter = nested(11, wrap)
    assert validate_filter(filter, "customers", MODELS, SEGMENTS) is None
    # The compiled SQL parses back (the asset layer re-reads it) and selects the expected customers.
    sql = compile_segment_filter(filter, "customers", MODELS, SEGMENT_VIEWS, warehouse.dialect)
    assert sqlglot.parse_one(sql, read=warehouse.dialect) is not None
    assert warehouse.members(filter) == customers_where(predicate)


def relation_chain(hops: int, leaf: dict) -> dict:
    """customers -orders-> orders -customer-> customers -orders-> ...: ``hops`` relations around ``leaf``."""
    for level in range(hops, 0, -1):  # level 1 is on customers, level 2 on orders, ...
        leaf = {"relation": "orders" if level % 2 else "customer", "exists": True, "where": leaf}
    return leaf


def test_twelve_levels_of_relations_compile_and_select_the_rows(warehouse):
    # 11 hops and the condition on the orders reached: every hop leads back to the same customer.
    filter = relation_chain(11, attr("amount", "gt", 60))
    assert validate_filter(filter, "customers", MODELS, SEGMENTS) is None
    sql = compile_segment_filter(filter, "customers", MODELS, SEGMENT_VIEWS, warehouse.dialect)
    assert sqlglot.parse_one(sql, read=warehouse.dialect) is not None
    assert warehouse.members(filter) == customers_where(lambda c: any(gt(o["amount"], 60) for o in orders_of(c)))


@pytest.mark.parametrize(
    ("filter", "path"),
    [
        (nested(12, lambda f: {"not": f}), ".not" * 12),
        (nested(12, lambda f: {"all": [f]}), ".all[0]" * 12),
        (nested(12, lambda f: {"any": [FRENCH, f]}), ".any[1]" * 11 + ".any[0]"),  # the first at level 13
        (relation_chain(12, FRENCH), ".where" * 12),
    ],
    ids=["not", "all", "any", "relation"],
)
def test_thirteen_levels_of_conditions_are_one_problem(filter, path):
    message = (f"segments.deep.filter{path}: conditions nested deeper than 12 levels; allowed: at most 12 levels "
               "of all, any, not and relation where")
    with pytest.raises(FilterError) as raised:
        validate_filter(filter, "customers", MODELS, SEGMENTS, path="segments.deep.filter")
    assert raised.value.errors == [message]
    with pytest.raises(FilterError) as raised:
        compile_segment_filter(filter, "customers", MODELS, SEGMENT_VIEWS, "duckdb", path="segments.deep.filter")
    assert raised.value.errors == [message]
    assert filter_depth_problem(filter, "segments.deep.filter") == message


def test_a_filter_10k_levels_deep_is_one_problem_without_recursion_error():
    filter = nested(10_000, lambda f: {"not": f})
    message = ("segments.deep.filter" + ".not" * 12 + ": conditions nested deeper than 12 levels; allowed: at most "
               "12 levels of all, any, not and relation where")
    assert filter_depth_problem(filter, "segments.deep.filter") == message
    with pytest.raises(FilterError) as raised:
        validate_filter(filter, "customers", MODELS, SEGMENTS, path="segments.deep.filter")
    assert raised.value.errors == [message]


# ---------------------------------------------------------------------------------- calculated fields

CALCULATED = [
    {
        "name": "total_spent",
        "type": "aggregate",
        "relation": "orders",
        "function": "sum",
        "attribute": "amount",
    },
    {"name": "order_count", "type": "aggregate", "relation": "orders", "function": "count"},
    {
        "name": "shoe_orders_90d",
        "type": "aggregate",
        "relation": "orders",
        "function": "count",
        "within_last": "90 days",
        "where": {"relation": "lines", "exists": True, "where": attr("product_type", "eq", "shoes")},
    },
    {
        "name": "avg_basket",
        "type": "aggregate",
        "relation": "orders",
        "function": "avg",
        "attribute": "amount",
    },
    {
        "name": "last_order_at",
        "type": "aggregate",
        "relation": "orders",
        "function": "max",
        "attribute": "ordered_at",
    },
    {
        "name": "ltv_band",
        "type": "formula",
        "sql": "case when ltv > 500 then 'high' when ltv is null then null else 'low' end",
    },
    {"name": "big_spender", "type": "formula", "sql": "total_spent >= 100"},
    {
        "name": "label",
        "type": "formula",
        "sql": "coalesce(ltv_band, 'none') || '-' || coalesce(favourite_store, '?')",
    },
]
CUSTOM = [{"name": "favourite_store", "sql": "select customer_id, store from ft_raw.visits"}]
CALCULATED_COLUMNS = (
    "favourite_store",
    "total_spent",
    "order_count",
    "shoe_orders_90d",
    "avg_basket",
    "last_order_at",
    "ltv_band",
    "big_spender",
    "label",
)


def expected_calculated(c: dict) -> dict:
    orders = orders_of(c)
    amounts = [o["amount"] for o in orders if o["amount"] is not None]
    band = None if c["ltv"] is None else ("high" if c["ltv"] > 500 else "low")
    stores = [s for k, s in VISITS if k == c["customer_id"] and s is not None]
    store = max(stores) if stores else None
    total = sum(amounts)
    return {
        "favourite_store": store,
        "total_spent": total,
        "order_count": len(orders),
        "shoe_orders_90d": len(orders_of(c, lambda o: has_shoes(o) and within(o["ordered_at"], 90))),
        "avg_basket": sum(amounts) / len(amounts) if amounts else None,
        "last_order_at": max((o["ordered_at"] for o in orders), default=None),
        "ltv_band": band,
        "big_spender": total >= 100,
        "label": f"{band or 'none'}-{store or '?'}",
    }


def test_model_select_adds_calculated_fields_and_custom_attributes(warehouse):
    sql = compile_model_select(
        exp.to_table("ft_raw.customers"), MODELS["customers"], CALCULATED, CUSTOM, MODELS, warehouse.dialect
    )
    columns = MODELS["customers"].columns + CALCULATED_COLUMNS
    select = ", ".join(f'"{c}"' for c in columns)
    rows = warehouse.execute(f"SELECT {select} FROM ({sql}) AS v ORDER BY customer_id")
    # One row per customer: several visits of one customer are reduced to one value.
    assert [r[0] for r in rows] == sorted(ALL_IDS)
    by_id = {c["customer_id"]: c for c in C}
    for row in rows:
        got = dict(zip(columns, row))
        expected = expected_calculated(by_id[got["customer_id"]])
        got_calculated = {k: got[k] for k in CALCULATED_COLUMNS}
        if got_calculated["last_order_at"] is not None:
            got_calculated["last_order_at"] = got_calculated["last_order_at"].astimezone(dt.timezone.utc)
        assert got_calculated == expected, got["customer_id"]


def test_filters_work_on_calculated_fields(warehouse):
    view = f"ft_views.model_customers_calc_{warehouse.dialect}"
    sql = compile_model_select(
        exp.to_table("ft_raw.customers"), MODELS["customers"], CALCULATED, CUSTOM, MODELS, warehouse.dialect
    )
    warehouse.execute(f"CREATE OR REPLACE VIEW {view} AS {sql}")
    base = MODELS["customers"]
    models = {
        **MODELS,
        "customers": ModelInfo(
            base.name,
            exp.to_table(view),
            base.primary_key,
            base.columns + CALCULATED_COLUMNS,
            base.relationships,
        ),
    }
    filter = {"any": [attr("shoe_orders_90d", "gte", 2), attr("favourite_store", "eq", "Dublin")]}
    sql = compile_segment_filter(filter, "customers", models, {}, warehouse.dialect)
    got = {r[0] for r in warehouse.execute(f"SELECT customer_id FROM ({sql}) AS q")}
    expected = customers_where(
        lambda c: (
            expected_calculated(c)["shoe_orders_90d"] >= 2
            or expected_calculated(c)["favourite_store"] == "Dublin"
        )
    )
    assert got == expected == {1, 2}


def test_model_select_over_a_sql_base_keeps_every_column(warehouse):
    base = "select customer_id, ltv from ft_raw.customers where country = 'FR'"
    model = ModelInfo(
        "customers",
        exp.to_table("x.y"),
        "customer_id",
        ("customer_id", "ltv"),
        MODELS["customers"].relationships,
    )
    # Unquoted names in a formula match the model's columns whatever their case.
    calculated = [{"name": "double_ltv", "type": "formula", "sql": "LTV * 2"}]
    sql = compile_model_select(base, model, calculated, [], MODELS, warehouse.dialect)
    rows = warehouse.execute(f"SELECT * FROM ({sql}) AS v ORDER BY customer_id")
    assert rows == [(c["customer_id"], c["ltv"], c["ltv"] * 2) for c in C if c["country"] == "FR"]


CALCULATED_ERRORS = {
    "unknown_aggregate_attribute": (
        [
            {
                "name": "total",
                "type": "aggregate",
                "relation": "orders",
                "function": "sum",
                "attribute": "amout",
            }
        ],
        [],
        (
            "models.customers.calculated_fields[0].attribute: unknown attribute 'amout' of model 'orders'; "
            "valid: amount, customer_id, order_id, ordered_at"
        ),
    ),
    "unknown_relationship": (
        [{"name": "total", "type": "aggregate", "relation": "order", "function": "count"}],
        [],
        "models.customers.calculated_fields[0].relation: unknown relationship 'order' of model 'customers'; valid: orders",
    ),
    "unknown_function": (
        [
            {
                "name": "total",
                "type": "aggregate",
                "relation": "orders",
                "function": "median",
                "attribute": "amount",
            }
        ],
        [],
        "models.customers.calculated_fields[0].function: unknown function 'median'; allowed: sum, count, avg, min, max",
    ),
    "count_with_attribute": (
        [
            {
                "name": "n",
                "type": "aggregate",
                "relation": "orders",
                "function": "count",
                "attribute": "amount",
            }
        ],
        [],
        "models.customers.calculated_fields[0].attribute: 'count' counts related rows and takes no attribute; found 'amount'",
    ),
    "within_last_without_time_column": (
        [
            {
                "name": "n",
                "type": "aggregate",
                "relation": "orders",
                "function": "count",
                "within_last": "9 days",
                "time_attribute": "when",
            }
        ],
        [],
        (
            "models.customers.calculated_fields[0].time_attribute: unknown attribute 'when' of model 'orders'; "
            "valid: amount, customer_id, order_id, ordered_at"
        ),
    ),
    "bad_where": (
        [
            {
                "name": "n",
                "type": "aggregate",
                "relation": "orders",
                "function": "count",
                "where": attr("x", "eq", 1),
            }
        ],
        [],
        (
            "models.customers.calculated_fields[0].where.attribute: unknown attribute 'x' of model 'orders'; "
            "valid: amount, customer_id, order_id, ordered_at"
        ),
    ),
    "formula_unknown_column": (
        [{"name": "band", "type": "formula", "sql": "case when ltvv > 1 then 'a' end"}],
        [],
        f"models.customers.calculated_fields[0].sql: unknown column 'ltvv'; valid: band, {VALID}",
    ),
    "formula_subquery": (
        [{"name": "band", "type": "formula", "sql": "(select max(ltv) from ft_raw.customers)"}],
        [],
        (
            "models.customers.calculated_fields[0].sql: must be an expression over the model's columns; subqueries "
            "and statements are not allowed (use an aggregate field or a custom attribute)"
        ),
    ),
    "formula_two_statements": (
        [{"name": "band", "type": "formula", "sql": "ltv; drop table x"}],
        [],
        "models.customers.calculated_fields[0].sql: expected one SQL expression; found 2 statements",
    ),
    "formula_does_not_parse": (
        [{"name": "band", "type": "formula", "sql": "case when ltv > then"}],
        [],
        None,  # the parser's message follows the key path
    ),
    "formula_aggregate": (
        [{"name": "band", "type": "formula", "sql": "sum(ltv)"}],
        [],
        "models.customers.calculated_fields[0].sql: aggregate function 'SUM(ltv)' is not allowed (use an aggregate field)",
    ),
    "formula_cycle": (
        [{"name": "a", "type": "formula", "sql": "b + 1"}, {"name": "b", "type": "formula", "sql": "a + 1"}],
        [],
        (
            "models.customers.calculated_fields[0].sql: formula 'a' depends on itself through b\n"
            "models.customers.calculated_fields[1].sql: formula 'b' depends on itself through a"
        ),
    ),
    "name_clash": (
        [{"name": "ltv", "type": "formula", "sql": "1"}],
        [],
        "models.customers.calculated_fields[0].name: 'ltv' is already a column of the model",
    ),
    "unknown_type": (
        [{"name": "x", "type": "magic"}],
        [],
        "models.customers.calculated_fields[0].type: unknown type 'magic'; allowed: aggregate, formula",
    ),
    "custom_attribute_three_columns": (
        [],
        [{"name": "store", "sql": "select customer_id, store, 1 as x from ft_raw.visits"}],
        (
            "models.customers.custom_attributes[0].sql: the query must return exactly two named columns (key, value); "
            "found customer_id, store, 1 AS x"
        ),
    ),
    "custom_attribute_not_a_query": (
        [],
        [{"name": "store", "sql": "drop table ft_raw.visits"}],
        "models.customers.custom_attributes[0].sql: expected a query returning (key, value) rows; found DROP",
    ),
}


@pytest.mark.parametrize("case", CALCULATED_ERRORS, ids=list(CALCULATED_ERRORS))
def test_calculated_field_errors(case):
    calculated, custom, message = CALCULATED_ERRORS[case]
    with pytest.raises(FilterError) as raised:
        compile_model_select(
            exp.to_table("ft_raw.customers"), MODELS["customers"], calculated, custom, MODELS, "duckdb"
        )
    if message is None:
        assert str(raised.value).startswith(
            "models.customers.calculated_fields[0].sql: does not parse as duckdb SQL: "
        )
    else:
        assert str(raised.value) == message


# ------------------------------------------------------------------------------------- other dialects

BIG_FILTER = {
    "all": [
        attr("country", "not_in", ["FR", INJECTION]),
        attr("name", "contains", "50%_off"),
        attr("signup_at", "within_last", "3 months"),
        {"not": attr("ltv", "neq", 5)},
        {"segment": "french", "op": "not_in"},
        {"relation": "orders", "count": {"op": "gte", "value": 2}, "where": SHOES_90D},
        {"relation": "orders", "sum": {"attribute": "amount", "op": "between", "value": [10, 99.5]}},
    ]
}
DIALECT_FRAGMENTS = {
    "snowflake": [
        "CHARINDEX('50%_off', CAST(m.\"name\" AS VARCHAR)) > 0",
        "CURRENT_TIMESTAMP() - INTERVAL '3 MONTH'",
        "CURRENT_TIMESTAMP() - INTERVAL '90 DAY'",
    ],
    "bigquery": [
        "INSTR(CAST(m.`name` AS STRING), '50%_off') > 0",
        "TIMESTAMP(DATETIME_SUB(CURRENT_DATETIME(), INTERVAL 3 MONTH))",
        "CURRENT_TIMESTAMP() - INTERVAL 90 DAY",
    ],
    "databricks": [
        "LOCATE('50%_off', CAST(m.`name` AS STRING)) > 0",
        "CURRENT_TIMESTAMP() - INTERVAL 3 MONTH",
    ],
    "redshift": ["POSITION('50%_off' IN CAST(m.\"name\" AS VARCHAR)) > 0", "GETDATE() - INTERVAL '3 MONTH'"],
}


@pytest.mark.parametrize("dialect", list(DIALECT_FRAGMENTS))
def test_filter_renders_and_parses_back_in_each_dialect(dialect):
    sql = compile_segment_filter(BIG_FILTER, "customers", MODELS, SEGMENT_VIEWS, dialect)
    for fragment in DIALECT_FRAGMENTS[dialect]:
        assert fragment in sql
    tree = sqlglot.parse_one(sql, read=dialect)
    assert tree.sql(dialect=dialect) == sqlglot.parse_one(tree.sql(dialect=dialect), read=dialect).sql(
        dialect=dialect
    )
    # The injection attempt is one string literal, not SQL.
    literals = {lit.this for lit in tree.find_all(exp.Literal) if lit.is_string}
    assert INJECTION in literals
    assert not any(isinstance(e, exp.EQ) and e.sql() == "1 = 1" for e in tree.find_all(exp.EQ))
    # The outer query reads the model view.
    assert tree.args["from_"].this.sql(dialect=dialect).startswith("ft_views.model_customers")


@pytest.mark.parametrize("dialect", list(DIALECT_FRAGMENTS))
def test_model_select_renders_and_parses_back_in_each_dialect(dialect):
    sql = compile_model_select(
        exp.to_table("ft_raw.customers"), MODELS["customers"], CALCULATED, CUSTOM, MODELS, dialect
    )
    tree = sqlglot.parse_one(sql, read=dialect)
    names = set()
    for select in tree.find_all(exp.Select):
        names |= {p.alias for p in select.expressions if isinstance(p, exp.Alias)}
    assert set(CALCULATED_COLUMNS) <= names


def test_postgres_and_duckdb_agree_on_the_big_filter(duckdb_warehouse, postgres_warehouse):
    big = {**BIG_FILTER, "all": BIG_FILTER["all"][:1] + BIG_FILTER["all"][2:]}
    relaxed = {"any": [big, {"relation": "orders", "exists": True}, attr("signup_at", "is_null")]}
    assert duckdb_warehouse.members(relaxed) == postgres_warehouse.members(relaxed) != set()

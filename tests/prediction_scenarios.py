"""The hand-made orders of the prediction tests and their features as of 2024-07-01, computed by hand:
tests/test_predictions.py holds DuckDB to them exactly, tests/test_predictions_warehouses.py every
warehouse (to 12 decimals).

Imported as a top-level module, like ``platform_scenarios``: pytest puts tests/ on sys.path.
"""

from __future__ import annotations

import datetime as dt
import math

T = dt.datetime

HAND_ORDERS = [  # order_id, customer_id, ordered_at, amount, product_id, category
    (1, 1, T(2024, 1, 10, 10), 100.0, "p1", "A"),
    (2, 1, T(2024, 5, 1), 50.0, "p2", "B"),
    (3, 1, T(2024, 6, 20, 12), 30.0, "p1", "A"),
    (4, 2, T(2024, 6, 30, 23), 20.0, "p3", "A"),
    (5, 2, T(2024, 7, 1), 999.0, "p3", "B"),  # at the cutoff: after it
    (6, 1, T(2024, 8, 1), 10.0, "p2", "B"),  # after it
]
NO_TREND = {"orders_prev_90d": 0.0, "amount_prev_90d": 0.0}
# the features as of 2024-07-01 (customer 1: gaps of 112 and 50 days; 2: one order; 3: none)
HAND_FEATURES = [
    {
        "customer_key": 1,
        "frequency": 3.0,
        "monetary_total": 180.0,
        "monetary_avg": 60.0,
        "recency_days": 11.0,
        "tenure_days": 173.0,
        "interpurchase_days": 81.0,
        "orders_30d": 1.0,
        "orders_90d": 2.0,
        "orders_365d": 3.0,
        "orders_prev_90d": 1.0,
        "amount_90d": 80.0,
        "amount_prev_90d": 100.0,
        "amount_365d": 180.0,
        "orders_per_day": 3 / 173,
        "recency_to_interpurchase": 11 / 81,
        "max_gap_days": 112.0,
        "gap_cv": math.sqrt(((112 - 81) ** 2 + (50 - 81) ** 2) / 1) / 81,
        "recency_to_max_gap": 11 / 112,
        "category_share_0": 2 / 3,
        "category_share_1": 1 / 3,
    },
    {
        "customer_key": 2,
        "frequency": 1.0,
        "monetary_total": 20.0,
        "monetary_avg": 20.0,
        "recency_days": 1.0,
        "tenure_days": 1.0,
        "interpurchase_days": None,
        "orders_30d": 1.0,
        "orders_90d": 1.0,
        "orders_365d": 1.0,
        **NO_TREND,
        "amount_90d": 20.0,
        "amount_365d": 20.0,
        "orders_per_day": 1.0,
        "recency_to_interpurchase": None,
        "max_gap_days": None,
        "gap_cv": None,
        "recency_to_max_gap": None,
        "category_share_0": 1.0,
        "category_share_1": 0.0,
    },
    {
        "customer_key": 3,
        "frequency": 0.0,
        "monetary_total": 0.0,
        "monetary_avg": None,
        "recency_days": None,
        "tenure_days": None,
        "interpurchase_days": None,
        "orders_30d": 0.0,
        "orders_90d": 0.0,
        "orders_365d": 0.0,
        **NO_TREND,
        "amount_90d": 0.0,
        "amount_365d": 0.0,
        "orders_per_day": 0.0,
        "recency_to_interpurchase": None,
        "max_gap_days": None,
        "gap_cv": None,
        "recency_to_max_gap": None,
        "category_share_0": None,
        "category_share_1": None,
    },
]

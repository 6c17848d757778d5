"""Predictions: lifetime value, churn and product recommendations, learned from a project's own models.

``spec``: the ``predictions:`` configuration, its validation and the built-in score models;
``features``: the SQL (sqlglot, per dialect) that computes features and labels inside the warehouse;
``learn``: the models, their baselines, the metrics and the promotion rule (LightGBM, scikit-learn, scipy);
``tables``: the score, candidate and run tables in the ``predictions`` helper schema;
``engine``: training, back-testing and publishing over a warehouse; ``simulate``: customers and orders from a
known process (benchmarks and tests). The Dagster assets are in ``assets/predictions.py``.
(Nothing is imported here: the configuration loader imports ``spec``.)
"""

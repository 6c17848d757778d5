"""Identity resolution: records of several models unified into profiles, inside the warehouse.

``spec``: the ``identity:`` configuration and its built-in models; ``engine``: the SQL that builds the graph,
the stable profile ids, the merges and the golden records. The Dagster assets are in ``assets/identity.py``.
(Nothing is imported here: the configuration loader imports ``spec`` and ``engine`` imports the loader.)
"""

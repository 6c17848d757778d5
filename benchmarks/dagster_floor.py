"""The floor of any Dagster run: one trivial asset materialized in the instance of ``DAGSTER_HOME``.

``benchmarks/run.py --fixed-cost`` runs it as a whole process next to a 10-row ``dinmo sync``: what a
command pays for importing Dagster, opening its instance (SQLite run, event and schedule storage) and
recording one run with one step, before any work of its own.
"""

from __future__ import annotations

import dagster as dg


@dg.asset
def one() -> int:
    """Nothing to compute: the run's cost is Dagster's own."""
    return 1


if __name__ == "__main__":
    with dg.DagsterInstance.get() as instance:
        result = dg.materialize([one], instance=instance)
    raise SystemExit(0 if result.success else 1)

"""One sync of one activation in a fresh process, for the peak-memory figure of benchmarks/run.py.

    .venv/bin/python benchmarks/sync_child.py --project DIR --activation ACT [--idle]

Runs exactly what the activation's assets run (refresh the segment's view, ``take_snapshot``,
``deliver``), in-process, without a Dagster run, and prints one JSON line: its timings and its own
peak resident set size after each step (``ru_maxrss`` is a high-water mark, so each value is the peak
so far), and the peak of pyarrow's memory pool: the arrays the writers build (casts, rendered text,
Parquet pages; DuckDB allocates the batches it hands over itself). That is the Python side of the sync,
which streams, so it should not grow with the table. ``--idle`` stops after the imports and resources:
the fixed cost of the interpreter, Dagster, DuckDB and pyarrow, with no data touched. The parent measures the whole process's peak
independently, through benchmarks/measure.py.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time


def _peak_mb() -> float:
    """This process's peak RSS so far: VmHWM of its own memory (not inherited from its spawner)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # kilobytes on Linux


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--project", required=True)
    ap.add_argument("--activation", required=True)
    ap.add_argument("--idle", action="store_true")
    args = ap.parse_args()

    t0 = time.perf_counter()
    import dagster as dg

    from dinmo_dagster import sync
    from dinmo_dagster.assets.activations import sync_target
    from dinmo_dagster.assets.models import refresh_upstream
    from dinmo_dagster.config import load_project
    from dinmo_dagster.resources import build_resources

    out: dict[str, object] = {"import_s": time.perf_counter() - t0}
    project = load_project(args.project)
    with dg.build_resources(build_resources(project)) as resources:
        out["peak_mb_after_imports"] = _peak_mb()
        if not args.idle:
            t = sync_target(project, args.activation, resources)
            refresh_upstream(project, args.activation, resources)
            key = sync.new_partition_key()
            t1 = time.perf_counter()
            snap = sync.take_snapshot(t, key)
            t2 = time.perf_counter()
            out["peak_mb_after_snapshot"] = _peak_mb()
            result = sync.deliver(t, key)
            t3 = time.perf_counter()
            out.update(
                snapshot_s=t2 - t1, deliver_s=t3 - t2, rows=snap.rows, rows_written=result.rows_written,
                bytes=result.bytes, sync_type=result.sync_type, peak_mb_after_deliver=_peak_mb(),
            )
    out["peak_mb"] = _peak_mb()
    import pyarrow as pa

    out["arrow_pool_peak_mb"] = pa.default_memory_pool().max_memory() / 1e6
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

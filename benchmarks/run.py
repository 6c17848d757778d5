"""dinmo-dagster performance benchmark. One command:

    .venv/bin/python benchmarks/run.py [--rows 5000000] [--small-rows 1000000]
                                       [--out benchmarks/results/latest.json]

It builds a synthetic customers table in DuckDB files under a temporary directory, writes a project
YAML (DuckDB source, one model, a segment selecting every row, a ``local`` destination, three
activations), and measures:

1. full export, CSV and Parquet: the product's sync path (``take_snapshot`` + ``deliver``, called as
   the activation assets call them, in-process, WITHOUT the Dagster run around them) against DuckDB's
   own ``COPY (SELECT <same columns> FROM raw.customers) TO 'file' (FORMAT ...)``. Target <= 1.5.
2. delta sync after changing 1% of the rows (1/3 inserts, 1/3 updates, 1/3 deletes), ``difference``
   mode, CSV: its time (snapshot + deliver) / the full CSV export's time of figure 1. Target <= 0.25.
3. peak resident memory of one sync (CSV, and Parquet for information) in a child process at
   --small-rows and at --rows, started through benchmarks/measure.py (a stdlib-only launcher whose
   ``RUSAGE_CHILDREN.ru_maxrss`` is the child's own peak). Target < 600 MB, and the big figure within
   20% of the small one.
4. the whole ``dinmo --project DIR sync full_csv`` process (fresh DAGSTER_HOME: imports, instance,
   models, segments, checks, snapshot, delivery) against a plain pandas script
   (``con.sql(q).df()`` + ``to_csv``) on the same rows. Target <= 0.3. And against the whole ``drt run``
   process of drt-core (the closest open-source reverse-ETL CLI; DuckDB source, file destination, CSV,
   installed in its own virtualenv, skipped with the reason printed if it cannot be). Target <= 0.2.

Every figure runs with the product's defaults: the project YAML gives the DuckDB source its path only
(no ``memory_limit``, no ``preserve_insertion_order``), and the script prints the settings the
product's connections get. DuckDB's own ``COPY`` and the pandas script run with DuckDB's defaults.

Every time is wall clock. Figure 1 reports the steady-state sync (a full_only activation that
already has a baseline, as every scheduled sync after the first does) and the very first sync apart.
Times of the product's phases (exclusive: they add up to the total) come from light wrappers
around the warehouse, writer and destination calls; they do not change what runs.
Results go to --out as JSON, and a table is printed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PY = sys.executable
DINMO = str(Path(sys.executable).with_name("dinmo"))

COLUMNS = ["customer_id", "email", "country", "amount", "score", "orders_count", "updated_at", "note"]
COPY_QUERY = f"SELECT {', '.join(COLUMNS)} FROM raw.customers"

TARGETS = {
    "full_ratio": 1.5,
    "delta_ratio": 0.25,
    "memory_mb": 600.0,
    "memory_growth": 1.20,
    "process_ratio": 0.3,
    "drt_ratio": 0.2,
}

DRT_REQUIREMENT = "drt-core[duckdb]==1.2.1"
"""drt (https://github.com/drt-hub/drt), the closest open-source reverse-ETL CLI: figure 4's second baseline.
Installed in its own virtualenv (its CLI stack, typer/rich/httpx, stays out of the product's)."""


# ---------------------------------------------------------------------------------------------------------
# Data and project
# ---------------------------------------------------------------------------------------------------------


def rows_sql(start: int, stop: int) -> str:
    """Deterministic synthetic customers with ids in [start, stop): DuckDB SQL over range()."""
    return f"""
    SELECT
      i::BIGINT AS customer_id,
      'customer' || i::VARCHAR || '@'
        || ['gmail.com', 'yahoo.fr', 'example.org', 'outlook.com', 'proton.me'][1 + (i % 5)::INTEGER] AS email,
      ['FR', 'DE', 'ES', 'IT', 'GB', 'US', 'NL', 'BE', 'CH', 'PL', 'SE', 'PT'][1 + (hash(i) % 12)::INTEGER]
        AS country,
      ((hash(i + 1) % 100000000)::DOUBLE / 100)::DECIMAL(12, 2) AS amount,
      (hash(i + 2) % 1000000007)::DOUBLE / 1000000007.0 AS score,
      (hash(i + 3) % 50)::INTEGER AS orders_count,
      TIMESTAMP '2024-01-01 00:00:00' + to_microseconds((hash(i + 4) % 31536000000000)::BIGINT) AS updated_at,
      CASE WHEN i % 5 = 0 THEN NULL
           WHEN i % 997 = 0 THEN 'said "hi", then left'
           ELSE 'note ' || (hash(i + 5) % 1000)::VARCHAR END AS note
    FROM range({start}, {stop}) AS t(i)
    """


def build_database(path: Path, rows: int) -> float:
    import duckdb

    started = time.perf_counter()
    con = duckdb.connect(str(path))
    try:
        con.execute("CREATE SCHEMA raw")
        con.execute(f"CREATE TABLE raw.customers AS {rows_sql(1, rows + 1)}")
        con.execute("CHECKPOINT")
    finally:
        con.close()
    return time.perf_counter() - started


PROJECT_YAML = """\
# Written by benchmarks/run.py. The source sets its path only: every DuckDB setting is the product's default.
sources:
  wh: {type: duckdb, path: wh.duckdb}
models:
  customers: {source: wh, table: raw.customers, primary_key: customer_id}
segments:
  everyone: {model: customers, sql: "select * from {{ model }}"}
destinations:
  out: {type: local, path: out}
activations:
  full_csv:
    segment: everyone
    destination: out
    folder: full_csv
    file_name: customers
    format: csv
    run_type: full_only
    sync_mode: snapshot
    keep_snapshots: 1
  full_parquet:
    segment: everyone
    destination: out
    folder: full_parquet
    file_name: customers
    format: parquet
    run_type: full_only
    sync_mode: snapshot
    keep_snapshots: 1
  delta_csv:
    segment: everyone
    destination: out
    folder: delta_csv
    file_name: "customers_{x}"
    format: csv
    run_type: full_then_delta
    sync_mode: difference
    keep_snapshots: 1
"""


def make_project(directory: Path, rows: int) -> dict[str, Any]:
    """A project directory with the benchmark's YAML and a DuckDB file of `rows` customers."""
    directory.mkdir(parents=True)
    (directory / "dinmo.yaml").write_text(PROJECT_YAML)
    build_s = build_database(directory / "wh.duckdb", rows)
    return {"dir": str(directory), "rows": rows, "build_s": round(build_s, 2)}


def product_duckdb_settings(project_dir: Path) -> dict[str, str]:
    """The DuckDB settings the product's connections to the project's source get (its defaults here)."""
    from dinmo_dagster.config import load_project
    from dinmo_dagster.resources import build_resources

    project = load_project(project_dir)
    source = project.sources["wh"]
    # a hand-set memory_limit (or any other setting) would measure something users do not run
    extra = sorted(source.model_fields_set - {"type", "path"})
    if extra:
        raise SystemExit(f"benchmarks/run.py: the source 'wh' sets {', '.join(extra)}; the benchmark runs with "
                         "the product's defaults only (type and path)")
    wh = build_resources(project)["source_wh"].get_warehouse()
    names = ("memory_limit", "temp_directory", "max_temp_directory_size", "preserve_insertion_order", "threads")
    query = "SELECT " + ", ".join(f"current_setting('{n}')" for n in names)
    values = wh.query(query)[0]
    settings = {n: str(v) for n, v in zip(names, values)}
    settings["memory_limit_config"] = str(wh.config.memory_limit)
    return settings


# ---------------------------------------------------------------------------------------------------------
# Phase timing: exclusive wall time per phase of the product's sync path
# ---------------------------------------------------------------------------------------------------------


class Phases:
    """Exclusive wall time per phase: a phase's time excludes the phases nested inside it."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self._stack: list[float] = []

    @contextmanager
    def phase(self, name: str):
        start = time.perf_counter()
        self._stack.append(0.0)
        try:
            yield
        finally:
            elapsed = time.perf_counter() - start
            nested = self._stack.pop()
            self.seconds[name] += elapsed - nested
            self.calls[name] += 1
            if self._stack:
                self._stack[-1] += elapsed

    def reset(self) -> None:
        self.seconds.clear()
        self.calls.clear()

    def report(self) -> dict[str, dict[str, float]]:
        order = sorted(self.seconds, key=lambda k: -self.seconds[k])
        return {k: {"s": round(self.seconds[k], 3), "calls": self.calls[k]} for k in order}


PHASES = Phases()


_CREATE_TARGET = re.compile(r'^CREATE (?:OR REPLACE )?TABLE (?:IF NOT EXISTS )?((?:"?[^". ]+"?\.)*"?([^". ]+)"?)')


def _sql_kind(sql: str) -> str:
    s = " ".join(sql.split()).upper()
    created = _CREATE_TARGET.match(s)
    target = created.group(2) if created else ""
    if target.startswith("ROWS__") and " AS " in s:
        return "sql: snapshot: rows delivered (values) + keys/hashes"
    if target.startswith("SNAP__") and " AS " in s:
        return "sql: snapshot: keys + row hashes"
    if "RENAME TO" in s or ("SNAP__" in s and s.startswith(("DELETE", "INSERT"))):
        return "sql: promotion: baseline snapshot updated in place (changed keys)"
    if target.startswith("VALS__") or ("VALS__" in s and s.startswith(("DELETE", "INSERT"))):
        return "sql: promotion: delivered values (difference)"
    if target.startswith("CHG__") and " AS " in s:
        return "sql: create change set (full outer join)"
    if "COUNT(DISTINCT" in s and "FULL OUTER JOIN" in s:
        return "sql: key stats + change counts (one join over the snapshot)"
    if "COUNT(DISTINCT" in s:
        return "sql: key stats (count distinct)"
    if s.startswith("SELECT COUNT(*) FROM") and s.endswith("IS NULL"):
        return "sql: NULL keys (count)"
    if s.startswith("DROP TABLE"):
        return "sql: drop tables"
    if "GROUP BY" in s and "_DINMO_CHANGE" in s:
        return "sql: change counts"
    if s.startswith(("CREATE OR REPLACE VIEW", "CREATE VIEW")):
        return "sql: views"
    return "sql: state tables (small)"


def install_phase_timers() -> None:
    """Wrap the product's warehouse, writer and destination calls with phase timers."""
    from dinmo_dagster import sync, writers
    from dinmo_dagster.destinations.local import LocalDestination
    from dinmo_dagster.warehouses import Warehouse
    from dinmo_dagster.warehouses.duckdb import DuckDBWarehouse

    wh_cls, duck = Warehouse, DuckDBWarehouse

    orig_execute, orig_query, orig_columns = wh_cls.execute, wh_cls.query, wh_cls.query_columns

    def execute(self, statements):
        stmts = [statements] if isinstance(statements, str) else list(statements)
        kinds = {_sql_kind(s) for s in stmts if s}
        heavy = sorted(k for k in kinds if "state" not in k and "drop" not in k)
        kind = heavy[-1] if heavy else min(kinds or {"sql: other"})
        with PHASES.phase(kind):
            return orig_execute(self, statements)

    def query(self, sql):
        with PHASES.phase(_sql_kind(sql)):
            return orig_query(self, sql)

    def query_columns(self, sql):
        with PHASES.phase("sql: describe (LIMIT 0)"):
            return orig_columns(self, sql)

    orig_open = duck._open

    @contextmanager
    def _open(self):
        cm = orig_open(self)
        with PHASES.phase("duckdb: open connection"):
            con = cm.__enter__()
        try:
            yield con
        except BaseException:
            with PHASES.phase("duckdb: close connection (checkpoint)"):
                if not cm.__exit__(*sys.exc_info()):
                    raise
        else:
            with PHASES.phase("duckdb: close connection (checkpoint)"):
                cm.__exit__(None, None, None)

    orig_stream = duck.stream

    @contextmanager
    def stream(self, sql, batch_rows=100_000):
        import pyarrow as pa

        cm = orig_stream(self, sql, batch_rows)
        with PHASES.phase("stream: start query"):
            reader = cm.__enter__()

        def timed():
            it = iter(reader)
            while True:
                with PHASES.phase("stream: wait for DuckDB batches"):
                    batch = next(it, None)
                if batch is None:
                    return
                yield batch

        try:
            yield pa.RecordBatchReader.from_batches(reader.schema, timed())
        except BaseException:
            if not cm.__exit__(*sys.exc_info()):
                raise
        else:
            cm.__exit__(None, None, None)

    # DuckDB's own writer (COPY), which a DuckDB source uses where it writes the same values.
    orig_copy_to, orig_column_types = getattr(duck, "copy_to", None), getattr(duck, "column_types", None)

    def copy_to(self, statement):
        with PHASES.phase("copy: DuckDB COPY (query) TO the part file"):
            return orig_copy_to(self, statement)

    def column_types(self, sql):
        with PHASES.phase("sql: describe (LIMIT 0)"):
            return orig_column_types(self, sql)

    if orig_copy_to is not None:
        duck.copy_to, duck.column_types = copy_to, column_types

    # A DuckDB delta applied in place: one transaction builds the changes (hash, join with the baseline,
    # changed keys only) and counts them.
    orig_execute_then_query = getattr(duck, "execute_then_query", None)

    def execute_then_query(self, statements, sql):
        with PHASES.phase("sql: snapshot: changed keys only (hash + join with the baseline) + counts"):
            return orig_execute_then_query(self, statements, sql)

    if orig_execute_then_query is not None:
        duck.execute_then_query = execute_then_query

    orig_write_parts = writers.write_parts

    def write_parts(*args, **kwargs):
        with PHASES.phase("write_parts: render + write (minus waits above)"):
            return orig_write_parts(*args, **kwargs)

    orig_upload = LocalDestination.upload

    def upload(self, local_path, object_path):
        with PHASES.phase("upload: local copy + fsync + rename"):
            return orig_upload(self, local_path, object_path)

    orig_snapshot, orig_deliver = sync.take_snapshot, sync.deliver

    def take_snapshot(*args, **kwargs):
        with PHASES.phase("python: take_snapshot (own code, sqlglot)"):
            return orig_snapshot(*args, **kwargs)

    def deliver(*args, **kwargs):
        with PHASES.phase("python: deliver (own code, sqlglot)"):
            return orig_deliver(*args, **kwargs)

    wh_cls.execute, wh_cls.query, wh_cls.query_columns = execute, query, query_columns
    duck._open, duck.stream = _open, stream
    writers.write_parts = write_parts
    LocalDestination.upload = upload
    sync.take_snapshot, sync.deliver = take_snapshot, deliver


# ---------------------------------------------------------------------------------------------------------
# Figure 1 and 2: in-process syncs
# ---------------------------------------------------------------------------------------------------------


class InProcess:
    """A project's resources, opened once; syncs run as the activation assets run them."""

    def __init__(self, project_dir: str) -> None:
        import dagster as dg

        from dinmo_dagster.config import load_project
        from dinmo_dagster.resources import build_resources

        self.project = load_project(project_dir)
        self._cm = dg.build_resources(build_resources(self.project))
        self.resources = self._cm.__enter__()

    def close(self) -> None:
        self._cm.__exit__(None, None, None)

    def target(self, activation: str):
        from dinmo_dagster.assets.activations import sync_target

        return sync_target(self.project, activation, self.resources)

    def refresh(self, activation: str) -> float:
        from dinmo_dagster.assets.models import refresh_upstream

        started = time.perf_counter()
        refresh_upstream(self.project, activation, self.resources)
        return time.perf_counter() - started

    def sync(self, activation: str) -> dict[str, Any]:
        from dinmo_dagster import sync

        t = self.target(activation)
        key = sync.new_partition_key()
        PHASES.reset()
        c0 = os.times()
        t0 = time.perf_counter()
        snap = sync.take_snapshot(t, key)
        t1 = time.perf_counter()
        result = sync.deliver(t, key)
        t2 = time.perf_counter()
        c1 = os.times()
        return {
            "total_s": round(t2 - t0, 3),
            "cpu_s": round((c1.user - c0.user) + (c1.system - c0.system), 2),
            "snapshot_s": round(t1 - t0, 3), "deliver_s": round(t2 - t1, 3),
            "sync_type": result.sync_type, "rows": snap.rows, "rows_written": result.rows_written,
            "bytes": result.bytes, "files": len(result.files), "writer": getattr(result, "writer", "arrow"),
            "counts": dataclasses.asdict(result.counts),
            "phases": PHASES.report(),
        }


def duckdb_copy(db: Path, out: Path, fmt: str) -> dict[str, Any]:
    import duckdb

    options = "FORMAT csv, HEADER true" if fmt == "csv" else "FORMAT parquet"
    out.unlink(missing_ok=True)
    c0 = os.times()
    started = time.perf_counter()
    con = duckdb.connect(str(db))
    try:
        con.execute(f"COPY ({COPY_QUERY}) TO '{out}' ({options})")
    finally:
        con.close()
    elapsed = time.perf_counter() - started
    c1 = os.times()
    # CPU time of this process (DuckDB's threads included): on a busy machine it varies less than wall time.
    cpu = (c1.user - c0.user) + (c1.system - c0.system)
    return {"s": round(elapsed, 3), "cpu_s": round(cpu, 2), "bytes": out.stat().st_size}


def figure_full(big: InProcess, db: Path, scratch: Path, repeats: int, copy_repeats: int) -> dict[str, Any]:
    out: dict[str, Any] = {"refresh_views_s": round(big.refresh("full_csv"), 3)}
    for fmt in ("csv", "parquet"):
        act = f"full_{fmt}"
        runs = []
        for i in range(repeats):
            r = big.sync(act)
            runs.append(r)
            print(f"  product {fmt} run {i + 1}: {r['total_s']:.2f} s (snapshot {r['snapshot_s']:.2f} + deliver "
                  f"{r['deliver_s']:.2f}; CPU {r['cpu_s']:.1f} s), {r['rows_written']} rows, {r['bytes'] / 1e6:.0f} MB, "
                  f"writer {r['writer']}", flush=True)
        copies = []
        for i in range(copy_repeats):
            c = duckdb_copy(db, scratch / f"copy.{fmt}", fmt)
            copies.append(c)
            print(f"  DuckDB COPY {fmt} run {i + 1}: {c['s']:.2f} s (CPU {c['cpu_s']:.1f} s), {c['bytes'] / 1e6:.0f} MB",
                  flush=True)
        steady = runs[1:] or runs
        best = min(steady, key=lambda r: r["total_s"])
        copy_best = min(c["s"] for c in copies)
        out[fmt] = {
            "product_s": best["total_s"],
            "product_first_sync_s": runs[0]["total_s"],
            "product_runs_s": [r["total_s"] for r in runs],
            "copy_s": copy_best,
            "copy_runs_s": [c["s"] for c in copies],
            "ratio": round(best["total_s"] / copy_best, 2),
            "ratio_first_sync": round(runs[0]["total_s"] / copy_best, 2),
            "writer": best["writer"],
            # CPU seconds (all threads), product / COPY: the figure that varies least on a shared machine.
            "cpu_ratio": round(min(r["cpu_s"] for r in steady) / max(min(c["cpu_s"] for c in copies), 0.01), 2),
            "product_bytes": best["bytes"],
            "copy_bytes": copies[-1]["bytes"],
            "best_run": best,
            "first_run": runs[0],
        }
    return out


def mutate(db: Path, round_no: int, total_rows: int, next_id: int) -> dict[str, int]:
    """Change 1% of the rows: a third updated, a third deleted, a third inserted."""
    import duckdb

    modulus = 300
    upd_r, del_r = 3 * round_no + 1, 3 * round_no + 2
    inserts = total_rows // modulus
    con = duckdb.connect(str(db))
    try:
        # UPDATE and DELETE return the number of rows they touched.
        updated = con.execute(f"UPDATE raw.customers SET amount = amount + 1, note = 'updated' "
                              f"WHERE customer_id % {modulus} = {upd_r}").fetchone()[0]
        removed = con.execute(f"DELETE FROM raw.customers WHERE customer_id % {modulus} = {del_r}").fetchone()[0]
        con.execute(f"INSERT INTO raw.customers {rows_sql(next_id, next_id + inserts)}")
        con.execute("CHECKPOINT")
    finally:
        con.close()
    return {"added": inserts, "updated": int(updated), "removed": int(removed), "next_id": next_id + inserts}


def figure_delta(big: InProcess, db: Path, rows: int, full_csv_s: float, rounds: int) -> dict[str, Any]:
    big.refresh("delta_csv")
    first = big.sync("delta_csv")
    print(f"  delta activation, first (full) sync: {first['total_s']:.2f} s", flush=True)
    next_id = rows + 1
    deltas = []
    for k in range(rounds):
        started = time.perf_counter()
        expected = mutate(db, k, rows, next_id)
        mutate_s = time.perf_counter() - started
        next_id = expected.pop("next_id")
        r = big.sync("delta_csv")
        r["expected"] = expected
        r["mutate_s"] = round(mutate_s, 2)
        ok = all(r["counts"][k2] == v for k2, v in expected.items())
        r["counts_match"] = ok
        deltas.append(r)
        print(f"  delta sync round {k + 1}: {r['total_s']:.2f} s (snapshot {r['snapshot_s']:.2f} + deliver "
              f"{r['deliver_s']:.2f}); counts {r['counts']} expected {expected} -> {'ok' if ok else 'MISMATCH'}",
              flush=True)
    best = min(deltas, key=lambda r: r["total_s"])
    return {
        "delta_s": best["total_s"],
        "delta_runs_s": [d["total_s"] for d in deltas],
        "full_csv_s": full_csv_s,
        "ratio": round(best["total_s"] / full_csv_s, 3),
        "own_first_full_sync_s": first["total_s"],
        "ratio_vs_own_first_full_sync": round(best["total_s"] / first["total_s"], 3),
        "changed_rows": sum(best["expected"].values()),
        "best_run": best,
        "first_full_run": first,
    }


# ---------------------------------------------------------------------------------------------------------
# Figure 3: peak memory of a sync in a child process
# ---------------------------------------------------------------------------------------------------------


def run_child(argv: list[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run a process to completion through benchmarks/measure.py: its wall time, its own peak RSS.

    ``os.wait4`` straight from this (large) process would report at least this process's own peak:
    on Linux a child's ru_maxrss starts from its spawner's high-water mark. The stdlib-only launcher
    is about 10 MB, so RUSAGE_CHILDREN there is the child's own figure.
    """
    fd, result_file = tempfile.mkstemp(prefix="dinmo-bench-rusage-", suffix=".json")
    os.close(fd)
    epoch = time.time()
    try:
        proc = subprocess.run([PY, str(HERE / "measure.py"), result_file, *argv], capture_output=True,
                              env=env, cwd=str(REPO), check=False)
        usage = json.loads(Path(result_file).read_text() or "{}")
    finally:
        os.unlink(result_file)
    if not usage:
        raise RuntimeError(f"the launcher failed:\n{proc.stderr.decode(errors='replace')[-3000:]}")
    return {
        "rc": usage["rc"], "wall_s": round(usage["wall_s"], 3), "peak_rss_mb": round(usage["maxrss_kb"] / 1024.0, 1),
        "launcher_rss_mb": round(usage["launcher_maxrss_kb"] / 1024.0, 1),
        "user_s": round(usage["user_s"], 2), "sys_s": round(usage["sys_s"], 2), "started_epoch": epoch,
        "stdout": proc.stdout.decode(errors="replace"), "stderr": proc.stderr.decode(errors="replace"),
    }


def child_sync(project_dir: str, activation: str, idle: bool = False) -> dict[str, Any]:
    argv = [PY, str(HERE / "sync_child.py"), "--project", project_dir, "--activation", activation]
    if idle:
        argv.append("--idle")
    r = run_child(argv)
    if r["rc"] != 0:
        raise RuntimeError(f"child sync failed ({r['rc']}):\n{r['stderr'][-3000:]}")
    detail = json.loads(r["stdout"].strip().splitlines()[-1])
    return {"peak_rss_mb": r["peak_rss_mb"], "wall_s": r["wall_s"], "child": detail}


def figure_memory(small: InProcess, small_dir: str, big_dir: str) -> dict[str, Any]:
    # Give the small project a baseline too, so both sizes run the same (steady-state) sync.
    small.refresh("full_csv")  # both activations read segment 'everyone'
    for act in ("full_csv", "full_parquet"):
        small.sync(act)
    out: dict[str, Any] = {"idle": child_sync(small_dir, "full_csv", idle=True)}
    print(f"  idle child (imports + resources): {out['idle']['peak_rss_mb']:.0f} MB", flush=True)
    for fmt in ("csv", "parquet"):
        act = f"full_{fmt}"
        res = {}
        for label, d in (("small", small_dir), ("big", big_dir)):
            res[label] = child_sync(d, act)
            c = res[label]["child"]
            print(f"  {fmt} sync of {c['rows']} rows in a child: peak RSS {res[label]['peak_rss_mb']:.0f} MB "
                  f"(after snapshot {c['peak_mb_after_snapshot']:.0f} MB; pyarrow's pool peak "
                  f"{c['arrow_pool_peak_mb']:.0f} MB), {res[label]['wall_s']:.1f} s", flush=True)
        res["growth"] = round(res["big"]["peak_rss_mb"] / res["small"]["peak_rss_mb"], 3)
        out[fmt] = res
    return out


# ---------------------------------------------------------------------------------------------------------
# Figure 4: the whole `dinmo sync` process against a pandas script
# ---------------------------------------------------------------------------------------------------------


def dagster_steps(home: Path, process_start_epoch: float) -> dict[str, Any]:
    """Per-step durations of the run recorded in DAGSTER_HOME, and the time before the run started."""
    import dagster as dg

    with dg.DagsterInstance.from_config(str(home)) as instance:
        runs = instance.get_runs(limit=1)
        if not runs:
            return {}
        events = instance.all_logs(runs[0].run_id)
    starts: dict[str, float] = {}
    steps: dict[str, float] = {}
    first = last = None
    for ev in events:
        de = ev.dagster_event
        ts = ev.timestamp
        first = ts if first is None else min(first, ts)
        last = ts if last is None else max(last, ts)
        if de is None:
            continue
        et = de.event_type_value
        if et == "STEP_START":
            starts[ev.step_key] = ts
        elif et in ("STEP_SUCCESS", "STEP_FAILURE") and ev.step_key in starts:
            steps[ev.step_key] = round(ts - starts[ev.step_key], 3)
    return {
        "before_first_event_s": round((first or process_start_epoch) - process_start_epoch, 3),
        "run_events_span_s": round((last or 0) - (first or 0), 3),
        "steps_s": steps,
    }


def drt_venv_ready(venv: Path) -> str | None:
    """Install drt-core into ``venv`` unless it is there already; None when ready, else why not."""
    drt = venv / "bin" / "drt"
    if drt.exists():
        return None
    try:
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True, timeout=120)
        pip = subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", DRT_REQUIREMENT],
                             capture_output=True, text=True, timeout=900, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"could not create a virtualenv for drt: {exc}"
    if pip.returncode != 0 or not drt.exists():
        shutil.rmtree(venv, ignore_errors=True)
        return f"`pip install {DRT_REQUIREMENT}` failed: {(pip.stderr or pip.stdout).strip()[-500:]}"
    return None


def drt_baseline(db: Path, scratch: Path, venv: Path | None) -> dict[str, Any]:
    """drt writing the same CSV from the same DuckDB rows, as a whole ``drt run`` process.

    drt reads credentials from ``~/.drt/profiles.yml`` (HOME points at a scratch folder) and the sync from
    the project's ``syncs/``: a ``duckdb`` profile, the same query as the other baselines as its model, the
    built-in ``file`` destination with ``format: csv``, everything else drt's defaults (``batch_size`` 100,
    ``fetch_size`` 10,000). Skipped, with the reason printed, when drt cannot be installed.
    """
    venv = venv or scratch / "drt-venv"
    reason = drt_venv_ready(venv)
    if reason is not None:
        print(f"  drt: skipped, {reason}", flush=True)
        return {"drt_skipped": reason}
    project, home, out = scratch / "drt-project", scratch / "drt-home", scratch / "drt.csv"
    (project / "syncs").mkdir(parents=True, exist_ok=True)
    (home / ".drt").mkdir(parents=True, exist_ok=True)
    (project / "drt_project.yml").write_text('name: bench\nversion: "0.1"\nprofile: bench\n')
    (home / ".drt" / "profiles.yml").write_text(f"bench:\n  type: duckdb\n  database: {json.dumps(str(db))}\n")
    (project / "syncs" / "export.yml").write_text(
        f"name: export\nmodel: {json.dumps(COPY_QUERY)}\n"
        f"destination:\n  type: file\n  path: {json.dumps(str(out))}\n  format: csv\nsync:\n  mode: full\n")
    env = dict(os.environ, HOME=str(home))
    command = f"cd {shlex.quote(str(project))} && exec {shlex.quote(str(venv / 'bin' / 'drt'))} run --select export"
    r = run_child(["/bin/sh", "-c", command], env=env)
    if r["rc"] != 0 or not out.exists():
        reason = f"`drt run` failed ({r['rc']}): {(r['stderr'] or r['stdout'])[-500:]}"
        print(f"  drt: skipped, {reason}", flush=True)
        return {"drt_skipped": reason}
    with out.open("rb") as f:
        lines = sum(block.count(b"\n") for block in iter(lambda: f.read(1 << 20), b""))
    print(f"  drt run (file destination, CSV): {r['wall_s']:.2f} s, peak RSS {r['peak_rss_mb']:.0f} MB, "
          f"{lines - 1:,} rows", flush=True)
    return {"drt_s": r["wall_s"], "drt_peak_rss_mb": r["peak_rss_mb"], "drt_bytes": out.stat().st_size,
            "drt_rows": lines - 1, "drt_requirement": DRT_REQUIREMENT}


def figure_process(
    big_dir: str, db: Path, scratch: Path, repeats: int, drt_venv: Path | None = None, with_drt: bool = True
) -> dict[str, Any]:
    runs = []
    for i in range(repeats):
        home = scratch / f"dagster_home_{i}"
        if home.exists():
            shutil.rmtree(home)
        home.mkdir(parents=True)  # empty: `dinmo sync` writes its own dagster.yaml, as for a user
        env = dict(os.environ, DAGSTER_HOME=str(home))
        env.pop("DINMO_PROJECT_DIR", None)
        r = run_child([DINMO, "--project", big_dir, "sync", "full_csv"], env=env)
        if r["rc"] != 0:
            raise RuntimeError(f"dinmo sync failed ({r['rc']}):\n{r['stdout'][-2000:]}\n{r['stderr'][-3000:]}")
        r["dagster"] = dagster_steps(home, r.pop("started_epoch"))
        r["stdout"] = r["stdout"][-1500:]
        r.pop("stderr")
        runs.append(r)
        print(f"  dinmo sync run {i + 1}: {r['wall_s']:.2f} s, peak RSS {r['peak_rss_mb']:.0f} MB; steps "
              f"{r['dagster'].get('steps_s')}", flush=True)
    imports = run_child([PY, "-c", "import dagster, dinmo_dagster.definitions, dinmo_dagster.cli"])
    pandas_out = scratch / "pandas.csv"
    p = run_child([PY, str(HERE / "pandas_export.py"), str(db), COPY_QUERY, str(pandas_out)])
    if p["rc"] != 0:
        raise RuntimeError(f"pandas baseline failed:\n{p['stderr'][-3000:]}")
    print(f"  pandas read + to_csv: {p['wall_s']:.2f} s, peak RSS {p['peak_rss_mb']:.0f} MB", flush=True)
    best = min(runs, key=lambda r: r["wall_s"])
    drt = drt_baseline(db, scratch, drt_venv) if with_drt else {"drt_skipped": "--skip drt"}
    if "drt_s" in drt:
        drt["drt_ratio"] = round(best["wall_s"] / drt["drt_s"], 3)
    return {
        **drt,
        "dinmo_s": best["wall_s"],
        "dinmo_runs_s": [r["wall_s"] for r in runs],
        "pandas_s": p["wall_s"],
        "ratio": round(best["wall_s"] / p["wall_s"], 3),
        "import_only_s": imports["wall_s"],
        "dinmo_peak_rss_mb": best["peak_rss_mb"],
        "pandas_peak_rss_mb": p["peak_rss_mb"],
        "pandas_bytes": pandas_out.stat().st_size,
        "best_run": best,
    }


# ---------------------------------------------------------------------------------------------------------
# Fixed cost: small commands as whole processes (`--fixed-cost`)
# ---------------------------------------------------------------------------------------------------------


def figure_fixed_cost(scratch: Path, repeats: int) -> dict[str, Any]:
    """Median wall time and peak RSS of `dinmo --help`, `dinmo validate` and a 10-row `dinmo sync` to a
    local folder, each a fresh process, ``repeats`` times. The syncs share one DAGSTER_HOME, as a user's
    do; a first sync (creating the instance and the baseline) is not counted."""
    project = scratch / "fixed"
    make_project(project, 10)
    home = scratch / "fixed_dagster_home"
    home.mkdir()
    env = dict(os.environ, DAGSTER_HOME=str(home))
    env.pop("DINMO_PROJECT_DIR", None)
    commands = {"dinmo --help": [DINMO, "--help"],
                "dinmo validate": [DINMO, "--project", str(project), "validate"],
                "dinmo sync (10 rows, local)": [DINMO, "--project", str(project), "sync", "full_csv"],
                # the floor of any Dagster run in this instance: one trivial asset, nothing of ours
                "Dagster floor (one trivial asset)": [PY, str(HERE / "dagster_floor.py")]}
    run_child(commands["dinmo sync (10 rows, local)"], env=env)
    out: dict[str, Any] = {}
    for label, argv in commands.items():
        runs = [run_child(argv, env=env) for _ in range(repeats)]
        failed = [r for r in runs if r["rc"] != 0]
        if failed:
            raise RuntimeError(f"{label} failed ({failed[0]['rc']}):\n{failed[0]['stdout']}{failed[0]['stderr'][-3000:]}")
        walls, peaks = sorted(r["wall_s"] for r in runs), sorted(r["peak_rss_mb"] for r in runs)
        cpus = sorted(round(r["user_s"] + r["sys_s"], 2) for r in runs)
        out[label] = {"wall_s_median": walls[len(walls) // 2], "peak_rss_mb_median": peaks[len(peaks) // 2],
                      "cpu_s_median": cpus[len(cpus) // 2], "wall_s": walls, "peak_rss_mb": peaks, "cpu_s": cpus}
        print(f"  {label}: {out[label]['wall_s_median']:.2f} s wall, {out[label]['cpu_s_median']:.2f} s CPU, "
              f"{out[label]['peak_rss_mb_median']:.0f} MB (median of {repeats})", flush=True)
    return out


# ---------------------------------------------------------------------------------------------------------
# Phase probes: the same data, one component at a time
# ---------------------------------------------------------------------------------------------------------


def phase_probes(big: InProcess, scratch: Path) -> dict[str, Any]:
    """Stream only (DuckDB -> Arrow), and render + write only (in-memory Arrow -> file) for each format."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    from dinmo_dagster import delta, sync, writers

    t = big.target("full_csv")
    # The rows a full_only sync exports: the segment, read as the sync reads it.
    src, seg_columns = sync._segment_rows(t, deduped=False)
    sql = delta.export_sql(src, sync.exported_columns(t, seg_columns), "duckdb")
    out: dict[str, Any] = {}
    started = time.perf_counter()
    batches: list[pa.RecordBatch] = []
    with t.warehouse.stream(sql) as reader:
        schema = reader.schema
        batches.extend(reader)
    out["stream_only_s"] = round(time.perf_counter() - started, 3)
    out["arrow_mb"] = round(sum(b.nbytes for b in batches) / 1e6, 1)
    workdir = scratch / "probe"
    for fmt in ("csv", "parquet"):
        workdir.mkdir(exist_ok=True)
        started = time.perf_counter()
        parts = writers.write_parts(iter(batches), schema, writers.FormatOptions(format=fmt), "probe", None,
                                    workdir, lambda part: None)
        out[f"write_parts_only_{fmt}_s"] = round(time.perf_counter() - started, 3)
        out[f"write_parts_only_{fmt}_bytes"] = sum(p.bytes for p in parts)
        shutil.rmtree(workdir)
    started = time.perf_counter()
    with pacsv.CSVWriter(str(scratch / "pyarrow.csv"), schema) as w:
        for b in batches:
            w.write_batch(b)
    out["pyarrow_csv_writer_s"] = round(time.perf_counter() - started, 3)
    started = time.perf_counter()
    with pq.ParquetWriter(str(scratch / "pyarrow.parquet"), schema) as w:
        for b in batches:
            w.write_batch(b)
    out["pyarrow_parquet_writer_s"] = round(time.perf_counter() - started, 3)
    (scratch / "pyarrow.csv").unlink(missing_ok=True)
    (scratch / "pyarrow.parquet").unlink(missing_ok=True)
    del batches
    return out


# ---------------------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------------------


def _versions() -> dict[str, str]:
    import dagster
    import duckdb
    import pandas
    import pyarrow

    commit = ""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                                text=True, check=False).stdout.strip()
    except OSError:
        pass
    return {"python": platform.python_version(), "dagster": dagster.__version__, "duckdb": duckdb.__version__,
            "pyarrow": pyarrow.__version__, "pandas": pandas.__version__, "cpus": str(os.cpu_count()),
            "machine": platform.machine(), "commit": commit}


def summary(res: dict[str, Any]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    full = res.get("full_export", {})
    for fmt in ("csv", "parquet"):
        if fmt in full:
            f = full[fmt]
            rows.append({"metric": f"1. full export {fmt.upper()}: product / DuckDB COPY",
                         "value": f["ratio"], "detail": f"{f['product_s']:.2f} s / {f['copy_s']:.2f} s",
                         "target": f"<= {TARGETS['full_ratio']}", "pass": f["ratio"] <= TARGETS["full_ratio"]})
    if "delta" in res:
        d = res["delta"]
        rows.append({"metric": "2. delta sync (1% changed) / full CSV export", "value": d["ratio"],
                     "detail": f"{d['delta_s']:.2f} s / {d['full_csv_s']:.2f} s",
                     "target": f"<= {TARGETS['delta_ratio']}", "pass": d["ratio"] <= TARGETS["delta_ratio"]})
    if "memory" in res:
        m = res["memory"]
        for fmt in ("csv", "parquet"):
            s, b = m[fmt]["small"], m[fmt]["big"]
            peak = max(s["peak_rss_mb"], b["peak_rss_mb"])
            rows.append({"metric": f"3. peak RSS of a {fmt.upper()} sync ({s['child']['rows']:,} / "
                                   f"{b['child']['rows']:,} rows), MB",
                         "value": f"{s['peak_rss_mb']:.0f} / {b['peak_rss_mb']:.0f}",
                         "detail": f"idle process {m['idle']['peak_rss_mb']:.0f} MB; pyarrow pool "
                                   f"{s['child']['arrow_pool_peak_mb']:.0f} / {b['child']['arrow_pool_peak_mb']:.0f} MB",
                         "target": f"< {TARGETS['memory_mb']:.0f}", "pass": peak < TARGETS["memory_mb"]})
            rows.append({"metric": f"3. peak RSS growth {fmt.upper()}, big / small", "value": m[fmt]["growth"],
                         "detail": "", "target": f"<= {TARGETS['memory_growth']}",
                         "pass": m[fmt]["growth"] <= TARGETS["memory_growth"]})
    if "process" in res:
        p = res["process"]
        rows.append({"metric": "4. whole `dinmo sync` process / pandas script", "value": p["ratio"],
                     "detail": f"{p['dinmo_s']:.2f} s / {p['pandas_s']:.2f} s",
                     "target": f"<= {TARGETS['process_ratio']}", "pass": p["ratio"] <= TARGETS["process_ratio"]})
        if "drt_ratio" in p:
            rows.append({"metric": "4. whole `dinmo sync` process / `drt run` (drt-core)", "value": p["drt_ratio"],
                         "detail": f"{p['dinmo_s']:.2f} s / {p['drt_s']:.2f} s",
                         "target": f"<= {TARGETS['drt_ratio']}", "pass": p["drt_ratio"] <= TARGETS["drt_ratio"]})
    for case in res.get("api", {}).get("cases", []):
        rows.append({"metric": f"5. API {case['case']} ({case['operation']}, {case['records']:,}): wall / rate-limit floor",
                     "value": case["ratio_to_floor"],
                     "detail": f"{case['wall_s']:.2f} s / {case['floor_s']:.2f} s; CPU {case['cpu_s']:.2f} s "
                               f"({100 * case['cpu_share_of_wall']:.0f}% of wall)",
                     "target": f"<= {case['target']}", "pass": case["result"] == "PASS"})
    return rows


def figure_api(scratch: Path) -> dict[str, Any]:
    """Figure 5: benchmarks/platforms.py (API destinations against their rate-limited fakes, the sync state's
    journal on DuckDB, as a sync uses it) in a child process; its JSON report."""
    out = scratch / "platforms.json"
    proc = subprocess.run([PY, str(HERE / "platforms.py"), "--journal", "warehouse", "--out", str(out)],
                          cwd=str(REPO), check=False, capture_output=True, text=True)
    print("\n".join("  " + line for line in proc.stdout.strip().splitlines()), flush=True)
    if not out.exists():
        raise RuntimeError(f"figure 5 failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(out.read_text())


def print_table(rows: list[dict[str, Any]]) -> None:
    w = max(len(r["metric"]) for r in rows)
    print()
    print(f"{'metric':<{w}}  {'value':>11}  {'target':>7}  result  detail")
    print("-" * (w + 50))
    for r in rows:
        print(f"{r['metric']:<{w}}  {r['value']!s:>11}  {r['target']:>7}  {'PASS' if r['pass'] else 'FAIL':<6}  "
              f"{r['detail']}")


def print_phases(title: str, phases: dict[str, dict[str, float]], total: float) -> None:
    print(f"\n{title} (total {total:.2f} s; exclusive wall time per phase)")
    for name, v in phases.items():
        print(f"  {v['s']:7.2f} s  {100 * v['s'] / total:5.1f}%  {name}  [{v['calls']} call(s)]")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=5_000_000, help="rows of the big table (default 5,000,000)")
    ap.add_argument("--small-rows", type=int, default=1_000_000,
                    help="rows of the small table for the memory comparison (default 1,000,000)")
    ap.add_argument("--out", default=str(HERE / "results" / "latest.json"), help="JSON results file")
    ap.add_argument("--repeats", type=int, default=3,
                    help="product syncs per format in figure 1: the first one, then steady-state ones (default 3)")
    ap.add_argument("--delta-rounds", type=int, default=2, help="1%% change + delta sync rounds (default 2)")
    ap.add_argument("--process-repeats", type=int, default=1, help="`dinmo sync` processes in figure 4 (default 1)")
    ap.add_argument("--workdir", help="where the databases and files go (default: a new temporary directory)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--drt-venv", type=Path, default=None,
                    help="virtualenv for drt-core in figure 4, installed there if missing and reused "
                         "(default: a new one in the work directory)")
    ap.add_argument("--skip", default="", help="comma-separated figures to skip: full,delta,memory,process,probes,api; "
                         "drt skips figure 4's drt baseline only (about 40 s at 5M rows here)")
    ap.add_argument("--fixed-cost", action="store_true",
                    help="only the fixed cost of `dinmo --help`, `validate` and a 10-row `sync` (7 runs each)")
    args = ap.parse_args(argv)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    if args.fixed_cost:
        with tempfile.TemporaryDirectory(prefix="dinmo-bench-") as scratch_dir:
            print(f"fixed cost (load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs):", flush=True)
            figure_fixed_cost(Path(scratch_dir), 7)
        return 0

    scratch = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="dinmo-bench-"))
    scratch.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    res: dict[str, Any] = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "rows": args.rows, "small_rows": args.small_rows, "versions": _versions(), "targets": TARGETS,
        "load_average_at_start": list(os.getloadavg()),
        "notes": ("figure 1 and 2 run take_snapshot + deliver in-process (no Dagster run); figure 3 runs the "
                  "same in a child process and reads its peak RSS (RUSAGE_CHILDREN of a small launcher); figure 4 runs the dinmo CLI "
                  "(a real Dagster run, fresh DAGSTER_HOME) and a pandas script as whole processes"),
    }
    load = res["load_average_at_start"][0]
    if load > 0.5 * (os.cpu_count() or 1):
        print(f"WARNING: load average {load:.1f} on {os.cpu_count()} CPUs: other work is running, times will be "
              "noisy (the JSON keeps the load average and each sync's CPU time)", flush=True)
    try:
        print(f"work directory: {scratch}", flush=True)
        big_dir, small_dir = scratch / "big", scratch / "small"
        res["big"] = make_project(big_dir, args.rows)
        print(f"built {args.rows:,} rows in {res['big']['build_s']:.1f} s", flush=True)
        res["duckdb_settings"] = duck = product_duckdb_settings(big_dir)
        print(f"DuckDB source: the product's defaults, nothing set by hand: memory_limit {duck['memory_limit_config']}"
              f" ({duck['memory_limit']}), spills to {duck['temp_directory']} (at most "
              f"{duck['max_temp_directory_size']}), preserve_insertion_order {duck['preserve_insertion_order']}, "
              f"{duck['threads']} threads", flush=True)
        need_small = "memory" not in skip
        if need_small:
            res["small"] = make_project(small_dir, args.small_rows)
            print(f"built {args.small_rows:,} rows in {res['small']['build_s']:.1f} s", flush=True)
        db = big_dir / "wh.duckdb"
        install_phase_timers()
        big = InProcess(str(big_dir))
        try:
            if "full" not in skip:
                print("\n[1] full export: product sync path (in-process, no Dagster run) vs DuckDB COPY", flush=True)
                res["full_export"] = figure_full(big, db, scratch, max(1, args.repeats), 2)
            if "probes" not in skip and "full" not in skip:
                print("\n[probes] stream only / render + write only", flush=True)
                res["probes"] = phase_probes(big, scratch)
                print(f"  {res['probes']}", flush=True)
        finally:
            big.close()
        if need_small:
            print("\n[3] peak memory of a sync in a child process", flush=True)
            small = InProcess(str(small_dir))
            try:
                if "full" in skip:  # the big project needs its baseline as well
                    big = InProcess(str(big_dir))
                    big.refresh("full_csv")  # both activations read segment 'everyone'
                    for act in ("full_csv", "full_parquet"):
                        big.sync(act)
                    big.close()
                res["memory"] = figure_memory(small, str(small_dir), str(big_dir))
            finally:
                small.close()
        if "process" not in skip:
            print("\n[4] whole `dinmo sync` process vs a pandas script", flush=True)
            res["process"] = figure_process(str(big_dir), db, scratch, max(1, args.process_repeats), args.drt_venv,
                                            "drt" not in skip)
        if "delta" not in skip:
            print("\n[2] delta sync after changing 1% of the rows", flush=True)
            big = InProcess(str(big_dir))
            try:
                full_csv_s = res.get("full_export", {}).get("csv", {}).get("product_s")
                if full_csv_s is None:
                    big.refresh("full_csv")
                    full_csv_s = big.sync("full_csv")["total_s"]
                res["delta"] = figure_delta(big, db, args.rows, full_csv_s, max(1, args.delta_rounds))
            finally:
                big.close()
        if "api" not in skip:
            print("\n[5] API destinations: 100,000 records against rate-limited fakes", flush=True)
            res["api"] = figure_api(scratch)
    finally:
        res["elapsed_s"] = round(time.perf_counter() - started, 1)
        res["load_average_at_end"] = os.getloadavg()
        res["summary"] = summary(res)
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(res, indent=2, default=str) + "\n")
        if not args.keep and not args.workdir:
            shutil.rmtree(scratch, ignore_errors=True)

    if "full_export" in res:
        for fmt in ("csv", "parquet"):
            b = res["full_export"][fmt]["best_run"]
            print_phases(f"phases of the steady-state full {fmt.upper()} sync", b["phases"], b["total_s"])
    if "delta" in res:
        b = res["delta"]["best_run"]
        print_phases("phases of the delta sync", b["phases"], b["total_s"])
    if "process" in res:
        d = res["process"]["best_run"]["dagster"]
        print(f"\n`dinmo sync` process {res['process']['dinmo_s']:.2f} s: {d.get('before_first_event_s')} s before "
              f"the run's first event (imports, definitions, instance; bare imports alone "
              f"{res['process']['import_only_s']:.2f} s), steps {d.get('steps_s')}")
    print_table(res["summary"])
    if "duckdb_settings" in res:
        print(f"\nAll figures with the product's default DuckDB settings (memory_limit "
              f"{res['duckdb_settings']['memory_limit_config']} = {res['duckdb_settings']['memory_limit']}).")
    print(f"\nresults: {args.out}  ({res['elapsed_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

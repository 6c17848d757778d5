"""`dinmo` run as a user runs it, in child processes, for the command-line tests (tests/test_cli.py,
tests/test_demo_platform.py, tests/test_deployment.py): an environment that points at nothing of this
machine's, a small DuckDB project, and `dinmo emulator` served for the length of a `with` block.

Imported as a top-level module, like the `fakes` package: pytest puts tests/ (the folder of the
rootdir's conftest.py, which has no __init__.py) on sys.path.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import duckdb

PROJECT = """
sources:
  wh: {type: duckdb, path: wh.duckdb}
models:
  customers: {source: wh, table: raw.customers, primary_key: customer_id}
segments:
  big: {model: customers, sql: "select * from {{ model }} where ltv > 500"}
destinations:
  out: {type: local, path: out}
activations:
  big_diff: {segment: big, destination: out, file_name: "{YYYY}{MM}{DD}T{HH}{mm}{ss}_big", sync_mode: difference}
"""

# Variables that would point a child process at another project, instance, emulator or credentials.
OUTSIDE = ("DAGSTER_HOME", "DINMO_PROJECT_DIR", "STORAGE_EMULATOR_HOST", "GOOGLE_APPLICATION_CREDENTIALS",
           "CLOUDSDK_CONFIG", "HUBSPOT_TOKEN")


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without the ``OUTSIDE`` variables, no Google Cloud configuration, and
    ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in OUTSIDE}
    env["CLOUDSDK_CONFIG"] = "/nonexistent"  # no application default credentials of this machine
    env.update(extra)
    return env


def run(cmd: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``cmd`` run to its end (5 minutes at most), its output captured as text."""
    return subprocess.run(cmd, check=False, capture_output=True, text=True, cwd=cwd, env=env, timeout=300)


def dinmo(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`dinmo args...` run to its end, its output captured as text."""
    return run([sys.executable, "-m", "dinmo_dagster.cli", *args], cwd, env)


def make_project(tmp_path: Path, with_table: bool = True) -> Path:
    """``tmp_path``/project: ``PROJECT`` on a DuckDB file with raw.customers (ids 1 to 10, ltv 100 times
    the id) unless ``with_table`` is false (the raw schema only)."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "dinmo.yaml").write_text(textwrap.dedent(PROJECT))
    with duckdb.connect(str(project / "wh.duckdb")) as con:
        con.execute("create schema raw")
        if with_table:
            con.execute("create table raw.customers as select range as customer_id, "
                        "'c' || range || '@x.io' as email, range * 100 as ltv from range(1, 11)")
    return project


@contextlib.contextmanager
def emulator_serving(project: Path, cwd: Path, env: dict[str, str], log_path: Path) -> Iterator[list[str]]:
    """`dinmo emulator --port 0` on ``project``, its output written to ``log_path``; yields the lines it
    printed once it serves ("Ctrl-C stops it."). Stopped with SIGTERM at the end of the block, where it
    must exit 0."""
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "dinmo_dagster.cli", "--project", str(project),
                                 "emulator", "--port", "0"], cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 60
        while "Ctrl-C stops it." not in log_path.read_text():
            assert proc.poll() is None and time.time() < deadline, log_path.read_text()
            time.sleep(0.2)
        yield log_path.read_text().splitlines()
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
    assert code == 0

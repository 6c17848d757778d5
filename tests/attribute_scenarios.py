"""What the tests of the attribute and messaging platforms (tests/test_{brevo,klaviyo,iterable,intercom,
sendgrid,mailchimp,emarsys,actito,batch,splio,zendesk,salesforce_marketing_cloud,small_vendors}.py) and the
command-line scenarios of some ad platforms share: the adapter built on a fake, the README examples loaded
as projects, the Dagster-job project of one destination on DuckDB, the log entries of its runs (where a
secret must never show), and ``dinmo sync`` run as a child process, killed with SIGKILL mid-delivery and
run again.

Imported as a top-level module, like ``platform_scenarios``: pytest puts tests/ on sys.path.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import dagster as dg
import duckdb
import pytest
from platform_scenarios import SEED, create_customers, open_project, project_yaml, warehouse_source

from dinmo_dagster.config import load_project
from dinmo_dagster.definitions import build_definitions
from dinmo_dagster.platforms import build_platform

README = Path(__file__).resolve().parent.parent / "README.md"


def built(type_: str, cls: type, raw: dict[str, Any], destination: str = "crm") -> Any:
    """The ``type_`` adapter of destination ``destination`` built from the settings ``raw``, checked to be
    an instance of ``cls`` (the registry maps the type to the class the test means)."""
    platform = build_platform(type_, raw, destination=destination)
    assert isinstance(platform, cls)
    return platform


def readme_examples(marker: str) -> list[str]:
    """The YAML examples that follow the README paragraph starting with ``marker``."""
    readme = README.read_text(encoding="utf-8")
    if marker not in readme:
        pytest.skip(f"the README has no {marker} paragraph yet")
    section = readme.split(marker, 1)[1].split("\n**", 1)[0]
    return [part.split("```", 1)[0] for part in section.split("```yaml\n")[1:]]


def load_example(tmp_path: Path, example: str) -> Any:
    """The project of one README example, with a source, a model and the ``vip_europe`` segment."""
    (tmp_path / "dinmo.yaml").write_text(
        "sources:\n  warehouse: {type: duckdb, path: data/warehouse.duckdb}\n"
        "models:\n  customers: {source: warehouse, table: raw.customers, primary_key: customer_id}\n"
        'segments:\n  vip_europe: {model: customers, sql: "select * from {{ model }}"}\n' + example
    )
    return load_project(tmp_path)


def example_activations(tmp_path: Path, examples: list[str]) -> list[Any]:
    """The one activation of each README example, each loaded as its own project in ``tmp_path``/<n>."""
    activations = []
    for n, example in enumerate(examples):
        (tmp_path / str(n)).mkdir()
        (activation,) = load_example(tmp_path / str(n), example).activations.values()
        activations.append(activation)
    return activations


@contextlib.contextmanager
def crm_project(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    fake: Any,
    secret: tuple[str, str],
    destination: str,
    activations: str,
) -> Iterator[SimpleNamespace]:
    """A DuckDB project in ``tmp_path`` (raw.customers seeded with Ann, Bob, Cle and Dan, the ``big`` segment)
    with one ``destination`` (YAML) and its ``activations``, served by ``fake``; ``secret``: (variable, value)."""
    monkeypatch.setenv(*secret)
    with warehouse_source("duckdb", request, tmp_path, monkeypatch) as source, fake, \
            dg.DagsterInstance.ephemeral() as instance:  # fmt: skip
        (tmp_path / "dinmo.yaml").write_text(
            project_yaml(source, destinations=[destination], activations=activations)
        )
        with open_project(tmp_path) as (project, resources, wh):
            create_customers(wh, SEED)
            yield SimpleNamespace(project=project, resources=resources, wh=wh, instance=instance,
                                  defs=build_definitions(project), fake=fake)  # fmt: skip


def logged(instance: dg.DagsterInstance) -> list[str]:
    """The ``repr`` of every event-log entry of every run of ``instance``: where the tests look for a
    secret (or an identifier) that must never be logged."""
    return [repr(entry) for run in instance.get_runs() for entry in instance.all_logs(run.run_id)]


class CliSync:
    """``dinmo sync <activation>`` of a project in ``tmp_path``/project, run as a user runs it: a child
    process with its own DAGSTER_HOME (``home``) and TMPDIR (``tmp``), its warehouse the DuckDB file
    ``tmp_path``/wh.duckdb (``source`` is its ``sources`` entry), ``env`` (the secrets' variables) added to
    this process's environment. ``kill_when`` starts it and kills it with SIGKILL mid-delivery;
    ``recover`` runs it again to its end."""

    def __init__(self, tmp_path: Path, activation: str, env: dict[str, str]) -> None:
        self.project, self.home, self.tmp = tmp_path / "project", tmp_path / "dagster_home", tmp_path / "tmp"
        for d in (self.project, self.home, self.tmp):
            d.mkdir()
        self.warehouse = tmp_path / "wh.duckdb"
        self.source = f"{{type: duckdb, path: {self.warehouse}}}"
        self.env = {**os.environ, "DAGSTER_HOME": str(self.home), "TMPDIR": str(self.tmp), **env}
        self.argv = [str(Path(sys.executable).with_name("dinmo")), "--project", str(self.project), "sync",
                     activation]  # fmt: skip

    def sql(self, *statements: str) -> None:
        """Run ``statements`` on the warehouse file."""
        with duckdb.connect(str(self.warehouse)) as con:
            for statement in statements:
                con.execute(statement)

    def seed(self, count: int, first_name: str | None = "'n'") -> None:
        """raw.customers of ``count`` customers, all in ``big`` (ltv 900): ids 1 to ``count``, e-mails
        ``c<id>@example.com``, first names the DuckDB expression ``first_name`` of ``i`` (none if None)."""
        first = f"{first_name} as first_name, " if first_name else ""
        self.sql("create schema raw",
                 "create table raw.customers as select i as customer_id, 'c' || i || '@example.com' as email, "
                 f"{first}900.0::decimal(10, 2) as ltv from generate_series(1, {count}) t(i)")  # fmt: skip

    def write(self, **project: Any) -> None:
        """The project file: ``project_yaml`` of the warehouse with ``project`` (destinations, activations...)."""
        (self.project / "dinmo.yaml").write_text(project_yaml(self.source, **project))

    def start(self) -> None:
        """Start the sync (its output discarded)."""
        self.proc = subprocess.Popen(
            self.argv, env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )

    def wait_for(self, reached: Callable[[], object]) -> None:
        """Wait until ``reached()`` is true, 90 s at most, or until the sync exited by itself (which
        ``kill`` then finds)."""
        deadline = time.monotonic() + 90
        while not reached() and time.monotonic() < deadline and self.proc.poll() is None:
            time.sleep(0.005)

    def kill(self, settle: float = 0.0) -> None:
        """Kill the sync with SIGKILL (it must not have ended by itself), then wait ``settle`` seconds for
        the request in flight at the kill to be answered."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)
        assert self.proc.returncode == -signal.SIGKILL
        if settle:
            time.sleep(settle)

    def kill_when(self, reached: Callable[[], object], settle: float = 0.0) -> None:
        """Start the sync, wait for ``reached()``, kill it and wait ``settle`` seconds (see ``kill``)."""
        self.start()
        self.wait_for(reached)
        self.kill(settle)

    def recover(self) -> subprocess.CompletedProcess[str]:
        """The next sync, run to its end; it must succeed."""
        done = subprocess.run(
            self.argv, env=self.env, capture_output=True, text=True, timeout=180, check=False
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return done

    def leftovers(self) -> list[str]:
        """The sync's temporary folders left in its TMPDIR (a recovered sync leaves none)."""
        return sorted(p.name for p in self.tmp.glob("dinmo-sync-*"))

    def in_home(self, *secrets: str) -> bool:
        """Whether any of ``secrets`` is written in a file of DAGSTER_HOME (run storage, logs, journal)."""
        return any(s.encode() in p.read_bytes() for p in self.home.rglob("*") if p.is_file() for s in secrets)

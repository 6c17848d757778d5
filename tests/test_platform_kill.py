"""A `dinmo sync` to an API platform killed with SIGKILL in the middle of its delivery, then synced again.

Each test runs the real command (`dinmo sync`, one Dagster run in a persistent DAGSTER_HOME) as a
subprocess against a fake platform that answers every request after a delay, kills it once the fake
has answered some requests, and runs `dinmo sync` again. What a user must see: the dead run does not
block the next sync and is marked failed; what the platform acknowledged before the kill (the keys in
`dinmo_acknowledgements`) is not sent again unless the record changed since; every record reaches the
platform with its latest values; an event is counted once; the baseline moves only with the sync
that succeeds; a third sync sends nothing. The last test does the same in-process for a sync that
failed (HubSpot revoked the token) with removals acknowledged.
"""

from __future__ import annotations

import collections
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import dagster as dg
import duckdb
import pytest
from fakes.hubspot import FakeHubSpot
from fakes.meta_ads import MetaAdsFake
from fakes.server import FakeResponse
from platform_scenarios import (
    create_customers,
    destination,
    open_project,
    postgres_source,
    project_yaml,
    reset_postgres,
    run_sync_job,
)

from dinmo_dagster.definitions import build_definitions

HUBSPOT_TOKEN = "pat-na1-7d3c1b9a-2e4f-4a6b-9c8d-1f2e3a4b5c6d"
META_TOKEN = "EAAKillTestZCpsBAKZB1a2b3c4d5e6f7a8b9c0d1e2f3"
PIXEL = "1234567890"
CUSTOMERS = 3000
ORDERS = 6000
DINMO = str(Path(sys.executable).with_name("dinmo"))
# The tables of the project (written for both DuckDB and PostgreSQL).
CUSTOMERS_TABLE = ("create table raw.customers (customer_id integer, email varchar, first_name varchar, "
                   "ltv decimal(10, 2))")
ORDERS_TABLE = "create table raw.orders (order_id integer, email varchar, ordered_at timestamp)"


class SlowHubSpot(FakeHubSpot):
    """The HubSpot fake, answering each request ``latency`` seconds after it arrived; ``answered``
    counts the answers given, ``in_flight`` the requests being answered. With ``hold_after`` set, the
    requests that arrive once that many were answered wait until :meth:`release` (a platform that
    stopped answering), so a test can let the client journal what was answered before it kills it."""

    def __init__(self, token: str, latency: float, hold_after: int | None = None) -> None:
        super().__init__(token, rate_limit=100_000)  # the client paces itself; the fake never throttles
        self.latency = latency
        self.hold_after = hold_after
        self._released = threading.Event()
        self.answered = 0
        self.in_flight = 0
        self.archives = 0
        self.revoke_after_archives: int | None = None  # the token is revoked once this many archives answered
        self._count = threading.Lock()

    def handle(self, request: Any) -> Any:
        """Wait, then answer as HubSpot does (a 401 once the token is revoked)."""
        with self._count:
            self.in_flight += 1
            held = self.hold_after is not None and self.answered + self.in_flight > self.hold_after
        try:
            if held:
                self._released.wait(timeout=60)
            time.sleep(self.latency)
            if self.revoke_after_archives is not None and self.archives >= self.revoke_after_archives:
                return FakeResponse(401, {"status": "error", "category": "INVALID_AUTHENTICATION", "message":
                                          "The OAuth token used to make this call expired or is not valid for "
                                          "this account.", "correlationId": "4f0e1c2a-0b1d-4e5f-8a9b-7c6d5e4f3a2b"})
            response = super().handle(request)
            if request.path.endswith("/batch/archive"):
                self.archives += 1
            return response
        finally:
            with self._count:
                self.in_flight -= 1
                self.answered += 1

    def release(self) -> None:
        """Answer the held requests (see ``hold_after``)."""
        self._released.set()

    def upserted(self, start: int = 0, end: int | None = None, action: str = "upsert") -> list[list[str]]:
        """The e-mails of every batch ``action`` (``upsert``; ``read``, the first request of a delete)
        received among ``requests[start:end]``, one list per request (a body cut short by the kill is no
        request HubSpot would act on)."""
        return [[i["id"] for i in r.json["inputs"]] for r in self.requests[start:end]
                if r.path.endswith(f"/batch/{action}") and r.json is not None]


class Warehouse:
    """The test's own connection to the project's warehouse (DuckDB file or PostgreSQL), opened per call:
    a running `dinmo sync` holds the DuckDB file for itself."""

    def __init__(self, kind: str, path: Path | None = None, server: Any = None) -> None:
        self.kind, self.path, self.server = kind, path, server

    @contextlib.contextmanager
    def _connect(self) -> Iterator[Any]:
        if self.kind == "duckdb":
            con = duckdb.connect(str(self.path))
            try:
                yield con
            finally:
                con.close()
        else:
            import psycopg

            with psycopg.connect(self.server.dsn, autocommit=True) as con:
                yield con

    def execute(self, *statements: str) -> None:
        """Run ``statements`` (written for both DuckDB and PostgreSQL)."""
        with self._connect() as con:
            for statement in statements:
                con.execute(statement)

    def rows(self, query: str) -> list[tuple]:
        """The rows of ``query``."""
        with self._connect() as con:
            return [tuple(r) for r in con.execute(query).fetchall()]

    def source(self) -> str:
        """The project's ``sources.wh`` entry."""
        return f"{{type: duckdb, path: {self.path}}}" if self.kind == "duckdb" else postgres_source(self.server)

    def reset(self) -> None:
        """Drop what a test left in the (session-wide) PostgreSQL server."""
        if self.kind == "postgres":
            reset_postgres(self.server)


@pytest.fixture(params=["duckdb", "postgres"])
def warehouse(request, tmp_path: Path) -> Iterator[Warehouse]:
    """An empty warehouse of the kind in the test's parameter."""
    if request.param == "duckdb":
        wh = Warehouse("duckdb", path=tmp_path / "wh.duckdb")
    else:
        wh = Warehouse("postgres", server=request.getfixturevalue("postgres_server"))
    wh.reset()
    try:
        yield wh
    finally:
        wh.reset()


@pytest.fixture
def cli(tmp_path: Path, warehouse: Warehouse) -> SimpleNamespace:
    """How to run `dinmo` as a user does: its project, DAGSTER_HOME and TMPDIR, and the secrets in its
    environment."""
    project, home, tmp = tmp_path / "project", tmp_path / "dagster_home", tmp_path / "tmp"
    for d in (project, home, tmp):
        d.mkdir()
    env = {**os.environ, "DAGSTER_HOME": str(home), "TMPDIR": str(tmp), "HUBSPOT_TOKEN": HUBSPOT_TOKEN,
           "META_TOKEN": META_TOKEN}
    if warehouse.server is not None:
        env["PG_PASSWORD"] = warehouse.server.password
    return SimpleNamespace(project=project, home=home, tmp=tmp, env=env,
                           argv=[DINMO, "--project", str(project), "sync"])


def sync_killed_after(cli: SimpleNamespace, activation: str, answered: Any, at_least: int,
                      settle: float = 0.0) -> None:
    """Start `dinmo sync activation` and SIGKILL it ``settle`` seconds after ``answered()`` reaches
    ``at_least``."""
    proc = subprocess.Popen([*cli.argv, activation], env=cli.env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 90
        while answered() < at_least:
            if proc.poll() is not None:
                pytest.fail(f"`dinmo sync {activation}` ended (exit {proc.returncode}) before the fake answered "
                            f"{at_least} requests:\n{proc.stdout.read()}")
            if time.monotonic() > deadline:
                pytest.fail(f"the fake answered {answered()} requests in 90 s, expected {at_least}")
            time.sleep(0.005)
        time.sleep(settle)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)  # reaped: a zombie would still answer kill(pid, 0)
        proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL


def sync_ok(cli: SimpleNamespace, activation: str) -> list[str]:
    """Run `dinmo sync activation` to the end; its output lines (it must succeed)."""
    proc = subprocess.run([*cli.argv, activation], env=cli.env, capture_output=True, text=True, timeout=120,
                          check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout.splitlines()


def wait_idle(fake: Any) -> None:
    """Wait until the fake has answered every request it received (the killed client's included)."""
    deadline = time.monotonic() + 10
    while fake.in_flight and time.monotonic() < deadline:
        time.sleep(0.01)


def acknowledged(wh: Warehouse, activation: str) -> dict[str, set[str]]:
    """The keys `dinmo_acknowledgements` holds for ``activation``, by partition."""
    found: dict[str, set[str]] = collections.defaultdict(set)
    for partition, key in wh.rows("select partition_key, record_key from dinmo_delta_storage.dinmo_acknowledgements "
                                  f"where activation = '{activation}'"):
        found[partition].add(key)
    return dict(found)


def baseline(wh: Warehouse, activation: str) -> list[tuple]:
    """The activation's baseline: (partition, row count), or nothing."""
    return wh.rows("select partition_key, row_count from dinmo_delta_storage.dinmo_baselines "
                   f"where activation = '{activation}'")


def history(wh: Warehouse, activation: str) -> list[tuple]:
    """``(partition, run id, status)`` of the activation's sync history, oldest first."""
    return wh.rows("select partition_key, run_id, status from dinmo_stats.sync_history "
                   f"where activation = '{activation}' order by partition_key, finished_at")


def runs(cli: SimpleNamespace, job: str) -> list[dg.DagsterRun]:
    """The runs of ``job`` in the CLI's instance, oldest first."""
    with dg.DagsterInstance.from_config(str(cli.home)) as instance:
        return list(reversed(instance.get_runs(filters=dg.RunsFilter(job_name=job))))


def run_messages(cli: SimpleNamespace, run_id: str) -> list[str]:
    """The messages the steps of run ``run_id`` logged (what its log in the Dagster UI shows)."""
    with dg.DagsterInstance.from_config(str(cli.home)) as instance:
        return [e.user_message for e in instance.all_logs(run_id) if e.dagster_event is None]


def assert_nothing_left(cli: SimpleNamespace, *secrets: str) -> None:
    """No working directory of a sync left in TMPDIR, and no secret anywhere in the Dagster instance
    (its run and event-log storage, as bytes)."""
    assert sorted(p.name for p in cli.tmp.glob("dinmo-sync-*")) == []
    files = [p for p in cli.home.rglob("*") if p.is_file()]
    assert files
    for p in files:
        data = p.read_bytes()
        assert not any(s.encode() in data for s in secrets), p


def write_project(cli: SimpleNamespace, wh: Warehouse, hubspot_url: str, meta_url: str) -> None:
    (cli.project / "dinmo.yaml").write_text(project_yaml(wh.source(), models="""
        orders: {source: wh, kind: fact, time_column: ordered_at, table: raw.orders, primary_key: order_id}
        """, segments="""
        everyone: {model: customers, sql: "select * from {{ model }}"}
        all_orders: {model: orders, sql: "select * from {{ model }}"}
        """, destinations=[
        destination("crm", "hubspot", "attributes", hubspot_url, object="contacts", max_concurrency=2),
        destination("meta_events", "meta_ads", "events", meta_url, pixel_id=PIXEL, event_name="Purchase",
                    action_source="system_generated", max_concurrency=1),
    ], activations="""
        to_crm:
          segment: everyone
          destination: crm
          match: {email: email}
          mapping: {first_name: firstname, ltv: lifetime_value}
          sync_mode: upsert
        conversions:
          segment: all_orders
          destination: meta_events
          identifiers: {email: email}
          mapping: {ordered_at: event_time}
        """))


def test_a_hubspot_upsert_killed_mid_delivery_resumes_without_resending_what_was_journalled(
        cli: SimpleNamespace, warehouse: Warehouse) -> None:
    wh = warehouse
    wh.execute(
        "create schema raw",
        CUSTOMERS_TABLE,
        "insert into raw.customers select i, 'c' || i || '@example.com', 'N' || i, 100 + i "
        f"from generate_series(1, {CUSTOMERS}) t(i)",
        ORDERS_TABLE)
    with SlowHubSpot(HUBSPOT_TOKEN, latency=0.1, hold_after=10) as hubspot, MetaAdsFake(META_TOKEN) as meta:
        write_project(cli, wh, hubspot.url, meta.url)
        # 1. The first sync (3,000 contacts, 30 batches of 100, 2 in flight) is killed after 10 answers,
        #    once it had 2 s to journal them (HubSpot holds the next requests: on a loaded machine the
        #    journal's first write can take longer than the 0.5 s the next 10 answers would take).
        sync_killed_after(cli, "to_crm", lambda: hubspot.answered, 10, settle=2.0)
        hubspot.release()
        wait_idle(hubspot)
        killed_at = len(hubspot.requests)
        sent_before = {e for batch in hubspot.upserted(0, killed_at) for e in batch}
        [(killed_partition, journalled)] = acknowledged(wh, "to_crm").items()
        journalled_emails = {f"c{k}@example.com" for k in journalled}
        assert journalled and journalled_emails <= sent_before and len(sent_before) < CUSTOMERS
        assert baseline(wh, "to_crm") == []
        [killed_run] = runs(cli, "sync_to_crm")
        assert killed_run.status == dg.DagsterRunStatus.STARTED  # Dagster does not know it died

        # Meanwhile two contacts change: one the platform acknowledged, one it never got.
        done_id = min(int(k) for k in journalled)
        new_id = max(set(range(1, CUSTOMERS + 1)) - {int(k) for k in journalled})
        wh.execute(f"update raw.customers set first_name = 'Changed' where customer_id in ({done_id}, {new_id})")

        # 2. The next sync is not blocked by the dead one and sends only what was not journalled.
        out = sync_ok(cli, "to_crm")
        assert out[0] == f"sync to_crm: run {killed_run.run_id} had died (its process is gone): marked it failed"
        # the killed sync's acknowledged part became the baseline: the changes are counted against it
        assert out[1].startswith(f"sync to_crm: delta sync to hubspot (attributes, upsert): "
                                 f"{CUSTOMERS - len(journalled)} added, 1 updated, 0 removed, "
                                 f"{len(journalled) - 1} unchanged; ")
        resent = hubspot.upserted(killed_at)
        resent_emails = [e for batch in resent for e in batch]
        assert len(resent_emails) == len(set(resent_emails))  # each record once in this sync
        changed = {f"c{done_id}@example.com", f"c{new_id}@example.com"}
        everyone = {f"c{i}@example.com" for i in range(1, CUSTOMERS + 1)}
        assert set(resent_emails) == (everyone - journalled_emails) | changed
        # at most the batches in flight at the kill (received, their answer not yet journalled) go again
        assert set(resent_emails) & sent_before - changed <= sent_before - journalled_emails
        # the platform holds every record once, with its latest values
        assert {e: (p["firstname"], p["lifetime_value"]) for e, p in hubspot.records("contacts").items()} == {
            f"c{i}@example.com": ("Changed" if i in (done_id, new_id) else f"N{i}", f"{100 + i}.00")
            for i in range(1, CUSTOMERS + 1)}
        killed_run, retry_run = runs(cli, "sync_to_crm")
        assert (killed_run.status, retry_run.status) == (dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.SUCCESS)
        assert (f"recovered the unfinished sync {killed_partition}: the {len(journalled)} record(s) the platform "
                "acknowledged moved the baseline; they are sent again only if they changed since"
                ) in run_messages(cli, retry_run.run_id)
        [(retry_partition, rows)] = baseline(wh, "to_crm")
        assert retry_partition > killed_partition and rows == CUSTOMERS
        assert [(p, s) for p, _, s in history(wh, "to_crm")] == [(killed_partition, "failed"),
                                                                 (retry_partition, "success")]
        assert acknowledged(wh, "to_crm") == {}  # promoted: the baseline says what was delivered

        # 3. Nothing changed: nothing is sent.
        before = len(hubspot.requests)
        out = sync_ok(cli, "to_crm")
        assert out[0].startswith("sync to_crm: delta sync to hubspot (attributes, upsert): 0 added, 0 updated, "
                                 f"0 removed, {CUSTOMERS} unchanged; 0 record(s) accepted")
        assert len(hubspot.requests) == before
    assert_nothing_left(cli, HUBSPOT_TOKEN, META_TOKEN, *([wh.server.password] if wh.server else []))


def meta_idle(meta: MetaAdsFake) -> None:
    """Wait until the Meta fake has answered every request it received."""
    deadline = time.monotonic() + 10
    while meta._in_flight and time.monotonic() < deadline:
        time.sleep(0.01)


def test_meta_conversions_killed_mid_delivery_are_counted_once_and_journalled_ones_not_sent_again(
        cli: SimpleNamespace, warehouse: Warehouse) -> None:
    wh = warehouse
    wh.execute(
        "create schema raw",
        CUSTOMERS_TABLE,
        ORDERS_TABLE,
        "insert into raw.orders select i, 'c' || (i % 700) || '@example.com', "
        f"current_timestamp::timestamp - i * interval '1 second' from generate_series(1, {ORDERS}) t(i)")
    with SlowHubSpot(HUBSPOT_TOKEN, latency=0) as hubspot, MetaAdsFake(META_TOKEN, latency=0.5) as meta:
        write_project(cli, wh, hubspot.url, meta.url)
        # 1. The first sync (6,000 events, 6 requests of 1,000, one at a time) is killed after 3 answers.
        sync_killed_after(cli, "conversions", lambda: sum(r.path.endswith("/events") for r in meta.requests), 3)
        meta_idle(meta)
        received_before = len(meta.capi_events)
        [(killed_partition, journalled)] = acknowledged(wh, "conversions").items()
        first = [e.event_id for e in meta.capi_events]
        assert journalled and journalled <= set(first) and len(first) < ORDERS
        assert baseline(wh, "conversions") == []
        # three orders come in meanwhile
        wh.execute(f"insert into raw.orders select i, 'new' || i || '@example.com', current_timestamp::timestamp "
                   f"from generate_series({ORDERS + 1}, {ORDERS + 3}) t(i)")
        every = {str(i) for i in range(1, ORDERS + 4)}

        # 2. The next sync sends what was not journalled; Meta counts every event once.
        out = sync_ok(cli, "conversions")
        [killed_run, retry_run] = runs(cli, "sync_conversions")
        assert out[0] == f"sync conversions: run {killed_run.run_id} had died (its process is gone): marked it failed"
        assert out[1].startswith(f"sync conversions: full sync to meta_ads (events, insert): {ORDERS + 3} added, ")
        second = [e.event_id for e in meta.capi_events[received_before:]]
        assert len(second) == len(set(second))
        assert set(second) == every - journalled
        # re-sent: only events received before the kill whose acknowledgement was not journalled yet
        assert set(second) & set(first) <= set(first) - journalled
        times = collections.Counter(first + second)
        assert max(times.values()) <= 2 and {k for k, n in times.items() if n > 1} <= set(first) - journalled
        assert sorted(int(e.event_id) for e in meta.counted_events(PIXEL)) == sorted(int(k) for k in every)
        assert (killed_run.status, retry_run.status) == (dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.SUCCESS)
        [(retry_partition, rows)] = baseline(wh, "conversions")
        assert retry_partition > killed_partition and rows == ORDERS + 3
        assert [(p, s) for p, _, s in history(wh, "conversions")] == [(killed_partition, "failed"),
                                                                      (retry_partition, "success")]

        # 3. No new order: nothing is sent.
        before = len(meta.requests)
        out = sync_ok(cli, "conversions")
        assert out[0].startswith("sync conversions: delta sync to meta_ads (events, insert): 0 added, 0 updated, "
                                 "0 removed, ")
        assert len(meta.requests) == before and len(meta.counted_events(PIXEL)) == ORDERS + 3
    assert_nothing_left(cli, HUBSPOT_TOKEN, META_TOKEN, *([wh.server.password] if wh.server else []))


@pytest.fixture
def mirror(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SimpleNamespace]:
    """In-process: a DuckDB project whose activation mirrors 250 customers to HubSpot (one request at a
    time), after its first sync; then 230 customers leave the segment and customer 240 changes, and
    HubSpot revokes the token after one archive batch. ``sync(key)`` runs the sync job (a new partition
    unless ``key``) in an ephemeral Dagster instance."""
    monkeypatch.setenv("HUBSPOT_TOKEN", HUBSPOT_TOKEN)
    with SlowHubSpot(HUBSPOT_TOKEN, latency=0) as hubspot, dg.DagsterInstance.ephemeral() as instance:
        (tmp_path / "dinmo.yaml").write_text(project_yaml(
            f"{{type: duckdb, path: {tmp_path / 'wh.duckdb'}}}",
            destinations=[destination("crm", "hubspot", "attributes", hubspot.url, object="contacts",
                                      max_concurrency=1)],
            activations="""
                to_crm:
                  segment: big
                  destination: crm
                  match: {email: email}
                  mapping: {first_name: firstname, ltv: lifetime_value}
                  sync_mode: mirror
                  max_removed_pct: 100
                """))
        with open_project(tmp_path) as (project, _, dwh):
            defs = build_definitions(project)

            def do_sync(key: str | None = None) -> dg.ExecuteInProcessResult:
                return run_sync_job(defs, instance, "to_crm", key)

            env = SimpleNamespace(hubspot=hubspot, instance=instance, sync=do_sync, execute=dwh.execute,
                                  rows=lambda q: [tuple(r) for r in dwh.query(q)])
            create_customers(dwh, "select i, 'c' || i || '@example.com', 'N' || i, 600 from range(1, 251) t(i)")
            assert do_sync().success  # 250 contacts
            # 230 leave the segment (3 delete batches of 100, 100 and 30); one of those who stay changes.
            env.execute(["update raw.customers set ltv = 10 where customer_id <= 230",
                         "update raw.customers set first_name = 'Changed' where customer_id = 240"])
            hubspot.revoke_after_archives = hubspot.archives + 1
            yield env


def failed_sync(env: SimpleNamespace) -> tuple[str, str, set[str]]:
    """The mirror sync that fails on its second delete batch: its partition, its run id and the keys of
    the 100 deletes HubSpot acknowledged (the upsert of customer 240 was acknowledged too)."""
    before = len(env.hubspot.requests)
    result = env.sync()
    assert not result.success  # the second delete batch got a 401
    [(partition, journalled)] = acknowledged(env, "to_crm").items()
    deleted = {e for batch in env.hubspot.upserted(before, action="read") for e in batch} - {"c240@example.com"}
    assert len(deleted) == 200 and "240" in journalled
    acked_deletes = {k for k in journalled if k != "240"}
    assert len(acked_deletes) == 100 and {f"c{k}@example.com" for k in acked_deletes} < deleted
    assert len(env.hubspot.records("contacts")) == 150  # the 100 archived are gone
    env.hubspot.revoke_after_archives = None
    return partition, result.run_id, acked_deletes


def test_a_failed_mirror_syncs_acknowledged_deletes_and_upserts_are_not_sent_again(mirror: SimpleNamespace) -> None:
    """Not killed but failed (HubSpot revokes the token mid-sync): the next sync takes over what was
    acknowledged, removals included, and re-sends a record that changed since."""
    failed_partition, _, acked_deletes = failed_sync(mirror)
    # One of the contacts HubSpot archived comes back, with a new name.
    back = min(int(k) for k in acked_deletes)
    mirror.execute([f"update raw.customers set ltv = 700, first_name = 'Back' where customer_id = {back}"])
    before = len(mirror.hubspot.requests)
    result = mirror.sync()
    assert result.success
    upserted = [e for batch in mirror.hubspot.upserted(before) for e in batch]
    read = [e for batch in mirror.hubspot.upserted(before, action="read") for e in batch]
    assert upserted == [f"c{back}@example.com"]  # 240 was acknowledged, unchanged since
    assert sorted(read) == sorted(f"c{i}@example.com" for i in range(1, 231) if str(i) not in acked_deletes)
    assert {e: (p["firstname"], p["lifetime_value"]) for e, p in mirror.hubspot.records("contacts").items()} == {
        **{f"c{i}@example.com": ("Changed" if i == 240 else f"N{i}", "600.00") for i in range(231, 251)},
        f"c{back}@example.com": ("Back", "700.00")}
    assert acknowledged(mirror, "to_crm") == {}
    assert [s for _, _, s in history(mirror, "to_crm")] == ["success", "failed", "success"]
    messages = [e.user_message for e in mirror.instance.all_logs(result.run_id) if e.dagster_event is None]
    assert (f"recovered the unfinished sync {failed_partition}: the 101 record(s) the platform acknowledged "
            "moved the baseline; they are sent again only if they changed since") in messages


def test_re_running_a_failed_partition_re_sends_the_acknowledged_records_that_changed_since(
        mirror: SimpleNamespace) -> None:
    """The failed run executed again on its own partition (the Dagster UI's re-execution, or
    `dagster asset materialize --partition`) takes a new snapshot: a record acknowledged before that
    changed since goes again, with its latest values; the others are not sent again."""
    partition, _, acked_deletes = failed_sync(mirror)
    back = min(int(k) for k in acked_deletes)
    mirror.execute(["update raw.customers set first_name = 'Again' where customer_id = 240",
                    f"update raw.customers set ltv = 700, first_name = 'Back' where customer_id = {back}"])
    before = len(mirror.hubspot.requests)
    assert mirror.sync(partition).success
    upserted = [e for batch in mirror.hubspot.upserted(before) for e in batch]
    read = [e for batch in mirror.hubspot.upserted(before, action="read") for e in batch]
    assert sorted(upserted) == sorted([f"c{back}@example.com", "c240@example.com"])
    assert sorted(read) == sorted(f"c{i}@example.com" for i in range(1, 231) if str(i) not in acked_deletes)
    assert {e: (p["firstname"], p["lifetime_value"]) for e, p in mirror.hubspot.records("contacts").items()} == {
        **{f"c{i}@example.com": ("Again" if i == 240 else f"N{i}", "600.00") for i in range(231, 251)},
        f"c{back}@example.com": ("Back", "700.00")}
    assert acknowledged(mirror, "to_crm") == {}

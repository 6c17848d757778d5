"""Benchmark figure 5: API destinations through the delivery SDK, against local fakes that enforce
each platform's documented rate limit. One command:

    .venv/bin/python benchmarks/platforms.py [--records 100000] [--cases hubspot_attributes,braze_audiences]
                                             [--journal warehouse,memory] [--nagle]
                                             [--out benchmarks/results/platforms.json] [--workdir DIR]

For each case it

1. generates ``raw.customers`` (``--records`` rows) in a DuckDB file under a temporary directory;
2. starts the platform's fake from ``tests/fakes`` in a separate process on ``127.0.0.1``, with the
   fake's default rate limit (the platform's documented one, as the fake's docstring states it), and
   seeds what the platform already holds (HubSpot: half of the contacts, with old values; Braze:
   every user, none in the audience yet);
3. runs ``platforms.deliver`` as a platform sync does: inside one warehouse ``session()``, the rows
   read whole from the product's DuckDB warehouse (``Warehouse.stream``) and handed over in Arrow
   batches of 10,000 rows, with the sync state's warehouse journal (``SyncStateStore.platform_journal``;
   ``--journal memory`` runs the same cases with ``InMemoryJournal``, the SDK alone);
4. checks what the fake holds afterwards against the DuckDB table (every record, every value);
5. compares the wall time with the floor the rate limit allows, ``records / (batch size x requests
   per second)``. Target: <= 1.10. Next to it: the CPU time (user + sys) of this process during the
   delivery, the fake's process excluded.

Two things of the fakes are changed for the benchmark, in their process only (same answers, same
rate limits), and the fake's own CPU, service time and requests in flight are reported so a slow fake
cannot pass for a slow SDK:

- their look-ups are indexed: the fakes scan every record on each look-up (HubSpot by e-mail, Braze
  by ``external_id``), 0.4 to 0.8 s per request at 50,000 to 100,000 records;
- their sockets get ``TCP_NODELAY``: they write an answer's headers and body separately, and the body
  then waits for the client's delayed ACK, about 40 ms per request (``--nagle`` keeps that).

The process exits 1 when a case misses its target or what the fake holds differs from the table.

Why these cases: see ``CASES`` and benchmarks/README.md ("Figure 5").
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import multiprocessing
import os
import platform as host
import resource
import shutil
import socket
import socketserver
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING, Any

from typing_extensions import Self

if TYPE_CHECKING:
    import pyarrow as pa

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
# The fakes live with the tests (tests/fakes) and import each other as the `fakes` package.
sys.path.insert(0, str(REPO / "tests"))

TARGET_RATIO = 1.10
BATCH_ROWS = 10_000  # Arrow batch size of a platform sync's change set
TOKEN = "bench-token-not-a-secret"


# ---------------------------------------------------------------------------------------------------------
# Cases
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One figure-5 run: a platform service, its operation, and the fake that plays the platform."""

    name: str
    platform: str
    operation: str
    settings: dict[str, Any]
    secret_field: str
    key_column: str
    match: dict[str, str]
    mapping: dict[str, str]
    columns: tuple[str, ...]
    limit_source: str  # where the documented limit comes from
    why: str
    seed_every: int  # the fake already holds every n-th record (0: none)


CASES: dict[str, Case] = {
    "hubspot_attributes": Case(
        name="hubspot_attributes",
        platform="hubspot",
        operation="upsert",
        settings={"service": "attributes", "object": "contacts"},
        secret_field="access_token",
        key_column="customer_id",
        match={"email": "email"},
        mapping={
            "first_name": "firstname",
            "lifetime_value": "lifetime_value",
            "vip": "vip",
            "signup_date": "signup_date",
        },
        columns=("customer_id", "email", "first_name", "lifetime_value", "vip", "signup_date"),
        limit_source="HubSpot private apps, Free/Starter: 100 requests per 10 s (usage guidelines); "
        "tests/fakes/hubspot.py default rate_limit=100, window_ms=10000 (rolling, counted on arrival)",
        why="100 inputs per batch at 10 requests/s: 1,000 requests, ten times the first window's "
        "allowance, so the rate limit decides the time",
        seed_every=2,
    ),
    "braze_audiences": Case(
        name="braze_audiences",
        platform="braze",
        operation="add",
        settings={"service": "audiences", "audience": "VIP Europe"},
        secret_field="api_key",
        key_column="customer_id",
        match={"external_id": "customer_id"},
        mapping={},
        columns=("customer_id",),
        limit_source="Braze /users/track: 3,000 requests per 3 s per workspace (api_limits); "
        "tests/fakes/braze.py default track_limit=3000, track_window=3.0 (fixed windows)",
        why="the only audience service with a non-trivial floor: 75 members per request at 1,000 "
        "requests/s is 1,334 requests and 1.33 s for 100,000 members. Meta's custom audiences take "
        "10,000 rows per request: 10 requests, a 0.19 s floor at 190,000 calls/hour (and the 5,000 "
        "calls/hour development tier's budget covers all 10 at once), so its time is hashing only",
        seed_every=1,
    ),
}


# ---------------------------------------------------------------------------------------------------------
# The fakes, in their own process
# ---------------------------------------------------------------------------------------------------------


class _Timings:
    """Service times and requests in flight, as the fake's handler sees them (thread-safe)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.spans: list[tuple[float, float]] = []  # (start, end) of each request's handling
        self.in_flight = 0
        self.max_in_flight = 0

    def enter(self) -> float:
        with self.lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        return time.monotonic()

    def leave(self, started: float) -> None:
        ended = time.monotonic()
        with self.lock:
            self.in_flight -= 1
            self.spans.append((started, ended))


def _indexed_hubspot(token: str) -> Any:
    """A FakeHubSpot whose look-ups by unique property use an index instead of a scan."""
    from fakes.hubspot import FakeHubSpot

    class IndexedHubSpot(FakeHubSpot):
        def __init__(self, token: str) -> None:
            super().__init__(token)  # the documented default: 100 requests per 10 s
            self.timings = _Timings()
            self.statuses: list[int] = []
            self._index: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}

        @staticmethod
        def _norm(prop: str, value: Any) -> str:
            return str(value).lower() if prop == "email" else str(value)

        def _find(self, obj: str, prop: str | None, value: str) -> dict[str, Any] | None:
            if prop in (None, "hs_object_id"):
                return super()._find(obj, prop, value)
            assert prop is not None
            index = self._index.get((obj, prop))
            if index is None:
                index = self._index[(obj, prop)] = {}
                for rec in self.store[obj].values():
                    if rec["properties"].get(prop) is not None:
                        index.setdefault(self._norm(prop, rec["properties"][prop]), rec)
            rec = index.get(self._norm(prop, value))
            # An archived record, or one whose value changed since it was indexed, is not a match.
            if (
                rec is not None
                and self.store[obj].get(rec["id"]) is rec
                and self._norm(prop, rec["properties"].get(prop, "")) == self._norm(prop, value)
            ):
                return rec
            return None

        def _new_record(self, obj: str, properties: dict[str, str]) -> dict[str, Any]:
            rec = super()._new_record(obj, properties)
            self._reindex(obj, rec)
            return rec

        def _apply(self, rec: dict[str, Any], properties: dict[str, Any]) -> None:  # type: ignore[override]
            FakeHubSpot._apply(rec, properties)
            for obj, records in self.store.items():
                if records.get(rec["id"]) is rec:
                    self._reindex(obj, rec)

        def _reindex(self, obj: str, rec: dict[str, Any]) -> None:
            for (indexed_obj, prop), index in self._index.items():
                if indexed_obj == obj and rec["properties"].get(prop) is not None:
                    index[self._norm(prop, rec["properties"][prop])] = rec

        def handle(self, request: Any) -> Any:
            started = self.timings.enter()
            try:
                response = super().handle(request)
                self.statuses.append(response.status)  # the fake keeps no status per request
                return response
            finally:
                self.timings.leave(started)

    return IndexedHubSpot(token)


def _indexed_braze(token: str) -> Any:
    """A BrazeFake whose look-ups by ``external_id`` use an index instead of a scan."""
    from fakes.braze import BrazeFake

    class IndexedBraze(BrazeFake):
        def __init__(self, api_key: str) -> None:
            self._by_id: dict[str, Any] = {}
            self.timings = _Timings()
            super().__init__(api_key)  # the documented default: 3,000 requests per 3 s

        def reset(self) -> None:
            super().reset()
            self._by_id = {}

        def _new_user(self, **fields: Any) -> Any:
            user = super()._new_user(**fields)
            if user.external_id is not None:
                self._by_id[user.external_id] = user
            return user

        def _by_external_id(self, external_id: str) -> Any:
            user = self._by_id.get(external_id)
            # Identity checks: BrazeUser compares by value, and a scan of the users is what is avoided.
            if (
                user is not None
                and user.external_id == external_id
                and all(d is not user for d in self.deleted)
            ):
                return user
            # Not indexed (an external_id set after creation): the fake's own scan.
            return super()._by_external_id(external_id)

        def _serve(self, handler: Any) -> None:
            started = self.timings.enter()
            try:
                super()._serve(handler)
            finally:
                self.timings.leave(started)

    return IndexedBraze(token)


def _no_delay(server: socketserver.BaseServer) -> None:
    """Send each answer at once: the fakes write the headers and the body separately, and without
    TCP_NODELAY the body waits for the client's delayed ACK (about 40 ms per request on Linux)."""
    handler = server.RequestHandlerClass

    class NoDelayHandler(handler):  # type: ignore[misc, valid-type]
        def setup(self) -> None:
            super().setup()
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    server.RequestHandlerClass = NoDelayHandler


def _fake_main(kind: str, seed: list[str], nodelay: bool, conn: Connection) -> None:
    """The fake's process: seed it, serve until told to stop, then report what it saw and holds."""
    fake = _indexed_hubspot(TOKEN) if kind == "hubspot" else _indexed_braze(TOKEN)
    with fake:
        if nodelay:
            _no_delay(fake.server._httpd if kind == "hubspot" else fake._server)
        if kind == "hubspot":
            for email in seed:
                fake.seed("contacts", {"email": email, "firstname": "Old", "lifetime_value": "0"})
            fake.requests.clear()
        else:
            with fake._lock:
                for external_id in seed:
                    fake._new_user(external_id=external_id)
        ready = _cpu()  # start-up and seeding are not the delivery's
        conn.send({"url": fake.url})
        conn.recv()  # "stop"
        serving = _cpu() - ready
        with fake.timings.lock:
            spans = sorted(fake.timings.spans)
        if kind == "hubspot":
            arrivals = sorted(r.arrived for r in fake.requests)
            statuses = Counter(str(s) for s in fake.statuses)
            lines = [
                "|".join(
                    [email]
                    + [props.get(p, "") for p in ("firstname", "lifetime_value", "vip", "signup_date")]
                )
                for email, props in fake.records("contacts").items()
            ]
            held = len(fake.store["contacts"])
            extra = {"largest_batch": max(fake.batch_sizes, default=0), "throttled_429": fake.throttled}
        else:
            recorded = fake.requests
            arrivals = sorted(r.at for r in recorded)
            statuses = Counter(str(r.status) for r in recorded)
            lines = [
                u.external_id
                for u in fake.users
                if "VIP Europe" in (u.attributes.get("dinmo_audiences") or [])
            ]
            held = len(lines)
            extra = {
                "largest_batch": max(
                    (len(r.body.get("attributes", [])) for r in recorded if isinstance(r.body, dict)),
                    default=0,
                ),
                "throttled_429": statuses.get("429", 0),
            }
        conn.send(
            {
                "cpu_s": serving,
                "arrivals": arrivals,
                "spans": spans,
                "statuses": dict(statuses),
                "max_in_flight": fake.timings.max_in_flight,
                "held": held,
                "digest": _digest(lines),
                **extra,
            }
        )


def _digest(lines: list[str]) -> str:
    return hashlib.sha256("\n".join(sorted(lines)).encode()).hexdigest()


class FakeProcess:
    """A platform fake running in a child process (``with FakeProcess(kind, seed) as fake: fake.url``)."""

    def __init__(self, kind: str, seed: list[str], *, nodelay: bool = True) -> None:
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self._process = context.Process(target=_fake_main, args=(kind, seed, nodelay, child), daemon=True)
        self.url = ""
        self.report: dict[str, Any] = {}

    def __enter__(self) -> Self:
        self._process.start()
        if not self._conn.poll(120):
            raise RuntimeError("the fake did not start within 120 s")
        self.url = self._conn.recv()["url"]
        return self

    def stop(self) -> dict[str, Any]:
        """Ask the fake for its report and let it exit."""
        self._conn.send("stop")
        if not self._conn.poll(120):
            raise RuntimeError("the fake did not report within 120 s")
        self.report = self._conn.recv()
        return self.report

    def __exit__(self, *exc: object) -> None:
        self._process.join(timeout=10)
        if self._process.is_alive():
            self._process.terminate()  # only the child this object started
            self._process.join(timeout=5)


# ---------------------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------------------


def generate(path: Path, records: int) -> None:
    """``raw.customers`` with ``records`` deterministic rows (DuckDB SQL over range())."""
    import duckdb

    con = duckdb.connect(str(path))
    try:
        con.execute("CREATE SCHEMA raw")
        con.execute(
            f"""
            CREATE TABLE raw.customers AS
            SELECT
              i::BIGINT AS customer_id,
              'customer' || i::VARCHAR || '@example.com' AS email,
              'Name' || i::VARCHAR AS first_name,
              ((i * 7919) % 1000000 / 100)::DECIMAL(12, 2) AS lifetime_value,
              i % 3 = 0 AS vip,
              DATE '2020-01-01' + (i % 2000)::INTEGER AS signup_date,
              ['FR', 'DE', 'ES', 'IT', 'NL', 'BE'][1 + i % 6] AS country
            FROM range(1, {records + 1}) AS t(i)
            """
        )
    finally:
        con.close()


def expected(path: Path, case: Case) -> tuple[int, str, list[str]]:
    """What the fake must hold after the sync (count and digest), and the identifiers to seed it with."""
    import duckdb

    con = duckdb.connect(str(path), read_only=True)
    try:
        if case.platform == "hubspot":
            lines = [
                r[0]
                for r in con.execute(
                    "SELECT email || '|' || first_name || '|' || lifetime_value::VARCHAR || '|' || "
                    "CASE WHEN vip THEN 'true' ELSE 'false' END || '|' || strftime(signup_date, '%Y-%m-%d') "
                    "FROM raw.customers"
                ).fetchall()
            ]
            seed_column = "email"
        else:
            lines = [r[0] for r in con.execute("SELECT customer_id::VARCHAR FROM raw.customers").fetchall()]
            seed_column = "customer_id::VARCHAR"
        seed = (
            [
                r[0]
                for r in con.execute(
                    f"SELECT {seed_column} FROM raw.customers WHERE customer_id % {case.seed_every} = 0"
                ).fetchall()
            ]
            if case.seed_every
            else []
        )
    finally:
        con.close()
    return len(lines), _digest(lines), seed


# ---------------------------------------------------------------------------------------------------------
# One run
# ---------------------------------------------------------------------------------------------------------


@dataclass
class TimedJournal:
    """The sync's journal, with the time the delivery spends in it: ``seconds`` on the main thread,
    ``write_seconds`` in ``flush`` (the writes, on the engine's journal thread)."""

    inner: Any
    seconds: float = 0.0
    write_seconds: float = 0.0
    write_cpu_seconds: float = 0.0  # CPU of the thread that ran the writes (DuckDB's own threads excluded)
    calls: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def _timed(self, name: str, *args: Any) -> Any:
        started, cpu = time.perf_counter(), time.thread_time()
        try:
            return getattr(self.inner, name)(*args)
        finally:
            spent, used = time.perf_counter() - started, time.thread_time() - cpu
            with self.lock:
                if name == "flush":
                    self.write_seconds += spent
                    self.write_cpu_seconds += used
                else:
                    self.seconds += spent
                self.calls[name] += 1

    def already_acknowledged(self, operation: str, keys: Sequence[str]) -> Any:
        """As the wrapped journal."""
        return self._timed("already_acknowledged", operation, keys)

    def acknowledged(self, operation: str, keys: Sequence[str]) -> None:
        """As the wrapped journal."""
        self._timed("acknowledged", operation, keys)

    def rejected(self, key: str, operation: str, reason: str) -> None:
        """As the wrapped journal."""
        self._timed("rejected", key, operation, reason)



@dataclass
class TimedBufferedJournal(TimedJournal):
    """A :class:`TimedJournal` of a journal that buffers (the warehouse's): the engine then runs its
    writes, ``flush``, on its journal thread (a journal without ``flush`` gets none)."""

    def flush(self) -> None:
        """Write what the wrapped journal buffers."""
        self._timed("flush")


def _batches(warehouse: Any, sql: str) -> Iterator[pa.RecordBatch]:
    """The rows as a platform sync feeds them: read whole (its journal writes to the same warehouse
    while they are sent), then in batches of 10,000 rows."""
    with warehouse.stream(sql) as reader:
        table = reader.read_all()
    yield from table.to_batches(max_chunksize=BATCH_ROWS)


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _max_in_window(arrivals: list[float], seconds: float) -> int:
    """The most arrivals in any window of ``seconds`` (what a rolling-window limit counts)."""
    best, start = 0, 0
    for end, at in enumerate(arrivals):
        while arrivals[start] <= at - seconds:
            start += 1
        best = max(best, end - start + 1)
    return best


def run_case(
    case: Case, db: Path, records: int, journal_kind: str, *, nodelay: bool = True
) -> dict[str, Any]:
    """Deliver ``records`` rows of ``db`` for ``case`` against its fake and return the figures."""
    from dinmo_dagster.platforms import ActivationSpec, InMemoryJournal, build_platform, deliver
    from dinmo_dagster.state import SyncStateStore
    from dinmo_dagster.warehouses import warehouse_from_config

    count, digest, seed = expected(db, case)
    warehouse = warehouse_from_config("wh", {"type": "duckdb", "path": str(db)})
    store = SyncStateStore(warehouse, case.name)
    store.ensure_platform()  # created once per warehouse, before the first platform sync
    spec = ActivationSpec(case.name, case.key_column, match=case.match, mapping=case.mapping)
    sql = f"SELECT {', '.join(case.columns)} FROM raw.customers"

    with FakeProcess(case.platform, seed, nodelay=nodelay) as fake:
        platform = build_platform(
            case.platform,
            {**case.settings, case.secret_field: TOKEN, "base_url": fake.url},
            destination=case.name,
        )
        limits = platform.effective_limits()
        started, cpu_before, main_cpu_before = time.monotonic(), _cpu(), time.thread_time()
        with warehouse.session():
            inner = store.platform_journal("p1") if journal_kind == "warehouse" else InMemoryJournal()
            journal = TimedBufferedJournal(inner) if hasattr(inner, "flush") else TimedJournal(inner)
            result = deliver(platform, spec, {case.operation: _batches(warehouse, sql)}, journal)
        wall = time.monotonic() - started
        cpu = _cpu() - cpu_before
        main_cpu = time.thread_time() - main_cpu_before
        seen = fake.stop()

    acknowledged = (
        len(store.acknowledged_keys("p1", case.operation))
        if journal_kind == "warehouse"
        else len(inner.acknowledged_keys.get(case.operation, []))
    )
    rps = limits.requests_per_window / limits.window_seconds
    batch = limits.max_records_per_batch
    requests_needed = math.ceil(records / batch)
    floor = records / (batch * rps)
    # A rolling window lets its whole allowance go at once: the last request can start this early.
    window_floor = (requests_needed - 1) // limits.requests_per_window * limits.window_seconds
    arrivals: list[float] = seen["arrivals"]
    spans: list[tuple[float, float]] = seen["spans"]
    span = arrivals[-1] - arrivals[0] if len(arrivals) > 1 else 0.0
    busy = sum(end - begin for begin, end in spans)
    service_ms = sorted(1000 * (end - begin) for begin, end in spans)
    verified = (
        result.accepted == records
        and result.rejected == 0
        and result.quota is None
        and seen["held"] == count == records
        and seen["digest"] == digest
        and acknowledged == records
    )
    return {
        "case": case.name,
        "platform": case.platform,
        "service": case.settings["service"],
        "operation": case.operation,
        "why": case.why,
        "records": records,
        "batch_size": batch,
        "requests": result.requests,
        "batches": result.batches,
        "retries": result.retries,
        "documented_limit": {
            "requests": limits.requests_per_window,
            "per_seconds": limits.window_seconds,
            "requests_per_second": rps,
            "source": case.limit_source,
        },
        "max_concurrency": limits.max_concurrency,
        "floor_s": round(floor, 3),
        "wall_s": round(wall, 3),
        "ratio_to_floor": round(wall / floor, 3),
        "target": TARGET_RATIO,
        "result": "PASS" if wall / floor <= TARGET_RATIO and verified else "FAIL",
        "rolling_window_floor_s": window_floor,
        "ratio_to_rolling_window_floor": round(wall / window_floor, 3) if window_floor else None,
        "cpu_s": round(cpu, 3),
        "cpu_share_of_wall": round(cpu / wall, 3),
        "main_thread_cpu_s": round(main_cpu, 3),
        "cpu_ms_per_request": round(1000 * cpu / result.requests, 2) if result.requests else None,
        "journal": journal_kind,
        "fake_tcp_nodelay": nodelay,
        "journal_s": round(journal.seconds, 3),
        "journal_write_s": round(journal.write_seconds, 3),
        "journal_write_cpu_s": round(journal.write_cpu_seconds, 3),
        "journal_calls": dict(journal.calls),
        "time_to_first_request_s": round(arrivals[0] - started, 3) if arrivals else None,
        "request_span_s": round(span, 3),
        "tail_after_last_request_s": round(started + wall - arrivals[-1], 3) if arrivals else None,
        "achieved_requests_per_s": round((len(arrivals) - 1) / span, 2) if span else None,
        "max_requests_in_one_window": _max_in_window(arrivals, limits.window_seconds),
        "rate_limit_wait_s_all_workers": round(result.rate_limit_wait_seconds, 3),
        "fake": {
            "requests": len(arrivals),
            "statuses": seen["statuses"],
            "throttled_429": seen["throttled_429"],
            "largest_batch": seen["largest_batch"],
            "max_in_flight": seen["max_in_flight"],
            "mean_in_flight": round(busy / span, 2) if span else None,
            "service_ms_median": round(service_ms[len(service_ms) // 2], 2) if service_ms else None,
            "service_ms_p95": round(service_ms[int(len(service_ms) * 0.95)], 2) if service_ms else None,
            "busy_s": round(busy, 3),
            "cpu_s": round(seen["cpu_s"], 3),
            "cpu_ms_per_request": round(1000 * seen["cpu_s"] / len(arrivals), 2) if arrivals else None,
        },
        "verified": verified,
        "checks": {
            "accepted": result.accepted,
            "rejected": result.rejected,
            "acknowledged_in_journal": acknowledged,
            "fake_holds": seen["held"],
            "fake_matches_warehouse": seen["digest"] == digest,
        },
    }


# ---------------------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------------------


def table(results: list[dict[str, Any]]) -> str:
    """The figures as a Markdown table."""
    rows = [
        (
            "| case | journal | records | batch | requests | documented limit | floor | wall | wall / floor | "
            "target | result | CPU (this process) |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        limit = r["documented_limit"]
        rows.append(
            f"| {r['case']} ({r['operation']}) | {r['journal']} | {r['records']:,} | {r['batch_size']} | {r['requests']:,} | "
            f"{limit['requests']:,} / {limit['per_seconds']:g} s | {r['floor_s']:.2f} s | {r['wall_s']:.2f} s | "
            f"{r['ratio_to_floor']:.3f} | <= {r['target']} | {r['result']} | "
            f"{r['cpu_s']:.2f} s ({100 * r['cpu_share_of_wall']:.0f}% of wall) |"
        )
    return "\n".join(rows)


def details(r: dict[str, Any]) -> str:
    """Where one case's time went, in a few lines."""
    fake = r["fake"]
    rolling = (
        f"; rolling-window floor {r['rolling_window_floor_s']:g} s (ratio {r['ratio_to_rolling_window_floor']})"
        if r["rolling_window_floor_s"]
        else "; the whole run fits in one window's allowance"
    )
    return (
        f"{r['case']}: verified={r['verified']} {r['checks']}{rolling}\n"
        f"  first request after {r['time_to_first_request_s']} s, requests over {r['request_span_s']} s "
        f"({r['achieved_requests_per_s']}/s), last answer + journal {r['tail_after_last_request_s']} s; "
        f"most requests in one {r['documented_limit']['per_seconds']:g} s window: "
        f"{r['max_requests_in_one_window']}; 429s: {fake['throttled_429']}\n"
        f"  limiter waits (summed over {r['max_concurrency']} workers): {r['rate_limit_wait_s_all_workers']} s; "
        f"journal ({r['journal']}): {r['journal_s']} s on the main thread, writes {r['journal_write_s']} s "
        f"({r['journal_calls'].get('flush', 0)} flushes, {r['journal_write_cpu_s']} s CPU); main thread CPU {r['main_thread_cpu_s']} s; "
        f"CPU per request {r['cpu_ms_per_request']} ms\n"
        f"  fake: in flight max {fake['max_in_flight']} / mean {fake['mean_in_flight']}, service median "
        f"{fake['service_ms_median']} ms p95 {fake['service_ms_p95']} ms, busy {fake['busy_s']} s, "
        f"CPU {fake['cpu_s']} s (its own process; {fake['cpu_ms_per_request']} ms per request)"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the cases, print the table and the details, write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000, help="records per case (default 100,000)")
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, of: {', '.join(CASES)}")
    parser.add_argument(
        "--journal",
        default="warehouse,memory",
        help="comma-separated: warehouse (the sync state's journal, as a sync uses it) and/or memory "
        "(InMemoryJournal: the SDK alone); each case runs once per journal",
    )
    parser.add_argument(
        "--nagle",
        action="store_true",
        help="leave the fakes' sockets as they are (no TCP_NODELAY): each answer then waits ~40 ms",
    )
    parser.add_argument("--out", type=Path, default=HERE / "results" / "platforms.json")
    parser.add_argument("--workdir", type=Path, help="keep the DuckDB files here (default: a temporary dir)")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.cases.split(",") if n.strip()]
    journals = [j.strip() for j in args.journal.split(",") if j.strip()]
    unknown = [n for n in names if n not in CASES]
    if unknown:
        parser.error(f"--cases: found {', '.join(unknown)}; allowed: {', '.join(CASES)}")
    if not journals or any(j not in ("warehouse", "memory") for j in journals):
        parser.error(
            f"--journal: found {args.journal!r}; allowed: warehouse, memory, or both comma-separated"
        )
    if args.records < 1:
        parser.error(f"--records: found {args.records}; allowed: 1 or more")

    load = os.getloadavg()
    if load[0] > (os.cpu_count() or 1) * 0.5:
        print(f"warning: load average {load[0]:.2f} on {os.cpu_count()} CPUs: times may be inflated")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="dinmo-bench-platforms-"))
    workdir.mkdir(parents=True, exist_ok=True)
    results = []
    try:
        for name in names:
            for journal in journals:
                db = workdir / f"{name}_{journal}.duckdb"
                db.unlink(missing_ok=True)
                generate(db, args.records)
                print(f"{name}, {journal} journal: {args.records:,} records ...", flush=True)
                results.append(run_case(CASES[name], db, args.records, journal, nodelay=not args.nagle))
                print(details(results[-1]), flush=True)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)

    import duckdb
    import pyarrow

    report = {
        "benchmark": "figure 5: API destinations",
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "records": args.records,
        "journals": journals,
        "fake_tcp_nodelay": not args.nagle,
        "cpus": os.cpu_count(),
        "load_average_at_start": [round(x, 2) for x in load],
        "versions": {
            "python": host.python_version(),
            "duckdb": duckdb.__version__,
            "pyarrow": pyarrow.__version__,
        },
        "cases": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print()
    print(table(results))
    print(f"\nwritten to {args.out}")
    return 0 if all(r["result"] == "PASS" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())

"""DuckDB: an embedded database file (the default source)."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

import pyarrow as pa
from sqlglot import exp

from dinmo_dagster.connectors import register_warehouse
from dinmo_dagster.secrets import EnvRef
from dinmo_dagster.warehouses.base import SourceConfig, Warehouse, WarehouseError, quietly

log = logging.getLogger(__name__)
T = TypeVar("T")

_LOCK_WAIT_SECONDS = 30.0
_ROWS_VIEW = "dinmo_insert_rows"  # the Arrow table of insert_rows, as its connection sees it

DUCKDB_DEFAULT_MEMORY_LIMIT = "auto"
"""DuckDB's memory cap on the tool's connections when the source sets none: ``auto``.

``auto`` starts each database at a small working limit (128 MB, the first of ``AUTO_LIMITS``) and, when
a statement runs out of memory, raises it a step (1 GB, then half the machine's memory) for the rest of
the sync and runs that statement again (its transaction was rolled back); a warning says so.

Why: the Python side of a sync stays small whatever the table size (rows leave DuckDB in Arrow batches,
and a DuckDB source's files are written by DuckDB's own ``COPY``), so a sync's memory is DuckDB's. What
it does (hash joins of keys and row hashes, GROUP BYs, sorts) spills to disk beyond the cap, and the key
statistics count distinct keys by grouping, which spills too; measured on a 2-core machine, a 5M-row
sync peaks at 374 MB under 128 MB against 681 MB under half the memory, for about 4% more CPU, and a
50M-row sync at 565 MB against 4.5 GB. What cannot spill (a user's segment SQL with a large ``list()``
or ``string_agg``, an ungrouped ``count(distinct)``) would fail under a fixed small cap, as a fixed 64 MB
default once did on a 2M-row table: under ``auto`` it gets half the machine instead, and a 50M-row table
syncs on a 24 GB machine.
"""

AUTO_LIMITS = ("128MB", "1GB", "50%")


class DuckDBSource(SourceConfig):
    """``{type: duckdb, path, memory_limit, preserve_insertion_order}``."""

    path_fields: ClassVar[tuple[str, ...]] = ("path",)

    type: Literal["duckdb"]
    path: str | EnvRef
    """Path of the DuckDB database file; created with its parent directory when missing. Relative to
    the project directory in a project (an `{env: NAME}` path: to the working directory)."""
    memory_limit: str | None = DUCKDB_DEFAULT_MEMORY_LIMIT
    """DuckDB's memory_limit for the tool's connections: ``auto`` (the default: 128 MB, raised to half the
    machine's memory when a statement needs more; see ``DUCKDB_DEFAULT_MEMORY_LIMIT``), a size ('512MB',
    '4GB') or a share of the machine's memory ('50%'). DuckDB spills to `<path>.tmp` beyond it where the
    operator can (joins, GROUP BY, sorts). None: DuckDB's own default (80% of the memory)."""
    preserve_insertion_order: bool = False
    """DuckDB's preserve_insertion_order. Off by default: snapshots and exports need no row order, and
    keeping it costs memory on large tables."""


class DuckDBWarehouse(Warehouse):
    """An embedded DuckDB database file (the default source).

    DuckDB spills to the directory `<path>.tmp` next to the database file (its default, kept), so
    spilled customer rows stay with the warehouse on the same disk. DuckDB deletes its spill files when
    the connection closes; those of a killed process are deleted when the tool next opens the file.
    """

    dialect: ClassVar[str] = "duckdb"
    source_type: ClassVar[str] = "duckdb"
    default_schema: ClassVar[str | None] = "main"
    case_insensitive: ClassVar[bool] = True

    config: DuckDBSource

    def __init__(self, config: DuckDBSource, *, name: str = "") -> None:
        super().__init__(config, name=name)
        self._shared: Any = None  # the open database of the current session(), if any
        self._memory_step = 0  # memory_limit auto: the index in AUTO_LIMITS, raised when a statement ran out

    def _target(self) -> str:
        return f"DuckDB database {self._value('path')}"

    def _connection_settings(self, con: Any) -> None:
        """Settings each connection (and each cursor of a shared one) needs."""
        # timestamps with time zone come out in UTC, whatever the machine's time zone
        quietly(lambda: con.execute("SET TimeZone = 'UTC'"))
        # no progress bar on the terminal of `dinmo sync` or in Dagster's captured logs
        quietly(lambda: con.execute("SET enable_progress_bar = false"))

    def _memory_limit(self) -> str:
        """The configured `memory_limit`, checked: ``auto``, a size with its unit, or a percentage of 1 to
        100; ``auto`` gives the working limit, or the raised one once a statement ran out of memory."""
        limit = str(self.config.memory_limit).strip()
        if limit.lower() == "auto":
            return AUTO_LIMITS[self._memory_step]
        size = re.fullmatch(r"\d+(\.\d+)?\s*(KB|MB|GB|TB|KiB|MiB|GiB|TiB)", limit, re.IGNORECASE)
        share = re.fullmatch(r"(\d+(\.\d+)?)\s*%", limit)
        if not size and not (share and 1 <= float(share.group(1)) <= 100):
            raise WarehouseError(
                self._prefix() + f"memory_limit: found {self.config.memory_limit!r}; allowed: 'auto', a size"
                " such as '512MB' or '4GB', or a share of the machine's memory from 1% to 100% such as '50%'"
            )
        return limit

    def _settings(self, con: Any) -> None:
        """Settings of a newly opened database: the connection's, plus the database-wide ones that its
        cursors share."""
        self._connection_settings(con)
        if self.config.memory_limit:
            con.execute(f"SET memory_limit = '{self._memory_limit()}'")
        con.execute(f"SET preserve_insertion_order = {str(bool(self.config.preserve_insertion_order)).lower()}")

    @contextmanager
    def session(self) -> Iterator[None]:
        if self._shared is not None:
            yield
            return
        with self._open_file() as con:
            self._shared = con
            try:
                yield
            finally:
                self._shared = None

    @contextmanager
    def _open(self) -> Iterator[Any]:
        if self._shared is not None:
            # A cursor is a second connection to the same open database: a pending streamed result
            # on one is not disturbed by statements on the other, and nothing reopens the file.
            cur = self._shared.cursor()
            try:
                self._connection_settings(cur)
                yield cur
            finally:
                cur.close()
            return
        with self._open_file() as con:
            yield con

    @contextmanager
    def _open_file(self) -> Iterator[Any]:
        import duckdb  # the driver, imported when a connection opens (import cost only)

        path = str(self._value("path"))
        if path != ":memory:" and not path.startswith("md:"):
            Path(path).expanduser().parent.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + _LOCK_WAIT_SECONDS
        delay = 0.05
        while True:
            try:
                con = duckdb.connect(path)
                break
            except duckdb.IOException as exc:
                # another process holds the write lock: wait for it (bounded)
                if "lock" not in str(exc).lower() or time.monotonic() > deadline:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 1.0)
        try:
            self._settings(con)
            if path != ":memory:" and not path.startswith("md:"):
                _remove_stale_spill_files(con)
            yield con
        finally:
            con.close()

    def _out_of_working_memory(self, exc: BaseException) -> bool:
        """Whether ``exc`` is DuckDB running out of ``auto``'s working limit, with a step left to raise."""
        auto = str(self.config.memory_limit or "").strip().lower() == "auto"
        return auto and self._memory_step < len(AUTO_LIMITS) - 1 and "Out of Memory Error" in str(exc)

    def _raise_memory_limit(self, con: Any = None) -> None:
        """Raise ``auto``'s limit a step for this warehouse's later connections, and on ``con`` / the open
        session (a DuckDB setting holds for the whole database instance)."""
        before = AUTO_LIMITS[self._memory_step]
        self._memory_step += 1
        after = AUTO_LIMITS[self._memory_step]
        log.warning("%sDuckDB needed more than its %s working memory (memory_limit auto); running the statement "
                    "again with %s", self._prefix(), before,
                    f"{after} of the machine's memory" if after.endswith("%") else after)
        for target in (con, self._shared):
            if target is not None:
                quietly(lambda t=target: t.execute(f"SET memory_limit = '{after}'"))

    def _with_headroom(self, run: Callable[[], T]) -> T:
        """``run()``, run again with a raised limit while it runs out of ``auto``'s working memory (its
        transaction was rolled back, so nothing of an earlier attempt remains)."""
        while True:
            try:
                return run()
            except WarehouseError as exc:
                if not self._out_of_working_memory(exc):
                    raise
                self._raise_memory_limit()

    def execute(self, statements: str | Sequence[str]) -> None:
        self._with_headroom(lambda: super(DuckDBWarehouse, self).execute(statements))

    def query(self, sql: str) -> list[tuple]:
        return self._with_headroom(lambda: super(DuckDBWarehouse, self).query(sql))

    def execute_then_query(self, statements: Sequence[str], sql: str) -> list[tuple]:
        """Run ``statements`` then ``sql`` in one transaction, and return every row of ``sql``.

        A DuckDB transaction reads one state of the database: ``sql`` sees what ``statements`` wrote and
        the very rows of the other tables they read, even while another connection writes (a delta
        sync builds its changes, then counts them and the segment's keys for its uniqueness check)."""
        def run() -> list[tuple]:
            with self._connection() as conn, self._wrap("statement failed"), _transaction(conn):
                for statement in statements:
                    conn.execute(statement)
                return [tuple(r) for r in conn.execute(sql).fetchall()]

        return self._with_headroom(run)

    def _run_statements(self, conn: Any, statements: list[str]) -> None:
        with _transaction(conn):
            for statement in statements:
                conn.execute(statement)

    def insert_rows(
        self, table: exp.Table, rows: pa.Table, *, before: Sequence[str] = (), after: Sequence[str] = ()
    ) -> None:
        """Insert ``rows`` into ``table`` in one transaction with ``before`` and ``after``: DuckDB reads
        the Arrow table (registered as a view of this connection only), so values never become SQL."""
        names = ", ".join(self._render(exp.to_identifier(n, quoted=True)) for n in rows.column_names)
        insert = f"INSERT INTO {self._render(table)} ({names}) SELECT {names} FROM {_ROWS_VIEW}"
        self._with_headroom(lambda: self._insert_rows(insert, rows, before, after))

    def _insert_rows(self, insert: str, rows: pa.Table, before: Sequence[str], after: Sequence[str]) -> None:
        with self._connection() as conn, self._wrap("statement failed"):
            try:
                with _transaction(conn):
                    for statement in before:
                        conn.execute(statement)
                    if rows.num_rows:
                        conn.register(_ROWS_VIEW, rows)
                        conn.execute(insert)
                    for statement in after:
                        conn.execute(statement)
            finally:
                # after the rollback: an aborted transaction refuses it, and its error would hide the cause
                quietly(lambda: conn.unregister(_ROWS_VIEW))

    @contextmanager
    def stream(self, sql: str, batch_rows: int = 100_000) -> Iterator[pa.RecordBatchReader]:
        with self._connection() as con:
            with self._wrap("query failed"):
                while True:
                    try:
                        reader = con.sql(sql).to_arrow_reader(batch_rows)
                        break
                    except Exception as exc:
                        if not self._out_of_working_memory(exc):
                            raise
                        self._raise_memory_limit(con)

            try:
                yield pa.RecordBatchReader.from_batches(reader.schema, self._guarded(iter(reader)))
            finally:
                quietly(reader.close)

    def column_types(self, sql: str) -> list[str]:
        """The DuckDB type of each column of ``sql``'s result (``DECIMAL(12,2)``), without running it."""
        with self._connection() as con, self._wrap("query failed"):
            return [str(t) for t in con.sql(sql).types]

    def copies_locally(self) -> bool:
        """Whether ``COPY ... TO`` runs in this process (a database file or ``:memory:``), not on MotherDuck
        (``md:``), where the query may run remotely."""
        return not str(self._value("path")).startswith("md:")

    def copy_to(self, statement: str) -> int:
        """Run a ``COPY (query) TO '<file>' (...)`` statement: DuckDB writes the file itself. Returns
        the number of rows written."""
        def copy() -> int:
            with self._connection() as con, self._wrap("COPY to a local file failed"):
                return int(con.execute(statement).fetchall()[0][0])

        return self._with_headroom(copy)


@contextmanager
def _transaction(conn: Any) -> Iterator[None]:
    """One transaction on ``conn``: committed when the block ends, rolled back (quietly, so the cause is
    what propagates) when it raises."""
    conn.begin()
    try:
        yield
        conn.commit()
    except BaseException:
        quietly(conn.rollback)
        raise


def _remove_stale_spill_files(con: Any) -> None:
    """Delete the spill files (customer rows) that a killed process left in the database's temp directory.

    Called once the database file is open for writing: no other process can have it open then, so
    every DuckDB temporary file there is stale. DuckDB itself would remove them only when it next spills.
    """
    # fetchall: DuckDB refuses further work on a connection whose result was not read to its end
    [(temp_directory,)] = con.execute("SELECT current_setting('temp_directory')").fetchall()
    if not temp_directory:
        return
    for leftover in Path(temp_directory).glob("duckdb_temp_*"):
        quietly(leftover.unlink)


register_warehouse("duckdb", DuckDBSource, DuckDBWarehouse)

"""The delivery engine: records in Arrow batches in, per-record results and metrics out.

:func:`deliver` takes, for each operation (``upsert``, ``delete``, ``add``, ``track``...), an
iterable of ``pyarrow.RecordBatch`` holding the record key column, the ``match`` columns and the
mapped columns. For every platform alike it

1. maps each row to a :class:`Record`: the key as text, the match identifiers normalized and
   hashed when the platform asks for hashes (a row whose identifier is empty or invalid is
   rejected before anything is sent), the mapped fields (``null_values: skip`` leaves NULLs out so
   they never erase a value the platform holds);
2. skips the records a previous attempt of the same sync already delivered (the journal says so);
3. cuts batches at the platform's documented record count and byte size;
4. sends them with bounded concurrency through the transport (rate limiter, retries);
5. journals every batch's verdicts as they come back, splits a batch the platform refused whole for
   one unnamed bad record, re-sends records the platform asked to retry, polls async jobs; once an
   operation's batches are all answered, lets the platform finish it (``finish_operation``: commit a
   replace session) and journals the records it left pending;
6. stops early, as a partial success, when a quota runs out; stops at once on an auth error.

Operations run one after the other in the order given (all batches of one operation complete before
the next starts), so "remove the old identifier, then add the new one" keeps its order.

**Journal writes (group commit).** A journal with a ``flush()`` method (the warehouse's) buffers the
verdicts it is told, and the engine has them written on a journal thread of its own, one write at a
time, while the workers keep sending. The main thread looks at the journal after each round of
answered batches and at least every ``JOURNAL_INTERVAL_SECONDS`` (0.05 s): it starts a write of
every verdict noted since the last one when no write is running and 0.05 s have passed since the
last one started, or when ``8 x max_concurrency`` batches (64 for Braze, 32 for HubSpot) wait;
when that many wait while a write runs, it waits for that write before it sends more. So a verdict
waits about 0.05 s, plus the write in progress (a few milliseconds on DuckDB), and never more than
``20 x max_concurrency`` batches are acknowledged and not journalled (in practice, at Braze's full
rate of 1,000 requests per second, about 50 batches). A commit per batch would cost more CPU than
the requests themselves (2-3 ms of DuckDB per transaction against under 1 ms per request). A
process killed in that window re-sends those batches on its retry, which idempotent keys make
harmless. Every verdict is written before an operation ends, before :func:`deliver` returns, and
before it raises. A batch whose records go in one request each (Splio's contact edits: up to 1,000
calls, 100 s at Splio's pace) would otherwise have none of them journalled until its last call is
answered, and a sync killed meanwhile would send them all again: such an adapter hands each verdict
over as it comes (``Platform.acknowledge_early``), journalled with the next write like a batch's.
An operation the platform does not de-duplicate (``Platform.deduplicates`` is False: Braze's track
events) goes one batch at a time, each journalled before the next is sent: a killed sync re-sends at
most the batch in flight, the least any client can promise without an event id.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal

import pyarrow as pa
import pyarrow.compute as pc
import requests

from dinmo_dagster.platforms.base import (
    FIELD_OPERATIONS,
    BatchOutcome,
    DeliveryResult,
    FieldInfo,
    Journal,
    Platform,
    QuotaExhausted,
    Record,
    RecordResult,
    _batch_progress,
    json_size,
)
from dinmo_dagster.platforms.errors import (
    PlatformConfigError,
    PlatformError,
    PlatformRequestError,
    QuotaExhaustedError,
    RejectionRateExceeded,
)
from dinmo_dagster.platforms.http import RetryPolicy, Transport
from dinmo_dagster.platforms.identifiers import (
    IdentifierError,
    IdentifierSpec,
    is_sha256_hex,
    prepare_identifier,
)

__all__ = [
    "ActivationSpec",
    "InMemoryJournal",
    "PreviewRequest",
    "batch_records",
    "check_connection",
    "check_rejection_rate",
    "deliver",
    "json_size",
    "mask_identifier",
    "prepare_records",
    "preview",
    "validate_connection",
]

logger = logging.getLogger("dinmo_dagster.platforms")

JOURNAL_INTERVAL_SECONDS = 0.05
"""Least time between two journal writes of one delivery (unless many batches wait): see above."""

Changes = Mapping[str, Iterable[pa.RecordBatch]] | Iterable[tuple[str, Iterable[pa.RecordBatch]]]


@dataclass(frozen=True)
class ActivationSpec:
    """What an activation asks of its destination (the part the engine needs).

    ``match`` maps destination identifiers to segment columns (``{email: email}``); ``mapping``
    maps segment columns to destination fields (``{ltv: lifetime_value}``), in order.
    """

    destination: str
    key_column: str
    match: Mapping[str, str]
    mapping: Mapping[str, str] = field(default_factory=dict)
    null_values: Literal["sync", "skip"] = "sync"
    default_country: str | None = None

    def __post_init__(self) -> None:
        if self.null_values not in ("sync", "skip"):
            raise PlatformConfigError(f"null_values: found {self.null_values!r}; allowed: sync, skip")


class InMemoryJournal:
    """A :class:`Journal` kept in memory: for previews, tests, and as the reference behaviour the
    warehouse-backed journal of the sync layer must match."""

    def __init__(self) -> None:
        self.acknowledged_keys: dict[str, list[str]] = {}
        self.rejections: list[tuple[str, str, str]] = []

    def already_acknowledged(self, operation: str, keys: Sequence[str]) -> set[str]:
        """Keys of ``keys`` acknowledged earlier for ``operation``."""
        done = set(self.acknowledged_keys.get(operation, ()))
        return {k for k in keys if k in done}

    def acknowledged(self, operation: str, keys: Sequence[str]) -> None:
        """Record that the platform accepted ``keys`` for ``operation``."""
        self.acknowledged_keys.setdefault(operation, []).extend(keys)

    def rejected(self, key: str, operation: str, reason: str) -> None:
        """Record one rejection."""
        self.rejections.append((key, operation, reason))


# --------------------------------------------------------------------------------------------------
# Records from Arrow batches
# --------------------------------------------------------------------------------------------------


def _required_columns(spec: ActivationSpec, operation: str) -> list[str]:
    columns = [spec.key_column, *spec.match.values()]
    if operation in FIELD_OPERATIONS:
        columns.extend(spec.mapping)
    return list(dict.fromkeys(columns))


def prepare_records(
    platform: Platform, spec: ActivationSpec, operation: str, batch: pa.RecordBatch
) -> tuple[list[Record], list[RecordResult]]:
    """Map one Arrow batch to records for ``operation``; rows that cannot be sent are returned as
    rejections (their reasons never contain the row's values)."""
    missing = [c for c in _required_columns(spec, operation) if c not in batch.schema.names]
    if missing:
        raise platform.config_error(
            f"the {operation} records lack column(s) {', '.join(missing)}; "
            f"found: {', '.join(batch.schema.names)}"
        )
    keys = _column_values(batch.column(spec.key_column))
    # Each identifier column prepared at once (a value, None when an optional one is empty, or the
    # IdentifierError), then picked per row: the loop below does no normalization of its own.
    prepared: list[tuple[str, list[Any]]] = []
    for name, column in spec.match.items():
        ident_spec = platform.identifier_spec(name)
        if ident_spec is None:
            if keys:
                raise platform.config_error(f"match.{name}: {platform.name} has no identifier {name!r}")
            continue
        prepared.append((name, _prepare_column(ident_spec, _column_values(batch.column(column)), spec.default_country)))
    fields = (
        {col: batch.column(col).to_pylist() for col in spec.mapping} if operation in FIELD_OPERATIONS else {}
    )
    # A removal that clears the mapped fields (Braze's mirror) names them, each set to None.
    cleared = dict.fromkeys(spec.mapping.values()) if platform.clears_fields_on(operation) else None
    records: list[Record] = []
    rejections: list[RecordResult] = []
    for row, raw_key in enumerate(keys):
        if raw_key is None:
            raise PlatformError(
                f"{platform.label}: row {row} of the {operation} records has a NULL key "
                f"(column {spec.key_column}); NULL keys are never synced"
            )
        key = raw_key if raw_key.__class__ is str else str(raw_key)
        identifiers: dict[str, str] = {}
        problem = None
        for name, values in prepared:
            value = values[row]
            if value.__class__ is str:
                identifiers[name] = value
            elif value is not None:
                column = spec.match[name]
                problem = (f"identifier {name} (column {column}) is {value}", f"invalid identifier {name}")
                break
        if problem is None and prepared and not identifiers:
            problem = (
                f"no identifier has a value (columns {', '.join(spec.match.values())})",
                "no identifier",
            )
        if problem is not None:
            rejections.append(RecordResult(key, "rejected", problem[0], problem[1]))
            continue
        values_out: dict[str, Any] = {}
        for col, target in spec.mapping.items() if fields else ():
            value = fields[col][row]
            if value is None and spec.null_values == "skip":
                continue
            values_out[target] = value
        records.append(Record(key, operation, identifiers, values_out if cleared is None else dict(cleared)))
    return records, rejections


def _column_values(column: pa.Array | pa.ChunkedArray) -> list[Any]:
    """The column's values as Python objects; integers as their decimal text (what ``str()`` gives),
    cast by Arrow in one go."""
    if pa.types.is_integer(column.type):
        return pc.cast(column, pa.string()).to_pylist()
    return column.to_pylist()


def _prepare_column(ident_spec: IdentifierSpec, values: list[Any], default_country: str | None) -> list[Any]:
    """``prepare_identifier`` of every value: the text to send, None for an empty optional identifier
    (the record goes without it), or the IdentifierError."""
    out: list[Any] = []
    plain = ident_spec.normalize is None and not ident_spec.hashed  # sent as the warehouse holds it
    for value in values:
        if value is None or (value.__class__ is str and not value.strip()):
            out.append(None if ident_spec.optional else IdentifierError("empty"))
        elif plain:
            text = value if value.__class__ is str else str(value)
            out.append(text if text.strip() else IdentifierError("empty"))
        else:
            try:
                out.append(prepare_identifier(ident_spec, value, default_country=default_country))
            except IdentifierError as exc:
                out.append(exc)
    return out


def batch_records(
    items: Iterable[tuple[Record, Any]],
    *,
    max_records: int,
    max_bytes: int | None = None,
    envelope_bytes: int = 0,
    on_oversized: Any = None,
) -> Iterator[list[tuple[Record, Any]]]:
    """Cut ``(record, input)`` pairs into batches of at most ``max_records`` records and
    ``max_bytes`` bytes (the inputs' compact JSON, the commas between them, plus ``envelope_bytes``
    for the rest of the request body).

    A record too big to fit alone is passed to ``on_oversized(record, size)`` and left out.
    """
    batch: list[tuple[Record, Any]] = []
    size = envelope_bytes
    for record, payload in items:
        item_size = json_size(payload) if max_bytes is not None else 0
        if max_bytes is not None and envelope_bytes + item_size > max_bytes:
            if on_oversized is not None:
                on_oversized(record, item_size)
            continue
        # Every input after the first costs one more byte: the comma between them.
        full = len(batch) >= max_records or (max_bytes is not None and size + 1 + item_size > max_bytes)
        if batch and full:
            yield batch
            batch, size = [], envelope_bytes
        size += item_size + (1 if batch else 0)
        batch.append((record, payload))
    if batch:
        yield batch


# --------------------------------------------------------------------------------------------------
# Delivery
# --------------------------------------------------------------------------------------------------


@dataclass
class _Work:
    operation: str
    records: list[Record]
    inputs: list[Any]
    attempt: int = 0


def _normalize_changes(changes: Changes) -> list[tuple[str, Iterable[pa.RecordBatch]]]:
    if isinstance(changes, Mapping):
        return list(changes.items())
    return list(changes)


class _Delivery:
    """State of one :func:`deliver` call (main thread: journal and results; workers: sends)."""

    def __init__(
        self,
        platform: Platform,
        spec: ActivationSpec,
        journal: Journal,
        transport: Transport | None,
        retry: RetryPolicy,
    ) -> None:
        self.platform = platform
        self.spec = spec
        self.journal = journal
        self.transport = transport
        self.retry = retry
        self.limits = platform.effective_limits()
        self.result = DeliveryResult(destination=spec.destination, platform=platform.name)
        self.stop_error: BaseException | None = None
        self.quota: QuotaExhausted | None = None
        self.pending: dict[str, list[str]] = {}  # keys sent, awaiting finish_operation (per operation)
        self._stop = threading.Event()
        self._flush = getattr(journal, "flush", None)
        self._writer: ThreadPoolExecutor | None = None  # the journal thread (group commits)
        self._writing: Future[None] | None = None  # the write in progress
        self._noted = 0  # batches whose verdicts were noted since the last write started
        # Acknowledgements a batch still running handed over (Platform.acknowledge_early), from the workers,
        # and the keys journalled that way whose batch was not applied yet (not journalled twice).
        self._early: queue.SimpleQueue[tuple[str, list[str]]] = queue.SimpleQueue()
        self._journalled_early: dict[str, set[str]] = {}
        self._last_write = 0.0  # time.monotonic() when the last write started

    def write_journal(self, max_unwritten: int) -> None:
        """Start writing the verdicts noted since the last write, on the journal thread, when no write
        runs and ``JOURNAL_INTERVAL_SECONDS`` passed since the last one, or when ``max_unwritten``
        batches wait (then after the running write, waited for). See "Journal writes" above."""
        if self._flush is None or not self._noted:
            return
        if self._writing is not None and self._writing.done():
            writing, self._writing = self._writing, None
            writing.result()  # a failed write raises here
        if self._writing is not None:
            if self._noted < max_unwritten:
                return  # they go with the next write
            writing, self._writing = self._writing, None
            writing.result()  # too many wait: no more sends until it is written
        elif self._noted < max_unwritten and time.monotonic() - self._last_write < JOURNAL_INTERVAL_SECONDS:
            return
        self._last_write = time.monotonic()
        if self._writer is None:
            self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dinmo-journal")
        self._noted = 0
        self._writing = self._writer.submit(self._flush)

    def note_early(self) -> None:
        """Journal the acknowledgements the workers handed over from batches still running (main thread)."""
        while True:
            try:
                operation, keys = self._early.get_nowait()
            except queue.Empty:
                return
            self.journal.acknowledged(operation, keys)
            self._journalled_early.setdefault(operation, set()).update(keys)
            self._noted += 1

    def flush_journal(self) -> None:
        """Write every verdict noted, and wait for it (at the end of an operation, before an error)."""
        self.note_early()
        if self._flush is None:
            return
        writing, self._writing = self._writing, None
        try:
            if writing is not None:
                writing.result()
        finally:
            self._noted = 0
            self._flush()

    def close_journal_thread(self) -> None:
        """Stop the journal thread (its last write has been waited for)."""
        if self._writer is not None:
            self._writer.shutdown(wait=True)
            self._writer = None

    # -- worker side ------------------------------------------------------------------------------------

    def run_batch(self, work: _Work) -> BatchOutcome:
        if self._stop.is_set():
            raise _Cancelled()
        assert self.transport is not None  # only previews run without one, and they send nothing
        _batch_progress.report = lambda keys: self._early.put((work.operation, keys))
        try:
            outcome = self.platform.deliver_batch(work.operation, work.records, work.inputs, self.transport)
            deadline = time.monotonic() + self.retry.job_timeout_seconds
            while outcome.job is not None:
                job = outcome.job
                if time.monotonic() > deadline:
                    raise PlatformRequestError(
                        f"{self.platform.label}: job {job.id} did not finish within "
                        f"{self.retry.job_timeout_seconds:.0f}s"
                    )
                time.sleep(self.platform.poll_interval_seconds)
                outcome = self.platform.poll_job(work.operation, work.records, job, self.transport)
            return outcome
        finally:
            _batch_progress.report = None

    # -- main thread side -------------------------------------------------------------------------------

    def reject(self, operation: str, results: Iterable[RecordResult]) -> None:
        counts = self.result.counts(operation)
        for r in results:
            counts.rejected += 1
            self.result.reasons[r.reason_code or r.reason or "rejected"] += 1
            self.journal.rejected(r.key, operation, r.reason or r.reason_code or "rejected")

    def record_items(
        self, operation: str, arrow_batches: Iterable[pa.RecordBatch]
    ) -> Iterator[tuple[Record, Any]]:
        counts = self.result.counts(operation)
        for arrow_batch in arrow_batches:
            if self._stop.is_set():
                return
            counts.records += arrow_batch.num_rows
            records, rejections = prepare_records(self.platform, self.spec, operation, arrow_batch)
            self.reject(operation, rejections)
            if not records:
                continue
            # A replace is whole (the platform drops what it was not sent): it re-sends every record.
            keys = [r.key for r in records] if operation != "replace" else []
            done = set(self.journal.already_acknowledged(operation, keys)) if keys else set()
            if done:
                counts.already_acknowledged += sum(1 for r in records if r.key in done)
                records = [r for r in records if r.key not in done]
            for record in records:
                yield record, self.platform.record_input(operation, record)

    def oversized(self, record: Record, size: int) -> None:
        limit = self.limits.max_bytes_per_batch
        self.reject(
            record.operation,
            [
                RecordResult(
                    record.key,
                    "rejected",
                    f"record is {size} bytes, over {self.platform.name}'s limit of {limit} bytes per request",
                    "record too large",
                )
            ],
        )

    def apply(self, work: _Work, outcome: BatchOutcome, requeue: list[_Work]) -> None:
        """Journal one batch's verdicts; queue its halves or its retry records."""
        operation = work.operation
        if outcome.split and len(work.records) > 1:
            half = len(work.records) // 2
            requeue.append(_Work(operation, work.records[:half], work.inputs[:half], work.attempt))
            requeue.append(_Work(operation, work.records[half:], work.inputs[half:], work.attempt))
            return
        counts = self.result.counts(operation)
        self._noted += 1
        by_key = {r.key: r for r in outcome.results}
        verdicts = [by_key.get(r.key) for r in work.records]
        accepted = [r.key for r, v in zip(work.records, verdicts) if v is not None and v.status == "accepted"]
        if accepted:
            early = self._journalled_early.get(operation)
            if early:  # journalled while the batch ran (note_early ran before this batch was applied)
                fresh = [k for k in accepted if k not in early]
                early.difference_update(accepted)
            else:
                fresh = accepted
            if fresh:
                self.journal.acknowledged(operation, fresh)
            counts.accepted += len(accepted)
        self.reject(operation, [v for v in verdicts if v is not None and v.status == "rejected"])
        pending = [r.key for r, v in zip(work.records, verdicts) if v is not None and v.status == "pending"]
        self.pending.setdefault(operation, []).extend(pending)
        again = [i for i, v in enumerate(verdicts) if v is None or v.status == "retry"]
        if not again:
            return
        unknown = sum(1 for v in verdicts if v is None)
        if unknown:
            logger.warning(
                "%s: the platform gave no result for %d record(s); they go with the next sync",
                self.platform.label,
                unknown,
            )
        if work.attempt < self.retry.max_record_retries and not unknown:
            requeue.append(
                _Work(
                    operation,
                    [work.records[i] for i in again],
                    [work.inputs[i] for i in again],
                    work.attempt + 1,
                )
            )
        else:
            counts.not_sent += len(again)

    def finish(self, operation: str) -> None:
        """Let the platform complete ``operation`` and journal the records it left pending."""
        assert self.transport is not None
        keys = self.pending.pop(operation, [])
        counts = self.result.counts(operation)
        try:
            outcome = self.platform.finish_operation(operation, keys, self.transport)
        except (PlatformError, requests.RequestException) as exc:
            counts.not_sent += len(keys)
            self.stop(exc)
            return
        by_key = {r.key: r for r in outcome.results}
        accepted = [k for k in keys if k in by_key and by_key[k].status == "accepted"]
        if accepted:
            self.journal.acknowledged(operation, accepted)
            counts.accepted += len(accepted)
        self.reject(operation, [by_key[k] for k in keys if k in by_key and by_key[k].status == "rejected"])
        counts.not_sent += sum(
            1 for k in keys if k not in by_key or by_key[k].status not in ("accepted", "rejected")
        )

    def stop(self, error: BaseException) -> None:
        if isinstance(error, QuotaExhaustedError):
            if self.quota is None:
                self.quota = QuotaExhausted(str(error))
                logger.warning("%s: %s; the rest goes with the next sync", self.platform.label, error)
        elif self.stop_error is None:
            self.stop_error = error
        self._stop.set()

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()


class _Cancelled(Exception):
    """A queued batch that will not be sent because the delivery is stopping."""


def deliver(
    platform: Platform,
    spec: ActivationSpec,
    changes: Changes,
    journal: Journal,
    *,
    retry: RetryPolicy | None = None,
    session: requests.Session | None = None,
) -> DeliveryResult:
    """Send every record of ``changes`` (operation -> Arrow batches) to ``platform``.

    Returns the :class:`DeliveryResult`; ``result.quota`` is set when a quota ended the delivery
    early (a partial success: what was acknowledged is in the journal). Raises PlatformAuthError at
    the first refused credential, PlatformRequestError when a request fails for good, and
    PlatformConfigError for an operation the service does not offer or missing columns; batches
    already answered are journalled before any of these is raised.
    """
    retry = retry or RetryPolicy()
    operations = _normalize_changes(changes)
    for operation, _ in operations:
        platform.check_operation(operation)
    with Transport(platform, retry=retry, session=session) as transport:
        state = _Delivery(platform, spec, journal, transport, retry)
        started = time.monotonic()
        try:
            _run(state, operations)
        except BaseException:
            # What the platform answered before the error is journalled; the error stays the one raised.
            with contextlib.suppress(Exception):
                state.flush_journal()
            raise
        finally:
            state.close_journal_thread()
            state.result.requests = transport.requests
            state.result.retries = transport.retries
            state.result.rate_limit_wait_seconds = transport.rate_limit_wait_seconds
            state.result.retry_wait_seconds = transport.retry_wait_seconds
        state.result.quota = state.quota
        logger.info(
            "%s: delivered in %.1fs: %d accepted, %d rejected, %d requests, %d retries",
            platform.label,
            time.monotonic() - started,
            state.result.accepted,
            state.result.rejected,
            transport.requests,
            transport.retries,
        )
        return state.result


def _answered(answered: queue.SimpleQueue[Future[BatchOutcome]], timeout: float) -> list[Future[BatchOutcome]]:
    """The batches answered so far, waiting up to ``timeout`` seconds for the first one."""
    try:
        done = [answered.get(timeout=timeout)]
    except queue.Empty:
        return []
    while True:
        try:
            done.append(answered.get_nowait())
        except queue.Empty:
            return done


def _run(state: _Delivery, operations: list[tuple[str, Iterable[pa.RecordBatch]]]) -> None:
    limits = state.limits
    max_in_flight = limits.max_concurrency * 2
    with ThreadPoolExecutor(max_workers=limits.max_concurrency, thread_name_prefix="dinmo-platform") as pool:
        for operation, arrow_batches in operations:
            if state.stopped:
                break
            # An operation the platform would count twice goes one batch at a time, journalled in between.
            exactly = not state.platform.deduplicates(operation)
            limit = 1 if exactly else max_in_flight
            in_flight: dict[Future[BatchOutcome], _Work] = {}
            # Answered batches, in the order they come back (cheaper than wait() over every future in flight).
            answered: queue.SimpleQueue[Future[BatchOutcome]] = queue.SimpleQueue()
            pending: list[_Work] = []
            batches = batch_records(
                state.record_items(operation, arrow_batches),
                max_records=limits.max_records_per_batch,
                max_bytes=limits.max_bytes_per_batch,
                envelope_bytes=limits.envelope_bytes,
                on_oversized=state.oversized,
            )
            source_done = False
            while True:
                while not state.stopped and len(in_flight) < limit:
                    if pending:
                        work = pending.pop(0)
                    elif not source_done:
                        batch = next(batches, None)
                        if batch is None:
                            source_done = True
                            continue
                        work = _Work(operation, [r for r, _ in batch], [p for _, p in batch])
                    else:
                        break
                    state.result.batches += 1
                    future = pool.submit(state.run_batch, work)
                    in_flight[future] = work
                    future.add_done_callback(answered.put)
                if not in_flight:
                    break
                # Woken at least every JOURNAL_INTERVAL_SECONDS: answered batches never wait on a pause.
                done = _answered(answered, JOURNAL_INTERVAL_SECONDS)
                # A worker hands over its early acknowledgements before its batch is answered: all of them are
                # queued by now for the batches in ``done``, so apply() sees which ones are journalled.
                state.note_early()
                for future in done:
                    work = in_flight.pop(future)
                    try:
                        outcome = future.result()
                    except _Cancelled:
                        state.result.counts(operation).not_sent += len(work.records)
                        continue
                    except (PlatformError, requests.RequestException) as exc:
                        state.result.counts(operation).not_sent += len(work.records)
                        state.stop(exc)
                        continue
                    state.apply(work, outcome, pending)
                if exactly:
                    state.flush_journal()  # written before the next batch goes out
                else:  # one journal write for every batch answered since the last one started
                    state.write_journal(4 * max_in_flight)
            if state.stopped:
                left = sum(len(w.records) for w in pending) + len(state.pending.pop(operation, []))
                state.result.counts(operation).not_sent += left
            else:
                state.finish(operation)
            state.flush_journal()
    if state.stop_error is not None:
        raise state.stop_error


def check_rejection_rate(result: DeliveryResult, max_rejected_pct: float = 10.0) -> None:
    """Raise RejectionRateExceeded when more than ``max_rejected_pct`` % of the records that got a
    verdict were rejected; the message gives the counts and the top reasons."""
    if result.rejected and result.rejected_pct > max_rejected_pct:
        reasons = "; ".join(f"{reason} ({n})" for reason, n in result.top_reasons())
        decided = result.accepted + result.rejected
        raise RejectionRateExceeded(
            f"destination '{result.destination}' ({result.platform}): {result.rejected} of {decided} "
            f"records ({result.rejected_pct:.1f}%) were rejected, above max_rejected_pct "
            f"{max_rejected_pct:g}; top reasons: {reasons}"
        )


# --------------------------------------------------------------------------------------------------
# Preview and validate --connect
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PreviewRequest:
    """A request a sync would send, with every identifier value masked."""

    operation: str
    method: str
    url: str
    params: Mapping[str, str] | None
    body: Any
    records: int


def mask_identifier(value: str) -> str:
    """A masked identifier for display: ``j***@e***``, ``+336***``, ``3f2a9c1e…`` for hashes."""
    if is_sha256_hex(value):
        return value[:8] + "…"
    if "@" in value:
        local, _, domain = value.partition("@")
        return f"{local[:1]}***@{domain[:1]}***"
    return value[:4] + "***" if len(value) > 6 else "***"


def _mask(value: Any, secrets: Mapping[str, str]) -> Any:
    if isinstance(value, str):
        return secrets.get(value, value)
    if isinstance(value, list):
        return [_mask(v, secrets) for v in value]
    if isinstance(value, dict):
        return {k: _mask(v, secrets) for k, v in value.items()}
    return value


def preview(
    platform: Platform, spec: ActivationSpec, changes: Changes, *, max_requests: int = 3
) -> list[PreviewRequest]:
    """The first ``max_requests`` requests a delivery would send (per operation), built from the
    given records without sending anything; identifier values are masked wherever they appear."""
    previews: list[PreviewRequest] = []
    limits = platform.effective_limits()
    for operation, arrow_batches in _normalize_changes(changes):
        platform.check_operation(operation)
        state = _Delivery(platform, spec, InMemoryJournal(), None, RetryPolicy())
        batches = batch_records(
            state.record_items(operation, arrow_batches),
            max_records=limits.max_records_per_batch,
            max_bytes=limits.max_bytes_per_batch,
            envelope_bytes=limits.envelope_bytes,
        )
        for n, batch in enumerate(batches):
            if n >= max_requests:
                break
            records = [r for r, _ in batch]
            request = platform.preview_request(operation, [p for _, p in batch], records)
            masks = {v: mask_identifier(v) for r in records for v in r.identifiers.values()}
            params = {k: masks.get(v, v) for k, v in (request.params or {}).items()} or None
            url = request.path if request.path.startswith("http") else platform.base_url + request.path
            previews.append(
                PreviewRequest(
                    operation, request.method, url, params, _mask(request.json, masks), len(records)
                )
            )
    return previews


def check_connection(platform: Platform, *, retry: RetryPolicy | None = None) -> None:
    """Check the credentials and the target with the platform's cheapest request; raise
    PlatformAuthError or PlatformRequestError."""
    with Transport(platform, retry=retry) as transport:
        platform.check_connection(transport)


def validate_connection(
    platform: Platform, spec: ActivationSpec, *, retry: RetryPolicy | None = None
) -> list[str]:
    """``validate --connect`` for one activation: the credentials and target, then (where the
    platform exposes a schema) that the match identifiers and mapped fields exist. Returns the
    problems, each naming its key (``mapping.ltv``); an unreachable platform is one problem."""
    problems = platform.validate_activation(spec.match, spec.mapping)
    try:
        with Transport(platform, retry=retry) as transport:
            platform.check_connection(transport)
            fields: Mapping[str, FieldInfo] | None = platform.discover_fields(transport)
    except (PlatformError, requests.RequestException) as exc:
        return [*problems, str(exc)]
    if fields is not None:
        problems.extend(platform.validate_fields(spec.match, spec.mapping, fields))
    return problems

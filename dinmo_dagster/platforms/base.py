"""The platform SDK's data model and the :class:`Platform` base class every adapter extends.

An adapter holds only what is specific to its platform: the settings model, the services and
operations it offers, its documented limits (as data), how to build a request for a batch of
records of one operation, and how to read the platform's answer back into per-record results. The
engine (``engine.py``) does the rest for every platform alike: mapping, identifier hashing, NULL
handling, batching, rate limiting, retries, journalling and metrics.

No Dagster import here: the sync layer drives the engine and reports its results to Dagster.
"""

from __future__ import annotations

import datetime as dt
import decimal
import difflib
import json
import math
import threading
import time
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, ClassVar, Literal, Protocol

import pydantic
from pydantic import ConfigDict, Field, SecretStr

from dinmo_dagster.platforms.errors import PlatformConfigError, PlatformRequestError, redact
from dinmo_dagster.platforms.identifiers import IdentifierSpec
from dinmo_dagster.platforms.ratelimit import RateLimiter

__all__ = [
    "ATTRIBUTE_OPERATIONS",
    "AUDIENCE_OPERATIONS",
    "EVENT_OPERATIONS",
    "BatchOutcome",
    "DeliveryResult",
    "FieldInfo",
    "HttpResponse",
    "JobHandle",
    "Journal",
    "Limits",
    "OperationCounts",
    "Platform",
    "PlatformSettings",
    "PreparedRequest",
    "QuotaExhausted",
    "RateLimitSetting",
    "Record",
    "RecordResult",
    "ResponseKind",
    "Signal",
    "json_default",
    "json_size",
    "parse_retry_after",
    "rate_limit_reset",
]

# DinMo's operations per service: what a sync asks a platform to do with a record.
ATTRIBUTE_OPERATIONS = ("upsert", "update", "insert", "delete")
AUDIENCE_OPERATIONS = ("add", "remove", "replace")
EVENT_OPERATIONS = ("track",)
# Operations that carry mapped fields; delete and remove send identifiers only.
FIELD_OPERATIONS = frozenset({"upsert", "update", "insert", "track", "add", "replace"})


# --------------------------------------------------------------------------------------------------
# Settings and limits
# --------------------------------------------------------------------------------------------------


class RateLimitSetting(pydantic.BaseModel):
    """A user's ``rate_limit``: ``{requests: 50, per_seconds: 10}``, or a number of requests per
    second. It can only lower the platform's documented limit."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    requests: float = Field(gt=0, description="Requests allowed per period.")
    per_seconds: float = Field(default=1.0, gt=0, description="Length of the period, in seconds.")

    @pydantic.model_validator(mode="before")
    @classmethod
    def _from_number(cls, value: Any) -> Any:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return {"requests": value, "per_seconds": 1.0}
        return value

    @property
    def per_second(self) -> float:
        """The limit as requests per second."""
        return self.requests / self.per_seconds


class Transport(Protocol):
    """What an adapter may do with the connection it is handed: send one prepared request and get the
    answer (retries, rate limiting and auth errors are the transport's business; see ``http.Transport``)."""

    def send(self, request: PreparedRequest) -> HttpResponse: ...


class PlatformSettings(pydantic.BaseModel):
    """Settings every API destination accepts; adapters subclass it with their own fields.

    Secrets are :class:`pydantic.SecretStr` fields holding plain values: the caller resolves the
    YAML's ``{env: VAR}`` before building the settings, and SecretStr keeps them out of ``repr``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    service: str = Field(description="The service this destination is used for (one per destination).")
    base_url: str | None = Field(
        default=None, description="Root URL of the API; default: the platform's production URL."
    )
    rate_limit: RateLimitSetting | None = Field(
        default=None, description="Lower the documented rate limit (requests per second, or a mapping)."
    )
    max_concurrency: int | None = Field(
        default=None, ge=1, description="Requests in flight at once; default: the platform's own value."
    )
    timeout_seconds: float = Field(default=60.0, gt=0, description="Timeout of one HTTP request.")

    @pydantic.field_validator("base_url")
    @classmethod
    def _check_base_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"found {value!r}; allowed: an http:// or https:// URL")
        return value.rstrip("/")

    def secret_values(self) -> list[str]:
        """The plain values of every secret field (to redact them from any text)."""
        return [
            value.get_secret_value()
            for name in type(self).model_fields
            if isinstance(value := getattr(self, name), SecretStr)
        ]


@dataclass(frozen=True)
class Limits:
    """A platform's documented limits, as data.

    ``requests_per_window`` is where the rate limiter starts; ``max_requests_per_window`` (when the
    platform has tiers) is the most it may follow when the platform's response headers announce a
    higher limit. ``max_bytes_per_batch`` counts the JSON of the records plus ``envelope_bytes``.
    """

    max_records_per_batch: int
    requests_per_window: int
    window_seconds: float
    max_concurrency: int = 4
    max_bytes_per_batch: int | None = None
    max_requests_per_window: int | None = None
    envelope_bytes: int = 512


# --------------------------------------------------------------------------------------------------
# Records, requests, responses, results
# --------------------------------------------------------------------------------------------------


@dataclass
class Record:
    """One record of one operation, ready for a platform.

    ``identifiers`` holds the destination's identifier names and their values, already normalized
    and hashed when the platform asks for hashes (the raw value is not kept). ``fields`` holds the
    mapped destination fields; ``None`` means "clear it" (``null_values: sync``); with
    ``null_values: skip`` a NULL field is absent.
    """

    key: str
    operation: str
    identifiers: dict[str, str]
    fields: dict[str, Any]


@dataclass(frozen=True)
class PreparedRequest:
    """An HTTP request an adapter wants sent. ``path`` is relative to the platform's base URL
    (or an absolute ``https://`` URL, for job links).

    ``call`` is for platforms reached through their own client library (gRPC) rather than HTTP:
    the transport runs it instead of an HTTP request, under the same rate limiter, retries and
    error handling, and it returns the answer as its HTTP equivalent (gRPC ``UNAVAILABLE`` as 503,
    ``PERMISSION_DENIED`` as 403...). ``method``, ``path`` and ``json`` then describe the call for
    logs and previews."""

    method: str
    path: str
    json: Any = None
    params: Mapping[str, str] | None = None
    headers: Mapping[str, str] | None = None
    call: Callable[[], HttpResponse] | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class HttpResponse:
    """A platform's answer: status, headers (keys lower-cased) and body."""

    status: int
    headers: Mapping[str, str]
    content: bytes

    def header(self, name: str) -> str | None:
        """A header's value by case-insensitive name."""
        return self.headers.get(name.lower())

    def json(self) -> Any:
        """The body parsed as JSON, or None when it is empty or not JSON."""
        if not self.content:
            return None
        try:
            return json.loads(self.content)
        except ValueError:
            return None

    @property
    def text(self) -> str:
        """The body as text (invalid UTF-8 replaced)."""
        return self.content.decode("utf-8", errors="replace")


class ResponseKind(Enum):
    """What a response means for the transport."""

    OK = "ok"  # hand it to the adapter (2xx, and 4xx the adapter maps to records)
    RATE_LIMITED = "rate_limited"  # wait (Retry-After or backoff) and send again
    TRANSIENT = "transient"  # server trouble: back off and send again
    AUTH = "auth"  # credentials or permissions refused: stop the sync at once
    QUOTA = "quota"  # a daily/hourly quota ran out: end the sync early, partially


@dataclass(frozen=True)
class Signal:
    """An adapter's reading of a response; ``retry_after`` in seconds when the platform said."""

    kind: ResponseKind
    retry_after: float | None = None
    message: str | None = None


RecordStatus = Literal["accepted", "rejected", "retry", "pending"]


@dataclass(frozen=True)
class RecordResult:
    """The platform's verdict on one record.

    ``reason`` is the platform's own message (kept with the rejected record in the warehouse);
    ``reason_code`` is a short label without record values (category, error code, field) used to
    group rejections in run metadata. ``retry`` means "send it again" (the platform was busy for
    this record only). ``pending`` means "sent, but the platform applies it only when the operation
    ends" (a replace session): its verdict comes from :meth:`Platform.finish_operation`.
    """

    key: str
    status: RecordStatus
    reason: str | None = None
    reason_code: str | None = None


@dataclass(frozen=True)
class JobHandle:
    """An asynchronous import the platform is still running (polled by :meth:`Platform.poll_job`)."""

    id: str
    data: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class BatchOutcome:
    """What became of one batch: per-record results, or a request to split the batch (the
    platform refused it whole for one bad record it did not name), or an async job to poll."""

    results: list[RecordResult] = field(default_factory=list)
    split: bool = False
    job: JobHandle | None = None

    @classmethod
    def accept_all(cls, records: Sequence[Record]) -> BatchOutcome:
        """Every record accepted."""
        return cls([RecordResult(r.key, "accepted") for r in records])

    @classmethod
    def reject_all(cls, records: Sequence[Record], reason: str, reason_code: str) -> BatchOutcome:
        """Every record rejected with the same reason."""
        return cls([RecordResult(r.key, "rejected", reason, reason_code) for r in records])


@dataclass(frozen=True)
class FieldInfo:
    """A field (property, attribute, column) a platform's schema exposes."""

    name: str
    label: str | None = None
    type: str | None = None
    unique: bool = False
    read_only: bool = False


class Journal(Protocol):
    """Where the engine records, batch by batch, what the platform acknowledged or rejected.

    The sync layer implements it on warehouse tables; a killed sync then re-sends only what was not
    acknowledged. Keys are the segment's primary keys as text. Calls come from one thread.

    A journal may also have a ``flush()`` method (not part of the protocol): then it may buffer what
    it is told, and the engine calls ``flush()`` after each round of answered batches (before sending
    more), at the end of each operation and before raising an error.
    """

    def already_acknowledged(self, operation: str, keys: Sequence[str]) -> Collection[str]:
        """Which of ``keys`` a previous attempt of this sync already delivered for ``operation``."""
        ...

    def acknowledged(self, operation: str, keys: Sequence[str]) -> None:
        """The platform accepted these records for ``operation``."""
        ...

    def rejected(self, key: str, operation: str, reason: str) -> None:
        """The platform (or the engine, before sending) rejected this record, for ``reason``."""
        ...


@dataclass(frozen=True)
class QuotaExhausted:
    """A daily or hourly quota ran out mid-sync: what was acknowledged counts, the rest of the
    records go with the next sync. Not a failure."""

    message: str


@dataclass
class OperationCounts:
    """Counts of one operation in one delivery."""

    records: int = 0  # records received for the operation
    accepted: int = 0
    rejected: int = 0
    already_acknowledged: int = 0  # skipped: a previous attempt of this sync delivered them
    not_sent: int = 0  # left for the next sync (quota ran out, or the platform kept saying "retry")


@dataclass
class DeliveryResult:
    """What one delivery did, with the metrics a sync reports as run metadata."""

    destination: str
    platform: str
    operations: dict[str, OperationCounts] = field(default_factory=dict)
    batches: int = 0
    requests: int = 0
    retries: int = 0
    rate_limit_wait_seconds: float = 0.0
    retry_wait_seconds: float = 0.0
    reasons: Counter[str] = field(default_factory=Counter)
    quota: QuotaExhausted | None = None

    def counts(self, operation: str) -> OperationCounts:
        """The counts of ``operation`` (created on first use)."""
        return self.operations.setdefault(operation, OperationCounts())

    @property
    def accepted(self) -> int:
        """Records accepted, over all operations."""
        return sum(c.accepted for c in self.operations.values())

    @property
    def rejected(self) -> int:
        """Records rejected, over all operations."""
        return sum(c.rejected for c in self.operations.values())

    @property
    def rejected_pct(self) -> float:
        """Rejected records as a percentage of the records that got a verdict."""
        decided = self.accepted + self.rejected
        return 100.0 * self.rejected / decided if decided else 0.0

    def top_reasons(self, n: int = 5) -> list[tuple[str, int]]:
        """The ``n`` most frequent rejection reasons (their codes) with their counts."""
        return self.reasons.most_common(n)

    def as_metadata(self) -> dict[str, Any]:
        """Plain values (numbers, text) for run metadata: no record values, no secrets."""
        meta: dict[str, Any] = {
            "platform": self.platform,
            "records_accepted": self.accepted,
            "records_rejected": self.rejected,
            "rejected_pct": round(self.rejected_pct, 2),
            "batches": self.batches,
            "requests": self.requests,
            "retries": self.retries,
            "rate_limit_wait_seconds": round(self.rate_limit_wait_seconds, 3),
            "retry_wait_seconds": round(self.retry_wait_seconds, 3),
            "quota_exhausted": self.quota is not None,
        }
        for operation, c in self.operations.items():
            meta[f"records_{operation}"] = c.records
            meta[f"accepted_{operation}"] = c.accepted
            meta[f"rejected_{operation}"] = c.rejected
            if c.already_acknowledged:
                meta[f"already_acknowledged_{operation}"] = c.already_acknowledged
            if c.not_sent:
                meta[f"not_sent_{operation}"] = c.not_sent
        if self.reasons:
            meta["top_rejection_reasons"] = "; ".join(f"{r} ({n})" for r, n in self.top_reasons())
        if self.quota is not None:
            meta["quota_message"] = self.quota.message
        return meta


# --------------------------------------------------------------------------------------------------
# The Platform base class
# --------------------------------------------------------------------------------------------------


_batch_progress = threading.local()
"""Per worker thread: ``report(keys)``, set by the delivery engine while the thread runs a batch
(:meth:`Platform.acknowledge_early`)."""


class Platform(ABC):
    """Base class of platform adapters.

    Class attributes an adapter sets: ``name`` (the destination ``type``), ``settings_model``,
    ``services`` (service -> operations it supports), ``default_base_url`` and ``limits`` (a
    :class:`Limits`). Methods it implements: :meth:`record_input`, :meth:`build_request`,
    :meth:`parse_response`; it may override :meth:`deliver_batch` (several requests per batch),
    :meth:`poll_job` (async imports), :meth:`finish_operation` (operations the platform applies only
    at their end), :meth:`classify` and :meth:`observe` (its error codes and
    rate-limit headers), :meth:`identifier_spec`, :meth:`clears_fields_on`, :meth:`check_connection` and
    :meth:`discover_fields` (for ``validate --connect``).
    """

    name: ClassVar[str] = ""
    settings_model: ClassVar[type[PlatformSettings]] = PlatformSettings
    services: ClassVar[Mapping[str, tuple[str, ...]]] = {}
    default_base_url: ClassVar[str] = ""
    limits: ClassVar[Limits]
    # Seconds between two polls of an asynchronous job.
    poll_interval_seconds: ClassVar[float] = 5.0

    def __init__(self, settings: PlatformSettings, *, destination: str = "") -> None:
        if not isinstance(settings, self.settings_model):
            raise TypeError(f"{type(self).__name__} needs {self.settings_model.__name__} settings")
        self.settings = settings
        self.destination = destination or self.name
        if settings.service not in self.services:
            raise self.config_error(
                f"service: found {settings.service!r}; allowed: {', '.join(sorted(self.services))}"
            )

    # -- naming and messages ----------------------------------------------------------------------

    @property
    def label(self) -> str:
        """How messages name this destination: ``destination 'crm' (hubspot)``."""
        return f"destination '{self.destination}' ({self.name})"

    def config_error(self, text: str) -> PlatformConfigError:
        """A configuration error naming the destination."""
        return PlatformConfigError(f"{self.label}: {text}")

    def redact(self, text: str) -> str:
        """``text`` with this destination's secrets masked (for anything quoted from a response)."""
        return redact(text, [*self.settings.secret_values(), *self.runtime_secrets()])

    def runtime_secrets(self) -> list[str]:
        """Secrets obtained while running (an OAuth access token), masked like the settings' ones."""
        return []

    # -- settings-derived properties ---------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """The API root: the ``base_url`` setting, or the platform's production URL."""
        return self.settings.base_url or self.default_base_url

    @property
    def operations(self) -> tuple[str, ...]:
        """The operations the configured service supports."""
        return self.services[self.settings.service]

    def effective_limits(self) -> Limits:
        """The documented limits, lowered by the ``rate_limit`` and ``max_concurrency`` settings.

        A ``rate_limit`` below the documented one replaces it, in its own period (``{requests: 2,
        per_seconds: 0.5}`` never lets 3 requests start within half a second).
        """
        limits = self.limits
        count, window = limits.requests_per_window, limits.window_seconds
        cap_rate = (limits.max_requests_per_window or count) / window
        user = self.settings.rate_limit
        if user is not None and user.per_second < count / window:
            # A fractional rate (0.5 per second) becomes 1 request per longer period.
            count = max(1, math.floor(user.requests))
            window = user.per_seconds * count / user.requests
        if user is not None:
            cap_rate = min(cap_rate, user.per_second)
        concurrency = limits.max_concurrency
        if self.settings.max_concurrency is not None:
            concurrency = min(concurrency, self.settings.max_concurrency)
        return Limits(
            max_records_per_batch=limits.max_records_per_batch,
            max_bytes_per_batch=limits.max_bytes_per_batch,
            requests_per_window=count,
            max_requests_per_window=max(count, math.floor(cap_rate * window + 1e-9)),
            window_seconds=window,
            max_concurrency=concurrency,
            envelope_bytes=limits.envelope_bytes,
        )

    def check_operation(self, operation: str) -> None:
        """Raise PlatformConfigError when the configured service does not offer ``operation``."""
        if operation not in self.operations:
            raise self.config_error(
                f"service {self.settings.service!r} does not support operation {operation!r}; "
                f"allowed: {', '.join(self.operations)}"
            )

    # -- identifiers and activation checks ---------------------------------------------------------

    def identifier_spec(self, name: str) -> IdentifierSpec | None:
        """How the platform wants identifier ``name``; None when it has no such identifier."""
        return None

    def clears_fields_on(self, operation: str) -> bool:
        """True when ``operation`` (a removal, which carries no values) clears the mapped fields: its
        records then hold every mapped field set to None. Default: False."""
        return False

    def validate_activation(self, match: Mapping[str, str], mapping: Mapping[str, str]) -> list[str]:
        """Problems of an activation's ``match`` and ``mapping`` for this platform (no network).

        Each problem names the key (``match.email``), what was found and what is allowed.
        """
        problems = []
        if not match:
            problems.append("match: found nothing; allowed: at least one {identifier: column}")
        for name in match:
            if self.identifier_spec(name) is None:
                problems.append(f"match.{name}: {self.name} has no identifier {name!r}")
        return problems

    def operation_problems(self, operations: Collection[str], match: Mapping[str, str]) -> list[str]:
        """Why this destination, as its settings make it, cannot run ``operations`` (those an activation's
        ``sync_mode`` sends, all offered by :attr:`operations`) for records named by ``match`` (no network).

        ``dinmo validate`` reports each problem under the activation's ``sync_mode`` (after ``found
        'mirror';``), so that a rule an adapter would otherwise meet only when it sends (Zendesk deletes users
        by external id only) fails the project before any sync. Each says what stands in the way and what is
        allowed. Default: none.
        """
        return []

    # -- requests -------------------------------------------------------------------------------------

    def auth_headers(self) -> dict[str, str]:
        """Headers that authenticate a request (added by the transport, never logged)."""
        return {}

    def renew_auth(self, response: HttpResponse, sent: Mapping[str, str]) -> bool:
        """After an auth refusal of a request sent with the auth headers ``sent``: renew the
        credentials (an expired OAuth access token, see ``oauth.py``) and return True to have the
        transport send the request once more. Default: False (the refusal stops the sync)."""
        return False

    @abstractmethod
    def record_input(self, operation: str, record: Record) -> Any:
        """The JSON-ready piece of a request body for one record (also used to size batches)."""

    @abstractmethod
    def build_request(
        self, operation: str, inputs: Sequence[Any], records: Sequence[Record]
    ) -> PreparedRequest:
        """The request that sends ``records`` (whose :meth:`record_input` are ``inputs``)."""

    @abstractmethod
    def parse_response(
        self, operation: str, records: Sequence[Record], response: HttpResponse
    ) -> BatchOutcome:
        """Per-record results from the platform's answer to :meth:`build_request`'s request."""

    def deliver_batch(
        self, operation: str, records: Sequence[Record], inputs: Sequence[Any], transport: Transport
    ) -> BatchOutcome:
        """Send one batch and read the answer. Override for operations that need several requests."""
        response = transport.send(self.build_request(operation, inputs, records))
        return self.parse_response(operation, records, response)

    def acknowledge_early(self, results: Iterable[RecordResult]) -> None:
        """Hand the engine the verdicts a :meth:`deliver_batch` still running already got (a batch sent as
        one request per record, or a bulk call followed by per-record calls): the accepted records are
        journalled within ``JOURNAL_INTERVAL_SECONDS``, not when the whole batch is answered, so a sync
        killed while the batch runs does not send them again. The batch's outcome must still give every
        record's verdict (they are counted there, and not journalled twice). Outside a delivery (a
        preview, a test calling :meth:`deliver_batch` itself) it does nothing."""
        report: Callable[[list[str]], None] | None = getattr(_batch_progress, "report", None)
        if report is not None:
            keys = [r.key for r in results if r.status == "accepted"]
            if keys:
                report(keys)

    def deduplicates(self, operation: str) -> bool:
        """Whether a batch of ``operation`` sent twice leaves the platform as if it were sent once (upserts
        by a match identifier, membership adds and removes, events with a de-duplication id). Default
        True. An adapter returns False for an operation the platform counts twice (Braze's track events):
        the engine then sends its batches one at a time and journals each before the next, so a killed
        sync re-sends at most the one batch that was in flight."""
        return True

    def finish_operation(self, operation: str, pending: Sequence[str], transport: Transport) -> BatchOutcome:
        """Complete ``operation`` once all its batches were answered (commit a replace session), and
        give the verdicts of the records its batches left ``pending`` (keys in ``pending``). Not
        called when the delivery stopped early: pending records then stay unacknowledged. Default:
        nothing to complete."""
        return BatchOutcome()

    def preview_request(
        self, operation: str, inputs: Sequence[Any], records: Sequence[Record]
    ) -> PreparedRequest:
        """The first request :meth:`deliver_batch` would send (for ``dinmo preview``)."""
        return self.build_request(operation, inputs, records)

    def poll_job(
        self, operation: str, records: Sequence[Record], job: JobHandle, transport: Transport
    ) -> BatchOutcome:
        """Ask how an asynchronous job is doing; return results, or ``job`` set while it runs."""
        raise NotImplementedError(f"{self.name} does not run asynchronous jobs")

    # -- reading responses ------------------------------------------------------------------------------

    def classify(self, response: HttpResponse) -> Signal:
        """What a response means: the generic HTTP reading; adapters add their error codes."""
        status = response.status
        retry_after = parse_retry_after(response.header("Retry-After"))
        if status in (401, 403):
            return Signal(ResponseKind.AUTH, message=self.error_message(response))
        if status == 429:
            retry_after = retry_after if retry_after is not None else rate_limit_reset(response)[1]
            return Signal(ResponseKind.RATE_LIMITED, retry_after, self.error_message(response))
        if status == 408 or 500 <= status <= 599:
            return Signal(ResponseKind.TRANSIENT, retry_after, self.error_message(response))
        return Signal(ResponseKind.OK)

    def observe(self, response: HttpResponse, limiter: RateLimiter) -> str | None:
        """Read the platform's own rate-limit headers into ``limiter``. Return a message when they
        say a quota is used up, so the transport sends nothing more (the current response still
        counts). The common ``X-RateLimit-Remaining`` / ``-Reset`` pair is read by the transport for
        every platform; adapters override this for headers of their own."""
        return None

    def error_message(self, response: HttpResponse) -> str:
        """The platform's own message in an error response (secrets masked)."""
        body = response.json()
        if isinstance(body, dict):
            for key in ("message", "error_description", "error", "detail", "title"):
                value = body.get(key)
                if isinstance(value, str) and value:
                    return self.redact(value)
        return self.redact(response.text) if response.content else f"HTTP {response.status}"

    def request_error(self, response: HttpResponse, what: str) -> PlatformRequestError:
        """A PlatformRequestError for an answer no retry can fix."""
        return PlatformRequestError(
            f"{self.label}: {what} failed with HTTP {response.status}: {self.error_message(response)}"
        )

    # -- validate --connect ---------------------------------------------------------------------------

    def check_connection(self, transport: Transport) -> None:
        """Check the credentials and the target (object, list...) with one cheap request; raise
        PlatformAuthError / PlatformRequestError. The default checks nothing."""

    def discover_fields(self, transport: Transport) -> Mapping[str, FieldInfo] | None:
        """The fields the target exposes, or None when the platform has no schema to read."""
        return None

    def target_label(self) -> str:
        """How messages name what records land in (``HubSpot contacts``); default: the platform."""
        return self.name

    def validate_fields(
        self, match: Mapping[str, str], mapping: Mapping[str, str], fields: Mapping[str, FieldInfo]
    ) -> list[str]:
        """Problems of mapped fields against the discovered schema (override for identifiers)."""
        problems = []
        for column, target in mapping.items():
            info = fields.get(target)
            if info is None:
                close = difflib.get_close_matches(str(target), list(fields), n=3)
                hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
                problems.append(f"mapping.{column}: no field {target!r} in {self.target_label()}{hint}")
            elif info.read_only:
                problems.append(f"mapping.{column}: field {target!r} of {self.target_label()} is read-only")
        return problems


def json_default(value: Any) -> Any:
    """JSON encoding of warehouse values: exact decimals as text, ISO 8601 dates and times."""
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, bytes):
        return value.hex()
    raise TypeError(f"cannot encode {type(value).__name__} as JSON")


def unix_seconds(value: Any) -> int | None:
    """Unix seconds of a timestamp (naive ones are UTC), date, number or ISO 8601 text: the event time of the
    ad platforms' conversion APIs (Meta, Pinterest, TikTok). None for anything else."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, (int, float, decimal.Decimal)):
        number = float(value)
        return int(number) if math.isfinite(number) else None
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            return None
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.timezone.utc)
        return int(value.timestamp())
    if isinstance(value, dt.date):
        return int(dt.datetime(value.year, value.month, value.day, tzinfo=dt.timezone.utc).timestamp())
    return None


def json_size(value: Any) -> int:
    """Bytes of ``value`` as compact UTF-8 JSON (how batches are sized)."""
    return len(json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=json_default).encode())


def rate_limit_reset(response: HttpResponse) -> tuple[int | None, float | None]:
    """``X-RateLimit-Remaining`` and the seconds until ``X-RateLimit-Reset`` (given as a Unix time,
    as Braze and GitHub do, or as seconds from now); None where a header is absent or unreadable."""
    try:
        remaining = int(float(response.header("X-RateLimit-Remaining") or "nan"))
    except ValueError:
        remaining = None
    try:
        reset = float(response.header("X-RateLimit-Reset") or "nan")
    except ValueError:
        reset = math.nan
    if math.isnan(reset):
        return remaining, None
    # Above a billion it is a Unix time (2001 onwards), below it a number of seconds to wait.
    delay = reset - time.time() if reset > 1e9 else reset
    return remaining, max(0.0, delay)


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date); None when absent."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    from datetime import datetime, timezone
    from email.utils import parsedate_to_datetime

    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())

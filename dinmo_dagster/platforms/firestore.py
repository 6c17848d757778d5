"""Firestore: the ``attributes`` service (a document per record) and ``audiences`` (membership
documents), through Google's ``google-cloud-firestore`` client over gRPC.

Services and operations (``{c}`` is the ``collection`` setting, ``{id}`` the record's document id:
its key, or the column named by ``match: {document_id: column}``):

- ``attributes``: one document ``{c}/{id}`` per record.

  - ``upsert``: sets the mapped fields, merged into the document (Firestore's ``set(..., merge)``:
    an ``update`` write whose ``updateMask`` lists the mapped fields). Creates the document when
    it is missing; fields that are not mapped are left as they are.
  - ``update``: the same write with the precondition ``exists: true``: a document Firestore does
    not hold answers ``NOT_FOUND`` and is left alone (counted as done, as ``update`` promises).
  - ``insert``: creates the document with the mapped fields (precondition ``exists: false``); a
    document that already exists answers ``ALREADY_EXISTS`` and is left alone (counted as done).
  - ``delete`` (the removals of ``sync_mode: mirror``): deletes the document (deleting a missing
    document is not an error in Firestore).

- ``audiences``: one membership document ``{c}/{audience}/{members_collection}/{id}`` per member,
  holding the mapped fields (none is fine: the document's existence is the membership). This is
  how Firestore data is usually modelled when apps ask "who is in audience A" (list or count the
  subcollection, secure it per audience in security rules) without touching the records' own
  documents, which the app usually owns; a field on the record's document would make the sync
  rewrite documents it does not own and race the app's own writes.

  - ``add``: sets the member document (mapped fields merged, as ``upsert``);
  - ``remove``: deletes it;
  - ``replace`` (a full sync): sets every member document, then, once every batch was answered,
    lists the audience's members and deletes those the sync did not send (the members that left
    the segment, or that were added by hand). A record whose member document cannot be written
    keeps its old membership until the next sync. Only document ids are kept in memory meanwhile
    (about 100 bytes each).

  After each operation the audience document ``{c}/{audience}`` gets ``synced_at`` (the server's
  time), so the audience exists as a document that apps can list.

Values (Firestore's types): integers (64-bit; larger ones reject the record), floats (NaN and
infinities included), text, booleans, bytes, timestamps (Arrow timestamps; a timestamp without a
time zone is taken as UTC; Firestore keeps microseconds), NULL as Firestore's null (with
``null_values: skip`` a NULL field is left out of the write, so the document keeps its value),
lists as arrays (Firestore arrays cannot hold arrays: such a record is rejected), structs and maps
as maps (an empty Arrow map reaches the adapter as an empty list, and is stored as an empty array). Firestore has no decimal or date type: decimals go as doubles by default (Firestore's
number type, so they compare and sort with the other numbers; beyond about 15 significant digits a
DECIMAL loses precision), or as exact text with ``decimals: string``; dates and times of day go as
ISO 8601 text (``2025-01-31``, ``09:30:00``: a timestamp at midnight UTC would show as the previous
day west of Greenwich); intervals as doubles (seconds). A mapped field name with dots (``address.city``)
is a field path: it writes ``city`` inside the map ``address`` and leaves the map's other fields.

Writes go in Firestore's ``BatchWrite`` requests (the RPC the client's BulkWriter uses): writes are
applied independently and each gets its own status, mapped to per-record results; a status that
says "try again" (``ABORTED``, ``UNAVAILABLE``...) re-sends that record. A request Firestore
refuses whole (``INVALID_ARGUMENT``, such as a value over the 1 MiB field limit) is split in
halves by the engine until the bad record is alone and rejected with Firestore's message. Document
ids are checked before sending (Firestore refuses the whole request for one bad id): an id that is
empty, over 1,500 bytes, contains ``/``, is ``.`` or ``..``, or matches ``__.*__`` rejects its
record with the reason, never the value.

Limits: at most 500 writes per request (the documented limit of a batched write for years; the
March 2023 release notes lifted it for ``Commit`` and nothing documents one for ``BatchWrite``, so
500 is kept as the safe size) and 10 MiB per request (the documented maximum API request size;
batches are sized on the writes' JSON, larger than their protobuf). Rate: Firestore documents no
request quota but asks to ramp traffic up (the "500/50/5" rule: at most 500 operations per second
to start with, then 50% more every 5 minutes): a sync starts at 500 writes per second (4 requests
of 500 per 4 s) and follows the ramp up to 10,000 writes per second (the per-database write rate
Firestore's limits page documented until it dropped the figure; assumed still a sensible ceiling),
or the lower ``rate_limit`` setting. 4 requests in flight at most.

Errors: gRPC's transient codes (``UNAVAILABLE``, ``DEADLINE_EXCEEDED``, ``ABORTED``, ``INTERNAL``,
``UNKNOWN``, ``CANCELLED``) are retried with the SDK's backoff; ``RESOURCE_EXHAUSTED`` (overload, the
ramp-up limit, or a spent free-tier quota: Firestore's message does not tell them apart) is waited
out as a rate limit, bounded by the retry policy, except gRPC's "message exceeds maximum size"
(the emulator takes 4 MiB at most, Firestore 10 MiB), which splits the request in halves; ``PERMISSION_DENIED`` and ``UNAUTHENTICATED``
stop the sync at once with Firestore's message; ``NOT_FOUND`` for the request (no such database)
and other refusals fail it with the message. The SDK's transport runs each call as it runs an HTTP
request (rate limiter, retries, messages), given as its HTTP equivalent (Google's mapping of gRPC
codes: ``UNAVAILABLE`` 503, ``RESOURCE_EXHAUSTED`` 429, ``PERMISSION_DENIED`` 403...).

Authentication: ``service_account_json`` (a service account key's JSON, from ``{env: VAR}``), or
Google's Application Default Credentials when it is absent (``GOOGLE_APPLICATION_CREDENTIALS``,
``gcloud auth application-default login``, or the attached service account on Google Cloud). The
account needs the role ``roles/datastore.user`` (Cloud Datastore User) on the project. Credentials
are exchanged for a token before the first call, so a refused key fails the sync at once (``401``)
instead of surfacing later as a retried ``UNAVAILABLE``. The key's private parts are masked in
every message.

Endpoint: ``base_url`` ``https://host[:port]`` sends the calls to another endpoint (a regional or
Private Service Connect endpoint); ``http://host:port`` is the Firestore emulator (plain-text gRPC,
no credentials, as Google's clients do with ``FIRESTORE_EMULATOR_HOST``, which is honoured when
``base_url`` is not set).

Client: ``google.cloud.firestore_v1.services.firestore.FirestoreClient``, the generated client of
``google-cloud-firestore`` that its ``Client`` is built on, called without its own retries (the
SDK retries). Not ``BulkWriter``: it retries and throttles by itself, which would double the SDK's
retries and hide per-batch results. Not ``WriteBatch``: it commits atomically, so one missing
document would fail every ``update`` of its batch. The write requests are built here as
Firestore's REST representation (the JSON ``dinmo preview`` shows), then sent as their protobuf.

Firestore's documentation this adapter follows:

- BatchWrite (independent writes, per-write ``status``, one write per document per request):
  https://cloud.google.com/firestore/docs/reference/rest/v1/projects.databases.documents/batchWrite
- Write, update mask, preconditions, field transforms:
  https://cloud.google.com/firestore/docs/reference/rest/v1/Write
- values and types: https://cloud.google.com/firestore/docs/reference/rest/v1/Value ,
  https://firebase.google.com/docs/firestore/manage-data/data-types
- field names and field paths (backtick quoting, reserved ``__.*__``):
  https://cloud.google.com/python/docs/reference/firestore/latest/google.cloud.firestore_v1.types.Document
- limits (document ids, 1 MiB documents, 10 MiB requests):
  https://cloud.google.com/firestore/quotas
- 500 writes per batched write, and its removal for Commit:
  https://firebase.google.com/docs/firestore/manage-data/transactions#batched-writes ,
  https://cloud.google.com/firestore/docs/release-notes#March_29_2023
- ramping up traffic (500/50/5): https://cloud.google.com/firestore/docs/best-practices#ramping_up_traffic
- error codes and what to retry: https://cloud.google.com/firestore/docs/understand-error-codes
- gRPC codes and their HTTP equivalents: https://github.com/googleapis/googleapis/blob/master/google/rpc/code.proto
- database ids: https://cloud.google.com/firestore/docs/reference/rest/v1/projects.databases/create
- listing documents (member sweep, ``validate --connect``):
  https://cloud.google.com/firestore/docs/reference/rest/v1/projects.databases.documents/list
- roles: https://cloud.google.com/firestore/docs/security/iam
- the emulator: https://cloud.google.com/firestore/docs/emulator
- the Python client: https://cloud.google.com/python/docs/reference/firestore/latest/google.cloud.firestore_v1.services.firestore.FirestoreClient
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import functools
import json
import logging
import math
import os
import re
import threading
import time
import urllib.parse
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import pydantic
from pydantic import Field, SecretStr

from dinmo_dagster.platforms import register_platform
from dinmo_dagster.platforms.base import (
    BatchOutcome,
    HttpResponse,
    Limits,
    Platform,
    PlatformSettings,
    PreparedRequest,
    Record,
    RecordResult,
    ResponseKind,
    Signal,
)
from dinmo_dagster.platforms.engine import mask_identifier
from dinmo_dagster.platforms.errors import PlatformRequestError
from dinmo_dagster.platforms.identifiers import IdentifierSpec

if TYPE_CHECKING:
    from dinmo_dagster.platforms.http import Transport
    from dinmo_dagster.platforms.ratelimit import RateLimiter

__all__ = [
    "Firestore",
    "FirestoreSettings",
    "field_path_problem",
    "firestore_value",
    "id_problem",
    "ramp_up_rate",
]

logger = logging.getLogger("dinmo_dagster.platforms")

DEFAULT_DATABASE = "(default)"
EMULATOR_ENV_VAR = "FIRESTORE_EMULATOR_HOST"
# The match identifier that names a record's document; without it the document id is the key.
DOCUMENT_ID = "document_id"
SCOPES = ("https://www.googleapis.com/auth/cloud-platform", "https://www.googleapis.com/auth/datastore")
MAX_WRITES_PER_REQUEST = 500
MAX_REQUEST_BYTES = 10 * 1024 * 1024
MAX_ID_BYTES = 1500
# The 500/50/5 rule: 500 writes per second, then 50% more every 5 minutes, up to the database's rate.
RAMP_START_WRITES_PER_SECOND = 500.0
RAMP_FACTOR = 1.5
RAMP_PHASE_SECONDS = 300.0
MAX_WRITES_PER_SECOND = 10_000.0
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
# Members listed per ListDocuments page during a replace's sweep.
_SWEEP_PAGE_SIZE = 1000

_RESERVED = re.compile(r"__.*__", re.DOTALL)
_SIMPLE_FIELD = re.compile(r"[a-zA-Z_][a-zA-Z_0-9]*")
_PROJECT = re.compile(r"(?:[a-z0-9.-]+:)?[a-z][a-z0-9-]{4,28}[a-z0-9]")
_DATABASE = re.compile(r"[a-z][a-z0-9-]{2,61}[a-z0-9]")
_UUID_LIKE = re.compile(r"[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}")
# gRPC codes by number (google.rpc.Code), and how the adapter reads them.
_CODE_NAMES = {
    0: "OK",
    1: "CANCELLED",
    2: "UNKNOWN",
    3: "INVALID_ARGUMENT",
    4: "DEADLINE_EXCEEDED",
    5: "NOT_FOUND",
    6: "ALREADY_EXISTS",
    7: "PERMISSION_DENIED",
    8: "RESOURCE_EXHAUSTED",
    9: "FAILED_PRECONDITION",
    10: "ABORTED",
    11: "OUT_OF_RANGE",
    12: "UNIMPLEMENTED",
    13: "INTERNAL",
    14: "UNAVAILABLE",
    15: "DATA_LOSS",
    16: "UNAUTHENTICATED",
}
# gRPC's RESOURCE_EXHAUSTED for a message over the server's size limit: a smaller request fits.
_TOO_LARGE = re.compile(r"message (?:exceeds|larger than) max", re.IGNORECASE)
_TRANSIENT = frozenset({"CANCELLED", "UNKNOWN", "DEADLINE_EXCEEDED", "ABORTED", "INTERNAL", "UNAVAILABLE"})
_AUTH = frozenset({"PERMISSION_DENIED", "UNAUTHENTICATED"})


# --------------------------------------------------------------------------------------------------
# Names and values
# --------------------------------------------------------------------------------------------------


def id_problem(value: str) -> str | None:
    """Why ``value`` cannot be a Firestore document or collection id (None when it can); the
    reason never quotes the value."""
    if not value:
        return "is empty"
    if len(value.encode("utf-8", errors="surrogatepass")) > MAX_ID_BYTES:
        return f"is longer than {MAX_ID_BYTES:,} bytes"
    if "/" in value:
        return "contains '/'"
    if value in (".", ".."):
        return "is '.' or '..'"
    if _RESERVED.fullmatch(value):
        return "matches __.*__ (reserved by Firestore)"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "is not valid UTF-8"
    return None


def field_path_problem(path: str) -> str | None:
    """Why ``path`` (``name`` or ``map.name``) cannot be a mapped Firestore field (None when it can)."""
    if len(path.encode("utf-8", errors="surrogatepass")) > MAX_ID_BYTES:
        return f"a field path is at most {MAX_ID_BYTES:,} bytes"
    for segment in path.split("."):
        if not segment:
            return "field names separated by single dots, none empty"
        if _RESERVED.fullmatch(segment):
            return f"a field name other than {segment!r} (names matching __.*__ are reserved by Firestore)"
    return None


def _quote_segment(segment: str) -> str:
    """One field name as a field path segment: as is when simple, else in backticks."""
    if _SIMPLE_FIELD.fullmatch(segment):
        return segment
    return "`" + segment.replace("\\", "\\\\").replace("`", "\\`") + "`"


class _ValueProblem(ValueError):
    """A value Firestore cannot hold; the message names the field, never the value."""


class _KeyProblem(Exception):
    """The service account key cannot sign requests (malformed private key)."""


def _timestamp(value: dt.datetime) -> str:
    if value.tzinfo is not None:
        value = value.astimezone(dt.timezone.utc)
    return (
        f"{value.year:04d}-{value.month:02d}-{value.day:02d}T{value.hour:02d}:{value.minute:02d}:"
        f"{value.second:02d}.{value.microsecond:06d}Z"
    )


def _double(value: float) -> dict[str, Any]:
    if math.isnan(value):
        return {"doubleValue": "NaN"}  # proto3 JSON spells non-finite doubles as text
    if math.isinf(value):
        return {"doubleValue": "Infinity" if value > 0 else "-Infinity"}
    return {"doubleValue": value}


def firestore_value(
    value: Any, *, decimals: str = "double", path: str = "?", in_array: bool = False
) -> dict:
    """A warehouse value as Firestore's ``Value`` in its REST (proto3 JSON) form.

    Raise ``ValueError`` naming ``path`` (never the value) for what Firestore cannot hold: an
    integer outside 64 bits, an array inside an array.
    """
    if value is None:
        return {"nullValue": None}
    if isinstance(value, bool):
        return {"booleanValue": value}
    if isinstance(value, int):
        if not _INT64_MIN <= value <= _INT64_MAX:
            raise _ValueProblem(f"field {path}: integer outside Firestore's 64-bit range")
        return {"integerValue": str(value)}
    if isinstance(value, float):
        return _double(value)
    if isinstance(value, decimal.Decimal):
        if decimals == "string":
            return {"stringValue": str(value) if not value.is_finite() else format(value, "f")}
        number = float(value)
        if math.isinf(number) and value.is_finite():
            raise _ValueProblem(f"field {path}: decimal outside the range of a double")
        return _double(number)
    if isinstance(value, str):
        return {"stringValue": value}
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"bytesValue": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, dt.datetime):  # before date: a datetime is a date
        return {"timestampValue": _timestamp(value)}
    if isinstance(value, (dt.date, dt.time)):
        return {"stringValue": value.isoformat()}
    if isinstance(value, dt.timedelta):
        return _double(value.total_seconds())
    if isinstance(value, dict):
        return {"mapValue": {"fields": _map_fields(value.items(), decimals, path)}}
    if isinstance(value, (list, tuple)):
        # Arrow map columns arrive as lists of (key, value) pairs.
        if value and all(isinstance(item, tuple) and len(item) == 2 for item in value):
            return {"mapValue": {"fields": _map_fields(value, decimals, path)}}
        if in_array:
            raise _ValueProblem(
                f"field {path}: an array inside an array (Firestore arrays cannot hold arrays)"
            )
        return {
            "arrayValue": {
                "values": [firestore_value(v, decimals=decimals, path=path, in_array=True) for v in value]
            }
        }
    raise _ValueProblem(f"field {path}: Firestore has no type for {type(value).__name__} values")


def _map_fields(items: Any, decimals: str, path: str) -> dict[str, Any]:
    return {str(k): firestore_value(v, decimals=decimals, path=f"{path}.{k}") for k, v in items}


def ramp_up_rate(elapsed_seconds: float) -> float:
    """Writes per second the 500/50/5 rule allows ``elapsed_seconds`` into a sync (capped at the
    database's 10,000)."""
    phases = min(int(max(0.0, elapsed_seconds) // RAMP_PHASE_SECONDS), 64)
    return min(MAX_WRITES_PER_SECOND, RAMP_START_WRITES_PER_SECOND * RAMP_FACTOR**phases)


# --------------------------------------------------------------------------------------------------
# Settings
# --------------------------------------------------------------------------------------------------


class FirestoreSettings(PlatformSettings):
    """Settings of a ``type: firestore`` destination."""

    service: Literal["attributes", "audiences"] = Field(
        description="attributes (a document per record) or audiences (membership documents)."
    )
    project: str = Field(description="The Google Cloud project that holds the Firestore database.")
    database: str = Field(default=DEFAULT_DATABASE, description="The database id; default (default).")
    collection: str = Field(
        description="Collection path of the records' documents (attributes) or of the audiences' documents."
    )
    audience: str | None = Field(
        default=None, description="audiences: the audience's document id (the activation's audience name)."
    )
    members_collection: str = Field(
        default="members", description="audiences: the subcollection of member documents."
    )
    service_account_json: SecretStr | None = Field(
        default=None,
        description="A service account key's JSON (from {env: VAR}); secret. Default: Application Default "
        "Credentials.",
    )
    decimals: Literal["double", "string"] = Field(
        default="double", description="How decimals are stored: double (a number) or string (exact text)."
    )

    @pydantic.field_validator("project")
    @classmethod
    def _check_project(cls, value: str) -> str:
        if _PROJECT.fullmatch(value):
            return value
        raise ValueError(
            f"found {value!r}; allowed: a Google Cloud project id (6 to 30 lower-case letters, digits and "
            "hyphens, starting with a letter)"
        )

    @pydantic.field_validator("database")
    @classmethod
    def _check_database(cls, value: str) -> str:
        if value == DEFAULT_DATABASE or (_DATABASE.fullmatch(value) and not _UUID_LIKE.fullmatch(value)):
            return value
        raise ValueError(
            f"found {value!r}; allowed: (default), or a database id of 4 to 63 lower-case letters, digits "
            "and hyphens starting with a letter and ending with a letter or digit"
        )

    @pydantic.field_validator("collection")
    @classmethod
    def _check_collection(cls, value: str) -> str:
        segments = value.split("/")
        for segment in segments:
            problem = id_problem(segment)
            if problem is not None:
                raise ValueError(
                    f"found {value!r}: a path segment {problem}; allowed: a collection id, or a path "
                    "collection/document/collection..."
                )
        if len(segments) % 2 == 0:
            raise ValueError(
                f"found {value!r}, a document path; allowed: a collection id, or a path "
                "collection/document/collection... (an odd number of segments)"
            )
        return value

    @pydantic.field_validator("audience", "members_collection")
    @classmethod
    def _check_id(cls, value: str | None) -> str | None:
        problem = None if value is None else id_problem(value)
        if problem is not None:
            raise ValueError(f"found {value!r}, which {problem}; allowed: a Firestore document id")
        return value

    @pydantic.field_validator("base_url")
    @classmethod
    def _check_endpoint(cls, value: str | None) -> str | None:
        if value is not None:
            parts = urllib.parse.urlsplit(value)
            if not parts.netloc or parts.path not in ("", "/") or parts.query:
                raise ValueError(
                    f"found {value!r}; allowed: https://host[:port] (an endpoint) or http://host:port "
                    "(the Firestore emulator), without a path"
                )
        return value

    @pydantic.field_validator("service_account_json")
    @classmethod
    def _check_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        try:
            info = json.loads(value.get_secret_value())
        except ValueError:
            raise ValueError(
                "found text that is not JSON; allowed: the JSON of a service account key file"
            ) from None
        missing = [
            k
            for k in ("client_email", "private_key", "token_uri")
            if not isinstance(info, dict) or not info.get(k)
        ]
        if not isinstance(info, dict) or info.get("type") != "service_account" or missing:
            found = (
                "JSON without " + ", ".join(missing) if missing else "JSON whose type is not service_account"
            )
            raise ValueError(
                f"found {found}; allowed: the JSON of a service account key file (type service_account)"
            )
        return value

    @pydantic.model_validator(mode="after")
    def _check_audience(self) -> FirestoreSettings:
        if self.service == "audiences" and self.audience is None:
            raise ValueError(
                "audience: missing; allowed: the audience's document id (service audiences needs one)"
            )
        if self.service == "attributes" and self.audience is not None:
            raise ValueError(
                f"audience: found {self.audience!r}; allowed: nothing (the attributes service writes a "
                "document per record in collection)"
            )
        return self

    def secret_values(self) -> list[str]:
        """The key's JSON, and its private key and key id on their own (they could be quoted apart)."""
        values = super().secret_values()
        if self.service_account_json is not None:
            info = json.loads(self.service_account_json.get_secret_value())
            for name in ("private_key", "private_key_id"):
                secret = info.get(name)
                if isinstance(secret, str):
                    values.append(secret)
                    # A PEM key is also quoted line by line (its base64 body lines are secret too).
                    values.extend(
                        line for line in secret.splitlines() if len(line) >= 16 and "-----" not in line
                    )
        return values


# --------------------------------------------------------------------------------------------------
# The adapter
# --------------------------------------------------------------------------------------------------


class Firestore(Platform):
    """Firestore documents (attributes) and membership documents (audiences), by BatchWrite."""

    name = "firestore"
    settings_model = FirestoreSettings
    services: ClassVar[Mapping[str, tuple[str, ...]]] = {
        "attributes": ("upsert", "update", "insert", "delete"),
        "audiences": ("add", "remove", "replace"),
    }
    default_base_url = "https://firestore.googleapis.com"
    limits = Limits(
        max_records_per_batch=MAX_WRITES_PER_REQUEST,
        max_bytes_per_batch=MAX_REQUEST_BYTES,
        # 4 requests of 500 writes per 4 s: the ramp's 500 writes per second.
        requests_per_window=4,
        window_seconds=4.0,
        max_requests_per_window=int(4.0 * MAX_WRITES_PER_SECOND / MAX_WRITES_PER_REQUEST),
        max_concurrency=4,
        envelope_bytes=1024,
    )

    settings: FirestoreSettings

    def __init__(self, settings: PlatformSettings, *, destination: str = "") -> None:
        super().__init__(settings, destination=destination)
        self._lock = threading.Lock()
        self._api: Any = None
        self._metadata: tuple[tuple[str, str], ...] = ()
        # The refusal of the credentials, once the token endpoint refused them: the calls of other
        # batches that waited for the same connection get it too, without asking again.
        self._refused: Exception | None = None
        # State of each delivery running on this destination (one transport each).
        self._deliveries: weakref.WeakKeyDictionary[Transport, _DeliveryState] = weakref.WeakKeyDictionary()
        self._field_paths: dict[str, tuple[str, ...]] = {}
        self._checked_targets: set[tuple[str, ...]] = set()

    # -- names ------------------------------------------------------------------------------------------

    @property
    def database_path(self) -> str:
        """``projects/{project}/databases/{database}``."""
        return f"projects/{self.settings.project}/databases/{self.settings.database}"

    @property
    def _documents_root(self) -> str:
        return f"{self.database_path}/documents"

    @property
    def _audience_path(self) -> str:
        return f"{self._documents_root}/{self.settings.collection}/{self.settings.audience}"

    @property
    def _parent_collection(self) -> str:
        """The full name of the collection that holds the records' documents."""
        if self.settings.service == "audiences":
            return f"{self._audience_path}/{self.settings.members_collection}"
        return f"{self._documents_root}/{self.settings.collection}"

    def document_name(self, document_id: str) -> str:
        """The full resource name of the document ``document_id`` of this destination."""
        return f"{self._parent_collection}/{document_id}"

    def target_label(self) -> str:
        """``Firestore collection 'customers'`` or ``Firestore audience 'vip' (audiences/vip/members)``."""
        where = f"database {self.settings.database} of project {self.settings.project}"
        if self.settings.service == "audiences":
            path = f"{self.settings.collection}/{self.settings.audience}/{self.settings.members_collection}"
            return f"Firestore audience '{self.settings.audience}' ({path}, {where})"
        return f"Firestore collection '{self.settings.collection}' ({where})"

    @property
    def emulator_host(self) -> str | None:
        """``host:port`` of the emulator to use: an ``http://`` base_url, or FIRESTORE_EMULATOR_HOST."""
        if self.settings.base_url is not None:
            parts = urllib.parse.urlsplit(self.settings.base_url)
            return parts.netloc if parts.scheme == "http" else None
        return os.environ.get(EMULATOR_ENV_VAR) or None

    @property
    def base_url(self) -> str:
        """The API root (its REST form, for previews): the emulator's when one is used."""
        host = self.emulator_host
        return f"http://{host}" if host else super().base_url

    # -- identifiers and activation checks ---------------------------------------------------------

    def identifier_spec(self, name: str) -> IdentifierSpec | None:
        """``document_id``: the column that holds the document id, sent as the warehouse holds it."""
        return IdentifierSpec("id") if name == DOCUMENT_ID else None

    def validate_activation(self, match: Mapping[str, str], mapping: Mapping[str, str]) -> list[str]:
        """``match`` names at most the document id's column; mapped fields are valid field paths
        that do not contain one another."""
        problems = []
        others = [name for name in match if name != DOCUMENT_ID]
        if others:
            problems.append(
                f"match: found {', '.join(others)}; allowed: nothing (the document id is the record's key) "
                "or {document_id: column}"
            )
        paths: dict[tuple[str, ...], str] = {}
        for column, target in mapping.items():
            problem = field_path_problem(str(target))
            if problem is not None:
                problems.append(f"mapping.{column}: found {target!r}; allowed: {problem}")
                continue
            segments = tuple(str(target).split("."))
            for other, other_column in paths.items():
                shorter, longer = sorted((segments, other), key=len)
                if longer[: len(shorter)] == shorter:
                    problems.append(
                        f"mapping.{column}: field {'.'.join(segments)!r} overlaps field {'.'.join(other)!r} "
                        f"(mapping.{other_column}); allowed: fields that do not contain one another"
                    )
            paths[segments] = column
        return problems

    # -- requests -------------------------------------------------------------------------------------

    def _segments(self, target: str) -> tuple[str, ...]:
        segments = self._field_paths.get(target)
        if segments is None:
            problem = field_path_problem(target)
            if problem is not None:
                raise self.config_error(f"mapping: found field {target!r}; allowed: {problem}")
            segments = self._field_paths[target] = tuple(target.split("."))
        return segments

    def _check_overlaps(self, targets: tuple[str, ...]) -> None:
        """Raise PlatformConfigError when a mapped field contains another (``a`` and ``a.b``)."""
        if targets in self._checked_targets:
            return
        seen: list[tuple[str, ...]] = []
        for target in targets:
            segments = self._segments(target)
            for other in seen:
                shorter, longer = sorted((segments, other), key=len)
                if longer[: len(shorter)] == shorter:
                    raise self.config_error(
                        f"mapping: field {target!r} overlaps field {'.'.join(other)!r}; allowed: fields that "
                        "do not contain one another"
                    )
            seen.append(segments)
        self._checked_targets.add(targets)

    def _fields(self, values: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
        """Firestore's ``fields`` (nested maps for dotted paths) and the update mask's paths."""
        self._check_overlaps(tuple(values))
        fields: dict[str, Any] = {}
        mask: list[str] = []
        for target, value in values.items():
            segments = self._segments(target)
            node = fields
            for segment in segments[:-1]:
                node = node.setdefault(segment, {"mapValue": {"fields": {}}})["mapValue"]["fields"]
            node[segments[-1]] = firestore_value(value, decimals=self.settings.decimals, path=target)
            mask.append(".".join(_quote_segment(s) for s in segments))
        return fields, mask

    def record_input(self, operation: str, record: Record) -> dict[str, Any]:
        """The ``Write`` of ``record`` in Firestore's REST form, or ``{"rejected": reason, "code":
        label}`` for a record that cannot be written (its reason never quotes the value)."""
        document_id = record.identifiers.get(DOCUMENT_ID, record.key)
        problem = id_problem(document_id)
        if problem is not None:
            source = "document_id" if DOCUMENT_ID in record.identifiers else "record key"
            return {"rejected": f"the document id ({source}) {problem}", "code": "invalid document id"}
        name = self.document_name(document_id)
        if operation in ("delete", "remove"):
            return {"delete": name}
        try:
            fields, mask = self._fields(record.fields)
        except _ValueProblem as exc:
            return {"rejected": str(exc), "code": "unsupported value"}
        write: dict[str, Any] = {"update": {"name": name, "fields": fields}}
        if operation == "insert":
            write["currentDocument"] = {"exists": False}
            return write
        write["updateMask"] = {"fieldPaths": mask}  # merge: only the mapped fields change
        if operation == "update":
            write["currentDocument"] = {"exists": True}
        return write

    def build_request(
        self, operation: str, inputs: Sequence[Any], records: Sequence[Record]
    ) -> PreparedRequest:
        """One ``BatchWrite`` of the writes of ``inputs`` (records rejected beforehand left out)."""
        writes = [w for w in inputs if "rejected" not in w]
        return PreparedRequest(
            "POST",
            f"/v1/{self.database_path}/documents:batchWrite",
            json={"writes": writes},
            call=functools.partial(self._batch_write, writes),
        )

    def preview_request(
        self, operation: str, inputs: Sequence[Any], records: Sequence[Record]
    ) -> PreparedRequest:
        """The BatchWrite, with the document ids that come from ``match`` masked in the names."""
        request = self.build_request(operation, inputs, records)
        names = {
            self.document_name(r.identifiers[DOCUMENT_ID]): self.document_name(
                mask_identifier(r.identifiers[DOCUMENT_ID])
            )
            for r in records
            if DOCUMENT_ID in r.identifiers
        }
        return PreparedRequest(request.method, request.path, json=_rename(request.json, names))

    def deliver_batch(
        self, operation: str, records: Sequence[Record], inputs: Sequence[Any], transport: Transport
    ) -> BatchOutcome:
        """Send the batch's writes in one BatchWrite; records rejected beforehand are not sent."""
        state = self._delivery(transport)
        self._follow_ramp(state, transport.limiter)
        rejected = [
            RecordResult(r.key, "rejected", w["rejected"], w["code"])
            for r, w in zip(records, inputs)
            if "rejected" in w
        ]
        sendable = [(r, w) for r, w in zip(records, inputs) if "rejected" not in w]
        if operation == "replace":
            with self._lock:
                state.replaced.update(w["update"]["name"] for _, w in sendable)
        if not sendable:
            return BatchOutcome(rejected)
        sent = [r for r, _ in sendable]
        response = transport.send(self.build_request(operation, [w for _, w in sendable], sent))
        outcome = self.parse_response(operation, sent, response)
        if outcome.split:
            return outcome
        return BatchOutcome(rejected + outcome.results)

    def finish_operation(self, operation: str, pending: Sequence[str], transport: Transport) -> BatchOutcome:
        """audiences: after a replace, delete the members it did not send; after any operation,
        stamp the audience document's ``synced_at``."""
        if self.settings.service == "audiences":
            if operation == "replace":
                self._sweep(transport)
            self._stamp_audience(transport)
        return BatchOutcome()

    # -- calls ----------------------------------------------------------------------------------------

    def _batch_write(self, writes: Sequence[Mapping[str, Any]]) -> HttpResponse:
        """One BatchWrite call; its per-write statuses as the body of a 200."""
        from google.cloud.firestore_v1.types import firestore as firestore_types

        def run(api: Any, metadata: Sequence[tuple[str, str]]) -> dict[str, Any]:
            message = firestore_types.BatchWriteRequest.pb()(
                database=self.database_path, writes=[_write_pb(w) for w in writes]
            )
            request = firestore_types.BatchWriteRequest.wrap(message)
            answer = api.batch_write(
                request=request, retry=None, timeout=self.settings.timeout_seconds, metadata=metadata
            )
            return {
                "status": [{"code": s.code, "message": s.message} for s in answer.status],
                "writeResults": len(answer.write_results),
            }

        return self._rpc(run)

    def _list_page(self, parent: str, collection_id: str, page_size: int, token: str) -> HttpResponse:
        """One ListDocuments page (names only) of ``parent``'s ``collection_id``."""

        def run(api: Any, metadata: Sequence[tuple[str, str]]) -> dict[str, Any]:
            page = api.list_documents(
                request={
                    "parent": parent,
                    "collection_id": collection_id,
                    "page_size": page_size,
                    "page_token": token,
                    "mask": {"field_paths": []},
                },
                retry=None,
                timeout=self.settings.timeout_seconds,
                metadata=metadata,
            )
            return {"documents": [d.name for d in page.documents], "nextPageToken": page.next_page_token}

        return self._rpc(run)

    def _rpc(self, run: Callable[[Any, Sequence[tuple[str, str]]], Any]) -> HttpResponse:
        """Run one call on the client; its result or its error as the HTTP-equivalent answer."""
        from google.api_core import exceptions as api_exceptions
        from google.auth import exceptions as auth_exceptions

        try:
            api, metadata = self._client()
            body = run(api, metadata)
        except api_exceptions.GoogleAPICallError as exc:
            code = getattr(exc.grpc_status_code, "name", None) or "UNKNOWN"
            message = str(exc.message or code)
            if code == "RESOURCE_EXHAUSTED" and _TOO_LARGE.search(message):
                return _error(413, code, message)  # too large, not overloaded: split, don't wait
            return _error(exc.code or 500, code, message)
        except (auth_exceptions.RefreshError, auth_exceptions.DefaultCredentialsError, _KeyProblem) as exc:
            # The key was refused or cannot be used: as Firestore's UNAUTHENTICATED.
            return _error(401, "UNAUTHENTICATED", f"no access token for the credentials: {_first_arg(exc)}")
        except auth_exceptions.TransportError as exc:
            return _error(503, "UNAVAILABLE", f"the token endpoint did not answer: {_first_arg(exc)}")
        return HttpResponse(200, {"grpc-status": "OK"}, json.dumps(body).encode("utf-8"))

    def _client(self) -> tuple[Any, tuple[tuple[str, str], ...]]:
        from google.auth import exceptions as auth_exceptions

        with self._lock:
            if self._refused is not None:
                raise self._refused
            if self._api is None:
                try:
                    self._api, self._metadata = self._connect()
                except (auth_exceptions.RefreshError, auth_exceptions.DefaultCredentialsError, _KeyProblem) as exc:
                    self._refused = exc  # not TransportError: an endpoint that did not answer may answer later
                    raise
            return self._api, self._metadata

    def _connect(self) -> tuple[Any, tuple[tuple[str, str], ...]]:
        import grpc
        from google.cloud.firestore_v1.services.firestore import FirestoreClient
        from google.cloud.firestore_v1.services.firestore.transports import FirestoreGrpcTransport

        prefix = ("google-cloud-resource-prefix", self.database_path)
        emulator = self.emulator_host
        if emulator is not None:
            # As Google's clients do for the emulator: plain text, and the emulator's owner token.
            channel = grpc.insecure_channel(
                emulator,
                options=[("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)],
            )
            api = FirestoreClient(transport=FirestoreGrpcTransport(channel=channel))
            return api, (prefix, ("authorization", "Bearer owner"))
        credentials = self._credentials()
        options = None
        if self.settings.base_url is not None:
            options = {"api_endpoint": urllib.parse.urlsplit(self.settings.base_url).netloc}
        return FirestoreClient(credentials=credentials, client_options=options), (prefix,)

    def _credentials(self) -> Any:
        import google.auth
        import google.auth.transport.requests
        from google.oauth2 import service_account

        if self.settings.service_account_json is not None:
            info = json.loads(self.settings.service_account_json.get_secret_value())
            try:
                credentials = service_account.Credentials.from_service_account_info(info, scopes=SCOPES)
            except ValueError as exc:  # a malformed private key: google-auth names the problem, not the key
                raise _KeyProblem(f"the service account key cannot be used ({_first_arg(exc)})") from None
        else:
            credentials, _ = google.auth.default(scopes=SCOPES)
        # A refused key fails here, at once, rather than as gRPC's retried UNAVAILABLE later.
        credentials.refresh(google.auth.transport.requests.Request())
        return credentials

    def close(self) -> None:
        """Close the client's channel (a new one opens on the next call)."""
        with self._lock:
            api, self._api = self._api, None
            self._refused = None  # the next delivery may run with a key that was fixed meanwhile
        if api is not None:
            api.transport.close()

    # -- responses ------------------------------------------------------------------------------------

    def classify(self, response: HttpResponse) -> Signal:
        """gRPC codes: transient ones retried, RESOURCE_EXHAUSTED waited out, auth ones fatal."""
        code = response.header("grpc-status") or "OK"
        if response.status == 413:
            return Signal(ResponseKind.OK)  # a request over the size limit: parse_response splits it
        if code in _AUTH:
            return Signal(ResponseKind.AUTH, message=self.error_message(response))
        if code == "RESOURCE_EXHAUSTED":
            return Signal(ResponseKind.RATE_LIMITED, message=self.error_message(response))
        if code in _TRANSIENT:
            return Signal(ResponseKind.TRANSIENT, message=self.error_message(response))
        return Signal(ResponseKind.OK)

    def parse_response(
        self, operation: str, records: Sequence[Record], response: HttpResponse
    ) -> BatchOutcome:
        """Per-record verdicts from BatchWrite's statuses (the i-th status is the i-th write's)."""
        code = response.header("grpc-status") or "OK"
        if response.status == 200 and code == "OK":
            body = response.json() or {}
            statuses = body.get("status") or []
            written = int(body.get("writeResults") or 0)
            results = []
            for i, record in enumerate(records):
                if i < len(statuses):
                    status = statuses[i]
                    results.append(self._verdict(operation, record, int(status["code"]), status["message"]))
                elif not statuses and i < written:
                    results.append(RecordResult(record.key, "accepted"))  # no status list: all applied
                else:
                    results.append(RecordResult(record.key, "retry"))
            return BatchOutcome(results)
        if code == "INVALID_ARGUMENT" or response.status == 413:
            # Refused whole, for one write it did not name or for its size: halve it until it passes.
            if len(records) > 1:
                return BatchOutcome(split=True)
            reason_code = "INVALID_ARGUMENT" if response.status != 413 else "request too large"
            return BatchOutcome(
                [RecordResult(records[0].key, "rejected", self.error_message(response), reason_code)]
            )
        raise self.request_error(response, f"writing to {self.target_label()}")

    def _verdict(self, operation: str, record: Record, code: int, message: str) -> RecordResult:
        name = _CODE_NAMES.get(code, str(code))
        if name == "OK":
            return RecordResult(record.key, "accepted")
        if name == "NOT_FOUND" and operation == "update":
            return RecordResult(record.key, "accepted")  # update touches existing documents only
        if name == "ALREADY_EXISTS" and operation == "insert":
            return RecordResult(record.key, "accepted")  # insert leaves existing documents alone
        if name in _TRANSIENT or name == "RESOURCE_EXHAUSTED":
            return RecordResult(record.key, "retry")
        return RecordResult(record.key, "rejected", self.redact(f"{name}: {message}"), name)

    def request_error(self, response: HttpResponse, what: str) -> PlatformRequestError:
        """A PlatformRequestError with the gRPC code and Firestore's message."""
        return PlatformRequestError(
            f"{self.label}: {what} failed with {response.header('grpc-status') or 'an error'} "
            f"(HTTP {response.status}): {self.error_message(response)}"
        )

    # -- ramp-up ---------------------------------------------------------------------------------------

    def _delivery(self, transport: Transport) -> _DeliveryState:
        with self._lock:
            state = self._deliveries.get(transport)
            if state is None:
                state = self._deliveries[transport] = _DeliveryState(time.monotonic())
            return state

    def _follow_ramp(self, state: _DeliveryState, limiter: RateLimiter) -> None:
        """Raise the limiter's rate as the 500/50/5 rule allows, once per 5-minute phase."""
        now = time.monotonic()
        with self._lock:
            phase = int((now - state.started) // RAMP_PHASE_SECONDS)
            if phase == state.phase:
                return
            state.phase = phase
            elapsed = now - state.started
        window = self.limits.window_seconds
        requests = ramp_up_rate(elapsed) / MAX_WRITES_PER_REQUEST * window
        limiter.adopt(max(1, math.floor(requests)), window)

    # -- audiences: sweep and stamp ------------------------------------------------------------------

    def _sweep(self, transport: Transport) -> None:
        """Delete the members the replace did not write, page by page."""
        state = self._delivery(transport)
        with self._lock:
            keep, state.replaced = state.replaced, set()
        parent, members = self._audience_path, self.settings.members_collection
        token, removed = "", 0
        while True:
            page = transport.send(
                PreparedRequest(
                    "GET",
                    f"/v1/{parent}/{members}",
                    params={"pageSize": str(_SWEEP_PAGE_SIZE), "pageToken": token},
                    call=functools.partial(self._list_page, parent, members, _SWEEP_PAGE_SIZE, token),
                )
            )
            if page.status != 200:
                raise self.request_error(page, f"listing the members of {self.target_label()}")
            body = page.json() or {}
            stale = [name for name in body.get("documents") or [] if name not in keep]
            for start in range(0, len(stale), MAX_WRITES_PER_REQUEST):
                removed += self._delete(stale[start : start + MAX_WRITES_PER_REQUEST], transport)
            token = body.get("nextPageToken") or ""
            if not token:
                break
        logger.info(
            "%s: the full sync removed %d member(s) that are not in the segment from %s",
            self.label,
            removed,
            self.target_label(),
        )

    def _delete(self, names: Sequence[str], transport: Transport) -> int:
        writes = [{"delete": name} for name in names]
        for _attempt in range(3):
            response = transport.send(
                PreparedRequest(
                    "POST",
                    f"/v1/{self.database_path}/documents:batchWrite",
                    json={"writes": writes},
                    call=functools.partial(self._batch_write, writes),
                )
            )
            if response.status != 200:
                raise self.request_error(response, f"removing members from {self.target_label()}")
            statuses = (response.json() or {}).get("status") or []
            failed = [(w, s) for w, s in zip(writes, statuses) if int(s["code"]) != 0]
            if not failed:
                return len(names)
            retry = [w for w, s in failed if _CODE_NAMES.get(int(s["code"])) in _TRANSIENT]
            if len(retry) < len(failed):
                status = next(s for _, s in failed if _CODE_NAMES.get(int(s["code"])) not in _TRANSIENT)
                name = _CODE_NAMES.get(int(status["code"]), str(status["code"]))
                raise PlatformRequestError(
                    f"{self.label}: removing {len(failed)} member(s) that left the segment from "
                    f"{self.target_label()} failed: {name}: {self.redact(status['message'])}"
                )
            writes = retry
        raise PlatformRequestError(
            f"{self.label}: removing {len(writes)} member(s) that left the segment from "
            f"{self.target_label()} kept failing with transient errors"
        )

    def _stamp_audience(self, transport: Transport) -> None:
        """``synced_at`` (the server's time) on the audience document, creating it when missing."""
        write = {
            "update": {"name": self._audience_path, "fields": {}},
            "updateMask": {"fieldPaths": []},
            "updateTransforms": [{"fieldPath": "synced_at", "setToServerValue": "REQUEST_TIME"}],
        }
        response = transport.send(
            PreparedRequest(
                "POST",
                f"/v1/{self.database_path}/documents:batchWrite",
                json={"writes": [write]},
                call=functools.partial(self._batch_write, [write]),
            )
        )
        statuses = ((response.json() or {}).get("status") or []) if response.status == 200 else []
        if response.status != 200 or any(int(s["code"]) != 0 for s in statuses):
            logger.warning("%s: could not stamp synced_at on the audience document", self.label)

    # -- validate --connect ---------------------------------------------------------------------------

    def check_connection(self, transport: Transport) -> None:
        """List one document of the target collection: checks the credentials, their role and the
        database."""
        parent, _, collection_id = self._parent_collection.rpartition("/")
        response = transport.send(
            PreparedRequest(
                "GET",
                f"/v1/{parent}/{collection_id}",
                params={"pageSize": "1"},
                call=functools.partial(self._list_page, parent, collection_id, 1, ""),
            )
        )
        if response.status != 200:
            raise self.request_error(response, f"reading {self.target_label()}")


@functools.cache
def _pb() -> Any:
    """Firestore's protobuf classes (imported on first use: projects without Firestore skip them)."""
    from types import SimpleNamespace

    from google.cloud.firestore_v1.types import common, document
    from google.cloud.firestore_v1.types import write as write_types
    from google.protobuf import timestamp_pb2

    transform = write_types.DocumentTransform.FieldTransform.pb()
    return SimpleNamespace(
        value=document.Value.pb(),
        map=document.MapValue.pb(),
        array=document.ArrayValue.pb(),
        document=document.Document.pb(),
        write=write_types.Write.pb(),
        mask=common.DocumentMask.pb(),
        precondition=common.Precondition.pb(),
        transform=transform,
        server_value=transform.ServerValue,
        timestamp=timestamp_pb2.Timestamp,
    )


def _value_pb(value: Mapping[str, Any]) -> Any:
    """A ``Value`` in REST form as its protobuf (what ``json_format`` does, several times faster)."""
    pb = _pb()
    ((kind, item),) = value.items()
    if kind == "stringValue":
        return pb.value(string_value=item)
    if kind == "integerValue":
        return pb.value(integer_value=int(item))
    if kind == "doubleValue":
        return pb.value(double_value=float(item))  # float() reads "NaN" and "Infinity" too
    if kind == "booleanValue":
        return pb.value(boolean_value=item)
    if kind == "nullValue":
        return pb.value(null_value=0)
    if kind == "timestampValue":
        stamp = pb.timestamp()
        stamp.FromJsonString(item)
        return pb.value(timestamp_value=stamp)
    if kind == "bytesValue":
        return pb.value(bytes_value=base64.b64decode(item))
    if kind == "mapValue":
        fields = {name: _value_pb(v) for name, v in (item.get("fields") or {}).items()}
        return pb.value(map_value=pb.map(fields=fields))
    if kind == "arrayValue":
        return pb.value(array_value=pb.array(values=[_value_pb(v) for v in item.get("values") or []]))
    raise ValueError(f"unknown Firestore value kind {kind!r}")


def _write_pb(write: Mapping[str, Any]) -> Any:
    """A ``Write`` in REST form (as :meth:`Firestore.record_input` builds it) as its protobuf."""
    pb = _pb()
    if "delete" in write:
        message = pb.write(delete=write["delete"])
    else:
        update = write["update"]
        fields = {name: _value_pb(v) for name, v in update["fields"].items()}
        message = pb.write(update=pb.document(name=update["name"], fields=fields))
        if "updateMask" in write:
            message.update_mask.CopyFrom(pb.mask(field_paths=write["updateMask"]["fieldPaths"]))
        for transform in write.get("updateTransforms") or []:
            server_value = pb.server_value.Value(transform["setToServerValue"])
            message.update_transforms.append(
                pb.transform(field_path=transform["fieldPath"], set_to_server_value=server_value)
            )
    if "currentDocument" in write:
        message.current_document.CopyFrom(pb.precondition(exists=write["currentDocument"]["exists"]))
    return message


@dataclass
class _DeliveryState:
    """One delivery's progress: when it started (for the ramp), the ramp phase its limiter follows,
    and the member documents its replace wrote or tried to (the sweep keeps them)."""

    started: float
    phase: int = 0
    replaced: set[str] = field(default_factory=set)


def _error(status: int, code: str, message: str) -> HttpResponse:
    body = json.dumps({"code": code, "message": f"{code}: {message}"}).encode("utf-8")
    return HttpResponse(status, {"grpc-status": code}, body)


def _first_arg(exc: BaseException) -> str:
    """An exception's own message (google-auth puts the server's answer dict in its second arg)."""
    first = exc.args[0] if exc.args else ""
    return str(first) if first else type(exc).__name__


def _rename(value: Any, names: Mapping[str, str]) -> Any:
    if not names:
        return value
    if isinstance(value, str):
        return names.get(value, value)
    if isinstance(value, list):
        return [_rename(v, names) for v in value]
    if isinstance(value, dict):
        return {k: _rename(v, names) for k, v in value.items()}
    return value


register_platform("firestore", FirestoreSettings, Firestore)

"""Destinations: where finished export files go (SPEC sections 5 and 10).

A destination receives files that the shared writer has already produced locally and stores them
under an *object path* (``"folder/name.csv"``: slash-separated, relative, no empty / ``.`` / ``..``
segment). Two file destinations exist:

- :class:`GCSDestination`: a Google Cloud Storage bucket, through the official
  ``google-cloud-storage`` client, built on ``dagster_gcp``'s :class:`GCSResource`. When
  ``STORAGE_EMULATOR_HOST`` is set it talks, with anonymous credentials, to that emulator.
- :class:`LocalDestination`: a local folder with the same object paths (development, demos,
  benchmarks).

Every upload is atomic per object: a failed upload never leaves a partial object under its final
name (GCS only creates an object once all its bytes arrived; the local folder writes a temporary
file and renames it). Transient GCS errors are retried with bounded exponential backoff
(``tenacity``); permanent ones fail at once with a :class:`DestinationError` that names the
destination, the bucket and the cause, and never contains a secret.

:class:`RecordDestination` is the (not yet implemented) shape of API destinations that receive
batches of records instead of files.
"""

import json
import logging
import mimetypes
import os
import random
import re
import shutil
import tempfile
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import pydantic
import requests
import tenacity
from dagster import ConfigurableResource, EnvVar
from dagster_gcp import GCSResource
from google.api_core import exceptions as api_exceptions
from google.auth import exceptions as auth_exceptions
from google.auth.credentials import AnonymousCredentials, Credentials
from google.cloud import storage
from google.cloud.storage import exceptions as storage_exceptions
from google.oauth2 import service_account
from pydantic import Field, PrivateAttr

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = [
    "Destination",
    "DestinationError",
    "GCSDestination",
    "LocalDestination",
    "RecordDestination",
    "RecordResult",
    "destination_from_config",
    "run_with_retries",
]

logger = logging.getLogger("dinmo_dagster.destinations")

T = TypeVar("T")

STORAGE_EMULATOR_ENV_VAR = "STORAGE_EMULATOR_HOST"
# google-cloud-storage requires resumable chunk sizes to be multiples of 256 KiB.
_CHUNK_UNIT = 256 * 1024
# HTTP statuses worth another try: request timeout, rate limiting, server-side trouble.
TRANSIENT_HTTP_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
# Causes quoted in messages are cut to this length (GCS error bodies can be long).
_MAX_CAUSE_CHARS = 300
# Real GCS rule: 3-63 characters per dot-separated part, lowercase letters, digits, '-', '_', '.'.
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]$")
# Prefix of the temporary files LocalDestination writes before renaming; list() hides them.
_LOCAL_TMP_PREFIX = ".dinmo-tmp-"


class DestinationError(Exception):
    """A destination operation failed. The message names the destination, the bucket or folder and
    the cause; it never contains a secret (service account key, token)."""


# --------------------------------------------------------------------------------------------------
# Retries (shared by every network destination)
# --------------------------------------------------------------------------------------------------


def _status_of(exc: BaseException) -> int | None:
    """The HTTP status an exception carries, if any."""
    if isinstance(exc, api_exceptions.GoogleAPICallError) and isinstance(exc.code, int):
        return exc.code
    if isinstance(exc, storage_exceptions.InvalidResponse):
        response = getattr(exc, "response", None)
        return getattr(response, "status_code", None)
    if isinstance(exc, requests.HTTPError) and exc.response is not None:
        return exc.response.status_code
    return None


def is_transient(exc: BaseException) -> bool:
    """True for errors that another identical attempt may not hit: 408/429/5xx, dropped or refused
    connections, timeouts, a corrupted transfer. Everything else (401, 403, 404, bad input) is
    permanent and must fail at once."""
    status = _status_of(exc)
    if status is not None:
        return status in TRANSIENT_HTTP_STATUSES
    return isinstance(
        exc,
        (
            ConnectionError,  # builtin: ConnectionResetError, ConnectionRefusedError, BrokenPipeError
            TimeoutError,
            requests.ConnectionError,
            requests.Timeout,
            requests.exceptions.ChunkedEncodingError,
            auth_exceptions.TransportError,  # network failure while fetching a token
            storage_exceptions.DataCorruption,  # checksum mismatch: re-send the whole object
        ),
    )


def describe_exception(exc: BaseException) -> str:
    """A short, secret-free description of an error for messages and logs."""
    status = _status_of(exc)
    if isinstance(exc, api_exceptions.GoogleAPICallError):
        text = exc.message or type(exc).__name__
    else:
        text = str(exc) or type(exc).__name__
    text = " ".join(text.split())
    if len(text) > _MAX_CAUSE_CHARS:
        text = text[: _MAX_CAUSE_CHARS - 3] + "..."
    return f"HTTP {status}: {text}" if status is not None else f"{type(exc).__name__}: {text}"


def run_with_retries(
    fn: Callable[[], T],
    *,
    what: str,
    attempts: int,
    initial_wait: float,
    max_wait: float,
    should_retry: Callable[[BaseException], bool] = is_transient,
) -> T:
    """Call ``fn`` until it succeeds, retrying transient errors with exponential backoff.

    At most ``attempts`` calls; waits grow from ``initial_wait`` doubling up to ``max_wait``, plus
    up to ``initial_wait`` of random jitter (so parallel syncs hitting a 429 do not retry in step).
    Each retry is logged at WARNING on ``dinmo_dagster.destinations`` with ``what`` (which must not
    contain secrets). The last error, or the first permanent one, is re-raised unchanged.
    """

    def log_retry(state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        wait = state.next_action.sleep if state.next_action else 0.0
        logger.warning(
            "%s failed (attempt %d of %d): %s; retrying in %.2fs",
            what,
            state.attempt_number,
            attempts,
            describe_exception(exc) if exc else "unknown error",
            wait,
        )

    def backoff(state: tenacity.RetryCallState) -> float:
        # Written out rather than tenacity.wait_exponential_jitter, whose arguments changed across
        # tenacity versions (initial -> multiplier). Same formula as Google's retry guidance.
        exponential = initial_wait * 2 ** (state.attempt_number - 1)
        return min(max_wait, exponential + random.uniform(0, initial_wait))

    retrying = tenacity.Retrying(
        stop=tenacity.stop_after_attempt(max(1, attempts)),
        wait=backoff,
        retry=tenacity.retry_if_exception(should_retry),
        before_sleep=log_retry,
        reraise=True,
    )
    return retrying(fn)


# --------------------------------------------------------------------------------------------------
# Base classes
# --------------------------------------------------------------------------------------------------


def _resolve_secret(value: str | None) -> str | None:
    """Read a ``dagster.EnvVar`` when the resource is used outside a Dagster run (CLI, tests):
    inside a run Dagster has already replaced it by the variable's value."""
    if isinstance(value, EnvVar):
        return value.get_value()
    return value


class Destination(ConfigurableResource, ABC):
    """A place that stores finished export files under object paths (``"folder/name.csv"``).

    Implementations: :class:`GCSDestination`, :class:`LocalDestination`. Every method raises
    :class:`DestinationError` on failure.
    """

    destination_name: str = Field(
        default="", description="Name of the destination in the project YAML; used in messages only."
    )

    # -- helpers shared by implementations ---------------------------------------------------------

    def _msg(self, text: str) -> str:
        """Prefix ``text`` with the destination's name, when it has one."""
        return f"destination '{self.destination_name}': {text}" if self.destination_name else text

    def _error(self, text: str) -> DestinationError:
        return DestinationError(self._msg(text))

    def _check_object_path(self, object_path: str) -> str:
        """Reject paths that are absolute, empty, end with '/', or contain empty/./.. segments, so an
        object can never land outside its folder (or the local folder)."""
        if (
            not isinstance(object_path, str)
            or not object_path
            or "\\" in object_path
            or "\x00" in object_path
            or any(segment in ("", ".", "..") for segment in object_path.split("/"))
        ):
            raise self._error(
                f"invalid object path {object_path!r}: expected 'folder/name' with no leading '/', "
                "no empty segment and no '.' or '..' segment"
            )
        return object_path

    def _check_prefix(self, prefix: str) -> str:
        """A list prefix is empty, or an object path, optionally ending with '/'."""
        if prefix:
            self._check_object_path(prefix.removesuffix("/"))
        return prefix

    # -- the interface -----------------------------------------------------------------------------

    @abstractmethod
    def uri(self, object_path: str) -> str:
        """Where the object lives, for metadata and messages: ``gs://bucket/path`` or ``file:///abs``."""

    @abstractmethod
    def upload(self, local_path: Path, object_path: str) -> int:
        """Store the finished local file ``local_path`` as ``object_path`` (replacing an existing
        object) and return the number of bytes stored. Atomic per object: on failure nothing is left
        under ``object_path`` that was not there before."""

    @abstractmethod
    def delete(self, object_paths: Sequence[str]) -> None:
        """Delete these objects; missing ones are fine."""

    @abstractmethod
    def exists(self, object_path: str) -> bool:
        """True if ``object_path`` exists."""

    @abstractmethod
    def list(self, prefix: str) -> list[str]:
        """Object paths that start with ``prefix`` (plain string prefix, as in GCS), sorted."""

    @abstractmethod
    def check(self) -> None:
        """Verify that the bucket or folder exists and can be written; raise DestinationError if not."""

    @abstractmethod
    def read_bytes(self, object_path: str) -> bytes:
        """The content of a (small) object: for tests and CLI previews."""


@dataclass(frozen=True)
class RecordResult:
    """Outcome of one record sent to an API destination.

    ``index`` is the record's row index in the batch; ``ok`` says whether the API accepted it;
    ``error`` is a short, secret-free reason when it did not; ``retryable`` says whether sending it
    again later may succeed (rate limit, server error) as opposed to a rejected record.
    """

    index: int
    ok: bool
    error: str | None = None
    retryable: bool = False


class RecordDestination(ConfigurableResource, ABC):
    """Shape reserved for API destinations (not implemented yet).

    An API destination receives the export as batches of records (``pyarrow.RecordBatch``) rather
    than files, sends each batch to an HTTP API and reports one :class:`RecordResult` per record, so
    the sync can count successes and keep failed records for the next run. Implementations are
    expected to reuse :func:`run_with_retries` for whole-request transient errors and to raise
    :class:`DestinationError` for permanent ones (bad credentials, unknown account).
    """

    destination_name: str = Field(
        default="", description="Name of the destination in the project YAML; used in messages only."
    )

    @abstractmethod
    def check(self) -> None:
        """Verify credentials and reachability; raise DestinationError if not."""

    @abstractmethod
    def send(self, batch: "pa.RecordBatch") -> list[RecordResult]:
        """Send one batch; return one result per row of ``batch``, in row order."""


# --------------------------------------------------------------------------------------------------
# Google Cloud Storage
# --------------------------------------------------------------------------------------------------


class GCSDestination(Destination, GCSResource):
    """Upload export files to a Google Cloud Storage bucket.

    Credentials, in order: ``STORAGE_EMULATOR_HOST`` set -> anonymous credentials against the
    emulator; ``service_account_json`` (the key's JSON text, normally from an environment variable);
    ``service_account_file`` (a path to a key file); otherwise application default credentials.
    Pass the key as ``dagster.EnvVar("...")`` when building the resource for Dagster so its value is
    not shown in the UI; the key never appears in ``repr``, logs or errors.

    It is a :class:`dagster_gcp.GCSResource` (so it can also serve, e.g., a GCS IO manager) whose
    ``get_client()`` returns the official ``google.cloud.storage.Client`` with these credentials.
    """

    project: str | None = Field(
        default=None,
        description="Google Cloud project id; optional (taken from the credentials when omitted).",
    )
    bucket: str = Field(description="Name of the bucket (without 'gs://').")
    service_account_json: str | None = Field(
        default=None,
        repr=False,  # a secret: keep it out of repr()
        description="JSON text of a service account key (from an environment variable); secret.",
    )
    service_account_file: str | None = Field(default=None, description="Path to a service account key file.")
    retry_attempts: int = Field(
        default=5, description="Maximum number of attempts per operation on transient errors (>= 1)."
    )
    retry_initial_wait_seconds: float = Field(
        default=0.5, description="Wait before the first retry; doubles on every further retry."
    )
    retry_max_wait_seconds: float = Field(default=8.0, description="Upper bound of one wait between retries.")
    timeout_seconds: float = Field(
        default=120.0, description="Timeout of one HTTP request (connect and read), in seconds."
    )
    upload_chunk_size_bytes: int = Field(
        default=8 * 1024 * 1024,
        description=(
            "Chunk size of resumable uploads (files above 8 MiB are uploaded resumably); "
            "a multiple of 256 KiB."
        ),
    )

    _client: storage.Client | None = PrivateAttr(default=None)

    # -- configuration and client ------------------------------------------------------------------

    def validate_settings(self) -> None:
        """Check the settings without any network call; raise DestinationError on a bad one."""
        if not isinstance(self.bucket, str) or not _BUCKET_RE.match(self.bucket):
            raise self._error(
                f"invalid GCS bucket name {self.bucket!r} (expected a bare bucket name such as "
                "'my-bucket', without 'gs://' or a folder)"
            )
        if self.service_account_json and self.service_account_file:
            raise self._error("set service_account_json or service_account_file, not both")
        if self.retry_attempts < 1:
            raise self._error("retry_attempts must be at least 1")
        if self.retry_initial_wait_seconds < 0 or self.retry_max_wait_seconds < 0:
            raise self._error("retry wait times must not be negative")
        if self.timeout_seconds <= 0:
            raise self._error("timeout_seconds must be positive")
        if self.upload_chunk_size_bytes <= 0 or self.upload_chunk_size_bytes % _CHUNK_UNIT:
            raise self._error("upload_chunk_size_bytes must be a positive multiple of 262144 (256 KiB)")

    def _credentials(self) -> Credentials | None:
        """Credentials from the key (JSON text or file), or None for application default ones."""
        key_text = _resolve_secret(self.service_account_json)
        if key_text:
            credentials = _load_key(
                lambda: service_account.Credentials.from_service_account_info(_json_object(key_text))
            )
            if credentials is None:
                raise self._error("service_account_json is not a valid service account key")
            return credentials
        key_file = _resolve_secret(self.service_account_file)
        if key_file:
            path = Path(key_file).expanduser()
            if not path.is_file():
                raise self._error(f"service_account_file '{path}' does not exist")
            credentials = _load_key(lambda: service_account.Credentials.from_service_account_file(str(path)))
            if credentials is None:
                raise self._error(f"service_account_file '{path}' is not a valid service account key")
            return credentials
        return None

    def get_client(self) -> storage.Client:
        """The ``google.cloud.storage.Client`` for this destination (created once, then reused)."""
        if self._client is None:
            self._client = self._make_client()
        return self._client

    def _make_client(self) -> storage.Client:
        self.validate_settings()
        if os.environ.get(STORAGE_EMULATOR_ENV_VAR):
            # The client would pick anonymous credentials itself; being explicit keeps a configured
            # key (or ADC lookup) from ever being used against a local emulator.
            credentials: Credentials | None = AnonymousCredentials()
            project = _resolve_secret(self.project)
        else:
            credentials = self._credentials()
            project = _resolve_secret(self.project) or getattr(credentials, "project_id", None)
        # Passing project=None explicitly would mean "no project"; omit it to let ADC infer one.
        kwargs: dict[str, Any] = {"credentials": credentials}
        if project:
            kwargs["project"] = project
        try:
            client = storage.Client(**kwargs)
        except auth_exceptions.DefaultCredentialsError:
            raise self._error(
                "no Google Cloud credentials: set service_account_json or service_account_file, "
                "or configure application default credentials"
            ) from None
        if not _otel_traces_enabled():
            # google-cloud-storage 3.x fetches bucket metadata in a background thread (with its own,
            # long retry) to decorate OpenTelemetry spans. Without tracing it is only an extra,
            # unbounded request per bucket; None is a state the client checks for everywhere.
            client._bucket_metadata_cache = None
        return client

    def get_object_to_set_on_execution_context(self) -> Any:
        # GCSResource would put the bare storage client on `context.resources`; a destination is
        # more useful there (its client stays reachable through get_client()).
        return self

    # -- error handling ----------------------------------------------------------------------------

    def _call(self, what: str, fn: Callable[[], T], *, object_path: str | None = None) -> T:
        """Run one GCS operation with retries; translate the final error into DestinationError."""
        self.get_client()  # credential and settings problems surface here, never retried
        try:
            return run_with_retries(
                fn,
                what=self._msg(f"GCS {what} {self.uri(object_path) if object_path else self.uri('')}"),
                attempts=self.retry_attempts,
                initial_wait=self.retry_initial_wait_seconds,
                max_wait=self.retry_max_wait_seconds,
            )
        except DestinationError:
            raise
        except Exception as exc:
            raise self._translate(exc, what, object_path) from exc

    def _translate(self, exc: Exception, what: str, object_path: str | None) -> DestinationError:
        """A clear, secret-free DestinationError for a failed GCS call."""
        status = _status_of(exc)
        bucket = self.bucket
        cause = describe_exception(exc)
        if status == 404:
            if what == "read":
                return self._error(f"object '{object_path}' not found in GCS bucket '{bucket}' (404)")
            return self._error(f"GCS bucket '{bucket}' does not exist (404)")
        if status == 403:
            return self._error(f"access denied to GCS bucket '{bucket}' (403): {_cause_text(exc)}")
        if status == 401:
            return self._error(f"GCS credentials rejected for bucket '{bucket}' (401): {_cause_text(exc)}")
        if isinstance(exc, auth_exceptions.RefreshError):
            return self._error(f"could not authenticate to GCS for bucket '{bucket}': {cause}")
        target = self.uri(object_path) if object_path else f"gs://{bucket}"
        if is_transient(exc):
            return self._error(f"GCS {what} of {target} failed after {self.retry_attempts} attempts: {cause}")
        return self._error(f"GCS {what} of {target} failed: {cause}")

    # -- the interface -----------------------------------------------------------------------------

    def uri(self, object_path: str) -> str:
        """``gs://bucket/object_path``."""
        return f"gs://{self.bucket}/{object_path}"

    def upload(self, local_path: Path, object_path: str) -> int:
        """Upload ``local_path`` to ``gs://bucket/object_path``: one multipart request up to 8 MiB,
        a resumable upload in ``upload_chunk_size_bytes`` chunks above. A retry re-sends the whole
        file; GCS creates the object only when all bytes arrived, so no partial object remains."""
        self._check_object_path(object_path)
        local_path = Path(local_path)
        if not local_path.is_file():
            raise self._error(f"cannot upload '{local_path}': no such file")
        size = local_path.stat().st_size
        content_type = _content_type(object_path)

        def attempt() -> None:
            blob = (
                self.get_client()
                .bucket(self.bucket)
                .blob(object_path, chunk_size=self.upload_chunk_size_bytes)
            )
            blob.upload_from_filename(
                str(local_path), content_type=content_type, timeout=self.timeout_seconds, retry=None
            )

        self._call("upload", attempt, object_path=object_path)
        return size

    def delete(self, object_paths: Sequence[str]) -> None:
        """Delete each object (one request each, retried); a missing object is not an error."""
        for object_path in object_paths:
            self._check_object_path(object_path)

            def attempt(path: str = object_path) -> None:
                try:
                    self.get_client().bucket(self.bucket).blob(path).delete(
                        timeout=self.timeout_seconds, retry=None
                    )
                except api_exceptions.NotFound:
                    pass  # already gone (or removed by an earlier attempt whose answer was lost)

            self._call("delete", attempt, object_path=object_path)

    def exists(self, object_path: str) -> bool:
        self._check_object_path(object_path)
        return self._call(
            "exists",
            lambda: (
                self.get_client()
                .bucket(self.bucket)
                .blob(object_path)
                .exists(timeout=self.timeout_seconds, retry=None)
            ),
            object_path=object_path,
        )

    def list(self, prefix: str) -> list[str]:
        self._check_prefix(prefix)
        return self._call(
            "list",
            # The iterator fetches pages lazily: materialise inside the retried call.
            lambda: sorted(
                blob.name
                for blob in self.get_client().list_blobs(
                    self.bucket, prefix=prefix or None, timeout=self.timeout_seconds, retry=None
                )
            ),
            object_path=prefix,
        )

    def read_bytes(self, object_path: str) -> bytes:
        self._check_object_path(object_path)
        return self._call(
            "read",
            lambda: (
                self.get_client()
                .bucket(self.bucket)
                .blob(object_path)
                .download_as_bytes(timeout=self.timeout_seconds, retry=None)
            ),
            object_path=object_path,
        )

    def check(self) -> None:
        """The bucket exists and the credentials may list, read, create and delete its objects.

        Listing one object proves the bucket exists (404 otherwise) and list access (403);
        ``testIamPermissions`` then checks the rest without writing a probe object, which could
        trigger the consumer's processing of the folder.
        """
        client = self.get_client()
        self._call(
            "check",
            lambda: list(
                client.list_blobs(self.bucket, max_results=1, timeout=self.timeout_seconds, retry=None)
            ),
        )
        wanted = [
            "storage.objects.create",
            "storage.objects.delete",
            "storage.objects.get",
            "storage.objects.list",
        ]
        granted = self._call(
            "check",
            lambda: client.bucket(self.bucket).test_iam_permissions(
                wanted, timeout=self.timeout_seconds, retry=None
            ),
        )
        missing = [permission for permission in wanted if permission not in set(granted or [])]
        if missing:
            raise self._error(
                f"access denied to GCS bucket '{self.bucket}': missing permission(s) {', '.join(missing)}"
            )


def _json_object(text: str) -> dict:
    """Parse a JSON object (a service account key is one)."""
    info = json.loads(text)
    if not isinstance(info, dict):
        raise TypeError("not a JSON object")
    return info


def _load_key(load: Callable[[], Credentials]) -> Credentials | None:
    """Run ``load``; None if the key is unusable.

    The DestinationError is raised by the caller *outside* the ``except`` block on purpose: raised
    inside, it would keep the parse error as ``__context__`` (``JSONDecodeError.doc`` holds the
    whole key text) and error reporters that walk the chain could print it.
    """
    try:
        return load()
    except (OSError, ValueError, TypeError, KeyError, auth_exceptions.GoogleAuthError):
        return None


def _otel_traces_enabled() -> bool:
    """Whether the user turned on google-cloud-storage's OpenTelemetry tracing (its own variable)."""
    return os.environ.get("ENABLE_GCS_PYTHON_CLIENT_OTEL_TRACES", "").strip().lower() in {
        "1",
        "true",
        "yes",
        "on",
    }


def _cause_text(exc: BaseException) -> str:
    """The server's explanation without the status prefix (for 401/403 messages)."""
    text = describe_exception(exc)
    return text.split(": ", 1)[1] if text.startswith("HTTP ") and ": " in text else text


def _content_type(object_path: str) -> str:
    """Content type for an export file. Compressed files are plain ``application/gzip``: declaring
    ``Content-Encoding: gzip`` would make GCS decompress them for some readers."""
    mime, encoding = mimetypes.guess_type(object_path)
    if encoding == "gzip":
        return "application/gzip"
    if object_path.endswith((".jsonl", ".ndjson")):
        return "application/x-ndjson"
    if object_path.endswith(".parquet"):
        return "application/vnd.apache.parquet"
    return mime or "application/octet-stream"


# --------------------------------------------------------------------------------------------------
# Local folder
# --------------------------------------------------------------------------------------------------


class LocalDestination(Destination):
    """Write export files into a local folder, under the same object paths as in a bucket.

    Uploads hard-link (or, across file systems, copy) the file to a temporary name in the target
    directory and ``os.replace`` it onto the final name, so a reader never sees a half-written file.
    """

    path: str = Field(description="Folder that receives the files (absolute, or resolved by the caller).")

    def _root(self) -> Path:
        return Path(self.path).expanduser().resolve()

    def _target(self, object_path: str) -> Path:
        return self._root() / self._check_object_path(object_path)

    def uri(self, object_path: str) -> str:
        """``file:///absolute/path``."""
        return (self._root() / object_path).as_uri() if object_path else self._root().as_uri()

    def upload(self, local_path: Path, object_path: str) -> int:
        target = self._target(object_path)
        local_path = Path(local_path)
        if not local_path.is_file():
            raise self._error(f"cannot upload '{local_path}': no such file")
        tmp: Path | None = None
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            # Same directory as the target: os.replace is only atomic within one file system.
            tmp = target.parent / f"{_LOCAL_TMP_PREFIX}{target.name}.{uuid.uuid4().hex}"
            try:
                os.link(local_path, tmp)  # same file system: no copy of the bytes
            except OSError:
                shutil.copyfile(local_path, tmp)
            with open(tmp, "rb+") as handle:
                os.fsync(handle.fileno())  # the bytes are on disk before the name points at them
            os.replace(tmp, target)
            tmp = None
            return target.stat().st_size
        except OSError as exc:
            raise self._error(
                f"could not write {self.uri(object_path)}: {type(exc).__name__}: {exc.strerror or exc}"
            ) from exc
        finally:
            if tmp is not None:
                tmp.unlink(missing_ok=True)

    def delete(self, object_paths: Sequence[str]) -> None:
        for object_path in object_paths:
            target = self._target(object_path)
            try:
                target.unlink(missing_ok=True)
            except IsADirectoryError:
                pass  # a "folder", not an object: nothing to delete, as in GCS
            except OSError as exc:
                raise self._error(f"could not delete {self.uri(object_path)}: {exc.strerror or exc}") from exc

    def exists(self, object_path: str) -> bool:
        return self._target(object_path).is_file()

    def list(self, prefix: str) -> list[str]:
        self._check_prefix(prefix)
        root = self._root()
        # Only walk the deepest directory the prefix names; then filter by the plain string prefix.
        start = root / prefix.rsplit("/", 1)[0] if "/" in prefix else root
        if not start.is_dir():
            return []
        found = []
        for dirpath, _dirnames, filenames in os.walk(start):
            for filename in filenames:
                if filename.startswith(_LOCAL_TMP_PREFIX):
                    continue  # an upload in progress (or one that died): not an object
                rel = (Path(dirpath) / filename).relative_to(root).as_posix()
                if rel.startswith(prefix):
                    found.append(rel)
        return sorted(found)

    def read_bytes(self, object_path: str) -> bytes:
        target = self._target(object_path)
        try:
            return target.read_bytes()
        except FileNotFoundError:
            raise self._error(f"object '{object_path}' not found in local folder '{self._root()}'") from None
        except OSError as exc:
            raise self._error(f"could not read {self.uri(object_path)}: {exc.strerror or exc}") from exc

    def check(self) -> None:
        """The folder exists (it is created if needed) and a file can be created in it."""
        root = self._root()
        try:
            root.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=root, prefix=_LOCAL_TMP_PREFIX):
                pass
        except OSError as exc:
            raise self._error(
                f"local folder '{root}' is not writable: {type(exc).__name__}: {exc.strerror or exc}"
            ) from exc


# --------------------------------------------------------------------------------------------------
# From the project YAML
# --------------------------------------------------------------------------------------------------

_TYPES: dict[str, type[Destination]] = {"gcs": GCSDestination, "local": LocalDestination}


def destination_from_config(name: str, config: dict) -> Destination:
    """Build a destination from its YAML mapping (``type: gcs|local`` plus that type's keys).

    Unknown types, unknown keys and missing required keys raise DestinationError naming the
    destination; values are never echoed (they may be secrets). No network call is made.
    """
    prefix = f"destination '{name}'"
    if not isinstance(config, dict):
        raise DestinationError(f"{prefix}: expected a mapping with a 'type' key")
    kind = config.get("type")
    if kind not in _TYPES:
        raise DestinationError(
            f"{prefix}: unknown type {kind!r}; expected one of {', '.join(sorted(_TYPES))}"
        )
    cls = _TYPES[kind]
    allowed = {key for key in cls.model_fields if key != "destination_name"}
    settings = {key: value for key, value in config.items() if key != "type"}
    unknown = sorted(set(settings) - allowed)
    if unknown:
        raise DestinationError(
            f"{prefix}: unknown key(s) {', '.join(unknown)} for type {kind}; "
            f"allowed: {', '.join(sorted(allowed))}"
        )
    required = sorted(key for key, field in cls.model_fields.items() if field.is_required())
    missing = [key for key in required if key not in settings]
    if missing:
        raise DestinationError(f"{prefix}: missing required key(s) {', '.join(missing)} for type {kind}")
    try:
        destination = cls(destination_name=name, **settings)
    except pydantic.ValidationError as exc:
        # pydantic errors quote the input value, which may be a key: name only the fields.
        fields = sorted({str(err["loc"][0]) for err in exc.errors() if err.get("loc")})
        detail = f" ({', '.join(fields)})" if fields else ""
        raise DestinationError(f"{prefix}: invalid settings for type {kind}{detail}") from None
    if isinstance(destination, GCSDestination):
        destination.validate_settings()
    return destination

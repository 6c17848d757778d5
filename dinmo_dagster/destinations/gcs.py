"""Google Cloud Storage as a file destination, through the official ``google-cloud-storage`` client.

When ``STORAGE_EMULATOR_HOST`` is set, the client talks to that emulator with anonymous credentials
(``dinmo emulator`` starts one). The Google clients are imported when the first client is made, not
with this module: they take about 0.7 s to import, and every project loads this module's settings model.
"""

from __future__ import annotations

import json
import mimetypes
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

from pydantic import field_validator, model_validator

from dinmo_dagster import secrets
from dinmo_dagster.connectors import register_file_destination
from dinmo_dagster.destinations.base import (
    TRANSIENT_HTTP_STATUSES,
    DestinationError,
    FileDestination,
    FileDestinationConfig,
    describe_exception,
    http_status_of,
    run_with_retries,
)
from dinmo_dagster.destinations.base import is_transient as _is_transient_http
from dinmo_dagster.secrets import EnvRef, Secret

__all__ = ["STORAGE_EMULATOR_ENV_VAR", "GCSConfig", "GCSDestination"]

T = TypeVar("T")

STORAGE_EMULATOR_ENV_VAR = "STORAGE_EMULATOR_HOST"
"""google-cloud-storage's own variable: when set, every client talks to the emulator at that URL."""

# google-cloud-storage requires resumable chunk sizes to be multiples of 256 KiB.
_CHUNK_UNIT = 256 * 1024
# Real GCS rule: 3-63 characters per dot-separated part, lowercase letters, digits, '-', '_', '.'.
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]$")


class GCSConfig(FileDestinationConfig):
    """``{type: gcs, bucket, project, service_account_json: {env: NAME} | service_account_file, ...}``."""

    path_fields: ClassVar[tuple[str, ...]] = ("service_account_file",)

    type: Literal["gcs"]
    bucket: str
    """Name of the bucket (without 'gs://')."""
    project: str | EnvRef | None = None
    """Google Cloud project id; optional (taken from the credentials when omitted)."""
    service_account_json: Secret | None = None
    """JSON text of a service account key, as {env: NAME}."""
    service_account_file: str | None = None
    """Path to a service account key file."""
    retry_attempts: int = 5
    """Maximum number of attempts per operation on transient errors (>= 1)."""
    retry_initial_wait_seconds: float = 0.5
    """Wait before the first retry; doubles on every further retry."""
    retry_max_wait_seconds: float = 8.0
    """Upper bound of one wait between retries."""
    timeout_seconds: float = 120.0
    """Timeout of one HTTP request (connect and read), in seconds."""
    upload_chunk_size_bytes: int = 8 * 1024 * 1024
    """Chunk size of resumable uploads (files above 8 MiB are uploaded resumably); a multiple of 256 KiB."""

    @field_validator("bucket")
    @classmethod
    def _bucket_name(cls, bucket: str) -> str:
        if not _BUCKET_RE.match(bucket):
            raise ValueError(
                f"invalid GCS bucket name {bucket!r} (expected a bare bucket name such as 'my-bucket', "
                "without 'gs://' or a folder)"
            )
        return bucket

    @model_validator(mode="after")
    def _consistent(self) -> GCSConfig:
        if self.service_account_json is not None and self.service_account_file:
            raise ValueError("set service_account_json or service_account_file, not both")
        if self.retry_attempts < 1:
            raise ValueError("retry_attempts must be at least 1")
        if self.retry_initial_wait_seconds < 0 or self.retry_max_wait_seconds < 0:
            raise ValueError("retry wait times must not be negative")
        if self.timeout_seconds <= 0:
            raise ValueError("timeout_seconds must be positive")
        if self.upload_chunk_size_bytes <= 0 or self.upload_chunk_size_bytes % _CHUNK_UNIT:
            raise ValueError("upload_chunk_size_bytes must be a positive multiple of 262144 (256 KiB)")
        return self


# --------------------------------------------------------------------------------------------------
# Errors of the Google clients
# --------------------------------------------------------------------------------------------------


def _status_of(exc: BaseException) -> int | None:
    """The HTTP status an exception of the Google clients (or of requests) carries, if any."""
    from google.api_core import exceptions as api_exceptions  # loaded with the client already
    from google.cloud.storage import exceptions as storage_exceptions

    if isinstance(exc, api_exceptions.GoogleAPICallError) and isinstance(exc.code, int):
        return exc.code
    if isinstance(exc, storage_exceptions.InvalidResponse):
        response = getattr(exc, "response", None)
        return getattr(response, "status_code", None)
    return http_status_of(exc)


def is_transient(exc: BaseException) -> bool:
    """True for errors that another identical attempt may not hit: 408/429/5xx, dropped or refused
    connections, timeouts, a network failure while fetching a token, a corrupted transfer. Everything
    else (401, 403, 404, bad input) is permanent and must fail at once."""
    from google.auth import exceptions as auth_exceptions  # loaded with the client already
    from google.cloud.storage import exceptions as storage_exceptions

    status = _status_of(exc)
    if status is not None:
        return status in TRANSIENT_HTTP_STATUSES
    return _is_transient_http(exc) or isinstance(
        exc,
        (
            auth_exceptions.TransportError,  # network failure while fetching a token
            storage_exceptions.DataCorruption,  # checksum mismatch: re-send the whole object
        ),
    )


def describe(exc: BaseException) -> str:
    """A short, secret-free description of a Google client error: ``HTTP 403: <the server's reason>``."""
    from google.api_core import exceptions as api_exceptions  # loaded with the client already

    text = (exc.message or type(exc).__name__) if isinstance(exc, api_exceptions.GoogleAPICallError) else None
    return describe_exception(exc, status=_status_of(exc), text=text)


# --------------------------------------------------------------------------------------------------
# The destination
# --------------------------------------------------------------------------------------------------


class GCSDestination(FileDestination):
    """Upload export files to a Google Cloud Storage bucket.

    Credentials, in order: ``STORAGE_EMULATOR_HOST`` set -> anonymous credentials against the
    emulator; ``service_account_json`` (the key's JSON text, from an environment variable);
    ``service_account_file`` (a path to a key file); otherwise application default credentials.
    The key is read when the client is made and never appears in ``repr``, logs or errors.
    ``get_client()`` returns the official ``google.cloud.storage.Client`` with these credentials.
    """

    config: GCSConfig

    def __init__(self, config: GCSConfig, *, name: str = "") -> None:
        super().__init__(config, name=name)
        self._client: Any = None

    @property
    def bucket(self) -> str:
        """The bucket's name."""
        return self.config.bucket

    # -- configuration and client ------------------------------------------------------------------

    def _setting(self, field: str) -> Any:
        """The plain value of a setting (an `{env: NAME}` read now); an unset variable is an error."""
        try:
            return secrets.resolve(getattr(self.config, field), key=field)
        except secrets.MissingSecret as exc:
            raise self._error(str(exc)) from None

    def _credentials(self) -> Any:
        """Credentials from the key (JSON text or file), or None for application default ones."""
        from google.oauth2 import service_account  # Google client: import cost only

        key_text = self._setting("service_account_json")
        if key_text:
            credentials = _load_key(
                lambda: service_account.Credentials.from_service_account_info(_json_object(key_text))
            )
            if credentials is None:
                raise self._error("service_account_json is not a valid service account key")
            return credentials
        key_file = self._setting("service_account_file")
        if key_file:
            path = Path(key_file).expanduser()
            if not path.is_file():
                raise self._error(f"service_account_file '{path}' does not exist")
            credentials = _load_key(lambda: service_account.Credentials.from_service_account_file(str(path)))
            if credentials is None:
                raise self._error(f"service_account_file '{path}' is not a valid service account key")
            return credentials
        return None

    def get_client(self) -> Any:
        """The ``google.cloud.storage.Client`` for this destination (created once, then reused)."""
        if self._client is None:
            self._client = self._make_client()
        return self._client

    def _make_client(self) -> Any:
        # Google clients: imported when the first client is made (import cost only)
        from google.auth import exceptions as auth_exceptions
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage

        if os.environ.get(STORAGE_EMULATOR_ENV_VAR):
            # The client would pick anonymous credentials itself; being explicit keeps a configured
            # key (or ADC lookup) from ever being used against a local emulator.
            credentials: Any = AnonymousCredentials()
            project = self._setting("project")
        else:
            credentials = self._credentials()
            project = self._setting("project") or getattr(credentials, "project_id", None)
        # Passing project=None explicitly would mean "no project"; omit it to let ADC infer one.
        kwargs: dict[str, Any] = {"credentials": credentials}
        if project:
            kwargs["project"] = project
        try:
            client = storage.Client(**kwargs)
        except auth_exceptions.DefaultCredentialsError:
            raise self._error(
                "no Google Cloud credentials: set service_account_json or service_account_file, "
                "or configure application default credentials (to try it without a Google Cloud account: "
                "`dinmo emulator`, then export STORAGE_EMULATOR_HOST as it prints)"
            ) from None
        if not _otel_traces_enabled():
            # google-cloud-storage 3.x fetches bucket metadata in a background thread (with its own,
            # long retry) to decorate OpenTelemetry spans. Without tracing it is only an extra,
            # unbounded request per bucket; None is a state the client checks for everywhere.
            client._bucket_metadata_cache = None
        return client

    # -- error handling ----------------------------------------------------------------------------

    def _call(self, what: str, fn: Callable[[], T], *, object_path: str | None = None) -> T:
        """Run one GCS operation with retries; translate the final error into DestinationError."""
        self.get_client()  # credential and settings problems surface here, never retried
        try:
            return run_with_retries(
                fn,
                what=self._msg(f"GCS {what} {self.uri(object_path) if object_path else self.uri('')}"),
                attempts=self.config.retry_attempts,
                initial_wait=self.config.retry_initial_wait_seconds,
                max_wait=self.config.retry_max_wait_seconds,
                should_retry=is_transient,
                describe=describe,
            )
        except DestinationError:
            raise
        except Exception as exc:
            raise self._translate(exc, what, object_path) from exc

    def _translate(self, exc: Exception, what: str, object_path: str | None) -> DestinationError:
        """A clear, secret-free DestinationError for a failed GCS call."""
        from google.auth import exceptions as auth_exceptions  # loaded with the client already

        status = _status_of(exc)
        bucket = self.bucket
        cause = describe(exc)
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
            return self._error(
                f"GCS {what} of {target} failed after {self.config.retry_attempts} attempts: {cause}"
            )
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
                .blob(object_path, chunk_size=self.config.upload_chunk_size_bytes)
            )
            blob.upload_from_filename(
                str(local_path), content_type=content_type, timeout=self.config.timeout_seconds, retry=None
            )

        self._call("upload", attempt, object_path=object_path)
        return size

    def delete(self, object_paths: Sequence[str]) -> None:
        """Delete each object (one request each, retried); a missing object is not an error."""
        from google.api_core import exceptions as api_exceptions  # loaded with the client already

        for object_path in object_paths:
            self._check_object_path(object_path)

            def attempt(path: str = object_path) -> None:
                try:
                    self.get_client().bucket(self.bucket).blob(path).delete(
                        timeout=self.config.timeout_seconds, retry=None
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
                .exists(timeout=self.config.timeout_seconds, retry=None)
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
                    self.bucket, prefix=prefix or None, timeout=self.config.timeout_seconds, retry=None
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
                .download_as_bytes(timeout=self.config.timeout_seconds, retry=None)
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
        timeout = self.config.timeout_seconds
        self._call("check", lambda: list(client.list_blobs(self.bucket, max_results=1, timeout=timeout, retry=None)))
        wanted = [
            "storage.objects.create",
            "storage.objects.delete",
            "storage.objects.get",
            "storage.objects.list",
        ]
        granted = self._call(
            "check",
            lambda: client.bucket(self.bucket).test_iam_permissions(wanted, timeout=timeout, retry=None),
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


def _load_key(load: Callable[[], Any]) -> Any:
    """Run ``load``; None if the key is unusable.

    The DestinationError is raised by the caller *outside* the ``except`` block on purpose: raised
    inside, it would keep the parse error as ``__context__`` (``JSONDecodeError.doc`` holds the
    whole key text) and error reporters that walk the chain could print it.
    """
    from google.auth import exceptions as auth_exceptions  # Google client: import cost only

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
    text = describe(exc)
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


register_file_destination("gcs", GCSConfig, GCSDestination)

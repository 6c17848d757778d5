"""The Google Cloud Storage destination, on ``dagster_gcp``'s ``GCSResource``.

Its own module so that projects without a GCS destination do not import ``dagster_gcp`` and the
Google clients (about 0.7 s per process). ``destinations.destination_from_config`` imports it on use.
"""

from __future__ import annotations

import json
import mimetypes
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from dagster import EnvVar
from dagster_gcp import GCSResource
from google.api_core import exceptions as api_exceptions
from google.auth import exceptions as auth_exceptions
from google.auth.credentials import AnonymousCredentials, Credentials
from google.cloud import storage
from google.oauth2 import service_account
from pydantic import Field, PrivateAttr

from dinmo_dagster.emulator import STORAGE_EMULATOR_ENV_VAR
from dinmo_dagster.resources.destinations import (
    Destination,
    DestinationError,
    _status_of,
    describe_exception,
    is_transient,
    run_with_retries,
)

__all__ = ["GCSDestination"]

T = TypeVar("T")

# google-cloud-storage requires resumable chunk sizes to be multiples of 256 KiB.
_CHUNK_UNIT = 256 * 1024
# Real GCS rule: 3-63 characters per dot-separated part, lowercase letters, digits, '-', '_', '.'.
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]$")


def _resolve_secret(value: str | None) -> str | None:
    """Read a ``dagster.EnvVar`` when the resource is used outside a Dagster run (CLI, tests):
    inside a run Dagster has already replaced it by the variable's value."""
    if isinstance(value, EnvVar):
        return value.get_value()
    return value


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
                "or configure application default credentials (to try it without a Google Cloud account: "
                "`dinmo emulator`, then export STORAGE_EMULATOR_HOST as it prints)"
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

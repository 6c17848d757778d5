"""Google Cloud Storage as a file destination, through the official ``google-cloud-storage`` client.

When ``STORAGE_EMULATOR_HOST`` is set, the client talks to that emulator with anonymous credentials
(``dinmo emulator`` starts one). The Google clients are imported when the first client is made, not
with this module: they take about 0.7 s to import, and every project loads this module's settings model.
"""

from __future__ import annotations

import base64
import json
import mimetypes
import os
import re
import threading
import uuid
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
TEMP_PREFIX = ".dinmo-tmp/"
"""Bucket-level prefix of the temporary pieces of parallel composite uploads: outside every export folder,
so a consumer that loads a folder (Snowpipe, BigQuery external tables, a finalize trigger filtered on
the folder) never sees a piece. ``.dinmo-tmp/<object path>/<upload token>/...``."""
# Real GCS: one compose request takes 1 to 32 source objects (composite-objects page).
_MAX_COMPOSE_SOURCES = 32
# Real GCS: object names are at most 1024 bytes of UTF-8.
_MAX_OBJECT_NAME_BYTES = 1024
# Real GCS rule: 3-63 characters per dot-separated part, lowercase letters, digits, '-', '_', '.'.
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]$")
# GCS compose: at most 32 source objects per request.
_COMPOSE_MAX = 32


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
    upload_workers: int | None = None
    """Concurrent transfers to this bucket: the pieces of a large file, and the files of one sync.
    Default: 4 per CPU core, from 4 to 10 (the HTTP client keeps 10 connections per host)."""
    parallel_upload_threshold_bytes: int = 64 * 1024 * 1024
    """Files of at least this size go as a parallel composite upload (pieces uploaded concurrently as
    temporary objects, then composed); 0 turns composite uploads off."""
    parallel_upload_piece_bytes: int = 32 * 1024 * 1024
    """Size of one piece of a parallel composite upload; a multiple of 256 KiB."""

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
        if self.upload_workers is not None and self.upload_workers < 1:
            raise ValueError("upload_workers must be at least 1")
        if self.parallel_upload_threshold_bytes < 0:
            raise ValueError(
                "parallel_upload_threshold_bytes must not be negative (0 turns composite uploads off)"
            )
        if self.parallel_upload_piece_bytes <= 0 or self.parallel_upload_piece_bytes % _CHUNK_UNIT:
            raise ValueError("parallel_upload_piece_bytes must be a positive multiple of 262144 (256 KiB)")
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
        # Bounds the transfers of all uploads of this destination (files of a sync, pieces of a file).
        self._transfers = threading.BoundedSemaphore(self.upload_concurrency)

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

    @property
    def upload_concurrency(self) -> int:
        """How many transfers this destination runs at once (``upload_workers``, default 4 per core, 4-10):
        a sync uploads that many part files concurrently, and a large file that many pieces."""
        return self.config.upload_workers or min(10, max(4, 4 * (os.cpu_count() or 1)))

    def upload(self, local_path: Path, object_path: str) -> int:
        """Upload ``local_path`` to ``gs://bucket/object_path``, atomically: the object appears whole or
        not at all.

        Below ``parallel_upload_threshold_bytes``: one multipart request up to 8 MiB, a resumable upload
        in ``upload_chunk_size_bytes`` chunks above; a retry re-sends the file. At or above it, a
        *parallel composite upload*, the way ``gcloud storage cp`` uploads large files against the JSON
        API (https://cloud.google.com/storage/docs/parallel-composite-uploads): the file is cut into
        ``parallel_upload_piece_bytes`` pieces, uploaded concurrently (``upload_concurrency`` at once
        for the whole destination) as temporary objects under ``TEMP_PREFIX``, each retried on its own,
        so a transient failure re-sends one piece; then ``compose`` (at most 32 sources per request,
        https://cloud.google.com/storage/docs/composite-objects; more pieces are composed in a tree)
        creates the object and the temporaries are deleted. The composed object's CRC32C is checked
        against the local file's (composite objects have no MD5). XML multipart uploads
        (``transfer_manager.upload_chunks_concurrently``) would avoid the temporaries, but the emulator
        the product ships for trying it and for its tests has no XML multipart API; compose it has.

        Temporaries left by a killed process are removed by :meth:`delete` of the object path, which the
        next sync calls for every file a dead sync journalled. Composite uploads cost one Class A
        operation per piece and per compose; on a bucket whose default class is not Standard, or with
        soft delete, the deleted pieces may be billed (early deletion, soft-delete retention): set
        ``parallel_upload_threshold_bytes: 0`` there.
        """
        self._check_object_path(object_path)
        local_path = Path(local_path)
        if not local_path.is_file():
            raise self._error(f"cannot upload '{local_path}': no such file")
        size = local_path.stat().st_size
        content_type = _content_type(object_path)
        pieces = self._pieces(size, object_path)
        if pieces:
            self._composite_upload(local_path, object_path, size, content_type, pieces)
            return size

        def attempt() -> None:
            blob = (
                self.get_client()
                .bucket(self.bucket)
                .blob(object_path, chunk_size=self.config.upload_chunk_size_bytes)
            )
            blob.upload_from_filename(
                str(local_path), content_type=content_type, timeout=self.config.timeout_seconds, retry=None
            )

        with self._transfers:
            self._call("upload", attempt, object_path=object_path)
        return size

    # -- parallel composite uploads (helpers of upload) ---------------------------------------------

    def _pieces(self, size: int, object_path: str) -> list[tuple[int, int]]:
        """(offset, length) of each piece of a composite upload, or [] to upload the file in one go."""
        threshold = self.config.parallel_upload_threshold_bytes
        piece = self.config.parallel_upload_piece_bytes
        longest = f"{_temp_prefix(object_path)}{'0' * 32}/c99-00000"
        if (
            not threshold
            or size < threshold
            or size <= piece
            or len(longest.encode()) > _MAX_OBJECT_NAME_BYTES
        ):
            return []
        return [(offset, min(piece, size - offset)) for offset in range(0, size, piece)]

    def _composite_upload(
        self, local_path: Path, object_path: str, size: int, content_type: str, pieces: list[tuple[int, int]]
    ) -> None:
        """Upload the pieces concurrently, compose them into ``object_path``, delete the temporaries."""
        from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait

        prefix = f"{_temp_prefix(object_path)}{uuid.uuid4().hex}/"
        names = [f"{prefix}p{index:05d}" for index in range(len(pieces))]
        temporaries = list(names)
        total = len(pieces)
        ok = False
        try:
            with ThreadPoolExecutor(
                min(total, self.upload_concurrency), thread_name_prefix="gcs-piece"
            ) as pool:
                futures = [
                    pool.submit(
                        self._upload_piece, local_path, object_path, name, offset, length, index, total
                    )
                    for index, (name, (offset, length)) in enumerate(zip(names, pieces))
                ]
                expected_crc32c = _file_crc32c(local_path)  # while the pieces travel
                done, _ = wait(futures, return_when=FIRST_EXCEPTION)
                failed = next((f for f in done if f.exception() is not None), None)
                if failed is not None:
                    for future in futures:
                        future.cancel()
                    failed.result()  # raises its DestinationError
            level = 0
            while len(names) > _MAX_COMPOSE_SOURCES:  # a tree of composes: 32 sources per request at most
                level += 1
                groups = [
                    names[i : i + _MAX_COMPOSE_SOURCES] for i in range(0, len(names), _MAX_COMPOSE_SOURCES)
                ]
                names = [
                    self._compose(group, f"{prefix}c{level:02d}-{index:05d}", object_path, None)
                    for index, group in enumerate(groups)
                ]
                temporaries += names
            self._compose(names, object_path, object_path, content_type, expected_crc32c)
            ok = True
        finally:
            try:
                self._remove_temporaries(temporaries)
            except DestinationError:
                if ok:
                    raise  # the sync fails and deletes the file again, temporaries included
                # else: the upload's own error matters more; delete() of the object path retries the clean-up

    def _upload_piece(
        self, local_path: Path, object_path: str, name: str, offset: int, length: int, index: int, total: int
    ) -> None:
        """Upload bytes ``offset .. offset+length`` of the file as the temporary object ``name``."""

        def attempt() -> None:
            blob = (
                self.get_client()
                .bucket(self.bucket)
                .blob(name, chunk_size=self.config.upload_chunk_size_bytes)
            )
            with open(local_path, "rb") as stream:
                stream.seek(offset)
                blob.upload_from_file(
                    stream,
                    size=length,
                    content_type="application/octet-stream",
                    timeout=self.config.timeout_seconds,
                    retry=None,
                )

        with self._transfers:
            self._call(f"upload (piece {index + 1} of {total})", attempt, object_path=object_path)

    def _compose(
        self,
        sources: list[str],
        name: str,
        object_path: str,
        content_type: str | None,
        expected_crc32c: str | None = None,
    ) -> str:
        """Compose ``sources`` (at most 32) into ``name``; check its CRC32C when one is expected."""
        bucket = self.get_client().bucket(self.bucket)

        def attempt() -> Any:
            blob = bucket.blob(name)
            if content_type:
                blob.content_type = content_type
            blob.compose(
                [bucket.blob(source) for source in sources], timeout=self.config.timeout_seconds, retry=None
            )
            return blob

        blob = self._call("compose", attempt, object_path=object_path)
        if expected_crc32c is not None and blob.crc32c != expected_crc32c:
            self.delete([name])
            raise self._error(
                f"GCS upload of {self.uri(object_path)} failed: the composed object's CRC32C {blob.crc32c} "
                f"differs from the file's {expected_crc32c}; the object was deleted"
            )
        return name

    def _remove_temporaries(self, names: Sequence[str]) -> None:
        """Delete temporary objects concurrently (each retried; a missing one is fine)."""
        from concurrent.futures import ThreadPoolExecutor

        if not names:
            return
        with ThreadPoolExecutor(
            min(len(names), self.upload_concurrency), thread_name_prefix="gcs-clean"
        ) as pool:
            for future in [pool.submit(self.delete, [name], temporaries=False) for name in names]:
                future.result()

    def delete(self, object_paths: Sequence[str], *, temporaries: bool = True) -> None:
        """Delete each object (one request each, retried); a missing object is not an error. With
        ``temporaries``, also the pieces a (killed) parallel composite upload of these paths left under
        ``TEMP_PREFIX``: found with one listing of that prefix."""
        from google.api_core import exceptions as api_exceptions  # loaded with the client already

        if temporaries and object_paths:
            prefixes = tuple(_temp_prefix(path) for path in object_paths)
            leftovers = [name for name in self._list_raw(TEMP_PREFIX) if name.startswith(prefixes)]
            self._remove_temporaries(leftovers)
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

    def copy(self, source_path: str, object_path: str) -> int:
        """Copy object ``source_path`` of the bucket to ``object_path`` (GCS ``rewrite``, repeated until
        done: large objects take several calls) and return its size. For a warehouse's unloaded file
        taking its final name; the copy replaces ``object_path`` whole or not at all."""
        self._check_object_path(source_path)
        self._check_object_path(object_path)

        def attempt() -> int:
            bucket = self.get_client().bucket(self.bucket)
            target = bucket.blob(object_path)
            token = None
            while True:
                token, _, _ = target.rewrite(
                    bucket.blob(source_path), token=token, timeout=self.config.timeout_seconds, retry=None
                )
                if token is None:
                    return int(target.size or 0)

        return self._call("copy", attempt, object_path=object_path)

    def compose(self, source_paths: Sequence[str], object_path: str, scratch_prefix: str) -> int:
        """Join objects ``source_paths`` of the bucket, in order, into ``object_path`` and return its size.

        GCS ``compose`` takes at most 32 sources a request: more are joined 32 at a time into objects
        under ``scratch_prefix`` (the caller removes them), level by level. Every request writes a new
        object from unchanged sources, so a retried request gives the same bytes.
        """
        self._check_prefix(scratch_prefix)
        for path in (*source_paths, object_path):
            self._check_object_path(path)
        if not source_paths:
            raise self._error(f"cannot compose {self.uri(object_path)} from no object")
        sources, level = list(source_paths), 0
        while len(sources) > _COMPOSE_MAX:
            joined = []
            for i in range(0, len(sources), _COMPOSE_MAX):
                path = f"{scratch_prefix}_compose-{level}-{i // _COMPOSE_MAX:05d}"
                self._compose_once(sources[i : i + _COMPOSE_MAX], path)
                joined.append(path)
            sources, level = joined, level + 1
        return self._compose_once(sources, object_path)

    def _compose_once(self, source_paths: Sequence[str], object_path: str) -> int:
        def attempt() -> int:
            bucket = self.get_client().bucket(self.bucket)
            target = bucket.blob(object_path)
            target.content_type = _content_type(object_path)
            target.compose(
                [bucket.blob(p) for p in source_paths], timeout=self.config.timeout_seconds, retry=None
            )
            return int(target.size or 0)

        return self._call("compose", attempt, object_path=object_path)

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
        """Object paths under ``prefix``, without the temporaries of uploads in progress."""
        self._check_prefix(prefix)
        return [name for name in self._list_raw(prefix) if not name.startswith(TEMP_PREFIX)]

    def _list_raw(self, prefix: str) -> list[str]:
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


def _temp_prefix(object_path: str) -> str:
    """Where the temporary pieces of uploads of ``object_path`` live (one sub-folder per upload)."""
    return f"{TEMP_PREFIX}{object_path}/"


def _file_crc32c(path: Path) -> str:
    """The file's CRC32C as GCS reports it (base64 of the big-endian value), read in 4 MiB blocks."""
    import google_crc32c  # installed with google-cloud-storage

    checksum = google_crc32c.Checksum()
    with open(path, "rb") as stream:
        while block := stream.read(4 * 1024 * 1024):
            checksum.update(block)
    return base64.b64encode(checksum.digest()).decode("ascii")


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

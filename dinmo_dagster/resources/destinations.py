"""Destinations: where finished export files go.

A destination receives files that the shared writer has already produced locally and stores them
under an *object path* (``"folder/name.csv"``: slash-separated, relative, no empty / ``.`` / ``..``
segment). Two file destinations exist:

- :class:`GCSDestination` (in ``gcs.py``, imported on first use): a Google Cloud Storage bucket,
  through the official ``google-cloud-storage`` client, built on ``dagster_gcp``'s
  :class:`GCSResource`. When ``STORAGE_EMULATOR_HOST`` is set it talks, with anonymous credentials,
  to that emulator.
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

import logging
import os
import random
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
from dagster import ConfigurableResource
from pydantic import Field

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = [
    "Destination",
    "DestinationError",
    "GCSDestination",  # noqa: F822 - provided lazily by __getattr__ (gcs.py)
    "LocalDestination",
    "RecordDestination",
    "RecordResult",
    "destination_from_config",
    "run_with_retries",
]

logger = logging.getLogger("dinmo_dagster.destinations")

T = TypeVar("T")

# HTTP statuses worth another try: request timeout, rate limiting, server-side trouble.
TRANSIENT_HTTP_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
# Causes quoted in messages are cut to this length (GCS error bodies can be long).
_MAX_CAUSE_CHARS = 300
# Prefix of the temporary files LocalDestination writes before renaming; list() hides them.
_LOCAL_TMP_PREFIX = ".dinmo-tmp-"


def process_umask() -> int:
    """The process's file mode creation mask, read without changing it.

    Linux reports it in ``/proc/self/status``; elsewhere it is read by setting and restoring it, which
    is only racy against files created by other threads at that very instant.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


class DestinationError(Exception):
    """A destination operation failed. The message names the destination, the bucket or folder and
    the cause; it never contains a secret (service account key, token)."""


# --------------------------------------------------------------------------------------------------
# Retries (shared by every network destination)
# --------------------------------------------------------------------------------------------------


def _status_of(exc: BaseException) -> int | None:
    """The HTTP status an exception carries, if any."""
    from google.api_core import exceptions as api_exceptions
    from google.cloud.storage import exceptions as storage_exceptions

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
    from google.auth import exceptions as auth_exceptions
    from google.cloud.storage import exceptions as storage_exceptions

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
    from google.api_core import exceptions as api_exceptions

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

    def validate_settings(self) -> None:
        """Check the settings without any network call; raise DestinationError on a bad one."""

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
# Local folder
# --------------------------------------------------------------------------------------------------


class LocalDestination(Destination):
    """Write export files into a local folder, under the same object paths as in a bucket.

    Uploads hard-link (or, across file systems, copy) the file to a temporary name in the target
    directory and ``os.replace`` it onto the final name, so a reader never sees a half-written file.
    Files get mode ``0666`` minus the process umask (``0644`` with the usual ``022``), as any tool's
    files do, although the writer's part files are private (``0600``).
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
            # The part file is private (0600); the delivered file gets the mode any tool's files get.
            os.chmod(tmp, 0o666 & ~process_umask())
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

_TYPES = ("gcs", "local")


def _destination_class(kind: str) -> type[Destination]:
    if kind == "gcs":  # imported on use: dagster_gcp and the Google clients take ~0.7 s to import
        from dinmo_dagster.resources.gcs import GCSDestination

        return GCSDestination
    return LocalDestination


def __getattr__(name: str) -> Any:
    if name == "GCSDestination":
        return _destination_class("gcs")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
    cls = _destination_class(kind)
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
    destination.validate_settings()
    return destination

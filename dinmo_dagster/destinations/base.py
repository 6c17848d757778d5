"""The `FileDestination` adapter every file destination implements, and its retry policy.

A file destination receives files that the shared writer has already produced locally and stores
them under an *object path* (``"folder/name.csv"``: slash-separated, relative, no empty / ``.`` /
``..`` segment). Every upload is atomic per object: a failed upload never leaves a partial object
under its final name. Failures raise :class:`DestinationError`, which names the destination, the
bucket or folder and the cause, and never contains a secret.

:func:`run_with_retries` is the retry policy of network destinations: transient errors (408, 429,
5xx, dropped connections, timeouts) are retried with bounded exponential backoff and jitter
(``tenacity``); permanent ones fail at once.

Plain Python: no Dagster import (the Dagster resource is ``dinmo_dagster.resources.DestinationResource``).
"""

from __future__ import annotations

import logging
import random
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import requests
import tenacity

from dinmo_dagster.connectors import ConnectorConfig

__all__ = [
    "TRANSIENT_HTTP_STATUSES",
    "DestinationError",
    "FileDestination",
    "FileDestinationConfig",
    "describe_exception",
    "http_status_of",
    "is_transient",
    "run_with_retries",
]

logger = logging.getLogger("dinmo_dagster.destinations")

T = TypeVar("T")

# HTTP statuses worth another try: request timeout, rate limiting, server-side trouble.
TRANSIENT_HTTP_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
# Causes quoted in messages are cut to this length (error bodies can be long).
MAX_CAUSE_CHARS = 300


class DestinationError(Exception):
    """A destination operation failed. The message names the destination, the bucket or folder and
    the cause; it never contains a secret (service account key, token)."""


class FileDestinationConfig(ConnectorConfig):
    """The settings of a ``destinations:`` entry that receives files."""


# --------------------------------------------------------------------------------------------------
# Retries (shared by every network destination)
# --------------------------------------------------------------------------------------------------


def http_status_of(exc: BaseException) -> int | None:
    """The HTTP status a ``requests`` error carries, if any."""
    if isinstance(exc, requests.HTTPError) and exc.response is not None:
        return exc.response.status_code
    return None


def is_transient(exc: BaseException) -> bool:
    """True for errors that another identical attempt may not hit: 408/429/5xx, dropped or refused
    connections, timeouts. Everything else (401, 403, 404, bad input) is permanent."""
    status = http_status_of(exc)
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
        ),
    )


def describe_exception(exc: BaseException, *, status: int | None = None, text: str | None = None) -> str:
    """A short, secret-free description of an error for messages and logs: ``HTTP 503: ...`` or
    ``ConnectionError: ...``. ``status`` and ``text`` override what the exception itself says."""
    status = status if status is not None else http_status_of(exc)
    text = " ".join((text or str(exc) or type(exc).__name__).split())
    if len(text) > MAX_CAUSE_CHARS:
        text = text[: MAX_CAUSE_CHARS - 3] + "..."
    return f"HTTP {status}: {text}" if status is not None else f"{type(exc).__name__}: {text}"


def run_with_retries(
    fn: Callable[[], T],
    *,
    what: str,
    attempts: int,
    initial_wait: float,
    max_wait: float,
    should_retry: Callable[[BaseException], bool] = is_transient,
    describe: Callable[[BaseException], str] = describe_exception,
) -> T:
    """Call ``fn`` until it succeeds, retrying transient errors with exponential backoff.

    At most ``attempts`` calls; waits grow from ``initial_wait`` doubling up to ``max_wait``, plus
    up to ``initial_wait`` of random jitter (so parallel syncs hitting a 429 do not retry in step).
    Each retry is logged at WARNING on ``dinmo_dagster.destinations`` with ``what`` (which must not
    contain secrets) and ``describe(error)``. The last error, or the first permanent one, is re-raised
    unchanged.
    """

    def log_retry(state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        wait = state.next_action.sleep if state.next_action else 0.0
        logger.warning(
            "%s failed (attempt %d of %d): %s; retrying in %.2fs",
            what,
            state.attempt_number,
            attempts,
            describe(exc) if exc else "unknown error",
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
# The interface
# --------------------------------------------------------------------------------------------------


class FileDestination(ABC):
    """A place that stores finished export files under object paths (``"folder/name.csv"``).

    Built from the destination's settings (``config``, secrets unresolved) and its name, which
    messages quote. Every method raises :class:`DestinationError` on failure.
    """

    def __init__(self, config: FileDestinationConfig, *, name: str = "") -> None:
        self.config = config
        self.destination_name = name

    def __repr__(self) -> str:
        # the type and name only: a setting may be a secret
        return f"{type(self).__name__}(destination={self.destination_name!r}, type={self.config.type!r})"

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

    @property
    def upload_concurrency(self) -> int:
        """How many files of one sync may be uploaded at once: 1 (one after the other) unless a network
        destination says more."""
        return 1

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

"""The transport every platform sends through: one ``requests.Session`` per delivery, the shared
rate limiter, and bounded retries with ``tenacity``.

- 429 and the platform's "slow down" codes: every worker pauses for ``Retry-After`` (or until
  ``X-RateLimit-Reset``) when the platform gives one, otherwise the sender backs off exponentially;
  both count as time spent waiting on rate limits. ``X-RateLimit-Remaining: 0`` on any answer also
  holds every worker until ``X-RateLimit-Reset``. A wait longer than ``RetryPolicy.max_retry_after_seconds`` (an hourly quota, a
  migration) ends the delivery early instead (:class:`QuotaExhaustedError`).
- 408, 5xx, timeouts and connection resets: exponential backoff with jitter, bounded attempts.
- 401 / 403 and the platform's auth codes: :class:`PlatformAuthError` at once, no retry; except
  that an adapter whose ``renew_auth`` renews an expired OAuth access token (``oauth.py``) gets the
  request sent once more with the new token.

Requests go straight to the connection pool of the session's ``requests`` adapter (urllib3) when
``requests`` itself would send them there unchanged: a plain ``HTTPAdapter``, no proxy for the URL
(``HTTP(S)_PROXY`` / ``NO_PROXY``), no ``.netrc`` entry for the host, no credentials in the URL,
no session auth, hooks or cookies. It costs about a third of the CPU of ``Session.request`` (which reads the environment,
proxies and ``.netrc`` again for every request), and under the GIL that is what bounds a fast
platform's throughput. TLS verification is the session's (``REQUESTS_CA_BUNDLE``, certifi). Anything
else (a proxy, a mounted custom adapter, a redirect answer) goes through ``Session.request`` as before.

Nothing here logs or raises a header value, a body or a secret; messages quote the platform's own
error message with the destination's secrets masked.
"""

from __future__ import annotations

import json
import logging
import math
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode, urlsplit

import requests
import tenacity
import urllib3
from requests.adapters import HTTPAdapter
from requests.utils import get_netrc_auth, requote_uri, select_proxy
from typing_extensions import Self

from dinmo_dagster.platforms.base import (
    HttpResponse,
    PreparedRequest,
    ResponseKind,
    Signal,
    json_default,
    rate_limit_reset,
)
from dinmo_dagster.platforms.errors import PlatformAuthError, PlatformRequestError, QuotaExhaustedError
from dinmo_dagster.platforms.ratelimit import RateLimiter

if TYPE_CHECKING:
    from dinmo_dagster.platforms.base import Platform

__all__ = ["RetryPolicy", "Transport"]

logger = logging.getLogger("dinmo_dagster.platforms")


@dataclass(frozen=True)
class RetryPolicy:
    """Bounds of the retries of one request.

    ``max_attempts`` counts sends of a request that keeps hitting transient errors;
    ``max_rate_limited_attempts`` those that keep getting 429s (a rate-limit storm is normal and
    ridden out, but not forever). Waits grow from ``initial_wait_seconds`` doubling up to
    ``max_wait_seconds``. ``max_retry_after_seconds`` is the longest ``Retry-After`` honoured inside
    a run; ``job_timeout_seconds`` bounds the polling of one asynchronous job.
    """

    max_attempts: int = 6
    max_rate_limited_attempts: int = 30
    initial_wait_seconds: float = 0.5
    max_wait_seconds: float = 30.0
    max_retry_after_seconds: float = 900.0
    max_record_retries: int = 2
    job_timeout_seconds: float = 3600.0


def _limiter_of(platform: Platform) -> RateLimiter:
    """The platform's documented limit (following its announcements up to its highest tier), plus
    the user's ``rate_limit`` as a fixed limit of its own period."""
    limits = platform.limits
    also = []
    user = platform.settings.rate_limit
    if user is not None:
        count = max(1, math.floor(user.requests))
        also.append((count, user.per_seconds * count / user.requests))
    return RateLimiter(
        limits.requests_per_window,
        limits.window_seconds,
        max_rate=(limits.max_requests_per_window or limits.requests_per_window) / limits.window_seconds,
        also=also,
    )


class _Retryable(Exception):
    """A send worth repeating; carries what the platform said."""

    def __init__(self, description: str, signal: Signal | None, rate_limited: bool) -> None:
        super().__init__(description)
        self.description = description
        self.signal = signal
        self.rate_limited = rate_limited
        self.pause = 0.0  # seconds until the next attempt, for the log


_HTTP_ADAPTER_SEND = HTTPAdapter.send  # a patched or overridden send (test doubles) disables the direct path


class _AuthRenewed(Exception):
    """The platform refused an expired access token and the adapter renewed it: send once more."""


class _Redirected(Exception):
    """The direct path got a redirect: ``requests`` follows it (the request is sent through it)."""


@dataclass(frozen=True)
class _Direct:
    """How ``requests`` would send to one origin (scheme, host, port), resolved once per delivery."""

    origin: str  # ``https://host:port`` as the URLs spell it
    adapter: HTTPAdapter
    verify: Any
    cert: Any
    headers: Mapping[str, str]  # the session's default headers


class Transport:
    """Sends a platform's :class:`PreparedRequest` s; thread-safe, one per delivery."""

    def __init__(
        self,
        platform: Platform,
        *,
        limiter: RateLimiter | None = None,
        retry: RetryPolicy | None = None,
        session: requests.Session | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.platform = platform
        self.limiter = limiter or _limiter_of(platform)
        self.retry = retry or RetryPolicy()
        self._session = session or requests.Session()
        self._own_session = session is None
        self._sleep = sleep
        self._lock = threading.Lock()
        self._quota_message: str | None = None
        self._auth_error: PlatformAuthError | None = None
        self._direct: dict[str, _Direct | None] = {}  # origin -> its direct path (None: through requests)
        self._pools: dict[str, Any] = {}  # origin -> the adapter's urllib3 pool for it
        self.requests = 0
        self.retries = 0
        self.rate_limit_wait_seconds = 0.0
        self.retry_wait_seconds = 0.0

    def close(self) -> None:
        """Close the HTTP session (if this transport opened it)."""
        if self._own_session:
            self._session.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _count(self, **amounts: float) -> None:
        with self._lock:
            for name, amount in amounts.items():
                setattr(self, name, getattr(self, name) + amount)

    def _url(self, path: str) -> str:
        if path.startswith(("http://", "https://")):
            return path
        return self.platform.base_url.rstrip("/") + "/" + path.lstrip("/")

    # -- one send -----------------------------------------------------------------------------------

    def send(self, request: PreparedRequest) -> HttpResponse:
        """Send ``request`` until it gets an answer the adapter can read.

        Raise PlatformAuthError (credentials refused), QuotaExhaustedError (quota used up, or the
        platform asked for a wait longer than the policy allows) or PlatformRequestError (retries
        ran out).
        """
        try:
            return self._attempt(request)
        except _Retryable as exc:
            # Most sends succeed at once: the retry machinery is built only when one did not.
            return self._retry(request, exc)

    def _retry(self, request: PreparedRequest, first: _Retryable) -> HttpResponse:
        """Go on sending ``request`` after its first attempt failed with ``first``."""
        what = f"{request.method} {request.path}"
        tries = {"transient": 0, "rate_limited": 0}
        failed = [first]

        def attempt(request: PreparedRequest) -> HttpResponse:
            if failed:
                raise failed.pop()  # the first attempt's failure, counted and waited as any other
            return self._attempt(request)

        def stop(state: tenacity.RetryCallState) -> bool:
            exc = state.outcome.exception() if state.outcome else None
            if not isinstance(exc, _Retryable):
                return True
            kind = "rate_limited" if exc.rate_limited else "transient"
            tries[kind] += 1
            limit = self.retry.max_rate_limited_attempts if exc.rate_limited else self.retry.max_attempts
            return tries[kind] >= limit

        def wait(state: tenacity.RetryCallState) -> float:
            exc = state.outcome.exception() if state.outcome else None
            assert isinstance(exc, _Retryable)
            retry_after = exc.signal.retry_after if exc.signal else None
            if exc.rate_limited and retry_after is not None:
                exc.pause = retry_after  # _handle paused the limiter: every worker holds
                return 0.0
            count = tries["rate_limited" if exc.rate_limited else "transient"]
            initial = self._backoff_start(exc.rate_limited)
            backoff = min(self.retry.max_wait_seconds, initial * 2 ** (count - 1))
            backoff += random.uniform(0, initial)  # jitter: parallel senders do not retry in step
            if exc.rate_limited:
                # The window is full for every worker, not only this one: hold them all.
                self.limiter.pause(backoff)
                exc.pause = backoff
                return 0.0
            exc.pause = max(backoff, retry_after or 0.0)
            return exc.pause

        def before_sleep(state: tenacity.RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            assert isinstance(exc, _Retryable)
            # Rate-limit pauses are spent (and counted) in the limiter's acquire(); backoffs here.
            self._count(retries=1, retry_wait_seconds=0.0 if exc.rate_limited else exc.pause)
            logger.warning(
                "%s: %s got %s; retrying in %.2fs", self.platform.label, what, exc.description, exc.pause
            )

        retrying = tenacity.Retrying(
            stop=stop,
            wait=wait,
            retry=tenacity.retry_if_exception_type(_Retryable),
            before_sleep=before_sleep,
            sleep=self._sleep,
            reraise=True,
        )
        try:
            return retrying(attempt, request)
        except _Retryable as exc:
            attempts = tries["rate_limited"] + tries["transient"]
            raise PlatformRequestError(
                f"{self.platform.label}: {what} failed after {attempts} attempts: {exc.description}"
            ) from None

    def _backoff_start(self, rate_limited: bool) -> float:
        if rate_limited:
            # Without Retry-After, start near the time one request slot takes to free up.
            limits = self.platform.effective_limits()
            return max(0.05, limits.window_seconds / limits.requests_per_window)
        return self.retry.initial_wait_seconds

    def _attempt(self, request: PreparedRequest) -> HttpResponse:
        try:
            return self._attempt_once(request, renew=True)
        except _AuthRenewed:
            # Once per request: a fresh token refused again is a real refusal.
            return self._attempt_once(request, renew=False)

    def _attempt_once(self, request: PreparedRequest, *, renew: bool) -> HttpResponse:
        # Once the platform refused the credentials or said the quota is gone, nothing more is sent.
        if self._auth_error is not None:
            raise self._auth_error
        if self._quota_message is not None:
            raise QuotaExhaustedError(f"{self.platform.label}: {self._quota_message}")
        waited = self.limiter.acquire()
        self._count(requests=1, rate_limit_wait_seconds=waited)
        if request.call is not None:
            # A client-library call (gRPC): the adapter answers with the HTTP equivalent.
            return self._answer(request.call(), request, {}, renew)
        headers = dict(request.headers or {})
        data = None
        if request.json is not None:
            # Encoded here (not by requests) so decimals and timestamps keep their exact text.
            data = json.dumps(request.json, separators=(",", ":"), ensure_ascii=False, default=json_default)
            data = data.encode("utf-8")
            headers.setdefault("Content-Type", "application/json")
        auth = self.platform.auth_headers()
        headers.update(auth)
        url = self._url(request.path)
        direct = self._direct_path(url)
        if direct is not None:
            try:
                return self._answer(self._send_direct(direct, request, url, data, headers), request, auth, renew)
            except _Redirected:
                pass  # requests follows the redirect
        try:
            raw = self._session.request(
                request.method,
                url,
                params=request.params,
                data=data,
                headers=headers,
                timeout=self.platform.settings.timeout_seconds,
            )
        except requests.Timeout:
            raise _Retryable("a timeout", None, rate_limited=False) from None
        except (requests.ConnectionError, ConnectionError) as exc:
            raise _Retryable(f"a connection error ({type(exc).__name__})", None, rate_limited=False) from None
        response = HttpResponse(
            status=raw.status_code,
            headers={k.lower(): v for k, v in raw.headers.items()},
            content=raw.content,
        )
        return self._answer(response, request, auth, renew)

    def _direct_path(self, url: str) -> _Direct | None:
        """The direct path to ``url``'s origin, or None when ``requests`` would do more than send."""
        parts = urlsplit(url)
        origin = f"{parts.scheme}://{parts.netloc}"
        if origin in self._direct:
            return self._direct[origin]
        session = self._session
        adapter = session.get_adapter(url)
        direct = None
        if (
            type(adapter) is HTTPAdapter
            and HTTPAdapter.send is _HTTP_ADAPTER_SEND
            and parts.scheme in ("http", "https")
            and "@" not in parts.netloc  # credentials in the URL: requests makes them a Basic auth header
            and session.auth is None
            and not any(session.hooks.get("response") or ())
            and not session.cookies
            and not session.params
            and not (session.trust_env and get_netrc_auth(url))
        ):
            settings = session.merge_environment_settings(url, {}, None, None, None)
            if not select_proxy(url, settings["proxies"]):
                direct = _Direct(origin, adapter, settings["verify"], settings["cert"], dict(session.headers))
        with self._lock:
            self._direct[origin] = direct
        return direct

    def _send_direct(
        self, direct: _Direct, request: PreparedRequest, url: str, data: bytes | None, headers: dict[str, str]
    ) -> HttpResponse:
        """Send through the adapter's urllib3 pool, as ``requests`` would (same headers, TLS settings,
        timeouts); connection errors and timeouts raise ``_Retryable`` as they do through requests."""
        if request.params:
            url += ("&" if "?" in url else "?") + urlencode(list(request.params.items()), doseq=True)
        url = requote_uri(url)
        target = url.removeprefix(direct.origin)
        sent = {**direct.headers, **headers}
        if data is not None:
            sent["Content-Length"] = str(len(data))
        elif request.method in ("POST", "PUT", "PATCH"):
            sent["Content-Length"] = "0"
        timeout = self.platform.settings.timeout_seconds
        try:
            pool = self._pools.get(direct.origin)
            if pool is None or pool.pool is None:  # first use, or the adapter's pool manager closed it
                stub = requests.PreparedRequest()
                stub.url = url
                pool = direct.adapter.get_connection_with_tls_context(stub, direct.verify, cert=direct.cert)
                if url.startswith("https:"):
                    direct.adapter.cert_verify(pool, url, direct.verify, direct.cert)
                self._pools[direct.origin] = pool
            raw = pool.urlopen(
                request.method,
                target or "/",
                body=data,
                headers=sent,
                redirect=False,
                assert_same_host=False,
                retries=False,
                preload_content=True,
                decode_content=True,
                timeout=urllib3.Timeout(connect=timeout, read=timeout),
            )
        except urllib3.exceptions.NewConnectionError:
            raise _Retryable("a connection error (ConnectionError)", None, rate_limited=False) from None
        except urllib3.exceptions.TimeoutError:
            raise _Retryable("a timeout", None, rate_limited=False) from None
        except urllib3.exceptions.SSLError:
            raise _Retryable("a connection error (SSLError)", None, rate_limited=False) from None
        except (urllib3.exceptions.ProtocolError, urllib3.exceptions.PoolError, urllib3.exceptions.ProxyError,
                OSError):
            raise _Retryable("a connection error (ConnectionError)", None, rate_limited=False) from None
        except urllib3.exceptions.DecodeError as exc:
            raise requests.exceptions.ContentDecodingError(str(exc)) from None
        except urllib3.exceptions.LocationValueError as exc:
            raise requests.exceptions.InvalidURL(str(exc)) from None
        except urllib3.exceptions.HTTPError as exc:
            raise requests.RequestException(f"{type(exc).__name__}: {exc}") from None
        if 300 <= raw.status < 400 and raw.headers.get("location"):
            raise _Redirected()
        return HttpResponse(
            status=raw.status,
            headers={k.lower(): v for k, v in raw.headers.items()},
            content=raw.data,
        )

    def _answer(
        self, response: HttpResponse, request: PreparedRequest, auth: Mapping[str, str], renew: bool
    ) -> HttpResponse:
        """Read the platform's signals in ``response``: return it, or raise what it means (an auth
        refusal the adapter can fix by renewing its token, when ``renew``: send once more)."""
        quota = self.platform.observe(response, self.limiter) or self._observe_common(response)
        if quota is not None:
            with self._lock:
                self._quota_message = quota
        signal = self.platform.classify(response)
        if signal.kind is ResponseKind.AUTH and renew and self.platform.renew_auth(response, auth):
            raise _AuthRenewed()
        return self._handle(signal, response, request)

    def _observe_common(self, response: HttpResponse) -> str | None:
        """``X-RateLimit-Remaining: 0``: hold every worker until ``X-RateLimit-Reset``, or stop when
        that is further away than a sync waits."""
        remaining, delay = rate_limit_reset(response)
        if remaining != 0 or delay is None or response.status == 429:
            return None  # a 429 is handled with its own wait
        if delay > self.retry.max_retry_after_seconds:
            return f"the platform's rate limit resets in {delay:.0f}s (X-RateLimit-Remaining: 0)"
        self.limiter.pause(delay)
        return None

    def _quota_exhausted(self, message: str) -> QuotaExhaustedError:
        # Remembered: the other workers' next sends stop before reaching the platform.
        with self._lock:
            self._quota_message = message
        return QuotaExhaustedError(f"{self.platform.label}: {message}")

    def _handle(self, signal: Signal, response: HttpResponse, request: PreparedRequest) -> HttpResponse:
        label = self.platform.label
        message = self.platform.redact(signal.message or f"HTTP {response.status}")
        if signal.kind is ResponseKind.OK:
            return response
        if signal.kind is ResponseKind.AUTH:
            error = PlatformAuthError(
                f"{label}: the platform refused the credentials (HTTP {response.status}): {message}"
            )
            with self._lock:
                self._auth_error = self._auth_error or error
            raise error
        if signal.kind is ResponseKind.QUOTA:
            raise self._quota_exhausted(message)
        if signal.retry_after is not None and signal.retry_after > self.retry.max_retry_after_seconds:
            raise self._quota_exhausted(
                f"the platform asked to wait {signal.retry_after:.0f}s (HTTP {response.status}: "
                f"{message}), longer than a sync waits ({self.retry.max_retry_after_seconds:.0f}s)"
            )
        rate_limited = signal.kind is ResponseKind.RATE_LIMITED
        if rate_limited and signal.retry_after is not None:
            self.limiter.pause(signal.retry_after)
        raise _Retryable(f"HTTP {response.status}: {message}", signal, rate_limited)

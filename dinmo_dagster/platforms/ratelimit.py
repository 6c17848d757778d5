"""A thread-safe client-side rate limiter shared by every worker of one delivery.

It allows at most N request starts in any sliding window of W seconds (the way platforms state
their limits: "100 requests per 10 seconds"), plus a small safety margin so that network jitter
never makes the platform count one request too many. It can hold several such limits at once (the
platform's own, and a lower ``rate_limit`` a user set): a request starts when every one allows it.
A platform's "wait" signal (``Retry-After``) pauses every worker, not only the one that got it.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence

__all__ = ["RateLimiter"]

# Share of the window added as margin: requests are counted by the platform on arrival, not at send.
_MARGIN_SHARE = 0.02


class _Window:
    def __init__(self, max_requests: int, seconds: float) -> None:
        if max_requests < 1 or seconds <= 0:
            raise ValueError("a rate limit needs at least 1 request per positive window")
        self.max = int(max_requests)
        self.seconds = float(seconds)
        self.starts: deque[float] = deque()

    def delay(self, now: float) -> float:
        """Seconds until this window allows one more start (0: now)."""
        span = self.seconds * (1 + _MARGIN_SHARE)
        while self.starts and self.starts[0] <= now - span:
            self.starts.popleft()
        if len(self.starts) < self.max:
            return 0.0
        return self.starts[len(self.starts) - self.max] + span - now


class RateLimiter:
    """At most ``max_requests`` starts in any window of ``window_seconds``, and within every
    ``(requests, seconds)`` of ``also`` (fixed limits, such as a user's ``rate_limit``).

    The first limit is the platform's: :meth:`adopt` replaces it with what the platform announces
    in its headers, never above ``max_rate`` requests per second (its highest documented tier).
    """

    def __init__(
        self,
        max_requests: int,
        window_seconds: float,
        *,
        max_rate: float | None = None,
        also: Sequence[tuple[int, float]] = (),
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._platform = _Window(max_requests, window_seconds)
        self._fixed = [_Window(n, s) for n, s in also]
        self._max_rate = max_rate if max_rate is not None else max_requests / window_seconds
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._paused_until = 0.0

    @property
    def max_requests(self) -> int:
        """Requests the platform's limit allows per window."""
        return self._platform.max

    @property
    def window_seconds(self) -> float:
        """Length of the platform's window, in seconds."""
        return self._platform.seconds

    def acquire(self) -> float:
        """Block until a request may start; return the seconds spent waiting."""
        waited = 0.0
        while True:
            with self._lock:
                now = self._clock()
                delay = max(
                    self._paused_until - now,
                    self._platform.delay(now),
                    *(w.delay(now) for w in self._fixed),
                )
                if delay <= 0:
                    for window in (self._platform, *self._fixed):
                        window.starts.append(now)
                    return waited
            delay = max(delay, 0.001)
            self._sleep(delay)
            waited += delay

    def pause(self, seconds: float) -> None:
        """Hold every acquirer for ``seconds`` from now (a platform's ``Retry-After``)."""
        with self._lock:
            self._paused_until = max(self._paused_until, self._clock() + max(0.0, seconds))

    def adopt(self, max_requests: int, window_seconds: float) -> None:
        """Follow the limit a platform announces (response headers), never above ``max_rate``."""
        if max_requests < 1 or window_seconds <= 0:
            return
        allowed = max(1, min(int(max_requests), math.floor(self._max_rate * window_seconds + 1e-9)))
        with self._lock:
            starts = self._platform.starts
            self._platform = _Window(allowed, window_seconds)
            self._platform.starts = starts

"""What the API fakes of the attribute and messaging platforms (Brevo, Klaviyo, Iterable, Intercom,
SendGrid, Mailchimp, Actito, Batch, Splio, Zendesk, June, Dialog Insight, All My SMS, Selligent) share:
one ``FakeServer`` on loopback and its life cycle, the requests it got, and the bookkeeping of their
answers. Each fake keeps its own routes, authentication and rate-limit signals (its platform's own
error format), written from that platform's documentation in its module.
"""

from __future__ import annotations

import threading
import time

from typing_extensions import Self

from dinmo_dagster.fakes.server import FakeRequest, FakeResponse, FakeServer


class RecordingFake:
    """A platform fake served by a ``FakeServer`` on a free loopback port (a context manager).

    ``requests`` holds every request received, ``answers`` the ``(method, path, status)`` of every answer
    (so a test can count the 429s it was sent). Each request waits ``latency`` seconds outside the lock (so
    requests overlap as they would at the platform), then ``_answer`` builds the answer under the lock.
    ``throttle(n)`` arms ``_throttled``: the fake's ``_answer`` refuses that many calls with its platform's
    own HTTP 429 and decrements it.
    """

    def __init__(self, latency: float = 0.0) -> None:
        self.latency = latency
        self.answers: list[tuple[str, str, int]] = []
        self._lock = threading.Lock()
        self._throttled = 0
        self.server = FakeServer(self._app)
        self.url = self.server.url

    def __enter__(self) -> Self:
        self.server.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.__exit__(*exc)

    @property
    def requests(self) -> list[FakeRequest]:
        """Every request received."""
        return self.server.requests

    def throttle(self, count: int) -> None:
        """Answer the next ``count`` API calls with HTTP 429."""
        with self._lock:
            self._throttled += count

    def _app(self, request: FakeRequest) -> FakeResponse:
        if self.latency:
            time.sleep(self.latency)  # outside the lock: requests overlap as they would at the platform
        with self._lock:
            response = self._answer(request)
            self.answers.append((request.method, request.path, response.status))
            return response

    def _answer(self, request: FakeRequest) -> FakeResponse:
        """The platform's answer to ``request`` (called under the lock)."""
        raise NotImplementedError

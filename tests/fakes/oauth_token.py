"""What the OAuth-guarded ad-platform fakes (Snapchat, Reddit, LinkedIn, Criteo) share: one local server
that serves both the platform's API and its token endpoint, the access tokens it issued (each with its
expiry), and the bookkeeping tests arrange and read (every answer, 429 storms, one-off failures,
tokens that expire after some calls).

Each fake subclasses :class:`OAuthTokenFake`, names its token endpoint (``token_path``, and
``token_prefix`` where every path below a folder counts as a token request) and keeps its own
documented differences: which grant it accepts, how the client authenticates, and the status and body
of each refusal (its ``_token``), and the body of its 401 (its ``_api``).
"""

from __future__ import annotations

import itertools
import threading
import time
import urllib.parse

from typing_extensions import Self

from dinmo_dagster.fakes.server import FakeRequest, FakeResponse, FakeServer


def token_form(request: FakeRequest) -> dict[str, str]:
    """The form fields of a token request (``application/x-www-form-urlencoded``)."""
    return dict(urllib.parse.parse_qsl(request.raw_body.decode()))


def refuse_form(
    form: dict[str, str], *, client_id: str, client_secret: str, client_status: int, client_description: str,
    grant_type: str, refresh_token: str | None = None, refresh_error: str = "invalid_grant",
    refresh_description: str = "Invalid refresh token",
) -> FakeResponse | None:
    """The refusal of a token request whose form carries the client (``client_id``/``client_secret``):
    a wrong client (``client_status``, ``invalid_client``), another grant than ``grant_type`` (HTTP 400
    ``unsupported_grant_type``), or, when ``refresh_token`` is given, another refresh token (HTTP 400
    ``refresh_error``); None when the request is good."""
    if form.get("client_id") != client_id or form.get("client_secret") != client_secret:
        return FakeResponse(client_status, {"error": "invalid_client", "error_description": client_description})
    if form.get("grant_type") != grant_type:
        return FakeResponse(400, {"error": "unsupported_grant_type", "error_description": "Unsupported grant"})
    if refresh_token is not None and form.get("refresh_token") != refresh_token:
        return FakeResponse(400, {"error": refresh_error, "error_description": refresh_description})
    return None


class OAuthTokenFake:
    """A platform fake with a token endpoint at ``token_path`` on the same server (a context manager)."""

    token_path = "/token"
    token_prefix: str | None = None  # every path below it is a token request (else exactly token_path)
    token_latency = 0.0

    def __init__(self, *, token_lifetime: float) -> None:
        self.token_lifetime = token_lifetime
        self.tokens: dict[str, float] = {}  # access token -> expiry (monotonic)
        self.answers: list[tuple[str, str, int]] = []  # (method, path, status) of every request
        self._throttled = 0
        self._expire_countdown: int | None = None
        self._failures: list[tuple[str, FakeResponse]] = []
        self._token_ids = itertools.count(1)
        self._lock = threading.Lock()
        self._server = FakeServer(self._app)
        self.url = self._server.url
        self.token_url = f"{self.url}{self.token_path}"

    def __enter__(self) -> Self:
        self._server.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.__exit__(*exc)

    # -- what tests arrange and read ------------------------------------------------------------------

    def _is_token_path(self, path: str) -> bool:
        return path.startswith(self.token_prefix) if self.token_prefix else path == self.token_path

    @property
    def requests(self) -> list[FakeRequest]:
        """Every API request (token requests excluded)."""
        return [r for r in self._server.requests if not self._is_token_path(r.path)]

    @property
    def token_requests(self) -> list[FakeRequest]:
        """Every token request."""
        return [r for r in self._server.requests if self._is_token_path(r.path)]

    def throttle(self, count: int) -> None:
        """Answer the next ``count`` API calls with HTTP 429."""
        self._throttled += count

    def fail_next(self, path_suffix: str, response: FakeResponse) -> None:
        """Answer the next API call whose path ends with ``path_suffix`` with ``response``."""
        self._failures.append((path_suffix, response))

    def expire_tokens_after(self, calls: int) -> None:
        """Every access token issued so far expires once ``calls`` more API calls were answered."""
        self._expire_countdown = calls

    # -- serving --------------------------------------------------------------------------------------

    def _app(self, request: FakeRequest) -> FakeResponse:
        if request.path == self.token_path and request.method == "POST":
            if self.token_latency:
                time.sleep(self.token_latency)
            response = self._token(request)
        else:
            with self._lock:
                response = self._api(request)
                if self._expire_countdown is not None and response.status != 401:
                    self._expire_countdown -= 1
                    if self._expire_countdown <= 0:
                        self._expire_countdown = None
                        self.tokens = dict.fromkeys(self.tokens, 0.0)
        with self._lock:
            self.answers.append((request.method, request.path, response.status))
        return response

    def _token(self, request: FakeRequest) -> FakeResponse:
        raise NotImplementedError

    def _api(self, request: FakeRequest) -> FakeResponse:
        raise NotImplementedError

    def _issue(self, prefix: str, filler: str = "x") -> str:
        """A new access token ``<prefix>-<n>-<filler * 24>``, valid for ``token_lifetime`` seconds."""
        with self._lock:
            token = f"{prefix}-{next(self._token_ids)}-{filler * 24}"
            self.tokens[token] = time.monotonic() + self.token_lifetime
        return token

    def _bearer_ok(self, request: FakeRequest) -> bool:
        """Whether the request carries ``Authorization: Bearer <a token issued and not expired>``."""
        token = request.headers.get("authorization", "").removeprefix("Bearer ")
        return self.tokens.get(token, 0.0) > time.monotonic()

    def _planned_failure(self, request: FakeRequest) -> FakeResponse | None:
        """The answer planned by :meth:`fail_next` for this request, taken once; None when none is."""
        for i, (suffix, response) in enumerate(self._failures):
            if request.path.endswith(suffix):
                del self._failures[i]
                return response
        return None


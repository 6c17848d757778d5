"""A local fake of the Reddit Ads API v3 (customer-list custom audiences) and Reddit's token endpoint.

Serves on ``127.0.0.1`` (a free port), keeps everything in memory, and lets a test assert what Reddit
would hold: each audience's members (digests per schema) and every request it got.

Contract (and where each part comes from; Reddit's v3 reference is behind a login, so the request
shapes follow Segment's open-source Reddit Audiences destination, segmentio/action-destinations
``destinations/reddit-audiences``, and the adapter's docstring says what was assumed):

* **Token endpoint** -- ``POST /api/v1/access_token`` (Reddit: ``https://www.reddit.com``), client
  credentials in an HTTP Basic header only, a form body ``grant_type=refresh_token&refresh_token=...``;
  answers ``{"access_token", "token_type": "bearer", "expires_in": 3600, "scope": "adsread adsedit"}``.
  A wrong client: HTTP 401 ``{"message": "Unauthorized", "error": 401}``; a revoked refresh token:
  HTTP 400 ``{"error": "invalid_grant"}``. A request without a ``User-Agent`` other than a generic
  library's is HTTP 429, as Reddit throttles those.
  https://github.com/reddit-archive/reddit/wiki/OAuth2
* **Auth** -- ``Authorization: Bearer <access token>``; a missing, unknown or expired token is HTTP
  401 ``{"error": {"code": "UNAUTHORIZED", "message": "..."}}`` (the fake's wording).
* **Audiences** -- ``POST /api/v3/ad_accounts/{id}/custom_audiences`` with ``{"data": {"name",
  "type": "CUSTOMER_LIST"}}`` answers ``{"data": {"id", "name", "type", ...}}``; ``GET`` on the same
  path lists ``{"data": [...], "pagination": {"next_url"?}}`` (``page_size`` per page);
  ``GET /api/v3/custom_audiences/{id}``; ``GET /api/v3/ad_accounts/{id}``.
* **Users** -- ``PATCH /api/v3/custom_audiences/{id}/users`` with ``{"data": {"action_type": "ADD" |
  "REMOVE", "column_order": [...EMAIL_SHA256 | MAID_SHA256], "user_data": [[...], ...]}}``; every
  cell a lower-case SHA-256 hex digest or ``""`` (no value); more than **2,500** rows, an unknown
  schema or action, a row of the wrong width or a value that is not a digest is HTTP 400
  ``{"error": {"code": "INVALID_INPUT", "message": ...}}`` and nothing is applied.
* **Rate limits** -- every answer carries ``X-Ratelimit-Used``, ``X-Ratelimit-Remaining`` and
  ``X-Ratelimit-Reset`` (seconds until the window resets); :meth:`RedditAdsFake.throttle` answers the
  next API calls with HTTP 429 and ``X-Ratelimit-Remaining: 0``.
"""

from __future__ import annotations

import base64
import itertools
import re
from dataclasses import dataclass, field
from typing import Any

from dinmo_dagster.fakes.server import FakeRequest, FakeResponse

from .oauth_token import OAuthTokenFake, token_form

SCHEMAS = ("EMAIL_SHA256", "MAID_SHA256")
MAX_ROWS = 2_500
_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass
class Audience:
    """One customer-list custom audience."""

    id: str
    name: str
    ad_account_id: str
    members: dict[str, set[str]] = field(default_factory=lambda: {s: set() for s in SCHEMAS})


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> FakeResponse:
    return FakeResponse(status, {"error": {"code": code, "message": message}}, headers=headers or {})


class RedditAdsFake(OAuthTokenFake):
    """The Reddit Ads API v3 and Reddit's token endpoint, in memory (a context manager)."""

    token_path = "/api/v1/access_token"

    def __init__(
        self,
        *,
        client_id: str,
        client_secret: str,
        refresh_token: str,
        ad_account_id: str,
        token_lifetime: float = 3600.0,
        page_size: int = 50,
        throttle_reset_seconds: float = 0.05,
    ) -> None:
        super().__init__(token_lifetime=token_lifetime)
        self.client_id = client_id
        self.client_secret = client_secret
        self.refresh_token = refresh_token
        self.ad_account_id = ad_account_id
        self.page_size = page_size
        self.throttle_reset_seconds = throttle_reset_seconds
        self.audiences: dict[str, Audience] = {}
        self._ids = itertools.count(1001)
        self._used = 0

    # -- what tests arrange and read ------------------------------------------------------------------

    def create_audience(self, name: str, **members: set[str]) -> Audience:
        """An audience already in the ad account, with members per schema."""
        audience = Audience(f"a{next(self._ids)}", name, self.ad_account_id)
        for schema, digests in members.items():
            audience.members[schema] |= digests
        self.audiences[audience.id] = audience
        return audience

    def audience_named(self, name: str) -> Audience | None:
        """The audience of that name, if any."""
        return next((a for a in self.audiences.values() if a.name == name), None)

    def revoke_refresh_token(self) -> None:
        """The refresh token stops working (the user removed the app's access)."""
        self.refresh_token = "revoked-" + self.refresh_token

    # -- serving --------------------------------------------------------------------------------------

    def _token(self, request: FakeRequest) -> FakeResponse:
        agent = request.headers.get("user-agent", "")
        if not agent or agent.startswith("python-requests"):
            return FakeResponse(429, {"message": "Too Many Requests", "error": 429})
        expected = base64.b64encode(f"{self.client_id}:{self.client_secret}".encode()).decode()
        if request.headers.get("authorization") != f"Basic {expected}":
            return FakeResponse(401, {"message": "Unauthorized", "error": 401})
        form = token_form(request)
        if "client_secret" in form:
            return FakeResponse(400, {"error": "invalid_request"})
        if form.get("grant_type") != "refresh_token":
            return FakeResponse(400, {"error": "unsupported_grant_type"})
        if form.get("refresh_token") != self.refresh_token:
            return FakeResponse(400, {"error": "invalid_grant"})
        token = self._issue("reddit-access")
        return FakeResponse(200, {"access_token": token, "token_type": "bearer",
                                  "expires_in": self.token_lifetime, "scope": "adsread adsedit"})

    def _api(self, request: FakeRequest) -> FakeResponse:
        if not self._bearer_ok(request):
            return _error(401, "UNAUTHORIZED", "The access token is invalid or expired")
        if self._throttled:
            self._throttled -= 1
            return _error(429, "TOO_MANY_REQUESTS", "Too many requests", headers={
                "X-Ratelimit-Used": str(self._used), "X-Ratelimit-Remaining": "0",
                "X-Ratelimit-Reset": str(self.throttle_reset_seconds)})  # fmt: skip
        self._used += 1
        response = self._route(request)
        response.headers.update({"X-Ratelimit-Used": str(self._used), "X-Ratelimit-Remaining": "500",
                                 "X-Ratelimit-Reset": "60"})
        return response

    def _route(self, request: FakeRequest) -> FakeResponse:
        if (planned := self._planned_failure(request)) is not None:
            return planned
        parts = request.path.strip("/").split("/")
        if parts[:3] == ["api", "v3", "ad_accounts"] and len(parts) >= 4:
            if parts[3] != self.ad_account_id:
                return _error(404, "NOT_FOUND", f"Ad account {parts[3]} not found")
            if len(parts) == 4 and request.method == "GET":
                return FakeResponse(200, {"data": {"id": self.ad_account_id, "name": "Fake account"}})
            if parts[4:] == ["custom_audiences"]:
                return self._list(request) if request.method == "GET" else self._create(request)
        if parts[:3] == ["api", "v3", "custom_audiences"] and len(parts) >= 4:
            audience = self.audiences.get(parts[3])
            if audience is None:
                return _error(404, "NOT_FOUND", f"Custom audience {parts[3]} not found")
            if len(parts) == 4 and request.method == "GET":
                return FakeResponse(200, {"data": self._view(audience)})
            if parts[4:] == ["users"] and request.method == "PATCH":
                return self._users(audience, request)
        return _error(404, "NOT_FOUND", f"No route {request.method} {request.path}")

    def _view(self, audience: Audience) -> dict[str, Any]:
        return {"id": audience.id, "name": audience.name, "type": "CUSTOMER_LIST",
                "ad_account_id": audience.ad_account_id}

    def _list(self, request: FakeRequest) -> FakeResponse:
        mine = [a for a in self.audiences.values() if a.ad_account_id == self.ad_account_id]
        start = int(request.query.get("page") or 0)
        body: dict[str, Any] = {"data": [self._view(a) for a in mine[start : start + self.page_size]],
                                "pagination": {}}
        if start + self.page_size < len(mine):
            body["pagination"]["next_url"] = (
                f"{self.url}/api/v3/ad_accounts/{self.ad_account_id}/custom_audiences?page={start + self.page_size}"
            )
        return FakeResponse(200, body)

    def _create(self, request: FakeRequest) -> FakeResponse:
        spec = (request.json or {}).get("data")
        if not isinstance(spec, dict) or not spec.get("name") or spec.get("type") != "CUSTOMER_LIST":
            return _error(400, "INVALID_INPUT", "data.name and data.type CUSTOMER_LIST are required")
        audience = Audience(f"a{next(self._ids)}", spec["name"], self.ad_account_id)
        self.audiences[audience.id] = audience
        return FakeResponse(200, {"data": self._view(audience)})

    def _users(self, audience: Audience, request: FakeRequest) -> FakeResponse:
        data = (request.json or {}).get("data")
        if not isinstance(data, dict) or data.get("action_type") not in ("ADD", "REMOVE"):
            return _error(400, "INVALID_INPUT", "data.action_type must be ADD or REMOVE")
        columns = data.get("column_order")
        if not (isinstance(columns, list) and columns and all(c in SCHEMAS for c in columns)
                and len(set(columns)) == len(columns)):
            return _error(400, "INVALID_INPUT", f"Invalid column_order {columns!r}; allowed: {', '.join(SCHEMAS)}")
        rows = data.get("user_data")
        if not isinstance(rows, list) or not rows:
            return _error(400, "INVALID_INPUT", "data.user_data must be a non-empty list")
        if len(rows) > MAX_ROWS:
            return _error(400, "INVALID_INPUT", f"Too many rows in one request ({len(rows)}); at most {MAX_ROWS}")
        changes: dict[str, set[str]] = {c: set() for c in columns}
        for row in rows:
            if not (isinstance(row, list) and len(row) == len(columns)):
                return _error(400, "INVALID_INPUT", "Each user_data row must match column_order")
            for column, value in zip(columns, row, strict=True):
                if value == "":
                    continue
                if not (isinstance(value, str) and _SHA256.fullmatch(value)):
                    return _error(400, "INVALID_INPUT", f"Invalid {column} value: expected a SHA-256 hex digest")
                changes[column].add(value)
        for column, digests in changes.items():
            if data["action_type"] == "ADD":
                audience.members[column] |= digests
            else:
                audience.members[column] -= digests
        return FakeResponse(200, {"data": {"id": audience.id, "total_count": len(rows)}})

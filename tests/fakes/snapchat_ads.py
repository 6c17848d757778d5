"""A local fake of Snap's Marketing API (Customer List segments) and its OAuth token endpoint.

Serves on ``127.0.0.1`` (a free port), keeps everything in memory, and lets a test assert what Snap
would hold: each segment's members (digests per schema) and every request it got.

Contract (and where each part comes from):

* **Token endpoint** -- ``POST /login/oauth2/access_token`` (Snap: ``https://accounts.snapchat.com``),
  a form body with ``grant_type=refresh_token``, ``client_id``, ``client_secret``, ``refresh_token``;
  answers ``{"access_token", "token_type": "Bearer", "expires_in": 1800, "refresh_token", "scope":
  "snapchat-marketing-api"}``. A wrong client or a revoked refresh token: HTTP 400 ``{"error":
  "invalid_grant", "error_description": ...}`` (RFC 6749 section 5.2; Snap's page shows only the
  success answer). https://developers.snap.com/api/marketing-api/Ads-API/authentication
* **Auth** -- ``Authorization: Bearer <access token>``; a missing, unknown or expired token is HTTP
  401 ``{"request_status": "ERROR", "debug_message": "Unauthorized: the access token is invalid or
  expired"}`` (Snap documents the 401 status, not this body: the fake's own wording).
* **Segments** -- ``POST /v1/adaccounts/{ad_account_id}/segments`` with ``{"segments": [{name,
  description, source_type, retention_in_days, ad_account_id}]}`` (``source_type`` must be
  ``FIRST_PARTY`` here); ``GET`` on the same path lists ``{"segments": [{"sub_request_status":
  "success", "segment": {...}}], "paging": {"next_link"?}}`` (``page_size`` per page);
  ``GET /v1/segments/{id}``; ``GET /v1/adaccounts/{id}``.
  https://developers.snap.com/api/marketing-api/Ads-API/customer-lists
* **Users** -- ``POST`` (add) and ``DELETE`` (remove) ``/v1/segments/{id}/users`` with ``{"users":
  [{"schema": ["EMAIL_SHA256" | "PHONE_SHA256" | "MOBILE_AD_ID_SHA256"], "data": [["<sha256 hex>"],
  ...]}]}``; answers ``{"request_status": "SUCCESS", "users": [{"sub_request_status": "SUCCESS",
  "user": {"number_uploaded_users": n}}]}``. ``DELETE /v1/segments/{id}/all_users`` empties it.
  Anything that is not a lower-case SHA-256 hex digest, an unknown schema, or more than
  **100,000** identifiers in one request is HTTP 400 ``{"request_status": "ERROR", "debug_message":
  ...}`` and nothing is applied (the limit as RudderStack documents it; see the adapter).
* **Rate limits** -- :meth:`SnapchatAdsFake.throttle` answers the next API calls with HTTP 429 (Snap
  documents the status and no rate-limit header).
  https://developers.snap.com/api/marketing-api/Ads-API/rate-limits
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from typing import Any

from dinmo_dagster.fakes.server import FakeRequest, FakeResponse

from .oauth_token import OAuthTokenFake, refuse_form, token_form

SCHEMAS = ("EMAIL_SHA256", "PHONE_SHA256", "MOBILE_AD_ID_SHA256")
MAX_IDENTIFIERS = 100_000
_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass
class Segment:
    """One Customer List segment."""

    id: str
    name: str
    ad_account_id: str
    source_type: str = "FIRST_PARTY"
    retention_in_days: int = 9999
    description: str | None = None
    members: dict[str, set[str]] = field(default_factory=lambda: {s: set() for s in SCHEMAS})


def _error(status: int, message: str, code: str | None = None) -> FakeResponse:
    body: dict[str, Any] = {"request_status": "ERROR", "request_id": "fake", "debug_message": message}
    if code:
        body["error_code"] = code
    return FakeResponse(status, body)


class SnapchatAdsFake(OAuthTokenFake):
    """Snap's Marketing API and token endpoint, in memory (a context manager)."""

    token_path = "/login/oauth2/access_token"
    token_prefix = "/login/"

    def __init__(
        self,
        *,
        client_id: str,
        client_secret: str,
        refresh_token: str,
        ad_account_id: str,
        token_lifetime: float = 1800.0,
        token_latency: float = 0.0,
        page_size: int = 50,
    ) -> None:
        super().__init__(token_lifetime=token_lifetime)
        self.client_id = client_id
        self.client_secret = client_secret
        self.refresh_token = refresh_token
        self.ad_account_id = ad_account_id
        self.token_latency = token_latency
        self.page_size = page_size
        self.segments: dict[str, Segment] = {}
        self._ids = itertools.count(5677923948298240)

    # -- what tests arrange and read ------------------------------------------------------------------

    def create_segment(self, name: str, **members: set[str]) -> Segment:
        """A segment already in the ad account, with members per schema."""
        segment = Segment(str(next(self._ids)), name, self.ad_account_id)
        for schema, digests in members.items():
            segment.members[schema] |= digests
        self.segments[segment.id] = segment
        return segment

    def segment_named(self, name: str) -> Segment | None:
        """The segment of that name, if any."""
        return next((s for s in self.segments.values() if s.name == name), None)

    def expire_tokens(self) -> None:
        """Every access token issued so far expires now (as Snap's clock would have it)."""
        with self._lock:
            self.tokens = dict.fromkeys(self.tokens, 0.0)

    def revoke_refresh_token(self) -> None:
        """The refresh token stops working (the user removed the app's access)."""
        self.refresh_token = "revoked-" + self.refresh_token

    # -- serving --------------------------------------------------------------------------------------

    def _token(self, request: FakeRequest) -> FakeResponse:
        refusal = refuse_form(
            token_form(request), client_id=self.client_id, client_secret=self.client_secret, client_status=400,
            client_description="Invalid client credentials", grant_type="refresh_token",
            refresh_token=self.refresh_token,
        )  # fmt: skip
        if refusal is not None:
            return refusal
        token = self._issue("snap-access")
        return FakeResponse(200, {
            "access_token": token, "token_type": "Bearer", "expires_in": self.token_lifetime,
            "refresh_token": self.refresh_token, "scope": "snapchat-marketing-api",
        })  # fmt: skip

    def _api(self, request: FakeRequest) -> FakeResponse:
        if not self._bearer_ok(request):
            return _error(401, "Unauthorized: the access token is invalid or expired")
        if self._throttled:
            self._throttled -= 1
            return _error(429, "Too Many Requests")
        if (planned := self._planned_failure(request)) is not None:
            return planned
        parts = request.path.strip("/").split("/")
        if parts[:2] == ["v1", "adaccounts"] and len(parts) == 3 and request.method == "GET":
            if parts[2] != self.ad_account_id:
                return _error(404, f"Ad account {parts[2]} not found")
            return FakeResponse(200, {"request_status": "SUCCESS", "adaccounts": [
                {"sub_request_status": "success", "adaccount": {"id": self.ad_account_id}}]})  # fmt: skip
        if parts[:2] == ["v1", "adaccounts"] and len(parts) == 4 and parts[3] == "segments":
            if parts[2] != self.ad_account_id:
                return _error(404, f"Ad account {parts[2]} not found")
            return self._list(request) if request.method == "GET" else self._create(request)
        if parts[:2] == ["v1", "segments"] and len(parts) >= 3:
            segment = self.segments.get(parts[2])
            if segment is None:
                return _error(404, f"Segment {parts[2]} not found")
            if len(parts) == 3 and request.method == "GET":
                return FakeResponse(200, {"request_status": "SUCCESS", "segments": [
                    {"sub_request_status": "success", "segment": self._view(segment)}]})  # fmt: skip
            if parts[3:] == ["all_users"] and request.method == "DELETE":
                segment.members = {s: set() for s in SCHEMAS}
                return FakeResponse(200, {"request_status": "SUCCESS", "segments": [
                    {"sub_request_status": "success", "segment": self._view(segment)}]})  # fmt: skip
            if parts[3:] == ["users"] and request.method in ("POST", "DELETE"):
                return self._users(segment, request)
        return _error(404, f"No route {request.method} {request.path}")

    def _view(self, segment: Segment) -> dict[str, Any]:
        return {
            "id": segment.id, "name": segment.name, "ad_account_id": segment.ad_account_id,
            "source_type": segment.source_type, "retention_in_days": segment.retention_in_days,
            "status": "ACTIVE", "approximate_number_users": sum(len(m) for m in segment.members.values()),
        }  # fmt: skip

    def _list(self, request: FakeRequest) -> FakeResponse:
        mine = [s for s in self.segments.values() if s.ad_account_id == self.ad_account_id]
        start = int(request.query.get("cursor") or 0)
        page = mine[start : start + self.page_size]
        body: dict[str, Any] = {
            "request_status": "SUCCESS",
            "segments": [{"sub_request_status": "success", "segment": self._view(s)} for s in page],
            "paging": {},
        }
        if start + self.page_size < len(mine):
            body["paging"]["next_link"] = (
                f"{self.url}/v1/adaccounts/{self.ad_account_id}/segments?cursor={start + self.page_size}"
            )
        return FakeResponse(200, body)

    def _create(self, request: FakeRequest) -> FakeResponse:
        entries = (request.json or {}).get("segments")
        if not isinstance(entries, list) or len(entries) != 1:
            return _error(400, "segments: expected one segment")
        spec = entries[0]
        if spec.get("source_type") != "FIRST_PARTY" or not spec.get("name") or "retention_in_days" not in spec:
            return _error(400, "name, source_type FIRST_PARTY and retention_in_days are required")
        segment = Segment(
            str(next(self._ids)), spec["name"], self.ad_account_id, spec["source_type"],
            int(spec["retention_in_days"]), spec.get("description"),
        )  # fmt: skip
        self.segments[segment.id] = segment
        return FakeResponse(200, {"request_status": "SUCCESS", "segments": [
            {"sub_request_status": "success", "segment": self._view(segment)}]})  # fmt: skip

    def _users(self, segment: Segment, request: FakeRequest) -> FakeResponse:
        users = (request.json or {}).get("users")
        if not isinstance(users, list) or not users:
            return _error(400, "users: expected a list of {schema, data}")
        total = sum(len(u.get("data") or []) for u in users if isinstance(u, dict))
        if total > MAX_IDENTIFIERS:
            return _error(400, f"Too many identifiers in one request ({total}); at most {MAX_IDENTIFIERS}")
        changes: list[tuple[str, set[str]]] = []
        for entry in users:
            schema = entry.get("schema") if isinstance(entry, dict) else None
            if not (isinstance(schema, list) and len(schema) == 1 and schema[0] in SCHEMAS):
                return _error(400, f"Invalid schema {schema!r}; allowed: one of {', '.join(SCHEMAS)}")
            digests = set()
            for row in entry.get("data") or []:
                if not (isinstance(row, list) and len(row) == 1 and isinstance(row[0], str)
                        and _SHA256.fullmatch(row[0])):
                    return _error(400, f"Invalid {schema[0]} data: expected SHA-256 hex digests")
                digests.add(row[0])
            changes.append((schema[0], digests))
        for schema, digests in changes:
            if request.method == "POST":
                segment.members[schema] |= digests
            else:
                segment.members[schema] -= digests
        return FakeResponse(200, {"request_status": "SUCCESS", "users": [
            {"sub_request_status": "SUCCESS", "user": {"number_uploaded_users": total}}]})  # fmt: skip

"""A local fake of LinkedIn's Marketing API (Matched Audiences DMP segments) and its token endpoint.

Serves on ``127.0.0.1`` (a free port), keeps everything in memory, and lets a test assert what
LinkedIn would hold: each segment's members (user ids by idType, or company elements) and every
request it got.

Contract (and where each part comes from):

* **Token endpoint** -- ``POST /oauth/v2/accessToken`` (LinkedIn: ``https://www.linkedin.com``), a
  form body with ``grant_type=refresh_token``, ``refresh_token``, ``client_id``, ``client_secret``;
  answers ``{"access_token", "expires_in", "refresh_token", "refresh_token_expires_in"}``. A wrong
  client: HTTP 401 ``{"error": "invalid_client", ...}``; a revoked refresh token: HTTP 400 ``{"error":
  "invalid_request", "error_description": ...}`` (LinkedIn's programmatic refresh tokens page).
  https://learn.microsoft.com/en-us/linkedin/shared/authentication/programmatic-refresh-tokens
* **Headers** -- ``Authorization: Bearer <token>`` (a missing or expired one: HTTP 401 ``{"status":
  401, "serviceErrorCode": 65601, "code": "REVOKED_ACCESS_TOKEN", "message": "The token used in the
  request has expired"}``), ``LinkedIn-Version: YYYYMM`` and ``X-Restli-Protocol-Version: 2.0.0``
  (missing: HTTP 400, LinkedIn's versioning page:
  https://learn.microsoft.com/en-us/linkedin/marketing/versioning).
* **Segments** -- ``POST /rest/dmpSegments`` with ``name``, ``account`` (a sponsoredAccount urn),
  ``sourcePlatform``, ``type`` (USER or COMPANY), ``destinations``: HTTP 201, the id in
  ``x-restli-id``; ``GET /rest/dmpSegments?q=account&account=<urn>&start=&count=`` answers
  ``{"elements": [...], "paging": {"start", "count", "total"}}``; ``GET /rest/dmpSegments/{id}``;
  ``GET /rest/adAccounts/{id}``.
  https://learn.microsoft.com/en-us/linkedin/marketing/matched-audiences/create-and-manage-segments
* **Users / companies** -- ``POST /rest/dmpSegments/{id}/users`` (or ``/companies``) with
  ``X-RestLi-Method: BATCH_CREATE`` and ``{"elements": [{"action": "ADD" | "REMOVE", "userIds":
  [{"idType", "idValue"}]}]}`` (companies: ``companyName``, ``companyWebsiteDomain``,
  ``companyPageUrl``); answers HTTP 200 ``{"elements": [{"status": 201}, ...]}``. An element whose
  SHA256_EMAIL is not a 64-character hex digest (a raw e-mail), an unknown idType, or a company
  element with no field gets ``{"status": 400, "message": ...}`` and is not applied (the element error
  shape is the fake's assumption, as in the adapter). More than **5,000** elements, or a missing
  BATCH_CREATE header: HTTP 400 for the whole request.
  https://learn.microsoft.com/en-us/linkedin/marketing/matched-audiences/create-and-manage-segment-users
  https://learn.microsoft.com/en-us/linkedin/marketing/matched-audiences/create-and-manage-segment-companies
* **Rate limits** -- :meth:`LinkedInAdsFake.throttle` answers the next API calls with HTTP 429
  ``{"status": 429, "message": "Resource level throttle limit for calls to this resource is
  reached."}`` (no Retry-After, as LinkedIn documents none).
  https://learn.microsoft.com/en-us/linkedin/shared/api-guide/concepts/rate-limits
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from typing import Any

from dinmo_dagster.fakes.server import FakeRequest, FakeResponse

from .oauth_token import OAuthTokenFake, refuse_form, token_form

ID_TYPES = ("SHA256_EMAIL", "SHA512_EMAIL", "GOOGLE_AID", "APPLE_IDFA")
COMPANY_FIELDS = ("companyName", "companyWebsiteDomain", "companyPageUrl", "organizationUrn")
MAX_ELEMENTS = 5_000
_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass
class Segment:
    """One DMP segment."""

    id: str
    name: str
    account: str
    type: str = "USER"
    source_platform: str = "DMP"
    users: set[tuple[str, str]] = field(default_factory=set)  # (idType, idValue)
    companies: set[tuple[tuple[str, str], ...]] = field(default_factory=set)  # sorted company fields


def _error(status: int, message: str, code: str | None = None, service: int | None = None) -> FakeResponse:
    body: dict[str, Any] = {"status": status, "message": message}
    if code:
        body["code"] = code
    if service:
        body["serviceErrorCode"] = service
    return FakeResponse(status, body)


class LinkedInAdsFake(OAuthTokenFake):
    """LinkedIn's DMP segment API and token endpoint, in memory (a context manager)."""

    token_path = "/oauth/v2/accessToken"
    token_prefix = "/oauth/"

    def __init__(
        self, *, client_id: str, client_secret: str, refresh_token: str, account_id: str,
        token_lifetime: float = 5_184_000.0, page_size: int = 2,
    ) -> None:  # fmt: skip
        super().__init__(token_lifetime=token_lifetime)
        self.client_id = client_id
        self.client_secret = client_secret
        self.refresh_token = refresh_token
        self.account_id = account_id
        self.page_size = page_size
        self.segments: dict[str, Segment] = {}
        self._ids = itertools.count(10804)

    # -- what tests arrange and read ------------------------------------------------------------------

    def create_segment(self, name: str, type: str = "USER") -> Segment:
        """A segment already in the ad account."""
        segment = Segment(str(next(self._ids)), name, f"urn:li:sponsoredAccount:{self.account_id}", type)
        self.segments[segment.id] = segment
        return segment

    def segment_named(self, name: str) -> Segment | None:
        """The segment of that name, if any."""
        return next((s for s in self.segments.values() if s.name == name), None)

    def revoke_refresh_token(self) -> None:
        """The refresh token stops working."""
        self.refresh_token = "revoked-" + self.refresh_token

    # -- serving --------------------------------------------------------------------------------------

    def _token(self, request: FakeRequest) -> FakeResponse:
        refusal = refuse_form(
            token_form(request), client_id=self.client_id, client_secret=self.client_secret, client_status=401,
            client_description="Client authentication failed", grant_type="refresh_token",
            refresh_token=self.refresh_token, refresh_error="invalid_request",
            refresh_description="The provided authorization grant is invalid",
        )  # fmt: skip
        if refusal is not None:
            return refusal
        token = self._issue("li-access", "y")
        return FakeResponse(200, {
            "access_token": token, "expires_in": int(self.token_lifetime),
            "refresh_token": self.refresh_token, "refresh_token_expires_in": 31_536_000,
        })  # fmt: skip

    def _api(self, request: FakeRequest) -> FakeResponse:
        if not self._bearer_ok(request):
            return _error(401, "The token used in the request has expired", "REVOKED_ACCESS_TOKEN", 65601)
        if not re.fullmatch(r"20\d{4}", request.headers.get("linkedin-version", "")):
            return _error(400, "A version must be present. Please specify a version by adding the LinkedIn-Version "
                          "header.", "VERSION_MISSING")  # fmt: skip
        if request.headers.get("x-restli-protocol-version") != "2.0.0":
            return _error(400, "X-Restli-Protocol-Version 2.0.0 is required")
        if self._throttled:
            self._throttled -= 1
            return _error(429, "Resource level throttle limit for calls to this resource is reached.")
        if (planned := self._planned_failure(request)) is not None:
            return planned
        parts = request.path.strip("/").split("/")
        if parts[:2] == ["rest", "adAccounts"] and len(parts) == 3 and request.method == "GET":
            if parts[2] != self.account_id:
                return _error(404, f"Ad account {parts[2]} not found")
            return FakeResponse(200, {"id": int(self.account_id), "status": "ACTIVE"})
        if parts == ["rest", "dmpSegments"] and request.method == "GET":
            return self._list(request)
        if parts == ["rest", "dmpSegments"] and request.method == "POST":
            return self._create(request)
        if parts[:2] == ["rest", "dmpSegments"] and len(parts) >= 3:
            segment = self.segments.get(parts[2])
            if segment is None:
                return _error(404, f"DMP segment {parts[2]} not found")
            if len(parts) == 3 and request.method == "GET":
                return FakeResponse(200, self._view(segment))
            if parts[3:] in (["users"], ["companies"]) and request.method == "POST":
                return self._members(segment, parts[3], request)
        return _error(404, f"No route {request.method} {request.path}")

    def _view(self, segment: Segment) -> dict[str, Any]:
        return {"id": int(segment.id), "name": segment.name, "account": segment.account, "type": segment.type,
                "sourcePlatform": segment.source_platform, "accessPolicy": "PRIVATE",
                "destinations": [{"destination": "LINKEDIN", "status": "BUILDING"}]}  # fmt: skip

    def _list(self, request: FakeRequest) -> FakeResponse:
        if request.query.get("q") != "account":
            return _error(400, "q=account is required")
        mine = [s for s in self.segments.values() if s.account == request.query.get("account")]
        start = int(request.query.get("start") or 0)
        count = min(int(request.query.get("count") or 10), self.page_size)
        page = mine[start : start + count]
        return FakeResponse(200, {"elements": [self._view(s) for s in page],
                                  "paging": {"start": start, "count": count, "total": len(mine)}})  # fmt: skip

    def _create(self, request: FakeRequest) -> FakeResponse:
        spec = request.json or {}
        if spec.get("account") != f"urn:li:sponsoredAccount:{self.account_id}":
            return _error(400, f"account {spec.get('account')!r} is not this ad account")
        if not spec.get("name") or spec.get("type") not in ("USER", "COMPANY") or not spec.get("sourcePlatform"):
            return _error(422, "name, type (USER or COMPANY) and sourcePlatform are required")
        segment = Segment(str(next(self._ids)), spec["name"], spec["account"], spec["type"], spec["sourcePlatform"])
        self.segments[segment.id] = segment
        return FakeResponse(201, b"", headers={"x-restli-id": segment.id})

    def _members(self, segment: Segment, kind: str, request: FakeRequest) -> FakeResponse:
        if request.headers.get("x-restli-method", "").upper() != "BATCH_CREATE":
            return _error(400, "X-RestLi-Method BATCH_CREATE is required for a batch")
        if (kind == "users") != (segment.type == "USER"):
            return _error(400, f"DMP segment {segment.id} is of type {segment.type}; {kind} cannot be added")
        elements = (request.json or {}).get("elements")
        if not isinstance(elements, list) or not elements:
            return _error(400, "elements: expected a list")
        if len(elements) > MAX_ELEMENTS:
            return _error(400, f"Too many elements in one batch ({len(elements)}); at most {MAX_ELEMENTS}")
        statuses = []
        for element in elements:
            action = element.get("action") if isinstance(element, dict) else None
            if action not in ("ADD", "REMOVE"):
                statuses.append({"status": 400, "message": "action must be ADD or REMOVE"})
                continue
            problem = self._apply_user(segment, element) if kind == "users" else self._apply_company(segment, element)
            statuses.append({"status": 400, "message": problem} if problem else {"status": 201})
        return FakeResponse(200, {"elements": statuses})

    def _apply_user(self, segment: Segment, element: dict[str, Any]) -> str | None:
        ids = element.get("userIds")
        if not isinstance(ids, list) or not ids:
            return "userIds: at least one id is required"
        pairs = []
        for entry in ids:
            id_type, value = entry.get("idType"), entry.get("idValue")
            if id_type not in ID_TYPES or not isinstance(value, str):
                return f"Invalid idType {id_type!r}"
            if id_type == "SHA256_EMAIL" and not _SHA256.fullmatch(value):
                return "SHA256_EMAIL must be a HEX encoded string with length = 64"
            pairs.append((id_type, value))
        for pair in pairs:
            (segment.users.add if element["action"] == "ADD" else segment.users.discard)(pair)
        return None

    def _apply_company(self, segment: Segment, element: dict[str, Any]) -> str | None:
        company = tuple(sorted((k, v) for k, v in element.items() if k in COMPANY_FIELDS))
        if not company:
            return "at least one of companyName, companyWebsiteDomain, companyPageUrl is required"
        (segment.companies.add if element["action"] == "ADD" else segment.companies.discard)(company)
        return None

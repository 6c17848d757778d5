"""A local fake of Criteo's Marketing Solutions API (contact-list audience segments) and its OAuth
token endpoint.

Serves on ``127.0.0.1`` (a free port), keeps everything in memory, and lets a test assert what Criteo
would hold: each segment's contact list (identifiers per identifierType) and every request it got.

Contract (and where each part comes from):

* **Token endpoint** -- ``POST /oauth2/token`` (Criteo: ``https://api.criteo.com/oauth2/token``), a
  form body ``grant_type=client_credentials``, ``client_id``, ``client_secret``; answers
  ``{"access_token", "token_type": "Bearer", "expires_in": 900}``. Wrong credentials: HTTP 401
  ``{"error": "invalid_client", "error_description": ...}`` (RFC 6749 section 5.2).
  https://developers.criteo.com/criteo-apis/docs/oauth-app-client-credentials
* **Auth** -- ``Authorization: Bearer <token>``; a missing, unknown or expired token is HTTP 401
  ``{"errors": [{"code": "authorization-token-invalid", "title": "Unauthorized", ...}]}`` (the body
  is the fake's own: Criteo documents the status and the error shape, not this code).
* **Segments** -- ``POST /{version}/marketing-solutions/audience-segments/create`` with ``{"data":
  [{"type": "AudienceSegment", "attributes": {advertiserId, name, description?, contactList: {}}}]}``
  answers ``{"data": [{"id", "type": "AudienceSegment"}], "errors": [], "warnings": []}``; ``POST
  .../audience-segments/search?limit&offset`` with ``{"data": {"attributes": {advertiserIds,
  audienceSegmentIds?, audienceSegmentTypes?}}}`` answers ``{"data": [{"id", "type",
  "attributes": {name, advertiserId, type: "ContactList"}}]}`` (``limit`` at most 100).
  https://developers.criteo.com/marketing-solutions/reference/audience/2026-01marketing-solutionsaudience-segmentscreate
  https://developers.criteo.com/marketing-solutions/reference/audience/2026-01marketing-solutionsaudience-segmentssearch
* **Contact list** -- ``PATCH .../audience-segments/{id}/contact-list`` with ``{"data": {"type":
  "ContactlistAmendment", "attributes": {"operation": "add" | "remove", "identifierType": "email" |
  "madid", "identifiers": [...]}}}`` answers ``{"data": {"type": "ContactlistAmendment",
  "attributes": {contactListId, operation, identifierType, nbValidIdentifiers,
  nbInvalidIdentifiers, sampleInvalidIdentifiers}}, "errors": [], "warnings": []}``; ``DELETE`` on
  the same path empties the list. Here an ``email`` must be a lower-case SHA-256 hex digest and a
  ``madid`` a lower-case UUID; others are counted invalid, listed in the sample and not applied.
  More than **50,000** identifiers in one request is HTTP 400 (the limit the adapter assumes).
  https://developers.criteo.com/marketing-solutions/docs/contact-list
  https://developers.criteo.com/marketing-solutions/reference/audience/2026-01marketing-solutionsaudience-segments-contact-list-1
* **Rate limits** -- :meth:`CriteoFake.throttle` answers the next API calls with HTTP 429 and the
  ``x-ratelimit-limit`` / ``-remaining`` / ``-reset`` (Unix time) headers Criteo documents.
  https://developers.criteo.com/marketing-solutions/docs/rate-limits
"""

from __future__ import annotations

import itertools
import re
import time
from dataclasses import dataclass, field
from typing import Any

from dinmo_dagster.fakes.server import FakeRequest, FakeResponse

from .oauth_token import OAuthTokenFake, refuse_form, token_form

TYPES = ("email", "madid")
MAX_IDENTIFIERS = 50_000
_VALID = {
    "email": re.compile(r"[0-9a-f]{64}"),
    "madid": re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"),
}


@dataclass
class Segment:
    """One contact-list audience segment."""

    id: str
    name: str
    advertiser_id: str
    description: str | None = None
    members: dict[str, set[str]] = field(default_factory=lambda: {t: set() for t in TYPES})


def _error(status: int, code: str, title: str, detail: str = "") -> FakeResponse:
    entry = {"traceId": "fake-trace", "type": "validation" if status == 400 else "authorization",
             "code": code, "title": title, "detail": detail}  # fmt: skip
    return FakeResponse(status, {"errors": [entry], "warnings": []})


class CriteoFake(OAuthTokenFake):
    """Criteo's Marketing Solutions API and token endpoint, in memory (a context manager)."""

    token_path = "/oauth2/token"

    def __init__(
        self, *, client_id: str, client_secret: str, advertiser_id: str, token_lifetime: float = 900.0
    ) -> None:
        super().__init__(token_lifetime=token_lifetime)
        self.client_id = client_id
        self.client_secret = client_secret
        self.advertiser_id = advertiser_id
        self.segments: dict[str, Segment] = {}
        self.invalid: set[str] = set()  # identifiers answered as invalid although well-formed
        self._ids = itertools.count(314195)

    # -- what tests arrange and read ------------------------------------------------------------------

    def create_segment(self, name: str, advertiser_id: str | None = None, **members: set[str]) -> Segment:
        """A contact-list segment already in the advertiser, with members per identifierType."""
        segment = Segment(str(next(self._ids)), name, advertiser_id or self.advertiser_id)
        for kind, values in members.items():
            segment.members[kind] |= values
        self.segments[segment.id] = segment
        return segment

    def segment_named(self, name: str) -> Segment | None:
        """The segment of that name, if any."""
        return next((s for s in self.segments.values() if s.name == name), None)

    # -- serving --------------------------------------------------------------------------------------

    def _token(self, request: FakeRequest) -> FakeResponse:
        refusal = refuse_form(
            token_form(request), client_id=self.client_id, client_secret=self.client_secret, client_status=401,
            client_description="Invalid client credentials", grant_type="client_credentials",
        )  # fmt: skip
        if refusal is not None:
            return refusal
        token = self._issue("criteo-access")
        return FakeResponse(200, {"access_token": token, "token_type": "Bearer", "expires_in": self.token_lifetime})

    def _api(self, request: FakeRequest) -> FakeResponse:
        if not self._bearer_ok(request):
            return _error(401, "authorization-token-invalid", "Unauthorized", "The access token is invalid or expired")
        if self._throttled:
            self._throttled -= 1
            response = _error(429, "rate-limited", "Too Many Requests", "Rate limit exceeded")
            response.headers.update({"x-ratelimit-limit": "250", "x-ratelimit-remaining": "0",
                                     "x-ratelimit-reset": str(int(time.time()))})  # fmt: skip
            return response
        if (planned := self._planned_failure(request)) is not None:
            return planned
        parts = request.path.strip("/").split("/")
        if parts[1:3] != ["marketing-solutions", "audience-segments"] or len(parts) < 4:
            return _error(404, "not-found", "Not Found", f"No route {request.method} {request.path}")
        rest = parts[3:]
        if rest == ["create"] and request.method == "POST":
            return self._create(request)
        if rest == ["search"] and request.method == "POST":
            return self._search(request)
        if len(rest) == 2 and rest[1] == "contact-list":
            segment = self.segments.get(rest[0])
            if segment is None or segment.advertiser_id != self.advertiser_id:
                return _error(404, "segment-not-found", "Segment not found", f"No contact list segment {rest[0]}")
            if request.method == "DELETE":
                segment.members = {t: set() for t in TYPES}
                return FakeResponse(200, {"data": {"id": segment.id, "type": "ContactlistWipe"},
                                          "errors": [], "warnings": []})  # fmt: skip
            if request.method == "PATCH":
                return self._amend(segment, request)
        return _error(404, "not-found", "Not Found", f"No route {request.method} {request.path}")

    def _view(self, segment: Segment) -> dict[str, Any]:
        return {"id": segment.id, "type": "AudienceSegment", "attributes": {
            "name": segment.name, "description": segment.description, "advertiserId": segment.advertiser_id,
            "type": "ContactList", "contactList": {}}}  # fmt: skip

    def _search(self, request: FakeRequest) -> FakeResponse:
        attributes = ((request.json or {}).get("data") or {}).get("attributes") or {}
        limit = int(request.query.get("limit") or 50)
        offset = int(request.query.get("offset") or 0)
        if limit > 100:
            return _error(400, "invalid-limit", "Invalid limit", "limit must be at most 100")
        advertisers = attributes.get("advertiserIds") or []
        if advertisers and self.advertiser_id not in advertisers:
            return _error(403, "access-denied", "Forbidden", f"No access to advertiser {advertisers[0]}")
        ids = attributes.get("audienceSegmentIds")
        mine = [s for s in self.segments.values()
                if s.advertiser_id in advertisers and (not ids or s.id in ids)]  # fmt: skip
        page = mine[offset : offset + limit]
        return FakeResponse(200, {"data": [self._view(s) for s in page], "meta": {
            "totalItems": len(mine), "limit": limit, "offset": offset}, "errors": [], "warnings": []})  # fmt: skip

    def _create(self, request: FakeRequest) -> FakeResponse:
        entries = (request.json or {}).get("data")
        if not isinstance(entries, list) or len(entries) != 1:
            return _error(400, "invalid-body", "Invalid body", "data: expected one segment")
        attributes = entries[0].get("attributes") or {}
        if attributes.get("advertiserId") != self.advertiser_id:
            return _error(403, "access-denied", "Forbidden", "No access to this advertiser")
        if not attributes.get("name") or "contactList" not in attributes:
            return _error(400, "invalid-body", "Invalid body", "name and contactList are required")
        segment = Segment(str(next(self._ids)), attributes["name"], self.advertiser_id, attributes.get("description"))
        self.segments[segment.id] = segment
        return FakeResponse(200, {"data": [{"id": segment.id, "type": "AudienceSegment"}],
                                  "errors": [], "warnings": []})  # fmt: skip

    def _amend(self, segment: Segment, request: FakeRequest) -> FakeResponse:
        data = (request.json or {}).get("data") or {}
        attributes = data.get("attributes") or {}
        operation, kind = attributes.get("operation"), attributes.get("identifierType")
        values = attributes.get("identifiers")
        if data.get("type") != "ContactlistAmendment" or operation not in ("add", "remove"):
            return _error(400, "invalid-operation", "Invalid operation", "operation must be add or remove")
        if kind not in TYPES:
            return _error(400, "invalid-identifier-type", "Invalid identifierType",
                          f"identifierType {kind!r} is not supported here")  # fmt: skip
        if not isinstance(values, list) or not values:
            return _error(400, "invalid-identifiers", "Invalid identifiers", "identifiers must be a non-empty list")
        if len(values) > MAX_IDENTIFIERS:
            return _error(400, "too-many-identifiers", "Too many identifiers",
                          f"{len(values)} identifiers in one request; at most {MAX_IDENTIFIERS}")  # fmt: skip
        valid = {v for v in values if isinstance(v, str) and _VALID[kind].fullmatch(v) and v not in self.invalid}
        invalid = [str(v) for v in values if v not in valid]
        if operation == "add":
            segment.members[kind] |= valid
        else:
            segment.members[kind] -= valid
        return FakeResponse(200, {"data": {"type": "ContactlistAmendment", "attributes": {
            "contactListId": int(segment.id), "operation": operation, "identifierType": kind,
            "requestDate": "2026-11-30T00:00:00.0000000+00:00", "nbValidIdentifiers": len(valid),
            "nbInvalidIdentifiers": len(invalid), "sampleInvalidIdentifiers": invalid[:100]}},
            "errors": [], "warnings": []})  # fmt: skip

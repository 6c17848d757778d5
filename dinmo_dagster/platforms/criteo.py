"""Criteo: ``audiences`` (contact-list audience segments of the Marketing Solutions API).

**Target.** The activation's ``audience``: ``{name: "VIP Europe"}`` (looked up among the
advertiser's contact-list segments, created when missing) or ``{id: "314195"}``. The destination
names the advertiser (``advertiser_id``).

**Operations** (``add``, ``remove``, ``replace``), on ``https://api.criteo.com/{api_version}``
(``api_version`` defaults to ``2026-01``, a stable version; Criteo versions its paths):

- find the segment: ``POST /marketing-solutions/audience-segments/search?limit=100&offset=n`` with
  ``{"data": {"type": "AudienceSegmentSearch", "attributes": {"advertiserIds": [...],
  "audienceSegmentTypes": ["ContactList"]}}}``; create it: ``POST
  /marketing-solutions/audience-segments/create`` with ``{"data": [{"type": "AudienceSegment",
  "attributes": {"advertiserId", "name", "description", "contactList": {}}}]}`` (the answer's
  ``data[0].id``).
- ``add`` / ``remove``: ``PATCH /marketing-solutions/audience-segments/{id}/contact-list`` with
  ``{"data": {"type": "ContactlistAmendment", "attributes": {"operation": "add" | "remove",
  "identifierType": "email" | "madid", "identifiers": [...]}}}``. One ``identifierType`` per request,
  so a batch whose records carry both goes as one request per type; a record is accepted when every
  request that carried one of its identifiers was. Criteo answers ``nbValidIdentifiers``,
  ``nbInvalidIdentifiers`` and ``sampleInvalidIdentifiers``: records whose identifier is in that
  sample are rejected ("Criteo found the identifier invalid"); the others are accepted (the sample
  may not list every invalid one: Criteo documents it as a sample).
- ``replace`` (a full sync): ``DELETE /marketing-solutions/audience-segments/{id}/contact-list``
  (Criteo: "Delete all identifiers from a contact list audience-segment") once, before the first add
  of the operation, then the records are added. Not atomic: a full sync that fails midway leaves the
  list holding what was added so far; the records not acknowledged go with the next sync. A full
  sync with no record empties the list.
- at most **50,000 identifiers per request**. Assumed: the pages read for this adapter do not state a
  limit for the contact-list PATCH; 50,000 is a conservative size (a smaller batch is always
  accepted; set ``batch_size`` lower if Criteo refuses a payload as too large).

**Identifiers** (``identifiers:`` names):

- ``email`` (``identifierType: email``): trimmed, lower-cased, then SHA-256 in lower-case hex (a value
  that already is a SHA-256 digest passes unchanged). Criteo's contact-list page shows plain e-mails
  in its example and does not say which hashes the ``email`` type takes; Criteo's help centre says
  its identity graph moved to SHA-256 of the trimmed, lower-cased, UTF-8 address and accepts
  SHA-256 (as well as the legacy MD5 and SHA256(MD5)). Assumed: SHA-256, so no raw e-mail ever
  leaves the warehouse. A raw address is never sent.
- ``madid`` (``identifierType: madid``; ``mobile_ad_id`` is accepted too): an IDFA or AAID (a UUID),
  lower-cased with its hyphens, and sent **as is**: Criteo documents no hashed form of mobile ad ids
  for contact lists (a device id, not a name, e-mail or phone number).
- Phone numbers, ``identityLink`` (LiveRamp) and ``gum`` (needs a ``gumCallerId`` from Criteo) are
  not supported: Criteo's contact lists take no phone numbers, and the other two are ids a warehouse
  seldom holds.

An empty identifier leaves its type out for that record; a record with none, or an invalid one, is
rejected before anything is sent (naming the identifier and column, never the value).

**Errors.** Criteo answers ``{"errors": [{"traceId", "type", "code", "title", "detail"}],
"warnings": [...]}``; messages quote ``title``: ``detail`` (``code``). 401: the access token is
refused; it is renewed once and the request sent again (any 401: Criteo documents no expired-token
body); a second 401 or a 403 stops the sync with Criteo's message. 429: the rate limit; Criteo sends
``x-ratelimit-limit``, ``x-ratelimit-remaining`` and ``x-ratelimit-reset`` (a Unix time), which the
transport waits for, every worker holding. 5xx: retried with backoff. Any other 4xx on a contact-list
request rejects that request's records with Criteo's message and code, and the next sync sends them
again.

**Limits as data.** 250 requests per minute for a client-credentials app (app-wide: shared with any
other use of the same app; set ``rate_limit`` lower then), 50,000 identifiers per request, two
requests in flight.

**Authentication.** OAuth 2.0 client credentials (see ``oauth.py``): ``client_id`` and
``client_secret`` of a Criteo developer app are exchanged at ``https://api.criteo.com/oauth2/token``
(``grant_type=client_credentials``) for an access token that lasts 15 minutes (the answer's
``expires_in``), renewed before it expires during long syncs, kept in memory only and sent as
``Authorization: Bearer <token>``. No refresh token.

Criteo's documentation this adapter follows:

- Contact list (add/remove users, identifier types email, madid, identityLink, gum, customerid):
  https://developers.criteo.com/marketing-solutions/docs/contact-list
- PATCH and DELETE of a segment's contact list (body, answer with ``nbValidIdentifiers``...):
  https://developers.criteo.com/marketing-solutions/reference/audience/2026-01marketing-solutionsaudience-segments-contact-list-1
  and .../2026-01marketing-solutionsaudience-segments-contact-list
- Segment create and search:
  https://developers.criteo.com/marketing-solutions/reference/audience/2026-01marketing-solutionsaudience-segmentscreate
  and .../2026-01marketing-solutionsaudience-segmentssearch (``limit`` at most 100)
- OAuth client credentials (token URL, ``grant_type=client_credentials``):
  https://developers.criteo.com/criteo-apis/docs/oauth-app-client-credentials
- Rate limits (250 calls/min, client credentials; 429; ``x-ratelimit-*`` headers):
  https://developers.criteo.com/marketing-solutions/docs/rate-limits
- E-mail hashing (SHA-256 of the trimmed, lower-cased address):
  https://help.criteo.com/kb/guide/en/pass-hashed-emails-through-cross-device-event-cYHxCUc1qv/Steps/
Where those pages were ambiguous or read only in part, this docstring says what was assumed: the
per-request limit, SHA-256 for ``email``, the search body's ``type`` and paging (a page shorter
than ``limit`` is the last one), and the 401 body.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import pydantic
from pydantic import Field

from dinmo_dagster.platforms import register_platform
from dinmo_dagster.platforms.audiences import (
    AudienceTarget,
    IdentifierTable,
    OAuthBearer,
    OneRequestPerKind,
    advertising_id,
)
from dinmo_dagster.platforms.base import (
    BatchOutcome,
    HttpResponse,
    Limits,
    PlatformSettings,
    PreparedRequest,
    Record,
    RecordResult,
)
from dinmo_dagster.platforms.identifiers import IdentifierSpec, normalize_email
from dinmo_dagster.platforms.oauth import OAuthSettings, OAuthToken

if TYPE_CHECKING:
    from dinmo_dagster.platforms.http import Transport

__all__ = ["Criteo", "CriteoAudienceTarget", "CriteoSettings"]

logger = logging.getLogger("dinmo_dagster.platforms")

TOKEN_URL = "https://api.criteo.com/oauth2/token"
MAX_IDENTIFIERS_PER_REQUEST = 50_000
SEARCH_PAGE = 100
LIMITS = Limits(
    max_records_per_batch=MAX_IDENTIFIERS_PER_REQUEST,
    requests_per_window=250,
    window_seconds=60.0,
    max_concurrency=2,
)
_DIGITS = re.compile(r"\d+")
_VERSION = re.compile(r"\d{4}-\d{2}|preview")


def normalize_madid(text: str, default_country: str | None = None) -> str:
    """An IDFA or AAID: lower-cased with its hyphens."""
    return advertising_id(text).lower()


# identifiers: name -> (Criteo identifierType, how it is prepared)
_TYPES = IdentifierTable({
    "email": ("email", IdentifierSpec(
        "email", hashed=True, optional=True, normalize=lambda text, _: normalize_email(text))),
    "madid": ("madid", IdentifierSpec("id", hashed=False, optional=True, normalize=normalize_madid)),
}, aliases={"mobile_ad_id": "madid", "maid": "madid", "mobile_id": "madid"})  # fmt: skip
_ORDER = ("email", "madid")


class CriteoAudienceTarget(AudienceTarget):
    """The contact-list segment an activation fills: ``{name: ...}`` (created when missing) or ``{id: ...}``."""

    noun = "segment"

    name: str | None = Field(default=None, description="The segment's name in the advertiser.")
    id: str | None = Field(default=None, description="The segment's id (digits).")
    description: str | None = Field(default=None, description="Description of a segment created by name.")


class CriteoSettings(OAuthSettings):
    """Settings of a ``type: criteo`` destination (``audience`` comes from the activation)."""

    service: Literal["audiences"] = Field(description="audiences (contact-list segments).")
    grant_type: Literal["client_credentials"] = Field(  # type: ignore[assignment]
        default="client_credentials", description="Criteo apps use client credentials."
    )
    advertiser_id: str = Field(description="The Criteo advertiser's id (digits).")
    api_version: str = Field(default="2026-01", description="Criteo API version in the paths (YYYY-MM).")
    audience: CriteoAudienceTarget | None = Field(default=None, description="The segment; from the activation.")

    @pydantic.field_validator("advertiser_id", mode="before")
    @classmethod
    def _check_advertiser(cls, value: Any) -> Any:
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if not (isinstance(value, str) and _DIGITS.fullmatch(value.strip())):
            raise ValueError(f"found {value!r}; allowed: the advertiser's numeric id such as 12345")
        return value.strip()

    @pydantic.field_validator("api_version")
    @classmethod
    def _check_version(cls, value: str) -> str:
        if not _VERSION.fullmatch(value):
            raise ValueError(f"found {value!r}; allowed: a Criteo API version such as 2026-01")
        return value


class Criteo(OAuthBearer, OneRequestPerKind):
    """Criteo contact-list segments: add, remove, replace members (module docstring)."""

    name = "criteo"
    settings_model: ClassVar[type[PlatformSettings]] = CriteoSettings
    services: ClassVar[Mapping[str, tuple[str, ...]]] = {"audiences": ("add", "remove", "replace")}
    default_base_url = "https://api.criteo.com"
    limits = LIMITS
    audience_label = "Criteo segment"
    audience_noun = "segment"
    identifier_table = _TYPES
    identifier_order = _ORDER
    audiences_taking = "Criteo contact lists"

    settings: CriteoSettings

    def __init__(self, settings: PlatformSettings, *, destination: str = "") -> None:
        super().__init__(settings, destination=destination)
        self.oauth = OAuthToken(self, default_token_url=TOKEN_URL)

    @property
    def _prefix(self) -> str:
        return f"/{self.settings.api_version}/marketing-solutions/audience-segments"

    # -- requests -----------------------------------------------------------------------------------

    def _kind_request(self, operation: str, kind: str, values: list[str]) -> PreparedRequest:
        """``PATCH .../contact-list``: a ContactlistAmendment of one identifierType."""
        body = {"data": {"type": "ContactlistAmendment", "attributes": {
            "operation": "remove" if operation == "remove" else "add",
            "identifierType": kind, "identifiers": values}}}  # fmt: skip
        return PreparedRequest("PATCH", f"{self._prefix}/{self._audience_ref()}/contact-list", json=body)

    def _kind_rejections(
        self, operation: str, kind: str, indexes: list[int], inputs: Sequence[Any], records: Sequence[Record],
        response: HttpResponse,
    ) -> dict[int, RecordResult]:
        """200: the identifiers Criteo lists as invalid; another 4xx (not 401/403): all of them."""
        if response.status == 200:
            invalid = set(_invalid_sample(response))
            return {i: RecordResult(records[i].key, "rejected", f"Criteo found the {kind} identifier invalid",
                                    f"invalid {kind}") for i in indexes if inputs[i][kind] in invalid}
        if not 400 <= response.status < 500 or response.status in (401, 403):
            raise self.request_error(response, f"{operation} of members of {self.target_label()}")
        reason = self.error_message(response)
        code = f"HTTP {response.status} {_error_code(response) or 'error'} ({kind})"
        return {i: RecordResult(records[i].key, "rejected", reason, code) for i in indexes}

    def parse_response(
        self, operation: str, records: Sequence[Record], response: HttpResponse
    ) -> BatchOutcome:
        """A single request's answer: every record accepted, or rejected with Criteo's message."""
        if response.status == 200:
            return BatchOutcome.accept_all(records)
        if not 400 <= response.status < 500:
            raise self.request_error(response, f"{operation} of members of {self.target_label()}")
        return BatchOutcome.reject_all(
            records, self.error_message(response), f"HTTP {response.status} {_error_code(response)}"
        )

    # -- the segment --------------------------------------------------------------------------------

    def _clear_request(self, ref: str | None = None) -> PreparedRequest:
        """``DELETE .../audience-segments/{id}/contact-list``."""
        return PreparedRequest("DELETE", f"{self._prefix}/{ref or self._audience_id}/contact-list")

    def _cleared_ok(self, response: HttpResponse) -> bool:
        """200 or 204."""
        return response.status in (200, 204)

    def _search(self, transport: Transport, **filters: list[str]) -> list[dict[str, Any]]:
        """Every contact-list segment matching ``filters`` (pages of 100)."""
        advertiser = self.settings.advertiser_id
        attributes = {"advertiserIds": [advertiser], "audienceSegmentTypes": ["ContactList"], **filters}
        body = {"data": {"type": "AudienceSegmentSearch", "attributes": attributes}}
        found: list[dict[str, Any]] = []
        offset = 0
        while True:
            response = transport.send(PreparedRequest(
                "POST", f"{self._prefix}/search", params={"limit": str(SEARCH_PAGE), "offset": str(offset)}, json=body))  # fmt: skip
            if response.status != 200:
                raise self.request_error(response, f"searching the contact-list segments of advertiser {advertiser}")
            page = (response.json() or {}).get("data") or []
            found.extend(entry for entry in page if isinstance(entry, dict))
            if len(page) < SEARCH_PAGE:
                return found
            offset += SEARCH_PAGE

    def _find_by_name(self, name: str, transport: Transport) -> str | None:
        found = [
            str(entry["id"]) for entry in self._search(transport)
            if (entry.get("attributes") or {}).get("name") == name and entry.get("id")
        ]  # fmt: skip
        return self._the_one_named(name, found, f"contact-list segments of advertiser {self.settings.advertiser_id}")

    def _create_named(self, target: AudienceTarget, transport: Transport) -> str:
        assert isinstance(target, CriteoAudienceTarget)
        advertiser = self.settings.advertiser_id
        attributes: dict[str, Any] = {"advertiserId": advertiser, "name": target.name, "contactList": {}}
        if target.description:
            attributes["description"] = target.description
        body = {"data": [{"type": "AudienceSegment", "attributes": attributes}]}
        response = transport.send(PreparedRequest("POST", f"{self._prefix}/create", json=body))
        answer = response.json() if response.status == 200 else None
        created = (answer.get("data") or [None])[0] if isinstance(answer, dict) else None
        if not isinstance(created, dict) or not created.get("id"):
            raise self.request_error(response, f"creating the segment {target.name!r} in advertiser {advertiser}")
        logger.info("%s: created contact-list segment %r (id %s)", self.label, target.name, created["id"])
        return str(created["id"])

    # -- reading responses --------------------------------------------------------------------------

    def error_message(self, response: HttpResponse) -> str:
        """Criteo's first error, ``title: detail (code)``, secrets masked."""
        body = response.json()
        errors = body.get("errors") if isinstance(body, dict) else None
        if errors and isinstance(errors[0], dict):
            first = errors[0]
            text = ": ".join(str(first[k]) for k in ("title", "detail") if first.get(k))
            code = first.get("code")
            return self.redact(f"{text} ({code})" if code else text)
        return super().error_message(response)

    # -- validate --connect -------------------------------------------------------------------------

    def check_connection(self, transport: Transport) -> None:
        """The token (obtained here), the advertiser's segments, and a segment given by id."""
        target = self.settings.audience
        if target is None or target.id is None:
            self._search(transport)  # a segment given by name is created by the first sync when missing
            return
        if not self._search(transport, audienceSegmentIds=[target.id]):
            raise self.config_error(
                f"audience.id: no contact-list segment {target.id} in advertiser {self.settings.advertiser_id}"
            )


def _invalid_sample(response: HttpResponse) -> list[str]:
    body = response.json()
    data = body.get("data") if isinstance(body, dict) else None
    attributes = data.get("attributes") if isinstance(data, dict) else None
    sample = attributes.get("sampleInvalidIdentifiers") if isinstance(attributes, dict) else None
    return [str(v) for v in sample] if isinstance(sample, list) else []


def _error_code(response: HttpResponse) -> str:
    body = response.json()
    errors = body.get("errors") if isinstance(body, dict) else None
    return str(errors[0].get("code") or "") if errors and isinstance(errors[0], dict) else ""


register_platform("criteo", CriteoSettings, Criteo)

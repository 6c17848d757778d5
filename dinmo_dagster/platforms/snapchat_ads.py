"""Snapchat Ads: ``audiences`` (Customer Lists, formerly Snap Audience Match "SAM" segments).

**Target.** The activation's ``audience``: ``{name: "VIP Europe"}`` (looked up among the ad account's
segments, created when missing with ``source_type: FIRST_PARTY`` and ``retention_in_days`` 9999,
Snap's "lifetime") or ``{id: "5677923948298240"}``.

**Operations** (``add``, ``remove``, ``replace``), on ``https://adsapi.snapchat.com/v1``:

- ``add``: ``POST /v1/segments/{segment_id}/users``; ``remove``: ``DELETE`` on the same path, both
  with ``{"users": [{"schema": ["EMAIL_SHA256"], "data": [["<digest>"], ...]}]}``. Snap's examples
  show one schema per request, so a batch whose records carry several identifiers goes as one
  request per schema (``EMAIL_SHA256``, ``PHONE_SHA256``, ``MOBILE_AD_ID_SHA256``); a record is
  accepted when every request that carried one of its identifiers was.
- ``replace`` (a full sync): ``DELETE /v1/segments/{segment_id}/all_users`` once, before the first
  add of the operation (the other workers wait for it), then the records are added as above. Snap
  has no atomic replace: a full sync that fails midway leaves the segment holding the records added
  so far; the records not acknowledged go with the next sync, which (being a delta) adds them. A
  full sync with no record empties the segment.
- at most **100,000 identifiers per request** (per schema). Snap's reference page does not state the
  limit in the text this module was written from; 100,000 is what RudderStack's Snapchat Custom
  Audience destination documents it batches to, "refer to the Snapchat Marketing API"
  (https://www.rudderstack.com/docs/destinations/audience-list-destinations/snapchat-custom-audience/).
  Assumed (a smaller batch is always accepted).
- Snap answers ``{"request_status": "SUCCESS", "users": [{"sub_request_status": "SUCCESS", "user":
  {"number_uploaded_users": n}}]}`` and does not say which identifiers matched: there are no
  per-identifier rejections to read (matching happens later, in Snap's pipeline), so identifiers
  are validated here before sending.

**Identifiers** (``identifiers:`` names; normalized as Snap's Customer Lists page says, then
SHA-256 in lower-case hex; a value that already is a SHA-256 digest passes unchanged):

- ``email`` (EMAIL_SHA256): trimmed, lower-cased;
- ``phone`` (PHONE_SHA256): parsed with ``phonenumbers`` (the activation's ``default_country`` for
  national numbers), then digits only, with the country code, no ``+`` or leading ``00`` and no
  national trunk ``0``: ``+33 6 12 34 56 78`` and ``06 12 34 56 78`` (FR) -> ``33612345678``;
- ``mobile_ad_id`` (MOBILE_AD_ID_SHA256; ``madid`` is accepted too): an IDFA or AAID (a UUID),
  lower-cased, hyphens kept, then hashed.

An empty identifier leaves its schema out for that record; a record with none, or an invalid one,
is rejected before anything is sent (naming the identifier and column, never the value).

**Errors.** Snap answers errors as ``{"request_status": "ERROR", "debug_message": ...,
"display_message": ..., "error_code": ...}``. 401: the access token is refused; the adapter renews
it once (Snap's documentation does not give the body of an expired-token 401, so any 401 counts)
and sends the request again; a second 401 or a 403 stops the sync with Snap's message. 429: Snap's
rate limit (no ``Retry-After`` or rate-limit header is documented): exponential backoff, every worker
holding. 5xx: retried with backoff. Any other error (400: a malformed or refused request) rejects the
request's records with Snap's message and code.

**Limits as data.** 10 requests per second per access token (the app as a whole: 20 per second,
shared with any other user of the same OAuth app: set ``rate_limit`` lower then); 100,000
identifiers per request; four requests in flight.

**Authentication.** OAuth 2.0 (see ``oauth.py``): ``client_id``, ``client_secret`` and a
``refresh_token`` (the ``snapchat-marketing-api`` scope) are exchanged at
``https://accounts.snapchat.com/login/oauth2/access_token`` for an access token that lasts 1,800
seconds (Snap's answer gives ``expires_in``), renewed before it expires during long syncs, kept in
memory only and sent as ``Authorization: Bearer <token>``.

Snap's documentation this adapter follows:

- Customer Lists (segments, create/list/get, add users, remove users, remove all users, the
  schemas and their normalization): https://developers.snap.com/api/marketing-api/Ads-API/customer-lists
  (formerly https://marketingapi.snapchat.com/docs/#snap-audience-match)
- Authentication (token URL, refresh token grant, bearer header):
  https://developers.snap.com/api/marketing-api/Ads-API/authentication
- Rate limits (10 requests/s per token, 20 per app, HTTP 429):
  https://developers.snap.com/api/marketing-api/Ads-API/rate-limits
Where those pages were ambiguous or not available in full, this docstring says what was assumed:
the per-request limit, one schema per request, the 401 body, and the error body's fields
(``request_status: ERROR``, ``debug_message``, ``display_message``, ``error_code``: the shape Snap's
answers take, not checked against an errors page here; a body without them is quoted as text).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import pydantic
from pydantic import Field

from dinmo_dagster.platforms import register_platform
from dinmo_dagster.platforms.audiences import (
    UUID,
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
from dinmo_dagster.platforms.identifiers import (
    IdentifierSpec,
    normalize_email,
    normalize_phone,
)
from dinmo_dagster.platforms.oauth import OAuthSettings, OAuthToken

if TYPE_CHECKING:
    from dinmo_dagster.platforms.http import Transport

__all__ = ["SnapAudienceTarget", "SnapchatAds", "SnapchatAdsSettings"]

logger = logging.getLogger("dinmo_dagster.platforms")

TOKEN_URL = "https://accounts.snapchat.com/login/oauth2/access_token"
MAX_IDENTIFIERS_PER_REQUEST = 100_000
LIMITS = Limits(
    max_records_per_batch=MAX_IDENTIFIERS_PER_REQUEST,
    requests_per_window=10,
    window_seconds=1.0,
    max_concurrency=4,
)


def normalize_snap_phone(text: str, default_country: str | None = None) -> str:
    """Digits with the country code, no ``+``/``00`` prefix, no trunk ``0`` (``33612345678``)."""
    return normalize_phone(text, default_country).lstrip("+")


def normalize_mobile_ad_id(text: str, default_country: str | None = None) -> str:
    """An IDFA or AAID: lower-cased with its hyphens."""
    return advertising_id(text).lower()


# identifiers: name -> (Snap schema, how it is prepared)
_SCHEMAS = IdentifierTable({
    "email": ("EMAIL_SHA256", IdentifierSpec(
        "email", hashed=True, optional=True, normalize=lambda text, _: normalize_email(text))),
    "phone": ("PHONE_SHA256", IdentifierSpec("phone", hashed=True, optional=True, normalize=normalize_snap_phone)),
    "mobile_ad_id": ("MOBILE_AD_ID_SHA256", IdentifierSpec(
        "id", hashed=True, optional=True, normalize=normalize_mobile_ad_id)),
}, aliases={"madid": "mobile_ad_id", "mobile_id": "mobile_ad_id", "maid": "mobile_ad_id"})  # fmt: skip
_ORDER = ("EMAIL_SHA256", "PHONE_SHA256", "MOBILE_AD_ID_SHA256")


class SnapAudienceTarget(AudienceTarget):
    """The segment an activation fills: ``{name: ...}`` (created when missing) or ``{id: ...}``."""

    noun = "segment"
    max_name_length = 375

    name: str | None = Field(default=None, description="The segment's name in the ad account (375 chars max).")
    id: str | None = Field(default=None, description="The segment's id (digits).")
    description: str | None = Field(default=None, description="Description of a segment created by name.")
    retention_in_days: int = Field(
        default=9999, ge=1, le=9999, description="Days members stay, for a segment created by name (9999: lifetime)."
    )


class SnapchatAdsSettings(OAuthSettings):
    """Settings of a ``type: snapchat_ads`` destination (``audience`` comes from the activation)."""

    service: Literal["audiences"] = Field(description="audiences (Customer List segments).")
    ad_account_id: str = Field(description="The ad account's id (a UUID).")
    audience: SnapAudienceTarget | None = Field(default=None, description="The segment; from the activation.")

    @pydantic.field_validator("ad_account_id")
    @classmethod
    def _check_account(cls, value: str) -> str:
        if not UUID.fullmatch(value.strip()):
            raise ValueError(f"found {value!r}; allowed: the ad account's id, a UUID such as "
                             "8adc3db7-8148-4fbf-999c-8d2266369d74")
        return value.strip().lower()


class SnapchatAds(OAuthBearer, OneRequestPerKind):
    """Snapchat Customer List segments: add, remove, replace members (module docstring)."""

    name = "snapchat_ads"
    settings_model: ClassVar[type[PlatformSettings]] = SnapchatAdsSettings
    services: ClassVar[Mapping[str, tuple[str, ...]]] = {"audiences": ("add", "remove", "replace")}
    default_base_url = "https://adsapi.snapchat.com"
    limits = LIMITS
    audience_label = "Snapchat segment"
    audience_noun = "segment"
    identifier_table = _SCHEMAS
    identifier_order = _ORDER
    audiences_taking = "Snapchat segments"

    settings: SnapchatAdsSettings

    def __init__(self, settings: PlatformSettings, *, destination: str = "") -> None:
        super().__init__(settings, destination=destination)
        self.oauth = OAuthToken(self, default_token_url=TOKEN_URL)

    # -- requests -----------------------------------------------------------------------------------

    def _kind_request(self, operation: str, kind: str, values: list[str]) -> PreparedRequest:
        """``POST`` (add) or ``DELETE`` (remove) ``/v1/segments/{id}/users`` with one schema's digests."""
        method = "DELETE" if operation == "remove" else "POST"
        body = {"users": [{"schema": [kind], "data": [[d] for d in values]}]}
        return PreparedRequest(method, f"/v1/segments/{self._audience_ref()}/users", json=body)

    def _kind_rejections(
        self, operation: str, kind: str, indexes: list[int], inputs: Sequence[Any], records: Sequence[Record],
        response: HttpResponse,
    ) -> dict[int, RecordResult]:
        """200 with SUCCESS: none; a 400: all of them with Snap's message; anything else fails."""
        if response.status == 200 and _succeeded(response):
            return {}
        if response.status != 400:
            raise self.request_error(response, f"{operation} of members of {self.target_label()}")
        reason = self.error_message(response)
        code = f"HTTP 400 {_error_code(response) or 'error'} ({kind})"
        return {i: RecordResult(records[i].key, "rejected", reason, code) for i in indexes}

    def parse_response(
        self, operation: str, records: Sequence[Record], response: HttpResponse
    ) -> BatchOutcome:
        """A single request's answer: every record accepted, or rejected with Snap's message."""
        if response.status == 200 and _succeeded(response):
            return BatchOutcome.accept_all(records)
        if response.status != 400:
            raise self.request_error(response, f"{operation} of members of {self.target_label()}")
        return BatchOutcome.reject_all(records, self.error_message(response), f"HTTP 400 {_error_code(response)}")

    # -- the segment --------------------------------------------------------------------------------

    def _clear_request(self, ref: str | None = None) -> PreparedRequest:
        """``DELETE /v1/segments/{id}/all_users``."""
        return PreparedRequest("DELETE", f"/v1/segments/{ref or self._audience_id}/all_users")

    def _cleared_ok(self, response: HttpResponse) -> bool:
        """200 with ``request_status: SUCCESS``."""
        return response.status == 200 and _succeeded(response)

    def _find_by_name(self, name: str, transport: Transport) -> str | None:
        account = self.settings.ad_account_id
        path = f"/v1/adaccounts/{account}/segments"
        found: list[str] = []
        while path:
            response = transport.send(PreparedRequest("GET", path))
            if response.status != 200:
                raise self.request_error(response, f"listing the segments of ad account {account}")
            body = response.json() or {}
            for entry in body.get("segments") or []:
                segment = entry.get("segment") if isinstance(entry, dict) else None
                if isinstance(segment, dict) and segment.get("name") == name and segment.get("id"):
                    found.append(str(segment["id"]))
            path = str((body.get("paging") or {}).get("next_link") or "")
        return self._the_one_named(name, found, f"segments of ad account {account}")

    def _create_named(self, target: AudienceTarget, transport: Transport) -> str:
        assert isinstance(target, SnapAudienceTarget)
        account = self.settings.ad_account_id
        segment: dict[str, Any] = {
            "name": target.name,
            "source_type": "FIRST_PARTY",
            "retention_in_days": target.retention_in_days,
            "ad_account_id": account,
        }
        if target.description:
            segment["description"] = target.description
        response = transport.send(
            PreparedRequest("POST", f"/v1/adaccounts/{account}/segments", json={"segments": [segment]})
        )
        body = response.json() if response.status == 200 else None
        entries = body.get("segments") if isinstance(body, dict) else None
        created = entries[0].get("segment") if entries and isinstance(entries[0], dict) else None
        if not isinstance(created, dict) or not created.get("id"):
            raise self.request_error(response, f"creating the segment {target.name!r} in ad account {account}")
        logger.info("%s: created segment %r (id %s)", self.label, target.name, created["id"])
        return str(created["id"])

    # -- reading responses --------------------------------------------------------------------------

    def error_message(self, response: HttpResponse) -> str:
        """Snap's ``display_message`` / ``debug_message`` with its ``error_code``, secrets masked."""
        body = response.json()
        if isinstance(body, dict) and (body.get("debug_message") or body.get("display_message")):
            text = str(body.get("display_message") or body.get("debug_message"))
            code = body.get("error_code")
            return self.redact(f"{text} ({code})" if code else text)
        return super().error_message(response)

    # -- validate --connect -------------------------------------------------------------------------

    def check_connection(self, transport: Transport) -> None:
        """The token (obtained here), the ad account, and a segment given by id."""
        account = self.settings.ad_account_id
        self._read(transport, f"/v1/adaccounts/{account}", f"ad account {account}")
        target = self.settings.audience
        if target is not None and target.id is not None:  # a segment given by name is created by the first sync
            self._read(transport, f"/v1/segments/{target.id}", f"segment {target.id}")


def _succeeded(response: HttpResponse) -> bool:
    body = response.json()
    status = str(body.get("request_status") or "") if isinstance(body, dict) else ""
    return status.upper() == "SUCCESS"


def _error_code(response: HttpResponse) -> str:
    body = response.json()
    return str(body.get("error_code") or "") if isinstance(body, dict) else ""


register_platform("snapchat_ads", SnapchatAdsSettings, SnapchatAds)

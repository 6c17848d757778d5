"""Google Display & Video 360: ``audiences`` (Customer Match first-party audiences), API v4.

The target is the activation's ``audience``: ``{name: "VIP Europe"}`` (looked up among the
advertiser's first-party audiences, created with the first batch of members when missing) or
``{id: "4567890123"}``. Display & Video 360 API v4 (v1-v3 are sunset; v4 renamed
``firstAndThirdPartyAudiences`` to ``firstPartyAndPartnerAudiences``), root
``https://displayvideo.googleapis.com``:

- find: ``GET /v4/firstPartyAndPartnerAudiences?advertiserId=..&filter=displayName:"<name>"``
  (``HAS`` is "contains": the exact name is picked from the answer; pages followed by
  ``nextPageToken``, at most 5,000 per page);
- create: ``POST /v4/firstPartyAndPartnerAudiences?advertiserId=..`` with ``displayName``,
  ``firstPartyAndPartnerAudienceType: FIRST_PARTY_AND_PARTNER_AUDIENCE_TYPE_FIRST_PARTY``,
  ``audienceType`` (``CUSTOMER_MATCH_CONTACT_INFO``, or ``CUSTOMER_MATCH_DEVICE_ID`` when the
  activation sends ``mobile_device_id``), ``membershipDurationDays`` (1-540, the
  ``membership_duration_days`` setting, default 540) and the first ``add`` batch as
  ``contactInfoList`` / ``mobileDeviceIdList``;
- ``add`` / ``remove``: ``POST /v4/firstPartyAndPartnerAudiences/{id}:editCustomerMatchMembers``
  with ``advertiserId`` and ``addedContactInfoList`` / ``removedContactInfoList`` (or
  ``addedMobileDeviceIdList`` / ``removedMobileDeviceIdList``), answered
  ``{"firstPartyAndPartnerAudienceId": ...}``.

**No replace.** The API has no "remove every member" call, so a full sync is the SDK's remove +
add: records that left (and old identifiers of changed records) are removed, every current one is
added; a member added in Display & Video 360 by other means stays.

**Identifiers** (``identifiers:`` names). As Google's "prepare user data" guide says: whitespace
removed, lower-cased, then SHA-256 (lower-case hex) for names and e-mails; phones in E.164 with
the country calling code (the activation's ``default_country`` for national numbers), then
SHA-256; zip and country codes are **not** hashed (Google: "Attempting to upload unhashed customer
data results in an error", and zips and countries must not be hashed). A value that already is a
SHA-256 digest passes unchanged.

- ``email`` -> ``hashedEmails``; ``phone`` -> ``hashedPhoneNumbers``;
- ``first_name`` -> ``hashedFirstName``, ``last_name`` -> ``hashedLastName``, ``country`` ->
  ``countryCode`` (ISO 3166-1 alpha-2, upper-cased: assumed, the reference says only "country
  code"), ``zip`` -> ``zipCodes`` (trimmed, its case kept). These four go together (the reference:
  "Must also be set with the following fields"): a record with only some of them sends its
  e-mail and phone without the address, and a record with neither e-mail, phone nor a complete
  address is rejected before anything is sent;
- ``mobile_device_id`` (``maid``, ``madid``) -> ``mobileDeviceIds`` of a
  ``CUSTOMER_MATCH_DEVICE_ID`` audience: an IDFA or AAID (a UUID), trimmed, **sent as is**: the
  reference gives device ids as plain strings and no hashing step (the one identifier that leaves
  unhashed; it is a resettable advertising id, not contact data). It cannot be mixed with contact
  identifiers (an audience holds one kind).

**Consent.** The ``consent`` setting (``{ad_user_data: granted, ad_personalization: granted}``) goes
with every member list as ``consent: {adUserData: CONSENT_STATUS_GRANTED, ...}``; consent signals
apply to every user of a request. ``denied`` is refused in the settings: Google answers any
``CONSENT_STATUS_DENIED`` with an error (leave those users out of the segment instead). Without the
setting no consent is sent ("consent is not specified").

**Limits.** A member list holds at most **500,000 members "after splitting the contact_infos"**
(each e-mail, phone and address of a contact info counts: at most 3 per record here), so a batch
holds at most 150,000 records, and at most 10 MB of JSON (assumed: the reference gives no byte
limit). Rate: ``editCustomerMatchMembers`` and ``create`` are "write-intensive" (5 write queries
each) against 700 write requests per minute per project: the SDK keeps to **140 requests per
minute**, two in flight. 429 ``RESOURCE_EXHAUSTED`` is waited out with backoff (Google sends no
``Retry-After``).

**Errors.** Google's JSON error ``{"error": {"code", "message", "status"}}``. 401: the access token
is renewed once and the request sent again; a second 401 or a 403 (``PERMISSION_DENIED``) stops
the sync. An edit is all or nothing: a 400 (``INVALID_ARGUMENT``) rejects every record of the
request with Google's message (Google names no member), and the next sync sends them again. 404
(an audience id that does not exist) stops the sync with Google's message. 5xx: retried.

**Authentication.** Google OAuth 2.0 (``oauth.py``): ``client_id``, ``client_secret`` and a
``refresh_token`` granted the ``https://www.googleapis.com/auth/display-video`` scope are exchanged
at ``https://oauth2.googleapis.com/token`` (client credentials in the form body) for an access
token of about one hour, renewed before it expires, sent as ``Authorization: Bearer``.

Google is moving Customer Match management to the Data Manager API (``audienceMembers.ingest`` /
``remove``); this adapter uses the Display & Video 360 API, still documented for v4.

Documentation followed:

- v4 reference (methods, ContactInfo / MobileDeviceIdList / Consent fields, the 500,000 limit, list
  filter and page size): https://developers.google.com/display-video/api/reference/rest/v4/firstPartyAndPartnerAudiences
  and the generated v4 discovery documentation
  https://googleapis.github.io/google-api-python-client/docs/dyn/displayvideo_v4.firstPartyAndPartnerAudiences.html
  (there ``displayName`` and ``membershipDurationDays`` read "Output only"; they are sent on
  create as the v3 reference and the upload guide do -- assumed);
- upload guide (hashing, consent, create then edit):
  https://developers.google.com/display-video/api/guides/audiences/upload-customer-match and
  https://developers.google.com/display-video/api/guides/tasks/upload-customer-match-audience/prepare-data
- usage limits (write quota, write-intensive methods, 429 RESOURCE_EXHAUSTED):
  https://developers.google.com/display-video/api/limits
- the v3 edit method (the request's union fields): https://developers.google.com/display-video/api/reference/rest/v3/firstAndThirdPartyAudiences/editCustomerMatchMembers
- Data Manager migration: https://developers.google.com/data-manager/api/devguides/audiences/display-video/customer-match/upgrade/field-mappings
- Google OAuth 2.0 for web server apps (token endpoint, refresh): https://developers.google.com/identity/protocols/oauth2/web-server
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import pydantic
from pydantic import ConfigDict, Field

from dinmo_dagster.platforms import register_platform
from dinmo_dagster.platforms.audiences import (
    AudiencePlatform,
    AudienceTarget,
    IdentifierTable,
    OAuthBearer,
    advertising_id,
    check_audience_activation,
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
    IdentifierError,
    IdentifierSpec,
    normalize_email,
    normalize_phone,
)
from dinmo_dagster.platforms.oauth import OAuthSettings, OAuthToken

if TYPE_CHECKING:
    from dinmo_dagster.platforms.http import Transport

__all__ = ["DV360AudienceTarget", "DV360Consent", "GoogleDV360", "GoogleDV360Settings"]

logger = logging.getLogger("dinmo_dagster.platforms")

TOKEN_URL = "https://oauth2.googleapis.com/token"
API = "/v4/firstPartyAndPartnerAudiences"
MAX_MEMBERS_PER_REQUEST = 500_000  # "after splitting the contact_infos"
MEMBERS_PER_RECORD = 3  # an e-mail, a phone and an address at most
LIMITS = Limits(
    max_records_per_batch=150_000,
    max_bytes_per_batch=10_000_000,
    requests_per_window=140,  # 700 write requests per minute, 5 per write-intensive edit
    window_seconds=60.0,
    max_concurrency=2,
)
FIRST_PARTY = "FIRST_PARTY_AND_PARTNER_AUDIENCE_TYPE_FIRST_PARTY"
CONTACT_INFO, DEVICE_ID = "CUSTOMER_MATCH_CONTACT_INFO", "CUSTOMER_MATCH_DEVICE_ID"
_WHITESPACE = re.compile(r"\s+")
_COUNTRY = re.compile(r"[A-Z]{2}")
_ADDRESS = ("hashedFirstName", "hashedLastName", "countryCode", "zipCodes")


def _no_space_lower(text: str, default_country: str | None = None) -> str:
    value = _WHITESPACE.sub("", text).lower()
    if not value:
        raise IdentifierError("empty")
    return value


def _email(text: str, default_country: str | None = None) -> str:
    return normalize_email(_WHITESPACE.sub("", text))


def _phone(text: str, default_country: str | None = None) -> str:
    return normalize_phone(text, default_country)


def _country(text: str, default_country: str | None = None) -> str:
    value = text.strip().upper()
    if not _COUNTRY.fullmatch(value):
        raise IdentifierError("not a two-letter ISO 3166-1 country code")
    return value


def _zip(text: str, default_country: str | None = None) -> str:
    return text.strip()


def _device_id(text: str, default_country: str | None = None) -> str:
    return advertising_id(text)


# identifiers: name -> (ContactInfo field / mobileDeviceIds, how it is prepared)
_IDENTIFIERS = IdentifierTable({
    "email": ("hashedEmails", IdentifierSpec("email", hashed=True, optional=True, normalize=_email)),
    "phone": ("hashedPhoneNumbers", IdentifierSpec("phone", hashed=True, optional=True, normalize=_phone)),
    "first_name": ("hashedFirstName", IdentifierSpec("text", hashed=True, optional=True, normalize=_no_space_lower)),
    "last_name": ("hashedLastName", IdentifierSpec("text", hashed=True, optional=True, normalize=_no_space_lower)),
    "country": ("countryCode", IdentifierSpec("id", optional=True, normalize=_country)),
    "zip": ("zipCodes", IdentifierSpec("id", optional=True, normalize=_zip)),
    "mobile_device_id": ("mobileDeviceIds", IdentifierSpec("id", optional=True, normalize=_device_id)),
}, aliases={"maid": "mobile_device_id", "madid": "mobile_device_id", "zip_code": "zip",
            "country_code": "country"})  # fmt: skip


class DV360AudienceTarget(AudienceTarget):
    """The Customer Match audience an activation fills: ``{name: ...}`` (created when missing) or ``{id: ...}``."""

    noun = "Customer Match audience"
    max_name_length = 240  # assumed: Display & Video 360 names are limited to 240 characters

    name: str | None = Field(default=None, description="The audience's display name in the advertiser.")
    id: str | None = Field(default=None, description="The audience's numeric id.")


ConsentStatus = Literal["granted", "unspecified"]


class DV360Consent(pydantic.BaseModel):
    """The consent every user of a request gave (Google refuses ``denied``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ad_user_data: ConsentStatus | None = Field(default=None, description="Consent for ad user data.")
    ad_personalization: ConsentStatus | None = Field(
        default=None, description="Consent for ad personalization."
    )

    @pydantic.field_validator("ad_user_data", "ad_personalization", mode="before")
    @classmethod
    def _check_status(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = value.strip().lower().removeprefix("consent_status_")
        if value == "denied":
            raise ValueError(
                "found 'denied'; allowed: granted, unspecified (Google refuses a request whose "
                "users denied consent: leave them out of the segment)"
            )
        if value is not None and value not in ("granted", "unspecified"):
            raise ValueError(f"found {value!r}; allowed: granted, unspecified")
        return value

    def body(self) -> dict[str, str]:
        """The API's ``Consent`` object."""
        out = {}
        for key, name in (("ad_user_data", "adUserData"), ("ad_personalization", "adPersonalization")):
            value = getattr(self, key)
            if value is not None:
                out[name] = f"CONSENT_STATUS_{value.upper()}"
        return out


class GoogleDV360Settings(OAuthSettings):
    """Settings of a ``type: google_dv360`` destination (``audience`` comes from the activation)."""

    service: Literal["audiences"] = Field(description="audiences (Customer Match first-party audiences).")
    advertiser_id: str = Field(description="The Display & Video 360 advertiser's numeric id.")
    audience: DV360AudienceTarget | None = Field(
        default=None, description="The audience; from the activation."
    )
    membership_duration_days: int = Field(
        default=540, description="Days a member stays in an audience this destination creates (1-540)."
    )
    consent: DV360Consent | None = Field(default=None, description="Consent sent with every member list.")

    @pydantic.field_validator("advertiser_id", mode="before")
    @classmethod
    def _check_advertiser(cls, value: Any) -> Any:
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if not (isinstance(value, str) and value.strip().isdigit()):
            raise ValueError(f"found {value!r}; allowed: the advertiser's numeric id")
        return value.strip()

    @pydantic.field_validator("membership_duration_days", mode="before")
    @classmethod
    def _check_duration(cls, value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 540:
            raise ValueError(f"found {value!r}; allowed: a whole number of days from 1 to 540")
        return value


class GoogleDV360(OAuthBearer, AudiencePlatform):
    """Display & Video 360 Customer Match audiences: add and remove members (module docstring)."""

    name = "google_dv360"
    settings_model: ClassVar[type[PlatformSettings]] = GoogleDV360Settings
    services: ClassVar[Mapping[str, tuple[str, ...]]] = {"audiences": ("add", "remove")}
    default_base_url = "https://displayvideo.googleapis.com"
    limits = LIMITS
    audience_label = "Display & Video 360 audience"
    audience_noun = "audience"
    identifier_table = _IDENTIFIERS
    audiences_taking = "Customer Match audiences"

    settings: GoogleDV360Settings

    def __init__(self, settings: PlatformSettings, *, destination: str = "") -> None:
        super().__init__(settings, destination=destination)
        self.oauth = OAuthToken(self, default_token_url=TOKEN_URL)

    # -- activation checks ----------------------------------------------------------------------------

    def validate_activation(self, match: Mapping[str, str], mapping: Mapping[str, str]) -> list[str]:
        """Known identifiers, one per field, device ids alone, a complete address, no mapping, an audience."""
        problems = check_audience_activation(
            match, mapping, kind_of=_IDENTIFIERS.kind_of, allowed=", ".join(_IDENTIFIERS),
            takes=self.audiences_taking, has_audience=self.audience_target is not None,
        )  # fmt: skip
        kinds = {_IDENTIFIERS.kind_of(name) for name in match} - {None}
        if "mobileDeviceIds" in kinds and len(kinds) > 1:
            problems.append(
                "identifiers: found mobile_device_id with contact identifiers; allowed: "
                "mobile_device_id alone, or contact identifiers (an audience holds one kind)"
            )
        address = [k for k in _ADDRESS if k in kinds]
        if address and len(address) != len(_ADDRESS):
            missing = [
                n for n in ("first_name", "last_name", "country", "zip") if _IDENTIFIERS[n][0] not in kinds
            ]
            problems.append(
                f"identifiers: found part of an address, without {', '.join(missing)}; allowed: "
                "first_name, last_name, country and zip together"
            )
        return problems

    # -- requests -------------------------------------------------------------------------------------

    def record_input(self, operation: str, record: Record) -> Any:
        """A ContactInfo (address parts only when complete), a device id, or None (nothing to send)."""
        values = _IDENTIFIERS.by_kind(record.identifiers)
        if "mobileDeviceIds" in values:
            return values["mobileDeviceIds"]
        info: dict[str, Any] = {}
        if "hashedEmails" in values:
            info["hashedEmails"] = [values["hashedEmails"]]
        if "hashedPhoneNumbers" in values:
            info["hashedPhoneNumbers"] = [values["hashedPhoneNumbers"]]
        if all(k in values for k in _ADDRESS):
            info.update({k: values[k] for k in _ADDRESS[:3]})
            info["zipCodes"] = [values["zipCodes"]]
        return info or None

    def _member_list(self, inputs: Sequence[Any]) -> tuple[str, dict[str, Any]]:
        """(``ContactInfoList`` or ``MobileDeviceIdList``, its body) for the batch's inputs."""
        consent = self.settings.consent.body() if self.settings.consent else {}
        extra = {"consent": consent} if consent else {}
        if any(isinstance(i, str) for i in inputs):
            return "MobileDeviceIdList", {
                "mobileDeviceIds": [i for i in inputs if isinstance(i, str)],
                **extra,
            }
        return "ContactInfoList", {"contactInfos": [i for i in inputs if isinstance(i, dict)], **extra}

    def build_request(
        self, operation: str, inputs: Sequence[Any], records: Sequence[Record]
    ) -> PreparedRequest:
        """``POST .../{id}:editCustomerMatchMembers`` with the added or removed member list."""
        kind, members = self._member_list(inputs)
        side = "removed" if operation == "remove" else "added"
        body = {"advertiserId": self.settings.advertiser_id, f"{side}{kind}": members}
        return PreparedRequest("POST", f"{API}/{self._audience_ref()}:editCustomerMatchMembers", json=body)

    def deliver_batch(
        self, operation: str, records: Sequence[Record], inputs: Sequence[Any], transport: Transport
    ) -> BatchOutcome:
        """Reject records with nothing to send; find (or create, with this batch) the audience; edit it."""
        empty = [
            RecordResult(r.key, "rejected", _NOTHING, "no complete identifier")
            for r, i in zip(records, inputs, strict=True)
            if i is None
        ]
        sent = [(r, i) for r, i in zip(records, inputs, strict=True) if i is not None]
        if not sent:
            return BatchOutcome(empty)
        records, inputs = [r for r, _ in sent], [i for _, i in sent]
        with self._lock:
            if self._audience_id is None:
                self._audience_id = self._find(transport)
            if self._audience_id is None:
                if operation == "remove":
                    outcome = BatchOutcome.accept_all(records)  # no audience yet: nobody to remove
                else:
                    outcome = self._create_with(records, inputs, transport)
                outcome.results.extend(empty)
                return outcome
        response = transport.send(self.build_request(operation, inputs, records))
        outcome = self.parse_response(operation, records, response)
        outcome.results.extend(empty)
        return outcome

    def parse_response(
        self, operation: str, records: Sequence[Record], response: HttpResponse
    ) -> BatchOutcome:
        """200: every record accepted (Google matches later); 400: every record rejected with Google's message."""
        if response.status == 200:
            return BatchOutcome.accept_all(records)
        if response.status == 400 or response.status == 409 or response.status == 413:
            return BatchOutcome.reject_all(records, self.error_message(response), _code(response))
        raise self.request_error(response, f"{operation} of members of {self.target_label()}")

    # -- the audience ---------------------------------------------------------------------------------

    def _find(self, transport: Transport) -> str | None:
        target = self.settings.audience
        if target is None or target.name is None:
            raise self.config_error("audience: found nothing; allowed: {name: ...} or {id: ...}")
        advertiser = self.settings.advertiser_id
        quoted = target.name.replace("\\", "\\\\").replace('"', '\\"')
        params = {"advertiserId": advertiser, "filter": f'displayName:"{quoted}"', "pageSize": "5000"}
        found: list[str] = []
        while True:
            response = transport.send(PreparedRequest("GET", API, params=params))
            if response.status != 200:
                raise self.request_error(
                    response, f"listing the first-party audiences of advertiser {advertiser}"
                )
            body = response.json() or {}
            for audience in body.get("firstPartyAndPartnerAudiences") or []:
                if audience.get("displayName") == target.name and audience.get(
                    "firstPartyAndPartnerAudienceId"
                ):
                    found.append(str(audience["firstPartyAndPartnerAudienceId"]))
            if not body.get("nextPageToken"):
                break
            params = {**params, "pageToken": str(body["nextPageToken"])}
        return self._the_one_named(target.name, found, f"audiences of advertiser {advertiser}")

    def _create_with(
        self, records: Sequence[Record], inputs: Sequence[Any], transport: Transport
    ) -> BatchOutcome:
        target = self.settings.audience
        assert target is not None and target.name is not None
        kind, members = self._member_list(inputs)
        body = {
            "displayName": target.name,
            "firstPartyAndPartnerAudienceType": FIRST_PARTY,
            "audienceType": DEVICE_ID if kind == "MobileDeviceIdList" else CONTACT_INFO,
            "membershipDurationDays": str(self.settings.membership_duration_days),
            "contactInfoList" if kind == "ContactInfoList" else "mobileDeviceIdList": members,
        }
        params = {"advertiserId": self.settings.advertiser_id}
        response = transport.send(PreparedRequest("POST", API, json=body, params=params))
        created = response.json() if response.status == 200 else None
        if not isinstance(created, dict) or not created.get("firstPartyAndPartnerAudienceId"):
            return self.parse_response("add", records, response)
        self._audience_id = str(created["firstPartyAndPartnerAudienceId"])
        logger.info(
            "%s: created Customer Match audience %r (id %s)", self.label, target.name, self._audience_id
        )
        return BatchOutcome.accept_all(records)

    # -- reading responses ----------------------------------------------------------------------------

    def error_message(self, response: HttpResponse) -> str:
        """Google's ``error.message`` with its ``error.status``, secrets masked."""
        body = response.json()
        error = body.get("error") if isinstance(body, dict) else None
        if isinstance(error, dict) and error.get("message"):
            status = error.get("status")
            text = str(error["message"])
            return self.redact(f"{text} ({status})" if status else text)
        return super().error_message(response)

    # -- validate --connect ---------------------------------------------------------------------------

    def check_connection(self, transport: Transport) -> None:
        """The token (obtained here), the advertiser, and an audience given by id."""
        advertiser = self.settings.advertiser_id
        self._read(transport, f"/v4/advertisers/{advertiser}", f"advertiser {advertiser}")
        target = self.settings.audience
        if target is not None and target.id is not None:  # one given by name is created by the first sync
            response = transport.send(
                PreparedRequest("GET", f"{API}/{target.id}", params={"advertiserId": advertiser})
            )
            if response.status != 200:
                raise self.request_error(response, f"reading audience {target.id}")


_NOTHING = "no e-mail, phone or complete address (first_name, last_name, country and zip together) to send"


def _code(response: HttpResponse) -> str:
    body = response.json()
    error = body.get("error") if isinstance(body, dict) else None
    status = str(error.get("status") or "") if isinstance(error, dict) else ""
    return f"HTTP {response.status} {status}".strip()


register_platform("google_dv360", GoogleDV360Settings, GoogleDV360)

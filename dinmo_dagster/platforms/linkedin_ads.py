"""LinkedIn Ads: ``audiences`` (Matched Audiences: DMP segments filled by the streaming APIs).

**Target.** The activation's ``audience``: ``{name: "VIP Europe"}`` (looked up among the ad
account's DMP segments, created when missing) or ``{id: "10804"}``. The destination's
``segment_type`` chooses what the segment holds: ``user`` (members, the default) or ``company``
(companies). A segment is created with ``POST /rest/dmpSegments`` and ``{"name", "account":
"urn:li:sponsoredAccount:<id>", "sourcePlatform", "type": "USER" | "COMPANY", "accessPolicy":
"PRIVATE", "destinations": [{"destination": "LINKEDIN"}]}``; LinkedIn answers 201 with the new id in
the ``x-restli-id`` header. LinkedIn asks to wait 5 seconds before adding to a new segment: the
adapter does.

**Operations** (``add``, ``remove``) on ``https://api.linkedin.com/rest``, with the headers
``LinkedIn-Version: <YYYYMM>`` (the ``linkedin_version`` setting), ``X-Restli-Protocol-Version:
2.0.0`` and ``X-RestLi-Method: BATCH_CREATE``:

- user segments: ``POST /rest/dmpSegments/{id}/users`` with ``{"elements": [{"action": "ADD" |
  "REMOVE", "userIds": [{"idType": "SHA256_EMAIL", "idValue": "<digest>"}, {"idType": "GOOGLE_AID",
  "idValue": "<ad id>"}]}, ...]}``: one element per record carrying every identifier it has;
- company segments: ``POST /rest/dmpSegments/{id}/companies`` with ``{"elements": [{"action": ...,
  "companyName": ..., "companyWebsiteDomain": ..., "companyPageUrl": ...}, ...]}``;
- LinkedIn answers ``{"elements": [{"status": 201}, ...]}``, one status per element in order: a 2xx
  element accepts its record, another rejects it with the element's message (the element error
  shape, ``{"status": 400, "message": ...}``, is assumed: LinkedIn's pages show only successes);
  the next sync sends it again. Adding an id already there, or removing one already gone, is 201.
- **No replace.** The streaming APIs have no "remove every member" call, so a full sync is the
  SDK's remove + add: those that left are removed and every current one is added again; a member
  added in LinkedIn another way stays.
- at most **5,000 elements per request**: assumed (LinkedIn's pages found do not state a batch
  limit; 5,000 is the figure integrators use for this call). A smaller batch is always accepted.

**Identifiers** (``identifiers:`` names):

- ``user`` segments: ``email`` (SHA256_EMAIL: trimmed, lower-cased, then SHA-256 in lower-case hex,
  as LinkedIn's "hashed e-mail" idType wants; a value that already is a digest passes unchanged),
  ``google_aid`` (GOOGLE_AID; ``gaid`` is accepted too: the Android advertising id, a UUID,
  lower-cased) and ``apple_idfa`` (APPLE_IDFA; ``idfa``: the iOS id, a UUID, upper-cased). LinkedIn
  takes advertising ids as they are (its idType table has no hashed form of them): they are sent
  unhashed; e-mails never are. APPLE_IDFA is assumed from integrators' LinkedIn destinations (Adobe's
  "GAID" and "IDFA" targets); the LinkedIn page found lists SHA256_EMAIL, SHA512_EMAIL, GOOGLE_AID.
- ``company`` segments (not hashed: LinkedIn matches names and domains as text): ``company_name``
  (companyName, trimmed), ``company_domain`` (companyWebsiteDomain: lower-cased, without scheme,
  ``www.``, path: ``https://www.Example.com/about`` -> ``example.com``) and ``company_page_url``
  (companyPageUrl: a ``linkedin.com/company/<name>`` URL, sent as
  ``https://www.linkedin.com/company/<name>``).

An empty identifier is left out for that record; a record with none, or an invalid one, is
rejected before anything is sent (naming the identifier and column, never the value).

**Errors.** LinkedIn answers errors as ``{"status": 4xx, "serviceErrorCode": n, "code": "...",
"message": "..."}``. 401 (``INVALID_ACCESS_TOKEN``, ``serviceErrorCode`` 65600/65601 expired): the
adapter renews the access token once and sends the request again; a second 401 or a 403 stops the
sync with LinkedIn's message. 429: LinkedIn's daily and per-minute limits (no ``Retry-After`` or
rate-limit header is documented): exponential backoff, every worker holding. 5xx: retried with
backoff. Another 4xx (400, 422) rejects the request's records with LinkedIn's message and code.

**Limits as data.** LinkedIn publishes no numbers ("standard rate limits are not published"; the
streaming Users and Companies APIs have a one-minute limit per member on top of daily limits, read in
the Developer Portal). Assumed: 60 requests per 60 seconds, 5,000 elements per request, two requests
in flight; set ``rate_limit`` lower if the portal shows less.

**Authentication.** OAuth 2.0 (see ``oauth.py``): ``client_id``, ``client_secret`` (in the body) and
a ``refresh_token`` of a member with the ``rw_dmp_segments`` and ``r_ads`` permissions are exchanged
at ``https://www.linkedin.com/oauth/v2/accessToken`` (``grant_type=refresh_token``) for an access
token lasting ``expires_in`` seconds (60 days for LinkedIn; refresh tokens last a year), renewed
before it expires, kept in memory only and sent as ``Authorization: Bearer <token>``.

``source_platform``: LinkedIn's create call requires a ``sourcePlatform``, a value it assigns to
approved audience partners. Its pages do not list the values; ``DMP`` is assumed as the default and
the setting overrides it.

LinkedIn's documentation this adapter follows:

- DMP Segments (create, finder ``q=account``, get):
  https://learn.microsoft.com/en-us/linkedin/marketing/matched-audiences/create-and-manage-segments
- DMP Segment Users (``userIds``, idTypes, BATCH_CREATE, the 201 per element, the 5-second wait):
  https://learn.microsoft.com/en-us/linkedin/marketing/matched-audiences/create-and-manage-segment-users
- DMP Segment Companies (companyName, companyWebsiteDomain, companyPageUrl):
  https://learn.microsoft.com/en-us/linkedin/marketing/matched-audiences/create-and-manage-segment-companies
- Rate limits (429, limits not published): https://learn.microsoft.com/en-us/linkedin/shared/api-guide/concepts/rate-limits
- Refresh tokens: https://learn.microsoft.com/en-us/linkedin/shared/authentication/programmatic-refresh-tokens

Not read when this module was written (followed as Rest.li and OAuth conventions, assumed): the
refresh-token page's error bodies, the ``x-restli-id`` header of the create answer (the id is also
taken from a ``urn:...:<id>`` value), and the per-element error shape; the pages read show the
``userIds`` batch, the idTypes table, the company fields, ``start``/``count`` paging and the 5-second
wait.
"""

from __future__ import annotations

import logging
import re
import time
import urllib.parse
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import pydantic
from pydantic import Field

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
from dinmo_dagster.platforms.identifiers import IdentifierError, IdentifierSpec, normalize_email
from dinmo_dagster.platforms.oauth import OAuthSettings, OAuthToken

if TYPE_CHECKING:
    from dinmo_dagster.platforms.http import Transport

__all__ = ["LinkedInAds", "LinkedInAdsSettings", "LinkedInAudienceTarget"]

logger = logging.getLogger("dinmo_dagster.platforms")

TOKEN_URL = "https://www.linkedin.com/oauth/v2/accessToken"
DEFAULT_VERSION = "202607"  # July 2026: each monthly version is supported at least one year (versioning page)
MAX_ELEMENTS_PER_REQUEST = 5_000
LIMITS = Limits(
    max_records_per_batch=MAX_ELEMENTS_PER_REQUEST,
    requests_per_window=60,
    window_seconds=60.0,
    max_concurrency=2,
)
_DIGITS = re.compile(r"\d+")
_DOMAIN = re.compile(r"(?=.{1,253}$)([a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}")
_PAGE = re.compile(r"(?:https?://)?(?:[a-z]{2,3}\.)?linkedin\.com/company/([^/?#\s]+)/?(?:[?#].*)?", re.IGNORECASE)
_ACTIONS = {"add": "ADD", "remove": "REMOVE"}


def normalize_google_aid(text: str, default_country: str | None = None) -> str:
    """An Android advertising id: a UUID, lower-cased."""
    return advertising_id(text, "a Google advertising id (8-4-4-4-12 hex digits)").lower()


def normalize_apple_idfa(text: str, default_country: str | None = None) -> str:
    """An iOS identifier for advertisers: a UUID, upper-cased."""
    return advertising_id(text, "an Apple IDFA (8-4-4-4-12 hex digits)").upper()


def normalize_company_name(text: str, default_country: str | None = None) -> str:
    """A company name, trimmed, inner runs of spaces made one."""
    return " ".join(text.split())


def normalize_company_domain(text: str, default_country: str | None = None) -> str:
    """``https://www.Example.com/about`` -> ``example.com``."""
    value = text.strip().lower()
    value = re.sub(r"^[a-z][a-z0-9+.-]*://", "", value).split("/", 1)[0].split("?", 1)[0]
    value = value.removeprefix("www.")
    if not _DOMAIN.fullmatch(value):
        raise IdentifierError("not a website domain (such as example.com)")
    return value


def normalize_company_page_url(text: str, default_country: str | None = None) -> str:
    """A LinkedIn company page: ``https://www.linkedin.com/company/<name>``."""
    found = _PAGE.fullmatch(text.strip())
    if not found:
        raise IdentifierError("not a LinkedIn company page URL (https://www.linkedin.com/company/<name>)")
    return f"https://www.linkedin.com/company/{found.group(1)}"


# user identifiers: name -> (LinkedIn idType, how it is prepared)
_USER_IDS = IdentifierTable({
    "email": ("SHA256_EMAIL", IdentifierSpec(
        "email", hashed=True, optional=True, normalize=lambda text, _: normalize_email(text))),
    "google_aid": ("GOOGLE_AID", IdentifierSpec("id", optional=True, normalize=normalize_google_aid)),
    "apple_idfa": ("APPLE_IDFA", IdentifierSpec("id", optional=True, normalize=normalize_apple_idfa)),
}, aliases={"gaid": "google_aid", "idfa": "apple_idfa"})  # fmt: skip
# company identifiers: name -> (LinkedIn field, how it is prepared)
_COMPANY_IDS = IdentifierTable({
    "company_name": ("companyName", IdentifierSpec("text", optional=True, normalize=normalize_company_name)),
    "company_domain": ("companyWebsiteDomain", IdentifierSpec(
        "text", optional=True, normalize=normalize_company_domain)),
    "company_page_url": ("companyPageUrl", IdentifierSpec(
        "text", optional=True, normalize=normalize_company_page_url)),
})  # fmt: skip


class LinkedInAudienceTarget(AudienceTarget):
    """The DMP segment an activation fills: ``{name: ...}`` (created when missing) or ``{id: ...}``."""

    noun = "DMP segment"

    name: str | None = Field(default=None, description="The DMP segment's name in the ad account.")
    id: str | None = Field(default=None, description="The DMP segment's id (digits).")


class LinkedInAdsSettings(OAuthSettings):
    """Settings of a ``type: linkedin_ads`` destination (``audience`` comes from the activation)."""

    service: Literal["audiences"] = Field(description="audiences (Matched Audiences DMP segments).")
    ad_account_id: str = Field(description="The ad account's id (digits, or urn:li:sponsoredAccount:<id>).")
    segment_type: Literal["user", "company"] = Field(
        default="user", description="user (members: e-mails, ad ids) or company (names, domains, pages)."
    )
    linkedin_version: str = Field(default=DEFAULT_VERSION, description="The LinkedIn-Version header (YYYYMM).")
    source_platform: str = Field(default="DMP", description="sourcePlatform of a segment created by name.")
    audience: LinkedInAudienceTarget | None = Field(default=None, description="The segment; from the activation.")

    @pydantic.field_validator("ad_account_id", mode="before")
    @classmethod
    def _check_account(cls, value: Any) -> Any:
        text = str(value).strip() if isinstance(value, (str, int)) and not isinstance(value, bool) else value
        if isinstance(text, str):
            text = text.removeprefix("urn:li:sponsoredAccount:")
        if not (isinstance(text, str) and _DIGITS.fullmatch(text)):
            raise ValueError(f"found {value!r}; allowed: the ad account's numeric id, such as 516848833")
        return text

    @pydantic.field_validator("linkedin_version")
    @classmethod
    def _check_version(cls, value: str) -> str:
        if not re.fullmatch(r"20\d\d(0[1-9]|1[0-2])", value.strip()):
            raise ValueError(f"found {value!r}; allowed: a LinkedIn API version YYYYMM, such as {DEFAULT_VERSION}")
        return value.strip()


class LinkedInAds(OAuthBearer, AudiencePlatform):
    """LinkedIn DMP segments (users or companies): add and remove members (module docstring)."""

    name = "linkedin_ads"
    settings_model: ClassVar[type[PlatformSettings]] = LinkedInAdsSettings
    services: ClassVar[Mapping[str, tuple[str, ...]]] = {"audiences": ("add", "remove")}
    default_base_url = "https://api.linkedin.com"
    limits = LIMITS
    audience_label = "LinkedIn segment"
    audience_noun = "segment"
    settle_seconds = 5.0  # LinkedIn: wait 5 seconds after creating a segment before adding to it

    settings: LinkedInAdsSettings

    def __init__(self, settings: PlatformSettings, *, destination: str = "") -> None:
        super().__init__(settings, destination=destination)
        self.oauth = OAuthToken(self, default_token_url=TOKEN_URL)

    @property
    def _ids(self) -> IdentifierTable:
        return _COMPANY_IDS if self.settings.segment_type == "company" else _USER_IDS

    @property
    def _account_urn(self) -> str:
        return f"urn:li:sponsoredAccount:{self.settings.ad_account_id}"

    # -- auth -------------------------------------------------------------------------------------

    def auth_headers(self) -> dict[str, str]:
        """The access token as a bearer token, with the versioned API's headers."""
        return {
            **super().auth_headers(),
            "LinkedIn-Version": self.settings.linkedin_version,
            "X-Restli-Protocol-Version": "2.0.0",
        }

    # -- identifiers --------------------------------------------------------------------------------

    def identifier_spec(self, name: str) -> IdentifierSpec | None:
        """The segment type's identifiers (module docstring), each optional."""
        return self._ids.spec(name)

    def validate_activation(self, match: Mapping[str, str], mapping: Mapping[str, str]) -> list[str]:
        """Known identifiers of the segment type, one each; no mapping; an audience."""
        return check_audience_activation(
            match, mapping, kind_of=self._ids.kind_of, allowed=", ".join(self._ids), takes="LinkedIn segments",
            has_audience=self.settings.audience is not None,
            allowed_for=f"allowed for segment_type {self.settings.segment_type}",
        )  # fmt: skip

    # -- requests -----------------------------------------------------------------------------------

    def record_input(self, operation: str, record: Record) -> dict[str, Any]:
        """The record's element of the batch (``userIds`` or company fields)."""
        element: dict[str, Any] = {"action": _ACTIONS[operation]}
        if self.settings.segment_type == "company":
            return {**element, **_COMPANY_IDS.by_kind(record.identifiers)}
        order = {kind: i for i, (kind, _) in enumerate(_USER_IDS.values())}
        ids = [{"idType": kind, "idValue": v} for kind, v in _USER_IDS.by_kind(record.identifiers).items()]
        element["userIds"] = sorted(ids, key=lambda i: order[i["idType"]])
        return element

    def build_request(
        self, operation: str, inputs: Sequence[Any], records: Sequence[Record]
    ) -> PreparedRequest:
        """One BATCH_CREATE of the batch's elements on ``users`` or ``companies``."""
        what = "companies" if self.settings.segment_type == "company" else "users"
        return PreparedRequest(
            "POST", f"/rest/dmpSegments/{self._audience_ref()}/{what}", json={"elements": list(inputs)},
            headers={"X-RestLi-Method": "BATCH_CREATE"},
        )  # fmt: skip

    def deliver_batch(
        self, operation: str, records: Sequence[Record], inputs: Sequence[Any], transport: Transport
    ) -> BatchOutcome:
        """Resolve the segment (created when missing), then one BATCH_CREATE."""
        self._resolve_audience(transport)
        response = transport.send(self.build_request(operation, inputs, records))
        return self.parse_response(operation, records, response)

    def parse_response(
        self, operation: str, records: Sequence[Record], response: HttpResponse
    ) -> BatchOutcome:
        """Per-element statuses; a refused request rejects every record with LinkedIn's message."""
        if 200 <= response.status < 300:
            body = response.json()
            elements = body.get("elements") if isinstance(body, dict) else None
            if not isinstance(elements, list) or len(elements) != len(records):
                return BatchOutcome.accept_all(records)  # no per-element answer: the batch was taken
            results = []
            for record, element in zip(records, elements, strict=True):
                status = element.get("status") if isinstance(element, dict) else None
                if isinstance(status, int) and not 200 <= status < 300:
                    results.append(RecordResult(record.key, "rejected", self._element_message(element),
                                                f"element status {status}"))  # fmt: skip
                else:
                    results.append(RecordResult(record.key, "accepted"))
            return BatchOutcome(results)
        if response.status in (401, 403, 404) or response.status >= 500:
            raise self.request_error(response, f"{operation} of members of {self.target_label()}")
        code = _error_code(response)
        return BatchOutcome.reject_all(
            records, self.error_message(response), f"HTTP {response.status} {code}".strip()
        )

    def _element_message(self, element: Mapping[str, Any]) -> str:
        error = element.get("error")
        text = (error.get("message") if isinstance(error, dict) else None) or element.get("message")
        return self.redact(str(text)) if text else f"LinkedIn refused the element (status {element.get('status')})"

    # -- the segment --------------------------------------------------------------------------------

    def _find_by_name(self, name: str, transport: Transport) -> str | None:
        kind = self.settings.segment_type.upper()
        found: list[str] = []
        start, count = 0, 100
        while True:
            response = transport.send(PreparedRequest("GET", "/rest/dmpSegments", params={
                "q": "account", "account": self._account_urn, "start": str(start), "count": str(count)}))  # fmt: skip
            if response.status != 200:
                raise self.request_error(response, f"listing the DMP segments of ad account {self.settings.ad_account_id}")
            body = response.json() or {}
            elements = body.get("elements") or []
            for segment in elements:
                if (isinstance(segment, dict) and segment.get("name") == name and segment.get("id")
                        and str(segment.get("type") or kind) == kind):
                    found.append(str(segment["id"]))
            total = (body.get("paging") or {}).get("total")
            start += len(elements)
            # LinkedIn may answer fewer than asked per page: ``paging.total`` says when the list ends
            if not elements or (start >= total if isinstance(total, int) else len(elements) < count):
                break
        return self._the_one_named(name, found, f"{kind} DMP segments of ad account {self.settings.ad_account_id}")

    def _create_named(self, target: AudienceTarget, transport: Transport) -> str:
        name = target.name
        body = {
            "name": name,
            "account": self._account_urn,
            "sourcePlatform": self.settings.source_platform,
            "type": self.settings.segment_type.upper(),
            "accessPolicy": "PRIVATE",
            "destinations": [{"destination": "LINKEDIN"}],
        }
        response = transport.send(PreparedRequest("POST", "/rest/dmpSegments", json=body))
        created = response.header("x-restli-id") if response.status == 201 else None
        if not created:
            raise self.request_error(
                response, f"creating the DMP segment {name!r} in ad account {self.settings.ad_account_id}"
            )
        created = urllib.parse.unquote(created).rsplit(":", 1)[-1]
        logger.info("%s: created DMP segment %r (id %s)", self.label, name, created)
        if self.settle_seconds:
            time.sleep(self.settle_seconds)
        return created

    # -- reading responses --------------------------------------------------------------------------

    def error_message(self, response: HttpResponse) -> str:
        """LinkedIn's ``message`` with its ``serviceErrorCode``, secrets masked."""
        body = response.json()
        if isinstance(body, dict) and body.get("message"):
            code = body.get("serviceErrorCode") or body.get("code")
            text = str(body["message"])
            return self.redact(f"{text} ({code})" if code else text)
        return super().error_message(response)

    # -- validate --connect -------------------------------------------------------------------------

    def check_connection(self, transport: Transport) -> None:
        """The token (obtained here), the ad account, and a segment given by id."""
        account = self.settings.ad_account_id
        self._read(transport, f"/rest/adAccounts/{account}", f"ad account {account}")
        target = self.settings.audience
        if target is not None and target.id is not None:  # a segment given by name is created by the first sync
            self._read(transport, f"/rest/dmpSegments/{target.id}", f"DMP segment {target.id}")


def _error_code(response: HttpResponse) -> str:
    body = response.json()
    if not isinstance(body, dict):
        return ""
    return str(body.get("code") or body.get("serviceErrorCode") or "")


register_platform("linkedin_ads", LinkedInAdsSettings, LinkedInAds)

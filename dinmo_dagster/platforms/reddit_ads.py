"""Reddit Ads: ``audiences`` (customer-list custom audiences of the Reddit Ads API v3).

**Target.** The activation's ``audience``: ``{name: "VIP Europe"}`` (looked up among the ad account's
custom audiences, created when missing as ``type: CUSTOMER_LIST``) or ``{id: "t2_abc123"}``.

**Operations** (``add``, ``remove``) on ``https://ads-api.reddit.com/api/v3``:

- ``PATCH /api/v3/custom_audiences/{audience_id}/users`` with ``{"data": {"action_type": "ADD" |
  "REMOVE", "column_order": ["EMAIL_SHA256", "MAID_SHA256"], "user_data": [["<digest>",
  "<digest>"], ...]}}``: one request per batch carries every identifier of its records, one row per
  record in ``column_order``; a record without one of the batch's identifiers has ``""`` in that
  column (assumed: the documentation was not readable; it is what Segment's Reddit Audiences
  destination sends for a missing MAID).
- **No replace.** Reddit documents no "remove every user" call, so a full sync is the SDK's remove +
  add: the records that left are removed and every current one is added again; a member added in
  Reddit by hand stays.
- at most **2,500 rows per request** (assumed: the figure third-party Reddit Ads tools give for this
  call, e.g. the ``reddit_ads_update_custom_audience_users`` tool, "Max 2500 rows per call";
  Reddit's own page could not be read). A smaller batch is always accepted.
- A 2xx answer accepts the batch's records: Reddit matches identifiers later and names none back.

**Identifiers** (``identifiers:`` names; SHA-256 in lower-case hex; a value that already is a
SHA-256 digest passes unchanged):

- ``email`` (EMAIL_SHA256): as Reddit's hashing guide (Pixel / Conversions API "advanced matching")
  says, trimmed and lower-cased, the alias from the first ``+`` to the ``@`` removed, then every
  character of the user name that is not a letter or digit removed: ``Al.ice$+Apple@Example.Com`` ->
  ``alice@example.com``. That guide is written for conversions; it is assumed to apply to customer
  lists too (Segment's and Extract's Reddit audience destinations canonicalize the same way);
- ``mobile_ad_id`` (MAID_SHA256; ``madid`` and ``maid`` are accepted too): an IDFA or AAID (a
  UUID), trimmed. Reddit wants IDFAs upper-case and AAIDs lower-case (as Extract's Reddit audience
  destination documents); a UUID alone does not say which it is, so **its case is kept** as the
  warehouse holds it (iOS reports IDFAs upper-case, Android AAIDs lower-case).

Phone numbers are not an identifier of Reddit customer lists (``default_country`` is not used).
A record with no identifier, or an invalid one, is rejected before anything is sent (naming the
identifier and column, never the value).

**Errors.** Reddit's v3 error body is assumed to be ``{"error": {"code": ..., "message": ...}}``
(not checked against an errors page; a body without it is quoted as text). 401: the access token is
refused; the adapter renews it once and sends the request again; a second 401 or a 403 stops the
sync with Reddit's message. 429: rate limited; the wait comes from ``Retry-After`` or
``X-Ratelimit-Reset`` (seconds until the window resets, as Reddit's API answers it), every worker
holding; ``X-Ratelimit-Remaining: 0`` on any answer also holds every worker until the reset. 5xx:
retried with backoff. Any other 4xx (400: a malformed or refused request) rejects the request's
records with Reddit's message and code; the next sync sends them again.

**Limits as data.** 60 requests per 60 seconds (assumed: about one request per second, what
third-party Reddit Ads API guides give; the ``X-Ratelimit-*`` headers govern beyond that), 2,500
rows per request, two requests in flight.

**Authentication.** OAuth 2.0 (see ``oauth.py``): an app's ``client_id`` and ``client_secret`` (sent
as HTTP Basic, as Reddit's OAuth2 guide requires) and a permanent ``refresh_token`` (scopes
``adsread`` and ``adsedit``) are exchanged at ``https://www.reddit.com/api/v1/access_token`` for an
access token lasting ``expires_in`` seconds (one hour), renewed before it expires during long syncs,
kept in memory only and sent as ``Authorization: Bearer <token>``. Reddit asks for a descriptive
``User-Agent``: the token requests send ``dinmo-dagster (reverse ETL)``.

Reddit's documentation this adapter follows, and what was assumed where it could not be read:

- Reddit Ads API v3 reference (custom audiences, users PATCH, the schemas):
  https://ads-api.reddit.com/docs/v3/ -- behind a login and not readable when this module was
  written; the request shapes follow Segment's open-source Reddit Audiences destination
  (https://github.com/segmentio/action-destinations, ``destinations/reddit-audiences``: create with
  ``{"data": {"name", "type": "CUSTOMER_LIST"}}`` answered ``{"data": {"id", ...}}``; users PATCH
  with ``action_type``, ``column_order``, ``user_data``; schemas ``EMAIL_SHA256``, ``MAID_SHA256``).
  Listing (``GET /api/v3/ad_accounts/{id}/custom_audiences`` answered ``{"data": [...],
  "pagination": {"next_url"}}``) is assumed from v3's other list calls.
- OAuth2 (token URL, HTTP Basic client auth, refresh_token grant, User-Agent):
  https://github.com/reddit-archive/reddit/wiki/OAuth2
- E-mail canonicalization: Reddit's "Manual Advanced Matching" page (Reddit Pixel / Conversions API
  documentation), example ``Al.ice$+Apple@Example.Com`` -> ``alice@example.com``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import pydantic
import requests
from pydantic import Field

from dinmo_dagster.platforms import register_platform
from dinmo_dagster.platforms.audiences import (
    AudiencePlatform,
    AudienceTarget,
    IdentifierTable,
    OAuthBearer,
    advertising_id,
)
from dinmo_dagster.platforms.base import (
    BatchOutcome,
    HttpResponse,
    Limits,
    PlatformSettings,
    PreparedRequest,
    Record,
)
from dinmo_dagster.platforms.identifiers import IdentifierError, IdentifierSpec, normalize_email
from dinmo_dagster.platforms.oauth import OAuthSettings, OAuthToken

if TYPE_CHECKING:
    from dinmo_dagster.platforms.http import Transport

__all__ = ["RedditAds", "RedditAdsSettings", "RedditAudienceTarget", "normalize_reddit_email"]

logger = logging.getLogger("dinmo_dagster.platforms")

TOKEN_URL = "https://www.reddit.com/api/v1/access_token"
USER_AGENT = "dinmo-dagster (reverse ETL)"
MAX_ROWS_PER_REQUEST = 2_500
LIMITS = Limits(
    max_records_per_batch=MAX_ROWS_PER_REQUEST,
    requests_per_window=60,
    window_seconds=60.0,
    max_concurrency=2,
)
_NOT_ALNUM = re.compile(r"[^a-z0-9]")
_ACTIONS = {"add": "ADD", "remove": "REMOVE"}


def normalize_reddit_email(text: str) -> str:
    """Reddit's canonical e-mail: lower-cased, ``+alias`` dropped, user name letters and digits only."""
    email = normalize_email(text)
    local, _, domain = email.rpartition("@")
    local = _NOT_ALNUM.sub("", local.split("+", 1)[0])
    if not local:
        raise IdentifierError("has no letter or digit before the @ (Reddit keeps only those)")
    return f"{local}@{domain}"


def normalize_mobile_ad_id(text: str, default_country: str | None = None) -> str:
    """An IDFA or AAID, trimmed, its case kept (module docstring)."""
    return advertising_id(text)


# identifiers: name -> (Reddit schema, how it is prepared)
_SCHEMAS = IdentifierTable({
    "email": ("EMAIL_SHA256", IdentifierSpec(
        "email", hashed=True, optional=True, normalize=lambda text, _: normalize_reddit_email(text))),
    "mobile_ad_id": ("MAID_SHA256", IdentifierSpec(
        "id", hashed=True, optional=True, normalize=normalize_mobile_ad_id)),
}, aliases={"madid": "mobile_ad_id", "maid": "mobile_ad_id"})  # fmt: skip
_ORDER = ["EMAIL_SHA256", "MAID_SHA256"]


class RedditAudienceTarget(AudienceTarget):
    """The custom audience an activation fills: ``{name: ...}`` (created when missing) or ``{id: ...}``."""

    noun = "custom audience"
    numeric_id = False  # Reddit's ids are not documented as digits

    name: str | None = Field(default=None, description="The custom audience's name in the ad account.")
    id: str | None = Field(default=None, description="The custom audience's id.")

    @pydantic.field_validator("name", "id", mode="before")
    @classmethod
    def _check_text(cls, value: Any) -> Any:
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if value is not None and not (isinstance(value, str) and value.strip()):
            raise ValueError(f"found {value!r}; allowed: a non-empty text")
        return value


class RedditAdsSettings(OAuthSettings):
    """Settings of a ``type: reddit_ads`` destination (``audience`` comes from the activation)."""

    service: Literal["audiences"] = Field(description="audiences (customer-list custom audiences).")
    ad_account_id: str = Field(description="The ad account's id (t2_... or a_...).")
    audience: RedditAudienceTarget | None = Field(default=None, description="The audience; from the activation.")

    @pydantic.field_validator("ad_account_id")
    @classmethod
    def _check_account(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_]+", value.strip()):
            raise ValueError(f"found {value!r}; allowed: the ad account's id, letters, digits and _ "
                             "such as t2_abc123")
        return value.strip()


class RedditAds(OAuthBearer, AudiencePlatform):
    """Reddit customer-list custom audiences: add and remove members (module docstring)."""

    name = "reddit_ads"
    settings_model: ClassVar[type[PlatformSettings]] = RedditAdsSettings
    services: ClassVar[Mapping[str, tuple[str, ...]]] = {"audiences": ("add", "remove")}
    default_base_url = "https://ads-api.reddit.com"
    limits = LIMITS
    audience_label = "Reddit audience"
    audience_noun = "audience"
    identifier_table = _SCHEMAS
    audiences_taking = "Reddit audiences"

    settings: RedditAdsSettings

    def __init__(self, settings: PlatformSettings, *, destination: str = "") -> None:
        super().__init__(settings, destination=destination)
        session = requests.Session()
        session.headers["User-Agent"] = USER_AGENT  # Reddit throttles generic user agents
        self.oauth = OAuthToken(self, default_token_url=TOKEN_URL, client_auth="basic", session=session)

    # -- requests -----------------------------------------------------------------------------------

    def build_request(
        self, operation: str, inputs: Sequence[Any], records: Sequence[Record]
    ) -> PreparedRequest:
        """One PATCH for the batch: every record a row of its digests in ``column_order``."""
        columns = [schema for schema in _ORDER if any(schema in row for row in inputs)]
        body = {"data": {
            "action_type": _ACTIONS[operation],
            "column_order": columns,
            "user_data": [[row.get(schema, "") for schema in columns] for row in inputs],
        }}  # fmt: skip
        return PreparedRequest("PATCH", f"/api/v3/custom_audiences/{self._audience_ref()}/users", json=body)

    def deliver_batch(
        self, operation: str, records: Sequence[Record], inputs: Sequence[Any], transport: Transport
    ) -> BatchOutcome:
        """Resolve the audience (created when missing), then one PATCH."""
        self._resolve_audience(transport)
        response = transport.send(self.build_request(operation, inputs, records))
        return self.parse_response(operation, records, response)

    def parse_response(
        self, operation: str, records: Sequence[Record], response: HttpResponse
    ) -> BatchOutcome:
        """2xx: every record accepted; another 4xx: every record rejected with Reddit's message."""
        if 200 <= response.status < 300:
            return BatchOutcome.accept_all(records)
        if response.status in (401, 403) or response.status == 404 or response.status >= 500:
            raise self.request_error(response, f"{operation} of members of {self.target_label()}")
        code = _error_code(response)
        return BatchOutcome.reject_all(
            records, self.error_message(response), f"HTTP {response.status} {code}".strip()
        )

    # -- the audience -------------------------------------------------------------------------------

    def _find_by_name(self, name: str, transport: Transport) -> str | None:
        account = self.settings.ad_account_id
        path = f"/api/v3/ad_accounts/{account}/custom_audiences"
        found: list[str] = []
        while path:
            response = transport.send(PreparedRequest("GET", path))
            if response.status != 200:
                raise self.request_error(response, f"listing the custom audiences of ad account {account}")
            body = response.json() or {}
            for audience in body.get("data") or []:
                if isinstance(audience, dict) and audience.get("name") == name and audience.get("id"):
                    found.append(str(audience["id"]))
            path = str((body.get("pagination") or {}).get("next_url") or "")
        return self._the_one_named(name, found, f"custom audiences of ad account {account}")

    def _create_named(self, target: AudienceTarget, transport: Transport) -> str:
        name = target.name
        account = self.settings.ad_account_id
        response = transport.send(PreparedRequest(
            "POST", f"/api/v3/ad_accounts/{account}/custom_audiences",
            json={"data": {"name": name, "type": "CUSTOMER_LIST"}},
        ))  # fmt: skip
        body = response.json() if 200 <= response.status < 300 else None
        created = body.get("data") if isinstance(body, dict) else None
        if not isinstance(created, dict) or not created.get("id"):
            raise self.request_error(response, f"creating the custom audience {name!r} in ad account {account}")
        logger.info("%s: created custom audience %r (id %s)", self.label, name, created["id"])
        return str(created["id"])

    # -- reading responses --------------------------------------------------------------------------

    def error_message(self, response: HttpResponse) -> str:
        """Reddit's ``error.message`` with its ``error.code``, secrets masked."""
        body = response.json()
        error = body.get("error") if isinstance(body, dict) else None
        if isinstance(error, dict) and error.get("message"):
            code = error.get("code")
            text = str(error["message"])
            return self.redact(f"{text} ({code})" if code else text)
        return super().error_message(response)

    # -- validate --connect -------------------------------------------------------------------------

    def check_connection(self, transport: Transport) -> None:
        """The token (obtained here), the ad account, and an audience given by id."""
        account = self.settings.ad_account_id
        self._read(transport, f"/api/v3/ad_accounts/{account}", f"ad account {account}")
        target = self.settings.audience
        if target is not None and target.id is not None:  # an audience given by name is created by the first sync
            self._read(transport, f"/api/v3/custom_audiences/{target.id}", f"custom audience {target.id}")


def _error_code(response: HttpResponse) -> str:
    body = response.json()
    error = body.get("error") if isinstance(body, dict) else None
    return str(error.get("code") or "") if isinstance(error, dict) else ""


register_platform("reddit_ads", RedditAdsSettings, RedditAds)

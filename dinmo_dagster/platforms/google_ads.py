"""Google Ads: ``audiences`` (Customer Match user lists) and ``events`` (offline click conversions and
conversion adjustments), through the Google Ads API's REST interface.

**audiences** (operations ``add``, ``remove``, ``replace``). The target is the activation's
``audience``: ``{name: "VIP Europe"}`` (looked up among the customer's user lists with a GAQL query,
created when missing as a CRM-based list, ``crmBasedUserList.uploadKeyType`` ``CONTACT_INFO``, or
``MOBILE_ADVERTISING_ID`` with the ``app_id`` setting when the activation sends mobile ids; membership
life span 10000 days, Google's "no expiration") or ``{id: "8765"}`` (the user list id). Members go
through an offline user data job, one job per operation of a sync:

- ``POST /{version}/customers/{customer_id}/offlineUserDataJobs:create`` with ``{"job": {"type":
  "CUSTOMER_MATCH_USER_LIST", "customerMatchUserListMetadata": {"userList": "customers/{id}/userLists/
  {list}", "consent": {...}}}}`` (``consent`` when the ``consent`` setting is given) answers the job's
  ``resourceName``; created with the operation's first batch;
- each batch: ``POST /{version}/{job}:addOperations`` with ``{"operations": [{"create" | "remove":
  {"userIdentifiers": [...]}}, ...], "enablePartialFailure": true}``: one operation (one ``UserData``)
  per record. Google refuses a ``UserData`` that fails validation in ``partialFailureError`` (a
  ``google.rpc.Status`` whose ``details`` hold a ``GoogleAdsFailure``; each error's ``location``
  names ``operations[i]``): record ``i`` is rejected with Google's message and error code, and the next
  sync sends it again; the others wait for the job (*pending*);
- once every batch of the operation was added: ``POST /{version}/{job}:run``, then the job's status is
  read with ``POST /{version}/customers/{id}/googleAds:search`` (``SELECT offline_user_data_job.status,
  offline_user_data_job.failure_reason FROM offline_user_data_job WHERE ...resource_name = '...'``,
  as Google's Customer Match example does) after 0.02 s, then at doubling intervals up to every 30 s
  (``poll_interval_seconds``), until ``SUCCESS`` (the
  pending records are accepted) or ``FAILED`` (they are rejected with the ``failure_reason``; the next
  sync sends them again), at most the sync's job timeout (``RetryPolicy.job_timeout_seconds``; past it
  the sync stops and the records go with the next sync: adds and removes are idempotent);
- **replace** (a full sync) is Google's own: the job's first operation is ``{"removeAll": true}``,
  then every member is created in the same job, so the list is swapped when the job runs. A full sync
  with no member still runs a job with ``removeAll`` alone (the list is then empty). A replace batch
  that Google refuses whole stops the sync (the job is never run: the list keeps its members).
- Limits: at most 100,000 user identifiers per ``addOperations`` request (Google's limit for standard
  access); Google recommends about 10,000 per request, so a batch holds at most 10,000 records (a
  record has at most 4 identifiers, so 40,000). One request in flight (one job per list at a time:
  Google refuses concurrent jobs on a list with ``CONCURRENT_MODIFICATION``).

**Identifiers** (``identifiers:`` names; hashed ones are SHA-256, lower-case hex; a value that already
is a SHA-256 digest passes unchanged):

- ``email`` (``hashedEmail``): trimmed, lower-cased. Google says the dots before ``@gmail.com`` /
  ``@googlemail.com`` need not be removed, so they are kept;
- ``phone`` (``hashedPhoneNumber``): E.164 with its ``+`` (``phonenumbers``, the activation's
  ``default_country`` for national numbers);
- ``first_name``, ``last_name`` (``addressInfo.hashedFirstName`` / ``hashedLastName``): trimmed,
  lower-cased; ``country_code`` (``addressInfo.countryCode``: a 2-letter ISO code, upper-cased) and
  ``postal_code`` (``addressInfo.postalCode``, trimmed) are **not hashed**, as Google requires. An
  address is sent only whole (all four); a record with part of one sends its other identifiers, and
  is rejected when it has none;
- ``mobile_id`` (``mobileId``; ``madid`` too): an IDFA / AAID, not hashed (lists of upload key type
  ``MOBILE_ADVERTISING_ID`` only: it cannot be mixed with the contact identifiers).

**events** (operation ``track``): what a record becomes is the destination's ``conversion_kind``:

- ``click`` (default): ``POST /{version}/customers/{id}:uploadClickConversions`` with
  ``{"conversions": [...], "partialFailure": true}``. Each conversion: ``conversionAction`` (the
  ``conversion_action`` setting: ``{name:}`` looked up by GAQL, or ``{id:}``), exactly one of the
  identifiers ``gclid`` / ``gbraid`` / ``wbraid`` (and hashed ``email`` / ``phone`` as
  ``userIdentifiers`` when matched: enhanced conversions for leads), ``conversionDateTime`` (the
  column mapped to ``conversion_date_time``, as ``yyyy-mm-dd hh:mm:ss+hh:mm``; naive timestamps are
  UTC), ``conversionValue`` and ``currencyCode`` (mapped ``conversion_value`` / ``currency_code``,
  else the ``currency_code`` setting), ``orderId`` (a mapped ``order_id``, else the record's key) and
  ``consent.adUserData`` (the ``consent`` setting);
- ``enhancement`` / ``restatement`` / ``retraction``: ``POST /{version}/customers/{id}:
  uploadConversionAdjustments`` with ``{"conversionAdjustments": [...], "partialFailure": true}``,
  ``adjustmentType`` ``ENHANCEMENT`` / ``RESTATEMENT`` / ``RETRACTION``, the conversion named by its
  ``orderId`` (mapped ``order_id``, else the key: the ``orderId`` its click conversion was uploaded
  with). ``ENHANCEMENT`` sends the hashed ``userIdentifiers`` (email, phone, the address) and a mapped
  ``user_agent``; ``RESTATEMENT`` needs ``adjustment_date_time`` and ``conversion_value`` (the
  ``restatementValue.adjustedValue``, with ``currencyCode``); ``RETRACTION`` needs
  ``adjustment_date_time``.
- at most 2,000 conversions (or adjustments) per request (``TOO_MANY_CONVERSIONS_IN_REQUEST``: "upload
  fewer than 2001"), four requests in flight.
- Per-record errors come back in ``partialFailureError`` (``location``: ``conversions[i]`` or
  ``conversion_adjustments[i]``): record ``i`` is rejected with Google's message and code, the others
  accepted. **De-duplication**: Google keeps one conversion per click and ``conversionDateTime``
  (``CLICK_CONVERSION_ALREADY_EXISTS``), and one adjustment of each kind per
  conversion (``CONVERSION_ALREADY_ENHANCED``, ``CONVERSION_ALREADY_RETRACTED``,
  ``RESTATEMENT_ALREADY_EXISTS``): an event re-sent after a killed sync gets one of these errors and
  is counted as accepted (Google holds it once).

**Errors.** Google's error body is ``{"error": {"code", "message", "status", "details": [{"@type":
"...GoogleAdsFailure", "errors": [{"errorCode": {"<category>": "<CODE>"}, "message"}], "requestId"}]}}``;
messages quote each error as ``<message> (<category>.<CODE>)``. 401 ``UNAUTHENTICATED``: the access
token is renewed once and the request sent again; 403 (``PERMISSION_DENIED``: developer token not
approved, no access to the customer, a missing ``login_customer_id``) stops the sync. 429
``RESOURCE_EXHAUSTED`` (``quotaError``): waited out for the ``quotaErrorDetails.retryDelay`` Google
gives (``"30s"``), backing off otherwise; a delay longer than a sync waits ends it early as a partial
success. 5xx: retried with backoff. Another 4xx rejects the request's records with Google's message
(a replace stops instead).

**Limits as data.** Google documents no request rate for these services, only token buckets per
customer and developer token answered with ``RESOURCE_EXHAUSTED``, and a daily operations quota for
basic access (15,000; ``addOperations`` and each upload count as one operation). The limiter starts at
an assumed 10 requests per second and follows Google's ``retryDelay`` beyond that.

**Authentication.** OAuth 2.0 (``oauth.py``): ``client_id``, ``client_secret`` and ``refresh_token``
exchanged at ``https://oauth2.googleapis.com/token`` (client credentials in the form body), the access
token sent as ``Authorization: Bearer``, renewed before it expires; plus the ``developer-token``
header (``developer_token``, a secret) and ``login-customer-id`` (``login_customer_id``, the manager
account, when access to the customer goes through one). ``api_version`` pins the API version (default
``v26``, the latest version in Google's reference when this module was written; Google sunsets a major
version about a year after its release).

Google's documentation this adapter follows, and what was assumed:

- Customer Match (normalization, hashing, OfflineUserDataJobService preferred, the 10,000 / 100,000
  identifiers per request, ``removeAll``, consent for EEA users):
  https://developers.google.com/google-ads/api/docs/remarketing/audience-types/customer-match ,
  https://developers.google.com/google-ads/api/rest/reference/rest/v15/customers.offlineUserDataJobs/addOperations ,
  https://developers.google.com/google-ads/api/reference/rpc/v26/AddOfflineUserDataJobOperationsRequest ,
  https://developers.google.com/google-ads/api/reference/rpc/v24/OfflineUserDataJobService/RunOfflineUserDataJob.md.txt ,
  https://developers.google.com/google-ads/api/reference/rpc/v23/OfflineUserDataJobStatusEnum.OfflineUserDataJobStatus.md.txt ,
  https://developers.google.com/google-ads/api/reference/rpc/v25/OfflineUserDataJob.md.txt ,
  https://developers.google.com/google-ads/api/fields/v25/offline_user_data_job.md.txt ;
  the 100,000 figure and the 10,000 recommendation are also how Google's API team states them
  (https://www.mail-archive.com/adwords-api@googlegroups.com/msg113667.html). Which error code Google
  gives for more than 100,000 identifiers is not documented (the fake answers ``TOO_MANY_OPERATIONS``).
- Hashing rules: https://groups.google.com/g/adwords-api/c/GLqSCji7Hx0 (E.164 with ``+``), and
  https://google-support.mirrorblogs.com/google-ads/answer/7474263 (country and zip not hashed).
- Conversions: https://developers.google.com/google-ads/api/reference/rpc/v26/UploadClickConversionsResponse ,
  https://developers.google.com/google-ads/api/reference/rpc/latest/ConversionUploadErrorEnum.ConversionUploadError
  (``TOO_MANY_CONVERSIONS_IN_REQUEST``, ``CLICK_CONVERSION_ALREADY_EXISTS``, ``TOO_RECENT_EVENT``),
  https://developers.google.com/google-ads/api/reference/rpc/v25/ConversionAdjustmentUploadErrorEnum.ConversionAdjustmentUploadError.md.txt
  (``CONVERSION_ALREADY_ENHANCED``, ``CONVERSION_ALREADY_RETRACTED``; ``RESTATEMENT_ALREADY_EXISTS`` is
  assumed from the enum's "duplicate adjustments"; 2,000 adjustments per request is assumed to match
  conversions), https://developers.google.com/google-ads/api/docs/best-practices/partial-failures .
- Quotas and errors: https://developers.google.com/google-ads/api/reference/rpc/v24/QuotaErrorDetails.md.txt ,
  https://developers.google.cn/google-ads/api/reference/rpc/v17/QuotaErrorEnum.QuotaError ,
  https://developers.google.com/google-ads/api/docs/best-practices/quotas
- Versions: https://developers.google.com/google-ads/api/docs/sunset-dates ,
  https://developers.google.com/google-ads/api/docs/concepts/versioning
"""

from __future__ import annotations

import datetime as dt
import decimal
import logging
import re
import threading
import time
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import pydantic
from pydantic import ConfigDict, Field, SecretStr

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
    ResponseKind,
    Signal,
)
from dinmo_dagster.platforms.errors import PlatformRequestError
from dinmo_dagster.platforms.identifiers import IdentifierError, IdentifierSpec
from dinmo_dagster.platforms.oauth import OAuthSettings, OAuthToken

if TYPE_CHECKING:
    from dinmo_dagster.platforms.http import Transport

__all__ = [
    "GoogleAds",
    "GoogleAdsSettings",
    "GoogleConsent",
    "GoogleConversionAction",
    "GoogleUserListTarget",
]

logger = logging.getLogger("dinmo_dagster.platforms")

TOKEN_URL = "https://oauth2.googleapis.com/token"
DEFAULT_API_VERSION = "v26"
MAX_IDENTIFIERS_PER_REQUEST = 100_000
MAX_USERS_PER_REQUEST = 10_000  # Google's recommendation per addOperations request
MAX_CONVERSIONS_PER_REQUEST = 2_000
AUDIENCE_LIMITS = Limits(
    max_records_per_batch=MAX_USERS_PER_REQUEST, requests_per_window=10, window_seconds=1.0, max_concurrency=1
)
EVENT_LIMITS = Limits(
    max_records_per_batch=MAX_CONVERSIONS_PER_REQUEST,
    requests_per_window=10,
    window_seconds=1.0,
    max_concurrency=4,
)
NO_EXPIRATION_DAYS = 10_000
# A job's status is read after 0.02 s, then at doubling intervals up to ``poll_interval_seconds``.
FIRST_POLL_SECONDS = 0.02
ConversionKind = Literal["click", "enhancement", "restatement", "retraction"]
ConsentStatus = Literal["GRANTED", "DENIED", "UNSPECIFIED"]
# Partial-failure codes that say Google already holds what was sent: a re-sent event counts once.
ALREADY_HELD = frozenset({
    "CLICK_CONVERSION_ALREADY_EXISTS", "CONVERSION_ALREADY_ENHANCED", "CONVERSION_ALREADY_RETRACTED",
    "RESTATEMENT_ALREADY_EXISTS",
})  # fmt: skip
_DIGITS = re.compile(r"\d+")
_CUSTOMER = re.compile(r"\d{3}-?\d{3}-?\d{4}")
_DURATION = re.compile(r"(\d+(?:\.\d+)?)s")
_ADDRESS = ("hashedFirstName", "hashedLastName", "countryCode", "postalCode")


# --------------------------------------------------------------------------------------------------
# Identifiers
# --------------------------------------------------------------------------------------------------


def _country(text: str, default_country: str | None = None) -> str:
    code = text.strip().upper()
    if not re.fullmatch(r"[A-Z]{2}", code):
        raise IdentifierError("not a 2-letter ISO 3166-1 country code")
    return code


def _trimmed(text: str, default_country: str | None = None) -> str:
    return text.strip()


def _mobile_id(text: str, default_country: str | None = None) -> str:
    return advertising_id(text)


_EMAIL = IdentifierSpec("email", hashed=True, optional=True)
_PHONE = IdentifierSpec("phone", hashed=True, optional=True)
_NAME = IdentifierSpec("text", hashed=True, optional=True)
_COUNTRY = IdentifierSpec("id", optional=True, normalize=_country)
_POSTAL = IdentifierSpec("id", optional=True, normalize=_trimmed)
_CLICK = IdentifierSpec("id", optional=True, normalize=_trimmed)
# name -> (what Google receives it as, how it is prepared)
_CONTACT = {
    "email": ("hashedEmail", _EMAIL),
    "phone": ("hashedPhoneNumber", _PHONE),
    "first_name": ("hashedFirstName", _NAME),
    "last_name": ("hashedLastName", _NAME),
    "country_code": ("countryCode", _COUNTRY),
    "postal_code": ("postalCode", _POSTAL),
}
_AUDIENCE_IDS = IdentifierTable(
    {**_CONTACT, "mobile_id": ("mobileId", IdentifierSpec("id", optional=True, normalize=_mobile_id))},
    aliases={"madid": "mobile_id"},
)
_CLICK_IDS = {"gclid": ("gclid", _CLICK), "gbraid": ("gbraid", _CLICK), "wbraid": ("wbraid", _CLICK)}
_EVENT_IDS: dict[str, IdentifierTable] = {
    "click": IdentifierTable({**_CLICK_IDS, "email": _CONTACT["email"], "phone": _CONTACT["phone"]}),
    "enhancement": IdentifierTable({**_CONTACT, "gclid": _CLICK_IDS["gclid"]}),
    "restatement": IdentifierTable({"gclid": _CLICK_IDS["gclid"]}),
    "retraction": IdentifierTable({"gclid": _CLICK_IDS["gclid"]}),
}
# mapping targets each conversion kind takes (the first ones are required)
_FIELDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "click": (("conversion_date_time",), ("conversion_value", "currency_code", "order_id")),
    "enhancement": ((), ("order_id", "conversion_date_time", "user_agent")),
    "restatement": (("adjustment_date_time", "conversion_value"), ("order_id", "currency_code", "conversion_date_time")),
    "retraction": (("adjustment_date_time",), ("order_id", "conversion_date_time")),
}  # fmt: skip


def _user_identifiers(by_kind: Mapping[str, str]) -> list[dict[str, Any]]:
    """Google's ``userIdentifiers`` of one record: one entry per identifier, the address only whole."""
    out: list[dict[str, Any]] = []
    for kind in ("hashedEmail", "hashedPhoneNumber", "mobileId"):
        if kind in by_kind:
            out.append({kind: by_kind[kind]})
    if all(part in by_kind for part in _ADDRESS):
        out.append({"addressInfo": {part: by_kind[part] for part in _ADDRESS}})
    return out


# --------------------------------------------------------------------------------------------------
# Settings
# --------------------------------------------------------------------------------------------------


class GoogleUserListTarget(AudienceTarget):
    """The Customer Match user list an activation fills: ``{name: ...}`` (created when missing) or ``{id: ...}``."""

    noun = "user list"
    max_name_length = 255

    name: str | None = Field(default=None, description="The user list's name in the customer account.")
    id: str | None = Field(default=None, description="The user list's numeric id.")
    description: str | None = Field(default=None, description="Description of a list created by name.")


class GoogleConversionAction(pydantic.BaseModel):
    """The conversion action events are uploaded to: ``{name: ...}`` (looked up) or ``{id: ...}``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str | None = Field(default=None, description="The conversion action's name.")
    id: str | None = Field(default=None, description="The conversion action's numeric id.")

    @pydantic.field_validator("id", mode="before")
    @classmethod
    def _check_id(cls, value: Any) -> Any:
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if value is not None and not (isinstance(value, str) and _DIGITS.fullmatch(value)):
            raise ValueError(f"found {value!r}; allowed: the conversion action's numeric id")
        return value

    @pydantic.model_validator(mode="after")
    def _one_of(self) -> GoogleConversionAction:
        if (self.name is None or not self.name.strip()) == (self.id is None):
            found = "both name and id" if self.id is not None else "neither name nor id"
            raise ValueError(f"found {found}; allowed: {{name: ...}} or {{id: ...}}")
        return self


class GoogleConsent(pydantic.BaseModel):
    """Consent sent with Customer Match jobs and click conversions (required by Google for EEA users)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ad_user_data: ConsentStatus | None = Field(default=None, description="Consent for ad user data.")
    ad_personalization: ConsentStatus | None = Field(
        default=None, description="Consent for ad personalization (Customer Match only)."
    )

    def body(self, *, personalization: bool = True) -> dict[str, str]:
        out = {"adUserData": self.ad_user_data} if self.ad_user_data else {}
        if personalization and self.ad_personalization:
            out["adPersonalization"] = self.ad_personalization
        return out


def _customer_id(value: Any, what: str) -> Any:
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not (isinstance(value, str) and _CUSTOMER.fullmatch(value.strip())):
        raise ValueError(f"found {value!r}; allowed: the {what}'s 10-digit id, such as 123-456-7890")
    return value.strip().replace("-", "")


class GoogleAdsSettings(OAuthSettings):
    """Settings of a ``type: google_ads`` destination (``audience`` comes from the activation)."""

    service: Literal["audiences", "events"] = Field(description="audiences (Customer Match) or events.")
    customer_id: str = Field(description="The Google Ads account (123-456-7890 or 1234567890).")
    login_customer_id: str | None = Field(
        default=None, description="The manager account through which the customer is reached."
    )
    developer_token: SecretStr = Field(
        description="The Google Ads API developer token (from {env: VAR}); secret."
    )
    api_version: str = Field(default=DEFAULT_API_VERSION, description="The Google Ads API version (v26).")
    audience: GoogleUserListTarget | None = Field(
        default=None, description="The user list; from the activation."
    )
    app_id: str | None = Field(
        default=None,
        description="The mobile app of a user list created for mobile ids (MOBILE_ADVERTISING_ID).",
    )
    consent: GoogleConsent | None = Field(default=None, description="Consent sent with the data (EEA users).")
    conversion_kind: ConversionKind = Field(default="click", description="What each event uploads (events).")
    conversion_action: GoogleConversionAction | None = Field(
        default=None, description="The conversion action (events): {name: ...} or {id: ...}."
    )
    currency_code: str | None = Field(
        default=None, description="ISO 4217 currency of values no column gives."
    )

    @pydantic.field_validator("customer_id", mode="before")
    @classmethod
    def _check_customer(cls, value: Any) -> Any:
        return _customer_id(value, "customer")

    @pydantic.field_validator("login_customer_id", mode="before")
    @classmethod
    def _check_login(cls, value: Any) -> Any:
        return None if value is None else _customer_id(value, "manager account")

    @pydantic.field_validator("api_version")
    @classmethod
    def _check_version(cls, value: str) -> str:
        if not re.fullmatch(r"v\d+", value):
            raise ValueError(
                f"found {value!r}; allowed: a Google Ads API version such as {DEFAULT_API_VERSION}"
            )
        return value

    @pydantic.field_validator("currency_code")
    @classmethod
    def _check_currency(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[A-Z]{3}", value):
            raise ValueError(f"found {value!r}; allowed: a 3-letter ISO 4217 code such as EUR")
        return value

    @pydantic.field_validator("developer_token")
    @classmethod
    def _check_developer_token(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value().strip():
            raise ValueError("is empty; allowed: the Google Ads API developer token")
        return value

    @pydantic.model_validator(mode="after")
    def _keys_of_the_service(self) -> GoogleAdsSettings:
        if self.service == "audiences":
            unused = [k for k in ("conversion_action", "currency_code") if getattr(self, k) is not None]
            if "conversion_kind" in self.model_fields_set:
                unused.insert(0, "conversion_kind")
        else:
            unused = [k for k in ("audience", "app_id") if getattr(self, k) is not None]
        problems = [f"{key} is not used by service {self.service}" for key in unused]
        if self.service == "events" and self.conversion_action is None:
            problems.append("conversion_action: found nothing; allowed: {name: ...} or {id: ...}")
        if problems:
            raise ValueError("; ".join(problems))
        return self


# --------------------------------------------------------------------------------------------------
# The adapter
# --------------------------------------------------------------------------------------------------


@dataclass
class _Job:
    """One offline user data job: the batches of one operation of one delivery."""

    resource_name: str
    replace: bool
    lock: threading.Lock = field(default_factory=threading.Lock)
    started: bool = False  # its first addOperations was answered (removeAll is in)


class GoogleAds(OAuthBearer, AudiencePlatform):
    """Customer Match user lists (add, remove, replace members) and conversion uploads (track)."""

    name = "google_ads"
    settings_model: ClassVar[type[PlatformSettings]] = GoogleAdsSettings
    services: ClassVar[Mapping[str, tuple[str, ...]]] = {
        "audiences": ("add", "remove", "replace"),
        "events": ("track",),
    }
    default_base_url = "https://googleads.googleapis.com"
    limits = AUDIENCE_LIMITS
    audience_label = "Google Ads user list"
    audience_noun = "user list"
    audiences_taking = "Customer Match user lists"
    poll_interval_seconds = 30.0

    settings: GoogleAdsSettings

    def __init__(self, settings: PlatformSettings, *, destination: str = "") -> None:
        super().__init__(settings, destination=destination)
        self.limits = EVENT_LIMITS if self.settings.service == "events" else AUDIENCE_LIMITS
        self.identifier_table = (
            _AUDIENCE_IDS
            if self.settings.service == "audiences"
            else _EVENT_IDS[self.settings.conversion_kind]
        )
        self.oauth = OAuthToken(self, default_token_url=TOKEN_URL)
        action = self.settings.conversion_action
        self._action_id: str | None = action.id if action else None
        self._jobs: weakref.WeakKeyDictionary[Transport, dict[str, _Job]] = weakref.WeakKeyDictionary()
        self._uses_mobile_ids = False

    # -- paths, auth, names ---------------------------------------------------------------------------

    @property
    def _customer(self) -> str:
        return f"customers/{self.settings.customer_id}"

    def _path(self, resource: str) -> str:
        return f"/{self.settings.api_version}/{resource}"

    def auth_headers(self) -> dict[str, str]:
        """The OAuth bearer token, the developer token and (through a manager) ``login-customer-id``."""
        headers = {
            **super().auth_headers(),
            "developer-token": self.settings.developer_token.get_secret_value(),
        }
        if self.settings.login_customer_id:
            headers["login-customer-id"] = self.settings.login_customer_id
        return headers

    def target_label(self) -> str:
        """``Google Ads user list 'VIP'`` or ``Google Ads customer 1234567890 (click conversions)``."""
        if self.settings.service == "events":
            return f"Google Ads customer {self.settings.customer_id} ({self.settings.conversion_kind} conversions)"
        return super().target_label()

    def _list_resource(self) -> str:
        return f"{self._customer}/userLists/{self._audience_ref()}"

    def _action_resource(self) -> str:
        if self._action_id:
            return f"{self._customer}/conversionActions/{self._action_id}"
        action = self.settings.conversion_action
        return f"<conversion action {action.name!r}>" if action and action.name else "<conversion action>"

    # -- activation checks ----------------------------------------------------------------------------

    def validate_activation(self, match: Mapping[str, str], mapping: Mapping[str, str]) -> list[str]:
        """Audiences: known identifiers, a whole address, contact or mobile ids; events: what the
        conversion kind needs (module docstring)."""
        table = self.identifier_table
        assert table is not None
        names = {table.canonical(n) for n in match}
        address = {"first_name", "last_name", "country_code", "postal_code"}
        problems: list[str] = []
        if self.settings.service == "audiences":
            problems = check_audience_activation(
                match, mapping, kind_of=table.kind_of, allowed=", ".join(table), takes=self.audiences_taking,
                has_audience=self.audience_target is not None,
            )  # fmt: skip
            target = self.audience_target
            if "mobile_id" in names and target is not None and target.name and not self.settings.app_id:
                problems.append(
                    "app_id: found nothing; allowed: the mobile app's id (a user list created by name for "
                    "mobile ids needs it)"
                )
            if "mobile_id" in names and names - {"mobile_id"}:
                problems.append(
                    "identifiers: found mobile_id with contact identifiers; allowed: mobile_id alone "
                    "(a MOBILE_ADVERTISING_ID list) or contact identifiers (a CONTACT_INFO list)"
                )
        else:
            kind = self.settings.conversion_kind
            for name in match:
                if table.kind_of(name) is None:
                    problems.append(
                        f"identifiers.{name}: found {name!r}; allowed for conversion_kind {kind}: {', '.join(table)}"
                    )
            clicks = [n for n in ("gclid", "gbraid", "wbraid") if n in names]
            if kind == "click" and not clicks:
                problems.append("identifiers: found no click id; allowed: one of gclid, gbraid, wbraid")
            if len(clicks) > 1:
                problems.append(
                    f"identifiers: found {', '.join(clicks)}; allowed: one click id per conversion"
                )
            if kind == "enhancement" and not names & {"email", "phone", *address}:
                problems.append(
                    "identifiers: found no user identifier; allowed: email, phone or an address "
                    "(enhanced conversions match users)"
                )
            required, optional = _FIELDS[kind]
            targets = list(mapping.values())
            for target in targets:
                if target not in required + optional:
                    problems.append(
                        f"mapping: found {target!r}; allowed for conversion_kind {kind}: {', '.join(required + optional)}"
                    )
            for target in required:
                if target not in targets:
                    problems.append(
                        f"mapping: no column is mapped to {target}; conversion_kind {kind} needs it"
                    )
        if names & address and not address <= names:
            missing = ", ".join(sorted(address - names))
            problems.append(
                f"identifiers: an address needs first_name, last_name, country_code and postal_code; missing {missing}"
            )
        return problems

    # -- requests -------------------------------------------------------------------------------------

    def record_input(self, operation: str, record: Record) -> Any:
        """A ``UserData`` (audiences) or a click conversion / conversion adjustment (events)."""
        assert self.identifier_table is not None
        by_kind = self.identifier_table.by_kind(record.identifiers)
        if self.settings.service == "audiences":
            verb = "remove" if operation == "remove" else "create"
            return {verb: {"userIdentifiers": _user_identifiers(by_kind)}}
        if self.settings.conversion_kind == "click":
            return self._click(record, by_kind)
        return self._adjustment(record, by_kind)

    def build_request(
        self, operation: str, inputs: Sequence[Any], records: Sequence[Record]
    ) -> PreparedRequest:
        """``:addOperations`` of the operation's job, or an upload of conversions / adjustments."""
        if self.settings.service == "events":
            if self.settings.conversion_kind == "click":
                body = {"conversions": [self._with_action(i) for i in inputs], "partialFailure": True}
                return PreparedRequest(
                    "POST", self._path(f"{self._customer}:uploadClickConversions"), json=body
                )
            body = {"conversionAdjustments": [self._with_action(i) for i in inputs], "partialFailure": True}
            return PreparedRequest(
                "POST", self._path(f"{self._customer}:uploadConversionAdjustments"), json=body
            )
        return self._add_operations("<job created for this operation>", list(inputs))

    def preview_request(
        self, operation: str, inputs: Sequence[Any], records: Sequence[Record]
    ) -> PreparedRequest:
        """The first request of the operation; a replace shows ``removeAll`` and the job's create / run."""
        if self.settings.service == "events":
            return self.build_request(operation, inputs, records)
        operations = [{"removeAll": True}, *inputs] if operation == "replace" else list(inputs)
        request = self._add_operations("<job created for this operation>", operations)
        job = {
            "create": self._create_job_body(),
            "then": "<:run, then the job's status until SUCCESS or FAILED>",
        }
        return PreparedRequest(request.method, request.path, json={**request.json, "job": job})

    def _add_operations(self, job: str, operations: list[Any]) -> PreparedRequest:
        body = {"operations": operations, "enablePartialFailure": True}
        return PreparedRequest("POST", self._path(f"{job}:addOperations"), json=body)

    def deliver_batch(
        self, operation: str, records: Sequence[Record], inputs: Sequence[Any], transport: Transport
    ) -> BatchOutcome:
        """Events: one upload read per record. Members: added to the operation's job (pending until it runs)."""
        if self.settings.service == "events":
            self._resolve_action(transport)
            response = transport.send(self.build_request(operation, inputs, records))
            return self._conversion_outcome(operation, records, response)
        empty = [i for i, row in enumerate(inputs) if not next(iter(row.values()))["userIdentifiers"]]
        rejected = {i: RecordResult(
            records[i].key, "rejected", "no identifier to send (an address needs first_name, last_name, "
            "country_code and postal_code)", "no identifier") for i in empty}  # fmt: skip
        sending = [i for i in range(len(records)) if i not in rejected]
        if sending:
            # a list created by name takes the upload key type of what it is sent
            self._uses_mobile_ids = self._uses_mobile_ids or any(
                "mobile_id" in r.identifiers for r in records
            )
            self._resolve_audience(transport)
            job = self._job(operation, transport)
            with job.lock:
                operations = [inputs[i] for i in sending]
                offset = 0
                if job.replace and not job.started:
                    operations, offset = [{"removeAll": True}, *operations], 1
                response = transport.send(self._add_operations(job.resource_name, operations))
                if 200 <= response.status < 300:
                    job.started = True
            if not 200 <= response.status < 300:
                if operation == "replace" or response.status in (401, 403, 404):
                    raise self.request_error(response, f"adding members to the job of {self.target_label()}")
                return BatchOutcome.reject_all(records, self.error_message(response), _code(response) or
                                               f"HTTP {response.status}")  # fmt: skip
            for index, (message, code) in _partial_failures(response, "operations").items():
                if 0 <= index - offset < len(sending):
                    i = sending[index - offset]
                    rejected[i] = RecordResult(records[i].key, "rejected", self.redact(message), code)
        return BatchOutcome(
            [rejected.get(i) or RecordResult(r.key, "pending") for i, r in enumerate(records)]
        )

    def finish_operation(self, operation: str, pending: Sequence[str], transport: Transport) -> BatchOutcome:
        """Run the operation's job and wait for it: SUCCESS accepts the pending members, FAILED rejects
        them. A full sync with no member runs a job with ``removeAll`` alone."""
        if self.settings.service == "events":
            return BatchOutcome()
        with self._lock:
            job = self._jobs.get(transport, {}).pop(operation, None)
        if job is None:
            if operation != "replace":
                return BatchOutcome()
            self._resolve_audience(transport)
            job = self._job(operation, transport)
            with self._lock:
                self._jobs.get(transport, {}).pop(operation, None)
            response = transport.send(self._add_operations(job.resource_name, [{"removeAll": True}]))
            if not 200 <= response.status < 300:
                raise self.request_error(
                    response, f"emptying {self.target_label()} (full sync with no member)"
                )
        status, reason = self._run(job, transport)
        if status == "SUCCESS":
            return BatchOutcome([RecordResult(key, "accepted") for key in pending])
        text = f"Google Ads job {job.resource_name} FAILED ({reason or 'no failure reason given'})"
        if operation == "replace":
            raise PlatformRequestError(f"{self.label}: {text}; {self.target_label()} was not replaced")
        return BatchOutcome(
            [RecordResult(key, "rejected", text, f"job FAILED {reason}".strip()) for key in pending]
        )

    # -- audiences: user list and jobs ------------------------------------------------------------------

    def _search(self, query: str, transport: Transport, what: str) -> list[dict[str, Any]]:
        """Every row of a GAQL query (pages followed by ``nextPageToken``)."""
        rows: list[dict[str, Any]] = []
        body: dict[str, Any] = {"query": query}
        while True:
            response = transport.send(
                PreparedRequest("POST", self._path(f"{self._customer}/googleAds:search"), json=body)
            )
            if response.status != 200:
                raise self.request_error(response, what)
            answer = response.json() or {}
            rows += [r for r in answer.get("results") or [] if isinstance(r, dict)]
            if not answer.get("nextPageToken"):
                return rows
            body = {"query": query, "pageToken": answer["nextPageToken"]}

    def _find_by_name(self, name: str, transport: Transport) -> str | None:
        query = (
            f"SELECT user_list.id, user_list.name FROM user_list WHERE user_list.name = {_gaql_text(name)}"
        )
        rows = self._search(
            query, transport, f"looking up user list {name!r} of customer {self.settings.customer_id}"
        )
        found = [str(r["userList"]["id"]) for r in rows if (r.get("userList") or {}).get("name") == name]
        return self._the_one_named(name, found, f"user lists of customer {self.settings.customer_id}")

    def _create_named(self, target: AudienceTarget, transport: Transport) -> str:
        assert isinstance(target, GoogleUserListTarget) and target.name is not None
        crm: dict[str, Any] = {"uploadKeyType": "CONTACT_INFO", "dataSourceType": "FIRST_PARTY"}
        if self._uses_mobile_ids:
            crm = {"uploadKeyType": "MOBILE_ADVERTISING_ID", "dataSourceType": "FIRST_PARTY"}
            if self.settings.app_id:
                crm["appId"] = self.settings.app_id
        create: dict[str, Any] = {
            "name": target.name,
            "membershipLifeSpan": NO_EXPIRATION_DAYS,
            "crmBasedUserList": crm,
        }
        if target.description:
            create["description"] = target.description
        response = transport.send(PreparedRequest(
            "POST", self._path(f"{self._customer}/userLists:mutate"), json={"operations": [{"create": create}]}))  # fmt: skip
        results = (response.json() or {}).get("results") if response.status == 200 else None
        resource = str((results or [{}])[0].get("resourceName") or "") if isinstance(results, list) else ""
        if not resource.rpartition("/")[2].isdigit():
            raise self.request_error(response, f"creating the user list {target.name!r}")
        logger.info("%s: created user list %r (%s)", self.label, target.name, resource)
        return resource.rpartition("/")[2]

    def _create_job_body(self) -> dict[str, Any]:
        metadata: dict[str, Any] = {"userList": self._list_resource()}
        consent = self.settings.consent.body() if self.settings.consent else {}
        if consent:
            metadata["consent"] = consent
        return {"job": {"type": "CUSTOMER_MATCH_USER_LIST", "customerMatchUserListMetadata": metadata}}

    def _job(self, operation: str, transport: Transport) -> _Job:
        """The job of ``operation`` in this delivery, created on first use."""
        with self._lock:
            jobs = self._jobs.setdefault(transport, {})
            job = jobs.get(operation)
            if job is not None:
                return job
            response = transport.send(PreparedRequest(
                "POST", self._path(f"{self._customer}/offlineUserDataJobs:create"), json=self._create_job_body()))  # fmt: skip
            resource = (
                str((response.json() or {}).get("resourceName") or "") if response.status == 200 else ""
            )
            if not resource:
                raise self.request_error(
                    response, f"creating an offline user data job for {self.target_label()}"
                )
            job = jobs[operation] = _Job(resource, replace=operation == "replace")
            return job

    def _run(self, job: _Job, transport: Transport) -> tuple[str, str]:
        """Run ``job`` and poll its status until SUCCESS or FAILED: ``(status, failure_reason)``."""
        response = transport.send(PreparedRequest("POST", self._path(f"{job.resource_name}:run"), json={}))
        if not 200 <= response.status < 300:
            raise self.request_error(response, f"running job {job.resource_name}")
        retry = getattr(transport, "retry", None)
        deadline = time.monotonic() + (retry.job_timeout_seconds if retry is not None else 3600.0)
        query = ("SELECT offline_user_data_job.resource_name, offline_user_data_job.status, "
                 "offline_user_data_job.failure_reason FROM offline_user_data_job "
                 f"WHERE offline_user_data_job.resource_name = {_gaql_text(job.resource_name)}")  # fmt: skip
        wait = FIRST_POLL_SECONDS
        while True:
            rows = self._search(query, transport, f"reading the status of job {job.resource_name}")
            state = (rows[0].get("offlineUserDataJob") or {}) if rows else {}
            status = str(state.get("status") or "")
            if status in ("SUCCESS", "FAILED"):
                return status, str(state.get("failureReason") or "")
            if time.monotonic() > deadline:
                raise PlatformRequestError(
                    f"{self.label}: job {job.resource_name} is still {status or 'unknown'} after the sync's job "
                    "timeout; its members go with the next sync"
                )
            time.sleep(wait)
            wait = min(self.poll_interval_seconds, wait * 2)

    # -- events -----------------------------------------------------------------------------------------

    def _resolve_action(self, transport: Transport) -> str:
        with self._lock:
            if self._action_id is None:
                action = self.settings.conversion_action
                assert action is not None and action.name is not None
                query = ("SELECT conversion_action.id, conversion_action.name FROM conversion_action "
                         f"WHERE conversion_action.name = {_gaql_text(action.name)}")  # fmt: skip
                rows = self._search(query, transport, f"looking up conversion action {action.name!r}")
                found = [str(r["conversionAction"]["id"]) for r in rows
                         if (r.get("conversionAction") or {}).get("name") == action.name]  # fmt: skip
                if len(found) != 1:
                    which = f"{len(found)} conversion actions are" if found else "no conversion action is"
                    raise self.config_error(
                        f"conversion_action.name: {which} named {action.name!r} in customer "
                        f"{self.settings.customer_id}; allowed: the name of one conversion action, or {{id: ...}}"
                    )
                self._action_id = found[0]
            return self._action_id

    def _with_action(self, item: Mapping[str, Any]) -> dict[str, Any]:
        return {"conversionAction": self._action_resource(), **item}

    def _click(self, record: Record, by_kind: Mapping[str, str]) -> dict[str, Any]:
        fields = record.fields
        out: dict[str, Any] = {k: by_kind[k] for k in ("gclid", "gbraid", "wbraid") if k in by_kind}
        out["conversionDateTime"] = _date_time(fields.get("conversion_date_time"))
        if fields.get("conversion_value") is not None:
            out["conversionValue"] = float(fields["conversion_value"])
        currency = fields.get("currency_code") or self.settings.currency_code
        if currency:
            out["currencyCode"] = str(currency)
        out["orderId"] = str(fields.get("order_id") or record.key)
        identifiers = _user_identifiers(by_kind)
        if identifiers:
            out["userIdentifiers"] = identifiers
        consent = self.settings.consent.body(personalization=False) if self.settings.consent else {}
        if consent:
            out["consent"] = consent
        return out

    def _adjustment(self, record: Record, by_kind: Mapping[str, str]) -> dict[str, Any]:
        fields = record.fields
        kind = self.settings.conversion_kind
        out: dict[str, Any] = {
            "adjustmentType": kind.upper(),
            "orderId": str(fields.get("order_id") or record.key),
        }
        if "gclid" in by_kind and fields.get("conversion_date_time") is not None:
            out["gclidDateTimePair"] = {"gclid": by_kind["gclid"],
                                        "conversionDateTime": _date_time(fields["conversion_date_time"])}  # fmt: skip
        if kind == "enhancement":
            out["userIdentifiers"] = _user_identifiers(by_kind)
            if fields.get("user_agent"):
                out["userAgent"] = str(fields["user_agent"])
            return out
        out["adjustmentDateTime"] = _date_time(fields.get("adjustment_date_time"))
        if kind == "restatement":
            value: dict[str, Any] = {"adjustedValue": _number(fields.get("conversion_value"))}
            currency = fields.get("currency_code") or self.settings.currency_code
            if currency:
                value["currencyCode"] = str(currency)
            out["restatementValue"] = value
        return out

    def parse_response(
        self, operation: str, records: Sequence[Record], response: HttpResponse
    ) -> BatchOutcome:
        """An upload's answer: the items ``partialFailureError`` names are rejected (unless Google already
        holds them), the others accepted. (Members are read in :meth:`deliver_batch`: their job decides.)"""
        if self.settings.service == "audiences":
            raise NotImplementedError("members are read by deliver_batch")
        return self._conversion_outcome(operation, records, response)

    def _conversion_outcome(
        self, operation: str, records: Sequence[Record], response: HttpResponse
    ) -> BatchOutcome:
        if not 200 <= response.status < 300:
            if response.status == 404:
                raise self.request_error(response, f"uploading to {self.target_label()}")
            return BatchOutcome.reject_all(
                records, self.error_message(response), _code(response) or f"HTTP {response.status}"
            )
        where = "conversions" if self.settings.conversion_kind == "click" else "conversion_adjustments"
        failures = _partial_failures(response, where)
        results = []
        for i, record in enumerate(records):
            failure = failures.get(i)
            if failure is None or failure[1].rpartition(".")[2] in ALREADY_HELD:
                results.append(RecordResult(record.key, "accepted"))
            else:
                results.append(RecordResult(record.key, "rejected", self.redact(failure[0]), failure[1]))
        return BatchOutcome(results)

    # -- responses ------------------------------------------------------------------------------------

    def classify(self, response: HttpResponse) -> Signal:
        """429 ``RESOURCE_EXHAUSTED``: wait Google's ``retryDelay``; the rest as HTTP says."""
        if response.status == 429:
            return Signal(ResponseKind.RATE_LIMITED, _retry_delay(response), self.error_message(response))
        return super().classify(response)

    def error_message(self, response: HttpResponse) -> str:
        """Google's ``GoogleAdsFailure`` errors as ``message (category.CODE)``, else ``error.message``."""
        body = response.json()
        error = body.get("error") if isinstance(body, dict) else None
        if isinstance(error, dict):
            errors = _failure_errors(error)
            if errors:
                return self.redact(
                    "; ".join(f"{e.get('message') or 'error'} ({_error_code(e)})" for e in errors)
                )
            if error.get("message"):
                status = f" ({error['status']})" if error.get("status") else ""
                return self.redact(f"{error['message']}{status}")
        return super().error_message(response)

    # -- validate --connect ---------------------------------------------------------------------------

    def check_connection(self, transport: Transport) -> None:
        """The token, developer token and access to the customer (one GAQL query), and the list, or the
        conversion action, when given by id or name."""
        customer = self.settings.customer_id
        self._search("SELECT customer.id FROM customer LIMIT 1", transport, f"reading customer {customer}")
        if self.settings.service == "events":
            action = self.settings.conversion_action
            if action is not None and action.id is not None:
                query = f"SELECT conversion_action.id FROM conversion_action WHERE conversion_action.id = {action.id}"
                if not self._search(query, transport, f"reading conversion action {action.id}"):
                    raise PlatformRequestError(
                        f"{self.label}: no conversion action {action.id} in customer {customer}"
                    )
            else:
                self._resolve_action(transport)
            return
        target = self.settings.audience
        if target is not None and target.id is not None:
            query = f"SELECT user_list.id FROM user_list WHERE user_list.id = {target.id}"
            if not self._search(query, transport, f"reading user list {target.id}"):
                raise PlatformRequestError(f"{self.label}: no user list {target.id} in customer {customer}")


# --------------------------------------------------------------------------------------------------
# Reading Google's answers
# --------------------------------------------------------------------------------------------------


def _failure_errors(status: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The ``GoogleAdsFailure`` errors in a ``google.rpc.Status``'s details."""
    errors: list[dict[str, Any]] = []
    for detail in status.get("details") or []:
        if isinstance(detail, dict) and str(detail.get("@type", "")).endswith("GoogleAdsFailure"):
            errors += [e for e in detail.get("errors") or [] if isinstance(e, dict)]
    return errors


def _error_code(error: Mapping[str, Any]) -> str:
    """``category.CODE`` of one GoogleAdsError (``conversionUploadError.TOO_RECENT_EVENT``)."""
    code = error.get("errorCode") or {}
    return ", ".join(f"{k}.{v}" for k, v in code.items()) if isinstance(code, dict) else str(code)


def _code(response: HttpResponse) -> str:
    body = response.json()
    error = body.get("error") if isinstance(body, dict) else None
    errors = _failure_errors(error) if isinstance(error, dict) else []
    return _error_code(errors[0]) if errors else ""


def _partial_failures(response: HttpResponse, where: str) -> dict[int, tuple[str, str]]:
    """``index -> (message, code)`` of the items ``partialFailureError`` names (the first error each)."""
    body = response.json()
    status = body.get("partialFailureError") if isinstance(body, dict) else None
    out: dict[int, tuple[str, str]] = {}
    if not isinstance(status, dict):
        return out
    for error in _failure_errors(status):
        elements = ((error.get("location") or {}).get("fieldPathElements")) or []
        index = next((e.get("index") for e in elements if isinstance(e, dict) and e.get("fieldName") in
                      (where, _camel(where)) and e.get("index") is not None), None)  # fmt: skip
        if index is not None:
            out.setdefault(int(index), (str(error.get("message") or "error"), _error_code(error)))
    return out


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def _retry_delay(response: HttpResponse) -> float | None:
    """The ``quotaErrorDetails.retryDelay`` (``"30s"``) of a RESOURCE_EXHAUSTED answer, else None."""
    body = response.json()
    error = body.get("error") if isinstance(body, dict) else None
    for item in _failure_errors(error) if isinstance(error, dict) else []:
        delay = ((item.get("details") or {}).get("quotaErrorDetails") or {}).get("retryDelay")
        match = _DURATION.fullmatch(str(delay or ""))
        if match:
            return float(match.group(1))
    return None


def _gaql_text(value: str) -> str:
    """A GAQL string literal (single quotes, backslash escapes)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _date_time(value: Any) -> str | None:
    """Google's ``yyyy-mm-dd hh:mm:ss+hh:mm`` (naive timestamps are UTC; dates at midnight UTC)."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            return value
    if isinstance(value, dt.date) and not isinstance(value, dt.datetime):
        value = dt.datetime(value.year, value.month, value.day)
    if not isinstance(value, dt.datetime):
        return str(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.timezone.utc)
    text = value.strftime("%Y-%m-%d %H:%M:%S%z")
    return f"{text[:-2]}:{text[-2:]}"


def _number(value: Any) -> float | None:
    if value is None:
        return None
    return float(value) if isinstance(value, (int, float, decimal.Decimal)) else float(str(value))


register_platform("google_ads", GoogleAdsSettings, GoogleAds)

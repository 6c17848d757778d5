"""Meta Ads: ``audiences`` (customer-file custom audiences) and ``events`` (the Conversions API).

**audiences** (operations ``add``, ``remove``, ``replace``). The target is the activation's
``audience``: ``{name: "VIP Europe"}`` (looked up in the ad account, created when missing with
``subtype: CUSTOM`` and the ``customer_file_source`` setting, default ``USER_PROVIDED_ONLY``) or
``{id: "2385..."}``. Its ``identifiers`` (``match``) name Meta's keys; each row goes in Meta's
multi-key form (``payload: {schema: ["EMAIL", "PHONE", ...], data: [[...], ...]}``, ``""`` for a
key the record lacks: a record needs at least one):

- ``add``: ``POST /{version}/{audience_id}/users``; ``remove``: ``DELETE`` on the same edge. Meta's
  reference gives the parameters but not where a ``DELETE`` carries them; the payload goes in a
  JSON body, as Segment's Facebook Custom Audiences destination sends it
  (https://github.com/segmentio/action-destinations, ``facebook-custom-audiences/sync/functions.ts``),
  since a query string cannot hold 10,000 rows;
- ``replace`` (a full sync): ``POST /{audience_id}/usersreplace`` in one session
  (``session_id``, ``batch_seq`` from 1, ``last_batch_flag`` on the last batch,
  ``estimated_num_total``: the rows sent so far, exact on the last batch, since the adapter streams
  and does not know the total in advance). Meta swaps the membership only when the last batch
  arrives, so the records of a replace stay *pending* until then: a replace that fails midway
  acknowledges nothing and the audience keeps its members (the next sync sends them all again).
  Meta documents no way to abandon a session: the unfinished one stays open until it expires (this
  project's fake, which reads the documentation strictly, refuses a new session meanwhile).
  Batches of a session are sent one at a time, in ``batch_seq`` order, and the last one is held
  back until the source is exhausted (the SDK's ``finish_operation``). A full sync with no record
  cannot empty an audience (``usersreplace`` needs a row, and Meta has no "clear" call): it is
  logged and the members stay; delta syncs remove the records that left.
- at most 10,000 rows per request (Meta refuses more and applies nothing).
- Meta answers ``num_received``, ``num_invalid_entries`` and ``invalid_entry_samples`` (a map
  between sampled invalid values and their schema key; the documentation does not say which side
  is which, so both sides are compared with what was sent). A sampled row is rejected with the
  key Meta named, never its value (samples are not logged either); when more rows are invalid
  than sampled, an ``add``/``remove`` batch is split in halves and sent again (membership changes
  are idempotent) until every invalid row is named; in a ``replace`` session the unnamed ones are
  counted in a warning.

**events** (operation ``track``): ``POST /{version}/{pixel_id}/events`` with ``data``, at most
1,000 events per request, ``test_event_code`` when set (the events then go to Events Manager's
Test Events tool and are not counted). Each event:

- ``event_id``: the record's key (a mapped ``event_id`` column overrides it), so a re-sent event is
  de-duplicated by Meta (same ``event_name`` and ``event_id`` within 48 hours counts once);
- ``event_time``: the mapped time column (``mapping: {ordered_at: event_time}``) in Unix seconds
  (naive timestamps are UTC). Meta refuses a whole request when one event is more than 7 days
  old, so such events are rejected before sending;
- ``event_name``, ``action_source``, ``event_source_url``: mapped columns, else the settings of the
  same name (``website`` events also need ``event_source_url`` and the ``client_user_agent``
  identifier);
- ``user_data``: the identifiers, hashed as below; ``client_ip_address``, ``client_user_agent``,
  ``fbc``, ``fbp`` and ``madid`` go in clear as Meta requires;
- ``custom_data``: every other mapped field (``value``, ``currency``, ``order_id``, or
  ``custom_data.<name>``); NULLs are left out (an event is never updated).

One invalid event makes Meta refuse the whole request (code 100, subcode 2804019). When Meta's
message names the event (``$['data'][i]...``) it is rejected with that message and the others are
sent again at once; otherwise the engine splits the batch in halves until the bad event is alone.
Any other refusal (another code, or a code 100 that names no event) rejects the request's events
with Meta's message, without splitting.

**Identifiers** (``identifiers:`` names, Meta's keys and how each is normalized before SHA-256, as
Meta documents; a value that already is a SHA-256 hex digest passes unchanged):

- ``email`` (EMAIL / ``em``): trimmed, lower-cased;
- ``phone`` (PHONE / ``ph``): parsed with ``phonenumbers`` (the activation's ``default_country``
  for national numbers), then digits only with the country code and no ``+``: ``16505551212``;
- ``first_name``/``fn``, ``last_name``/``ln`` (FN, LN): lower-cased, punctuation removed, letters
  of any script kept in UTF-8 (``Valéry`` -> ``valéry``); ``first_initial``/``fi`` (FI): the first
  letter of that;
- ``city``/``ct`` (CT): lower-cased letters only (``New York`` -> ``newyork``);
- ``state``/``st`` (ST): U.S. states as their 2-letter code (``California`` -> ``ca``), others
  lower-cased letters only;
- ``zip``/``zp`` (ZIP): lower-cased without spaces or dashes, a U.S. ZIP+4 cut to its first 5
  digits (``94035-1234`` -> ``94035``, ``M1 1AE`` -> ``m11ae``);
- ``country`` (COUNTRY): the lower-case ISO 3166-1 alpha-2 code; anything else is rejected
  (country names are not translated);
- ``gender``/``gen`` (GEN / ``ge``): ``m`` or ``f`` (``male``/``female`` accepted);
- ``birth_year``/``doby``, ``birth_month``/``dobm``, ``birth_day``/``dobd`` (audiences): ``YYYY``
  (1900 to this year), ``MM``, ``DD``; ``date_of_birth``/``db`` (events): ``YYYYMMDD`` from a date
  or ``YYYY-MM-DD`` text;
- ``external_id`` (EXTERN_ID / ``external_id``): trimmed then hashed, as Meta recommends (send it
  hashed the same way through every channel);
- ``madid`` (MADID): not hashed, trimmed and lower-cased with its hyphens (a malformed one is
  Meta's invalid entry, rejected as such).

An empty identifier leaves its key out; a record with no identifier at all, or with an invalid
one, is rejected before anything is sent, naming the identifier and column, never the value.

**Errors**, by Graph's ``error.code`` (Graph answers most errors, throttling included, with HTTP
400): 190 (token), 10 and 200-299 (permissions) stop the sync at once with Meta's message; 4, 17,
32, 613 and the Business Use Case codes 80000-80014 (80003: custom audiences) are rate limits: the
sync waits ``estimated_time_to_regain_access`` (minutes) from the ``X-Business-Use-Case-Usage``
header when Meta gives it, otherwise backs off; a wait longer than a sync waits (the
``RetryPolicy``) ends the sync early as a partial success. Codes 1 and 2 and errors marked
``is_transient`` are retried; any other error rejects the batch's records with Meta's message
(a ``replace`` session fails instead: a batch missing from it would drop its members).

**Limits as data.** Custom audiences: 10,000 rows per request; the ad account's ``custom_audience``
Business Use Case budget of 190,000 calls per hour (standard tier; 5,000 in development tier: set
``rate_limit`` lower). The Marketing API page also describes a score-based ad-account limit without
saying whether audience uploads count towards it; the limiter does not model it (its codes 17 and
613 are waited out). Conversions API: 1,000 events per request; Meta documents no request rate, so
the limiter starts at an assumed 100 requests per second. Four requests in flight (a replace
session sends one at a time).

**Authentication.** A system user's access token with ``ads_management`` (audiences) or the pixel's
Conversions API access (events), sent as ``Authorization: Bearer <token>``, never in a URL or body.

**Client.** Plain ``requests`` through the SDK's transport, not Meta's ``facebook-business`` SDK
(26.0.3, checked): its Graph URL is the class constant ``FacebookSession.GRAPH`` shared by the whole
process, so ``base_url`` (proxies, this project's fake) cannot be set per destination; its session
puts the access token in every request's query parameters (URLs end up in logs);
``FacebookAdsApi.init`` installs a process-wide default API and, by default, a crash reporter that
replaces ``sys.excepthook``; and it is large (1,242 files, 5 MB, with ``aiohttp``, ``pycountry``,
``curlify``) for four JSON endpoints whose answers (``invalid_entry_samples``, the usage header)
the adapter reads itself anyway.

Meta's documentation this adapter follows:

- custom audiences, creation (``subtype``, ``customer_file_source``), 10,000 rows per request,
  hashing and normalization per key:
  https://developers.facebook.com/docs/marketing-api/audiences/guides/custom-audiences
- ``/{id}/users`` (payload, session, the answer's ``num_received``, ``num_invalid_entries``,
  ``invalid_entry_samples``; errors 100, 200, 294, 2650):
  https://developers.facebook.com/docs/marketing-api/reference/custom-audience/users
- ``/{id}/usersreplace`` and its session:
  https://developers.facebook.com/documentation/ads-commerce/marketing-api/reference/custom-audience/usersreplace
  https://developers.facebook.com/docs/marketing-api/reference/custom-audience-session
- the ad account's ``customaudiences`` edge (list, create):
  https://developers.facebook.com/documentation/ads-commerce/marketing-api/reference/ad-account/customaudiences
- a custom audience node (``operation_status``, 471 = flagged):
  https://developers.facebook.com/docs/marketing-api/reference/custom-audience
- Conversions API: https://developers.facebook.com/docs/marketing-api/conversions-api/using-the-api ,
  https://developers.facebook.com/docs/marketing-api/conversions-api/parameters/server-event ,
  https://developers.facebook.com/docs/marketing-api/conversions-api/parameters/customer-information-parameters
  (its worked examples, such as ``(650)555-1212`` -> ``16505551212`` -> ``e323ec62...``, are this
  module's tests), https://developers.facebook.com/docs/marketing-api/conversions-api/deduplicate-pixel-and-server-events
- errors and rate limits (codes 4, 17, 32, 613, 80000-80014, the ``X-Business-Use-Case-Usage``
  header): https://developers.facebook.com/docs/graph-api/guides/error-handling ,
  https://developers.facebook.com/documentation/ads-commerce/marketing-api/error-reference ,
  https://developers.facebook.com/docs/marketing-api/overview/rate-limiting ,
  https://developers.facebook.com/docs/graph-api/overview/rate-limiting
- the pixel node (read by ``validate --connect``):
  https://developers.facebook.com/docs/marketing-api/reference/ads-pixel
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
import logging
import math
import re
import secrets
import threading
import time
import unicodedata
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import pydantic
from pydantic import ConfigDict, Field, SecretStr

from dinmo_dagster.platforms import register_platform
from dinmo_dagster.platforms.base import (
    BatchOutcome,
    HttpResponse,
    Limits,
    Platform,
    PlatformSettings,
    PreparedRequest,
    Record,
    RecordResult,
    ResponseKind,
    Signal,
    unix_seconds,
)
from dinmo_dagster.platforms.errors import PlatformRequestError
from dinmo_dagster.platforms.identifiers import (
    IdentifierError,
    IdentifierSpec,
    normalize_email,
    normalize_phone,
)

if TYPE_CHECKING:
    from dinmo_dagster.platforms.http import Transport

__all__ = ["MetaAds", "MetaAdsSettings", "MetaAudienceTarget"]

logger = logging.getLogger("dinmo_dagster.platforms")

LATEST_VERSION = "v25.0"
MAX_USERS_PER_REQUEST = 10_000
MAX_EVENTS_PER_REQUEST = 1_000
MAX_EVENT_AGE_SECONDS = 7 * 24 * 3600
CustomerFileSource = Literal["USER_PROVIDED_ONLY", "PARTNER_PROVIDED_ONLY", "BOTH_USER_AND_PARTNER_PROVIDED"]
ActionSource = Literal[
    "email",
    "website",
    "app",
    "phone_call",
    "chat",
    "physical_store",
    "system_generated",
    "business_messaging",
    "other",
]
AUDIENCE_LIMITS = Limits(
    max_records_per_batch=MAX_USERS_PER_REQUEST,
    requests_per_window=190_000,
    window_seconds=3600.0,
    max_concurrency=4,
)
EVENT_LIMITS = Limits(
    max_records_per_batch=MAX_EVENTS_PER_REQUEST,
    requests_per_window=100,
    window_seconds=1.0,
    max_concurrency=4,
)

# Graph error codes: the token, then permissions (10, 200-299), then throttling.
_AUTH_CODES = frozenset({102, 190, 10, *range(200, 300)})
_RATE_LIMIT_CODES = frozenset({4, 17, 32, 613, *range(80000, 80015)})
_TRANSIENT_CODES = frozenset({1, 2})
_INVALID_PARAMETER = 100
_SERVER_EVENT_PARAMETER = 2804019  # subcode of an event Meta refuses (and its whole request with it)
_VERSION = re.compile(r"v\d+\.\d+")
_DIGITS = re.compile(r"\d+")
_AD_ACCOUNT = re.compile(r"act_\d+")
# The event Meta's message names, and its field: "$['data'][3]['user_data']['em'] ...".
_EVENT_INDEX = re.compile(r"\$\['data'\]\[(\d+)\]")
_EVENT_FIELD = re.compile(r"\$\['data'\]\[\d+\](?:\['[A-Za-z_]+'\])*\['([A-Za-z_]+)'\]")
_US_ZIP_PLUS_4 = re.compile(r"(\d{5})-\d{4}")
_ISO_DATE = re.compile(r"(\d{4})-?(\d{2})-?(\d{2})(?:[T ].*)?")
# Server-event parameters a mapping may name; any other mapped field goes in custom_data.
_EVENT_FIELDS = frozenset(
    {"event_name", "event_time", "event_id", "action_source", "event_source_url", "opt_out"}
)

_US_STATES = {
    "alabama": "al", "alaska": "ak", "arizona": "az", "arkansas": "ar", "california": "ca", "colorado": "co",
    "connecticut": "ct", "delaware": "de", "districtofcolumbia": "dc", "florida": "fl", "georgia": "ga",
    "hawaii": "hi", "idaho": "id", "illinois": "il", "indiana": "in", "iowa": "ia", "kansas": "ks",
    "kentucky": "ky", "louisiana": "la", "maine": "me", "maryland": "md", "massachusetts": "ma",
    "michigan": "mi", "minnesota": "mn", "mississippi": "ms", "missouri": "mo", "montana": "mt",
    "nebraska": "ne", "nevada": "nv", "newhampshire": "nh", "newjersey": "nj", "newmexico": "nm",
    "newyork": "ny", "northcarolina": "nc", "northdakota": "nd", "ohio": "oh", "oklahoma": "ok",
    "oregon": "or", "pennsylvania": "pa", "rhodeisland": "ri", "southcarolina": "sc", "southdakota": "sd",
    "tennessee": "tn", "texas": "tx", "utah": "ut", "vermont": "vt", "virginia": "va", "washington": "wa",
    "westvirginia": "wv", "wisconsin": "wi", "wyoming": "wy",
}  # fmt: skip


# --------------------------------------------------------------------------------------------------
# Identifier normalization, as Meta documents it per key
# --------------------------------------------------------------------------------------------------


def _letters(text: str) -> str:
    """Lower-cased letters of any script, nothing else (cities, states, countries)."""
    return "".join(ch for ch in text.strip().lower() if ch.isalpha())


def _not_empty(value: str, what: str) -> str:
    if not value:
        raise IdentifierError(f"empty once normalized ({what})")
    return value


def normalize_name(text: str, default_country: str | None = None) -> str:
    """A first or last name: lower-cased, punctuation removed, UTF-8 letters kept."""
    text = unicodedata.normalize("NFC", text.strip().lower())  # one code point per accented letter
    kept = "".join(ch for ch in text if not unicodedata.category(ch).startswith("P"))
    return _not_empty(" ".join(kept.split()), "no letters")


def normalize_initial(text: str, default_country: str | None = None) -> str:
    """The first letter of a first name."""
    return normalize_name(text)[0]


def normalize_meta_phone(text: str, default_country: str | None = None) -> str:
    """Digits only, with the country code and no ``+`` (``+1 650-555-1212`` -> ``16505551212``)."""
    return normalize_phone(text, default_country).lstrip("+")


def normalize_city(text: str, default_country: str | None = None) -> str:
    """Lower-cased letters only (``New York`` -> ``newyork``)."""
    return _not_empty(_letters(text), "no letters")


def normalize_state(text: str, default_country: str | None = None) -> str:
    """U.S. states as their 2-letter code, other regions lower-cased letters only."""
    letters = _not_empty(_letters(text), "no letters")
    return _US_STATES.get(letters, letters)


def normalize_zip(text: str, default_country: str | None = None) -> str:
    """Lower-cased, no spaces or dashes; a U.S. ZIP+4 keeps its first 5 digits."""
    value = text.strip().lower()
    us = _US_ZIP_PLUS_4.fullmatch(value)
    if us:
        return us.group(1)
    return _not_empty("".join(ch for ch in value if not ch.isspace() and ch != "-"), "no characters")


def normalize_country(text: str, default_country: str | None = None) -> str:
    """The lower-case ISO 3166-1 alpha-2 code."""
    import phonenumbers  # its region list is the ISO 3166-1 alpha-2 codes (plus a few territories)

    code = _letters(text)
    if len(code) != 2 or code.upper() not in phonenumbers.SUPPORTED_REGIONS:
        raise IdentifierError("not a 2-letter ISO 3166-1 country code")
    return code


def normalize_gender(text: str, default_country: str | None = None) -> str:
    """``m`` or ``f``."""
    value = {"male": "m", "female": "f"}.get(text.strip().lower(), text.strip().lower())
    if value not in ("m", "f"):
        raise IdentifierError("not a gender Meta accepts (m or f)")
    return value


def _number(text: str, low: int, high: int, what: str) -> int:
    value = text.strip()
    value = value.removesuffix(".0")  # a year or month read from a float column
    if not value.isdigit() or not low <= int(value) <= high:
        raise IdentifierError(f"not a {what}")
    return int(value)


def normalize_birth_year(text: str, default_country: str | None = None) -> str:
    """``YYYY``, from 1900 to this year."""
    return str(_number(text, 1900, dt.date.today().year, "birth year (1900 to this year)"))


def normalize_birth_month(text: str, default_country: str | None = None) -> str:
    """``MM``, 01 to 12."""
    return f"{_number(text, 1, 12, 'birth month (1 to 12)'):02d}"


def normalize_birth_day(text: str, default_country: str | None = None) -> str:
    """``DD``, 01 to 31."""
    return f"{_number(text, 1, 31, 'birth day (1 to 31)'):02d}"


def normalize_date_of_birth(text: str, default_country: str | None = None) -> str:
    """``YYYYMMDD`` from a date or ``YYYY-MM-DD`` text."""
    found = _ISO_DATE.fullmatch(text.strip())
    try:
        day = dt.date(*(int(part) for part in found.groups())) if found else None
    except ValueError:
        day = None
    if day is None or day.year < 1900:
        raise IdentifierError("not a date of birth (YYYY-MM-DD)")
    return day.strftime("%Y%m%d")


def _trimmed(text: str, default_country: str | None = None) -> str:
    return text.strip()


def _lowered(text: str, default_country: str | None = None) -> str:
    return text.strip().lower()


@dataclass(frozen=True)
class _Key:
    """One identifier: its custom-audience schema key, its Conversions API ``user_data`` key and
    how it is prepared."""

    audience: str | None
    capi: str | None
    spec: IdentifierSpec


def _hashed(normalize: Callable[[str, str | None], str], kind: Any = "text") -> IdentifierSpec:
    return IdentifierSpec(kind, hashed=True, optional=True, normalize=normalize)


def _clear(normalize: Callable[[str, str | None], str] = _trimmed) -> IdentifierSpec:
    return IdentifierSpec("id", hashed=False, optional=True, normalize=normalize)


_KEYS: dict[str, _Key] = {
    "email": _Key("EMAIL", "em", _hashed(lambda text, _: normalize_email(text), "email")),
    "phone": _Key("PHONE", "ph", _hashed(normalize_meta_phone, "phone")),
    "first_name": _Key("FN", "fn", _hashed(normalize_name)),
    "last_name": _Key("LN", "ln", _hashed(normalize_name)),
    "first_initial": _Key("FI", None, _hashed(normalize_initial)),
    "gender": _Key("GEN", "ge", _hashed(normalize_gender)),
    "birth_year": _Key("DOBY", None, _hashed(normalize_birth_year)),
    "birth_month": _Key("DOBM", None, _hashed(normalize_birth_month)),
    "birth_day": _Key("DOBD", None, _hashed(normalize_birth_day)),
    "date_of_birth": _Key(None, "db", _hashed(normalize_date_of_birth)),
    "city": _Key("CT", "ct", _hashed(normalize_city)),
    "state": _Key("ST", "st", _hashed(normalize_state)),
    "zip": _Key("ZIP", "zp", _hashed(normalize_zip)),
    "country": _Key("COUNTRY", "country", _hashed(normalize_country)),
    "external_id": _Key("EXTERN_ID", "external_id", _hashed(_trimmed, "id")),
    "madid": _Key("MADID", "madid", _clear(_lowered)),
    "client_ip_address": _Key(None, "client_ip_address", _clear()),
    "client_user_agent": _Key(None, "client_user_agent", _clear()),
    "fbc": _Key(None, "fbc", _clear()),
    "fbp": _Key(None, "fbp", _clear()),
}
# Meta's own short names are accepted too (``fn``, ``zp``, ``extern_id``...).
_ALIASES = {
    "em": "email", "ph": "phone", "fn": "first_name", "ln": "last_name", "fi": "first_initial",
    "gen": "gender", "ge": "gender", "doby": "birth_year", "dobm": "birth_month", "dobd": "birth_day",
    "db": "date_of_birth", "ct": "city", "st": "state", "zp": "zip", "extern_id": "external_id",
    "mobile_advertiser_id": "madid",
}  # fmt: skip
# The order of the multi-key schema (Meta's reference lists the keys in this order).
_AUDIENCE_ORDER = ["EXTERN_ID", "EMAIL", "PHONE", "GEN", "DOBY", "DOBM", "DOBD", "LN", "FN", "FI", "CT", "ST",
                   "ZIP", "MADID", "COUNTRY"]  # fmt: skip


def _canonical(name: str) -> str:
    lowered = name.lower()
    return _ALIASES.get(lowered, lowered)


# --------------------------------------------------------------------------------------------------
# Settings
# --------------------------------------------------------------------------------------------------


class MetaAudienceTarget(pydantic.BaseModel):
    """The custom audience an activation fills: ``{name: ...}`` (created when missing) or ``{id: ...}``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str | None = Field(default=None, description="The audience's name in the ad account.")
    id: str | None = Field(default=None, description="The audience's id (digits).")
    description: str | None = Field(default=None, description="Description of an audience created by name.")

    @pydantic.field_validator("name")
    @classmethod
    def _check_name(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("is empty; allowed: the audience's name")
        return value

    @pydantic.field_validator("id", mode="before")
    @classmethod
    def _check_id(cls, value: Any) -> Any:
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if value is not None and not (isinstance(value, str) and _DIGITS.fullmatch(value)):
            raise ValueError(f"found {value!r}; allowed: the audience's numeric id")
        return value

    @pydantic.model_validator(mode="after")
    def _one_of(self) -> MetaAudienceTarget:
        if (self.name is None) == (self.id is None):
            found = "both name and id" if self.name is not None else "neither name nor id"
            raise ValueError(f"found {found}; allowed: {{name: ...}} or {{id: ...}}")
        return self


class MetaAdsSettings(PlatformSettings):
    """Settings of a ``type: meta_ads`` destination.

    ``audience`` is written on the activation (``audience: {name: ...}``); the sync layer passes it
    with the destination's settings (it may also be set on a destination used by one activation).
    """

    service: Literal["audiences", "events"] = Field(
        description="audiences (custom audiences) or events (CAPI)."
    )
    access_token: SecretStr = Field(description="A system user's access token (from {env: VAR}); secret.")
    api_version: str = Field(default=LATEST_VERSION, description="The Graph API version, such as v25.0.")
    ad_account_id: str | None = Field(default=None, description="The ad account (act_1234); audiences.")
    audience: MetaAudienceTarget | None = Field(default=None, description="The custom audience; audiences.")
    customer_file_source: CustomerFileSource = Field(
        default="USER_PROVIDED_ONLY", description="How the data was collected, for audiences created by name."
    )
    pixel_id: str | None = Field(
        default=None, description="The pixel (dataset) receiving the events; events."
    )
    event_name: str | None = Field(
        default=None, description="Event name when no column is mapped to event_name."
    )
    action_source: ActionSource | None = Field(
        default=None, description="Where the events happened, when no column is mapped to action_source."
    )
    event_source_url: str | None = Field(
        default=None, description="Page URL of website events, when not mapped."
    )
    test_event_code: str | None = Field(
        default=None, description="Send events to Events Manager's Test Events tool (not counted)."
    )

    @pydantic.field_validator("api_version")
    @classmethod
    def _check_version(cls, value: str) -> str:
        if _VERSION.fullmatch(value):
            return value
        raise ValueError(f"found {value!r}; allowed: a Graph API version such as {LATEST_VERSION}")

    @pydantic.field_validator("ad_account_id", mode="before")
    @classmethod
    def _check_account(cls, value: Any) -> Any:
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if isinstance(value, str) and _DIGITS.fullmatch(value):
            return f"act_{value}"
        if value is not None and not (isinstance(value, str) and _AD_ACCOUNT.fullmatch(value)):
            raise ValueError(f"found {value!r}; allowed: act_ followed by the ad account's digits (act_1234)")
        return value

    @pydantic.field_validator("pixel_id", mode="before")
    @classmethod
    def _check_pixel(cls, value: Any) -> Any:
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if value is not None and not (isinstance(value, str) and _DIGITS.fullmatch(value)):
            raise ValueError(f"found {value!r}; allowed: the pixel's numeric id")
        return value

    @pydantic.field_validator("access_token")
    @classmethod
    def _check_token(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value().strip():
            raise ValueError("is empty; allowed: a Meta access token")
        return value

    @pydantic.model_validator(mode="after")
    def _keys_of_the_service(self) -> MetaAdsSettings:
        required = {"audiences": ("ad_account_id",), "events": ("pixel_id",)}[self.service]
        other = {
            "audiences": ("pixel_id", "event_name", "action_source", "event_source_url", "test_event_code"),
            "events": ("ad_account_id", "audience"),
        }[self.service]
        problems = [
            f"{key} is required for service {self.service}" for key in required if getattr(self, key) is None
        ]
        problems += [
            f"{key} is not used by service {self.service}" for key in other if getattr(self, key) is not None
        ]
        if problems:
            raise ValueError("; ".join(problems))
        return self


# --------------------------------------------------------------------------------------------------
# Graph errors
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GraphError:
    """Graph's ``{"error": {...}}`` answer."""

    code: int | None
    subcode: int | None
    message: str
    user_title: str | None
    user_msg: str | None
    is_transient: bool

    @classmethod
    def of(cls, response: HttpResponse) -> GraphError | None:
        """The error of ``response``, or None when its body is not a Graph error."""
        body = response.json()
        error = body.get("error") if isinstance(body, dict) else None
        if not isinstance(error, dict):
            return None
        return cls(
            code=_int(error.get("code")),
            subcode=_int(error.get("error_subcode")),
            message=str(error.get("message") or error.get("type") or "error"),
            user_title=str(error["error_user_title"]) if error.get("error_user_title") else None,
            user_msg=str(error["error_user_msg"]) if error.get("error_user_msg") else None,
            is_transient=error.get("is_transient") is True,
        )

    def text(self) -> str:
        """``message (title): user message (code N, subcode M)``."""
        text = self.message
        if self.user_title and self.user_title != self.message:
            text += f" ({self.user_title})"
        if self.user_msg:
            text += f": {self.user_msg}"
        codes = [f"code {self.code}"] if self.code is not None else []
        if self.subcode is not None:
            codes.append(f"subcode {self.subcode}")
        return f"{text} ({', '.join(codes)})" if codes else text


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def regain_seconds(response: HttpResponse) -> float | None:
    """Seconds until Meta lifts the throttling, from ``X-Business-Use-Case-Usage``'s
    ``estimated_time_to_regain_access`` (minutes); None when Meta gives no estimate."""
    raw = response.header("X-Business-Use-Case-Usage")
    try:
        usage = json.loads(raw) if raw else {}
    except ValueError:
        return None
    minutes = [
        float(entry.get("estimated_time_to_regain_access") or 0)
        for entries in (usage.values() if isinstance(usage, dict) else ())
        for entry in (entries if isinstance(entries, list) else ())
        if isinstance(entry, dict)
    ]
    longest = max(minutes, default=0.0)
    return longest * 60 if longest > 0 else None


# --------------------------------------------------------------------------------------------------
# The adapter
# --------------------------------------------------------------------------------------------------


@dataclass
class _ReplaceSession:
    """One ``usersreplace`` session: its batches go one at a time, the last one held back."""

    session_id: int
    lock: threading.Lock = field(default_factory=threading.Lock)
    batch_seq: int = 0
    rows_sent: int = 0
    held: tuple[list[Record], list[dict[str, str]]] | None = None
    rejected: dict[str, RecordResult] = field(default_factory=dict)
    unattributed: int = 0


class MetaAds(Platform):
    """Meta custom audiences (add, remove, replace members) and Conversions API events (track)."""

    name = "meta_ads"
    settings_model = MetaAdsSettings
    services: ClassVar[Mapping[str, tuple[str, ...]]] = {
        "audiences": ("add", "remove", "replace"),
        "events": ("track",),
    }
    default_base_url = "https://graph.facebook.com"
    limits = AUDIENCE_LIMITS

    settings: MetaAdsSettings

    def __init__(self, settings: PlatformSettings, *, destination: str = "") -> None:
        super().__init__(settings, destination=destination)
        # The limits depend on the service (10,000 rows or 1,000 events per request).
        self.limits = EVENT_LIMITS if self.settings.service == "events" else AUDIENCE_LIMITS
        self._lock = threading.Lock()
        self._audience_id = self.settings.audience.id if self.settings.audience else None
        self._sessions: weakref.WeakKeyDictionary[Transport, _ReplaceSession] = weakref.WeakKeyDictionary()

    # -- paths and auth -------------------------------------------------------------------------------

    def _path(self, node: str, edge: str = "") -> str:
        return f"/{self.settings.api_version}/{node}" + (f"/{edge}" if edge else "")

    def auth_headers(self) -> dict[str, str]:
        """The access token as a bearer token (never in a URL or a body)."""
        return {"Authorization": f"Bearer {self.settings.access_token.get_secret_value()}"}

    def target_label(self) -> str:
        """``Meta custom audience 'VIP Europe'`` or ``Meta pixel 1234``."""
        if self.settings.service == "events":
            return f"Meta pixel {self.settings.pixel_id}"
        target = self.settings.audience
        if target is None:
            return "a Meta custom audience"
        return f"Meta custom audience {target.name!r}" if target.name else f"Meta custom audience {target.id}"

    # -- identifiers and activation checks -------------------------------------------------------------

    def _key(self, name: str) -> _Key | None:
        key = _KEYS.get(_canonical(name))
        if key is None:
            return None
        return key if (key.audience if self.settings.service == "audiences" else key.capi) else None

    def identifier_spec(self, name: str) -> IdentifierSpec | None:
        """Meta's keys for the service (module docstring); each optional, most hashed."""
        key = self._key(name)
        return key.spec if key else None

    def _identifier_names(self) -> list[str]:
        return [name for name in _KEYS if self._key(name)]

    def validate_activation(self, match: Mapping[str, str], mapping: Mapping[str, str]) -> list[str]:
        """Known identifiers, one per Meta key; what each service needs from the mapping."""
        problems = []
        if not match:
            problems.append(
                f"identifiers: found nothing; allowed: at least one of {', '.join(self._identifier_names())}"
            )
        seen: dict[str, str] = {}
        for name in match:
            key = self._key(name)
            if key is None:
                problems.append(
                    f"identifiers.{name}: found {name!r}; allowed for {self.settings.service}: "
                    f"{', '.join(self._identifier_names())}"
                )
                continue
            meta = key.audience if self.settings.service == "audiences" else key.capi
            if meta in seen:
                problems.append(f"identifiers.{name}: {seen[meta]} already sends {meta}; keep one of them")
            seen[str(meta)] = name
        if self.settings.service == "audiences":
            if mapping:
                problems.append(
                    f"mapping: found {', '.join(mapping)}; allowed: nothing "
                    "(custom audiences take identifiers only)"
                )
            if self.settings.audience is None:
                problems.append("audience: found nothing; allowed: {name: ...} or {id: ...}")
            return problems
        targets = set(mapping.values())
        if "event_time" not in targets:
            problems.append(
                "mapping: no column is mapped to event_time; allowed: the fact model's time column"
            )
        for name in ("event_name", "action_source"):
            if name not in targets and getattr(self.settings, name) is None:
                problems.append(
                    f"{name}: found nothing; allowed: the {name} setting or a column mapped to it"
                )
        if self.settings.action_source == "website":
            if "event_source_url" not in targets and self.settings.event_source_url is None:
                problems.append("event_source_url: website events need it (the setting or a mapped column)")
            if not any(_canonical(n) == "client_user_agent" for n in match):
                problems.append("identifiers.client_user_agent: website events need it")
        return problems

    # -- requests -------------------------------------------------------------------------------------

    def record_input(self, operation: str, record: Record) -> dict[str, Any]:
        """A member row (Meta key -> value) or a Conversions API event."""
        if self.settings.service == "audiences":
            return {self._meta_key(name): value for name, value in record.identifiers.items()}
        return self._event(record)

    def _meta_key(self, name: str) -> str:
        key = self._key(name)
        assert key is not None  # the engine rejects unknown identifiers first
        return str(key.audience if self.settings.service == "audiences" else key.capi)

    def _payload(self, inputs: Sequence[Mapping[str, str]]) -> dict[str, Any]:
        present = {key for row in inputs for key in row}
        schema = [key for key in _AUDIENCE_ORDER if key in present]
        return {"schema": schema, "data": [[row.get(key, "") for key in schema] for row in inputs]}

    def _audience_ref(self) -> str:
        if self._audience_id:
            return self._audience_id
        target = self.settings.audience
        return f"<id of audience {target.name!r}>" if target and target.name else "<audience>"

    def build_request(
        self, operation: str, inputs: Sequence[Any], records: Sequence[Record]
    ) -> PreparedRequest:
        """``POST``/``DELETE /{audience}/users``, or ``POST /{pixel}/events``."""
        if self.settings.service == "events":
            body: dict[str, Any] = {"data": list(inputs)}
            if self.settings.test_event_code:
                body["test_event_code"] = self.settings.test_event_code
            return PreparedRequest("POST", self._path(str(self.settings.pixel_id), "events"), json=body)
        method = "DELETE" if operation == "remove" else "POST"
        edge = "usersreplace" if operation == "replace" else "users"
        return PreparedRequest(
            method, self._path(self._audience_ref(), edge), json={"payload": self._payload(inputs)}
        )

    def preview_request(
        self, operation: str, inputs: Sequence[Any], records: Sequence[Record]
    ) -> PreparedRequest:
        """The request as sent; a replace shows where its session fields go."""
        request = self.build_request(operation, inputs, records)
        if operation != "replace":
            return request
        session = {
            "session_id": "<new session>",
            "batch_seq": "<1, 2, ... in order>",
            "last_batch_flag": "<true on the last batch>",
            "estimated_num_total": "<rows sent so far>",
        }
        return PreparedRequest(request.method, request.path, json={**request.json, "session": session})

    def deliver_batch(
        self, operation: str, records: Sequence[Record], inputs: Sequence[Any], transport: Transport
    ) -> BatchOutcome:
        """Events with their isolation of invalid ones; members after resolving the audience."""
        if self.settings.service == "events":
            return self._deliver_events(list(records), list(inputs), transport)
        self._resolve_audience(transport)
        if operation == "replace":
            return self._deliver_replace(list(records), list(inputs), transport)
        return super().deliver_batch(operation, records, inputs, transport)

    # -- audiences --------------------------------------------------------------------------------------

    def _resolve_audience(self, transport: Transport) -> str:
        with self._lock:
            if self._audience_id is None:
                target = self.settings.audience
                if target is None or target.name is None:
                    raise self.config_error("audience: found nothing; allowed: {name: ...} or {id: ...}")
                self._audience_id = self._find_audience(target.name, transport) or self._create_audience(
                    target, transport
                )
            return self._audience_id

    def _find_audience(self, name: str, transport: Transport) -> str | None:
        account = str(self.settings.ad_account_id)
        params = {"fields": "id,name", "limit": "200"}
        found: list[str] = []
        while True:
            response = transport.send(
                PreparedRequest("GET", self._path(account, "customaudiences"), params=params)
            )
            if response.status != 200:
                raise self.request_error(response, f"listing the custom audiences of {account}")
            body = response.json() or {}
            found += [str(a["id"]) for a in body.get("data") or [] if a.get("name") == name and a.get("id")]
            paging = body.get("paging") or {}
            after = (paging.get("cursors") or {}).get("after")
            if not paging.get("next") or not after:
                break
            # The cursor, not paging.next: Meta's next URL carries the access token.
            params = {**params, "after": str(after)}
        if len(found) > 1:
            raise self.config_error(
                f"audience.name: {len(found)} custom audiences of {account} are named {name!r} "
                f"(ids {', '.join(found)}); allowed: a unique name, or audience: {{id: ...}}"
            )
        return found[0] if found else None

    def _create_audience(self, target: MetaAudienceTarget, transport: Transport) -> str:
        account = str(self.settings.ad_account_id)
        body = {
            "name": target.name,
            "subtype": "CUSTOM",
            "customer_file_source": self.settings.customer_file_source,
        }
        if target.description:
            body["description"] = target.description
        response = transport.send(PreparedRequest("POST", self._path(account, "customaudiences"), json=body))
        created = response.json() if response.status == 200 else None
        if not isinstance(created, dict) or not created.get("id"):
            raise self.request_error(response, f"creating the custom audience {target.name!r} in {account}")
        logger.info("%s: created custom audience %r (id %s)", self.label, target.name, created["id"])
        return str(created["id"])

    def parse_response(
        self, operation: str, records: Sequence[Record], response: HttpResponse
    ) -> BatchOutcome:
        """Members: Meta's invalid entries become rejections; a refused request rejects its rows."""
        error = GraphError.of(response)
        if response.status == 200 and error is None:
            inputs = [self.record_input(operation, r) for r in records]
            results, unattributed = self._member_verdicts(records, inputs, response.json() or {})
            if unattributed and len(records) > 1:
                return BatchOutcome(split=True)  # name the unsampled invalid rows by halves
            if unattributed:
                results = [self._invalid_entry(records[0], None)]
            return BatchOutcome(results)
        if error is None:
            raise self.request_error(response, f"{operation} of members of {self.target_label()}")
        reason = self.redact(error.text())
        return BatchOutcome.reject_all(records, reason, f"code {error.code}" + self._subcode(error))

    @staticmethod
    def _subcode(error: GraphError) -> str:
        return f"/{error.subcode}" if error.subcode is not None else ""

    def _member_verdicts(
        self, records: Sequence[Record], inputs: Sequence[Mapping[str, str]], body: Mapping[str, Any]
    ) -> tuple[list[RecordResult], int]:
        """Per-record verdicts and how many invalid rows no sample names. Sample values are only
        compared, never kept, logged or quoted."""
        invalid = _int(body.get("num_invalid_entries")) or 0
        samples = body.get("invalid_entry_samples") or {}
        sampled = {str(v) for pair in samples.items() for v in pair} if isinstance(samples, dict) else set()
        results = []
        named = 0
        for record, row in zip(records, inputs):
            keys = [key for key, value in row.items() if invalid and value in sampled]
            if keys:
                named += 1
                results.append(self._invalid_entry(record, keys))
            else:
                results.append(RecordResult(record.key, "accepted"))
        return results, max(0, invalid - named)

    @staticmethod
    def _invalid_entry(record: Record, keys: Sequence[str] | None) -> RecordResult:
        where = ", ".join(keys) if keys else "no sample named the key"
        return RecordResult(
            record.key,
            "rejected",
            f"Meta counted this row as an invalid entry ({where})",
            f"invalid entry ({', '.join(keys)})" if keys else "invalid entry",
        )

    def _deliver_replace(
        self, records: list[Record], inputs: list[dict[str, str]], transport: Transport
    ) -> BatchOutcome:
        with self._lock:
            session = self._sessions.get(transport)
            if session is None:
                session = self._sessions[transport] = _ReplaceSession(secrets.randbelow(9 * 10**15) + 10**15)
        with session.lock:
            previous, session.held = session.held, (records, inputs)
            if previous is not None:
                self._send_replace(session, *previous, last=False, transport=transport)
        # Meta applies a replace only with its last batch: every record waits for finish_operation.
        return BatchOutcome([RecordResult(r.key, "pending") for r in records])

    def _send_replace(
        self,
        session: _ReplaceSession,
        records: list[Record],
        inputs: list[dict[str, str]],
        *,
        last: bool,
        transport: Transport,
    ) -> None:
        session.batch_seq += 1
        session.rows_sent += len(records)
        body = {
            "payload": self._payload(inputs),
            "session": {
                "session_id": session.session_id,
                "batch_seq": session.batch_seq,
                "last_batch_flag": last,
                "estimated_num_total": session.rows_sent,
            },
        }
        response = transport.send(
            PreparedRequest("POST", self._path(self._audience_ref(), "usersreplace"), json=body)
        )
        error = GraphError.of(response)
        if response.status != 200 or error is not None:
            detail = self.redact(error.text()) if error else self.error_message(response)
            raise PlatformRequestError(
                f"{self.label}: replacing the members of {self.target_label()} failed "
                f"(batch {session.batch_seq} of session {session.session_id}, HTTP {response.status}): "
                f"{detail}; the audience keeps its members and the next sync sends them all again"
            )
        results, unattributed = self._member_verdicts(records, inputs, response.json() or {})
        session.rejected.update((r.key, r) for r in results if r.status == "rejected")
        session.unattributed += unattributed

    def finish_operation(self, operation: str, pending: Sequence[str], transport: Transport) -> BatchOutcome:
        """A replace: send the held-back batch with ``last_batch_flag: true``; Meta then swaps the
        membership, and the pending records are accepted (or rejected as Meta's invalid entries)."""
        if operation != "replace":
            return BatchOutcome()
        with self._lock:
            session = self._sessions.pop(transport, None)
        if session is None:
            logger.warning(
                "%s: the full sync sent no member; Meta cannot empty %s with usersreplace, so its members "
                "stay as they are",
                self.label,
                self.target_label(),
            )
            return BatchOutcome()
        with session.lock:
            held, session.held = session.held, None
            if held is not None:
                self._send_replace(session, *held, last=True, transport=transport)
        if session.unattributed:
            logger.warning(
                "%s: Meta counted %d more invalid row(s) in the replace than it sampled; they are not in %s",
                self.label,
                session.unattributed,
                self.target_label(),
            )
        return BatchOutcome([session.rejected.get(key) or RecordResult(key, "accepted") for key in pending])

    # -- events -----------------------------------------------------------------------------------------

    def _event(self, record: Record) -> dict[str, Any]:
        fields = record.fields
        event: dict[str, Any] = {
            "event_name": fields.get("event_name") or self.settings.event_name,
            "event_time": unix_seconds(fields.get("event_time")),
            "event_id": str(fields.get("event_id") or record.key),
            "action_source": fields.get("action_source") or self.settings.action_source,
            "user_data": {self._meta_key(name): value for name, value in record.identifiers.items()},
        }
        url = fields.get("event_source_url") or self.settings.event_source_url
        if url:
            event["event_source_url"] = str(url)
        if fields.get("opt_out") is not None:
            event["opt_out"] = bool(fields["opt_out"])
        custom = {
            name.removeprefix("custom_data."): _json_value(value)
            for name, value in fields.items()
            if name not in _EVENT_FIELDS and value is not None
        }
        if custom:
            event["custom_data"] = custom
        return event

    def _event_problem(self, record: Record, event: Mapping[str, Any], now: float) -> tuple[str, str] | None:
        """Why an event cannot be sent, checked here because Meta would refuse its whole request."""
        if event["event_time"] is None:
            found = "empty" if record.fields.get("event_time") is None else "not a time"
            return f"event_time is {found}", f"event_time {found}"
        if now - event["event_time"] > MAX_EVENT_AGE_SECONDS:
            return (
                (
                    "event_time is more than 7 days in the past; Meta refuses such events (and their whole "
                    "request)"
                ),
                "event_time older than 7 days",
            )
        for name in ("event_name", "action_source"):
            if not event[name]:
                return f"{name} is empty (map a column to {name} or set {name})", f"{name} empty"
        return None

    def _deliver_events(self, records: list[Record], inputs: list[Any], transport: Transport) -> BatchOutcome:
        results: list[RecordResult] = []
        now = time.time()
        sending: list[tuple[Record, Any]] = []
        for record, event in zip(records, inputs):
            problem = self._event_problem(record, event, now)
            if problem:
                results.append(RecordResult(record.key, "rejected", *problem))
            else:
                sending.append((record, event))
        while sending:
            request = self.build_request("track", [e for _, e in sending], [r for r, _ in sending])
            response = transport.send(request)
            error = GraphError.of(response)
            if response.status == 200 and error is None:
                results += [RecordResult(r.key, "accepted") for r, _ in sending]
                break
            if error is None:
                raise self.request_error(response, f"sending events to {self.target_label()}")
            named = _EVENT_INDEX.search(error.user_msg or error.message)
            index = int(named.group(1)) if named else None
            if error.code != _INVALID_PARAMETER or (
                index is None and error.subcode != _SERVER_EVENT_PARAMETER
            ):
                # Not about one event (a token, a pixel, the request itself): every event gets the reason.
                reason = self.redact(error.text())
                code = f"code {error.code}{self._subcode(error)}"
                results += [RecordResult(r.key, "rejected", reason, code) for r, _ in sending]
                break
            # Meta refused the whole request for one event: reject it and send the others again.
            if index is None or index >= len(sending):
                if len(sending) > 1:
                    return BatchOutcome(split=True)
                index = 0
            record, _ = sending.pop(index)
            results.append(self._event_rejection(record, error))
        return BatchOutcome(results)

    def _event_rejection(self, record: Record, error: GraphError) -> RecordResult:
        message = error.user_msg or error.message
        reason = self.redact(f"{error.user_title}: {message}" if error.user_title else message)
        field_name = _EVENT_FIELD.search(message)
        label = error.user_title or f"code {error.code}{self._subcode(error)}"
        return RecordResult(
            record.key, "rejected", reason, f"{label} ({field_name.group(1)})" if field_name else label
        )

    # -- reading responses ------------------------------------------------------------------------------

    def error_message(self, response: HttpResponse) -> str:
        """Graph's message with its user message and codes, secrets masked."""
        error = GraphError.of(response)
        return self.redact(error.text()) if error else super().error_message(response)

    def classify(self, response: HttpResponse) -> Signal:
        """By ``error.code``: token and permissions stop, throttling waits, transient retries."""
        error = GraphError.of(response)
        if error is None:
            return super().classify(response)
        message = self.error_message(response)
        if error.code in _AUTH_CODES:
            return Signal(ResponseKind.AUTH, message=message)
        if error.code in _RATE_LIMIT_CODES:
            return Signal(ResponseKind.RATE_LIMITED, regain_seconds(response), message)
        if error.is_transient or error.code in _TRANSIENT_CODES or response.status >= 500:
            return Signal(ResponseKind.TRANSIENT, message=message)
        return Signal(ResponseKind.OK)

    # -- validate --connect -----------------------------------------------------------------------------

    def check_connection(self, transport: Transport) -> None:
        """The token and the ad account (and an audience given by id), or the pixel."""
        if self.settings.service == "events":
            pixel = str(self.settings.pixel_id)
            response = transport.send(PreparedRequest("GET", self._path(pixel), params={"fields": "id,name"}))
            if response.status != 200:
                raise self.request_error(response, f"reading pixel {pixel}")
            return
        account = str(self.settings.ad_account_id)
        response = transport.send(
            PreparedRequest(
                "GET", self._path(account, "customaudiences"), params={"fields": "id,name", "limit": "1"}
            )
        )
        if response.status != 200:
            raise self.request_error(response, f"reading the custom audiences of {account}")
        target = self.settings.audience
        if target is None or target.id is None:
            return  # an audience given by name is created by the first sync when missing
        response = transport.send(
            PreparedRequest("GET", self._path(target.id), params={"fields": "id,name,operation_status"})
        )
        if response.status != 200:
            raise self.request_error(response, f"reading custom audience {target.id}")
        status = (response.json() or {}).get("operation_status") or {}
        if _int(status.get("code")) == 471:
            raise PlatformRequestError(
                f"{self.label}: custom audience {target.id} is flagged by Meta (operation_status 471: "
                f"{self.redact(str(status.get('description') or ''))}); resolve it in Audience Manager"
            )


def _json_value(value: Any) -> Any:
    """A mapped value in ``custom_data``: numbers stay numbers (Meta's ``value`` is a float)."""
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, (list, tuple)):
        return [_json_value(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _json_value(v) for k, v in value.items()}
    return value


register_platform("meta_ads", MetaAdsSettings, MetaAds)

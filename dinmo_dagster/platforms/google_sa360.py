"""Google Search Ads 360: ``events`` (offline Floodlight conversions), through the Search Ads 360 API v2.

The new Search Ads 360 Reporting API reads data only; Google documents conversion upload for Search Ads
360 in the Search Ads 360 API v2 (formerly DoubleClick Search API): ``conversion.insert``,
``POST https://www.googleapis.com/doubleclicksearch/v2/conversion`` with a ``ConversionList``
(``{"kind": "doubleclicksearch#conversionList", "conversion": [...]}``), scope
``https://www.googleapis.com/auth/doubleclicksearch``. Each conversion:

- ``agencyId``, ``advertiserId``: the settings ``agency_id`` and ``advertiser_id``;
- ``clickId``: the activation's ``click_id`` identifier (``gclid`` is accepted too), the click id
  Search Ads 360 put on the landing page URL, sent as is (an opaque id Google issued; nothing to
  hash). A record without one is rejected before anything is sent;
- ``conversionId``: the record's key (a column mapped to ``conversion_id`` overrides it).
  Google: "Each conversion in a request must specify a unique ID, and the combination of ID and
  timestamp must be unique amongst all conversions within the advertiser": that pair is the
  de-duplication key, so a conversion sent again after a killed sync is not counted twice;
- ``conversionTimestamp``: the column mapped to ``conversion_timestamp``, as epoch milliseconds UTC
  (text; naive timestamps are UTC). Required;
- ``segmentationType: FLOODLIGHT`` and ``segmentationName`` (the ``floodlight_activity`` setting, the
  Floodlight activity's name) or ``segmentationId`` (``floodlight_activity_id``);
- ``type``: the ``conversion_type`` setting, ``ACTION`` (default) or ``TRANSACTION``; a
  ``TRANSACTION`` takes ``revenueMicros`` (the column mapped to ``revenue`` times 1,000,000, an
  integer, as text: "10" is "10000000") and ``currencyCode`` (ISO 4217, the column mapped to
  ``currency_code`` or the ``currency_code`` setting); ``quantityMillis`` from a column mapped to
  ``quantity``;
- ``customDimension`` / ``customMetric``: columns mapped to ``custom_dimension.<name>`` and
  ``custom_metric.<name>`` (Floodlight variables defined in the advertiser), as ``{"name", "value"}``.

**Errors and partial failures.** The answer to a valid request echoes the list (every conversion
accepted). Search Ads 360 validates the whole request: one invalid conversion fails it with HTTP 400
and Google's classic error body ``{"error": {"errors": [{"domain", "reason": "requestValidation",
"message"}], "code": 400, "message": "The request was not valid. Details: [...]"}}`` (as answered
to clients, e.g. ``[Empty batch encountered.]``), and nothing is inserted. The message does not
reliably say which conversion failed, so the adapter splits a refused batch in halves (the SDK's
bisection) until the bad conversion is alone, and rejects it with Google's message; the others go
in. A lone conversion refused because its ID and timestamp **already exist** (the message contains
"already exists": assumed wording, Google's page was not readable on this point) was inserted by an
earlier attempt: it is counted as delivered, not rejected. 401: the access token is renewed once and
the request sent again. 403 with reason ``rateLimitExceeded`` / ``userRateLimitExceeded`` and 429:
rate limited, waited out with backoff (no ``Retry-After``); 403 ``dailyLimitExceeded`` /
``quotaExceeded``: the daily quota is used up, the sync ends early and the rest goes with the next
one; any other 403 stops the sync (no access to the agency or advertiser). 5xx: retried.

**Limits.** At most **200 conversions per request** (assumed: the figure commonly given for
``conversion.insert``; the reference page states none; Campaign Manager 360's ``batchinsert``
documents 1,000; the ``batch_size`` setting lowers it: a refused batch of n conversions takes up to
2n - 1 requests to isolate its bad one, so smaller batches suit data with many bad click ids) and 600 requests per minute (assumed: the Search Ads 360 API's quota is the
Cloud project's, not documented as a rate), two requests in flight.

**Authentication.** Google OAuth 2.0 (``oauth.py``): ``client_id``, ``client_secret`` and a
``refresh_token`` granted the ``doubleclicksearch`` scope are exchanged at
``https://oauth2.googleapis.com/token`` for an access token of about one hour, renewed before it
expires, sent as ``Authorization: Bearer``. ``validate --connect`` reads the advertiser's saved
columns (``GET /doubleclicksearch/v2/agency/{agencyId}/advertiser/{advertiserId}/savedcolumns``), a
cheap read that needs access to the advertiser.

Documentation followed:

- ``conversion.insert`` (endpoint, scope, required properties, de-duplication by ID and timestamp):
  https://developers.google.com/search-ads/v2/reference/conversion/insert
- the Conversion resource (clickId, revenueMicros, currencyCode, quantityMillis, segmentation,
  type, custom dimensions and metrics): https://developers.google.com/search-ads/v2/reference/conversion
- ``savedColumns.list``: https://developers.google.com/search-ads/v2/reference/savedColumns/list
- the error body of a refused insert (``requestValidation``), as Google's client libraries report it:
  https://github.com/googleapis/google-api-php-client/issues/1213
- Google OAuth 2.0: https://developers.google.com/identity/protocols/oauth2/web-server
- conversion uploads through Search Ads 360 (click ids, 90 days): https://support.google.com/searchads/answer/2411961
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import logging
import math
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import pydantic
from pydantic import Field

from dinmo_dagster.platforms import register_platform
from dinmo_dagster.platforms.audiences import OAuthBearer
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
)
from dinmo_dagster.platforms.identifiers import IdentifierError, IdentifierSpec
from dinmo_dagster.platforms.oauth import OAuthSettings, OAuthToken

if TYPE_CHECKING:
    from dinmo_dagster.platforms.http import Transport

__all__ = ["GoogleSA360", "GoogleSA360Settings"]

logger = logging.getLogger("dinmo_dagster.platforms")

TOKEN_URL = "https://oauth2.googleapis.com/token"
PATH = "/doubleclicksearch/v2/conversion"
MAX_CONVERSIONS_PER_REQUEST = 200  # assumed (module docstring)
LIMITS = Limits(
    max_records_per_batch=MAX_CONVERSIONS_PER_REQUEST,
    requests_per_window=600,
    window_seconds=60.0,
    max_concurrency=2,
)
_RATE_REASONS = frozenset({"rateLimitExceeded", "userRateLimitExceeded"})
_QUOTA_REASONS = frozenset({"dailyLimitExceeded", "quotaExceeded"})
_CURRENCY = re.compile(r"[A-Z]{3}")
_DIGITS = re.compile(r"\d+")
_FIELDS = ("conversion_timestamp", "conversion_id", "revenue", "currency_code", "quantity")
_PREFIXES = ("custom_dimension.", "custom_metric.")
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)


def _click_id(text: str, default_country: str | None = None) -> str:
    value = text.strip()
    if not value or any(c.isspace() for c in value):
        raise IdentifierError("not a click id (no blanks allowed)")
    return value


_CLICK_ID = IdentifierSpec("id", normalize=_click_id)


class GoogleSA360Settings(OAuthSettings):
    """Settings of a ``type: google_sa360`` destination."""

    service: Literal["events"] = Field(description="events (offline Floodlight conversions).")
    agency_id: str = Field(description="The Search Ads 360 agency's numeric id.")
    advertiser_id: str = Field(description="The Search Ads 360 advertiser's numeric id.")
    floodlight_activity: str | None = Field(default=None, description="The Floodlight activity's name.")
    floodlight_activity_id: str | None = Field(
        default=None, description="Or the Floodlight activity's numeric id."
    )
    conversion_type: Literal["ACTION", "TRANSACTION"] = Field(
        default="ACTION", description="ACTION, or TRANSACTION (with revenue)."
    )
    currency_code: str | None = Field(
        default=None, description="ISO 4217 currency of revenues when not mapped."
    )
    batch_size: int = Field(
        default=MAX_CONVERSIONS_PER_REQUEST,
        ge=1,
        le=MAX_CONVERSIONS_PER_REQUEST,
        description="Conversions per request (at most 200): smaller batches isolate a refused conversion "
        "in fewer requests.",
    )

    @pydantic.field_validator("agency_id", "advertiser_id", "floodlight_activity_id", mode="before")
    @classmethod
    def _check_id(cls, value: Any, info: pydantic.ValidationInfo) -> Any:
        if value is None:
            return None
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if not (isinstance(value, str) and _DIGITS.fullmatch(value.strip())):
            what = {"agency_id": "agency", "advertiser_id": "advertiser"}.get(
                str(info.field_name), "Floodlight activity"
            )
            raise ValueError(f"found {value!r}; allowed: the {what}'s numeric id")
        return value.strip()

    @pydantic.field_validator("floodlight_activity")
    @classmethod
    def _check_activity(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("is empty; allowed: the Floodlight activity's name")
        return value

    @pydantic.field_validator("currency_code")
    @classmethod
    def _check_currency(cls, value: str | None) -> str | None:
        if value is not None and not _CURRENCY.fullmatch(value.strip().upper()):
            raise ValueError(f"found {value!r}; allowed: an ISO 4217 code such as EUR")
        return value.strip().upper() if value is not None else None

    @pydantic.model_validator(mode="after")
    def _one_activity(self) -> GoogleSA360Settings:
        if (self.floodlight_activity is None) == (self.floodlight_activity_id is None):
            found = "both" if self.floodlight_activity is not None else "neither"
            raise ValueError(
                f"floodlight_activity: found {found} of floodlight_activity and floodlight_activity_id; "
                "allowed: one of them"
            )
        return self


class GoogleSA360(OAuthBearer, Platform):
    """Search Ads 360 offline conversions: ``track`` (module docstring)."""

    name = "google_sa360"
    settings_model: ClassVar[type[PlatformSettings]] = GoogleSA360Settings
    services: ClassVar[Mapping[str, tuple[str, ...]]] = {"events": ("track",)}
    default_base_url = "https://www.googleapis.com"
    limits = LIMITS

    settings: GoogleSA360Settings

    def __init__(self, settings: PlatformSettings, *, destination: str = "") -> None:
        super().__init__(settings, destination=destination)
        self.oauth = OAuthToken(self, default_token_url=TOKEN_URL)
        if self.settings.batch_size != LIMITS.max_records_per_batch:
            self.limits = dataclasses.replace(LIMITS, max_records_per_batch=self.settings.batch_size)

    def target_label(self) -> str:
        """``Search Ads 360 advertiser 123 (conversions)``."""
        return f"Search Ads 360 advertiser {self.settings.advertiser_id} (conversions)"

    # -- identifiers and activation checks ------------------------------------------------------------

    def identifier_spec(self, name: str) -> IdentifierSpec | None:
        """``click_id`` (or ``gclid``): the click id, sent as is."""
        return _CLICK_ID if name.lower() in ("click_id", "gclid") else None

    def validate_activation(self, match: Mapping[str, str], mapping: Mapping[str, str]) -> list[str]:
        """A click id; a column mapped to conversion_timestamp; known fields; revenue only in a TRANSACTION."""
        problems = []
        if not match:
            problems.append("identifiers: found nothing; allowed: click_id")
        for name in match:
            if self.identifier_spec(name) is None:
                problems.append(f"identifiers.{name}: found {name!r}; allowed: click_id (or gclid)")
        if len(match) > 1:
            problems.append(f"identifiers: found {', '.join(match)}; allowed: one click id")
        targets = set(mapping.values())
        if "conversion_timestamp" not in targets:
            problems.append(
                "mapping: no column is mapped to conversion_timestamp; allowed: the fact model's time column"
            )
        for column, target in mapping.items():
            if target not in _FIELDS and not (target.startswith(_PREFIXES) and target.split(".", 1)[1]):
                problems.append(
                    f"mapping.{column}: found {target!r}; allowed: {', '.join(_FIELDS)}, "
                    "custom_dimension.<name>, custom_metric.<name>"
                )
        if "revenue" in targets and self.settings.conversion_type != "TRANSACTION":
            problems.append(
                "mapping: revenue is mapped but conversion_type is ACTION; allowed: conversion_type "
                "TRANSACTION to send revenue"
            )
        return problems

    # -- requests -------------------------------------------------------------------------------------

    def record_input(self, operation: str, record: Record) -> Any:
        """The record's Conversion, or its problem as text (rejected before sending)."""
        fields = record.fields
        settings = self.settings
        when = _epoch_millis(fields.get("conversion_timestamp"))
        if when is None:
            return "conversion_timestamp is empty or not a time"
        conversion: dict[str, Any] = {
            "agencyId": settings.agency_id,
            "advertiserId": settings.advertiser_id,
            "clickId": next(iter(record.identifiers.values())),
            "conversionId": str(fields.get("conversion_id") or record.key),
            "conversionTimestamp": str(when),
            "segmentationType": "FLOODLIGHT",
            "type": settings.conversion_type,
        }
        if settings.floodlight_activity is not None:
            conversion["segmentationName"] = settings.floodlight_activity
        else:
            conversion["segmentationId"] = settings.floodlight_activity_id
        if fields.get("revenue") is not None:
            micros = _scaled(fields["revenue"], 1_000_000)
            if micros is None:
                return "revenue is not a number"
            conversion["revenueMicros"] = str(micros)
        currency = fields.get("currency_code") or settings.currency_code
        if currency is not None and settings.conversion_type == "TRANSACTION":
            currency = str(currency).strip().upper()
            if not _CURRENCY.fullmatch(currency):
                return "currency_code is not an ISO 4217 code"
            conversion["currencyCode"] = currency
        if fields.get("quantity") is not None:
            millis = _scaled(fields["quantity"], 1_000)
            if millis is None:
                return "quantity is not a number"
            conversion["quantityMillis"] = str(millis)
        for prefix, key in (("custom_dimension.", "customDimension"), ("custom_metric.", "customMetric")):
            custom = [
                {"name": name.removeprefix(prefix), "value": _custom(value)}
                for name, value in fields.items()
                if name.startswith(prefix) and value is not None
            ]
            if custom:
                conversion[key] = custom
        return conversion

    def build_request(
        self, operation: str, inputs: Sequence[Any], records: Sequence[Record]
    ) -> PreparedRequest:
        """``POST /doubleclicksearch/v2/conversion`` with the batch's conversions."""
        body = {
            "kind": "doubleclicksearch#conversionList",
            "conversion": [i for i in inputs if isinstance(i, dict)],
        }
        return PreparedRequest("POST", PATH, json=body)

    def deliver_batch(
        self, operation: str, records: Sequence[Record], inputs: Sequence[Any], transport: Transport
    ) -> BatchOutcome:
        """Reject conversions that cannot be sent, insert the others (all or nothing, see parse_response)."""
        invalid = [
            RecordResult(r.key, "rejected", i, "invalid conversion")
            for r, i in zip(records, inputs, strict=True)
            if isinstance(i, str)
        ]
        sent = [(r, i) for r, i in zip(records, inputs, strict=True) if not isinstance(i, str)]
        if not sent:
            return BatchOutcome(invalid)
        records, inputs = [r for r, _ in sent], [i for _, i in sent]
        outcome = self.parse_response(
            operation, records, transport.send(self.build_request(operation, inputs, records))
        )
        if outcome.split:
            if invalid:  # the engine splits the whole batch: the invalid ones are judged again in the halves
                return BatchOutcome(split=True)
            return outcome
        outcome.results.extend(invalid)
        return outcome

    def parse_response(
        self, operation: str, records: Sequence[Record], response: HttpResponse
    ) -> BatchOutcome:
        """200: every conversion in; 400: split until the bad one is alone, then reject it (or count it
        delivered when it already exists); another answer stops the sync."""
        if response.status == 200:
            return BatchOutcome.accept_all(records)
        if response.status == 400:
            if len(records) > 1:
                return BatchOutcome(split=True)
            message = self.error_message(response)
            if "already exists" in message.lower():
                return BatchOutcome.accept_all(records)
            return BatchOutcome.reject_all(
                records, f"Search Ads 360: {message}", f"HTTP 400 {_reason(response)}".strip()
            )
        raise self.request_error(response, f"inserting conversions into {self.target_label()}")

    # -- reading responses ----------------------------------------------------------------------------

    def classify(self, response: HttpResponse) -> Signal:
        """Google's 403 reasons: rate limits are waited out, a daily quota ends the sync early."""
        if response.status == 403:
            reason = _reason(response)
            if reason in _RATE_REASONS:
                return Signal(ResponseKind.RATE_LIMITED, None, self.error_message(response))
            if reason in _QUOTA_REASONS:
                return Signal(ResponseKind.QUOTA, None, self.error_message(response))
        return super().classify(response)

    def error_message(self, response: HttpResponse) -> str:
        """Google's ``error.message`` (secrets masked)."""
        body = response.json()
        error = body.get("error") if isinstance(body, dict) else None
        if isinstance(error, dict) and error.get("message"):
            return self.redact(str(error["message"]))
        return super().error_message(response)

    # -- validate --connect ---------------------------------------------------------------------------

    def check_connection(self, transport: Transport) -> None:
        """The token (obtained here) and access to the agency's advertiser."""
        s = self.settings
        response = transport.send(
            PreparedRequest(
                "GET", f"/doubleclicksearch/v2/agency/{s.agency_id}/advertiser/{s.advertiser_id}/savedcolumns"
            )
        )
        if response.status != 200:
            raise self.request_error(
                response, f"reading advertiser {s.advertiser_id} of agency {s.agency_id}"
            )


def _reason(response: HttpResponse) -> str:
    body = response.json()
    error = body.get("error") if isinstance(body, dict) else None
    errors = error.get("errors") if isinstance(error, dict) else None
    first = errors[0] if isinstance(errors, list) and errors and isinstance(errors[0], dict) else {}
    return str(first.get("reason") or "")


def _epoch_millis(value: Any) -> int | None:
    """Epoch milliseconds UTC of a timestamp (naive ones are UTC), a date, or ISO 8601 text."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            return None
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.timezone.utc)
        return (value - _EPOCH) // dt.timedelta(milliseconds=1)  # exact: no float rounding
    if isinstance(value, dt.date):
        return (
            dt.datetime(value.year, value.month, value.day, tzinfo=dt.timezone.utc) - _EPOCH
        ) // dt.timedelta(milliseconds=1)
    return None


def _scaled(value: Any, factor: int) -> int | None:
    """``value`` times ``factor`` as an integer (exact for decimals), None when it is not a finite number."""
    try:
        number = decimal.Decimal(str(value))
    except decimal.InvalidOperation:
        return None
    if not number.is_finite():
        return None
    return int((number * factor).to_integral_value(rounding=decimal.ROUND_HALF_EVEN))


def _custom(value: Any) -> Any:
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (dt.datetime, dt.date)):
        return value.isoformat()
    return value


register_platform("google_sa360", GoogleSA360Settings, GoogleSA360)

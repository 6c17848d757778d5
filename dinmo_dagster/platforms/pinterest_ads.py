"""Pinterest Ads: ``audiences`` (customer lists) and ``events`` (the Pinterest API for Conversions).

**audiences** (operations ``add`` and ``remove``). The target is the activation's ``audience``:
``{name: "VIP Europe"}`` (looked up among the ad account's customer lists, created when missing
with the first batch of members) or ``{id: "2542..."}``. Pinterest API v5:

- find: ``GET /v5/ad_accounts/{ad_account_id}/customer_lists`` (pages followed by ``bookmark``);
- create: ``POST /v5/ad_accounts/{ad_account_id}/customer_lists`` with ``name``, ``list_type``
  and ``records`` (the first ``add`` batch);
- ``add`` / ``remove``: ``PATCH /v5/ad_accounts/{ad_account_id}/customer_lists/{id}`` with
  ``operation_type`` ``ADD`` / ``REMOVE`` and ``records``.

``records`` is one text of comma-separated values (Pinterest's reference gives
``"email2@pinterest.com,email6@pinterest.com,"``). A customer list holds one kind of identifier
(its ``list_type``), so an activation names exactly one identifier:

- ``email`` (``EMAIL``): trimmed, lower-cased, then SHA-256 (Pinterest accepts lower-cased plain
  text or SHA1/SHA256/MD5 hashes; this adapter never sends plain text);
- ``maid`` (``MAID``, Google's advertising id) and ``idfa`` (``IDFA``, Apple's): trimmed,
  lower-cased, then SHA-256 (Pinterest: "MAIDs and IDFAs must be hashed with SHA1, SHA256, or MD5";
  it does not say whether to lower-case first: lower-case is assumed, as for e-mails).

A value that already is a SHA-256 hex digest passes unchanged. **Full syncs**: Pinterest v5 has no
replace operation on a customer list (only ``ADD`` and ``REMOVE``), so a full sync is remove +
add, as the SDK does for every platform without one: the records that left and the old
identifiers of changed records are removed, then every member is added.

**Batch limit**: Pinterest's v5 reference found does not state a maximum number of records per
``PATCH``; 10,000 is assumed (one request of 10,000 SHA-256 digests is about 650 kB). Pinterest
matches records asynchronously and answers only the list's counters, so a 200 accepts the whole
batch; a 4xx rejects the batch's records with Pinterest's ``code`` and ``message``.

**events** (operation ``track``): ``POST /v5/ad_accounts/{ad_account_id}/events`` with ``data``, at
most 1,000 events per request (``?test=true`` when the ``test`` setting is on: Pinterest then
checks the events without recording them). Each event:

- ``event_id``: the record's key (a mapped ``event_id`` column overrides it): Pinterest
  de-duplicates events with the same ``event_id`` (and ``event_name``), so an event re-sent after a
  killed sync counts once;
- ``event_time``: the mapped time column in Unix seconds (naive timestamps are UTC);
- ``event_name``, ``action_source`` (``app_android``, ``app_ios``, ``web``, ``offline``),
  ``event_source_url``: mapped columns, else the settings of the same name;
- ``user_data``: ``em`` (e-mail) and ``ph`` (phone: digits with the country code, no ``+``) and
  ``hashed_maids`` as lists of SHA-256 digests; ``client_ip_address`` and ``client_user_agent``
  in clear;
- ``custom_data``: every other mapped field (``value`` as text, ``currency``, ``order_id``...).

Pinterest answers per event (``events: [{"status": "processed" | "failed", "error_message",
"warning_message"}]``, in the order sent): a ``failed`` event is rejected with its message, the
others are accepted.

**Errors and rate limits**: Pinterest's errors are ``{"code": <int>, "message": <text>}``. 401 and
403 stop the sync; 429 (and 5xx) are retried after ``Retry-After`` or the ``X-RateLimit-Reset``
header when given, otherwise with back-off. Documented rates: the Conversions API allows 5,000
calls per minute per ad account; the rate of customer-list calls is not given in the pages found,
so the limiter starts at an assumed 300 calls per minute (``ads_write``), and 429s are waited out.

**Authentication**: ``Authorization: Bearer <access token>``, either a static ``access_token``
(the Conversions API token generated in Ads Manager) or OAuth (``client_id``, ``client_secret``,
``refresh_token``): Pinterest access tokens expire (30 days) and are refreshed with ``POST
/v5/oauth/token`` (``grant_type=refresh_token``), through the SDK's ``oauth.py``, before they expire
and once more after a 401. The client credentials go in an HTTP Basic header only, as Pinterest
documents (RFC 6749 section 2.3.1: one client authentication method, not the body as well).

Pinterest's documentation this adapter follows (API v5 reference, and its OpenAPI description as
published in generated SDKs):

- customer lists: https://developers.pinterest.com/docs/api/v5/customer_lists-create ,
  https://developers.pinterest.com/docs/api/v5/customer_lists-update ,
  https://developers.pinterest.com/docs/api/v5/customer_lists-list
- conversions: https://developers.pinterest.com/docs/api/v5/events-create ,
  https://developers.pinterest.com/docs/conversions/conversion-management/
- OAuth: https://developers.pinterest.com/docs/getting-started/authentication-and-scopes/
- rate limits: https://developers.pinterest.com/docs/reference/rate-limits/
"""

from __future__ import annotations

import datetime as dt
import decimal
import logging
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import pydantic
from pydantic import Field, SecretStr

from dinmo_dagster.platforms import register_platform
from dinmo_dagster.platforms.audiences import AudiencePlatform, AudienceTarget, OAuthBearer
from dinmo_dagster.platforms.base import (
    BatchOutcome,
    HttpResponse,
    Limits,
    PlatformSettings,
    PreparedRequest,
    Record,
    RecordResult,
    unix_seconds,
)
from dinmo_dagster.platforms.identifiers import IdentifierSpec, normalize_email, normalize_phone
from dinmo_dagster.platforms.oauth import OAuthSettings, OAuthToken

if TYPE_CHECKING:
    from dinmo_dagster.platforms.http import Transport

__all__ = ["PinterestAds", "PinterestAdsSettings", "PinterestAudienceTarget"]

logger = logging.getLogger("dinmo_dagster.platforms")

TOKEN_PATH = "/v5/oauth/token"
MAX_RECORDS_PER_REQUEST = 10_000  # assumed: Pinterest's reference gives no maximum
MAX_EVENTS_PER_REQUEST = 1_000
AUDIENCE_LIMITS = Limits(
    max_records_per_batch=MAX_RECORDS_PER_REQUEST, requests_per_window=300, window_seconds=60.0, max_concurrency=2
)
EVENT_LIMITS = Limits(
    max_records_per_batch=MAX_EVENTS_PER_REQUEST, requests_per_window=5_000, window_seconds=60.0, max_concurrency=4
)
ActionSource = Literal["app_android", "app_ios", "web", "offline"]
_DIGITS = re.compile(r"\d+")
# Event parameters a mapping may name; any other mapped field goes in custom_data.
_EVENT_FIELDS = frozenset({"event_name", "event_time", "event_id", "action_source", "event_source_url"})


def _lowered(text: str, default_country: str | None = None) -> str:
    return text.strip().lower()


def _phone(text: str, default_country: str | None = None) -> str:
    """Digits with the country code, no ``+`` (``+33 6 12 34 56 78`` -> ``33612345678``)."""
    return normalize_phone(text, default_country).lstrip("+")


def _clear(text: str, default_country: str | None = None) -> str:
    return text.strip()


# Identifier name -> (customer list_type, Conversions API user_data key, how it is prepared).
_IDENTIFIERS: dict[str, tuple[str | None, str | None, IdentifierSpec]] = {
    "email": ("EMAIL", "em", IdentifierSpec("email", hashed=True, optional=True,
                                             normalize=lambda text, _: normalize_email(text))),
    "maid": ("MAID", "hashed_maids", IdentifierSpec("id", hashed=True, optional=True, normalize=_lowered)),
    "idfa": ("IDFA", "hashed_maids", IdentifierSpec("id", hashed=True, optional=True, normalize=_lowered)),
    "phone": (None, "ph", IdentifierSpec("phone", hashed=True, optional=True, normalize=_phone)),
    "client_ip_address": (None, "client_ip_address", IdentifierSpec("id", optional=True, normalize=_clear)),
    "client_user_agent": (None, "client_user_agent", IdentifierSpec("id", optional=True, normalize=_clear)),
}  # fmt: skip
# user_data keys whose value is a list of digests (the others are one text).
_LIST_KEYS = frozenset({"em", "ph", "hashed_maids"})


class PinterestAudienceTarget(AudienceTarget):
    """The customer list an activation fills: ``{name: ...}`` (created when missing) or ``{id: ...}``."""

    noun = "customer list"

    name: str | None = Field(default=None, description="The customer list's name in the ad account.")
    id: str | None = Field(default=None, description="The customer list's id (digits).")

    @pydantic.field_validator("name")
    @classmethod
    def _check_name(cls, value: str | None) -> str | None:
        return value  # a blank name counts as no name: see _one_of

    @pydantic.model_validator(mode="after")
    def _one_of(self) -> PinterestAudienceTarget:
        if (self.name is None or not self.name.strip()) == (self.id is None):
            found = "both name and id" if self.id is not None else "neither name nor id"
            raise ValueError(f"found {found}; allowed: {{name: ...}} or {{id: ...}}")
        return self


class PinterestAdsSettings(OAuthSettings):
    """Settings of a ``type: pinterest_ads`` destination (``audience`` comes from the activation).

    Authentication: ``access_token``, or ``client_id``, ``client_secret`` and ``refresh_token``."""

    service: Literal["audiences", "events"] = Field(description="audiences (customer lists) or events.")
    # Declared after the OAuth fields: its validator checks which way of authenticating is configured.
    access_token: SecretStr | None = Field(
        default=None, validate_default=True, description="A static Pinterest access token (from {env: VAR}); secret."
    )
    client_id: str | None = Field(default=None, description="The Pinterest app's id (OAuth).")  # type: ignore[assignment]
    client_secret: SecretStr | None = Field(  # type: ignore[assignment]
        default=None, description="The Pinterest app's secret (from {env: VAR}); secret."
    )
    ad_account_id: str = Field(description="The ad account's numeric id.")
    audience: PinterestAudienceTarget | None = Field(default=None, description="The customer list; audiences.")
    event_name: str | None = Field(default=None, description="Event name when no column is mapped to it.")
    action_source: ActionSource | None = Field(
        default=None, description="Where the events happened, when no column is mapped to action_source."
    )
    event_source_url: str | None = Field(default=None, description="Page URL of web events, when not mapped.")
    test: bool = Field(default=False, description="Send events with ?test=true (checked, not recorded).")

    @pydantic.field_validator("ad_account_id", mode="before")
    @classmethod
    def _check_account(cls, value: Any) -> Any:
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if not (isinstance(value, str) and _DIGITS.fullmatch(value)):
            raise ValueError(f"found {value!r}; allowed: the ad account's numeric id")
        return value

    @pydantic.field_validator("client_id")
    @classmethod
    def _check_client_id(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("is empty; allowed: the Pinterest app's id")
        return value.strip() if value is not None else None

    # The two below replace OAuthSettings' validators of the same name: with a static access_token, the
    # OAuth secrets are absent (the model validator below checks which way is configured).
    @pydantic.field_validator("client_secret")
    @classmethod
    def _check_client_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().strip():
            raise ValueError("is empty; allowed: the Pinterest app's secret")
        return value

    @pydantic.field_validator("refresh_token")
    @classmethod
    def _check_refresh_token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().strip():
            raise ValueError("is empty; allowed: a Pinterest refresh token")
        return value

    @pydantic.field_validator("access_token")
    @classmethod
    def _one_way_to_authenticate(cls, value: SecretStr | None, info: pydantic.ValidationInfo) -> SecretStr | None:
        """A static token, or the three OAuth settings (declared before: ``info.data`` has them). A
        field validator so that its message is keyed by a secret: a project loads without reading secrets."""
        if value is not None and not value.get_secret_value().strip():
            raise ValueError("is empty; allowed: a Pinterest access token")
        oauth = ("client_id", "client_secret", "refresh_token")
        given = [k for k in oauth if info.data.get(k) is not None]
        allowed = "allowed: access_token, or client_id, client_secret and refresh_token"
        if value is not None and given:
            raise ValueError(f"found it with {', '.join(given)}; {allowed}")
        if value is None and len(given) != 3:
            missing = ", ".join(k for k in oauth if k not in given)
            raise ValueError(f"found nothing (and no {missing}); {allowed}")
        if info.data.get("grant_type", "refresh_token") != "refresh_token":
            raise ValueError(f"grant_type: found {info.data.get('grant_type')!r}; allowed: refresh_token")
        return value

    @pydantic.model_validator(mode="after")
    def _keys_of_the_service(self) -> PinterestAdsSettings:
        other = {
            "audiences": ("event_name", "action_source", "event_source_url"),
            "events": ("audience",),
        }[self.service]
        problems = [f"{key} is not used by service {self.service}" for key in other if getattr(self, key) is not None]
        if problems:
            raise ValueError("; ".join(problems))
        return self


class PinterestAds(OAuthBearer, AudiencePlatform):
    """Pinterest customer lists (add, remove members) and Conversions API events (track)."""

    name = "pinterest_ads"
    settings_model = PinterestAdsSettings
    services: ClassVar[Mapping[str, tuple[str, ...]]] = {"audiences": ("add", "remove"), "events": ("track",)}
    default_base_url = "https://api.pinterest.com"
    limits = AUDIENCE_LIMITS
    audience_label = "Pinterest customer list"
    audience_noun = "customer list"

    settings: PinterestAdsSettings

    def __init__(self, settings: PlatformSettings, *, destination: str = "") -> None:
        super().__init__(settings, destination=destination)
        self.limits = EVENT_LIMITS if self.settings.service == "events" else AUDIENCE_LIMITS
        self.oauth = None
        if self.settings.access_token is None:
            # Pinterest documents the app's credentials in an HTTP Basic header of the token request.
            self.oauth = OAuthToken(self, default_token_url=self.base_url + TOKEN_PATH, client_auth="basic")

    # -- paths, auth, names ---------------------------------------------------------------------------

    def _path(self, *parts: str) -> str:
        return "/".join(["/v5/ad_accounts", self.settings.ad_account_id, *parts])

    def auth_headers(self) -> dict[str, str]:
        """The access token as a bearer token (never in a URL or a body); OAuth renews it first when due."""
        if self.oauth is not None:
            return self.oauth.headers()
        assert self.settings.access_token is not None
        return {"Authorization": f"Bearer {self.settings.access_token.get_secret_value()}"}

    def target_label(self) -> str:
        """``Pinterest customer list 'VIP'`` or ``Pinterest ad account 123 (conversions)``."""
        if self.settings.service == "events":
            return f"Pinterest ad account {self.settings.ad_account_id} (conversions)"
        return super().target_label()

    # -- identifiers and activation checks -------------------------------------------------------------

    def _entry(self, name: str) -> tuple[str | None, str | None, IdentifierSpec] | None:
        entry = _IDENTIFIERS.get(name.lower())
        if entry is None:
            return None
        return entry if (entry[0] if self.settings.service == "audiences" else entry[1]) else None

    def identifier_spec(self, name: str) -> IdentifierSpec | None:
        """Pinterest's identifiers for the service (module docstring)."""
        entry = self._entry(name)
        return entry[2] if entry else None

    def _names(self) -> str:
        return ", ".join(n for n in _IDENTIFIERS if self._entry(n))

    def validate_activation(self, match: Mapping[str, str], mapping: Mapping[str, str]) -> list[str]:
        """One identifier for a customer list; event_time and the event's name and source for events."""
        problems = []
        if not match:
            problems.append(f"identifiers: found nothing; allowed: one of {self._names()}")
        for name in match:
            if self._entry(name) is None:
                problems.append(
                    f"identifiers.{name}: found {name!r}; allowed for {self.settings.service}: {self._names()}"
                )
        if self.settings.service == "audiences":
            if len(match) > 1:
                problems.append(
                    f"identifiers: found {', '.join(match)}; allowed: one of {self._names()} "
                    "(a Pinterest customer list holds one kind of identifier)"
                )
            if mapping:
                problems.append(f"mapping: found {', '.join(mapping)}; allowed: nothing (customer lists take identifiers only)")
            if self.settings.audience is None:
                problems.append("audience: found nothing; allowed: {name: ...} or {id: ...}")
            return problems
        targets = set(mapping.values())
        if "event_time" not in targets:
            problems.append("mapping: no column is mapped to event_time; allowed: the fact model's time column")
        for name in ("event_name", "action_source"):
            if name not in targets and getattr(self.settings, name) is None:
                problems.append(f"{name}: found nothing; allowed: the {name} setting or a column mapped to it")
        return problems

    # -- requests ---------------------------------------------------------------------------------------

    def record_input(self, operation: str, record: Record) -> Any:
        """A customer-list record (one digest) or a Conversions API event."""
        if self.settings.service == "audiences":
            return next(iter(record.identifiers.values()), "")
        return self._event(record)

    def _list_type(self, records: Sequence[Record]) -> str:
        for record in records:
            for name in record.identifiers:
                entry = self._entry(name)
                if entry and entry[0]:
                    return entry[0]
        return "EMAIL"

    def build_request(self, operation: str, inputs: Sequence[Any], records: Sequence[Record]) -> PreparedRequest:
        """``PATCH .../customer_lists/{id}`` (ADD / REMOVE), or ``POST .../events``."""
        if self.settings.service == "events":
            params = {"test": "true"} if self.settings.test else None
            return PreparedRequest("POST", self._path("events"), json={"data": list(inputs)}, params=params)
        body = {"operation_type": "REMOVE" if operation == "remove" else "ADD", "records": ",".join(inputs)}
        return PreparedRequest("PATCH", self._path("customer_lists", self._audience_ref()), json=body)

    def deliver_batch(
        self, operation: str, records: Sequence[Record], inputs: Sequence[Any], transport: Transport
    ) -> BatchOutcome:
        """Events read per event; members after finding (or creating, with this batch) the list."""
        if self.settings.service == "events":
            response = transport.send(self.build_request(operation, inputs, records))
            return self._event_outcome(records, response)
        with self._lock:
            if self._audience_id is None:
                self._audience_id = self._find_list(transport)
            if self._audience_id is None:
                if operation == "remove":
                    return BatchOutcome.accept_all(records)  # no list yet: nobody to remove
                return self._create_list(records, inputs, transport)
        return super().deliver_batch(operation, records, inputs, transport)

    def _find_list(self, transport: Transport) -> str | None:
        target = self.settings.audience
        if target is None or target.name is None:
            raise self.config_error("audience: found nothing; allowed: {name: ...} or {id: ...}")
        params = {"page_size": "250"}
        found: list[str] = []
        while True:
            response = transport.send(PreparedRequest("GET", self._path("customer_lists"), params=params))
            if response.status != 200:
                raise self.request_error(response, f"listing the customer lists of ad account {self.settings.ad_account_id}")
            body = response.json() or {}
            found += [str(i["id"]) for i in body.get("items") or [] if i.get("name") == target.name and i.get("id")]
            if not body.get("bookmark"):
                break
            params = {**params, "bookmark": str(body["bookmark"])}
        if len(found) > 1:
            raise self.config_error(
                f"audience.name: {len(found)} customer lists of ad account {self.settings.ad_account_id} are named "
                f"{target.name!r} (ids {', '.join(found)}); allowed: a unique name, or audience: {{id: ...}}"
            )
        return found[0] if found else None

    def _create_list(self, records: Sequence[Record], inputs: Sequence[Any], transport: Transport) -> BatchOutcome:
        target = self.settings.audience
        assert target is not None and target.name is not None
        body = {"name": target.name, "list_type": self._list_type(records), "records": ",".join(inputs)}
        response = transport.send(PreparedRequest("POST", self._path("customer_lists"), json=body))
        created = response.json() if response.status in (200, 201) else None
        if not isinstance(created, dict) or not created.get("id"):
            return self.parse_response("add", records, response)
        self._audience_id = str(created["id"])
        logger.info("%s: created customer list %r (id %s)", self.label, target.name, self._audience_id)
        return BatchOutcome.accept_all(records)

    def parse_response(self, operation: str, records: Sequence[Record], response: HttpResponse) -> BatchOutcome:
        """A 200 accepts the batch (Pinterest matches later); a refusal rejects it with Pinterest's message."""
        if response.status in (200, 201):
            return BatchOutcome.accept_all(records)
        if 400 <= response.status < 500:
            code = self._code(response)
            return BatchOutcome.reject_all(
                records, self.error_message(response), f"code {code}" if code is not None else f"HTTP {response.status}"
            )
        raise self.request_error(response, f"{operation} of members of {self.target_label()}")

    # -- events -----------------------------------------------------------------------------------------

    def _event(self, record: Record) -> dict[str, Any]:
        fields = record.fields
        user_data: dict[str, Any] = {}
        for name, value in record.identifiers.items():
            entry = self._entry(name)
            assert entry is not None and entry[1] is not None  # the engine rejects unknown identifiers first
            key = entry[1]
            if key in _LIST_KEYS:
                user_data.setdefault(key, []).append(value)
            else:
                user_data[key] = value
        event: dict[str, Any] = {
            "event_name": fields.get("event_name") or self.settings.event_name,
            "action_source": fields.get("action_source") or self.settings.action_source,
            "event_time": unix_seconds(fields.get("event_time")),
            "event_id": str(fields.get("event_id") or record.key),
            "user_data": user_data,
        }
        url = fields.get("event_source_url") or self.settings.event_source_url
        if url:
            event["event_source_url"] = str(url)
        custom = {name.removeprefix("custom_data."): _text(value) if name.endswith("value") else _json(value)
                  for name, value in fields.items() if name not in _EVENT_FIELDS and value is not None}
        if custom:
            event["custom_data"] = custom
        return event

    def _event_outcome(self, records: Sequence[Record], response: HttpResponse) -> BatchOutcome:
        if response.status != 200:
            return self.parse_response("track", records, response)
        answers = (response.json() or {}).get("events") or []
        results = []
        for i, record in enumerate(records):
            answer = answers[i] if i < len(answers) and isinstance(answers[i], dict) else {}
            if answer.get("status") == "failed":
                reason = self.redact(str(answer.get("error_message") or "failed"))
                results.append(RecordResult(record.key, "rejected", f"Pinterest: {reason}", "event failed"))
            else:
                results.append(RecordResult(record.key, "accepted"))
        return BatchOutcome(results)

    # -- responses ----------------------------------------------------------------------------------------

    @staticmethod
    def _code(response: HttpResponse) -> int | None:
        body = response.json()
        try:
            return int(body["code"]) if isinstance(body, dict) and body.get("code") is not None else None
        except (TypeError, ValueError):
            return None

    def error_message(self, response: HttpResponse) -> str:
        """Pinterest's ``message`` with its ``code`` (secrets masked)."""
        body = response.json()
        if isinstance(body, dict) and isinstance(body.get("message"), str):
            code = self._code(response)
            text = body["message"] + (f" (code {code})" if code is not None else "")
            return self.redact(text)
        return super().error_message(response)

    # -- validate --connect -------------------------------------------------------------------------------

    def check_connection(self, transport: Transport) -> None:
        """The token and the ad account, and a customer list given by id."""
        self._read(transport, self._path(), f"ad account {self.settings.ad_account_id}")
        target = self.settings.audience
        if self.settings.service == "audiences" and target is not None and target.id is not None:
            self._read(transport, self._path("customer_lists", target.id), f"customer list {target.id}")


def _text(value: Any) -> str:
    """Pinterest's ``value`` is text (``"425325.89"``): exact decimals keep their digits."""
    return str(value)


def _json(value: Any) -> Any:
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    return value


register_platform("pinterest_ads", PinterestAdsSettings, PinterestAds)

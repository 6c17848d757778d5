"""X Ads (formerly Twitter Ads): ``audiences`` (custom audiences of the X Ads API, version 12).

**Target.** The activation's ``audience``: ``{name: "VIP Europe"}`` (looked up among the ad account's
custom audiences, created when missing) or ``{id: "1nmth"}`` (X's ids are short base-36 texts, not
digits).

**Operations** (``add``, ``remove``) on ``https://ads-api.x.com/12``:

- find: ``GET /12/accounts/{account_id}/custom_audiences?q=<name>&count=1000`` (``q`` is a
  case-insensitive prefix match: the adapter keeps the audiences whose ``name`` is exactly the one
  asked; pages followed by ``cursor`` / ``next_cursor``);
- create: ``POST /12/accounts/{account_id}/custom_audiences?name=<name>`` (parameters in the query
  string, as X documents; X refuses a name already used);
- ``add`` / ``remove``: ``POST /12/accounts/{account_id}/custom_audiences/{id}/users`` with a JSON
  array of one operation per batch, ``[{"operation_type": "Update" | "Delete", "params": {"users":
  [...]}}]``, one user object per record holding each identifier as a one-element list
  (``{"email": [sha256], "phone_number": [sha256]}``).

**Replace.** X has no operation that empties an audience or swaps its members (``DELETE
custom_audiences/{id}`` deletes the audience itself, and with it its targeting). A full sync is
therefore remove + add, as the SDK does for every platform without a replace: the records that left
and the old identifiers of changed records are deleted, then every member is sent with ``Update``.
Members added by hand in X stay. **Expiry**: X keeps a membership 13 months after its ``Update``
(``expires_at`` defaults to 13 months; the adapter sends neither ``effective_at`` nor ``expires_at``),
and a delta sync re-sends only changed members: a full refresh at least once a year keeps long-standing
members in the audience.

**Identifiers** (``identifiers:`` names; normalized as X's "Custom Audiences user data" page says, then
SHA-256 in lower-case hex; a value that already is a SHA-256 digest passes unchanged):

- ``email`` (``email``): trimmed, lower-cased;
- ``phone`` (``phone_number``): E.164 with its ``+`` (``+33612345678``), national numbers read with
  the activation's ``default_country`` (assumed: X's pages give no phone normalization rule);
- ``handle`` (``handle``): the @handle without its ``@``, trimmed, lower-cased (``@AdsAPI`` ->
  ``adsapi``, X's own example);
- ``twitter_id`` (alias ``x_id``; ``twitter_id``): the X user id, digits only;
- ``device_id`` (aliases ``idfa``, ``adid``, ``gaid``, ``android_id``; ``device_id``): an IDFA or
  Google AdID (a UUID) lower-cased with its dashes, or an Android id (16 hex digits) lower-cased.

A user object may hold several kinds at once (X matches on any); a record with no usable identifier is
rejected before anything is sent. ``partner_user_id`` (sent in clear) is not offered.

**Batches and answers.** At most 2,500 users per request in one ``operation`` object, and at most
5,000,000 bytes of body. X's page says the batch size "is determined by the number of operations"
(2,500), its earlier version by "the number of entries in the users field": one operation of at most
2,500 users satisfies both readings. The answer is ``{"data": {"success_count", "total_count"},
"request": ...}``; X says the two must equal the number of users sent, otherwise the request is to be
retried: such a batch's records are marked "retry" (sent again, within the engine's bounds). Batches
"fail or succeed together": request-level errors come in ``errors`` and item-level ones in
``operation_errors`` (its index is the operation's). An item-level refusal names no user, so the batch
is split until the refused user is alone, then rejected with X's ``code`` and ``message`` (assumed:
the HTTP status of such an answer is not documented; 200 and 400 are both read). Any other 4xx rejects
the batch's records with X's message; they go again with the next sync.

**Errors** are ``{"errors": [{"code": "INVALID_PARAMETER", "message": ...}], "request": {...}}``
(CAPS_CASE codes). 401 (``UNAUTHORIZED_ACCESS``) and 403 stop the sync; 429 (``TOO_MANY_REQUESTS``)
is waited out until ``x-rate-limit-reset`` (a Unix time), 5xx (``INTERNAL_ERROR``,
``SERVICE_UNAVAILABLE``, ``OVER_CAPACITY``) retried with backoff.

**Rate limits**: 1,500 requests per minute for the audience users endpoint (X's rate-limit chart,
"Audience", per endpoint; writes in general 450 per minute). X announces the window in
``x-rate-limit-limit`` / ``-remaining`` / ``-reset`` (user level) and ``x-account-rate-limit-*``
(ad-account level, preferred when present): ``remaining`` 0 holds every worker until the reset.

**Authentication**: OAuth 1.0a user context, every request signed with HMAC-SHA1 by ``oauthlib`` (X
asks for a well-known library): ``consumer_key`` and ``consumer_secret`` (the app's API key and
secret) and ``access_token`` / ``access_token_secret`` (a user with access to the ad account). A new
``Authorization`` header (nonce, timestamp, signature) is made for each attempt of each request; the
JSON body is not part of the signature (OAuth 1.0a signs form bodies only), the query string is. The
requests are sent with ``requests`` inside the SDK's transport (its rate limiter, retries and error
handling). OAuth libraries log the signed header at DEBUG: their loggers are kept at INFO here so the
access token never reaches a log.

X's documentation this adapter follows:

- custom audiences and their users: https://docs.x.com/x-ads-api/audiences/api-reference ,
  https://developer.x.com/en/docs/x-ads-api/audiences/api-reference/custom-audience-users ,
  https://developer.twitter.com/en/docs/twitter-ads-api/audiences/api-reference/custom-audiences
- user data normalization: https://developer.twitter.com/en/docs/twitter-ads-api/audiences/overview/user-data
- audiences overview (processing, 13-month expiry): https://docs.x.com/x-ads-api/audiences
- errors: https://docs.x.com/x-ads-api/fundamentals/error-codes-and-responses
- rate limits: https://docs.x.com/x-ads-api/fundamentals/rate-limiting
- authentication: https://docs.x.com/x-ads-api/fundamentals/making-authenticated-requests
- versions (12 is current): https://docs.x.com/x-ads-api/fundamentals/versioning
- pagination: https://docs.x.com/x-ads-api/fundamentals/pagination
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Literal
from urllib.parse import quote, urlencode

import oauthlib.oauth1
import pydantic
import requests
from pydantic import Field, SecretStr

from dinmo_dagster.platforms import register_platform
from dinmo_dagster.platforms.audiences import (
    AudiencePlatform,
    AudienceTarget,
    IdentifierTable,
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
    ResponseKind,
    Signal,
    json_default,
)
from dinmo_dagster.platforms.identifiers import (
    IdentifierError,
    IdentifierSpec,
    normalize_email,
    normalize_phone,
)

if TYPE_CHECKING:
    from dinmo_dagster.platforms.http import Transport
    from dinmo_dagster.platforms.ratelimit import RateLimiter

__all__ = ["XAds", "XAdsSettings", "XAudienceTarget"]

logger = logging.getLogger("dinmo_dagster.platforms")
# oauthlib and requests-oauthlib log the signed Authorization header (with the access token) at DEBUG.
for _name in ("oauthlib", "requests_oauthlib"):
    logging.getLogger(_name).setLevel(max(logging.INFO, logging.getLogger(_name).level))

API_VERSION = "12"
MAX_USERS_PER_REQUEST = 2_500
MAX_BODY_BYTES = 5_000_000
LIMITS = Limits(
    max_records_per_batch=MAX_USERS_PER_REQUEST,
    max_bytes_per_batch=MAX_BODY_BYTES,
    requests_per_window=1_500,
    window_seconds=60.0,
    max_concurrency=4,
)
# The longest x-rate-limit-reset a sync waits for when remaining is 0 (the transport's default bound).
MAX_RESET_WAIT_SECONDS = 900.0
_ID = re.compile(r"[0-9a-zA-Z]+")
_HANDLE = re.compile(r"[a-z0-9_]{1,50}")
_DIGITS = re.compile(r"\d+")
_ANDROID_ID = re.compile(r"[0-9a-f]{16}")


def _handle(text: str, default_country: str | None = None) -> str:
    handle = text.strip().removeprefix("@").strip().lower()
    if not _HANDLE.fullmatch(handle):
        raise IdentifierError("not an X handle (letters, digits and _)")
    return handle


def _twitter_id(text: str, default_country: str | None = None) -> str:
    value = text.strip()
    if not _DIGITS.fullmatch(value):
        raise IdentifierError("not an X user id (digits)")
    return value


def _device_id(text: str, default_country: str | None = None) -> str:
    value = text.strip().lower()
    if _ANDROID_ID.fullmatch(value):
        return value
    return advertising_id(
        value, "a device id (IDFA or AdID: 8-4-4-4-12 hex digits; Android id: 16 hex digits)"
    ).lower()


# identifiers: name -> (key of X's user object, how it is prepared)
_IDENTIFIERS = IdentifierTable(
    {
        "email": ("email", IdentifierSpec("email", hashed=True, optional=True,
                                          normalize=lambda text, _: normalize_email(text))),
        "phone": ("phone_number", IdentifierSpec("phone", hashed=True, optional=True, normalize=normalize_phone)),
        "handle": ("handle", IdentifierSpec("id", hashed=True, optional=True, normalize=_handle)),
        "twitter_id": ("twitter_id", IdentifierSpec("id", hashed=True, optional=True, normalize=_twitter_id)),
        "device_id": ("device_id", IdentifierSpec("id", hashed=True, optional=True, normalize=_device_id)),
    },
    aliases={"x_id": "twitter_id", "idfa": "device_id", "adid": "device_id", "gaid": "device_id",
             "android_id": "device_id", "phone_number": "phone"},
)  # fmt: skip


class XAudienceTarget(AudienceTarget):
    """The custom audience an activation fills: ``{name: ...}`` (created when missing) or ``{id: ...}``."""

    noun = "custom audience"
    numeric_id = False  # X's ids are base-36 texts: "1nmth"

    name: str | None = Field(
        default=None, description="The custom audience's name (unique in the ad account)."
    )
    id: str | None = Field(default=None, description="The custom audience's id, such as 1nmth.")
    description: str | None = Field(default=None, description="Sent when the audience is created.")

    @pydantic.field_validator("id")
    @classmethod
    def _check_x_id(cls, value: str | None) -> str | None:
        if value is not None and not _ID.fullmatch(value):
            raise ValueError(
                f"found {value!r}; allowed: the custom audience's id (letters and digits, such as 1nmth)"
            )
        return value


class XAdsSettings(PlatformSettings):
    """Settings of a ``type: x_ads`` destination (``audience`` comes from the activation)."""

    service: Literal["audiences"] = Field(description="audiences (custom audiences).")
    account_id: str = Field(description="The ad account's id, such as 18ce54d4x5t.")
    consumer_key: SecretStr = Field(description="The app's API key ({env: VAR}); secret.")
    consumer_secret: SecretStr = Field(description="The app's API key secret ({env: VAR}); secret.")
    access_token: SecretStr = Field(description="The user's access token ({env: VAR}); secret.")
    access_token_secret: SecretStr = Field(description="The user's access token secret ({env: VAR}); secret.")
    api_version: Literal["12"] = Field(default=API_VERSION, description="The X Ads API version (12).")
    audience: XAudienceTarget | None = Field(
        default=None, description="The custom audience; from the activation."
    )

    @pydantic.field_validator("account_id", mode="before")
    @classmethod
    def _check_account(cls, value: Any) -> Any:
        if not (isinstance(value, str) and _ID.fullmatch(value.strip())):
            raise ValueError(
                f"found {value!r}; allowed: the ad account's id (letters and digits, such as 18ce54d4x5t)"
            )
        return value.strip()

    @pydantic.field_validator("consumer_key", "consumer_secret", "access_token", "access_token_secret")
    @classmethod
    def _not_blank(cls, value: SecretStr, info: pydantic.ValidationInfo) -> SecretStr:
        if not value.get_secret_value().strip():
            raise ValueError(
                f"is empty; allowed: the {info.field_name.replace('_', ' ')} from X's developer portal"
            )
        return value


class XAds(AudiencePlatform):
    """X custom audiences: add and remove members (module docstring)."""

    name = "x_ads"
    settings_model: ClassVar[type[PlatformSettings]] = XAdsSettings
    services: ClassVar[Mapping[str, tuple[str, ...]]] = {"audiences": ("add", "remove")}
    default_base_url = "https://ads-api.x.com"
    limits = LIMITS
    audience_label = "X custom audience"
    audience_noun = "custom audience"
    identifier_table = _IDENTIFIERS
    audiences_taking = "X custom audiences"

    settings: XAdsSettings

    def __init__(self, settings: PlatformSettings, *, destination: str = "") -> None:
        super().__init__(settings, destination=destination)
        s = self.settings
        self._client = oauthlib.oauth1.Client(
            s.consumer_key.get_secret_value(),
            client_secret=s.consumer_secret.get_secret_value(),
            resource_owner_key=s.access_token.get_secret_value(),
            resource_owner_secret=s.access_token_secret.get_secret_value(),
            signature_method=oauthlib.oauth1.SIGNATURE_HMAC_SHA1,
        )

    # -- requests -----------------------------------------------------------------------------------

    def _path(self, *parts: str) -> str:
        return "/".join(["", self.settings.api_version, "accounts", self.settings.account_id, *parts])

    def _signed(
        self, method: str, path: str, *, params: Mapping[str, str] | None = None, body: Any = None
    ) -> PreparedRequest:
        """A request the transport runs as a call: signed anew (nonce, timestamp) at each attempt."""
        query = urlencode(list((params or {}).items()), quote_via=quote)
        url = f"{self.base_url}{path}" + (f"?{query}" if query else "")
        data = (
            None if body is None else json.dumps(body, separators=(",", ":"), default=json_default).encode()
        )
        timeout = self.settings.timeout_seconds

        def call() -> HttpResponse:
            headers = {"Content-Type": "application/json"} if data is not None else {}
            signed_url, signed, _ = self._client.sign(url, method, None, headers)
            try:
                raw = requests.request(method, signed_url, data=data, headers=signed, timeout=timeout)
            except (requests.Timeout, requests.ConnectionError):
                return HttpResponse(503, {}, b"")
            return HttpResponse(raw.status_code, {k.lower(): v for k, v in raw.headers.items()}, raw.content)

        return PreparedRequest(method, path, json=body, params=params, call=call)

    def _users_request(self, operation: str, inputs: Sequence[Any]) -> PreparedRequest:
        body = [
            {
                "operation_type": "Delete" if operation == "remove" else "Update",
                "params": {"users": list(inputs)},
            }
        ]
        return self._signed("POST", self._path("custom_audiences", self._audience_ref(), "users"), body=body)

    def record_input(self, operation: str, record: Record) -> Any:
        """X's user object: each identifier as a one-element list (``{"email": [digest]}``)."""
        return {kind: [value] for kind, value in _IDENTIFIERS.by_kind(record.identifiers).items()}

    def build_request(
        self, operation: str, inputs: Sequence[Any], records: Sequence[Record]
    ) -> PreparedRequest:
        """``POST .../custom_audiences/{id}/users`` with one ``Update`` or ``Delete`` operation."""
        return self._users_request(operation, inputs)

    def deliver_batch(
        self, operation: str, records: Sequence[Record], inputs: Sequence[Any], transport: Transport
    ) -> BatchOutcome:
        """Find (or create) the audience, then send the batch's users."""
        with self._lock:
            if self._audience_id is None:
                target = self.audience_target
                assert target is not None and target.name is not None  # validated with the activation
                self._audience_id = self._find_by_name(target.name, transport)
                if self._audience_id is None:
                    if operation == "remove":
                        return BatchOutcome.accept_all(records)  # no audience yet: nobody to remove
                    self._audience_id = self._create_named(target, transport)
        return super().deliver_batch(operation, records, inputs, transport)

    def parse_response(
        self, operation: str, records: Sequence[Record], response: HttpResponse
    ) -> BatchOutcome:
        """Counts equal to the users sent accept the batch; an item-level refusal splits it down to the
        refused user; another 4xx rejects it with X's message."""
        body = response.json() if isinstance(response.json(), dict) else {}
        item_errors = [
            e for errors in body.get("operation_errors") or [] for e in (errors or []) if isinstance(e, dict)
        ]
        if item_errors and response.status in (200, 400):
            if len(records) > 1:
                return BatchOutcome(split=True)
            code, message = self._first_error(item_errors)
            return BatchOutcome.reject_all(records, f"X: {message}", f"X {code}")
        if response.status == 200:
            data = body.get("data")
            counts = data if isinstance(data, list) else [data]
            success = sum(int(c.get("success_count") or 0) for c in counts if isinstance(c, dict))
            total = sum(int(c.get("total_count") or 0) for c in counts if isinstance(c, dict))
            if success == total == len(records):
                return BatchOutcome.accept_all(records)
            reason = f"X processed {success} of {len(records)} users (total_count {total}); sent again"
            return BatchOutcome([RecordResult(r.key, "retry", reason, "X count mismatch") for r in records])
        if 400 <= response.status < 500:
            code, message = self._first_error(body.get("errors") or [])
            return BatchOutcome.reject_all(records, f"X: {message}", f"X {code or response.status}")
        raise self.request_error(response, f"{operation} of users of {self.target_label()}")

    # -- the audience -------------------------------------------------------------------------------

    def _find_by_name(self, name: str, transport: Transport) -> str | None:
        """The id of the custom audience named exactly ``name`` (``q`` is a prefix match)."""
        params = {"q": name[:255], "count": "1000"}
        found: list[str] = []
        while True:
            response = transport.send(self._signed("GET", self._path("custom_audiences"), params=params))
            if response.status != 200:
                raise self.request_error(
                    response, f"listing the custom audiences of ad account {self.settings.account_id}"
                )
            body = response.json() or {}
            found += [str(a["id"]) for a in body.get("data") or []
                      if isinstance(a, dict) and a.get("name") == name and a.get("id") and not a.get("deleted")]  # fmt: skip
            if not body.get("next_cursor"):
                break
            params = {**params, "cursor": str(body["next_cursor"])}
        return self._the_one_named(name, found, f"custom audiences of ad account {self.settings.account_id}")

    def _create_named(self, target: AudienceTarget, transport: Transport) -> str:
        assert target.name is not None
        params = {"name": target.name}
        description = getattr(target, "description", None)
        if description:
            params["description"] = description
        response = transport.send(self._signed("POST", self._path("custom_audiences"), params=params))
        created = (
            ((response.json() or {}).get("data") or {}).get("id") if response.status in (200, 201) else None
        )
        if not created:
            raise self.request_error(response, f"creating the custom audience {target.name!r}")
        logger.info("%s: created custom audience %r (id %s)", self.label, target.name, created)
        return str(created)

    # -- reading responses --------------------------------------------------------------------------

    @staticmethod
    def _first_error(errors: Sequence[Any]) -> tuple[str, str]:
        first = next((e for e in errors if isinstance(e, dict)), {})
        return str(first.get("code") or ""), str(first.get("message") or first.get("details") or "refused")

    def error_message(self, response: HttpResponse) -> str:
        """X's ``errors``: each ``message (CODE)``, secrets masked."""
        body = response.json()
        errors = body.get("errors") if isinstance(body, dict) else None
        if isinstance(errors, list) and errors:
            texts = [f"{e.get('message') or e.get('details') or 'error'} ({e.get('code')})"
                     for e in errors if isinstance(e, dict)]  # fmt: skip
            return self.redact("; ".join(texts))
        return super().error_message(response)

    @staticmethod
    def _reset(response: HttpResponse) -> tuple[int | None, float | None]:
        """(remaining, seconds to the reset): the ad-account level headers when present, else the user level."""
        for prefix in ("x-account-rate-limit-", "x-rate-limit-"):
            remaining, reset = response.header(prefix + "remaining"), response.header(prefix + "reset")
            if remaining is None and reset is None:
                continue
            try:
                left = int(remaining) if remaining is not None else None
            except ValueError:
                left = None
            try:
                delay = max(0.0, float(reset) - time.time()) if reset is not None else None
            except ValueError:
                delay = None
            return left, delay
        return None, None

    def classify(self, response: HttpResponse) -> Signal:
        """429: wait until ``x-rate-limit-reset``; the rest as usual."""
        if response.status == 429:
            return Signal(ResponseKind.RATE_LIMITED, self._reset(response)[1], self.error_message(response))
        return super().classify(response)

    def observe(self, response: HttpResponse, limiter: RateLimiter) -> str | None:
        """``x-rate-limit-remaining: 0`` holds every worker until the reset (or stops a sync that would
        wait longer than it may)."""
        remaining, delay = self._reset(response)
        if remaining != 0 or delay is None or response.status == 429:
            return None
        if delay > MAX_RESET_WAIT_SECONDS:
            return f"X's rate limit resets in {delay:.0f}s (x-rate-limit-remaining: 0)"
        limiter.pause(delay)
        return None

    # -- validate --connect -------------------------------------------------------------------------

    def check_connection(self, transport: Transport) -> None:
        """The credentials and the ad account, and an audience given by id."""
        account = self.settings.account_id
        response = transport.send(self._signed("GET", self._path()))
        if response.status != 200:
            raise self.request_error(response, f"reading ad account {account}")
        target = self.audience_target
        if target is not None and target.id is not None:
            response = transport.send(self._signed("GET", self._path("custom_audiences", target.id)))
            if response.status != 200:
                raise self.request_error(response, f"reading custom audience {target.id}")


register_platform("x_ads", XAdsSettings, XAds)

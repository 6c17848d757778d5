"""Splio (Splio Customer Platform, "SCP"): contacts and their fields, over Splio's Data API.

A ``type: splio`` destination serves ``service: attributes``. The universe's API key (``api_key``, from
``{env: VAR}``) is exchanged at ``POST /authenticate`` (``{"api_key": ...}``) for a JWT, sent as
``Authorization: Bearer <JWT>`` on every other call. Splio's pages give the JWT one hour (one page of the
same site still says 24 hours) and ask clients not to authenticate per call: the token is kept in memory,
renewed after 50 minutes (Splio's own advice) and at once when a call is refused with ``401`` (one new token,
the call sent again). The root is ``https://api.splio.com`` (``base_url`` overrides it, and the
authentication follows it).

Contacts are named by ``email`` (trimmed, lower-cased: the universe's unique key must be the e-mail;
universes keyed by a custom unique key or the cellphone are not supported). Native fields are mapped by
their Data API names: ``firstname``, ``lastname``, ``cellphone``, ``language``, ``date``; custom fields by id,
written ``custom_fields.<id>`` (``custom_fields.5``), sent as ``"custom_fields": [{"id": 5, "value": ...}]``.
A NULL is sent as ``""`` (Splio's "empty"); ``null_values: skip`` leaves the field out.

- ``insert``: ``POST /data/contacts/bulk`` ``{"contacts": [...]}``, at most 1,000 contacts; the answer is
  ``200`` or ``207`` with one item per contact (``contact_id``, ``code``, ``description``): ``201`` done, a
  ``400`` "already exists" leaves the existing contact alone (done), any other item code rejects the contact
  with Splio's description. A ``400`` for the whole call (``{"status": 400, "errors": [{"error_key",
  "error", "error_description"}]}``, e.g. ``contacts[1].email`` ``wrong_email``) rejects the contact its
  ``error_key`` names (``contacts[<n>]``) and sends the others again.
- ``update``: ``PATCH /data/contacts/{email}`` per contact (Splio documents no bulk edit); ``404`` ("Record
  not found") means the contact is not in the universe: done, nothing to update (``sync_mode: update``
  never creates). A ``400`` rejects the contact with Splio's description.
- ``upsert``: the bulk create above; the contacts it reports as already existing are then edited one by one
  (``PATCH``), so new contacts cost one call per 1,000 and changed ones one call each.
- ``delete`` (``sync_mode: mirror``): ``DELETE /data/contacts/bulk`` with ``{"contacts": [<email>, ...]}``,
  at most 1,000, asynchronous on Splio's side; the ``207`` items of contacts Splio does not hold ("Contact
  not found") count as done.

Lists and consent: a ``PATCH`` with ``lists`` replaces every membership of the contact, and subscriptions
go through their own endpoints; this adapter never sends ``lists`` (it subscribes no one and unsubscribes no
one). ``validate --connect`` authenticates and reads the universe's custom fields (``GET
/data/contacts/fields``) to refuse a ``custom_fields.<id>`` the universe does not have.

Limits: 1,000 contacts per bulk call (documented). Splio documents no rate limit for the Data API in the
pages that could be read: the SDK keeps to 10 calls per second (assumed) and honours ``429`` with
``Retry-After`` (or backs off).

Splio's documentation this adapter follows:

- authentication (``/authenticate`` with ``api_key``, JWT in ``Authorization: Bearer``, one hour, do not
  authenticate per call): https://dev-scp.splio.com/reference/authentication and
  https://dev-scp.splio.com/docs/authentication-1 (renew every 50 minutes) and
  https://support.splio.com/hc/en-us/articles/360015992239-API-authentication-
- create a contact (fields, ``custom_fields``, ``lists``, error format and cases):
  https://dev-scp.splio.com/reference/post_data-contacts
- create a bulk of contacts (max 1,000, ``207`` items): https://dev-scp.splio.com/reference/post_data-contacts-bulk
- edit a contact (``PATCH /data/contacts/{id}``, ``404`` record not found, ``lists`` replace memberships):
  https://dev-scp.splio.com/reference/patch_data-contacts-individual-id
- delete a bulk of contacts (max 1,000, asynchronous, ``207`` items):
  https://dev-scp.splio.com/reference/delete_data-contacts-bulk

Assumed where the pages could not be read in full: the ``/authenticate`` answer (``{"token": "<JWT>"}``);
the body of the bulk delete (``{"contacts": [<unique key>, ...]}``); the answer of ``GET
/data/contacts/fields`` (a list, or ``{"elements": [...]}``, of ``{"id", "name", "data_type"}``); the rate
limit; that the bulk create answers ``400`` per item for an existing contact with a description containing
"already exists" (as the single create does).
"""

from __future__ import annotations

import datetime as dt
import decimal
import logging
import math
import re
import threading
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Literal
from urllib.parse import quote

import pydantic
import requests
import tenacity
from pydantic import Field, SecretStr

from dinmo_dagster.platforms import register_platform
from dinmo_dagster.platforms.base import (
    BatchOutcome,
    FieldInfo,
    HttpResponse,
    Limits,
    Platform,
    PlatformSettings,
    PreparedRequest,
    Record,
    RecordResult,
)
from dinmo_dagster.platforms.errors import PlatformAuthError, PlatformRequestError
from dinmo_dagster.platforms.identifiers import IdentifierSpec, normalize_email

if TYPE_CHECKING:
    from dinmo_dagster.platforms.http import Transport

__all__ = ["Splio", "SplioSettings"]

logger = logging.getLogger("dinmo_dagster.platforms")

MAX_BULK = 1_000
TOKEN_LIFETIME_SECONDS = 50 * 60  # Splio: the JWT lasts one hour; authenticate again every 50 minutes
NATIVE_FIELDS = ("firstname", "lastname", "cellphone", "language", "date")
_CUSTOM = re.compile(r"custom_fields\.(\d+)")
_ITEM = re.compile(r"contacts\[(\d+)\]")
EMAIL = IdentifierSpec("email", normalize=lambda v, _c: normalize_email(v))


class _Transient(Exception):
    """A failure of ``/authenticate`` worth trying again."""


class SplioSettings(PlatformSettings):
    """Settings of a ``type: splio`` destination."""

    service: Literal["attributes"] = Field(description="attributes (contacts and their fields).")
    api_key: SecretStr = Field(description="The universe's API key (from {env: VAR}); secret.")

    @pydantic.field_validator("api_key")
    @classmethod
    def _check_key(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value().strip():
            raise ValueError("is empty; allowed: a Splio API key")
        return value


class Splio(Platform):
    """Splio contacts through the Data API."""

    name = "splio"
    settings_model = SplioSettings
    services: ClassVar[Mapping[str, tuple[str, ...]]] = {
        "attributes": ("upsert", "update", "insert", "delete")
    }
    default_base_url = "https://api.splio.com"
    limits = Limits(
        max_records_per_batch=MAX_BULK, requests_per_window=10, window_seconds=1.0, max_concurrency=4
    )

    settings: SplioSettings

    def __init__(self, settings: PlatformSettings, *, destination: str = "") -> None:
        super().__init__(settings, destination=destination)
        self._lock = threading.Lock()
        self._token: str | None = None
        self._renew_at = 0.0
        self._session = requests.Session()
        self.token_requests = 0

    # -- the JWT ----------------------------------------------------------------------------------------------

    def auth_headers(self) -> dict[str, str]:
        """``Authorization: Bearer <JWT>``, authenticating first when the token is missing or 50 minutes old."""
        with self._lock:
            if self._token is None or time.monotonic() >= self._renew_at:
                self._authenticate()
            return {"Authorization": f"Bearer {self._token}", "Accept": "application/json"}

    def renew_auth(self, response: HttpResponse, sent: Mapping[str, str]) -> bool:
        """A 401 for the current token: authenticate again (once per stale token) and send the call again."""
        stale = (sent.get("Authorization") or "").removeprefix("Bearer ")
        with self._lock:
            if self._token is not None and self._token != stale:
                return True
            self._authenticate()
            return True

    def runtime_secrets(self) -> list[str]:
        """The JWT, masked like the API key."""
        return [self._token] if self._token else []

    def _authenticate(self) -> None:
        url = f"{self.base_url}/authenticate"

        def attempt() -> None:
            self.token_requests += 1
            started = time.monotonic()
            try:
                raw = self._session.post(
                    url,
                    json={"api_key": self.settings.api_key.get_secret_value()},
                    headers={"Accept": "application/json"},
                    timeout=self.settings.timeout_seconds,
                )
            except (requests.Timeout, requests.ConnectionError) as exc:
                raise _Transient(type(exc).__name__) from None
            if raw.status_code >= 500 or raw.status_code in (408, 429):
                raise _Transient(f"HTTP {raw.status_code}")
            answer = HttpResponse(
                raw.status_code, {k.lower(): v for k, v in raw.headers.items()}, raw.content
            )
            body = answer.json()
            token = body.get("token") if isinstance(body, dict) else None
            if raw.status_code != 200 or not isinstance(token, str) or not token:
                raise PlatformAuthError(
                    f"{self.label}: Splio refused the API key at /authenticate (HTTP {raw.status_code}: "
                    f"{self.error_message(answer)}); check api_key"
                )
            self._token = token
            self._renew_at = started + TOKEN_LIFETIME_SECONDS

        try:
            tenacity.Retrying(
                retry=tenacity.retry_if_exception_type(_Transient),
                stop=tenacity.stop_after_attempt(3),
                wait=tenacity.wait_exponential(multiplier=0.5, max=2.0),
                reraise=True,
            )(attempt)
        except _Transient as exc:
            raise PlatformRequestError(f"{self.label}: {url} failed after 3 attempts: {exc}") from None

    # -- identifiers and activation checks --------------------------------------------------------------------

    def target_label(self) -> str:
        """``Splio contacts``."""
        return "Splio contacts"

    def identifier_spec(self, name: str) -> IdentifierSpec | None:
        """``email`` only (never hashed: Splio sends to it)."""
        return EMAIL if name == "email" else None

    def validate_activation(self, match: Mapping[str, str], mapping: Mapping[str, str]) -> list[str]:
        """One ``email``; native field names or ``custom_fields.<id>``."""
        problems = []
        if list(match) != ["email"]:
            problems.append(
                f"match: found {', '.join(match) or 'nothing'}; allowed: email (the universe's unique key)"
            )
        for column, target in mapping.items():
            if str(target) not in NATIVE_FIELDS and not _CUSTOM.fullmatch(str(target)):
                problems.append(
                    f"mapping.{column}: found {target!r}; allowed: {', '.join(NATIVE_FIELDS)} or "
                    "custom_fields.<id>"
                )
        return problems

    def discover_fields(self, transport: Transport) -> Mapping[str, FieldInfo] | None:
        """The native fields and the universe's custom fields (``GET /data/contacts/fields``)."""
        response = transport.send(PreparedRequest("GET", "/data/contacts/fields"))
        if response.status != 200:
            raise self.request_error(response, "reading the custom fields (GET /data/contacts/fields)")
        body = response.json()
        items = body.get("elements") if isinstance(body, dict) else body
        fields = {name: FieldInfo(name) for name in NATIVE_FIELDS}
        for item in items if isinstance(items, list) else []:
            if isinstance(item, dict) and item.get("id") is not None:
                key = f"custom_fields.{item['id']}"
                fields[key] = FieldInfo(key, label=item.get("name"), type=item.get("data_type"))
        return fields

    def validate_fields(
        self, match: Mapping[str, str], mapping: Mapping[str, str], fields: Mapping[str, FieldInfo]
    ) -> list[str]:
        """Custom field ids the universe does not have (other names were checked without the network)."""
        custom = {c: t for c, t in mapping.items() if _CUSTOM.fullmatch(str(t))}
        return super().validate_fields(match, custom, fields)

    # -- requests --------------------------------------------------------------------------------------------------

    def record_input(self, operation: str, record: Record) -> Any:
        """The contact's body (create/edit), or its e-mail (delete)."""
        email = record.identifiers["email"]
        if operation == "delete":
            return email
        contact: dict[str, Any] = {"email": email}
        custom = []
        for name, value in record.fields.items():
            m = _CUSTOM.fullmatch(name)
            if m:
                custom.append({"id": int(m.group(1)), "value": splio_value(value)})
            else:
                contact[name] = splio_value(value)
        if custom:
            contact["custom_fields"] = custom
        return contact

    def build_request(
        self, operation: str, inputs: Sequence[Any], records: Sequence[Record]
    ) -> PreparedRequest:
        """The bulk create, the first edit, or the bulk delete of the batch."""
        if operation == "delete":
            return PreparedRequest("DELETE", "/data/contacts/bulk", json={"contacts": list(inputs)})
        if operation == "update":
            return self._edit(inputs[0])
        return PreparedRequest("POST", "/data/contacts/bulk", json={"contacts": list(inputs)})

    def _edit(self, contact: Mapping[str, Any]) -> PreparedRequest:
        body = {k: v for k, v in contact.items() if k != "email"}
        return PreparedRequest("PATCH", f"/data/contacts/{quote(str(contact['email']), safe='@')}", json=body)

    def deliver_batch(
        self, operation: str, records: Sequence[Record], inputs: Sequence[Any], transport: Transport
    ) -> BatchOutcome:
        """update: one edit per contact; upsert: the bulk create, then edits of the existing ones.

        The edits go one call each (up to 1,000 a batch, 100 s at 10 calls a second): each verdict, and the
        contacts the bulk create made, are handed to the engine as they come (``acknowledge_early``), so a
        sync killed mid-batch does not send again what Splio already acknowledged."""
        if operation == "update":
            edits = []
            for r, i in zip(records, inputs, strict=True):
                edits.append(self._edit_one(r, i, transport))
                self.acknowledge_early(edits[-1:])
            return BatchOutcome(edits)
        response = transport.send(self.build_request(operation, inputs, records))
        outcome = self.parse_response(operation, records, response)
        if operation != "upsert" or outcome.split:
            return outcome
        self.acknowledge_early(outcome.results)  # created (pending: existing, edited below)
        existing = {r.key for r in outcome.results if r.status == "pending"}
        by_key = {r.key: (r, i) for r, i in zip(records, inputs, strict=True)}
        results = []
        for result in outcome.results:
            if result.key in existing:
                record, contact = by_key[result.key]
                results.append(self._edit_one(record, contact, transport, create_missing=False))
                self.acknowledge_early(results[-1:])
            else:
                results.append(result)
        return BatchOutcome(results)

    def _edit_one(
        self,
        record: Record,
        contact: Mapping[str, Any],
        transport: Transport,
        *,
        create_missing: bool = False,
    ) -> RecordResult:
        response = transport.send(self._edit(contact))
        if response.status in (200, 201, 204) or (response.status == 404 and not create_missing):
            return RecordResult(record.key, "accepted")
        if response.status in (400, 422):
            return RecordResult(record.key, "rejected", self.error_message(response), _code(response))
        raise self.request_error(response, "PATCH /data/contacts/{email}")

    def parse_response(
        self, operation: str, records: Sequence[Record], response: HttpResponse
    ) -> BatchOutcome:
        """The items of a bulk answer mapped to records (``pending`` marks contacts that already exist)."""
        body = response.json()
        if response.status in (200, 201, 204, 207) or (response.status == 400 and _items(body)):
            items = _items(body)
            if not items:
                return BatchOutcome.accept_all(records)
            by_id = {str(i.get("contact_id") or "").lower(): i for i in items if isinstance(i, dict)}
            results = []
            for record in records:
                item = by_id.get(record.identifiers["email"])
                code = int(item.get("code") or 0) if item else 0
                description = self.redact(str(item.get("description") or "")) if item else ""
                if item is None or 200 <= code < 300:
                    results.append(RecordResult(record.key, "accepted"))
                elif operation == "delete" and "not found" in description.lower():
                    results.append(RecordResult(record.key, "accepted"))  # not in the universe: gone already
                elif operation in ("insert", "upsert") and "already exists" in description.lower():
                    status = "pending" if operation == "upsert" else "accepted"
                    results.append(RecordResult(record.key, status))
                else:
                    results.append(
                        RecordResult(record.key, "rejected", description or f"code {code}", f"code {code}")
                    )
            return BatchOutcome(results)
        if response.status == 400:
            named = _named_contacts(body)
            if named and len(records) > 1:
                bad = {records[n].key for n in named if n < len(records)}
                reason = self.error_message(response)
                return BatchOutcome(
                    [
                        RecordResult(r.key, "rejected", reason, _code(response))
                        if r.key in bad
                        else RecordResult(r.key, "retry")
                        for r in records
                    ]
                )
            if len(records) > 1:
                return BatchOutcome(split=True)
            return BatchOutcome.reject_all(records, self.error_message(response), _code(response))
        raise self.request_error(response, f"{'deleting' if operation == 'delete' else 'sending'} contacts")

    def error_message(self, response: HttpResponse) -> str:
        """Splio's ``error_description`` values (with their ``error_key``), secrets masked."""
        body = response.json()
        errors = body.get("errors") if isinstance(body, dict) else None
        if isinstance(errors, dict):
            errors = [errors]
        if isinstance(errors, list) and errors:
            parts = [
                f"{e.get('error_key')}: {e.get('error_description')}"
                if e.get("error_key")
                else str(e.get("error_description"))
                for e in errors
                if isinstance(e, dict)
            ]
            return self.redact("; ".join(parts))
        return super().error_message(response)

    # -- validate --connect --------------------------------------------------------------------------------------------

    def check_connection(self, transport: Transport) -> None:
        """Authenticates (the first call does) by reading the custom fields."""
        self.discover_fields(transport)


def _items(body: Any) -> list[Any]:
    items = body.get("items") if isinstance(body, dict) else None
    return items if isinstance(items, list) else []


def _named_contacts(body: Any) -> list[int]:
    errors = body.get("errors") if isinstance(body, dict) else None
    named = []
    for error in errors if isinstance(errors, list) else []:
        m = _ITEM.match(str((error or {}).get("error_key") or "")) if isinstance(error, dict) else None
        if m:
            named.append(int(m.group(1)))
    return named


def _code(response: HttpResponse) -> str:
    body = response.json()
    errors = body.get("errors") if isinstance(body, dict) else None
    if isinstance(errors, list) and errors and isinstance(errors[0], dict):
        return str(errors[0].get("error") or response.status)
    return str(response.status)


def splio_value(value: Any) -> Any:
    """A warehouse value as Splio reads it: text, numbers, ``YYYY-MM-DD HH:MM:SS`` dates; NULL is ``""``."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        return "" if math.isnan(value) or math.isinf(value) else value
    if isinstance(value, decimal.Decimal):
        if not value.is_finite():
            return ""
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(dt.timezone.utc).replace(tzinfo=None)
        return value.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, dt.date):
        return value.isoformat()
    return str(value)


register_platform("splio", SplioSettings, Splio)

"""Batch (batch.com): profile attributes and events of the Customer Engagement Platform (CEP), custom data of
the Mobile Engagement Platform (MEP).

A ``type: batch`` destination serves one ``service`` on one ``product`` (not ``platform``: the project file
reads that key itself):

- ``product: cep`` (default) -- the Profile API, ``POST {base_url}/profiles/update`` (``base_url`` default
  ``https://api.batch.com/2.11``, the version Batch's OpenAPI description defaults to). Every request carries
  ``Authorization: Bearer <REST API key>`` (``rest_api_key``, from ``{env: VAR}``) and ``X-Batch-Project:
  <project key>`` (``project_key``). The body is an array of at most 200 operations (Batch rejects the call
  otherwise), each ``{"identifiers": {"custom_id": ...}, "attributes": {...}}`` or ``{"identifiers": ...,
  "events": [{"name", "time", "attributes"}]}``. Batch creates a profile no one holds yet, so ``attributes``
  offers ``upsert`` only (no "existing profiles only", no "new profiles only"); ``mirror`` clears: a record
  leaving the segment gets every mapped attribute set to ``null``, which is how Batch deletes an attribute (the
  profile stays). Attribute values keep their type (string, integer, float, boolean, string arrays); a
  date or timestamp column is sent as ``date(<name>)`` with an ISO 8601 UTC value, as Batch types dates;
  ``url(<name>)`` and ``date(<name>)`` may also be written in the mapping. Native attributes are mapped by
  their ``$`` names: ``$email_address``, ``$phone_number`` (E.164), ``$language``, ``$region``,
  ``$timezone``.
- ``product: mep`` -- the Custom Data API of the MEP, ``POST https://api.batch.com/1.0/{app_api_key}/data/users``
  (the bulk route), at most 10,000 users per call, authenticated with ``X-Authorization: <REST API key>``.
  Each entry is ``{"id": <custom user id>, "update": {"overwrite": false, "values": {...}}}``: ``overwrite:
  false`` keeps the attributes the sync does not map; a ``null`` value removes one. The app's API key
  (``app_api_key``) is the key the app's SDK carries (public, in every install): it goes in the URL path and
  is not treated as a secret; the REST API key is. MEP offers ``attributes`` only (``upsert``; ``mirror``
  clears as above).

Consent: ``$email_marketing`` and ``$sms_marketing`` are never sent unless a segment column is mapped to them.
A true value (or ``subscribed``) sends ``subscribed``, false (or ``unsubscribed``) ``unsubscribed``; NULL
leaves the profile's consent as it is (never a default subscription, never an unsubscription by omission);
another value rejects the record with a message naming the field. A record leaving the segment under
``mirror`` never changes consent.

Events (``service: events``, CEP only): the destination's ``event_name`` (lower-case letters, digits and
``_``, at most 30 characters, as Batch requires of event names) names every event of the activation; a column
mapped to ``time`` is the event's time (ISO 8601; none: Batch stamps the reception time); the other mapped
columns are the event's ``attributes`` (typed as above; NULLs left out). Batch keeps every event it receives
(no de-duplication id in the Profile API), so the engine sends event batches one at a time, each journalled
before the next: a killed sync re-sends at most the one batch in flight.

Asynchronous processing: both APIs answer ``202`` once the payload is validated and apply it later (the Profile
API's ``{"code": "SUCCESS"}``; the Custom Data API's ``{"token": ...}``). Neither documents an endpoint to
follow a payload afterwards, so a ``202`` is the acknowledgement the sync records: nothing is polled. A Profile
API answer may list partial errors (``SUCCESS_WITH_PARTIAL_ERRORS``): Batch applied the operation without the
faulty part; the record named by the error is rejected with Batch's reason, and the next sync sends it again.
A ``400`` for the whole call (``MALFORMED_PARAMETER``, ``MISSING_PARAMETER``...) splits the batch until the
faulty record is alone, then rejects it with Batch's message.

Limits: ``/profiles/update`` 200 operations per call; the mass-update route documents 10,000 profile updates per
second as a token bucket without burst, and ``/profiles/update`` is the route for small batches: the SDK keeps to
10 calls per second (2,000 profiles per second) for CEP and 2 calls per second for MEP (at most 20,000 users
per second; Batch documents no MEP rate). A ``429`` means "wait a few seconds" (no ``Retry-After`` documented):
the transport backs off exponentially, and honours ``Retry-After`` if Batch sends one. ``401`` / ``403``
(``AUTHENTICATION_INVALID``, ``ACCESS_DENIED``) stop the sync at once.

Batch's documentation this adapter follows:

- Profile API update (route, 200 operations, ``X-Batch-Project``, bearer REST API key, identifiers,
  attributes, events, native and typed attributes, attribute deletion with null, 202 answers):
  https://doc.batch.com/developer/api/cep/profiles/update and https://doc.batch.com/api/profile/update
- Profile API mass update (10,000 operations, rate limit in profile updates per second, token bucket, 429,
  ``AUTHENTICATION_INVALID``): https://doc.batch.com/developer/api/cep/profiles/mass-update-profile
- Consent attributes (``$email_marketing`` / ``$sms_marketing``: ``subscribed`` / ``unsubscribed``), the same
  pages' example payloads.
- MEP Custom Data API (bulk route, 10,000 users, ``X-Authorization``, app API key in the path, processing not
  real-time): https://doc.batch.com/api/custom-data-api/set-update/
- Trigger events of the MEP (not used; for reference): https://doc.batch.com/developer/api/mep/trigger-events-api/track-events

Assumed where the pages could not be read in full (the reference pages render their response schemas from an
OpenAPI description the search copies did not include): the layout of partial errors (``{"code":
"SUCCESS_WITH_PARTIAL_ERRORS", "errors": [{"index": <operation index>, "attribute": ..., "reason": ...}]}``;
an error naming no index rejects nothing and is logged); the error body of a failed call (``{"error_code",
"error_message"}``, read with the usual ``message`` / ``error`` keys as fallbacks); the Custom Data API's entry
layout (``id`` + ``update`` with ``overwrite`` / ``values``) and its ``{"token"}`` answer; the event name rule;
the rates the SDK keeps to (``(assumed)`` in the README).
"""

from __future__ import annotations

import datetime as dt
import decimal
import logging
import math
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import pydantic
from pydantic import Field, SecretStr, ValidationInfo

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
)
from dinmo_dagster.platforms.identifiers import IdentifierError, IdentifierSpec

if TYPE_CHECKING:
    from dinmo_dagster.platforms.http import Transport

__all__ = ["Batch", "BatchSettings", "batch_value"]

logger = logging.getLogger("dinmo_dagster.platforms")

MAX_PROFILE_OPERATIONS = 200
MAX_MEP_USERS = 10_000
TIME_FIELD = "time"
CONSENT_FIELDS = ("$email_marketing", "$sms_marketing")
NATIVE_FIELDS = ("$email_address", "$phone_number", "$language", "$region", "$timezone", *CONSENT_FIELDS)
_EVENT_NAME = re.compile(r"[a-z0-9_]{1,30}")
_TYPED = re.compile(r"(date|url)\((.+)\)")
_MAX_CUSTOM_ID = 512


def _custom_id(value: str, _country: str | None) -> str:
    text = str(value).strip()
    if not text:
        raise IdentifierError("custom_id is empty")
    if len(text) > _MAX_CUSTOM_ID:
        raise IdentifierError(f"custom_id is longer than {_MAX_CUSTOM_ID} characters")
    return text


CUSTOM_ID = IdentifierSpec("id", normalize=_custom_id)


class BatchSettings(PlatformSettings):
    """Settings of a ``type: batch`` destination."""

    service: Literal["attributes", "events"] = Field(
        description="attributes (profile attributes / MEP custom data) or events (CEP profile events)."
    )
    product: Literal["cep", "mep"] = Field(
        default="cep", description="cep (Profile API, default) or mep (Custom Data API of the MEP)."
    )
    rest_api_key: SecretStr = Field(description="The REST API key (from {env: VAR}); secret.")
    project_key: str | None = Field(
        default=None, validate_default=True, description="cep: the project key (X-Batch-Project header)."
    )
    app_api_key: str | None = Field(
        default=None,
        validate_default=True,
        description="mep: the app's API key (Live or Dev), part of the URL.",
    )
    event_name: str | None = Field(
        default=None, validate_default=True, description="events: the name of the events sent."
    )

    @pydantic.field_validator("rest_api_key")
    @classmethod
    def _check_key(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value().strip():
            raise ValueError("is empty; allowed: Batch's REST API key")
        return value

    @pydantic.field_validator("project_key")
    @classmethod
    def _check_project(cls, value: str | None, info: ValidationInfo) -> str | None:
        platform = info.data.get("product", "cep")
        if platform == "cep" and not (value or "").strip():
            raise ValueError("is required with product: cep; allowed: the project key (project_...)")
        if platform == "mep" and value is not None:
            raise ValueError("found a project key; allowed only with product: cep")
        return value

    @pydantic.field_validator("app_api_key")
    @classmethod
    def _check_app_key(cls, value: str | None, info: ValidationInfo) -> str | None:
        platform = info.data.get("product", "cep")
        if platform == "mep" and not (value or "").strip():
            raise ValueError("is required with product: mep; allowed: the app's Live or Dev API key")
        if platform == "cep" and value is not None:
            raise ValueError("found an app API key; allowed only with product: mep")
        if value is not None and not re.fullmatch(r"[A-Za-z0-9_-]+", value):
            raise ValueError(f"found {value!r}; allowed: letters, digits, _ and -")
        return value

    @pydantic.field_validator("event_name")
    @classmethod
    def _check_event_name(cls, value: str | None, info: ValidationInfo) -> str | None:
        service = info.data.get("service")
        if service == "events" and info.data.get("product", "cep") == "mep":
            raise ValueError(
                "found service events with product: mep; allowed: product: cep (MEP takes custom data only)"
            )
        if service == "events" and value is None:
            raise ValueError("is required with service: events; allowed: the event's name")
        if service != "events" and value is not None:
            raise ValueError(f"found {value!r}; allowed only with service: events")
        if value is not None and not _EVENT_NAME.fullmatch(value):
            raise ValueError(f"found {value!r}; allowed: 1 to 30 lower-case letters, digits or _")
        return value


class Batch(Platform):
    """Batch: CEP profile attributes and events, MEP custom data."""

    name = "batch"
    settings_model = BatchSettings
    services: ClassVar[Mapping[str, tuple[str, ...]]] = {
        "attributes": ("upsert", "delete"),
        "events": ("track",),
    }
    default_base_url = "https://api.batch.com/2.11"
    limits = Limits(
        max_records_per_batch=MAX_PROFILE_OPERATIONS,
        max_bytes_per_batch=None,
        requests_per_window=10,
        window_seconds=1.0,
        max_concurrency=4,
    )

    settings: BatchSettings

    def __init__(self, settings: PlatformSettings, *, destination: str = "") -> None:
        super().__init__(settings, destination=destination)
        if self.settings.product == "mep":
            self.limits = Limits(
                max_records_per_batch=MAX_MEP_USERS,
                requests_per_window=2,
                window_seconds=1.0,
                max_concurrency=2,
            )

    @property
    def base_url(self) -> str:
        """The API root: ``base_url``, else ``https://api.batch.com/2.11`` (CEP) or ``https://api.batch.com/1.0``
        (MEP)."""
        if self.settings.base_url:
            return self.settings.base_url
        return "https://api.batch.com/1.0" if self.settings.product == "mep" else self.default_base_url

    def auth_headers(self) -> dict[str, str]:
        """CEP: bearer REST key and ``X-Batch-Project``; MEP: ``X-Authorization``."""
        key = self.settings.rest_api_key.get_secret_value()
        if self.settings.product == "mep":
            return {"X-Authorization": key}
        return {"Authorization": f"Bearer {key}", "X-Batch-Project": str(self.settings.project_key)}

    def target_label(self) -> str:
        """``Batch profiles`` or ``Batch MEP custom data``."""
        return "Batch MEP custom data" if self.settings.product == "mep" else "Batch profiles"

    def deduplicates(self, operation: str) -> bool:
        """Batch keeps every event it is sent: event batches go one at a time."""
        return operation != "track"

    def clears_fields_on(self, operation: str) -> bool:
        """A record leaving the segment (``mirror``) gets its mapped attributes set to null."""
        return operation == "delete"

    # -- identifiers and activation checks --------------------------------------------------------------

    def identifier_spec(self, name: str) -> IdentifierSpec | None:
        """``custom_id`` only: Batch's profiles (and MEP users) are keyed by the Custom ID."""
        return CUSTOM_ID if name == "custom_id" else None

    def validate_activation(self, match: Mapping[str, str], mapping: Mapping[str, str]) -> list[str]:
        """One ``custom_id``; mapped names Batch accepts."""
        problems = []
        if list(match) != ["custom_id"]:
            problems.append(
                f"match: found {', '.join(match) or 'nothing'}; allowed: custom_id (Batch keys profiles by Custom ID)"
            )
        events = self.settings.service == "events"
        for column, target in mapping.items():
            name = str(target)
            typed = _TYPED.fullmatch(name)
            bare = typed.group(2) if typed else name
            if events and name == TIME_FIELD:
                continue
            if name.startswith("$") and (events or name not in NATIVE_FIELDS):
                allowed = (
                    "an event attribute" if events else ", ".join(NATIVE_FIELDS) + " or a custom attribute"
                )
                problems.append(f"mapping.{column}: found {name!r}; allowed: {allowed}")
            elif not name.startswith("$") and not re.fullmatch(r"[A-Za-z0-9_.]{1,30}", bare):
                problems.append(
                    f"mapping.{column}: found {name!r}; allowed: 1 to 30 letters, digits, _ (or date(...), url(...))"
                )
            if self.settings.product == "mep" and name in CONSENT_FIELDS:
                problems.append(f"mapping.{column}: found {name!r}; allowed only with product: cep")
        return problems

    # -- requests -----------------------------------------------------------------------------------------

    def record_input(self, operation: str, record: Record) -> Any:
        """The record's operation (CEP) or custom data entry (MEP)."""
        custom_id = record.identifiers["custom_id"]
        if operation == "track":
            attributes = {
                _typed_name(name, value): batch_value(value)
                for name, value in record.fields.items()
                if name != TIME_FIELD and value is not None
            }
            event: dict[str, Any] = {"name": self.settings.event_name}
            when = record.fields.get(TIME_FIELD)
            if when is not None:
                event["time"] = batch_time(when)
            if attributes:
                event["attributes"] = attributes
            return {"identifiers": {"custom_id": custom_id}, "events": [event]}
        values: dict[str, Any] = {}
        for name, value in record.fields.items():
            if name in CONSENT_FIELDS:
                if operation == "delete" or value is None:
                    continue  # consent changes only when the segment says so
                values[name] = consent_state(value)
            else:
                values[_typed_name(name, value)] = batch_value(value)
        if self.settings.product == "mep":
            return {"id": custom_id, "update": {"overwrite": False, "values": values}}
        return {"identifiers": {"custom_id": custom_id}, "attributes": values}

    def build_request(
        self, operation: str, inputs: Sequence[Any], records: Sequence[Record]
    ) -> PreparedRequest:
        """One call carrying the batch."""
        if self.settings.product == "mep":
            return PreparedRequest("POST", f"/{self.settings.app_api_key}/data/users", json=list(inputs))
        return PreparedRequest("POST", "/profiles/update", json=list(inputs))

    def deliver_batch(
        self, operation: str, records: Sequence[Record], inputs: Sequence[Any], transport: Transport
    ) -> BatchOutcome:
        """Rejects records whose consent value is not one Batch takes, then sends the others."""
        refused: dict[str, RecordResult] = {}
        for record in records:
            for name in CONSENT_FIELDS:
                value = record.fields.get(name)
                if operation != "delete" and value is not None and consent_state(value) is None:
                    refused[record.key] = RecordResult(
                        record.key,
                        "rejected",
                        f"{name}: found {value!r}; allowed: true/false, subscribed or unsubscribed",
                        f"invalid {name}",
                    )
        keep = [i for i, r in enumerate(records) if r.key not in refused]
        if not keep:
            return BatchOutcome(list(refused.values()))
        sent = [records[i] for i in keep]
        response = transport.send(self.build_request(operation, [inputs[i] for i in keep], sent))
        outcome = self.parse_response(operation, sent, response)
        outcome.results.extend(refused.values())
        return outcome

    def parse_response(
        self, operation: str, records: Sequence[Record], response: HttpResponse
    ) -> BatchOutcome:
        """202: accepted, except the records a partial error names; 400: split until the faulty one is alone."""
        body = response.json()
        if response.status in (200, 201, 202):
            errors = body.get("errors") if isinstance(body, dict) else None
            if not errors:
                return BatchOutcome.accept_all(records)
            rejected: dict[int, RecordResult] = {}
            for error in errors if isinstance(errors, list) else []:
                index = error.get("index") if isinstance(error, dict) else None
                reason = self.redact(
                    str((error or {}).get("reason") or (error or {}).get("message") or error)
                )
                if isinstance(index, int) and 0 <= index < len(records) and index not in rejected:
                    attribute = str(error.get("attribute") or "profile")
                    rejected[index] = RecordResult(
                        records[index].key, "rejected", reason, f"partial error {attribute}"
                    )
                else:
                    logger.warning("%s: a partial error names no operation: %s", self.label, reason)
            return BatchOutcome(
                [rejected.get(i) or RecordResult(r.key, "accepted") for i, r in enumerate(records)]
            )
        if response.status in (400, 413, 422):
            if len(records) > 1:
                return BatchOutcome(split=True)
            code = str(body.get("error_code") or "invalid") if isinstance(body, dict) else "invalid"
            return BatchOutcome.reject_all(records, self.error_message(response), code)
        raise self.request_error(response, f"sending to {self.target_label()}")

    def error_message(self, response: HttpResponse) -> str:
        """Batch's ``error_message`` (with its ``error_code``), secrets masked."""
        body = response.json()
        if isinstance(body, dict) and body.get("error_message"):
            code = body.get("error_code")
            text = f"{code}: {body['error_message']}" if code else str(body["error_message"])
            return self.redact(text)
        return super().error_message(response)

    # -- validate --connect --------------------------------------------------------------------------------

    def check_connection(self, transport: Transport) -> None:
        """Batch has no read-only endpoint for these keys: an empty payload is validated and changes nothing."""
        request = self.build_request("upsert", [], [])
        response = transport.send(request)
        if response.status not in (200, 201, 202, 400):
            raise self.request_error(response, f"checking the keys ({request.method} {request.path})")


def consent_state(value: Any) -> str | None:
    """``subscribed`` / ``unsubscribed`` from a consent column; None for anything else."""
    if isinstance(value, bool):
        return "subscribed" if value else "unsubscribed"
    if isinstance(value, str) and value.strip().lower() in ("subscribed", "unsubscribed"):
        return value.strip().lower()
    return None


def _typed_name(name: str, value: Any) -> str:
    """``date(name)`` for a date or timestamp value under a name that carries no type."""
    if isinstance(value, (dt.date, dt.datetime)) and not name.startswith("$") and not _TYPED.fullmatch(name):
        return f"date({name})"
    return name


def batch_time(value: Any) -> Any:
    """An ISO 8601 UTC time (``2024-05-01T10:00:00Z``) from a date or timestamp; text as written."""
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(dt.timezone.utc).replace(tzinfo=None)
        return value.isoformat(timespec="seconds") + "Z"
    if isinstance(value, dt.date):
        return dt.datetime.combine(value, dt.time()).isoformat(timespec="seconds") + "Z"
    return str(value).strip()


def batch_value(value: Any) -> Any:
    """A warehouse value as Batch stores it with its type; None (null) deletes the attribute."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else value
    if isinstance(value, decimal.Decimal):
        if not value.is_finite():
            return None
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, (dt.datetime, dt.date)):
        return batch_time(value)
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value if v is not None]
    return str(value)


register_platform("batch", BatchSettings, Batch)

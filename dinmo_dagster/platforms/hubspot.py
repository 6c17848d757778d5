"""HubSpot: the ``attributes`` service for CRM objects (contacts, companies, deals, custom objects).

Operations and the endpoints they use (``{t}`` is the object type; all batches hold at most 100
inputs, HubSpot's limit for its CRM batch endpoints):

- ``upsert``: ``POST /crm/v3/objects/{t}/batch/upsert``, each input ``{idProperty, id, properties,
  objectWriteTraceId}``: creates the records whose unique property value is new and updates the
  others. ``match`` names that property (``{email: email}`` for contacts, ``{domain: domain}`` for
  companies, any property with unique values for custom objects).
- ``update``: ``POST /crm/v3/objects/{t}/batch/update`` with the same inputs; a record HubSpot does
  not hold (``OBJECT_NOT_FOUND``) is left alone and counts as done, as ``update`` promises.
- ``insert``: ``POST /crm/v3/objects/{t}/batch/create``; a record that already exists
  (``CONFLICT``) is left alone and counts as done.
- ``delete`` (the removals of ``sync_mode: mirror``): ``POST /crm/v3/objects/{t}/batch/read`` by
  the unique property to find HubSpot's record ids, then ``POST /crm/v3/objects/{t}/batch/archive``
  (HubSpot archives by record id only). Records HubSpot does not hold count as done. With
  ``match: {hs_object_id: column}`` the column holds HubSpot's ids and the read is skipped.

Every input carries ``objectWriteTraceId`` = the record's key, which turns on HubSpot's multi-status
answers: ``207`` with ``results`` and ``errors[]`` whose ``context.objectWriteTraceId`` names the
failed inputs, so one invalid value rejects one record while the others land. A batch HubSpot
refuses whole (``400 VALIDATION_ERROR`` without per-input errors) is split in halves by the engine
until the bad record is alone and rejected with HubSpot's message.

Values go as HubSpot's property strings: numbers and decimals as text, booleans ``true``/``false``,
dates ``YYYY-MM-DD``, timestamps ISO 8601 UTC with milliseconds, lists ``a;b`` (multiple
checkboxes). A NULL is sent as ``""``, which clears the property, unless the activation says
``null_values: skip``.

Rate limits: private apps get 100 requests per 10 s on Free/Starter accounts and 190 on
Professional/Enterprise, plus a daily limit per account. The limiter starts at 100 per 10 s and
follows ``X-HubSpot-RateLimit-Max`` / ``-Interval-Milliseconds`` up to 190 (or up to the
``rate_limit`` setting); ``X-HubSpot-RateLimit-Daily-Remaining: 0`` or a ``429`` whose
``policyName`` is ``DAILY`` ends the sync early as a partial success (the rest goes with the next
sync); other 429s (``TEN_SECONDLY_ROLLING``) are waited out, honouring ``Retry-After`` when present.
``423 Locked`` waits at least 2 s, ``477`` (account migration) waits its ``Retry-After``, 5xx back
off; ``401``/``403`` (``INVALID_AUTHENTICATION``, ``MISSING_SCOPES``) stop the sync at once with
HubSpot's message and the missing scopes, never the token.

Authentication: a private app's access token, sent as ``Authorization: Bearer <token>``. Scopes:
``crm.objects.<object>.read`` and ``.write`` (``crm.objects.custom.*`` for custom objects), plus
``crm.schemas.<object>.read`` for ``validate --connect``.

Client: plain ``requests`` through the SDK's transport. HubSpot's official ``hubspot-api-client``
is a large generated package (every HubSpot API, ``urllib3`` retries of its own) whose models drop
the fields the engine needs (``objectWriteTraceId`` on errors); the few JSON endpoints here are
simpler to call directly, and ``base_url`` points them at a proxy or a local fake.

HubSpot's documentation this adapter follows:

- batch upsert by unique property (inputs, ``idProperty``, ``objectWriteTraceId``, 207 body):
  https://developers.hubspot.com/docs/api-reference/latest/crm/objects/custom-objects/batch/upsert-custom-objects
  https://developers.hubspot.com/docs/api-reference/legacy/crm/objects/contacts/batch/upsert-contacts
- batch update, create, read by ``idProperty``:
  https://developers.hubspot.com/docs/api-reference/2026-03/crm/objects/custom-objects/batch/update-custom-objects
  https://developers.hubspot.com/docs/api-reference/latest/crm/objects/objects/batch/get-objects
- batch archive by record id (``204``, no body):
  https://developers.hubspot.com/docs/api-reference/latest/crm/objects/custom-objects/batch/delete-custom-objects
- contacts (``email`` is the unique identifier used to upsert contacts; multi-status errors):
  https://developers.hubspot.com/docs/api-reference/latest/crm/objects/contacts/guide
- error format (``status``, ``message``, ``category``, ``errors[]`` with ``context``), 207
  multi-status with ``objectWriteTraceId``, 401/403/423/429/477/5xx:
  https://developers.hubspot.com/docs/api-reference/error-handling
- rate limits per tier, the 429 body with ``policyName``, ``X-HubSpot-RateLimit-*`` headers:
  https://developers.hubspot.com/docs/developer-tooling/platform/usage-guidelines
  https://developers.hubspot.com/changelog/increasing-our-api-limits
- properties of an object (``hasUniqueValue``, ``modificationMetadata.readOnlyValue``):
  https://developers.hubspot.com/docs/api-reference/legacy/crm/properties/get-properties
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
import math
import re
from collections.abc import Collection, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import pydantic
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
    ResponseKind,
    Signal,
    parse_retry_after,
)
from dinmo_dagster.platforms.identifiers import IdentifierSpec

if TYPE_CHECKING:
    from dinmo_dagster.platforms.http import Transport
    from dinmo_dagster.platforms.ratelimit import RateLimiter

__all__ = ["HubSpot", "HubSpotSettings"]

STANDARD_OBJECTS = ("contacts", "companies", "deals")
# Custom objects: the objectTypeId (2-123456) or the fully qualified name (p123456_cars).
_CUSTOM_OBJECT = re.compile(r"2-\d+|p\d+_[a-z0-9_]+")
_PROPERTY_NAME = re.compile(r"[a-z0-9_]+")
_API_VERSION = re.compile(r"v3|\d{4}-\d{2}")
# HubSpot's record id, usable as match identifier for update and delete.
RECORD_ID = "hs_object_id"
# Detail HubSpot embeds in its validation messages: "Property values were not valid: [{...}]".
_PROPERTY_ERRORS = re.compile(r"Property values were not valid: (\[.*\])", re.DOTALL)


class HubSpotSettings(PlatformSettings):
    """Settings of a ``type: hubspot`` destination."""

    service: Literal["attributes"] = Field(default="attributes", description="HubSpot offers attributes.")
    object: str = Field(
        description="contacts, companies, deals, or a custom object (objectTypeId 2-123456 or p123456_name)."
    )
    access_token: SecretStr = Field(description="A private app's access token (from {env: VAR}); secret.")
    api_version: str = Field(
        default="v3", description="v3 (/crm/v3/objects/...) or a dated version such as 2026-03."
    )

    @pydantic.field_validator("object")
    @classmethod
    def _check_object(cls, value: str) -> str:
        if value in STANDARD_OBJECTS or _CUSTOM_OBJECT.fullmatch(value):
            return value
        raise ValueError(
            f"found {value!r}; allowed: {', '.join(STANDARD_OBJECTS)}, or a custom object's "
            "objectTypeId (2-123456) or fully qualified name (p123456_name)"
        )

    @pydantic.field_validator("api_version")
    @classmethod
    def _check_version(cls, value: str) -> str:
        if _API_VERSION.fullmatch(value):
            return value
        raise ValueError(f"found {value!r}; allowed: v3 or a dated version such as 2026-03")

    @pydantic.field_validator("access_token")
    @classmethod
    def _check_token(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value().strip():
            raise ValueError("is empty; allowed: a private app access token")
        return value


class HubSpot(Platform):
    """HubSpot CRM objects: upsert, update, insert and delete (archive) records."""

    name = "hubspot"
    settings_model = HubSpotSettings
    services: ClassVar[Mapping[str, tuple[str, ...]]] = {
        "attributes": ("upsert", "update", "insert", "delete")
    }
    default_base_url = "https://api.hubapi.com"
    limits = Limits(
        max_records_per_batch=100,
        requests_per_window=100,
        max_requests_per_window=190,
        window_seconds=10.0,
        max_concurrency=4,
    )

    settings: HubSpotSettings

    # -- paths ----------------------------------------------------------------------------------------

    def _objects_path(self, suffix: str = "") -> str:
        version, obj = self.settings.api_version, self.settings.object
        root = f"/crm/v3/objects/{obj}" if version == "v3" else f"/crm/objects/{version}/{obj}"
        return root + suffix

    def _properties_path(self) -> str:
        version, obj = self.settings.api_version, self.settings.object
        return f"/crm/v3/properties/{obj}" if version == "v3" else f"/crm/properties/{version}/{obj}"

    def auth_headers(self) -> dict[str, str]:
        """Bearer authentication with the private app token."""
        return {"Authorization": f"Bearer {self.settings.access_token.get_secret_value()}"}

    # -- identifiers ------------------------------------------------------------------------------------

    def identifier_spec(self, name: str) -> IdentifierSpec | None:
        """Any property name: HubSpot matches records by one unique property, sent as is."""
        return IdentifierSpec("id") if _PROPERTY_NAME.fullmatch(name) else None

    def validate_activation(self, match: Mapping[str, str], mapping: Mapping[str, str]) -> list[str]:
        """One match property (HubSpot's ``idProperty``), valid property names in the mapping."""
        problems = super().validate_activation(match, mapping)
        if len(match) > 1:
            problems.append(
                f"match: found {len(match)} identifiers ({', '.join(match)}); allowed: one unique "
                "property (HubSpot matches records by a single idProperty)"
            )
        for column, target in mapping.items():
            if not _PROPERTY_NAME.fullmatch(str(target)):
                problems.append(
                    f"mapping.{column}: found {target!r}; allowed: a HubSpot property's internal name "
                    "(lower-case letters, digits, _)"
                )
        return problems

    def operation_problems(self, operations: Collection[str], match: Mapping[str, str]) -> list[str]:
        """``upsert`` (and mirror, which upserts) cannot match by ``hs_object_id``: HubSpot's batch upsert
        creates the records it does not hold from a unique property's value, and a record id creates nothing
        (:meth:`record_input` refuses it when the sync sends)."""
        if "upsert" in operations and RECORD_ID in match:
            return [
                (
                    "upsert needs a unique property HubSpot can create records with (such as email) in "
                    f"match, not {RECORD_ID}; allowed with match {RECORD_ID}: update, insert"
                )
            ]
        return []

    @staticmethod
    def _match(record: Record) -> tuple[str, str]:
        return next(iter(record.identifiers.items()))

    # -- requests -------------------------------------------------------------------------------------

    def record_input(self, operation: str, record: Record) -> dict[str, Any]:
        """One input of HubSpot's batch body for ``record``."""
        prop, value = self._match(record)
        properties = {name: hubspot_value(v) for name, v in record.fields.items()}
        if operation == "delete":
            return {"id": value}
        if operation == "insert":
            if prop != RECORD_ID:
                properties.setdefault(prop, value)
            return {"properties": properties, "objectWriteTraceId": record.key}
        if prop == RECORD_ID:
            if operation == "upsert":
                raise self.config_error(
                    f"match.{RECORD_ID}: upsert needs a unique property HubSpot can create records with "
                    "(such as email); hs_object_id works for update and delete only"
                )
            return {"id": value, "properties": properties, "objectWriteTraceId": record.key}
        return {"idProperty": prop, "id": value, "properties": properties, "objectWriteTraceId": record.key}

    def build_request(
        self, operation: str, inputs: Sequence[Any], records: Sequence[Record]
    ) -> PreparedRequest:
        """The batch request of ``operation`` (for ``delete``, the archive of known record ids)."""
        endpoint = {"upsert": "upsert", "update": "update", "insert": "create", "delete": "archive"}[
            operation
        ]
        return PreparedRequest(
            "POST", self._objects_path(f"/batch/{endpoint}"), json={"inputs": list(inputs)}
        )

    def _read_request(self, prop: str, values: Sequence[str]) -> PreparedRequest:
        return PreparedRequest(
            "POST",
            self._objects_path("/batch/read"),
            json={"idProperty": prop, "inputs": [{"id": v} for v in values], "properties": [prop]},
        )

    def preview_request(
        self, operation: str, inputs: Sequence[Any], records: Sequence[Record]
    ) -> PreparedRequest:
        """For ``delete``, the first request is the read that finds HubSpot's record ids."""
        if operation == "delete" and records and self._match(records[0])[0] != RECORD_ID:
            return self._read_request(self._match(records[0])[0], [i["id"] for i in inputs])
        return self.build_request(operation, inputs, records)

    def deliver_batch(
        self, operation: str, records: Sequence[Record], inputs: Sequence[Any], transport: Transport
    ) -> BatchOutcome:
        """Send one batch; ``delete`` reads the records' HubSpot ids first, then archives them."""
        if operation != "delete":
            return super().deliver_batch(operation, records, inputs, transport)
        prop = self._match(records[0])[0]
        if prop == RECORD_ID:
            ids = [str(i["id"]) for i in inputs]
        else:
            ids = self._find_ids(prop, [i["id"] for i in inputs], transport)
        if ids:
            archive = PreparedRequest(
                "POST", self._objects_path("/batch/archive"), json={"inputs": [{"id": i} for i in ids]}
            )
            response = transport.send(archive)
            if response.status not in (200, 204):
                raise self._failure(response, "archiving records")
        # Archived now, or not in HubSpot at all: either way the record is no longer there.
        return BatchOutcome.accept_all(records)

    def _find_ids(self, prop: str, values: Sequence[str], transport: Transport) -> list[str]:
        response = transport.send(self._read_request(prop, values))
        if response.status not in (200, 207):
            raise self._failure(response, f"reading records by {prop}")
        body = response.json() or {}
        wanted = {v.lower() for v in values}
        ids = []
        for result in body.get("results") or []:
            found = str((result.get("properties") or {}).get(prop, "")).lower()
            if result.get("id") and (found in wanted or not found):
                ids.append(str(result["id"]))
        return list(dict.fromkeys(ids))

    # -- responses ------------------------------------------------------------------------------------

    def parse_response(
        self, operation: str, records: Sequence[Record], response: HttpResponse
    ) -> BatchOutcome:
        """Per-record verdicts from a batch answer (200/201 all done, 207 some failed)."""
        body = response.json()
        body = body if isinstance(body, dict) else {}
        if response.status in (200, 201) and not body.get("errors"):
            return BatchOutcome.accept_all(records)
        if response.status in (200, 201, 207):
            return self._multi_status(operation, records, body)
        category = body.get("category")
        if response.status in (400, 409) and category in (None, "VALIDATION_ERROR", "CONFLICT"):
            # HubSpot refused the batch whole without naming the input: isolate it by halves.
            if len(records) > 1:
                return BatchOutcome(split=True)
            return BatchOutcome([self._verdict(operation, records[0], body)])
        raise self._failure(response, f"{operation} of {self.settings.object}")

    def _multi_status(
        self, operation: str, records: Sequence[Record], body: Mapping[str, Any]
    ) -> BatchOutcome:
        by_trace: dict[str, Mapping[str, Any]] = {}
        by_value: dict[str, Mapping[str, Any]] = {}
        unattributed = False
        for error in body.get("errors") or []:
            context = error.get("context") or {}
            traces = [str(t) for t in context.get("objectWriteTraceId") or []]
            for trace in traces:
                by_trace[trace] = error
            if not traces:
                values = [str(v).lower() for v in context.get("ids") or []]
                for value in values:
                    by_value[value] = error
                unattributed = unattributed or not values
        done_traces = {
            str(r["objectWriteTraceId"]) for r in body.get("results") or [] if r.get("objectWriteTraceId")
        }
        results = []
        for record in records:
            error = by_trace.get(record.key) or by_value.get(self._match(record)[1].lower())
            if error is not None:
                results.append(self._verdict(operation, record, error))
            elif record.key in done_traces or (not done_traces and not unattributed):
                results.append(RecordResult(record.key, "accepted"))
            else:
                # An error named no input and no result names this one: send it again.
                results.append(RecordResult(record.key, "retry"))
        return BatchOutcome(results)

    def _verdict(self, operation: str, record: Record, error: Mapping[str, Any]) -> RecordResult:
        category = str(error.get("category") or "ERROR")
        if operation == "update" and category == "OBJECT_NOT_FOUND":
            return RecordResult(record.key, "accepted")  # update touches existing records only
        if operation == "insert" and category == "CONFLICT":
            return RecordResult(record.key, "accepted")  # insert leaves existing records alone
        if category == "RATE_LIMITS":
            return RecordResult(record.key, "retry")
        message = self.redact(str(error.get("message") or category))
        return RecordResult(record.key, "rejected", f"{category}: {message}", reason_code(error))

    def _failure(self, response: HttpResponse, what: str) -> Exception:
        if response.status == 404:
            return self.request_error(response, f"{what} (object type {self.settings.object!r})")
        return self.request_error(response, what)

    def error_message(self, response: HttpResponse) -> str:
        """HubSpot's ``category: message``, with the missing scopes of a 403."""
        body = response.json()
        if not isinstance(body, dict) or not body.get("message"):
            return super().error_message(response)
        text = str(body["message"])
        if body.get("category"):
            text = f"{body['category']}: {text}"
        scopes = [
            scope
            for detail in body.get("errors") or []
            for key, values in (detail.get("context") or {}).items()
            if "scopes" in key.lower()
            for scope in values
        ]
        if scopes:
            text += f" (required scopes: {', '.join(scopes)})"
        return self.redact(text)

    def classify(self, response: HttpResponse) -> Signal:
        """HubSpot's codes: DAILY 429 is a used-up quota, 423 waits 2 s, 477 its Retry-After."""
        status = response.status
        if status == 429:
            body = response.json()
            policy = str(body.get("policyName", "")) if isinstance(body, dict) else ""
            if policy.upper() == "DAILY":
                return Signal(
                    ResponseKind.QUOTA,
                    message=f"HubSpot's daily API limit is used up (policy DAILY): {self.error_message(response)}",
                )
        if status == 423:
            wait = max(2.0, parse_retry_after(response.header("Retry-After")) or 0.0)
            return Signal(ResponseKind.TRANSIENT, wait, self.error_message(response))
        if status == 477:
            return Signal(
                ResponseKind.TRANSIENT,
                parse_retry_after(response.header("Retry-After")),
                self.error_message(response),
            )
        if status in (525, 526):  # SSL trouble: HubSpot says to contact support, retrying won't help
            return Signal(ResponseKind.OK)
        return super().classify(response)

    def observe(self, response: HttpResponse, limiter: RateLimiter) -> str | None:
        """Follow ``X-HubSpot-RateLimit-Max`` per ``-Interval-Milliseconds``; stop at
        ``X-HubSpot-RateLimit-Daily-Remaining: 0``."""
        maximum = _int(response.header("X-HubSpot-RateLimit-Max"))
        interval = _int(response.header("X-HubSpot-RateLimit-Interval-Milliseconds"))
        if (
            maximum
            and interval
            and (maximum, interval / 1000) != (limiter.max_requests, limiter.window_seconds)
        ):
            limiter.adopt(maximum, interval / 1000)
        if _int(response.header("X-HubSpot-RateLimit-Daily-Remaining")) == 0 and response.status < 400:
            daily = response.header("X-HubSpot-RateLimit-Daily") or "?"
            return f"HubSpot's daily API limit ({daily} requests) is used up (X-HubSpot-RateLimit-Daily-Remaining: 0)"
        return None

    # -- validate --connect ---------------------------------------------------------------------------

    def check_connection(self, transport: Transport) -> None:
        """Read one record of the object: checks the token, its read scope and the object type."""
        response = transport.send(PreparedRequest("GET", self._objects_path(), params={"limit": "1"}))
        if response.status != 200:
            raise self._failure(response, f"reading {self.settings.object}")

    def discover_fields(self, transport: Transport) -> dict[str, FieldInfo]:
        """The object's properties (``GET /crm/v3/properties/{t}``)."""
        response = transport.send(PreparedRequest("GET", self._properties_path()))
        if response.status != 200:
            raise self._failure(response, f"reading the properties of {self.settings.object}")
        fields = {}
        for prop in (response.json() or {}).get("results") or []:
            meta = prop.get("modificationMetadata") or {}
            fields[prop["name"]] = FieldInfo(
                name=prop["name"],
                label=prop.get("label"),
                type=prop.get("type"),
                unique=bool(prop.get("hasUniqueValue")),
                read_only=bool(meta.get("readOnlyValue") or prop.get("calculated")),
            )
        return fields

    def target_label(self) -> str:
        """``HubSpot contacts``."""
        return f"HubSpot {self.settings.object}"

    def validate_fields(
        self, match: Mapping[str, str], mapping: Mapping[str, str], fields: Mapping[str, FieldInfo]
    ) -> list[str]:
        """Mapped properties exist and are writable; the match property exists and is unique."""
        problems = super().validate_fields(match, mapping, fields)
        obj = self.settings.object
        for prop in match:
            if prop == RECORD_ID or (obj == "contacts" and prop == "email"):
                continue  # HubSpot's own unique identifiers
            info = fields.get(prop)
            if info is None:
                problems.append(f"match.{prop}: no property {prop!r} in HubSpot {obj}")
            elif not info.unique:
                problems.append(
                    f"match.{prop}: property {prop!r} of HubSpot {obj} does not have unique values; "
                    "allowed: a property with hasUniqueValue (or email for contacts)"
                )
        return problems


def hubspot_value(value: Any) -> str:
    """A warehouse value as HubSpot's property string (``""`` clears the property)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "" if math.isnan(value) or math.isinf(value) else repr(value)
    if isinstance(value, decimal.Decimal):
        return format(value, "f")
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(dt.timezone.utc).replace(tzinfo=None)
        return value.isoformat(timespec="milliseconds") + "Z"
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, (list, tuple)):
        return ";".join(hubspot_value(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value, ensure_ascii=False, default=str)
    return str(value)


def reason_code(error: Mapping[str, Any]) -> str:
    """A rejection's label without record values: ``VALIDATION_ERROR INVALID_EMAIL (email)``."""
    category = str(error.get("category") or "ERROR")
    details: list[str] = []
    match = _PROPERTY_ERRORS.search(str(error.get("message") or ""))
    if match:
        try:
            for item in json.loads(match.group(1)):
                details.append(f"{item.get('error', 'INVALID')} ({item.get('name', '?')})")
        except (ValueError, AttributeError):
            pass
    for detail in error.get("errors") or []:
        names = (detail.get("context") or {}).get("propertyName") or [detail.get("in")]
        if detail.get("code"):
            details.append(f"{detail['code']} ({', '.join(str(n) for n in names if n) or '?'})")
    return " ".join([category, *dict.fromkeys(details)])


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


register_platform("hubspot", HubSpotSettings, HubSpot)

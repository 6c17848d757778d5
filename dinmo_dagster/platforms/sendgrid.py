"""SendGrid (Twilio SendGrid Marketing Campaigns): contact fields and list membership, over the v3 API.

A ``type: sendgrid`` destination serves one ``service``. Every request carries ``Authorization: Bearer
<api key>`` (``api_key``, from ``{env: VAR}``); the API root is ``https://api.sendgrid.com/v3``
(``base_url`` overrides it). Contacts are named by ``email`` (trimmed, lower-cased -- SendGrid stores
addresses in lower case -- never hashed: SendGrid needs the address to send to it).

- ``attributes`` -- ``PUT /marketing/contacts`` ``{"contacts": [{"email", <reserved fields>,
  "custom_fields": {<field id>: value}}]}``, at most 30,000 contacts or 6 MB per request, is an upsert
  run as a job: SendGrid answers ``202 {"job_id"}`` and the job is polled (``GET
  /marketing/contacts/imports/{job_id}``, every ``poll_interval_seconds``) from ``pending`` to
  ``completed`` (no error), ``errored`` (some contacts failed) or ``failed`` (all failed, or the job could
  not run). For ``errored`` and ``failed`` the file at ``results.errors_url`` is read: the contacts it
  names are rejected with its message; the others of an ``errored`` job count as done, those of a
  ``failed`` job are sent again. Mapped names that are SendGrid reserved fields (``first_name``,
  ``last_name``, ``address_line_1``, ``address_line_2``, ``city``, ``state_province_region``,
  ``postal_code``, ``country``, ``phone_number``, ``whatsapp``, ``line``, ``facebook``, ``unique_name``)
  are sent as such; every other name is a custom field, sent under its id, read from ``GET
  /marketing/field_definitions`` (once per delivery; custom fields must exist before an upsert sets
  them). SendGrid leaves omitted fields as they were, so a NULL is left out and never erases a value.
  ``sync_mode: mirror`` deletes the contacts that left the segment: their ids are found with ``POST
  /marketing/contacts/search/emails`` (100 e-mails per request; an address SendGrid does not hold is
  done), then ``DELETE /marketing/contacts?ids=...`` (100 ids per request) answers a job, polled like an
  upsert. ``update`` and ``insert`` are not offered: the upsert has no "existing only" or "new only" mode.
- ``audiences`` -- a list (the activation's ``audience``: ``{name:}`` found through ``GET
  /marketing/lists`` or created with ``POST /marketing/lists``, or ``{id:}``). ``add`` upserts the
  contacts (e-mail only: their other fields are untouched) with ``list_ids: [<list>]`` on ``PUT
  /marketing/contacts``, a job polled as above; ``remove`` finds the contacts' ids (search by e-mails,
  as above) and sends ``DELETE /marketing/lists/{id}/contacts?contact_ids=...`` (100 ids per request),
  which answers ``202 {"job_id"}``: the contacts leave the list and stay in the account. SendGrid has no
  "replace the list": a full sync is remove + add.

Limits: every v3 answer carries ``X-RateLimit-Limit``, ``X-RateLimit-Remaining`` and ``X-RateLimit-Reset``
(a Unix time); past the limit SendGrid answers ``429`` with ``{"errors": [{"message": "too many
requests"}]}`` and the same headers. The limits differ per endpoint and are not published for the
Marketing Campaigns endpoints: the SDK keeps to 10 requests per second (assumed), follows
``X-RateLimit-Remaining: 0`` until the reset, and a ``429`` waits for ``X-RateLimit-Reset``. Errors are
``{"errors": [{"field", "message"}]}``; ``401`` / ``403`` stop the sync at once; a ``400`` on an upsert
whose ``field`` names a contact (``contacts[3].email``) rejects that contact and sends the others again,
one naming none splits the batch until the bad contact is alone.

``validate --connect`` reads ``GET /marketing/field_definitions`` (the key; every mapped name is a
writable reserved field or an existing custom field) or the audience's list.

SendGrid's documentation this adapter follows:

- add or update contacts (upsert, 30,000 contacts or 6 MB, 202 + ``job_id``, custom fields by id, omitted
  fields unchanged): https://www.twilio.com/docs/sendgrid/api-reference/contacts/add-or-update-a-contact
- import job status (pending, completed, errored, failed; ``results.errors_url``):
  https://www.twilio.com/docs/sendgrid/api-reference/contacts/import-contacts-status
- get contacts by e-mails (up to 100, 200 with per-address errors, 404 when none is found):
  https://www.twilio.com/docs/sendgrid/api-reference/contacts/get-contacts-by-emails
- delete contacts (``ids``, asynchronous job): https://www.twilio.com/docs/sendgrid/api-reference/contacts/delete-contacts
- remove contacts from a list (``contact_ids``, 202 + ``job_id``, contacts kept):
  https://www.twilio.com/docs/sendgrid/api-reference/lists/remove-contacts-from-a-list
- lists (get all, create): https://www.twilio.com/docs/sendgrid/api-reference/lists
- field definitions (custom and reserved fields, ``field_type``):
  https://www.twilio.com/docs/sendgrid/api-reference/custom-fields/get-all-field-definitions
- rate limits (``X-RateLimit-*`` headers, 429 body):
  https://www.twilio.com/docs/sendgrid/api-reference/how-to-use-the-sendgrid-v3-api/rate-limits
- authentication (Bearer API key): https://www.twilio.com/docs/sendgrid/api-reference/how-to-use-the-sendgrid-v3-api/authentication

Assumed where the pages are silent: the layout of the ``errors_url`` file (read as CSV whose ``email``
column names the contact and whose ``errors``/``error``/``message`` column gives the reason); that the
file is served to the same Bearer key; 100 ids per ``DELETE`` (URL length; SendGrid states no maximum);
10 requests per second; that the list removal job needs no polling (its page documents no status call).
"""

from __future__ import annotations

import csv
import datetime as dt
import decimal
import io
import logging
import math
import re
import threading
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import pydantic
from pydantic import Field, SecretStr, ValidationInfo

from dinmo_dagster.platforms import register_platform
from dinmo_dagster.platforms.audiences import AUDIENCE_MISSING, AudiencePlatform, AudienceTarget
from dinmo_dagster.platforms.base import (
    BatchOutcome,
    FieldInfo,
    HttpResponse,
    JobHandle,
    Limits,
    PlatformSettings,
    PreparedRequest,
    Record,
    RecordResult,
)
from dinmo_dagster.platforms.identifiers import IdentifierSpec, normalize_email

if TYPE_CHECKING:
    from dinmo_dagster.platforms.http import Transport

__all__ = ["SendGrid", "SendGridList", "SendGridSettings"]

logger = logging.getLogger("dinmo_dagster.platforms")

MAX_CONTACTS = 30_000
MAX_BYTES = 6_000_000
MAX_LOOKUP = 100  # e-mails per search, ids per DELETE
LISTS_PAGE = 1000
EMAIL = IdentifierSpec("email", normalize=lambda v, _c: normalize_email(v))
RESERVED = (
    "first_name", "last_name", "address_line_1", "address_line_2", "city", "state_province_region",
    "postal_code", "country", "phone_number", "whatsapp", "line", "facebook", "unique_name",
)  # fmt: skip
_CONTACT_INDEX = re.compile(r"contacts\[(\d+)\]")


class SendGridList(AudienceTarget):
    """A SendGrid list: ``{name: ...}`` (created when missing) or ``{id: ...}`` (a UUID)."""

    noun: ClassVar[str] = "list"
    numeric_id: ClassVar[bool] = False
    max_name_length: ClassVar[int | None] = 100


class SendGridSettings(PlatformSettings):
    """Settings of a ``type: sendgrid`` destination."""

    service: Literal["attributes", "audiences"] = Field(
        description="attributes (contact fields, upsert jobs) or audiences (list membership)."
    )
    api_key: SecretStr = Field(
        description="A SendGrid API key with Marketing access (from {env: VAR}); secret."
    )
    audience: SendGridList | None = Field(
        default=None, description="audiences: the list, from the activation."
    )
    poll_interval_seconds: float = Field(
        default=5.0, gt=0, le=300, description="Seconds between two polls of a contacts job."
    )

    @pydantic.field_validator("api_key")
    @classmethod
    def _check_key(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value().strip():
            raise ValueError("is empty; allowed: a SendGrid API key")
        return value

    @pydantic.field_validator("audience")
    @classmethod
    def _check_audience(cls, value: SendGridList | None, info: ValidationInfo) -> SendGridList | None:
        service = info.data.get("service")
        if value is not None and service not in (None, "audiences"):
            raise ValueError(f"found a list; allowed only with service: audiences (service is {service})")
        return value


class SendGrid(AudiencePlatform):
    """SendGrid Marketing Campaigns contacts: upsert and delete jobs, list membership."""

    name = "sendgrid"
    settings_model = SendGridSettings
    services: ClassVar[Mapping[str, tuple[str, ...]]] = {
        "attributes": ("upsert", "delete"),
        "audiences": ("add", "remove"),
    }
    default_base_url = "https://api.sendgrid.com/v3"
    limits = Limits(
        max_records_per_batch=MAX_CONTACTS,
        max_bytes_per_batch=MAX_BYTES,
        requests_per_window=10,
        window_seconds=1.0,
        max_concurrency=2,
    )
    audience_label = "SendGrid list"
    audience_noun = "list"
    audiences_taking = "SendGrid lists"

    settings: SendGridSettings

    def __init__(self, settings: PlatformSettings, *, destination: str = "") -> None:
        super().__init__(settings, destination=destination)
        self.poll_interval_seconds = self.settings.poll_interval_seconds  # type: ignore[misc]
        self._definitions: dict[str, FieldInfo] | None = None
        self._definitions_lock = threading.Lock()

    def auth_headers(self) -> dict[str, str]:
        """The API key as a bearer token."""
        return {
            "Authorization": f"Bearer {self.settings.api_key.get_secret_value()}",
            "Accept": "application/json",
        }

    def target_label(self) -> str:
        """``SendGrid contacts`` or ``SendGrid list 'VIP'``."""
        return super().target_label() if self.settings.service == "audiences" else "SendGrid contacts"

    def error_message(self, response: HttpResponse) -> str:
        """The messages of SendGrid's ``{"errors": [{"field", "message"}]}``."""
        body = response.json()
        errors = body.get("errors") if isinstance(body, dict) else None
        if isinstance(errors, dict):
            errors = [errors]
        if isinstance(errors, list) and errors:
            parts = [
                (f"{e.get('field')}: " if e.get("field") else "") + str(e.get("message"))
                for e in errors
                if isinstance(e, dict)
            ]
            return self.redact("; ".join(parts))
        return super().error_message(response)

    # -- identifiers and activation checks --------------------------------------------------------------

    def identifier_spec(self, name: str) -> IdentifierSpec | None:
        """``email`` only (never hashed)."""
        return EMAIL if name == "email" else None

    def validate_activation(self, match: Mapping[str, str], mapping: Mapping[str, str]) -> list[str]:
        """One ``email`` identifier; attributes need mapped fields, lists none."""
        problems = []
        if list(match) != ["email"]:
            problems.append(
                f"match: found {', '.join(match) or 'nothing'}; allowed: email (SendGrid names contacts by e-mail)"
            )
        if self.settings.service == "audiences":
            if mapping:
                problems.append(
                    f"mapping: found {', '.join(mapping)}; allowed: nothing (SendGrid lists take identifiers only)"
                )
            if self.audience_target is None:
                problems.append(AUDIENCE_MISSING)
        else:
            for column, target in mapping.items():
                if str(target).lower() == "email":
                    problems.append(
                        f"mapping.{column}: found {target!r}; allowed: a contact field (the e-mail goes in match)"
                    )
        return problems

    def discover_fields(self, transport: Transport) -> Mapping[str, FieldInfo] | None:
        """Writable reserved fields and custom fields (``GET /marketing/field_definitions``)."""
        if self.settings.service != "attributes":
            return None
        return self._field_definitions(transport)

    def _field_definitions(self, transport: Transport) -> dict[str, FieldInfo]:
        with self._definitions_lock:
            if self._definitions is None:
                response = transport.send(PreparedRequest("GET", "/marketing/field_definitions"))
                if response.status != 200:
                    raise self.request_error(response, "reading the field definitions")
                body = response.json() or {}
                fields: dict[str, FieldInfo] = {}
                for item in body.get("reserved_fields") or []:
                    name = str(item.get("name"))
                    writable = name in RESERVED and not item.get("read_only")
                    fields[name] = FieldInfo(name, label=item.get("id"), type=item.get("field_type"),
                                             read_only=not writable)  # fmt: skip
                for item in body.get("custom_fields") or []:
                    name = str(item.get("name"))
                    fields[name] = FieldInfo(name, label=str(item.get("id")), type=item.get("field_type"))
                self._definitions = fields
            return self._definitions

    # -- requests -------------------------------------------------------------------------------------------

    def record_input(self, operation: str, record: Record) -> Any:
        """The contact as the upsert takes it (custom fields still by name), or the e-mail of a removal."""
        email = record.identifiers["email"]
        if operation in ("delete", "remove"):
            return email
        if self.settings.service == "audiences":
            return {"email": email}
        contact: dict[str, Any] = {"email": email}
        for name, value in record.fields.items():
            if value is not None:
                contact[name] = sendgrid_value(value)
        return contact

    def _contact(self, row: Mapping[str, Any]) -> dict[str, Any]:
        """A contact with its custom fields under their ids (placeholders before they are read)."""
        contact: dict[str, Any] = {}
        custom: dict[str, Any] = {}
        for name, value in row.items():
            if name == "email" or name in RESERVED:
                contact[name] = value
                continue
            info = (self._definitions or {}).get(name)
            if self._definitions is not None and (info is None or info.read_only):
                raise self.config_error(
                    f"mapping: {name!r} is not a writable SendGrid field; allowed: a reserved field "
                    f"({', '.join(RESERVED)}) or a custom field of the account"
                )
            custom[info.label if info is not None and info.label else f"<id of custom field {name!r}>"] = (
                value
            )
        if custom:
            contact["custom_fields"] = custom
        return contact

    def _upsert_request(self, inputs: Sequence[Any]) -> PreparedRequest:
        body: dict[str, Any] = {"contacts": [self._contact(row) for row in inputs]}
        if self.settings.service == "audiences":
            body = {"list_ids": [self._audience_ref()], **body}
        return PreparedRequest("PUT", "/marketing/contacts", json=body)

    def build_request(
        self, operation: str, inputs: Sequence[Any], records: Sequence[Record]
    ) -> PreparedRequest:
        """The upsert of the batch, or the first search of a removal."""
        if operation in ("delete", "remove"):
            return PreparedRequest(
                "POST", "/marketing/contacts/search/emails", json={"emails": list(inputs[:MAX_LOOKUP])}
            )
        return self._upsert_request(inputs)

    def deliver_batch(
        self, operation: str, records: Sequence[Record], inputs: Sequence[Any], transport: Transport
    ) -> BatchOutcome:
        """Upsert (a job), or find the contacts' ids and delete them / remove them from the list."""
        if self.settings.service == "audiences":
            self._resolve_audience(transport)
        elif operation == "upsert":
            self._field_definitions(transport)
        if operation in ("delete", "remove"):
            return self._remove(operation, records, transport)
        response = transport.send(self._upsert_request(inputs))
        return self.parse_response(operation, records, response)

    def parse_response(
        self, operation: str, records: Sequence[Record], response: HttpResponse
    ) -> BatchOutcome:
        """An upsert's job, or its validation errors mapped to the contacts they name."""
        body = response.json() or {}
        if response.status in (200, 202) and body.get("job_id"):
            return BatchOutcome(job=JobHandle(str(body["job_id"])))
        if response.status != 400:
            raise self.request_error(response, f"upserting contacts into {self.target_label()}")
        named: dict[int, str] = {}
        for error in body.get("errors") or []:
            found = _CONTACT_INDEX.search(str(error.get("field") or ""))
            if found and int(found.group(1)) < len(records):
                named.setdefault(int(found.group(1)), self.redact(str(error.get("message"))))
        if not named:
            if len(records) > 1:
                return BatchOutcome(split=True)
            return BatchOutcome.reject_all(records, self.error_message(response), "invalid")
        return BatchOutcome([
            RecordResult(r.key, "rejected", f"SendGrid refused the contact: {named[i]}", "invalid")
            if i in named else RecordResult(r.key, "retry")
            for i, r in enumerate(records)
        ])  # fmt: skip

    def _remove(self, operation: str, records: Sequence[Record], transport: Transport) -> BatchOutcome:
        ids = self._contact_ids([r.identifiers["email"] for r in records], transport)
        jobs = []
        for start in range(0, len(ids), MAX_LOOKUP):
            chunk = ",".join(ids[start : start + MAX_LOOKUP])
            if operation == "delete":
                request = PreparedRequest("DELETE", "/marketing/contacts", params={"ids": chunk})
            else:
                request = PreparedRequest(
                    "DELETE",
                    f"/marketing/lists/{self._audience_ref()}/contacts",
                    params={"contact_ids": chunk},
                )
            response = transport.send(request)
            if response.status not in (200, 202):
                raise self.request_error(response, f"removing contacts from {self.target_label()}")
            job = (response.json() or {}).get("job_id")
            if operation == "delete" and job:
                jobs.append(str(job))
        if jobs:  # the deletion jobs are polled; a list removal answers a job with no status call
            return BatchOutcome(job=JobHandle(jobs[0], {"jobs": jobs}))
        return BatchOutcome.accept_all(records)

    def _contact_ids(self, emails: list[str], transport: Transport) -> list[str]:
        """The ids of the contacts SendGrid holds among ``emails`` (100 per search)."""
        ids: list[str] = []
        for start in range(0, len(emails), MAX_LOOKUP):
            response = transport.send(
                PreparedRequest(
                    "POST",
                    "/marketing/contacts/search/emails",
                    json={"emails": emails[start : start + MAX_LOOKUP]},
                )
            )
            if response.status == 404:
                continue  # none of them is a SendGrid contact
            if response.status != 200:
                raise self.request_error(response, "looking contacts up by e-mail")
            for found in ((response.json() or {}).get("result") or {}).values():
                contact = found.get("contact") if isinstance(found, dict) else None
                if isinstance(contact, dict) and contact.get("id"):
                    ids.append(str(contact["id"]))
        return ids

    def poll_job(
        self, operation: str, records: Sequence[Record], job: JobHandle, transport: Transport
    ) -> BatchOutcome:
        """The job's status (every job of a deletion); once done, its errors file mapped to contacts."""
        rejected: dict[str, RecordResult] = {}
        failed = False
        for job_id in job.data.get("jobs") or [job.id]:
            response = transport.send(PreparedRequest("GET", f"/marketing/contacts/imports/{job_id}"))
            if response.status != 200:
                raise self.request_error(response, f"reading contacts job {job_id}")
            body = response.json() or {}
            status = str(body.get("status") or "")
            if status == "pending":
                return BatchOutcome(job=job)
            if status in ("errored", "failed"):
                failed = failed or status == "failed"
                url = (body.get("results") or {}).get("errors_url")
                if isinstance(url, str) and url.startswith(("http://", "https://")):
                    rejected.update(self._errors_file(url, job_id, records, transport))
        if failed:
            logger.warning(
                "%s: a contacts job failed; its contacts not named in its errors are sent again", self.label
            )
        other = "retry" if failed else "accepted"
        return BatchOutcome([rejected.get(r.key) or RecordResult(r.key, other) for r in records])

    def _errors_file(
        self, url: str, job_id: str, records: Sequence[Record], transport: Transport
    ) -> dict[str, RecordResult]:
        answer = transport.send(PreparedRequest("GET", url))
        if answer.status != 200:
            raise self.request_error(answer, f"reading the errors of contacts job {job_id}")
        by_email = {r.identifiers["email"]: r.key for r in records}
        out: dict[str, RecordResult] = {}
        for row in csv.DictReader(io.StringIO(answer.text)):
            lower = {str(k).strip().lower(): v for k, v in row.items() if k is not None}
            key = by_email.get(str(lower.get("email") or "").strip().lower())
            if key is None:
                continue
            message = next(
                (lower[c] for c in ("errors", "error", "message") if lower.get(c)), "no reason given"
            )
            reason = self.redact(f"SendGrid's contacts job reported: {message}")
            out.setdefault(key, RecordResult(key, "rejected", reason, "contacts job error"))
        return out

    def preview_request(
        self, operation: str, inputs: Sequence[Any], records: Sequence[Record]
    ) -> PreparedRequest:
        """The first request (a removal's first is the search of its contacts' ids)."""
        return self.build_request(operation, inputs, records)

    # -- lists ------------------------------------------------------------------------------------------------

    def _find_by_name(self, name: str, transport: Transport) -> str | None:
        found: list[str] = []
        request = PreparedRequest("GET", "/marketing/lists", params={"page_size": str(LISTS_PAGE)})
        while True:
            response = transport.send(request)
            if response.status != 200:
                raise self.request_error(response, "reading the lists (GET /marketing/lists)")
            body = response.json() or {}
            found += [str(item["id"]) for item in body.get("result") or [] if item.get("name") == name]
            following = (body.get("_metadata") or {}).get("next")
            if not following:
                return self._the_one_named(name, found, "SendGrid lists")
            request = PreparedRequest("GET", str(following))

    def _create_named(self, target: AudienceTarget, transport: Transport) -> str:
        response = transport.send(PreparedRequest("POST", "/marketing/lists", json={"name": target.name}))
        body = response.json() or {}
        if response.status not in (200, 201) or not body.get("id"):
            raise self.request_error(response, f"creating the list {target.name!r} (POST /marketing/lists)")
        logger.info("%s: created SendGrid list %r (%s)", self.label, target.name, body["id"])
        return str(body["id"])

    # -- validate --connect -------------------------------------------------------------------------------------

    def check_connection(self, transport: Transport) -> None:
        """The key (the field definitions, or the lists) and the list given by id."""
        target = self.audience_target
        if self.settings.service == "attributes":
            self._field_definitions(transport)
        elif target is not None and target.id:
            self._read(transport, f"/marketing/lists/{target.id}", self.target_label())
        else:
            self._read(transport, "/marketing/lists", "the SendGrid lists")


def sendgrid_value(value: Any) -> Any:
    """A warehouse value as a contact field takes it: numbers as numbers, dates and times in ISO 8601."""
    if isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else value
    if isinstance(value, decimal.Decimal):
        if not value.is_finite():
            return None
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, (dt.datetime, dt.date)):
        return value.isoformat()
    return str(value)


register_platform("sendgrid", SendGridSettings, SendGrid)

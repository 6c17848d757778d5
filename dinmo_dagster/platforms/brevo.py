"""Brevo (formerly Sendinblue): contact attributes and list membership, over Brevo's REST API v3.

A ``type: brevo`` destination serves one ``service``. Every request carries the account's API key in
the ``api-key`` header (``api_key``, from ``{env: VAR}``); the API root is ``https://api.brevo.com/v3``
(``base_url`` overrides it). Contacts are named by ``email`` (trimmed, lower-cased, never hashed:
Brevo needs the address to send to it).

- ``attributes`` -- contact attributes through the contact import, an asynchronous process:
  ``POST /contacts/import`` with ``jsonBody`` (``[{"email", "attributes": {...}}]``) answers ``202
  {"processId"}``; the process is polled (``GET /processes/{processId}``, every
  ``poll_interval_seconds``) through ``queued`` and ``in_process`` to ``completed``. ``upsert`` imports
  with ``updateExistingContacts: true`` (Brevo creates the contacts it does not hold and updates the
  others), ``insert`` with ``false`` (existing contacts are left alone and count as done). A NULL
  mapped value is sent as ``""`` with ``emptyContactsAttributes: true``, which erases the attribute
  (``null_values: skip`` leaves it out, so nothing is erased). ``disableNotification: true``: no
  e-mail to the account owner per import. A completed import's ``info.import`` holds the URLs of CSV
  reports of the problematic rows (invalid e-mails, duplicates...): each report is read and the rows
  it names (its ``email`` column) are rejected with the report's name as the reason; the others count
  as done. Brevo ignores an attribute the account does not define, silently: ``validate --connect``
  reads ``GET /contacts/attributes`` and refuses a mapped name the account does not have. Attribute
  names are upper case in Brevo (``FIRSTNAME``); mapped names are sent as written. ``sync_mode:
  update`` and ``mirror`` are not offered: the import has no "existing contacts only" mode and no
  delete.
- ``audiences`` -- a static list (the activation's ``audience``: ``{name:}`` found through
  ``GET /contacts/lists`` (50 per page) or created with ``POST /contacts/lists`` in the ``folder_id``
  setting's folder, which creating a list needs, or ``{id:}``). ``POST
  /contacts/lists/{listId}/contacts/add`` / ``.../remove`` with ``{"emails": [...]}``, at most 150
  e-mails per request, answer ``{"contacts": {"success": [...], "failure": [...]}}``. An ``add`` whose
  e-mail fails is a contact Brevo does not hold (adding to a list creates none): it is rejected
  ("no Brevo contact"), and sent again by the next sync (an attributes activation creates it). A
  ``remove`` whose e-mail fails is not in the list: done. Brevo has no "replace the list": a full
  sync is remove + add.

Limits: every ``/v3/contacts`` endpoint allows 36,000 requests per hour and 10 per second (general
limits, every plan); the SDK keeps to 10 per second, and follows the ``x-sib-ratelimit-limit`` /
``-remaining`` / ``-reset`` headers Brevo sends (``remaining: 0`` holds every worker for ``reset``
seconds). A ``429`` carries those headers and no ``Retry-After``: the wait is ``x-sib-ratelimit-reset``.
An import's ``fileBody`` may hold 10 MB (Brevo recommends staying near 8 MB); the JSON body is
assumed to share that limit: imports carry at most 8 MB and 5,000 contacts (the count is this
adapter's choice: Brevo states none for ``jsonBody``).

Errors: ``{"code": "...", "message": "..."}``. ``401 unauthorized`` (``Key not found``) stops the sync
at once; ``403 permission_denied`` too (an IP not authorized, a key without the contacts permission);
a ``400`` on an import (``invalid_parameter``) splits the batch until the bad contact is alone, then
rejects it with Brevo's message; a ``404`` on a list names the list.

Brevo's documentation this adapter follows:

- authentication (``api-key`` header), base URL, JSON: https://developers.brevo.com/docs/how-it-works
- import contacts (``jsonBody``, ``updateExistingContacts``, ``emptyContactsAttributes``, unknown
  attributes ignored, ``processId``): https://developers.brevo.com/reference/import-contacts and
  https://developers.brevo.com/changelog/contact-import-endpoint-now-supports-json-body
- ``fileBody`` at most 10 MB (8 MB recommended): the import request model of Brevo's SDKs,
  https://github.com/sendinblue/APIv3-csharp-library (``RequestContactImport``)
- process details (status, CSV report URLs of problematic records): https://developers.brevo.com/reference/get-process
- add / remove contacts of a list (150 e-mails per request, ``success`` / ``failure``):
  https://developers.brevo.com/reference/add-contact-to-list and
  https://github.com/sendinblue/APIv3-csharp-library/blob/master/docs/AddContactToList.md
- lists (``GET /contacts/lists``, ``POST /contacts/lists`` with ``name`` and ``folderId``):
  https://developers.brevo.com/reference/get-lists and https://developers.brevo.com/reference/create-list
- contact attributes (``GET /contacts/attributes``: name, category, type):
  https://developers.brevo.com/reference/get-attributes
- rate limits (36,000 RPH / 10 RPS for ``/v3/contacts``): https://developers.brevo.com/docs/api-limits;
  headers: https://developers.brevo.com/docs/limit-headers

Assumed where the pages could not be read in full: the layout of ``info.import`` (read as any URL
values, each a CSV report with an ``email`` column); the process's terminal failure status
(``failed`` is read as "nothing applied": the batch is sent again); a JSON ``jsonBody`` limit equal to
the file one.
"""

from __future__ import annotations

import csv
import datetime as dt
import decimal
import io
import logging
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import pydantic
from pydantic import Field, SecretStr, ValidationInfo

from dinmo_dagster.platforms import register_platform
from dinmo_dagster.platforms.audiences import AudiencePlatform, AudienceTarget
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
    Signal,
)
from dinmo_dagster.platforms.identifiers import IdentifierSpec, normalize_email

if TYPE_CHECKING:
    from dinmo_dagster.platforms.http import Transport
    from dinmo_dagster.platforms.ratelimit import RateLimiter

__all__ = ["Brevo", "BrevoList", "BrevoSettings"]

logger = logging.getLogger("dinmo_dagster.platforms")

MAX_IMPORT_CONTACTS = 5_000
MAX_IMPORT_BYTES = 8 * 1024 * 1024
MAX_LIST_EMAILS = 150
LISTS_PAGE = 50
EMAIL = IdentifierSpec("email", normalize=lambda v, _c: normalize_email(v))


class BrevoList(AudienceTarget):
    """A Brevo list: ``{name: ...}`` (created in ``folder_id`` when missing) or ``{id: ...}``."""

    noun: ClassVar[str] = "list"


class BrevoSettings(PlatformSettings):
    """Settings of a ``type: brevo`` destination."""

    service: Literal["attributes", "audiences"] = Field(
        description="attributes (contact attributes, through imports) or audiences (list membership)."
    )
    api_key: SecretStr = Field(description="A Brevo API key (from {env: VAR}); secret.")
    audience: BrevoList | None = Field(default=None, description="audiences: the list, from the activation.")
    folder_id: int | None = Field(
        default=None,
        ge=1,
        validate_default=True,
        description="audiences: the folder a list given by name is created in.",
    )
    poll_interval_seconds: float = Field(
        default=5.0, gt=0, le=300, description="attributes: seconds between two polls of an import process."
    )

    @pydantic.field_validator("api_key")
    @classmethod
    def _check_key(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value().strip():
            raise ValueError("is empty; allowed: a Brevo API key")
        return value

    @pydantic.field_validator("audience")
    @classmethod
    def _check_audience(cls, value: BrevoList | None, info: ValidationInfo) -> BrevoList | None:
        service = info.data.get("service")
        if value is not None and service not in (None, "audiences"):
            raise ValueError(f"found a list; allowed only with service: audiences (service is {service})")
        return value

    @pydantic.field_validator("folder_id")
    @classmethod
    def _check_folder(cls, value: int | None, info: ValidationInfo) -> int | None:
        service = info.data.get("service")
        if value is not None and service not in (None, "audiences"):
            raise ValueError(f"found {value!r}; allowed only with service: audiences")
        audience = info.data.get("audience")
        if value is None and service == "audiences" and audience is not None and audience.name is not None:
            raise ValueError(
                "is required to create the list by name (Brevo creates lists in a folder); allowed: the id of a "
                "contacts folder, or audience: {id: ...}"
            )
        return value


class Brevo(AudiencePlatform):
    """Brevo contacts: attributes through import processes, list membership."""

    name = "brevo"
    settings_model = BrevoSettings
    services: ClassVar[Mapping[str, tuple[str, ...]]] = {
        "attributes": ("upsert", "insert"),
        "audiences": ("add", "remove"),
    }
    default_base_url = "https://api.brevo.com/v3"
    limits = Limits(
        max_records_per_batch=MAX_LIST_EMAILS, requests_per_window=10, window_seconds=1.0, max_concurrency=4
    )
    audience_label = "Brevo list"
    audience_noun = "list"
    audiences_taking = "Brevo lists"

    settings: BrevoSettings

    def __init__(self, settings: PlatformSettings, *, destination: str = "") -> None:
        super().__init__(settings, destination=destination)
        if self.settings.service == "attributes":
            self.limits = Limits(
                max_records_per_batch=MAX_IMPORT_CONTACTS,
                max_bytes_per_batch=MAX_IMPORT_BYTES,
                requests_per_window=10,
                window_seconds=1.0,
                max_concurrency=2,
            )
        self.poll_interval_seconds = self.settings.poll_interval_seconds  # type: ignore[misc]
        self._clears = False  # set per import: a NULL was sent as "" (emptyContactsAttributes)

    def auth_headers(self) -> dict[str, str]:
        """The API key in Brevo's ``api-key`` header."""
        return {"api-key": self.settings.api_key.get_secret_value(), "Accept": "application/json"}

    def target_label(self) -> str:
        """``Brevo contacts`` or ``Brevo list 'VIP'``."""
        return super().target_label() if self.settings.service == "audiences" else "Brevo contacts"

    # -- identifiers and activation checks --------------------------------------------------------------

    def identifier_spec(self, name: str) -> IdentifierSpec | None:
        """``email`` only (never hashed)."""
        return EMAIL if name == "email" else None

    def validate_activation(self, match: Mapping[str, str], mapping: Mapping[str, str]) -> list[str]:
        """One ``email`` identifier; attributes need mapped fields, lists none."""
        problems = []
        if list(match) != ["email"]:
            problems.append(
                f"match: found {', '.join(match) or 'nothing'}; allowed: email (Brevo names contacts by e-mail)"
            )
        if self.settings.service == "audiences":
            if mapping:
                problems.append(
                    f"mapping: found {', '.join(mapping)}; allowed: nothing (Brevo lists take identifiers only)"
                )
            if self.audience_target is None:
                problems.append("audience: found nothing; allowed: {name: ...} or {id: ...}")
        else:
            for column, target in mapping.items():
                if str(target).upper() == "EMAIL":
                    problems.append(
                        f"mapping.{column}: found {target!r}; allowed: an attribute (the e-mail goes in match)"
                    )
        return problems

    def discover_fields(self, transport: Transport) -> Mapping[str, FieldInfo] | None:
        """The account's contact attributes (``GET /contacts/attributes``), for ``validate --connect``."""
        if self.settings.service != "attributes":
            return None
        response = transport.send(PreparedRequest("GET", "/contacts/attributes"))
        if response.status != 200:
            raise self.request_error(response, "reading the contact attributes")
        fields = {}
        for item in (response.json() or {}).get("attributes") or []:
            name = str(item.get("name"))
            category = str(item.get("category") or "")
            fields[name] = FieldInfo(
                name, type=str(item.get("type") or category), read_only=category in ("calculated", "global")
            )
        return fields

    # -- requests -------------------------------------------------------------------------------------------

    def record_input(self, operation: str, record: Record) -> Any:
        """The contact's import row (``email`` and ``attributes``), or its e-mail for a list."""
        email = record.identifiers["email"]
        if self.settings.service == "audiences":
            return email
        return {"email": email, "attributes": {name: brevo_value(v) for name, v in record.fields.items()}}

    def build_request(
        self, operation: str, inputs: Sequence[Any], records: Sequence[Record]
    ) -> PreparedRequest:
        """An import of the batch, or the list request of the batch's e-mails."""
        if self.settings.service == "audiences":
            action = "add" if operation == "add" else "remove"
            return PreparedRequest(
                "POST",
                f"/contacts/lists/{self._audience_ref()}/contacts/{action}",
                json={"emails": list(inputs)},
            )
        clears = any(v == "" for i in inputs for v in i["attributes"].values())
        body = {
            "jsonBody": list(inputs),
            "updateExistingContacts": operation == "upsert",
            "emptyContactsAttributes": clears and operation == "upsert",
            "disableNotification": True,
        }
        return PreparedRequest("POST", "/contacts/import", json=body)

    def deliver_batch(
        self, operation: str, records: Sequence[Record], inputs: Sequence[Any], transport: Transport
    ) -> BatchOutcome:
        """attributes: start the import (polled); audiences: the list requests, 150 e-mails each."""
        if self.settings.service == "audiences":
            self._resolve_audience(transport)
        response = transport.send(self.build_request(operation, inputs, records))
        return self.parse_response(operation, records, response)

    def parse_response(
        self, operation: str, records: Sequence[Record], response: HttpResponse
    ) -> BatchOutcome:
        """The import's process id, or the list answer's failures mapped to records."""
        body = response.json() or {}
        if self.settings.service == "attributes":
            if response.status in (200, 201, 202) and body.get("processId") is not None:
                return BatchOutcome(job=JobHandle(str(body["processId"])))
            if response.status == 400:
                if len(records) > 1:
                    return BatchOutcome(split=True)
                return BatchOutcome.reject_all(
                    records, self.error_message(response), str(body.get("code") or "invalid")
                )
            raise self.request_error(response, "POST /contacts/import")
        if response.status == 404:
            raise self.request_error(response, f"{self.target_label()} (check the audience's id)")
        if response.status not in (200, 201):
            if response.status == 400 and len(records) > 1:
                return BatchOutcome(split=True)
            if response.status == 400:
                return BatchOutcome.reject_all(
                    records, self.error_message(response), str(body.get("code") or "invalid")
                )
            raise self.request_error(response, f"updating {self.target_label()}")
        failure = {str(e).lower() for e in ((body.get("contacts") or {}).get("failure") or [])}
        results = []
        for record in records:
            if operation == "add" and record.identifiers["email"] in failure:
                results.append(
                    RecordResult(
                        record.key,
                        "rejected",
                        "no Brevo contact has this e-mail (a list add creates none: an attributes activation creates it)",
                        "no Brevo contact",
                    )
                )
            else:
                results.append(RecordResult(record.key, "accepted"))  # a failed remove: not in the list
        return BatchOutcome(results)

    def poll_job(
        self, operation: str, records: Sequence[Record], job: JobHandle, transport: Transport
    ) -> BatchOutcome:
        """The import process's status; once completed, its reports of problematic rows."""
        response = transport.send(PreparedRequest("GET", f"/processes/{job.id}"))
        if response.status != 200:
            raise self.request_error(response, f"reading import process {job.id}")
        body = response.json() or {}
        status = str(body.get("status") or "")
        if status in ("queued", "in_process", "processing"):
            return BatchOutcome(job=job)
        if status != "completed":
            logger.warning(
                "%s: import process %s ended %r; its contacts are sent again", self.label, job.id, status
            )
            return BatchOutcome([RecordResult(r.key, "retry") for r in records])
        rejected: dict[str, RecordResult] = {}
        by_email = {r.identifiers["email"]: r.key for r in records}
        reports = ((body.get("info") or {}).get("import") or {}) if isinstance(body.get("info"), dict) else {}
        for report, url in reports.items():
            if not (isinstance(url, str) and url.startswith(("http://", "https://"))):
                continue
            answer = transport.send(PreparedRequest("GET", url))
            if answer.status != 200:
                raise self.request_error(answer, f"reading report {report} of import process {job.id}")
            for row in csv.DictReader(io.StringIO(answer.text)):
                email = str(row.get("email") or row.get("EMAIL") or "").strip().lower()
                key = by_email.get(email)
                if key is not None:
                    reason = f"Brevo's import report {report}" + (
                        f": {row['reason']}" if row.get("reason") else ""
                    )
                    rejected.setdefault(key, RecordResult(key, "rejected", self.redact(reason), report))
        return BatchOutcome([rejected.get(r.key) or RecordResult(r.key, "accepted") for r in records])

    def preview_request(
        self, operation: str, inputs: Sequence[Any], records: Sequence[Record]
    ) -> PreparedRequest:
        """The first request; a list request goes 150 e-mails at a time."""
        return self.build_request(operation, inputs, records)

    # -- lists -----------------------------------------------------------------------------------------------------

    def _find_by_name(self, name: str, transport: Transport) -> str | None:
        found: list[str] = []
        offset = 0
        while True:
            response = transport.send(
                PreparedRequest(
                    "GET", "/contacts/lists", params={"limit": str(LISTS_PAGE), "offset": str(offset)}
                )
            )
            if response.status != 200:
                raise self.request_error(response, "reading the lists (GET /contacts/lists)")
            lists = (response.json() or {}).get("lists") or []
            found += [str(item["id"]) for item in lists if item.get("name") == name]
            if len(lists) < LISTS_PAGE:
                return self._the_one_named(name, found, "Brevo lists")
            offset += LISTS_PAGE

    def _create_named(self, target: AudienceTarget, transport: Transport) -> str:
        if self.settings.folder_id is None:
            raise self.config_error("folder_id: is required to create the list by name; allowed: a folder id")
        response = transport.send(
            PreparedRequest(
                "POST", "/contacts/lists", json={"name": target.name, "folderId": self.settings.folder_id}
            )
        )
        body = response.json() or {}
        if response.status not in (200, 201) or body.get("id") is None:
            raise self.request_error(response, f"creating the list {target.name!r} (POST /contacts/lists)")
        logger.info("%s: created Brevo list %r (%s)", self.label, target.name, body["id"])
        return str(body["id"])

    # -- responses ----------------------------------------------------------------------------------------------------

    def classify(self, response: HttpResponse) -> Signal:
        """A 429 waits ``x-sib-ratelimit-reset`` seconds (Brevo sends no ``Retry-After``)."""
        signal = super().classify(response)
        if response.status == 429 and signal.retry_after is None:
            reset = _number(response.header("x-sib-ratelimit-reset"))
            if reset is not None:
                return Signal(signal.kind, reset, signal.message)
        return signal

    def observe(self, response: HttpResponse, limiter: RateLimiter) -> str | None:
        """``x-sib-ratelimit-remaining: 0`` holds every worker for ``x-sib-ratelimit-reset`` seconds."""
        remaining = _number(response.header("x-sib-ratelimit-remaining"))
        reset = _number(response.header("x-sib-ratelimit-reset"))
        if remaining == 0 and reset is not None and response.status != 429:
            limiter.pause(reset)
        return None

    # -- validate --connect -------------------------------------------------------------------------------------------

    def check_connection(self, transport: Transport) -> None:
        """The key (``GET /account``) and the list given by id."""
        self._read(transport, "/account", "the Brevo account")
        target = self.audience_target
        if self.settings.service == "audiences" and target is not None and target.id:
            self._read(transport, f"/contacts/lists/{target.id}", self.target_label())


def brevo_value(value: Any) -> Any:
    """A warehouse value as Brevo's import reads it; NULL is ``""`` (erased with emptyContactsAttributes)."""
    if value is None:
        return ""
    if isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return "" if math.isnan(value) or math.isinf(value) else value
    if isinstance(value, decimal.Decimal):
        if not value.is_finite():
            return ""
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, dt.datetime):
        return value.date().isoformat() if value.time() == dt.time() else value.isoformat()
    if isinstance(value, dt.date):
        return value.isoformat()
    return str(value)


def _number(text: str | None) -> float | None:
    try:
        return float(text) if text is not None else None
    except ValueError:
        return None


register_platform("brevo", BrevoSettings, Brevo)

"""Intercom: contact and company attributes, and tags as audiences, over Intercom's REST API.

A ``type: intercom`` destination serves one ``service``. Every request carries ``Authorization: Bearer
<access_token>`` (an app's access token, from ``{env: VAR}``) and ``Intercom-Version`` (the
``api_version`` setting, default ``2.14``, pinned so Intercom's answers keep the shape read here whatever
version the app is set to). The API root is the workspace's region: ``https://api.intercom.io``
(``region: us``, the default), ``https://api.eu.intercom.io`` (``eu``) or ``https://api.au.intercom.io``
(``au``); ``base_url`` overrides it.

- ``attributes`` of ``object: contacts`` (the default). Contacts are named by ``email`` (trimmed,
  lower-cased) or ``external_id`` (as is), one of them. Each batch (at most 50 records) is looked up with
  one ``POST /contacts/search`` (``{"query": {"operator": "AND", "value": [{"field": <identifier>,
  "operator": "IN", "value": [...]}, {"field": "role", "operator": "=", "value": <role>}]}}``, 150 per
  page, following ``pages.next.starting_after``) to find Intercom's contact ids; then, one request per
  record (Intercom has no batch write for contacts): ``upsert`` updates a found contact (``PUT
  /contacts/{id}``) and creates the others (``POST /contacts`` with ``role``); ``update`` updates found
  contacts only (the others count as done); ``insert`` creates the contacts not found (found ones are left
  alone and count as done); ``delete`` (``sync_mode: mirror``) archives the found contacts (``POST
  /contacts/{id}/archive``: reversible, unlike ``DELETE /contacts/{id}``). Search misses contacts created a
  few minutes ago (Intercom documents the delay): a create answered ``409 conflict`` ("A contact matching
  those details already exists with id=...") updates that contact instead (``upsert``) or leaves it alone
  (``insert``). Mapped fields named like Intercom's contact fields (``name``, ``phone``, ``avatar``,
  ``signed_up_at``, ``last_seen_at``, ``owner_id``, ``unsubscribed_from_emails``, ``language_override``)
  are sent as such, every other one in ``custom_attributes``, which must exist in the workspace
  (``validate --connect`` reads ``GET /data_attributes?model=contact`` and refuses an unknown or not
  ``api_writable`` attribute; at sync time Intercom refuses the record, rejected with its message).
- ``attributes`` of ``object: companies``: ``upsert`` is ``POST /companies`` (create or update by
  ``company_id``, the match identifier; one request per company); ``delete`` finds the company (``GET
  /companies?company_id=``) and deletes it (``DELETE /companies/{id}``); a company Intercom does not hold
  counts as done. Fields ``name``, ``plan``, ``size``, ``website``, ``industry``, ``remote_created_at``,
  ``monthly_spend`` are Intercom's own, the others ``custom_attributes`` (``GET
  /data_attributes?model=company`` in ``validate --connect``).
- ``audiences``: a tag (the activation's ``audience``: ``{name:}`` found with ``GET /tags`` or created
  with ``POST /tags {"name"}``, names compared case-insensitively as Intercom does; or ``{id:}``). Contacts
  (``email`` or ``external_id``) are found with the contact search (any role); ``add`` tags each one
  (``POST /contacts/{id}/tags {"id": tag}``), ``remove`` untags it (``DELETE /contacts/{id}/tags/{tag}``):
  one request per contact. An add whose contact Intercom does not hold is rejected ("tagging creates no
  contact") and goes again with the next sync; a remove of a contact Intercom does not hold, or that no
  longer has the tag (``404``), is done. Intercom has no "replace the tag's contacts": a full sync is
  remove + add.

Consent: Intercom keeps e-mail consent in ``unsubscribed_from_emails``. It is sent only when the
activation maps a column to it, and only that column's true/false: a NULL is never sent for it (whatever
``null_values`` says), so a sync never re-subscribes someone the segment does not say consented. Tags,
attributes and companies carry no subscription.

Values: Intercom's dates (``signed_up_at``, ``last_seen_at``, ``remote_created_at`` and date custom
attributes) are Unix timestamps in seconds; timestamps and dates are sent so (dates at midnight UTC);
decimals become numbers; a NULL clears the attribute (``null``), or is left out with ``null_values:
skip``.

Limits: private apps may make 10,000 calls per minute per app and 25,000 per workspace, spread over
10-second windows; the SDK keeps to 1,666 per 10 seconds and reads ``X-RateLimit-Limit`` /
``-Remaining`` / ``-Reset`` (a Unix time): ``Remaining: 0`` holds every worker until ``Reset``; a ``429``
waits until ``Reset``.

Errors: ``{"type": "error.list", "request_id", "errors": [{"code", "message", "field"}]}``. ``401
unauthorized`` (``Access Token Invalid``) and ``403`` stop the sync at once; a ``400``/``422`` on one
record (``parameter_invalid``, ``parameter_not_found``...) rejects that record with Intercom's message;
``404 not_found`` on a tag given by id names the tag.

Intercom's documentation this adapter follows (the OpenAPI description of API 2.14,
https://github.com/intercom/Intercom-OpenAPI, ``descriptions/2.14/api.intercom.io.yaml``, and the
reference built from it):

- servers per region, ``Intercom-Version`` header (default 2.14), error list format:
  https://developers.intercom.com/docs/references/rest-api/api.intercom.io/
- contacts: create, update, search (``IN``, ``AND``, 150 per page, the creation delay), archive:
  https://developers.intercom.com/docs/references/rest-api/api.intercom.io/contacts/
- tags: ``GET /tags``, ``POST /tags``, tag and untag a contact:
  https://developers.intercom.com/docs/references/rest-api/api.intercom.io/tags/
- companies: create or update by ``company_id``, retrieve by ``company_id``, delete:
  https://developers.intercom.com/docs/references/rest-api/api.intercom.io/companies/
- data attributes (``model``, ``api_writable``, ``custom``):
  https://developers.intercom.com/docs/references/rest-api/api.intercom.io/data-attributes/
- rate limits (10,000/min per app, 25,000/min per workspace, 10-second windows, ``X-RateLimit-*``):
  https://developers.intercom.com/docs/references/rest-api/errors/rate-limiting/ and
  https://community.intercom.com/api-webhooks-23/what-is-the-intercom-api-s-rate-limit-2052

Assumed where the documentation is silent: the number of values an ``IN`` search filter takes (not
stated; batches of 50 stay far below any page); the ``409 conflict`` answer to creating a contact that
exists (its id read from the message, as Intercom words it; not in the OpenAPI examples); the answer to
untagging a contact that no longer has the tag (read like a missing contact: done).
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
from dinmo_dagster.platforms.audiences import AudiencePlatform, AudienceTarget
from dinmo_dagster.platforms.base import (
    BatchOutcome,
    FieldInfo,
    HttpResponse,
    Limits,
    PlatformSettings,
    PreparedRequest,
    Record,
    RecordResult,
    unix_seconds,
)
from dinmo_dagster.platforms.identifiers import IdentifierError, IdentifierSpec, normalize_email

if TYPE_CHECKING:
    from dinmo_dagster.platforms.http import Transport

__all__ = ["Intercom", "IntercomSettings", "IntercomTag", "intercom_value"]

logger = logging.getLogger("dinmo_dagster.platforms")

REGIONS = {
    "us": "https://api.intercom.io",
    "eu": "https://api.eu.intercom.io",
    "au": "https://api.au.intercom.io",
}
API_VERSIONS = ("2.7", "2.8", "2.9", "2.10", "2.11", "2.12", "2.13", "2.14")
MAX_BATCH = 50
SEARCH_PAGE = 150
CONTACT_FIELDS = (
    "name", "phone", "avatar", "signed_up_at", "last_seen_at", "owner_id", "unsubscribed_from_emails",
    "language_override",
)  # fmt: skip
COMPANY_FIELDS = ("name", "plan", "size", "website", "industry", "remote_created_at", "monthly_spend")
CONSENT_FIELD = "unsubscribed_from_emails"
_EXISTING = re.compile(r"id=([0-9a-f]+)")


def _as_is(value: str, _country: str | None) -> str:
    text = value.strip()
    if not text:
        raise IdentifierError("an empty id")
    return text


EMAIL = IdentifierSpec("email", normalize=lambda v, _c: normalize_email(v))
EXTERNAL_ID = IdentifierSpec("id", normalize=_as_is)


class IntercomTag(AudienceTarget):
    """An Intercom tag: ``{name: ...}`` (created when missing) or ``{id: ...}``."""

    noun: ClassVar[str] = "tag"


class IntercomSettings(PlatformSettings):
    """Settings of a ``type: intercom`` destination."""

    service: Literal["attributes", "audiences"] = Field(
        description="attributes (contact or company attributes) or audiences (a tag on contacts)."
    )
    access_token: SecretStr = Field(description="An Intercom app's access token (from {env: VAR}); secret.")
    region: Literal["us", "eu", "au"] = Field(
        default="us", description="The workspace's region: us, eu or au."
    )
    api_version: str = Field(
        default="2.14", description="The Intercom-Version header sent with every request."
    )
    object: Literal["contacts", "companies"] = Field(
        default="contacts", description="attributes: contacts or companies."
    )
    role: Literal["user", "lead"] = Field(
        default="user", description="attributes of contacts: the role contacts are matched and created with."
    )
    audience: IntercomTag | None = Field(default=None, description="audiences: the tag, from the activation.")

    @pydantic.field_validator("access_token")
    @classmethod
    def _check_token(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value().strip():
            raise ValueError("is empty; allowed: an Intercom access token")
        return value

    @pydantic.field_validator("api_version", mode="before")
    @classmethod
    def _check_version(cls, value: Any) -> Any:
        text = str(value)
        if text not in API_VERSIONS:
            raise ValueError(f"found {text!r}; allowed: {', '.join(API_VERSIONS)}")
        return text

    @pydantic.field_validator("audience")
    @classmethod
    def _check_audience(cls, value: IntercomTag | None, info: ValidationInfo) -> IntercomTag | None:
        service = info.data.get("service")
        if value is not None and service not in (None, "audiences"):
            raise ValueError(f"found a tag; allowed only with service: audiences (service is {service})")
        return value

    @pydantic.model_validator(mode="after")
    def _object_for_audiences(self) -> IntercomSettings:
        if self.service == "audiences" and self.object != "contacts":
            raise ValueError(
                f"object: found {self.object!r}; allowed with service audiences: contacts (tags on contacts)"
            )
        return self


class Intercom(AudiencePlatform):
    """Intercom contacts and companies: attributes, and tags on contacts."""

    name = "intercom"
    settings_model = IntercomSettings
    services: ClassVar[Mapping[str, tuple[str, ...]]] = {
        "attributes": ("upsert", "update", "insert", "delete"),
        "audiences": ("add", "remove"),
    }
    default_base_url = REGIONS["us"]
    limits = Limits(
        max_records_per_batch=MAX_BATCH, requests_per_window=1666, window_seconds=10.0, max_concurrency=4
    )
    audience_label = "Intercom tag"
    audience_noun = "tag"
    audiences_taking = "Intercom tags"

    settings: IntercomSettings

    def __init__(self, settings: PlatformSettings, *, destination: str = "") -> None:
        super().__init__(settings, destination=destination)
        if self.settings.object == "companies":
            self.services = {"attributes": ("upsert", "delete")}  # type: ignore[misc]

    @property
    def base_url(self) -> str:
        """``base_url``, or the region's API root."""
        return self.settings.base_url or REGIONS[self.settings.region]

    def auth_headers(self) -> dict[str, str]:
        """The bearer token and the pinned API version."""
        return {
            "Authorization": f"Bearer {self.settings.access_token.get_secret_value()}",
            "Intercom-Version": self.settings.api_version,
            "Accept": "application/json",
        }

    def target_label(self) -> str:
        """``Intercom contacts``, ``Intercom companies`` or ``Intercom tag 'VIP'``."""
        if self.settings.service == "audiences":
            return super().target_label()
        return f"Intercom {self.settings.object}"

    @property
    def _companies(self) -> bool:
        return self.settings.service == "attributes" and self.settings.object == "companies"

    # -- identifiers and activation checks --------------------------------------------------------------

    def identifier_spec(self, name: str) -> IdentifierSpec | None:
        """``company_id`` for companies; ``email`` or ``external_id`` for contacts."""
        if self._companies:
            return EXTERNAL_ID if name == "company_id" else None
        return {"email": EMAIL, "external_id": EXTERNAL_ID}.get(name)

    def validate_activation(self, match: Mapping[str, str], mapping: Mapping[str, str]) -> list[str]:
        """One identifier; tags take no mapping; attributes map no identifier."""
        key = "identifiers" if self.settings.service == "audiences" else "match"
        allowed = "company_id" if self._companies else "one of email, external_id"
        problems = []
        if len(match) != 1 or any(self.identifier_spec(n) is None for n in match):
            problems.append(f"{key}: found {', '.join(match) or 'nothing'}; allowed: {allowed}")
        if self.settings.service == "audiences":
            if mapping:
                problems.append(
                    f"mapping: found {', '.join(mapping)}; allowed: nothing (Intercom tags take identifiers only)"
                )
            if self.audience_target is None:
                problems.append("audience: found nothing; allowed: {name: ...} or {id: ...}")
            return problems
        for column, target in mapping.items():
            if target in ("email", "external_id", "company_id", "role", "id"):
                problems.append(
                    f"mapping.{column}: found {target!r}; allowed: an attribute (identifiers go in match)"
                )
        return problems

    @staticmethod
    def _ident(record: Record) -> tuple[str, str]:
        return next(iter(record.identifiers.items()))

    # -- requests -------------------------------------------------------------------------------------------

    def record_input(self, operation: str, record: Record) -> Any:
        """The contact's or company's body (identifier, own fields, ``custom_attributes``)."""
        name, value = self._ident(record)
        body: dict[str, Any] = {name: value}
        if operation in ("delete", "remove", "add"):
            return body
        own = COMPANY_FIELDS if self._companies else CONTACT_FIELDS
        custom: dict[str, Any] = {}
        for field, raw in record.fields.items():
            if field == CONSENT_FIELD and not self._companies:
                if isinstance(raw, bool):
                    body[field] = raw  # only what the segment says; a NULL never (re-)subscribes
                continue
            value_ = intercom_value(raw)
            if field in own:
                body[field] = value_
            else:
                custom[field] = value_
        if custom:
            body["custom_attributes"] = custom
        return body

    def build_request(
        self, operation: str, inputs: Sequence[Any], records: Sequence[Record]
    ) -> PreparedRequest:
        """The first request of the batch: the company upsert, or the contact search."""
        if self._companies:
            if operation == "delete":
                return PreparedRequest("GET", "/companies", params={"company_id": inputs[0]["company_id"]})
            return PreparedRequest("POST", "/companies", json=inputs[0])
        name = self._ident(records[0])[0]
        return self._search_request(name, [i[name] for i in inputs], None)

    def _search_request(self, name: str, values: Sequence[str], cursor: str | None) -> PreparedRequest:
        filters: list[dict[str, Any]] = [{"field": name, "operator": "IN", "value": list(values)}]
        if self.settings.service == "attributes":
            filters.append({"field": "role", "operator": "=", "value": self.settings.role})
        pagination: dict[str, Any] = {"per_page": SEARCH_PAGE}
        if cursor:
            pagination["starting_after"] = cursor
        query = {"operator": "AND", "value": filters} if len(filters) > 1 else filters[0]
        return PreparedRequest("POST", "/contacts/search", json={"query": query, "pagination": pagination})

    def parse_response(
        self, operation: str, records: Sequence[Record], response: HttpResponse
    ) -> BatchOutcome:
        """Not used: :meth:`deliver_batch` reads every answer itself."""
        raise NotImplementedError

    def deliver_batch(
        self, operation: str, records: Sequence[Record], inputs: Sequence[Any], transport: Transport
    ) -> BatchOutcome:
        """Companies one by one; contacts: one search, then one request per record.

        A batch is up to 50 requests (one per company, contact or tagging): each verdict is handed to the
        engine as it comes (``acknowledge_early``), so a sync killed mid-batch does not send again what
        Intercom already answered."""
        results: list[RecordResult] = []
        if self._companies:
            for record, body in zip(records, inputs):
                results.append(self._company(operation, record, body, transport))
                self.acknowledge_early(results[-1:])
            return BatchOutcome(results)
        tag = self._resolve_audience(transport) if self.settings.service == "audiences" else None
        name = self._ident(records[0])[0]
        ids = self._find_contacts(name, [i[name] for i in inputs], transport)
        for record, body in zip(records, inputs):
            found = ids.get(body[name].lower() if name == "email" else body[name], [])
            if tag is not None:
                results.append(self._tag(operation, record, found, tag, transport))
            else:
                results.append(self._contact(operation, record, body, found, transport))
            self.acknowledge_early(results[-1:])
        return BatchOutcome(results)

    def _find_contacts(self, name: str, values: Sequence[str], transport: Transport) -> dict[str, list[str]]:
        """Intercom's contact ids by identifier value (all pages of the search)."""
        found: dict[str, list[str]] = {}
        cursor = None
        while True:
            response = transport.send(self._search_request(name, values, cursor))
            if response.status != 200:
                raise self.request_error(response, "searching contacts (POST /contacts/search)")
            body = response.json() or {}
            for contact in body.get("data") or []:
                value = contact.get(name)
                if value is not None and contact.get("id"):
                    key = str(value).lower() if name == "email" else str(value)
                    found.setdefault(key, []).append(str(contact["id"]))
            cursor = ((body.get("pages") or {}).get("next") or {}).get("starting_after")
            if not cursor:
                return found

    def _contact(
        self, operation: str, record: Record, body: dict[str, Any], found: list[str], transport: Transport
    ) -> RecordResult:
        if operation == "delete":
            for contact_id in found:
                self._expect(
                    transport.send(PreparedRequest("POST", f"/contacts/{contact_id}/archive")),
                    (200, 404),
                    "archiving a contact",
                )
            return RecordResult(record.key, "accepted")
        if found and operation == "insert" or not found and operation == "update":
            return RecordResult(
                record.key, "accepted"
            )  # insert leaves it alone / update has nothing to update
        fields = {k: v for k, v in body.items() if k not in ("email", "external_id")}
        if found:
            return self._all(record, [self._put(contact_id, fields, transport) for contact_id in found])
        response = transport.send(
            PreparedRequest("POST", "/contacts", json={"role": self.settings.role, **body})
        )
        if response.status == 409:
            # Created a moment ago (search has a delay): it exists.
            match = _EXISTING.search(self.error_message(response))
            if operation == "insert" or match is None:
                return RecordResult(record.key, "accepted") if match else self._rejected(record, response)
            return self._all(record, [self._put(match.group(1), fields, transport)])
        return self._verdict(record, response)

    def _put(self, contact_id: str, fields: Mapping[str, Any], transport: Transport) -> HttpResponse:
        return transport.send(PreparedRequest("PUT", f"/contacts/{contact_id}", json=dict(fields)))

    def _all(self, record: Record, responses: Sequence[HttpResponse]) -> RecordResult:
        for response in responses:
            if response.status != 200:
                return self._verdict(record, response)
        return RecordResult(record.key, "accepted")

    def _verdict(self, record: Record, response: HttpResponse) -> RecordResult:
        if response.status == 200:
            return RecordResult(record.key, "accepted")
        if response.status in (400, 404, 409, 422):
            return self._rejected(record, response)
        raise self.request_error(response, "writing a contact")

    def _rejected(self, record: Record, response: HttpResponse) -> RecordResult:
        return RecordResult(record.key, "rejected", self.error_message(response), _code(response))

    def _tag(
        self, operation: str, record: Record, found: list[str], tag: str, transport: Transport
    ) -> RecordResult:
        if not found:
            if operation == "remove":
                return RecordResult(record.key, "accepted")  # not in Intercom: not tagged
            return RecordResult(record.key, "rejected",
                                "no Intercom contact has this identifier (tagging creates no contact: an attributes "
                                "activation creates it)", "no Intercom contact")  # fmt: skip
        for contact_id in found:
            if operation == "add":
                response = transport.send(
                    PreparedRequest("POST", f"/contacts/{contact_id}/tags", json={"id": tag})
                )
                if response.status == 404 and "tag" in self.error_message(response).lower():
                    raise self.request_error(response, f"tagging with {self.target_label()}")
                if response.status != 200:
                    return self._verdict(record, response)
            else:
                response = transport.send(PreparedRequest("DELETE", f"/contacts/{contact_id}/tags/{tag}"))
                self._expect(response, (200, 404), f"untagging {self.target_label()}")
        return RecordResult(record.key, "accepted")

    def _company(
        self, operation: str, record: Record, body: dict[str, Any], transport: Transport
    ) -> RecordResult:
        if operation == "upsert":
            response = transport.send(PreparedRequest("POST", "/companies", json=body))
            return self._verdict(record, response)
        response = transport.send(
            PreparedRequest("GET", "/companies", params={"company_id": body["company_id"]})
        )
        if response.status == 404:
            return RecordResult(record.key, "accepted")  # not in Intercom
        self._expect(response, (200,), "finding a company")
        company_id = (response.json() or {}).get("id")
        if company_id:
            self._expect(
                transport.send(PreparedRequest("DELETE", f"/companies/{company_id}")),
                (200, 404),
                "deleting a company",
            )
        return RecordResult(record.key, "accepted")

    def _expect(self, response: HttpResponse, statuses: tuple[int, ...], what: str) -> None:
        if response.status not in statuses:
            raise self.request_error(response, what)

    # -- tags -------------------------------------------------------------------------------------------------

    def _find_by_name(self, name: str, transport: Transport) -> str | None:
        response = transport.send(PreparedRequest("GET", "/tags"))
        if response.status != 200:
            raise self.request_error(response, "reading the tags (GET /tags)")
        found = [str(t["id"]) for t in (response.json() or {}).get("data") or []
                 if str(t.get("name", "")).lower() == name.lower()]  # fmt: skip
        return self._the_one_named(name, found, "Intercom tags")

    def _create_named(self, target: AudienceTarget, transport: Transport) -> str:
        response = transport.send(PreparedRequest("POST", "/tags", json={"name": target.name}))
        body = response.json() or {}
        if response.status != 200 or body.get("id") is None:
            raise self.request_error(response, f"creating the tag {target.name!r} (POST /tags)")
        logger.info("%s: created Intercom tag %r (%s)", self.label, target.name, body["id"])
        return str(body["id"])

    # -- responses -------------------------------------------------------------------------------------------

    def error_message(self, response: HttpResponse) -> str:
        """Intercom's ``errors[].message`` (with its ``code``), secrets masked."""
        body = response.json() if response.content else None
        if isinstance(body, dict) and isinstance(body.get("errors"), list) and body["errors"]:
            parts = [
                f"{e.get('message') or e.get('code')} ({e.get('code')})" if e.get("message") else str(e.get("code"))
                for e in body["errors"] if isinstance(e, dict)
            ]  # fmt: skip
            return self.redact("; ".join(parts))
        return super().error_message(response)

    # -- validate --connect ----------------------------------------------------------------------------------

    def check_connection(self, transport: Transport) -> None:
        """The token (``GET /me``) and the tag given by id."""
        self._read(transport, "/me", "the Intercom app (GET /me)")
        target = self.audience_target
        if self.settings.service == "audiences" and target is not None and target.id:
            self._read(transport, f"/tags/{target.id}", self.target_label())

    def discover_fields(self, transport: Transport) -> Mapping[str, FieldInfo] | None:
        """The workspace's contact or company attributes (``GET /data_attributes?model=``)."""
        if self.settings.service != "attributes":
            return None
        model = "company" if self._companies else "contact"
        response = transport.send(PreparedRequest("GET", "/data_attributes", params={"model": model}))
        if response.status != 200:
            raise self.request_error(response, f"reading the {model} attributes (GET /data_attributes)")
        fields = {}
        for item in (response.json() or {}).get("data") or []:
            name = str(item.get("name"))
            fields[name] = FieldInfo(name, label=item.get("label"), type=item.get("data_type"),
                                     read_only=item.get("api_writable") is False)  # fmt: skip
        return fields


def _code(response: HttpResponse) -> str:
    body = response.json() if response.content else None
    if isinstance(body, dict) and body.get("errors") and isinstance(body["errors"][0], dict):
        return str(body["errors"][0].get("code") or f"HTTP {response.status}")
    return f"HTTP {response.status}"


def intercom_value(value: Any) -> Any:
    """A warehouse value as Intercom takes it: dates and timestamps as Unix seconds, decimals as numbers."""
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None
    if isinstance(value, decimal.Decimal):
        if not value.is_finite():
            return None
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, dt.date):  # timestamps (naive ones UTC) and dates
        return unix_seconds(value)
    if isinstance(value, bytes):
        return value.hex()
    return value


register_platform("intercom", IntercomSettings, Intercom)

"""Mailchimp: static segment membership of an audience, over the Mailchimp Marketing API 3.0.

A ``type: mailchimp`` destination serves ``service: audiences``: the activation's ``audience`` is a
static segment (``{name:}``, found or created, or ``{id:}``) of the Mailchimp audience (list) named by
the ``list_id`` setting. Every request carries HTTP Basic auth, any user name and the API key as the
password (``api_key``, from ``{env: VAR}``); the API root is ``https://<dc>.api.mailchimp.com/3.0``,
``<dc>`` being the key's suffix after its last ``-`` (``...-us6``); ``base_url`` overrides it. Members
are named by ``email`` (trimmed, lower-cased, never hashed: Mailchimp needs the address to send to it;
its subscriber hash, the MD5 of the lower-cased address, is only needed in member paths, which this
adapter does not use).

- ``add`` -- a static segment holds list members only ("any emails provided that are not present on the
  list will be ignored"), so each batch (at most 500 records) is first written to the list with the batch
  subscribe call ``POST /lists/{list_id}`` (``members``: ``email_address``, ``status``, ``merge_fields``;
  at most 500), then added with ``POST /lists/{list_id}/segments/{segment_id}``
  ``{"members_to_add": [...]}`` (at most 500). Consent is never invented: a member is ``subscribed``
  only when the column mapped to ``consent`` says ``true`` (or ``yes``/``subscribed``/``1``), and
  ``unsubscribed`` when it says ``false`` (``no``/``unsubscribed``/``0``); those members are sent with
  ``update_existing: true`` (the segment's word on consent is applied to existing members too). Every
  other member (no ``consent`` mapping, or a NULL) goes in a separate call with ``update_existing:
  false`` and the ``status_if_new`` setting (``transactional`` by default; ``pending`` sends Mailchimp's
  double opt-in e-mail; ``subscribed`` is refused): a new address joins the list with that status, an
  existing member keeps its status and merge fields (Mailchimp answers ``ERROR_CONTACT_EXISTS`` for it,
  which counts as done). Other mapped names are merge field tags (``FNAME``), sent in ``merge_fields``;
  a NULL is left out (never erased). A member the batch subscribe call refuses (its ``errors[]``:
  ``email_address``, ``error``, ``error_code``) is rejected with Mailchimp's message and not added to
  the segment; the segment call's ``errors[]`` (``email_addresses``, ``error``) reject theirs.
- ``remove`` -- ``POST /lists/{list_id}/segments/{segment_id}`` ``{"members_to_remove": [...]}``: the
  members leave the segment and stay on the list (their subscription is untouched). An address
  Mailchimp reports in ``errors[]`` for a removal is not in the segment: done.

Mailchimp has no "replace the segment" for more than one request, so a full sync is remove + add.
Segments given by name are looked up with ``GET /lists/{list_id}/segments?type=static`` (1,000 per
page) and created with ``POST /lists/{list_id}/segments`` ``{"name", "static_segment": []}``.

Limits: Mailchimp allows 10 simultaneous connections per user and answers ``429`` past them; it
documents no request rate. The SDK keeps at most 10 requests in flight and, by assumption, 10 requests
per second; a ``429`` waits its ``Retry-After`` when there is one, else backs off. Errors are problem
details: ``{"type", "title", "status", "detail", "instance"}``; a ``401`` (``API Key Invalid``) or
``403`` stops the sync at once with Mailchimp's ``detail``; a ``404`` names the list or segment.

``validate --connect`` reads the list (``GET /lists/{list_id}``: the key and the list), the segment
given by id, and the list's merge fields (``GET /lists/{list_id}/merge-fields``) against the mapping.

Mailchimp's documentation this adapter follows:

- authentication (Basic, key as password), data center from the key, error format, 10 simultaneous
  connections and 429: https://mailchimp.com/developer/marketing/docs/fundamentals/ and
  https://mailchimp.com/developer/marketing/docs/errors/
- batch subscribe or unsubscribe (``members`` up to 500, ``update_existing``, ``errors[]`` with
  ``email_address``, ``error``, ``error_code``):
  https://mailchimp.com/developer/marketing/api/lists/batch-subscribe-or-unsubscribe/ (the Rust
  crate's model of it: https://docs.rs/mailchimp/0.1.10/mailchimp/types/struct.ListBatchParam.html)
- batch add or remove members of a static segment (500 per array, non-members ignored):
  https://mailchimp.com/developer/marketing/api/list-segments/batch-add-or-remove-members/
- list / create segments (``static_segment``): https://mailchimp.com/developer/marketing/api/list-segments/
- member statuses (subscribed, unsubscribed, cleaned, pending, transactional) and the subscriber hash:
  https://mailchimp.com/developer/marketing/api/list-members/ and
  http://developer.mailchimp.com/documentation/mailchimp/guides/manage-subscribers-with-the-mailchimp-api/
- merge fields: https://mailchimp.com/developer/marketing/api/list-merge-fields/

Assumed where the pages could not be read in full: with ``update_existing: false`` an existing member
is reported in ``errors[]`` with ``error_code`` ``ERROR_CONTACT_EXISTS`` and left unchanged; the
segment call's ``errors[]`` items carry ``email_addresses`` (a list) and ``error``; a rate of 10
requests per second (Mailchimp states a connection limit, no rate).
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import logging
import math
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import pydantic
from pydantic import Field, SecretStr

from dinmo_dagster.platforms import register_platform
from dinmo_dagster.platforms.audiences import AUDIENCE_MISSING, AudiencePlatform, AudienceTarget
from dinmo_dagster.platforms.base import (
    BatchOutcome,
    FieldInfo,
    HttpResponse,
    Limits,
    PlatformSettings,
    PreparedRequest,
    Record,
    RecordResult,
)
from dinmo_dagster.platforms.identifiers import IdentifierSpec, normalize_email

if TYPE_CHECKING:
    from dinmo_dagster.platforms.http import Transport

__all__ = ["Mailchimp", "MailchimpSegment", "MailchimpSettings"]

logger = logging.getLogger("dinmo_dagster.platforms")

MAX_MEMBERS = 500
SEGMENTS_PAGE = 1000
CONSENT = "consent"
EMAIL = IdentifierSpec("email", normalize=lambda v, _c: normalize_email(v))
_YES = {"true", "yes", "y", "1", "subscribed"}
_NO = {"false", "no", "n", "0", "unsubscribed"}
_DC = re.compile(r"-([a-z]+[0-9]+)$")
_TAG = re.compile(r"[A-Z0-9_]{1,10}")
CONTACT_EXISTS = "ERROR_CONTACT_EXISTS"


class MailchimpSegment(AudienceTarget):
    """A static segment of the list: ``{name: ...}`` (created when missing) or ``{id: ...}``."""

    noun: ClassVar[str] = "static segment"
    max_name_length: ClassVar[int | None] = 100


class MailchimpSettings(PlatformSettings):
    """Settings of a ``type: mailchimp`` destination."""

    service: Literal["audiences"] = Field(description="audiences (static segment membership).")
    api_key: SecretStr = Field(description="A Mailchimp API key ending in -<dc> (from {env: VAR}); secret.")
    list_id: str = Field(description="The id of the Mailchimp audience (list) the segments belong to.")
    audience: MailchimpSegment | None = Field(
        default=None, description="The static segment, from the activation."
    )
    status_if_new: Literal["transactional", "pending", "unsubscribed"] = Field(
        default="transactional",
        description="Status of a new member whose consent the segment does not give (never subscribed).",
    )

    @pydantic.field_validator("api_key")
    @classmethod
    def _check_key(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value().strip():
            raise ValueError("is empty; allowed: a Mailchimp API key (ending in -<data center>, like -us6)")
        return value

    @pydantic.field_validator("list_id")
    @classmethod
    def _check_list(cls, value: str) -> str:
        if not re.fullmatch(r"[0-9a-zA-Z]+", value or ""):
            raise ValueError(
                f"found {value!r}; allowed: the audience's list id (letters and digits, like 9e67587f52)"
            )
        return value

    @pydantic.field_validator("status_if_new", mode="before")
    @classmethod
    def _never_subscribed(cls, value: Any) -> Any:
        if value == "subscribed":
            raise ValueError(
                "found 'subscribed'; allowed: transactional, pending, unsubscribed (members are subscribed "
                "only by the column mapped to consent)"
            )
        return value


class Mailchimp(AudiencePlatform):
    """Mailchimp static segments: members written to the list, then added to or removed from the segment."""

    name = "mailchimp"
    settings_model = MailchimpSettings
    services: ClassVar[Mapping[str, tuple[str, ...]]] = {"audiences": ("add", "remove")}
    default_base_url = "https://us1.api.mailchimp.com/3.0"
    limits = Limits(
        max_records_per_batch=MAX_MEMBERS, requests_per_window=10, window_seconds=1.0, max_concurrency=10
    )
    audience_label = "Mailchimp static segment"
    audience_noun = "static segment"
    audiences_taking = "Mailchimp static segments"

    settings: MailchimpSettings

    @property
    def base_url(self) -> str:
        """``https://<dc>.api.mailchimp.com/3.0``, the data center read from the key (or ``base_url``)."""
        if self.settings.base_url:
            return self.settings.base_url
        match = _DC.search(self.settings.api_key.get_secret_value().strip())
        if match is None:
            raise self.config_error(
                "api_key: does not end in -<data center> (like -us6); allowed: a Mailchimp API key, or base_url"
            )
        return f"https://{match.group(1)}.api.mailchimp.com/3.0"

    def auth_headers(self) -> dict[str, str]:
        """HTTP Basic: any user, the API key as the password."""
        token = base64.b64encode(f"dinmo:{self.settings.api_key.get_secret_value()}".encode()).decode()
        return {"Authorization": f"Basic {token}", "Accept": "application/json"}

    def runtime_secrets(self) -> list[str]:
        """The Basic credentials as sent (base64 of the key), masked like the key."""
        return [base64.b64encode(f"dinmo:{self.settings.api_key.get_secret_value()}".encode()).decode()]

    def target_label(self) -> str:
        """``Mailchimp static segment 'VIP' of list 9e67587f52``."""
        return f"{super().target_label()} of list {self.settings.list_id}"

    # -- identifiers and activation checks --------------------------------------------------------------

    def identifier_spec(self, name: str) -> IdentifierSpec | None:
        """``email`` only (never hashed)."""
        return EMAIL if name == "email" else None

    def validate_activation(self, match: Mapping[str, str], mapping: Mapping[str, str]) -> list[str]:
        """One ``email`` identifier; a mapping of ``consent`` and merge field tags; a segment."""
        problems = []
        if list(match) != ["email"]:
            problems.append(
                f"match: found {', '.join(match) or 'nothing'}; allowed: email (Mailchimp names members by e-mail)"
            )
        for column, target in mapping.items():
            if target != CONSENT and not _TAG.fullmatch(str(target)):
                problems.append(
                    f"mapping.{column}: found {target!r}; allowed: consent, or a merge field tag "
                    "(upper case, at most 10 characters, like FNAME)"
                )
        if self.audience_target is None:
            problems.append(AUDIENCE_MISSING)
        return problems

    def discover_fields(self, transport: Transport) -> Mapping[str, FieldInfo] | None:
        """The list's merge fields (``GET /lists/{id}/merge-fields``) and the ``consent`` pseudo-field."""
        response = transport.send(
            PreparedRequest("GET", f"/lists/{self.settings.list_id}/merge-fields", params={"count": "1000"})
        )
        if response.status != 200:
            raise self.request_error(response, f"reading the merge fields of list {self.settings.list_id}")
        fields = {CONSENT: FieldInfo(CONSENT, "subscription status (true: subscribed, false: unsubscribed)")}
        for item in (response.json() or {}).get("merge_fields") or []:
            tag = str(item.get("tag"))
            fields[tag] = FieldInfo(tag, label=item.get("name"), type=item.get("type"))
        return fields

    # -- requests -------------------------------------------------------------------------------------------

    def record_input(self, operation: str, record: Record) -> Any:
        """The member of the batch subscribe call (``add``), or the e-mail (``remove``)."""
        email = record.identifiers["email"]
        if operation == "remove":
            return email
        merge = {k: mailchimp_value(v) for k, v in record.fields.items() if k != CONSENT and v is not None}
        member: dict[str, Any] = {"email_address": email, "status": self._status(record.fields.get(CONSENT))}
        if merge:
            member["merge_fields"] = merge
        return member

    def _status(self, consent: Any) -> str:
        text = str(consent).strip().lower() if consent is not None else ""
        if text in _YES:
            return "subscribed"
        if text in _NO:
            return "unsubscribed"
        return self.settings.status_if_new

    def _consented(self, member: Mapping[str, Any], record: Record) -> bool:
        """Whether the segment gave this member's status (consent true or false): update_existing then."""
        consent = record.fields.get(CONSENT)
        return consent is not None and str(consent).strip().lower() in _YES | _NO

    def _subscribe_request(self, members: list[Any], update_existing: bool) -> PreparedRequest:
        return PreparedRequest(
            "POST",
            f"/lists/{self.settings.list_id}",
            json={"members": members, "update_existing": update_existing},
        )

    def _segment_request(self, operation: str, emails: list[str]) -> PreparedRequest:
        key = "members_to_add" if operation == "add" else "members_to_remove"
        return PreparedRequest(
            "POST", f"/lists/{self.settings.list_id}/segments/{self._audience_ref()}", json={key: emails}
        )

    def build_request(
        self, operation: str, inputs: Sequence[Any], records: Sequence[Record]
    ) -> PreparedRequest:
        """The first request of a batch: the batch subscribe call of an add, the segment call of a remove."""
        if operation == "remove":
            return self._segment_request(operation, list(inputs))
        given = [m for m, r in zip(inputs, records) if self._consented(m, r)]
        if given:
            return self._subscribe_request(given, True)
        return self._subscribe_request(list(inputs), False)

    def deliver_batch(
        self, operation: str, records: Sequence[Record], inputs: Sequence[Any], transport: Transport
    ) -> BatchOutcome:
        """add: batch subscribe (consent given, then the rest), then the segment; remove: the segment."""
        self._resolve_audience(transport)
        failed: dict[str, RecordResult] = {}
        by_email = {r.identifiers["email"]: r for r in records}
        if operation == "add":
            given = [(m, r) for m, r in zip(inputs, records) if self._consented(m, r)]
            rest = [(m, r) for m, r in zip(inputs, records) if not self._consented(m, r)]
            for pairs, update in ((given, True), (rest, False)):
                if not pairs:
                    continue
                response = transport.send(self._subscribe_request([m for m, _ in pairs], update))
                if response.status != 200:
                    raise self.request_error(response, f"writing members to list {self.settings.list_id}")
                for error in (response.json() or {}).get("errors") or []:
                    email = str(error.get("email_address") or "").strip().lower()
                    code = str(error.get("error_code") or "error")
                    record = by_email.get(email)
                    if record is None or code == CONTACT_EXISTS:
                        continue
                    reason = self.redact(f"Mailchimp refused the member: {error.get('error') or code}")
                    failed[record.key] = RecordResult(record.key, "rejected", reason, code)
        emails = [r.identifiers["email"] for r in records if r.key not in failed]
        if emails:
            response = transport.send(self._segment_request(operation, emails))
            if response.status == 404:
                raise self.request_error(response, f"{self.target_label()} (check list_id and the audience)")
            if response.status != 200:
                raise self.request_error(response, f"updating {self.target_label()}")
            if operation == "add":
                for error in (response.json() or {}).get("errors") or []:
                    for email in error.get("email_addresses") or []:
                        record = by_email.get(str(email).strip().lower())
                        if record is not None:
                            reason = self.redact(f"Mailchimp did not add the member: {error.get('error')}")
                            failed.setdefault(
                                record.key, RecordResult(record.key, "rejected", reason, "segment")
                            )
        return BatchOutcome([failed.get(r.key) or RecordResult(r.key, "accepted") for r in records])

    def parse_response(
        self, operation: str, records: Sequence[Record], response: HttpResponse
    ) -> BatchOutcome:
        """Not used: :meth:`deliver_batch` reads each answer itself."""
        raise NotImplementedError

    # -- segments -------------------------------------------------------------------------------------------

    def _find_by_name(self, name: str, transport: Transport) -> str | None:
        found: list[str] = []
        offset = 0
        while True:
            response = transport.send(
                PreparedRequest(
                    "GET",
                    f"/lists/{self.settings.list_id}/segments",
                    params={"type": "static", "count": str(SEGMENTS_PAGE), "offset": str(offset)},
                )
            )
            if response.status != 200:
                raise self.request_error(response, f"reading the segments of list {self.settings.list_id}")
            segments = (response.json() or {}).get("segments") or []
            found += [str(s["id"]) for s in segments if s.get("name") == name]
            if len(segments) < SEGMENTS_PAGE:
                return self._the_one_named(name, found, "Mailchimp static segments")
            offset += SEGMENTS_PAGE

    def _create_named(self, target: AudienceTarget, transport: Transport) -> str:
        response = transport.send(
            PreparedRequest(
                "POST",
                f"/lists/{self.settings.list_id}/segments",
                json={"name": target.name, "static_segment": []},
            )
        )
        body = response.json() or {}
        if response.status != 200 or body.get("id") is None:
            raise self.request_error(response, f"creating the static segment {target.name!r}")
        logger.info("%s: created Mailchimp static segment %r (%s)", self.label, target.name, body["id"])
        return str(body["id"])

    # -- validate --connect -----------------------------------------------------------------------------------

    def check_connection(self, transport: Transport) -> None:
        """The key and the list (``GET /lists/{id}``), and the segment given by id."""
        self._read(transport, f"/lists/{self.settings.list_id}", f"Mailchimp list {self.settings.list_id}")
        target = self.audience_target
        if target is not None and target.id:
            self._read(transport, f"/lists/{self.settings.list_id}/segments/{target.id}", self.target_label())


def mailchimp_value(value: Any) -> Any:
    """A warehouse value as a merge field takes it: numbers as numbers, dates ``YYYY-MM-DD``, else text."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return "" if math.isnan(value) or math.isinf(value) else value
    if isinstance(value, decimal.Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, dt.datetime):
        return value.date().isoformat() if value.time() == dt.time() else value.isoformat()
    if isinstance(value, dt.date):
        return value.isoformat()
    return str(value)


register_platform("mailchimp", MailchimpSettings, Mailchimp)

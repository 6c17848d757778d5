"""All My SMS (allmysms.com, a French SMS provider): contact lists (audiences) of mobile numbers.

A ``type: all_my_sms`` destination (``service: audiences``) fills one contact list of the account: the
activation's ``audience`` (``{name:}``, found among ``GET /contacts/lists`` or created with ``POST
/contacts/lists {"name"}``, or ``{id:}``). Members are added with ``POST /contacts/lists/{id}/contacts
{"contacts": [{"mobile"}]}`` and removed with ``DELETE /contacts/lists/{id}/contacts {"mobiles":
[...]}``, at most 500 numbers per request. Every request carries HTTP Basic auth of the account's login
and API key (``login``, ``api_key`` from ``{env: VAR}``); the API root is ``https://api.allmysms.com``
(``base_url`` overrides it).

Numbers: the ``phone`` identifier is parsed with Google's ``phonenumbers`` (the activation's
``default_country`` for numbers written without ``+``), checked valid, and sent in the provider's
format: E.164 digits without the ``+`` (``33612345678``). An invalid number is rejected before
anything is sent; a number the add answer lists as ``invalid`` is rejected with that reason. Nothing
is hashed: an SMS provider needs the number.

Consent: when the activation maps a column to ``consent`` (``mapping: {sms_optin: consent}``), only
numbers whose column is true (``true``/``1``/``yes``) are added; any other value (false, NULL) keeps
the number out of the list (it is removed if there) and the record is rejected "no SMS consent" (sent
again by the next sync, so a consent given later adds it). Without that mapping the segment itself is
taken as the opt-in list.

All My SMS's documentation this adapter follows:

- the HTTPS API (version 9.0: SMS sending, contact lists, blacklist, login + API key):
  https://www.allmysms.com/api/api-http-envoi-sms-pro and the integration manual
  https://documents.pub/document/api-http-https-all-my-sms-an-sms-contains-160-characters-beyond-160-characters.html
  (French: https://fdocuments.fr/document/automatisez-vos-envois-de-sms-messages-vocaux-intgrer-laenvoi-de-sms-et-de.html)

Assumed, as the contact-list chapter of the manual could not be read: the REST paths and bodies above,
HTTP Basic auth of login and API key, the answers (``{"lists": [{"id", "name"}]}``, ``201 {"id"}``,
``{"added", "invalid": [...]}``, ``{"deleted"}``, errors as ``{"code", "description"}``), the
number format (international digits without ``+``, as French SMS APIs use), 500 numbers per request,
and 5 requests per second (no figure published; ``429`` with ``Retry-After`` is followed).
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field, SecretStr

from dinmo_dagster.platforms import register_platform
from dinmo_dagster.platforms.audiences import AudiencePlatform, AudienceTarget, IdentifierTable
from dinmo_dagster.platforms.base import (
    BatchOutcome,
    HttpResponse,
    Limits,
    PlatformSettings,
    PreparedRequest,
    Record,
    RecordResult,
)
from dinmo_dagster.platforms.dialog_insight import consent_value
from dinmo_dagster.platforms.identifiers import IdentifierSpec, normalize_phone

if TYPE_CHECKING:
    from dinmo_dagster.platforms.http import Transport

__all__ = ["AllMySms", "AllMySmsList", "AllMySmsSettings"]

logger = logging.getLogger("dinmo_dagster.platforms")

MAX_NUMBERS = 500
CONSENT = "consent"
NO_CONSENT = "no SMS consent (the column mapped to consent is not true): not added, removed from the list"


def provider_number(value: str, default_country: str | None) -> str:
    """A valid number as All My SMS takes it: E.164 digits without ``+``."""
    return normalize_phone(value, default_country).removeprefix("+")


IDENTIFIERS = IdentifierTable(
    {"phone": ("mobile", IdentifierSpec("phone", normalize=provider_number))},
    aliases={"mobile": "phone", "phone_number": "phone"},
)


class AllMySmsList(AudienceTarget):
    """An All My SMS contact list: ``{name: ...}`` (created when missing) or ``{id: ...}``."""

    noun: ClassVar[str] = "contact list"


class AllMySmsSettings(PlatformSettings):
    """Settings of a ``type: all_my_sms`` destination."""

    service: Literal["audiences"] = Field(description="audiences (contact lists).")
    login: str = Field(min_length=1, description="The account's login.")
    api_key: SecretStr = Field(description="The account's API key (from {env: VAR}); secret.")
    audience: AllMySmsList | None = Field(default=None, description="The contact list, from the activation.")


class AllMySms(AudiencePlatform):
    """All My SMS contact lists."""

    name = "all_my_sms"
    settings_model = AllMySmsSettings
    services: ClassVar[Mapping[str, tuple[str, ...]]] = {"audiences": ("add", "remove")}
    default_base_url = "https://api.allmysms.com"
    limits = Limits(
        max_records_per_batch=MAX_NUMBERS, requests_per_window=5, window_seconds=1.0, max_concurrency=2
    )
    audience_label = "All My SMS contact list"
    audience_noun = "contact list"
    audiences_taking = "All My SMS contact lists"
    identifier_table = IDENTIFIERS

    settings: AllMySmsSettings

    def auth_headers(self) -> dict[str, str]:
        """HTTP Basic auth of login and API key."""
        pair = f"{self.settings.login}:{self.settings.api_key.get_secret_value()}"
        return {
            "Authorization": "Basic " + base64.b64encode(pair.encode()).decode(),
            "Accept": "application/json",
        }

    def runtime_secrets(self) -> list[str]:
        """The Basic credential (it encodes the key) is masked too."""
        return [self.auth_headers()["Authorization"].removeprefix("Basic ")]

    def validate_activation(self, match: Mapping[str, str], mapping: Mapping[str, str]) -> list[str]:
        """A ``phone`` identifier; the mapping may only name the ``consent`` column."""
        extra = {c: t for c, t in mapping.items() if t != CONSENT}
        problems = super().validate_activation(match, extra)
        return [p.replace("allowed: nothing (", "allowed: {column: consent} only (") for p in problems]

    def record_input(self, operation: str, record: Record) -> Any:
        """The number; for an add, whether the segment says it consented (None: no consent column)."""
        mobile = IDENTIFIERS.by_kind(record.identifiers)["mobile"]
        consented = None if CONSENT not in record.fields else consent_value(record.fields[CONSENT]) == "1"
        return {"mobile": mobile, "consented": consented}

    def _add(self, mobiles: list[str]) -> PreparedRequest:
        return PreparedRequest(
            "POST",
            f"/contacts/lists/{self._audience_ref()}/contacts",
            json={"contacts": [{"mobile": m} for m in mobiles]},
        )

    def _remove(self, mobiles: list[str]) -> PreparedRequest:
        return PreparedRequest(
            "DELETE", f"/contacts/lists/{self._audience_ref()}/contacts", json={"mobiles": mobiles}
        )

    def build_request(
        self, operation: str, inputs: Sequence[Any], records: Sequence[Record]
    ) -> PreparedRequest:
        """The add of the consented numbers (or the removal)."""
        if operation == "remove":
            return self._remove([i["mobile"] for i in inputs])
        return self._add([i["mobile"] for i in inputs if i["consented"] is not False])

    def deliver_batch(
        self, operation: str, records: Sequence[Record], inputs: Sequence[Any], transport: Transport
    ) -> BatchOutcome:
        """Resolve the list; add the consented numbers, remove the others (and the leavers)."""
        self._resolve_audience(transport)
        results: dict[str, RecordResult] = {}
        if operation == "add":
            refused = [(r, i) for r, i in zip(records, inputs) if i["consented"] is False]
            if refused:
                self._check(
                    transport.send(self._remove([i["mobile"] for _, i in refused])), "removing numbers"
                )
                results.update(
                    {r.key: RecordResult(r.key, "rejected", NO_CONSENT, "no SMS consent") for r, _ in refused}
                )
            given = [(r, i) for r, i in zip(records, inputs) if i["consented"] is not False]
            if given:
                response = transport.send(self._add([i["mobile"] for _, i in given]))
                outcome = self.parse_response(operation, [r for r, _ in given], response)
                results.update({res.key: res for res in outcome.results})
        else:
            outcome = self.parse_response(
                operation, records, transport.send(self.build_request(operation, inputs, records))
            )
            results.update({res.key: res for res in outcome.results})
        return BatchOutcome([results[r.key] for r in records])

    def parse_response(
        self, operation: str, records: Sequence[Record], response: HttpResponse
    ) -> BatchOutcome:
        """Numbers the answer lists as ``invalid`` are rejected; the others are done."""
        self._check(response, "adding numbers" if operation == "add" else "removing numbers")
        invalid = {str(m) for m in (response.json() or {}).get("invalid") or []}
        by_key = {r.key: IDENTIFIERS.by_kind(r.identifiers)["mobile"] for r in records}
        return BatchOutcome(
            [
                RecordResult(r.key, "rejected", "All My SMS refused the number as invalid", "invalid number")
                if by_key[r.key] in invalid
                else RecordResult(r.key, "accepted")
                for r in records
            ]
        )

    def _check(self, response: HttpResponse, what: str) -> None:
        if response.status == 404:
            raise self.request_error(response, f"{what} of {self.target_label()} (check the audience's id)")
        if response.status not in (200, 201):
            raise self.request_error(response, f"{what} of {self.target_label()}")

    def error_message(self, response: HttpResponse) -> str:
        """``description`` (with ``code``) of an error answer."""
        body = response.json()
        if isinstance(body, dict) and body.get("description"):
            return self.redact(f"{body.get('code') or 'error'}: {body['description']}")
        return super().error_message(response)

    # -- lists ---------------------------------------------------------------------------------------------

    def _find_by_name(self, name: str, transport: Transport) -> str | None:
        response = transport.send(PreparedRequest("GET", "/contacts/lists"))
        if response.status != 200:
            raise self.request_error(response, "reading the contact lists (GET /contacts/lists)")
        lists = (response.json() or {}).get("lists") or []
        return self._the_one_named(
            name, [str(item["id"]) for item in lists if item.get("name") == name], "All My SMS contact lists"
        )

    def _create_named(self, target: AudienceTarget, transport: Transport) -> str:
        response = transport.send(PreparedRequest("POST", "/contacts/lists", json={"name": target.name}))
        body = response.json() or {}
        if response.status not in (200, 201) or body.get("id") is None:
            raise self.request_error(response, f"creating the contact list {target.name!r}")
        logger.info("%s: created All My SMS contact list %r (%s)", self.label, target.name, body["id"])
        return str(body["id"])

    def check_connection(self, transport: Transport) -> None:
        """The credentials (``GET /contacts/lists``) and the list given by id."""
        self._read(transport, "/contacts/lists", "the All My SMS contact lists")
        target = self.audience_target
        if target is not None and target.id:
            self._read(transport, f"/contacts/lists/{target.id}", self.target_label())


register_platform("all_my_sms", AllMySmsSettings, AllMySms)

"""A local fake of Splio's Data API (Splio Customer Platform): authentication, contacts, custom fields.

Serves on ``127.0.0.1`` and keeps what the universe would hold: contacts by e-mail (native fields, custom
field values by id, list memberships), the JWTs it issued, every request.

Contract (from Splio's pages, cited in ``dinmo_dagster/platforms/splio.py``):

* ``POST /authenticate`` ``{"api_key"}`` -> ``200 {"token": <JWT>}`` (a wrong key: ``401``). Every other call
  needs ``Authorization: Bearer <JWT>`` of an unexpired token (:meth:`SplioFake.expire_tokens` ends them all):
  else ``401``.
* ``POST /data/contacts/bulk`` ``{"contacts": [...]}`` at most 1,000 (more: ``400``): a malformed e-mail (no top-level domain of
  two letters or more) is a ``400`` for the whole call naming ``contacts[<n>].email`` (``wrong_email``); otherwise ``200`` (all created)
  or ``207`` with ``items`` (``contact_id``, ``code``, ``description``): an existing e-mail is ``400``
  "contact with unique key ... already exists", an unknown custom field ``400`` "Custom field not found for
  id <n>.", a value of the wrong type ``400`` "Custom field with id <n> and name <name> must be of type
  <type>.".
* ``PATCH /data/contacts/{email}``: ``404`` "Record not found for id {...}." when unknown; ``400`` for the
  custom field cases above; ``lists`` replace every membership; else ``200``.
* ``DELETE /data/contacts/bulk`` ``{"contacts": [<email>...]}`` at most 1,000: ``200`` or ``207`` with an item
  ``400`` "Contact not found for id ..." per unknown e-mail.
* ``GET /data/contacts/fields`` -> ``[{"id", "name", "data_type"}]``.
* :meth:`SplioFake.throttle` answers the next calls ``429`` with ``Retry-After``.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from dinmo_dagster.fakes.server import FakeRequest, FakeResponse
from fakes.common import RecordingFake

MAX_BULK = 1_000
NATIVE = ("firstname", "lastname", "cellphone", "language", "date")
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[A-Za-z]{2,}")  # a top-level domain of 2 letters or more


@dataclass
class Contact:
    """One contact of the universe."""

    email: str
    fields: dict[str, Any] = field(default_factory=dict)
    custom: dict[int, Any] = field(default_factory=dict)
    lists: set[int] = field(default_factory=set)


def _error(status: int, key: str | None, error: str, description: str) -> FakeResponse:
    return FakeResponse(
        status,
        {"status": status, "errors": [{"error_key": key, "error": error, "error_description": description}]},
    )


class SplioFake(RecordingFake):
    """Splio's Data API in memory, on loopback (a context manager)."""

    def __init__(
        self, api_key: str, *, custom_fields: dict[int, tuple[str, str]] | None = None, latency: float = 0.0
    ) -> None:
        self.api_key = api_key
        self.custom_fields = custom_fields if custom_fields is not None else {5: ("loyalty_tier", "string"),
                                                                               7: ("ltv", "double")}  # fmt: skip
        self.contacts: dict[str, Contact] = {}
        self.tokens: set[str] = set()
        self._ids = itertools.count(1)
        super().__init__(latency)

    def add_contact(self, email: str, **fields: Any) -> Contact:
        """A contact the universe already holds."""
        with self._lock:
            contact = self.contacts[email] = Contact(email, dict(fields))
            return contact

    def expire_tokens(self) -> None:
        """Every JWT issued so far expires (as after an hour)."""
        with self._lock:
            self.tokens.clear()

    def view(self) -> dict[str, dict[str, Any]]:
        """Every contact's native fields and custom fields (``custom_fields.<id>``), by e-mail."""
        return {
            c.email: {**c.fields, **{f"custom_fields.{k}": v for k, v in c.custom.items()}}
            for c in self.contacts.values()
        }

    # -- serving ------------------------------------------------------------------------------------------

    def _answer(self, request: FakeRequest) -> FakeResponse:
        if request.path == "/authenticate" and request.method == "POST":
            if (request.json or {}).get("api_key") != self.api_key:
                return _error(401, "api_key", "wrong_value", "Authentication failed.")
            token = f"eyJhbGciOiJIUzI1NiJ9.t{next(self._ids)}.sig"
            self.tokens.add(token)
            return FakeResponse(200, {"token": token})
        token = (request.headers.get("authorization") or "").removeprefix("Bearer ")
        if token not in self.tokens:
            return _error(401, None, "unauthorized", "Expired JWT Token")
        if self._throttled:
            self._throttled -= 1
            return FakeResponse(429, {"status": 429, "errors": []}, headers={"Retry-After": "0"})
        body = request.json or {}
        if request.path == "/data/contacts/fields" and request.method == "GET":
            return FakeResponse(
                200, [{"id": k, "name": n, "data_type": t} for k, (n, t) in self.custom_fields.items()]
            )
        if request.path == "/data/contacts/bulk" and request.method == "POST":
            return self._create(body.get("contacts") or [])
        if request.path == "/data/contacts/bulk" and request.method == "DELETE":
            return self._delete(body.get("contacts") or [])
        m = re.fullmatch(r"/data/contacts/([^/]+)", request.path)
        if m and request.method == "PATCH":
            return self._edit(unquote(m.group(1)), body)
        return _error(404, None, "not_found", f"{request.method} {request.path} is not an endpoint")

    def _check(self, contact: dict[str, Any]) -> str | None:
        for item in contact.get("custom_fields") or []:
            known = self.custom_fields.get(item.get("id"))
            if known is None:
                return f"Custom field not found for id {item.get('id')}."
            value = item.get("value")
            if known[1] == "double" and value != "" and not isinstance(value, (int, float)):
                return f"Custom field with id {item['id']} and name {known[0]} must be of type double."
        return None

    def _apply(self, target: Contact, contact: dict[str, Any]) -> None:
        for name in NATIVE:
            if name in contact:
                if contact[name] == "":
                    target.fields.pop(name, None)
                else:
                    target.fields[name] = contact[name]
        for item in contact.get("custom_fields") or []:
            if item["value"] == "":
                target.custom.pop(item["id"], None)
            else:
                target.custom[item["id"]] = item["value"]
        if "lists" in contact:
            target.lists = {int(x["id"]) for x in contact["lists"]}

    def _create(self, contacts: list[dict[str, Any]]) -> FakeResponse:
        if len(contacts) > MAX_BULK:
            return _error(400, "contacts", "wrong_value", f"at most {MAX_BULK} contacts")
        for n, contact in enumerate(contacts):
            if not _EMAIL.fullmatch(str(contact.get("email") or "")):
                return _error(
                    400, f"contacts[{n}].email", "wrong_email", "The email given should have the right format"
                )
        items = []
        for contact in contacts:
            email = contact["email"]
            if email in self.contacts:
                items.append({"contact_id": email, "code": 400,
                              "description": f"contact with unique key {email} already exists"})  # fmt: skip
                continue
            problem = self._check(contact)
            if problem:
                items.append({"contact_id": email, "code": 400, "description": problem})
                continue
            self._apply(self.contacts.setdefault(email, Contact(email)), contact)
            items.append({"contact_id": email, "code": 201, "description": ""})
        errors = sum(1 for i in items if i["code"] >= 300)
        return FakeResponse(
            207 if errors else 200, {"time": 12, "errors": errors, "status": None, "items": items}
        )

    def _edit(self, email: str, contact: dict[str, Any]) -> FakeResponse:
        target = self.contacts.get(email)
        if target is None:
            return _error(404, "id", "wrong_value", f"Record not found for id {{{email}}}.")
        if "email" in contact and contact["email"] != email:
            return _error(400, "unique_key", "wrong_value", 'unique key "email" can\'t be updated')
        problem = self._check(contact)
        if problem:
            return _error(400, "custom_fields", "wrong_type", problem)
        self._apply(target, contact)
        return FakeResponse(200, {"email": email})

    def _delete(self, emails: list[Any]) -> FakeResponse:
        if len(emails) > MAX_BULK:
            return _error(400, "contacts", "wrong_value", f"at most {MAX_BULK} contacts")
        items = []
        for email in emails:
            if self.contacts.pop(str(email), None) is None:
                items.append(
                    {"contact_id": email, "code": 400, "description": f"Contact not found for id {email}"}
                )
            else:
                items.append({"contact_id": email, "code": 204, "description": ""})
        errors = sum(1 for i in items if i["code"] >= 300)
        return FakeResponse(
            207 if errors else 200, {"time": 9, "errors": errors, "status": None, "items": items}
        )

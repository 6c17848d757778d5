"""A local fake of the Emarsys Core API (OpenID Connect credentials): the token endpoint, contacts,
contact fields, contact lists and relational-data rows.

Serves on ``127.0.0.1`` (a free port), keeps everything in memory, and lets a test assert what Emarsys
would hold: contacts (their field values by field id), lists and their members, table rows, every
request.

Contract (from Emarsys's pages, cited in ``dinmo_dagster/platforms/emarsys.py``):

* **Token** -- ``POST /oauth2/token``, the client in an HTTP Basic header, ``grant_type=client_credentials``:
  ``{"access_token", "token_type": "bearer", "expires_in"}``; a wrong client is HTTP 401
  ``invalid_client``. An API call without a valid bearer token is HTTP 401 ``{"replyCode": 1,
  "replyText": "Unauthorized", "data": ""}``.
* **Answers** -- ``{"replyCode", "replyText", "data"}``.
* **Fields** -- ``GET /field``: ``data: [{"id", "name", "application_type", "string_id"}]``.
* **Contacts** -- ``PUT /contact/`` (``?create_if_not_exists=1`` creates the missing ones, else error
  2008), ``POST /contact`` (creates; an existing key is error 2009) with ``{"key_id", "contacts"}``: a
  body over 8 MB is HTTP 400; per-contact errors go in ``data.errors`` keyed by the key value (HTTP 400
  when no contact succeeded); a ``null`` value empties the field; an unknown field id is error 2005
  (assumed). ``POST /contact/delete`` ``{"key_id", "<key_id>": value}``: a missing contact is HTTP 400
  replyCode 2008.
* **Lists** -- ``GET /contactlist`` (every list), ``POST /contactlist`` ``{"key_id", "name",
  "external_ids"}`` (a taken name is HTTP 400 3005), ``POST /contactlist/{id}/add`` | ``/delete`` with
  ``{"key_id", "external_ids"}``: more than 10,000 ids is HTTP 400 3002, an unknown list HTTP 400 3004;
  an id of no contact is error 2008 in ``data.errors``.
* **Relational data (assumed contract)** -- ``PUT /rds/connections/{c}/tables/{t}/records`` and ``POST
  .../records/delete`` with ``{"keys", "records"}``; errors keyed by the key values joined with ``|``.
* **Rate limit** -- 1,000 requests per minute; past it (or when :meth:`EmarsysFake.throttle` says) HTTP
  429 with ``X-RateLimit-Limit``, ``X-Ratelimit-Remaining: 0`` and ``X-Ratelimit-Reset`` (seconds).
"""

from __future__ import annotations

import base64
import itertools
import re
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from dinmo_dagster.fakes.server import FakeRequest, FakeResponse
from fakes.oauth_token import OAuthTokenFake, token_form

MAX_BODY = 8 * 1024 * 1024
MAX_LIST_IDS = 10_000
RATE = 1_000
FIELDS = [
    {"id": 1, "name": "First Name", "application_type": "shorttext", "string_id": "first_name"},
    {"id": 2, "name": "Last Name", "application_type": "shorttext", "string_id": "last_name"},
    {"id": 3, "name": "Email", "application_type": "email", "string_id": "email"},
    {"id": 31, "name": "Opt-in", "application_type": "singlechoice", "string_id": "optin"},
    {"id": 4711, "name": "Lifetime value", "application_type": "numeric", "string_id": "ltv"},
    {"id": 9001, "name": "External id", "application_type": "shorttext", "string_id": "external_id"},
]


@dataclass
class ContactList:
    """One contact list and the e-mails of its members."""

    id: int
    name: str
    members: set[str] = field(default_factory=set)


def reply(
    status: int, code: int, text: str, data: Any = "", headers: dict[str, str] | None = None
) -> FakeResponse:
    """An Emarsys answer."""
    return FakeResponse(status, {"replyCode": code, "replyText": text, "data": data}, headers=headers or {})


class EmarsysFake(OAuthTokenFake):
    """The Emarsys Core API in memory, served on loopback (a context manager)."""

    token_path = "/oauth2/token"

    def __init__(
        self, client_id: str, client_secret: str, *, token_lifetime: float = 3600.0, reset: str = "0.05",
        latency: float = 0.0,
    ) -> None:  # fmt: skip
        super().__init__(token_lifetime=token_lifetime)
        self.client_id = client_id
        self.client_secret = client_secret
        self.reset = reset
        self.latency = latency
        self.contacts: list[dict[str, Any]] = []  # each: field id (text) -> value
        self.lists: dict[int, ContactList] = {}
        self.rows: dict[str, dict[tuple[str, ...], dict[str, Any]]] = {}  # "connection.table" -> key -> row
        self._ids = itertools.count(700)
        self._failing: dict[str, tuple[str, str]] = {}
        self._window: deque[float] = deque()
        self._by_email: dict[str, dict[str, Any]] = {}  # index of the contacts by field 3

    # -- what tests arrange and read ----------------------------------------------------------------------

    def add_contact(self, email: str, **fields: Any) -> dict[str, Any]:
        """A contact Emarsys already holds (fields by id: ``add_contact(e, **{"1": "Ann"})``)."""
        with self._lock:
            contact = {"3": email, **fields}
            self.contacts.append(contact)
            self._by_email[email] = contact
            return contact

    def contact(self, value: str, key_id: str = "3") -> dict[str, Any] | None:
        """The contact whose field ``key_id`` is ``value``."""
        if key_id == "3":
            found = self._by_email.get(value)
            return found if found is not None and found.get("3") == value else None
        return next((c for c in self.contacts if str(c.get(key_id)) == value), None)

    def by_email(self) -> dict[str, dict[str, Any]]:
        """Every contact's fields but the e-mail, by e-mail."""
        return {c["3"]: {k: v for k, v in c.items() if k != "3"} for c in self.contacts}

    def create_list(self, name: str) -> ContactList:
        """A list already in the account."""
        with self._lock:
            made = ContactList(next(self._ids), name)
            self.lists[made.id] = made
            return made

    def list_named(self, name: str) -> ContactList | None:
        """The list of that name, if any."""
        return next((c for c in self.lists.values() if c.name == name), None)

    def fail_keys(self, code: str, message: str, *keys: str) -> None:
        """The next contact or row request naming these key values refuses them (once) with ``code``."""
        with self._lock:
            self._failing.update(dict.fromkeys(keys, (code, message)))

    # -- serving ------------------------------------------------------------------------------------------

    def _token(self, request: FakeRequest) -> FakeResponse:
        expected = base64.b64encode(f"{self.client_id}:{self.client_secret}".encode()).decode()
        if request.headers.get("authorization") != f"Basic {expected}":
            return FakeResponse(
                401, {"error": "invalid_client", "error_description": "Client authentication failed"}
            )
        if token_form(request).get("grant_type") != "client_credentials":
            return FakeResponse(
                400, {"error": "unsupported_grant_type", "error_description": "Unsupported grant"}
            )
        token = self._issue("emarsys", "e")
        return FakeResponse(
            200, {"access_token": token, "token_type": "bearer", "expires_in": int(self.token_lifetime)}
        )

    def _api(self, request: FakeRequest) -> FakeResponse:
        if self.latency:
            self._lock.release()
            try:
                time.sleep(self.latency)  # outside the lock: requests overlap as they would at Emarsys
            finally:
                self._lock.acquire()
        if not self._bearer_ok(request):
            return reply(401, 1, "Unauthorized")
        now = time.monotonic()
        while self._window and self._window[0] <= now - 60.0:
            self._window.popleft()
        headers = {"X-RateLimit-Limit": str(RATE), "X-Ratelimit-Reset": self.reset}
        if self._throttled or len(self._window) >= RATE:
            self._throttled = max(0, self._throttled - 1)
            return reply(429, 429, "Too Many Requests", headers={**headers, "X-Ratelimit-Remaining": "0"})
        self._window.append(now)
        response = self._planned_failure(request) or self._route(request)
        response.headers.update({**headers, "X-Ratelimit-Remaining": str(RATE - len(self._window))})
        return response

    def _route(self, request: FakeRequest) -> FakeResponse:
        method, path = request.method, request.path.rstrip("/")
        if len(request.raw_body) > MAX_BODY:
            return reply(400, 10001, "Request body exceeds the maximum size of 8 MB")
        body = request.json if request.raw_body else None
        if path == "/settings" and method == "GET":
            return reply(200, 0, "OK", {"id": 1, "environment": "suite1.emarsys.net"})
        if path == "/field" and method == "GET":
            return reply(200, 0, "OK", FIELDS)
        if path == "/contact" and method in ("PUT", "POST"):
            create = method == "POST" or request.query.get("create_if_not_exists") == "1"
            return self._contacts(body or {}, create=create, update=method == "PUT")
        if path == "/contact/delete" and method == "POST":
            key_id = str((body or {}).get("key_id") or "3")
            value = str((body or {}).get(key_id))
            found = self.contact(value, key_id)
            if found is None:
                return reply(400, 2008, f"No contact found with the external id: {key_id} - {value}")
            self.contacts.remove(found)
            self._by_email.pop(str(found.get("3")), None)
            for members in self.lists.values():
                members.members.discard(str(found.get("3")))
            return reply(200, 0, "OK", {"deleted_contacts": 1})
        if path == "/contactlist" and method == "GET":
            return reply(200, 0, "OK", [{"id": str(c.id), "name": c.name, "created": "2026-01-01 00:00:00"}
                                        for c in self.lists.values()])  # fmt: skip
        if path == "/contactlist" and method == "POST":
            name = (body or {}).get("name")
            if self.list_named(name) is not None:
                return reply(400, 3005, "Contact list with the requested name already exists.")
            made = ContactList(next(self._ids), name)
            self.lists[made.id] = made
            return reply(200, 0, "OK", {"id": made.id, "errors": []})
        if m := re.fullmatch(r"/contactlist/(\d+)/(add|delete)", path):
            return self._members(int(m.group(1)), m.group(2), body or {})
        if m := re.fullmatch(r"/rds/connections/([\w.-]+)/tables/([\w.-]+)/records(/delete)?", path):
            return self._rows(f"{m.group(1)}.{m.group(2)}", bool(m.group(3)), body or {})
        return reply(404, 404, f"{method} {path} is not an endpoint")

    def _contacts(self, body: dict[str, Any], *, create: bool, update: bool) -> FakeResponse:
        key_id = str(body.get("key_id") or "3")
        known = {str(f["id"]) for f in FIELDS}
        ids, errors = [], {}
        for row in body.get("contacts") or []:
            value = str(row.get(key_id))
            if value in self._failing:
                code, message = self._failing.pop(value)
                errors[value] = {code: message}
                continue
            unknown = next((k for k in row if k not in known), None)
            if unknown is not None:
                errors[value] = {"2005": f"Invalid field ID: {unknown}"}
                continue
            contact = self.contact(value, key_id)
            if contact is None and not create:
                errors[value] = {"2008": f"No contact found with the external id: {key_id} - {value}"}
                continue
            if contact is not None and not update:
                errors[value] = {"2009": f"Contact with the external id already exists: {key_id}"}
                continue
            if contact is None:
                contact = {}
                self.contacts.append(contact)
            for field_id, field_value in row.items():
                if field_value is None:
                    contact.pop(field_id, None)
                else:
                    contact[field_id] = field_value
            if "3" in contact:
                self._by_email[str(contact["3"])] = contact
            ids.append(len(self.contacts))
        rows = body.get("contacts") or []
        status = 400 if rows and not ids else 200
        return reply(status, 0 if status == 200 else 2008, "OK" if status == 200 else "No contact was updated",
                     {"ids": ids, "errors": errors or []})  # fmt: skip

    def _members(self, list_id: int, action: str, body: dict[str, Any]) -> FakeResponse:
        found = self.lists.get(list_id)
        if found is None:
            return reply(400, 3004, f"Invalid contact list id: {list_id}")
        external = body.get("external_ids")
        if not isinstance(external, list):
            return reply(400, 3003, "Invalid datatype for the list of external IDs. Array expected.")
        if len(external) > MAX_LIST_IDS:
            return reply(400, 3002, "The list of external IDs exceeds the maximum size.")
        key_id = str(body.get("key_id") or "3")
        done, errors = 0, {}
        for value in map(str, external):
            contact = self.contact(value, key_id)
            if contact is None:
                errors[value] = {"2008": f"No contact found with the external id: {key_id} - {value}"}
            elif action == "add":
                found.members.add(str(contact["3"]))
                done += 1
            elif str(contact["3"]) in found.members:
                found.members.discard(str(contact["3"]))
                done += 1
        count = "inserted_contacts" if action == "add" else "deleted_contacts"
        return reply(200, 0, "OK", {count: done, "errors": errors or []})

    def _rows(self, table: str, delete: bool, body: dict[str, Any]) -> FakeResponse:
        keys = body.get("keys")
        if not isinstance(keys, list) or not keys:
            return reply(400, 4002, "keys is required")
        rows, errors = self.rows.setdefault(table, {}), {}
        for row in body.get("records") or []:
            key = tuple(str(row.get(k)) for k in keys)
            joined = "|".join(key)
            if joined in self._failing:
                code, message = self._failing.pop(joined)
                errors[joined] = {code: message}
            elif delete:
                rows.pop(key, None)
            else:
                rows[key] = {**rows.get(key, {}), **row}
        return reply(200, 0, "OK", {"errors": errors or []})

"""A local fake of Intercom's REST API (version 2.14): contacts, their search, archive and tags, companies,
data attributes.

Serves on ``127.0.0.1`` (a free port), keeps everything in memory, and lets a test assert what an Intercom
workspace would hold: contacts (role, e-mail, external id, fields, custom attributes, tags, archived),
tags, companies, every request.

Contract (from Intercom's OpenAPI description and reference, cited in
``dinmo_dagster/platforms/intercom.py``):

* **Auth** -- ``Authorization: Bearer <token>``; a missing or wrong token is HTTP 401 ``{"type":
  "error.list", "request_id", "errors": [{"code": "unauthorized", "message": "Access Token Invalid"}]}``.
  An ``Intercom-Version`` outside the published versions is HTTP 400 ``intercom_version_invalid``.
* **Rate limit** -- every answer carries ``X-RateLimit-Limit`` / ``-Remaining`` / ``-Reset`` (a Unix
  time, the end of the 10-second window); :meth:`IntercomFake.throttle` answers the next calls with HTTP
  429 ``rate_limit_exceeded`` (``Remaining: 0``, ``Reset`` 0.05 s ahead).
* **Contacts** -- ``POST /contacts`` (``role``, ``email``, ``external_id``, own fields,
  ``custom_attributes``): an e-mail or external id another contact of the role holds is HTTP 409
  ``conflict`` "A contact matching those details already exists with id=<id>"; a custom attribute the
  workspace does not define is HTTP 400 ``parameter_not_found``; ``PUT /contacts/{id}`` updates (404
  ``not_found`` "User Not Found"); ``POST /contacts/search`` takes a single filter or ``AND``/``OR`` of
  filters (``=``, ``IN``), ``pagination.per_page`` at most 150 with ``starting_after`` cursors, and
  leaves out archived contacts and those created less than :attr:`IntercomFake.search_delay` seconds
  ago (Intercom documents that delay); ``POST /contacts/{id}/archive``.
* **Tags** -- ``GET /tags``, ``GET /tags/{id}``, ``POST /tags {"name"}`` (create, or the existing tag of
  that name, case-insensitive), ``POST /contacts/{id}/tags {"id"}`` (404 "User Not Found" / "Resource Not
  Found" for the tag), ``DELETE /contacts/{id}/tags/{tag_id}`` (404 when the contact does not carry it).
* **Companies** -- ``POST /companies`` creates or updates by ``company_id``; ``GET
  /companies?company_id=`` (404 ``company_not_found``); ``DELETE /companies/{id}``.
* **Data attributes** -- ``GET /data_attributes?model=contact|company``; ``GET /me``.
"""

from __future__ import annotations

import itertools
import re
import time
from dataclasses import dataclass, field
from typing import Any

from dinmo_dagster.fakes.server import FakeRequest, FakeResponse
from fakes.common import RecordingFake

VERSIONS = {"1.0", "1.1", "1.2", "1.3", "1.4", "2.0", "2.1", "2.2", "2.3", "2.4", "2.5", "2.6", "2.7", "2.8", "2.9",
            "2.10", "2.11", "2.12", "2.13", "2.14"}  # fmt: skip
MAX_PAGE = 150
LIMIT = 1666
CONTACT_OWN = ("name", "phone", "avatar", "signed_up_at", "last_seen_at", "owner_id", "unsubscribed_from_emails",
               "language_override")  # fmt: skip
COMPANY_OWN = ("name", "plan", "size", "website", "industry", "remote_created_at", "monthly_spend")


@dataclass
class Contact:
    """One Intercom contact."""

    id: str
    role: str
    email: str | None = None
    external_id: str | None = None
    fields: dict[str, Any] = field(default_factory=dict)
    custom_attributes: dict[str, Any] = field(default_factory=dict)
    tags: set[str] = field(default_factory=set)
    archived: bool = False
    created: float = 0.0

    def view(self) -> dict[str, Any]:
        return {
            "type": "contact",
            "id": self.id,
            "role": self.role,
            "email": self.email,
            "external_id": self.external_id,
            **self.fields,
            "custom_attributes": dict(self.custom_attributes),
        }


@dataclass
class Company:
    """One Intercom company."""

    id: str
    company_id: str
    fields: dict[str, Any] = field(default_factory=dict)
    custom_attributes: dict[str, Any] = field(default_factory=dict)


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> FakeResponse:
    body = {"type": "error.list", "request_id": "0b5a4c6e-1d2f-4a3b-9c8d-7e6f5a4b3c2d",
            "errors": [{"code": code, "message": message}]}  # fmt: skip
    return FakeResponse(status, body, headers=headers or {})


class IntercomFake(RecordingFake):
    """An Intercom workspace in memory, served on loopback (a context manager)."""

    def __init__(
        self,
        token: str,
        *,
        contact_attributes: tuple[str, ...] = ("plan", "ltv"),
        company_attributes: tuple[str, ...] = ("tier",),
        latency: float = 0.0,
        search_delay: float = 0.0,
    ) -> None:
        self.token = token
        self.contact_attributes = list(contact_attributes)
        self.company_attributes = list(company_attributes)
        self.search_delay = search_delay
        self.contacts: dict[str, Contact] = {}
        self.tags: dict[str, str] = {}  # id -> name
        self.companies: dict[str, Company] = {}
        self._ids = itertools.count(0x6762F0CD1BB69F9F2193BB00)
        self._tag_ids = itertools.count(81)
        self._window_end = time.time() + 10
        self._used = 0
        super().__init__(latency)

    # -- what tests arrange and read ------------------------------------------------------------------

    def add_contact(self, email: str | None, role: str = "user", external_id: str | None = None,
                    **custom: Any) -> Contact:  # fmt: skip
        """A contact the workspace already holds (searchable at once)."""
        with self._lock:
            contact = Contact(
                f"{next(self._ids):x}", role, email, external_id, custom_attributes=dict(custom)
            )
            self.contacts[contact.id] = contact
            return contact

    def live(self) -> list[Contact]:
        """The contacts not archived."""
        return [c for c in self.contacts.values() if not c.archived]

    def by_email(self, email: str) -> Contact | None:
        """The live contact of that e-mail, if any."""
        return next((c for c in self.live() if c.email == email), None)

    def create_tag(self, name: str) -> str:
        """A tag already in the workspace; its id."""
        with self._lock:
            tag_id = str(next(self._tag_ids))
            self.tags[tag_id] = name
            return tag_id

    def tagged(self, tag_id: str) -> set[str]:
        """The e-mails of the live contacts carrying the tag."""
        return {c.email or c.external_id or c.id for c in self.live() if tag_id in c.tags}

    def tag_named(self, name: str) -> str | None:
        """The id of the tag of that name, if any."""
        return next((i for i, n in self.tags.items() if n.lower() == name.lower()), None)

    # -- serving ------------------------------------------------------------------------------------------

    def _answer(self, request: FakeRequest) -> FakeResponse:
        if request.headers.get("authorization") != f"Bearer {self.token}":
            return _error(401, "unauthorized", "Access Token Invalid")
        version = request.headers.get("intercom-version")
        if version is not None and version not in VERSIONS:
            return _error(400, "intercom_version_invalid", f"Requested version {version} is not valid")
        now = time.time()
        if now >= self._window_end:
            self._window_end, self._used = now + 10, 0
        if self._throttled:
            self._throttled -= 1
            reset = f"{now + 0.05:.3f}"
            return _error(
                429,
                "rate_limit_exceeded",
                "Rate Limit Exceeded",
                {"X-RateLimit-Limit": str(LIMIT), "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": reset},
            )
        self._used += 1
        response = self._route(request)
        response.headers.update({"X-RateLimit-Limit": str(LIMIT), "X-RateLimit-Remaining": str(max(0, LIMIT - self._used)),
                                 "X-RateLimit-Reset": str(int(self._window_end))})  # fmt: skip
        return response

    def _route(self, request: FakeRequest) -> FakeResponse:
        method, path, body = request.method, request.path, request.json
        if path == "/me" and method == "GET":
            return FakeResponse(
                200, {"type": "admin", "id": "991", "app": {"type": "app", "id_code": "abc123"}}
            )
        if path == "/data_attributes" and method == "GET":
            model = request.query.get("model", "contact")
            own = CONTACT_OWN if model == "contact" else COMPANY_OWN
            custom = self.contact_attributes if model == "contact" else self.company_attributes
            data = [{"type": "data_attribute", "model": model, "name": n, "full_name": n, "custom": False,
                     "api_writable": n not in ("avatar",), "data_type": "string"} for n in own]  # fmt: skip
            data += [{"type": "data_attribute", "model": model, "name": n, "full_name": f"custom_attributes.{n}",
                      "custom": True, "api_writable": True, "data_type": "string"} for n in custom]  # fmt: skip
            data.append({"type": "data_attribute", "model": model, "name": "created_at", "full_name": "created_at",
                         "custom": False, "api_writable": False, "data_type": "date"})  # fmt: skip
            return FakeResponse(200, {"type": "list", "data": data})
        if path == "/contacts" and method == "POST":
            return self._create(body or {})
        if path == "/contacts/search" and method == "POST":
            return self._search(body or {})
        if m := re.fullmatch(r"/contacts/(\w+)", path):
            contact = self.contacts.get(m.group(1))
            if contact is None or contact.archived:
                return _error(404, "not_found", "User Not Found")
            if method == "PUT":
                problem = self._apply(contact, body or {})
                return problem or FakeResponse(200, contact.view())
            return FakeResponse(200, contact.view())
        if m := re.fullmatch(r"/contacts/(\w+)/archive", path):
            contact = self.contacts.get(m.group(1))
            if contact is None:
                return _error(404, "not_found", "User Not Found")
            contact.archived = True
            return FakeResponse(200, {"id": contact.id, "external_id": contact.external_id, "type": "contact",
                                      "archived": True})  # fmt: skip
        if m := re.fullmatch(r"/contacts/(\w+)/tags(?:/(\w+))?", path):
            return self._tagging(
                method, m.group(1), (body or {}).get("id") if m.group(2) is None else m.group(2)
            )
        if path == "/tags" and method == "GET":
            return FakeResponse(200, {"type": "list", "data": [{"type": "tag", "id": i, "name": n}
                                                               for i, n in self.tags.items()]})  # fmt: skip
        if path == "/tags" and method == "POST":
            name = (body or {}).get("name")
            if not name:
                return _error(400, "parameter_invalid", "invalid tag parameters")
            tag_id = self.tag_named(name)
            if tag_id is None:
                tag_id = str(next(self._tag_ids))
                self.tags[tag_id] = name
            return FakeResponse(200, {"type": "tag", "id": tag_id, "name": self.tags[tag_id]})
        if m := re.fullmatch(r"/tags/(\w+)", path):
            if m.group(1) not in self.tags:
                return _error(404, "not_found", "Resource Not Found")
            return FakeResponse(200, {"type": "tag", "id": m.group(1), "name": self.tags[m.group(1)]})
        if path == "/companies" and method == "POST":
            return self._company(body or {})
        if path == "/companies" and method == "GET":
            company = next(
                (c for c in self.companies.values() if c.company_id == request.query.get("company_id")), None
            )
            if company is None:
                return _error(404, "company_not_found", "Company Not Found")
            return FakeResponse(200, {"type": "company", "id": company.id, "company_id": company.company_id})
        if (m := re.fullmatch(r"/companies/(\w+)", path)) and method == "DELETE":
            if self.companies.pop(m.group(1), None) is None:
                return _error(404, "company_not_found", "Company Not Found")
            return FakeResponse(200, {"id": m.group(1), "object": "company", "deleted": True})
        return _error(404, "not_found", f"{method} {path} is not an endpoint")

    def _apply(self, contact: Contact, body: dict[str, Any]) -> FakeResponse | None:
        custom = body.get("custom_attributes") or {}
        unknown = [k for k in custom if k not in self.contact_attributes]
        if unknown:
            return _error(400, "parameter_not_found", f"Custom attribute '{unknown[0]}' does not exist")
        for name, value in body.items():
            if name in CONTACT_OWN:
                contact.fields[name] = value
        contact.custom_attributes.update(custom)
        return None

    def _create(self, body: dict[str, Any]) -> FakeResponse:
        role = body.get("role", "user")
        email, external_id = body.get("email"), body.get("external_id")
        if not email and not external_id:
            return _error(400, "parameter_invalid", "Email, external_id or role=lead is required")
        if email and not re.fullmatch(r"[^@\s]+@[^@\s]+\.[^@\s]+", email):
            return _error(400, "parameter_invalid", "Invalid email")
        for other in self.live():
            if other.role == role and (
                (email and other.email == email) or (external_id and other.external_id == external_id)
            ):
                return _error(
                    409, "conflict", f"A contact matching those details already exists with id={other.id}"
                )
        contact = Contact(f"{next(self._ids):x}", role, email, external_id, created=time.monotonic())
        problem = self._apply(contact, body)
        if problem is not None:
            return problem
        self.contacts[contact.id] = contact
        return FakeResponse(200, contact.view())

    def _matches(self, contact: Contact, query: dict[str, Any]) -> bool | None:
        operator, value = query.get("operator"), query.get("value")
        if operator in ("AND", "OR"):
            if not isinstance(value, list) or len(value) > 15:
                return None
            results = [self._matches(contact, q) for q in value]
            if None in results:
                return None
            return all(results) if operator == "AND" else any(results)
        attribute = contact.view().get(query.get("field", ""))
        if operator == "=":
            return attribute == value
        if operator == "IN":
            return isinstance(value, list) and attribute in value
        return None

    def _search(self, body: dict[str, Any]) -> FakeResponse:
        query = body.get("query")
        pagination = body.get("pagination") or {}
        per_page = int(pagination.get("per_page", 50))
        if not isinstance(query, dict) or per_page > MAX_PAGE:
            return _error(400, "parameter_invalid", f"per_page must be at most {MAX_PAGE}" if per_page > MAX_PAGE
                          else "query is required")  # fmt: skip
        now = time.monotonic()
        hits = []
        for contact in self.live():
            if contact.created and now - contact.created < self.search_delay:
                continue
            verdict = self._matches(contact, query)
            if verdict is None:
                return _error(400, "parameter_invalid", "Invalid search query")
            if verdict:
                hits.append(contact)
        start = int(pagination.get("starting_after") or 0)
        page = hits[start : start + per_page]
        pages: dict[str, Any] = {"type": "pages", "per_page": per_page}
        if start + per_page < len(hits):
            pages["next"] = {"per_page": per_page, "starting_after": str(start + per_page)}
        return FakeResponse(200, {"type": "list", "data": [c.view() for c in page], "total_count": len(hits),
                                  "pages": pages})  # fmt: skip

    def _tagging(self, method: str, contact_id: str, tag_id: Any) -> FakeResponse:
        contact = self.contacts.get(contact_id)
        if contact is None or contact.archived:
            return _error(404, "not_found", "User Not Found")
        tag_id = str(tag_id)
        if tag_id not in self.tags:
            return _error(404, "not_found", "Resource Not Found")
        tag = {"type": "tag", "id": tag_id, "name": self.tags[tag_id], "applied_at": int(time.time()),
               "applied_by": {"type": "admin", "id": "991"}}  # fmt: skip
        if method == "POST":
            contact.tags.add(tag_id)
            return FakeResponse(200, tag)
        if method == "DELETE":
            if tag_id not in contact.tags:
                return _error(404, "not_found", "Resource Not Found")
            contact.tags.discard(tag_id)
            return FakeResponse(200, tag)
        return FakeResponse(200, {"type": "list", "data": [tag] if tag_id in contact.tags else []})

    def _company(self, body: dict[str, Any]) -> FakeResponse:
        company_id = body.get("company_id")
        if not company_id:
            return _error(400, "parameter_invalid", "company_id is required")
        unknown = [k for k in body.get("custom_attributes") or {} if k not in self.company_attributes]
        if unknown:
            return _error(400, "parameter_not_found", f"Custom attribute '{unknown[0]}' does not exist")
        company = next((c for c in self.companies.values() if c.company_id == company_id), None)
        if company is None:
            company = Company(f"{next(self._ids):x}", company_id)
            self.companies[company.id] = company
        company.fields.update({k: v for k, v in body.items() if k in COMPANY_OWN})
        company.custom_attributes.update(body.get("custom_attributes") or {})
        return FakeResponse(200, {"type": "company", "id": company.id, "company_id": company_id, **company.fields,
                                  "custom_attributes": company.custom_attributes})  # fmt: skip

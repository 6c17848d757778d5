"""A local fake of SendGrid's Marketing Campaigns v3 API: contacts (upsert and delete jobs), field definitions,
lists and their members.

Serves on ``127.0.0.1`` (a free port), keeps everything in memory, and lets a test assert what SendGrid
would hold: contacts (id, e-mail, reserved and custom fields, lists), jobs, every request.

Contract (from SendGrid's pages, cited in ``dinmo_dagster/platforms/sendgrid.py``):

* **Auth** -- ``Authorization: Bearer <key>``; anything else is HTTP 401 ``{"errors": [{"field": null,
  "message": "authorization required"}]}``.
* **Rate limit** -- every answer carries ``X-RateLimit-Limit`` / ``-Remaining`` / ``-Reset`` (a Unix time,
  given with decimals here so tests wait ``reset_seconds``, not a whole second); past ``RATE`` requests in
  a second (or when :meth:`SendGridFake.throttle` says) HTTP 429 ``{"errors": [{"field": null, "message":
  "too many requests"}]}``.
* **Upsert** -- ``PUT /marketing/contacts`` ``{"list_ids"?, "contacts": [...]}``: more than 30,000 contacts
  or 6 MB is HTTP 400; a contact whose ``email`` is not an address, or that sets an unknown custom field id,
  is HTTP 400 ``{"errors": [{"field": "contacts[i]...", "message"}]}`` (nothing queued); an unknown list is
  HTTP 404; else ``202 {"job_id"}``. Each ``GET /marketing/contacts/imports/{id}`` after the first moves the
  job from ``pending`` to ``completed`` (applied: omitted fields kept), ``errored`` (contacts named by
  :meth:`SendGridFake.fail_emails` not applied and listed in the CSV at ``results.errors_url``) or ``failed``
  (all of them failed).
* **Search** -- ``POST /marketing/contacts/search/emails`` ``{"emails"}`` (more than 100 is HTTP 400):
  ``200 {"result": {email: {"contact": {...}} | {"error": "contact not found"}}}``, 404 when none is found.
* **Delete** -- ``DELETE /marketing/contacts?ids=a,b`` -> ``202 {"job_id"}`` (a ``delete`` job, applied when
  polled); ``DELETE /marketing/lists/{id}/contacts?contact_ids=a,b`` -> ``202 {"job_id"}`` (applied at once).
* **Lists** -- ``GET /marketing/lists?page_size`` (at most 1000, ``_metadata.next`` to the next page),
  ``GET /marketing/lists/{id}`` (404 unknown), ``POST /marketing/lists`` ``{"name"}`` -> ``201``.
* **Fields** -- ``GET /marketing/field_definitions``: ``{"custom_fields": [{"id", "name", "field_type"}],
  "reserved_fields": [...]}``.
"""

from __future__ import annotations

import itertools
import re
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from dinmo_dagster.fakes.server import FakeRequest, FakeResponse
from fakes.common import RecordingFake

MAX_CONTACTS = 30_000
MAX_BYTES = 6 * 1024 * 1024
MAX_SEARCH = 100
RATE = 10
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
RESERVED = {
    "first_name": "Text", "last_name": "Text", "address_line_1": "Text", "address_line_2": "Text", "city": "Text",
    "state_province_region": "Text", "postal_code": "Text", "country": "Text", "phone_number": "Text",
    "whatsapp": "Text", "line": "Text", "facebook": "Text", "unique_name": "Text",
}  # fmt: skip
READ_ONLY = {"email": "Text", "created_at": "Date", "updated_at": "Date", "contact_id": "Text"}


@dataclass
class Contact:
    """One Marketing Campaigns contact."""

    id: str
    email: str
    fields: dict[str, Any] = field(default_factory=dict)
    custom_fields: dict[str, Any] = field(default_factory=dict)
    list_ids: set[str] = field(default_factory=set)


@dataclass
class Job:
    """A contacts job (upsert or delete)."""

    id: str
    job_type: str
    payload: Any
    status: str = "pending"
    polls: int = 0
    errors_url: str | None = None
    counts: dict[str, int] = field(default_factory=dict)


def _errors(
    status: int, message: str, field_name: str | None = None, headers: dict[str, str] | None = None
) -> FakeResponse:
    return FakeResponse(
        status, {"errors": [{"field": field_name, "message": message}]}, headers=headers or {}
    )


class SendGridFake(RecordingFake):
    """SendGrid's Marketing Campaigns API in memory, served on loopback (a context manager)."""

    def __init__(self, api_key: str, *, custom_fields: dict[str, str] | None = None, reset_seconds: float = 1.0,
                 latency: float = 0.0) -> None:  # fmt: skip
        self.api_key = api_key
        self.reset_seconds = reset_seconds
        types = custom_fields if custom_fields is not None else {"loyalty_tier": "Text", "ltv": "Number"}
        self.custom_fields = {f"e{n}_{t[0]}": (name, t) for n, (name, t) in enumerate(types.items(), start=1)}
        self.contacts: dict[str, Contact] = {}
        self.lists: dict[str, str] = {}  # id -> name
        self.jobs: dict[str, Job] = {}
        self.reports: dict[str, str] = {}
        self._ids = itertools.count(1)
        self._failing: dict[str, str] = {}
        self._window: deque[float] = deque()
        super().__init__(latency)

    # -- what tests arrange and read ------------------------------------------------------------------------

    def add_contact(self, email: str, **fields: Any) -> Contact:
        """A contact SendGrid already holds."""
        with self._lock:
            contact = self.contacts[email] = Contact(str(uuid.uuid4()), email, dict(fields))
            return contact

    def create_list(self, name: str) -> str:
        """A list already in the account; its id."""
        with self._lock:
            list_id = str(uuid.uuid4())
            self.lists[list_id] = name
            return list_id

    def list_named(self, name: str) -> str | None:
        """The id of the list of that name, if any."""
        return next((i for i, n in self.lists.items() if n == name), None)

    def members(self, list_id: str) -> set[str]:
        """The e-mails of the list's contacts."""
        return {c.email for c in self.contacts.values() if list_id in c.list_ids}

    def custom(self, email: str) -> dict[str, Any]:
        """A contact's custom fields by name."""
        return {self.custom_fields[k][0]: v for k, v in self.contacts[email].custom_fields.items()}

    def fail_emails(self, reason: str, *emails: str) -> None:
        """The next upsert job holding these e-mails does not apply them, reporting ``reason`` (once)."""
        with self._lock:
            self._failing.update(dict.fromkeys(emails, reason))

    # -- serving ------------------------------------------------------------------------------------------------

    def _answer(self, request: FakeRequest) -> FakeResponse:
        if request.headers.get("authorization") != f"Bearer {self.api_key}":
            return _errors(401, "authorization required")
        now = time.monotonic()
        while self._window and self._window[0] <= now - 1.0:
            self._window.popleft()
        headers = {
            "X-RateLimit-Limit": str(RATE),
            "X-RateLimit-Reset": f"{time.time() + self.reset_seconds:.3f}",
        }
        if self._throttled or len(self._window) >= RATE:
            self._throttled = max(0, self._throttled - 1)
            return _errors(429, "too many requests", headers={**headers, "X-RateLimit-Remaining": "0"})
        self._window.append(now)
        response = self._route(request)
        response.headers.update({**headers, "X-RateLimit-Remaining": str(RATE - len(self._window))})
        return response

    def _route(self, request: FakeRequest) -> FakeResponse:
        method, path, body = request.method, request.path, request.json or {}
        if path == "/marketing/field_definitions" and method == "GET":
            return FakeResponse(200, {
                "custom_fields": [{"id": i, "name": n, "field_type": t} for i, (n, t) in self.custom_fields.items()],
                "reserved_fields": [{"id": f"_rf{n}_T", "name": name, "field_type": t, "read_only": name in READ_ONLY}
                                    for n, (name, t) in enumerate({**RESERVED, **READ_ONLY}.items())]})  # fmt: skip
        if path == "/marketing/contacts" and method == "PUT":
            return self._upsert(request, body)
        if path == "/marketing/contacts" and method == "DELETE":
            ids = [i.strip() for i in request.query.get("ids", "").split(",") if i.strip()]
            if not ids:
                return _errors(400, "ids or delete_all_contacts is required", "ids")
            return self._job("delete", ids)
        if m := re.fullmatch(r"/marketing/contacts/imports/([\w-]+)", path):
            return self._poll(m.group(1))
        if m := re.fullmatch(r"/errors/(\w+)\.csv", path):
            text = self.reports.get(m.group(1))
            return FakeResponse(200, text.encode()) if text is not None else _errors(404, "not found")
        if path == "/marketing/contacts/search/emails" and method == "POST":
            return self._search(body)
        if path == "/marketing/lists" and method == "GET":
            size, token = (
                int(request.query.get("page_size", "100")),
                int(request.query.get("page_token", "0")),
            )
            if size > 1000:
                return _errors(400, "page_size must be at most 1000", "page_size")
            items = list(self.lists.items())
            page = items[token : token + size]
            meta: dict[str, Any] = {"count": len(items)}
            if token + size < len(items):
                meta["next"] = f"{self.url}/marketing/lists?page_size={size}&page_token={token + size}"
            return FakeResponse(200, {"result": [{"id": i, "name": n, "contact_count": len(self.members(i))}
                                                 for i, n in page], "_metadata": meta})  # fmt: skip
        if path == "/marketing/lists" and method == "POST":
            if not body.get("name"):
                return _errors(400, "name is required", "name")
            list_id = str(uuid.uuid4())
            self.lists[list_id] = body["name"]
            return FakeResponse(201, {"id": list_id, "name": body["name"], "contact_count": 0})
        if m := re.fullmatch(r"/marketing/lists/([\w-]+)", path):
            if m.group(1) not in self.lists:
                return _errors(404, "list ID does not exist", "id")
            return FakeResponse(200, {"id": m.group(1), "name": self.lists[m.group(1)]})
        if (m := re.fullmatch(r"/marketing/lists/([\w-]+)/contacts", path)) and method == "DELETE":
            if m.group(1) not in self.lists:
                return _errors(404, "list ID does not exist", "id")
            ids = {i.strip() for i in request.query.get("contact_ids", "").split(",") if i.strip()}
            if not ids:
                return _errors(400, "contact_ids is required", "contact_ids")
            for contact in self.contacts.values():
                if contact.id in ids:
                    contact.list_ids.discard(m.group(1))
            return FakeResponse(202, {"job_id": str(uuid.uuid4())})
        return _errors(404, f"{method} {path} is not an endpoint")

    def _upsert(self, request: FakeRequest, body: dict[str, Any]) -> FakeResponse:
        contacts = body.get("contacts")
        if len(request.raw_body) > MAX_BYTES:
            return _errors(400, "request body is larger than 6MB", "contacts")
        if not isinstance(contacts, list) or not contacts:
            return _errors(400, "at least one contact is required", "contacts")
        if len(contacts) > MAX_CONTACTS:
            return _errors(400, f"a maximum of {MAX_CONTACTS} contacts may be upserted at once", "contacts")
        for list_id in body.get("list_ids") or []:
            if list_id not in self.lists:
                return _errors(404, f"list {list_id} does not exist", "list_ids")
        problems = []
        for n, contact in enumerate(contacts):
            if not _EMAIL.fullmatch(str(contact.get("email") or "")):
                problems.append(
                    {"field": f"contacts[{n}].email", "message": "email is not a valid email address"}
                )
            for key in contact.get("custom_fields") or {}:
                if key not in self.custom_fields:
                    problems.append(
                        {
                            "field": f"contacts[{n}].custom_fields.{key}",
                            "message": "custom field ID does not exist",
                        }
                    )
        if problems:
            return FakeResponse(400, {"errors": problems})
        return self._job("upsert", {"list_ids": list(body.get("list_ids") or []), "contacts": contacts})

    def _job(self, job_type: str, payload: Any) -> FakeResponse:
        job = Job(str(uuid.uuid4()), job_type, payload)
        self.jobs[job.id] = job
        return FakeResponse(202, {"job_id": job.id})

    def _poll(self, job_id: str) -> FakeResponse:
        job = self.jobs.get(job_id)
        if job is None:
            return _errors(404, "job not found", "id")
        job.polls += 1
        if job.status == "pending" and job.polls >= 2:
            self._run(job)
        results: dict[str, Any] = dict(job.counts)
        if job.errors_url:
            results["errors_url"] = job.errors_url
        return FakeResponse(
            200, {"id": job.id, "status": job.status, "job_type": job.job_type, "results": results}
        )

    def _run(self, job: Job) -> None:
        if job.job_type == "delete":
            ids = set(job.payload)
            gone = [e for e, c in self.contacts.items() if c.id in ids]
            for email in gone:
                del self.contacts[email]
            job.status, job.counts = "completed", {"requested_count": len(ids), "deleted_count": len(gone)}
            return
        bad: list[tuple[str, str]] = []
        created = updated = 0
        for item in job.payload["contacts"]:
            email = str(item["email"]).lower()
            if email in self._failing:
                bad.append((email, self._failing.pop(email)))
                continue
            contact = self.contacts.get(email)
            if contact is None:
                contact = self.contacts[email] = Contact(str(uuid.uuid4()), email)
                created += 1
            else:
                updated += 1
            contact.fields.update({k: v for k, v in item.items() if k in RESERVED})
            contact.custom_fields.update(item.get("custom_fields") or {})
            contact.list_ids.update(job.payload["list_ids"])
        job.counts = {"requested_count": len(job.payload["contacts"]), "created_count": created,
                      "updated_count": updated, "errored_count": len(bad)}  # fmt: skip
        if not bad:
            job.status = "completed"
            return
        job.status = "failed" if len(bad) == len(job.payload["contacts"]) else "errored"
        report = f"r{next(self._ids)}"
        self.reports[report] = "email,errors\n" + "".join(f"{e},{r}\n" for e, r in bad)
        job.errors_url = f"{self.url}/errors/{report}.csv"

    def _search(self, body: dict[str, Any]) -> FakeResponse:
        emails = body.get("emails")
        if not isinstance(emails, list) or not emails:
            return _errors(400, "emails is required", "emails")
        if len(emails) > MAX_SEARCH:
            return _errors(400, f"a maximum of {MAX_SEARCH} emails may be searched at once", "emails")
        result: dict[str, Any] = {}
        for email in emails:
            contact = self.contacts.get(str(email).lower())
            result[str(email).lower()] = (
                {"contact": {"id": contact.id, "email": contact.email, "list_ids": sorted(contact.list_ids)}}
                if contact else {"error": "contact not found"}
            )  # fmt: skip
        if not any("contact" in v for v in result.values()):
            return _errors(404, "No contacts found")
        return FakeResponse(200, {"result": result})

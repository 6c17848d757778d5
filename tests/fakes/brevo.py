"""A local fake of Brevo's REST API v3: contacts, contact imports run as background processes, contact
attributes, lists and their members.

Serves on ``127.0.0.1`` (a free port), keeps everything in memory, and lets a test assert what Brevo
would hold: contacts (e-mail, attributes), lists and their members, import processes, every request.

Contract (from Brevo's pages, cited in ``dinmo_dagster/platforms/brevo.py``):

* **Auth** -- the ``api-key`` header; a missing or wrong key is HTTP 401 ``{"code": "unauthorized",
  "message": "Key not found"}``.
* **Import** -- ``POST /contacts/import`` with ``jsonBody`` (``[{"email", "attributes"}]``),
  ``updateExistingContacts`` (default true), ``emptyContactsAttributes`` (only with update),
  ``listIds``: a body over 10 MB is HTTP 400 ``out_of_range``; no ``jsonBody``/``fileBody``/``fileUrl``
  is HTTP 400 ``missing_parameter``; else HTTP 202 ``{"processId"}``. Each ``GET /processes/{id}``
  moves it one step, ``queued`` -> ``in_process`` -> ``completed`` (applied then): an attribute the
  account does not define is ignored; an empty value erases the attribute only with
  ``emptyContactsAttributes``; an invalid e-mail (or one named by :meth:`BrevoFake.fail_emails`) is not
  imported and listed in a CSV report (``email,reason``) whose URL is in ``info.import.invalid_emails``
  (served at ``GET /reports/{id}.csv``).
* **Attributes** -- ``GET /contacts/attributes``: ``{"attributes": [{"name", "category", "type"}]}``.
* **Lists** -- ``GET /contacts/lists?limit&offset`` (``limit`` at most 50), ``GET
  /contacts/lists/{id}``, ``POST /contacts/lists`` ``{"name", "folderId"}`` (an unknown folder is HTTP
  400) -> ``201 {"id"}``; ``POST /contacts/lists/{id}/contacts/add`` | ``/remove`` with
  ``{"emails"}`` (more than 150 is HTTP 400 ``out_of_range``) -> ``201 {"contacts": {"success",
  "failure"}}`` (add: e-mails of no contact fail; remove: e-mails not in the list fail).
* **Account** -- ``GET /account``.
* **Rate limit** -- 10 requests per second: past it (or when :meth:`BrevoFake.throttle` says) HTTP 429
  ``{"code": "too_many_requests"}`` without ``Retry-After``; every answer carries
  ``x-sib-ratelimit-limit`` / ``-remaining`` / ``-reset`` (seconds).
"""

from __future__ import annotations

import itertools
import re
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from dinmo_dagster.fakes.server import FakeRequest, FakeResponse
from fakes.common import RecordingFake

MAX_BODY = 10 * 1024 * 1024
MAX_LIST_EMAILS = 150
MAX_LISTS_PAGE = 50
RATE = 10
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")


@dataclass
class Contact:
    """One Brevo contact."""

    email: str
    attributes: dict[str, Any] = field(default_factory=dict)


@dataclass
class BList:
    """One list and the e-mails of its members."""

    id: int
    name: str
    folder_id: int
    members: set[str] = field(default_factory=set)


@dataclass
class Process:
    """An import process."""

    id: int
    body: dict[str, Any]
    status: str = "queued"
    report: str | None = None


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> FakeResponse:
    return FakeResponse(status, {"code": code, "message": message}, headers=headers or {})


class BrevoFake(RecordingFake):
    """Brevo's API v3 in memory, served on loopback (a context manager)."""

    def __init__(
        self,
        api_key: str,
        *,
        attributes: dict[str, str] | None = None,
        folders: tuple[int, ...] = (1,),
        reset_seconds: str = "1",
        latency: float = 0.0,
    ) -> None:
        self.api_key = api_key
        self.attribute_types = (
            attributes if attributes is not None else {"FIRSTNAME": "text", "LASTNAME": "text"}
        )
        self.folders = set(folders)
        self.reset_seconds = reset_seconds
        self.contacts: dict[str, Contact] = {}
        self.lists: dict[int, BList] = {}
        self.processes: dict[int, Process] = {}
        self.reports: dict[str, str] = {}
        self._ids = itertools.count(11)
        self._failing: dict[str, str] = {}
        self._window: deque[float] = deque()
        super().__init__(latency)

    # -- what tests arrange and read --------------------------------------------------------------------

    def add_contact(self, email: str, **attributes: Any) -> Contact:
        """A contact Brevo already holds."""
        with self._lock:
            contact = self.contacts[email] = Contact(email, dict(attributes))
            return contact

    def create_list(self, name: str, folder_id: int = 1) -> BList:
        """A list already in the account."""
        with self._lock:
            blist = BList(next(self._ids), name, folder_id)
            self.lists[blist.id] = blist
            return blist

    def list_named(self, name: str) -> BList | None:
        """The list of that name, if any."""
        return next((b for b in self.lists.values() if b.name == name), None)

    def fail_emails(self, reason: str, *emails: str) -> None:
        """The next import of these e-mails reports them as problematic with ``reason`` (once)."""
        with self._lock:
            self._failing.update(dict.fromkeys(emails, reason))

    # -- serving ------------------------------------------------------------------------------------------

    def _answer(self, request: FakeRequest) -> FakeResponse:
        if request.headers.get("api-key") != self.api_key:
            return _error(401, "unauthorized", "Key not found")
        now = time.monotonic()
        while self._window and self._window[0] <= now - 1.0:
            self._window.popleft()
        headers = {"x-sib-ratelimit-limit": str(RATE), "x-sib-ratelimit-reset": self.reset_seconds}
        if self._throttled or len(self._window) >= RATE:
            self._throttled = max(0, self._throttled - 1)
            return _error(
                429, "too_many_requests", "Too many requests", {**headers, "x-sib-ratelimit-remaining": "0"}
            )
        self._window.append(now)
        response = self._route(request)
        response.headers.update({**headers, "x-sib-ratelimit-remaining": str(RATE - len(self._window))})
        return response

    def _route(self, request: FakeRequest) -> FakeResponse:
        method, path, body = request.method, request.path, request.json
        if path == "/account" and method == "GET":
            return FakeResponse(200, {"email": "owner@example.com", "companyName": "Shop"})
        if path == "/contacts/attributes" and method == "GET":
            return FakeResponse(
                200,
                {
                    "attributes": [
                        {"name": n, "category": "normal", "type": t} for n, t in self.attribute_types.items()
                    ]
                },
            )
        if path == "/contacts/import" and method == "POST":
            return self._import(request)
        if m := re.fullmatch(r"/processes/(\d+)", path):
            return self._process(int(m.group(1)))
        if m := re.fullmatch(r"/reports/(\w+)\.csv", path):
            text = self.reports.get(m.group(1))
            return (
                FakeResponse(200, text.encode())
                if text is not None
                else _error(404, "document_not_found", "No report")
            )
        if path == "/contacts/lists" and method == "GET":
            limit, offset = int(request.query.get("limit", "10")), int(request.query.get("offset", "0"))
            if limit > MAX_LISTS_PAGE:
                return _error(400, "out_of_range", f"limit must be at most {MAX_LISTS_PAGE}")
            lists = sorted(self.lists.values(), key=lambda b: b.id)[offset : offset + limit]
            return FakeResponse(
                200,
                {
                    "lists": [{"id": b.id, "name": b.name, "folderId": b.folder_id} for b in lists],
                    "count": len(self.lists),
                },
            )
        if path == "/contacts/lists" and method == "POST":
            name, folder = (body or {}).get("name"), (body or {}).get("folderId")
            if not name or folder is None:
                return _error(400, "missing_parameter", "name and folderId are required")
            if folder not in self.folders:
                return _error(400, "invalid_parameter", "Folder ID does not exist")
            blist = BList(next(self._ids), name, folder)
            self.lists[blist.id] = blist
            return FakeResponse(201, {"id": blist.id})
        if m := re.fullmatch(r"/contacts/lists/(\d+)", path):
            blist = self.lists.get(int(m.group(1)))
            if blist is None:
                return _error(404, "document_not_found", "List ID does not exist")
            return FakeResponse(200, {"id": blist.id, "name": blist.name, "folderId": blist.folder_id})
        if m := re.fullmatch(r"/contacts/lists/(\d+)/contacts/(add|remove)", path):
            return self._members(int(m.group(1)), m.group(2), body)
        return _error(404, "not_found", f"{method} {path} is not an endpoint")

    def _import(self, request: FakeRequest) -> FakeResponse:
        body = request.json or {}
        if len(request.raw_body) > MAX_BODY:
            return _error(400, "out_of_range", "File body size exceeds the limit of 10MB")
        if not any(body.get(k) for k in ("jsonBody", "fileBody", "fileUrl")):
            return _error(400, "missing_parameter", "One of fileUrl, fileBody or jsonBody is required")
        if body.get("emptyContactsAttributes") and body.get("updateExistingContacts") is False:
            return _error(400, "invalid_parameter", "emptyContactsAttributes needs updateExistingContacts")
        process = Process(next(self._ids), body)
        self.processes[process.id] = process
        return FakeResponse(202, {"processId": process.id})

    def _process(self, process_id: int) -> FakeResponse:
        process = self.processes.get(process_id)
        if process is None:
            return _error(404, "document_not_found", "Process ID does not exist")
        if process.status == "queued":
            process.status = "in_process"
        elif process.status == "in_process":
            self._run(process)
            process.status = "completed"
        view: dict[str, Any] = {"id": process.id, "name": "import_users", "status": process.status}
        if process.report is not None:
            view["info"] = {"import": {"invalid_emails": f"{self.url}/reports/{process.report}.csv"}}
        return FakeResponse(200, view)

    def _run(self, process: Process) -> None:
        body = process.body
        update = body.get("updateExistingContacts", True)
        empty = body.get("emptyContactsAttributes", False)
        bad: list[tuple[str, str]] = []
        for row in body.get("jsonBody") or []:
            email = str(row.get("email") or "").lower()
            if not _EMAIL.fullmatch(email) or email in self._failing:
                bad.append((email, self._failing.pop(email, "Invalid email address")))
                continue
            contact = self.contacts.get(email)
            if contact is not None and not update:
                continue
            contact = contact or self.contacts.setdefault(email, Contact(email))
            for name, value in (row.get("attributes") or {}).items():
                if name not in self.attribute_types:
                    continue  # Brevo ignores attributes the account does not define
                if value == "":
                    if empty:
                        contact.attributes.pop(name, None)
                    continue
                contact.attributes[name] = value
            for list_id in body.get("listIds") or []:
                if list_id in self.lists:
                    self.lists[list_id].members.add(email)
        if bad:
            process.report = f"r{process.id}"
            self.reports[process.report] = "email,reason\n" + "".join(f"{e},{r}\n" for e, r in bad)

    def _members(self, list_id: int, action: str, body: Any) -> FakeResponse:
        blist = self.lists.get(list_id)
        if blist is None:
            return _error(404, "document_not_found", "List ID does not exist")
        emails = (body or {}).get("emails")
        if not isinstance(emails, list) or not emails:
            return _error(400, "missing_parameter", "emails or ids is required")
        if len(emails) > MAX_LIST_EMAILS:
            return _error(
                400, "out_of_range", f"You can pass a maximum of {MAX_LIST_EMAILS} emails in one request"
            )
        success, failure = [], []
        for email in emails:
            if action == "add" and email in self.contacts:
                blist.members.add(email)
                success.append(email)
            elif action == "remove" and email in blist.members:
                blist.members.discard(email)
                success.append(email)
            else:
                failure.append(email)
        return FakeResponse(201, {"contacts": {"success": success, "failure": failure}})

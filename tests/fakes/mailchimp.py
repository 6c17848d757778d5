"""A local fake of Mailchimp's Marketing API 3.0: lists (audiences) and their members, merge fields, static
segments and their members.

Serves on ``127.0.0.1`` (a free port), keeps everything in memory, and lets a test assert what Mailchimp
would hold: each list's members (status, merge fields) and each static segment's members.

Contract (from Mailchimp's pages, cited in ``dinmo_dagster/platforms/mailchimp.py``):

* **Auth** -- HTTP Basic, any user, the API key as the password; anything else is HTTP 401 (problem
  details: ``{"type", "title": "API Key Invalid", "status": 401, "detail", "instance"}``).
* **Connections** -- more than 10 requests in flight at once (or when :meth:`MailchimpFake.throttle`
  says) is HTTP 429 ``{"title": "Too Many Requests", "detail": "You have exceeded the limit of 10
  simultaneous connections."}``.
* **Batch subscribe** -- ``POST /lists/{id}`` ``{"members": [...], "update_existing"}``: more than 500
  members is HTTP 400 ``Invalid Resource``; each member needs ``email_address`` and a ``status`` among
  subscribed, unsubscribed, cleaned, pending, transactional. A new address is added with its status; an
  existing one is updated (status and merge fields) only with ``update_existing``, else reported in
  ``errors`` with ``ERROR_CONTACT_EXISTS``; an invalid address (or one named by
  :meth:`MailchimpFake.fail_emails`) is reported with ``ERROR_GENERIC``. 200 ``{"new_members",
  "updated_members", "errors", "total_created", "total_updated", "error_count"}``.
* **Segments** -- ``GET /lists/{id}/segments?type&count&offset`` (``count`` at most 1000), ``GET
  /lists/{id}/segments/{sid}``, ``POST /lists/{id}/segments`` ``{"name", "static_segment": []}``, and
  ``POST /lists/{id}/segments/{sid}`` ``{"members_to_add" | "members_to_remove"}`` (more than 500 is
  HTTP 400): an address that is not a list member is ignored and reported in ``errors``
  (``{"email_addresses": [...], "error"}``), as is the removal of one not in the segment.
* **Merge fields** -- ``GET /lists/{id}/merge-fields``: ``{"merge_fields": [{"tag", "name", "type"}]}``.
"""

from __future__ import annotations

import base64
import itertools
import re
import time
from dataclasses import dataclass, field
from typing import Any

from dinmo_dagster.fakes.server import FakeRequest, FakeResponse
from fakes.common import RecordingFake

MAX_MEMBERS = 500
MAX_CONNECTIONS = 10
STATUSES = ("subscribed", "unsubscribed", "cleaned", "pending", "transactional")
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")


@dataclass
class Member:
    """One list member."""

    email: str
    status: str
    merge_fields: dict[str, Any] = field(default_factory=dict)


@dataclass
class Segment:
    """One static segment and the e-mails of its members."""

    id: int
    name: str
    members: set[str] = field(default_factory=set)


@dataclass
class MList:
    """One audience (list)."""

    id: str
    members: dict[str, Member] = field(default_factory=dict)
    segments: dict[int, Segment] = field(default_factory=dict)
    merge_fields: dict[str, str] = field(default_factory=lambda: {"FNAME": "text", "LNAME": "text"})


def _problem(status: int, title: str, detail: str) -> FakeResponse:
    return FakeResponse(
        status,
        {"type": "https://mailchimp.com/developer/marketing/docs/errors/", "title": title, "status": status,
         "detail": detail, "instance": "5f1c1e6e-0a4f-4f5e-9a39-3f6f5b1d2c11"},
    )  # fmt: skip


class MailchimpFake(RecordingFake):
    """Mailchimp's Marketing API in memory, served on loopback (a context manager)."""

    def __init__(self, api_key: str, *, list_id: str = "9e67587f52", latency: float = 0.0) -> None:
        self.api_key = api_key
        self.lists: dict[str, MList] = {list_id: MList(list_id)}
        self.list = self.lists[list_id]
        self._ids = itertools.count(4401)
        self._in_flight = 0
        self._failing: dict[str, str] = {}
        super().__init__(latency)

    # -- what tests arrange and read ----------------------------------------------------------------------

    def add_member(self, email: str, status: str = "subscribed", **merge_fields: Any) -> Member:
        """A member the list already holds."""
        with self._lock:
            member = self.list.members[email] = Member(email, status, dict(merge_fields))
            return member

    def create_segment(self, name: str) -> Segment:
        """A static segment already in the list."""
        with self._lock:
            segment = Segment(next(self._ids), name)
            self.list.segments[segment.id] = segment
            return segment

    def segment_named(self, name: str) -> Segment | None:
        """The list's segment of that name, if any."""
        return next((s for s in self.list.segments.values() if s.name == name), None)

    def fail_emails(self, reason: str, *emails: str) -> None:
        """The next batch subscribe call of these e-mails refuses them with ``reason`` (once)."""
        with self._lock:
            self._failing.update(dict.fromkeys(emails, reason))

    # -- serving ----------------------------------------------------------------------------------------------

    def _app(self, request: FakeRequest) -> FakeResponse:
        with self._lock:
            self._in_flight += 1
            crowded = self._in_flight > MAX_CONNECTIONS or self._throttled > 0
            self._throttled = max(0, self._throttled - 1)
        try:
            if self.latency:
                time.sleep(self.latency)
            with self._lock:
                if not self._authorized(request):
                    response = _problem(
                        401, "API Key Invalid",
                        "Your API key may be invalid, or you've attempted to access the wrong datacenter.",
                    )  # fmt: skip
                elif crowded:
                    response = _problem(
                        429,
                        "Too Many Requests",
                        "You have exceeded the limit of 10 simultaneous connections.",
                    )
                else:
                    response = self._route(request)
                self.answers.append((request.method, request.path, response.status))
                return response
        finally:
            with self._lock:
                self._in_flight -= 1

    def _authorized(self, request: FakeRequest) -> bool:
        header = request.headers.get("authorization", "")
        if not header.startswith("Basic "):
            return False
        try:
            _user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        except ValueError:
            return False
        return password == self.api_key

    def _route(self, request: FakeRequest) -> FakeResponse:
        method, path, body = request.method, request.path, request.json or {}
        m = re.fullmatch(r"/lists/(\w+)(/.*)?", path)
        mlist = self.lists.get(m.group(1)) if m else None
        if m is None or mlist is None:
            return _problem(404, "Resource Not Found", "The requested resource could not be found.")
        rest = m.group(2) or ""
        if rest == "" and method == "GET":
            return FakeResponse(
                200, {"id": mlist.id, "name": "Shop", "stats": {"member_count": len(mlist.members)}}
            )
        if rest == "" and method == "POST":
            return self._batch_subscribe(mlist, body)
        if rest == "/merge-fields" and method == "GET":
            return FakeResponse(200, {"merge_fields": [
                {"tag": t, "name": t.title(), "type": k} for t, k in mlist.merge_fields.items()]})  # fmt: skip
        if rest == "/segments" and method == "GET":
            count, offset = int(request.query.get("count", "10")), int(request.query.get("offset", "0"))
            if count > 1000:
                return _problem(400, "Invalid Resource", "count must be at most 1000")
            segments = sorted(mlist.segments.values(), key=lambda s: s.id)[offset : offset + count]
            return FakeResponse(200, {
                "segments": [{"id": s.id, "name": s.name, "type": "static", "member_count": len(s.members)}
                             for s in segments], "total_items": len(mlist.segments)})  # fmt: skip
        if rest == "/segments" and method == "POST":
            if not body.get("name") or "static_segment" not in body:
                return _problem(400, "Invalid Resource", "name and static_segment or options are required")
            segment = Segment(next(self._ids), body["name"])
            mlist.segments[segment.id] = segment
            return FakeResponse(
                200, {"id": segment.id, "name": segment.name, "type": "static", "member_count": 0}
            )
        if sm := re.fullmatch(r"/segments/(\d+)", rest):
            segment = mlist.segments.get(int(sm.group(1)))
            if segment is None:
                return _problem(404, "Resource Not Found", "The requested segment was not found.")
            if method == "GET":
                return FakeResponse(200, {"id": segment.id, "name": segment.name, "type": "static"})
            if method == "POST":
                return self._segment_members(mlist, segment, body)
        return _problem(405, "Method Not Allowed", f"{method} {path} is not allowed")

    def _batch_subscribe(self, mlist: MList, body: dict[str, Any]) -> FakeResponse:
        members = body.get("members")
        if not isinstance(members, list):
            return _problem(400, "Invalid Resource", "Schema describes array, object found instead (members)")
        if len(members) > MAX_MEMBERS:
            return _problem(
                400, "Invalid Resource", f"You may only add or update {MAX_MEMBERS} members at a time"
            )
        update = bool(body.get("update_existing"))
        new, updated, errors = [], [], []
        for item in members:
            email = str(item.get("email_address") or "").lower()
            status = item.get("status")
            if status not in STATUSES:
                return _problem(
                    400, "Invalid Resource", f"members item status must be one of {', '.join(STATUSES)}"
                )
            if not _EMAIL.fullmatch(email) or email in self._failing:
                reason = self._failing.pop(
                    email, f"{email} looks fake or invalid, please enter a real email address."
                )
                errors.append({"email_address": email, "error": reason, "error_code": "ERROR_GENERIC",
                               "field": "email_address", "field_message": ""})  # fmt: skip
                continue
            unknown = [t for t in item.get("merge_fields") or {} if t not in mlist.merge_fields]
            if unknown:
                errors.append({"email_address": email, "error": f"Invalid merge fields were submitted: {unknown[0]}",
                               "error_code": "ERROR_GENERIC", "field": "merge_fields", "field_message": ""})  # fmt: skip
                continue
            member = mlist.members.get(email)
            if member is not None and not update:
                errors.append({"email_address": email, "error": f"{email} is already a list member.",
                               "error_code": "ERROR_CONTACT_EXISTS", "field": "", "field_message": ""})  # fmt: skip
                continue
            if member is None:
                member = mlist.members[email] = Member(email, status)
                new.append({"email_address": email, "status": status})
            else:
                member.status = status
                updated.append({"email_address": email, "status": status})
            member.merge_fields.update(item.get("merge_fields") or {})
        return FakeResponse(200, {"new_members": new, "updated_members": updated, "errors": errors,
                                  "total_created": len(new), "total_updated": len(updated),
                                  "error_count": len(errors)})  # fmt: skip

    def _segment_members(self, mlist: MList, segment: Segment, body: dict[str, Any]) -> FakeResponse:
        add, remove = body.get("members_to_add") or [], body.get("members_to_remove") or []
        if len(add) > MAX_MEMBERS or len(remove) > MAX_MEMBERS:
            return _problem(400, "Invalid Resource", f"Max {MAX_MEMBERS} members can be sent")
        added, removed, errors = [], [], []
        missing = [e for e in add if e.lower() not in mlist.members]
        for email in add:
            if email.lower() in mlist.members:
                segment.members.add(email.lower())
                added.append({"email_address": email.lower()})
        not_in = [e for e in remove if e.lower() not in segment.members]
        for email in remove:
            if email.lower() in segment.members:
                segment.members.discard(email.lower())
                removed.append({"email_address": email.lower()})
        if missing:
            errors.append({"email_addresses": missing, "error": "Email addresses are not list members"})
        if not_in:
            errors.append({"email_addresses": not_in, "error": "Email addresses are not in the segment"})
        return FakeResponse(200, {"members_added": added, "members_removed": removed, "errors": errors,
                                  "total_added": len(added), "total_removed": len(removed),
                                  "error_count": len(errors)})  # fmt: skip

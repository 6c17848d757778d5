"""A local fake of Iterable's REST API: users and their profile fields, the project's user fields, static
lists and their members.

Serves on ``127.0.0.1`` (a free port), keeps everything in memory, and lets a test assert what an Iterable
project would hold: users (e-mail, userId, dataFields), lists and their members, every request.

Contract (from Iterable's API reference, cited in ``dinmo_dagster/platforms/iterable.py``):

* **Auth** -- the ``Api-Key`` header (``Api_Key`` also); a missing or wrong key is HTTP 401 ``{"msg":
  "Invalid API key", "code": "BadApiKey", "params": null}``.
* **Answers** -- ``IterableApiResponse`` ``{"msg", "code", "params"}`` for errors; the bulk endpoints
  answer ``UserBulkUpdateListResponse`` ``{"successCount", "failCount", "failedUpdates": {...},
  "createdFields", "filteredOutFields"}``.
* **bulkUpdate** -- ``POST /api/users/bulkUpdate`` ``{"users": [{"email"|"userId", "dataFields",
  "preferUserId", "mergeNestedObjects"}], "createNewFields"}``: a body over 4 MB is HTTP 400
  ``BatchTooLarge``; a user with both or neither identifier, or a malformed e-mail, is listed in
  ``failedUpdates.invalidEmails`` / ``invalidUserIds``; a value whose type differs from the field's type
  is ``invalidDataEmails``; a forgotten user ``forgottenEmails``; new fields are created (listed in
  ``createdFields``) unless ``createNewFields`` is false, or absent with the project set to drop them
  (then ``filteredOutFields``). Top-level fields sent overwrite; ``null`` sets null. The project is
  hybrid: a new ``userId`` creates a user.
* **Delete** -- ``DELETE /api/users/{email}`` / ``/api/users/byUserId/{userId}``: ``200 Success``; a
  user the project does not hold is HTTP 404 ``NotFound`` (assumed: the reference documents 200/400/401).
* **Lists** -- ``GET /api/lists`` ``{"lists": [{"id", "name", "listType", "createdAt"}]}``; ``POST
  /api/lists`` ``{"name"}`` -> ``{"listId"}``; ``POST /api/lists/subscribe`` ``{"listId", "subscribers",
  "updateExistingUsersOnly"}`` (a new user is created unless ``updateExistingUsersOnly``: then
  ``notFoundEmails``) and ``POST /api/lists/unsubscribe`` ``{"listId", "subscribers",
  "channelUnsubscribe", "campaignId"}`` (a user not in the project is ``notFoundEmails``); an unknown list
  is HTTP 400 ``BadParams`` ``List <id> does not exist`` (assumed wording).
* **User fields** -- ``GET /api/users/getFields`` ``{"fields": {name: type}}``.
* **Rate limit** -- ``bulkUpdate`` 5 requests per second per project (a sliding second here); past it, or
  when :meth:`IterableFake.throttle` says, HTTP 429 ``{"msg": "Rate limit exceeded", "code":
  "RateLimitExceeded"}``.
"""

from __future__ import annotations

import itertools
import re
import time
import urllib.parse
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from dinmo_dagster.fakes.server import FakeRequest, FakeResponse
from fakes.common import RecordingFake

MAX_BODY = 4 * 1024 * 1024
BULK_RATE = 5
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
_DATE = re.compile(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2} [+-]\d{2}:\d{2}")


@dataclass
class User:
    """One Iterable user."""

    email: str | None
    user_id: str | None = None
    data_fields: dict[str, Any] = field(default_factory=dict)


@dataclass
class IList:
    """A static list and the e-mails (or userIds) of its members."""

    id: int
    name: str
    list_type: str = "Standard"
    members: set[str] = field(default_factory=set)


def _error(status: int, code: str, msg: str) -> FakeResponse:
    return FakeResponse(status, {"msg": msg, "code": code, "params": None})


def _type_of(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "long"
    if isinstance(value, float):
        return "double"
    if isinstance(value, str) and _DATE.fullmatch(value):
        return "date"
    if isinstance(value, dict):
        return "object"
    return "string"


class IterableFake(RecordingFake):
    """An Iterable project in memory, served on loopback (a context manager)."""

    def __init__(
        self,
        api_key: str,
        *,
        fields: dict[str, str] | None = None,
        allow_new_fields: bool = True,
        latency: float = 0.0,
    ) -> None:
        self.api_key = api_key
        self.fields = dict(fields if fields is not None else {"email": "string", "firstName": "string"})
        self.allow_new_fields = allow_new_fields
        self.users: list[User] = []
        self.lists: dict[int, IList] = {}
        self.forgotten: set[str] = set()
        self._ids = itertools.count(1001)
        self.channel_unsubscribes = 0  # unsubscribe calls that asked for a global channel unsubscribe
        self._window: deque[float] = deque()
        super().__init__(latency)

    # -- what tests arrange and read ------------------------------------------------------------------

    def add_user(self, email: str | None, user_id: str | None = None, **data_fields: Any) -> User:
        """A user the project already holds."""
        with self._lock:
            user = User(email, user_id, dict(data_fields))
            self.users.append(user)
            return user

    def user(self, email: str) -> User | None:
        """The user of that e-mail, if any."""
        return next((u for u in self.users if u.email == email), None)

    def profiles(self) -> dict[str, dict[str, Any]]:
        """Every user's dataFields by e-mail (or userId)."""
        return {(u.email or u.user_id or ""): u.data_fields for u in self.users}

    def create_list(self, name: str, list_type: str = "Standard") -> IList:
        """A list already in the project."""
        with self._lock:
            ilist = IList(next(self._ids), name, list_type)
            self.lists[ilist.id] = ilist
            return ilist

    def list_named(self, name: str) -> IList | None:
        """The list of that name, if any."""
        return next((b for b in self.lists.values() if b.name == name), None)

    def forget(self, *emails: str) -> None:
        """GDPR-forget these users: Iterable refuses to update them."""
        with self._lock:
            self.forgotten.update(emails)

    # -- serving ------------------------------------------------------------------------------------------

    def _answer(self, request: FakeRequest) -> FakeResponse:
        key = request.headers.get("api-key") or request.headers.get("api_key")
        if key != self.api_key:
            return _error(401, "BadApiKey", "Invalid API key")
        if self._throttled:
            self._throttled -= 1
            return _error(429, "RateLimitExceeded", "Rate limit exceeded")
        if request.path == "/api/users/bulkUpdate":
            now = time.monotonic()
            while self._window and self._window[0] <= now - 1.0:
                self._window.popleft()
            if len(self._window) >= BULK_RATE:
                return _error(429, "RateLimitExceeded", "Rate limit exceeded")
            self._window.append(now)
        return self._route(request)

    def _route(self, request: FakeRequest) -> FakeResponse:
        method, path, body = request.method, request.path, request.json
        if len(request.raw_body) > MAX_BODY:
            return _error(400, "BatchTooLarge", "Request body exceeds the 4MB limit")
        if path == "/api/users/bulkUpdate" and method == "POST":
            return self._bulk_update(body or {})
        if path == "/api/users/getFields" and method == "GET":
            return FakeResponse(200, {"fields": dict(self.fields)})
        if method == "DELETE" and path.startswith("/api/users/"):
            rest = urllib.parse.unquote(path.removeprefix("/api/users/"))
            by_id = rest.startswith("byUserId/")
            value = rest.removeprefix("byUserId/")
            found = [u for u in self.users if (u.user_id if by_id else u.email) == value]
            if not found:
                return _error(404, "NotFound", "User not found")
            self.users = [u for u in self.users if u not in found]
            for ilist in self.lists.values():
                ilist.members.discard(value)
            return FakeResponse(200, {"msg": "User deletion queued", "code": "Success", "params": None})
        if path == "/api/lists" and method == "GET":
            return FakeResponse(200, {"lists": [
                {"id": b.id, "name": b.name, "listType": b.list_type, "createdAt": 1700000000000}
                for b in self.lists.values()]})  # fmt: skip
        if path == "/api/lists" and method == "POST":
            name = (body or {}).get("name")
            if not name:
                return _error(400, "BadParams", "name is required")
            ilist = IList(next(self._ids), name)
            self.lists[ilist.id] = ilist
            return FakeResponse(200, {"listId": ilist.id})
        if path in ("/api/lists/subscribe", "/api/lists/unsubscribe") and method == "POST":
            return self._membership(path.endswith("/subscribe"), body or {})
        return _error(404, "NotFound", f"{method} {path} is not an endpoint")

    def _identity(self, entry: dict[str, Any]) -> tuple[str, str] | None:
        email, user_id = entry.get("email"), entry.get("userId")
        if (email is None) == (user_id is None):
            return None
        return ("email", str(email)) if email is not None else ("userId", str(user_id))

    def _find(self, kind: str, value: str) -> User | None:
        return next((u for u in self.users if (u.email if kind == "email" else u.user_id) == value), None)

    def _bulk_update(self, body: dict[str, Any]) -> FakeResponse:
        users = body.get("users")
        if not isinstance(users, list):
            return _error(400, "BadJsonBody", "users is required")
        create = body.get("createNewFields", self.allow_new_fields)
        failed: dict[str, list[str]] = {}
        created: set[str] = set()
        dropped: set[str] = set()
        ok = 0
        for entry in users:
            identity = self._identity(entry)
            if identity is None or (identity[0] == "email" and not _EMAIL.fullmatch(identity[1])):
                label = "invalidEmails" if entry.get("email") is not None else "invalidUserIds"
                failed.setdefault(label, []).append(str(entry.get("email") or entry.get("userId") or ""))
                continue
            kind, value = identity
            suffix = "Emails" if kind == "email" else "UserIds"
            if value in self.forgotten:
                failed.setdefault("forgotten" + suffix, []).append(value)
                continue
            data = dict(entry.get("dataFields") or {})
            if any(
                k in self.fields and v is not None and self.fields[k] != _type_of(v) for k, v in data.items()
            ):
                failed.setdefault("invalidData" + suffix, []).append(value)
                continue
            for name in list(data):
                if name not in self.fields:
                    if create:
                        self.fields[name] = _type_of(data[name])
                        created.add(name)
                    else:
                        dropped.add(name)
                        del data[name]
            user = self._find(kind, value)
            if user is None:
                user = User(value if kind == "email" else None, value if kind == "userId" else None)
                self.users.append(user)
            if entry.get("mergeNestedObjects"):
                for name, v in data.items():
                    old = user.data_fields.get(name)
                    user.data_fields[name] = (
                        {**old, **v} if isinstance(old, dict) and isinstance(v, dict) else v
                    )
            else:
                user.data_fields.update(data)
            ok += 1
        answer: dict[str, Any] = {
            "successCount": ok,
            "failCount": sum(len(v) for v in failed.values()),
            "failedUpdates": failed,
            "createdFields": sorted(created),
            "filteredOutFields": sorted(dropped),
        }
        return FakeResponse(200, answer)

    def _membership(self, subscribe: bool, body: dict[str, Any]) -> FakeResponse:
        ilist = self.lists.get(body.get("listId"))  # type: ignore[arg-type]
        if ilist is None:
            return _error(400, "BadParams", f"List {body.get('listId')} does not exist")
        subscribers = body.get("subscribers")
        if not isinstance(subscribers, list):
            return _error(400, "BadJsonBody", "subscribers is required")
        if not subscribe and body.get("channelUnsubscribe"):
            self.channel_unsubscribes += 1
        failed: dict[str, list[str]] = {}
        ok = 0
        for entry in subscribers:
            identity = self._identity(entry)
            if identity is None or (identity[0] == "email" and not _EMAIL.fullmatch(identity[1])):
                failed.setdefault("invalidEmails", []).append(str(entry.get("email") or entry.get("userId")))
                continue
            kind, value = identity
            suffix = "Emails" if kind == "email" else "UserIds"
            if value in self.forgotten:
                failed.setdefault("forgotten" + suffix, []).append(value)
                continue
            user = self._find(kind, value)
            if subscribe:
                if user is None and body.get("updateExistingUsersOnly"):
                    failed.setdefault("notFound" + suffix, []).append(value)
                    continue
                if user is None:
                    self.users.append(
                        User(value if kind == "email" else None, value if kind == "userId" else None)
                    )
                ilist.members.add(value)
            else:
                if user is None:
                    failed.setdefault("notFound" + suffix, []).append(value)
                    continue
                ilist.members.discard(value)
            ok += 1
        return FakeResponse(200, {
            "successCount": ok, "failCount": sum(len(v) for v in failed.values()), "failedUpdates": failed})  # fmt: skip

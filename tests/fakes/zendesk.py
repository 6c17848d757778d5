"""A local fake of Zendesk Support's API for users and custom object records: bulk jobs and their
job statuses, user fields, custom object fields, API token / OAuth auth and the per-minute rate limit.

Serves on ``127.0.0.1`` (a free port), keeps everything in memory, and lets a test assert what Zendesk
would hold: users (e-mail, external id, properties, user fields, soft-deleted or not), custom object
records, the jobs and their results, every request and every answer's status.

Contract (from Zendesk's pages, cited in ``dinmo_dagster/platforms/zendesk.py``):

* **Auth** -- ``Authorization: Basic base64("{email}/token:{api_token}")`` or ``Bearer <oauth token>``;
  anything else is HTTP 401 ``{"error": "Couldn't authenticate you"}``. ``imports_enabled=False`` makes
  ``create_or_update_many`` HTTP 403 ``{"error": "Forbidden", "message": "Data imports are not enabled"}``.
* **Users** -- ``POST /api/v2/users/create_or_update_many`` ``{"users": [...]}`` (at most 100, else
  HTTP 400; the error body's wording is assumed) answers ``{"job_status": {...}}`` (``queued``). Each
  ``GET /api/v2/job_statuses/{id}`` moves the job one step: ``queued`` -> ``working`` ->
  ``completed``, when the users are written: found by ``external_id``, else ``email``, else created
  (a user without ``name`` cannot be created: ``Failed``/``UserCreateError``); ``user_fields`` values
  set (``null`` clears), unknown user field keys ignored. Results come one per user in the order sent:
  ``{"id", "status": "Created"|"Updated"}`` or ``{"status": "Failed", "error", "details"}``.
  ``DELETE /api/v2/users/destroy_many?external_ids=a,b`` (at most 100) soft-deletes them in a job
  (``Deleted``; an external id Zendesk does not hold: ``Failed``/``RecordNotFound``, assumed).
* **Custom objects** -- ``POST /api/v2/custom_objects/{key}/jobs`` ``{"job": {"action", "items"}}``
  (at most 100 items), actions ``create_or_update_by_external_id`` (a new record needs ``name``; an
  unknown field key fails the item) and ``delete_by_external_id``; same job life cycle and results.
  ``GET /api/v2/custom_objects/{key}/fields``; an unknown object is HTTP 404.
* **Schema** -- ``GET /api/v2/user_fields`` (``key``, ``type``, ``title``, ``active``), ``GET
  /api/v2/users/me``.
* **Rate limit** -- ``per_minute`` requests a minute (700 by default, an Enterprise plan) over a sliding
  minute; past it, or while :meth:`ZendeskFake.throttle` says so: HTTP 429 with ``Retry-After``. Every
  other answer carries ``X-Rate-Limit`` and ``X-Rate-Limit-Remaining``. At most 30 jobs queued or
  working at once: one more is HTTP 429 (assumed wording).
"""

from __future__ import annotations

import base64
import itertools
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from dinmo_dagster.fakes.server import FakeRequest, FakeResponse
from fakes.common import RecordingFake

MAX_BULK = 100
MAX_JOBS = 30


@dataclass
class User:
    """One Zendesk user."""

    id: int
    email: str | None = None
    external_id: str | None = None
    properties: dict[str, Any] = field(default_factory=dict)  # name, phone, tags...
    user_fields: dict[str, Any] = field(default_factory=dict)
    deleted: bool = False


@dataclass
class CustomRecord:
    """One custom object record."""

    id: str
    external_id: str
    name: str
    fields: dict[str, Any] = field(default_factory=dict)


@dataclass
class Job:
    """A background job and its results."""

    id: str
    kind: str  # users_upsert, users_delete, co_upsert, co_delete
    items: list[Any]
    object_key: str | None = None
    status: str = "queued"
    results: list[dict[str, Any]] = field(default_factory=list)


class ZendeskFake(RecordingFake):
    """Zendesk's API in memory, served on loopback (a context manager)."""

    def __init__(
        self,
        email: str,
        api_token: str,
        *,
        oauth_token: str | None = None,
        per_minute: int = 700,
        retry_after: str = "1",
        latency: float = 0.0,
        imports_enabled: bool = True,
    ) -> None:
        self.basic = "Basic " + base64.b64encode(f"{email}/token:{api_token}".encode()).decode()
        self.bearer = f"Bearer {oauth_token}" if oauth_token else None
        self.per_minute = per_minute
        self.retry_after = retry_after
        self.imports_enabled = imports_enabled
        self.users: dict[int, User] = {}
        self.user_fields: list[dict[str, Any]] = []
        self.custom_objects: dict[str, dict[str, Any]] = {}  # key -> {"fields": [...], "records": {}}
        self.jobs: dict[str, Job] = {}
        self._ids = itertools.count(1001)
        self._failing: dict[str, tuple[str, str]] = {}  # identifier -> (error, details), once
        self._window: deque[float] = deque()
        super().__init__(latency)

    # -- what tests arrange and read -------------------------------------------------------------------

    def add_user(self, **fields: Any) -> User:
        """A user Zendesk already holds."""
        with self._lock:
            user = User(next(self._ids), **fields)
            self.users[user.id] = user
            return user

    def add_user_field(self, key: str, type_: str = "text", active: bool = True) -> None:
        """A custom user field."""
        self.user_fields.append(
            {"id": next(self._ids), "key": key, "type": type_, "title": key, "active": active}
        )

    def add_custom_object(self, key: str, *fields: str) -> None:
        """A custom object with its fields' keys (text fields)."""
        self.custom_objects[key] = {
            "fields": [{"key": f, "type": "text", "title": f, "active": True} for f in fields],
            "records": {},
        }

    def records(self, key: str) -> dict[str, CustomRecord]:
        """The records of a custom object by external id."""
        return self.custom_objects[key]["records"]

    def live(self) -> dict[str, User]:
        """The users not deleted, by e-mail (or external id when they have no e-mail)."""
        return {str(u.email or u.external_id): u for u in self.users.values() if not u.deleted}

    def completed_jobs(self) -> int:
        """How many jobs have completed (safe to call while the fake serves)."""
        with self._lock:
            return sum(j.status == "completed" for j in self.jobs.values())

    def fail(self, error: str, details: str, *values: str) -> None:
        """The next job item naming one of ``values`` (e-mail or external id) fails with ``error``/``details``."""
        with self._lock:
            self._failing.update(dict.fromkeys(values, (error, details)))

    # -- serving ------------------------------------------------------------------------------------------

    def _answer(self, request: FakeRequest) -> FakeResponse:
        auth = request.headers.get("authorization")
        if auth not in (self.basic, self.bearer) or auth is None:
            return FakeResponse(401, {"error": "Couldn't authenticate you"})
        now = time.monotonic()
        while self._window and self._window[0] <= now - 60:
            self._window.popleft()
        if self._throttled or len(self._window) >= self.per_minute:
            self._throttled = max(0, self._throttled - 1)
            return FakeResponse(
                429,
                b"Number of allowed API requests per minute exceeded",
                headers={
                    "Retry-After": self.retry_after,
                    "X-Rate-Limit": str(self.per_minute),
                    "X-Rate-Limit-Remaining": "0",
                },
            )
        self._window.append(now)
        response = self._route(request)
        response.headers.update(
            {
                "X-Rate-Limit": str(self.per_minute),
                "X-Rate-Limit-Remaining": str(max(0, self.per_minute - len(self._window))),
            }
        )
        return response

    def _route(self, request: FakeRequest) -> FakeResponse:
        method, path = request.method, request.path.removesuffix(".json")
        if path == "/api/v2/users/me" and method == "GET":
            return FakeResponse(200, {"user": {"id": 1, "name": "Integration", "role": "admin"}})
        if path == "/api/v2/user_fields" and method == "GET":
            return FakeResponse(
                200, {"user_fields": self.user_fields, "next_page": None, "count": len(self.user_fields)}
            )
        if path == "/api/v2/users/create_or_update_many" and method == "POST":
            if not self.imports_enabled:
                return FakeResponse(403, {"error": "Forbidden", "message": "Data imports are not enabled"})
            users = (request.json or {}).get("users")
            return self._start("users_upsert", users, "users")
        if path == "/api/v2/users/destroy_many" and method == "DELETE":
            ids = [v for v in request.query.get("external_ids", "").split(",") if v]
            return self._start("users_delete", ids, "external_ids")
        if path.startswith("/api/v2/job_statuses/") and method == "GET":
            job = self.jobs.get(path.rsplit("/", 1)[1])
            if job is None:
                return FakeResponse(404, {"error": "RecordNotFound", "description": "Not found"})
            self._step(job)
            return FakeResponse(200, {"job_status": self._view(job)})
        parts = path.split("/")
        if len(parts) == 6 and parts[:4] == ["", "api", "v2", "custom_objects"]:
            key, leaf = parts[4], parts[5]
            if key not in self.custom_objects:
                return FakeResponse(
                    404,
                    {
                        "errors": [
                            {
                                "code": "NotFound",
                                "title": "Not Found",
                                "detail": f"Custom object {key} not found",
                            }
                        ]
                    },
                )
            if leaf == "fields" and method == "GET":
                return FakeResponse(200, {"custom_object_fields": self.custom_objects[key]["fields"]})
            if leaf == "jobs" and method == "POST":
                job = (request.json or {}).get("job") or {}
                action = job.get("action")
                if action not in ("create_or_update_by_external_id", "delete_by_external_id"):
                    return FakeResponse(
                        400, {"error": "InvalidAction", "description": f"Unknown action {action!r}"}
                    )
                kind = "co_upsert" if action == "create_or_update_by_external_id" else "co_delete"
                return self._start(kind, job.get("items"), "items", key)
        return FakeResponse(404, {"error": "InvalidEndpoint", "description": "Not found"})

    # -- jobs --------------------------------------------------------------------------------------------

    def _start(self, kind: str, items: Any, name: str, key: str | None = None) -> FakeResponse:
        if not isinstance(items, list) or not items:
            return FakeResponse(400, {"error": "InvalidValue", "description": f"{name} is required"})
        if len(items) > MAX_BULK:
            return FakeResponse(
                400,
                {"error": "TooManyValues", "description": f"Too many values in {name} (limit: {MAX_BULK})"},
            )
        running = sum(1 for j in self.jobs.values() if j.status in ("queued", "working"))
        if running >= MAX_JOBS:
            return FakeResponse(
                429,
                {
                    "error": "TooManyJobs",
                    "description": "Number of allowed in-progress background jobs exceeded",
                },
                headers={"Retry-After": self.retry_after},
            )
        job = Job(f"J{next(self._ids)}", kind, items, key)
        self.jobs[job.id] = job
        return FakeResponse(200, {"job_status": self._view(job)})

    def _view(self, job: Job) -> dict[str, Any]:
        done = job.status == "completed"
        return {
            "id": job.id,
            "url": f"{self.url}/api/v2/job_statuses/{job.id}.json",
            "status": job.status,
            "total": len(job.items),
            "progress": len(job.items) if done else 0,
            "message": "Completed" if done else None,
            "results": job.results if done else None,
        }

    def _step(self, job: Job) -> None:
        if job.status == "queued":
            job.status = "working"
        elif job.status == "working":
            run = {
                "users_upsert": self._upsert_user,
                "users_delete": self._delete_user,
                "co_upsert": self._upsert_record,
                "co_delete": self._delete_record,
            }[job.kind]
            job.results = [run(job, item) for item in job.items]
            job.status = "completed"

    def _failure(self, *values: Any) -> tuple[str, str] | None:
        for value in values:
            if value is not None and str(value) in self._failing:
                return self._failing.pop(str(value))
        return None

    def _upsert_user(self, job: Job, item: Any) -> dict[str, Any]:
        email, external_id = item.get("email"), item.get("external_id")
        if (failing := self._failure(email, external_id)) is not None:
            return {"status": "Failed", "error": failing[0], "details": failing[1]}
        user = None
        if external_id is not None:
            user = next(
                (u for u in self.users.values() if u.external_id == external_id and not u.deleted), None
            )
        if user is None and email is not None:
            user = next((u for u in self.users.values() if u.email == email and not u.deleted), None)
        status = "Updated"
        if user is None:
            if not item.get("name"):
                return {
                    "status": "Failed",
                    "error": "UserCreateError",
                    "details": "Name: is too short (minimum 1)",
                }
            user = User(next(self._ids))
            self.users[user.id] = user
            status = "Created"
        user.email = email or user.email
        user.external_id = external_id or user.external_id
        known = {f["key"] for f in self.user_fields}
        for name, value in item.items():
            if name == "user_fields":
                for k, v in value.items():
                    if k in known:
                        user.user_fields[k] = v
            elif name not in ("email", "external_id"):
                user.properties[name] = value
        return {"id": user.id, "status": status, "email": user.email}

    def _delete_user(self, job: Job, external_id: str) -> dict[str, Any]:
        user = next((u for u in self.users.values() if u.external_id == external_id and not u.deleted), None)
        if user is None:
            return {
                "action": "delete",
                "success": False,
                "status": "Failed",
                "error": "RecordNotFound",
                "details": "User not found",
            }
        user.deleted = True
        return {"id": user.id, "action": "delete", "success": True, "status": "Deleted"}

    def _upsert_record(self, job: Job, item: Any) -> dict[str, Any]:
        assert job.object_key is not None
        co = self.custom_objects[job.object_key]
        external_id = item.get("external_id")
        if (failing := self._failure(external_id)) is not None:
            return {"status": "Failed", "error": failing[0], "details": failing[1]}
        fields = item.get("custom_object_fields") or {}
        known = {f["key"] for f in co["fields"]}
        unknown = sorted(set(fields) - known)
        if not external_id or unknown:
            details = f"Unknown field(s): {', '.join(unknown)}" if unknown else "external_id is required"
            return {"status": "Failed", "error": "RecordInvalid", "details": details}
        record = co["records"].get(external_id)
        status = "Updated"
        if record is None:
            if not item.get("name"):
                return {"status": "Failed", "error": "RecordInvalid", "details": "Name: cannot be blank"}
            record = CustomRecord(f"R{next(self._ids)}", external_id, item["name"])
            co["records"][external_id] = record
            status = "Created"
        record.name = item.get("name") or record.name
        record.fields.update(fields)
        return {"id": record.id, "status": status}

    def _delete_record(self, job: Job, external_id: Any) -> dict[str, Any]:
        assert job.object_key is not None
        record = self.custom_objects[job.object_key]["records"].pop(str(external_id), None)
        if record is None:
            return {"status": "Failed", "error": "RecordNotFound", "details": "Record not found"}
        return {"id": record.id, "status": "Deleted"}
